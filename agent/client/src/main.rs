//! `bottle`: the client for `bottle-agent`. Talks JSON over the agent's Unix socket; carries
//! no Linux-only dependency so it builds for macOS too.

mod http;
mod output;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use ::http::Method;
use bottle_api::{BottleInfo, BottleStats, CreateBottle, KillSwitch};
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
enum Command {
    /// Create a bottle: a network namespace that can reach only the agent's services.
    Create {
        /// Name (`^[a-z][a-z0-9-]{0,30}$`); the agent picks one when absent.
        #[arg(long)]
        name: Option<String>,
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
    Rm { name: String },
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

async fn run(cli: Cli) -> Result<(), CliError> {
    let client = Client::new(&socket_path());
    match cli.command {
        Command::Create { name, json } => {
            let req = CreateBottle {
                name,
                egress: None,
                secrets: BTreeMap::new(),
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
        Command::Rm { name } => {
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
    Ok(())
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
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bottle: {e}");
            ExitCode::from(1)
        }
    }
}
