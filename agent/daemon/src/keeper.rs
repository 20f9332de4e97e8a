//! The keeper: a small supervisor process per detached workload (`bottle-agent keep …`, the
//! agent's own binary), so the workload outlives the agent. It is to bottle what conmon is to
//! podman:
//!
//! - it runs `runc create` itself and is a child subreaper, so the container's init becomes
//!   *its* child: it alone can collect the exit status, and does even while no agent runs;
//! - it reads the workload's stdout and stderr through pipes into the size-capped
//!   `workload.log` (same rotation as the agent's own writer), so output keeps being kept and
//!   the workload never writes into a pipe whose reader died with the agent (SIGPIPE);
//! - when the init exits it writes the status to `<bundle>/exit` (temp file + rename) and
//!   exits itself.
//!
//! Protocol with the agent: one line on the keeper's stdout once `runc create` has returned,
//! its exit code (`0` = created; otherwise runc's JSON log names the error), then stdout is
//! closed. Nothing secret is on the keeper's argv: paths and the runc command line only (the
//! environment is in `config.json`).

use std::ffi::OsString;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::Pid;

use crate::logfile::CappedLog;

/// The file in the bundle directory that marks a workload run by a keeper (holds its pid).
pub const MARK_FILE: &str = "keeper";
/// The file the keeper writes the workload's exit status to.
pub const EXIT_FILE: &str = "exit";
/// How long the output may take to drain after the init exited.
const DRAIN: Duration = Duration::from_secs(5);

/// The keeper's command line (after the binary): `keep DIR LOG CAP -- RUNC-ARGV…`.
pub fn args(dir: &Path, log: &Path, cap: u64, runc_argv: Vec<OsString>) -> Vec<OsString> {
    let mut v: Vec<OsString> = vec![
        "keep".into(),
        dir.into(),
        log.into(),
        cap.to_string().into(),
        "--".into(),
    ];
    v.extend(runc_argv);
    v
}

/// The exit status a keeper recorded, if any.
pub fn read_exit(dir: &Path) -> Option<i32> {
    std::fs::read_to_string(dir.join(EXIT_FILE))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// The keeper's pid, as the agent recorded it in the bundle's mark file.
pub fn pid(dir: &Path) -> Option<i32> {
    std::fs::read_to_string(dir.join(MARK_FILE))
        .ok()?
        .trim()
        .parse()
        .ok()
        .filter(|&p| p > 0)
}

/// Whether `pid` still is the keeper of the bundle `dir` (not a reused pid).
pub fn alive(pid: i32, dir: &Path) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let mut args = cmdline.split(|&b| b == 0);
    let _exe = args.next();
    args.next() == Some(b"keep".as_slice())
        && args.next() == Some(dir.as_os_str().as_encoded_bytes())
}

/// `bottle-agent keep …`: runs until the workload has exited. Errors go to stderr (the
/// agent's log while the agent lives).
pub fn main(args: &[OsString]) -> ExitCode {
    match keep(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Not eprintln: a closed stderr (the agent's log pipe gone) must not panic us.
            let _ = writeln!(std::io::stderr(), "bottle-agent keep: {e}");
            ExitCode::from(1)
        }
    }
}

fn keep(args: &[OsString]) -> Result<(), String> {
    let (dir, log, cap, argv) = match args {
        [dir, log, cap, sep, argv @ ..] if sep == "--" && !argv.is_empty() => (
            PathBuf::from(dir),
            PathBuf::from(log),
            cap.to_str()
                .and_then(|c| c.parse::<u64>().ok())
                .ok_or("bad cap")?,
            argv,
        ),
        _ => return Err("usage: keep DIR LOG CAP -- RUNC-ARGV…".into()),
    };
    // Out of the agent's session and process group: signals meant for the agent (a terminal's
    // ^C, a process-group kill) do not reach the keeper.
    let _ = nix::unistd::setsid();
    bottle_launcher::runc::set_child_subreaper().map_err(|e| e.to_string())?;

    let log = Arc::new(Mutex::new(CappedLog::open(log, cap)));
    let pipe = || -> Result<(std::fs::File, std::fs::File), String> {
        let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| e.to_string())?;
        Ok((r.into(), w.into()))
    };
    let (out_r, out_w) = pipe()?;
    let (err_r, err_w) = pipe()?;
    let mut runc = Command::new(&argv[0])
        .args(&argv[1..])
        .env_clear()
        .env("PATH", bottle_launcher::runc::RUNTIME_PATH)
        .stdin(Stdio::null())
        .stdout(out_w)
        .stderr(err_w)
        .spawn()
        .map_err(|e| format!("running {:?}: {e}", argv[0]))?;
    let readers = [out_r, err_r].map(|mut pipe| {
        let log = log.clone();
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 16 * 1024];
            loop {
                match pipe.read(&mut buf) {
                    Ok(0) => return,
                    Ok(n) => log
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .write(&buf[..n]),
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(_) => return,
                }
            }
        })
    });
    let created = runc.wait().map_err(|e| format!("waiting for runc: {e}"))?;
    let code = created.code().unwrap_or(255);
    {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{code}");
        let _ = out.flush();
    }
    // Close our stdout so the agent's read ends here (and never blocks on us later).
    if let Ok(null) = std::fs::File::open("/dev/null") {
        let _ = nix::unistd::dup2(std::os::fd::AsRawFd::as_raw_fd(&null), 1);
    }
    if code != 0 {
        return Ok(());
    }
    let pid: i32 = std::fs::read_to_string(dir.join("pid"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .filter(|&p| p > 0)
        .ok_or("runc wrote no pid")?;
    let status = loop {
        match waitpid(None::<Pid>, None) {
            Ok(WaitStatus::Exited(p, c)) if p.as_raw() == pid => break Some(c),
            Ok(WaitStatus::Signaled(p, sig, _)) if p.as_raw() == pid => {
                break Some(128 + sig as i32)
            }
            Ok(_) | Err(nix::Error::EINTR) => {}
            // Nothing left to wait for: the init was never ours.
            Err(_) => break None,
        }
    };
    let deadline = Instant::now() + DRAIN;
    for r in &readers {
        while !r.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    let code = status.ok_or("lost the workload's init")?;
    let tmp = dir.join(format!("{EXIT_FILE}.tmp"));
    std::fs::write(&tmp, format!("{code}\n"))
        .and_then(|()| std::fs::rename(&tmp, dir.join(EXIT_FILE)))
        .map_err(|e| format!("recording the exit status in {}: {e}", dir.display()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_exit_file_and_the_mark_are_read_strictly() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read_exit(dir.path()), None);
        std::fs::write(dir.path().join(EXIT_FILE), "42\n").unwrap();
        assert_eq!(read_exit(dir.path()), Some(42));
        std::fs::write(dir.path().join(EXIT_FILE), "4x\n").unwrap();
        assert_eq!(read_exit(dir.path()), None);
        assert_eq!(pid(dir.path()), None);
        std::fs::write(dir.path().join(MARK_FILE), "0\n").unwrap();
        assert_eq!(pid(dir.path()), None);
        std::fs::write(dir.path().join(MARK_FILE), "1234\n").unwrap();
        assert_eq!(pid(dir.path()), Some(1234));
    }

    #[test]
    fn a_pid_is_a_keeper_only_if_its_command_line_says_so() {
        let dir = tempfile::tempdir().unwrap();
        // This test process is not a keeper of anything.
        let me = i32::try_from(std::process::id()).unwrap();
        assert!(!alive(me, dir.path()));
        assert!(!alive(i32::MAX, dir.path()));
    }

    #[test]
    fn args_put_the_runtime_after_the_separator() {
        let a = args(
            Path::new("/b"),
            Path::new("/l"),
            8,
            vec!["runc".into(), "create".into()],
        );
        let a: Vec<&str> = a.iter().map(|s| s.to_str().unwrap()).collect();
        assert_eq!(a, ["keep", "/b", "/l", "8", "--", "runc", "create"]);
    }
}
