//! `POST /v1/bottles/{name}/exec`: one more process in a bottle's running workload, joined to
//! its namespaces, cgroups, user, environment and seccomp profile by
//! `bottle_launcher::nsexec` (Debian's runc 1.1 cannot `exec` into these containers), streamed
//! like a foreground run (`crate::stream`).
//!
//! The process lives as long as the session: when the client goes away it is killed. It is in
//! the container's pid namespace, so it also dies with the workload (stop, rm, exit).

use std::os::fd::AsFd;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use bottle_api::{ApiError, ErrorCode, ExecRequest, RunFrame};
use bottle_launcher::nsexec::{self, ExecUser, NsExecError};
use bottle_launcher::runc::{self, Runc};
use bottle_launcher::Status;
use bytes::Bytes;
use tokio::sync::{mpsc, Mutex};
use tracing::{info, warn};

use crate::launch;
use crate::manager::{Caller, Manager};
use crate::run::{Msg, Readers, CHANNEL_FRAMES, DRAIN_TIMEOUT};
use crate::stream::{Input, Session};

/// Makes the frame for one stream's bytes.
type Framing = fn(Vec<u8>) -> RunFrame;

/// How often the waiter checks on the process and the client.
const POLL: Duration = Duration::from_millis(100);
/// Bounds on the request.
const MAX_ARGS: usize = 4096;

fn bad(message: impl Into<String>) -> ApiError {
    ApiError::new(ErrorCode::BadRequest, message)
}

fn internal(message: impl Into<String>) -> ApiError {
    ApiError::new(ErrorCode::Internal, message)
}

fn validate(req: &ExecRequest) -> Result<(), ApiError> {
    if req.args.is_empty() || req.args[0].is_empty() {
        return Err(bad("exec needs a command (after `--`)"));
    }
    if req.args.len() > MAX_ARGS || req.args.iter().any(|a| a.contains('\0')) {
        return Err(bad("arguments must be fewer than 4096, without NUL"));
    }
    for (k, v) in &req.env {
        if k.is_empty() || k.contains(['=', '\0']) || v.contains('\0') {
            return Err(bad(format!(
                "environment variable {k:?}: names must be non-empty without '=' or NUL, values without NUL"
            )));
        }
    }
    Ok(())
}

/// The container process's user, environment and working directory, from its bundle.
fn container_process(config: &std::path::Path) -> Result<(ExecUser, Vec<String>), ApiError> {
    let text = std::fs::read_to_string(config)
        .map_err(|e| internal(format!("{}: {e}", config.display())))?;
    let v: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| internal(format!("{}: {e}", config.display())))?;
    let p = &v["process"];
    let id = |v: &serde_json::Value| v.as_u64().and_then(|n| u32::try_from(n).ok());
    let (Some(uid), Some(gid)) = (id(&p["user"]["uid"]), id(&p["user"]["gid"])) else {
        return Err(internal(format!("{}: no process user", config.display())));
    };
    let additional_gids = p["user"]["additionalGids"]
        .as_array()
        .map(|a| a.iter().filter_map(id).collect())
        .unwrap_or_default();
    let env = p["env"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|e| e.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    let cwd = p["cwd"].as_str().unwrap_or("/").to_owned();
    let rlimits = p["rlimits"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|r| {
                    Some((
                        r["type"].as_str()?.to_owned(),
                        r["soft"].as_u64()?,
                        r["hard"].as_u64()?,
                    ))
                })
                .collect()
        })
        .unwrap_or_default();
    let oom_score_adj = p["oomScoreAdj"]
        .as_i64()
        .and_then(|n| i32::try_from(n).ok());
    Ok((
        ExecUser {
            uid,
            gid,
            additional_gids,
            cwd,
            rlimits,
            oom_score_adj,
        },
        env,
    ))
}

/// Starts the process and returns its session. Errors before it runs are API errors
/// (`command_not_found` when the command does not exist in the container).
pub async fn start(
    caller: Caller,
    manager: Arc<Mutex<Manager>>,
    name: &str,
    req: ExecRequest,
) -> Result<Session, ApiError> {
    validate(&req)?;
    let (info, run_dir) = {
        let m = manager.lock().await;
        (m.get(caller, name)?, m.run_dir())
    };
    let id = info.id.clone();
    let bottle = info.name.clone();
    tokio::task::spawn_blocking(move || start_blocking(&bottle, &id, &run_dir, req))
        .await
        .map_err(|e| internal(format!("exec task failed: {e}")))?
}

fn start_blocking(
    bottle: &str,
    id: &str,
    run_dir: &std::path::Path,
    req: ExecRequest,
) -> Result<Session, ApiError> {
    let not_running = || {
        ApiError::new(
            ErrorCode::Conflict,
            format!("bottle {bottle:?} has no running workload; start one with `bottle run`"),
        )
    };
    let root = launch::runc_root(run_dir);
    if !root.join(id).exists() {
        return Err(not_running());
    }
    let state = Runc::new(crate::launch::runtime(), &root)
        .and_then(|r| r.container(id))
        .and_then(|c| c.state())
        .map_err(|_| not_running())?;
    match state.status {
        Status::Running => {}
        Status::Paused => {
            return Err(ApiError::new(
                ErrorCode::Conflict,
                format!("bottle {bottle:?} is frozen; unfreeze it first"),
            ))
        }
        _ => return Err(not_running()),
    }
    let (user, mut env) = container_process(&launch::bundle_dir(run_dir, id).join("config.json"))?;
    for (k, v) in &req.env {
        let prefix = format!("{k}=");
        env.retain(|e| !e.starts_with(&prefix));
        env.push(format!("{k}={v}"));
    }
    let mut cmd = Command::new(&req.args[0]);
    cmd.args(&req.args[1..]).env_clear();
    for e in &env {
        if let Some((k, v)) = e.split_once('=') {
            cmd.env(k, v);
        }
    }
    let (tx, rx) = mpsc::channel(CHANNEL_FRAMES);
    let mut input = Input::default();
    let mut outputs: Vec<(std::fs::File, Framing)> = Vec::new();
    let tty = req.tty.is_some();
    if let Some(size) = req.tty {
        let pty = nix::pty::openpty(None, None).map_err(|e| internal(format!("openpty: {e}")))?;
        bottle_launcher::console::set_size(pty.master.as_fd(), size.rows, size.cols)
            .map_err(|e| internal(format!("terminal size: {e}")))?;
        let slave = std::fs::File::from(pty.slave);
        let dup = |f: &std::fs::File| f.try_clone().map_err(|e| internal(format!("pty: {e}")));
        cmd.stdin(dup(&slave)?).stdout(dup(&slave)?).stderr(slave);
        let master = std::fs::File::from(pty.master);
        outputs.push((dup(&master)?, RunFrame::Stdout));
        input.console = Some(Arc::new(master));
    } else {
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
    }
    // The forking thread becomes the process's supervisor once we hand it the readers.
    let (setup_tx, setup_rx) = std::sync::mpsc::channel::<(Readers, mpsc::Sender<Msg>)>();
    let name = bottle.to_owned();
    let supervise_it = move |mut child: Child| match setup_rx.recv() {
        Ok((readers, tx)) => supervise(name, child, readers, tx),
        Err(_) => {
            let _ = child.kill();
            let _ = child.wait();
        }
    };
    let io = match nsexec::spawn(cmd, state.pid, &user, tty, supervise_it) {
        Ok(io) => io,
        Err(NsExecError::Spawn(e)) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(ApiError::new(
                ErrorCode::CommandNotFound,
                format!(
                    "command {:?} not found in bottle {bottle:?}; check the name and the workload's PATH",
                    req.args[0]
                ),
            ))
        }
        Err(NsExecError::Spawn(e)) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            return Err(ApiError::new(
                ErrorCode::CommandNotFound,
                format!(
                    "command {:?} is not executable in bottle {bottle:?}",
                    req.args[0]
                ),
            ))
        }
        Err(e) => return Err(internal(e.to_string())),
    };
    if let Some(stdin) = io.stdin {
        input.stdin = Some(std::fs::File::from(std::os::fd::OwnedFd::from(stdin)));
    }
    if let Some(out) = io.stdout {
        outputs.push((
            std::fs::File::from(std::os::fd::OwnedFd::from(out)),
            RunFrame::Stdout,
        ));
    }
    if let Some(err) = io.stderr {
        outputs.push((
            std::fs::File::from(std::os::fd::OwnedFd::from(err)),
            RunFrame::Stderr,
        ));
    }
    info!(bottle, pid = io.pid, tty, "exec started");
    let readers = Readers::new();
    for (f, frame) in outputs {
        readers.spawn(f, Some(tx.clone()), None, frame);
    }
    // If the supervisor is gone already (cannot happen short of a bug), the readers still end
    // with the process.
    let _ = setup_tx.send((readers, tx));
    Ok(Session { rx, input })
}

/// Waits for the process (killing it if the client goes away), drains its output and sends
/// the exit frame.
fn supervise(bottle: String, mut child: Child, mut readers: Readers, tx: mpsc::Sender<Msg>) {
    let mut killed = false;
    // Woken the moment the process exits (`bottle exec` waits for it), not at a tick.
    let pidfd = i32::try_from(child.id()).ok().and_then(runc::pidfd_open);
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) => {}
            Err(e) => {
                warn!(bottle, error = %e, "waiting for the exec'd process");
                break None;
            }
        }
        if tx.is_closed() && !killed {
            warn!(bottle, "exec client went away; killing its process");
            let _ = child.kill();
            killed = true;
        }
        match &pidfd {
            Some(fd) => runc::wait_readable(fd, POLL),
            None => std::thread::sleep(Duration::from_millis(10)),
        }
    };
    if !readers.wait(DRAIN_TIMEOUT) {
        warn!(
            bottle,
            "exec output still open after exit; not waiting for it"
        );
    }
    let code = status.map_or(255, |s| {
        use std::os::unix::process::ExitStatusExt;
        s.code().or(s.signal().map(|sig| 128 + sig)).unwrap_or(255)
    });
    info!(bottle, code, "exec finished");
    let _ = tx.blocking_send(Msg::End(Bytes::from(
        RunFrame::Exit { code, reason: None }.encode(),
    )));
}
