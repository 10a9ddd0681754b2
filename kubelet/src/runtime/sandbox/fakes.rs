//! Recording fakes of the sandbox's OS boundary ([`NamespaceOps`], [`NetOps`]): they keep
//! a log of calls and can be told to fail one operation, so the manager's bookkeeping and
//! its undo paths are tested without root.

use std::collections::BTreeMap;
use std::fs;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::netns::{NamespaceOps, NsError, NsKind, PID_NS};
use crate::runtime::ProcessRef;
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

/// Namespaces as plain files: "alive" while the file exists; pause processes are alive
/// until killed.
#[derive(Debug, Default, Clone)]
pub struct FakeNamespaces {
    pub log: CallLog,
    /// Pause processes killed so far.
    pub killed: Arc<Mutex<Vec<u32>>>,
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
        for name in NsKind::ALL.map(NsKind::name).into_iter().chain([PID_NS]) {
            let _ = fs::remove_file(dir.join(name));
        }
        Ok(())
    }

    fn is_alive(&self, path: &Path) -> bool {
        path.exists()
    }

    fn create_pid(&self, helper: &Path, dir: &Path) -> Result<(PathBuf, ProcessRef), NsError> {
        if self.log.record(format!("ns pause {}", helper.display())) {
            return Err(NsError::Pause("failed (fake)".into()));
        }
        let path = dir.join(PID_NS);
        fs::write(&path, "").map_err(|source| NsError::Io {
            context: "fake".into(),
            source,
        })?;
        Ok((path, FAKE_PAUSE))
    }

    fn kill_pid_holder(&self, holder: ProcessRef) {
        self.log.record(format!("ns kill {}", holder.pid));
        self.killed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(holder.pid);
    }

    fn pid_holder_alive(&self, holder: ProcessRef) -> bool {
        !self
            .killed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&holder.pid)
    }
}

/// The pause process the fake "starts".
pub const FAKE_PAUSE: ProcessRef = ProcessRef {
    pid: 4242,
    start_ticks: 1,
};

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
