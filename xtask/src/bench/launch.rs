//! `cargo xtask bench launch`: `bottle run --rm IMG true` end to end (client process start to
//! exit: bottle create with netns, veth and tcx programs, services, overlay rootfs, CA
//! install, trust check, bundle, runc run, wait, cleanup, bottle removal) against two
//! prepared bundles run with `runc run`: the bottle's own (its `config.json` as the agent
//! wrote it for a detached bottle — user namespace, seccomp, limits, masked paths, that
//! bottle's netns and overlay — with `true` as the command and a cgroup of its own), and runc's
//! default spec over the same image as a plain directory (no user namespace, no seccomp) —
//! and `podman run --rm --rootfs DIR --network none true` (Debian's podman, driving the same
//! runc), 30 runs each, interleaved in rotating order, each on a settled machine (podman's
//! asynchronous clean-up finished). Every command is timed from spawn to exit as the kernel
//! reports it (a pidfd), never to a polling tick. Runtime state of all three (the agent's
//! run directory, runc's root, podman's run root) is on one tmpfs, as under a usual host's
//! `/run`. Also the agent's RSS per running (detached) bottle.
//!
//! The image is the offline test image (`cargo xtask images`); podman comes from Debian and
//! is installed by the unprivileged part ([`prepare`]).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::process::{self, Tmpfs, WorkDir};
use super::{percentile, rss_kib};
use crate::agent::PrivateAgent;
use crate::sh;

const RUNS: usize = 30;
/// Detached bottles for the RSS measurement.
const RSS_BOTTLES: usize = 10;
const POOL: &str = "10.213.160.0/20";
const RUN_TIMEOUT: Duration = Duration::from_secs(60);
const RUNC: &str = "/usr/sbin/runc";
const PODMAN: &str = "/usr/bin/podman";

/// As the calling user: the test image, and podman from Debian when missing.
pub fn prepare() -> Result<()> {
    let image = sh::target_dir()?.join("images/bottle-test/index.json");
    if !image.exists() {
        crate::images::run(false)?;
    }
    if !Path::new(PODMAN).exists() {
        sh::apt_install(&["podman"])?;
    }
    Ok(())
}

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1000.0
}

fn timed(cmd: &mut Command) -> Result<f64> {
    let shown = format!("{cmd:?}");
    let t = Instant::now();
    let out = process::output(cmd, RUN_TIMEOUT)?;
    let elapsed = ms(t);
    if !out.status.success() {
        bail!(
            "{shown} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(elapsed)
}

/// The image's layers merged into one plain directory (the test image has no whiteouts).
fn flat_rootfs(agent: &PrivateAgent, dest: &Path) -> Result<()> {
    let store = bottle_image::ImageStore::open(&agent.dir.join("state/images"))
        .context("opening the bench agent's image store")?;
    let record = store
        .resolve("bottle-test:latest")
        .context("the test image is not in the bench agent's cache")?;
    std::fs::create_dir_all(dest)?;
    // Bottom layer first, so upper layers win.
    for lower in record.lower_dirs().iter().rev() {
        process::run(
            Command::new("cp")
                .arg("-a")
                .arg(format!("{}/.", lower.display()))
                .arg(dest),
            Duration::from_secs(120),
        )?;
    }
    Ok(())
}

/// `runc spec`, then: run `true`, no terminal, read-only root at `rootfs`.
fn runc_bundle(bundle: &Path, rootfs: &Path) -> Result<()> {
    std::fs::create_dir_all(bundle)?;
    process::run(
        Command::new(RUNC).arg("spec").arg("--bundle").arg(bundle),
        Duration::from_secs(20),
    )?;
    let path = bundle.join("config.json");
    let mut spec: serde_json::Value = serde_json::from_slice(&std::fs::read(&path)?)?;
    spec["process"]["args"] = serde_json::json!(["true"]);
    spec["process"]["terminal"] = serde_json::json!(false);
    spec["root"]["path"] = serde_json::json!(rootfs.display().to_string());
    spec["root"]["readonly"] = serde_json::json!(true);
    std::fs::write(&path, serde_json::to_vec_pretty(&spec)?)?;
    Ok(())
}

/// Waits (at most 5 s) until no process's command line mentions `marker`: podman's
/// asynchronous clean-up after `podman run --rm` has returned.
fn settle(marker: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline && process_mentions(marker) {
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn process_mentions(marker: &str) -> bool {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return false;
    };
    entries.filter_map(Result::ok).any(|e| {
        e.file_name()
            .to_str()
            .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()))
            && std::fs::read(e.path().join("cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(marker))
    })
}

/// A copy of the detached bottle `name`'s bundle in `dest`: its `config.json` with `true` as
/// the command and a cgroup of its own (the bottle's workload keeps its cgroup).
fn own_bundle_copy(agent: &PrivateAgent, name: &str, dest: &Path) -> Result<()> {
    let (status, body) = agent.api("GET", &format!("/v1/bottles/{name}"), "")?;
    if status != 200 {
        bail!("bottle {name}: HTTP {status}: {body}");
    }
    let info: serde_json::Value = serde_json::from_str(&body)?;
    let id = info["id"]
        .as_str()
        .context("the agent's bottle info has no id")?;
    let config = agent.run_dir.join("bundles").join(id).join("config.json");
    let mut spec: serde_json::Value = serde_json::from_slice(
        &std::fs::read(&config).with_context(|| format!("reading {}", config.display()))?,
    )?;
    spec["process"]["args"] = serde_json::json!(["true"]);
    spec["process"]["terminal"] = serde_json::json!(false);
    spec["linux"]["cgroupsPath"] =
        serde_json::json!(format!("/bottle-bench-{}", std::process::id()));
    std::fs::create_dir_all(dest)?;
    std::fs::write(dest.join("config.json"), serde_json::to_vec_pretty(&spec)?)?;
    Ok(())
}

/// Unmounts a path when dropped (if it is a mount point at all).
struct Unmount(PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = process::output(Command::new("umount").arg(&self.0), Duration::from_secs(20));
    }
}

struct Series {
    name: &'static str,
    detail: &'static str,
    ms: Vec<f64>,
}

impl Series {
    fn p(&self, p: f64) -> f64 {
        let mut v = self.ms.clone();
        v.sort_by(f64::total_cmp);
        percentile(&v, p)
    }
}

pub fn run() -> Result<()> {
    let _interrupts = process::Interrupts::catch();
    let image = sh::target_dir()?.join("images/bottle-test");
    let image = image.display().to_string();
    let work = WorkDir::new("bottle-bench-launch")?;
    // Runtime state on a tmpfs, as under a usual host's /run (/run/bottle, /run/runc,
    // /run/containers): the agent's run directory (rootfs uppers, bundles, runc's state), the
    // runc baselines' state and podman's run root alike.
    let run = Tmpfs::mount(work.path().join("run"))?;
    let agent_run = run.path().join("bottle");
    let agent = PrivateAgent::start_with_run_dir("lnch", POOL, "", Some(&agent_run))?;

    // Warm-up: imports the image into the agent's cache.
    agent.client_env(&["run", "--rm", "--image", &image, "--", "true"], &[])?;
    let rootfs = work.path().join("rootfs");
    flat_rootfs(&agent, &rootfs)?;
    let bundle = work.path().join("bundle");
    runc_bundle(&bundle, &rootfs)?;
    let runc_root = run.path().join("runc");
    // The bottle's own bundle: a detached bottle's, kept running (its netns and overlay are
    // what the bundle names) while its copy runs `true` beside it.
    agent.client_env(
        &[
            "run",
            "--detach",
            "--name",
            "eqv",
            "--image",
            "bottle-test:latest",
            "--",
            "sleep",
            "100000",
        ],
        &[],
    )?;
    let own_bundle = work.path().join("own-bundle");
    own_bundle_copy(&agent, "eqv", &own_bundle)?;
    let podman_dir = work.path().join("podman");
    // Declared after `work`, so dropped before it: podman leaves its storage bind-mounted.
    let _podman_mount = Unmount(podman_dir.join("storage/overlay"));

    let bottle_cmd = || {
        let mut c = Command::new(PathBuf::from(sh::bin_dir(true)?).join("bottle"));
        c.args(["run", "--rm", "--image", "bottle-test:latest", "--", "true"])
            .env("BOTTLE_HOST", agent.socket());
        Ok::<_, anyhow::Error>(c)
    };
    let runc_cmd = |bundle: &Path, i: usize| {
        let mut c = Command::new(RUNC);
        c.arg("--root")
            .arg(&runc_root)
            .args(["run", "--bundle"])
            .arg(bundle)
            .arg(format!("bench-{}-{i}", std::process::id()));
        c
    };
    let podman_cmd = || {
        let mut c = Command::new(PODMAN);
        c.args(["--runtime", RUNC, "--cgroup-manager", "cgroupfs"])
            .args(["--events-backend", "none", "--root"])
            .arg(podman_dir.join("storage"))
            .arg("--runroot")
            .arg(run.path().join("podman"))
            .args(["run", "--rm", "--network", "none"])
            // podman's default limits are above what conmon may set on some hosts (EPERM);
            // these match the bottle's workload (nofile soft 1024).
            .args([
                "--ulimit",
                "nofile=1024:1024",
                "--ulimit",
                "nproc=1024:1024",
            ])
            .arg("--rootfs")
            .arg(&rootfs)
            .arg("true");
        c
    };
    // Warm-up of the baselines (podman initialises its storage on first use).
    timed(&mut runc_cmd(&bundle, RUNS))?;
    timed(&mut runc_cmd(&own_bundle, RUNS + 1))?;
    let podman_ok = match timed(&mut podman_cmd()) {
        Ok(_) => None,
        Err(e) => Some(format!("{e:#}")),
    };

    let mut bottle = Series {
        name: "`bottle run --rm bottle-test true`",
        detail: "client start to exit",
        ms: Vec::new(),
    };
    let mut runc = Series {
        name: "`runc run` of a prepared bundle",
        detail: "same image as a directory, runc's default spec",
        ms: Vec::new(),
    };
    let mut runc_own = Series {
        name: "`runc run` of the bottle's own bundle",
        detail: "user namespace, seccomp, limits, a bottle's netns and overlay",
        ms: Vec::new(),
    };
    let mut podman = Series {
        name: "`podman run --rm --rootfs DIR --network none true`",
        detail: "Debian podman 4.3, runtime runc, cgroupfs, nofile/nproc 1024",
        ms: Vec::new(),
    };
    let mut create = Vec::new();
    let mut remove = Vec::new();
    // Each command is measured on a settled machine: podman leaves conmon and a `podman
    // container cleanup` running after it returns, and the agent deletes a removed bottle's
    // directories, waits for its veth and makes the next spare after `bottle run` returns;
    // either would otherwise eat into whatever is measured next. The order rotates, so no
    // series always follows the same one.
    let podman_marker = podman_dir.display().to_string();
    for i in 0..RUNS {
        process::check_interrupted()?;
        eprintln!("xtask: bench launch: run {}/{RUNS}", i + 1);
        for k in 0..4 {
            match (i + k) % 4 {
                0 => bottle.ms.push(timed(&mut bottle_cmd()?)?),
                1 => runc.ms.push(timed(&mut runc_cmd(&bundle, i))?),
                2 => runc_own
                    .ms
                    .push(timed(&mut runc_cmd(&own_bundle, RUNS + 2 + i))?),
                _ => {
                    if podman_ok.is_none() {
                        podman.ms.push(timed(&mut podman_cmd())?);
                    }
                }
            }
            settle(&podman_marker);
            // The bench agent's own asynchronous clean-up after the bottle run (and its
            // next spare), likewise; "eqv" keeps running throughout.
            agent.settle(1);
        }
        // The network part alone (create + remove through the API), for the breakdown.
        let name = format!("net-{i}");
        let t = Instant::now();
        agent.create(&name)?;
        create.push(ms(t));
        let t = Instant::now();
        agent.remove(&name)?;
        remove.push(ms(t));
        settle(&podman_marker);
        agent.settle(1);
    }
    create.sort_by(f64::total_cmp);
    remove.sort_by(f64::total_cmp);

    // Agent memory per running bottle.
    let rss_before = rss_kib(agent.pid())?;
    for i in 0..RSS_BOTTLES {
        agent.client_env(
            &[
                "run",
                "--detach",
                "--name",
                &format!("rss-{i}"),
                "--image",
                "bottle-test:latest",
                "--",
                "sleep",
                "1000",
            ],
            &[],
        )?;
    }
    let rss_after = rss_kib(agent.pid())?;
    agent.remove("eqv")?;
    for i in 0..RSS_BOTTLES {
        agent.remove(&format!("rss-{i}"))?;
    }
    drop(agent);

    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!("## launch (`cargo xtask bench launch`)\n");
    println!(
        "{RUNS} runs each, interleaved in rotating order, podman's clean-up awaited; load average at the end: {}",
        load.trim()
    );
    println!();
    println!("| what | p50 | p95 | p50 / runc, default spec | p50 / runc, bottle's bundle |");
    println!("|---|---|---|---|---|");
    let base = runc.p(50.0);
    let own = runc_own.p(50.0);
    for s in [&bottle, &runc, &runc_own, &podman] {
        if s.ms.is_empty() {
            println!(
                "| {} ({}) | not measured: {} | | | |",
                s.name,
                s.detail,
                podman_ok.as_deref().unwrap_or("")
            );
            continue;
        }
        println!(
            "| {} ({}) | {:.1} ms | {:.1} ms | **{:.2}×** | **{:.2}×** |",
            s.name,
            s.detail,
            s.p(50.0),
            s.p(95.0),
            s.p(50.0) / base,
            s.p(50.0) / own
        );
    }
    println!(
        "| of which bottle create (netns, veth, programs, services), API | {:.1} ms | {:.1} ms | | |",
        percentile(&create, 50.0),
        percentile(&create, 95.0)
    );
    println!(
        "| of which bottle remove, API | {:.1} ms | {:.1} ms | | |",
        percentile(&remove, 50.0),
        percentile(&remove, 95.0)
    );
    #[expect(clippy::cast_precision_loss, reason = "display only")]
    let per_bottle = rss_after.saturating_sub(rss_before) as f64 / RSS_BOTTLES as f64;
    println!(
        "| agent RSS per running bottle ({RSS_BOTTLES} detached `sleep`) | {per_bottle:.0} KiB | | ({} → {} KiB) | |",
        rss_before, rss_after
    );
    Ok(())
}
