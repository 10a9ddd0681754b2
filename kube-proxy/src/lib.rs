//! kube-proxy on nftables: watches Services, EndpointSlices and this node's pods, and
//! keeps one nftables table (`ip kube-proxy` by default) in step with them. The first
//! sync writes the whole table in one transaction; later ones change only what changed.
//! A restart rewrites the table from the API without touching conntrack, so established
//! connections keep their endpoints. A clean shutdown removes the table.

pub mod model;
pub mod proxier;
pub mod ruleset;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use component_base::reflect::notifying_store;
use ipnet::Ipv4Net;
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::Api;
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::model::{HostPort, ServicePort, SERVICE_NAME_LABEL};
pub use component_base::nft;

use crate::nft::{Nft, NftCommand, NftError};
use crate::proxier::ProxyRules;
use crate::ruleset::Ruleset;

/// The table kube-proxy owns unless told otherwise.
pub const DEFAULT_TABLE: &str = "kube-proxy";

#[derive(Debug, Clone)]
pub struct Config {
    /// `--kubeconfig`.
    pub kubeconfig: Option<PathBuf>,
    /// `--hostname-override`: the node whose endpoints count as local and whose pods'
    /// host ports are programmed.
    pub node_name: String,
    /// The nftables table (in the `ip` family) this kube-proxy owns.
    pub table: String,
    /// `--cluster-cidr`.
    pub cluster_cidr: Option<Ipv4Net>,
    /// Changes arriving within this window are synced together.
    pub min_sync_period: Duration,
    /// How often the whole table is rewritten even when nothing seems to have changed
    /// (repairs edits made behind kube-proxy's back).
    pub full_sync_period: Duration,
    /// Set the sysctls Services need (forwarding, bridged traffic through nftables,
    /// NodePorts on 127.0.0.1).
    pub configure_host: bool,
}

impl Config {
    pub fn new(node_name: &str) -> Config {
        Config {
            kubeconfig: None,
            node_name: node_name.to_string(),
            table: DEFAULT_TABLE.into(),
            cluster_cidr: None,
            min_sync_period: Duration::from_millis(50),
            full_sync_period: Duration::from_secs(3600),
            configure_host: true,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error(transparent)]
    Client(#[from] component_base::client::ClientError),
    #[error("watching {what}")]
    Watch { what: &'static str, #[source] source: reflector::store::WriterDropped },
    #[error("removing nftables table {table}")]
    Cleanup { table: String, #[source] source: NftError },
}

/// Runs kube-proxy with the `nft` program until `shutdown`, then removes its table.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), ProxyError> {
    let client = component_base::client::client(config.kubeconfig.as_deref()).await?;
    run_with(client, Arc::new(NftCommand::default()), config, shutdown).await
}

/// Removes the table a kube-proxy left (for `rkube down` after a crash).
pub fn cleanup(table: &str) -> Result<(), ProxyError> {
    nft::delete_table(&NftCommand::default(), table).map_err(|source| ProxyError::Cleanup { table: table.into(), source })
}

/// Runs kube-proxy against `client`, applying rules through `nft`.
pub async fn run_with(client: kube::Client, nft: Arc<dyn Nft>, config: Config, shutdown: CancellationToken) -> Result<(), ProxyError> {
    if config.configure_host {
        configure_host();
    }
    let changed = Arc::new(Notify::new());
    let services = notifying_store(Api::<Service>::all(client.clone()), watcher::Config::default(), &changed, &shutdown);
    let slices = notifying_store(Api::<EndpointSlice>::all(client.clone()), watcher::Config::default(), &changed, &shutdown);
    let pods = notifying_store(
        Api::<Pod>::all(client),
        watcher::Config::default().fields(&format!("spec.nodeName={}", config.node_name)),
        &changed,
        &shutdown,
    );
    let ready = async {
        services.wait_until_ready().await.map_err(|source| ProxyError::Watch { what: "services", source })?;
        slices.wait_until_ready().await.map_err(|source| ProxyError::Watch { what: "endpointslices", source })?;
        pods.wait_until_ready().await.map_err(|source| ProxyError::Watch { what: "pods", source })
    };
    tokio::select! {
        _ = shutdown.cancelled() => return Ok(()),
        r = ready => r?,
    }
    tracing::info!(table = %config.table, node = %config.node_name, "kube-proxy caches synced");

    let rules = ProxyRules { cluster_cidr: config.cluster_cidr };
    let mut syncer = Syncer::new(nft.clone(), &config.table);
    let mut last_full = Instant::now();
    let mut retry = Duration::from_millis(500);
    loop {
        if last_full.elapsed() >= config.full_sync_period {
            syncer.force_full();
            last_full = Instant::now();
        }
        let desired = desired_ruleset(&services, &slices, &pods, &config.node_name, &rules);
        let next_wait = match syncer.sync(desired) {
            Ok(_) => {
                retry = Duration::from_millis(500);
                config.full_sync_period
            }
            Err(e) => {
                tracing::error!(error = %e, table = %config.table, "nftables sync failed; retrying with a full sync");
                retry = (retry * 2).min(Duration::from_secs(30));
                retry / 2
            }
        };
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = changed.notified() => {}
            _ = tokio::time::sleep(next_wait) => {}
        }
        // Let a burst of changes (a Deployment scaling, a namespace going) land together.
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(config.min_sync_period) => {}
        }
    }
    let table = config.table.clone();
    tokio::task::spawn_blocking(move || nft::delete_table(nft.as_ref(), &table))
        .await
        .unwrap_or_else(|e| Err(NftError::Failed { status: "the cleanup thread panicked".into(), stderr: e.to_string() }))
        .map_err(|source| ProxyError::Cleanup { table: config.table, source })
}

/// What the table should hold for the objects in the caches.
pub fn desired_ruleset(
    services: &Store<Service>,
    slices: &Store<EndpointSlice>,
    pods: &Store<Pod>,
    node_name: &str,
    rules: &ProxyRules,
) -> Ruleset {
    let all_slices = slices.state();
    let mut by_service: HashMap<(String, String), Vec<&EndpointSlice>> = HashMap::new();
    for slice in &all_slices {
        let Some(service) = slice.metadata.labels.as_ref().and_then(|l| l.get(SERVICE_NAME_LABEL)) else { continue };
        let namespace = slice.metadata.namespace.clone().unwrap_or_default();
        by_service.entry((namespace, service.clone())).or_default().push(slice.as_ref());
    }
    let mut ports: Vec<ServicePort> = Vec::new();
    for service in services.state() {
        let key = (service.metadata.namespace.clone().unwrap_or_default(), service.metadata.name.clone().unwrap_or_default());
        let slices = by_service.get(&key).map(Vec::as_slice).unwrap_or(&[]);
        ports.extend(model::service_ports(&service, slices, node_name));
    }
    let mut pod_list = pods.state();
    pod_list.sort_by(|a, b| (&a.metadata.namespace, &a.metadata.name).cmp(&(&b.metadata.namespace, &b.metadata.name)));
    let host_ports: Vec<HostPort> = pod_list.iter().flat_map(|p| model::host_ports(p)).collect();
    proxier::build(&ports, &host_ports, rules)
}

/// How a sync went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncKind {
    /// The whole table was written.
    Full,
    /// Only what changed was written.
    Partial,
    /// The table already matched.
    Unchanged,
}

/// Keeps the table equal to the last desired ruleset, with the smallest transaction
/// that gets it there; after a failed transaction the next one rewrites the table.
pub struct Syncer {
    nft: Arc<dyn Nft>,
    table: String,
    current: Option<Ruleset>,
}

impl Syncer {
    pub fn new(nft: Arc<dyn Nft>, table: &str) -> Syncer {
        Syncer { nft, table: table.to_string(), current: None }
    }

    /// The next sync rewrites the whole table.
    pub fn force_full(&mut self) {
        self.current = None;
    }

    pub fn sync(&mut self, desired: Ruleset) -> Result<SyncKind, NftError> {
        let started = Instant::now();
        let (kind, batch) = match &self.current {
            Some(current) => (SyncKind::Partial, desired.diff_batch(current, &self.table)),
            None => (SyncKind::Full, desired.full_batch(&self.table)),
        };
        if batch.is_empty() {
            return Ok(SyncKind::Unchanged);
        }
        if let Err(e) = self.nft.apply(&batch) {
            self.current = None;
            return Err(e);
        }
        tracing::debug!(?kind, chains = desired.chains.len(), bytes = batch.len(), elapsed = ?started.elapsed(), "nftables synced");
        self.current = Some(desired);
        Ok(kind)
    }
}

/// The kernel settings Services depend on. Failures are logged, not fatal: a node
/// without bridges has no bridge sysctl, and a read-only /proc still proxies host traffic.
fn configure_host() {
    load_br_netfilter();
    for (path, value) in [
        ("/proc/sys/net/ipv4/ip_forward", "1"),
        // NodePorts on 127.0.0.1 (the filter-prerouting hook drops such packets arriving
        // from anywhere but the loopback interface).
        ("/proc/sys/net/ipv4/conf/all/route_localnet", "1"),
        // Pod-to-Service traffic between pods on one bridge must pass the nat hooks.
        ("/proc/sys/net/bridge/bridge-nf-call-iptables", "1"),
    ] {
        if let Err(e) = std::fs::write(path, value) {
            tracing::warn!(path, error = %e, "cannot set sysctl");
        }
    }
}

/// Loads `br_netfilter` when its sysctls are missing. Stock Debian and Ubuntu kernels
/// build it as a module that nothing loads (kubeadm asks the admin to, k3s loads it
/// itself); without it, a pod's request to a Service whose endpoint is on the same
/// bridge is DNATed but its reply is bridged straight back, and the connection hangs.
fn load_br_netfilter() {
    if std::path::Path::new("/proc/sys/net/bridge").exists() {
        return;
    }
    // `modprobe` lives in /usr/sbin, which a non-login PATH may lack.
    for modprobe in ["modprobe", "/usr/sbin/modprobe", "/sbin/modprobe"] {
        match std::process::Command::new(modprobe).arg("br_netfilter").output() {
            Ok(out) if out.status.success() => {
                tracing::info!("loaded the br_netfilter kernel module");
                return;
            }
            Ok(out) => {
                let stderr = String::from_utf8_lossy(&out.stderr);
                tracing::warn!(error = %stderr.trim(), "cannot load br_netfilter: traffic from a pod to a Service on the same node may hang");
                return;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => {
                tracing::warn!(error = %e, "cannot run modprobe br_netfilter");
                return;
            }
        }
    }
    tracing::warn!("no modprobe (Debian: apt-get install kmod) to load br_netfilter: traffic from a pod to a Service on the same node may hang");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nft::RecordingNft;

    fn ruleset_with(chains: &[&str]) -> Ruleset {
        let mut r = Ruleset::default();
        for c in chains {
            r.chains.insert((*c).to_string(), vec!["counter".into()]);
        }
        r
    }

    #[test]
    fn first_sync_is_full_then_partial_and_a_failure_forces_full() {
        let nft = Arc::new(RecordingNft::default());
        let mut syncer = Syncer::new(nft.clone(), "t");
        assert_eq!(syncer.sync(ruleset_with(&["a"])).expect("sync"), SyncKind::Full);
        assert_eq!(syncer.sync(ruleset_with(&["a"])).expect("sync"), SyncKind::Unchanged);
        assert_eq!(syncer.sync(ruleset_with(&["a", "b"])).expect("sync"), SyncKind::Partial);
        nft.fail_next.store(1, std::sync::atomic::Ordering::SeqCst);
        assert!(syncer.sync(ruleset_with(&["a"])).is_err());
        assert_eq!(syncer.sync(ruleset_with(&["a"])).expect("sync"), SyncKind::Full);
        let batches = nft.batches();
        assert_eq!(batches.len(), 4, "three applied, one refused");
        assert!(batches[0].starts_with("add table ip t\ndelete table ip t\n"));
        assert_eq!(batches[1], "add chain ip t b\nadd rule ip t b counter\n");
        assert!(batches[3].starts_with("add table ip t\ndelete table ip t\n"));
    }
}
