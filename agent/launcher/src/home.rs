//! The workload's home: a host directory in the bottle's runtime state, bind-mounted at the
//! home path so it outlives one workload (`bottle resume` finds the agent's sessions), and
//! the files a manifest run places in it (provider config, prompt, skills, git config).
//!
//! The home belongs to the workload, which may have planted symlinks, FIFOs or hard links in
//! it since its last run. Every write therefore resolves paths with `openat2`
//! (`RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`, no cross-mount), replaces entries instead of
//! writing through them, and creates files and directories owned by the workload's mapped
//! user: the agent never follows a path the workload controls out of the home.

use std::fs::File;
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{openat2, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{fchmod, mkdirat, Mode};
use nix::unistd::{fchown, unlinkat, Gid, Uid, UnlinkatFlags};

/// Files and directories made for the workload: the home's own mode, and intermediate dirs.
const DIR_MODE: u32 = 0o755;

#[derive(Debug, thiserror::Error)]
pub enum HomeError {
    #[error("home file {path:?}: {reason}")]
    BadPath { path: String, reason: &'static str },
    #[error("home file {path:?}: {source}")]
    Write {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("home {}: {source}", path.display())]
    Dir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// One file to place, relative to the home.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HomeFileSpec<'a> {
    pub path: &'a str,
    pub contents: &'a [u8],
    pub mode: u32,
}

/// Creates `dir` (0755, owned by the mapped user) if it does not exist yet.
pub fn ensure(dir: &Path, uid: u32, gid: u32) -> Result<(), HomeError> {
    let err = |source| HomeError::Dir {
        path: dir.to_path_buf(),
        source,
    };
    match std::fs::DirBuilder::new().mode(DIR_MODE).create(dir) {
        Ok(()) => {
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(DIR_MODE))
                .map_err(err)?;
            std::os::unix::fs::chown(dir, Some(uid), Some(gid)).map_err(err)
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(err(e)),
    }
}

fn beneath() -> ResolveFlag {
    ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_SYMLINKS | ResolveFlag::RESOLVE_NO_XDEV
}

fn open_dir(at: &OwnedFd, name: &str) -> nix::Result<OwnedFd> {
    let how = OpenHow::new()
        .flags(OFlag::O_DIRECTORY | OFlag::O_RDONLY | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW)
        .resolve(beneath());
    let fd = openat2(at.as_raw_fd(), name, how)?;
    // SAFETY: openat2 just returned this descriptor; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Writes `files` into the home at `dir`, each owned by `uid:gid` (host ids of the workload's
/// user), replacing whatever entry (file, symlink, FIFO) had that name. Missing directories
/// on the way are created. A path that is not plain and relative, or that crosses a symlink
/// or a directory the workload replaced with something else, is refused.
pub fn write_files(
    dir: &Path,
    files: &[HomeFileSpec<'_>],
    uid: u32,
    gid: u32,
) -> Result<(), HomeError> {
    let root = File::open(dir).map_err(|source| HomeError::Dir {
        path: dir.to_path_buf(),
        source,
    })?;
    let root = OwnedFd::from(root);
    for f in files {
        if let Some(reason) = bottle_api::provision::home_path_problem(f.path) {
            return Err(HomeError::BadPath {
                path: f.path.to_owned(),
                reason,
            });
        }
        write_one(&root, f, uid, gid).map_err(|e| HomeError::Write {
            path: f.path.to_owned(),
            source: e,
        })?;
    }
    Ok(())
}

/// Makes the directory `rel` (relative to the home at `dir`) and its parents, owned by the
/// workload's user, never through a symlink.
pub fn make_dirs(dir: &Path, rel: &str, uid: u32, gid: u32) -> Result<(), HomeError> {
    if let Some(reason) = bottle_api::provision::home_path_problem(rel) {
        return Err(HomeError::BadPath {
            path: rel.to_owned(),
            reason,
        });
    }
    let root = OwnedFd::from(File::open(dir).map_err(|source| HomeError::Dir {
        path: dir.to_path_buf(),
        source,
    })?);
    walk_dirs(&root, Some(rel), uid, gid)
        .map(drop)
        .map_err(|e| HomeError::Write {
            path: rel.to_owned(),
            source: e,
        })
}

/// Walks (and makes) `rel`'s components one at a time, never through a symlink; returns the
/// last directory.
fn walk_dirs(root: &OwnedFd, rel: Option<&str>, uid: u32, gid: u32) -> std::io::Result<OwnedFd> {
    let mut at = open_dir(root, ".")?;
    for component in rel.into_iter().flat_map(|p| p.split('/')) {
        match mkdirat(
            Some(at.as_raw_fd()),
            component,
            Mode::from_bits_truncate(DIR_MODE),
        ) {
            Ok(()) => {
                let made = open_dir(&at, component)?;
                fchown(
                    made.as_raw_fd(),
                    Some(Uid::from_raw(uid)),
                    Some(Gid::from_raw(gid)),
                )?;
                at = made;
            }
            Err(Errno::EEXIST) => at = open_dir(&at, component)?,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(at)
}

fn write_one(root: &OwnedFd, f: &HomeFileSpec<'_>, uid: u32, gid: u32) -> std::io::Result<()> {
    let (parents, name) = match f.path.rsplit_once('/') {
        Some((parents, name)) => (Some(parents), name),
        None => (None, f.path),
    };
    let at = walk_dirs(root, parents, uid, gid)?;
    // Replace, never write through: whatever the workload left under this name goes first.
    match unlinkat(Some(at.as_raw_fd()), name, UnlinkatFlags::NoRemoveDir) {
        Ok(()) | Err(Errno::ENOENT) => {}
        Err(e) => return Err(e.into()),
    }
    let how = OpenHow::new()
        .flags(
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW,
        )
        .mode(Mode::from_bits_truncate(0o600))
        .resolve(beneath());
    let fd = openat2(at.as_raw_fd(), name, how)?;
    // SAFETY: openat2 just returned this descriptor; nothing else owns it.
    let mut file = unsafe { File::from_raw_fd(fd) };
    fchown(
        file.as_raw_fd(),
        Some(Uid::from_raw(uid)),
        Some(Gid::from_raw(gid)),
    )?;
    fchmod(file.as_raw_fd(), Mode::from_bits_truncate(f.mode & 0o777))?;
    file.write_all(f.contents)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{symlink, MetadataExt};

    fn me() -> (u32, u32) {
        (
            nix::unistd::getuid().as_raw(),
            nix::unistd::getgid().as_raw(),
        )
    }

    fn spec<'a>(path: &'a str, contents: &'a [u8]) -> HomeFileSpec<'a> {
        HomeFileSpec {
            path,
            contents,
            mode: 0o640,
        }
    }

    #[test]
    fn writes_nested_files_with_mode() -> Result<(), Box<dyn std::error::Error>> {
        let tmp = tempfile::tempdir()?;
        let (uid, gid) = me();
        write_files(
            tmp.path(),
            &[
                spec("a.json", b"{}"),
                spec(".claude/skills/x/SKILL.md", b"hi"),
            ],
            uid,
            gid,
        )?;
        assert_eq!(std::fs::read(tmp.path().join("a.json"))?, b"{}");
        let nested = tmp.path().join(".claude/skills/x/SKILL.md");
        assert_eq!(std::fs::read(&nested)?, b"hi");
        assert_eq!(std::fs::metadata(&nested)?.mode() & 0o777, 0o640);
        // Writing again replaces.
        write_files(tmp.path(), &[spec("a.json", b"[1]")], uid, gid)?;
        assert_eq!(std::fs::read(tmp.path().join("a.json"))?, b"[1]");
        Ok(())
    }

    #[test]
    fn a_planted_symlink_is_replaced_not_followed() -> Result<(), Box<dyn std::error::Error>> {
        let tmp = tempfile::tempdir()?;
        let home = tmp.path().join("home");
        std::fs::create_dir(&home)?;
        let outside = tmp.path().join("outside");
        std::fs::write(&outside, b"precious")?;
        symlink(&outside, home.join(".gitconfig"))?;
        let (uid, gid) = me();
        write_files(&home, &[spec(".gitconfig", b"[user]")], uid, gid)?;
        assert_eq!(std::fs::read(&outside)?, b"precious");
        assert_eq!(std::fs::read(home.join(".gitconfig"))?, b"[user]");
        assert!(!std::fs::symlink_metadata(home.join(".gitconfig"))?.is_symlink());
        Ok(())
    }

    #[test]
    fn a_symlinked_directory_is_refused() -> Result<(), Box<dyn std::error::Error>> {
        let tmp = tempfile::tempdir()?;
        let home = tmp.path().join("home");
        let outside = tmp.path().join("outside");
        std::fs::create_dir_all(&home)?;
        std::fs::create_dir_all(&outside)?;
        symlink(&outside, home.join(".claude"))?;
        let (uid, gid) = me();
        let err = write_files(&home, &[spec(".claude/settings.json", b"x")], uid, gid);
        assert!(matches!(err, Err(HomeError::Write { .. })), "{err:?}");
        assert_eq!(std::fs::read_dir(&outside)?.count(), 0);
        Ok(())
    }

    #[test]
    fn a_fifo_is_replaced_without_blocking() -> Result<(), Box<dyn std::error::Error>> {
        let tmp = tempfile::tempdir()?;
        nix::unistd::mkfifo(&tmp.path().join("f"), Mode::from_bits_truncate(0o600))?;
        let (uid, gid) = me();
        write_files(tmp.path(), &[spec("f", b"data")], uid, gid)?;
        assert_eq!(std::fs::read(tmp.path().join("f"))?, b"data");
        Ok(())
    }

    #[test]
    fn escaping_paths_are_refused() -> Result<(), Box<dyn std::error::Error>> {
        let tmp = tempfile::tempdir()?;
        let (uid, gid) = me();
        for bad in ["../x", "/etc/passwd", "a/../../x", ""] {
            let err = write_files(tmp.path(), &[spec(bad, b"x")], uid, gid);
            assert!(
                matches!(err, Err(HomeError::BadPath { .. })),
                "{bad:?}: {err:?}"
            );
        }
        Ok(())
    }
}
