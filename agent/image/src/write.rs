//! Writing small images in the formats the store imports: an OCI image layout, an
//! oci-archive, and `docker save` archives (the classic layout and Docker ≥ 25's OCI one).
//!
//! For `cargo xtask images` (the test image) and this crate's tests, so both sides of every
//! format are exercised by the same code. Not a general exporter: layers are held in memory,
//! and everything is deterministic (fixed mtimes, no timestamps in the config), so the same
//! input always gives the same digests.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use oci_spec::image::{
    Descriptor, Digest, ImageIndexBuilder, ImageManifestBuilder, MediaType, OciLayoutBuilder,
};
use serde::Serialize;

use crate::compress::Compression;
use crate::digest::Sha256;
use crate::plan::config_json;
use crate::record::RuntimeConfig;

#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("building a tar stream: {0}")]
    Tar(#[source] io::Error),
    #[error("compressing a layer: {0}")]
    Compress(#[source] io::Error),
    #[error("serializing image JSON: {0}")]
    Json(#[source] serde_json::Error),
    #[error("building image JSON: {0}")]
    Spec(#[source] oci_spec::OciSpecError),
}

type Result<T, E = WriteError> = std::result::Result<T, E>;

/// The mtime every entry gets: fixed, so image digests are reproducible.
const MTIME: u64 = 0;

/// A layer's tar stream, built in memory, entries in the order they are added.
pub struct LayerBuilder {
    tar: tar::Builder<Vec<u8>>,
}

impl Default for LayerBuilder {
    fn default() -> Self {
        Self::new()
    }
}

fn header(kind: tar::EntryType, mode: u32, uid: u32, gid: u32) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_uid(u64::from(uid));
    h.set_gid(u64::from(gid));
    h.set_mtime(MTIME);
    h.set_size(0);
    h
}

impl LayerBuilder {
    pub fn new() -> Self {
        Self {
            tar: tar::Builder::new(Vec::new()),
        }
    }

    pub fn dir(&mut self, path: &str, mode: u32, uid: u32, gid: u32) -> Result<&mut Self> {
        let mut h = header(tar::EntryType::Directory, mode, uid, gid);
        self.tar
            .append_data(&mut h, path, io::empty())
            .map_err(WriteError::Tar)?;
        Ok(self)
    }

    pub fn file(
        &mut self,
        path: &str,
        mode: u32,
        uid: u32,
        gid: u32,
        data: &[u8],
    ) -> Result<&mut Self> {
        let mut h = header(tar::EntryType::Regular, mode, uid, gid);
        h.set_size(data.len() as u64);
        self.tar
            .append_data(&mut h, path, data)
            .map_err(WriteError::Tar)?;
        Ok(self)
    }

    pub fn symlink(&mut self, path: &str, target: &str) -> Result<&mut Self> {
        let mut h = header(tar::EntryType::Symlink, 0o777, 0, 0);
        self.tar
            .append_link(&mut h, path, target)
            .map_err(WriteError::Tar)?;
        Ok(self)
    }

    pub fn hardlink(&mut self, path: &str, target: &str) -> Result<&mut Self> {
        let mut h = header(tar::EntryType::Link, 0o644, 0, 0);
        self.tar
            .append_link(&mut h, path, target)
            .map_err(WriteError::Tar)?;
        Ok(self)
    }

    /// Deletes `path` from the layers below (an OCI `.wh.<name>` entry).
    pub fn whiteout(&mut self, path: &str) -> Result<&mut Self> {
        let (dir, name) = path.rsplit_once('/').unwrap_or(("", path));
        let wh = match dir {
            "" => format!(".wh.{name}"),
            dir => format!("{dir}/.wh.{name}"),
        };
        self.file(&wh, 0o644, 0, 0, b"")
    }

    /// Hides everything the layers below have in directory `dir` (`.wh..wh..opq`).
    pub fn opaque(&mut self, dir: &str) -> Result<&mut Self> {
        self.file(&format!("{dir}/.wh..wh..opq"), 0o644, 0, 0, b"")
    }

    pub fn finish(self) -> Result<Vec<u8>> {
        self.tar.into_inner().map_err(WriteError::Tar)
    }
}

/// The classic `docker save` layout or Docker ≥ 25's (an OCI layout plus `manifest.json`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DockerFormat {
    Legacy,
    Oci,
}

pub(crate) struct Layer {
    pub(crate) diff_id: Sha256,
    pub(crate) blob: Vec<u8>,
    pub(crate) digest: Sha256,
    pub(crate) compression: Compression,
}

/// An image being written: a runtime config and layers, bottom first.
pub struct ImageWriter {
    config: RuntimeConfig,
    pub(crate) layers: Vec<Layer>,
}

/// The files of an image in one format: (path inside the layout or archive, content).
type Files = Vec<(String, Vec<u8>)>;

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct DockerEntry {
    config: String,
    repo_tags: Vec<String>,
    layers: Vec<String>,
}

impl ImageWriter {
    pub fn new(config: RuntimeConfig) -> Self {
        Self {
            config,
            layers: Vec::new(),
        }
    }

    /// Adds a layer from its uncompressed tar stream, stored compressed as asked.
    pub fn add_layer(&mut self, tar: &[u8], compression: Compression) -> Result<&mut Self> {
        let blob = match compression {
            Compression::None => tar.to_vec(),
            Compression::Gzip => {
                let mut gz =
                    flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
                gz.write_all(tar).map_err(WriteError::Compress)?;
                gz.finish().map_err(WriteError::Compress)?
            }
            Compression::Zstd => zstd::stream::encode_all(tar, 3).map_err(WriteError::Compress)?,
        };
        self.layers.push(Layer {
            diff_id: Sha256::of(tar),
            digest: Sha256::of(&blob),
            blob,
            compression,
        });
        Ok(self)
    }

    /// The image config (its digest is the image id the store will give it).
    pub fn config_json(&self) -> Result<Vec<u8>> {
        let diff_ids: Vec<Sha256> = self.layers.iter().map(|l| l.diff_id.clone()).collect();
        config_json(&self.config, &diff_ids).map_err(WriteError::Json)
    }

    /// Writes an OCI image layout into `dir` (created if missing) and returns the manifest
    /// digest. `ref_name` goes into `org.opencontainers.image.ref.name`.
    pub fn write_oci_layout(&self, dir: &Path, ref_name: &str) -> Result<Sha256> {
        let (files, manifest) = self.oci_files(ref_name, None)?;
        write_files(dir, &files)?;
        Ok(manifest)
    }

    /// Writes an oci-archive (a tar of an OCI image layout) and returns the manifest digest.
    pub fn write_oci_archive(&self, path: &Path, ref_name: &str) -> Result<Sha256> {
        let (files, manifest) = self.oci_files(ref_name, None)?;
        write_tar(path, &files)?;
        Ok(manifest)
    }

    /// Writes a `docker save` archive with `repo_tag` (e.g. `bottle-test:latest`).
    pub fn write_docker_archive(
        &self,
        path: &Path,
        repo_tag: &str,
        format: DockerFormat,
    ) -> Result<()> {
        let files = match format {
            DockerFormat::Legacy => self.docker_legacy_files(repo_tag)?,
            DockerFormat::Oci => self.docker_oci_files(repo_tag)?,
        };
        write_tar(path, &files)
    }

    fn descriptor(media_type: MediaType, bytes: &[u8], digest: &Sha256) -> Result<Descriptor> {
        let digest = Digest::from_str(&digest.to_string()).map_err(WriteError::Spec)?;
        Ok(Descriptor::new(media_type, bytes.len() as u64, digest))
    }

    /// The OCI layout's files; `docker_name` adds `io.containerd.image.name` as Docker does.
    fn oci_files(&self, ref_name: &str, docker_name: Option<&str>) -> Result<(Files, Sha256)> {
        let config = self.config_json()?;
        let config_digest = Sha256::of(&config);
        let layers = self
            .layers
            .iter()
            .map(|l| {
                Self::descriptor(
                    MediaType::from(l.compression.media_type()),
                    &l.blob,
                    &l.digest,
                )
            })
            .collect::<Result<Vec<_>>>()?;
        let manifest = ImageManifestBuilder::default()
            .schema_version(2u32)
            .media_type(MediaType::ImageManifest)
            .config(Self::descriptor(
                MediaType::ImageConfig,
                &config,
                &config_digest,
            )?)
            .layers(layers)
            .build()
            .map_err(WriteError::Spec)?;
        let manifest = serde_json::to_vec(&manifest).map_err(WriteError::Json)?;
        let manifest_digest = Sha256::of(&manifest);
        let mut desc = Self::descriptor(MediaType::ImageManifest, &manifest, &manifest_digest)?;
        let mut annotations = std::collections::HashMap::new();
        annotations.insert(
            "org.opencontainers.image.ref.name".to_owned(),
            ref_name.to_owned(),
        );
        if let Some(name) = docker_name {
            annotations.insert("io.containerd.image.name".to_owned(), name.to_owned());
        }
        desc.set_annotations(Some(annotations));
        let index = ImageIndexBuilder::default()
            .schema_version(2u32)
            .media_type(MediaType::ImageIndex)
            .manifests(vec![desc])
            .build()
            .map_err(WriteError::Spec)?;
        let layout = OciLayoutBuilder::default()
            .image_layout_version("1.0.0")
            .build()
            .map_err(WriteError::Spec)?;

        let blob = |d: &Sha256| format!("blobs/sha256/{}", d.hex());
        let mut files: Files = vec![
            (
                "oci-layout".into(),
                serde_json::to_vec(&layout).map_err(WriteError::Json)?,
            ),
            (
                "index.json".into(),
                serde_json::to_vec(&index).map_err(WriteError::Json)?,
            ),
            (blob(&manifest_digest), manifest),
            (blob(&config_digest), config),
        ];
        for l in &self.layers {
            files.push((blob(&l.digest), l.blob.clone()));
        }
        Ok((files, manifest_digest))
    }

    fn docker_legacy_files(&self, repo_tag: &str) -> Result<Files> {
        let config = self.config_json()?;
        let config_name = format!("{}.json", Sha256::of(&config).hex());
        let mut files: Files = Vec::new();
        let mut layers = Vec::new();
        for l in &self.layers {
            let name = format!("{}/layer.tar", l.digest.hex());
            files.push((name.clone(), l.blob.clone()));
            layers.push(name);
        }
        let manifest = vec![DockerEntry {
            config: config_name.clone(),
            repo_tags: vec![repo_tag.to_owned()],
            layers,
        }];
        files.push((config_name, config));
        // `docker save` writes manifest.json last: the importer may not rely on order.
        files.push((
            "manifest.json".into(),
            serde_json::to_vec(&manifest).map_err(WriteError::Json)?,
        ));
        Ok(files)
    }

    fn docker_oci_files(&self, repo_tag: &str) -> Result<Files> {
        let tag = repo_tag.rsplit_once(':').map_or("latest", |(_, t)| t);
        let (mut files, _) = self.oci_files(tag, Some(&format!("docker.io/library/{repo_tag}")))?;
        let config = self.config_json()?;
        let manifest = vec![DockerEntry {
            config: format!("blobs/sha256/{}", Sha256::of(&config).hex()),
            repo_tags: vec![repo_tag.to_owned()],
            layers: self
                .layers
                .iter()
                .map(|l| format!("blobs/sha256/{}", l.digest.hex()))
                .collect(),
        }];
        files.push((
            "manifest.json".into(),
            serde_json::to_vec(&manifest).map_err(WriteError::Json)?,
        ));
        Ok(files)
    }
}

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> WriteError + '_ {
    move |source| WriteError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn write_files(dir: &Path, files: &Files) -> Result<()> {
    for (name, bytes) in files {
        let path = dir.join(name);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).map_err(io_at(parent))?;
        }
        fs::write(&path, bytes).map_err(io_at(&path))?;
    }
    Ok(())
}

fn write_tar(path: &Path, files: &Files) -> Result<()> {
    let file = File::create(path).map_err(io_at(path))?;
    let mut tar = tar::Builder::new(io::BufWriter::new(file));
    for (name, bytes) in files {
        let mut h = header(tar::EntryType::Regular, 0o644, 0, 0);
        h.set_size(bytes.len() as u64);
        tar.append_data(&mut h, name, bytes.as_slice())
            .map_err(io_at(path))?;
    }
    tar.into_inner()
        .and_then(|w| w.into_inner().map_err(io::IntoInnerError::into_error))
        .and_then(|f| f.sync_all())
        .map_err(io_at(path))
}
