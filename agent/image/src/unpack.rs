//! Applying one layer's tar stream to an empty directory, safely, in overlayfs's format.
//!
//! The directory becomes an overlayfs lower layer, so two things matter: nothing may land
//! outside it, and deletions must be in the form overlayfs understands.
//!
//! - Every entry path is relative with normal components only (absolute paths and `..` are
//!   refused, naming the entry). Before anything is created, each parent directory is looked
//!   at with `lstat`: a symlink there (necessarily made by an earlier entry of this layer, the
//!   directory starts empty and is private to this import) refuses the entry, so a layer
//!   cannot plant `etc -> /etc` and then write `etc/passwd` through it. Files are created
//!   with `O_EXCL | O_NOFOLLOW` after whatever was at their name is removed. Hard links must
//!   name an earlier entry of the same layer.
//! - Whiteouts are converted: `.wh.<name>` becomes a 0/0 character device `<name>` and
//!   `.wh..wh..opq` the xattr `trusted.overlay.opaque=y` on its directory. Both need root
//!   (CAP_MKNOD, CAP_SYS_ADMIN for `trusted.*`); unprivileged, the `.wh.*` files are kept as
//!   empty files (the OCI form) and the layer is recorded as not overlay-ready. The agent is
//!   root, so its cache is always in overlay form.
//! - Owners (numeric uid/gid from the tar), modes including setuid, mtimes and the
//!   `security.capability` xattr are applied when privileged; unprivileged, only modes and
//!   mtimes. Other xattrs are dropped (a layer must never set `trusted.overlay.*` itself).
//! - Device nodes are skipped, always: runc gives the container its own `/dev`, and a node in
//!   the cache would only be a way to reach a host device should the device cgroup be loose.
//! - Directory modes and mtimes are applied at the end, deepest first, so a read-only
//!   directory does not stop its own entries from being written.
//!
//! The whole stream, up to its last byte, is hashed and checked against the layer's diff_id.

use std::ffi::OsStr;
use std::fs::{self, FileTimes, OpenOptions, Permissions};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{fchown, lchown, symlink, DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use nix::sys::stat::{makedev, mknod, utimensat, Mode, SFlag, UtimensatFlags};
use nix::sys::time::TimeSpec;
use tar::EntryType;

use crate::digest::{DigestError, HashingReader, Sha256};
use crate::fsutil::set_xattr;
use crate::limits::{LimitError, Limits, Meter};
use crate::paths::{self, PathProblem};

/// The xattr overlayfs reads to make a directory hide the layers below it.
pub(crate) const OPAQUE_XATTR: &str = "trusted.overlay.opaque";
const WHITEOUT_PREFIX: &[u8] = b".wh.";
const OPAQUE_WHITEOUT: &[u8] = b".wh..wh..opq";
const CAPABILITY_XATTR: &str = "security.capability";
const PAX_CAPABILITY: &[u8] = b"SCHILY.xattr.security.capability";

#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    #[error("layer entry {entry:?}: {problem}")]
    BadPath {
        entry: String,
        #[source]
        problem: PathProblem,
    },
    #[error("layer entry {entry:?} would be written through the symlink {symlink:?}")]
    ThroughSymlink { entry: String, symlink: PathBuf },
    #[error("layer entry {entry:?}: {parent:?} is not a directory")]
    NotADirectory { entry: String, parent: PathBuf },
    #[error("layer entry {entry:?}: hard link target {target:?}: {problem}")]
    LinkOutside {
        entry: String,
        target: String,
        #[source]
        problem: PathProblem,
    },
    #[error(
        "layer entry {entry:?}: hard link target {target:?} is not an earlier file of this layer"
    )]
    LinkMissing { entry: String, target: String },
    #[error("layer entry {entry:?}: whiteout of {hidden:?} refused")]
    BadWhiteout { entry: String, hidden: String },
    #[error("layer entry {entry:?}: bad {field} in its tar header")]
    BadHeader { entry: String, field: &'static str },
    #[error("layer entry {entry:?}: {source}")]
    Write {
        entry: String,
        #[source]
        source: io::Error,
    },
    #[error("reading the layer: {0}")]
    Read(#[source] io::Error),
    #[error(transparent)]
    Limit(#[from] LimitError),
    #[error(transparent)]
    Digest(#[from] DigestError),
}

type Result<T, E = UnpackError> = std::result::Result<T, E>;

/// How to unpack.
pub(crate) struct Options<'a> {
    /// Apply owners and create overlayfs whiteouts (needs root).
    pub privileged: bool,
    pub limits: &'a Limits,
}

/// What one layer held.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct Summary {
    pub entries: u64,
    /// Length of the uncompressed stream.
    pub bytes: u64,
    pub whiteouts: u64,
    pub devices_skipped: u64,
}

/// Unpacks the uncompressed tar `stream` into `dest` (an existing empty directory) and checks
/// the stream against `diff_id`. On error `dest` holds a partial layer: the caller removes it.
pub(crate) fn unpack<R: Read>(
    stream: R,
    dest: &Path,
    diff_id: &Sha256,
    opts: &Options<'_>,
    meter: &Meter,
) -> Result<Summary> {
    let mut archive = tar::Archive::new(HashingReader::new(stream, Some(meter)));
    let mut unpacker = Unpacker {
        dest,
        opts,
        meter,
        dirs: Vec::new(),
        summary: Summary::default(),
        buf: vec![0; 64 << 10],
    };
    let applied = unpacker.entries(&mut archive);
    let mut reader = archive.into_inner();
    applied?;
    // The diff_id covers the whole stream, the zero blocks after the last entry included.
    io::copy(&mut reader, &mut io::sink()).map_err(|e| read_error(meter, e))?;
    let (actual, bytes) = reader.finish();
    actual.check(
        diff_id,
        "layer content (uncompressed) against the config's diff_id",
    )?;
    unpacker.finish_dirs()?;
    unpacker.summary.bytes = bytes;
    Ok(unpacker.summary)
}

fn read_error(meter: &Meter, e: io::Error) -> UnpackError {
    match meter.tripped() {
        Some(limit) => UnpackError::Limit(limit),
        None => UnpackError::Read(e),
    }
}

/// Owner, mode and time of one entry, PAX overrides applied.
struct Meta {
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: u64,
    capability: Option<Vec<u8>>,
}

struct DeferredDir {
    /// Relative to the layer root (empty for the root itself).
    rel: PathBuf,
    entry: String,
    mode: u32,
    mtime: u64,
}

struct Unpacker<'a> {
    dest: &'a Path,
    opts: &'a Options<'a>,
    meter: &'a Meter,
    dirs: Vec<DeferredDir>,
    summary: Summary,
    buf: Vec<u8>,
}

impl Unpacker<'_> {
    fn entries<R: Read>(&mut self, archive: &mut tar::Archive<R>) -> Result<()> {
        let mut entries = archive.entries().map_err(|e| read_error(self.meter, e))?;
        loop {
            // Everything tar-rs reads before handing out the next entry (long names, PAX
            // records) it keeps in memory: bounded separately.
            self.meter.begin_header();
            let next = entries.next();
            self.meter.end_header();
            let Some(entry) = next else {
                return Ok(());
            };
            let mut entry = entry.map_err(|e| read_error(self.meter, e))?;
            self.summary.entries += 1;
            if self.summary.entries > self.opts.limits.max_entries {
                return Err(LimitError::TooManyEntries {
                    what: "a layer".into(),
                    limit: self.opts.limits.max_entries,
                }
                .into());
            }
            self.apply(&mut entry)?;
            // Whatever the entry carried that was not used, so it counts against the limits.
            io::copy(&mut entry, &mut io::sink()).map_err(|e| read_error(self.meter, e))?;
        }
    }

    fn apply<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>) -> Result<()> {
        let raw = entry.path_bytes().into_owned();
        let name = paths::lossy(&raw);
        let kind = entry.header().entry_type();
        if matches!(kind, EntryType::XGlobalHeader | EntryType::XHeader) {
            return Ok(());
        }
        let rel = paths::relative(&raw, self.opts.limits.max_path_bytes).map_err(|problem| {
            UnpackError::BadPath {
                entry: name.clone(),
                problem,
            }
        })?;
        let meta = read_meta(entry, &name)?;
        let Some(file_name) = rel.file_name().map(|n| n.as_bytes().to_vec()) else {
            // `./`: the layer's root directory itself.
            if kind.is_dir() {
                self.dirs.push(DeferredDir {
                    rel: PathBuf::new(),
                    entry: name,
                    mode: meta.mode,
                    mtime: meta.mtime,
                });
                return Ok(());
            }
            return Err(UnpackError::BadPath {
                entry: name,
                problem: PathProblem::Empty,
            });
        };
        if file_name.starts_with(WHITEOUT_PREFIX) {
            return self.whiteout(&rel, &file_name, &name);
        }
        self.parents(&rel, &name, true)?;
        let target = self.dest.join(&rel);
        match kind {
            EntryType::Directory => self.directory(&rel, &meta, name),
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                self.file(entry, &target, &meta, &name)
            }
            EntryType::Symlink => {
                let link = entry
                    .link_name_bytes()
                    .ok_or_else(|| UnpackError::BadHeader {
                        entry: name.clone(),
                        field: "link target",
                    })?
                    .into_owned();
                self.symlink(&link, &target, &meta, &name)
            }
            EntryType::Link => {
                let link = entry
                    .link_name_bytes()
                    .ok_or_else(|| UnpackError::BadHeader {
                        entry: name.clone(),
                        field: "link target",
                    })?
                    .into_owned();
                self.hardlink(&rel, &link, &target, &name)
            }
            EntryType::Fifo => self.fifo(&target, &meta, &name),
            EntryType::Char | EntryType::Block => {
                self.summary.devices_skipped += 1;
                tracing::debug!(entry = %name, "device node skipped");
                Ok(())
            }
            other => {
                tracing::debug!(entry = %name, kind = ?other, "entry type skipped");
                Ok(())
            }
        }
    }

    /// Checks every parent of `rel`: a symlink refuses the entry, a missing directory is
    /// created (when `create`) or refuses it.
    fn parents(&self, rel: &Path, name: &str, create: bool) -> Result<()> {
        let Some(parent) = rel.parent() else {
            return Ok(());
        };
        let mut walked = PathBuf::new();
        for part in parent.components() {
            walked.push(part);
            let here = self.dest.join(&walked);
            match fs::symlink_metadata(&here) {
                Ok(m) if m.file_type().is_symlink() => {
                    return Err(UnpackError::ThroughSymlink {
                        entry: name.to_owned(),
                        symlink: walked,
                    })
                }
                Ok(m) if m.is_dir() => {}
                Ok(_) => {
                    return Err(UnpackError::NotADirectory {
                        entry: name.to_owned(),
                        parent: walked,
                    })
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound && create => {
                    fs::DirBuilder::new()
                        .mode(0o755)
                        .create(&here)
                        .map_err(|e| write_error(name, e))?;
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    return Err(UnpackError::NotADirectory {
                        entry: name.to_owned(),
                        parent: walked,
                    })
                }
                Err(e) => return Err(write_error(name, e)),
            }
        }
        Ok(())
    }

    /// Removes whatever is at `target` (tar semantics: a later entry replaces an earlier one),
    /// except a directory when `keep_dir`. Returns whether a directory was kept.
    fn clear(&self, target: &Path, keep_dir: bool, name: &str) -> Result<bool> {
        let result = match fs::symlink_metadata(target) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => Err(e),
            Ok(m) if m.is_dir() && keep_dir => return Ok(true),
            Ok(m) if m.is_dir() => fs::remove_dir_all(target),
            Ok(_) => fs::remove_file(target),
        };
        result.map(|()| false).map_err(|e| write_error(name, e))
    }

    fn directory(&mut self, rel: &Path, meta: &Meta, name: String) -> Result<()> {
        let target = &self.dest.join(rel);
        if !self.clear(target, true, &name)? {
            fs::DirBuilder::new()
                .mode(0o700)
                .create(target)
                .map_err(|e| write_error(&name, e))?;
        }
        if self.opts.privileged {
            lchown(target, Some(meta.uid), Some(meta.gid)).map_err(|e| write_error(&name, e))?;
        }
        self.dirs.push(DeferredDir {
            rel: rel.to_path_buf(),
            entry: name,
            mode: meta.mode,
            mtime: meta.mtime,
        });
        Ok(())
    }

    fn file<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        target: &Path,
        meta: &Meta,
        name: &str,
    ) -> Result<()> {
        self.clear(target, false, name)?;
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(target)
            .map_err(|e| write_error(name, e))?;
        loop {
            let n = entry
                .read(&mut self.buf)
                .map_err(|e| read_error(self.meter, e))?;
            if n == 0 {
                break;
            }
            self.meter.charge_written(n as u64)?;
            let data = self.buf.get(..n).unwrap_or_default();
            file.write_all(data).map_err(|e| write_error(name, e))?;
        }
        // chown clears setuid bits and file capabilities: owner first, then mode, then caps.
        if self.opts.privileged {
            fchown(&file, Some(meta.uid), Some(meta.gid)).map_err(|e| write_error(name, e))?;
        }
        file.set_permissions(Permissions::from_mode(meta.mode))
            .map_err(|e| write_error(name, e))?;
        if let (true, Some(cap)) = (self.opts.privileged, &meta.capability) {
            set_xattr(target, CAPABILITY_XATTR, cap).map_err(|e| write_error(name, e))?;
        }
        let t = system_time(meta.mtime);
        file.set_times(FileTimes::new().set_accessed(t).set_modified(t))
            .map_err(|e| write_error(name, e))
    }

    fn symlink(&mut self, link: &[u8], target: &Path, meta: &Meta, name: &str) -> Result<()> {
        // Where a symlink points is not checked: it is resolved inside the container, and
        // nothing in this extraction is written through it (see `parents`).
        if link.len() > self.opts.limits.max_path_bytes {
            return Err(UnpackError::BadPath {
                entry: name.to_owned(),
                problem: PathProblem::TooLong(self.opts.limits.max_path_bytes),
            });
        }
        self.clear(target, false, name)?;
        symlink(OsStr::from_bytes(link), target).map_err(|e| write_error(name, e))?;
        if self.opts.privileged {
            lchown(target, Some(meta.uid), Some(meta.gid)).map_err(|e| write_error(name, e))?;
        }
        set_mtime(target, meta.mtime).map_err(|e| write_error(name, e))
    }

    fn hardlink(&mut self, rel: &Path, link: &[u8], target: &Path, name: &str) -> Result<()> {
        let shown = paths::lossy(link);
        let source_rel = paths::relative(link, self.opts.limits.max_path_bytes)
            .and_then(|p| match p.as_os_str().is_empty() {
                true => Err(PathProblem::Empty),
                false => Ok(p),
            })
            .map_err(|problem| UnpackError::LinkOutside {
                entry: name.to_owned(),
                target: shown.clone(),
                problem,
            })?;
        if source_rel == rel {
            return Ok(());
        }
        let missing = || UnpackError::LinkMissing {
            entry: name.to_owned(),
            target: shown.clone(),
        };
        self.parents(&source_rel, name, false)
            .map_err(|e| match e {
                UnpackError::NotADirectory { .. } => missing(),
                other => other,
            })?;
        let source = self.dest.join(&source_rel);
        match fs::symlink_metadata(&source) {
            Ok(m) if !m.is_dir() => {}
            _ => return Err(missing()),
        }
        self.clear(target, false, name)?;
        // linkat without AT_SYMLINK_FOLLOW: a symlink source is linked itself, not followed.
        fs::hard_link(&source, target).map_err(|e| write_error(name, e))
    }

    fn fifo(&mut self, target: &Path, meta: &Meta, name: &str) -> Result<()> {
        self.clear(target, false, name)?;
        nix::unistd::mkfifo(target, Mode::from_bits_truncate(0o600))
            .map_err(|e| write_error(name, e.into()))?;
        if self.opts.privileged {
            lchown(target, Some(meta.uid), Some(meta.gid)).map_err(|e| write_error(name, e))?;
        }
        fs::set_permissions(target, Permissions::from_mode(meta.mode))
            .map_err(|e| write_error(name, e))?;
        set_mtime(target, meta.mtime).map_err(|e| write_error(name, e))
    }

    fn whiteout(&mut self, rel: &Path, file_name: &[u8], name: &str) -> Result<()> {
        self.parents(rel, name, true)?;
        let dir = match rel.parent() {
            Some(p) => self.dest.join(p),
            None => self.dest.to_path_buf(),
        };
        if file_name == OPAQUE_WHITEOUT {
            self.summary.whiteouts += 1;
            if self.opts.privileged {
                return set_xattr(&dir, OPAQUE_XATTR, b"y").map_err(|e| write_error(name, e));
            }
            return self.marker(&self.dest.join(rel), name);
        }
        let hidden = file_name.get(WHITEOUT_PREFIX.len()..).unwrap_or_default();
        if hidden.starts_with(WHITEOUT_PREFIX) {
            // AUFS bookkeeping such as `.wh..wh.plnk`: meaningless here.
            tracing::debug!(entry = %name, "whiteout metadata skipped");
            return Ok(());
        }
        if matches!(hidden, b"" | b"." | b"..") {
            return Err(UnpackError::BadWhiteout {
                entry: name.to_owned(),
                hidden: paths::lossy(hidden),
            });
        }
        self.summary.whiteouts += 1;
        if !self.opts.privileged {
            return self.marker(&self.dest.join(rel), name);
        }
        let target = dir.join(OsStr::from_bytes(hidden));
        self.clear(&target, false, name)?;
        mknod(&target, SFlag::S_IFCHR, Mode::empty(), makedev(0, 0))
            .map_err(|e| write_error(name, e.into()))
    }

    /// Unprivileged stand-in for a whiteout: the empty `.wh.*` file itself.
    fn marker(&self, path: &Path, name: &str) -> Result<()> {
        self.clear(path, false, name)?;
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)
            .map(drop)
            .map_err(|e| write_error(name, e))
    }

    fn finish_dirs(&mut self) -> Result<()> {
        let mut dirs = std::mem::take(&mut self.dirs);
        // Stable: for a directory listed twice, the later entry is applied last.
        dirs.sort_by_key(|d| std::cmp::Reverse(paths::depth(&d.rel)));
        for d in dirs {
            // A later entry may have replaced this directory, or a parent of it with a
            // symlink: only a directory still reached through directories is touched, or
            // chmod would follow that symlink out of the layer.
            if self.parents(&d.rel, &d.entry, false).is_err() {
                continue;
            }
            let path = self.dest.join(&d.rel);
            match fs::symlink_metadata(&path) {
                Ok(m) if m.is_dir() => {}
                _ => continue,
            }
            fs::set_permissions(&path, Permissions::from_mode(d.mode))
                .map_err(|e| write_error(&d.entry, e))?;
            set_mtime(&path, d.mtime).map_err(|e| write_error(&d.entry, e))?;
        }
        Ok(())
    }
}

fn read_meta<R: Read>(entry: &mut tar::Entry<'_, R>, name: &str) -> Result<Meta> {
    let bad = |field| UnpackError::BadHeader {
        entry: name.to_owned(),
        field,
    };
    let header = entry.header();
    let mode = header.mode().map_err(|_| bad("mode"))? & 0o7777;
    // tar-rs has already applied PAX uid/gid to the header.
    let uid = header
        .uid()
        .ok()
        .and_then(|v| u32::try_from(v).ok())
        .ok_or_else(|| bad("uid"))?;
    let gid = header
        .gid()
        .ok()
        .and_then(|v| u32::try_from(v).ok())
        .ok_or_else(|| bad("gid"))?;
    let mut mtime = header.mtime().map_err(|_| bad("mtime"))?;
    let mut capability = None;
    if let Some(records) = entry.pax_extensions().map_err(|_| bad("PAX records"))? {
        for record in records {
            let record = record.map_err(|_| bad("PAX records"))?;
            match record.key_bytes() {
                b"mtime" => {
                    let v = record.value_bytes();
                    let secs = v.split(|&b| b == b'.').next().unwrap_or_default();
                    // A negative time becomes the epoch.
                    mtime = std::str::from_utf8(secs)
                        .ok()
                        .and_then(|s| s.parse::<i64>().ok())
                        .map_or(0, |s| u64::try_from(s).unwrap_or(0));
                }
                PAX_CAPABILITY => capability = Some(record.value_bytes().to_vec()),
                _ => {}
            }
        }
    }
    Ok(Meta {
        mode,
        uid,
        gid,
        mtime,
        capability,
    })
}

fn write_error(name: &str, source: io::Error) -> UnpackError {
    UnpackError::Write {
        entry: name.to_owned(),
        source,
    }
}

fn system_time(secs: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH
        .checked_add(Duration::from_secs(secs))
        .unwrap_or(SystemTime::UNIX_EPOCH)
}

/// Sets atime and mtime of `path` itself (a symlink is not followed).
fn set_mtime(path: &Path, secs: u64) -> io::Result<()> {
    let secs = libc::time_t::try_from(secs).unwrap_or(libc::time_t::MAX);
    let t = TimeSpec::new(secs, 0);
    utimensat(None, path, &t, &t, UtimensatFlags::NoFollowSymlink).map_err(io::Error::from)
}
