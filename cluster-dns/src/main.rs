//! `cluster-dns`: flags → checked config → [`cluster_dns::run`].

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;

/// Serves the cluster's DNS: Services and pods under the cluster domain, everything else
/// forwarded to the node's resolvers.
#[derive(Parser, Debug)]
#[command(name = "cluster-dns", version)]
struct Options {
    /// Path to a kubeconfig with the API server's address and credentials.
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// Address to serve DNS on, over UDP and TCP.
    #[arg(long, default_value = "0.0.0.0:53")]
    listen: SocketAddr,
    /// The cluster domain answered from Services and pods.
    #[arg(long, default_value = cluster_dns::DEFAULT_CLUSTER_DOMAIN)]
    cluster_domain: String,
    /// Upstream resolvers for other names, comma separated (IP or IP:PORT); default: the
    /// nameservers of /etc/resolv.conf (or systemd-resolved's when that lists only its stub).
    #[arg(long, value_delimiter = ',', value_parser = cluster_dns::parse_upstream)]
    upstream: Option<Vec<SocketAddr>>,
    /// TTL of cluster records and negative answers, in seconds.
    #[arg(long, default_value_t = cluster_dns::DEFAULT_TTL)]
    ttl: u32,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // hickory-server logs every query at info: only with RUST_LOG asking for it.
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info,hickory_server=warn".into()),
        )
        .init();
    let o = Options::parse();
    // Fail on a bad domain now rather than after connecting.
    cluster_dns::Zone::new(&o.cluster_domain, o.ttl).with_context(|| format!("--cluster-domain {:?}", o.cluster_domain))?;
    let config = cluster_dns::Config {
        kubeconfig: o.kubeconfig,
        listen: o.listen,
        cluster_domain: o.cluster_domain,
        upstreams: o.upstream,
        ttl: o.ttl,
    };
    let shutdown = component_base::signals::shutdown_on_signals();
    cluster_dns::run(config, shutdown).await.context("cluster-dns failed")
}
