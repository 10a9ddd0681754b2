//! `kube-controller-manager`: flags → checked config → [`controller_manager::run`].

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;

/// The controllers of rkube.
#[derive(Parser, Debug)]
#[command(name = "kube-controller-manager", version)]
struct Options {
    /// Path to a kubeconfig with the API server's address and credentials.
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// Controllers to run: `*` for the defaults, `foo` to enable, `-foo` to disable.
    #[arg(long, value_delimiter = ',', default_value = "*")]
    controllers: Vec<String>,
    /// Elect a leader through a Lease so that only one copy acts.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    leader_elect: bool,
    /// Seconds a leader's Lease lasts without renewal.
    #[arg(long, default_value = "15s", value_parser = seconds)]
    leader_elect_lease_duration: Duration,
    /// Seconds the leader keeps trying to renew before it stops leading.
    #[arg(long, default_value = "10s", value_parser = seconds)]
    leader_elect_renew_deadline: Duration,
    /// Seconds between attempts to take or renew the Lease.
    #[arg(long, default_value = "2s", value_parser = seconds)]
    leader_elect_retry_period: Duration,
    /// The pod network, from which each node gets a podCIDR.
    #[arg(long)]
    cluster_cidr: Option<String>,
    /// The prefix length of each node's podCIDR.
    #[arg(long, default_value_t = 24)]
    node_cidr_mask_size: u8,
    /// Where the local-path provisioner creates volumes' directories.
    #[arg(long, default_value = "/var/lib/rkube/storage")]
    local_path_root: std::path::PathBuf,
    /// Addresses for LoadBalancer Services, one per Service: CIDRs (their network and
    /// broadcast addresses left out) or first-last ranges, comma-separated, e.g.
    /// `192.168.1.240/28` or `192.168.1.240-192.168.1.250`. Without it, LoadBalancer
    /// Services get the Ready nodes' addresses.
    #[arg(long, value_parser = load_balancer_ip_pool)]
    load_balancer_ip_pool: Option<String>,
    /// Seconds a node may go without renewing its Lease before it is NotReady.
    #[arg(long, default_value_t = 40)]
    node_monitor_grace_period: u64,
    /// Seconds between syncs of each HorizontalPodAutoscaler.
    #[arg(long, default_value_t = 15)]
    horizontal_pod_autoscaler_sync_period: u64,
    /// Seconds of recommendations a scale-down looks back over, unless the HPA's
    /// behavior sets its own window.
    #[arg(long, default_value_t = 300)]
    horizontal_pod_autoscaler_downscale_stabilization: u64,
    /// The ratio of usage to target within which the HPA does not scale.
    #[arg(long, default_value_t = 0.1)]
    horizontal_pod_autoscaler_tolerance: f64,
    /// Seconds after a pod starts during which its cpu samples may be skipped.
    #[arg(long, default_value_t = 300)]
    horizontal_pod_autoscaler_cpu_initialization_period: u64,
    /// Seconds after a pod starts during which its readiness changes are taken as initial.
    #[arg(long, default_value_t = 30)]
    horizontal_pod_autoscaler_initial_readiness_delay: u64,
    /// The cluster CA certificate (PEM) published to every namespace as the ConfigMap
    /// `kube-root-ca.crt`. Without it the root-ca-cert-publisher controller does not run.
    #[arg(long)]
    root_ca_file: Option<PathBuf>,
    /// The CA certificate (PEM) that signs the certificates of CertificateSigningRequests
    /// for the kubernetes.io/kube-apiserver-client, kube-apiserver-client-kubelet and
    /// kubelet-serving signers. Without it (and the key) nothing is signed.
    #[arg(long, requires = "cluster_signing_key_file")]
    cluster_signing_cert_file: Option<PathBuf>,
    /// The private key (PEM) of --cluster-signing-cert-file.
    #[arg(long, requires = "cluster_signing_cert_file")]
    cluster_signing_key_file: Option<PathBuf>,
    /// The longest certificate signed, as a Go duration (`8760h0m0s`, `720h`, `30m`); a
    /// request may ask for less with spec.expirationSeconds.
    #[arg(long, default_value = "8760h0m0s", value_parser = go_duration)]
    cluster_signing_duration: Duration,
}

/// A duration flag as Kubernetes writes them for these options: `15s` (or just `15`).
fn seconds(text: &str) -> Result<Duration, String> {
    let n = text.strip_suffix('s').unwrap_or(text);
    n.parse::<u64>().map(Duration::from_secs).map_err(|_| format!("{text:?} is not a duration in seconds such as 15s"))
}

/// `--cluster-signing-duration`: a Go duration (`8760h0m0s`, `720h`, `30m`).
fn go_duration(text: &str) -> Result<Duration, String> {
    controller_manager::controllers::hpa::source::parse_go_duration(text)
        .filter(|d| !d.is_zero())
        .ok_or_else(|| format!("{text:?} is not a duration such as 8760h0m0s"))
}

/// `--load-balancer-ip-pool`, checked (and kept as text for the config).
fn load_balancer_ip_pool(text: &str) -> Result<String, String> {
    controller_manager::controllers::servicelb::pool::Pool::parse(text).map(|_| text.to_string()).map_err(|e| e.to_string())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .init();
    let o = Options::parse();
    let config = controller_manager::Config {
        kubeconfig: o.kubeconfig,
        controllers: o.controllers,
        leader_elect: o.leader_elect,
        leader_elect_lease_duration: o.leader_elect_lease_duration,
        leader_elect_renew_deadline: o.leader_elect_renew_deadline,
        leader_elect_retry_period: o.leader_elect_retry_period,
        cluster_cidr: o.cluster_cidr,
        node_cidr_mask_size: o.node_cidr_mask_size,
        node_monitor_grace_period: Duration::from_secs(o.node_monitor_grace_period),
        hpa_sync_period: Duration::from_secs(o.horizontal_pod_autoscaler_sync_period),
        local_path_root: o.local_path_root,
        load_balancer_ip_pool: o.load_balancer_ip_pool,
        root_ca_file: o.root_ca_file,
        cluster_signing_cert_file: o.cluster_signing_cert_file,
        cluster_signing_key_file: o.cluster_signing_key_file,
        cluster_signing_duration: o.cluster_signing_duration,
        hpa_tuning: controller_manager::controllers::hpa::recommend::Tuning {
            tolerance: o.horizontal_pod_autoscaler_tolerance,
            cpu_initialization_period: Duration::from_secs(o.horizontal_pod_autoscaler_cpu_initialization_period),
            initial_readiness_delay: Duration::from_secs(o.horizontal_pod_autoscaler_initial_readiness_delay),
            downscale_stabilization: Duration::from_secs(o.horizontal_pod_autoscaler_downscale_stabilization),
        },
        ..Default::default()
    };
    let shutdown = component_base::signals::shutdown_on_signals();
    controller_manager::run(config, shutdown).await.context("kube-controller-manager failed")
}
