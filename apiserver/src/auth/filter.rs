//! The filter every request passes before it is served: authentication (401 without a
//! credential, except for the public health and version paths), impersonation
//! (`kubectl --as`), authorization by the configured authorizers in order (Node, RBAC;
//! members of `system:masters` may do anything), and the NodeRestriction checks on what a
//! kubelet creates. The user rides on the request as a [`RequestUser`] extension for the
//! handlers that need it (reviews, whoami, audit).

use std::sync::{Arc, Mutex};

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::Value;
use tracing::debug;

use super::authn::{Authenticator, Objects, Outcome};
use super::node::{self, Graph};
use super::rbac::Rbac;
use super::request::forbidden_message;
use super::serviceaccount::TokenIssuer;
use super::{Attributes, Decision, UserInfo, ANONYMOUS_USER, AUTHENTICATED_GROUP, MASTERS_GROUP, SERVICE_ACCOUNTS_GROUP, UNAUTHENTICATED_GROUP};
use crate::errors::ApiError;
use crate::registry;
use crate::server::ApiServer;
use crate::tls::PeerIdentity;

/// Paths anyone may read without a credential (Kubernetes' anonymous-auth
/// configurable endpoints, as kubeadm clusters leave them open).
const PUBLIC_PATHS: &[&str] = &["/healthz", "/livez", "/readyz", "/version"];

/// One authorizer of `--authorization-mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Node,
    Rbac,
    AlwaysAllow,
    AlwaysDeny,
}

impl Mode {
    pub fn parse(s: &str) -> Result<Mode, String> {
        match s {
            "Node" => Ok(Mode::Node),
            "RBAC" => Ok(Mode::Rbac),
            "AlwaysAllow" => Ok(Mode::AlwaysAllow),
            "AlwaysDeny" => Ok(Mode::AlwaysDeny),
            other => Err(format!("unknown authorization mode {other:?} (want Node, RBAC, AlwaysAllow or AlwaysDeny)")),
        }
    }
}

/// How an apiserver authenticates and authorizes.
pub struct Security {
    /// No authentication or authorization at all (`--insecure-serve-http`).
    pub insecure: bool,
    pub authenticator: Authenticator,
    pub modes: Vec<Mode>,
    pub tokens: Option<Arc<TokenIssuer>>,
    /// How the apiserver reaches kubelets (logs, exec, port-forward): TLS, verifying the
    /// kubelet's serving certificate against the cluster CA and presenting the
    /// apiserver's kubelet client certificate. `None` speaks plain HTTP.
    pub kubelet_tls: Option<Arc<rustls::ClientConfig>>,
    rbac: Mutex<Option<([u64; 4], Arc<Rbac>)>>,
}

impl Security {
    pub fn new(insecure: bool, authenticator: Authenticator, modes: Vec<Mode>, tokens: Option<Arc<TokenIssuer>>) -> Security {
        Security { insecure, authenticator, modes, tokens, kubelet_tls: None, rbac: Mutex::new(None) }
    }

    /// Everyone may do everything (tests of other layers, `--insecure-serve-http`).
    pub fn insecure() -> Security {
        Security::new(true, Authenticator::default(), vec![Mode::AlwaysAllow], None)
    }
}

/// The authenticated user of a request.
#[derive(Debug, Clone)]
pub struct RequestUser(pub UserInfo);

/// The superuser a request is served as when security is off.
fn insecure_user() -> UserInfo {
    UserInfo { name: "system:admin".into(), groups: vec![MASTERS_GROUP.into(), AUTHENTICATED_GROUP.into()], ..Default::default() }
}

const RBAC_RESOURCES: [&str; 4] = ["roles", "clusterroles", "rolebindings", "clusterrolebindings"];

impl ApiServer {
    /// The RBAC policy compiled from the watch caches, rebuilt only when a Role,
    /// ClusterRole or binding changed since the last request.
    fn rbac(&self) -> Arc<Rbac> {
        let caches: Vec<_> = RBAC_RESOURCES
            .iter()
            .map(|r| registry::lookup("rbac.authorization.k8s.io", "v1", r).and_then(|res| self.cache(res).ok()))
            .collect();
        let stamp = [0, 1, 2, 3].map(|i| caches[i].as_ref().map(|c| c.changes()).unwrap_or(0));
        let mut slot = self.security.rbac.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((seen, rbac)) = slot.as_ref() {
            if *seen == stamp {
                return rbac.clone();
            }
        }
        let objects: Vec<Vec<Arc<Value>>> = caches.iter().map(|c| c.as_ref().map(|c| c.snapshot().0).unwrap_or_default()).collect();
        let rbac = Arc::new(Rbac::compile(&objects[0], &objects[1], &objects[2], &objects[3]));
        *slot = Some((stamp, rbac.clone()));
        rbac
    }

    /// Asks the configured authorizers, in order, about `attrs`.
    pub fn authorize(&self, attrs: &Attributes) -> Decision {
        if self.security.insecure || attrs.user.in_group(MASTERS_GROUP) {
            return Decision::Allow;
        }
        let mut reasons = Vec::new();
        for mode in &self.security.modes {
            let decision = match mode {
                Mode::Node => node::authorize(attrs, self),
                Mode::Rbac => self.rbac().authorize(attrs),
                Mode::AlwaysAllow => Decision::Allow,
                Mode::AlwaysDeny => Decision::Deny(String::new()),
            };
            match decision {
                Decision::NoOpinion(r) => {
                    if !r.is_empty() {
                        reasons.push(r);
                    }
                }
                other => return other,
            }
        }
        Decision::NoOpinion(reasons.join(", "))
    }

    /// The rules that apply to `user` in `namespace` (SelfSubjectRulesReview).
    pub fn rules_for(&self, user: &UserInfo, namespace: &str) -> Vec<Value> {
        self.rbac().rules_for(user, namespace)
    }

    fn cached_core(&self, plural: &str, namespace: &str, name: &str) -> Option<Arc<Value>> {
        let res = registry::lookup("", "v1", plural)?;
        self.cache(res).ok()?.get(&res.key(Some(namespace), name))
    }
}

impl Objects for ApiServer {
    fn core_object(&self, resource: &str, namespace: &str, name: &str) -> Option<Arc<Value>> {
        self.cached_core(resource, namespace, name)
    }
}

impl Graph for ApiServer {
    fn pods_on_node(&self, node: &str) -> Vec<Arc<Value>> {
        // A scan of the pod cache: the graph questions (a Secret, ConfigMap or claim a
        // kubelet reads) come once per pod start, and a lab holds hundreds of pods, so
        // an index kept in step with the cache would cost more than it saves here.
        let Some(pods) = registry::lookup("", "v1", "pods").and_then(|r| self.cache(r).ok()) else { return Vec::new() };
        let (pods, _) = pods.objects();
        pods.iter().filter(|p| p.selectable().at("/spec/nodeName") == Some(node)).map(|p| p.value()).collect()
    }

    fn pod_node(&self, namespace: &str, name: &str) -> Option<String> {
        let pod = self.cached_core("pods", namespace, name)?;
        Some(pod.pointer("/spec/nodeName").and_then(Value::as_str).unwrap_or_default().to_string())
    }

    fn claim(&self, namespace: &str, name: &str) -> Option<Arc<Value>> {
        self.cached_core("persistentvolumeclaims", namespace, name)
    }
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// The request filter (an axum middleware).
pub async fn guard(State(api): State<Arc<ApiServer>>, req: Request, next: Next) -> Response {
    match check(&api, req).await {
        Ok(req) => next.run(req).await,
        Err(e) => e.into_response(),
    }
}

async fn check(api: &Arc<ApiServer>, mut req: Request) -> Result<Request, ApiError> {
    if api.security.insecure {
        req.extensions_mut().insert(RequestUser(insecure_user()));
        return Ok(req);
    }
    let certificate_user = req.extensions().get::<PeerIdentity>().and_then(|p| p.0.clone());
    let authorization = req.headers().get(http::header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    let path = req.uri().path().trim_end_matches('/');
    let user = match api.security.authenticator.authenticate(certificate_user.as_ref(), authorization, api.as_ref(), now()) {
        Outcome::User(u) => u,
        Outcome::Anonymous if PUBLIC_PATHS.iter().any(|p| path == *p || path.starts_with(&format!("{p}/"))) => {
            UserInfo { name: ANONYMOUS_USER.into(), groups: vec![UNAUTHENTICATED_GROUP.into()], ..Default::default() }
        }
        Outcome::Anonymous => return Err(ApiError::unauthorized()),
        Outcome::Refused(why) => {
            debug!(path = %req.uri().path(), reason = %why, "authentication refused");
            return Err(ApiError::unauthorized());
        }
    };
    let user = impersonate(api, user, req.headers())?;
    let attrs = Attributes::parse(req.method(), req.uri()).with_user(user);
    match api.authorize(&attrs) {
        Decision::Allow => {}
        Decision::Deny(reason) | Decision::NoOpinion(reason) => return Err(forbidden(&attrs, &reason)),
    }
    if let Some(node) = node::node_name(&attrs).map(str::to_string) {
        if attrs.resource_request && attrs.verb == "create" && attrs.subresource.is_empty() && matches!(attrs.resource.as_str(), "nodes" | "leases" | "pods") {
            let (parts, body) = req.into_parts();
            let bytes = axum::body::to_bytes(body, crate::codec::MAX_BODY_BYTES).await.map_err(|e| ApiError::bad_request(format!("reading the request body: {e}")))?;
            let obj: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            node::check_create(&node, &attrs.api_group, &attrs.resource, &obj).map_err(|why| forbidden_with(&attrs, &why))?;
            req = Request::from_parts(parts, axum::body::Body::from(bytes));
        }
    }
    req.extensions_mut().insert(RequestUser(attrs.user));
    Ok(req)
}

fn forbidden(attrs: &Attributes, reason: &str) -> ApiError {
    let mut message = forbidden_message(attrs);
    if !reason.is_empty() {
        message = format!("{message}: {reason}");
    }
    forbidden_with(attrs, &message)
}

fn forbidden_with(attrs: &Attributes, message: &str) -> ApiError {
    // Kubernetes names the group-resource without the subresource (`pods "web" is
    // forbidden: ... cannot create resource "pods/exec" ...`).
    let resource = if attrs.resource_request { attrs.resource.as_str() } else { "" };
    ApiError::forbidden_request(&attrs.api_group, resource, &attrs.name, message)
}

/// Applies `Impersonate-*` headers: the requester must be allowed to `impersonate` the
/// user, each group, the UID and each extra value, as in Kubernetes.
fn impersonate(api: &ApiServer, requester: UserInfo, headers: &http::HeaderMap) -> Result<UserInfo, ApiError> {
    let values = |name: &str| headers.get_all(name).iter().filter_map(|v| v.to_str().ok()).map(str::to_string).collect::<Vec<_>>();
    let user = values("impersonate-user").into_iter().next();
    let groups = values("impersonate-group");
    let uid = values("impersonate-uid").into_iter().next();
    let mut extra = std::collections::BTreeMap::new();
    for (name, value) in headers {
        if let Some(key) = name.as_str().strip_prefix("impersonate-extra-") {
            if let Ok(v) = value.to_str() {
                extra.entry(key.to_string()).or_insert_with(Vec::new).push(v.to_string());
            }
        }
    }
    let Some(user) = user else {
        if !groups.is_empty() || uid.is_some() || !extra.is_empty() {
            return Err(ApiError::internal("requested impersonation of groups, a uid or extras without impersonating a user"));
        }
        return Ok(requester);
    };
    let check = |group: &str, resource: &str, name: &str, namespace: &str| -> Result<(), ApiError> {
        let (resource, subresource) = resource.split_once('/').unwrap_or((resource, ""));
        let attrs = Attributes {
            user: requester.clone(),
            verb: "impersonate".into(),
            resource_request: true,
            namespace: namespace.into(),
            api_group: group.into(),
            resource: resource.into(),
            subresource: subresource.into(),
            name: name.into(),
            ..Default::default()
        };
        match api.authorize(&attrs) {
            Decision::Allow => Ok(()),
            _ => Err(forbidden(&attrs, "")),
        }
    };
    let service_account = super::serviceaccount::split_user_name(&user);
    match service_account {
        Some((ns, name)) => check("", "serviceaccounts", name, ns)?,
        None => check("", "users", &user, "")?,
    }
    for g in &groups {
        check("", "groups", g, "")?;
    }
    if let Some(uid) = &uid {
        check("authentication.k8s.io", "uids", uid, "")?;
    }
    for (key, vals) in &extra {
        for v in vals {
            check("authentication.k8s.io", &format!("userextras/{key}"), v, "")?;
        }
    }
    let mut all_groups = groups;
    if let Some((ns, _)) = service_account {
        for g in [SERVICE_ACCOUNTS_GROUP.to_string(), format!("{SERVICE_ACCOUNTS_GROUP}:{ns}")] {
            if !all_groups.contains(&g) {
                all_groups.push(g);
            }
        }
    }
    if user != ANONYMOUS_USER && !all_groups.iter().any(|g| g == AUTHENTICATED_GROUP) {
        all_groups.push(AUTHENTICATED_GROUP.into());
    }
    Ok(UserInfo { name: user, uid: uid.unwrap_or_default(), groups: all_groups, extra })
}
