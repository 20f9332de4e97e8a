//! Where manifests live, and the default paths the client passes in.

use std::ffi::OsString;
use std::path::PathBuf;

/// Environment variable that overrides the manifest home (default `~/.bot-bottle`).
pub const HOME_ENV: &str = "BOTTLE_HOME";
/// Manifest home under the user's home directory, shared with bot-bottle.
pub const HOME_DIR_NAME: &str = ".bot-bottle";
/// Bottles: `<home>/bottles/<name>.md`. Never read from a repository.
pub const BOTTLES_DIR: &str = "bottles";
/// Agents: `<home>/agents/<name>.md` and `<cwd>/.bot-bottle/agents/<name>.md`.
pub const AGENTS_DIR: &str = "agents";
/// Skills: `<home>/skills/<name>/` and `<cwd>/.bot-bottle/skills/<name>/`.
pub const SKILLS_DIR: &str = "skills";
/// The repository's own folder, under the working directory.
pub const REPO_DIR_NAME: &str = ".bot-bottle";
/// bot-bottle's old single-file format, refused with a pointer to the new layout.
pub const LEGACY_JSON: &str = "bot-bottle.json";
/// Largest manifest file read, in bytes.
pub const MAX_MANIFEST_BYTES: u64 = 1024 * 1024;
/// Codex's home on the host; its `auth.json` is read with `forward_host_credentials`.
pub const CODEX_HOME_ENV: &str = "CODEX_HOME";

/// `$BOTTLE_HOME`, else `$HOME/.bot-bottle`. `None` when neither is set.
pub fn default_home() -> Option<PathBuf> {
    default_home_from(|name| std::env::var_os(name))
}

/// [`default_home`] with the environment passed in.
pub fn default_home_from(env: impl Fn(&str) -> Option<OsString>) -> Option<PathBuf> {
    if let Some(home) = env(HOME_ENV).filter(|v| !v.is_empty()) {
        return Some(PathBuf::from(home));
    }
    env("HOME")
        .filter(|v| !v.is_empty())
        .map(|h| PathBuf::from(h).join(HOME_DIR_NAME))
}

/// `$CODEX_HOME/auth.json`, else `$HOME/.codex/auth.json`. `None` when neither is set.
pub fn default_codex_auth_file() -> Option<PathBuf> {
    default_codex_auth_file_from(|name| std::env::var_os(name))
}

/// [`default_codex_auth_file`] with the environment passed in.
pub fn default_codex_auth_file_from(env: impl Fn(&str) -> Option<OsString>) -> Option<PathBuf> {
    if let Some(dir) = env(CODEX_HOME_ENV).filter(|v| !v.is_empty()) {
        return Some(PathBuf::from(dir).join("auth.json"));
    }
    env("HOME")
        .filter(|v| !v.is_empty())
        .map(|h| PathBuf::from(h).join(".codex").join("auth.json"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<OsString> + 'a {
        move |name| {
            pairs
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| OsString::from(v))
        }
    }

    #[test]
    fn home_resolution() {
        assert_eq!(
            default_home_from(env(&[("BOTTLE_HOME", "/b"), ("HOME", "/h")])),
            Some(PathBuf::from("/b"))
        );
        assert_eq!(
            default_home_from(env(&[("BOTTLE_HOME", ""), ("HOME", "/h")])),
            Some(PathBuf::from("/h/.bot-bottle"))
        );
        assert_eq!(default_home_from(env(&[])), None);
        assert_eq!(
            default_codex_auth_file_from(env(&[("CODEX_HOME", "/c"), ("HOME", "/h")])),
            Some(PathBuf::from("/c/auth.json"))
        );
        assert_eq!(
            default_codex_auth_file_from(env(&[("HOME", "/h")])),
            Some(PathBuf::from("/h/.codex/auth.json"))
        );
    }
}
