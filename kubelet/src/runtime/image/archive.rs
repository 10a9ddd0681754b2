//! Image archives: import of `docker save` tarballs (legacy and Docker ≥ 25's OCI-shaped
//! ones) and OCI image-layout archives, gzip/zstd or not; import of every archive in a
//! directory (k3s's air-gap `images/`); export in `docker save` format with an OCI
//! `index.json` beside `manifest.json`, which `docker load` and our import both accept.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use tracing::{debug, info, warn};

use super::index::Index;
use super::manifest::{self, Descriptor, Document, Manifest};
use super::reference::ImageReference;
use super::{lookup, normalized_names, unpack, ImageStore, Matched, NewImage};
use crate::runtime::{ImageInfo, Result, RuntimeError};

/// How deep image indexes may nest inside an archive.
const MAX_INDEX_DEPTH: usize = 4;
/// How many links one archive member path may pass through.
const MAX_MEMBER_LINKS: usize = 16;

/// Where `import_dir` remembers the archives it imported.
const IMPORTED_FILE: &str = "imported.json";

/// An archive `import_dir` imported: its identity then, and the images it held.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct ImportedArchive {
    size: u64,
    mtime: i64,
    mtime_nsec: i64,
    inode: u64,
    images: Vec<String>,
}

impl ImportedArchive {
    fn stamp(path: &Path) -> Option<ImportedArchive> {
        use std::os::unix::fs::MetadataExt;
        let m = fs::metadata(path).ok()?;
        Some(ImportedArchive {
            size: m.len(),
            mtime: m.mtime(),
            mtime_nsec: m.mtime_nsec(),
            inode: m.ino(),
            images: Vec::new(),
        })
    }

    fn same_file(&self, other: &ImportedArchive) -> bool {
        (self.size, self.mtime, self.mtime_nsec, self.inode)
            == (other.size, other.mtime, other.mtime_nsec, other.inode)
    }
}

/// One entry of `docker save`'s `manifest.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerManifestEntry {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

/// A regular file of the archive, copied to the store's temp dir and hashed.
#[derive(Debug)]
struct Member {
    path: PathBuf,
    digest: String,
    size: u64,
    /// Moved into the blob store already.
    committed: bool,
}

/// The archive's files, extracted into a temp dir (removed on drop).
struct Staging<'a> {
    store: &'a ImageStore,
    dir: PathBuf,
    files: HashMap<String, Member>,
    /// Symlinks and hardlinks: member path → target member path.
    links: HashMap<String, String>,
    label: String,
}

impl Drop for Staging<'_> {
    fn drop(&mut self) {
        let _ = unpack::remove_existing(&self.dir);
    }
}

/// An archive member name, cleaned: no leading `./` or `/`, `..` resolved; None if it
/// climbs out of the archive.
fn clean_member(name: &str) -> Option<String> {
    let mut parts: Vec<&str> = Vec::new();
    for part in name.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            p => parts.push(p),
        }
    }
    Some(parts.join("/"))
}

impl<'a> Staging<'a> {
    fn extract(store: &'a ImageStore, path: &Path) -> Result<Self> {
        let label = path.display().to_string();
        let file = File::open(path).map_err(|e| RuntimeError::io(format!("opening {label}"), e))?;
        let reader = unpack::decompressed(file, &label)?;
        let dir = store.tmp_path("import");
        fs::create_dir(&dir)
            .map_err(|e| RuntimeError::io(format!("creating {}", dir.display()), e))?;
        let mut staging = Staging {
            store,
            dir,
            files: HashMap::new(),
            links: HashMap::new(),
            label,
        };
        let bad = |e: io::Error| RuntimeError::Image {
            reference: path.display().to_string(),
            message: format!("not a valid image archive: {e}"),
        };
        let mut archive = tar::Archive::new(reader);
        for (n, entry) in archive.entries().map_err(bad)?.enumerate() {
            let mut entry = entry.map_err(bad)?;
            let raw = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
            let Some(name) = clean_member(&raw) else {
                warn!(archive = %staging.label, member = %raw, "skipping archive member outside the archive");
                continue;
            };
            match entry.header().entry_type() {
                tar::EntryType::Regular | tar::EntryType::Continuous => {
                    let dest = staging.dir.join(n.to_string());
                    let mut out = File::create(&dest)
                        .map_err(|e| RuntimeError::io(format!("creating {}", dest.display()), e))?;
                    let mut hasher = Sha256::new();
                    let mut size = 0u64;
                    let mut buf = vec![0u8; 256 * 1024];
                    loop {
                        let k = entry.read(&mut buf).map_err(bad)?;
                        if k == 0 {
                            break;
                        }
                        hasher.update(&buf[..k]);
                        out.write_all(&buf[..k]).map_err(|e| {
                            RuntimeError::io(format!("writing {}", dest.display()), e)
                        })?;
                        size += k as u64;
                    }
                    out.sync_all()
                        .map_err(|e| RuntimeError::io(format!("syncing {}", dest.display()), e))?;
                    let digest = format!("sha256:{}", hex::encode(hasher.finalize()));
                    staging.files.insert(
                        name,
                        Member {
                            path: dest,
                            digest,
                            size,
                            committed: false,
                        },
                    );
                }
                kind @ (tar::EntryType::Symlink | tar::EntryType::Link) => {
                    let Some(target) = entry.link_name_bytes() else {
                        continue;
                    };
                    let target = String::from_utf8_lossy(&target).into_owned();
                    // Symlinks are relative to their directory, hardlinks to the archive root.
                    let joined = match kind {
                        tar::EntryType::Symlink if !target.starts_with('/') => {
                            match name.rsplit_once('/') {
                                Some((dir, _)) => format!("{dir}/{target}"),
                                None => target.clone(),
                            }
                        }
                        _ => target.clone(),
                    };
                    if let Some(target) = clean_member(&joined) {
                        staging.links.insert(name, target);
                    }
                }
                _ => {}
            }
        }
        Ok(staging)
    }

    fn resolve(&self, name: &str) -> Option<&str> {
        let mut name = clean_member(name)?;
        for _ in 0..MAX_MEMBER_LINKS {
            if let Some((key, _)) = self.files.get_key_value(&name) {
                return Some(key.as_str());
            }
            name = self.links.get(&name)?.clone();
        }
        None
    }

    fn member(&self, name: &str) -> Result<&Member> {
        self.resolve(name)
            .and_then(|k| self.files.get(k))
            .ok_or_else(|| self.missing(name))
    }

    fn missing(&self, name: &str) -> RuntimeError {
        RuntimeError::Image {
            reference: self.label.clone(),
            message: format!("archive has no {name:?}"),
        }
    }

    fn read(&self, name: &str) -> Result<Vec<u8>> {
        let member = self.member(name)?;
        fs::read(&member.path)
            .map_err(|e| RuntimeError::io(format!("reading {}", member.path.display()), e))
    }

    fn read_json<T: serde::de::DeserializeOwned>(&self, name: &str) -> Result<Option<T>> {
        if self.resolve(name).is_none() {
            return Ok(None);
        }
        let bytes = self.read(name)?;
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| RuntimeError::Image {
                reference: self.label.clone(),
                message: format!("malformed {name}: {e}"),
            })
    }

    /// The member `blobs/sha256/<hex>` of an OCI layout, checked against its digest.
    fn blob_member_name(&self, digest: &str) -> Result<String> {
        super::reference::validate_digest(digest).map_err(|m| RuntimeError::Image {
            reference: self.label.clone(),
            message: m,
        })?;
        let name = format!("blobs/sha256/{}", &digest["sha256:".len()..]);
        let member = self.member(&name)?;
        if member.digest != digest {
            return Err(RuntimeError::Image {
                reference: self.label.clone(),
                message: format!(
                    "{name}: digest mismatch: content hashes to {}",
                    member.digest
                ),
            });
        }
        Ok(name)
    }

    /// Moves a member into the blob store (once); returns its digest and size.
    fn commit(&mut self, name: &str) -> Result<(String, u64)> {
        let key = self
            .resolve(name)
            .map(str::to_string)
            .ok_or_else(|| self.missing(name))?;
        let store = self.store;
        let member = self
            .files
            .get_mut(&key)
            .ok_or_else(|| RuntimeError::Image {
                reference: name.to_string(),
                message: "archive member vanished".into(),
            })?;
        if !member.committed {
            store.commit_blob_file(&member.path, &member.digest)?;
            member.committed = true;
        }
        Ok((member.digest.clone(), member.size))
    }

    /// The first bytes of a member, to tell its compression.
    fn magic(&self, name: &str) -> Result<Vec<u8>> {
        let member = self.member(name)?;
        let path = if member.committed {
            self.store.blob_path(&member.digest)?
        } else {
            member.path.clone()
        };
        let mut buf = [0u8; 8];
        let mut file = File::open(&path)
            .map_err(|e| RuntimeError::io(format!("reading {}", path.display()), e))?;
        let n = file
            .read(&mut buf)
            .map_err(|e| RuntimeError::io(format!("reading {}", path.display()), e))?;
        Ok(buf[..n].to_vec())
    }
}

/// Image names an OCI index entry carries: containerd's full name, or the OCI ref name
/// when it is a full reference rather than a bare tag.
fn names_from_annotations(annotations: &BTreeMap<String, String>) -> Vec<String> {
    if let Some(name) = annotations.get(manifest::ANNOTATION_CONTAINERD_NAME) {
        return vec![name.clone()];
    }
    match annotations.get(manifest::ANNOTATION_REF_NAME) {
        Some(r) if r.contains(['/', ':', '@']) => vec![r.clone()],
        Some(tag) => {
            debug!(tag = %tag, "OCI archive entry names only a tag, not an image; importing it untagged");
            Vec::new()
        }
        None => Vec::new(),
    }
}

impl ImageStore {
    /// Imports a `docker save` tarball or an OCI image-layout archive (compressed or not);
    /// returns the images it held. Every blob's digest is verified.
    pub fn import_archive(&self, path: &Path) -> Result<Vec<ImageInfo>> {
        let mut staging = Staging::extract(self, path)?;
        let docker: Option<Vec<DockerManifestEntry>> = staging.read_json("manifest.json")?;
        let oci: Option<manifest::Index> = staging.read_json("index.json")?;
        if docker.is_none() && oci.is_none() {
            return Err(RuntimeError::Image {
                reference: staging.label.clone(),
                message: "not an image archive: it has neither manifest.json (docker save) nor index.json (OCI layout)"
                    .into(),
            });
        }
        // `docker save`'s tags, by config digest, to name the OCI entries of the same images.
        let mut docker_tags: HashMap<String, Vec<String>> = HashMap::new();
        for entry in docker.iter().flatten() {
            if let Ok(member) = staging.member(&entry.config) {
                docker_tags
                    .entry(member.digest.clone())
                    .or_default()
                    .extend(entry.repo_tags.clone().unwrap_or_default());
            }
        }

        let mut images: Vec<ImageInfo> = Vec::new();
        let mut done: HashSet<String> = HashSet::new();
        if let Some(index) = &oci {
            for desc in &index.manifests {
                let names = names_from_annotations(&desc.annotations);
                match self.import_oci_entry(&mut staging, desc, names, &docker_tags, 0) {
                    Ok(Some(info)) => {
                        done.insert(info.id.clone());
                        images.push(info);
                    }
                    Ok(None) => {}
                    Err(e) if docker.is_some() => {
                        debug!(archive = %staging.label, error = %e, "OCI entry unusable; using manifest.json");
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        for entry in docker.iter().flatten() {
            let config_digest = staging.member(&entry.config)?.digest.clone();
            if done.contains(&config_digest) {
                continue;
            }
            let info = self.import_docker_entry(&mut staging, entry)?;
            done.insert(info.id.clone());
            images.push(info);
        }
        // One image may be listed under several names: report each image once, up to date.
        let mut merged: Vec<ImageInfo> = Vec::new();
        for info in images {
            match merged.iter_mut().find(|m| m.id == info.id) {
                Some(m) => *m = info,
                None => merged.push(info),
            }
        }
        info!(archive = %staging.label, images = merged.len(), "imported image archive");
        Ok(merged)
    }

    /// Imports every `*.tar`, `*.tar.gz`, `*.tgz` and `*.tar.zst` in `dir` (k3s's air-gap
    /// images directory). Archives that cannot be read are logged and skipped; archives
    /// imported before and unchanged since (same size, mtime and inode, images still here)
    /// are not read again.
    pub fn import_dir(&self, dir: &Path) -> Result<Vec<ImageInfo>> {
        let entries = match fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(RuntimeError::io(format!("listing {}", dir.display()), e)),
        };
        let mut paths: Vec<PathBuf> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                let name = p
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                p.is_file()
                    && [".tar", ".tar.gz", ".tgz", ".tar.zst"]
                        .iter()
                        .any(|s| name.ends_with(s))
            })
            .collect();
        paths.sort();
        let mut seen: BTreeMap<String, ImportedArchive> = fs::read(self.root().join(IMPORTED_FILE))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        let mut images = Vec::new();
        for path in paths {
            let key = path.display().to_string();
            let stamp = ImportedArchive::stamp(&path);
            if let (Some(stamp), Some(previous)) = (&stamp, seen.get(&key)) {
                if stamp.same_file(previous) {
                    let known: Vec<ImageInfo> = previous
                        .images
                        .iter()
                        .filter_map(|id| self.status(id).ok().flatten())
                        .collect();
                    if known.len() == previous.images.len() {
                        debug!(archive = %key, "archive unchanged since its import; skipping");
                        images.extend(known);
                        continue;
                    }
                }
            }
            match self.import_archive(&path) {
                Ok(found) => {
                    if let Some(mut stamp) = stamp {
                        stamp.images = found.iter().map(|i| i.id.clone()).collect();
                        seen.insert(key, stamp);
                    }
                    images.extend(found);
                }
                Err(e) => {
                    warn!(archive = %key, error = %e, "skipping image archive that could not be imported")
                }
            }
        }
        match serde_json::to_vec_pretty(&seen) {
            Ok(bytes) => {
                if let Err(e) = super::index::write_atomic(self.root(), IMPORTED_FILE, &bytes) {
                    warn!(error = %e, "could not record imported archives");
                }
            }
            Err(e) => warn!(error = %e, "could not record imported archives"),
        }
        Ok(images)
    }

    fn import_oci_entry(
        &self,
        staging: &mut Staging<'_>,
        desc: &Descriptor,
        names: Vec<String>,
        docker_tags: &HashMap<String, Vec<String>>,
        depth: usize,
    ) -> Result<Option<ImageInfo>> {
        let member = staging.blob_member_name(&desc.digest)?;
        let bytes = staging.read(&member)?;
        let document = manifest::parse_document(&bytes, Some(&desc.media_type)).map_err(|m| {
            RuntimeError::Image {
                reference: staging.label.clone(),
                message: m,
            }
        })?;
        match document {
            Document::Index(index) => {
                if depth >= MAX_INDEX_DEPTH {
                    return Err(RuntimeError::Image {
                        reference: staging.label.clone(),
                        message: "image indexes nest too deep".into(),
                    });
                }
                let chosen = match manifest::select_platform(&index) {
                    Some(d) => d.clone(),
                    None if index.manifests.len() == 1 && index.manifests[0].platform.is_none() => {
                        index.manifests[0].clone()
                    }
                    None => {
                        let host = manifest::host_platform();
                        warn!(archive = %staging.label, index = %desc.digest, "no image for {}/{} in the archive's index; skipping", host.os, host.architecture);
                        return Ok(None);
                    }
                };
                self.import_oci_entry(staging, &chosen, names, docker_tags, depth + 1)
            }
            Document::Manifest(manifest) => {
                let (manifest_digest, manifest_size) = staging.commit(&member)?;
                let config_member = staging.blob_member_name(&manifest.config.digest)?;
                staging.commit(&config_member)?;
                for layer in &manifest.layers {
                    let name = staging.blob_member_name(&layer.digest)?;
                    staging.commit(&name)?;
                }
                let mut all_names = names;
                all_names.extend(
                    docker_tags
                        .get(&manifest.config.digest)
                        .cloned()
                        .unwrap_or_default(),
                );
                let media_type = if manifest.media_type.is_empty() {
                    desc.media_type.clone()
                } else {
                    manifest.media_type.clone()
                };
                self.register(NewImage {
                    manifest_digest,
                    manifest_media_type: media_type,
                    manifest_size,
                    manifest,
                    tags: normalized_names(all_names),
                    repo_digests: Vec::new(),
                })
                .map(Some)
            }
        }
    }

    /// Imports one image of a legacy `docker save` archive: the layers are stored as they
    /// are and an OCI manifest is written for them.
    fn import_docker_entry(
        &self,
        staging: &mut Staging<'_>,
        entry: &DockerManifestEntry,
    ) -> Result<ImageInfo> {
        let (config_digest, config_size) = staging.commit(&entry.config)?;
        let mut layers = Vec::with_capacity(entry.layers.len());
        for layer in &entry.layers {
            let magic = staging.magic(layer)?;
            let (digest, size) = staging.commit(layer)?;
            layers.push(Descriptor {
                media_type: manifest::layer_media_type_for(&magic).to_string(),
                digest,
                size,
                platform: None,
                annotations: BTreeMap::new(),
            });
        }
        let manifest = Manifest {
            schema_version: 2,
            media_type: manifest::OCI_MANIFEST.into(),
            config: Descriptor {
                media_type: manifest::OCI_CONFIG.into(),
                digest: config_digest,
                size: config_size,
                platform: None,
                annotations: BTreeMap::new(),
            },
            layers,
            annotations: BTreeMap::new(),
        };
        let bytes = serde_json::to_vec(&manifest)
            .map_err(|e| RuntimeError::io("encoding manifest", io::Error::other(e)))?;
        let manifest_digest = self.write_blob(&bytes, None)?;
        self.register(NewImage {
            manifest_digest,
            manifest_media_type: manifest::OCI_MANIFEST.into(),
            manifest_size: bytes.len() as u64,
            manifest,
            tags: normalized_names(entry.repo_tags.clone().unwrap_or_default()),
            repo_digests: Vec::new(),
        })
    }

    /// Writes the images `references` name as a `docker save` tarball (with an OCI
    /// `index.json` and `oci-layout` too, as Docker ≥ 25 does). A tag reference saves that
    /// tag; an ID saves the image untagged.
    pub fn save(&self, references: &[String], out: &mut dyn Write) -> Result<()> {
        let index = Index::load(self.root())?;
        // Image ID → tags to save, in the order asked.
        let mut order: Vec<String> = Vec::new();
        let mut tags: HashMap<String, Vec<String>> = HashMap::new();
        for reference in references {
            let Some((record, matched)) = lookup(&index, reference)? else {
                return Err(RuntimeError::NotFound(format!("image {reference:?}")));
            };
            if !tags.contains_key(&record.id) {
                order.push(record.id.clone());
            }
            let entry = tags.entry(record.id.clone()).or_default();
            if let Matched::Name(name) = matched {
                if !name.contains('@') && !entry.contains(&name) {
                    entry.push(name);
                }
            }
        }

        let mut builder = tar::Builder::new(out);
        let write_err = |e: io::Error| RuntimeError::io("writing image archive", e);
        append_dir(&mut builder, "blobs/").map_err(write_err)?;
        append_dir(&mut builder, "blobs/sha256/").map_err(write_err)?;
        let mut written: HashSet<String> = HashSet::new();
        let mut docker_entries = Vec::new();
        let mut oci_entries = Vec::new();
        for id in &order {
            let record = index
                .images
                .get(id)
                .ok_or_else(|| RuntimeError::NotFound(format!("image {id:?}")))?;
            for digest in record.blobs() {
                if written.insert(digest.to_string()) {
                    let path = self.blob_path(digest)?;
                    let file = File::open(&path)
                        .map_err(|e| RuntimeError::io(format!("reading blob {digest}"), e))?;
                    let size = file
                        .metadata()
                        .map_err(|e| RuntimeError::io(format!("reading blob {digest}"), e))?
                        .len();
                    append_file(&mut builder, &blob_member(digest), size, file)
                        .map_err(write_err)?;
                }
            }
            let image_tags = tags.get(id).cloned().unwrap_or_default();
            docker_entries.push(DockerManifestEntry {
                config: blob_member(&record.id),
                repo_tags: Some(
                    image_tags
                        .iter()
                        .filter_map(|t| ImageReference::parse(t).ok().map(|r| r.familiar()))
                        .collect(),
                ),
                layers: record
                    .layers
                    .iter()
                    .map(|l| blob_member(&l.digest))
                    .collect(),
            });
            let base = Descriptor {
                media_type: record.manifest_media_type.clone(),
                digest: record.manifest_digest.clone(),
                size: record.manifest_size,
                platform: None,
                annotations: BTreeMap::new(),
            };
            if image_tags.is_empty() {
                oci_entries.push(base.clone());
            }
            for tag in &image_tags {
                let mut d = base.clone();
                d.annotations
                    .insert(manifest::ANNOTATION_CONTAINERD_NAME.into(), tag.clone());
                if let Some(t) = ImageReference::parse(tag).ok().and_then(|r| r.tag) {
                    d.annotations
                        .insert(manifest::ANNOTATION_REF_NAME.into(), t);
                }
                oci_entries.push(d);
            }
        }
        let oci_index = manifest::Index {
            schema_version: 2,
            media_type: manifest::OCI_INDEX.into(),
            manifests: oci_entries,
            annotations: BTreeMap::new(),
        };
        append_bytes(&mut builder, "index.json", &to_json(&oci_index)?).map_err(write_err)?;
        append_bytes(&mut builder, "manifest.json", &to_json(&docker_entries)?)
            .map_err(write_err)?;
        append_bytes(
            &mut builder,
            "oci-layout",
            br#"{"imageLayoutVersion":"1.0.0"}"#,
        )
        .map_err(write_err)?;
        builder
            .into_inner()
            .map_err(write_err)?
            .flush()
            .map_err(write_err)?;
        Ok(())
    }
}

fn to_json<T: Serialize>(value: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(value)
        .map_err(|e| RuntimeError::io("encoding archive index", io::Error::other(e)))
}

fn blob_member(digest: &str) -> String {
    format!("blobs/sha256/{}", digest.trim_start_matches("sha256:"))
}

fn base_header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut header = tar::Header::new_ustar();
    header.set_entry_type(kind);
    header.set_mode(mode);
    header.set_size(size);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(0);
    header
}

fn append_dir<W: Write>(builder: &mut tar::Builder<W>, path: &str) -> io::Result<()> {
    let mut header = base_header(tar::EntryType::Directory, 0o755, 0);
    builder.append_data(&mut header, path, io::empty())
}

fn append_file<W: Write>(
    builder: &mut tar::Builder<W>,
    path: &str,
    size: u64,
    data: impl Read,
) -> io::Result<()> {
    let mut header = base_header(tar::EntryType::Regular, 0o644, size);
    builder.append_data(&mut header, path, data)
}

fn append_bytes<W: Write>(
    builder: &mut tar::Builder<W>,
    path: &str,
    data: &[u8],
) -> io::Result<()> {
    append_file(builder, path, data.len() as u64, data)
}
