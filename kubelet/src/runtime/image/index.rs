//! The store's index: which images exist (by image ID, the config digest), their manifest
//! and layers, and which tags and repo digests point at them. One JSON file, replaced
//! atomically (temp file, fsync, rename, fsync of the directory) under an exclusive
//! `flock`, so the kubelet and `rkube` commands on the same node can share the store.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use super::manifest::{self, Descriptor};
use crate::runtime::{ImageInfo, Result, RuntimeError};

pub const INDEX_FILE: &str = "images.json";
/// A real OCI `index.json` kept beside ours, so OCI tools can read the store as a layout.
pub const OCI_INDEX_FILE: &str = "index.json";
const LOCK_FILE: &str = "lock";
const INDEX_VERSION: u32 = 1;

/// One layer of an image: its blob and what it unpacks to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerRecord {
    /// Digest of the blob as stored (compressed or not).
    pub digest: String,
    pub media_type: String,
    pub size: u64,
    /// Digest of the uncompressed tar; names the unpacked directory.
    pub diff_id: String,
}

/// One image, keyed by its ID (the config digest).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRecord {
    pub id: String,
    pub manifest_digest: String,
    pub manifest_media_type: String,
    pub manifest_size: u64,
    pub config_size: u64,
    pub layers: Vec<LayerRecord>,
    pub repo_tags: BTreeSet<String>,
    pub repo_digests: BTreeSet<String>,
    pub created: Option<DateTime<Utc>>,
}

impl ImageRecord {
    pub fn info(&self) -> ImageInfo {
        ImageInfo {
            id: self.id.clone(),
            repo_tags: self.repo_tags.iter().cloned().collect(),
            repo_digests: self.repo_digests.iter().cloned().collect(),
            size: self.layers.iter().map(|l| l.size).sum(),
            created: self.created,
        }
    }

    /// Every blob digest the image needs: manifest, config, layers.
    pub fn blobs(&self) -> impl Iterator<Item = &str> {
        [self.manifest_digest.as_str(), self.id.as_str()]
            .into_iter()
            .chain(self.layers.iter().map(|l| l.digest.as_str()))
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Index {
    pub version: u32,
    pub images: BTreeMap<String, ImageRecord>,
}

impl Index {
    pub fn load(root: &Path) -> Result<Index> {
        let path = root.join(INDEX_FILE);
        match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                RuntimeError::io(
                    format!("reading {}", path.display()),
                    io::Error::new(io::ErrorKind::InvalidData, e),
                )
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Index {
                version: INDEX_VERSION,
                images: BTreeMap::new(),
            }),
            Err(e) => Err(RuntimeError::io(format!("reading {}", path.display()), e)),
        }
    }

    pub fn save(&self, root: &Path) -> Result<()> {
        let bytes = serde_json::to_vec_pretty(self)
            .map_err(|e| RuntimeError::io("encoding image index", io::Error::other(e)))?;
        write_atomic(root, INDEX_FILE, &bytes)?;
        let oci = serde_json::to_vec_pretty(&self.oci_index())
            .map_err(|e| RuntimeError::io("encoding OCI index", io::Error::other(e)))?;
        write_atomic(root, OCI_INDEX_FILE, &oci)
    }

    /// The image whose tags or repo digests include `name`.
    pub fn find_by_name(&self, name: &str) -> Option<&ImageRecord> {
        self.images
            .values()
            .find(|r| r.repo_tags.contains(name) || r.repo_digests.contains(name))
    }

    /// The image an ID names: `sha256:<hex>`, the bare hex, or a unique hex prefix.
    pub fn find_by_id(&self, id: &str) -> Option<&ImageRecord> {
        let hex = id.strip_prefix("sha256:").unwrap_or(id);
        if hex.is_empty() || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let mut found = self
            .images
            .values()
            .filter(|r| r.id["sha256:".len()..].starts_with(hex));
        let first = found.next()?;
        found.next().is_none().then_some(first)
    }

    /// Takes `name` (a tag or repo digest) away from every image but `keep`.
    pub fn detach_name(&mut self, name: &str, keep: &str) {
        for record in self.images.values_mut().filter(|r| r.id != keep) {
            record.repo_tags.remove(name);
            record.repo_digests.remove(name);
        }
    }

    /// The store as an OCI image layout index: one entry per tag (and one per untagged image).
    fn oci_index(&self) -> manifest::Index {
        let mut manifests = Vec::new();
        for record in self.images.values() {
            let base = Descriptor {
                media_type: record.manifest_media_type.clone(),
                digest: record.manifest_digest.clone(),
                size: record.manifest_size,
                platform: None,
                annotations: BTreeMap::new(),
            };
            if record.repo_tags.is_empty() {
                manifests.push(base.clone());
            }
            for tag in &record.repo_tags {
                let mut d = base.clone();
                d.annotations
                    .insert(manifest::ANNOTATION_CONTAINERD_NAME.into(), tag.clone());
                if let Ok(r) = super::reference::ImageReference::parse(tag) {
                    if let Some(t) = r.tag {
                        d.annotations
                            .insert(manifest::ANNOTATION_REF_NAME.into(), t);
                    }
                }
                manifests.push(d);
            }
        }
        manifest::Index {
            schema_version: 2,
            media_type: manifest::OCI_INDEX.into(),
            manifests,
            annotations: BTreeMap::new(),
        }
    }
}

/// Holds the store's exclusive lock while alive.
pub struct StoreLock {
    _lock: Flock<File>,
}

/// Takes the store's exclusive lock (blocking), shared by every process using the store.
pub fn lock(root: &Path) -> Result<StoreLock> {
    let path = root.join(LOCK_FILE);
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| RuntimeError::io(format!("opening {}", path.display()), e))?;
    let lock = Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, errno)| {
        RuntimeError::io(format!("locking {}", path.display()), errno.into())
    })?;
    Ok(StoreLock { _lock: lock })
}

/// Writes `dir/name` so that readers see the old or the new content, never a mix, and
/// the new content survives a crash once this returns.
pub fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> Result<()> {
    let target = dir.join(name);
    let tmp: PathBuf = dir.join(format!(".{name}.{}.tmp", uuid::Uuid::new_v4().simple()));
    let result = (|| -> io::Result<()> {
        let mut file = File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        fs::rename(&tmp, &target)?;
        File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map_err(|e| RuntimeError::io(format!("writing {}", target.display()), e))
}
