//! The kubelet API: the HTTP server the apiserver proxies `kubectl logs`, `exec`,
//! `attach` and `port-forward` to, with the real kubelet's paths:
//!
//! - `GET /healthz`
//! - `GET /containerLogs/{namespace}/{pod}/{container}?follow=&previous=&tailLines=&sinceSeconds=&sinceTime=&timestamps=&limitBytes=`
//! - `GET|POST /exec/{namespace}/{pod}[/{uid}]/{container}?command=…&stdin=&stdout=&stderr=&tty=`
//! - `GET|POST /attach/{namespace}/{pod}[/{uid}]/{container}?stdin=&stdout=&stderr=&tty=`
//! - `GET|POST /portForward/{namespace}/{pod}[/{uid}]`
//!
//! Streaming endpoints upgrade the connection: exec and attach to WebSocket
//! ([`remotecommand`]: `v5.channel.k8s.io`, `v4.channel.k8s.io`) or SPDY/3.1
//! (`v4.channel.k8s.io`); port-forward to SPDY/3.1 (`portforward.k8s.io`), plain or tunneled
//! in a WebSocket ([`portforward`]). Errors are plain text with the kubelet's status codes,
//! which the apiserver turns into `Status` objects.
//!
//! The kubelet core resolves names through [`PodResolver`]; processes and ports come from
//! the [`Runtime`]. The server speaks plain HTTP on any byte stream
//! ([`KubeletApi::serve_connection`]), so TLS can wrap the accepted connections.

pub mod auth;
pub mod logs;
pub mod portforward;
pub mod remotecommand;
pub mod spdy;
pub mod testing;

use std::convert::Infallible;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use http::header::{HeaderValue, CONNECTION, CONTENT_TYPE, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_KEY, SEC_WEBSOCKET_PROTOCOL, UPGRADE};
use http::{Method, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, info_span, warn, Instrument};

use crate::runtime::{ExecRequest, ExecSession, Runtime, RuntimeError};
use logs::{Follow, LogOptions, LogSink};
use remotecommand::StreamOptions;

/// The annotation that names the container `kubectl` and the API default to.
pub const DEFAULT_CONTAINER_ANNOTATION: &str = "kubectl.kubernetes.io/default-container";
/// The header that carries SPDY sub-protocol versions in an upgrade.
pub const STREAM_PROTOCOL_HEADER: &str = "X-Stream-Protocol-Version";

/// A container the API addresses, as the kubelet core knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerTarget {
    /// The runtime's id of the current attempt.
    pub container_id: String,
    /// The CRI log of the current attempt.
    pub log_path: PathBuf,
    /// The log of the attempt before it, if the container restarted.
    pub previous_log_path: Option<PathBuf>,
    pub running: bool,
}

/// Name resolution the kubelet core provides to the API server.
#[async_trait]
pub trait PodResolver: Send + Sync {
    /// The container `container` of pod `namespace/pod`. `None` selects the pod's only
    /// container or the one named by the `kubectl.kubernetes.io/default-container`
    /// annotation, else fails naming the choices ([`choose_container`] does this).
    /// An unknown pod or container is [`ServerError::NotFound`]; a container that has
    /// not started yet is [`ServerError::BadRequest`] with the kubelet's wording
    /// (`container "x" in pod "y" is waiting to start: ContainerCreating`).
    async fn container(&self, namespace: &str, pod: &str, container: Option<&str>) -> Result<ContainerTarget, ServerError>;

    /// The id of the pod's running sandbox (for port forwarding).
    async fn sandbox(&self, namespace: &str, pod: &str) -> Result<String, ServerError>;

    /// The stdio of the container's main process (`kubectl attach`). Runtimes that cannot
    /// attach keep this default.
    async fn attach(&self, target: &ContainerTarget, stdin: bool, tty: bool) -> Result<ExecSession, ServerError> {
        let _ = (stdin, tty);
        Err(ServerError::NotSupported(format!("attaching to container {} is not supported by this runtime", target.container_id)))
    }
}

/// What serving the kubelet API failed at; each answer carries the status code the
/// kubelet gives it.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// An unknown pod or container (404).
    #[error("{0}")]
    NotFound(String),
    /// A request the kubelet cannot serve as asked: bad parameters, a container that is
    /// not running (400).
    #[error("{0}")]
    BadRequest(String),
    /// A container with no run yet (`container "x" in pod "y" is waiting to start:
    /// ContainerCreating`, what `kubectl logs` prints) (400).
    #[error("{0}")]
    NotStarted(String),
    /// The runtime cannot do this (400).
    #[error("{0}")]
    NotSupported(String),
    /// No sub-protocol both sides speak (403).
    #[error("unable to upgrade: unable to negotiate protocol: client supports {client:?}, server accepts {server:?}")]
    NegotiateProtocol { client: Vec<String>, server: Vec<&'static str> },
    /// The runtime failed (500).
    #[error("{context}: {source}")]
    Runtime {
        context: String,
        #[source]
        source: RuntimeError,
    },
    /// The listener failed.
    #[error("accepting kubelet API connections failed")]
    Accept(#[source] io::Error),
}

impl ServerError {
    pub fn status_code(&self) -> StatusCode {
        match self {
            ServerError::NotFound(_) => StatusCode::NOT_FOUND,
            ServerError::BadRequest(_) | ServerError::NotStarted(_) | ServerError::NotSupported(_) => StatusCode::BAD_REQUEST,
            ServerError::NegotiateProtocol { .. } => StatusCode::FORBIDDEN,
            ServerError::Runtime { .. } | ServerError::Accept(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// Picks the container a request means, as the apiserver and kubelet do: the one asked
/// for (which must exist), else the default-container annotation's, else the only one.
pub fn choose_container<'a>(
    pod: &str,
    requested: Option<&'a str>,
    containers: &[&'a str],
    init_containers: &[&'a str],
    annotation: Option<&'a str>,
) -> Result<&'a str, ServerError> {
    if let Some(name) = requested.filter(|n| !n.is_empty()) {
        if containers.contains(&name) || init_containers.contains(&name) {
            return Ok(name);
        }
        return Err(ServerError::NotFound(format!("container {name:?} not found in pod {pod:?}")));
    }
    if let Some(name) = annotation.filter(|n| containers.contains(n)) {
        return Ok(name);
    }
    match containers {
        [only] => Ok(only),
        [] => Err(ServerError::BadRequest(format!("a container name must be specified for pod {pod}"))),
        many => {
            let mut message = format!("a container name must be specified for pod {pod}, choose one of: [{}]", many.join(" "));
            if !init_containers.is_empty() {
                message.push_str(&format!(" or one of the init containers: [{}]", init_containers.join(" ")));
            }
            Err(ServerError::BadRequest(message))
        }
    }
}

type Body = BoxBody<Bytes, io::Error>;

/// The kubelet API over a runtime and a resolver.
#[derive(Clone)]
pub struct KubeletApi {
    runtime: Arc<dyn Runtime>,
    pods: Arc<dyn PodResolver>,
    shutdown: CancellationToken,
}

/// Serves the kubelet API on `listener` until `shutdown`; streaming sessions in progress
/// end with it.
pub async fn serve(listener: TcpListener, runtime: Arc<dyn Runtime>, pods: Arc<dyn PodResolver>, shutdown: CancellationToken) -> Result<(), ServerError> {
    let api = KubeletApi::new(runtime, pods, shutdown.clone());
    if let Ok(addr) = listener.local_addr() {
        info!(address = %addr, "kubelet API serving");
    }
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.cancelled() => return Ok(()),
        };
        match accepted {
            Ok((stream, _peer)) => {
                let api = api.clone();
                tokio::spawn(async move { api.serve_connection(stream).await });
            }
            // Out of descriptors and the like: wait a little and go on.
            Err(e) => {
                warn!(error = %e, "accepting a kubelet API connection failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
}

/// Serves the kubelet API over TLS on `listener` until `shutdown`: every connection
/// must present a client certificate the TLS configuration verifies (see
/// [`tls_config`]), and every request is authorized by `authorizer`.
pub async fn serve_tls(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    authorizer: Arc<auth::Authorizer>,
    runtime: Arc<dyn Runtime>,
    pods: Arc<dyn PodResolver>,
    shutdown: CancellationToken,
) -> Result<(), ServerError> {
    let api = KubeletApi::new(runtime, pods, shutdown.clone());
    if let Ok(addr) = listener.local_addr() {
        info!(address = %addr, "kubelet API serving HTTPS");
    }
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.cancelled() => return Ok(()),
        };
        match accepted {
            Ok((stream, peer)) => {
                let api = api.clone();
                let acceptor = acceptor.clone();
                let authorizer = authorizer.clone();
                tokio::spawn(async move {
                    let tls = match tokio::time::timeout(std::time::Duration::from_secs(10), acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => tls,
                        Ok(Err(e)) => return debug!(%peer, error = %e, "kubelet API TLS handshake failed"),
                        Err(_) => return debug!(%peer, "kubelet API TLS handshake timed out"),
                    };
                    let caller = tls.get_ref().1.peer_certificates().and_then(|c| c.first()).and_then(|c| auth::Caller::from_certificate(c.as_ref()));
                    let Some(caller) = caller else { return debug!(%peer, "kubelet API client presented no usable certificate") };
                    api.serve_connection_checked(tls, Some((authorizer, caller))).await
                });
            }
            Err(e) => {
                warn!(error = %e, "accepting a kubelet API connection failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
}

/// The kubelet API's TLS configuration: its serving certificate, and client
/// certificates required and checked against `client_cas` (DER).
pub fn tls_config(serving: &component_base::pki::CertPair, client_cas: &[Vec<u8>]) -> Result<Arc<rustls::ServerConfig>, component_base::tls::TlsError> {
    component_base::tls::server_config(serving, client_cas, component_base::tls::ClientAuth::Required, &["http/1.1"])
}

impl KubeletApi {
    pub fn new(runtime: Arc<dyn Runtime>, pods: Arc<dyn PodResolver>, shutdown: CancellationToken) -> KubeletApi {
        KubeletApi { runtime, pods, shutdown }
    }

    /// Serves HTTP/1.1 (with upgrades) on one accepted connection, plain or TLS.
    pub async fn serve_connection<IO>(&self, io: IO)
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        self.serve_connection_checked(io, None).await
    }

    /// [`KubeletApi::serve_connection`], with every request of `caller` authorized first
    /// (403 with the kubelet's message when refused).
    pub async fn serve_connection_checked<IO>(&self, io: IO, check: Option<(Arc<auth::Authorizer>, auth::Caller)>)
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let api = self.clone();
        let service = hyper::service::service_fn(move |req: Request<Incoming>| {
            let api = api.clone();
            let check = check.clone();
            async move {
                if let Some((authorizer, caller)) = &check {
                    if !authorizer.allowed(caller, req.method(), req.uri().path()).await {
                        let (verb, sub) = auth::attributes(req.method(), req.uri().path());
                        let message = format!("Forbidden (user={}, verb={verb}, resource=nodes, subresource={sub})", caller.user);
                        return Ok::<_, Infallible>(text(StatusCode::FORBIDDEN, message));
                    }
                }
                Ok::<_, Infallible>(api.handle(req).await)
            }
        });
        let conn = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(io), service).with_upgrades();
        tokio::pin!(conn);
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    debug!(error = %e, "kubelet API connection ended");
                }
            }
            _ = self.shutdown.cancelled() => {
                conn.as_mut().graceful_shutdown();
                let _ = conn.await;
            }
        }
    }

    async fn handle(&self, req: Request<Incoming>) -> Response<Body> {
        let span = info_span!("kubelet_api", method = %req.method(), path = %req.uri().path());
        async move {
            let response = match self.route(req).await {
                Ok(r) => r,
                Err(e) => {
                    debug!(error = %e, "kubelet API request failed");
                    text(e.status_code(), e.to_string())
                }
            };
            debug!(status = response.status().as_u16(), "served");
            response
        }
        .instrument(span)
        .await
    }

    async fn route(&self, req: Request<Incoming>) -> Result<Response<Body>, ServerError> {
        let path = req.uri().path().to_string();
        let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        let method = req.method().clone();
        let streaming = method == Method::GET || method == Method::POST;
        match segments.as_slice() {
            ["healthz"] if method == Method::GET => Ok(text(StatusCode::OK, "ok".into())),
            ["containerLogs", ns, pod, container] if method == Method::GET => self.container_logs(&req, ns, pod, container).await,
            ["exec", ns, pod, container] | ["exec", ns, pod, _, container] if streaming => self.exec(req, ns, pod, container, false).await,
            ["attach", ns, pod, container] | ["attach", ns, pod, _, container] if streaming => self.exec(req, ns, pod, container, true).await,
            ["portForward", ns, pod] | ["portForward", ns, pod, _] if streaming => self.port_forward(req, ns, pod).await,
            ["healthz"] | ["containerLogs", ..] | ["exec", ..] | ["attach", ..] | ["portForward", ..] => {
                Ok(text(StatusCode::METHOD_NOT_ALLOWED, format!("{method} is not allowed on {path}")))
            }
            _ => Ok(text(StatusCode::NOT_FOUND, "404 page not found".into())),
        }
    }

    async fn container_logs(&self, req: &Request<Incoming>, ns: &str, pod: &str, container: &str) -> Result<Response<Body>, ServerError> {
        let params = query(req)?;
        let opts = LogOptions::from_query(&params, chrono::Utc::now()).map_err(|e| ServerError::BadRequest(e.to_string()))?;
        let target = self.pods.container(ns, pod, Some(container)).await?;
        let path = if opts.previous {
            target
                .previous_log_path
                .clone()
                .ok_or_else(|| ServerError::BadRequest(format!("previous terminated container {container:?} in pod {pod:?} not found")))?
        } else {
            target.log_path.clone()
        };
        let follow = (opts.follow && !opts.previous).then(|| Follow {
            runtime: self.runtime.clone(),
            container_id: target.container_id.clone(),
            running: target.running,
        });
        let (tx, rx) = mpsc::channel::<Bytes>(16);
        let sink = LogSink { tx, shutdown: self.shutdown.clone() };
        tokio::spawn(
            async move {
                if let Err(e) = logs::stream_log(path, opts, follow, sink).await {
                    warn!(error = %e, "streaming a container log failed");
                }
            }
            .in_current_span(),
        );
        let stream = futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|b| (Ok::<_, io::Error>(Frame::data(b)), rx)) });
        let mut response = Response::new(BodyExt::boxed(StreamBody::new(stream)));
        response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        Ok(response)
    }

    async fn exec(&self, mut req: Request<Incoming>, ns: &str, pod: &str, container: &str, attach: bool) -> Result<Response<Body>, ServerError> {
        let params = query(&req)?;
        let opts = StreamOptions::from_query(&params, !attach).map_err(ServerError::BadRequest)?;
        // A container not running (or not started yet) is not found, in the words of
        // Kubernetes' kubelet: kubectl prints "unable to upgrade connection: container
        // not found ("x")".
        let target = match self.pods.container(ns, pod, Some(container)).await {
            Ok(target) if target.running => target,
            Ok(_) | Err(ServerError::NotStarted(_)) => return Err(ServerError::BadRequest(format!("container not found ({container:?})"))),
            Err(e) => return Err(e),
        };
        let what = if attach { "attach" } else { "exec" };
        let start = {
            let runtime = self.runtime.clone();
            let pods = self.pods.clone();
            let opts = opts.clone();
            async move {
                let session = if attach {
                    pods.attach(&target, opts.stdin, opts.tty).await.map_err(|e| e.to_string())
                } else {
                    let request = ExecRequest { container_id: target.container_id.clone(), command: opts.command.clone(), tty: opts.tty, stdin: opts.stdin };
                    runtime.exec(request).await.map_err(|e| e.to_string())
                };
                session.map(|s| keep_requested(s, &opts))
            }
        };
        if is_websocket(&req) {
            let offered = websocket_protocols(&req);
            let supported = [remotecommand::WEBSOCKET_V5, remotecommand::CHANNEL_V4];
            let protocol = negotiate(&offered, &supported)?;
            let response = websocket_accept(&req, protocol)?;
            let on_upgrade = hyper::upgrade::on(&mut req);
            let command = opts.command.clone();
            let shutdown = self.shutdown.clone();
            info!(what, pod = %format!("{ns}/{pod}"), container, protocol, "streaming session");
            tokio::spawn(
                async move {
                    let upgraded = match on_upgrade.await {
                        Ok(u) => u,
                        Err(e) => return debug!(error = %e, "upgrade failed"),
                    };
                    let ws = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, Some(websocket_config())).await;
                    let session = start.await;
                    tokio::select! {
                        _ = remotecommand::serve_websocket(ws, protocol, session, command) => {}
                        _ = shutdown.cancelled() => {}
                    }
                }
                .in_current_span(),
            );
            return Ok(response);
        }
        if is_spdy(&req) {
            let protocol = negotiate(&spdy_protocols(&req), &[remotecommand::CHANNEL_V4])?;
            let response = spdy_accept(protocol);
            let on_upgrade = hyper::upgrade::on(&mut req);
            let shutdown = self.shutdown.clone();
            info!(what, pod = %format!("{ns}/{pod}"), container, protocol, "streaming session (SPDY)");
            tokio::spawn(
                async move {
                    let upgraded = match on_upgrade.await {
                        Ok(u) => u,
                        Err(e) => return debug!(error = %e, "upgrade failed"),
                    };
                    tokio::select! {
                        _ = remotecommand::serve_spdy(TokioIo::new(upgraded), opts, start) => {}
                        _ = shutdown.cancelled() => {}
                    }
                }
                .in_current_span(),
            );
            return Ok(response);
        }
        Err(ServerError::BadRequest("Upgrade request required".into()))
    }

    async fn port_forward(&self, mut req: Request<Incoming>, ns: &str, pod: &str) -> Result<Response<Body>, ServerError> {
        let sandbox_id = self.pods.sandbox(ns, pod).await?;
        let target = portforward::Target { runtime: self.runtime.clone(), sandbox_id, pod: format!("{ns}/{pod}") };
        let shutdown = self.shutdown.clone();
        if is_websocket(&req) {
            let protocol = negotiate(&websocket_protocols(&req), &[portforward::WEBSOCKET_TUNNEL, portforward::CHANNEL_V4])?;
            let ports = if protocol == portforward::CHANNEL_V4 { portforward::query_ports(req.uri().query()).map_err(ServerError::BadRequest)? } else { Vec::new() };
            let response = websocket_accept(&req, protocol)?;
            let on_upgrade = hyper::upgrade::on(&mut req);
            info!(pod = %target.pod, protocol, "port-forward session");
            tokio::spawn(
                async move {
                    let upgraded = match on_upgrade.await {
                        Ok(u) => u,
                        Err(e) => return debug!(error = %e, "upgrade failed"),
                    };
                    let ws = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, Some(websocket_config())).await;
                    if protocol == portforward::CHANNEL_V4 {
                        portforward::serve_channels(ws, target, ports, shutdown).await;
                    } else {
                        portforward::serve_spdy(portforward::websocket_tunnel(ws), target, shutdown).await;
                    }
                }
                .in_current_span(),
            );
            return Ok(response);
        }
        if is_spdy(&req) {
            let protocol = negotiate(&spdy_protocols(&req), &[portforward::PROTOCOL_V1])?;
            let response = spdy_accept(protocol);
            let on_upgrade = hyper::upgrade::on(&mut req);
            info!(pod = %target.pod, protocol, "port-forward session (SPDY)");
            tokio::spawn(
                async move {
                    match on_upgrade.await {
                        Ok(upgraded) => portforward::serve_spdy(TokioIo::new(upgraded), target, shutdown).await,
                        Err(e) => debug!(error = %e, "upgrade failed"),
                    }
                }
                .in_current_span(),
            );
            return Ok(response);
        }
        Err(ServerError::BadRequest("Upgrade request required".into()))
    }
}

/// Drops the streams the client did not ask for, so their output is not sent.
fn keep_requested(mut session: ExecSession, opts: &StreamOptions) -> ExecSession {
    if !opts.stdin {
        session.stdin = None;
    }
    if !opts.stdout {
        session.stdout = None;
    }
    if !opts.stderr {
        session.stderr = None;
    }
    session
}

fn websocket_config() -> WebSocketConfig {
    WebSocketConfig::default()
}

fn text(status: StatusCode, body: String) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from(body)).map_err(|never| match never {}).boxed());
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    response
}

fn query<B>(req: &Request<B>) -> Result<Vec<(String, String)>, ServerError> {
    serde_urlencoded::from_str(req.uri().query().unwrap_or("")).map_err(|e| ServerError::BadRequest(format!("invalid query: {e}")))
}

fn header_has_token<B>(req: &Request<B>, name: http::header::HeaderName, token: &str) -> bool {
    req.headers().get_all(name).iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(',')).any(|t| t.trim().eq_ignore_ascii_case(token))
}

fn is_websocket<B>(req: &Request<B>) -> bool {
    header_has_token(req, CONNECTION, "upgrade") && header_has_token(req, UPGRADE, "websocket")
}

fn is_spdy<B>(req: &Request<B>) -> bool {
    header_has_token(req, CONNECTION, "upgrade") && header_has_token(req, UPGRADE, spdy::UPGRADE_TOKEN)
}

fn header_list<B>(req: &Request<B>, name: &str) -> Vec<String> {
    req.headers()
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty())
        .collect()
}

fn websocket_protocols<B>(req: &Request<B>) -> Vec<String> {
    header_list(req, SEC_WEBSOCKET_PROTOCOL.as_str())
}

fn spdy_protocols<B>(req: &Request<B>) -> Vec<String> {
    header_list(req, STREAM_PROTOCOL_HEADER)
}

/// The first protocol in the client's order that the server supports.
fn negotiate(offered: &[String], supported: &[&'static str]) -> Result<&'static str, ServerError> {
    offered
        .iter()
        .find_map(|o| supported.iter().find(|s| **s == o.as_str()).copied())
        .ok_or_else(|| ServerError::NegotiateProtocol { client: offered.to_vec(), server: supported.to_vec() })
}

fn websocket_accept<B>(req: &Request<B>, protocol: &'static str) -> Result<Response<Body>, ServerError> {
    let key = req.headers().get(SEC_WEBSOCKET_KEY).ok_or_else(|| ServerError::BadRequest("missing Sec-WebSocket-Key".into()))?;
    let accept = derive_accept_key(key.as_bytes());
    let accept = HeaderValue::from_str(&accept).map_err(|e| ServerError::BadRequest(e.to_string()))?;
    let mut response = Response::new(empty());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
    headers.insert(UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(SEC_WEBSOCKET_ACCEPT, accept);
    headers.insert(SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static(protocol));
    Ok(response)
}

fn spdy_accept(protocol: &'static str) -> Response<Body> {
    let mut response = Response::new(empty());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
    headers.insert(UPGRADE, HeaderValue::from_static(spdy::UPGRADE_TOKEN));
    headers.insert(STREAM_PROTOCOL_HEADER, HeaderValue::from_static(protocol));
    response
}

fn empty() -> Body {
    Full::new(Bytes::new()).map_err(|never| match never {}).boxed()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chooses_containers_like_the_apiserver() {
        assert_eq!(choose_container("p", None, &["web"], &[], None).expect("only"), "web");
        assert_eq!(choose_container("p", Some("side"), &["web", "side"], &[], None).expect("named"), "side");
        assert_eq!(choose_container("p", None, &["web", "side"], &[], Some("side")).expect("annotation"), "side");
        let err = choose_container("p", None, &["web", "side"], &["init"], None).expect_err("ambiguous");
        assert_eq!(err.to_string(), "a container name must be specified for pod p, choose one of: [web side] or one of the init containers: [init]");
        assert_eq!(err.status_code(), StatusCode::BAD_REQUEST);
        let missing = choose_container("p", Some("nope"), &["web"], &[], None).expect_err("missing");
        assert_eq!(missing.status_code(), StatusCode::NOT_FOUND);
    }

    #[test]
    fn negotiates_in_client_order() {
        let offered = vec!["v5.channel.k8s.io".to_string(), "v4.channel.k8s.io".to_string()];
        assert_eq!(negotiate(&offered, &["v4.channel.k8s.io", "v5.channel.k8s.io"]).expect("v5"), "v5.channel.k8s.io");
        let err = negotiate(&["v1.channel.k8s.io".to_string()], &["v4.channel.k8s.io"]).expect_err("none");
        assert_eq!(err.status_code(), StatusCode::FORBIDDEN);
        assert!(err.to_string().starts_with("unable to upgrade: unable to negotiate protocol"));
    }

    #[test]
    fn recognises_upgrades() {
        let ws = Request::builder()
            .header("Connection", "keep-alive, Upgrade")
            .header("Upgrade", "websocket")
            .header("Sec-WebSocket-Protocol", "v5.channel.k8s.io, v4.channel.k8s.io")
            .body(())
            .expect("req");
        assert!(is_websocket(&ws) && !is_spdy(&ws));
        assert_eq!(websocket_protocols(&ws), ["v5.channel.k8s.io", "v4.channel.k8s.io"]);
        let spdy = Request::builder()
            .header("Connection", "Upgrade")
            .header("Upgrade", "SPDY/3.1")
            .header("X-Stream-Protocol-Version", "v4.channel.k8s.io")
            .header("X-Stream-Protocol-Version", "v3.channel.k8s.io")
            .body(())
            .expect("req");
        assert!(is_spdy(&spdy) && !is_websocket(&spdy));
        assert_eq!(spdy_protocols(&spdy), ["v4.channel.k8s.io", "v3.channel.k8s.io"]);
    }
}
