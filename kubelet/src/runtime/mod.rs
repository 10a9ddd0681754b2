//! The embedded container runtime, behind a CRI-shaped interface.
//!
//! The kubelet's pod workers speak only to [`Runtime`] and [`ImageService`], the way the
//! real kubelet speaks only CRI to containerd. Two implementations exist: [`linux`]
//! (real sandboxes and containers: network/IPC/UTS namespaces per pod, containers run by
//! youki's `libcontainer` under a small per-container shim process, rootfs on overlayfs)
//! and [`fake`] (no processes; containers "run" at once), which lets many hollow kubelets
//! share one process in scale tests.
//!
//! On-disk layout under the kubelet's `--root-dir` (`ROOT`):
//! - `ROOT/images/`: archives dropped here are imported at start (as k3s does);
//! - `ROOT/image-store/`: the content-addressed image store (see [`image`]);
//! - `ROOT/sandboxes/<id>/`: per-pod namespaces, hosts/hostname/resolv.conf (see [`sandbox`]);
//! - `ROOT/network/ipam/`: one file per pod IP handed out (see [`sandbox`]);
//! - `ROOT/containers/<id>/`: bundle, overlay dirs, shim state, exit record and the attach
//!   socket (see [`linux`]); `ROOT/libcontainer-state/` and `ROOT/sandbox-meta/` beside it;
//! - `ROOT/pods/<uid>/volumes/…`: volumes, laid out as the real kubelet lays them out;
//! - `ROOT/logs/pods/<ns>_<name>_<uid>/<container>/<attempt>.log`: CRI-format logs.

pub mod fake;
pub mod image;
pub mod linux;
pub mod sandbox;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Labels the kubelet puts on sandboxes and containers so that it can find its own after
/// a restart (the same keys the real kubelet uses with CRI).
pub const LABEL_POD_NAME: &str = "io.kubernetes.pod.name";
pub const LABEL_POD_NAMESPACE: &str = "io.kubernetes.pod.namespace";
pub const LABEL_POD_UID: &str = "io.kubernetes.pod.uid";
pub const LABEL_CONTAINER_NAME: &str = "io.kubernetes.container.name";

/// What a runtime call failed at.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("{0} not found")]
    NotFound(String),
    #[error("image {reference:?}: {message}")]
    Image { reference: String, message: String },
    #[error("invalid container config: {0}")]
    InvalidConfig(String),
    #[error("creating sandbox {id}: {message}")]
    CreateSandbox { id: String, message: String },
    #[error("creating container {id}: {message}")]
    CreateContainer { id: String, message: String },
    #[error("{op} {id}: {message}")]
    Operation { op: &'static str, id: String, message: String },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

impl RuntimeError {
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        RuntimeError::Io { context: context.into(), source }
    }
}

pub type Result<T, E = RuntimeError> = std::result::Result<T, E>;

/// Identity of the pod a sandbox belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodMeta {
    pub name: String,
    pub namespace: String,
    pub uid: String,
}

/// DNS settings written to the sandbox's `/etc/resolv.conf`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DnsConfig {
    pub servers: Vec<String>,
    pub searches: Vec<String>,
    pub options: Vec<String>,
}

/// One `hostPort` mapping of a pod (the `docker run -p` of Kubernetes).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortMapping {
    pub protocol: String,
    pub container_port: u16,
    pub host_port: u16,
    pub host_ip: Option<String>,
}

/// What `RunPodSandbox` needs: the pod's shared namespaces and network identity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SandboxConfig {
    pub pod: PodMeta,
    /// `spec.hostname` or the pod name, cut to 63 characters.
    pub hostname: String,
    /// Extra `/etc/hosts` lines (`spec.hostAliases`, the pod's FQDN with a subdomain).
    pub host_aliases: Vec<(String, Vec<String>)>,
    pub dns: DnsConfig,
    /// `spec.hostNetwork`: no network namespace of its own, the node's IP as pod IP.
    pub host_network: bool,
    pub port_mappings: Vec<PortMapping>,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    /// The pod-level cgroup (relative name, e.g. `kubepods/burstable/pod<uid>`).
    pub cgroup_parent: String,
    /// `spec.shareProcessNamespace`: the sandbox gets a PID namespace of its own, with a
    /// pause process as its PID 1, that every container of the pod joins.
    #[serde(default)]
    pub share_process_namespace: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SandboxState {
    Ready,
    NotReady,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SandboxStatus {
    pub id: String,
    pub pod: PodMeta,
    pub state: SandboxState,
    /// The pod's IP (the node IP for host-network pods).
    pub ip: Option<String>,
    pub created_at: DateTime<Utc>,
    pub labels: BTreeMap<String, String>,
    /// Paths of the namespace files containers join (`net`, `ipc`, `uts`), absent for
    /// host-network pods' `net`.
    pub namespaces: BTreeMap<String, PathBuf>,
    /// Files to bind into every container: `/etc/hosts`, `/etc/hostname`, `/etc/resolv.conf`.
    pub etc_files: BTreeMap<String, PathBuf>,
    /// The PID 1 of the pod's shared PID namespace (`namespaces["pid"]`), with
    /// `shareProcessNamespace`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid_holder: Option<ProcessRef>,
}

/// A process known by its pid and its start time, so that a recycled pid is not mistaken
/// for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessRef {
    pub pid: u32,
    /// Field 22 of `/proc/<pid>/stat` (clock ticks after boot).
    pub start_ticks: u64,
}

/// The rest of a container's `securityContext` (and its pod's) that the runtime applies.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecurityConfig {
    /// `capabilities.add` and `capabilities.drop` as written (`NET_ADMIN`, `ALL`); the
    /// default set, less `ALL` dropped, plus `ALL` or each added, less each dropped.
    /// Ignored for privileged containers, which get every capability.
    pub add_capabilities: Vec<String>,
    pub drop_capabilities: Vec<String>,
    /// `readOnlyRootFilesystem`.
    pub readonly_rootfs: bool,
    /// `allowPrivilegeEscalation: false`: the process and its children cannot gain
    /// privileges (setuid binaries, file capabilities).
    pub no_new_privileges: bool,
    /// `runAsNonRoot`: the container is refused if it would run as uid 0.
    pub run_as_non_root: bool,
    /// The pod's `fsGroup` and `supplementalGroups`, added to the process's groups.
    pub supplemental_groups: Vec<u32>,
    /// `seccompProfile`, the container's or else its pod's. Privileged containers run
    /// unconfined whatever it says.
    #[serde(default)]
    pub seccomp: SeccompProfile,
}

/// The system call filter a container's processes run under (`seccompProfile.type`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum SeccompProfile {
    /// No filter (Kubernetes' default when neither the pod nor the container sets one).
    #[default]
    Unconfined,
    /// The runtime's default filter: what containers commonly need, with the calls that
    /// reach past the container (kernel keyrings, modules, new namespaces without
    /// CAP_SYS_ADMIN, clock changes without CAP_SYS_TIME, ...) refused with EPERM.
    RuntimeDefault,
    /// A profile file on the node in the OCI runtime spec's format: the kubelet's
    /// `<root-dir>/seccomp/` joined with `localhostProfile`.
    Localhost(PathBuf),
}

/// The PID namespace a container runs in (CRI's `NamespaceMode` for pids).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum PidNamespace {
    /// A new one: the container's process is its PID 1 and sees only its own processes.
    #[default]
    Container,
    /// The sandbox's (`shareProcessNamespace`): every container sees the pod's processes.
    Pod,
    /// Another running container's, by id: an ephemeral container with
    /// `targetContainerName` (`kubectl debug --target`).
    Target(String),
}

/// A bind mount into a container (volumes, `/etc/hosts`, service account files).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mount {
    pub host_path: PathBuf,
    pub container_path: String,
    pub readonly: bool,
}

/// cgroup settings computed from the container's `resources` the way the kubelet does
/// (`cpu.shares` from requests, quota from limits, memory limit, pids limit).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resources {
    pub cpu_shares: Option<u64>,
    pub cpu_quota: Option<i64>,
    pub cpu_period: Option<u64>,
    pub memory_limit: Option<i64>,
    pub pids_limit: Option<i64>,
}

/// What `CreateContainer` needs. `command`/`args` are the pod spec's; the runtime combines
/// them with the image's ENTRYPOINT/CMD by Kubernetes' rules.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerConfig {
    pub name: String,
    /// How many times this container has been restarted in this pod (0 for the first run).
    pub attempt: u32,
    /// The image as written in the pod spec (`busybox`, `docker.io/library/nginx:1.27`).
    pub image: String,
    pub command: Vec<String>,
    pub args: Vec<String>,
    pub working_dir: Option<String>,
    /// Environment from the pod spec, already resolved (ConfigMaps, Secrets, downward API);
    /// the image's ENV comes first and these override it.
    pub envs: Vec<(String, String)>,
    pub mounts: Vec<Mount>,
    /// Absolute path of the CRI-format log file for this attempt.
    pub log_path: PathBuf,
    pub resources: Resources,
    pub run_as_user: Option<u32>,
    pub run_as_group: Option<u32>,
    pub privileged: bool,
    /// Allocate a terminal for the container: its stdin, stdout and stderr are the pty.
    pub tty: bool,
    /// Keep the container's stdin open for `kubectl attach` (else it reads /dev/null).
    pub stdin: bool,
    /// `stdinOnce`: without a tty, the container's stdin is closed when the first attach
    /// session that wrote to it closes its stdin or ends (the process sees end of input).
    #[serde(default)]
    pub stdin_once: bool,
    #[serde(default)]
    pub pid_namespace: PidNamespace,
    #[serde(default)]
    pub security: SecurityConfig,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ContainerState {
    Created,
    Running,
    Exited,
    Unknown,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerStatus {
    pub id: String,
    pub sandbox_id: String,
    pub name: String,
    pub attempt: u32,
    pub state: ContainerState,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub exit_code: Option<i32>,
    /// `OOMKilled`, `Completed` (exit 0), `Error` (non-zero), as the kubelet reports them.
    pub reason: Option<String>,
    pub message: Option<String>,
    /// The image as asked for, and the digest-pinned reference it resolved to.
    pub image: String,
    pub image_ref: String,
    pub labels: BTreeMap<String, String>,
    pub log_path: PathBuf,
    /// Host pid of the container's init process while it runs.
    pub pid: Option<u32>,
}

/// CPU and memory of a container, read from its cgroup.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerStats {
    pub id: String,
    /// Cumulative CPU time used, in nanoseconds.
    pub cpu_usage_nanos: u64,
    /// Working set (usage minus inactive file cache), in bytes.
    pub memory_working_set_bytes: u64,
}

/// A process started inside a running container (`kubectl exec`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecRequest {
    pub container_id: String,
    pub command: Vec<String>,
    pub tty: bool,
    pub stdin: bool,
}

/// The running exec process: its stdio and a way to learn its exit code. With a TTY,
/// stdout carries the terminal's output and stderr is absent.
pub struct ExecSession {
    pub stdin: Option<Box<dyn tokio::io::AsyncWrite + Send + Unpin>>,
    pub stdout: Option<Box<dyn tokio::io::AsyncRead + Send + Unpin>>,
    pub stderr: Option<Box<dyn tokio::io::AsyncRead + Send + Unpin>>,
    /// Resolves to the exit code when the process ends.
    pub exit: tokio::sync::oneshot::Receiver<i32>,
    /// Terminal size changes (columns, rows) for TTY sessions.
    pub resize: Option<tokio::sync::mpsc::Sender<(u16, u16)>>,
}

/// The CRI RuntimeService, cut to what the kubelet uses.
#[async_trait]
pub trait Runtime: Send + Sync {
    /// Creates the pod's namespaces and network (idempotent per pod uid + attempt).
    async fn run_pod_sandbox(&self, config: &SandboxConfig) -> Result<SandboxStatus>;
    /// Stops every container of the sandbox and tears down its network; keeps records.
    async fn stop_pod_sandbox(&self, id: &str) -> Result<()>;
    /// Removes what `stop_pod_sandbox` kept (namespace files, etc files). Idempotent.
    async fn remove_pod_sandbox(&self, id: &str) -> Result<()>;
    async fn list_pod_sandboxes(&self) -> Result<Vec<SandboxStatus>>;
    /// The node's podCIDR, once the controller-manager has assigned it (CRI's
    /// UpdateRuntimeConfig); sandboxes take their IPs from it.
    async fn update_pod_cidr(&self, cidr: &str) -> Result<()>;
    /// Removes everything the runtime set up on the host that outlives processes: mounts,
    /// network namespaces, veths and the bridge, cgroups (`rkube down`). Stops containers.
    async fn teardown(&self) -> Result<()>;

    /// Prepares the container (rootfs, bundle) without starting it; returns its id.
    async fn create_container(&self, sandbox_id: &str, config: &ContainerConfig) -> Result<String>;
    async fn start_container(&self, id: &str) -> Result<()>;
    /// Sends the image's STOPSIGNAL (SIGTERM by default), then SIGKILL after `grace`.
    async fn stop_container(&self, id: &str, grace: Duration) -> Result<()>;
    /// Removes a stopped container's rootfs and records (its log file stays).
    async fn remove_container(&self, id: &str) -> Result<()>;
    async fn list_containers(&self) -> Result<Vec<ContainerStatus>>;
    async fn container_status(&self, id: &str) -> Result<ContainerStatus>;
    async fn container_stats(&self, id: &str) -> Result<ContainerStats>;
    async fn exec(&self, request: ExecRequest) -> Result<ExecSession>;
    /// Attaches to the stdio of the container's main process (`kubectl attach`, `kubectl
    /// run -i`): its live output, and its stdin when `stdin` is asked for and the container
    /// has one. With a terminal, stdout carries everything and `resize` is set. `exit`
    /// resolves to the container's exit code if it exits during the session; the sender
    /// is dropped when the session ends with the container still running. `tty` is what
    /// the client asked for; the container's own setting decides.
    async fn attach(&self, container_id: &str, stdin: bool, tty: bool) -> Result<ExecSession> {
        let _ = (stdin, tty);
        Err(RuntimeError::Operation {
            op: "attach to",
            id: container_id.to_string(),
            message: "attaching is not supported by this runtime".into(),
        })
    }
    /// Opens a TCP connection to `port` on the sandbox's loopback (`kubectl port-forward`).
    async fn port_forward(&self, sandbox_id: &str, port: u16) -> Result<tokio::net::TcpStream>;
}

/// An image present in the store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageInfo {
    /// `sha256:…` of the image config (what `docker images` shows as IMAGE ID).
    pub id: String,
    /// Normalized tags (`docker.io/library/busybox:latest`).
    pub repo_tags: Vec<String>,
    /// `repo@sha256:…` of the manifest.
    pub repo_digests: Vec<String>,
    /// Sum of the compressed layer sizes.
    pub size: u64,
    pub created: Option<DateTime<Utc>>,
}

/// Credentials for a registry (from `imagePullSecrets`' `.dockerconfigjson`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryAuth {
    pub username: String,
    pub password: String,
}

/// The CRI ImageService.
#[async_trait]
pub trait ImageService: Send + Sync {
    async fn pull_image(&self, reference: &str, auth: Option<&RegistryAuth>) -> Result<ImageInfo>;
    /// The image a reference names, if present (`busybox` ≡ `docker.io/library/busybox:latest`).
    async fn image_status(&self, reference: &str) -> Result<Option<ImageInfo>>;
    async fn list_images(&self) -> Result<Vec<ImageInfo>>;
    async fn remove_image(&self, reference: &str) -> Result<()>;
}

/// The real runtime for `config`: image store, sandboxes and libcontainer containers.
/// With `prepare_images`, archives in `ROOT/images/` are imported (air-gapped labs, as
/// k3s does) and the busybox demo image is built if the store lacks it.
pub async fn linux_runtime(config: &crate::config::KubeletConfig, prepare_images: bool) -> Result<crate::Runtimes> {
    let store = image::ImageStore::open(&config.root_dir.join("image-store"))?;
    if prepare_images {
        let drop_dir = config.root_dir.join("images");
        std::fs::create_dir_all(&drop_dir).map_err(|e| RuntimeError::io(format!("creating {}", drop_dir.display()), e))?;
        let s = store.clone();
        let imported = tokio::task::spawn_blocking(move || -> Result<Vec<ImageInfo>> {
            let imported = s.import_dir(&drop_dir)?;
            if s.status(image::busybox::BUSYBOX_REFERENCE)?.is_none() {
                if std::path::Path::new(image::busybox::BUSYBOX_PATH).exists() {
                    image::build_busybox_image(&s, image::busybox::BUSYBOX_REFERENCE)?;
                } else {
                    tracing::warn!(path = image::busybox::BUSYBOX_PATH, "no static busybox on this host: the lab has no busybox image (apt-get install busybox-static)");
                }
            }
            Ok(imported)
        })
        .await
        .map_err(|e| RuntimeError::InvalidConfig(format!("preparing images: {e}")))??;
        for i in imported {
            tracing::info!(image = %i.repo_tags.join(","), "imported");
        }
    }
    let images = std::sync::Arc::new(store);
    let sandboxes = std::sync::Arc::new(sandbox::SandboxManager::new(sandbox::SandboxOptions::new(
        config.root_dir.clone(),
        config.bridge_name.clone(),
        config.node_ip,
    ))?);
    let runtime = linux::LinuxRuntime::new(config.root_dir.clone(), images.clone(), sandboxes, config.cgroup_root.clone())?;
    Ok(crate::Runtimes { runtime: std::sync::Arc::new(runtime), images })
}
