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
use crate::auth::filter::RequestUser;
use crate::auth::UserInfo;
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
    pub security: SecurityConfig,
    /// Components running in this process beside the apiserver (`rkube up`), by their
    /// `componentstatuses` name (`scheduler`, `controller-manager`); the others are
    /// judged by their leader-election Lease in kube-system.
    pub local_components: Vec<(&'static str, component_base::health::Running)>,
}

/// How the apiserver proves itself to clients and checks them.
#[derive(Debug, Clone)]
pub struct SecurityConfig {
    /// Serve plain HTTP with no authentication or authorization
    /// (`--insecure-serve-http`): anyone who can connect is cluster-admin.
    pub insecure_serve_http: bool,
    /// The serving certificate and key (`--tls-cert-file`, `--tls-private-key-file`);
    /// without them one is issued at start by the cluster CA under `DATA_DIR/pki`.
    pub tls_cert_file: Option<PathBuf>,
    pub tls_private_key_file: Option<PathBuf>,
    /// The CA bundle client certificates are checked against (`--client-ca-file`);
    /// defaults to the cluster CA.
    pub client_ca_file: Option<PathBuf>,
    /// Extra names and addresses for the serving certificate (`--tls-san`).
    pub tls_sans: Vec<String>,
    /// Static bearer tokens (`--token-auth-file`).
    pub token_auth_file: Option<PathBuf>,
    /// The key that signs and verifies ServiceAccount tokens
    /// (`--service-account-key-file`); defaults to `DATA_DIR/pki/service-account.key`.
    pub service_account_key_file: Option<PathBuf>,
    pub service_account_issuer: String,
    /// `--authorization-mode`, in order.
    pub authorization_modes: Vec<crate::auth::filter::Mode>,
    /// An EncryptionConfiguration file: which resources are encrypted at rest, and how
    /// (`--encryption-provider-config`).
    pub encryption_provider_config: Option<PathBuf>,
    /// The CA bundle kubelets' serving certificates are checked against
    /// (`--kubelet-certificate-authority`); defaults to the cluster CA.
    pub kubelet_certificate_authority: Option<PathBuf>,
    /// TLS to etcd: the CA of etcd's serving certificate (`--etcd-cafile`) and the
    /// apiserver's client certificate and key (`--etcd-certfile`, `--etcd-keyfile`).
    pub etcd_cafile: Option<PathBuf>,
    pub etcd_certfile: Option<PathBuf>,
    pub etcd_keyfile: Option<PathBuf>,
    /// Where audit events are written, one JSON line each ("-" is standard output);
    /// None disables auditing (`--audit-log-path`).
    pub audit_log_path: Option<PathBuf>,
}

impl SecurityConfig {
    /// The TLS settings for etcd, if `--etcd-cafile` is set.
    pub fn etcd_tls(&self) -> Result<Option<crate::storage::etcd::EtcdTls>, StoreError> {
        let read = |p: &PathBuf| std::fs::read_to_string(p).map_err(|e| StoreError::Io(std::io::Error::new(e.kind(), format!("reading {}: {e}", p.display()))));
        let Some(ca) = &self.etcd_cafile else { return Ok(None) };
        let client = match (&self.etcd_certfile, &self.etcd_keyfile) {
            (Some(cert), Some(key)) => Some((read(cert)?, read(key)?)),
            _ => None,
        };
        Ok(Some(crate::storage::etcd::EtcdTls { ca_pem: read(ca)?, client }))
    }
}

impl Default for SecurityConfig {
    fn default() -> SecurityConfig {
        SecurityConfig {
            insecure_serve_http: false,
            tls_cert_file: None,
            tls_private_key_file: None,
            client_ca_file: None,
            tls_sans: Vec::new(),
            token_auth_file: None,
            service_account_key_file: None,
            service_account_issuer: crate::auth::serviceaccount::DEFAULT_ISSUER.to_string(),
            authorization_modes: vec![crate::auth::filter::Mode::Node, crate::auth::filter::Mode::Rbac],
            encryption_provider_config: None,
            kubelet_certificate_authority: None,
            etcd_cafile: None,
            etcd_certfile: None,
            etcd_keyfile: None,
            audit_log_path: None,
        }
    }
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
    #[error("setting up the cluster certificates failed")]
    Pki(#[from] component_base::pki::PkiError),
    #[error("setting up TLS failed")]
    Tls(#[from] crate::tls::TlsError),
    #[error("loading the service account key failed")]
    ServiceAccountKey(#[from] crate::auth::serviceaccount::TokenError),
    #[error("loading the encryption provider config failed")]
    EncryptionConfig(#[source] Box<crate::storage::encryption::EncryptionError>),
    #[error("opening the audit log failed")]
    Audit(#[from] crate::audit::AuditError),
    #[error("loading --token-auth-file failed")]
    TokenFile(#[from] crate::auth::authn::TokenFileError),
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
    /// Authentication and authorization.
    pub security: crate::auth::filter::Security,
    pub shutdown: CancellationToken,
    /// In-flight, rate, timeout and body-size limits (`crate::limits`).
    pub limits: crate::limits::Limiter,
    /// The audit log (`--audit-log-path`), set once at start-up if there is one.
    pub audit: std::sync::OnceLock<crate::audit::AuditLog>,
}

impl ApiServer {
    /// Opens the configured store and starts the watch caches.
    pub async fn new(config: Config, security: crate::auth::filter::Security, shutdown: CancellationToken) -> Result<Arc<ApiServer>, ServerError> {
        let store: Arc<dyn Store> = if config.etcd_servers.is_empty() {
            let dir = config.data_dir.join("db");
            Arc::new(EmbeddedStore::open(&dir).await.map_err(|e| ServerError::OpenStore(Box::new(e)))?)
        } else {
            let tls = config.security.etcd_tls().map_err(|e| ServerError::OpenStore(Box::new(e)))?;
            Arc::new(EtcdStore::connect_with(&config.etcd_servers, tls.as_ref()).await.map_err(|e| ServerError::OpenStore(Box::new(e)))?)
        };
        let store = match &config.security.encryption_provider_config {
            Some(path) => crate::storage::encryption::wrap_store(store, path).map_err(|e| ServerError::EncryptionConfig(Box::new(e)))?,
            None => store,
        };
        ApiServer::with_store(config, store, security, shutdown).await
    }

    /// An apiserver over a store the caller opened.
    pub async fn with_store(
        config: Config,
        store: Arc<dyn Store>,
        security: crate::auth::filter::Security,
        shutdown: CancellationToken,
    ) -> Result<Arc<ApiServer>, ServerError> {
        crate::conversion::migrate_legacy(store.as_ref()).await.map_err(|e| ServerError::OpenStore(Box::new(e)))?;
        let mut caches = HashMap::new();
        for r in registry::RESOURCES {
            if caches.contains_key(r.storage_resource) {
                continue;
            }
            let cache = WatchCache::start(store.clone(), r, shutdown.clone())
                .await
                .map_err(|source| ServerError::StartCache { prefix: r.prefix(), source: Box::new(source) })?;
            caches.insert(r.storage_resource, cache);
        }
        let audit = std::sync::OnceLock::new();
        if let Some(path) = &config.security.audit_log_path {
            let _ = audit.set(crate::audit::AuditLog::open(path)?);
        }
        let api = Arc::new(ApiServer { store, config, caches, service_allocation: Default::default(), metrics: Default::default(), security, shutdown, limits: Default::default(), audit });
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
        // The `kubernetes` Service's endpoints: this apiserver and its live peers.
        let mut peers = crate::peers::Peers::default();
        self.reconcile_peers(&mut peers).await?;
        tokio::spawn(self.clone().keep_peers(peers, self.shutdown.clone()));
        let roles = registry::lookup("rbac.authorization.k8s.io", "v1", "clusterroles").ok_or_else(|| bootstrap_err("clusterroles", ApiError::internal("not registered")))?;
        for role in crate::auth::policy::bootstrap_cluster_roles() {
            let name = role.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default().to_string();
            self.ensure(roles, None, &name, role).await?;
        }
        let bindings = registry::lookup("rbac.authorization.k8s.io", "v1", "clusterrolebindings").ok_or_else(|| bootstrap_err("clusterrolebindings", ApiError::internal("not registered")))?;
        for binding in crate::auth::policy::bootstrap_cluster_role_bindings() {
            let name = binding.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default().to_string();
            self.ensure(bindings, None, &name, binding).await?;
        }
        Ok(())
    }

    /// Like [`ApiServer::ensure`], and if the object exists with a different value at
    /// `pointer` (or a different `/ports`), replaces it: the apiserver's address or port
    /// may have changed since the last start (a VM that got a new address).
    pub(crate) async fn ensure_current(self: &Arc<Self>, res: &'static ResourceInfo, namespace: Option<&str>, name: &str, obj: Value, pointer: &str) -> Result<(), ServerError> {
        let key = res.key(namespace, name);
        let (existing, _) = self.store.get(&key).await.map_err(|e| bootstrap_err(name, ApiError::internal(e)))?;
        let Some(existing) = existing else { return self.ensure(res, namespace, name, obj).await };
        let existing: Value = serde_json::from_slice(&existing.value).unwrap_or(Value::Null);
        if existing.pointer(pointer) == obj.pointer(pointer) && existing.pointer("/ports") == obj.pointer("/ports") {
            return Ok(());
        }
        let target = Target { res, namespace: namespace.map(str::to_string), name: Some(name.to_string()), sub: None };
        let body = Bytes::from(serde_json::to_vec(&obj).unwrap_or_default());
        self.clone().serve_resource(Method::PUT, target, Params::default(), HeaderMap::new(), body).await.map_err(|e| bootstrap_err(name, e))?;
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
            .layer(axum::middleware::from_fn_with_state(self.clone(), crate::limits::limit))
            .layer(axum::middleware::from_fn_with_state(self.clone(), crate::auth::filter::guard))
            .layer(axum::middleware::from_fn_with_state(self.clone(), crate::audit::audit))
            .with_state(self.clone())
    }
}

/// A served resource, or the bootstrap error that it is not.
pub(crate) fn resource(group: &str, version: &str, plural: &str) -> Result<&'static ResourceInfo, ServerError> {
    registry::lookup(group, version, plural).ok_or_else(|| bootstrap_err(plural, ApiError::internal("not registered")))
}

fn bootstrap_err(what: &str, source: ApiError) -> ServerError {
    ServerError::Bootstrap { what: what.to_string(), source: Box::new(source) }
}

fn json_response(value: &Value) -> Response {
    (StatusCode::OK, [(http::header::CONTENT_TYPE, "application/json")], serde_json::to_vec(value).unwrap_or_default()).into_response()
}

async fn dispatch(
    State(api): State<Arc<ApiServer>>,
    user: Option<axum::Extension<RequestUser>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let span = info_span!("request", verb = %method, path = %uri.path());
    let user = user.map(|u| u.0 .0).unwrap_or_default();
    async move {
        let started = std::time::Instant::now();
        let response = match route(api, method.clone(), &uri, headers, body, &user).await {
            Ok(r) => r,
            Err(e) => e.into_response(),
        };
        tracing::debug!(status = response.status().as_u16(), elapsed_ms = started.elapsed().as_millis() as u64, "served");
        response
    }
    .instrument(span)
    .await
}

async fn route(api: Arc<ApiServer>, method: Method, uri: &Uri, headers: HeaderMap, body: Bytes, user: &UserInfo) -> Result<Response, ApiError> {
    let path = uri.path().trim_end_matches('/');
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    match segments.as_slice() {
        [endpoint @ ("healthz" | "livez" | "readyz")] => return Ok(crate::health::serve(&api, endpoint, None, uri.query()).await),
        [endpoint @ ("healthz" | "livez" | "readyz"), check] => return Ok(crate::health::serve(&api, endpoint, Some(check), uri.query()).await),
        ["version"] => return Ok(json_response(&discovery::version())),
        [".well-known", "openid-configuration"] | ["openid", "v1", "jwks"] => {
            let tokens = api.security.tokens.as_ref().ok_or_else(|| ApiError::path_not_found(path))?;
            let doc = if segments[0] == ".well-known" { tokens.openid_configuration() } else { tokens.jwks() };
            return Ok(json_response(&doc));
        }
        ["apis", group @ ("authorization.k8s.io" | "authentication.k8s.io"), version, rest @ ..] if !rest.is_empty() => {
            let (namespace, plural) = match rest {
                [plural] => (None, *plural),
                ["namespaces", ns, plural] => (Some(*ns), *plural),
                _ => return Err(ApiError::path_not_found(path)),
            };
            let res = registry::lookup_review(group, version, plural).ok_or_else(|| ApiError::path_not_found(path))?;
            if method != Method::POST {
                return Err(ApiError::method_not_allowed(format!("the server does not allow this method on the requested resource ({})", res.group_resource())));
            }
            if res.namespaced != namespace.is_some() {
                return Err(ApiError::path_not_found(path));
            }
            let obj = crate::codec::decode_object(&headers, &body)?;
            let answer = api.serve_review(group, plural, namespace, user, obj)?;
            return Ok((StatusCode::CREATED, [(http::header::CONTENT_TYPE, "application/json")], serde_json::to_vec(&answer).unwrap_or_default()).into_response());
        }
        ["api", "v1", "namespaces", ns, "serviceaccounts", name, "token"] => {
            if method != Method::POST {
                return Err(ApiError::method_not_allowed("the server does not allow this method on the requested resource (serviceaccounts/token)"));
            }
            let obj = if body.is_empty() { json!({}) } else { crate::codec::decode_object(&headers, &body)? };
            let answer = api.serve_token_request(ns, name, user, obj)?;
            return Ok((StatusCode::CREATED, [(http::header::CONTENT_TYPE, "application/json")], serde_json::to_vec(&answer).unwrap_or_default()).into_response());
        }
        ["openapi", "v2"] => return crate::openapi_v2::serve(&headers),
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
        ["api", "v1", "componentstatuses", rest @ ..] => return api.serve_component_statuses(&method, rest, &headers, uri.query()).await,
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
    let (mut headers, mut body) = (headers, body);
    if crate::certificates::is_csr(&target) {
        body = crate::certificates::prepare(&api, &method, &target, &mut headers, body, user).await?;
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

/// Writes a kubeconfig for `server` with no credentials (the insecure plain-HTTP mode).
pub fn write_admin_kubeconfig(path: &std::path::Path, server: &str) -> Result<(), ServerError> {
    let text = component_base::pki::anonymous_kubeconfig(server, "rkube", "admin");
    component_base::pki::write_file(path, text.as_bytes(), 0o600).map_err(|e| ServerError::WriteKubeconfig { path: path.to_path_buf(), source: std::io::Error::other(e) })
}

/// The name of the cluster CA's certificate.
pub const CA_COMMON_NAME: &str = "rkube-ca";
/// The admin user of the kubeconfig the apiserver writes (in `system:masters`).
pub const ADMIN_USER: &str = "system:admin";
/// Who the apiserver is to kubelets (kubeadm's name for it).
pub const KUBELET_CLIENT_USER: &str = "kube-apiserver-kubelet-client";

/// Where an apiserver with `data_dir` keeps its CA and keys.
pub fn pki_dir(data_dir: &std::path::Path) -> PathBuf {
    data_dir.join("pki")
}

/// The cluster CA of an apiserver's data directory, created on first use. `rkube` issues
/// the components' certificates from it.
pub fn cluster_ca(data_dir: &std::path::Path) -> Result<component_base::pki::CertificateAuthority, component_base::pki::PkiError> {
    component_base::pki::CertificateAuthority::load_or_create(&pki_dir(data_dir), CA_COMMON_NAME)
}

/// Writes a kubeconfig at `path` for `server` with a new client certificate for `user`
/// in `group`, issued by the cluster CA of `data_dir`: how a component gets its own
/// identity (`system:kube-scheduler`, `system:node:<name>` in `system:nodes`...).
pub fn write_client_kubeconfig(data_dir: &std::path::Path, server: &str, user: &str, group: Option<&str>, path: &std::path::Path) -> Result<(), component_base::pki::PkiError> {
    let ca = cluster_ca(data_dir)?;
    let pair = ca.issue_client(user, group)?;
    let text = component_base::pki::kubeconfig(server, "rkube", user, ca.cert_pem(), &pair);
    component_base::pki::write_file(path, text.as_bytes(), 0o600)
}

/// What the secure server needs: its TLS configuration, the authenticators and
/// authorizers, and the admin kubeconfig's certificate.
struct SecureSetup {
    tls: Arc<rustls::ServerConfig>,
    security: crate::auth::filter::Security,
    ca_pem: String,
    admin: Option<component_base::pki::CertPair>,
}

fn host_name() -> Option<String> {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname").ok()?;
    let name = name.trim().to_ascii_lowercase();
    (!name.is_empty()).then_some(name)
}

fn secure_setup(config: &Config) -> Result<SecureSetup, ServerError> {
    use component_base::pki::{self, Usage};
    let sec = &config.security;
    let dir = pki_dir(&config.data_dir);
    // The cluster CA signs the serving certificate (unless one is given) and the admin's
    // client certificate; without an explicit --client-ca-file it is also what client
    // certificates are checked against.
    let ca = cluster_ca(&config.data_dir)?;
    let serving = match (&sec.tls_cert_file, &sec.tls_private_key_file) {
        (Some(cert), Some(key)) => pki::CertPair {
            cert_pem: std::fs::read_to_string(cert).map_err(|source| pki::PkiError::Read { path: cert.clone(), source })?,
            key_pem: std::fs::read_to_string(key).map_err(|source| pki::PkiError::Read { path: key.clone(), source })?,
        },
        _ => {
            let mut dns: Vec<String> = ["localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local"]
                .iter()
                .map(|s| s.to_string())
                .collect();
            dns.extend(host_name());
            let mut ips: Vec<std::net::IpAddr> = vec![std::net::IpAddr::from([127, 0, 0, 1]), config.advertise_address, std::net::IpAddr::V4(config.service_ranges.first())];
            if !config.bind.ip().is_unspecified() {
                ips.push(config.bind.ip());
            }
            for san in &sec.tls_sans {
                match san.parse::<std::net::IpAddr>() {
                    Ok(ip) => ips.push(ip),
                    Err(_) => dns.push(san.clone()),
                }
            }
            ips.sort();
            ips.dedup();
            dns.dedup();
            // Issued afresh at every start, so that a changed address is covered.
            let pair = ca.issue("kube-apiserver", None, &dns, &ips, Usage::Server)?;
            pair.write(&dir, "apiserver")?;
            // The CA rides along in the handshake: a joining node pins it by the hash in
            // its join token (as kubeadm's --discovery-token-ca-cert-hash) before it
            // sends the token.
            pki::CertPair { cert_pem: format!("{}{}", pair.cert_pem, ca.cert_pem()), key_pem: pair.key_pem }
        }
    };
    let client_cas = match &sec.client_ca_file {
        Some(path) => pki::read_certificates(path)?,
        None => pki::pem_certificates(ca.cert_pem()),
    };
    let tls = crate::tls::server_config(&serving.cert_pem, &serving.key_pem, &client_cas)?;
    let key_path = sec.service_account_key_file.clone().unwrap_or_else(|| dir.join("service-account.key"));
    let tokens = Arc::new(crate::auth::serviceaccount::TokenIssuer::load_or_create(&key_path, &sec.service_account_issuer)?);
    let static_tokens = match &sec.token_auth_file {
        Some(path) => crate::auth::authn::read_token_file(path)?,
        None => Default::default(),
    };
    let authenticator = crate::auth::authn::Authenticator::new(static_tokens, Some(tokens.clone()));
    let mut security = crate::auth::filter::Security::new(false, authenticator, sec.authorization_modes.clone(), Some(tokens));
    // Kubelets serve their API on TLS with certificates from the cluster CA (or the
    // --kubelet-certificate-authority bundle) and accept this client certificate.
    let kubelet_cas = match &sec.kubelet_certificate_authority {
        Some(path) => pki::read_certificates(path)?,
        None => pki::pem_certificates(ca.cert_pem()),
    };
    let kubelet_client = ca.issue_client(KUBELET_CLIENT_USER, Some(crate::auth::MASTERS_GROUP))?;
    kubelet_client.write(&dir, "apiserver-kubelet-client")?;
    security.kubelet_tls = Some(component_base::tls::client_config(&kubelet_cas, Some(&kubelet_client), &["http/1.1"])?);
    let admin = ca.issue_client(ADMIN_USER, Some(crate::auth::MASTERS_GROUP))?;
    Ok(SecureSetup { tls, security, ca_pem: ca.cert_pem().to_string(), admin: Some(admin) })
}

/// Runs the apiserver until `shutdown`: opens storage, binds, writes the admin
/// kubeconfig, serves (HTTPS, or plain HTTP with `insecure_serve_http`). `ready` (if
/// given) receives the bound address once serving.
pub async fn run(config: Config, shutdown: CancellationToken, ready: Option<tokio::sync::oneshot::Sender<SocketAddr>>) -> Result<(), ServerError> {
    std::fs::create_dir_all(&config.data_dir).map_err(|source| ServerError::WriteKubeconfig { path: config.data_dir.clone(), source })?;
    let listener = tokio::net::TcpListener::bind(config.bind).await.map_err(|source| ServerError::Bind { addr: config.bind, source })?;
    let addr = listener.local_addr().map_err(|source| ServerError::Bind { addr: config.bind, source })?;
    let mut config = config;
    config.bind = addr;
    let host = crate::tls::client_address(addr);
    let kubeconfig = config.data_dir.join("admin.kubeconfig");
    let store_kind = if config.etcd_servers.is_empty() { "embedded" } else { "etcd" };
    if config.security.insecure_serve_http {
        warn!(address = %addr, "serving plain HTTP without authentication or authorization (--insecure-serve-http): anyone who can connect is cluster-admin");
        let api = ApiServer::new(config.clone(), crate::auth::filter::Security::insecure(), shutdown.clone()).await?;
        write_admin_kubeconfig(&kubeconfig, &format!("http://{host}"))?;
        info!(address = %addr, store = store_kind, kubeconfig = %kubeconfig.display(), "kube-apiserver serving plain HTTP");
        if let Some(tx) = ready {
            let _ = tx.send(addr);
        }
        let token = shutdown.clone();
        let served = axum::serve(listener, api.router()).with_graceful_shutdown(async move { token.cancelled().await }).await;
        return served.map_err(|e| {
            warn!(error = %e, "HTTP server stopped");
            ServerError::Serve(e)
        });
    }
    let setup = secure_setup(&config)?;
    let api = ApiServer::new(config.clone(), setup.security, shutdown.clone()).await?;
    if let Some(admin) = &setup.admin {
        let text = component_base::pki::kubeconfig(&format!("https://{host}"), "rkube", "admin", &setup.ca_pem, admin);
        component_base::pki::write_file(&kubeconfig, text.as_bytes(), 0o600)?;
    }
    info!(address = %addr, store = store_kind, kubeconfig = %kubeconfig.display(), "kube-apiserver serving HTTPS");
    if let Some(tx) = ready {
        let _ = tx.send(addr);
    }
    crate::tls::serve(listener, setup.tls, api.router(), shutdown).await.map_err(ServerError::Serve)
}
