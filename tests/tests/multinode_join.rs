//! The multi-node path a user follows with multipass VMs, on one machine: three nodes
//! of a test LAN (network namespaces, see [`rkube_tests::multinode`]); node 1 runs
//! `rkube server`, nodes 2 and 3 run `rkube agent --server https://<node 1>:6443
//! --token <its token>`. The agents pin the server's CA by the token's hash and get
//! their kubelet certificates through CertificateSigningRequests that the server's
//! controller-manager approves and signs; then their nodes go Ready, pods spread over
//! all three and reach each other through a Service by its DNS name; an agent whose
//! address changes (a VM restarted) comes back with certificates and routes for the new
//! address; and when one agent dies its pods come back on the other nodes. Needs root (CI runs it as root).

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::time::Duration;

use anyhow::{ensure, Context as _};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::certificates::v1::CertificateSigningRequest;
use k8s_openapi::api::core::v1::{Node, Pod, Service};
use kube::api::{Api, ListParams, PostParams};
use rkube_tests::cluster::eventually;
use rkube_tests::multinode::{busybox_pod, finished, nodes_ready, on_a_lan, phase, pod_ip, ready, run, server_admin_client, server_token, Lan};
use serde_json::json;

const PORT: u16 = 6443;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn agents_join_with_the_token_and_a_dead_agents_pods_move() -> anyhow::Result<()> {
    on_a_lan("multinode_join", 3, |lan| Box::pin(scenario(lan))).await
}

async fn scenario(lan: &mut Lan) -> anyhow::Result<()> {
    let names = lan.names().clone();
    let server_url = format!("https://{}:{PORT}", names.node_ip(1));
    let server_dir = lan.start_rkube(
        1,
        &[
            "server".into(),
            "--port".into(),
            PORT.to_string(),
            "--node-ip".into(),
            names.node_ip(1).to_string(),
            "--node-name".into(),
            names.node_name(1),
            "--cluster-cidr".into(),
            names.cluster_cidr(),
        ],
    )?;
    let token = server_token(&server_dir).await?;
    ensure!(token.starts_with("K10") && token.contains("::"), "unexpected token format: {token}");
    let client = server_admin_client(&server_dir, &server_url).await?;

    // A token whose CA hash is wrong is refused before the token is ever sent.
    let forged = format!("K10{}{}", "0".repeat(64), &token[67..]);
    let rkube = rkube_tests::multinode::workspace_binary("rkube")?;
    let refused = lan.run_in_node(
        2,
        &rkube.to_string_lossy(),
        &["agent", "--server", &server_url, "--token", &forged, "--data-dir", &lan.dir().join("forged").to_string_lossy()],
    );
    let message = format!("{:#}", refused.err().context("an agent with a forged CA hash joined")?);
    ensure!(message.contains("did not present a CA whose public key matches"), "unexpected refusal: {message}");

    let agent = |k: u8, ip: Ipv4Addr| -> Vec<String> {
        ["agent", "--server", &server_url, "--token", &token, "--node-ip", &ip.to_string(), "--node-name", &names.node_name(k)]
            .iter()
            .map(|s| s.to_string())
            .collect()
    };
    for k in [2, 3] {
        lan.start_rkube(k, &agent(k, names.node_ip(k)))?;
    }
    nodes_ready(&client, lan).await?;

    // Each agent asked for a client certificate as the bootstrap token's user and for
    // a serving certificate as its node; all four were approved and issued.
    let csrs = Api::<CertificateSigningRequest>::all(client.clone()).list(&ListParams::default()).await?;
    let mut seen = BTreeSet::new();
    for csr in &csrs.items {
        let spec = &csr.spec;
        let status = csr.status.clone().unwrap_or_default();
        let approved = status.conditions.iter().flatten().any(|c| c.type_ == "Approved" && c.status == "True");
        ensure!(approved && status.certificate.is_some(), "CSR {:?} is not approved and issued: {status:?}", csr.metadata.name);
        let requester = spec.username.clone().unwrap_or_default();
        seen.insert((spec.signer_name.clone(), requester.starts_with("system:bootstrap:") || requester.starts_with("system:node:")));
    }
    ensure!(csrs.items.len() == 4, "expected 4 CSRs (2 agents × client and serving), found {}", csrs.items.len());
    ensure!(
        seen == BTreeSet::from([
            ("kubernetes.io/kube-apiserver-client-kubelet".to_string(), true),
            ("kubernetes.io/kubelet-serving".to_string(), true),
        ]),
        "unexpected signers or requesters: {seen:?}"
    );

    // Six web pods spread over the three nodes, behind a Service.
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "default");
    let deployment: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "web"},
        "spec": {
            "replicas": 6,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {
                    "containers": [{
                        "name": "web", "image": "busybox", "imagePullPolicy": "IfNotPresent",
                        "command": ["sh", "-c", "hostname > /tmp/index.html; exec httpd -f -p 8080 -h /tmp"],
                    }],
                    "topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "kubernetes.io/hostname", "whenUnsatisfiable": "ScheduleAnyway", "labelSelector": {"matchLabels": {"app": "web"}}}],
                    "tolerations": [
                        {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 2},
                        {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 2},
                    ],
                },
            },
        },
    }))?;
    deployments.create(&PostParams::default(), &deployment).await?;
    let services: Api<Service> = Api::namespaced(client.clone(), "default");
    let service: Service = serde_json::from_value(json!({
        "metadata": {"name": "web"},
        "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]},
    }))?;
    services.create(&PostParams::default(), &service).await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let all_nodes: BTreeSet<String> = (1..=3).map(|k| names.node_name(k)).collect();
    let spread = eventually(Duration::from_secs(120), "six web pods Running on all three nodes", || {
        let pods = pods.clone();
        let all_nodes = all_nodes.clone();
        async move {
            let running = running_web_nodes(&pods).await?;
            Ok((running.len() == 6 && running.iter().cloned().collect::<BTreeSet<_>>() == all_nodes).then_some(running))
        }
    })
    .await?;
    println!("web pods run on {spread:?}");

    // A pod on an agent reaches the Service by its DNS name (the cluster DNS runs on
    // the server), and its logs come back through the apiserver from the agent's
    // kubelet (whose serving certificate came from a CSR).
    let probe = busybox_pod(
        "probe",
        &names.node_name(3),
        "for i in 1 2 3 4 5 6 7 8 9 10; do if wget -q -O- http://web.default.svc.cluster.local/; then exit 0; fi; sleep 1; done; exit 1",
        "Never",
    )?;
    pods.create(&PostParams::default(), &probe).await?;
    let (pod, logs) = finished(&pods, "probe").await?;
    ensure!(phase(&pod) == "Succeeded", "the probe on an agent could not reach the Service by name: {logs}");
    ensure!(logs.trim().starts_with("web-"), "the probe got {logs:?}, not a web pod's name");

    // Agent 2's VM comes back with another address: the agent records it on its Node,
    // gets a serving certificate for it, and the node is Ready again with its pods still
    // running; the apiserver reaches its kubelet at the new address (logs), and pods on
    // other nodes reach its pods again (their routes follow the address).
    lan.kill_in_node(2, "rkube")?;
    let netns = names.netns(2);
    let moved_ip = Ipv4Addr::new(172, 31, names.octet, 22);
    run("ip", &["-n", &netns, "addr", "del", &format!("{}/24", names.node_ip(2)), "dev", "lan0"])?;
    run("ip", &["-n", &netns, "addr", "add", &format!("{moved_ip}/24"), "dev", "lan0"])?;
    lan.start_rkube(2, &agent(2, moved_ip))?;
    let nodes: Api<Node> = Api::all(client.clone());
    let second = names.node_name(2);
    eventually(Duration::from_secs(120), "node 2 Ready at its new address", || {
        let (nodes, second) = (nodes.clone(), second.clone());
        async move {
            let node = nodes.get(&second).await?;
            let at_new = node.status.as_ref().and_then(|s| s.addresses.as_ref()).is_some_and(|a| a.iter().any(|a| a.type_ == "InternalIP" && a.address == moved_ip.to_string()));
            Ok((at_new && ready(&node)).then_some(()))
        }
    })
    .await?;
    let list = pods.list(&ListParams::default().labels("app=web")).await?;
    let on_second = list
        .items
        .iter()
        .find(|p| p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(second.as_str()) && phase(p) == "Running")
        .context("no web pod kept running on node 2")?;
    let (web_name, web_ip) = (on_second.metadata.name.clone().unwrap_or_default(), pod_ip(on_second).context("a web pod without an IP")?);
    eventually(Duration::from_secs(60), "the logs of a web pod on the moved node", || {
        let (pods, web_name) = (pods.clone(), web_name.clone());
        async move { Ok(pods.logs(&web_name, &Default::default()).await.ok().map(|_| ())) }
    })
    .await?;
    let probe = busybox_pod(
        "probe-moved",
        &names.node_name(3),
        &format!("for i in $(seq 1 20); do if wget -q -O- http://{web_ip}:8080/; then exit 0; fi; sleep 1; done; exit 1"),
        "Never",
    )?;
    pods.create(&PostParams::default(), &probe).await?;
    let (pod, logs) = finished(&pods, "probe-moved").await?;
    ensure!(phase(&pod) == "Succeeded" && logs.trim() == web_name, "a pod on node 3 could not reach {web_name} on the moved node 2: {logs}");

    // Agent 3 dies: its node goes NotReady, its pods are evicted and replaced on the
    // nodes that are left.
    lan.kill_in_node(3, "rkube")?;
    let dead = names.node_name(3);
    let moved = eventually(Duration::from_secs(180), "six web pods Running on nodes 1 and 2", || {
        let pods = pods.clone();
        let dead = dead.clone();
        async move {
            let running = running_web_nodes(&pods).await?;
            Ok((running.len() == 6 && !running.contains(&dead)).then_some(running))
        }
    })
    .await?;
    println!("after agent 3 died, web pods run on {moved:?}");

    // The server stops (a restart, an upgrade): the agent waits for it to come back
    // rather than giving up.
    lan.stop_node(1);
    tokio::time::sleep(Duration::from_secs(15)).await;
    lan.still_running(2, "rkube").map_err(anyhow::Error::msg)?;
    Ok(())
}

/// The nodes of the web pods that are Running and not being deleted.
async fn running_web_nodes(pods: &Api<Pod>) -> anyhow::Result<Vec<String>> {
    let list = pods.list(&ListParams::default().labels("app=web")).await?;
    Ok(list
        .items
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none() && phase(p) == "Running")
        .filter_map(|p| p.spec.as_ref().and_then(|s| s.node_name.clone()))
        .collect())
}
