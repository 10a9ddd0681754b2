//! The node's part of the pod network around the bridge the runtime builds (see
//! [`crate::runtime::sandbox`]), what flannel and the CNI bridge plugin's `ipMasq` add in
//! a real cluster: egress masquerade for pod traffic leaving the cluster CIDR
//! ([`masquerade`]), and routes to the other nodes' podCIDRs ([`routes`]): host-gw where
//! the other node is on a directly connected subnet, through a VXLAN overlay
//! ([`vxlan`]) where it is not (`--pod-network-backend`). Pods wait for the masquerade as
//! they wait for the bridge; the routes follow the Nodes. All of it is removed by
//! [`teardown`] (`rkube down`), not when the kubelet merely stops.

pub mod masquerade;
pub mod netlink;
pub mod routes;
pub mod vxlan;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::KubeletConfig;
use crate::runtime::sandbox::{Ipv4Cidr, Rtnetlink};
use masquerade::{Masquerade, NftCommand, NftError};
use routes::{RouteError, RouteSync};
use vxlan::{VxlanError, VxlanOps, VxlanSpec};

/// How soon a failed masquerade setup is tried again.
const MASQUERADE_RETRY: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error("--cluster-cidr {cidr:?}: {reason}")]
    ClusterCidr { cidr: String, reason: String },
    #[error("removing the pod egress masquerade: {0}")]
    RemoveMasquerade(#[source] NftError),
    #[error("--vxlan-vni {0}: a VNI is 1 to 16777215")]
    Vni(u32),
    #[error("removing the pod routes: {0}")]
    RemoveRoutes(#[source] RouteError),
    #[error("removing the VXLAN device: {0}")]
    RemoveVxlan(#[source] VxlanError),
    #[error("the network teardown thread failed: {0}")]
    Worker(String),
}

/// The IPv4 range of a CIDR list (`10.42.0.0/16` or `10.42.0.0/16,fd00:42::/56`).
fn ipv4_cidr(text: &str) -> Option<Result<Ipv4Cidr, String>> {
    text.split(',')
        .map(str::trim)
        .find(|c| !c.is_empty() && !c.contains(':'))
        .map(|c| c.parse::<Ipv4Cidr>().map_err(|e| e.to_string()))
}

/// Checks `--cluster-cidr`: it must hold an IPv4 range.
pub fn parse_cluster_cidr(text: &str) -> Result<Ipv4Cidr, NetworkError> {
    let invalid = |reason: String| NetworkError::ClusterCidr {
        cidr: text.to_string(),
        reason,
    };
    ipv4_cidr(text)
        .ok_or_else(|| invalid("no IPv4 range".into()))?
        .map_err(invalid)
}

/// The running pod network of a node.
pub struct PodNetwork {
    /// The podCIDR as pods should see it: `Some` only once the masquerade is in place.
    pub ready: watch::Receiver<Option<String>>,
    /// The masquerade and route tasks; they end at shutdown.
    pub tasks: Vec<JoinHandle<()>>,
}

/// Starts the pod network's tasks for a node: the masquerade, set up once the runtime has
/// the podCIDR (`pod_cidr`, from the node agent), and the routes to other nodes (with
/// the VXLAN device unless the backend is host-gw).
pub fn start(
    config: &KubeletConfig,
    client: kube::Client,
    pod_cidr: watch::Receiver<Option<String>>,
    shutdown: CancellationToken,
) -> Result<PodNetwork, NetworkError> {
    if config.vxlan_vni == 0 || config.vxlan_vni > vxlan::MAX_VNI {
        return Err(NetworkError::Vni(config.vxlan_vni));
    }
    let cluster_cidr = config
        .cluster_cidr
        .as_deref()
        .map(parse_cluster_cidr)
        .transpose()?;
    let masquerade = Masquerade::new(
        Arc::new(NftCommand::default()),
        &config.bridge_name,
        cluster_cidr,
    );
    let (ready_tx, ready_rx) = watch::channel(None);
    let masquerade_task = tokio::spawn(keep_masquerade(
        masquerade,
        pod_cidr,
        ready_tx,
        MASQUERADE_RETRY,
        shutdown.clone(),
    ));
    let sync = RouteSync::new(
        Arc::new(Rtnetlink),
        Arc::new(Rtnetlink),
        &config.node_name,
        &config.bridge_name,
        config.pod_network_backend,
        vxlan_spec(config),
    );
    let routes_task = tokio::spawn(routes::run(sync, client, shutdown));
    Ok(PodNetwork {
        ready: ready_rx,
        tasks: vec![masquerade_task, routes_task],
    })
}

/// Applies the masquerade for each podCIDR the node agent publishes, then passes it on.
async fn keep_masquerade(
    masquerade: Masquerade,
    mut upstream: watch::Receiver<Option<String>>,
    ready: watch::Sender<Option<String>>,
    retry_after: Duration,
    shutdown: CancellationToken,
) {
    let mut applied: Option<String> = None;
    loop {
        let wanted = upstream.borrow_and_update().clone();
        let mut retry = false;
        if let Some(text) = wanted.filter(|w| applied.as_ref() != Some(w)) {
            match ipv4_cidr(&text) {
                Some(Ok(cidr)) => {
                    let m = masquerade.clone();
                    match tokio::task::spawn_blocking(move || m.ensure(cidr)).await {
                        Ok(Ok(())) => {
                            ready.send_replace(Some(text.clone()));
                            applied = Some(text);
                        }
                        Ok(Err(e)) => {
                            tracing::warn!(error = %e, "setting up the pod egress masquerade failed; retrying");
                            retry = true;
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "the masquerade thread failed; retrying");
                            retry = true;
                        }
                    }
                }
                // The runtime refuses such a podCIDR too; nothing to masquerade for it.
                _ => tracing::warn!(pod_cidr = %text, "no usable IPv4 podCIDR to masquerade"),
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(retry_after), if retry => {}
            changed = upstream.changed(), if !retry => {
                if changed.is_err() {
                    return;
                }
            }
        }
    }
}

/// The VXLAN device `config` asks for (named after the bridge).
pub fn vxlan_spec(config: &KubeletConfig) -> VxlanSpec {
    VxlanSpec {
        device: vxlan::device_name(&config.bridge_name),
        vni: config.vxlan_vni,
        port: config.vxlan_port,
        local: config.node_ip,
    }
}

/// Removes, in the calling thread's network namespace, every route marked as ours and the
/// VXLAN device of `bridge` (its neighbour and FDB entries go with it); returns how many
/// routes went and whether there was a device. Both are tried; the first error is returned.
pub fn remove_routes_and_vxlan(bridge: &str) -> Result<(usize, bool), NetworkError> {
    let routes = routes::remove_all(&Rtnetlink).map_err(NetworkError::RemoveRoutes);
    let device = Rtnetlink
        .delete_device(&vxlan::device_name(bridge))
        .map_err(NetworkError::RemoveVxlan);
    Ok((routes?, device?))
}

/// Removes what the pod network put on the host: the masquerade table of the node's
/// bridge, every route marked as ours and the VXLAN device. All are tried; the first
/// error is returned.
pub async fn teardown(config: &KubeletConfig) -> Result<(), NetworkError> {
    let masquerade = Masquerade::new(Arc::new(NftCommand::default()), &config.bridge_name, None);
    let bridge = config.bridge_name.clone();
    tokio::task::spawn_blocking(move || {
        let nft = masquerade.remove().map_err(NetworkError::RemoveMasquerade);
        let routes = remove_routes_and_vxlan(&bridge);
        if let Ok((n, device)) = &routes {
            tracing::info!(
                routes = n,
                vxlan_device = device,
                "pod network routes, VXLAN device and masquerade removed"
            );
        }
        nft.and(routes.map(|_| ()))
    })
    .await
    .map_err(|e| NetworkError::Worker(e.to_string()))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_cidrs_are_checked() {
        assert_eq!(
            parse_cluster_cidr("10.42.0.0/16")
                .map(|c| c.to_string())
                .ok()
                .as_deref(),
            Some("10.42.0.0/16")
        );
        assert_eq!(
            parse_cluster_cidr("fd00:42::/56, 10.42.0.0/16")
                .map(|c| c.to_string())
                .ok()
                .as_deref(),
            Some("10.42.0.0/16")
        );
        for bad in ["", "fd00::/56", "10.42.0.0", "10.42.0.0/33"] {
            assert!(parse_cluster_cidr(bad).is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn pods_see_the_pod_cidr_only_once_the_masquerade_is_in_place() -> anyhow::Result<()> {
        let nft = Arc::new(component_base::nft::RecordingNft::failing(1));
        let masquerade = Masquerade::new(nft.clone(), "rkube0", Some("10.42.0.0/16".parse()?));
        let (upstream_tx, upstream_rx) = watch::channel(None);
        let (ready_tx, mut ready_rx) = watch::channel(None);
        let shutdown = CancellationToken::new();
        let retry = Duration::from_millis(10);
        let task = tokio::spawn(keep_masquerade(
            masquerade,
            upstream_rx,
            ready_tx,
            retry,
            shutdown.clone(),
        ));

        upstream_tx.send_replace(Some("10.42.1.0/24".to_string()));
        // The first attempt fails; the retry a little later succeeds.
        ready_rx.changed().await?;
        assert_eq!(ready_rx.borrow().as_deref(), Some("10.42.1.0/24"));
        let batches = nft.batches();
        assert_eq!(batches.len(), 2);
        assert!(
            batches[1].contains("ip saddr 10.42.1.0/24 ip daddr != 10.42.0.0/16"),
            "{}",
            batches[1]
        );

        // A new podCIDR is applied before pods see it.
        upstream_tx.send_replace(Some("10.42.7.0/24,fd00::/64".to_string()));
        ready_rx.changed().await?;
        assert_eq!(ready_rx.borrow().as_deref(), Some("10.42.7.0/24,fd00::/64"));
        let last = nft.batches().last().cloned().unwrap_or_default();
        assert!(last.contains("ip saddr 10.42.7.0/24 "), "{last}");

        shutdown.cancel();
        task.await?;
        Ok(())
    }
}
