//! `cargo xtask bench proxy`: the egress proxy against mitmproxy and squid, all driven by the
//! same load generator (wrk, and curl for one large download) against the same HTTPS upstream,
//! in one run on this machine.
//!
//! Topology (everything local; the bench makes and removes every piece):
//!
//! ```text
//!  host netns                                            netns bprx-inet
//!  wrk/curl (direct) ──────────────── veth bprxinet ───► 10.213.200.2:443 bottle-test-upstream
//!  gateway 10.213.176.1                                  (HTTPS, test CA, ECDSA P-256)
//!   :443  bottle-agent MITM ──┐
//!   :8443 mitmdump (reverse) ─┼─── TLS, verified against the test CA ──► upstream
//!   :8444 squid (accel)  ─────┘
//!        ▲ veth + eBPF (service_ports)
//!  netns of the bottle: wrk/curl for bottle, mitmproxy and squid
//! ```
//!
//! The bottle's route uses `connect_to` + `pipelock.ssrf_ip_allowlist` to reach the upstream
//! and injects a bearer token, so credential injection, the path allowlist, DLP on the request
//! line and headers, stats and audit all run on every request.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::peers::{self, Mitmdump};
use super::process::{self, check_interrupted, Interrupts, Link, Netns, Proc, WorkDir};
use super::rss_kib;
use crate::agent::PrivateAgent;
use crate::sh;

const TAG: &str = "bprx";
const POOL: &str = "10.213.176.0/20";
const INET_NETNS: &str = "bprx-inet";
const INET_LINK: &str = "bprxinet";
const INET_HOST: Ipv4Addr = Ipv4Addr::new(10, 213, 200, 1);
const INET_ADDR: Ipv4Addr = Ipv4Addr::new(10, 213, 200, 2);
const HOST: &str = "api.example.com";
const TOKEN_REF: &str = "BENCH_TOKEN";
const TOKEN: &str = "bench-token-0123456789abcdef";
const MITM_PORT: u16 = 8443;
const SQUID_PORT: u16 = 8444;
const DOWNLOAD_BYTES: u64 = 1 << 30;
const DOWNLOAD_RUNS: usize = 3;

/// Load settings.
const LOAD_SECS: u32 = 10;
const LOAD_CONNS: u32 = 32;
const ONE_CONN_SECS: u32 = 5;
const MANY_CONNS: u32 = 1000;
const MANY_SECS: u32 = 15;

/// Environment from the unprivileged part: why a peer could not be installed.
const MITM_SKIP_ENV: &str = "BOTTLE_BENCH_MITMPROXY_SKIPPED";
const SQUID_SKIP_ENV: &str = "BOTTLE_BENCH_SQUID_SKIPPED";

/// Prints wrk's results in a form we parse (latency in microseconds).
const WRK_SCRIPT: &str = r#"done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("wrk-result requests=%.0f duration_us=%.0f p50_us=%.0f p99_us=%.0f connect=%.0f read=%.0f write=%.0f status=%.0f timeout=%.0f\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    e.connect, e.read, e.write, e.status, e.timeout))
end
"#;

/// The unprivileged preparation: bench-only packages, the DLP bench's build, the peers.
/// Returns environment for the privileged part (why a peer is missing).
pub fn prepare() -> Result<Vec<(&'static str, String)>> {
    sh::bench_deps()?;
    sh::cargo(&[
        "build",
        "--release",
        "-p",
        "bottle-dlp",
        "--example",
        "dlp_bench",
    ])?;
    let mut env = Vec::new();
    if let Err(e) = peers::install_mitmproxy() {
        eprintln!("xtask: mitmproxy will be skipped: {e:#}");
        env.push((MITM_SKIP_ENV, format!("installing it failed: {e:#}")));
    }
    if let Err(e) = peers::install_squid() {
        eprintln!("xtask: squid will be skipped: {e:#}");
        env.push((SQUID_SKIP_ENV, format!("setting it up failed: {e:#}")));
    }
    Ok(env)
}

/// One wrk run's numbers.
#[derive(Debug, Clone, Copy, Default)]
struct Wrk {
    requests: f64,
    secs: f64,
    p50_ms: f64,
    p99_ms: f64,
    /// connect, read, write, non-2xx/3xx status, timeout.
    errors: [u64; 5],
}

impl Wrk {
    fn rps(&self) -> f64 {
        if self.secs > 0.0 {
            self.requests / self.secs
        } else {
            0.0
        }
    }

    fn error_text(&self) -> Option<String> {
        let names = ["connect", "read", "write", "status", "timeout"];
        let parts: Vec<String> = names
            .iter()
            .zip(self.errors)
            .filter(|(_, n)| *n > 0)
            .map(|(name, n)| format!("{name} {n}"))
            .collect();
        (!parts.is_empty()).then(|| parts.join(", "))
    }

    fn parse(text: &str) -> Result<Self> {
        let line = text
            .lines()
            .find(|l| l.starts_with("wrk-result "))
            .with_context(|| format!("wrk printed no result: {text}"))?;
        let field = |k: &str| -> Result<f64> {
            line.split_whitespace()
                .find_map(|kv| kv.strip_prefix(k)?.strip_prefix('='))
                .and_then(|v| v.parse().ok())
                .with_context(|| format!("no {k} in {line}"))
        };
        let mut errors = [0u64; 5];
        for (slot, k) in errors
            .iter_mut()
            .zip(["connect", "read", "write", "status", "timeout"])
        {
            *slot = count(field(k)?);
        }
        Ok(Self {
            requests: field("requests")?,
            secs: field("duration_us")? / 1e6,
            p50_ms: field("p50_us")? / 1e3,
            p99_ms: field("p99_us")? / 1e3,
            errors,
        })
    }
}

/// CPU time (user + system, all threads) a process has used so far, in seconds.
fn cpu_secs(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces): state is the first, utime and
    // stime are the 12th and 13th.
    let rest = stat.rsplit_once(')').context("malformed stat")?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f
        .get(11)
        .zip(f.get(12))
        .and_then(|(u, s)| Some(u.parse::<f64>().ok()? + s.parse::<f64>().ok()?))
        .context("no utime/stime")?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    Ok(ticks / if hz > 0 { hz as f64 } else { 100.0 })
}

#[expect(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    reason = "wrk's counters are non-negative integers printed as floats"
)]
fn count(v: f64) -> u64 {
    v.max(0.0).round() as u64
}

/// One system under test, as the load generator sees it.
struct Target {
    name: &'static str,
    /// Where wrk and curl run (None: the host's namespace).
    netns: Option<String>,
    /// What wrk loads.
    wrk_url: String,
    /// curl's TLS trust and name pinning for `curl_base`.
    curl_args: Vec<String>,
    curl_base: String,
    /// The process whose memory is sampled.
    pid: Option<u32>,
}

impl Target {
    fn command(&self, program: &str) -> Command {
        match &self.netns {
            Some(ns) => {
                let mut cmd = Command::new("ip");
                cmd.args(["netns", "exec", ns, program]);
                cmd
            }
            None => Command::new(program),
        }
    }

    fn wrk(&self, script: &Path, threads: u32, conns: u32, secs: u32, close: bool) -> Result<Wrk> {
        let result = self.wrk_any(script, threads, conns, secs, close)?;
        if result.requests < 1.0 {
            bail!("wrk against {} completed no request", self.name);
        }
        Ok(result)
    }

    /// A wrk run; zero completed requests is a result, not an error.
    fn wrk_any(
        &self,
        script: &Path,
        threads: u32,
        conns: u32,
        secs: u32,
        close: bool,
    ) -> Result<Wrk> {
        let mut cmd = self.command("wrk");
        cmd.arg(format!("-t{threads}"))
            .arg(format!("-c{conns}"))
            .arg(format!("-d{secs}s"))
            .args(["--timeout", "10s", "--latency", "-s"])
            .arg(script);
        if close {
            cmd.args(["-H", "Connection: close"]);
        }
        cmd.arg(&self.wrk_url);
        let out = process::output(&mut cmd, Duration::from_secs(u64::from(secs) + 60))?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        if !out.status.success() {
            bail!("wrk against {} failed: {text}", self.name);
        }
        Wrk::parse(&text)
    }

    fn curl(&self, extra: &[&str], path: &str, timeout: Duration) -> Result<String> {
        let mut cmd = self.command("curl");
        cmd.args(["-sS", "--http1.1", "--max-time"])
            .arg(timeout.as_secs().to_string())
            .args(&self.curl_args)
            .args(extra)
            .arg(format!("{}{path}", self.curl_base));
        process::run(&mut cmd, timeout + Duration::from_secs(30))
            .with_context(|| format!("curl through {}", self.name))
    }

    /// GET /echo once; fails unless the upstream answered (and saw the token, for ours).
    fn check(&self, want_token: bool) -> Result<()> {
        let body = self.curl(&[], "/echo/check", Duration::from_secs(20))?;
        let echo: serde_json::Value = serde_json::from_str(&body)
            .with_context(|| format!("{}: /echo did not answer JSON: {body}", self.name))?;
        if echo["path"] != "/echo/check" {
            bail!("{}: unexpected /echo answer: {body}", self.name);
        }
        if want_token && echo["headers"]["authorization"] != format!("Bearer {TOKEN}") {
            bail!(
                "{}: the upstream did not see the route's token: {body}",
                self.name
            );
        }
        Ok(())
    }

    /// A wrk run, with the CPU time the process under test used per request (µs).
    fn wrk_cpu(
        &self,
        script: &Path,
        threads: u32,
        conns: u32,
        secs: u32,
        close: bool,
    ) -> Result<(Wrk, Option<f64>)> {
        let before = self.pid.map(cpu_secs).transpose()?;
        let w = self.wrk(script, threads, conns, secs, close)?;
        let cpu = match (self.pid, before) {
            (Some(pid), Some(b)) => Some((cpu_secs(pid)? - b) * 1e6 / w.requests),
            _ => None,
        };
        Ok((w, cpu))
    }

    /// 1 GiB through curl: (bytes per second, CPU seconds the process under test used).
    fn download_cpu(&self) -> Result<(f64, Option<f64>)> {
        let before = self.pid.map(cpu_secs).transpose()?;
        let speed = self.download()?;
        let cpu = match (self.pid, before) {
            (Some(pid), Some(b)) => Some(cpu_secs(pid)? - b),
            _ => None,
        };
        Ok((speed, cpu))
    }

    /// 1 GiB through curl; bytes per second.
    fn download(&self) -> Result<f64> {
        let out = self.curl(
            &[
                "-o",
                "/dev/null",
                "-w",
                "%{http_code} %{size_download} %{speed_download}",
            ],
            &format!("/download?bytes={DOWNLOAD_BYTES}"),
            Duration::from_secs(600),
        )?;
        let f: Vec<&str> = out.split_whitespace().collect();
        match f[..] {
            [code, size, speed] if code == "200" && size == DOWNLOAD_BYTES.to_string() => {
                speed.parse().context("curl speed")
            }
            _ => bail!("{}: download incomplete: {out}", self.name),
        }
    }

    /// wrk with many keep-alive connections while sampling the process's RSS; (peak KiB, wrk).
    fn rss_under_load(&self, script: &Path) -> Result<(u64, Wrk)> {
        let pid = self.pid.context("no process to sample")?;
        let mut peak = rss_kib(pid)?;
        let result = std::thread::scope(|s| -> Result<Wrk> {
            let load = s.spawn(|| self.wrk_any(script, 2, MANY_CONNS, MANY_SECS, false));
            let deadline = Instant::now() + Duration::from_secs(u64::from(MANY_SECS) + 90);
            while !load.is_finished() && Instant::now() < deadline {
                if let Ok(kib) = rss_kib(pid) {
                    peak = peak.max(kib);
                }
                // An interrupt also ends wrk (its wait checks the same flag).
                std::thread::sleep(Duration::from_millis(100));
            }
            load.join()
                .map_err(|_| anyhow::anyhow!("the wrk thread panicked"))?
        })?;
        Ok((peak, result))
    }
}

/// The "internet": a namespace with the test upstream serving HTTPS, reached over a veth.
struct Internet {
    _upstream: Proc,
    _link: Link,
    _netns: Netns,
    ca_dir: PathBuf,
}

impl Internet {
    fn start(work: &Path) -> Result<Self> {
        let bins = PathBuf::from(sh::bin_dir(true)?);
        let netns = Netns::create(INET_NETNS)?;
        let link = Link::veth_into(INET_LINK, INET_NETNS)?;
        process::ip(&["addr", "add", &format!("{INET_HOST}/30"), "dev", INET_LINK])?;
        process::ip(&["link", "set", INET_LINK, "up"])?;
        let addr = format!("{INET_ADDR}/30");
        process::ip(&["-n", INET_NETNS, "addr", "add", &addr, "dev", "eth0"])?;
        process::ip(&["-n", INET_NETNS, "link", "set", "eth0", "up"])?;
        process::ip(&["-n", INET_NETNS, "link", "set", "lo", "up"])?;

        // Certificates for the name (SNI: ours, squid) and for the address (mitmproxy's
        // reverse mode dials the address and verifies it); the first pair also serves a
        // ClientHello without a name.
        let ca_dir = work.join("test-ca");
        let ip = INET_ADDR.to_string();
        process::run(
            Command::new(bins.join("bottle-test-ca"))
                .arg(&ca_dir)
                .args([ip.as_str(), HOST]),
            Duration::from_secs(30),
        )?;
        let pem = |h: &str| ca_dir.join(format!("{h}.pem"));
        let key = |h: &str| ca_dir.join(format!("{h}.key"));
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", INET_NETNS])
            .arg(bins.join("bottle-test-upstream"))
            .args(["--listen", &format!("{INET_ADDR}:443")])
            .arg("--tls")
            .args([pem(&ip), key(&ip)])
            .arg("--tls")
            .args([pem(HOST), key(HOST)])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let mut upstream = Proc::spawn("bottle-test-upstream", &mut cmd)?;
        upstream.wait_for_line("ready", Duration::from_secs(20))?;
        Ok(Self {
            _upstream: upstream,
            _link: link,
            _netns: netns,
            ca_dir,
        })
    }

    fn ca(&self) -> PathBuf {
        self.ca_dir.join("ca.pem")
    }
}

/// What one column of the table holds: results, or why there are none.
struct Column {
    name: &'static str,
    detail: String,
    target: Result<Target, String>,
    ka: Option<Wrk>,
    /// CPU µs per request of the process under test during the keep-alive run.
    ka_cpu_us: Option<f64>,
    close: Option<Wrk>,
    close_cpu_us: Option<f64>,
    one: Option<Wrk>,
    /// Download runs: (bytes/s, CPU seconds of the process under test).
    downloads: Vec<(f64, Option<f64>)>,
    /// Median of `downloads`.
    download: Option<f64>,
    rss_idle: Option<u64>,
    rss_peak: Option<(u64, Wrk)>,
    failures: Vec<String>,
}

impl Column {
    fn new(name: &'static str, detail: String, target: Result<Target, String>) -> Self {
        Self {
            name,
            detail,
            target,
            ka: None,
            ka_cpu_us: None,
            close: None,
            close_cpu_us: None,
            one: None,
            downloads: Vec::new(),
            download: None,
            rss_idle: None,
            rss_peak: None,
            failures: Vec::new(),
        }
    }

    /// Runs `f` on the target if there is one; a failure is noted (and shown), not fatal,
    /// unless it is an interrupt.
    fn measure<T>(
        &mut self,
        what: &str,
        f: impl FnOnce(&Target) -> Result<T>,
    ) -> Result<Option<T>> {
        let Ok(target) = &self.target else {
            return Ok(None);
        };
        eprintln!("xtask: bench proxy: {what}: {}", self.name);
        match f(target) {
            Ok(v) => Ok(Some(v)),
            Err(e) => {
                check_interrupted()?;
                self.failures.push(format!("{what}: {e:#}"));
                Ok(None)
            }
        }
    }
}

fn extra_config(upstream_ca: &Path) -> String {
    format!(
        "service_ports = [\"udp/53\", \"tcp/53\", \"tcp/80\", \"tcp/443\", \"tcp/3128\", \"tcp/{MITM_PORT}\", \"tcp/{SQUID_PORT}\"]\n\
         upstream_ca_files = [\"{}\"]\n\
         max_connections_per_bottle = 4096\n",
        upstream_ca.display()
    )
}

fn egress_yaml() -> String {
    format!(
        "egress:\n  routes:\n    - host: {HOST}\n      path_allowlist: [\"/echo\", \"/download\"]\n      \
         auth: {{scheme: Bearer, token_ref: {TOKEN_REF}}}\n      connect_to: \"{INET_ADDR}:443\"\n      \
         pipelock: {{ssrf_ip_allowlist: [\"{INET_ADDR}/32\"]}}\n"
    )
}

/// Raises the soft open-file limit to the hard one (1,000 connections need more than 1,024
/// descriptors in wrk and in the proxies, which inherit it).
fn raise_nofile() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit write/read only the struct passed.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

pub fn run() -> Result<()> {
    let _interrupts = Interrupts::catch();
    let loadavg = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    raise_nofile();
    let work = WorkDir::new("bottle-bench-proxy")?;
    let script = work.path().join("report.lua");
    std::fs::write(&script, WRK_SCRIPT)?;

    let internet = Internet::start(work.path())?;
    let agent = PrivateAgent::start(TAG, POOL, &extra_config(&internet.ca()))?;
    let egress = work.path().join("egress.yaml");
    std::fs::write(&egress, egress_yaml())?;
    let created = agent.client_env(
        &[
            "create",
            "--name",
            "bench",
            "--egress",
            &egress.display().to_string(),
            "--json",
        ],
        &[(TOKEN_REF, TOKEN)],
    )?;
    let bottle: serde_json::Value = serde_json::from_str(&created)?;
    let netns = bottle["netns"].as_str().context("netns")?.to_string();
    let gw: Ipv4Addr = bottle["gateway_address"]
        .as_str()
        .context("gateway")?
        .parse()?;
    let bottle_ca = work.path().join("bottle-ca.pem");
    std::fs::write(&bottle_ca, agent.client_env(&["ca", "bench"], &[])?)?;
    let upstream = SocketAddrV4::new(INET_ADDR, 443);

    // The peers, each listening on the bottle's gateway like ours.
    let mitm = match std::env::var(MITM_SKIP_ENV) {
        Ok(reason) => Err(reason),
        Err(_) if !peers::mitmdump_bin()?.exists() => {
            Err("not installed (cargo xtask bench proxy installs it)".to_string())
        }
        Err(_) => Mitmdump::start(
            SocketAddrV4::new(gw, MITM_PORT),
            upstream,
            &internet.ca(),
            work.path(),
        )
        .map_err(|e| format!("{e:#}")),
    };
    let squid = match std::env::var(SQUID_SKIP_ENV) {
        Ok(reason) => Err(reason),
        Err(_) if !peers::squid_bin()?.exists() => {
            Err("not set up (cargo xtask bench proxy unpacks it)".to_string())
        }
        Err(_) => peers::start_squid(
            SocketAddrV4::new(gw, SQUID_PORT),
            upstream,
            HOST,
            &internet.ca_dir.join(format!("{HOST}.pem")),
            &internet.ca_dir.join(format!("{HOST}.key")),
            &internet.ca(),
            work.path(),
        )
        .map_err(|e| format!("{e:#}")),
    };
    check_interrupted()?;

    let str_path = |p: &Path| p.display().to_string();
    let direct = Target {
        name: "direct",
        netns: None,
        wrk_url: format!("https://{INET_ADDR}/echo"),
        curl_args: vec![
            "--cacert".into(),
            str_path(&internet.ca()),
            "--resolve".into(),
            format!("{HOST}:443:{INET_ADDR}"),
        ],
        curl_base: format!("https://{HOST}"),
        pid: None,
    };
    let ours = Target {
        name: "bottle",
        netns: Some(netns.clone()),
        // The bottle's resolver (the agent's DNS) answers the gateway for the route's host.
        wrk_url: format!("https://{HOST}/echo"),
        curl_args: vec!["--cacert".into(), str_path(&bottle_ca)],
        curl_base: format!("https://{HOST}"),
        pid: Some(agent.pid()),
    };
    let mitm_target = mitm.as_ref().map(|m| Target {
        name: "mitmproxy",
        netns: Some(netns.clone()),
        wrk_url: format!("https://{gw}:{MITM_PORT}/echo"),
        curl_args: vec![
            "--cacert".into(),
            str_path(&m.ca),
            "--resolve".into(),
            format!("{HOST}:{MITM_PORT}:{gw}"),
        ],
        curl_base: format!("https://{HOST}:{MITM_PORT}"),
        pid: Some(m.proc.pid()),
    });
    let squid_target = squid.as_ref().map(|p| Target {
        name: "squid",
        netns: Some(netns.clone()),
        wrk_url: format!("https://{gw}:{SQUID_PORT}/echo"),
        curl_args: vec![
            "--cacert".into(),
            str_path(&internet.ca()),
            "--resolve".into(),
            format!("{HOST}:{SQUID_PORT}:{gw}"),
        ],
        curl_base: format!("https://{HOST}:{SQUID_PORT}"),
        pid: Some(p.pid()),
    });

    // Every path must work (with verification everywhere) before anything is measured.
    direct.check(false)?;
    ours.check(true)?;
    let mitm_target = match mitm_target {
        Ok(t) => t.check(false).map(|()| t).map_err(|e| format!("{e:#}")),
        Err(e) => Err(e.clone()),
    };
    let squid_target = match squid_target {
        Ok(t) => t.check(false).map(|()| t).map_err(|e| format!("{e:#}")),
        Err(e) => Err(e.clone()),
    };

    let mitm_version = peers::version(&peers::mitmdump_bin()?, &["--version"], &[])
        .replace("Mitmproxy: ", "mitmproxy ");
    let squid_version = peers::squid_version()
        .unwrap_or_default()
        .replace("Squid Cache: Version ", "squid ");
    let mut cols = vec![
        Column::new(
            "direct",
            "load generator → upstream".into(),
            Ok(direct),
        ),
        Column::new(
            "bottle",
            "bottle-agent MITM on the gateway (route with connect_to, token injection, DLP, audit)"
                .into(),
            Ok(ours),
        ),
        Column::new(
            "mitmproxy",
            format!(
                "{mitm_version}, `mitmdump --mode reverse:https://{upstream}` (wrk cannot use an explicit proxy), ssl_insecure=false, upstream verified against the test CA, stream_large_bodies=1m, defaults otherwise (RSA-2048 leaf keys, one process)"
            ),
            mitm_target,
        ),
        Column::new(
            "squid",
            format!(
                "{squid_version} (Debian squid-openssl), TLS reverse proxy (`https_port … accel` + `cache_peer … originserver tls`, verified against the test CA; ssl-bump needs CONNECT or NAT interception, which wrk cannot drive), no cache, no access log, one worker"
            ),
            squid_target,
        ),
    ];

    // Each measurement over every column before the next, so drift hits all alike.
    for col in &mut cols {
        let r = col.measure("keep-alive", |t| {
            t.wrk_cpu(&script, 2, LOAD_CONNS, LOAD_SECS, false)
        })?;
        (col.ka, col.ka_cpu_us) = (r.map(|r| r.0), r.and_then(|r| r.1));
    }
    for col in &mut cols {
        let r = col.measure("new connection per request", |t| {
            t.wrk_cpu(&script, 2, LOAD_CONNS, LOAD_SECS, true)
        })?;
        (col.close, col.close_cpu_us) = (r.map(|r| r.0), r.and_then(|r| r.1));
    }
    for col in &mut cols {
        col.one = col.measure("one connection", |t| {
            t.wrk(&script, 1, 1, ONE_CONN_SECS, false)
        })?;
    }
    // Downloads vary more from run to run: three rounds, the median.
    for round in 1..=DOWNLOAD_RUNS {
        for col in &mut cols {
            if round > 1 && col.downloads.len() + 1 < round {
                continue; // an earlier round failed
            }
            let what = format!("1 GiB download {round}/{DOWNLOAD_RUNS}");
            if let Some(run) = col.measure(&what, Target::download_cpu)? {
                col.downloads.push(run);
            }
        }
    }
    for col in &mut cols {
        let mut speeds: Vec<f64> = col.downloads.iter().map(|d| d.0).collect();
        speeds.sort_by(f64::total_cmp);
        col.download = speeds.get(speeds.len() / 2).copied();
    }
    for col in &mut cols {
        if col.name == "direct" {
            continue;
        }
        col.rss_idle = col.measure("idle RSS", |t| rss_kib(t.pid.context("no pid")?))?;
        col.rss_peak = col.measure("RSS at 1,000 connections", |t| t.rss_under_load(&script))?;
    }

    let dlp = dlp_bench();
    report(&cols, &dlp, &loadavg);
    // Stop the peers and the agent before the namespace they talk to.
    drop(squid);
    drop(mitm);
    drop(agent);
    drop(internet);
    Ok(())
}

/// The DLP engine's own benchmark, built by `prepare`; its output lines.
fn dlp_bench() -> Result<String, String> {
    let bin = sh::target_dir()
        .map_err(|e| e.to_string())?
        .join("release/examples/dlp_bench");
    eprintln!("xtask: bench proxy: DLP scanner");
    process::run(&mut Command::new(bin), Duration::from_secs(900)).map_err(|e| format!("{e:#}"))
}

fn ms(v: f64) -> String {
    if v < 10.0 {
        format!("{v:.2} ms")
    } else {
        format!("{v:.1} ms")
    }
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 && a / b < 1.0 => format!("{:.2}×", a / b),
        (Some(a), Some(b)) if b > 0.0 => format!("{:.1}×", a / b),
        _ => "–".into(),
    }
}

fn report(cols: &[Column], dlp: &Result<String, String>, loadavg: &str) {
    let get = |name: &str| cols.iter().find(|c| c.name == name);
    let cell = |c: &Column, f: &dyn Fn(&Column) -> Option<String>| -> String {
        match &c.target {
            Err(_) => "skipped".into(),
            Ok(_) => f(c).unwrap_or_else(|| "failed".into()),
        }
    };
    let rps = |w: &Option<Wrk>| w.map(|w| w.rps());
    let direct_one = get("direct").and_then(|c| c.one);
    let direct_ka = get("direct").and_then(|c| c.ka);
    let direct_dl = get("direct").and_then(|c| c.download);
    let ours = get("bottle");
    let mitm = get("mitmproxy");
    let squid = get("squid");
    let vs = |peer: Option<&Column>, f: &dyn Fn(&Column) -> Option<f64>| -> String {
        ratio(ours.and_then(f), peer.and_then(f))
    };

    println!(
        "## proxy (`cargo xtask bench proxy`)\n\nGET /echo (a ~0.4 KB JSON answer) over HTTPS through each, HTTP/1.1 from the client; one run on this machine ({} CPUs, kernel {}).\n",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
    );
    println!("| measurement | direct | bottle | mitmproxy | squid | bottle / mitmproxy | bottle / squid |");
    println!("|---|---|---|---|---|---|---|");
    type RowFn<'a> = &'a dyn Fn(&Column) -> Option<String>;
    type RatioFn<'a> = &'a dyn Fn(&Column) -> Option<f64>;
    let row = |label: &str, f: RowFn<'_>, r: Option<RatioFn<'_>>| {
        let cells: Vec<String> = ["direct", "bottle", "mitmproxy", "squid"]
            .iter()
            .map(|n| get(n).map_or("–".into(), |c| cell(c, f)))
            .collect();
        let (rm, rs) = match r {
            Some(r) => (vs(mitm, r), vs(squid, r)),
            None => (String::new(), String::new()),
        };
        println!("| {label} | {} | {rm} | {rs} |", cells.join(" | "));
    };
    let proxy_only = |c: &Column, f: &dyn Fn(&Column) -> Option<String>| -> Option<String> {
        if c.name == "direct" {
            Some("–".into())
        } else {
            f(c)
        }
    };
    row(
        &format!("requests/s, keep-alive (`wrk -t2 -c{LOAD_CONNS} -d{LOAD_SECS}s`)"),
        &|c| c.ka.map(|w| format!("{:.0}", w.rps())),
        Some(&|c| rps(&c.ka)),
    );
    row(
        "  latency p50 / p99 at that load",
        &|c| c.ka.map(|w| format!("{} / {}", ms(w.p50_ms), ms(w.p99_ms))),
        None,
    );
    row(
        "  added p50 latency vs direct at that load",
        &|c| {
            proxy_only(c, &|c| {
                let (w, d) = (c.ka?, direct_ka?);
                Some(format!("{:+.2} ms", w.p50_ms - d.p50_ms))
            })
        },
        None,
    );
    row(
        "  CPU time of the proxy process per request",
        &|c| proxy_only(c, &|c| c.ka_cpu_us.map(|v| format!("{v:.0} µs"))),
        Some(&|c| c.ka_cpu_us),
    );
    row(
        "requests/s, new connection per request (same, `-H 'Connection: close'`)",
        &|c| c.close.map(|w| format!("{:.0}", w.rps())),
        Some(&|c| rps(&c.close)),
    );
    row(
        "  latency p50 / p99 at that load",
        &|c| {
            c.close
                .map(|w| format!("{} / {}", ms(w.p50_ms), ms(w.p99_ms)))
        },
        None,
    );
    row(
        "  CPU time of the proxy process per request",
        &|c| proxy_only(c, &|c| c.close_cpu_us.map(|v| format!("{v:.0} µs"))),
        Some(&|c| c.close_cpu_us),
    );
    row(
        &format!("latency p50 / p99, one keep-alive connection (`wrk -t1 -c1 -d{ONE_CONN_SECS}s`)"),
        &|c| {
            c.one
                .map(|w| format!("{} / {}", ms(w.p50_ms), ms(w.p99_ms)))
        },
        None,
    );
    row(
        "  **added p50 latency** vs direct, one connection",
        &|c| {
            proxy_only(c, &|c| {
                let (w, d) = (c.one?, direct_one?);
                Some(format!("{:+.3} ms", w.p50_ms - d.p50_ms))
            })
        },
        None,
    );
    row(
        &format!("1 GiB download (`curl --http1.1 -o /dev/null`), MB/s, median of {DOWNLOAD_RUNS}"),
        &|c| {
            let v = c.download?;
            Some(match direct_dl {
                Some(d) if c.name != "direct" => {
                    format!("{:.0} ({:.0}% of direct)", v / 1e6, 100.0 * v / d)
                }
                _ => format!("{:.0}", v / 1e6),
            })
        },
        Some(&|c| c.download),
    );
    let cpu_per_gib = |c: &Column| -> Option<f64> {
        let cpus: Vec<f64> = c.downloads.iter().filter_map(|d| d.1).collect();
        (!cpus.is_empty()).then(|| cpus.iter().sum::<f64>() / cpus.len() as f64)
    };
    row(
        "  CPU time of the proxy process per GiB",
        &|c| proxy_only(c, &|c| cpu_per_gib(c).map(|v| format!("{v:.2} s"))),
        Some(&cpu_per_gib),
    );
    row(
        "process RSS, idle",
        &|c| proxy_only(c, &|c| c.rss_idle.map(mib)),
        None,
    );
    row(
        &format!("process RSS, peak during {MANY_CONNS} keep-alive connections (`wrk -t2 -c{MANY_CONNS} -d{MANY_SECS}s`)"),
        &|c| {
            proxy_only(c, &|c| {
                c.rss_peak
                    .map(|(kib, w)| format!("{} ({:.0} req/s)", mib(kib), w.rps()))
            })
        },
        Some(&|c| c.rss_peak.map(|(k, _)| k as f64)),
    );

    // Targets.
    println!("\n| target | measured | met |\n|---|---|---|");
    let target = |label: &str,
                  value: Option<f64>,
                  shown: &dyn Fn(f64) -> String,
                  ok: &dyn Fn(f64) -> bool| {
        match value {
            Some(v) => println!(
                "| {label} | {} | {} |",
                shown(v),
                if ok(v) { "yes" } else { "**no**" }
            ),
            None => println!("| {label} | not measured | – |"),
        }
    };
    let over = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    };
    target(
        "bottle / mitmproxy requests/s, keep-alive ≥ 10×",
        over(ours.and_then(|c| rps(&c.ka)), mitm.and_then(|c| rps(&c.ka))),
        &|v| format!("{v:.1}×"),
        &|v| v >= 10.0,
    );
    target(
        "bottle / mitmproxy requests/s, new connection per request ≥ 10×",
        over(
            ours.and_then(|c| rps(&c.close)),
            mitm.and_then(|c| rps(&c.close)),
        ),
        &|v| format!("{v:.1}×"),
        &|v| v >= 10.0,
    );
    target(
        "added p50 latency, keep-alive (one connection) ≤ 0.5 ms",
        ours.and_then(|c| Some(c.one?.p50_ms - direct_one?.p50_ms)),
        &|v| format!("{v:.3} ms"),
        &|v| v <= 0.5,
    );
    target(
        "1 GiB download, bottle / direct ≥ 50%",
        over(ours.and_then(|c| c.download), direct_dl).map(|v| v * 100.0),
        &|v| format!("{v:.0}%"),
        &|v| v >= 50.0,
    );

    println!(
        "\nDLP scanner (`cargo run --release -p bottle-dlp --example dlp_bench`, one thread):\n"
    );
    match dlp {
        Ok(out) => {
            for line in out.lines() {
                if line.starts_with("dlp_scan_mb_per_s=") || line.starts_with("scanned ") {
                    println!("    {line}");
                }
            }
        }
        Err(e) => println!("    failed: {e}"),
    }

    println!("\nSetup:\n");
    println!(
        "- load generator: {} (threads, connections and duration per row; `--timeout 10s`), and {} for the download; for bottle, mitmproxy and squid they run inside the bottle's namespace (its eBPF programs attached), for direct in the host's; all of it, proxies and upstream included, shares this machine's CPUs",
        peers::version(Path::new("wrk"), &["-v"], &[])
            .split(" Copyright")
            .next()
            .unwrap_or("wrk"),
        peers::version(Path::new("curl"), &["--version"], &[])
            .split(" (")
            .next()
            .unwrap_or("curl")
    );
    println!("- wrk does not verify certificates (OpenSSL with SSL_VERIFY_NONE); before any load, each path is checked with a curl that does (`--cacert`: the test CA for direct and squid, the bottle's CA, mitmproxy's CA), and the bottle's with the upstream seeing the injected token");
    println!("- upstream: `bottle-test-upstream` (HTTPS, test CA, ECDSA P-256) in a namespace of its own, reached over a veth; bottle, mitmproxy and squid listen on the bottle's gateway address and verify the upstream's certificate");
    println!(
        "- load average when the bench started: {} (other work on the machine skews every column)",
        loadavg
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    println!("- CPU time: user + system of the proxy process (all threads) from /proc/PID/stat over the run; ratios are bottle / peer (for CPU and memory, lower is better)");
    for c in cols {
        match &c.target {
            Ok(_) => println!("- {}: {}", c.name, c.detail),
            Err(reason) => println!("- {}: **skipped**: {reason}", c.name),
        }
    }
    for c in cols {
        if c.downloads.len() > 1 {
            let runs: Vec<String> = c
                .downloads
                .iter()
                .map(|d| format!("{:.0}", d.0 / 1e6))
                .collect();
            println!("- {} download runs, MB/s: {}", c.name, runs.join(", "));
        }
    }
    for c in cols {
        for f in &c.failures {
            println!("- {} failed: {f}", c.name);
        }
        let runs = [
            ("keep-alive", c.ka),
            ("new connection per request", c.close),
            ("one connection", c.one),
            ("1,000 connections", c.rss_peak.map(|(_, w)| w)),
        ];
        for (what, w) in runs {
            if let Some(errors) = w.and_then(|w| w.error_text()) {
                println!("- {} {what}: wrk reported errors: {errors}", c.name);
            }
        }
    }
}
