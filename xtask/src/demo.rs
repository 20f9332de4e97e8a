//! The demo: a bottle whose only way out is the agent's egress proxy. From inside it, an
//! HTTPS request to an allowed host succeeds with a credential the bottle never held; a
//! host outside the policy does not even resolve; a direct connection is dropped by the
//! kernel; a leaked key is stopped by DLP. Then a bot-bottle manifest agent (the test image's
//! stand-in `claude`) runs with a placeholder while its API sees the real token. The
//! "internet" is a namespace the demo makes, running our test upstream, so nothing leaves this
//! machine.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use anyhow::{bail, Context, Result};

use crate::agent::{netns_exec, PrivateAgent};

const TOKEN_VAR: &str = "DEMO_API_TOKEN";
const TOKEN: &str = "demo-real-token-5f2c9a7e41";

fn step(text: &str) {
    println!("\n== {text}");
}

/// A namespace standing in for the internet, with the test upstream on 10.213.250.2.
struct DemoInternet {
    netns: &'static str,
    host_if: &'static str,
    dir: PathBuf,
    server: Option<Child>,
}

impl DemoInternet {
    const ADDR: &'static str = "10.213.250.2";

    fn start(bin: &Path) -> Result<Self> {
        let mut net = Self {
            // Names and addresses clear of the agent's prefixes and pool.
            netns: "demo-internet",
            host_if: "demoinet0",
            dir: std::env::temp_dir().join(format!("bottle-demo-inet-{}", std::process::id())),
            server: None,
        };
        net.stop_leftovers();
        let run = |args: &[&str]| -> Result<()> {
            let out = Command::new(args[0]).args(&args[1..]).output()?;
            if !out.status.success() {
                bail!("{args:?}: {}", String::from_utf8_lossy(&out.stderr));
            }
            Ok(())
        };
        run(&["ip", "netns", "add", net.netns])?;
        run(&[
            "ip",
            "link",
            "add",
            net.host_if,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            net.netns,
        ])?;
        run(&["ip", "addr", "add", "10.213.250.1/30", "dev", net.host_if])?;
        run(&["ip", "link", "set", net.host_if, "up"])?;
        run(&[
            "ip",
            "-n",
            net.netns,
            "addr",
            "add",
            "10.213.250.2/30",
            "dev",
            "eth0",
        ])?;
        run(&["ip", "-n", net.netns, "link", "set", "eth0", "up"])?;
        // Traffic for the stand-in internet must go through its veth and nowhere else.
        let route = Command::new("ip")
            .args(["route", "get", Self::ADDR])
            .output()?;
        if !String::from_utf8_lossy(&route.stdout).contains(net.host_if) {
            bail!(
                "{} is not routed through {}; refusing to run",
                Self::ADDR,
                net.host_if
            );
        }
        std::fs::create_dir_all(&net.dir)?;
        let dir = net.dir.display().to_string();
        run(&[
            &bin.join("bottle-test-ca").display().to_string(),
            &dir,
            "api.example.com",
            "api.anthropic.com",
        ])?;
        let mut child = Command::new("ip")
            .args(["netns", "exec", net.netns])
            .arg(bin.join("bottle-test-upstream"))
            .args(["--listen", "10.213.250.2:443", "--tls"])
            .arg(net.dir.join("api.example.com.pem"))
            .arg(net.dir.join("api.example.com.key"))
            .arg("--tls")
            .arg(net.dir.join("api.anthropic.com.pem"))
            .arg(net.dir.join("api.anthropic.com.key"))
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?;
        let mut ready = [0u8; 5];
        child
            .stdout
            .take()
            .context("upstream stdout")?
            .read_exact(&mut ready)
            .context("upstream did not start")?;
        net.server = Some(child);
        Ok(net)
    }

    fn stop_leftovers(&self) {
        for args in [
            ["ip", "link", "del", self.host_if],
            ["ip", "netns", "del", self.netns],
        ] {
            let _ = Command::new(args[0])
                .args(&args[1..])
                .stderr(Stdio::null())
                .status();
        }
    }

    fn ca(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }
}

impl Drop for DemoInternet {
    fn drop(&mut self) {
        if let Some(mut c) = self.server.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.stop_leftovers();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// curl inside the bottle; prints the command and a short view of the answer.
fn curl(netns: &str, args: &[&str]) -> Result<(bool, String)> {
    let mut full = vec!["curl", "-sS", "--max-time", "5"];
    full.extend_from_slice(args);
    println!("  (in the bottle) $ {}", full.join(" "));
    let (ok, out) = netns_exec(netns, &full)?;
    let shown: String = out.trim().chars().take(160).collect();
    println!(
        "    -> {}",
        if shown.is_empty() {
            "(nothing)".into()
        } else {
            shown
        }
    );
    Ok((ok, out))
}

pub fn run() -> Result<()> {
    let bin = PathBuf::from(crate::sh::bin_dir(true)?);

    step("a stand-in internet: a namespace with an HTTPS server for api.example.com");
    let internet = DemoInternet::start(&bin)?;

    step("starting a private bottle-agent (trusting that server's CA for upstreams)");
    let agent = PrivateAgent::start(
        "demo",
        "10.213.240.0/24",
        &format!(
            "upstream_ca_files = [\"{}\"]\n[upstream_hosts]\n\"api.anthropic.com\" = \"{}:443\"",
            internet.ca().display(),
            DemoInternet::ADDR
        ),
    )?;
    println!(
        "  agent pid {} on {}",
        agent.pid(),
        agent.socket().display()
    );

    step("an egress policy: one host, one path prefix, a token injected by the proxy");
    let policy = format!(
        "egress:\n  routes:\n    - host: api.example.com\n      path_allowlist: [\"/echo\"]\n      auth: {{scheme: Bearer, token_ref: {TOKEN_VAR}}}\n      connect_to: \"{addr}:443\"\n      pipelock: {{ssrf_ip_allowlist: [\"{addr}/32\"]}}\n",
        addr = DemoInternet::ADDR
    );
    print!("{policy}");
    let policy_file = agent.dir.join("egress.yaml");
    std::fs::write(&policy_file, &policy)?;
    std::env::set_var(TOKEN_VAR, TOKEN);
    agent.client(&[
        "create",
        "--name",
        "demo",
        "--egress",
        &policy_file.display().to_string(),
    ])?;
    std::env::remove_var(TOKEN_VAR);
    agent.client(&["inspect", "demo"])?;
    let info = agent.create_info("demo")?;
    let netns = info["netns"].as_str().context("netns")?.to_string();
    let ca = agent.dir.join("demo-ca.pem");
    std::fs::write(&ca, agent.client_quiet(&["ca", "demo"])?)?;

    step("from inside the bottle");
    let ca_arg = ca.display().to_string();
    let (ok, body) = curl(
        &netns,
        &[
            "--cacert",
            &ca_arg,
            "-H",
            "Authorization: Bearer what-the-bottle-has",
            "https://api.example.com/echo/hello",
        ],
    )?;
    let injected = body.contains(&format!("Bearer {TOKEN}"));
    println!(
        "  allowed: {ok}; the upstream saw the real token, which the bottle never held: {injected}"
    );
    let (path_ok, body) = curl(
        &netns,
        &["--cacert", &ca_arg, "https://api.example.com/admin"],
    )?;
    let path_refused = path_ok && body.contains("path_not_allowed");
    let (dns_ok, _) = curl(&netns, &["--cacert", &ca_arg, "https://example.org/"])?;
    println!("  example.org resolves: {dns_ok}");
    let direct = format!("exec 3<>/dev/tcp/{}/443", DemoInternet::ADDR);
    let (direct_ok, _) = netns_exec(&netns, &["timeout", "3", "bash", "-c", &direct])?;
    println!(
        "  (in the bottle) $ bash -c '{direct}'\n    -> {}",
        if direct_ok {
            "connected"
        } else {
            "blocked by the kernel datapath"
        }
    );
    let (_, body) = curl(
        &netns,
        &[
            "--cacert",
            &ca_arg,
            "-d",
            "aws_access_key_id=AKIAIOSFODNN7EXAMPLE",
            "https://api.example.com/echo/upload",
        ],
    )?;
    let dlp = body.contains("aws-access-key-id");
    if !(ok && injected && path_refused && !dns_ok && !direct_ok && dlp) {
        bail!("the bottle did not behave: allowed={ok} injected={injected} path_refused={path_refused} resolved_outside={dns_ok} direct={direct_ok} dlp={dlp}");
    }

    step("what the kernel and the proxy counted");
    agent.client(&["stats", "demo"])?;
    step("the audit log (no secret in it)");
    agent.client(&["logs", "--net", "demo"])?;

    agent.client(&["rm", "demo"])?;

    let agent_ok = manifest_agent(&agent)?;
    if !agent_ok {
        bail!("the manifest agent did not behave (see above)");
    }

    step("cleaning up");
    drop(agent);
    drop(internet);
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

    /// Runs the client without printing.
    pub fn client_quiet(&self, args: &[&str]) -> Result<String> {
        let bin = PathBuf::from(crate::sh::bin_dir(true)?).join("bottle");
        let out = Command::new(bin)
            .args(args)
            .env("BOTTLE_HOST", self.socket())
            .output()?;
        if !out.status.success() {
            bail!("bottle {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

/// The claude token of the demo's manifest; the stand-in agent must never see it.
const CLAUDE_TOKEN_VAR: &str = "DEMO_CLAUDE_TOKEN";
const CLAUDE_TOKEN: &str = "sk-ant-oat01-demo-real-4b7e19c2";

/// Part two: a bot-bottle manifest agent. The test image's stand-in `claude` prints what it
/// was given and calls api.anthropic.com (the stand-in internet, through `upstream_hosts`).
fn manifest_agent(agent: &PrivateAgent) -> Result<bool> {
    step("a bot-bottle manifest: a bottle with Claude Code and its token, an agent using it");
    crate::images::run(false)?;
    let image = crate::sh::target_dir()?.join("images/bottle-test");
    let home = agent.dir.join("bot-bottle");
    std::fs::create_dir_all(home.join("bottles"))?;
    std::fs::create_dir_all(home.join("agents"))?;
    let bottle = format!(
        "---\nenv:\n  GREETING: hello\nagent_provider:\n  template: claude\n  auth_token: {CLAUDE_TOKEN_VAR}\n---\n"
    );
    let helper = "---\nbottle: dev\n---\nYou help with the demo.\n";
    std::fs::write(home.join("bottles/dev.md"), &bottle)?;
    std::fs::write(home.join("agents/helper.md"), helper)?;
    println!("--- bottles/dev.md\n{bottle}--- agents/helper.md\n{helper}");
    let home_s = home.display().to_string();
    let env = [
        ("BOTTLE_HOME", home_s.as_str()),
        (CLAUDE_TOKEN_VAR, CLAUDE_TOKEN),
    ];

    step("bottle run helper --dry-run: the preflight summary");
    print!(
        "{}",
        agent.client_env(&["run", "helper", "--dry-run"], &env)?
    );

    step("bottle run helper -y --rm: the stand-in claude, launched into a fresh bottle");
    let image_s = image.display().to_string();
    let out = agent.client_env(&["run", "helper", "-y", "--rm", "--image", &image_s], &env)?;
    let mut shown = Vec::new();
    for line in out.lines() {
        let keep = line.starts_with("arg: ")
            || line.starts_with("cwd: ")
            || line.starts_with("env: CLAUDE_CODE_OAUTH_TOKEN=")
            || line.starts_with("env: GREETING=")
            || line.starts_with("env: HTTPS_PROXY=");
        if keep {
            shown.push(line.to_owned());
        }
    }
    for line in &shown {
        println!("    {line}");
    }
    let upstream = out
        .lines()
        .find_map(|l| l.strip_prefix("upstream: "))
        .unwrap_or("");
    let echo: serde_json::Value = serde_json::from_str(upstream).unwrap_or_default();
    let seen = echo["headers"]["authorization"].as_str().unwrap_or("");
    println!(
        "  api.anthropic.com saw: Authorization: {}",
        seen.replace(CLAUDE_TOKEN, "<the real token>")
    );
    let placeholder = shown
        .iter()
        .any(|l| l == "env: CLAUDE_CODE_OAUTH_TOKEN=egress-placeholder");
    let inside_clean = !out
        .lines()
        .filter(|l| !l.starts_with("upstream: "))
        .any(|l| l.contains(CLAUDE_TOKEN));
    let injected = seen == format!("Bearer {CLAUDE_TOKEN}");
    println!(
        "  the bottle held only a placeholder: {}; the real token reached the API: {injected}",
        placeholder && inside_clean
    );
    Ok(placeholder && inside_clean && injected)
}
