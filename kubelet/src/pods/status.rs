//! A pod's status from what the runtime reports: container states (waiting, running,
//! terminated, with the previous run as `lastState`), restart counts, readiness, the
//! phase by the kubelet's rules, the conditions, the pod IP and the QoS class.

use std::collections::HashMap;

use chrono::{DateTime, SecondsFormat, Utc};
use k8s_openapi::api::core::v1::{Container, Pod};
use serde_json::{json, Value};

use crate::runtime::{ContainerState, ContainerStatus};

pub fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// What the worker knows about a container beyond the runtime's record.
#[derive(Debug, Clone, Default)]
pub struct ContainerView<'a> {
    /// The newest run of the container, and the one before it.
    pub latest: Option<&'a ContainerStatus>,
    pub previous: Option<&'a ContainerStatus>,
    /// Why it is not running and not being started (ErrImagePull, CrashLoopBackOff…).
    pub waiting: Option<(String, String)>,
    pub ready: bool,
    pub started: bool,
}

pub fn container_id(c: &ContainerStatus) -> String {
    format!("rkube://{}", c.id)
}

fn terminated(c: &ContainerStatus) -> Value {
    let code = c.exit_code.unwrap_or(0);
    let mut t = json!({
        "exitCode": code,
        "reason": c.reason.clone().unwrap_or_else(|| if code == 0 { "Completed".into() } else { "Error".into() }),
        "containerID": container_id(c),
    });
    if let Some(s) = c.started_at {
        t["startedAt"] = json!(rfc3339(s));
    }
    if let Some(f) = c.finished_at {
        t["finishedAt"] = json!(rfc3339(f));
    }
    if let Some(m) = c.message.as_ref().filter(|m| !m.is_empty()) {
        t["message"] = json!(m);
    }
    if code > 128 && code < 160 {
        t["signal"] = json!(code - 128);
    }
    json!({"terminated": t})
}

/// One entry of `containerStatuses` / `initContainerStatuses`.
pub fn container_status(spec: &Container, view: &ContainerView<'_>, default_waiting: &str) -> Value {
    let image = spec.image.clone().unwrap_or_default();
    let mut out = json!({
        "name": spec.name,
        "image": image,
        "imageID": "",
        "ready": false,
        "restartCount": view.latest.map(|c| c.attempt).unwrap_or(0),
        "started": false,
        "lastState": {},
    });
    let running_or_exited = view.latest.filter(|c| c.state != ContainerState::Created);
    match (running_or_exited, &view.waiting) {
        (Some(c), waiting) => {
            out["containerID"] = json!(container_id(c));
            out["imageID"] = json!(c.image_ref);
            if let Some(prev) = view.previous {
                out["lastState"] = terminated(prev);
            }
            match c.state {
                ContainerState::Running => {
                    out["state"] = json!({"running": {"startedAt": rfc3339(c.started_at.unwrap_or(c.created_at))}});
                    out["ready"] = json!(view.ready);
                    out["started"] = json!(view.started);
                }
                _ => match waiting {
                    // Exited and waiting to be restarted: the exit becomes lastState.
                    Some((reason, message)) => {
                        out["lastState"] = terminated(c);
                        out["state"] = json!({"waiting": {"reason": reason, "message": message}});
                    }
                    None => out["state"] = terminated(c),
                },
            }
        }
        (None, Some((reason, message))) => {
            out["state"] = if message.is_empty() {
                json!({"waiting": {"reason": reason}})
            } else {
                json!({"waiting": {"reason": reason, "message": message}})
            };
            if let Some(prev) = view.previous.or(view.latest.filter(|c| c.state == ContainerState::Exited)) {
                out["lastState"] = terminated(prev);
            }
        }
        (None, None) => out["state"] = json!({"waiting": {"reason": default_waiting}}),
    }
    out
}

/// The phase from the container statuses (the kubelet's getPhase).
pub fn phase(spec: &k8s_openapi::api::core::v1::PodSpec, init: &[Value], containers: &[Value]) -> &'static str {
    let policy = spec.restart_policy.as_deref().unwrap_or("Always");
    for s in init {
        if s.pointer("/state/terminated/exitCode").and_then(Value::as_i64) == Some(0) {
            continue;
        }
        let failed = s.pointer("/state/terminated").is_some()
            || s.pointer("/lastState/terminated").is_some() && s.pointer("/state/running").is_none();
        if failed && policy == "Never" {
            return "Failed";
        }
        return "Pending";
    }
    let (mut waiting, mut running, mut stopped, mut succeeded) = (0, 0, 0, 0);
    for s in containers {
        if s.pointer("/state/running").is_some() {
            running += 1;
        } else if let Some(t) = s.pointer("/state/terminated") {
            stopped += 1;
            if t.get("exitCode").and_then(Value::as_i64) == Some(0) {
                succeeded += 1;
            }
        } else if s.pointer("/lastState/terminated").is_some() {
            stopped += 1;
        } else {
            waiting += 1;
        }
    }
    if waiting > 0 {
        return "Pending";
    }
    if running > 0 {
        return "Running";
    }
    if stopped > 0 {
        if policy == "Always" {
            return "Running";
        }
        if stopped == succeeded {
            return "Succeeded";
        }
        if policy == "Never" {
            return "Failed";
        }
        return "Running";
    }
    "Pending"
}

/// Guaranteed, Burstable or BestEffort.
pub fn qos_class(spec: &k8s_openapi::api::core::v1::PodSpec) -> &'static str {
    let all: Vec<&Container> = spec.containers.iter().chain(spec.init_containers.iter().flatten()).collect();
    let mut any = false;
    let mut guaranteed = true;
    for c in &all {
        let r = c.resources.clone().unwrap_or_default();
        let requests = r.requests.unwrap_or_default();
        let limits = r.limits.unwrap_or_default();
        if !requests.is_empty() || !limits.is_empty() {
            any = true;
        }
        for res in ["cpu", "memory"] {
            match (requests.get(res), limits.get(res)) {
                (_, None) => guaranteed = false,
                (Some(q), Some(l)) if q.0 != l.0 => guaranteed = false,
                _ => {}
            }
        }
    }
    if !any {
        "BestEffort"
    } else if guaranteed {
        "Guaranteed"
    } else {
        "Burstable"
    }
}

/// A condition with the transition time kept from `previous` when its status is unchanged.
pub fn condition(previous: &HashMap<String, (String, String)>, type_: &str, status: bool, reason: Option<&str>, message: Option<String>) -> Value {
    let status = if status { "True" } else { "False" };
    let now = rfc3339(Utc::now());
    let since = previous.get(type_).filter(|(s, _)| s == status).map(|(_, t)| t.clone()).unwrap_or(now);
    let mut c = json!({"type": type_, "status": status, "lastProbeTime": null, "lastTransitionTime": since});
    if let Some(r) = reason {
        c["reason"] = json!(r);
    }
    if let Some(m) = message {
        c["message"] = json!(m);
    }
    c
}

/// type → (status, lastTransitionTime) of the pod's current conditions.
pub fn previous_conditions(pod: &Pod) -> HashMap<String, (String, String)> {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.clone())
        .unwrap_or_default()
        .into_iter()
        .map(|c| {
            let t = c.last_transition_time.map(|t| t.0.to_string()).unwrap_or_default();
            (c.type_, (c.status, t))
        })
        .collect()
}

/// Names of containers in `statuses` that are not ready, as `[a b]`.
pub fn unready(statuses: &[Value]) -> Vec<String> {
    statuses
        .iter()
        .filter(|s| s.get("ready").and_then(Value::as_bool) != Some(true))
        .filter_map(|s| s.get("name").and_then(Value::as_str).map(str::to_string))
        .collect()
}


#[cfg(test)]
mod tests {
    use super::*;

    fn spec(policy: &str) -> k8s_openapi::api::core::v1::PodSpec {
        k8s_openapi::api::core::v1::PodSpec { restart_policy: Some(policy.into()), ..Default::default() }
    }

    #[test]
    fn phases_follow_get_phase() {
        let running = json!({"state": {"running": {}}});
        let ok = json!({"state": {"terminated": {"exitCode": 0}}});
        let bad = json!({"state": {"terminated": {"exitCode": 1}}});
        let crashloop = json!({"state": {"waiting": {"reason": "CrashLoopBackOff"}}, "lastState": {"terminated": {"exitCode": 1}}});
        let creating = json!({"state": {"waiting": {"reason": "ContainerCreating"}}});
        assert_eq!(phase(&spec("Always"), &[], &[running.clone(), ok.clone()]), "Running");
        assert_eq!(phase(&spec("Never"), &[], &[ok.clone(), ok.clone()]), "Succeeded");
        assert_eq!(phase(&spec("Never"), &[], &[ok.clone(), bad.clone()]), "Failed");
        assert_eq!(phase(&spec("OnFailure"), &[], &[ok.clone(), crashloop.clone()]), "Running");
        assert_eq!(phase(&spec("Always"), &[], &[crashloop]), "Running");
        assert_eq!(phase(&spec("Always"), &[], &[creating.clone(), running]), "Pending");
        assert_eq!(phase(&spec("Always"), &[creating], &[]), "Pending");
        assert_eq!(phase(&spec("Never"), &[bad], &[]), "Failed");
        assert_eq!(phase(&spec("Never"), &[ok.clone()], &[ok]), "Succeeded");
    }

    #[test]
    fn qos_classes() {
        let pod = |r: Value| -> k8s_openapi::api::core::v1::PodSpec {
            serde_json::from_value(json!({"containers": [{"name": "c", "resources": r}]})).expect("spec")
        };
        assert_eq!(qos_class(&pod(json!({}))), "BestEffort");
        assert_eq!(qos_class(&pod(json!({"limits": {"cpu": "1", "memory": "1Gi"}, "requests": {"cpu": "1", "memory": "1Gi"}}))), "Guaranteed");
        assert_eq!(qos_class(&pod(json!({"requests": {"cpu": "100m"}}))), "Burstable");
    }
}
