//! End-to-end tests of what a `bottle run` workload gets besides its image: the uploaded
//! workspace (`--cwd`), host mounts (`--mount`), freezing its processes, its resource use in
//! `ls`, the proxy variables, and limits refused before anything is made. Slots 81-84.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::Path;
use std::process::{Command, Output};
use std::sync::mpsc;
use std::time::Duration;

use bottle_api::BottleInfo;
use bottle_tests::*;

const CWD_SLOT: u8 = 81;
const MOUNT_SLOT: u8 = 82;
const FREEZE_SLOT: u8 = 83;
const ENV_SLOT: u8 = 84;
const TRUST_SLOT: u8 = 85;
const RUNTIME_SLOT: u8 = 86;

/// Runs `bottle ARGS` in `cwd` as `uid` (root when `None`), bounded.
fn bottle_in(agent: &Agent, cwd: &Path, uid: Option<u32>, args: &[&str]) -> Output {
    let (tx, rx) = mpsc::channel();
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let (socket, cwd) = (agent.socket(), cwd.to_path_buf());
    let shown = args.clone();
    std::thread::spawn(move || {
        let mut cmd = Command::new(bin_dir().join("bottle"));
        cmd.args(&args)
            .current_dir(cwd)
            .env(bottle_api::HOST_ENV, socket);
        if let Some(uid) = uid {
            use std::os::unix::process::CommandExt;
            cmd.uid(uid).gid(65534);
        }
        let _ = tx.send(cmd.output().unwrap());
    });
    rx.recv_timeout(Duration::from_secs(120))
        .unwrap_or_else(|_| panic!("bottle {shown:?} did not finish:\n{}", agent.log()))
}

fn ok(out: &Output, agent: &Agent) -> String {
    assert!(
        out.status.success(),
        "{}\nstderr: {}\nagent log:\n{}",
        out.status,
        text(&out.stderr),
        agent.log()
    );
    text(&out.stdout)
}

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args(["-c", "user.name=t", "-c", "user.email=t@example.invalid"])
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "git {args:?}: {}", text(&out.stderr));
    text(&out.stdout)
}

fn bottles(agent: &Agent) -> Vec<BottleInfo> {
    serde_json::from_str(&agent.ok(&["ls", "--json"])).unwrap()
}

#[test]
fn privileged_cwd_uploads_the_repository_with_its_history() {
    if !privileged("privileged_cwd_uploads_the_repository_with_its_history") {
        return;
    }
    let agent = Agent::start(CWD_SLOT, "");
    let img = test_image();
    let repo = tempfile::tempdir().unwrap();
    let r = repo.path();
    git(r, &["init", "-q", "-b", "main"]);
    std::fs::create_dir_all(r.join("src/deep")).unwrap();
    std::fs::write(r.join("README"), "hello workspace\n").unwrap();
    std::fs::write(r.join("src/deep/data.bin"), (0..=255u8).collect::<Vec<_>>()).unwrap();
    std::fs::write(r.join("run.sh"), "#!/bin/sh\necho ran\n").unwrap();
    std::fs::set_permissions(r.join("run.sh"), std::fs::Permissions::from_mode(0o755)).unwrap();
    symlink("README", r.join("link")).unwrap();
    git(r, &["add", "-A"]);
    git(r, &["commit", "-q", "-m", "first"]);
    std::fs::write(r.join("README"), "hello again\n").unwrap();
    git(r, &["commit", "-q", "-am", "second"]);
    let want_log = git(r, &["log", "--format=%H %s"]);
    let want_tree = git(r, &["rev-parse", "HEAD^{tree}"]);

    // Inside: the same history, a worktree identical to HEAD (`git diff` compares every file's
    // content with the commit), the executable bit, the symlink, the workload owning it all,
    // and the command starting in it.
    let script = "pwd; git log --format='%H %s'; git rev-parse 'HEAD^{tree}'; \
                  git diff --stat HEAD; git status --porcelain; ./run.sh; readlink link; \
                  stat -c %u .git/HEAD; touch new && echo writable";
    let out = bottle_in(
        &agent,
        r,
        None,
        &[
            "run", "--rm", "--cwd", "--image", &img, "--", "sh", "-c", script,
        ],
    );
    let stdout = ok(&out, &agent);
    let expected =
        format!("/home/bottle/workspace\n{want_log}{want_tree}ran\nREADME\n1000\nwritable\n");
    assert_eq!(stdout, expected, "stderr: {}", text(&out.stderr));
    // The caller's directory is untouched, and --rm removed the bottle's workspace.
    assert!(!r.join("new").exists());
    let workspaces = agent.state_dir().join("workspaces");
    let left: Vec<_> = std::fs::read_dir(&workspaces)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n != "uploads")
        .collect();
    assert!(left.is_empty(), "workspaces left: {left:?}");
    assert_eq!(
        std::fs::read_dir(workspaces.join("uploads"))
            .unwrap()
            .count(),
        0
    );

    // An upload is its uploader's, once: a raw run naming someone else's or a used id fails
    // before any bottle is made.
    let body = r#"{"image":"bottle-test:latest","workspace":"0123456789abcdef"}"#;
    let req = format!(
        "POST /v1/run HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let (status, answer) = agent.raw(req.as_bytes());
    assert_eq!(status, 404, "{answer}");
    assert!(answer.contains("no workspace upload"), "{answer}");
    assert!(bottles(&agent).is_empty());

    // A workspace no bottle claims is an orphan: a restarted agent removes it.
    std::fs::create_dir_all(workspaces.join("0badc0de/sub")).unwrap();
    let mut agent = agent;
    agent.kill9();
    agent.spawn();
    assert!(!workspaces.join("0badc0de").exists(), "{}", agent.log());
}

#[test]
fn privileged_mounts_are_checked_pinned_and_honour_ro() {
    if !privileged("privileged_mounts_are_checked_pinned_and_honour_ro") {
        return;
    }
    let agent = Agent::start(MOUNT_SLOT, "");
    let img = test_image();
    let here = agent.dir.path();
    let host = tempfile::tempdir().unwrap();
    std::fs::set_permissions(host.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let rw = host.path().join("rw");
    let ro = host.path().join("ro");
    for d in [&rw, &ro] {
        std::fs::create_dir(d).unwrap();
        // World-writable: the files keep their host owner (nobody inside), so only the mount
        // flag can stop a write.
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o777)).unwrap();
    }
    std::fs::write(ro.join("given"), "from the host\n").unwrap();

    // rw writes land on the host; :ro refuses writes with EROFS.
    let out = bottle_in(
        &agent,
        here,
        None,
        &[
            "run",
            "--rm",
            "--image",
            &img,
            "--mount",
            &format!("{}:/data", rw.display()),
            "--mount",
            &format!("{}:/input:ro", ro.display()),
            "--",
            "sh",
            "-c",
            "echo out > /data/result && cat /input/given && (echo x > /input/f) 2>&1; true",
        ],
    );
    let stdout = ok(&out, &agent);
    assert!(stdout.starts_with("from the host\n"), "{stdout}");
    assert!(stdout.contains("Read-only file system"), "{stdout}");
    assert_eq!(std::fs::read_to_string(rw.join("result")).unwrap(), "out\n");
    assert!(!ro.join("f").exists());
    // The pins are gone with the bottle.
    let pins = agent.dir.path().join("run/mounts");
    assert_eq!(
        std::fs::read_dir(&pins).map(|d| d.count()).unwrap_or(0),
        0,
        "pinned mounts left"
    );

    // A symlink anywhere in the path is refused, even for root (who could mount /etc itself).
    let link = host.path().join("link");
    symlink("/etc", &link).unwrap();
    let out = bottle_in(
        &agent,
        here,
        None,
        &[
            "run",
            "--rm",
            "--image",
            &img,
            "--mount",
            &format!("{}:/data", link.display()),
            "--",
            "true",
        ],
    );
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("contains a symlink"), "{out:?}");
    assert!(bottles(&agent).is_empty(), "a refused run left a bottle");

    // A user may mount only what they own. The image is in the cache now (root imported it),
    // so the user can name it.
    let user = 4242;
    let theirs = host.path().join("theirs");
    std::fs::create_dir(&theirs).unwrap();
    std::os::unix::fs::chown(&theirs, Some(user), Some(65534)).unwrap();
    let out = bottle_in(
        &agent,
        here,
        Some(user),
        &[
            "run",
            "--rm",
            "--image",
            "bottle-test:latest",
            "--mount",
            &format!("{}:/data", ro.display()),
            "--",
            "true",
        ],
    );
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("do not own it") && err.contains("uid 4242"),
        "{err}"
    );
    assert!(bottles(&agent).is_empty(), "a refused run left a bottle");
    let out = bottle_in(
        &agent,
        here,
        Some(user),
        &[
            "run",
            "--rm",
            "--image",
            "bottle-test:latest",
            "--mount",
            &format!("{}:/data:ro", theirs.display()),
            "--",
            "ls",
            "-d",
            "/data",
        ],
    );
    assert_eq!(ok(&out, &agent), "/data\n");
}

#[test]
fn privileged_freeze_pauses_the_workload_and_ls_shows_its_use() {
    if !privileged("privileged_freeze_pauses_the_workload_and_ls_shows_its_use") {
        return;
    }
    let agent = Agent::start(FREEZE_SLOT, "");
    let img = test_image();
    let here = agent.dir.path();
    let out = bottle_in(
        &agent,
        here,
        None,
        &[
            "run", "--detach", "--name", "icy", "--image", &img, "--", "sleep", "1000",
        ],
    );
    assert_eq!(ok(&out, &agent), "icy\n");
    let b = &bottles(&agent)[0];
    let w = b.workload.as_ref().unwrap();
    assert_eq!(b.display_state(), "running");
    assert!(w.cpu_ns.is_some_and(|n| n > 0), "{w:?}");
    assert!(w.memory_bytes.is_some_and(|n| n > 0), "{w:?}");
    let table = agent.ok(&["ls"]);
    assert!(table.contains("CPU") && table.contains("MEM"), "{table}");

    let runc_status = || {
        let out = Command::new("runc")
            .arg("--root")
            .arg(agent.dir.path().join("run/runc"))
            .args(["state", &b.id])
            .output()
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v["status"].as_str().unwrap().to_owned()
    };
    assert_eq!(runc_status(), "running");
    agent.ok(&["freeze", "icy"]);
    assert_eq!(runc_status(), "paused");
    assert_eq!(bottles(&agent)[0].display_state(), "frozen");
    assert!(agent.ok(&["ls"]).contains("frozen"));
    agent.ok(&["unfreeze", "icy"]);
    assert_eq!(runc_status(), "running");
    assert_eq!(bottles(&agent)[0].display_state(), "running");

    // A frozen workload can be stopped (SIGKILL reaches a frozen process once thawed).
    agent.ok(&["freeze", "icy"]);
    agent.ok(&["stop", "-t", "1", "icy"]);
    let b = &bottles(&agent)[0];
    assert!(
        b.display_state().starts_with("exited(") || b.display_state() == "frozen",
        "{}",
        b.display_state()
    );
    agent.ok(&["unfreeze", "icy"]);
    assert!(bottles(&agent)[0].display_state().starts_with("exited("));

    // A frozen bottle can still be removed, workload and all.
    let out = bottle_in(
        &agent,
        agent.dir.path(),
        None,
        &[
            "run",
            "--detach",
            "--name",
            "icy2",
            "--image",
            "bottle-test:latest",
            "--",
            "sleep",
            "1000",
        ],
    );
    assert_eq!(ok(&out, &agent), "icy2\n");
    agent.ok(&["rm", "-f", "icy"]);
    agent.ok(&["freeze", "icy2"]);
    let icy2 = bottles(&agent)[0].id.clone();
    agent.ok(&["rm", "-f", "icy2"]);
    assert!(bottles(&agent).is_empty(), "{icy2}");
    let runc_dir = agent.dir.path().join("run/runc");
    assert_eq!(
        std::fs::read_dir(&runc_dir).map(|d| d.count()).unwrap_or(0),
        0,
        "runc container left"
    );
}

#[test]
fn privileged_proxy_variables_and_limits_refused_early() {
    if !privileged("privileged_proxy_variables_and_limits_refused_early") {
        return;
    }
    let agent = Agent::start(ENV_SLOT, "");
    let img = test_image();
    let here = agent.dir.path();
    let out = bottle_in(
        &agent,
        here,
        None,
        &[
            "run",
            "--rm",
            "--image",
            &img,
            "--",
            "sh",
            "-c",
            "echo $HTTPS_PROXY $https_proxy $HTTP_PROXY $http_proxy; echo $NO_PROXY; \
             ip=$(cat /etc/resolv.conf | sed -n 's/nameserver //p'); echo $ip",
        ],
    );
    let stdout = ok(&out, &agent);
    let lines: Vec<&str> = stdout.lines().collect();
    let gateway = lines[2];
    let proxy = format!("http://{gateway}:3128");
    assert_eq!(lines[0], [proxy.as_str(); 4].join(" "), "{stdout}");
    assert!(lines[1].contains(gateway), "{stdout}");

    for bad in [
        vec!["--memory", "0"],
        vec!["--cpus=-1"],
        vec!["--cpus", "100000"],
        vec!["--pids", "0"],
        vec!["--pids", "99999999"],
        vec!["--memory", "2048t"],
    ] {
        let mut args = vec!["run", "--rm", "--image", img.as_str()];
        args.extend(bad.iter().copied());
        args.extend(["--", "true"]);
        let out = bottle_in(&agent, here, None, &args);
        assert!(!out.status.success(), "{bad:?} accepted");
        let err = text(&out.stderr);
        assert!(
            err.contains("memory") || err.contains("cpus") || err.contains("pids"),
            "{bad:?}: {err}"
        );
        assert!(bottles(&agent).is_empty(), "{bad:?} left a bottle");
    }
}

/// busybox-static and a `bottle` user, as a rootfs directory, with `bundle` as the image's
/// system trust bundle.
fn busybox_rootfs(root: &Path, bundle: &str) {
    let busybox = Path::new("/bin/busybox");
    assert!(
        busybox.is_file(),
        "/bin/busybox missing: apt-get install busybox-static"
    );
    for d in [
        "bin",
        "etc/ssl/certs",
        "home/bottle",
        "tmp",
        "proc",
        "sys",
        "dev",
    ] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::copy(busybox, root.join("bin/busybox")).unwrap();
    for applet in ["sh", "cat", "grep", "true"] {
        symlink("busybox", root.join("bin").join(applet)).unwrap();
    }
    std::fs::write(
        root.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nbottle:x:1000:1000::/home/bottle:/bin/sh\n",
    )
    .unwrap();
    std::fs::write(root.join("etc/group"), "root:x:0:\nbottle:x:1000:\n").unwrap();
    std::fs::write(root.join("etc/ssl/certs/ca-certificates.crt"), bundle).unwrap();
}

#[test]
fn privileged_trust_check_stops_a_launch_the_container_could_not_trust() {
    if !privileged("privileged_trust_check_stops_a_launch_the_container_could_not_trust") {
        return;
    }
    let agent = Agent::start(TRUST_SLOT, "");
    let here = agent.dir.path();
    // A bundle whose last certificate is cut off: the bottle's CA, appended after it, is
    // swallowed by the unterminated block, so no TLS client in the container could trust it.
    let broken = here.join("broken");
    busybox_rootfs(&broken, "-----BEGIN CERTIFICATE-----\nMIIBtruncated\n");
    let good = here.join("good");
    busybox_rootfs(&good, "");

    let out = bottle_in(
        &agent,
        here,
        None,
        &[
            "run",
            "--rm",
            "--image",
            &broken.display().to_string(),
            "--",
            "true",
        ],
    );
    assert!(!out.status.success(), "{out:?}");
    let err = text(&out.stderr);
    assert!(err.contains("trust check failed"), "{err}");
    assert!(bottles(&agent).is_empty(), "a failed launch left a bottle");
    let run = agent.dir.path().join("run");
    for sub in ["runc", "rootfs", "bundles"] {
        assert_eq!(
            std::fs::read_dir(run.join(sub))
                .map(|d| d.count())
                .unwrap_or(0),
            0,
            "{sub}/ left"
        );
    }

    // The same image with a sound bundle passes the check and runs.
    let out = bottle_in(
        &agent,
        here,
        None,
        &[
            "run",
            "--rm",
            "--image",
            &good.display().to_string(),
            "--",
            "grep",
            "-c",
            "BEGIN CERTIFICATE",
            "/etc/ssl/certs/ca-certificates.crt",
        ],
    );
    assert_eq!(ok(&out, &agent), "1\n");
}

#[test]
fn privileged_configured_runtime_is_used_and_a_missing_one_named() {
    if !privileged("privileged_configured_runtime_is_used_and_a_missing_one_named") {
        return;
    }
    let agent = Agent::start(RUNTIME_SLOT, "runtime = \"crun\"");
    let img = test_image();
    let out = bottle_in(
        &agent,
        agent.dir.path(),
        None,
        &["run", "--rm", "--image", &img, "--", "true"],
    );
    assert!(!out.status.success(), "{out:?}");
    let err = text(&out.stderr);
    assert!(err.contains("crun"), "{err}");
    if !Path::new("/usr/bin/crun").exists() && !Path::new("/usr/sbin/crun").exists() {
        assert!(err.contains("Debian package `crun`"), "{err}");
        assert!(
            agent.log().contains("container runtime crun not found"),
            "{}",
            agent.log()
        );
    }
    assert!(bottles(&agent).is_empty(), "a failed launch left a bottle");
    drop(agent);

    // Anything but runc or crun is a configuration error: the agent does not start.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("agent.toml");
    std::fs::write(&config, "runtime = \"docker\"\n").unwrap();
    let out = Command::new(bin_dir().join("bottle-agent"))
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("runtime"),
        "{}",
        text(&out.stderr)
    );
}
