//! `kube-proxy`: flags → checked config → [`kube_proxy::run`].

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;

/// Programs Services into an nftables table on this node.
#[derive(Parser, Debug)]
#[command(name = "kube-proxy", version)]
struct Options {
    /// Path to a kubeconfig with the API server's address and credentials.
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// The node's name (default: the host name, lowercased).
    #[arg(long)]
    hostname_override: Option<String>,
    /// The pods' address range; ClusterIP traffic from outside it is masqueraded.
    #[arg(long)]
    cluster_cidr: Option<ipnet::Ipv4Net>,
    /// The nftables table (family ip) this kube-proxy owns.
    #[arg(long, default_value = kube_proxy::DEFAULT_TABLE)]
    nftables_table: String,
    /// Changes arriving within this many milliseconds are synced together.
    #[arg(long, default_value_t = 50)]
    min_sync_period_ms: u64,
    /// Remove the table and exit (what a node does when it leaves the cluster).
    #[arg(long)]
    cleanup: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .init();
    let o = Options::parse();
    if o.cleanup {
        return kube_proxy::cleanup(&o.nftables_table).context("kube-proxy --cleanup failed");
    }
    let node_name = match o.hostname_override {
        Some(name) => name.to_ascii_lowercase(),
        None => std::fs::read_to_string("/proc/sys/kernel/hostname")
            .context("reading the host name (or pass --hostname-override)")?
            .trim()
            .to_ascii_lowercase(),
    };
    let mut config = kube_proxy::Config::new(&node_name);
    config.kubeconfig = o.kubeconfig;
    config.cluster_cidr = o.cluster_cidr;
    config.table = o.nftables_table;
    config.min_sync_period = Duration::from_millis(o.min_sync_period_ms);
    let shutdown = component_base::signals::shutdown_on_signals();
    kube_proxy::run(config, shutdown).await.context("kube-proxy failed")
}
