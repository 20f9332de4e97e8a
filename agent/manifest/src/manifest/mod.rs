//! bot-bottle manifests: one Markdown file per bottle or agent, YAML front matter on top.
//!
//! * Bottles come only from `<home>/bottles/*.md`: they hold credentials and trust.
//! * Agents come from `<home>/agents/*.md` and `<cwd>/.bot-bottle/agents/*.md`; the
//!   repository's copy overrides the home one of the same name.
//!
//! # Trust boundary for agents
//!
//! A repository is less trusted than the operator's home, so an agent — from either place,
//! since the same file may be copied between them — may only set `bottle`, `skills` and
//! `git-gate.user` (a git identity), plus Claude Code's own keys, which are ignored. It can
//! never set `env`, `extends`, `agent_provider`, `egress`, `supervise` or `git-gate.repos`:
//! those are refused with [`ManifestError::NotForAgents`], which says why. Beyond the schema,
//! a repository agent:
//!
//! * may name any bottle (bottles only ever come from the home, so it cannot bring its
//!   own); the preflight summary shows where the agent came from so the operator sees a
//!   repository picking a bottle;
//! * resolves skills in `<cwd>/.bot-bottle/skills/` first, then `<home>/skills/`; a home
//!   agent only looks in `<home>/skills/`, so a repository cannot shadow a home agent's skill;
//! * gets no symlinks out of the repository: a repository skill directory that is, or
//!   contains, a symlink is refused (a symlink to `~/.ssh` would otherwise be copied into the
//!   bottle);
//! * overriding a home agent of the same name is reported as a warning.
//!
//! Values an agent may set go into `~/.gitconfig`, so control characters are refused in
//! `git-gate.user` fields.

mod catalog;
mod decode;
mod frontmatter;
mod skills;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bottle_api::gitgate::{GitGateSpec, GitRepoSpec, GitUser};
use bottle_api::policy::EgressPolicy;
use serde::Serialize;

pub use catalog::{Catalog, LoadOptions};
pub use decode::{egress_file, git_gate_file};
pub use skills::SkillFile;

use crate::env::EnvValue;

/// A problem with a manifest, naming the file, the line and the key.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ManifestError {
    #[error("{}: cannot read: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: Arc<std::io::Error>,
    },
    #[error("{}: larger than {max} bytes; a manifest is a short Markdown file", file.display())]
    TooLarge { file: PathBuf, max: u64 },
    #[error(
        "{}:1: no front matter: a manifest starts with a `---` line, then YAML keys, then a \
         closing `---` line, then the Markdown body",
        file.display()
    )]
    NoFrontMatter { file: PathBuf },
    #[error(
        "{}:1: the front matter opened by `---` on line 1 is never closed by a `---` line",
        file.display()
    )]
    UnclosedFrontMatter { file: PathBuf },
    #[error("{}:{line}: invalid YAML: {message}", file.display())]
    Yaml {
        file: PathBuf,
        line: usize,
        message: String,
    },
    #[error("{}:{line}: unknown key `{key}`; allowed keys are: {allowed}", file.display())]
    UnknownKey {
        file: PathBuf,
        line: usize,
        key: String,
        allowed: String,
    },
    #[error("{}:{line}: `{key}` must be {expected}, found {found}", file.display())]
    WrongType {
        file: PathBuf,
        line: usize,
        key: String,
        expected: &'static str,
        found: &'static str,
    },
    #[error("{}:{line}: `{key}`: {reason}", file.display())]
    Invalid {
        file: PathBuf,
        line: usize,
        key: String,
        reason: String,
    },
    #[error("{}:{line}: missing `{key}`: {hint}", file.display())]
    Missing {
        file: PathBuf,
        line: usize,
        key: String,
        hint: String,
    },
    #[error(
        "{}:{line}: `git` is bot-bottle's old key and is no longer read; it moved to \
         `git-gate` (put `user` and `repos` under `git-gate:`)",
        file.display()
    )]
    LegacyGitKey { file: PathBuf, line: usize },
    #[error(
        "{}:{line}: `{key}` cannot be set in an agent{origin}; an agent may only set bottle, \
         skills and git-gate.user (a git identity), never credentials, repos or routes: put \
         `{key}` in a bottle in {}",
        file.display(),
        bottles_dir.display()
    )]
    NotForAgents {
        file: PathBuf,
        line: usize,
        key: String,
        /// Empty, or " from the repository (less trusted)".
        origin: &'static str,
        bottles_dir: PathBuf,
    },
    #[error("{}", problems.iter().map(|p| format!("{}:{}: `{}`: {}", file.display(), p.line, p.key, p.message)).collect::<Vec<_>>().join("\n"))]
    Egress {
        file: PathBuf,
        problems: Vec<EgressProblem>,
    },
    #[error("{}:{line}: `extends`: bottle \"{name}\" extends itself", file.display())]
    ExtendsSelf {
        file: PathBuf,
        line: usize,
        name: String,
    },
    #[error("{}:{line}: `extends` forms a cycle: {cycle}", file.display())]
    ExtendsCycle {
        file: PathBuf,
        line: usize,
        /// `a (/…/a.md) -> b (/…/b.md) -> a`
        cycle: String,
    },
    #[error(
        "{}:{line}: `extends`: no bottle \"{parent}\" in {}; bottles there: {available}",
        file.display(),
        dir.display()
    )]
    UnknownParent {
        file: PathBuf,
        line: usize,
        parent: String,
        dir: PathBuf,
        available: String,
    },
    #[error(
        "{}:{line}: `extends`: parent bottle \"{parent}\" ({}) has errors; fix it first",
        file.display(),
        parent_file.display()
    )]
    BrokenParent {
        file: PathBuf,
        line: usize,
        parent: String,
        parent_file: PathBuf,
    },
    #[error(
        "{}:{line}: `bottle`: no bottle \"{bottle}\" in {}; bottles there: {available}",
        file.display(),
        dir.display()
    )]
    UnknownBottle {
        file: PathBuf,
        line: usize,
        bottle: String,
        dir: PathBuf,
        available: String,
    },
    #[error(
        "{}:{line}: `bottle`: bottle \"{bottle}\" ({}) has errors; fix it first",
        file.display(),
        bottle_file.display()
    )]
    BrokenBottle {
        file: PathBuf,
        line: usize,
        bottle: String,
        bottle_file: PathBuf,
    },
    #[error("no bottle \"{name}\" in {}; bottles there: {available}", dir.display())]
    NoSuchBottle {
        name: String,
        dir: PathBuf,
        available: String,
    },
    #[error("no agent \"{name}\" in {searched}; agents: {available}")]
    UnknownAgent {
        name: String,
        searched: String,
        available: String,
    },
    #[error(
        "{}:{line}: `{key}`: no skill \"{skill}\"; looked for the directory {searched}",
        file.display()
    )]
    MissingSkill {
        file: PathBuf,
        line: usize,
        key: String,
        skill: String,
        searched: String,
    },
    #[error("skill \"{skill}\": {}: {reason}", path.display())]
    UnsafeSkill {
        skill: String,
        path: PathBuf,
        reason: String,
    },
    #[error(
        "{}: bot-bottle.json is the old format and is no longer read: manifests are now \
         Markdown files with YAML front matter, one per bottle in {}/bottles/<name>.md and one \
         per agent in {}/agents/<name>.md (or ./.bot-bottle/agents/<name>.md in a repository)",
        path.display(),
        home.display(),
        home.display()
    )]
    LegacyJson { path: PathBuf, home: PathBuf },
}

pub type Result<T> = std::result::Result<T, ManifestError>;

/// One problem of an `egress` block, at the line of its route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EgressProblem {
    pub line: usize,
    pub key: String,
    pub message: String,
}

/// Something worth telling the operator that does not stop a launch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Warning {
    pub file: Option<PathBuf>,
    pub message: String,
}

impl Warning {
    pub(crate) fn new(file: Option<&Path>, message: impl Into<String>) -> Self {
        Self {
            file: file.map(Path::to_path_buf),
            message: message.into(),
        }
    }
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.file {
            Some(file) => write!(f, "{}: {}", file.display(), self.message),
            None => f.write_str(&self.message),
        }
    }
}

/// A value with the file line it was written on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Located<T> {
    pub value: T,
    pub line: usize,
}

/// Where an agent (or a skill) was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Origin {
    /// `<home>/…`, written by the operator.
    Home,
    /// `<cwd>/.bot-bottle/…`, shipped by the repository: less trusted.
    Repo,
}

impl Origin {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Home => "home",
            Self::Repo => "repo",
        }
    }
}

/// `agent_provider.template`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ProviderKind {
    #[default]
    Claude,
    Codex,
}

impl ProviderKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Claude => "claude",
            Self::Codex => "codex",
        }
    }
}

/// `agent_provider`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AgentProvider {
    pub template: ProviderKind,
    /// Custom agent image (bot-bottle builds it; kept for launchers that use images).
    pub dockerfile: Option<String>,
    /// claude: name of the host environment variable holding the OAuth token, and its line.
    pub auth_token: Option<Located<String>>,
    /// codex: forward the host's ChatGPT sign-in (`$CODEX_HOME/auth.json`).
    pub forward_host_credentials: bool,
    /// The bottle file that declared this block (`None` for the default).
    pub file: Option<PathBuf>,
}

/// One `env` entry and where it was written (after `extends`, the file that won).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvSpec {
    pub value: EnvValue,
    pub file: PathBuf,
    pub line: usize,
}

/// One `git-gate.repos` entry and where it was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepoEntry {
    /// After resolution `identity` is an absolute path (`~/` expanded, a relative path taken
    /// from the directory of the file that declares the repo).
    pub spec: GitRepoSpec,
    pub file: PathBuf,
    pub line: usize,
}

/// A bottle's `git-gate` block as written.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GitGateDecl {
    pub user: Option<GitUser>,
    /// `None`: inherit the parent's; `Some(empty)`: clear them.
    pub repos: Option<BTreeMap<String, RepoEntry>>,
}

/// One bottle file, as written (before `extends`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BottleManifest {
    pub name: String,
    pub file: PathBuf,
    pub extends: Option<Located<String>>,
    pub env: Option<BTreeMap<String, EnvSpec>>,
    pub agent_provider: Option<AgentProvider>,
    pub git_gate: Option<GitGateDecl>,
    pub egress: Option<EgressPolicy>,
    pub supervise: Option<bool>,
    /// The Markdown body (a description for people; not used).
    pub body: String,
}

/// One agent file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentManifest {
    pub name: String,
    pub file: PathBuf,
    pub origin: Origin,
    pub bottle: Located<String>,
    pub skills: Vec<Located<String>>,
    pub git_user: Option<Located<GitUser>>,
    /// The Markdown body: the agent's prompt.
    pub prompt: String,
}

/// A bottle with its `extends` chain merged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedBottle {
    pub name: String,
    pub file: PathBuf,
    /// Names of the bottles it extends, nearest first.
    pub parents: Vec<String>,
    pub env: BTreeMap<String, EnvSpec>,
    pub provider: AgentProvider,
    pub git_user: Option<GitUser>,
    pub repos: BTreeMap<String, RepoEntry>,
    pub egress: EgressPolicy,
    pub supervise: bool,
}

impl ResolvedBottle {
    /// The `git-gate` block in its wire shape.
    pub fn git_gate(&self) -> GitGateSpec {
        GitGateSpec {
            user: self.git_user.clone(),
            repos: Some(
                self.repos
                    .iter()
                    .map(|(name, entry)| (name.clone(), entry.spec.clone()))
                    .collect(),
            ),
        }
    }
}

/// A skill directory to copy into the workload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Skill {
    pub name: String,
    pub dir: PathBuf,
    pub origin: Origin,
}

/// An agent with everything it needs: its bottle merged, skills found, git identity overlaid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedAgent {
    pub name: String,
    pub file: PathBuf,
    pub origin: Origin,
    pub prompt: String,
    pub skills: Vec<Skill>,
    /// The bottle's `git-gate.user`, overlaid per field by the agent's.
    pub git_user: Option<GitUser>,
    pub bottle: ResolvedBottle,
    pub warnings: Vec<Warning>,
}

/// Whether `name` is a manifest name: `^[a-z][a-z0-9-]*$` (the file name without `.md`).
pub fn is_manifest_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    matches!(bytes.next(), Some(b'a'..=b'z'))
        && bytes.all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'-'))
}

/// Whether `name` is a skill name: letters, digits, `.`, `_`, `-`, not starting with `.`.
/// Never a path: a skill name is joined onto a directory.
pub fn is_skill_name(name: &str) -> bool {
    !name.starts_with('.') && bottle_api::gitgate::is_repo_name(name)
}
