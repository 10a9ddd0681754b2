//! The kube-apiserver process: configuration, storage selection, the watch caches, the
//! HTTP router, bootstrap objects and the admin kubeconfig.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Router;
use http::{HeaderMap, Method, StatusCode, Uri};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;
use tracing::{info, info_span, warn, Instrument};

use crate::admission::ServiceRanges;
use crate::discovery;
use crate::errors::ApiError;
use crate::handlers::{Params, Target};
use crate::registry::{self, ResourceInfo};
use crate::storage::{embedded::EmbeddedStore, etcd::EtcdStore, Store, StoreError};
use crate::watchcache::WatchCache;

/// A checked apiserver configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where the embedded store, and the admin kubeconfig, live.
    pub data_dir: PathBuf,
    pub bind: SocketAddr,
    /// etcd endpoints; empty selects the embedded store.
    pub etcd_servers: Vec<String>,
    pub service_ranges: ServiceRanges,
    /// The address clients are told to use (the `kubernetes` Service's endpoint).
    pub advertise_address: std::net::IpAddr,
}

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("opening the store failed")]
    OpenStore(#[source] Box<StoreError>),
    #[error("starting the watch cache for {prefix} failed")]
    StartCache { prefix: String, #[source] source: Box<StoreError> },
    #[error("creating {what} at start-up failed: {source}")]
    Bootstrap { what: String, #[source] source: Box<ApiError> },
    #[error("binding {addr} failed")]
    Bind { addr: SocketAddr, #[source] source: std::io::Error },
    #[error("writing {path} failed")]
    WriteKubeconfig { path: PathBuf, #[source] source: std::io::Error },
    #[error("serving HTTP failed")]
    Serve(#[source] std::io::Error),
}

/// Shared state of a running apiserver.
pub struct ApiServer {
    pub store: Arc<dyn Store>,
    pub config: Config,
    caches: HashMap<&'static str, Arc<WatchCache>>,
    /// Serialises Service address allocation.
    pub service_allocation: Arc<tokio::sync::Mutex<()>>,
    /// The latest resource usage nodes reported (`metrics.k8s.io`).
    pub metrics: crate::metrics::MetricsStore,
    pub shutdown: CancellationToken,
}

impl ApiServer {
    /// Opens the configured store and starts the watch caches.
    pub async fn new(config: Config, shutdown: CancellationToken) -> Result<Arc<ApiServer>, ServerError> {
        let store: Arc<dyn Store> = if config.etcd_servers.is_empty() {
            let dir = config.data_dir.join("db");
            Arc::new(EmbeddedStore::open(&dir).await.map_err(|e| ServerError::OpenStore(Box::new(e)))?)
        } else {
            Arc::new(EtcdStore::connect(&config.etcd_servers).await.map_err(|e| ServerError::OpenStore(Box::new(e)))?)
        };
        ApiServer::with_store(config, store, shutdown).await
    }

    /// An apiserver over a store the caller opened.
    pub async fn with_store(config: Config, store: Arc<dyn Store>, shutdown: CancellationToken) -> Result<Arc<ApiServer>, ServerError> {
        let mut caches = HashMap::new();
        for r in registry::RESOURCES {
            if caches.contains_key(r.storage_resource) {
                continue;
            }
            let cache = WatchCache::start(store.clone(), r.prefix(), shutdown.clone())
                .await
                .map_err(|source| ServerError::StartCache { prefix: r.prefix(), source: Box::new(source) })?;
            caches.insert(r.storage_resource, cache);
        }
        let api = Arc::new(ApiServer { store, config, caches, service_allocation: Default::default(), metrics: Default::default(), shutdown });
        api.bootstrap().await?;
        Ok(api)
    }

    pub fn cache(&self, res: &ResourceInfo) -> Result<Arc<WatchCache>, ApiError> {
        self.caches.get(res.storage_resource).cloned().ok_or_else(|| ApiError::internal(format!("no watch cache for {}", res.plural)))
    }

    /// Creates what every cluster has from the start: the four system namespaces and the
    /// `kubernetes` Service.
    async fn bootstrap(self: &Arc<Self>) -> Result<(), ServerError> {
        let ns = registry::lookup("", "v1", "namespaces").ok_or_else(|| bootstrap_err("namespaces", ApiError::internal("not registered")))?;
        for name in ["default", "kube-system", "kube-public", "kube-node-lease"] {
            let obj = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}});
            self.ensure(ns, None, name, obj).await?;
        }
        let pc = registry::lookup("scheduling.k8s.io", "v1", "priorityclasses").ok_or_else(|| bootstrap_err("priorityclasses", ApiError::internal("not registered")))?;
        for (name, value, description) in [
            ("system-node-critical", 2_000_001_000, "Used for system critical pods that must not be moved from their current node."),
            ("system-cluster-critical", 2_000_000_000, "Used for system critical pods that must run in the cluster, but can be moved to another node if necessary."),
        ] {
            let obj = json!({"apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass", "metadata": {"name": name}, "value": value, "description": description, "preemptionPolicy": "PreemptLowerPriority"});
            self.ensure(pc, None, name, obj).await?;
        }
        let svc = registry::lookup("", "v1", "services").ok_or_else(|| bootstrap_err("services", ApiError::internal("not registered")))?;
        let ip = self.config.service_ranges.first().to_string();
        let port = self.config.bind.port();
        let kubernetes = json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "kubernetes", "namespace": "default", "labels": {"component": "apiserver", "provider": "kubernetes"}},
            "spec": {"clusterIP": ip, "ports": [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": port}], "sessionAffinity": "None", "type": "ClusterIP"},
        });
        self.ensure(svc, Some("default"), "kubernetes", kubernetes).await?;
        let ep = registry::lookup("", "v1", "endpoints").ok_or_else(|| bootstrap_err("endpoints", ApiError::internal("not registered")))?;
        let endpoints = json!({
            "apiVersion": "v1", "kind": "Endpoints",
            "metadata": {"name": "kubernetes", "namespace": "default", "labels": {"endpointslice.kubernetes.io/skip-mirror": "true"}},
            "subsets": [{"addresses": [{"ip": self.config.advertise_address.to_string()}], "ports": [{"name": "https", "port": port, "protocol": "TCP"}]}],
        });
        self.ensure(ep, Some("default"), "kubernetes", endpoints).await?;
        Ok(())
    }

    async fn ensure(self: &Arc<Self>, res: &'static ResourceInfo, namespace: Option<&str>, name: &str, obj: Value) -> Result<(), ServerError> {
        let key = res.key(namespace, name);
        let exists = self.store.get(&key).await.map_err(|e| bootstrap_err(name, ApiError::internal(e)))?.0.is_some();
        if exists {
            return Ok(());
        }
        let target = Target { res, namespace: namespace.map(str::to_string), name: None, sub: None };
        let body = Bytes::from(serde_json::to_vec(&obj).unwrap_or_default());
        match self.clone().serve_resource(Method::POST, target, Params::default(), HeaderMap::new(), body).await {
            Ok(_) => Ok(()),
            Err(e) if e.code == 409 => Ok(()),
            Err(e) => Err(bootstrap_err(name, e)),
        }
    }

    /// The HTTP router of the whole API.
    pub fn router(self: &Arc<Self>) -> Router {
        Router::new()
            .fallback(dispatch)
            .layer(axum::middleware::from_fn_with_state(self.clone(), crate::proxy::intercept))
            .with_state(self.clone())
    }
}

fn bootstrap_err(what: &str, source: ApiError) -> ServerError {
    ServerError::Bootstrap { what: what.to_string(), source: Box::new(source) }
}

fn json_response(value: &Value) -> Response {
    (StatusCode::OK, [(http::header::CONTENT_TYPE, "application/json")], serde_json::to_vec(value).unwrap_or_default()).into_response()
}

async fn dispatch(State(api): State<Arc<ApiServer>>, method: Method, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    let span = info_span!("request", verb = %method, path = %uri.path());
    async move {
        let started = std::time::Instant::now();
        let response = match route(api, method.clone(), &uri, headers, body).await {
            Ok(r) => r,
            Err(e) => e.into_response(),
        };
        tracing::debug!(status = response.status().as_u16(), elapsed_ms = started.elapsed().as_millis() as u64, "served");
        response
    }
    .instrument(span)
    .await
}

async fn route(api: Arc<ApiServer>, method: Method, uri: &Uri, headers: HeaderMap, body: Bytes) -> Result<Response, ApiError> {
    let path = uri.path().trim_end_matches('/');
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    match segments.as_slice() {
        ["healthz" | "livez" | "readyz", ..] => return Ok((StatusCode::OK, "ok").into_response()),
        ["version"] => return Ok(json_response(&discovery::version())),
        ["openapi", "v3"] => return Ok(json_response(&crate::openapi::root())),
        ["openapi", "v3", gv @ ..] => {
            let doc = crate::openapi::document(&gv.join("/")).ok_or_else(|| ApiError::path_not_found(path))?;
            return Ok((StatusCode::OK, [(http::header::CONTENT_TYPE, "application/json")], doc).into_response());
        }
        ["api"] => {
            if let Some(media) = discovery::wants_aggregated(&headers) {
                return Ok(aggregated_response(discovery::aggregated(true, media), media));
            }
            return Ok(json_response(&discovery::core_versions(&api.config.bind.to_string())));
        }
        ["apis"] => {
            if let Some(media) = discovery::wants_aggregated(&headers) {
                return Ok(aggregated_response(discovery::aggregated(false, media), media));
            }
            return Ok(json_response(&discovery::group_list()));
        }
        ["apis", "metrics.k8s.io", "v1beta1", rest @ ..] if !rest.is_empty() => {
            return api.serve_metrics(&method, rest, uri.query()).map(|v| json_response(&v));
        }
        ["rkube", "v1", "nodes", node, "stats", "summary"] if method == Method::PUT || method == Method::POST => {
            return api.record_node_summary(node, &body).map(|v| json_response(&v));
        }
        ["api", "v1"] => return discovery::resource_list("", "v1").map(|v| json_response(&v)).ok_or_else(|| ApiError::path_not_found(path)),
        ["apis", group] => return discovery::group(group).map(|v| json_response(&v)).ok_or_else(|| ApiError::path_not_found(path)),
        ["apis", group, version] => {
            return discovery::resource_list(group, version).map(|v| json_response(&v)).ok_or_else(|| ApiError::path_not_found(path))
        }
        _ => {}
    }
    let (group, version, rest) = match segments.as_slice() {
        ["api", version, rest @ ..] => ("", *version, rest),
        ["apis", group, version, rest @ ..] => (*group, *version, rest),
        _ => return Err(ApiError::path_not_found(path)),
    };
    let mut params = Params::parse(uri.query())?;
    let (rest, legacy_watch) = match rest {
        ["watch", rest @ ..] => (rest, true),
        other => (other, false),
    };
    let target = parse_target(group, version, rest).ok_or_else(|| ApiError::path_not_found(path))?;
    if legacy_watch {
        params = Params::parse(Some(&format!("{}&watch=true", uri.query().unwrap_or(""))))?;
        if let Some(name) = target.name.clone() {
            let q = format!("{}&watch=true&fieldSelector=metadata.name%3D{}", uri.query().unwrap_or(""), name);
            params = Params::parse(Some(&q))?;
            let target = Target { name: None, ..target };
            return api.serve_resource(method, target, params, headers, body).await;
        }
    }
    api.serve_resource(method, target, params, headers, body).await
}

fn aggregated_response(value: Value, media: &'static str) -> Response {
    (StatusCode::OK, [(http::header::CONTENT_TYPE, media)], serde_json::to_vec(&value).unwrap_or_default()).into_response()
}

/// Parses `[namespaces/<ns>/]<resource>[/<name>[/<sub>]]`.
fn parse_target(group: &str, version: &str, rest: &[&str]) -> Option<Target> {
    let owned = |s: &str| Some(s.to_string());
    match rest {
        ["namespaces", ns, resource, tail @ ..] if registry::lookup(group, version, resource).is_some_and(|r| r.namespaced) => {
            let res = registry::lookup(group, version, resource)?;
            match tail {
                [] => Some(Target { res, namespace: owned(ns), name: None, sub: None }),
                [name] => Some(Target { res, namespace: owned(ns), name: owned(name), sub: None }),
                [name, sub] => Some(Target { res, namespace: owned(ns), name: owned(name), sub: owned(sub) }),
                _ => None,
            }
        }
        [resource, tail @ ..] => {
            let res = registry::lookup(group, version, resource)?;
            match tail {
                [] => Some(Target { res, namespace: None, name: None, sub: None }),
                [name] if !res.namespaced => Some(Target { res, namespace: None, name: owned(name), sub: None }),
                [name, sub] if !res.namespaced => Some(Target { res, namespace: None, name: owned(name), sub: owned(sub) }),
                _ => None,
            }
        }
        _ => None,
    }
}

/// Writes a kubeconfig with full access to `server` (no credentials are needed until
/// authentication lands; the file is still private to its owner).
pub fn write_admin_kubeconfig(path: &std::path::Path, server: &str) -> Result<(), ServerError> {
    let text = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- cluster:\n    server: {server}\n  name: rkube\ncontexts:\n- context:\n    cluster: rkube\n    user: admin\n    namespace: default\n  name: rkube\ncurrent-context: rkube\npreferences: {{}}\nusers:\n- name: admin\n  user: {{}}\n"
    );
    let write = || -> std::io::Result<()> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, text)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))?;
        }
        std::fs::rename(&tmp, path)
    };
    write().map_err(|source| ServerError::WriteKubeconfig { path: path.to_path_buf(), source })
}

/// Runs the apiserver until `shutdown`: opens storage, binds, writes the admin
/// kubeconfig, serves. `ready` (if given) receives the bound address once serving.
pub async fn run(config: Config, shutdown: CancellationToken, ready: Option<tokio::sync::oneshot::Sender<SocketAddr>>) -> Result<(), ServerError> {
    std::fs::create_dir_all(&config.data_dir).map_err(|source| ServerError::WriteKubeconfig { path: config.data_dir.clone(), source })?;
    let listener = tokio::net::TcpListener::bind(config.bind).await.map_err(|source| ServerError::Bind { addr: config.bind, source })?;
    let addr = listener.local_addr().map_err(|source| ServerError::Bind { addr: config.bind, source })?;
    let mut config = config;
    config.bind = addr;
    let api = ApiServer::new(config.clone(), shutdown.clone()).await?;
    let host = if addr.ip().is_unspecified() { std::net::IpAddr::from([127, 0, 0, 1]) } else { addr.ip() };
    let server_url = format!("http://{}", SocketAddr::new(host, addr.port()));
    let kubeconfig = config.data_dir.join("admin.kubeconfig");
    write_admin_kubeconfig(&kubeconfig, &server_url)?;
    info!(address = %addr, store = if config.etcd_servers.is_empty() { "embedded" } else { "etcd" }, kubeconfig = %kubeconfig.display(), "kube-apiserver serving");
    if let Some(tx) = ready {
        let _ = tx.send(addr);
    }
    let router = api.router();
    let token = shutdown.clone();
    let served = axum::serve(listener, router).with_graceful_shutdown(async move { token.cancelled().await }).await;
    if let Err(e) = served {
        warn!(error = %e, "HTTP server stopped");
        return Err(ServerError::Serve(e));
    }
    Ok(())
}
