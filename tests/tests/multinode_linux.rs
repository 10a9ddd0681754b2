//! Privileged multi-node test of the pod network: one machine plays a small LAN of three
//! nodes. A Linux bridge in the host's network namespace is the LAN switch, with the host
//! (which runs the apiserver, controller-manager and scheduler in-process) at
//! `172.31.X.1`; each node is a network namespace `rkube-n<k>-<id>` with a veth into
//! that bridge at `172.31.X.1<k>`, running the real `kubelet` binary. The test checks
//! what flannel's host-gw and the CNI bridge plugin's `ipMasq` give a real cluster:
//! a pod reaches a pod on another node by its pod IP and is seen by it under that IP
//! (routes, no NAT), a pod reaching the LAN host is masqueraded to its node's address,
//! and a departed node's route goes away. Everything is torn down at the end, on failure
//! too, and the test checks that nothing is left. Needs root (CI runs it as root).
//!
//! The kubelets are started with `nsenter --net=/run/netns/<ns>`, not `ip netns exec`:
//! the latter also gives the process a mount namespace of its own with a fresh `/sys`,
//! which would hide the cgroup hierarchies from the kubelet and its mounts from the
//! teardown. Any other per-node process (kube-proxy, say) starts the same way: see
//! [`Lan::start_in_node`].

use std::collections::BTreeMap;
use std::fs;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, DeleteParams, LogParams, PostParams};
use kubelet::runtime::sandbox::Ipv4Cidr;
use rkube_tests::cluster::eventually;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

/// How many nodes the LAN has.
const NODES: u8 = 3;
/// The route protocol number the kubelet marks its host-gw routes with.
const ROUTE_PROTO: &str = "114";
const BUSYBOX: &str = "docker.io/library/busybox:latest";

/// True when the test may run; false (after saying why) when it must be skipped.
fn may_run() -> bool {
    let missing = missing_prerequisite();
    let Some(reason) = missing else { return true };
    assert!(
        std::env::var_os("CI").is_none(),
        "multinode_linux cannot run, and CI must run it: {reason}"
    );
    println!("skipped: {reason}");
    false
}

fn missing_prerequisite() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("needs root".into());
    }
    for tool in ["ip", "nft", "nsenter"] {
        let found = Command::new(tool)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok();
        if !found {
            return Some(format!("needs the `{tool}` command"));
        }
    }
    if !Path::new("/bin/busybox").exists() {
        return Some("needs a static busybox at /bin/busybox (busybox-static)".into());
    }
    match workspace_binary("kubelet") {
        Ok(path) if path.is_file() => None,
        Ok(path) => Some(format!(
            "no kubelet binary at {} (build it first: cargo build --workspace --all-targets)",
            path.display()
        )),
        Err(e) => Some(format!("cannot locate the kubelet binary: {e}")),
    }
}

/// `target/<profile>/<name>`, beside the `deps/` directory this test runs from: where
/// `cargo build --workspace --all-targets` puts the workspace's binaries.
fn workspace_binary(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .context("the test executable has no target directory above it")?;
    Ok(profile_dir.join(name))
}

/// Runs a command; its stdout on success, an error with its output otherwise.
fn run(program: &str, args: &[&str]) -> anyhow::Result<String> {
    let output = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {program} {}", args.join(" ")))?;
    ensure!(
        output.status.success(),
        "`{program} {}` failed ({}): {}",
        args.join(" "),
        output.status,
        String::from_utf8_lossy(&output.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// The names and addresses of one test run; `id` keeps concurrent runs apart.
#[derive(Debug, Clone)]
struct Names {
    id: String,
    /// The third octet of the LAN (`172.31.X.0/24`) and second of the cluster CIDR.
    octet: u8,
}

impl Names {
    /// A fresh id, and an octet whose LAN and cluster CIDR the host does not route yet.
    fn pick() -> anyhow::Result<Names> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or_default();
        let seed = std::process::id() ^ nanos;
        let id = format!("{:04x}", seed & 0xffff);
        let routes = run("ip", &["-4", "route", "show", "table", "all"])?;
        let addresses = run("ip", &["-4", "-o", "addr", "show"])?;
        for step in 0..150u32 {
            let octet = u8::try_from(100 + (seed + step) % 150).unwrap_or(100);
            let taken = [format!("172.31.{octet}."), format!("10.{octet}.")]
                .iter()
                .any(|prefix| {
                    routes
                        .lines()
                        .chain(addresses.lines())
                        .any(|l| l.contains(prefix.as_str()))
                });
            if !taken {
                return Ok(Names { id, octet });
            }
        }
        bail!("no free 172.31.X.0/24 and 10.X.0.0/16 for the test LAN")
    }

    fn lan_bridge(&self) -> String {
        format!("rkl-{}", self.id)
    }
    fn host_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(172, 31, self.octet, 1)
    }
    fn cluster_cidr(&self) -> String {
        format!("10.{}.0.0/16", self.octet)
    }
    fn netns(&self, k: u8) -> String {
        format!("rkube-n{k}-{}", self.id)
    }
    fn host_veth(&self, k: u8) -> String {
        format!("rkv{k}-{}", self.id)
    }
    fn node_bridge(&self, k: u8) -> String {
        format!("rkb{k}-{}", self.id)
    }
    fn node_name(&self, k: u8) -> String {
        format!("mn-{}-n{k}", self.id)
    }
    fn node_ip(&self, k: u8) -> Ipv4Addr {
        Ipv4Addr::new(172, 31, self.octet, 10 + k)
    }
    fn cgroup_root(&self, k: u8) -> String {
        format!("rkube-mn-{}-n{k}", self.id)
    }
}

/// One node: its namespace is `names.netns(k)`; its kubelet and any other daemons
/// ([`Lan::start_in_node`]) are child processes.
struct NodeProc {
    k: u8,
    log: PathBuf,
    kubelet: Option<Child>,
    /// Other per-node processes (name, process), stopped before the kubelet.
    daemons: Vec<(String, Child)>,
    netns_created: bool,
}

/// The test LAN and everything on it; [`Lan::cleanup`] (or dropping it) removes it all.
struct Lan {
    names: Names,
    dir: PathBuf,
    kubelet: PathBuf,
    kubeconfig: PathBuf,
    nodes: Vec<NodeProc>,
    bridge_created: bool,
    blackhole_added: bool,
    cleaned: bool,
}

impl Lan {
    /// Builds the LAN: the host bridge with the host's address, a safety route that keeps
    /// cluster-CIDR traffic on this machine, and one namespace per node with its veth.
    fn create(names: Names, dir: &Path) -> anyhow::Result<Lan> {
        let mut lan = Lan {
            names,
            dir: dir.to_path_buf(),
            kubelet: workspace_binary("kubelet")?,
            kubeconfig: dir.join("apiserver/admin.kubeconfig"),
            nodes: Vec::new(),
            bridge_created: false,
            blackhole_added: false,
            cleaned: false,
        };
        let n = lan.names.clone();
        let bridge = n.lan_bridge();
        run("ip", &["link", "add", "name", &bridge, "type", "bridge"])?;
        lan.bridge_created = true;
        run(
            "ip",
            &[
                "addr",
                "add",
                &format!("{}/24", n.host_ip()),
                "dev",
                &bridge,
            ],
        )?;
        run("ip", &["link", "set", "dev", &bridge, "up"])?;
        // Should anything leak a pod address toward the host (a broken masquerade), its
        // replies must not follow the host's default route off this machine.
        run("ip", &["route", "add", "unreachable", &n.cluster_cidr()])?;
        lan.blackhole_added = true;
        for k in 1..=NODES {
            let ns = n.netns(k);
            run("ip", &["netns", "add", &ns])?;
            lan.nodes.push(NodeProc {
                k,
                log: dir.join(format!("kubelet-n{k}.log")),
                kubelet: None,
                daemons: Vec::new(),
                netns_created: true,
            });
            let veth = n.host_veth(k);
            run(
                "ip",
                &[
                    "link", "add", "name", &veth, "type", "veth", "peer", "name", "lan0", "netns",
                    &ns,
                ],
            )?;
            run(
                "ip",
                &["link", "set", "dev", &veth, "master", &bridge, "up"],
            )?;
            run(
                "ip",
                &[
                    "-n",
                    &ns,
                    "addr",
                    "add",
                    &format!("{}/24", n.node_ip(k)),
                    "dev",
                    "lan0",
                ],
            )?;
            run("ip", &["-n", &ns, "link", "set", "dev", "lan0", "up"])?;
            run("ip", &["-n", &ns, "link", "set", "dev", "lo", "up"])?;
        }
        Ok(lan)
    }

    /// Starts `program args` inside node `k`'s network namespace (and only that: mounts,
    /// cgroups and /sys stay the host's), output to `log`.
    fn spawn_in_node(
        &self,
        k: u8,
        program: &Path,
        args: &[String],
        log: &Path,
    ) -> anyhow::Result<Child> {
        let out = fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let err = out.try_clone()?;
        Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.names.netns(k)))
            .arg("--")
            .arg(program)
            .args(args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("starting {} in node {k}", program.display()))
    }

    /// The flags that make node `k`'s kubelet (and its `--teardown`).
    fn kubelet_args(&self, k: u8) -> Vec<String> {
        let n = &self.names;
        let root = self.dir.join(format!("n{k}"));
        [
            "--kubeconfig",
            &self.kubeconfig.to_string_lossy(),
            "--hostname-override",
            &n.node_name(k),
            "--node-ip",
            &n.node_ip(k).to_string(),
            "--root-dir",
            &root.to_string_lossy(),
            "--bridge-name",
            &n.node_bridge(k),
            "--cgroup-root",
            &n.cgroup_root(k),
            "--cluster-cidr",
            &n.cluster_cidr(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    }

    fn start_kubelet(&mut self, k: u8) -> anyhow::Result<()> {
        let index = usize::from(k - 1);
        let log = self.nodes[index].log.clone();
        let child = self.spawn_in_node(k, &self.kubelet, &self.kubelet_args(k), &log)?;
        self.nodes[index].kubelet = Some(child);
        Ok(())
    }

    /// Starts another per-node process (a kube-proxy, say) in node `k`'s namespace, e.g.
    /// `start_in_node(k, "kube-proxy", &workspace_binary("kube-proxy")?, &["--kubeconfig",
    /// …, "--hostname-override", &names.node_name(k)])`; its log is
    /// `DIR/<name>-n<k>.log`. It is stopped (SIGTERM) before the node's kubelet, and the
    /// leftover check reports it if it still runs.
    #[allow(dead_code)] // the hook for per-node daemons beyond the kubelet
    fn start_in_node(
        &mut self,
        k: u8,
        name: &str,
        program: &Path,
        args: &[String],
    ) -> anyhow::Result<()> {
        let log = self.dir.join(format!("{name}-n{k}.log"));
        let child = self.spawn_in_node(k, program, args, &log)?;
        let node = self
            .nodes
            .get_mut(usize::from(k - 1))
            .context("no such node")?;
        node.daemons.push((name.to_string(), child));
        Ok(())
    }

    /// Stops node `k`'s processes, its other daemons first and then its kubelet.
    fn stop_node(&mut self, k: u8) {
        let Some(node) = self.nodes.get_mut(usize::from(k - 1)) else {
            return;
        };
        for (_, child) in node.daemons.drain(..) {
            stop(child);
        }
        if let Some(child) = node.kubelet.take() {
            stop(child);
        }
    }

    /// Stops node `k`'s kubelet, runs `kubelet --teardown` in its namespace, and returns
    /// whatever of the node is still there (checked before the namespace goes, since
    /// deleting a namespace would hide leftovers inside it).
    fn teardown_node(&mut self, k: u8) -> Vec<String> {
        self.stop_node(k);
        let mut problems = Vec::new();
        let Some(node) = self.nodes.get(usize::from(k - 1)) else {
            return problems;
        };
        if !node.netns_created {
            return problems;
        }
        let log = self.dir.join(format!("teardown-n{k}.log"));
        let torn_down = self
            .spawn_in_node(
                k,
                &self.kubelet,
                &[self.kubelet_args(k), vec!["--teardown".into()]].concat(),
                &log,
            )
            .and_then(|mut child| Ok(child.wait()?));
        match torn_down {
            Ok(status) if status.success() => {}
            Ok(status) => problems.push(format!(
                "kubelet --teardown of node {k} failed ({status}): {}",
                fs::read_to_string(&log).unwrap_or_default()
            )),
            Err(e) => problems.push(format!("kubelet --teardown of node {k}: {e:#}")),
        }
        let n = &self.names;
        let ns = n.netns(k);
        match run(
            "ip",
            &["-n", &ns, "-4", "route", "show", "proto", ROUTE_PROTO],
        ) {
            Ok(routes) if routes.trim().is_empty() => {}
            Ok(routes) => problems.push(format!("node {k} keeps routes: {routes}")),
            Err(e) => problems.push(format!("{e:#}")),
        }
        match run(
            "nsenter",
            &[&format!("--net=/run/netns/{ns}"), "nft", "list", "tables"],
        ) {
            Ok(tables) if !tables.contains("rkube") => {}
            Ok(tables) => problems.push(format!("node {k} keeps nftables tables: {tables}")),
            Err(e) => problems.push(format!("{e:#}")),
        }
        match run("ip", &["-n", &ns, "-o", "link", "show"]) {
            Ok(links) => {
                let names: Vec<&str> = links
                    .lines()
                    .filter_map(|l| l.split(": ").nth(1))
                    .map(|name| name.split('@').next().unwrap_or(name))
                    .filter(|name| !["lo", "lan0"].contains(name))
                    .collect();
                if !names.is_empty() {
                    problems.push(format!("node {k} keeps links {names:?}"));
                }
            }
            Err(e) => problems.push(format!("{e:#}")),
        }
        problems
    }

    /// Removes everything (idempotent) and returns what is still there afterwards.
    fn cleanup(&mut self) -> Vec<String> {
        self.cleaned = true;
        let mut problems = Vec::new();
        for k in 1..=NODES {
            if self
                .nodes
                .get(usize::from(k - 1))
                .is_some_and(|n| n.netns_created)
            {
                problems.extend(self.teardown_node(k));
            }
        }
        let n = self.names.clone();
        for node in &mut self.nodes {
            if node.netns_created {
                // The veth pair goes with its host end at once; a namespace's own links
                // are destroyed by the kernel a little after `netns del` returns.
                let veth = n.host_veth(node.k);
                if run("ip", &["link", "show", "dev", &veth]).is_ok() {
                    if let Err(e) = run("ip", &["link", "del", "dev", &veth]) {
                        problems.push(format!("{e:#}"));
                    }
                }
                if let Err(e) = run("ip", &["netns", "del", &n.netns(node.k)]) {
                    problems.push(format!("{e:#}"));
                }
                node.netns_created = false;
            }
        }
        if self.blackhole_added {
            if let Err(e) = run("ip", &["route", "del", "unreachable", &n.cluster_cidr()]) {
                problems.push(format!("{e:#}"));
            }
            self.blackhole_added = false;
        }
        if self.bridge_created {
            if let Err(e) = run("ip", &["link", "del", "dev", &n.lan_bridge()]) {
                problems.push(format!("{e:#}"));
            }
            self.bridge_created = false;
        }
        problems.extend(self.leftovers());
        problems
    }

    /// What of this run the host still has: namespaces, links, routes, nftables tables,
    /// mounts, cgroups, kubelet processes.
    fn leftovers(&mut self) -> Vec<String> {
        let n = self.names.clone();
        let mut found = Vec::new();
        let netns = run("ip", &["netns", "list"]).unwrap_or_default();
        found.extend(
            (1..=NODES)
                .map(|k| n.netns(k))
                .filter(|ns| netns.contains(ns.as_str()))
                .map(|ns| format!("netns {ns}")),
        );
        let links = run("ip", &["-o", "link", "show"]).unwrap_or_default();
        for link in std::iter::once(n.lan_bridge()).chain((1..=NODES).map(|k| n.host_veth(k))) {
            if links.contains(&format!(": {link}:")) || links.contains(&format!(": {link}@")) {
                found.push(format!("link {link}"));
            }
        }
        let routes = run("ip", &["-4", "route", "show", "table", "all"]).unwrap_or_default();
        found.extend(
            routes
                .lines()
                .filter(|l| {
                    l.contains(&format!("10.{}.", n.octet))
                        || l.contains(&format!("172.31.{}.", n.octet))
                })
                .map(|l| format!("route {l}")),
        );
        let tables = run("nft", &["list", "tables"]).unwrap_or_default();
        found.extend(
            tables
                .lines()
                .filter(|l| l.contains(&n.id))
                .map(|l| format!("nftables {l}")),
        );
        let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        found.extend(
            mountinfo
                .lines()
                .filter_map(|l| l.split(' ').nth(4))
                .filter(|point| Path::new(point).starts_with(&self.dir))
                .map(|point| format!("mount {point}")),
        );
        for k in 1..=NODES {
            let name = n.cgroup_root(k);
            let hierarchies = fs::read_dir("/sys/fs/cgroup")
                .map(|entries| entries.flatten().map(|e| e.path()).collect::<Vec<_>>())
                .unwrap_or_default();
            for dir in std::iter::once(PathBuf::from("/sys/fs/cgroup")).chain(hierarchies) {
                if dir.join(&name).is_dir() {
                    found.push(format!("cgroup {}", dir.join(&name).display()));
                }
            }
        }
        for node in &mut self.nodes {
            let k = node.k;
            let processes = node.kubelet.iter_mut().map(|c| ("kubelet", c));
            let daemons = node.daemons.iter_mut().map(|(name, c)| (name.as_str(), c));
            for (name, child) in processes.chain(daemons) {
                if matches!(child.try_wait(), Ok(None)) {
                    found.push(format!("{name} of node {k} still running"));
                }
            }
        }
        found
    }

    /// The last lines of each kubelet's log (for a failure report).
    fn log_tails(&self) -> String {
        let mut out = String::new();
        for node in &self.nodes {
            let text = fs::read_to_string(&node.log).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            out.push_str(&format!(
                "--- kubelet of node {} ({}):\n",
                node.k,
                node.log.display()
            ));
            for line in &lines[lines.len().saturating_sub(40)..] {
                out.push_str(line);
                out.push('\n');
            }
        }
        out
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        if !self.cleaned {
            let problems = self.cleanup();
            if !problems.is_empty() {
                eprintln!("multinode_linux cleanup left: {problems:#?}");
            }
        }
    }
}

/// Stops a child process: SIGTERM, then SIGKILL after 15 s.
fn stop(mut child: Child) {
    if let Ok(pid) = i32::try_from(child.id()) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGTERM,
        );
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match child.try_wait() {
            Ok(Some(_)) | Err(_) => return,
            Ok(None) if Instant::now() > deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// The in-process control plane, bound to the LAN host's address.
struct ControlPlane {
    client: kube::Client,
    shutdown: CancellationToken,
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn start_control_plane(names: &Names, dir: &Path) -> anyhow::Result<ControlPlane> {
    let data_dir = dir.join("apiserver");
    let config = apiserver::Config {
        data_dir: data_dir.clone(),
        bind: SocketAddr::from((names.host_ip(), 0)),
        etcd_servers: vec![],
        service_ranges: apiserver::admission::ServiceRanges::parse("10.43.0.0/16", "30000-32767")
            .map_err(anyhow::Error::msg)?,
        advertise_address: IpAddr::V4(names.host_ip()),
    };
    let shutdown = CancellationToken::new();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let token = shutdown.clone();
    tokio::spawn(async move {
        if let Err(e) = apiserver::run(config, token, Some(tx)).await {
            eprintln!("test apiserver failed: {e:#}");
        }
    });
    rx.await.context("the apiserver stopped before serving")?;
    let kubeconfig = data_dir.join("admin.kubeconfig");
    let client = component_base::client::client(Some(&kubeconfig)).await?;
    let cm = controller_manager::Config {
        kubeconfig: Some(kubeconfig.clone()),
        controllers: vec!["*".into()],
        leader_elect: false,
        cluster_cidr: Some(names.cluster_cidr()),
        node_cidr_mask_size: 24,
        ..Default::default()
    };
    let token = shutdown.child_token();
    tokio::spawn(async move {
        if let Err(e) = controller_manager::run(cm, token).await {
            eprintln!("controller-manager stopped: {e:#}");
        }
    });
    let sched = scheduler::Config {
        kubeconfig: Some(kubeconfig),
        leader_elect: false,
        ..Default::default()
    };
    tokio::spawn(scheduler::run(sched, shutdown.child_token()));
    Ok(ControlPlane { client, shutdown })
}

/// A busybox pod pinned to `node` running `script` with `sh -c`.
fn busybox_pod(name: &str, node: &str, script: &str, restart: &str) -> anyhow::Result<Pod> {
    Ok(serde_json::from_value(serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "nodeName": node,
            "restartPolicy": restart,
            "terminationGracePeriodSeconds": 1,
            "containers": [{
                "name": name,
                "image": BUSYBOX,
                "imagePullPolicy": "Never",
                "command": ["sh", "-c", script],
            }],
        },
    }))?)
}

fn pod_cidr(node: &Node) -> Option<String> {
    node.spec.as_ref().and_then(|s| s.pod_cidr.clone())
}

fn ready(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn phase(pod: &Pod) -> &str {
    pod.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("")
}

fn pod_ip(pod: &Pod) -> Option<Ipv4Addr> {
    pod.status.as_ref()?.pod_ip.as_deref()?.parse().ok()
}

/// Waits until the pod has finished; returns it with its log.
async fn finished(pods: &Api<Pod>, name: &str) -> anyhow::Result<(Pod, String)> {
    let pod = eventually(
        Duration::from_secs(90),
        &format!("pod {name} to finish"),
        || {
            let pods = pods.clone();
            let name = name.to_string();
            async move {
                Ok(pods
                    .get_opt(&name)
                    .await?
                    .filter(|p| matches!(phase(p), "Succeeded" | "Failed")))
            }
        },
    )
    .await?;
    let log = pods
        .logs(name, &LogParams::default())
        .await
        .unwrap_or_else(|e| format!("(no log: {e})"));
    Ok((pod, log))
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

/// Our routes in node `k`'s namespace: destination → gateway.
fn node_routes(names: &Names, k: u8) -> anyhow::Result<BTreeMap<String, String>> {
    let text = run(
        "ip",
        &[
            "-n",
            &names.netns(k),
            "-4",
            "route",
            "show",
            "proto",
            ROUTE_PROTO,
        ],
    )?;
    Ok(text
        .lines()
        .filter_map(|l| {
            let words: Vec<&str> = l.split_whitespace().collect();
            let via = words.iter().position(|w| *w == "via")?;
            Some((words.first()?.to_string(), words.get(via + 1)?.to_string()))
        })
        .collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pods_on_different_nodes_talk_without_nat_and_egress_is_masqueraded() -> anyhow::Result<()>
{
    if !may_run() {
        return Ok(());
    }
    let dir = tempfile::Builder::new()
        .prefix("rkube-multinode-")
        .tempdir()?;
    let names = Names::pick()?;
    println!(
        "test LAN 172.31.{}.0/24, cluster CIDR {}, id {}",
        names.octet,
        names.cluster_cidr(),
        names.id
    );
    let mut lan = Lan::create(names.clone(), dir.path())?;
    let result = scenario(&mut lan, &names, dir.path()).await;
    if result.is_err() {
        eprintln!("{}", lan.log_tails());
    }
    let leftovers = lan.cleanup();
    result?;
    ensure!(leftovers.is_empty(), "left behind: {leftovers:#?}");
    Ok(())
}

async fn scenario(lan: &mut Lan, names: &Names, dir: &Path) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut timings: Vec<(&str, Duration)> = Vec::new();
    let control_plane = start_control_plane(names, dir).await?;
    let client = control_plane.client.clone();
    for k in 1..=NODES {
        lan.start_kubelet(k)?;
    }

    // Every node registers, gets a podCIDR from node IPAM and turns Ready.
    let nodes: Api<Node> = Api::all(client.clone());
    let mut cidrs: BTreeMap<u8, String> = BTreeMap::new();
    for k in 1..=NODES {
        let name = names.node_name(k);
        let node = eventually(
            Duration::from_secs(90),
            &format!("node {name} Ready with a podCIDR"),
            || {
                let nodes = nodes.clone();
                let name = name.clone();
                async move {
                    Ok(nodes
                        .get_opt(&name)
                        .await?
                        .filter(|n| ready(n) && pod_cidr(n).is_some()))
                }
            },
        )
        .await?;
        cidrs.insert(k, pod_cidr(&node).unwrap_or_default());
    }
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
        let table = run(
            "nsenter",
            &[
                &format!("--net=/run/netns/{}", names.netns(k)),
                "nft",
                "list",
                "table",
                "ip",
                &format!("rkube-podnet-{}", names.node_bridge(k)),
            ],
        )?;
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
    let web = eventually(
        Duration::from_secs(90),
        "pod web Running with an IP",
        || {
            let pods = pods.clone();
            async move {
                Ok(pods
                    .get_opt("web")
                    .await?
                    .filter(|p| phase(p) == "Running" && pod_ip(p).is_some()))
            }
        },
    )
    .await?;
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
    println!("timings (from the control plane's start unless noted):");
    for (what, when) in &timings {
        println!("  {what}: {:.2} s", when.as_secs_f64());
    }
    Ok(())
}
