//! Privileged multi-node tests of the pod network and of Services: one machine plays a
//! small LAN of three nodes (see [`rkube_tests::multinode`]: a bridge in the host's
//! network namespace is the LAN switch, with the host, which runs the control plane
//! in-process, at `172.31.X.1`; each node is a network namespace at `172.31.X.1<k>`
//! running the real `kubelet` and `kube-proxy` binaries).
//!
//! The first test checks what flannel's host-gw and the CNI bridge plugin's `ipMasq`
//! give a real cluster: a pod reaches a pod on another node by its pod IP and is seen by
//! it under that IP (routes, no NAT), a pod reaching the LAN host is masqueraded to its
//! node's address, and a departed node's route goes away. The second checks what
//! kube-proxy adds: a pod reaches every backend of a ClusterIP Service, those on other
//! nodes included, and a NodePort answers on every node's LAN address. Everything is
//! torn down at the end, on failure too, and each test checks that nothing is left.
//! Need root (CI runs them as root).

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read as _, Write as _};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Node, Pod, Service};
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kubelet::runtime::sandbox::Ipv4Cidr;
use rkube_tests::cluster::eventually;
use rkube_tests::multinode::{
    busybox_pod, finished, node_routes, nodes_ready, on_a_lan, phase, pod_ip, running,
    start_control_plane, Conntrack, Lan,
};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How many nodes the LAN has.
const NODES: u8 = 3;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pods_on_different_nodes_talk_without_nat_and_egress_is_masqueraded() -> anyhow::Result<()>
{
    on_a_lan("multinode_linux pod network", NODES, |lan| {
        Box::pin(pod_network_scenario(lan))
    })
    .await
}

async fn pod_network_scenario(lan: &mut Lan) -> anyhow::Result<()> {
    let names = &lan.names().clone();
    let dir = &lan.dir().to_path_buf();
    let started = Instant::now();
    let mut timings: Vec<(&str, Duration)> = Vec::new();
    let control_plane = start_control_plane(names, dir).await?;
    let client = control_plane.client.clone();
    for k in 1..=NODES {
        lan.start_node(k)?;
    }

    // Every node registers, gets a podCIDR from node IPAM and turns Ready.
    let nodes: Api<Node> = Api::all(client.clone());
    let cidrs = nodes_ready(&client, lan).await?;
    timings.push(("nodes Ready", started.elapsed()));

    // Each node routes every other node's podCIDR via that node's LAN address.
    for k in 1..=NODES {
        let expected: BTreeMap<String, String> = (1..=NODES)
            .filter(|other| *other != k)
            .map(|other| (cidrs[&other].clone(), names.node_ip(other).to_string()))
            .collect();
        eventually(Duration::from_secs(30), &format!("node {k}'s routes {expected:?}"), || {
            let routes = node_routes(names, k);
            let expected = expected.clone();
            async move { Ok(Some(()).filter(|_| routes.as_ref().is_ok_and(|r| *r == expected))) }
        })
        .await?;
        // And masquerades its podCIDR's traffic leaving the cluster CIDR.
        let podnet_table = format!("rkube-podnet-{}", names.node_bridge(k));
        let table = lan.run_in_node(k, "nft", &["list", "table", "ip", &podnet_table])?;
        let rule = format!(
            "ip saddr {} ip daddr != {} ip daddr != 224.0.0.0/4 masquerade",
            cidrs[&k],
            names.cluster_cidr()
        );
        ensure!(
            table.contains(&rule),
            "node {k}'s masquerade table lacks `{rule}`:\n{table}"
        );
    }
    timings.push(("routes on every node", started.elapsed()));

    // A web server on node 2 that tells its host name, and who asked (a CGI script).
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let web_script = "mkdir -p /www/cgi-bin && hostname > /www/index.html && \
        printf '#!/bin/sh\\necho Content-Type: text/plain\\necho\\necho \"$REMOTE_ADDR\"\\n' > /www/cgi-bin/peer && \
        chmod +x /www/cgi-bin/peer && exec httpd -f -p 8080 -h /www";
    pods.create(
        &PostParams::default(),
        &busybox_pod("web", &names.node_name(2), web_script, "Always")?,
    )
    .await?;
    let web = running(&pods, "web").await?;
    let web_ip = pod_ip(&web).context("web has no IP")?;
    let node2_cidr: Ipv4Cidr = cidrs[&2].parse()?;
    ensure!(
        node2_cidr.contains(web_ip),
        "web's IP {web_ip} is not in node 2's podCIDR {node2_cidr}"
    );
    timings.push(("server pod Running", started.elapsed()));

    // A client on node 1 fetches both pages by the server's pod IP.
    // (`timeout`, not wget's own `-T`: Debian's busybox 1.35 wget crashes with it.)
    let client_script = format!(
        "for i in 1 2 3 4 5 6 7 8 9 10; do timeout 3 wget -q -O /tmp/page http://{web_ip}:8080/ && break; sleep 1; done; \
         cat /tmp/page && timeout 5 wget -q -O- http://{web_ip}:8080/cgi-bin/peer"
    );
    let client_started = Instant::now();
    pods.create(
        &PostParams::default(),
        &busybox_pod("client", &names.node_name(1), &client_script, "Never")?,
    )
    .await?;
    let (client_pod, log) = finished(&pods, "client").await?;
    let client_ip = pod_ip(&client_pod).context("the client has no IP")?;
    ensure!(
        phase(&client_pod) == "Succeeded",
        "the client pod failed; its log:\n{log}"
    );
    let lines: Vec<&str> = log.lines().collect();
    ensure!(
        lines.first() == Some(&"web"),
        "the server's page should name its host `web`: {log:?}"
    );
    let seen = lines
        .get(1)
        .map(|l| l.trim_start_matches("[::ffff:").trim_end_matches(']'))
        .unwrap_or_default();
    ensure!(
        seen == client_ip.to_string(),
        "the server saw {seen:?}, not the client's pod IP {client_ip} (pod-to-pod traffic must not be NATed); log {log:?}"
    );
    timings.push((
        "cross-node pod-to-pod request (client pod lifetime)",
        client_started.elapsed(),
    ));

    // A pod on node 3 reaches the LAN host, which sees node 3's address.
    let (port, seen_by_host, lan_task) = lan_server(names.host_ip()).await?;
    let egress_script = format!("timeout 5 wget -q -O- http://{}:{port}/", names.host_ip());
    pods.create(
        &PostParams::default(),
        &busybox_pod("egress", &names.node_name(3), &egress_script, "Never")?,
    )
    .await?;
    let (egress_pod, log) = finished(&pods, "egress").await?;
    lan_task.abort();
    ensure!(
        phase(&egress_pod) == "Succeeded",
        "the egress pod failed; its log:\n{log}"
    );
    let egress_ip = pod_ip(&egress_pod).context("the egress pod has no IP")?;
    let seen: Vec<IpAddr> = seen_by_host
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let node3 = IpAddr::V4(names.node_ip(3));
    ensure!(
        seen == [node3],
        "the LAN host should see node 3's address {node3}, not the pod's {egress_ip}: saw {seen:?}"
    );
    ensure!(
        log.trim() == node3.to_string(),
        "the egress pod's log: {log:?}"
    );
    timings.push(("egress request", started.elapsed()));

    // Node 3 leaves: the other nodes drop their route to its pods.
    lan.stop_node(3);
    nodes
        .delete(&names.node_name(3), &DeleteParams::default())
        .await?;
    let gone_started = Instant::now();
    for k in [1, 2] {
        eventually(
            Duration::from_secs(30),
            &format!("node {k} to drop the route to node 3's pods"),
            || {
                let routes = node_routes(names, k);
                let gone = cidrs[&3].clone();
                async move {
                    Ok(Some(()).filter(|_| {
                        routes
                            .as_ref()
                            .is_ok_and(|r| !r.contains_key(&gone) && r.len() == 1)
                    }))
                }
            },
        )
        .await?;
    }
    timings.push((
        "route removed after node deletion (from the delete)",
        gone_started.elapsed(),
    ));

    for name in ["web", "client", "egress"] {
        let _ = pods.delete(name, &DeleteParams::default()).await;
    }
    drop(control_plane);
    print_timings(&timings);
    Ok(())
}

/// The host's own web server on the LAN: answers every request with the address it came
/// from, and records those addresses.
async fn lan_server(
    host_ip: Ipv4Addr,
) -> anyhow::Result<(u16, Arc<Mutex<Vec<IpAddr>>>, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind((host_ip, 0)).await?;
    let port = listener.local_addr()?.port();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    let task = tokio::spawn(async move {
        // Bounded: the test makes one request; a few more are tolerated.
        for _ in 0..8 {
            let Ok((mut stream, peer)) = listener.accept().await else {
                return;
            };
            record
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(peer.ip());
            let mut request = [0u8; 1024];
            let _ = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut request)).await;
            let body = format!("{}\n", peer.ip());
            let response = format!(
                "HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(response.as_bytes()).await;
            let _ = stream.shutdown().await;
        }
    });
    Ok((port, seen, task))
}

fn print_timings(timings: &[(&str, Duration)]) {
    println!("timings (from the control plane's start unless noted):");
    for (what, when) in timings {
        println!("  {what}: {:.2} s", when.as_secs_f64());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pods_reach_service_backends_on_every_node_and_node_ports_answer_on_the_lan(
) -> anyhow::Result<()> {
    on_a_lan("multinode_linux services", NODES, |lan| {
        Box::pin(services_scenario(lan))
    })
    .await
}

/// How many requests the client pod makes to the ClusterIP.
const CLIENT_REQUESTS: usize = 60;

async fn services_scenario(lan: &mut Lan) -> anyhow::Result<()> {
    let names = &lan.names().clone();
    let dir = &lan.dir().to_path_buf();
    let started = Instant::now();
    let mut timings: Vec<(&str, Duration)> = Vec::new();
    let control_plane = start_control_plane(names, dir).await?;
    let client = control_plane.client.clone();
    for k in 1..=NODES {
        lan.start_node(k)?;
    }
    nodes_ready(&client, lan).await?;
    timings.push(("nodes Ready", started.elapsed()));

    // One web server per node (a Deployment spread by hostname), each serving its own
    // host name, i.e. its pod's name; ready once it answers.
    let deployment: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {
            "replicas": NODES,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {
                    "terminationGracePeriodSeconds": 1,
                    "topologySpreadConstraints": [{
                        "maxSkew": 1,
                        "topologyKey": "kubernetes.io/hostname",
                        "whenUnsatisfiable": "DoNotSchedule",
                        "labelSelector": {"matchLabels": {"app": "web"}},
                    }],
                    "containers": [{
                        "name": "web",
                        "image": rkube_tests::multinode::BUSYBOX,
                        "imagePullPolicy": "Never",
                        "command": ["sh", "-c", "mkdir -p /www && hostname > /www/index.html && exec httpd -f -p 8080 -h /www"],
                        "ports": [{"containerPort": 8080}],
                        "readinessProbe": {"httpGet": {"path": "/", "port": 8080}, "periodSeconds": 1},
                    }],
                },
            },
        },
    }))?;
    Api::<Deployment>::namespaced(client.clone(), "default")
        .create(&PostParams::default(), &deployment)
        .await?;
    let service: Service = serde_json::from_value(json!({
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {
            "type": "NodePort",
            "selector": {"app": "web"},
            "ports": [{"port": 80, "targetPort": 8080}],
        },
    }))?;
    let service = Api::<Service>::namespaced(client.clone(), "default")
        .create(&PostParams::default(), &service)
        .await?;
    let spec = service.spec.context("the Service has no spec")?;
    let cluster_ip: Ipv4Addr = spec.cluster_ip.context("no clusterIP")?.parse()?;
    let node_port = spec
        .ports
        .as_deref()
        .and_then(|p| p.first())
        .and_then(|p| p.node_port)
        .context("no nodePort")?;
    let node_port = u16::try_from(node_port)?;

    // The backends run, one on each node.
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let backends: BTreeMap<String, (String, Ipv4Addr)> = eventually(
        Duration::from_secs(90),
        &format!("{NODES} web pods Running with IPs"),
        || {
            let pods = pods.clone();
            async move {
                let list = pods.list(&ListParams::default().labels("app=web")).await?;
                let running: BTreeMap<String, (String, Ipv4Addr)> = list
                    .items
                    .iter()
                    .filter(|p| phase(p) == "Running")
                    .filter_map(|p| {
                        let node = p.spec.as_ref()?.node_name.clone()?;
                        Some((p.metadata.name.clone()?, (node, pod_ip(p)?)))
                    })
                    .collect();
                Ok(Some(running).filter(|r| r.len() == usize::from(NODES)))
            }
        },
    )
    .await?;
    let backend_nodes: BTreeSet<&String> = backends.values().map(|(node, _)| node).collect();
    ensure!(
        backend_nodes.len() == usize::from(NODES),
        "the backends should be spread one per node: {backends:?}"
    );
    timings.push(("backends Running", started.elapsed()));

    // Every node's kube-proxy has programmed the Service with every backend (ready, per
    // the EndpointSlice the controller-manager keeps). Only the table's content says so:
    // a connection succeeding would prove nothing on a machine whose gateway accepts any.
    let table = names.kube_proxy_table();
    for k in 1..=NODES {
        let wanted: Vec<String> = std::iter::once(format!(
            "{cluster_ip} . tcp . 80 : goto service-default/web/tcp/80"
        ))
        .chain(
            backends
                .values()
                .map(|(_, ip)| format!("chain endpoint-default/web/tcp/80__{ip}/8080")),
        )
        .collect();
        eventually(
            Duration::from_secs(60),
            &format!("node {k}'s kube-proxy to program {wanted:?}"),
            || {
                let listing = lan.run_in_node(k, "nft", &["list", "table", "ip", &table]);
                let done = listing.is_ok_and(|l| wanted.iter().all(|w| l.contains(w.as_str())));
                async move { Ok(Some(()).filter(|_| done)) }
            },
        )
        .await?;
    }
    timings.push(("Service programmed on every node", started.elapsed()));

    // A client pod on node 1 asks the ClusterIP again and again: every backend answers,
    // the two on other nodes included, and no request fails.
    let client_script = format!(
        "for i in $(seq {CLIENT_REQUESTS}); do timeout 3 wget -q -O- http://{cluster_ip}/ || echo FAILED; done"
    );
    let client_started = Instant::now();
    pods.create(
        &PostParams::default(),
        &busybox_pod("client", &names.node_name(1), &client_script, "Never")?,
    )
    .await?;
    let (client_pod, log) = finished(&pods, "client").await?;
    ensure!(
        phase(&client_pod) == "Succeeded",
        "the client pod failed; its log:\n{log}"
    );
    let mut answers: BTreeMap<&str, usize> = BTreeMap::new();
    for line in log.lines() {
        *answers.entry(line.trim()).or_default() += 1;
    }
    let expected: BTreeSet<&str> = backends.keys().map(String::as_str).collect();
    ensure!(
        answers.keys().copied().collect::<BTreeSet<&str>>() == expected
            && answers.values().sum::<usize>() == CLIENT_REQUESTS,
        "{CLIENT_REQUESTS} requests from node 1 to {cluster_ip}:80 should all be answered, by each of \
         {backends:?}: answers {answers:?}"
    );
    timings.push((
        "requests to the ClusterIP from node 1 (client pod lifetime)",
        client_started.elapsed(),
    ));

    // Node 1 DNATed the ClusterIP to each backend and left the client's address alone
    // (pod-to-Service traffic is not masqueraded), and each backend's node passed the
    // connection on untouched: the backends saw the client's pod IP.
    let client_ip = pod_ip(&client_pod).context("the client has no IP")?;
    let flows = lan.conntrack(1)?;
    for (backend, (node, backend_ip)) in &backends {
        let dnat = |c: &&Conntrack| {
            c.protocol == "tcp"
                && c.original.0 == client_ip
                && (c.original.1, c.original.3) == (cluster_ip, 80)
                && (c.reply.0, c.reply.2) == (*backend_ip, 8080)
        };
        let entry = flows.iter().find(dnat).with_context(|| {
            format!("node 1 has no conntrack entry of {client_ip} → {cluster_ip}:80 → {backend} ({backend_ip}:8080): {flows:#?}")
        })?;
        ensure!(
            entry.reply.1 == client_ip,
            "the connection to {backend} was masqueraded on node 1: {entry:?}"
        );
        let k = (1..=NODES)
            .find(|k| names.node_name(*k) == *node)
            .context("a backend on an unknown node")?;
        if k != 1 {
            let there = lan.conntrack(k)?;
            let untouched = there.iter().any(|c| {
                c.original.0 == client_ip
                    && (c.original.1, c.original.3) == (*backend_ip, 8080)
                    && (c.reply.0, c.reply.1) == (*backend_ip, client_ip)
            });
            ensure!(
                untouched,
                "node {k} should pass {client_ip} → {backend_ip}:8080 on without NAT: {there:#?}"
            );
        }
    }

    // The NodePort answers on every node's LAN address, from the host, and reaches
    // backends on other nodes than the one asked.
    let nodeport_started = Instant::now();
    for k in 1..=NODES {
        let addr = SocketAddr::from((names.node_ip(k), node_port));
        let expected: BTreeSet<String> = backends.keys().cloned().collect();
        let seen =
            tokio::task::spawn_blocking(move || backends_answering(addr, &expected)).await??;
        ensure!(
            seen == backends.keys().cloned().collect::<BTreeSet<String>>(),
            "the NodePort {addr} should reach every backend: reached {seen:?}"
        );
    }
    timings.push((
        "NodePort on every node reaches every backend (from its start)",
        nodeport_started.elapsed(),
    ));

    drop(control_plane);
    print_timings(&timings);
    Ok(())
}

/// Asks `addr` (up to 60 times) until every backend in `expected` has answered; the
/// backends that did. Every answer must name one of them.
fn backends_answering(
    addr: SocketAddr,
    expected: &BTreeSet<String>,
) -> anyhow::Result<BTreeSet<String>> {
    let mut seen = BTreeSet::new();
    for attempt in 1..=60 {
        let body =
            http_get(addr).with_context(|| format!("GET http://{addr}/ (request {attempt})"))?;
        ensure!(
            expected.contains(&body),
            "http://{addr}/ answered {body:?}, which names none of the backends {expected:?}"
        );
        seen.insert(body);
        if seen == *expected {
            break;
        }
    }
    Ok(seen)
}

/// One HTTP/1.0 GET of `/`; the body, trimmed.
fn http_get(addr: SocketAddr) -> anyhow::Result<String> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(3))?;
    stream.set_read_timeout(Some(Duration::from_secs(3)))?;
    stream.write_all(b"GET / HTTP/1.0\r\nHost: web\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .with_context(|| format!("not an HTTP response: {response:?}"))?;
    ensure!(
        head.starts_with("HTTP/1.") && head.contains(" 200 "),
        "answered {head:?}"
    );
    Ok(body.trim().to_string())
}
