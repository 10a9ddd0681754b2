//! Unpacks a layer tarball into a directory that overlayfs can use as a lower layer:
//! OCI whiteouts become overlayfs whiteouts (`.wh.NAME` → a 0:0 character device NAME,
//! `.wh..wh..opq` → `trusted.overlay.opaque=y`), ownership, modes, times, symlinks,
//! hardlinks and xattrs are kept, and no entry can write outside the directory.

use std::ffi::{OsStr, OsString};
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::sys::stat::{Mode, SFlag, UtimensatFlags};
use nix::sys::time::TimeSpec;
use sha2::{Digest as _, Sha256};
use tracing::{debug, warn};

use crate::runtime::{Result, RuntimeError};

/// The xattr overlayfs reads to hide a lower directory's contents.
pub const OPAQUE_XATTR: &str = "trusted.overlay.opaque";
const WHITEOUT_PREFIX: &[u8] = b".wh.";
const WHITEOUT_META_PREFIX: &[u8] = b".wh..wh.";
const WHITEOUT_OPAQUE: &[u8] = b".wh..wh..opq";
/// How many symlinks one path may pass through before we call it a loop (as Linux does).
const MAX_SYMLINK_HOPS: usize = 40;

/// How a blob is compressed, told by its first bytes (media types lie, e.g. `docker save`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Compression {
    pub fn detect(magic: &[u8]) -> Self {
        if magic.starts_with(&[0x1f, 0x8b]) {
            Compression::Gzip
        } else if magic.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Compression::Zstd
        } else {
            Compression::None
        }
    }
}

/// Wraps `reader` so that it yields the decompressed stream, whatever the compression.
pub fn decompressed<'a, R: Read + 'a>(reader: R, what: &str) -> Result<Box<dyn Read + 'a>> {
    let mut buffered = BufReader::with_capacity(128 * 1024, reader);
    let magic = buffered
        .fill_buf()
        .map_err(|e| RuntimeError::io(format!("reading {what}"), e))?;
    Ok(match Compression::detect(magic) {
        Compression::None => Box::new(buffered),
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(buffered)),
        Compression::Zstd => {
            let decoder = ruzstd::decoding::StreamingDecoder::new(buffered).map_err(|e| {
                RuntimeError::Image {
                    reference: what.to_string(),
                    message: format!("bad zstd stream: {e}"),
                }
            })?;
            Box::new(decoder)
        }
    })
}

/// A reader that hashes (sha256) and counts what passes through it.
pub struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
    count: u64,
}

impl<R: Read> HashingReader<R> {
    pub fn new(inner: R) -> Self {
        HashingReader {
            inner,
            hasher: Sha256::new(),
            count: 0,
        }
    }

    /// Reads what is left (tar readers stop at the end-of-archive blocks), then returns the
    /// `sha256:…` digest and byte count of everything read.
    pub fn finish(mut self) -> io::Result<(String, u64)> {
        io::copy(&mut self, &mut io::sink())?;
        Ok((
            format!("sha256:{}", hex::encode(self.hasher.finalize())),
            self.count,
        ))
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
}

/// Unpacks the (possibly compressed) layer blob at `blob` into `dest`, which must not
/// exist yet, and checks that the uncompressed stream hashes to `diff_id`.
pub fn unpack_layer_blob(blob: &Path, diff_id: &str, dest: &Path) -> Result<()> {
    let file = File::open(blob)
        .map_err(|e| RuntimeError::io(format!("opening layer blob {}", blob.display()), e))?;
    let stream = decompressed(file, diff_id)?;
    let mut hashing = HashingReader::new(stream);
    unpack_tar(&mut hashing, dest, diff_id)?;
    let (actual, _) = hashing
        .finish()
        .map_err(|e| RuntimeError::io(format!("reading layer {diff_id}"), e))?;
    if actual != diff_id {
        return Err(RuntimeError::Image {
            reference: diff_id.to_string(),
            message: format!("layer content does not match its diff ID (got {actual})"),
        });
    }
    Ok(())
}

fn bad_layer(label: &str, message: impl Into<String>) -> RuntimeError {
    RuntimeError::Image {
        reference: label.to_string(),
        message: message.into(),
    }
}

/// Ownership, mode and mtime to apply to an unpacked entry.
#[derive(Debug, Clone, Copy)]
struct Meta {
    uid: u32,
    gid: u32,
    mode: u32,
    mtime: i64,
}

/// Unpacks an uncompressed tar stream into `dest` (created here, must not exist).
/// `label` names the layer in errors.
pub fn unpack_tar<R: Read>(reader: R, dest: &Path, label: &str) -> Result<()> {
    create_dir(dest).map_err(|e| RuntimeError::io(format!("creating {}", dest.display()), e))?;
    let mut archive = tar::Archive::new(reader);
    let entries = archive
        .entries()
        .map_err(|e| bad_layer(label, format!("reading layer tar: {e}")))?;
    // Directory metadata is applied last, deepest first: writing children changes mtimes.
    let mut dirs: Vec<(PathBuf, Meta)> = Vec::new();
    for entry in entries {
        let mut entry = entry.map_err(|e| bad_layer(label, format!("reading layer tar: {e}")))?;
        let raw_path = entry.path_bytes().into_owned();
        let components = clean_path(&raw_path).map_err(|m| bad_layer(label, m))?;
        let header = entry.header();
        let entry_type = header.entry_type();
        let mut meta = Meta {
            uid: header
                .uid()
                .ok()
                .and_then(|v| u32::try_from(v).ok())
                .unwrap_or(0),
            gid: header
                .gid()
                .ok()
                .and_then(|v| u32::try_from(v).ok())
                .unwrap_or(0),
            mode: header.mode().unwrap_or(0o644) & 0o7777,
            mtime: header
                .mtime()
                .ok()
                .and_then(|v| i64::try_from(v).ok())
                .unwrap_or(0),
        };
        let mut xattrs: Vec<(String, Vec<u8>)> = Vec::new();
        if let Ok(Some(extensions)) = entry.pax_extensions() {
            for ext in extensions.flatten() {
                let Ok(key) = ext.key() else { continue };
                let value = ext.value_bytes();
                let number = || {
                    std::str::from_utf8(value)
                        .ok()
                        .and_then(|v| v.split('.').next()?.parse::<i64>().ok())
                };
                match key {
                    "uid" => {
                        meta.uid = number()
                            .and_then(|n| u32::try_from(n).ok())
                            .unwrap_or(meta.uid)
                    }
                    "gid" => {
                        meta.gid = number()
                            .and_then(|n| u32::try_from(n).ok())
                            .unwrap_or(meta.gid)
                    }
                    "mtime" => meta.mtime = number().unwrap_or(meta.mtime),
                    k => {
                        if let Some(name) = k.strip_prefix("SCHILY.xattr.") {
                            xattrs.push((name.to_string(), value.to_vec()));
                        }
                    }
                }
            }
        }

        let Some((name, parents)) = components.split_last() else {
            // The layer's root directory ("./").
            if entry_type.is_dir() {
                dirs.push((dest.to_path_buf(), meta));
            }
            continue;
        };
        let parent = resolve_dir(dest, parents, true).map_err(|m| bad_layer(label, m))?;
        let name_bytes = name.as_bytes();

        if name_bytes.starts_with(WHITEOUT_PREFIX) {
            if name_bytes == WHITEOUT_OPAQUE {
                xattr::set(&parent, OPAQUE_XATTR, b"y").map_err(|e| {
                    RuntimeError::io(
                        format!("marking {} opaque ({OPAQUE_XATTR})", parent.display()),
                        e,
                    )
                })?;
            } else if name_bytes.starts_with(WHITEOUT_META_PREFIX) {
                debug!(layer = label, entry = %String::from_utf8_lossy(&raw_path), "skipping whiteout metadata entry");
            } else {
                let hidden = parent.join(OsStr::from_bytes(&name_bytes[WHITEOUT_PREFIX.len()..]));
                remove_existing(&hidden)?;
                nix::sys::stat::mknod(
                    &hidden,
                    SFlag::S_IFCHR,
                    Mode::empty(),
                    nix::sys::stat::makedev(0, 0),
                )
                .map_err(|e| {
                    RuntimeError::io(format!("creating whiteout {}", hidden.display()), e.into())
                })?;
                std::os::unix::fs::lchown(&hidden, Some(0), Some(0))
                    .map_err(|e| RuntimeError::io(format!("chown {}", hidden.display()), e))?;
            }
            continue;
        }

        let target = parent.join(name);
        let io_err =
            |what: &str, e: io::Error| RuntimeError::io(format!("{what} {}", target.display()), e);
        match entry_type {
            tar::EntryType::Directory => {
                match fs::symlink_metadata(&target) {
                    Ok(m) if m.is_dir() => {}
                    Ok(_) => {
                        remove_existing(&target)?;
                        create_dir(&target).map_err(|e| io_err("creating directory", e))?;
                    }
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {
                        create_dir(&target).map_err(|e| io_err("creating directory", e))?;
                    }
                    Err(e) => return Err(io_err("inspecting", e)),
                }
                set_xattrs(&target, &xattrs);
                dirs.push((target, meta));
            }
            tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::GNUSparse => {
                remove_existing(&target)?;
                let mut file = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .custom_flags(libc::O_NOFOLLOW)
                    .open(&target)
                    .map_err(|e| io_err("creating", e))?;
                io::copy(&mut entry, &mut file).map_err(|e| io_err("writing", e))?;
                drop(file);
                apply_meta(&target, meta, false)?;
                set_xattrs(&target, &xattrs);
            }
            tar::EntryType::Symlink => {
                let Some(link) = entry.link_name_bytes() else {
                    return Err(bad_layer(
                        label,
                        format!("symlink {} has no target", target.display()),
                    ));
                };
                remove_existing(&target)?;
                std::os::unix::fs::symlink(OsStr::from_bytes(&link), &target)
                    .map_err(|e| io_err("creating symlink", e))?;
                apply_meta(&target, meta, true)?;
            }
            tar::EntryType::Link => {
                let Some(link) = entry.link_name_bytes() else {
                    return Err(bad_layer(
                        label,
                        format!("hardlink {} has no target", target.display()),
                    ));
                };
                let link_components = clean_path(&link).map_err(|m| bad_layer(label, m))?;
                let Some((link_name, link_parents)) = link_components.split_last() else {
                    return Err(bad_layer(
                        label,
                        format!("hardlink {} points at the layer root", target.display()),
                    ));
                };
                let source = resolve_dir(dest, link_parents, false)
                    .map_err(|m| bad_layer(label, m))?
                    .join(link_name);
                match fs::symlink_metadata(&source) {
                    Ok(m) if !m.is_dir() => {}
                    _ => {
                        return Err(bad_layer(
                            label,
                            format!(
                            "hardlink {} points at {}, which is not a file earlier in the layer",
                            String::from_utf8_lossy(&raw_path),
                            String::from_utf8_lossy(&link)
                        ),
                        ))
                    }
                }
                if source != target {
                    remove_existing(&target)?;
                    fs::hard_link(&source, &target).map_err(|e| io_err("creating hardlink", e))?;
                }
            }
            tar::EntryType::Fifo => {
                remove_existing(&target)?;
                nix::unistd::mkfifo(&target, Mode::from_bits_truncate(0o600))
                    .map_err(|e| io_err("creating fifo", e.into()))?;
                apply_meta(&target, meta, false)?;
            }
            tar::EntryType::Char | tar::EntryType::Block => {
                debug!(layer = label, entry = %String::from_utf8_lossy(&raw_path), "skipping device node");
            }
            other => {
                debug!(layer = label, entry = %String::from_utf8_lossy(&raw_path), kind = ?other, "skipping tar entry");
            }
        }
    }
    for (dir, meta) in dirs.iter().rev() {
        apply_meta(dir, *meta, false)?;
    }
    Ok(())
}

/// Splits a tar path into clean components: no empty or `.` parts, `..` resolved
/// lexically, and an error if it climbs above the root.
fn clean_path(raw: &[u8]) -> std::result::Result<Vec<OsString>, String> {
    let mut out: Vec<OsString> = Vec::new();
    for part in raw.split(|b| *b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => {
                if out.pop().is_none() {
                    return Err(format!(
                        "tar entry {:?} escapes the layer root",
                        String::from_utf8_lossy(raw)
                    ));
                }
            }
            p => out.push(OsString::from_vec(p.to_vec())),
        }
    }
    Ok(out)
}

/// Resolves `components` as a directory inside `root`, following symlinks met on the way
/// as if `root` were `/` (never leaving it), and creating missing directories if `create`.
fn resolve_dir(
    root: &Path,
    components: &[OsString],
    create: bool,
) -> std::result::Result<PathBuf, String> {
    let mut resolved: Vec<OsString> = Vec::new();
    let mut pending: std::collections::VecDeque<OsString> = components.iter().cloned().collect();
    let mut hops = 0;
    while let Some(part) = pending.pop_front() {
        match part.as_bytes() {
            b"" | b"." => continue,
            b".." => {
                resolved.pop();
                continue;
            }
            _ => {}
        }
        let mut candidate = root.to_path_buf();
        candidate.extend(resolved.iter());
        candidate.push(&part);
        match fs::symlink_metadata(&candidate) {
            Ok(m) if m.file_type().is_symlink() => {
                hops += 1;
                if hops > MAX_SYMLINK_HOPS {
                    return Err(format!(
                        "too many levels of symbolic links at {}",
                        candidate.display()
                    ));
                }
                let target = fs::read_link(&candidate)
                    .map_err(|e| format!("reading {}: {e}", candidate.display()))?;
                let target = target.into_os_string().into_vec();
                if target.starts_with(b"/") {
                    resolved.clear();
                }
                for (i, piece) in target
                    .split(|b| *b == b'/')
                    .filter(|p| !p.is_empty())
                    .enumerate()
                {
                    pending.insert(i, OsString::from_vec(piece.to_vec()));
                }
            }
            Ok(m) if m.is_dir() => resolved.push(part),
            Ok(_) => return Err(format!("{} is not a directory", candidate.display())),
            Err(e) if e.kind() == io::ErrorKind::NotFound && create => {
                create_dir(&candidate)
                    .map_err(|e| format!("creating {}: {e}", candidate.display()))?;
                resolved.push(part);
            }
            Err(e) => return Err(format!("{}: {e}", candidate.display())),
        }
    }
    let mut out = root.to_path_buf();
    out.extend(resolved.iter());
    Ok(out)
}

/// Creates one directory, 0755 whatever the umask (entries set their own mode later).
fn create_dir(path: &Path) -> io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    fs::DirBuilder::new().mode(0o755).create(path)?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o755))
}

/// Removes whatever is at `path` (file, symlink, device or whole directory) without
/// following symlinks. Missing is fine.
pub fn remove_existing(path: &Path) -> Result<()> {
    let result = match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    };
    result.map_err(|e| RuntimeError::io(format!("removing {}", path.display()), e))
}

fn apply_meta(path: &Path, meta: Meta, is_symlink: bool) -> Result<()> {
    std::os::unix::fs::lchown(path, Some(meta.uid), Some(meta.gid))
        .map_err(|e| RuntimeError::io(format!("chown {}", path.display()), e))?;
    if !is_symlink {
        // After chown, which clears set-id bits.
        fs::set_permissions(path, fs::Permissions::from_mode(meta.mode))
            .map_err(|e| RuntimeError::io(format!("chmod {}", path.display()), e))?;
    }
    let time = TimeSpec::new(meta.mtime, 0);
    nix::sys::stat::utimensat(None, path, &time, &time, UtimensatFlags::NoFollowSymlink)
        .map_err(|e| RuntimeError::io(format!("setting times of {}", path.display()), e.into()))?;
    Ok(())
}

fn set_xattrs(path: &Path, xattrs: &[(String, Vec<u8>)]) {
    for (name, value) in xattrs {
        if let Err(e) = xattr::set(path, name, value) {
            warn!(path = %path.display(), xattr = %name, error = %e, "could not set xattr from layer");
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::os::unix::fs::{FileTypeExt, MetadataExt};

    fn header(path: &str, kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_path(path).unwrap();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_size(size);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_000_000);
        h.set_cksum();
        h
    }

    fn layer(build: impl FnOnce(&mut tar::Builder<Vec<u8>>)) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        build(&mut b);
        b.into_inner().unwrap()
    }

    fn file(b: &mut tar::Builder<Vec<u8>>, path: &str, data: &[u8], mode: u32) {
        let h = header(path, tar::EntryType::Regular, mode, data.len() as u64);
        b.append(&h, data).unwrap();
    }

    fn dir(b: &mut tar::Builder<Vec<u8>>, path: &str, mode: u32) {
        b.append(
            &header(path, tar::EntryType::Directory, mode, 0),
            io::empty(),
        )
        .unwrap();
    }

    fn link(b: &mut tar::Builder<Vec<u8>>, kind: tar::EntryType, path: &str, target: &str) {
        let mut h = header(path, kind, 0o777, 0);
        h.set_link_name(target).unwrap();
        h.set_cksum();
        b.append(&h, io::empty()).unwrap();
    }

    #[test]
    fn converts_whiteouts_to_overlayfs_form() {
        if !crate::runtime::image::have_root() {
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let dest = tmp.path().join("layer");
        let tar = layer(|b| {
            dir(b, "etc/", 0o755);
            file(b, "etc/.wh.passwd", b"", 0o644);
            dir(b, "var/cache/", 0o700);
            file(b, "var/cache/.wh..wh..opq", b"", 0o644);
            file(b, "var/cache/new", b"fresh", 0o640);
            file(b, "gone/.wh.old", b"", 0o644);
            file(b, ".wh..wh.plnk", b"", 0o644);
        });
        unpack_tar(&tar[..], &dest, "test").unwrap();

        let wh = fs::symlink_metadata(dest.join("etc/passwd")).unwrap();
        assert!(wh.file_type().is_char_device(), "whiteout is a char device");
        assert_eq!(wh.rdev(), 0);
        assert_eq!((wh.uid(), wh.gid()), (0, 0));
        assert!(!dest.join("etc/.wh.passwd").exists());
        assert!(fs::symlink_metadata(dest.join("gone/old"))
            .unwrap()
            .file_type()
            .is_char_device());

        let opaque = xattr::get(dest.join("var/cache"), OPAQUE_XATTR).unwrap();
        assert_eq!(opaque.as_deref(), Some(&b"y"[..]));
        assert!(!dest.join("var/cache/.wh..wh..opq").exists());
        assert_eq!(fs::read(dest.join("var/cache/new")).unwrap(), b"fresh");
        assert_eq!(
            fs::metadata(dest.join("var/cache")).unwrap().mode() & 0o7777,
            0o700
        );
        assert!(!dest.join(".wh..wh.plnk").exists());
    }

    #[test]
    fn keeps_modes_links_owners_and_times() {
        if !crate::runtime::image::have_root() {
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let dest = tmp.path().join("layer");
        let tar = layer(|b| {
            dir(b, "./", 0o755);
            dir(b, "bin/", 0o755);
            file(b, "bin/tool", b"#!/bin/sh\n", 0o4755);
            link(b, tar::EntryType::Link, "bin/alias", "bin/tool");
            link(b, tar::EntryType::Symlink, "bin/sh", "/bin/tool");
            dir(b, "tmp/", 0o1777);
            let mut h = header("home/user/.profile", tar::EntryType::Regular, 0o600, 3);
            h.set_uid(1000);
            h.set_gid(1001);
            h.set_cksum();
            b.append(&h, &b"x=1"[..]).unwrap();
        });
        unpack_tar(&tar[..], &dest, "test").unwrap();

        let tool = fs::metadata(dest.join("bin/tool")).unwrap();
        assert_eq!(tool.mode() & 0o7777, 0o4755);
        assert_eq!(tool.mtime(), 1_000_000);
        let alias = fs::metadata(dest.join("bin/alias")).unwrap();
        assert_eq!(alias.ino(), tool.ino(), "hardlink shares the inode");
        assert_eq!(
            fs::read_link(dest.join("bin/sh")).unwrap(),
            Path::new("/bin/tool")
        );
        assert_eq!(
            fs::metadata(dest.join("tmp")).unwrap().mode() & 0o7777,
            0o1777
        );
        assert_eq!(fs::metadata(dest.join("bin")).unwrap().mtime(), 1_000_000);
        let profile = fs::metadata(dest.join("home/user/.profile")).unwrap();
        assert_eq!((profile.uid(), profile.gid()), (1000, 1001));
    }

    #[test]
    fn never_writes_outside_the_layer() {
        if !crate::runtime::image::have_root() {
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let outside = tmp.path().join("outside");
        fs::create_dir(&outside).unwrap();

        // A symlink to an absolute directory is followed as if the layer were `/`.
        let dest = tmp.path().join("layer1");
        let abs = outside.to_str().unwrap().to_string();
        let tar = layer(|b| {
            link(b, tar::EntryType::Symlink, "escape", &abs);
            file(b, "escape/pwned", b"no", 0o644);
            link(b, tar::EntryType::Symlink, "up", "../../..");
            file(b, "up/also", b"no", 0o644);
        });
        unpack_tar(&tar[..], &dest, "test").unwrap();
        assert!(!outside.join("pwned").exists());
        assert!(dest
            .join(abs.trim_start_matches('/'))
            .join("pwned")
            .exists());
        assert!(
            dest.join("also").exists(),
            "'..' at the layer root stays at the root"
        );
        assert!(!tmp.path().join("also").exists());

        // `..` climbing above the root is refused.
        let dest = tmp.path().join("layer2");
        let mut h = tar::Header::new_gnu();
        h.as_gnu_mut().unwrap().name[..12].copy_from_slice(b"../../evil\0\0");
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(0o644);
        h.set_size(0);
        h.set_cksum();
        let mut b = tar::Builder::new(Vec::new());
        b.append(&h, io::empty()).unwrap();
        let tar = b.into_inner().unwrap();
        let err = unpack_tar(&tar[..], &dest, "test").unwrap_err();
        assert!(err.to_string().contains("escapes the layer root"), "{err}");
        assert!(!tmp.path().join("evil").exists());

        // A hardlink must point at a file of the same layer.
        let dest = tmp.path().join("layer3");
        let tar = layer(|b| link(b, tar::EntryType::Link, "passwd", "etc/shadow"));
        assert!(unpack_tar(&tar[..], &dest, "test").is_err());
    }

    #[test]
    fn unpacks_gzip_and_zstd_layers_and_verifies_diff_ids() {
        if !crate::runtime::image::have_root() {
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let tar = layer(|b| file(b, "a", b"hello", 0o644));
        let diff_id = format!("sha256:{}", hex::encode(Sha256::digest(&tar)));
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        io::Write::write_all(&mut gz, &tar).unwrap();
        let blob = tmp.path().join("blob");
        fs::write(&blob, gz.finish().unwrap()).unwrap();

        unpack_layer_blob(&blob, &diff_id, &tmp.path().join("ok")).unwrap();
        assert_eq!(fs::read(tmp.path().join("ok/a")).unwrap(), b"hello");
        // zstd layers (OCI `+zstd`) too.
        let zst = ruzstd::encoding::compress_to_vec(
            &tar[..],
            ruzstd::encoding::CompressionLevel::Fastest,
        );
        assert_eq!(Compression::detect(&zst), Compression::Zstd);
        let zblob = tmp.path().join("zblob");
        fs::write(&zblob, zst).unwrap();
        unpack_layer_blob(&zblob, &diff_id, &tmp.path().join("zok")).unwrap();
        assert_eq!(fs::read(tmp.path().join("zok/a")).unwrap(), b"hello");

        let wrong = format!("sha256:{}", "0".repeat(64));
        let err = unpack_layer_blob(&blob, &wrong, &tmp.path().join("bad")).unwrap_err();
        assert!(err.to_string().contains("does not match"), "{err}");
    }
}
