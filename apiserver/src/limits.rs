//! Abuse resistance, so that one client cannot starve the others (Kubernetes'
//! `--max-requests-inflight`, `--max-mutating-requests-inflight`, `--request-timeout` and
//! `MaxRequestBodyBytes`, plus a per-user token bucket in place of APF's fair queuing):
//!
//! - request bodies over the limit are refused with 413 before they are buffered whole,
//! - non-long-running requests get a deadline and are answered 504 when they miss it,
//! - at most N mutating and M read-only non-long-running requests are served at once,
//!   and at most L long-running ones (watches and the pod streams), L' per user,
//! - each user has a token bucket; system components and `system:masters` are exempt
//!   from the per-user limits (not from the global ones), as APF exempts system traffic.
//!
//! Refusals are Kubernetes `Status` objects (429 `TooManyRequests` with `Retry-After`,
//! 413 `RequestEntityTooLarge`, 504 `Timeout`), so clients back off and retry as they
//! do against the real apiserver.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use http::{HeaderValue, Method, StatusCode, Uri};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tracing::{debug, error, warn};

use crate::auth::filter::RequestUser;
use crate::auth::{Attributes, UserInfo, MASTERS_GROUP, NODE_USER_PREFIX};
use crate::errors::ApiError;
use crate::server::ApiServer;

/// Kubernetes' message for a request refused by the in-flight limits.
pub const TOO_MANY_REQUESTS: &str = "Too many requests, please try again later.";
/// Kubernetes' message (after `Timeout: `) for a request that missed its deadline.
pub const TIMEOUT_MESSAGE: &str = "request did not complete within the allotted timeout";

/// User names exempt from the per-user limits, besides `system:node:*` and members of
/// `system:masters`: the control plane's own components.
const EXEMPT_USERS: &[&str] = &["system:kube-controller-manager", "system:kube-scheduler", "system:kube-proxy", "system:kube-dns"];
/// Paths no limit applies to (probes answer a constant and must answer under load).
const HEALTH_PATHS: &[&str] = &["/healthz", "/livez", "/readyz"];
/// How often idle (full) token buckets are dropped.
const SWEEP_INTERVAL: Duration = Duration::from_secs(10);
/// A sweep also runs when this many buckets are held, whatever the interval.
const SWEEP_AT_BUCKETS: usize = 10_000;

/// The limits (the flags Kubernetes has for them are named on each field).
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    /// Non-long-running read-only requests served at once (`--max-requests-inflight`).
    pub max_requests_inflight: usize,
    /// Non-long-running mutating requests served at once
    /// (`--max-mutating-requests-inflight`).
    pub max_mutating_requests_inflight: usize,
    /// Long-running requests (watches, exec/attach/port-forward, followed logs, proxy)
    /// open at once, across all users.
    pub max_long_running: usize,
    /// Long-running requests one (non-exempt) user may have open at once.
    pub max_long_running_per_user: usize,
    /// The deadline of a non-long-running request (`--request-timeout`); a smaller
    /// `?timeout=` from the client wins.
    pub request_timeout: Duration,
    /// The largest request body accepted.
    pub max_body_bytes: usize,
    /// Requests per second one (non-exempt) user may make, on average.
    pub user_qps: f64,
    /// How many requests one user may make in a burst above `user_qps`.
    pub user_burst: u32,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_requests_inflight: 400,
            max_mutating_requests_inflight: 200,
            max_long_running: 1000,
            max_long_running_per_user: 100,
            request_timeout: Duration::from_secs(60),
            max_body_bytes: crate::codec::MAX_BODY_BYTES,
            user_qps: 100.0,
            user_burst: 200,
        }
    }
}

/// Which limits a request falls under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestClass {
    /// Health probes: no limit at all.
    Exempt,
    /// Watches and streams: no deadline, counted against the long-running limits.
    LongRunning,
    /// Writes (any method but GET, HEAD and OPTIONS).
    Mutating,
    ReadOnly,
}

/// Classifies a request as Kubernetes' `BasicLongRunningRequestCheck` and max-in-flight
/// filter do: `watch` and `proxy` verbs and the `exec`, `attach`, `portforward`,
/// `proxy` and followed `log` subresources are long-running; `get`, `list` (and the
/// non-resource GETs) are read-only; everything else mutates.
pub fn classify(method: &Method, uri: &Uri) -> RequestClass {
    let path = uri.path().trim_end_matches('/');
    if HEALTH_PATHS.iter().any(|p| path == *p || path.strip_prefix(p).is_some_and(|rest| rest.starts_with('/'))) {
        return RequestClass::Exempt;
    }
    let info = Attributes::parse(method, uri);
    if is_long_running(&info, uri) {
        return RequestClass::LongRunning;
    }
    if matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS) {
        RequestClass::ReadOnly
    } else {
        RequestClass::Mutating
    }
}

fn is_long_running(info: &Attributes, uri: &Uri) -> bool {
    if !info.resource_request {
        return false;
    }
    match (info.verb.as_str(), info.subresource.as_str()) {
        ("watch" | "proxy", _) => true,
        (_, "exec" | "attach" | "portforward" | "proxy") => true,
        (_, "log") => query_flag(uri, "follow"),
        _ => false,
    }
}

/// Whether a request is long-running (no deadline; audited when it starts).
pub fn long_running(method: &Method, uri: &Uri) -> bool {
    classify(method, uri) == RequestClass::LongRunning
}

fn query_param(uri: &Uri, key: &str) -> Option<String> {
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(uri.query()?).ok()?;
    pairs.into_iter().find(|(k, _)| k == key).map(|(_, v)| v)
}

fn query_flag(uri: &Uri, key: &str) -> bool {
    query_param(uri, key).is_some_and(|v| v == "true" || v == "1")
}

/// Whether `user` is exempt from the per-user limits: `system:masters`, nodes and the
/// control plane's components.
pub fn exempt_from_user_limits(user: &UserInfo) -> bool {
    user.in_group(MASTERS_GROUP) || user.name.starts_with(NODE_USER_PREFIX) || EXEMPT_USERS.contains(&user.name.as_str())
}

/// The deadline of a non-long-running request: the server's, or the client's
/// `?timeout=` (a Go duration) when it is positive and smaller, as Kubernetes'
/// `WithRequestDeadline` decides.
pub fn request_deadline(uri: &Uri, server: Duration) -> Result<Duration, ApiError> {
    let Some(value) = query_param(uri, "timeout").filter(|v| !v.is_empty()) else { return Ok(server) };
    let asked = parse_go_duration(&value).ok_or_else(|| ApiError::bad_request(format!("invalid timeout specified in the request URL - time: invalid duration {value:?}")))?;
    Ok(match asked {
        Some(d) if d < server => d,
        _ => server,
    })
}

/// Parses a Go `time.Duration` (`300ms`, `1.5h`, `2h45m`, `-1s`, `0`). `None` is a
/// malformed value; `Some(None)` a zero or negative one.
fn parse_go_duration(s: &str) -> Option<Option<Duration>> {
    let nanos = crate::codec::parse_go_duration(s)?;
    Some((nanos > 0).then(|| Duration::from_nanos(nanos as u64)))
}

/// A token bucket: `burst` tokens, refilled at `qps` per second; a request takes one.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TokenBucket {
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket.
    pub fn full(burst: u32, now: Instant) -> TokenBucket {
        TokenBucket { tokens: f64::from(burst), last: now }
    }

    fn refill(&mut self, now: Instant, qps: f64, burst: u32) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * qps).min(f64::from(burst));
        self.last = now;
    }

    /// Takes a token, or says how long until one is there.
    pub fn take(&mut self, now: Instant, qps: f64, burst: u32) -> Result<(), Duration> {
        self.refill(now, qps, burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return Ok(());
        }
        if qps <= 0.0 {
            return Err(Duration::from_secs(1));
        }
        Err(Duration::from_secs_f64((1.0 - self.tokens) / qps))
    }

    /// Whether the bucket has refilled to `burst`: forgetting it then changes nothing.
    pub fn is_full(&self, now: Instant, qps: f64, burst: u32) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens + elapsed * qps >= f64::from(burst)
    }
}

/// One token bucket per user name. Buckets that have refilled are forgotten (a full
/// bucket and no bucket are the same), so idle users cost nothing.
#[derive(Debug)]
struct UserBuckets {
    qps: f64,
    burst: u32,
    inner: Mutex<BucketMap>,
}

#[derive(Debug)]
struct BucketMap {
    buckets: HashMap<String, TokenBucket>,
    last_sweep: Instant,
    /// The size that forces a sweep: [`SWEEP_AT_BUCKETS`], or twice what the last sweep
    /// kept (so that many busy users do not make every request sweep).
    sweep_at: usize,
}

impl UserBuckets {
    fn new(qps: f64, burst: u32) -> UserBuckets {
        UserBuckets { qps, burst, inner: Mutex::new(BucketMap { buckets: HashMap::new(), last_sweep: Instant::now(), sweep_at: SWEEP_AT_BUCKETS }) }
    }

    fn take(&self, user: &str, now: Instant) -> Result<(), Duration> {
        let mut map = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if now.saturating_duration_since(map.last_sweep) >= SWEEP_INTERVAL || map.buckets.len() >= map.sweep_at {
            let (qps, burst) = (self.qps, self.burst);
            map.buckets.retain(|_, b| !b.is_full(now, qps, burst));
            map.last_sweep = now;
            map.sweep_at = SWEEP_AT_BUCKETS.max(map.buckets.len().saturating_mul(2));
        }
        match map.buckets.get_mut(user) {
            Some(bucket) => bucket.take(now, self.qps, self.burst),
            None => {
                let mut bucket = TokenBucket::full(self.burst, now);
                let taken = bucket.take(now, self.qps, self.burst);
                map.buckets.insert(user.to_string(), bucket);
                taken
            }
        }
    }

    fn len(&self) -> usize {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).buckets.len()
    }
}

/// Counts of long-running requests per user; an entry goes when its count reaches zero.
#[derive(Debug, Default)]
struct UserStreams(Mutex<HashMap<String, usize>>);

/// One user's long-running request, released when dropped.
struct StreamSeat {
    streams: Arc<UserStreams>,
    user: String,
}

impl UserStreams {
    fn acquire(self: &Arc<Self>, user: &str, cap: usize) -> Option<StreamSeat> {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let count = map.entry(user.to_string()).or_insert(0);
        if *count >= cap {
            if *count == 0 {
                map.remove(user);
            }
            return None;
        }
        *count += 1;
        Some(StreamSeat { streams: self.clone(), user: user.to_string() })
    }
}

impl Drop for StreamSeat {
    fn drop(&mut self) {
        let mut map = self.streams.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = map.get_mut(&self.user) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                map.remove(&self.user);
            }
        }
    }
}

/// How many requests the limits refused, by cause (for logs and tests).
#[derive(Debug, Default)]
pub struct Refusals {
    pub inflight: AtomicU64,
    pub long_running: AtomicU64,
    pub rate: AtomicU64,
    pub too_large: AtomicU64,
    pub timed_out: AtomicU64,
}

/// The state of the limits: the configured [`Limits`], the seats in flight and the
/// users' buckets.
#[derive(Debug)]
pub struct Limiter {
    limits: Limits,
    read_only: Arc<Semaphore>,
    mutating: Arc<Semaphore>,
    long_running: Arc<Semaphore>,
    user_streams: Arc<UserStreams>,
    buckets: UserBuckets,
    pub refusals: Refusals,
}

impl Default for Limiter {
    fn default() -> Limiter {
        Limiter::new(Limits::default())
    }
}

impl Limiter {
    pub fn new(limits: Limits) -> Limiter {
        let seats = |n: usize| Arc::new(Semaphore::new(n.min(Semaphore::MAX_PERMITS)));
        Limiter {
            read_only: seats(limits.max_requests_inflight),
            mutating: seats(limits.max_mutating_requests_inflight),
            long_running: seats(limits.max_long_running),
            user_streams: Arc::default(),
            buckets: UserBuckets::new(limits.user_qps, limits.user_burst),
            refusals: Refusals::default(),
            limits,
        }
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// How many users' token buckets are held (idle ones are forgotten).
    pub fn tracked_users(&self) -> usize {
        self.buckets.len()
    }

    /// Serves a request within the limits.
    async fn serve(&self, class: RequestClass, user: &UserInfo, req: Request, next: Next) -> Response {
        if class == RequestClass::Exempt {
            return next.run(req).await;
        }
        let exempt = exempt_from_user_limits(user);
        if !exempt {
            if let Err(wait) = self.buckets.take(&user.name, Instant::now()) {
                self.refusals.rate.fetch_add(1, Ordering::Relaxed);
                debug!(user = %user.name, wait_ms = wait.as_millis() as u64, "refused: over the user's request rate");
                return too_many_requests(wait);
            }
        }
        if class == RequestClass::LongRunning {
            return self.serve_long_running(user, exempt, req, next).await;
        }
        let seats = if class == RequestClass::Mutating { &self.mutating } else { &self.read_only };
        let Ok(seat) = seats.clone().try_acquire_owned() else {
            self.refusals.inflight.fetch_add(1, Ordering::Relaxed);
            debug!(user = %user.name, mutating = class == RequestClass::Mutating, "refused: too many requests in flight");
            return too_many_requests(Duration::from_secs(1));
        };
        let timeout = match request_deadline(req.uri(), self.limits.request_timeout) {
            Ok(t) => t,
            Err(e) => return e.into_response(),
        };
        let max = self.limits.max_body_bytes;
        if declared_length(req.headers()).is_some_and(|n| n > max as u64 && !drains(req.version(), n, max)) {
            self.refusals.too_large.fetch_add(1, Ordering::Relaxed);
            return too_large(max).into_response();
        }
        let deadline = Instant::now() + timeout;
        let (method, path) = (req.method().clone(), req.uri().path().to_string());
        let answer = with_deadline(deadline, async move {
            let req = match tokio::time::timeout_at(deadline, buffer_body(req, max)).await {
                Ok(Ok(req)) => req,
                Ok(Err(e)) => return e.into_response(),
                Err(_) => return timeout_error().into_response(),
            };
            let answer = next.run(req).await;
            drop(seat);
            answer
        })
        .await;
        match answer.status() {
            StatusCode::GATEWAY_TIMEOUT if answer.headers().contains_key(TIMED_OUT_HEADER) => {
                self.refusals.timed_out.fetch_add(1, Ordering::Relaxed);
                warn!(verb = %method, path = %path, timeout_ms = timeout.as_millis() as u64, "request did not complete within its deadline");
                let mut answer = answer;
                answer.headers_mut().remove(TIMED_OUT_HEADER);
                answer
            }
            StatusCode::PAYLOAD_TOO_LARGE => {
                self.refusals.too_large.fetch_add(1, Ordering::Relaxed);
                answer
            }
            _ => answer,
        }
    }

    async fn serve_long_running(&self, user: &UserInfo, exempt: bool, req: Request, next: Next) -> Response {
        let Ok(seat) = self.long_running.clone().try_acquire_owned() else {
            self.refusals.long_running.fetch_add(1, Ordering::Relaxed);
            debug!(user = %user.name, "refused: too many long-running requests");
            return too_many_requests(Duration::from_secs(1));
        };
        let user_seat = if exempt {
            None
        } else {
            match self.user_streams.acquire(&user.name, self.limits.max_long_running_per_user) {
                Some(s) => Some(s),
                None => {
                    self.refusals.long_running.fetch_add(1, Ordering::Relaxed);
                    debug!(user = %user.name, "refused: too many long-running requests for this user");
                    return too_many_requests(Duration::from_secs(1));
                }
            }
        };
        let answer = next.run(req).await;
        // The seats are held while the stream is open: until its body ends or the client
        // goes. (An upgraded connection — exec, attach, port-forward — outlives its 101
        // answer; it holds its seat only until the upgrade.)
        if answer.status().is_success() {
            hold_until_body_ends(answer, (seat, user_seat))
        } else {
            answer
        }
    }
}

/// A marker header on the 504 this module produces, so it is counted and logged once
/// (removed before the answer leaves).
const TIMED_OUT_HEADER: &str = "x-rkube-timed-out";

/// Runs `work` (the rest of the request) in its own task and answers 504 if it is not
/// done by `deadline`. As in Kubernetes, the work is not cancelled at the deadline, only
/// its answer discarded: a write half done is finished rather than torn. A panic in
/// the work is answered 500.
pub async fn with_deadline<F>(deadline: Instant, work: F) -> Response
where
    F: std::future::Future<Output = Response> + Send + 'static,
{
    let task = tokio::spawn(work);
    match tokio::time::timeout_at(deadline, task).await {
        Ok(Ok(answer)) => answer,
        Ok(Err(e)) => {
            error!(error = %e, "a request handler failed");
            ApiError::internal("the request handler failed").into_response()
        }
        Err(_) => {
            let mut answer = timeout_error().into_response();
            answer.headers_mut().insert(TIMED_OUT_HEADER, HeaderValue::from_static("1"));
            answer
        }
    }
}

fn timeout_error() -> ApiError {
    ApiError::timeout(TIMEOUT_MESSAGE, 0)
}

fn too_large(max: usize) -> ApiError {
    ApiError::too_large(format!("the request body is larger than the limit of {max} bytes"))
}

/// 429 with `Retry-After` (whole seconds, at least 1) and `details.retryAfterSeconds`.
fn too_many_requests(wait: Duration) -> Response {
    let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    let seconds = seconds.max(1);
    let mut answer = ApiError::too_many_requests(TOO_MANY_REQUESTS, seconds).into_response();
    if let Ok(v) = HeaderValue::from_str(&seconds.to_string()) {
        answer.headers_mut().insert(http::header::RETRY_AFTER, v);
    }
    answer
}

fn declared_length(headers: &http::HeaderMap) -> Option<u64> {
    headers.get(http::header::CONTENT_LENGTH)?.to_str().ok()?.trim().parse().ok()
}

/// How much of a refused body (as a multiple of the limit) is read and thrown away on
/// HTTP/1: a client still sending it then reads the 413 instead of a connection reset
/// (hyper closes a connection whose request body was left unread, and the reset loses
/// the answer in flight). Larger bodies are refused without reading them.
const DRAIN_FACTOR: u64 = 4;

/// Whether a refused body of `declared` bytes is to be drained first (see
/// [`DRAIN_FACTOR`]).
fn drains(version: http::Version, declared: u64, max: usize) -> bool {
    version <= http::Version::HTTP_11 && declared <= (max as u64).saturating_mul(DRAIN_FACTOR)
}

/// Reads the body of `req` into memory, refusing one over `max` bytes with 413 as
/// soon as it passes the limit (whatever its `Content-Length` said), and lifts axum's
/// own default body limit, which this one replaces.
pub async fn buffer_body(req: Request, max: usize) -> Result<Request, ApiError> {
    let (parts, body) = req.into_parts();
    let drain = drains(parts.version, 0, max);
    let bytes = read_limited(body, max, drain).await?;
    let mut req = Request::from_parts(parts, Body::from(bytes));
    DefaultBodyLimit::disable().apply(&mut req);
    Ok(req)
}

/// Reads at most `max` bytes of `body`; past that, throws the rest away (up to
/// [`DRAIN_FACTOR`] times the limit, if `drain`) and answers 413.
async fn read_limited(mut body: Body, max: usize, drain: bool) -> Result<Bytes, ApiError> {
    use http_body_util::BodyExt;
    let drain_max = if drain { (max as u64).saturating_mul(DRAIN_FACTOR) } else { 0 };
    let mut chunks: Vec<Bytes> = Vec::new();
    let mut seen: u64 = 0;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| ApiError::bad_request(format!("reading the request body: {e}")))?;
        let Ok(data) = frame.into_data() else { continue };
        seen = seen.saturating_add(data.len() as u64);
        if seen > max as u64 {
            chunks.clear();
            if seen > drain_max {
                break;
            }
            continue;
        }
        chunks.push(data);
    }
    if seen > max as u64 {
        return Err(too_large(max));
    }
    Ok(match chunks.len() {
        0 => Bytes::new(),
        1 => chunks.swap_remove(0),
        _ => chunks.concat().into(),
    })
}

/// Keeps `guard` alive until the body of `answer` has been sent or dropped (the client
/// went away).
pub(crate) fn hold_until_body_ends<T: Send + 'static>(answer: Response, guard: T) -> Response {
    let (parts, body) = answer.into_parts();
    let stream = body.into_data_stream().map(move |chunk| {
        let _held = &guard;
        chunk
    });
    Response::from_parts(parts, Body::from_stream(stream))
}

/// The limits, as an axum middleware. It runs after authentication, so that it knows
/// the user.
pub async fn limit(State(api): State<Arc<ApiServer>>, req: Request, next: Next) -> Response {
    let user = req.extensions().get::<RequestUser>().map(|u| u.0.clone()).unwrap_or_default();
    crate::audit::note_user(req.extensions(), &user);
    let class = classify(req.method(), req.uri());
    api.limits.serve(class, &user, req, next).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn class(method: Method, uri: &str) -> RequestClass {
        classify(&method, &uri.parse().expect("uri"))
    }

    #[test]
    fn watches_and_streams_are_long_running() {
        assert_eq!(class(Method::GET, "/api/v1/namespaces/default/pods?watch=true"), RequestClass::LongRunning);
        assert_eq!(class(Method::GET, "/api/v1/watch/namespaces/default/pods"), RequestClass::LongRunning);
        assert_eq!(class(Method::GET, "/apis/apps/v1/deployments?watch=1&resourceVersion=5"), RequestClass::LongRunning);
        assert_eq!(class(Method::POST, "/api/v1/namespaces/default/pods/web/exec?command=ls"), RequestClass::LongRunning);
        assert_eq!(class(Method::GET, "/api/v1/namespaces/default/pods/web/exec?command=ls"), RequestClass::LongRunning);
        assert_eq!(class(Method::POST, "/api/v1/namespaces/default/pods/web/attach"), RequestClass::LongRunning);
        assert_eq!(class(Method::POST, "/api/v1/namespaces/default/pods/web/portforward"), RequestClass::LongRunning);
        assert_eq!(class(Method::GET, "/api/v1/namespaces/default/pods/web/log?follow=true"), RequestClass::LongRunning);
        assert_eq!(class(Method::GET, "/api/v1/nodes/n1/proxy/stats/summary"), RequestClass::LongRunning);
        assert_eq!(class(Method::GET, "/api/v1/namespaces/default/services/web/proxy/"), RequestClass::LongRunning);
    }

    #[test]
    fn reads_and_writes_are_told_apart() {
        assert_eq!(class(Method::GET, "/api/v1/namespaces/default/pods/web/log"), RequestClass::ReadOnly);
        assert_eq!(class(Method::GET, "/api/v1/namespaces/default/pods/web/log?follow=false"), RequestClass::ReadOnly);
        assert_eq!(class(Method::GET, "/api/v1/namespaces/default/pods"), RequestClass::ReadOnly);
        assert_eq!(class(Method::GET, "/api/v1/namespaces/default/pods/web"), RequestClass::ReadOnly);
        assert_eq!(class(Method::GET, "/apis"), RequestClass::ReadOnly);
        assert_eq!(class(Method::GET, "/openapi/v3"), RequestClass::ReadOnly);
        assert_eq!(class(Method::HEAD, "/version"), RequestClass::ReadOnly);
        assert_eq!(class(Method::POST, "/api/v1/namespaces/default/configmaps"), RequestClass::Mutating);
        assert_eq!(class(Method::PUT, "/api/v1/namespaces/default/configmaps/a"), RequestClass::Mutating);
        assert_eq!(class(Method::PATCH, "/apis/apps/v1/namespaces/default/deployments/web/scale"), RequestClass::Mutating);
        assert_eq!(class(Method::DELETE, "/api/v1/namespaces/default/pods"), RequestClass::Mutating);
        assert_eq!(class(Method::POST, "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews"), RequestClass::Mutating);
        // A watch parameter on a write means nothing.
        assert_eq!(class(Method::POST, "/api/v1/namespaces/default/configmaps?watch=true"), RequestClass::Mutating);
    }

    #[test]
    fn probes_are_exempt() {
        for p in ["/healthz", "/livez", "/readyz", "/readyz/", "/livez/ping", "/healthz/etcd"] {
            assert_eq!(class(Method::GET, p), RequestClass::Exempt, "{p}");
        }
        assert_eq!(class(Method::GET, "/readyzz"), RequestClass::ReadOnly);
    }

    #[test]
    fn components_and_masters_are_exempt_from_user_limits() {
        let user = |name: &str, groups: &[&str]| UserInfo { name: name.into(), groups: groups.iter().map(|g| g.to_string()).collect(), ..Default::default() };
        assert!(exempt_from_user_limits(&user("system:admin", &["system:masters"])));
        assert!(exempt_from_user_limits(&user("system:node:n1", &["system:nodes"])));
        assert!(exempt_from_user_limits(&user("system:kube-scheduler", &[])));
        assert!(exempt_from_user_limits(&user("system:kube-controller-manager", &[])));
        assert!(exempt_from_user_limits(&user("system:kube-proxy", &[])));
        assert!(exempt_from_user_limits(&user("system:kube-dns", &[])));
        assert!(!exempt_from_user_limits(&user("jane", &["system:authenticated"])));
        assert!(!exempt_from_user_limits(&user("system:serviceaccount:default:app", &["system:serviceaccounts"])));
        assert!(!exempt_from_user_limits(&user("system:anonymous", &["system:unauthenticated"])));
        // The nodes group alone is not a node's name.
        assert!(!exempt_from_user_limits(&user("mallory", &["system:nodes"])));
    }

    #[test]
    fn a_bucket_allows_a_burst_then_the_rate() {
        let start = Instant::now();
        let mut b = TokenBucket::full(3, start);
        for _ in 0..3 {
            assert_eq!(b.take(start, 2.0, 3), Ok(()));
        }
        let wait = b.take(start, 2.0, 3).expect_err("empty");
        assert_eq!(wait, Duration::from_millis(500));
        // Half a second later one token has come back, and only one.
        let later = start + Duration::from_millis(500);
        assert_eq!(b.take(later, 2.0, 3), Ok(()));
        assert!(b.take(later, 2.0, 3).is_err());
        // Refills stop at the burst.
        let much_later = later + Duration::from_secs(3600);
        assert!(b.is_full(much_later, 2.0, 3));
        for _ in 0..3 {
            assert_eq!(b.take(much_later, 2.0, 3), Ok(()));
        }
        assert!(b.take(much_later, 2.0, 3).is_err());
        // A bucket with no rate never refills.
        let mut dry = TokenBucket::full(0, start);
        assert_eq!(dry.take(much_later, 0.0, 0), Err(Duration::from_secs(1)));
    }

    #[test]
    fn users_have_their_own_buckets_and_idle_ones_are_forgotten() {
        let buckets = UserBuckets::new(10.0, 5);
        let now = Instant::now();
        for _ in 0..5 {
            assert!(buckets.take("jane", now).is_ok());
        }
        assert!(buckets.take("jane", now).is_err());
        assert!(buckets.take("joe", now).is_ok(), "one user's burst does not limit another");
        assert_eq!(buckets.len(), 2);
        // Long after, a request from a third user sweeps the refilled buckets away.
        let later = now + SWEEP_INTERVAL + Duration::from_secs(1);
        assert!(buckets.take("ann", later).is_ok());
        assert_eq!(buckets.len(), 1);
        // Many users at once: the map is swept whenever it reaches the bound.
        for i in 0..(SWEEP_AT_BUCKETS * 3) {
            let t = later + Duration::from_secs(1) * (i as u32 / 1000);
            let _ = buckets.take(&format!("user-{i}"), t);
        }
        assert!(buckets.len() <= SWEEP_AT_BUCKETS, "{} buckets held", buckets.len());
    }

    #[test]
    fn user_streams_are_capped_and_released() {
        let streams = Arc::new(UserStreams::default());
        let a = streams.acquire("jane", 2).expect("first");
        let b = streams.acquire("jane", 2).expect("second");
        assert!(streams.acquire("jane", 2).is_none());
        assert!(streams.acquire("joe", 2).is_some());
        drop(a);
        let c = streams.acquire("jane", 2).expect("after a release");
        drop((b, c));
        assert!(streams.0.lock().expect("lock").is_empty(), "no entry is left for users with no stream");
        assert!(streams.acquire("zero", 0).is_none());
        assert!(streams.0.lock().expect("lock").is_empty());
    }

    #[test]
    fn go_durations_parse() {
        assert_eq!(parse_go_duration("30s"), Some(Some(Duration::from_secs(30))));
        assert_eq!(parse_go_duration("1m30s"), Some(Some(Duration::from_secs(90))));
        assert_eq!(parse_go_duration("1.5h"), Some(Some(Duration::from_secs(5400))));
        assert_eq!(parse_go_duration("250ms"), Some(Some(Duration::from_millis(250))));
        assert_eq!(parse_go_duration("10us"), Some(Some(Duration::from_micros(10))));
        assert_eq!(parse_go_duration("0"), Some(None));
        assert_eq!(parse_go_duration("-5s"), Some(None));
        assert_eq!(parse_go_duration("0s"), Some(None));
        for bad in ["", "5", "s", "1.2.3s", "5 s", "5x", "abc", "-", "1e3s", "99999999999999999999h"] {
            assert_eq!(parse_go_duration(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn the_client_may_shorten_the_deadline_only() {
        let server = Duration::from_secs(60);
        let deadline = |q: &str| request_deadline(&format!("/api/v1/pods{q}").parse().expect("uri"), server);
        assert_eq!(deadline(""), Ok(server));
        assert_eq!(deadline("?timeout=5s"), Ok(Duration::from_secs(5)));
        assert_eq!(deadline("?timeout=10m"), Ok(server));
        assert_eq!(deadline("?timeout=0s"), Ok(server));
        assert_eq!(deadline("?timeout="), Ok(server));
        let err = deadline("?timeout=soon").expect_err("400");
        assert_eq!(err.code, 400);
        assert_eq!(err.message, "invalid timeout specified in the request URL - time: invalid duration \"soon\"");
    }

    async fn status_of(answer: Response) -> (StatusCode, serde_json::Value) {
        let status = answer.status();
        let body = axum::body::to_bytes(answer.into_body(), 1 << 20).await.expect("body");
        (status, serde_json::from_slice(&body).expect("a Status"))
    }

    #[tokio::test]
    async fn work_past_its_deadline_is_answered_504_and_left_to_finish() {
        // Real time, kept short (the workspace's tokio has no `test-util` to pause it).
        let finished = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let done = finished.clone();
        let answer = with_deadline(Instant::now() + Duration::from_millis(50), async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            done.store(true, Ordering::SeqCst);
            StatusCode::OK.into_response()
        })
        .await;
        assert!(answer.headers().contains_key(TIMED_OUT_HEADER));
        let (status, body) = status_of(answer).await;
        assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(body["reason"], "Timeout");
        assert_eq!(body["code"], 504);
        assert_eq!(body["message"], "Timeout: request did not complete within the allotted timeout");
        assert!(!finished.load(Ordering::SeqCst));
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert!(finished.load(Ordering::SeqCst), "the handler ran to its end");
        let quick = with_deadline(Instant::now() + Duration::from_secs(5), async { StatusCode::CREATED.into_response() }).await;
        assert_eq!(quick.status(), StatusCode::CREATED);
    }

    #[tokio::test]
    async fn a_panicking_handler_is_answered_500() {
        let answer = with_deadline(Instant::now() + Duration::from_secs(5), async {
            if std::hint::black_box(true) {
                panic!("boom");
            }
            StatusCode::OK.into_response()
        })
        .await;
        let (status, body) = status_of(answer).await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(body["kind"], "Status");
    }

    #[tokio::test]
    async fn too_many_requests_says_when_to_retry() {
        let answer = too_many_requests(Duration::from_millis(1500));
        assert_eq!(answer.headers().get(http::header::RETRY_AFTER).and_then(|v| v.to_str().ok()), Some("2"));
        let (status, body) = status_of(answer).await;
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(body["reason"], "TooManyRequests");
        assert_eq!(body["message"], TOO_MANY_REQUESTS);
        assert_eq!(body["details"]["retryAfterSeconds"], 2);
        let soon = too_many_requests(Duration::from_millis(10));
        assert_eq!(soon.headers().get(http::header::RETRY_AFTER).and_then(|v| v.to_str().ok()), Some("1"));
    }

    #[tokio::test]
    async fn bodies_over_the_limit_are_refused_while_streaming() {
        // No Content-Length: the cap on the stream itself refuses it.
        let chunks: Vec<Result<Bytes, std::io::Error>> = (0..10).map(|_| Ok(Bytes::from(vec![b'x'; 1000]))).collect();
        let req = Request::builder().method(Method::POST).uri("/api/v1/namespaces/default/configmaps").body(Body::from_stream(futures::stream::iter(chunks))).expect("request");
        let err = buffer_body(req, 9_999).await.expect_err("over the limit");
        assert_eq!((err.code, err.reason), (413, "RequestEntityTooLarge"));
        let chunks: Vec<Result<Bytes, std::io::Error>> = (0..10).map(|_| Ok(Bytes::from(vec![b'x'; 1000]))).collect();
        let req = Request::builder().method(Method::POST).uri("/x").body(Body::from_stream(futures::stream::iter(chunks))).expect("request");
        let req = buffer_body(req, 10_000).await.expect("at the limit");
        let body = axum::body::to_bytes(req.into_body(), usize::MAX).await.expect("body");
        assert_eq!(body.len(), 10_000);
    }

    #[tokio::test]
    async fn refused_http1_bodies_are_drained_a_little_and_no_more() {
        use std::sync::atomic::AtomicUsize;
        let read = |version: http::Version| async move {
            let pulled = Arc::new(AtomicUsize::new(0));
            let counter = pulled.clone();
            let chunks = futures::stream::iter(0..100).map(move |_| {
                counter.fetch_add(1, Ordering::SeqCst);
                Ok::<_, std::io::Error>(Bytes::from(vec![b'x'; 1000]))
            });
            let req = Request::builder().method(Method::POST).version(version).uri("/x").body(Body::from_stream(chunks)).expect("request");
            let err = buffer_body(req, 1000).await.expect_err("over the limit");
            assert_eq!(err.code, 413);
            pulled.load(Ordering::SeqCst)
        };
        // HTTP/2 stops at the limit; HTTP/1.1 reads on to 4 times the limit, then stops.
        assert_eq!(read(http::Version::HTTP_2).await, 2);
        assert_eq!(read(http::Version::HTTP_11).await, 5);
        assert!(drains(http::Version::HTTP_11, 4000, 1000));
        assert!(!drains(http::Version::HTTP_11, 4001, 1000));
        assert!(!drains(http::Version::HTTP_2, 10, 1000));
    }

    #[tokio::test]
    async fn held_guards_go_with_the_body() {
        let dropped = Arc::new(std::sync::atomic::AtomicBool::new(false));
        struct Flag(Arc<std::sync::atomic::AtomicBool>);
        impl Drop for Flag {
            fn drop(&mut self) {
                self.0.store(true, Ordering::SeqCst);
            }
        }
        let answer = hold_until_body_ends((StatusCode::OK, "stream").into_response(), Flag(dropped.clone()));
        assert!(!dropped.load(Ordering::SeqCst));
        let body = axum::body::to_bytes(answer.into_body(), 1024).await.expect("body");
        assert_eq!(&body[..], b"stream");
        assert!(dropped.load(Ordering::SeqCst));
    }
}
