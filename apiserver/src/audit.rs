//! The audit log (`--audit-log-path`): who did what to which object, one JSON line per
//! request in Kubernetes' `audit.k8s.io/v1` `Event` format at the `Metadata` level, so
//! the tools that read a Kubernetes audit log read this one.
//!
//! Each request is logged when its answer is complete (`ResponseComplete`); a
//! long-running one (a watch, a stream) also when it starts (`ResponseStarted`), as
//! Kubernetes does. Lines go through a bounded channel to a writer thread, so a slow
//! disk never holds a request up: when the channel is full the event is dropped and
//! counted, with a warning. The file is opened append-only with mode 0600 (`-` writes
//! to standard output, as in Kubernetes).
//!
//! The middleware runs before authentication so that refused requests (401, 403, 429)
//! are logged too; it learns the user from the limits filter, which runs after
//! authentication ([`note_user`]), and re-authenticates only the requests where it
//! needs the requester itself (impersonation, refusals).

use std::collections::BTreeMap;
use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, OnceLock};

use axum::body::{Body, HttpBody};
use axum::extract::{ConnectInfo, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use chrono::{DateTime, Utc};
use http::{HeaderMap, HeaderValue, StatusCode};
use serde::{Deserialize, Serialize};
use tracing::warn;

use crate::auth::authn::Outcome;
use crate::auth::{Attributes, UserInfo, ANONYMOUS_USER, UNAUTHENTICATED_GROUP};
use crate::server::ApiServer;
use crate::tls::PeerIdentity;

/// How many events may wait for the writer before new ones are dropped.
pub const DEFAULT_QUEUE: usize = 10_000;
/// The longest `userAgent` logged (Kubernetes' `maxUserAgentLength`).
const MAX_USER_AGENT: usize = 1024;
/// The most `X-Forwarded-For` entries logged.
const MAX_FORWARDED: usize = 16;
/// The largest answer read for the name of a created object or the message of an error.
const MAX_PEEK_BYTES: u64 = 4 * 1024 * 1024;
/// The request header a client may name its audit ID with, and the answer's header.
const AUDIT_ID_HEADER: &str = "audit-id";

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("opening the audit log {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("starting the audit log writer")]
    StartWriter(#[source] std::io::Error),
}

/// The audit log: a handle on the writer thread (which ends when the last handle goes,
/// after writing what is queued).
#[derive(Clone)]
pub struct AuditLog {
    inner: Arc<Inner>,
}

struct Inner {
    queue: SyncSender<Vec<u8>>,
    dropped: AtomicU64,
    path: PathBuf,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog").field("path", &self.inner.path).field("dropped", &self.dropped()).finish()
    }
}

impl AuditLog {
    /// Opens (creating it 0600 if need be) the log at `path` for appending, and starts
    /// its writer; `-` is standard output.
    pub fn open(path: &Path) -> Result<AuditLog, AuditError> {
        AuditLog::with_queue(path, DEFAULT_QUEUE)
    }

    /// [`AuditLog::open`] with room for `queue` waiting events.
    pub fn with_queue(path: &Path, queue: usize) -> Result<AuditLog, AuditError> {
        let out: Box<dyn Write + Send> = if path == Path::new("-") {
            Box::new(std::io::stdout())
        } else {
            use std::os::unix::fs::OpenOptionsExt;
            let open_err = |source| AuditError::Open { path: path.to_path_buf(), source };
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir).map_err(open_err)?;
            }
            Box::new(std::fs::OpenOptions::new().create(true).append(true).mode(0o600).open(path).map_err(open_err)?)
        };
        let (tx, rx) = sync_channel(queue.max(1));
        let shown = path.display().to_string();
        std::thread::Builder::new().name("audit-log".into()).spawn(move || write_lines(rx, out, &shown)).map_err(AuditError::StartWriter)?;
        Ok(AuditLog { inner: Arc::new(Inner { queue: tx, dropped: AtomicU64::new(0), path: path.to_path_buf() }) })
    }

    /// How many events were dropped because the writer was behind (or had stopped).
    pub fn dropped(&self) -> u64 {
        self.inner.dropped.load(Ordering::Relaxed)
    }

    /// Queues `event`, dropping it if the writer is behind.
    pub fn record(&self, event: &Event) {
        let mut line = match serde_json::to_vec(event) {
            Ok(l) => l,
            Err(e) => return warn!(error = %e, "encoding an audit event failed"),
        };
        line.push(b'\n');
        let stopped = match self.inner.queue.try_send(line) {
            Ok(()) => return,
            Err(TrySendError::Full(_)) => false,
            Err(TrySendError::Disconnected(_)) => true,
        };
        let dropped = self.inner.dropped.fetch_add(1, Ordering::Relaxed) + 1;
        // A warning at the 1st, 2nd, 4th, 8th... drop: visible, never a flood.
        if dropped.is_power_of_two() {
            warn!(path = %self.inner.path.display(), dropped, writer_stopped = stopped, "audit events dropped: the audit log writer is behind");
        }
    }
}

/// The writer thread: a batch per wake-up, flushed when the queue is empty.
fn write_lines(rx: Receiver<Vec<u8>>, out: Box<dyn Write + Send>, path: &str) {
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, out);
    let mut failures: u64 = 0;
    while let Ok(line) = rx.recv() {
        let mut result = out.write_all(&line);
        while let Ok(line) = rx.try_recv() {
            result = result.and(out.write_all(&line));
        }
        if let Err(e) = result.and_then(|()| out.flush()) {
            failures += 1;
            if failures.is_power_of_two() {
                warn!(path, error = %e, failures, "writing the audit log failed");
            }
        }
    }
    let _ = out.flush();
}

/// When in a request's life an event is logged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Stage {
    ResponseStarted,
    ResponseComplete,
}

/// One audit event (`audit.k8s.io/v1` `Event`, `Metadata` level).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Event {
    pub kind: &'static str,
    pub api_version: &'static str,
    pub level: &'static str,
    #[serde(rename = "auditID")]
    pub audit_id: String,
    pub stage: Stage,
    #[serde(rename = "requestURI")]
    pub request_uri: String,
    pub verb: String,
    pub user: User,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub impersonated_user: Option<User>,
    #[serde(rename = "sourceIPs", skip_serializing_if = "Vec::is_empty")]
    pub source_ips: Vec<String>,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub user_agent: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub object_ref: Option<ObjectRef>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response_status: Option<ResponseStatus>,
    pub request_received_timestamp: String,
    pub stage_timestamp: String,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// `authentication.k8s.io/v1` `UserInfo`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct User {
    #[serde(skip_serializing_if = "String::is_empty")]
    pub username: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub uid: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub extra: BTreeMap<String, Vec<String>>,
}

impl From<&UserInfo> for User {
    fn from(u: &UserInfo) -> User {
        User { username: u.name.clone(), uid: u.uid.clone(), groups: u.groups.clone(), extra: u.extra.clone() }
    }
}

/// The object a request is about.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectRef {
    #[serde(skip_serializing_if = "String::is_empty")]
    pub resource: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub api_group: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub api_version: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub subresource: String,
}

/// The bounded part of the answer's `Status` that the `Metadata` level keeps.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ResponseStatus {
    pub metadata: serde_json::Map<String, serde_json::Value>,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub status: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub message: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub reason: String,
    pub code: u16,
}

/// The user the authentication filter settled on, handed back to this middleware by
/// the filters that run after it.
#[derive(Debug, Clone, Default)]
struct AuthenticatedUser(Arc<OnceLock<UserInfo>>);

/// Tells the audit middleware (if it is watching this request) who the authenticated
/// — possibly impersonated — user is. Called by the first filter after
/// authentication.
pub fn note_user(extensions: &http::Extensions, user: &UserInfo) {
    if let Some(slot) = extensions.get::<AuthenticatedUser>() {
        let _ = slot.0.set(user.clone());
    }
}

/// Kubernetes' `MicroTime` form (`2006-01-02T15:04:05.000000Z`).
fn micro_time(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
}

impl Event {
    /// The event of a request as it arrives (no user or answer yet).
    pub fn received(audit_id: String, method: &http::Method, uri: &http::Uri, headers: &HeaderMap, peer: Option<SocketAddr>, at: DateTime<Utc>) -> Event {
        let info = Attributes::parse(method, uri);
        let object_ref = info.resource_request.then(|| ObjectRef {
            resource: info.resource.clone(),
            namespace: info.namespace.clone(),
            name: info.name.clone(),
            api_group: info.api_group.clone(),
            api_version: info.api_version.clone(),
            subresource: info.subresource.clone(),
        });
        let mut user_agent = headers.get(http::header::USER_AGENT).map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned()).unwrap_or_default();
        if user_agent.len() > MAX_USER_AGENT {
            let mut cut = MAX_USER_AGENT;
            while !user_agent.is_char_boundary(cut) {
                cut -= 1;
            }
            user_agent.truncate(cut);
            user_agent.push_str("...TRUNCATED");
        }
        let stamp = micro_time(at);
        Event {
            kind: "Event",
            api_version: "audit.k8s.io/v1",
            level: "Metadata",
            audit_id,
            stage: Stage::ResponseComplete,
            request_uri: uri.path_and_query().map(|p| p.as_str().to_string()).unwrap_or_else(|| uri.path().to_string()),
            verb: info.verb,
            user: User::default(),
            impersonated_user: None,
            source_ips: source_ips(headers, peer),
            user_agent,
            object_ref,
            response_status: None,
            request_received_timestamp: stamp.clone(),
            stage_timestamp: stamp,
            annotations: BTreeMap::new(),
        }
    }
}

/// The client's addresses as Kubernetes lists them: `X-Forwarded-For`, `X-Real-Ip`,
/// then the connection's peer.
fn source_ips(headers: &HeaderMap, peer: Option<SocketAddr>) -> Vec<String> {
    let mut ips: Vec<String> = Vec::new();
    let mut add = |ip: IpAddr| {
        let ip = ip.to_string();
        if !ips.contains(&ip) {
            ips.push(ip);
        }
    };
    for value in headers.get_all("x-forwarded-for") {
        for part in value.to_str().unwrap_or("").split(',').take(MAX_FORWARDED) {
            if let Ok(ip) = part.trim().parse() {
                add(ip);
            }
        }
    }
    if let Some(ip) = headers.get("x-real-ip").and_then(|v| v.to_str().ok()).and_then(|v| v.trim().parse().ok()) {
        add(ip);
    }
    if let Some(peer) = peer {
        add(peer.ip());
    }
    ips
}

/// The audit ID: the client's `Audit-ID` if it sent a sensible one, else a new UUID.
fn audit_id(headers: &HeaderMap) -> String {
    headers
        .get(AUDIT_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map(str::to_string)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string())
}

/// What is needed to re-authenticate a request's requester.
struct Credentials {
    certificate: Option<UserInfo>,
    authorization: Option<HeaderValue>,
    impersonating: bool,
}

/// Who made the request and whom they impersonated.
fn users(api: &ApiServer, effective: Option<&UserInfo>, credentials: &Credentials) -> (Option<UserInfo>, Option<UserInfo>) {
    if effective.is_some() && (!credentials.impersonating || api.security.insecure) {
        return (effective.cloned(), None);
    }
    let authorization = credentials.authorization.as_ref().and_then(|v| v.to_str().ok());
    let requester = match api.security.authenticator.authenticate(credentials.certificate.as_ref(), authorization, api, Utc::now().timestamp()) {
        Outcome::User(u) => Some(u),
        Outcome::Anonymous => Some(UserInfo { name: ANONYMOUS_USER.into(), groups: vec![UNAUTHENTICATED_GROUP.into()], ..Default::default() }),
        Outcome::Refused(_) => None,
    };
    let impersonated = if credentials.impersonating { effective.cloned() } else { None };
    (requester, impersonated)
}

/// The parts of an answer's body the event wants.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct BodyPeek {
    kind: String,
    metadata: MetadataPeek,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct MetadataPeek {
    name: String,
    namespace: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct StatusPeek {
    status: String,
    message: String,
    reason: String,
}

fn is_json(headers: &HeaderMap) -> bool {
    headers.get(http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).is_some_and(|v| v.starts_with("application/json"))
}

/// Fills the response status (and the name of a created object) from `answer`,
/// reading its body only when it is small and already in memory.
async fn inspect(event: &mut Event, answer: Response) -> Response {
    let code = answer.status().as_u16();
    let mut status = ResponseStatus { code, ..Default::default() };
    let unnamed_create = event.verb == "create" && code == 201 && event.object_ref.as_ref().is_some_and(|o| o.name.is_empty());
    let in_memory = answer.body().size_hint().exact().is_some_and(|n| n <= MAX_PEEK_BYTES);
    if (unnamed_create || code >= 400) && in_memory && is_json(answer.headers()) {
        let (parts, body) = answer.into_parts();
        let bytes = axum::body::to_bytes(body, MAX_PEEK_BYTES as usize).await.unwrap_or_default();
        if code >= 400 {
            if let Ok(s) = serde_json::from_slice::<StatusPeek>(&bytes) {
                (status.status, status.message, status.reason) = (s.status, s.message, s.reason);
            }
        } else if let (Ok(peek), Some(object_ref)) = (serde_json::from_slice::<BodyPeek>(&bytes), event.object_ref.as_mut()) {
            if peek.kind != "Status" {
                object_ref.name = peek.metadata.name;
                if object_ref.namespace.is_empty() {
                    object_ref.namespace = peek.metadata.namespace;
                }
            }
        }
        event.response_status = Some(status);
        return Response::from_parts(parts, Body::from(bytes));
    }
    event.response_status = Some(status);
    answer
}

/// Logs the end of a long-running request when its answer's body is dropped.
struct CompleteOnDrop {
    log: AuditLog,
    event: Event,
}

impl Drop for CompleteOnDrop {
    fn drop(&mut self) {
        self.event.stage = Stage::ResponseComplete;
        self.event.stage_timestamp = micro_time(Utc::now());
        self.log.record(&self.event);
    }
}

/// The audit log, as an axum middleware (a no-op without an audit log). It runs
/// before authentication: see the module documentation.
pub async fn audit(State(api): State<Arc<ApiServer>>, mut req: Request, next: Next) -> Response {
    let Some(log) = api.audit.get().cloned() else { return next.run(req).await };
    let peer = req.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0);
    let id = audit_id(req.headers());
    let mut event = Event::received(id.clone(), req.method(), req.uri(), req.headers(), peer, Utc::now());
    let long_running = crate::limits::long_running(req.method(), req.uri());
    let credentials = Credentials {
        certificate: req.extensions().get::<PeerIdentity>().and_then(|p| p.0.clone()),
        authorization: req.headers().get(http::header::AUTHORIZATION).cloned(),
        impersonating: req.headers().contains_key("impersonate-user"),
    };
    let slot = AuthenticatedUser::default();
    req.extensions_mut().insert(slot.clone());

    let mut answer = next.run(req).await;

    if let Ok(v) = HeaderValue::from_str(&id) {
        answer.headers_mut().insert(AUDIT_ID_HEADER, v);
    }
    let effective = slot.0.get();
    let (requester, impersonated) = users(&api, effective, &credentials);
    event.user = requester.as_ref().map(User::from).unwrap_or_default();
    event.impersonated_user = impersonated.as_ref().map(User::from);
    if effective.is_some() {
        event.annotations.insert("authorization.k8s.io/decision".into(), "allow".into());
    } else if answer.status() == StatusCode::FORBIDDEN {
        event.annotations.insert("authorization.k8s.io/decision".into(), "forbid".into());
    }
    let started = answer.status().is_success() || answer.status() == StatusCode::SWITCHING_PROTOCOLS;
    if long_running && started {
        event.stage = Stage::ResponseStarted;
        event.stage_timestamp = micro_time(Utc::now());
        event.response_status = Some(ResponseStatus { code: answer.status().as_u16(), ..Default::default() });
        log.record(&event);
        let done = CompleteOnDrop { log, event };
        if answer.status() == StatusCode::SWITCHING_PROTOCOLS {
            // The upgraded connection is no longer an HTTP answer this filter sees.
            drop(done);
            return answer;
        }
        return crate::limits::hold_until_body_ends(answer, done);
    }
    let answer = inspect(&mut event, answer).await;
    event.stage_timestamp = micro_time(Utc::now());
    log.record(&event);
    answer
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(http::header::HeaderName::from_bytes(k.as_bytes()).expect("name"), v.parse().expect("value"));
        }
        h
    }

    fn at() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2024-05-01T10:00:00.123456789Z").expect("time").with_timezone(&Utc)
    }

    #[test]
    fn an_event_reads_like_kubernetes() {
        let uri: http::Uri = "/api/v1/namespaces/default/configmaps?fieldManager=kubectl-create".parse().expect("uri");
        let h = headers(&[("user-agent", "kubectl/v1.31.0 (linux/amd64)")]);
        let mut e = Event::received("6a2c1b9e-0000-4000-8000-000000000001".into(), &http::Method::POST, &uri, &h, Some("10.0.0.7:51234".parse().expect("addr")), at());
        e.user = User::from(&UserInfo { name: "jane".into(), groups: vec!["dev".into(), "system:authenticated".into()], ..Default::default() });
        e.object_ref.as_mut().expect("a resource").name = "settings".into();
        e.response_status = Some(ResponseStatus { code: 201, ..Default::default() });
        e.annotations.insert("authorization.k8s.io/decision".into(), "allow".into());
        let json = serde_json::to_value(&e).expect("json");
        assert_eq!(
            json,
            serde_json::json!({
                "kind": "Event",
                "apiVersion": "audit.k8s.io/v1",
                "level": "Metadata",
                "auditID": "6a2c1b9e-0000-4000-8000-000000000001",
                "stage": "ResponseComplete",
                "requestURI": "/api/v1/namespaces/default/configmaps?fieldManager=kubectl-create",
                "verb": "create",
                "user": {"username": "jane", "groups": ["dev", "system:authenticated"]},
                "sourceIPs": ["10.0.0.7"],
                "userAgent": "kubectl/v1.31.0 (linux/amd64)",
                "objectRef": {"resource": "configmaps", "namespace": "default", "name": "settings", "apiVersion": "v1"},
                "responseStatus": {"metadata": {}, "code": 201},
                "requestReceivedTimestamp": "2024-05-01T10:00:00.123456Z",
                "stageTimestamp": "2024-05-01T10:00:00.123456Z",
                "annotations": {"authorization.k8s.io/decision": "allow"},
            })
        );
    }

    #[test]
    fn subresources_groups_and_non_resource_urls() {
        let e = Event::received("x".into(), &http::Method::PATCH, &"/apis/apps/v1/namespaces/ns1/deployments/web/scale".parse().expect("uri"), &HeaderMap::new(), None, at());
        let json = serde_json::to_value(&e).expect("json");
        assert_eq!(json["verb"], "patch");
        assert_eq!(
            json["objectRef"],
            serde_json::json!({"resource": "deployments", "namespace": "ns1", "name": "web", "apiGroup": "apps", "apiVersion": "v1", "subresource": "scale"})
        );
        assert!(json.get("sourceIPs").is_none());
        let e = Event::received("x".into(), &http::Method::GET, &"/healthz".parse().expect("uri"), &HeaderMap::new(), None, at());
        let json = serde_json::to_value(&e).expect("json");
        assert_eq!(json["verb"], "get");
        assert!(json.get("objectRef").is_none());
        let e = Event::received("x".into(), &http::Method::GET, &"/api/v1/pods?watch=true".parse().expect("uri"), &HeaderMap::new(), None, at());
        assert_eq!(e.verb, "watch");
    }

    #[test]
    fn source_ips_list_forwarders_then_the_peer() {
        let h = headers(&[("x-forwarded-for", "203.0.113.9, 10.1.1.1"), ("x-forwarded-for", "garbage"), ("x-real-ip", "10.1.1.1")]);
        assert_eq!(source_ips(&h, Some("10.0.0.7:4000".parse().expect("addr"))), vec!["203.0.113.9", "10.1.1.1", "10.0.0.7"]);
        assert_eq!(source_ips(&HeaderMap::new(), Some("[::1]:4000".parse().expect("addr"))), vec!["::1"]);
    }

    #[test]
    fn audit_ids_come_from_the_client_when_sensible() {
        assert_eq!(audit_id(&headers(&[("audit-id", "abc-123")])), "abc-123");
        let long = "a".repeat(200);
        for bad in [long.as_str(), "", "has space"] {
            let id = audit_id(&headers(&[("audit-id", bad)]));
            assert!(uuid::Uuid::parse_str(&id).is_ok(), "{bad:?} gave {id:?}");
        }
    }

    #[test]
    fn long_user_agents_are_truncated() {
        let agent = "é".repeat(MAX_USER_AGENT);
        let e = Event::received("x".into(), &http::Method::GET, &"/api".parse().expect("uri"), &headers(&[("user-agent", &agent)]), None, at());
        assert!(e.user_agent.ends_with("...TRUNCATED"));
        assert!(e.user_agent.len() <= MAX_USER_AGENT + "...TRUNCATED".len());
    }

    #[tokio::test]
    async fn created_names_and_error_statuses_are_read_from_the_answer() {
        use axum::response::IntoResponse;
        let uri: http::Uri = "/api/v1/namespaces/default/configmaps".parse().expect("uri");
        let mut e = Event::received("x".into(), &http::Method::POST, &uri, &HeaderMap::new(), None, at());
        let created =
            (StatusCode::CREATED, [(http::header::CONTENT_TYPE, "application/json")], r#"{"kind":"ConfigMap","metadata":{"name":"made","namespace":"default"}}"#).into_response();
        let answer = inspect(&mut e, created).await;
        assert_eq!(e.object_ref.as_ref().map(|o| o.name.as_str()), Some("made"));
        assert_eq!(e.response_status.as_ref().map(|s| s.code), Some(201));
        let body = axum::body::to_bytes(answer.into_body(), 1 << 20).await.expect("body");
        assert!(body.starts_with(b"{\"kind\":\"ConfigMap\""), "the answer is passed on whole");

        let mut e = Event::received("x".into(), &http::Method::GET, &"/api/v1/namespaces/default/configmaps/gone".parse().expect("uri"), &HeaderMap::new(), None, at());
        let missing = crate::errors::ApiError::path_not_found("/x");
        let _ = inspect(&mut e, missing.into_response()).await;
        let status = e.response_status.expect("status");
        assert_eq!((status.code, status.status.as_str(), status.reason.as_str()), (404, "Failure", "NotFound"));
        assert_eq!(status.message, "the server could not find the requested resource (/x)");
    }

    #[test]
    fn the_log_is_append_only_0600_and_written_in_the_background() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("logs/audit.log");
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(&path, "earlier line\n").expect("seed");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        let log = AuditLog::open(&path).expect("open");
        let uri: http::Uri = "/api/v1/namespaces".parse().expect("uri");
        for i in 0..3 {
            log.record(&Event::received(format!("id-{i}"), &http::Method::GET, &uri, &HeaderMap::new(), None, at()));
        }
        drop(log);
        // The writer ends once the last handle is gone; wait for its lines.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let text = loop {
            let text = std::fs::read_to_string(&path).expect("read");
            if text.lines().count() == 4 || std::time::Instant::now() > deadline {
                break text;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        };
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4, "{text}");
        assert_eq!(lines[0], "earlier line");
        for (i, line) in lines[1..].iter().enumerate() {
            let v: serde_json::Value = serde_json::from_str(line).expect("a JSON line");
            assert_eq!(v["auditID"], format!("id-{i}"));
        }

        let fresh = dir.path().join("new/audit.log");
        let _log = AuditLog::open(&fresh).expect("open a new file");
        let mode = std::fs::metadata(&fresh).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[test]
    fn a_full_queue_drops_and_counts() {
        // A queue of one behind a writer blocked on a pipe nobody reads.
        let (reader, writer) = std::io::pipe().expect("pipe");
        let (tx, rx) = sync_channel(1);
        std::thread::spawn(move || write_lines(rx, Box::new(writer), "pipe"));
        let log = AuditLog { inner: Arc::new(Inner { queue: tx, dropped: AtomicU64::new(0), path: "pipe".into() }) };
        let uri: http::Uri = "/api".parse().expect("uri");
        let big = "x".repeat(1 << 20);
        let mut event = Event::received("x".into(), &http::Method::GET, &uri, &HeaderMap::new(), None, at());
        event.user_agent = big;
        for _ in 0..20 {
            log.record(&event);
        }
        assert!(log.dropped() > 0, "a stalled writer drops events instead of blocking");
        drop(reader);
    }
}
