//! The image store against a real registry: Debian's `docker-registry` (the CNCF
//! distribution registry) on a loopback port, anonymous and with htpasswd basic auth. The
//! offline busybox image is pushed to it, then pulled through `ImageService::pull_image`
//! into a fresh store. Needs root, `/usr/bin/docker-registry` and `/bin/busybox`
//! (busybox-static): without them the tests fail under CI and are skipped elsewhere.

#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use kubelet::runtime::image::{build_busybox_image, ImageStore};
use kubelet::runtime::{ImageService, RegistryAuth};
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::secrets::RegistryAuth as OciAuth;
use oci_client::{Client, Reference, RegistryOperation};
use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};

const REGISTRY_BIN: &str = "/usr/bin/docker-registry";
const BUSYBOX_BIN: &str = "/bin/busybox";
const USER: &str = "learner";
const PASSWORD: &str = "s3cret-passw0rd";

/// Whether the tools these tests need are here. Under CI their absence is a failure.
fn prerequisites() -> bool {
    let missing: Vec<&str> = [REGISTRY_BIN, BUSYBOX_BIN]
        .into_iter()
        .filter(|p| !Path::new(p).exists())
        .collect();
    let reason = if !missing.is_empty() {
        format!(
            "{} missing (apt-get install docker-registry busybox-static)",
            missing.join(" and ")
        )
    } else if !nix::unistd::geteuid().is_root() {
        "root (unpacking layers chowns files and creates whiteout devices)".to_string()
    } else {
        return true;
    };
    assert!(
        std::env::var_os("CI").is_none(),
        "image_store tests need {reason}"
    );
    eprintln!("skipped: {reason}");
    false
}

/// A `docker-registry serve` on a free loopback port, killed on drop.
struct Registry {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Registry {
    fn start(htpasswd: Option<&str>) -> anyhow::Result<Registry> {
        let dir = tempfile::tempdir()?;
        let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
            .local_addr()?
            .port();
        let storage = dir.path().join("storage");
        std::fs::create_dir(&storage)?;
        let auth = match htpasswd {
            Some(content) => {
                let path = dir.path().join("htpasswd");
                std::fs::write(&path, content)?;
                format!(
                    "auth:\n  htpasswd:\n    realm: rkube-test\n    path: {}\n",
                    path.display()
                )
            }
            None => String::new(),
        };
        let config = format!(
            "version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n{auth}",
            storage.display()
        );
        let config_path = dir.path().join("config.yml");
        std::fs::write(&config_path, config)?;
        let log = std::fs::File::create(dir.path().join("registry.log"))?;
        let child = Command::new(REGISTRY_BIN)
            .arg("serve")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting docker-registry")?;
        let mut registry = Registry { child, port, dir };
        registry.wait_ready()?;
        Ok(registry)
    }

    fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    /// Waits until `GET /v2/` gets an HTTP answer (200 or 401), at most 30 s.
    fn wait_ready(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait()? {
                bail!("docker-registry exited with {status}:\n{}", self.log());
            }
            if let Ok(mut stream) = TcpStream::connect(("127.0.0.1", self.port)) {
                stream.set_read_timeout(Some(Duration::from_secs(2)))?;
                let _ = stream.write_all(b"GET /v2/ HTTP/1.0\r\nHost: localhost\r\n\r\n");
                let mut answer = [0u8; 12];
                if stream.read_exact(&mut answer).is_ok() && answer.starts_with(b"HTTP/1.") {
                    return Ok(());
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!(
            "docker-registry did not answer within 30 s:\n{}",
            self.log()
        )
    }
}

fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// A store with the offline busybox image, and its OCI pieces read back from the layout.
struct Busybox {
    store: ImageStore,
    _dir: tempfile::TempDir,
    id: String,
    manifest: Vec<u8>,
    manifest_json: Value,
}

impl Busybox {
    fn build() -> anyhow::Result<Busybox> {
        let dir = tempfile::tempdir()?;
        let store = ImageStore::open(&dir.path().join("store"))?;
        let info = build_busybox_image(&store, "busybox")?;
        // The store is an OCI image layout: find the tag in index.json.
        let index: Value =
            serde_json::from_slice(&std::fs::read(store.root().join("index.json"))?)?;
        let entry = index["manifests"]
            .as_array()
            .and_then(|m| {
                m.iter().find(|d| {
                    d["annotations"]["io.containerd.image.name"]
                        == "docker.io/library/busybox:latest"
                })
            })
            .context("busybox in index.json")?;
        let digest = entry["digest"].as_str().context("digest")?;
        let manifest = std::fs::read(blob_path(store.root(), digest))?;
        assert_eq!(sha256(&manifest), digest);
        let manifest_json = serde_json::from_slice(&manifest)?;
        Ok(Busybox {
            store,
            _dir: dir,
            id: info.id,
            manifest,
            manifest_json,
        })
    }

    fn blob(&self, digest: &str) -> Vec<u8> {
        std::fs::read(blob_path(self.store.root(), digest)).unwrap()
    }

    fn config(&self) -> Vec<u8> {
        self.blob(self.manifest_json["config"]["digest"].as_str().unwrap())
    }

    fn layer(&self) -> Vec<u8> {
        self.blob(self.manifest_json["layers"][0]["digest"].as_str().unwrap())
    }
}

fn blob_path(root: &Path, digest: &str) -> PathBuf {
    root.join("blobs/sha256")
        .join(digest.trim_start_matches("sha256:"))
}

/// Pushes blobs and manifests with oci-client, the way `docker push` would.
struct Pusher {
    client: Client,
    host: String,
    auth: OciAuth,
}

impl Pusher {
    fn new(host: &str, auth: OciAuth) -> Pusher {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = Client::try_from(ClientConfig {
            protocol: ClientProtocol::Http,
            ..Default::default()
        })
        .unwrap();
        Pusher {
            client,
            host: host.to_string(),
            auth,
        }
    }

    fn reference(&self, repository: &str, tag: &str) -> Reference {
        Reference::with_tag(self.host.clone(), repository.to_string(), tag.to_string())
    }

    async fn push_blobs(&self, repository: &str, blobs: &[&[u8]]) -> anyhow::Result<()> {
        let reference = self.reference(repository, "latest");
        self.client
            .auth(&reference, &self.auth, RegistryOperation::Push)
            .await?;
        for blob in blobs {
            self.client
                .push_blob(&reference, blob.to_vec(), &sha256(blob))
                .await?;
        }
        Ok(())
    }

    async fn push_manifest(
        &self,
        repository: &str,
        tag: &str,
        media_type: &'static str,
        body: &[u8],
    ) -> anyhow::Result<()> {
        let reference = self.reference(repository, tag);
        self.client
            .auth(&reference, &self.auth, RegistryOperation::Push)
            .await?;
        self.client
            .push_manifest_raw(
                &reference,
                body.to_vec(),
                http::HeaderValue::from_static(media_type),
            )
            .await?;
        Ok(())
    }
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(data).unwrap();
    gz.finish().unwrap()
}

fn fresh_store() -> (tempfile::TempDir, ImageStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = ImageStore::open(&dir.path().join("image-store")).unwrap();
    (dir, store)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pulls_busybox_from_a_local_registry() {
    if !prerequisites() {
        return;
    }
    let registry = Registry::start(None).unwrap();
    let host = registry.host();
    let busybox = Busybox::build().unwrap();
    let pusher = Pusher::new(&host, OciAuth::Anonymous);

    // 1. The image as built: OCI manifest, uncompressed layer.
    pusher
        .push_blobs("library/busybox", &[&busybox.config(), &busybox.layer()])
        .await
        .unwrap();
    pusher
        .push_manifest(
            "library/busybox",
            "latest",
            "application/vnd.oci.image.manifest.v1+json",
            &busybox.manifest,
        )
        .await
        .unwrap();

    // 2. The same image as Docker pushes it: schema 2 manifest list, gzip layer, with a
    //    manifest for another architecture first.
    let gz = gzip(&busybox.layer());
    let config = busybox.config();
    let docker_manifest = |config: &[u8]| {
        serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
            "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "size": config.len(), "digest": sha256(config)},
            "layers": [{"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip", "size": gz.len(), "digest": sha256(&gz)}],
        }))
        .unwrap()
    };
    let host_manifest = docker_manifest(&config);
    let mut other_config: Value = serde_json::from_slice(&config).unwrap();
    let host_arch = other_config["architecture"].as_str().unwrap().to_string();
    let other_arch = if host_arch == "s390x" {
        "ppc64le"
    } else {
        "s390x"
    };
    other_config["architecture"] = json!(other_arch);
    let other_config = serde_json::to_vec(&other_config).unwrap();
    let other_manifest = docker_manifest(&other_config);
    pusher
        .push_blobs("team/busybox", &[&config, &other_config, &gz])
        .await
        .unwrap();
    let docker_manifest_type = "application/vnd.docker.distribution.manifest.v2+json";
    pusher
        .push_manifest("team/busybox", "host", docker_manifest_type, &host_manifest)
        .await
        .unwrap();
    pusher
        .push_manifest(
            "team/busybox",
            "other",
            docker_manifest_type,
            &other_manifest,
        )
        .await
        .unwrap();
    let entry = |m: &[u8], arch: &str| json!({"mediaType": docker_manifest_type, "size": m.len(), "digest": sha256(m), "platform": {"architecture": arch, "os": "linux"}});
    let list = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.docker.distribution.manifest.list.v2+json",
        "manifests": [entry(&other_manifest, other_arch), entry(&host_manifest, &host_arch)],
    }))
    .unwrap();
    pusher
        .push_manifest(
            "team/busybox",
            "multi",
            "application/vnd.docker.distribution.manifest.list.v2+json",
            &list,
        )
        .await
        .unwrap();

    // Pull into a fresh store, through the CRI-shaped interface.
    let (_dir, store) = fresh_store();
    let service: &dyn ImageService = &store;
    let reference = format!("{host}/library/busybox");
    let info = service.pull_image(&reference, None).await.unwrap();
    assert_eq!(info.id, busybox.id, "same config, same image ID");
    assert_eq!(
        info.repo_tags,
        vec![format!("{host}/library/busybox:latest")]
    );
    assert_eq!(
        info.repo_digests,
        vec![format!(
            "{host}/library/busybox@{}",
            sha256(&busybox.manifest)
        )]
    );
    assert_eq!(
        service
            .image_status(&format!("{reference}:latest"))
            .await
            .unwrap(),
        Some(info.clone())
    );
    let resolved = store
        .resolve(&reference)
        .unwrap()
        .expect("pulled image resolves");
    let layer = &resolved.layers[0];
    assert!(layer.starts_with(store.root().join("layers/sha256")));
    let busybox_bin = std::fs::metadata(layer.join("bin/busybox")).unwrap();
    assert!(busybox_bin.is_file() && busybox_bin.len() > 100_000);
    assert!(layer.join("bin/sleep").exists() && layer.join("etc/passwd").is_file());
    assert_eq!(
        resolved
            .config
            .config()
            .as_ref()
            .unwrap()
            .cmd()
            .as_ref()
            .unwrap(),
        &vec!["sh".to_string()]
    );

    // The manifest list picks the host's manifest; the gzip layer unpacks to the same diff ID.
    let multi = service
        .pull_image(&format!("{host}/team/busybox:multi"), None)
        .await
        .unwrap();
    assert_eq!(multi.id, busybox.id);
    assert!(multi
        .repo_tags
        .contains(&format!("{host}/team/busybox:multi")));
    assert!(
        multi
            .repo_digests
            .contains(&format!("{host}/team/busybox@{}", sha256(&list))),
        "{:?}",
        multi.repo_digests
    );
    assert_eq!(
        store
            .resolve(&format!("{host}/team/busybox:multi"))
            .unwrap()
            .unwrap()
            .layers,
        resolved.layers
    );
    assert_eq!(service.list_images().await.unwrap().len(), 1);

    // By digest: no tag, a repo digest.
    let pinned = format!("{host}/team/busybox@{}", sha256(&host_manifest));
    let by_digest = service.pull_image(&pinned, None).await.unwrap();
    assert_eq!(by_digest.id, busybox.id);
    assert!(by_digest.repo_digests.contains(&pinned));

    // A missing tag or repository says so.
    let err = service
        .pull_image(&format!("{host}/library/busybox:nope"), None)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("manifest unknown"), "{err}");
    assert!(err.to_string().contains("not found"), "{err}");
    let err = service
        .pull_image(&format!("{host}/nobody/here"), None)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("not found"), "{err}");

    // Concurrent pulls of one image into another fresh store: both succeed, one image.
    let (_dir2, store2) = fresh_store();
    let (a, b) = tokio::join!(
        store2.pull_image(&reference, None),
        store2.pull_image(&reference, None)
    );
    assert_eq!(a.unwrap().id, busybox.id);
    assert_eq!(b.unwrap().id, busybox.id);
    assert_eq!(store2.list().unwrap().len(), 1);
    assert_eq!(
        std::fs::read_dir(store2.root().join("tmp"))
            .unwrap()
            .count(),
        0
    );

    // Removing through the service deletes blobs and layers.
    service.remove_image(&reference).await.unwrap();
    assert!(service.list_images().await.unwrap().is_empty());
    assert!(!layer.exists());
    assert_eq!(
        std::fs::read_dir(store.root().join("blobs/sha256"))
            .unwrap()
            .count(),
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pulls_from_a_registry_with_basic_auth() {
    if !prerequisites() {
        return;
    }
    let hash = bcrypt::hash(PASSWORD, 5).unwrap();
    let registry = Registry::start(Some(&format!("{USER}:{hash}\n"))).unwrap();
    let host = registry.host();
    let busybox = Busybox::build().unwrap();
    let pusher = Pusher::new(&host, OciAuth::Basic(USER.into(), PASSWORD.into()));
    pusher
        .push_blobs("private/busybox", &[&busybox.config(), &busybox.layer()])
        .await
        .unwrap();
    pusher
        .push_manifest(
            "private/busybox",
            "1.0",
            "application/vnd.oci.image.manifest.v1+json",
            &busybox.manifest,
        )
        .await
        .unwrap();
    let reference = format!("{host}/private/busybox:1.0");
    let (_dir, store) = fresh_store();

    let err = store.pull_image(&reference, None).await.unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("unauthorized: authentication required"),
        "{text}"
    );
    assert!(
        text.contains(&reference),
        "the error names the image: {text}"
    );

    let wrong = RegistryAuth {
        username: USER.into(),
        password: "wrong".into(),
    };
    let err = store
        .pull_image(&reference, Some(&wrong))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("unauthorized"), "{err}");
    assert!(store.list().unwrap().is_empty());

    let good = RegistryAuth {
        username: USER.into(),
        password: PASSWORD.into(),
    };
    let info = store.pull_image(&reference, Some(&good)).await.unwrap();
    assert_eq!(info.id, busybox.id);
    assert_eq!(info.repo_tags, vec![reference.clone()]);
    let layer = &store.resolve(&reference).unwrap().unwrap().layers[0];
    assert!(layer.join("bin/busybox").is_file());
}
