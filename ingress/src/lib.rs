//! The lab's ingress controller, in the role k3s gives Traefik: serves the Ingresses of
//! its IngressClass (`spec.controller: rkube.io/ingress`) as an HTTP reverse proxy on the
//! node, straight to the ready endpoints of each backend Service (round robin), and
//! writes the node's address into each served Ingress's `status.loadBalancer`, so
//! `kubectl get ingress` shows an ADDRESS and `curl -H 'Host: …' http://<node>/` reaches
//! the pods.
//!
//! HTTPS is terminated with the certificate of the Ingress `tls` entry that covers the
//! name the client asks for. Requests that match no rule get 404; a backend Service that
//! is missing or has no ready endpoint gets 503; an endpoint that does not answer gets
//! 502. Upgrades (WebSocket) pass through: once the backend switches protocols, the
//! client's and the backend's connections are joined.

pub mod proxy;
pub mod routes;
pub mod tls;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;

use component_base::reflect::notifying_store;
use k8s_openapi::api::core::v1::{Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{Ingress, IngressClass};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

pub use routes::CONTROLLER;

#[derive(Debug, Clone)]
pub struct Config {
    /// `--kubeconfig`.
    pub kubeconfig: Option<PathBuf>,
    /// The address written into served Ingresses' `status.loadBalancer.ingress` (the
    /// node's).
    pub status_address: IpAddr,
}

#[derive(Debug, thiserror::Error)]
pub enum IngressError {
    #[error(transparent)]
    Client(#[from] component_base::client::ClientError),
    #[error("binding the ingress controller's HTTP port {addr}")]
    Bind { addr: SocketAddr, #[source] source: std::io::Error },
    #[error("watching {what}")]
    Watch { what: &'static str, #[source] source: reflector::store::WriterDropped },
    #[error("the ingress controller's TLS: {0}")]
    Tls(String),
}

/// Binds the HTTP listener (apart from [`run`], so that a port in use is known before
/// the controller starts).
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, IngressError> {
    TcpListener::bind(addr).await.map_err(|source| IngressError::Bind { addr, source })
}

/// What the proxy reads for each request.
#[derive(Clone)]
pub struct Caches {
    pub ingresses: Store<Ingress>,
    pub classes: Store<IngressClass>,
    pub services: Store<Service>,
    pub slices: Store<EndpointSlice>,
    /// For the certificates of `spec.tls`.
    pub secrets: Store<Secret>,
}

impl Caches {
    /// The Ingresses this controller serves.
    pub fn served(&self) -> Vec<Arc<Ingress>> {
        let classes = self.classes.state();
        self.ingresses.state().into_iter().filter(|i| routes::is_ours(i, &classes)).collect()
    }
}

/// The node's listeners: HTTP, and HTTPS if its port could be had.
pub struct Listeners {
    pub http: TcpListener,
    pub https: Option<TcpListener>,
}

/// Runs the controller until `shutdown`: the proxy on the listeners, and the status
/// writer.
pub async fn run(config: Config, listeners: Listeners, shutdown: CancellationToken) -> Result<(), IngressError> {
    let client = component_base::client::client(config.kubeconfig.as_deref()).await?;
    let fallback = tls::fallback_certificate().map_err(IngressError::Tls)?;
    let changed = Arc::new(Notify::new());
    let caches = Caches {
        ingresses: notifying_store(Api::all(client.clone()), watcher::Config::default(), &changed, &shutdown),
        classes: notifying_store(Api::all(client.clone()), watcher::Config::default(), &changed, &shutdown),
        services: notifying_store(Api::all(client.clone()), watcher::Config::default(), &changed, &shutdown),
        slices: notifying_store(Api::all(client.clone()), watcher::Config::default(), &changed, &shutdown),
        secrets: notifying_store(Api::all(client.clone()), watcher::Config::default(), &changed, &shutdown),
    };
    let ready = async {
        caches.ingresses.wait_until_ready().await.map_err(|source| IngressError::Watch { what: "ingresses", source })?;
        caches.classes.wait_until_ready().await.map_err(|source| IngressError::Watch { what: "ingressclasses", source })?;
        caches.services.wait_until_ready().await.map_err(|source| IngressError::Watch { what: "services", source })?;
        caches.slices.wait_until_ready().await.map_err(|source| IngressError::Watch { what: "endpointslices", source })?;
        caches.secrets.wait_until_ready().await.map_err(|source| IngressError::Watch { what: "secrets", source })
    };
    tokio::select! {
        _ = shutdown.cancelled() => return Ok(()),
        r = ready => r?,
    }
    tracing::info!(http = ?listeners.http.local_addr().ok(), https = ?listeners.https.as_ref().and_then(|l| l.local_addr().ok()), "ingress controller serving");
    let https = match listeners.https {
        Some(listener) => {
            let resolver = Arc::new(tls::SecretResolver::new(caches.clone(), fallback));
            let config = component_base::tls::server_config_with_resolver(resolver, &["h2", "http/1.1"]).map_err(|e| IngressError::Tls(e.to_string()))?;
            Some((listener, config))
        }
        None => None,
    };
    let status = tokio::spawn(write_statuses(client, caches.clone(), config.status_address, changed, shutdown.clone()));
    proxy::serve(listeners.http, https, caches, shutdown).await;
    let _ = status.await;
    Ok(())
}

/// The `status.loadBalancer.ingress` an Ingress should have, if it must change: this
/// node's address among those listed while the controller serves it, not after. Each
/// server of a cluster adds only its own, so that they do not take turns overwriting
/// one another.
fn wanted_status(ingress: &Ingress, served: bool, address: IpAddr) -> Option<serde_json::Value> {
    let mut current: Vec<String> = ingress
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref())
        .map(|list| list.iter().filter_map(|i| i.ip.clone()).collect())
        .unwrap_or_default();
    let ours = address.to_string();
    let listed = current.contains(&ours);
    if served == listed {
        return None;
    }
    if served {
        current.push(ours);
        current.sort();
    } else {
        // Moved to another class: the address is no longer ours to claim.
        current.retain(|ip| *ip != ours);
    }
    let list: Vec<serde_json::Value> = current.into_iter().map(|ip| serde_json::json!({"ip": ip})).collect();
    Some(serde_json::json!({"status": {"loadBalancer": {"ingress": if list.is_empty() { serde_json::Value::Null } else { serde_json::Value::Array(list) }}}}))
}

async fn write_statuses(client: kube::Client, caches: Caches, address: IpAddr, changed: Arc<Notify>, shutdown: CancellationToken) {
    loop {
        let classes = caches.classes.state();
        let mut failed = false;
        for ingress in caches.ingresses.state() {
            let served = routes::is_ours(&ingress, &classes);
            let Some(patch) = wanted_status(&ingress, served, address) else { continue };
            let (Some(namespace), Some(name)) = (ingress.metadata.namespace.as_deref(), ingress.metadata.name.as_deref()) else { continue };
            let api: Api<Ingress> = Api::namespaced(client.clone(), namespace);
            if let Err(e) = api.patch_status(name, &PatchParams::default(), &Patch::Merge(&patch)).await {
                tracing::debug!(error = %e, ingress = %name, "writing the ingress status failed; will retry");
                failed = true;
            }
        }
        let retry = if failed { std::time::Duration::from_secs(2) } else { std::time::Duration::from_secs(300) };
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = changed.notified() => {}
            _ = tokio::time::sleep(retry) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_status(ips: &[&str]) -> Ingress {
        let list: Vec<serde_json::Value> = ips.iter().map(|ip| serde_json::json!({"ip": ip})).collect();
        serde_json::from_value(serde_json::json!({"metadata": {"name": "i"}, "status": {"loadBalancer": {"ingress": list}}})).expect("an Ingress")
    }

    #[test]
    fn each_server_adds_and_removes_only_its_address() {
        let a: IpAddr = "192.0.2.1".parse().expect("ip");
        let b: IpAddr = "192.0.2.2".parse().expect("ip");
        let ips = |patch: Option<serde_json::Value>| patch.map(|p| p["status"]["loadBalancer"]["ingress"].clone());
        assert_eq!(ips(wanted_status(&with_status(&[]), true, a)), Some(serde_json::json!([{"ip": "192.0.2.1"}])));
        assert_eq!(ips(wanted_status(&with_status(&["192.0.2.1"]), true, b)), Some(serde_json::json!([{"ip": "192.0.2.1"}, {"ip": "192.0.2.2"}])));
        assert_eq!(wanted_status(&with_status(&["192.0.2.1", "192.0.2.2"]), true, a), None, "already listed: nothing to write");
        assert_eq!(ips(wanted_status(&with_status(&["192.0.2.1", "192.0.2.2"]), false, b)), Some(serde_json::json!([{"ip": "192.0.2.1"}])));
        assert_eq!(ips(wanted_status(&with_status(&["192.0.2.1"]), false, a)), Some(serde_json::Value::Null));
        assert_eq!(wanted_status(&with_status(&[]), false, a), None);
    }
}
