//! Image tarballs (`docker save`, `podman save`, `oci-archive`), unpacked into this import's
//! staging directory so they can be read as a directory.
//!
//! Staging first, rather than reading blobs out of the stream: `docker save` puts
//! `manifest.json` last, so nothing is known about a member until the whole archive has been
//! read. The staging copy costs disk, not trust: only plain files and directories are created,
//! with the same path rules as layers, bounded in count and size (the archive may itself be
//! gzip- or zstd-compressed). Symlinks and hard links between members (older `docker save`
//! links identical layers to one file) are recreated as hard links to files already staged,
//! so the staging directory never holds a symlink.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use tar::EntryType;

use crate::compress::decoder;
use crate::fsutil::private_dir_all;
use crate::limits::{LimitError, Limits, Meter, Metered};
use crate::paths::{self, PathProblem};

#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("archive member {member:?}: {problem}")]
    Member {
        member: String,
        #[source]
        problem: PathProblem,
    },
    #[error("reading the archive: {0}")]
    Read(#[source] io::Error),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Limit(#[from] LimitError),
}

type Result<T, E = ArchiveError> = std::result::Result<T, E>;

/// How many rounds of link resolution (a link to a link…) before giving up.
const LINK_ROUNDS: usize = 8;

struct Link {
    at: PathBuf,
    target: PathBuf,
}

/// Unpacks the image tarball `file` into the empty directory `dest`.
pub(crate) fn extract(file: &Path, dest: &Path, limits: &Limits) -> Result<()> {
    let input = File::open(file).map_err(|source| ArchiveError::Io {
        path: file.to_path_buf(),
        source,
    })?;
    let meter = Meter::new(limits);
    let stream = decoder(input, None).map_err(ArchiveError::Read)?;
    let mut archive = tar::Archive::new(Metered {
        inner: stream,
        meter: &meter,
    });
    let read_error = |e: io::Error| match meter.tripped() {
        Some(limit) => ArchiveError::Limit(limit),
        None => ArchiveError::Read(e),
    };
    let mut entries = archive.entries().map_err(read_error)?;
    let mut links = Vec::new();
    let mut count = 0u64;
    let mut buf = vec![0u8; 64 << 10];
    loop {
        meter.begin_header();
        let next = entries.next();
        meter.end_header();
        let Some(entry) = next else { break };
        let mut entry = entry.map_err(read_error)?;
        count += 1;
        if count > limits.max_entries {
            return Err(LimitError::TooManyEntries {
                what: "the image archive".into(),
                limit: limits.max_entries,
            }
            .into());
        }
        let raw = entry.path_bytes().into_owned();
        let member = |problem| ArchiveError::Member {
            member: paths::lossy(&raw),
            problem,
        };
        let rel = paths::relative(&raw, limits.max_path_bytes).map_err(member)?;
        let kind = entry.header().entry_type();
        match kind {
            EntryType::Directory => {
                let path = dest.join(&rel);
                private_dir_all(&path).map_err(io_at(&path))?;
            }
            EntryType::Regular | EntryType::Continuous => {
                if rel.as_os_str().is_empty() {
                    return Err(member(PathProblem::Empty));
                }
                let path = dest.join(&rel);
                let mut out = create(&path)?;
                loop {
                    let n = entry.read(&mut buf).map_err(read_error)?;
                    if n == 0 {
                        break;
                    }
                    meter.charge_written(n as u64)?;
                    out.write_all(buf.get(..n).unwrap_or_default())
                        .map_err(io_at(&path))?;
                }
            }
            EntryType::Symlink | EntryType::Link => {
                let target = entry.link_name_bytes().unwrap_or_default().into_owned();
                let resolved = match kind {
                    EntryType::Symlink => paths::resolve_link(&rel, &target, limits.max_path_bytes),
                    _ => paths::relative(&target, limits.max_path_bytes),
                };
                match resolved {
                    Ok(target) if !rel.as_os_str().is_empty() => {
                        links.push(Link { at: rel, target })
                    }
                    // Unusable links only matter if the image needs them; then it says so.
                    _ => tracing::debug!(member = %paths::lossy(&raw), "archive link ignored"),
                }
            }
            _ => tracing::debug!(member = %paths::lossy(&raw), "archive member ignored"),
        }
        io::copy(&mut entry, &mut io::sink()).map_err(read_error)?;
    }
    materialize(dest, links)
}

/// Creates `path` (and its parents) as a new empty file, replacing an earlier member.
fn create(path: &Path) -> Result<File> {
    if let Some(parent) = path.parent() {
        private_dir_all(parent).map_err(io_at(parent))?;
    }
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path).map_err(io_at(path))?,
        Ok(_) => fs::remove_file(path).map_err(io_at(path))?,
        Err(_) => {}
    }
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(io_at(path))
}

/// Turns links between members into hard links to the staged files they lead to.
fn materialize(dest: &Path, mut links: Vec<Link>) -> Result<()> {
    for _ in 0..LINK_ROUNDS {
        let before = links.len();
        let mut pending = Vec::new();
        for link in links {
            let source = dest.join(&link.target);
            if !fs::symlink_metadata(&source).is_ok_and(|m| m.is_file()) {
                pending.push(link);
                continue;
            }
            let at = dest.join(&link.at);
            drop(create(&at)?);
            fs::remove_file(&at).map_err(io_at(&at))?;
            fs::hard_link(&source, &at).map_err(io_at(&at))?;
        }
        links = pending;
        if links.is_empty() || links.len() == before {
            break;
        }
    }
    for link in &links {
        tracing::debug!(link = %link.at.display(), target = %link.target.display(), "archive link leads nowhere");
    }
    Ok(())
}

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> ArchiveError + '_ {
    move |source| ArchiveError::Io {
        path: path.to_path_buf(),
        source,
    }
}
