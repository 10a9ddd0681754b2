//! Privileged check that the sandbox's two [`NetOps`] implementations build the same pod
//! network: the kubelet's [`Rtnetlink`] and the `ip`-command reference [`IpRoute2`] each
//! set up a bridge and two pods in scratch network namespaces, and the resulting links,
//! addresses and routes (as `ip -d -j` shows them, minus what differs between any two
//! runs: indexes, MAC addresses, counters, timers) must be equal. Also prints how long
//! each takes per pod. Needs root.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use kubelet::runtime::sandbox::netns::in_netns;
use kubelet::runtime::sandbox::{IpRoute2, NetOps, Rtnetlink};
use serde_json::Value;

/// True when the test may run; false (after saying so) when it must be skipped.
fn have_root() -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "netops_linux needs root, and CI must run it"
    );
    println!("skipped: needs root");
    false
}

fn ip(args: &[&str]) -> anyhow::Result<String> {
    let output = Command::new("ip")
        .args(args)
        .output()
        .with_context(|| format!("ip {}", args.join(" ")))?;
    ensure!(
        output.status.success(),
        "`ip {}` failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Named network namespaces that are deleted when dropped.
struct Namespaces(Vec<String>);

impl Namespaces {
    fn add(&mut self, name: String) -> anyhow::Result<PathBuf> {
        ip(&["netns", "add", &name])?;
        self.0.push(name.clone());
        Ok(PathBuf::from("/run/netns").join(name))
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for name in &self.0 {
            let _ = ip(&["netns", "del", name]);
        }
    }
}

/// Keys whose values differ between two identical setups.
const VOLATILE: &[&str] = &[
    "ifindex",
    "link_index",
    "link_netnsid",
    "address",
    "broadcast",
    "perm_address",
    "stats",
    "stats64",
    "bridge_id",
    "root_id",
    "designated_root",
    "designated_bridge",
    "id",
    "no",
    "hello_timer",
    "tcn_timer",
    "topology_change_timer",
    "gc_timer",
    "message_age_timer",
    "forward_delay_timer",
    "hold_timer",
    "valid_life_time",
    "preferred_life_time",
    "operstate",
];

fn normalize(value: &mut Value) {
    match value {
        Value::Object(map) => {
            map.retain(|k, _| !VOLATILE.contains(&k.as_str()));
            if let Some(Value::Array(flags)) = map.get_mut("flags") {
                // Carrier comes a moment after a veth's peer is up.
                flags.retain(|f| f != "LOWER_UP" && f != "NO-CARRIER");
            }
            map.values_mut().for_each(normalize);
        }
        Value::Array(items) => {
            // IPv6 link-local addresses (and their local routes) derive from MAC addresses.
            items.retain(|item| {
                !["local", "dst"].iter().any(|key| {
                    item.get(key)
                        .and_then(Value::as_str)
                        .is_some_and(|a| a.starts_with("fe80::") && a != "fe80::/64")
                })
            });
            items.iter_mut().for_each(normalize)
        }
        _ => {}
    }
}

/// Links, addresses and routes of a namespace, normalized.
fn snapshot(netns: &str) -> anyhow::Result<Value> {
    let mut all = serde_json::Map::new();
    for (key, args) in [
        ("links", vec!["-d", "-j", "link", "show"]),
        ("addresses", vec!["-j", "addr", "show"]),
        ("routes", vec!["-j", "route", "show", "table", "all"]),
    ] {
        let out = ip(&[&["-n", netns][..], &args[..]].concat())?;
        let mut value: Value =
            serde_json::from_str(&out).with_context(|| format!("{key}: {out}"))?;
        normalize(&mut value);
        all.insert(key.to_string(), value);
    }
    Ok(Value::Object(all))
}

/// Builds a bridge and two pods (one of them removed again) in fresh namespaces with
/// `ops`; returns the state of the node and of the remaining pod, and the time per pod.
fn build(
    ops: impl NetOps + Clone + 'static,
    tag: &str,
    pods: usize,
) -> anyhow::Result<(Value, Value, Duration)> {
    let id = format!("{}{}", std::process::id() % 100_000, tag);
    let mut namespaces = Namespaces(Vec::new());
    let node_name = format!("rkube-no-{id}");
    let node = namespaces.add(node_name.clone())?;
    let mut pod_paths = Vec::new();
    for n in 0..pods {
        pod_paths.push((
            format!("rkube-po{n}-{id}"),
            namespaces.add(format!("rkube-po{n}-{id}"))?,
        ));
    }
    let bridge = "rkt0";
    let started = Instant::now();
    let node_ops = ops.clone();
    let paths: Vec<PathBuf> = pod_paths.iter().map(|(_, p)| p.clone()).collect();
    in_netns(&node, move || -> anyhow::Result<()> {
        node_ops.ensure_bridge(bridge, Ipv4Addr::new(10, 99, 0, 1), 24)?;
        for (n, pod) in paths.iter().enumerate() {
            let host = format!("vethpod{n}");
            node_ops.add_veth(&host, bridge, pod, "eth0")?;
            let address = Ipv4Addr::new(10, 99, 0, 2 + u8::try_from(n)?);
            node_ops.configure_pod_interface(
                pod,
                "eth0",
                address,
                24,
                Ipv4Addr::new(10, 99, 0, 1),
            )?;
        }
        Ok(())
    })??;
    let per_pod = started.elapsed() / u32::try_from(pods)?;
    // Idempotence: the bridge again, and a pod's veth removed and gone.
    let node_ops = ops.clone();
    in_netns(&node, move || -> anyhow::Result<()> {
        node_ops.ensure_bridge(bridge, Ipv4Addr::new(10, 99, 0, 1), 24)?;
        node_ops.delete_link("vethpod1")?;
        node_ops.delete_link("vethpod1")?;
        node_ops.delete_link("never-existed")?;
        Ok(())
    })??;
    Ok((snapshot(&node_name)?, snapshot(&pod_paths[0].0)?, per_pod))
}

fn first_difference(path: &str, a: &Value, b: &Value) -> Option<String> {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            for key in x.keys().chain(y.keys()) {
                let (va, vb) = (
                    x.get(key).unwrap_or(&Value::Null),
                    y.get(key).unwrap_or(&Value::Null),
                );
                if let Some(d) = first_difference(&format!("{path}.{key}"), va, vb) {
                    return Some(d);
                }
            }
            None
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => x
            .iter()
            .zip(y)
            .enumerate()
            .find_map(|(i, (va, vb))| first_difference(&format!("{path}[{i}]"), va, vb)),
        _ if a == b => None,
        _ => Some(format!("{path}: {a} vs {b}")),
    }
}

#[test]
fn netlink_and_ip_build_the_same_pod_network() -> anyhow::Result<()> {
    if !have_root() {
        return Ok(());
    }
    let pods = 8;
    let (ip_node, ip_pod, ip_time) = build(IpRoute2::new(), "i", pods)?;
    let (nl_node, nl_pod, nl_time) = build(Rtnetlink, "n", pods)?;
    println!(
        "per pod (bridge included): ip {:.1} ms, netlink {:.1} ms (ratio {:.2})",
        ip_time.as_secs_f64() * 1e3,
        nl_time.as_secs_f64() * 1e3,
        nl_time.as_secs_f64() / ip_time.as_secs_f64().max(1e-9)
    );
    assert!(
        ip_node["links"]
            .as_array()
            .is_some_and(|l| l.len() == 2 + pods - 1),
        "lo, the bridge and the remaining veths: {:#}",
        ip_node["links"]
    );
    ensure!(
        ip_node == nl_node,
        "the node differs: {}",
        first_difference("node", &ip_node, &nl_node).unwrap_or_default()
    );
    ensure!(
        ip_pod == nl_pod,
        "the pod differs: {}",
        first_difference("pod", &ip_pod, &nl_pod).unwrap_or_default()
    );
    Ok(())
}

#[test]
fn netlink_reports_missing_links_and_namespaces() -> anyhow::Result<()> {
    if !have_root() {
        return Ok(());
    }
    let mut namespaces = Namespaces(Vec::new());
    let node = namespaces.add(format!("rkube-nm-{}", std::process::id() % 100_000))?;
    let result = in_netns(&node, || -> Vec<String> {
        let ops = Rtnetlink;
        [
            ops.add_veth("vethx", "no-bridge", Path::new("/run/netns/none"), "eth0"),
            ops.ensure_bridge("rkt0", Ipv4Addr::new(10, 99, 0, 1), 24)
                .and_then(|()| {
                    ops.add_veth(
                        "vethy",
                        "no-bridge",
                        Path::new("/proc/thread-self/ns/net"),
                        "peer0",
                    )
                }),
        ]
        .into_iter()
        .map(|r| r.err().map(|e| e.to_string()).unwrap_or_default())
        .collect()
    })?;
    assert!(result[0].contains("/run/netns/none"), "{}", result[0]);
    assert_eq!(result[1], "link no-bridge does not exist");
    // The half-made veth was taken back.
    assert!(!ip(&["-n", &namespaces.0[0], "-o", "link", "show"])?.contains("vethy"));
    Ok(())
}
