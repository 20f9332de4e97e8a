//! Agent providers (`claude`, `codex`) as a launcher-neutral [`ProviderPlan`]: the command,
//! its arguments, the workload's environment, the files to write in the workload's home,
//! the skills to copy, the egress routes (the bottle's plus the provider's) and the secrets
//! those routes inject.
//!
//! Real credentials live only in [`ProviderPlan::secrets`], which goes to the agent's memory
//! (the `secrets` of `CreateBottle`); files, env and argv carry placeholders. A provider's
//! routes own their hosts: a bottle route for the same host is replaced, with a warning
//! ("provisioned wins").

mod claude;
mod codex;
mod gitconfig;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use bottle_api::policy::{EgressPolicy, HostPattern, Route};

use crate::env::ResolvedEnv;
use crate::manifest::{Origin, ProviderKind, ResolvedAgent, Warning};
use crate::secret::SecretString;

pub use codex::CODEX_TOKEN_REF;
pub use gitconfig::gate_repo_url;

/// What the workload sees where a credential would be; the proxy injects the real one.
pub const PLACEHOLDER: &str = "egress-placeholder";

const LOGIN_HINT: &str = "run `codex login --device-auth` on this machine, then try again";

/// A problem building a plan. Messages never contain a secret.
#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    #[error(
        "{}:{line}: `agent_provider.auth_token` names {var}, which is not set in this \
         environment; export {var} with the OAuth token (from `claude setup-token`) or remove \
         auth_token",
        file.display()
    )]
    AuthTokenMissing {
        var: String,
        file: PathBuf,
        line: usize,
    },
    #[error(
        "egress route {host}: auth.token_ref {token_ref} is not set in this environment; export \
         {token_ref} or change the route"
    )]
    RouteSecretMissing { host: String, token_ref: String },
    #[error(
        "egress route {host}: auth.token_ref {token_ref} is reserved for the {provider} \
         provider; pick another name"
    )]
    ReservedTokenRef {
        host: String,
        token_ref: String,
        provider: &'static str,
    },
    #[error("{}: not found; forward_host_credentials forwards the host's Codex sign-in: {LOGIN_HINT}", path.display())]
    CodexAuthMissing { path: PathBuf },
    #[error("{}: cannot read: {source}; {LOGIN_HINT}", path.display())]
    CodexAuthRead {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: {reason}; {LOGIN_HINT}", path.display())]
    CodexAuthMalformed { path: PathBuf, reason: String },
    #[error(
        "{}: Codex is signed in with an API key; bottle forwards only a ChatGPT sign-in: \
         {LOGIN_HINT}",
        path.display()
    )]
    CodexApiKeyMode { path: PathBuf },
    #[error("{}: the access token is not a JWT ({reason}); {LOGIN_HINT}", path.display())]
    CodexTokenNotJwt { path: PathBuf, reason: String },
    #[error(
        "{}: the access token expired at {exp} (Unix time); {LOGIN_HINT}",
        path.display()
    )]
    CodexTokenExpired { path: PathBuf, exp: i64 },
    #[error("egress policy with the provider's routes is invalid:\n{0}")]
    Egress(String),
}

pub type Result<T> = std::result::Result<T, ProviderError>;

/// What the plan needs to know about the launch.
pub struct PlanContext<'a> {
    /// The workload user's home inside the bottle, e.g. `/home/agent`.
    pub workload_home: &'a Path,
    /// The working tree inside the bottle, e.g. `/home/agent/workspace`.
    pub workspace: &'a Path,
    /// The egress proxy's CA certificate, as a path inside the bottle.
    pub ca_cert: &'a Path,
    /// The git-gate as the workload reaches it, e.g. `http://10.213.0.1:9420`.
    pub gate_base_url: Option<&'a str>,
    /// The host's `$CODEX_HOME/auth.json` (see [`crate::paths::default_codex_auth_file`]).
    pub codex_auth_file: &'a Path,
    /// The operator's environment (`auth_token`, routes' `token_ref`).
    pub host_env: &'a dyn Fn(&str) -> Option<String>,
    /// For token expiry.
    pub now: SystemTime,
}

/// A file to write in the workload's home.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanFile {
    /// Relative to the workload's home.
    pub path: PathBuf,
    pub contents: String,
    pub mode: u32,
}

/// A skill directory to copy (see [`crate::Skill::files`] for its files).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkillCopy {
    pub name: String,
    pub source: PathBuf,
    pub origin: Origin,
    /// Relative to the workload's home, e.g. `.claude/skills/review`.
    pub dest: PathBuf,
}

/// Everything a launcher needs to start the agent.
#[derive(Debug, Clone)]
pub struct ProviderPlan {
    pub provider: ProviderKind,
    /// Program name, looked up on the workload's `PATH`.
    pub command: String,
    /// Arguments for a new session.
    pub args: Vec<String>,
    /// Arguments to resume the last session.
    pub resume_args: Vec<String>,
    /// The provider's environment for the workload (no secrets; see [`Self::workload_env`]).
    pub env: BTreeMap<String, String>,
    pub files: Vec<PlanFile>,
    pub skills: Vec<SkillCopy>,
    /// The bottle's routes with the provider's added (provisioned wins).
    pub egress: EgressPolicy,
    /// Lowercase hosts of the provider's routes.
    pub provider_hosts: BTreeSet<String>,
    /// Route credentials by `token_ref`, for the agent's memory only: never a file, an env
    /// var or an argument.
    pub secrets: BTreeMap<String, SecretString>,
    pub warnings: Vec<Warning>,
}

impl ProviderPlan {
    /// `command` followed by the arguments for a new or a resumed session.
    pub fn argv(&self, resume: bool) -> Vec<String> {
        let args = if resume {
            &self.resume_args
        } else {
            &self.args
        };
        std::iter::once(self.command.clone())
            .chain(args.iter().cloned())
            .collect()
    }

    /// The workload's environment: the bottle's resolved `env`, then the provider's, which
    /// wins over a bottle entry of the same name (with a warning).
    pub fn workload_env(
        &self,
        bottle_env: &ResolvedEnv,
    ) -> (BTreeMap<String, SecretString>, Vec<Warning>) {
        let mut warnings = Vec::new();
        let mut env = bottle_env.clone();
        for (name, value) in &self.env {
            if env.contains_key(name) {
                warnings.push(Warning::new(
                    None,
                    format!(
                        "env {name} is set by the {} provider; the bottle's value is not used",
                        self.provider.as_str()
                    ),
                ));
            }
            env.insert(name.clone(), SecretString::new(value.clone()));
        }
        (env, warnings)
    }
}

/// The provider-specific part.
struct ProviderParts {
    command: &'static str,
    args: Vec<String>,
    resume_args: Vec<String>,
    env: BTreeMap<String, String>,
    files: Vec<PlanFile>,
    skills_dir: &'static str,
    routes: Vec<Route>,
    secrets: BTreeMap<String, SecretString>,
    reserved_token_refs: Vec<&'static str>,
    warnings: Vec<Warning>,
}

/// Builds the plan for `agent`'s provider.
pub fn plan(agent: &ResolvedAgent, ctx: &PlanContext<'_>) -> Result<ProviderPlan> {
    let provider = agent.bottle.provider.template;
    let mut parts = match provider {
        ProviderKind::Claude => claude::parts(agent, ctx)?,
        ProviderKind::Codex => codex::parts(agent, ctx)?,
    };
    // Node tools (Claude Code, MCP servers) read extra CAs only from here.
    parts.env.insert(
        "NODE_EXTRA_CA_CERTS".into(),
        ctx.ca_cert.display().to_string(),
    );
    let (gitconfig, git_warnings) = gitconfig::render(agent, ctx);
    parts.files.push(gitconfig);
    parts.warnings.extend(git_warnings);

    let provider_hosts: BTreeSet<String> = parts
        .routes
        .iter()
        .map(|r| r.host.to_ascii_lowercase())
        .collect();
    let mut routes = Vec::new();
    let mut secrets = parts.secrets;
    for route in &agent.bottle.egress.routes {
        let key = route_key(&route.host);
        if provider_hosts.contains(&key) {
            parts.warnings.push(Warning::new(
                Some(&agent.bottle.file),
                format!(
                    "egress route {} is replaced by the {} provider's own route for that host",
                    route.host,
                    provider.as_str()
                ),
            ));
            continue;
        }
        if let Some(auth) = &route.auth {
            if parts.reserved_token_refs.contains(&auth.token_ref.as_str()) {
                return Err(ProviderError::ReservedTokenRef {
                    host: route.host.clone(),
                    token_ref: auth.token_ref.clone(),
                    provider: provider.as_str(),
                });
            }
            if !secrets.contains_key(&auth.token_ref) {
                let value = (ctx.host_env)(&auth.token_ref).ok_or_else(|| {
                    ProviderError::RouteSecretMissing {
                        host: route.host.clone(),
                        token_ref: auth.token_ref.clone(),
                    }
                })?;
                secrets.insert(auth.token_ref.clone(), SecretString::new(value));
            }
        }
        routes.push(route.clone());
    }
    routes.extend(parts.routes);
    let egress = EgressPolicy { routes };
    if let Err(errors) = egress.validate() {
        return Err(ProviderError::Egress(
            errors
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("\n"),
        ));
    }

    let skills = agent
        .skills
        .iter()
        .map(|s| SkillCopy {
            name: s.name.clone(),
            source: s.dir.clone(),
            origin: s.origin,
            dest: Path::new(parts.skills_dir).join(&s.name),
        })
        .collect();

    Ok(ProviderPlan {
        provider,
        command: parts.command.to_string(),
        args: parts.args,
        resume_args: parts.resume_args,
        env: parts.env,
        files: parts.files,
        skills,
        egress,
        provider_hosts,
        secrets,
        warnings: parts.warnings,
    })
}

/// A route host as the provider-ownership check compares it.
fn route_key(host: &str) -> String {
    match HostPattern::parse(host) {
        Ok(HostPattern::Exact(h)) => h,
        Ok(HostPattern::Wildcard(s)) => format!("*.{s}"),
        Err(_) => host.to_ascii_lowercase(),
    }
}

/// The agent's prompt, when it has one.
fn prompt_of(agent: &ResolvedAgent) -> Option<String> {
    let trimmed = agent.prompt.trim();
    (!trimmed.is_empty()).then(|| format!("{trimmed}\n"))
}
