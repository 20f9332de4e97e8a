//! End-to-end: what a workload inside a bottle can and cannot do, seen from inside (busybox
//! in the test image) and confirmed from outside by the datapath's counters. Slot 54.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::{Command, Output};
use std::sync::mpsc;
use std::time::Duration;

use bottle_tests::*;

const SLOT: u8 = 54;

fn bottle(agent: &Agent, args: &[&str]) -> Output {
    let (tx, rx) = mpsc::channel();
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let socket = agent.socket();
    let shown = args.clone();
    std::thread::spawn(move || {
        let out = Command::new(bin_dir().join("bottle"))
            .args(&args)
            .env(bottle_api::HOST_ENV, socket)
            .output()
            .unwrap();
        let _ = tx.send(out);
    });
    rx.recv_timeout(Duration::from_secs(90))
        .unwrap_or_else(|_| panic!("bottle {shown:?} did not finish:\n{}", agent.log()))
}

#[test]
fn privileged_workload_sees_only_itself_and_reaches_only_the_gateway() {
    if !privileged("privileged_workload_sees_only_itself_and_reaches_only_the_gateway") {
        return;
    }
    let internet = Internet::start(SLOT, &["example.test"]);
    let agent = Agent::start(SLOT, "");
    let image = test_image();
    let outside = internet.addr.to_string();
    // Each probe prints one line; `nc` sends a line and ends when the peer closes (the proxy
    // drops a connection that is not TLS) or fails to connect.
    let script = format!(
        "gw=$(sed -n 's/^nameserver //p' /etc/resolv.conf); \
         echo \"pids=$(ls /proc | grep -c '^[0-9]*$')\"; \
         echo \"pid1=$(tr '\\0' ' ' < /proc/1/cmdline)\"; \
         echo x | nc -w 3 {outside} 443 && echo outside=open || echo outside=closed; \
         echo x | nc -w 3 $gw 22 && echo gw22=open || echo gw22=closed; \
         echo x | nc -w 3 $gw 443 && echo gw443=open || echo gw443=closed; \
         ping -c 1 -W 1 $gw >/dev/null 2>/tmp/ping.err && echo ping=ok \
           || echo \"ping=refused $(cat /tmp/ping.err)\"; \
         mount -t tmpfs none /mnt 2>/dev/null && echo mount=ok || echo mount=refused; \
         grep -E '^(CapEff|Seccomp):' /proc/self/status"
    );
    let run = bottle(
        &agent,
        &[
            "run", "--name", "conf", "--image", &image, "--", "sh", "-c", &script,
        ],
    );
    let out = String::from_utf8_lossy(&run.stdout).into_owned();
    assert_eq!(run.status.code(), Some(0), "{run:?}\n{}", agent.log());
    let value = |key: &str| -> String {
        out.lines()
            .find_map(|l| l.strip_prefix(&format!("{key}=")))
            .unwrap_or_else(|| panic!("{key} missing:\n{out}"))
            .to_owned()
    };
    // Its own processes only: the shell (pid 1), and what it runs now.
    let pids: u32 = value("pids").parse().unwrap();
    assert!(pids <= 4, "host processes visible? {pids} pids:\n{out}");
    assert!(value("pid1").starts_with("sh -c"), "{out}");
    // Only the gateway's services: the outside address and a gateway port that is not a
    // service are closed, the proxy is open.
    assert_eq!(value("outside"), "closed", "{out}");
    assert_eq!(value("gw22"), "closed", "{out}");
    assert_eq!(value("gw443"), "open", "{out}");
    // No raw sockets (no capabilities), no mounts.
    assert!(value("ping").starts_with("refused"), "{out}");
    assert_eq!(value("mount"), "refused", "{out}");
    assert!(out.contains("CapEff:\t0000000000000000"), "{out}");
    assert!(out.contains("Seccomp:\t2"), "{out}");
    // The kernel counted each refused connection under its own reason.
    let stats = agent.stats("conf");
    assert!(stats.kernel.drops.not_gateway > 0, "{stats:?}");
    assert!(stats.kernel.drops.port_denied > 0, "{stats:?}");
    agent.ok(&["rm", "-f", "conf"]);
}
