//! `GET /v1/images` (anyone) and `POST /v1/images` (root): the image cache `bottle run`
//! launches from. Importing reads a host path with the agent's privileges, so only root may
//! name one (as with `bottle run --image PATH`); the store itself refuses hostile archives.

use std::path::{Path, PathBuf};

use bottle_api::images::{ImageInfo, ImportImage};
use bottle_api::{ApiError, ErrorCode};
use bottle_image::{ImageRecord, ImageStore, SourceKind};

use crate::manager::Caller;

fn info(r: &ImageRecord) -> ImageInfo {
    ImageInfo {
        id: r.id().to_owned(),
        names: r.names.clone(),
        layers: r.layers.len(),
        source: match r.source {
            SourceKind::RootfsDir => "rootfs-dir",
            SourceKind::OciLayout => "oci-layout",
            SourceKind::OciArchive => "oci-archive",
            SourceKind::DockerArchive => "docker-archive",
            SourceKind::Registry => "registry",
        }
        .into(),
    }
}

fn store_error(e: bottle_image::StoreError) -> ApiError {
    ApiError::new(ErrorCode::BadRequest, e.to_string())
}

/// Every image in the cache (an empty list when there is no cache yet).
pub async fn list(image_dir: PathBuf) -> Result<Vec<ImageInfo>, ApiError> {
    tokio::task::spawn_blocking(move || {
        if !image_dir.exists() {
            return Ok(vec![]);
        }
        let store = ImageStore::open(&image_dir).map_err(store_error)?;
        Ok(store
            .list()
            .map_err(store_error)?
            .iter()
            .map(info)
            .collect())
    })
    .await
    .map_err(|e| ApiError::new(ErrorCode::Internal, e.to_string()))?
}

/// Imports `req.path` into the cache (root only).
pub async fn import(
    caller: Caller,
    image_dir: PathBuf,
    req: ImportImage,
) -> Result<ImageInfo, ApiError> {
    if !caller.is_root() {
        return Err(ApiError::new(
            ErrorCode::Forbidden,
            "only root may import an image from a path: run it with sudo",
        ));
    }
    if !req.path.starts_with('/') || req.path.contains('\0') {
        return Err(ApiError::new(
            ErrorCode::BadRequest,
            format!("image path {:?} must be absolute", req.path),
        ));
    }
    tokio::task::spawn_blocking(move || {
        let store = ImageStore::open(&image_dir).map_err(store_error)?;
        let record = store
            .import(Path::new(&req.path), req.name.as_deref())
            .map_err(store_error)?;
        Ok(info(&record))
    })
    .await
    .map_err(|e| ApiError::new(ErrorCode::Internal, e.to_string()))?
}
