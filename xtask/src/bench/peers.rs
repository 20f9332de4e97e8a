//! The peers the proxy bench measures ours against: mitmproxy (`mitmdump` from PyPI, in a venv
//! under `target/bench-venv`) and squid (Debian's `squid-openssl`, unpacked under
//! `target/bench-squid` rather than installed, so no system service is enabled or started and
//! nothing listens on the host's port 3128). Installing runs as the calling user; starting runs
//! in the privileged part of the bench.

use std::net::{SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use super::process::{self, Proc};
use crate::sh;

/// Debian packages unpacked for squid: squid-openssl and the libraries a minimal Debian
/// lacks (anything else it links is checked with ldd).
const SQUID_DEBS: &[&str] = &[
    "squid-openssl",
    "squid-common",
    "squid-langpack",
    "libecap3",
    "libnetfilter-conntrack3",
    "libnfnetlink0",
    "libmnl0",
    "libltdl7",
];

pub fn venv_dir() -> Result<PathBuf> {
    Ok(sh::target_dir()?.join("bench-venv"))
}

pub fn mitmdump_bin() -> Result<PathBuf> {
    Ok(venv_dir()?.join("bin").join("mitmdump"))
}

fn squid_dir() -> Result<PathBuf> {
    Ok(sh::target_dir()?.join("bench-squid"))
}

fn squid_root() -> Result<PathBuf> {
    Ok(squid_dir()?.join("root"))
}

pub fn squid_bin() -> Result<PathBuf> {
    Ok(squid_root()?.join("usr/sbin/squid"))
}

/// Directories holding the unpacked libraries (`usr/lib/<triplet>`), for LD_LIBRARY_PATH.
fn squid_lib_path() -> Result<String> {
    let lib = squid_root()?.join("usr/lib");
    let mut dirs = Vec::new();
    if let Ok(entries) = std::fs::read_dir(&lib) {
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().ends_with("-linux-gnu") {
                dirs.push(e.path().display().to_string());
            }
        }
    }
    Ok(dirs.join(":"))
}

/// Installs mitmproxy into the venv unless it is there already.
pub fn install_mitmproxy() -> Result<()> {
    let venv = venv_dir()?;
    if mitmdump_bin()?.exists() {
        return Ok(());
    }
    let pip = venv.join("bin").join("pip");
    if !pip.exists() {
        // A venv made without ensurepip (Debian without python3-venv) has no pip: start over.
        let _ = std::fs::remove_dir_all(&venv);
        let make = || {
            process::run(
                Command::new("python3").arg("-m").arg("venv").arg(&venv),
                Duration::from_secs(300),
            )
        };
        if let Err(first) = make() {
            let _ = std::fs::remove_dir_all(&venv);
            if !Path::new("/usr/bin/apt-get").exists() {
                return Err(first.context("python3 -m venv failed"));
            }
            eprintln!("xtask: python3 -m venv failed ({first:#}); installing python3-venv");
            sh::apt_install(&["python3-venv"])?;
            make().context("python3 -m venv failed again after installing python3-venv")?;
        }
    }
    eprintln!("xtask: installing mitmproxy into {}", venv.display());
    process::run(
        Command::new(&pip).args(["install", "--quiet", "mitmproxy"]),
        Duration::from_secs(900),
    )
    .context("pip install mitmproxy")?;
    if !mitmdump_bin()?.exists() {
        bail!(
            "pip installed mitmproxy but there is no {}",
            mitmdump_bin()?.display()
        );
    }
    Ok(())
}

/// Unpacks squid-openssl (and the libraries it needs) under target/bench-squid unless it is
/// there already and loads.
pub fn install_squid() -> Result<()> {
    if squid_bin()?.exists() && squid_libs_ok().is_ok() {
        return Ok(());
    }
    if !Path::new("/usr/bin/apt-get").exists() || !Path::new("/usr/bin/dpkg-deb").exists() {
        bail!("fetching squid-openssl needs Debian's apt-get and dpkg-deb");
    }
    let dir = squid_dir()?;
    let _ = std::fs::remove_dir_all(&dir);
    let debs = dir.join("debs");
    std::fs::create_dir_all(&debs)?;
    eprintln!(
        "xtask: fetching {} into {}",
        SQUID_DEBS.join(" "),
        debs.display()
    );
    process::run(
        Command::new("apt-get")
            .arg("download")
            .args(SQUID_DEBS)
            .current_dir(&debs),
        Duration::from_secs(600),
    )
    .context("apt-get download (is apt-get update needed?)")?;
    let root = squid_root()?;
    for entry in std::fs::read_dir(&debs)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "deb") {
            process::run(
                Command::new("dpkg-deb").arg("-x").arg(&path).arg(&root),
                Duration::from_secs(120),
            )?;
        }
    }
    squid_libs_ok()
}

fn squid_libs_ok() -> Result<()> {
    let out = process::run(
        Command::new("ldd")
            .arg(squid_bin()?)
            .env("LD_LIBRARY_PATH", squid_lib_path()?),
        Duration::from_secs(30),
    )?;
    let missing: Vec<&str> = out.lines().filter(|l| l.contains("not found")).collect();
    if !missing.is_empty() {
        bail!(
            "squid needs libraries that are missing: {}",
            missing.join("; ")
        );
    }
    Ok(())
}

/// First line of `bin args…` (stdout or stderr), for the report.
pub fn version(bin: &Path, args: &[&str], env: &[(&str, String)]) -> String {
    let mut cmd = Command::new(bin);
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    match process::output(&mut cmd, Duration::from_secs(30)) {
        Ok(out) => {
            let text = String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr);
            text.lines().next().unwrap_or("").trim().to_string()
        }
        Err(e) => format!("unknown ({e})"),
    }
}

pub fn squid_version() -> Result<String> {
    Ok(version(
        &squid_bin()?,
        &["-v"],
        &[("LD_LIBRARY_PATH", squid_lib_path()?)],
    ))
}

/// A running mitmdump in reverse mode on `listen`, forwarding to `upstream` over TLS that it
/// verifies against `upstream_ca`; its own CA is in `confdir`.
pub struct Mitmdump {
    pub proc: Proc,
    pub ca: PathBuf,
}

impl Mitmdump {
    pub fn start(
        listen: SocketAddrV4,
        upstream: SocketAddrV4,
        upstream_ca: &Path,
        work: &Path,
    ) -> Result<Self> {
        let confdir = work.join("mitmproxy");
        std::fs::create_dir_all(&confdir)?;
        let log = std::fs::File::create(work.join("mitmdump.log"))?;
        let mut cmd = Command::new(mitmdump_bin()?);
        cmd.arg("--quiet")
            .arg("--mode")
            .arg(format!("reverse:https://{upstream}"))
            .args(["--listen-host", &listen.ip().to_string()])
            .args(["--listen-port", &listen.port().to_string()])
            .arg("--set")
            .arg(format!("confdir={}", confdir.display()))
            .args(["--set", "ssl_insecure=false"])
            .arg("--set")
            .arg(format!(
                "ssl_verify_upstream_trusted_ca={}",
                upstream_ca.display()
            ))
            // Without it mitmproxy holds a whole body in memory before sending it on.
            .args(["--set", "stream_large_bodies=1m"])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let mut proc = Proc::spawn("mitmdump", &mut cmd)?;
        proc.wait_for_port(SocketAddr::V4(listen), Duration::from_secs(120))?;
        let ca = confdir.join("mitmproxy-ca-cert.pem");
        if !ca.exists() {
            bail!("mitmdump made no CA at {}", ca.display());
        }
        Ok(Self { proc, ca })
    }
}

/// Squid's unprivileged user: `proxy` on Debian, else `nobody`.
fn squid_user() -> &'static str {
    let has_proxy = std::fs::read_to_string("/etc/passwd")
        .map(|p| p.lines().any(|l| l.starts_with("proxy:")))
        .unwrap_or(false);
    if has_proxy {
        "proxy"
    } else {
        "nobody"
    }
}

/// A running squid: TLS reverse proxy (`https_port … accel`) on `listen` with the certificate
/// `cert`/`key`, forwarding over TLS to the origin `upstream`, verified against `upstream_ca`
/// for `host`. Nothing cached, no access log, one worker (squid's default).
pub fn start_squid(
    listen: SocketAddrV4,
    upstream: SocketAddrV4,
    host: &str,
    cert: &Path,
    key: &Path,
    upstream_ca: &Path,
    work: &Path,
) -> Result<Proc> {
    let dir = work.join("squid");
    std::fs::create_dir_all(&dir)?;
    let user = squid_user();
    // Squid drops to its user before it reads some of these.
    for (src, name) in [
        (cert, "cert.pem"),
        (key, "key.pem"),
        (upstream_ca, "ca.pem"),
    ] {
        std::fs::copy(src, dir.join(name)).with_context(|| format!("copying {}", src.display()))?;
    }
    let root = squid_root()?;
    let share = root.join("usr/share");
    let libexec = root.join("usr/lib/squid");
    let d = dir.display();
    // An http_port is required; this one is on a port the bottle may not reach.
    let conf = format!(
        "http_port {ip}:{plain}\n\
         https_port {listen} accel tls-cert={d}/cert.pem tls-key={d}/key.pem defaultsite={host}\n\
         cache_peer {up_ip} parent {up_port} 0 no-query no-digest originserver tls tls-cafile={d}/ca.pem tls-domain={host} name=origin\n\
         cache_peer_access origin allow all\n\
         never_direct allow all\n\
         http_access allow all\n\
         cache deny all\n\
         cache_mem 8 MB\n\
         access_log none\n\
         cache_log {d}/cache.log\n\
         pid_filename {d}/squid.pid\n\
         coredump_dir {d}\n\
         mime_table {mime}\n\
         error_directory {errors}\n\
         icon_directory {icons}\n\
         unlinkd_program {libexec}/unlinkd\n\
         logfile_daemon {libexec}/log_file_daemon\n\
         netdb_filename none\n\
         pinger_enable off\n\
         max_filedescriptors 16384\n\
         shutdown_lifetime 0 seconds\n\
         cache_effective_user {user}\n",
        ip = listen.ip(),
        plain = listen.port() + 1,
        up_ip = upstream.ip(),
        up_port = upstream.port(),
        mime = share.join("squid/mime.conf").display(),
        errors = share.join("squid-langpack/en").display(),
        icons = share.join("squid/icons").display(),
        libexec = libexec.display(),
    );
    let conf_path = dir.join("squid.conf");
    std::fs::write(&conf_path, conf)?;
    process::run(
        Command::new("chown").args(["-R", user]).arg(&dir),
        Duration::from_secs(10),
    )?;
    let log = std::fs::File::create(work.join("squid.stderr"))?;
    let mut cmd = Command::new(squid_bin()?);
    cmd.arg("-N")
        .arg("-f")
        .arg(&conf_path)
        .env("LD_LIBRARY_PATH", squid_lib_path()?)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    let mut proc = Proc::spawn("squid", &mut cmd)?;
    if let Err(e) = proc.wait_for_port(SocketAddr::V4(listen), Duration::from_secs(60)) {
        let log = std::fs::read_to_string(dir.join("cache.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        let tail = &lines[lines.len().saturating_sub(5)..];
        bail!("{e:#}; cache.log ends: {}", tail.join(" | "));
    }
    Ok(proc)
}
