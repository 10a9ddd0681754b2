//! A container's root filesystem: the image's layers as read-only overlayfs lower
//! directories with a per-container upper directory, so the container writes
//! copy-on-write and the layers are shared and never modified. Also: looking paths up
//! inside a rootfs without following symlinks out of it.

use std::fs;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use nix::mount::{mount, umount2, MntFlags, MsFlags};

use super::cgroups::parse_mountinfo_mount_points;
use super::store::{EMPTY_LOWER_DIR, ROOTFS_DIR, UPPER_DIR, WORK_DIR};

/// Mounts the overlay for `layers` (bottom first) at `<dir>/rootfs`, with upper and work
/// directories beside it. Returns the rootfs path.
pub fn mount_overlay(layers: &[PathBuf], dir: &Path) -> Result<PathBuf, String> {
    let rootfs = dir.join(ROOTFS_DIR);
    let upper = dir.join(UPPER_DIR);
    let work = dir.join(WORK_DIR);
    for d in [&rootfs, &upper, &work] {
        fs::create_dir_all(d).map_err(|e| format!("creating {}: {e}", d.display()))?;
    }
    let mut lower: Vec<PathBuf> = layers.iter().rev().cloned().collect();
    if lower.is_empty() {
        let empty = dir.join(EMPTY_LOWER_DIR);
        fs::create_dir_all(&empty).map_err(|e| format!("creating {}: {e}", empty.display()))?;
        lower.push(empty);
    }
    let mut lower_text = Vec::new();
    for layer in &lower {
        let text = layer
            .to_str()
            .ok_or_else(|| format!("layer path {layer:?} is not UTF-8"))?;
        if text.contains([':', ',']) {
            return Err(format!("layer path {text:?} contains ':' or ','"));
        }
        lower_text.push(text.to_string());
    }
    let (Some(upper_text), Some(work_text)) = (upper.to_str(), work.to_str()) else {
        return Err(format!("container directory {dir:?} is not UTF-8"));
    };
    let options = format!(
        "lowerdir={},upperdir={upper_text},workdir={work_text}",
        lower_text.join(":")
    );
    if options.len() + VOLATILE.len() >= 4096 {
        return Err(format!("overlay options too long ({} layers)", lower.len()));
    }
    let mount_with = |options: &str| {
        mount(
            Some("overlay"),
            &rootfs,
            Some("overlay"),
            MsFlags::empty(),
            Some(options),
        )
    };
    let volatile_known = !VOLATILE_UNSUPPORTED.load(Ordering::Relaxed);
    let mounted = if volatile_known {
        match mount_with(&format!("{options}{VOLATILE}")) {
            // A kernel before 5.10 does not know the option.
            Err(nix::errno::Errno::EINVAL) => {
                let plain = mount_with(&options);
                if plain.is_ok() {
                    VOLATILE_UNSUPPORTED.store(true, Ordering::Relaxed);
                }
                plain
            }
            other => other,
        }
    } else {
        mount_with(&options)
    };
    mounted.map_err(|e| format!("mounting overlay at {}: {e}", rootfs.display()))?;
    Ok(rootfs)
}

/// The writable layer is mounted `volatile` (Linux 5.10+): the overlay never syncs its
/// upper directory, so an unmount does not flush the whole host filesystem the upper
/// lives on (1–2 ms per container here). A container's writable layer dies with it, and
/// never outlives a host crash (a restarted container gets a new layer), so there is
/// nothing to flush for; podman mounts transient containers the same way.
const VOLATILE: &str = ",volatile";

/// Set once a mount with `volatile` failed with EINVAL: an older kernel.
static VOLATILE_UNSUPPORTED: AtomicBool = AtomicBool::new(false);

/// Unmounts a rootfs (lazily when still busy). Not mounted is fine.
pub fn unmount(path: &Path) -> Result<(), String> {
    match umount2(path, MntFlags::empty()) {
        Ok(()) => Ok(()),
        Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => Ok(()),
        Err(nix::errno::Errno::EBUSY) => umount2(path, MntFlags::MNT_DETACH)
            .map_err(|e| format!("unmounting {}: {e}", path.display())),
        Err(e) => Err(format!("unmounting {}: {e}", path.display())),
    }
}

/// Mount points at or below `dir`, deepest first. A path with mounts stacked on it is
/// there once per mount, as each unmount takes off the top one.
pub fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let text = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut points: Vec<PathBuf> = parse_mountinfo_mount_points(&text)
        .into_iter()
        .filter(|p| p.starts_with(dir))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    points
}

/// Whether something is mounted at `path` (not below it). The kernel says so in one
/// `statx` (Linux 5.8+); reading `/proc/self/mountinfo` instead costs the whole table, a
/// few hundred bytes per container on the node, and a remove asks for every container.
pub fn is_mount_point(path: &Path) -> bool {
    use rustix::fs::{statx, AtFlags, StatxAttributes, StatxFlags, CWD};
    match statx(CWD, path, AtFlags::SYMLINK_NOFOLLOW | AtFlags::NO_AUTOMOUNT, StatxFlags::empty()) {
        Ok(st) if st.stx_attributes_mask.contains(StatxAttributes::MOUNT_ROOT) => {
            st.stx_attributes.contains(StatxAttributes::MOUNT_ROOT)
        }
        Err(rustix::io::Errno::NOENT) | Err(rustix::io::Errno::NOTDIR) => false,
        // An older kernel: the mount table answers.
        _ => is_mount_point_in_table(path),
    }
}

fn is_mount_point_in_table(path: &Path) -> bool {
    let text = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    parse_mountinfo_mount_points(&text)
        .iter()
        .any(|p| p == path)
}

/// `path` (as the container sees it) resolved under `root`, following symlinks as the
/// container would, but never out of `root` (the idea of runc's securejoin).
pub fn secure_join(root: &Path, path: &str) -> PathBuf {
    let mut resolved = PathBuf::new(); // relative to root
    let mut pending: Vec<String> = Path::new(path)
        .components()
        .rev()
        .filter_map(component_name)
        .collect();
    let mut links_followed = 0;
    while let Some(name) = pending.pop() {
        if name == ".." {
            resolved.pop();
            continue;
        }
        let candidate = resolved.join(&name);
        match fs::symlink_metadata(root.join(&candidate)) {
            Ok(meta) if meta.file_type().is_symlink() && links_followed < 40 => {
                links_followed += 1;
                let Ok(target) = fs::read_link(root.join(&candidate)) else {
                    resolved = candidate;
                    continue;
                };
                if target.is_absolute() {
                    resolved = PathBuf::new();
                }
                let parts: Vec<String> = target.components().filter_map(component_name).collect();
                pending.extend(parts.into_iter().rev());
            }
            _ => resolved = candidate,
        }
    }
    root.join(resolved)
}

fn component_name(c: Component<'_>) -> Option<String> {
    match c {
        Component::Normal(n) => Some(n.to_string_lossy().into_owned()),
        Component::ParentDir => Some("..".to_string()),
        _ => None,
    }
}

/// A small text file of the rootfs (`/etc/passwd`), empty when absent or unreadable.
pub fn read_rootfs_file(root: &Path, path: &str) -> String {
    let resolved = secure_join(root, path);
    match fs::metadata(&resolved) {
        Ok(meta) if meta.is_file() && meta.len() < (4 << 20) => {
            fs::read_to_string(resolved).unwrap_or_default()
        }
        _ => String::new(),
    }
}

/// Creates the working directory in the rootfs if the image lacks it (as runc does).
pub fn ensure_dir(root: &Path, path: &str) -> Result<(), String> {
    let resolved = secure_join(root, path);
    if resolved.is_dir() {
        return Ok(());
    }
    fs::create_dir_all(&resolved).map_err(|e| format!("creating working directory {path}: {e}"))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;

    #[test]
    fn secure_join_stays_inside_the_root() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        fs::create_dir_all(root.join("etc")).expect("mkdir");
        fs::create_dir_all(root.join("real")).expect("mkdir");
        fs::write(root.join("real/passwd"), "root:x:0:0::/root:/bin/sh\n").expect("write");
        symlink("/real/passwd", root.join("etc/passwd")).expect("symlink");
        symlink("../../../../../../etc", root.join("escape")).expect("symlink");
        symlink("loop", root.join("loop")).expect("symlink");
        assert_eq!(secure_join(root, "/etc/passwd"), root.join("real/passwd"));
        assert_eq!(secure_join(root, "/escape/shadow"), root.join("etc/shadow"));
        assert_eq!(secure_join(root, "/../../x"), root.join("x"));
        assert!(secure_join(root, "/loop/x").starts_with(root));
        assert!(read_rootfs_file(root, "/etc/passwd").starts_with("root:"));
        assert_eq!(read_rootfs_file(root, "/etc/group"), "");
        ensure_dir(root, "/work/dir").expect("ensure");
        assert!(root.join("work/dir").is_dir());
    }

    #[test]
    fn mount_points_agree_with_the_mount_table() {
        let dir = tempfile::tempdir().expect("tempdir");
        let point = dir.path().join("point");
        fs::create_dir(&point).expect("mkdir");
        for path in [Path::new("/"), Path::new("/proc"), dir.path(), &point, &dir.path().join("missing")] {
            assert_eq!(is_mount_point(path), is_mount_point_in_table(path), "{}", path.display());
        }
        assert!(is_mount_point(Path::new("/proc")));
        assert!(!is_mount_point(&point));
        if !nix::unistd::geteuid().is_root() {
            println!("skipping the mounted half of mount_points_agree_with_the_mount_table: needs root to mount a tmpfs");
            return;
        }
        mount(Some("tmpfs"), &point, Some("tmpfs"), MsFlags::empty(), None::<&str>).expect("mount tmpfs");
        let mounted = (is_mount_point(&point), is_mount_point_in_table(&point), is_mount_point(dir.path()));
        unmount(&point).expect("unmount");
        assert_eq!(mounted, (true, true, false));
        assert!(!is_mount_point(&point));
    }
}
