//! The image cache: importing (plan → stage → verify → unpack → commit), looking images up,
//! and resolving what a user typed after `--image`.
//!
//! An import holds `import.lock` (flock) from start to end, so imports — from any thread or
//! process — run one at a time; lookups need no lock, because every file they read is replaced
//! atomically. Everything an import makes goes under `tmp/import-…` first: blobs are copied
//! there while hashed, each missing layer is unpacked there and checked against its diff_id.
//! Only when every layer has passed are blobs and layer directories renamed into place, then
//! the record written, then the names. A failure at any point before that leaves nothing but
//! the staging directory, which is removed on the way out (and, after a crash, by the next
//! import). Layers are content-addressed: a layer already in the cache is never unpacked
//! again, and a rename that finds its target already there keeps what is there.

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use crate::archive::{self, ArchiveError};
use crate::blobs::{self, BlobError};
use crate::compress::{self, Compression};
use crate::digest::Sha256;
use crate::docker::{self, DockerError};
use crate::fsutil::{is_root, private_dir_all, remove_tree, unique_name, write_atomic, StagingDir};
use crate::layout::{self, LayoutError};
use crate::limits::{check_layers, LimitError, Limits, Meter};
use crate::plan::{ConfigError, Plan};
use crate::pull::{self, PullError};
use crate::record::{
    layer_dir, load_record, normalize_name, save_record, ImageRecord, NameError, NameIndex,
    RecordError, SourceKind,
};
use crate::rootfs::{self, RootfsError};
use crate::unpack::{self, Summary, UnpackError};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path}: no such file or directory")]
    SourceMissing { path: PathBuf },
    #[error("{path} is not an image: expected a rootfs directory, an OCI image layout, or a `docker save` / `podman save` / oci-archive tarball")]
    NotAnImage { path: PathBuf },
    #[error("image {name:?} is not a path and not in the image cache; import one with `bottle image import PATH --name {name}` (PATH: a rootfs directory, an OCI image layout, or a `docker save` / `podman save` / oci-archive tarball), or install skopeo so the agent can pull it")]
    NotFound { name: String },
    #[error("image {name:?} is in the cache but its layer {diff_id} is missing; import it again")]
    Damaged { name: String, diff_id: Sha256 },
    #[error("layer {index} ({diff_id}): {source}")]
    Layer {
        index: usize,
        diff_id: Sha256,
        #[source]
        source: UnpackError,
    },
    #[error("layer {index} ({diff_id}): {source}")]
    LayerBlob {
        index: usize,
        diff_id: Sha256,
        #[source]
        source: BlobError,
    },
    #[error("{path}: cannot take the import lock: {source}")]
    Lock {
        path: PathBuf,
        #[source]
        source: nix::Error,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Name(#[from] NameError),
    #[error(transparent)]
    Record(#[from] RecordError),
    #[error("OCI image layout: {0}")]
    Layout(#[from] LayoutError),
    #[error("docker archive: {0}")]
    Docker(#[from] DockerError),
    #[error("image archive: {0}")]
    Archive(#[from] ArchiveError),
    #[error("rootfs directory: {0}")]
    Rootfs(#[from] RootfsError),
    #[error(transparent)]
    Pull(#[from] PullError),
    #[error(transparent)]
    Blob(#[from] BlobError),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Limit(#[from] LimitError),
}

type Result<T, E = StoreError> = std::result::Result<T, E>;

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Counters since the store was opened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreStats {
    pub import_count: u64,
    pub import_fails: u64,
    pub layers_unpacked: u64,
    pub layers_reused: u64,
    pub pull_count: u64,
}

#[derive(Debug, Default)]
struct Counters {
    import_count: AtomicU64,
    import_fails: AtomicU64,
    layers_unpacked: AtomicU64,
    layers_reused: AtomicU64,
    pull_count: AtomicU64,
}

/// `layers/sha256/<hex>/layer.json`: written inside the staged layer, so a layer directory
/// that exists is complete.
#[derive(Debug, Serialize, Deserialize)]
struct LayerMeta {
    diff_id: Sha256,
    /// Unpacked as root: owners applied, whiteouts in overlayfs form.
    privileged: bool,
    #[serde(flatten)]
    summary: Summary,
}

/// The content-addressed image cache under one root directory.
#[derive(Debug)]
pub struct ImageStore {
    root: PathBuf,
    blobs: PathBuf,
    layers: PathBuf,
    images: PathBuf,
    tmp: PathBuf,
    limits: Limits,
    privileged: bool,
    counters: Counters,
}

impl ImageStore {
    /// Opens (creating if needed, mode 0700) the cache at `root`, e.g.
    /// `/var/lib/bottle/images`. Layers are unpacked privileged (owners, overlayfs
    /// whiteouts) when the process is root.
    pub fn open(root: &Path) -> Result<Self> {
        let store = Self {
            root: root.to_path_buf(),
            blobs: root.join("blobs").join("sha256"),
            layers: root.join("layers"),
            images: root.join("images"),
            tmp: root.join("tmp"),
            limits: Limits::default(),
            privileged: is_root(),
            counters: Counters::default(),
        };
        for dir in [
            &store.root,
            &store.blobs,
            &store.layers.join("sha256"),
            &store.images,
            &store.tmp,
        ] {
            private_dir_all(dir).map_err(io_at(dir))?;
        }
        Ok(store)
    }

    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Overrides the privileged mode (default: euid 0). Unprivileged layers keep `.wh.*`
    /// files and are recorded as not overlay-ready.
    pub fn with_privileged(mut self, privileged: bool) -> Self {
        self.privileged = privileged;
        self
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    pub fn stats(&self) -> StoreStats {
        let c = &self.counters;
        StoreStats {
            import_count: c.import_count.load(Ordering::Relaxed),
            import_fails: c.import_fails.load(Ordering::Relaxed),
            layers_unpacked: c.layers_unpacked.load(Ordering::Relaxed),
            layers_reused: c.layers_reused.load(Ordering::Relaxed),
            pull_count: c.pull_count.load(Ordering::Relaxed),
        }
    }

    /// Imports an image from `source` — a rootfs directory, an OCI image layout directory, an
    /// unpacked or tarred `docker save` / `podman save`, or an oci-archive — and indexes it
    /// under `name` (normalized) besides any names the source carries.
    pub fn import(&self, source: &Path, name: Option<&str>) -> Result<ImageRecord> {
        let name = name.map(normalize_name).transpose()?;
        let _lock = self.lock()?;
        self.counted(|| {
            self.sweep_tmp();
            let staging = StagingDir::new(&self.tmp, "import").map_err(io_at(&self.tmp))?;
            let plan = self.plan(source, staging.path(), name.as_deref())?;
            self.commit(plan, staging.path(), name.as_deref())
        })
    }

    /// The image called `name` (any form [`normalize_name`] accepts) or with this id
    /// (`sha256:<hex>` or the bare hex), if the cache has it.
    pub fn get(&self, name: &str) -> Result<Option<ImageRecord>> {
        let id = match Sha256::parse(name).or_else(|_| Sha256::from_hex(name)) {
            Ok(id) => id,
            Err(_) => {
                let name = normalize_name(name)?;
                match NameIndex::load(&self.names_file())?.names.remove(&name) {
                    Some(id) => id,
                    None => return Ok(None),
                }
            }
        };
        Ok(load_record(&self.images, &self.layers, &id)?)
    }

    /// Every image in the cache.
    pub fn list(&self) -> Result<Vec<ImageRecord>> {
        let mut out = Vec::new();
        for entry in fs::read_dir(&self.images).map_err(io_at(&self.images))? {
            let entry = entry.map_err(io_at(&self.images))?;
            let file = entry.file_name();
            let Some(hex) = file.to_str().and_then(|f| f.strip_suffix(".json")) else {
                continue;
            };
            let Ok(id) = Sha256::from_hex(hex) else {
                continue;
            };
            if let Some(record) = load_record(&self.images, &self.layers, &id)? {
                out.push(record);
            }
        }
        out.sort_by(|a, b| {
            a.names
                .cmp(&b.names)
                .then(a.config_digest.cmp(&b.config_digest))
        });
        Ok(out)
    }

    /// What `--image SPEC` means: a path (starting with `/`, `./` or `../`) is imported; else
    /// a name or id in the cache; else, with skopeo installed, a pull from the registry; else
    /// an error that says how to get the image in.
    pub fn resolve(&self, spec: &str) -> Result<ImageRecord> {
        if is_path(spec) {
            return self.import(Path::new(spec), None);
        }
        if let Some(record) = self.get(spec)? {
            self.check_layers_present(spec, &record)?;
            return Ok(record);
        }
        let name = normalize_name(spec)?;
        let Some(skopeo) = pull::find_skopeo() else {
            return Err(StoreError::NotFound {
                name: spec.to_owned(),
            });
        };
        let _lock = self.lock()?;
        // Another import may have brought it in while this one waited for the lock.
        if let Some(record) = self.get(&name)? {
            return Ok(record);
        }
        self.counters.pull_count.fetch_add(1, Ordering::Relaxed);
        self.counted(|| {
            self.sweep_tmp();
            let staging = StagingDir::new(&self.tmp, "pull").map_err(io_at(&self.tmp))?;
            let dir = staging.path().join("oci");
            pull::pull(&skopeo, &name, &dir)?;
            let mut plan = self.plan_dir(&dir, true, Some(&name), true)?;
            plan.kind = SourceKind::Registry;
            self.commit(plan, staging.path(), Some(&name))
        })
    }

    fn counted(&self, import: impl FnOnce() -> Result<ImageRecord>) -> Result<ImageRecord> {
        self.counters.import_count.fetch_add(1, Ordering::Relaxed);
        let result = import();
        if let Err(e) = &result {
            self.counters.import_fails.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(error = %e, "image import failed");
        }
        result
    }

    fn names_file(&self) -> PathBuf {
        self.root.join("names.json")
    }

    fn lock(&self) -> Result<Flock<File>> {
        let path = self.root.join("import.lock");
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&path)
            .map_err(io_at(&path))?;
        Flock::lock(file, FlockArg::LockExclusive)
            .map_err(|(_, source)| StoreError::Lock { path, source })
    }

    /// Removes what crashed imports left in `tmp/`. Only called with the import lock held, so
    /// nothing there is in use.
    fn sweep_tmp(&self) {
        let Ok(entries) = fs::read_dir(&self.tmp) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let removed = match entry.file_type() {
                Ok(t) if t.is_dir() => remove_tree(&path),
                _ => fs::remove_file(&path),
            };
            match removed {
                Ok(()) => {
                    tracing::info!(path = %path.display(), "removed a crashed import's leftovers")
                }
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "cannot remove import leftovers")
                }
            }
        }
    }

    fn plan(&self, source: &Path, staging: &Path, want: Option<&str>) -> Result<Plan> {
        let meta = fs::metadata(source).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => StoreError::SourceMissing {
                path: source.to_path_buf(),
            },
            _ => io_at(source)(e),
        })?;
        if meta.is_dir() {
            if is_layout(source) || source.join("manifest.json").is_file() {
                return self.plan_dir(source, false, want, false);
            }
            return Ok(rootfs::plan(source, staging, &self.limits)?);
        }
        if !meta.is_file() {
            return Err(StoreError::NotAnImage {
                path: source.to_path_buf(),
            });
        }
        let unpacked = staging.join("archive");
        private_dir_all(&unpacked).map_err(io_at(&unpacked))?;
        archive::extract(source, &unpacked, &self.limits)?;
        if !is_layout(&unpacked) && !unpacked.join("manifest.json").is_file() {
            return Err(StoreError::NotAnImage {
                path: source.to_path_buf(),
            });
        }
        self.plan_dir(&unpacked, true, want, true)
    }

    /// An OCI layout (preferred when present: it has more digests to check) or a docker-save
    /// directory. `owned`: `dir` is in the staging area; `archive`: it came from a tarball.
    fn plan_dir(&self, dir: &Path, owned: bool, want: Option<&str>, archive: bool) -> Result<Plan> {
        let docker = dir.join("manifest.json").is_file();
        if !is_layout(dir) {
            return Ok(docker::plan(dir, owned, want, &self.limits)?);
        }
        let kind = match (archive, docker) {
            (_, true) => SourceKind::DockerArchive,
            (true, false) => SourceKind::OciArchive,
            (false, false) => SourceKind::OciLayout,
        };
        let mut plan = layout::plan(dir, owned, want, kind, &self.limits)?;
        if docker {
            for tag in docker::repo_tags_for(dir, &plan.config.digest, &self.limits) {
                if !plan.names.contains(&tag) {
                    plan.names.push(tag);
                }
            }
        }
        Ok(plan)
    }

    fn layer_meta(&self, diff_id: &Sha256) -> Option<LayerMeta> {
        let bytes = fs::read(layer_dir(&self.layers, diff_id).join("layer.json")).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// A layer in the cache this store can use as it is: present, and unpacked privileged if
    /// this store is (an unprivileged unpack is redone as root, in overlay form).
    fn layer_usable(&self, diff_id: &Sha256) -> bool {
        self.layer_meta(diff_id)
            .is_some_and(|m| m.privileged || !self.privileged)
    }

    fn commit(&self, plan: Plan, staging: &Path, name: Option<&str>) -> Result<ImageRecord> {
        check_layers(plan.layers.len(), &self.limits)?;
        let meter = Meter::new(&self.limits);
        let mut staged_layers: Vec<(PathBuf, Sha256, Option<blobs::Staged>)> = Vec::new();
        let mut seen = HashSet::new();
        for (index, layer) in plan.layers.iter().enumerate() {
            let diff_id = &layer.diff_id;
            if !seen.insert(diff_id.clone()) {
                continue; // the same layer twice in one image
            }
            if self.layer_usable(diff_id) {
                self.counters.layers_reused.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            let blob = blobs::stage(
                &layer.file,
                layer.owned,
                &format!("layer blob {index}"),
                layer.digest.as_ref(),
                layer.size,
                staging,
                self.limits.max_unpacked_bytes,
            )
            .map_err(|source| StoreError::LayerBlob {
                index,
                diff_id: diff_id.clone(),
                source,
            })?;
            let dir = staging.join(unique_name("layer"));
            let root = dir.join("root");
            private_dir_all(&root).map_err(io_at(&root))?;
            fs::set_permissions(&root, std::os::unix::fs::PermissionsExt::from_mode(0o755))
                .map_err(io_at(&root))?;
            let summary = self
                .unpack_blob(&blob.path, layer.compression, &root, diff_id, &meter)
                .map_err(|source| StoreError::Layer {
                    index,
                    diff_id: diff_id.clone(),
                    source,
                })?;
            let meta = LayerMeta {
                diff_id: diff_id.clone(),
                privileged: self.privileged,
                summary,
            };
            let meta_path = dir.join("layer.json");
            let bytes =
                serde_json::to_vec_pretty(&meta).map_err(|source| RecordError::Corrupt {
                    path: meta_path.clone(),
                    source,
                })?;
            write_atomic(&meta_path, &bytes).map_err(io_at(&meta_path))?;
            staged_layers.push((dir, diff_id.clone(), layer.keep_blob.then_some(blob)));
        }

        // Every layer passed: move everything into place.
        blobs::commit_bytes(&plan.config.bytes, &self.blobs, &plan.config.digest)?;
        if let Some(manifest) = &plan.manifest {
            blobs::commit_bytes(&manifest.bytes, &self.blobs, &manifest.digest)?;
        }
        for (dir, diff_id, blob) in staged_layers {
            if let Some(blob) = blob {
                blobs::commit(&blob.path, &self.blobs, &blob.digest)?;
            }
            self.commit_layer(&dir, &diff_id)?;
            self.counters
                .layers_unpacked
                .fetch_add(1, Ordering::Relaxed);
        }
        self.commit_record(plan, name)
    }

    fn unpack_blob(
        &self,
        blob: &Path,
        compression: Option<Compression>,
        dest: &Path,
        diff_id: &Sha256,
        meter: &Meter,
    ) -> Result<Summary, UnpackError> {
        let file = File::open(blob).map_err(UnpackError::Read)?;
        let stream = compress::decoder(file, compression).map_err(UnpackError::Read)?;
        let opts = unpack::Options {
            privileged: self.privileged,
            limits: &self.limits,
        };
        unpack::unpack(stream, dest, diff_id, &opts, meter)
    }

    /// Renames a staged layer into `layers/`. If the layer is already there (another import
    /// won the race) that one is kept; an unusable one (unpacked unprivileged) is replaced.
    fn commit_layer(&self, staged: &Path, diff_id: &Sha256) -> Result<()> {
        let target = layer_dir(&self.layers, diff_id);
        match fs::rename(staged, &target) {
            Ok(()) => return Ok(()),
            Err(_) if self.layer_usable(diff_id) => return Ok(()),
            Err(e) if !target.exists() => return Err(io_at(&target)(e)),
            Err(_) => {}
        }
        let aside = self.tmp.join(unique_name("replaced-layer"));
        fs::rename(&target, &aside).map_err(io_at(&target))?;
        fs::rename(staged, &target).map_err(io_at(&target))?;
        if let Err(e) = remove_tree(&aside) {
            tracing::warn!(path = %aside.display(), error = %e, "cannot remove a replaced layer");
        }
        Ok(())
    }

    /// Writes `images/<id>.json`, then points the image's names at it (taking them from any
    /// image that had them).
    fn commit_record(&self, plan: Plan, name: Option<&str>) -> Result<ImageRecord> {
        let id = plan.config.digest.clone();
        let previous = load_record(&self.images, &self.layers, &id)?;
        let mut names: Vec<String> = previous.map(|r| r.names).unwrap_or_default();
        for n in plan.names.iter().map(String::as_str).chain(name) {
            if !names.iter().any(|m| m == n) {
                names.push(n.to_owned());
            }
        }
        let overlay_ready = plan
            .parsed
            .diff_ids
            .iter()
            .all(|d| self.layer_meta(d).is_some_and(|m| m.privileged));
        let record = ImageRecord {
            config_digest: id.clone(),
            manifest_digest: plan.manifest.map(|m| m.digest),
            names,
            layers: plan.parsed.diff_ids,
            architecture: plan.parsed.architecture,
            os: plan.parsed.os,
            config: plan.parsed.runtime,
            source: plan.kind,
            overlay_ready,
            layers_dir: self.layers.clone(),
        };
        save_record(&self.images, &record)?;

        let names_file = self.names_file();
        let mut index = NameIndex::load(&names_file)?;
        for n in &record.names {
            let Some(old) = index.names.insert(n.clone(), id.clone()) else {
                continue;
            };
            if old == id {
                continue;
            }
            if let Some(mut other) = load_record(&self.images, &self.layers, &old)? {
                other.names.retain(|m| m != n);
                save_record(&self.images, &other)?;
            }
        }
        index.save(&names_file)?;
        tracing::info!(
            image = %record.id(),
            names = ?record.names,
            layers = record.layers.len(),
            "image imported"
        );
        Ok(record)
    }

    fn check_layers_present(&self, spec: &str, record: &ImageRecord) -> Result<()> {
        match record.layers.iter().find(|d| self.layer_meta(d).is_none()) {
            Some(diff_id) => Err(StoreError::Damaged {
                name: spec.to_owned(),
                diff_id: diff_id.clone(),
            }),
            None => Ok(()),
        }
    }
}

/// An OCI layout announces itself with `oci-layout` (a missing `index.json` is then an error,
/// not a reason to read the directory as something else).
fn is_layout(dir: &Path) -> bool {
    dir.join("oci-layout").is_file()
}

/// Whether `--image` names a path rather than an image.
fn is_path(spec: &str) -> bool {
    spec.starts_with('/')
        || spec.starts_with("./")
        || spec.starts_with("../")
        || spec == "."
        || spec == ".."
}
