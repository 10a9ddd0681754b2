//! Pod sandboxes: per-pod network, IPC and UTS namespaces kept alive by bind mounts, the
//! pod's veth on the node bridge with an IP from the podCIDR, and the pod's
//! `/etc/hosts`, `/etc/hostname` and `/etc/resolv.conf`. (Being written: the signatures
//! below are the contract the container runtime and the kubelet use.)

use std::net::Ipv4Addr;
use std::path::PathBuf;

use super::{Result, SandboxConfig, SandboxStatus};

/// Node-level settings of the pod network.
#[derive(Debug, Clone)]
pub struct SandboxOptions {
    /// `ROOT/sandboxes` lives under this root.
    pub root: PathBuf,
    /// The node bridge (at most 15 bytes; distinct per lab so two labs can share a host).
    pub bridge_name: String,
    /// The node's address: host-network pods report it as their IP.
    pub node_ip: Ipv4Addr,
}

pub struct SandboxManager {
    options: SandboxOptions,
}

impl SandboxManager {
    pub fn new(options: SandboxOptions) -> Result<Self> {
        Ok(SandboxManager { options })
    }

    pub fn options(&self) -> &SandboxOptions {
        &self.options
    }

    /// Sets the node's podCIDR: the bridge takes its first address, pods the rest.
    pub async fn set_pod_cidr(&self, _cidr: &str) -> Result<()> {
        Ok(())
    }

    /// Creates (or, with the same id, returns) a sandbox.
    pub async fn create(&self, id: &str, _config: &SandboxConfig) -> Result<SandboxStatus> {
        Err(super::RuntimeError::CreateSandbox { id: id.into(), message: "not yet".into() })
    }

    /// Tears down the sandbox's network (veth, IP); keeps its record. Idempotent.
    pub async fn stop(&self, _id: &str) -> Result<()> {
        Ok(())
    }

    /// Unmounts the namespace files and deletes the sandbox's directory. Idempotent.
    pub async fn remove(&self, _id: &str) -> Result<()> {
        Ok(())
    }

    pub async fn get(&self, id: &str) -> Result<SandboxStatus> {
        Err(super::RuntimeError::NotFound(format!("sandbox {id}")))
    }

    pub async fn list(&self) -> Result<Vec<SandboxStatus>> {
        Ok(Vec::new())
    }

    /// A TCP connection to `port` on the sandbox's own loopback (`kubectl port-forward`).
    pub async fn connect(&self, id: &str, _port: u16) -> Result<tokio::net::TcpStream> {
        Err(super::RuntimeError::NotFound(format!("sandbox {id}")))
    }

    /// Removes every sandbox and the bridge (`rkube down`).
    pub async fn teardown(&self) -> Result<()> {
        Ok(())
    }
}
