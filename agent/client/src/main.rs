//! `bottle`: the client for `bottle-agent`. Talks JSON over the agent's Unix socket; carries
//! no Linux-only dependency so it builds for macOS too.

mod agent_run;
mod agents;
mod http;
mod images;
mod output;
mod run;
mod term;
mod workspace;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use ::http::Method;
use bottle_api::gitgate::{GitGateConfig, IdentityKey};
use bottle_api::policy::EgressPolicy;
use bottle_api::{
    BottleInfo, BottleStats, CreateBottle, DlpMode, DlpSettings, ExecRequest, KillSwitch,
    RunLimits, RunRequest, SetPolicy,
};
use clap::{Parser, Subcommand, ValueEnum};

use crate::http::{Client, ClientError};

/// Run AI coding agents with the network, credentials and git under the host's control.
#[derive(Debug, Parser)]
#[command(name = "bottle", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum ImagesAction {
    /// The images `bottle run --image` can use.
    Ls {
        #[arg(long)]
        json: bool,
    },
    /// Import a rootfs directory, an OCI layout or an image tarball (`docker save`,
    /// oci-archive) from this host (root only).
    Import {
        path: PathBuf,
        #[arg(long)]
        name: Option<String>,
    },
    /// Build a provider's default image (`claude`, `codex`) or a Dockerfile with buildah or
    /// podman, and import it (root only).
    Build {
        /// `claude` or `codex`: the provider's default image, named `bottle-<provider>`.
        #[arg(required_unless_present = "dockerfile", conflicts_with = "dockerfile")]
        provider: Option<ProviderArg>,
        /// A Dockerfile (its directory is the build context); needs --name.
        #[arg(long, requires = "name")]
        dockerfile: Option<PathBuf>,
        #[arg(long)]
        name: Option<String>,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum ProviderArg {
    Claude,
    Codex,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create a bottle: a network namespace that can reach only the agent's services.
    Create {
        /// Name (`^[a-z][a-z0-9-]{0,30}$`); the agent picks one when absent.
        #[arg(long)]
        name: Option<String>,
        #[command(flatten)]
        egress: EgressArgs,
        /// git-gate, YAML: a bot-bottle `git-gate:` block (`user`, `repos: {NAME: {url,
        /// identity, host_key}}`; `url` ssh:// with a key file and a pinned `host_key`, or
        /// https:// with a token file). Each `identity` file is read here and sent to the
        /// agent, which keeps it in memory only.
        #[arg(long, value_name = "FILE")]
        git_gate: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Supply a bottle's git-gate keys again (the agent keeps them in memory only, so they
    /// are lost when it restarts).
    GitGateKeys {
        name: String,
        /// The same git-gate YAML the bottle was created with.
        #[arg(long, value_name = "FILE")]
        git_gate: PathBuf,
    },
    /// Create a bottle and run in it either an agent from your bot-bottle manifests
    /// (`bottle run AGENT`: preflight summary, confirm, launch) or a command from an image
    /// (`bottle run --image IMG -- CMD`); streams the output and exits with the workload's
    /// exit status (127: command not found). stdin is forwarded.
    Run {
        /// An agent from ~/.bot-bottle/agents or ./.bot-bottle/agents (BOTTLE_HOME overrides
        /// ~/.bot-bottle).
        #[arg(value_name = "AGENT", required_unless_present = "image")]
        agent: Option<String>,
        /// With AGENT: print the preflight summary and stop; nothing is created.
        #[arg(long, requires = "agent")]
        dry_run: bool,
        /// With AGENT: launch without asking for confirmation.
        #[arg(short = 'y', long, requires = "agent")]
        yes: bool,
        /// Name of the new bottle; the agent picks one when absent.
        #[arg(long)]
        name: Option<String>,
        /// Image: a name or id in the agent's image cache, or (as root) a path to a rootfs
        /// directory, an OCI layout or an image archive, imported first. With AGENT it
        /// replaces the provider's image (`bottle-claude`, `bottle-codex`).
        #[arg(long)]
        image: Option<String>,
        /// Environment variable for the command: NAME=VALUE, or NAME to pass this shell's
        /// value (repeatable). Values travel in the request body only, never on an argv.
        #[arg(short = 'e', long = "env", value_name = "NAME[=VALUE]")]
        env: Vec<String>,
        /// Memory limit, e.g. 512m or 2g (no swap beyond it).
        #[arg(long)]
        memory: Option<String>,
        /// Maximum number of processes and threads.
        #[arg(long)]
        pids: Option<i64>,
        /// CPUs' worth of time, e.g. 1.5.
        #[arg(long)]
        cpus: Option<f64>,
        #[command(flatten)]
        egress: EgressArgs,
        /// git-gate, YAML (as for `bottle create --git-gate`); the workload's ~/.gitconfig
        /// sends the repos' upstream URLs through the gate.
        #[arg(long, value_name = "FILE")]
        git_gate: Option<PathBuf>,
        /// Copy the current directory (with .git) into the bottle as ~/workspace, where the
        /// command starts. Works from a remote client too: the directory is uploaded.
        #[arg(long)]
        cwd: bool,
        /// Bind a host path you own into the container: HOST:GUEST or HOST:GUEST:ro (absolute
        /// paths, no symlinks in HOST; repeatable). Files keep their host owners, which appear
        /// as `nobody` inside.
        #[arg(long = "mount", value_name = "HOST:GUEST[:ro]")]
        mounts: Vec<String>,
        /// Remove the bottle once the command has exited.
        #[arg(long)]
        rm: bool,
        /// Return once the command has started and leave it running; its output goes to
        /// `bottle logs NAME`, `bottle stop NAME` ends it. Prints the bottle's name.
        #[arg(short, long)]
        detach: bool,
        /// With --detach: print the bottle as JSON.
        #[arg(long, requires = "detach")]
        json: bool,
        /// Keep stdin attached (accepted for familiarity: a foreground run always forwards
        /// stdin until its end).
        #[arg(short, long, conflicts_with = "detach")]
        interactive: bool,
        /// Give the command a terminal (a PTY; our terminal goes raw while it runs and its
        /// size follows ours). Needs a terminal on stdin.
        #[arg(short, long, conflicts_with = "detach")]
        tty: bool,
        /// The command and its arguments (after `--`); the image's default when absent.
        #[arg(last = true, value_name = "COMMAND")]
        command: Vec<String>,
    },
    /// Start the agent of a bottle made by `bottle run AGENT` again with its provider's
    /// resume arguments (`claude --continue`, `codex resume --last`), in the same bottle and
    /// home.
    Resume {
        name: String,
        /// Return once it has started; its output goes to `bottle logs NAME`.
        #[arg(short, long)]
        detach: bool,
    },
    /// The agent's image cache: list, import, build the provider images.
    Images {
        #[command(subcommand)]
        action: ImagesAction,
    },
    /// Run one more command in a bottle's running workload: its namespaces, cgroup, user,
    /// environment and seccomp profile, no capabilities. Exits with the command's status.
    Exec {
        name: String,
        /// Extra environment variable: NAME=VALUE or NAME (repeatable).
        #[arg(short = 'e', long = "env", value_name = "NAME[=VALUE]")]
        env: Vec<String>,
        /// Keep stdin attached (always the case; accepted for familiarity).
        #[arg(short, long)]
        interactive: bool,
        /// Give the command a terminal (needs a terminal on stdin).
        #[arg(short, long)]
        tty: bool,
        /// The command and its arguments (after `--`).
        #[arg(last = true, required = true, value_name = "COMMAND")]
        command: Vec<String>,
    },
    /// Egress policy of a bottle.
    Policy {
        #[command(subcommand)]
        action: PolicyAction,
    },
    /// Workload output, or with --net the bottle's network audit log.
    Logs {
        name: String,
        /// Show the network audit log (DNS, TLS, HTTP, DLP decisions).
        #[arg(long)]
        net: bool,
        /// Keep following new output (the workload's until it exits).
        #[arg(short, long)]
        follow: bool,
    },
    /// Stop a bottle's workload: SIGTERM, then SIGKILL after the grace period; returns once
    /// it has exited.
    Stop {
        name: String,
        /// Seconds between SIGTERM and SIGKILL.
        #[arg(short, long, default_value_t = 10)]
        time: u64,
    },
    /// Print the bottle's CA certificate (PEM).
    Ca { name: String },
    /// List the agents and bottles in your manifests (BOTTLE_HOME, else ~/.bot-bottle, and
    /// ./.bot-bottle/agents), with every error; exits 1 when any manifest has one.
    Agents {
        #[arg(long)]
        json: bool,
    },
    /// List your bottles (root sees every bottle).
    Ls {
        #[arg(long)]
        json: bool,
    },
    /// Show one bottle.
    Inspect {
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// Remove a bottle and everything it holds.
    Rm {
        name: String,
        /// Also when its workload is running (it is killed first).
        #[arg(short, long)]
        force: bool,
    },
    /// Traffic counters: totals, drops by reason; rates with --watch.
    Stats {
        name: Option<String>,
        /// Refresh every second and show rates.
        #[arg(long)]
        watch: bool,
        #[arg(long)]
        json: bool,
    },
    /// Drop every packet of a bottle until unfrozen.
    Freeze { name: String },
    /// Undo `freeze`.
    Unfreeze { name: String },
    /// Host-wide kill switch: every bottle drops everything (root only).
    KillSwitch {
        #[arg(value_enum)]
        action: KillAction,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
enum PolicyAction {
    /// Replace the egress policy; applies to new requests at once, open ones are not cut.
    Set {
        name: String,
        /// YAML: a bot-bottle `egress:` block (or just its `routes:`).
        file: PathBuf,
        #[command(flatten)]
        dlp: DlpArgs,
    },
}

#[derive(Debug, clap::Args)]
struct EgressArgs {
    /// Egress policy, YAML: a bot-bottle `egress:` block (or just its `routes:`). Each
    /// `auth.token_ref` is read from this command's environment.
    #[arg(long)]
    egress: Option<PathBuf>,
    #[command(flatten)]
    dlp: DlpArgs,
}

#[derive(Debug, clap::Args)]
struct DlpArgs {
    /// Extra DLP rules, gitleaks TOML format.
    #[arg(long, value_name = "FILE")]
    dlp_rules: Option<PathBuf>,
    /// Log DLP hits instead of blocking the request.
    #[arg(long)]
    dlp_warn: bool,
    /// Environment variable whose value must never leave the bottle (repeatable).
    #[arg(long = "secret-env", value_name = "VAR")]
    secret_env: Vec<String>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum KillAction {
    On,
    Off,
    Status,
}

#[derive(Debug, thiserror::Error)]
enum CliError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("cannot write output: {0}")]
    Output(#[from] serde_json::Error),
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Manifest(#[from] bottle_manifest::ManifestError),
    #[error("{0}")]
    Env(String),
    #[error(transparent)]
    Run(#[from] run::RunError),
    #[error(transparent)]
    AgentRun(#[from] agent_run::AgentRunError),
    #[error(transparent)]
    Image(#[from] images::ImageError),
    #[error(transparent)]
    Workspace(#[from] workspace::WorkspaceError),
}

fn read_file(path: &PathBuf) -> Result<String, CliError> {
    std::fs::read_to_string(path).map_err(|source| CliError::Read {
        path: path.clone(),
        source,
    })
}

/// Reads an egress file and the values of the variables its routes name.
fn load_egress(path: &PathBuf) -> Result<(EgressPolicy, BTreeMap<String, String>), CliError> {
    let policy = bottle_manifest::manifest::egress_file(path, &read_file(path)?)?;
    let mut secrets = BTreeMap::new();
    for route in &policy.routes {
        if let Some(auth) = &route.auth {
            let value = std::env::var(&auth.token_ref).map_err(|_| {
                CliError::Env(format!(
                    "{}: route {} takes its token from ${}, which is not set in this environment",
                    path.display(),
                    route.host,
                    auth.token_ref
                ))
            })?;
            secrets.insert(auth.token_ref.clone(), value);
        }
    }
    Ok((policy, secrets))
}

/// Reads a git-gate file and each repo's identity file (`~/` is this user's home, a
/// relative path is taken from the git-gate file's directory).
fn load_git_gate(path: &PathBuf) -> Result<GitGateConfig, CliError> {
    let spec = bottle_manifest::manifest::git_gate_file(path, &read_file(path)?)?;
    let base = path.parent().map(PathBuf::from).unwrap_or_default();
    let mut keys = BTreeMap::new();
    for (name, repo) in spec.repos.iter().flatten() {
        let file = match repo.identity.strip_prefix("~/") {
            Some(rest) => PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(rest),
            None => base.join(&repo.identity),
        };
        let meta = std::fs::metadata(&file).map_err(|source| CliError::Read {
            path: file.clone(),
            source,
        })?;
        if meta.len() > bottle_api::gitgate::MAX_IDENTITY_BYTES as u64 {
            return Err(CliError::Env(format!(
                "{}: git-gate repo {name}: identity {} is larger than {} bytes; is it a private key?",
                path.display(),
                file.display(),
                bottle_api::gitgate::MAX_IDENTITY_BYTES
            )));
        }
        keys.insert(name.clone(), IdentityKey(read_file(&file)?));
    }
    let config = GitGateConfig { spec, keys };
    bottle_api::gitgate::validate(&config)
        .map_err(|e| CliError::Env(format!("{}: {e}", path.display())))?;
    Ok(config)
}

fn load_dlp(args: &DlpArgs) -> Result<Option<DlpSettings>, CliError> {
    if args.dlp_rules.is_none() && !args.dlp_warn && args.secret_env.is_empty() {
        return Ok(None);
    }
    let mut secret_values = BTreeMap::new();
    for var in &args.secret_env {
        let value = std::env::var(var)
            .map_err(|_| CliError::Env(format!("--secret-env {var}: ${var} is not set")))?;
        secret_values.insert(var.clone(), value);
    }
    Ok(Some(DlpSettings {
        mode: if args.dlp_warn {
            DlpMode::Warn
        } else {
            DlpMode::Block
        },
        rules_toml: args.dlp_rules.as_ref().map(read_file).transpose()?,
        secret_values,
    }))
}

/// A relative image path (`./img`, `../img`) means the client's directory, not the agent's:
/// sent absolute.
fn absolute_image(image: String) -> String {
    if image.starts_with("./") || image.starts_with("../") {
        if let Ok(cwd) = std::env::current_dir() {
            return cwd.join(&image).display().to_string();
        }
    }
    image
}

fn socket_path() -> PathBuf {
    std::env::var_os(bottle_api::HOST_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(bottle_api::DEFAULT_SOCKET))
}

fn print_json<T: serde::Serialize>(value: &T) -> Result<(), CliError> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// Runs one command; `Some(code)` when the process must exit with a workload's status.
async fn run(cli: Cli) -> Result<Option<i32>, CliError> {
    let client = Client::new(&socket_path());
    match cli.command {
        Command::Run {
            agent: Some(agent),
            dry_run,
            yes,
            name,
            image,
            env,
            memory,
            pids,
            cpus,
            egress,
            rm,
            detach,
            json: _,
            command,
            cwd,
            mounts,
            interactive: _,
            tty,
            git_gate,
        } => {
            if !env.is_empty()
                || egress.egress.is_some()
                || git_gate.is_some()
                || !command.is_empty()
            {
                return Err(CliError::Env(
                    "with AGENT, the environment, egress, git-gate and command come from the \
                     manifests; drop -e, --egress, --git-gate and the command"
                        .into(),
                ));
            }
            let mounts = mounts
                .iter()
                .map(|m| workspace::parse_mount(m))
                .collect::<Result<Vec<_>, _>>()?;
            let args = agent_run::AgentRunArgs {
                agent,
                tty,
                cwd,
                mounts,
                name,
                image: image.map(absolute_image),
                yes,
                dry_run,
                detach,
                rm,
                limits: RunLimits {
                    memory_bytes: memory.as_deref().map(run::parse_size).transpose()?,
                    pids,
                    cpus,
                },
            };
            return Ok(agent_run::run(&client, args).await?);
        }
        Command::Images { action } => match action {
            ImagesAction::Ls { json } => {
                let list = images::list(&client).await?;
                if json {
                    print_json(&list)?;
                } else {
                    println!("{:<14} {:<7} NAMES", "ID", "LAYERS");
                    for i in &list {
                        println!(
                            "{:<14} {:<7} {}",
                            i.id.get(..12).unwrap_or(&i.id),
                            i.layers,
                            i.names.join(", ")
                        );
                    }
                }
            }
            ImagesAction::Import { path, name } => {
                let path = std::path::absolute(&path).map_err(|source| CliError::Read {
                    path: path.clone(),
                    source,
                })?;
                let info = images::import(&client, &path, name.as_deref()).await?;
                println!("{}", info.id);
            }
            ImagesAction::Build {
                provider,
                dockerfile,
                name,
            } => {
                let (source, name) = match (provider, dockerfile) {
                    (Some(p), _) => {
                        let kind = match p {
                            ProviderArg::Claude => bottle_manifest::ProviderKind::Claude,
                            ProviderArg::Codex => bottle_manifest::ProviderKind::Codex,
                        };
                        let name = name.unwrap_or_else(|| agent_run::default_image(kind));
                        (images::ImageSource::Provider(kind), name)
                    }
                    (None, Some(df)) => (
                        images::ImageSource::Dockerfile(df),
                        name.unwrap_or_default(),
                    ),
                    (None, None) => {
                        return Err(CliError::Env("give a provider or --dockerfile".into()))
                    }
                };
                let info = images::build(&client, &source, &name).await?;
                println!("{}", info.id);
            }
        },
        Command::Resume { name, detach } => {
            return Ok(agent_run::resume(&client, &name, detach).await?);
        }
        Command::Run {
            agent: None,
            dry_run: _,
            yes: _,
            name,
            image,
            env,
            memory,
            pids,
            cpus,
            egress,
            rm,
            detach,
            json,
            interactive: _,
            tty,
            command,
            cwd,
            mounts,
            git_gate,
        } => {
            let mounts = mounts
                .iter()
                .map(|m| workspace::parse_mount(m))
                .collect::<Result<Vec<_>, _>>()?;
            let workspace = if cwd {
                let dir = std::env::current_dir().map_err(|e| {
                    CliError::Env(format!("--cwd: cannot read the current directory: {e}"))
                })?;
                Some(workspace::upload(&client, &dir).await?.id)
            } else {
                None
            };
            let terminal = if tty {
                run::Terminal::Tty
            } else {
                run::Terminal::Pipes
            };
            let tty_size = if detach { None } else { terminal.size()? };
            let (policy, secrets) = match &egress.egress {
                Some(path) => {
                    let (p, s) = load_egress(path)?;
                    (Some(p), s)
                }
                None => (None, BTreeMap::new()),
            };
            let req = RunRequest {
                create: CreateBottle {
                    name,
                    egress: policy,
                    secrets,
                    dlp: load_dlp(&egress.dlp)?,
                    git_gate: git_gate.as_ref().map(load_git_gate).transpose()?,
                },
                image: absolute_image(image.unwrap_or_default()),
                args: command,
                tty: tty_size,
                env: run::parse_env(&env)?,
                limits: RunLimits {
                    memory_bytes: memory.as_deref().map(run::parse_size).transpose()?,
                    pids,
                    cpus,
                },
                remove: rm,
                detach,
                workspace,
                mounts,
                ..RunRequest::default()
            };
            if detach {
                let info = run::detached(&client, &req).await?;
                if json {
                    print_json(&info)?;
                } else {
                    println!("{}", info.name);
                }
                return Ok(None);
            }
            return Ok(Some(run::run(&client, &req, terminal).await?));
        }
        Command::Exec {
            name,
            env,
            interactive: _,
            tty,
            command,
        } => {
            let terminal = if tty {
                run::Terminal::Tty
            } else {
                run::Terminal::Pipes
            };
            let req = ExecRequest {
                args: command,
                env: run::parse_env(&env)?,
                tty: terminal.size()?,
            };
            return Ok(Some(run::exec(&client, &name, &req, terminal).await?));
        }
        Command::GitGateKeys { name, git_gate } => {
            let req = load_git_gate(&git_gate)?;
            let _: BottleInfo = client
                .send(
                    Method::PUT,
                    &format!("/v1/bottles/{name}/git-gate/keys"),
                    &req,
                )
                .await?;
        }
        Command::Create {
            name,
            egress,
            git_gate,
            json,
        } => {
            let (policy, secrets) = match &egress.egress {
                Some(path) => {
                    let (p, s) = load_egress(path)?;
                    (Some(p), s)
                }
                None => (None, BTreeMap::new()),
            };
            let req = CreateBottle {
                name,
                egress: policy,
                secrets,
                dlp: load_dlp(&egress.dlp)?,
                git_gate: git_gate.as_ref().map(load_git_gate).transpose()?,
            };
            let info: BottleInfo = client.send(Method::POST, "/v1/bottles", &req).await?;
            if json {
                print_json(&info)?;
            } else {
                println!("{}", info.name);
            }
        }
        Command::Ls { json } => {
            let bottles: Vec<BottleInfo> = client.get("/v1/bottles").await?;
            if json {
                print_json(&bottles)?;
            } else {
                print!("{}", output::bottle_table(&bottles));
            }
        }
        Command::Inspect { name, json } => {
            let info: BottleInfo = client.get(&format!("/v1/bottles/{name}")).await?;
            if json {
                print_json(&info)?;
            } else {
                print!("{}", output::inspect(&info));
            }
        }
        Command::Rm { name, force } => {
            if !force {
                let info: BottleInfo = client.get(&format!("/v1/bottles/{name}")).await?;
                let running = info
                    .workload
                    .as_ref()
                    .is_some_and(|w| w.status == bottle_api::WorkloadStatus::Running);
                if running {
                    return Err(CliError::Env(format!(
                        "{name}'s workload is running: `bottle stop {name}` first, or `bottle rm -f {name}`"
                    )));
                }
            }
            client
                .call_empty(Method::DELETE, &format!("/v1/bottles/{name}"))
                .await?;
        }
        Command::Freeze { name } => {
            let _: BottleInfo = client
                .send(Method::POST, &format!("/v1/bottles/{name}/freeze"), &())
                .await?;
        }
        Command::Unfreeze { name } => {
            let _: BottleInfo = client
                .send(Method::POST, &format!("/v1/bottles/{name}/unfreeze"), &())
                .await?;
        }
        Command::Stats { name, watch, json } => stats(&client, name, watch, json).await?,
        Command::Policy {
            action: PolicyAction::Set { name, file, dlp },
        } => {
            let (egress, secrets) = load_egress(&file)?;
            let req = SetPolicy {
                egress,
                secrets,
                dlp: load_dlp(&dlp)?,
            };
            let _: BottleInfo = client
                .send(Method::PUT, &format!("/v1/bottles/{name}/policy"), &req)
                .await?;
        }
        Command::Agents { json } => {
            let Some(home) = bottle_manifest::paths::default_home() else {
                return Err(CliError::Env(
                    "cannot find the manifest home: set BOTTLE_HOME or HOME".into(),
                ));
            };
            let cwd = std::env::current_dir().map_err(|source| CliError::Read {
                path: PathBuf::from("."),
                source,
            })?;
            let listing = agents::Listing::load(home, cwd);
            if json {
                print_json(&listing)?;
            } else {
                print!("{}", listing.render());
            }
            if listing.has_errors() {
                return Err(CliError::Env(
                    "some manifests have errors (listed above)".into(),
                ));
            }
        }
        Command::Ca { name } => {
            print!(
                "{}",
                client.get_text(&format!("/v1/bottles/{name}/ca")).await?
            );
        }
        Command::Logs { name, net, follow } => {
            let what = if net { "audit" } else { "logs" };
            let mut offset = 0u64;
            loop {
                let page: serde_json::Value = client
                    .get(&format!("/v1/bottles/{name}/{what}?offset={offset}"))
                    .await?;
                if let Some(lines) = page["lines"].as_str() {
                    print!("{lines}");
                }
                let next = page["next_offset"].as_u64().unwrap_or(offset);
                let size = page["size"].as_u64().unwrap_or(0);
                // The workload's log ends with the workload; the audit log goes on.
                let live = follow && page["running"].as_bool().unwrap_or(net);
                if next >= size && !live {
                    break;
                }
                if next == offset || next >= size {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                offset = next;
            }
        }
        Command::Stop { name, time } => {
            let info = run::stop(&client, &name, time).await?;
            println!("{} {}", info.name, info.display_state());
        }
        Command::KillSwitch { action, json } => {
            let state: KillSwitch = match action {
                KillAction::Status => client.get("/v1/kill-switch").await?,
                KillAction::On | KillAction::Off => {
                    let body = KillSwitch {
                        engaged: matches!(action, KillAction::On),
                    };
                    client.send(Method::PUT, "/v1/kill-switch", &body).await?
                }
            };
            if json {
                print_json(&state)?;
            } else {
                println!(
                    "kill switch {}",
                    if state.engaged { "engaged" } else { "released" }
                );
            }
        }
    }
    Ok(None)
}

async fn fetch_stats(client: &Client, name: &Option<String>) -> Result<Vec<BottleStats>, CliError> {
    Ok(match name {
        Some(name) => vec![client.get(&format!("/v1/bottles/{name}/stats")).await?],
        None => client.get("/v1/stats").await?,
    })
}

async fn stats(
    client: &Client,
    name: Option<String>,
    watch: bool,
    json: bool,
) -> Result<(), CliError> {
    let mut previous: Vec<BottleStats> = Vec::new();
    loop {
        let samples = fetch_stats(client, &name).await?;
        if json {
            // One JSON document per sample: a list when watching, so consumers can stream.
            if watch {
                println!("{}", serde_json::to_string(&samples)?);
            } else {
                print_json(&samples)?;
            }
        } else {
            if watch {
                print!("\x1b[2J\x1b[H");
            }
            for s in &samples {
                let prev = previous.iter().find(|p| p.id == s.id);
                print!("{}", output::stats(s, prev));
            }
            if samples.is_empty() {
                println!("no bottles");
            }
        }
        if !watch {
            return Ok(());
        }
        previous = samples;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

fn main() -> ExitCode {
    // clap exits with 2 on usage errors by itself.
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("bottle: cannot start: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(None) => ExitCode::SUCCESS,
        // Shell convention: statuses outside 0..=255 cannot be passed on as they are.
        Ok(Some(code)) => ExitCode::from(u8::try_from(code).unwrap_or(255)),
        Err(e) => {
            eprintln!("bottle: {e}");
            ExitCode::from(1)
        }
    }
}
