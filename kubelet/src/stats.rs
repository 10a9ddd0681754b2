//! Resource usage for `metrics.k8s.io` (`kubectl top`, the HPA): every 10 s the kubelet
//! reads each container's cgroup counters through the runtime, turns cumulative CPU time
//! into cores used over the window, and posts a Summary (the kubelet's `/stats/summary`
//! shape) to the apiserver, which serves the metrics API from it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use crate::config::KubeletConfig;
use crate::pods::PodManager;
use crate::runtime::{ContainerState, LABEL_CONTAINER_NAME, LABEL_POD_UID};

const WINDOW: Duration = Duration::from_secs(10);

/// Node CPU time (ns) from /proc/stat.
fn node_cpu_nanos() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/stat").ok()?;
    let line = text.lines().next()?.strip_prefix("cpu ")?;
    let fields: Vec<u64> = line.split_whitespace().filter_map(|f| f.parse().ok()).collect();
    // user nice system idle iowait irq softirq steal: busy = all but idle and iowait.
    let busy: u64 = fields.iter().take(8).enumerate().filter(|(i, _)| *i != 3 && *i != 4).map(|(_, v)| *v).sum();
    // USER_HZ is 100 on Linux.
    Some(busy * 10_000_000)
}

fn node_memory_working_set() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let field = |name: &str| -> Option<u64> {
        text.lines().find_map(|l| l.strip_prefix(name)).and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
    };
    Some((field("MemTotal:")? - field("MemAvailable:")?) * 1024)
}

pub async fn run(config: KubeletConfig, client: kube::Client, pods: Arc<PodManager>, shutdown: CancellationToken) {
    let mut last: HashMap<String, (u64, Instant)> = HashMap::new();
    let mut last_node: Option<(u64, Instant)> = None;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(WINDOW) => {}
        }
        let summary = collect(&config, &pods, &mut last, &mut last_node).await;
        let body = match serde_json::to_vec(&summary) {
            Ok(b) => b,
            Err(_) => continue,
        };
        let uri = format!("/rkube/v1/nodes/{}/stats/summary", config.node_name);
        let request = match http::Request::put(uri).header("content-type", "application/json").body(body) {
            Ok(r) => r,
            Err(_) => continue,
        };
        if let Err(e) = client.request_text(request).await {
            tracing::debug!(error = %e, "posting the stats summary failed");
        }
    }
}

async fn collect(
    config: &KubeletConfig,
    pods: &PodManager,
    last: &mut HashMap<String, (u64, Instant)>,
    last_node: &mut Option<(u64, Instant)>,
) -> Value {
    let runtime = &pods.context().runtime;
    let now = Instant::now();
    let time = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let containers = runtime.list_containers().await.unwrap_or_default();
    let mut by_pod: HashMap<String, Vec<Value>> = HashMap::new();
    let mut seen = HashMap::new();
    for c in containers.iter().filter(|c| c.state == ContainerState::Running) {
        let Ok(stats) = runtime.container_stats(&c.id).await else { continue };
        let cores = match last.get(&c.id) {
            Some((prev, at)) if stats.cpu_usage_nanos >= *prev => {
                let secs = now.duration_since(*at).as_secs_f64().max(0.001);
                ((stats.cpu_usage_nanos - prev) as f64 / secs) as u64
            }
            _ => 0,
        };
        seen.insert(c.id.clone(), (stats.cpu_usage_nanos, now));
        let Some(uid) = c.labels.get(LABEL_POD_UID) else { continue };
        by_pod.entry(uid.clone()).or_default().push(json!({
            "name": c.labels.get(LABEL_CONTAINER_NAME).cloned().unwrap_or_default(),
            "cpu": {"time": time, "usageNanoCores": cores, "usageCoreNanoSeconds": stats.cpu_usage_nanos},
            "memory": {"time": time, "workingSetBytes": stats.memory_working_set_bytes},
        }));
    }
    *last = seen;
    let mut pod_entries = Vec::new();
    for pod in pods.pods() {
        let Some(uid) = pod.metadata.uid.clone() else { continue };
        let Some(containers) = by_pod.remove(&uid) else { continue };
        pod_entries.push(json!({
            "podRef": {"name": pod.metadata.name, "namespace": pod.metadata.namespace, "uid": uid},
            "containers": containers,
        }));
    }
    let node_cpu = node_cpu_nanos().unwrap_or(0);
    let node_cores = match last_node {
        Some((prev, at)) if node_cpu >= *prev => ((node_cpu - *prev) as f64 / now.duration_since(*at).as_secs_f64().max(0.001)) as u64,
        _ => 0,
    };
    *last_node = Some((node_cpu, now));
    json!({
        "window": "10s",
        "node": {
            "nodeName": config.node_name,
            "cpu": {"time": time, "usageNanoCores": node_cores, "usageCoreNanoSeconds": node_cpu},
            "memory": {"time": time, "workingSetBytes": node_memory_working_set().unwrap_or(0)},
        },
        "pods": pod_entries,
    })
}
