//! The disruption controller: keeps each PodDisruptionBudget's `status` true to the pods
//! it selects — how many are healthy, how many must stay so, how many may be disrupted
//! now — which the eviction subresource consults before it lets a pod go (what
//! `kubectl drain` waits on). As Kubernetes' `disruption` controller:
//!
//! - the pods are those of the budget's namespace its selector matches (`{}` every one,
//!   no selector none); healthy are those Ready and not being deleted;
//! - an integer `minAvailable` is the healthy count needed and the pods are the expected
//!   count; a `maxUnavailable` or a percentage `minAvailable` counts against the scale
//!   of the pods' controllers (a Deployment's for its ReplicaSets' pods, a ReplicaSet's,
//!   ReplicationController's or StatefulSet's, or any kind's `scale` subresource), each
//!   controller once, percentages rounded up. Pods without a controller are left out of
//!   that count (a Warning `UnmanagedPods` says the budget cannot be right); a controller
//!   that cannot be found or scaled fails the count (a Warning
//!   `CalculateExpectedPodCountFailed`) and the budget is set to allow nothing, with a
//!   `SyncFailed` condition. A budget with neither field expects nothing and so allows
//!   nothing;
//! - `status.disruptedPods`, written by the eviction subresource as it admits an
//!   eviction, keeps a pod until it is seen being deleted or gone, or two minutes pass
//!   (then a Warning `NotDeleted` on the pod); a pod kept there no longer counts as
//!   healthy;
//! - disruptions are allowed only while some pods are expected.
//!
//! Budgets are synced when they change, when a pod they select (or selected) changes,
//! when a recorded disruption expires, and every [`RESYNC`]. Status is written through
//! the `status` subresource with the budget's resourceVersion, so an eviction admitted
//! meanwhile is never overwritten (a conflict just syncs again). It also clears a pod's
//! `DisruptionTarget` condition left True for two minutes on a pod that was not deleted
//! after all, as Kubernetes' controller does.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Debug;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use component_base::events::EventSink;
use futures::channel::mpsc;
use futures::{FutureExt, Stream, StreamExt};
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::core::v1::{Pod, ReplicationController};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec, PodDisruptionBudgetStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, OwnerReference, Time};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::jiff::Timestamp;
use k8s_openapi::NamespaceResourceScope;
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::GroupVersionKind;
use kube::discovery::ApiResource;
use kube::runtime::controller::{self, Action};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, info_span, warn, Instrument};

use super::{podcontrol, Context, ControllerError};

/// How long a disruption admitted by the eviction subresource holds a pod out of the
/// healthy count while the pod is not seen being deleted (Kubernetes' `DeletionTimeout`).
pub const DELETION_TIMEOUT: Duration = Duration::from_secs(120);

/// How long a pod's `DisruptionTarget` condition may stay True without the pod being
/// deleted before it is cleared (Kubernetes' `stalePodDisruptionTimeout`).
pub const STALE_POD_DISRUPTION_TIMEOUT: Duration = Duration::from_secs(120);

/// How often every budget is synced again even if nothing it watches changed (for a
/// controller's scale changed without any pod changing).
pub const RESYNC: Duration = Duration::from_secs(300);

/// How soon a budget whose status could not be computed is tried again.
const RETRY_FAILED: Duration = Duration::from_secs(30);

/// How soon a budget is synced again after its status write lost a race.
const RETRY_CONFLICT: Duration = Duration::from_millis(200);

/// Kubernetes' disruption controller reports as the controller manager.
const EVENT_SOURCE: &str = "controllermanager";

const DISRUPTION_ALLOWED: &str = "DisruptionAllowed";
const DISRUPTION_TARGET: &str = "DisruptionTarget";

/// Why a sync failed (it is retried).
#[derive(Debug, thiserror::Error)]
pub enum DisruptionError {
    #[error("writing the status of PodDisruptionBudget {key} failed")]
    WriteStatus {
        key: String,
        #[source]
        source: kube::Error,
    },
    #[error("clearing the stale DisruptionTarget condition of pod {key} failed")]
    ClearStaleCondition {
        key: String,
        #[source]
        source: kube::Error,
    },
}

/// Why the expected pod count of a budget could not be computed (the budget then allows
/// no disruption). The messages are Kubernetes'.
#[derive(Debug, thiserror::Error)]
pub enum ExpectedPodsError {
    #[error("found no controllers for pod {0:?}")]
    NoController(String),
    #[error("{0} does not implement the scale subresource")]
    NoScale(String),
    #[error("{0}")]
    InvalidIntOrPercent(String),
    #[error("looking up {what} failed")]
    Lookup {
        what: String,
        #[source]
        source: kube::Error,
    },
    #[error("no matches for kind {kind:?} in version {api_version:?}")]
    Discover {
        kind: String,
        api_version: String,
        #[source]
        source: kube::Error,
    },
}

impl ExpectedPodsError {
    /// The message an event gives: the error with its API cause.
    fn message(&self) -> String {
        match self {
            ExpectedPodsError::Lookup { source, .. } => format!("{self}: {}", super::api_error_message(source)),
            other => other.to_string(),
        }
    }
}

struct State {
    client: kube::Client,
    pods: Store<Pod>,
    replicasets: Store<ReplicaSet>,
    deployments: Store<Deployment>,
    replication_controllers: Store<ReplicationController>,
    statefulsets: Store<StatefulSet>,
    events: EventSink,
    /// Controller kinds other than the four above, as found in discovery (by apiVersion
    /// and kind): their resource and whether it serves `scale`.
    discovered: Mutex<HashMap<(String, String), (ApiResource, bool)>>,
}

/// Starts the disruption controller.
pub fn start(ctx: Context, shutdown: CancellationToken) -> futures::future::BoxFuture<'static, Result<(), ControllerError>> {
    run(ctx, shutdown).boxed()
}

async fn run(ctx: Context, shutdown: CancellationToken) -> Result<(), ControllerError> {
    let client = ctx.client.clone();
    let cfg = watcher::Config::default;
    let (pdb_reader, pdb_writer) = reflector::store::<PodDisruptionBudget>();
    let (pod_reader, pod_writer) = reflector::store::<Pod>();
    let (rs_reader, rs_writer) = reflector::store::<ReplicaSet>();
    let (d_reader, d_writer) = reflector::store::<Deployment>();
    let (rc_reader, rc_writer) = reflector::store::<ReplicationController>();
    let (ss_reader, ss_writer) = reflector::store::<StatefulSet>();

    super::keep_filled("disruption", reflector::reflector(rs_writer, watcher(Api::<ReplicaSet>::all(client.clone()), cfg()).default_backoff()), shutdown.clone());
    super::keep_filled("disruption", reflector::reflector(d_writer, watcher(Api::<Deployment>::all(client.clone()), cfg()).default_backoff()), shutdown.clone());
    super::keep_filled("disruption", 
        reflector::reflector(rc_writer, watcher(Api::<ReplicationController>::all(client.clone()), cfg()).default_backoff()),
        shutdown.clone(),
    );
    super::keep_filled("disruption", reflector::reflector(ss_writer, watcher(Api::<StatefulSet>::all(client.clone()), cfg()).default_backoff()), shutdown.clone());

    let (budget_tx, budget_rx) = mpsc::unbounded::<ObjectRef<PodDisruptionBudget>>();
    let (stale_tx, stale_rx) = mpsc::unbounded::<ObjectRef<Pod>>();
    let pods = reflector::reflector(pod_writer, watcher(Api::<Pod>::all(client.clone()), cfg()).default_backoff());
    follow_pods(pods, pdb_reader.clone(), budget_tx, stale_tx, shutdown.clone());

    // Budgets: synced whenever one changes (its own status writes included, as in
    // Kubernetes: an eviction's write must be reconciled with the pods).
    let budgets = reflector::reflector(pdb_writer, watcher(Api::<PodDisruptionBudget>::all(client.clone()), cfg()).default_backoff());
    let budget_refs = budgets.flat_map(|event| {
        let r = match event {
            Ok(watcher::Event::InitApply(pdb) | watcher::Event::Apply(pdb)) => Some(ObjectRef::from_obj(&pdb)),
            Ok(_) => None,
            Err(e) => {
                debug!(controller = "disruption", error = %e, "budget watch");
                None
            }
        };
        futures::stream::iter(r.map(Ok::<_, watcher::Error>))
    });
    let budget_queue = futures::stream::select(budget_refs, budget_rx.map(Ok::<_, watcher::Error>));

    // The budgets' store fills as the applier reads their queue: not waited for here.
    let waits = [
        pod_reader.wait_until_ready().boxed(),
        rs_reader.wait_until_ready().boxed(),
        d_reader.wait_until_ready().boxed(),
        rc_reader.wait_until_ready().boxed(),
        ss_reader.wait_until_ready().boxed(),
    ];
    for ready in waits {
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            r = ready => r.map_err(|e| ControllerError::Config(e.to_string()))?,
        }
    }
    let state = Arc::new(State {
        client,
        pods: pod_reader.clone(),
        replicasets: rs_reader,
        deployments: d_reader,
        replication_controllers: rc_reader,
        statefulsets: ss_reader,
        events: ctx.events(EVENT_SOURCE),
        discovered: Mutex::new(HashMap::new()),
    });
    let budget_applier = controller::applier(
        |pdb, st| Box::pin(reconcile(pdb, st)),
        |pdb: Arc<PodDisruptionBudget>, err: &DisruptionError, _| {
            warn!(controller = "disruption", budget = %podcontrol::key_of(&pdb.metadata), error = %err, "sync failed");
            Action::requeue(Duration::from_secs(1))
        },
        state.clone(),
        pdb_reader,
        budget_queue,
        controller::Config::default().debounce(Duration::from_millis(100)),
    );
    let stale_applier = controller::applier(
        |pod, st| Box::pin(clear_stale_disruption(pod, st)),
        |pod: Arc<Pod>, err: &DisruptionError, _| {
            warn!(controller = "disruption", pod = %podcontrol::key_of(&pod.metadata), error = %err, "clearing a stale DisruptionTarget failed");
            Action::requeue(Duration::from_secs(1))
        },
        state,
        pod_reader,
        stale_rx.map(Ok::<_, watcher::Error>),
        controller::Config::default(),
    );
    tokio::try_join!(super::drive("disruption", budget_applier, &shutdown), super::drive("disruption-stale-pods", stale_applier, &shutdown))?;
    Ok(())
}

/// The labels of a pod as last seen, by namespace and name.
type PodLabels = HashMap<(String, String), BTreeMap<String, String>>;

/// Follows the pod reflector: each pod change queues the budgets in its namespace that
/// select the pod as it is now or as it was (its labels may have changed, or it is
/// gone), and the pods whose `DisruptionTarget` condition may go stale.
fn follow_pods<S>(
    events: S,
    budgets: Store<PodDisruptionBudget>,
    budget_tx: mpsc::UnboundedSender<ObjectRef<PodDisruptionBudget>>,
    stale_tx: mpsc::UnboundedSender<ObjectRef<Pod>>,
    stop: CancellationToken,
) where
    S: Stream<Item = Result<watcher::Event<Pod>, watcher::Error>> + Send + 'static,
{
    tokio::spawn(async move {
        let mut events = std::pin::pin!(events);
        let mut known = PodLabels::new();
        let mut relisted: Option<PodLabels> = None;
        let queue_budgets = |namespace: &str, label_sets: &[Option<&BTreeMap<String, String>>]| {
            for r in budgets_selecting(&budgets.state(), namespace, label_sets) {
                let _ = budget_tx.unbounded_send(r);
            }
        };
        let queue_stale = |pod: &Pod| {
            if stale_disruption_wait(pod, Timestamp::now()).is_some() {
                let _ = stale_tx.unbounded_send(ObjectRef::from_obj(pod));
            }
        };
        loop {
            let next = tokio::select! {
                _ = stop.cancelled() => return,
                n = events.next() => n,
            };
            let event = match next {
                None => return,
                Some(Err(e)) => {
                    debug!(controller = "disruption", error = %e, "pod watch");
                    continue;
                }
                Some(Ok(event)) => event,
            };
            match event {
                watcher::Event::Init => relisted = Some(PodLabels::new()),
                watcher::Event::InitApply(pod) => {
                    let key = (pod.namespace().unwrap_or_default(), pod.name_any());
                    queue_budgets(&key.0, &[known.get(&key), Some(pod.labels())]);
                    queue_stale(&pod);
                    relisted.get_or_insert_with(PodLabels::new).insert(key, pod.labels().clone());
                }
                watcher::Event::InitDone => {
                    // Pods gone while the watch was down were not in the new list.
                    let now = relisted.take().unwrap_or_default();
                    for (key, labels) in known.iter().filter(|(k, _)| !now.contains_key(*k)) {
                        queue_budgets(&key.0, &[Some(labels)]);
                    }
                    known = now;
                }
                watcher::Event::Apply(pod) => {
                    let key = (pod.namespace().unwrap_or_default(), pod.name_any());
                    let before = known.insert(key.clone(), pod.labels().clone());
                    queue_budgets(&key.0, &[before.as_ref(), Some(pod.labels())]);
                    queue_stale(&pod);
                }
                watcher::Event::Delete(pod) => {
                    let key = (pod.namespace().unwrap_or_default(), pod.name_any());
                    let before = known.remove(&key);
                    queue_budgets(&key.0, &[before.as_ref(), Some(pod.labels())]);
                }
            }
        }
    });
}

/// The budgets of `namespace` whose selector matches any of the label sets.
pub fn budgets_selecting(
    budgets: &[Arc<PodDisruptionBudget>],
    namespace: &str,
    label_sets: &[Option<&BTreeMap<String, String>>],
) -> Vec<ObjectRef<PodDisruptionBudget>> {
    budgets
        .iter()
        .filter(|b| b.metadata.namespace.as_deref() == Some(namespace))
        .filter(|b| {
            let Ok(selector) = selector_of(b) else { return false };
            label_sets.iter().flatten().any(|labels| selector.matches(labels))
        })
        .map(|b| ObjectRef::from_obj(b.as_ref()))
        .collect()
}

/// The budget's selector as a matcher: none matches nothing, `{}` everything
/// (policy/v1).
fn selector_of(pdb: &PodDisruptionBudget) -> Result<apimachinery::Selector, String> {
    match pdb.spec.as_ref().and_then(|s| s.selector.as_ref()) {
        None => Ok(apimachinery::Selector::nothing()),
        Some(selector) => super::selector_of(selector),
    }
}

/// The pods of the budget's namespace its selector matches.
pub fn selected_pods(pdb: &PodDisruptionBudget, pods: &[Arc<Pod>]) -> Result<Vec<Arc<Pod>>, String> {
    let selector = selector_of(pdb)?;
    let namespace = pdb.metadata.namespace.as_deref();
    Ok(pods.iter().filter(|p| p.metadata.namespace.as_deref() == namespace && selector.matches(p.labels())).cloned().collect())
}

/// What a budget asks for.
#[derive(Debug, Clone, PartialEq)]
pub enum Budget {
    /// An integer `minAvailable`: that many healthy pods of those selected.
    MinAvailable(i32),
    /// A percentage `minAvailable`, of the controllers' scale.
    MinAvailablePercent(IntOrString),
    /// `maxUnavailable` (integer or percentage), of the controllers' scale.
    MaxUnavailable(IntOrString),
    /// Neither field: nothing is expected, so nothing may be disrupted.
    Unset,
}

impl Budget {
    /// The budget of a spec; `maxUnavailable` wins if (against validation) both are set,
    /// as in Kubernetes.
    pub fn of(spec: Option<&PodDisruptionBudgetSpec>) -> Budget {
        let spec = spec.cloned().unwrap_or_default();
        match (spec.max_unavailable, spec.min_available) {
            (Some(max), _) => Budget::MaxUnavailable(max),
            (None, Some(IntOrString::Int(n))) => Budget::MinAvailable(n),
            (None, Some(percent)) => Budget::MinAvailablePercent(percent),
            (None, None) => Budget::Unset,
        }
    }

    /// Whether the expected count is the scale of the pods' controllers.
    pub fn counts_controllers(&self) -> bool {
        matches!(self, Budget::MinAvailablePercent(_) | Budget::MaxUnavailable(_))
    }

    /// The healthy pods needed when `expected` pods are expected.
    pub fn desired_healthy(&self, expected: i32) -> Result<i32, ExpectedPodsError> {
        match self {
            Budget::MinAvailable(n) => Ok(*n),
            Budget::MinAvailablePercent(v) => scaled_value(v, expected),
            Budget::MaxUnavailable(v) => Ok(expected.saturating_sub(scaled_value(v, expected)?).max(0)),
            Budget::Unset => Ok(0),
        }
    }
}

/// An integer as it is, a percentage of `total` rounded up (`GetScaledValueFromIntOrPercent`
/// with `roundUp`).
pub fn scaled_value(value: &IntOrString, total: i32) -> Result<i32, ExpectedPodsError> {
    super::deployment::scaled_value(value, total, true).map_err(ExpectedPodsError::InvalidIntOrPercent)
}

/// The expected pod count and the healthy count needed, and the selected pods that have
/// no controller (left out of a count by controllers' scale).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Expected {
    pub expected: i32,
    pub desired_healthy: i32,
    pub unmanaged: Vec<String>,
}

fn count(n: usize) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

async fn expected_pods(st: &State, pdb: &PodDisruptionBudget, pods: &[Arc<Pod>]) -> Result<Expected, ExpectedPodsError> {
    let budget = Budget::of(pdb.spec.as_ref());
    let (expected, unmanaged) = if budget.counts_controllers() {
        expected_scale(st, pdb.metadata.namespace.as_deref().unwrap_or_default(), pods).await?
    } else if let Budget::MinAvailable(_) = budget {
        (count(pods.len()), Vec::new())
    } else {
        (0, Vec::new())
    };
    Ok(Expected { expected, desired_healthy: budget.desired_healthy(expected)?, unmanaged })
}

/// The sum of the scales of the distinct controllers of `pods`, and the pods with none.
async fn expected_scale(st: &State, namespace: &str, pods: &[Arc<Pod>]) -> Result<(i32, Vec<String>), ExpectedPodsError> {
    let mut scales: HashMap<String, i32> = HashMap::new();
    let mut looked_up: HashSet<String> = HashSet::new();
    let mut unmanaged = Vec::new();
    for pod in pods {
        let Some(owner) = podcontrol::controller_of(&pod.metadata) else {
            unmanaged.push(pod.name_any());
            continue;
        };
        if !looked_up.insert(owner.uid.clone()) {
            continue;
        }
        match st.scale_of(namespace, owner).await? {
            Some((uid, replicas)) => {
                scales.insert(uid, replicas);
            }
            None => return Err(ExpectedPodsError::NoController(pod.name_any())),
        }
    }
    Ok((scales.values().fold(0i32, |sum, n| sum.saturating_add(*n)), unmanaged))
}

/// The API group of an `apiVersion` (`apps/v1` → `apps`, `v1` → the core group).
fn group_of(api_version: &str) -> &str {
    api_version.split_once('/').map_or("", |(group, _)| group)
}

fn uid_is(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta, uid: &str) -> bool {
    meta.uid.as_deref() == Some(uid)
}

impl State {
    /// An object from its store, or from the API if the store has not seen it yet.
    async fn lookup<K>(&self, store: &Store<K>, namespace: &str, name: &str) -> Result<Option<Arc<K>>, ExpectedPodsError>
    where
        K: Resource<DynamicType = (), Scope = NamespaceResourceScope> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    {
        if let Some(found) = store.get(&ObjectRef::new(name).within(namespace)) {
            return Ok(Some(found));
        }
        let api: Api<K> = Api::namespaced(self.client.clone(), namespace);
        api.get_opt(name)
            .await
            .map(|o| o.map(Arc::new))
            .map_err(|source| ExpectedPodsError::Lookup { what: format!("{} {namespace}/{name}", K::kind(&())), source })
    }

    /// The controlling object `owner` counts as, by UID, and its scale: `None` when it
    /// does not exist (or is another object of the same name).
    async fn scale_of(&self, namespace: &str, owner: &OwnerReference) -> Result<Option<(String, i32)>, ExpectedPodsError> {
        let group = group_of(&owner.api_version);
        match (owner.kind.as_str(), group) {
            ("ReplicaSet", "apps" | "extensions") => {
                let Some(rs) = self.lookup(&self.replicasets, namespace, &owner.name).await? else { return Ok(None) };
                if !uid_is(&rs.metadata, &owner.uid) {
                    return Ok(None);
                }
                // A Deployment's ReplicaSets count as the Deployment, once.
                let deployment = podcontrol::controller_of(&rs.metadata).filter(|r| r.kind == "Deployment" && matches!(group_of(&r.api_version), "apps" | "extensions"));
                if let Some(d_ref) = deployment {
                    if let Some(d) = self.lookup(&self.deployments, namespace, &d_ref.name).await?.filter(|d| uid_is(&d.metadata, &d_ref.uid)) {
                        return Ok(Some((d_ref.uid.clone(), d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1))));
                    }
                }
                Ok(Some((owner.uid.clone(), rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1))))
            }
            ("Deployment", "apps" | "extensions") => {
                let found = self.lookup(&self.deployments, namespace, &owner.name).await?.filter(|d| uid_is(&d.metadata, &owner.uid));
                Ok(found.map(|d| (owner.uid.clone(), d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1))))
            }
            ("ReplicationController", "") => {
                let found = self.lookup(&self.replication_controllers, namespace, &owner.name).await?.filter(|rc| uid_is(&rc.metadata, &owner.uid));
                Ok(found.map(|rc| (owner.uid.clone(), rc.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1))))
            }
            ("StatefulSet", "apps") => {
                let found = self.lookup(&self.statefulsets, namespace, &owner.name).await?.filter(|ss| uid_is(&ss.metadata, &owner.uid));
                Ok(found.map(|ss| (owner.uid.clone(), ss.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1))))
            }
            _ => self.scale_subresource_of(namespace, owner).await,
        }
    }

    /// Any other controller kind counts by its `scale` subresource, if it has one.
    async fn scale_subresource_of(&self, namespace: &str, owner: &OwnerReference) -> Result<Option<(String, i32)>, ExpectedPodsError> {
        let (resource, has_scale) = self.discover(owner).await?;
        let group_resource = if resource.group.is_empty() { resource.plural.clone() } else { format!("{}.{}", resource.plural, resource.group) };
        if !has_scale {
            return Err(ExpectedPodsError::NoScale(group_resource));
        }
        let api: Api<DynamicObject> = Api::namespaced_with(self.client.clone(), namespace, &resource);
        match api.get_scale(&owner.name).await {
            Ok(scale) if uid_is(&scale.metadata, &owner.uid) => Ok(Some((owner.uid.clone(), scale.spec.and_then(|s| s.replicas).unwrap_or(0)))),
            Ok(_) => Ok(None),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(None),
            Err(source) => Err(ExpectedPodsError::Lookup { what: format!("the scale of {group_resource} {namespace}/{}", owner.name), source }),
        }
    }

    /// The resource of an owner's kind and whether it serves `scale`, from discovery
    /// (remembered).
    async fn discover(&self, owner: &OwnerReference) -> Result<(ApiResource, bool), ExpectedPodsError> {
        let key = (owner.api_version.clone(), owner.kind.clone());
        if let Some(found) = self.discovered.lock().unwrap_or_else(|e| e.into_inner()).get(&key).cloned() {
            return Ok(found);
        }
        let (group, version) = owner.api_version.split_once('/').unwrap_or(("", owner.api_version.as_str()));
        let gvk = GroupVersionKind::gvk(group, version, &owner.kind);
        let (resource, caps) = kube::discovery::pinned_kind(&self.client, &gvk).await.map_err(|source| ExpectedPodsError::Discover {
            kind: owner.kind.clone(),
            api_version: owner.api_version.clone(),
            source,
        })?;
        let has_scale = caps.subresources.iter().any(|(sub, _)| sub.plural == "scale");
        let found = (resource, has_scale);
        self.discovered.lock().unwrap_or_else(|e| e.into_inner()).insert(key, found.clone());
        Ok(found)
    }
}

fn millis(t: &Time) -> i64 {
    t.0.as_millisecond()
}

fn deletion_timeout_ms() -> i64 {
    i64::try_from(DELETION_TIMEOUT.as_millis()).unwrap_or(i64::MAX)
}

/// The budget's recorded disruptions that still hold, the pods whose disruption expired
/// without them being deleted, and when the earliest held one expires.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Disruptions {
    pub held: BTreeMap<String, Time>,
    pub expired: Vec<String>,
    pub recheck: Option<Duration>,
}

/// Sorts `status.disruptedPods`: entries of selected pods not being deleted hold for
/// [`DELETION_TIMEOUT`]; the rest (pods gone, being deleted, or no longer selected) are
/// dropped.
pub fn recorded_disruptions(pdb: &PodDisruptionBudget, pods: &[Arc<Pod>], now: Timestamp) -> Disruptions {
    let mut out = Disruptions::default();
    let Some(recorded) = pdb.status.as_ref().and_then(|s| s.disrupted_pods.as_ref()) else { return out };
    let now_ms = now.as_millisecond();
    for pod in pods {
        if pod.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let name = pod.name_any();
        let Some(at) = recorded.get(&name) else { continue };
        let deadline = millis(at).saturating_add(deletion_timeout_ms());
        if deadline < now_ms {
            out.expired.push(name);
        } else {
            let left = Duration::from_millis(u64::try_from(deadline - now_ms).unwrap_or(0));
            out.recheck = Some(out.recheck.map_or(left, |r| r.min(left)));
            out.held.insert(name, at.clone());
        }
    }
    out
}

/// The selected pods that are Ready, not being deleted, and not held by a recorded
/// disruption.
pub fn count_healthy(pods: &[Arc<Pod>], held: &BTreeMap<String, Time>, now: Timestamp) -> i32 {
    let now_ms = now.as_millisecond();
    count(
        pods.iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .filter(|p| held.get(&p.name_any()).is_none_or(|at| millis(at).saturating_add(deletion_timeout_ms()) <= now_ms))
            .filter(|p| podcontrol::is_ready(p))
            .count(),
    )
}

/// Sets a condition as `meta.SetStatusCondition` does: its transition time moves only
/// when its status changes.
fn set_condition(conditions: &mut Vec<Condition>, type_: &str, status: &str, reason: &str, message: &str, observed_generation: Option<i64>, now: Timestamp) {
    match conditions.iter_mut().find(|c| c.type_ == type_) {
        Some(c) => {
            if c.status != status {
                c.status = status.to_string();
                c.last_transition_time = Time(now);
            }
            c.reason = reason.to_string();
            c.message = message.to_string();
            c.observed_generation = observed_generation;
        }
        None => conditions.push(Condition {
            type_: type_.to_string(),
            status: status.to_string(),
            reason: reason.to_string(),
            message: message.to_string(),
            observed_generation,
            last_transition_time: Time(now),
        }),
    }
}

/// Whether the `DisruptionAllowed` condition agrees with the status's
/// `disruptionsAllowed` and generation.
fn condition_up_to_date(status: &PodDisruptionBudgetStatus, generation: Option<i64>) -> bool {
    let Some(c) = status.conditions.iter().flatten().find(|c| c.type_ == DISRUPTION_ALLOWED) else { return false };
    if status.observed_generation != generation {
        return false;
    }
    if status.disruptions_allowed > 0 {
        c.status == "True" && c.reason == "SufficientPods"
    } else {
        c.status == "False" && c.reason == "InsufficientPods"
    }
}

/// The status the budget should have, or `None` when it already has it.
pub fn status_for(pdb: &PodDisruptionBudget, current_healthy: i32, expected: &Expected, held: BTreeMap<String, Time>, now: Timestamp) -> Option<PodDisruptionBudgetStatus> {
    // No disruption while nothing is expected: a budget whose first pods appear before
    // it was synced must not allow one.
    let allowed = if expected.expected <= 0 { 0 } else { current_healthy.saturating_sub(expected.desired_healthy).max(0) };
    let generation = pdb.metadata.generation;
    let old = pdb.status.clone().unwrap_or_default();
    let same = old.current_healthy == current_healthy
        && old.desired_healthy == expected.desired_healthy
        && old.expected_pods == expected.expected
        && old.disruptions_allowed == allowed
        && old.disrupted_pods.clone().unwrap_or_default() == held
        && old.observed_generation == generation
        && condition_up_to_date(&old, generation);
    if same {
        return None;
    }
    let mut conditions = old.conditions.unwrap_or_default();
    let (status, reason) = if allowed > 0 { ("True", "SufficientPods") } else { ("False", "InsufficientPods") };
    set_condition(&mut conditions, DISRUPTION_ALLOWED, status, reason, "", generation, now);
    Some(PodDisruptionBudgetStatus {
        current_healthy,
        desired_healthy: expected.desired_healthy,
        expected_pods: expected.expected,
        disruptions_allowed: allowed,
        disrupted_pods: (!held.is_empty()).then_some(held),
        observed_generation: generation,
        conditions: Some(conditions),
    })
}

/// The status of a budget whose status could not be computed: no disruption allowed, and
/// a `SyncFailed` condition saying why; `None` when it already says so.
pub fn fail_safe_status(pdb: &PodDisruptionBudget, message: &str, now: Timestamp) -> Option<PodDisruptionBudgetStatus> {
    let mut status = pdb.status.clone().unwrap_or_default();
    status.disruptions_allowed = 0;
    let mut conditions = status.conditions.take().unwrap_or_default();
    set_condition(&mut conditions, DISRUPTION_ALLOWED, "False", "SyncFailed", message, status.observed_generation, now);
    status.conditions = Some(conditions);
    (pdb.status.as_ref() != Some(&status)).then_some(status)
}

async fn reconcile(pdb: Arc<PodDisruptionBudget>, st: Arc<State>) -> Result<Action, DisruptionError> {
    let key = podcontrol::key_of(&pdb.metadata);
    let span = info_span!("sync", controller = "disruption", object = %key);
    sync(&pdb, &st, &key).instrument(span).await
}

async fn sync(pdb: &PodDisruptionBudget, st: &State, key: &str) -> Result<Action, DisruptionError> {
    let now = Timestamp::now();
    let pods = match selected_pods(pdb, &st.pods.state()) {
        Ok(pods) => pods,
        Err(e) => {
            st.events.warning(pdb.object_ref(&()), "NoPods", format!("Failed to get pods: {e}"));
            return fail_safe(st, pdb, key, &e, now).await;
        }
    };
    if pods.is_empty() {
        st.events.normal(pdb.object_ref(&()), "NoPods", "No matching pods found");
    }
    let expected = match expected_pods(st, pdb, &pods).await {
        Ok(expected) => expected,
        Err(e) => {
            let message = e.message();
            st.events.warning(pdb.object_ref(&()), "CalculateExpectedPodCountFailed", format!("Failed to calculate the number of expected pods: {message}"));
            return fail_safe(st, pdb, key, &message, now).await;
        }
    };
    if !expected.unmanaged.is_empty() {
        debug!(pods = ?expected.unmanaged, "unmanaged pods selected");
        let selector = selector_of(pdb).map(|s| s.to_string()).unwrap_or_default();
        st.events.warning(
            pdb.object_ref(&()),
            "UnmanagedPods",
            format!(
                "Pods selected by this PodDisruptionBudget (selector: {selector}) were found to be unmanaged. As a result, the status of the PDB cannot be calculated correctly, which may result in undefined behavior. To account for these pods please set \".spec.minAvailable\" field of the PDB to an integer value."
            ),
        );
    }
    let disruptions = recorded_disruptions(pdb, &pods, now);
    for pod in pods.iter().filter(|p| disruptions.expired.contains(&p.name_any())) {
        st.events.warning(pod.object_ref(&()), "NotDeleted", format!("Pod was expected by PDB {key} to be deleted but it wasn't"));
    }
    let healthy = count_healthy(&pods, &disruptions.held, now);
    let next = disruptions.recheck.map_or(RESYNC, |r| r.min(RESYNC));
    let Some(status) = status_for(pdb, healthy, &expected, disruptions.held, now) else { return Ok(Action::requeue(next)) };
    let allowed = status.disruptions_allowed;
    let written = write_status(st, pdb, status, key).await?;
    if let Some(retry) = written {
        return Ok(retry);
    }
    info!(healthy, desired = expected.desired_healthy, expected = expected.expected, allowed, "updated disruption budget status");
    Ok(Action::requeue(next))
}

/// Writes the fail-safe status (nothing allowed) and tries again later.
async fn fail_safe(st: &State, pdb: &PodDisruptionBudget, key: &str, message: &str, now: Timestamp) -> Result<Action, DisruptionError> {
    warn!(error = %message, "the budget's status cannot be computed; allowing no disruption");
    if let Some(status) = fail_safe_status(pdb, message, now) {
        if let Some(retry) = write_status(st, pdb, status, key).await? {
            return Ok(retry);
        }
    }
    Ok(Action::requeue(RETRY_FAILED))
}

/// Replaces the budget's status as of its resourceVersion; `Some` with when to sync
/// again if it could not be written (changed or deleted meanwhile).
async fn write_status(st: &State, pdb: &PodDisruptionBudget, status: PodDisruptionBudgetStatus, key: &str) -> Result<Option<Action>, DisruptionError> {
    let mut updated = pdb.clone();
    updated.status = Some(status);
    let api: Api<PodDisruptionBudget> = Api::namespaced(st.client.clone(), pdb.metadata.namespace.as_deref().unwrap_or_default());
    match api.replace_status(&pdb.name_any(), &PostParams::default(), &updated).await {
        Ok(_) => Ok(None),
        // An eviction (or a spec change) came first: sync from the newer budget.
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(Some(Action::requeue(RETRY_CONFLICT))),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(Some(Action::await_change())),
        Err(source) => Err(DisruptionError::WriteStatus { key: key.to_string(), source }),
    }
}

/// How long until a pod's True `DisruptionTarget` condition goes stale (zero when it
/// has): `None` when it has none that can (the pod is being deleted or finished, or
/// the kubelet set it).
pub fn stale_disruption_wait(pod: &Pod, now: Timestamp) -> Option<Duration> {
    if pod.metadata.deletion_timestamp.is_some() {
        return None;
    }
    let status = pod.status.as_ref()?;
    if matches!(status.phase.as_deref(), Some("Succeeded" | "Failed")) {
        return None;
    }
    let c = status.conditions.iter().flatten().find(|c| c.type_ == DISRUPTION_TARGET)?;
    if c.status != "True" || c.reason.as_deref() == Some("TerminationByKubelet") {
        return None;
    }
    let since = c.last_transition_time.as_ref().map_or(i64::MIN, millis);
    let timeout = i64::try_from(STALE_POD_DISRUPTION_TIMEOUT.as_millis()).unwrap_or(i64::MAX);
    let left = since.saturating_add(timeout).saturating_sub(now.as_millisecond());
    Some(Duration::from_millis(u64::try_from(left).unwrap_or(0)))
}

/// Sets a pod's stale `DisruptionTarget` condition to False: the disruption it announced
/// did not happen.
async fn clear_stale_disruption(pod: Arc<Pod>, st: Arc<State>) -> Result<Action, DisruptionError> {
    let now = Timestamp::now();
    match stale_disruption_wait(&pod, now) {
        None => return Ok(Action::await_change()),
        Some(left) if !left.is_zero() => return Ok(Action::requeue(left)),
        Some(_) => {}
    }
    let key = podcontrol::key_of(&pod.metadata);
    let api: Api<Pod> = Api::namespaced(st.client.clone(), pod.metadata.namespace.as_deref().unwrap_or_default());
    let patch = json!({"status": {"conditions": [{"type": DISRUPTION_TARGET, "status": "False", "lastTransitionTime": Time(now)}]}});
    match api.patch_status(&pod.name_any(), &PatchParams::default(), &Patch::Strategic(patch)).await {
        Ok(_) => {
            info!(pod = %key, "cleared a stale DisruptionTarget condition");
            Ok(Action::await_change())
        }
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(Action::await_change()),
        Err(source) => Err(DisruptionError::ClearStaleCondition { key, source }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn at(s: i64) -> Timestamp {
        Timestamp::from_second(s).unwrap_or(Timestamp::UNIX_EPOCH)
    }

    fn pdb(v: Value) -> PodDisruptionBudget {
        let mut base = json!({"metadata": {"name": "b", "namespace": "ns", "generation": 2}});
        if let (Some(b), Some(extra)) = (base.as_object_mut(), v.as_object()) {
            for (k, val) in extra {
                b.insert(k.clone(), val.clone());
            }
        }
        serde_json::from_value(base).unwrap_or_default()
    }

    fn pod(name: &str, labels: Value, ready: bool) -> Arc<Pod> {
        let status = if ready { "True" } else { "False" };
        Arc::new(
            serde_json::from_value(json!({
                "metadata": {"name": name, "namespace": "ns", "labels": labels},
                "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": status}]},
            }))
            .unwrap_or_default(),
        )
    }

    fn expected(expected: i32, desired_healthy: i32) -> Expected {
        Expected { expected, desired_healthy, unmanaged: vec![] }
    }

    #[test]
    fn percentages_round_up() {
        let p = |s: &str| IntOrString::String(s.into());
        assert_eq!(scaled_value(&p("50%"), 3).ok(), Some(2));
        assert_eq!(scaled_value(&p("10%"), 10).ok(), Some(1));
        assert_eq!(scaled_value(&p("1%"), 10).ok(), Some(1));
        assert_eq!(scaled_value(&p("0%"), 10).ok(), Some(0));
        assert_eq!(scaled_value(&IntOrString::Int(4), 10).ok(), Some(4));
        assert!(scaled_value(&p("50"), 3).is_err());
        assert!(scaled_value(&p("x%"), 3).is_err());
    }

    #[test]
    fn budgets_say_how_many_must_stay_healthy() {
        let spec = |v: Value| -> PodDisruptionBudgetSpec { serde_json::from_value(v).unwrap_or_default() };
        let min2 = Budget::of(Some(&spec(json!({"minAvailable": 2}))));
        assert_eq!(min2, Budget::MinAvailable(2));
        assert!(!min2.counts_controllers());
        assert_eq!(min2.desired_healthy(3).ok(), Some(2));
        let half = Budget::of(Some(&spec(json!({"minAvailable": "50%"}))));
        assert!(half.counts_controllers());
        assert_eq!(half.desired_healthy(3).ok(), Some(2));
        let max_half = Budget::of(Some(&spec(json!({"maxUnavailable": "50%"}))));
        assert_eq!(max_half.desired_healthy(3).ok(), Some(1));
        let max1 = Budget::of(Some(&spec(json!({"maxUnavailable": 1}))));
        assert_eq!(max1.desired_healthy(3).ok(), Some(2));
        assert_eq!(max1.desired_healthy(0).ok(), Some(0), "never below zero");
        assert_eq!(Budget::of(Some(&spec(json!({})))), Budget::Unset);
        assert_eq!(Budget::of(None).desired_healthy(5).ok(), Some(0));
    }

    #[test]
    fn selectors_pick_pods_of_the_namespace() {
        let pods = vec![pod("a", json!({"app": "web", "tier": "fe"}), true), pod("b", json!({"app": "db"}), true)];
        let names = |b: &PodDisruptionBudget| selected_pods(b, &pods).unwrap_or_default().iter().map(|p| p.name_any()).collect::<Vec<_>>();
        assert_eq!(names(&pdb(json!({"spec": {"selector": {"matchLabels": {"app": "web"}}}}))), vec!["a"]);
        assert_eq!(names(&pdb(json!({"spec": {"selector": {}}}))), vec!["a", "b"], "{{}} selects every pod");
        assert!(names(&pdb(json!({"spec": {}}))).is_empty(), "no selector selects none");
        let exprs = json!({"spec": {"selector": {"matchExpressions": [
            {"key": "app", "operator": "In", "values": ["web", "db"]},
            {"key": "tier", "operator": "DoesNotExist"},
        ]}}});
        assert_eq!(names(&pdb(exprs)), vec!["b"]);
        let exprs = json!({"spec": {"selector": {"matchExpressions": [{"key": "app", "operator": "NotIn", "values": ["db"]}, {"key": "tier", "operator": "Exists"}]}}});
        assert_eq!(names(&pdb(exprs)), vec!["a"]);
        let mut other = pdb(json!({"spec": {"selector": {}}}));
        other.metadata.namespace = Some("other".into());
        assert!(names(&other).is_empty());
    }

    #[test]
    fn pod_changes_queue_budgets_that_select_it_before_or_after() {
        let budgets = vec![
            Arc::new(pdb(json!({"metadata": {"name": "web", "namespace": "ns"}, "spec": {"selector": {"matchLabels": {"app": "web"}}}}))),
            Arc::new(pdb(json!({"metadata": {"name": "db", "namespace": "ns"}, "spec": {"selector": {"matchLabels": {"app": "db"}}}}))),
        ];
        let web: BTreeMap<String, String> = [("app".to_string(), "web".to_string())].into();
        let db: BTreeMap<String, String> = [("app".to_string(), "db".to_string())].into();
        let names = |refs: Vec<ObjectRef<PodDisruptionBudget>>| refs.into_iter().map(|r| r.name).collect::<Vec<_>>();
        assert_eq!(names(budgets_selecting(&budgets, "ns", &[None, Some(&web)])), vec!["web"]);
        assert_eq!(names(budgets_selecting(&budgets, "ns", &[Some(&web), Some(&db)])), vec!["web", "db"]);
        assert!(budgets_selecting(&budgets, "other", &[Some(&web)]).is_empty());
    }

    #[test]
    fn healthy_pods_are_ready_and_not_going() {
        let mut going = (*pod("c", json!({}), true)).clone();
        going.metadata.deletion_timestamp = Some(Time(at(100)));
        let pods = vec![pod("a", json!({}), true), pod("b", json!({}), false), Arc::new(going)];
        assert_eq!(count_healthy(&pods, &BTreeMap::new(), at(100)), 1);
        let held: BTreeMap<String, Time> = [("a".to_string(), Time(at(90)))].into();
        assert_eq!(count_healthy(&pods, &held, at(100)), 0, "a disrupted pod is not healthy");
    }

    #[test]
    fn recorded_disruptions_hold_until_the_pod_goes_or_two_minutes_pass() {
        let mut going = (*pod("going", json!({}), true)).clone();
        going.metadata.deletion_timestamp = Some(Time(at(1000)));
        let pods = vec![pod("recent", json!({}), true), pod("old", json!({}), true), Arc::new(going)];
        let budget = pdb(json!({"status": {"disruptionsAllowed": 0, "currentHealthy": 0, "desiredHealthy": 0, "expectedPods": 0, "disruptedPods": {
            "recent": "1970-01-01T00:16:00Z", "old": "1970-01-01T00:10:00Z", "going": "1970-01-01T00:16:00Z", "gone": "1970-01-01T00:16:00Z",
        }}}));
        let d = recorded_disruptions(&budget, &pods, at(1000));
        assert_eq!(d.held.keys().collect::<Vec<_>>(), vec!["recent"]);
        assert_eq!(d.expired, vec!["old"]);
        assert_eq!(d.recheck, Some(Duration::from_secs(80)));
    }

    #[test]
    fn status_allows_healthy_pods_over_the_budget() {
        let budget = pdb(json!({"spec": {"minAvailable": 2}}));
        let status = status_for(&budget, 3, &expected(3, 2), BTreeMap::new(), at(50));
        let v = serde_json::to_value(&status).unwrap_or_default();
        assert_eq!(v["disruptionsAllowed"], 1);
        assert_eq!(v["currentHealthy"], 3);
        assert_eq!(v["desiredHealthy"], 2);
        assert_eq!(v["expectedPods"], 3);
        assert_eq!(v["observedGeneration"], 2);
        assert!(v.get("disruptedPods").is_none());
        assert_eq!(v["conditions"][0]["type"], "DisruptionAllowed");
        assert_eq!(v["conditions"][0]["status"], "True");
        assert_eq!(v["conditions"][0]["reason"], "SufficientPods");
        assert_eq!(v["conditions"][0]["message"], "");
        assert_eq!(v["conditions"][0]["observedGeneration"], 2);

        // Written once: the same again is no change.
        let mut synced = budget.clone();
        synced.status = status;
        assert!(status_for(&synced, 3, &expected(3, 2), BTreeMap::new(), at(60)).is_none());

        // One pod less: nothing allowed, and the condition flips with a new time.
        let flipped = status_for(&synced, 2, &expected(3, 2), BTreeMap::new(), at(70));
        let v = serde_json::to_value(&flipped).unwrap_or_default();
        assert_eq!(v["disruptionsAllowed"], 0);
        assert_eq!(v["conditions"][0]["status"], "False");
        assert_eq!(v["conditions"][0]["reason"], "InsufficientPods");
        assert_eq!(v["conditions"][0]["lastTransitionTime"], "1970-01-01T00:01:10Z");
        let mut synced2 = synced.clone();
        synced2.status = flipped;
        // A count change that keeps the status False keeps its transition time.
        let v = serde_json::to_value(status_for(&synced2, 1, &expected(3, 2), BTreeMap::new(), at(90))).unwrap_or_default();
        assert_eq!(v["conditions"][0]["lastTransitionTime"], "1970-01-01T00:01:10Z");
    }

    #[test]
    fn nothing_expected_allows_nothing() {
        let budget = pdb(json!({"spec": {"maxUnavailable": 1}}));
        let v = serde_json::to_value(status_for(&budget, 3, &expected(0, 0), BTreeMap::new(), at(50))).unwrap_or_default();
        assert_eq!(v["disruptionsAllowed"], 0);
        assert_eq!(v["currentHealthy"], 3);
        assert_eq!(v["conditions"][0]["reason"], "InsufficientPods");
    }

    #[test]
    fn a_failed_count_allows_nothing_and_says_why() {
        let budget = pdb(json!({"status": {"disruptionsAllowed": 2, "currentHealthy": 3, "desiredHealthy": 1, "expectedPods": 3, "observedGeneration": 1}}));
        let status = fail_safe_status(&budget, "jobs.batch does not implement the scale subresource", at(5));
        let v = serde_json::to_value(&status).unwrap_or_default();
        assert_eq!(v["disruptionsAllowed"], 0);
        assert_eq!(v["currentHealthy"], 3);
        assert_eq!(v["conditions"][0]["reason"], "SyncFailed");
        assert_eq!(v["conditions"][0]["status"], "False");
        assert_eq!(v["conditions"][0]["message"], "jobs.batch does not implement the scale subresource");
        let mut failed = budget.clone();
        failed.status = status;
        assert!(fail_safe_status(&failed, "jobs.batch does not implement the scale subresource", at(9)).is_none());
        // A later successful sync replaces the SyncFailed condition.
        let recovered = status_for(&failed, 3, &expected(3, 1), BTreeMap::new(), at(10));
        let v = serde_json::to_value(recovered).unwrap_or_default();
        assert_eq!(v["conditions"][0]["reason"], "SufficientPods");
    }

    #[test]
    fn stale_disruption_targets_wait_two_minutes() {
        let with = |status: &str, reason: &str, phase: &str| -> Pod {
            serde_json::from_value(json!({
                "metadata": {"name": "p", "namespace": "ns"},
                "status": {"phase": phase, "conditions": [{"type": "DisruptionTarget", "status": status, "reason": reason, "lastTransitionTime": "1970-01-01T00:01:40Z"}]},
            }))
            .unwrap_or_default()
        };
        assert_eq!(stale_disruption_wait(&with("True", "EvictionByEvictionAPI", "Running"), at(130)), Some(Duration::from_secs(90)));
        assert_eq!(stale_disruption_wait(&with("True", "EvictionByEvictionAPI", "Running"), at(400)), Some(Duration::ZERO));
        assert_eq!(stale_disruption_wait(&with("False", "EvictionByEvictionAPI", "Running"), at(400)), None);
        assert_eq!(stale_disruption_wait(&with("True", "TerminationByKubelet", "Running"), at(400)), None);
        assert_eq!(stale_disruption_wait(&with("True", "EvictionByEvictionAPI", "Failed"), at(400)), None);
        let mut going = with("True", "EvictionByEvictionAPI", "Running");
        going.metadata.deletion_timestamp = Some(Time(at(300)));
        assert_eq!(stale_disruption_wait(&going, at(400)), None);
    }
}
