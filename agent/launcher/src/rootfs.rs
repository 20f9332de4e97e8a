//! A bottle's root filesystem: an overlay of the image cache (read-only lowers) with the
//! bottle's own `upper/` and `work/`, mounted on `merged/`, prepared for the bundle:
//!
//! - the mount points the bundle needs exist (runc cannot create them in a read-only rootfs
//!   from inside the user namespace);
//! - the home directory and workspace belong to the workload's *mapped* host ids;
//! - the bottle's CA is appended to the image's system trust bundle. All writes go through the
//!   overlay, so they land in `upper/`: the cache is never modified.
//!
//! The image is hostile input: every path inside the rootfs is resolved with `openat2`
//! `RESOLVE_IN_ROOT`, so a symlink in the image (`/etc -> /`) resolves inside `merged/`,
//! never on the host.
//!
//! Layout under the bottle's rootfs directory (mode 0711: runc's init, running as the mapped
//! container root, must be able to traverse it, and so must every ancestor):
//!
//! ```text
//! upper/   the bottle's changes (root-only writes)
//! work/    overlayfs's work directory
//! merged/  the container's root
//! ```

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use nix::fcntl::{openat2, renameat, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{mkdirat, Mode};
use nix::unistd::{fchown, unlinkat, Gid, Uid, UnlinkatFlags};

use crate::bundle::{CA_BUNDLE_GUEST, DEFAULT_USER};

/// The variables that point TLS clients (OpenSSL, Python requests, Node, curl, git) at the
/// bundle that includes the bottle's CA.
pub const CA_ENV_VARS: &[&str] = &[
    "SSL_CERT_FILE",
    "REQUESTS_CA_BUNDLE",
    "NODE_EXTRA_CA_CERTS",
    "CURL_CA_BUNDLE",
    "GIT_SSL_CAINFO",
];

/// The largest trust bundle / passwd file read from an image.
const MAX_READ: u64 = 16 << 20;

#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path} (inside the rootfs): {source}")]
    InRoot {
        path: PathBuf,
        #[source]
        source: nix::Error,
    },
    #[error("{0:?} is not a plain absolute path inside the container")]
    BadGuestPath(PathBuf),
    #[error("{path} is not traversable by other users (mode {mode:o}); runc's init runs as the mapped container root and must reach the rootfs")]
    NotTraversable { path: PathBuf, mode: u32 },
    #[error("{path} in the image is larger than {MAX_READ} bytes")]
    TooLarge { path: PathBuf },
    #[error("the image user {0:?} is not in the image's /etc/passwd or /etc/group")]
    UnknownUser(String),
    #[error(transparent)]
    Overlay(#[from] bottle_image::OverlayError),
    #[error("tearing down {path}: {}", problems.join("; "))]
    Teardown {
        path: PathBuf,
        problems: Vec<String>,
    },
}

pub type Result<T, E = RootfsError> = std::result::Result<T, E>;

/// The workload user, resolved against the image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageUser {
    pub uid: u32,
    pub gid: u32,
    pub name: Option<String>,
    /// From `/etc/passwd` when it has one other than `/`, else `/home/<name>` (or
    /// `/home/user`).
    pub home: PathBuf,
}

/// The container's trust bundle, computed before it is written ([`Rootfs::ca_bundle`]).
#[derive(Debug, Clone)]
pub struct CaBundle {
    /// The file's contents, as the container will read them.
    pub bytes: Vec<u8>,
    /// Whether the image's own bundle lacked the CA (and must be rewritten).
    changed: bool,
}

/// A mounted bottle rootfs.
#[derive(Debug)]
pub struct Rootfs {
    dir: PathBuf,
    merged: PathBuf,
}

impl Rootfs {
    /// Creates `dir/{upper,work,merged}` and mounts the overlay with `lower` (top-most first,
    /// as [`bottle_image::ImageRecord::lower_dirs`] gives them). Refuses when runc's init
    /// could not traverse to `dir`.
    pub fn mount(lower: &[PathBuf], dir: &Path) -> Result<Self> {
        let mk = |p: &Path, mode: u32| {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(mode)
                .create(p)
                .and_then(|()| fs::set_permissions(p, fs::Permissions::from_mode(mode)))
                .map_err(io_at(p))
        };
        mk(dir, 0o711)?;
        check_traversable(dir)?;
        let merged = dir.join("merged");
        mk(&dir.join("upper"), 0o755)?;
        mk(&dir.join("work"), 0o700)?;
        mk(&merged, 0o755)?;
        // Volatile: the upper goes with the bottle, so syncing it (at every unmount) is waste.
        bottle_image::mount_scratch_overlay(lower, &dir.join("upper"), &dir.join("work"), &merged)?;
        Ok(Self {
            dir: dir.to_path_buf(),
            merged,
        })
    }

    /// The container's root (`merged/`): the bundle's `root.path`.
    pub fn merged(&self) -> &Path {
        &self.merged
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Makes sure each `(guest path, is_dir)` exists (see [`crate::bundle::mount_points`]):
    /// directories 0755, files empty 0644, both root-owned.
    pub fn prepare_mount_points(&self, points: &[(PathBuf, bool)]) -> Result<()> {
        let root = self.open_root()?;
        for (guest, is_dir) in points {
            let rel = relative(guest)?;
            if *is_dir {
                mkdir_all(&root, &rel)?;
            } else {
                create_file(&root, &rel)?;
            }
        }
        // runc 1.1 gives a tmpfs the mode of the directory it covers, whatever `mode=` says;
        // /tmp must be world-writable and sticky however the image made it.
        let tmp = relative(Path::new("/tmp"))?;
        if points.iter().any(|(guest, _)| guest == Path::new("/tmp")) {
            let fd = open_in(
                &root,
                &tmp,
                OFlag::O_RDONLY | OFlag::O_DIRECTORY,
                Mode::empty(),
            )?;
            nix::sys::stat::fchmod(fd.as_raw_fd(), Mode::from_bits_truncate(0o1777))
                .map_err(in_root(&tmp))?;
        }
        Ok(())
    }

    /// Creates (if needed) and chowns directories inside the rootfs to host ids, e.g. the
    /// home and workspace mount points to the workload's mapped uid/gid.
    pub fn chown_dirs(&self, guests: &[&Path], host_uid: u32, host_gid: u32) -> Result<()> {
        let root = self.open_root()?;
        for guest in guests {
            let rel = relative(guest)?;
            mkdir_all(&root, &rel)?;
            let fd = open_in(
                &root,
                &rel,
                OFlag::O_RDONLY | OFlag::O_DIRECTORY,
                Mode::empty(),
            )?;
            fchown(
                fd.as_raw_fd(),
                Some(Uid::from_raw(host_uid)),
                Some(Gid::from_raw(host_gid)),
            )
            .map_err(in_root(&rel))?;
        }
        Ok(())
    }

    /// Appends `ca_pem` to the image's trust bundle ([`CA_BUNDLE_GUEST`]; created with just
    /// the CA when the image has none) and returns the `NAME=path` entries of
    /// [`CA_ENV_VARS`]. Idempotent: a bundle that already ends with the CA is left alone.
    pub fn install_ca(&self, ca_pem: &[u8]) -> Result<Vec<String>> {
        let bundle = self.ca_bundle(ca_pem)?;
        self.install_ca_bundle(&bundle)
    }

    /// The trust bundle [`Self::install_ca_bundle`] leaves in the rootfs: the image's
    /// (resolved inside the rootfs) with `ca_pem` appended unless it already ends with it.
    /// Known before it is written, so the trust check can start at once.
    pub fn ca_bundle(&self, ca_pem: &[u8]) -> Result<CaBundle> {
        let root = self.open_root()?;
        let rel = relative(Path::new(CA_BUNDLE_GUEST))?;
        let mut bytes = read_in(&root, &rel)?.unwrap_or_default();
        let ca = trim_end(ca_pem);
        let changed = !trim_end(&bytes).ends_with(ca);
        if changed {
            if !bytes.is_empty() && !bytes.ends_with(b"\n") {
                bytes.push(b'\n');
            }
            bytes.extend_from_slice(ca);
            bytes.push(b'\n');
        }
        Ok(CaBundle { bytes, changed })
    }

    /// Writes a bundle from [`Self::ca_bundle`] (a regular file, replacing a symlink there)
    /// and returns the `NAME=path` entries of [`CA_ENV_VARS`].
    pub fn install_ca_bundle(&self, bundle: &CaBundle) -> Result<Vec<String>> {
        if bundle.changed {
            let root = self.open_root()?;
            let rel = relative(Path::new(CA_BUNDLE_GUEST))?;
            let parent = rel.parent().unwrap_or(Path::new(""));
            mkdir_all(&root, parent)?;
            let dir = open_in(
                &root,
                parent,
                OFlag::O_RDONLY | OFlag::O_DIRECTORY,
                Mode::empty(),
            )?;
            let name = rel.file_name().unwrap_or_default();
            let tmp = ".bottle-ca-certificates.tmp";
            let _ = unlinkat(Some(dir.as_raw_fd()), tmp, UnlinkatFlags::NoRemoveDir);
            let fd = nix::fcntl::openat(
                Some(dir.as_raw_fd()),
                tmp,
                OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_CLOEXEC,
                Mode::from_bits_truncate(0o644),
            )
            .map_err(in_root(&rel))?;
            // SAFETY: openat just returned this descriptor; File takes sole ownership.
            let mut f = unsafe { File::from_raw_fd(fd) };
            // No fsync: the upper is a volatile overlay's, gone with the bottle.
            f.write_all(&bundle.bytes).map_err(io_at(&rel))?;
            drop(f);
            // Replaces a symlink there too: the result is a regular file inside the rootfs.
            renameat(Some(dir.as_raw_fd()), tmp, Some(dir.as_raw_fd()), name)
                .map_err(in_root(&rel))?;
        }
        Ok(CA_ENV_VARS
            .iter()
            .map(|v| format!("{v}={CA_BUNDLE_GUEST}"))
            .collect())
    }

    /// Resolves the image's `User` (`name`, `uid`, `name:group`, `uid:gid`…) against its
    /// `/etc/passwd` and `/etc/group`; `None` gives [`DEFAULT_USER`].
    pub fn resolve_user(&self, user: Option<&str>) -> Result<ImageUser> {
        let root = self.open_root()?;
        let passwd =
            String::from_utf8_lossy(&read_in(&root, Path::new("etc/passwd"))?.unwrap_or_default())
                .into_owned();
        let group =
            String::from_utf8_lossy(&read_in(&root, Path::new("etc/group"))?.unwrap_or_default())
                .into_owned();
        resolve_user(user, &passwd, &group)
    }
}

/// Unmounts `dir/merged` (if mounted) and removes `dir`. Tolerates half-made states: a
/// missing directory, an overlay that was never mounted. Every step is tried; the problems
/// are reported together. (The agent unmounts with [`unmount`] and moves the directory to
/// its trash instead.)
pub fn teardown(dir: &Path) -> Result<()> {
    unmount(dir)?;
    match fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(RootfsError::Teardown {
            path: dir.to_path_buf(),
            problems: vec![format!("removing {}: {e}", dir.display())],
        }),
    }
}

/// Unmounts `dir/merged` if it is mounted; an error means it still is, and `dir` must stay.
pub fn unmount(dir: &Path) -> Result<()> {
    let merged = dir.join("merged");
    if !merged.exists() {
        return Ok(());
    }
    match bottle_image::unmount(&merged) {
        Ok(())
        | Err(bottle_image::OverlayError::Unmount {
            source: nix::Error::EINVAL | nix::Error::ENOENT,
            ..
        }) => Ok(()),
        Err(e) => Err(RootfsError::Teardown {
            path: dir.to_path_buf(),
            problems: vec![
                e.to_string(),
                format!("{} kept: the overlay is still mounted", dir.display()),
            ],
        }),
    }
}

/// Creates (if missing) a host directory the workload will own through its mapping (home,
/// workspace), mode 0750, owned by the mapped host ids.
pub fn prepare_host_dir(path: &Path, host_uid: u32, host_gid: u32) -> Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o750)
        .create(path)
        .map_err(io_at(path))?;
    std::os::unix::fs::chown(path, Some(host_uid), Some(host_gid)).map_err(io_at(path))
}

impl Rootfs {
    fn open_root(&self) -> Result<OwnedFd> {
        let fd = nix::fcntl::open(
            &self.merged,
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|source| RootfsError::Io {
            path: self.merged.clone(),
            source: source.into(),
        })?;
        // SAFETY: open just returned this descriptor; OwnedFd takes sole ownership.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }
}

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> RootfsError + '_ {
    move |source| RootfsError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn in_root(path: &Path) -> impl FnOnce(nix::Error) -> RootfsError + '_ {
    move |source| RootfsError::InRoot {
        path: path.to_path_buf(),
        source,
    }
}

/// `/a/b` → `a/b`; anything but plain components is refused.
fn relative(guest: &Path) -> Result<PathBuf> {
    let mut rel = PathBuf::new();
    for (i, c) in guest.components().enumerate() {
        match c {
            Component::RootDir if i == 0 => {}
            Component::Normal(n) => rel.push(n),
            _ => return Err(RootfsError::BadGuestPath(guest.to_path_buf())),
        }
    }
    if !guest.is_absolute() || rel.as_os_str().is_empty() {
        return Err(RootfsError::BadGuestPath(guest.to_path_buf()));
    }
    Ok(rel)
}

/// Opens `rel` with every symlink resolved inside `root`.
fn open_in(root: &OwnedFd, rel: &Path, flags: OFlag, mode: Mode) -> Result<OwnedFd> {
    let how = OpenHow::new()
        .flags(flags | OFlag::O_CLOEXEC)
        .mode(mode)
        .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    let fd = openat2(root.as_raw_fd(), rel, how).map_err(in_root(rel))?;
    // SAFETY: openat2 just returned this descriptor; OwnedFd takes sole ownership.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `mkdir -p` inside `root` (0755, root-owned).
fn mkdir_all(root: &OwnedFd, rel: &Path) -> Result<()> {
    let mut prefix = PathBuf::new();
    for c in rel.components() {
        let parent = prefix.clone();
        prefix.push(c);
        let dir_flags = OFlag::O_PATH | OFlag::O_DIRECTORY;
        match open_in(root, &prefix, dir_flags, Mode::empty()) {
            Ok(_) => continue,
            Err(RootfsError::InRoot {
                source: nix::Error::ENOENT,
                ..
            }) => {}
            Err(e) => return Err(e),
        }
        let pfd = if parent.as_os_str().is_empty() {
            open_in(root, Path::new("."), dir_flags, Mode::empty())?
        } else {
            open_in(root, &parent, dir_flags, Mode::empty())?
        };
        match mkdirat(
            Some(pfd.as_raw_fd()),
            c.as_os_str(),
            Mode::from_bits_truncate(0o755),
        ) {
            Ok(()) | Err(nix::Error::EEXIST) => {}
            Err(source) => {
                return Err(RootfsError::InRoot {
                    path: prefix,
                    source,
                })
            }
        }
        // A dangling symlink in the image reports ENOENT above and EEXIST here: make sure
        // what is there now is a directory (inside the root).
        open_in(root, &prefix, dir_flags, Mode::empty())?;
    }
    Ok(())
}

/// Makes `rel` an existing file inside `root` (a mount point). A symlink there (often
/// dangling, e.g. `/etc/resolv.conf -> ../run/...`) is replaced by an empty file: it is about
/// to be mounted over anyway.
fn create_file(root: &OwnedFd, rel: &Path) -> Result<()> {
    let parent = rel.parent().unwrap_or(Path::new(""));
    let name = rel.file_name().unwrap_or_default();
    mkdir_all(root, parent)?;
    let dir = open_in(
        root,
        if parent.as_os_str().is_empty() {
            Path::new(".")
        } else {
            parent
        },
        OFlag::O_RDONLY | OFlag::O_DIRECTORY,
        Mode::empty(),
    )?;
    let create = || {
        nix::fcntl::openat(
            Some(dir.as_raw_fd()),
            name,
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(0o644),
        )
    };
    let fd = match create() {
        Err(nix::Error::ELOOP) => {
            unlinkat(Some(dir.as_raw_fd()), name, UnlinkatFlags::NoRemoveDir)
                .map_err(in_root(rel))?;
            create()
        }
        r => r,
    }
    .map_err(in_root(rel))?;
    // SAFETY: openat just returned this descriptor; OwnedFd takes sole ownership and closes it.
    drop(unsafe { OwnedFd::from_raw_fd(fd) });
    Ok(())
}

/// Reads a file inside `root`; `None` when it does not exist.
fn read_in(root: &OwnedFd, rel: &Path) -> Result<Option<Vec<u8>>> {
    let fd = match open_in(root, rel, OFlag::O_RDONLY, Mode::empty()) {
        Ok(fd) => fd,
        Err(RootfsError::InRoot {
            source: nix::Error::ENOENT,
            ..
        }) => return Ok(None),
        Err(e) => return Err(e),
    };
    let f = File::from(fd);
    let mut buf = Vec::new();
    f.take(MAX_READ + 1)
        .read_to_end(&mut buf)
        .map_err(io_at(rel))?;
    if buf.len() as u64 > MAX_READ {
        return Err(RootfsError::TooLarge {
            path: rel.to_path_buf(),
        });
    }
    Ok(Some(buf))
}

fn trim_end(b: &[u8]) -> &[u8] {
    let end = b
        .iter()
        .rposition(|c| !c.is_ascii_whitespace())
        .map_or(0, |i| i + 1);
    &b[..end]
}

/// Every ancestor of `dir` (and `dir`) must be searchable by "other".
fn check_traversable(dir: &Path) -> Result<()> {
    let abs = fs::canonicalize(dir).map_err(io_at(dir))?;
    for p in abs.ancestors() {
        let m = fs::metadata(p).map_err(io_at(p))?;
        if m.mode() & 0o001 == 0 {
            return Err(RootfsError::NotTraversable {
                path: p.to_path_buf(),
                mode: m.mode() & 0o7777,
            });
        }
    }
    Ok(())
}

fn resolve_user(user: Option<&str>, passwd: &str, group: &str) -> Result<ImageUser> {
    // name:x:uid:gid:gecos:home:shell
    let entries: Vec<Vec<&str>> = passwd
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .filter(|f| f.len() >= 7)
        .collect();
    let by_name = |n: &str| entries.iter().find(|f| f[0] == n);
    let by_uid = |u: u32| entries.iter().find(|f| f[2].parse() == Ok(u));
    let group_id = |g: &str| -> Option<u32> {
        g.parse().ok().or_else(|| {
            group
                .lines()
                .map(|l| l.split(':').collect::<Vec<_>>())
                .find(|f| f.len() >= 3 && f[0] == g)
                .and_then(|f| f[2].parse().ok())
        })
    };
    let unknown = || RootfsError::UnknownUser(user.unwrap_or_default().to_owned());
    let (u, g) = match user.map(str::trim).filter(|u| !u.is_empty()) {
        None => (DEFAULT_USER.0.to_string(), Some(DEFAULT_USER.1.to_string())),
        Some(s) => match s.split_once(':') {
            Some((u, g)) => (u.to_owned(), Some(g.to_owned())),
            None => (s.to_owned(), None),
        },
    };
    let entry = match u.parse::<u32>() {
        Ok(uid) => by_uid(uid),
        Err(_) => by_name(&u),
    };
    let uid = match u.parse::<u32>() {
        Ok(uid) => uid,
        Err(_) => entry.and_then(|f| f[2].parse().ok()).ok_or_else(unknown)?,
    };
    let gid = match g {
        Some(g) => group_id(&g).ok_or_else(unknown)?,
        None => entry.and_then(|f| f[3].parse().ok()).unwrap_or(uid),
    };
    let name = entry.map(|f| f[0].to_owned());
    let home = entry
        .map(|f| f[5])
        .filter(|h| h.starts_with('/') && *h != "/")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            if uid == 0 {
                PathBuf::from("/root")
            } else {
                Path::new("/home").join(name.as_deref().unwrap_or("user"))
            }
        });
    Ok(ImageUser {
        uid,
        gid,
        name,
        home,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\nbottle:x:1000:1000::/home/bottle:/bin/sh\nnohome:x:1001:1002::/:/bin/sh\n";
    const GROUP: &str = "root:x:0:\nbottle:x:1000:\nstaff:x:50:\n";

    #[test]
    fn users_resolve_like_docker() {
        let r = |u| resolve_user(u, PASSWD, GROUP).unwrap();
        let u = r(None);
        assert_eq!(
            (u.uid, u.gid, u.home.as_path()),
            (1000, 1000, Path::new("/home/bottle"))
        );
        let u = r(Some("bottle"));
        assert_eq!((u.uid, u.gid), (1000, 1000));
        let u = r(Some("bottle:staff"));
        assert_eq!((u.uid, u.gid), (1000, 50));
        let u = r(Some("1001"));
        assert_eq!(
            (u.uid, u.gid, u.home.as_path()),
            (1001, 1002, Path::new("/home/nohome"))
        );
        let u = r(Some("2000:3000"));
        assert_eq!(
            (u.uid, u.gid, u.home.as_path()),
            (2000, 3000, Path::new("/home/user"))
        );
        let u = r(Some("root"));
        assert_eq!((u.uid, u.home.as_path()), (0, Path::new("/root")));
        assert!(resolve_user(Some("ghost"), PASSWD, GROUP).is_err());
        assert!(resolve_user(Some("bottle:ghosts"), PASSWD, GROUP).is_err());
    }

    #[test]
    fn guest_paths_must_be_plain() {
        assert_eq!(
            relative(Path::new("/etc/resolv.conf")).unwrap(),
            Path::new("etc/resolv.conf")
        );
        for bad in ["etc", "/", "/a/../b", "/a/./b"] {
            // "/a/./b" normalises to "/a/b" in Path::components; only the others must fail.
            if bad == "/a/./b" {
                continue;
            }
            assert!(relative(Path::new(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn teardown_tolerates_missing_and_half_made() {
        let dir = tempfile::tempdir().unwrap();
        teardown(&dir.path().join("never-made")).unwrap();
        let half = dir.path().join("half");
        fs::create_dir_all(half.join("merged")).unwrap();
        fs::create_dir_all(half.join("upper/etc")).unwrap();
        teardown(&half).unwrap();
        assert!(!half.exists());
    }

    /// The in-root helpers on a plain directory (no overlay needed): a hostile absolute
    /// symlink stays inside the root.
    #[test]
    fn in_root_writes_stay_inside() {
        let dir = tempfile::tempdir().unwrap();
        let merged = dir.path().join("merged");
        let outside = dir.path().join("outside");
        fs::create_dir_all(merged.join("etc")).unwrap();
        fs::create_dir_all(&outside).unwrap();
        fs::create_dir_all(merged.join("tmp")).unwrap();
        fs::create_dir_all(merged.join(outside.strip_prefix("/").unwrap())).unwrap();
        // /etc/ssl -> the host's "outside" directory, by absolute path.
        std::os::unix::fs::symlink(&outside, merged.join("etc/ssl")).unwrap();
        std::os::unix::fs::symlink("/../../../../tmp", merged.join("home")).unwrap();
        let r = Rootfs {
            dir: dir.path().to_path_buf(),
            merged: merged.clone(),
        };
        let env = r
            .install_ca(b"-----BEGIN CERTIFICATE-----\nX\n-----END CERTIFICATE-----\n")
            .unwrap();
        assert_eq!(env.len(), CA_ENV_VARS.len());
        assert!(env.contains(&format!("SSL_CERT_FILE={CA_BUNDLE_GUEST}")));
        assert_eq!(
            fs::read_dir(&outside).unwrap().count(),
            0,
            "wrote outside the root"
        );
        // The symlink target was re-rooted: <merged><outside>/certs/...
        let inside = merged
            .join(outside.strip_prefix("/").unwrap())
            .join("certs/ca-certificates.crt");
        let got = fs::read_to_string(&inside).unwrap();
        assert!(got.starts_with("-----BEGIN CERTIFICATE-----"));
        // Idempotent.
        r.install_ca(b"-----BEGIN CERTIFICATE-----\nX\n-----END CERTIFICATE-----")
            .unwrap();
        assert_eq!(fs::read_to_string(&inside).unwrap(), got);

        r.prepare_mount_points(&[
            (PathBuf::from("/home/bottle/workspace"), true),
            (PathBuf::from("/etc/resolv.conf"), false),
        ])
        .unwrap();
        assert!(merged.join("tmp/bottle/workspace").is_dir());
        assert!(merged.join("etc/resolv.conf").is_file());
        // A dangling symlink at a file mount point becomes an empty file.
        std::os::unix::fs::symlink("../run/nowhere/resolv.conf", merged.join("etc/hosts")).unwrap();
        r.prepare_mount_points(&[(PathBuf::from("/etc/hosts"), false)])
            .unwrap();
        assert!(fs::symlink_metadata(merged.join("etc/hosts"))
            .unwrap()
            .is_file());
    }

    #[test]
    fn ca_is_appended_to_an_existing_bundle() {
        let dir = tempfile::tempdir().unwrap();
        let merged = dir.path().join("merged");
        fs::create_dir_all(merged.join("etc/ssl/certs")).unwrap();
        let path = merged.join("etc/ssl/certs/ca-certificates.crt");
        fs::write(&path, "SYSTEM-ROOTS").unwrap();
        let r = Rootfs {
            dir: dir.path().to_path_buf(),
            merged,
        };
        r.install_ca(b"BOTTLE-CA\n").unwrap();
        assert_eq!(
            fs::read_to_string(&path).unwrap(),
            "SYSTEM-ROOTS\nBOTTLE-CA\n"
        );
    }
}
