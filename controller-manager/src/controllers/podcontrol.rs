//! What the workload controllers share: pods made from a template with a controller
//! owner reference, adoption and release of objects by selector (Kubernetes'
//! `ControllerRefManager`), the create/delete expectations that keep a controller from
//! acting twice before its watch catches up, pod readiness/availability and the ranking
//! that decides which pods go first on scale-down.

use std::cmp::Ordering;
use std::collections::{HashMap, HashSet};
use std::fmt::Debug;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use apimachinery::labels::Selector;
use k8s_openapi::api::core::v1::{ObjectReference, Pod, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::{Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{json, Value};
use tracing::{debug, info};

/// How long expectations are trusted before a controller syncs anyway (Kubernetes'
/// `ExpectationsTimeout`).
pub const EXPECTATIONS_TIMEOUT: Duration = Duration::from_secs(5 * 60);

/// The most pods one sync creates or deletes (Kubernetes' `BurstReplicas`).
pub const BURST_REPLICAS: usize = 500;

/// Why a pod-control operation failed.
#[derive(Debug, thiserror::Error)]
pub enum PodControlError {
    #[error("patching owner references of {kind} {name}")]
    PatchOwner {
        kind: String,
        name: String,
        #[source]
        source: kube::Error,
    },
}

/// Counts of creations still to be seen and the pods whose deletion is still to be seen,
/// per controller key (`namespace/name`): Kubernetes' `UIDTrackingControllerExpectations`.
#[derive(Debug, Default)]
pub struct Expectations {
    inner: Mutex<HashMap<String, Expectation>>,
}

#[derive(Debug)]
struct Expectation {
    adds: i64,
    deletes: HashSet<String>,
    set_at: Instant,
}

impl Expectations {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Expectation>> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether the controller may act: nothing expected, all seen, or expired.
    pub fn satisfied(&self, key: &str) -> bool {
        match self.lock().get(key) {
            None => true,
            Some(e) => (e.adds <= 0 && e.deletes.is_empty()) || e.set_at.elapsed() > EXPECTATIONS_TIMEOUT,
        }
    }

    /// Records that `n` creations were issued.
    pub fn expect_creations(&self, key: &str, n: usize) {
        self.lock().insert(
            key.to_string(),
            Expectation { adds: i64::try_from(n).unwrap_or(i64::MAX), deletes: HashSet::new(), set_at: Instant::now() },
        );
    }

    /// Records that the pods with these uids were asked to go.
    pub fn expect_deletions(&self, key: &str, uids: impl IntoIterator<Item = String>) {
        self.lock().insert(
            key.to_string(),
            Expectation { adds: 0, deletes: uids.into_iter().collect(), set_at: Instant::now() },
        );
    }

    /// One creation was seen (or will never happen).
    pub fn creation_observed(&self, key: &str) {
        if let Some(e) = self.lock().get_mut(key) {
            e.adds -= 1;
        }
    }

    /// The pod with `uid` was seen going (or its deletion failed).
    pub fn deletion_observed(&self, key: &str, uid: &str) {
        if let Some(e) = self.lock().get_mut(key) {
            e.deletes.remove(uid);
        }
    }

    /// Counts as seen every expected deletion whose pod is no longer `present` (a watch
    /// that re-listed delivers no delete events for pods that went meanwhile).
    pub fn observe_gone(&self, key: &str, present: impl Fn(&str) -> bool) {
        if let Some(e) = self.lock().get_mut(key) {
            e.deletes.retain(|uid| present(uid));
        }
    }

    /// Forgets a controller (it was deleted).
    pub fn forget(&self, key: &str) {
        self.lock().remove(key);
    }
}

/// The controller reference of an object, if any.
pub fn controller_of(meta: &ObjectMeta) -> Option<&OwnerReference> {
    meta.owner_references.as_ref()?.iter().find(|r| r.controller == Some(true))
}

/// An owner reference marking `owner` as the controller.
pub fn controller_reference<K: Resource<DynamicType = ()>>(owner: &K) -> OwnerReference {
    OwnerReference {
        api_version: K::api_version(&()).into_owned(),
        kind: K::kind(&()).into_owned(),
        name: owner.meta().name.clone().unwrap_or_default(),
        uid: owner.meta().uid.clone().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

/// The `namespace/name` key of an object.
pub fn key_of(meta: &ObjectMeta) -> String {
    format!("{}/{}", meta.namespace.as_deref().unwrap_or_default(), meta.name.as_deref().unwrap_or_default())
}

/// A pod is active until it finished or is being deleted (`FilterActivePods`).
pub fn is_active(pod: &Pod) -> bool {
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    !matches!(phase, Some("Succeeded" | "Failed")) && pod.metadata.deletion_timestamp.is_none()
}

/// The time the pod's Ready condition became True, if it is Ready.
pub fn ready_since(pod: &Pod) -> Option<Option<Timestamp>> {
    let cond = pod.status.as_ref()?.conditions.as_ref()?.iter().find(|c| c.type_ == "Ready")?;
    (cond.status == "True").then(|| cond.last_transition_time.as_ref().map(|t| t.0))
}

/// Whether the pod is Ready.
pub fn is_ready(pod: &Pod) -> bool {
    ready_since(pod).is_some()
}

/// Whether the pod has been Ready for at least `min_ready_seconds` at `now`
/// (`IsPodAvailable`).
pub fn is_available(pod: &Pod, min_ready_seconds: i32, now: Timestamp) -> bool {
    match ready_since(pod) {
        None => false,
        Some(_) if min_ready_seconds <= 0 => true,
        Some(None) => false,
        Some(Some(since)) => since.as_second().saturating_add(i64::from(min_ready_seconds)) <= now.as_second(),
    }
}

/// A pod to create for `owner` from `template`: named `<prefix>-xxxxx` by the server,
/// with the template's labels and annotations and a controller reference.
pub fn pod_from_template(template: &PodTemplateSpec, prefix: &str, namespace: &str, owner: OwnerReference) -> Pod {
    let tmeta = template.metadata.clone().unwrap_or_default();
    // A generated name is at most 63 characters: the prefix is cut to leave room.
    let mut base = format!("{prefix}-");
    if base.len() > 58 {
        base.truncate(58);
    }
    Pod {
        metadata: ObjectMeta {
            generate_name: Some(base),
            namespace: Some(namespace.to_string()),
            labels: tmeta.labels,
            annotations: tmeta.annotations,
            finalizers: tmeta.finalizers,
            owner_references: Some(vec![owner]),
            ..Default::default()
        },
        spec: template.spec.clone(),
        status: None,
    }
}

fn phase_rank(pod: &Pod) -> u8 {
    match pod.status.as_ref().and_then(|s| s.phase.as_deref()) {
        Some("Pending") => 0,
        Some("Unknown") => 1,
        Some("Running") => 2,
        _ => 0,
    }
}

fn deletion_cost(pod: &Pod) -> i64 {
    pod.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get("controller.kubernetes.io/pod-deletion-cost"))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn restarts(pod: &Pod) -> i32 {
    pod.status.as_ref().and_then(|s| s.container_statuses.as_ref()).map_or(0, |cs| cs.iter().map(|c| c.restart_count).max().unwrap_or(0))
}

/// The order pods go on scale-down (Kubernetes' `ActivePods` ranking): unscheduled before
/// scheduled, pending before unknown before running, not ready before ready, lower
/// `pod-deletion-cost` first, ready for less time first, more restarts first, newer first.
/// `Less` means `a` goes first.
pub fn deletion_order(a: &Pod, b: &Pod) -> Ordering {
    let assigned = |p: &Pod| p.spec.as_ref().and_then(|s| s.node_name.as_deref()).is_some_and(|n| !n.is_empty());
    assigned(a)
        .cmp(&assigned(b))
        .then_with(|| phase_rank(a).cmp(&phase_rank(b)))
        .then_with(|| is_ready(a).cmp(&is_ready(b)))
        .then_with(|| deletion_cost(a).cmp(&deletion_cost(b)))
        .then_with(|| match (ready_since(a).flatten(), ready_since(b).flatten()) {
            // Ready more recently goes first.
            (Some(x), Some(y)) => y.cmp(&x),
            _ => Ordering::Equal,
        })
        .then_with(|| restarts(b).cmp(&restarts(a)))
        .then_with(|| {
            let created = |p: &Pod| p.metadata.creation_timestamp.as_ref().map(|t| t.0);
            created(b).cmp(&created(a))
        })
}

/// The owner that claims objects: who it is, what it selects, and whether it may adopt.
pub struct Claimer<'a, O: Resource<DynamicType = ()>> {
    pub owner: &'a O,
    pub selector: &'a Selector,
}

/// Claims `objects` for the owner as Kubernetes' `ClaimObjects` does: those it controls
/// and that match are kept, those it controls that stopped matching are released, and
/// matching orphans are adopted (unless the owner or object is being deleted). Returns
/// the objects the owner now controls.
pub async fn claim<O, K>(api_for: impl Fn(&str) -> Api<K>, claimer: &Claimer<'_, O>, objects: Vec<Arc<K>>) -> Result<Vec<Arc<K>>, PodControlError>
where
    O: Resource<DynamicType = ()>,
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Serialize + Debug,
{
    let owner_meta = claimer.owner.meta();
    let owner_uid = owner_meta.uid.clone().unwrap_or_default();
    let owner_deleting = owner_meta.deletion_timestamp.is_some();
    let mut claimed = Vec::new();
    for obj in objects {
        let meta = obj.meta();
        let labels = meta.labels.clone().unwrap_or_default();
        let matches = claimer.selector.matches(&labels);
        match controller_of(meta) {
            Some(r) if r.uid == owner_uid => {
                if matches || owner_deleting {
                    claimed.push(obj);
                    continue;
                }
                let refs: Vec<OwnerReference> = meta.owner_references.iter().flatten().filter(|r| r.uid != owner_uid).cloned().collect();
                patch_owners(&api_for, &*obj, refs, "release").await?;
            }
            Some(_) => {}
            None => {
                if !matches || owner_deleting || meta.deletion_timestamp.is_some() {
                    continue;
                }
                let mut refs: Vec<OwnerReference> = meta.owner_references.clone().unwrap_or_default();
                refs.push(controller_reference(claimer.owner));
                if patch_owners(&api_for, &*obj, refs, "adopt").await? {
                    claimed.push(obj);
                }
            }
        }
    }
    Ok(claimed)
}

/// Writes an object's owner references, guarded by its uid and resourceVersion. Returns
/// false when the object is gone.
async fn patch_owners<K>(api_for: &impl Fn(&str) -> Api<K>, obj: &K, refs: Vec<OwnerReference>, what: &str) -> Result<bool, PodControlError>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Serialize + Debug,
{
    let meta = obj.meta();
    let name = obj.name_any();
    let api = api_for(meta.namespace.as_deref().unwrap_or_default());
    let patch = json!({"metadata": {
        "ownerReferences": if refs.is_empty() { Value::Null } else { json!(refs) },
        "uid": meta.uid,
        "resourceVersion": meta.resource_version,
    }});
    match api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch)).await {
        Ok(_) => {
            info!(kind = %K::kind(&()), object = %key_of(meta), action = what, "owner references changed");
            Ok(true)
        }
        Err(kube::Error::Api(s)) if s.code == 404 => {
            debug!(object = %key_of(meta), "gone before {what}");
            Ok(false)
        }
        Err(source) => Err(PodControlError::PatchOwner { kind: K::kind(&()).into_owned(), name, source }),
    }
}

/// Deletes `victims` at once, as Kubernetes' `PodControl.DeletePod` does for each:
/// records `SuccessfulDelete` ("Deleted pod: …") or a `FailedDelete` warning on `owner`,
/// and counts a deletion that failed as observed for `key` (a pod already gone is no
/// failure). The caller has set the deletion expectations. Returns the first failure.
pub async fn delete_pods(
    api: &Api<Pod>,
    victims: &[&Arc<Pod>],
    expectations: &Expectations,
    key: &str,
    events: &component_base::events::EventSink,
    owner: &ObjectReference,
) -> Option<kube::Error> {
    let results = futures::future::join_all(victims.iter().map(|p| async move { (p, api.delete(&p.name_any(), &DeleteParams::default()).await) })).await;
    let mut failure = None;
    for (p, r) in results {
        match r {
            Ok(_) => events.normal(owner.clone(), "SuccessfulDelete", format!("Deleted pod: {}", p.name_any())),
            Err(e) => {
                expectations.deletion_observed(key, p.metadata.uid.as_deref().unwrap_or_default());
                if !matches!(&e, kube::Error::Api(s) if s.code == 404) {
                    events.warning(owner.clone(), "FailedDelete", format!("Error deleting: {}", super::api_error_message(&e)));
                    failure.get_or_insert(e);
                }
            }
        }
    }
    failure
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{PodCondition, PodSpec, PodStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn pod(name: &str, node: Option<&str>, phase: &str, ready: Option<i64>, created: i64) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                creation_timestamp: Some(Time(Timestamp::from_second(created).unwrap_or(Timestamp::UNIX_EPOCH))),
                ..Default::default()
            },
            spec: Some(PodSpec { node_name: node.map(String::from), ..Default::default() }),
            status: Some(PodStatus {
                phase: Some(phase.into()),
                conditions: ready.map(|t| {
                    vec![PodCondition {
                        type_: "Ready".into(),
                        status: "True".into(),
                        last_transition_time: Some(Time(Timestamp::from_second(t).unwrap_or(Timestamp::UNIX_EPOCH))),
                        ..Default::default()
                    }]
                }),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn unscheduled_not_ready_and_newer_pods_go_first() {
        let mut pods = [
            pod("old-ready", Some("n1"), "Running", Some(100), 10),
            pod("new-ready", Some("n1"), "Running", Some(100), 20),
            pod("unscheduled", None, "Pending", None, 5),
            pod("pending", Some("n1"), "Pending", None, 5),
            pod("running-unready", Some("n1"), "Running", None, 5),
            pod("recently-ready", Some("n1"), "Running", Some(200), 5),
        ];
        pods.sort_by(deletion_order);
        let names: Vec<_> = pods.iter().map(|p| p.metadata.name.clone().unwrap_or_default()).collect();
        assert_eq!(names, ["unscheduled", "pending", "running-unready", "recently-ready", "new-ready", "old-ready"]);
    }

    #[test]
    fn availability_needs_min_ready_seconds() {
        let p = pod("p", Some("n"), "Running", Some(100), 0);
        let at = |s| Timestamp::from_second(s).unwrap_or(Timestamp::UNIX_EPOCH);
        assert!(is_available(&p, 0, at(100)));
        assert!(!is_available(&p, 10, at(105)));
        assert!(is_available(&p, 10, at(110)));
    }

    #[test]
    fn expectations_block_until_observed() {
        let e = Expectations::default();
        assert!(e.satisfied("ns/a"));
        e.expect_creations("ns/a", 2);
        assert!(!e.satisfied("ns/a"));
        e.creation_observed("ns/a");
        assert!(!e.satisfied("ns/a"));
        e.creation_observed("ns/a");
        assert!(e.satisfied("ns/a"));
        e.expect_deletions("ns/a", ["u1".to_string()]);
        assert!(!e.satisfied("ns/a"));
        e.deletion_observed("ns/a", "u1");
        assert!(e.satisfied("ns/a"));
    }
}
