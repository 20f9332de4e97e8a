//! Codex: `codex --dangerously-bypass-approvals-and-sandbox`.
//!
//! The prompt goes to `~/.codex/AGENTS.md`, Codex's global instructions file: Codex adds it
//! to the repository's own `AGENTS.md` instead of replacing Codex's base instructions
//! (`experimental_instructions_file` would) and without writing into the working tree
//! (where it could be committed).
//!
//! With `forward_host_credentials` the host's ChatGPT sign-in is forwarded: the real access
//! token goes to the proxy for `api.openai.com` and `chatgpt.com`; the workload gets an
//! `auth.json` of the same shape with placeholders and unsigned dummy JWTs that keep the real
//! token's `exp` (a shorter one sends Codex to its sign-in screen).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, URL_SAFE_NO_PAD};
use base64::engine::DecodePaddingMode;
use base64::Engine as _;
use bottle_api::policy::{AuthScheme, Route, RouteAuth};
use serde_json::{json, Map, Value};

use super::{prompt_of, PlanContext, PlanFile, ProviderError, ProviderParts, Result, PLACEHOLDER};
use crate::manifest::{ResolvedAgent, Warning};
use crate::secret::SecretString;

/// `token_ref` of the Codex routes: the access token read from the host's `auth.json`,
/// not a host environment variable.
pub const CODEX_TOKEN_REF: &str = "BOTTLE_CODEX_ACCESS_TOKEN";
pub(super) const HOSTS: [&str; 2] = ["api.openai.com", "chatgpt.com"];
const DUMMY_EMAIL: &str = "bottle@example.invalid";
/// ChatGPT plan names copied into the dummy tokens; anything else is left out.
const KNOWN_PLANS: &[&str] = &[
    "free",
    "go",
    "plus",
    "pro",
    "team",
    "business",
    "enterprise",
    "edu",
];
const AUTH_CLAIM: &str = "https://api.openai.com/auth";
const PROFILE_CLAIM: &str = "https://api.openai.com/profile";
const MAX_AUTH_BYTES: u64 = 1024 * 1024;
/// Warn when the forwarded token has less than this left, in seconds.
const EXPIRY_WARNING_SECS: i64 = 3600;

/// Accepts base64url with or without padding.
const B64_LENIENT: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::URL_SAFE,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

pub(super) fn parts(agent: &ResolvedAgent, ctx: &PlanContext<'_>) -> Result<ProviderParts> {
    let forward = agent.bottle.provider.forward_host_credentials;
    let mut config = toml::Table::new();
    let mut project = toml::Table::new();
    project.insert("trust_level".into(), "trusted".into());
    let mut projects = toml::Table::new();
    projects.insert(ctx.workspace.display().to_string(), project.into());
    config.insert("projects".into(), projects.into());
    if forward {
        // Read the forwarded auth.json, not an OS keyring the bottle does not have.
        config.insert("cli_auth_credentials_store".into(), "file".into());
    }
    let mut files = vec![PlanFile {
        path: PathBuf::from(".codex/config.toml"),
        contents: config.to_string(),
        mode: 0o644,
    }];
    if let Some(prompt) = prompt_of(agent) {
        files.push(PlanFile {
            path: PathBuf::from(".codex/AGENTS.md"),
            contents: prompt,
            mode: 0o644,
        });
    }
    let args = vec!["--dangerously-bypass-approvals-and-sandbox".to_string()];
    let mut resume_args = args.clone();
    resume_args.extend(["resume".to_string(), "--last".to_string()]);
    let env = BTreeMap::from([(
        "CODEX_CA_CERTIFICATE".to_string(),
        ctx.ca_cert.display().to_string(),
    )]);

    let mut routes = Vec::new();
    let mut secrets = BTreeMap::new();
    let mut warnings = Vec::new();
    if forward {
        let host = read_host_auth(ctx.codex_auth_file, ctx.now)?;
        let left = host.exp - unix_secs(ctx.now);
        if left < EXPIRY_WARNING_SECS {
            warnings.push(Warning::new(
                Some(ctx.codex_auth_file),
                format!(
                    "the Codex access token expires in {} minutes; run `codex login \
                     --device-auth` for a longer session",
                    left / 60
                ),
            ));
        }
        files.push(PlanFile {
            path: PathBuf::from(".codex/auth.json"),
            contents: format!("{:#}\n", dummy_auth_json(&host)),
            mode: 0o600,
        });
        for h in HOSTS {
            routes.push(Route {
                host: h.into(),
                auth: Some(RouteAuth {
                    scheme: AuthScheme::Bearer,
                    token_ref: CODEX_TOKEN_REF.into(),
                }),
                ..Route::default()
            });
        }
        secrets.insert(CODEX_TOKEN_REF.to_string(), host.access_token);
    } else {
        warnings.push(Warning::new(
            Some(&agent.bottle.file),
            "codex has no agent_provider.forward_host_credentials: the agent must sign in \
             inside the bottle, and Codex's hosts must be in the bottle's egress routes",
        ));
    }
    Ok(ProviderParts {
        command: "codex",
        args,
        resume_args,
        env,
        files,
        skills_dir: ".codex/skills",
        routes,
        secrets,
        reserved_token_refs: vec![CODEX_TOKEN_REF],
        warnings,
    })
}

/// What is taken from the host's `auth.json`.
#[derive(Debug)]
pub(super) struct HostAuth {
    json: Map<String, Value>,
    access_token: SecretString,
    exp: i64,
    account_id: Option<String>,
    plan: Option<String>,
    id_has_profile: bool,
}

fn unix_secs(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(_) => 0,
    }
}

/// Reads and checks the host's `auth.json`: ChatGPT mode, a JWT access token, not expired.
pub(super) fn read_host_auth(path: &Path, now: SystemTime) -> Result<HostAuth> {
    let malformed = |reason: &str| ProviderError::CodexAuthMalformed {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    };
    let meta = std::fs::metadata(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => ProviderError::CodexAuthMissing {
            path: path.to_path_buf(),
        },
        _ => ProviderError::CodexAuthRead {
            path: path.to_path_buf(),
            source: e,
        },
    })?;
    if meta.len() > MAX_AUTH_BYTES {
        return Err(malformed("is too large to be Codex's auth.json"));
    }
    let bytes = std::fs::read(path).map_err(|e| ProviderError::CodexAuthRead {
        path: path.to_path_buf(),
        source: e,
    })?;
    let Ok(Value::Object(json)) = serde_json::from_slice::<Value>(&bytes) else {
        return Err(malformed("is not a JSON object"));
    };
    let api_key_set = json
        .get("OPENAI_API_KEY")
        .and_then(Value::as_str)
        .is_some_and(|k| !k.is_empty());
    let api_key_mode = json
        .get("auth_mode")
        .and_then(Value::as_str)
        .is_some_and(|m| m.to_ascii_lowercase().replace(['_', '-'], "") == "apikey");
    if api_key_set || api_key_mode {
        return Err(ProviderError::CodexApiKeyMode {
            path: path.to_path_buf(),
        });
    }
    let tokens = json
        .get("tokens")
        .and_then(Value::as_object)
        .ok_or_else(|| malformed("has no `tokens`: Codex is not signed in with ChatGPT"))?;
    let access = tokens
        .get("access_token")
        .and_then(Value::as_str)
        .ok_or_else(|| malformed("has no `tokens.access_token`"))?;
    let not_jwt = |reason: &str| ProviderError::CodexTokenNotJwt {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    };
    let claims = jwt_claims(access).map_err(not_jwt)?;
    let exp = claims
        .get("exp")
        .and_then(Value::as_i64)
        .ok_or_else(|| not_jwt("no integer exp claim"))?;
    if exp <= unix_secs(now) {
        return Err(ProviderError::CodexTokenExpired {
            path: path.to_path_buf(),
            exp,
        });
    }
    let account_id = tokens
        .get("account_id")
        .and_then(Value::as_str)
        .map(str::to_string)
        .or_else(|| {
            claims
                .get(AUTH_CLAIM)
                .and_then(|a| a.get("chatgpt_account_id"))
                .and_then(Value::as_str)
                .map(str::to_string)
        });
    let id_claims = tokens
        .get("id_token")
        .and_then(Value::as_str)
        .and_then(|t| jwt_claims(t).ok());
    let plan = [id_claims.as_ref(), Some(&claims)]
        .into_iter()
        .flatten()
        .find_map(|c| {
            c.get(AUTH_CLAIM)
                .and_then(|a| a.get("chatgpt_plan_type"))
                .and_then(Value::as_str)
        })
        .filter(|p| KNOWN_PLANS.contains(p))
        .map(str::to_string);
    let id_has_profile = id_claims
        .as_ref()
        .is_some_and(|c| c.contains_key(PROFILE_CLAIM));
    Ok(HostAuth {
        access_token: SecretString::new(access),
        json,
        exp,
        account_id,
        plan,
        id_has_profile,
    })
}

/// The claims of a `header.payload.signature` token, without checking the signature.
fn jwt_claims(token: &str) -> std::result::Result<Map<String, Value>, &'static str> {
    let parts: Vec<&str> = token.split('.').collect();
    let [header, payload, _signature] = parts.as_slice() else {
        return Err("not three dot-separated parts");
    };
    if header.is_empty() || payload.is_empty() {
        return Err("empty header or payload");
    }
    let bytes = B64_LENIENT
        .decode(payload)
        .map_err(|_| "payload is not base64url")?;
    match serde_json::from_slice::<Value>(&bytes) {
        Ok(Value::Object(claims)) => Ok(claims),
        _ => Err("payload is not a JSON object"),
    }
}

/// An unsigned JWT. The signature part is a placeholder, not empty: Codex refuses a token
/// with an empty third part.
fn dummy_jwt(claims: &Value) -> String {
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
    let payload = URL_SAFE_NO_PAD.encode(claims.to_string());
    let signature = URL_SAFE_NO_PAD.encode(PLACEHOLDER);
    format!("{header}.{payload}.{signature}")
}

/// Every string becomes the placeholder; structure, numbers and booleans stay.
fn scrub(v: &Value) -> Value {
    match v {
        Value::String(_) => Value::String(PLACEHOLDER.into()),
        Value::Array(items) => Value::Array(items.iter().map(scrub).collect()),
        Value::Object(map) => {
            Value::Object(map.iter().map(|(k, v)| (k.clone(), scrub(v))).collect())
        }
        other => other.clone(),
    }
}

/// A timestamp such as `2025-01-02T03:04:05.123Z`: nothing else is copied as written.
fn is_timestamp(s: &str) -> bool {
    s.len() <= 40
        && s.bytes()
            .all(|b| b.is_ascii_digit() || matches!(b, b'-' | b':' | b'.' | b'T' | b'Z' | b'+'))
}

/// The workload's `auth.json`: the host's shape and account id, no secret.
pub(super) fn dummy_auth_json(host: &HostAuth) -> Value {
    let mut auth_claim = Map::new();
    if let Some(id) = &host.account_id {
        auth_claim.insert("chatgpt_account_id".into(), id.clone().into());
    }
    if let Some(plan) = &host.plan {
        auth_claim.insert("chatgpt_plan_type".into(), plan.clone().into());
    }
    let access_claims = json!({ "exp": host.exp, AUTH_CLAIM: auth_claim });
    let mut id_claims = json!({
        "email": DUMMY_EMAIL,
        "email_verified": true,
        "exp": host.exp,
        AUTH_CLAIM: auth_claim,
    });
    if host.id_has_profile {
        id_claims[PROFILE_CLAIM] = json!({ "email": DUMMY_EMAIL });
    }

    let mut out = Map::new();
    for (key, value) in &host.json {
        let new = match (key.as_str(), value) {
            ("OPENAI_API_KEY", _) => Value::Null,
            ("last_refresh", Value::String(s)) if is_timestamp(s) => value.clone(),
            ("auth_mode", Value::String(s)) if s.eq_ignore_ascii_case("chatgpt") => value.clone(),
            ("tokens", Value::Object(tokens)) => Value::Object(
                tokens
                    .iter()
                    .map(|(k, v)| {
                        let new = match (k.as_str(), v) {
                            ("id_token", Value::String(_)) => dummy_jwt(&id_claims).into(),
                            ("access_token", Value::String(_)) => dummy_jwt(&access_claims).into(),
                            ("account_id", Value::String(_)) => match &host.account_id {
                                Some(id) => id.clone().into(),
                                None => scrub(v),
                            },
                            _ => scrub(v),
                        };
                        (k.clone(), new)
                    })
                    .collect(),
            ),
            _ => scrub(value),
        };
        out.insert(key.clone(), new);
    }
    Value::Object(out)
}
