//! A rootfs directory as an image: copied into the cache as a single layer.
//!
//! Why copy rather than use the directory in place as a lower layer: overlayfs's behaviour is
//! undefined when a lower layer changes under a mount, the directory belongs to whoever made
//! it and may change or vanish while bottles run from it, and the cache promises content that
//! cannot change under a digest. So the directory is written as a canonical tar stream (names
//! sorted, numeric owners, modes and mtimes as on disk, hard links kept, xattrs, device nodes
//! and sockets left out), whose sha256 is the layer's diff_id, and that stream goes through the
//! same unpacker as any other layer. Importing an unchanged directory again gives the same
//! digest and reuses the layer.
//!
//! The walk is fd-relative (`openat` with `O_NOFOLLOW`, `fstatat` without following): the
//! directory may belong to someone else, and a symlink swapped in mid-walk must not lead the
//! agent (root) out of it. Only the top directory itself is followed.

use std::collections::HashMap;
use std::ffi::{CStr, OsStr};
use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use nix::dir::Dir;
use nix::fcntl::{openat, readlinkat, AtFlags, OFlag};
use nix::sys::stat::{fstat, fstatat, FileStat, Mode, SFlag};
use tar::{EntryType, Header};

use crate::compress::Compression;
use crate::digest::HashingWriter;
use crate::limits::{LimitError, Limits};
use crate::plan::{config_json, parse_config, ConfigError, JsonBlob, Plan, PlanLayer};
use crate::record::{RuntimeConfig, SourceKind};

/// The `PATH` an image made from a bare directory gets.
pub(crate) const DEFAULT_PATH: &str =
    "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path} changed while it was being read")]
    Changed { path: PathBuf },
    #[error(transparent)]
    Limit(#[from] LimitError),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("the image config cannot be written: {0}")]
    Serialize(#[source] serde_json::Error),
}

type Result<T, E = RootfsError> = std::result::Result<T, E>;

/// Plans a rootfs directory's import: its tar stream is written to `staging/rootfs.tar`.
pub(crate) fn plan(dir: &Path, staging: &Path, limits: &Limits) -> Result<Plan> {
    let tar_path = staging.join("rootfs.tar");
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tar_path)
        .map_err(io_at(&tar_path))?;
    let writer = write_tar(dir, HashingWriter::new(BufWriter::new(file)), limits)?;
    let (buffered, diff_id, len) = writer.finish();
    buffered
        .into_inner()
        .map_err(|e| io_at(&tar_path)(e.into_error()))?;
    let runtime = RuntimeConfig {
        env: vec![DEFAULT_PATH.to_owned()],
        ..RuntimeConfig::default()
    };
    let config = JsonBlob::new(
        config_json(&runtime, std::slice::from_ref(&diff_id)).map_err(RootfsError::Serialize)?,
    );
    let parsed = parse_config(&config.bytes, limits)?;
    Ok(Plan {
        kind: SourceKind::RootfsDir,
        manifest: None,
        config,
        parsed,
        layers: vec![PlanLayer {
            file: tar_path,
            owned: true,
            digest: Some(diff_id.clone()),
            size: Some(len),
            compression: Some(Compression::None),
            diff_id,
            keep_blob: false,
        }],
        names: Vec::new(),
    })
}

/// Writes the canonical tar stream of `dir` to `out` and returns `out`.
pub(crate) fn write_tar<W: Write + Counted>(dir: &Path, out: W, limits: &Limits) -> Result<W> {
    let top = Dir::open(
        dir,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| io_at(dir)(e.into()))?;
    let mut builder = tar::Builder::new(out);
    let mut walker = Walker {
        top: dir,
        limits,
        entries: 0,
        links: HashMap::new(),
    };
    walker.walk(&mut builder, top, Path::new(""))?;
    builder.into_inner().map_err(io_at(dir))
}

/// Something that knows how many bytes went through it (to bound the stream as it is made).
pub(crate) trait Counted {
    fn counted(&self) -> u64;
}

impl<W: Write> Counted for HashingWriter<W> {
    fn counted(&self) -> u64 {
        self.count()
    }
}

struct Walker<'a> {
    top: &'a Path,
    limits: &'a Limits,
    entries: u64,
    /// (dev, ino) of files with several links → the first name written.
    links: HashMap<(u64, u64), PathBuf>,
}

impl Walker<'_> {
    fn walk<W: Write + Counted>(
        &mut self,
        builder: &mut tar::Builder<W>,
        mut dir: Dir,
        rel: &Path,
    ) -> Result<()> {
        let here = self.top.join(rel);
        let mut names: Vec<Vec<u8>> = Vec::new();
        for entry in dir.iter() {
            let entry = entry.map_err(|e| io_at(&here)(e.into()))?;
            let name = entry.file_name().to_bytes();
            if name != b"." && name != b".." {
                names.push(name.to_vec());
            }
        }
        names.sort();
        let fd = dir.as_raw_fd();
        for name in names {
            let path = rel.join(OsStr::from_bytes(&name));
            let shown = self.top.join(&path);
            self.entries += 1;
            if self.entries > self.limits.max_entries {
                return Err(LimitError::TooManyEntries {
                    what: format!("{}", self.top.display()),
                    limit: self.limits.max_entries,
                }
                .into());
            }
            let st = fstatat(Some(fd), name.as_slice(), AtFlags::AT_SYMLINK_NOFOLLOW)
                .map_err(|e| io_at(&shown)(e.into()))?;
            let mut header = header_for(&st);
            match SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT {
                SFlag::S_IFDIR => {
                    header.set_entry_type(EntryType::Directory);
                    builder
                        .append_data(&mut header, &path, io::empty())
                        .map_err(io_at(&shown))?;
                    let child = Dir::openat(
                        Some(fd),
                        name.as_slice(),
                        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                        Mode::empty(),
                    )
                    .map_err(|e| io_at(&shown)(e.into()))?;
                    self.walk(builder, child, &path)?;
                }
                SFlag::S_IFREG => self.file(builder, fd, &name, &st, header, &path, &shown)?,
                SFlag::S_IFLNK => {
                    let target = readlinkat(Some(fd), name.as_slice())
                        .map_err(|e| io_at(&shown)(e.into()))?;
                    header.set_entry_type(EntryType::Symlink);
                    builder
                        .append_link(&mut header, &path, &target)
                        .map_err(io_at(&shown))?;
                }
                SFlag::S_IFIFO => {
                    header.set_entry_type(EntryType::Fifo);
                    builder
                        .append_data(&mut header, &path, io::empty())
                        .map_err(io_at(&shown))?;
                }
                _ => {
                    tracing::debug!(path = %shown.display(), "device or socket left out of the image")
                }
            }
            let written = builder.get_ref().counted();
            if written > self.limits.max_unpacked_bytes {
                return Err(LimitError::TooLarge {
                    limit: self.limits.max_unpacked_bytes,
                }
                .into());
            }
        }
        Ok(())
    }

    #[expect(
        clippy::too_many_arguments,
        reason = "one walk step: the directory fd, the entry and where it goes"
    )]
    fn file<W: Write + Counted>(
        &mut self,
        builder: &mut tar::Builder<W>,
        fd: RawFd,
        name: &[u8],
        st: &FileStat,
        mut header: Header,
        path: &Path,
        shown: &Path,
    ) -> Result<()> {
        let key = (st.st_dev, st.st_ino);
        if st.st_nlink > 1 {
            if let Some(first) = self.links.get(&key) {
                header.set_entry_type(EntryType::Link);
                return builder
                    .append_link(&mut header, path, first)
                    .map_err(io_at(shown));
            }
            self.links.insert(key, path.to_path_buf());
        }
        let size = u64::try_from(st.st_size).unwrap_or(0);
        if size > self.limits.max_unpacked_bytes {
            return Err(LimitError::TooLarge {
                limit: self.limits.max_unpacked_bytes,
            }
            .into());
        }
        let file = open_regular(fd, name, st).map_err(|e| match e {
            OpenError::Io(e) => io_at(shown)(e),
            OpenError::Changed => RootfsError::Changed {
                path: shown.to_path_buf(),
            },
        })?;
        header.set_entry_type(EntryType::Regular);
        header.set_size(size);
        let mut exact = Exact {
            inner: file.take(size),
            left: size,
        };
        builder
            .append_data(&mut header, path, &mut exact)
            .map_err(|e| match e.kind() {
                io::ErrorKind::UnexpectedEof => RootfsError::Changed {
                    path: shown.to_path_buf(),
                },
                _ => io_at(shown)(e),
            })
    }
}

fn header_for(st: &FileStat) -> Header {
    let mut h = Header::new_gnu();
    h.set_mode(st.st_mode & 0o7777);
    h.set_uid(u64::from(st.st_uid));
    h.set_gid(u64::from(st.st_gid));
    h.set_mtime(u64::try_from(st.st_mtime).unwrap_or(0));
    h.set_size(0);
    h
}

enum OpenError {
    Io(io::Error),
    Changed,
}

/// Opens `name` in `dir` only if it is still the regular file `st` describes.
fn open_regular(dir: RawFd, name: &[u8], st: &FileStat) -> Result<File, OpenError> {
    let name = CStr::from_bytes_until_nul(&[name, b"\0"].concat())
        .map(CStr::to_owned)
        .map_err(|_| OpenError::Changed)?;
    // O_NONBLOCK: a FIFO swapped in after the stat must not hang the walk.
    let fd = openat(
        Some(dir),
        name.as_c_str(),
        OFlag::O_RDONLY
            | OFlag::O_NOFOLLOW
            | OFlag::O_CLOEXEC
            | OFlag::O_NOCTTY
            | OFlag::O_NONBLOCK,
        Mode::empty(),
    )
    .map_err(|e| OpenError::Io(e.into()))?;
    // SAFETY: `fd` was just returned by openat and nothing else owns it.
    let file = unsafe { File::from_raw_fd(fd) };
    let now = fstat(file.as_raw_fd()).map_err(|e| OpenError::Io(e.into()))?;
    let is_reg = SFlag::from_bits_truncate(now.st_mode) & SFlag::S_IFMT == SFlag::S_IFREG;
    if !is_reg || now.st_ino != st.st_ino || now.st_dev != st.st_dev {
        return Err(OpenError::Changed);
    }
    Ok(file)
}

/// Reads exactly `left` bytes or fails: a file that shrank while being read would otherwise
/// leave a tar header promising more than follows.
struct Exact<R> {
    inner: R,
    left: u64,
}

impl<R: Read> Read for Exact<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 {
            return Ok(0);
        }
        let n = self.inner.read(buf)?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        self.left = self.left.saturating_sub(n as u64);
        Ok(n)
    }
}

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> RootfsError + '_ {
    move |source| RootfsError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The diff_id a directory would get (for tests: importing it twice must reuse the layer).
#[cfg(test)]
pub(crate) fn digest_of(dir: &Path) -> crate::digest::Sha256 {
    #[allow(clippy::unwrap_used)]
    let w = write_tar(dir, HashingWriter::new(io::sink()), &Limits::default()).unwrap();
    w.finish().1
}
