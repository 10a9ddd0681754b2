//! Store-level tests: archive round trips, `docker rmi` semantics, pruning, lookups.

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::io::{self, Write};
use std::path::Path;

use serde_json::json;

use super::manifest::{self, Descriptor, Manifest};
use super::*;

fn tar_of(files: &[(&str, &str)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, content) in files {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(0o644);
        h.set_size(content.len() as u64);
        h.set_mtime(0);
        b.append_data(&mut h, path, content.as_bytes()).unwrap();
    }
    b.into_inner().unwrap()
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(data).unwrap();
    gz.finish().unwrap()
}

fn desc(media_type: &str, bytes: &[u8]) -> Descriptor {
    Descriptor {
        media_type: media_type.into(),
        digest: sha256_digest(bytes),
        size: bytes.len() as u64,
        platform: None,
        annotations: BTreeMap::new(),
    }
}

/// Stores an image made of `layers` (uncompressed tars; `gzip_layers` compresses them).
fn make_image(
    store: &ImageStore,
    tags: &[&str],
    layers: &[Vec<u8>],
    gzip_layers: bool,
    label: &str,
) -> ImageInfo {
    let diff_ids: Vec<String> = layers.iter().map(|l| sha256_digest(l)).collect();
    let config = json!({
        "architecture": manifest::host_platform().architecture,
        "os": "linux",
        "created": "2024-05-01T10:00:00Z",
        "config": {"Cmd": ["/bin/true"], "Labels": {"test": label}},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    });
    let config_bytes = serde_json::to_vec(&config).unwrap();
    store.write_blob(&config_bytes, None).unwrap();
    let mut layer_descs = Vec::new();
    for layer in layers {
        let (bytes, media_type) = if gzip_layers {
            (gzip(layer), manifest::OCI_LAYER_GZIP)
        } else {
            (layer.clone(), manifest::OCI_LAYER_TAR)
        };
        store.write_blob(&bytes, None).unwrap();
        layer_descs.push(desc(media_type, &bytes));
    }
    let manifest = Manifest {
        schema_version: 2,
        media_type: manifest::OCI_MANIFEST.into(),
        config: desc(manifest::OCI_CONFIG, &config_bytes),
        layers: layer_descs,
        annotations: BTreeMap::new(),
    };
    let manifest_bytes = serde_json::to_vec(&manifest).unwrap();
    let manifest_digest = store.write_blob(&manifest_bytes, None).unwrap();
    store
        .register(NewImage {
            manifest_digest,
            manifest_media_type: manifest::OCI_MANIFEST.into(),
            manifest_size: manifest_bytes.len() as u64,
            manifest,
            tags: tags
                .iter()
                .map(|t| normalize_reference(t).unwrap())
                .collect(),
            repo_digests: Vec::new(),
        })
        .unwrap()
}

fn open(dir: &Path) -> ImageStore {
    ImageStore::open(dir).unwrap()
}

#[test]
fn save_then_import_round_trips() {
    if !have_root() {
        return;
    }
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let src = open(a.path());
    let base = tar_of(&[("etc/os-release", "ID=test\n")]);
    let app = tar_of(&[("app/run", "#!/bin/sh\n")]);
    let one = make_image(
        &src,
        &["example.com/app:v1", "example.com/app:stable"],
        &[base.clone(), app],
        true,
        "one",
    );
    let two = make_image(&src, &["busybox"], &[base], false, "two");

    let mut archive = Vec::new();
    src.save(
        &[
            "example.com/app:v1".into(),
            two.id.clone(),
            "busybox:latest".into(),
        ],
        &mut archive,
    )
    .unwrap();
    let path = a.path().join("images.tar");
    fs::write(&path, &archive).unwrap();

    let dst = open(b.path());
    let imported = dst.import_archive(&path).unwrap();
    assert_eq!(imported.len(), 2);
    let got_one = dst
        .status("example.com/app:v1")
        .unwrap()
        .expect("app imported");
    assert_eq!(got_one.id, one.id);
    assert_eq!(
        got_one.repo_tags,
        vec!["example.com/app:v1".to_string()],
        "only the saved tag travels"
    );
    assert_eq!(got_one.size, one.size);
    assert_eq!(got_one.created, one.created);
    assert_eq!(
        dst.status("busybox").unwrap().map(|i| i.id),
        Some(two.id.clone())
    );
    let resolved = dst.resolve("example.com/app:v1").unwrap().unwrap();
    assert_eq!(resolved.layers.len(), 2);
    assert_eq!(
        fs::read_to_string(resolved.layers[0].join("etc/os-release")).unwrap(),
        "ID=test\n"
    );
    assert!(resolved.layers[1].join("app/run").is_file());
    // Both images share the base layer: unpacked once.
    let busybox = dst.resolve("busybox").unwrap().unwrap();
    assert_eq!(busybox.layers[0], resolved.layers[0]);

    // The archive carries both formats.
    let names: Vec<String> = tar::Archive::new(&archive[..])
        .entries()
        .unwrap()
        .map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned())
        .collect();
    for needed in ["manifest.json", "index.json", "oci-layout"] {
        assert!(names.iter().any(|n| n == needed), "{needed} in {names:?}");
    }
    let docker_manifest: serde_json::Value = {
        let mut ar = tar::Archive::new(&archive[..]);
        let mut entry = ar
            .entries()
            .unwrap()
            .map(|e| e.unwrap())
            .find(|e| e.path().unwrap().ends_with("manifest.json"))
            .unwrap();
        let mut s = String::new();
        io::Read::read_to_string(&mut entry, &mut s).unwrap();
        serde_json::from_str(&s).unwrap()
    };
    let tags: Vec<&str> = docker_manifest
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|e| {
            e["RepoTags"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t.as_str().unwrap())
        })
        .collect();
    assert!(
        tags.contains(&"example.com/app:v1") && tags.contains(&"busybox:latest"),
        "{tags:?}"
    );

    // `docker save | gzip` imports as well, and importing twice changes nothing.
    let gz_path = a.path().join("images.tar.gz");
    fs::write(&gz_path, gzip(&archive)).unwrap();
    let c = tempfile::tempdir().unwrap();
    let again = open(c.path());
    assert_eq!(again.import_archive(&gz_path).unwrap().len(), 2);
    assert_eq!(again.import_archive(&gz_path).unwrap().len(), 2);
    assert_eq!(again.list().unwrap().len(), 2);
}

#[test]
fn rmi_untags_then_deletes_and_keeps_shared_layers() {
    if !have_root() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let store = open(tmp.path());
    let base = tar_of(&[("shared", "base")]);
    let x_only = tar_of(&[("x", "x")]);
    let x = make_image(
        &store,
        &["x:1", "x:2"],
        &[base.clone(), x_only.clone()],
        true,
        "x",
    );
    let y = make_image(&store, &["y"], std::slice::from_ref(&base), true, "y");
    let base_dir = store.layer_path(&sha256_digest(&base)).unwrap();
    let x_dir = store.layer_path(&sha256_digest(&x_only)).unwrap();
    let x_blob = store.blob_path(&sha256_digest(&gzip(&x_only))).unwrap();
    let base_blob = store.blob_path(&sha256_digest(&gzip(&base))).unwrap();
    assert!(x_dir.is_dir() && base_dir.is_dir() && x_blob.is_file());
    let usage_before = store.disk_usage().unwrap();

    // One of two tags: only untagged.
    let outcome = store.remove("x:1").unwrap();
    assert_eq!(outcome.untagged, vec!["docker.io/library/x:1".to_string()]);
    assert_eq!(outcome.deleted, None);
    assert_eq!(
        store.status("x:2").unwrap().map(|i| i.id),
        Some(x.id.clone())
    );
    assert!(store.status("x:1").unwrap().is_none());

    // The last tag: the image goes, with what only it used.
    let outcome = store.remove("x:2").unwrap();
    assert_eq!(outcome.deleted, Some(x.id.clone()));
    assert!(!x_dir.exists(), "x's own layer is deleted");
    assert!(!x_blob.exists(), "x's own blob is deleted");
    assert!(
        !store.blob_path(&x.id).unwrap().exists(),
        "x's config is deleted"
    );
    assert!(base_dir.is_dir(), "the layer y shares stays");
    assert!(base_blob.is_file(), "the blob y shares stays");
    assert!(store.resolve("y").unwrap().is_some());
    assert!(store.disk_usage().unwrap() < usage_before);

    let missing = store.remove("x:2").unwrap_err();
    assert!(matches!(missing, RuntimeError::NotFound(_)), "{missing}");

    // By ID: gone with all tags, and the shared layer with it now.
    let outcome = store.remove(&y.id[..19]).unwrap();
    assert_eq!(outcome.deleted, Some(y.id.clone()));
    assert!(!base_dir.exists());
    assert!(store.list().unwrap().is_empty());
}

#[test]
fn prune_keeps_images_in_use() {
    if !have_root() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let store = open(tmp.path());
    let keep = make_image(&store, &["keep"], &[tar_of(&[("k", "k")])], false, "keep");
    let drop1 = make_image(&store, &["drop1"], &[tar_of(&[("d1", "d1")])], false, "d1");
    let drop2 = make_image(&store, &[], &[tar_of(&[("d2", "d2")])], false, "d2");
    let in_use: HashSet<String> = [keep.id.clone()].into();
    let mut removed: Vec<String> = store
        .prune(&in_use)
        .unwrap()
        .into_iter()
        .map(|i| i.id)
        .collect();
    removed.sort();
    let mut want = vec![drop1.id, drop2.id];
    want.sort();
    assert_eq!(removed, want);
    assert_eq!(
        store
            .list()
            .unwrap()
            .into_iter()
            .map(|i| i.id)
            .collect::<Vec<_>>(),
        vec![keep.id]
    );
}

#[test]
fn lookups_by_tag_digest_and_id() {
    if !have_root() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let store = open(tmp.path());
    let info = make_image(
        &store,
        &["localhost:5000/team/app:v1"],
        &[tar_of(&[("a", "a")])],
        false,
        "a",
    );
    let index = index::Index::load(store.root()).unwrap();
    let record = index.images.get(&info.id).unwrap().clone();
    for reference in [
        "localhost:5000/team/app:v1".to_string(),
        info.id.clone(),
        info.id["sha256:".len()..].to_string(),
        info.id[7..19].to_string(),
        format!("localhost:5000/team/app@{}", record.manifest_digest),
        format!("localhost:5000/team/app:v1@{}", record.manifest_digest),
    ] {
        assert_eq!(
            store.status(&reference).unwrap().map(|i| i.id),
            Some(info.id.clone()),
            "{reference}"
        );
    }
    assert!(store
        .status("localhost:5000/team/app:v2")
        .unwrap()
        .is_none());
    assert!(store.status("busybox").unwrap().is_none());
    assert!(store.status("Not/Valid").is_err());

    // Tagging moves a tag; the image it left stays (untagged).
    let other = make_image(
        &store,
        &["localhost:5000/team/app:v1"],
        &[tar_of(&[("b", "b")])],
        false,
        "b",
    );
    assert_eq!(
        store
            .status("localhost:5000/team/app:v1")
            .unwrap()
            .map(|i| i.id),
        Some(other.id.clone())
    );
    assert!(store
        .status(&info.id)
        .unwrap()
        .unwrap()
        .repo_tags
        .is_empty());
    store.tag(&info.id, "mine:latest").unwrap();
    assert_eq!(store.status("mine").unwrap().map(|i| i.id), Some(info.id));
}

/// Writes a tar archive of `(name, bytes)` files and `(name, target)` symlinks.
fn write_archive(path: &Path, files: &[(String, Vec<u8>)], symlinks: &[(&str, &str)]) {
    let mut b = tar::Builder::new(Vec::new());
    for (name, data) in files {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        b.append_data(&mut h, name, &data[..]).unwrap();
    }
    for (name, target) in symlinks {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_mode(0o777);
        h.set_size(0);
        b.append_link(&mut h, name, target).unwrap();
    }
    fs::write(path, b.into_inner().unwrap()).unwrap();
}

#[test]
fn imports_legacy_docker_save_archives() {
    if !have_root() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let layer = tar_of(&[("hello.txt", "hi\n")]);
    let diff_id = sha256_digest(&layer);
    let config = serde_json::to_vec(&json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Cmd": ["cat", "/hello.txt"]},
        "rootfs": {"type": "layers", "diff_ids": [diff_id, diff_id]},
    }))
    .unwrap();
    let config_name = format!("{}.json", &sha256_digest(&config)["sha256:".len()..]);
    let manifest = json!([{
        "Config": config_name,
        "RepoTags": ["legacy:1.0", "quay.io/org/legacy:1.0"],
        "Layers": ["aaa/layer.tar", "bbb/layer.tar"],
    }]);
    let path = tmp.path().join("legacy.tar");
    write_archive(
        &path,
        &[
            ("repositories".into(), b"{}".to_vec()),
            ("aaa/VERSION".into(), b"1.0".to_vec()),
            ("aaa/layer.tar".into(), layer.clone()),
            (config_name.clone(), config.clone()),
            (
                "manifest.json".into(),
                serde_json::to_vec(&manifest).unwrap(),
            ),
        ],
        &[("bbb/layer.tar", "../aaa/layer.tar")],
    );
    let store = open(&tmp.path().join("store"));
    let images = store.import_archive(&path).unwrap();
    assert_eq!(images.len(), 1);
    assert_eq!(images[0].id, sha256_digest(&config));
    assert_eq!(
        images[0].repo_tags,
        vec![
            "docker.io/library/legacy:1.0".to_string(),
            "quay.io/org/legacy:1.0".to_string()
        ]
    );
    let resolved = store.resolve("legacy:1.0").unwrap().unwrap();
    assert_eq!(resolved.layers.len(), 2);
    assert_eq!(
        fs::read_to_string(resolved.layers[1].join("hello.txt")).unwrap(),
        "hi\n"
    );
    // No stray temp files or unreferenced blobs are left.
    assert_eq!(fs::read_dir(store.root().join("tmp")).unwrap().count(), 0);
    assert_eq!(
        fs::read_dir(store.root().join("blobs/sha256"))
            .unwrap()
            .count(),
        3,
        "config, layer, manifest"
    );
}

#[test]
fn imports_oci_layout_archives_and_verifies_digests() {
    if !have_root() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let layer = gzip(&tar_of(&[("data", "oci")]));
    let config = serde_json::to_vec(&json!({
        "architecture": manifest::host_platform().architecture, "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [sha256_digest(&tar_of(&[("data", "oci")]))]},
    }))
    .unwrap();
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": manifest::OCI_MANIFEST,
        "config": {"mediaType": manifest::OCI_CONFIG, "digest": sha256_digest(&config), "size": config.len()},
        "layers": [{"mediaType": manifest::OCI_LAYER_GZIP, "digest": sha256_digest(&layer), "size": layer.len()}],
    }))
    .unwrap();
    let host = manifest::host_platform();
    // A nested index (as `docker buildx` writes), naming the image by ref.name.
    let inner = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": manifest::OCI_INDEX,
        "manifests": [
            {"mediaType": manifest::OCI_MANIFEST, "digest": format!("sha256:{}", "e".repeat(64)), "size": 10,
             "platform": {"architecture": "s390x", "os": "linux"}},
            {"mediaType": manifest::OCI_MANIFEST, "digest": sha256_digest(&manifest), "size": manifest.len(),
             "platform": {"architecture": host.architecture, "os": "linux"}},
        ],
    }))
    .unwrap();
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": manifest::OCI_INDEX, "digest": sha256_digest(&inner), "size": inner.len(),
            "annotations": {manifest::ANNOTATION_REF_NAME: "registry.local/oci/app:2.0"},
        }],
    }))
    .unwrap();
    let blob = |b: &[u8]| format!("blobs/sha256/{}", &sha256_digest(b)["sha256:".len()..]);
    let files = vec![
        (
            "oci-layout".to_string(),
            br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec(),
        ),
        ("index.json".to_string(), index.clone()),
        (blob(&inner), inner.clone()),
        (blob(&manifest), manifest.clone()),
        (blob(&config), config.clone()),
        (blob(&layer), layer.clone()),
    ];
    let path = tmp.path().join("oci.tar");
    write_archive(&path, &files, &[]);
    let store = open(&tmp.path().join("store"));
    let images = store.import_archive(&path).unwrap();
    assert_eq!(images.len(), 1);
    assert_eq!(
        images[0].repo_tags,
        vec!["registry.local/oci/app:2.0".to_string()]
    );
    let resolved = store
        .resolve("registry.local/oci/app:2.0")
        .unwrap()
        .unwrap();
    assert_eq!(
        fs::read_to_string(resolved.layers[0].join("data")).unwrap(),
        "oci"
    );

    // A blob whose content does not match its name is refused.
    let mut corrupt = files.clone();
    let last = corrupt.len() - 1;
    corrupt[last].1 = gzip(&tar_of(&[("data", "tampered")]));
    let bad_path = tmp.path().join("bad.tar");
    write_archive(&bad_path, &corrupt, &[]);
    let other = open(&tmp.path().join("store2"));
    let err = other.import_archive(&bad_path).unwrap_err();
    assert!(err.to_string().contains("digest mismatch"), "{err}");
    assert!(other.list().unwrap().is_empty());

    // import_dir takes the good archive and skips the bad one and the rest.
    let dir = tmp.path().join("images");
    fs::create_dir(&dir).unwrap();
    fs::copy(&path, dir.join("good.tar")).unwrap();
    fs::copy(&bad_path, dir.join("bad.tar")).unwrap();
    fs::write(dir.join("garbage.tar.gz"), b"not gzip at all").unwrap();
    fs::write(dir.join("README.txt"), b"ignored").unwrap();
    let third = open(&tmp.path().join("store3"));
    let imported = third.import_dir(&dir).unwrap();
    assert_eq!(imported.len(), 1);
    assert_eq!(imported[0].id, images[0].id);
    assert!(third
        .import_dir(&tmp.path().join("no-such-dir"))
        .unwrap()
        .is_empty());
    // A second start skips the unchanged archive but still reports its image; once the
    // image is gone, the archive is imported again.
    // (Overwritten in place with same-size garbage and its old mtime: it is not read.)
    let good = dir.join("good.tar");
    let mtime = fs::metadata(&good).unwrap().modified().unwrap();
    let len = fs::metadata(&good).unwrap().len() as usize;
    let file = fs::OpenOptions::new().write(true).open(&good).unwrap();
    (&file).write_all(&vec![0xAA; len]).unwrap();
    file.set_modified(mtime).unwrap();
    drop(file);
    assert_eq!(third.import_dir(&dir).unwrap(), imported);
    fs::copy(&path, &good).unwrap();
    third.remove(&imported[0].id).unwrap();
    assert_eq!(third.import_dir(&dir).unwrap().len(), 1);
    assert_eq!(third.list().unwrap().len(), 1);
}

#[test]
fn concurrent_resolves_unpack_each_layer_once() {
    if !have_root() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let store = open(tmp.path());
    let layer = tar_of(&[("f", "content")]);
    make_image(&store, &["app"], std::slice::from_ref(&layer), true, "c");
    let dir = store.layer_path(&sha256_digest(&layer)).unwrap();
    fs::remove_dir_all(&dir).unwrap();
    let handles: Vec<_> = (0..8)
        .map(|_| {
            let s = store.clone();
            std::thread::spawn(move || s.resolve("app").unwrap().unwrap().layers)
        })
        .collect();
    for h in handles {
        assert_eq!(h.join().unwrap(), vec![dir.clone()]);
    }
    assert_eq!(fs::read_to_string(dir.join("f")).unwrap(), "content");
    assert_eq!(
        fs::read_dir(store.root().join("tmp")).unwrap().count(),
        0,
        "no left-over unpack dirs"
    );
}

#[test]
fn store_is_send_and_sync() {
    fn assert_send_sync<T: Send + Sync + Clone>() {}
    assert_send_sync::<ImageStore>();
}

#[tokio::test]
async fn image_service_remove_is_idempotent() {
    if !have_root() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let store = open(tmp.path());
    let info = make_image(
        &store,
        &["a:1", "a:2"],
        &[tar_of(&[("f", "f")])],
        false,
        "svc",
    );
    let service: &dyn ImageService = &store;
    assert_eq!(
        service.image_status("a:1").await.unwrap().map(|i| i.id),
        Some(info.id.clone())
    );
    assert_eq!(service.list_images().await.unwrap().len(), 1);
    service.remove_image("a:1").await.unwrap();
    assert!(
        service.image_status("a:2").await.unwrap().is_none(),
        "CRI removes the whole image"
    );
    service.remove_image("a:1").await.unwrap();
}
