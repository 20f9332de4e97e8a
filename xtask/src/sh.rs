//! Running commands: cargo, apt-get, sudo.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{bail, Context, Result};

/// Debian packages the build, tests, demo and benches need: (command or file to look for,
/// package).
const PACKAGES: &[(&str, &str)] = &[
    ("/usr/bin/clang-19", "clang-19"),
    ("/usr/include/bpf/bpf_helpers.h", "libbpf-dev"),
    (
        "/usr/include/x86_64-linux-gnu/asm/types.h",
        "linux-libc-dev",
    ),
    ("/usr/sbin/ip", "iproute2"),
    ("/usr/sbin/bpftool", "bpftool"),
    ("/usr/bin/iperf3", "iperf3"),
    ("/usr/sbin/sysctl", "procps"),
    ("/usr/bin/curl", "curl"),
    // The test image carries the host's git (tests/tests/workspace.rs compares histories).
    ("/usr/bin/git", "git"),
    // The launcher's tests run real containers.
    ("/usr/sbin/runc", "runc"),
    ("/bin/busybox", "busybox-static"),
    // The git-gate: libgit2's SSH transport links OpenSSL; its tests run a real sshd and
    // plain git.
    ("/usr/include/openssl/ssl.h", "libssl-dev"),
    ("/usr/bin/pkg-config", "pkg-config"),
    ("/usr/sbin/sshd", "openssh-server"),
    ("/usr/bin/ssh-keygen", "openssh-client"),
    ("/usr/bin/git", "git"),
    // ...and its HTTPS test serves the upstream through git's CGI (tests/src/bin/bottle-test-git-https.rs).
    ("/usr/lib/git-core/git-http-backend", "git"),
    // `bottle images build` / `run AGENT` with a Dockerfile: a real builder (FROM scratch,
    // so no registry is involved).
    ("/usr/bin/podman", "podman"),
];

/// Debian packages only `cargo xtask bench proxy` needs (never installed by `deps` or `test`).
const BENCH_PACKAGES: &[(&str, &str)] = &[("/usr/bin/wrk", "wrk"), ("/usr/bin/curl", "curl")];

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn status(cmd: &mut Command) -> Result<()> {
    let shown = format!("{cmd:?}");
    let status = cmd
        .status()
        .with_context(|| format!("cannot run {shown}"))?;
    if !status.success() {
        bail!("{shown} failed ({status})");
    }
    Ok(())
}

/// Installs whatever is missing from [`PACKAGES`].
pub fn deps() -> Result<()> {
    install_missing(PACKAGES)
}

/// Installs whatever is missing from [`BENCH_PACKAGES`].
pub fn bench_deps() -> Result<()> {
    install_missing(BENCH_PACKAGES)
}

fn install_missing(packages: &[(&str, &str)]) -> Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .filter(|(path, _)| !std::path::Path::new(path).exists())
        .map(|(_, pkg)| *pkg)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    apt_install(&missing)
}

/// `apt-get update` then `apt-get install` of `packages` (with sudo when not root).
pub fn apt_install(packages: &[&str]) -> Result<()> {
    eprintln!("xtask: installing {}", packages.join(" "));
    let sudo: &[&str] = if is_root() { &[] } else { &["sudo"] };
    let apt = |args: &[&str]| {
        let mut full: Vec<&str> = sudo.to_vec();
        full.extend_from_slice(&["env", "DEBIAN_FRONTEND=noninteractive", "apt-get"]);
        full.extend_from_slice(args);
        let mut cmd = Command::new(full[0]);
        cmd.args(&full[1..]);
        status(&mut cmd)
    };
    apt(&["update", "-q"])?;
    let mut install = vec!["install", "-y", "-q", "--no-install-recommends"];
    install.extend_from_slice(packages);
    apt(&install)
}

pub fn cargo(args: &[&str]) -> Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    status(Command::new(cargo).args(args))
}

/// Test totals gathered from libtest's `test result:` lines.
#[derive(Debug, Default, Clone, Copy)]
pub struct Tally {
    pub passed: u64,
    pub failed: u64,
    pub ignored: u64,
}

impl Tally {
    fn add_line(&mut self, line: &str) {
        let Some(rest) = line.trim().strip_prefix("test result: ") else {
            return;
        };
        for part in rest.split(';') {
            let mut words = part.split_whitespace().rev();
            let (Some(kind), Some(n)) = (words.next(), words.next()) else {
                continue;
            };
            let Ok(n) = n.parse::<u64>() else { continue };
            match kind {
                "passed" => self.passed += n,
                "failed" => self.failed += n,
                "ignored" => self.ignored += n,
                _ => {}
            }
        }
    }
}

/// Runs a test command, echoing its output and counting its results.
pub fn run_tests(cmd: &mut Command, tally: &mut Tally) -> Result<()> {
    use std::io::{BufRead, BufReader};
    let shown = format!("{cmd:?}");
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot run {shown}"))?;
    if let Some(out) = child.stdout.take() {
        for line in BufReader::new(out).lines().map_while(|l| l.ok()) {
            println!("{line}");
            tally.add_line(&line);
        }
    }
    let status = child.wait()?;
    if !status.success() {
        bail!("{shown} failed ({status})");
    }
    Ok(())
}

pub fn build_bins(release: bool) -> Result<()> {
    let mut args = vec!["build", "--workspace", "--bins"];
    if release {
        args.push("--release");
    }
    cargo(&args)
}

/// The workspace's target directory (`CARGO_TARGET_DIR` or `<workspace>/target`).
pub fn target_dir() -> Result<PathBuf> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("xtask has no parent directory")?
        .to_path_buf();
    Ok(std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target")))
}

/// target/<profile> of this workspace.
pub fn bin_dir(release: bool) -> Result<String> {
    let dir = target_dir()?.join(if release { "release" } else { "debug" });
    Ok(dir.to_string_lossy().into_owned())
}

/// Builds a package's test binaries and returns their paths.
pub fn test_executables(package: &str) -> Result<Vec<String>> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args(["test", "--no-run", "--message-format=json", "-p", package])
        .output()
        .context("cannot run cargo test --no-run")?;
    if !out.status.success() {
        eprintln!("{}", String::from_utf8_lossy(&out.stderr));
        bail!("building the {package} tests failed");
    }
    let mut exes = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        // Only integration-test targets: the crate's lib and bins hold no tests.
        if msg["profile"]["test"] == true && msg["target"]["kind"][0] == "test" {
            if let Some(exe) = msg["executable"].as_str() {
                exes.push(exe.to_string());
            }
        }
    }
    if exes.is_empty() {
        bail!("no test executables found for {package}");
    }
    Ok(exes)
}

/// The command line that runs `args` as root (directly when root, else through sudo, with
/// `env` and CI's BOTTLE_PRIVILEGED_TESTS passed along).
/// Where end-to-end runs on one machine take turns (engineers' checkouts and CI share slot
/// names, namespaces and pins).
const E2E_LOCK: &str = "/tmp/bottle-shared-e2e.lock";

/// Waits for, then holds, the machine's end-to-end lock until the file is dropped.
pub fn e2e_lock() -> Result<std::fs::File> {
    use std::os::fd::AsRawFd;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(E2E_LOCK)
        .with_context(|| format!("opening {E2E_LOCK}"))?;
    // SAFETY: flock on a descriptor this function owns; the lock goes with the file.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
        bail!("locking {E2E_LOCK}: {}", std::io::Error::last_os_error());
    }
    Ok(file)
}

pub fn root_command(args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut full: Vec<String> = Vec::new();
    if !is_root() {
        full.extend(["sudo".into(), "env".into()]);
        for (k, v) in env {
            full.push(format!("{k}={v}"));
        }
        if let Ok(v) = std::env::var("BOTTLE_PRIVILEGED_TESTS") {
            full.push(format!("BOTTLE_PRIVILEGED_TESTS={v}"));
        }
    }
    full.extend(args.iter().map(|s| s.to_string()));
    let mut cmd = Command::new(&full[0]);
    cmd.args(&full[1..]);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

/// Runs a command as root: directly when root, else through sudo. CI's BOTTLE_PRIVILEGED_TESTS
/// is passed along so a missing privilege fails rather than skips.
pub fn run_as_root(args: &[&str], env: &[(&str, &str)]) -> Result<()> {
    status(&mut root_command(args, env))
}

/// Re-runs this xtask binary with `args`, as root.
pub fn run_privileged(args: &[&str]) -> Result<()> {
    run_privileged_env(args, &[])
}

/// [`run_privileged`] with extra environment passed along.
pub fn run_privileged_env(args: &[&str], env: &[(&str, &str)]) -> Result<()> {
    let me = std::env::current_exe().context("cannot find the xtask binary")?;
    let me = me.to_string_lossy().into_owned();
    let mut full = vec![me.as_str()];
    full.extend_from_slice(args);
    run_as_root(&full, env)
}
