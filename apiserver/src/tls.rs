//! Serving the API over TLS: rustls with the serving certificate, client certificates
//! verified against the client CA during the handshake (optional, so token and anonymous
//! requests still reach authentication), HTTP/1.1 and HTTP/2 by ALPN, upgrades for exec
//! and port-forward. The identity a client certificate proves is read once per
//! connection and handed to every request on it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::auth::UserInfo;

/// How long a client may take to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long open connections (watches, exec sessions) get to finish after shutdown.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

pub use component_base::tls::TlsError;

/// The user a connection's client certificate names, if it presented one (already
/// verified against the client CA by the handshake).
#[derive(Debug, Clone, Default)]
pub struct PeerIdentity(pub Option<UserInfo>);

/// The apiserver's TLS configuration: HTTP/2 and HTTP/1.1, client certificates signed
/// by one of `client_cas` (DER) verified when presented.
pub fn server_config(cert_pem: &str, key_pem: &str, client_cas: &[Vec<u8>]) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let serving = component_base::pki::CertPair { cert_pem: cert_pem.to_string(), key_pem: key_pem.to_string() };
    component_base::tls::server_config(&serving, client_cas, component_base::tls::ClientAuth::Optional, &["h2", "http/1.1"])
}

/// The user a verified client certificate names: CN is the user, each O a group.
pub fn certificate_user(der: &[u8]) -> Option<UserInfo> {
    let (name, groups) = component_base::pki::subject_of(der)?;
    (!name.is_empty()).then(|| UserInfo { name, groups, ..Default::default() })
}

/// Serves `router` over TLS on `listener` until `shutdown`.
pub async fn serve(listener: TcpListener, config: Arc<rustls::ServerConfig>, router: Router, shutdown: CancellationToken) -> std::io::Result<()> {
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let builder = Builder::new(TokioExecutor::new());
    loop {
        let (tcp, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: wait a moment, keep serving.
                    warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let router = router.clone();
        let builder = builder.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => return debug!(%peer, error = %e, "TLS handshake failed"),
                Err(_) => return debug!(%peer, "TLS handshake timed out"),
            };
            let identity = PeerIdentity(stream.get_ref().1.peer_certificates().and_then(|c| c.first()).and_then(|c| certificate_user(c.as_ref())));
            let service = hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
                req.extensions_mut().insert(identity.clone());
                req.extensions_mut().insert(axum::extract::ConnectInfo(peer));
                let mut router = router.clone();
                async move { tower::Service::call(&mut router, req.map(axum::body::Body::new)).await }
            });
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
            if let Err(e) = watcher.watch(conn.into_owned()).await {
                debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown()).await.is_err() {
        debug!("connections still open after the drain timeout; closing them");
    }
    Ok(())
}

/// The address a URL for `addr` should name: loopback for an unspecified bind address.
pub fn client_address(addr: SocketAddr) -> SocketAddr {
    if addr.ip().is_unspecified() {
        SocketAddr::new(std::net::IpAddr::from([127, 0, 0, 1]), addr.port())
    } else {
        addr
    }
}
