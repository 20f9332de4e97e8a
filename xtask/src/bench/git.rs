//! `cargo xtask bench git`: a push of 1,000 commits (~50 MB) through the git-gate vs `git
//! push` straight to the same kind of upstream (a bare repo behind Debian's sshd in a
//! namespace made here), and the scanner alone on that history's files vs `detect-secrets`
//! (PyPI) and `ripsecrets` (crates.io), with a planted set of secrets.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::process;
use crate::agent::{netns_exec, PrivateAgent};
use crate::sh;

const POOL: &str = "10.213.232.0/24";
const UP_NETNS: &str = "bgitup";
const UP_HOST_IF: &str = "bgitup0";
const UP_HOST: &str = "10.213.236.1";
const UP_ADDR: &str = "10.213.236.2";
const COMMITS: usize = 1000;
const FILE_BYTES: usize = 50_000;

fn tools_dir() -> Result<PathBuf> {
    Ok(sh::target_dir()?.join("bench-tools"))
}

fn ripsecrets_bin() -> Result<PathBuf> {
    Ok(tools_dir()?.join("bin").join("ripsecrets"))
}

fn detect_secrets_bin() -> Result<PathBuf> {
    Ok(super::peers::venv_dir()?.join("bin").join("detect-secrets"))
}

/// Unprivileged part: the peers (detect-secrets in the bench venv, ripsecrets under
/// target/bench-tools) and our scanner example, built as the calling user.
pub fn prepare() -> Result<()> {
    sh::cargo(&[
        "build",
        "--release",
        "-p",
        "bottle-gitgate",
        "--example",
        "scan_bench",
    ])?;
    if !ripsecrets_bin()?.exists() {
        let root = tools_dir()?;
        let root = root.to_string_lossy();
        sh::cargo(&["install", "--quiet", "--root", &root, "ripsecrets"])?;
    }
    if !detect_secrets_bin()?.exists() {
        let venv = super::peers::venv_dir()?;
        if !venv.join("bin/pip").exists() {
            process::run(
                Command::new("python3").arg("-m").arg("venv").arg(&venv),
                Duration::from_secs(300),
            )?;
        }
        process::run(
            Command::new(venv.join("bin/pip")).args(["install", "--quiet", "detect-secrets"]),
            Duration::from_secs(900),
        )
        .context("pip install detect-secrets")?;
    }
    Ok(())
}

/// A small deterministic PRNG (xorshift), so every run scans the same bytes.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        usize::try_from(self.next() % n as u64).unwrap_or(0)
    }
    fn word<'a>(&mut self, words: &[&'a str]) -> &'a str {
        words[self.below(words.len())]
    }
    fn chars(&mut self, alphabet: &[u8], n: usize) -> String {
        (0..n)
            .map(|_| char::from(alphabet[self.below(alphabet.len())]))
            .collect()
    }
}

const WORDS: &[&str] = &[
    "request",
    "buffer",
    "client",
    "session",
    "parse",
    "config",
    "handle",
    "value",
    "stream",
    "retry",
    "header",
    "commit",
    "branch",
    "window",
    "offset",
    "length",
    "token_count",
    "status",
];

/// Code-like text of `size` bytes (what agents commit).
fn source_file(rng: &mut Rng, size: usize) -> String {
    let mut s = String::with_capacity(size + 100);
    while s.len() < size {
        let (a, b, c) = (rng.word(WORDS), rng.word(WORDS), rng.word(WORDS));
        let n = rng.below(10_000);
        let line = match rng.below(5) {
            0 => format!("    let {a}_{n} = self.{b}.{c}({n})?;\n"),
            1 => format!("    // Resolve the {a} for this {b} before the {c} expires.\n"),
            2 => format!("fn {a}_{b}(&mut self, {c}: usize) -> Result<(), Error> {{\n"),
            3 => format!("    tracing::debug!({a} = {n}, \"{b} {c}\");\n"),
            _ => "}\n".to_string(),
        };
        s.push_str(&line);
    }
    s
}

const UPPER_DIGITS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
const ALNUM: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
const B64URL: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-";

/// The planted set: (kind, line to insert). Synthetic values in real formats.
fn planted(rng: &mut Rng) -> Vec<(&'static str, String)> {
    vec![
        ("aws-access-key-id", format!("    let aws_access_key_id = \"AKIA{}\";", rng.chars(UPPER_DIGITS, 16))),
        ("github-pat", format!("    let github_token = \"ghp_{}\";", rng.chars(ALNUM, 36))),
        ("slack-token", format!("    let slack = \"xoxb-{}-{}-{}\";", rng.chars(b"0123456789", 12), rng.chars(b"0123456789", 13), rng.chars(ALNUM, 24))),
        ("stripe-live-key", format!("    let stripe_key = \"sk_live_{}\";", rng.chars(ALNUM, 24))),
        ("google-api-key", format!("    let google_api_key = \"AIza{}\";", rng.chars(B64URL, 35))),
        ("private-key", format!("-----BEGIN RSA PRIVATE KEY-----\n{}\n{}\n-----END RSA PRIVATE KEY-----", rng.chars(ALNUM, 64), rng.chars(ALNUM, 64))),
        ("npm-access-token", format!("    let npm_token = \"npm_{}\";", rng.chars(ALNUM, 36))),
        ("sendgrid-api-key", format!("    let sendgrid = \"SG.{}.{}\";", rng.chars(B64URL, 22), rng.chars(B64URL, 43))),
        ("jwt", format!("    let jwt = \"eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4ifQ.{}\";", rng.chars(B64URL, 43))),
        ("gitlab-pat", format!("    let gitlab = \"glpat-{}\";", rng.chars(ALNUM, 20))),
    ]
}

/// Writes the clean files and the planted copy; returns the planted (file, line, kind).
fn make_files(clean: &Path, dirty: &Path) -> Result<Vec<(String, usize, &'static str)>> {
    std::fs::create_dir_all(clean)?;
    std::fs::create_dir_all(dirty)?;
    let mut rng = Rng(0x0B07_71E5_EED5);
    let plants = planted(&mut rng);
    let step = COMMITS / (plants.len() + 1);
    let mut out = Vec::new();
    for i in 0..COMMITS {
        let name = format!("f{i:04}.rs");
        let text = source_file(&mut rng, FILE_BYTES);
        std::fs::write(clean.join(&name), &text)?;
        let plant = (i % step == step / 2)
            .then(|| plants.get(i / step))
            .flatten();
        match plant {
            Some((kind, secret)) => {
                let mut lines: Vec<&str> = text.lines().collect();
                let at = lines.len() / 2;
                lines.insert(at, secret);
                std::fs::write(dirty.join(&name), lines.join("\n") + "\n")?;
                out.push((name, at + 1, *kind));
            }
            None => std::fs::write(dirty.join(&name), &text)?,
        }
    }
    Ok(out)
}

/// A bare repo with one commit per file (in name order) on `main`, via `git fast-import`.
fn make_history(files: &Path, repo: &Path) -> Result<()> {
    sh_ok(
        Command::new("git")
            .args(["init", "-q", "--bare", "-b", "main"])
            .arg(repo),
    )?;
    let mut names: Vec<String> = std::fs::read_dir(files)?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    let mut child = Command::new("git")
        .arg("--git-dir")
        .arg(repo)
        .args(["fast-import", "--quiet"])
        .stdin(Stdio::piped())
        .spawn()?;
    let mut stdin = child.stdin.take().context("fast-import stdin")?;
    for (i, name) in names.iter().enumerate() {
        let data = std::fs::read(files.join(name))?;
        let msg = format!("add {name}\n");
        write!(
            stdin,
            "commit refs/heads/main\nmark :{}\ncommitter Bench <bench@example.com> {} +0000\ndata {}\n{msg}",
            i + 1,
            1_700_000_000 + i,
            msg.len()
        )?;
        if i > 0 {
            writeln!(stdin, "from :{i}")?;
        }
        writeln!(stdin, "M 100644 inline src/{name}\ndata {}", data.len())?;
        stdin.write_all(&data)?;
        stdin.write_all(b"\n")?;
    }
    drop(stdin);
    if !child.wait()?.success() {
        bail!("git fast-import failed");
    }
    Ok(())
}

fn sh_ok(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("{cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The upstream namespace with sshd; removed on drop.
struct Upstream {
    sshd: Option<Child>,
}

impl Upstream {
    fn start(dir: &Path) -> Result<Self> {
        let _ = Command::new("ip").args(["netns", "del", UP_NETNS]).output();
        let _ = Command::new("ip")
            .args(["link", "del", UP_HOST_IF])
            .output();
        let up = Self { sshd: None };
        let ip = |args: &[&str]| sh_ok(Command::new("ip").args(args));
        ip(&["netns", "add", UP_NETNS])?;
        ip(&[
            "link", "add", UP_HOST_IF, "type", "veth", "peer", "name", "eth0", "netns", UP_NETNS,
        ])?;
        ip(&["addr", "add", &format!("{UP_HOST}/30"), "dev", UP_HOST_IF])?;
        ip(&["link", "set", UP_HOST_IF, "up"])?;
        ip(&[
            "-n",
            UP_NETNS,
            "addr",
            "add",
            &format!("{UP_ADDR}/30"),
            "dev",
            "eth0",
        ])?;
        ip(&["-n", UP_NETNS, "link", "set", "eth0", "up"])?;
        ip(&["-n", UP_NETNS, "link", "set", "lo", "up"])?;
        for f in ["client_key", "host_key"] {
            sh_ok(
                Command::new("ssh-keygen")
                    .args(["-q", "-t", "ed25519", "-N", "", "-f"])
                    .arg(dir.join(f)),
            )?;
        }
        std::fs::copy(dir.join("client_key.pub"), dir.join("authorized_keys"))?;
        std::fs::write(
            dir.join("sshd_config"),
            format!(
                "ListenAddress {UP_ADDR}:22\nHostKey {}\nAuthorizedKeysFile {}\nPidFile none\nStrictModes no\n\
                 UsePAM no\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n\
                 PermitRootLogin prohibit-password\nSetEnv PATH=/usr/local/bin:/usr/bin:/bin\n",
                dir.join("host_key").display(),
                dir.join("authorized_keys").display()
            ),
        )?;
        std::fs::create_dir_all("/run/sshd")?;
        let mut up = up;
        up.sshd = Some(
            Command::new("ip")
                .args([
                    "netns",
                    "exec",
                    UP_NETNS,
                    "/usr/sbin/sshd",
                    "-D",
                    "-e",
                    "-f",
                ])
                .arg(dir.join("sshd_config"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("cannot start sshd (cargo xtask deps installs openssh-server)")?,
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect_timeout(
            &format!("{UP_ADDR}:22").parse()?,
            Duration::from_millis(200),
        )
        .is_err()
        {
            if Instant::now() > deadline {
                bail!("sshd did not start");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(up)
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        if let Some(mut c) = self.sshd.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = Command::new("ip")
            .args(["link", "del", UP_HOST_IF])
            .output();
        let _ = Command::new("ip").args(["netns", "del", UP_NETNS]).output();
    }
}

/// (file, line) pairs a tool reported.
type Hits = BTreeSet<(String, usize)>;

fn true_hits(planted: &[(String, usize, &'static str)], hits: &Hits) -> usize {
    planted
        .iter()
        .filter(|(f, l, _)| hits.contains(&(f.clone(), *l)))
        .count()
}

fn ours(args: &[&str]) -> Result<(f64, Hits, String)> {
    let bin = sh::target_dir()?.join("release/examples/scan_bench");
    let out = sh_ok(Command::new(&bin).args(args))?;
    let mut secs = 0.0;
    let mut mbps = String::new();
    let mut hits = Hits::new();
    for line in out.lines() {
        if let Some(v) = line.strip_prefix("secs=") {
            secs = v.parse().unwrap_or(0.0);
        } else if let Some(v) = line.strip_prefix("mb_per_s=") {
            mbps = v.to_string();
        } else if let Some(v) = line.strip_prefix("hit=") {
            let mut parts = v.split(':');
            if let (Some(f), Some(l)) = (parts.next(), parts.next()) {
                let f = f.trim_start_matches("src/").to_string();
                hits.insert((f, l.parse().unwrap_or(0)));
            }
        }
    }
    Ok((secs, hits, mbps))
}

fn detect_secrets(dir: &Path) -> Result<(f64, Hits)> {
    let started = Instant::now();
    let out = sh_ok(
        Command::new(detect_secrets_bin()?)
            .args(["scan", "--all-files", "."])
            .current_dir(dir),
    )?;
    let secs = started.elapsed().as_secs_f64();
    let json: serde_json::Value = serde_json::from_str(&out).context("detect-secrets JSON")?;
    let mut hits = Hits::new();
    if let Some(results) = json["results"].as_object() {
        for (file, list) in results {
            for r in list.as_array().into_iter().flatten() {
                if let Some(l) = r["line_number"].as_u64() {
                    hits.insert((
                        file.trim_start_matches("./").to_string(),
                        usize::try_from(l).unwrap_or(0),
                    ));
                }
            }
        }
    }
    Ok((secs, hits))
}

fn ripsecrets(dir: &Path) -> Result<(f64, Hits)> {
    let started = Instant::now();
    // Exit status 1 means "found secrets".
    let out = Command::new(ripsecrets_bin()?)
        .arg(".")
        .current_dir(dir)
        .output()?;
    let secs = started.elapsed().as_secs_f64();
    let mut hits = Hits::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        // `path:line:match`, possibly with ANSI colours.
        let plain: String = strip_ansi(line);
        let mut parts = plain.splitn(3, ':');
        if let (Some(f), Some(l)) = (parts.next(), parts.next()) {
            if let Ok(l) = l.parse() {
                hits.insert((f.trim_start_matches("./").to_string(), l));
            }
        }
    }
    Ok((secs, hits))
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn mb(dir: &Path) -> Result<f64> {
    let mut total = 0u64;
    for e in std::fs::read_dir(dir)?.flatten() {
        total += e.metadata()?.len();
    }
    Ok(total as f64 / 1e6)
}

pub fn run() -> Result<()> {
    let work = std::env::temp_dir().join(format!("bottle-bench-git-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work)?;
    let result = run_in(&work);
    let _ = std::fs::remove_dir_all(&work);
    result
}

fn run_in(work: &Path) -> Result<()> {
    let (clean, dirty) = (work.join("clean"), work.join("planted"));
    let plants = make_files(&clean, &dirty)?;
    let hist = work.join("hist.git");
    make_history(&clean, &hist)?;
    let hist_planted = work.join("hist-planted.git");
    make_history(&dirty, &hist_planted)?;
    let size = mb(&clean)?;

    // 1. Push: straight to the upstream vs through the gate.
    let up = Upstream::start(work)?;
    for name in ["direct.git", "gated.git"] {
        sh_ok(
            Command::new("git")
                .args(["init", "-q", "--bare", "-b", "main"])
                .arg(work.join(name)),
        )?;
    }
    let host_key = std::fs::read_to_string(work.join("host_key.pub"))?
        .split_whitespace()
        .take(2)
        .collect::<Vec<_>>()
        .join(" ");
    std::fs::write(work.join("known_hosts"), format!("{UP_ADDR} {host_key}\n"))?;
    let ssh = format!(
        "ssh -i {} -o IdentitiesOnly=yes -o BatchMode=yes -o StrictHostKeyChecking=yes -o UserKnownHostsFile={}",
        work.join("client_key").display(),
        work.join("known_hosts").display()
    );
    let started = Instant::now();
    sh_ok(
        Command::new("git")
            .arg("--git-dir")
            .arg(&hist)
            .args(["push", "-q"])
            .arg(format!(
                "ssh://root@{UP_ADDR}{}",
                work.join("direct.git").display()
            ))
            .arg("main")
            .env("GIT_SSH_COMMAND", &ssh),
    )?;
    let direct = started.elapsed().as_secs_f64();

    let agent = PrivateAgent::start("bgit", POOL, "")?;
    let gate_file = work.join("gate.yaml");
    std::fs::write(
        &gate_file,
        format!(
            "repos:\n  app:\n    url: ssh://root@{UP_ADDR}{}\n    identity: {}\n    host_key: \"{host_key}\"\n",
            work.join("gated.git").display(),
            work.join("client_key").display()
        ),
    )?;
    let info: serde_json::Value = serde_json::from_str(&agent.client_env(
        &[
            "create",
            "--name",
            "gitbench",
            "--git-gate",
            &gate_file.to_string_lossy(),
            "--json",
        ],
        &[],
    )?)?;
    let netns = info["netns"].as_str().context("netns")?.to_string();
    let gateway = info["gateway_address"]
        .as_str()
        .context("gateway")?
        .to_string();
    let hist_s = hist.to_string_lossy().to_string();
    let url = format!("http://{gateway}:9420/app.git");
    let started = Instant::now();
    let (ok, out) = netns_exec(
        &netns,
        &["git", "--git-dir", &hist_s, "push", "-q", &url, "main"],
    )?;
    let gated = started.elapsed().as_secs_f64();
    if !ok {
        bail!("push through the gate failed: {out}");
    }
    let want = sh_ok(
        Command::new("git")
            .arg("--git-dir")
            .arg(&hist)
            .args(["rev-parse", "main"]),
    )?;
    let got = sh_ok(
        Command::new("git")
            .arg("--git-dir")
            .arg(work.join("gated.git"))
            .args(["rev-parse", "main"]),
    )?;
    if want != got {
        bail!("the gate's push did not land: upstream has {got}, expected {want}");
    }
    drop(agent);
    drop(up);

    // 2. Scanning alone, same files.
    let dirty_s = dirty.to_string_lossy().to_string();
    let (ours_files_s, ours_files_hits, _) = ours(&["--files", &dirty_s])?;
    let (ours_hist_s, ours_hist_hits, _) =
        ours(&["--repo", &hist_planted.to_string_lossy(), "--rev", "main"])?;
    let (ds_s, ds_hits) = detect_secrets(&dirty)?;
    let (rs_s, rs_hits) = ripsecrets(&dirty)?;
    let dirty_mb = mb(&dirty)?;
    let n = plants.len();
    let ver = |bin: PathBuf| {
        Command::new(bin)
            .arg("--version")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default()
    };

    println!("## git-gate (cargo xtask bench git)\n");
    println!("History: {COMMITS} commits, one {FILE_BYTES}-byte source file each ({size:.1} MB of files).\n");
    println!("| push | seconds | ratio |");
    println!("|---|---|---|");
    println!("| `git push` over ssh straight to the upstream | {direct:.2} | 1.00 |");
    println!(
        "| `git push` through the git-gate (fetch-through, quarantine, scan, forward over ssh) | {gated:.2} | {:.2} |",
        gated / direct.max(1e-9)
    );
    println!("\nScanning the same files ({dirty_mb:.1} MB, {n} planted secrets):\n");
    println!("| scanner | seconds | MB/s | planted found | other findings |");
    println!("|---|---|---|---|---|");
    let row = |name: &str, secs: f64, hits: &Hits| {
        let found = true_hits(&plants, hits);
        println!(
            "| {name} | {secs:.2} | {:.0} | {found}/{n} | {} |",
            dirty_mb / secs.max(1e-9),
            hits.len().saturating_sub(found)
        );
    };
    row(
        "bottle-dlp, files (`scan_bench --files`)",
        ours_files_s,
        &ours_files_hits,
    );
    row(
        "bottle-dlp, the gate's history scan (libgit2 diff of every commit)",
        ours_hist_s,
        &ours_hist_hits,
    );
    row(
        &format!("detect-secrets {}", ver(detect_secrets_bin()?)),
        ds_s,
        &ds_hits,
    );
    row(
        &format!("ripsecrets {}", ver(ripsecrets_bin()?)),
        rs_s,
        &rs_hits,
    );
    for (name, hits) in [
        ("bottle-dlp", &ours_files_hits),
        ("detect-secrets", &ds_hits),
        ("ripsecrets", &rs_hits),
    ] {
        let missed: Vec<&str> = plants
            .iter()
            .filter(|(f, l, _)| !hits.contains(&(f.clone(), *l)))
            .map(|(_, _, k)| *k)
            .collect();
        if !missed.is_empty() {
            println!("\n{name} missed: {}", missed.join(", "));
        }
    }
    Ok(())
}
