//! Claude Code: `claude --dangerously-skip-permissions`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use bottle_api::policy::{AuthScheme, Route, RouteAuth};
use serde_json::json;

use super::{prompt_of, PlanContext, PlanFile, ProviderError, ProviderParts, Result, PLACEHOLDER};
use crate::manifest::{ResolvedAgent, Warning};
use crate::secret::SecretString;

pub(super) const API_HOST: &str = "api.anthropic.com";
/// Where the prompt is written, relative to the workload's home.
pub(super) const PROMPT_FILE: &str = ".bottle/agent-prompt.md";

pub(super) fn parts(agent: &ResolvedAgent, ctx: &PlanContext<'_>) -> Result<ProviderParts> {
    let workspace = ctx.workspace.display().to_string();
    // Onboarding done, the --dangerously-skip-permissions disclaimer accepted and the
    // workspace trusted: otherwise Claude Code stops at a dialog nobody can answer.
    let claude_json = json!({
        "hasCompletedOnboarding": true,
        "bypassPermissionsModeAccepted": true,
        "hasAcknowledgedCostThreshold": true,
        "projects": {
            workspace: {
                "hasTrustDialogAccepted": true,
                "hasCompletedProjectOnboarding": true,
                "allowedTools": [],
            }
        }
    });
    let mut files = vec![PlanFile {
        path: PathBuf::from(".claude.json"),
        contents: format!("{claude_json:#}\n"),
        mode: 0o600,
    }];
    let mut args = vec!["--dangerously-skip-permissions".to_string()];
    if let Some(prompt) = prompt_of(agent) {
        files.push(PlanFile {
            path: PathBuf::from(PROMPT_FILE),
            contents: prompt,
            mode: 0o644,
        });
        args.push("--append-system-prompt-file".into());
        args.push(ctx.workload_home.join(PROMPT_FILE).display().to_string());
    }
    let mut resume_args = args.clone();
    resume_args.push("--continue".into());

    let mut env = BTreeMap::from([
        (
            "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC".to_string(),
            "1".to_string(),
        ),
        ("DISABLE_ERROR_REPORTING".to_string(), "1".to_string()),
    ]);
    let mut routes = Vec::new();
    let mut secrets = BTreeMap::new();
    let mut warnings = Vec::new();
    match &agent.bottle.provider.auth_token {
        Some(located) => {
            let var = &located.value;
            let token = (ctx.host_env)(var).ok_or_else(|| ProviderError::AuthTokenMissing {
                var: var.clone(),
                file: agent
                    .bottle
                    .provider
                    .file
                    .clone()
                    .unwrap_or_else(|| agent.bottle.file.clone()),
                line: located.line,
            })?;
            env.insert("CLAUDE_CODE_OAUTH_TOKEN".into(), PLACEHOLDER.into());
            routes.push(Route {
                host: API_HOST.into(),
                auth: Some(RouteAuth {
                    scheme: AuthScheme::Bearer,
                    token_ref: var.clone(),
                }),
                ..Route::default()
            });
            secrets.insert(var.clone(), SecretString::new(token));
        }
        None => warnings.push(Warning::new(
            Some(&agent.bottle.file),
            "claude has no agent_provider.auth_token: the agent must sign in inside the bottle, \
             and api.anthropic.com must be in the bottle's egress routes",
        )),
    }
    Ok(ProviderParts {
        command: "claude",
        args,
        resume_args,
        env,
        files,
        skills_dir: ".claude/skills",
        routes,
        secrets,
        reserved_token_refs: Vec::new(),
        warnings,
    })
}
