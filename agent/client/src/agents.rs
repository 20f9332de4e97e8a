//! `bottle agents`: the agents and bottles found in the manifest home (`BOTTLE_HOME`, else
//! `~/.bot-bottle`) and in `./.bot-bottle/agents`, each resolved, with every error. Runs
//! entirely on the client, so it works on a Mac and without an agent.

use std::path::PathBuf;

use bottle_manifest::{Catalog, Origin};
use serde::Serialize;

#[derive(Debug, Serialize)]
pub struct AgentRow {
    pub name: String,
    pub origin: &'static str,
    pub bottle: String,
    pub provider: Option<&'static str>,
    pub file: PathBuf,
    /// Why it does not resolve, if it does not.
    pub error: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct BottleRow {
    pub name: String,
    pub extends: Vec<String>,
    pub provider: Option<&'static str>,
    pub routes: usize,
    pub gate_repos: usize,
    pub file: PathBuf,
    pub error: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct Listing {
    pub home: PathBuf,
    pub agents: Vec<AgentRow>,
    pub bottles: Vec<BottleRow>,
    pub warnings: Vec<String>,
    pub errors: Vec<String>,
}

impl Listing {
    pub fn load(home: PathBuf, cwd: PathBuf) -> Self {
        let catalog = Catalog::load(&home, &cwd);
        let agents = catalog
            .agents
            .values()
            .map(|a| {
                let resolved = catalog.resolve(&a.name);
                AgentRow {
                    name: a.name.clone(),
                    origin: match a.origin {
                        Origin::Home => "home",
                        Origin::Repo => "repo",
                    },
                    bottle: a.bottle.value.clone(),
                    provider: resolved
                        .as_ref()
                        .ok()
                        .map(|r| r.bottle.provider.template.as_str()),
                    file: a.file.clone(),
                    error: resolved.err().map(|e| e.to_string()),
                }
            })
            .collect();
        let bottles = catalog
            .bottles
            .values()
            .map(|b| {
                let resolved = catalog.resolve_bottle(&b.name);
                BottleRow {
                    name: b.name.clone(),
                    extends: resolved
                        .as_ref()
                        .map(|r| r.parents.clone())
                        .unwrap_or_default(),
                    provider: resolved.as_ref().ok().map(|r| r.provider.template.as_str()),
                    routes: resolved
                        .as_ref()
                        .map(|r| r.egress.routes.len())
                        .unwrap_or(0),
                    gate_repos: resolved.as_ref().map(|r| r.repos.len()).unwrap_or(0),
                    file: b.file.clone(),
                    error: resolved.err().map(|e| e.to_string()),
                }
            })
            .collect();
        Self {
            home: catalog.home.clone(),
            agents,
            bottles,
            warnings: catalog.warnings.iter().map(ToString::to_string).collect(),
            errors: catalog.errors.iter().map(ToString::to_string).collect(),
        }
    }

    /// Whether anything failed to load or resolve.
    pub fn has_errors(&self) -> bool {
        !self.errors.is_empty()
            || self.agents.iter().any(|a| a.error.is_some())
            || self.bottles.iter().any(|b| b.error.is_some())
    }

    pub fn render(&self) -> String {
        let mut out = format!("manifests in {}\n\nAGENTS\n", self.home.display());
        if self.agents.is_empty() {
            out.push_str("  (none)\n");
        }
        for a in &self.agents {
            out.push_str(&format!(
                "  {:<24} {:<5} bottle {:<20} {}\n",
                a.name,
                a.origin,
                a.bottle,
                match (&a.error, a.provider) {
                    (Some(_), _) => "error (see below)".to_string(),
                    (None, Some(p)) => format!("provider {p}"),
                    (None, None) => String::new(),
                }
            ));
        }
        out.push_str("\nBOTTLES\n");
        if self.bottles.is_empty() {
            out.push_str("  (none)\n");
        }
        for b in &self.bottles {
            let extends = if b.extends.is_empty() {
                String::new()
            } else {
                format!(" extends {}", b.extends.join(" < "))
            };
            out.push_str(&format!(
                "  {:<24} {} routes, {} gate repos{}{}\n",
                b.name,
                b.routes,
                b.gate_repos,
                extends,
                if b.error.is_some() {
                    "  error (see below)"
                } else {
                    ""
                }
            ));
        }
        for w in &self.warnings {
            out.push_str(&format!("\nwarning: {w}"));
        }
        let mut errors: Vec<&String> = self.errors.iter().collect();
        for e in self
            .agents
            .iter()
            .filter_map(|a| a.error.as_ref())
            .chain(self.bottles.iter().filter_map(|b| b.error.as_ref()))
        {
            if !errors.contains(&e) {
                errors.push(e);
            }
        }
        for e in errors {
            out.push_str(&format!("\nerror: {e}"));
        }
        if !out.ends_with('\n') {
            out.push('\n');
        }
        out
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn lists_agents_and_bottles_and_reports_errors() {
        let home = tempfile::tempdir().unwrap();
        let cwd = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(home.path().join("bottles")).unwrap();
        std::fs::create_dir_all(home.path().join("agents")).unwrap();
        std::fs::write(
            home.path().join("bottles/base.md"),
            "---\negress:\n  routes:\n    - host: api.example.com\n---\nbase\n",
        )
        .unwrap();
        std::fs::write(
            home.path().join("bottles/dev.md"),
            "---\nextends: base\nagent_provider: {template: codex}\n---\n",
        )
        .unwrap();
        std::fs::write(
            home.path().join("agents/coder.md"),
            "---\nbottle: dev\n---\nYou code.\n",
        )
        .unwrap();
        std::fs::write(
            home.path().join("agents/lost.md"),
            "---\nbottle: nowhere\n---\n",
        )
        .unwrap();
        std::fs::write(home.path().join("agents/typo.md"), "---\nbotle: dev\n---\n").unwrap();

        let listing = Listing::load(home.path().to_path_buf(), cwd.path().to_path_buf());
        let coder = listing.agents.iter().find(|a| a.name == "coder").unwrap();
        assert_eq!(
            (
                coder.bottle.as_str(),
                coder.provider,
                coder.error.as_deref()
            ),
            ("dev", Some("codex"), None)
        );
        let lost = listing.agents.iter().find(|a| a.name == "lost").unwrap();
        assert!(
            lost.error.as_deref().unwrap().contains("nowhere"),
            "{lost:?}"
        );
        let dev = listing.bottles.iter().find(|b| b.name == "dev").unwrap();
        assert_eq!(
            (dev.routes, dev.extends.clone()),
            (1, vec!["base".to_string()])
        );
        assert!(listing.has_errors());
        let text = listing.render();
        assert!(
            text.contains("coder") && text.contains("provider codex"),
            "{text}"
        );
        assert!(
            text.contains("typo.md") && text.contains("botle"),
            "the typo is named: {text}"
        );
        assert!(text.contains("error:"), "{text}");
    }
}
