//! End-to-end tests of the git-gate: a real upstream (a bare repo behind Debian's `sshd` in
//! a namespace this test made, with a test key pair and a pinned host key), the real agent,
//! and plain `git` inside the bottle's namespace using the upstream URL; the `insteadOf` in
//! the rendered `~/.gitconfig` sends it through the gate.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

use bottle_api::gitgate::{render_gitconfig, GitGateSpec, GitRepoSpec, GitUser};
use bottle_api::BottleInfo;
use bottle_tests::*;

/// An AWS-shaped key the built-in rules know (not a real credential).
const PLANTED: &str = "AKIAZ7QWERTY2345ABCD";

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{cmd:?}: {out:?}");
    out
}

fn git(dir: &Path, args: &[&str]) -> String {
    let out = run(Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("HOME", dir)
        .env("GIT_AUTHOR_NAME", "Out Of Band")
        .env("GIT_AUTHOR_EMAIL", "oob@example.com")
        .env("GIT_COMMITTER_NAME", "Out Of Band")
        .env("GIT_COMMITTER_EMAIL", "oob@example.com"));
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// The upstream's network: namespace `gitup<slot>` reached from the host over a veth
/// (`10.251.<slot>.1` host side, `.2` inside); removed when dropped.
struct UpstreamNet {
    netns: String,
    host_if: String,
    addr: Ipv4Addr,
}

impl UpstreamNet {
    fn new(slot: u8) -> Self {
        let netns = format!("gitup{slot}");
        let host_if = format!("gitup{slot}h");
        let _ = Command::new("ip").args(["netns", "del", &netns]).output();
        let _ = Command::new("ip").args(["link", "del", &host_if]).output();
        let ip = |args: &[&str]| run(Command::new("ip").args(args));
        ip(&["netns", "add", &netns]);
        ip(&[
            "link", "add", &host_if, "type", "veth", "peer", "name", "eth0", "netns", &netns,
        ]);
        ip(&[
            "addr",
            "add",
            &format!("10.251.{slot}.1/30"),
            "dev",
            &host_if,
        ]);
        ip(&["link", "set", &host_if, "up"]);
        let inside = format!("10.251.{slot}.2/30");
        ip(&["-n", &netns, "addr", "add", &inside, "dev", "eth0"]);
        ip(&["-n", &netns, "link", "set", "eth0", "up"]);
        ip(&["-n", &netns, "link", "set", "lo", "up"]);
        Self {
            netns,
            host_if,
            addr: Ipv4Addr::new(10, 251, slot, 2),
        }
    }
}

impl Drop for UpstreamNet {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_if])
            .output();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.netns])
            .output();
    }
}

/// A bare repo at `bare` with one commit on `main` (made in `scratch/seed`).
fn seed_bare_repo(scratch: &Path, bare: &Path) {
    let work = scratch.join("seed");
    std::fs::create_dir(&work).unwrap();
    git(&work, &["init", "-q", "-b", "main"]);
    std::fs::write(work.join("README"), "hello\n").unwrap();
    git(&work, &["add", "README"]);
    git(&work, &["commit", "-q", "-m", "first"]);
    run(Command::new("git")
        .args(["clone", "-q", "--bare"])
        .arg(&work)
        .arg(bare));
}

fn rev_in(repo: &Path, rev: &str) -> Option<String> {
    let out = Command::new("git")
        .arg("--git-dir")
        .arg(repo)
        .args(["rev-parse", "--verify", "-q", rev])
        .output()
        .unwrap();
    out.status
        .success()
        .then(|| String::from_utf8(out.stdout).unwrap().trim().to_string())
}

/// Commits straight into the upstream `repo` (out of band), on `branch`.
fn commit_into(
    repo: &Path,
    scratch: &Path,
    branch: &str,
    file: &str,
    content: &str,
    msg: &str,
) -> String {
    let work = scratch.join(format!("oob-{}", rand_suffix()));
    run(Command::new("git")
        .args(["clone", "-q", "-b", branch])
        .arg(repo)
        .arg(&work));
    std::fs::write(work.join(file), content).unwrap();
    git(&work, &["add", file]);
    git(&work, &["commit", "-q", "-m", msg]);
    git(&work, &["push", "-q", "origin", branch]);
    git(&work, &["rev-parse", "HEAD"])
}

/// The gate's spec for one repo `app` at `url` (keys are not part of it).
fn gate_spec(url: String) -> GitGateSpec {
    GitGateSpec {
        user: Some(GitUser {
            name: Some("Bottle Agent".into()),
            email: Some("agent@example.com".into()),
        }),
        repos: Some(BTreeMap::from([(
            "app".to_string(),
            GitRepoSpec {
                url,
                identity: String::new(),
                host_key: None,
                policy: None,
            },
        )])),
    }
}

/// The upstream: namespace `gitup<slot>` reached from the host over a veth
/// (`10.251.<slot>.1` host side, `.2` inside), a bare repo with `main`, and `sshd` on `.2:22`
/// accepting only the test key.
struct SshUpstream {
    net: UpstreamNet,
    dir: tempfile::TempDir,
    sshd: Option<Child>,
    host_key: String,
}

impl SshUpstream {
    fn start(slot: u8) -> Self {
        let net = UpstreamNet::new(slot);
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        // Keys: the gate's client key, and the server's only host key (pinned below).
        for (file, comment) in [("client_key", "gate"), ("host_key", "host")] {
            run(Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-C", comment, "-f"])
                .arg(d.join(file)));
        }
        std::fs::copy(d.join("client_key.pub"), d.join("authorized_keys")).unwrap();
        let host_pub = std::fs::read_to_string(d.join("host_key.pub")).unwrap();
        let host_key: String = host_pub
            .split_whitespace()
            .take(2)
            .collect::<Vec<_>>()
            .join(" ");
        seed_bare_repo(d, &d.join("upstream.git"));
        std::fs::write(
            d.join("sshd_config"),
            format!(
                "ListenAddress 10.251.{slot}.2:22\nHostKey {hk}\nAuthorizedKeysFile {ak}\n\
                 PidFile none\nStrictModes no\nUsePAM no\nPasswordAuthentication no\n\
                 KbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\n\
                 SetEnv PATH=/usr/local/bin:/usr/bin:/bin\n",
                hk = d.join("host_key").display(),
                ak = d.join("authorized_keys").display(),
            ),
        )
        .unwrap();
        std::fs::create_dir_all("/run/sshd").unwrap();
        let mut up = Self {
            net,
            dir,
            sshd: None,
            host_key,
        };
        up.start_sshd();
        up
    }

    fn start_sshd(&mut self) {
        let child = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.net.netns,
                "/usr/sbin/sshd",
                "-D",
                "-e",
                "-f",
            ])
            .arg(self.dir.path().join("sshd_config"))
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(self.dir.path().join("sshd.log")).unwrap())
            .spawn()
            .unwrap();
        self.sshd = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while !tcp_connects(SocketAddr::V4(SocketAddrV4::new(self.net.addr, 22)), None) {
            assert!(
                Instant::now() < deadline,
                "sshd did not start: {}",
                self.sshd_log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn stop_sshd(&mut self) {
        if let Some(mut c) = self.sshd.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn sshd_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("sshd.log")).unwrap_or_default()
    }

    fn repo(&self) -> PathBuf {
        self.dir.path().join("upstream.git")
    }

    fn url(&self) -> String {
        format!("ssh://root@{}{}", self.net.addr, self.repo().display())
    }

    fn rev(&self, rev: &str) -> Option<String> {
        rev_in(&self.repo(), rev)
    }

    /// Commits straight into the upstream (out of band), on `branch`.
    fn commit_out_of_band(&self, branch: &str, file: &str, content: &str, msg: &str) -> String {
        commit_into(&self.repo(), self.dir.path(), branch, file, content, msg)
    }

    /// The git-gate YAML for this upstream (`host_key` pinned unless `pin` is false).
    fn gate_yaml(&self, pin: bool, policy: Option<&str>) -> String {
        let mut y = format!(
            "user: {{name: Bottle Agent, email: agent@example.com}}\nrepos:\n  app:\n    url: {}\n    identity: {}\n",
            self.url(),
            self.dir.path().join("client_key").display()
        );
        if pin {
            y.push_str(&format!("    host_key: \"{}\"\n", self.host_key));
        }
        if let Some(policy) = policy {
            y.push_str(&format!("    policy: {policy}\n"));
        }
        y
    }

    fn spec(&self) -> GitGateSpec {
        gate_spec(self.url())
    }
}

impl Drop for SshUpstream {
    fn drop(&mut self) {
        self.stop_sshd();
        // `net` goes after this, with the namespace and veth.
    }
}

fn rand_suffix() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    format!("{}", N.fetch_add(1, Ordering::Relaxed))
}

/// A workspace "inside the bottle": plain git in the bottle's namespace, HOME holding the
/// gitconfig the launcher would write.
struct Inside {
    netns: String,
    home: tempfile::TempDir,
}

impl Inside {
    fn new(bottle: &BottleInfo, spec: &GitGateSpec) -> Self {
        let home = tempfile::tempdir().unwrap();
        std::fs::write(
            home.path().join(".gitconfig"),
            render_gitconfig(spec, bottle.gateway_address),
        )
        .unwrap();
        Self {
            netns: bottle.netns.clone(),
            home,
        }
    }

    fn work(&self) -> PathBuf {
        self.home.path().join("work")
    }

    /// `git ARGS` in the bottle's namespace (in `work` once cloned).
    fn git(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.netns, "git"]);
        if self.work().exists() {
            cmd.arg("-C").arg(self.work());
        }
        cmd.args(args)
            .env("HOME", self.home.path())
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_TERMINAL_PROMPT", "0")
            .env_remove("GIT_AUTHOR_NAME")
            .env_remove("GIT_COMMITTER_NAME")
            .current_dir(self.home.path())
            .output()
            .unwrap()
    }

    fn git_ok(&self, args: &[&str]) -> String {
        let out = self.git(args);
        assert!(
            out.status.success(),
            "git {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    }

    fn commit(&self, file: &str, content: &str, msg: &str) -> String {
        std::fs::write(self.work().join(file), content).unwrap();
        self.git_ok(&["add", file]);
        self.git_ok(&["commit", "-q", "-m", msg]);
        self.git_ok(&["rev-parse", "HEAD"])
    }
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).to_string()
}

fn create(agent: &Agent, up: &SshUpstream, pin: bool, policy: Option<&str>) -> BottleInfo {
    let file = agent.dir.path().join("gate.yaml");
    std::fs::write(&file, up.gate_yaml(pin, policy)).unwrap();
    serde_json::from_str(&agent.ok(&[
        "create",
        "--name",
        "g",
        "--git-gate",
        file.to_str().unwrap(),
        "--json",
    ]))
    .unwrap()
}

fn mirror(agent: &Agent, bottle: &BottleInfo) -> PathBuf {
    agent.state_dir().join(&bottle.id).join("git/app.git")
}

/// Commits a planted key to `main` inside the bottle and pushes it: the gate must refuse it
/// with `remote:` lines naming the file and line, never echoing the secret. Returns the
/// leaky commit and the client's stderr. `how` labels the printed stderr.
fn push_leak(inside: &Inside, how: &str) -> (String, String) {
    let leak = inside.commit(
        "deploy.sh",
        &format!("#!/bin/sh\nexport KEY={PLANTED}\n"),
        "add deploy",
    );
    let out = inside.git(&["push", "origin", "main"]);
    let err = stderr(&out);
    eprintln!("leaky push{how}, as the agent sees it:\n{err}");
    assert!(!out.status.success(), "leaky push accepted: {err}");
    assert!(
        err.contains("remote: git-gate: refs/heads/main: secret found: commit"),
        "{err}"
    );
    assert!(err.contains("file deploy.sh, line 2"), "{err}");
    assert!(err.contains("[remote rejected]"), "{err}");
    assert!(!err.contains(PLANTED), "the secret was echoed: {err}");
    (leak, err)
}

/// `oid` reached neither the upstream nor the gate's mirror.
fn assert_nowhere(upstream: &Path, mirror: &Path, oid: &str) {
    assert!(
        !has_object(upstream, oid),
        "the leaky commit reached the upstream"
    );
    assert!(
        !has_object(mirror, oid),
        "the leaky commit stayed in the mirror"
    );
}

/// A rewritten `main` force-pushed from inside the bottle is refused by the default policy.
fn force_push_main_refused(inside: &Inside) {
    inside.commit("rewrite.txt", "rewritten\n", "rewrite history");
    let out = inside.git(&["push", "--force", "origin", "main"]);
    let err = stderr(&out);
    assert!(!out.status.success(), "force push accepted: {err}");
    assert!(
        err.contains("force-push refused by the git-gate policy"),
        "{err}"
    );
}

/// Installs a declining pre-receive hook in the upstream `repo` and pushes a new commit of
/// `feature`: the hook's words reach the client. Returns the hook's path (for removal).
fn push_declined_by_hook(inside: &Inside, repo: &Path, how: &str) -> PathBuf {
    let hook = repo.join("hooks/pre-receive");
    std::fs::write(
        &hook,
        "#!/bin/sh\necho 'protected: ask a maintainer'\nexit 1\n",
    )
    .unwrap();
    std::fs::set_permissions(&hook, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    inside.commit("more.txt", "more\n", "more");
    let out = inside.git(&["push", "origin", "feature"]);
    let err = stderr(&out);
    eprintln!("hook-declined push{how}:\n{err}");
    assert!(!out.status.success(), "hook-declined push accepted: {err}");
    assert!(err.contains("remote: protected: ask a maintainer"), "{err}");
    assert!(err.contains("pre-receive hook declined"), "{err}");
    hook
}

fn has_object(git_dir: &Path, oid: &str) -> bool {
    Command::new("git")
        .arg("--git-dir")
        .arg(git_dir)
        .args(["cat-file", "-e", oid])
        .status()
        .unwrap()
        .success()
}

#[test]
fn privileged_git_gate_clone_fetch_push_scan_policy_and_fail_closed() {
    if !privileged("privileged_git_gate_clone_fetch_push_scan_policy_and_fail_closed") {
        return;
    }
    let mut up = SshUpstream::start(61);
    let agent = Agent::start(61, "");
    // Branches only (tags refused); force-push left at its default.
    let bottle = create(&agent, &up, true, Some("{allow: [\"refs/heads/*\"]}"));
    assert!(
        bottle.allowed_ports.iter().any(|p| p == "tcp/9420"),
        "{bottle:?}"
    );
    let inside = Inside::new(&bottle, &up.spec());

    // Clone with the upstream URL; the insteadOf sends it through the gate.
    let out = inside.git(&["clone", "-q", &up.url(), "work"]);
    assert!(
        out.status.success(),
        "clone: {}\n{}\n{}",
        stderr(&out),
        agent.log(),
        up.sshd_log()
    );
    assert_eq!(
        std::fs::read_to_string(inside.work().join("README")).unwrap(),
        "hello\n"
    );
    assert_eq!(
        inside.git_ok(&["config", "user.email"]),
        "agent@example.com"
    );

    // An out-of-band upstream commit appears on the next fetch. It carries a secret, which
    // becomes old history for the new branch below.
    let oob = up.commit_out_of_band(
        "main",
        "old.env",
        &format!("AWS_KEY={PLANTED}\n"),
        "old secret",
    );
    inside.git_ok(&["pull", "-q", "--ff-only"]);
    assert_eq!(inside.git_ok(&["rev-parse", "HEAD"]), oob);

    // A clean push lands upstream.
    let clean = inside.commit("notes.txt", "nothing secret\n", "clean change");
    let out = inside.git(&["push", "origin", "main"]);
    assert!(
        out.status.success(),
        "clean push: {}\n{}",
        stderr(&out),
        agent.log()
    );
    assert_eq!(up.rev("main").as_deref(), Some(clean.as_str()));
    // ...by the fast path: the client's own pack, not a libgit2 re-pack.
    assert!(
        agent.log().contains("forwarded the client's pack"),
        "{}",
        agent.log()
    );

    // A planted key: rejected with remote: lines naming commit, file, line and rule; the
    // secret itself is never echoed; nothing lands upstream or in the mirror.
    let (leak, err) = push_leak(&inside, "");
    assert!(err.contains(&leak[..12]), "{err}");
    assert!(err.contains("rule "), "{err}");
    assert_eq!(up.rev("main").as_deref(), Some(clean.as_str()));
    assert_nowhere(&up.repo(), &mirror(&agent, &bottle), &leak);
    inside.git_ok(&["reset", "-q", "--hard", &clean]);

    // A new branch whose old history holds a secret: only its new commit is scanned.
    inside.git_ok(&["checkout", "-q", "-b", "feature"]);
    let feature = inside.commit("feature.txt", "new work\n", "feature");
    let out = inside.git(&["push", "origin", "feature"]);
    assert!(
        out.status.success(),
        "new branch: {}\n{}",
        stderr(&out),
        agent.log()
    );
    assert_eq!(up.rev("feature").as_deref(), Some(feature.as_str()));

    // The repo's policy allows branches only.
    inside.git_ok(&["tag", "v1"]);
    let out = inside.git(&["push", "origin", "v1"]);
    let err = stderr(&out);
    assert!(
        !out.status.success(),
        "tag push accepted: {err}\n{}",
        std::fs::read_to_string(agent.state_dir().join(&bottle.id).join("policy.json")).unwrap()
    );
    assert!(
        err.contains("ref not allowed by the git-gate policy"),
        "{err}"
    );
    assert_eq!(up.rev("refs/tags/v1"), None);

    // Force-push to the default branch is refused by the default policy...
    inside.git_ok(&["checkout", "-q", "main"]);
    inside.git_ok(&["reset", "-q", "--hard", &oob]);
    force_push_main_refused(&inside);
    assert_eq!(up.rev("main").as_deref(), Some(clean.as_str()));
    // ...but allowed on another branch.
    inside.git_ok(&["checkout", "-q", "feature"]);
    inside.git_ok(&["commit", "-q", "--amend", "-m", "feature, reworded"]);
    let amended = inside.git_ok(&["rev-parse", "HEAD"]);
    let out = inside.git(&["push", "--force", "origin", "feature"]);
    assert!(
        out.status.success(),
        "force to a topic branch: {}",
        stderr(&out)
    );
    assert_eq!(up.rev("feature").as_deref(), Some(amended.as_str()));

    // Upstream refusal reaches the client word for word: a hook that declines.
    let hook = push_declined_by_hook(&inside, &up.repo(), "");
    assert_eq!(up.rev("feature").as_deref(), Some(amended.as_str()));
    assert!(
        !agent.log().contains("forwarding with libgit2"),
        "an ssh push fell back to libgit2:\n{}",
        agent.log()
    );
    std::fs::remove_file(&hook).unwrap();

    // Upstream down: the fetch fails closed, with a message, and serves nothing stale.
    up.stop_sshd();
    let out = inside.git(&["fetch", "origin"]);
    let err = stderr(&out);
    eprintln!("fetch with the upstream down:\n{err}");
    assert!(
        !out.status.success(),
        "fetch with the upstream down succeeded: {err}"
    );
    assert!(
        err.contains("remote: git-gate: app: upstream fetch failed"),
        "{err}"
    );
    assert!(err.contains("serves no stale data"), "{err}");

    // Counted and audited.
    let stats = agent.stats("g");
    let g = &stats.l7.git;
    assert!(g.fetches >= 6 && g.fetch_failures >= 1, "{g:?}");
    assert!(g.refs_accepted >= 3, "{g:?}");
    assert_eq!(g.refs_rejected.get("secret"), Some(&1), "{g:?}");
    assert_eq!(g.refs_rejected.get("policy_force"), Some(&1), "{g:?}");
    assert_eq!(g.refs_rejected.get("policy_ref"), Some(&1), "{g:?}");
    assert!(g.refs_rejected.get("upstream") >= Some(&1), "{g:?}");
    assert!(g.bytes_in > 0 && g.bytes_out > 0, "{g:?}");
    let audit = agent.audit("g");
    assert!(audit.contains("\"kind\":\"git\""), "{audit}");
    assert!(audit.contains("\"decision\":\"dlp_blocked\""), "{audit}");
    assert!(!audit.contains(PLANTED), "{audit}");
    assert!(!agent.log().contains("BEGIN OPENSSH PRIVATE KEY"));
}

#[test]
fn privileged_git_gate_refuses_unpinned_hosts_and_bad_requests() {
    if !privileged("privileged_git_gate_refuses_unpinned_hosts_and_bad_requests") {
        return;
    }
    let up = SshUpstream::start(62);
    let agent = Agent::start(62, "");
    let bottle = create(&agent, &up, false, None);
    let inside = Inside::new(&bottle, &up.spec());
    let out = inside.git(&["clone", "-q", &up.url(), "work"]);
    let err = stderr(&out);
    eprintln!("clone without a pinned host key:\n{err}");
    assert!(
        !out.status.success(),
        "clone without a pinned host key: {err}"
    );
    assert!(err.contains("no host key is pinned"), "{err}");
    assert!(err.contains("ssh-keyscan"), "{err}");
    assert!(!inside.work().exists());
    // The upstream was never contacted.
    assert!(
        !up.sshd_log().contains("Connection from"),
        "{}",
        up.sshd_log()
    );

    let base = format!("http://{}:9420", bottle.gateway_address);
    let status = |args: &[&str]| -> String {
        let mut full = vec!["-o", "/dev/null", "-w", "%{http_code}"];
        full.extend_from_slice(args);
        curl(&bottle.netns, &full).1
    };
    // A name that escapes the root, an unknown repo, the dumb protocol.
    assert_eq!(
        status(&[&format!(
            "{base}/..%2f..%2fetc.git/info/refs?service=git-upload-pack"
        )]),
        "400"
    );
    assert_eq!(
        status(&[
            "--path-as-is",
            &format!("{base}/../app.git/info/refs?service=git-upload-pack")
        ]),
        "400"
    );
    assert_eq!(
        status(&[&format!(
            "{base}/nope.git/info/refs?service=git-upload-pack"
        )]),
        "404"
    );
    assert_eq!(status(&[&format!("{base}/app.git/info/refs")]), "403");
    // Malformed pkt-lines and an oversized refs list, refused before anything is written.
    let push = format!("{base}/app.git/git-receive-pack");
    assert_eq!(status(&["--data-binary", "zzzzgarbage", &push]), "400");
    let z = "0".repeat(40);
    let one = "1".repeat(40);
    let mut big = String::new();
    for i in 0..1500 {
        let line = format!("{z} {one} refs/heads/b{i}\n");
        big.push_str(&format!("{:04x}{line}", line.len() + 4));
    }
    let big_file = agent.dir.path().join("big");
    std::fs::write(&big_file, big).unwrap();
    assert_eq!(
        status(&["--data-binary", &format!("@{}", big_file.display()), &push]),
        "400"
    );
    assert_eq!(
        status(&[
            "--data-binary",
            "0000",
            &format!("{base}/app.git/git-upload-pack")
        ]),
        "200"
    );
    let quarantines = std::fs::read_dir(mirror(&agent, &bottle))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("quarantine-"))
        .count();
    assert_eq!(quarantines, 0);
}

#[test]
fn privileged_git_gate_restart_keeps_mirrors_but_needs_keys_again() {
    if !privileged("privileged_git_gate_restart_keeps_mirrors_but_needs_keys_again") {
        return;
    }
    let up = SshUpstream::start(63);
    let mut agent = Agent::start(63, "");
    let bottle = create(&agent, &up, true, None);
    let inside = Inside::new(&bottle, &up.spec());
    let out = inside.git(&["clone", "-q", &up.url(), "work"]);
    assert!(
        out.status.success(),
        "clone: {}\n{}",
        stderr(&out),
        agent.log()
    );

    agent.kill9();
    agent.spawn();
    assert!(
        mirror(&agent, &bottle).join("HEAD").exists(),
        "the mirror did not survive"
    );
    let out = inside.git(&["fetch", "origin"]);
    let err = stderr(&out);
    assert!(!out.status.success(), "fetch without keys succeeded: {err}");
    assert!(err.contains("bottle git-gate-keys"), "{err}");
    let policy =
        std::fs::read_to_string(agent.state_dir().join(&bottle.id).join("policy.json")).unwrap();
    assert!(
        policy.contains("git_gate") && !policy.contains("PRIVATE KEY"),
        "{policy}"
    );

    agent.ok(&[
        "git-gate-keys",
        "g",
        "--git-gate",
        agent.dir.path().join("gate.yaml").to_str().unwrap(),
    ]);
    let oob = up.commit_out_of_band("main", "after.txt", "after restart\n", "after");
    inside.git_ok(&["pull", "-q", "--ff-only"]);
    assert_eq!(inside.git_ok(&["rev-parse", "HEAD"]), oob);
}

/// The agent's anonymous resident memory (heap, stacks), in KiB: what grows if a body is
/// buffered. File pages (mapped packs) are the page cache's and are left out.
fn rss_anon_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("RssAnon:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

#[test]
fn privileged_git_gate_streams_a_200_mb_push_in_bounded_memory() {
    if !privileged("privileged_git_gate_streams_a_200_mb_push_in_bounded_memory") {
        return;
    }
    let up = SshUpstream::start(64);
    let agent = Agent::start(64, "");
    let bottle = create(&agent, &up, true, None);
    let inside = Inside::new(&bottle, &up.spec());
    let out = inside.git(&["clone", "-q", &up.url(), "work"]);
    assert!(
        out.status.success(),
        "clone: {}\n{}",
        stderr(&out),
        agent.log()
    );
    // 200 MB that does not compress, in ten 20 MB files (each under the scanner's per-blob
    // bound, so the push is scanned, not refused): the pack is as large as the data.
    for i in 0..10 {
        let blob = inside.work().join(format!("data{i}.bin"));
        let made = Command::new("dd")
            .args(["if=/dev/urandom", "bs=1M", "count=20", "status=none"])
            .arg(format!("of={}", blob.display()))
            .status()
            .unwrap();
        assert!(made.success());
    }
    inside.git_ok(&["add", "."]);
    inside.git_ok(&["commit", "-q", "-m", "200 MB of data"]);
    let head = inside.git_ok(&["rev-parse", "HEAD"]);

    // Watch the agent's heap while the push goes through.
    let pid = agent.pid().unwrap();
    let before = rss_anon_kib(pid);
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = {
        let done = done.clone();
        std::thread::spawn(move || {
            let mut peak = 0;
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                peak = peak.max(rss_anon_kib(pid));
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            peak
        })
    };
    let out = inside.git(&["push", "-q", "origin", "HEAD:main"]);
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let peak = watcher.join().unwrap();
    assert!(
        out.status.success(),
        "push: {}\n{}",
        stderr(&out),
        agent.log()
    );
    assert_eq!(up.rev("main"), Some(head), "not upstream");
    // Bounded: the 200 MB went through pipes and files, not the agent's memory; at most a
    // blob or two is held while it is scanned.
    let grown_mib = peak.saturating_sub(before) / 1024;
    eprintln!("agent heap during the push: {before} -> {peak} KiB");
    assert!(
        grown_mib < 128,
        "the agent's heap grew by {grown_mib} MiB during a 200 MB push ({before} -> {peak} KiB)"
    );
}

/// The HTTPS upstream: namespace `gitup<slot>` as for SSH, a bare repo under `root/app.git`
/// served by `git http-backend` behind `bottle-test-git-https` on `10.251.<slot>.2:443`,
/// whose certificate (IP SAN) comes from a test CA the agent trusts through
/// `upstream_ca_files`. A second CA, which nobody trusts, signs a rogue certificate for the
/// same address. Every request needs the token as its basic-auth password.
struct HttpsUpstream {
    net: UpstreamNet,
    dir: tempfile::TempDir,
    server: Option<Child>,
}

/// The upstream's token (shaped so that no DLP rule takes it for a secret: the point is that
/// it never shows up anywhere, not that a rule would catch it).
const TOKEN: &str = "bottle-test-token-0123456789";

impl HttpsUpstream {
    fn start(slot: u8) -> Self {
        let net = UpstreamNet::new(slot);
        let addr = net.addr;
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        for ca in ["ca", "rogue"] {
            run(Command::new(bin_dir().join("bottle-test-ca"))
                .arg(d.join(ca))
                .arg(addr.to_string()));
        }
        std::fs::write(d.join("token"), format!("{TOKEN}\n")).unwrap();
        std::fs::write(d.join("identity"), format!("{TOKEN}\n")).unwrap();
        std::fs::create_dir(d.join("root")).unwrap();
        seed_bare_repo(d, &d.join("root/app.git"));
        run(Command::new("git")
            .arg("--git-dir")
            .arg(d.join("root/app.git"))
            .args(["config", "http.receivepack", "true"]));
        let mut up = Self {
            net,
            dir,
            server: None,
        };
        up.start_server("ca");
        up
    }

    /// (Re)starts the server with the certificate signed by `ca` (`ca` or `rogue`).
    fn start_server(&mut self, ca: &str) {
        self.stop_server();
        let d = self.dir.path();
        let host = self.net.addr.to_string();
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.net.netns])
            .arg(bin_dir().join("bottle-test-git-https"))
            .args(["--listen", &format!("{}:443", self.net.addr), "--tls"])
            .arg(d.join(ca).join(format!("{host}.pem")))
            .arg(d.join(ca).join(format!("{host}.key")))
            .arg("--root")
            .arg(d.join("root"))
            .arg("--token-file")
            .arg(d.join("token"))
            .stdout(std::process::Stdio::piped())
            .stderr(std::fs::File::create(d.join("server.log")).unwrap())
            .spawn()
            .unwrap();
        let mut line = [0u8; 5];
        std::io::Read::read_exact(child.stdout.as_mut().unwrap(), &mut line)
            .unwrap_or_else(|e| panic!("the https upstream did not start: {e}: {}", self.log()));
        assert_eq!(&line, b"ready");
        self.server = Some(child);
    }

    fn stop_server(&mut self) {
        if let Some(mut c) = self.server.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    fn ca_pem(&self) -> PathBuf {
        self.dir.path().join("ca/ca.pem")
    }

    fn repo(&self) -> PathBuf {
        self.dir.path().join("root/app.git")
    }

    fn url(&self) -> String {
        format!("https://{}/app.git", self.net.addr)
    }

    fn rev(&self, rev: &str) -> Option<String> {
        rev_in(&self.repo(), rev)
    }

    fn commit_out_of_band(&self, branch: &str, file: &str, content: &str, msg: &str) -> String {
        commit_into(&self.repo(), self.dir.path(), branch, file, content, msg)
    }

    fn gate_yaml(&self) -> String {
        format!(
            "user: {{name: Bottle Agent, email: agent@example.com}}\nrepos:\n  app:\n    url: {}\n    identity: {}\n",
            self.url(),
            self.dir.path().join("identity").display()
        )
    }

    fn spec(&self) -> GitGateSpec {
        gate_spec(self.url())
    }
}

impl Drop for HttpsUpstream {
    fn drop(&mut self) {
        self.stop_server();
        // `net` goes after this, with the namespace and veth.
    }
}

#[test]
fn privileged_git_gate_https_upstream_with_a_token() {
    if !privileged("privileged_git_gate_https_upstream_with_a_token") {
        return;
    }
    let mut up = HttpsUpstream::start(65);
    let agent = Agent::start(
        65,
        &format!("upstream_ca_files = [\"{}\"]", up.ca_pem().display()),
    );
    let gate_file = agent.dir.path().join("gate.yaml");
    std::fs::write(&gate_file, up.gate_yaml()).unwrap();
    let bottle: BottleInfo = serde_json::from_str(&agent.ok(&[
        "create",
        "--name",
        "g",
        "--git-gate",
        gate_file.to_str().unwrap(),
        "--json",
    ]))
    .unwrap();
    let inside = Inside::new(&bottle, &up.spec());

    // Clone with the https upstream URL; the insteadOf sends it through the gate, which
    // verifies the upstream's certificate against the agent's upstream_ca_files.
    let out = inside.git(&["clone", "-q", &up.url(), "work"]);
    assert!(
        out.status.success(),
        "clone: {}\n{}\n{}",
        stderr(&out),
        agent.log(),
        up.log()
    );
    assert_eq!(
        std::fs::read_to_string(inside.work().join("README")).unwrap(),
        "hello\n"
    );

    // An out-of-band upstream commit appears on the next fetch.
    let oob = up.commit_out_of_band("main", "oob.txt", "from upstream\n", "upstream change");
    inside.git_ok(&["pull", "-q", "--ff-only"]);
    assert_eq!(inside.git_ok(&["rev-parse", "HEAD"]), oob);

    // A clean push lands upstream (libgit2's push: the fast path is SSH only).
    let clean = inside.commit("notes.txt", "nothing secret\n", "clean change");
    let out = inside.git(&["push", "origin", "main"]);
    assert!(
        out.status.success(),
        "clean push: {}\n{}\n{}",
        stderr(&out),
        agent.log(),
        up.log()
    );
    assert_eq!(up.rev("main").as_deref(), Some(clean.as_str()));
    assert!(
        agent.log().contains("forwarding with libgit2"),
        "{}",
        agent.log()
    );

    // A planted key: rejected with remote: lines, lands nowhere.
    let (leak, _) = push_leak(&inside, " over https");
    assert_eq!(up.rev("main").as_deref(), Some(clean.as_str()));
    assert_nowhere(&up.repo(), &mirror(&agent, &bottle), &leak);
    inside.git_ok(&["reset", "-q", "--hard", &clean]);

    // An annotated tag's message is scanned too: a leaky one is refused, a clean one lands.
    inside.git_ok(&["tag", "-a", "v1", "-m", &format!("release\nkey {PLANTED}")]);
    let tag = inside.git_ok(&["rev-parse", "v1"]);
    let out = inside.git(&["push", "origin", "v1"]);
    let err = stderr(&out);
    eprintln!("leaky tag push over https:\n{err}");
    assert!(!out.status.success(), "leaky tag accepted: {err}");
    assert!(
        err.contains(&format!(
            "remote: git-gate: refs/tags/v1: secret found: tag {}, tag message: rule ",
            &tag[..12]
        )),
        "{err}"
    );
    assert!(!err.contains(PLANTED), "the secret was echoed: {err}");
    assert_eq!(up.rev("refs/tags/v1"), None);
    assert!(
        !has_object(&up.repo(), &tag),
        "the leaky tag reached the upstream"
    );
    inside.git_ok(&["tag", "-d", "v1"]);
    inside.git_ok(&["tag", "-a", "v1", "-m", "release one"]);
    let tag = inside.git_ok(&["rev-parse", "v1"]);
    inside.git_ok(&["push", "-q", "origin", "v1"]);
    assert_eq!(up.rev("refs/tags/v1").as_deref(), Some(tag.as_str()));

    // The ref policy applies as over SSH: no force-push to the default branch.
    inside.git_ok(&["reset", "-q", "--hard", &oob]);
    force_push_main_refused(&inside);
    assert_eq!(up.rev("main").as_deref(), Some(clean.as_str()));
    inside.git_ok(&["reset", "-q", "--hard", &clean]);

    // Upstream refusals reach the client word for word: a declining hook...
    inside.git_ok(&["checkout", "-q", "-b", "feature"]);
    let feature = inside.commit("feature.txt", "new work\n", "feature");
    inside.git_ok(&["push", "-q", "origin", "feature"]);
    assert_eq!(up.rev("feature").as_deref(), Some(feature.as_str()));
    let hook = push_declined_by_hook(&inside, &up.repo(), " over https");
    assert_eq!(up.rev("feature").as_deref(), Some(feature.as_str()));
    std::fs::remove_file(&hook).unwrap();
    // ...and a non-fast-forward the upstream denies (the gate's policy allows force-pushing
    // a topic branch; the upstream's does not).
    run(Command::new("git").arg("--git-dir").arg(up.repo()).args([
        "config",
        "receive.denyNonFastForwards",
        "true",
    ]));
    inside.git_ok(&["reset", "-q", "--hard", &clean]);
    inside.commit("other.txt", "other\n", "rewritten feature");
    let out = inside.git(&["push", "--force", "origin", "feature"]);
    let err = stderr(&out);
    eprintln!("non-fast-forward over https:\n{err}");
    assert!(!out.status.success(), "denied force push accepted: {err}");
    assert!(
        err.contains("denying non-fast-forward refs/heads/feature"),
        "{err}"
    );
    assert_eq!(up.rev("feature").as_deref(), Some(feature.as_str()));

    // A wrong token: the fetch fails closed, saying what to check.
    std::fs::write(up.dir.path().join("identity"), "not-the-token\n").unwrap();
    agent.ok(&[
        "git-gate-keys",
        "g",
        "--git-gate",
        gate_file.to_str().unwrap(),
    ]);
    let out = inside.git(&["fetch", "origin"]);
    let err = stderr(&out);
    eprintln!("fetch with a wrong token:\n{err}");
    assert!(!out.status.success(), "fetch with a wrong token: {err}");
    assert!(
        err.contains("remote: git-gate: app: the upstream refused the gate's credential"),
        "{err}"
    );
    assert!(err.contains("check the token"), "{err}");
    assert!(up.log().contains("unauthorised"), "{}", up.log());
    assert!(err.contains("serves no stale data"), "{err}");
    std::fs::write(up.dir.path().join("identity"), format!("{TOKEN}\n")).unwrap();
    agent.ok(&[
        "git-gate-keys",
        "g",
        "--git-gate",
        gate_file.to_str().unwrap(),
    ]);
    inside.git_ok(&["fetch", "-q", "origin"]);

    // An upstream certificate from a CA nobody trusts: refused before any request, so the
    // token never leaves; the client reads why.
    up.start_server("rogue");
    assert!(!up.log().contains("request "), "{}", up.log());
    let out = inside.git(&["fetch", "origin"]);
    let err = stderr(&out);
    eprintln!("fetch from an untrusted upstream certificate:\n{err}");
    assert!(!out.status.success(), "fetch from a rogue upstream: {err}");
    assert!(
        err.contains(&format!(
            "remote: git-gate: app: the upstream {} presented a TLS certificate the git-gate does not trust",
            up.net.addr
        )),
        "{err}"
    );
    assert!(err.contains("upstream_ca_files"), "{err}");
    assert!(
        !up.log().contains("request "),
        "a request reached the rogue upstream:\n{}",
        up.log()
    );
    up.start_server("ca");
    inside.git_ok(&["fetch", "-q", "origin"]);

    // Counted, audited, and the token is nowhere.
    let g = agent.stats("g").l7.git;
    assert!(g.fetch_failures >= 2, "{g:?}");
    assert_eq!(g.refs_rejected.get("secret"), Some(&2), "{g:?}");
    assert!(g.refs_rejected.get("upstream") >= Some(&2), "{g:?}");
    let policy =
        std::fs::read_to_string(agent.state_dir().join(&bottle.id).join("policy.json")).unwrap();
    for (what, text) in [
        ("agent log", agent.log()),
        ("audit", agent.audit("g")),
        ("policy.json", policy),
    ] {
        assert!(!text.contains(TOKEN), "the token is in the {what}");
    }
}
