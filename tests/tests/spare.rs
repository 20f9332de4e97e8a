//! End-to-end tests of spare networks (`spare_networks`): made ahead of time with an address
//! block, dropping everything until a create takes one, invisible to `ls`, replaced after use,
//! removed as orphans by a restarted agent and by a stopping one.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::{SocketAddr, SocketAddrV4};
use std::process::Command;
use std::time::{Duration, Instant};

use bottle_api::BottleInfo;
use bottle_tests::*;

/// With tcx links (pinned), so that mode, its pins and their removal are covered too; the
/// other tests run the default, clsact.
const EXTRA: &str =
    "spare_networks = 1\ntc_attach = \"tcx\"\nservice_ports = [\"udp/53\", \"tcp/7001\"]";
const ALLOWED: u16 = 7001;

/// Waits (bounded) until the slot has exactly `n` namespaces, and returns them.
fn wait_netns(agent: &Agent, n: usize) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let names = netns_with_prefix(&agent.slot.netns_prefix);
        if names.len() == n {
            return names;
        }
        assert!(
            Instant::now() < deadline,
            "expected {n} namespaces, have {names:?}:\n{}",
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits (bounded) for the agent's one spare to be ready; returns its namespace and id.
fn the_ready_spare(agent: &Agent) -> (String, String) {
    let spare = wait_netns(agent, 1).remove(0);
    let id = spare
        .strip_prefix(&agent.slot.netns_prefix)
        .unwrap()
        .to_string();
    wait_ready(agent, &id);
    (spare, id)
}

/// Waits (bounded) until the agent has handed spare `id` over as ready (its debug log).
fn wait_ready(agent: &Agent, id: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !agent
        .log()
        .lines()
        .any(|l| l.contains("spare network ready") && l.contains(id))
    {
        assert!(
            Instant::now() < deadline,
            "spare {id} never ready:\n{}",
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The default route's gateway inside `netns`.
fn default_gateway(netns: &str) -> std::net::Ipv4Addr {
    let out = Command::new("ip")
        .args(["-n", netns, "-4", "route", "show", "default"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    // "default via 10.250.91.1 dev eth0"
    text.split_whitespace()
        .skip_while(|w| *w != "via")
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no default route in {netns}: {text:?} {out:?}"))
}

fn ls(agent: &Agent) -> Vec<String> {
    let list: Vec<BottleInfo> = serde_json::from_str(&agent.ok(&["ls", "--json"])).unwrap();
    list.into_iter().map(|b| b.name).collect()
}

fn policy_entries(agent: &Agent) -> String {
    let out = Command::new("bpftool")
        .args(["map", "dump", "pinned"])
        .arg(agent.slot.pin_root.join("maps/bottle_policy"))
        .output()
        .unwrap();
    assert!(out.status.success(), "bpftool: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn privileged_spare_network_is_closed_unseen_used_and_never_left_behind() {
    if !privileged("privileged_spare_network_is_closed_unseen_used_and_never_left_behind") {
        return;
    }
    let mut agent = Agent::start(91, EXTRA);
    // One spare: namespace, veth, pinned links; no bottle, and no policy (drops all).
    let (spare, spare_id) = the_ready_spare(&agent);
    assert!(ls(&agent).is_empty());
    assert_eq!(
        links_with_prefix(&agent.slot.veth_prefix),
        vec![format!("{}{spare_id}", agent.slot.veth_prefix)]
    );
    assert!(agent.slot.pin_root.join(&spare_id).exists());
    let policy = policy_entries(&agent);
    assert!(
        policy.contains("Found 0 elements") || policy.trim() == "[]",
        "a spare must have no policy: {policy}"
    );
    assert!(!agent.state_dir().join(&spare_id).exists());
    // Addressed and routed already, yet closed: with a listener on its gateway, nothing from
    // inside gets through.
    let spare_gw = default_gateway(&spare);
    let etc = std::path::Path::new("/etc/netns").join(&spare);
    assert_eq!(
        std::fs::read_to_string(etc.join("resolv.conf")).unwrap(),
        format!("nameserver {spare_gw}\n")
    );
    let gw = SocketAddr::V4(SocketAddrV4::new(spare_gw, ALLOWED));
    let _listener = Listener::bind(gw);
    assert!(!in_netns(&spare, move || tcp_connects(gw, None)));
    // `rm` does not know it.
    assert!(!agent
        .bottle(&["rm", &format!("bottle-{spare_id}")])
        .status
        .success());

    // A create takes it, works like any bottle, and a new spare follows.
    // The spare's address block becomes the bottle's.
    let a = agent.create("alpha");
    assert_eq!(a.id, spare_id);
    assert_eq!(a.netns, spare);
    assert_eq!(a.gateway_address, spare_gw);
    assert!(in_netns(&a.netns, move || tcp_connects(gw, None)));
    let both = wait_netns(&agent, 2);
    let next = both.iter().find(|n| **n != a.netns).unwrap().clone();
    assert_eq!(ls(&agent), ["alpha"]);

    // Removing the bottle leaves only the new spare (its veth and pins go as soon as the
    // kernel has deleted the interface).
    agent.ok(&["rm", "alpha"]);
    assert_eq!(
        netns_with_prefix(&agent.slot.netns_prefix),
        vec![next.clone()]
    );
    let next_veth = format!(
        "{}{}",
        agent.slot.veth_prefix,
        &next[agent.slot.netns_prefix.len()..]
    );
    wait_for(
        "the removed bottle's veth, pins and /etc/netns entry",
        Duration::from_secs(15),
        || {
            links_with_prefix(&agent.slot.veth_prefix) == vec![next_veth.clone()]
                && !agent.slot.pin_root.join(&a.id).exists()
                && !etc.exists()
        },
    );

    // A restarted agent removes the old spare as an orphan and makes a fresh one.
    agent.kill9();
    agent.spawn();
    let fresh = wait_netns(&agent, 1).remove(0);
    assert_ne!(fresh, next);
    assert!(agent.log().contains("removing orphaned network namespace"));
    assert!(ls(&agent).is_empty());

    // A stopping agent removes its spare itself.
    agent.stop();
    assert!(netns_with_prefix(&agent.slot.netns_prefix).is_empty());
    // The stopping agent waited for the kernel to delete the veth.
    assert!(links_with_prefix(&agent.slot.veth_prefix).is_empty());
    let pins: Vec<_> = std::fs::read_dir(&agent.slot.pin_root)
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .collect();
    assert_eq!(pins, ["maps"]);
}

#[test]
fn privileged_spare_never_takes_the_last_free_address_block() {
    if !privileged("privileged_spare_never_takes_the_last_free_address_block") {
        return;
    }
    // Two /30 blocks: the spare takes one while the other stays free.
    let agent = Agent::start(92, "spare_networks = 1\npool = \"10.250.92.0/29\"");
    let (_, spare_id) = the_ready_spare(&agent);
    let a = agent.create("alpha");
    assert_eq!(a.id, spare_id);
    // One block left: no spare may hold it. Had one been made it would be ready by now;
    // the agent logs that it made none.
    wait_for(
        "the agent to decline a spare",
        Duration::from_secs(15),
        || agent.log().contains("no address block to spare"),
    );
    assert_eq!(
        netns_with_prefix(&agent.slot.netns_prefix),
        vec![a.netns.clone()]
    );
    // The last block goes to the next create, and the one after finds the pool exhausted.
    let b = agent.create("beta");
    assert_ne!(b.gateway_address, a.gateway_address);
    let refused = agent.bottle(&["create", "--name", "gamma"]);
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("every address block"),
        "{refused:?}"
    );
    agent.ok(&["rm", "alpha"]);
    agent.ok(&["rm", "beta"]);
}
