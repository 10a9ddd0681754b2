//! Registry pulls over the OCI distribution API (with `oci-client`): anonymous, basic and
//! bearer-token auth, plain HTTP only for loopback registries, manifest lists narrowed to
//! the host's platform, every blob verified against its digest, and errors worded for the
//! ErrImagePull messages users read.

use std::sync::Arc;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::OciDistributionError;
use oci_client::manifest::OciDescriptor;
use oci_client::secrets::RegistryAuth as OciAuth;
use oci_client::{Client, Reference};
use sha2::{Digest as _, Sha256};
use tokio::io::AsyncWriteExt;
use tracing::{debug, info};

use super::manifest::{self, Descriptor, Document};
use super::reference::ImageReference;
use super::{sha256_digest, ImageStore, NewImage};
use crate::runtime::{ImageInfo, RegistryAuth, Result, RuntimeError};

/// Layers downloaded at the same time, as Docker does by default.
const CONCURRENT_DOWNLOADS: usize = 3;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// No byte for this long from a registry fails the pull.
const READ_TIMEOUT: Duration = Duration::from_secs(120);
const USER_AGENT: &str = concat!("rkube-kubelet/", env!("CARGO_PKG_VERSION"));

impl ImageStore {
    /// Pulls `reference` from its registry (unless every blob is here already), unpacks
    /// its layers and tags it. Concurrent pulls of one reference download it once.
    pub async fn pull(&self, reference: &str, auth: Option<&RegistryAuth>) -> Result<ImageInfo> {
        let parsed = ImageReference::parse(reference)?;
        let key = parsed.to_string();
        let lock = {
            let mut locks = self
                .inner
                .pull_locks
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            locks
                .entry(key.clone())
                .or_insert_with(|| Arc::new(tokio::sync::Mutex::new(())))
                .clone()
        };
        let result = {
            let _guard = lock.lock().await;
            self.pull_locked(&parsed, auth).await
        };
        let mut locks = self
            .inner
            .pull_locks
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if Arc::strong_count(&lock) == 2 {
            locks.remove(&key);
        }
        result
    }

    async fn pull_locked(
        &self,
        r: &ImageReference,
        auth: Option<&RegistryAuth>,
    ) -> Result<ImageInfo> {
        let started = std::time::Instant::now();
        let fail = |message: String| RuntimeError::Image {
            reference: r.to_string(),
            message,
        };
        let client = registry_client(&r.domain).map_err(fail)?;
        let target = match (&r.digest, &r.tag) {
            (Some(d), _) => Reference::with_digest(r.domain.clone(), r.path.clone(), d.clone()),
            (None, Some(t)) => Reference::with_tag(r.domain.clone(), r.path.clone(), t.clone()),
            (None, None) => Reference::with_tag(r.domain.clone(), r.path.clone(), "latest".into()),
        };
        let with_credentials = auth.is_some();
        let oci_auth = match auth {
            Some(a) => OciAuth::Basic(a.username.clone(), a.password.clone()),
            None => OciAuth::Anonymous,
        };
        let explain = |e: OciDistributionError| fail(describe(&e, r, with_credentials));

        let (top_bytes, _) = client
            .pull_manifest_raw(&target, &oci_auth, manifest::ACCEPTED_MANIFEST_TYPES)
            .await
            .map_err(explain)?;
        let top_digest = sha256_digest(&top_bytes);
        if let Some(want) = &r.digest {
            if *want != top_digest {
                return Err(fail(format!(
                    "manifest digest mismatch: registry sent {top_digest}"
                )));
            }
        }
        let (manifest_bytes, manifest_digest, manifest) =
            match manifest::parse_document(&top_bytes, None).map_err(fail)? {
                Document::Manifest(m) => (top_bytes.to_vec(), top_digest.clone(), m),
                Document::Index(index) => {
                    let host = manifest::host_platform();
                    let chosen = manifest::select_platform(&index).ok_or_else(|| {
                        fail(format!(
                            "no matching manifest for {}/{} in the manifest list entries",
                            host.os, host.architecture
                        ))
                    })?;
                    debug!(image = %r, manifest = %chosen.digest, "selected platform manifest");
                    let (bytes, _) = client
                        .pull_manifest_raw(
                            &target.clone_with_digest(chosen.digest.clone()),
                            &oci_auth,
                            manifest::ACCEPTED_MANIFEST_TYPES,
                        )
                        .await
                        .map_err(explain)?;
                    let digest = sha256_digest(&bytes);
                    if digest != chosen.digest {
                        return Err(fail(format!(
                            "manifest digest mismatch: expected {}, registry sent {digest}",
                            chosen.digest
                        )));
                    }
                    match manifest::parse_document(&bytes, Some(&chosen.media_type))
                        .map_err(fail)?
                    {
                        Document::Manifest(m) => (bytes.to_vec(), digest, m),
                        Document::Index(_) => {
                            return Err(fail(
                                "image index nested in an image index is not supported".into(),
                            ))
                        }
                    }
                }
            };
        let manifest_media_type = if manifest.media_type.is_empty() {
            manifest::OCI_MANIFEST.to_string()
        } else {
            manifest.media_type.clone()
        };

        self.fetch_blob(&client, &target, &manifest.config, r, with_credentials)
            .await?;
        // Owned values per download: the futures run concurrently and must be `Send`.
        futures::stream::iter(manifest.layers.clone())
            .map(|layer| {
                let (store, client, target, r) =
                    (self.clone(), client.clone(), target.clone(), r.clone());
                async move {
                    store
                        .fetch_blob(&client, &target, &layer, &r, with_credentials)
                        .await
                }
            })
            .buffer_unordered(CONCURRENT_DOWNLOADS)
            .try_collect::<Vec<()>>()
            .await?;

        let new = NewImage {
            manifest_size: manifest_bytes.len() as u64,
            manifest_digest: manifest_digest.clone(),
            manifest_media_type,
            manifest,
            tags: if r.digest.is_none() {
                vec![r.to_string()]
            } else {
                Vec::new()
            },
            repo_digests: vec![r.with_digest(&top_digest)],
        };
        let info = self
            .blocking(move |store| {
                store.write_blob(&manifest_bytes, Some(&manifest_digest))?;
                store.register(new)
            })
            .await?;
        info!(image = %r, id = %info.id, elapsed_ms = started.elapsed().as_millis() as u64, "pulled image");
        Ok(info)
    }

    /// Downloads one blob into the store, unless it is there already.
    async fn fetch_blob(
        &self,
        client: &Client,
        target: &Reference,
        desc: &Descriptor,
        r: &ImageReference,
        with_credentials: bool,
    ) -> Result<()> {
        let fail = |message: String| RuntimeError::Image {
            reference: r.to_string(),
            message,
        };
        super::reference::validate_digest(&desc.digest).map_err(fail)?;
        if self.has_blob(&desc.digest) {
            return Ok(());
        }
        let oci_desc = OciDescriptor {
            media_type: desc.media_type.clone(),
            digest: desc.digest.clone(),
            size: i64::try_from(desc.size).unwrap_or(i64::MAX),
            ..Default::default()
        };
        let mut sized = client
            .pull_blob_stream(target, &oci_desc)
            .await
            .map_err(|e| fail(describe(&e, r, with_credentials)))?;
        let tmp = self.tmp_path("pull");
        let result = async {
            let io_fail = |e: std::io::Error| {
                RuntimeError::io(format!("downloading {} of {r}", desc.digest), e)
            };
            let mut file = tokio::fs::File::create(&tmp).await.map_err(io_fail)?;
            let mut hasher = Sha256::new();
            let mut size = 0u64;
            while let Some(chunk) = sized.stream.next().await {
                let chunk = chunk.map_err(|e| {
                    fail(format!("downloading {}: {}", desc.digest, error_chain(&e)))
                })?;
                hasher.update(&chunk);
                size += chunk.len() as u64;
                file.write_all(&chunk).await.map_err(io_fail)?;
            }
            file.sync_all().await.map_err(io_fail)?;
            drop(file);
            let digest = format!("sha256:{}", hex::encode(hasher.finalize()));
            if digest != desc.digest {
                return Err(fail(format!(
                    "blob {} failed verification: content hashes to {digest}",
                    desc.digest
                )));
            }
            if desc.size != 0 && size != desc.size {
                return Err(fail(format!(
                    "blob {} is {size} bytes, the manifest says {}",
                    desc.digest, desc.size
                )));
            }
            self.commit_blob_file(&tmp, &digest)?;
            debug!(image = %r, blob = %digest, size, "downloaded blob");
            Ok(())
        }
        .await;
        if result.is_err() {
            let _ = tokio::fs::remove_file(&tmp).await;
        }
        result
    }
}

/// A client for one registry: plain HTTP for loopback hosts, HTTPS (rustls with ring)
/// for everything else.
fn registry_client(domain: &str) -> std::result::Result<Client, String> {
    // reqwest is built without a default crypto provider; ours is ring. Installing fails
    // harmlessly when the process already has one.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let protocol = if is_loopback_registry(domain) {
        ClientProtocol::HttpsExcept(vec![domain.to_string()])
    } else {
        ClientProtocol::Https
    };
    let config = ClientConfig {
        protocol,
        connect_timeout: Some(CONNECT_TIMEOUT),
        read_timeout: Some(READ_TIMEOUT),
        user_agent: USER_AGENT,
        ..Default::default()
    };
    Client::try_from(config).map_err(|e| format!("creating registry client: {}", error_chain(&e)))
}

/// `localhost`, `127.0.0.0/8` and `[::1]` registries (with any port) are spoken to over
/// plain HTTP, as Docker treats them as insecure registries by default.
pub fn is_loopback_registry(domain: &str) -> bool {
    let host = if let Some(rest) = domain.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else {
        match domain.rsplit_once(':') {
            Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) => h,
            _ => domain,
        }
    };
    host == "localhost"
        || host.ends_with(".localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// A registry error as a user should read it (`manifest unknown`, `unauthorized:
/// authentication required`, `connection refused`…).
fn describe(e: &OciDistributionError, r: &ImageReference, with_credentials: bool) -> String {
    match e {
        OciDistributionError::RegistryError { envelope, .. } => {
            let parts: Vec<String> = envelope
                .errors
                .iter()
                .map(|err| {
                    let code = serde_json::to_value(&err.code)
                        .ok()
                        .and_then(|v| v.as_str().map(|s| s.to_lowercase().replace('_', " ")))
                        .unwrap_or_else(|| "error".into());
                    if err.message.is_empty() || err.message.eq_ignore_ascii_case(&code) {
                        code
                    } else {
                        format!("{code}: {}", err.message)
                    }
                })
                .collect();
            let joined = parts.join("; ");
            if joined.starts_with("manifest unknown") || joined.starts_with("name unknown") {
                format!("not found: {joined}")
            } else {
                joined
            }
        }
        OciDistributionError::UnauthorizedError { .. } => {
            if with_credentials {
                "unauthorized: incorrect username or password".into()
            } else {
                "unauthorized: authentication required".into()
            }
        }
        OciDistributionError::AuthenticationFailure(reason) => {
            format!(
                "unauthorized: fetching a registry token failed: {}",
                reason.trim()
            )
        }
        OciDistributionError::ImageManifestNotFoundError(m) => {
            format!("not found: manifest unknown: {m}")
        }
        OciDistributionError::ServerError { code: 404, .. } => "not found: manifest unknown".into(),
        OciDistributionError::ServerError { code, message, .. } => {
            let message = message.trim();
            if message.is_empty() {
                format!("registry {} answered HTTP {code}", r.domain)
            } else {
                format!("registry {} answered HTTP {code}: {message}", r.domain)
            }
        }
        OciDistributionError::RequestError(_) | OciDistributionError::IoError(_) => {
            format!("failed to reach registry {}: {}", r.domain, error_chain(e))
        }
        OciDistributionError::DigestError(d) => format!("digest verification failed: {d}"),
        other => error_chain(other),
    }
}

/// The innermost cause of an error, in plain words where we know them.
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(e);
    let mut last = e.to_string();
    while let Some(err) = current {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            match io.kind() {
                std::io::ErrorKind::ConnectionRefused => return "connection refused".into(),
                std::io::ErrorKind::TimedOut => return "i/o timeout".into(),
                std::io::ErrorKind::ConnectionReset => return "connection reset by peer".into(),
                _ => {}
            }
        }
        last = err.to_string();
        current = err.source();
    }
    last
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn loopback_registries_use_http() {
        for local in [
            "localhost",
            "localhost:5000",
            "127.0.0.1:5000",
            "127.1.2.3",
            "[::1]:5000",
            "[::1]",
        ] {
            assert!(is_loopback_registry(local), "{local}");
        }
        for remote in [
            "docker.io",
            "registry.k8s.io",
            "10.0.0.1:5000",
            "[fe80::1]:5000",
            "myhost:5000",
        ] {
            assert!(!is_loopback_registry(remote), "{remote}");
        }
    }

    #[tokio::test]
    async fn connection_refused_is_reported_plainly() {
        // A port that nothing listens on: bind, read the port, close.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let tmp = tempfile::tempdir().unwrap();
        let store = ImageStore::open(tmp.path()).unwrap();
        let err = store
            .pull(&format!("127.0.0.1:{port}/nothing:here"), None)
            .await
            .unwrap_err();
        let text = err.to_string();
        assert!(text.contains("connection refused"), "{text}");
        assert!(text.contains(&format!("127.0.0.1:{port}")), "{text}");
    }
}
