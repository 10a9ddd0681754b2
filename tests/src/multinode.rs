//! A small LAN of real nodes on one machine, for privileged multi-node tests. A Linux
//! bridge in the host's network namespace is the LAN switch, with the host (which runs
//! the apiserver, controller-manager and scheduler in-process, see
//! [`start_control_plane`]) at `172.31.X.1`; node `k` is a network namespace
//! `rkube-n<k>-<id>` with a veth into that bridge at `172.31.X.1<k>`, running the real
//! `kubelet` and `kube-proxy` binaries ([`Lan::start_node`]). [`Lan::cleanup`] (or
//! dropping the [`Lan`]) stops them, tears every node down and reports whatever of the
//! run the host still has: namespaces, links, routes, nftables tables, mounts, cgroups,
//! processes. Needs root.
//!
//! The node processes are started with `nsenter --net=/run/netns/<ns>`, not
//! `ip netns exec`: the latter also gives the process a mount namespace of its own with a
//! fresh `/sys`, which would hide the cgroup hierarchies from the kubelet and its mounts
//! from the teardown. Any other per-node process starts the same way: see
//! [`Lan::start_in_node`].
//!
//! A test goes: [`may_run`] → [`Names::pick`] → [`Lan::create`] →
//! [`start_control_plane`] → [`Lan::start_node`] for each node → [`nodes_ready`] → pods
//! ([`busybox_pod`], [`running`], [`finished`]) → [`Lan::cleanup`], whose answer must be
//! empty.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use futures::future::LocalBoxFuture;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, LogParams};
use tokio_util::sync::CancellationToken;

use crate::cluster::eventually;

/// The route protocol number the kubelet marks its host-gw routes with.
pub const ROUTE_PROTO: &str = "114";
/// The image every node has, built offline from the host's static busybox.
pub const BUSYBOX: &str = "docker.io/library/busybox:latest";
/// The Service range of the test control plane.
pub const SERVICE_CIDR: &str = "10.43.0.0/16";
/// How long a stopped process gets between SIGTERM and SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(15);

/// True when a multi-node test may run; false (after saying why) when it must be
/// skipped. Under CI (`CI` set) a missing prerequisite fails the test instead.
pub fn may_run(test: &str) -> bool {
    let Some(reason) = missing_prerequisite() else {
        return true;
    };
    assert!(
        std::env::var_os("CI").is_none(),
        "{test} cannot run, and CI must run it: {reason}"
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
    for binary in ["kubelet", "kube-proxy"] {
        match workspace_binary(binary) {
            Ok(path) if path.is_file() => {}
            Ok(path) => {
                return Some(format!(
                "no {binary} binary at {} (build it first: cargo build --workspace --all-targets)",
                path.display()
            ))
            }
            Err(e) => return Some(format!("cannot locate the {binary} binary: {e}")),
        }
    }
    None
}

/// `target/<profile>/<name>`, beside the `deps/` directory the running test executable
/// is in: where `cargo build --workspace --all-targets` puts the workspace's binaries.
pub fn workspace_binary(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .context("the test executable has no target directory above it")?;
    Ok(profile_dir.join(name))
}

/// Runs a command; its stdout on success, an error with its stderr otherwise.
pub fn run(program: &str, args: &[&str]) -> anyhow::Result<String> {
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

/// Runs a command in network namespace `netns` (only that one: see the module comment).
pub fn run_in_netns(netns: &str, program: &str, args: &[&str]) -> anyhow::Result<String> {
    let net = format!("--net=/run/netns/{netns}");
    run("nsenter", &[&[net.as_str(), "--", program], args].concat())
}

/// Octets and ids handed out in this process, so that tests running side by side in one
/// test binary never pick the same LAN.
static TAKEN: Mutex<BTreeSet<u32>> = Mutex::new(BTreeSet::new());
static PICKS: AtomicU32 = AtomicU32::new(0);

/// The names and addresses of one test run; `id` keeps concurrent runs apart.
#[derive(Debug, Clone)]
pub struct Names {
    /// Four hex digits in every name the run gives a host object.
    pub id: String,
    /// The third octet of the LAN (`172.31.X.0/24`) and second of the cluster CIDR.
    pub octet: u8,
}

impl Names {
    /// A fresh id, and an octet whose LAN and cluster CIDR the host does not route yet.
    pub fn pick() -> anyhow::Result<Names> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or_default();
        let pick = PICKS.fetch_add(1, Ordering::Relaxed);
        let seed = std::process::id() ^ nanos ^ pick.wrapping_mul(0x9e37_79b9);
        let routes = run("ip", &["-4", "route", "show", "table", "all"])?;
        let addresses = run("ip", &["-4", "-o", "addr", "show"])?;
        let mut taken = TAKEN.lock().unwrap_or_else(|e| e.into_inner());
        for step in 0..150u32 {
            let octet = u8::try_from(100 + (seed + step) % 150).unwrap_or(100);
            let id = (seed.wrapping_add(step.wrapping_mul(0x1f1f))) & 0xffff;
            // Ids live above 0xffff in `taken`, octets below 256.
            if taken.contains(&u32::from(octet)) || taken.contains(&(0x1_0000 | id)) {
                continue;
            }
            let routed = [format!("172.31.{octet}."), format!("10.{octet}.")]
                .iter()
                .any(|prefix| {
                    routes
                        .lines()
                        .chain(addresses.lines())
                        .any(|l| l.contains(prefix.as_str()))
                });
            if !routed {
                taken.insert(u32::from(octet));
                taken.insert(0x1_0000 | id);
                return Ok(Names {
                    id: format!("{id:04x}"),
                    octet,
                });
            }
        }
        bail!("no free 172.31.X.0/24 and 10.X.0.0/16 for the test LAN")
    }

    pub fn lan_bridge(&self) -> String {
        format!("rkl-{}", self.id)
    }
    pub fn host_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(172, 31, self.octet, 1)
    }
    pub fn cluster_cidr(&self) -> String {
        format!("10.{}.0.0/16", self.octet)
    }
    pub fn netns(&self, k: u8) -> String {
        format!("rkube-n{k}-{}", self.id)
    }
    pub fn host_veth(&self, k: u8) -> String {
        format!("rkv{k}-{}", self.id)
    }
    pub fn node_bridge(&self, k: u8) -> String {
        format!("rkb{k}-{}", self.id)
    }
    pub fn node_name(&self, k: u8) -> String {
        format!("mn-{}-n{k}", self.id)
    }
    pub fn node_ip(&self, k: u8) -> Ipv4Addr {
        Ipv4Addr::new(172, 31, self.octet, 10 + k)
    }
    pub fn cgroup_root(&self, k: u8) -> String {
        format!("rkube-mn-{}-n{k}", self.id)
    }
    /// The nftables table (family ip) of every node's kube-proxy, in that node's netns.
    pub fn kube_proxy_table(&self) -> String {
        format!("rkube-proxy-{}", self.id)
    }
}

/// One conntrack entry: the connection as its first packet had it (`original`) and as
/// its replies are expected (`reply`), each as (source, destination, source port,
/// destination port). A DNAT shows as `reply.0 != original.1`, an SNAT as
/// `reply.1 != original.0`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conntrack {
    pub protocol: String,
    pub original: (Ipv4Addr, Ipv4Addr, u16, u16),
    pub reply: (Ipv4Addr, Ipv4Addr, u16, u16),
}

impl Conntrack {
    /// Parses a line of `/proc/net/nf_conntrack` (IPv4 TCP or UDP; None for others).
    pub fn parse(line: &str) -> Option<Conntrack> {
        let words: Vec<&str> = line.split_whitespace().collect();
        let protocol = words.get(2)?.to_string();
        let values =
            |key: &str| -> Vec<&str> { words.iter().filter_map(|w| w.strip_prefix(key)).collect() };
        let (src, dst) = (values("src="), values("dst="));
        let (sport, dport) = (values("sport="), values("dport="));
        let tuple = |i: usize| -> Option<(Ipv4Addr, Ipv4Addr, u16, u16)> {
            Some((
                src.get(i)?.parse().ok()?,
                dst.get(i)?.parse().ok()?,
                sport.get(i)?.parse().ok()?,
                dport.get(i)?.parse().ok()?,
            ))
        };
        Some(Conntrack {
            protocol,
            original: tuple(0)?,
            reply: tuple(1)?,
        })
    }
}

/// A process the harness started in a node, with its log.
struct NodeProcess {
    name: String,
    child: Child,
    log: PathBuf,
}

/// One node: its namespace is `names.netns(k)`; its kubelet and other daemons are child
/// processes.
struct NodeState {
    k: u8,
    kubelet: Option<NodeProcess>,
    /// Other per-node processes, stopped before the kubelet.
    daemons: Vec<NodeProcess>,
    /// Logs of every process ever started here (for [`Lan::log_tails`]).
    logs: Vec<(String, PathBuf)>,
    /// The table of a kube-proxy started here, checked gone at teardown.
    kube_proxy_table: Option<String>,
    /// The data directory of an `rkube server` or `rkube agent` run here, torn down
    /// with `rkube down` instead of `kubelet --teardown`.
    rkube_dir: Option<PathBuf>,
    netns_created: bool,
}

/// The test LAN and everything on it; [`Lan::cleanup`] (or dropping it) removes it all.
pub struct Lan {
    names: Names,
    dir: PathBuf,
    kubelet: PathBuf,
    kube_proxy: PathBuf,
    kubeconfig: PathBuf,
    nodes: Vec<NodeState>,
    /// Processes that did not stop cleanly when asked, reported by [`Lan::cleanup`].
    unclean_stops: Vec<String>,
    bridge_created: bool,
    blackhole_added: bool,
    cleaned: bool,
}

impl Lan {
    /// Builds the LAN of `node_count` nodes under `dir` (which also holds the control
    /// plane's data, see [`start_control_plane`]): the host bridge with the host's
    /// address, a safety route that keeps cluster-CIDR traffic on this machine, and one
    /// namespace per node with its veth. Nothing runs in the nodes yet.
    pub fn create(names: Names, dir: &Path, node_count: u8) -> anyhow::Result<Lan> {
        let mut lan = Lan {
            names,
            dir: dir.to_path_buf(),
            kubelet: workspace_binary("kubelet")?,
            kube_proxy: workspace_binary("kube-proxy")?,
            kubeconfig: dir.join("apiserver/admin.kubeconfig"),
            nodes: Vec::new(),
            unclean_stops: Vec::new(),
            bridge_created: false,
            blackhole_added: false,
            cleaned: false,
        };
        // On an error the half-built LAN is dropped, which removes what was made.
        let n = lan.names.clone();
        let bridge = n.lan_bridge();
        run("ip", &["link", "add", "name", &bridge, "type", "bridge"])?;
        lan.bridge_created = true;
        let host_cidr = format!("{}/24", n.host_ip());
        run("ip", &["addr", "add", &host_cidr, "dev", &bridge])?;
        run("ip", &["link", "set", "dev", &bridge, "up"])?;
        // Should anything leak a pod address toward the host (a broken masquerade), its
        // replies must not follow the host's default route off this machine.
        run("ip", &["route", "add", "unreachable", &n.cluster_cidr()])?;
        lan.blackhole_added = true;
        for k in 1..=node_count {
            let ns = n.netns(k);
            run("ip", &["netns", "add", &ns])?;
            lan.nodes.push(NodeState {
                k,
                kubelet: None,
                daemons: Vec::new(),
                logs: Vec::new(),
                kube_proxy_table: None,
                rkube_dir: None,
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
            let node_cidr = format!("{}/24", n.node_ip(k));
            run("ip", &["-n", &ns, "addr", "add", &node_cidr, "dev", "lan0"])?;
            run("ip", &["-n", &ns, "link", "set", "dev", "lan0", "up"])?;
            run("ip", &["-n", &ns, "link", "set", "dev", "lo", "up"])?;
        }
        Ok(lan)
    }

    pub fn names(&self) -> &Names {
        &self.names
    }

    /// The directory of the run: node roots, logs, the control plane's data.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The nodes' numbers, `1..=node_count`.
    pub fn node_numbers(&self) -> impl Iterator<Item = u8> + '_ {
        self.nodes.iter().map(|n| n.k)
    }

    /// The admin kubeconfig the control plane writes, which the node processes use.
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    fn node(&self, k: u8) -> anyhow::Result<&NodeState> {
        self.nodes
            .get(usize::from(k).wrapping_sub(1))
            .with_context(|| format!("no node {k}"))
    }

    fn node_mut(&mut self, k: u8) -> anyhow::Result<&mut NodeState> {
        self.nodes
            .get_mut(usize::from(k).wrapping_sub(1))
            .with_context(|| format!("no node {k}"))
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
            .env("NO_COLOR", "1")
            // An error's message, not a page of anyhow backtrace, ends a failed log.
            .env("RUST_LIB_BACKTRACE", "0")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("starting {} in node {k}", program.display()))
    }

    /// Runs a command in node `k`'s network namespace; its stdout.
    pub fn run_in_node(&self, k: u8, program: &str, args: &[&str]) -> anyhow::Result<String> {
        run_in_netns(&self.names.netns(k), program, args)
    }

    /// Node `k`'s conntrack table (`/proc/net/nf_conntrack` read inside its namespace):
    /// what NAT did to each connection.
    pub fn conntrack(&self, k: u8) -> anyhow::Result<Vec<Conntrack>> {
        let text = self.run_in_node(k, "cat", &["/proc/net/nf_conntrack"])?;
        Ok(text.lines().filter_map(Conntrack::parse).collect())
    }

    /// A kubeconfig under `DIR` for `user` in `group`, with a client certificate from
    /// the control plane's CA: nodes and their kube-proxies run with their own
    /// identities, as on a real cluster, so the Node authorizer and RBAC are in the path.
    fn identity(&self, file: &str, user: &str, group: Option<&str>) -> anyhow::Result<PathBuf> {
        let admin = kube::config::Kubeconfig::read_from(&self.kubeconfig).context("reading the admin kubeconfig")?;
        let server = admin
            .clusters
            .first()
            .and_then(|c| c.cluster.as_ref())
            .and_then(|c| c.server.clone())
            .context("the admin kubeconfig names no server")?;
        let path = self.dir.join(format!("{file}.kubeconfig"));
        apiserver::server::write_client_kubeconfig(&self.dir.join("apiserver"), &server, user, group, &path)?;
        Ok(path)
    }

    /// The flags that make node `k`'s kubelet (and its `--teardown`).
    fn kubelet_args(&self, k: u8) -> anyhow::Result<Vec<String>> {
        let n = &self.names;
        let root = self.dir.join(format!("n{k}"));
        let kubeconfig = self.identity(&format!("kubelet-n{k}"), &format!("system:node:{}", n.node_name(k)), Some("system:nodes"))?;
        // The kubelet API's certificate, from the cluster CA, for the node's address.
        let control = self.dir.join("apiserver");
        let serving = apiserver::server::cluster_ca(&control)?.issue(
            &n.node_name(k),
            None,
            &[n.node_name(k)],
            &[IpAddr::V4(n.node_ip(k))],
            component_base::pki::Usage::Server,
        )?;
        let (cert, key) = serving.write(&self.dir, &format!("kubelet-n{k}-serving"))?;
        let client_ca = apiserver::server::pki_dir(&control).join("ca.crt");
        Ok([
            "--tls-cert-file",
            &cert.to_string_lossy(),
            "--tls-private-key-file",
            &key.to_string_lossy(),
            "--client-ca-file",
            &client_ca.to_string_lossy(),
            "--kubeconfig",
            &kubeconfig.to_string_lossy(),
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
        .collect())
    }

    /// Starts node `k`'s kubelet and kube-proxy.
    pub fn start_node(&mut self, k: u8) -> anyhow::Result<()> {
        self.start_kubelet(k)?;
        self.start_kube_proxy(k)
    }

    /// Starts node `k`'s kubelet; its log is `DIR/kubelet-n<k>.log`.
    pub fn start_kubelet(&mut self, k: u8) -> anyhow::Result<()> {
        let log = self.dir.join(format!("kubelet-n{k}.log"));
        let child = self.spawn_in_node(k, &self.kubelet, &self.kubelet_args(k)?, &log)?;
        let node = self.node_mut(k)?;
        node.logs.push(("kubelet".into(), log.clone()));
        node.kubelet = Some(NodeProcess {
            name: "kubelet".into(),
            child,
            log,
        });
        Ok(())
    }

    /// Starts node `k`'s kube-proxy, programming table [`Names::kube_proxy_table`] in
    /// the node's namespace; its log is `DIR/kube-proxy-n<k>.log`. Like every daemon it
    /// is stopped before the kubelet; its table must be gone afterwards.
    pub fn start_kube_proxy(&mut self, k: u8) -> anyhow::Result<()> {
        let kubeconfig = self.identity(&format!("kube-proxy-n{k}"), "system:kube-proxy", None)?;
        let n = &self.names;
        let table = n.kube_proxy_table();
        let args: Vec<String> = [
            "--kubeconfig",
            &kubeconfig.to_string_lossy(),
            "--hostname-override",
            &n.node_name(k),
            "--cluster-cidr",
            &n.cluster_cidr(),
            "--nftables-table",
            &table,
            "--min-sync-period-ms",
            "20",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let program = self.kube_proxy.clone();
        self.start_in_node(k, "kube-proxy", &program, &args)?;
        self.node_mut(k)?.kube_proxy_table = Some(table);
        Ok(())
    }

    /// Starts another per-node process in node `k`'s namespace, e.g.
    /// `start_in_node(k, "agent", &workspace_binary("rkube")?, &args)`; its log is
    /// `DIR/<name>-n<k>.log`. It is stopped (SIGTERM, and it should exit 0) before the
    /// node's kubelet, and the leftover check reports it if it still runs.
    pub fn start_in_node(
        &mut self,
        k: u8,
        name: &str,
        program: &Path,
        args: &[String],
    ) -> anyhow::Result<()> {
        let log = self.dir.join(format!("{name}-n{k}.log"));
        let child = self.spawn_in_node(k, program, args, &log)?;
        let node = self.node_mut(k)?;
        node.logs.push((name.to_string(), log.clone()));
        node.daemons.push(NodeProcess {
            name: name.to_string(),
            child,
            log,
        });
        Ok(())
    }

    /// Starts `rkube <args> --data-dir DIR/rkube-n<k>` in node `k` (a server or an
    /// agent: the whole node in one process); its log is `DIR/rkube-n<k>.log`. The
    /// node is torn down with `rkube down` at cleanup. Returns the data directory.
    pub fn start_rkube(&mut self, k: u8, args: &[String]) -> anyhow::Result<PathBuf> {
        let data_dir = self.dir.join(format!("rkube-n{k}"));
        let program = workspace_binary("rkube")?;
        ensure!(program.is_file(), "no rkube binary at {} (build it first: cargo build --workspace --all-targets)", program.display());
        let mut all = args.to_vec();
        all.extend(["--data-dir".to_string(), data_dir.to_string_lossy().into_owned()]);
        self.start_in_node(k, "rkube", &program, &all)?;
        self.node_mut(k)?.rkube_dir = Some(data_dir.clone());
        Ok(data_dir)
    }

    /// Whether node `k`'s process `name` is still running; its log's tail if not.
    pub fn still_running(&mut self, k: u8, name: &str) -> Result<(), String> {
        let node = self.node_mut(k).map_err(|e| e.to_string())?;
        let process = node.daemons.iter_mut().find(|p| p.name == name).ok_or_else(|| format!("no {name} was started in node {k}"))?;
        match process.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => Err(format!("{name} of node {k} ended ({status}); its log ends:\n{}", tail(&fs::read_to_string(&process.log).unwrap_or_default(), 15))),
            Err(e) => Err(format!("waiting for {name} of node {k}: {e}")),
        }
    }

    /// Kills node `k`'s process `name` with SIGKILL, as a crash or a pulled plug would
    /// end it (what it leaves is torn down at cleanup).
    pub fn kill_in_node(&mut self, k: u8, name: &str) -> anyhow::Result<()> {
        let node = self.node_mut(k)?;
        let i = node.daemons.iter().position(|p| p.name == name).with_context(|| format!("no {name} runs in node {k}"))?;
        let mut process = node.daemons.remove(i);
        process.child.kill()?;
        process.child.wait()?;
        Ok(())
    }

    /// Stops node `k`'s processes, its other daemons first and then its kubelet. One
    /// that does not exit 0 on SIGTERM is reported by [`Lan::cleanup`].
    pub fn stop_node(&mut self, k: u8) {
        let Ok(node) = self.node_mut(k) else { return };
        let mut processes: Vec<NodeProcess> = node.daemons.drain(..).collect();
        processes.extend(node.kubelet.take());
        for NodeProcess { name, child, log } in processes {
            let why = match stop(child) {
                Ok(status) if status.success() => continue,
                Ok(status) => status.to_string(),
                Err(e) => e,
            };
            let log = fs::read_to_string(&log).unwrap_or_default();
            self.unclean_stops.push(format!(
                "{name} of node {k} did not stop cleanly ({why}); its log ends:\n{}",
                tail(&log, 15)
            ));
        }
    }

    /// Stops node `k`'s processes, removes a kube-proxy table they left, runs `kubelet
    /// --teardown` in its namespace, and returns whatever of the node is still there
    /// (checked before the namespace goes, since deleting a namespace would hide
    /// leftovers inside it).
    fn teardown_node(&mut self, k: u8) -> Vec<String> {
        self.stop_node(k);
        let mut problems = Vec::new();
        let Ok(node) = self.node(k) else {
            return problems;
        };
        if !node.netns_created {
            return problems;
        }
        let ns = self.names.netns(k);
        if let Some(table) = &node.kube_proxy_table {
            // A kube-proxy stopped cleanly has removed its table itself.
            if self
                .run_in_node(k, "nft", &["list", "table", "ip", table])
                .is_ok()
            {
                problems.push(format!("node {k}'s kube-proxy left its table {table}"));
                let program = self.kube_proxy.to_string_lossy();
                let cleanup = ["--cleanup", "--nftables-table", table.as_str()];
                if let Err(e) = self.run_in_node(k, &program, &cleanup) {
                    problems.push(format!("{e:#}"));
                }
            }
        }
        let log = self.dir.join(format!("teardown-n{k}.log"));
        // A node where nothing ever ran has nothing to tear down (and no identity to
        // tear down with); the checks below still look.
        if !node.logs.is_empty() {
            let (what, torn_down) = match &node.rkube_dir {
                Some(dir) => {
                    let args = ["down".to_string(), "--data-dir".into(), dir.to_string_lossy().into_owned()];
                    let torn_down = workspace_binary("rkube").and_then(|rkube| self.spawn_in_node(k, &rkube, &args, &log));
                    ("rkube down", torn_down)
                }
                None => {
                    let torn_down = self
                        .kubelet_args(k)
                        .and_then(|args| self.spawn_in_node(k, &self.kubelet, &[args, vec!["--teardown".into()]].concat(), &log));
                    ("kubelet --teardown", torn_down)
                }
            };
            match torn_down.and_then(|mut child| Ok(child.wait()?)) {
                Ok(status) if status.success() => {}
                Ok(status) => problems.push(format!(
                    "{what} of node {k} failed ({status}): {}",
                    fs::read_to_string(&log).unwrap_or_default()
                )),
                Err(e) => problems.push(format!("{what} of node {k}: {e:#}")),
            }
        }
        match run(
            "ip",
            &["-n", &ns, "-4", "route", "show", "proto", ROUTE_PROTO],
        ) {
            Ok(routes) if routes.trim().is_empty() => {}
            Ok(routes) => problems.push(format!("node {k} keeps routes: {routes}")),
            Err(e) => problems.push(format!("{e:#}")),
        }
        match self.run_in_node(k, "nft", &["list", "tables"]) {
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

    /// Removes everything (idempotent) and returns what went wrong on the way and what
    /// is still there afterwards: empty when the run left the host as it found it.
    pub fn cleanup(&mut self) -> Vec<String> {
        self.cleaned = true;
        let mut problems = Vec::new();
        let numbers: Vec<u8> = self.node_numbers().collect();
        for k in numbers {
            if self.node(k).is_ok_and(|n| n.netns_created) {
                problems.extend(self.teardown_node(k));
            }
        }
        problems.append(&mut self.unclean_stops);
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
    /// mounts, cgroups, node processes.
    fn leftovers(&mut self) -> Vec<String> {
        let n = self.names.clone();
        let mut found = Vec::new();
        let netns = run("ip", &["netns", "list"]).unwrap_or_default();
        found.extend(
            self.nodes
                .iter()
                .map(|node| n.netns(node.k))
                .filter(|ns| netns.contains(ns.as_str()))
                .map(|ns| format!("netns {ns}")),
        );
        let links = run("ip", &["-o", "link", "show"]).unwrap_or_default();
        let ours = std::iter::once(n.lan_bridge())
            .chain(self.nodes.iter().map(|node| n.host_veth(node.k)));
        for link in ours {
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
        let hierarchies = fs::read_dir("/sys/fs/cgroup")
            .map(|entries| entries.flatten().map(|e| e.path()).collect::<Vec<_>>())
            .unwrap_or_default();
        for node in &self.nodes {
            // An rkube node names its cgroup root in its lab.json.
            let rkube_root = node.rkube_dir.as_ref().and_then(|dir| {
                let settings: serde_json::Value = serde_json::from_slice(&fs::read(dir.join("lab.json")).ok()?).ok()?;
                settings.get("cgroupRoot")?.as_str().map(str::to_string)
            });
            for name in std::iter::once(n.cgroup_root(node.k)).chain(rkube_root) {
                for dir in std::iter::once(Path::new("/sys/fs/cgroup"))
                    .chain(hierarchies.iter().map(PathBuf::as_path))
                {
                    if dir.join(&name).is_dir() {
                        found.push(format!("cgroup {}", dir.join(&name).display()));
                    }
                }
            }
        }
        for node in &mut self.nodes {
            let k = node.k;
            for process in node.kubelet.iter_mut().chain(node.daemons.iter_mut()) {
                if matches!(process.child.try_wait(), Ok(None)) {
                    found.push(format!("{} of node {k} still running", process.name));
                }
            }
        }
        found
    }

    /// Ends a test on this LAN: on failure prints the logs' tails; then cleans up.
    /// `result` if it failed, else an error naming what the run left behind, if anything.
    pub fn finish(&mut self, result: anyhow::Result<()>) -> anyhow::Result<()> {
        if result.is_err() {
            eprintln!("{}", self.log_tails());
        }
        let leftovers = self.cleanup();
        if result.is_err() && !leftovers.is_empty() {
            eprintln!("left behind: {leftovers:#?}");
        }
        result?;
        ensure!(leftovers.is_empty(), "left behind: {leftovers:#?}");
        Ok(())
    }

    /// The last lines of every node process's log (for a failure report).
    pub fn log_tails(&self) -> String {
        let mut out = String::new();
        for node in &self.nodes {
            for (name, log) in &node.logs {
                let text = fs::read_to_string(log).unwrap_or_default();
                out.push_str(&format!(
                    "--- {name} of node {} ({}):\n{}",
                    node.k,
                    log.display(),
                    tail(&text, 40)
                ));
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
                eprintln!("multinode LAN cleanup left: {problems:#?}");
            }
        }
    }
}

/// Runs `scenario` on a fresh LAN of `node_count` nodes in a temporary directory, then
/// tears it all down whatever happened: the scenario's error if it failed (after the
/// node processes' log tails), else an error naming anything the run left behind. Skips
/// (Ok) when [`may_run`] says so. For example
/// `on_a_lan("pod network", 3, |lan| Box::pin(scenario(lan))).await`.
pub async fn on_a_lan<F>(test: &str, node_count: u8, scenario: F) -> anyhow::Result<()>
where
    F: for<'a> FnOnce(&'a mut Lan) -> LocalBoxFuture<'a, anyhow::Result<()>>,
{
    if !may_run(test) {
        return Ok(());
    }
    let dir = tempfile::Builder::new()
        .prefix("rkube-multinode-")
        .tempdir()?;
    let names = Names::pick()?;
    println!(
        "{test}: LAN 172.31.{}.0/24, cluster CIDR {}, id {}, run directory {}",
        names.octet,
        names.cluster_cidr(),
        names.id,
        dir.path().display()
    );
    let mut lan = Lan::create(names, dir.path(), node_count)?;
    let result = scenario(&mut lan).await;
    lan.finish(result)
}

/// The last `lines` lines of `text`, each ending in a newline.
fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..]
        .iter()
        .map(|l| format!("{l}\n"))
        .collect()
}

/// Stops a child process: SIGTERM, then SIGKILL after [`STOP_GRACE`]. Its exit status,
/// or why there is none worth trusting.
fn stop(mut child: Child) -> Result<ExitStatus, String> {
    if let Ok(pid) = i32::try_from(child.id()) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGTERM,
        );
    }
    let deadline = Instant::now() + STOP_GRACE;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Ok(status),
            Err(e) => return Err(format!("waiting for it: {e}")),
            Ok(None) if Instant::now() > deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("killed after {STOP_GRACE:?} without exiting"));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// The in-process control plane, bound to the LAN host's address; it stops when dropped.
pub struct ControlPlane {
    pub client: kube::Client,
    pub shutdown: CancellationToken,
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Starts the apiserver (data and `admin.kubeconfig` under `DIR/apiserver`, Services in
/// [`SERVICE_CIDR`]), every controller (node IPAM over the cluster CIDR) and the
/// scheduler, all in this process and reachable from the nodes at the LAN host address.
pub async fn start_control_plane(names: &Names, dir: &Path) -> anyhow::Result<ControlPlane> {
    let data_dir = dir.join("apiserver");
    let config = apiserver::Config {
        data_dir: data_dir.clone(),
        bind: SocketAddr::from((names.host_ip(), 0)),
        etcd_servers: vec![],
        service_ranges: apiserver::admission::ServiceRanges::parse(SERVICE_CIDR, "30000-32767")
            .map_err(anyhow::Error::msg)?,
        advertise_address: IpAddr::V4(names.host_ip()),
        security: Default::default(),
        local_components: Vec::new(),
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
        root_ca_file: Some(apiserver::server::pki_dir(&data_dir).join("ca.crt")),
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

/// The join token of the `rkube server` whose data directory is `server_dir`, once it
/// has written it.
pub async fn server_token(server_dir: &Path) -> anyhow::Result<String> {
    let path = server_dir.join("server/token");
    eventually(Duration::from_secs(120), "the server's join token", || {
        let path = path.clone();
        async move { Ok(fs::read_to_string(&path).ok().map(|t| t.trim().to_string()).filter(|t| !t.is_empty())) }
    })
    .await
}

/// A client with the admin kubeconfig of the `rkube server` whose data directory is
/// `server_dir`, pointed at `server` (its address on the LAN, which the host reaches).
pub async fn server_admin_client(server_dir: &Path, server: &str) -> anyhow::Result<kube::Client> {
    let path = server_dir.join("admin.kubeconfig");
    let mut config = eventually(Duration::from_secs(90), "the server's admin.kubeconfig", || {
        let path = path.clone();
        async move { Ok(kube::config::Kubeconfig::read_from(&path).ok()) }
    })
    .await?;
    for cluster in &mut config.clusters {
        if let Some(c) = cluster.cluster.as_mut() {
            c.server = Some(server.to_string());
        }
    }
    let client_config = kube::Config::from_custom_kubeconfig(config, &Default::default()).await?;
    Ok(kube::Client::try_from(client_config)?)
}

/// Waits until every node of `lan` is registered, Ready and has a podCIDR; their
/// podCIDRs by node number.
pub async fn nodes_ready(client: &kube::Client, lan: &Lan) -> anyhow::Result<BTreeMap<u8, String>> {
    let nodes: Api<Node> = Api::all(client.clone());
    let mut cidrs = BTreeMap::new();
    for k in lan.node_numbers() {
        let name = lan.names().node_name(k);
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
    Ok(cidrs)
}

/// A busybox pod pinned to `node` running `script` with `sh -c`.
pub fn busybox_pod(name: &str, node: &str, script: &str, restart: &str) -> anyhow::Result<Pod> {
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

pub fn pod_cidr(node: &Node) -> Option<String> {
    node.spec.as_ref().and_then(|s| s.pod_cidr.clone())
}

pub fn ready(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

pub fn phase(pod: &Pod) -> &str {
    pod.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("")
}

pub fn pod_ip(pod: &Pod) -> Option<Ipv4Addr> {
    pod.status.as_ref()?.pod_ip.as_deref()?.parse().ok()
}

/// Waits until the pod is Running with an IP; returns it.
pub async fn running(pods: &Api<Pod>, name: &str) -> anyhow::Result<Pod> {
    eventually(
        Duration::from_secs(90),
        &format!("pod {name} Running with an IP"),
        || {
            let pods = pods.clone();
            let name = name.to_string();
            async move {
                Ok(pods
                    .get_opt(&name)
                    .await?
                    .filter(|p| phase(p) == "Running" && pod_ip(p).is_some()))
            }
        },
    )
    .await
}

/// Waits until the pod has finished; returns it with its log.
pub async fn finished(pods: &Api<Pod>, name: &str) -> anyhow::Result<(Pod, String)> {
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

/// The kubelet's host-gw routes in node `k`'s namespace: destination → gateway.
pub fn node_routes(names: &Names, k: u8) -> anyhow::Result<BTreeMap<String, String>> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conntrack_lines_give_both_directions() {
        let line = "ipv4     2 tcp      6 118 TIME_WAIT src=10.7.1.4 dst=10.43.0.9 sport=40000 \
                    dport=80 src=10.7.2.5 dst=10.7.1.4 sport=8080 dport=40000 [ASSURED] mark=0 \
                    zone=0 use=2";
        let entry = Conntrack::parse(line).expect("a tcp entry");
        assert_eq!(entry.protocol, "tcp");
        let ip = |s: &str| s.parse::<Ipv4Addr>().expect("address");
        assert_eq!(entry.original, (ip("10.7.1.4"), ip("10.43.0.9"), 40000, 80));
        assert_eq!(entry.reply, (ip("10.7.2.5"), ip("10.7.1.4"), 8080, 40000));
        let icmp = "ipv4     2 icmp     1 29 src=10.7.1.4 dst=10.7.2.5 type=8 code=0 id=7 \
                    src=10.7.2.5 dst=10.7.1.4 type=0 code=0 id=7 mark=0 zone=0 use=2";
        assert_eq!(Conntrack::parse(icmp), None);
    }
}
