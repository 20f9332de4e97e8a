//! Front matter → [`BottleManifest`] / [`AgentManifest`], by hand, so every error names the
//! file, the line and the full key path, and an unknown key lists the allowed ones.
//!
//! Scalars are read by the type their key wants: a string field takes the text as written
//! (`PORT: 8080` is `"8080"`); a boolean field takes YAML 1.1's words as PyYAML (which
//! bot-bottle used) does: `true/false`, `yes/no`, `on/off` in lower, Title or UPPER case.
//! A key with no value (`key:` or `key: null`) is an error, never "absent": an empty
//! `repos:` or `egress:` under `extends` would otherwise silently inherit the parent's.

use std::collections::BTreeMap;
use std::path::Path;

use bottle_api::gitgate::{is_gate_url, is_repo_name, GitRepoSpec, GitUser};
use bottle_api::policy::{is_env_name, AuthScheme, EgressPolicy, Pipelock, Route, RouteAuth};

use super::frontmatter::{self, FrontMatter, SplitError};
use super::{
    is_manifest_name, is_skill_name, AgentManifest, AgentProvider, BottleManifest, EgressProblem,
    EnvSpec, GitGateDecl, Located, ManifestError, Origin, ProviderKind, RepoEntry, Result,
};
use crate::env::EnvValue;
use crate::yaml::{self, Entry, Kind, Node};

pub(super) const BOTTLE_KEYS: &[&str] = &[
    "env",
    "extends",
    "agent_provider",
    "git-gate",
    "egress",
    "supervise",
];
const PROVIDER_KEYS: &[&str] = &[
    "template",
    "dockerfile",
    "auth_token",
    "forward_host_credentials",
];
const GATE_KEYS: &[&str] = &["user", "repos"];
const USER_KEYS: &[&str] = &["name", "email"];
const REPO_KEYS: &[&str] = &["url", "identity", "host_key", "policy"];
const REF_POLICY_KEYS: &[&str] = &["allow", "force_push", "deletions"];
const EGRESS_KEYS: &[&str] = &["routes"];
/// bot-bottle's route keys plus bottle's own `connect_to`.
const ROUTE_KEYS: &[&str] = &[
    "host",
    "path_allowlist",
    "auth",
    "pipelock",
    "role",
    "connect_to",
];
const AUTH_KEYS: &[&str] = &["scheme", "token_ref"];
const PIPELOCK_KEYS: &[&str] = &["tls_passthrough", "ssrf_ip_allowlist"];
pub(super) const AGENT_KEYS: &[&str] = &[
    "bottle",
    "skills",
    "git-gate",
    "name",
    "description",
    "model",
    "color",
    "memory",
];
const AGENT_GATE_KEYS: &[&str] = &["user"];
/// Claude Code's own agent keys: accepted and ignored so one file serves both tools.
const CLAUDE_CODE_KEYS: &[&str] = &["name", "description", "model", "color", "memory"];
/// Bottle keys an agent may not set.
const AGENT_FORBIDDEN: &[&str] = &["env", "extends", "agent_provider", "egress", "supervise"];

const TRUE_WORDS: &[&str] = &[
    "true", "True", "TRUE", "yes", "Yes", "YES", "on", "On", "ON",
];
const FALSE_WORDS: &[&str] = &[
    "false", "False", "FALSE", "no", "No", "NO", "off", "Off", "OFF",
];

const NAME_RULE: &str =
    "a manifest name is the file name without .md: lowercase letters, digits and '-', starting \
     with a letter";

/// Decodes one bottle file's text.
pub(super) fn bottle(file: &Path, name: &str, text: &str) -> Result<BottleManifest> {
    let fm = front(file, text)?;
    let doc = Doc {
        file,
        offset: fm.offset,
    };
    let root = doc.parse(fm.yaml)?;
    let mut out = BottleManifest {
        name: name.to_string(),
        file: file.to_path_buf(),
        extends: None,
        env: None,
        agent_provider: None,
        git_gate: None,
        egress: None,
        supervise: None,
        body: fm.body.to_string(),
    };
    for e in doc.root(&root)? {
        let line = e.key_line;
        match e.key.as_str() {
            "env" => out.env = Some(doc.env(&e.value, line)?),
            "extends" => {
                let parent = doc.scalar(&e.value, line, "extends")?;
                if !is_manifest_name(&parent) {
                    return Err(doc.invalid(line, "extends", NAME_RULE));
                }
                out.extends = Some(Located {
                    value: parent,
                    line: doc.at(line),
                });
            }
            "agent_provider" => out.agent_provider = Some(doc.provider(&e.value, line)?),
            "git-gate" => out.git_gate = Some(doc.gate(&e.value, line)?),
            "egress" => out.egress = Some(doc.egress(&e.value, line)?),
            "supervise" => out.supervise = Some(doc.boolean(&e.value, line, "supervise")?),
            "git" => return Err(doc.legacy_git(line)),
            other => return Err(doc.unknown(line, other, BOTTLE_KEYS)),
        }
    }
    Ok(out)
}

/// Decodes a standalone git-gate file (`bottle create --git-gate FILE`): the block itself
/// (`user:`, `repos:`) or a document with a top-level `git-gate:` key. `identity` paths are
/// returned as written; the caller resolves and reads them.
pub fn git_gate_file(file: &Path, text: &str) -> Result<bottle_api::gitgate::GitGateSpec> {
    let doc = Doc { file, offset: 0 };
    let root = doc.parse(text)?;
    let decl = match doc.root(&root)?.iter().find(|e| e.key == "git-gate") {
        Some(e) => doc.gate(&e.value, e.key_line)?,
        None => doc.gate(&root, root.line)?,
    };
    Ok(bottle_api::gitgate::GitGateSpec {
        user: decl.user,
        repos: decl
            .repos
            .map(|r| r.into_iter().map(|(k, v)| (k, v.spec)).collect()),
    })
}

/// Decodes a standalone egress policy file (`bottle create --egress FILE`): either the
/// block itself (`routes: [...]`) or a document with a top-level `egress:` key, so a user can
/// paste from a manifest either way. Errors name the file, line and key like manifest errors.
pub fn egress_file(file: &Path, text: &str) -> Result<EgressPolicy> {
    let doc = Doc { file, offset: 0 };
    let root = doc.parse(text)?;
    if let Some(e) = doc.root(&root)?.iter().find(|e| e.key == "egress") {
        return doc.egress(&e.value, e.key_line);
    }
    doc.egress(&root, root.line)
}

/// Decodes one agent file's text. `bottles_dir` is only for messages.
pub(super) fn agent(
    file: &Path,
    name: &str,
    text: &str,
    origin: Origin,
    bottles_dir: &Path,
) -> Result<AgentManifest> {
    let fm = front(file, text)?;
    let doc = Doc {
        file,
        offset: fm.offset,
    };
    let root = doc.parse(fm.yaml)?;
    let not_for_agents = |line: usize, key: &str| ManifestError::NotForAgents {
        file: file.to_path_buf(),
        line: doc.at(line),
        key: key.to_string(),
        origin: match origin {
            Origin::Home => "",
            Origin::Repo => " from the repository (less trusted)",
        },
        bottles_dir: bottles_dir.to_path_buf(),
    };
    let mut bottle = None;
    let mut skills = Vec::new();
    let mut git_user = None;
    for e in doc.root(&root)? {
        let line = e.key_line;
        match e.key.as_str() {
            "bottle" => {
                let value = doc.scalar(&e.value, line, "bottle")?;
                if !is_manifest_name(&value) {
                    return Err(doc.invalid(line, "bottle", NAME_RULE));
                }
                bottle = Some(Located {
                    value,
                    line: doc.at(line),
                });
            }
            "skills" => {
                for (i, skill) in doc
                    .strings(&e.value, line, "skills")?
                    .into_iter()
                    .enumerate()
                {
                    if !is_skill_name(&skill.value) {
                        return Err(ManifestError::Invalid {
                            file: file.to_path_buf(),
                            line: skill.line,
                            key: format!("skills[{i}]"),
                            reason: "a skill name is a directory name: letters, digits, '.', \
                                     '_' and '-', not starting with '.'"
                                .into(),
                        });
                    }
                    skills.push(skill);
                }
            }
            "git-gate" => {
                for g in doc.mapping(&e.value, line, "git-gate")? {
                    match g.key.as_str() {
                        "user" => {
                            git_user = Some(Located {
                                value: doc.user(&g.value, g.key_line)?,
                                line: doc.at(g.key_line),
                            })
                        }
                        "repos" => return Err(not_for_agents(g.key_line, "git-gate.repos")),
                        other => {
                            return Err(doc.unknown(
                                g.key_line,
                                &format!("git-gate.{other}"),
                                AGENT_GATE_KEYS,
                            ))
                        }
                    }
                }
            }
            key if CLAUDE_CODE_KEYS.contains(&key) => {}
            key if AGENT_FORBIDDEN.contains(&key) => return Err(not_for_agents(line, key)),
            "git" => return Err(doc.legacy_git(line)),
            other => return Err(doc.unknown(line, other, AGENT_KEYS)),
        }
    }
    let bottle = bottle.ok_or_else(|| ManifestError::Missing {
        file: file.to_path_buf(),
        line: 1,
        key: "bottle".into(),
        hint: format!(
            "name the bottle this agent runs in (a file in {}, without .md)",
            bottles_dir.display()
        ),
    })?;
    Ok(AgentManifest {
        name: name.to_string(),
        file: file.to_path_buf(),
        origin,
        bottle,
        skills,
        git_user,
        prompt: fm.body.to_string(),
    })
}

fn front<'t>(file: &Path, text: &'t str) -> Result<FrontMatter<'t>> {
    frontmatter::split(text).map_err(|e| match e {
        SplitError::Missing => ManifestError::NoFrontMatter {
            file: file.to_path_buf(),
        },
        SplitError::Unclosed => ManifestError::UnclosedFrontMatter {
            file: file.to_path_buf(),
        },
    })
}

fn join(prefix: &str, key: &str) -> String {
    format!("{prefix}.{key}")
}

/// One file being decoded. Lines passed in are YAML lines; errors carry file lines.
struct Doc<'a> {
    file: &'a Path,
    offset: usize,
}

impl Doc<'_> {
    fn at(&self, yaml_line: usize) -> usize {
        yaml_line + self.offset
    }

    fn parse(&self, text: &str) -> Result<Node> {
        yaml::parse(text).map_err(|e| ManifestError::Yaml {
            file: self.file.to_path_buf(),
            line: self.at(e.line()),
            message: e.to_string(),
        })
    }

    fn root<'n>(&self, root: &'n Node) -> Result<&'n [Entry]> {
        match &root.kind {
            Kind::Null => Ok(&[]),
            Kind::Map(entries) => Ok(entries),
            other => Err(ManifestError::WrongType {
                file: self.file.to_path_buf(),
                line: self.at(root.line),
                key: "front matter".into(),
                expected: "a mapping of keys",
                found: other.describe(),
            }),
        }
    }

    fn unknown(&self, line: usize, key: &str, allowed: &[&str]) -> ManifestError {
        ManifestError::UnknownKey {
            file: self.file.to_path_buf(),
            line: self.at(line),
            key: key.to_string(),
            allowed: allowed.join(", "),
        }
    }

    fn invalid(&self, line: usize, key: &str, reason: impl Into<String>) -> ManifestError {
        ManifestError::Invalid {
            file: self.file.to_path_buf(),
            line: self.at(line),
            key: key.to_string(),
            reason: reason.into(),
        }
    }

    fn missing(&self, line: usize, key: &str, hint: &str) -> ManifestError {
        ManifestError::Missing {
            file: self.file.to_path_buf(),
            line: self.at(line),
            key: key.to_string(),
            hint: hint.to_string(),
        }
    }

    fn wrong(&self, line: usize, key: &str, expected: &'static str, node: &Node) -> ManifestError {
        ManifestError::WrongType {
            file: self.file.to_path_buf(),
            line: self.at(line),
            key: key.to_string(),
            expected,
            found: node.kind.describe(),
        }
    }

    fn legacy_git(&self, line: usize) -> ManifestError {
        ManifestError::LegacyGitKey {
            file: self.file.to_path_buf(),
            line: self.at(line),
        }
    }

    fn mapping<'n>(&self, node: &'n Node, line: usize, key: &str) -> Result<&'n [Entry]> {
        match &node.kind {
            Kind::Map(entries) => Ok(entries),
            _ => Err(self.wrong(line, key, "a mapping", node)),
        }
    }

    fn scalar(&self, node: &Node, line: usize, key: &str) -> Result<String> {
        match &node.kind {
            Kind::Scalar { text, .. } => Ok(text.clone()),
            _ => Err(self.wrong(line, key, "a string", node)),
        }
    }

    fn boolean(&self, node: &Node, line: usize, key: &str) -> Result<bool> {
        if let Kind::Scalar { text, plain: true } = &node.kind {
            if TRUE_WORDS.contains(&text.as_str()) {
                return Ok(true);
            }
            if FALSE_WORDS.contains(&text.as_str()) {
                return Ok(false);
            }
        }
        Err(self.wrong(line, key, "true or false", node))
    }

    /// A list of strings; each with its file line.
    fn strings(&self, node: &Node, line: usize, key: &str) -> Result<Vec<Located<String>>> {
        let Kind::Seq(items) = &node.kind else {
            return Err(self.wrong(line, key, "a list of strings", node));
        };
        items
            .iter()
            .enumerate()
            .map(|(i, item)| {
                Ok(Located {
                    value: self.scalar(item, item.line, &format!("{key}[{i}]"))?,
                    line: self.at(item.line),
                })
            })
            .collect()
    }

    fn env(&self, node: &Node, line: usize) -> Result<BTreeMap<String, EnvSpec>> {
        let mut out = BTreeMap::new();
        for e in self.mapping(node, line, "env")? {
            let key = join("env", &e.key);
            if !is_env_name(&e.key) {
                return Err(self.invalid(
                    e.key_line,
                    &key,
                    "not an environment variable name (letters, digits and '_', not starting \
                     with a digit)",
                ));
            }
            let Kind::Scalar { text, .. } = &e.value.kind else {
                return Err(self.wrong(
                    e.key_line,
                    &key,
                    "a string (a literal, ?prompt or ${HOST_VAR})",
                    &e.value,
                ));
            };
            let value = EnvValue::parse(text).map_err(|r| self.invalid(e.key_line, &key, r))?;
            out.insert(
                e.key.clone(),
                EnvSpec {
                    value,
                    file: self.file.to_path_buf(),
                    line: self.at(e.key_line),
                },
            );
        }
        Ok(out)
    }

    fn provider(&self, node: &Node, line: usize) -> Result<AgentProvider> {
        let mut out = AgentProvider {
            file: Some(self.file.to_path_buf()),
            ..AgentProvider::default()
        };
        let mut auth_token_line = None;
        let mut forward_line = None;
        for e in self.mapping(node, line, "agent_provider")? {
            let key = join("agent_provider", &e.key);
            match e.key.as_str() {
                "template" => {
                    out.template = match self.scalar(&e.value, e.key_line, &key)?.as_str() {
                        "claude" => ProviderKind::Claude,
                        "codex" => ProviderKind::Codex,
                        _ => return Err(self.invalid(e.key_line, &key, "must be claude or codex")),
                    }
                }
                "dockerfile" => out.dockerfile = Some(self.scalar(&e.value, e.key_line, &key)?),
                "auth_token" => {
                    let var = self.scalar(&e.value, e.key_line, &key)?;
                    if !is_env_name(&var) {
                        return Err(self.invalid(
                            e.key_line,
                            &key,
                            "must be the name of the host environment variable holding the \
                             OAuth token ([A-Za-z_][A-Za-z0-9_]*), not the token",
                        ));
                    }
                    out.auth_token = Some(Located {
                        value: var,
                        line: self.at(e.key_line),
                    });
                    auth_token_line = Some(e.key_line);
                }
                "forward_host_credentials" => {
                    out.forward_host_credentials = self.boolean(&e.value, e.key_line, &key)?;
                    forward_line = Some(e.key_line);
                }
                _ => return Err(self.unknown(e.key_line, &key, PROVIDER_KEYS)),
            }
        }
        match (out.template, auth_token_line, forward_line) {
            (ProviderKind::Codex, Some(l), _) => Err(self.invalid(
                l,
                "agent_provider.auth_token",
                "applies to template claude only; codex uses forward_host_credentials",
            )),
            (ProviderKind::Claude, _, Some(l)) if out.forward_host_credentials => Err(self
                .invalid(
                    l,
                    "agent_provider.forward_host_credentials",
                    "applies to template codex only; claude uses auth_token",
                )),
            _ => Ok(out),
        }
    }

    fn user(&self, node: &Node, line: usize) -> Result<GitUser> {
        let mut user = GitUser::default();
        for e in self.mapping(node, line, "git-gate.user")? {
            let key = join("git-gate.user", &e.key);
            let slot = match e.key.as_str() {
                "name" => &mut user.name,
                "email" => &mut user.email,
                _ => return Err(self.unknown(e.key_line, &key, USER_KEYS)),
            };
            let value = self.scalar(&e.value, e.key_line, &key)?;
            if value.trim().is_empty()
                || value
                    .chars()
                    .any(|c| c.is_control() || c == '<' || c == '>')
            {
                return Err(self.invalid(
                    e.key_line,
                    &key,
                    "must be one non-empty line without '<', '>' or control characters",
                ));
            }
            *slot = Some(value);
        }
        if user.name.is_none() && user.email.is_none() {
            return Err(self.invalid(line, "git-gate.user", "give `name`, `email` or both"));
        }
        Ok(user)
    }

    fn gate(&self, node: &Node, line: usize) -> Result<GitGateDecl> {
        let mut out = GitGateDecl::default();
        for e in self.mapping(node, line, "git-gate")? {
            match e.key.as_str() {
                "user" => out.user = Some(self.user(&e.value, e.key_line)?),
                "repos" => out.repos = Some(self.repos(&e.value, e.key_line)?),
                other => return Err(self.unknown(e.key_line, &join("git-gate", other), GATE_KEYS)),
            }
        }
        Ok(out)
    }

    /// A repo's ref policy: `allow` (ref patterns), `force_push`, `deletions`.
    fn ref_policy(
        &self,
        node: &Node,
        line: usize,
        prefix: &str,
    ) -> Result<bottle_api::gitgate::RefPolicySpec> {
        let mut out = bottle_api::gitgate::RefPolicySpec::default();
        for e in self.mapping(node, line, prefix)? {
            let key = join(prefix, &e.key);
            match e.key.as_str() {
                "allow" => {
                    for p in self.strings(&e.value, e.key_line, &key)? {
                        if !p.value.starts_with("refs/") {
                            return Err(self.invalid(
                                e.key_line,
                                &key,
                                "patterns are full ref names such as refs/heads/agent/*",
                            ));
                        }
                        out.allow.push(p.value);
                    }
                }
                "force_push" => out.force_push = Some(self.boolean(&e.value, e.key_line, &key)?),
                "deletions" => out.deletions = Some(self.boolean(&e.value, e.key_line, &key)?),
                _ => return Err(self.unknown(e.key_line, &key, REF_POLICY_KEYS)),
            }
        }
        Ok(out)
    }

    fn repos(&self, node: &Node, line: usize) -> Result<BTreeMap<String, RepoEntry>> {
        if node.kind == Kind::Null {
            return Err(self.invalid(
                line,
                "git-gate.repos",
                "has no value; write `repos: {}` to clear the repos of the bottle this one \
                 extends, or remove the key to inherit them",
            ));
        }
        let mut out = BTreeMap::new();
        for e in self.mapping(node, line, "git-gate.repos")? {
            let prefix = join("git-gate.repos", &e.key);
            if !is_repo_name(&e.key) {
                return Err(self.invalid(
                    e.key_line,
                    &prefix,
                    "a repo name is letters, digits, '.', '_' and '-'",
                ));
            }
            let (mut url, mut identity, mut host_key, mut policy) = (None, None, None, None);
            let mut host_key_line = e.key_line;
            for f in self.mapping(&e.value, e.key_line, &prefix)? {
                let key = join(&prefix, &f.key);
                if f.key == "policy" {
                    policy = Some(self.ref_policy(&f.value, f.key_line, &key)?);
                    continue;
                }
                let value = match f.key.as_str() {
                    "url" | "identity" | "host_key" => self.scalar(&f.value, f.key_line, &key)?,
                    _ => return Err(self.unknown(f.key_line, &key, REPO_KEYS)),
                };
                match f.key.as_str() {
                    "url" => {
                        if !is_gate_url(&value) || value.contains(['"', '\\', ' ']) {
                            return Err(self.invalid(
                                f.key_line,
                                &key,
                                "must be ssh://user@host[:port]/path or \
                                 https://[user@]host[:port]/path (never a password in the URL)",
                            ));
                        }
                        url = Some(value);
                    }
                    "identity" => {
                        if value.trim().is_empty() || value.contains('\n') {
                            return Err(self.invalid(
                                f.key_line,
                                &key,
                                "must be the path of the private key file (ssh) or token file \
                                 (https) the gate uses",
                            ));
                        }
                        identity = Some(value);
                    }
                    _ => {
                        host_key_line = f.key_line;
                        let value = value.trim().to_string();
                        if value.is_empty() || value.chars().any(char::is_control) {
                            return Err(self.invalid(
                                f.key_line,
                                &key,
                                "must be the upstream's public host key on one line, as in \
                                 `ssh-ed25519 AAAA…`",
                            ));
                        }
                        host_key = Some(value);
                    }
                }
            }
            let url = url.ok_or_else(|| {
                self.missing(
                    e.key_line,
                    &join(&prefix, "url"),
                    "the upstream, as ssh://user@host[:port]/path or https://host[:port]/path",
                )
            })?;
            if host_key.is_some() && bottle_api::gitgate::is_https(&url) {
                return Err(self.invalid(
                    host_key_line,
                    &join(&prefix, "host_key"),
                    "applies to ssh:// upstreams only; an https:// upstream's certificate is \
                     checked against the system roots and the agent's upstream_ca_files, so \
                     remove it",
                ));
            }
            let identity = identity.ok_or_else(|| {
                self.missing(
                    e.key_line,
                    &join(&prefix, "identity"),
                    "the private key file (ssh) or token file (https) the gate uses to reach \
                     the upstream",
                )
            })?;
            out.insert(
                e.key.clone(),
                RepoEntry {
                    spec: GitRepoSpec {
                        url,
                        identity,
                        host_key,
                        policy,
                    },
                    file: self.file.to_path_buf(),
                    line: self.at(e.key_line),
                },
            );
        }
        Ok(out)
    }

    fn egress(&self, node: &Node, line: usize) -> Result<EgressPolicy> {
        let mut policy = EgressPolicy::default();
        let mut route_lines = Vec::new();
        for e in self.mapping(node, line, "egress")? {
            if e.key != "routes" {
                return Err(self.unknown(e.key_line, &join("egress", &e.key), EGRESS_KEYS));
            }
            let Kind::Seq(items) = &e.value.kind else {
                return Err(self.wrong(e.key_line, "egress.routes", "a list of routes", &e.value));
            };
            for (i, item) in items.iter().enumerate() {
                policy.routes.push(self.route(item, i)?);
                route_lines.push(item.line);
            }
        }
        if let Err(errors) = policy.validate() {
            return Err(ManifestError::Egress {
                file: self.file.to_path_buf(),
                problems: errors
                    .into_iter()
                    .map(|err| match err.route {
                        Some(i) => EgressProblem {
                            line: self.at(route_lines.get(i).copied().unwrap_or(line)),
                            key: format!("egress.routes[{i}]"),
                            message: err.message,
                        },
                        None => EgressProblem {
                            line: self.at(line),
                            key: "egress".into(),
                            message: err.message,
                        },
                    })
                    .collect(),
            });
        }
        Ok(policy)
    }

    fn route(&self, node: &Node, i: usize) -> Result<Route> {
        let prefix = format!("egress.routes[{i}]");
        let mut route = Route::default();
        let mut host = None;
        for e in self.mapping(node, node.line, &prefix)? {
            let key = join(&prefix, &e.key);
            let l = e.key_line;
            match e.key.as_str() {
                "host" => host = Some(self.scalar(&e.value, l, &key)?),
                "path_allowlist" => {
                    route.path_allowlist = self
                        .strings(&e.value, l, &key)?
                        .into_iter()
                        .map(|s| s.value)
                        .collect()
                }
                "auth" => {
                    let (mut scheme, mut token_ref) = (None, None);
                    for a in self.mapping(&e.value, l, &key)? {
                        let akey = join(&key, &a.key);
                        match a.key.as_str() {
                            "scheme" => {
                                scheme =
                                    Some(match self.scalar(&a.value, a.key_line, &akey)?.as_str() {
                                        "Bearer" => AuthScheme::Bearer,
                                        "token" => AuthScheme::Token,
                                        _ => {
                                            return Err(self.invalid(
                                                a.key_line,
                                                &akey,
                                                "must be Bearer or token (Gitea's)",
                                            ))
                                        }
                                    })
                            }
                            "token_ref" => {
                                token_ref = Some(self.scalar(&a.value, a.key_line, &akey)?)
                            }
                            _ => return Err(self.unknown(a.key_line, &akey, AUTH_KEYS)),
                        }
                    }
                    route.auth = match (scheme, token_ref) {
                        (Some(scheme), Some(token_ref)) => Some(RouteAuth { scheme, token_ref }),
                        (None, None) => None,
                        _ => {
                            return Err(self.invalid(
                                l,
                                &key,
                                "needs both `scheme` and `token_ref`, or neither",
                            ))
                        }
                    };
                }
                "pipelock" => {
                    let mut pipelock = Pipelock::default();
                    for p in self.mapping(&e.value, l, &key)? {
                        let pkey = join(&key, &p.key);
                        match p.key.as_str() {
                            "tls_passthrough" => {
                                pipelock.tls_passthrough =
                                    self.boolean(&p.value, p.key_line, &pkey)?
                            }
                            "ssrf_ip_allowlist" => {
                                pipelock.ssrf_ip_allowlist = self
                                    .strings(&p.value, p.key_line, &pkey)?
                                    .into_iter()
                                    .map(|s| s.value)
                                    .collect()
                            }
                            _ => return Err(self.unknown(p.key_line, &pkey, PIPELOCK_KEYS)),
                        }
                    }
                    route.pipelock = Some(pipelock);
                }
                // Reserved; an empty value (`role:`) is fine, validate() refuses the rest.
                "role" => {
                    route.role = match &e.value.kind {
                        Kind::Null => None,
                        _ => Some(self.scalar(&e.value, l, &key)?),
                    }
                }
                "connect_to" => route.connect_to = Some(self.scalar(&e.value, l, &key)?),
                _ => return Err(self.unknown(l, &key, ROUTE_KEYS)),
            }
        }
        route.host = host.ok_or_else(|| {
            self.missing(
                node.line,
                &join(&prefix, "host"),
                "the upstream host name, e.g. api.example.com",
            )
        })?;
        Ok(route)
    }
}
