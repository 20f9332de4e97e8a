//! A small driver for `runc` (Debian's package `runc`; `crun` works the same way on pure
//! cgroup v2 hosts, so the binary is a parameter).
//!
//! - Our containers live under their own `--root` (e.g. `/run/bottle/runc`), separate from any
//!   other runc user on the host.
//! - Every call is bounded in time; on timeout the runc child is killed and reaped.
//! - Nothing secret goes onto an argv: the process's environment is only ever in `config.json`
//!   or in an `exec --process` file (0600, in the root-only `--root` directory, removed after
//!   use). runc itself runs with a cleared environment.
//! - runc's output goes to unlinked scratch files, not pipes, so a container that inherits a
//!   descriptor can never block us.
//!
//! Exit statuses: `runc create` detaches, so the container's init is re-parented to the nearest
//! child subreaper. Call [`set_child_subreaper`] once in the process that drives runc, then
//! [`wait_exit`] collects the init's status (as containerd's shim does).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use oci_spec::runtime::{
    Capabilities, LinuxCapabilitiesBuilder, Process, ProcessBuilder, UserBuilder,
};
use oci_spec::OciSpecError;
use serde::Deserialize;

/// The runc state root bottle uses, under the agent's run directory.
pub const DEFAULT_ROOT: &str = "/run/bottle/runc";
/// Default bound on one runc call.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// The `PATH` runc runs with (its environment is otherwise empty).
pub const RUNTIME_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
const PATH: &str = RUNTIME_PATH;

#[derive(Debug, thiserror::Error)]
pub enum RuncError {
    #[error("{binary} is not installed (install the Debian package `{package}`)")]
    NotInstalled { binary: String, package: String },
    #[error(
        "container id {0:?} is invalid (1-64 of [A-Za-z0-9_.-], starting with a letter or digit)"
    )]
    BadId(String),
    #[error("{binary} {command}: the container's process is already dead")]
    Dead {
        binary: String,
        command: &'static str,
    },
    #[error("{binary} {command} timed out after {timeout:?} (killed)")]
    Timeout {
        binary: String,
        command: &'static str,
        timeout: Duration,
    },
    #[error("{binary} {command} failed ({status}): {message}")]
    Failed {
        binary: String,
        command: &'static str,
        status: ExitStatus,
        message: String,
    },
    #[error("running {binary} {command}: {source}")]
    Spawn {
        binary: String,
        command: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{binary} {command}: unexpected output: {source}")]
    Parse {
        binary: String,
        command: &'static str,
        #[source]
        source: serde_json::Error,
    },
    #[error("building the exec process: {0}")]
    Process(#[from] OciSpecError),
    #[error("waiting for pid {pid}: {source}")]
    Wait {
        pid: i32,
        #[source]
        source: nix::Error,
    },
    #[error("making this process a child subreaper: {0}")]
    Subreaper(#[source] io::Error),
}

pub type Result<T, E = RuncError> = std::result::Result<T, E>;

/// The three standard descriptors for a container's (or exec'd) process. `None` = /dev/null.
#[derive(Debug, Default)]
pub struct Stdio3 {
    pub stdin: Option<File>,
    pub stdout: Option<File>,
    pub stderr: Option<File>,
}

/// A container's status as runc reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Creating,
    Created,
    Running,
    Paused,
    Stopped,
}

/// `runc state`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ContainerState {
    pub id: String,
    /// 0 once stopped.
    pub pid: i32,
    pub status: Status,
    pub bundle: PathBuf,
}

/// One sample of `runc events --stats`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    pub cpu_total_ns: u64,
    pub memory_usage_bytes: u64,
    pub memory_limit_bytes: u64,
    pub pids_current: u64,
}

/// What `runc exec` runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessSpec {
    pub args: Vec<String>,
    /// `NAME=value`; written only to the 0600 process file.
    pub env: Vec<String>,
    pub cwd: PathBuf,
    pub user: (u32, u32),
    pub terminal: bool,
}

impl ProcessSpec {
    /// The OCI process: no capabilities, `noNewPrivileges` (the container's seccomp filter
    /// applies to exec'd processes as well).
    pub fn to_oci(&self) -> Result<Process> {
        let none = Capabilities::new;
        Ok(ProcessBuilder::default()
            .terminal(self.terminal)
            .user(
                UserBuilder::default()
                    .uid(self.user.0)
                    .gid(self.user.1)
                    .build()?,
            )
            .args(self.args.clone())
            .env(self.env.clone())
            .cwd(self.cwd.clone())
            .capabilities(
                LinuxCapabilitiesBuilder::default()
                    .bounding(none())
                    .effective(none())
                    .inheritable(none())
                    .permitted(none())
                    .ambient(none())
                    .build()?,
            )
            .no_new_privileges(true)
            .build()?)
    }
}

/// Options of `runc create`.
#[derive(Debug, Default)]
pub struct CreateOptions<'a> {
    pub pid_file: Option<&'a Path>,
    /// With `terminal: true` in the config: where runc sends the PTY master.
    pub console_socket: Option<&'a Path>,
    /// Without a terminal: the process's stdio (inherited through runc).
    pub stdio: Stdio3,
}

/// Options of `runc exec`.
#[derive(Debug, Default)]
pub struct ExecOptions<'a> {
    pub console_socket: Option<&'a Path>,
    pub stdio: Stdio3,
    /// `-d`: return once started instead of waiting for the process to exit.
    pub detach: bool,
    pub pid_file: Option<&'a Path>,
    /// Bound on the whole exec (for a non-detached exec: the process's run time).
    pub timeout: Option<Duration>,
}

/// The driver: a runtime binary, its state root and a default timeout.
#[derive(Debug, Clone)]
pub struct Runc {
    binary: PathBuf,
    name: String,
    root: PathBuf,
    timeout: Duration,
}

static SCRATCH: AtomicU64 = AtomicU64::new(0);

/// A container handle: its id and the driver.
#[derive(Debug, Clone)]
pub struct Container {
    pub runc: Runc,
    pub id: String,
}

/// What [`Container::remove_stopped`] reads of runc's `state.json`.
#[derive(Debug, Deserialize)]
struct RuncStateFile {
    init_process_pid: i32,
    init_process_start: u64,
    #[serde(default)]
    cgroup_paths: std::collections::BTreeMap<String, String>,
}

/// Largest `state.json` read (runc's is ~10 KiB for our bundles).
const MAX_STATE_FILE: u64 = 1024 * 1024;

fn read_state_file(path: &Path) -> Option<RuncStateFile> {
    let mut text = Vec::new();
    File::open(path)
        .ok()?
        .take(MAX_STATE_FILE)
        .read_to_end(&mut text)
        .ok()?;
    serde_json::from_slice(&text).ok()
}

/// Whether `pid` is still the process that started at `start` (clock ticks since boot, as
/// runc records it); a reused pid is not. Unreadable means alive: the caller then lets the
/// runtime decide.
fn process_alive(pid: i32, start: u64) -> bool {
    if pid <= 0 {
        return false;
    }
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => false,
        Err(_) => true,
        // Field 22 (starttime) is the 20th after the command name's closing parenthesis.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(19))
            .and_then(|t| t.parse::<u64>().ok())
            .is_none_or(|t| t == start),
    }
}

/// Removes one (empty) cgroup directory; `false` if it cannot be (still busy after a short
/// while, or anything unexpected).
fn remove_cgroup(path: &Path) -> bool {
    // The last tasks of a killed PID namespace can take a moment to leave the cgroup.
    for _ in 0..50 {
        match fs::remove_dir(path) {
            Ok(()) => return true,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return true,
            Err(e) if e.raw_os_error() == Some(nix::libc::EBUSY) => {
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(_) => return false,
        }
    }
    false
}

impl Runc {
    /// `binary` is a name looked up in `PATH` (`"runc"`, `"crun"`) or a path. `root` is made
    /// 0700 if missing.
    pub fn new(binary: &str, root: &Path) -> Result<Self> {
        let name = Path::new(binary)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| binary.to_owned());
        let path = find_binary(binary).ok_or_else(|| RuncError::NotInstalled {
            binary: binary.to_owned(),
            package: name.clone(),
        })?;
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(root)
            .map_err(|source| RuncError::Io {
                path: root.to_path_buf(),
                source,
            })?;
        Ok(Self {
            binary: path,
            name,
            root: root.to_path_buf(),
            timeout: DEFAULT_TIMEOUT,
        })
    }

    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn container(&self, id: &str) -> Result<Container> {
        check_id(id)?;
        Ok(Container {
            runc: self.clone(),
            id: id.to_owned(),
        })
    }

    /// `runc create --bundle DIR [--pid-file F] [--console-socket S] ID`.
    pub fn create(&self, id: &str, bundle: &Path, opts: CreateOptions<'_>) -> Result<Container> {
        self.create_or_run(id, bundle, opts, false)
    }

    /// `runc run --detach --bundle DIR [--pid-file F] ID`: `create` and `start` in one call,
    /// one runtime process (and its start-up) fewer than the two, for a workload that needs
    /// nothing done between them (no terminal to size).
    pub fn run_detached(
        &self,
        id: &str,
        bundle: &Path,
        opts: CreateOptions<'_>,
    ) -> Result<Container> {
        self.create_or_run(id, bundle, opts, true)
    }

    fn create_or_run(
        &self,
        id: &str,
        bundle: &Path,
        opts: CreateOptions<'_>,
        run: bool,
    ) -> Result<Container> {
        check_id(id)?;
        let command = if run { "run" } else { "create" };
        let log = self.scratch_path("create-log");
        let mut args: Vec<&std::ffi::OsStr> = vec![
            "--log".as_ref(),
            log.as_os_str(),
            "--log-format".as_ref(),
            "json".as_ref(),
            command.as_ref(),
        ];
        if run {
            args.push("--detach".as_ref());
        }
        args.extend(["--bundle".as_ref(), bundle.as_os_str()]);
        if let Some(p) = opts.pid_file {
            args.extend(["--pid-file".as_ref(), p.as_os_str()]);
        }
        if let Some(s) = opts.console_socket {
            args.extend(["--console-socket".as_ref(), s.as_os_str()]);
        }
        args.push(id.as_ref());
        let result = self.run_with_stdio(command, &args, opts.stdio, self.timeout);
        let log_text = fs::read_to_string(&log).unwrap_or_default();
        let _ = fs::remove_file(&log);
        match result {
            Ok(status) if status.success() => Ok(Container {
                runc: self.clone(),
                id: id.to_owned(),
            }),
            Ok(status) => Err(self.failed(command, status, &log_messages(&log_text))),
            Err(e) => Err(e),
        }
    }

    /// The command line of `runc create` (binary first) for a supervisor process that runs it
    /// itself and stays the parent of the container's init (the agent's keeper). Run it with
    /// a cleared environment but `PATH=`[`RUNTIME_PATH`]; `log` receives runc's JSON log, which
    /// [`create_failed`](Self::create_failed) turns into the error.
    pub fn create_argv(
        &self,
        id: &str,
        bundle: &Path,
        pid_file: &Path,
        log: &Path,
    ) -> Result<Vec<std::ffi::OsString>> {
        check_id(id)?;
        Ok([
            self.binary.as_os_str(),
            "--root".as_ref(),
            self.root.as_os_str(),
            "--log".as_ref(),
            log.as_os_str(),
            "--log-format".as_ref(),
            "json".as_ref(),
            "create".as_ref(),
            "--bundle".as_ref(),
            bundle.as_os_str(),
            "--pid-file".as_ref(),
            pid_file.as_os_str(),
            id.as_ref(),
        ]
        .iter()
        .map(|s| s.to_os_string())
        .collect())
    }

    /// The error of a [`create_argv`](Self::create_argv) run that exited with `code`.
    pub fn create_failed(&self, code: i32, log: &Path) -> RuncError {
        use std::os::unix::process::ExitStatusExt;
        let text = fs::read_to_string(log).unwrap_or_default();
        self.failed(
            "create",
            ExitStatus::from_raw((code & 0xff) << 8),
            &log_messages(&text),
        )
    }

    /// Runs `command args…`, capturing stdout and stderr; fails on a non-zero exit.
    fn call(&self, command: &'static str, args: &[&str]) -> Result<String> {
        let out = self.scratch_file()?;
        let err = self.scratch_file()?;
        let stdio = Stdio3 {
            stdin: None,
            stdout: Some(self.dup(&out)?),
            stderr: Some(self.dup(&err)?),
        };
        let mut full: Vec<&std::ffi::OsStr> = vec![command.as_ref()];
        full.extend(args.iter().map(|a| std::ffi::OsStr::new(*a)));
        let status = self.run_with_stdio(command, &full, stdio, self.timeout)?;
        let stdout = read_all(out);
        if status.success() {
            Ok(stdout)
        } else {
            Err(self.failed(command, status, read_all(err).trim()))
        }
    }

    fn run_with_stdio(
        &self,
        command: &'static str,
        args: &[&std::ffi::OsStr],
        stdio: Stdio3,
        timeout: Duration,
    ) -> Result<ExitStatus> {
        let to = |f: Option<File>| f.map_or_else(Stdio::null, Stdio::from);
        let mut child = Command::new(&self.binary)
            .arg("--root")
            .arg(&self.root)
            .args(args)
            .env_clear()
            .env("PATH", PATH)
            .stdin(to(stdio.stdin))
            .stdout(to(stdio.stdout))
            .stderr(to(stdio.stderr))
            .spawn()
            .map_err(|source| RuncError::Spawn {
                binary: self.name.clone(),
                command,
                source,
            })?;
        let deadline = Instant::now() + timeout;
        // Woken the moment the runtime exits (every `bottle run` waits for it), not at a tick.
        let pidfd = i32::try_from(child.id()).ok().and_then(pidfd_open);
        loop {
            match child.try_wait() {
                Ok(Some(status)) => return Ok(status),
                Ok(None) if Instant::now() >= deadline => {
                    let _ = child.kill();
                    let _ = child.wait();
                    tracing::warn!(binary = %self.name, command, ?timeout, "runtime call timed out");
                    return Err(RuncError::Timeout {
                        binary: self.name.clone(),
                        command,
                        timeout,
                    });
                }
                Ok(None) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    match &pidfd {
                        Some(fd) => wait_readable(fd, left.min(Duration::from_millis(100))),
                        None => std::thread::sleep(left.min(Duration::from_millis(1))),
                    }
                }
                Err(source) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(RuncError::Spawn {
                        binary: self.name.clone(),
                        command,
                        source,
                    });
                }
            }
        }
    }

    fn failed(&self, command: &'static str, status: ExitStatus, message: &str) -> RuncError {
        RuncError::Failed {
            binary: self.name.clone(),
            command,
            status,
            message: message.to_owned(),
        }
    }

    fn scratch_path(&self, what: &str) -> PathBuf {
        let n = SCRATCH.fetch_add(1, Ordering::Relaxed);
        self.root
            .join(format!(".{what}-{}-{n}", std::process::id()))
    }

    /// An unlinked 0600 file in the root-only state root.
    fn scratch_file(&self) -> Result<File> {
        let path = self.scratch_path("out");
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(|source| RuncError::Io {
                path: path.clone(),
                source,
            })?;
        let _ = fs::remove_file(&path);
        Ok(f)
    }

    fn dup(&self, f: &File) -> Result<File> {
        f.try_clone().map_err(|source| RuncError::Io {
            path: self.root.clone(),
            source,
        })
    }
}

impl Container {
    /// `runc start`: runs the configured process.
    pub fn start(&self) -> Result<()> {
        if let Some(started) = self.start_through_fifo() {
            return started;
        }
        self.runc.call("start", &[&self.id]).map(drop)
    }

    /// What `runc start` does for a created container, without a second runtime process
    /// (~4 ms of a Go binary's start-up here, on every terminal or detached launch): the
    /// container's init waits to open `exec.fifo` in the container's state
    /// directory for writing; reading its byte lets it exec the process, and removing the
    /// fifo is what makes runc report the container as running. Only for runc, and only when
    /// its state holds the fifo and the init's pid; `None` otherwise, and the caller runs
    /// `runc start`. Bounded by the runtime's timeout; an init that dies first is an error.
    fn start_through_fifo(&self) -> Option<Result<()>> {
        use std::os::fd::AsFd;
        if self.runc.name != "runc" {
            return None;
        }
        let dir = self.runc.root.join(&self.id);
        let state = read_state_file(&dir.join("state.json"))?;
        let fifo_path = dir.join("exec.fifo");
        // Non-blocking: an open for reading succeeds at once and lets the init's blocked
        // open for writing through; poll then waits for its byte.
        let mut fifo = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(&fifo_path)
            .ok()?;
        let init = pidfd_open(state.init_process_pid)?;
        let dead = || RuncError::Dead {
            binary: self.runc.name.clone(),
            command: "start",
        };
        let deadline = Instant::now() + self.runc.timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Some(Err(RuncError::Timeout {
                    binary: self.runc.name.clone(),
                    command: "start",
                    timeout: self.runc.timeout,
                }));
            }
            let exited = {
                let mut fds = [
                    nix::poll::PollFd::new(fifo.as_fd(), nix::poll::PollFlags::POLLIN),
                    nix::poll::PollFd::new(init.as_fd(), nix::poll::PollFlags::POLLIN),
                ];
                let ms = u16::try_from(left.as_millis().max(1)).unwrap_or(u16::MAX);
                match nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(ms)) {
                    Err(nix::errno::Errno::EINTR) | Ok(0) => continue,
                    Err(e) => {
                        return Some(Err(RuncError::Io {
                            path: fifo_path,
                            source: e.into(),
                        }))
                    }
                    Ok(_) => {}
                }
                fds[1]
                    .revents()
                    .is_some_and(|r| r.contains(nix::poll::PollFlags::POLLIN))
            };
            let mut byte = [0u8; 1];
            match fifo.read(&mut byte) {
                Ok(1) => break,
                // The writer went without writing, or (with nothing to read yet) the init
                // ended before it opened the fifo.
                Ok(_) => return Some(Err(dead())),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if exited {
                        return Some(Err(dead()));
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(source) => {
                    return Some(Err(RuncError::Io {
                        path: fifo_path,
                        source,
                    }))
                }
            }
        }
        match fs::remove_file(&fifo_path) {
            Ok(()) => Some(Ok(())),
            Err(source) => Some(Err(RuncError::Io {
                path: fifo_path,
                source,
            })),
        }
    }

    /// `runc state`.
    pub fn state(&self) -> Result<ContainerState> {
        let out = self.runc.call("state", &[&self.id])?;
        serde_json::from_str(&out).map_err(|source| RuncError::Parse {
            binary: self.runc.name.clone(),
            command: "state",
            source,
        })
    }

    /// `runc kill [--all] ID SIG`.
    pub fn kill(&self, signal: Signal, all: bool) -> Result<()> {
        let sig = signal.as_str();
        if all {
            self.runc.call("kill", &["--all", &self.id, sig]).map(drop)
        } else {
            self.runc.call("kill", &[&self.id, sig]).map(drop)
        }
    }

    /// `runc delete [--force]`: with force, kills a running container first.
    pub fn delete(&self, force: bool) -> Result<()> {
        if force {
            self.runc.call("delete", &["--force", &self.id]).map(drop)
        } else {
            self.runc.call("delete", &[&self.id]).map(drop)
        }
    }

    /// Removes a stopped container without starting the runtime: what `runc delete` does for
    /// a container whose processes are all gone (remove its cgroups, then its state
    /// directory), minus a second runtime process on every `bottle run --rm` (~10 ms). Only
    /// for runc, only when its state holds what is expected (cgroups under `/sys/fs/cgroup`
    /// named after the id) and its init is provably gone; `Ok(false)` otherwise, and the
    /// caller runs [`delete`](Self::delete).
    pub fn remove_stopped(&self) -> Result<bool> {
        if self.runc.name != "runc" {
            return Ok(false);
        }
        let dir = self.runc.root.join(&self.id);
        let Some(state) = read_state_file(&dir.join("state.json")) else {
            return Ok(false);
        };
        if process_alive(state.init_process_pid, state.init_process_start) {
            return Ok(false);
        }
        let suffix = format!("/{}", self.id);
        let cgroups: Vec<&Path> = state.cgroup_paths.values().map(Path::new).collect();
        let expected = |p: &Path| {
            p.starts_with("/sys/fs/cgroup/")
                && p.to_str().is_some_and(|s| s.ends_with(&suffix))
                && p.components().all(|c| {
                    matches!(
                        c,
                        std::path::Component::RootDir | std::path::Component::Normal(_)
                    )
                })
        };
        if !cgroups.iter().all(|p| expected(p)) {
            return Ok(false);
        }
        for cgroup in cgroups {
            if !remove_cgroup(cgroup) {
                return Ok(false);
            }
        }
        match fs::remove_dir_all(&dir) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(true),
            Err(source) => Err(RuncError::Io { path: dir, source }),
        }
    }

    /// `runc pause`: freezes every process (cgroup freezer).
    pub fn pause(&self) -> Result<()> {
        self.runc.call("pause", &[&self.id]).map(drop)
    }

    /// `runc resume`.
    pub fn resume(&self) -> Result<()> {
        self.runc.call("resume", &[&self.id]).map(drop)
    }

    /// `runc events --stats`: one sample of CPU, memory and pids use.
    pub fn stats(&self) -> Result<Stats> {
        let out = self.runc.call("events", &["--stats", &self.id])?;
        let v: serde_json::Value =
            serde_json::from_str(&out).map_err(|source| RuncError::Parse {
                binary: self.runc.name.clone(),
                command: "events",
                source,
            })?;
        let d = &v["data"];
        let n = |v: &serde_json::Value| v.as_u64().unwrap_or(0);
        Ok(Stats {
            cpu_total_ns: n(&d["cpu"]["usage"]["total"]),
            memory_usage_bytes: n(&d["memory"]["usage"]["usage"]),
            memory_limit_bytes: n(&d["memory"]["usage"]["limit"]),
            pids_current: n(&d["pids"]["current"]),
        })
    }

    /// `runc exec --process FILE [--console-socket S] [-d] ID`. The process description
    /// (environment included) is written to a 0600 file in the state root and removed after.
    /// Without `detach` this waits for the process and returns its exit status.
    pub fn exec(&self, process: &ProcessSpec, opts: ExecOptions<'_>) -> Result<ExitStatus> {
        let oci = process.to_oci()?;
        let path = self.runc.scratch_path("process");
        let io_err = |source| RuncError::Io {
            path: path.clone(),
            source,
        };
        let json = serde_json::to_vec(&oci).map_err(|source| RuncError::Parse {
            binary: self.runc.name.clone(),
            command: "exec",
            source,
        })?;
        {
            let mut f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
                .map_err(io_err)?;
            f.write_all(&json).map_err(io_err)?;
        }
        let mut args: Vec<&std::ffi::OsStr> =
            vec!["exec".as_ref(), "--process".as_ref(), path.as_os_str()];
        if let Some(s) = opts.console_socket {
            args.extend(["--console-socket".as_ref(), s.as_os_str()]);
        }
        if let Some(p) = opts.pid_file {
            args.extend(["--pid-file".as_ref(), p.as_os_str()]);
        }
        if opts.detach {
            args.push("--detach".as_ref());
        }
        args.push(self.id.as_ref());
        let timeout = opts.timeout.unwrap_or(self.runc.timeout);
        let result = self.runc.run_with_stdio("exec", &args, opts.stdio, timeout);
        let _ = fs::remove_file(&path);
        result
    }
}

/// Makes this process the child subreaper, so detached containers' init processes become its
/// children when runc exits (and [`wait_exit`] can collect them).
pub fn set_child_subreaper() -> Result<()> {
    // SAFETY: prctl(PR_SET_CHILD_SUBREAPER, 1) takes no pointers and changes only this
    // process's reaping attribute.
    let rc = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    if rc == 0 {
        Ok(())
    } else {
        Err(RuncError::Subreaper(io::Error::last_os_error()))
    }
}

/// Waits up to `timeout` for `pid` (a container init re-parented to us) to exit. Returns the
/// shell-style status (`128 + signal` when killed), `None` on timeout. Until the re-parenting
/// happens waitpid says ECHILD; that is retried until the deadline.
pub fn wait_exit(pid: i32, timeout: Duration) -> Result<Option<i32>> {
    let deadline = Instant::now() + timeout;
    // A pidfd becomes readable the moment the process exits, so the wait below ends then
    // rather than at the next 20 ms tick (part of every `bottle run`'s latency).
    let pidfd = pidfd_open(pid);
    loop {
        match waitpid(Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(_, code)) => return Ok(Some(code)),
            Ok(WaitStatus::Signaled(_, sig, _)) => return Ok(Some(128 + sig as i32)),
            Ok(_) | Err(nix::Error::ECHILD) | Err(nix::Error::EINTR) => {}
            Err(source) => return Err(RuncError::Wait { pid, source }),
        }
        let now = Instant::now();
        if now >= deadline {
            return Ok(None);
        }
        let step = (deadline - now).min(Duration::from_millis(20));
        match &pidfd {
            Some(fd) => wait_readable(fd, step),
            None => std::thread::sleep(step),
        }
    }
}

/// Blocks until `fd` is readable (a pidfd: its process exited) or `timeout` (at most ~65 s)
/// passes.
pub fn wait_readable(fd: &std::os::fd::OwnedFd, timeout: Duration) {
    let mut fds = [nix::poll::PollFd::new(
        std::os::fd::AsFd::as_fd(fd),
        nix::poll::PollFlags::POLLIN,
    )];
    let ms = u16::try_from(timeout.as_millis().max(1)).unwrap_or(u16::MAX);
    let _ = nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(ms));
}

/// `pidfd_open(2)`; `None` where the kernel has none (before 5.3) or the pid is gone.
pub fn pidfd_open(pid: i32) -> Option<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    let fd = i32::try_from(fd).ok().filter(|&fd| fd >= 0)?;
    // SAFETY: the kernel just returned this descriptor; OwnedFd takes sole ownership.
    Some(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) })
}

fn find_binary(binary: &str) -> Option<PathBuf> {
    if binary.contains('/') {
        let p = PathBuf::from(binary);
        return p.is_file().then_some(p);
    }
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .chain(std::env::split_paths(PATH))
        .map(|d| d.join(binary))
        .find(|p| p.is_file())
}

fn check_id(id: &str) -> Result<()> {
    let ok = (1..=64).contains(&id.len())
        && id.as_bytes()[0].is_ascii_alphanumeric()
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(RuncError::BadId(id.to_owned()))
    }
}

fn read_all(mut f: File) -> String {
    let mut s = String::new();
    let _ = f.seek(SeekFrom::Start(0));
    let _ = f.read_to_string(&mut s);
    s
}

/// The `msg` of the error-level lines of runc's JSON log (all lines if none is an error).
fn log_messages(log: &str) -> String {
    let lines: Vec<serde_json::Value> = log
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let errors: Vec<&str> = lines
        .iter()
        .filter(|v| v["level"] == "error" || v["level"] == "fatal")
        .filter_map(|v| v["msg"].as_str())
        .collect();
    if errors.is_empty() {
        log.trim().to_owned()
    } else {
        errors.join("; ")
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn missing_binary_names_the_package() {
        let dir = tempfile::tempdir().unwrap();
        let err = Runc::new("definitely-not-a-runtime", dir.path()).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("package `definitely-not-a-runtime`"), "{msg}");
    }

    #[test]
    fn ids_are_checked() {
        assert!(check_id("bottle-0123abcd").is_ok());
        for bad in ["", "-x", "a/b", "a b", &"x".repeat(65)] {
            assert!(check_id(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn state_and_log_parse() {
        let s: ContainerState = serde_json::from_str(
            r#"{"ociVersion":"1.0.2","id":"x","pid":42,"status":"running","bundle":"/b","rootfs":"/r","created":"2024-01-01T00:00:00Z","owner":""}"#,
        )
        .unwrap();
        assert_eq!(s.status, Status::Running);
        assert_eq!(s.pid, 42);
        let log = "{\"level\":\"info\",\"msg\":\"a\"}\n{\"level\":\"error\",\"msg\":\"boom\"}\n";
        assert_eq!(log_messages(log), "boom");
    }

    #[test]
    fn exec_process_has_no_capabilities() {
        let p = ProcessSpec {
            args: vec!["id".into()],
            env: vec!["TOKEN=x".into()],
            cwd: "/".into(),
            user: (1000, 1000),
            terminal: false,
        }
        .to_oci()
        .unwrap();
        let v = serde_json::to_value(&p).unwrap();
        assert_eq!(v["noNewPrivileges"], true);
        assert_eq!(v["capabilities"]["bounding"], serde_json::json!([]));
    }

    #[test]
    fn timeouts_kill_the_child() {
        let dir = tempfile::tempdir().unwrap();
        // A script that hangs stands in for a stuck runtime.
        let script = dir.path().join("fake-runc");
        fs::write(&script, "#!/bin/sh\nexec sleep 10\n").unwrap();
        fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        let runc = Runc::new(script.to_str().unwrap(), &dir.path().join("root"))
            .unwrap()
            .with_timeout(Duration::from_millis(200));
        let t = Instant::now();
        let err = runc.container("x").unwrap().state().unwrap_err();
        assert!(matches!(err, RuncError::Timeout { .. }), "{err}");
        assert!(t.elapsed() < Duration::from_secs(5));
    }
}
