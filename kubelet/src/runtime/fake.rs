//! A runtime with no processes: sandboxes get an IP from the podCIDR, containers "run"
//! as soon as they start and stop when asked. Many hollow kubelets can share one process
//! on it for scale tests (kubemark's hollow node, in Kubernetes' terms).

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use chrono::Utc;

use super::{
    ContainerConfig, ContainerState, ContainerStats, ContainerStatus, ExecRequest, ExecSession, ImageInfo, ImageService,
    RegistryAuth, Result, Runtime, RuntimeError, SandboxConfig, SandboxState, SandboxStatus,
};

#[derive(Default)]
struct State {
    sandboxes: BTreeMap<String, SandboxStatus>,
    containers: BTreeMap<String, ContainerStatus>,
    /// The podCIDR's network and prefix, and the next host number to hand out.
    cidr: Option<(Ipv4Addr, u8)>,
    next_host: u32,
    next_id: u64,
    images: HashMap<String, ImageInfo>,
}

/// The fake runtime and image service; see the module docs.
#[derive(Default)]
pub struct FakeRuntime {
    state: Mutex<State>,
}

impl FakeRuntime {
    pub fn new() -> FakeRuntime {
        FakeRuntime::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the maps half-updated in a way that
        // matters to a fake; keep serving.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

fn parse_cidr(cidr: &str) -> Option<(Ipv4Addr, u8)> {
    let (addr, prefix) = cidr.split_once('/')?;
    Some((addr.parse().ok()?, prefix.parse().ok().filter(|p: &u8| *p <= 32)?))
}

#[async_trait]
impl Runtime for FakeRuntime {
    async fn run_pod_sandbox(&self, config: &SandboxConfig) -> Result<SandboxStatus> {
        let mut state = self.lock();
        let ip = if config.host_network {
            None
        } else {
            let Some((net, prefix)) = state.cidr else {
                return Err(RuntimeError::CreateSandbox {
                    id: config.pod.uid.clone(),
                    message: "network not ready: no podCIDR yet".into(),
                });
            };
            state.next_host += 1;
            let size = 1u32.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            let host = 1 + (state.next_host % size.saturating_sub(2).max(1));
            Some(Ipv4Addr::from(u32::from(net) + host).to_string())
        };
        state.next_id += 1;
        let id = format!("fake-sandbox-{}", state.next_id);
        let status = SandboxStatus {
            id: id.clone(),
            pod: config.pod.clone(),
            state: SandboxState::Ready,
            ip,
            created_at: Utc::now(),
            labels: config.labels.clone(),
            namespaces: BTreeMap::new(),
            etc_files: BTreeMap::new(),
            pid_holder: None,
        };
        state.sandboxes.insert(id, status.clone());
        Ok(status)
    }

    async fn stop_pod_sandbox(&self, id: &str) -> Result<()> {
        let mut state = self.lock();
        let now = Utc::now();
        for c in state.containers.values_mut().filter(|c| c.sandbox_id == id && c.state == ContainerState::Running) {
            c.state = ContainerState::Exited;
            c.exit_code = Some(137);
            c.reason = Some("Error".into());
            c.finished_at = Some(now);
        }
        if let Some(s) = state.sandboxes.get_mut(id) {
            s.state = SandboxState::NotReady;
        }
        Ok(())
    }

    async fn remove_pod_sandbox(&self, id: &str) -> Result<()> {
        let mut state = self.lock();
        state.sandboxes.remove(id);
        state.containers.retain(|_, c| c.sandbox_id != id);
        Ok(())
    }

    async fn list_pod_sandboxes(&self) -> Result<Vec<SandboxStatus>> {
        Ok(self.lock().sandboxes.values().cloned().collect())
    }

    async fn update_pod_cidr(&self, cidr: &str) -> Result<()> {
        let parsed = parse_cidr(cidr).ok_or_else(|| RuntimeError::InvalidConfig(format!("invalid podCIDR {cidr:?}")))?;
        self.lock().cidr = Some(parsed);
        Ok(())
    }

    async fn teardown(&self) -> Result<()> {
        let mut state = self.lock();
        state.sandboxes.clear();
        state.containers.clear();
        Ok(())
    }

    async fn create_container(&self, sandbox_id: &str, config: &ContainerConfig) -> Result<String> {
        let mut state = self.lock();
        if !state.sandboxes.contains_key(sandbox_id) {
            return Err(RuntimeError::NotFound(format!("sandbox {sandbox_id}")));
        }
        state.next_id += 1;
        let id = format!("fake-container-{}", state.next_id);
        let image_ref = state.images.get(&config.image).map(|i| i.id.clone()).unwrap_or_else(|| config.image.clone());
        state.containers.insert(
            id.clone(),
            ContainerStatus {
                id: id.clone(),
                sandbox_id: sandbox_id.into(),
                name: config.name.clone(),
                attempt: config.attempt,
                state: ContainerState::Created,
                created_at: Utc::now(),
                started_at: None,
                finished_at: None,
                exit_code: None,
                reason: None,
                message: None,
                image: config.image.clone(),
                image_ref,
                labels: config.labels.clone(),
                log_path: config.log_path.clone(),
                pid: None,
            },
        );
        Ok(id)
    }

    async fn start_container(&self, id: &str) -> Result<()> {
        let mut state = self.lock();
        let c = state.containers.get_mut(id).ok_or_else(|| RuntimeError::NotFound(format!("container {id}")))?;
        c.state = ContainerState::Running;
        c.started_at = Some(Utc::now());
        Ok(())
    }

    async fn stop_container(&self, id: &str, _grace: Duration) -> Result<()> {
        let mut state = self.lock();
        let c = state.containers.get_mut(id).ok_or_else(|| RuntimeError::NotFound(format!("container {id}")))?;
        if c.state == ContainerState::Running {
            c.state = ContainerState::Exited;
            c.exit_code = Some(0);
            c.reason = Some("Completed".into());
            c.finished_at = Some(Utc::now());
        }
        Ok(())
    }

    async fn remove_container(&self, id: &str) -> Result<()> {
        self.lock().containers.remove(id);
        Ok(())
    }

    async fn list_containers(&self) -> Result<Vec<ContainerStatus>> {
        Ok(self.lock().containers.values().cloned().collect())
    }

    async fn container_status(&self, id: &str) -> Result<ContainerStatus> {
        self.lock().containers.get(id).cloned().ok_or_else(|| RuntimeError::NotFound(format!("container {id}")))
    }

    async fn container_stats(&self, id: &str) -> Result<ContainerStats> {
        Ok(ContainerStats { id: id.into(), ..Default::default() })
    }

    async fn exec(&self, request: ExecRequest) -> Result<ExecSession> {
        Err(RuntimeError::Operation {
            op: "exec in",
            id: request.container_id,
            message: "the fake runtime runs no processes".into(),
        })
    }

    async fn attach(&self, container_id: &str, _stdin: bool, _tty: bool) -> Result<ExecSession> {
        Err(RuntimeError::Operation {
            op: "attach to",
            id: container_id.into(),
            message: "the fake runtime runs no processes".into(),
        })
    }

    async fn port_forward(&self, sandbox_id: &str, _port: u16) -> Result<tokio::net::TcpStream> {
        Err(RuntimeError::Operation {
            op: "port-forward to",
            id: sandbox_id.into(),
            message: "the fake runtime runs no processes".into(),
        })
    }
}

#[async_trait]
impl ImageService for FakeRuntime {
    async fn pull_image(&self, reference: &str, _auth: Option<&RegistryAuth>) -> Result<ImageInfo> {
        let mut state = self.lock();
        let n = state.images.len();
        let info = state
            .images
            .entry(reference.to_string())
            .or_insert_with(|| ImageInfo {
                id: format!("sha256:{:064x}", n + 1),
                repo_tags: vec![reference.to_string()],
                repo_digests: Vec::new(),
                size: 0,
                created: None,
            })
            .clone();
        Ok(info)
    }

    async fn image_status(&self, reference: &str) -> Result<Option<ImageInfo>> {
        Ok(self.lock().images.get(reference).cloned())
    }

    async fn list_images(&self) -> Result<Vec<ImageInfo>> {
        Ok(self.lock().images.values().cloned().collect())
    }

    async fn remove_image(&self, reference: &str) -> Result<()> {
        // By reference or by image id, as the real store accepts both.
        self.lock().images.retain(|r, info| r != reference && info.id != reference);
        Ok(())
    }
}
