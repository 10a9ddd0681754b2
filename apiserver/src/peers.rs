//! The `kubernetes` Service's endpoints when several apiservers share one store (an HA
//! control plane on etcd), kept as Kubernetes' lease endpoint reconciler keeps them:
//! every apiserver renews a key `/registry/masterleases/<its address>` every
//! [`RENEW`], and the `default/kubernetes` Endpoints and EndpointSlice list the
//! addresses whose key has been renewed within [`EXPIRY`]. An apiserver that stops
//! cleanly removes its key and its address at once; one that dies drops out after
//! [`EXPIRY`]. Freshness is judged by each key's store revision changing, as this
//! apiserver sees it, so the servers' clocks need not agree.
//!
//! Pods reach the API through that Service, and rkube agents learn from the
//! Endpoints which servers their client-side load balancer may use.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::server::{ApiServer, ServerError};
use crate::storage::{RangeOptions, Revision, StoreError};

const PREFIX: &str = "/registry/masterleases/";
/// How often an apiserver renews its lease.
pub const RENEW: Duration = Duration::from_secs(10);
/// How long a lease counts without renewal.
pub const EXPIRY: Duration = Duration::from_secs(35);

/// The leases seen so far: each key's revision and when it was first seen at it.
#[derive(Default)]
pub struct Peers {
    seen: HashMap<String, (Revision, Instant)>,
}

impl ApiServer {
    fn lease_key(&self) -> String {
        format!("{PREFIX}{}", self.config.advertise_address)
    }

    /// Renews this apiserver's lease.
    async fn renew_lease(&self) -> Result<(), StoreError> {
        let key = self.lease_key();
        let value = serde_json::to_vec(&json!({"address": self.config.advertise_address.to_string(), "port": self.config.bind.port()})).unwrap_or_default();
        for _ in 0..4 {
            let result = match self.store.get(&key).await?.0 {
                Some(kv) => self.store.update(&key, value.clone(), kv.mod_revision).await.map(|_| ()),
                None => self.store.create(&key, value.clone()).await.map(|_| ()),
            };
            match result {
                Err(StoreError::Conflict { .. } | StoreError::AlreadyExists { .. } | StoreError::NotFound { .. }) => continue,
                other => return other,
            }
        }
        Ok(())
    }

    /// The addresses of the apiservers whose leases are fresh (this one's included,
    /// unless `without_self`).
    async fn live_peers(&self, peers: &mut Peers, without_self: bool) -> Result<BTreeSet<String>, StoreError> {
        let now = Instant::now();
        let listed = self.store.range(PREFIX, RangeOptions::default()).await?;
        let mut live = BTreeSet::new();
        let mut present = BTreeSet::new();
        for kv in listed.kvs {
            present.insert(kv.key.clone());
            let since = match peers.seen.get(&kv.key) {
                Some((rev, since)) if *rev == kv.mod_revision => *since,
                _ => now,
            };
            peers.seen.insert(kv.key.clone(), (kv.mod_revision, since));
            if now.duration_since(since) <= EXPIRY {
                if let Some(address) = kv.key.strip_prefix(PREFIX) {
                    live.insert(address.to_string());
                }
            }
        }
        peers.seen.retain(|k, _| present.contains(k));
        let me = self.config.advertise_address.to_string();
        if without_self {
            live.remove(&me);
        } else {
            live.insert(me);
        }
        Ok(live)
    }

    /// Makes the `kubernetes` Endpoints and EndpointSlice list `addresses`.
    pub(crate) async fn publish_endpoints(self: &Arc<Self>, addresses: &BTreeSet<String>) -> Result<(), ServerError> {
        let port = self.config.bind.port();
        let ports = json!([{"name": "https", "port": port, "protocol": "TCP"}]);
        let subsets = if addresses.is_empty() {
            json!([])
        } else {
            json!([{"addresses": addresses.iter().map(|ip| json!({"ip": ip})).collect::<Vec<Value>>(), "ports": ports}])
        };
        let endpoints = json!({
            "apiVersion": "v1", "kind": "Endpoints",
            "metadata": {"name": "kubernetes", "namespace": "default", "labels": {"endpointslice.kubernetes.io/skip-mirror": "true"}},
            "subsets": subsets,
        });
        self.ensure_current(crate::server::resource("", "v1", "endpoints")?, Some("default"), "kubernetes", endpoints, "/subsets").await?;
        // kube-proxy follows EndpointSlices, so the apiserver keeps the `kubernetes`
        // Service's slice itself, as Kubernetes' endpoint reconciler does.
        let address_type = if self.config.advertise_address.is_ipv4() { "IPv4" } else { "IPv6" };
        let slice = json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "kubernetes", "namespace": "default", "labels": {"kubernetes.io/service-name": "kubernetes", "endpointslice.kubernetes.io/managed-by": "kube-apiserver"}},
            "addressType": address_type,
            "endpoints": addresses.iter().map(|ip| json!({"addresses": [ip], "conditions": {"ready": true}})).collect::<Vec<Value>>(),
            "ports": ports,
        });
        self.ensure_current(crate::server::resource("discovery.k8s.io", "v1", "endpointslices")?, Some("default"), "kubernetes", slice, "/endpoints").await
    }

    /// One round: renew, then publish the live addresses.
    pub(crate) async fn reconcile_peers(self: &Arc<Self>, peers: &mut Peers) -> Result<(), ServerError> {
        let store_err = |e: StoreError| ServerError::Bootstrap { what: "the apiserver's lease".into(), source: Box::new(crate::errors::ApiError::internal(e)) };
        self.renew_lease().await.map_err(store_err)?;
        let live = self.live_peers(peers, false).await.map_err(store_err)?;
        self.publish_endpoints(&live).await
    }

    /// Keeps the lease and the endpoints current until `shutdown`, then takes this
    /// apiserver out of them (best effort: the store may be going away too).
    pub(crate) async fn keep_peers(self: Arc<Self>, mut peers: Peers, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(RENEW) => {}
            }
            if let Err(e) = self.reconcile_peers(&mut peers).await {
                tracing::warn!(error = %e, "renewing the apiserver's lease and the kubernetes endpoints failed");
            }
        }
        let leave = async {
            let _ = self.store.delete(&self.lease_key(), None).await;
            if let Ok(live) = self.live_peers(&mut peers, true).await {
                let _ = self.publish_endpoints(&live).await;
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(2), leave).await;
    }
}
