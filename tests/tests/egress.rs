//! End-to-end tests of the egress services: real DNS, real TLS interception with the
//! bottle's CA, real upstream servers in a namespace this test made, curl and our probe
//! inside the bottle.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{Read, Write};
use std::net::{SocketAddr, SocketAddrV4, TcpStream};
use std::time::Duration;

use bottle_api::BottleInfo;
use bottle_tests::*;

const TOKEN: &str = "tok-e2e-0123456789abcdef";
const HOSTS: &[&str] = &["api.example.com", "other.example.com", "pass.example.com"];

struct Setup {
    agent: Agent,
    internet: Internet,
    bottle: BottleInfo,
    ca: std::path::PathBuf,
}

fn egress_yaml(internet: &Internet) -> String {
    let mut yaml = String::from("egress:\n  routes:\n");
    yaml.push_str(&internet.route("api.example.com").replacen(
        "\n      connect_to",
        "\n      path_allowlist: [\"/echo\", \"/sse\", \"/download\", \"/upload\", \"/ws\"]\n      auth: {scheme: Bearer, token_ref: E2E_TOKEN}\n      connect_to",
        1,
    ));
    yaml.push_str(&internet.route("other.example.com"));
    yaml.push_str(
        &internet
            .route("pass.example.com")
            .replace("pipelock: {", "pipelock: {tls_passthrough: true, "),
    );
    yaml
}

fn setup(slot: u8) -> Setup {
    let internet = Internet::start(slot, HOSTS);
    let agent = Agent::start(slot, &Agent::trust_line(&internet));
    let file = agent.dir.path().join("egress.yaml");
    std::fs::write(&file, egress_yaml(&internet)).unwrap();
    let out = agent.bottle_env(
        &[
            "create",
            "--name",
            "web",
            "--egress",
            file.to_str().unwrap(),
            "--json",
        ],
        &[("E2E_TOKEN", TOKEN)],
    );
    assert!(out.status.success(), "{out:?}\n{}", agent.log());
    let bottle: BottleInfo = serde_json::from_slice(&out.stdout).unwrap();
    let ca = agent.bottle_ca("web");
    Setup {
        agent,
        internet,
        bottle,
        ca,
    }
}

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

#[test]
fn privileged_routes_credentials_dns_and_dlp() {
    if !privileged("privileged_routes_credentials_dns_and_dlp") {
        return;
    }
    let s = setup(31);
    let ns = &s.bottle.netns;
    let ca = s.ca.to_str().unwrap();

    // Allowed host: the upstream sees the route's credential, never the bottle's.
    let (rc, body) = curl(
        ns,
        &[
            "--cacert",
            ca,
            "-H",
            "Authorization: Bearer bottle-placeholder",
            "https://api.example.com/echo/x?q=1",
        ],
    );
    assert_eq!(rc, 0, "{body}");
    let echo = json(&body);
    assert_eq!(echo["headers"]["authorization"], format!("Bearer {TOKEN}"));
    assert!(!body.contains("bottle-placeholder"));
    // The same over HTTP/2 with our probe.
    let out = netns_run_ours(
        ns,
        "bottle-probe",
        &["--ca", ca, "h2", "https://api.example.com/echo/h2"],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("version=HTTP/2.0") && text.contains(TOKEN),
        "{text}"
    );

    // A name not in the allowlist does not resolve, and its address dialled directly is
    // dropped by the datapath.
    let (rc, err) = curl(ns, &["--cacert", ca, "https://evil.example.net/"]);
    assert_eq!(rc, 6, "NXDOMAIN expected: {err}");
    let before = s.agent.stats("web").kernel.drops.not_gateway;
    let upstream = SocketAddr::V4(SocketAddrV4::new(s.internet.addr, 443));
    assert!(!in_netns(ns, move || tcp_connects(upstream, None)));
    assert!(s.agent.stats("web").kernel.drops.not_gateway > before);

    // Domain fronting and paths outside the allowlist.
    let (_, body) = curl(
        ns,
        &[
            "--cacert",
            ca,
            "-H",
            "Host: other.example.com",
            "https://api.example.com/echo",
        ],
    );
    assert_eq!(json(&body)["error"], "host_mismatch", "{body}");
    let (_, body) = curl(
        ns,
        &[
            "--cacert",
            ca,
            "-w",
            "%{http_code}",
            "https://api.example.com/admin",
        ],
    );
    assert!(
        body.contains("path_not_allowed") && body.ends_with("403"),
        "{body}"
    );

    // DLP: a planted AWS key, and the route's own token sent to another allowed host.
    let (_, body) = curl(
        ns,
        &[
            "--cacert",
            ca,
            "-w",
            "%{http_code}",
            "-d",
            "aws_key=AKIAIOSFODNN7EXAMPLE",
            "https://other.example.com/echo",
        ],
    );
    assert!(
        body.contains("\"rule\":\"aws-access-key-id\"") && body.ends_with("403"),
        "{body}"
    );
    assert!(
        !body.contains("AKIAIOSFODNN7EXAMPLE"),
        "the refusal never echoes the secret"
    );
    let (_, body) = curl(
        ns,
        &[
            "--cacert",
            ca,
            "-d",
            &format!("stolen={TOKEN}"),
            "https://other.example.com/echo",
        ],
    );
    assert!(body.contains("route-secret:E2E_TOKEN"), "{body}");
    // In a header, and gzip-compressed in a body, too.
    let (_, body) = curl(
        ns,
        &[
            "--cacert",
            ca,
            "-H",
            &format!("X-Leak: {TOKEN}"),
            "https://other.example.com/echo",
        ],
    );
    assert!(body.contains("\"error\":\"dlp\""), "{body}");

    let audit = s.agent.audit("web");
    assert!(
        audit.contains("\"decision\":\"dlp_blocked\"") && audit.contains("aws-access-key-id"),
        "{audit}"
    );
    assert!(
        !audit.contains("AKIAIOSFODNN7EXAMPLE") && !audit.contains(TOKEN),
        "audit holds no secret"
    );
    assert!(!audit.contains("q=1"), "audit paths carry no query");
    assert!(!s.agent.log().contains(TOKEN), "agent log holds no secret");

    // Explicit proxy: CONNECT to an allowed host works; to another host is refused.
    let (rc, body) = curl(
        ns,
        &[
            "--cacert",
            ca,
            "-x",
            &format!("http://{}:3128", s.bottle.gateway_address),
            "https://api.example.com/echo/p",
        ],
    );
    assert_eq!(rc, 0, "{body}");
    assert_eq!(
        json(&body)["headers"]["authorization"],
        format!("Bearer {TOKEN}")
    );
    let (rc, body) = curl(
        ns,
        &[
            "--cacert",
            ca,
            "-x",
            &format!("http://{}:3128", s.bottle.gateway_address),
            "https://evil.example.net/",
        ],
    );
    assert_ne!(rc, 0, "{body}");
    // Plain HTTP on port 80 by Host.
    let (rc, body) = curl(ns, &["http://other.example.com/echo/plain"]);
    assert_eq!(rc, 0, "{body}");
    assert_eq!(json(&body)["path"], "/echo/plain");

    let stats = s.agent.stats("web");
    assert!(
        stats.l7.dns.refused >= 1 && stats.l7.dns.answered >= 1,
        "{stats:?}"
    );
    assert!(
        stats
            .l7
            .dlp_hits
            .get("aws-access-key-id")
            .copied()
            .unwrap_or(0)
            >= 1
    );
    assert!(stats
        .l7
        .http
        .iter()
        .any(|h| h.host == "api.example.com" && h.decision == "allowed" && h.requests >= 2));
}

#[test]
fn privileged_passthrough_sse_websocket_and_live_policy_swap() {
    if !privileged("privileged_passthrough_sse_websocket_and_live_policy_swap") {
        return;
    }
    let s = setup(32);
    let ns = &s.bottle.netns;
    let ca = s.ca.to_str().unwrap();

    // Passthrough: the bottle sees the upstream's own certificate (not our CA's).
    let real_ca = s.internet.ca_pem();
    let (rc, body) = curl(
        ns,
        &[
            "--cacert",
            real_ca.to_str().unwrap(),
            "https://pass.example.com/echo/pt",
        ],
    );
    assert_eq!(rc, 0, "{body}");
    assert_eq!(json(&body)["path"], "/echo/pt");
    let (rc, _) = curl(ns, &["--cacert", ca, "https://pass.example.com/echo/pt"]);
    assert_ne!(rc, 0, "our CA did not sign what the bottle got");

    // SSE: the first event arrives long before the upstream closes.
    let out = netns_run_ours(
        ns,
        "bottle-probe",
        &[
            "--ca",
            ca,
            "sse",
            "https://api.example.com/sse?n=3&delay_ms=700",
        ],
    );
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let field = |k: &str| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix(k))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{k} missing: {text}"))
    };
    let (first, total) = (field("first_event_ms="), field("total_ms="));
    assert!(
        first * 2 < total,
        "first event at {first} ms of {total} ms: buffered?"
    );

    // WebSocket echo through the proxy.
    let out = netns_run_ours(
        ns,
        "bottle-probe",
        &["--ca", ca, "ws", "wss://api.example.com/ws"],
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("echo ok"),
        "{out:?}"
    );

    // Replace the policy while a 300 MB download runs: the download completes intact, new
    // requests to the removed host are refused.
    let netns = ns.clone();
    let ca_owned = ca.to_string();
    let download = std::thread::spawn(move || {
        curl(
            &netns,
            &[
                "--cacert",
                &ca_owned,
                "--max-time",
                "120",
                "-o",
                "/dev/null",
                "-w",
                "%{size_download} %{http_code}",
                "https://api.example.com/download?bytes=300000000",
            ],
        )
    });
    std::thread::sleep(Duration::from_millis(300));
    let file = s.agent.dir.path().join("narrow.yaml");
    std::fs::write(
        &file,
        format!("routes:\n{}", s.internet.route("other.example.com")),
    )
    .unwrap();
    let out = s
        .agent
        .bottle(&["policy", "set", "web", file.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    let (rc, result) = download.join().unwrap();
    assert_eq!(
        (rc, result.as_str()),
        (0, "300000000 200"),
        "download survived the swap"
    );
    let (rc, _) = curl(ns, &["--cacert", ca, "https://api.example.com/echo"]);
    assert_eq!(rc, 6, "api.example.com no longer resolves");
    let (rc, body) = curl(
        ns,
        &["--cacert", ca, "https://other.example.com/echo/after"],
    );
    assert_eq!(rc, 0, "{body}");
}

/// Sends raw bytes to gateway:port from inside the bottle; returns what came back (until
/// close or timeout).
fn raw_exchange(b: &BottleInfo, port: u16, bytes: Vec<u8>) -> String {
    raw_exchange_closed(b, port, bytes).0
}

/// Like [`raw_exchange`], and whether the agent closed the connection (end of stream) rather
/// than our 15 s read timeout ending the wait.
fn raw_exchange_closed(b: &BottleInfo, port: u16, bytes: Vec<u8>) -> (String, bool) {
    let dest = SocketAddr::V4(SocketAddrV4::new(b.gateway_address, port));
    in_netns(&b.netns, move || {
        let mut s = TcpStream::connect_timeout(&dest, Duration::from_secs(2)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
        let _ = s.write_all(&bytes);
        let mut out = Vec::new();
        let closed_by_peer = s.read_to_end(&mut out).is_ok();
        (String::from_utf8_lossy(&out).into_owned(), closed_by_peer)
    })
}

#[test]
fn privileged_hostile_input_is_refused_without_hurting_others() {
    if !privileged("privileged_hostile_input_is_refused_without_hurting_others") {
        return;
    }
    let s = setup(33);
    let b = &s.bottle;
    let status = |resp: &str| resp.split_whitespace().nth(1).unwrap_or("").to_string();

    // Request smuggling shapes on plain HTTP. CL+TE: a second request hidden behind the
    // chunked terminator must never be served (one response, then the connection closes).
    let cl_te = "POST /echo/first HTTP/1.1\r\nHost: other.example.com\r\nContent-Length: 60\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /echo/smuggled HTTP/1.1\r\nHost: other.example.com\r\n\r\n";
    let resp = raw_exchange(b, 80, cl_te.into());
    assert!(
        !resp.contains("/echo/smuggled"),
        "smuggled request served: {resp}"
    );
    assert_eq!(
        resp.matches("HTTP/1.1 ").count(),
        1,
        "exactly one response: {resp}"
    );
    let dup_cl = "POST /echo HTTP/1.1\r\nHost: other.example.com\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\nabcde";
    assert_eq!(
        status(&raw_exchange(b, 80, dup_cl.into())),
        "400",
        "duplicate CL"
    );
    let bad_chunk = "POST /echo HTTP/1.1\r\nHost: other.example.com\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n";
    let resp = raw_exchange(b, 80, bad_chunk.into());
    assert!(
        !resp.contains("\"path\""),
        "bad chunking never reaches the upstream: {resp}"
    );
    // Oversized headers.
    let big = format!(
        "GET /echo HTTP/1.1\r\nHost: other.example.com\r\nX-Big: {}\r\n\r\n",
        "a".repeat(70 * 1024)
    );
    let resp = raw_exchange(b, 80, big.into_bytes());
    assert!(
        resp.is_empty() || status(&resp) == "431",
        "oversized headers: {resp}"
    );
    // Malformed TLS.
    let resp = raw_exchange(b, 443, b"\x16\x03\x01\x00\x05hello-not-tls".to_vec());
    assert!(!resp.contains("HTTP"), "{resp}");
    // A slow client is cut off by the agent's header timeout: the connection ends from the
    // agent's side (our own read would only give up after 15 s, with an error).
    let (resp, closed_by_agent) =
        raw_exchange_closed(b, 80, b"GET /echo HTTP/1.1\r\nHost: other".to_vec());
    assert!(resp.is_empty() || status(&resp) == "408", "{resp}");
    assert!(
        closed_by_agent,
        "the agent never closed the half-sent request"
    );

    // A connection flood from one bottle: its excess is dropped; a second bottle is served.
    let file = s.agent.dir.path().join("other.yaml");
    std::fs::write(
        &file,
        format!("routes:\n{}", s.internet.route("other.example.com")),
    )
    .unwrap();
    let out = s.agent.bottle(&[
        "create",
        "--name",
        "calm",
        "--egress",
        file.to_str().unwrap(),
        "--json",
    ]);
    assert!(out.status.success(), "{out:?}");
    let calm: BottleInfo = serde_json::from_slice(&out.stdout).unwrap();
    let gw = SocketAddr::V4(SocketAddrV4::new(b.gateway_address, 80));
    let flood = in_netns(&b.netns, move || {
        (0..700)
            .filter_map(|_| TcpStream::connect_timeout(&gw, Duration::from_millis(500)).ok())
            .collect::<Vec<_>>()
    });
    assert!(
        flood.len() >= 512,
        "flood connections opened: {}",
        flood.len()
    );
    let (rc, body) = curl(&calm.netns, &["http://other.example.com/echo/calm"]);
    assert_eq!(rc, 0, "the other bottle is served during the flood: {body}");
    drop(flood);
    // The agent survived everything.
    let (rc, body) = curl(&b.netns, &["http://other.example.com/echo/after"]);
    assert_eq!(rc, 0, "{body}");
}

#[test]
fn privileged_restart_keeps_policy_but_never_leaks_or_reuses_lost_tokens() {
    if !privileged("privileged_restart_keeps_policy_but_never_leaks_or_reuses_lost_tokens") {
        return;
    }
    let mut s = setup(34);
    let ns = s.bottle.netns.clone();
    let ca = s.ca.to_str().unwrap().to_string();
    let (rc, _) = curl(&ns, &["--cacert", &ca, "https://api.example.com/echo"]);
    assert_eq!(rc, 0);

    // A host process cannot borrow the bottle's proxy (and its credentials).
    let gw = SocketAddr::V4(SocketAddrV4::new(s.bottle.gateway_address, 80));
    let mut host_side = TcpStream::connect_timeout(&gw, Duration::from_secs(2)).unwrap();
    host_side
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let _ = host_side.write_all(b"GET /echo HTTP/1.1\r\nHost: other.example.com\r\n\r\n");
    let mut buf = Vec::new();
    let _ = host_side.read_to_end(&mut buf);
    assert!(
        buf.is_empty(),
        "served a host process: {}",
        String::from_utf8_lossy(&buf)
    );

    s.agent.kill9();
    // Services are down with the agent: the bottle reaches nothing (fail closed).
    let (rc, _) = curl(
        &ns,
        &[
            "--cacert",
            &ca,
            "--max-time",
            "3",
            "https://other.example.com/echo",
        ],
    );
    assert_ne!(rc, 0);
    s.agent.spawn();
    // Same CA after restart; unauthenticated routes work; the route whose token was only in
    // memory refuses rather than going out without it.
    assert_eq!(
        s.agent.ok(&["ca", "web"]),
        std::fs::read_to_string(&s.ca).unwrap()
    );
    let (rc, body) = curl(&ns, &["--cacert", &ca, "https://other.example.com/echo/r"]);
    assert_eq!(rc, 0, "{body}");
    let (_, body) = curl(
        &ns,
        &[
            "--cacert",
            &ca,
            "-w",
            "%{http_code}",
            "https://api.example.com/echo/r",
        ],
    );
    assert!(
        body.contains("credential_unavailable") && body.ends_with("503"),
        "{body}"
    );
    // Setting the policy again brings the token back.
    let file = s.agent.dir.path().join("egress.yaml");
    let out = s.agent.bottle_env(
        &["policy", "set", "web", file.to_str().unwrap()],
        &[("E2E_TOKEN", TOKEN)],
    );
    assert!(out.status.success(), "{out:?}");
    let (_, body) = curl(
        &ns,
        &["--cacert", &ca, "https://api.example.com/echo/again"],
    );
    assert_eq!(
        json(&body)["headers"]["authorization"],
        format!("Bearer {TOKEN}")
    );
    // A missing token variable is the client's clear error.
    let out = s
        .agent
        .bottle(&["policy", "set", "web", file.to_str().unwrap()]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("$E2E_TOKEN, which is not set"),
        "{out:?}"
    );
}

/// A DNS query for `name` type A, sent over TCP to the gateway from inside the bottle;
/// returns the response code and the first answer's address, if any.
fn dns_over_tcp(b: &BottleInfo, name: &str) -> (u8, Option<std::net::Ipv4Addr>) {
    let mut q = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in name.split('.') {
        q.push(u8::try_from(label.len()).unwrap());
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    let mut msg = u16::try_from(q.len()).unwrap().to_be_bytes().to_vec();
    msg.extend_from_slice(&q);
    let dest = SocketAddr::V4(SocketAddrV4::new(b.gateway_address, 53));
    let resp = in_netns(&b.netns, move || {
        let mut s = TcpStream::connect_timeout(&dest, Duration::from_secs(2)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(&msg).unwrap();
        let mut len = [0u8; 2];
        s.read_exact(&mut len).unwrap();
        let mut body = vec![0u8; usize::from(u16::from_be_bytes(len))];
        s.read_exact(&mut body).unwrap();
        body
    });
    assert_eq!(&resp[..2], &[0x12, 0x34], "same id");
    let rcode = resp[3] & 0x0f;
    let answers = u16::from_be_bytes([resp[6], resp[7]]);
    let addr = (answers > 0).then(|| {
        let a = &resp[resp.len() - 4..];
        std::net::Ipv4Addr::new(a[0], a[1], a[2], a[3])
    });
    (rcode, addr)
}

#[test]
fn privileged_connect_sni_ssrf_dlp_warn_user_rules_and_tcp_dns() {
    if !privileged("privileged_connect_sni_ssrf_dlp_warn_user_rules_and_tcp_dns") {
        return;
    }
    let s = setup(35);
    let b = &s.bottle;
    let ca = s.ca.to_str().unwrap();
    let proxy = format!("http://{}:3128", b.gateway_address);

    // DNS over TCP answers like UDP.
    assert_eq!(
        dns_over_tcp(b, "api.example.com"),
        (0, Some(b.gateway_address))
    );
    assert_eq!(dns_over_tcp(b, "evil.example.net").0, 3, "NXDOMAIN");

    // CONNECT to one allowed host, then TLS naming another: refused.
    let (rc, body) = curl(
        &b.netns,
        &[
            "--cacert",
            ca,
            "-x",
            &proxy,
            "--connect-to",
            "other.example.com:443:api.example.com:443",
            "https://other.example.com/echo",
        ],
    );
    assert_ne!(rc, 0, "{body}");
    assert!(s
        .agent
        .audit("web")
        .contains("server name differs from the CONNECT target"));

    // SSRF: a route to a private address without an allowlist entry is refused upstream.
    let ssrf = s.agent.dir.path().join("ssrf.yaml");
    std::fs::write(
        &ssrf,
        format!(
            "routes:\n  - host: other.example.com\n    connect_to: \"{}:443\"\n",
            s.internet.addr
        ),
    )
    .unwrap();
    let out = s
        .agent
        .bottle(&["policy", "set", "web", ssrf.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    let (_, body) = curl(
        &b.netns,
        &[
            "--cacert",
            ca,
            "-w",
            "%{http_code}",
            "https://other.example.com/echo",
        ],
    );
    assert!(
        body.contains("internal addresses") && body.ends_with("502"),
        "{body}"
    );

    // Warn mode with a user rule (gitleaks format): the request passes, the hit is audited.
    let rules = s.agent.dir.path().join("rules.toml");
    std::fs::write(
        &rules,
        "[[rules]]\nid = \"acme-internal-key\"\nregex = '''ACME-[0-9A-F]{16}'''\nkeywords = [\"acme-\"]\n",
    )
    .unwrap();
    let allowed = s.agent.dir.path().join("allowed.yaml");
    std::fs::write(
        &allowed,
        format!("routes:\n{}", s.internet.route("other.example.com")),
    )
    .unwrap();
    let out = s.agent.bottle(&[
        "policy",
        "set",
        "web",
        allowed.to_str().unwrap(),
        "--dlp-warn",
        "--dlp-rules",
        rules.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{out:?}");
    let (rc, body) = curl(
        &b.netns,
        &[
            "--cacert",
            ca,
            "-d",
            "k=ACME-0123456789ABCDEF",
            "https://other.example.com/echo",
        ],
    );
    assert_eq!(rc, 0, "{body}");
    assert_eq!(json(&body)["body_len"], 23, "warn mode lets it through");
    let audit = s.agent.audit("web");
    assert!(
        audit.contains("\"decision\":\"dlp_warned\"") && audit.contains("acme-internal-key"),
        "{audit}"
    );
    assert!(!audit.contains("0123456789ABCDEF"));
    // Back to block mode: the same user rule now blocks.
    let out = s.agent.bottle(&[
        "policy",
        "set",
        "web",
        allowed.to_str().unwrap(),
        "--dlp-rules",
        rules.to_str().unwrap(),
    ]);
    assert!(out.status.success());
    let (_, body) = curl(
        &b.netns,
        &[
            "--cacert",
            ca,
            "-d",
            "k=ACME-0123456789ABCDEF",
            "https://other.example.com/echo",
        ],
    );
    assert!(
        body.contains("acme-internal-key") && body.contains("\"error\":\"dlp\""),
        "{body}"
    );
    // A broken user rule is a clear error and changes nothing.
    std::fs::write(
        &rules,
        "[[rules]]\nid = \"broken\"\nregex = '''(unclosed'''\n",
    )
    .unwrap();
    let out = s.agent.bottle(&[
        "policy",
        "set",
        "web",
        allowed.to_str().unwrap(),
        "--dlp-rules",
        rules.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("broken"),
        "{out:?}"
    );
    let (_, body) = curl(
        &b.netns,
        &[
            "--cacert",
            ca,
            "-d",
            "k=ACME-0123456789ABCDEF",
            "https://other.example.com/echo",
        ],
    );
    assert!(
        body.contains("acme-internal-key"),
        "the previous policy still applies: {body}"
    );
}
