//! A small synchronous rtnetlink client: the link, address, route and neighbour requests
//! the pod network makes (what `ip link/addr/route/neigh` and `bridge fdb` would send), on
//! a `NETLINK_ROUTE` socket of the calling thread's network namespace. Saves a process per operation: a pod's
//! network setup was nine `ip` runs.
//!
//! Each request asks for an acknowledgement and reads the kernel's answer before the
//! next, so one [`Netlink`] is used by one thread at a time (open one per operation, or
//! per thread: opening costs a socket and a bind).

use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsRawFd;
use std::path::Path;

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL,
    NLM_F_REPLACE, NLM_F_REQUEST,
};
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{
    InfoBridgePort, InfoData, InfoKind, InfoPortData, InfoPortKind, InfoVeth, InfoVxlan,
    LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteHeader, RouteMessage, RouteProtocol, RouteScope,
    RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

/// The largest datagram read at once (the kernel splits dumps into smaller ones).
const RECV_BUFFER: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    #[error("opening a netlink socket: {0}")]
    Open(#[source] io::Error),
    #[error("{op}: {source}")]
    Request {
        op: String,
        #[source]
        source: io::Error,
    },
    #[error("{op}: the kernel's answer: {message}")]
    Answer { op: String, message: String },
}

impl NetlinkError {
    /// The errno the kernel answered with, if that is what failed.
    pub fn errno(&self) -> Option<i32> {
        match self {
            NetlinkError::Request { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }
}

/// One IPv4 route of the main table, as far as the pod network cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Route {
    pub destination: Ipv4Addr,
    pub prefix: u8,
    pub gateway: Option<Ipv4Addr>,
    pub output_interface: Option<u32>,
    pub protocol: u8,
    pub scope: RouteScope,
    pub kind: RouteType,
    /// `onlink`: the gateway is taken as reachable on the output interface.
    pub onlink: bool,
}

/// What the pod network reads of a link (`ip -d link show`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkDetails {
    pub index: u32,
    pub name: String,
    /// `IFLA_INFO_KIND` (`vxlan`, `bridge`, `veth`…), None for a plain device.
    pub kind: Option<InfoKind>,
    pub mac: Option<[u8; 6]>,
    pub mtu: Option<u32>,
    pub up: bool,
    /// The `IFLA_VXLAN_*` attributes of a VXLAN device (empty otherwise).
    pub vxlan: Vec<InfoVxlan>,
}

impl LinkDetails {
    fn from_message(link: LinkMessage) -> LinkDetails {
        let mut details = LinkDetails {
            index: link.header.index,
            name: String::new(),
            kind: None,
            mac: None,
            mtu: None,
            up: link.header.flags.contains(LinkFlags::Up),
            vxlan: Vec::new(),
        };
        for attribute in link.attributes {
            match attribute {
                LinkAttribute::IfName(name) => details.name = name,
                LinkAttribute::Mtu(mtu) => details.mtu = Some(mtu),
                LinkAttribute::Address(bytes) => details.mac = <[u8; 6]>::try_from(bytes).ok(),
                LinkAttribute::LinkInfo(infos) => {
                    for info in infos {
                        match info {
                            LinkInfo::Kind(kind) => details.kind = Some(kind),
                            LinkInfo::Data(InfoData::Vxlan(vxlan)) => details.vxlan = vxlan,
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        }
        details
    }
}

/// The VXLAN device [`Netlink::add_vxlan`] creates (`ip link add NAME type vxlan id VNI
/// local LOCAL dev UPLINK dstport PORT nolearning mtu MTU`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VxlanLink<'a> {
    pub name: &'a str,
    pub vni: u32,
    pub local: Ipv4Addr,
    pub uplink: u32,
    pub port: u16,
    pub mtu: u32,
}

/// One entry of a neighbour table: an IPv4 neighbour (`ip neigh`), or a forwarding
/// database entry (`bridge fdb`; `destination` is then the remote VTEP's address).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NeighbourEntry {
    pub index: u32,
    pub destination: Option<Ipv4Addr>,
    pub lladdr: Option<[u8; 6]>,
    pub state: NeighbourState,
}

/// Which neighbour table a request is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NeighbourTable {
    /// IPv4 address to MAC (ARP): `ip neigh`.
    Arp,
    /// MAC to remote VTEP, on the device itself (`NTF_SELF`): `bridge fdb … self`.
    Fdb,
}

impl NeighbourTable {
    fn family(self) -> AddressFamily {
        match self {
            NeighbourTable::Arp => AddressFamily::Inet,
            NeighbourTable::Fdb => AddressFamily::Bridge,
        }
    }
}

/// A `NETLINK_ROUTE` socket in the network namespace of the thread that opened it.
pub struct Netlink {
    socket: Socket,
    sequence: u32,
    buffer: Vec<u8>,
}

impl Netlink {
    pub fn open() -> Result<Netlink, NetlinkError> {
        let mut socket = Socket::new(NETLINK_ROUTE).map_err(NetlinkError::Open)?;
        socket.bind_auto().map_err(NetlinkError::Open)?;
        socket
            .connect(&SocketAddr::new(0, 0))
            .map_err(NetlinkError::Open)?;
        Ok(Netlink {
            socket,
            sequence: 0,
            buffer: Vec::with_capacity(RECV_BUFFER),
        })
    }

    /// Sends one request and collects the messages of its answer: for a dump, every
    /// message up to `NLMSG_DONE`; otherwise none, once the acknowledgement arrives.
    fn request(
        &mut self,
        op: impl Fn() -> String,
        message: RouteNetlinkMessage,
        flags: u16,
    ) -> Result<Vec<RouteNetlinkMessage>, NetlinkError> {
        self.sequence = self.sequence.wrapping_add(1);
        let sequence = self.sequence;
        let dump = flags & NLM_F_DUMP == NLM_F_DUMP;
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | flags | if dump { 0 } else { NLM_F_ACK };
        header.sequence_number = sequence;
        let mut packet = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(message));
        packet.finalize();
        let mut bytes = vec![0u8; packet.buffer_len()];
        packet.serialize(&mut bytes);
        self.socket
            .send(&bytes, 0)
            .map_err(|source| NetlinkError::Request { op: op(), source })?;
        let answer_error = |message: String| NetlinkError::Answer { op: op(), message };
        let mut answers = Vec::new();
        loop {
            self.buffer.clear();
            self.socket
                .recv(&mut self.buffer, 0)
                .map_err(|source| NetlinkError::Request { op: op(), source })?;
            let mut offset = 0;
            while offset + 16 <= self.buffer.len() {
                let chunk = &self.buffer[offset..];
                let length = u32::from_ne_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]) as usize;
                if length < 16 || length > chunk.len() {
                    return Err(answer_error(format!("a message of bad length {length}")));
                }
                let parsed = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&chunk[..length])
                    .map_err(|e| answer_error(e.to_string()))?;
                offset += (length + 3) & !3;
                if parsed.header.sequence_number != sequence {
                    continue; // an answer to an earlier request that gave up
                }
                match parsed.payload {
                    NetlinkPayload::Done(_) => return Ok(answers),
                    NetlinkPayload::Error(error) => match error.code {
                        None => return Ok(answers),
                        Some(_) => {
                            return Err(NetlinkError::Request {
                                op: op(),
                                source: error.to_io(),
                            })
                        }
                    },
                    NetlinkPayload::InnerMessage(inner) => answers.push(inner),
                    NetlinkPayload::Noop | NetlinkPayload::Overrun(_) => {}
                    _ => {}
                }
            }
        }
    }

    /// The index of the link named `name` here, or None.
    pub fn link_index(&mut self, name: &str) -> Result<Option<u32>, NetlinkError> {
        let mut message = LinkMessage::default();
        message
            .attributes
            .push(LinkAttribute::IfName(name.to_string()));
        match self.request(
            || format!("looking up link {name}"),
            RouteNetlinkMessage::GetLink(message),
            0,
        ) {
            Ok(answers) => Ok(answers.into_iter().find_map(|a| match a {
                RouteNetlinkMessage::NewLink(link) => Some(link.header.index),
                _ => None,
            })),
            Err(e) if e.errno() == Some(libc::ENODEV) => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn new_link(
        &mut self,
        op: impl Fn() -> String,
        message: LinkMessage,
        flags: u16,
    ) -> Result<(), NetlinkError> {
        self.request(op, RouteNetlinkMessage::NewLink(message), flags)
            .map(drop)
    }

    /// `ip link add name NAME type bridge`.
    pub fn add_bridge(&mut self, name: &str) -> Result<(), NetlinkError> {
        let mut message = LinkMessage::default();
        message.attributes = vec![
            LinkAttribute::IfName(name.to_string()),
            LinkAttribute::LinkInfo(vec![LinkInfo::Kind(InfoKind::Bridge)]),
        ];
        self.new_link(
            || format!("creating bridge {name}"),
            message,
            NLM_F_CREATE | NLM_F_EXCL,
        )
    }

    /// `ip link add name NAME type veth peer name PEER netns NETNS`.
    pub fn add_veth(
        &mut self,
        name: &str,
        peer: &str,
        peer_netns: &Path,
    ) -> Result<(), NetlinkError> {
        let op = || {
            format!(
                "creating veth {name} with peer {peer} in {}",
                peer_netns.display()
            )
        };
        let netns = std::fs::File::open(peer_netns)
            .map_err(|source| NetlinkError::Request { op: op(), source })?;
        let mut peer_message = LinkMessage::default();
        peer_message.attributes = vec![
            LinkAttribute::IfName(peer.to_string()),
            LinkAttribute::NetNsFd(netns.as_raw_fd()),
        ];
        let mut message = LinkMessage::default();
        message.attributes = vec![
            LinkAttribute::IfName(name.to_string()),
            LinkAttribute::LinkInfo(vec![
                LinkInfo::Kind(InfoKind::Veth),
                LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer_message))),
            ]),
        ];
        let result = self.new_link(op, message, NLM_F_CREATE | NLM_F_EXCL);
        drop(netns); // kept open until the kernel has moved the peer
        result
    }

    /// `ip link set dev INDEX up`.
    pub fn set_up(&mut self, index: u32, name: &str) -> Result<(), NetlinkError> {
        let mut message = LinkMessage::default();
        message.header.index = index;
        message.header.flags = LinkFlags::Up;
        message.header.change_mask = LinkFlags::Up;
        self.new_link(|| format!("setting {name} up"), message, 0)
    }

    /// `ip link set dev INDEX master MASTER`.
    pub fn set_master(&mut self, index: u32, name: &str, master: u32) -> Result<(), NetlinkError> {
        let mut message = LinkMessage::default();
        message.header.index = index;
        message.attributes.push(LinkAttribute::Controller(master));
        self.new_link(|| format!("attaching {name} to its bridge"), message, 0)
    }

    /// `ip link set dev INDEX type bridge_slave hairpin on`.
    pub fn set_hairpin(&mut self, index: u32, name: &str) -> Result<(), NetlinkError> {
        let mut message = LinkMessage::default();
        message.header.index = index;
        message.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::PortKind(InfoPortKind::Bridge),
            LinkInfo::PortData(InfoPortData::BridgePort(vec![InfoBridgePort::HairpinMode(
                true,
            )])),
        ]));
        self.new_link(|| format!("turning hairpin on for {name}"), message, 0)
    }

    /// `ip link del dev INDEX`.
    pub fn delete_link(&mut self, index: u32, name: &str) -> Result<(), NetlinkError> {
        let mut message = LinkMessage::default();
        message.header.index = index;
        self.request(
            || format!("deleting link {name}"),
            RouteNetlinkMessage::DelLink(message),
            0,
        )
        .map(drop)
    }

    /// The link named `name` here with what [`LinkDetails`] holds, or None.
    pub fn link_details(&mut self, name: &str) -> Result<Option<LinkDetails>, NetlinkError> {
        let mut message = LinkMessage::default();
        message
            .attributes
            .push(LinkAttribute::IfName(name.to_string()));
        self.get_link(|| format!("looking up link {name}"), message)
    }

    /// The link with index `index`, or None.
    pub fn link_details_by_index(
        &mut self,
        index: u32,
    ) -> Result<Option<LinkDetails>, NetlinkError> {
        let mut message = LinkMessage::default();
        message.header.index = index;
        self.get_link(|| format!("looking up link {index}"), message)
    }

    fn get_link(
        &mut self,
        op: impl Fn() -> String,
        message: LinkMessage,
    ) -> Result<Option<LinkDetails>, NetlinkError> {
        match self.request(op, RouteNetlinkMessage::GetLink(message), 0) {
            Ok(answers) => Ok(answers.into_iter().find_map(|a| match a {
                RouteNetlinkMessage::NewLink(link) => Some(LinkDetails::from_message(link)),
                _ => None,
            })),
            Err(e) if e.errno() == Some(libc::ENODEV) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Creates a VXLAN device without learning (every FDB entry is written by us).
    pub fn add_vxlan(&mut self, link: &VxlanLink<'_>) -> Result<(), NetlinkError> {
        let mut message = LinkMessage::default();
        message.attributes = vec![
            LinkAttribute::IfName(link.name.to_string()),
            LinkAttribute::Mtu(link.mtu),
            LinkAttribute::LinkInfo(vec![
                LinkInfo::Kind(InfoKind::Vxlan),
                LinkInfo::Data(InfoData::Vxlan(vec![
                    InfoVxlan::Id(link.vni),
                    InfoVxlan::Local(link.local),
                    InfoVxlan::Link(link.uplink),
                    InfoVxlan::Port(link.port),
                    InfoVxlan::Learning(false),
                ])),
            ]),
        ];
        self.new_link(
            || {
                format!(
                    "creating VXLAN device {} (VNI {}, local {}, port {})",
                    link.name, link.vni, link.local, link.port
                )
            },
            message,
            NLM_F_CREATE | NLM_F_EXCL,
        )
    }

    /// `ip link set dev INDEX mtu MTU`.
    pub fn set_mtu(&mut self, index: u32, name: &str, mtu: u32) -> Result<(), NetlinkError> {
        let mut message = LinkMessage::default();
        message.header.index = index;
        message.attributes.push(LinkAttribute::Mtu(mtu));
        self.new_link(|| format!("setting the MTU of {name} to {mtu}"), message, 0)
    }

    /// The index of the link holding the IPv4 address `address`, or None.
    pub fn ipv4_address_owner(&mut self, address: Ipv4Addr) -> Result<Option<u32>, NetlinkError> {
        Ok(self
            .all_ipv4_addresses()?
            .into_iter()
            .find(|(_, ip, _)| *ip == address)
            .map(|(index, _, _)| index))
    }

    /// Every IPv4 address here: (link index, address, prefix).
    fn all_ipv4_addresses(&mut self) -> Result<Vec<(u32, Ipv4Addr, u8)>, NetlinkError> {
        let mut message = AddressMessage::default();
        message.header.family = AddressFamily::Inet;
        let answers = self.request(
            || "listing the IPv4 addresses".to_string(),
            RouteNetlinkMessage::GetAddress(message),
            NLM_F_DUMP,
        )?;
        Ok(answers
            .into_iter()
            .filter_map(|answer| match answer {
                RouteNetlinkMessage::NewAddress(a) if a.header.family == AddressFamily::Inet => {
                    let local = a.attributes.iter().find_map(|attr| match attr {
                        AddressAttribute::Local(IpAddr::V4(ip)) => Some(*ip),
                        _ => None,
                    });
                    let address = a.attributes.iter().find_map(|attr| match attr {
                        AddressAttribute::Address(IpAddr::V4(ip)) => Some(*ip),
                        _ => None,
                    });
                    local
                        .or(address)
                        .map(|ip| (a.header.index, ip, a.header.prefix_len))
                }
                _ => None,
            })
            .collect())
    }

    /// The IPv4 addresses (address, prefix) on link `index`.
    pub fn ipv4_addresses(&mut self, index: u32) -> Result<Vec<(Ipv4Addr, u8)>, NetlinkError> {
        let mut message = AddressMessage::default();
        message.header.family = AddressFamily::Inet;
        message.header.index = index;
        let answers = self.request(
            || format!("listing the addresses of link {index}"),
            RouteNetlinkMessage::GetAddress(message),
            NLM_F_DUMP,
        )?;
        Ok(answers
            .into_iter()
            .filter_map(|answer| match answer {
                RouteNetlinkMessage::NewAddress(a)
                    if a.header.index == index && a.header.family == AddressFamily::Inet =>
                {
                    let prefix = a.header.prefix_len;
                    let local = a.attributes.iter().find_map(|attr| match attr {
                        AddressAttribute::Local(IpAddr::V4(ip)) => Some(*ip),
                        _ => None,
                    });
                    let address = a.attributes.iter().find_map(|attr| match attr {
                        AddressAttribute::Address(IpAddr::V4(ip)) => Some(*ip),
                        _ => None,
                    });
                    local.or(address).map(|ip| (ip, prefix))
                }
                _ => None,
            })
            .collect())
    }

    fn address_message(index: u32, address: Ipv4Addr, prefix: u8) -> AddressMessage {
        let mut message = AddressMessage::default();
        message.header.family = AddressFamily::Inet;
        message.header.prefix_len = prefix;
        message.header.index = index;
        message.attributes = vec![
            AddressAttribute::Local(IpAddr::V4(address)),
            AddressAttribute::Address(IpAddr::V4(address)),
        ];
        message
    }

    /// `ip addr add ADDRESS/PREFIX dev INDEX`.
    pub fn add_address(
        &mut self,
        index: u32,
        name: &str,
        address: Ipv4Addr,
        prefix: u8,
    ) -> Result<(), NetlinkError> {
        self.request(
            || format!("adding {address}/{prefix} to {name}"),
            RouteNetlinkMessage::NewAddress(Self::address_message(index, address, prefix)),
            NLM_F_CREATE | NLM_F_EXCL,
        )
        .map(drop)
    }

    /// `ip addr del ADDRESS/PREFIX dev INDEX`.
    pub fn delete_address(
        &mut self,
        index: u32,
        name: &str,
        address: Ipv4Addr,
        prefix: u8,
    ) -> Result<(), NetlinkError> {
        self.request(
            || format!("removing {address}/{prefix} from {name}"),
            RouteNetlinkMessage::DelAddress(Self::address_message(index, address, prefix)),
            0,
        )
        .map(drop)
    }

    fn route_message(
        destination: Ipv4Addr,
        prefix: u8,
        gateway: Ipv4Addr,
        protocol: RouteProtocol,
    ) -> RouteMessage {
        let mut message = RouteMessage::default();
        message.header.address_family = AddressFamily::Inet;
        message.header.destination_prefix_length = prefix;
        message.header.table = RouteHeader::RT_TABLE_MAIN;
        message.header.protocol = protocol;
        message.header.scope = RouteScope::Universe;
        message.header.kind = RouteType::Unicast;
        if prefix > 0 {
            message
                .attributes
                .push(RouteAttribute::Destination(RouteAddress::Inet(destination)));
        }
        message
            .attributes
            .push(RouteAttribute::Gateway(RouteAddress::Inet(gateway)));
        message
    }

    /// `dev INDEX onlink`: the gateway needs no route of its own on that link.
    fn set_onlink(message: &mut RouteMessage, onlink: Option<u32>) {
        if let Some(index) = onlink {
            message.header.flags |= RouteFlags::Onlink;
            message.attributes.push(RouteAttribute::Oif(index));
        }
    }

    /// `ip route add default via GATEWAY dev INDEX` (protocol `boot`, as `ip` sets).
    pub fn add_default_route(
        &mut self,
        gateway: Ipv4Addr,
        index: u32,
        name: &str,
    ) -> Result<(), NetlinkError> {
        let mut message =
            Self::route_message(Ipv4Addr::UNSPECIFIED, 0, gateway, RouteProtocol::Boot);
        message.attributes.push(RouteAttribute::Oif(index));
        self.request(
            || format!("adding the default route via {gateway} on {name}"),
            RouteNetlinkMessage::NewRoute(message),
            NLM_F_CREATE | NLM_F_EXCL,
        )
        .map(drop)
    }

    /// `ip route replace DESTINATION/PREFIX via GATEWAY [dev ONLINK onlink] proto PROTOCOL`.
    pub fn replace_route(
        &mut self,
        destination: Ipv4Addr,
        prefix: u8,
        gateway: Ipv4Addr,
        onlink: Option<u32>,
        protocol: u8,
    ) -> Result<(), NetlinkError> {
        let mut message =
            Self::route_message(destination, prefix, gateway, RouteProtocol::from(protocol));
        Self::set_onlink(&mut message, onlink);
        self.request(
            || format!("setting route {destination}/{prefix} via {gateway}"),
            RouteNetlinkMessage::NewRoute(message),
            NLM_F_CREATE | NLM_F_REPLACE,
        )
        .map(drop)
    }

    /// `ip route del DESTINATION/PREFIX via GATEWAY [dev ONLINK onlink] proto PROTOCOL`.
    pub fn delete_route(
        &mut self,
        destination: Ipv4Addr,
        prefix: u8,
        gateway: Ipv4Addr,
        onlink: Option<u32>,
        protocol: u8,
    ) -> Result<(), NetlinkError> {
        let mut message =
            Self::route_message(destination, prefix, gateway, RouteProtocol::from(protocol));
        Self::set_onlink(&mut message, onlink);
        self.request(
            || format!("deleting route {destination}/{prefix} via {gateway}"),
            RouteNetlinkMessage::DelRoute(message),
            0,
        )
        .map(drop)
    }

    /// The IPv4 routes of the main table.
    pub fn main_ipv4_routes(&mut self) -> Result<Vec<Ipv4Route>, NetlinkError> {
        let mut message = RouteMessage::default();
        message.header.address_family = AddressFamily::Inet;
        let answers = self.request(
            || "listing the IPv4 routes".to_string(),
            RouteNetlinkMessage::GetRoute(message),
            NLM_F_DUMP,
        )?;
        let mut routes = Vec::new();
        for answer in answers {
            let RouteNetlinkMessage::NewRoute(route) = answer else {
                continue;
            };
            let table = route
                .attributes
                .iter()
                .find_map(|a| match a {
                    RouteAttribute::Table(t) => Some(*t),
                    _ => None,
                })
                .unwrap_or(u32::from(route.header.table));
            if route.header.address_family != AddressFamily::Inet
                || table != u32::from(RouteHeader::RT_TABLE_MAIN)
            {
                continue;
            }
            let mut entry = Ipv4Route {
                destination: Ipv4Addr::UNSPECIFIED,
                prefix: route.header.destination_prefix_length,
                gateway: None,
                output_interface: None,
                protocol: u8::from(route.header.protocol),
                scope: route.header.scope,
                kind: route.header.kind,
                onlink: route.header.flags.contains(RouteFlags::Onlink),
            };
            for attribute in &route.attributes {
                match attribute {
                    RouteAttribute::Destination(RouteAddress::Inet(ip)) => entry.destination = *ip,
                    RouteAttribute::Gateway(RouteAddress::Inet(ip)) => entry.gateway = Some(*ip),
                    RouteAttribute::Oif(index) => entry.output_interface = Some(*index),
                    _ => {}
                }
            }
            routes.push(entry);
        }
        Ok(routes)
    }

    /// The entries of a neighbour table on every link (a dump; filter by `index`).
    pub fn neighbours(
        &mut self,
        table: NeighbourTable,
    ) -> Result<Vec<NeighbourEntry>, NetlinkError> {
        let mut message = NeighbourMessage::default();
        message.header.family = table.family();
        let answers = self.request(
            || format!("listing the {table:?} neighbour entries"),
            RouteNetlinkMessage::GetNeighbour(message),
            NLM_F_DUMP,
        )?;
        Ok(answers
            .into_iter()
            .filter_map(|answer| match answer {
                RouteNetlinkMessage::NewNeighbour(n) if n.header.family == table.family() => {
                    let mut entry = NeighbourEntry {
                        index: n.header.ifindex,
                        destination: None,
                        lladdr: None,
                        state: n.header.state,
                    };
                    for attribute in n.attributes {
                        match attribute {
                            NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)) => {
                                entry.destination = Some(ip)
                            }
                            // The bridge family carries the remote's address unparsed.
                            NeighbourAttribute::Destination(NeighbourAddress::Other(bytes)) => {
                                entry.destination =
                                    <[u8; 4]>::try_from(bytes).ok().map(Ipv4Addr::from)
                            }
                            NeighbourAttribute::LinkLayerAddress(bytes) => {
                                entry.lladdr = <[u8; 6]>::try_from(bytes).ok()
                            }
                            _ => {}
                        }
                    }
                    Some(entry)
                }
                _ => None,
            })
            .collect())
    }

    fn neighbour_message(
        table: NeighbourTable,
        index: u32,
        destination: Ipv4Addr,
        lladdr: [u8; 6],
    ) -> NeighbourMessage {
        let mut message = NeighbourMessage::default();
        message.header.family = table.family();
        message.header.ifindex = index;
        message.header.state = NeighbourState::Permanent;
        if table == NeighbourTable::Fdb {
            message.header.flags = NeighbourFlags::Own;
        }
        message.attributes = vec![
            NeighbourAttribute::Destination(NeighbourAddress::Inet(destination)),
            NeighbourAttribute::LinkLayerAddress(lladdr.to_vec()),
        ];
        message
    }

    /// `ip neigh replace DESTINATION lladdr LLADDR dev INDEX nud permanent`, or for the
    /// FDB `bridge fdb replace LLADDR dev INDEX dst DESTINATION self permanent`.
    pub fn replace_neighbour(
        &mut self,
        table: NeighbourTable,
        index: u32,
        destination: Ipv4Addr,
        lladdr: [u8; 6],
    ) -> Result<(), NetlinkError> {
        self.request(
            || format!("setting {table:?} entry {destination} {lladdr:02x?} on link {index}"),
            RouteNetlinkMessage::NewNeighbour(Self::neighbour_message(
                table,
                index,
                destination,
                lladdr,
            )),
            NLM_F_CREATE | NLM_F_REPLACE,
        )
        .map(drop)
    }

    /// `ip neigh del` / `bridge fdb del` of the same entry.
    pub fn delete_neighbour(
        &mut self,
        table: NeighbourTable,
        index: u32,
        destination: Ipv4Addr,
        lladdr: [u8; 6],
    ) -> Result<(), NetlinkError> {
        self.request(
            || format!("deleting {table:?} entry {destination} {lladdr:02x?} on link {index}"),
            RouteNetlinkMessage::DelNeighbour(Self::neighbour_message(
                table,
                index,
                destination,
                lladdr,
            )),
            0,
        )
        .map(drop)
    }
}
