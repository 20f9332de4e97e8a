//! Provider plans: claude and codex, the forwarded Codex sign-in, secrets kept out of
//! files, env and argv.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use bottle_api::policy::AuthScheme;
use serde_json::{json, Value};

use super::Fixture;
use crate::manifest::ResolvedAgent;
use crate::provider::{plan, PlanContext, ProviderPlan, CODEX_TOKEN_REF};
use crate::secret::SecretString;

pub(super) const NOW: u64 = 1_700_000_000;
pub(super) const EXP: i64 = 1_700_864_000; // NOW + 10 days

pub(super) fn now() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(NOW)
}

pub(super) fn host_env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
    let map: BTreeMap<String, String> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    move |name| map.get(name).cloned()
}

pub(super) fn run_plan(
    agent: &ResolvedAgent,
    env: &dyn Fn(&str) -> Option<String>,
    codex_auth: &Path,
) -> Result<ProviderPlan, crate::provider::ProviderError> {
    plan(
        agent,
        &PlanContext {
            workload_home: Path::new("/home/agent"),
            workspace: Path::new("/home/agent/workspace"),
            ca_cert: Path::new("/etc/bottle/ca.pem"),
            gate_base_url: Some("http://10.213.0.1:9420"),
            codex_auth_file: codex_auth,
            host_env: env,
            now: now(),
        },
    )
}

fn jwt(claims: &Value, signature: &str) -> String {
    format!(
        "{}.{}.{}",
        URL_SAFE_NO_PAD.encode(br#"{"alg":"RS256","typ":"JWT","kid":"SECRET-KID-0"}"#),
        URL_SAFE_NO_PAD.encode(claims.to_string()),
        URL_SAFE_NO_PAD.encode(signature)
    )
}

fn claims_of(token: &str) -> (Value, Value) {
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3, "{token}");
    assert!(
        !parts[2].is_empty(),
        "Codex needs a non-empty signature part"
    );
    let decode = |s: &str| serde_json::from_slice(&URL_SAFE_NO_PAD.decode(s).unwrap()).unwrap();
    (decode(parts[0]), decode(parts[1]))
}

/// Everything the workload would see: files, env, argv; and JWT payloads decoded.
fn workload_view(plan: &ProviderPlan) -> String {
    let mut view = String::new();
    for f in &plan.files {
        view.push_str(&f.contents);
        if f.path.ends_with("auth.json") {
            let json: Value = serde_json::from_str(&f.contents).unwrap();
            for key in ["id_token", "access_token"] {
                let (h, c) = claims_of(json["tokens"][key].as_str().unwrap());
                view.push_str(&format!("{h}{c}"));
            }
        }
    }
    for (k, v) in &plan.env {
        view.push_str(&format!("{k}={v}\n"));
    }
    view.push_str(&plan.argv(false).join(" "));
    view.push_str(&plan.argv(true).join(" "));
    view
}

fn claude_fixture() -> (Fixture, PathBuf) {
    let fx = Fixture::new();
    let key = fx.key();
    let dev = fx.bottle(
        "dev",
        &format!(
            "env:\n  MODE: fast\n\
             agent_provider:\n  auth_token: CLAUDE_TOKEN\n\
             git-gate:\n  user: {{name: Agent Smith, email: agent@example.com}}\n  repos:\n    app:\n      url: ssh://git@git.example.com/team/app.git\n      identity: {}\n      host_key: ssh-ed25519 AAAA\n\
             egress:\n  routes:\n    - host: API.anthropic.com\n      auth: {{scheme: Bearer, token_ref: OTHER}}\n    - host: api.example.com\n      auth: {{scheme: token, token_ref: GITEA_TOKEN}}\n",
            key.display()
        ),
    );
    fx.skill(&fx.home.join("skills/review"));
    fx.agent(
        "a",
        "bottle: dev\nskills: [review]\n",
        "You review code.\n\n",
    );
    (fx, dev)
}

#[test]
fn claude_plan() {
    let (fx, dev) = claude_fixture();
    let agent = fx.load().resolve("a").unwrap();
    let env = host_env(&[
        ("CLAUDE_TOKEN", "sk-ant-oat01-REAL-SECRET"),
        ("GITEA_TOKEN", "gitea-REAL-SECRET"),
    ]);
    let plan = run_plan(&agent, &env, Path::new("/nonexistent")).unwrap();
    assert_eq!(plan.command, "claude");
    assert_eq!(
        plan.argv(false),
        [
            "claude",
            "--dangerously-skip-permissions",
            "--append-system-prompt-file",
            "/home/agent/.bottle/agent-prompt.md"
        ]
    );
    assert_eq!(
        plan.argv(true),
        [
            "claude",
            "--dangerously-skip-permissions",
            "--append-system-prompt-file",
            "/home/agent/.bottle/agent-prompt.md",
            "--continue"
        ]
    );
    assert_eq!(
        plan.env,
        BTreeMap::from(
            [
                ("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1"),
                ("CLAUDE_CODE_OAUTH_TOKEN", "egress-placeholder"),
                ("DISABLE_ERROR_REPORTING", "1"),
                ("NODE_EXTRA_CA_CERTS", "/etc/bottle/ca.pem"),
            ]
            .map(|(k, v)| (k.to_string(), v.to_string()))
        )
    );
    let files: Vec<(&Path, u32)> = plan
        .files
        .iter()
        .map(|f| (f.path.as_path(), f.mode))
        .collect();
    assert_eq!(
        files,
        [
            (Path::new(".claude.json"), 0o600),
            (Path::new(".bottle/agent-prompt.md"), 0o644),
            (Path::new(".gitconfig"), 0o644),
        ]
    );
    let claude_json: Value = serde_json::from_str(&plan.files[0].contents).unwrap();
    assert_eq!(claude_json["hasCompletedOnboarding"], true);
    assert_eq!(claude_json["bypassPermissionsModeAccepted"], true);
    let project = &claude_json["projects"]["/home/agent/workspace"];
    assert_eq!(project["hasTrustDialogAccepted"], true);
    assert_eq!(project["hasCompletedProjectOnboarding"], true);
    assert_eq!(plan.files[1].contents, "You review code.\n");
    assert_eq!(
        plan.files[2].contents,
        "[user]\n\tname = \"Agent Smith\"\n\temail = \"agent@example.com\"\n\
         [safe]\n\tdirectory = \"/home/agent/workspace\"\n\
         [url \"http://10.213.0.1:9420/app.git\"]\n\
         \tinsteadOf = \"ssh://git@git.example.com/team/app.git\"\n\
         \tinsteadOf = \"git@git.example.com:team/app.git\"\n\
         \tinsteadOf = \"https://git.example.com/team/app.git\"\n"
    );
    assert_eq!(plan.skills.len(), 1);
    assert_eq!(plan.skills[0].dest, Path::new(".claude/skills/review"));
    assert_eq!(plan.skills[0].source, fx.home.join("skills/review"));

    // Provisioned wins: the bottle's api.anthropic.com route is replaced, with a warning.
    let routes: Vec<(&str, AuthScheme, &str)> = plan
        .egress
        .routes
        .iter()
        .map(|r| {
            let auth = r.auth.as_ref().unwrap();
            (r.host.as_str(), auth.scheme, auth.token_ref.as_str())
        })
        .collect();
    assert_eq!(
        routes,
        [
            ("api.example.com", AuthScheme::Token, "GITEA_TOKEN"),
            ("api.anthropic.com", AuthScheme::Bearer, "CLAUDE_TOKEN"),
        ]
    );
    assert!(plan.warnings.iter().any(|w| w.to_string()
        == format!(
            "{}: egress route API.anthropic.com is replaced by the claude provider's own route \
             for that host",
            dev.display()
        )));
    assert_eq!(
        plan.secrets.keys().collect::<Vec<_>>(),
        ["CLAUDE_TOKEN", "GITEA_TOKEN"],
        "the replaced route's token_ref is not read"
    );
    assert_eq!(
        plan.secrets["CLAUDE_TOKEN"].expose(),
        "sk-ant-oat01-REAL-SECRET"
    );
    assert!(!workload_view(&plan).contains("REAL-SECRET"));
    assert!(!format!("{plan:?}").contains("REAL-SECRET"));
}

#[test]
fn claude_without_prompt_or_token() {
    let fx = Fixture::new();
    fx.bottle("dev", "");
    fx.agent("a", "bottle: dev\n", "  \n");
    let agent = fx.load().resolve("a").unwrap();
    let plan = run_plan(&agent, &host_env(&[]), Path::new("/nonexistent")).unwrap();
    assert_eq!(plan.args, ["--dangerously-skip-permissions"]);
    assert_eq!(
        plan.resume_args,
        ["--dangerously-skip-permissions", "--continue"]
    );
    assert!(!plan.env.contains_key("CLAUDE_CODE_OAUTH_TOKEN"));
    assert!(plan.egress.routes.is_empty() && plan.secrets.is_empty());
    assert_eq!(
        plan.files
            .iter()
            .map(|f| f.path.as_path())
            .collect::<Vec<_>>(),
        [Path::new(".claude.json"), Path::new(".gitconfig")]
    );
    assert_eq!(
        plan.files[1].contents,
        "[safe]\n\tdirectory = \"/home/agent/workspace\"\n"
    );
}

#[test]
fn claude_auth_token_must_be_set_on_the_host() {
    let fx = Fixture::new();
    let base = fx.bottle(
        "base",
        "agent_provider:\n  template: claude\n  auth_token: CLAUDE_TOKEN\n",
    );
    fx.bottle("dev", "extends: base\n");
    fx.agent("a", "bottle: dev\n", "");
    let agent = fx.load().resolve("a").unwrap();
    let err = run_plan(&agent, &host_env(&[]), Path::new("/x")).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "{}:4: `agent_provider.auth_token` names CLAUDE_TOKEN, which is not set in this \
             environment; export CLAUDE_TOKEN with the OAuth token (from `claude setup-token`) or \
             remove auth_token",
            base.display()
        ),
        "names the file that declared it, not the child"
    );
}

#[test]
fn route_secrets_come_from_the_host() {
    let fx = Fixture::new();
    fx.bottle(
        "dev",
        "egress:\n  routes:\n    - host: api.example.com\n      auth: {scheme: Bearer, token_ref: API_TOKEN}\n",
    );
    fx.agent("a", "bottle: dev\n", "");
    let agent = fx.load().resolve("a").unwrap();
    assert_eq!(
        run_plan(&agent, &host_env(&[]), Path::new("/x"))
            .unwrap_err()
            .to_string(),
        "egress route api.example.com: auth.token_ref API_TOKEN is not set in this environment; \
         export API_TOKEN or change the route"
    );
    let plan = run_plan(&agent, &host_env(&[("API_TOKEN", "v")]), Path::new("/x")).unwrap();
    assert_eq!(plan.secrets["API_TOKEN"].expose(), "v");
}

#[test]
fn provider_env_wins_over_the_bottle() {
    let fx = Fixture::new();
    fx.bottle("dev", "");
    fx.agent("a", "bottle: dev\n", "");
    let agent = fx.load().resolve("a").unwrap();
    let plan = run_plan(&agent, &host_env(&[]), Path::new("/x")).unwrap();
    let bottle_env = BTreeMap::from([
        (
            "DISABLE_ERROR_REPORTING".to_string(),
            SecretString::new("0"),
        ),
        ("MINE".to_string(), SecretString::new("x")),
    ]);
    let (env, warnings) = plan.workload_env(&bottle_env);
    assert_eq!(env["DISABLE_ERROR_REPORTING"].expose(), "1");
    assert_eq!(env["MINE"].expose(), "x");
    assert_eq!(
        warnings.iter().map(ToString::to_string).collect::<Vec<_>>(),
        ["env DISABLE_ERROR_REPORTING is set by the claude provider; the bottle's value is not used"]
    );
}

/// A host `auth.json` where every string but the account id and the timestamp is a
/// distinctive secret, including inside the JWTs.
fn hostile_auth_json() -> (Value, Vec<String>) {
    let access = jwt(
        &json!({
            "exp": EXP,
            "sub": "SECRET-SUB-1",
            "email": "SECRET-EMAIL-2@corp.example",
            "https://api.openai.com/auth": {
                "chatgpt_account_id": "acct-1234",
                "chatgpt_plan_type": "SECRET-PLAN-3",
                "user_id": "SECRET-USER-4"
            }
        }),
        "SECRET-SIG-5",
    );
    let id = jwt(
        &json!({
            "exp": NOW + 3600,
            "email": "SECRET-EMAIL-6@corp.example",
            "https://api.openai.com/profile": {"email": "SECRET-EMAIL-7@corp.example"},
            "https://api.openai.com/auth": {"chatgpt_plan_type": "pro", "org": "SECRET-ORG-8"}
        }),
        "SECRET-SIG-9",
    );
    let auth = json!({
        "OPENAI_API_KEY": null,
        "tokens": {
            "id_token": id,
            "access_token": access,
            "refresh_token": "SECRET-REFRESH-10",
            "account_id": "acct-1234",
            "extra": "SECRET-EXTRA-11",
            "nested": {"deep": ["SECRET-DEEP-12", 5, true]}
        },
        "last_refresh": "2023-11-14T22:13:20.123Z",
        "unknown": {"field": "SECRET-TOP-13", "n": 7},
        "agent_identity": "SECRET-TOP-14"
    });
    let mut secrets: Vec<String> = [
        "SECRET-KID-0",
        "SECRET-SUB-1",
        "SECRET-EMAIL-2",
        "SECRET-PLAN-3",
        "SECRET-USER-4",
        "SECRET-SIG-5",
        "SECRET-EMAIL-6",
        "SECRET-EMAIL-7",
        "SECRET-ORG-8",
        "SECRET-SIG-9",
        "SECRET-REFRESH-10",
        "SECRET-EXTRA-11",
        "SECRET-DEEP-12",
        "SECRET-TOP-13",
        "SECRET-TOP-14",
        "corp.example",
    ]
    .map(String::from)
    .to_vec();
    secrets.push(access);
    secrets.push(id);
    (auth, secrets)
}

fn codex_fixture(auth: &Value) -> (Fixture, PathBuf, ResolvedAgent) {
    let fx = Fixture::new();
    fx.bottle(
        "dev",
        "agent_provider:\n  template: codex\n  forward_host_credentials: true\n\
         egress:\n  routes:\n    - host: chatgpt.com\n    - host: pypi.org\n",
    );
    fx.skill(&fx.home.join("skills/review"));
    fx.agent("a", "bottle: dev\nskills: [review]\n", "Be careful.\n");
    let auth_file = fx.write(&fx.user_home.join(".codex/auth.json"), &auth.to_string());
    let agent = fx.load().resolve("a").unwrap();
    (fx, auth_file, agent)
}

fn shape(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(m.iter().map(|(k, v)| (k.clone(), shape(v))).collect()),
        Value::Array(a) => Value::Array(a.iter().map(shape).collect()),
        Value::String(_) => json!("string"),
        other => other.clone(),
    }
}

#[test]
fn codex_plan_forwards_the_sign_in_without_any_secret() {
    let (auth, secrets) = hostile_auth_json();
    let (_fx, auth_file, agent) = codex_fixture(&auth);
    let plan = run_plan(&agent, &host_env(&[]), &auth_file).unwrap();

    assert_eq!(
        plan.argv(false),
        ["codex", "--dangerously-bypass-approvals-and-sandbox"]
    );
    assert_eq!(
        plan.argv(true),
        [
            "codex",
            "--dangerously-bypass-approvals-and-sandbox",
            "resume",
            "--last"
        ]
    );
    assert_eq!(plan.env["CODEX_CA_CERTIFICATE"], "/etc/bottle/ca.pem");
    assert_eq!(
        plan.files
            .iter()
            .map(|f| (f.path.to_str().unwrap(), f.mode))
            .collect::<Vec<_>>(),
        [
            (".codex/config.toml", 0o644),
            (".codex/AGENTS.md", 0o644),
            (".codex/auth.json", 0o600),
            (".gitconfig", 0o644),
        ]
    );
    assert_eq!(
        plan.files[0].contents,
        "cli_auth_credentials_store = \"file\"\n\n[projects.\"/home/agent/workspace\"]\ntrust_level = \"trusted\"\n"
    );
    let config: toml::Table = plan.files[0].contents.parse().unwrap();
    assert_eq!(
        config["projects"]["/home/agent/workspace"]["trust_level"].as_str(),
        Some("trusted")
    );
    assert_eq!(plan.files[1].contents, "Be careful.\n");
    assert_eq!(plan.skills[0].dest, Path::new(".codex/skills/review"));

    // Routes: the provider's two, the bottle's chatgpt.com replaced.
    let hosts: Vec<&str> = plan.egress.routes.iter().map(|r| r.host.as_str()).collect();
    assert_eq!(hosts, ["pypi.org", "api.openai.com", "chatgpt.com"]);
    for r in &plan.egress.routes[1..] {
        let a = r.auth.as_ref().unwrap();
        assert_eq!(
            (a.scheme, a.token_ref.as_str()),
            (AuthScheme::Bearer, CODEX_TOKEN_REF)
        );
    }
    let real_access = auth["tokens"]["access_token"].as_str().unwrap();
    assert_eq!(plan.secrets.len(), 1);
    assert_eq!(plan.secrets[CODEX_TOKEN_REF].expose(), real_access);

    // The synthesized auth.json: same shape, account id and exp; nothing secret.
    let dummy: Value = serde_json::from_str(&plan.files[2].contents).unwrap();
    assert_eq!(shape(&dummy), shape(&auth));
    assert_eq!(dummy["tokens"]["account_id"], "acct-1234");
    assert_eq!(dummy["last_refresh"], "2023-11-14T22:13:20.123Z");
    assert_eq!(dummy["OPENAI_API_KEY"], Value::Null);
    assert_eq!(dummy["tokens"]["refresh_token"], "egress-placeholder");
    assert_eq!(
        dummy["tokens"]["nested"],
        json!({"deep": ["egress-placeholder", 5, true]})
    );
    let (header, access) = claims_of(dummy["tokens"]["access_token"].as_str().unwrap());
    assert_eq!(header, json!({"alg": "none", "typ": "JWT"}));
    assert_eq!(access["exp"], EXP);
    assert_eq!(
        access["https://api.openai.com/auth"],
        json!({"chatgpt_account_id": "acct-1234", "chatgpt_plan_type": "pro"})
    );
    let (_, id) = claims_of(dummy["tokens"]["id_token"].as_str().unwrap());
    assert_eq!(
        id["exp"], EXP,
        "the real access token's exp, not a shorter one"
    );
    assert_eq!(id["email"], "bottle@example.invalid");
    assert_eq!(
        id["https://api.openai.com/profile"]["email"],
        "bottle@example.invalid"
    );
    assert_eq!(
        id["https://api.openai.com/auth"]["chatgpt_account_id"],
        "acct-1234"
    );

    let view = workload_view(&plan);
    let debug = format!("{plan:?}");
    for secret in &secrets {
        assert!(
            !view.contains(secret.as_str()),
            "{secret} reached the workload"
        );
        assert!(
            !debug.contains(secret.as_str()),
            "{secret} in the plan's Debug"
        );
    }
}

#[test]
fn codex_auth_errors_point_to_device_login() {
    let good_tokens = |exp: i64| {
        json!({
            "access_token": jwt(&json!({"exp": exp}), "s"),
            "id_token": jwt(&json!({"exp": exp}), "s"),
            "refresh_token": "r",
            "account_id": "acct"
        })
    };
    let hint = "run `codex login --device-auth` on this machine, then try again";
    let cases: Vec<(Option<String>, String)> = vec![
        (
            None,
            format!("not found; forward_host_credentials forwards the host's Codex sign-in: {hint}"),
        ),
        (
            Some(json!({"OPENAI_API_KEY": "sk-proj-x", "tokens": null}).to_string()),
            format!("Codex is signed in with an API key; bottle forwards only a ChatGPT sign-in: {hint}"),
        ),
        (
            Some(json!({"auth_mode": "apikey", "tokens": good_tokens(EXP)}).to_string()),
            format!("Codex is signed in with an API key; bottle forwards only a ChatGPT sign-in: {hint}"),
        ),
        (
            Some(json!({"tokens": {"access_token": "opaque-token"}}).to_string()),
            format!("the access token is not a JWT (not three dot-separated parts); {hint}"),
        ),
        (
            Some(json!({"tokens": {"access_token": "a.!!!.c"}}).to_string()),
            format!("the access token is not a JWT (payload is not base64url); {hint}"),
        ),
        (
            Some(json!({"tokens": good_tokens(1_699_999_000)}).to_string()),
            format!("the access token expired at 1699999000 (Unix time); {hint}"),
        ),
        (
            Some(json!({"OPENAI_API_KEY": null}).to_string()),
            format!("has no `tokens`: Codex is not signed in with ChatGPT; {hint}"),
        ),
        (Some("not json".into()), format!("is not a JSON object; {hint}")),
    ];
    for (contents, want) in cases {
        let fx = Fixture::new();
        fx.bottle(
            "dev",
            "agent_provider: {template: codex, forward_host_credentials: true}\n",
        );
        fx.agent("a", "bottle: dev\n", "");
        let auth_file = fx.user_home.join(".codex/auth.json");
        if let Some(contents) = &contents {
            fx.write(&auth_file, contents);
        }
        let agent = fx.load().resolve("a").unwrap();
        let err = run_plan(&agent, &host_env(&[]), &auth_file).unwrap_err();
        assert_eq!(err.to_string(), format!("{}: {want}", auth_file.display()));
        assert!(err.to_string().contains("codex login --device-auth"));
    }
}

#[test]
fn codex_without_forwarding_and_reserved_token_ref() {
    let fx = Fixture::new();
    fx.bottle("plain", "agent_provider: {template: codex}\n");
    fx.bottle(
        "sneaky",
        &format!(
            "agent_provider: {{template: codex, forward_host_credentials: true}}\n\
             egress:\n  routes:\n    - host: api.example.com\n      auth: {{scheme: Bearer, token_ref: {CODEX_TOKEN_REF}}}\n"
        ),
    );
    fx.agent("a", "bottle: plain\n", "");
    fx.agent("b", "bottle: sneaky\n", "");
    let cat = fx.load();
    let plan = run_plan(&cat.resolve("a").unwrap(), &host_env(&[]), Path::new("/x")).unwrap();
    assert!(plan.secrets.is_empty() && plan.egress.routes.is_empty());
    assert_eq!(
        plan.files
            .iter()
            .map(|f| f.path.to_str().unwrap())
            .collect::<Vec<_>>(),
        [".codex/config.toml", ".gitconfig"]
    );
    assert_eq!(
        plan.files[0].contents,
        "[projects.\"/home/agent/workspace\"]\ntrust_level = \"trusted\"\n"
    );
    let (auth, _) = hostile_auth_json();
    let auth_file = fx.write(&fx.user_home.join(".codex/auth.json"), &auth.to_string());
    let env = host_env(&[(CODEX_TOKEN_REF, "from-host-env")]);
    assert_eq!(
        run_plan(&cat.resolve("b").unwrap(), &env, &auth_file)
            .unwrap_err()
            .to_string(),
        format!(
            "egress route api.example.com: auth.token_ref {CODEX_TOKEN_REF} is reserved for the \
             codex provider; pick another name"
        )
    );
}
