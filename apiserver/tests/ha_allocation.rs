//! Two apiservers on one store (an HA control plane shares one etcd) allocating Service
//! addresses at the same time: each takes the store's allocation lock, so no address is
//! handed out twice, and once the range is full the next create is refused. The range
//! is a /28 (13 free addresses) so that, without the lock, concurrent creates collide.

use std::collections::BTreeSet;
use std::sync::Arc;

use anyhow::{ensure, Context as _};
use apiserver::admission::ServiceRanges;
use apiserver::auth::filter::Security;
use apiserver::handlers::{Params, Target};
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

async fn apiserver(dir: &std::path::Path, store: Arc<dyn apiserver::storage::Store>, address: &str, shutdown: &CancellationToken) -> anyhow::Result<Arc<apiserver::ApiServer>> {
    let config = apiserver::Config {
        data_dir: dir.to_path_buf(),
        bind: format!("{address}:6443").parse()?,
        etcd_servers: vec![],
        service_ranges: ServiceRanges::parse("10.96.0.0/28", "30000-32767").map_err(anyhow::Error::msg)?,
        advertise_address: address.parse()?,
        security: Default::default(),
        local_components: Vec::new(),
    };
    Ok(apiserver::ApiServer::with_store(config, store, Security::insecure(), shutdown.clone()).await?)
}

async fn create_service(api: Arc<apiserver::ApiServer>, name: String) -> anyhow::Result<Result<String, String>> {
    let services = apiserver::registry::lookup("", "v1", "services").context("services")?;
    let target = Target { res: services, namespace: Some("default".into()), name: None, sub: None };
    let mut headers = HeaderMap::new();
    headers.insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    let body = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name}, "spec": {"ports": [{"port": 80}]}});
    let response = match api.serve_resource(Method::POST, target, Params::default(), headers, Bytes::from(serde_json::to_vec(&body)?)).await {
        Ok(r) => r,
        Err(e) => return Ok(Err(e.status().to_string())),
    };
    let bytes = http_body_util::BodyExt::collect(response.into_body()).await?.to_bytes();
    let created: Value = serde_json::from_slice(&bytes)?;
    Ok(Ok(created["spec"]["clusterIP"].as_str().unwrap_or_default().to_string()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_apiservers_on_one_store_never_hand_out_an_address_twice() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let store: Arc<dyn apiserver::storage::Store> = Arc::new(apiserver::storage::embedded::EmbeddedStore::open(&dir.path().join("db")).await?);
    let shutdown = CancellationToken::new();
    let a = apiserver(&dir.path().join("a"), store.clone(), "127.0.0.2", &shutdown).await?;
    let b = apiserver(&dir.path().join("b"), store.clone(), "127.0.0.3", &shutdown).await?;
    // The `kubernetes` Service holds the first address (.1); .2 to .14 are left. Ask
    // for 16 at once, alternating between the two apiservers.
    let creates: Vec<_> = (0..16).map(|i| tokio::spawn(create_service(if i % 2 == 0 { a.clone() } else { b.clone() }, format!("svc-{i}")))).collect();
    let mut addresses = Vec::new();
    let mut refused = Vec::new();
    for c in creates {
        match c.await?? {
            Ok(ip) => addresses.push(ip),
            Err(status) => refused.push(status),
        }
    }
    let distinct: BTreeSet<&String> = addresses.iter().collect();
    ensure!(distinct.len() == addresses.len(), "an address was handed out twice: {addresses:?}");
    ensure!(addresses.len() == 13, "expected the 13 free addresses to be handed out, got {}: {addresses:?} (refused: {refused:?})", addresses.len());
    ensure!(refused.len() == 3 && refused.iter().all(|s| s.contains("range is full")), "the creates past the range's end: {refused:?}");
    shutdown.cancel();
    Ok(())
}
