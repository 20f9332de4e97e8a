//! Persistent per-bottle state: `<state_dir>/<id>/metadata.json`, written atomically.

use std::io::Write;
use std::net::Ipv4Addr;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::paths::{METADATA_FILE, PRIVATE_DIR_MODE, PRIVATE_FILE_MODE};

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not valid bottle metadata: {source}")]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

pub type Result<T> = std::result::Result<T, StateError>;

/// Everything the agent must remember about a bottle across restarts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Metadata {
    pub id: String,
    pub name: String,
    pub owner_uid: u32,
    pub created_at: u64,
    pub launcher: String,
    pub netns: String,
    pub host_interface: String,
    pub bottle_address: Ipv4Addr,
    pub gateway_address: Ipv4Addr,
    pub prefix_len: u8,
    #[serde(default)]
    pub frozen: bool,
    /// The workload `bottle run` started, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload: Option<WorkloadRecord>,
    /// The manifest agent the bottle runs (`bottle run AGENT`), for `bottle resume`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<bottle_api::provision::AgentMeta>,
}

/// What the agent remembers of a bottle's workload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkloadRecord {
    pub image: String,
    /// `None` while it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
}

pub fn bottle_dir(state_dir: &Path, id: &str) -> PathBuf {
    state_dir.join(id)
}

/// Creates a root-only directory (and parents).
pub fn create_private_dir(path: &Path) -> Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(PRIVATE_DIR_MODE)
        .create(path)
        .map_err(|source| StateError::Write {
            path: path.into(),
            source,
        })
}

/// Writes `bytes` to `path` through a temporary file and a rename, so an agent crash leaves
/// either the old or the new content, never half of one. No fsync: after a power loss the
/// namespaces (in tmpfs) are gone too, and re-adoption tears such bottles down anyway; an
/// fsync per create would cost more than the rest of the create.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let err = |source| StateError::Write {
        path: path.into(),
        source,
    };
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(PRIVATE_FILE_MODE)
        .open(&tmp)
        .map_err(err)?;
    file.write_all(bytes).map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)
}

pub fn save(state_dir: &Path, meta: &Metadata) -> Result<()> {
    let dir = bottle_dir(state_dir, &meta.id);
    create_private_dir(&dir)?;
    let path = dir.join(METADATA_FILE);
    let json = serde_json::to_vec_pretty(meta).map_err(|source| StateError::Parse {
        path: path.clone(),
        source,
    })?;
    write_atomic(&path, &json)
}

pub fn load(dir: &Path) -> Result<Metadata> {
    let path = dir.join(METADATA_FILE);
    let bytes = std::fs::read(&path).map_err(|source| StateError::Read {
        path: path.clone(),
        source,
    })?;
    serde_json::from_slice(&bytes).map_err(|source| StateError::Parse { path, source })
}

/// Every bottle directory under `state_dir` (directories only; files such as the kill-switch
/// marker are skipped).
pub fn bottle_dirs(state_dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(state_dir) else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.path())
        .collect()
}

/// Removes a bottle's state directory (through `state_dir`'s trash: gone at once, deleted in
/// the background).
pub fn remove_bottle_dir(state_dir: &Path, id: &str) -> std::result::Result<(), String> {
    let dir = bottle_dir(state_dir, id);
    crate::trash::discard(state_dir, &dir).map_err(|e| format!("remove {}: {e}", dir.display()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn save_and_load_round_trip_root_only() {
        let dir = tempfile::tempdir().unwrap();
        let meta = Metadata {
            id: "0123abcd".into(),
            name: "dev".into(),
            owner_uid: 1000,
            created_at: 1,
            launcher: "none".into(),
            netns: "bottle-0123abcd".into(),
            host_interface: "btl-0123abcd".into(),
            bottle_address: "10.213.0.2".parse().unwrap(),
            gateway_address: "10.213.0.1".parse().unwrap(),
            prefix_len: 30,
            frozen: false,
            workload: Some(WorkloadRecord {
                image: "busybox".into(),
                exit_code: Some(143),
            }),
            agent: Some(bottle_api::provision::AgentMeta {
                agent: "reviewer".into(),
                bottle: "dev".into(),
                provider: "claude".into(),
                image: "bottle-claude".into(),
            }),
        };
        save(dir.path(), &meta).unwrap();
        let bdir = bottle_dir(dir.path(), "0123abcd");
        assert_eq!(load(&bdir).unwrap(), meta);
        let mode = std::fs::metadata(bdir.join(METADATA_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(bottle_dirs(dir.path()), vec![bdir.clone()]);
        std::fs::write(bdir.join(METADATA_FILE), b"{").unwrap();
        assert!(load(&bdir)
            .unwrap_err()
            .to_string()
            .contains("not valid bottle metadata"));
    }
}
