//! Version conversion for resources served in two shapes from one storage, as Kubernetes
//! stores them: autoscaling/v1 HorizontalPodAutoscalers are kept as autoscaling/v2, and
//! events.k8s.io/v1 Events as core/v1 Events. An object written in either version is
//! read, listed and watched in both, and the controllers (which use v2 and core/v1) act
//! on it whichever version wrote it.
//!
//! What the older shape cannot hold travels in annotations, under Kubernetes' names, so
//! a read-modify-write through autoscaling/v1 keeps a v2 object's other metrics,
//! behaviour and conditions.

use serde_json::{json, Map, Value};

use crate::registry::ResourceInfo;
use crate::storage::{RangeOptions, Store, StoreError};

/// The non-CPU metrics of an autoscaling/v1 HPA (a JSON list in the v1 metric shape).
pub const HPA_METRICS: &str = "autoscaling.alpha.kubernetes.io/metrics";
/// The current metrics of an autoscaling/v1 HPA's status.
pub const HPA_CURRENT_METRICS: &str = "autoscaling.alpha.kubernetes.io/current-metrics";
/// The status conditions of an autoscaling/v1 HPA.
pub const HPA_CONDITIONS: &str = "autoscaling.alpha.kubernetes.io/conditions";
/// The scaling behaviour (`spec.behavior` of v2) of an autoscaling/v1 HPA.
pub const HPA_BEHAVIOR: &str = "autoscaling.alpha.kubernetes.io/behavior";

/// The CPU utilization an HPA without metrics targets (Kubernetes' `DefaultCPUUtilization`).
const DEFAULT_CPU_UTILIZATION: i64 = 80;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Conversion {
    /// autoscaling/v1 HorizontalPodAutoscaler ↔ autoscaling/v2 (stored).
    HpaV1,
    /// events.k8s.io/v1 Event ↔ core/v1 Event (stored).
    EventsV1,
}

fn conversion(res: &ResourceInfo) -> Option<Conversion> {
    match (res.group, res.version, res.plural) {
        ("autoscaling", "v1", "horizontalpodautoscalers") => Some(Conversion::HpaV1),
        ("events.k8s.io", "v1", "events") => Some(Conversion::EventsV1),
        _ => None,
    }
}

/// Whether objects of `res` are stored in another version's shape.
pub fn converts(res: &ResourceInfo) -> bool {
    conversion(res).is_some()
}

/// Turns an object in `res`'s version into the stored version's shape.
pub fn to_storage(res: &ResourceInfo, obj: &mut Value) {
    match conversion(res) {
        Some(Conversion::HpaV1) => hpa_v1_to_v2(obj),
        Some(Conversion::EventsV1) => rename_fields(obj, EVENT_FIELDS, false, "v1"),
        None => {}
    }
}

/// Turns a stored object into `res`'s version.
pub fn from_storage(res: &ResourceInfo, obj: &mut Value) {
    match conversion(res) {
        Some(Conversion::HpaV1) => hpa_v2_to_v1(obj),
        Some(Conversion::EventsV1) => rename_fields(obj, EVENT_FIELDS, true, "events.k8s.io/v1"),
        None => {}
    }
}

/// An object in `res`'s version as it reads back once stored (defaults the stored
/// version applies included); unchanged for resources that are not converted.
pub fn round_trip(res: &ResourceInfo, obj: &mut Value) {
    if converts(res) {
        to_storage(res, obj);
        from_storage(res, obj);
    }
}

/// Where earlier rkube releases kept the converted versions' objects apart, and the
/// version those objects are in.
const LEGACY_PREFIXES: &[(&str, &str, &str, &str)] = &[
    ("/registry/horizontalpodautoscalers-v1/", "autoscaling", "v1", "horizontalpodautoscalers"),
    ("/registry/events.k8s.io-events/", "events.k8s.io", "v1", "events"),
];

/// Moves objects an earlier release stored under a per-version prefix into the shared
/// storage, converted; an object whose name is taken there already stays where it was,
/// with a warning. Runs before the watch caches start.
pub async fn migrate_legacy(store: &dyn Store) -> Result<(), StoreError> {
    for (prefix, group, version, plural) in LEGACY_PREFIXES {
        let Some(res) = crate::registry::lookup(group, version, plural) else { continue };
        let listed = store.range(prefix, RangeOptions::default()).await?;
        for kv in listed.kvs {
            let Ok(mut obj) = crate::watchcache::decode_stored(&kv.value, kv.mod_revision) else {
                tracing::warn!(key = %kv.key, "not moving an undecodable object to the shared storage");
                continue;
            };
            to_storage(res, &mut obj);
            let key = format!("{}{}", res.prefix(), kv.key.trim_start_matches(prefix));
            match store.create(&key, crate::handlers::to_stored(&obj)).await {
                Ok(_) => {}
                Err(StoreError::AlreadyExists { .. }) => {
                    tracing::warn!(from = %kv.key, to = %key, "an object of that name exists in the shared storage; leaving the old one in place");
                    continue;
                }
                Err(e) => return Err(e),
            }
            store.delete(&kv.key, Some(kv.mod_revision)).await?;
        }
    }
    Ok(())
}

/// core/v1 Event field → events.k8s.io/v1 Event field; the rest keep their names.
const EVENT_FIELDS: &[(&str, &str)] = &[
    ("involvedObject", "regarding"),
    ("message", "note"),
    ("reportingComponent", "reportingController"),
    ("source", "deprecatedSource"),
    ("firstTimestamp", "deprecatedFirstTimestamp"),
    ("lastTimestamp", "deprecatedLastTimestamp"),
    ("count", "deprecatedCount"),
];

/// Renames top-level fields by `table` (left → right, or right → left when `forward`
/// is false) and sets `apiVersion`.
fn rename_fields(obj: &mut Value, table: &[(&str, &str)], forward: bool, api_version: &str) {
    let Some(o) = obj.as_object_mut() else { return };
    for (a, b) in table {
        let (from, to) = if forward { (a, b) } else { (b, a) };
        if let Some(v) = o.remove(*from) {
            o.insert((*to).to_string(), v);
        }
    }
    o.insert("apiVersion".into(), Value::String(api_version.into()));
}

/// How one metric source's fields map between the v1 shape (left, a key of the source)
/// and the v2 shape (right, a path in the source).
const SPEC_FIELDS: &[(&str, &[(&str, &str)])] = &[
    ("resource", &[("name", "name"), ("targetAverageUtilization", "target/averageUtilization"), ("targetAverageValue", "target/averageValue")]),
    (
        "containerResource",
        &[("name", "name"), ("container", "container"), ("targetAverageUtilization", "target/averageUtilization"), ("targetAverageValue", "target/averageValue")],
    ),
    ("pods", &[("metricName", "metric/name"), ("selector", "metric/selector"), ("targetAverageValue", "target/averageValue")]),
    (
        "object",
        &[("target", "describedObject"), ("metricName", "metric/name"), ("selector", "metric/selector"), ("targetValue", "target/value"), ("averageValue", "target/averageValue")],
    ),
    (
        "external",
        &[("metricName", "metric/name"), ("metricSelector", "metric/selector"), ("targetValue", "target/value"), ("targetAverageValue", "target/averageValue")],
    ),
];

const STATUS_FIELDS: &[(&str, &[(&str, &str)])] = &[
    ("resource", &[("name", "name"), ("currentAverageUtilization", "current/averageUtilization"), ("currentAverageValue", "current/averageValue")]),
    (
        "containerResource",
        &[("name", "name"), ("container", "container"), ("currentAverageUtilization", "current/averageUtilization"), ("currentAverageValue", "current/averageValue")],
    ),
    ("pods", &[("metricName", "metric/name"), ("selector", "metric/selector"), ("currentAverageValue", "current/averageValue")]),
    (
        "object",
        &[("target", "describedObject"), ("metricName", "metric/name"), ("selector", "metric/selector"), ("currentValue", "current/value"), ("averageValue", "current/averageValue")],
    ),
    (
        "external",
        &[("metricName", "metric/name"), ("metricSelector", "metric/selector"), ("currentValue", "current/value"), ("currentAverageValue", "current/averageValue")],
    ),
];

/// The source key of a metric's `type` (`Resource` → `resource`).
fn source_key(metric: &Value) -> Option<&'static str> {
    match metric.get("type").and_then(Value::as_str)? {
        "Resource" => Some("resource"),
        "ContainerResource" => Some("containerResource"),
        "Pods" => Some("pods"),
        "Object" => Some("object"),
        "External" => Some("external"),
        _ => None,
    }
}

fn set_path(obj: &mut Map<String, Value>, path: &str, value: Value) {
    match path.split_once('/') {
        None => {
            obj.insert(path.to_string(), value);
        }
        Some((head, rest)) => {
            let child = obj.entry(head.to_string()).or_insert_with(|| json!({}));
            if let Some(child) = child.as_object_mut() {
                set_path(child, rest, value);
            }
        }
    }
}

fn get_path<'a>(obj: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('/').try_fold(obj, |v, key| v.get(key)).filter(|v| !v.is_null())
}

/// The field pairs `table` has for a metric source key.
fn fields_of<'t>(table: &[(&str, &'t [(&'t str, &'t str)])], key: &str) -> &'t [(&'t str, &'t str)] {
    table.iter().find(|(k, _)| *k == key).map(|(_, f)| *f).unwrap_or_default()
}

/// One metric (spec or status, by `table`) from the v2 shape to the v1 shape.
fn metric_to_v1(metric: &Value, table: &[(&str, &[(&str, &str)])]) -> Value {
    let mut out = Map::new();
    if let Some(t) = metric.get("type") {
        out.insert("type".into(), t.clone());
    }
    if let Some(key) = source_key(metric) {
        let (fields, source) = (fields_of(table, key), metric.get(key).cloned().unwrap_or(Value::Null));
        let mut v1 = Map::new();
        for (v1_key, v2_path) in fields {
            if let Some(v) = get_path(&source, v2_path) {
                v1.insert((*v1_key).to_string(), v.clone());
            }
        }
        out.insert(key.into(), Value::Object(v1));
    }
    Value::Object(out)
}

/// One metric from the v1 shape to the v2 shape; a spec metric's target gets the type
/// its values imply.
fn metric_to_v2(metric: &Value, table: &[(&str, &[(&str, &str)])], spec: bool) -> Value {
    let mut out = Map::new();
    if let Some(t) = metric.get("type") {
        out.insert("type".into(), t.clone());
    }
    if let Some(key) = source_key(metric) {
        let (fields, source) = (fields_of(table, key), metric.get(key).cloned().unwrap_or(Value::Null));
        let mut v2 = Map::new();
        for (v1_key, v2_path) in fields {
            if let Some(v) = source.get(*v1_key).filter(|v| !v.is_null()) {
                set_path(&mut v2, v2_path, v.clone());
            }
        }
        if spec {
            let target = v2.entry("target").or_insert_with(|| json!({}));
            if let Some(t) = target.as_object_mut() {
                let kind = if t.contains_key("averageUtilization") {
                    "Utilization"
                } else if t.contains_key("averageValue") {
                    "AverageValue"
                } else {
                    "Value"
                };
                t.insert("type".into(), json!(kind));
            }
        }
        out.insert(key.into(), Value::Object(v2));
    }
    Value::Object(out)
}

/// Whether a v2 metric is the CPU utilization one autoscaling/v1 has a field for; the
/// status form has no target, so `field` names where the percentage sits.
fn cpu_utilization(metric: &Value, field: &str) -> Option<Value> {
    if metric.get("type").and_then(Value::as_str) != Some("Resource") || metric.pointer("/resource/name").and_then(Value::as_str) != Some("cpu") {
        return None;
    }
    metric.pointer(&format!("/resource/{field}/averageUtilization")).filter(|v| !v.is_null()).cloned()
}

fn cpu_metric(target_utilization: Value) -> Value {
    json!({"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": target_utilization}}})
}

/// Takes an annotation out of an object's metadata (dropping an emptied map).
fn take_annotation(obj: &mut Value, key: &str) -> Option<String> {
    let meta = obj.get_mut("metadata")?.as_object_mut()?;
    let annotations = meta.get_mut("annotations")?.as_object_mut()?;
    let value = annotations.remove(key)?;
    if annotations.is_empty() {
        meta.remove("annotations");
    }
    value.as_str().map(str::to_string)
}

fn put_annotation(obj: &mut Value, key: &str, value: &Value) {
    let Some(o) = obj.as_object_mut() else { return };
    let meta = o.entry("metadata").or_insert_with(|| json!({}));
    let Some(meta) = meta.as_object_mut() else { return };
    let annotations = meta.entry("annotations").or_insert_with(|| json!({}));
    if let Some(a) = annotations.as_object_mut() {
        a.insert(key.to_string(), Value::String(value.to_string()));
    }
}

fn parse_list(text: Option<String>) -> Vec<Value> {
    text.and_then(|t| serde_json::from_str::<Vec<Value>>(&t).ok()).unwrap_or_default()
}

fn hpa_v1_to_v2(obj: &mut Value) {
    let other_metrics = parse_list(take_annotation(obj, HPA_METRICS));
    let current_metrics = take_annotation(obj, HPA_CURRENT_METRICS).map(|t| parse_list(Some(t)));
    let conditions = parse_list(take_annotation(obj, HPA_CONDITIONS));
    let behavior = take_annotation(obj, HPA_BEHAVIOR).and_then(|t| serde_json::from_str::<Value>(&t).ok());
    let Some(o) = obj.as_object_mut() else { return };
    o.insert("apiVersion".into(), json!("autoscaling/v2"));
    if let Some(spec) = o.get_mut("spec").and_then(Value::as_object_mut) {
        let mut metrics: Vec<Value> = spec.remove("targetCPUUtilizationPercentage").filter(|v| !v.is_null()).map(cpu_metric).into_iter().collect();
        metrics.extend(other_metrics.iter().map(|m| metric_to_v2(m, SPEC_FIELDS, true)));
        // autoscaling/v1 always implied a CPU target; v2 spells it out.
        if metrics.is_empty() {
            metrics.push(cpu_metric(json!(DEFAULT_CPU_UTILIZATION)));
        }
        spec.insert("metrics".into(), Value::Array(metrics));
        if let Some(b) = behavior {
            spec.insert("behavior".into(), b);
        }
    }
    if let Some(status) = o.get_mut("status").and_then(Value::as_object_mut) {
        let cpu = status.remove("currentCPUUtilizationPercentage").filter(|v| !v.is_null());
        let current: Vec<Value> = match current_metrics {
            // The annotation has the raw values as well; it wins over the percentage.
            Some(list) => list.iter().map(|m| metric_to_v2(m, STATUS_FIELDS, false)).collect(),
            None => cpu
                .map(|pct| json!({"type": "Resource", "resource": {"name": "cpu", "current": {"averageUtilization": pct}}}))
                .into_iter()
                .collect(),
        };
        if !current.is_empty() {
            status.insert("currentMetrics".into(), Value::Array(current));
        }
        if !conditions.is_empty() {
            status.insert("conditions".into(), Value::Array(conditions));
        }
    }
}

fn hpa_v2_to_v1(obj: &mut Value) {
    let mut annotations: Vec<(&str, Value)> = Vec::new();
    let Some(o) = obj.as_object_mut() else { return };
    o.insert("apiVersion".into(), json!("autoscaling/v1"));
    if let Some(spec) = o.get_mut("spec").and_then(Value::as_object_mut) {
        let metrics = spec.remove("metrics").and_then(|m| m.as_array().cloned()).unwrap_or_default();
        let mut others = Vec::new();
        let mut cpu = None;
        for m in &metrics {
            match cpu_utilization(m, "target") {
                Some(pct) if cpu.is_none() => cpu = Some(pct),
                _ => others.push(metric_to_v1(m, SPEC_FIELDS)),
            }
        }
        if let Some(pct) = cpu {
            spec.insert("targetCPUUtilizationPercentage".into(), pct);
        }
        if !others.is_empty() {
            annotations.push((HPA_METRICS, Value::Array(others)));
        }
        if let Some(b) = spec.remove("behavior").filter(|b| !b.is_null()) {
            annotations.push((HPA_BEHAVIOR, b));
        }
    }
    if let Some(status) = o.get_mut("status").and_then(Value::as_object_mut) {
        let current = status.remove("currentMetrics").and_then(|m| m.as_array().cloned()).unwrap_or_default();
        if let Some(pct) = current.iter().find_map(|m| cpu_utilization(m, "current")) {
            status.insert("currentCPUUtilizationPercentage".into(), pct);
        }
        if !current.is_empty() {
            annotations.push((HPA_CURRENT_METRICS, Value::Array(current.iter().map(|m| metric_to_v1(m, STATUS_FIELDS)).collect())));
        }
        if let Some(conditions) = status.remove("conditions").filter(|c| c.as_array().is_some_and(|a| !a.is_empty())) {
            annotations.push((HPA_CONDITIONS, conditions));
        }
    }
    for (key, value) in annotations {
        put_annotation(obj, key, &value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::lookup;

    fn hpa_v1() -> &'static ResourceInfo {
        lookup("autoscaling", "v1", "horizontalpodautoscalers").expect("hpa v1")
    }

    #[test]
    fn v1_cpu_target_becomes_a_v2_utilization_metric_and_back() {
        let mut obj = json!({
            "apiVersion": "autoscaling/v1", "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": "web", "namespace": "default"},
            "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"}, "minReplicas": 1, "maxReplicas": 5, "targetCPUUtilizationPercentage": 50},
            "status": {"currentReplicas": 2, "desiredReplicas": 3, "currentCPUUtilizationPercentage": 70},
        });
        let original = obj.clone();
        to_storage(hpa_v1(), &mut obj);
        assert_eq!(obj["apiVersion"], "autoscaling/v2");
        assert_eq!(obj["spec"]["metrics"], json!([{"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 50}}}]));
        assert!(obj["spec"].get("targetCPUUtilizationPercentage").is_none());
        assert_eq!(obj["status"]["currentMetrics"][0]["resource"]["current"]["averageUtilization"], 70);
        from_storage(hpa_v1(), &mut obj);
        assert_eq!(obj["spec"], original["spec"]);
        assert_eq!(obj["status"]["currentCPUUtilizationPercentage"], 70);
        assert_eq!(obj["apiVersion"], "autoscaling/v1");
    }

    #[test]
    fn v1_without_a_target_gets_the_default_cpu_utilization() {
        let mut obj = json!({"apiVersion": "autoscaling/v1", "metadata": {"name": "a"}, "spec": {"maxReplicas": 3, "scaleTargetRef": {"kind": "Deployment", "name": "a"}}});
        round_trip(hpa_v1(), &mut obj);
        assert_eq!(obj["spec"]["targetCPUUtilizationPercentage"], 80);
        assert!(obj["metadata"].get("annotations").is_none(), "{obj}");
    }

    #[test]
    fn v2_only_fields_survive_a_trip_through_v1() {
        let stored = json!({
            "apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": "web", "annotations": {"team": "a"}},
            "spec": {
                "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"}, "maxReplicas": 5,
                "metrics": [
                    {"type": "Resource", "resource": {"name": "memory", "target": {"type": "AverageValue", "averageValue": "100Mi"}}},
                    {"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 60}}},
                    {"type": "Pods", "pods": {"metric": {"name": "qps"}, "target": {"type": "AverageValue", "averageValue": "10"}}},
                    {"type": "External", "external": {"metric": {"name": "queue", "selector": {"matchLabels": {"q": "a"}}}, "target": {"type": "Value", "value": "30"}}},
                    {"type": "Object", "object": {"describedObject": {"kind": "Service", "name": "s"}, "metric": {"name": "rps"}, "target": {"type": "AverageValue", "averageValue": "5"}}},
                ],
                "behavior": {"scaleDown": {"stabilizationWindowSeconds": 60}},
            },
            "status": {
                "currentReplicas": 1, "desiredReplicas": 1,
                "currentMetrics": [{"type": "Resource", "resource": {"name": "cpu", "current": {"averageUtilization": 20, "averageValue": "20m"}}}],
                "conditions": [{"type": "AbleToScale", "status": "True", "reason": "ReadyForNewScale"}],
            },
        });
        let mut v1 = stored.clone();
        from_storage(hpa_v1(), &mut v1);
        assert_eq!(v1["spec"]["targetCPUUtilizationPercentage"], 60);
        assert_eq!(v1["status"]["currentCPUUtilizationPercentage"], 20);
        assert!(v1["status"].get("conditions").is_none());
        let annotations = v1["metadata"]["annotations"].as_object().expect("annotations");
        assert_eq!(annotations["team"], "a");
        let others: Value = serde_json::from_str(annotations[HPA_METRICS].as_str().expect("metrics")).expect("json");
        assert_eq!(others[0], json!({"type": "Resource", "resource": {"name": "memory", "targetAverageValue": "100Mi"}}));
        assert_eq!(others[2]["external"], json!({"metricName": "queue", "metricSelector": {"matchLabels": {"q": "a"}}, "targetValue": "30"}));
        let mut back = v1.clone();
        to_storage(hpa_v1(), &mut back);
        // The CPU metric comes first after the trip; the rest keep their order.
        let mut want = stored.clone();
        let metrics = want["spec"]["metrics"].as_array_mut().expect("metrics");
        let cpu = metrics.remove(1);
        metrics.insert(0, cpu);
        assert_eq!(back["spec"], want["spec"]);
        assert_eq!(back["status"], want["status"]);
        assert_eq!(back["metadata"], want["metadata"]);
    }

    #[tokio::test]
    async fn objects_of_the_old_per_version_prefixes_move_to_the_shared_storage() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = crate::storage::embedded::EmbeddedStore::open(dir.path()).await.expect("store");
        let v1 = json!({"apiVersion": "autoscaling/v1", "kind": "HorizontalPodAutoscaler", "metadata": {"name": "a", "namespace": "ns"},
            "spec": {"maxReplicas": 3, "scaleTargetRef": {"kind": "Deployment", "name": "a"}, "targetCPUUtilizationPercentage": 40}});
        store.create("/registry/horizontalpodautoscalers-v1/ns/a", serde_json::to_vec(&v1).expect("json")).await.expect("create");
        store.create("/registry/horizontalpodautoscalers-v1/ns/b", b"{}".to_vec()).await.expect("create");
        store.create("/registry/horizontalpodautoscalers/ns/b", b"{}".to_vec()).await.expect("create");
        migrate_legacy(&store).await.expect("migrate");
        let (moved, _) = store.get("/registry/horizontalpodautoscalers/ns/a").await.expect("get");
        let moved: Value = serde_json::from_slice(&moved.expect("moved").value).expect("json");
        assert_eq!(moved["apiVersion"], "autoscaling/v2");
        assert_eq!(moved["spec"]["metrics"][0]["resource"]["target"]["averageUtilization"], 40);
        assert!(store.get("/registry/horizontalpodautoscalers-v1/ns/a").await.expect("get").0.is_none());
        // A name taken in the shared storage leaves the old object where it was.
        assert!(store.get("/registry/horizontalpodautoscalers-v1/ns/b").await.expect("get").0.is_some());
    }

    #[test]
    fn events_rename_between_core_and_events_k8s_io() {
        let res = lookup("events.k8s.io", "v1", "events").expect("events");
        let core = json!({
            "apiVersion": "v1", "kind": "Event", "metadata": {"name": "e", "namespace": "default"},
            "involvedObject": {"kind": "Pod", "name": "p"}, "reason": "Started", "message": "Started container",
            "source": {"component": "kubelet"}, "firstTimestamp": "2026-01-01T00:00:00Z", "lastTimestamp": "2026-01-01T00:00:01Z",
            "count": 2, "type": "Normal", "reportingComponent": "kubelet", "reportingInstance": "n1",
        });
        let mut new = core.clone();
        from_storage(res, &mut new);
        assert_eq!(new["apiVersion"], "events.k8s.io/v1");
        assert_eq!(new["regarding"]["name"], "p");
        assert_eq!(new["note"], "Started container");
        assert_eq!(new["deprecatedCount"], 2);
        assert_eq!(new["reportingController"], "kubelet");
        assert!(new.get("involvedObject").is_none() && new.get("message").is_none());
        to_storage(res, &mut new);
        assert_eq!(new, core);
        assert!(!converts(lookup("", "v1", "events").expect("core events")));
    }
}
