//! The node IPAM controller: each node gets a podCIDR carved from `--cluster-cidr`
//! with `--node-cidr-mask-size` (`spec.podCIDR` and `spec.podCIDRs`). The ranges in use
//! are always those the nodes themselves record, plus allocations still on their way,
//! so a restart never hands out a range twice and a deleted node's range comes back.

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::Store;
use kube::runtime::watcher;
use kube::ResourceExt;
use serde_json::json;
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::{Context, ControllerError};

#[derive(Debug, thiserror::Error)]
pub enum IpamError {
    #[error("--cluster-cidr {cidr:?}: {reason}")]
    ParseCidr { cidr: String, reason: String },
    #[error("--node-cidr-mask-size {mask} does not fit in --cluster-cidr {cidr}")]
    MaskSize { cidr: String, mask: u8 },
    #[error("no podCIDR is left in {cidr} for node {node}")]
    Exhausted { cidr: String, node: String },
    #[error("writing the podCIDR of node {node} failed")]
    Patch { node: String, #[source] source: kube::Error },
}

/// An IP network, as a number and a prefix length (IPv4 kept in the low 32 bits).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Cidr {
    base: u128,
    prefix: u8,
    v6: bool,
}

impl Cidr {
    pub fn parse(text: &str) -> Result<Cidr, IpamError> {
        let err = |reason: &str| IpamError::ParseCidr { cidr: text.to_string(), reason: reason.to_string() };
        let (ip, prefix) = text.trim().split_once('/').ok_or_else(|| err("not in address/prefix form"))?;
        let ip: IpAddr = ip.parse().map_err(|_| err("not an IP address"))?;
        let prefix: u8 = prefix.parse().map_err(|_| err("not a prefix length"))?;
        let (base, bits, v6) = match ip {
            IpAddr::V4(a) => (u128::from(u32::from(a)), 32u8, false),
            IpAddr::V6(a) => (u128::from(a), 128u8, true),
        };
        if prefix > bits {
            return Err(err("prefix length too long"));
        }
        let host_bits = u32::from(bits - prefix);
        let mask = if host_bits >= 128 { 0 } else { !((1u128 << host_bits) - 1) };
        Ok(Cidr { base: base & mask & if v6 { u128::MAX } else { u128::from(u32::MAX) }, prefix, v6 })
    }

    fn bits(&self) -> u8 {
        if self.v6 { 128 } else { 32 }
    }

    /// The `index`th subnet of length `mask` inside this network.
    fn subnet(&self, mask: u8, index: u128) -> Cidr {
        let shift = u32::from(self.bits() - mask);
        Cidr { base: self.base + (index << shift), prefix: mask, v6: self.v6 }
    }

    /// How many subnets of length `mask` fit (capped so the count stays a u128).
    fn subnets(&self, mask: u8) -> Option<u128> {
        if mask < self.prefix || mask > self.bits() {
            return None;
        }
        let n = u32::from(mask - self.prefix);
        Some(if n >= 127 { 1u128 << 127 } else { 1u128 << n })
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.v6 {
            write!(f, "{}/{}", std::net::Ipv6Addr::from(self.base), self.prefix)
        } else {
            write!(f, "{}/{}", std::net::Ipv4Addr::from(self.base as u32), self.prefix)
        }
    }
}

/// Hands out the first free subnet of the cluster network.
pub struct Allocator {
    cluster: Cidr,
    mask: u8,
}

impl Allocator {
    pub fn new(cluster_cidr: &str, mask: u8) -> Result<Allocator, IpamError> {
        // Dual-stack lists: the first range is the one allocated from.
        let first = cluster_cidr.split(',').next().unwrap_or_default();
        let cluster = Cidr::parse(first)?;
        if cluster.subnets(mask).is_none() {
            return Err(IpamError::MaskSize { cidr: cluster_cidr.to_string(), mask });
        }
        Ok(Allocator { cluster, mask })
    }

    /// The first subnet not in `used`.
    pub fn next_free(&self, used: &BTreeSet<String>) -> Option<Cidr> {
        let count = self.cluster.subnets(self.mask)?;
        let mut i = 0u128;
        while i < count {
            let c = self.cluster.subnet(self.mask, i);
            if !used.contains(&c.to_string()) {
                return Some(c);
            }
            i += 1;
        }
        None
    }
}

struct State {
    allocator: Allocator,
    nodes: Store<Node>,
    /// Allocations written but maybe not yet seen in the node store, by node name.
    in_flight: Mutex<HashMap<String, String>>,
}

/// Starts the node IPAM controller (idle without `--cluster-cidr`).
pub fn start(ctx: Context, shutdown: CancellationToken) -> futures::future::BoxFuture<'static, Result<(), ControllerError>> {
    Box::pin(async move {
        let Some(cidr) = ctx.config.cluster_cidr.clone() else {
            info!("no --cluster-cidr: node IPAM does not allocate podCIDRs");
            return Ok(());
        };
        let allocator = Allocator::new(&cidr, ctx.config.node_cidr_mask_size).map_err(|e| ControllerError::Config(e.to_string()))?;
        let api: Api<Node> = Api::all(ctx.client.clone());
        let controller = Controller::new(api, watcher::Config::default());
        let state = Arc::new((ctx, State { allocator, nodes: controller.store(), in_flight: Mutex::new(HashMap::new()) }));
        controller
            .graceful_shutdown_on(async move { shutdown.cancelled().await })
            .run(reconcile, error_policy, state)
            .for_each(|_| async {})
            .await;
        Ok(())
    })
}

fn error_policy(node: Arc<Node>, err: &IpamError, _: Arc<(Context, State)>) -> Action {
    warn!(node = %node.name_any(), error = %err, "node IPAM reconcile failed");
    Action::requeue(Duration::from_secs(2))
}

fn pod_cidrs(node: &Node) -> Vec<String> {
    let spec = node.spec.as_ref();
    let mut out: Vec<String> = spec.and_then(|s| s.pod_cidrs.clone()).unwrap_or_default();
    if let Some(c) = spec.and_then(|s| s.pod_cidr.clone()).filter(|c| !c.is_empty()) {
        if !out.contains(&c) {
            out.push(c);
        }
    }
    out
}

async fn reconcile(node: Arc<Node>, state: Arc<(Context, State)>) -> Result<Action, IpamError> {
    let (ctx, state) = (&state.0, &state.1);
    let name = node.name_any();
    if !pod_cidrs(&node).is_empty() {
        return Ok(Action::await_change());
    }
    // One allocation at a time, against everything the nodes hold and what is on its way.
    let mut in_flight = state.in_flight.lock().await;
    let known: Vec<Arc<Node>> = state.nodes.state();
    if let Some(current) = known.iter().find(|n| n.name_any() == name) {
        if !pod_cidrs(current).is_empty() {
            return Ok(Action::await_change());
        }
    }
    in_flight.retain(|n, _| known.iter().any(|k| k.name_any() == *n && pod_cidrs(k).is_empty()) || *n == name);
    let mut used: BTreeSet<String> = known.iter().flat_map(|n| pod_cidrs(n)).collect();
    used.extend(in_flight.iter().filter(|(n, _)| **n != name).map(|(_, c)| c.clone()));
    let cidr = match in_flight.get(&name) {
        Some(c) => c.clone(),
        None => state
            .allocator
            .next_free(&used)
            .ok_or_else(|| IpamError::Exhausted { cidr: state.allocator.cluster.to_string(), node: name.clone() })?
            .to_string(),
    };
    let api: Api<Node> = Api::all(ctx.client.clone());
    let patch = json!({"spec": {"podCIDR": cidr, "podCIDRs": [cidr]}});
    match api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch)).await {
        Ok(_) => {
            in_flight.insert(name.clone(), cidr.clone());
            info!(node = %name, pod_cidr = %cidr, "allocated podCIDR");
            Ok(Action::await_change())
        }
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(Action::await_change()),
        Err(source) => Err(IpamError::Patch { node: name, source }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subnets_are_handed_out_in_order_skipping_used_ones() {
        let a = Allocator::new("10.42.0.0/16", 24).unwrap_or_else(|e| panic!("{e}"));
        let mut used = BTreeSet::new();
        assert_eq!(a.next_free(&used).map(|c| c.to_string()), Some("10.42.0.0/24".into()));
        used.insert("10.42.0.0/24".to_string());
        used.insert("10.42.2.0/24".to_string());
        assert_eq!(a.next_free(&used).map(|c| c.to_string()), Some("10.42.1.0/24".into()));
    }

    #[test]
    fn small_networks_run_out() {
        let a = Allocator::new("10.0.0.0/23", 24).unwrap_or_else(|e| panic!("{e}"));
        let used: BTreeSet<String> = ["10.0.0.0/24".to_string(), "10.0.1.0/24".to_string()].into();
        assert!(a.next_free(&used).is_none());
        assert!(Allocator::new("10.0.0.0/24", 16).is_err());
        assert!(Allocator::new("10.0.0.0", 24).is_err());
    }

    #[test]
    fn ipv6_ranges_work_too() {
        let a = Allocator::new("fd00:42::/56,10.0.0.0/16", 64).unwrap_or_else(|e| panic!("{e}"));
        let used: BTreeSet<String> = ["fd00:42::/64".to_string()].into();
        assert_eq!(a.next_free(&used).map(|c| c.to_string()), Some("fd00:42:0:1::/64".into()));
    }
}
