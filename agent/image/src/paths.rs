//! Entry paths from archives, reduced to plain relative paths or refused.
//!
//! A tar entry's name is attacker-chosen bytes. The only shape accepted is a relative path of
//! ordinary components: absolute names and `..` are refused outright (not silently stripped,
//! so a hostile layer is noticed), and `.` and repeated slashes are dropped.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathProblem {
    #[error("absolute path")]
    Absolute,
    #[error("`..` component")]
    DotDot,
    #[error("longer than {0} bytes")]
    TooLong(usize),
    #[error("empty path")]
    Empty,
    #[error("points outside the archive")]
    Outside,
}

/// `raw` as a relative path of normal components (empty for `.` or `./`).
pub(crate) fn relative(raw: &[u8], max_bytes: usize) -> Result<PathBuf, PathProblem> {
    if raw.len() > max_bytes {
        return Err(PathProblem::TooLong(max_bytes));
    }
    if raw.first() == Some(&b'/') {
        return Err(PathProblem::Absolute);
    }
    let mut out = PathBuf::new();
    for part in raw.split(|&b| b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => return Err(PathProblem::DotDot),
            name => out.push(OsStr::from_bytes(name)),
        }
    }
    Ok(out)
}

/// Where a symlink at `link` (relative, inside an archive) pointing at `target` leads, as a
/// path relative to the archive root; `..` is followed but may not climb above the root.
pub(crate) fn resolve_link(
    link: &Path,
    target: &[u8],
    max_bytes: usize,
) -> Result<PathBuf, PathProblem> {
    if target.len() > max_bytes {
        return Err(PathProblem::TooLong(max_bytes));
    }
    if target.first() == Some(&b'/') {
        return Err(PathProblem::Absolute);
    }
    let mut out: PathBuf = link.parent().map(Path::to_path_buf).unwrap_or_default();
    for part in target.split(|&b| b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => {
                if !out.pop() {
                    return Err(PathProblem::Outside);
                }
            }
            name => out.push(OsStr::from_bytes(name)),
        }
    }
    if out.as_os_str().is_empty() {
        return Err(PathProblem::Empty);
    }
    Ok(out)
}

/// Relative paths read from an image's JSON (`manifest.json`'s `Config` and `Layers`).
pub(crate) fn relative_str(s: &str, max_bytes: usize) -> Result<PathBuf, PathProblem> {
    let p = relative(s.as_bytes(), max_bytes)?;
    if p.as_os_str().is_empty() {
        return Err(PathProblem::Empty);
    }
    Ok(p)
}

/// How many normal components `p` has (directories are finished deepest first).
pub(crate) fn depth(p: &Path) -> usize {
    p.components()
        .filter(|c| matches!(c, Component::Normal(_)))
        .count()
}

/// Raw entry bytes for messages.
pub(crate) fn lossy(raw: &[u8]) -> String {
    String::from_utf8_lossy(raw).into_owned()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths() {
        assert_eq!(
            relative(b"./a//b/./c/", 100).unwrap(),
            PathBuf::from("a/b/c")
        );
        assert_eq!(relative(b"./", 100).unwrap(), PathBuf::new());
        assert_eq!(relative(b"/etc/x", 100), Err(PathProblem::Absolute));
        assert_eq!(relative(b"../x", 100), Err(PathProblem::DotDot));
        assert_eq!(relative(b"a/../../x", 100), Err(PathProblem::DotDot));
        assert_eq!(relative(b"a/b", 2), Err(PathProblem::TooLong(2)));
        assert_eq!(relative(b"...", 100).unwrap(), PathBuf::from("..."));
    }

    #[test]
    fn links_resolve_inside_only() {
        let l = Path::new("a/b/layer.tar");
        assert_eq!(
            resolve_link(l, b"../../c/layer.tar", 100).unwrap(),
            PathBuf::from("c/layer.tar")
        );
        assert_eq!(
            resolve_link(l, b"../../../x", 100),
            Err(PathProblem::Outside)
        );
        assert_eq!(
            resolve_link(l, b"/etc/passwd", 100),
            Err(PathProblem::Absolute)
        );
        assert_eq!(depth(Path::new("a/b/c")), 3);
    }
}
