//! Where the HPA gets pod metrics: the [`MetricsSource`] trait, its production
//! implementation over the resource metrics API (`metrics.k8s.io/v1beta1` PodMetrics,
//! what metrics-server — or rkube's apiserver — serves), and a fed one for tests.

use std::sync::Mutex;
use std::time::Duration;

use apimachinery::labels::Selector;
use apimachinery::quantity::Quantity;
use futures::future::BoxFuture;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DynamicObject, ListParams};
use kube::core::{ApiResource, GroupVersionKind};
use serde_json::Value;

use super::recommend::{PodMetric, PodMetrics};

/// Why pod metrics could not be read.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("listing pod metrics in {namespace} failed")]
    List {
        namespace: String,
        #[source]
        source: kube::Error,
    },
}

/// Pod metrics of the pods a selector selects in a namespace.
pub trait MetricsSource: Send + Sync {
    fn pod_metrics<'a>(&'a self, namespace: &'a str, selector: &'a Selector) -> BoxFuture<'a, Result<PodMetrics, MetricsError>>;
}

/// Reads `metrics.k8s.io/v1beta1` PodMetrics through the API server.
pub struct ApiMetricsSource {
    client: kube::Client,
}

impl ApiMetricsSource {
    pub fn new(client: kube::Client) -> ApiMetricsSource {
        ApiMetricsSource { client }
    }
}

fn pod_metrics_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk("metrics.k8s.io", "v1beta1", "PodMetrics"), "pods")
}

/// A Go duration (`10s`, `1m0s`, `20.5s`, `500ms`).
pub fn parse_go_duration(s: &str) -> Option<Duration> {
    let mut rest = s;
    let mut total = 0f64;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let n = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
        let value: f64 = rest[..n].parse().ok()?;
        rest = &rest[n..];
        let (unit, scale) = [("ns", 1e-9), ("us", 1e-6), ("µs", 1e-6), ("ms", 1e-3), ("h", 3600.0), ("m", 60.0), ("s", 1.0)]
            .into_iter()
            .find(|(u, _)| rest.starts_with(u))?;
        rest = &rest[unit.len()..];
        total += value * scale;
    }
    Duration::try_from_secs_f64(total).ok()
}

/// One PodMetrics object as the HPA needs it: usage summed over containers, a resource
/// kept only when every container reports it (as Kubernetes' metrics client does).
pub fn pod_metric_of(item: &Value) -> Option<(String, PodMetric)> {
    let name = item.pointer("/metadata/name")?.as_str()?.to_string();
    let timestamp: Timestamp = item.get("timestamp")?.as_str()?.parse().ok()?;
    let window = item.get("window").and_then(Value::as_str).and_then(parse_go_duration).unwrap_or(Duration::from_secs(30));
    let containers = item.get("containers")?.as_array()?;
    let mut usage = std::collections::BTreeMap::new();
    for resource in ["cpu", "memory"] {
        let mut total = 0i64;
        let mut complete = !containers.is_empty();
        for c in containers {
            match c.pointer(&format!("/usage/{resource}")).and_then(Value::as_str).and_then(|q| Quantity::parse(q).ok()) {
                Some(q) => total = total.saturating_add(q.to_millis() as i64),
                None => complete = false,
            }
        }
        if complete {
            usage.insert(resource.to_string(), total);
        }
    }
    Some((name, PodMetric { timestamp, window, usage }))
}

impl MetricsSource for ApiMetricsSource {
    fn pod_metrics<'a>(&'a self, namespace: &'a str, selector: &'a Selector) -> BoxFuture<'a, Result<PodMetrics, MetricsError>> {
        Box::pin(async move {
            let api: Api<DynamicObject> = Api::namespaced_with(self.client.clone(), namespace, &pod_metrics_resource());
            let params = ListParams::default().labels(&selector.to_string());
            let list = api.list(&params).await.map_err(|source| MetricsError::List { namespace: namespace.to_string(), source })?;
            Ok(list
                .items
                .iter()
                .filter_map(|o| serde_json::to_value(o).ok())
                .filter_map(|v| pod_metric_of(&v))
                .collect())
        })
    }
}

/// Metrics a test sets directly.
#[derive(Debug, Default)]
pub struct FedMetricsSource {
    metrics: Mutex<PodMetrics>,
}

impl FedMetricsSource {
    /// Replaces every pod's metric.
    pub fn set(&self, metrics: PodMetrics) {
        *self.metrics.lock().unwrap_or_else(|e| e.into_inner()) = metrics;
    }
}

impl MetricsSource for FedMetricsSource {
    fn pod_metrics<'a>(&'a self, _namespace: &'a str, _selector: &'a Selector) -> BoxFuture<'a, Result<PodMetrics, MetricsError>> {
        let m = self.metrics.lock().unwrap_or_else(|e| e.into_inner()).clone();
        Box::pin(async move { Ok(m) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn durations_parse_like_go() {
        assert_eq!(parse_go_duration("10s"), Some(Duration::from_secs(10)));
        assert_eq!(parse_go_duration("1m0s"), Some(Duration::from_secs(60)));
        assert_eq!(parse_go_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_go_duration("x"), None);
        assert_eq!(parse_go_duration(""), None);
    }

    #[test]
    fn pod_metrics_sum_containers() {
        let item = json!({
            "metadata": {"name": "web-1", "namespace": "default"},
            "timestamp": "2026-01-01T00:00:00Z", "window": "15s",
            "containers": [
                {"name": "a", "usage": {"cpu": "100000000n", "memory": "1Ki"}},
                {"name": "b", "usage": {"cpu": "50m"}},
            ],
        });
        let (name, m) = pod_metric_of(&item).expect("parses");
        assert_eq!(name, "web-1");
        assert_eq!(m.window, Duration::from_secs(15));
        assert_eq!(m.usage.get("cpu"), Some(&150));
        assert_eq!(m.usage.get("memory"), None, "container b reports no memory");
    }
}
