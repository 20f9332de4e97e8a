//! git-gate configuration, in the shape of a bot-bottle manifest's `git-gate` block.
//!
//! ```yaml
//! user: {name: Agent, email: agent@example.com}
//! repos:
//!   app:
//!     url: ssh://git@git.example.com:22/team/app.git
//!     identity: ~/.ssh/gate_ed25519       # path on the client's machine
//!     host_key: "ssh-ed25519 AAAA..."     # pinned upstream key; without it the gate refuses
//!   web:
//!     url: https://git.example.com/team/web.git  # user `x-access-token` unless `https://user@…`
//!     identity: ~/.config/bottle/web.token       # the token, on one line
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
    /// `ssh://user@host[:port]/path`, or `https://[user@]host[:port]/path` with a token.
    pub url: String,
    /// Path on the client's machine of the private key file (ssh) or the token file (https).
    pub identity: String,
    /// Pinned upstream host key (`ssh-ed25519 AAAA…`; several allowed, one per line).
    /// Required for fetch and push over SSH; refused for https (the certificate is checked
    /// against the system roots and the agent's `upstream_ca_files` instead).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_key: Option<String>,
    /// Which ref updates a push may make. Default: anything but force-pushing or deleting
    /// the upstream's default branch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<RefPolicySpec>,
}

/// Per-repo ref policy.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RefPolicySpec {
    /// Ref patterns a push may update (`refs/heads/agent/*`; `*` also crosses `/`). Empty:
    /// every ref.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow: Vec<String>,
    /// `true`/`false` everywhere; absent: allowed except on the default branch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub force_push: Option<bool>,
    /// `true`/`false` everywhere; absent: allowed except on the default branch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deletions: Option<bool>,
}

/// Private key material (an OpenSSH private key, or an HTTPS token) as the client sends it.
/// Never printed by `Debug`; the agent keeps it in memory only and never writes it to state.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct IdentityKey(pub String);

impl std::fmt::Debug for IdentityKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("IdentityKey([redacted])")
    }
}

/// Largest identity file the client sends (an RSA-4096 OpenSSH key is ~3.4 KiB).
pub const MAX_IDENTITY_BYTES: usize = 16 * 1024;
/// Most repos one bottle's gate serves.
pub const MAX_REPOS: usize = 64;

/// The wire form of a git-gate block: the spec plus each repo's key material, read by the
/// client from the `identity` file. `keys` is never stored by the agent.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GitGateConfig {
    pub spec: GitGateSpec,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub keys: BTreeMap<String, IdentityKey>,
}

/// Why a git-gate block is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GitGateError {
    #[error("git-gate repo name {0:?} is invalid: use letters, digits, '.', '_' and '-'")]
    BadName(String),
    #[error("git-gate repo {name}: url {url:?} must be ssh://user@host[:port]/path or https://[user@]host[:port]/path")]
    BadUrl { name: String, url: String },
    #[error("git-gate repo {name}: host_key must be '<type> <base64>' lines (as in known_hosts without the host), e.g. the output of `ssh-keyscan -t ed25519 HOST | cut -d' ' -f2-`")]
    BadHostKey { name: String },
    #[error("git-gate repo {name}: host_key applies to ssh:// upstreams only; an https:// upstream's certificate is checked against the system roots and the agent's upstream_ca_files, so remove host_key")]
    HostKeyOnHttps { name: String },
    #[error("git-gate repo {name}: the identity file of an https:// upstream must hold the token alone, on one line (is it a private key file?)")]
    BadToken { name: String },
    #[error("git-gate repo {name}: identity is larger than {MAX_IDENTITY_BYTES} bytes")]
    KeyTooLarge { name: String },
    #[error("git-gate has a key for {0}, which is not one of its repos")]
    StrayKey(String),
    #[error("git-gate has more than {MAX_REPOS} repos")]
    TooManyRepos,
    #[error("git-gate user {0} must be a single line")]
    BadUser(&'static str),
    #[error("git-gate repo {name}: policy pattern {pattern:?} must start with refs/")]
    BadPattern { name: String, pattern: String },
}

/// Checks a git-gate block before the agent takes it.
pub fn validate(config: &GitGateConfig) -> Result<(), GitGateError> {
    let repos = config.spec.repos.clone().unwrap_or_default();
    if repos.len() > MAX_REPOS {
        return Err(GitGateError::TooManyRepos);
    }
    if let Some(user) = &config.spec.user {
        let single =
            |v: &Option<String>| v.as_deref().is_none_or(|v| !v.contains(['\n', '\r', '\0']));
        if !single(&user.name) {
            return Err(GitGateError::BadUser("name"));
        }
        if !single(&user.email) {
            return Err(GitGateError::BadUser("email"));
        }
    }
    for (name, repo) in &repos {
        if !is_repo_name(name) {
            return Err(GitGateError::BadName(name.clone()));
        }
        if !is_gate_url(&repo.url) || repo.url.contains(['"', '\\', '\n', ' ']) {
            return Err(GitGateError::BadUrl {
                name: name.clone(),
                url: repo.url.clone(),
            });
        }
        if let Some(keys) = &repo.host_key {
            if is_https(&repo.url) {
                return Err(GitGateError::HostKeyOnHttps { name: name.clone() });
            }
            if parse_host_keys(keys).is_none() {
                return Err(GitGateError::BadHostKey { name: name.clone() });
            }
        }
        if let Some(p) = &repo.policy {
            if let Some(bad) = p.allow.iter().find(|p| !p.starts_with("refs/")) {
                return Err(GitGateError::BadPattern {
                    name: name.clone(),
                    pattern: bad.clone(),
                });
            }
        }
    }
    for (name, key) in &config.keys {
        if !repos.contains_key(name) {
            return Err(GitGateError::StrayKey(name.clone()));
        }
        if key.0.len() > MAX_IDENTITY_BYTES {
            return Err(GitGateError::KeyTooLarge { name: name.clone() });
        }
        let https = repos.get(name).is_some_and(|r| is_https(&r.url));
        if https && https_token(&key.0).is_none() {
            return Err(GitGateError::BadToken { name: name.clone() });
        }
    }
    Ok(())
}

/// Parses pinned host keys: one `<type> <base64>[ comment]` per non-empty line. Returns the
/// (type, base64) pairs, or `None` if any line is malformed.
pub fn parse_host_keys(text: &str) -> Option<Vec<(String, String)>> {
    let mut out = Vec::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let mut parts = line.split_whitespace();
        let kind = parts.next()?;
        let blob = parts.next()?;
        let known =
            kind.starts_with("ssh-") || kind.starts_with("ecdsa-") || kind.starts_with("sk-");
        let base64ish = blob
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'='));
        if !known || !base64ish || blob.len() < 16 {
            return None;
        }
        out.push((kind.to_string(), blob.to_string()));
    }
    (!out.is_empty()).then_some(out)
}

/// Port of the git-gate on each bottle's gateway address.
pub const GIT_GATE_PORT: u16 = 9420;

/// The gate's URL for repo `name` as seen from inside a bottle.
pub fn gate_url(gateway: std::net::Ipv4Addr, name: &str) -> String {
    format!("http://{gateway}:{GIT_GATE_PORT}/{name}.git")
}

fn quote(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('"');
    for c in value.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The workload's `~/.gitconfig`: the git identity and one `insteadOf` per gate repo, so
/// plain `git` with the upstream URL goes through the gate. Values come from a validated
/// [`GitGateSpec`] (single-line strings).
pub fn render_gitconfig(spec: &GitGateSpec, gateway: std::net::Ipv4Addr) -> String {
    let mut out = String::from("# Written by bottle: git traffic goes through the git-gate.\n");
    if let Some(user) = &spec.user {
        out.push_str("[user]\n");
        if let Some(name) = &user.name {
            out.push_str(&format!("\tname = {}\n", quote(name)));
        }
        if let Some(email) = &user.email {
            out.push_str(&format!("\temail = {}\n", quote(email)));
        }
    }
    for (name, repo) in spec.repos.iter().flatten() {
        out.push_str(&format!("[url {}]\n", quote(&gate_url(gateway, name))));
        out.push_str(&format!("\tinsteadOf = {}\n", quote(&repo.url)));
    }
    out
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

/// Whether `url` is an `https://` upstream (the credential is a token, the trust the
/// certificate's).
pub fn is_https(url: &str) -> bool {
    url.starts_with("https://")
}

/// The token an `https://` repo's identity file holds: the content trimmed, if that is one
/// non-empty run of printable, non-space characters (a PEM key or a multi-line file is not a
/// token, and must never be sent to a web server as a password).
pub fn https_token(identity: &str) -> Option<&str> {
    let token = identity.trim();
    (!token.is_empty() && token.bytes().all(|b| b.is_ascii_graphic())).then_some(token)
}

/// Whether `url` has the shape the gate accepts: `ssh://user@host[:port]/path` or
/// `https://[user@]host[:port]/path` (a user, never a password, in the URL).
pub fn is_gate_url(url: &str) -> bool {
    let user_ok = |user: &str| !user.is_empty() && !user.contains(['/', ':']);
    let rest = if let Some(rest) = url.strip_prefix("ssh://") {
        match rest.split_once('@') {
            Some((user, rest)) if user_ok(user) => rest,
            _ => return false,
        }
    } else if let Some(rest) = url.strip_prefix("https://") {
        let authority = rest.split('/').next().unwrap_or_default();
        match authority.split_once('@') {
            Some((user, _)) if user_ok(user) => &rest[user.len() + 1..],
            Some(_) => return false,
            None => rest,
        }
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
#[allow(clippy::unwrap_used)]
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
    fn gitconfig_rewrites_upstreams_to_the_gate() {
        let spec: GitGateSpec = serde_json::from_str(
            r#"{"user":{"name":"Agent \"A\"","email":"a@example.com"},
                "repos":{"app":{"url":"ssh://git@example.com:2222/team/app.git","identity":"~/.ssh/k"}}}"#,
        )
        .unwrap();
        let text = render_gitconfig(&spec, std::net::Ipv4Addr::new(10, 213, 0, 1));
        assert!(
            text.contains("[user]\n\tname = \"Agent \\\"A\\\"\"\n\temail = \"a@example.com\"\n")
        );
        assert!(text.contains(
            "[url \"http://10.213.0.1:9420/app.git\"]\n\tinsteadOf = \"ssh://git@example.com:2222/team/app.git\"\n"
        ));
    }

    #[test]
    fn validation_and_keys_stay_out_of_debug() {
        let mut config = GitGateConfig {
            spec: serde_json::from_str(
                r#"{"repos":{"app":{"url":"ssh://git@h/app.git","identity":"k","host_key":"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIE"}}}"#,
            )
            .unwrap(),
            keys: BTreeMap::from([("app".to_string(), IdentityKey("-----BEGIN OPENSSH PRIVATE KEY-----".into()))]),
        };
        assert_eq!(validate(&config), Ok(()));
        assert!(!format!("{config:?}").contains("BEGIN"));
        config.keys.insert("other".into(), IdentityKey("x".into()));
        assert_eq!(
            validate(&config),
            Err(GitGateError::StrayKey("other".into()))
        );
        config.keys.remove("other");
        if let Some(repos) = config.spec.repos.as_mut() {
            if let Some(app) = repos.get_mut("app") {
                app.host_key = Some("AAAA".into());
            }
        }
        assert!(matches!(
            validate(&config),
            Err(GitGateError::BadHostKey { .. })
        ));
        // https: no host key; the identity is a one-line token.
        let mut web = GitGateConfig {
            spec: serde_json::from_str(
                r#"{"repos":{"web":{"url":"https://git.example.com/web.git","identity":"t"}}}"#,
            )
            .unwrap(),
            keys: BTreeMap::from([("web".to_string(), IdentityKey("ghp_abc123\n".into()))]),
        };
        assert_eq!(validate(&web), Ok(()));
        assert_eq!(https_token("ghp_abc123\n"), Some("ghp_abc123"));
        web.keys.insert(
            "web".into(),
            IdentityKey("-----BEGIN OPENSSH PRIVATE KEY-----\nb3Bl\n".into()),
        );
        assert_eq!(
            validate(&web),
            Err(GitGateError::BadToken { name: "web".into() })
        );
        web.keys.insert("web".into(), IdentityKey(" \n".into()));
        assert_eq!(
            validate(&web),
            Err(GitGateError::BadToken { name: "web".into() })
        );
        web.keys.clear();
        if let Some(w) = web.spec.repos.as_mut().and_then(|r| r.get_mut("web")) {
            w.host_key = Some("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIE".into());
        }
        assert_eq!(
            validate(&web),
            Err(GitGateError::HostKeyOnHttps { name: "web".into() })
        );
        assert_eq!(parse_host_keys("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIE c\n\necdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAy").map(|v| v.len()), Some(2));
    }

    #[test]
    fn gate_urls() {
        assert!(is_gate_url("ssh://git@example.com/team/app.git"));
        assert!(is_gate_url("ssh://git@example.com:2222/team/app.git"));
        assert!(is_gate_url("https://example.com/team/app.git"));
        assert!(is_gate_url("https://10.0.0.5:8443/app.git"));
        assert!(is_gate_url("https://bot@example.com/team/app.git"));
        assert!(!is_gate_url("https://bot:hunter2@example.com/team/app.git"));
        assert!(!is_gate_url("https://@example.com/app.git"));
        assert!(!is_gate_url("https://a@b@example.com/app.git"));
        assert!(!is_gate_url("https://example.com"));
        assert!(!is_gate_url("git@example.com:team/app.git"));
        assert!(!is_gate_url("ssh://example.com/team/app.git"));
        assert!(!is_gate_url("ssh://git@example.com"));
        assert!(!is_gate_url("ssh://git@example.com:x/app"));
        assert!(!is_gate_url("http://example.com/app"));
    }
}
