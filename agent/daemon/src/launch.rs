//! Runs a bottle's workload with runc: image → overlay rootfs → bundle → `runc create` /
//! `start` inside the bottle's network namespace, and the matching teardown.
//!
//! Everything here blocks (mounts, runc calls bounded by the driver's timeout): callers run
//! it on blocking threads, never on tokio workers, and never while holding the manager's lock
//! longer than a teardown needs.
//!
//! Layout (see `paths`):
//! - `<run_dir>/runc/`          runc's state root (0700), container id = bottle id;
//! - `<run_dir>/rootfs/<id>/`   the overlay (`upper/`, `work/`, `merged/`); `<run_dir>` and
//!   `<run_dir>/rootfs` are 0711 because runc's init, running as the mapped container root,
//!   must traverse to `merged/` (listing stays root-only);
//! - `<run_dir>/bundles/<id>/`  `config.json` (0600, holds the environment) in a 0700 dir.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::os::fd::AsFd;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use bottle_image::{ImageRecord, ImageStore};
use bottle_launcher::bundle::{self, BundleSpec, HomeSource, IdMap, Limits};
use bottle_launcher::rootfs::{self, Rootfs};
use bottle_launcher::runc::{Container, CreateOptions, Runc};
use bottle_launcher::{ConsoleSocket, Stdio3};

use bottle_launcher::home::{self, HomeFileSpec};

use crate::paths::{BUNDLES_DIR, CGROUP_PARENT, HOMES_DIR, ROOTFS_DIR, RUNC_BINARY, RUNC_DIR};

/// The runtime chosen in the agent's config (`runtime`), set once at start.
static RUNTIME: std::sync::OnceLock<&'static str> = std::sync::OnceLock::new();

/// Sets the runtime binary (`runc`, `crun`); later calls are ignored.
pub fn set_runtime(binary: &'static str) {
    let _ = RUNTIME.set(binary);
}

/// The runtime binary every workload call uses ([`RUNC_BINARY`] unless configured).
pub fn runtime() -> &'static str {
    RUNTIME.get().copied().unwrap_or(RUNC_BINARY)
}

/// Bound on each runc call (create, start, delete).
const RUNC_TIMEOUT: Duration = Duration::from_secs(30);
/// How long runc may take to hand over the PTY master once `create` has returned.
const CONSOLE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error("image {image:?}: {source}")]
    Image {
        image: String,
        #[source]
        // Boxed: the store's error is large, and every launch result would carry its size.
        source: Box<bottle_image::StoreError>,
    },
    #[error("image {0:?} cannot be used as an overlay (imported without privileges?)")]
    NotOverlayReady(String),
    #[error("image {0:?} has no command: give one after `--`")]
    NoCommand(String),
    #[error("the image's user {uid}:{gid} is outside the bottle's id mapping")]
    Unmapped { uid: u32, gid: u32 },
    #[error(transparent)]
    Rootfs(#[from] bottle_launcher::RootfsError),
    #[error(transparent)]
    Bundle(#[from] bottle_launcher::BundleError),
    #[error(transparent)]
    Runc(#[from] bottle_launcher::RuncError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("runc wrote no usable pid to {0}")]
    Pid(PathBuf),
    #[error(transparent)]
    Home(#[from] home::HomeError),
    #[error(transparent)]
    Workspace(#[from] crate::workspace::WorkspaceError),
    #[error("trust check failed, the workload was not started: {0}")]
    SelfCheck(#[from] crate::selfcheck::SelfCheckError),
    #[error("command {0:?} not found in the image (or not executable); check the name and the image's PATH")]
    CommandNotFound(String),
    #[error(transparent)]
    Console(#[from] bottle_launcher::ConsoleError),
    #[error("keeper: {0}")]
    Keeper(String),
}

impl LaunchError {
    /// Whether the caller asked for something impossible (vs. the agent failing).
    pub fn is_user_error(&self) -> bool {
        matches!(
            self,
            Self::Image { .. }
                | Self::NotOverlayReady(_)
                | Self::NoCommand(_)
                | Self::Unmapped { .. }
                | Self::CommandNotFound(_)
        ) || matches!(self, Self::SelfCheck(c) if c.is_user_error())
            || matches!(self, Self::Workspace(w) if w.is_user_error())
    }
}

pub type Result<T> = std::result::Result<T, LaunchError>;

fn io_at(path: &Path) -> impl FnOnce(std::io::Error) -> LaunchError + '_ {
    move |source| LaunchError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// What one workload needs; everything already validated by the API layer.
#[derive(Debug)]
pub struct LaunchParams {
    pub id: String,
    pub hostname: String,
    pub netns_path: PathBuf,
    /// `nameserver <gateway>` (the agent already writes `/etc/netns/<netns>/resolv.conf`).
    pub resolv_conf: PathBuf,
    pub ca_pem: String,
    pub image: String,
    pub image_dir: PathBuf,
    pub run_dir: PathBuf,
    pub args: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub memory_bytes: Option<u64>,
    pub pids: Option<i64>,
    pub cpus: Option<f64>,
    /// The home's path inside the bottle; the image user's home when `None`.
    pub home: Option<PathBuf>,
    /// The working directory inside the bottle; the image's when `None`. Made (in the home)
    /// when it lies beneath the home.
    pub workdir: Option<PathBuf>,
    /// Files to place in the home before the workload starts.
    pub home_files: Vec<bottle_api::provision::HomeFile>,
    /// The caller (SO_PEERCRED): owner of the upload and of the `--mount` paths.
    pub caller_uid: u32,
    pub state_dir: PathBuf,
    /// A pending upload (`--cwd`) to become `~/workspace`.
    pub workspace: Option<String>,
    pub mounts: Vec<bottle_api::RunMount>,
    /// The bottle's gateway: its explicit proxy is `<gateway>:3128`.
    pub gateway: std::net::Ipv4Addr,
    pub io: WorkloadIo,
}

/// How the workload's standard streams are connected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WorkloadIo {
    /// Detached: a keeper process (`crate::keeper`) runs `runc create`, stays the init's
    /// parent and writes stdout and stderr to this capped log; stdin `/dev/null`.
    Kept { log: PathBuf, cap: u64 },
    /// stdin `/dev/null`, stdout and stderr pipes to the agent.
    Output,
    /// stdin, stdout and stderr pipes to the agent.
    Pipes,
    /// A PTY of this size made by runc inside the container; the agent holds its master.
    Tty { rows: u16, cols: u16 },
}

/// A started container: the init's host pid and the agent's ends of its standard streams.
pub struct Started {
    pub container: Container,
    pub pid: i32,
    /// The write end of the workload's stdin (`WorkloadIo::Pipes`).
    pub stdin: Option<File>,
    /// The read ends of its stdout and stderr (not with a terminal).
    pub stdout: Option<File>,
    pub stderr: Option<File>,
    /// The PTY master (`WorkloadIo::Tty`): read for output, write for input, resize.
    pub console: Option<File>,
    /// `WorkloadIo::Kept`: the keeper, our child until it exits after the workload.
    pub keeper: Option<std::process::Child>,
}

pub fn runc_root(run_dir: &Path) -> PathBuf {
    run_dir.join(RUNC_DIR)
}

pub fn rootfs_dir(run_dir: &Path, id: &str) -> PathBuf {
    run_dir.join(ROOTFS_DIR).join(id)
}

/// The workload's home on the host: kept across the runs of one bottle.
pub fn home_dir(run_dir: &Path, id: &str) -> PathBuf {
    run_dir.join(HOMES_DIR).join(id)
}

/// Removes a bottle's workload home (with the bottle; never between runs).
pub fn remove_home(run_dir: &Path, id: &str) -> Vec<String> {
    let dir = home_dir(run_dir, id);
    match crate::trash::discard(run_dir, &dir) {
        Ok(()) => vec![],
        Err(e) => vec![format!("removing {}: {e}", dir.display())],
    }
}

/// Ids that have a home, to find orphans.
pub fn home_ids(run_dir: &Path) -> Vec<String> {
    fs::read_dir(run_dir.join(HOMES_DIR))
        .map(|entries| {
            entries
                .filter_map(|e| e.ok()?.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default()
}

pub fn bundle_dir(run_dir: &Path, id: &str) -> PathBuf {
    run_dir.join(BUNDLES_DIR).join(id)
}

/// The workload's cgroup as runc's `cgroupsPath`.
pub fn cgroups_path(id: &str) -> PathBuf {
    Path::new(CGROUP_PARENT).join(id)
}

/// Makes the directories on the way to a rootfs traversable (0711) by the mapped container
/// root, which runc's init runs as; nothing in them becomes listable.
fn traversable_dir(path: &Path) -> Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o711)
        .create(path)
        .map_err(io_at(path))?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o711)).map_err(io_at(path))
}

fn resolve_image(store_dir: &Path, spec: &str) -> Result<ImageRecord> {
    let err = |source| LaunchError::Image {
        image: spec.to_owned(),
        source: Box::new(source),
    };
    let store = ImageStore::open(store_dir).map_err(err)?;
    let record = store.resolve(spec).map_err(err)?;
    if !record.overlay_ready {
        return Err(LaunchError::NotOverlayReady(spec.to_owned()));
    }
    Ok(record)
}

/// A bottle's rootfs, mounted over its image ahead of the rest of the launch.
#[derive(Debug)]
pub struct Prepared {
    image: ImageRecord,
    rootfs: Rootfs,
}

/// Resolves the image and mounts the bottle's overlay rootfs: the part of a launch that needs
/// only the bottle's id, so a new bottle's can run while its network is made. Whatever it
/// made is removed again by [`cleanup`] (and by [`start`] when it fails).
pub fn prepare(run_dir: &Path, image_dir: &Path, image: &str, id: &str) -> Result<Prepared> {
    let _preparing = Preparing::begin(id);
    let begun = std::time::Instant::now();
    let image = resolve_image(image_dir, image)?;
    traversable_dir(run_dir)?;
    traversable_dir(&run_dir.join(ROOTFS_DIR))?;
    let rootfs = Rootfs::mount(&image.lower_dirs(), &rootfs_dir(run_dir, id))?;
    tracing::debug!(
        id,
        elapsed_ms = begun.elapsed().as_secs_f64() * 1000.0,
        "rootfs prepared"
    );
    Ok(Prepared { image, rootfs })
}

/// Ids whose rootfs [`prepare`] is mounting right now. A create that fails while its
/// rootfs is being prepared beside it rolls back through [`cleanup`], which must not move the
/// directory away under a mount in progress: it waits for the prepare first.
static PREPARING: std::sync::Mutex<std::collections::BTreeSet<String>> =
    std::sync::Mutex::new(std::collections::BTreeSet::new());
static PREPARED: std::sync::Condvar = std::sync::Condvar::new();

/// Marks an id as being prepared until dropped.
struct Preparing(String);

impl Preparing {
    fn begin(id: &str) -> Self {
        preparing().insert(id.to_owned());
        Self(id.to_owned())
    }

    /// Waits (at most `timeout`) until no prepare of `id` runs.
    fn wait_for(id: &str, timeout: Duration) {
        let deadline = std::time::Instant::now() + timeout;
        let mut set = preparing();
        while set.contains(id) {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                tracing::warn!(id, "rootfs still being prepared; cleaning up anyway");
                return;
            }
            set = PREPARED
                .wait_timeout(set, left)
                .map(|(guard, _)| guard)
                .unwrap_or_else(|p| p.into_inner().0);
        }
    }
}

impl Drop for Preparing {
    fn drop(&mut self) {
        preparing().remove(&self.0);
        PREPARED.notify_all();
    }
}

fn preparing() -> std::sync::MutexGuard<'static, std::collections::BTreeSet<String>> {
    PREPARING.lock().unwrap_or_else(|p| p.into_inner())
}

/// Mounts the rootfs (unless `prepared` did), writes the bundle, creates and starts the
/// container. On failure everything made here (and by `prepare`) is removed again.
pub fn start(p: LaunchParams, prepared: Option<Result<Prepared>>) -> Result<Started> {
    let result = (|| {
        let prepared = match prepared {
            Some(prepared) => prepared?,
            None => prepare(&p.run_dir, &p.image_dir, &p.image, &p.id)?,
        };
        let args = if p.args.is_empty() {
            prepared.image.config.args()
        } else {
            p.args.clone()
        };
        if args.is_empty() {
            return Err(LaunchError::NoCommand(p.image.clone()));
        }
        start_mounted(&p, &prepared.image, &prepared.rootfs, args)
    })();
    if result.is_err() {
        for problem in cleanup(&p.run_dir, &p.id) {
            tracing::error!(id = %p.id, %problem, "cleanup after a failed launch");
        }
    }
    result
}

fn start_mounted(
    p: &LaunchParams,
    image: &ImageRecord,
    rootfs: &Rootfs,
    args: Vec<String>,
) -> Result<Started> {
    let mut phases = Phases::new(&p.id);
    // The trust check, with the bundle exactly as the container will read it, runs while the
    // rest is prepared (it needs only that bundle, computed before it is written); the
    // runtime starts only once it has passed. A launch that fails before then leaves the
    // check to finish on its own, within its timeouts.
    let trust = rootfs.ca_bundle(p.ca_pem.as_bytes())?;
    let trust_check = {
        let netns_name = p
            .netns_path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        crate::selfcheck::spawn(&netns_name, &p.id, p.gateway, trust.bytes.clone())?
    };
    let user = rootfs.resolve_user(image.config.user.as_deref())?;
    let id_map = IdMap::default();
    let (Some(host_uid), Some(host_gid)) = (id_map.host_uid(user.uid), id_map.host_gid(user.gid))
    else {
        return Err(LaunchError::Unmapped {
            uid: user.uid,
            gid: user.gid,
        });
    };

    // The caller's files: pinned before anything refers to them (see `workspace`).
    let mut mounts = Vec::with_capacity(p.mounts.len());
    for (i, m) in p.mounts.iter().enumerate() {
        mounts.push(crate::workspace::pin_mount(
            &p.run_dir,
            &p.id,
            i,
            p.caller_uid,
            m,
        )?);
    }
    let workspace = match &p.workspace {
        Some(upload) => Some(crate::workspace::claim(
            &p.state_dir,
            p.caller_uid,
            upload,
            &p.id,
            host_uid,
            host_gid,
        )?),
        None => None,
    };

    // Image env, a PATH if the image has none, the CA variables, the proxy variables, HOME;
    // then the caller's variables, which win.
    let mut env: Vec<String> = image.config.env.clone();
    if !env.iter().any(|e| e.starts_with("PATH=")) {
        env.push("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into());
    }
    phases.mark("user, mounts, workspace");
    env.extend(rootfs.install_ca_bundle(&trust)?);
    phases.mark("ca");
    env.extend(proxy_env(p.gateway));
    let home_path = p.home.clone().unwrap_or_else(|| user.home.clone());
    env.push(format!("HOME={}", home_path.display()));
    for (k, v) in &p.env {
        let prefix = format!("{k}=");
        env.retain(|e| !e.starts_with(&prefix));
        env.push(format!("{k}={v}"));
    }
    // The home persists across this bottle's runs; the manifest's files are (re)written on
    // every run, replacing whatever the workload left under their names.
    let host_home = home_dir(&p.run_dir, &p.id);
    traversable_dir(&p.run_dir.join(HOMES_DIR))?;
    home::ensure(&host_home, host_uid, host_gid)?;
    let specs: Vec<HomeFileSpec<'_>> = p
        .home_files
        .iter()
        .map(|f| HomeFileSpec {
            path: &f.path,
            contents: f.contents.as_bytes(),
            mode: f.mode,
        })
        .collect();
    home::write_files(&host_home, &specs, host_uid, host_gid)?;
    if let Some(rel) = p
        .workdir
        .as_deref()
        .and_then(|w| w.strip_prefix(&home_path).ok())
        .and_then(Path::to_str)
        .filter(|r| !r.is_empty())
    {
        home::make_dirs(&host_home, rel, host_uid, host_gid)?;
    }
    // With a workspace, the command starts in it (as it started in the caller's directory).
    let cwd = match (&p.workdir, workspace.is_some()) {
        (Some(dir), _) => dir.clone(),
        (None, true) => home_path.join("workspace"),
        (None, false) => image
            .config
            .working_dir
            .as_deref()
            .filter(|d| d.starts_with('/'))
            .map(PathBuf::from)
            .unwrap_or_else(|| home_path.clone()),
    };
    phases.mark("home");
    let spec = BundleSpec {
        hostname: p.hostname.clone(),
        netns_path: p.netns_path.clone(),
        rootfs: rootfs.merged().to_path_buf(),
        args,
        env,
        cwd,
        user: (user.uid, user.gid),
        id_map,
        limits: Limits {
            cpus: p.cpus,
            memory_bytes: p.memory_bytes,
            pids: p.pids.or(Limits::default().pids),
            ..Limits::default()
        },
        home: home_path.clone(),
        home_source: HomeSource::Host(host_home.clone()),
        workspace,
        mounts,
        resolv_conf: p.resolv_conf.clone(),
        ca_bundle: None,
        terminal: matches!(p.io, WorkloadIo::Tty { .. }),
        cgroups_path: cgroups_path(&p.id),
        oom_score_adj: 500,
    };
    rootfs.prepare_mount_points(&bundle::mount_points(&spec))?;
    phases.mark("mount points");
    rootfs.chown_dirs(&[&spec.home], host_uid, host_gid)?;
    let oci = bundle::build(&spec)?;
    let parent = p.run_dir.join(BUNDLES_DIR);
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&parent)
        .map_err(io_at(&parent))?;
    let bdir = bundle_dir(&p.run_dir, &p.id);
    bundle::write(&spec, &oci, &bdir)?;
    phases.mark("bundle");
    match trust_check.join() {
        Ok(result) => result.map_err(crate::selfcheck::SelfCheckError::from)??,
        Err(_) => {
            return Err(LaunchError::Io {
                path: PathBuf::from("trust check"),
                source: std::io::Error::other("the trust check's thread panicked"),
            })
        }
    }
    phases.mark("trust check (rest)");

    // Pipes for the workload's streams; the agent keeps only its ends (the others move into
    // runc's child and are closed here once it has been spawned). With a terminal, runc makes
    // the PTY inside the container and hands us the master over the console socket.
    let runc = Runc::new(runtime(), &runc_root(&p.run_dir))?.with_timeout(RUNC_TIMEOUT);
    let pid_file = bdir.join("pid");
    let mut ours = Started {
        container: runc.container(&p.id)?,
        pid: 0,
        stdin: None,
        stdout: None,
        stderr: None,
        console: None,
        keeper: None,
    };
    let mut stdio = Stdio3 {
        stdin: None,
        stdout: None,
        stderr: None,
    };
    let console = match &p.io {
        WorkloadIo::Kept { log, cap } => {
            let container = start_kept(&runc, p, &bdir, &pid_file, log, *cap, &mut ours).map_err(
                |e| match e {
                    LaunchError::Runc(e) => command_not_found(e, &spec.args),
                    e => e,
                },
            )?;
            ours.container = container;
            None
        }
        WorkloadIo::Tty { .. } => Some(ConsoleSocket::bind(&bdir.join("console.sock"))?),
        WorkloadIo::Output | WorkloadIo::Pipes => {
            let (out_r, out_w) = pipe()?;
            let (err_r, err_w) = pipe()?;
            (ours.stdout, stdio.stdout) = (Some(out_r), Some(out_w));
            (ours.stderr, stdio.stderr) = (Some(err_r), Some(err_w));
            if p.io == WorkloadIo::Pipes {
                let (in_r, in_w) = pipe()?;
                (ours.stdin, stdio.stdin) = (Some(in_w), Some(in_r));
            }
            None
        }
    };
    if ours.keeper.is_some() {
        phases.mark("runtime create");
        let started = finish_start(ours, &pid_file)?;
        phases.mark("runtime start");
        phases.done();
        return Ok(started);
    }
    let options = CreateOptions {
        pid_file: Some(&pid_file),
        console_socket: console.as_ref().map(ConsoleSocket::path),
        stdio,
    };
    if console.is_none() {
        // Nothing to do between create and start: one runtime call instead of two.
        let run = runc.run_detached(&p.id, &bdir, options);
        ours.container = run.map_err(|e| command_not_found(e, &spec.args))?;
        phases.mark("runtime run");
        ours.pid = read_pid(&pid_file)?;
        phases.done();
        return Ok(ours);
    }
    let created = runc.create(&p.id, &bdir, options);
    ours.container = created.map_err(|e| command_not_found(e, &spec.args))?;
    if let (Some(console), &WorkloadIo::Tty { rows, cols }) = (&console, &p.io) {
        let master = console.recv_master(CONSOLE_TIMEOUT)?;
        // Before `start`, so the workload's first look at its terminal sees the right size.
        bottle_launcher::console::set_size(master.as_fd(), rows, cols).map_err(|source| {
            LaunchError::Io {
                path: PathBuf::from("console"),
                source,
            }
        })?;
        ours.console = Some(File::from(master));
    }
    phases.mark("runtime create");
    let started = finish_start(ours, &pid_file)?;
    phases.mark("runtime start");
    phases.done();
    Ok(started)
}

fn finish_start(mut ours: Started, pid_file: &Path) -> Result<Started> {
    ours.pid = read_pid(pid_file)?;
    ours.container.start()?;
    Ok(ours)
}

fn read_pid(pid_file: &Path) -> Result<i32> {
    fs::read_to_string(pid_file)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .filter(|&pid| pid > 0)
        .ok_or_else(|| LaunchError::Pid(pid_file.to_path_buf()))
}

/// `runc create` through a keeper (`crate::keeper`): spawns it, waits (bounded) for its one
/// line saying how `create` went. The keeper stays in `ours` (and is killed on failure).
fn start_kept(
    runc: &Runc,
    p: &LaunchParams,
    bdir: &Path,
    pid_file: &Path,
    log: &Path,
    cap: u64,
    ours: &mut Started,
) -> Result<Container> {
    use std::io::BufRead;
    let runc_log = bdir.join("create.log");
    let argv = runc.create_argv(&p.id, bdir, pid_file, &runc_log)?;
    let exe = std::env::current_exe().map_err(io_at(Path::new("/proc/self/exe")))?;
    let mut keeper = std::process::Command::new(&exe)
        .args(crate::keeper::args(bdir, log, cap, argv))
        .env_clear()
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .map_err(io_at(&exe))?;
    let mark = bdir.join(crate::keeper::MARK_FILE);
    fs::write(&mark, format!("{}\n", keeper.id())).map_err(io_at(&mark))?;
    let (tx, rx) = std::sync::mpsc::channel();
    if let Some(out) = keeper.stdout.take() {
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = std::io::BufReader::new(out).read_line(&mut line);
            let _ = tx.send(line);
        });
    }
    let line = rx.recv_timeout(RUNC_TIMEOUT + Duration::from_secs(5));
    let code = line
        .as_deref()
        .ok()
        .and_then(|l| l.trim().parse::<i32>().ok());
    match code {
        Some(0) => {
            ours.keeper = Some(keeper);
            runc.container(&p.id).map_err(LaunchError::Runc)
        }
        Some(code) => {
            let _ = keeper.wait();
            Err(LaunchError::Runc(runc.create_failed(code, &runc_log)))
        }
        None => {
            let _ = keeper.kill();
            let _ = keeper.wait();
            Err(LaunchError::Keeper(format!(
                "no answer from the keeper within {:?} (see the agent log)",
                RUNC_TIMEOUT + Duration::from_secs(5)
            )))
        }
    }
}

/// runc reports a missing or non-executable command as a failed `create` whose message
/// names the `exec`; that is the caller's mistake, said plainly (exit 127 in the client).
fn command_not_found(e: bottle_launcher::RuncError, args: &[String]) -> LaunchError {
    let text = e.to_string();
    let exec_failed = text.contains("exec: ")
        && (text.contains("executable file not found")
            || text.contains("no such file or directory")
            || text.contains("permission denied"));
    match (exec_failed, args.first()) {
        (true, Some(cmd)) => LaunchError::CommandNotFound(cmd.clone()),
        _ => LaunchError::Runc(e),
    }
}

/// The explicit proxy for tools that honour the variables (upper and lower case: curl reads
/// only `http_proxy` lower case, others only upper case); the gateway's own services
/// (git-gate, supervise) are reached directly.
pub fn proxy_env(gateway: std::net::Ipv4Addr) -> Vec<String> {
    let proxy = format!("http://{gateway}:{}", crate::paths::PROXY_PORT);
    let no_proxy = format!("localhost,127.0.0.1,::1,{gateway}");
    let mut v = Vec::new();
    for name in ["HTTPS_PROXY", "HTTP_PROXY"] {
        v.push(format!("{name}={proxy}"));
        v.push(format!("{}={proxy}", name.to_ascii_lowercase()));
    }
    v.push(format!("NO_PROXY={no_proxy}"));
    v.push(format!("no_proxy={no_proxy}"));
    v
}

/// Durations of the launch's steps, logged at debug level (where `bench launch` time goes).
struct Phases<'a> {
    id: &'a str,
    last: std::time::Instant,
    start: std::time::Instant,
    steps: Vec<String>,
}

impl<'a> Phases<'a> {
    fn new(id: &'a str) -> Self {
        let now = std::time::Instant::now();
        Self {
            id,
            last: now,
            start: now,
            steps: Vec::new(),
        }
    }

    fn mark(&mut self, step: &str) {
        let now = std::time::Instant::now();
        self.steps.push(format!(
            "{step} {:.1}ms",
            (now - self.last).as_secs_f64() * 1000.0
        ));
        self.last = now;
    }

    fn done(&self) {
        tracing::debug!(
            id = self.id,
            total_ms = self.start.elapsed().as_secs_f64() * 1000.0,
            steps = %self.steps.join(", "),
            "launch phases"
        );
    }
}

fn pipe() -> Result<(File, File)> {
    // O_CLOEXEC: the write end reaches runc only through the dup2 onto its stdout/stderr,
    // never as a stray descriptor in another child.
    let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| LaunchError::Io {
        path: PathBuf::from("pipe"),
        source: e.into(),
    })?;
    Ok((File::from(r), File::from(w)))
}

/// Whether the OOM killer acted in the workload's cgroup (v1 `memory.oom_control`, v2
/// `memory.events`). Read before `runc delete`, which removes the cgroup.
pub fn oom_killed(id: &str) -> bool {
    let rel = cgroups_path(id);
    let rel = rel.strip_prefix("/").unwrap_or(&rel);
    let v1 = Path::new("/sys/fs/cgroup/memory")
        .join(rel)
        .join("memory.oom_control");
    let v2 = Path::new("/sys/fs/cgroup").join(rel).join("memory.events");
    [v1, v2].iter().any(|p| {
        fs::read_to_string(p).is_ok_and(|text| {
            text.lines()
                .filter_map(|l| l.strip_prefix("oom_kill "))
                .any(|n| n.trim().parse::<u64>().is_ok_and(|n| n > 0))
        })
    })
}

/// The workload's CPU time (ns) and memory in use (bytes), from its cgroup (v1 `cpuacct` and
/// `memory` controllers, else v2); `None` for what cannot be read (no workload, or it exited).
/// Plain file reads: cheap enough for every `ls`.
pub fn usage(id: &str) -> (Option<u64>, Option<u64>) {
    let rel = cgroups_path(id);
    let rel = rel.strip_prefix("/").unwrap_or(&rel);
    let cg = Path::new("/sys/fs/cgroup");
    let number = |p: PathBuf| {
        fs::read_to_string(p)
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
    };
    let cpu = number(cg.join("cpuacct").join(rel).join("cpuacct.usage")).or_else(|| {
        fs::read_to_string(cg.join(rel).join("cpu.stat"))
            .ok()?
            .lines()
            .find_map(|l| l.strip_prefix("usage_usec "))
            .and_then(|n| n.trim().parse::<u64>().ok())
            .map(|us| us.saturating_mul(1000))
    });
    let memory = number(cg.join("memory").join(rel).join("memory.usage_in_bytes"))
        .or_else(|| number(cg.join(rel).join("memory.current")));
    (cpu, memory)
}

/// Freezes (`runc pause`, the cgroup freezer) or thaws the bottle's workload, if it has one
/// that runs. Returns whether there was one.
pub fn set_paused(run_dir: &Path, id: &str, paused: bool) -> Result<bool> {
    let root = runc_root(run_dir);
    if !root.join(id).exists() {
        return Ok(false);
    }
    let runc = Runc::new(runtime(), &root)?.with_timeout(RUNC_TIMEOUT);
    let container = runc.container(id)?;
    let status = container.state()?.status;
    match (paused, status) {
        (true, bottle_launcher::Status::Running) => container.pause()?,
        (false, bottle_launcher::Status::Paused) => container.resume()?,
        (_, bottle_launcher::Status::Stopped) => return Ok(false),
        _ => {}
    }
    Ok(true)
}

/// Removes a bottle's workload: `runc delete --force` (if runc knows the container), the
/// rootfs (unmounted first) and the bundle. Every step runs; returns what failed. Safe to call
/// when nothing was ever launched.
pub fn cleanup(run_dir: &Path, id: &str) -> Vec<String> {
    // A rootfs being mounted for this id is finished first (see `PREPARING`).
    Preparing::wait_for(id, RUNC_TIMEOUT);
    // `bottle rm` and the run's own cleanup can meet (rm kills the workload, whose reaper then
    // cleans up too): one at a time, so the second finds nothing left instead of tripping over
    // a half-removed tree.
    static CLEANUP: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one = CLEANUP
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let begun = std::time::Instant::now();
    let mut failures = Vec::new();
    let root = runc_root(run_dir);
    // After the container is gone (below) nothing uses the pinned mounts; unpinning first is
    // harmless too (the container holds its own bind), and a failed runc delete must not
    // keep them.
    if root.join(id).exists() {
        match Runc::new(runtime(), &root) {
            Ok(runc) => {
                let runc = runc.with_timeout(RUNC_TIMEOUT);
                let removed = runc.container(id).and_then(|c| match c.remove_stopped() {
                    Ok(true) => Ok(()),
                    Ok(false) | Err(_) => c.delete(true),
                });
                match removed {
                    Ok(()) => {}
                    // Someone else (a concurrent `rm`) deleted it first.
                    Err(_) if !root.join(id).exists() => {}
                    Err(e) => failures.push(e.to_string()),
                }
            }
            Err(e) => failures.push(e.to_string()),
        }
    }
    let deleted = std::time::Instant::now();
    failures.extend(crate::workspace::unpin_mounts(run_dir, id));
    // Unmounted here; the directories are deleted in the background (see `trash`).
    let rootfs = rootfs_dir(run_dir, id);
    match rootfs::unmount(&rootfs) {
        Ok(()) => {
            if let Err(e) = crate::trash::discard(run_dir, &rootfs) {
                failures.push(format!("remove {}: {e}", rootfs.display()));
            }
        }
        Err(e) => failures.push(e.to_string()),
    }
    let bdir = bundle_dir(run_dir, id);
    if let Err(e) = crate::trash::discard(run_dir, &bdir) {
        failures.push(format!("remove {}: {e}", bdir.display()));
    }
    tracing::debug!(
        id,
        runtime_delete_ms = (deleted - begun).as_secs_f64() * 1000.0,
        rootfs_and_bundle_ms = deleted.elapsed().as_secs_f64() * 1000.0,
        "workload cleaned up"
    );
    failures
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn cleanup_waits_for_a_prepare_of_the_same_id() {
        let (tx, rx) = std::sync::mpsc::channel();
        let preparing = Preparing::begin("0badc0de");
        let waiter = std::thread::spawn(move || {
            Preparing::wait_for("0badc0de", Duration::from_secs(30));
            tx.send(()).unwrap();
        });
        // Still preparing: the waiter must not have come through.
        assert!(rx.recv_timeout(Duration::from_millis(200)).is_err());
        drop(preparing);
        rx.recv_timeout(Duration::from_secs(30)).unwrap();
        waiter.join().unwrap();
        // Another id never waits.
        Preparing::wait_for("12345678", Duration::from_secs(30));
    }
}
