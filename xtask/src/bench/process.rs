//! Child processes, namespaces and waits for the benches. Every child, namespace, link and
//! directory is a guard that removes what it made when dropped (on success, on error and
//! after Ctrl-C), every wait has a deadline, and while [`Interrupts`] is alive SIGINT and
//! SIGTERM only raise a flag that every wait here checks, so the guards get to run.

use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// While alive, SIGINT and SIGTERM set a flag instead of ending the process; dropping it
/// restores the default dispositions.
pub struct Interrupts(());

impl Interrupts {
    pub fn catch() -> Self {
        for sig in [libc::SIGINT, libc::SIGTERM] {
            // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
            unsafe { libc::signal(sig, on_signal as *const () as libc::sighandler_t) };
        }
        Self(())
    }
}

impl Drop for Interrupts {
    fn drop(&mut self) {
        for sig in [libc::SIGINT, libc::SIGTERM] {
            // SAFETY: restoring the default disposition has no preconditions.
            unsafe { libc::signal(sig, libc::SIG_DFL) };
        }
    }
}

/// An error once Ctrl-C (or SIGTERM) arrived.
pub fn check_interrupted() -> Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    Ok(())
}

/// A child process: asked to stop (SIGTERM), killed after a grace period, and reaped when
/// dropped.
pub struct Proc {
    child: Child,
    name: String,
}

impl Proc {
    pub fn spawn(name: &str, cmd: &mut Command) -> Result<Self> {
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start {name}"))?;
        Ok(Self {
            child,
            name: name.to_string(),
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn ensure_running(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!("{} exited ({status})", self.name);
        }
        Ok(())
    }

    /// Waits until the child prints `line` on stdout (which must be piped); the rest of its
    /// output is drained in the background.
    pub fn wait_for_line(&mut self, line: &str, timeout: Duration) -> Result<()> {
        let stdout = self.child.stdout.take().context("stdout is not piped")?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(stdout).lines().map_while(Result::ok) {
                // The receiver stops listening once it has what it wanted.
                let _ = tx.send(l);
            }
        });
        let deadline = Instant::now() + timeout;
        loop {
            check_interrupted()?;
            match rx.recv_timeout(Duration::from_millis(100)) {
                Ok(l) if l.trim() == line => return Ok(()),
                Ok(_) | Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    self.ensure_running()?;
                    bail!("{} closed its output before printing {line:?}", self.name);
                }
            }
            self.ensure_running()?;
            if Instant::now() > deadline {
                bail!("{} did not print {line:?} within {timeout:?}", self.name);
            }
        }
    }

    /// Waits until `addr` accepts TCP connections (the child is listening).
    pub fn wait_for_port(&mut self, addr: SocketAddr, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            check_interrupted()?;
            self.ensure_running()?;
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("{} did not listen on {addr} within {timeout:?}", self.name);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits for the child to exit, killing it at the deadline (or on an interrupt, if
    /// `interruptible`).
    /// Waits for the exit, woken by the kernel the moment it happens (a pidfd), so that timed
    /// runs measure the command and not a polling interval.
    fn wait_deadline(&mut self, timeout: Duration, interruptible: bool) -> Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        let pidfd = pidfd_open(self.child.id());
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if interruptible {
                check_interrupted()?;
            }
            let now = Instant::now();
            if now > deadline {
                bail!("{} did not finish within {timeout:?}", self.name);
            }
            let slice = (deadline - now).min(Duration::from_millis(200));
            match &pidfd {
                Some(fd) => wait_readable(fd, slice),
                None => std::thread::sleep(slice.min(Duration::from_millis(1))),
            }
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            if let Ok(pid) = libc::pid_t::try_from(self.child.id()) {
                // SAFETY: kill has no memory-safety preconditions; pid is our unreaped child.
                unsafe { libc::kill(pid, libc::SIGTERM) };
            }
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

fn drain<R: Read + Send + 'static>(pipe: Option<R>) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(mut pipe) = pipe {
            let _ = pipe.read_to_end(&mut buf);
        }
        buf
    })
}

/// Runs `cmd` to completion within `timeout` (killed if it overruns or on Ctrl-C); returns
/// its output whatever its exit status.
pub fn output(cmd: &mut Command, timeout: Duration) -> Result<Output> {
    output_with(cmd, timeout, true)
}

/// [`output`], not cut short by Ctrl-C: for clean-up, which must run after it.
fn output_with(cmd: &mut Command, timeout: Duration, interruptible: bool) -> Result<Output> {
    let shown = format!("{cmd:?}");
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut proc = Proc::spawn(&shown, cmd)?;
    let out = drain(proc.child.stdout.take());
    let err = drain(proc.child.stderr.take());
    let status = proc.wait_deadline(timeout, interruptible)?;
    let stdout = out.join().unwrap_or_default();
    let stderr = err.join().unwrap_or_default();
    Ok(Output {
        status,
        stdout,
        stderr,
    })
}

/// [`output`], requiring success; returns stdout.
pub fn run(cmd: &mut Command, timeout: Duration) -> Result<String> {
    let shown = format!("{cmd:?}");
    let out = output(cmd, timeout)?;
    if !out.status.success() {
        bail!(
            "{shown} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `ip ARGS`, required to succeed.
pub fn ip(args: &[&str]) -> Result<()> {
    run(Command::new("ip").args(args), Duration::from_secs(20)).map(|_| ())
}

/// `ip ARGS` whose failure (already gone) does not matter; runs even after Ctrl-C.
fn ip_quiet(args: &[&str]) {
    let _ = output_with(
        Command::new("ip").args(args),
        Duration::from_secs(20),
        false,
    );
}

/// A named network namespace (`ip netns`), deleted when dropped.
pub struct Netns(pub String);

impl Netns {
    pub fn create(name: &str) -> Result<Self> {
        ip_quiet(&["netns", "del", name]);
        ip(&["netns", "add", name])?;
        Ok(Self(name.to_string()))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        ip_quiet(&["netns", "del", &self.0]);
    }
}

/// A host network interface, deleted when dropped (for a veth, with its peer).
pub struct Link(pub String);

impl Link {
    /// A veth pair: `host` here, `peer` (renamed `eth0`) inside `netns`.
    pub fn veth_into(host: &str, netns: &str) -> Result<Self> {
        ip_quiet(&["link", "del", host]);
        ip(&[
            "link", "add", host, "type", "veth", "peer", "name", "eth0", "netns", netns,
        ])?;
        Ok(Self(host.to_string()))
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        ip_quiet(&["link", "del", &self.0]);
    }
}

/// A scratch directory, removed with its contents when dropped.
pub struct WorkDir(pub PathBuf);

impl WorkDir {
    pub fn new(name: &str) -> Result<Self> {
        let dir = std::env::temp_dir().join(format!("{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(Self(dir))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A tmpfs mounted on a fresh directory, unmounted when dropped: a run directory like the
/// `/run` of a usual Linux host (a tmpfs), which this machine's may not be.
pub struct Tmpfs(PathBuf);

impl Tmpfs {
    pub fn mount(dir: PathBuf) -> Result<Self> {
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let out = output(
            Command::new("mount")
                .args(["-t", "tmpfs", "-o", "mode=0711", "tmpfs"])
                .arg(&dir),
            Duration::from_secs(20),
        )?;
        if !out.status.success() {
            bail!(
                "mount -t tmpfs {}: {}",
                dir.display(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(Self(dir))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = output(
            Command::new("umount").arg("--lazy").arg(&self.0),
            Duration::from_secs(20),
        );
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// A pidfd for `pid` (Linux 5.3+), readable once the process has exited.
fn pidfd_open(pid: u32) -> Option<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    let pid = libc::pid_t::try_from(pid).ok()?;
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    let fd = i32::try_from(fd).ok().filter(|&fd| fd >= 0)?;
    // SAFETY: `fd` is a descriptor the kernel just gave us and nothing else owns.
    Some(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) })
}

/// Blocks until `fd` is readable or `timeout` passes.
fn wait_readable(fd: &std::os::fd::OwnedFd, timeout: Duration) {
    use std::os::fd::AsRawFd;
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = i32::try_from(timeout.as_millis())
        .unwrap_or(i32::MAX)
        .max(1);
    // SAFETY: one valid pollfd, count 1.
    unsafe { libc::poll(&mut pfd, 1, ms) };
}
