//! `kubelet`: flags → checked config → `kubelet::run`.

use std::net::Ipv4Addr;
use std::path::PathBuf;

use clap::Parser;

#[derive(Parser, Debug)]
#[command(name = "kubelet", version = kubelet::node::KUBELET_VERSION, about = "The rkube node agent: runs the pods bound to this node in the embedded container runtime.")]
struct Options {
    /// kubeconfig with the API server's address and credentials.
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// The node's name (defaults to the host name).
    #[arg(long)]
    hostname_override: Option<String>,
    /// The node's address (InternalIP).
    #[arg(long)]
    node_ip: Option<Ipv4Addr>,
    /// Where images, containers, pod volumes and logs live.
    #[arg(long, default_value = "/var/lib/rkube/kubelet")]
    root_dir: PathBuf,
    /// Parent cgroup for all pods, on every hierarchy.
    #[arg(long, default_value = "rkube")]
    cgroup_root: String,
    /// The node bridge pods attach to.
    #[arg(long, default_value = "rkube0")]
    bridge_name: String,
    /// Port of the kubelet API (logs, exec, port-forward).
    #[arg(long, default_value_t = 10250)]
    port: u16,
    /// Address the kubelet API listens on.
    #[arg(long, default_value = "0.0.0.0")]
    address: Ipv4Addr,
    /// DNS server IPs written into pods' resolv.conf (comma-separated).
    #[arg(long, value_delimiter = ',')]
    cluster_dns: Vec<String>,
    #[arg(long, default_value = "cluster.local")]
    cluster_domain: String,
    #[arg(long, default_value_t = 110)]
    max_pods: u32,
    /// `fake` runs no processes (hollow nodes for scale tests).
    #[arg(long, default_value = "linux", value_parser = ["linux", "fake"])]
    runtime: String,
    /// Labels to add at registration, `key=value,…`.
    #[arg(long, value_delimiter = ',')]
    node_labels: Vec<String>,
    /// The cluster's pod network (every node's podCIDR lies in it): pod traffic to it is
    /// routed as it is, traffic elsewhere is masqueraded. Without it, only traffic inside
    /// this node's podCIDR escapes the masquerade.
    #[arg(long)]
    cluster_cidr: Option<String>,
    /// How pods reach other nodes' pods: `host-gw` routes via the other node's address
    /// (only nodes on a directly connected subnet), `vxlan` through the VXLAN overlay for
    /// every node, `auto` host-gw where directly connected and VXLAN otherwise.
    #[arg(long, default_value = "auto", value_parser = kubelet::config::PodNetworkBackend::NAMES)]
    pod_network_backend: String,
    /// The VXLAN network identifier (the same on every node of the cluster; two clusters
    /// sharing a host need their own).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=16_777_215))]
    vxlan_vni: u32,
    /// The UDP port of the VXLAN traffic (flannel's default).
    #[arg(long, default_value_t = 8472)]
    vxlan_port: u16,
    /// Instead of running: stop every container of this node and remove what it set up
    /// on the host (mounts, namespaces, veths, the bridge, cgroups, the masquerade table,
    /// pod routes, the VXLAN device) for the same --root-dir, --bridge-name and
    /// --cgroup-root; then exit.
    #[arg(long)]
    teardown: bool,
    /// Run containers that set no seccompProfile under RuntimeDefault rather than
    /// unconfined (Kubernetes' `--seccomp-default`).
    #[arg(long)]
    seccomp_default: bool,
    /// The kubelet API's serving certificate (PEM). Without it a self-signed one is made
    /// under --root-dir/pki.
    #[arg(long, requires = "tls_private_key_file")]
    tls_cert_file: Option<PathBuf>,
    /// The serving certificate's private key (PEM, PKCS#8).
    #[arg(long, requires = "tls_cert_file")]
    tls_private_key_file: Option<PathBuf>,
    /// Callers of the kubelet API must present a client certificate signed by this CA
    /// bundle; each request is then authorized by a SubjectAccessReview. Without it
    /// nobody can use the kubelet API (logs, exec, port-forward).
    #[arg(long)]
    client_ca_file: Option<PathBuf>,
}

fn main() -> anyhow::Result<()> {
    kubelet::runtime::linux::shim_main_if_requested();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .init();
    let options = Options::parse();
    let hostname = options
        .hostname_override
        .clone()
        .or_else(|| nix::unistd::gethostname().ok().map(|h| h.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "localhost".into());
    let mut config = kubelet::KubeletConfig::new(&hostname, options.root_dir);
    config.kubeconfig = options.kubeconfig;
    config.node_ip = match options.node_ip {
        Some(ip) => ip,
        None => kubelet::node::default_node_ip(),
    };
    config.cgroup_root = options.cgroup_root;
    config.bridge_name = options.bridge_name;
    config.port = options.port;
    config.address = options.address;
    config.tls_cert_file = options.tls_cert_file;
    config.tls_private_key_file = options.tls_private_key_file;
    config.client_ca_file = options.client_ca_file;
    config.cluster_dns = options.cluster_dns;
    config.cluster_domain = options.cluster_domain;
    config.max_pods = options.max_pods;
    config.seccomp_default = options.seccomp_default;
    if let Some(cidr) = &options.cluster_cidr {
        kubelet::network::parse_cluster_cidr(cidr)?;
    }
    config.cluster_cidr = options.cluster_cidr;
    config.pod_network_backend = options.pod_network_backend.parse()?;
    config.vxlan_vni = options.vxlan_vni;
    config.vxlan_port = options.vxlan_port;
    config.runtime = if options.runtime == "fake" { kubelet::RuntimeKind::Fake } else { kubelet::RuntimeKind::Linux };
    for label in options.node_labels {
        let (k, v) = label.split_once('=').ok_or_else(|| anyhow::anyhow!("--node-labels: {label:?} is not key=value"))?;
        config.node_labels.push((k.to_string(), v.to_string()));
    }
    let runtime = tokio::runtime::Runtime::new()?;
    if options.teardown {
        runtime.block_on(kubelet::teardown(&config))?;
        tracing::info!(node = %config.node_name, "node torn down");
        return Ok(());
    }
    runtime.block_on(async {
        let shutdown = component_base::signals::shutdown_on_signals();
        kubelet::run(config, shutdown).await
    })?;
    Ok(())
}
