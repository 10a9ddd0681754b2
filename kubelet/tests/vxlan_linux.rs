//! Privileged check of the VXLAN backend with the real kernel: three network namespaces
//! stand for nodes, A and C on one LAN (172.30.0.0/24), B on another (172.29.0.0/24), and
//! a fourth for the router between the two LANs, which knows nothing of pod addresses.
//! Each node gets the pod bridge and one pod the way the runtime builds them, then the
//! kubelet's own route sync ([`RouteSync`], backend `auto`) runs inside the node's
//! namespace with a hand-made set of Node objects, whose VTEP annotations are the
//! patches the sync asks for. Pods then talk across the subnets, A↔B and C↔B through the
//! VXLAN overlay and A↔C by host-gw; B's pod must see A's pod IP as the source (no NAT).
//! A node going away, teardown, and a clash of VNIs are checked as well. Everything lives
//! in the namespaces, which a guard deletes; the test asserts nothing is left. Needs root.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use k8s_openapi::api::core::v1::{Node, NodeAddress, NodeSpec, NodeStatus};
use kubelet::config::PodNetworkBackend;
use kubelet::network::routes::{Change, NodeInfo, RouteSync};
use kubelet::network::vxlan::{
    self, annotation_patch, VtepAnnotations, VxlanError, VxlanOps, VxlanSpec,
};
use kubelet::runtime::sandbox::netns::in_netns;
use kubelet::runtime::sandbox::{NetOps, Rtnetlink};
use serde_json::Value;

const BRIDGE: &str = "rkt0";
const PORT: u16 = 8080;
/// Bytes each way over TCP: enough for full-size segments, which must shrink to the
/// VXLAN device's MTU (1450) by path MTU discovery.
const PAYLOAD: usize = 256 * 1024;

/// True when the test may run; false (after saying so) when it must be skipped.
fn have_root() -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "vxlan_linux needs root, and CI must run it"
    );
    println!("skipped: needs root");
    false
}

/// Runs a command; returns its stdout, or fails with its stderr.
fn run(program: &str, args: &[&str]) -> anyhow::Result<String> {
    let output = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("{program} {}", args.join(" ")))?;
    ensure!(
        output.status.success(),
        "`{program} {}` failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// `ip -n NETNS ARGS`.
fn ip_in(netns: &str, args: &[&str]) -> anyhow::Result<String> {
    run("ip", &[&["-n", netns][..], args].concat())
}

/// Named network namespaces, deleted when dropped (their links, routes, neighbour and
/// FDB entries go with them).
struct Namespaces {
    id: String,
    names: Vec<String>,
}

impl Namespaces {
    fn add(&mut self, role: &str) -> anyhow::Result<String> {
        let name = format!("rkube-vx{role}-{}", self.id);
        run("ip", &["netns", "add", &name])?;
        self.names.push(name.clone());
        Ok(name)
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for name in self.names.iter().rev() {
            let _ = run("ip", &["netns", "del", name]);
        }
    }
}

fn netns_path(name: &str) -> PathBuf {
    PathBuf::from("/run/netns").join(name)
}

/// One node of the lab.
struct LabNode {
    name: &'static str,
    netns: String,
    pod_netns: String,
    ip: Ipv4Addr,
    pod_cidr: &'static str,
    pod_ip: Ipv4Addr,
    object: Node,
    sync: Option<RouteSync>,
}

impl LabNode {
    fn info(&self) -> NodeInfo {
        NodeInfo::from_node(&self.object)
    }
}

fn node_object(name: &str, pod_cidr: &str, ip: Ipv4Addr) -> Node {
    Node {
        metadata: kube::api::ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        spec: Some(NodeSpec {
            pod_cidr: Some(pod_cidr.into()),
            pod_cidrs: Some(vec![pod_cidr.into()]),
            ..Default::default()
        }),
        status: Some(NodeStatus {
            addresses: Some(vec![
                NodeAddress {
                    type_: "InternalIP".into(),
                    address: ip.to_string(),
                },
                NodeAddress {
                    type_: "Hostname".into(),
                    address: name.into(),
                },
            ]),
            ..Default::default()
        }),
    }
}

/// Applies a merge patch of annotations (what the apiserver would do with it).
fn apply_patch(node: &mut Node, patch: &Value) {
    let annotations = node
        .metadata
        .annotations
        .get_or_insert_with(Default::default);
    if let Some(changes) = patch["metadata"]["annotations"].as_object() {
        for (key, value) in changes {
            match value.as_str() {
                Some(text) => annotations.insert(key.clone(), text.to_string()),
                None => annotations.remove(key),
            };
        }
    }
}

/// Runs the node's route sync inside its namespace with `nodes`.
fn sync(node: &mut LabNode, nodes: Vec<NodeInfo>) -> anyhow::Result<Vec<Change>> {
    let mut state = node.sync.take().context("the sync is gone")?;
    let (state, result) = in_netns(&netns_path(&node.netns), move || {
        let result = state.sync(&nodes);
        (state, result)
    })?;
    node.sync = Some(state);
    Ok(result?)
}

/// Syncs every node with every Node object; returns the time each took.
fn sync_all(nodes: &mut [LabNode]) -> anyhow::Result<Vec<Duration>> {
    let infos: Vec<NodeInfo> = nodes.iter().map(LabNode::info).collect();
    let mut times = Vec::new();
    for node in nodes.iter_mut() {
        let started = Instant::now();
        sync(node, infos.clone()).with_context(|| format!("syncing {}", node.name))?;
        times.push(started.elapsed());
    }
    Ok(times)
}

/// Writes each node's VTEP annotations as its kubelet would patch them.
fn publish_all(nodes: &mut [LabNode]) -> anyhow::Result<()> {
    for node in nodes.iter_mut() {
        let announcement = node.sync.as_ref().context("no sync")?.announcement();
        let current = VtepAnnotations::from_annotations(node.object.metadata.annotations.as_ref());
        if let Some(patch) = annotation_patch(&current, &announcement) {
            apply_patch(&mut node.object, &patch);
        }
    }
    Ok(())
}

/// One ping from `from`'s pod, answered within `wait` seconds.
fn ping(from: &LabNode, to: Ipv4Addr, wait: &str) -> anyhow::Result<()> {
    run(
        "ip",
        &[
            "netns",
            "exec",
            &from.pod_netns,
            "busybox",
            "ping",
            "-c",
            "1",
            "-W",
            wait,
            &to.to_string(),
        ],
    )
    .map(drop)
}

/// A TCP exchange from `client`'s pod to `server`'s: the client sends [`PAYLOAD`] bytes,
/// the server answers with the source address it saw and as many bytes back. Returns that
/// address.
fn tcp_exchange(client: &LabNode, server: &LabNode) -> anyhow::Result<Ipv4Addr> {
    let address = SocketAddr::from((server.pod_ip, PORT));
    let listener = in_netns(&netns_path(&server.pod_netns), move || {
        TcpListener::bind(address)
    })??;
    listener.set_nonblocking(true)?;
    let client_netns = netns_path(&client.pod_netns);
    let client_thread = std::thread::spawn(move || -> anyhow::Result<(String, usize)> {
        let mut stream = in_netns(&client_netns, move || {
            TcpStream::connect_timeout(&address, Duration::from_secs(5))
        })??;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        stream.set_write_timeout(Some(Duration::from_secs(10)))?;
        stream.write_all(&vec![b'a'; PAYLOAD])?;
        stream.shutdown(Shutdown::Write)?;
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer)?;
        let newline = answer
            .iter()
            .position(|b| *b == b'\n')
            .context("no first line")?;
        let first = String::from_utf8_lossy(&answer[..newline]).into_owned();
        Ok((first, answer.len() - newline - 1))
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    let (mut stream, peer) = loop {
        match listener.accept() {
            Ok(accepted) => break accepted,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10))
            }
            Err(e) => bail!("no connection from {}'s pod: {e}", client.name),
        }
    };
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.set_write_timeout(Some(Duration::from_secs(10)))?;
    let mut received = Vec::new();
    stream.read_to_end(&mut received)?;
    ensure!(
        received.len() == PAYLOAD,
        "the server got {} bytes",
        received.len()
    );
    let std::net::IpAddr::V4(source) = peer.ip() else {
        bail!("an IPv6 peer {peer}");
    };
    stream.write_all(format!("{source}\n").as_bytes())?;
    stream.write_all(&vec![b'b'; PAYLOAD])?;
    drop(stream);
    let (echoed, length) = client_thread
        .join()
        .map_err(|_| anyhow::anyhow!("the client thread panicked"))??;
    ensure!(echoed == source.to_string(), "the client read {echoed:?}");
    ensure!(length == PAYLOAD, "the client got {length} bytes back");
    Ok(source)
}

/// `ip -d -j link show DEVICE` of the node's VXLAN device.
fn vxlan_link(node: &LabNode, device: &str) -> anyhow::Result<Value> {
    let out = ip_in(
        &node.netns,
        &["-d", "-s", "-j", "link", "show", "dev", device],
    )?;
    let links: Value = serde_json::from_str(&out)?;
    Ok(links[0].clone())
}

fn pod_routes(node: &LabNode) -> anyhow::Result<Vec<String>> {
    Ok(ip_in(&node.netns, &["route", "show", "proto", "114"])?
        .lines()
        .map(|l| l.trim().to_string())
        .collect())
}

fn neighbours(node: &LabNode) -> anyhow::Result<String> {
    ip_in(&node.netns, &["neigh", "show"])
}

fn fdb(node: &LabNode) -> anyhow::Result<String> {
    run("bridge", &["-n", &node.netns, "fdb", "show"])
}

fn mac_of(node: &LabNode) -> anyhow::Result<String> {
    node.object
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(vxlan::VTEP_MAC_ANNOTATION))
        .cloned()
        .with_context(|| format!("{} has published no VTEP MAC", node.name))
}

/// The router and the two LANs: A and C on a bridge with 172.30.0.1, B on a veth with
/// 172.29.0.1; each node with its default route to the router.
fn build_underlay(router: &str, nodes: &[LabNode]) -> anyhow::Result<()> {
    ip_in(router, &["link", "set", "lo", "up"])?;
    ip_in(router, &["link", "add", "lan-a", "type", "bridge"])?;
    ip_in(router, &["addr", "add", "172.30.0.1/24", "dev", "lan-a"])?;
    ip_in(router, &["link", "set", "lan-a", "up"])?;
    run(
        "ip",
        &[
            "netns",
            "exec",
            router,
            "sysctl",
            "-qw",
            "net.ipv4.ip_forward=1",
        ],
    )?;
    for node in nodes {
        let port = format!("to-{}", node.name);
        ip_in(
            router,
            &[
                "link",
                "add",
                &port,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                &node.netns,
            ],
        )?;
        let gateway = if node.ip.octets()[1] == 30 {
            ip_in(router, &["link", "set", &port, "master", "lan-a"])?;
            "172.30.0.1"
        } else {
            ip_in(router, &["addr", "add", "172.29.0.1/24", "dev", &port])?;
            "172.29.0.1"
        };
        ip_in(router, &["link", "set", &port, "up"])?;
        ip_in(&node.netns, &["link", "set", "lo", "up"])?;
        ip_in(
            &node.netns,
            &["addr", "add", &format!("{}/24", node.ip), "dev", "eth0"],
        )?;
        ip_in(&node.netns, &["link", "set", "eth0", "up"])?;
        ip_in(&node.netns, &["route", "add", "default", "via", gateway])?;
        run(
            "ip",
            &[
                "netns",
                "exec",
                &node.netns,
                "sysctl",
                "-qw",
                "net.ipv4.ip_forward=1",
            ],
        )?;
    }
    Ok(())
}

/// The pod bridge and one pod on a node, as the runtime builds them.
fn build_pod(node: &LabNode) -> anyhow::Result<()> {
    let cidr: kubelet::runtime::sandbox::Ipv4Cidr = node.pod_cidr.parse()?;
    let pod = netns_path(&node.pod_netns);
    let pod_ip = node.pod_ip;
    in_netns(&netns_path(&node.netns), move || -> anyhow::Result<()> {
        let ops = Rtnetlink;
        ops.ensure_bridge(BRIDGE, cidr.gateway(), cidr.prefix())?;
        ops.add_veth("vethpod", BRIDGE, &pod, "eth0")?;
        ops.configure_pod_interface(&pod, "eth0", pod_ip, cidr.prefix(), cidr.gateway())?;
        Ok(())
    })?
}

#[test]
fn vxlan_carries_pod_traffic_between_subnets() -> anyhow::Result<()> {
    if !have_root() {
        return Ok(());
    }
    let started = Instant::now();
    let mut namespaces = Namespaces {
        id: (std::process::id() % 100_000).to_string(),
        names: Vec::new(),
    };
    let router = namespaces.add("r")?;
    let device = vxlan::device_name(BRIDGE);
    let mut nodes = Vec::new();
    for (name, ip, pod_cidr, pod_ip) in [
        (
            "a",
            Ipv4Addr::new(172, 30, 0, 10),
            "10.42.1.0/24",
            Ipv4Addr::new(10, 42, 1, 2),
        ),
        (
            "b",
            Ipv4Addr::new(172, 29, 0, 10),
            "10.42.2.0/24",
            Ipv4Addr::new(10, 42, 2, 2),
        ),
        (
            "c",
            Ipv4Addr::new(172, 30, 0, 11),
            "10.42.3.0/24",
            Ipv4Addr::new(10, 42, 3, 2),
        ),
    ] {
        let spec = VxlanSpec {
            device: device.clone(),
            vni: 1,
            port: 8472,
            local: ip,
        };
        nodes.push(LabNode {
            name,
            netns: namespaces.add(name)?,
            pod_netns: namespaces.add(&format!("p{name}"))?,
            ip,
            pod_cidr,
            pod_ip,
            object: node_object(name, pod_cidr, ip),
            sync: Some(RouteSync::new(
                Arc::new(Rtnetlink),
                Arc::new(Rtnetlink),
                name,
                BRIDGE,
                PodNetworkBackend::Auto,
                spec,
            )),
        });
    }
    build_underlay(&router, &nodes)?;
    for node in &nodes {
        build_pod(node)?;
    }
    let built = started.elapsed();

    // Round one: every node makes its device; A and C route to each other by host-gw;
    // nobody has published a VTEP yet, so B stays out of reach.
    let first = sync_all(&mut nodes)?;
    let (a, b) = (&nodes[0], &nodes[1]);
    ensure!(
        pod_routes(a)? == ["10.42.3.0/24 via 172.30.0.11 dev eth0"],
        "{:?}",
        pod_routes(a)?
    );
    ensure!(pod_routes(b)?.is_empty(), "{:?}", pod_routes(b)?);
    publish_all(&mut nodes)?;
    // Round two: with the annotations, B is reached through VXLAN.
    let second = sync_all(&mut nodes)?;
    let (a, b, c) = (&nodes[0], &nodes[1], &nodes[2]);
    let (mac_a, mac_b, mac_c) = (mac_of(a)?, mac_of(b)?, mac_of(c)?);
    ensure!(
        a.object
            .metadata
            .annotations
            .as_ref()
            .and_then(|m| m.get(vxlan::PUBLIC_IP_ANNOTATION))
            .map(String::as_str)
            == Some("172.30.0.10")
    );

    // The device as flannel makes it.
    let link = vxlan_link(a, &device)?;
    ensure!(link["mtu"] == 1450, "mtu: {}", link["mtu"]);
    ensure!(
        link["address"] == mac_a.as_str(),
        "address: {}",
        link["address"]
    );
    let info = &link["linkinfo"];
    ensure!(info["info_kind"] == "vxlan", "{info}");
    ensure!(info["info_data"]["id"] == 1, "{info}");
    ensure!(info["info_data"]["local"] == "172.30.0.10", "{info}");
    ensure!(info["info_data"]["port"] == 8472, "{info}");
    ensure!(info["info_data"]["learning"] == false, "{info}");
    let addresses = ip_in(&a.netns, &["-4", "-o", "addr", "show", "dev", &device])?;
    ensure!(addresses.contains("inet 10.42.1.0/32"), "{addresses}");

    // Routes, neighbour and FDB entries.
    let mut routes_a = pod_routes(a)?;
    routes_a.sort();
    ensure!(
        routes_a
            == [
                format!("10.42.2.0/24 via 10.42.2.0 dev {device} onlink"),
                "10.42.3.0/24 via 172.30.0.11 dev eth0".to_string()
            ],
        "{routes_a:?}"
    );
    let mut routes_b = pod_routes(b)?;
    routes_b.sort();
    ensure!(
        routes_b
            == [
                format!("10.42.1.0/24 via 10.42.1.0 dev {device} onlink"),
                format!("10.42.3.0/24 via 10.42.3.0 dev {device} onlink")
            ],
        "{routes_b:?}"
    );
    let neighbours_a = neighbours(a)?;
    ensure!(
        neighbours_a.contains(&format!("10.42.2.0 dev {device} lladdr {mac_b} PERMANENT")),
        "{neighbours_a}"
    );
    let fdb_a = fdb(a)?;
    ensure!(
        fdb_a.contains(&format!(
            "{mac_b} dev {device} dst 172.29.0.10 self permanent"
        )),
        "{fdb_a}"
    );
    let fdb_b = fdb(b)?;
    for (mac, dst) in [(&mac_a, "172.30.0.10"), (&mac_c, "172.30.0.11")] {
        ensure!(
            fdb_b.contains(&format!("{mac} dev {device} dst {dst} self permanent")),
            "{fdb_b}"
        );
    }
    ensure!(
        !fdb(c)?.contains(&mac_a),
        "C reaches A by host-gw, not through the overlay"
    );

    // Pod to pod, across the subnets and on the same LAN. The router has no route to
    // any podCIDR: what reaches B's pod came through the overlay.
    let pinged = Instant::now();
    ping(a, b.pod_ip, "3")?;
    let ping_time = pinged.elapsed();
    ping(b, c.pod_ip, "3")?;
    ping(a, c.pod_ip, "3")?;
    let exchanged = Instant::now();
    let source = tcp_exchange(a, b)?;
    let exchange_time = exchanged.elapsed();
    ensure!(
        source == a.pod_ip,
        "B's pod saw {source}, not A's pod IP (NAT?)"
    );
    ensure!(tcp_exchange(b, c)? == b.pod_ip);
    ensure!(tcp_exchange(c, a)? == c.pod_ip);
    let tx: u64 = vxlan_link(a, &device)?["stats64"]["tx"]["packets"]
        .as_u64()
        .unwrap_or(0);
    let rx: u64 = vxlan_link(b, &device)?["stats64"]["rx"]["packets"]
        .as_u64()
        .unwrap_or(0);
    ensure!(
        tx > 0 && rx > 0,
        "no traffic through the devices: A sent {tx}, B received {rx}"
    );

    // B goes away: A drops its route, neighbour and FDB entry, and B's pod is out of reach.
    let without_b: Vec<NodeInfo> = [&nodes[0], &nodes[2]].iter().map(|n| n.info()).collect();
    let changes = sync(&mut nodes[0], without_b)?;
    ensure!(changes.len() == 3, "{changes:?}");
    let a = &nodes[0];
    ensure!(
        pod_routes(a)? == ["10.42.3.0/24 via 172.30.0.11 dev eth0"],
        "{:?}",
        pod_routes(a)?
    );
    ensure!(!neighbours(a)?.contains("10.42.2.0"), "{}", neighbours(a)?);
    ensure!(!fdb(a)?.contains(&mac_b), "{}", fdb(a)?);
    ensure!(
        ping(a, nodes[1].pod_ip, "1").is_err(),
        "B's pod still answers"
    );
    // It comes back with a new device (a new MAC): A follows.
    nodes[1]
        .object
        .metadata
        .annotations
        .get_or_insert_with(Default::default)
        .insert(
            vxlan::VTEP_MAC_ANNOTATION.into(),
            "0a:58:0a:2a:02:00".into(),
        );
    let infos: Vec<NodeInfo> = nodes.iter().map(LabNode::info).collect();
    sync(&mut nodes[0], infos)?;
    let a = &nodes[0];
    ensure!(
        neighbours(a)?.contains(&format!(
            "10.42.2.0 dev {device} lladdr 0a:58:0a:2a:02:00 PERMANENT"
        )),
        "{}",
        neighbours(a)?
    );
    ensure!(fdb(a)?.contains("0a:58:0a:2a:02:00 dev"), "{}", fdb(a)?);
    ensure!(!fdb(a)?.contains(&mac_b), "{}", fdb(a)?);

    // A second device on the same VNI and port in one namespace is refused, with advice.
    let clash = VxlanSpec {
        device: vxlan::device_name("rkt1"),
        vni: 1,
        port: 8472,
        local: a.ip,
    };
    let refused = in_netns(&netns_path(&a.netns), move || {
        Rtnetlink.ensure_device(&clash)
    })?;
    ensure!(
        matches!(refused, Err(VxlanError::VniInUse { .. })),
        "{refused:?}"
    );

    // A kubelet restarted on another VNI re-creates its device (a new MAC), and no longer
    // reaches B, which says it is on VNI 1; C stays reached by host-gw.
    let infos: Vec<NodeInfo> = nodes.iter().map(LabNode::info).collect();
    let a = &mut nodes[0];
    a.sync = Some(RouteSync::new(
        Arc::new(Rtnetlink),
        Arc::new(Rtnetlink),
        a.name,
        BRIDGE,
        PodNetworkBackend::Auto,
        VxlanSpec {
            device: device.clone(),
            vni: 7,
            port: 8472,
            local: a.ip,
        },
    ));
    sync(a, infos)?;
    let link = vxlan_link(a, &device)?;
    ensure!(link["linkinfo"]["info_data"]["id"] == 7, "{link}");
    ensure!(
        link["address"] != mac_a.as_str(),
        "the device was not made anew"
    );
    ensure!(
        pod_routes(a)? == ["10.42.3.0/24 via 172.30.0.11 dev eth0"],
        "{:?}",
        pod_routes(a)?
    );
    ensure!(!fdb(a)?.contains(" dst "), "{}", fdb(a)?);

    // Teardown: our routes and the device (with its entries) go; nothing else of ours stays.
    for node in &nodes {
        let (routes, had_device) = in_netns(&netns_path(&node.netns), || {
            kubelet::network::remove_routes_and_vxlan(BRIDGE)
        })??;
        ensure!(
            had_device && routes >= 1,
            "{}: {routes} routes, device {had_device}",
            node.name
        );
        ensure!(pod_routes(node)?.is_empty(), "{:?}", pod_routes(node)?);
        ensure!(
            ip_in(&node.netns, &["link", "show", "dev", &device]).is_err(),
            "the device is still there"
        );
        ensure!(!ip_in(&node.netns, &["-o", "link", "show"])?.contains("vxlan"));
        ensure!(
            !neighbours(node)?.contains("PERMANENT"),
            "{}",
            neighbours(node)?
        );
        let entries = fdb(node)?;
        ensure!(!entries.contains(" dst "), "{entries}");
        // Teardown again is fine.
        let again = in_netns(&netns_path(&node.netns), || {
            kubelet::network::remove_routes_and_vxlan(BRIDGE)
        })??;
        ensure!(again == (0, false), "{again:?}");
    }

    let names = namespaces.names.clone();
    drop(namespaces);
    let listed = run("ip", &["netns", "list"])?;
    for name in &names {
        ensure!(!listed.contains(name.as_str()), "{name} is left");
        ensure!(!Path::new(&netns_path(name)).exists(), "{name} is left");
    }
    // Only what this test added is checked: other labs may be running on the host.
    let host_routes = run("ip", &["route", "show", "table", "all"])?;
    for address in ["172.30.0.", "172.29.0.", device.as_str()] {
        ensure!(
            !host_routes.contains(address),
            "a route with {address} is on the host"
        );
    }
    let host_links = run("ip", &["-o", "link", "show"])?;
    for name in [
        "lan-a",
        "to-a",
        "to-b",
        "to-c",
        device.as_str(),
        "rkt1-vxlan",
        "vethpod",
    ] {
        ensure!(
            !host_links.contains(&format!(": {name}")),
            "{name} is on the host"
        );
    }

    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "lab built in {:.0} ms; first sync (device) {:.1}/{:.1}/{:.1} ms, second sync (peers) {:.1}/{:.1}/{:.1} ms; first ping A→B {:.1} ms; {} KiB each way A↔B over TCP in {:.1} ms; whole test {:.0} ms",
        ms(built),
        ms(first[0]), ms(first[1]), ms(first[2]),
        ms(second[0]), ms(second[1]), ms(second[2]),
        ms(ping_time),
        PAYLOAD / 1024,
        ms(exchange_time),
        ms(started.elapsed()),
    );
    Ok(())
}
