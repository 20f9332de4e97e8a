//! `cargo xtask bench`: ours and the baseline measured side by side in one run, printed as
//! Markdown with ratios. Copy the output into docs/benchmarks.md with the command.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::agent::{netns_exec, PrivateAgent};

pub mod git;
pub mod launch;
mod peers;
mod process;
pub mod proxy;

/// The benchmarks `run` knows, besides `all`.
const NAMES: &[&str] = &["datapath", "proxy", "launch", "git"];

/// Refuses an unknown benchmark name before anything is installed or built.
pub fn check_name(which: &str) -> Result<()> {
    if which == "all" || NAMES.contains(&which) {
        return Ok(());
    }
    bail!(
        "unknown benchmark {which:?}; available: {}, all",
        NAMES.join(", ")
    )
}

pub fn includes_proxy(which: &str) -> bool {
    matches!(which, "proxy" | "all")
}

pub fn includes_launch(which: &str) -> bool {
    matches!(which, "launch" | "all")
}

pub fn includes_git(which: &str) -> bool {
    matches!(which, "git" | "all")
}

pub fn run(which: &str) -> Result<()> {
    check_name(which)?;
    match which {
        "datapath" => datapath(),
        "proxy" => proxy::run(),
        "launch" => launch::run(),
        "git" => git::run(),
        _ => {
            datapath()?;
            println!();
            proxy::run()?;
            println!();
            launch::run()?;
            println!();
            git::run()
        }
    }
}

#[expect(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    reason = "p is 0..=100, so the rank is a small non-negative index"
)]
fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

/// One iperf3 run from inside the bottle to the gateway; bits per second received.
fn iperf(netns: &str, gateway: &str, seconds: u32) -> Result<f64> {
    let mut server = Command::new("iperf3")
        .args(["-s", "-1", "-B", gateway, "-p", "5201"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("cannot start iperf3 (cargo xtask deps installs it)")?;
    std::thread::sleep(Duration::from_millis(300));
    let secs = seconds.to_string();
    let (ok, out) = netns_exec(
        netns,
        &["iperf3", "-c", gateway, "-p", "5201", "-t", &secs, "-J"],
    )?;
    let _ = server.wait();
    if !ok {
        bail!("iperf3 client failed: {out}");
    }
    let json: serde_json::Value = serde_json::from_str(&out).context("iperf3 JSON")?;
    json["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .context("iperf3 reported no throughput")
}

fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmRSS")
}

fn datapath() -> Result<()> {
    let agent = PrivateAgent::start("bnch", "10.213.128.0/20", "service_ports = [\"tcp/5201\"]")?;

    // Create/remove latency, through the API, 50 runs each.
    let mut create_ms = Vec::new();
    let mut remove_ms = Vec::new();
    for i in 0..50 {
        let name = format!("lat-{i}");
        let t = Instant::now();
        agent.create(&name)?;
        create_ms.push(t.elapsed().as_secs_f64() * 1000.0);
        let t = Instant::now();
        agent.remove(&name)?;
        remove_ms.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    create_ms.sort_by(f64::total_cmp);
    remove_ms.sort_by(f64::total_cmp);

    // Agent memory with 100 idle bottles.
    let rss_before = rss_kib(agent.pid())?;
    for i in 0..100 {
        agent.create(&format!("idle-{i}"))?;
    }
    let rss_100 = rss_kib(agent.pid())?;
    for i in 0..100 {
        agent.remove(&format!("idle-{i}"))?;
    }

    // Throughput from a bottle (programs attached) and from a plain netns + veth pair set up
    // the same way without programs, runs interleaved so machine noise hits both alike.
    let b = agent.create("tput")?;
    let netns = b["netns"].as_str().context("netns")?.to_string();
    let gw = b["gateway_address"]
        .as_str()
        .context("gateway")?
        .to_string();
    let plain = PlainPair::new("bnchplain", "10.213.144.1", "10.213.144.2")?;
    let mut with = Vec::new();
    let mut without = Vec::new();
    for _ in 0..3 {
        with.push(iperf(&netns, &gw, 5)?);
        without.push(iperf(&plain.netns, &plain.gateway, 5)?);
    }
    drop(plain);
    with.sort_by(f64::total_cmp);
    without.sort_by(f64::total_cmp);
    let (with_med, without_med) = (with[1], without[1]);
    drop(agent);

    let gbit = |b: f64| b / 1e9;
    println!("## datapath (`cargo xtask bench datapath`)\n");
    println!("| measurement | bottle | baseline | ratio |");
    println!("|---|---|---|---|");
    println!(
        "| TCP throughput bottle→gateway, iperf3 5 s, median of 3 | {:.2} Gbit/s (programs attached) | {:.2} Gbit/s (identical veth pair, no programs) | **{:.3}** |",
        gbit(with_med),
        gbit(without_med),
        with_med / without_med
    );
    println!(
        "| create latency, 50 runs (API) | p50 {:.1} ms, p95 {:.1} ms | | |",
        percentile(&create_ms, 50.0),
        percentile(&create_ms, 95.0)
    );
    println!(
        "| remove latency, 50 runs (API) | p50 {:.1} ms, p95 {:.1} ms | | |",
        percentile(&remove_ms, 50.0),
        percentile(&remove_ms, 95.0)
    );
    println!(
        "| agent RSS, 100 idle bottles | {:.1} MiB | {:.1} MiB with none | |",
        rss_100 as f64 / 1024.0,
        rss_before as f64 / 1024.0
    );
    println!(
        "\nraw throughput runs (Gbit/s): attached {:?}, detached {:?}",
        with.iter()
            .map(|b| (gbit(*b) * 100.0).round() / 100.0)
            .collect::<Vec<_>>(),
        without
            .iter()
            .map(|b| (gbit(*b) * 100.0).round() / 100.0)
            .collect::<Vec<_>>()
    );
    Ok(())
}

/// A netns and veth pair configured like a bottle's, with no programs: the baseline.
struct PlainPair {
    netns: String,
    gateway: String,
    host_if: String,
}

impl PlainPair {
    fn new(name: &str, gateway: &str, inside: &str) -> Result<Self> {
        let host_if = format!("{name}h");
        let run = |args: &[&str]| -> Result<()> {
            let out = Command::new(args[0]).args(&args[1..]).output()?;
            if !out.status.success() {
                bail!("{args:?}: {}", String::from_utf8_lossy(&out.stderr));
            }
            Ok(())
        };
        for args in [["netns", "del", name], ["link", "del", host_if.as_str()]] {
            let _ = Command::new("ip").args(args).stderr(Stdio::null()).status();
        }
        let pair = Self {
            netns: name.to_string(),
            gateway: gateway.to_string(),
            host_if: host_if.clone(),
        };
        run(&["ip", "netns", "add", name])?;
        run(&[
            "ip", "link", "add", &host_if, "type", "veth", "peer", "name", "eth0", "netns", name,
        ])?;
        run(&[
            "ip",
            "addr",
            "add",
            &format!("{gateway}/30"),
            "dev",
            &host_if,
        ])?;
        run(&["ip", "link", "set", &host_if, "up"])?;
        run(&[
            "ip",
            "-n",
            name,
            "addr",
            "add",
            &format!("{inside}/30"),
            "dev",
            "eth0",
        ])?;
        run(&["ip", "-n", name, "link", "set", "eth0", "up"])?;
        run(&["ip", "-n", name, "link", "set", "lo", "up"])?;
        Ok(pair)
    }
}

impl Drop for PlainPair {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_if])
            .status();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.netns])
            .status();
    }
}
