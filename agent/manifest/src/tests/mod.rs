//! Crate-level tests: manifests on disk (temporary homes), provider plans, preflight.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod manifests;
mod preflight;
mod providers;

use std::path::{Path, PathBuf};

use tempfile::TempDir;

use crate::manifest::{Catalog, LoadOptions};

/// A temporary operator home with `~/.bot-bottle` and a repository checkout.
pub(crate) struct Fixture {
    _dir: TempDir,
    /// The operator's home (`$HOME`).
    pub user_home: PathBuf,
    /// `<user_home>/.bot-bottle`.
    pub home: PathBuf,
    /// A repository checkout (the working directory).
    pub cwd: PathBuf,
}

impl Fixture {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        // Canonical, so paths in messages match what the loader prints on macOS too.
        let root = dir.path().canonicalize().unwrap();
        let user_home = root.join("home");
        let home = user_home.join(".bot-bottle");
        let cwd = root.join("repo");
        std::fs::create_dir_all(&home).unwrap();
        std::fs::create_dir_all(&cwd).unwrap();
        Self {
            _dir: dir,
            user_home,
            home,
            cwd,
        }
    }

    pub fn write(&self, path: &Path, text: &str) -> PathBuf {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
        path.to_path_buf()
    }

    /// `<home>/bottles/<name>.md` with `yaml` as front matter.
    pub fn bottle(&self, name: &str, yaml: &str) -> PathBuf {
        self.write(
            &self.home.join("bottles").join(format!("{name}.md")),
            &manifest(yaml, "A bottle.\n"),
        )
    }

    /// `<home>/agents/<name>.md`.
    pub fn agent(&self, name: &str, yaml: &str, prompt: &str) -> PathBuf {
        self.write(
            &self.home.join("agents").join(format!("{name}.md")),
            &manifest(yaml, prompt),
        )
    }

    /// `<cwd>/.bot-bottle/agents/<name>.md`.
    pub fn repo_agent(&self, name: &str, yaml: &str, prompt: &str) -> PathBuf {
        self.write(
            &self
                .cwd
                .join(".bot-bottle/agents")
                .join(format!("{name}.md")),
            &manifest(yaml, prompt),
        )
    }

    /// A skill directory with a SKILL.md.
    pub fn skill(&self, dir: &Path) -> PathBuf {
        self.write(&dir.join("SKILL.md"), "---\nname: s\n---\nSkill.\n");
        dir.to_path_buf()
    }

    pub fn load(&self) -> Catalog {
        Catalog::load_with(LoadOptions {
            home: self.home.clone(),
            cwd: self.cwd.clone(),
            user_home: Some(self.user_home.clone()),
        })
    }

    /// An SSH key file under the operator's home.
    pub fn key(&self) -> PathBuf {
        self.write(
            &self.user_home.join(".ssh/gate_ed25519"),
            "not a real key\n",
        )
    }
}

/// A manifest: `---`, the YAML, `---`, the body. YAML line N is file line N + 1.
pub(crate) fn manifest(yaml: &str, body: &str) -> String {
    format!("---\n{yaml}---\n{body}")
}
