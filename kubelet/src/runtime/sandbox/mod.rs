//! Pod sandboxes: per-pod network, IPC and UTS namespaces kept alive by bind mounts, the
//! pod's veth on the node bridge with an IP from the podCIDR, and the pod's
//! `/etc/hosts`, `/etc/hostname` and `/etc/resolv.conf` — what a pause container and the
//! CNI bridge plugin provide in a real cluster.
//!
//! On-disk layout (ROOT = [`SandboxOptions::root`]):
//! - `ROOT/sandboxes/<id>/meta.json`: the [`SandboxStatus`] (written last: a directory
//!   without it is an unfinished sandbox, cleaned up by `remove`/`teardown`);
//! - `ROOT/sandboxes/<id>/config.json`: the [`SandboxConfig`] it was made from;
//! - `ROOT/sandboxes/<id>/ns/{net,ipc,uts}`: bind mounts of the namespaces;
//! - `ROOT/sandboxes/<id>/ns/pid` and `pause.json`, with `shareProcessNamespace`: the
//!   pod's PID namespace and the pause process that is its PID 1 (see [`netns`]);
//! - `ROOT/sandboxes/<id>/{hosts,hostname,resolv.conf}`: bound into every container;
//! - `ROOT/network/ipam/<ip>`: one file per allocated pod IP naming its sandbox id.
//!
//! All blocking work runs on tokio's blocking pool; namespace changes happen only on
//! dedicated short-lived threads (see [`netns`]).

pub mod etcfiles;
pub mod ipam;
pub mod netns;
pub mod network;

#[cfg(test)]
mod fakes;

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use chrono::Utc;

pub use ipam::{Ipam, IpamError, Ipv4Cidr};
pub use netns::{LinuxNamespaces, NamespaceOps, NsError, NsKind};
pub use network::{host_veth_name, IpRoute2, NetError, NetOps, Rtnetlink, POD_IFNAME};

use super::{Result, RuntimeError, SandboxConfig, SandboxState, SandboxStatus};

const SANDBOXES_DIR: &str = "sandboxes";
const META_FILE: &str = "meta.json";
const CONFIG_FILE: &str = "config.json";
const NS_DIR: &str = "ns";
/// The pause process of a sandbox with a shared PID namespace, written as soon as it runs
/// (before `meta.json`), so that undoing an unfinished sandbox kills it too.
const PAUSE_FILE: &str = "pause.json";
const NODE_HOSTS: &str = "/etc/hosts";
const NODE_RESOLV_CONF: &str = "/etc/resolv.conf";
/// Where systemd-resolved keeps the real upstream servers when `/etc/resolv.conf` only
/// names its 127.0.0.53 stub (the kubelet and k3s read this file in that case too).
const SYSTEMD_RESOLV_CONF: &str = "/run/systemd/resolve/resolv.conf";
/// The longest sandbox id accepted (it becomes a directory name).
const MAX_ID_LEN: usize = 128;

/// Node-level settings of the pod network.
#[derive(Debug, Clone)]
pub struct SandboxOptions {
    /// `ROOT/sandboxes` lives under this root.
    pub root: PathBuf,
    /// The node bridge (at most 15 bytes; distinct per lab so two labs can share a host).
    pub bridge_name: String,
    /// The node's address: host-network pods report it as their IP.
    pub node_ip: Ipv4Addr,
    /// The binary that starts pause processes (`<binary> __rkube-shim pause …`, for pods
    /// with `shareProcessNamespace`); the running binary when unset.
    pub helper_binary: Option<PathBuf>,
}

impl SandboxOptions {
    pub fn new(
        root: impl Into<PathBuf>,
        bridge_name: impl Into<String>,
        node_ip: Ipv4Addr,
    ) -> Self {
        SandboxOptions {
            root: root.into(),
            bridge_name: bridge_name.into(),
            node_ip,
            helper_binary: None,
        }
    }

    /// Starts pause processes with `path` (its `main` must call the shim's entry point).
    pub fn with_helper_binary(mut self, path: impl Into<PathBuf>) -> Self {
        self.helper_binary = Some(path.into());
        self
    }
}

/// What went wrong inside the manager, before it becomes a [`RuntimeError`].
#[derive(Debug, thiserror::Error)]
enum SandboxError {
    #[error("network not ready: no podCIDR yet")]
    NetworkNotReady,
    #[error("namespaces: {0}")]
    Namespaces(#[from] NsError),
    #[error("network: {0}")]
    Network(#[from] NetError),
    #[error("IPAM: {0}")]
    Ipam(#[from] IpamError),
    #[error("{context}: {source}")]
    Io { context: String, source: io::Error },
    #[error("{path}: {source}")]
    Json {
        path: String,
        source: serde_json::Error,
    },
}

fn io_err(context: impl Into<String>) -> impl FnOnce(io::Error) -> SandboxError {
    let context = context.into();
    move |source| SandboxError::Io { context, source }
}

fn operation(op: &'static str, id: &str) -> impl FnOnce(SandboxError) -> RuntimeError {
    let id = id.to_string();
    move |e| RuntimeError::Operation {
        op,
        id,
        message: e.to_string(),
    }
}

/// Sandbox ids become directory and file names: keep them to a safe alphabet.
fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && !id.starts_with('.')
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// The pod network's state: the podCIDR once known, and whether the bridge is set up.
#[derive(Debug, Default)]
struct NetworkState {
    pod_cidr: Option<Ipv4Cidr>,
    bridge_ready: bool,
}

/// Creates, tracks and removes the pod sandboxes of one node.
pub struct SandboxManager {
    inner: Arc<Inner>,
}

struct Inner {
    options: SandboxOptions,
    namespaces: Arc<dyn NamespaceOps>,
    net: Arc<dyn NetOps>,
    ipam: Ipam,
    network: Mutex<NetworkState>,
    /// One lock per sandbox id, so that create/stop/remove of one sandbox never interleave.
    id_locks: Mutex<HashMap<String, Arc<Mutex<()>>>>,
}

impl SandboxManager {
    pub fn new(options: SandboxOptions) -> Result<Self> {
        Self::with_ops(
            options,
            Arc::new(LinuxNamespaces),
            Arc::new(Rtnetlink),
        )
    }

    /// A manager over other namespace and network implementations (tests use fakes).
    pub fn with_ops(
        options: SandboxOptions,
        namespaces: Arc<dyn NamespaceOps>,
        net: Arc<dyn NetOps>,
    ) -> Result<Self> {
        if !network::valid_ifname(&options.bridge_name) {
            return Err(RuntimeError::InvalidConfig(format!(
                "bridge name {:?} is not a valid interface name (1 to {} bytes, no '/', ':' or spaces)",
                options.bridge_name,
                network::MAX_IFNAME_LEN
            )));
        }
        let ipam = Ipam::new(options.root.join("network").join("ipam"));
        let inner = Inner {
            options,
            namespaces,
            net,
            ipam,
            network: Mutex::new(NetworkState::default()),
            id_locks: Mutex::new(HashMap::new()),
        };
        Ok(SandboxManager {
            inner: Arc::new(inner),
        })
    }

    pub fn options(&self) -> &SandboxOptions {
        &self.inner.options
    }

    /// The podCIDR given to [`Self::set_pod_cidr`], if any.
    pub fn pod_cidr(&self) -> Option<Ipv4Cidr> {
        self.inner
            .network
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pod_cidr
    }

    /// Runs `work` on the blocking pool.
    async fn blocking<T, F>(&self, op: &'static str, id: &str, work: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Inner) -> Result<T> + Send + 'static,
    {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || work(&inner))
            .await
            .map_err(|e| RuntimeError::Operation {
                op,
                id: id.to_string(),
                message: format!("worker thread failed: {e}"),
            })?
    }

    /// Sets the node's podCIDR: the bridge takes its first address, pods the rest.
    /// (With several comma-separated CIDRs, the IPv4 one is used.)
    pub async fn set_pod_cidr(&self, cidr: &str) -> Result<()> {
        let parsed = cidr
            .split(',')
            .map(str::trim)
            .find(|c| !c.contains(':'))
            .ok_or_else(|| {
                RuntimeError::InvalidConfig(format!("podCIDR {cidr:?} has no IPv4 range"))
            })
            .and_then(|c| {
                c.parse::<Ipv4Cidr>()
                    .map_err(|e| RuntimeError::InvalidConfig(e.to_string()))
            })?;
        let bridge = self.inner.options.bridge_name.clone();
        self.blocking("setting podCIDR", &bridge.clone(), move |inner| {
            inner
                .set_pod_cidr(parsed)
                .map_err(operation("setting podCIDR on", &bridge))
        })
        .await
    }

    /// Creates (or, with the same id, returns) a sandbox.
    pub async fn create(&self, id: &str, config: &SandboxConfig) -> Result<SandboxStatus> {
        if !valid_id(id) {
            return Err(RuntimeError::CreateSandbox {
                id: id.to_string(),
                message: format!("invalid sandbox id (1 to {MAX_ID_LEN} of [A-Za-z0-9._-], not starting with '.')"),
            });
        }
        let (owned_id, config) = (id.to_string(), config.clone());
        self.blocking("creating sandbox", id, move |inner| {
            inner.create(&owned_id, &config)
        })
        .await
    }

    /// Tears down the sandbox's network (veth, IP); keeps its record. Idempotent.
    pub async fn stop(&self, id: &str) -> Result<()> {
        let owned_id = checked_id("stopping sandbox", id)?;
        self.blocking("stopping sandbox", id, move |inner| inner.stop(&owned_id))
            .await
    }

    /// Unmounts the namespace files and deletes the sandbox's directory. Idempotent.
    pub async fn remove(&self, id: &str) -> Result<()> {
        let owned_id = checked_id("removing sandbox", id)?;
        self.blocking("removing sandbox", id, move |inner| inner.remove(&owned_id))
            .await
    }

    pub async fn get(&self, id: &str) -> Result<SandboxStatus> {
        if !valid_id(id) {
            return Err(RuntimeError::NotFound(format!("sandbox {id}")));
        }
        let owned_id = id.to_string();
        self.blocking("reading sandbox", id, move |inner| {
            match inner
                .read_meta(&owned_id)
                .map_err(operation("reading sandbox", &owned_id))?
            {
                Some(status) => Ok(inner.refresh(status)),
                None => Err(RuntimeError::NotFound(format!("sandbox {owned_id}"))),
            }
        })
        .await
    }

    /// The [`SandboxConfig`] a sandbox was created from (kept in its `config.json`).
    pub async fn config(&self, id: &str) -> Result<SandboxConfig> {
        if !valid_id(id) {
            return Err(RuntimeError::NotFound(format!("sandbox {id}")));
        }
        let path = self.inner.sandbox_dir(id).join(CONFIG_FILE);
        let owned_id = id.to_string();
        self.blocking("reading sandbox config", id, move |_| {
            let bytes = match fs::read(&path) {
                Ok(bytes) => bytes,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    return Err(RuntimeError::NotFound(format!("sandbox {owned_id}")))
                }
                Err(e) => return Err(RuntimeError::io(format!("reading {}", path.display()), e)),
            };
            serde_json::from_slice(&bytes).map_err(|e| RuntimeError::Operation {
                op: "reading sandbox config",
                id: owned_id,
                message: format!("{}: {e}", path.display()),
            })
        })
        .await
    }

    pub async fn list(&self) -> Result<Vec<SandboxStatus>> {
        self.blocking("listing sandboxes", "", |inner| inner.list())
            .await
    }

    /// A TCP connection to `port` on the sandbox's own loopback (`kubectl port-forward`).
    pub async fn connect(&self, id: &str, port: u16) -> Result<tokio::net::TcpStream> {
        let status = self.get(id).await?;
        let netns = status.namespaces.get(NsKind::Net.name()).cloned();
        let owned_id = id.to_string();
        let stream = self
            .blocking("port-forward to", id, move |_| {
                netns::connect_loopback(netns.as_deref(), port).map_err(|e| {
                    operation("port-forward to", &owned_id)(SandboxError::Namespaces(e))
                })
            })
            .await?;
        let fail = |e: io::Error| RuntimeError::Operation {
            op: "port-forward to",
            id: id.to_string(),
            message: format!("handing the connection to tokio: {e}"),
        };
        stream.set_nonblocking(true).map_err(fail)?;
        tokio::net::TcpStream::from_std(stream).map_err(fail)
    }

    /// Removes every sandbox and the bridge (`rkube down`).
    pub async fn teardown(&self) -> Result<()> {
        let bridge = self.inner.options.bridge_name.clone();
        self.blocking("tearing down", &bridge, |inner| inner.teardown())
            .await
    }
}

fn checked_id(op: &'static str, id: &str) -> Result<String> {
    if valid_id(id) {
        Ok(id.to_string())
    } else {
        Err(RuntimeError::Operation {
            op,
            id: id.to_string(),
            message: "invalid sandbox id".into(),
        })
    }
}

impl Inner {
    fn sandboxes_dir(&self) -> PathBuf {
        self.options.root.join(SANDBOXES_DIR)
    }

    fn sandbox_dir(&self, id: &str) -> PathBuf {
        self.sandboxes_dir().join(id)
    }

    fn veth_name(&self, id: &str) -> String {
        host_veth_name(&self.options.bridge_name, id)
    }

    /// The lock of one sandbox id (taken with `.lock()` by the caller).
    fn id_lock(&self, id: &str) -> Arc<Mutex<()>> {
        let mut locks = self.id_locks.lock().unwrap_or_else(PoisonError::into_inner);
        Arc::clone(locks.entry(id.to_string()).or_default())
    }

    /// Drops the lock of a removed sandbox unless someone else holds or awaits it.
    fn forget_id_lock(&self, id: &str, ours: Arc<Mutex<()>>) {
        let mut locks = self.id_locks.lock().unwrap_or_else(PoisonError::into_inner);
        if locks
            .get(id)
            .is_some_and(|l| Arc::ptr_eq(l, &ours) && Arc::strong_count(l) == 2)
        {
            locks.remove(id);
        }
    }

    fn set_pod_cidr(&self, cidr: Ipv4Cidr) -> Result<(), SandboxError> {
        let mut network = self.network.lock().unwrap_or_else(PoisonError::into_inner);
        if network.pod_cidr == Some(cidr) && network.bridge_ready {
            return Ok(());
        }
        if let Some(old) = network.pod_cidr.filter(|old| *old != cidr) {
            tracing::warn!(old = %old, new = %cidr, "podCIDR changed; existing pods keep their addresses");
        }
        network.pod_cidr = Some(cidr);
        network.bridge_ready = false;
        self.ensure_bridge(&mut network)?;
        tracing::info!(cidr = %cidr, bridge = %self.options.bridge_name, gateway = %cidr.gateway(), "pod network ready");
        Ok(())
    }

    fn ensure_bridge(&self, network: &mut NetworkState) -> Result<Ipv4Cidr, SandboxError> {
        let cidr = network.pod_cidr.ok_or(SandboxError::NetworkNotReady)?;
        if !network.bridge_ready {
            self.net
                .ensure_bridge(&self.options.bridge_name, cidr.gateway(), cidr.prefix())?;
            self.net.enable_ip_forward()?;
            network.bridge_ready = true;
        }
        Ok(cidr)
    }

    fn read_meta(&self, id: &str) -> Result<Option<SandboxStatus>, SandboxError> {
        let path = self.sandbox_dir(id).join(META_FILE);
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err(format!("reading {}", path.display()))(e)),
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|source| SandboxError::Json {
                path: path.display().to_string(),
                source,
            })
    }

    /// Writes `value` as JSON to `dir/name` atomically (temp file + rename).
    fn write_json(
        dir: &Path,
        name: &str,
        value: &impl serde::Serialize,
    ) -> Result<(), SandboxError> {
        let path = dir.join(name);
        let bytes = serde_json::to_vec_pretty(value).map_err(|source| SandboxError::Json {
            path: path.display().to_string(),
            source,
        })?;
        let temp = dir.join(format!(".{name}.tmp"));
        fs::write(&temp, bytes).map_err(io_err(format!("writing {}", temp.display())))?;
        fs::rename(&temp, &path).map_err(io_err(format!(
            "renaming {} to {}",
            temp.display(),
            path.display()
        )))
    }

    /// Marks a Ready sandbox whose namespaces are gone (after a reboot) or whose pause
    /// process died as NotReady.
    fn refresh(&self, mut status: SandboxStatus) -> SandboxStatus {
        if status.state == SandboxState::Ready
            && (!status
                .namespaces
                .values()
                .all(|p| self.namespaces.is_alive(p))
                || status
                    .pid_holder
                    .is_some_and(|h| !self.namespaces.pid_holder_alive(h)))
        {
            status.state = SandboxState::NotReady;
        }
        status
    }

    fn create(&self, id: &str, config: &SandboxConfig) -> Result<SandboxStatus> {
        let lock = self.id_lock(id);
        let _guard = lock.lock().unwrap_or_else(PoisonError::into_inner);
        let create_error = |e: SandboxError| RuntimeError::CreateSandbox {
            id: id.to_string(),
            message: e.to_string(),
        };
        if let Some(status) = self.read_meta(id).map_err(create_error)? {
            return Ok(status);
        }
        let cidr = if config.host_network {
            None
        } else {
            let mut network = self.network.lock().unwrap_or_else(PoisonError::into_inner);
            Some(self.ensure_bridge(&mut network).map_err(create_error)?)
        };
        if self.sandbox_dir(id).exists() {
            tracing::warn!(
                sandbox = id,
                "removing the leftovers of an unfinished sandbox"
            );
            self.cleanup(id, true).map_err(create_error)?;
        }
        match self.build(id, config, cidr) {
            Ok(status) => {
                tracing::info!(
                    sandbox = id,
                    pod = %format!("{}/{}", config.pod.namespace, config.pod.name),
                    ip = status.ip.as_deref().unwrap_or_default(),
                    "sandbox ready"
                );
                Ok(status)
            }
            Err(e) => {
                if let Err(undo) = self.cleanup(id, !config.host_network) {
                    tracing::warn!(sandbox = id, error = %undo, "undoing a failed sandbox creation");
                }
                Err(create_error(e))
            }
        }
    }

    /// The steps of `create`; on error the caller undoes whatever was done.
    fn build(
        &self,
        id: &str,
        config: &SandboxConfig,
        cidr: Option<Ipv4Cidr>,
    ) -> Result<SandboxStatus, SandboxError> {
        let dir = self.sandbox_dir(id);
        fs::create_dir_all(&dir).map_err(io_err(format!("creating {}", dir.display())))?;
        Self::write_json(&dir, CONFIG_FILE, config)?;

        let (kinds, hostname): (&[NsKind], String) = if config.host_network {
            // Like Kubernetes: host-network pods share the node's network and UTS namespaces.
            (&[NsKind::Ipc], node_hostname())
        } else if config.hostname.is_empty() {
            (&NsKind::ALL, config.pod.name.chars().take(63).collect())
        } else {
            (&NsKind::ALL, config.hostname.clone())
        };
        let namespaces = self
            .namespaces
            .create(&dir.join(NS_DIR), kinds, &hostname)?;

        let ip = match (cidr, namespaces.get(&NsKind::Net)) {
            (Some(cidr), Some(netns)) => {
                let ip = self.ipam.allocate(&cidr, id)?;
                let veth = self.veth_name(id);
                self.net
                    .add_veth(&veth, &self.options.bridge_name, netns, POD_IFNAME)?;
                self.net.configure_pod_interface(
                    netns,
                    POD_IFNAME,
                    ip,
                    cidr.prefix(),
                    cidr.gateway(),
                )?;
                ip
            }
            _ => self.options.node_ip,
        };

        let etc_files = self.write_etc_files(&dir, config, &ip.to_string(), &hostname)?;
        let mut namespaces: BTreeMap<String, PathBuf> = namespaces
            .into_iter()
            .map(|(kind, path)| (kind.name().to_string(), path))
            .collect();
        let pid_holder = if config.share_process_namespace {
            let helper = match &self.options.helper_binary {
                Some(path) => path.clone(),
                None => std::env::current_exe()
                    .map_err(io_err("locating the binary that starts pause processes"))?,
            };
            let (path, holder) = self.namespaces.create_pid(&helper, &dir.join(NS_DIR))?;
            if let Err(e) = Self::write_json(&dir, PAUSE_FILE, &holder) {
                self.namespaces.kill_pid_holder(holder);
                return Err(e);
            }
            namespaces.insert(netns::PID_NS.to_string(), path);
            Some(holder)
        } else {
            None
        };
        let status = SandboxStatus {
            id: id.to_string(),
            pod: config.pod.clone(),
            state: SandboxState::Ready,
            ip: Some(ip.to_string()),
            created_at: Utc::now(),
            labels: config.labels.clone(),
            namespaces,
            etc_files,
            pid_holder,
        };
        Self::write_json(&dir, META_FILE, &status)?;
        Ok(status)
    }

    fn write_etc_files(
        &self,
        dir: &Path,
        config: &SandboxConfig,
        ip: &str,
        hostname: &str,
    ) -> Result<BTreeMap<String, PathBuf>, SandboxError> {
        let hosts = if config.host_network {
            let node_hosts = fs::read_to_string(NODE_HOSTS).unwrap_or_else(|e| {
                tracing::warn!(error = %e, "cannot read the node's {NODE_HOSTS}");
                String::new()
            });
            etcfiles::host_network_hosts(&node_hosts, &config.host_aliases)
        } else {
            etcfiles::pod_hosts(ip, hostname, &config.host_aliases)
        };
        let node_resolv = node_resolv_conf(config.host_network);
        let resolv = etcfiles::resolv_conf(&config.dns, &node_resolv, config.host_network);
        let files = [
            ("/etc/hosts", "hosts", hosts),
            (
                "/etc/hostname",
                "hostname",
                etcfiles::hostname_file(hostname),
            ),
            ("/etc/resolv.conf", "resolv.conf", resolv),
        ];
        let mut out = BTreeMap::new();
        for (container_path, name, content) in files {
            let path = dir.join(name);
            fs::write(&path, content).map_err(io_err(format!("writing {}", path.display())))?;
            out.insert(container_path.to_string(), path);
        }
        Ok(out)
    }

    /// Undoes whatever part of a sandbox exists; every step runs, the first error is returned.
    fn cleanup(&self, id: &str, has_network: bool) -> Result<(), SandboxError> {
        let dir = self.sandbox_dir(id);
        let mut steps: Vec<Result<(), SandboxError>> = Vec::new();
        if has_network {
            steps.push(
                self.net
                    .delete_link(&self.veth_name(id))
                    .map_err(SandboxError::from),
            );
        }
        steps.push(
            self.ipam
                .release_owner(id)
                .map(drop)
                .map_err(SandboxError::from),
        );
        if !dir.exists() {
            // A directory holding a mount cannot be deleted: no directory, no mounts.
            return steps.into_iter().collect();
        }
        self.kill_pause(id);
        steps.push(
            self.namespaces
                .release(&dir.join(NS_DIR))
                .map_err(SandboxError::from),
        );
        let removed = match fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                Err(io_err(format!("removing {}", dir.display()))(e))
            }
            _ => Ok(()),
        };
        steps.push(removed);
        steps.into_iter().collect()
    }

    fn stop(&self, id: &str) -> Result<()> {
        let lock = self.id_lock(id);
        let _guard = lock.lock().unwrap_or_else(PoisonError::into_inner);
        self.stop_locked(id)
            .map_err(operation("stopping sandbox", id))
    }

    fn stop_locked(&self, id: &str) -> Result<(), SandboxError> {
        let meta = match self.read_meta(id) {
            Ok(meta) => meta,
            Err(e) => {
                tracing::warn!(sandbox = id, error = %e, "unreadable sandbox record; stopping it anyway");
                None
            }
        };
        if meta.is_none() && !self.sandbox_dir(id).exists() {
            // Gone already; only stray IPAM records could be left.
            self.ipam.release_owner(id)?;
            return Ok(());
        }
        let has_network = meta
            .as_ref()
            .is_none_or(|s| s.namespaces.contains_key(NsKind::Net.name()));
        if has_network {
            self.net.delete_link(&self.veth_name(id))?;
        }
        let released = self.ipam.release_owner(id)?;
        // As a stopped pod sandbox's pause container: the shared PID namespace ends.
        self.kill_pause(id);
        if let Some(mut status) = meta {
            if status.state != SandboxState::NotReady {
                status.state = SandboxState::NotReady;
                Self::write_json(&self.sandbox_dir(id), META_FILE, &status)?;
            }
        }
        tracing::info!(sandbox = id, released = ?released, "sandbox stopped");
        Ok(())
    }

    /// Kills the sandbox's pause process, if it has one that still runs.
    fn kill_pause(&self, id: &str) {
        let path = self.sandbox_dir(id).join(PAUSE_FILE);
        match fs::read(&path) {
            Ok(bytes) => match serde_json::from_slice(&bytes) {
                Ok(holder) => self.namespaces.kill_pid_holder(holder),
                Err(e) => tracing::warn!(sandbox = id, error = %e, "unreadable {PAUSE_FILE}"),
            },
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(sandbox = id, error = %e, "reading {PAUSE_FILE}"),
        }
    }

    fn remove(&self, id: &str) -> Result<()> {
        let lock = self.id_lock(id);
        let guard = lock.lock().unwrap_or_else(PoisonError::into_inner);
        let result = self.stop_locked(id).and_then(|()| self.cleanup(id, false));
        drop(guard);
        if result.is_ok() {
            self.forget_id_lock(id, lock);
            tracing::info!(sandbox = id, "sandbox removed");
        }
        result.map_err(operation("removing sandbox", id))
    }

    /// Ids of every sandbox directory, finished or not.
    fn sandbox_ids(&self) -> Result<Vec<String>, SandboxError> {
        let dir = self.sandboxes_dir();
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_err(format!("reading {}", dir.display()))(e)),
        };
        let mut ids = Vec::new();
        for entry in entries {
            let entry = entry.map_err(io_err(format!("reading {}", dir.display())))?;
            if let Some(name) = entry.file_name().to_str().filter(|n| valid_id(n)) {
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    ids.push(name.to_string());
                }
            }
        }
        ids.sort();
        Ok(ids)
    }

    fn list(&self) -> Result<Vec<SandboxStatus>> {
        let fail = operation("listing sandboxes", "");
        let mut out = Vec::new();
        for id in self.sandbox_ids().map_err(fail)? {
            match self.read_meta(&id) {
                Ok(Some(status)) => out.push(self.refresh(status)),
                Ok(None) => {} // unfinished (being created, or a crash's leftover)
                Err(e) => {
                    tracing::warn!(sandbox = %id, error = %e, "skipping an unreadable sandbox record")
                }
            }
        }
        out.sort_by(|a, b| {
            a.created_at
                .cmp(&b.created_at)
                .then_with(|| a.id.cmp(&b.id))
        });
        Ok(out)
    }

    fn teardown(&self) -> Result<()> {
        let bridge = &self.options.bridge_name;
        let mut first_error: Option<RuntimeError> = None;
        let ids = self
            .sandbox_ids()
            .map_err(operation("tearing down", bridge))?;
        for id in &ids {
            if let Err(e) = self.remove(id) {
                tracing::warn!(sandbox = %id, error = %e, "teardown: removing sandbox");
                first_error.get_or_insert(e);
            }
        }
        // IPAM records whose sandbox is gone (a crash between allocation and record).
        let stray = self
            .ipam
            .allocations()
            .map_err(|e| operation("tearing down", bridge)(e.into()))?;
        for (ip, owner) in stray {
            if owner.is_empty() || !valid_id(&owner) || !self.sandbox_dir(&owner).exists() {
                if let Err(e) = self.ipam.release(ip) {
                    first_error.get_or_insert(operation("tearing down", bridge)(e.into()));
                }
            }
        }
        let mut network = self.network.lock().unwrap_or_else(PoisonError::into_inner);
        network.bridge_ready = false;
        if let Err(e) = self.net.delete_link(bridge) {
            first_error.get_or_insert(operation("deleting bridge", bridge)(e.into()));
        }
        drop(network);
        tracing::info!(bridge = %bridge, sandboxes = ids.len(), "pod network torn down");
        first_error.map_or(Ok(()), Err)
    }
}

fn node_hostname() -> String {
    match nix::unistd::gethostname() {
        Ok(name) => name.to_string_lossy().into_owned(),
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the node's hostname");
            "localhost".to_string()
        }
    }
}

/// The node's resolver settings; when a pod with its own network could use none of the
/// nameservers (only a loopback stub), systemd-resolved's upstream list instead.
fn node_resolv_conf(host_network: bool) -> etcfiles::ResolvConf {
    let read = |path: &str| fs::read_to_string(path).map(|text| etcfiles::parse_resolv_conf(&text));
    let mut conf = read(NODE_RESOLV_CONF).unwrap_or_else(|e| {
        tracing::warn!(error = %e, "cannot read the node's {NODE_RESOLV_CONF}");
        etcfiles::ResolvConf::default()
    });
    if !host_network && etcfiles::usable_nameservers(&conf, false).is_empty() {
        if let Ok(upstream) = read(SYSTEMD_RESOLV_CONF) {
            conf.nameservers = upstream.nameservers;
        }
    }
    conf
}

#[cfg(test)]
mod tests {
    use super::fakes::{CallLog, FakeNamespaces, FakeNet};
    use super::*;
    use crate::runtime::{DnsConfig, PodMeta};

    struct Lab {
        _root: tempfile::TempDir,
        root: PathBuf,
        log: CallLog,
        manager: SandboxManager,
    }

    impl Lab {
        fn new() -> anyhow::Result<Lab> {
            let root_dir = tempfile::tempdir()?;
            let root = root_dir.path().to_path_buf();
            let log = CallLog::default();
            let manager = Lab::manager_over(&root, &log)?;
            Ok(Lab {
                _root: root_dir,
                root,
                log,
                manager,
            })
        }

        fn manager_over(root: &Path, log: &CallLog) -> anyhow::Result<SandboxManager> {
            let options = SandboxOptions::new(root, "rkube0", Ipv4Addr::new(192, 0, 2, 2));
            let namespaces = Arc::new(FakeNamespaces {
                log: log.clone(),
                ..Default::default()
            });
            let net = Arc::new(FakeNet { log: log.clone() });
            Ok(SandboxManager::with_ops(options, namespaces, net)?)
        }
    }

    fn config(name: &str) -> SandboxConfig {
        SandboxConfig {
            pod: PodMeta {
                name: name.into(),
                namespace: "default".into(),
                uid: format!("uid-{name}"),
            },
            hostname: name.into(),
            host_aliases: vec![],
            dns: DnsConfig {
                servers: vec!["10.96.0.10".into()],
                searches: vec!["default.svc.cluster.local".into()],
                options: vec!["ndots:5".into()],
            },
            host_network: false,
            port_mappings: vec![],
            labels: BTreeMap::from([("app".to_string(), name.to_string())]),
            annotations: BTreeMap::new(),
            cgroup_parent: String::new(),
            share_process_namespace: false,
        }
    }

    #[tokio::test]
    async fn create_waits_for_the_pod_cidr() -> anyhow::Result<()> {
        let lab = Lab::new()?;
        let err = lab
            .manager
            .create("a", &config("web"))
            .await
            .err()
            .map(|e| e.to_string());
        assert_eq!(
            err.as_deref(),
            Some("creating sandbox a: network not ready: no podCIDR yet")
        );
        assert!(!lab.root.join("sandboxes/a").exists());
        assert!(lab.log.take().is_empty());
        Ok(())
    }

    #[tokio::test]
    async fn set_pod_cidr_sets_up_the_bridge_once() -> anyhow::Result<()> {
        let lab = Lab::new()?;
        lab.manager.set_pod_cidr("10.42.0.0/24").await?;
        lab.manager.set_pod_cidr("10.42.0.0/24").await?;
        assert_eq!(lab.log.take(), ["bridge rkube0 10.42.0.1/24", "ip_forward"]);
        assert_eq!(
            lab.manager.pod_cidr().map(|c| c.to_string()).as_deref(),
            Some("10.42.0.0/24")
        );
        lab.manager
            .set_pod_cidr("10.43.0.0/24,fd00:10:43::/64")
            .await?;
        assert_eq!(lab.log.take(), ["bridge rkube0 10.43.0.1/24", "ip_forward"]);
        assert!(lab.manager.set_pod_cidr("10.42.0.0").await.is_err());
        assert!(lab.manager.set_pod_cidr("fd00::/64").await.is_err());
        Ok(())
    }

    #[tokio::test]
    async fn create_builds_namespaces_network_and_files() -> anyhow::Result<()> {
        let lab = Lab::new()?;
        lab.manager.set_pod_cidr("10.42.0.0/24").await?;
        lab.log.take();
        let mut cfg = config("web");
        cfg.host_aliases = vec![("10.1.2.3".into(), vec!["db".into()])];
        let status = lab.manager.create("sb-a", &cfg).await?;
        let veth = host_veth_name("rkube0", "sb-a");
        assert_eq!(
            lab.log.take(),
            [
                "ns create net,ipc,uts hostname=web".to_string(),
                format!("veth {veth} master rkube0 peer eth0 in net"),
                "configure eth0 10.42.0.2/24 via 10.42.0.1".to_string(),
            ]
        );
        let dir = lab.root.join("sandboxes/sb-a");
        assert_eq!(status.ip.as_deref(), Some("10.42.0.2"));
        assert_eq!(status.state, SandboxState::Ready);
        assert_eq!(
            status.namespaces.keys().collect::<Vec<_>>(),
            ["ipc", "net", "uts"]
        );
        assert_eq!(status.namespaces["net"], dir.join("ns/net"));
        assert_eq!(status.etc_files["/etc/hosts"], dir.join("hosts"));
        let hosts = fs::read_to_string(&status.etc_files["/etc/hosts"])?;
        assert!(hosts.starts_with("# Kubernetes-managed hosts file.\n"));
        assert!(hosts.contains("\n10.42.0.2\tweb\n"));
        assert!(hosts.ends_with("# Entries added by HostAliases.\n10.1.2.3\tdb\n"));
        assert_eq!(
            fs::read_to_string(&status.etc_files["/etc/hostname"])?,
            "web\n"
        );
        assert_eq!(
            fs::read_to_string(&status.etc_files["/etc/resolv.conf"])?,
            "search default.svc.cluster.local\nnameserver 10.96.0.10\noptions ndots:5\n"
        );
        assert_eq!(
            fs::read_to_string(lab.root.join("network/ipam/10.42.0.2"))?,
            "sb-a"
        );
        let meta: SandboxStatus = serde_json::from_slice(&fs::read(dir.join("meta.json"))?)?;
        assert_eq!(meta, status);

        // The same id again: the same sandbox, nothing redone.
        assert_eq!(lab.manager.create("sb-a", &cfg).await?, status);
        assert!(lab.log.take().is_empty());
        assert_eq!(lab.manager.get("sb-a").await?, status);
        assert_eq!(lab.manager.config("sb-a").await?, cfg);
        assert!(matches!(
            lab.manager.config("sb-zz").await,
            Err(RuntimeError::NotFound(_))
        ));
        Ok(())
    }

    #[tokio::test]
    async fn a_shared_pid_namespace_has_a_pause_process_until_stop() -> anyhow::Result<()> {
        let lab = Lab::new()?;
        lab.manager.set_pod_cidr("10.42.0.0/24").await?;
        let mut cfg = config("web");
        cfg.share_process_namespace = true;

        // The pause process failing to start undoes the rest.
        lab.log.fail_on("ns pause");
        let err = lab.manager.create("sb-a", &cfg).await.err().ok_or_else(|| anyhow::anyhow!("created"))?;
        assert_eq!(
            err.to_string(),
            "creating sandbox sb-a: namespaces: starting the pause process: failed (fake)"
        );
        assert!(!lab.root.join("sandboxes/sb-a").exists());
        assert!(!lab.root.join("network/ipam/10.42.0.2").exists());
        lab.log.take();

        let status = lab.manager.create("sb-a", &cfg).await?;
        let calls = lab.log.take();
        assert!(calls.last().is_some_and(|c| c.starts_with("ns pause ")), "{calls:?}");
        let dir = lab.root.join("sandboxes/sb-a");
        assert_eq!(status.namespaces["pid"], dir.join("ns/pid"));
        assert_eq!(status.pid_holder, Some(fakes::FAKE_PAUSE));
        assert!(dir.join("pause.json").exists());
        assert_eq!(lab.manager.get("sb-a").await?.state, SandboxState::Ready);

        lab.manager.stop("sb-a").await?;
        let calls = lab.log.take();
        assert!(calls.contains(&"ns kill 4242".to_string()), "{calls:?}");
        assert_eq!(lab.manager.get("sb-a").await?.state, SandboxState::NotReady);
        lab.manager.remove("sb-a").await?;
        assert!(!dir.exists());
        Ok(())
    }

    #[tokio::test]
    async fn a_new_manager_sees_the_sandboxes_and_their_ips() -> anyhow::Result<()> {
        let lab = Lab::new()?;
        lab.manager.set_pod_cidr("10.42.0.0/24").await?;
        let a = lab.manager.create("sb-a", &config("a")).await?;
        let b = lab.manager.create("sb-b", &config("b")).await?;
        assert_eq!(b.ip.as_deref(), Some("10.42.0.3"));

        let restarted = Lab::manager_over(&lab.root, &lab.log)?;
        assert_eq!(restarted.list().await?, [a.clone(), b.clone()]);
        restarted.set_pod_cidr("10.42.0.0/24").await?;
        let c = restarted.create("sb-c", &config("c")).await?;
        assert_eq!(c.ip.as_deref(), Some("10.42.0.4"));
        Ok(())
    }

    #[tokio::test]
    async fn stop_releases_the_network_and_remove_the_rest() -> anyhow::Result<()> {
        let lab = Lab::new()?;
        lab.manager.set_pod_cidr("10.42.0.0/24").await?;
        lab.manager.create("sb-a", &config("a")).await?;
        lab.log.take();
        let veth = host_veth_name("rkube0", "sb-a");

        lab.manager.stop("sb-a").await?;
        assert_eq!(lab.log.take(), [format!("delete {veth}")]);
        assert!(!lab.root.join("network/ipam/10.42.0.2").exists());
        assert_eq!(lab.manager.get("sb-a").await?.state, SandboxState::NotReady);
        lab.manager.stop("sb-a").await?;
        lab.log.take();

        lab.manager.remove("sb-a").await?;
        assert_eq!(
            lab.log.take(),
            [format!("delete {veth}"), "ns release".to_string()]
        );
        assert!(!lab.root.join("sandboxes/sb-a").exists());
        assert!(matches!(
            lab.manager.get("sb-a").await,
            Err(RuntimeError::NotFound(_))
        ));
        lab.manager.remove("sb-a").await?;
        lab.manager.stop("sb-a").await?;
        lab.manager.remove("never-existed").await?;
        assert!(lab.log.take().is_empty());
        assert!(lab.manager.remove("../etc").await.is_err());
        Ok(())
    }

    #[tokio::test]
    async fn a_failure_midway_undoes_everything() -> anyhow::Result<()> {
        let lab = Lab::new()?;
        lab.manager.set_pod_cidr("10.42.0.0/24").await?;
        lab.log.take();
        lab.log.fail_on("configure");
        let err = lab
            .manager
            .create("sb-a", &config("a"))
            .await
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            err.starts_with("creating sandbox sb-a: network: `configure eth0"),
            "{err}"
        );
        let veth = host_veth_name("rkube0", "sb-a");
        let calls = lab.log.take();
        assert_eq!(
            calls[calls.len() - 2..],
            [format!("delete {veth}"), "ns release".to_string()]
        );
        assert!(!lab.root.join("sandboxes/sb-a").exists());
        assert!(lab.manager.list().await?.is_empty());
        // The address went back to the pool.
        let status = lab.manager.create("sb-b", &config("b")).await?;
        assert_eq!(
            status.ip.as_deref(),
            Some("10.42.0.3"),
            "round-robin moves on, but .2 is free again"
        );
        assert!(!lab.root.join("network/ipam/10.42.0.2").exists());

        lab.log.fail_on("ns create");
        assert!(lab.manager.create("sb-c", &config("c")).await.is_err());
        assert!(!lab.root.join("sandboxes/sb-c").exists());
        Ok(())
    }

    #[tokio::test]
    async fn host_network_pods_get_the_node_ip_and_only_an_ipc_namespace() -> anyhow::Result<()> {
        let lab = Lab::new()?;
        let mut cfg = config("agent");
        cfg.host_network = true;
        // No podCIDR needed for the host network.
        let status = lab.manager.create("sb-h", &cfg).await?;
        assert_eq!(status.ip.as_deref(), Some("192.0.2.2"));
        assert_eq!(status.namespaces.keys().collect::<Vec<_>>(), ["ipc"]);
        let calls = lab.log.take();
        assert_eq!(calls.len(), 1);
        assert!(calls[0].starts_with("ns create ipc "), "{calls:?}");
        let hosts = fs::read_to_string(&status.etc_files["/etc/hosts"])?;
        assert!(hosts.starts_with("# Kubernetes-managed hosts file (host network).\n"));
        assert_eq!(
            fs::read_to_string(&status.etc_files["/etc/hostname"])?,
            format!("{}\n", node_hostname())
        );
        lab.manager.remove("sb-h").await?;
        assert_eq!(lab.log.take(), ["ns release"]);
        Ok(())
    }

    #[tokio::test]
    async fn teardown_removes_everything_and_the_bridge() -> anyhow::Result<()> {
        let lab = Lab::new()?;
        lab.manager.set_pod_cidr("10.42.0.0/24").await?;
        lab.manager.create("sb-a", &config("a")).await?;
        lab.manager.create("sb-b", &config("b")).await?;
        // An unfinished sandbox (a crash before meta.json) and a stray IPAM record.
        fs::create_dir_all(lab.root.join("sandboxes/sb-x/ns"))?;
        fs::write(lab.root.join("network/ipam/10.42.0.99"), "sb-gone")?;
        lab.log.take();

        lab.manager.teardown().await?;
        let calls = lab.log.take();
        assert_eq!(calls.last().map(String::as_str), Some("delete rkube0"));
        assert_eq!(
            calls.iter().filter(|c| c.as_str() == "ns release").count(),
            3
        );
        assert_eq!(fs::read_dir(lab.root.join("sandboxes"))?.count(), 0);
        assert_eq!(
            fs::read_dir(lab.root.join("network/ipam"))?
                .filter(|e| e.is_ok())
                .count(),
            1
        ); // last_reserved_ip
        assert!(lab.manager.list().await?.is_empty());

        // The next sandbox brings the bridge back.
        lab.manager.create("sb-c", &config("c")).await?;
        assert_eq!(
            lab.log.take()[..2],
            ["bridge rkube0 10.42.0.1/24", "ip_forward"]
        );
        Ok(())
    }

    #[tokio::test]
    async fn dead_namespaces_make_a_sandbox_not_ready() -> anyhow::Result<()> {
        let lab = Lab::new()?;
        lab.manager.set_pod_cidr("10.42.0.0/24").await?;
        let status = lab.manager.create("sb-a", &config("a")).await?;
        fs::remove_file(&status.namespaces["net"])?; // as after a reboot
        assert_eq!(lab.manager.get("sb-a").await?.state, SandboxState::NotReady);
        Ok(())
    }

    #[test]
    fn ids_are_checked() {
        for good in ["a", "0123abcd", "pod_1.attempt-2"] {
            assert!(valid_id(good), "{good}");
        }
        for bad in ["", ".", "..", ".hidden", "a/b", "a b", &"x".repeat(129)] {
            assert!(!valid_id(bad), "{bad}");
        }
    }

    #[test]
    fn bad_bridge_names_are_refused() {
        let options = SandboxOptions::new("/tmp/x", "a-much-too-long-bridge", Ipv4Addr::LOCALHOST);
        assert!(SandboxManager::new(options).is_err());
    }
}
