//! Recording fakes of the sandbox's OS boundary ([`NamespaceOps`], [`NetOps`]): they keep
//! a log of calls and can be told to fail one operation, so the manager's bookkeeping and
//! its undo paths are tested without root.

use std::collections::BTreeMap;
use std::fs;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::netns::{NamespaceOps, NsError, NsKind};
use super::network::{NetError, NetOps};

/// The shared call log of both fakes, in order.
#[derive(Debug, Default, Clone)]
pub struct CallLog {
    calls: Arc<Mutex<Vec<String>>>,
    fail_on: Arc<Mutex<Option<String>>>,
}

impl CallLog {
    pub fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.calls.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Makes the next call whose log line starts with `prefix` fail.
    pub fn fail_on(&self, prefix: &str) {
        *self.fail_on.lock().unwrap_or_else(|e| e.into_inner()) = Some(prefix.to_string());
    }

    fn record(&self, call: String) -> bool {
        let mut fail_on = self.fail_on.lock().unwrap_or_else(|e| e.into_inner());
        let fail = fail_on
            .as_deref()
            .is_some_and(|prefix| call.starts_with(prefix));
        if fail {
            *fail_on = None;
        }
        self.calls
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(call);
        fail
    }
}

/// Namespaces as plain files: "alive" while the file exists.
#[derive(Debug, Default, Clone)]
pub struct FakeNamespaces {
    pub log: CallLog,
}

impl NamespaceOps for FakeNamespaces {
    fn create(
        &self,
        dir: &Path,
        kinds: &[NsKind],
        hostname: &str,
    ) -> Result<BTreeMap<NsKind, PathBuf>, NsError> {
        let names: Vec<&str> = kinds.iter().map(|k| k.name()).collect();
        if self
            .log
            .record(format!("ns create {} hostname={hostname}", names.join(",")))
        {
            return Err(NsError::Thread("failed (fake)"));
        }
        fs::create_dir_all(dir).map_err(|source| NsError::Io {
            context: "fake".into(),
            source,
        })?;
        let mut out = BTreeMap::new();
        for kind in kinds {
            let path = dir.join(kind.name());
            fs::write(&path, hostname).map_err(|source| NsError::Io {
                context: "fake".into(),
                source,
            })?;
            out.insert(*kind, path);
        }
        Ok(out)
    }

    fn release(&self, dir: &Path) -> Result<(), NsError> {
        self.log.record("ns release".to_string());
        for kind in NsKind::ALL {
            let _ = fs::remove_file(dir.join(kind.name()));
        }
        Ok(())
    }

    fn is_alive(&self, path: &Path) -> bool {
        path.exists()
    }
}

/// A network that only records what it was asked to do.
#[derive(Debug, Default, Clone)]
pub struct FakeNet {
    pub log: CallLog,
}

impl FakeNet {
    fn call(&self, line: String) -> Result<(), NetError> {
        if self.log.record(line.clone()) {
            return Err(NetError::Command {
                command: line,
                status: "exit status: 2".into(),
                stderr: "fake failure".into(),
            });
        }
        Ok(())
    }
}

impl NetOps for FakeNet {
    fn ensure_bridge(&self, bridge: &str, gateway: Ipv4Addr, prefix: u8) -> Result<(), NetError> {
        self.call(format!("bridge {bridge} {gateway}/{prefix}"))
    }

    fn enable_ip_forward(&self) -> Result<(), NetError> {
        self.call("ip_forward".to_string())
    }

    fn add_veth(
        &self,
        host_ifname: &str,
        bridge: &str,
        netns: &Path,
        pod_ifname: &str,
    ) -> Result<(), NetError> {
        let ns = netns
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        self.call(format!(
            "veth {host_ifname} master {bridge} peer {pod_ifname} in {ns}"
        ))
    }

    fn configure_pod_interface(
        &self,
        _netns: &Path,
        pod_ifname: &str,
        address: Ipv4Addr,
        prefix: u8,
        gateway: Ipv4Addr,
    ) -> Result<(), NetError> {
        self.call(format!(
            "configure {pod_ifname} {address}/{prefix} via {gateway}"
        ))
    }

    fn delete_link(&self, ifname: &str) -> Result<(), NetError> {
        self.call(format!("delete {ifname}"))
    }
}
