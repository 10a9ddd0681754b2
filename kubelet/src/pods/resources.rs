//! From a container's `resources` to cgroup settings, the way the kubelet maps them
//! (cpu.shares from the request, CFS quota from the limit, memory limit), and the
//! downward API's `resourceFieldRef` values.

use std::collections::BTreeMap;

use apimachinery::quantity::Quantity;
use k8s_openapi::api::core::v1::{Container, Pod, ResourceFieldSelector};

use crate::runtime::Resources;

/// The CFS period Kubernetes uses (100 ms).
const CPU_PERIOD_US: u64 = 100_000;
const MIN_SHARES: u64 = 2;
const MAX_SHARES: u64 = 262_144;

#[derive(Debug, thiserror::Error)]
pub enum ResourceFieldError {
    #[error("unsupported container resource: {0}")]
    Unsupported(String),
    #[error("invalid quantity {value:?}: {message}")]
    Quantity { value: String, message: String },
}

fn quantity(q: &k8s_openapi::apimachinery::pkg::api::resource::Quantity) -> Option<Quantity> {
    Quantity::parse(&q.0).ok()
}

fn get<'a>(
    map: &'a Option<BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>>,
    key: &str,
) -> Option<&'a k8s_openapi::apimachinery::pkg::api::resource::Quantity> {
    map.as_ref().and_then(|m| m.get(key))
}

/// cgroup settings for a container.
pub fn container_resources(container: &Container) -> Resources {
    let r = container.resources.clone().unwrap_or_default();
    let cpu_request = get(&r.requests, "cpu").or(get(&r.limits, "cpu")).and_then(quantity).map(|q| q.to_millis());
    let cpu_limit = get(&r.limits, "cpu").and_then(quantity).map(|q| q.to_millis());
    let memory_limit = get(&r.limits, "memory").and_then(quantity).map(|q| q.to_bytes());
    let shares = match cpu_request {
        Some(m) if m > 0 => (u64::try_from(m).unwrap_or(u64::MAX).saturating_mul(1024) / 1000).clamp(MIN_SHARES, MAX_SHARES),
        _ => MIN_SHARES,
    };
    let quota = cpu_limit.filter(|m| *m > 0).map(|m| {
        // A quota below 1 ms is not allowed by the kernel; Kubernetes rounds up to it.
        (i64::try_from(m).unwrap_or(i64::MAX).saturating_mul(CPU_PERIOD_US as i64) / 1000).max(1000)
    });
    Resources {
        cpu_shares: Some(shares),
        cpu_quota: quota,
        cpu_period: quota.map(|_| CPU_PERIOD_US),
        memory_limit: memory_limit.and_then(|b| i64::try_from(b).ok()).filter(|b| *b > 0),
        pids_limit: None,
    }
}

/// `limits.cpu`, `requests.memory`… of a container, divided by `divisor` and rounded up,
/// with unset limits falling back to the node's allocatable as Kubernetes does.
pub fn resource_field_value(
    _pod: &Pod,
    container: &Container,
    selector: &ResourceFieldSelector,
    node_allocatable: &BTreeMap<String, String>,
) -> Result<String, ResourceFieldError> {
    let r = container.resources.clone().unwrap_or_default();
    let (map, key) = match selector.resource.split_once('.') {
        Some(("limits", k)) => (&r.limits, k),
        Some(("requests", k)) => (&r.requests, k),
        _ => return Err(ResourceFieldError::Unsupported(selector.resource.clone())),
    };
    let raw = get(map, key)
        .map(|q| q.0.clone())
        .or_else(|| if selector.resource.starts_with("limits.") { node_allocatable.get(key).cloned() } else { None })
        .unwrap_or_else(|| "0".into());
    let value = Quantity::parse(&raw).map_err(|e| ResourceFieldError::Quantity { value: raw.clone(), message: e.to_string() })?;
    let divisor_raw = selector.divisor.as_ref().map(|d| d.0.clone()).unwrap_or_else(|| "1".into());
    let divisor = Quantity::parse(&divisor_raw)
        .map_err(|e| ResourceFieldError::Quantity { value: divisor_raw.clone(), message: e.to_string() })?;
    let (num, den) = (value.nanos(), divisor.nanos());
    if den <= 0 {
        return Err(ResourceFieldError::Quantity { value: divisor_raw, message: "divisor must be positive".into() });
    }
    Ok(((num + den - 1) / den).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn container(resources: serde_json::Value) -> Container {
        serde_json::from_value(serde_json::json!({"name": "c", "resources": resources})).expect("container")
    }

    #[test]
    fn shares_and_quota_follow_the_kubelet() {
        let r = container_resources(&container(serde_json::json!({"requests": {"cpu": "250m"}, "limits": {"cpu": "500m", "memory": "64Mi"}})));
        assert_eq!(r.cpu_shares, Some(256));
        assert_eq!(r.cpu_quota, Some(50_000));
        assert_eq!(r.cpu_period, Some(100_000));
        assert_eq!(r.memory_limit, Some(64 * 1024 * 1024));
        let none = container_resources(&container(serde_json::json!({})));
        assert_eq!(none.cpu_shares, Some(2));
        assert_eq!(none.cpu_quota, None);
        assert_eq!(none.memory_limit, None);
    }

    #[test]
    fn resource_fields_round_up_by_divisor() {
        let c = container(serde_json::json!({"limits": {"memory": "64Mi"}, "requests": {"cpu": "250m"}}));
        let pod = Pod::default();
        let node = BTreeMap::from([("cpu".to_string(), "2".to_string())]);
        let sel = |res: &str, div: Option<&str>| ResourceFieldSelector {
            resource: res.into(),
            divisor: div.map(|d| k8s_openapi::apimachinery::pkg::api::resource::Quantity(d.into())),
            container_name: None,
        };
        assert_eq!(resource_field_value(&pod, &c, &sel("limits.memory", Some("1Mi")), &node).expect("mem"), "64");
        assert_eq!(resource_field_value(&pod, &c, &sel("requests.cpu", Some("1m")), &node).expect("cpu"), "250");
        assert_eq!(resource_field_value(&pod, &c, &sel("requests.cpu", None), &node).expect("cpu"), "1");
        assert_eq!(resource_field_value(&pod, &c, &sel("limits.cpu", None), &node).expect("node cpu"), "2");
    }
}
