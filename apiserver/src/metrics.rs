//! The resource metrics API (`metrics.k8s.io/v1beta1`, as metrics-server serves it):
//! NodeMetrics and PodMetrics, get and list, answered from an in-memory store of the
//! latest usage each node reported — what `kubectl top` and the HPA controller read.
//!
//! Where the numbers come from: nodes have no kubelet endpoint the apiserver could scrape
//! yet, so the kubelet *pushes* instead. It sends the document it already computes for
//! its Summary API (`/stats/summary`: `node.cpu.usageNanoCores`,
//! `node.memory.workingSetBytes`, and per pod `podRef` + `containers[].cpu/memory`) with
//! `PUT /rkube/v1/nodes/{node}/stats/summary`. The same parser will serve a scraper
//! (`GET https://{node}:10250/stats/summary`) once nodes advertise a kubelet endpoint, so
//! only the transport changes. Reports are kept in memory only (metrics are not stored
//! in etcd in Kubernetes either) and expire after [`REPORT_TTL`]. Until authentication
//! lands the write path is open like every other path; afterwards it must be restricted
//! to the node's own identity (`system:node:{node}`), as NodeRestriction does.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::errors::ApiError;
use crate::filter::Filter;
use crate::registry::{self, ResourceInfo};
use crate::server::ApiServer;

/// How long a node's report is served after it arrived.
pub const REPORT_TTL: Duration = Duration::from_secs(120);

/// The window a report covers when it does not say (metrics-server's default resolution).
pub const DEFAULT_WINDOW: &str = "10s";

/// Why a summary push was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SummaryError {
    #[error("the summary is not a JSON object")]
    NotAnObject,
    #[error("the summary is for node {found:?}, not {expected:?}")]
    WrongNode { expected: String, found: String },
    #[error("pods[{index}].podRef needs a name and a namespace")]
    PodRef { index: usize },
    #[error("window {0:?} is not a duration like \"10s\"")]
    Window(String),
}

/// The usage of one container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerUsage {
    pub name: String,
    pub cpu_nano_cores: Option<u64>,
    pub memory_bytes: Option<u64>,
}

/// The usage of one pod's containers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodUsage {
    pub namespace: String,
    pub name: String,
    pub containers: Vec<ContainerUsage>,
}

/// One node's latest report.
#[derive(Debug, Clone)]
pub struct NodeReport {
    /// When the usage was measured (RFC 3339), the end of the window.
    pub timestamp: String,
    /// The window the usage was averaged over (a Go duration string, `10s`).
    pub window: String,
    pub cpu_nano_cores: Option<u64>,
    pub memory_bytes: Option<u64>,
    pub pods: Vec<PodUsage>,
    received: Instant,
}

/// The reports of every node, newest per node.
#[derive(Debug, Default)]
pub struct MetricsStore {
    nodes: Mutex<HashMap<String, NodeReport>>,
}

fn u64_at(v: &Value, pointer: &str) -> Option<u64> {
    v.pointer(pointer).and_then(|x| x.as_u64().or_else(|| x.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64)))
}

fn is_go_duration(s: &str) -> bool {
    let mut rest = s;
    if rest.is_empty() {
        return false;
    }
    while !rest.is_empty() {
        let num_len = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
        if num_len == 0 {
            return false;
        }
        rest = &rest[num_len..];
        let unit = ["ns", "us", "µs", "ms", "h", "m", "s"].iter().find(|u| rest.starts_with(*u));
        match unit {
            Some(u) => rest = &rest[u.len()..],
            None => return false,
        }
    }
    true
}

/// Reads a kubelet Summary document (`stats/summary`) pushed for `node`. An optional
/// top-level `window` (rkube's addition; the Summary API has none) says what the rates
/// were averaged over.
pub fn parse_summary(node: &str, summary: &Value) -> Result<NodeReport, SummaryError> {
    if !summary.is_object() {
        return Err(SummaryError::NotAnObject);
    }
    if let Some(found) = summary.pointer("/node/nodeName").and_then(Value::as_str) {
        if found != node {
            return Err(SummaryError::WrongNode { expected: node.into(), found: found.into() });
        }
    }
    let window = match summary.get("window").and_then(Value::as_str) {
        Some(w) if is_go_duration(w) => w.to_string(),
        Some(w) => return Err(SummaryError::Window(w.into())),
        None => DEFAULT_WINDOW.to_string(),
    };
    let timestamp = summary
        .pointer("/node/cpu/time")
        .or_else(|| summary.pointer("/node/memory/time"))
        .and_then(Value::as_str)
        .map(str::to_string)
        .unwrap_or_else(|| chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
    let mut pods = Vec::new();
    for (index, p) in summary.get("pods").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default().iter().enumerate() {
        let name = p.pointer("/podRef/name").and_then(Value::as_str).filter(|s| !s.is_empty());
        let namespace = p.pointer("/podRef/namespace").and_then(Value::as_str).filter(|s| !s.is_empty());
        let (Some(name), Some(namespace)) = (name, namespace) else { return Err(SummaryError::PodRef { index }) };
        let containers = p
            .get("containers")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .map(|c| ContainerUsage {
                name: c.get("name").and_then(Value::as_str).unwrap_or_default().to_string(),
                cpu_nano_cores: u64_at(c, "/cpu/usageNanoCores"),
                memory_bytes: u64_at(c, "/memory/workingSetBytes"),
            })
            .collect();
        pods.push(PodUsage { namespace: namespace.into(), name: name.into(), containers });
    }
    Ok(NodeReport {
        timestamp,
        window,
        cpu_nano_cores: u64_at(summary, "/node/cpu/usageNanoCores"),
        memory_bytes: u64_at(summary, "/node/memory/workingSetBytes"),
        pods,
        received: Instant::now(),
    })
}

/// CPU as metrics-server prints it: nano-cores.
fn cpu_quantity(nano: u64) -> String {
    if nano == 0 {
        "0".into()
    } else {
        format!("{nano}n")
    }
}

/// Memory as metrics-server prints it: binary SI.
fn memory_quantity(bytes: u64) -> String {
    if bytes == 0 {
        "0".into()
    } else if bytes & 1023 == 0 {
        format!("{}Ki", bytes / 1024)
    } else {
        bytes.to_string()
    }
}

fn usage(cpu: Option<u64>, memory: Option<u64>) -> Value {
    json!({"cpu": cpu_quantity(cpu.unwrap_or(0)), "memory": memory_quantity(memory.unwrap_or(0))})
}

fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

impl MetricsStore {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, NodeReport>> {
        self.nodes.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Keeps `report` as `node`'s latest.
    pub fn record(&self, node: &str, report: NodeReport) {
        self.lock().insert(node.to_string(), report);
    }

    /// The reports younger than the TTL (expired ones are dropped).
    pub fn fresh(&self) -> Vec<(String, NodeReport)> {
        let mut nodes = self.lock();
        nodes.retain(|_, r| r.received.elapsed() < REPORT_TTL);
        let mut out: Vec<(String, NodeReport)> = nodes.iter().map(|(n, r)| (n.clone(), r.clone())).collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }
}

/// The resources of `metrics.k8s.io/v1beta1`, for discovery and error messages.
pub fn node_metrics_resource() -> &'static ResourceInfo {
    &registry::METRICS_RESOURCES[0]
}

pub fn pod_metrics_resource() -> &'static ResourceInfo {
    &registry::METRICS_RESOURCES[1]
}

fn list_of(kind: &str, items: Vec<Value>) -> Value {
    json!({"kind": kind, "apiVersion": "metrics.k8s.io/v1beta1", "metadata": {}, "items": items})
}

impl ApiServer {
    /// `PUT /rkube/v1/nodes/{node}/stats/summary`: a node's kubelet reports its usage.
    pub fn record_node_summary(&self, node: &str, body: &[u8]) -> Result<Value, ApiError> {
        let summary: Value = serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("the summary is not JSON: {e}")))?;
        let report = parse_summary(node, &summary).map_err(|e| ApiError::bad_request(e.to_string()))?;
        tracing::debug!(node, pods = report.pods.len(), "node metrics summary recorded");
        self.metrics.record(node, report);
        Ok(json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 200}))
    }

    /// Serves `GET /apis/metrics.k8s.io/v1beta1/<rest>` with `query`.
    pub fn serve_metrics(&self, method: &http::Method, rest: &[&str], query: Option<&str>) -> Result<Value, ApiError> {
        if method != http::Method::GET {
            return Err(ApiError::method_not_allowed(format!("the server does not allow this method on the requested resource ({method})")));
        }
        let params = crate::handlers::Params::parse(query)?;
        if params.flag("watch") {
            return Err(ApiError::method_not_allowed("the server does not allow this method on the requested resource (watch)"));
        }
        let labels = params.get("labelSelector");
        let fields = params.get("fieldSelector");
        match rest {
            ["nodes"] => Ok(list_of("NodeMetricsList", self.node_metrics(None, labels, fields)?)),
            ["nodes", name] => self.node_metrics(Some(name), None, None)?.pop().ok_or_else(|| ApiError::not_found(node_metrics_resource(), name)),
            ["pods"] => Ok(list_of("PodMetricsList", self.pod_metrics(None, None, labels, fields)?)),
            ["namespaces", ns, "pods"] => Ok(list_of("PodMetricsList", self.pod_metrics(Some(ns), None, labels, fields)?)),
            ["namespaces", ns, "pods", name] => {
                self.pod_metrics(Some(ns), Some(name), None, None)?.pop().ok_or_else(|| ApiError::not_found(pod_metrics_resource(), name))
            }
            _ => Err(ApiError::path_not_found(&format!("/apis/metrics.k8s.io/v1beta1/{}", rest.join("/")))),
        }
    }

    fn node_metrics(&self, name: Option<&str>, labels: Option<&str>, fields: Option<&str>) -> Result<Vec<Value>, ApiError> {
        let nodes = registry::lookup("", "v1", "nodes").ok_or_else(|| ApiError::internal("nodes not registered"))?;
        let filter = Filter::new(nodes, None, labels, fields)?;
        let cache = self.cache(nodes)?;
        let now = now_rfc3339();
        let mut out = Vec::new();
        for (node, report) in self.metrics.fresh() {
            if name.is_some_and(|n| n != node) {
                continue;
            }
            // Only nodes that exist, as metrics-server serves them.
            let Some(obj) = cache.get(&nodes.key(None, &node)) else { continue };
            if !filter.matches(&obj) || report.cpu_nano_cores.is_none() && report.memory_bytes.is_none() {
                continue;
            }
            let mut meta = json!({"name": node, "creationTimestamp": now});
            if let Some(l) = obj.pointer("/metadata/labels") {
                meta["labels"] = l.clone();
            }
            out.push(json!({
                "kind": "NodeMetrics", "apiVersion": "metrics.k8s.io/v1beta1",
                "metadata": meta, "timestamp": report.timestamp, "window": report.window,
                "usage": usage(report.cpu_nano_cores, report.memory_bytes),
            }));
        }
        Ok(out)
    }

    fn pod_metrics(&self, namespace: Option<&str>, name: Option<&str>, labels: Option<&str>, fields: Option<&str>) -> Result<Vec<Value>, ApiError> {
        let pods = registry::lookup("", "v1", "pods").ok_or_else(|| ApiError::internal("pods not registered"))?;
        let filter = Filter::new(pods, namespace.map(str::to_string), labels, fields)?;
        let cache = self.cache(pods)?;
        let now = now_rfc3339();
        let mut out = Vec::new();
        for (_, report) in self.metrics.fresh() {
            for p in &report.pods {
                if namespace.is_some_and(|ns| ns != p.namespace) || name.is_some_and(|n| n != p.name) {
                    continue;
                }
                // Only pods that still exist, with their current labels.
                let Some(obj) = cache.get(&pods.key(Some(&p.namespace), &p.name)) else { continue };
                if !filter.matches(&obj) {
                    continue;
                }
                let mut meta = json!({"name": p.name, "namespace": p.namespace, "creationTimestamp": now});
                if let Some(l) = obj.pointer("/metadata/labels") {
                    meta["labels"] = l.clone();
                }
                let containers: Vec<Value> =
                    p.containers.iter().map(|c| json!({"name": c.name, "usage": usage(c.cpu_nano_cores, c.memory_bytes)})).collect();
                out.push(json!({
                    "kind": "PodMetrics", "apiVersion": "metrics.k8s.io/v1beta1",
                    "metadata": meta, "timestamp": report.timestamp, "window": report.window,
                    "containers": containers,
                }));
            }
        }
        out.sort_by(|a, b| {
            let key = |v: &Value| (v.pointer("/metadata/namespace").and_then(Value::as_str).map(str::to_string), v.pointer("/metadata/name").and_then(Value::as_str).map(str::to_string));
            key(a).cmp(&key(b))
        });
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summaries_parse_and_check_the_node() {
        let s = json!({
            "node": {"nodeName": "n1", "cpu": {"time": "2026-01-01T00:00:00Z", "usageNanoCores": 250_000_000u64}, "memory": {"workingSetBytes": 1048576}},
            "pods": [{"podRef": {"name": "web", "namespace": "default"}, "containers": [{"name": "c", "cpu": {"usageNanoCores": 100_000_000u64}, "memory": {"workingSetBytes": 2048}}]}],
            "window": "15s",
        });
        let r = parse_summary("n1", &s).expect("parses");
        assert_eq!(r.timestamp, "2026-01-01T00:00:00Z");
        assert_eq!(r.window, "15s");
        assert_eq!(r.cpu_nano_cores, Some(250_000_000));
        assert_eq!(r.pods[0].containers[0], ContainerUsage { name: "c".into(), cpu_nano_cores: Some(100_000_000), memory_bytes: Some(2048) });
        assert!(matches!(parse_summary("n2", &s), Err(SummaryError::WrongNode { .. })));
        assert_eq!(parse_summary("n1", &json!({"pods": [{"podRef": {"name": "x"}}]})).err(), Some(SummaryError::PodRef { index: 0 }));
        assert_eq!(parse_summary("n1", &json!({"window": "ten"})).err(), Some(SummaryError::Window("ten".into())));
        assert_eq!(parse_summary("n1", &json!({})).map(|r| r.window).ok(), Some(DEFAULT_WINDOW.to_string()));
    }

    #[test]
    fn quantities_print_like_metrics_server() {
        assert_eq!(cpu_quantity(100_000_000), "100000000n");
        assert_eq!(memory_quantity(2048), "2Ki");
        assert_eq!(memory_quantity(1000), "1000");
        assert_eq!(memory_quantity(0), "0");
        assert!(is_go_duration("1m30.5s") && is_go_duration("500ms") && !is_go_duration("s") && !is_go_duration(""));
    }
}
