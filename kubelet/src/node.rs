//! The node's side of the API: registration of the Node object (capacity, addresses,
//! conditions, node info), its Lease in `kube-node-lease` renewed every 10 s, and the
//! status heartbeat. The node turns Ready once the runtime's pod network is configured
//! from the podCIDR the controller-manager assigns, as a real node waits for its CNI.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::{
    ContainerImage, DaemonEndpoint, Node, NodeAddress, NodeCondition, NodeDaemonEndpoints, NodeSpec, NodeStatus,
    NodeSystemInfo, ObjectReference,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, OwnerReference, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams, PostParams};
use tokio_util::sync::CancellationToken;

use crate::config::KubeletConfig;
use crate::runtime::{ImageService, Runtime};

pub const KUBELET_VERSION: &str = "v1.33.0-rkube";
const LEASE_NAMESPACE: &str = "kube-node-lease";
const LEASE_DURATION_SECONDS: i32 = 40;

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("registering node {node}: {source}")]
    Register {
        node: String,
        #[source]
        source: kube::Error,
    },
    #[error("updating node {node} status: {source}")]
    Status {
        node: String,
        #[source]
        source: kube::Error,
    },
}

/// Keeps the Node object and its Lease current.
pub struct NodeAgent {
    config: KubeletConfig,
    client: kube::Client,
    runtime: Arc<dyn Runtime>,
    images: Arc<dyn ImageService>,
    /// The kubelet API's real port (known once it listens).
    kubelet_port: u16,
    /// The podCIDR once applied to the runtime.
    network_ready: tokio::sync::watch::Sender<Option<String>>,
    /// Records the node's events (`kubectl describe node`).
    recorder: component_base::events::EventRecorder,
    /// Each condition's status and when it last changed (`lastTransitionTime`), as last
    /// posted or read from the Node: a post that changes a status moves its time and
    /// records the change as an event (`NodeReady`, `NodeHasSufficientMemory`…).
    transitions: std::sync::Mutex<BTreeMap<String, (String, Time)>>,
}

impl NodeAgent {
    pub fn new(
        config: KubeletConfig,
        client: kube::Client,
        runtime: Arc<dyn Runtime>,
        images: Arc<dyn ImageService>,
        kubelet_port: u16,
    ) -> NodeAgent {
        let recorder = component_base::events::EventRecorder::new(client.clone(), "kubelet", Some(&config.node_name));
        NodeAgent {
            config,
            client,
            runtime,
            images,
            kubelet_port,
            network_ready: tokio::sync::watch::channel(None).0,
            recorder,
            transitions: std::sync::Mutex::new(BTreeMap::new()),
        }
    }

    /// Resolves once the pod network is configured (the podCIDR applied to the runtime).
    pub fn network_ready(&self) -> tokio::sync::watch::Receiver<Option<String>> {
        self.network_ready.subscribe()
    }

    /// Registers the node, then posts status and renews the Lease until shutdown.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let mut backoff = Duration::from_millis(200);
        // What the Node said before this kubelet registered it (a restarted kubelet finds
        // its conditions there), read first so that registration does not hide it.
        let mut prior = None;
        loop {
            if prior.is_none() {
                prior = Api::<Node>::all(self.client.clone()).get_opt(&self.config.node_name).await.ok().map(|n| n.and_then(|n| n.status).and_then(|s| s.conditions).unwrap_or_default());
                if let Some(conditions) = &prior {
                    // The API answers: announce the start, and keep the transition times a
                    // restarted kubelet's conditions had.
                    self.recorder.record(&self.node_ref(), "Normal", "Starting", "Starting kubelet.").await;
                    self.observe(conditions);
                }
            }
            match self.register().await {
                Ok(()) => break,
                Err(e) => tracing::warn!(error = %e, "node registration failed; retrying"),
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(7));
        }
        tracing::info!(node = %self.config.node_name, "node registered");
        let lease = tokio::spawn(self.clone().lease_loop(shutdown.clone()));
        self.status_loop(shutdown).await;
        let _ = lease.await;
    }

    async fn register(&self) -> Result<(), NodeError> {
        let api: Api<Node> = Api::all(self.client.clone());
        let mut labels: BTreeMap<String, String> = [
            ("kubernetes.io/hostname", self.config.node_name.as_str()),
            ("kubernetes.io/os", "linux"),
            ("kubernetes.io/arch", go_arch()),
            ("beta.kubernetes.io/os", "linux"),
            ("beta.kubernetes.io/arch", go_arch()),
            ("node-role.kubernetes.io/control-plane", "true"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        labels.extend(self.config.node_labels.iter().cloned());
        let before = self.statuses();
        let node = Node {
            metadata: ObjectMeta { name: Some(self.config.node_name.clone()), labels: Some(labels), ..Default::default() },
            spec: Some(NodeSpec::default()),
            status: Some(self.status(false, "").await),
        };
        match api.create(&PostParams::default(), &node).await {
            Ok(_) => {
                let conditions = node.status.as_ref().and_then(|s| s.conditions.as_deref()).unwrap_or_default();
                self.observe(conditions);
                self.record_changes(&before, conditions).await;
                Ok(())
            }
            Err(kube::Error::Api(s)) if s.code == 409 => {
                // Re-registration after a restart: the labels we own are refreshed; the
                // status is posted by the status loop.
                let patch = serde_json::json!({"metadata": {"labels": node.metadata.labels}});
                api.patch(&self.config.node_name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                    .map(|_| ())
                    .map_err(|source| NodeError::Register { node: self.config.node_name.clone(), source })
            }
            Err(source) => Err(NodeError::Register { node: self.config.node_name.clone(), source }),
        }
    }

    /// The kubelet's reference to its Node in events: as Kubernetes' kubelet does, the
    /// node's name stands in for its uid (`kubectl describe node` looks for both).
    fn node_ref(&self) -> ObjectReference {
        ObjectReference {
            kind: Some("Node".into()),
            name: Some(self.config.node_name.clone()),
            uid: Some(self.config.node_name.clone()),
            ..Default::default()
        }
    }

    /// Each condition's status as last posted or read.
    fn statuses(&self) -> BTreeMap<String, String> {
        self.transitions.lock().unwrap_or_else(|p| p.into_inner()).iter().map(|(k, (status, _))| (k.clone(), status.clone())).collect()
    }

    /// Records the conditions whose status differs from `before` as Kubernetes' kubelet
    /// does: "Node vm status is now: NodeReady" and the like, all Normal. As there, a
    /// Ready condition the node did not have yet is not an event (a fresh node, created
    /// NotReady until its pod network is set up, shows only its NodeReady); the pressure
    /// conditions are recorded from their first status.
    async fn record_changes(&self, before: &BTreeMap<String, String>, conditions: &[NodeCondition]) {
        for c in conditions {
            match before.get(&c.type_) {
                Some(was) if *was == c.status => continue,
                None if c.type_ == "Ready" => continue,
                _ => {}
            }
            let reason = match (c.type_.as_str(), c.status == "True") {
                ("Ready", true) => "NodeReady",
                ("Ready", false) => "NodeNotReady",
                ("MemoryPressure", false) => "NodeHasSufficientMemory",
                ("MemoryPressure", true) => "NodeHasInsufficientMemory",
                ("DiskPressure", false) => "NodeHasNoDiskPressure",
                ("DiskPressure", true) => "NodeHasDiskPressure",
                ("PIDPressure", false) => "NodeHasSufficientPID",
                ("PIDPressure", true) => "NodeHasInsufficientPID",
                _ => continue,
            };
            let message = format!("Node {} status is now: {reason}", self.config.node_name);
            self.recorder.record(&self.node_ref(), "Normal", reason, &message).await;
        }
    }

    /// Takes the conditions as the Node has them now (written by an earlier kubelet, or set
    /// Unknown by the node controller while this one could not post), so that the next
    /// post times its transitions and records its events against them, as Kubernetes'
    /// kubelet compares with the Node it reads before each update.
    fn observe(&self, conditions: &[NodeCondition]) {
        let mut transitions = self.transitions.lock().unwrap_or_else(|p| p.into_inner());
        for c in conditions {
            let since = c.last_transition_time.clone().or_else(|| c.last_heartbeat_time.clone());
            if let Some(t) = since {
                transitions.insert(c.type_.clone(), (c.status.clone(), t));
            }
        }
    }

    async fn status_loop(&self, shutdown: CancellationToken) {
        let api: Api<Node> = Api::all(self.client.clone());
        loop {
            let ready_cidr = self.network_ready.borrow().clone();
            let mut wait = self.config.node_status_update_frequency;
            if ready_cidr.is_none() {
                // Until the network is configured, look for the podCIDR often: pods wait on it.
                wait = Duration::from_millis(200);
                match api.get_opt(&self.config.node_name).await {
                    Ok(Some(node)) => {
                        if let Some(cidr) = node.spec.as_ref().and_then(|s| s.pod_cidr.clone()) {
                            match self.runtime.update_pod_cidr(&cidr).await {
                                Ok(()) => {
                                    tracing::info!(pod_cidr = %cidr, "pod network configured");
                                    self.network_ready.send_replace(Some(cidr));
                                    continue;
                                }
                                Err(e) => tracing::warn!(error = %e, "configuring the pod network failed"),
                            }
                        }
                    }
                    Ok(None) => {
                        if let Err(e) = self.register().await {
                            tracing::warn!(error = %e, "node re-registration failed");
                        }
                    }
                    Err(e) => tracing::debug!(error = %e, "reading the node failed"),
                }
            }
            if let Err(e) = self.post_status(&api).await {
                tracing::warn!(error = %e, "posting node status failed");
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    async fn post_status(&self, api: &Api<Node>) -> Result<(), NodeError> {
        match api.get_opt(&self.config.node_name).await {
            Ok(Some(node)) => self.observe(&node.status.and_then(|s| s.conditions).unwrap_or_default()),
            // Deleted under us (kubectl delete node): register again, as the kubelet does.
            Ok(None) => return self.register().await,
            Err(e) => tracing::debug!(error = %e, "reading the node before its status update failed"),
        }
        let cidr = self.network_ready.borrow().clone();
        let before = self.statuses();
        let status = self.status(cidr.is_some(), cidr.as_deref().unwrap_or("")).await;
        let patch = serde_json::json!({"status": status});
        match api.patch_status(&self.config.node_name, &PatchParams::default(), &Patch::Merge(&patch)).await {
            Ok(_) => {
                let conditions = status.conditions.as_deref().unwrap_or_default();
                self.observe(conditions);
                self.record_changes(&before, conditions).await;
                Ok(())
            }
            Err(kube::Error::Api(s)) if s.code == 404 => {
                // Deleted under us (kubectl delete node): register again, as the kubelet does.
                self.register().await
            }
            Err(source) => Err(NodeError::Status { node: self.config.node_name.clone(), source }),
        }
    }

    async fn status(&self, network_ready: bool, _cidr: &str) -> NodeStatus {
        let now = Time(Timestamp::now());
        let cond = |type_: &str, status: &str, reason: &str, message: &str| {
            // The transition time moves only when the status does (what was posted is
            // taken in once the post succeeds).
            let since = match self.transitions.lock().unwrap_or_else(|p| p.into_inner()).get(type_) {
                Some((was, at)) if was == status => at.clone(),
                _ => now.clone(),
            };
            NodeCondition {
                type_: type_.into(),
                status: status.into(),
                reason: Some(reason.into()),
                message: Some(message.into()),
                last_heartbeat_time: Some(now.clone()),
                last_transition_time: Some(since),
            }
        };
        let ready = if network_ready {
            cond("Ready", "True", "KubeletReady", "kubelet is posting ready status")
        } else {
            cond(
                "Ready",
                "False",
                "KubeletNotReady",
                "container runtime network not ready: NetworkReady=false reason:NetworkPluginNotReady message:no podCIDR assigned to this node yet",
            )
        };
        let conditions = vec![
            cond("MemoryPressure", "False", "KubeletHasSufficientMemory", "kubelet has sufficient memory available"),
            cond("DiskPressure", "False", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
            cond("PIDPressure", "False", "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
            ready,
        ];
        let capacity = capacity(&self.config);
        let images = match self.images.list_images().await {
            Ok(list) => list
                .into_iter()
                .map(|i| ContainerImage {
                    names: Some(i.repo_digests.into_iter().chain(i.repo_tags).collect()),
                    size_bytes: Some(i.size as i64),
                })
                .collect(),
            Err(e) => {
                tracing::debug!(error = %e, "listing images for node status failed");
                Vec::new()
            }
        };
        let _ = &self.runtime;
        NodeStatus {
            capacity: Some(capacity.clone()),
            allocatable: Some(capacity),
            conditions: Some(conditions),
            addresses: Some(vec![
                NodeAddress { type_: "InternalIP".into(), address: self.config.node_ip.to_string() },
                NodeAddress { type_: "Hostname".into(), address: self.config.node_name.clone() },
            ]),
            daemon_endpoints: Some(NodeDaemonEndpoints {
                kubelet_endpoint: Some(DaemonEndpoint { port: i32::from(self.kubelet_port) }),
            }),
            node_info: Some(system_info()),
            images: Some(images),
            ..Default::default()
        }
    }

    async fn lease_loop(self: Arc<Self>, shutdown: CancellationToken) {
        let api: Api<Lease> = Api::namespaced(self.client.clone(), LEASE_NAMESPACE);
        loop {
            if let Err(e) = self.renew_lease(&api).await {
                tracing::warn!(error = %e, "renewing the node lease failed");
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(self.config.node_lease_renew_interval) => {}
            }
        }
    }

    async fn renew_lease(&self, api: &Api<Lease>) -> Result<(), kube::Error> {
        let name = &self.config.node_name;
        let now = MicroTime(Timestamp::now());
        if api.get_opt(name).await?.is_some() {
            let patch = serde_json::json!({"spec": {"holderIdentity": name, "renewTime": now, "leaseDurationSeconds": LEASE_DURATION_SECONDS}});
            api.patch(name, &PatchParams::default(), &Patch::Merge(&patch)).await?;
            return Ok(());
        }
        let node_uid = Api::<Node>::all(self.client.clone()).get(name).await?.metadata.uid;
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                namespace: Some(LEASE_NAMESPACE.into()),
                owner_references: node_uid.map(|uid| {
                    vec![OwnerReference { api_version: "v1".into(), kind: "Node".into(), name: name.clone(), uid, ..Default::default() }]
                }),
                ..Default::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(name.clone()),
                lease_duration_seconds: Some(LEASE_DURATION_SECONDS),
                renew_time: Some(now),
                ..Default::default()
            }),
        };
        api.create(&PostParams::default(), &lease).await.map(|_| ())
    }
}

/// cpu, memory, pods and ephemeral-storage of this machine.
pub fn capacity(config: &KubeletConfig) -> BTreeMap<String, Quantity> {
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let memory_kib = meminfo_total_kib().unwrap_or(0);
    let storage = disk_capacity(&config.root_dir).unwrap_or(0);
    [
        ("cpu", cpus.to_string()),
        ("memory", format!("{memory_kib}Ki")),
        ("pods", config.max_pods.to_string()),
        ("ephemeral-storage", format!("{}Ki", storage / 1024)),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), Quantity(v)))
    .collect()
}

fn meminfo_total_kib() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    text.lines().find_map(|l| l.strip_prefix("MemTotal:")).and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

fn disk_capacity(path: &Path) -> Option<u64> {
    let probe = path.ancestors().find(|p| p.exists())?;
    let st = nix::sys::statvfs::statvfs(probe).ok()?;
    Some(st.blocks() as u64 * st.fragment_size() as u64)
}

fn go_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

fn read_trimmed(path: &str) -> String {
    std::fs::read_to_string(path).map(|s| s.trim().to_string()).unwrap_or_default()
}

fn system_info() -> NodeSystemInfo {
    let os_image = std::fs::read_to_string("/etc/os-release")
        .ok()
        .and_then(|t| t.lines().find_map(|l| l.strip_prefix("PRETTY_NAME=")).map(|v| v.trim_matches('"').to_string()))
        .unwrap_or_else(|| "Linux".into());
    let kernel = nix::sys::utsname::uname().map(|u| u.release().to_string_lossy().into_owned()).unwrap_or_default();
    NodeSystemInfo {
        architecture: go_arch().into(),
        boot_id: read_trimmed("/proc/sys/kernel/random/boot_id"),
        container_runtime_version: format!("rkube://{}", env!("CARGO_PKG_VERSION")),
        kernel_version: kernel,
        kube_proxy_version: KUBELET_VERSION.into(),
        kubelet_version: KUBELET_VERSION.into(),
        machine_id: read_trimmed("/etc/machine-id"),
        operating_system: "linux".into(),
        os_image,
        system_uuid: read_trimmed("/sys/class/dmi/id/product_uuid"),
        ..Default::default()
    }
}

/// The address of the interface that holds the default route, or 127.0.0.1.
pub fn default_node_ip() -> std::net::Ipv4Addr {
    // Connecting a UDP socket sends nothing; it only asks the kernel for the source
    // address it would use toward a public address.
    std::net::UdpSocket::bind("0.0.0.0:0")
        .and_then(|s| s.connect("192.0.2.1:9").map(|_| s))
        .and_then(|s| s.local_addr())
        .ok()
        .and_then(|a| match a.ip() {
            std::net::IpAddr::V4(v4) if !v4.is_unspecified() => Some(v4),
            _ => None,
        })
        .unwrap_or(std::net::Ipv4Addr::LOCALHOST)
}
