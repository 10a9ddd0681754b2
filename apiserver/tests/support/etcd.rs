//! Local etcd processes for tests: one member or a cluster on free loopback ports, data
//! in a temp dir, killed when dropped.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use apiserver::storage::etcd::EtcdStore;

pub fn etcd_binary() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join("etcd"))
        .find(|p| p.is_file())
}

/// Loopback ports nobody listens on now (held together so they are distinct).
pub fn free_ports(n: usize) -> anyhow::Result<Vec<u16>> {
    let listeners = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(listeners
        .iter()
        .map(|l| l.local_addr().map(|a| a.port()))
        .collect::<Result<Vec<_>, _>>()?)
}

/// One etcd process; killed when dropped.
pub struct EtcdMember {
    pub name: String,
    pub child: Option<Child>,
    pub client_url: String,
    pub log: PathBuf,
}

impl EtcdMember {
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for EtcdMember {
    fn drop(&mut self) {
        self.kill();
    }
}

/// An etcd cluster of local processes with data under a temp dir.
pub struct EtcdCluster {
    pub members: Vec<EtcdMember>,
    _dir: tempfile::TempDir,
}

impl EtcdCluster {
    pub fn start(binary: &Path, size: usize) -> anyhow::Result<EtcdCluster> {
        let dir = tempfile::tempdir()?;
        let ports = free_ports(2 * size)?;
        let peer_url = |i: usize| format!("http://127.0.0.1:{}", ports[2 * i + 1]);
        let initial: Vec<String> = (0..size).map(|i| format!("m{i}={}", peer_url(i))).collect();
        let mut members = Vec::new();
        for i in 0..size {
            let name = format!("m{i}");
            let client_url = format!("http://127.0.0.1:{}", ports[2 * i]);
            let log = dir.path().join(format!("{name}.log"));
            let log_file = std::fs::File::create(&log)?;
            let child = Command::new(binary)
                .arg("--name")
                .arg(&name)
                .arg("--data-dir")
                .arg(dir.path().join(&name))
                .arg("--listen-client-urls")
                .arg(&client_url)
                .arg("--advertise-client-urls")
                .arg(&client_url)
                .arg("--listen-peer-urls")
                .arg(peer_url(i))
                .arg("--initial-advertise-peer-urls")
                .arg(peer_url(i))
                .arg("--initial-cluster")
                .arg(initial.join(","))
                .arg("--initial-cluster-state")
                .arg("new")
                .arg("--initial-cluster-token")
                .arg("rkube-test")
                .stdin(Stdio::null())
                .stdout(log_file.try_clone()?)
                .stderr(log_file)
                .spawn()
                .with_context(|| format!("starting {}", binary.display()))?;
            members.push(EtcdMember {
                name,
                child: Some(child),
                client_url,
                log,
            });
        }
        Ok(EtcdCluster { members, _dir: dir })
    }

    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(|m| m.client_url.clone()).collect()
    }

    /// Connects once the cluster answers (it has a leader), polling.
    pub async fn connect(&mut self) -> anyhow::Result<EtcdStore> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            for m in &mut self.members {
                if let Some(status) = m.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                    let log = std::fs::read_to_string(&m.log).unwrap_or_default();
                    bail!("etcd {} exited with {status}:\n{log}", m.name);
                }
            }
            match EtcdStore::connect(&self.endpoints()).await {
                Ok(store) => return Ok(store),
                Err(e) if Instant::now() > deadline => {
                    return Err(anyhow!(e).context("etcd did not become ready"))
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }
}

/// Starts an etcd cluster, or says why the test is skipped.
pub fn start_etcd(size: usize) -> anyhow::Result<Option<EtcdCluster>> {
    match etcd_binary() {
        Some(binary) => EtcdCluster::start(&binary, size).map(Some),
        None => {
            super::skip_or_fail(
                "etcd not on PATH; install etcd-server (the README's test command does)",
            )?;
            Ok(None)
        }
    }
}
