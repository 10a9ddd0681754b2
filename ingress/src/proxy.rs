//! The reverse proxy: each request is routed by [`crate::routes::route`] and sent to one
//! ready endpoint of the backend Service, in turn, over a pooled HTTP/1.1 connection;
//! HTTPS connections are terminated here (see [`crate::tls`]).

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue, CONNECTION, HOST, UPGRADE};
use http::{Request, Response, StatusCode, Uri, Version};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use k8s_openapi::api::core::v1::Service;
use kube::runtime::reflector::ObjectRef;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::routes::{self, Backend};
use crate::Caches;

type Body = Either<Incoming, Full<Bytes>>;

/// Headers that describe one hop, not the message (RFC 9110, 7.6.1).
const HOP_BY_HOP: &[&str] = &["connection", "keep-alive", "proxy-connection", "proxy-authenticate", "proxy-authorization", "te", "trailer", "transfer-encoding", "upgrade"];

struct Proxy {
    caches: Caches,
    client: Client<HttpConnector, Incoming>,
    next: AtomicUsize,
}

/// Serves HTTP (1.1 and cleartext 2) on `http`, and HTTPS with `https`'s configuration
/// on its listener, until `shutdown`.
pub async fn serve(http: TcpListener, https: Option<(TcpListener, Arc<rustls::ServerConfig>)>, caches: Caches, shutdown: CancellationToken) {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(std::time::Duration::from_secs(5)));
    let proxy = Arc::new(Proxy { caches, client: Client::builder(TokioExecutor::new()).build(connector), next: AtomicUsize::new(0) });
    let secure = https.map(|(listener, config)| tokio::spawn(accept_loop(listener, Some(tokio_rustls::TlsAcceptor::from(config)), proxy.clone(), shutdown.clone())));
    accept_loop(http, None, proxy, shutdown).await;
    if let Some(task) = secure {
        let _ = task.await;
    }
}

async fn accept_loop(listener: TcpListener, tls: Option<tokio_rustls::TlsAcceptor>, proxy: Arc<Proxy>, shutdown: CancellationToken) {
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    tracing::warn!(error = %e, "ingress: accepting a connection failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let (proxy, shutdown, tls) = (proxy.clone(), shutdown.clone(), tls.clone());
        tokio::spawn(async move {
            let secure = tls.is_some();
            let service = hyper::service::service_fn(move |req| {
                let proxy = proxy.clone();
                async move { Ok::<_, Infallible>(proxy.handle(req, peer, secure).await) }
            });
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            match tls {
                None => {
                    let connection = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
                    tokio::select! {
                        _ = connection => {}
                        _ = shutdown.cancelled() => {}
                    }
                }
                Some(acceptor) => {
                    let handshake = tokio::time::timeout(std::time::Duration::from_secs(10), acceptor.accept(stream));
                    let stream = match handshake.await {
                        Ok(Ok(stream)) => stream,
                        Ok(Err(e)) => return tracing::debug!(error = %e, %peer, "ingress: TLS handshake failed"),
                        Err(_) => return tracing::debug!(%peer, "ingress: TLS handshake timed out"),
                    };
                    let connection = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
                    tokio::select! {
                        _ = connection => {}
                        _ = shutdown.cancelled() => {}
                    }
                }
            }
        });
    }
}

fn text(status: StatusCode, message: String) -> Response<Body> {
    let mut response = Response::new(Either::Right(Full::new(Bytes::from(message + "\n"))));
    *response.status_mut() = status;
    response.headers_mut().insert(http::header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    response
}

/// Drops the hop-by-hop headers, and those the `Connection` header names.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(',').map(str::trim).filter_map(|n| HeaderName::from_bytes(n.as_bytes()).ok()))
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(*name);
    }
}

/// Whether a request asks to switch protocols (`Connection: upgrade` and an `Upgrade`).
fn wants_upgrade(headers: &HeaderMap) -> bool {
    let connection_upgrade = headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.split(',').any(|token| token.trim().eq_ignore_ascii_case("upgrade")));
    connection_upgrade && headers.contains_key(UPGRADE)
}

/// The ready endpoints (address and target port) of a backend Service port.
pub fn endpoints(caches: &Caches, backend: &Backend) -> Result<Vec<SocketAddr>, String> {
    let key = ObjectRef::<Service>::new(&backend.service).within(&backend.namespace);
    let what = format!("service \"{}/{}\"", backend.namespace, backend.service);
    let service = caches.services.get(&key).ok_or_else(|| format!("{what} not found"))?;
    let ports = service.spec.as_ref().and_then(|s| s.ports.as_ref()).cloned().unwrap_or_default();
    let port = ports
        .iter()
        .find(|p| match (&backend.port.number, &backend.port.name) {
            (Some(number), _) => p.port == *number,
            (None, Some(name)) => p.name.as_deref() == Some(name.as_str()),
            (None, None) => ports.len() == 1,
        })
        .ok_or_else(|| format!("{what} has no port {}", backend.port.number.map(|n| n.to_string()).or_else(|| backend.port.name.clone()).unwrap_or_default()))?;
    let port_name = port.name.clone().unwrap_or_default();
    let mut found = Vec::new();
    for slice in caches.slices.state() {
        let of_service = slice.metadata.namespace.as_deref() == Some(backend.namespace.as_str())
            && slice.metadata.labels.as_ref().and_then(|l| l.get("kubernetes.io/service-name")) == Some(&backend.service);
        if !of_service {
            continue;
        }
        let Some(target) = slice.ports.iter().flatten().find(|p| p.name.clone().unwrap_or_default() == port_name).and_then(|p| p.port) else { continue };
        let Ok(target) = u16::try_from(target) else { continue };
        for endpoint in slice.endpoints.iter().filter(|e| e.conditions.as_ref().and_then(|c| c.ready) != Some(false)) {
            for address in &endpoint.addresses {
                if let Ok(ip) = address.parse::<IpAddr>() {
                    found.push(SocketAddr::new(ip, target));
                }
            }
        }
    }
    found.sort();
    found.dedup();
    Ok(found)
}

impl Proxy {
    async fn handle(&self, mut req: Request<Incoming>, peer: SocketAddr, secure: bool) -> Response<Body> {
        let authority = req.headers().get(HOST).and_then(|h| h.to_str().ok()).map(str::to_string).or_else(|| req.uri().authority().map(|a| a.to_string())).unwrap_or_default();
        let host = routes::request_host(&authority);
        let path = req.uri().path().to_string();
        let served = self.caches.served();
        let Some(backend) = routes::route(&served, &host, &path) else {
            return text(StatusCode::NOT_FOUND, "404 page not found".into());
        };
        let targets = match endpoints(&self.caches, &backend) {
            Ok(targets) if !targets.is_empty() => targets,
            Ok(_) => return text(StatusCode::SERVICE_UNAVAILABLE, format!("no ready endpoints for service \"{}/{}\"", backend.namespace, backend.service)),
            Err(message) => return text(StatusCode::SERVICE_UNAVAILABLE, message),
        };
        let target = targets[self.next.fetch_add(1, Ordering::Relaxed) % targets.len()];
        let path_and_query = req.uri().path_and_query().map(|p| p.as_str().to_string()).unwrap_or_else(|| "/".into());
        let Ok(uri) = format!("http://{target}{path_and_query}").parse::<Uri>() else {
            return text(StatusCode::BAD_REQUEST, "malformed request path".into());
        };
        // An upgrade (WebSocket): the Upgrade header goes on to the backend, and once it
        // switches protocols the two connections are joined.
        let upgrade = wants_upgrade(req.headers()).then(|| (req.headers().get(UPGRADE).cloned(), hyper::upgrade::on(&mut req)));
        let headers = req.headers_mut();
        strip_hop_by_hop(headers);
        if let Some((Some(protocol), _)) = &upgrade {
            headers.insert(UPGRADE, protocol.clone());
            headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
        }
        if !headers.contains_key(HOST) {
            if let Ok(value) = HeaderValue::from_str(&authority) {
                headers.insert(HOST, value);
            }
        }
        let client_ip = peer.ip().to_string();
        let forwarded_for = match headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
            Some(earlier) => format!("{earlier}, {client_ip}"),
            None => client_ip.clone(),
        };
        for (name, value) in [("x-forwarded-for", forwarded_for), ("x-real-ip", client_ip), ("x-forwarded-host", authority.clone()), ("x-forwarded-proto", if secure { "https" } else { "http" }.to_string())] {
            if let Ok(value) = HeaderValue::from_str(&value) {
                headers.insert(name, value);
            }
        }
        *req.uri_mut() = uri;
        *req.version_mut() = Version::HTTP_11;
        match self.client.request(req).await {
            Ok(mut response) if response.status() == StatusCode::SWITCHING_PROTOCOLS => {
                let Some((_, from_client)) = upgrade else {
                    return text(StatusCode::BAD_GATEWAY, format!("bad gateway: {target} switched protocols unasked"));
                };
                let from_backend = hyper::upgrade::on(&mut response);
                tokio::spawn(async move {
                    match tokio::try_join!(from_client, from_backend) {
                        Ok((client, backend)) => {
                            let _ = tokio::io::copy_bidirectional(&mut TokioIo::new(client), &mut TokioIo::new(backend)).await;
                        }
                        Err(e) => tracing::debug!(error = %e, %target, "ingress: an upgrade did not complete"),
                    }
                });
                let (parts, body) = response.into_parts();
                Response::from_parts(parts, Either::Left(body))
            }
            Ok(response) => {
                let (mut parts, body) = response.into_parts();
                strip_hop_by_hop(&mut parts.headers);
                Response::from_parts(parts, Either::Left(body))
            }
            Err(e) => {
                tracing::debug!(error = %e, %target, "ingress: the backend did not answer");
                text(StatusCode::BAD_GATEWAY, format!("bad gateway: {target} did not answer"))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.append(HeaderName::from_bytes(k.as_bytes()).expect("name"), HeaderValue::from_str(v).expect("value"));
        }
        map
    }

    #[test]
    fn only_one_hops_headers_are_dropped() {
        let mut h = headers(&[("connection", "keep-alive, x-trace"), ("keep-alive", "timeout=5"), ("x-trace", "1"), ("upgrade", "websocket"), ("te", "trailers"), ("accept", "*/*"), ("host", "a")]);
        strip_hop_by_hop(&mut h);
        let mut left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        left.sort();
        assert_eq!(left, ["accept", "host"]);
    }

    #[test]
    fn upgrades_need_both_headers() {
        assert!(wants_upgrade(&headers(&[("connection", "keep-alive, Upgrade"), ("upgrade", "websocket")])));
        assert!(!wants_upgrade(&headers(&[("upgrade", "websocket")])));
        assert!(!wants_upgrade(&headers(&[("connection", "upgrade")])));
    }
}
