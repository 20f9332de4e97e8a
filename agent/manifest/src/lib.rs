//! bot-bottle manifests for bottle: loading bottles and agents, resolving `env`, building
//! provider plans (Claude Code, Codex) and the preflight summary shown before a launch.
//!
//! Everything here is launcher-neutral and builds on macOS: the client resolves and plans,
//! a launcher (namespaces, VM, …) only executes the plan.
//!
//! # Choices where bot-bottle's behaviour is not written down
//!
//! * **Scalars** keep their text (`PORT: 8080` is `"8080"`); boolean keys take PyYAML's
//!   words (`true/false`, `yes/no`, `on/off`, three casings), unquoted only. A key with no
//!   value (`egress:`) is an error, never "absent", so `extends` never silently inherits.
//! * **`env`**: only a whole value `${VAR}` is substituted; `${` mixed with text is refused.
//!   A `?prompt` answered with nothing is refused.
//! * **Skills**: `<home>/skills/<name>/` for home agents; `<cwd>/.bot-bottle/skills/<name>/`
//!   then `<home>/skills/<name>/` for repository agents. See [`manifest`] for the trust rules.
//! * **`identity`**: `~/` is the operator's home; a relative path is taken from the
//!   directory of the bottle file that declares the repo; the file must exist.
//! * **`git-gate.repos.*.url`** is `ssh://` only (what bot-bottle documents), although the
//!   gate's wire type also accepts `https://`. `host_key` is one non-empty line.
//! * **Routes** also accept bottle's own `connect_to` (a superset of bot-bottle's keys).
//! * **The agent's `git-gate.user`** overlays the bottle's per field, like `extends`.
//! * **Codex prompt**: `~/.codex/AGENTS.md` (Codex's global instructions, added to the
//!   repository's own `AGENTS.md`). Codex skills go to `~/.codex/skills/<name>`.
//! * **Claude prompt**: written to `~/.bottle/agent-prompt.md`, passed with
//!   `--append-system-prompt-file`; no prompt file and no flag when the body is blank.
//! * **Gate URLs**: `<gate base>/<repo name>.git`; `insteadOf` covers the `ssh://` URL, its
//!   scp-like form (port 22 only) and `https://host/path`.
//! * **Provider routes** own their hosts: a bottle route for `api.anthropic.com` (claude with
//!   `auth_token`) or `api.openai.com` / `chatgpt.com` (codex with
//!   `forward_host_credentials`) is replaced, with a warning. The Codex routes use
//!   `token_ref` [`provider::CODEX_TOKEN_REF`], which a bottle route may not use.
//! * **`NODE_EXTRA_CA_CERTS`** is set to the CA for every provider (Node tools read extra CAs
//!   only there); the system bundle, `SSL_CERT_FILE` and `REQUESTS_CA_BUNDLE` are the
//!   launcher's CA step.
//!
//! ```no_run
//! # fn main() -> Result<(), bottle_manifest::Error> {
//! use bottle_manifest::{paths, Catalog};
//! let home = paths::default_home().unwrap_or_default();
//! let catalog = Catalog::load(&home, std::path::Path::new("."));
//! let agent = catalog.resolve("reviewer")?;
//! # let _ = agent; Ok(()) }
//! ```

pub mod env;
pub mod manifest;
pub mod paths;
pub mod preflight;
pub mod provider;
pub mod secret;
mod yaml;

pub use env::{resolve_env, EnvError, EnvValue, Prompter, ResolvedEnv, TerminalPrompter};
pub use manifest::{
    AgentManifest, AgentProvider, BottleManifest, Catalog, LoadOptions, ManifestError, Origin,
    ProviderKind, ResolvedAgent, ResolvedBottle, Skill, Warning,
};
pub use preflight::Preflight;
pub use provider::{plan, PlanContext, ProviderError, ProviderPlan};
pub use secret::SecretString;

/// Any error of this crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error(transparent)]
    Env(#[from] EnvError),
    #[error(transparent)]
    Provider(#[from] ProviderError),
}

#[cfg(test)]
mod tests;
