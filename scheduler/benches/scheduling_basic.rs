//! SchedulingBasic, in the shape of Kubernetes' scheduler_perf: a real apiserver
//! in-process (embedded store), N nodes without kubelets (4 CPU, 32 GiB, 110 pods, as
//! scheduler_perf's node-default.yaml), then M pods requesting 100m CPU and 500 MiB
//! (pod-default.yaml) created as fast as the client can, scheduled by kube-scheduler
//! running in-process. Prints pods scheduled per second, p50/p99 of create-to-bound, and
//! the ratio to Kubernetes' CI threshold for this test (680 pods/s at 5000 nodes).
//!
//! `RKUBE_BENCH_NODES` (default 5000) and `RKUBE_BENCH_PODS` (default 10000) scale it.
//! Run with `cargo bench -p scheduler --bench scheduling_basic`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, PostParams};
use kube::runtime::watcher;
use rkube_tests::cluster::Cluster;
use rkube_tests::fakenode::{create_node, NodeShape};
use tokio_util::sync::CancellationToken;

/// Kubernetes' CI threshold for SchedulingBasic at 5000 nodes (pods/s).
const K8S_THRESHOLD: f64 = 680.0;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn pod(name: &str) -> anyhow::Result<Pod> {
    Ok(serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"containers": [{
            "name": "pause", "image": "registry.k8s.io/pause:3.10",
            "resources": {"requests": {"cpu": "100m", "memory": "500Mi"}, "limits": {"cpu": "100m", "memory": "500Mi"}},
        }]},
    }))?)
}

async fn bench(nodes: usize, pods: usize) -> anyhow::Result<()> {
    let cluster = Cluster::start().await?;
    let client = cluster.client.clone();
    let t = Instant::now();
    let shape = NodeShape { cpu: "4".into(), memory: "32Gi".into(), pods: "110".into(), ..Default::default() };
    futures::stream::iter(0..nodes)
        .map(|i| {
            let (client, shape) = (client.clone(), shape.clone());
            async move { create_node(&client, &format!("node-{i}"), &shape).await.map(|_| ()) }
        })
        .buffer_unordered(32)
        .try_collect::<Vec<()>>()
        .await
        .context("creating nodes")?;
    eprintln!("created {nodes} nodes in {:.1}s", t.elapsed().as_secs_f64());

    // Bound times, observed by a watch as a client would see them.
    let bound: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let all_bound = Arc::new(tokio::sync::Notify::new());
    {
        let (bound, all_bound) = (bound.clone(), all_bound.clone());
        let mut stream = watcher(Api::<Pod>::namespaced(client.clone(), "default"), watcher::Config::default()).boxed();
        tokio::spawn(async move {
            while let Some(ev) = stream.next().await {
                let Ok(watcher::Event::Apply(p) | watcher::Event::InitApply(p)) = ev else { continue };
                if p.spec.as_ref().and_then(|s| s.node_name.as_deref()).is_some_and(|n| !n.is_empty()) {
                    let now = Instant::now();
                    let mut b = bound.lock().unwrap_or_else(|e| e.into_inner());
                    b.entry(p.metadata.name.unwrap_or_default()).or_insert(now);
                    if b.len() >= pods {
                        all_bound.notify_one();
                    }
                }
            }
        });
    }

    let shutdown = CancellationToken::new();
    let config = scheduler::Config { kubeconfig: Some(cluster.kubeconfig.clone()), leader_elect: false, ..Default::default() };
    let token = shutdown.clone();
    tokio::spawn(async move {
        if let Err(e) = scheduler::run(config, token).await {
            eprintln!("scheduler stopped: {e:#}");
        }
    });

    let created: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let api: Api<Pod> = Api::namespaced(client.clone(), "default");
    let start = Instant::now();
    futures::stream::iter(0..pods)
        .map(|i| {
            let (api, created) = (api.clone(), created.clone());
            async move {
                let name = format!("pod-{i}");
                let p = pod(&name)?;
                created.lock().unwrap_or_else(|e| e.into_inner()).insert(name, Instant::now());
                api.create(&PostParams::default(), &p).await?;
                anyhow::Ok(())
            }
        })
        .buffer_unordered(32)
        .try_collect::<Vec<()>>()
        .await
        .context("creating pods")?;
    let created_in = start.elapsed();
    eprintln!("created {pods} pods in {:.1}s", created_in.as_secs_f64());
    tokio::time::timeout(Duration::from_secs(1800), async {
        loop {
            if bound.lock().unwrap_or_else(|e| e.into_inner()).len() >= pods {
                break;
            }
            all_bound.notified().await;
        }
    })
    .await
    .context("not every pod was bound within 30 minutes")?;
    shutdown.cancel();

    let bound = bound.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let created = created.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let last = bound.values().max().copied().unwrap_or(start);
    let elapsed = last.duration_since(start);
    let mut latencies: Vec<Duration> = bound.iter().filter_map(|(n, b)| created.get(n).map(|c| b.saturating_duration_since(*c))).collect();
    latencies.sort();
    let throughput = pods as f64 / elapsed.as_secs_f64();
    println!("SchedulingBasic: {nodes} nodes, {pods} pods");
    println!("  all bound after          {:.2}s (pods created in {:.2}s)", elapsed.as_secs_f64(), created_in.as_secs_f64());
    println!("  throughput               {throughput:.0} pods/s");
    println!("  create-to-bound p50      {:.1} ms", percentile(&latencies, 0.50).as_secs_f64() * 1000.0);
    println!("  create-to-bound p99      {:.1} ms", percentile(&latencies, 0.99).as_secs_f64() * 1000.0);
    println!("  ratio to k8s CI threshold {:.2}x (threshold {K8S_THRESHOLD} pods/s)", throughput / K8S_THRESHOLD);
    Ok(())
}

/// The scheduling cycles alone, without the API: the same nodes and pods through the
/// default profile's framework over the cache, each decision assumed as the scheduler
/// does. Shows how much of the end-to-end time is the scheduler's own work.
fn cycles_only(nodes: usize, pods: usize) -> anyhow::Result<()> {
    use k8s_openapi::api::core::v1::Node;
    use scheduler::cache::Cache;
    use scheduler::types::PodInfo;
    let mut cache = Cache::default();
    for i in 0..nodes {
        let node: Node = serde_json::from_value(serde_json::json!({
            "metadata": {"name": format!("node-{i}"), "labels": {"kubernetes.io/hostname": format!("node-{i}")}},
            "status": {"allocatable": {"cpu": "4", "memory": "32Gi", "pods": "110"}},
        }))?;
        cache.upsert_node(Arc::new(node));
    }
    let mut framework = scheduler::Profile::default().framework();
    let infos: Vec<Arc<PodInfo>> = (0..pods).map(|i| pod(&format!("pod-{i}")).map(|p| Arc::new(PodInfo::new(Arc::new(p))))).collect::<anyhow::Result<_>>()?;
    let start = Instant::now();
    let mut per_pod = Vec::with_capacity(pods);
    for info in infos {
        let t = Instant::now();
        let i = framework.schedule(&info, cache.nodes()).map_err(|e| anyhow::anyhow!("{e}"))?;
        let node = cache.nodes()[i].name.clone();
        cache.assume(info, &node);
        per_pod.push(t.elapsed());
    }
    let total = start.elapsed();
    per_pod.sort();
    println!("  scheduling cycles alone  {:.0} pods/s (p50 {:.0} µs, p99 {:.0} µs per pod over {nodes} nodes)",
        pods as f64 / total.as_secs_f64(),
        percentile(&per_pod, 0.50).as_secs_f64() * 1e6,
        percentile(&per_pod, 0.99).as_secs_f64() * 1e6);
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let nodes = env_usize("RKUBE_BENCH_NODES", 5000);
    let pods = env_usize("RKUBE_BENCH_PODS", 10000);
    if std::env::var("RKUBE_BENCH_CYCLES_ONLY").is_ok() {
        return cycles_only(nodes, pods);
    }
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(bench(nodes, pods))?;
    drop(rt);
    cycles_only(nodes, pods)
}
