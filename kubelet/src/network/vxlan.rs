//! The VXLAN overlay between nodes that share no L2 segment, as flannel's `vxlan` backend
//! builds it. Each node has one VXLAN device (VNI 1 and UDP port 8472 by default, its
//! InternalIP as local address, learning off, MTU 50 below the uplink's) holding
//! `<podCIDR network address>/32`, and publishes the device's MAC on its Node
//! ([`VTEP_MAC_ANNOTATION`], [`PUBLIC_IP_ANNOTATION`], [`VNI_ANNOTATION`]). For every
//! other node reached through the overlay, the routes module adds a route
//! `<podCIDR> via <podCIDR network address> dev <vxlan> onlink`, and this module the
//! permanent neighbour entry `<podCIDR network address> lladdr <their MAC>` and the FDB
//! entry `<their MAC> dst <their address>` on the device: the kernel then encapsulates
//! pod traffic to the node's address with no ARP or learning on the wire.
//!
//! The device's neighbour and FDB entries are all ours (learning is off), so a resync
//! replaces them wholesale; the device goes at teardown and takes them along. The kernel
//! is reached through the narrow [`VxlanOps`] trait (rtnetlink for real, a recording fake
//! in unit tests).

use std::collections::BTreeMap;
use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use netlink_packet_route::link::{InfoKind, InfoVxlan};
use netlink_packet_route::neighbour::NeighbourState;
use sha2::{Digest, Sha256};

use super::netlink::{LinkDetails, NeighbourTable, Netlink, NetlinkError, VxlanLink};
use crate::runtime::sandbox::network::MAX_IFNAME_LEN;
use crate::runtime::sandbox::Rtnetlink;

/// The largest VXLAN network identifier (24 bits).
pub const MAX_VNI: u32 = (1 << 24) - 1;
/// What encapsulation adds to each packet: outer IPv4 (20), UDP (8), VXLAN (8) and
/// Ethernet (14) headers. The device's MTU is the uplink's minus this, as flannel's.
pub const OVERHEAD: u32 = 50;

/// The node's VTEP MAC address (flannel keeps it in `backend-data`).
pub const VTEP_MAC_ANNOTATION: &str = "rkube.io/vtep-mac";
/// The address other nodes send the node's VXLAN traffic to (flannel's `public-ip`).
pub const PUBLIC_IP_ANNOTATION: &str = "rkube.io/public-ip";
/// The node's VNI: nodes on different VNIs cannot reach each other, and say why.
pub const VNI_ANNOTATION: &str = "rkube.io/vxlan-vni";

#[derive(Debug, thiserror::Error)]
pub enum VxlanError {
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    #[error(
        "the node IP {ip} is a loopback address; VXLAN needs the node's real address (--node-ip)"
    )]
    LoopbackLocal { ip: Ipv4Addr },
    #[error("no link in this network namespace holds the node IP {ip} (--node-ip)")]
    NoUplink { ip: Ipv4Addr },
    #[error("link {index}, which holds the node IP, reports no MTU")]
    NoUplinkMtu { index: u32 },
    #[error("creating {device}: another VXLAN device here already uses VNI {vni} on UDP port {port} (another lab? give this one its own --vxlan-vni): {source}")]
    VniInUse {
        device: String,
        vni: u32,
        port: u16,
        #[source]
        source: NetlinkError,
    },
    #[error("the VXLAN device {device} does not exist")]
    NoDevice { device: String },
    #[error("the VXLAN device {device} has no MAC address")]
    NoMac { device: String },
}

/// A MAC address, written `0a:1b:2c:3d:4e:5f`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MacAddr(pub [u8; 6]);

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{0:?} is not a MAC address")]
pub struct InvalidMac(String);

impl FromStr for MacAddr {
    type Err = InvalidMac;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let invalid = || InvalidMac(text.to_string());
        let mut bytes = [0u8; 6];
        let mut parts = text.split(':');
        for byte in &mut bytes {
            let part = parts.next().ok_or_else(invalid)?;
            if part.len() != 2 || !part.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(invalid());
            }
            *byte = u8::from_str_radix(part, 16).map_err(|_| invalid())?;
        }
        if parts.next().is_some() {
            return Err(invalid());
        }
        Ok(MacAddr(bytes))
    }
}

/// The VXLAN device of the node bridge `bridge`: `<bridge>-vxlan`, or for a bridge name
/// too long for that, its first 6 characters, `-vx` and 6 hex digits of a hash of it (15
/// bytes), so two labs with their own bridges never share a device.
pub fn device_name(bridge: &str) -> String {
    let plain = format!("{bridge}-vxlan");
    if plain.len() <= MAX_IFNAME_LEN {
        return plain;
    }
    let digest = Sha256::digest(bridge.as_bytes());
    let prefix: String = bridge.chars().take(6).collect();
    format!("{prefix}-vx{}", hex::encode(&digest[..3]))
}

/// The VXLAN device a node should have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VxlanSpec {
    pub device: String,
    pub vni: u32,
    pub port: u16,
    /// The node's InternalIP: the outer source address, on the uplink.
    pub local: Ipv4Addr,
}

impl VxlanSpec {
    /// Why an existing link named like the device must be made anew (wrong kind, VNI,
    /// local address, port, uplink or learning), or None when it can stay.
    pub fn mismatch(&self, existing: &LinkDetails, uplink: u32) -> Option<String> {
        if existing.kind != Some(InfoKind::Vxlan) {
            return Some(format!("it is a {:?} link, not VXLAN", existing.kind));
        }
        let mut vni = None;
        let mut local = None;
        let mut port = None;
        let mut link = None;
        let mut learning = true;
        for attribute in &existing.vxlan {
            match attribute {
                InfoVxlan::Id(v) => vni = Some(*v),
                InfoVxlan::Local(ip) => local = Some(*ip),
                InfoVxlan::Port(p) => port = Some(*p),
                InfoVxlan::Link(l) => link = Some(*l),
                InfoVxlan::Learning(l) => learning = *l,
                _ => {}
            }
        }
        let differences: Vec<String> = [
            (vni != Some(self.vni)).then(|| format!("VNI {vni:?} instead of {}", self.vni)),
            (local != Some(self.local))
                .then(|| format!("local {local:?} instead of {}", self.local)),
            (port != Some(self.port)).then(|| format!("port {port:?} instead of {}", self.port)),
            (link != Some(uplink)).then(|| format!("uplink {link:?} instead of {uplink}")),
            learning.then(|| "learning on".to_string()),
        ]
        .into_iter()
        .flatten()
        .collect();
        (!differences.is_empty()).then(|| differences.join(", "))
    }
}

/// This node's end of the overlay, once its device is up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalVtep {
    pub device: String,
    pub mac: MacAddr,
    pub vni: u32,
    pub public_ip: Ipv4Addr,
}

/// A permanent neighbour entry on the device: another node's VTEP address and MAC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Neighbour {
    pub ip: Ipv4Addr,
    pub mac: MacAddr,
}

impl fmt::Display for Neighbour {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} lladdr {}", self.ip, self.mac)
    }
}

/// An FDB entry on the device: frames to `mac` go to the node at `dst`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct FdbEntry {
    pub mac: MacAddr,
    pub dst: Ipv4Addr,
}

impl fmt::Display for FdbEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} dst {}", self.mac, self.dst)
    }
}

/// The VXLAN operations the overlay needs (the OS boundary; faked in tests).
pub trait VxlanOps: Send + Sync {
    /// Creates the device if missing (re-creates it if it differs from `spec`), sets its
    /// MTU to the uplink's minus [`OVERHEAD`] and brings it up; returns its MAC.
    fn ensure_device(&self, spec: &VxlanSpec) -> Result<MacAddr, VxlanError>;
    /// Makes `address/32` the device's only IPv4 address.
    fn ensure_address(&self, device: &str, address: Ipv4Addr) -> Result<(), VxlanError>;
    /// Deletes the device (its neighbour and FDB entries and routes go along); returns
    /// whether there was one.
    fn delete_device(&self, device: &str) -> Result<bool, VxlanError>;
    /// The permanent neighbour entries on the device.
    fn neighbours(&self, device: &str) -> Result<Vec<Neighbour>, VxlanError>;
    fn replace_neighbour(&self, device: &str, entry: &Neighbour) -> Result<(), VxlanError>;
    /// Fine if the entry is already gone.
    fn delete_neighbour(&self, device: &str, entry: &Neighbour) -> Result<(), VxlanError>;
    /// The FDB entries on the device (one per MAC and destination).
    fn fdb(&self, device: &str) -> Result<Vec<FdbEntry>, VxlanError>;
    fn replace_fdb(&self, device: &str, entry: &FdbEntry) -> Result<(), VxlanError>;
    /// Fine if the entry is already gone.
    fn delete_fdb(&self, device: &str, entry: &FdbEntry) -> Result<(), VxlanError>;
}

/// What a Node says of its VTEP, as written (parsed where it is used, so that a bad
/// value is reported with the node's name).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VtepAnnotations {
    pub mac: Option<String>,
    pub public_ip: Option<String>,
    pub vni: Option<String>,
}

impl VtepAnnotations {
    pub fn from_annotations(annotations: Option<&BTreeMap<String, String>>) -> Self {
        let get = |key: &str| annotations.and_then(|a| a.get(key)).cloned();
        VtepAnnotations {
            mac: get(VTEP_MAC_ANNOTATION),
            public_ip: get(PUBLIC_IP_ANNOTATION),
            vni: get(VNI_ANNOTATION),
        }
    }

    /// What a node with `vtep` publishes.
    pub fn of(vtep: &LocalVtep) -> Self {
        VtepAnnotations {
            mac: Some(vtep.mac.to_string()),
            public_ip: Some(vtep.public_ip.to_string()),
            vni: Some(vtep.vni.to_string()),
        }
    }
}

/// What this node should say of its VTEP on its Node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Announcement {
    /// The device is up: publish it.
    Publish(LocalVtep),
    /// No VXLAN here (host-gw): remove the annotations, so that others do not send to it.
    Withdraw,
    /// Not known yet (the device failed): leave the annotations as they are.
    Keep,
}

/// The JSON merge patch of the Node's metadata that turns `current` into what
/// `announcement` asks for; None when nothing needs to change.
pub fn annotation_patch(
    current: &VtepAnnotations,
    announcement: &Announcement,
) -> Option<serde_json::Value> {
    let wanted = match announcement {
        Announcement::Keep => return None,
        Announcement::Withdraw => VtepAnnotations::default(),
        Announcement::Publish(vtep) => VtepAnnotations::of(vtep),
    };
    if &wanted == current {
        return None;
    }
    let value = |v: Option<String>| v.map_or(serde_json::Value::Null, serde_json::Value::String);
    Some(serde_json::json!({"metadata": {"annotations": {
        VTEP_MAC_ANNOTATION: value(wanted.mac),
        PUBLIC_IP_ANNOTATION: value(wanted.public_ip),
        VNI_ANNOTATION: value(wanted.vni),
    }}}))
}

/// The entries of `current` that are not wanted, and those of `desired` that are missing.
pub fn diff<T: Ord + Copy>(desired: &[T], current: &[T]) -> (Vec<T>, Vec<T>) {
    let mut stale: Vec<T> = current
        .iter()
        .filter(|e| !desired.contains(e))
        .copied()
        .collect();
    let mut missing: Vec<T> = desired
        .iter()
        .filter(|e| !current.contains(e))
        .copied()
        .collect();
    stale.sort();
    stale.dedup();
    missing.sort();
    missing.dedup();
    (stale, missing)
}

/// [`VxlanOps`] by rtnetlink, in the calling thread's network namespace.
impl VxlanOps for Rtnetlink {
    fn ensure_device(&self, spec: &VxlanSpec) -> Result<MacAddr, VxlanError> {
        if spec.local.is_loopback() {
            return Err(VxlanError::LoopbackLocal { ip: spec.local });
        }
        let mut netlink = Netlink::open()?;
        let uplink = netlink
            .ipv4_address_owner(spec.local)?
            .ok_or(VxlanError::NoUplink { ip: spec.local })?;
        let uplink_mtu = netlink
            .link_details_by_index(uplink)?
            .and_then(|l| l.mtu)
            .ok_or(VxlanError::NoUplinkMtu { index: uplink })?;
        let mtu = uplink_mtu.saturating_sub(OVERHEAD);
        let mut existing = netlink.link_details(&spec.device)?;
        if let Some(link) = &existing {
            if let Some(reason) = spec.mismatch(link, uplink) {
                tracing::warn!(device = %spec.device, reason = %reason, "re-creating the VXLAN device");
                netlink.delete_link(link.index, &spec.device)?;
                existing = None;
            }
        }
        match &existing {
            None => {
                let link = VxlanLink {
                    name: &spec.device,
                    vni: spec.vni,
                    local: spec.local,
                    uplink,
                    port: spec.port,
                    mtu,
                };
                match netlink.add_vxlan(&link) {
                    Ok(()) => {}
                    Err(source) if source.errno() == Some(libc::EEXIST) => {
                        return Err(VxlanError::VniInUse {
                            device: spec.device.clone(),
                            vni: spec.vni,
                            port: spec.port,
                            source,
                        })
                    }
                    Err(e) => return Err(e.into()),
                }
                tracing::info!(device = %spec.device, vni = spec.vni, local = %spec.local, port = spec.port, mtu, "VXLAN device created");
            }
            Some(link) if link.mtu != Some(mtu) => {
                netlink.set_mtu(link.index, &spec.device, mtu)?;
            }
            Some(_) => {}
        }
        let link = netlink
            .link_details(&spec.device)?
            .ok_or_else(|| VxlanError::NoDevice {
                device: spec.device.clone(),
            })?;
        if !link.up {
            netlink.set_up(link.index, &spec.device)?;
        }
        link.mac.map(MacAddr).ok_or_else(|| VxlanError::NoMac {
            device: spec.device.clone(),
        })
    }

    fn ensure_address(&self, device: &str, address: Ipv4Addr) -> Result<(), VxlanError> {
        let mut netlink = Netlink::open()?;
        let index = device_index(&mut netlink, device)?;
        let mut present = false;
        for (ip, prefix) in netlink.ipv4_addresses(index)? {
            if (ip, prefix) == (address, 32) {
                present = true;
            } else {
                netlink.delete_address(index, device, ip, prefix)?;
            }
        }
        if !present {
            netlink.add_address(index, device, address, 32)?;
        }
        Ok(())
    }

    fn delete_device(&self, device: &str) -> Result<bool, VxlanError> {
        let mut netlink = Netlink::open()?;
        let Some(index) = netlink.link_index(device)? else {
            return Ok(false);
        };
        match netlink.delete_link(index, device) {
            Ok(()) => Ok(true),
            Err(e) if e.errno() == Some(libc::ENODEV) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    fn neighbours(&self, device: &str) -> Result<Vec<Neighbour>, VxlanError> {
        let mut netlink = Netlink::open()?;
        let index = device_index(&mut netlink, device)?;
        Ok(netlink
            .neighbours(NeighbourTable::Arp)?
            .into_iter()
            .filter(|n| n.index == index && n.state == NeighbourState::Permanent)
            .filter_map(|n| {
                Some(Neighbour {
                    ip: n.destination?,
                    mac: MacAddr(n.lladdr?),
                })
            })
            .collect())
    }

    fn replace_neighbour(&self, device: &str, entry: &Neighbour) -> Result<(), VxlanError> {
        let mut netlink = Netlink::open()?;
        let index = device_index(&mut netlink, device)?;
        netlink.replace_neighbour(NeighbourTable::Arp, index, entry.ip, entry.mac.0)?;
        Ok(())
    }

    fn delete_neighbour(&self, device: &str, entry: &Neighbour) -> Result<(), VxlanError> {
        let mut netlink = Netlink::open()?;
        let Some(index) = netlink.link_index(device)? else {
            return Ok(()); // the device took it along
        };
        ignore_missing(netlink.delete_neighbour(NeighbourTable::Arp, index, entry.ip, entry.mac.0))
    }

    fn fdb(&self, device: &str) -> Result<Vec<FdbEntry>, VxlanError> {
        let mut netlink = Netlink::open()?;
        let index = device_index(&mut netlink, device)?;
        Ok(netlink
            .neighbours(NeighbourTable::Fdb)?
            .into_iter()
            .filter(|n| n.index == index)
            .filter_map(|n| {
                Some(FdbEntry {
                    mac: MacAddr(n.lladdr?),
                    dst: n.destination?,
                })
            })
            .collect())
    }

    fn replace_fdb(&self, device: &str, entry: &FdbEntry) -> Result<(), VxlanError> {
        let mut netlink = Netlink::open()?;
        let index = device_index(&mut netlink, device)?;
        netlink.replace_neighbour(NeighbourTable::Fdb, index, entry.dst, entry.mac.0)?;
        Ok(())
    }

    fn delete_fdb(&self, device: &str, entry: &FdbEntry) -> Result<(), VxlanError> {
        let mut netlink = Netlink::open()?;
        let Some(index) = netlink.link_index(device)? else {
            return Ok(());
        };
        ignore_missing(netlink.delete_neighbour(NeighbourTable::Fdb, index, entry.dst, entry.mac.0))
    }
}

fn device_index(netlink: &mut Netlink, device: &str) -> Result<u32, VxlanError> {
    netlink
        .link_index(device)?
        .ok_or_else(|| VxlanError::NoDevice {
            device: device.to_string(),
        })
}

/// ENOENT: no such entry, which is what a delete wanted.
fn ignore_missing(result: Result<(), NetlinkError>) -> Result<(), VxlanError> {
    match result {
        Err(e) if e.errno() == Some(libc::ENOENT) => Ok(()),
        other => Ok(other?),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mac(text: &str) -> MacAddr {
        text.parse().unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn macs_parse_and_print() {
        let m = mac("0A:1b:2c:3d:4e:5f");
        assert_eq!(m.0, [0x0a, 0x1b, 0x2c, 0x3d, 0x4e, 0x5f]);
        assert_eq!(m.to_string(), "0a:1b:2c:3d:4e:5f");
        for bad in [
            "",
            "0a:1b:2c:3d:4e",
            "0a:1b:2c:3d:4e:5f:00",
            "0a:1b:2c:3d:4e:5",
            "zz:1b:2c:3d:4e:5f",
            "0a-1b-2c-3d-4e-5f",
            "+a:1b:2c:3d:4e:5f",
        ] {
            assert!(bad.parse::<MacAddr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn device_names_follow_the_bridge_and_fit() {
        assert_eq!(device_name("rkube0"), "rkube0-vxlan");
        assert_eq!(device_name("lab-one"), "lab-one-vxlan");
        let long = device_name("rkube-lab-12345");
        assert_eq!(long.len(), MAX_IFNAME_LEN);
        assert!(long.starts_with("rkube--vx"), "{long}");
        assert_ne!(long, device_name("rkube-lab-12346"));
        assert_eq!(long, device_name("rkube-lab-12345"));
    }

    fn spec() -> VxlanSpec {
        VxlanSpec {
            device: "rkube0-vxlan".into(),
            vni: 1,
            port: 8472,
            local: Ipv4Addr::new(172, 30, 0, 10),
        }
    }

    fn link(kind: Option<InfoKind>, vxlan: Vec<InfoVxlan>) -> LinkDetails {
        LinkDetails {
            index: 9,
            name: "rkube0-vxlan".into(),
            kind,
            mac: None,
            mtu: Some(1450),
            up: true,
            vxlan,
        }
    }

    #[test]
    fn existing_devices_are_kept_only_when_they_match() {
        let good = vec![
            InfoVxlan::Id(1),
            InfoVxlan::Local(Ipv4Addr::new(172, 30, 0, 10)),
            InfoVxlan::Port(8472),
            InfoVxlan::Link(2),
            InfoVxlan::Learning(false),
            InfoVxlan::Ttl(0),
        ];
        assert_eq!(
            spec().mismatch(&link(Some(InfoKind::Vxlan), good.clone()), 2),
            None
        );
        assert_eq!(
            spec()
                .mismatch(&link(Some(InfoKind::Vxlan), good.clone()), 3)
                .as_deref(),
            Some("uplink Some(2) instead of 3")
        );
        let mut other = good.clone();
        other[0] = InfoVxlan::Id(7);
        other[4] = InfoVxlan::Learning(true);
        assert_eq!(
            spec()
                .mismatch(&link(Some(InfoKind::Vxlan), other), 2)
                .as_deref(),
            Some("VNI Some(7) instead of 1, learning on")
        );
        assert!(spec()
            .mismatch(&link(Some(InfoKind::Bridge), Vec::new()), 2)
            .is_some_and(|r| r.contains("not VXLAN")));
    }

    fn vtep() -> LocalVtep {
        LocalVtep {
            device: "rkube0-vxlan".into(),
            mac: mac("0a:00:00:00:00:01"),
            vni: 1,
            public_ip: Ipv4Addr::new(172, 30, 0, 10),
        }
    }

    #[test]
    fn annotations_are_patched_only_when_they_differ() {
        let none = VtepAnnotations::default();
        let published = VtepAnnotations::of(&vtep());
        assert_eq!(
            annotation_patch(&none, &Announcement::Publish(vtep())),
            Some(serde_json::json!({"metadata": {"annotations": {
                "rkube.io/vtep-mac": "0a:00:00:00:00:01",
                "rkube.io/public-ip": "172.30.0.10",
                "rkube.io/vxlan-vni": "1",
            }}}))
        );
        assert_eq!(
            annotation_patch(&published, &Announcement::Publish(vtep())),
            None
        );
        assert_eq!(
            annotation_patch(&published, &Announcement::Withdraw),
            Some(serde_json::json!({"metadata": {"annotations": {
                "rkube.io/vtep-mac": null,
                "rkube.io/public-ip": null,
                "rkube.io/vxlan-vni": null,
            }}}))
        );
        assert_eq!(annotation_patch(&none, &Announcement::Withdraw), None);
        assert_eq!(annotation_patch(&published, &Announcement::Keep), None);
        // A re-created device has a new MAC: published again.
        let mut moved = vtep();
        moved.mac = mac("0a:00:00:00:00:02");
        assert!(annotation_patch(&published, &Announcement::Publish(moved)).is_some());
        let read = VtepAnnotations::from_annotations(Some(
            &[
                (
                    VTEP_MAC_ANNOTATION.to_string(),
                    "0a:00:00:00:00:01".to_string(),
                ),
                ("other".to_string(), "x".to_string()),
            ]
            .into_iter()
            .collect(),
        ));
        assert_eq!(read.mac.as_deref(), Some("0a:00:00:00:00:01"));
        assert_eq!(read.public_ip, None);
    }

    #[test]
    fn diff_finds_stale_and_missing_entries() {
        let a = FdbEntry {
            mac: mac("0a:00:00:00:00:0a"),
            dst: Ipv4Addr::new(172, 29, 0, 10),
        };
        let b = FdbEntry {
            mac: mac("0a:00:00:00:00:0b"),
            dst: Ipv4Addr::new(172, 29, 0, 11),
        };
        let b_moved = FdbEntry {
            dst: Ipv4Addr::new(172, 29, 0, 12),
            ..b
        };
        assert_eq!(diff(&[a, b_moved], &[b, a]), (vec![b], vec![b_moved]));
        assert_eq!(diff(&[a], &[a]), (vec![], vec![]));
    }
}
