//! The preflight summary for a full example, exactly.

use std::path::Path;

use super::providers::{host_env, run_plan};
use super::Fixture;
use crate::preflight::Preflight;

#[test]
fn full_example_text_and_json() {
    let fx = Fixture::new();
    let key = fx.key();
    let base = fx.bottle(
        "base",
        &format!(
            "env:\n  GH: ${{GH_TOKEN}}\n  MODE: fast\n\
             agent_provider:\n  auth_token: CLAUDE_TOKEN\n\
             git-gate:\n  user: {{name: Agent Smith, email: agent@example.com}}\n  repos:\n    \
             lib:\n      url: ssh://git@git.example.com/team/lib.git\n      identity: {k}\n    \
             app:\n      url: ssh://git@git.example.com:2222/team/app.git\n      identity: {k}\n      host_key: ssh-ed25519 AAAA\n",
            k = key.display()
        ),
    );
    let dev = fx.bottle(
        "dev",
        "extends: base\n\
         env:\n  API_KEY: ?Paste the staging key\n\
         egress:\n  routes:\n\
         \x20   - host: pypi.org\n\
         \x20   - host: gitea.example.com\n      path_allowlist: [/api/v1/, /team/]\n      auth: {scheme: token, token_ref: GITEA_TOKEN}\n\
         \x20   - host: github.com\n      pipelock: {tls_passthrough: true}\n\
         \x20   - host: db.internal.example.com\n      pipelock: {ssrf_ip_allowlist: [10.1.0.0/16]}\n      connect_to: 10.1.0.5:443\n\
         supervise: true\n",
    );
    fx.skill(&fx.home.join("skills/review"));
    fx.skill(&fx.cwd.join(".bot-bottle/skills/lint"));
    let agent_file = fx.repo_agent(
        "reviewer",
        "name: reviewer\nbottle: dev\nskills: [review, lint]\ngit-gate:\n  user: {email: reviewer@example.com}\n",
        "You review.\n",
    );
    let agent = fx.load().resolve("reviewer").unwrap();
    let env = host_env(&[
        ("CLAUDE_TOKEN", "sk-ant-oat01-SECRET"),
        ("GITEA_TOKEN", "gitea-SECRET"),
        ("GH_TOKEN", "gh-SECRET"),
    ]);
    let plan = run_plan(&agent, &env, Path::new("/x")).unwrap();
    let preflight = Preflight::new(&agent, &plan);
    let want = format!(
        "\
agent:     reviewer  (from the repository: {agent_file})
provider:  claude  (token from $CLAUDE_TOKEN)
bottle:    dev  ({dev}, extends base)
env:       API_KEY (prompt), GH ($GH_TOKEN), MODE (literal)
skills:    lint (repository), review
git user:  Agent Smith <reviewer@example.com>
supervise: on
gate repos:
  app  ssh://git@git.example.com:2222/team/app.git
  lib  ssh://git@git.example.com/team/lib.git  [no host_key: fetch and push refused]
egress:
  api.anthropic.com  [auth:Bearer]  (provider)
  db.internal.example.com  [ssrf-allow:10.1.0.0/16]  [connect_to:10.1.0.5:443]
  gitea.example.com  paths /api/v1/ /team/  [auth:token]
  github.com  [passthrough]
  pypi.org
warning: {base}: git-gate repo \"lib\" has no host_key: the gate refuses to fetch or push it (fail closed); pin the upstream's key, e.g. from `ssh-keyscan -t ed25519 <host>`
",
        agent_file = agent_file.display(),
        dev = dev.display(),
        base = base.display(),
    );
    assert_eq!(preflight.text(), want);
    assert!(!preflight.text().contains("SECRET"));
    assert!(!preflight.text().contains("placeholder"));

    let json: serde_json::Value = serde_json::from_str(&preflight.to_json()).unwrap();
    assert_eq!(json["agent"], "reviewer");
    assert_eq!(json["agent_origin"], "repo");
    assert_eq!(
        json["env"][0],
        serde_json::json!({"name": "API_KEY", "source": "prompt"})
    );
    assert_eq!(json["routes"][0]["host"], "api.anthropic.com");
    assert_eq!(json["routes"][0]["provider"], true);
    assert_eq!(json["repos"][1]["host_key"], false);
    let text = preflight.to_json();
    assert!(!text.contains("SECRET") && !text.contains("placeholder") && !text.contains("fast"));
}
