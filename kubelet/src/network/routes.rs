//! Routing between nodes, as flannel's `host-gw` and `vxlan` backends do it. For every
//! other Node with a podCIDR and an InternalIP on a directly connected subnet, the main
//! routing table holds `<podCIDR> via <InternalIP>` (host-gw), so pods reach other nodes'
//! pods without encapsulation and without NAT. A node whose InternalIP needs a router in
//! between (or every node, with `--pod-network-backend vxlan`) is reached through this
//! node's VXLAN device ([`super::vxlan`]): `<podCIDR> via <podCIDR network address> dev
//! <vxlan> onlink`, with the neighbour and FDB entries that send it to the node's address.
//! With `--pod-network-backend host-gw` such a node is logged as unreachable instead.
//!
//! The routes this kubelet writes carry their own protocol number ([`ROUTE_PROTO`], `ip
//! route show proto 114`), so that resync and teardown touch only them. The kernel is
//! reached through the narrow [`RouteOps`] and [`VxlanOps`] traits (rtnetlink for real,
//! recording fakes in the unit tests); what the kernel should hold is a pure function of
//! the Nodes ([`desired`]).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::watcher::{self, watcher};
use kube::runtime::WatchStreamExt;
use tokio_util::sync::CancellationToken;

use super::netlink::{Netlink, NetlinkError};
use super::vxlan::{
    annotation_patch, diff, Announcement, FdbEntry, LocalVtep, MacAddr, Neighbour, VtepAnnotations,
    VxlanError, VxlanOps, VxlanSpec, PUBLIC_IP_ANNOTATION, VNI_ANNOTATION, VTEP_MAC_ANNOTATION,
};
use crate::config::PodNetworkBackend;
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
    #[error(transparent)]
    Vxlan(#[from] VxlanError),
    #[error("route {route}: link {device} does not exist")]
    NoLink { route: String, device: String },
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

/// One route of ours: a node's podCIDR via that node's address (host-gw), or via its
/// VTEP address on the VXLAN device (`device`, with `onlink`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodRoute {
    pub destination: Ipv4Cidr,
    pub gateway: Ipv4Addr,
    /// `dev DEVICE onlink`: the VXLAN device; None for a host-gw route.
    pub device: Option<String>,
}

impl std::fmt::Display for PodRoute {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} via {}", self.destination, self.gateway)?;
        if let Some(device) = &self.device {
            write!(f, " dev {device} onlink")?;
        }
        Ok(())
    }
}

/// A sort and map key for a CIDR ([`Ipv4Cidr`] has no ordering).
fn key(cidr: &Ipv4Cidr) -> (Ipv4Addr, u8) {
    (cidr.network(), cidr.prefix())
}

/// The routing operations the pod network needs (the OS boundary; faked in tests).
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

/// What the routing logic needs of a Node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    pub name: String,
    /// The IPv4 podCIDR (`spec.podCIDRs`, else `spec.podCIDR`).
    pub pod_cidr: Option<Ipv4Cidr>,
    /// The first IPv4 InternalIP.
    pub internal_ip: Option<Ipv4Addr>,
    /// Its VTEP, as its annotations say.
    pub vtep: VtepAnnotations,
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
            vtep: VtepAnnotations::from_annotations(node.metadata.annotations.as_ref()),
        }
    }
}

/// What the Nodes call for: routes (host-gw and VXLAN), the VXLAN device's neighbour and
/// FDB entries, and the nodes that cannot be reached (with why).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Desired {
    pub routes: Vec<PodRoute>,
    pub neighbours: Vec<Neighbour>,
    pub fdb: Vec<FdbEntry>,
    pub unsupported: BTreeMap<String, String>,
}

/// What this node (`self_name`) should hold toward the other nodes with `backend`, given
/// its directly connected subnets and its VTEP (None: no VXLAN device, or not yet).
pub fn desired(
    nodes: &[NodeInfo],
    self_name: &str,
    connected: &[Subnet],
    backend: PodNetworkBackend,
    vtep: Option<&LocalVtep>,
) -> Desired {
    let own = nodes.iter().find(|n| n.name == self_name);
    let own_cidr = own.and_then(|n| n.pod_cidr);
    let own_ip = own.and_then(|n| n.internal_ip);
    let mut sorted: Vec<&NodeInfo> = nodes.iter().filter(|n| n.name != self_name).collect();
    sorted.sort_by(|a, b| a.name.cmp(&b.name));
    let mut desired = Desired::default();
    let mut claimed: Vec<(Ipv4Cidr, &str)> = Vec::new();
    let mut macs: Vec<(MacAddr, &str)> = Vec::new();
    for node in sorted {
        let (Some(cidr), Some(internal_ip)) = (node.pod_cidr, node.internal_ip) else {
            continue; // not registered fully yet, or no podCIDR yet
        };
        let overlaps =
            |other: Ipv4Cidr| other.contains(cidr.network()) || cidr.contains(other.network());
        let direct = connected.iter().any(|s| s.contains(internal_ip));
        let overlay = match backend {
            PodNetworkBackend::HostGw => false,
            PodNetworkBackend::Vxlan => true,
            PodNetworkBackend::Auto => !direct,
        };
        let problem = if own_ip == Some(internal_ip) {
            Some(format!("InternalIP {internal_ip} is this node's own"))
        } else if own_cidr.is_some_and(overlaps) {
            Some(format!("podCIDR {cidr} overlaps this node's"))
        } else if let Some((_, owner)) = claimed.iter().find(|(other, _)| overlaps(*other)) {
            Some(format!("podCIDR {cidr} overlaps node {owner}'s"))
        } else if !overlay && !direct {
            Some(format!(
                "InternalIP {internal_ip} is not on a directly connected subnet (host-gw needs one; --pod-network-backend auto or vxlan reaches it through VXLAN)"
            ))
        } else {
            None
        };
        if let Some(reason) = problem {
            desired.unsupported.insert(node.name.clone(), reason);
            continue;
        }
        if !overlay {
            claimed.push((cidr, &node.name));
            desired.routes.push(PodRoute {
                destination: cidr,
                gateway: internal_ip,
                device: None,
            });
            continue;
        }
        match vxlan_peer(node, cidr, internal_ip, vtep, &macs) {
            Ok((vtep, neighbour, fdb)) => {
                claimed.push((cidr, &node.name));
                macs.push((fdb.mac, &node.name));
                desired.routes.push(PodRoute {
                    destination: cidr,
                    gateway: neighbour.ip,
                    device: Some(vtep.device.clone()),
                });
                desired.neighbours.push(neighbour);
                desired.fdb.push(fdb);
            }
            Err(reason) => {
                desired.unsupported.insert(node.name.clone(), reason);
            }
        }
    }
    desired.routes.sort_by_key(|r| key(&r.destination));
    desired.neighbours.sort();
    desired.fdb.sort();
    desired
}

/// The neighbour and FDB entries that reach `node` through this node's VTEP, or why
/// there can be none.
fn vxlan_peer<'v>(
    node: &NodeInfo,
    cidr: Ipv4Cidr,
    internal_ip: Ipv4Addr,
    vtep: Option<&'v LocalVtep>,
    taken: &[(MacAddr, &str)],
) -> Result<(&'v LocalVtep, Neighbour, FdbEntry), String> {
    let vtep = vtep.ok_or("this node's VXLAN device is not set up")?;
    let mac_text = node.vtep.mac.as_deref().ok_or_else(|| {
        format!("no {VTEP_MAC_ANNOTATION} annotation (its VXLAN device is not up yet, or it runs with --pod-network-backend host-gw)")
    })?;
    let mac: MacAddr = mac_text
        .parse()
        .map_err(|e| format!("{VTEP_MAC_ANNOTATION}: {e}"))?;
    if let Some(text) = &node.vtep.vni {
        match text.parse::<u32>() {
            Ok(vni) if vni == vtep.vni => {}
            Ok(vni) => {
                return Err(format!(
                    "its VNI {vni} differs from this node's {} (--vxlan-vni)",
                    vtep.vni
                ))
            }
            Err(_) => return Err(format!("{VNI_ANNOTATION}: {text:?} is not a VNI")),
        }
    }
    let dst = match &node.vtep.public_ip {
        Some(text) => text
            .parse::<Ipv4Addr>()
            .map_err(|_| format!("{PUBLIC_IP_ANNOTATION}: {text:?} is not an IPv4 address"))?,
        None => internal_ip,
    };
    if mac == vtep.mac {
        return Err(format!("VTEP MAC {mac} is this node's own"));
    }
    if let Some((_, owner)) = taken.iter().find(|(m, _)| *m == mac) {
        return Err(format!("VTEP MAC {mac} is node {owner}'s too"));
    }
    if dst == vtep.public_ip {
        return Err(format!("public IP {dst} is this node's own"));
    }
    Ok((
        vtep,
        Neighbour {
            ip: cidr.network(),
            mac,
        },
        FdbEntry { mac, dst },
    ))
}

/// One change to the kernel's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Replace(PodRoute),
    Delete(PodRoute),
    SetNeighbour(Neighbour),
    DeleteNeighbour(Neighbour),
    SetFdb(FdbEntry),
    DeleteFdb(FdbEntry),
}

impl std::fmt::Display for Change {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Change::Replace(route) => write!(f, "route replace {route}"),
            Change::Delete(route) => write!(f, "route del {route}"),
            Change::SetNeighbour(n) => write!(f, "neigh replace {n}"),
            Change::DeleteNeighbour(n) => write!(f, "neigh del {n}"),
            Change::SetFdb(e) => write!(f, "fdb replace {e}"),
            Change::DeleteFdb(e) => write!(f, "fdb del {e}"),
        }
    }
}

/// The route changes that turn `current` (our routes in the kernel) into `desired`.
pub fn plan(desired: &[PodRoute], current: &[PodRoute]) -> Vec<Change> {
    let wanted: BTreeMap<_, _> = desired.iter().map(|r| (key(&r.destination), r)).collect();
    let mut changes = Vec::new();
    for route in current {
        if wanted.get(&key(&route.destination)) != Some(&route) {
            changes.push(Change::Delete(route.clone()));
        }
    }
    for route in desired {
        if !current.contains(route) {
            changes.push(Change::Replace(route.clone()));
        }
    }
    // A changed gateway needs no delete first: replace overwrites the route.
    changes.retain(|change| match change {
        Change::Delete(old) => !desired
            .iter()
            .any(|r| key(&r.destination) == key(&old.destination)),
        _ => true,
    });
    changes
}

/// The routing state of one kubelet: applies the Nodes' routes (and, with VXLAN, the
/// device and its entries) to the kernel.
pub struct RouteSync {
    ops: Arc<dyn RouteOps>,
    vxlan_ops: Arc<dyn VxlanOps>,
    node_name: String,
    bridge: String,
    backend: PodNetworkBackend,
    spec: VxlanSpec,
    /// This node's VTEP, once the device is up.
    vtep: Option<LocalVtep>,
    /// host-gw: whether a VXLAN device left by an earlier run was looked for.
    leftover_checked: bool,
    /// The unsupported nodes already warned about, with the reason (warned again on change).
    warned: BTreeMap<String, String>,
    /// The last VXLAN device failure warned about.
    device_warned: Option<String>,
}

impl RouteSync {
    /// `spec` is the VXLAN device the backend may need (only its name is used with host-gw,
    /// to remove a device an earlier run left).
    pub fn new(
        ops: Arc<dyn RouteOps>,
        vxlan_ops: Arc<dyn VxlanOps>,
        node_name: impl Into<String>,
        bridge: impl Into<String>,
        backend: PodNetworkBackend,
        spec: VxlanSpec,
    ) -> Self {
        RouteSync {
            ops,
            vxlan_ops,
            node_name: node_name.into(),
            bridge: bridge.into(),
            backend,
            spec,
            vtep: None,
            leftover_checked: false,
            warned: BTreeMap::new(),
            device_warned: None,
        }
    }

    /// This node's VTEP, once the VXLAN device is up.
    pub fn vtep(&self) -> Option<&LocalVtep> {
        self.vtep.as_ref()
    }

    /// What the Node's annotations should say of this node's VTEP.
    pub fn announcement(&self) -> Announcement {
        match (&self.vtep, self.backend.uses_vxlan()) {
            (_, false) => Announcement::Withdraw,
            (Some(vtep), true) => Announcement::Publish(vtep.clone()),
            (None, true) => Announcement::Keep,
        }
    }

    /// Brings the VXLAN device (its address from this node's podCIDR), our routes and the
    /// device's entries in line with `nodes`; returns the changes made. Every change is
    /// tried; the first error is returned after the rest.
    pub fn sync(&mut self, nodes: &[NodeInfo]) -> Result<Vec<Change>, RouteError> {
        let connected = self.ops.connected_subnets(&self.bridge)?;
        let own_cidr = nodes
            .iter()
            .find(|n| n.name == self.node_name)
            .and_then(|n| n.pod_cidr);
        let mut first_error = self.ensure_device(own_cidr).err();
        let desired = desired(
            nodes,
            &self.node_name,
            &connected,
            self.backend,
            self.vtep.as_ref(),
        );
        for (node, reason) in &desired.unsupported {
            if self.warned.get(node) != Some(reason) {
                tracing::warn!(node = %node, reason = %reason, "no route to the node's pods");
            }
        }
        self.warned = desired.unsupported;
        let mut changes = Vec::new();
        let route_changes = plan(&desired.routes, &self.ops.list()?);
        changes.extend(
            route_changes
                .iter()
                .filter(|c| matches!(c, Change::Delete(_)))
                .cloned(),
        );
        if let Some(vtep) = &self.vtep {
            let (stale_neighbours, new_neighbours) = diff(
                &desired.neighbours,
                &self.vxlan_ops.neighbours(&vtep.device)?,
            );
            let (stale_fdb, new_fdb) = diff(&desired.fdb, &self.vxlan_ops.fdb(&vtep.device)?);
            // Entries go after the routes through them, and come before.
            changes.extend(stale_neighbours.into_iter().map(Change::DeleteNeighbour));
            changes.extend(stale_fdb.into_iter().map(Change::DeleteFdb));
            changes.extend(new_fdb.into_iter().map(Change::SetFdb));
            changes.extend(new_neighbours.into_iter().map(Change::SetNeighbour));
        }
        changes.extend(
            route_changes
                .into_iter()
                .filter(|c| matches!(c, Change::Replace(_))),
        );
        let mut done = Vec::new();
        for change in changes {
            match self.apply(&change) {
                Ok(()) => {
                    tracing::info!(change = %change, "pod network changed");
                    done.push(change);
                }
                Err(e) => {
                    tracing::warn!(change = %change, error = %e, "changing the pod network failed");
                    first_error.get_or_insert(e);
                }
            }
        }
        first_error.map_or(Ok(done), Err)
    }

    fn apply(&self, change: &Change) -> Result<(), RouteError> {
        let device = || self.spec.device.as_str();
        match change {
            Change::Replace(route) => self.ops.replace(route),
            Change::Delete(route) => self.ops.delete(route),
            Change::SetNeighbour(n) => Ok(self.vxlan_ops.replace_neighbour(device(), n)?),
            Change::DeleteNeighbour(n) => Ok(self.vxlan_ops.delete_neighbour(device(), n)?),
            Change::SetFdb(e) => Ok(self.vxlan_ops.replace_fdb(device(), e)?),
            Change::DeleteFdb(e) => Ok(self.vxlan_ops.delete_fdb(device(), e)?),
        }
    }

    /// With a VXLAN backend: the device up, with `<own podCIDR network>/32` once there is
    /// a podCIDR. With host-gw: no device (one left by an earlier run is removed).
    fn ensure_device(&mut self, own_cidr: Option<Ipv4Cidr>) -> Result<(), RouteError> {
        if !self.backend.uses_vxlan() {
            if !self.leftover_checked {
                if self.vxlan_ops.delete_device(&self.spec.device)? {
                    tracing::info!(device = %self.spec.device, "removed the VXLAN device of an earlier run (backend host-gw)");
                }
                self.leftover_checked = true;
            }
            return Ok(());
        }
        let mac = match self.vxlan_ops.ensure_device(&self.spec) {
            Ok(mac) => mac,
            Err(e) => {
                self.vtep = None;
                let message = e.to_string();
                if self.device_warned.as_ref() != Some(&message) {
                    tracing::warn!(device = %self.spec.device, error = %e, "setting up the VXLAN device failed; nodes that need it stay unreachable");
                    self.device_warned = Some(message);
                }
                return Err(e.into());
            }
        };
        self.device_warned = None;
        let vtep = LocalVtep {
            device: self.spec.device.clone(),
            mac,
            vni: self.spec.vni,
            public_ip: self.spec.local,
        };
        if self.vtep.as_ref() != Some(&vtep) {
            tracing::info!(device = %vtep.device, mac = %vtep.mac, vni = vtep.vni, local = %vtep.public_ip, "VXLAN device ready");
            self.vtep = Some(vtep);
        }
        if let Some(cidr) = own_cidr {
            self.vxlan_ops
                .ensure_address(&self.spec.device, cidr.network())?;
        }
        Ok(())
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

/// Watches the Nodes, keeps the routes (and the VXLAN device) in line and this node's
/// VTEP annotations current until `shutdown`.
pub async fn run(sync: RouteSync, client: kube::Client, shutdown: CancellationToken) {
    let api: Api<Node> = Api::all(client);
    let mut stream = watcher(api.clone(), watcher::Config::default())
        .default_backoff()
        .boxed();
    let node_name = sync.node_name.clone();
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
                    // Status heartbeats change nothing the routes care about.
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
        let (result, announcement) = match outcome {
            Ok((state, result)) => {
                let announcement = state.announcement();
                sync = Some(state);
                (result, announcement)
            }
            Err(e) => {
                tracing::error!(error = %e, "the route sync thread failed; pod routes are no longer kept");
                return;
            }
        };
        let mut failed = result
            .inspect_err(|e| tracing::warn!(error = %e, "syncing the pod network failed; retrying"))
            .is_err();
        // The own Node shows up once registered; its (re-)creation is an event too.
        if let Some(own) = nodes.get(&node_name) {
            if let Some(patch) = annotation_patch(&own.vtep, &announcement) {
                match api
                    .patch(&node_name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                {
                    Ok(patched) => {
                        match &announcement {
                            Announcement::Publish(vtep) => {
                                tracing::info!(node = %node_name, mac = %vtep.mac, public_ip = %vtep.public_ip, vni = vtep.vni, "VTEP annotations published")
                            }
                            _ => tracing::info!(node = %node_name, "VTEP annotations withdrawn"),
                        }
                        // Known now, before the watch tells: no second patch meanwhile.
                        nodes.insert(node_name.clone(), NodeInfo::from_node(&patched));
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "updating the node's VTEP annotations failed; retrying");
                        failed = true;
                    }
                }
            }
        }
        next_sync = tokio::time::Instant::now() + if failed { RETRY_PERIOD } else { RESYNC_PERIOD };
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
            let device = match (route.onlink, route.output_interface) {
                (true, Some(index)) => netlink.link_details_by_index(index)?.map(|l| l.name),
                _ => None,
            };
            match (
                Ipv4Cidr::new(route.destination, route.prefix),
                route.gateway,
            ) {
                (Ok(destination), Some(gateway)) => routes.push(PodRoute {
                    destination,
                    gateway,
                    device,
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
        let mut netlink = Netlink::open()?;
        let onlink = onlink_index(&mut netlink, route)?;
        netlink.replace_route(
            destination.network(),
            destination.prefix(),
            route.gateway,
            onlink,
            ROUTE_PROTO,
        )?;
        Ok(())
    }

    fn delete(&self, route: &PodRoute) -> Result<(), RouteError> {
        let destination = route.destination;
        let mut netlink = Netlink::open()?;
        let onlink = match onlink_index(&mut netlink, route) {
            Ok(index) => index,
            // The device took its routes along.
            Err(RouteError::NoLink { .. }) => return Ok(()),
            Err(e) => return Err(e),
        };
        match netlink.delete_route(
            destination.network(),
            destination.prefix(),
            route.gateway,
            onlink,
            ROUTE_PROTO,
        ) {
            Ok(()) => Ok(()),
            // ESRCH: no such route, which is what we wanted.
            Err(e) if e.errno() == Some(libc::ESRCH) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

/// The index of the route's onlink device, if it has one.
fn onlink_index(netlink: &mut Netlink, route: &PodRoute) -> Result<Option<u32>, RouteError> {
    let Some(device) = &route.device else {
        return Ok(None);
    };
    match netlink.link_index(device)? {
        Some(index) => Ok(Some(index)),
        None => Err(RouteError::NoLink {
            route: route.to_string(),
            device: device.clone(),
        }),
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
            vtep: VtepAnnotations::default(),
        }
    }

    /// A node whose VTEP is published (MAC `0a:00:00:00:00:<mac>`, VNI 1).
    fn vxlan_info(name: &str, pod_cidr: &str, internal_ip: &str, mac: u8) -> NodeInfo {
        NodeInfo {
            vtep: VtepAnnotations {
                mac: Some(format!("0a:00:00:00:00:{mac:02x}")),
                public_ip: Some(internal_ip.to_string()),
                vni: Some("1".into()),
            },
            ..info(name, Some(pod_cidr), Some(internal_ip))
        }
    }

    fn mac(last: u8) -> MacAddr {
        MacAddr([0x0a, 0, 0, 0, 0, last])
    }

    fn route(destination: &str, gateway: &str) -> PodRoute {
        PodRoute {
            destination: cidr(destination),
            gateway: ip(gateway),
            device: None,
        }
    }

    fn vxlan_route(destination: &str) -> PodRoute {
        PodRoute {
            destination: cidr(destination),
            gateway: cidr(destination).network(),
            device: Some(DEVICE.into()),
        }
    }

    fn neighbour(address: &str, last: u8) -> Neighbour {
        Neighbour {
            ip: ip(address),
            mac: mac(last),
        }
    }

    fn fdb(last: u8, dst: &str) -> FdbEntry {
        FdbEntry {
            mac: mac(last),
            dst: ip(dst),
        }
    }

    const DEVICE: &str = "rkube0-vxlan";

    fn local_vtep() -> LocalVtep {
        LocalVtep {
            device: DEVICE.into(),
            mac: mac(1),
            vni: 1,
            public_ip: ip("172.31.5.11"),
        }
    }

    fn spec() -> VxlanSpec {
        VxlanSpec {
            device: DEVICE.into(),
            vni: 1,
            port: 8472,
            local: ip("172.31.5.11"),
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
        let annotated = Node {
            metadata: kube::api::ObjectMeta {
                annotations: Some(
                    [
                        ("rkube.io/vtep-mac", "0a:00:00:00:00:02"),
                        ("rkube.io/public-ip", "172.31.5.12"),
                        ("rkube.io/vxlan-vni", "1"),
                        ("flannel.alpha.coreos.com/public-ip", "10.0.0.1"),
                    ]
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                ),
                ..node.metadata.clone()
            },
            ..node.clone()
        };
        assert_eq!(
            NodeInfo::from_node(&annotated),
            vxlan_info("n2", "10.42.2.0/24", "172.31.5.12", 2)
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
        let wanted = desired(
            &nodes,
            "n1",
            &[subnet("172.31.5.0/24"), subnet("172.31.7.1")],
            PodNetworkBackend::HostGw,
            None,
        );
        assert_eq!(
            wanted.routes,
            [
                route("10.42.2.0/24", "172.31.5.12"),
                route("10.42.3.0/24", "172.31.5.13")
            ]
        );
        let unsupported: Vec<(&str, &str)> = wanted
            .unsupported
            .iter()
            .map(|(n, r)| (n.as_str(), r.as_str()))
            .collect();
        assert_eq!(
            unsupported,
            [
                ("doppelganger", "InternalIP 172.31.5.11 is this node's own"),
                ("far", "InternalIP 192.168.9.9 is not on a directly connected subnet (host-gw needs one; --pod-network-backend auto or vxlan reaches it through VXLAN)"),
                ("thief", "podCIDR 10.42.1.0/25 overlaps this node's"),
                ("twin", "podCIDR 10.42.2.0/24 overlaps node n2's"),
            ]
        );
        // Before this node has its own podCIDR, the others still get routes.
        let early = desired(
            &nodes[1..3],
            "n1",
            &[subnet("172.31.5.0/24")],
            PodNetworkBackend::HostGw,
            None,
        );
        assert_eq!(early.routes.len(), 2);
        assert!(early.neighbours.is_empty() && early.fdb.is_empty());
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
            table.push(route.clone());
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
        let vxlan = Arc::new(FakeVxlan::default());
        let mut sync = RouteSync::new(
            ops.clone(),
            vxlan.clone(),
            "n1",
            "rkube0",
            PodNetworkBackend::HostGw,
            spec(),
        );
        let mut nodes = vec![
            info("n1", Some("10.42.1.0/24"), Some("172.31.5.11")),
            info("n2", Some("10.42.2.0/24"), Some("172.31.5.12")),
        ];
        assert_eq!(
            sync.sync(&nodes)?,
            [Change::Replace(route("10.42.2.0/24", "172.31.5.12"))]
        );
        assert_eq!(ops.calls(), ["replace 10.42.2.0/24 via 172.31.5.12"]);
        // host-gw looks for a VXLAN device of an earlier run once, and never makes one.
        assert_eq!(vxlan.calls(), ["delete device rkube0-vxlan"]);
        assert_eq!(sync.announcement(), Announcement::Withdraw);
        // Nothing changed: nothing done.
        assert!(sync.sync(&nodes)?.is_empty());
        assert!(ops.calls().is_empty());
        assert!(vxlan.calls().is_empty());
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

    /// A VXLAN device in memory that records the calls made to it.
    #[derive(Default)]
    struct FakeVxlan {
        device: Mutex<Option<(VxlanSpec, Vec<Ipv4Addr>)>>,
        neighbours: Mutex<Vec<Neighbour>>,
        fdb: Mutex<Vec<FdbEntry>>,
        calls: Mutex<Vec<String>>,
        fail_device: Mutex<bool>,
    }

    fn locked<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
        m.lock().unwrap_or_else(|e| e.into_inner())
    }

    impl FakeVxlan {
        fn calls(&self) -> Vec<String> {
            std::mem::take(&mut *locked(&self.calls))
        }
        fn record(&self, call: String) {
            locked(&self.calls).push(call);
        }
        fn present(&self, device: &str) -> Result<(), VxlanError> {
            match &*locked(&self.device) {
                Some((spec, _)) if spec.device == device => Ok(()),
                _ => Err(VxlanError::NoDevice {
                    device: device.into(),
                }),
            }
        }
    }

    impl VxlanOps for FakeVxlan {
        fn ensure_device(&self, spec: &VxlanSpec) -> Result<MacAddr, VxlanError> {
            if *locked(&self.fail_device) {
                return Err(VxlanError::NoUplink { ip: spec.local });
            }
            let mut device = locked(&self.device);
            if device.as_ref().map(|(s, _)| s) != Some(spec) {
                self.record(format!("create device {} vni {}", spec.device, spec.vni));
                *device = Some((spec.clone(), Vec::new()));
            }
            Ok(mac(1))
        }
        fn ensure_address(&self, device: &str, address: Ipv4Addr) -> Result<(), VxlanError> {
            self.present(device)?;
            if let Some((_, addresses)) = &mut *locked(&self.device) {
                if addresses != &[address] {
                    self.record(format!("address {address}/32 on {device}"));
                    *addresses = vec![address];
                }
            }
            Ok(())
        }
        fn delete_device(&self, device: &str) -> Result<bool, VxlanError> {
            self.record(format!("delete device {device}"));
            let existed = locked(&self.device).take().is_some();
            locked(&self.neighbours).clear();
            locked(&self.fdb).clear();
            Ok(existed)
        }
        fn neighbours(&self, device: &str) -> Result<Vec<Neighbour>, VxlanError> {
            self.present(device)?;
            Ok(locked(&self.neighbours).clone())
        }
        fn replace_neighbour(&self, device: &str, entry: &Neighbour) -> Result<(), VxlanError> {
            self.present(device)?;
            self.record(format!("neigh replace {entry}"));
            let mut table = locked(&self.neighbours);
            table.retain(|n| n.ip != entry.ip);
            table.push(*entry);
            Ok(())
        }
        fn delete_neighbour(&self, device: &str, entry: &Neighbour) -> Result<(), VxlanError> {
            self.present(device)?;
            self.record(format!("neigh del {entry}"));
            locked(&self.neighbours).retain(|n| n.ip != entry.ip);
            Ok(())
        }
        fn fdb(&self, device: &str) -> Result<Vec<FdbEntry>, VxlanError> {
            self.present(device)?;
            Ok(locked(&self.fdb).clone())
        }
        fn replace_fdb(&self, device: &str, entry: &FdbEntry) -> Result<(), VxlanError> {
            self.present(device)?;
            self.record(format!("fdb replace {entry}"));
            let mut table = locked(&self.fdb);
            table.retain(|e| e.mac != entry.mac);
            table.push(*entry);
            Ok(())
        }
        fn delete_fdb(&self, device: &str, entry: &FdbEntry) -> Result<(), VxlanError> {
            self.present(device)?;
            self.record(format!("fdb del {entry}"));
            locked(&self.fdb).retain(|e| e != entry);
            Ok(())
        }
    }

    /// n1 (this node) and n2 share 172.31.5.0/24; n3 and n4 are behind routers.
    fn mixed_nodes() -> Vec<NodeInfo> {
        vec![
            vxlan_info("n1", "10.42.1.0/24", "172.31.5.11", 1),
            vxlan_info("n2", "10.42.2.0/24", "172.31.5.12", 2),
            vxlan_info("n3", "10.42.3.0/24", "172.29.0.10", 3),
            vxlan_info("n4", "10.42.4.0/24", "192.168.7.4", 4),
        ]
    }

    fn unsupported(desired: &Desired) -> Vec<(&str, &str)> {
        desired
            .unsupported
            .iter()
            .map(|(n, r)| (n.as_str(), r.as_str()))
            .collect()
    }

    #[test]
    fn auto_uses_host_gw_where_connected_and_vxlan_elsewhere() {
        let connected = [subnet("172.31.5.0/24")];
        let vtep = local_vtep();
        let auto = desired(
            &mixed_nodes(),
            "n1",
            &connected,
            PodNetworkBackend::Auto,
            Some(&vtep),
        );
        assert_eq!(
            auto.routes,
            [
                route("10.42.2.0/24", "172.31.5.12"),
                vxlan_route("10.42.3.0/24"),
                vxlan_route("10.42.4.0/24"),
            ]
        );
        assert_eq!(
            auto.neighbours,
            [neighbour("10.42.3.0", 3), neighbour("10.42.4.0", 4)]
        );
        assert_eq!(auto.fdb, [fdb(3, "172.29.0.10"), fdb(4, "192.168.7.4")]);
        assert!(auto.unsupported.is_empty());
        assert_eq!(
            vxlan_route("10.42.3.0/24").to_string(),
            "10.42.3.0/24 via 10.42.3.0 dev rkube0-vxlan onlink"
        );

        // vxlan: every node through the overlay, connected or not.
        let all = desired(
            &mixed_nodes(),
            "n1",
            &connected,
            PodNetworkBackend::Vxlan,
            Some(&vtep),
        );
        assert_eq!(
            all.routes,
            [
                vxlan_route("10.42.2.0/24"),
                vxlan_route("10.42.3.0/24"),
                vxlan_route("10.42.4.0/24"),
            ]
        );
        assert_eq!(all.fdb[0], fdb(2, "172.31.5.12"));

        // host-gw: today's behaviour, the far nodes are unreachable.
        let host_gw = desired(
            &mixed_nodes(),
            "n1",
            &connected,
            PodNetworkBackend::HostGw,
            Some(&vtep),
        );
        assert_eq!(host_gw.routes, [route("10.42.2.0/24", "172.31.5.12")]);
        assert!(host_gw.neighbours.is_empty() && host_gw.fdb.is_empty());
        assert_eq!(host_gw.unsupported.keys().collect::<Vec<_>>(), ["n3", "n4"]);

        // Without a device of its own, the far nodes wait; the near one is routed.
        let no_device = desired(
            &mixed_nodes(),
            "n1",
            &connected,
            PodNetworkBackend::Auto,
            None,
        );
        assert_eq!(no_device.routes, [route("10.42.2.0/24", "172.31.5.12")]);
        assert_eq!(
            unsupported(&no_device),
            [
                ("n3", "this node's VXLAN device is not set up"),
                ("n4", "this node's VXLAN device is not set up")
            ]
        );
    }

    #[test]
    fn vxlan_peers_need_sound_annotations() {
        let vtep = local_vtep();
        let mut nodes = vec![
            info("n1", Some("10.42.1.0/24"), Some("172.31.5.11")),
            info("bare", Some("10.42.2.0/24"), Some("172.29.0.2")),
            vxlan_info("bad-mac", "10.42.3.0/24", "172.29.0.3", 3),
            vxlan_info("other-vni", "10.42.4.0/24", "172.29.0.4", 4),
            vxlan_info("clone", "10.42.5.0/24", "172.29.0.5", 1),
            vxlan_info("a-first", "10.42.6.0/24", "172.29.0.6", 6),
            vxlan_info("twin-mac", "10.42.7.0/24", "172.29.0.7", 6),
            vxlan_info("behind-nat", "10.42.8.0/24", "172.29.0.8", 8),
            vxlan_info("bad-ip", "10.42.9.0/24", "172.29.0.9", 9),
        ];
        nodes[2].vtep.mac = Some("0a:00:00:00:00".into());
        nodes[3].vtep.vni = Some("2".into());
        nodes[7].vtep.public_ip = Some("198.51.100.8".into());
        nodes[8].vtep.public_ip = Some("nowhere".into());
        let wanted = desired(&nodes, "n1", &[], PodNetworkBackend::Auto, Some(&vtep));
        assert_eq!(
            wanted.routes,
            [vxlan_route("10.42.6.0/24"), vxlan_route("10.42.8.0/24")]
        );
        // The public IP, where a node publishes one, is where its traffic goes.
        assert_eq!(wanted.fdb, [fdb(6, "172.29.0.6"), fdb(8, "198.51.100.8")]);
        assert_eq!(
            unsupported(&wanted),
            [
                ("bad-ip", "rkube.io/public-ip: \"nowhere\" is not an IPv4 address"),
                ("bad-mac", "rkube.io/vtep-mac: \"0a:00:00:00:00\" is not a MAC address"),
                ("bare", "no rkube.io/vtep-mac annotation (its VXLAN device is not up yet, or it runs with --pod-network-backend host-gw)"),
                ("clone", "VTEP MAC 0a:00:00:00:00:01 is this node's own"),
                ("other-vni", "its VNI 2 differs from this node's 1 (--vxlan-vni)"),
                ("twin-mac", "VTEP MAC 0a:00:00:00:00:06 is node a-first's too"),
            ]
        );
    }

    #[test]
    fn vxlan_sync_follows_the_nodes_and_teardown_removes_ours() -> anyhow::Result<()> {
        let ops = Arc::new(FakeRoutes {
            connected: vec![subnet("172.31.5.0/24")],
            ..Default::default()
        });
        let vxlan = Arc::new(FakeVxlan::default());
        let mut sync = RouteSync::new(
            ops.clone(),
            vxlan.clone(),
            "n1",
            "rkube0",
            PodNetworkBackend::Auto,
            spec(),
        );
        // Before the podCIDR: the device, no address yet, nothing published by others.
        let mut nodes = vec![
            info("n1", None, Some("172.31.5.11")),
            info("n3", Some("10.42.3.0/24"), Some("172.29.0.10")),
        ];
        assert!(sync.sync(&nodes)?.is_empty());
        assert_eq!(vxlan.calls(), ["create device rkube0-vxlan vni 1"]);
        assert_eq!(sync.announcement(), Announcement::Publish(local_vtep()));
        assert_eq!(sync.vtep(), Some(&local_vtep()));

        nodes = mixed_nodes();
        let changes = sync.sync(&nodes)?;
        assert_eq!(
            changes,
            [
                Change::SetFdb(fdb(3, "172.29.0.10")),
                Change::SetFdb(fdb(4, "192.168.7.4")),
                Change::SetNeighbour(neighbour("10.42.3.0", 3)),
                Change::SetNeighbour(neighbour("10.42.4.0", 4)),
                Change::Replace(route("10.42.2.0/24", "172.31.5.12")),
                Change::Replace(vxlan_route("10.42.3.0/24")),
                Change::Replace(vxlan_route("10.42.4.0/24")),
            ]
        );
        assert_eq!(
            vxlan.calls(),
            [
                "address 10.42.1.0/32 on rkube0-vxlan",
                "fdb replace 0a:00:00:00:00:03 dst 172.29.0.10",
                "fdb replace 0a:00:00:00:00:04 dst 192.168.7.4",
                "neigh replace 10.42.3.0 lladdr 0a:00:00:00:00:03",
                "neigh replace 10.42.4.0 lladdr 0a:00:00:00:00:04",
            ]
        );
        ops.calls();
        assert!(sync.sync(&nodes)?.is_empty(), "nothing changed");
        assert!(vxlan.calls().is_empty());

        // n3's device was re-created (new MAC) and n4 moved to another address.
        nodes[2].vtep.mac = Some("0a:00:00:00:00:33".into());
        nodes[3] = vxlan_info("n4", "10.42.4.0/24", "192.168.8.4", 4);
        sync.sync(&nodes)?;
        assert_eq!(
            vxlan.calls(),
            [
                "neigh del 10.42.3.0 lladdr 0a:00:00:00:00:03",
                "fdb del 0a:00:00:00:00:03 dst 172.29.0.10",
                "fdb del 0a:00:00:00:00:04 dst 192.168.7.4",
                "fdb replace 0a:00:00:00:00:04 dst 192.168.8.4",
                "fdb replace 0a:00:00:00:00:33 dst 172.29.0.10",
                "neigh replace 10.42.3.0 lladdr 0a:00:00:00:00:33",
            ]
        );
        assert!(ops.calls().is_empty(), "the routes stay as they were");

        // n3 goes; n2 moves behind a router and is reached through the overlay now.
        nodes.remove(2);
        nodes[1] = vxlan_info("n2", "10.42.2.0/24", "172.28.0.12", 2);
        sync.sync(&nodes)?;
        assert_eq!(
            ops.calls(),
            [
                "delete 10.42.3.0/24 via 10.42.3.0 dev rkube0-vxlan onlink",
                "replace 10.42.2.0/24 via 10.42.2.0 dev rkube0-vxlan onlink"
            ]
        );
        assert_eq!(
            vxlan.calls(),
            [
                "neigh del 10.42.3.0 lladdr 0a:00:00:00:00:33",
                "fdb del 0a:00:00:00:00:33 dst 172.29.0.10",
                "fdb replace 0a:00:00:00:00:02 dst 172.28.0.12",
                "neigh replace 10.42.2.0 lladdr 0a:00:00:00:00:02",
            ]
        );
        assert_eq!(
            ops.table(),
            [vxlan_route("10.42.4.0/24"), vxlan_route("10.42.2.0/24")]
        );
        assert_eq!(
            *locked(&vxlan.neighbours),
            [neighbour("10.42.4.0", 4), neighbour("10.42.2.0", 2)]
        );

        // The device breaks: the near node keeps host-gw, the error is reported, and
        // the annotations are left alone.
        *locked(&vxlan.fail_device) = true;
        nodes[1] = vxlan_info("n2", "10.42.2.0/24", "172.31.5.12", 2);
        assert!(sync.sync(&nodes).is_err());
        assert_eq!(sync.announcement(), Announcement::Keep);
        assert_eq!(
            ops.calls(),
            [
                "delete 10.42.4.0/24 via 10.42.4.0 dev rkube0-vxlan onlink",
                "replace 10.42.2.0/24 via 172.31.5.12"
            ]
        );
        *locked(&vxlan.fail_device) = false;
        sync.sync(&nodes)?;
        assert_eq!(ops.table().len(), 2);

        // Teardown: our routes, then the device with its entries.
        assert_eq!(remove_all(ops.as_ref())?, 2);
        assert!(vxlan.delete_device(DEVICE)?);
        assert!(ops.table().is_empty());
        assert!(locked(&vxlan.neighbours).is_empty() && locked(&vxlan.fdb).is_empty());
        Ok(())
    }
}
