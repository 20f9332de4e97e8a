//! `bottle run AGENT` and `bottle resume NAME`: a bot-bottle agent manifest, resolved and
//! planned on the client (so it works from a Mac and the agent never reads a user's home),
//! then launched through the agent's API.
//!
//! Order: load and resolve the manifests, build the provider plan, show the preflight and
//! confirm; then resolve `env` (prompts come only after the operator said yes), create the
//! bottle with the plan's egress policy (the real tokens travel only in that request and live
//! only in the agent's memory), plan again with the bottle's gateway so the git config points
//! at its git-gate, and run the provider's command in the bottle with the plan's files placed
//! in the workload's home. A failure after the bottle was made removes it again.

use std::collections::BTreeMap;
use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use ::http::Method;
use bottle_api::gitgate::{GitGateConfig, IdentityKey, GIT_GATE_PORT, MAX_IDENTITY_BYTES};
use bottle_api::provision::{AgentMeta, HomeFile};
use bottle_api::{BottleInfo, CreateBottle, DlpSettings, RunLimits, RunRequest, SetPolicy};
use bottle_manifest::{
    paths, plan, resolve_env, Catalog, EnvValue, PlanContext, Preflight, ProviderKind,
    ProviderPlan, ResolvedAgent, TerminalPrompter,
};

use crate::http::{Client, ClientError};
use crate::images::{self, ImageError};
use crate::run::{self, RunError};

/// The workload's home inside the bottle for manifest agents (the provider files' paths and
/// the workspace trust entries are written for it).
pub const AGENT_HOME: &str = "/home/agent";
/// The agent's working tree, `~/workspace`.
pub const AGENT_WORKSPACE: &str = "/home/agent/workspace";
/// Largest total of files (provider config, prompt, skills) sent into the home: the agent
/// takes at most 1 MiB per request, and the request carries env and policy too.
const MAX_HOME_BYTES: usize = 768 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum AgentRunError {
    #[error("cannot find the manifest home: set BOTTLE_HOME or HOME")]
    NoHome,
    #[error("current directory: {0}")]
    Cwd(std::io::Error),
    #[error(transparent)]
    Manifest(#[from] bottle_manifest::Error),
    #[error(transparent)]
    ManifestLoad(#[from] bottle_manifest::ManifestError),
    #[error(transparent)]
    Env(#[from] bottle_manifest::EnvError),
    #[error(transparent)]
    Provider(#[from] bottle_manifest::ProviderError),
    #[error("skill {skill}: {path}: {source}")]
    Skill {
        skill: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("skill {skill}: {path} is not UTF-8 text; skills are copied as text files")]
    SkillNotText { skill: String, path: PathBuf },
    #[error(
        "the provider files and skills add up to {0} bytes, more than the {MAX_HOME_BYTES} a run \
         can carry; trim the agent's skills"
    )]
    TooLarge(usize),
    #[error(
        "no terminal to confirm the launch on; read the summary above and pass -y to launch \
         without asking"
    )]
    NoTerminal,
    #[error("not launched")]
    Declined,
    #[error("git-gate repo {repo}: identity {}: {problem}", path.display())]
    Identity {
        repo: String,
        path: PathBuf,
        problem: String,
    },
    #[error("{}: {problem}", file.display())]
    GitGate { file: PathBuf, problem: String },
    #[error(
        "{0} was not started from an agent manifest (`bottle run AGENT`), so there is nothing \
         to resume; use `bottle exec` or `bottle run --image`"
    )]
    NotAnAgent(String),
    #[error(
        "{name} runs agent {agent} with the {was} provider, but its manifest now says {now}; \
         start a new bottle with `bottle run {agent}`"
    )]
    ProviderChanged {
        name: String,
        agent: String,
        was: String,
        now: String,
    },
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error(transparent)]
    Workspace(#[from] crate::workspace::WorkspaceError),
    #[error(transparent)]
    Run(#[from] RunError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// What `bottle run AGENT` was asked for.
#[derive(Debug, Default)]
pub struct AgentRunArgs {
    pub agent: String,
    /// `-t`: a terminal even when this side has none... as with `run -t`. Without it the
    /// agent gets a terminal exactly when stdin and stdout are terminals (Claude Code and
    /// Codex are terminal programs; piped, they get pipes).
    pub tty: bool,
    /// Upload the current directory (with `.git`) as `~/workspace`.
    pub cwd: bool,
    pub mounts: Vec<bottle_api::RunMount>,
    pub name: Option<String>,
    /// Use this image instead of the provider's.
    pub image: Option<String>,
    pub yes: bool,
    pub dry_run: bool,
    pub detach: bool,
    pub rm: bool,
    pub limits: RunLimits,
}

/// The provider's default image name in the agent's cache.
pub fn default_image(provider: ProviderKind) -> String {
    format!("bottle-{}", provider.as_str())
}

fn host_env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

fn manifest_home() -> Result<PathBuf, AgentRunError> {
    paths::default_home().ok_or(AgentRunError::NoHome)
}

fn gate_base(info: &BottleInfo) -> String {
    format!("http://{}:{GIT_GATE_PORT}", info.gateway_address)
}

/// Loads the catalog and resolves `agent`, printing the catalog's warnings.
fn resolve(agent: &str) -> Result<ResolvedAgent, AgentRunError> {
    let home = manifest_home()?;
    let cwd = std::env::current_dir().map_err(AgentRunError::Cwd)?;
    let catalog = Catalog::load(&home, &cwd);
    for w in &catalog.warnings {
        eprintln!("bottle: warning: {w}");
    }
    let resolved = catalog.resolve(agent)?;
    for w in &resolved.warnings {
        eprintln!("bottle: warning: {w}");
    }
    Ok(resolved)
}

/// Builds the provider plan; `gate` is the git-gate's base URL once the bottle exists.
fn make_plan(agent: &ResolvedAgent, gate: Option<&str>) -> Result<ProviderPlan, AgentRunError> {
    let codex_auth = paths::default_codex_auth_file().unwrap_or_default();
    let env = host_env;
    let ctx = PlanContext {
        workload_home: Path::new(AGENT_HOME),
        workspace: Path::new(AGENT_WORKSPACE),
        ca_cert: Path::new(bottle_api::provision::GUEST_CA_BUNDLE),
        gate_base_url: gate,
        codex_auth_file: &codex_auth,
        host_env: &env,
        now: SystemTime::now(),
    };
    Ok(plan(agent, &ctx)?)
}

/// The plan's files and the skills' files, as the agent writes them into the home.
fn home_files(plan: &ProviderPlan, agent: &ResolvedAgent) -> Result<Vec<HomeFile>, AgentRunError> {
    let mut files: Vec<HomeFile> = plan
        .files
        .iter()
        .map(|f| HomeFile {
            path: f.path.to_string_lossy().into_owned(),
            contents: f.contents.clone(),
            mode: f.mode,
        })
        .collect();
    for (copy, skill) in plan.skills.iter().zip(&agent.skills) {
        for file in skill.files()? {
            let bytes = std::fs::read(&file.source).map_err(|source| AgentRunError::Skill {
                skill: copy.name.clone(),
                path: file.source.clone(),
                source,
            })?;
            let contents = String::from_utf8(bytes).map_err(|_| AgentRunError::SkillNotText {
                skill: copy.name.clone(),
                path: file.source.clone(),
            })?;
            files.push(HomeFile {
                path: copy.dest.join(&file.rel).to_string_lossy().into_owned(),
                contents,
                mode: file.mode,
            });
        }
    }
    let total: usize = files.iter().map(|f| f.contents.len() + f.path.len()).sum();
    if total > MAX_HOME_BYTES {
        return Err(AgentRunError::TooLarge(total));
    }
    Ok(files)
}

/// The bottle's `git-gate` block for the agent: the agent's identity over the bottle's, and
/// each repo's key read here from its `identity` file (the agent never reads a user's home).
/// `None` without repos: the gate has nothing to serve.
fn git_gate(agent: &ResolvedAgent) -> Result<Option<GitGateConfig>, AgentRunError> {
    if agent.bottle.repos.is_empty() {
        return Ok(None);
    }
    let mut spec = agent.bottle.git_gate();
    spec.user = agent.git_user.clone();
    let mut keys = BTreeMap::new();
    for (name, entry) in &agent.bottle.repos {
        let path = PathBuf::from(&entry.spec.identity);
        let too_large = std::fs::metadata(&path)
            .map(|m| m.len() > MAX_IDENTITY_BYTES as u64)
            .unwrap_or(false);
        if too_large {
            return Err(AgentRunError::Identity {
                repo: name.clone(),
                path,
                problem: format!("larger than {MAX_IDENTITY_BYTES} bytes; is it a private key?"),
            });
        }
        let key = std::fs::read_to_string(&path).map_err(|e| AgentRunError::Identity {
            repo: name.clone(),
            path: path.clone(),
            problem: e.to_string(),
        })?;
        keys.insert(name.clone(), IdentityKey(key));
    }
    let config = GitGateConfig { spec, keys };
    bottle_api::gitgate::validate(&config).map_err(|e| AgentRunError::GitGate {
        file: agent.bottle.file.clone(),
        problem: e.to_string(),
    })?;
    Ok(Some(config))
}

/// Asks on the terminal; `-y` skips it.
fn confirm() -> Result<(), AgentRunError> {
    if !std::io::stdin().is_terminal() {
        return Err(AgentRunError::NoTerminal);
    }
    eprint!("Launch? [y/N] ");
    std::io::stderr().flush()?;
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    match answer.trim() {
        "y" | "Y" | "yes" | "Yes" => Ok(()),
        _ => Err(AgentRunError::Declined),
    }
}

/// Values shorter than this are not watched for by DLP (they would match everywhere).
const MIN_WATCHED_SECRET: usize = 8;

/// What the workload gets in its environment, and which of it DLP watches for.
struct WorkloadEnv {
    env: BTreeMap<String, String>,
    /// The values typed at a prompt or taken from the host's environment: the operator's
    /// secrets, which the proxy blocks (in any encoding) if they try to leave.
    watched: BTreeMap<String, String>,
}

/// The workload's environment: the bottle's `env` (prompted now) and the provider's.
fn workload_env(agent: &ResolvedAgent, plan: &ProviderPlan) -> Result<WorkloadEnv, AgentRunError> {
    let resolved = resolve_env(&agent.bottle.env, &host_env, &mut TerminalPrompter)?;
    let watched = agent
        .bottle
        .env
        .iter()
        .filter(|(_, spec)| !matches!(spec.value, EnvValue::Literal(_)))
        .filter_map(|(name, _)| Some((name.clone(), resolved.get(name)?.expose().to_owned())))
        .filter(|(_, v)| v.len() >= MIN_WATCHED_SECRET)
        .collect();
    let (env, warnings) = plan.workload_env(&resolved);
    for w in warnings {
        eprintln!("bottle: warning: {w}");
    }
    Ok(WorkloadEnv {
        env: env
            .into_iter()
            .map(|(k, v)| (k, v.expose().to_owned()))
            .collect(),
        watched,
    })
}

fn dlp_for(env: &WorkloadEnv) -> Option<DlpSettings> {
    (!env.watched.is_empty()).then(|| DlpSettings {
        secret_values: env.watched.clone(),
        ..DlpSettings::default()
    })
}

fn plan_secrets(plan: &ProviderPlan) -> BTreeMap<String, String> {
    plan.secrets
        .iter()
        .map(|(k, v)| (k.clone(), v.expose().to_owned()))
        .collect()
}

/// What the client should do after the run: exit with this code (`None`: 0, nothing ran).
pub type Outcome = Option<i32>;

/// `bottle run AGENT`.
pub async fn run(client: &Client, args: AgentRunArgs) -> Result<Outcome, AgentRunError> {
    let agent = resolve(&args.agent)?;
    // The gateway is known once the bottle exists; until then (preflight, policy) the gate's
    // address is a stand-in, and the plan is made again with the real one before the launch.
    let first = make_plan(&agent, Some(&format!("http://gateway:{GIT_GATE_PORT}")))?;
    let preflight = Preflight::new(&agent, &first);
    if args.dry_run {
        print!("{}", preflight.text());
        return Ok(None);
    }
    eprint!("{}", preflight.text());
    if !args.yes {
        confirm()?;
    }
    let image = match &args.image {
        Some(image) => image.clone(),
        None => {
            let (name, source) = images::for_bottle(&agent.bottle)?;
            images::ensure(client, &name, &source).await?;
            name
        }
    };
    let env = workload_env(&agent, &first)?;

    let create = CreateBottle {
        name: args.name.clone(),
        egress: Some(first.egress.clone()),
        secrets: plan_secrets(&first),
        dlp: dlp_for(&env),
        git_gate: git_gate(&agent)?,
    };
    let info: BottleInfo = client.send(Method::POST, "/v1/bottles", &create).await?;
    let launched = launch(client, &info, &agent, &image, env, &args).await;
    if launched.is_err() {
        // Nothing ran: the bottle made for it goes too.
        if let Err(e) = client
            .call_empty(Method::DELETE, &format!("/v1/bottles/{}", info.name))
            .await
        {
            eprintln!(
                "bottle: removing {} after the failed launch: {e}",
                info.name
            );
        }
    }
    launched
}

async fn launch(
    client: &Client,
    info: &BottleInfo,
    agent: &ResolvedAgent,
    image: &str,
    env: WorkloadEnv,
    args: &AgentRunArgs,
) -> Result<Outcome, AgentRunError> {
    let plan = make_plan(agent, Some(&gate_base(info)))?;
    let workspace = if args.cwd {
        let dir = std::env::current_dir().map_err(AgentRunError::Cwd)?;
        Some(crate::workspace::upload(client, &dir).await?.id)
    } else {
        None
    };
    let req = RunRequest {
        workspace,
        mounts: args.mounts.clone(),
        bottle: Some(info.name.clone()),
        image: image.to_owned(),
        args: plan.argv(false),
        env: env.env,
        limits: args.limits,
        remove: args.rm,
        detach: args.detach,
        home: Some(AGENT_HOME.into()),
        workdir: Some(AGENT_WORKSPACE.into()),
        home_files: home_files(&plan, agent)?,
        agent: Some(AgentMeta {
            agent: agent.name.clone(),
            bottle: agent.bottle.name.clone(),
            provider: plan.provider.as_str().to_owned(),
            image: image.to_owned(),
        }),
        ..RunRequest::default()
    };
    start(client, req, args.tty).await
}

/// A terminal for the agent when asked (`-t`) or when this side is one.
fn terminal(asked: bool) -> run::Terminal {
    if asked || (std::io::stdin().is_terminal() && std::io::stdout().is_terminal()) {
        run::Terminal::Tty
    } else {
        run::Terminal::Pipes
    }
}

async fn start(client: &Client, mut req: RunRequest, tty: bool) -> Result<Outcome, AgentRunError> {
    if req.detach {
        let info = run::detached(client, &req).await?;
        println!("{}", info.name);
        return Ok(None);
    }
    let terminal = terminal(tty);
    req.tty = terminal.size()?;
    Ok(Some(run::run(client, &req, terminal).await?))
}

/// `bottle resume NAME`: the same agent, with the provider's resume arguments, in the
/// bottle it ran in (its home, with the agent's sessions, is kept). The manifests are read
/// again, so `env` and tokens are current; the egress policy is set again too, which also
/// restores the route tokens an agent restart dropped.
pub async fn resume(client: &Client, name: &str, detach: bool) -> Result<Outcome, AgentRunError> {
    let info: BottleInfo = client.get(&format!("/v1/bottles/{name}")).await?;
    let Some(meta) = info.agent.clone() else {
        return Err(AgentRunError::NotAnAgent(name.to_owned()));
    };
    let agent = resolve(&meta.agent)?;
    let plan = make_plan(&agent, Some(&gate_base(&info)))?;
    if plan.provider.as_str() != meta.provider {
        return Err(AgentRunError::ProviderChanged {
            name: name.to_owned(),
            agent: meta.agent,
            was: meta.provider,
            now: plan.provider.as_str().to_owned(),
        });
    }
    let env = workload_env(&agent, &plan)?;
    let policy = SetPolicy {
        egress: plan.egress.clone(),
        secrets: plan_secrets(&plan),
        dlp: dlp_for(&env),
    };
    let _: BottleInfo = client
        .send(Method::PUT, &format!("/v1/bottles/{name}/policy"), &policy)
        .await?;
    // The gate's keys live in the agent's memory only: give them again (a restart lost them).
    if let Some(gate) = git_gate(&agent)? {
        let _: BottleInfo = client
            .send(
                Method::PUT,
                &format!("/v1/bottles/{name}/git-gate/keys"),
                &gate,
            )
            .await?;
    }
    let req = RunRequest {
        bottle: Some(name.to_owned()),
        image: meta.image.clone(),
        args: plan.argv(true),
        env: env.env,
        detach,
        home: Some(AGENT_HOME.into()),
        workdir: Some(AGENT_WORKSPACE.into()),
        home_files: home_files(&plan, &agent)?,
        ..RunRequest::default()
    };
    start(client, req, false).await
}
