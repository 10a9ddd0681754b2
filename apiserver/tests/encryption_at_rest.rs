//! Encryption at rest end to end (`--encryption-provider-config`): a Secret written
//! through the encrypting store never reaches the embedded store's files, or etcd, in
//! clear — neither its value nor that value's base64 — and reads back as written, also
//! after a restart; and the storage conformance suite passes through the wrapper with
//! every resource encrypted. The etcd cases need `etcd` on PATH.

mod support;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{ensure, Context};
use apiserver::storage::conformance;
use apiserver::storage::embedded::EmbeddedStore;
use apiserver::storage::encryption::wrap_store;
use apiserver::storage::Store;
use base64::Engine;
use support::etcd::start_etcd;

/// The secret value the files must never show.
const SECRET_VALUE: &str = "correct-horse-battery-staple-7f3a9c21";
/// Stored in a ConfigMap, which the config leaves unencrypted: proves the scan would
/// find plaintext if it were there.
const CONTROL_VALUE: &str = "plain-configmap-value-5d2e8b40";
const SECRET_KEY: &str = "/registry/secrets/default/db-credentials";
const CONFIGMAP_KEY: &str = "/registry/configmaps/default/settings";

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

fn secret_json() -> Vec<u8> {
    serde_json::json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": "db-credentials",
            "namespace": "default",
            "annotations": {"note": SECRET_VALUE},
        },
        "type": "Opaque",
        "data": {"password": b64(SECRET_VALUE)},
    })
    .to_string()
    .into_bytes()
}

fn configmap_json() -> Vec<u8> {
    serde_json::json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "settings", "namespace": "default"},
        "data": {"value": CONTROL_VALUE},
    })
    .to_string()
    .into_bytes()
}

/// Writes an `EncryptionConfiguration` for `resources` (aescbc first, then secretbox)
/// into `dir`.
fn write_config(dir: &Path, resources: &str) -> anyhow::Result<PathBuf> {
    let aes: Vec<u8> = (1u8..=32).collect();
    let sb: Vec<u8> = (101u8..=132).collect();
    let yaml = format!(
        "apiVersion: apiserver.config.k8s.io/v1
kind: EncryptionConfiguration
resources:
  - resources: [{resources}]
    providers:
      - aescbc:
          keys:
            - name: key1
              secret: {}
      - secretbox:
          keys:
            - name: sb1
              secret: {}
",
        base64::engine::general_purpose::STANDARD.encode(aes),
        base64::engine::general_purpose::STANDARD.encode(sb),
    );
    let path = dir.join("encryption-config.yaml");
    std::fs::write(&path, yaml)?;
    Ok(path)
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Every byte of every file under `dir`.
fn all_file_bytes(dir: &Path) -> anyhow::Result<Vec<u8>> {
    let mut out = Vec::new();
    let mut files = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).with_context(|| format!("listing {}", d.display()))? {
            let path = entry?.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.extend(
                    std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?,
                );
                files += 1;
            }
        }
    }
    ensure!(files > 0, "no files under {}", dir.display());
    Ok(out)
}

/// Writes the Secret (create, then an update) and the control ConfigMap through
/// `store`, and checks the raw values in `raw` and the reads through `store`.
async fn write_and_check(store: &dyn Store, raw: &dyn Store) -> anyhow::Result<()> {
    let rev = store.create(SECRET_KEY, secret_json()).await?;
    // An update re-encrypts (a fresh IV), and reading still gives the plaintext.
    store.update(SECRET_KEY, secret_json(), rev).await?;
    store.create(CONFIGMAP_KEY, configmap_json()).await?;

    let (kv, _) = store.get(SECRET_KEY).await?;
    ensure!(
        kv.context("secret missing")?.value == secret_json(),
        "the wrapper reads back the Secret as written"
    );

    let (kv, _) = raw.get(SECRET_KEY).await?;
    let stored = kv.context("raw secret missing")?.value;
    ensure!(
        stored.starts_with(b"k8s:enc:aescbc:v1:key1:"),
        "stored with Kubernetes' aescbc prefix: {:?}",
        String::from_utf8_lossy(&stored[..stored.len().min(40)])
    );
    ensure!(
        !contains(&stored, SECRET_VALUE.as_bytes())
            && !contains(&stored, b64(SECRET_VALUE).as_bytes())
    );
    let (kv, _) = raw.get(CONFIGMAP_KEY).await?;
    ensure!(
        kv.context("raw configmap missing")?.value == configmap_json(),
        "configmaps are not configured, so stored as they are"
    );
    Ok(())
}

#[tokio::test]
async fn embedded_store_files_never_hold_the_plaintext_secret() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("db");
    let config = write_config(dir.path(), "secrets")?;

    let raw: Arc<dyn Store> = Arc::new(EmbeddedStore::open(&db).await?);
    let store = wrap_store(raw.clone(), &config)?;
    write_and_check(store.as_ref(), raw.as_ref()).await?;
    drop(store);
    drop(raw);

    let disk = all_file_bytes(&db)?;
    ensure!(
        contains(&disk, SECRET_KEY.as_bytes()),
        "the scan reads the store's data (keys are not encrypted)"
    );
    ensure!(
        contains(&disk, CONTROL_VALUE.as_bytes()),
        "the scan would see a plaintext value"
    );
    ensure!(
        !contains(&disk, SECRET_VALUE.as_bytes()),
        "the secret value is on disk in clear"
    );
    ensure!(
        !contains(&disk, b64(SECRET_VALUE).as_bytes()),
        "the secret's base64 data is on disk in clear"
    );

    // After a restart, a new wrapper with the same config reads it back.
    let raw: Arc<dyn Store> = Arc::new(EmbeddedStore::open(&db).await?);
    let store = wrap_store(raw, &config)?;
    let (kv, _) = store.get(SECRET_KEY).await?;
    ensure!(kv.context("secret lost")?.value == secret_json());
    Ok(())
}

#[tokio::test]
async fn embedded_conformance_with_everything_encrypted() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let config = write_config(dir.path(), "\"*.*\"")?;
    let raw: Arc<dyn Store> = Arc::new(EmbeddedStore::open(&dir.path().join("db")).await?);
    let store = wrap_store(raw.clone(), &config)?;
    conformance::run_all(store.as_ref()).await?;
    // The suite's values were all stored encrypted.
    let listed = raw.range("/registry/", Default::default()).await?;
    ensure!(!listed.kvs.is_empty());
    for kv in &listed.kvs {
        ensure!(
            kv.value.starts_with(b"k8s:enc:aescbc:v1:key1:"),
            "{} stored in clear",
            kv.key
        );
    }
    Ok(())
}

#[tokio::test]
async fn etcd_never_holds_the_plaintext_secret() -> anyhow::Result<()> {
    let Some(mut cluster) = start_etcd(1)? else {
        return Ok(());
    };
    let etcd = cluster.connect().await?;
    let mut client = etcd.client();
    let raw: Arc<dyn Store> = Arc::new(etcd);
    let dir = tempfile::tempdir()?;
    let store = wrap_store(raw.clone(), &write_config(dir.path(), "secrets")?)?;
    write_and_check(store.as_ref(), raw.as_ref()).await?;

    // What etcd itself holds, read with a plain etcd client.
    let resp = client.get(SECRET_KEY, None).await?;
    let value = resp
        .kvs()
        .first()
        .context("etcd has no such key")?
        .value()
        .to_vec();
    ensure!(value.starts_with(b"k8s:enc:aescbc:v1:key1:"));
    ensure!(
        !contains(&value, SECRET_VALUE.as_bytes())
            && !contains(&value, b64(SECRET_VALUE).as_bytes())
    );
    let resp = client.get(CONFIGMAP_KEY, None).await?;
    let value = resp
        .kvs()
        .first()
        .context("etcd has no configmap")?
        .value()
        .to_vec();
    ensure!(contains(&value, CONTROL_VALUE.as_bytes()));

    // And the suite through the wrapper, everything encrypted, on the same etcd.
    let all = wrap_store(raw, &write_config(dir.path(), "\"*.*\"")?)?;
    conformance::run_all(all.as_ref()).await
}
