//! Listing a skill's files for copying into the workload, without following a repository's
//! symlinks out of it.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::{ManifestError, Origin, Result, Skill};

/// Most files one skill may hold.
const MAX_FILES: usize = 10_000;
/// Most bytes one skill may hold.
const MAX_BYTES: u64 = 64 * 1024 * 1024;
/// Deepest directory nesting inside a skill.
const MAX_DEPTH: usize = 32;

/// One regular file of a skill.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkillFile {
    /// Path relative to the skill directory.
    pub rel: PathBuf,
    /// Where to read it on the client.
    pub source: PathBuf,
    /// Permission bits (`0o755` for executables, else `0o644`).
    pub mode: u32,
}

impl Skill {
    /// Every regular file under the skill, sorted. Symlinks inside a repository skill are
    /// refused (one could point at `~/.ssh`); in a home skill, symlinks to files are
    /// followed and symlinks to directories refused (loops).
    pub fn files(&self) -> Result<Vec<SkillFile>> {
        let mut out = Vec::new();
        let mut bytes = 0;
        self.walk(&self.dir, Path::new(""), 0, &mut out, &mut bytes)?;
        out.sort_by(|a, b| a.rel.cmp(&b.rel));
        Ok(out)
    }

    fn refuse(&self, path: &Path, reason: impl Into<String>) -> ManifestError {
        ManifestError::UnsafeSkill {
            skill: self.name.clone(),
            path: path.to_path_buf(),
            reason: reason.into(),
        }
    }

    fn walk(
        &self,
        dir: &Path,
        rel: &Path,
        depth: usize,
        out: &mut Vec<SkillFile>,
        bytes: &mut u64,
    ) -> Result<()> {
        if depth > MAX_DEPTH {
            return Err(self.refuse(dir, format!("nested deeper than {MAX_DEPTH} directories")));
        }
        let io = |path: &Path, e: std::io::Error| ManifestError::Io {
            path: path.to_path_buf(),
            source: Arc::new(e),
        };
        for entry in std::fs::read_dir(dir).map_err(|e| io(dir, e))? {
            let entry = entry.map_err(|e| io(dir, e))?;
            let path = entry.path();
            let rel = rel.join(entry.file_name());
            let mut meta = std::fs::symlink_metadata(&path).map_err(|e| io(&path, e))?;
            if meta.file_type().is_symlink() {
                if self.origin == Origin::Repo {
                    return Err(self.refuse(
                        &path,
                        "is a symlink; a skill from the repository may not contain symlinks",
                    ));
                }
                meta = std::fs::metadata(&path).map_err(|e| io(&path, e))?;
                if meta.is_dir() {
                    return Err(self.refuse(&path, "is a symlink to a directory"));
                }
            }
            if meta.is_dir() {
                self.walk(&path, &rel, depth + 1, out, bytes)?;
            } else if meta.is_file() {
                *bytes += meta.len();
                if out.len() >= MAX_FILES || *bytes > MAX_BYTES {
                    return Err(self.refuse(
                        &self.dir,
                        format!("holds more than {MAX_FILES} files or {MAX_BYTES} bytes"),
                    ));
                }
                out.push(SkillFile {
                    rel,
                    source: path,
                    mode: mode_of(&meta),
                });
            } else {
                return Err(self.refuse(&path, "is not a regular file or directory"));
            }
        }
        Ok(())
    }
}

#[cfg(unix)]
fn mode_of(meta: &std::fs::Metadata) -> u32 {
    use std::os::unix::fs::PermissionsExt as _;
    if meta.permissions().mode() & 0o111 != 0 {
        0o755
    } else {
        0o644
    }
}

#[cfg(not(unix))]
fn mode_of(_meta: &std::fs::Metadata) -> u32 {
    0o644
}
