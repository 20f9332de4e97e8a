//! `GET /v1/images` and `POST /v1/images`: the agent's image cache as the client sees it.

use serde::{Deserialize, Serialize};

/// `POST /v1/images` (root only): import an image from a path on the agent's host — a rootfs
/// directory, an OCI layout, or a `docker save` / oci-archive tarball.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImportImage {
    /// Absolute path on the agent's host.
    pub path: String,
    /// Name to give it (`bottle-claude`, `team/app:1`); the archive's own name when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// One image in the cache.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageInfo {
    /// The config digest's hex.
    pub id: String,
    pub names: Vec<String>,
    pub layers: usize,
    /// `rootfs-dir`, `oci-layout`, `oci-archive`, `docker-archive` or `registry`.
    pub source: String,
}

impl ImageInfo {
    /// Whether `name` (as given, or with `:latest`) finds this image.
    pub fn answers_to(&self, name: &str) -> bool {
        let tagged = if name.contains(':') {
            name.to_owned()
        } else {
            format!("{name}:latest")
        };
        self.id == name || self.names.iter().any(|n| n == name || *n == tagged)
    }
}
