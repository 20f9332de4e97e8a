//! A bottle's root filesystem: overlayfs with the image's cached layers as read-only lowers
//! and the bottle's own upper and work directories, so the cache is never written to.
//!
//! Root only (mount(2) needs CAP_SYS_ADMIN). The caller creates `upper` and `work` on one
//! filesystem, owns their lifetime, and unmounts before removing them. The options go through
//! mount(2)'s data page, so paths with overlayfs's separators are refused rather than escaped,
//! and a stack of layers whose options exceed a page is refused with a clear error (some 35
//! layers under `/var/lib/bottle/images`; beyond that the kernel's `lowerdir+` via fsconfig is
//! the way).

use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};

/// mount(2) copies at most one page of options.
const MAX_OPTIONS: usize = 4095;

#[derive(Debug, thiserror::Error)]
pub enum OverlayError {
    #[error("an overlay needs at least one lower layer")]
    NoLayers,
    #[error("{path}: a path with ',', ':', '\\\\' or a newline cannot be an overlay option")]
    BadPath { path: PathBuf },
    #[error("the overlay options are {len} bytes, more than mount(2) takes ({MAX_OPTIONS})")]
    TooLong { len: usize },
    #[error("mounting an overlay on {target}: {source}")]
    Mount {
        target: PathBuf,
        #[source]
        source: nix::Error,
    },
    #[error("unmounting {target}: {source}")]
    Unmount {
        target: PathBuf,
        #[source]
        source: nix::Error,
    },
}

/// Mounts overlayfs on `target`: `lower` top-most first (as [`crate::ImageRecord::lower_dirs`]
/// gives them), `upper` and `work` the bottle's own.
pub fn mount_overlay(
    lower: &[PathBuf],
    upper: &Path,
    work: &Path,
    target: &Path,
) -> Result<(), OverlayError> {
    mount_with(lower, upper, work, target, false)
}

/// [`mount_overlay`] with overlayfs's `volatile` option: the upper is never synced (not on
/// fsync, not on unmount), which makes unmounting several times faster. Only for an upper that
/// is thrown away with its mount — a bottle's — since after a host crash its content is
/// undefined (and overlayfs refuses to mount that work directory again until it is removed).
pub fn mount_scratch_overlay(
    lower: &[PathBuf],
    upper: &Path,
    work: &Path,
    target: &Path,
) -> Result<(), OverlayError> {
    mount_with(lower, upper, work, target, true)
}

fn mount_with(
    lower: &[PathBuf],
    upper: &Path,
    work: &Path,
    target: &Path,
    volatile: bool,
) -> Result<(), OverlayError> {
    let mut data = options(lower, upper, work)?;
    if volatile {
        data.push_str(",volatile");
        if data.len() > MAX_OPTIONS {
            return Err(OverlayError::TooLong { len: data.len() });
        }
    }
    mount(
        Some("overlay"),
        target,
        Some("overlay"),
        MsFlags::empty(),
        Some(data.as_str()),
    )
    .map_err(|source| OverlayError::Mount {
        target: target.to_path_buf(),
        source,
    })
}

/// Unmounts `target` (not lazily: a busy mount is reported, not hidden).
pub fn unmount(target: &Path) -> Result<(), OverlayError> {
    umount2(target, MntFlags::empty()).map_err(|source| OverlayError::Unmount {
        target: target.to_path_buf(),
        source,
    })
}

fn checked(path: &Path) -> Result<&str, OverlayError> {
    match path.to_str() {
        Some(s) if !s.contains([',', ':', '\\', '\n']) => Ok(s),
        _ => Err(OverlayError::BadPath {
            path: path.to_path_buf(),
        }),
    }
}

fn options(lower: &[PathBuf], upper: &Path, work: &Path) -> Result<String, OverlayError> {
    if lower.is_empty() {
        return Err(OverlayError::NoLayers);
    }
    let lowers = lower
        .iter()
        .map(|p| checked(p))
        .collect::<Result<Vec<_>, _>>()?
        .join(":");
    let data = format!(
        "lowerdir={lowers},upperdir={},workdir={}",
        checked(upper)?,
        checked(work)?
    );
    if data.len() > MAX_OPTIONS {
        return Err(OverlayError::TooLong { len: data.len() });
    }
    Ok(data)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn options_are_checked() {
        let l = [PathBuf::from("/c/l2"), PathBuf::from("/c/l1")];
        assert_eq!(
            options(&l, Path::new("/b/u"), Path::new("/b/w")).unwrap(),
            "lowerdir=/c/l2:/c/l1,upperdir=/b/u,workdir=/b/w"
        );
        assert!(matches!(
            options(&[], Path::new("/u"), Path::new("/w")),
            Err(OverlayError::NoLayers)
        ));
        assert!(matches!(
            options(&[PathBuf::from("/a,b")], Path::new("/u"), Path::new("/w")),
            Err(OverlayError::BadPath { .. })
        ));
        let many: Vec<PathBuf> = (0..100)
            .map(|i| PathBuf::from(format!("/{}{i}", "x".repeat(60))))
            .collect();
        assert!(matches!(
            options(&many, Path::new("/u"), Path::new("/w")),
            Err(OverlayError::TooLong { .. })
        ));
    }
}
