//! The node lifecycle controller: a node whose kubelet stops renewing its Lease in
//! `kube-node-lease` (and stops posting its Ready heartbeat) for
//! `--node-monitor-grace-period` has its conditions set Unknown ("Kubelet stopped posting
//! node status."); nodes that are not Ready get the `node.kubernetes.io/unreachable`
//! (Unknown) or `node.kubernetes.io/not-ready` (False) taints, NoExecute and NoSchedule,
//! removed again once Ready; pods on a NoExecute-tainted node are evicted (deleted) once
//! their matching tolerations' `tolerationSeconds` run out, at once without one.
//!
//! Liveness is judged by when this controller *saw* the lease or heartbeat change, not by
//! the timestamps in them, so clocks that disagree do not matter (as in Kubernetes).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, NodeCondition, ObjectReference, Pod, Taint, Toleration};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::{Context, ControllerError};

pub const UNREACHABLE: &str = "node.kubernetes.io/unreachable";
pub const NOT_READY: &str = "node.kubernetes.io/not-ready";
const LEASE_NAMESPACE: &str = "kube-node-lease";
/// How often a healthy node is looked at even without events (Kubernetes'
/// `--node-monitor-period`).
const MONITOR_PERIOD: Duration = Duration::from_secs(5);
const UNKNOWN_CONDITIONS: &[&str] = &["Ready", "MemoryPressure", "DiskPressure", "PIDPressure"];

#[derive(Debug, thiserror::Error)]
pub enum NodeLifecycleError {
    #[error("reading the Lease of node {node} failed")]
    ReadLease { node: String, #[source] source: kube::Error },
    #[error("writing the status of node {node} failed")]
    WriteStatus { node: String, #[source] source: kube::Error },
    #[error("writing the taints of node {node} failed")]
    WriteTaints { node: String, #[source] source: kube::Error },
    #[error("listing the pods of node {node} failed")]
    ListPods { node: String, #[source] source: kube::Error },
    #[error("evicting pod {pod} failed")]
    Evict { pod: String, #[source] source: kube::Error },
}

/// When a node's kubelet was last seen alive, and by which marks.
#[derive(Debug, Clone)]
struct Health {
    lease_renewed: Option<String>,
    heartbeat: Option<String>,
    observed: Instant,
}

struct State {
    ctx: Context,
    health: Mutex<HashMap<String, Health>>,
    events: component_base::events::EventSink,
}

/// Starts the node lifecycle controller.
pub fn start(ctx: Context, shutdown: CancellationToken) -> futures::future::BoxFuture<'static, Result<(), ControllerError>> {
    Box::pin(async move {
        let nodes: Api<Node> = Api::all(ctx.client.clone());
        let leases: Api<Lease> = Api::namespaced(ctx.client.clone(), LEASE_NAMESPACE);
        let pods: Api<Pod> = Api::all(ctx.client.clone());
        let events = ctx.events("node-controller");
        let state = Arc::new(State { ctx, health: Mutex::new(HashMap::new()), events });
        Controller::new(nodes, watcher::Config::default())
            .watches(leases, watcher::Config::default(), |lease| Some(ObjectRef::<Node>::new(&lease.name_any())))
            .watches(pods, watcher::Config::default(), |pod| {
                pod.spec.and_then(|s| s.node_name).filter(|n| !n.is_empty()).map(|n| ObjectRef::<Node>::new(&n))
            })
            .graceful_shutdown_on(async move { shutdown.cancelled().await })
            .run(reconcile, error_policy, state)
            .for_each(|_| async {})
            .await;
        Ok(())
    })
}

fn error_policy(node: Arc<Node>, err: &NodeLifecycleError, _: Arc<State>) -> Action {
    warn!(node = %node.name_any(), error = %err, "node lifecycle reconcile failed");
    Action::requeue(Duration::from_secs(1))
}

/// A Node as the node controller's events refer to it (Kubernetes' `recordNodeEvent`:
/// kind, name and uid, no API version).
fn node_ref(node: &Node) -> ObjectReference {
    ObjectReference { kind: Some("Node".into()), name: node.metadata.name.clone(), uid: node.metadata.uid.clone(), ..Default::default() }
}

fn ready_condition(node: &Node) -> Option<&NodeCondition> {
    node.status.as_ref()?.conditions.as_ref()?.iter().find(|c| c.type_ == "Ready")
}

fn stamp(t: Option<&Time>) -> Option<String> {
    t.map(|t| t.0.to_string())
}

async fn reconcile(node: Arc<Node>, state: Arc<State>) -> Result<Action, NodeLifecycleError> {
    let name = node.name_any();
    let client = &state.ctx.client;
    let grace = state.ctx.config.node_monitor_grace_period;
    let leases: Api<Lease> = Api::namespaced(client.clone(), LEASE_NAMESPACE);
    let lease = leases.get_opt(&name).await.map_err(|source| NodeLifecycleError::ReadLease { node: name.clone(), source })?;
    let lease_renewed = lease.and_then(|l| l.spec).and_then(|s| s.renew_time.map(|t| t.0.to_string()));
    let heartbeat = stamp(ready_condition(&node).and_then(|c| c.last_heartbeat_time.as_ref()));
    let now = Instant::now();
    let observed = {
        let Ok(mut health) = state.health.lock() else { return Ok(Action::requeue(MONITOR_PERIOD)) };
        let h = health.entry(name.clone()).or_insert_with(|| {
            state.events.normal(node_ref(&node), "RegisteredNode", format!("Node {name} event: Registered Node {name} in Controller"));
            Health { lease_renewed: lease_renewed.clone(), heartbeat: heartbeat.clone(), observed: now }
        });
        if h.lease_renewed != lease_renewed || h.heartbeat != heartbeat {
            *h = Health { lease_renewed, heartbeat, observed: now };
        }
        h.observed
    };
    let silent_for = now.duration_since(observed);
    let mut ready = ready_condition(&node).map(|c| c.status.clone()).unwrap_or_else(|| "Unknown".into());
    if silent_for > grace && ready != "Unknown" {
        mark_unknown(client, &node).await?;
        state.events.normal(node_ref(&node), "NodeNotReady", format!("Node {name} status is now: NodeNotReady"));
        mark_pods_not_ready(client, &name, &state.events).await;
        ready = "Unknown".into();
    }
    let taints = update_taints(client, &node, &ready).await?;
    let mut next = if silent_for > grace { MONITOR_PERIOD } else { (grace - silent_for + Duration::from_millis(100)).min(MONITOR_PERIOD) };
    if let Some(evict_next) = evict_pods(client, &name, &taints).await? {
        next = next.min(evict_next);
    }
    Ok(Action::requeue(next))
}

/// Sets the kubelet-owned conditions Unknown, keeping their heartbeats.
async fn mark_unknown(client: &kube::Client, node: &Node) -> Result<(), NodeLifecycleError> {
    let name = node.name_any();
    let now = Time(Timestamp::now());
    let mut conditions: Vec<NodeCondition> = node.status.as_ref().and_then(|s| s.conditions.clone()).unwrap_or_default();
    for type_ in UNKNOWN_CONDITIONS {
        match conditions.iter_mut().find(|c| c.type_ == *type_) {
            Some(c) => {
                if c.status != "Unknown" {
                    c.last_transition_time = Some(now.clone());
                }
                c.status = "Unknown".into();
                c.reason = Some("NodeStatusUnknown".into());
                c.message = Some("Kubelet stopped posting node status.".into());
            }
            None => conditions.push(NodeCondition {
                type_: type_.to_string(),
                status: "Unknown".into(),
                reason: Some("NodeStatusNeverUpdated".into()),
                message: Some("Kubelet never posted node status.".into()),
                last_heartbeat_time: Some(now.clone()),
                last_transition_time: Some(now.clone()),
            }),
        }
    }
    let api: Api<Node> = Api::all(client.clone());
    let patch = json!({"metadata": {"resourceVersion": node.resource_version()}, "status": {"conditions": conditions}});
    match api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch)).await {
        Ok(_) => {
            info!(node = %name, "node stopped posting status; conditions set Unknown");
            Ok(())
        }
        Err(source) => Err(NodeLifecycleError::WriteStatus { node: name, source }),
    }
}

/// Pods on a node gone silent are not Ready any more (Kubernetes' MarkPodsNotReady).
async fn mark_pods_not_ready(client: &kube::Client, node: &str, events: &component_base::events::EventSink) {
    let api: Api<Pod> = Api::all(client.clone());
    let Ok(pods) = api.list(&ListParams::default().fields(&format!("spec.nodeName={node}"))).await else { return };
    let now = Time(Timestamp::now());
    for pod in pods.items {
        let mut conditions = pod.status.as_ref().and_then(|s| s.conditions.clone()).unwrap_or_default();
        let Some(ready) = conditions.iter_mut().find(|c| c.type_ == "Ready" && c.status == "True") else { continue };
        ready.status = "False".into();
        ready.last_transition_time = Some(now.clone());
        let ns_api: Api<Pod> = Api::namespaced(client.clone(), &pod.namespace().unwrap_or_default());
        let patch = json!({"status": {"conditions": conditions}});
        match ns_api.patch_status(&pod.name_any(), &PatchParams::default(), &Patch::Merge(&patch)).await {
            Ok(_) => events.warning(pod.object_ref(&()), "NodeNotReady", "Node is not ready"),
            Err(e) => warn!(pod = %pod.name_any(), node = %node, error = %e, "marking a pod not ready failed"),
        }
    }
}

/// The taints this controller keeps for a Ready status.
fn wanted_taints(ready: &str) -> Vec<(&'static str, &'static str)> {
    match ready {
        "True" => vec![],
        "False" => vec![(NOT_READY, "NoExecute"), (NOT_READY, "NoSchedule")],
        _ => vec![(UNREACHABLE, "NoExecute"), (UNREACHABLE, "NoSchedule")],
    }
}

/// Brings the node's unreachable/not-ready taints in line; returns the taints it has.
async fn update_taints(client: &kube::Client, node: &Node, ready: &str) -> Result<Vec<Taint>, NodeLifecycleError> {
    let name = node.name_any();
    let current: Vec<Taint> = node.spec.as_ref().and_then(|s| s.taints.clone()).unwrap_or_default();
    let wanted = wanted_taints(ready);
    let ours = |t: &Taint| (t.key == UNREACHABLE || t.key == NOT_READY) && (t.effect == "NoExecute" || t.effect == "NoSchedule");
    let mut taints: Vec<Taint> = current.iter().filter(|t| !ours(t) || wanted.contains(&(t.key.as_str(), t.effect.as_str()))).cloned().collect();
    for (key, effect) in &wanted {
        if !taints.iter().any(|t| t.key == *key && t.effect == *effect) {
            taints.push(Taint {
                key: key.to_string(),
                effect: effect.to_string(),
                value: None,
                time_added: (*effect == "NoExecute").then(|| Time(Timestamp::now())),
            });
        }
    }
    if taints == current {
        return Ok(taints);
    }
    let api: Api<Node> = Api::all(client.clone());
    let value = if taints.is_empty() { serde_json::Value::Null } else { json!(taints) };
    let patch = json!({"metadata": {"resourceVersion": node.resource_version()}, "spec": {"taints": value}});
    match api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch)).await {
        Ok(_) => {
            info!(node = %name, ready = %ready, taints = ?taints.iter().map(|t| format!("{}:{}", t.key, t.effect)).collect::<Vec<_>>(), "node taints updated");
            Ok(taints)
        }
        Err(source) => Err(NodeLifecycleError::WriteTaints { node: name, source }),
    }
}

/// Whether a toleration tolerates a taint (key, operator, value and effect).
pub fn tolerates(t: &Toleration, taint: &Taint) -> bool {
    if t.effect.as_deref().is_some_and(|e| !e.is_empty() && e != taint.effect) {
        return false;
    }
    match t.operator.as_deref() {
        Some("Exists") => t.key.as_deref().is_none_or(|k| k.is_empty() || k == taint.key),
        _ => t.key.as_deref() == Some(taint.key.as_str()) && t.value.as_deref().unwrap_or("") == taint.value.as_deref().unwrap_or(""),
    }
}

/// How long a pod may stay on a node with these NoExecute taints: `None` for ever,
/// `Some(0)` not at all, else the shortest matching `tolerationSeconds` counted from when
/// each taint was added (`since` gives its age).
pub fn eviction_delay(tolerations: &[Toleration], taints: &[Taint], since: impl Fn(&Taint) -> Duration) -> Option<Duration> {
    let mut delay: Option<Duration> = None;
    for taint in taints.iter().filter(|t| t.effect == "NoExecute") {
        let matching: Vec<&Toleration> = tolerations.iter().filter(|t| tolerates(t, taint)).collect();
        if matching.is_empty() {
            return Some(Duration::ZERO);
        }
        // Without tolerationSeconds a toleration holds for ever; otherwise the shortest.
        if matching.iter().any(|t| t.toleration_seconds.is_none()) {
            continue;
        }
        let seconds = matching.iter().filter_map(|t| t.toleration_seconds).min().unwrap_or(0).max(0) as u64;
        let left = Duration::from_secs(seconds).saturating_sub(since(taint));
        delay = Some(delay.map_or(left, |d| d.min(left)));
    }
    delay
}

/// Deletes pods whose tolerations ran out; returns when the next one will.
async fn evict_pods(client: &kube::Client, node: &str, taints: &[Taint]) -> Result<Option<Duration>, NodeLifecycleError> {
    if !taints.iter().any(|t| t.effect == "NoExecute") {
        return Ok(None);
    }
    let api: Api<Pod> = Api::all(client.clone());
    let pods = api
        .list(&ListParams::default().fields(&format!("spec.nodeName={node}")))
        .await
        .map_err(|source| NodeLifecycleError::ListPods { node: node.to_string(), source })?;
    let now = Timestamp::now();
    let age = |t: &Taint| {
        t.time_added
            .as_ref()
            .and_then(|added| now.duration_since(added.0).try_into().ok())
            .unwrap_or(Duration::ZERO)
    };
    let mut next: Option<Duration> = None;
    for pod in pods.items {
        if pod.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let tolerations = pod.spec.as_ref().and_then(|s| s.tolerations.clone()).unwrap_or_default();
        match eviction_delay(&tolerations, taints, age) {
            None => {}
            Some(d) if d.is_zero() => {
                let ns = pod.namespace().unwrap_or_default();
                let pod_name = pod.name_any();
                let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
                match pods.delete(&pod_name, &DeleteParams::default()).await {
                    Ok(_) => info!(pod = %format!("{ns}/{pod_name}"), node = %node, "evicted pod from a tainted node"),
                    Err(kube::Error::Api(s)) if s.code == 404 => {}
                    Err(source) => return Err(NodeLifecycleError::Evict { pod: format!("{ns}/{pod_name}"), source }),
                }
            }
            Some(d) => next = Some(next.map_or(d, |n| n.min(d))),
        }
    }
    Ok(next.map(|d| d + Duration::from_millis(50)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn taint(key: &str) -> Taint {
        Taint { key: key.into(), effect: "NoExecute".into(), value: None, time_added: None }
    }

    fn toleration(key: Option<&str>, seconds: Option<i64>) -> Toleration {
        Toleration { key: key.map(str::to_string), operator: Some("Exists".into()), effect: Some("NoExecute".into()), toleration_seconds: seconds, value: None }
    }

    #[test]
    fn untolerated_taints_evict_at_once() {
        assert_eq!(eviction_delay(&[], &[taint(UNREACHABLE)], |_| Duration::ZERO), Some(Duration::ZERO));
    }

    #[test]
    fn toleration_seconds_count_from_the_taint() {
        let t = [toleration(Some(UNREACHABLE), Some(300))];
        assert_eq!(eviction_delay(&t, &[taint(UNREACHABLE)], |_| Duration::from_secs(100)), Some(Duration::from_secs(200)));
        assert_eq!(eviction_delay(&t, &[taint(UNREACHABLE)], |_| Duration::from_secs(400)), Some(Duration::ZERO));
    }

    #[test]
    fn tolerations_without_seconds_hold_for_ever() {
        let t = [toleration(None, None)];
        assert_eq!(eviction_delay(&t, &[taint(UNREACHABLE)], |_| Duration::from_secs(1000)), None);
    }

    #[test]
    fn not_ready_and_unreachable_are_exclusive() {
        assert_eq!(wanted_taints("True"), vec![]);
        assert!(wanted_taints("False").iter().all(|(k, _)| *k == NOT_READY));
        assert!(wanted_taints("Unknown").iter().all(|(k, _)| *k == UNREACHABLE));
    }
}
