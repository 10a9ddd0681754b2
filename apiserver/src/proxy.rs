//! The pod subresources the kubelet serves — `log`, `exec`, `attach`, `portforward` —
//! and `nodes/{name}/proxy`: the apiserver finds the pod's node and its kubelet, and
//! forwards the request there as the real apiserver does.
//!
//! Logs are a plain GET whose body is streamed back (for `follow`). Exec, attach and
//! port-forward are connection upgrades (WebSocket or SPDY/3.1): the request goes to the
//! kubelet with its upgrade headers, and once the kubelet answers `101 Switching
//! Protocols` the two upgraded connections are spliced, so the client and the kubelet
//! speak the streaming protocol end to end. A kubelet that refuses an upgrade has its
//! answer passed through, as kubectl expects.
//!
//! The kubelet's address is its Node's `status.addresses` (InternalIP, then Hostname,
//! then ExternalIP) and `status.daemonEndpoints.kubeletEndpoint.Port`. It is reached
//! over plain HTTP for now.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http::header::{HeaderName, CONTENT_TYPE, HOST};
use http::{Method, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tracing::{debug, info_span, Instrument};

use crate::errors::ApiError;
use crate::registry;
use crate::server::ApiServer;
use crate::watchcache;

/// The port a kubelet listens on when its Node does not say.
pub const DEFAULT_KUBELET_PORT: u16 = 10250;
/// The annotation naming a pod's default container.
const DEFAULT_CONTAINER_ANNOTATION: &str = "kubectl.kubernetes.io/default-container";
/// How long dialing a kubelet may take.
const DIAL_TIMEOUT: Duration = Duration::from_secs(10);
/// How much of a kubelet's error body is read into a `Status`.
const MAX_ERROR_BODY: usize = 64 * 1024;

/// A request this module serves.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Route {
    Pod {
        namespace: String,
        name: String,
        sub: PodSub,
    },
    /// `nodes/{name}/proxy[/{path}]`: `path` is what follows `proxy`, with its leading `/`.
    NodeProxy {
        name: String,
        path: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PodSub {
    Log,
    Exec,
    Attach,
    PortForward,
}

impl Route {
    fn parse(path: &str) -> Option<Route> {
        let rest = path.strip_prefix("/api/v1/")?;
        let segments: Vec<&str> = rest.split('/').collect();
        match segments.as_slice() {
            ["namespaces", ns, "pods", name, sub] if !ns.is_empty() && !name.is_empty() => {
                let sub = match *sub {
                    "log" => PodSub::Log,
                    "exec" => PodSub::Exec,
                    "attach" => PodSub::Attach,
                    "portforward" => PodSub::PortForward,
                    _ => return None,
                };
                Some(Route::Pod { namespace: ns.to_string(), name: name.to_string(), sub })
            }
            ["nodes", name, "proxy", tail @ ..] if !name.is_empty() => Some(Route::NodeProxy { name: name.to_string(), path: format!("/{}", tail.join("/")) }),
            _ => None,
        }
    }
}

/// Router middleware: serves the kubelet-backed subresources, passes everything else on.
pub async fn intercept(State(api): State<Arc<ApiServer>>, req: Request, next: Next) -> Response {
    let Some(route) = Route::parse(req.uri().path()) else {
        return next.run(req).await;
    };
    let span = info_span!("request", verb = %req.method(), path = %req.uri().path());
    async move {
        let response = match serve(api, route, req).await {
            Ok(r) => r,
            Err(e) => e.into_response(),
        };
        debug!(status = response.status().as_u16(), "served");
        response
    }
    .instrument(span)
    .await
}

async fn serve(api: Arc<ApiServer>, route: Route, req: Request) -> Result<Response, ApiError> {
    let query = Query::parse(req.uri().query())?;
    let (node_name, upstream) = match &route {
        Route::NodeProxy { name, path } => (name.clone(), with_query(path, &query.0)),
        Route::Pod { namespace, name, sub } => {
            let allowed = match sub {
                PodSub::Log => req.method() == Method::GET,
                _ => req.method() == Method::GET || req.method() == Method::POST,
            };
            if !allowed {
                return Err(ApiError::method_not_allowed(format!(
                    "the server does not allow this method on the requested resource ({} pods/{name})",
                    req.method()
                )));
            }
            let pod = get_object(&api, "pods", Some(namespace), name).await?;
            let container = match sub {
                PodSub::PortForward => String::new(),
                _ => choose_container(&pod, name, query.get("container"))?,
            };
            let node = pod.pointer("/spec/nodeName").and_then(Value::as_str).unwrap_or_default().to_string();
            if node.is_empty() {
                if *sub == PodSub::Log {
                    // As in Kubernetes: a pod not yet scheduled has no logs to show.
                    return Ok((StatusCode::OK, [(CONTENT_TYPE, "text/plain")], "").into_response());
                }
                return Err(ApiError::bad_request(format!("pod {name} does not have a host assigned")));
            }
            let rest = query.without("container");
            let path = match sub {
                PodSub::Log => format!("/containerLogs/{namespace}/{name}/{container}"),
                PodSub::Exec => format!("/exec/{namespace}/{name}/{container}"),
                PodSub::Attach => format!("/attach/{namespace}/{name}/{container}"),
                PodSub::PortForward => format!("/portForward/{namespace}/{name}"),
            };
            (node, with_query(&path, &rest))
        }
    };
    let node = get_object(&api, "nodes", None, &node_name).await?;
    let address = kubelet_address(&node)
        .ok_or_else(|| ApiError::service_unavailable(format!("no kubelet address is known for node {node_name:?}: its status has no addresses")))?;
    let resource = match &route {
        Route::Pod { name, sub: PodSub::Log, .. } => Some(name.clone()),
        _ => None,
    };
    forward(&api, &address, &upstream, req, resource.as_deref()).await
}

/// Query parameters in order.
struct Query(Vec<(String, String)>);

impl Query {
    fn parse(query: Option<&str>) -> Result<Query, ApiError> {
        serde_urlencoded::from_str(query.unwrap_or("")).map(Query).map_err(|e| ApiError::bad_request(format!("invalid query: {e}")))
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.0.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v.as_str()).filter(|v| !v.is_empty())
    }

    fn without(&self, key: &str) -> Vec<(String, String)> {
        self.0.iter().filter(|(k, _)| k != key).cloned().collect()
    }
}

fn with_query(path: &str, params: &[(String, String)]) -> String {
    match serde_urlencoded::to_string(params) {
        Ok(q) if !q.is_empty() => format!("{path}?{q}"),
        _ => path.to_string(),
    }
}

async fn get_object(api: &ApiServer, plural: &str, namespace: Option<&str>, name: &str) -> Result<Value, ApiError> {
    let res = registry::lookup("", "v1", plural).ok_or_else(|| ApiError::internal(format!("{plural} are not registered")))?;
    let (kv, _) = api.store.get(&res.key(namespace, name)).await.map_err(|e| ApiError::from_store(res, name, e))?;
    let kv = kv.ok_or_else(|| ApiError::not_found(res, name))?;
    watchcache::decode_stored(&kv.value, kv.mod_revision).map_err(ApiError::internal)
}

/// The container a pod request means: the one asked for (which must exist), else the
/// default-container annotation's, else the only one.
fn choose_container(pod: &Value, pod_name: &str, requested: Option<&str>) -> Result<String, ApiError> {
    let names = |field: &str| -> Vec<String> {
        pod.pointer(&format!("/spec/{field}"))
            .and_then(Value::as_array)
            .map(|cs| cs.iter().filter_map(|c| c.get("name").and_then(Value::as_str)).map(str::to_string).collect())
            .unwrap_or_default()
    };
    let containers = names("containers");
    let init = names("initContainers");
    let ephemeral = names("ephemeralContainers");
    if let Some(name) = requested {
        if containers.iter().chain(&init).chain(&ephemeral).any(|c| c == name) {
            return Ok(name.to_string());
        }
        return Err(ApiError::bad_request(format!("container {name} is not valid for pod {pod_name}")));
    }
    let annotated = pod.pointer("/metadata/annotations").and_then(|a| a.get(DEFAULT_CONTAINER_ANNOTATION)).and_then(Value::as_str);
    if let Some(name) = annotated.filter(|n| containers.iter().any(|c| c == n)) {
        return Ok(name.to_string());
    }
    match containers.as_slice() {
        [only] => Ok(only.clone()),
        [] => Err(ApiError::bad_request(format!("a container name must be specified for pod {pod_name}"))),
        many => {
            let mut message = format!("a container name must be specified for pod {pod_name}, choose one of: [{}]", many.join(" "));
            if !init.is_empty() {
                message.push_str(&format!(" or one of the init containers: [{}]", init.join(" ")));
            }
            Err(ApiError::bad_request(message))
        }
    }
}

/// `host:port` of the node's kubelet.
fn kubelet_address(node: &Value) -> Option<String> {
    let addresses = node.pointer("/status/addresses").and_then(Value::as_array)?;
    let of_type = |t: &str| {
        addresses
            .iter()
            .find(|a| a.get("type").and_then(Value::as_str) == Some(t))
            .and_then(|a| a.get("address"))
            .and_then(Value::as_str)
            .filter(|a| !a.is_empty())
    };
    let host = of_type("InternalIP").or_else(|| of_type("Hostname")).or_else(|| of_type("ExternalIP"))?;
    let port = node
        .pointer("/status/daemonEndpoints/kubeletEndpoint/Port")
        .and_then(Value::as_u64)
        .and_then(|p| u16::try_from(p).ok())
        .filter(|p| *p != 0)
        .unwrap_or(DEFAULT_KUBELET_PORT);
    Some(if host.contains(':') { format!("[{host}]:{port}") } else { format!("{host}:{port}") })
}

/// Headers that belong to one hop and are not forwarded (upgrades keep theirs).
fn hop_by_hop(name: &HeaderName, upgrade: bool) -> bool {
    let n = name.as_str();
    matches!(n, "keep-alive" | "te" | "trailer" | "transfer-encoding" | "proxy-connection" | "proxy-authorization" | "proxy-authenticate")
        || (!upgrade && matches!(n, "connection" | "upgrade"))
}

fn is_upgrade(headers: &http::HeaderMap) -> bool {
    headers
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
}

fn dial_error(address: &str, e: impl std::fmt::Display) -> ApiError {
    ApiError::service_unavailable(format!("error dialing backend: dial tcp {address}: {e}"))
}

/// Sends `req` to the kubelet at `address` as `path_and_query`, and answers with its
/// response: streamed, or spliced after an upgrade. For `pods/log` (`log_of` names the
/// pod), a kubelet error becomes a `Status` as the apiserver's log streamer makes it.
async fn forward(api: &ApiServer, address: &str, path_and_query: &str, req: Request, log_of: Option<&str>) -> Result<Response, ApiError> {
    let tcp = tokio::time::timeout(DIAL_TIMEOUT, tokio::net::TcpStream::connect(address))
        .await
        .map_err(|_| dial_error(address, "i/o timeout"))?
        .map_err(|e| dial_error(address, e))?;
    match &api.security.kubelet_tls {
        None => forward_over(api, tcp, address, path_and_query, req, log_of).await,
        Some(config) => {
            // The kubelet's serving certificate names the node's address (or name).
            let host = address.rsplit_once(':').map(|(h, _)| h.trim_start_matches('[').trim_end_matches(']')).unwrap_or(address);
            let server_name = rustls::pki_types::ServerName::try_from(host.to_string()).map_err(|e| dial_error(address, e))?;
            let tls = tokio::time::timeout(DIAL_TIMEOUT, tokio_rustls::TlsConnector::from(config.clone()).connect(server_name, tcp))
                .await
                .map_err(|_| dial_error(address, "TLS handshake timeout"))?
                .map_err(|e| dial_error(address, format!("TLS handshake with the kubelet failed: {e}")))?;
            forward_over(api, tls, address, path_and_query, req, log_of).await
        }
    }
}

/// [`forward`] over an established connection (plain or TLS).
async fn forward_over<IO>(api: &ApiServer, io: IO, address: &str, path_and_query: &str, mut req: Request, log_of: Option<&str>) -> Result<Response, ApiError>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let upgrade = is_upgrade(req.headers());
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let (mut sender, conn) = hyper::client::conn::http1::handshake::<_, Body>(TokioIo::new(io)).await.map_err(|e| dial_error(address, e))?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            debug!(error = %e, "kubelet connection ended");
        }
    });

    let (parts, body) = req.into_parts();
    let mut upstream = http::Request::builder().method(parts.method.clone()).uri(path_and_query);
    for (name, value) in &parts.headers {
        if name == HOST || hop_by_hop(name, upgrade) || name == http::header::AUTHORIZATION {
            continue;
        }
        upstream = upstream.header(name, value);
    }
    let upstream = upstream.header(HOST, address).body(body).map_err(ApiError::internal)?;
    let mut response =
        sender.send_request(upstream).await.map_err(|e| ApiError::service_unavailable(format!("error trying to reach the kubelet at {address}: {e}")))?;

    if response.status() == StatusCode::SWITCHING_PROTOCOLS {
        let Some(client_upgrade) = client_upgrade else {
            return Err(ApiError::internal("the kubelet switched protocols on a request that did not ask to"));
        };
        let kubelet_upgrade = hyper::upgrade::on(&mut response);
        let shutdown = api.shutdown.clone();
        tokio::spawn(
            async move {
                let (client, kubelet) = match tokio::try_join!(client_upgrade, kubelet_upgrade) {
                    Ok(pair) => pair,
                    Err(e) => return debug!(error = %e, "upgrade failed"),
                };
                let (mut client, mut kubelet) = (TokioIo::new(client), TokioIo::new(kubelet));
                tokio::select! {
                    result = tokio::io::copy_bidirectional(&mut client, &mut kubelet) => {
                        if let Err(e) = result {
                            debug!(error = %e, "stream to the kubelet ended");
                        }
                    }
                    _ = shutdown.cancelled() => {}
                }
            }
            .in_current_span(),
        );
        let mut answer = Response::builder().status(StatusCode::SWITCHING_PROTOCOLS);
        for (name, value) in response.headers() {
            answer = answer.header(name, value);
        }
        return answer.body(Body::empty()).map_err(ApiError::internal);
    }

    let status = response.status();
    if let (Some(pod), false) = (log_of, status.is_success()) {
        let body = http_body_util::BodyExt::collect(http_body_util::Limited::new(response.into_body(), MAX_ERROR_BODY))
            .await
            .map(|b| String::from_utf8_lossy(&b.to_bytes()).trim().to_string())
            .unwrap_or_default();
        return Err(kubelet_error(status, body, pod));
    }
    let mut answer = Response::builder().status(status);
    for (name, value) in response.headers() {
        if !hop_by_hop(name, false) {
            answer = answer.header(name, value);
        }
    }
    answer.body(Body::new(response.into_body())).map_err(ApiError::internal)
}

/// A kubelet's error answer to a log request, as a `Status` (the reason Kubernetes gives
/// each code in a generic server response).
fn kubelet_error(status: StatusCode, body: String, pod: &str) -> ApiError {
    let code = status.as_u16();
    let message = if body.is_empty() {
        format!("the server responded with the status code {code} but did not return more information (get pods/log {pod})")
    } else {
        body
    };
    let reason = match code {
        400 => "BadRequest",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "NotFound",
        405 => "MethodNotAllowed",
        409 => "Conflict",
        422 => "Invalid",
        429 => "TooManyRequests",
        500 => "InternalError",
        503 => "ServiceUnavailable",
        504 => "Timeout",
        _ => "Unknown",
    };
    let details = (code == 404).then(|| serde_json::json!({"name": pod, "kind": "pods/log"}));
    ApiError { code, reason, message, details }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_routes() {
        assert_eq!(
            Route::parse("/api/v1/namespaces/default/pods/web/exec"),
            Some(Route::Pod { namespace: "default".into(), name: "web".into(), sub: PodSub::Exec })
        );
        assert_eq!(Route::parse("/api/v1/namespaces/default/pods/web/log").map(|r| matches!(r, Route::Pod { sub: PodSub::Log, .. })), Some(true));
        assert_eq!(Route::parse("/api/v1/namespaces/default/pods/web/status"), None);
        assert_eq!(Route::parse("/api/v1/namespaces/default/pods/web"), None);
        assert_eq!(Route::parse("/api/v1/nodes/n1/proxy"), Some(Route::NodeProxy { name: "n1".into(), path: "/".into() }));
        assert_eq!(Route::parse("/api/v1/nodes/n1/proxy/stats/summary"), Some(Route::NodeProxy { name: "n1".into(), path: "/stats/summary".into() }));
        assert_eq!(Route::parse("/apis/apps/v1/namespaces/default/deployments/web/scale"), None);
    }

    #[test]
    fn chooses_the_container() {
        let pod = json!({"metadata": {"annotations": {}}, "spec": {"containers": [{"name": "web"}, {"name": "side"}], "initContainers": [{"name": "init"}]}});
        assert_eq!(choose_container(&pod, "p", Some("side")).expect("named"), "side");
        assert_eq!(choose_container(&pod, "p", Some("init")).expect("init"), "init");
        assert_eq!(
            choose_container(&pod, "p", None).expect_err("ambiguous").message,
            "a container name must be specified for pod p, choose one of: [web side] or one of the init containers: [init]"
        );
        assert_eq!(choose_container(&pod, "p", Some("nope")).expect_err("bad").message, "container nope is not valid for pod p");
        let annotated =
            json!({"metadata": {"annotations": {DEFAULT_CONTAINER_ANNOTATION: "side"}}, "spec": {"containers": [{"name": "web"}, {"name": "side"}]}});
        assert_eq!(choose_container(&annotated, "p", None).expect("annotated"), "side");
        let single = json!({"spec": {"containers": [{"name": "only"}]}});
        assert_eq!(choose_container(&single, "p", None).expect("single"), "only");
    }

    #[test]
    fn finds_the_kubelet() {
        let node = json!({"status": {
            "addresses": [{"type": "Hostname", "address": "node-1"}, {"type": "InternalIP", "address": "10.0.0.5"}],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 12345}},
        }});
        assert_eq!(kubelet_address(&node).as_deref(), Some("10.0.0.5:12345"));
        let v6 = json!({"status": {"addresses": [{"type": "InternalIP", "address": "fd00::5"}]}});
        assert_eq!(kubelet_address(&v6).as_deref(), Some("[fd00::5]:10250"));
        let named = json!({"status": {"addresses": [{"type": "Hostname", "address": "node-1"}], "daemonEndpoints": {"kubeletEndpoint": {"Port": 0}}}});
        assert_eq!(kubelet_address(&named).as_deref(), Some("node-1:10250"));
        assert_eq!(kubelet_address(&json!({"status": {}})), None);
    }

    #[test]
    fn rebuilds_queries() {
        let q = Query::parse(Some("command=sh&command=-c&command=echo%20hi&container=web&stdout=true")).expect("query");
        assert_eq!(q.get("container"), Some("web"));
        assert_eq!(with_query("/exec/ns/p/web", &q.without("container")), "/exec/ns/p/web?command=sh&command=-c&command=echo+hi&stdout=true");
        assert_eq!(with_query("/portForward/ns/p", &[]), "/portForward/ns/p");
    }

    #[test]
    fn kubelet_log_errors_become_statuses() {
        let e = kubelet_error(StatusCode::BAD_REQUEST, "container \"web\" in pod \"p\" is waiting to start: ContainerCreating".into(), "p");
        assert_eq!((e.code, e.reason), (400, "BadRequest"));
        assert_eq!(e.message, "container \"web\" in pod \"p\" is waiting to start: ContainerCreating");
        assert_eq!(kubelet_error(StatusCode::NOT_FOUND, String::new(), "p").reason, "NotFound");
        assert_eq!(kubelet_error(StatusCode::INTERNAL_SERVER_ERROR, "boom".into(), "p").message, "boom");
    }
}
