//! An HA control plane as users build it with k3s, on one machine: a test LAN (network
//! namespaces, see [`rkube_tests::multinode`]) with a real etcd on the LAN host; nodes
//! 1, 2 and 3 run `rkube server --etcd-servers <that etcd>` (the first makes the
//! cluster, the others join it with its token and restore its CA and keys from etcd);
//! node 4 runs `rkube agent --server https://<node 1>:6443`. Then node 1's server dies:
//! the `kubernetes` Endpoints drop it, the agent's client-side load balancer moves to
//! the servers that are left, its node stays Ready, and a new pod is scheduled to it,
//! runs and shows its logs. Needs root and etcd (CI has both).

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{ensure, Context as _};
use k8s_openapi::api::core::v1::{Endpoints, Node, Pod};
use kube::api::{Api, PostParams};
use rkube_tests::cluster::eventually;
use rkube_tests::multinode::{busybox_pod, finished, nodes_ready, on_a_lan, phase, ready, server_admin_client, server_token, Lan};

const PORT: u16 = 6443;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_agent_keeps_working_when_a_server_of_three_is_lost() -> anyhow::Result<()> {
    if which("etcd").is_none() {
        assert!(std::env::var_os("CI").is_none(), "multinode_ha needs etcd on PATH under CI (apt-get install etcd-server)");
        println!("skipped: needs etcd on PATH (apt-get install etcd-server)");
        return Ok(());
    }
    on_a_lan("multinode_ha", 4, |lan| Box::pin(scenario(lan))).await
}

fn which(program: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH").and_then(|paths| std::env::split_paths(&paths).map(|d| d.join(program)).find(|p| p.is_file()))
}

/// etcd on the LAN host's address, stopped (and its data gone with the run's
/// directory) when dropped.
struct Etcd(Child);

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port(ip: std::net::Ipv4Addr) -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind((ip, 0))?.local_addr()?.port())
}

fn start_etcd(lan: &Lan) -> anyhow::Result<(Etcd, String)> {
    let ip = lan.names().host_ip();
    let (client, peer) = (free_port(ip)?, free_port(ip)?);
    let url = format!("http://{ip}:{client}");
    let peer_url = format!("http://{ip}:{peer}");
    let log = std::fs::File::create(lan.dir().join("etcd.log"))?;
    let child = Command::new("etcd")
        .args(["--name", "ha", "--data-dir"])
        .arg(lan.dir().join("etcd"))
        .args(["--listen-client-urls", &url, "--advertise-client-urls", &url])
        .args(["--listen-peer-urls", &peer_url, "--initial-advertise-peer-urls", &peer_url])
        .args(["--initial-cluster", &format!("ha={peer_url}")])
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("starting etcd")?;
    let etcd = Etcd(child);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect((ip, client)).is_err() {
        ensure!(std::time::Instant::now() < deadline, "etcd did not listen on {url} within 30 s");
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok((etcd, url))
}

async fn kubernetes_endpoints(client: &kube::Client) -> anyhow::Result<Vec<String>> {
    let ep = Api::<Endpoints>::namespaced(client.clone(), "default").get("kubernetes").await?;
    let mut ips: Vec<String> = ep.subsets.unwrap_or_default().iter().flat_map(|s| s.addresses.iter().flatten()).map(|a| a.ip.clone()).collect();
    ips.sort();
    Ok(ips)
}

async fn scenario(lan: &mut Lan) -> anyhow::Result<()> {
    let names = lan.names().clone();
    let (_etcd, etcd_url) = start_etcd(lan)?;
    let server = |k: u8, token: Option<&str>| -> Vec<String> {
        let mut args: Vec<String> = ["server", "--port", &PORT.to_string(), "--etcd-servers", &etcd_url, "--node-ip", &names.node_ip(k).to_string(), "--node-name", &names.node_name(k), "--cluster-cidr", &names.cluster_cidr()]
            .iter()
            .map(|s| s.to_string())
            .collect();
        if let Some(token) = token {
            args.extend(["--token".to_string(), token.to_string()]);
        }
        args
    };
    let first = lan.start_rkube(1, &server(1, None))?;
    let token = server_token(&first).await?;
    let mut dirs = vec![first];
    for k in [2, 3] {
        dirs.push(lan.start_rkube(k, &server(k, Some(&token)))?);
    }
    let server_url = format!("https://{}:{PORT}", names.node_ip(1));
    lan.start_rkube(4, &["agent", "--server", &server_url, "--token", &token, "--node-ip", &names.node_ip(4).to_string(), "--node-name", &names.node_name(4)].map(String::from))?;

    // The servers share one CA: the joined ones restored it, so each one's admin
    // certificate works against the first.
    let first_ca = std::fs::read_to_string(dirs[0].join("pki/ca.crt"))?;
    let client = server_admin_client(&dirs[2], &format!("https://{}:{PORT}", names.node_ip(3))).await?;
    nodes_ready(&client, lan).await?;
    for dir in &dirs[1..] {
        ensure!(std::fs::read_to_string(dir.join("pki/ca.crt"))? == first_ca, "a joined server has a CA of its own");
    }
    let all: Vec<String> = (1..=3).map(|k| names.node_ip(k).to_string()).collect();
    eventually(Duration::from_secs(60), "the kubernetes Endpoints listing the three servers", || {
        let (client, all) = (client.clone(), all.clone());
        async move { Ok((kubernetes_endpoints(&client).await? == all).then_some(())) }
    })
    .await?;

    // Server 1, the one the agent joined through, dies.
    lan.kill_in_node(1, "rkube")?;
    let left: Vec<String> = all[1..].to_vec();
    eventually(Duration::from_secs(90), "the kubernetes Endpoints without the dead server", || {
        let (client, left) = (client.clone(), left.clone());
        async move { Ok((kubernetes_endpoints(&client).await? == left).then_some(())) }
    })
    .await?;

    // The agent's node goes on renewing its Lease through the other servers, and the
    // control plane (its leaders elected again if server 1 led) places a new pod on it,
    // which runs and whose logs come back through the apiserver.
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let mut pod = busybox_pod("after-the-loss", &names.node_name(4), "echo still here", "Never")?;
    // Placed by the scheduler, not bound by name.
    if let Some(spec) = pod.spec.as_mut() {
        spec.node_name = None;
        spec.node_selector = Some([("kubernetes.io/hostname".to_string(), names.node_name(4))].into());
    }
    pods.create(&PostParams::default(), &pod).await?;
    let (pod, logs) = finished(&pods, "after-the-loss").await?;
    ensure!(phase(&pod) == "Succeeded" && logs.trim() == "still here", "the pod on the agent ended {} with {logs:?}", phase(&pod));
    // Long past the node monitor's grace period (40 s) since the server died.
    tokio::time::sleep(Duration::from_secs(20)).await;
    let node = Api::<Node>::all(client.clone()).get(&names.node_name(4)).await?;
    ensure!(ready(&node), "the agent's node is not Ready after losing a server: {:?}", node.status.and_then(|s| s.conditions));
    lan.still_running(4, "rkube").map_err(anyhow::Error::msg)?;
    Ok(())
}
