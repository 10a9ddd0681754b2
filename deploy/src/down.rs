//! `rkube down` and `rkube reset`: stop the lab's process, then remove everything its
//! node set up on the host (containers, mounts, network namespaces, veths, the bridge,
//! cgroups, kube-proxy's nftables table); `reset` also deletes the lab's state.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::lab::Lab;

/// How long the lab may take to stop after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

pub async fn down(lab: &Lab, reset: bool) -> anyhow::Result<()> {
    if let Some(pid) = lab.running_pid() {
        let pid = Pid::from_raw(pid);
        kill(pid, Signal::SIGTERM).with_context(|| format!("stopping rkube (pid {pid})"))?;
        let started = Instant::now();
        while kill(pid, None).is_ok() && !is_zombie(pid) {
            if started.elapsed() > STOP_TIMEOUT {
                tracing::warn!(%pid, "rkube did not stop within {}s; killing it", STOP_TIMEOUT.as_secs());
                let _ = kill(pid, Signal::SIGKILL);
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        println!("stopped rkube (pid {pid})");
    }
    let _ = std::fs::remove_file(lab.pid_file());
    let settings = lab.load_settings()?;
    if let Some(settings) = &settings {
        let config = crate::up::kubelet_config(lab, settings);
        kubelet::teardown(&config).await.context("removing the node's containers, mounts, network and cgroups")?;
        // kube-proxy removes its table when it stops cleanly; after a crash it is here.
        let table = crate::up::proxy_table(settings);
        kube_proxy::cleanup(&table).with_context(|| format!("removing nftables table {table}"))?;
        println!("removed the node's containers, mounts, network, cgroups and Service rules");
    }
    if let (true, Some(settings)) = (reset, &settings) {
        crate::lab::release_pod_network(&lab.dir, settings);
    }
    if reset && lab.dir.exists() {
        std::fs::remove_dir_all(&lab.dir).with_context(|| format!("deleting {}", lab.dir.display()))?;
        println!("deleted {}", lab.dir.display());
    }
    Ok(())
}

fn is_zombie(pid: Pid) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| s.rsplit(')').next().map(|rest| rest.trim_start().starts_with('Z')).unwrap_or(false))
        .unwrap_or(true)
}
