//! End-to-end tests of the foundation: the real agent, real namespaces, real eBPF.
//! Each test uses its own slot (pool, name prefixes, pin root) so none can disturb another.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::process::Command;

use bottle_api::BottleInfo;
use bottle_tests::*;

/// Test agents allow one test-only port besides DNS; 7002 is never allowed.
const EXTRA: &str = "service_ports = [\"udp/53\", \"tcp/7001\"]";
const ALLOWED: u16 = 7001;
const DENIED: u16 = 7002;

fn at(addr: Ipv4Addr, port: u16) -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(addr, port))
}

/// Listeners on the bottle's gateway (host side) for the allowed and the denied port.
fn gateway_listeners(b: &BottleInfo) -> (Listener, Listener) {
    (
        Listener::bind(at(b.gateway_address, ALLOWED)),
        Listener::bind(at(b.gateway_address, DENIED)),
    )
}

fn connects_from(b: &BottleInfo, dest: SocketAddr) -> bool {
    in_netns(&b.netns, move || tcp_connects(dest, None))
}

fn greeting_from(b: &BottleInfo, dest: SocketAddr) -> Option<String> {
    in_netns(&b.netns, move || greeting(dest))
}

#[test]
fn privileged_allowed_port_works_and_each_violation_bumps_its_counter() {
    if !privileged("privileged_allowed_port_works_and_each_violation_bumps_its_counter") {
        return;
    }
    let agent = Agent::start(11, EXTRA);
    let a = agent.create("alpha");
    let b = agent.create("beta");
    let _gw = gateway_listeners(&a);

    // Allowed: the gateway on an allowed port, end to end, data both ways.
    assert_eq!(
        greeting_from(&a, at(a.gateway_address, ALLOWED)).as_deref(),
        Some("ok")
    );
    let s = agent.stats("alpha");
    assert!(
        s.kernel.from_bottle.packets >= 3 && s.kernel.to_bottle.packets >= 3,
        "{s:?}"
    );
    assert!(s.kernel.from_bottle.bytes > 0 && s.kernel.to_bottle.bytes > 0);

    // Denied port on the gateway.
    assert!(!connects_from(&a, at(a.gateway_address, DENIED)));
    assert!(agent.stats("alpha").kernel.drops.port_denied >= 1);

    // Another bottle's address, with something listening there.
    let beta_addr = b.bottle_address;
    let _in_beta = in_netns(&b.netns, move || Listener::bind(at(beta_addr, ALLOWED)));
    let before = agent.stats("alpha").kernel.drops.not_gateway;
    assert!(!connects_from(&a, at(beta_addr, ALLOWED)));
    assert!(agent.stats("alpha").kernel.drops.not_gateway > before);

    // A host address outside the bottle: a dummy interface this test made, with a listener.
    // Not named with the slot's veth prefix, so the agent never takes it for its own.
    let host_addr = Ipv4Addr::new(10, 251, 11, 1);
    let _link = HostLink::new("x11host", "10.251.11.1/32");
    let _host = Listener::bind(at(host_addr, ALLOWED));
    assert_eq!(
        greeting(at(host_addr, ALLOWED)).as_deref(),
        Some("ok"),
        "host listener works"
    );
    let before = agent.stats("alpha").kernel.drops.not_gateway;
    assert!(!connects_from(&a, at(host_addr, ALLOWED)));
    assert!(agent.stats("alpha").kernel.drops.not_gateway > before);

    // A spoofed source: beta's address added inside alpha and used as the source. (Not the
    // /30's broadcast address: the kernel would quietly pick the real source for that.)
    let spoof = b.bottle_address;
    let spoof_cidr = format!("{spoof}/32");
    assert!(
        netns_exec(&a.netns, &["ip", "addr", "add", &spoof_cidr, "dev", "eth0"])
            .status
            .success()
    );
    let gw = at(a.gateway_address, ALLOWED);
    assert!(!in_netns(&a.netns, move || tcp_connects(gw, Some(spoof))));
    assert!(agent.stats("alpha").kernel.drops.spoofed >= 1);

    // IPv6: a hostile bottle re-enables it and tries the gateway's link-local neighbourhood.
    let out = netns_exec(
        &a.netns,
        &["sysctl", "-w", "net.ipv6.conf.eth0.disable_ipv6=0"],
    );
    assert!(out.status.success(), "{out:?}");
    let _ = netns_exec(
        &a.netns,
        &[
            "sh",
            "-c",
            "ip -6 addr add fd00::2/64 dev eth0 nodad; ip -6 route add default dev eth0; true",
        ],
    );
    let dest: SocketAddr = "[fd00::1]:7001".parse().unwrap();
    assert!(!connects_from(&a, dest));
    assert!(
        agent.stats("alpha").kernel.drops.ipv6 >= 1,
        "{:?}",
        agent.stats("alpha")
    );

    // The allowed path still works after all of that.
    assert_eq!(greeting_from(&a, gw).as_deref(), Some("ok"));
}

#[test]
fn privileged_freeze_and_kill_switch_drop_everything_and_undo() {
    if !privileged("privileged_freeze_and_kill_switch_drop_everything_and_undo") {
        return;
    }
    let agent = Agent::start(12, EXTRA);
    let a = agent.create("alpha");
    let _gw = gateway_listeners(&a);
    let gw = at(a.gateway_address, ALLOWED);
    assert!(connects_from(&a, gw));

    agent.ok(&["freeze", "alpha"]);
    assert!(agent.ok(&["ls"]).contains("frozen"));
    assert!(!connects_from(&a, gw));
    assert!(agent.stats("alpha").kernel.drops.frozen >= 1);
    agent.ok(&["unfreeze", "alpha"]);
    assert!(connects_from(&a, gw));

    agent.ok(&["kill-switch", "on"]);
    assert!(agent.ok(&["kill-switch", "status"]).contains("engaged"));
    assert!(!connects_from(&a, gw));
    assert!(agent.stats("alpha").kernel.drops.kill_switch >= 1);
    // A bottle created while the switch is on is dropped too.
    let b = agent.create("beta");
    let _gw_b = gateway_listeners(&b);
    assert!(!connects_from(&b, at(b.gateway_address, ALLOWED)));
    agent.ok(&["kill-switch", "off"]);
    assert!(agent.ok(&["kill-switch", "status"]).contains("released"));
    assert!(connects_from(&a, gw));
    assert!(connects_from(&b, at(b.gateway_address, ALLOWED)));
}

#[test]
fn privileged_agent_sigkill_keeps_enforcement_and_restart_readopts() {
    if !privileged("privileged_agent_sigkill_keeps_enforcement_and_restart_readopts") {
        return;
    }
    let mut agent = Agent::start(13, EXTRA);
    let a = agent.create("alpha");
    agent.ok(&["freeze", "alpha"]);
    agent.ok(&["unfreeze", "alpha"]);
    let _gw = gateway_listeners(&a);
    let gw = at(a.gateway_address, ALLOWED);
    assert!(connects_from(&a, gw));
    assert!(!connects_from(&a, at(a.gateway_address, DENIED)));
    let before = agent.stats("alpha");

    agent.kill9();
    // No agent: enforcement stays (pinned links), and so does the allowed path.
    assert!(!connects_from(&a, at(a.gateway_address, DENIED)));
    assert!(connects_from(&a, gw));

    agent.spawn();
    let listed: Vec<BottleInfo> = serde_json::from_str(&agent.ok(&["ls", "--json"])).unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0], a, "re-adopted bottle is unchanged");
    let after = agent.stats("alpha");
    assert!(
        after.kernel.drops.port_denied > before.kernel.drops.port_denied,
        "drops during the outage were counted: {after:?}"
    );
    assert!(after.kernel.from_bottle.packets > before.kernel.from_bottle.packets);
    assert!(agent.log().contains("re-adopted"));
    // Still enforced and still working under the new agent.
    assert!(!connects_from(&a, at(a.gateway_address, DENIED)));
    assert!(connects_from(&a, gw));

    // A frozen bottle stays frozen across a crash.
    agent.ok(&["freeze", "alpha"]);
    agent.kill9();
    assert!(!connects_from(&a, gw));
    agent.spawn();
    assert!(agent.ok(&["inspect", "alpha"]).contains("frozen"));
    assert!(!connects_from(&a, gw));
}

#[test]
fn privileged_restart_removes_orphans() {
    if !privileged("privileged_restart_removes_orphans") {
        return;
    }
    let mut agent = Agent::start(14, EXTRA);
    let a = agent.create("alpha");
    let b = agent.create("beta");
    agent.kill9();
    // beta loses its namespace behind the agent's back; a stray namespace and veth appear.
    assert!(Command::new("ip")
        .args(["netns", "delete", &b.netns])
        .status()
        .unwrap()
        .success());
    assert!(Command::new("ip")
        .args(["netns", "add", "bttest14-deadbeef"])
        .status()
        .unwrap()
        .success());
    assert!(Command::new("ip")
        .args([
            "link",
            "add",
            "t14-0badf00d",
            "type",
            "veth",
            "peer",
            "name",
            "t14-0badf00dp"
        ])
        .status()
        .unwrap()
        .success());
    std::fs::create_dir_all(agent.slot.pin_root.join("feedface")).unwrap();
    agent.spawn();
    let log = agent.log();
    assert!(log.contains("removing orphaned bottle state"), "{log}");
    assert!(log.contains("removing orphaned network namespace"), "{log}");
    assert!(log.contains("removing orphaned veth"), "{log}");
    assert!(log.contains("removing orphaned datapath pins"), "{log}");
    assert_eq!(netns_with_prefix("bttest14-"), vec![a.netns.clone()]);
    assert_eq!(links_with_prefix("t14-"), vec![a.host_interface.clone()]);
    assert!(!agent.state_dir().join(&b.id).exists());
    assert!(!agent.slot.pin_root.join(&b.id).exists());
    assert!(!agent.slot.pin_root.join("feedface").exists());
    let names: Vec<BottleInfo> = serde_json::from_str(&agent.ok(&["ls", "--json"])).unwrap();
    assert_eq!(
        names.iter().map(|b| b.name.as_str()).collect::<Vec<_>>(),
        ["alpha"]
    );
}

fn assert_nothing_left(agent: &Agent) {
    wait_links_gone(&agent.slot.veth_prefix);
    assert!(
        netns_with_prefix(&agent.slot.netns_prefix).is_empty(),
        "netns left"
    );
    assert!(
        links_with_prefix(&agent.slot.veth_prefix).is_empty(),
        "veth left"
    );
    let pins: Vec<_> = std::fs::read_dir(&agent.slot.pin_root)
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .collect();
    assert_eq!(pins, ["maps"], "only the shared maps stay pinned");
    // Removed state is moved into the state directory's trash and deleted from there.
    wait_trash_empty(agent);
    let state: Vec<_> = std::fs::read_dir(agent.state_dir())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name() != "trash")
        .collect();
    assert!(state.is_empty(), "state left: {state:?}");
    // The drains delete /etc/netns entries before they wait for the veths (gone above).
    let etc: Vec<_> = std::fs::read_dir("/etc/netns")
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().into_string().ok())
                .filter(|n| n.starts_with(&agent.slot.netns_prefix))
                .collect()
        })
        .unwrap_or_default();
    assert!(etc.is_empty(), "/etc/netns entries left: {etc:?}");
    for map in ["bottle_policy", "bottle_stats"] {
        let out = Command::new("bpftool")
            .args(["map", "dump", "pinned"])
            .arg(agent.slot.pin_root.join("maps").join(map))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "bpftool: {out:?}");
        assert!(
            text.contains("Found 0 elements") || text.trim() == "[]",
            "{map} not empty: {text}"
        );
    }
}

#[test]
fn privileged_rm_and_100_create_remove_loop_leave_nothing_behind() {
    if !privileged("privileged_rm_and_100_create_remove_loop_leave_nothing_behind") {
        return;
    }
    let agent = Agent::start(15, EXTRA);
    let a = agent.create("alpha");
    assert!(std::path::Path::new("/run/netns").join(&a.netns).exists());
    agent.ok(&["rm", "alpha"]);
    assert_nothing_left(&agent);
    for round in 0..2 {
        let names: Vec<String> = (0..50).map(|i| format!("b{round}-{i}")).collect();
        for name in &names {
            agent.create(name);
        }
        let listed: Vec<BottleInfo> = serde_json::from_str(&agent.ok(&["ls", "--json"])).unwrap();
        assert_eq!(listed.len(), 50);
        for name in &names {
            agent.ok(&["rm", name]);
        }
    }
    assert_nothing_left(&agent);
}

#[test]
fn privileged_other_uid_cannot_see_or_remove_your_bottle() {
    if !privileged("privileged_other_uid_cannot_see_or_remove_your_bottle") {
        return;
    }
    let agent = Agent::start(16, EXTRA);
    agent.create("rootbox");
    let theirs = agent.bottle_as(Some(1000), &["create", "--name", "userbox", "--json"]);
    assert!(theirs.status.success(), "{theirs:?}");
    let mine: BottleInfo = serde_json::from_slice(&theirs.stdout).unwrap();
    assert_eq!(mine.owner_uid, 1000);

    let ls = agent.bottle_as(Some(1000), &["ls", "--json"]);
    let seen: Vec<BottleInfo> = serde_json::from_slice(&ls.stdout).unwrap();
    assert_eq!(
        seen.iter().map(|b| b.name.as_str()).collect::<Vec<_>>(),
        ["userbox"]
    );
    for args in [
        &["inspect", "rootbox"][..],
        &["rm", "rootbox"],
        &["stats", "rootbox"],
        &["freeze", "rootbox"],
    ] {
        let out = agent.bottle_as(Some(1000), args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("belongs to another user"),
            "{out:?}"
        );
    }
    let ks = agent.bottle_as(Some(1000), &["kill-switch", "on"]);
    assert!(
        String::from_utf8_lossy(&ks.stderr).contains("only root"),
        "{ks:?}"
    );
    // uid 1001 cannot touch uid 1000's bottle either; root sees both.
    let out = agent.bottle_as(Some(1001), &["rm", "userbox"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(agent.ok(&["ls"]).lines().count(), 3);
    // The API answers 403 with a JSON error.
    let (status, body) =
        agent.raw(b"GET /v1/kill-switch HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    assert_eq!(status, 200, "root may read the kill switch: {body}");
    let out = agent.bottle_as(Some(1000), &["rm", "userbox"]);
    assert!(out.status.success());
}

#[test]
fn privileged_bad_input_gets_clear_errors_and_leaves_nothing() {
    if !privileged("privileged_bad_input_gets_clear_errors_and_leaves_nothing") {
        return;
    }
    // A /29 pool with /30 blocks holds exactly two bottles.
    let agent = Agent::start(17, &format!("{EXTRA}\npool = \"10.250.17.0/29\""));
    let post = |body: &str| {
        agent.raw(format!(
            "POST /v1/bottles HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ).as_bytes())
    };
    let (status, body) = post(r#"{"name":"ok","colour":"red"}"#);
    assert_eq!(status, 400);
    let err: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(err["code"], "bad_request");
    assert!(err["message"]
        .as_str()
        .unwrap()
        .contains("unknown field `colour`"));

    let (status, body) = post(r#"{"name":"Bad_Name"}"#);
    assert_eq!(
        (
            status,
            serde_json::from_str::<serde_json::Value>(&body).unwrap()["code"].clone()
        ),
        (400, "invalid_name".into())
    );
    let (status, _) = post("{not json");
    assert_eq!(status, 400);

    let big = format!("{{\"name\":\"{}\"}}", "a".repeat(2 * 1024 * 1024));
    let (status, body) = post(&big);
    assert_eq!(status, 413, "{body}");
    assert!(body.contains("body_too_large"));

    let (status, body) =
        agent.raw(b"GET /v2/bottles HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    assert_eq!(status, 404);
    assert!(body.contains("no_such_endpoint"));

    let out = agent.bottle(&["create", "--name", "9lives"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("must start with a lowercase letter"));
    let out = agent.bottle(&["frobnicate"]);
    assert_eq!(out.status.code(), Some(2), "usage errors exit 2");

    agent.create("one");
    let out = agent.bottle(&["create", "--name", "one"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("already exists"));
    agent.create("two");
    let out = agent.bottle(&["create", "--name", "three"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("every address block in 10.250.17.0/29 is in use"),
        "{out:?}"
    );
    // The failed creates left nothing: exactly two bottles' worth of objects.
    assert_eq!(netns_with_prefix("bttest17-").len(), 2);
    assert_eq!(links_with_prefix("t17-").len(), 2);
    assert_eq!(std::fs::read_dir(agent.state_dir()).unwrap().count(), 2);
    let out = agent.bottle(&["inspect", "ghost"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("no bottle named \"ghost\""));
}

#[test]
fn privileged_agent_refuses_overlapping_pool_and_missing_privileges() {
    if !privileged("privileged_agent_refuses_overlapping_pool_and_missing_privileges") {
        return;
    }
    // A host route inside the pool the agent is told to use.
    let _link = HostLink::new("x18host", "10.251.18.1/32");
    let route = Command::new("ip")
        .args(["route", "add", "10.250.18.64/26", "dev", "x18host"])
        .status()
        .unwrap();
    assert!(route.success());
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("agent.toml");
    std::fs::write(&config, format!(
        "socket = \"{0}/s\"\nstate_dir = \"{0}/state\"\nrun_dir = \"{0}/run\"\nbpf_pin_root = \"/sys/fs/bpf/bottle-test-18\"\npool = \"10.250.18.0/24\"\nnetns_prefix = \"bttest18-\"\nveth_prefix = \"t18-\"\n",
        dir.path().display()
    )).unwrap();
    let out = Command::new(bin_dir().join("bottle-agent"))
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(15), "{text}");
    assert!(
        text.contains("overlaps host routes: 10.250.18.64/26"),
        "{text}"
    );
    let _ = std::fs::remove_dir_all("/sys/fs/bpf/bottle-test-18");

    // Without root: one line per missing capability, nothing started.
    use std::os::unix::process::CommandExt;
    let out = Command::new(bin_dir().join("bottle-agent"))
        .arg("--config")
        .arg(&config)
        .uid(1000)
        .gid(65534)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(11), "{text}");
    for cap in ["CAP_NET_ADMIN", "CAP_SYS_ADMIN", "CAP_BPF"] {
        assert!(
            text.contains(&format!("missing {cap}: run bottle-agent as root")),
            "{text}"
        );
    }
    // A typo in the config is named.
    std::fs::write(&config, "pool = \"10.250.18.0/24\"\nsocket_grup = \"x\"\n").unwrap();
    let out = Command::new(bin_dir().join("bottle-agent"))
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(10));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown field `socket_grup`"));
}
