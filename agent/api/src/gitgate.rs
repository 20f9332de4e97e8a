//! git-gate configuration, in the shape of a bot-bottle manifest's `git-gate` block.
//!
//! ```yaml
//! user: {name: Agent, email: agent@example.com}
//! repos:
//!   app:
//!     url: ssh://git@git.example.com:22/team/app.git
//!     identity: ~/.ssh/gate_ed25519       # path on the client's machine
//!     host_key: "ssh-ed25519 AAAA..."     # pinned upstream key; without it the gate refuses
//! ```

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The `git-gate` block.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GitGateSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<GitUser>,
    /// `None` when absent (matters for `extends`: inherited), `Some(empty)` when `{}` (cleared).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repos: Option<BTreeMap<String, GitRepoSpec>>,
}

/// Git identity written into the workload's `~/.gitconfig`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GitUser {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
}

/// One upstream repository the gate mirrors.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GitRepoSpec {
    /// `ssh://user@host[:port]/path` (or `https://host/path` with a token).
    pub url: String,
    /// Path of the private key file on the client's machine.
    pub identity: String,
    /// Pinned upstream host key (`ssh-ed25519 AAAA…`). Required for fetch and push.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_key: Option<String>,
}

/// Whether `name` is a valid `git-gate.repos` key: `^[A-Za-z0-9._-]+$`, not `.` or `..`.
pub fn is_repo_name(name: &str) -> bool {
    !name.is_empty()
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Whether `url` has the shape the gate accepts: `ssh://user@host[:port]/path` or
/// `https://host[:port]/path`.
pub fn is_gate_url(url: &str) -> bool {
    let rest = if let Some(rest) = url.strip_prefix("ssh://") {
        match rest.split_once('@') {
            Some((user, rest)) if !user.is_empty() && !user.contains('/') => rest,
            _ => return false,
        }
    } else if let Some(rest) = url.strip_prefix("https://") {
        rest
    } else {
        return false;
    };
    match rest.split_once('/') {
        Some((authority, path)) => {
            let host = match authority.rsplit_once(':') {
                Some((h, port)) if port.parse::<u16>().is_ok() => h,
                Some(_) => return false,
                None => authority,
            };
            !host.is_empty() && !path.is_empty() && !authority.contains('@')
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repo_names() {
        assert!(is_repo_name("app"));
        assert!(is_repo_name("my.repo_2-x"));
        assert!(!is_repo_name(""));
        assert!(!is_repo_name(".."));
        assert!(!is_repo_name("a/b"));
        assert!(!is_repo_name("a b"));
    }

    #[test]
    fn gate_urls() {
        assert!(is_gate_url("ssh://git@example.com/team/app.git"));
        assert!(is_gate_url("ssh://git@example.com:2222/team/app.git"));
        assert!(is_gate_url("https://example.com/team/app.git"));
        assert!(!is_gate_url("git@example.com:team/app.git"));
        assert!(!is_gate_url("ssh://example.com/team/app.git"));
        assert!(!is_gate_url("ssh://git@example.com"));
        assert!(!is_gate_url("ssh://git@example.com:x/app"));
        assert!(!is_gate_url("http://example.com/app"));
    }
}
