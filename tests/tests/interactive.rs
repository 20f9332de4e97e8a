//! End-to-end tests of the interactive half of `bottle run` and of `bottle exec`: stdin
//! streamed, `-it` on a real PTY (answers, resizes, terminal restored), exit codes passed
//! through, a missing command, exec inside the workload's namespaces, and the agent's restart
//! re-adopting a running workload. Slots 71-74.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use bottle_tests::*;

const PIPES_SLOT: u8 = 71;
const TTY_SLOT: u8 = 72;
const EXEC_SLOT: u8 = 73;
const RESTART_SLOT: u8 = 74;

/// A tiny image: busybox-static and a `bottle` user (1000:1000), as a rootfs directory.
fn image(agent: &Agent) -> String {
    let root = agent.dir.path().join("image");
    if !root.exists() {
        busybox_rootfs(
            &root,
            &[
                "sh", "id", "cat", "sleep", "echo", "true", "stty", "ps", "hostname", "grep", "tty",
            ],
        );
    }
    root.display().to_string()
}

fn run_dir(agent: &Agent) -> PathBuf {
    agent.dir.path().join("run")
}

fn bottle_cmd(agent: &Agent, args: &[&str]) -> Command {
    let mut cmd = Command::new(bin_dir().join("bottle"));
    cmd.args(args).env(bottle_api::HOST_ENV, agent.socket());
    cmd
}

/// Runs `bottle args…` with `stdin` fed from a thread, to completion (bounded).
fn bottle_with_input(agent: &Agent, args: &[&str], stdin: Vec<u8>) -> Output {
    let mut child = bottle_cmd(agent, args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    std::thread::spawn(move || {
        let _ = input.write_all(&stdin);
    });
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output().unwrap());
    });
    rx.recv_timeout(Duration::from_secs(120))
        .unwrap_or_else(|_| panic!("bottle {args:?} did not finish:\n{}", agent.log()))
}

fn entries(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// On drop, removes every container and rootfs mount the test's agent left behind: after a
/// failed assertion they would keep running (the harness cleans namespaces, not workloads).
struct Workloads(PathBuf);

impl Workloads {
    fn of(agent: &Agent) -> Self {
        Self(run_dir(agent))
    }
}

impl Drop for Workloads {
    fn drop(&mut self) {
        let root = self.0.join("runc");
        for id in entries(&root).iter().filter(|id| !id.starts_with('.')) {
            let _ = Command::new("runc")
                .arg("--root")
                .arg(&root)
                .args(["delete", "--force", id])
                .output();
        }
        let rootfs = self.0.join("rootfs").display().to_string();
        for line in std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap_or_default()
            .lines()
        {
            if let Some(m) = line.split(' ').nth(4).filter(|m| m.starts_with(&rootfs)) {
                let _ = Command::new("umount").args(["-l", m]).output();
            }
        }
    }
}

/// Nothing of any bottle is left.
fn assert_nothing_left(agent: &Agent) {
    assert_eq!(
        netns_with_prefix(&agent.slot.netns_prefix),
        Vec::<String>::new()
    );
    for sub in ["runc", "rootfs", "bundles"] {
        assert_eq!(
            entries(&run_dir(agent).join(sub)),
            Vec::<String>::new(),
            "{sub}/"
        );
    }
    assert_eq!(agent.ok(&["ls", "--json"]).trim(), "[]");
    wait_trash_empty(agent);
}

fn ls_state(agent: &Agent, name: &str) -> String {
    agent
        .ok(&["ls"])
        .lines()
        .find(|l| l.split_whitespace().next() == Some(name))
        .and_then(|l| l.split_whitespace().nth(2).map(str::to_owned))
        .unwrap_or_default()
}

/// Host pids whose command line (arguments joined by spaces) satisfies `f`.
fn pids_where(f: impl Fn(&str) -> bool) -> Vec<String> {
    entries(Path::new("/proc"))
        .into_iter()
        .filter(|p| p.bytes().all(|b| b.is_ascii_digit()))
        .filter(|p| {
            std::fs::read(Path::new("/proc").join(p).join("cmdline"))
                .is_ok_and(|c| f(text(&c).replace('\0', " ").trim_end()))
        })
        .collect()
}

/// Host pids running exactly `cmdline` (not a `bottle` client that merely names it).
fn pids_with(cmdline: &str) -> Vec<String> {
    pids_where(|c| c == cmdline)
}

// ---- a PTY for the client, as a terminal emulator would give it ----

struct Pty {
    master: Arc<std::fs::File>,
    slave: OwnedFd,
    seen: Arc<Mutex<String>>,
}

fn set_size(fd: i32, rows: u16, cols: u16) {
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one winsize from a live struct.
    assert_eq!(unsafe { libc::ioctl(fd, libc::TIOCSWINSZ, &ws) }, 0);
}

fn lflag(fd: i32) -> libc::tcflag_t {
    // SAFETY: termios is plain data; all zeroes is a valid value.
    let mut t: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: tcgetattr writes one termios into a live struct.
    assert_eq!(unsafe { libc::tcgetattr(fd, &mut t) }, 0);
    t.c_lflag
}

impl Pty {
    fn open(rows: u16, cols: u16) -> Self {
        let (mut m, mut s) = (0, 0);
        // SAFETY: openpty writes two descriptors; no name, termios or size given.
        let rc = unsafe {
            libc::openpty(
                &mut m,
                &mut s,
                std::ptr::null_mut(),
                std::ptr::null(),
                std::ptr::null(),
            )
        };
        assert_eq!(rc, 0);
        // SAFETY: openpty just gave us these descriptors.
        let (master, slave) = unsafe { (std::fs::File::from_raw_fd(m), OwnedFd::from_raw_fd(s)) };
        set_size(master.as_raw_fd(), rows, cols);
        let master = Arc::new(master);
        let seen = Arc::new(Mutex::new(String::new()));
        let (reader, sink) = (master.clone(), seen.clone());
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = (&*reader).read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock().unwrap().push_str(&text(&buf[..n]));
            }
        });
        Self {
            master,
            slave,
            seen,
        }
    }

    /// Starts `bottle args…` on the terminal: its session leader, the terminal its
    /// controlling one, so a resize reaches it as SIGWINCH.
    fn spawn(&self, agent: &Agent, args: &[&str]) -> Child {
        let mut cmd = bottle_cmd(agent, args);
        let fd = |s: &OwnedFd| Stdio::from(s.try_clone().unwrap());
        cmd.stdin(fd(&self.slave))
            .stdout(fd(&self.slave))
            .stderr(fd(&self.slave));
        // SAFETY: setsid and TIOCSCTTY are async-signal-safe syscalls.
        unsafe {
            cmd.pre_exec(|| {
                if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        cmd.spawn().unwrap()
    }

    fn type_in(&self, s: &str) {
        (&*self.master).write_all(s.as_bytes()).unwrap();
    }

    fn seen(&self) -> String {
        self.seen.lock().unwrap().clone()
    }

    /// Types `line` until `want` appears in the output (the typed line is echoed, so `want`
    /// must be something only the command's answer contains).
    fn ask(&self, line: &str, want: &str, agent: &Agent) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            self.type_in(line);
            let until = Instant::now() + Duration::from_secs(2);
            while Instant::now() < until {
                if self.seen().contains(want) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            assert!(
                Instant::now() < deadline,
                "no {want:?} after {line:?}; terminal:\n{}\nagent log:\n{}",
                self.seen(),
                agent.log()
            );
        }
    }
}

fn wait_child(child: &mut Child, agent: &Agent) -> i32 {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status.code().unwrap_or(-1);
        }
        assert!(
            Instant::now() < deadline,
            "client did not exit:\n{}",
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn privileged_stdin_exit_codes_and_missing_command() {
    if !privileged("privileged_stdin_exit_codes_and_missing_command") {
        return;
    }
    let agent = Agent::start(PIPES_SLOT, "");
    let _workloads = Workloads::of(&agent);
    let img = image(&agent);

    // A few MB of every byte value through stdin to `cat` and back, intact.
    let mut blob = Vec::with_capacity(3 << 20);
    let mut x: u32 = 0x1234_5678;
    while blob.len() < 3 << 20 {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        blob.extend_from_slice(&x.to_le_bytes());
    }
    let out = bottle_with_input(
        &agent,
        &["run", "--rm", "--image", &img, "--", "cat"],
        blob.clone(),
    );
    assert!(out.status.success(), "{out:?}\n{}", agent.log());
    assert!(
        out.stdout == blob,
        "stdin did not come back intact ({} bytes back)",
        out.stdout.len()
    );

    // stdin ends: a reading shell sees EOF and runs what came before it.
    let out = bottle_with_input(
        &agent,
        &["run", "--rm", "--image", &img, "--", "sh"],
        b"echo from-stdin; exit 9\n".to_vec(),
    );
    assert_eq!(out.status.code(), Some(9), "{out:?}");
    assert_eq!(text(&out.stdout), "from-stdin\n");
    let out = bottle_with_input(
        &agent,
        &[
            "run",
            "--rm",
            "--image",
            &img,
            "--",
            "sh",
            "-c",
            "cat >/dev/null; echo eof-seen",
        ],
        b"x".to_vec(),
    );
    assert_eq!(text(&out.stdout), "eof-seen\n", "{out:?}");

    // A command missing from the image: a clear message, 127, nothing left behind.
    let out = bottle_with_input(
        &agent,
        &[
            "run",
            "--rm",
            "--name",
            "nocmd",
            "--image",
            &img,
            "--",
            "no-such-command",
        ],
        vec![],
    );
    assert_eq!(out.status.code(), Some(127), "{out:?}");
    let err = text(&out.stderr);
    assert!(err.contains("\"no-such-command\" not found"), "{err}");
    assert!(!err.contains("runc"), "runc's raw error leaked: {err}");
    assert_nothing_left(&agent);
    // Without --rm as well: a run that never started leaves no bottle.
    let out = bottle_with_input(&agent, &["run", "--image", &img, "--", "/bin/nope"], vec![]);
    assert_eq!(out.status.code(), Some(127), "{out:?}");
    assert_nothing_left(&agent);
}

#[test]
fn privileged_tty_session_answers_resizes_and_restores_the_terminal() {
    if !privileged("privileged_tty_session_answers_resizes_and_restores_the_terminal") {
        return;
    }
    let agent = Agent::start(TTY_SLOT, "");
    let _workloads = Workloads::of(&agent);
    let img = image(&agent);

    let pty = Pty::open(30, 100);
    let cooked = lflag(pty.slave.as_raw_fd());
    assert_ne!(cooked & libc::ICANON, 0, "the test terminal starts cooked");
    let mut client = pty.spawn(&agent, &["run", "-it", "--rm", "--image", &img, "--", "sh"]);
    // A terminal in the container, of our size.
    pty.ask("tty; stty size\n", "30 100", &agent);
    assert!(pty.seen().contains("/dev/pts/0"), "{}", pty.seen());
    // While the session runs our terminal is raw.
    wait_for("raw mode", Duration::from_secs(30), || {
        lflag(pty.slave.as_raw_fd()) & libc::ICANON == 0
    });
    // A resize follows.
    set_size(pty.master.as_raw_fd(), 41, 123);
    pty.ask("stty size\n", "41 123", &agent);
    pty.ask("echo $((6*7))\n", "42", &agent);
    pty.type_in("exit 3\n");
    assert_eq!(wait_child(&mut client, &agent), 3);
    assert_eq!(
        lflag(pty.slave.as_raw_fd()),
        cooked,
        "terminal not restored"
    );

    // Killed by a signal, the client restores the terminal too; its workload is stopped.
    let pty = Pty::open(24, 80);
    let mut client = pty.spawn(
        &agent,
        &[
            "run", "-it", "--rm", "--name", "sig", "--image", &img, "--", "sh",
        ],
    );
    pty.ask("echo $((7*6))x\n", "42x", &agent);
    // SAFETY: kill on our own child.
    assert_eq!(unsafe { libc::kill(client.id() as i32, libc::SIGTERM) }, 0);
    assert_eq!(wait_child(&mut client, &agent), 143);
    assert_eq!(
        lflag(pty.slave.as_raw_fd()),
        cooked,
        "terminal not restored"
    );
    wait_for(
        "the foreground run to be stopped and removed",
        Duration::from_secs(60),
        || agent.ok(&["ls", "--json"]).trim() == "[]",
    );
    assert_nothing_left(&agent);

    // -t without a terminal is refused before anything starts.
    let out = bottle_with_input(
        &agent,
        &["run", "-t", "--rm", "--image", &img, "--", "true"],
        vec![],
    );
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(text(&out.stderr).contains("-t needs a terminal"), "{out:?}");
}

#[test]
fn privileged_exec_runs_inside_the_workload() {
    if !privileged("privileged_exec_runs_inside_the_workload") {
        return;
    }
    let agent = Agent::start(EXEC_SLOT, "");
    let _workloads = Workloads::of(&agent);
    let img = image(&agent);
    let out = agent.bottle(&[
        "run", "--detach", "--name", "ex", "--image", &img, "--", "sleep", "1000",
    ]);
    assert!(out.status.success(), "{out:?}\n{}", agent.log());

    let exec = |args: &[&str]| {
        let mut full = vec!["exec", "ex", "--"];
        full.extend_from_slice(args);
        bottle_with_input(&agent, &full, vec![])
    };
    // The workload's hostname, pid namespace (pid 1 is the workload, nothing of the host),
    // user, cgroup (the container's own root in its cgroup namespace, in every hierarchy),
    // no capabilities, no_new_privs, the seccomp filter.
    let out = exec(&["sh", "-c", "hostname; id -u; ps -o pid,args; cat /proc/self/cgroup; grep -E '^(CapBnd|CapEff|CapPrm|NoNewPrivs|Seccomp):' /proc/self/status; exit 5"]);
    assert_eq!(out.status.code(), Some(5), "{out:?}\n{}", agent.log());
    let s = text(&out.stdout);
    let lines: Vec<&str> = s.lines().collect();
    assert_eq!(lines[0], "ex", "{s}");
    assert_eq!(lines[1], "1000", "{s}");
    let procs: Vec<&str> = lines
        .iter()
        .filter(|l| {
            l.trim_start()
                .split_once(' ')
                .is_some_and(|(p, _)| p.parse::<u32>().is_ok())
        })
        .copied()
        .collect();
    assert!(procs[0].trim_start().starts_with("1 sleep 1000"), "{s}");
    assert!(
        procs.len() <= 4,
        "more than the workload and this exec: {s}"
    );
    let cgroups: Vec<&str> = lines
        .iter()
        .filter(|l| {
            let f: Vec<&str> = l.split(':').collect();
            f.len() == 3 && f[0].parse::<u32>().is_ok()
        })
        .copied()
        .collect();
    assert!(!cgroups.is_empty(), "{s}");
    assert!(
        cgroups.iter().all(|l| l.ends_with(":/")),
        "not in the container's cgroups: {s}"
    );
    for want in [
        "CapBnd:\t0000000000000000",
        "CapEff:\t0000000000000000",
        "CapPrm:\t0000000000000000",
        "NoNewPrivs:\t1",
        "Seccomp:\t2",
    ] {
        assert!(s.contains(want), "{want} missing: {s}");
    }
    // The workload's rlimits and OOM preference.
    let out = exec(&[
        "sh",
        "-c",
        "[ \"$(cat /proc/1/limits)\" = \"$(cat /proc/self/limits)\" ] && echo same-limits; \
         [ \"$(cat /proc/1/oom_score_adj)\" = \"$(cat /proc/self/oom_score_adj)\" ] && echo same-oom",
    ]);
    assert_eq!(text(&out.stdout), "same-limits\nsame-oom\n", "{out:?}");
    // stdin.
    let out = bottle_with_input(&agent, &["exec", "ex", "--", "cat"], b"piped\n".to_vec());
    assert_eq!(text(&out.stdout), "piped\n", "{out:?}");
    // A missing command: 127 and a clear message.
    let out = exec(&["no-such-tool"]);
    assert_eq!(out.status.code(), Some(127), "{out:?}");
    assert!(
        text(&out.stderr).contains("\"no-such-tool\" not found"),
        "{out:?}"
    );

    // -it exec.
    let pty = Pty::open(25, 90);
    let mut client = pty.spawn(&agent, &["exec", "-it", "ex", "--", "sh"]);
    pty.ask("stty size\n", "25 90", &agent);
    pty.ask("echo $((6*7))\n", "42", &agent);
    pty.type_in("exit 4\n");
    assert_eq!(wait_child(&mut client, &agent), 4);

    // An exec'd process dies with the workload.
    let mut lingering = bottle_cmd(&agent, &["exec", "ex", "--", "sleep", "4321"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for("the exec'd sleep", Duration::from_secs(30), || {
        !pids_with("sleep 4321").is_empty()
    });
    // Seen from the host: an unprivileged uid of the container's range, in its cgroup.
    let pid = pids_with("sleep 4321").remove(0);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    assert!(status.contains("\nUid:\t101000\t"), "{status}");
    let id = serde_json::from_str::<serde_json::Value>(&agent.ok(&["inspect", "ex", "--json"]))
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    assert!(
        cgroup
            .lines()
            .all(|l| l.ends_with(&format!("/bottle/{id}"))),
        "{cgroup}"
    );
    agent.ok(&["rm", "-f", "ex"]);
    wait_for("the exec'd sleep to die", Duration::from_secs(30), || {
        pids_with("sleep 4321").is_empty()
    });
    wait_child(&mut lingering, &agent);
    // Exec into a bottle without a running workload says so.
    agent.ok(&["create", "--name", "idle"]);
    let out = bottle_with_input(&agent, &["exec", "idle", "--", "true"], vec![]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(text(&out.stderr).contains("no running workload"), "{out:?}");
    agent.ok(&["rm", "-f", "idle"]);
    assert_nothing_left(&agent);
}

#[test]
fn privileged_agent_restart_keeps_a_detached_workload_running() {
    if !privileged("privileged_agent_restart_keeps_a_detached_workload_running") {
        return;
    }
    let mut agent = Agent::start(RESTART_SLOT, "");
    let _workloads = Workloads::of(&agent);
    let img = image(&agent);
    // The workload ends when told to (a file in its /tmp), with a code of our choosing.
    let out = agent.bottle(&[
        "run",
        "--detach",
        "--name",
        "keep",
        "--image",
        &img,
        "--",
        "sh",
        "-c",
        "echo before; while [ ! -e /tmp/go ]; do sleep 0.2; done; echo after; exit 42",
    ]);
    assert!(out.status.success(), "{out:?}\n{}", agent.log());
    let out = agent.bottle(&[
        "run", "--detach", "--name", "keep2", "--image", &img, "--", "sleep", "8888",
    ]);
    assert!(out.status.success(), "{out:?}\n{}", agent.log());
    // A detached --rm run that ends after the restart: still removed.
    let out = agent.bottle(&[
        "run",
        "--detach",
        "--rm",
        "--name",
        "gone",
        "--image",
        &img,
        "--",
        "sh",
        "-c",
        "while [ ! -e /tmp/go ]; do sleep 0.2; done",
    ]);
    assert!(out.status.success(), "{out:?}\n{}", agent.log());
    // A foreground run, whose client will outlive nothing: it must be stopped.
    let mut fg = bottle_cmd(
        &agent,
        &[
            "run", "--name", "fg", "--image", &img, "--", "sleep", "7777",
        ],
    )
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(Stdio::null())
    .spawn()
    .unwrap();
    wait_for("the foreground workload", Duration::from_secs(60), || {
        !pids_with("sleep 7777").is_empty()
    });
    wait_for(
        "the detached workload's first line",
        Duration::from_secs(30),
        || text(&agent.bottle(&["logs", "keep"]).stdout).contains("before"),
    );

    // An exec session open when the agent dies: its process does not outlive the agent.
    let mut session = bottle_cmd(&agent, &["exec", "keep", "--", "sleep", "5555"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for("the exec'd sleep", Duration::from_secs(30), || {
        !pids_with("sleep 5555").is_empty()
    });

    agent.kill9();
    // A removal the dead agent had not finished deleting: the next one deletes it.
    let leftover = run_dir(&agent).join("trash/1-0-home/deep/dir");
    std::fs::create_dir_all(&leftover).unwrap();
    std::fs::write(leftover.join("file"), b"left").unwrap();
    wait_child(&mut fg, &agent);
    wait_child(&mut session, &agent);
    wait_for(
        "the exec'd process to die with the agent",
        Duration::from_secs(30),
        || pids_with("sleep 5555").is_empty(),
    );
    agent.spawn();

    // Still running, and exec works in it.
    assert_eq!(ls_state(&agent, "keep"), "running", "{}", agent.log());
    let out = bottle_with_input(&agent, &["exec", "keep", "--", "hostname"], vec![]);
    assert_eq!(text(&out.stdout), "keep\n", "{out:?}\n{}", agent.log());
    let out = bottle_with_input(
        &agent,
        &["exec", "gone", "--", "sh", "-c", "echo > /tmp/go"],
        vec![],
    );
    assert!(out.status.success(), "{out:?}");
    wait_for("the --rm bottle to go", Duration::from_secs(60), || {
        !agent.ok(&["ls"]).contains("gone")
    });
    // `stop` works on a re-adopted workload.
    assert_eq!(ls_state(&agent, "keep2"), "running");
    agent.ok(&["stop", "--time", "1", "keep2"]);
    let state = ls_state(&agent, "keep2");
    assert!(state == "exited(143)" || state == "exited(137)", "{state}");
    assert!(pids_with("sleep 8888").is_empty());
    agent.ok(&["rm", "-f", "keep2"]);
    // The foreground one is stopped and recorded as killed.
    wait_for(
        "the orphaned foreground run to be stopped",
        Duration::from_secs(60),
        || pids_with("sleep 7777").is_empty() && ls_state(&agent, "fg") == "exited(137)",
    );
    // The workload goes on writing its log; when it ends, its exit code is recorded.
    let out = bottle_with_input(
        &agent,
        &["exec", "keep", "--", "sh", "-c", "echo > /tmp/go"],
        vec![],
    );
    assert!(out.status.success(), "{out:?}");
    wait_for("exited(42)", Duration::from_secs(60), || {
        ls_state(&agent, "keep") == "exited(42)"
    });
    let out = bottle_with_input(&agent, &["logs", "-f", "keep"], vec![]);
    assert_eq!(text(&out.stdout), "before\nafter\n", "{out:?}");
    // No keeper, container or rootfs left once it has ended.
    assert!(pids_with(" keep ").iter().all(|p| {
        !text(&std::fs::read(format!("/proc/{p}/cmdline")).unwrap_or_default())
            .contains(&agent.dir.path().display().to_string())
    }));
    assert_eq!(entries(&run_dir(&agent).join("runc")), Vec::<String>::new());
    assert_eq!(
        entries(&run_dir(&agent).join("rootfs")),
        Vec::<String>::new()
    );
    agent.ok(&["rm", "-f", "keep"]);
    agent.ok(&["rm", "-f", "fg"]);
    assert_nothing_left(&agent);
}
