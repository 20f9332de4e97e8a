//! The demo: one bottle, one allowed and one blocked connection from inside it, its stats.

use std::io::Write;
use std::net::TcpListener;

use anyhow::{bail, Context, Result};

use crate::agent::{netns_exec, PrivateAgent};

fn step(text: &str) {
    println!("\n== {text}");
}

/// Tries a TCP connection from inside the bottle with bash's /dev/tcp; prints what it read.
fn try_connect(netns: &str, ip: &str, port: u16) -> Result<bool> {
    let script = format!("exec 3<>/dev/tcp/{ip}/{port} && head -c 64 <&3");
    let (ok, out) = netns_exec(netns, &["timeout", "3", "bash", "-c", &script])?;
    println!(
        "  {ip}:{port} -> {}{}",
        if ok { "connected" } else { "blocked" },
        if ok {
            format!(", read {:?}", out.trim())
        } else {
            String::new()
        }
    );
    Ok(ok)
}

pub fn run() -> Result<()> {
    step("starting a private bottle-agent");
    let agent = PrivateAgent::start(
        "demo",
        "10.213.240.0/20",
        "service_ports = [\"udp/53\", \"tcp/53\", \"tcp/80\", \"tcp/443\", \"tcp/3128\"]",
    )?;
    println!(
        "  agent pid {} on {}",
        agent.pid(),
        agent.socket().display()
    );

    step("creating bottles");
    agent.client(&["create", "--name", "demo"])?;
    agent.client(&["create", "--name", "neighbour"])?;
    let demo = agent.create_info("demo")?;
    let neighbour = agent.create_info("neighbour")?;
    agent.client(&["inspect", "demo"])?;

    step("a service on the gateway's port 443 (a stand-in listener here; the egress proxy takes this port)");
    let gw = demo["gateway_address"]
        .as_str()
        .context("no gateway")?
        .to_string();
    let listener = TcpListener::bind(format!("{gw}:443")).context("bind gateway:443")?;
    std::thread::spawn(move || {
        for mut conn in listener.incoming().flatten() {
            let _ = conn.write_all(b"hello from the gateway\n");
        }
    });

    step("from inside the bottle");
    let netns = demo["netns"].as_str().context("no netns")?;
    let allowed = try_connect(netns, &gw, 443)?;
    let denied_port = try_connect(netns, &gw, 22)?;
    let other = neighbour["bottle_address"].as_str().context("no address")?;
    let other_bottle = try_connect(netns, other, 443)?;
    if !allowed || denied_port || other_bottle {
        bail!("the datapath did not behave: allowed={allowed} denied_port={denied_port} other_bottle={other_bottle}");
    }

    step("what the kernel counted");
    agent.client(&["stats", "demo"])?;

    step("cleaning up");
    agent.client(&["rm", "demo"])?;
    agent.client(&["rm", "neighbour"])?;
    drop(agent);
    println!("  done: no namespace, veth, pin or state left");
    Ok(())
}

impl PrivateAgent {
    /// A bottle's metadata by name.
    pub fn create_info(&self, name: &str) -> Result<serde_json::Value> {
        let (status, body) = self.api("GET", &format!("/v1/bottles/{name}"), "")?;
        if status != 200 {
            bail!("inspect {name}: HTTP {status}: {body}");
        }
        Ok(serde_json::from_str(&body)?)
    }
}
