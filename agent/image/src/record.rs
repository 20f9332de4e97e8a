//! What the store remembers about an image (`images/<id>.json`) and the names that find it
//! (`names.json`).
//!
//! A record carries everything the bundle generator needs — layers in order and the image's
//! runtime defaults (Env, Entrypoint, Cmd, WorkingDir, User) — so launching never parses an
//! image config again. Both files are replaced atomically; readers need no lock.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use oci_spec::image::ImageConfiguration;
use serde::{Deserialize, Serialize};

use crate::digest::Sha256;
use crate::fsutil::write_atomic;

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path} is damaged: {source}")]
    Corrupt {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{name:?} is not a valid image name: {reason}")]
pub struct NameError {
    pub name: String,
    pub reason: &'static str,
}

/// The image's defaults for the container process.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuntimeConfig {
    #[serde(default)]
    pub env: Vec<String>,
    #[serde(default)]
    pub entrypoint: Vec<String>,
    #[serde(default)]
    pub cmd: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    /// As the image gives it: `user`, `uid`, `user:group`, `uid:gid`…; `None` when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
}

impl RuntimeConfig {
    pub(crate) fn from_oci(config: &ImageConfiguration) -> Self {
        let Some(c) = config.config() else {
            return Self::default();
        };
        let non_empty = |s: &Option<String>| s.clone().filter(|s| !s.is_empty());
        Self {
            env: c.env().clone().unwrap_or_default(),
            entrypoint: c.entrypoint().clone().unwrap_or_default(),
            cmd: c.cmd().clone().unwrap_or_default(),
            working_dir: non_empty(c.working_dir()),
            user: non_empty(c.user()),
        }
    }

    /// The OCI `config` object for these defaults (what the writer and a rootfs import put in
    /// the config they make).
    pub(crate) fn to_oci(&self) -> oci_spec::image::Config {
        let mut c = oci_spec::image::Config::default();
        let some = |v: &Vec<String>| (!v.is_empty()).then(|| v.clone());
        c.set_env(some(&self.env));
        c.set_entrypoint(some(&self.entrypoint));
        c.set_cmd(some(&self.cmd));
        c.set_working_dir(self.working_dir.clone());
        c.set_user(self.user.clone());
        c
    }

    /// The process the image asks for: Entrypoint followed by Cmd.
    pub fn args(&self) -> Vec<String> {
        self.entrypoint.iter().chain(&self.cmd).cloned().collect()
    }
}

/// Where an image came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SourceKind {
    RootfsDir,
    OciLayout,
    OciArchive,
    DockerArchive,
    Registry,
}

/// One image in the store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRecord {
    /// Also the image's id (`images/<hex>.json`), as with Docker.
    pub config_digest: Sha256,
    /// `None` for sources without one (`docker save` before Docker 25, rootfs directories).
    pub manifest_digest: Option<Sha256>,
    /// Normalized names that find this image (see [`normalize_name`]).
    pub names: Vec<String>,
    /// Layer diff_ids, bottom-most first, as in the config.
    pub layers: Vec<Sha256>,
    pub architecture: String,
    pub os: String,
    pub config: RuntimeConfig,
    pub source: SourceKind,
    /// Every layer has overlayfs whiteouts (it was unpacked as root). When false the layers
    /// still hold `.wh.*` files and must not be mounted as they are.
    pub overlay_ready: bool,
    #[serde(skip)]
    pub(crate) layers_dir: PathBuf,
}

impl ImageRecord {
    /// The image id: the hex of its config digest.
    pub fn id(&self) -> &str {
        self.config_digest.hex()
    }

    /// The layer directories, top-most first, as overlayfs's `lowerdir=` wants them.
    pub fn lower_dirs(&self) -> Vec<PathBuf> {
        self.layers
            .iter()
            .rev()
            .map(|d| layer_root(&self.layers_dir, d))
            .collect()
    }
}

/// `layers/sha256/<hex>`: one unpacked layer and its `layer.json`.
pub(crate) fn layer_dir(layers_dir: &Path, diff_id: &Sha256) -> PathBuf {
    layers_dir.join("sha256").join(diff_id.hex())
}

/// The overlayfs lower directory of a layer.
pub(crate) fn layer_root(layers_dir: &Path, diff_id: &Sha256) -> PathBuf {
    layer_dir(layers_dir, diff_id).join("root")
}

/// The canonical form of an image name, as stored in the name index: Docker Hub's implicit
/// prefixes dropped (`docker.io/library/busybox` → `busybox`) and `:latest` added when no tag
/// or digest is given. Only `[A-Za-z0-9._/:@-]`, starting with a letter or digit.
pub fn normalize_name(name: &str) -> Result<String, NameError> {
    let bad = |reason| NameError {
        name: name.to_owned(),
        reason,
    };
    if name.is_empty() || name.len() > 255 {
        return Err(bad("it must be 1 to 255 characters"));
    }
    if !name
        .as_bytes()
        .first()
        .is_some_and(u8::is_ascii_alphanumeric)
    {
        return Err(bad("it must start with a letter or digit"));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"._/:@-".contains(&b))
    {
        return Err(bad("only letters, digits and . _ / : @ - are allowed"));
    }
    let mut short = name;
    for prefix in [
        "docker.io/library/",
        "index.docker.io/library/",
        "docker.io/",
        "index.docker.io/",
    ] {
        if let Some(rest) = name.strip_prefix(prefix) {
            short = rest;
            break;
        }
    }
    let last = short.rsplit('/').next().unwrap_or(short);
    if short.contains('@') || last.contains(':') {
        return Ok(short.to_owned());
    }
    Ok(format!("{short}:latest"))
}

fn read(path: &Path) -> Result<Option<Vec<u8>>, RecordError> {
    match fs::read(path) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(RecordError::Io {
            path: path.to_path_buf(),
            source,
        }),
    }
}

fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), RecordError> {
    let bytes = serde_json::to_vec_pretty(value).map_err(|source| RecordError::Corrupt {
        path: path.to_path_buf(),
        source,
    })?;
    write_atomic(path, &bytes).map_err(|source| RecordError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Loads `images/<id>.json`; `None` when there is no such image.
pub(crate) fn load_record(
    images_dir: &Path,
    layers_dir: &Path,
    id: &Sha256,
) -> Result<Option<ImageRecord>, RecordError> {
    let path = images_dir.join(format!("{}.json", id.hex()));
    let Some(bytes) = read(&path)? else {
        return Ok(None);
    };
    let mut record: ImageRecord =
        serde_json::from_slice(&bytes).map_err(|source| RecordError::Corrupt { path, source })?;
    record.layers_dir = layers_dir.to_path_buf();
    Ok(Some(record))
}

pub(crate) fn save_record(images_dir: &Path, record: &ImageRecord) -> Result<(), RecordError> {
    write_json(&images_dir.join(format!("{}.json", record.id())), record)
}

/// `names.json`: normalized name → image id.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct NameIndex {
    pub names: BTreeMap<String, Sha256>,
}

impl NameIndex {
    pub(crate) fn load(path: &Path) -> Result<Self, RecordError> {
        let Some(bytes) = read(path)? else {
            return Ok(Self::default());
        };
        serde_json::from_slice(&bytes).map_err(|source| RecordError::Corrupt {
            path: path.to_path_buf(),
            source,
        })
    }

    pub(crate) fn save(&self, path: &Path) -> Result<(), RecordError> {
        write_json(path, self)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn names_normalize() {
        for (given, want) in [
            ("busybox", "busybox:latest"),
            ("busybox:1.36", "busybox:1.36"),
            ("docker.io/library/busybox", "busybox:latest"),
            ("docker.io/foo/bar:v1", "foo/bar:v1"),
            ("localhost:5000/x", "localhost:5000/x:latest"),
            ("ghcr.io/o/i@sha256:abc", "ghcr.io/o/i@sha256:abc"),
            ("bottle-test", "bottle-test:latest"),
        ] {
            assert_eq!(normalize_name(given).unwrap(), want, "{given}");
        }
        for bad in ["", "-rf", "a b", "/abs", "x;y", &"a".repeat(256)] {
            assert!(normalize_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn runtime_config_round_trips_through_oci() {
        let rc = RuntimeConfig {
            env: vec!["PATH=/bin".into()],
            entrypoint: vec!["/bin/sh".into()],
            cmd: vec!["-c".into(), "true".into()],
            working_dir: Some("/home".into()),
            user: Some("1000:1000".into()),
        };
        let mut config = ImageConfiguration::default();
        config.set_config(Some(rc.to_oci()));
        assert_eq!(RuntimeConfig::from_oci(&config), rc);
        assert_eq!(rc.args(), ["/bin/sh", "-c", "true"]);
    }
}
