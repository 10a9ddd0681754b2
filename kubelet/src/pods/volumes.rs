//! Pod volumes, laid out as the real kubelet lays them out
//! (`ROOT/pods/<uid>/volumes/kubernetes.io~<plugin>/<name>`): emptyDir (on disk, or tmpfs
//! for `medium: Memory`), hostPath with its type checks, configMap, secret, downwardAPI
//! and projected volumes written atomically through a `..data` symlink (so updates
//! appear whole inside running containers), and persistentVolumeClaims bound to
//! hostPath/local PersistentVolumes. Secret and projected volumes (the ServiceAccount
//! token's among them) are each on their own tmpfs, as the kubelet keeps them, so that
//! secrets are never written to the node's disk.

use std::collections::BTreeMap;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{
    DownwardAPIVolumeFile, KeyToPath, PersistentVolume, PersistentVolumeClaim, Pod, Volume,
};
use kube::api::Api;

use super::env::{config_map_entries, field_value, secret_entries, Sources};
use super::resources::resource_field_value;

#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    #[error("MountVolume.SetUp failed for volume \"{volume}\" : {message}")]
    SetUp { volume: String, message: String },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> VolumeError {
    let context = context.into();
    move |source| VolumeError::Io { context, source }
}

fn setup(volume: &str, message: impl Into<String>) -> VolumeError {
    VolumeError::SetUp { volume: volume.into(), message: message.into() }
}

/// Whether memory-backed volumes (secret, projected, `medium: Memory` emptyDirs) are on
/// their own tmpfs, or plain directories: a hollow node's fake runtime runs nothing that
/// reads them, and many hollow nodes share one process that need not be root, so they
/// mount nothing (as kubemark's hollow kubelet uses a fake mounter).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemoryBacking {
    Tmpfs,
    Directory,
}

/// Where each volume of a pod is on the host, by volume name.
pub type VolumePaths = BTreeMap<String, PathBuf>;

pub fn pod_dir(pods_dir: &Path, uid: &str) -> PathBuf {
    pods_dir.join(uid)
}

/// The ServiceAccount tokens a pod's projected volumes hold, by volume and path, each
/// renewed once 80% of its lifetime has passed (or after a day), as the kubelet's token
/// manager renews them.
#[derive(Debug, Default)]
pub struct ServiceAccountTokens {
    held: BTreeMap<(String, String), (String, std::time::Instant)>,
}

/// Tokens are renewed at least this often, whatever their lifetime.
const TOKEN_MAX_AGE: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

impl ServiceAccountTokens {
    async fn token(&mut self, pod: &Pod, volume: &str, source: &k8s_openapi::api::core::v1::ServiceAccountTokenProjection, sources: &Sources) -> Result<String, VolumeError> {
        use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
        let key = (volume.to_string(), source.path.clone());
        if let Some((token, renew_at)) = self.held.get(&key) {
            if std::time::Instant::now() < *renew_at {
                return Ok(token.clone());
            }
        }
        let account = pod.spec.as_ref().and_then(|s| s.service_account_name.clone()).filter(|s| !s.is_empty()).unwrap_or_else(|| "default".into());
        let request = TokenRequest {
            spec: TokenRequestSpec {
                audiences: source.audience.clone().filter(|a| !a.is_empty()).into_iter().collect(),
                expiration_seconds: Some(source.expiration_seconds.unwrap_or(3600)),
                bound_object_ref: Some(BoundObjectReference {
                    api_version: Some("v1".into()),
                    kind: Some("Pod".into()),
                    name: pod.metadata.name.clone(),
                    uid: pod.metadata.uid.clone(),
                }),
            },
            ..Default::default()
        };
        let api: Api<k8s_openapi::api::core::v1::ServiceAccount> = Api::namespaced(sources.client().clone(), sources.namespace());
        let answer = api
            .create_token_request(&account, &Default::default(), &request)
            .await
            .map_err(|e| setup(volume, format!("failed to fetch token: {e}")))?;
        let status = answer.status.ok_or_else(|| setup(volume, "failed to fetch token: the answer has no status"))?;
        let lifetime = (status.expiration_timestamp.0.as_second() - k8s_openapi::jiff::Timestamp::now().as_second()).max(0) as u64;
        let renew_in = std::time::Duration::from_secs(lifetime * 4 / 5).min(TOKEN_MAX_AGE);
        self.held.insert(key, (status.token.clone(), std::time::Instant::now() + renew_in));
        Ok(status.token)
    }
}

/// Sets up (or refreshes) every volume of `pod`; returns the host path of each.
pub async fn prepare(pods_dir: &Path, memory: MemoryBacking, pod: &Pod, sources: &mut Sources, tokens: &mut ServiceAccountTokens) -> Result<VolumePaths, VolumeError> {
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let base = pod_dir(pods_dir, &uid).join("volumes");
    let mut out = VolumePaths::new();
    let volumes = pod.spec.as_ref().and_then(|s| s.volumes.clone()).unwrap_or_default();
    for v in &volumes {
        let path = prepare_one(&base, memory, pod, v, sources, tokens).await?;
        out.insert(v.name.clone(), path);
    }
    Ok(out)
}

async fn prepare_one(base: &Path, memory: MemoryBacking, pod: &Pod, v: &Volume, sources: &mut Sources, tokens: &mut ServiceAccountTokens) -> Result<PathBuf, VolumeError> {
    let name = v.name.as_str();
    let fs_group = pod.spec.as_ref().and_then(|s| s.security_context.as_ref()).and_then(|c| c.fs_group).and_then(|g| u32::try_from(g).ok());
    if let Some(e) = &v.empty_dir {
        let dir = base.join("kubernetes.io~empty-dir").join(name);
        let new = !dir.exists();
        std::fs::create_dir_all(&dir).map_err(io(format!("creating emptyDir {}", dir.display())))?;
        // 0777 as the kubelet makes it, so non-root containers can write.
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).map_err(io("chmod emptyDir"))?;
        let mounted = e.medium.as_deref() == Some("Memory") && memory == MemoryBacking::Tmpfs && !is_mount_root(&dir);
        if mounted {
            let size = e.size_limit.as_ref().and_then(|q| apimachinery::quantity::Quantity::parse(&q.0).ok()).map(|q| q.to_bytes());
            // No mode: tmpfs's own 1777, as the kubelet's tmpfs emptyDir has.
            let data = match size {
                Some(bytes) if bytes > 0 => format!("size={bytes}"),
                _ => String::new(),
            };
            mount_tmpfs(name, &dir, &data)?;
        }
        if let Some(gid) = fs_group.filter(|_| new || mounted) {
            give_to_fs_group(&dir, gid)?;
        }
        return Ok(dir);
    }
    if let Some(h) = &v.host_path {
        let path = PathBuf::from(&h.path);
        check_host_path(name, &path, h.type_.as_deref().unwrap_or(""))?;
        return Ok(path);
    }
    if let Some(c) = &v.config_map {
        let dir = base.join("kubernetes.io~configmap").join(name);
        let cm_name = c.name.clone();
        let entries = match sources.config_map(&cm_name).await.map_err(|e| setup(name, e.to_string()))? {
            Some(cm) => config_map_entries(cm),
            None if c.optional == Some(true) => BTreeMap::new(),
            None => return Err(setup(name, format!("configmap \"{cm_name}\" not found"))),
        };
        let files = project_keys(name, &entries, c.items.as_deref(), c.default_mode, "configmap", &cm_name)?;
        write_atomic(&dir, &files, fs_group)?;
        return Ok(dir);
    }
    if let Some(s) = &v.secret {
        let dir = base.join("kubernetes.io~secret").join(name);
        let secret_name = s.secret_name.clone().unwrap_or_default();
        let entries = match sources.secret(&secret_name).await.map_err(|e| setup(name, e.to_string()))? {
            Some(secret) => secret_entries(secret),
            None if s.optional == Some(true) => BTreeMap::new(),
            None => return Err(setup(name, format!("secret \"{secret_name}\" not found"))),
        };
        let files = project_keys(name, &entries, s.items.as_deref(), s.default_mode, "secret", &secret_name)?;
        memory_backed(name, &dir, memory)?;
        write_atomic(&dir, &files, fs_group)?;
        return Ok(dir);
    }
    if let Some(d) = &v.downward_api {
        let dir = base.join("kubernetes.io~downward-api").join(name);
        let files = downward_files(name, pod, d.items.as_deref().unwrap_or_default(), d.default_mode)?;
        write_atomic(&dir, &files, fs_group)?;
        return Ok(dir);
    }
    if let Some(p) = &v.projected {
        let dir = base.join("kubernetes.io~projected").join(name);
        let mut files = Vec::new();
        for source in p.sources.iter().flatten() {
            if let Some(c) = &source.config_map {
                let cm_name = c.name.clone();
                match sources.config_map(&cm_name).await.map_err(|e| setup(name, e.to_string()))? {
                    Some(cm) => files.extend(project_keys(name, &config_map_entries(cm), c.items.as_deref(), p.default_mode, "configmap", &cm_name)?),
                    None if c.optional == Some(true) => {}
                    None => return Err(setup(name, format!("configmap \"{cm_name}\" not found"))),
                }
            }
            if let Some(s) = &source.secret {
                let secret_name = s.name.clone();
                match sources.secret(&secret_name).await.map_err(|e| setup(name, e.to_string()))? {
                    Some(secret) => files.extend(project_keys(name, &secret_entries(secret), s.items.as_deref(), p.default_mode, "secret", &secret_name)?),
                    None if s.optional == Some(true) => {}
                    None => return Err(setup(name, format!("secret \"{secret_name}\" not found"))),
                }
            }
            if let Some(d) = &source.downward_api {
                files.extend(downward_files(name, pod, d.items.as_deref().unwrap_or_default(), p.default_mode)?);
            }
            if let Some(t) = &source.service_account_token {
                let token = tokens.token(pod, name, t, sources).await?;
                let mode = p.default_mode.unwrap_or(0o644) as u32;
                files.push((t.path.clone(), token.into_bytes(), mode));
            }
        }
        memory_backed(name, &dir, memory)?;
        write_atomic(&dir, &files, fs_group)?;
        return Ok(dir);
    }
    if let Some(claim) = &v.persistent_volume_claim {
        return claim_path(name, &claim.claim_name, sources).await;
    }
    Err(setup(name, "this volume type is not supported by rkube's kubelet"))
}

fn check_host_path(volume: &str, path: &Path, type_: &str) -> Result<(), VolumeError> {
    let meta = std::fs::metadata(path).ok();
    let fail = |what: &str| Err(setup(volume, format!("hostPath type check failed: {} is not a {what}", path.display())));
    match type_ {
        "" => Ok(()),
        "DirectoryOrCreate" => {
            if meta.is_none() {
                std::fs::create_dir_all(path).map_err(io(format!("creating {}", path.display())))?;
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).map_err(io("chmod hostPath"))?;
            }
            Ok(())
        }
        "FileOrCreate" => {
            if meta.is_none() {
                if let Some(parent) = path.parent() {
                    std::fs::create_dir_all(parent).map_err(io(format!("creating {}", parent.display())))?;
                }
                std::fs::OpenOptions::new().create(true).append(true).open(path).map_err(io(format!("creating {}", path.display())))?;
            }
            Ok(())
        }
        "Directory" => match meta {
            Some(m) if m.is_dir() => Ok(()),
            _ => fail("directory"),
        },
        "File" => match meta {
            Some(m) if m.is_file() => Ok(()),
            _ => fail("file"),
        },
        "Socket" | "CharDevice" | "BlockDevice" => {
            use std::os::unix::fs::FileTypeExt;
            let ok = meta.map(|m| {
                let t = m.file_type();
                match type_ {
                    "Socket" => t.is_socket(),
                    "CharDevice" => t.is_char_device(),
                    _ => t.is_block_device(),
                }
            });
            if ok == Some(true) {
                Ok(())
            } else {
                fail(type_)
            }
        }
        other => Err(setup(volume, format!("unsupported hostPath type {other:?}"))),
    }
}

/// The host directory of a bound claim's PersistentVolume (hostPath or local).
async fn claim_path(volume: &str, claim: &str, sources: &mut Sources) -> Result<PathBuf, VolumeError> {
    let client = sources.client().clone();
    let pvc = Api::<PersistentVolumeClaim>::namespaced(client.clone(), sources.namespace())
        .get_opt(claim)
        .await
        .map_err(|e| setup(volume, e.to_string()))?
        .ok_or_else(|| setup(volume, format!("persistentvolumeclaim \"{claim}\" not found")))?;
    let pv_name = pvc
        .spec
        .as_ref()
        .and_then(|s| s.volume_name.clone())
        .filter(|n| !n.is_empty())
        .ok_or_else(|| setup(volume, format!("persistentvolumeclaim \"{claim}\" is not bound")))?;
    let pv = Api::<PersistentVolume>::all(client)
        .get_opt(&pv_name)
        .await
        .map_err(|e| setup(volume, e.to_string()))?
        .ok_or_else(|| setup(volume, format!("persistentvolume \"{pv_name}\" not found")))?;
    let spec = pv.spec.unwrap_or_default();
    let path = spec
        .host_path
        .map(|h| h.path)
        .or_else(|| spec.local.map(|l| l.path))
        .ok_or_else(|| setup(volume, format!("persistentvolume \"{pv_name}\" is neither hostPath nor local")))?;
    let path = PathBuf::from(path);
    std::fs::create_dir_all(&path).map_err(io(format!("creating {}", path.display())))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o777)).map_err(io("chmod volume"))?;
    Ok(path)
}

/// One file of a projected volume: relative path, content, mode.
type ProjectedFile = (String, Vec<u8>, u32);

fn project_keys(
    volume: &str,
    entries: &BTreeMap<String, Vec<u8>>,
    items: Option<&[KeyToPath]>,
    default_mode: Option<i32>,
    kind: &str,
    source: &str,
) -> Result<Vec<ProjectedFile>, VolumeError> {
    let default_mode = default_mode.map(|m| m as u32 & 0o777).unwrap_or(0o644);
    let mut files = Vec::new();
    match items {
        Some(items) => {
            for item in items {
                let data = entries
                    .get(&item.key)
                    .ok_or_else(|| setup(volume, format!("{kind} {source:?} has no key {:?}", item.key)))?;
                check_relative(volume, &item.path)?;
                files.push((item.path.clone(), data.clone(), item.mode.map(|m| m as u32 & 0o777).unwrap_or(default_mode)));
            }
        }
        None => {
            for (k, v) in entries {
                files.push((k.clone(), v.clone(), default_mode));
            }
        }
    }
    Ok(files)
}

fn downward_files(volume: &str, pod: &Pod, items: &[DownwardAPIVolumeFile], default_mode: Option<i32>) -> Result<Vec<ProjectedFile>, VolumeError> {
    let default_mode = default_mode.map(|m| m as u32 & 0o777).unwrap_or(0o644);
    let mut files = Vec::new();
    for item in items {
        check_relative(volume, &item.path)?;
        let value = if let Some(f) = &item.field_ref {
            field_value(pod, &f.field_path).map_err(|e| setup(volume, e.to_string()))?
        } else if let Some(r) = &item.resource_field_ref {
            let spec = pod.spec.clone().unwrap_or_default();
            let container = spec
                .containers
                .iter()
                .find(|c| Some(&c.name) == r.container_name.as_ref())
                .ok_or_else(|| setup(volume, format!("container {:?} not found", r.container_name.clone().unwrap_or_default())))?;
            resource_field_value(pod, container, r, &BTreeMap::new()).map_err(|e| setup(volume, e.to_string()))?
        } else {
            String::new()
        };
        files.push((item.path.clone(), value.into_bytes(), item.mode.map(|m| m as u32 & 0o777).unwrap_or(default_mode)));
    }
    Ok(files)
}

fn check_relative(volume: &str, path: &str) -> Result<(), VolumeError> {
    if path.is_empty() || path.starts_with('/') || path.split('/').any(|p| p == "..") {
        return Err(setup(volume, format!("invalid path {path:?}: must be relative and may not contain '..'")));
    }
    Ok(())
}

/// Writes `files` as a new timestamped directory, points `..data` at it with one rename,
/// links each top-level name through `..data`, and removes the previous generation —
/// the kubelet's AtomicWriter. Unchanged content is left alone.
fn write_atomic(dir: &Path, files: &[ProjectedFile], fs_group: Option<u32>) -> Result<(), VolumeError> {
    std::fs::create_dir_all(dir).map_err(io(format!("creating {}", dir.display())))?;
    let data_link = dir.join("..data");
    if let Ok(current) = std::fs::read_link(&data_link) {
        let current_dir = dir.join(&current);
        let same = files.iter().all(|(p, data, _)| std::fs::read(current_dir.join(p)).ok().as_deref() == Some(data.as_slice()))
            && count_files(&current_dir) == files.len();
        if same {
            return Ok(());
        }
    }
    let generation = format!("..{}", chrono::Utc::now().format("%Y_%m_%d_%H_%M_%S.%f"));
    let gen_dir = dir.join(&generation);
    std::fs::create_dir_all(&gen_dir).map_err(io(format!("creating {}", gen_dir.display())))?;
    for (rel, data, mode) in files {
        let target = gen_dir.join(rel);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).map_err(io(format!("creating {}", parent.display())))?;
        }
        std::fs::write(&target, data).map_err(io(format!("writing {}", target.display())))?;
        // With an fsGroup, the group owns the files and may read them, as the kubelet
        // sets a volume's ownership.
        let mode = if fs_group.is_some() { mode | 0o040 } else { *mode };
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(mode)).map_err(io("chmod projected file"))?;
    }
    if let Some(gid) = fs_group {
        chown_tree(&gen_dir, gid)?;
    }
    let tmp_link = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp_link);
    symlink(&generation, &tmp_link).map_err(io("linking ..data_tmp"))?;
    let previous = std::fs::read_link(&data_link).ok();
    std::fs::rename(&tmp_link, &data_link).map_err(io("renaming ..data"))?;
    let tops: std::collections::BTreeSet<String> =
        files.iter().filter_map(|(p, _, _)| p.split('/').next().map(str::to_string)).collect();
    for top in &tops {
        let link = dir.join(top);
        if std::fs::symlink_metadata(&link).is_err() {
            symlink(Path::new("..data").join(top), &link).map_err(io(format!("linking {top}")))?;
        }
    }
    // Names that are gone from the source disappear from the volume.
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if !name.starts_with("..") && !tops.contains(&name) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    if let Some(prev) = previous {
        let _ = std::fs::remove_dir_all(dir.join(prev));
    }
    Ok(())
}

/// `fsGroup` on a writable volume: the group owns its top directory, may write in it, and
/// new files inherit the group (setgid), as the kubelet's SetVolumeOwnership leaves it.
fn give_to_fs_group(dir: &Path, gid: u32) -> Result<(), VolumeError> {
    std::os::unix::fs::chown(dir, None, Some(gid)).map_err(io(format!("chown {} to group {gid}", dir.display())))?;
    let mode = std::fs::metadata(dir).map_err(io(format!("stat {}", dir.display())))?.permissions().mode();
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode((mode & 0o7777) | 0o2070)).map_err(io(format!("chmod {}", dir.display())))
}

/// Gives every file and directory under `dir` (itself included) to group `gid`.
fn chown_tree(dir: &Path, gid: u32) -> Result<(), VolumeError> {
    std::os::unix::fs::lchown(dir, None, Some(gid)).map_err(io(format!("chown {} to group {gid}", dir.display())))?;
    if std::fs::symlink_metadata(dir).is_ok_and(|m| m.is_dir()) {
        for entry in std::fs::read_dir(dir).map_err(io(format!("reading {}", dir.display())))?.flatten() {
            chown_tree(&entry.path(), gid)?;
        }
    }
    Ok(())
}

fn count_files(dir: &Path) -> usize {
    let mut n = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            match e.file_type() {
                Ok(t) if t.is_dir() => stack.push(e.path()),
                Ok(_) => n += 1,
                Err(_) => {}
            }
        }
    }
    n
}

/// Whether `path` is the root of a mount on another filesystem than its parent's (as a
/// tmpfs on a pod's directory is): two `stat`s, where the mount table would be a read of
/// every mount on the node.
fn is_mount_root(path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let (Some(parent), Ok(own)) = (path.parent(), std::fs::metadata(path)) else { return false };
    std::fs::metadata(parent).is_ok_and(|p| p.dev() != own.dev())
}

fn mount_tmpfs(volume: &str, dir: &Path, data: &str) -> Result<(), VolumeError> {
    let data = (!data.is_empty()).then_some(data);
    nix::mount::mount(Some("tmpfs"), dir, Some("tmpfs"), nix::mount::MsFlags::empty(), data)
        .map_err(|e| setup(volume, format!("mounting tmpfs on {}: {e}", dir.display())))
}

/// Puts a secret or projected volume's directory on its own tmpfs, as the kubelet backs
/// them (an emptyDir of `medium: Memory`; mode 1777, tmpfs's own). A directory that
/// already holds files on disk (written before volumes were memory-backed, and bind
/// mounted into running containers) stays as it is, so those containers keep seeing
/// its updates.
fn memory_backed(volume: &str, dir: &Path, memory: MemoryBacking) -> Result<(), VolumeError> {
    std::fs::create_dir_all(dir).map_err(io(format!("creating {}", dir.display())))?;
    if memory == MemoryBacking::Directory || is_mount_root(dir) {
        return Ok(());
    }
    let empty = std::fs::read_dir(dir).map_err(io(format!("reading {}", dir.display())))?.next().is_none();
    if empty {
        mount_tmpfs(volume, dir, "")?;
    }
    Ok(())
}

/// Unmounts every mount at or below `dir`: a pod's tmpfs volumes, or (`rkube down`, the
/// containers that used them gone) those of every pod on the node.
pub fn unmount_under(dir: &Path) {
    for m in crate::runtime::linux::rootfs::mounts_under(dir) {
        if let Err(e) = nix::mount::umount2(&m, nix::mount::MntFlags::MNT_DETACH) {
            tracing::warn!(mount = %m.display(), error = %e, "unmounting a pod volume failed");
        }
    }
}

/// Unmounts a pod's tmpfs volumes and deletes its directory (PersistentVolume and
/// hostPath data live elsewhere and stay).
pub fn cleanup(pods_dir: &Path, uid: &str) -> Result<(), VolumeError> {
    let dir = pod_dir(pods_dir, uid);
    if !dir.exists() {
        return Ok(());
    }
    unmount_under(&dir);
    std::fs::remove_dir_all(&dir).map_err(io(format!("removing {}", dir.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_writer_swaps_generations() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("vol");
        write_atomic(&dir, &[("a".into(), b"1".to_vec(), 0o644), ("sub/b".into(), b"2".to_vec(), 0o600)], None).expect("write");
        assert_eq!(std::fs::read(dir.join("a")).expect("a"), b"1");
        assert_eq!(std::fs::read(dir.join("sub/b")).expect("b"), b"2");
        let first = std::fs::read_link(dir.join("..data")).expect("link");
        write_atomic(&dir, &[("a".into(), b"1".to_vec(), 0o644), ("sub/b".into(), b"2".to_vec(), 0o600)], None).expect("same");
        assert_eq!(std::fs::read_link(dir.join("..data")).expect("link"), first, "unchanged content keeps its generation");
        write_atomic(&dir, &[("a".into(), b"3".to_vec(), 0o644)], None).expect("update");
        assert_eq!(std::fs::read(dir.join("a")).expect("a"), b"3");
        assert!(!dir.join("sub").exists(), "a key that disappeared is gone");
        assert!(!dir.join(&first).exists(), "the old generation is removed");
    }

    #[test]
    fn mount_roots_are_told_by_their_device() {
        assert!(is_mount_root(Path::new("/proc")), "/proc is another filesystem than /");
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("vol");
        std::fs::create_dir(&dir).expect("mkdir");
        assert!(!is_mount_root(&dir), "a plain directory is not a mount");
        assert!(!is_mount_root(&tmp.path().join("missing")));
    }

    #[test]
    fn items_pick_keys_and_reject_escapes() {
        let entries = BTreeMap::from([("k".to_string(), b"v".to_vec())]);
        let items = vec![KeyToPath { key: "k".into(), path: "x/y".into(), mode: Some(0o400) }];
        let files = project_keys("v", &entries, Some(&items), None, "configmap", "cm").expect("files");
        assert_eq!(files, vec![("x/y".to_string(), b"v".to_vec(), 0o400)]);
        let bad = vec![KeyToPath { key: "k".into(), path: "../etc".into(), mode: None }];
        assert!(project_keys("v", &entries, Some(&bad), None, "configmap", "cm").is_err());
        let missing = vec![KeyToPath { key: "nope".into(), path: "p".into(), mode: None }];
        assert!(project_keys("v", &entries, Some(&missing), None, "configmap", "cm").is_err());
    }
}
