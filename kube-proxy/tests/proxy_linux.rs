//! kube-proxy on the real kernel, checked by sending packets. A test bridge with three
//! backend "pods" (network namespaces running busybox httpd) and one client namespace;
//! an in-process apiserver holds a Service and its EndpointSlice; kube-proxy programs a
//! table of its own. Needs root; leaves no namespace, link or table behind.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube_proxy::nft::NftCommand;
use rkube_tests::cluster::Cluster;
use serde_json::json;
use tokio_util::sync::CancellationToken;

const BUSYBOX: &str = "/bin/busybox";

fn have_root() -> bool {
    let root = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("Uid:")).map(|l| l.split_whitespace().nth(2) == Some("0")))
        .unwrap_or(false);
    if !root {
        assert!(std::env::var_os("CI").is_none(), "proxy_linux needs root, and CI must run it");
        println!("skipped: proxy_linux needs root (network namespaces and nftables)");
    }
    root
}

fn run(args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(args[0]).args(&args[1..]).output().with_context(|| format!("running {}", args.join(" ")))?;
    ensure!(out.status.success(), "{} failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A bridge with the host at .1, backends at .10+i serving their name over HTTP, and a
/// client namespace at .20. Everything goes when dropped.
struct Net {
    id: String,
    subnet: u8,
    bridge: String,
    namespaces: Vec<String>,
    servers: Vec<Child>,
    _docroots: Vec<tempfile::TempDir>,
}

impl Net {
    fn host_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(100, 64, self.subnet, 1)
    }
    fn backend_ip(&self, i: usize) -> Ipv4Addr {
        Ipv4Addr::new(100, 64, self.subnet, 10 + i as u8)
    }
    fn client_ns(&self) -> String {
        format!("rkp{}c", self.id)
    }

    /// `tag` tells apart the networks of tests running at once in one process.
    fn create(tag: u32, backends: usize) -> anyhow::Result<Net> {
        let pid = std::process::id();
        let id = format!("{}{tag}", pid % 10_000);
        let subnet = ((pid % 100) * 2 + tag + 20) as u8;
        let mut net = Net { bridge: format!("rkp{id}br"), id, subnet, namespaces: Vec::new(), servers: Vec::new(), _docroots: Vec::new() };
        run(&["ip", "link", "add", &net.bridge, "type", "bridge"])?;
        run(&["ip", "addr", "add", &format!("{}/24", net.host_ip()), "dev", &net.bridge])?;
        run(&["ip", "link", "set", &net.bridge, "up"])?;
        for i in 0..backends {
            let ns = format!("rkp{}b{i}", net.id);
            net.add_namespace(&ns, net.backend_ip(i), i as u8)?;
            let root = tempfile::tempdir()?;
            std::fs::write(root.path().join("index.html"), format!("backend-{i}\n"))?;
            let server = Command::new("ip")
                .args(["netns", "exec", &ns, BUSYBOX, "httpd", "-f", "-p", "8080", "-h"])
                .arg(root.path())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()?;
            net.servers.push(server);
            net._docroots.push(root);
        }
        let client = net.client_ns();
        net.add_namespace(&client, Ipv4Addr::new(100, 64, net.subnet, 20), 99)?;
        Ok(net)
    }

    fn add_namespace(&mut self, ns: &str, ip: Ipv4Addr, n: u8) -> anyhow::Result<()> {
        run(&["ip", "netns", "add", ns])?;
        self.namespaces.push(ns.to_string());
        let host_end = format!("rkp{}v{n}", self.id);
        run(&["ip", "link", "add", &host_end, "type", "veth", "peer", "name", "eth0", "netns", ns])?;
        run(&["ip", "link", "set", &host_end, "master", &self.bridge, "up"])?;
        run(&["ip", "-n", ns, "addr", "add", &format!("{ip}/24"), "dev", "eth0"])?;
        run(&["ip", "-n", ns, "link", "set", "eth0", "up"])?;
        run(&["ip", "-n", ns, "link", "set", "lo", "up"])?;
        run(&["ip", "-n", ns, "route", "add", "default", "via", &self.host_ip().to_string()])?;
        Ok(())
    }

    /// `wget` from the client namespace; the body, or None when the connection failed.
    fn wget_from_client(&self, url: &str) -> Option<String> {
        wget(&self.client_ns(), url)
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for server in &mut self.servers {
            let _ = server.kill();
            let _ = server.wait();
        }
        for ns in &self.namespaces {
            let _ = Command::new("ip").args(["netns", "delete", ns]).status();
        }
        let _ = Command::new("ip").args(["link", "delete", &self.bridge]).status();
    }
}

/// One HTTP GET from the host; the body's first line.
fn http_get(addr: SocketAddr) -> std::io::Result<String> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(3))?;
    stream.set_read_timeout(Some(Duration::from_secs(3)))?;
    stream.write_all(b"GET / HTTP/1.0\r\nHost: test\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    Ok(response.split("\r\n\r\n").nth(1).unwrap_or("").trim().to_string())
}

/// Backends answering `n` requests from `get`.
fn answers(n: usize, get: impl Fn() -> Option<String>) -> std::collections::BTreeMap<String, usize> {
    let mut seen = std::collections::BTreeMap::new();
    for _ in 0..n {
        *seen.entry(get().unwrap_or_else(|| "<failed>".into())).or_insert(0) += 1;
    }
    seen
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.expect("blocking task")
}

/// Some(()) once kube-proxy has written `chain` (connecting is no sign of it: this
/// machine's gateway accepts connections to any address).
fn has_chain(table: &str, chain: &str) -> Option<()> {
    has(table, "chain", chain)
}

/// Some(()) when the table holds the `kind` (chain, set) called `name`.
fn has(table: &str, kind: &str, name: &str) -> Option<()> {
    let status = Command::new("nft").args(["list", kind, "ip", table, name]).stdout(Stdio::null()).stderr(Stdio::null()).status();
    status.ok().filter(|s| s.success()).map(|_| ())
}

fn table_exists(table: &str) -> bool {
    Command::new("nft").args(["list", "table", "ip", table]).stdout(Stdio::null()).stderr(Stdio::null()).status().map(|s| s.success()).unwrap_or(false)
}

async fn wait_for<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> anyhow::Result<T> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(v) = check() {
            return Ok(v);
        }
        if Instant::now() > deadline {
            bail!("timed out waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn start_proxy(cluster: &Cluster, net: &Net, table: &str) -> (CancellationToken, tokio::task::JoinHandle<Result<(), kube_proxy::ProxyError>>) {
    let mut config = kube_proxy::Config::new("node-a");
    config.table = table.to_string();
    config.cluster_cidr = Some(format!("100.64.{}.0/24", net.subnet).parse().expect("cidr"));
    let token = CancellationToken::new();
    let handle = tokio::spawn(kube_proxy::run_with(cluster.client.clone(), Arc::new(NftCommand::default()), config, token.clone()));
    (token, handle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_answer_from_every_ready_backend_linux() -> anyhow::Result<()> {
    if !have_root() {
        return Ok(());
    }
    let net = Net::create(0, 3)?;
    let table = format!("rkp-test-{}", net.id);
    let cluster = Cluster::start().await?;
    let services: Api<Service> = Api::namespaced(cluster.client.clone(), "default");
    let slices: Api<EndpointSlice> = Api::namespaced(cluster.client.clone(), "default");

    let web: Service = serde_json::from_value(json!({
        "metadata": {"name": "web"},
        "spec": {"type": "NodePort", "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}
    }))?;
    let web = services.create(&PostParams::default(), &web).await?;
    let spec = web.spec.context("spec")?;
    let cluster_ip: Ipv4Addr = spec.cluster_ip.context("clusterIP")?.parse()?;
    let node_port = spec.ports.context("ports")?[0].node_port.context("nodePort")? as u16;
    let endpoints: Vec<serde_json::Value> = (0..3)
        .map(|i| json!({"addresses": [net.backend_ip(i).to_string()], "conditions": {"ready": true}, "nodeName": if i == 0 { "node-a" } else { "node-b" }}))
        .collect();
    let slice: EndpointSlice = serde_json::from_value(json!({
        "metadata": {"name": "web-1", "labels": {"kubernetes.io/service-name": "web"}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": endpoints
    }))?;
    slices.create(&PostParams::default(), &slice).await?;
    let empty: Service = serde_json::from_value(json!({"metadata": {"name": "nobody"}, "spec": {"ports": [{"port": 80}]}}))?;
    let empty_ip: Ipv4Addr = services.create(&PostParams::default(), &empty).await?.spec.and_then(|s| s.cluster_ip).context("clusterIP")?.parse()?;

    let (token, proxy) = start_proxy(&cluster, &net, &table);
    let result = async {
        let vip = SocketAddr::from((cluster_ip, 80));
        wait_for("the Service's chain", || has_chain(&table, "service-default/web/tcp/http")).await?;

        // ClusterIP from the host (nat output) spreads over every backend.
        let seen = blocking(move || answers(60, || http_get(vip).ok())).await;
        ensure!(seen.keys().cloned().collect::<Vec<_>>() == ["backend-0", "backend-1", "backend-2"], "from the host: {seen:?}");

        // From a pod on the bridge (nat prerouting, bridged traffic), including the backends' own subnet.
        let url = format!("http://{cluster_ip}/");
        let client = Arc::new(net.client_ns());
        let seen = blocking({
            let url = url.clone();
            let ns = client.clone();
            move || answers(30, || wget(&ns, &url))
        })
        .await;
        ensure!(seen.len() == 3 && !seen.contains_key("<failed>"), "from a pod: {seen:?}");

        // NodePort on the node's address from a pod, and on 127.0.0.1 from the node.
        let np_url = format!("http://{}:{node_port}/", net.host_ip());
        ensure!(net.wget_from_client(&np_url).is_some_and(|b| b.starts_with("backend-")), "NodePort on the node address");
        let local_np = SocketAddr::from(([127, 0, 0, 1], node_port));
        let seen = blocking(move || answers(30, || http_get(local_np).ok())).await;
        ensure!(seen.len() == 3 && !seen.contains_key("<failed>"), "NodePort on 127.0.0.1: {seen:?}");

        // A Service without endpoints refuses at once rather than timing out.
        let started = Instant::now();
        let refused = blocking(move || http_get(SocketAddr::from((empty_ip, 80)))).await;
        ensure!(
            matches!(&refused, Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused),
            "a Service without endpoints: {refused:?}"
        );
        ensure!(started.elapsed() < Duration::from_secs(2), "the REJECT took {:?}", started.elapsed());

        // A backend that stops being ready stops getting traffic.
        let patch = json!({"endpoints": [
            {"addresses": [net.backend_ip(0).to_string()], "conditions": {"ready": true}},
            {"addresses": [net.backend_ip(1).to_string()], "conditions": {"ready": true}},
            {"addresses": [net.backend_ip(2).to_string()], "conditions": {"ready": false}}
        ]});
        slices.patch("web-1", &PatchParams::default(), &Patch::Merge(&patch)).await?;
        let gone = format!("endpoint-default/web/tcp/http__{}/8080", net.backend_ip(2));
        wait_for("backend-2's endpoint chain to go", || has_chain(&table, &gone).is_none().then_some(())).await?;
        let seen = blocking(move || answers(40, || http_get(vip).ok())).await;
        ensure!(seen.keys().cloned().collect::<Vec<_>>() == ["backend-0", "backend-1"], "after backend-2 went unready: {seen:?}");

        // sessionAffinity: ClientIP pins a client to one backend.
        let patch = json!({"spec": {"sessionAffinity": "ClientIP"}});
        services.patch("web", &PatchParams::default(), &Patch::Merge(&patch)).await?;
        let affinity = format!("affinity-default/web/tcp/http__{}/8080", net.backend_ip(0));
        wait_for("the affinity sets", || has(&table, "set", &affinity)).await?;
        let seen = blocking(move || answers(20, || http_get(vip).ok())).await;
        ensure!(seen.len() == 1 && !seen.contains_key("<failed>"), "with ClientIP affinity: {seen:?}");
        Ok::<(), anyhow::Error>(())
    }
    .await;

    token.cancel();
    let stopped = proxy.await;
    let gone = !table_exists(&table);
    if !gone {
        let _ = kube_proxy::cleanup(&table);
    }
    result?;
    stopped??;
    ensure!(gone, "a clean shutdown removes table {table}");
    Ok(())
}

fn wget(ns: &str, url: &str) -> Option<String> {
    // busybox 1.35's `wget -T` crashes; coreutils' timeout bounds it instead.
    let out = Command::new("timeout").args(["5", "ip", "netns", "exec", ns, BUSYBOX, "wget", "-q", "-O", "-", url]).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// A kube-proxy killed without cleanup and started again rewrites its table; a
/// connection opened through a ClusterIP before keeps flowing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_keeps_established_connections_linux() -> anyhow::Result<()> {
    if !have_root() {
        return Ok(());
    }
    let net = Net::create(1, 0)?;
    let table = format!("rkp-restart-{}", net.id);
    let cluster = Cluster::start().await?;
    // An echo server on the node's own bridge address stands for the endpoint.
    let listener = TcpListener::bind((net.host_ip(), 0))?;
    let port = listener.local_addr()?.port();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut stream = stream;
                let mut buf = [0u8; 64];
                while let Ok(n) = stream.read(&mut buf) {
                    if n == 0 || stream.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
    let vip = echo_service(&cluster, "echo", &net, port).await?;

    let (first_token, first) = start_proxy(&cluster, &net, &table);
    let result = async {
        let addr = SocketAddr::from((vip, 7));
        wait_for("the echo Service's chain", || has_chain(&table, "service-default/echo/tcp/7")).await?;
        let mut conn = TcpStream::connect_timeout(&addr, Duration::from_secs(3))?;
        conn.set_read_timeout(Some(Duration::from_secs(3)))?;
        let mut echo = |msg: &[u8]| -> anyhow::Result<Vec<u8>> {
            conn.write_all(msg)?;
            let mut buf = vec![0u8; msg.len()];
            conn.read_exact(&mut buf)?;
            Ok(buf)
        };
        ensure!(echo(b"before")? == b"before");
        // A crash: the task ends without its cleanup, the table stays.
        first.abort();
        let _ = first.await;
        ensure!(table_exists(&table), "the table outlives a crashed kube-proxy");
        let (token, second) = start_proxy(&cluster, &net, &table);
        // A Service created now answers only once the new kube-proxy has written its table.
        echo_service(&cluster, "echo2", &net, port).await?;
        wait_for("the new kube-proxy's first sync", || has_chain(&table, "service-default/echo2/tcp/7")).await?;
        ensure!(echo(b"after")? == b"after", "the connection opened before the restart still flows");
        token.cancel();
        second.await??;
        Ok::<(), anyhow::Error>(())
    }
    .await;
    first_token.cancel();
    if table_exists(&table) {
        let _ = kube_proxy::cleanup(&table);
    }
    result
}

/// A Service on port 7 whose one endpoint is `port` on the node's bridge address.
async fn echo_service(cluster: &Cluster, name: &str, net: &Net, port: u16) -> anyhow::Result<Ipv4Addr> {
    let services: Api<Service> = Api::namespaced(cluster.client.clone(), "default");
    let svc: Service = serde_json::from_value(json!({"metadata": {"name": name}, "spec": {"ports": [{"port": 7, "targetPort": port}]}}))?;
    let vip = services.create(&PostParams::default(), &svc).await?.spec.and_then(|s| s.cluster_ip).context("clusterIP")?.parse()?;
    let slice: EndpointSlice = serde_json::from_value(json!({
        "metadata": {"name": format!("{name}-1"), "labels": {"kubernetes.io/service-name": name}},
        "addressType": "IPv4",
        "ports": [{"port": port, "protocol": "TCP"}],
        "endpoints": [{"addresses": [net.host_ip().to_string()]}]
    }))?;
    Api::<EndpointSlice>::namespaced(cluster.client.clone(), "default").create(&PostParams::default(), &slice).await?;
    Ok(vip)
}
