//! End-to-end tests of `bottle run AGENT` and `bottle resume`: bot-bottle manifests in a
//! scratch `BOTTLE_HOME`, the test image's stand-in `claude` and `codex` (scripts that print
//! their argv, env and config files and call their API host), a test-made "internet" serving
//! the providers' API hosts, and the real agent in between. Slots 51 and 52.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::mpsc;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use bottle_tests::*;

const CLAUDE_SLOT: u8 = 51;
const CODEX_SLOT: u8 = 52;
const BUILD_SLOT: u8 = 53;
const API_HOSTS: &[&str] = &["api.anthropic.com", "api.openai.com", "chatgpt.com"];

/// The real claude token; must reach the upstream and nothing inside the bottle.
const CLAUDE_TOKEN: &str = "sk-ant-oat01-REAL-claude-token-0123456789";
/// A value the bottle's `env` takes from the host (`${HOST_SECRET}`).
const HOST_SECRET: &str = "host-secret-value-98765";

/// The agent config: trust the internet's CA, dial the providers' hosts there.
fn agent_config(internet: &Internet) -> String {
    let mut toml = format!("{}\n[upstream_hosts]\n", Agent::trust_line(internet));
    for h in API_HOSTS {
        toml.push_str(&format!("\"{h}\" = \"{}:443\"\n", internet.addr));
    }
    toml
}

/// Runs `bottle` with the scratch manifest home (bounded).
fn bottle(agent: &Agent, home: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let (tx, rx) = mpsc::channel();
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let mut vars: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    vars.push(("BOTTLE_HOME".into(), home.display().to_string()));
    // No image builder on the client's PATH, whatever the host has: a test must never start a
    // build that pulls from a registry.
    vars.push(("PATH".into(), "/nonexistent".into()));
    vars.push((
        bottle_api::HOST_ENV.into(),
        agent.socket().display().to_string(),
    ));
    let cwd = home.to_path_buf();
    let shown = args.clone();
    std::thread::spawn(move || {
        let out = Command::new(bin_dir().join("bottle"))
            .args(&args)
            .envs(vars)
            .current_dir(cwd)
            .output()
            .unwrap();
        let _ = tx.send(out);
    });
    rx.recv_timeout(Duration::from_secs(120))
        .unwrap_or_else(|_| panic!("bottle {shown:?} did not finish:\n{}", agent.log()))
}

fn write(path: &Path, contents: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, contents).unwrap();
}

/// Lines of the stand-in's output starting with `prefix`, prefix removed.
fn lines<'a>(out: &'a str, prefix: &str) -> Vec<&'a str> {
    out.lines().filter_map(|l| l.strip_prefix(prefix)).collect()
}

/// What the upstream saw: the `upstream:` line's JSON echo.
fn upstream_echo(out: &str) -> serde_json::Value {
    let line = lines(out, "upstream: ");
    assert_eq!(line.len(), 1, "one upstream line expected:\n{out}");
    serde_json::from_str(line[0]).unwrap_or_else(|e| panic!("{e}: {}", line[0]))
}

/// Every byte of the workload's home on the host (the files the agent wrote, and what the
/// stand-in left), for "no real credential inside".
fn home_contents(agent: &Agent) -> String {
    fn walk(dir: &Path, out: &mut String) {
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, out);
            } else if let Ok(b) = std::fs::read(&p) {
                out.push_str(&String::from_utf8_lossy(&b));
            }
        }
    }
    let mut out = String::new();
    walk(&agent.dir.path().join("run/homes"), &mut out);
    out
}

fn claude_home(root: &Path) -> PathBuf {
    let home = root.join("bot-bottle");
    write(
        &home.join("bottles/dev.md"),
        "---\n\
         env:\n  GREETING: hello\n  API_SECRET: ${HOST_SECRET}\n\
         agent_provider:\n  template: claude\n  auth_token: TEST_CLAUDE_TOKEN\n\
         git-gate:\n  user: {name: Agent Smith, email: agent@example.com}\n  repos:\n    app:\n      url: ssh://git@git.example.com/team/app.git\n      identity: ../keys/gate\n      host_key: ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGJvdHRsZS10ZXN0LWhvc3Qta2V5LWJ5dGVzISE=\n\
         ---\nThe dev bottle.\n",
    );
    // Key material is only read and sent to the agent's memory; never used here.
    write(
        &home.join("keys/gate"),
        "-----BEGIN OPENSSH PRIVATE KEY-----\nnot-a-real-key\n-----END OPENSSH PRIVATE KEY-----\n",
    );
    write(
        &home.join("agents/reviewer.md"),
        "---\nbottle: dev\nskills: [review]\ndescription: ignored by bottle\n---\nReview the diff carefully.\n",
    );
    write(
        &home.join("skills/review/SKILL.md"),
        "# Review\nLook for bugs.\n",
    );
    home
}

#[test]
fn privileged_claude_agent_runs_with_placeholders_and_resumes() {
    if !privileged("privileged_claude_agent_runs_with_placeholders_and_resumes") {
        return;
    }
    let internet = Internet::start(CLAUDE_SLOT, API_HOSTS);
    let agent = Agent::start(CLAUDE_SLOT, &agent_config(&internet));
    let scratch = tempfile::tempdir().unwrap();
    let home = claude_home(scratch.path());
    let image = test_image();
    let env = [
        ("TEST_CLAUDE_TOKEN", CLAUDE_TOKEN),
        ("HOST_SECRET", HOST_SECRET),
    ];

    // --dry-run: the preflight summary, nothing created, no agent call needed.
    let dry = bottle(&agent, &home, &["run", "reviewer", "--dry-run"], &env);
    assert!(dry.status.success(), "{dry:?}");
    let summary = text(&dry.stdout);
    let agent_file = home.join("agents/reviewer.md");
    let bottle_file = home.join("bottles/dev.md");
    let expected = format!(
        "agent:     reviewer  ({})\n\
         provider:  claude  (token from $TEST_CLAUDE_TOKEN)\n\
         bottle:    dev  ({})\n\
         env:       API_SECRET ($HOST_SECRET), GREETING (literal)\n\
         skills:    review\n\
         git user:  Agent Smith <agent@example.com>\n\
         supervise: off\n\
         gate repos:\n  app  ssh://git@git.example.com/team/app.git\n\
         egress:\n  api.anthropic.com  [auth:Bearer]  (provider)\n",
        agent_file.display(),
        bottle_file.display()
    );
    assert_eq!(summary, expected);
    assert!(!summary.contains(CLAUDE_TOKEN) && !summary.contains(HOST_SECRET));
    assert_eq!(agent.ok(&["ls", "--json"]).trim(), "[]");

    // No terminal and no -y: refused before anything is made.
    let unconfirmed = bottle(&agent, &home, &["run", "reviewer", "--image", &image], &env);
    assert_eq!(unconfirmed.status.code(), Some(1), "{unconfirmed:?}");
    assert!(
        text(&unconfirmed.stderr).contains("pass -y"),
        "{unconfirmed:?}"
    );
    assert_eq!(agent.ok(&["ls", "--json"]).trim(), "[]");

    // The provider's image is not in the cache and this host has no builder: the error says
    // how to get it, and nothing is made.
    let missing = bottle(&agent, &home, &["run", "reviewer", "-y"], &env);
    assert_eq!(missing.status.code(), Some(1), "{missing:?}");
    let err = text(&missing.stderr);
    assert!(
        err.contains("\"bottle-claude\" is not in the agent's image cache")
            && err.contains("bottle images build claude"),
        "{err}"
    );
    assert_eq!(agent.ok(&["ls", "--json"]).trim(), "[]");

    // Imported under the provider's image name, it is what `run AGENT` uses.
    let imported = bottle(
        &agent,
        &home,
        &["images", "import", &image, "--name", "bottle-claude"],
        &[],
    );
    assert!(imported.status.success(), "{imported:?}");
    let listed = bottle(&agent, &home, &["images", "ls", "--json"], &[]);
    let list: Vec<bottle_api::images::ImageInfo> = serde_json::from_slice(&listed.stdout).unwrap();
    assert!(
        list.iter().any(|i| i.answers_to("bottle-claude")),
        "{list:?}"
    );

    // The launch.
    let run = bottle(
        &agent,
        &home,
        &["run", "reviewer", "-y", "--name", "rv"],
        &env,
    );
    let out = text(&run.stdout);
    assert_eq!(run.status.code(), Some(0), "{run:?}\n{}", agent.log());
    assert_eq!(lines(&out, "stand-in: "), ["claude"], "{out}");
    assert_eq!(
        lines(&out, "arg: "),
        [
            "--dangerously-skip-permissions",
            "--append-system-prompt-file",
            "/home/agent/.bottle/agent-prompt.md"
        ],
        "{out}"
    );
    assert_eq!(lines(&out, "cwd: "), ["/home/agent/workspace"], "{out}");
    let env_lines = lines(&out, "env: ");
    for expected in [
        "CLAUDE_CODE_OAUTH_TOKEN=egress-placeholder",
        "GREETING=hello",
        "HOME=/home/agent",
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC=1",
        "NODE_EXTRA_CA_CERTS=/etc/ssl/certs/ca-certificates.crt",
    ] {
        assert!(env_lines.contains(&expected), "{expected} missing:\n{out}");
    }
    assert!(
        lines(&out, "file .bottle/agent-prompt.md: ").contains(&"Review the diff carefully."),
        "{out}"
    );
    assert!(
        lines(&out, "file .claude.json: ")
            .iter()
            .any(|l| l.contains("/home/agent/workspace")),
        "{out}"
    );
    let gitconfig = lines(&out, "file .gitconfig: ").join("\n");
    assert!(gitconfig.contains("Agent Smith"), "{out}");
    // The upstream URL is rewritten to this bottle's git-gate.
    let info: bottle_api::BottleInfo =
        serde_json::from_str(&agent.ok(&["inspect", "rv", "--json"])).unwrap();
    assert!(
        gitconfig.contains(&format!(
            "[url \"http://{}:9420/app.git\"]",
            info.gateway_address
        )) && gitconfig.contains("insteadOf = \"ssh://git@git.example.com/team/app.git\""),
        "{gitconfig}"
    );
    assert_eq!(
        lines(&out, "skill: "),
        ["/home/agent/.claude/skills/review/SKILL.md"],
        "{out}"
    );
    // The upstream saw the real token, swapped in by the proxy...
    let echo = upstream_echo(&out);
    assert_eq!(
        echo["headers"]["authorization"],
        format!("Bearer {CLAUDE_TOKEN}"),
        "{out}"
    );
    // ...and nothing the workload printed or has in its home holds it (the echo aside).
    let inside: String = out
        .lines()
        .filter(|l| !l.starts_with("upstream: "))
        .collect::<Vec<_>>()
        .join("\n");
    assert!(!inside.contains(CLAUDE_TOKEN), "{inside}");
    let home_files = home_contents(&agent);
    assert!(home_files.contains("Review the diff"), "home not found");
    assert!(!home_files.contains(CLAUDE_TOKEN));

    // The bottle records its agent, for resume.
    let info: bottle_api::BottleInfo =
        serde_json::from_str(&agent.ok(&["inspect", "rv", "--json"])).unwrap();
    let meta = info.agent.expect("agent metadata");
    assert_eq!(
        (
            meta.agent.as_str(),
            meta.bottle.as_str(),
            meta.provider.as_str()
        ),
        ("reviewer", "dev", "claude")
    );
    assert_eq!(info.launcher, "runc");

    // A second run in the same bottle, with the provider's resume arguments.
    let resumed = bottle(&agent, &home, &["resume", "rv"], &env);
    let out2 = text(&resumed.stdout);
    assert_eq!(
        resumed.status.code(),
        Some(0),
        "{resumed:?}\n{}",
        agent.log()
    );
    assert!(lines(&out2, "arg: ").contains(&"--continue"), "{out2}");
    assert_eq!(
        lines(&out2, "runs: "),
        ["2"],
        "the home was not kept:\n{out2}"
    );
    assert_eq!(
        upstream_echo(&out2)["headers"]["authorization"],
        format!("Bearer {CLAUDE_TOKEN}")
    );

    // Resume refuses a bottle that no manifest agent made.
    agent.ok(&["create", "--name", "plain"]);
    let refused = bottle(&agent, &home, &["resume", "plain"], &env);
    assert_eq!(refused.status.code(), Some(1), "{refused:?}");
    assert!(
        text(&refused.stderr).contains("not started from an agent manifest"),
        "{refused:?}"
    );

    // rm takes the home with the bottle.
    agent.ok(&["rm", "-f", "rv"]);
    agent.ok(&["rm", "-f", "plain"]);
    assert!(!home_contents(&agent).contains("Review the diff"));
}

#[test]
fn privileged_manifest_errors_launch_nothing() {
    if !privileged("privileged_manifest_errors_launch_nothing") {
        return;
    }
    let internet = Internet::start(CLAUDE_SLOT, API_HOSTS);
    let agent = Agent::start(CLAUDE_SLOT, &agent_config(&internet));
    let scratch = tempfile::tempdir().unwrap();
    let home = claude_home(scratch.path());
    // The claude token's variable is not set: named, and nothing made.
    let out = bottle(
        &agent,
        &home,
        &["run", "reviewer", "-y", "--image", &test_image()],
        &[("HOST_SECRET", HOST_SECRET)],
    );
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(text(&out.stderr).contains("TEST_CLAUDE_TOKEN"), "{out:?}");
    // A key the schema does not allow: file, line and the allowed keys.
    write(
        &home.join("agents/broken.md"),
        "---\nbottle: dev\ncolour: red\n---\n",
    );
    let out = bottle(&agent, &home, &["run", "broken", "--dry-run"], &[]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = text(&out.stderr);
    assert!(err.contains("broken.md:3"), "{err}");
    assert!(
        err.contains("colour") && err.contains("allowed keys are"),
        "{err}"
    );
    assert_eq!(agent.ok(&["ls", "--json"]).trim(), "[]");
}

/// A JWT-shaped token with `claims` (unsigned; the proxy never checks it).
fn jwt(claims: &serde_json::Value) -> String {
    format!(
        "{}.{}.{}",
        URL_SAFE_NO_PAD.encode(br#"{"alg":"RS256","typ":"JWT"}"#),
        URL_SAFE_NO_PAD.encode(claims.to_string()),
        URL_SAFE_NO_PAD.encode("signature")
    )
}

#[test]
fn privileged_codex_agent_gets_a_dummy_login_and_the_real_token_upstream() {
    if !privileged("privileged_codex_agent_gets_a_dummy_login_and_the_real_token_upstream") {
        return;
    }
    let internet = Internet::start(CODEX_SLOT, API_HOSTS);
    let agent = Agent::start(CODEX_SLOT, &agent_config(&internet));
    let scratch = tempfile::tempdir().unwrap();
    let home = scratch.path().join("bot-bottle");
    write(
        &home.join("bottles/cx.md"),
        "---\nagent_provider:\n  template: codex\n  forward_host_credentials: true\n---\n",
    );
    write(
        &home.join("agents/coder.md"),
        "---\nbottle: cx\n---\nWrite tests.\n",
    );
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600;
    let access = jwt(&serde_json::json!({
        "exp": exp,
        "email": "real-person@corp.example",
        "https://api.openai.com/auth": {"chatgpt_account_id": "acct-42"}
    }));
    let codex_home = scratch.path().join("codex");
    write(
        &codex_home.join("auth.json"),
        &serde_json::json!({
            "OPENAI_API_KEY": null,
            "tokens": {
                "id_token": jwt(&serde_json::json!({"exp": exp, "email": "real-person@corp.example"})),
                "access_token": access,
                "refresh_token": "real-refresh-token-1234",
                "account_id": "acct-42"
            },
            "last_refresh": "2026-11-01T00:00:00Z"
        })
        .to_string(),
    );
    let codex_home_s = codex_home.display().to_string();
    let env = [("CODEX_HOME", codex_home_s.as_str())];
    let run = bottle(
        &agent,
        &home,
        &["run", "coder", "-y", "--rm", "--image", &test_image()],
        &env,
    );
    let out = text(&run.stdout);
    assert_eq!(run.status.code(), Some(0), "{run:?}\n{}", agent.log());
    assert_eq!(lines(&out, "stand-in: "), ["codex"], "{out}");
    assert_eq!(
        lines(&out, "arg: "),
        ["--dangerously-bypass-approvals-and-sandbox"],
        "{out}"
    );
    // The dummy login keeps the account id, holds none of the real strings.
    let auth = lines(&out, "file .codex/auth.json: ").join("\n");
    assert!(auth.contains("acct-42"), "{out}");
    for secret in [
        "real-refresh-token-1234",
        "real-person@corp.example",
        &access,
    ] {
        assert!(!auth.contains(secret), "{secret} in the bottle:\n{auth}");
    }
    assert!(
        lines(&out, "file .codex/config.toml: ")
            .iter()
            .any(|l| l.contains("/home/agent/workspace")),
        "{out}"
    );
    // The proxy swapped in the real access token.
    assert_eq!(
        upstream_echo(&out)["headers"]["authorization"],
        format!("Bearer {access}")
    );
    assert_eq!(
        agent.ok(&["ls", "--json"]).trim(),
        "[]",
        "--rm left the bottle"
    );
}

/// Removes a podman image when the test ends, however it ends.
struct PodmanImage(String);

impl Drop for PodmanImage {
    fn drop(&mut self) {
        let _ = Command::new("podman")
            .args(["rmi", "--force", &self.0])
            .output();
    }
}

#[test]
fn privileged_bottle_dockerfile_is_built_with_podman_and_run() {
    if !privileged("privileged_bottle_dockerfile_is_built_with_podman_and_run") {
        return;
    }
    assert!(
        Path::new("/usr/bin/podman").is_file(),
        "podman missing: cargo xtask deps installs it"
    );
    let agent = Agent::start(BUILD_SLOT, "");
    let scratch = tempfile::tempdir().unwrap();
    let home = scratch.path().join("bot-bottle");
    // An image built FROM scratch (no registry): busybox as /bin/sh, a user, and a `claude`
    // that says which image it runs in.
    let context = home.join("bottles/image");
    std::fs::create_dir_all(&context).unwrap();
    std::fs::copy("/bin/busybox", context.join("busybox")).unwrap();
    write(
        &context.join("claude"),
        "#!/bin/sh\necho \"built-image claude $*\"\n",
    );
    write(
        &context.join("passwd"),
        "root:x:0:0::/root:/bin/sh\nagent:x:1000:1000::/home/agent:/bin/sh\n",
    );
    write(&context.join("group"), "root:x:0:\nagent:x:1000:\n");
    write(
        &context.join("Dockerfile"),
        "FROM scratch\nCOPY busybox /bin/busybox\nCOPY busybox /bin/sh\n\
         COPY passwd /etc/passwd\nCOPY group /etc/group\nCOPY claude /usr/local/bin/claude\n\
         ENV PATH=/usr/local/bin:/bin\nUSER 1000:1000\n",
    );
    std::fs::set_permissions(
        context.join("claude"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    write(
        &home.join("bottles/built.md"),
        "---\nagent_provider:\n  template: claude\n  dockerfile: image/Dockerfile\n---\n",
    );
    write(&home.join("agents/builder.md"), "---\nbottle: built\n---\n");

    // The client finds podman on its PATH, builds, the agent imports; then the agent runs.
    let socket = agent.socket();
    let run = Command::new(bin_dir().join("bottle"))
        .args(["run", "builder", "-y", "--rm"])
        .env("BOTTLE_HOME", &home)
        .env(bottle_api::HOST_ENV, &socket)
        .current_dir(&home)
        .output()
        .unwrap();
    let images: Vec<bottle_api::images::ImageInfo> =
        serde_json::from_str(&agent.ok(&["images", "ls", "--json"])).unwrap();
    let built = images
        .iter()
        .flat_map(|i| i.names.iter())
        .find(|n| n.starts_with("bottle-built-"))
        .cloned();
    let _cleanup = built.clone().map(PodmanImage);
    let err = text(&run.stderr);
    assert_eq!(run.status.code(), Some(0), "{run:?}\n{}", agent.log());
    assert!(err.contains("building it"), "{err}");
    assert!(built.is_some(), "{images:?}");
    assert_eq!(
        text(&run.stdout).trim(),
        "built-image claude --dangerously-skip-permissions",
        "{run:?}"
    );
    // Built once: the next run finds it in the cache.
    let again = Command::new(bin_dir().join("bottle"))
        .args(["run", "builder", "-y", "--rm"])
        .env("BOTTLE_HOME", &home)
        .env(bottle_api::HOST_ENV, &socket)
        .current_dir(&home)
        .output()
        .unwrap();
    assert_eq!(again.status.code(), Some(0), "{again:?}");
    assert!(!text(&again.stderr).contains("building it"), "{again:?}");
}
