//! The node's content-addressed image store (an OCI image layout plus unpacked layers),
//! `docker save`/OCI archive import and export, registry pulls, and the offline busybox
//! image every lab has.
//!
//! Layout under the store's root (`KUBELET_ROOT/image-store`):
//! - `oci-layout`, `index.json`: the OCI image layout marker and an OCI index of the tags,
//!   so OCI tools can read the store;
//! - `images.json`: the store's own index (image ID → manifest, layers, tags, repo digests),
//!   replaced atomically under the `lock` file's `flock`;
//! - `blobs/sha256/<hex>`: manifests, configs and layer blobs as pulled or imported;
//! - `layers/sha256/<diff-id hex>/`: each layer unpacked once (whiteouts in overlayfs
//!   form), shared read-only by every container as an overlayfs lower directory;
//! - `imported.json`: archives `import_dir` imported (skipped while unchanged);
//! - `tmp/`: downloads and unpacks in progress, renamed into place when complete.

mod archive;
pub mod busybox;
mod index;
pub mod manifest;
mod pull;
pub mod reference;
mod unpack;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use sha2::{Digest as _, Sha256};
use tracing::{debug, info, warn};

use self::index::{ImageRecord, Index, LayerRecord};
use self::manifest::Manifest;
use super::{ImageInfo, ImageService, RegistryAuth, Result, RuntimeError};

pub use self::busybox::{build_busybox_image, build_busybox_image_from};
pub use self::reference::{normalize_reference, ImageReference};
pub use self::unpack::OPAQUE_XATTR;

/// Temp files older than this are left-overs of a crashed process and are removed.
const STALE_TMP_AGE: Duration = Duration::from_secs(3600);

/// An image ready to run: its config and its unpacked layers, lowest first.
#[derive(Debug, Clone)]
pub struct ResolvedImage {
    pub info: ImageInfo,
    pub config: oci_spec::image::ImageConfiguration,
    /// Unpacked, read-only layer directories, bottom layer first (overlayfs wants them
    /// top first in `lowerdir=`).
    pub layers: Vec<PathBuf>,
}

/// What `remove` did, in `docker rmi`'s terms.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RemoveOutcome {
    /// Tags and repo digests taken off the image.
    pub untagged: Vec<String>,
    /// The image ID, if the image itself was deleted (no tag left, or removed by ID).
    pub deleted: Option<String>,
}

/// The store under `ROOT/image-store/`. Cheap to clone; clones share locks.
#[derive(Debug, Clone)]
pub struct ImageStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    root: PathBuf,
    /// One lock per layer diff ID being unpacked, so concurrent pulls unpack it once.
    layer_locks: Mutex<HashMap<String, Arc<Mutex<()>>>>,
    /// One lock per reference being pulled, so concurrent pulls of it download once.
    pull_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

/// An image about to be recorded: blobs already in the store.
pub(crate) struct NewImage {
    pub manifest_digest: String,
    pub manifest_media_type: String,
    pub manifest_size: u64,
    pub manifest: Manifest,
    /// Normalized tags to point at the image.
    pub tags: Vec<String>,
    /// `repo@sha256:…` references to record.
    pub repo_digests: Vec<String>,
}

impl ImageStore {
    /// Opens (creating if needed) the store at `root`, removing stale temp files.
    pub fn open(root: &Path) -> Result<Self> {
        for dir in ["blobs/sha256", "layers/sha256", "tmp"] {
            let path = root.join(dir);
            fs::create_dir_all(&path)
                .map_err(|e| RuntimeError::io(format!("creating {}", path.display()), e))?;
        }
        let layout = root.join("oci-layout");
        if !layout.exists() {
            index::write_atomic(root, "oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#)?;
        }
        let store = ImageStore {
            inner: Arc::new(Inner {
                root: root.to_path_buf(),
                layer_locks: Mutex::new(HashMap::new()),
                pull_locks: Mutex::new(HashMap::new()),
            }),
        };
        store.clean_tmp(STALE_TMP_AGE);
        Ok(store)
    }

    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    /// The image a reference names, with its layers unpacked, or None if absent.
    /// References are tags or digests in any form Docker accepts, or image IDs.
    pub fn resolve(&self, reference: &str) -> Result<Option<ResolvedImage>> {
        let index = Index::load(self.root())?;
        let Some((record, _)) = lookup(&index, reference)? else {
            return Ok(None);
        };
        let config = self.read_config(&record.id)?;
        let layers = record
            .layers
            .iter()
            .map(|l| self.ensure_layer(l))
            .collect::<Result<Vec<_>>>()?;
        Ok(Some(ResolvedImage {
            info: record.info(),
            config,
            layers,
        }))
    }

    /// The image a reference names, if present.
    pub fn status(&self, reference: &str) -> Result<Option<ImageInfo>> {
        let index = Index::load(self.root())?;
        Ok(lookup(&index, reference)?.map(|(r, _)| r.info()))
    }

    /// Every image, ordered by ID.
    pub fn list(&self) -> Result<Vec<ImageInfo>> {
        Ok(Index::load(self.root())?
            .images
            .values()
            .map(ImageRecord::info)
            .collect())
    }

    /// Points the tag `target` at the image `source` names (`docker tag`).
    pub fn tag(&self, source: &str, target: &str) -> Result<ImageInfo> {
        let target = normalize_reference(target)?;
        let _lock = index::lock(self.root())?;
        let mut index = Index::load(self.root())?;
        let id = match lookup(&index, source)? {
            Some((record, _)) => record.id.clone(),
            None => return Err(RuntimeError::NotFound(format!("image {source:?}"))),
        };
        index.detach_name(&target, &id);
        let record = index
            .images
            .get_mut(&id)
            .ok_or_else(|| RuntimeError::NotFound(format!("image {source:?}")))?;
        if target.contains('@') {
            record.repo_digests.insert(target);
        } else {
            record.repo_tags.insert(target);
        }
        let info = record.info();
        index.save(self.root())?;
        Ok(info)
    }

    /// `docker rmi`: a tag or digest reference is untagged, and the image deleted when no
    /// tag is left; an image ID deletes the image with all its tags. Blobs and unpacked
    /// layers that no other image uses are deleted with it.
    pub fn remove(&self, reference: &str) -> Result<RemoveOutcome> {
        let _lock = index::lock(self.root())?;
        let mut index = Index::load(self.root())?;
        let (id, matched) = match lookup(&index, reference)? {
            Some((record, matched)) => (record.id.clone(), matched),
            None => return Err(RuntimeError::NotFound(format!("image {reference:?}"))),
        };
        let mut outcome = RemoveOutcome::default();
        let delete = match matched {
            Matched::Id => true,
            Matched::Name(name) => {
                let Some(record) = index.images.get_mut(&id) else {
                    return Err(RuntimeError::NotFound(format!("image {reference:?}")));
                };
                record.repo_tags.remove(&name);
                record.repo_digests.remove(&name);
                outcome.untagged.push(name);
                record.repo_tags.is_empty()
            }
        };
        if delete {
            if let Some(record) = index.images.get(&id) {
                outcome.untagged.extend(record.repo_tags.iter().cloned());
                outcome.untagged.extend(record.repo_digests.iter().cloned());
            }
            outcome.untagged.sort();
            outcome.untagged.dedup();
            self.delete_locked(&mut index, &id)?;
            outcome.deleted = Some(id);
        } else {
            index.save(self.root())?;
        }
        info!(reference, untagged = ?outcome.untagged, deleted = ?outcome.deleted, "removed image");
        Ok(outcome)
    }

    /// Deletes the image with this ID (all its names), if present. Returns what it was.
    pub fn remove_by_id(&self, id: &str) -> Result<Option<ImageInfo>> {
        let _lock = index::lock(self.root())?;
        let mut index = Index::load(self.root())?;
        let Some(record) = index.find_by_id(id) else {
            return Ok(None);
        };
        let id = record.id.clone();
        let removed = self.delete_locked(&mut index, &id)?;
        Ok(Some(removed.info()))
    }

    /// Removes every image whose ID is not in `in_use` (the kubelet's image GC), and any
    /// blob or layer left behind by an interrupted operation. Returns the removed images.
    pub fn prune(&self, in_use: &HashSet<String>) -> Result<Vec<ImageInfo>> {
        let _lock = index::lock(self.root())?;
        let mut index = Index::load(self.root())?;
        let unused: Vec<String> = index
            .images
            .keys()
            .filter(|id| !in_use.contains(*id))
            .cloned()
            .collect();
        let mut removed = Vec::new();
        for id in unused {
            let record = self.delete_locked(&mut index, &id)?;
            info!(image = %id, tags = ?record.repo_tags, "pruned image");
            removed.push(record.info());
        }
        self.sweep_orphans_locked(&index, STALE_TMP_AGE);
        Ok(removed)
    }

    /// Bytes the store occupies on disk (blobs, unpacked layers, temp files), counting
    /// hardlinked files once.
    pub fn disk_usage(&self) -> Result<u64> {
        let mut seen = HashSet::new();
        let mut total = 0u64;
        for dir in ["blobs", "layers", "tmp"] {
            total += du(&self.root().join(dir), &mut seen)?;
        }
        Ok(total)
    }

    // ---- internals shared by import, pull and busybox ----

    pub(crate) fn blob_path(&self, digest: &str) -> Result<PathBuf> {
        reference::validate_digest(digest).map_err(|m| RuntimeError::Image {
            reference: digest.to_string(),
            message: m,
        })?;
        Ok(self
            .root()
            .join("blobs/sha256")
            .join(&digest["sha256:".len()..]))
    }

    pub(crate) fn layer_path(&self, diff_id: &str) -> Result<PathBuf> {
        reference::validate_digest(diff_id).map_err(|m| RuntimeError::Image {
            reference: diff_id.to_string(),
            message: m,
        })?;
        Ok(self
            .root()
            .join("layers/sha256")
            .join(&diff_id["sha256:".len()..]))
    }

    pub(crate) fn has_blob(&self, digest: &str) -> bool {
        self.blob_path(digest).map(|p| p.is_file()).unwrap_or(false)
    }

    /// A fresh path under `tmp/` (same filesystem as the blobs and layers).
    pub(crate) fn tmp_path(&self, prefix: &str) -> PathBuf {
        self.root()
            .join("tmp")
            .join(format!("{prefix}-{}", uuid::Uuid::new_v4().simple()))
    }

    /// Starts writing a blob; `finish` verifies its digest and moves it into place.
    pub(crate) fn blob_writer(&self) -> Result<BlobWriter> {
        let path = self.tmp_path("blob");
        let file = File::create(&path)
            .map_err(|e| RuntimeError::io(format!("creating {}", path.display()), e))?;
        Ok(BlobWriter {
            store: self.clone(),
            file: Some(file),
            path,
            hasher: Sha256::new(),
            size: 0,
        })
    }

    /// Stores `bytes` as a blob (checking `expected` if given); returns its digest.
    pub(crate) fn write_blob(&self, bytes: &[u8], expected: Option<&str>) -> Result<String> {
        let digest = sha256_digest(bytes);
        if expected.is_some_and(|e| e != digest) {
            return Err(digest_mismatch(expected.unwrap_or_default(), &digest));
        }
        if self.has_blob(&digest) {
            return Ok(digest);
        }
        let mut writer = self.blob_writer()?;
        writer
            .write_all(bytes)
            .map_err(|e| RuntimeError::io("writing blob", e))?;
        writer.finish(Some(&digest))?;
        Ok(digest)
    }

    /// Moves a fully written temp file into the blob store as `digest` (already verified).
    pub(crate) fn commit_blob_file(&self, tmp: &Path, digest: &str) -> Result<()> {
        let dest = self.blob_path(digest)?;
        if dest.is_file() {
            let _ = fs::remove_file(tmp);
            return Ok(());
        }
        fs::rename(tmp, &dest).map_err(|e| RuntimeError::io(format!("storing blob {digest}"), e))
    }

    pub(crate) fn read_blob(&self, digest: &str) -> Result<Vec<u8>> {
        let path = self.blob_path(digest)?;
        fs::read(&path).map_err(|e| RuntimeError::io(format!("reading blob {digest}"), e))
    }

    fn read_config(&self, id: &str) -> Result<oci_spec::image::ImageConfiguration> {
        let bytes = self.read_blob(id)?;
        parse_config(&bytes, id)
    }

    /// The unpacked directory of `layer`, unpacking it first if needed (once, however many
    /// threads or pulls ask at the same time).
    pub(crate) fn ensure_layer(&self, layer: &LayerRecord) -> Result<PathBuf> {
        let dest = self.layer_path(&layer.diff_id)?;
        if dest.is_dir() {
            return Ok(dest);
        }
        let lock = {
            let mut locks = self
                .inner
                .layer_locks
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            locks.entry(layer.diff_id.clone()).or_default().clone()
        };
        let result = {
            let _guard = lock.lock().unwrap_or_else(|p| p.into_inner());
            self.unpack_layer_locked(layer, &dest)
        };
        let mut locks = self
            .inner
            .layer_locks
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if Arc::strong_count(&lock) == 2 {
            locks.remove(&layer.diff_id);
        }
        result.map(|()| dest)
    }

    fn unpack_layer_locked(&self, layer: &LayerRecord, dest: &Path) -> Result<()> {
        if dest.is_dir() {
            return Ok(());
        }
        let blob = self.blob_path(&layer.digest)?;
        if !blob.is_file() {
            return Err(RuntimeError::Image {
                reference: layer.digest.clone(),
                message: "layer blob is missing from the store".into(),
            });
        }
        let tmp = self.tmp_path("layer");
        let started = std::time::Instant::now();
        if let Err(e) = unpack::unpack_layer_blob(&blob, &layer.diff_id, &tmp) {
            let _ = unpack::remove_existing(&tmp);
            return Err(e);
        }
        if let Err(e) = fs::rename(&tmp, dest) {
            let _ = unpack::remove_existing(&tmp);
            if !dest.is_dir() {
                return Err(RuntimeError::io(
                    format!("moving unpacked layer to {}", dest.display()),
                    e,
                ));
            }
        }
        info!(diff_id = %layer.diff_id, elapsed_ms = started.elapsed().as_millis() as u64, "unpacked layer");
        Ok(())
    }

    /// Records an image whose blobs are in the store: unpacks its layers, then points its
    /// tags and repo digests at it. An image with the same ID is updated, not duplicated.
    pub(crate) fn register(&self, new: NewImage) -> Result<ImageInfo> {
        let config_digest = new.manifest.config.digest.clone();
        let config_bytes = self.read_blob(&config_digest)?;
        let config = parse_config(&config_bytes, &config_digest)?;
        let diff_ids = config.rootfs().diff_ids();
        if diff_ids.len() != new.manifest.layers.len() {
            return Err(RuntimeError::Image {
                reference: new.manifest_digest.clone(),
                message: format!(
                    "manifest has {} layers but its config lists {} diff IDs",
                    new.manifest.layers.len(),
                    diff_ids.len()
                ),
            });
        }
        let layers: Vec<LayerRecord> = new
            .manifest
            .layers
            .iter()
            .zip(diff_ids)
            .map(|(d, diff_id)| LayerRecord {
                digest: d.digest.clone(),
                media_type: d.media_type.clone(),
                size: d.size,
                diff_id: diff_id.clone(),
            })
            .collect();
        for digest in std::iter::once(&new.manifest_digest).chain(layers.iter().map(|l| &l.digest))
        {
            if !self.has_blob(digest) {
                return Err(RuntimeError::Image {
                    reference: digest.clone(),
                    message: "blob is missing from the store".into(),
                });
            }
        }
        for layer in &layers {
            self.ensure_layer(layer)?;
        }
        let created = config
            .created()
            .as_deref()
            .and_then(|c| chrono::DateTime::parse_from_rfc3339(c).ok())
            .map(|c| c.with_timezone(&chrono::Utc));

        let _lock = index::lock(self.root())?;
        let mut index = Index::load(self.root())?;
        // Something may have been removed between our checks and the lock.
        for layer in &layers {
            if !self.has_blob(&layer.digest) || !self.layer_path(&layer.diff_id)?.is_dir() {
                return Err(RuntimeError::Image {
                    reference: layer.digest.clone(),
                    message: "layer was removed while the image was being stored; try again".into(),
                });
            }
        }
        let previous = index.images.get(&config_digest).cloned();
        let mut record = ImageRecord {
            id: config_digest.clone(),
            manifest_digest: new.manifest_digest.clone(),
            manifest_media_type: if new.manifest_media_type.is_empty() {
                manifest::OCI_MANIFEST.to_string()
            } else {
                new.manifest_media_type.clone()
            },
            manifest_size: new.manifest_size,
            config_size: config_bytes.len() as u64,
            layers,
            repo_tags: previous
                .as_ref()
                .map(|p| p.repo_tags.clone())
                .unwrap_or_default(),
            repo_digests: previous
                .as_ref()
                .map(|p| p.repo_digests.clone())
                .unwrap_or_default(),
            created,
        };
        for name in new.tags.iter().chain(&new.repo_digests) {
            index.detach_name(name, &config_digest);
        }
        record.repo_tags.extend(new.tags.iter().cloned());
        record.repo_digests.extend(new.repo_digests.iter().cloned());
        let info = record.info();
        index.images.insert(config_digest.clone(), record);
        index.save(self.root())?;
        if let Some(previous) = previous {
            // The same image under another manifest (e.g. compressed differently): the old
            // manifest and layer blobs may now be unused.
            let blobs: Vec<String> = previous.blobs().map(str::to_string).collect();
            let diff_ids: Vec<String> = previous.layers.iter().map(|l| l.diff_id.clone()).collect();
            self.collect_garbage(&index, &blobs, &diff_ids);
        }
        info!(image = %info.id, tags = ?info.repo_tags, "stored image");
        Ok(info)
    }

    /// Removes image `id` from the index (saving it), then its unused blobs and layers.
    fn delete_locked(&self, index: &mut Index, id: &str) -> Result<ImageRecord> {
        let record = index
            .images
            .remove(id)
            .ok_or_else(|| RuntimeError::NotFound(format!("image {id:?}")))?;
        index.save(self.root())?;
        let blobs: Vec<String> = record.blobs().map(str::to_string).collect();
        let diff_ids: Vec<String> = record.layers.iter().map(|l| l.diff_id.clone()).collect();
        self.collect_garbage(index, &blobs, &diff_ids);
        Ok(record)
    }

    /// Deletes those of `blobs` and of the layers `diff_ids` that no image in `index` uses.
    fn collect_garbage(&self, index: &Index, blobs: &[String], diff_ids: &[String]) {
        let used_blobs: HashSet<&str> =
            index.images.values().flat_map(ImageRecord::blobs).collect();
        let used_layers: HashSet<&str> = index
            .images
            .values()
            .flat_map(|r| r.layers.iter().map(|l| l.diff_id.as_str()))
            .collect();
        for digest in blobs.iter().filter(|d| !used_blobs.contains(d.as_str())) {
            if let Ok(path) = self.blob_path(digest) {
                match fs::remove_file(&path) {
                    Ok(()) => debug!(blob = %digest, "deleted blob"),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => warn!(blob = %digest, error = %e, "could not delete blob"),
                }
            }
        }
        for diff_id in diff_ids
            .iter()
            .filter(|d| !used_layers.contains(d.as_str()))
        {
            if let Ok(path) = self.layer_path(diff_id) {
                self.remove_tree(&path);
                debug!(layer = %diff_id, "deleted unpacked layer");
            }
        }
    }

    /// Removes a directory tree: first renamed into `tmp/` so it vanishes at once.
    fn remove_tree(&self, path: &Path) {
        if !path.exists() {
            return;
        }
        let trash = self.tmp_path("trash");
        let victim = if fs::rename(path, &trash).is_ok() {
            trash
        } else {
            path.to_path_buf()
        };
        if let Err(e) = unpack::remove_existing(&victim) {
            warn!(path = %victim.display(), error = %e, "could not delete");
        }
    }

    /// Deletes blobs and layers older than `age` that no image uses (left by crashes).
    fn sweep_orphans_locked(&self, index: &Index, age: Duration) {
        let used_blobs: HashSet<String> = index
            .images
            .values()
            .flat_map(ImageRecord::blobs)
            .map(|d| d.trim_start_matches("sha256:").to_string())
            .collect();
        let used_layers: HashSet<String> = index
            .images
            .values()
            .flat_map(|r| {
                r.layers
                    .iter()
                    .map(|l| l.diff_id.trim_start_matches("sha256:").to_string())
            })
            .collect();
        for (dir, used) in [
            ("blobs/sha256", &used_blobs),
            ("layers/sha256", &used_layers),
        ] {
            let Ok(entries) = fs::read_dir(self.root().join(dir)) else {
                continue;
            };
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if used.contains(&name) || !older_than(&entry.path(), age) {
                    continue;
                }
                info!(path = %entry.path().display(), "removing orphaned image data");
                self.remove_tree(&entry.path());
            }
        }
        self.clean_tmp(age);
    }

    fn clean_tmp(&self, age: Duration) {
        let Ok(entries) = fs::read_dir(self.root().join("tmp")) else {
            return;
        };
        for entry in entries.flatten() {
            if older_than(&entry.path(), age)
                || entry.file_name().to_string_lossy().starts_with("trash-")
            {
                if let Err(e) = unpack::remove_existing(&entry.path()) {
                    warn!(path = %entry.path().display(), error = %e, "could not remove stale temp file");
                }
            }
        }
    }

    /// Runs blocking store work off the async runtime.
    async fn blocking<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&ImageStore) -> Result<T> + Send + 'static,
    {
        let store = self.clone();
        tokio::task::spawn_blocking(move || f(&store))
            .await
            .map_err(|e| RuntimeError::Operation {
                op: "image store",
                id: "task".to_string(),
                message: e.to_string(),
            })?
    }
}

fn older_than(path: &Path, age: Duration) -> bool {
    fs::symlink_metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| SystemTime::now().duration_since(t).ok())
        .is_some_and(|d| d >= age)
}

/// Disk usage of a tree in bytes (allocated blocks), counting each inode once.
fn du(path: &Path, seen: &mut HashSet<(u64, u64)>) -> Result<u64> {
    let meta = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => {
            return Err(RuntimeError::io(
                format!("inspecting {}", path.display()),
                e,
            ))
        }
    };
    if !seen.insert((meta.dev(), meta.ino())) {
        return Ok(0);
    }
    let mut total = meta.blocks() * 512;
    if meta.is_dir() {
        let entries = fs::read_dir(path)
            .map_err(|e| RuntimeError::io(format!("listing {}", path.display()), e))?;
        for entry in entries {
            let entry =
                entry.map_err(|e| RuntimeError::io(format!("listing {}", path.display()), e))?;
            total += du(&entry.path(), seen)?;
        }
    }
    Ok(total)
}

pub(crate) fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

fn digest_mismatch(expected: &str, actual: &str) -> RuntimeError {
    RuntimeError::Image {
        reference: expected.to_string(),
        message: format!("digest mismatch: content hashes to {actual}"),
    }
}

pub(crate) fn parse_config(
    bytes: &[u8],
    digest: &str,
) -> Result<oci_spec::image::ImageConfiguration> {
    serde_json::from_slice(bytes).map_err(|e| RuntimeError::Image {
        reference: digest.to_string(),
        message: format!("malformed image config: {e}"),
    })
}

/// How a reference matched an image.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Matched {
    /// By one of its tags or repo digests (normalized).
    Name(String),
    /// By its ID or an ID prefix.
    Id,
}

/// Finds the image a reference names: a tag or digest reference in any form Docker
/// accepts (`busybox`, `docker.io/library/busybox:latest`, `busybox@sha256:…`), or an ID
/// (`sha256:…`, its hex, or a unique prefix of it).
fn lookup<'a>(index: &'a Index, reference: &str) -> Result<Option<(&'a ImageRecord, Matched)>> {
    let reference = reference.trim();
    if reference.starts_with("sha256:") {
        return Ok(index.find_by_id(reference).map(|r| (r, Matched::Id)));
    }
    let looks_like_id = !reference.is_empty() && reference.bytes().all(|b| b.is_ascii_hexdigit());
    let parsed = match ImageReference::parse(reference) {
        Ok(p) => p,
        Err(e) => {
            return match looks_like_id {
                true => Ok(index.find_by_id(reference).map(|r| (r, Matched::Id))),
                false => Err(e),
            }
        }
    };
    let name = parsed.to_string();
    if let Some(record) = index.find_by_name(&name) {
        return Ok(Some((record, Matched::Name(name))));
    }
    if let Some(digest) = &parsed.digest {
        // `name:tag@digest` and `name@digest` both pin the manifest.
        let pinned = parsed.with_digest(digest);
        if let Some(record) = index.find_by_name(&pinned) {
            return Ok(Some((record, Matched::Name(pinned))));
        }
        let repository = parsed.repository();
        let same_repo = |r: &&ImageRecord| {
            r.repo_tags.iter().chain(&r.repo_digests).any(|n| {
                ImageReference::parse(n)
                    .map(|p| p.repository() == repository)
                    .unwrap_or(false)
            })
        };
        if let Some(record) = index
            .images
            .values()
            .filter(same_repo)
            .find(|r| &r.manifest_digest == digest)
        {
            return Ok(Some((record, Matched::Id)));
        }
    }
    if looks_like_id {
        return Ok(index.find_by_id(reference).map(|r| (r, Matched::Id)));
    }
    Ok(None)
}

/// Writes a blob to a temp file while hashing it; `finish` checks the digest, syncs and
/// moves it into `blobs/`.
pub(crate) struct BlobWriter {
    store: ImageStore,
    /// None once `finish` has run.
    file: Option<File>,
    path: PathBuf,
    hasher: Sha256,
    size: u64,
}

impl Write for BlobWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let file = self
            .file
            .as_mut()
            .ok_or_else(|| io::Error::other("blob writer already finished"))?;
        let n = file.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.size += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        match self.file.as_mut() {
            Some(f) => f.flush(),
            None => Ok(()),
        }
    }
}

impl BlobWriter {
    /// Verifies the content against `expected` (if given) and stores it. Returns the
    /// digest and size.
    pub(crate) fn finish(mut self, expected: Option<&str>) -> Result<(String, u64)> {
        let digest = format!(
            "sha256:{}",
            hex::encode(std::mem::take(&mut self.hasher).finalize())
        );
        let file = self.file.take().ok_or_else(|| {
            RuntimeError::io("storing blob", io::Error::other("already finished"))
        })?;
        file.sync_all()
            .map_err(|e| RuntimeError::io("syncing blob", e))?;
        drop(file);
        if let Some(expected) = expected {
            if expected != digest {
                return Err(digest_mismatch(expected, &digest));
            }
        }
        self.store.commit_blob_file(&self.path, &digest)?;
        Ok((digest, self.size))
    }
}

impl Drop for BlobWriter {
    fn drop(&mut self) {
        // After `finish` the temp file is gone (renamed); otherwise it is abandoned.
        let _ = fs::remove_file(&self.path);
    }
}

#[async_trait]
impl ImageService for ImageStore {
    async fn pull_image(&self, reference: &str, auth: Option<&RegistryAuth>) -> Result<ImageInfo> {
        self.pull(reference, auth).await
    }

    async fn image_status(&self, reference: &str) -> Result<Option<ImageInfo>> {
        let reference = reference.to_string();
        self.blocking(move |s| s.status(&reference)).await
    }

    async fn list_images(&self) -> Result<Vec<ImageInfo>> {
        self.blocking(|s| s.list()).await
    }

    /// CRI semantics: the whole image (every tag) goes; removing a missing image is fine.
    async fn remove_image(&self, reference: &str) -> Result<()> {
        let reference = reference.to_string();
        self.blocking(move |s| {
            let index = Index::load(s.root())?;
            let id = match lookup(&index, &reference) {
                Ok(Some((record, _))) => record.id.clone(),
                Ok(None) => return Ok(()),
                Err(e) => return Err(e),
            };
            s.remove_by_id(&id).map(|_| ())
        })
        .await
    }
}

/// Names, normalized, deduplicated and sorted.
pub(crate) fn normalized_names(names: impl IntoIterator<Item = String>) -> Vec<String> {
    let set: BTreeSet<String> = names
        .into_iter()
        .filter_map(|n| match normalize_reference(&n) {
            Ok(n) => Some(n),
            Err(e) => {
                warn!(name = %n, error = %e, "ignoring invalid image name");
                None
            }
        })
        .collect();
    set.into_iter().collect()
}

/// Unpacking needs root (chown, mknod of whiteouts, `trusted.*` xattrs): tests that
/// unpack call this first. Outside CI they are skipped without root; CI runs as root.
#[cfg(test)]
pub(crate) fn have_root() -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "image store tests need root, and CI must run them"
    );
    eprintln!("skipped: needs root");
    false
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
