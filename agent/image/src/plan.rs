//! What every source format is reduced to before anything reaches the cache: the verified
//! manifest and config, and for each layer where its blob is and what it must hash to.
//!
//! The readers of each format (`layout`, `docker`, `rootfs`) build a [`Plan`]; the store
//! alone stages, unpacks and commits it, so the checks on layers live in one place.

use std::path::PathBuf;

use oci_spec::image::{Arch, ImageConfiguration, Os, RootFs};

use crate::compress::Compression;
use crate::digest::{DigestError, Sha256};
use crate::layout::host_arch;
use crate::limits::{check_layers, LimitError, Limits};
use crate::record::{RuntimeConfig, SourceKind};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("the image config cannot be read: {0}")]
    Parse(#[source] serde_json::Error),
    #[error("the image is built for {os:?}, not linux")]
    NotLinux { os: String },
    #[error("the image config's rootfs.type is {0:?}, not \"layers\"")]
    RootfsType(String),
    #[error("the image config's rootfs.diff_ids: {0}")]
    DiffId(#[source] DigestError),
    #[error("the manifest lists {layers} layers but the config has {diff_ids} diff_ids")]
    LayerCount { layers: usize, diff_ids: usize },
    #[error(transparent)]
    Limit(#[from] LimitError),
}

/// A JSON blob whose digest has been checked (or computed, for documents we made).
#[derive(Debug, Clone)]
pub(crate) struct JsonBlob {
    pub digest: Sha256,
    pub bytes: Vec<u8>,
}

impl JsonBlob {
    pub(crate) fn new(bytes: Vec<u8>) -> Self {
        Self {
            digest: Sha256::of(&bytes),
            bytes,
        }
    }
}

/// One layer to import.
#[derive(Debug)]
pub(crate) struct PlanLayer {
    /// The blob as the source has it.
    pub file: PathBuf,
    /// The file is in this import's staging area: it may be hashed in place and moved.
    pub owned: bool,
    /// The blob's digest when the source names one (OCI descriptors, `blobs/sha256/…` paths).
    pub digest: Option<Sha256>,
    pub size: Option<u64>,
    /// `None`: decide by magic bytes.
    pub compression: Option<Compression>,
    pub diff_id: Sha256,
    /// Keep the blob in `blobs/` after unpacking (not for a rootfs directory's tar stream).
    pub keep_blob: bool,
}

/// The parts of an image config the store keeps.
#[derive(Debug, Clone)]
pub(crate) struct ParsedConfig {
    pub runtime: RuntimeConfig,
    pub architecture: String,
    pub os: String,
    pub diff_ids: Vec<Sha256>,
}

#[derive(Debug)]
pub(crate) struct Plan {
    pub kind: SourceKind,
    pub manifest: Option<JsonBlob>,
    pub config: JsonBlob,
    pub parsed: ParsedConfig,
    pub layers: Vec<PlanLayer>,
    /// Names the source gives the image (`RepoTags`, annotations).
    pub names: Vec<String>,
}

/// Parses an image config (OCI or Docker: same shape) and checks what the store relies on.
pub(crate) fn parse_config(bytes: &[u8], limits: &Limits) -> Result<ParsedConfig, ConfigError> {
    let config: ImageConfiguration = serde_json::from_slice(bytes).map_err(ConfigError::Parse)?;
    let os = config.os().to_string();
    if os != "linux" {
        return Err(ConfigError::NotLinux { os });
    }
    let rootfs = config.rootfs();
    if rootfs.typ() != "layers" {
        return Err(ConfigError::RootfsType(rootfs.typ().clone()));
    }
    check_layers(rootfs.diff_ids().len(), limits)?;
    let diff_ids = rootfs
        .diff_ids()
        .iter()
        .map(|d| Sha256::parse(d))
        .collect::<Result<Vec<_>, _>>()
        .map_err(ConfigError::DiffId)?;
    Ok(ParsedConfig {
        runtime: RuntimeConfig::from_oci(&config),
        architecture: config.architecture().to_string(),
        os,
        diff_ids,
    })
}

/// The manifest's layer count must match the config's diff_ids.
pub(crate) fn check_layer_count(layers: usize, parsed: &ParsedConfig) -> Result<(), ConfigError> {
    if layers != parsed.diff_ids.len() {
        return Err(ConfigError::LayerCount {
            layers,
            diff_ids: parsed.diff_ids.len(),
        });
    }
    Ok(())
}

/// An image config for `runtime` over `diff_ids`, for this host's platform. No timestamps, so
/// the same input always gives the same config digest.
pub(crate) fn config_json(
    runtime: &RuntimeConfig,
    diff_ids: &[Sha256],
) -> Result<Vec<u8>, serde_json::Error> {
    let mut rootfs = RootFs::default();
    rootfs.set_diff_ids(diff_ids.iter().map(ToString::to_string).collect());
    let mut config = ImageConfiguration::default();
    config.set_architecture(Arch::from(host_arch()));
    config.set_os(Os::Linux);
    config.set_config(Some(runtime.to_oci()));
    config.set_rootfs(rootfs);
    serde_json::to_vec(&config)
}
