//! Finding, reading and cross-checking every manifest: the [`Catalog`].

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bottle_api::gitgate::GitUser;

use super::{
    decode, is_manifest_name, AgentManifest, BottleManifest, ManifestError, Origin, ResolvedAgent,
    ResolvedBottle, Result, Skill, Warning,
};
use crate::paths::{
    AGENTS_DIR, BOTTLES_DIR, LEGACY_JSON, MAX_MANIFEST_BYTES, REPO_DIR_NAME, SKILLS_DIR,
};

/// Where to look.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadOptions {
    /// The manifest home (`$BOTTLE_HOME` or `~/.bot-bottle`).
    pub home: PathBuf,
    /// The working directory; its `.bot-bottle/agents/` and `.bot-bottle/skills/` are read.
    pub cwd: PathBuf,
    /// The operator's home directory, for `~/` in `git-gate.repos.*.identity`.
    pub user_home: Option<PathBuf>,
}

/// Everything found under the home and the working directory, with what went wrong per
/// file. Loading never fails as a whole: `bottle agents` lists what it found and the errors.
#[derive(Debug, Clone)]
pub struct Catalog {
    pub home: PathBuf,
    pub cwd: PathBuf,
    user_home: Option<PathBuf>,
    /// Bottle files that decoded, as written (before `extends`).
    pub bottles: BTreeMap<String, BottleManifest>,
    /// Agent files that decoded; a repository agent replaces the home one of the same name.
    pub agents: BTreeMap<String, AgentManifest>,
    pub warnings: Vec<Warning>,
    /// Every problem found, each once, in a stable order.
    pub errors: Vec<ManifestError>,
    bottle_failures: BTreeMap<String, (PathBuf, ManifestError)>,
    agent_failures: BTreeMap<String, ManifestError>,
    /// A problem that makes the whole home unusable (the legacy JSON format).
    fatal: Option<ManifestError>,
    /// `<cwd>/.bot-bottle/agents`, unless that is the home's own folder.
    repo_dir: Option<PathBuf>,
}

impl Catalog {
    /// Loads from `home` and `cwd`; `~/` in identity paths expands with `$HOME`.
    pub fn load(home: &Path, cwd: &Path) -> Self {
        Self::load_with(LoadOptions {
            home: home.to_path_buf(),
            cwd: cwd.to_path_buf(),
            user_home: std::env::var_os("HOME")
                .filter(|h| !h.is_empty())
                .map(PathBuf::from),
        })
    }

    pub fn load_with(opts: LoadOptions) -> Self {
        let mut cat = Catalog {
            home: opts.home,
            cwd: opts.cwd,
            user_home: opts.user_home,
            bottles: BTreeMap::new(),
            agents: BTreeMap::new(),
            warnings: Vec::new(),
            errors: Vec::new(),
            bottle_failures: BTreeMap::new(),
            agent_failures: BTreeMap::new(),
            fatal: None,
            repo_dir: None,
        };
        let bottles_dir = cat.bottles_dir();
        let agents_dir = cat.home.join(AGENTS_DIR);

        let legacy = cat.home.join(LEGACY_JSON);
        if legacy.is_file() {
            if !bottles_dir.is_dir() && !agents_dir.is_dir() {
                let err = ManifestError::LegacyJson {
                    path: legacy,
                    home: cat.home.clone(),
                };
                cat.errors.push(err.clone());
                cat.fatal = Some(err);
                return cat;
            }
            cat.warnings.push(Warning::new(
                Some(&legacy),
                "ignored: this is bot-bottle's old format; the Markdown manifests in bottles/ \
                 and agents/ are used",
            ));
        }

        for (name, path) in cat.scan(&bottles_dir) {
            match read(&path).and_then(|text| decode::bottle(&path, &name, &text)) {
                Ok(bottle) => {
                    cat.bottles.insert(name, bottle);
                }
                Err(err) => {
                    cat.errors.push(err.clone());
                    cat.bottle_failures.insert(name, (path, err));
                }
            }
        }

        let repo = cat.cwd.join(REPO_DIR_NAME);
        if !same_dir(&repo, &cat.home) {
            let repo_bottles = repo.join(BOTTLES_DIR);
            if repo_bottles.is_dir() {
                cat.warnings.push(Warning::new(
                    Some(&repo_bottles),
                    format!(
                        "ignored: bottles hold credentials and are only read from {}",
                        bottles_dir.display()
                    ),
                ));
            }
            cat.repo_dir = Some(repo);
        }

        for (name, path) in cat.scan(&agents_dir) {
            let result = read(&path)
                .and_then(|text| decode::agent(&path, &name, &text, Origin::Home, &bottles_dir));
            cat.add_agent(name, result);
        }
        if let Some(repo_agents) = cat.repo_dir.as_ref().map(|r| r.join(AGENTS_DIR)) {
            for (name, path) in cat.scan(&repo_agents) {
                if cat.agents.contains_key(&name) || cat.agent_failures.contains_key(&name) {
                    cat.warnings.push(Warning::new(
                        Some(&path),
                        format!(
                            "overrides the home agent {}",
                            agents_dir.join(format!("{name}.md")).display()
                        ),
                    ));
                    cat.agents.remove(&name);
                    cat.agent_failures.remove(&name);
                }
                let result = read(&path).and_then(|text| {
                    decode::agent(&path, &name, &text, Origin::Repo, &bottles_dir)
                });
                cat.add_agent(name, result);
            }
        }

        // Cross-file checks, so a listing shows every problem up front.
        let names: Vec<String> = cat.bottles.keys().cloned().collect();
        for name in names {
            if let Err(err) = cat.resolve_bottle(&name) {
                cat.push_error(err);
            }
        }
        let names: Vec<String> = cat.agents.keys().cloned().collect();
        for name in names {
            match cat.resolve(&name) {
                Ok(agent) => {
                    for w in agent.warnings {
                        if !cat.warnings.contains(&w) {
                            cat.warnings.push(w);
                        }
                    }
                }
                Err(err) => cat.push_error(err),
            }
        }
        cat
    }

    fn bottles_dir(&self) -> PathBuf {
        self.home.join(BOTTLES_DIR)
    }

    fn add_agent(&mut self, name: String, result: Result<AgentManifest>) {
        match result {
            Ok(agent) => {
                self.agents.insert(name, agent);
            }
            Err(err) => {
                self.errors.push(err.clone());
                self.agent_failures.insert(name, err);
            }
        }
    }

    fn push_error(&mut self, err: ManifestError) {
        let text = err.to_string();
        if !self.errors.iter().any(|e| e.to_string() == text) {
            self.errors.push(err);
        }
    }

    /// Manifest files in `dir`, sorted by name. Hidden files and directories are passed
    /// over silently; any other name that breaks the rule is skipped with a warning.
    fn scan(&mut self, dir: &Path) -> Vec<(String, PathBuf)> {
        let entries = match std::fs::read_dir(dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Vec::new(),
            Err(e) => {
                self.errors.push(ManifestError::Io {
                    path: dir.to_path_buf(),
                    source: Arc::new(e),
                });
                return Vec::new();
            }
        };
        let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
        paths.sort();
        let mut out = Vec::new();
        for path in paths {
            let file_name = path.file_name().map(|n| n.to_string_lossy().into_owned());
            let Some(file_name) = file_name else { continue };
            if file_name.starts_with('.') || path.is_dir() {
                continue;
            }
            match file_name.strip_suffix(".md") {
                Some(stem) if is_manifest_name(stem) => out.push((stem.to_string(), path)),
                _ => self.warnings.push(Warning::new(
                    Some(&path),
                    "skipped: a manifest file name is lowercase letters, digits and '-', \
                     starting with a letter, ending in .md",
                )),
            }
        }
        out
    }

    /// The bottle `name` with its `extends` chain merged, identity paths expanded and checked.
    pub fn resolve_bottle(&self, name: &str) -> Result<ResolvedBottle> {
        if let Some(fatal) = &self.fatal {
            return Err(fatal.clone());
        }
        if let Some((_, err)) = self.bottle_failures.get(name) {
            return Err(err.clone());
        }
        let first = self
            .bottles
            .get(name)
            .ok_or_else(|| ManifestError::NoSuchBottle {
                name: name.to_string(),
                dir: self.bottles_dir(),
                available: self.bottle_names(),
            })?;
        let mut chain: Vec<&BottleManifest> = vec![first];
        while let Some(cur) = chain.last().copied() {
            let Some(ext) = &cur.extends else { break };
            if ext.value == cur.name {
                return Err(ManifestError::ExtendsSelf {
                    file: cur.file.clone(),
                    line: ext.line,
                    name: cur.name.clone(),
                });
            }
            if let Some(pos) = chain.iter().position(|b| b.name == ext.value) {
                return Err(cycle_error(&chain[pos..]));
            }
            match self.bottles.get(&ext.value) {
                Some(parent) => chain.push(parent),
                None => {
                    return Err(match self.bottle_failures.get(&ext.value) {
                        Some((parent_file, _)) => ManifestError::BrokenParent {
                            file: cur.file.clone(),
                            line: ext.line,
                            parent: ext.value.clone(),
                            parent_file: parent_file.clone(),
                        },
                        None => ManifestError::UnknownParent {
                            file: cur.file.clone(),
                            line: ext.line,
                            parent: ext.value.clone(),
                            dir: self.bottles_dir(),
                            available: self.bottle_names(),
                        },
                    })
                }
            }
        }

        let mut out = ResolvedBottle {
            name: first.name.clone(),
            file: first.file.clone(),
            parents: chain[1..].iter().map(|b| b.name.clone()).collect(),
            env: BTreeMap::new(),
            provider: Default::default(),
            git_user: None,
            repos: BTreeMap::new(),
            egress: Default::default(),
            supervise: false,
        };
        for b in chain.iter().rev() {
            if let Some(env) = &b.env {
                out.env
                    .extend(env.iter().map(|(k, v)| (k.clone(), v.clone())));
            }
            if let Some(provider) = &b.agent_provider {
                out.provider = provider.clone();
            }
            if let Some(gate) = &b.git_gate {
                if let Some(user) = &gate.user {
                    out.git_user = Some(overlay(out.git_user.take(), user));
                }
                match &gate.repos {
                    Some(repos) if repos.is_empty() => out.repos.clear(),
                    Some(repos) => out
                        .repos
                        .extend(repos.iter().map(|(k, v)| (k.clone(), v.clone()))),
                    None => {}
                }
            }
            if let Some(egress) = &b.egress {
                out.egress = egress.clone();
            }
            if let Some(supervise) = b.supervise {
                out.supervise = supervise;
            }
        }
        for (repo, entry) in &mut out.repos {
            let path = self.identity_path(repo, entry)?;
            entry.spec.identity = path.display().to_string();
        }
        Ok(out)
    }

    /// `~/x` from the operator's home; a relative path from the declaring file's directory.
    fn identity_path(&self, repo: &str, entry: &super::RepoEntry) -> Result<PathBuf> {
        let raw = entry.spec.identity.as_str();
        let key = format!("git-gate.repos.{repo}.identity");
        let invalid = |reason: String| ManifestError::Invalid {
            file: entry.file.clone(),
            line: entry.line,
            key: key.clone(),
            reason,
        };
        let path = if raw == "~" || raw.starts_with("~/") {
            let home = self.user_home.as_ref().ok_or_else(|| {
                invalid("starts with ~ but HOME is not set; give an absolute path".into())
            })?;
            home.join(raw.trim_start_matches('~').trim_start_matches('/'))
        } else if Path::new(raw).is_absolute() {
            PathBuf::from(raw)
        } else {
            entry
                .file
                .parent()
                .map(|dir| dir.join(raw))
                .unwrap_or_else(|| PathBuf::from(raw))
        };
        if !path.is_file() {
            return Err(invalid(format!(
                "key file {} does not exist (a relative path is taken from the bottle file's \
                 directory)",
                path.display()
            )));
        }
        Ok(path)
    }

    /// The agent `name`: its bottle merged, skills found, git identity overlaid.
    pub fn resolve(&self, name: &str) -> Result<ResolvedAgent> {
        if let Some(fatal) = &self.fatal {
            return Err(fatal.clone());
        }
        if let Some(err) = self.agent_failures.get(name) {
            return Err(err.clone());
        }
        let agent = self
            .agents
            .get(name)
            .ok_or_else(|| ManifestError::UnknownAgent {
                name: name.to_string(),
                searched: self.agent_dirs(),
                available: names(self.agents.keys().chain(self.agent_failures.keys())),
            })?;
        let bottle_name = &agent.bottle.value;
        let bottle = if self.bottles.contains_key(bottle_name) {
            self.resolve_bottle(bottle_name)?
        } else if let Some((bottle_file, _)) = self.bottle_failures.get(bottle_name) {
            return Err(ManifestError::BrokenBottle {
                file: agent.file.clone(),
                line: agent.bottle.line,
                bottle: bottle_name.clone(),
                bottle_file: bottle_file.clone(),
            });
        } else {
            return Err(ManifestError::UnknownBottle {
                file: agent.file.clone(),
                line: agent.bottle.line,
                bottle: bottle_name.clone(),
                dir: self.bottles_dir(),
                available: self.bottle_names(),
            });
        };

        let mut warnings = Vec::new();
        let mut skills: Vec<Skill> = Vec::new();
        for (i, skill) in agent.skills.iter().enumerate() {
            if skills.iter().any(|s| s.name == skill.value) {
                warnings.push(Warning::new(
                    Some(&agent.file),
                    format!("skill \"{}\" is listed twice", skill.value),
                ));
                continue;
            }
            let found = self.find_skill(agent, i, &skill.value, skill.line)?;
            if !found.dir.join("SKILL.md").is_file() {
                warnings.push(Warning::new(
                    Some(&found.dir),
                    format!("skill \"{}\" has no SKILL.md", found.name),
                ));
            }
            skills.push(found);
        }

        for (repo, entry) in &bottle.repos {
            if entry.spec.host_key.is_none() {
                warnings.push(Warning::new(
                    Some(&entry.file),
                    format!(
                        "git-gate repo \"{repo}\" has no host_key: the gate refuses to fetch \
                         or push it (fail closed); pin the upstream's key, e.g. from \
                         `ssh-keyscan -t ed25519 <host>`"
                    ),
                ));
            }
        }

        let git_user = match (&bottle.git_user, &agent.git_user) {
            (base, Some(top)) => Some(overlay(base.clone(), &top.value)),
            (base, None) => base.clone(),
        };
        Ok(ResolvedAgent {
            name: agent.name.clone(),
            file: agent.file.clone(),
            origin: agent.origin,
            prompt: agent.prompt.clone(),
            skills,
            git_user,
            bottle,
            warnings,
        })
    }

    /// A home agent looks in `<home>/skills/`; a repository agent in
    /// `<cwd>/.bot-bottle/skills/` first, then `<home>/skills/`.
    fn find_skill(
        &self,
        agent: &AgentManifest,
        index: usize,
        name: &str,
        line: usize,
    ) -> Result<Skill> {
        let home_dir = self.home.join(SKILLS_DIR).join(name);
        let mut searched = Vec::new();
        if agent.origin == Origin::Repo {
            if let Some(repo) = &self.repo_dir {
                let root = repo.join(SKILLS_DIR);
                let dir = root.join(name);
                searched.push(dir.clone());
                if let Ok(meta) = std::fs::symlink_metadata(&dir) {
                    let unsafe_skill = |reason: &str| ManifestError::UnsafeSkill {
                        skill: name.to_string(),
                        path: dir.clone(),
                        reason: reason.to_string(),
                    };
                    if meta.file_type().is_symlink() {
                        return Err(unsafe_skill(
                            "is a symlink; a skill from the repository must be a directory in it",
                        ));
                    }
                    if meta.is_dir() {
                        let inside = match (dir.canonicalize(), root.canonicalize()) {
                            (Ok(d), Ok(r)) => d.starts_with(r),
                            _ => false,
                        };
                        if !inside {
                            return Err(unsafe_skill("resolves outside the repository's skills"));
                        }
                        return Ok(Skill {
                            name: name.to_string(),
                            dir,
                            origin: Origin::Repo,
                        });
                    }
                }
            }
        }
        searched.push(home_dir.clone());
        if home_dir.is_dir() {
            return Ok(Skill {
                name: name.to_string(),
                dir: home_dir,
                origin: Origin::Home,
            });
        }
        Err(ManifestError::MissingSkill {
            file: agent.file.clone(),
            line,
            key: format!("skills[{index}]"),
            skill: name.to_string(),
            searched: searched
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(" or "),
        })
    }

    fn bottle_names(&self) -> String {
        names(self.bottles.keys().chain(self.bottle_failures.keys()))
    }

    fn agent_dirs(&self) -> String {
        let mut dirs = vec![self.home.join(AGENTS_DIR).display().to_string()];
        if let Some(repo) = &self.repo_dir {
            dirs.push(repo.join(AGENTS_DIR).display().to_string());
        }
        dirs.join(" and ")
    }
}

fn names<'a>(it: impl Iterator<Item = &'a String>) -> String {
    let set: BTreeSet<&String> = it.collect();
    if set.is_empty() {
        "(none)".into()
    } else {
        set.into_iter().cloned().collect::<Vec<_>>().join(", ")
    }
}

/// `members[i]` extends `members[i + 1]`, the last extends the first. Reported from the
/// member with the smallest name, so every bottle on (or leading into) the cycle gives the
/// same error.
fn cycle_error(members: &[&BottleManifest]) -> ManifestError {
    let start = members
        .iter()
        .enumerate()
        .min_by(|a, b| a.1.name.cmp(&b.1.name))
        .map(|(i, _)| i)
        .unwrap_or(0);
    let n = members.len();
    let mut parts: Vec<String> = (0..n)
        .map(|k| {
            let b = members[(start + k) % n];
            format!("{} ({})", b.name, b.file.display())
        })
        .collect();
    let first = members[start];
    parts.push(first.name.clone());
    ManifestError::ExtendsCycle {
        file: first.file.clone(),
        line: first.extends.as_ref().map(|e| e.line).unwrap_or(1),
        cycle: parts.join(" -> "),
    }
}

fn overlay(base: Option<GitUser>, top: &GitUser) -> GitUser {
    let base = base.unwrap_or_default();
    GitUser {
        name: top.name.clone().or(base.name),
        email: top.email.clone().or(base.email),
    }
}

fn same_dir(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}

fn read(path: &Path) -> Result<String> {
    let io = |e: std::io::Error| ManifestError::Io {
        path: path.to_path_buf(),
        source: Arc::new(e),
    };
    let meta = std::fs::metadata(path).map_err(io)?;
    if meta.len() > MAX_MANIFEST_BYTES {
        return Err(ManifestError::TooLarge {
            file: path.to_path_buf(),
            max: MAX_MANIFEST_BYTES,
        });
    }
    let bytes = std::fs::read(path).map_err(io)?;
    String::from_utf8(bytes).map_err(|_| {
        io(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "not UTF-8 text",
        ))
    })
}
