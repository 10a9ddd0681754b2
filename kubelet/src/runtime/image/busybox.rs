//! Builds the `busybox` image every lab has, fully offline, from Debian's statically
//! linked `busybox-static` (`/bin/busybox`): one layer laid out like the official image
//! (a hardlink per applet in `/bin`, `/etc/passwd` and `/etc/group` with root and nobody,
//! `/tmp` 1777…), `Cmd ["sh"]`. Deterministic: the same busybox gives the same digests.

use std::collections::BTreeMap;
use std::io;
use std::path::Path;
use std::process::Command;

use serde_json::json;

use super::manifest::{self, Descriptor, Manifest};
use super::{normalize_reference, sha256_digest, ImageStore, NewImage};
use crate::runtime::{ImageInfo, Result, RuntimeError};

/// Where Debian's `busybox-static` installs the binary.
pub const BUSYBOX_PATH: &str = "/bin/busybox";
pub const BUSYBOX_REFERENCE: &str = "docker.io/library/busybox:latest";
const PATH_ENV: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
const PT_INTERP: u32 = 3;

/// `(path, mode)` of the image's directories, parents first.
const DIRS: &[(&str, u32)] = &[
    ("bin", 0o755),
    ("dev", 0o755),
    ("etc", 0o755),
    ("home", 0o755),
    ("root", 0o700),
    ("tmp", 0o1777),
    ("usr", 0o755),
    ("usr/bin", 0o755),
    ("usr/sbin", 0o755),
    ("var", 0o755),
    ("var/spool", 0o755),
    ("var/spool/mail", 0o755),
    ("var/www", 0o755),
];

const PASSWD: &str = "\
root:x:0:0:root:/root:/bin/sh
daemon:x:1:1:daemon:/usr/sbin:/bin/false
bin:x:2:2:bin:/bin:/bin/false
sys:x:3:3:sys:/dev:/bin/false
sync:x:4:100:sync:/bin:/bin/sync
mail:x:8:8:mail:/var/spool/mail:/bin/false
www-data:x:33:33:www-data:/var/www:/bin/false
operator:x:37:37:Operator:/var:/bin/false
nobody:x:65534:65534:nobody:/home:/bin/false
";

const GROUP: &str = "\
root:x:0:
daemon:x:1:
bin:x:2:
sys:x:3:
adm:x:4:
tty:x:5:
disk:x:6:
lp:x:7:
mail:x:8:
kmem:x:9:
wheel:x:10:root
cdrom:x:11:
dialout:x:18:
floppy:x:19:
video:x:28:
audio:x:29:
tape:x:32:
www-data:x:33:
operator:x:37:
utmp:x:43:
plugdev:x:46:
staff:x:50:
lock:x:54:
netdev:x:82:
users:x:100:
nogroup:x:65534:
";

/// Builds busybox from [`BUSYBOX_PATH`] and stores it as `reference`.
pub fn build_busybox_image(store: &ImageStore, reference: &str) -> Result<ImageInfo> {
    build_busybox_image_from(store, reference, Path::new(BUSYBOX_PATH))
}

/// Builds busybox from the statically linked binary at `busybox` and stores it as `reference`.
pub fn build_busybox_image_from(
    store: &ImageStore,
    reference: &str,
    busybox: &Path,
) -> Result<ImageInfo> {
    let tag = normalize_reference(reference)?;
    let fail = |message: String| RuntimeError::Image {
        reference: tag.clone(),
        message,
    };
    if tag.contains('@') {
        return Err(fail("a built image needs a tag, not a digest".into()));
    }
    let binary = std::fs::read(busybox).map_err(|e| {
        fail(format!(
            "reading {} (Debian's busybox-static package provides it): {e}",
            busybox.display()
        ))
    })?;
    if is_dynamically_linked(&binary) {
        return Err(fail(format!(
            "{} is dynamically linked; install busybox-static (not busybox)",
            busybox.display()
        )));
    }
    let applets = list_applets(busybox).map_err(fail)?;
    let version = busybox_version(busybox);
    let layer = build_layer(&binary, &applets)
        .map_err(|e| RuntimeError::io("building busybox layer", e))?;
    let diff_id = sha256_digest(&layer);

    let config = json!({
        "architecture": manifest::host_platform().architecture,
        "os": "linux",
        "config": {
            "Env": [PATH_ENV],
            "Cmd": ["sh"],
        },
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created_by": format!("{version}, packaged by rkube from busybox-static")}],
    });
    let config_bytes = serde_json::to_vec(&config)
        .map_err(|e| RuntimeError::io("encoding config", io::Error::other(e)))?;
    let config_digest = store.write_blob(&config_bytes, None)?;
    let layer_digest = store.write_blob(&layer, None)?;
    let manifest = Manifest {
        schema_version: 2,
        media_type: manifest::OCI_MANIFEST.into(),
        config: Descriptor {
            media_type: manifest::OCI_CONFIG.into(),
            digest: config_digest,
            size: config_bytes.len() as u64,
            platform: None,
            annotations: BTreeMap::new(),
        },
        layers: vec![Descriptor {
            media_type: manifest::OCI_LAYER_TAR.into(),
            digest: layer_digest,
            size: layer.len() as u64,
            platform: None,
            annotations: BTreeMap::new(),
        }],
        annotations: BTreeMap::new(),
    };
    let manifest_bytes = serde_json::to_vec(&manifest)
        .map_err(|e| RuntimeError::io("encoding manifest", io::Error::other(e)))?;
    let manifest_digest = store.write_blob(&manifest_bytes, None)?;
    store.register(NewImage {
        manifest_digest,
        manifest_media_type: manifest::OCI_MANIFEST.into(),
        manifest_size: manifest_bytes.len() as u64,
        manifest,
        tags: vec![tag.clone()],
        repo_digests: Vec::new(),
    })
}

/// The applet names `busybox --list` prints, sorted, without `busybox` itself.
fn list_applets(busybox: &Path) -> std::result::Result<Vec<String>, String> {
    let output = Command::new(busybox)
        .arg("--list")
        .output()
        .map_err(|e| format!("running {} --list: {e}", busybox.display()))?;
    if !output.status.success() {
        return Err(format!(
            "{} --list failed: {}",
            busybox.display(),
            output.status
        ));
    }
    let mut applets: Vec<String> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(str::trim)
        .filter(|a| !a.is_empty() && *a != "busybox" && !a.contains('/') && *a != "." && *a != "..")
        .map(str::to_string)
        .collect();
    applets.sort();
    applets.dedup();
    if applets.is_empty() {
        return Err(format!("{} --list printed no applets", busybox.display()));
    }
    Ok(applets)
}

/// `BusyBox v1.36.1 (Debian 1:1.36.1-9)`, from the first line of `busybox --help`.
fn busybox_version(busybox: &Path) -> String {
    Command::new(busybox)
        .arg("--help")
        .output()
        .ok()
        .and_then(|o| {
            let text = String::from_utf8_lossy(&o.stdout).into_owned();
            let line = text.lines().next()?.trim().to_string();
            Some(
                line.split(" multi-call")
                    .next()
                    .unwrap_or(&line)
                    .to_string(),
            )
        })
        .filter(|v| v.starts_with("BusyBox"))
        .unwrap_or_else(|| "BusyBox".to_string())
}

/// Whether an ELF binary asks for a program interpreter (is not statically linked).
/// Only little-endian ELF is inspected; anything else is taken as static.
fn is_dynamically_linked(elf: &[u8]) -> bool {
    if elf.len() < 64 || &elf[..4] != b"\x7fELF" || elf[5] != 1 {
        return false;
    }
    let u16_at = |o: usize| {
        elf.get(o..o + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]) as usize)
    };
    let u32_at = |o: usize| {
        elf.get(o..o + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    let u64_at = |o: usize| {
        elf.get(o..o + 8)
            .and_then(|b| <[u8; 8]>::try_from(b).ok())
            .map(u64::from_le_bytes)
            .and_then(|v| usize::try_from(v).ok())
    };
    let (phoff, phentsize, phnum) = match elf[4] {
        2 => (u64_at(0x20), u16_at(0x36), u16_at(0x38)),
        1 => (u32_at(0x1c).map(|v| v as usize), u16_at(0x2a), u16_at(0x2c)),
        _ => return false,
    };
    let (Some(phoff), Some(phentsize), Some(phnum)) = (phoff, phentsize, phnum) else {
        return false;
    };
    (0..phnum).any(|i| u32_at(phoff + i * phentsize) == Some(PT_INTERP))
}

/// The layer tar: directories, `/bin/busybox`, one hardlink per applet, `/etc` files.
/// Fixed times and owners, a fixed order: the same input gives the same bytes.
fn build_layer(binary: &[u8], applets: &[String]) -> io::Result<Vec<u8>> {
    let mut builder = tar::Builder::new(Vec::with_capacity(binary.len() + 64 * 1024));
    for (dir, mode) in DIRS {
        let mut h = header(tar::EntryType::Directory, *mode, 0);
        builder.append_data(&mut h, format!("{dir}/"), io::empty())?;
    }
    let mut h = header(tar::EntryType::Regular, 0o755, binary.len() as u64);
    builder.append_data(&mut h, "bin/busybox", binary)?;
    let mut links: Vec<String> = applets.iter().map(|a| format!("bin/{a}")).collect();
    if applets.iter().any(|a| a == "env") {
        links.push("usr/bin/env".into());
    }
    links.sort();
    for link in links {
        let mut h = header(tar::EntryType::Link, 0o755, 0);
        builder.append_link(&mut h, link, "bin/busybox")?;
    }
    for (path, content) in [("etc/group", GROUP), ("etc/passwd", PASSWD)] {
        let mut h = header(tar::EntryType::Regular, 0o644, content.len() as u64);
        builder.append_data(&mut h, path, content.as_bytes())?;
    }
    builder.into_inner()
}

fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_size(size);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    /// The busybox binary, or None (skip) when absent outside CI; CI must have it.
    pub(crate) fn busybox_or_skip() -> Option<&'static Path> {
        let path = Path::new(BUSYBOX_PATH);
        if path.exists() {
            return Some(path);
        }
        assert!(
            std::env::var_os("CI").is_none(),
            "{BUSYBOX_PATH} is missing: install Debian's busybox-static"
        );
        eprintln!("skipped: {BUSYBOX_PATH} is missing (install busybox-static)");
        None
    }

    #[test]
    fn busybox_image_is_deterministic_and_runs() {
        if !crate::runtime::image::have_root() {
            return;
        }
        let Some(busybox) = busybox_or_skip() else {
            return;
        };
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        let store_a = ImageStore::open(a.path()).unwrap();
        let store_b = ImageStore::open(b.path()).unwrap();
        let first = build_busybox_image_from(&store_a, "busybox", busybox).unwrap();
        let second = build_busybox_image_from(&store_b, "busybox", busybox).unwrap();
        assert_eq!(first.id, second.id, "same busybox, same image ID");
        assert_eq!(first.repo_tags, vec![BUSYBOX_REFERENCE.to_string()]);
        // Building again into the same store is a no-op.
        assert_eq!(
            build_busybox_image(&store_a, "busybox:latest").unwrap().id,
            first.id
        );
        assert_eq!(store_a.list().unwrap().len(), 1);

        let resolved = store_a
            .resolve("busybox")
            .unwrap()
            .expect("busybox resolves");
        let manifest_a = store_a.resolve("busybox").unwrap().unwrap().info;
        assert_eq!(manifest_a, first);
        let config = resolved.config.config().clone().expect("config");
        assert_eq!(config.cmd().clone().unwrap(), vec!["sh".to_string()]);
        assert_eq!(config.env().clone().unwrap(), vec![PATH_ENV.to_string()]);
        assert_eq!(resolved.layers.len(), 1);
        let root = &resolved.layers[0];
        let bb = std::fs::metadata(root.join("bin/busybox")).unwrap();
        assert_eq!(bb.mode() & 0o7777, 0o755);
        assert_eq!(
            std::fs::metadata(root.join("bin/sh")).unwrap().ino(),
            bb.ino(),
            "applets are hardlinks"
        );
        assert_eq!(
            std::fs::metadata(root.join("tmp")).unwrap().mode() & 0o7777,
            0o1777
        );
        assert_eq!(
            std::fs::metadata(root.join("root")).unwrap().mode() & 0o7777,
            0o700
        );
        let passwd = std::fs::read_to_string(root.join("etc/passwd")).unwrap();
        assert!(passwd.starts_with("root:x:0:0:"));
        assert!(passwd.contains("nobody:x:65534:65534:"));
        assert!(std::fs::read_to_string(root.join("etc/group"))
            .unwrap()
            .contains(":x:65534:"));
        for applet in ["sleep", "httpd", "wget", "nslookup", "env"] {
            assert!(root.join("bin").join(applet).exists(), "{applet}");
        }
        // The unpacked shell works (argv[0] "sh" picks the applet).
        let out = Command::new(root.join("bin/sh"))
            .args(["-c", "echo hello from sh"])
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "hello from sh");
    }

    #[test]
    fn detects_dynamic_binaries() {
        if let Ok(ls) = std::fs::read("/bin/ls") {
            assert!(is_dynamically_linked(&ls), "/bin/ls is dynamic on Debian");
        }
        if let Some(busybox) = busybox_or_skip() {
            assert!(!is_dynamically_linked(&std::fs::read(busybox).unwrap()));
        }
        assert!(!is_dynamically_linked(b"not an elf"));
    }
}
