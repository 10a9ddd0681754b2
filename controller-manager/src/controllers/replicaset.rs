//! The ReplicaSet and ReplicationController controllers (one implementation, two kinds,
//! as Kubernetes' `replication` controller wraps `replicaset`): keep `spec.replicas`
//! active pods matching the selector — create from the template in slow-start batches,
//! delete the pods ranked first, adopt matching orphans, release pods that stop
//! matching — and report replicas, fullyLabeled, ready and available counts.

use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;

use apimachinery::labels::Selector;
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec, ReplicationController};
use k8s_openapi::jiff::Timestamp;
use k8s_openapi::NamespaceResourceScope;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::controller::{self, Action};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::json;
use futures::channel::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, info_span, warn, Instrument};

use component_base::events::EventSink;

use super::podcontrol::{self, Claimer, Expectations, PodControlError, BURST_REPLICAS};
use super::{Context, ControllerError};

/// Why a ReplicaSet/ReplicationController sync failed.
#[derive(Debug, thiserror::Error)]
pub enum ReplicaSetError {
    #[error("invalid selector of {key}: {reason}")]
    InvalidSelector { key: String, reason: String },
    #[error("claiming pods of {key}")]
    Claim {
        key: String,
        #[source]
        source: PodControlError,
    },
    #[error("creating pods for {key}")]
    CreatePods {
        key: String,
        #[source]
        source: kube::Error,
    },
    #[error("deleting pods of {key}")]
    DeletePods {
        key: String,
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

/// What the controller reads from either kind.
pub struct SpecView {
    pub replicas: i32,
    pub min_ready_seconds: i32,
    pub selector: Selector,
    pub template: Option<PodTemplateSpec>,
}

/// The status the controller last wrote.
#[derive(Debug, Default, PartialEq, Eq, Clone)]
pub struct StatusView {
    pub replicas: i32,
    pub fully_labeled_replicas: i32,
    pub ready_replicas: i32,
    pub available_replicas: i32,
    pub observed_generation: i64,
}

/// A kind that keeps a number of pod replicas: ReplicaSet or ReplicationController.
pub trait Replicated:
    Resource<DynamicType = (), Scope = NamespaceResourceScope> + Clone + DeserializeOwned + Serialize + Debug + Send + Sync + 'static
{
    /// The name on `--controllers`.
    const CONTROLLER: &'static str;
    /// The name its events carry (`kubectl describe`'s From column).
    const COMPONENT: &'static str;
    fn spec_view(&self) -> Result<SpecView, String>;
    fn status_view(&self) -> StatusView;
}

impl Replicated for ReplicaSet {
    const CONTROLLER: &'static str = "replicaset";
    const COMPONENT: &'static str = "replicaset-controller";

    fn spec_view(&self) -> Result<SpecView, String> {
        let spec = self.spec.as_ref().ok_or("no spec")?;
        Ok(SpecView {
            replicas: spec.replicas.unwrap_or(1),
            min_ready_seconds: spec.min_ready_seconds.unwrap_or(0),
            selector: super::selector_of(&spec.selector)?,
            template: spec.template.clone(),
        })
    }

    fn status_view(&self) -> StatusView {
        let s = self.status.clone().unwrap_or_default();
        StatusView {
            replicas: s.replicas,
            fully_labeled_replicas: s.fully_labeled_replicas.unwrap_or(0),
            ready_replicas: s.ready_replicas.unwrap_or(0),
            available_replicas: s.available_replicas.unwrap_or(0),
            observed_generation: s.observed_generation.unwrap_or(0),
        }
    }
}

impl Replicated for ReplicationController {
    const CONTROLLER: &'static str = "replicationcontroller";
    const COMPONENT: &'static str = "replication-controller";

    fn spec_view(&self) -> Result<SpecView, String> {
        let spec = self.spec.as_ref().ok_or("no spec")?;
        let selector = match &spec.selector {
            // An RC without a selector selects its template's labels (defaulted by the
            // apiserver); an empty map would select everything, which Kubernetes refuses.
            Some(m) if !m.is_empty() => Selector::from_map(m).map_err(|e| e.to_string())?,
            _ => Selector::nothing(),
        };
        Ok(SpecView {
            replicas: spec.replicas.unwrap_or(1),
            min_ready_seconds: spec.min_ready_seconds.unwrap_or(0),
            selector,
            template: spec.template.clone(),
        })
    }

    fn status_view(&self) -> StatusView {
        let s = self.status.clone().unwrap_or_default();
        StatusView {
            replicas: s.replicas,
            fully_labeled_replicas: s.fully_labeled_replicas.unwrap_or(0),
            ready_replicas: s.ready_replicas.unwrap_or(0),
            available_replicas: s.available_replicas.unwrap_or(0),
            observed_generation: s.observed_generation.unwrap_or(0),
        }
    }
}

/// Starts the ReplicaSet controller.
pub fn start_replicaset(ctx: Context, shutdown: CancellationToken) -> BoxFuture<'static, Result<(), ControllerError>> {
    run::<ReplicaSet>(ctx, shutdown).boxed()
}

/// Starts the ReplicationController controller.
pub fn start_replicationcontroller(ctx: Context, shutdown: CancellationToken) -> BoxFuture<'static, Result<(), ControllerError>> {
    run::<ReplicationController>(ctx, shutdown).boxed()
}

struct State<K: Replicated> {
    kind: std::marker::PhantomData<K>,
    client: kube::Client,
    pods: Store<Pod>,
    expectations: Arc<Expectations>,
    events: EventSink,
}

/// Runs the controller for kind `K` until `shutdown`.
async fn run<K: Replicated>(ctx: Context, shutdown: CancellationToken) -> Result<(), ControllerError> {
    let client = ctx.client.clone();
    let events = ctx.events(K::COMPONENT);
    let expectations = Arc::new(Expectations::default());
    let (owner_reader, owner_writer) = reflector::store::<K>();
    let (pod_reader, pod_writer) = reflector::store::<Pod>();
    let (tx, rx) = mpsc::unbounded::<ObjectRef<K>>();

    // Pods: keep the store, observe expectations, and enqueue the owners they concern.
    let pod_stream = reflector::reflector(pod_writer, watcher(Api::<Pod>::all(client.clone()), watcher::Config::default()).default_backoff());
    tokio::spawn(watch_pods::<K>(pod_stream, owner_reader.clone(), expectations.clone(), tx, shutdown.clone()));

    let owner_stream = reflector::reflector(owner_writer, watcher(Api::<K>::all(client.clone()), watcher::Config::default()).default_backoff());
    let exp = expectations.clone();
    let owner_refs = owner_stream.filter_map(move |ev| {
        let out = match ev {
            Ok(watcher::Event::Apply(o) | watcher::Event::InitApply(o)) => Some(Ok(ObjectRef::from_obj(&o))),
            Ok(watcher::Event::Delete(o)) => {
                exp.forget(&podcontrol::key_of(o.meta()));
                None
            }
            Ok(_) => None,
            Err(e) => Some(Err(e)),
        };
        futures::future::ready(out)
    });
    let pod_refs = rx.map(Ok::<_, watcher::Error>);
    let queue = futures::stream::select(owner_refs, pod_refs);

    // Act only once the pods are known, or a first sync would create them all again.
    tokio::select! {
        _ = shutdown.cancelled() => return Ok(()),
        r = pod_reader.wait_until_ready() => r.map_err(|e| ControllerError::Config(e.to_string()))?,
    }
    let state = Arc::new(State::<K> { kind: std::marker::PhantomData, client, pods: pod_reader, expectations, events });
    let applier = controller::applier(
        |obj, st| Box::pin(reconcile::<K>(obj, st)),
        |obj: Arc<K>, err: &ReplicaSetError, _| {
            warn!(controller = K::CONTROLLER, object = %podcontrol::key_of(obj.meta()), error = %err, "sync failed");
            Action::requeue(Duration::from_millis(500))
        },
        state,
        owner_reader,
        queue,
        controller::Config::default(),
    );
    super::drive(K::CONTROLLER, applier, &shutdown).await
}

/// Consumes the pod watch: records creations and deletions against expectations and
/// enqueues the pod's controller (old and new, when it changed) or, for an orphan, every
/// owner whose selector matches it.
async fn watch_pods<K: Replicated>(
    stream: impl futures::Stream<Item = Result<watcher::Event<Pod>, watcher::Error>>,
    owners: Store<K>,
    expectations: Arc<Expectations>,
    tx: mpsc::UnboundedSender<ObjectRef<K>>,
    shutdown: CancellationToken,
) {
    let kind = K::kind(&());
    // uid → (namespace, controller name of kind K) as last seen.
    let mut last_owner: HashMap<String, Option<String>> = HashMap::new();
    let mut stream = std::pin::pin!(stream);
    let owner_of = |pod: &Pod| podcontrol::controller_of(&pod.metadata).filter(|r| r.kind == kind).map(|r| r.name.clone());
    loop {
        let ev = tokio::select! {
            _ = shutdown.cancelled() => return,
            ev = stream.next() => ev,
        };
        let (pod, deleted) = match ev {
            None => return,
            Some(Err(e)) => {
                debug!(error = %e, "pod watch");
                continue;
            }
            Some(Ok(watcher::Event::Apply(p) | watcher::Event::InitApply(p))) => (p, false),
            Some(Ok(watcher::Event::Delete(p))) => (p, true),
            Some(Ok(_)) => continue,
        };
        let ns = pod.metadata.namespace.clone().unwrap_or_default();
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let owner = owner_of(&pod);
        let previous = if deleted { last_owner.remove(&uid) } else { last_owner.insert(uid.clone(), owner.clone()) };
        if let Some(name) = &owner {
            let key = format!("{ns}/{name}");
            // A pod first seen in a re-list (after a watch gap) is a creation seen too.
            if previous.is_none() && !deleted {
                expectations.creation_observed(&key);
            }
            if deleted || pod.metadata.deletion_timestamp.is_some() {
                expectations.deletion_observed(&key, &uid);
            }
        }
        let mut targets: Vec<String> = owner.iter().cloned().collect();
        if let Some(Some(prev)) = &previous {
            if Some(prev) != owner.as_ref() {
                targets.push(prev.clone());
            }
        }
        if owner.is_none() && !deleted {
            let labels = pod.metadata.labels.clone().unwrap_or_default();
            for o in owners.state() {
                if o.meta().namespace.as_deref() == Some(ns.as_str()) && o.spec_view().is_ok_and(|v| v.selector.matches(&labels)) {
                    targets.push(o.name_any());
                }
            }
        }
        for name in targets {
            let _ = tx.unbounded_send(ObjectRef::new(&name).within(&ns));
        }
    }
}

async fn reconcile<K: Replicated>(obj: Arc<K>, st: Arc<State<K>>) -> Result<Action, ReplicaSetError> {
    let key = podcontrol::key_of(obj.meta());
    let span = info_span!("sync", controller = K::CONTROLLER, object = %key);
    sync::<K>(obj, st, key).instrument(span).await
}

async fn sync<K: Replicated>(obj: Arc<K>, st: Arc<State<K>>, key: String) -> Result<Action, ReplicaSetError> {
    let ns = obj.meta().namespace.clone().unwrap_or_default();
    let view = obj.spec_view().map_err(|reason| ReplicaSetError::InvalidSelector { key: key.clone(), reason })?;
    let candidates: Vec<Arc<Pod>> = st
        .pods
        .state()
        .into_iter()
        .filter(|p| p.metadata.namespace.as_deref() == Some(ns.as_str()) && podcontrol::is_active(p))
        .collect();
    let present: std::collections::HashSet<&str> = candidates.iter().filter_map(|p| p.metadata.uid.as_deref()).collect();
    st.expectations.observe_gone(&key, |uid| present.contains(uid));
    let satisfied = st.expectations.satisfied(&key);
    let client = st.client.clone();
    let claimer = Claimer { owner: &*obj, selector: &view.selector };
    let pods = podcontrol::claim(|ns| Api::<Pod>::namespaced(client.clone(), ns), &claimer, candidates)
        .await
        .map_err(|source| ReplicaSetError::Claim { key: key.clone(), source })?;

    let manage = if satisfied && obj.meta().deletion_timestamp.is_none() {
        manage_replicas(&*obj, &view, &pods, &st, &key).await
    } else {
        Ok(())
    };

    // Status from the pods as they were before this sync's creations and deletions.
    let now = Timestamp::now();
    let template_labels = view.template.as_ref().and_then(|t| t.metadata.as_ref()).and_then(|m| m.labels.clone()).unwrap_or_default();
    let status = StatusView {
        replicas: count(pods.len()),
        fully_labeled_replicas: count(
            pods.iter()
                .filter(|p| {
                    let l = p.metadata.labels.clone().unwrap_or_default();
                    template_labels.iter().all(|(k, v)| l.get(k) == Some(v))
                })
                .count(),
        ),
        ready_replicas: count(pods.iter().filter(|p| podcontrol::is_ready(p)).count()),
        available_replicas: count(pods.iter().filter(|p| podcontrol::is_available(p, view.min_ready_seconds, now)).count()),
        observed_generation: obj.meta().generation.unwrap_or(0),
    };
    if status != obj.status_view() {
        let api = Api::<K>::namespaced(st.client.clone(), &ns);
        let patch = json!({"status": {
            "replicas": status.replicas,
            "fullyLabeledReplicas": status.fully_labeled_replicas,
            "readyReplicas": status.ready_replicas,
            "availableReplicas": status.available_replicas,
            "observedGeneration": status.observed_generation,
        }});
        match api.patch_status(&obj.name_any(), &PatchParams::default(), &Patch::Merge(&patch)).await {
            Ok(_) => debug!(replicas = status.replicas, ready = status.ready_replicas, available = status.available_replicas, "status updated"),
            Err(kube::Error::Api(s)) if s.code == 404 => return Ok(Action::await_change()),
            Err(source) => return Err(ReplicaSetError::UpdateStatus { key, source }),
        }
    }
    manage?;
    // Come back when ready pods have been ready for minReadySeconds.
    if view.min_ready_seconds > 0 && status.ready_replicas != status.available_replicas {
        return Ok(Action::requeue(Duration::from_secs(u64::try_from(view.min_ready_seconds).unwrap_or(1))));
    }
    Ok(Action::await_change())
}

fn count(n: usize) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

/// Creates or deletes pods so that `replicas` remain (`manageReplicas`).
async fn manage_replicas<K: Replicated>(obj: &K, view: &SpecView, pods: &[Arc<Pod>], st: &State<K>, key: &str) -> Result<(), ReplicaSetError> {
    let ns = obj.meta().namespace.clone().unwrap_or_default();
    let api = Api::<Pod>::namespaced(st.client.clone(), &ns);
    let want = usize::try_from(view.replicas.max(0)).unwrap_or(0);
    if pods.len() < want {
        let Some(template) = &view.template else { return Ok(()) };
        let diff = (want - pods.len()).min(BURST_REPLICAS);
        st.expectations.expect_creations(key, diff);
        info!(creating = diff, have = pods.len(), want, "too few replicas");
        let pod = podcontrol::pod_from_template(template, &obj.name_any(), &ns, podcontrol::controller_reference(obj));
        // Slow start: batches of 1, 2, 4, … stop at the first batch with a failure, so a
        // quota or admission error costs one request, not `diff`.
        let mut created = 0usize;
        let mut batch = 1usize;
        let mut failure = None;
        while created < diff {
            let n = batch.min(diff - created);
            let pp = PostParams::default();
            let results = futures::future::join_all((0..n).map(|_| api.create(&pp, &pod))).await;
            for r in &results {
                match r {
                    Ok(p) => {
                        created += 1;
                        st.events.normal(obj.object_ref(&()), "SuccessfulCreate", format!("Created pod: {}", p.name_any()));
                    }
                    Err(e) => st.events.warning(obj.object_ref(&()), "FailedCreate", format!("Error creating: {}", super::api_error_message(e))),
                }
            }
            if let Some(Err(e)) = results.into_iter().find(Result::is_err) {
                failure = Some(e);
                break;
            }
            batch *= 2;
        }
        for _ in created..diff {
            st.expectations.creation_observed(key);
        }
        if let Some(source) = failure {
            return Err(ReplicaSetError::CreatePods { key: key.to_string(), source });
        }
    } else if pods.len() > want {
        let diff = (pods.len() - want).min(BURST_REPLICAS);
        let mut ranked: Vec<&Arc<Pod>> = pods.iter().collect();
        ranked.sort_by(|a, b| podcontrol::deletion_order(a, b));
        let victims: Vec<&Arc<Pod>> = ranked.into_iter().take(diff).collect();
        st.expectations.expect_deletions(key, victims.iter().map(|p| p.metadata.uid.clone().unwrap_or_default()));
        info!(deleting = diff, have = pods.len(), want, "too many replicas");
        let failure = podcontrol::delete_pods(&api, &victims, &st.expectations, key, &st.events, &obj.object_ref(&())).await;
        if let Some(source) = failure {
            return Err(ReplicaSetError::DeletePods { key: key.to_string(), source });
        }
    }
    Ok(())
}
