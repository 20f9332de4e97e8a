//! `bottle run --cwd` and `--mount`: the client's side. The current directory (with `.git`)
//! is packed as a tar archive and uploaded (`PUT /v1/workspaces`) before the run, so it works
//! the same from a remote client; symlinks are stored as symlinks, never followed.

use std::io::{self, Write};
use std::path::Path;

use bottle_api::{RunMount, WorkspaceUpload, MAX_WORKSPACE_BYTES};

use crate::http::{Client, ClientError};

#[derive(Debug, thiserror::Error)]
pub enum WorkspaceError {
    #[error("--cwd: the directory is larger than {MAX_WORKSPACE_BYTES} bytes as an archive; leave build output out of it or use --mount")]
    TooLarge,
    #[error("--cwd: packing {path}: {source}")]
    Pack {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("--mount {0:?}: use HOST:GUEST or HOST:GUEST:ro with absolute paths")]
    BadMount(String),
    #[error(transparent)]
    Client(#[from] ClientError),
}

/// A `Vec` that refuses to grow past the upload limit.
struct Bounded(Vec<u8>);

impl Write for Bounded {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.0.len() as u64 + buf.len() as u64 > MAX_WORKSPACE_BYTES {
            return Err(io::Error::other("workspace too large"));
        }
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The archive of `dir`'s content (paths relative to it).
pub fn pack(dir: &Path) -> Result<Vec<u8>, WorkspaceError> {
    let mut b = tar::Builder::new(Bounded(Vec::new()));
    b.follow_symlinks(false);
    b.mode(tar::HeaderMode::Complete);
    let err = |source: io::Error| {
        if source.to_string() == "workspace too large" {
            WorkspaceError::TooLarge
        } else {
            WorkspaceError::Pack {
                path: dir.display().to_string(),
                source,
            }
        }
    };
    b.append_dir_all(".", dir).map_err(err)?;
    Ok(b.into_inner().map_err(err)?.0)
}

/// Packs and uploads `dir`; returns the upload's id for the run request.
pub async fn upload(client: &Client, dir: &Path) -> Result<WorkspaceUpload, WorkspaceError> {
    let archive = pack(dir)?;
    Ok(client.put_bytes("/v1/workspaces", archive).await?)
}

/// `HOST:GUEST[:ro]`.
pub fn parse_mount(s: &str) -> Result<RunMount, WorkspaceError> {
    let bad = || WorkspaceError::BadMount(s.to_owned());
    let (rest, readonly) = match s.strip_suffix(":ro") {
        Some(r) => (r, true),
        None => (s.strip_suffix(":rw").unwrap_or(s), false),
    };
    let (host, guest) = rest.split_once(':').ok_or_else(bad)?;
    if !host.starts_with('/') || !guest.starts_with('/') || guest.contains(':') {
        return Err(bad());
    }
    Ok(RunMount {
        host: host.to_owned(),
        guest: guest.to_owned(),
        readonly,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn mounts() {
        let m = parse_mount("/src:/data:ro").unwrap();
        assert_eq!(
            (m.host.as_str(), m.guest.as_str(), m.readonly),
            ("/src", "/data", true)
        );
        assert!(!parse_mount("/src:/data").unwrap().readonly);
        assert!(!parse_mount("/src:/data:rw").unwrap().readonly);
        assert!(parse_mount("src:/data").is_err());
        assert!(parse_mount("/src").is_err());
        assert!(parse_mount("/src:data").is_err());
    }

    #[test]
    fn packs_symlinks_as_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join(".git")).unwrap();
        std::fs::write(dir.path().join(".git/HEAD"), "ref: refs/heads/main\n").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", dir.path().join("link")).unwrap();
        let bytes = pack(dir.path()).unwrap();
        let mut a = tar::Archive::new(&bytes[..]);
        let mut seen = Vec::new();
        for e in a.entries().unwrap() {
            let e = e.unwrap();
            seen.push((
                e.path().unwrap().display().to_string(),
                e.header().entry_type(),
            ));
        }
        assert!(
            seen.contains(&("./.git/HEAD".into(), tar::EntryType::Regular))
                || seen.contains(&(".git/HEAD".into(), tar::EntryType::Regular)),
            "{seen:?}"
        );
        assert!(seen
            .iter()
            .any(|(p, t)| p.ends_with("link") && *t == tar::EntryType::Symlink));
    }
}
