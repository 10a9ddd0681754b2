//! The secrets every server of an HA control plane must share, kept in the shared etcd
//! as k3s keeps its bootstrap data: the cluster CA (certificate and key) and the
//! ServiceAccount signing key, sealed with AES-256-GCM under a key derived from the
//! join token's secret. The first server writes them once its apiserver has made them;
//! a server started later with `--token` (the first one's) restores them into its
//! `DATA_DIR/pki` before its apiserver starts, and checks that the CA is the one the
//! token pins.

use std::path::Path;

use aes_gcm::aead::{Aead, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce};
use anyhow::{bail, ensure, Context as _};
use apiserver::storage::{Store, StoreError};
use rand::RngCore as _;

use crate::join::JoinToken;

/// The etcd key of the sealed secrets.
const KEY: &str = "/rkube/bootstrap";
/// The files shared, under `DATA_DIR/pki`, with their modes.
const FILES: [(&str, u32); 3] = [("ca.crt", 0o644), ("ca.key", 0o600), ("service-account.key", 0o600)];
const NONCE_LEN: usize = 12;

fn cipher(token: &JoinToken) -> Aes256Gcm {
    let digest = ring::digest::digest(&ring::digest::SHA256, format!("rkube bootstrap\0{}", token.secret).as_bytes());
    Aes256Gcm::new_from_slice(digest.as_ref()).expect("a SHA-256 digest is a 256-bit key")
}

fn seal(token: &JoinToken, pki_dir: &Path) -> anyhow::Result<Vec<u8>> {
    let mut files = serde_json::Map::new();
    for (name, _) in FILES {
        let path = pki_dir.join(name);
        let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        files.insert(name.into(), text.into());
    }
    let plain = serde_json::to_vec(&files)?;
    let mut nonce = [0u8; NONCE_LEN];
    rand::rng().fill_bytes(&mut nonce);
    let sealed = cipher(token).encrypt(&Nonce::from(nonce), plain.as_slice()).map_err(|_| anyhow::anyhow!("sealing the cluster secrets failed"))?;
    Ok([nonce.as_slice(), &sealed].concat())
}

fn open(token: &JoinToken, value: &[u8]) -> anyhow::Result<serde_json::Map<String, serde_json::Value>> {
    ensure!(value.len() > NONCE_LEN, "the cluster secrets in etcd are truncated");
    let (nonce, sealed) = value.split_at(NONCE_LEN);
    let nonce: [u8; NONCE_LEN] = nonce.try_into()?;
    let plain = cipher(token)
        .decrypt(&Nonce::from(nonce), sealed)
        .map_err(|_| anyhow::anyhow!("the token does not open the cluster secrets in etcd: is it this cluster's token (the first server's DATA_DIR/server/token)?"))?;
    Ok(serde_json::from_slice(&plain)?)
}

/// How long a server waits for etcd to answer (on a boot, etcd may be starting too).
const CONNECT_PATIENCE: std::time::Duration = std::time::Duration::from_secs(60);

async fn connect(etcd_servers: &[String]) -> anyhow::Result<apiserver::storage::etcd::EtcdStore> {
    let started = std::time::Instant::now();
    loop {
        match apiserver::storage::etcd::EtcdStore::connect(etcd_servers).await {
            Ok(store) => return Ok(store),
            Err(e) if started.elapsed() < CONNECT_PATIENCE => {
                tracing::info!(error = %e, "waiting for etcd at {}", etcd_servers.join(","));
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
            Err(e) => return Err(anyhow::Error::new(e).context(format!("connecting to etcd at {}", etcd_servers.join(",")))),
        }
    }
}

/// Restores the shared secrets into `pki_dir` if the etcd holds a cluster: `Ok(true)`
/// when it did (the token must open them and pin their CA), `Ok(false)` when this is the
/// first server.
pub async fn restore(etcd_servers: &[String], token: Option<&JoinToken>, pki_dir: &Path) -> anyhow::Result<bool> {
    let store = connect(etcd_servers).await?;
    let Some(kv) = store.get(KEY).await?.0 else {
        return Ok(false);
    };
    let Some(token) = token else {
        bail!("the etcd at {} already holds an rkube cluster: start this server with --token and the first server's DATA_DIR/server/token", etcd_servers.join(","));
    };
    let files = open(token, &kv.value)?;
    let ca = files.get("ca.crt").and_then(|v| v.as_str()).context("the cluster secrets have no CA")?;
    let der = component_base::pki::pem_certificates(ca).into_iter().next().context("the cluster secrets' CA is not a certificate")?;
    ensure!(crate::join::ca_hash(&der)? == token.ca_hash, "the cluster secrets' CA is not the one the token pins");
    for (name, mode) in FILES {
        let text = files.get(name).and_then(|v| v.as_str()).with_context(|| format!("the cluster secrets have no {name}"))?;
        let path = pki_dir.join(name);
        component_base::pki::write_file(&path, text.as_bytes(), mode).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(true)
}

/// Stores this (first) server's secrets for the others, unless the etcd holds them
/// already: then they must be these (a restart), or the token must open them (a server
/// that restored them).
pub async fn publish(etcd_servers: &[String], token: &JoinToken, pki_dir: &Path) -> anyhow::Result<()> {
    let store = connect(etcd_servers).await?;
    match store.create(KEY, seal(token, pki_dir)?).await {
        Ok(_) => Ok(()),
        Err(StoreError::AlreadyExists { .. }) => {
            let kv = store.get(KEY).await?.0.context("the cluster secrets vanished from etcd")?;
            let files = open(token, &kv.value)?;
            let ours = std::fs::read_to_string(pki_dir.join("ca.crt"))?;
            ensure!(
                files.get("ca.crt").and_then(|v| v.as_str()) == Some(ours.as_str()),
                "another server initialised this etcd with another CA at the same time; start this one again with --token and that server's token"
            );
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_secrets_open_only_with_the_same_token() {
        let dir = tempfile::tempdir().expect("dir");
        for (name, _) in FILES {
            std::fs::write(dir.path().join(name), format!("contents of {name}")).expect("write");
        }
        let token: JoinToken = format!("K10{}::abcdef.0123456789abcdef", "a".repeat(64)).parse().expect("token");
        let sealed = seal(&token, dir.path()).expect("seal");
        assert!(!String::from_utf8_lossy(&sealed).contains("contents of ca.key"), "sealed data shows the key");
        let files = open(&token, &sealed).expect("open");
        assert_eq!(files["ca.key"], "contents of ca.key");
        let other: JoinToken = format!("K10{}::abcdef.0123456789abcdeg", "a".repeat(64)).parse().expect("token");
        assert!(open(&other, &sealed).is_err());
        let mut tampered = sealed.clone();
        let last = tampered.len() - 1;
        tampered[last] ^= 1;
        assert!(open(&token, &tampered).is_err());
    }
}
