//! host-gw routing between nodes, as flannel's `host-gw` backend does it: for every other
//! Node with a podCIDR and an InternalIP on a directly connected subnet, the main routing
//! table holds `<podCIDR> via <InternalIP>`, so pods reach other nodes' pods without
//! encapsulation and without NAT. The routes this kubelet writes carry their own
//! protocol number ([`ROUTE_PROTO`], `ip route show proto 114`), so that resync and
//! teardown touch only them. A node whose InternalIP needs a router in between would need
//! an overlay (VXLAN); it is logged as unsupported and gets no route.
//!
//! The kernel is reached through the narrow [`RouteOps`] trait (rtnetlink for real, a
//! recording fake in the unit tests); the desired routes are a pure function of the Nodes.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Node;
use kube::api::Api;
use kube::runtime::watcher::{self, watcher};
use kube::runtime::WatchStreamExt;
use tokio_util::sync::CancellationToken;

use super::netlink::{Netlink, NetlinkError};
use crate::runtime::sandbox::{Ipv4Cidr, Rtnetlink};
use netlink_packet_route::route::{RouteScope, RouteType};

/// The routing protocol number that marks the routes of rkube's kubelet (`proto 114`;
/// unassigned in iproute2's `rt_protos`). One kubelet per network namespace owns them.
pub const ROUTE_PROTO: u8 = 114;

/// How often the routes are checked against the Nodes even without a change (a route
/// deleted by hand comes back; a subnet that became connected gets its routes).
pub const RESYNC_PERIOD: Duration = Duration::from_secs(30);
/// How soon a failed sync is tried again.
const RETRY_PERIOD: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
}

/// An IPv4 subnet of any length (connected subnets may be /31 or /32, which
/// [`Ipv4Cidr`], made for podCIDRs, refuses).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Subnet {
    pub network: Ipv4Addr,
    pub prefix: u8,
}

impl Subnet {
    /// `a.b.c.d/n`, or a bare address as a /32; host bits are cleared.
    pub fn parse(text: &str) -> Option<Subnet> {
        let (address, prefix) = match text.split_once('/') {
            Some((a, p)) => (a, p.parse::<u8>().ok().filter(|p| *p <= 32)?),
            None => (text, 32),
        };
        let address: Ipv4Addr = address.parse().ok()?;
        Some(Subnet {
            network: Ipv4Addr::from(u32::from(address) & mask(prefix)),
            prefix,
        })
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & mask(self.prefix) == u32::from(self.network)
    }
}

fn mask(prefix: u8) -> u32 {
    if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(prefix.min(32)))
    }
}

/// One route of ours: a node's podCIDR via that node's address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PodRoute {
    pub destination: Ipv4Cidr,
    pub gateway: Ipv4Addr,
}

impl std::fmt::Display for PodRoute {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} via {}", self.destination, self.gateway)
    }
}

/// A sort and map key for a CIDR ([`Ipv4Cidr`] has no ordering).
fn key(cidr: &Ipv4Cidr) -> (Ipv4Addr, u8) {
    (cidr.network(), cidr.prefix())
}

/// The routing operations host-gw needs (the OS boundary; faked in tests).
pub trait RouteOps: Send + Sync {
    /// IPv4 subnets reachable without a gateway (the main table's link-scope routes),
    /// except those through `exclude_dev` (the pod bridge).
    fn connected_subnets(&self, exclude_dev: &str) -> Result<Vec<Subnet>, RouteError>;
    /// The routes marked [`ROUTE_PROTO`] in the main table.
    fn list(&self) -> Result<Vec<PodRoute>, RouteError>;
    /// Adds the route, or replaces the main table's route to the same destination.
    fn replace(&self, route: &PodRoute) -> Result<(), RouteError>;
    /// Deletes the route; fine if it is already gone.
    fn delete(&self, route: &PodRoute) -> Result<(), RouteError>;
}

/// What the host-gw logic needs of a Node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    pub name: String,
    /// The IPv4 podCIDR (`spec.podCIDRs`, else `spec.podCIDR`).
    pub pod_cidr: Option<Ipv4Cidr>,
    /// The first IPv4 InternalIP.
    pub internal_ip: Option<Ipv4Addr>,
}

impl NodeInfo {
    pub fn from_node(node: &Node) -> NodeInfo {
        let spec = node.spec.as_ref();
        let pod_cidr = spec
            .and_then(|s| s.pod_cidrs.clone())
            .unwrap_or_default()
            .into_iter()
            .chain(spec.and_then(|s| s.pod_cidr.clone()))
            .find_map(|c| c.parse::<Ipv4Cidr>().ok());
        let internal_ip = node
            .status
            .as_ref()
            .and_then(|s| s.addresses.as_ref())
            .into_iter()
            .flatten()
            .filter(|a| a.type_ == "InternalIP")
            .find_map(|a| a.address.parse::<Ipv4Addr>().ok());
        NodeInfo {
            name: node.metadata.name.clone().unwrap_or_default(),
            pod_cidr,
            internal_ip,
        }
    }
}

/// The routes the Nodes call for, and the nodes that cannot have one (with why).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Desired {
    pub routes: Vec<PodRoute>,
    pub unsupported: BTreeMap<String, String>,
}

/// The routes this node (`self_name`) should hold toward the other nodes.
pub fn desired_routes(nodes: &[NodeInfo], self_name: &str, connected: &[Subnet]) -> Desired {
    let own = nodes.iter().find(|n| n.name == self_name);
    let own_cidr = own.and_then(|n| n.pod_cidr);
    let own_ip = own.and_then(|n| n.internal_ip);
    let mut sorted: Vec<&NodeInfo> = nodes.iter().filter(|n| n.name != self_name).collect();
    sorted.sort_by(|a, b| a.name.cmp(&b.name));
    let mut desired = Desired::default();
    let mut claimed: Vec<(Ipv4Cidr, &str)> = Vec::new();
    for node in sorted {
        let (Some(cidr), Some(gateway)) = (node.pod_cidr, node.internal_ip) else {
            continue; // not registered fully yet, or no podCIDR yet
        };
        let overlaps =
            |other: Ipv4Cidr| other.contains(cidr.network()) || cidr.contains(other.network());
        let problem = if own_ip == Some(gateway) {
            Some(format!("InternalIP {gateway} is this node's own"))
        } else if own_cidr.is_some_and(overlaps) {
            Some(format!("podCIDR {cidr} overlaps this node's"))
        } else if let Some((_, owner)) = claimed.iter().find(|(other, _)| overlaps(*other)) {
            Some(format!("podCIDR {cidr} overlaps node {owner}'s"))
        } else if !connected.iter().any(|s| s.contains(gateway)) {
            Some(format!(
                "InternalIP {gateway} is not on a directly connected subnet (host-gw needs one; an overlay is not supported yet)"
            ))
        } else {
            None
        };
        match problem {
            Some(reason) => {
                desired.unsupported.insert(node.name.clone(), reason);
            }
            None => {
                claimed.push((cidr, &node.name));
                desired.routes.push(PodRoute {
                    destination: cidr,
                    gateway,
                });
            }
        }
    }
    desired.routes.sort_by_key(|r| key(&r.destination));
    desired
}

/// One change to the routing table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Replace(PodRoute),
    Delete(PodRoute),
}

/// The changes that turn `current` (our routes in the kernel) into `desired`.
pub fn plan(desired: &[PodRoute], current: &[PodRoute]) -> Vec<Change> {
    let wanted: BTreeMap<_, _> = desired.iter().map(|r| (key(&r.destination), *r)).collect();
    let mut changes = Vec::new();
    for route in current {
        if wanted.get(&key(&route.destination)) != Some(route) {
            changes.push(Change::Delete(*route));
        }
    }
    for route in desired {
        if !current.contains(route) {
            changes.push(Change::Replace(*route));
        }
    }
    // A changed gateway needs no delete first: replace overwrites the route.
    changes.retain(|change| match change {
        Change::Delete(old) => !desired
            .iter()
            .any(|r| key(&r.destination) == key(&old.destination)),
        Change::Replace(_) => true,
    });
    changes
}

/// The host-gw state of one kubelet: applies the Nodes' routes to the kernel.
pub struct RouteSync {
    ops: Arc<dyn RouteOps>,
    node_name: String,
    bridge: String,
    /// The unsupported nodes already warned about, with the reason (warned again on change).
    warned: BTreeMap<String, String>,
}

impl RouteSync {
    pub fn new(
        ops: Arc<dyn RouteOps>,
        node_name: impl Into<String>,
        bridge: impl Into<String>,
    ) -> Self {
        RouteSync {
            ops,
            node_name: node_name.into(),
            bridge: bridge.into(),
            warned: BTreeMap::new(),
        }
    }

    /// Brings our routes in line with `nodes`; returns the changes made. Every change is
    /// tried; the first error is returned after the rest.
    pub fn sync(&mut self, nodes: &[NodeInfo]) -> Result<Vec<Change>, RouteError> {
        let connected = self.ops.connected_subnets(&self.bridge)?;
        let desired = desired_routes(nodes, &self.node_name, &connected);
        for (node, reason) in &desired.unsupported {
            if self.warned.get(node) != Some(reason) {
                tracing::warn!(node = %node, reason = %reason, "no route to the node's pods");
            }
        }
        self.warned = desired.unsupported;
        let current = self.ops.list()?;
        let changes = plan(&desired.routes, &current);
        let mut first_error = None;
        let mut done = Vec::new();
        for change in changes {
            let result = match &change {
                Change::Replace(route) => self.ops.replace(route),
                Change::Delete(route) => self.ops.delete(route),
            };
            match result {
                Ok(()) => {
                    match &change {
                        Change::Replace(route) => tracing::info!(route = %route, "pod route set"),
                        Change::Delete(route) => {
                            tracing::info!(route = %route, "pod route removed")
                        }
                    }
                    done.push(change);
                }
                Err(e) => {
                    tracing::warn!(change = ?change, error = %e, "changing a pod route failed");
                    first_error.get_or_insert(e);
                }
            }
        }
        first_error.map_or(Ok(done), Err)
    }
}

/// Deletes every route marked [`ROUTE_PROTO`] (teardown); returns how many.
pub fn remove_all(ops: &dyn RouteOps) -> Result<usize, RouteError> {
    let routes = ops.list()?;
    let mut first_error = None;
    for route in &routes {
        if let Err(e) = ops.delete(route) {
            first_error.get_or_insert(e);
        }
    }
    first_error.map_or(Ok(routes.len()), Err)
}

/// Watches the Nodes and keeps the routes in line until `shutdown`.
pub async fn run(sync: RouteSync, client: kube::Client, shutdown: CancellationToken) {
    let api: Api<Node> = Api::all(client);
    let mut stream = watcher(api, watcher::Config::default())
        .default_backoff()
        .boxed();
    let mut sync = Some(sync);
    let mut nodes: BTreeMap<String, NodeInfo> = BTreeMap::new();
    let mut listing: Option<BTreeMap<String, NodeInfo>> = None;
    let mut listed = false;
    let mut dirty = false;
    let mut next_sync = tokio::time::Instant::now() + RESYNC_PERIOD;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            event = stream.next() => match event {
                None => return,
                Some(Ok(watcher::Event::Init)) => listing = Some(BTreeMap::new()),
                Some(Ok(watcher::Event::InitApply(node))) => {
                    let info = NodeInfo::from_node(&node);
                    listing.get_or_insert_with(BTreeMap::new).insert(info.name.clone(), info);
                }
                Some(Ok(watcher::Event::InitDone)) => {
                    nodes = listing.take().unwrap_or_default();
                    listed = true;
                    dirty = true;
                }
                Some(Ok(watcher::Event::Apply(node))) => {
                    let info = NodeInfo::from_node(&node);
                    // Status heartbeats change nothing host-gw cares about.
                    if nodes.get(&info.name) != Some(&info) {
                        nodes.insert(info.name.clone(), info);
                        dirty = true;
                    }
                }
                Some(Ok(watcher::Event::Delete(node))) => {
                    dirty |= nodes.remove(&node.metadata.name.clone().unwrap_or_default()).is_some();
                }
                Some(Err(e)) => tracing::warn!(error = %e, "watching nodes failed; retrying"),
            },
            _ = tokio::time::sleep_until(next_sync), if listed => dirty = true,
        }
        if !(dirty && listed) {
            continue;
        }
        dirty = false;
        let Some(mut state) = sync.take() else { return };
        let infos: Vec<NodeInfo> = nodes.values().cloned().collect();
        let outcome = tokio::task::spawn_blocking(move || {
            let result = state.sync(&infos);
            (state, result)
        })
        .await;
        let result = match outcome {
            Ok((state, result)) => {
                sync = Some(state);
                result
            }
            Err(e) => {
                tracing::error!(error = %e, "the route sync thread failed; host-gw routes are no longer kept");
                return;
            }
        };
        next_sync = tokio::time::Instant::now()
            + match result {
                Ok(_) => RESYNC_PERIOD,
                Err(e) => {
                    tracing::warn!(error = %e, "syncing pod routes failed; retrying");
                    RETRY_PERIOD
                }
            };
    }
}

/// [`RouteOps`] by rtnetlink, in the calling thread's network namespace.
impl RouteOps for Rtnetlink {
    fn connected_subnets(&self, exclude_dev: &str) -> Result<Vec<Subnet>, RouteError> {
        let mut netlink = Netlink::open()?;
        let excluded = netlink.link_index(exclude_dev)?;
        Ok(netlink
            .main_ipv4_routes()?
            .into_iter()
            .filter(|r| r.kind == RouteType::Unicast && r.scope == RouteScope::Link)
            .filter(|r| r.gateway.is_none() && r.prefix > 0)
            .filter(|r| excluded.is_none() || r.output_interface != excluded)
            .map(|r| Subnet {
                network: Ipv4Addr::from(u32::from(r.destination) & mask(r.prefix)),
                prefix: r.prefix,
            })
            .collect())
    }

    fn list(&self) -> Result<Vec<PodRoute>, RouteError> {
        let mut netlink = Netlink::open()?;
        let mut routes = Vec::new();
        for route in netlink.main_ipv4_routes()? {
            if route.protocol != ROUTE_PROTO {
                continue;
            }
            match (
                Ipv4Cidr::new(route.destination, route.prefix),
                route.gateway,
            ) {
                (Ok(destination), Some(gateway)) => routes.push(PodRoute {
                    destination,
                    gateway,
                }),
                _ => {
                    tracing::warn!(route = ?route, "ignoring a proto {ROUTE_PROTO} route that is not a podCIDR via a gateway")
                }
            }
        }
        Ok(routes)
    }

    fn replace(&self, route: &PodRoute) -> Result<(), RouteError> {
        let destination = route.destination;
        Netlink::open()?.replace_route(
            destination.network(),
            destination.prefix(),
            route.gateway,
            ROUTE_PROTO,
        )?;
        Ok(())
    }

    fn delete(&self, route: &PodRoute) -> Result<(), RouteError> {
        let destination = route.destination;
        match Netlink::open()?.delete_route(
            destination.network(),
            destination.prefix(),
            route.gateway,
            ROUTE_PROTO,
        ) {
            Ok(()) => Ok(()),
            // ESRCH: no such route, which is what we wanted.
            Err(e) if e.errno() == Some(libc::ESRCH) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{NodeAddress, NodeSpec, NodeStatus};
    use std::sync::Mutex;

    fn cidr(text: &str) -> Ipv4Cidr {
        text.parse().unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    fn ip(text: &str) -> Ipv4Addr {
        text.parse().unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    fn subnet(text: &str) -> Subnet {
        Subnet::parse(text).unwrap_or_else(|| panic!("{text}"))
    }

    fn info(name: &str, pod_cidr: Option<&str>, internal_ip: Option<&str>) -> NodeInfo {
        NodeInfo {
            name: name.into(),
            pod_cidr: pod_cidr.map(cidr),
            internal_ip: internal_ip.map(ip),
        }
    }

    fn route(destination: &str, gateway: &str) -> PodRoute {
        PodRoute {
            destination: cidr(destination),
            gateway: ip(gateway),
        }
    }

    #[test]
    fn subnets_parse_and_contain() {
        let s = subnet("172.31.5.9/24");
        assert_eq!(s.network, ip("172.31.5.0"));
        assert!(s.contains(ip("172.31.5.200")));
        assert!(!s.contains(ip("172.31.6.1")));
        assert_eq!(
            subnet("10.0.0.1"),
            Subnet {
                network: ip("10.0.0.1"),
                prefix: 32
            }
        );
        assert!(subnet("0.0.0.0/0").contains(ip("8.8.8.8")));
        assert!(Subnet::parse("10.0.0.0/33").is_none());
        assert!(Subnet::parse("default").is_none());
    }

    #[test]
    fn node_info_reads_the_ipv4_pod_cidr_and_internal_ip() {
        let node = Node {
            metadata: kube::api::ObjectMeta {
                name: Some("n2".into()),
                ..Default::default()
            },
            spec: Some(NodeSpec {
                pod_cidr: Some("fd00:42::/64".into()),
                pod_cidrs: Some(vec!["fd00:42::/64".into(), "10.42.2.0/24".into()]),
                ..Default::default()
            }),
            status: Some(NodeStatus {
                addresses: Some(vec![
                    NodeAddress {
                        type_: "Hostname".into(),
                        address: "n2".into(),
                    },
                    NodeAddress {
                        type_: "InternalIP".into(),
                        address: "fd00::2".into(),
                    },
                    NodeAddress {
                        type_: "InternalIP".into(),
                        address: "172.31.5.12".into(),
                    },
                ]),
                ..Default::default()
            }),
        };
        assert_eq!(
            NodeInfo::from_node(&node),
            info("n2", Some("10.42.2.0/24"), Some("172.31.5.12"))
        );
        assert_eq!(NodeInfo::from_node(&Node::default()), info("", None, None));
    }

    #[test]
    fn desired_routes_cover_other_nodes_on_connected_subnets() {
        let nodes = [
            info("n1", Some("10.42.1.0/24"), Some("172.31.5.11")),
            info("n3", Some("10.42.3.0/24"), Some("172.31.5.13")),
            info("n2", Some("10.42.2.0/24"), Some("172.31.5.12")),
            info("pending", None, Some("172.31.5.14")),
            info("no-address", Some("10.42.5.0/24"), None),
            info("far", Some("10.42.6.0/24"), Some("192.168.9.9")),
            info("thief", Some("10.42.1.0/25"), Some("172.31.5.15")),
            info("twin", Some("10.42.2.0/24"), Some("172.31.5.16")),
            info("doppelganger", Some("10.42.9.0/24"), Some("172.31.5.11")),
        ];
        let desired = desired_routes(
            &nodes,
            "n1",
            &[subnet("172.31.5.0/24"), subnet("172.31.7.1")],
        );
        assert_eq!(
            desired.routes,
            [
                route("10.42.2.0/24", "172.31.5.12"),
                route("10.42.3.0/24", "172.31.5.13")
            ]
        );
        let unsupported: Vec<(&str, &str)> = desired
            .unsupported
            .iter()
            .map(|(n, r)| (n.as_str(), r.as_str()))
            .collect();
        assert_eq!(
            unsupported,
            [
                ("doppelganger", "InternalIP 172.31.5.11 is this node's own"),
                ("far", "InternalIP 192.168.9.9 is not on a directly connected subnet (host-gw needs one; an overlay is not supported yet)"),
                ("thief", "podCIDR 10.42.1.0/25 overlaps this node's"),
                ("twin", "podCIDR 10.42.2.0/24 overlaps node n2's"),
            ]
        );
        // Before this node has its own podCIDR, the others still get routes.
        let early = desired_routes(&nodes[1..3], "n1", &[subnet("172.31.5.0/24")]);
        assert_eq!(early.routes.len(), 2);
    }

    #[test]
    fn plan_adds_replaces_and_deletes() {
        let desired = [
            route("10.42.2.0/24", "172.31.5.12"),
            route("10.42.3.0/24", "172.31.5.23"),
        ];
        let current = [
            route("10.42.2.0/24", "172.31.5.12"), // kept
            route("10.42.3.0/24", "172.31.5.13"), // node moved: replaced
            route("10.42.4.0/24", "172.31.5.14"), // node gone: deleted
        ];
        assert_eq!(
            plan(&desired, &current),
            [
                Change::Delete(route("10.42.4.0/24", "172.31.5.14")),
                Change::Replace(route("10.42.3.0/24", "172.31.5.23")),
            ]
        );
        assert!(plan(&desired, &desired).is_empty());
        assert_eq!(plan(&[], &desired).len(), 2);
    }

    /// A routing table in memory that records the calls made to it.
    #[derive(Default)]
    struct FakeRoutes {
        connected: Vec<Subnet>,
        table: Mutex<Vec<PodRoute>>,
        calls: Mutex<Vec<String>>,
        fail_replace: Mutex<bool>,
    }

    impl FakeRoutes {
        fn calls(&self) -> Vec<String> {
            std::mem::take(&mut *self.calls.lock().unwrap_or_else(|e| e.into_inner()))
        }
        fn table(&self) -> Vec<PodRoute> {
            self.table.lock().unwrap_or_else(|e| e.into_inner()).clone()
        }
    }

    impl RouteOps for FakeRoutes {
        fn connected_subnets(&self, exclude_dev: &str) -> Result<Vec<Subnet>, RouteError> {
            assert_eq!(exclude_dev, "rkube0");
            Ok(self.connected.clone())
        }
        fn list(&self) -> Result<Vec<PodRoute>, RouteError> {
            Ok(self.table())
        }
        fn replace(&self, route: &PodRoute) -> Result<(), RouteError> {
            self.calls
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(format!("replace {route}"));
            if *self.fail_replace.lock().unwrap_or_else(|e| e.into_inner()) {
                return Err(RouteError::Netlink(NetlinkError::Answer {
                    op: "fake".into(),
                    message: "refused".into(),
                }));
            }
            let mut table = self.table.lock().unwrap_or_else(|e| e.into_inner());
            table.retain(|r| key(&r.destination) != key(&route.destination));
            table.push(*route);
            Ok(())
        }
        fn delete(&self, route: &PodRoute) -> Result<(), RouteError> {
            self.calls
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(format!("delete {route}"));
            self.table
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .retain(|r| r != route);
            Ok(())
        }
    }

    #[test]
    fn sync_follows_the_nodes_and_teardown_removes_ours() -> anyhow::Result<()> {
        let ops = Arc::new(FakeRoutes {
            connected: vec![subnet("172.31.5.0/24")],
            ..Default::default()
        });
        let mut sync = RouteSync::new(ops.clone(), "n1", "rkube0");
        let mut nodes = vec![
            info("n1", Some("10.42.1.0/24"), Some("172.31.5.11")),
            info("n2", Some("10.42.2.0/24"), Some("172.31.5.12")),
        ];
        assert_eq!(
            sync.sync(&nodes)?,
            [Change::Replace(route("10.42.2.0/24", "172.31.5.12"))]
        );
        assert_eq!(ops.calls(), ["replace 10.42.2.0/24 via 172.31.5.12"]);
        // Nothing changed: nothing done.
        assert!(sync.sync(&nodes)?.is_empty());
        assert!(ops.calls().is_empty());
        // A third node joins, the second changes its address.
        nodes.push(info("n3", Some("10.42.3.0/24"), Some("172.31.5.13")));
        nodes[1].internal_ip = Some(ip("172.31.5.22"));
        sync.sync(&nodes)?;
        assert_eq!(
            ops.calls(),
            [
                "replace 10.42.2.0/24 via 172.31.5.22",
                "replace 10.42.3.0/24 via 172.31.5.13"
            ]
        );
        // The second node goes away.
        nodes.remove(1);
        sync.sync(&nodes)?;
        assert_eq!(ops.calls(), ["delete 10.42.2.0/24 via 172.31.5.22"]);
        assert_eq!(ops.table(), [route("10.42.3.0/24", "172.31.5.13")]);
        // A failing change is reported, and the others still happen.
        nodes.push(info("n4", Some("10.42.4.0/24"), Some("172.31.5.14")));
        nodes.remove(1);
        *ops.fail_replace.lock().unwrap_or_else(|e| e.into_inner()) = true;
        assert!(sync.sync(&nodes).is_err());
        assert_eq!(
            ops.calls(),
            [
                "delete 10.42.3.0/24 via 172.31.5.13",
                "replace 10.42.4.0/24 via 172.31.5.14"
            ]
        );
        *ops.fail_replace.lock().unwrap_or_else(|e| e.into_inner()) = false;
        sync.sync(&nodes)?;
        assert_eq!(ops.table(), [route("10.42.4.0/24", "172.31.5.14")]);
        ops.calls();

        assert_eq!(remove_all(ops.as_ref())?, 1);
        assert_eq!(ops.calls(), ["delete 10.42.4.0/24 via 172.31.5.14"]);
        assert!(ops.table().is_empty());
        Ok(())
    }
}
