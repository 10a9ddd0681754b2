//! The StatefulSet controller: pods with stable identities `<set>-<ordinal>` (labels
//! `statefulset.kubernetes.io/pod-name` and `apps.kubernetes.io/pod-index`, hostname and
//! the serviceName as subdomain), each with its own PersistentVolumeClaims
//! `<claim>-<set>-<ordinal>` made from volumeClaimTemplates before the pod, and kept on
//! scale-down unless `persistentVolumeClaimRetentionPolicy` says Delete. OrderedReady
//! creates in ordinal order, each pod waiting for the previous to be Running and Ready,
//! and removes in reverse; Parallel does all at once. Templates are ControllerRevisions;
//! RollingUpdate replaces pods from the highest ordinal down to `partition`, one at a
//! time; OnDelete waits for the user.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use apimachinery::labels::Selector;
use futures::channel::mpsc;
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use k8s_openapi::api::apps::v1::{ControllerRevision, StatefulSet};
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, PersistentVolumeClaimVolumeSource, Pod, PodTemplateSpec, Volume};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{self, Action};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Resource, ResourceExt};
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, info_span, warn, Instrument};

use super::history::{self, HistoryError, CONTROLLER_REVISION_HASH};
use super::podcontrol::{self, Claimer, PodControlError};
use super::{Context, ControllerError};

/// The label with the pod's name, for per-pod Services.
pub const POD_NAME_LABEL: &str = "statefulset.kubernetes.io/pod-name";
/// The label with the pod's ordinal.
pub const POD_INDEX_LABEL: &str = "apps.kubernetes.io/pod-index";

/// Why a StatefulSet sync failed.
#[derive(Debug, thiserror::Error)]
pub enum StatefulSetError {
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
    #[error("creating claim {claim} for {key}")]
    CreateClaim {
        key: String,
        claim: String,
        #[source]
        source: kube::Error,
    },
    #[error("deleting claim {claim} of {key}")]
    DeleteClaim {
        key: String,
        claim: String,
        #[source]
        source: kube::Error,
    },
    #[error("creating pod {pod} of {key}")]
    CreatePod {
        key: String,
        pod: String,
        #[source]
        source: kube::Error,
    },
    #[error("restoring the identity of pod {pod} of {key}")]
    RepairPod {
        key: String,
        pod: String,
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

/// Starts the StatefulSet controller.
pub fn start(ctx: Context, shutdown: CancellationToken) -> BoxFuture<'static, Result<(), ControllerError>> {
    run(ctx, shutdown).boxed()
}

struct State {
    client: kube::Client,
    pods: Store<Pod>,
    claims: Store<PersistentVolumeClaim>,
    events: component_base::events::EventSink,
}

async fn run(ctx: Context, shutdown: CancellationToken) -> Result<(), ControllerError> {
    let client = ctx.client.clone();
    let (sts_reader, sts_writer) = reflector::store::<StatefulSet>();
    let (pod_reader, pod_writer) = reflector::store::<Pod>();
    let (tx, rx) = mpsc::unbounded::<ObjectRef<StatefulSet>>();

    // Pods: enqueue their StatefulSet, or for an orphan every one selecting it.
    let pod_stream = reflector::reflector(pod_writer, watcher(Api::<Pod>::all(client.clone()), watcher::Config::default()).default_backoff());
    let (sets, token) = (sts_reader.clone(), shutdown.clone());
    tokio::spawn(async move {
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
            match podcontrol::controller_of(&pod.metadata) {
                Some(r) if r.kind == "StatefulSet" => {
                    let _ = tx.unbounded_send(ObjectRef::new(&r.name).within(&ns));
                }
                Some(_) => {}
                None if !deleted => {
                    let labels = pod.labels().clone();
                    for set in sets.state() {
                        if set.namespace().as_deref() == Some(ns.as_str()) && selector_of(&set).is_ok_and(|s| s.matches(&labels)) {
                            let _ = tx.unbounded_send(ObjectRef::from_obj(&*set));
                        }
                    }
                }
                None => {}
            }
        }
    });

    // Claims: kept to notice a pod whose claim went missing.
    let (claim_reader, claim_writer) = reflector::store::<PersistentVolumeClaim>();
    let claim_stream = reflector::reflector(claim_writer, watcher(Api::<PersistentVolumeClaim>::all(client.clone()), watcher::Config::default()).default_backoff());
    let token = shutdown.clone();
    tokio::spawn(async move {
        let mut s = std::pin::pin!(claim_stream);
        loop {
            tokio::select! {
                _ = token.cancelled() => return,
                ev = s.next() => if ev.is_none() { return },
            }
        }
    });

    let sts_stream = reflector::reflector(sts_writer, watcher(Api::<StatefulSet>::all(client.clone()), watcher::Config::default()).default_backoff());
    let sts_refs = sts_stream.applied_objects().map(|r| r.map(|s| ObjectRef::from_obj(&s)));
    let queue = futures::stream::select(sts_refs, rx.map(Ok::<_, watcher::Error>));

    tokio::select! {
        _ = shutdown.cancelled() => return Ok(()),
        r = async { pod_reader.wait_until_ready().await?; claim_reader.wait_until_ready().await } => {
            r.map_err(|e| ControllerError::Config(e.to_string()))?;
        }
    }
    let state = Arc::new(State { client, pods: pod_reader, claims: claim_reader, events: ctx.events("statefulset-controller") });
    let applier = controller::applier(
        |set, st| Box::pin(reconcile(set, st)),
        |set: Arc<StatefulSet>, err: &StatefulSetError, _| {
            warn!(statefulset = %podcontrol::key_of(&set.metadata), error = %err, "sync failed");
            Action::requeue(Duration::from_millis(500))
        },
        state,
        sts_reader,
        queue,
        controller::Config::default(),
    );
    super::drive("statefulset", applier, &shutdown).await
}

// ---------------------------------------------------------------------------------------
// Identity and storage: pure helpers.

fn selector_of(set: &StatefulSet) -> Result<Selector, String> {
    let spec = set.spec.as_ref().ok_or("no spec")?;
    super::selector_of(&spec.selector)
}

/// The ordinal in a pod's name `<set>-<ordinal>`, if the pod is named for this set.
pub fn ordinal_of(set_name: &str, pod_name: &str) -> Option<i32> {
    let rest = pod_name.strip_prefix(set_name)?.strip_prefix('-')?;
    if rest.is_empty() || (rest.len() > 1 && rest.starts_with('0')) || !rest.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    rest.parse().ok()
}

/// The name of the claim from template `claim` for ordinal `ordinal`.
pub fn claim_name(claim: &str, set: &str, ordinal: i32) -> String {
    format!("{claim}-{set}-{ordinal}")
}

/// The claims the pod with `ordinal` needs, as the set's volumeClaimTemplates say.
fn claims_for(set: &StatefulSet, ordinal: i32) -> Vec<PersistentVolumeClaim> {
    let Some(spec) = set.spec.as_ref() else { return Vec::new() };
    let name = set.name_any();
    let selector_labels = spec.selector.match_labels.clone().unwrap_or_default();
    let delete_with_set = spec.persistent_volume_claim_retention_policy.as_ref().and_then(|p| p.when_deleted.as_deref()) == Some("Delete");
    spec.volume_claim_templates
        .iter()
        .flatten()
        .map(|t| {
            let mut labels = t.metadata.labels.clone().unwrap_or_default();
            labels.extend(selector_labels.clone());
            PersistentVolumeClaim {
                metadata: ObjectMeta {
                    name: Some(claim_name(&t.name_any(), &name, ordinal)),
                    namespace: set.namespace(),
                    labels: Some(labels),
                    annotations: t.metadata.annotations.clone(),
                    owner_references: delete_with_set.then(|| {
                        let mut r = podcontrol::controller_reference(set);
                        r.controller = None;
                        vec![r]
                    }),
                    ..Default::default()
                },
                spec: t.spec.clone(),
                status: None,
            }
        })
        .collect()
}

/// The pod for `ordinal` from `template`, labelled with `revision` (`newStatefulSetPod`).
fn stateful_pod(set: &StatefulSet, template: &PodTemplateSpec, revision: &str, ordinal: i32) -> Pod {
    let name = set.name_any();
    let ns = set.namespace().unwrap_or_default();
    let mut pod = podcontrol::pod_from_template(template, &name, &ns, podcontrol::controller_reference(set));
    let pod_name = format!("{name}-{ordinal}");
    pod.metadata.generate_name = None;
    pod.metadata.name = Some(pod_name.clone());
    let labels = pod.metadata.labels.get_or_insert_with(BTreeMap::new);
    labels.insert(POD_NAME_LABEL.into(), pod_name.clone());
    labels.insert(POD_INDEX_LABEL.into(), ordinal.to_string());
    labels.insert(CONTROLLER_REVISION_HASH.into(), revision.into());
    let spec = pod.spec.get_or_insert_with(Default::default);
    spec.hostname = Some(pod_name);
    if let Some(service) = set.spec.as_ref().and_then(|s| s.service_name.clone()).filter(|s| !s.is_empty()) {
        spec.subdomain = Some(service);
    }
    // Each claim template becomes the pod's volume of that name (`updateStorage`).
    let claims = set.spec.as_ref().and_then(|s| s.volume_claim_templates.clone()).unwrap_or_default();
    if !claims.is_empty() {
        let volumes = spec.volumes.get_or_insert_with(Vec::new);
        for t in &claims {
            let vname = t.name_any();
            volumes.retain(|v| v.name != vname);
            volumes.push(Volume {
                name: vname.clone(),
                persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource { claim_name: claim_name(&vname, &name, ordinal), read_only: None }),
                ..Default::default()
            });
        }
    }
    pod
}

fn revision_of(pod: &Pod) -> Option<&str> {
    pod.metadata.labels.as_ref()?.get(CONTROLLER_REVISION_HASH).map(String::as_str)
}

fn is_running_and_ready(pod: &Pod) -> bool {
    pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running") && podcontrol::is_ready(pod)
}

fn is_finished(pod: &Pod) -> bool {
    matches!(pod.status.as_ref().and_then(|s| s.phase.as_deref()), Some("Failed" | "Succeeded"))
}

fn is_terminating(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_some()
}

// ---------------------------------------------------------------------------------------
// Sync.

async fn reconcile(set: Arc<StatefulSet>, st: Arc<State>) -> Result<Action, StatefulSetError> {
    let key = podcontrol::key_of(&set.metadata);
    let span = info_span!("sync", controller = "statefulset", statefulset = %key);
    Sync { st: &st, set: &set, key }.run().instrument(span).await
}

struct Sync<'a> {
    st: &'a State,
    set: &'a StatefulSet,
    key: String,
}

impl Sync<'_> {
    fn pods_api(&self) -> Api<Pod> {
        Api::namespaced(self.st.client.clone(), &self.set.namespace().unwrap_or_default())
    }

    fn claims_api(&self) -> Api<PersistentVolumeClaim> {
        Api::namespaced(self.st.client.clone(), &self.set.namespace().unwrap_or_default())
    }

    async fn run(self) -> Result<Action, StatefulSetError> {
        let set = self.set;
        let key = self.key.clone();
        let ns = set.namespace().unwrap_or_default();
        let Some(spec) = set.spec.as_ref() else { return Ok(Action::await_change()) };
        let selector = selector_of(set).map_err(|reason| StatefulSetError::InvalidSelector { key: key.clone(), reason })?;
        let candidates: Vec<Arc<Pod>> = self.st.pods.state().into_iter().filter(|p| p.metadata.namespace.as_deref() == Some(ns.as_str())).collect();
        let claimer = Claimer { owner: set, selector: &selector };
        let client = self.st.client.clone();
        let pods = podcontrol::claim(|ns| Api::<Pod>::namespaced(client.clone(), ns), &claimer, candidates)
            .await
            .map_err(|source| StatefulSetError::Claim { key: key.clone(), source })?;

        // History: the update revision is the current template's; the current revision is
        // the one the status names, while it still exists.
        let history_err = |source| StatefulSetError::History { key: key.clone(), source };
        let revisions = history::owned_revisions(&self.st.client, set, &selector).await.map_err(history_err)?;
        let status = set.status.clone().unwrap_or_default();
        let update = match history::ensure_revision(&self.st.client, set, &spec.template, status.collision_count, &revisions).await {
            Ok(r) => r,
            Err(HistoryError::Collision { name }) => {
                warn!(revision = %name, "hash collision, bumping collisionCount");
                let patch = json!({"status": {"collisionCount": status.collision_count.unwrap_or(0) + 1}});
                Api::<StatefulSet>::namespaced(self.st.client.clone(), &ns)
                    .patch_status(&set.name_any(), &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                    .map_err(|source| StatefulSetError::UpdateStatus { key: key.clone(), source })?;
                return Ok(Action::requeue(Duration::from_millis(100)));
            }
            Err(e) => return Err(history_err(e)),
        };
        let update_name = update.name_any();
        let current: ControllerRevision = status
            .current_revision
            .as_deref()
            .and_then(|c| revisions.iter().find(|r| r.name_any() == c))
            .cloned()
            .unwrap_or_else(|| update.clone());
        let current_name = current.name_any();
        let current_template = history::template_of(&current).unwrap_or_else(|| spec.template.clone());

        // Slots [start, start+replicas) and the condemned rest, highest ordinal first.
        let name = set.name_any();
        let replicas = spec.replicas.unwrap_or(1).max(0);
        let start = spec.ordinals.as_ref().and_then(|o| o.start).unwrap_or(0).max(0);
        let end = start.saturating_add(replicas);
        let mut slots: BTreeMap<i32, Arc<Pod>> = BTreeMap::new();
        let mut condemned: Vec<(i32, Arc<Pod>)> = Vec::new();
        for p in &pods {
            match ordinal_of(&name, &p.name_any()) {
                Some(o) if (start..end).contains(&o) => {
                    slots.insert(o, p.clone());
                }
                o => condemned.push((o.unwrap_or(-1), p.clone())),
            }
        }
        condemned.sort_by_key(|c| std::cmp::Reverse(c.0));

        // Status from the pods as they are now.
        let now = Timestamp::now();
        let min_ready = spec.min_ready_seconds.unwrap_or(0);
        let counted: Vec<&Arc<Pod>> = pods.iter().filter(|p| !is_finished(p)).collect();
        let count = |f: &dyn Fn(&Pod) -> bool| i32::try_from(counted.iter().filter(|p| f(p)).count()).unwrap_or(i32::MAX);
        let n_replicas = count(&|_| true);
        let ready = count(&|p| podcontrol::is_ready(p));
        let available = count(&|p| podcontrol::is_available(p, min_ready, now));
        let updated = count(&|p| revision_of(p) == Some(update_name.as_str()) && !is_terminating(p));
        let mut current_replicas = count(&|p| revision_of(p) == Some(current_name.as_str()) && !is_terminating(p));
        let mut status_current = current_name.clone();
        let rolling = spec.update_strategy.as_ref().and_then(|s| s.type_.as_deref()) != Some("OnDelete");
        // The rollout is complete when every replica runs the update revision and is
        // ready (`completeRollingUpdate`).
        if rolling && updated == replicas && ready == replicas && n_replicas == replicas {
            status_current = update_name.clone();
            current_replicas = updated;
        }
        let new_status = json!({
            "replicas": n_replicas,
            "readyReplicas": ready,
            "availableReplicas": available,
            "currentReplicas": current_replicas,
            "updatedReplicas": updated,
            "currentRevision": status_current,
            "updateRevision": update_name,
            "observedGeneration": set.metadata.generation.unwrap_or(0),
        });
        let old = serde_json::to_value(&status).unwrap_or_default();
        if new_status.as_object().is_some_and(|m| m.iter().any(|(k, v)| old.get(k).unwrap_or(&json!(0)) != v)) {
            let api = Api::<StatefulSet>::namespaced(self.st.client.clone(), &ns);
            match api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&json!({"status": new_status}))).await {
                Ok(_) => debug!(%new_status, "status updated"),
                Err(kube::Error::Api(s)) if s.code == 404 => return Ok(Action::await_change()),
                Err(source) => return Err(StatefulSetError::UpdateStatus { key, source }),
            }
        }

        if set.metadata.deletion_timestamp.is_none() {
            let partition = spec.update_strategy.as_ref().and_then(|s| s.rolling_update.as_ref()).and_then(|r| r.partition).unwrap_or(0);
            let plan = Plan { start, end, partition, rolling, min_ready_seconds: min_ready, current: &current_template, current_name: &current_name, update_name: &update_name };
            self.manage(&plan, &slots, &condemned).await?;
        }

        // History beyond the limit: revisions neither current, update, nor worn by a pod.
        let live: HashSet<&str> = pods.iter().filter_map(|p| revision_of(p)).collect();
        let limit = spec.revision_history_limit.unwrap_or(10);
        history::truncate(&self.st.client, &revisions, limit, |r| {
            let n = r.name_any();
            n == update_name || n == current_name || n == status_current || live.contains(n.as_str())
        })
        .await
        .map_err(|source| StatefulSetError::History { key: key.clone(), source })?;

        if min_ready > 0 && ready != available {
            return Ok(Action::requeue(Duration::from_secs(u64::try_from(min_ready).unwrap_or(1))));
        }
        Ok(Action::await_change())
    }

    /// Creates, replaces and deletes pods (`updateStatefulSet`); returns after the first
    /// action when pods are managed in order.
    async fn manage(&self, plan: &Plan<'_>, slots: &BTreeMap<i32, Arc<Pod>>, condemned: &[(i32, Arc<Pod>)]) -> Result<(), StatefulSetError> {
        let set = self.set;
        let Some(spec) = set.spec.as_ref() else { return Ok(()) };
        let ordered = spec.pod_management_policy.as_deref() != Some("Parallel");

        // 1. Every slot gets a pod; finished pods are replaced.
        for ordinal in plan.start..plan.end {
            match slots.get(&ordinal) {
                None => {
                    // Pods below the partition keep the current revision (`newVersionedStatefulSetPod`).
                    let (template, revision) = if plan.rolling && ordinal < plan.partition {
                        (plan.current, plan.current_name)
                    } else {
                        (&spec.template, plan.update_name)
                    };
                    self.create(ordinal, template, revision).await?;
                    if ordered {
                        return Ok(());
                    }
                }
                Some(pod) if is_finished(pod) && !is_terminating(pod) => {
                    info!(pod = %pod.name_any(), "pod finished, recreating it");
                    self.delete_pod(pod).await?;
                    if ordered {
                        return Ok(());
                    }
                }
                Some(pod) if ordered && (is_terminating(pod) || !is_running_and_ready(pod) || !podcontrol::is_available(pod, plan.min_ready_seconds, Timestamp::now())) => {
                    debug!(pod = %pod.name_any(), "waiting for the pod to be Running and Ready for minReadySeconds");
                    return Ok(());
                }
                Some(pod) if !is_terminating(pod) => self.repair(ordinal, pod).await?,
                Some(_) => {}
            }
        }

        // 2. Condemned pods go, highest ordinal first.
        let unhealthy = slots.values().any(|p| !is_running_and_ready(p) || is_terminating(p));
        for (_, pod) in condemned {
            if is_terminating(pod) {
                if ordered {
                    return Ok(());
                }
                continue;
            }
            if ordered && unhealthy {
                return Ok(());
            }
            info!(pod = %pod.name_any(), "scaling down");
            self.delete_pod(pod).await?;
            let delete_claims = spec.persistent_volume_claim_retention_policy.as_ref().and_then(|p| p.when_scaled.as_deref()) == Some("Delete");
            if let (true, Some(ordinal)) = (delete_claims, ordinal_of(&set.name_any(), &pod.name_any())) {
                self.delete_claims(ordinal).await?;
            }
            if ordered {
                return Ok(());
            }
        }

        // 3. RollingUpdate: from the highest ordinal down to the partition, one pod at a
        // time, each replacement waiting for the previous to be Running and Ready.
        if !plan.rolling {
            return Ok(());
        }
        for ordinal in (plan.start.max(plan.partition)..plan.end).rev() {
            let Some(pod) = slots.get(&ordinal) else { return Ok(()) };
            if revision_of(pod) != Some(plan.update_name) && !is_terminating(pod) {
                info!(pod = %pod.name_any(), revision = plan.update_name, "replacing pod with the update revision");
                return self.delete_pod(pod).await;
            }
            if !is_running_and_ready(pod) || is_terminating(pod) {
                return Ok(());
            }
        }
        Ok(())
    }

    async fn create(&self, ordinal: i32, template: &PodTemplateSpec, revision: &str) -> Result<(), StatefulSetError> {
        let key = &self.key;
        let pod = stateful_pod(self.set, template, revision, ordinal);
        let pod_name = pod.name_any();
        for claim in claims_for(self.set, ordinal) {
            let claim_name = claim.name_any();
            match self.claims_api().create(&PostParams::default(), &claim).await {
                Ok(_) => {
                    info!(claim = %claim_name, "created claim");
                    self.claim_event("create", &claim_name, &pod_name, None);
                }
                Err(kube::Error::Api(s)) if s.code == 409 => {}
                Err(source) => {
                    self.claim_event("create", &claim_name, &pod_name, Some(&source));
                    return Err(StatefulSetError::CreateClaim { key: key.clone(), claim: claim_name, source });
                }
            }
        }
        match self.pods_api().create(&PostParams::default(), &pod).await {
            Ok(_) => {
                info!(pod = %pod_name, %revision, "created pod");
                self.pod_event("create", &pod_name, None);
                Ok(())
            }
            // Still there (the watch lags, or the old pod is terminating): wait for it.
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
            Err(source) => {
                self.pod_event("create", &pod_name, Some(&source));
                Err(StatefulSetError::CreatePod { key: key.clone(), pod: pod_name, source })
            }
        }
    }

    /// The event Kubernetes' stateful pod control records for a pod `verb` (`create`,
    /// `delete`): `SuccessfulCreate` "create Pod web-0 in StatefulSet web successful", or
    /// a `FailedCreate` warning with the error.
    fn pod_event(&self, verb: &str, pod: &str, error: Option<&kube::Error>) {
        let set = self.set.name_any();
        self.event(verb, error, format!("{verb} Pod {pod} in StatefulSet {set} successful"), format!("{verb} Pod {pod} in StatefulSet {set} failed error"));
    }

    /// The same for a claim made for a pod (the wording differs, as in Kubernetes).
    fn claim_event(&self, verb: &str, claim: &str, pod: &str, error: Option<&kube::Error>) {
        let set = self.set.name_any();
        self.event(
            verb,
            error,
            format!("{verb} Claim {claim} Pod {pod} in StatefulSet {set} success"),
            format!("{verb} Claim {claim} for Pod {pod} in StatefulSet {set} failed error"),
        );
    }

    fn event(&self, verb: &str, error: Option<&kube::Error>, success: String, failure: String) {
        let reason = capitalized(verb);
        match error {
            None => self.st.events.normal(self.set.object_ref(&()), &format!("Successful{reason}"), success),
            Some(e) => self.st.events.warning(self.set.object_ref(&()), &format!("Failed{reason}"), format!("{failure}: {}", super::api_error_message(e))),
        }
    }

    /// Gives a pod back the identity labels and the claims its ordinal implies
    /// (`identityMatches`/`storageMatches` failing → `updateStatefulSetPod`).
    async fn repair(&self, ordinal: i32, pod: &Pod) -> Result<(), StatefulSetError> {
        let pod_name = pod.name_any();
        let labels = pod.labels();
        let index = ordinal.to_string();
        if labels.get(POD_NAME_LABEL) != Some(&pod_name) || labels.get(POD_INDEX_LABEL) != Some(&index) {
            let patch = json!({"metadata": {"labels": {POD_NAME_LABEL: pod_name, POD_INDEX_LABEL: index}}});
            match self.pods_api().patch(&pod_name, &PatchParams::default(), &Patch::Merge(&patch)).await {
                Ok(_) => info!(pod = %pod_name, "restored the pod's identity labels"),
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(source) => return Err(StatefulSetError::RepairPod { key: self.key.clone(), pod: pod_name.clone(), source }),
            }
        }
        for claim in claims_for(self.set, ordinal) {
            let claim_name = claim.name_any();
            let key = ObjectRef::<PersistentVolumeClaim>::new(&claim_name).within(&self.set.namespace().unwrap_or_default());
            if self.st.claims.get(&key).is_some() {
                continue;
            }
            match self.claims_api().create(&PostParams::default(), &claim).await {
                Ok(_) => info!(claim = %claim_name, pod = %pod_name, "re-created a missing claim"),
                Err(kube::Error::Api(s)) if s.code == 409 => {}
                Err(source) => return Err(StatefulSetError::CreateClaim { key: self.key.clone(), claim: claim_name, source }),
            }
        }
        Ok(())
    }

    async fn delete_pod(&self, pod: &Pod) -> Result<(), StatefulSetError> {
        let pod_name = pod.name_any();
        match self.pods_api().delete(&pod_name, &DeleteParams::default()).await {
            Ok(_) => {
                info!(pod = %pod_name, "deleted pod");
                self.pod_event("delete", &pod_name, None);
                Ok(())
            }
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
            Err(source) => {
                self.pod_event("delete", &pod_name, Some(&source));
                Err(StatefulSetError::DeletePod { key: self.key.clone(), pod: pod_name, source })
            }
        }
    }

    async fn delete_claims(&self, ordinal: i32) -> Result<(), StatefulSetError> {
        for claim in claims_for(self.set, ordinal) {
            let claim_name = claim.name_any();
            match self.claims_api().delete(&claim_name, &DeleteParams::default()).await {
                Ok(_) => info!(claim = %claim_name, "deleted claim on scale-down"),
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(source) => return Err(StatefulSetError::DeleteClaim { key: self.key.clone(), claim: claim_name, source }),
            }
        }
        Ok(())
    }
}

/// `create` → `Create`, for event reasons.
fn capitalized(verb: &str) -> String {
    let mut chars = verb.chars();
    chars.next().map(|c| c.to_uppercase().chain(chars).collect()).unwrap_or_default()
}

/// What `manage` needs besides the set: the ordinal range, the partition and the two
/// revisions.
struct Plan<'a> {
    start: i32,
    end: i32,
    partition: i32,
    rolling: bool,
    min_ready_seconds: i32,
    current: &'a PodTemplateSpec,
    current_name: &'a str,
    update_name: &'a str,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinals_are_parsed_strictly() {
        assert_eq!(ordinal_of("web", "web-0"), Some(0));
        assert_eq!(ordinal_of("web", "web-12"), Some(12));
        assert_eq!(ordinal_of("web", "web-01"), None);
        assert_eq!(ordinal_of("web", "web-x"), None);
        assert_eq!(ordinal_of("web", "webx-1"), None);
        assert_eq!(ordinal_of("web", "web-"), None);
    }

    #[test]
    fn pods_get_identity_and_claims() {
        let set: StatefulSet = serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "ns", "uid": "u"},
            "spec": {
                "serviceName": "nginx",
                "selector": {"matchLabels": {"app": "web"}},
                "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "c"}]}},
                "volumeClaimTemplates": [{"metadata": {"name": "data"}, "spec": {"accessModes": ["ReadWriteOnce"]}}],
            },
        }))
        .unwrap_or_default();
        let template = set.spec.as_ref().map(|s| s.template.clone()).unwrap_or_default();
        let pod = stateful_pod(&set, &template, "web-abc", 2);
        assert_eq!(pod.metadata.name.as_deref(), Some("web-2"));
        let labels = pod.metadata.labels.clone().unwrap_or_default();
        assert_eq!(labels.get(POD_NAME_LABEL).map(String::as_str), Some("web-2"));
        assert_eq!(labels.get(POD_INDEX_LABEL).map(String::as_str), Some("2"));
        assert_eq!(labels.get(CONTROLLER_REVISION_HASH).map(String::as_str), Some("web-abc"));
        let spec = pod.spec.unwrap_or_default();
        assert_eq!(spec.hostname.as_deref(), Some("web-2"));
        assert_eq!(spec.subdomain.as_deref(), Some("nginx"));
        let vols = spec.volumes.unwrap_or_default();
        assert_eq!(vols[0].persistent_volume_claim.as_ref().map(|c| c.claim_name.as_str()), Some("data-web-2"));
        let claims = claims_for(&set, 2);
        assert_eq!(claims[0].metadata.name.as_deref(), Some("data-web-2"));
        assert!(claims[0].metadata.owner_references.is_none());
    }
}
