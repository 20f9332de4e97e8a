//! End-to-end tests of `bottle run`: the real agent creates a bottle, runs a runc container
//! in its namespace, streams the output and cleans up. Slots 41 and 43.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use bottle_tests::*;

const SLOT: u8 = 41;
/// Detached runs, logs, stop.
const DETACH_SLOT: u8 = 43;

fn image(agent: &Agent) -> String {
    let dir = agent.dir.path().join("image");
    if !dir.exists() {
        busybox_rootfs(&dir, &["sh", "id", "cat", "sleep", "echo", "dd", "true"]);
    }
    dir.display().to_string()
}

fn run_dir(agent: &Agent) -> PathBuf {
    agent.dir.path().join("run")
}

/// Runs `bottle run` to completion (bounded).
fn bottle_run(agent: &Agent, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut full = vec!["run"];
    full.extend_from_slice(args);
    bottle_bounded(agent, &full, env)
}

/// Runs `bottle` to completion (bounded).
fn bottle_bounded(agent: &Agent, full: &[&str], env: &[(&str, &str)]) -> Output {
    let (tx, rx) = mpsc::channel();
    let args: Vec<String> = full.iter().map(|s| s.to_string()).collect();
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let socket = agent.socket();
    std::thread::spawn(move || {
        let mut cmd = Command::new(bin_dir().join("bottle"));
        cmd.args(&args).env(bottle_api::HOST_ENV, socket);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let _ = tx.send(cmd.output().unwrap());
    });
    rx.recv_timeout(Duration::from_secs(90))
        .unwrap_or_else(|_| panic!("bottle {full:?} did not finish:\n{}", agent.log()))
}

/// Mount points at or under `dir`.
fn mounts_under(dir: &Path) -> Vec<String> {
    let prefix = dir.display().to_string();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|m| m.starts_with(&prefix))
        .map(str::to_owned)
        .collect()
}

/// Entries of a directory (none when it does not exist).
fn entries(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Nothing of any bottle is left: no namespace, veth, mount, runc container, rootfs, bundle,
/// bottle.
fn assert_nothing_left(agent: &Agent) {
    let run = run_dir(agent);
    wait_links_gone(&agent.slot.veth_prefix);
    assert_eq!(
        netns_with_prefix(&agent.slot.netns_prefix),
        Vec::<String>::new()
    );
    assert_eq!(
        links_with_prefix(&agent.slot.veth_prefix),
        Vec::<String>::new()
    );
    assert_eq!(mounts_under(&run), Vec::<String>::new());
    for sub in ["runc", "rootfs", "bundles", "homes"] {
        assert_eq!(entries(&run.join(sub)), Vec::<String>::new(), "{sub}/");
    }
    assert_eq!(agent.ok(&["ls", "--json"]).trim(), "[]");
    // What was removed is also deleted, not just moved aside.
    wait_trash_empty(agent);
}

#[test]
fn privileged_run_streams_output_exit_codes_and_cleans_up() {
    if !privileged("privileged_run_streams_output_exit_codes_and_cleans_up") {
        return;
    }
    let agent = Agent::start(SLOT, "");
    let img = image(&agent);

    // The default user from the image, and exit 0.
    let out = bottle_run(&agent, &["--rm", "--image", &img, "--", "id"], &[]);
    assert!(out.status.success(), "{out:?}\nagent log:\n{}", agent.log());
    let stdout = text(&out.stdout);
    assert!(stdout.contains("uid=1000"), "{stdout}");
    assert_nothing_left(&agent);

    // The workload's exit status is the client's; stderr is streamed as stderr.
    let out = bottle_run(
        &agent,
        &[
            "--rm",
            "--image",
            &img,
            "--",
            "sh",
            "-c",
            "echo oops >&2; exit 7",
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(7), "{out:?}");
    assert_eq!(text(&out.stderr), "oops\n");
    assert_nothing_left(&agent);

    // -e: the value reaches the workload, never an argv. `-e FOO` takes it from the client's
    // environment, so it is not on the client's argv either.
    let secret = format!("bar-{}-s3cr3t", std::process::id());
    let mut child = Command::new(bin_dir().join("bottle"))
        .args([
            "run", "--rm", "--name", "envtest", "--image", &img, "-e", "FOO", "--",
        ])
        .args(["sh", "-c", "echo \"$FOO\"; exec sleep 3"])
        .env(bottle_api::HOST_ENV, agent.socket())
        .env("FOO", &secret)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let _ = tx.send(line.unwrap_or_default());
        }
    });
    let first = rx
        .recv_timeout(Duration::from_secs(60))
        .unwrap_or_else(|_| panic!("no output from the workload:\n{}", agent.log()));
    assert_eq!(first, secret);
    // The workload is running now (sleep): every process's argv, the container's included.
    let mut on_argv = Vec::new();
    for pid in entries(Path::new("/proc")) {
        if let Ok(cmdline) = std::fs::read(Path::new("/proc").join(&pid).join("cmdline")) {
            if text(&cmdline).contains(&secret) {
                on_argv.push(format!("{pid}: {}", text(&cmdline).replace('\0', " ")));
            }
        }
    }
    assert!(on_argv.is_empty(), "secret on an argv: {on_argv:?}");
    // Meanwhile the API answers: the manager is not held while the workload runs.
    let listed = agent.ok(&["ls", "--json"]);
    assert!(listed.contains("\"envtest\""), "{listed}");
    assert!(
        listed.contains("\"runc\""),
        "launcher not recorded: {listed}"
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        assert!(Instant::now() < deadline, "run with sleep 3 did not end");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status}");
    assert_nothing_left(&agent);
}

#[test]
fn privileged_rm_stops_a_running_workload_and_oom_is_reported() {
    if !privileged("privileged_rm_stops_a_running_workload_and_oom_is_reported") {
        return;
    }
    let agent = Agent::start(SLOT, "");
    let img = image(&agent);

    // Without --rm: the bottle outlives nothing here, because `bottle rm` removes it while
    // its workload runs: container first, then rootfs, then network.
    let mut child = Command::new(bin_dir().join("bottle"))
        .args(["run", "--name", "longrun", "--image", &img, "--"])
        .args(["sh", "-c", "echo up; exec sleep 60"])
        .env(bottle_api::HOST_ENV, agent.socket())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let _ = tx.send(line.unwrap_or_default());
        }
    });
    let first = rx
        .recv_timeout(Duration::from_secs(60))
        .unwrap_or_else(|_| panic!("workload did not start:\n{}", agent.log()));
    assert_eq!(first, "up");
    // Without -f a running workload is not removed, and the refusal says what to do.
    let refused = agent.bottle(&["rm", "longrun"]);
    assert_eq!(refused.status.code(), Some(1), "{refused:?}");
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("bottle rm -f longrun"),
        "{refused:?}"
    );
    agent.ok(&["rm", "-f", "longrun"]);
    let mut status = None;
    wait_for("the run to end after rm", Duration::from_secs(30), || {
        status = child.try_wait().unwrap();
        status.is_some()
    });
    assert_eq!(status.and_then(|s| s.code()), Some(137));
    assert_nothing_left(&agent);

    // A memory hog is killed by its limit; the client says so.
    let out = bottle_run(
        &agent,
        &[
            "--rm",
            "--memory",
            "32m",
            "--image",
            &img,
            "--",
            "dd",
            "if=/dev/zero",
            "of=/dev/null",
            "bs=256M",
            "count=1",
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(137), "{out:?}");
    assert!(text(&out.stderr).contains("out of memory"), "{out:?}");
    assert_nothing_left(&agent);

    // A bad request leaves nothing behind either.
    let out = bottle_run(
        &agent,
        &["--rm", "--image", "no-such-image", "--", "id"],
        &[],
    );
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("no-such-image"), "{out:?}");
    assert_nothing_left(&agent);
}

fn inspect(agent: &Agent, name: &str) -> serde_json::Value {
    serde_json::from_str(&agent.ok(&["inspect", name, "--json"])).unwrap()
}

/// The `ls` line of bottle `name`.
fn ls_line(agent: &Agent, name: &str) -> String {
    agent
        .ok(&["ls"])
        .lines()
        .find(|l| l.starts_with(&format!("{name} ")))
        .unwrap_or_default()
        .to_owned()
}

fn file_size(p: &Path) -> u64 {
    std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)
}

#[test]
fn privileged_detached_run_logs_stop_and_capped_log() {
    use std::os::unix::fs::PermissionsExt;
    if !privileged("privileged_detached_run_logs_stop_and_capped_log") {
        return;
    }
    let agent = Agent::start(DETACH_SLOT, "");
    let img = image(&agent);

    // --detach answers once the workload has started; the workload runs on.
    // A detached run that cannot start is refused like any other and leaves nothing.
    let out = bottle_bounded(
        &agent,
        &["run", "--detach", "--name", "bg", "--image", &img],
        &[],
    );
    assert!(!out.status.success(), "{out:?}");
    assert!(text(&out.stderr).contains("no command"), "{out:?}");
    assert_nothing_left(&agent);
    let out = bottle_bounded(
        &agent,
        &[
            "run",
            "--detach",
            "--name",
            "bg2",
            "--image",
            &img,
            "--",
            "sh",
            "-c",
            "echo hello; sleep 30",
        ],
        &[],
    );
    assert!(out.status.success(), "{out:?}\nagent log:\n{}", agent.log());
    assert_eq!(text(&out.stdout).trim(), "bg2");
    // It returned while the 30 s workload still runs (checked below via ls): detach did not wait.

    wait_for("hello in the workload log", Duration::from_secs(30), || {
        text(&bottle_bounded(&agent, &["logs", "bg2"], &[]).stdout).contains("hello")
    });
    let line = ls_line(&agent, "bg2");
    assert!(line.contains("running"), "{line}");
    assert!(line.contains(&img), "image not shown: {line}");
    // A run whose create is refused (the name is taken) leaves no rootfs behind: the one
    // mounted for it while the network was being made goes with it.
    let taken = bottle_bounded(
        &agent,
        &[
            "run", "--detach", "--name", "bg2", "--image", &img, "--", "true",
        ],
        &[],
    );
    assert!(!taken.status.success(), "{taken:?}");
    assert!(text(&taken.stderr).contains("already exists"), "{taken:?}");
    let bg2_id = inspect(&agent, "bg2")["id"].as_str().unwrap().to_owned();
    let run = run_dir(&agent);
    assert_eq!(entries(&run.join("rootfs")), vec![bg2_id.clone()]);
    assert_eq!(
        mounts_under(&run),
        vec![run
            .join("rootfs")
            .join(&bg2_id)
            .join("merged")
            .display()
            .to_string()]
    );
    let info = inspect(&agent, "bg2");
    assert_eq!(info["workload"]["status"], "running", "{info}");
    let id = info["id"].as_str().unwrap().to_owned();
    let log = agent.state_dir().join(&id).join("workload.log");
    let mode = std::fs::metadata(&log).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);

    // stop: SIGTERM, SIGKILL after 2 s; returns once it has exited, with the code recorded.
    let out = bottle_bounded(&agent, &["stop", "--time", "2", "bg2"], &[]);
    assert!(out.status.success(), "{out:?}\nagent log:\n{}", agent.log());
    let line = ls_line(&agent, "bg2");
    assert!(
        line.contains("exited(143)") || line.contains("exited(137)"),
        "{line}"
    );
    let code = inspect(&agent, "bg2")["workload"]["exit_code"].as_i64();
    assert!(matches!(code, Some(137 | 143)), "{code:?}");
    // The log outlives the workload; -f ends when the workload has.
    let out = bottle_bounded(&agent, &["logs", "-f", "bg2"], &[]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(text(&out.stdout), "hello\n");
    // Stopping again is harmless.
    agent.ok(&["stop", "bg2"]);
    agent.ok(&["rm", "-f", "bg2"]);
    assert!(!agent.state_dir().join(&id).exists());
    assert_nothing_left(&agent);

    // A foreground run writes the same log and records its exit code.
    let out = bottle_run(
        &agent,
        &[
            "--name",
            "fg",
            "--image",
            &img,
            "--",
            "sh",
            "-c",
            "echo out; echo err >&2; exit 3",
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    let logged = text(&bottle_bounded(&agent, &["logs", "fg"], &[]).stdout);
    assert!(
        logged.contains("out\n") && logged.contains("err\n"),
        "{logged}"
    );
    assert!(ls_line(&agent, "fg").contains("exited(3)"));
    agent.ok(&["rm", "-f", "fg"]);
    assert_nothing_left(&agent);

    // Much more output than the cap: at most the cap on disk, plus one rotated generation.
    let cap = 8u64 << 20;
    let out = bottle_bounded(
        &agent,
        &[
            "run",
            "-d",
            "--name",
            "big",
            "--image",
            &img,
            "--",
            "sh",
            "-c",
            "dd if=/dev/zero bs=1048576 count=40 2>/dev/null; echo done",
        ],
        &[],
    );
    assert!(out.status.success(), "{out:?}\nagent log:\n{}", agent.log());
    wait_for("the big workload to exit", Duration::from_secs(60), || {
        inspect(&agent, "big")["workload"]["exit_code"] == 0
    });
    let id = inspect(&agent, "big")["id"].as_str().unwrap().to_owned();
    let dir = agent.state_dir().join(&id);
    let (current, rotated) = (
        file_size(&dir.join("workload.log")),
        file_size(&dir.join("workload.log.1")),
    );
    assert!(current <= cap && rotated <= cap, "{current} {rotated}");
    assert!(rotated > 0, "never rotated");
    assert!(!dir.join("workload.log.2").exists());
    assert!(std::fs::read(dir.join("workload.log"))
        .unwrap()
        .ends_with(b"done\n"));
    agent.ok(&["rm", "-f", "big"]);
    assert!(!dir.exists());
    assert_nothing_left(&agent);
}
