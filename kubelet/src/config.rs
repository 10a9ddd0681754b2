//! The kubelet's checked configuration (what `main.rs` builds from flags and `rkube up`
//! builds directly).

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Duration;

/// How pods reach the pods of other nodes (`--pod-network-backend`), as flannel's
/// backends: plain routes through the other node's address, or a VXLAN overlay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PodNetworkBackend {
    /// `<podCIDR> via <InternalIP>` routes; only nodes on a directly connected subnet.
    HostGw,
    /// Every other node through the VXLAN device, connected or not.
    Vxlan,
    /// host-gw where the other node is on a directly connected subnet, VXLAN otherwise.
    #[default]
    Auto,
}

impl PodNetworkBackend {
    pub const NAMES: [&'static str; 3] = ["host-gw", "vxlan", "auto"];

    pub fn as_str(&self) -> &'static str {
        match self {
            PodNetworkBackend::HostGw => "host-gw",
            PodNetworkBackend::Vxlan => "vxlan",
            PodNetworkBackend::Auto => "auto",
        }
    }

    /// Whether this backend runs a VXLAN device.
    pub fn uses_vxlan(&self) -> bool {
        *self != PodNetworkBackend::HostGw
    }
}

impl std::fmt::Display for PodNetworkBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, thiserror::Error)]
#[error("unknown pod network backend {0:?} (expected host-gw, vxlan or auto)")]
pub struct UnknownBackend(String);

impl std::str::FromStr for PodNetworkBackend {
    type Err = UnknownBackend;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "host-gw" => Ok(PodNetworkBackend::HostGw),
            "vxlan" => Ok(PodNetworkBackend::Vxlan),
            "auto" => Ok(PodNetworkBackend::Auto),
            other => Err(UnknownBackend(other.to_string())),
        }
    }
}

/// Which container runtime the kubelet drives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuntimeKind {
    /// Real containers (namespaces, cgroups, overlayfs) through libcontainer.
    Linux,
    /// No processes: pods go Running at once (hollow nodes for scale tests).
    Fake,
}

#[derive(Debug, Clone)]
pub struct KubeletConfig {
    /// `--kubeconfig`; None means the in-cluster or default kubeconfig.
    pub kubeconfig: Option<PathBuf>,
    /// `--hostname-override` or the host's name, lowercased.
    pub node_name: String,
    /// `--node-ip`: the InternalIP the node reports.
    pub node_ip: Ipv4Addr,
    /// `--root-dir`: images, containers, pod volumes, logs.
    pub root_dir: PathBuf,
    /// `--cgroup-root`: every pod cgroup lives under this name on each hierarchy.
    pub cgroup_root: String,
    /// The node bridge pods attach to.
    pub bridge_name: String,
    /// `--cluster-cidr`: the whole pod network (every node's podCIDR lies in it). Pod
    /// traffic to it is routed unchanged; traffic elsewhere is masqueraded. None: only
    /// traffic within this node's podCIDR stays unmasqueraded (a single-node lab).
    pub cluster_cidr: Option<String>,
    /// `--pod-network-backend`: how pods reach other nodes' pods.
    pub pod_network_backend: PodNetworkBackend,
    /// `--vxlan-vni`: the VXLAN network identifier every node of the cluster uses (flannel's
    /// default is 1). Two clusters whose nodes share a network namespace need their own.
    pub vxlan_vni: u32,
    /// `--vxlan-port`: the UDP port of the VXLAN traffic (8472, flannel's and the kernel's
    /// historical default, not IANA's 4789).
    pub vxlan_port: u16,
    pub runtime: RuntimeKind,
    /// `--port`: the kubelet API (logs, exec, port-forward). 0 picks a free port.
    pub port: u16,
    /// `--address`: where the kubelet API listens.
    pub address: Ipv4Addr,
    /// `--cluster-dns` and `--cluster-domain`, written into pods' resolv.conf.
    pub cluster_dns: Vec<String>,
    pub cluster_domain: String,
    /// `--max-pods`.
    pub max_pods: u32,
    /// `--node-status-update-frequency` and the Lease renewal interval (10 s in Kubernetes).
    pub node_status_update_frequency: Duration,
    pub node_lease_renew_interval: Duration,
    /// How often the pod lifecycle event generator relists containers (1 s in Kubernetes).
    pub relist_period: Duration,
    /// `--image-gc-high-threshold` / `--image-gc-low-threshold` (percent of the disk).
    pub image_gc_high_threshold: u8,
    pub image_gc_low_threshold: u8,
    /// Labels set on the Node at registration (`--node-labels`).
    pub node_labels: Vec<(String, String)>,
    /// `--seccomp-default`: containers whose pod and container set no `seccompProfile`
    /// run under `RuntimeDefault` instead of unconfined.
    pub seccomp_default: bool,
    /// The kubelet API's serving certificate and key (`--tls-cert-file`,
    /// `--tls-private-key-file`); without them the kubelet makes a self-signed one under
    /// `ROOT/pki`, as the real kubelet does.
    pub tls_cert_file: Option<PathBuf>,
    pub tls_private_key_file: Option<PathBuf>,
    /// Client certificates signed by this CA bundle may call the kubelet API, as far as
    /// a SubjectAccessReview allows (`--client-ca-file`). Without it no caller can be
    /// authenticated and the API refuses everyone.
    pub client_ca_file: Option<PathBuf>,
}

impl KubeletConfig {
    /// Defaults for a node named `node_name` keeping its state under `root_dir`.
    pub fn new(node_name: &str, root_dir: PathBuf) -> KubeletConfig {
        KubeletConfig {
            kubeconfig: None,
            node_name: node_name.to_ascii_lowercase(),
            node_ip: Ipv4Addr::LOCALHOST,
            root_dir,
            cgroup_root: "rkube".into(),
            bridge_name: "rkube0".into(),
            cluster_cidr: None,
            pod_network_backend: PodNetworkBackend::Auto,
            vxlan_vni: 1,
            vxlan_port: 8472,
            runtime: RuntimeKind::Linux,
            port: 10250,
            address: Ipv4Addr::UNSPECIFIED,
            cluster_dns: Vec::new(),
            cluster_domain: "cluster.local".into(),
            max_pods: 110,
            node_status_update_frequency: Duration::from_secs(10),
            node_lease_renew_interval: Duration::from_secs(10),
            relist_period: Duration::from_secs(1),
            image_gc_high_threshold: 85,
            image_gc_low_threshold: 80,
            node_labels: Vec::new(),
            seccomp_default: false,
            tls_cert_file: None,
            tls_private_key_file: None,
            client_ca_file: None,
        }
    }

    pub fn logs_dir(&self) -> PathBuf {
        self.root_dir.join("logs").join("pods")
    }

    pub fn pods_dir(&self) -> PathBuf {
        self.root_dir.join("pods")
    }

    /// Where `Localhost` seccomp profiles are looked up (`localhostProfile` is relative
    /// to it), as the kubelet's `<root-dir>/seccomp`.
    pub fn seccomp_dir(&self) -> PathBuf {
        self.root_dir.join("seccomp")
    }

    /// Memory-backed volumes get a tmpfs on a node that runs containers; a hollow node's
    /// are plain directories.
    pub fn memory_backing(&self) -> crate::pods::volumes::MemoryBacking {
        match self.runtime {
            RuntimeKind::Linux => crate::pods::volumes::MemoryBacking::Tmpfs,
            RuntimeKind::Fake => crate::pods::volumes::MemoryBacking::Directory,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backends_parse_and_print() {
        for name in PodNetworkBackend::NAMES {
            let backend: PodNetworkBackend = name.parse().unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(backend.to_string(), name);
        }
        assert_eq!(PodNetworkBackend::default(), PodNetworkBackend::Auto);
        assert!(!PodNetworkBackend::HostGw.uses_vxlan());
        assert!(PodNetworkBackend::Auto.uses_vxlan());
        assert_eq!(
            "udp"
                .parse::<PodNetworkBackend>()
                .err()
                .map(|e| e.to_string())
                .as_deref(),
            Some("unknown pod network backend \"udp\" (expected host-gw, vxlan or auto)")
        );
    }
}
