//! `POST /v1/run`: create a bottle, run one non-interactive workload in it with runc, stream
//! the workload's output as [`RunFrame`]s, then clean up (and remove the bottle with
//! `remove`).
//!
//! The manager's lock is held only to create (and finally remove) the bottle: the launch and
//! the workload run without it, so every other API call keeps working meanwhile. The
//! container's init is re-parented to the agent (a child subreaper, set in `main`); a
//! dedicated thread reaps it. If the client goes away, the workload is killed: a
//! non-interactive run lives exactly as long as the request that started it, unless it was
//! detached (`detach`), in which case the API answers once the workload has started and the
//! workload lives on until it exits, is stopped ([`stop`]) or its bottle removed.
//!
//! Either way the output also goes to a size-capped log in the bottle's state directory
//! (`workload.log`, 0600, one rotated generation), and the exit code is recorded in the
//! bottle's metadata.

use std::collections::BTreeMap;
use std::io::Read;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bottle_api::provision::HomeFile;
use bottle_api::{ApiError, BottleInfo, ErrorCode, RunFrame, RunRequest, WorkloadStatus};
use bottle_launcher::runc::{self, Container, Runc};
use bottle_launcher::Status;
use bytes::Bytes;
use nix::sys::signal::Signal;
use tokio::sync::{mpsc, watch, Mutex};
use tracing::{debug, error, info, warn};

use crate::launch::{self, LaunchParams, WorkloadIo};
use crate::logfile::CappedLog;
use crate::manager::{Caller, Manager};
use crate::paths::NETNS_DIR;
use crate::state::WorkloadRecord;
use crate::stream::{Input, Session};

/// One piece of the response body; `End` is the last one (the exit trailer).
pub enum Msg {
    Frame(Bytes),
    End(Bytes),
}

/// Frames buffered between the workload and a slow client; beyond this the readers block,
/// and with them (through the full pipe) the workload: backpressure, not unbounded memory.
pub(crate) const CHANNEL_FRAMES: usize = 64;
/// Bytes read from the workload's stdout/stderr at a time (one frame at most).
const READ_CHUNK: usize = 16 * 1024;
/// How often the reaper checks on the client and on runc while the workload runs.
const POLL: Duration = Duration::from_millis(500);
/// How long into a run its bottle's spare is replaced at the latest (see `launch`).
const SPARE_DELAY: Duration = Duration::from_millis(50);
/// How long a run waits for a spare being made before making its own network.
const SPARE_WAIT: Duration = Duration::from_secs(1);
/// How long the output readers may take to drain after the workload exited (the pipes close
/// when the container's last process is gone, which the kernel ensures when init dies).
pub(crate) const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Largest workload log; one rotated generation (`workload.log.1`) is kept besides.
pub const LOG_CAP: u64 = 8 << 20;
/// `stop`: default grace period between SIGTERM and SIGKILL, and its upper bound.
const STOP_GRACE: Duration = Duration::from_secs(10);
const MAX_STOP_GRACE: Duration = Duration::from_secs(600);
/// `stop`: how long the workload may take to be reaped (and cleaned up) after SIGKILL.
const KILL_WAIT: Duration = Duration::from_secs(30);

/// Running workloads by bottle id. Each entry's sender lives in the workload's reaper and is
/// dropped once the workload has exited and its exit code is recorded, which wakes `stop`.
static RUNNING: std::sync::Mutex<BTreeMap<String, watch::Receiver<()>>> =
    std::sync::Mutex::new(BTreeMap::new());

fn running() -> std::sync::MutexGuard<'static, BTreeMap<String, watch::Receiver<()>>> {
    RUNNING.lock().unwrap_or_else(|p| p.into_inner())
}

/// Bottles whose workload is being launched (before it shows in [`RUNNING`]), so two runs
/// in one existing bottle cannot both start. Released on drop.
static LAUNCHING: std::sync::Mutex<std::collections::BTreeSet<String>> =
    std::sync::Mutex::new(std::collections::BTreeSet::new());

struct Launching(String);

impl Launching {
    /// Marks `id` as launching; false when it already is.
    fn claim(id: &str) -> bool {
        LAUNCHING
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.to_owned())
    }
}

impl Drop for Launching {
    fn drop(&mut self) {
        LAUNCHING
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.0);
    }
}

/// The run's home files, plus a `~/.gitconfig` pointing the bottle's git-gate repos'
/// upstream URLs at the gate (and the gate's git identity) when the run made a bottle with a
/// gate and brought no git config of its own (a manifest run writes its own).
fn with_gitconfig(req: &RunRequest, gateway: std::net::Ipv4Addr) -> Vec<HomeFile> {
    let mut files = req.home_files.clone();
    if let Some(gate) = &req.create.git_gate {
        if !files.iter().any(|f| f.path == ".gitconfig") {
            files.push(HomeFile {
                path: ".gitconfig".into(),
                contents: bottle_api::gitgate::render_gitconfig(&gate.spec, gateway),
                mode: 0o644,
            });
        }
    }
    files
}

/// What `POST /v1/run` answers with.
pub enum Started {
    /// The workload's output and exit status, as they come, and where its input goes.
    Stream(Session),
    /// `detach`: the bottle; the workload runs on.
    Detached(Box<BottleInfo>),
}

/// Bounds on what a request may carry.
const MAX_IMAGE_SPEC: usize = 4096;
const MIN_MEMORY: u64 = 4 << 20;
/// Larger limits are typos (1 PiB of memory; the kernel's largest pid_max).
const MAX_MEMORY: u64 = 1 << 50;
const MAX_PIDS: i64 = 4 << 20;

fn bad(message: impl Into<String>) -> ApiError {
    ApiError::new(ErrorCode::BadRequest, message)
}

fn validate(caller: Caller, req: &RunRequest) -> Result<(), ApiError> {
    let image = req.image.as_str();
    if image.is_empty() || image.len() > MAX_IMAGE_SPEC || image.contains('\0') {
        return Err(bad("image must be a name, an id or a path"));
    }
    // Importing reads the path with the agent's privileges: only root may name one, so a
    // user cannot have the agent read files they could not read themselves.
    let is_path = image.starts_with('/') || image.starts_with("./") || image.starts_with("../");
    if is_path && !caller.is_root() {
        return Err(ApiError::new(
            ErrorCode::Forbidden,
            "only root may import an image from a path; use an image already in the cache",
        ));
    }
    if req.args.iter().any(|a| a.contains('\0')) {
        return Err(bad("arguments must not contain NUL"));
    }
    for (k, v) in &req.env {
        if k.is_empty() || k.contains(['=', '\0']) || v.contains('\0') {
            return Err(bad(format!(
                "environment variable {k:?}: names must be non-empty without '=' or NUL, values without NUL"
            )));
        }
    }
    for (what, path) in [("home", &req.home), ("workdir", &req.workdir)] {
        if let Some(path) = path {
            let plain = path.starts_with('/')
                && path.len() <= bottle_api::provision::MAX_HOME_PATH
                && (path == "/" || bottle_api::provision::home_path_problem(&path[1..]).is_none());
            if !plain {
                return Err(bad(format!(
                    "{what} {path:?} must be an absolute path without `.` or `..` components"
                )));
            }
        }
    }
    if req.home_files.len() > bottle_api::provision::MAX_HOME_FILES {
        return Err(bad(format!(
            "at most {} home files",
            bottle_api::provision::MAX_HOME_FILES
        )));
    }
    for f in &req.home_files {
        if let Some(reason) = bottle_api::provision::home_path_problem(&f.path) {
            return Err(bad(format!("home file {:?} {reason}", f.path)));
        }
    }
    if req.bottle.is_some() && req.create != bottle_api::CreateBottle::default() {
        return Err(bad(
            "give either an existing bottle or what to create, not both",
        ));
    }
    let l = &req.limits;
    if l.memory_bytes.is_some_and(|m| m < MIN_MEMORY) {
        return Err(bad(format!(
            "memory limit must be at least {MIN_MEMORY} bytes"
        )));
    }
    if l.memory_bytes.is_some_and(|m| m > MAX_MEMORY) {
        return Err(bad(format!(
            "memory limit must be at most {MAX_MEMORY} bytes (1 PiB); check the unit"
        )));
    }
    if l.pids.is_some_and(|p| p < 1) {
        return Err(bad("pids limit must be at least 1"));
    }
    if l.pids.is_some_and(|p| p > MAX_PIDS) {
        return Err(bad(format!("pids limit must be at most {MAX_PIDS}")));
    }
    if l.cpus
        .is_some_and(|c| !c.is_finite() || c <= 0.0 || c > 1024.0)
    {
        return Err(bad("cpus must be a positive number"));
    }
    if let Some(id) = &req.workspace {
        crate::workspace::check(caller.uid, id)?;
    }
    if req.mounts.len() > crate::workspace::MAX_MOUNTS {
        return Err(bad(format!(
            "at most {} --mount per run",
            crate::workspace::MAX_MOUNTS
        )));
    }
    for m in &req.mounts {
        if !m.host.starts_with('/') || m.host.contains('\0') {
            return Err(bad(format!(
                "--mount host path {:?} must be absolute",
                m.host
            )));
        }
        crate::workspace::check_guest(&m.guest).map_err(bad)?;
    }
    Ok(())
}

/// Creates the bottle, launches the workload and returns the stream of its output (or, when
/// detached, the bottle). Errors before the workload starts are returned (and leave no bottle
/// behind).
///
/// `interactive`: the client streams input (an upgraded connection), so the workload gets a
/// stdin pipe, or with `tty` a terminal; otherwise its stdin is `/dev/null`.
pub async fn start(
    caller: Caller,
    manager: Arc<Mutex<Manager>>,
    req: RunRequest,
    interactive: bool,
) -> Result<Started, ApiError> {
    validate(caller, &req)?;
    if req.tty.is_some() && (req.detach || !interactive) {
        return Err(bad(
            "a terminal needs an interactive stream (not --detach, and the client must ask for the upgrade)",
        ));
    }
    // On a task of its own: if the client goes away mid-launch, hyper drops this future, but
    // the launch still completes and hands over to its reaper, which then sees nobody
    // listening, kills the workload and cleans up. Cancelling halfway would leak a container.
    tokio::spawn(launch(caller, manager, req, interactive))
        .await
        .map_err(|e| ApiError::new(ErrorCode::Internal, format!("run task failed: {e}")))?
}

async fn launch(
    caller: Caller,
    manager: Arc<Mutex<Manager>>,
    req: RunRequest,
    interactive: bool,
) -> Result<Started, ApiError> {
    // A new bottle's rootfs, mounted while its network was made.
    let mut prepared = None;
    if req.bottle.is_none() {
        // The spare being made (after the previous run) is nearly ready: waited for, off the
        // manager's lock, rather than made twice over.
        let m = manager.lock().await;
        if let Some(finished) = m.spare_coming() {
            let notified = finished.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            drop(m);
            let _ = tokio::time::timeout(SPARE_WAIT, notified).await;
        }
    }
    let (info, created, _launching, ca_pem, run_dir, image_dir, log_path, state_dir) = {
        let mut m = manager.lock().await;
        let info = match &req.bottle {
            Some(name) => {
                let info = m.get(caller, name)?;
                if running().contains_key(&info.id) || !Launching::claim(&info.id) {
                    return Err(ApiError::new(
                        ErrorCode::Conflict,
                        format!(
                            "a workload is already running in {name:?}; `bottle stop {name}` first"
                        ),
                    ));
                }
                info
            }
            None => {
                // The rootfs is mounted while the network is made: both need only the id.
                // Recorded with the bottle's first metadata: an agent that dies halfway
                // leaves a record its successor finds (see `readopt`).
                let reserved = m.reserve().with_workload(
                    WorkloadRecord {
                        image: req.image.clone(),
                        exit_code: None,
                    },
                    req.agent.clone(),
                );
                let rootfs_id = reserved.id().to_owned();
                let (run_dir, image_dir, image, id) = (
                    m.run_dir(),
                    m.image_dir(),
                    req.image.clone(),
                    rootfs_id.clone(),
                );
                let rootfs = tokio::task::spawn_blocking(move || {
                    launch::prepare(&run_dir, &image_dir, &image, &id)
                });
                let created = m
                    .create_reserved(caller, req.create.clone(), "runc", reserved)
                    .await;
                // Awaited either way: a failed create's rootfs is removed before its id (a
                // spare's) can be reserved again, which needs this manager.
                let rootfs = rootfs.await.unwrap_or_else(|e| {
                    Err(launch::LaunchError::Io {
                        path: std::path::PathBuf::from("rootfs task"),
                        source: std::io::Error::other(e.to_string()),
                    })
                });
                let info = match created {
                    Ok(info) => info,
                    Err(e) => {
                        let (run_dir, id) = (m.run_dir(), rootfs_id);
                        let _ = tokio::task::spawn_blocking(move || launch::cleanup(&run_dir, &id))
                            .await;
                        return Err(e.into());
                    }
                };
                // A failed prepare fails the launch below, which removes the bottle.
                prepared = Some(rootfs);
                if !Launching::claim(&info.id) {
                    // Unreachable: a new id is nobody's.
                    return Err(ApiError::new(ErrorCode::Internal, "bottle id in use"));
                }
                info
            }
        };
        let created = req.bottle.is_none();
        let launching = Launching(info.id.clone());
        match m.ca_pem(caller, &info.name) {
            Ok(ca) => (
                info.clone(),
                created,
                launching,
                ca,
                m.run_dir(),
                m.image_dir(),
                m.workload_log_path(&info.id),
                m.state_dir(),
            ),
            Err(e) => {
                if created {
                    let _ = m.remove(caller, &info.name).await;
                }
                return Err(e.into());
            }
        }
    };
    let params = LaunchParams {
        id: info.id.clone(),
        hostname: info.name.clone(),
        netns_path: std::path::Path::new(NETNS_DIR).join(&info.netns),
        resolv_conf: std::path::Path::new(crate::paths::ETC_NETNS_DIR)
            .join(&info.netns)
            .join("resolv.conf"),
        ca_pem,
        image: req.image.clone(),
        image_dir,
        run_dir: run_dir.clone(),
        args: req.args.clone(),
        env: req.env.clone(),
        memory_bytes: req.limits.memory_bytes,
        pids: req.limits.pids,
        cpus: req.limits.cpus,
        home: req.home.as_ref().map(std::path::PathBuf::from),
        workdir: req.workdir.as_ref().map(std::path::PathBuf::from),
        home_files: with_gitconfig(&req, info.gateway_address),
        caller_uid: caller.uid,
        state_dir,
        workspace: req.workspace.clone(),
        mounts: req.mounts.clone(),
        gateway: info.gateway_address,
        io: match (req.tty, interactive && !req.detach) {
            (Some(t), true) => WorkloadIo::Tty {
                rows: t.rows,
                cols: t.cols,
            },
            (None, true) => WorkloadIo::Pipes,
            // Detached: the keeper writes the log, and the workload survives the agent.
            (_, false) if req.detach => WorkloadIo::Kept {
                log: log_path.clone(),
                cap: LOG_CAP,
            },
            (_, false) => WorkloadIo::Output,
        },
    };
    // Recorded before the launch (a new bottle's with its metadata, above): an agent that
    // dies halfway leaves a record its successor finds (and cleans up after, see `readopt`),
    // never an unrecorded container.
    if !created {
        let record = WorkloadRecord {
            image: req.image.clone(),
            exit_code: None,
        };
        let recorded = manager.lock().await.record_workload_with(
            &info.name,
            &info.id,
            record,
            req.agent.clone(),
        );
        if let Err(e) = recorded {
            warn!(bottle = %info.name, error = %e, "cannot record the workload");
        }
    }
    // The launch first: its trust check is the longest step before runc. The output's log,
    // channel and reader threads are made while it runs (see `Readers::spawn_waiting`). A
    // detached workload's keeper writes its log; the agent writes only a foreground one's.
    let launching = tokio::task::spawn_blocking(move || launch::start(params, prepared));
    let log = (!req.detach).then(|| {
        Arc::new(std::sync::Mutex::new(CappedLog::open(
            log_path.clone(),
            LOG_CAP,
        )))
    });
    let (tx, rx) = if req.detach {
        (None, None)
    } else {
        let (tx, rx) = mpsc::channel(CHANNEL_FRAMES);
        (Some(tx), Some(rx))
    };
    let readers = Readers::new();
    // Stdout and stderr, or a terminal's output (all "stdout").
    let waiting = (!req.detach).then(|| {
        (
            readers.spawn_waiting(tx.clone(), log.clone(), RunFrame::Stdout),
            readers.spawn_waiting(tx.clone(), log.clone(), RunFrame::Stderr),
        )
    });
    let launched = launching.await;
    let started = match launched {
        Ok(Ok(s)) => s,
        failed => {
            if created {
                manager.lock().await.want_spares();
            }
            // A run that never started leaves nothing: a bottle made for it goes too (one
            // that existed before stays, with its home).
            if created {
                if let Err(e) = manager
                    .lock()
                    .await
                    .remove_if_id(caller, &info.name, &info.id)
                    .await
                {
                    error!(bottle = %info.name, error = %e, "removing the bottle of a failed run");
                }
            }
            return Err(match failed {
                Ok(Err(launch::LaunchError::Workspace(w))) => w.into(),
                Ok(Err(e @ launch::LaunchError::CommandNotFound(_))) => {
                    ApiError::new(ErrorCode::CommandNotFound, e.to_string())
                }
                Ok(Err(e)) if e.is_user_error() => bad(e.to_string()),
                Ok(Err(e)) => ApiError::new(ErrorCode::Internal, e.to_string()),
                Err(e) => ApiError::new(ErrorCode::Internal, e.to_string()),
                Ok(Ok(_)) => ApiError::new(ErrorCode::Internal, "unreachable"),
            });
        }
    };
    info!(bottle = %info.name, id = %info.id, pid = started.pid, detach = req.detach, "workload started");

    if req.detach && req.remove {
        // So that a restarted agent still removes the bottle when the workload ends.
        let mark = launch::bundle_dir(&run_dir, &info.id).join(REMOVE_MARK);
        if let Err(e) = std::fs::write(&mark, b"") {
            warn!(bottle = %info.name, error = %e, "cannot mark the run for removal after a restart");
        }
    }
    let console = started.console.map(Arc::new);
    let (stdout, stderr) = match &console {
        Some(c) => (c.try_clone().ok(), None),
        None => (started.stdout, started.stderr),
    };
    // A detached workload has no pipes here: its keeper writes the log. A reader left
    // without a pipe ends when its sender drops here.
    if let Some((to_stdout, to_stderr)) = waiting {
        if let Some(pipe) = stdout {
            let _ = to_stdout.send(pipe);
        }
        if let Some(pipe) = stderr {
            let _ = to_stderr.send(pipe);
        }
    }
    let input = Input {
        stdin: started.stdin,
        console,
    };
    let (done, done_rx) = watch::channel(());
    if created {
        // The spare this create may have taken is replaced once the host is quiet again:
        // after a short workload's removal, or SPARE_DELAY into a longer one. Made sooner, it
        // competed for the CPUs with the launch and that removal; a run that comes before it
        // is ready waits for it (above).
        let (manager, mut ended) = (manager.clone(), done_rx.clone());
        tokio::spawn(async move {
            let _ = tokio::time::timeout(SPARE_DELAY, ended.changed()).await;
            manager.lock().await.want_spares();
        });
    }
    running().insert(info.id.clone(), done_rx);
    let handle = tokio::runtime::Handle::current();
    let (name, id) = (info.name.clone(), info.id.clone());
    let job = Job {
        caller,
        manager: manager.clone(),
        handle,
        name,
        id,
        run_dir,
        remove: req.remove,
        image: req.image.clone(),
        container: started.container,
        pid: started.pid,
        wait: match started.keeper {
            Some(k) => Wait::Keeper(Some(k)),
            None => Wait::Direct,
        },
        readers,
        tx,
        done,
    };
    let id = job.id.clone();
    if let Err(e) = std::thread::Builder::new()
        .name(format!("run-{}", job.id))
        .spawn(move || job.supervise())
    {
        running().remove(&id);
        return Err(ApiError::new(
            ErrorCode::Internal,
            format!("cannot start reaper: {e}"),
        ));
    }
    match rx {
        Some(rx) => Ok(Started::Stream(Session { rx, input })),
        None => {
            let now = manager.lock().await.get(caller, &info.name);
            Ok(Started::Detached(Box::new(now.unwrap_or(info))))
        }
    }
}

/// At start: every bottle whose workload was running when the previous agent stopped gets a
/// job again, so its exit is recorded and `stop`, `logs -f` and `rm` keep working. A detached
/// workload (run by its keeper) simply keeps running; a foreground one lost its client with
/// the old agent and is stopped (exit 137). Nothing is left unsupervised.
pub async fn readopt(manager: Arc<Mutex<Manager>>) {
    let root = Caller { uid: 0 };
    let (bottles, run_dir) = {
        let m = manager.lock().await;
        (m.list(root), m.run_dir())
    };
    for b in bottles {
        let Some(w) = &b.workload else { continue };
        if w.status != WorkloadStatus::Running {
            continue;
        }
        let dir = launch::bundle_dir(&run_dir, &b.id);
        let container = match Runc::new(launch::runtime(), &launch::runc_root(&run_dir))
            .and_then(|r| r.container(&b.id))
        {
            Ok(c) => c,
            Err(e) => {
                error!(bottle = %b.name, error = %e, "cannot re-adopt the workload");
                continue;
            }
        };
        // A keeper's workload that was started; one the old agent never got to `runc start`
        // (it died mid-launch) is stopped and cleaned up like a foreground one.
        let started = {
            let c = container.clone();
            tokio::task::spawn_blocking(move || c.state())
                .await
                .ok()
                .and_then(Result::ok)
                .is_some_and(|st| {
                    matches!(
                        st.status,
                        Status::Running | Status::Paused | Status::Stopped
                    )
                })
        };
        let kept = dir.join(crate::keeper::MARK_FILE).exists() && started;
        let (done, done_rx) = watch::channel(());
        running().insert(b.id.clone(), done_rx);
        let job = Job {
            caller: root,
            manager: manager.clone(),
            handle: tokio::runtime::Handle::current(),
            name: b.name.clone(),
            id: b.id.clone(),
            run_dir: run_dir.clone(),
            remove: dir.join(REMOVE_MARK).exists(),
            image: w.image.clone(),
            container,
            pid: 0,
            wait: if kept {
                Wait::Keeper(None)
            } else {
                Wait::Orphan
            },
            readers: Readers::new(),
            tx: None,
            done,
        };
        info!(bottle = %b.name, detached = kept, "re-adopting the workload");
        if let Err(e) = std::thread::Builder::new()
            .name(format!("run-{}", b.id))
            .spawn(move || job.supervise())
        {
            running().remove(&b.id);
            error!(bottle = %b.name, error = %e, "cannot start the workload's reaper");
        }
    }
}

/// The output readers of one process. Each holds a sender of `ended`, so [`Readers::wait`]
/// sees the channel close the moment the last of them ends: no polling tick in every run's
/// latency.
pub(crate) struct Readers {
    ended_tx: Option<std::sync::mpsc::Sender<()>>,
    ended: std::sync::mpsc::Receiver<()>,
}

impl Readers {
    pub(crate) fn new() -> Self {
        let (tx, rx) = std::sync::mpsc::channel();
        Self {
            ended_tx: Some(tx),
            ended: rx,
        }
    }

    /// Copies one pipe to the log and (when a client listens) as frames until EOF. Keeps
    /// reading when the client is gone, so the workload never blocks on a full pipe while it
    /// is being killed (or, detached, ever).
    pub(crate) fn spawn(
        &self,
        pipe: std::fs::File,
        tx: Option<mpsc::Sender<Msg>>,
        log: Option<Arc<std::sync::Mutex<CappedLog>>>,
        frame: fn(Vec<u8>) -> RunFrame,
    ) {
        let ended = self.ended_tx.clone();
        std::thread::spawn(move || {
            // Dropped when this thread ends, however it ends.
            let _ended = ended;
            pump(pipe, tx.as_ref(), log.as_ref(), frame);
        });
    }

    /// [`Self::spawn`] with the thread started now and its pipe handed over later (through
    /// the returned sender): a run starts its readers while runc runs, so making the threads
    /// is off the path from the workload's exit to the client. Dropping the sender ends the
    /// thread.
    pub(crate) fn spawn_waiting(
        &self,
        tx: Option<mpsc::Sender<Msg>>,
        log: Option<Arc<std::sync::Mutex<CappedLog>>>,
        frame: fn(Vec<u8>) -> RunFrame,
    ) -> std::sync::mpsc::Sender<std::fs::File> {
        let (hand_over, pipe) = std::sync::mpsc::channel::<std::fs::File>();
        let ended = self.ended_tx.clone();
        std::thread::spawn(move || {
            let _ended = ended;
            if let Ok(pipe) = pipe.recv() {
                pump(pipe, tx.as_ref(), log.as_ref(), frame);
            }
        });
        hand_over
    }

    /// Waits (at most `timeout`) for every reader to end; false if one is still reading.
    pub(crate) fn wait(&mut self, timeout: Duration) -> bool {
        self.ended_tx = None;
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.ended.recv_timeout(left) {
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return true,
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => return false,
                // Nobody sends; only the senders' drops count.
                Ok(()) => {}
            }
        }
    }
}

/// One reader's loop (see [`Readers::spawn`]).
fn pump(
    mut pipe: std::fs::File,
    tx: Option<&mpsc::Sender<Msg>>,
    log: Option<&Arc<std::sync::Mutex<CappedLog>>>,
    frame: fn(Vec<u8>) -> RunFrame,
) {
    let mut buf = vec![0u8; READ_CHUNK];
    loop {
        match pipe.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                if let Some(log) = log {
                    log.lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .write(&buf[..n]);
                }
                if let Some(tx) = tx {
                    let bytes = Bytes::from(frame(buf[..n].to_vec()).encode());
                    let _ = tx.blocking_send(Msg::Frame(bytes));
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}

struct Job {
    caller: Caller,
    manager: Arc<Mutex<Manager>>,
    handle: tokio::runtime::Handle,
    name: String,
    id: String,
    run_dir: std::path::PathBuf,
    remove: bool,
    image: String,
    container: Container,
    pid: i32,
    wait: Wait,
    readers: Readers,
    /// `None` when detached.
    tx: Option<mpsc::Sender<Msg>>,
    /// Dropped when the job ends: wakes whoever waits in [`stop`].
    done: watch::Sender<()>,
}

/// How a job learns its workload's exit status.
enum Wait {
    /// The init is the agent's child (a foreground run): `waitpid`.
    Direct,
    /// A keeper runs it (detached): its exit file. `None` when the keeper is not our child
    /// (re-adopted after a restart).
    Keeper(Option<std::process::Child>),
    /// A foreground run found running at start: its client is gone with the old agent, so it
    /// is killed; recorded as 137.
    Orphan,
}

/// Marks (in the bundle directory) a detached run that was started with `--rm`.
const REMOVE_MARK: &str = "remove";

impl Job {
    /// Runs on its own thread: reaps the workload, drains its output, cleans up, sends the
    /// trailer.
    fn supervise(mut self) {
        let begun = Instant::now();
        let us = |t: Instant| u64::try_from(t.elapsed().as_micros()).unwrap_or(u64::MAX);
        let code = match &mut self.wait {
            Wait::Direct => self.wait_direct(),
            Wait::Keeper(keeper) => {
                let keeper = keeper.take();
                self.wait_kept(keeper)
            }
            Wait::Orphan => self.wait_orphan(),
        };
        let waited = Instant::now();
        if !self.readers.wait(DRAIN_TIMEOUT) {
            warn!(bottle = %self.name, "workload output still open after exit; not waiting for it");
        }
        // The cgroup (and its OOM counter) disappears with `runc delete`.
        let drained = Instant::now();
        let oom = code == Some(137) && launch::oom_killed(&self.id);
        // With `--rm` and a reaped init, the removal below cleans the workload up while the
        // network goes (see `Manager::teardown`); otherwise it is cleaned up here, first.
        let overlap = self.remove && code.is_some();
        let mut problems = if overlap {
            Vec::new()
        } else {
            launch::cleanup(&self.run_dir, &self.id)
        };
        let cleaned = Instant::now();
        let (code, reason) = match code {
            Some(c) => (c, oom.then(|| "out of memory".to_owned())),
            None => (
                255,
                Some("exit status unknown (see the agent log)".to_owned()),
            ),
        };
        if !self.remove {
            let (manager, name, id) = (self.manager.clone(), self.name.clone(), self.id.clone());
            let record = WorkloadRecord {
                image: self.image.clone(),
                exit_code: Some(code),
            };
            let recorded = self
                .handle
                .block_on(async move { manager.lock().await.record_workload(&name, &id, record) });
            if let Err(e) = recorded {
                problems.push(format!("recording the exit code: {e}"));
            }
        }
        if self.remove {
            let (manager, caller, name, id) = (
                self.manager.clone(),
                self.caller,
                self.name.clone(),
                self.id.clone(),
            );
            let removed = self.handle.block_on(async move {
                let mut m = manager.lock().await;
                if overlap {
                    m.remove_exited(caller, &name, &id).await
                } else {
                    m.remove_if_id(caller, &name, &id).await
                }
            });
            if let Err(e) = removed {
                problems.push(e.to_string());
            }
            if overlap {
                // Finds nothing left unless the bottle was no longer this run's (removed
                // and its name reused): then the workload's leftovers still go.
                problems.extend(launch::cleanup(&self.run_dir, &self.id));
            }
        }
        debug!(
            bottle = %self.name,
            wait_us = us(begun) - us(waited),
            drain_us = us(waited) - us(drained),
            cleanup_us = us(drained) - us(cleaned),
            remove_us = us(cleaned),
            "run finished"
        );
        for p in &problems {
            error!(bottle = %self.name, problem = %p, "cleanup after run");
            if let Some(tx) = &self.tx {
                let _ =
                    tx.blocking_send(Msg::Frame(Bytes::from(RunFrame::Error(p.clone()).encode())));
            }
        }
        info!(bottle = %self.name, code, ?reason, "workload finished");
        running().remove(&self.id);
        if let Some(tx) = &self.tx {
            let _ = tx.blocking_send(Msg::End(Bytes::from(
                RunFrame::Exit { code, reason }.encode(),
            )));
        }
        drop(self.done);
    }

    /// The workload's exit status; `None` if it cannot be had (the init was never ours to
    /// reap, or runc lost it) instead of waiting forever.
    /// A keeper's workload: its exit file, once written; `None` if the keeper ended without
    /// one or (re-adopted) the container is gone without one.
    fn wait_kept(&self, mut keeper: Option<std::process::Child>) -> Option<i32> {
        let dir = launch::bundle_dir(&self.run_dir, &self.id);
        let mut lost = 0;
        loop {
            if let Some(code) = crate::keeper::read_exit(&dir) {
                if let Some(k) = keeper.as_mut() {
                    let _ = k.wait();
                }
                return Some(code);
            }
            match keeper.as_mut() {
                Some(k) => {
                    if let Ok(Some(_)) = k.try_wait() {
                        return crate::keeper::read_exit(&dir);
                    }
                }
                // Re-adopted: the keeper is someone else's child now; watch it by its pid
                // (checked to still be this bundle's keeper), else by runc's state.
                None => {
                    let alive = match crate::keeper::pid(&dir) {
                        Some(pid) => crate::keeper::alive(pid, &dir),
                        None => self
                            .container
                            .state()
                            .is_ok_and(|st| st.status != Status::Stopped),
                    };
                    lost = if alive { 0 } else { lost + 1 };
                    if lost >= 2 {
                        return crate::keeper::read_exit(&dir);
                    }
                }
            }
            std::thread::sleep(POLL);
        }
    }

    /// A foreground workload that outlived its agent: killed, and reported as such.
    fn wait_orphan(&self) -> Option<i32> {
        warn!(bottle = %self.name, "a foreground workload outlived its client and agent; stopping it");
        if self.container.state().is_err() {
            // Never created (the old agent died mid-launch) or already gone: nothing ran
            // that we know an end of.
            return None;
        }
        for _ in 0..20 {
            if let Err(e) = self.container.kill(Signal::SIGKILL, true) {
                debug!(bottle = %self.name, error = %e, "kill");
            }
            match self.container.state() {
                Ok(st) if st.status != Status::Stopped => {}
                _ => return Some(137),
            }
            std::thread::sleep(POLL);
        }
        None
    }

    fn wait_direct(&self) -> Option<i32> {
        let mut killed = false;
        let mut lost = 0;
        loop {
            match runc::wait_exit(self.pid, POLL) {
                Ok(Some(code)) => return Some(code),
                Ok(None) => {}
                Err(e) => {
                    error!(bottle = %self.name, error = %e, "waiting for the workload");
                    return None;
                }
            }
            if self.tx.as_ref().is_some_and(|tx| tx.is_closed()) && !killed {
                warn!(bottle = %self.name, "client went away; killing the workload");
                if let Err(e) = self.container.kill(Signal::SIGKILL, true) {
                    warn!(bottle = %self.name, error = %e, "kill");
                }
                killed = true;
            }
            // A stopped or vanished container whose init we still cannot reap: give up after
            // a few rounds rather than poll forever.
            match self.container.state() {
                Ok(st) if st.status != Status::Stopped => lost = 0,
                _ => lost += 1,
            }
            if lost >= 4 {
                return runc::wait_exit(self.pid, POLL).ok().flatten();
            }
        }
    }
}

/// `POST /v1/bottles/{name}/stop`: SIGTERM to every process of the workload, SIGKILL after
/// `grace`, and returns once the workload has exited and its exit code is recorded. The
/// manager's lock is taken only to look the bottle up, never while waiting.
pub async fn stop(
    caller: Caller,
    manager: Arc<Mutex<Manager>>,
    name: &str,
    grace: Option<Duration>,
) -> Result<BottleInfo, ApiError> {
    let grace = grace.unwrap_or(STOP_GRACE).min(MAX_STOP_GRACE);
    let (before, run_dir) = {
        let m = manager.lock().await;
        (m.get(caller, name)?, m.run_dir())
    };
    let Some(mut done) = running().get(&before.id).cloned() else {
        // Nothing runs (never did, or already exited).
        return Ok(before);
    };
    let signal = |sig: Signal| {
        let (run_dir, id, name) = (run_dir.clone(), before.id.clone(), before.name.clone());
        tokio::task::spawn_blocking(move || {
            let sent = Runc::new(launch::runtime(), &launch::runc_root(&run_dir))
                .and_then(|r| r.container(&id))
                .and_then(|c| c.kill(sig, true));
            // Fails when the workload exited meanwhile: the wait below tells.
            if let Err(e) = sent {
                debug!(bottle = %name, signal = ?sig, error = %e, "stop: kill");
            }
        })
    };
    info!(bottle = %before.name, grace_secs = grace.as_secs(), "stopping the workload");
    let _ = signal(Signal::SIGTERM).await;
    // `changed` fails once the reaper dropped its sender: the workload is gone.
    if tokio::time::timeout(grace, done.changed()).await.is_err() {
        info!(bottle = %before.name, "grace period over; SIGKILL");
        let _ = signal(Signal::SIGKILL).await;
        if tokio::time::timeout(KILL_WAIT, done.changed())
            .await
            .is_err()
        {
            return Err(ApiError::new(
                ErrorCode::Internal,
                format!(
                    "the workload of {name:?} did not exit within {}s of SIGKILL",
                    KILL_WAIT.as_secs()
                ),
            ));
        }
    }
    let after = manager.lock().await.get(caller, name);
    // With `--rm` the bottle is gone by now.
    Ok(after.unwrap_or(before))
}
