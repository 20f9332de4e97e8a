//! Pulling an image from a registry, when `skopeo` is installed: it writes an OCI layout into
//! the import's staging directory and the layout is imported like any other.
//!
//! The agent does not speak the registry protocol itself: skopeo already handles auth files,
//! mirrors, signatures policy and platforms, and without it the agent simply cannot pull — the
//! error then says how to import an image instead.

use std::env;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};

/// How long one pull may take before skopeo gives up.
const TIMEOUT: &str = "15m";
/// How much of skopeo's complaint goes into the error.
const MAX_STDERR: usize = 2000;

#[derive(Debug, thiserror::Error)]
pub enum PullError {
    #[error("cannot run {skopeo}: {source}")]
    Spawn {
        skopeo: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("skopeo could not pull {name:?} ({status}): {stderr}")]
    Failed {
        name: String,
        status: ExitStatus,
        stderr: String,
    },
    #[error("{0} contains ':', which skopeo's oci: transport cannot take")]
    BadPath(PathBuf),
}

/// `skopeo` on `PATH`, if it is there.
pub(crate) fn find_skopeo() -> Option<PathBuf> {
    let path = env::var_os("PATH")?;
    env::split_paths(&path)
        .map(|dir| dir.join("skopeo"))
        .find(|p| {
            p.metadata()
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// `skopeo copy docker://NAME oci:DEST:image`; `name` is already validated.
pub(crate) fn pull(skopeo: &Path, name: &str, dest: &Path) -> Result<(), PullError> {
    let dest_str = dest.to_string_lossy();
    if dest_str.contains(':') {
        return Err(PullError::BadPath(dest.to_path_buf()));
    }
    tracing::info!(image = %name, "pulling with skopeo");
    let out = Command::new(skopeo)
        .args(["--command-timeout", TIMEOUT, "copy", "--quiet"])
        .arg(format!("docker://{name}"))
        .arg(format!("oci:{dest_str}:image"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .map_err(|source| PullError::Spawn {
            skopeo: skopeo.to_path_buf(),
            source,
        })?;
    if out.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stderr = stderr.trim();
    let start = stderr
        .char_indices()
        .rev()
        .nth(MAX_STDERR)
        .map_or(0, |(i, _)| i);
    Err(PullError::Failed {
        name: name.to_owned(),
        status: out.status,
        stderr: stderr.get(start..).unwrap_or_default().to_owned(),
    })
}
