//! `kube-apiserver`: flags → checked config → [`apiserver::run`].

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use anyhow::Context;
use apiserver::admission::ServiceRanges;
use clap::Parser;
use tokio_util::sync::CancellationToken;

/// The Kubernetes API server of rkube.
#[derive(Parser, Debug)]
#[command(name = "kube-apiserver", version)]
struct Options {
    /// Directory for the embedded store and the admin kubeconfig.
    #[arg(long, default_value = "/var/lib/rkube/server")]
    data_dir: PathBuf,
    /// Port to serve the API on.
    #[arg(long, default_value_t = 6443)]
    secure_port: u16,
    /// Address to listen on. Until authentication lands the API is open to whoever can
    /// reach it, so the default is loopback.
    #[arg(long, default_value = "127.0.0.1")]
    bind_address: IpAddr,
    /// The address advertised to the cluster (the `kubernetes` Service's endpoint).
    #[arg(long)]
    advertise_address: Option<IpAddr>,
    /// etcd v3 endpoints (comma-separated). Without it the embedded store is used.
    #[arg(long, value_delimiter = ',')]
    etcd_servers: Vec<String>,
    /// The range Service ClusterIPs are allocated from.
    #[arg(long, default_value = "10.43.0.0/16")]
    service_cluster_ip_range: String,
    /// The range NodePorts are allocated from.
    #[arg(long, default_value = "30000-32767")]
    service_node_port_range: String,
}

// glibc's allocator fragments under the apiserver's many short-lived JSON trees (malloc
// and free were a third of the CPU of a create); mimalloc does not.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .init();
    let opts = Options::parse();
    let service_ranges = ServiceRanges::parse(&opts.service_cluster_ip_range, &opts.service_node_port_range)
        .map_err(|e| anyhow::anyhow!("--service-cluster-ip-range/--service-node-port-range: {e}"))?;
    let config = apiserver::Config {
        data_dir: opts.data_dir,
        bind: SocketAddr::new(opts.bind_address, opts.secure_port),
        etcd_servers: opts.etcd_servers,
        service_ranges,
        advertise_address: opts.advertise_address.unwrap_or(if opts.bind_address.is_unspecified() { IpAddr::from([127, 0, 0, 1]) } else { opts.bind_address }),
    };
    let shutdown = CancellationToken::new();
    let token = shutdown.clone();
    tokio::spawn(async move {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => return,
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        token.cancel();
    });
    apiserver::run(config, shutdown, None).await.context("kube-apiserver failed")
}
