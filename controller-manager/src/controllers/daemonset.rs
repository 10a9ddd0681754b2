//! The DaemonSet controller: one pod per eligible node. A node is eligible when the
//! template's nodeSelector and required node affinity match it and the pod, with the
//! tolerations Kubernetes adds to every daemon pod, tolerates its NoSchedule/NoExecute
//! taints (a pod already there stays unless a NoExecute taint is untolerated). Pods carry
//! the required node affinity `metadata.name In [node]` as Kubernetes' pods do, and are
//! bound by setting `spec.nodeName` at creation (the controller decides the node, so no
//! scheduler round trip is needed). Templates are kept as ControllerRevisions and pods
//! labelled with `controller-revision-hash`; RollingUpdate replaces old pods within
//! maxUnavailable (or surges within maxSurge), OnDelete waits for the user to delete them.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use apimachinery::labels::Selector;
use futures::channel::mpsc;
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{Node, NodeSelectorRequirement, NodeSelectorTerm, Pod, PodSpec, PodTemplateSpec, Taint, Toleration};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{self, Action};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Resource, ResourceExt};
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, info_span, warn, Instrument};

use super::deployment::scaled_value;
use super::history::{self, HistoryError, CONTROLLER_REVISION_HASH};
use super::podcontrol::{self, Claimer, Expectations, PodControlError};
use super::{Context, ControllerError};

/// The label with the DaemonSet's generation its pod was made from (kept for kubectl).
pub const POD_TEMPLATE_GENERATION: &str = "pod-template-generation";

/// Why a DaemonSet sync failed.
#[derive(Debug, thiserror::Error)]
pub enum DaemonSetError {
    #[error("invalid selector of {key}: {reason}")]
    InvalidSelector { key: String, reason: String },
    #[error("claiming pods of {key}")]
    Claim {
        key: String,
        #[source]
        source: PodControlError,
    },
    #[error("keeping the history of {key}")]
    History {
        key: String,
        #[source]
        source: HistoryError,
    },
    #[error("creating a pod of {key} on node {node}")]
    CreatePod {
        key: String,
        node: String,
        #[source]
        source: kube::Error,
    },
    #[error("deleting pod {pod} of {key}")]
    DeletePod {
        key: String,
        pod: String,
        #[source]
        source: kube::Error,
    },
    #[error("updating the status of {key}")]
    UpdateStatus {
        key: String,
        #[source]
        source: kube::Error,
    },
}

/// Starts the DaemonSet controller.
pub fn start(ctx: Context, shutdown: CancellationToken) -> BoxFuture<'static, Result<(), ControllerError>> {
    run(ctx, shutdown).boxed()
}

struct State {
    client: kube::Client,
    pods: Store<Pod>,
    nodes: Store<Node>,
    expectations: Arc<Expectations>,
    failed_backoff: FailedBackoff,
    events: component_base::events::EventSink,
}

/// The back-off between deletions of failed daemon pods on one node, so that a pod
/// that keeps failing is not recreated in a hot loop (Kubernetes' `failedPodsBackoff`:
/// 1 s doubling to 15 min), keyed by `namespace/daemonset/node`.
#[derive(Default)]
struct FailedBackoff {
    inner: std::sync::Mutex<HashMap<String, (Instant, Duration)>>,
}

const FAILED_BACKOFF_INITIAL: Duration = Duration::from_secs(1);
const FAILED_BACKOFF_MAX: Duration = Duration::from_secs(15 * 60);

impl FailedBackoff {
    /// Whether a failed pod on the node may be deleted now; if not, how long to wait.
    /// Allowing one starts (or doubles) the wait for the next.
    fn try_delete(&self, key: &str, now: Instant) -> Result<(), Duration> {
        let mut m = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        m.retain(|_, (next, delay)| now < *next + *delay * 2);
        match m.get(key) {
            Some((next, _)) if now < *next => Err(*next - now),
            Some(&(_, delay)) => {
                let delay = (delay * 2).min(FAILED_BACKOFF_MAX);
                m.insert(key.to_string(), (now + delay, delay));
                Ok(())
            }
            None => {
                m.insert(key.to_string(), (now + FAILED_BACKOFF_INITIAL, FAILED_BACKOFF_INITIAL));
                Ok(())
            }
        }
    }
}

/// Expectations of deletions are kept under their own key, creations under the
/// DaemonSet's: one sync may issue both.
fn deletions_key(key: &str) -> String {
    format!("{key}#deletions")
}

async fn run(ctx: Context, shutdown: CancellationToken) -> Result<(), ControllerError> {
    let client = ctx.client.clone();
    let expectations = Arc::new(Expectations::default());
    let (ds_reader, ds_writer) = reflector::store::<DaemonSet>();
    let (pod_reader, pod_writer) = reflector::store::<Pod>();
    let (node_reader, node_writer) = reflector::store::<Node>();
    let (tx, rx) = mpsc::unbounded::<ObjectRef<DaemonSet>>();

    // Pods: observe expectations and enqueue the DaemonSet they belong to (or, for an
    // orphan, every DaemonSet selecting it).
    let pod_stream = reflector::reflector(pod_writer, watcher(Api::<Pod>::all(client.clone()), watcher::Config::default()).default_backoff());
    let (ptx, exp, dss, token) = (tx.clone(), expectations.clone(), ds_reader.clone(), shutdown.clone());
    tokio::spawn(async move {
        let mut seen: HashSet<String> = HashSet::new();
        let mut s = std::pin::pin!(pod_stream);
        loop {
            let ev = tokio::select! { _ = token.cancelled() => return, ev = s.next() => ev };
            let (pod, deleted) = match ev {
                None => return,
                Some(Ok(watcher::Event::Apply(p) | watcher::Event::InitApply(p))) => (p, false),
                Some(Ok(watcher::Event::Delete(p))) => (p, true),
                Some(_) => continue,
            };
            let ns = pod.namespace().unwrap_or_default();
            let uid = pod.metadata.uid.clone().unwrap_or_default();
            let first = if deleted { !seen.remove(&uid) } else { seen.insert(uid.clone()) };
            match podcontrol::controller_of(&pod.metadata) {
                Some(r) if r.kind == "DaemonSet" => {
                    let key = format!("{ns}/{}", r.name);
                    if first && !deleted {
                        exp.creation_observed(&key);
                    }
                    if deleted || pod.metadata.deletion_timestamp.is_some() {
                        exp.deletion_observed(&deletions_key(&key), &uid);
                    }
                    let _ = ptx.unbounded_send(ObjectRef::new(&r.name).within(&ns));
                }
                Some(_) => {}
                None if !deleted => {
                    let labels = pod.labels().clone();
                    for ds in dss.state() {
                        if ds.namespace().as_deref() == Some(ns.as_str()) && selector_of(&ds).is_ok_and(|s| s.matches(&labels)) {
                            let _ = ptx.unbounded_send(ObjectRef::from_obj(&*ds));
                        }
                    }
                }
                None => {}
            }
        }
    });

    // Nodes: any change may change where daemon pods belong.
    let node_stream = reflector::reflector(node_writer, watcher(Api::<Node>::all(client.clone()), watcher::Config::default()).default_backoff());
    let (ntx, dss, token) = (tx.clone(), ds_reader.clone(), shutdown.clone());
    tokio::spawn(async move {
        let mut s = std::pin::pin!(node_stream);
        loop {
            let ev = tokio::select! { _ = token.cancelled() => return, ev = s.next() => ev };
            match ev {
                None => return,
                Some(Ok(watcher::Event::Apply(_) | watcher::Event::Delete(_) | watcher::Event::InitDone)) => {
                    for ds in dss.state() {
                        let _ = ntx.unbounded_send(ObjectRef::from_obj(&*ds));
                    }
                }
                Some(_) => {}
            }
        }
    });

    let ds_stream = reflector::reflector(ds_writer, watcher(Api::<DaemonSet>::all(client.clone()), watcher::Config::default()).default_backoff());
    let exp = expectations.clone();
    let ds_refs = ds_stream.filter_map(move |ev| {
        let out = match ev {
            Ok(watcher::Event::Apply(o) | watcher::Event::InitApply(o)) => Some(Ok(ObjectRef::from_obj(&o))),
            Ok(watcher::Event::Delete(o)) => {
                let key = podcontrol::key_of(&o.metadata);
                exp.forget(&key);
                exp.forget(&deletions_key(&key));
                None
            }
            Ok(_) => None,
            Err(e) => Some(Err(e)),
        };
        futures::future::ready(out)
    });
    let queue = futures::stream::select(ds_refs, rx.map(Ok::<_, watcher::Error>));

    tokio::select! {
        _ = shutdown.cancelled() => return Ok(()),
        r = async { pod_reader.wait_until_ready().await?; node_reader.wait_until_ready().await } => {
            r.map_err(|e| ControllerError::Config(e.to_string()))?;
        }
    }
    let state = Arc::new(State { client, pods: pod_reader, nodes: node_reader, expectations, failed_backoff: FailedBackoff::default(), events: ctx.events("daemonset-controller") });
    let applier = controller::applier(
        |ds, st| Box::pin(reconcile(ds, st)),
        |ds: Arc<DaemonSet>, err: &DaemonSetError, _| {
            warn!(daemonset = %podcontrol::key_of(&ds.metadata), error = %err, "sync failed");
            Action::requeue(Duration::from_millis(500))
        },
        state,
        ds_reader,
        queue,
        controller::Config::default(),
    );
    super::drive("daemonset", applier, &shutdown).await
}

// ---------------------------------------------------------------------------------------
// Where a daemon pod belongs: pure predicates.

fn selector_of(ds: &DaemonSet) -> Result<Selector, String> {
    let spec = ds.spec.as_ref().ok_or("no spec")?;
    super::selector_of(&spec.selector)
}

/// Whether `tol` tolerates `taint` (`ToleratesTaint`).
pub fn tolerates(tol: &Toleration, taint: &Taint) -> bool {
    if tol.effect.as_deref().is_some_and(|e| !e.is_empty() && e != taint.effect) {
        return false;
    }
    let key = tol.key.as_deref().unwrap_or_default();
    let op = tol.operator.as_deref().unwrap_or("Equal");
    if key.is_empty() {
        return op == "Exists";
    }
    if key != taint.key {
        return false;
    }
    match op {
        "Exists" => true,
        "Equal" | "" => tol.value.as_deref().unwrap_or_default() == taint.value.as_deref().unwrap_or_default(),
        _ => false,
    }
}

/// The tolerations Kubernetes adds to every daemon pod (`AddOrUpdateDaemonPodTolerations`):
/// it keeps running on not-ready or unreachable nodes and ignores the pressure,
/// unschedulable and (with hostNetwork) network-unavailable taints.
pub fn add_daemon_tolerations(spec: &mut PodSpec) {
    let mut wanted = vec![
        ("node.kubernetes.io/not-ready", "NoExecute"),
        ("node.kubernetes.io/unreachable", "NoExecute"),
        ("node.kubernetes.io/disk-pressure", "NoSchedule"),
        ("node.kubernetes.io/memory-pressure", "NoSchedule"),
        ("node.kubernetes.io/pid-pressure", "NoSchedule"),
        ("node.kubernetes.io/unschedulable", "NoSchedule"),
    ];
    if spec.host_network == Some(true) {
        wanted.push(("node.kubernetes.io/network-unavailable", "NoSchedule"));
    }
    let tolerations = spec.tolerations.get_or_insert_with(Vec::new);
    for (key, effect) in wanted {
        let toleration = Toleration { key: Some(key.into()), operator: Some("Exists".into()), effect: Some(effect.into()), ..Default::default() };
        // An existing toleration for the same key and effect is replaced, as Kubernetes'
        // AddOrUpdateTolerationInPodSpec does for equal key/operator/effect.
        tolerations.retain(|t| !(t.key.as_deref() == Some(key) && t.effect.as_deref() == Some(effect) && t.operator.as_deref() == Some("Exists")));
        tolerations.push(toleration);
    }
}

fn requirement_matches(r: &NodeSelectorRequirement, value: Option<&str>) -> bool {
    let values = r.values.as_deref().unwrap_or_default();
    match r.operator.as_str() {
        "In" => value.is_some_and(|v| values.iter().any(|x| x == v)),
        "NotIn" => value.is_none_or(|v| !values.iter().any(|x| x == v)),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        "Gt" | "Lt" => {
            let (Some(v), Some(bound)) = (value.and_then(|v| v.parse::<i64>().ok()), values.first().and_then(|b| b.parse::<i64>().ok())) else {
                return false;
            };
            if r.operator == "Gt" {
                v > bound
            } else {
                v < bound
            }
        }
        _ => false,
    }
}

/// Whether a node selector term matches the node: every label expression and field
/// (`metadata.name`) requirement holds; an empty term matches nothing.
pub fn term_matches(term: &NodeSelectorTerm, node: &Node) -> bool {
    let exprs = term.match_expressions.as_deref().unwrap_or_default();
    let fields = term.match_fields.as_deref().unwrap_or_default();
    if exprs.is_empty() && fields.is_empty() {
        return false;
    }
    let labels = node.metadata.labels.clone().unwrap_or_default();
    exprs.iter().all(|r| requirement_matches(r, labels.get(&r.key).map(String::as_str)))
        && fields.iter().all(|r| r.key == "metadata.name" && requirement_matches(r, node.metadata.name.as_deref()))
}

/// Whether the pod spec's nodeSelector and required node affinity admit the node.
pub fn fits_node_affinity(spec: &PodSpec, node: &Node) -> bool {
    let labels = node.metadata.labels.clone().unwrap_or_default();
    if !spec.node_selector.iter().flatten().all(|(k, v)| labels.get(k) == Some(v)) {
        return false;
    }
    let required = spec.affinity.as_ref().and_then(|a| a.node_affinity.as_ref()).and_then(|n| n.required_during_scheduling_ignored_during_execution.as_ref());
    match required {
        None => true,
        Some(sel) => sel.node_selector_terms.iter().any(|t| term_matches(t, node)),
    }
}

/// Whether a daemon pod should be created on the node, and whether one already there
/// should keep running (`NodeShouldRunDaemonPod`).
pub fn node_should_run(template: &PodTemplateSpec, node: &Node) -> (bool, bool) {
    let mut spec = template.spec.clone().unwrap_or_default();
    add_daemon_tolerations(&mut spec);
    let node_name = node.metadata.name.as_deref().unwrap_or_default();
    if spec.node_name.as_deref().is_some_and(|n| !n.is_empty() && n != node_name) {
        return (false, false);
    }
    if !fits_node_affinity(&spec, node) {
        return (false, false);
    }
    let tolerations = spec.tolerations.unwrap_or_default();
    let untolerated: Vec<&Taint> = node
        .spec
        .iter()
        .flat_map(|s| s.taints.iter().flatten())
        .filter(|t| t.effect == "NoSchedule" || t.effect == "NoExecute")
        .filter(|t| !tolerations.iter().any(|tol| tolerates(tol, t)))
        .collect();
    if untolerated.is_empty() {
        (true, true)
    } else {
        (false, !untolerated.iter().any(|t| t.effect == "NoExecute"))
    }
}

/// The node a daemon pod is for: its `spec.nodeName`, or the node its required
/// `metadata.name` affinity names.
fn node_of(pod: &Pod) -> Option<String> {
    let spec = pod.spec.as_ref()?;
    if let Some(n) = spec.node_name.as_deref().filter(|n| !n.is_empty()) {
        return Some(n.to_string());
    }
    let required = spec.affinity.as_ref()?.node_affinity.as_ref()?.required_during_scheduling_ignored_during_execution.as_ref()?;
    required
        .node_selector_terms
        .iter()
        .flat_map(|t| t.match_fields.iter().flatten())
        .find(|r| r.key == "metadata.name" && r.operator == "In")
        .and_then(|r| r.values.as_ref()?.first().cloned())
}

/// A daemon pod for `node`: the template with the revision hash label, the daemon
/// tolerations, the required affinity `metadata.name In [node]` replacing any other
/// matchFields (`ReplaceDaemonSetPodNodeNameNodeAffinity`) and `spec.nodeName` set.
fn daemon_pod(ds: &DaemonSet, template: &PodTemplateSpec, hash: &str, node: &str) -> Pod {
    let ns = ds.namespace().unwrap_or_default();
    let mut pod = podcontrol::pod_from_template(template, &ds.name_any(), &ns, podcontrol::controller_reference(ds));
    let labels = pod.metadata.labels.get_or_insert_with(BTreeMap::new);
    labels.insert(CONTROLLER_REVISION_HASH.into(), hash.into());
    labels.insert(POD_TEMPLATE_GENERATION.into(), ds.metadata.generation.unwrap_or(0).to_string());
    let spec = pod.spec.get_or_insert_with(Default::default);
    add_daemon_tolerations(spec);
    let field = NodeSelectorRequirement { key: "metadata.name".into(), operator: "In".into(), values: Some(vec![node.into()]) };
    let affinity = spec.affinity.get_or_insert_with(Default::default);
    let node_affinity = affinity.node_affinity.get_or_insert_with(Default::default);
    let required = node_affinity.required_during_scheduling_ignored_during_execution.get_or_insert_with(Default::default);
    if required.node_selector_terms.is_empty() {
        required.node_selector_terms.push(NodeSelectorTerm { match_fields: Some(vec![field]), ..Default::default() });
    } else {
        for term in &mut required.node_selector_terms {
            term.match_fields = Some(vec![field.clone()]);
        }
    }
    spec.node_name = Some(node.into());
    pod
}

fn pod_hash(pod: &Pod) -> Option<&str> {
    pod.metadata.labels.as_ref()?.get(CONTROLLER_REVISION_HASH).map(String::as_str)
}

fn is_failed(pod: &Pod) -> bool {
    pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Failed")
}

fn created(pod: &Pod) -> Option<Timestamp> {
    pod.metadata.creation_timestamp.as_ref().map(|t| t.0)
}

/// maxSurge and maxUnavailable against the desired count, both rounded up (as the
/// DaemonSet controller does); both zero means one unavailable.
fn surge_and_unavailable(ds: &DaemonSet, desired: i32) -> (i32, i32) {
    let ru = ds.spec.as_ref().and_then(|s| s.update_strategy.as_ref()).and_then(|s| s.rolling_update.as_ref());
    let surge = ru.and_then(|r| r.max_surge.clone()).unwrap_or(IntOrString::Int(0));
    let unavailable = ru.and_then(|r| r.max_unavailable.clone()).unwrap_or(IntOrString::Int(1));
    let s = scaled_value(&surge, desired, true).unwrap_or(0).max(0);
    let u = scaled_value(&unavailable, desired, true).unwrap_or(1).max(0);
    if s == 0 && u == 0 {
        (0, 1)
    } else {
        (s, u)
    }
}

fn is_rolling(ds: &DaemonSet) -> bool {
    ds.spec.as_ref().and_then(|s| s.update_strategy.as_ref()).and_then(|s| s.type_.as_deref()) != Some("OnDelete")
}

// ---------------------------------------------------------------------------------------
// Sync.

async fn reconcile(ds: Arc<DaemonSet>, st: Arc<State>) -> Result<Action, DaemonSetError> {
    let key = podcontrol::key_of(&ds.metadata);
    let span = info_span!("sync", controller = "daemonset", daemonset = %key);
    sync(ds, st, key).instrument(span).await
}

/// What the sync decided to do.
#[derive(Default)]
struct Plan {
    create_on: Vec<String>,
    delete: Vec<Arc<Pod>>,
    /// Pods on nodes that are gone: deleted at once, nothing will run them.
    force_delete: Vec<Arc<Pod>>,
    /// Failed pods, by node: deleted subject to the node's back-off.
    failed: Vec<(String, Arc<Pod>)>,
}

async fn sync(ds: Arc<DaemonSet>, st: Arc<State>, key: String) -> Result<Action, DaemonSetError> {
    let ns = ds.namespace().unwrap_or_default();
    let Some(spec) = ds.spec.as_ref() else { return Ok(Action::await_change()) };
    let selector = selector_of(&ds).map_err(|reason| DaemonSetError::InvalidSelector { key: key.clone(), reason })?;
    let candidates: Vec<Arc<Pod>> = st.pods.state().into_iter().filter(|p| p.metadata.namespace.as_deref() == Some(ns.as_str())).collect();
    let present: HashSet<&str> = candidates.iter().filter_map(|p| p.metadata.uid.as_deref()).collect();
    st.expectations.observe_gone(&deletions_key(&key), |uid| present.contains(uid));
    let claimer = Claimer { owner: &*ds, selector: &selector };
    let client = st.client.clone();
    let pods = podcontrol::claim(|ns| Api::<Pod>::namespaced(client.clone(), ns), &claimer, candidates)
        .await
        .map_err(|source| DaemonSetError::Claim { key: key.clone(), source })?;
    let pods: Vec<Arc<Pod>> = pods.into_iter().filter(|p| p.metadata.deletion_timestamp.is_none()).collect();

    // History: the revision of the current template, and the hash its pods carry.
    let history_err = |source| DaemonSetError::History { key: key.clone(), source };
    let revisions = history::owned_revisions(&st.client, &*ds, &selector).await.map_err(history_err)?;
    let collision_count = ds.status.as_ref().and_then(|s| s.collision_count);
    let update = match history::ensure_revision(&st.client, &*ds, &spec.template, collision_count, &revisions).await {
        Ok(r) => r,
        Err(HistoryError::Collision { name }) => {
            warn!(revision = %name, "hash collision, bumping collisionCount");
            let patch = json!({"status": {"collisionCount": collision_count.unwrap_or(0) + 1}});
            Api::<DaemonSet>::namespaced(st.client.clone(), &ns)
                .patch_status(&ds.name_any(), &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .map_err(|source| DaemonSetError::UpdateStatus { key: key.clone(), source })?;
            return Ok(Action::requeue(Duration::from_millis(100)));
        }
        Err(e) => return Err(history_err(e)),
    };
    let hash = update.labels().get(CONTROLLER_REVISION_HASH).cloned().unwrap_or_else(|| history::hash_of(&spec.template, collision_count));

    let nodes = st.nodes.state();
    let mut by_node: HashMap<String, Vec<Arc<Pod>>> = HashMap::new();
    let mut nodeless = Vec::new();
    for p in &pods {
        match node_of(p) {
            Some(n) => by_node.entry(n).or_default().push(p.clone()),
            None => nodeless.push(p.clone()),
        }
    }
    for list in by_node.values_mut() {
        list.sort_by_key(|p| created(p));
    }
    let now = Timestamp::now();
    let min_ready = spec.min_ready_seconds.unwrap_or(0);
    let available = |p: &Pod| podcontrol::is_available(p, min_ready, now);

    // Status, from the pods as they are before this sync acts.
    let status = {
        let (mut desired, mut current, mut misscheduled, mut ready, mut avail, mut updated) = (0, 0, 0, 0, 0, 0);
        for node in &nodes {
            let (should_run, _) = node_should_run(&spec.template, node);
            let on = by_node.get(&node.name_any()).map(Vec::as_slice).unwrap_or_default();
            if should_run {
                desired += 1;
                if let Some(p) = on.iter().filter(|p| !is_failed(p)).max_by_key(|p| (pod_hash(p) == Some(hash.as_str()), created(p))) {
                    current += 1;
                    ready += i32::from(podcontrol::is_ready(p));
                    avail += i32::from(available(p));
                    updated += i32::from(pod_hash(p) == Some(hash.as_str()));
                }
            } else if !on.is_empty() {
                misscheduled += 1;
            }
        }
        json!({
            "desiredNumberScheduled": desired,
            "currentNumberScheduled": current,
            "numberMisscheduled": misscheduled,
            "numberReady": ready,
            "numberAvailable": avail,
            "numberUnavailable": desired - avail,
            "updatedNumberScheduled": updated,
            "observedGeneration": ds.metadata.generation.unwrap_or(0),
        })
    };

    let satisfied = st.expectations.satisfied(&key) && st.expectations.satisfied(&deletions_key(&key));
    let mut retry_after: Option<Duration> = None;
    let manage = if satisfied && ds.metadata.deletion_timestamp.is_none() {
        let mut plan = plan(&ds, &spec.template, &hash, &nodes, &mut by_node, nodeless, &available);
        let now = Instant::now();
        for (node, pod) in std::mem::take(&mut plan.failed) {
            match st.failed_backoff.try_delete(&format!("{key}/{node}"), now) {
                Ok(()) => {
                    info!(pod = %pod.name_any(), %node, "deleting failed daemon pod");
                    plan.delete.push(pod);
                }
                Err(wait) => {
                    debug!(pod = %pod.name_any(), %node, ?wait, "failed daemon pod: backing off");
                    retry_after = Some(retry_after.map_or(wait, |r: Duration| r.min(wait)));
                }
            }
        }
        execute(&ds, &st, &key, &hash, plan).await
    } else {
        Ok(())
    };

    let old = serde_json::to_value(ds.status.clone().unwrap_or_default()).unwrap_or_default();
    let changed = status.as_object().is_some_and(|m| m.iter().any(|(k, v)| old.get(k).unwrap_or(&json!(0)) != v));
    if changed {
        let api = Api::<DaemonSet>::namespaced(st.client.clone(), &ns);
        match api.patch_status(&ds.name_any(), &PatchParams::default(), &Patch::Merge(&json!({"status": status}))).await {
            Ok(_) => debug!(%status, "status updated"),
            Err(kube::Error::Api(s)) if s.code == 404 => return Ok(Action::await_change()),
            Err(source) => return Err(DaemonSetError::UpdateStatus { key, source }),
        }
    }
    manage?;

    // History beyond the limit: revisions no pod uses.
    let live: HashSet<&str> = pods.iter().filter_map(|p| pod_hash(p)).collect();
    let limit = spec.revision_history_limit.unwrap_or(10);
    let update_name = update.name_any();
    history::truncate(&st.client, &revisions, limit, |r| {
        r.name_any() == update_name || r.labels().get(CONTROLLER_REVISION_HASH).is_some_and(|h| live.contains(h.as_str()))
    })
    .await
    .map_err(|source| DaemonSetError::History { key: key.clone(), source })?;

    let ready = status["numberReady"].as_i64().unwrap_or(0);
    let avail = status["numberAvailable"].as_i64().unwrap_or(0);
    if let Some(wait) = retry_after {
        return Ok(Action::requeue(wait));
    }
    if min_ready > 0 && ready != avail {
        return Ok(Action::requeue(Duration::from_secs(u64::try_from(min_ready).unwrap_or(1))));
    }
    Ok(Action::await_change())
}

/// Decides which pods to create and delete (`manage` then `rollingUpdate`).
fn plan(
    ds: &DaemonSet,
    template: &PodTemplateSpec,
    hash: &str,
    nodes: &[Arc<Node>],
    by_node: &mut HashMap<String, Vec<Arc<Pod>>>,
    nodeless: Vec<Arc<Pod>>,
    available: &dyn Fn(&Pod) -> bool,
) -> Plan {
    let mut plan = Plan { delete: nodeless, ..Default::default() };
    let rolling = is_rolling(ds);
    let mut desired = 0;
    // Nodes that should run a pod, with their (sorted, non-failed) pods.
    let mut running: Vec<(String, Vec<Arc<Pod>>)> = Vec::new();
    for node in nodes {
        let name = node.name_any();
        let (should_run, should_continue) = node_should_run(template, node);
        desired += i32::from(should_run);
        let on = by_node.remove(&name).unwrap_or_default();
        if !should_continue {
            plan.delete.extend(on);
            continue;
        }
        let (failed, alive): (Vec<_>, Vec<_>) = on.into_iter().partition(|p| is_failed(p));
        let had_failed = !failed.is_empty();
        plan.failed.extend(failed.into_iter().map(|p| (name.clone(), p)));
        if alive.is_empty() {
            // A failed pod is replaced once its deletion is seen.
            if should_run && !had_failed {
                plan.create_on.push(name);
            }
            continue;
        }
        // One pod per node; with surge, an old and a new one may overlap.
        let (new, old): (Vec<_>, Vec<_>) = alive.into_iter().partition(|p| pod_hash(p) == Some(hash));
        let mut keep = Vec::new();
        let (mut new, mut old) = (new.into_iter(), old.into_iter());
        if let Some(p) = old.next() {
            keep.push(p);
        }
        if let Some(p) = new.next() {
            keep.push(p);
        }
        plan.delete.extend(new);
        plan.delete.extend(old);
        let surge = rolling && surge_and_unavailable(ds, 1).0 > 0;
        if keep.len() > 1 && !surge {
            // Keep the oldest.
            keep.sort_by_key(|p| created(p));
            plan.delete.extend(keep.drain(1..));
        }
        running.push((name, keep));
    }
    // Pods on nodes that no longer exist.
    plan.force_delete = by_node.drain().flat_map(|(_, v)| v).collect();
    if !rolling || !plan.create_on.is_empty() || !plan.delete.is_empty() || !plan.failed.is_empty() {
        return plan;
    }

    // Rolling update over nodes whose pod is old.
    let (max_surge, max_unavailable) = surge_and_unavailable(ds, desired);
    if max_surge == 0 {
        let mut unavailable = 0;
        let mut candidates = Vec::new();
        for (_, pods) in &running {
            let new = pods.iter().find(|p| pod_hash(p) == Some(hash));
            let old = pods.iter().find(|p| pod_hash(p) != Some(hash));
            match (new, old) {
                (None, Some(old)) if !available(old) => {
                    plan.delete.push(old.clone());
                    unavailable += 1;
                }
                (None, Some(old)) => candidates.push(old.clone()),
                (Some(new), _) if !available(new) => unavailable += 1,
                _ => {}
            }
        }
        // Nodes that should run a pod but have none count as unavailable too.
        unavailable += desired - i32::try_from(running.len()).unwrap_or(i32::MAX);
        for old in candidates {
            if unavailable >= max_unavailable {
                break;
            }
            plan.delete.push(old);
            unavailable += 1;
        }
    } else {
        let mut surging = 0;
        let mut candidates = Vec::new();
        for (node, pods) in &running {
            let new = pods.iter().find(|p| pod_hash(p) == Some(hash));
            let old = pods.iter().find(|p| pod_hash(p) != Some(hash));
            match (new, old) {
                (None, Some(old)) if !available(old) => plan.create_on.push(node.clone()),
                (None, Some(_)) => candidates.push(node.clone()),
                (Some(new), Some(old)) => {
                    surging += 1;
                    if available(new) {
                        plan.delete.push(old.clone());
                    }
                }
                _ => {}
            }
        }
        for node in candidates {
            if surging >= max_surge {
                break;
            }
            plan.create_on.push(node);
            surging += 1;
        }
    }
    plan
}

async fn execute(ds: &DaemonSet, st: &State, key: &str, hash: &str, plan: Plan) -> Result<(), DaemonSetError> {
    let ns = ds.namespace().unwrap_or_default();
    let api: Api<Pod> = Api::namespaced(st.client.clone(), &ns);
    let Some(spec) = ds.spec.as_ref() else { return Ok(()) };
    let mut failure = None;
    if !plan.create_on.is_empty() {
        st.expectations.expect_creations(key, plan.create_on.len());
        info!(creating = plan.create_on.len(), "creating daemon pods");
        let results = futures::future::join_all(plan.create_on.iter().map(|node| {
            let pod = daemon_pod(ds, &spec.template, hash, node);
            let api = &api;
            async move { (node, api.create(&PostParams::default(), &pod).await) }
        }))
        .await;
        for (node, r) in results {
            match r {
                Ok(p) => {
                    info!(pod = %p.name_any(), %node, "created daemon pod");
                    st.events.normal(ds.object_ref(&()), "SuccessfulCreate", format!("Created pod: {}", p.name_any()));
                }
                Err(source) => {
                    st.expectations.creation_observed(key);
                    st.events.warning(ds.object_ref(&()), "FailedCreate", format!("Error creating: {}", super::api_error_message(&source)));
                    failure.get_or_insert(DaemonSetError::CreatePod { key: key.into(), node: node.clone(), source });
                }
            }
        }
    }
    let all_deletes: Vec<(&Arc<Pod>, bool)> = plan.delete.iter().map(|p| (p, false)).chain(plan.force_delete.iter().map(|p| (p, true))).collect();
    if !all_deletes.is_empty() {
        let dkey = deletions_key(key);
        st.expectations.expect_deletions(&dkey, all_deletes.iter().map(|(p, _)| p.metadata.uid.clone().unwrap_or_default()));
        info!(deleting = all_deletes.len(), "deleting daemon pods");
        let results = futures::future::join_all(all_deletes.iter().map(|(p, force)| {
            let api = &api;
            let dp = if *force { DeleteParams { grace_period_seconds: Some(0), ..Default::default() } } else { DeleteParams::default() };
            async move { (*p, api.delete(&p.name_any(), &dp).await) }
        }))
        .await;
        for (p, r) in results {
            match r {
                Ok(_) => {
                    info!(pod = %p.name_any(), node = node_of(p).unwrap_or_default(), "deleted daemon pod");
                    st.events.normal(ds.object_ref(&()), "SuccessfulDelete", format!("Deleted pod: {}", p.name_any()));
                }
                Err(e) => {
                    st.expectations.deletion_observed(&dkey, p.metadata.uid.as_deref().unwrap_or_default());
                    if !matches!(&e, kube::Error::Api(s) if s.code == 404) {
                        st.events.warning(ds.object_ref(&()), "FailedDelete", format!("Error deleting: {}", super::api_error_message(&e)));
                        failure.get_or_insert(DaemonSetError::DeletePod { key: key.into(), pod: p.name_any(), source: e });
                    }
                }
            }
        }
    }
    failure.map_or(Ok(()), Err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::NodeSpec;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn node(name: &str, labels: &[(&str, &str)], taints: Vec<Taint>) -> Node {
        Node {
            metadata: ObjectMeta {
                name: Some(name.into()),
                labels: Some(labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()),
                ..Default::default()
            },
            spec: Some(NodeSpec { taints: Some(taints), ..Default::default() }),
            status: None,
        }
    }

    fn taint(key: &str, effect: &str) -> Taint {
        Taint { key: key.into(), effect: effect.into(), ..Default::default() }
    }

    fn template(v: serde_json::Value) -> PodTemplateSpec {
        serde_json::from_value(v).unwrap_or_default()
    }

    #[test]
    fn taints_selectors_and_automatic_tolerations() {
        let t = template(json!({"spec": {"containers": [{"name": "c"}], "nodeSelector": {"role": "edge"}}}));
        assert_eq!(node_should_run(&t, &node("a", &[("role", "edge")], vec![])), (true, true));
        assert_eq!(node_should_run(&t, &node("b", &[], vec![])), (false, false));
        // Untolerated NoSchedule: no new pod, but an existing one stays.
        assert_eq!(node_should_run(&t, &node("c", &[("role", "edge")], vec![taint("dedicated", "NoSchedule")])), (false, true));
        assert_eq!(node_should_run(&t, &node("d", &[("role", "edge")], vec![taint("dedicated", "NoExecute")])), (false, false));
        // The automatic tolerations.
        for (k, e) in [("node.kubernetes.io/unschedulable", "NoSchedule"), ("node.kubernetes.io/not-ready", "NoExecute"), ("node.kubernetes.io/disk-pressure", "NoSchedule")] {
            assert_eq!(node_should_run(&t, &node("e", &[("role", "edge")], vec![taint(k, e)])), (true, true), "{k}");
        }
        assert_eq!(node_should_run(&t, &node("f", &[("role", "edge")], vec![taint("node.kubernetes.io/network-unavailable", "NoSchedule")])), (false, true));
    }

    #[test]
    fn failed_pod_deletions_back_off() {
        let b = FailedBackoff::default();
        let t0 = Instant::now();
        assert!(b.try_delete("ns/ds/n", t0).is_ok());
        assert!(b.try_delete("ns/ds/n", t0 + Duration::from_millis(500)).is_err());
        assert!(b.try_delete("ns/ds/other", t0).is_ok());
        assert!(b.try_delete("ns/ds/n", t0 + Duration::from_millis(1100)).is_ok());
        // Doubled: 2 s now.
        assert!(b.try_delete("ns/ds/n", t0 + Duration::from_millis(2500)).is_err());
        assert!(b.try_delete("ns/ds/n", t0 + Duration::from_millis(3200)).is_ok());
    }

    #[test]
    fn required_affinity_and_pod_binding() {
        let t = template(json!({"spec": {"containers": [{"name": "c"}], "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [{"matchExpressions": [{"key": "zone", "operator": "In", "values": ["z1"]}]}]}}}}}));
        assert!(node_should_run(&t, &node("a", &[("zone", "z1")], vec![])).0);
        assert!(!node_should_run(&t, &node("b", &[("zone", "z2")], vec![])).0);
        let ds: DaemonSet = serde_json::from_value(json!({"metadata": {"name": "x", "namespace": "ns", "uid": "u"},
            "spec": {"selector": {}, "template": t}}))
        .unwrap_or_default();
        let pod = daemon_pod(&ds, &t, "h", "a");
        assert_eq!(node_of(&pod).as_deref(), Some("a"));
        let terms = pod.spec.as_ref().and_then(|s| s.affinity.as_ref()).and_then(|a| a.node_affinity.as_ref())
            .and_then(|n| n.required_during_scheduling_ignored_during_execution.as_ref()).map(|r| r.node_selector_terms.clone()).unwrap_or_default();
        assert_eq!(terms.len(), 1);
        assert!(terms[0].match_expressions.is_some() && terms[0].match_fields.is_some());
        assert!(term_matches(&terms[0], &node("a", &[("zone", "z1")], vec![])));
        assert!(!term_matches(&terms[0], &node("b", &[("zone", "z1")], vec![])));
        let tolerations = pod.spec.and_then(|s| s.tolerations).unwrap_or_default();
        assert_eq!(tolerations.len(), 6);
    }
}
