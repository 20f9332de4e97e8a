//! The summary shown, and confirmed, before a launch. Names only: no env value, secret or
//! placeholder ever appears. Deterministic: every list is sorted.

use std::fmt::Write as _;
use std::path::PathBuf;

use serde::Serialize;

use crate::manifest::{Origin, ProviderKind, ResolvedAgent};
use crate::provider::ProviderPlan;

/// Width of the label column in [`Preflight::text`].
const LABEL: usize = 11;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Preflight {
    pub agent: String,
    pub agent_file: PathBuf,
    pub agent_origin: Origin,
    pub provider: ProviderKind,
    /// How the provider signs in, e.g. `token from $CLAUDE_TOKEN`.
    pub provider_auth: Option<String>,
    pub bottle: String,
    pub bottle_file: PathBuf,
    /// Bottles it extends, nearest first.
    pub extends: Vec<String>,
    pub env: Vec<EnvLine>,
    pub skills: Vec<SkillLine>,
    /// `Name <email>`, `Name` or `<email>`.
    pub git_user: Option<String>,
    pub repos: Vec<RepoLine>,
    pub routes: Vec<RouteLine>,
    pub supervise: bool,
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EnvLine {
    pub name: String,
    /// `literal`, `prompt` or `$HOST_VAR`.
    pub source: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SkillLine {
    pub name: String,
    pub origin: Origin,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RepoLine {
    pub name: String,
    pub url: String,
    pub host_key: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RouteLine {
    pub host: String,
    pub path_allowlist: Vec<String>,
    /// `Bearer` or `token`.
    pub auth: Option<&'static str>,
    pub passthrough: bool,
    pub ssrf_ip_allowlist: Vec<String>,
    pub connect_to: Option<String>,
    /// Added by the provider.
    pub provider: bool,
}

impl Preflight {
    pub fn new(agent: &ResolvedAgent, plan: &ProviderPlan) -> Self {
        let bottle = &agent.bottle;
        let provider_auth = match bottle.provider.template {
            ProviderKind::Claude => bottle
                .provider
                .auth_token
                .as_ref()
                .map(|t| format!("token from ${}", t.value)),
            ProviderKind::Codex => bottle
                .provider
                .forward_host_credentials
                .then(|| "host sign-in (codex auth.json)".to_string()),
        };
        let mut skills: Vec<SkillLine> = agent
            .skills
            .iter()
            .map(|s| SkillLine {
                name: s.name.clone(),
                origin: s.origin,
            })
            .collect();
        skills.sort_by(|a, b| a.name.cmp(&b.name));
        let mut routes: Vec<RouteLine> = plan
            .egress
            .routes
            .iter()
            .map(|r| RouteLine {
                host: r.host.clone(),
                path_allowlist: r.path_allowlist.clone(),
                auth: r.auth.as_ref().map(|a| a.scheme.as_str()),
                passthrough: r.pipelock.as_ref().is_some_and(|p| p.tls_passthrough),
                ssrf_ip_allowlist: r
                    .pipelock
                    .as_ref()
                    .map(|p| p.ssrf_ip_allowlist.clone())
                    .unwrap_or_default(),
                connect_to: r.connect_to.clone(),
                provider: plan.provider_hosts.contains(&r.host.to_ascii_lowercase()),
            })
            .collect();
        routes.sort_by_key(|r| r.host.to_ascii_lowercase());
        let mut warnings: Vec<String> = Vec::new();
        for w in agent.warnings.iter().chain(&plan.warnings) {
            let text = w.to_string();
            if !warnings.contains(&text) {
                warnings.push(text);
            }
        }
        Self {
            agent: agent.name.clone(),
            agent_file: agent.file.clone(),
            agent_origin: agent.origin,
            provider: bottle.provider.template,
            provider_auth,
            bottle: bottle.name.clone(),
            bottle_file: bottle.file.clone(),
            extends: bottle.parents.clone(),
            env: bottle
                .env
                .iter()
                .map(|(name, spec)| EnvLine {
                    name: name.clone(),
                    source: spec.value.source(),
                })
                .collect(),
            skills,
            git_user: agent.git_user.as_ref().and_then(|u| {
                match (u.name.as_deref(), u.email.as_deref()) {
                    (Some(n), Some(e)) => Some(format!("{n} <{e}>")),
                    (Some(n), None) => Some(n.to_string()),
                    (None, Some(e)) => Some(format!("<{e}>")),
                    (None, None) => None,
                }
            }),
            repos: bottle
                .repos
                .iter()
                .map(|(name, entry)| RepoLine {
                    name: name.clone(),
                    url: entry.spec.url.clone(),
                    host_key: entry.spec.host_key.is_some(),
                })
                .collect(),
            routes,
            supervise: bottle.supervise,
            warnings,
        }
    }

    /// The summary as shown on the terminal.
    pub fn text(&self) -> String {
        let mut out = String::new();
        let mut line = |label: &str, value: String| {
            let _ = writeln!(out, "{:<LABEL$}{value}", format!("{label}:"));
        };
        let origin = match self.agent_origin {
            Origin::Home => String::new(),
            Origin::Repo => "from the repository: ".into(),
        };
        line(
            "agent",
            format!("{}  ({origin}{})", self.agent, self.agent_file.display()),
        );
        line(
            "provider",
            match &self.provider_auth {
                Some(auth) => format!("{}  ({auth})", self.provider.as_str()),
                None => format!("{}  (no credentials forwarded)", self.provider.as_str()),
            },
        );
        let extends = if self.extends.is_empty() {
            String::new()
        } else {
            format!(", extends {}", self.extends.join(" -> "))
        };
        line(
            "bottle",
            format!("{}  ({}{extends})", self.bottle, self.bottle_file.display()),
        );
        line(
            "env",
            list(
                self.env
                    .iter()
                    .map(|e| format!("{} ({})", e.name, e.source)),
            ),
        );
        line(
            "skills",
            list(self.skills.iter().map(|s| match s.origin {
                Origin::Home => s.name.clone(),
                Origin::Repo => format!("{} (repository)", s.name),
            })),
        );
        line(
            "git user",
            self.git_user.clone().unwrap_or_else(|| "(none)".into()),
        );
        line(
            "supervise",
            if self.supervise { "on" } else { "off" }.into(),
        );
        if self.repos.is_empty() {
            // The label fills its column: the value needs its own space.
            line("gate repos", " (none)".into());
        } else {
            line("gate repos", String::new());
            for r in &self.repos {
                let warn = if r.host_key {
                    ""
                } else {
                    "  [no host_key: fetch and push refused]"
                };
                let _ = writeln!(out, "  {}  {}{warn}", r.name, r.url);
            }
        }
        if self.routes.is_empty() {
            let _ = writeln!(out, "{:<LABEL$}(none: no outside access)", "egress:");
        } else {
            let _ = writeln!(out, "egress:");
            for r in &self.routes {
                let mut text = format!("  {}", r.host);
                if !r.path_allowlist.is_empty() {
                    let _ = write!(text, "  paths {}", r.path_allowlist.join(" "));
                }
                if let Some(scheme) = r.auth {
                    let _ = write!(text, "  [auth:{scheme}]");
                }
                if r.passthrough {
                    text.push_str("  [passthrough]");
                }
                if !r.ssrf_ip_allowlist.is_empty() {
                    let _ = write!(text, "  [ssrf-allow:{}]", r.ssrf_ip_allowlist.join(","));
                }
                if let Some(target) = &r.connect_to {
                    let _ = write!(text, "  [connect_to:{target}]");
                }
                if r.provider {
                    text.push_str("  (provider)");
                }
                let _ = writeln!(out, "{text}");
            }
        }
        for w in &self.warnings {
            let _ = writeln!(out, "warning: {w}");
        }
        out
    }

    /// The same content as JSON, for `--dry-run`.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }
}

fn list(items: impl Iterator<Item = String>) -> String {
    let items: Vec<String> = items.collect();
    if items.is_empty() {
        "(none)".into()
    } else {
        items.join(", ")
    }
}
