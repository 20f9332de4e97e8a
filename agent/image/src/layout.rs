//! OCI image layouts (`oci-layout`, `index.json`, `blobs/sha256/…`): the directory form, and
//! the inside of an `oci-archive` or of a Docker ≥ 25 `docker save`.
//!
//! From `index.json` one manifest is chosen: the only one; or the one whose
//! `org.opencontainers.image.ref.name` / `io.containerd.image.name` matches the name asked
//! for; or, through nested indexes (multi-platform images), the one for linux on this host's
//! architecture. Every document on the way is read bounded and checked against the digest of
//! the descriptor that led to it.

use std::path::{Path, PathBuf};

use oci_spec::image::{Descriptor, ImageIndex, ImageManifest, MediaType};

use crate::blobs::{read_json, read_verified, BlobError};
use crate::compress::Compression;
use crate::digest::{DigestError, Sha256};
use crate::limits::{check_layers, LimitError, Limits};
use crate::plan::{check_layer_count, parse_config, ConfigError, JsonBlob, Plan, PlanLayer};
use crate::record::{normalize_name, SourceKind};

const REF_NAME: &str = "org.opencontainers.image.ref.name";
const CONTAINERD_NAME: &str = "io.containerd.image.name";
const DOCKER_INDEX: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Index → index → manifest is the deepest real images go; a little slack.
const MAX_DEPTH: usize = 4;

#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    #[error("{what} cannot be read: {source}")]
    Parse {
        what: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("{what} lists no images")]
    Empty { what: String },
    #[error("{what} has {count} images ({refs}); say which with a name")]
    Ambiguous {
        what: String,
        count: usize,
        refs: String,
    },
    #[error("{what} has no image for linux/{arch} (it has: {found})")]
    NoPlatform {
        what: String,
        arch: &'static str,
        found: String,
    },
    #[error("{what} has media type {media_type:?}, neither an image index nor a manifest")]
    MediaType { what: String, media_type: String },
    #[error("image indexes nested more than {MAX_DEPTH} deep")]
    TooDeep,
    #[error(transparent)]
    Blob(#[from] BlobError),
    #[error(transparent)]
    Digest(#[from] DigestError),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Limit(#[from] LimitError),
}

type Result<T, E = LayoutError> = std::result::Result<T, E>;

/// Plans the import of the layout in `dir`. `owned`: `dir` is this import's staging area.
/// `want` is the normalized name asked for, used only to choose among several images.
pub(crate) fn plan(
    dir: &Path,
    owned: bool,
    want: Option<&str>,
    kind: SourceKind,
    limits: &Limits,
) -> Result<Plan> {
    let max = limits.max_json_bytes;
    let layout: serde_json::Value = parse(
        &read_json(&dir.join("oci-layout"), "oci-layout", max)?,
        "oci-layout",
    )?;
    if !layout["imageLayoutVersion"].is_string() {
        return Err(LayoutError::Empty {
            what: "oci-layout (no imageLayoutVersion)".into(),
        });
    }
    let index: ImageIndex = parse(
        &read_json(&dir.join("index.json"), "index.json", max)?,
        "index.json",
    )?;
    let mut candidates: Vec<&Descriptor> = index.manifests().iter().collect();
    if let (true, Some(want)) = (candidates.len() > 1, want) {
        let named: Vec<&Descriptor> = candidates
            .iter()
            .copied()
            .filter(|d| ref_matches(d, want))
            .collect();
        if !named.is_empty() {
            candidates = named;
        }
    }
    let top = choose(&candidates, "index.json")?.clone();
    let names = names_of(&top);

    let mut desc = top;
    let mut depth = 0;
    while is_index(desc.media_type()) {
        depth += 1;
        if depth > MAX_DEPTH {
            return Err(LayoutError::TooDeep);
        }
        let digest = Sha256::parse(desc.digest().as_ref())?;
        let what = format!("image index {digest}");
        let bytes = read_verified(
            &blob_path(dir, &digest),
            &what,
            &digest,
            Some(desc.size()),
            max,
        )?;
        let nested: ImageIndex = parse(&bytes, &what)?;
        let all: Vec<&Descriptor> = nested.manifests().iter().collect();
        desc = choose(&all, &what)?.clone();
    }
    if !is_manifest(desc.media_type()) {
        return Err(LayoutError::MediaType {
            what: format!("{}", desc.digest()),
            media_type: desc.media_type().to_string(),
        });
    }

    let manifest_digest = Sha256::parse(desc.digest().as_ref())?;
    let what = format!("manifest {manifest_digest}");
    let manifest_bytes = read_verified(
        &blob_path(dir, &manifest_digest),
        &what,
        &manifest_digest,
        Some(desc.size()),
        max,
    )?;
    let manifest: ImageManifest = parse(&manifest_bytes, &what)?;
    check_layers(manifest.layers().len(), limits)?;

    let config_desc = manifest.config();
    let config_digest = Sha256::parse(config_desc.digest().as_ref())?;
    let config_bytes = read_verified(
        &blob_path(dir, &config_digest),
        &format!("config {config_digest}"),
        &config_digest,
        Some(config_desc.size()),
        max,
    )?;
    let parsed = parse_config(&config_bytes, limits)?;
    check_layer_count(manifest.layers().len(), &parsed)?;

    let mut layers = Vec::with_capacity(manifest.layers().len());
    for (layer, diff_id) in manifest.layers().iter().zip(&parsed.diff_ids) {
        let digest = Sha256::parse(layer.digest().as_ref())?;
        layers.push(PlanLayer {
            file: blob_path(dir, &digest),
            owned,
            digest: Some(digest),
            size: Some(layer.size()),
            compression: Compression::from_media_type(layer.media_type().as_ref()),
            diff_id: diff_id.clone(),
            keep_blob: true,
        });
    }
    Ok(Plan {
        kind,
        manifest: Some(JsonBlob {
            digest: manifest_digest,
            bytes: manifest_bytes,
        }),
        config: JsonBlob {
            digest: config_digest,
            bytes: config_bytes,
        },
        parsed,
        layers,
        names,
    })
}

fn parse<T: serde::de::DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|source| LayoutError::Parse {
        what: what.to_owned(),
        source,
    })
}

pub(crate) fn blob_path(dir: &Path, digest: &Sha256) -> PathBuf {
    dir.join("blobs").join("sha256").join(digest.hex())
}

fn is_index(m: &MediaType) -> bool {
    matches!(m, MediaType::ImageIndex) || m.as_ref() == DOCKER_INDEX
}

fn is_manifest(m: &MediaType) -> bool {
    matches!(m, MediaType::ImageManifest) || m.as_ref() == DOCKER_MANIFEST
}

fn annotation<'a>(d: &'a Descriptor, key: &str) -> Option<&'a str> {
    d.annotations().as_ref()?.get(key).map(String::as_str)
}

/// Whether a descriptor carries the name asked for (`want` is normalized; a bare tag such as
/// `latest` in `ref.name` matches `want`'s tag).
fn ref_matches(d: &Descriptor, want: &str) -> bool {
    [REF_NAME, CONTAINERD_NAME]
        .iter()
        .filter_map(|k| annotation(d, k))
        .any(|v| normalize_name(v).is_ok_and(|n| n == want) || want.ends_with(&format!(":{v}")))
}

/// Names worth indexing: a containerd name, or a `ref.name` that is a full reference rather
/// than a bare tag such as `latest`.
fn names_of(d: &Descriptor) -> Vec<String> {
    let mut names = Vec::new();
    if let Some(n) = annotation(d, CONTAINERD_NAME).and_then(|v| normalize_name(v).ok()) {
        names.push(n);
    }
    if let Some(v) = annotation(d, REF_NAME).filter(|v| v.contains(':') || v.contains('/')) {
        if let Ok(n) = normalize_name(v) {
            if !names.contains(&n) {
                names.push(n);
            }
        }
    }
    names
}

fn choose<'a>(candidates: &[&'a Descriptor], what: &str) -> Result<&'a Descriptor> {
    match candidates {
        [] => {
            return Err(LayoutError::Empty {
                what: what.to_owned(),
            })
        }
        [one] => return Ok(one),
        _ => {}
    }
    let arch = host_arch();
    let on_host = candidates.iter().find(|d| {
        d.platform()
            .as_ref()
            .is_some_and(|p| p.os().to_string() == "linux" && p.architecture().to_string() == arch)
    });
    if let Some(d) = on_host {
        return Ok(d);
    }
    if candidates.iter().all(|d| d.platform().is_none()) {
        let refs: Vec<&str> = candidates
            .iter()
            .map(|d| {
                annotation(d, REF_NAME)
                    .or(annotation(d, CONTAINERD_NAME))
                    .unwrap_or("unnamed")
            })
            .collect();
        return Err(LayoutError::Ambiguous {
            what: what.to_owned(),
            count: candidates.len(),
            refs: refs.join(", "),
        });
    }
    let found: Vec<String> = candidates
        .iter()
        .filter_map(|d| d.platform().as_ref())
        .map(|p| format!("{}/{}", p.os(), p.architecture()))
        .collect();
    Err(LayoutError::NoPlatform {
        what: what.to_owned(),
        arch,
        found: found.join(", "),
    })
}

/// This host's architecture in the Go names OCI platforms use.
pub(crate) fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "arm" => "arm",
        "powerpc64" if cfg!(target_endian = "little") => "ppc64le",
        "powerpc64" => "ppc64",
        "s390x" => "s390x",
        "riscv64" => "riscv64",
        "loongarch64" => "loong64",
        other => other,
    }
}
