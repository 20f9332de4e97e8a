//! What a manifest-driven run (`bottle run AGENT`) adds to a workload: files for the
//! workload's home (provider config, prompt, skills, git config) and the metadata that lets
//! `bottle resume` restart the same agent without guessing.

use serde::{Deserialize, Serialize};

/// Where the bottle's CA bundle (the system bundle plus the bottle's CA) is inside a
/// container; provider plans point `NODE_EXTRA_CA_CERTS` and friends at it.
pub const GUEST_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// Most files a run may place in the workload's home.
pub const MAX_HOME_FILES: usize = 4096;
/// Longest relative path of a home file.
pub const MAX_HOME_PATH: usize = 1024;

/// One file the agent writes into the workload's home before the workload starts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HomeFile {
    /// Relative to the home, e.g. `.claude.json` or `.claude/skills/review/SKILL.md`.
    pub path: String,
    pub contents: String,
    /// Permission bits (`0o600`); only `0o777` is honoured.
    pub mode: u32,
}

/// Which agent a bottle runs, recorded at its first run so `bottle resume` never guesses.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentMeta {
    /// The agent manifest's name.
    pub agent: String,
    /// The bottle manifest it resolved to.
    pub bottle: String,
    /// `claude` or `codex`.
    pub provider: String,
    /// The image the agent ran in.
    pub image: String,
}

/// Why a home file's path is refused, or `None` when it is a plain relative path: no
/// absolute path, no `.`/`..` component, no empty component, no NUL, bounded length.
pub fn home_path_problem(path: &str) -> Option<&'static str> {
    if path.is_empty() {
        return Some("is empty");
    }
    if path.len() > MAX_HOME_PATH {
        return Some("is too long");
    }
    if path.contains('\0') {
        return Some("contains NUL");
    }
    if path.starts_with('/') {
        return Some("is absolute; give it relative to the home");
    }
    if path
        .split('/')
        .any(|c| c.is_empty() || c == "." || c == "..")
    {
        return Some("has an empty, `.` or `..` component");
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn home_paths() {
        for ok in [".claude.json", ".claude/skills/a/SKILL.md", "a..b", ".x"] {
            assert_eq!(home_path_problem(ok), None, "{ok}");
        }
        for bad in [
            "",
            "/etc/passwd",
            "../x",
            "a/../../x",
            "a//b",
            "a/./b",
            "a/",
            "a\0b",
        ] {
            assert!(home_path_problem(bad).is_some(), "{bad:?}");
        }
        assert!(home_path_problem(&"a".repeat(MAX_HOME_PATH + 1)).is_some());
    }
}
