//! What a workload gets from its caller's files: the uploaded workspace (`bottle run --cwd`)
//! and host bind mounts (`--mount HOST:GUEST[:ro]`).
//!
//! **Workspace.** `PUT /v1/workspaces` takes a tar archive (at most
//! [`MAX_WORKSPACE_BYTES`], up to [`MAX_PENDING_PER_UID`] unused per caller, each dropped
//! after [`PENDING_TTL`]), spools it
//! to `<state_dir>/workspaces/uploads/` (root-only) and unpacks it there. The archive is
//! hostile input: only regular files, directories and symlinks are unpacked; absolute paths,
//! `..`, hard links, device nodes, FIFOs and sparse files are refused, and nothing is written
//! through a symlink (the tar crate checks each parent's canonical path stays inside). Modes
//! lose setuid/setgid; ownership is not taken from the archive. The upload's id is known only
//! to the agent and its uploader (held in memory: a restarted agent forgets pending uploads
//! and removes them). A run that names it moves the tree to
//! `<state_dir>/workspaces/<bottle id>/` and chowns it (lchown, never following a symlink) to
//! the workload's *mapped* host ids, so the container's user owns its workspace; the bottle's
//! removal removes it. `<state_dir>` and `workspaces/` are 0711 so runc's init (the mapped
//! container root) can reach the bind-mount source; nothing there is listable.
//!
//! **Mounts.** The host path is opened with `openat2(RESOLVE_NO_SYMLINKS)`: a path with a
//! symlink anywhere in it is refused (give the real path), so nothing the caller swaps in
//! later can redirect it. The opened inode must belong to the caller (root may mount
//! anything). That very inode is then bind-mounted (through `/proc/self/fd`) onto
//! `<run_dir>/mounts/<bottle id>/<n>`, which is what runc binds into the container: the check
//! and the mount see the same file. Symlinks *inside* a mounted directory resolve inside the
//! container's root, never on the host. Files keep their host owners, which the container's
//! user namespace does not map: inside they belong to `nobody`, and the workload has what the
//! "other" permission bits give it (see docs/architecture.md).

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use bottle_api::{RunMount, WorkspaceUpload, MAX_WORKSPACE_BYTES};
use bottle_launcher::bundle::BindMount;
use nix::fcntl::{openat2, OFlag, OpenHow, ResolveFlag};
use nix::mount::{mount, umount2, MntFlags, MsFlags};

use crate::paths::{MOUNTS_DIR, UPLOADS_DIR, WORKSPACES_DIR};

/// Entries (files, directories, symlinks) one upload may hold.
pub const MAX_ENTRIES: u64 = 500_000;
/// Uploads one caller may have staged and not yet used.
pub const MAX_PENDING_PER_UID: usize = 4;
/// An upload no run has used within this time is dropped (with the next upload).
pub const PENDING_TTL: Duration = Duration::from_secs(3600);
/// `--mount`s per run.
pub const MAX_MOUNTS: usize = 16;
/// How long an upload's body may take to arrive.
pub const UPLOAD_TIMEOUT: Duration = Duration::from_secs(600);

#[derive(Debug, thiserror::Error)]
pub enum WorkspaceError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the workspace archive is larger than {MAX_WORKSPACE_BYTES} bytes; leave build output out (or use --mount)")]
    TooLarge,
    #[error("the workspace archive has more than {MAX_ENTRIES} entries")]
    TooManyEntries,
    #[error("the workspace archive is not a valid tar: {0}")]
    BadArchive(String),
    #[error("the workspace archive entry {path:?} is refused: {why}")]
    BadEntry { path: String, why: &'static str },
    #[error("you already have {MAX_PENDING_PER_UID} unused workspace uploads; use them or wait (unused ones are dropped after an hour)")]
    TooManyPending,
    #[error("no workspace upload {0:?} of yours (each upload is used once; upload again)")]
    NoSuchUpload(String),
    #[error("--mount {host}: {why}")]
    Mount { host: String, why: String },
    #[error("--mount {host}: you (uid {caller}) do not own it (owner uid {owner}); mount only paths you own")]
    NotOwner {
        host: String,
        caller: u32,
        owner: u32,
    },
    #[error("pinning --mount {host}: {source}")]
    Pin {
        host: String,
        #[source]
        source: nix::Error,
    },
}

impl WorkspaceError {
    /// Whether the caller asked for something refused (vs. the agent failing).
    pub fn is_user_error(&self) -> bool {
        !matches!(self, Self::Io { .. } | Self::Pin { .. })
    }

    pub fn is_forbidden(&self) -> bool {
        matches!(self, Self::NotOwner { .. })
    }
}

pub type Result<T> = std::result::Result<T, WorkspaceError>;

impl From<WorkspaceError> for bottle_api::ApiError {
    fn from(e: WorkspaceError) -> Self {
        use bottle_api::ErrorCode;
        let code = match &e {
            WorkspaceError::TooLarge => ErrorCode::BodyTooLarge,
            WorkspaceError::NotOwner { .. } => ErrorCode::Forbidden,
            WorkspaceError::NoSuchUpload(_) => ErrorCode::NotFound,
            e if e.is_user_error() => ErrorCode::BadRequest,
            _ => ErrorCode::Internal,
        };
        Self::new(code, e.to_string())
    }
}

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> WorkspaceError + '_ {
    move |source| WorkspaceError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Pending uploads: id → uploader's uid.
static PENDING: Mutex<BTreeMap<String, Pending>> = Mutex::new(BTreeMap::new());

/// One staged upload: whose, and since when.
#[derive(Debug, Clone, Copy)]
struct Pending {
    uid: u32,
    since: std::time::Instant,
}

fn pending() -> std::sync::MutexGuard<'static, BTreeMap<String, Pending>> {
    PENDING.lock().unwrap_or_else(|p| p.into_inner())
}

pub fn root(state_dir: &Path) -> PathBuf {
    state_dir.join(WORKSPACES_DIR)
}

fn uploads(state_dir: &Path) -> PathBuf {
    root(state_dir).join(UPLOADS_DIR)
}

/// A bottle's workspace directory (the bind-mount source of `~/workspace`).
pub fn bottle_workspace(state_dir: &Path, id: &str) -> PathBuf {
    root(state_dir).join(id)
}

fn traversable(p: &Path) -> Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o711)
        .create(p)
        .and_then(|()| fs::set_permissions(p, fs::Permissions::from_mode(0o711)))
        .map_err(io_at(p))
}

/// At agent start: `<state_dir>` traversable (0711) and stale uploads removed. The
/// directories themselves are made with the first upload.
pub fn prepare(state_dir: &Path) -> Result<()> {
    traversable(state_dir)?;
    let up = uploads(state_dir);
    match fs::remove_dir_all(&up) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_at(&up)(e)),
    }
}

/// `workspaces/` (0711) and `workspaces/uploads/` (0700).
fn ensure_dirs(state_dir: &Path) -> Result<()> {
    traversable(&root(state_dir))?;
    let up = uploads(state_dir);
    match fs::DirBuilder::new().mode(0o700).create(&up) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(io_at(&up)(e)),
    }
}

fn new_id() -> String {
    use rand::Rng;
    let mut rng = rand::thread_rng();
    (0..16)
        .map(|_| char::from(b"0123456789abcdef"[rng.gen_range(0..16)]))
        .collect()
}

/// Reserves a pending slot for `uid` and returns the new upload's id. Uploads older than
/// [`PENDING_TTL`] are dropped first (theirs and anyone's).
pub fn reserve(state_dir: &Path, uid: u32) -> Result<String> {
    let expired: Vec<String> = pending()
        .iter()
        .filter(|(_, p)| p.since.elapsed() > PENDING_TTL)
        .map(|(id, _)| id.clone())
        .collect();
    for id in expired {
        abandon(state_dir, &id);
    }
    let mut p = pending();
    if p.values().filter(|e| e.uid == uid).count() >= MAX_PENDING_PER_UID {
        return Err(WorkspaceError::TooManyPending);
    }
    let id = new_id();
    p.insert(
        id.clone(),
        Pending {
            uid,
            since: std::time::Instant::now(),
        },
    );
    Ok(id)
}

/// Drops a reservation (a failed upload) and whatever it left on disk.
pub fn abandon(state_dir: &Path, id: &str) {
    pending().remove(id);
    let dir = uploads(state_dir);
    let _ = fs::remove_dir_all(dir.join(id));
    let _ = fs::remove_file(dir.join(format!("{id}.tar")));
}

/// Where an upload's archive is spooled (created 0600, root-only directory).
pub fn spool_file(state_dir: &Path, id: &str) -> Result<(PathBuf, fs::File)> {
    ensure_dirs(state_dir)?;
    let path = uploads(state_dir).join(format!("{id}.tar"));
    let f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .map_err(io_at(&path))?;
    Ok((path, f))
}

/// Unpacks the spooled archive of upload `id` (then removes the archive).
pub fn unpack_upload(state_dir: &Path, id: &str) -> Result<WorkspaceUpload> {
    let dir = uploads(state_dir);
    let tar_path = dir.join(format!("{id}.tar"));
    let dest = dir.join(id);
    fs::DirBuilder::new()
        .mode(0o755)
        .create(&dest)
        .map_err(io_at(&dest))?;
    let result = unpack(&tar_path, &dest);
    let _ = fs::remove_file(&tar_path);
    let (entries, bytes) = result?;
    Ok(WorkspaceUpload {
        id: id.to_owned(),
        entries,
        bytes,
    })
}

/// Whether `uid` has a pending upload `id` (checked before a run creates its bottle).
pub fn check(uid: u32, id: &str) -> Result<()> {
    match pending().get(id) {
        Some(p) if p.uid == uid => Ok(()),
        _ => Err(WorkspaceError::NoSuchUpload(id.to_owned())),
    }
}

/// Takes upload `id` of `uid` for bottle `bottle_id`: moves it to the bottle's workspace and
/// gives it to the workload's mapped host ids. Returns the workspace directory.
pub fn claim(
    state_dir: &Path,
    uid: u32,
    id: &str,
    bottle_id: &str,
    host_uid: u32,
    host_gid: u32,
) -> Result<PathBuf> {
    {
        let mut p = pending();
        match p.get(id) {
            Some(e) if e.uid == uid => {
                p.remove(id);
            }
            _ => return Err(WorkspaceError::NoSuchUpload(id.to_owned())),
        }
    }
    let src = uploads(state_dir).join(id);
    let dest = bottle_workspace(state_dir, bottle_id);
    if let Err(e) = fs::rename(&src, &dest) {
        let _ = fs::remove_dir_all(&src);
        return Err(io_at(&dest)(e));
    }
    chown_tree(&dest, host_uid, host_gid)?;
    fs::set_permissions(&dest, fs::Permissions::from_mode(0o750)).map_err(io_at(&dest))?;
    Ok(dest)
}

/// The bottle ids that have a workspace directory.
pub fn bottle_ids(state_dir: &Path) -> Vec<String> {
    let Ok(entries) = fs::read_dir(root(state_dir)) else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n != UPLOADS_DIR)
        .collect()
}

/// Removes a bottle's workspace (nothing when it has none) through `state_dir`'s trash.
pub fn remove(state_dir: &Path, bottle_id: &str) -> std::result::Result<(), String> {
    let dir = bottle_workspace(state_dir, bottle_id);
    crate::trash::discard(state_dir, &dir).map_err(|e| format!("remove {}: {e}", dir.display()))
}

/// lchown of every entry under `top` (and `top`), never following a symlink.
fn chown_tree(top: &Path, uid: u32, gid: u32) -> Result<()> {
    let mut stack = vec![top.to_path_buf()];
    while let Some(p) = stack.pop() {
        std::os::unix::fs::lchown(&p, Some(uid), Some(gid)).map_err(io_at(&p))?;
        let meta = fs::symlink_metadata(&p).map_err(io_at(&p))?;
        if meta.is_dir() {
            for e in fs::read_dir(&p).map_err(io_at(&p))? {
                stack.push(e.map_err(io_at(&p))?.path());
            }
        }
    }
    Ok(())
}

/// Why an archive path is refused, if it is.
fn refuse_path(path: &Path) -> Option<&'static str> {
    let mut normal = 0;
    for c in path.components() {
        match c {
            Component::Normal(_) => normal += 1,
            Component::CurDir => {}
            Component::RootDir | Component::Prefix(_) => return Some("absolute path"),
            Component::ParentDir => return Some("'..' in the path"),
        }
    }
    (normal == 0).then_some("empty path")
}

/// Unpacks `tar_path` into `dest` (see the module documentation). Returns (entries, bytes).
pub fn unpack(tar_path: &Path, dest: &Path) -> Result<(u64, u64)> {
    let file = fs::File::open(tar_path).map_err(io_at(tar_path))?;
    let mut archive = tar::Archive::new(io::BufReader::new(file));
    archive.set_preserve_permissions(false);
    archive.set_preserve_ownerships(false);
    archive.set_unpack_xattrs(false);
    archive.set_preserve_mtime(true);
    archive.set_overwrite(true);
    let bad = |e: io::Error| WorkspaceError::BadArchive(e.to_string());
    let (mut entries, mut bytes) = (0u64, 0u64);
    for entry in archive.entries().map_err(bad)? {
        let mut entry = entry.map_err(bad)?;
        let path = entry.path().map_err(bad)?.into_owned();
        let shown = path.display().to_string();
        let refuse = |why| WorkspaceError::BadEntry {
            path: shown.clone(),
            why,
        };
        let kind = entry.header().entry_type();
        use tar::EntryType as T;
        match kind {
            T::Regular | T::Continuous | T::Directory | T::Symlink => {}
            // Extended headers are metadata for the next entry; the crate applies them.
            T::XGlobalHeader | T::XHeader | T::GNULongName | T::GNULongLink => continue,
            T::Link => return Err(refuse("hard links are not accepted")),
            T::Char | T::Block => return Err(refuse("device nodes are not accepted")),
            T::Fifo => return Err(refuse("FIFOs are not accepted")),
            T::GNUSparse => return Err(refuse("sparse files are not accepted")),
            _ => return Err(refuse("unknown entry type")),
        }
        match refuse_path(&path) {
            // `./` itself: the workspace directory exists already.
            Some("empty path") if kind == T::Directory => continue,
            Some(why) => return Err(refuse(why)),
            None => {}
        }
        entries += 1;
        if entries > MAX_ENTRIES {
            return Err(WorkspaceError::TooManyEntries);
        }
        bytes = bytes.saturating_add(entry.header().size().unwrap_or(0));
        // Strip setuid, setgid and sticky bits; keep the rest (executables stay executable).
        entry.set_mask(0o7000);
        match entry.unpack_in(dest) {
            Ok(true) => {}
            Ok(false) => return Err(refuse("it would be written outside the workspace")),
            Err(e) => {
                return Err(WorkspaceError::BadEntry {
                    path: shown,
                    why: if e.to_string().contains("outside of") {
                        "it would be written through a symlink outside the workspace"
                    } else {
                        "it cannot be unpacked"
                    },
                })
            }
        }
    }
    Ok((entries, bytes))
}

/// Checks and pins one `--mount` for bottle `bottle_id` (see the module documentation).
pub fn pin_mount(
    run_dir: &Path,
    bottle_id: &str,
    index: usize,
    caller: u32,
    m: &RunMount,
) -> Result<BindMount> {
    let host = m.host.clone();
    let refuse = |why: &str| WorkspaceError::Mount {
        host: host.clone(),
        why: why.to_owned(),
    };
    let how = OpenHow::new()
        .flags(OFlag::O_PATH | OFlag::O_CLOEXEC)
        .resolve(ResolveFlag::RESOLVE_NO_SYMLINKS | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    let fd = match openat2(libc::AT_FDCWD, Path::new(&m.host), how) {
        Ok(fd) => fd,
        Err(nix::Error::ELOOP) => {
            return Err(refuse(
                "the path contains a symlink; give the real path (see `realpath`)",
            ))
        }
        Err(nix::Error::ENOENT) => return Err(refuse("no such file or directory")),
        Err(e) => return Err(refuse(&format!("cannot open it: {e}"))),
    };
    // SAFETY: openat2 just returned this descriptor; OwnedFd takes sole ownership.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let st = nix::sys::stat::fstat(fd.as_raw_fd()).map_err(|e| refuse(&e.to_string()))?;
    if caller != 0 && st.st_uid != caller {
        return Err(WorkspaceError::NotOwner {
            host,
            caller,
            owner: st.st_uid,
        });
    }
    let fmt = st.st_mode & libc::S_IFMT;
    let is_dir = fmt == libc::S_IFDIR;
    if !is_dir && fmt != libc::S_IFREG {
        return Err(refuse("only directories and regular files can be mounted"));
    }
    let dir = run_dir.join(MOUNTS_DIR).join(bottle_id);
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o711)
        .create(&dir)
        .map_err(io_at(&dir))?;
    for p in [run_dir.join(MOUNTS_DIR), dir.clone()] {
        fs::set_permissions(&p, fs::Permissions::from_mode(0o711)).map_err(io_at(&p))?;
    }
    let target = dir.join(index.to_string());
    if is_dir {
        fs::DirBuilder::new()
            .mode(0o755)
            .create(&target)
            .map_err(io_at(&target))?;
    } else {
        fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(&target)
            .map_err(io_at(&target))?;
    }
    let source = PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()));
    mount(
        Some(&source),
        &target,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(|source| WorkspaceError::Pin {
        host: m.host.clone(),
        source,
    })?;
    Ok(BindMount {
        host: target,
        guest: PathBuf::from(&m.guest),
        readonly: m.readonly,
    })
}

/// Unmounts and removes a bottle's pinned mounts. Safe when there are none.
pub fn unpin_mounts(run_dir: &Path, bottle_id: &str) -> Vec<String> {
    let dir = run_dir.join(MOUNTS_DIR).join(bottle_id);
    let Ok(entries) = fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut failures = Vec::new();
    for e in entries.filter_map(|e| e.ok()) {
        let p = e.path();
        match umount2(&p, MntFlags::MNT_DETACH) {
            Ok(()) | Err(nix::Error::EINVAL) | Err(nix::Error::ENOENT) => {}
            Err(err) => {
                failures.push(format!("unmount {}: {err}", p.display()));
                continue;
            }
        }
        // Only ever an empty directory or an empty file once unmounted: never recurse into
        // what might still be a mount of the caller's files.
        let removed = if e.file_type().is_ok_and(|t| t.is_dir()) {
            fs::remove_dir(&p)
        } else {
            fs::remove_file(&p)
        };
        if let Err(err) = removed {
            failures.push(format!("remove {}: {err}", p.display()));
        }
    }
    if failures.is_empty() {
        if let Err(e) = fs::remove_dir(&dir) {
            failures.push(format!("remove {}: {e}", dir.display()));
        }
    }
    failures
}

/// Writes one chunk of an upload's body to its spool file, enforcing the size bound.
pub fn spool_write(f: &mut fs::File, written: &mut u64, chunk: &[u8]) -> Result<()> {
    *written = written.saturating_add(chunk.len() as u64);
    if *written > MAX_WORKSPACE_BYTES {
        return Err(WorkspaceError::TooLarge);
    }
    f.write_all(chunk).map_err(|source| WorkspaceError::Io {
        path: PathBuf::from("workspace upload"),
        source,
    })
}

/// The guest path a mount may use: absolute, plain, not the runtime's own mounts.
pub fn check_guest(guest: &str) -> std::result::Result<(), String> {
    let p = Path::new(guest);
    let plain = p.is_absolute()
        && p.components().count() > 1
        && p.components()
            .all(|c| matches!(c, Component::RootDir | Component::Normal(_)));
    if !plain {
        return Err(format!(
            "--mount guest path {guest:?} must be absolute without '.' or '..' (and not /)"
        ));
    }
    for reserved in ["/proc", "/sys", "/dev", "/etc/resolv.conf"] {
        if p.starts_with(reserved) {
            return Err(format!(
                "--mount guest path {guest:?} is under {reserved}, which the runtime owns"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use super::*;

    fn archive(build: impl FnOnce(&mut tar::Builder<Vec<u8>>)) -> tempfile::NamedTempFile {
        let mut b = tar::Builder::new(Vec::new());
        build(&mut b);
        let bytes = b.into_inner().unwrap();
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(&bytes).unwrap();
        f
    }

    fn header(kind: tar::EntryType, size: u64) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_size(size);
        h.set_mode(0o4755);
        h
    }

    #[test]
    fn plain_tree_unpacks_without_setuid() {
        let f = archive(|b| {
            b.append_data(&mut header(tar::EntryType::Directory, 0), "d", &[][..])
                .unwrap();
            b.append_data(&mut header(tar::EntryType::Regular, 2), "d/f", &b"hi"[..])
                .unwrap();
            let mut l = header(tar::EntryType::Symlink, 0);
            b.append_link(&mut l, "d/l", "/etc/passwd").unwrap();
        });
        let dest = tempfile::tempdir().unwrap();
        assert_eq!(unpack(f.path(), dest.path()).unwrap(), (3, 2));
        let meta = fs::metadata(dest.path().join("d/f")).unwrap();
        assert_eq!(meta.mode() & 0o7777, 0o755);
        assert_eq!(fs::read(dest.path().join("d/f")).unwrap(), b"hi");
        assert!(fs::symlink_metadata(dest.path().join("d/l"))
            .unwrap()
            .is_symlink());
    }

    #[test]
    fn escapes_and_special_files_are_refused() {
        type Build = Box<dyn Fn(&mut tar::Builder<Vec<u8>>)>;
        let cases: Vec<Build> = vec![
            // Written through a symlink that leads out.
            Box::new(|b| {
                let mut l = header(tar::EntryType::Symlink, 0);
                b.append_link(&mut l, "out", "/tmp").unwrap();
                b.append_data(
                    &mut header(tar::EntryType::Regular, 1),
                    "out/bottle-escape",
                    &b"x"[..],
                )
                .unwrap();
            }),
            Box::new(|b| {
                let mut h = header(tar::EntryType::Link, 0);
                b.append_link(&mut h, "hard", "/etc/shadow").unwrap();
            }),
            Box::new(|b| {
                b.append_data(&mut header(tar::EntryType::Char, 0), "null", &[][..])
                    .unwrap();
            }),
            Box::new(|b| {
                b.append_data(&mut header(tar::EntryType::Fifo, 0), "fifo", &[][..])
                    .unwrap();
            }),
        ];
        for build in cases {
            let f = archive(|b| build(b));
            let dest = tempfile::tempdir().unwrap();
            let e = unpack(f.path(), dest.path()).unwrap_err();
            assert!(matches!(e, WorkspaceError::BadEntry { .. }), "{e}");
        }
        assert!(!Path::new("/tmp/bottle-escape").exists());
        assert_eq!(refuse_path(Path::new("/etc/x")), Some("absolute path"));
        assert_eq!(
            refuse_path(Path::new("a/../../x")),
            Some("'..' in the path")
        );
        assert_eq!(refuse_path(Path::new("a/./b")), None);
    }

    #[test]
    fn guest_paths() {
        assert!(check_guest("/data").is_ok());
        assert!(check_guest("/").is_err());
        assert!(check_guest("data").is_err());
        assert!(check_guest("/a/../b").is_err());
        assert!(check_guest("/proc/x").is_err());
    }

    #[test]
    fn pending_uploads_are_per_uid_and_bounded() {
        let uid = 4_000_123;
        let dir = tempfile::tempdir().unwrap();
        let ids: Vec<String> = (0..MAX_PENDING_PER_UID)
            .map(|_| reserve(dir.path(), uid).unwrap())
            .collect();
        assert!(matches!(
            reserve(dir.path(), uid),
            Err(WorkspaceError::TooManyPending)
        ));
        assert!(check(uid, &ids[0]).is_ok());
        assert!(check(uid + 1, &ids[0]).is_err());
        for id in &ids {
            abandon(dir.path(), id);
        }
        assert!(check(uid, &ids[0]).is_err());
    }
}
