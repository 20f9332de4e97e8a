//! `bottle-agent`: the privileged per-host daemon.

mod api;
mod config;
mod datapath;
mod exec;
mod images;
mod ipam;
mod keeper;
mod launch;
mod logfile;
mod manager;
mod netns;
mod network;
mod paths;
mod preflight;
mod run;
mod selfcheck;
mod services;
mod spare;
mod state;
mod stream;
mod trash;
mod workspace;

use std::os::fd::AsRawFd;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use tokio::sync::Mutex;
use tracing::{error, info};
use tracing_subscriber::EnvFilter;

use crate::config::AgentConfig;
use crate::datapath::Datapath;
use crate::manager::Manager;

/// Fixed exit codes for fatal start-up failures, so supervisors can tell them apart.
#[derive(Debug, Clone, Copy)]
#[repr(u8)]
enum AgentExit {
    Config = 10,
    Preflight = 11,
    State = 12,
    Datapath = 13,
    Netlink = 14,
    Pool = 15,
    Socket = 16,
    Runtime = 17,
}

impl From<AgentExit> for ExitCode {
    fn from(e: AgentExit) -> Self {
        ExitCode::from(e as u8)
    }
}

/// The bottle host agent: per-bottle network namespaces enforced by eBPF.
#[derive(Debug, Parser)]
#[command(name = "bottle-agent", version)]
struct Args {
    /// Configuration file (TOML). Missing at the default path means defaults.
    #[arg(long)]
    config: Option<PathBuf>,
}

fn main() -> ExitCode {
    // `bottle-agent keep …`: a detached workload's keeper (see `keeper`), not an agent.
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if argv.get(1).is_some_and(|a| a == "keep") {
        return keeper::main(&argv[2..]);
    }
    let args = Args::parse();
    let explicit = args.config.is_some();
    let config_path = args
        .config
        .unwrap_or_else(|| PathBuf::from(paths::DEFAULT_CONFIG));
    let config = match AgentConfig::load(&config_path, explicit) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("bottle-agent: {e}");
            return AgentExit::Config.into();
        }
    };
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&config.log))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt().with_env_filter(filter).init();

    launch::set_runtime(config.runtime.binary());
    // Not fatal: bottles without a workload need no runtime. `bottle run` fails with the same
    // advice until it is installed.
    if let Some(problem) = preflight::runtime(config.runtime.binary()) {
        tracing::warn!("{problem}");
    }
    let problems = preflight::check(&config.bpf_pin_root);
    if !problems.is_empty() {
        for p in &problems {
            eprintln!("bottle-agent: {p}");
        }
        return AgentExit::Preflight.into();
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("bottle-agent: cannot start the async runtime: {e}");
            return AgentExit::Runtime.into();
        }
    };
    runtime.block_on(run(config))
}

async fn run(config: AgentConfig) -> ExitCode {
    for dir in [&config.state_dir, &config.run_dir] {
        if let Err(e) = state::create_private_dir(dir) {
            error!("{e}");
            return AgentExit::State.into();
        }
    }
    // Traversable, not listable: runc's init (the mapped container root) must reach the
    // workloads' rootfs under it (see `paths::RUN_DIR_MODE`).
    if let Err(e) = std::fs::set_permissions(
        &config.run_dir,
        std::fs::Permissions::from_mode(paths::RUN_DIR_MODE),
    ) {
        error!("cannot set the mode of {}: {e}", config.run_dir.display());
        return AgentExit::State.into();
    }
    if let Err(e) = workspace::prepare(&config.state_dir) {
        error!("preparing the workspace directories: {e}");
        return AgentExit::State.into();
    }
    // `bottle run`'s containers are detached by runc; as their subreaper the agent can reap
    // them and learn their exit status.
    if let Err(e) = bottle_launcher::runc::set_child_subreaper() {
        error!("{e}");
        return AgentExit::Runtime.into();
    }
    // One agent per state directory: a second one would fight over the same bottles. The lock
    // file is root-only: with `run_dir` traversable, anyone could otherwise open it and hold
    // the lock.
    let lock_path = config.run_dir.join(paths::LOCK_FILE);
    let _ = std::fs::set_permissions(
        &lock_path,
        std::fs::Permissions::from_mode(paths::PRIVATE_FILE_MODE),
    );
    let lock = match std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(paths::PRIVATE_FILE_MODE)
        .open(&lock_path)
    {
        Ok(f) => f,
        Err(e) => {
            error!("cannot open {}: {e}", lock_path.display());
            return AgentExit::State.into();
        }
    };
    // SAFETY: flock on a valid, owned file descriptor; no memory is involved.
    if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        error!(
            "another bottle-agent holds {}; stop it first",
            lock_path.display()
        );
        return AgentExit::State.into();
    }

    // What a previous agent discarded but had no time to delete.
    trash::empty(&config.run_dir);
    trash::empty(&config.state_dir);

    let datapath = match Datapath::load(&config.bpf_pin_root, config.tc_attach) {
        Ok(d) => d,
        Err(e) => {
            error!("{e}");
            return AgentExit::Datapath.into();
        }
    };
    let netlink = match network::connect() {
        Ok(h) => h,
        Err(e) => {
            error!("{e}");
            return AgentExit::Netlink.into();
        }
    };
    let mut extra_cas = Vec::new();
    for path in &config.upstream_ca_files {
        match std::fs::read(path) {
            Ok(pem) => extra_cas.push(pem),
            Err(e) => {
                error!("cannot read upstream CA {}: {e}", path.display());
                return AgentExit::Config.into();
            }
        }
    }
    let trust = match bottle_proxy::UpstreamTrust::new(&extra_cas) {
        Ok(t) => t,
        Err(e) => {
            error!("{e}");
            return AgentExit::Config.into();
        }
    };
    // The git-gate's HTTPS upstreams trust the same CAs (libgit2, process-wide).
    if let Err(e) = bottle_gitgate::upstream::trust_ca_files(&config.upstream_ca_files) {
        error!("{e}");
        return AgentExit::Config.into();
    }
    let pool = config.pool;
    let socket = config.socket.clone();
    let group = config.socket_group.clone();
    let (run_dir, state_dir) = (config.run_dir.clone(), config.state_dir.clone());
    let mut manager = Manager::new(config, datapath, netlink.clone(), trust);
    manager.adopt().await;
    match network::routes_overlapping(&netlink, pool, &manager.own_ifindexes()).await {
        Ok(conflicts) if !conflicts.is_empty() => {
            error!(
                "address pool {pool} overlaps host routes: {}; choose another `pool` in the agent config",
                conflicts.join(", ")
            );
            return AgentExit::Pool.into();
        }
        Ok(_) => {}
        Err(e) => {
            error!("cannot check the pool against host routes: {e}");
            return AgentExit::Netlink.into();
        }
    }
    let listener = match api::bind(&socket, &group).await {
        Ok(l) => l,
        Err(e) => {
            error!("{e}");
            return AgentExit::Socket.into();
        }
    };
    info!(socket = %socket.display(), "bottle-agent ready");
    let manager = Arc::new(Mutex::new(manager));
    run::readopt(manager.clone()).await;
    // After adoption, which removes a previous run's spares as orphans.
    tokio::spawn(spare::keep(manager.clone()));
    let mut sigterm = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
    {
        Ok(s) => s,
        Err(e) => {
            error!("cannot install SIGTERM handler: {e}");
            return AgentExit::Runtime.into();
        }
    };
    tokio::select! {
        () = api::serve(listener, manager.clone()) => {}
        _ = tokio::signal::ctrl_c() => info!("interrupted; bottles stay up and enforced"),
        _ = sigterm.recv() => info!("terminated; bottles stay up and enforced"),
    }
    let _ = std::fs::remove_file(&socket);
    // Spares are not bottles: none stays behind (one being made is waited for, bounded).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while manager.lock().await.stop_spares() && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    manager.lock().await.remove_spares().await;
    manager.lock().await.finish_drains().await;
    // Removed bottles' directories are deleted before the agent goes (bounded; a next start
    // deletes what is left).
    let _ = tokio::task::spawn_blocking(move || {
        trash::wait_empty(&[&run_dir, &state_dir], std::time::Duration::from_secs(10))
    })
    .await;
    drop(lock);
    ExitCode::SUCCESS
}
