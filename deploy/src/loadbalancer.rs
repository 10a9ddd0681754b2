//! The agent's client-side load balancer, as k3s agents run one: the kubelet and
//! kube-proxy talk to `https://127.0.0.1:<port>`, and each connection is passed whole
//! (TLS end to end: every apiserver's certificate names 127.0.0.1) to an apiserver that
//! accepts it. Connections stick to the last server that answered and move on when it
//! stops answering. The servers are those the `default/kubernetes` Endpoints list (every
//! live apiserver of the control plane, see the apiserver's `peers`), refreshed every
//! [`REFRESH`], with the `--server` the agent joined through kept as a last resort.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::Context as _;
use k8s_openapi::api::core::v1::Endpoints;
use kube::api::Api;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// Where agents listen by default (k3s's `--lb-server-port`).
pub const DEFAULT_PORT: u16 = 6444;
/// How often the server list is read again.
const REFRESH: Duration = Duration::from_secs(10);
/// How long one server gets to accept a connection before the next is tried.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Debug)]
struct Servers {
    /// The control plane's apiservers, in a stable order.
    list: RwLock<Vec<SocketAddr>>,
    /// The server the agent joined through, tried after the others.
    fallback: SocketAddr,
    /// Index in `list` (or `list.len()` for the fallback) of the last server that
    /// accepted a connection.
    preferred: AtomicUsize,
}

impl Servers {
    /// Every server, the preferred one first.
    fn in_order(&self) -> Vec<SocketAddr> {
        let mut all = self.list.read().unwrap_or_else(|e| e.into_inner()).clone();
        if !all.contains(&self.fallback) {
            all.push(self.fallback);
        }
        let start = self.preferred.load(Ordering::Relaxed) % all.len();
        all.rotate_left(start);
        all
    }

    fn prefer(&self, server: SocketAddr) {
        let list = self.list.read().unwrap_or_else(|e| e.into_inner());
        let index = list.iter().position(|s| *s == server).unwrap_or(list.len());
        self.preferred.store(index, Ordering::Relaxed);
    }

    fn set(&self, mut servers: Vec<SocketAddr>) {
        servers.sort();
        servers.dedup();
        let mut list = self.list.write().unwrap_or_else(|e| e.into_inner());
        if *list != servers {
            tracing::info!(?servers, "apiservers for the load balancer");
            // The preferred server keeps its preference where it still is listed.
            let current = list.get(self.preferred.load(Ordering::Relaxed)).copied();
            let index = current.and_then(|c| servers.iter().position(|s| *s == c)).unwrap_or(0);
            *list = servers;
            self.preferred.store(index, Ordering::Relaxed);
        }
    }
}

/// A running load balancer.
#[derive(Debug, Clone)]
pub struct LoadBalancer {
    servers: Arc<Servers>,
    local: SocketAddr,
}

impl LoadBalancer {
    /// Listens on `127.0.0.1:port` for connections to pass to the apiservers, starting
    /// with `server` (the URL the agent joined through), until `shutdown`.
    pub async fn start(port: u16, server: &str, shutdown: CancellationToken) -> anyhow::Result<LoadBalancer> {
        let url: http::Uri = server.parse().with_context(|| format!("--server {server}: not a URL"))?;
        let host = url.host().with_context(|| format!("--server {server}: no host"))?.trim_start_matches('[').trim_end_matches(']').to_string();
        let fallback = tokio::net::lookup_host((host.as_str(), url.port_u16().unwrap_or(6443)))
            .await
            .with_context(|| format!("resolving {host}"))?
            .next()
            .with_context(|| format!("{host} has no address"))?;
        let listener = TcpListener::bind(("127.0.0.1", port)).await.with_context(|| format!("listening on 127.0.0.1:{port} for the apiserver load balancer"))?;
        let local = listener.local_addr()?;
        let servers = Arc::new(Servers { list: RwLock::new(Vec::new()), fallback, preferred: AtomicUsize::new(0) });
        tokio::spawn(accept(listener, servers.clone(), shutdown));
        Ok(LoadBalancer { servers, local })
    }

    /// The URL clients use: `https://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("https://{}", self.local)
    }

    /// Keeps the server list current from the `kubernetes` Endpoints, read through
    /// `client` (which may itself go through this load balancer), until `shutdown`.
    pub async fn follow_endpoints(self, client: kube::Client, shutdown: CancellationToken) {
        let endpoints: Api<Endpoints> = Api::namespaced(client, "default");
        loop {
            match endpoints.get("kubernetes").await {
                Ok(ep) => {
                    let servers: Vec<SocketAddr> = ep
                        .subsets
                        .unwrap_or_default()
                        .iter()
                        .flat_map(|s| {
                            let port = s.ports.iter().flatten().find(|p| p.name.as_deref() == Some("https")).map(|p| p.port);
                            s.addresses.iter().flatten().filter_map(move |a| Some(SocketAddr::new(a.ip.parse().ok()?, u16::try_from(port?).ok()?)))
                        })
                        .collect();
                    if !servers.is_empty() {
                        self.servers.set(servers);
                    }
                }
                Err(e) => tracing::debug!(error = %e, "reading the kubernetes Endpoints failed; keeping the servers as they are"),
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(REFRESH) => {}
            }
        }
    }
}

async fn accept(listener: TcpListener, servers: Arc<Servers>, shutdown: CancellationToken) {
    loop {
        let (mut client, _) = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "the apiserver load balancer could not accept a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let servers = servers.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let Some(mut upstream) = connect(&servers).await else {
                return;
            };
            tokio::select! {
                _ = shutdown.cancelled() => {}
                _ = tokio::io::copy_bidirectional(&mut client, &mut upstream) => {}
            }
        });
    }
}

/// A connection to the first server that accepts one, the preferred first.
async fn connect(servers: &Servers) -> Option<TcpStream> {
    for server in servers.in_order() {
        match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(server)).await {
            Ok(Ok(stream)) => {
                servers.prefer(server);
                return Some(stream);
            }
            Ok(Err(e)) => tracing::debug!(%server, error = %e, "apiserver refused the connection; trying the next"),
            Err(_) => tracing::debug!(%server, "apiserver did not answer; trying the next"),
        }
    }
    tracing::warn!("no apiserver accepted a connection");
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn connections_go_to_a_server_that_answers_and_stick_to_it() {
        let shutdown = CancellationToken::new();
        // One live backend that says which it is; the fallback points at a closed port.
        let live = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let live_addr = live.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((mut s, _)) = live.accept().await {
                let _ = tokio::io::AsyncWriteExt::write_all(&mut s, b"live").await;
            }
        });
        let dead = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let dead_addr = dead.local_addr().expect("addr");
        drop(dead);
        let lb = LoadBalancer::start(0, &format!("https://{dead_addr}"), shutdown.clone()).await.expect("start");
        lb.servers.set(vec![dead_addr, live_addr]);
        for _ in 0..3 {
            let mut s = TcpStream::connect(lb.local).await.expect("connect");
            let mut got = String::new();
            tokio::io::AsyncReadExt::read_to_string(&mut s, &mut got).await.expect("read");
            assert_eq!(got, "live");
        }
        assert_eq!(lb.servers.in_order()[0], live_addr, "the server that answered is preferred");
        shutdown.cancel();
    }
}
