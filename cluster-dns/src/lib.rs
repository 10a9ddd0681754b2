//! cluster-dns: the cluster's DNS server (what CoreDNS is in k3s). It watches Services and
//! EndpointSlices into an in-memory [`index`], answers names under the cluster domain from
//! it by the Kubernetes DNS specification ([`records`]), and forwards every other name to
//! the node's upstream resolvers ([`forward`]), over UDP and TCP on one port.
//!
//! Readiness: until the first list of Services *and* of EndpointSlices has completed, a
//! query for a cluster name waits for it (up to [`handler::READY_WAIT`], 2 s) and then
//! gets SERVFAIL, so that a client retries instead of caching a false NXDOMAIN. Forwarded
//! names are served from the start. Once synced, the index keeps serving what it last
//! saw while the watches reconnect.

#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod forward;
pub mod handler;
pub mod index;
pub mod records;
pub mod watch;

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use tokio::net::{TcpListener, UdpSocket};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

pub use forward::{parse_upstream, Forwarder};
pub use records::Zone;

/// The default cluster domain.
pub const DEFAULT_CLUSTER_DOMAIN: &str = "cluster.local";
/// The default TTL of cluster records (and of negative answers), as CoreDNS's `ttl 5`.
pub const DEFAULT_TTL: u32 = 5;
/// How long a TCP client may stay idle between queries.
const TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// Responses queued per TCP connection.
const TCP_RESPONSE_BUFFER: usize = 32;
/// Tries at a port free for both UDP and TCP when asked for any port.
const BIND_ATTEMPTS: usize = 64;

/// A checked cluster-dns configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// A kubeconfig with the API server's address and credentials; without one the client
    /// configuration is inferred (in-cluster, then `~/.kube/config`).
    pub kubeconfig: Option<PathBuf>,
    /// Where to serve UDP and TCP (`0.0.0.0:53`); port 0 picks a free port.
    pub listen: SocketAddr,
    /// The cluster domain (`cluster.local`).
    pub cluster_domain: String,
    /// Upstream resolvers; `None` reads the node's `/etc/resolv.conf` (see
    /// [`forward::system_upstreams`]).
    pub upstreams: Option<Vec<SocketAddr>>,
    /// TTL of cluster records and of negative answers, in seconds.
    pub ttl: u32,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            kubeconfig: None,
            listen: SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 53),
            cluster_domain: DEFAULT_CLUSTER_DOMAIN.to_string(),
            upstreams: None,
            ttl: DEFAULT_TTL,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    #[error("connecting to the API server")]
    Client(#[from] component_base::client::ClientError),
    #[error("binding UDP {addr}")]
    BindUdp {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("binding TCP {addr}")]
    BindTcp {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("found no port free for both UDP and TCP on {ip}")]
    NoFreePort { ip: IpAddr },
    #[error("checking the cluster domain")]
    Zone(#[from] records::ZoneError),
    #[error("serving DNS")]
    Serve(#[source] hickory_server::net::NetError),
}

/// A UDP socket and a TCP listener bound to the same address and port.
#[derive(Debug)]
pub struct Listeners {
    udp: UdpSocket,
    tcp: TcpListener,
    local_addr: SocketAddr,
}

impl Listeners {
    /// The address both listen on (with the port picked when 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The two sockets, for a server of another kind on the same port (tests' fake
    /// upstream resolvers).
    pub fn into_sockets(self) -> (UdpSocket, TcpListener) {
        (self.udp, self.tcp)
    }
}

/// Binds UDP and TCP on `addr`; with port 0, on a port that is free for both.
pub async fn bind(addr: SocketAddr) -> Result<Listeners, DnsError> {
    let attempts = if addr.port() == 0 { BIND_ATTEMPTS } else { 1 };
    for _ in 0..attempts {
        let udp = UdpSocket::bind(addr).await.map_err(|source| DnsError::BindUdp { addr, source })?;
        let local_addr = udp.local_addr().map_err(|source| DnsError::BindUdp { addr, source })?;
        match TcpListener::bind(local_addr).await {
            Ok(tcp) => return Ok(Listeners { udp, tcp, local_addr }),
            // The port the kernel gave for UDP is taken for TCP: try another one.
            Err(e) if addr.port() == 0 && e.kind() == io::ErrorKind::AddrInUse => continue,
            Err(source) => return Err(DnsError::BindTcp { addr: local_addr, source }),
        }
    }
    Err(DnsError::NoFreePort { ip: addr.ip() })
}

/// Serves DNS on `listeners` from the cluster `client` reaches, until `shutdown`.
pub async fn serve(
    config: Config,
    listeners: Listeners,
    client: kube::Client,
    shutdown: CancellationToken,
) -> Result<(), DnsError> {
    let zone = Zone::new(&config.cluster_domain, config.ttl)?;
    let local_addr = listeners.local_addr();
    let upstreams = match config.upstreams {
        Some(upstreams) => upstreams,
        None => forward::system_upstreams().unwrap_or_else(|error| {
            warn!(error = %error, "no upstream resolvers: names outside the cluster domain will fail");
            vec![]
        }),
    };
    let upstreams = without_self(upstreams, local_addr);

    let state = watch::ClusterState::new(index::Index::new());
    let watches = shutdown.child_token();
    let watcher = tokio::spawn(watch::watch_cluster(client, state.clone(), watches.clone()));

    let handler = handler::Handler::new(state, zone, Forwarder::new(upstreams.clone()));
    let mut server = hickory_server::Server::new(handler);
    server.register_socket(listeners.udp);
    server.register_listener(listeners.tcp, TCP_IDLE_TIMEOUT, TCP_RESPONSE_BUFFER);
    info!(addr = %local_addr, domain = %config.cluster_domain, upstreams = ?upstreams, "serving DNS");

    let stop = server.shutdown_token().clone();
    tokio::spawn({
        let stop = stop.clone();
        async move {
            tokio::select! {
                _ = shutdown.cancelled() => stop.cancel(),
                _ = stop.cancelled() => {}
            }
        }
    });
    // Ends on shutdown, or early when a socket fails.
    let result = server.block_until_done().await;
    stop.cancel();
    watches.cancel();
    if let Err(error) = watcher.await {
        warn!(%error, "the watch task ended abnormally");
    }
    info!(addr = %local_addr, "stopped serving DNS");
    result.map_err(DnsError::Serve)
}

/// `upstreams` without the server itself (a loop), e.g. 127.0.0.1:53 when serving on
/// 0.0.0.0:53.
fn without_self(upstreams: Vec<SocketAddr>, local: SocketAddr) -> Vec<SocketAddr> {
    upstreams
        .into_iter()
        .filter(|u| {
            let is_self = u.port() == local.port()
                && (u.ip() == local.ip() || (local.ip().is_unspecified() && u.ip().is_loopback()));
            if is_self {
                warn!(upstream = %u, "ignoring an upstream that is this server");
            }
            !is_self
        })
        .collect()
}

/// Builds the API client from `config.kubeconfig`, binds `config.listen` and serves until
/// `shutdown`.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), DnsError> {
    let client = component_base::client::client(config.kubeconfig.as_deref()).await?;
    let listeners = bind(config.listen).await?;
    serve(config, listeners, client, shutdown).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn any_port_is_free_for_both_protocols() {
        let listeners = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = listeners.local_addr();
        assert_ne!(addr.port(), 0);
        assert_eq!(listeners.tcp.local_addr().unwrap(), addr);
        assert_eq!(listeners.udp.local_addr().unwrap(), addr);
        // The port is really taken for both.
        assert!(matches!(bind(addr).await, Err(DnsError::BindUdp { .. })));
    }

    #[test]
    fn the_server_is_not_its_own_upstream() {
        let up = |s: &str| s.parse::<SocketAddr>().unwrap();
        let kept = without_self(vec![up("127.0.0.1:53"), up("10.0.0.2:53"), up("127.0.0.1:5353")], up("0.0.0.0:53"));
        assert_eq!(kept, vec![up("10.0.0.2:53"), up("127.0.0.1:5353")]);
        let kept = without_self(vec![up("127.0.0.1:53"), up("127.0.0.2:53")], up("127.0.0.2:53"));
        assert_eq!(kept, vec![up("127.0.0.1:53")]);
    }
}
