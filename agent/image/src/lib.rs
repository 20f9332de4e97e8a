//! Container images for bottles.
//!
//! A bottle's workload runs from an OCI image, and images are hostile input: a layer is a tar
//! stream written by whoever published the image. This crate turns the formats people have at
//! hand (a rootfs directory, an OCI image layout, a `docker save` / `podman save` tarball, an
//! `oci-archive`) into a cache the launcher can stack with overlayfs:
//!
//! - every blob is checked against the digest that names it, every layer's uncompressed stream
//!   against the config's `rootfs.diff_ids`;
//! - each layer is unpacked once, into `layers/sha256/<diff_id>/root`, with paths that would
//!   leave the layer refused and whiteouts converted to overlayfs's own format, so the layer
//!   directories can be given to overlayfs as they are, read-only;
//! - an import either completes or leaves nothing behind (everything is staged under `tmp/`
//!   and renamed into place at the end);
//! - every size an import can inflate is bounded ([`Limits`]).
//!
//! Each bottle then gets an overlay whose lower layers are the cache and whose upper is its
//! own ([`mount_overlay`]), so nothing a bottle does reaches the cache.
//!
//! On-disk layout under the store root (root-only, 0700):
//!
//! ```text
//! blobs/sha256/<hex>              verified blobs: manifests, configs, layer archives
//! layers/sha256/<diff_id>/root/   one unpacked layer: an overlayfs lower directory
//! layers/sha256/<diff_id>/layer.json
//! images/<id>.json                one ImageRecord per image (id = config digest)
//! names.json                      name -> id
//! import.lock                     imports take it exclusively
//! tmp/                            staging for imports in progress
//! ```

mod archive;
mod blobs;
mod compress;
mod digest;
mod docker;
mod fsutil;
mod layout;
mod limits;
mod overlay;
mod paths;
mod plan;
mod pull;
mod record;
mod rootfs;
mod store;
mod unpack;
pub mod write;

#[cfg(test)]
mod tests;

pub use archive::ArchiveError;
pub use blobs::BlobError;
pub use compress::Compression;
pub use digest::{DigestError, Sha256};
pub use docker::DockerError;
pub use layout::LayoutError;
pub use limits::{LimitError, Limits};
pub use overlay::{mount_overlay, mount_scratch_overlay, unmount, OverlayError};
pub use paths::PathProblem;
pub use plan::ConfigError;
pub use pull::PullError;
pub use record::{normalize_name, ImageRecord, NameError, RecordError, RuntimeConfig, SourceKind};
pub use rootfs::RootfsError;
pub use store::{ImageStore, StoreError, StoreStats};
pub use unpack::UnpackError;

/// Everything an image operation can fail with, gathered from the modules' own errors.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Overlay(#[from] OverlayError),
    #[error(transparent)]
    Write(#[from] write::WriteError),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
