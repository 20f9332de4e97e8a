//! Harness for bottle's end-to-end tests: starts the real `bottle-agent` with a private
//! configuration (its own socket, state, pool, name prefixes and pin root, so tests never
//! touch a real agent's bottles), runs the real `bottle` client, and probes the network from
//! inside a bottle's namespace.
//!
//! Privileged tests call [`privileged`] first: without root they are skipped, unless
//! `BOTTLE_PRIVILEGED_TESTS=1`, where a missing privilege fails the test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::fs::File;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

use bottle_api::{BottleInfo, BottleStats};

/// Whether this test may run. Panics when privileges are required but missing.
pub fn privileged(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if root {
        return true;
    }
    if std::env::var("BOTTLE_PRIVILEGED_TESTS").as_deref() == Ok("1") {
        panic!("{test} needs root and BOTTLE_PRIVILEGED_TESTS=1 is set: run it as root (cargo xtask test does)");
    }
    eprintln!("skipping {test}: needs root (set BOTTLE_PRIVILEGED_TESTS=1 to make this a failure)");
    false
}

/// Directory holding the workspace's built binaries (`target/<profile>`).
pub fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("BOTTLE_BIN_DIR") {
        return PathBuf::from(dir);
    }
    // Test executables live in target/<profile>/deps.
    let exe = std::env::current_exe().unwrap();
    exe.parent().unwrap().parent().unwrap().to_path_buf()
}

/// The offline test image from `cargo xtask images` (busybox, curl, git, stand-in claude and
/// codex), as an absolute path `bottle run --image` takes.
pub fn test_image() -> String {
    let path = bin_dir().join("../images/bottle-test");
    assert!(
        path.join("index.json").is_file(),
        "{} missing: run `cargo xtask images`",
        path.display()
    );
    std::fs::canonicalize(path).unwrap().display().to_string()
}

/// A tiny image as a rootfs directory: busybox-static with `applets` linked in `/bin`, and a
/// `bottle` user (1000:1000) with its home.
pub fn busybox_rootfs(root: &Path, applets: &[&str]) {
    let busybox = Path::new("/bin/busybox");
    assert!(
        busybox.is_file(),
        "/bin/busybox missing: apt-get install busybox-static"
    );
    for d in ["bin", "etc", "home/bottle", "tmp", "proc", "sys", "dev"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::copy(busybox, root.join("bin/busybox")).unwrap();
    for applet in applets {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).unwrap();
    }
    std::fs::write(
        root.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nbottle:x:1000:1000::/home/bottle:/bin/sh\n",
    )
    .unwrap();
    std::fs::write(root.join("etc/group"), "root:x:0:\nbottle:x:1000:\n").unwrap();
}

/// Output bytes as text (lossy).
pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Polls `f` until it holds; fails the test after `timeout` naming `what`.
pub fn wait_for(what: &str, timeout: std::time::Duration, mut f: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + timeout;
    while !f() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

fn binary(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    assert!(
        path.exists(),
        "{} not found: build it first (cargo build --workspace --bins)",
        path.display()
    );
    path
}

/// Per-test private settings; `slot` must be unique among tests that may run at once.
#[derive(Debug, Clone)]
pub struct Slot {
    pub slot: u8,
    pub pool: String,
    pub netns_prefix: String,
    pub veth_prefix: String,
    pub pin_root: PathBuf,
}

impl Slot {
    pub fn new(slot: u8) -> Self {
        Self {
            slot,
            pool: format!("10.250.{slot}.0/24"),
            netns_prefix: format!("bttest{slot}-"),
            veth_prefix: format!("t{slot}-"),
            pin_root: PathBuf::from(format!("/sys/fs/bpf/bottle-test-{slot}")),
        }
    }
}

/// A running `bottle-agent` with a private configuration. Dropping it kills the agent and
/// removes every kernel object it could have made.
pub struct Agent {
    pub dir: tempfile::TempDir,
    pub slot: Slot,
    pub config: PathBuf,
    child: Option<Child>,
}

impl Agent {
    /// The running agent's pid.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("agent.sock")
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("agent.log")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Starts an agent with default test settings plus `extra` TOML lines.
    pub fn start(slot: u8, extra: &str) -> Self {
        let slot = Slot::new(slot);
        cleanup_slot(&slot);
        let dir = tempfile::tempdir().unwrap();
        // Non-root clients must be able to reach the socket inside.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let config = dir.path().join("agent.toml");
        let toml = format!(
            "socket = \"{sock}\"\nsocket_group = \"nogroup\"\nstate_dir = \"{state}\"\nrun_dir = \"{run}\"\n\
             bpf_pin_root = \"{pins}\"\n{pool_line}{spare_line}netns_prefix = \"{ns}\"\nveth_prefix = \"{veth}\"\n\
             log = \"debug\"\n{extra}\n",
            sock = dir.path().join("agent.sock").display(),
            state = dir.path().join("state").display(),
            run = dir.path().join("run").display(),
            pins = slot.pin_root.display(),
            // A test may choose its own pool (inside its slot's range).
            pool_line = if extra.contains("pool =") {
                String::new()
            } else {
                format!("pool = \"{}\"\n", slot.pool)
            },
            // Tests count namespaces, veths and pins; a spare network (see the agent's
            // `spare_networks`) would be one more. Tests of spares ask for them.
            spare_line = if extra.contains("spare_networks") {
                ""
            } else {
                "spare_networks = 0\n"
            },
            ns = slot.netns_prefix,
            veth = slot.veth_prefix,
        );

        std::fs::write(&config, toml).unwrap();
        let mut agent = Self {
            dir,
            slot,
            config,
            child: None,
        };
        agent.spawn();
        agent
    }

    /// Starts the agent process and waits until its socket answers.
    pub fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .unwrap();
        let child = Command::new(binary("bottle-agent"))
            .arg("--config")
            .arg(&self.config)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("bottle-agent exited early ({status}):\n{}", self.log());
            }
            if std::os::unix::net::UnixStream::connect(self.socket()).is_ok() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "agent did not start:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, and waits for the agent to exit (a clean stop).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let pid = i32::try_from(child.id()).unwrap();
            // SAFETY: signals a child we spawned and have not reaped.
            assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
            child.wait().unwrap();
        }
    }

    /// SIGKILL: no chance to clean anything up.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    /// Runs the real `bottle` client against this agent as root.
    pub fn bottle(&self, args: &[&str]) -> Output {
        self.bottle_as(None, args)
    }

    /// Runs the client as `uid` (with gid nogroup, which may use the test socket).
    pub fn bottle_as(&self, uid: Option<u32>, args: &[&str]) -> Output {
        let mut cmd = Command::new(binary("bottle"));
        cmd.args(args).env(bottle_api::HOST_ENV, self.socket());
        if let Some(uid) = uid {
            use std::os::unix::process::CommandExt;
            cmd.uid(uid).gid(65534);
        }
        cmd.output().unwrap()
    }

    /// Runs the client and requires success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.bottle(args);
        assert!(
            out.status.success(),
            "bottle {args:?} failed ({}): {}\nagent log:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
        String::from_utf8(out.stdout).unwrap()
    }

    pub fn create(&self, name: &str) -> BottleInfo {
        serde_json::from_str(&self.ok(&["create", "--name", name, "--json"])).unwrap()
    }

    pub fn stats(&self, name: &str) -> BottleStats {
        let all: Vec<BottleStats> =
            serde_json::from_str(&self.ok(&["stats", name, "--json"])).unwrap();
        all.into_iter().next().unwrap()
    }

    /// Raw HTTP request on the API socket, for bad-input tests. Returns (status, body).
    pub fn raw(&self, request: &[u8]) -> (u16, String) {
        let mut s = std::os::unix::net::UnixStream::connect(self.socket()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        // The agent may answer (413) and close before reading everything: not an error here.
        let _ = s.write_all(request);
        let mut resp = Vec::new();
        let _ = s.read_to_end(&mut resp);
        let text = String::from_utf8_lossy(&resp).to_string();
        let status = text
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let body = text.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
        (status, body)
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill9();
        cleanup_slot(&self.slot);
    }
}

/// Removes everything a test agent with this slot could have left behind.
pub fn cleanup_slot(slot: &Slot) {
    for ns in netns_with_prefix(&slot.netns_prefix) {
        quiet(&["ip", "netns", "delete", &ns]);
        let _ = std::fs::remove_dir_all(Path::new("/etc/netns").join(&ns));
    }
    for link in links_with_prefix(&slot.veth_prefix) {
        quiet(&["ip", "link", "delete", &link]);
    }
    let _ = std::fs::remove_dir_all(&slot.pin_root);
}

/// Runs a clean-up command whose failure (already gone) does not matter.
fn quiet(args: &[&str]) {
    let _ = Command::new(args[0])
        .args(&args[1..])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status();
}

pub fn netns_with_prefix(prefix: &str) -> Vec<String> {
    std::fs::read_dir("/run/netns")
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().into_string().ok())
                .filter(|n| n.starts_with(prefix))
                .collect()
        })
        .unwrap_or_default()
}

pub fn links_with_prefix(prefix: &str) -> Vec<String> {
    std::fs::read_dir("/sys/class/net")
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().into_string().ok())
                .filter(|n| n.starts_with(prefix))
                .collect()
        })
        .unwrap_or_default()
}

/// Waits (bounded) until no interface named with `prefix` is left. The agent drops a removed
/// bottle's namespace and the kernel deletes its veth moments later, on its own (decision
/// 0005), so "nothing left" holds a few milliseconds after `rm` returns.
pub fn wait_links_gone(prefix: &str) {
    wait_for(
        &format!("interfaces named {prefix}* to be deleted"),
        std::time::Duration::from_secs(15),
        || links_with_prefix(prefix).is_empty(),
    );
}

/// Waits (bounded) until the agent's background thread has deleted every directory removed
/// bottles left in the trash of its run and state directories.
pub fn wait_trash_empty(agent: &Agent) {
    for root in [agent.dir.path().join("run"), agent.state_dir()] {
        let trash = root.join("trash");
        wait_for(
            &format!("{} to be emptied", trash.display()),
            std::time::Duration::from_secs(30),
            || std::fs::read_dir(&trash).map_or(true, |mut d| d.next().is_none()),
        );
    }
}

/// A veth pair `<name>`/`<name>p` in the host namespace, both up, `addr` (CIDR) on `<name>`:
/// a host address (or route) this test made. Deleted when dropped.
pub struct HostLink(pub String);

impl HostLink {
    pub fn new(name: &str, addr: &str) -> Self {
        let peer = format!("{name}p");
        quiet(&["ip", "link", "del", name]);
        let run = |args: &[&str]| {
            let out = Command::new("ip").args(args).output().unwrap();
            assert!(out.status.success(), "ip {args:?}: {out:?}");
        };
        run(&["link", "add", name, "type", "veth", "peer", "name", &peer]);
        let link = Self(name.to_string());
        run(&["addr", "add", addr, "dev", name]);
        run(&["link", "set", name, "up"]);
        run(&["link", "set", &peer, "up"]);
        link
    }
}

impl Drop for HostLink {
    fn drop(&mut self) {
        quiet(&["ip", "link", "del", &self.0]);
    }
}

/// Runs `f` on a new thread inside the named network namespace.
pub fn in_netns<T: Send + 'static>(netns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let file = File::open(Path::new("/run/netns").join(netns)).unwrap();
    std::thread::spawn(move || {
        // SAFETY: setns on a valid namespace fd affects only this thread, which ends with f.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
        f()
    })
    .join()
    .unwrap()
}

/// Runs a command inside the namespace (`ip netns exec`).
pub fn netns_exec(netns: &str, args: &[&str]) -> Output {
    Command::new("ip")
        .args(["netns", "exec", netns])
        .args(args)
        .output()
        .unwrap()
}

/// TCP connect with a short timeout, optionally from a chosen source address.
pub fn tcp_connects(dest: SocketAddr, source: Option<Ipv4Addr>) -> bool {
    use socket2::{Domain, Protocol, SockAddr, Socket, Type};
    let domain = if dest.is_ipv4() {
        Domain::IPV4
    } else {
        Domain::IPV6
    };
    let socket = Socket::new(domain, Type::STREAM, Some(Protocol::TCP)).unwrap();
    if let Some(src) = source {
        if socket
            .bind(&SockAddr::from(SocketAddrV4::new(src, 0)))
            .is_err()
        {
            return false;
        }
    }
    socket
        .connect_timeout(&SockAddr::from(dest), Duration::from_millis(700))
        .is_ok()
}

/// A TCP listener on `addr` that accepts and answers "ok" until dropped. Runs in the calling
/// thread's namespace.
pub struct Listener {
    pub addr: SocketAddr,
    _thread: std::thread::JoinHandle<()>,
}

impl Listener {
    pub fn bind(addr: SocketAddr) -> Self {
        let listener = TcpListener::bind(addr).unwrap_or_else(|e| panic!("bind {addr}: {e}"));
        let addr = listener.local_addr().unwrap();
        let thread = std::thread::spawn(move || {
            for mut conn in listener.incoming().flatten() {
                let _ = conn.write_all(b"ok");
            }
        });
        Self {
            addr,
            _thread: thread,
        }
    }
}

/// Reads one greeting from `addr` in the current namespace.
pub fn greeting(addr: SocketAddr) -> Option<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(700)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    Some(buf)
}

/// A namespace this test made to stand in for the internet: a veth to the host
/// (`10.251.<slot>.1` host side, `.2` inside), a test CA, and the real test upstream serving
/// HTTPS on `.2:443` (certificates for `hosts`) and plain HTTP on `.2:80`.
pub struct Internet {
    pub netns: String,
    pub host_if: String,
    pub addr: Ipv4Addr,
    pub ca_dir: tempfile::TempDir,
    servers: Vec<Child>,
}

impl Internet {
    pub fn start(slot: u8, hosts: &[&str]) -> Self {
        let netns = format!("inet{slot}");
        let host_if = format!("inet{slot}h");
        quiet(&["ip", "netns", "del", &netns]);
        quiet(&["ip", "link", "del", &host_if]);
        let run = |args: &[&str]| {
            let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
            assert!(out.status.success(), "{args:?}: {out:?}");
        };
        let host_cidr = format!("10.251.{slot}.1/30");
        let inner_cidr = format!("10.251.{slot}.2/30");
        run(&["ip", "netns", "add", &netns]);
        run(&[
            "ip", "link", "add", &host_if, "type", "veth", "peer", "name", "eth0", "netns", &netns,
        ]);
        run(&["ip", "addr", "add", &host_cidr, "dev", &host_if]);
        run(&["ip", "link", "set", &host_if, "up"]);
        run(&[
            "ip",
            "-n",
            &netns,
            "addr",
            "add",
            &inner_cidr,
            "dev",
            "eth0",
        ]);
        run(&["ip", "-n", &netns, "link", "set", "eth0", "up"]);
        run(&["ip", "-n", &netns, "link", "set", "lo", "up"]);
        let ca_dir = tempfile::tempdir().unwrap();
        let mut args: Vec<String> = vec![ca_dir.path().display().to_string()];
        args.extend(hosts.iter().map(|h| h.to_string()));
        let out = Command::new(binary("bottle-test-ca"))
            .args(&args)
            .output()
            .unwrap();
        assert!(out.status.success(), "bottle-test-ca: {out:?}");
        let addr = Ipv4Addr::new(10, 251, slot, 2);
        let mut internet = Self {
            netns,
            host_if,
            addr,
            ca_dir,
            servers: Vec::new(),
        };
        let mut tls_args = vec!["--listen".to_string(), format!("{addr}:443")];
        for h in hosts {
            tls_args.push("--tls".into());
            tls_args.push(
                internet
                    .ca_dir
                    .path()
                    .join(format!("{h}.pem"))
                    .display()
                    .to_string(),
            );
            tls_args.push(
                internet
                    .ca_dir
                    .path()
                    .join(format!("{h}.key"))
                    .display()
                    .to_string(),
            );
        }
        internet.spawn_server(&tls_args);
        internet.spawn_server(&["--listen".into(), format!("{addr}:80"), "--plain".into()]);
        internet
    }

    fn spawn_server(&mut self, args: &[String]) {
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.netns])
            .arg(binary("bottle-test-upstream"))
            .args(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let mut stdout = child.stdout.take().unwrap();
        let mut line = [0u8; 5];
        stdout
            .read_exact(&mut line)
            .expect("upstream did not start");
        assert_eq!(&line, b"ready");
        self.servers.push(child);
    }

    /// The test CA's certificate (what real upstreams are signed by).
    pub fn ca_pem(&self) -> PathBuf {
        self.ca_dir.path().join("ca.pem")
    }

    /// A route for `host` that dials this internet's upstream.
    pub fn route(&self, host: &str) -> String {
        format!(
            "    - host: {host}\n      connect_to: \"{}:443\"\n      pipelock: {{ssrf_ip_allowlist: [\"{}/32\"]}}\n",
            self.addr, self.addr
        )
    }
}

impl Drop for Internet {
    fn drop(&mut self) {
        for child in &mut self.servers {
            let _ = child.kill();
            let _ = child.wait();
        }
        quiet(&["ip", "link", "del", &self.host_if]);
        quiet(&["ip", "netns", "del", &self.netns]);
    }
}

/// Runs the client with extra environment (token values for `--egress`).
impl Agent {
    pub fn bottle_env(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut cmd = Command::new(binary("bottle"));
        cmd.args(args).env(bottle_api::HOST_ENV, self.socket());
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.output().unwrap()
    }

    /// The agent config line that makes the proxy trust `internet`'s CA.
    pub fn trust_line(internet: &Internet) -> String {
        format!("upstream_ca_files = [\"{}\"]", internet.ca_pem().display())
    }

    /// Writes the bottle's CA to a file and returns its path.
    pub fn bottle_ca(&self, name: &str) -> PathBuf {
        let pem = self.ok(&["ca", name]);
        let path = self.dir.path().join(format!("{name}-ca.pem"));
        std::fs::write(&path, pem).unwrap();
        path
    }

    /// The bottle's audit log.
    pub fn audit(&self, name: &str) -> String {
        self.ok(&["logs", "--net", name])
    }
}

/// Runs a host binary of ours inside the namespace (`bottle-probe`, say).
pub fn netns_run_ours(netns: &str, bin: &str, args: &[&str]) -> Output {
    Command::new("ip")
        .args(["netns", "exec", netns])
        .arg(binary(bin))
        .args(args)
        .output()
        .unwrap()
}

/// `curl` inside the namespace; returns (exit code, stdout).
pub fn curl(netns: &str, args: &[&str]) -> (i32, String) {
    let out = Command::new("ip")
        .args(["netns", "exec", netns, "curl", "-sS", "--max-time", "10"])
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

/// `main` of a test server (`src/bin`): runs `serve` on a multi-threaded runtime; an error is
/// printed as `<name>: <error>` with exit status 1.
pub fn serve_main<F>(name: &str, serve: F) -> std::process::ExitCode
where
    F: std::future::Future<Output = anyhow::Result<()>>,
{
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("{name}: starting the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{name}: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// A certificate chain and its key from PEM files (the test servers' TLS identities).
#[allow(clippy::type_complexity)]
pub fn load_cert_pair(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> anyhow::Result<(
    Vec<rustls::pki_types::CertificateDer<'static>>,
    rustls::pki_types::PrivateKeyDer<'static>,
)> {
    use anyhow::Context;
    use rustls::pki_types::pem::PemObject;
    let chain = rustls::pki_types::CertificateDer::pem_file_iter(cert)
        .with_context(|| format!("reading {}", cert.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("parsing {}", cert.display()))?;
    if chain.is_empty() {
        anyhow::bail!("no certificate in {}", cert.display());
    }
    let key = rustls::pki_types::PrivateKeyDer::from_pem_file(key)
        .with_context(|| format!("reading the key {}", key.display()))?;
    Ok((chain, key))
}
