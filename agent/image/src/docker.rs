//! `docker save` / `podman save` archives, unpacked: `manifest.json` naming a config and the
//! layer tars by path.
//!
//! The format has no manifest digest and no layer digests; what can be checked is checked:
//! the config against the digest in its file name (`<hex>.json`, or `blobs/sha256/<hex>` in
//! Docker ≥ 25's layout), layers named `blobs/sha256/<hex>` against that, and every layer's
//! uncompressed stream against the config's diff_ids — which the config digest covers, so the
//! image is as verified as its config. Layers may be plain tar or compressed: the store
//! decides by magic bytes.
//!
//! Docker ≥ 25 archives are also OCI layouts; the store reads those as layouts (more digests
//! to check) and takes only the `RepoTags` from here.

use std::path::Path;

use serde::Deserialize;

use crate::blobs::{read_json, BlobError};
use crate::digest::{DigestError, Sha256};
use crate::limits::{check_layers, LimitError, Limits};
use crate::paths::{self, PathProblem};
use crate::plan::{check_layer_count, parse_config, ConfigError, JsonBlob, Plan, PlanLayer};
use crate::record::{normalize_name, SourceKind};

#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    #[error("manifest.json cannot be read: {0}")]
    Parse(#[source] serde_json::Error),
    #[error("manifest.json lists no images")]
    Empty,
    #[error("the archive holds {count} images ({tags}); say which with a name")]
    Ambiguous { count: usize, tags: String },
    #[error("manifest.json names {path:?}: {problem}")]
    BadPath {
        path: String,
        #[source]
        problem: PathProblem,
    },
    #[error(transparent)]
    Blob(#[from] BlobError),
    #[error(transparent)]
    Digest(#[from] DigestError),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Limit(#[from] LimitError),
}

type Result<T, E = DockerError> = std::result::Result<T, E>;

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Entry {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

impl Entry {
    fn tags(&self) -> Vec<String> {
        self.repo_tags
            .iter()
            .flatten()
            .filter_map(|t| normalize_name(t).ok())
            .collect()
    }
}

fn entries(dir: &Path, limits: &Limits) -> Result<Vec<Entry>> {
    let bytes = read_json(
        &dir.join("manifest.json"),
        "manifest.json",
        limits.max_json_bytes,
    )?;
    serde_json::from_slice(&bytes).map_err(DockerError::Parse)
}

/// Plans the import of the unpacked archive in `dir`; `want` (normalized) chooses among
/// several images by their `RepoTags`.
pub(crate) fn plan(dir: &Path, owned: bool, want: Option<&str>, limits: &Limits) -> Result<Plan> {
    let all = entries(dir, limits)?;
    let entry = choose(all, want)?;
    let max_path = limits.max_path_bytes;
    let rel = |p: &str| {
        paths::relative_str(p, max_path).map_err(|problem| DockerError::BadPath {
            path: p.to_owned(),
            problem,
        })
    };

    let config_path = dir.join(rel(&entry.config)?);
    let bytes = read_json(&config_path, "the image config", limits.max_json_bytes)?;
    let config = JsonBlob::new(bytes);
    if let Some(named) = config_digest_in_name(&entry.config) {
        config
            .digest
            .check(&named, format!("config {}", entry.config))?;
    }
    let parsed = parse_config(&config.bytes, limits)?;
    check_layers(entry.layers.len(), limits)?;
    check_layer_count(entry.layers.len(), &parsed)?;

    let mut layers = Vec::with_capacity(entry.layers.len());
    for (path, diff_id) in entry.layers.iter().zip(&parsed.diff_ids) {
        layers.push(PlanLayer {
            file: dir.join(rel(path)?),
            owned,
            digest: blob_digest_in_name(path),
            size: None,
            compression: None,
            diff_id: diff_id.clone(),
            keep_blob: true,
        });
    }
    Ok(Plan {
        kind: SourceKind::DockerArchive,
        manifest: None,
        config,
        names: entry.tags(),
        parsed,
        layers,
    })
}

/// The `RepoTags` that `manifest.json` in `dir` gives the image with this config, if any.
pub(crate) fn repo_tags_for(dir: &Path, config: &Sha256, limits: &Limits) -> Vec<String> {
    let Ok(all) = entries(dir, limits) else {
        return Vec::new();
    };
    all.iter()
        .filter(|e| {
            blob_digest_in_name(&e.config)
                .or_else(|| config_digest_in_name(&e.config))
                .as_ref()
                == Some(config)
        })
        .flat_map(Entry::tags)
        .collect()
}

fn choose(mut all: Vec<Entry>, want: Option<&str>) -> Result<Entry> {
    if let (true, Some(want)) = (all.len() > 1, want) {
        let (named, others): (Vec<Entry>, Vec<Entry>) = all
            .into_iter()
            .partition(|e| e.tags().iter().any(|t| t == want));
        all = if named.is_empty() { others } else { named };
    }
    match all.len() {
        0 => Err(DockerError::Empty),
        1 => all.pop().ok_or(DockerError::Empty),
        count => Err(DockerError::Ambiguous {
            count,
            tags: all
                .iter()
                .map(|e| e.tags().join(" "))
                .collect::<Vec<_>>()
                .join(", "),
        }),
    }
}

/// `blobs/sha256/<hex>` (Docker ≥ 25) names its digest.
fn blob_digest_in_name(path: &str) -> Option<Sha256> {
    Sha256::from_hex(path.strip_prefix("blobs/sha256/")?).ok()
}

/// A config named `<hex>.json` (older Docker, podman) or `blobs/sha256/<hex>`.
fn config_digest_in_name(path: &str) -> Option<Sha256> {
    blob_digest_in_name(path).or_else(|| Sha256::from_hex(path.strip_suffix(".json")?).ok())
}
