//! Reading an image's blobs: JSON documents bounded and checked against their digest, layer
//! blobs hashed while they are copied (or, when already in our staging area, in place).
//!
//! Nothing is parsed before its digest has been checked, and a blob whose descriptor gives a
//! size is read no further than that size plus one byte.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::digest::{DigestError, HashingReader, HashingWriter, Sha256};
use crate::fsutil::unique_name;
use crate::limits::LimitError;

#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    #[error("{what} is missing ({path})")]
    Missing { what: String, path: PathBuf },
    #[error("{what}: the descriptor says {expected} bytes, the blob has {actual}")]
    Size {
        what: String,
        expected: u64,
        actual: u64,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Digest(#[from] DigestError),
    #[error(transparent)]
    Limit(#[from] LimitError),
}

type Result<T, E = BlobError> = std::result::Result<T, E>;

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> BlobError + '_ {
    move |source| BlobError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn open(path: &Path, what: &str) -> Result<File> {
    File::open(path).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => BlobError::Missing {
            what: what.to_owned(),
            path: path.to_path_buf(),
        },
        _ => BlobError::Io {
            path: path.to_path_buf(),
            source: e,
        },
    })
}

/// Reads a small JSON document that no digest names (`index.json`, `manifest.json`).
pub(crate) fn read_json(path: &Path, what: &str, limit: u64) -> Result<Vec<u8>> {
    let file = open(path, what)?;
    let mut out = Vec::new();
    file.take(limit.saturating_add(1))
        .read_to_end(&mut out)
        .map_err(io_error(path))?;
    if out.len() as u64 > limit {
        return Err(LimitError::JsonTooLarge {
            what: what.to_owned(),
            limit,
        }
        .into());
    }
    Ok(out)
}

/// Reads a JSON blob and checks it against the descriptor that named it.
pub(crate) fn read_verified(
    path: &Path,
    what: &str,
    digest: &Sha256,
    size: Option<u64>,
    limit: u64,
) -> Result<Vec<u8>> {
    if let Some(size) = size {
        if size > limit {
            return Err(LimitError::JsonTooLarge {
                what: what.to_owned(),
                limit,
            }
            .into());
        }
    }
    let bytes = read_json(path, what, limit)?;
    check_size(what, size, bytes.len() as u64)?;
    Sha256::of(&bytes).check(digest, format!("{what} ({})", path.display()))?;
    Ok(bytes)
}

fn check_size(what: &str, expected: Option<u64>, actual: u64) -> Result<()> {
    match expected {
        Some(expected) if expected != actual => Err(BlobError::Size {
            what: what.to_owned(),
            expected,
            actual,
        }),
        _ => Ok(()),
    }
}

/// A layer blob ready to unpack: its content has been hashed (and checked when a digest was
/// expected).
#[derive(Debug)]
pub(crate) struct Staged {
    pub path: PathBuf,
    pub digest: Sha256,
}

/// Makes `src` a verified blob inside `staging`: a file already in the staging area (`owned`)
/// is hashed where it is; anything else is copied in while it is hashed, so what is later
/// unpacked is exactly what was checked, whatever happens to the source meanwhile.
pub(crate) fn stage(
    src: &Path,
    owned: bool,
    what: &str,
    expected: Option<&Sha256>,
    size: Option<u64>,
    staging: &Path,
    limit: u64,
) -> Result<Staged> {
    // Read at most one byte more than the descriptor's size: enough to notice a longer blob.
    let cap = size
        .map_or(limit, |s| s.saturating_add(1))
        .min(limit.saturating_add(1));
    let file = open(src, what)?;
    let (path, digest, len) = if owned {
        let mut reader = HashingReader::new(file.take(cap), None);
        io::copy(&mut reader, &mut io::sink()).map_err(io_error(src))?;
        let (digest, len) = reader.finish();
        (src.to_path_buf(), digest, len)
    } else {
        let dest = staging.join(unique_name("blob"));
        let out = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&dest)
            .map_err(io_error(&dest))?;
        let mut writer = HashingWriter::new(out);
        io::copy(&mut file.take(cap), &mut writer).map_err(io_error(src))?;
        let (_, digest, len) = writer.finish();
        (dest, digest, len)
    };
    if len > limit {
        return Err(LimitError::TooLarge { limit }.into());
    }
    check_size(what, size, len)?;
    if let Some(expected) = expected {
        digest.check(expected, format!("{what} ({})", src.display()))?;
    }
    Ok(Staged { path, digest })
}

/// Moves a staged blob to its place in the store; an identical blob already there wins.
pub(crate) fn commit(staged: &Path, blobs_dir: &Path, digest: &Sha256) -> Result<()> {
    let dest = blobs_dir.join(digest.hex());
    if dest.exists() {
        return fs::remove_file(staged).map_err(io_error(staged));
    }
    fs::rename(staged, &dest).map_err(io_error(&dest))
}

/// Stores a verified JSON blob unless it is already there.
pub(crate) fn commit_bytes(bytes: &[u8], blobs_dir: &Path, digest: &Sha256) -> Result<()> {
    let dest = blobs_dir.join(digest.hex());
    if dest.exists() {
        return Ok(());
    }
    crate::fsutil::write_atomic(&dest, bytes).map_err(io_error(&dest))
}
