//! The single-node lab as a user runs it (`rkube up --detach`, the release binary):
//!
//! 1. **Memory of the idle lab**: after the node is Ready and the lab has idled 20 s,
//!    VmRSS of the lab process (`DIR/rkube.pid`) plus every shim of this lab (processes
//!    whose command line has `__rkube-shim` and the lab's directory). Goal < 100 MiB
//!    (k3s documents about 1.6 GB for a server with a workload). PSS (shared pages split
//!    between the processes sharing them) is printed beside it.
//! 2. **Pod create-to-Running** for 100 pods (busybox `sleep 3600`, the image present:
//!    `imagePullPolicy: IfNotPresent`) created as fast as a few concurrent clients can,
//!    each timed from its create call returning to the first watch event that shows it
//!    `Running` (one watch, opened before the first create). Goal p99 < 1 s. The
//!    in-run reference printed beside it: the create calls' own latency.
//! 3. **Memory with the 100 pods running**: lab process + shims again (and the
//!    containers' own processes, for context).
//! 4. **Pod create-to-Running at a steady rate**, as Kubernetes' own benchmark of 100
//!    pods on one node measures it (perf-tests' clusterloader2 `node-throughput` test:
//!    one node, 100 pods created at a uniform 5 per second, p99 startup latency held
//!    under 5 s): the burst's pods are deleted, then 100 pods are created at 5 per second,
//!    and again at 20 per second (the rate of its density test), each create sent on
//!    schedule whatever the ones before take. Goal p99 < 1 s.
//! 5. **Pod create-to-Running one at a time**, as Kubernetes' node density test "create
//!    a sequence of pods" measures startup latency: 50 of the last 100 are deleted (a node
//!    holds 110 pods), and with the other 50 still running in the background, 50 more
//!    are created one after another, each once the one before is Running. Goal p99 < 1 s.
//!    (Figure 2 is a burst: its p99 is bounded by how many pods per second the node
//!    starts, about 100 / throughput.)
//!
//! Beside figure 2, the CPU the whole machine spent per pod during the burst, against the
//! most a pod may cost for the burst to be Running within the goal on this machine's cores
//! (cores × 1 s ÷ pods), and, as a reference measured in the same run, the CPU one
//! `runc run` of a busybox `true` costs (runc and its init, from this process's waited
//! children, averaged over 30 runs; Debian's `runc`, when installed).
//!
//! Then `rkube down`, always, and a check that it left no mount, bridge, cgroup or process;
//! then `rkube reset` (deletes the lab's state and its claim on a pod network).
//!
//! Needs root; otherwise prints `skipped: …` (exit 1 under CI).
//! `RKUBE_BENCH_PODS` (100), `RKUBE_BENCH_CREATE_CLIENTS` (8), `RKUBE_BENCH_IDLE_SECS`
//! (20), `RKUBE_BENCH_SETTLE_SECS` (5), `RKUBE_BENCH_RATES` (`5,20` pods per second; `0`
//! for none), `RKUBE_BENCH_SEQUENCE_PODS` (50) scale it;
//! `RKUBE_BENCH_SAVE_LOG=<file>` keeps the lab's log (`rkube.log`, whose info lines time
//! each step) before the lab goes down.
//! Run with `cargo bench -p deploy --bench lab`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, PostParams, WatchEvent, WatchParams};

const RKUBE: &str = env!("CARGO_BIN_EXE_rkube");
const MEMORY_GOAL_MIB: f64 = 100.0;
const RUNNING_P99_GOAL: Duration = Duration::from_secs(1);
const NAMESPACE: &str = "default";
const LABEL: &str = "rkube-bench=lab";

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A comma-separated list of rates (pods per second); `0` or an empty value for none.
fn env_rates(name: &str, default: &[f64]) -> anyhow::Result<Vec<f64>> {
    let Ok(value) = std::env::var(name) else {
        return Ok(default.to_vec());
    };
    let mut rates = Vec::new();
    for part in value.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let rate: f64 = part
            .parse()
            .with_context(|| format!("{name}: {part:?} is not a number of pods per second"))?;
        if rate > 0.0 {
            rates.push(rate);
        }
    }
    Ok(rates)
}

fn percentile(values: &[Duration], p: f64) -> Duration {
    let mut sorted = values.to_vec();
    sorted.sort();
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn rkube(dir: &Path, args: &[&str]) -> anyhow::Result<Output> {
    Command::new(RKUBE)
        .args(args)
        .arg("--data-dir")
        .arg(dir)
        // The lab's default log level, whatever this shell has set.
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {RKUBE}"))
}

/// CPU time the whole machine has spent busy (every core, user and system, interrupts
/// included; idle and iowait not), from `/proc/stat` in USER_HZ ticks (100 per second).
fn machine_busy() -> anyhow::Result<Duration> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    let line = stat.lines().next().context("empty /proc/stat")?;
    let ticks: Vec<u64> = line.split_whitespace().skip(1).map(str::parse).collect::<Result<_, _>>()?;
    // user nice system idle iowait irq softirq steal (guest time is inside user).
    let busy: u64 = ticks.iter().take(8).enumerate().filter(|(i, _)| *i != 3 && *i != 4).map(|(_, t)| t).sum();
    Ok(Duration::from_millis(busy * 10))
}

/// CPU time of this process's waited-for children (cutime + cstime of `/proc/self/stat`).
fn children_cpu() -> anyhow::Result<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat")?;
    let rest = stat.rsplit_once(") ").context("bad /proc/self/stat")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let tick = |i: usize| -> anyhow::Result<u64> { Ok(fields.get(i).context("short /proc/self/stat")?.parse()?) };
    // Fields after the command: state is 3, so cutime (16) and cstime (17) are 13 and 14.
    Ok(Duration::from_millis((tick(13)? + tick(14)?) * 10))
}

/// The reference for the burst's CPU per pod: the CPU of one `runc run` (runc, its init
/// and the container, all waited for) of a bundle whose rootfs is the host's static
/// busybox and whose process is `true`, averaged over `runs` (the kernel counts children's
/// time in 10 ms ticks, too coarse for one run). `None` without runc or a static busybox.
fn runc_cpu_per_container(runs: usize) -> anyhow::Result<Option<Duration>> {
    let Some(runc) = ["/usr/sbin/runc", "/usr/bin/runc"].into_iter().map(Path::new).find(|p| p.exists()) else {
        return Ok(None);
    };
    let busybox = Path::new("/bin/busybox");
    let is_static = Command::new("ldd").arg(busybox).output().map(|o| !o.status.success() || String::from_utf8_lossy(&o.stdout).contains("not a dynamic"));
    if !busybox.exists() || !matches!(is_static, Ok(true)) {
        return Ok(None);
    }
    let bundle = tempfile::tempdir()?;
    let bin = bundle.path().join("rootfs/bin");
    std::fs::create_dir_all(&bin)?;
    std::fs::copy(busybox, bin.join("busybox"))?;
    std::os::unix::fs::symlink("busybox", bin.join("true"))?;
    let spec = Command::new(runc).arg("spec").current_dir(bundle.path()).output()?;
    if !spec.status.success() {
        bail!("runc spec: {}", String::from_utf8_lossy(&spec.stderr));
    }
    let config = bundle.path().join("config.json");
    let mut spec: serde_json::Value = serde_json::from_slice(&std::fs::read(&config)?)?;
    spec["process"]["terminal"] = false.into();
    spec["process"]["args"] = serde_json::json!(["/bin/true"]);
    std::fs::write(&config, serde_json::to_vec(&spec)?)?;
    let state = bundle.path().join("state");
    let before = children_cpu()?;
    for i in 0..runs {
        let out = Command::new(runc)
            .arg("--root")
            .arg(&state)
            .args(["run", "--bundle"])
            .arg(bundle.path())
            .arg(format!("rkube-bench-{}-{i}", std::process::id()))
            .stdin(Stdio::null())
            .output()?;
        if !out.status.success() {
            bail!("runc run: {}", String::from_utf8_lossy(&out.stderr));
        }
    }
    Ok(Some(children_cpu()?.saturating_sub(before) / runs.max(1) as u32))
}

/// A `kB` field of a /proc file (`VmRSS:` of status, `Pss:` of smaps_rollup).
fn proc_kib(path: &str, field: &str) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.lines().find_map(|l| {
        l.strip_prefix(field)?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    })
}

fn rss_kib(pid: u32) -> u64 {
    proc_kib(&format!("/proc/{pid}/status"), "VmRSS:").unwrap_or(0)
}

fn pss_kib(pid: u32) -> u64 {
    proc_kib(&format!("/proc/{pid}/smaps_rollup"), "Pss:").unwrap_or(0)
}

/// Processes whose command line contains every one of `needles`.
fn processes_with(needles: &[&str]) -> Vec<u32> {
    let me = std::process::id();
    std::fs::read_dir("/proc")
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
                .filter(|pid| *pid != me)
                .filter(|pid| {
                    std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
                        let c = String::from_utf8_lossy(&c);
                        needles.iter().all(|n| c.contains(n))
                    })
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The container processes of the lab (from the shims' `state.json` records).
fn container_pids(dir: &Path) -> Vec<u32> {
    std::fs::read_dir(dir.join("agent/containers"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| std::fs::read(e.path().join("state.json")).ok())
        .filter_map(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .filter_map(|v| v.get("pid")?.as_u64())
        .map(|p| p as u32)
        .filter(|p| Path::new(&format!("/proc/{p}")).exists())
        .collect()
}

struct Memory {
    lab_rss: u64,
    lab_pss: u64,
    shims: usize,
    shims_rss: u64,
    shims_pss: u64,
    containers: usize,
    containers_rss: u64,
}

impl Memory {
    fn measure(dir: &Path, lab_pid: u32) -> Memory {
        let dir_text = dir.to_string_lossy().into_owned();
        let shims = processes_with(&["__rkube-shim", &dir_text]);
        let containers = container_pids(dir);
        Memory {
            lab_rss: rss_kib(lab_pid),
            lab_pss: pss_kib(lab_pid),
            shims: shims.len(),
            shims_rss: shims.iter().map(|p| rss_kib(*p)).sum(),
            shims_pss: shims.iter().map(|p| pss_kib(*p)).sum(),
            containers: containers.len(),
            containers_rss: containers.iter().map(|p| rss_kib(*p)).sum(),
        }
    }

    fn total_rss(&self) -> u64 {
        self.lab_rss + self.shims_rss
    }

    fn total_pss(&self) -> u64 {
        self.lab_pss + self.shims_pss
    }

    fn describe(&self) -> String {
        format!(
            "lab process {:.1} MiB + {} shims {:.1} MiB = {:.1} MiB RSS ({:.1} MiB PSS); \
             {} container processes {:.1} MiB RSS",
            mib(self.lab_rss),
            self.shims,
            mib(self.shims_rss),
            mib(self.total_rss()),
            mib(self.total_pss()),
            self.containers,
            mib(self.containers_rss)
        )
    }
}

fn pod(name: &str) -> anyhow::Result<Pod> {
    Ok(serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": NAMESPACE, "labels": {"rkube-bench": "lab"}},
        "spec": {
            "terminationGracePeriodSeconds": 0,
            "containers": [{
                "name": "sleep", "image": "busybox", "imagePullPolicy": "IfNotPresent",
                "command": ["sleep", "3600"],
            }],
        },
    }))?)
}

/// The next item of a stream. (`Stream` is reachable here only as the supertrait of
/// kube's `WatchStreamExt`; the `futures` crate is not a dependency of this package.)
async fn next_item<S>(stream: &mut S) -> Option<S::Item>
where
    S: kube::runtime::WatchStreamExt + Unpin,
{
    std::future::poll_fn(|cx| std::pin::Pin::new(&mut *stream).poll_next(cx)).await
}

/// Records, per pod name, when a watch first showed it Running. Re-watches from the
/// last resourceVersion when the watch ends.
async fn watch_running(
    api: Api<Pod>,
    mut version: String,
    running: Arc<Mutex<HashMap<String, Instant>>>,
    changed: Arc<tokio::sync::Notify>,
) -> anyhow::Result<()> {
    loop {
        let params = WatchParams::default().labels(LABEL).timeout(290);
        let mut stream = Box::pin(api.watch(&params, &version).await?);
        while let Some(event) = next_item(&mut stream).await {
            let now = Instant::now();
            let pod = match event? {
                WatchEvent::Added(p) | WatchEvent::Modified(p) => p,
                WatchEvent::Bookmark(b) => {
                    version = b.metadata.resource_version;
                    continue;
                }
                WatchEvent::Deleted(_) => continue,
                WatchEvent::Error(e) => bail!("watch error: {e:?}"),
            };
            if let Some(v) = &pod.metadata.resource_version {
                version = v.clone();
            }
            let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
            if phase == Some("Running") {
                if let Some(name) = pod.metadata.name {
                    running
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .entry(name)
                        .or_insert(now);
                    changed.notify_waiters();
                }
            }
        }
    }
}

struct PodTimes {
    /// Create call latency.
    create: Vec<Duration>,
    /// Create call returned → watch shows Running.
    to_running: Vec<Duration>,
    /// Create call sent → watch shows Running.
    sent_to_running: Vec<Duration>,
    /// First create sent → last pod Running.
    wall: Duration,
}

/// Creates pod `name` and records when its create call was sent and returned.
async fn create_one(api: &Api<Pod>, name: String, sent: &Mutex<HashMap<String, (Instant, Instant)>>) -> anyhow::Result<()> {
    let body = pod(&name)?;
    let t0 = Instant::now();
    api.create(&PostParams::default(), &body)
        .await
        .with_context(|| format!("creating pod {name}"))?;
    let t1 = Instant::now();
    sent.lock().unwrap_or_else(|e| e.into_inner()).insert(name, (t0, t1));
    Ok(())
}

/// How the creates of a phase are paced.
#[derive(Clone, Copy)]
enum Pacing {
    /// As fast as `clients` concurrent clients can.
    Burst { clients: usize },
    /// Create `i` is sent at `i / per_second` after the first, whatever the calls
    /// before it take (clusterloader2's `UniformQPS`).
    Rate { per_second: f64 },
}

async fn create_pods(kubeconfig: &Path, prefix: &str, pods: usize, pacing: Pacing) -> anyhow::Result<PodTimes> {
    let client = component_base::client::client(Some(kubeconfig)).await?;
    let api: Api<Pod> = Api::namespaced(client.clone(), NAMESPACE);
    let list = api
        .list_metadata(&ListParams::default().labels(LABEL))
        .await?;
    let version = list.metadata.resource_version.unwrap_or_default();
    let running: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let watch = tokio::spawn(watch_running(api.clone(), version, running.clone(), Arc::default()));

    let sent: Arc<Mutex<HashMap<String, (Instant, Instant)>>> = Arc::default();
    let start = Instant::now();
    let mut creators = Vec::new();
    match pacing {
        Pacing::Burst { clients } => {
            let next = Arc::new(AtomicUsize::new(0));
            for _ in 0..clients.max(1) {
                let (api, sent, next, prefix) = (api.clone(), sent.clone(), next.clone(), prefix.to_string());
                creators.push(tokio::spawn(async move {
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= pods {
                            return anyhow::Ok(());
                        }
                        create_one(&api, format!("{prefix}-{i:03}"), &sent).await?;
                    }
                }));
            }
        }
        Pacing::Rate { per_second } => {
            for i in 0..pods {
                let at = start + Duration::from_secs_f64(i as f64 / per_second.max(1e-3));
                tokio::time::sleep_until(at.into()).await;
                let (api, sent, name) = (api.clone(), sent.clone(), format!("{prefix}-{i:03}"));
                creators.push(tokio::spawn(async move { create_one(&api, name, &sent).await }));
            }
        }
    }
    for c in creators {
        c.await??;
    }
    let created = start.elapsed();
    eprintln!("created {pods} pods in {:.2} s", created.as_secs_f64());

    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let done = running.lock().unwrap_or_else(|e| e.into_inner()).len();
        if done >= pods {
            break;
        }
        if watch.is_finished() {
            match watch.await {
                Ok(Err(e)) => return Err(e.context("watching pods")),
                _ => bail!("the pod watch ended"),
            }
        }
        if Instant::now() > deadline {
            let names: Vec<String> = {
                let r = running.lock().unwrap_or_else(|e| e.into_inner());
                (0..pods)
                    .map(|i| format!("{prefix}-{i:03}"))
                    .filter(|n| !r.contains_key(n))
                    .take(5)
                    .collect()
            };
            bail!("only {done} of {pods} pods Running after 300 s (e.g. not: {names:?})");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    watch.abort();
    let running = running.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let sent = sent.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let mut times = PodTimes {
        create: Vec::new(),
        to_running: Vec::new(),
        sent_to_running: Vec::new(),
        wall: Duration::ZERO,
    };
    for (name, (t0, t1)) in &sent {
        let Some(r) = running.get(name) else { continue };
        times.create.push(*t1 - *t0);
        times.to_running.push(r.saturating_duration_since(*t1));
        times.sent_to_running.push(r.saturating_duration_since(*t0));
        times.wall = times.wall.max(r.saturating_duration_since(start));
    }
    Ok(times)
}

/// Deletes the pods `names` and waits until the API has only `keep` of the bench's pods
/// left and their shims are gone, so that their teardown is not measured with the next
/// pods' starts.
async fn delete_pods(dir: &Path, names: &[String], keep: usize) -> anyhow::Result<()> {
    let client = component_base::client::client(Some(&dir.join("admin.kubeconfig"))).await?;
    let api: Api<Pod> = Api::namespaced(client, NAMESPACE);
    for name in names {
        api.delete(name, &kube::api::DeleteParams::default().grace_period(0))
            .await
            .with_context(|| format!("deleting pod {name}"))?;
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let left = api.list_metadata(&ListParams::default().labels(LABEL)).await?.items.len();
        let shims = processes_with(&["__rkube-shim", &dir.to_string_lossy()]).len();
        if left <= keep && shims <= keep {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{left} pods and {shims} shims left 120 s after deleting {} pods (expected {keep})", names.len());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Kubernetes' node density test "create a sequence of pods": with some pods still
/// running in the background, `pods` more are created one at a time, each
/// once the one before is Running; returns each one's create returned → Running.
async fn create_sequence(kubeconfig: &Path, pods: usize) -> anyhow::Result<Vec<Duration>> {
    let client = component_base::client::client(Some(kubeconfig)).await?;
    let api: Api<Pod> = Api::namespaced(client.clone(), NAMESPACE);
    let list = api.list_metadata(&ListParams::default().labels(LABEL)).await?;
    let version = list.metadata.resource_version.unwrap_or_default();
    let running: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let changed: Arc<tokio::sync::Notify> = Arc::default();
    let watch = tokio::spawn(watch_running(api.clone(), version, running.clone(), changed.clone()));
    let mut times = Vec::with_capacity(pods);
    for i in 0..pods {
        let name = format!("seq-{i:03}");
        api.create(&PostParams::default(), &pod(&name)?)
            .await
            .with_context(|| format!("creating pod {name}"))?;
        let created = Instant::now();
        let deadline = created + Duration::from_secs(60);
        loop {
            // Registered before the check, so a Running event between the two is not lost.
            let notified = changed.notified();
            if let Some(at) = running.lock().unwrap_or_else(|e| e.into_inner()).get(&name) {
                times.push(at.saturating_duration_since(created));
                break;
            }
            if watch.is_finished() {
                bail!("the pod watch ended");
            }
            if tokio::time::timeout_at(deadline.into(), notified).await.is_err() {
                bail!("pod {name} not Running 60 s after its create");
            }
        }
    }
    watch.abort();
    Ok(times)
}

async fn measure(dir: &Path) -> anyhow::Result<()> {
    let pods = env_usize("RKUBE_BENCH_PODS", 100);
    let clients = env_usize("RKUBE_BENCH_CREATE_CLIENTS", 8);
    let idle = Duration::from_secs(env_usize("RKUBE_BENCH_IDLE_SECS", 20) as u64);
    let settle = Duration::from_secs(env_usize("RKUBE_BENCH_SETTLE_SECS", 5) as u64);
    let sequence = env_usize("RKUBE_BENCH_SEQUENCE_PODS", 50);
    let rates = env_rates("RKUBE_BENCH_RATES", &[5.0, 20.0])?;

    let port = free_port()?;
    let t = Instant::now();
    let (http, https) = (free_port()?.to_string(), free_port()?.to_string());
    let up = rkube(dir, &["up", "--detach", "--port", &port.to_string(), "--ingress-port", &http, "--ingress-https-port", &https])?;
    if !up.status.success() {
        bail!(
            "rkube up failed: {}{}",
            String::from_utf8_lossy(&up.stdout),
            String::from_utf8_lossy(&up.stderr)
        );
    }
    let up_time = t.elapsed();
    let pid: u32 = std::fs::read_to_string(dir.join("rkube.pid"))
        .context("reading rkube.pid")?
        .trim()
        .parse()
        .context("parsing rkube.pid")?;
    eprintln!(
        "lab up (node Ready) in {:.1} s, pid {pid}; idling {} s…",
        up_time.as_secs_f64(),
        idle.as_secs()
    );
    tokio::time::sleep(idle).await;
    let idle_memory = Memory::measure(dir, pid);
    eprintln!("idle: {}", idle_memory.describe());

    let kubeconfig = dir.join("admin.kubeconfig");
    let names = |prefix: &str| (0..pods).map(|i| format!("{prefix}-{i:03}")).collect::<Vec<_>>();
    let busy_before = machine_busy()?;
    let times = create_pods(&kubeconfig, "bench", pods, Pacing::Burst { clients }).await?;
    let burst_cpu = machine_busy()?.saturating_sub(busy_before);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    // The most CPU a pod may cost for `pods` of them to be Running within the goal.
    let budget = RUNNING_P99_GOAL * cores as u32 / pods.max(1) as u32;
    tokio::time::sleep(settle).await;
    let busy_memory = Memory::measure(dir, pid);
    eprintln!("with {pods} pods: {}", busy_memory.describe());
    // The node holds 110 pods: each phase starts once the one before has been deleted,
    // but for the pods the sequence keeps running in the background.
    let background = pods.saturating_sub(sequence);
    let mut previous = names("bench");
    let mut rate_times = Vec::new();
    for (n, &per_second) in rates.iter().enumerate() {
        delete_pods(dir, &previous, 0).await?;
        tokio::time::sleep(settle).await;
        let prefix = format!("rate{n}");
        let t = create_pods(&kubeconfig, &prefix, pods, Pacing::Rate { per_second }).await?;
        eprintln!(
            "{pods} pods at {per_second}/s: p99 {:.0} ms",
            ms(percentile(&t.to_running, 0.99))
        );
        rate_times.push((per_second, t));
        previous = names(&prefix);
    }
    delete_pods(dir, &previous[background.min(previous.len())..], background).await?;
    tokio::time::sleep(settle).await;
    let seq_times = create_sequence(&kubeconfig, sequence).await?;
    // Measured while the last phase's pods still run, as the burst's were.
    let runc_cpu = runc_cpu_per_container(30)?;

    let p50 = percentile(&times.to_running, 0.5);
    let p99 = percentile(&times.to_running, 0.99);
    let max = percentile(&times.to_running, 1.0);
    let c50 = percentile(&times.create, 0.5);
    let c99 = percentile(&times.create, 0.99);
    let s50 = percentile(&times.sent_to_running, 0.5);
    let s99 = percentile(&times.sent_to_running, 0.99);
    println!();
    println!(
        "single-node lab, release binary {RKUBE}; {pods} pods (busybox sleep 3600, image present) \
         created by {clients} concurrent clients; lab up in {:.1} s",
        up_time.as_secs_f64()
    );
    println!();
    println!("| figure | value | reference / goal | ratio |");
    println!("|---|---|---|---|");
    println!(
        "| idle lab RSS after {} s (lab process + {} shims) | {:.1} MiB | goal < {MEMORY_GOAL_MIB:.0} MiB (k3s server: ~1.6 GB) | **{:.2}** |",
        idle.as_secs(),
        idle_memory.shims,
        mib(idle_memory.total_rss()),
        mib(idle_memory.total_rss()) / MEMORY_GOAL_MIB
    );
    println!(
        "| idle lab PSS | {:.1} MiB | | |",
        mib(idle_memory.total_pss())
    );
    println!(
        "| create returned → Running p50 / p99 / max | {:.0} / {:.0} / {:.0} ms | goal p99 < {} ms | **{:.2}** |",
        ms(p50),
        ms(p99),
        ms(max),
        RUNNING_P99_GOAL.as_millis(),
        ms(p99) / ms(RUNNING_P99_GOAL)
    );
    println!(
        "| create sent → Running p50 / p99 | {:.0} / {:.0} ms | | |",
        ms(s50),
        ms(s99)
    );
    println!(
        "| reference: create call latency p50 / p99 | {:.1} / {:.1} ms | | |",
        ms(c50),
        ms(c99)
    );
    println!(
        "| first create → last Running ({pods} pods) | {:.2} s ({:.1} pods/s) | | |",
        times.wall.as_secs_f64(),
        pods as f64 / times.wall.as_secs_f64().max(1e-9)
    );
    let per_pod = burst_cpu / pods.max(1) as u32;
    println!(
        "| burst: CPU of the whole machine per pod ({cores} cores busy {:.0} % of the burst) | {:.1} ms | most a pod may cost for {pods} to be Running within {} ms on {cores} cores: {:.1} ms | {:.2} |",
        100.0 * burst_cpu.as_secs_f64() / (times.wall.as_secs_f64() * cores as f64).max(1e-9),
        ms(per_pod),
        RUNNING_P99_GOAL.as_millis(),
        ms(budget),
        ms(per_pod) / ms(budget).max(1e-9)
    );
    match runc_cpu {
        Some(runc) => println!(
            "| reference: CPU of one `runc run` (busybox `true`; runc, runc init, the process) | {:.1} ms | that budget: {:.1} ms | {:.2} |",
            ms(runc),
            ms(budget),
            ms(runc) / ms(budget).max(1e-9)
        ),
        None => println!("| reference: CPU of one `runc run` | not measured: no runc or no static /bin/busybox | | |"),
    }
    for (per_second, t) in &rate_times {
        let (r50, r90, r99) = (
            percentile(&t.to_running, 0.5),
            percentile(&t.to_running, 0.9),
            percentile(&t.to_running, 0.99),
        );
        println!(
            "| {pods} pods created at a steady {per_second}/s{}: create returned → Running p50 / p90 / p99 | {:.0} / {:.0} / {:.0} ms | goal p99 < {} ms | **{:.2}** |",
            if *per_second == 5.0 { " (Kubernetes' node-throughput test)" } else { "" },
            ms(r50),
            ms(r90),
            ms(r99),
            RUNNING_P99_GOAL.as_millis(),
            ms(r99) / ms(RUNNING_P99_GOAL)
        );
    }
    if !seq_times.is_empty() {
        let (q50, q90, q99) = (percentile(&seq_times, 0.5), percentile(&seq_times, 0.9), percentile(&seq_times, 0.99));
        println!(
            "| {sequence} pods one at a time beside {background} running: create returned → Running p50 / p90 / p99 | {:.0} / {:.0} / {:.0} ms | goal p99 < {} ms | **{:.2}** |",
            ms(q50),
            ms(q90),
            ms(q99),
            RUNNING_P99_GOAL.as_millis(),
            ms(q99) / ms(RUNNING_P99_GOAL)
        );
    }
    println!(
        "| RSS with {pods} pods (lab process + {} shims) | {:.1} MiB (lab {:.1} + shims {:.1}) | goal < {MEMORY_GOAL_MIB:.0} MiB idle | {:.2} |",
        busy_memory.shims,
        mib(busy_memory.total_rss()),
        mib(busy_memory.lab_rss),
        mib(busy_memory.shims_rss),
        mib(busy_memory.total_rss()) / MEMORY_GOAL_MIB
    );
    println!(
        "| PSS with {pods} pods (lab + shims) | {:.1} MiB; per shim {:.2} MiB RSS, {:.2} MiB PSS | | |",
        mib(busy_memory.total_pss()),
        mib(busy_memory.shims_rss) / busy_memory.shims.max(1) as f64,
        mib(busy_memory.shims_pss) / busy_memory.shims.max(1) as f64
    );
    println!(
        "| (context) the {} container processes | {:.1} MiB RSS | | |",
        busy_memory.containers,
        mib(busy_memory.containers_rss)
    );
    Ok(())
}

/// What `rkube down` should have removed and did not.
fn leftovers(dir: &Path, settings: &serde_json::Value) -> Vec<String> {
    let mut problems = Vec::new();
    let prefix = dir.to_string_lossy().into_owned();
    let mounts: Vec<String> = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|m| m.starts_with(&prefix))
        .map(str::to_string)
        .collect();
    if !mounts.is_empty() {
        problems.push(format!("mounts left: {mounts:?}"));
    }
    if let Some(bridge) = settings["bridgeName"].as_str().filter(|b| !b.is_empty()) {
        let left = Command::new("ip")
            .args(["link", "show", "dev", bridge])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if left {
            problems.push(format!("bridge {bridge} left"));
        }
    }
    if let Some(cgroup) = settings["cgroupRoot"].as_str().filter(|c| !c.is_empty()) {
        let left: Vec<PathBuf> = std::fs::read_dir("/sys/fs/cgroup")
            .map(|entries| {
                entries
                    .flatten()
                    .map(|e| e.path().join(cgroup))
                    .chain(std::iter::once(Path::new("/sys/fs/cgroup").join(cgroup)))
                    .filter(|p| p.is_dir())
                    .collect()
            })
            .unwrap_or_default();
        if !left.is_empty() {
            problems.push(format!("cgroups left: {left:?}"));
        }
    }
    let procs = processes_with(&[&prefix]);
    if !procs.is_empty() {
        problems.push(format!("processes left: {procs:?}"));
    }
    problems
}

fn skipped(reason: &str) -> ExitCode {
    println!("skipped: {reason}");
    if std::env::var_os("CI").is_some() {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn main() -> ExitCode {
    if !nix::unistd::geteuid().is_root() {
        return skipped("the lab needs root (namespaces, cgroups, mounts, a bridge)");
    }
    if !Path::new("/bin/busybox").exists() {
        return skipped("no static busybox at /bin/busybox for the lab's image (apt-get install busybox-static)");
    }
    let temp = match tempfile::Builder::new().prefix("rkube-bench-lab").tempdir() {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: creating a temp dir: {e}");
            return ExitCode::FAILURE;
        }
    };
    let dir = temp.path().to_path_buf();
    let outcome = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting tokio")
        .and_then(|rt| rt.block_on(measure(&dir)));
    if let Err(e) = &outcome {
        eprintln!("error: {e:#}");
        eprintln!(
            "the end of rkube.log:\n{}",
            std::fs::read_to_string(dir.join("rkube.log"))
                .unwrap_or_default()
                .lines()
                .rev()
                .take(15)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    // `RKUBE_BENCH_SAVE_LOG=<file>`: keep the lab's log (its info lines time each step).
    if let Some(path) = std::env::var_os("RKUBE_BENCH_SAVE_LOG") {
        if let Err(e) = std::fs::copy(dir.join("rkube.log"), &path) {
            eprintln!("copying rkube.log: {e}");
        }
    }
    // Always take the lab down, and check that it left nothing.
    let settings: serde_json::Value = std::fs::read(dir.join("lab.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    let down_ok = match rkube(&dir, &["down"]) {
        Ok(out) if out.status.success() => {
            eprintln!("rkube down: ok");
            true
        }
        Ok(out) => {
            eprintln!(
                "rkube down failed ({}): {}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            false
        }
        Err(e) => {
            eprintln!("rkube down: {e:#}");
            false
        }
    };
    let problems = leftovers(&dir, &settings);
    for p in &problems {
        eprintln!("after rkube down: {p}");
    }
    if !down_ok || !problems.is_empty() {
        // Deleting the directory through a leftover mount would harm more than keeping it.
        let kept = temp.keep();
        eprintln!("kept {} for inspection", kept.display());
        return ExitCode::FAILURE;
    }
    // `rkube reset` deletes the lab's state and gives up its claim on the pod network
    // (kept by `down`, for the next `up` of the same lab).
    let reset_ok = match rkube(&dir, &["reset"]) {
        Ok(out) if out.status.success() => true,
        Ok(out) => {
            eprintln!(
                "rkube reset failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
            false
        }
        Err(e) => {
            eprintln!("rkube reset: {e:#}");
            false
        }
    };
    drop(temp);
    if outcome.is_err() || !reset_ok {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
