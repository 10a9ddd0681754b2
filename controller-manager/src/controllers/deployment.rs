//! The Deployment controller, after Kubernetes' `pkg/controller/deployment`: each pod
//! template gets a ReplicaSet named `<deployment>-<pod-template-hash>`; RollingUpdate moves
//! replicas from old ReplicaSets to the new one within maxSurge/maxUnavailable, Recreate
//! scales the old ones to zero and waits for their pods to go before scaling the new one
//! up. Revisions live in the `deployment.kubernetes.io/revision` annotation (a rollback
//! re-uses the old ReplicaSet and gives it the next revision), old ReplicaSets beyond
//! `revisionHistoryLimit` are deleted, a paused Deployment only scales, and the
//! `Progressing`/`Available` conditions and replica counts feed `kubectl rollout status`.

use std::cmp::Ordering;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use apimachinery::labels::Selector;
use futures::channel::mpsc;
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use k8s_openapi::api::apps::v1::{Deployment, DeploymentCondition, DeploymentStatus, ReplicaSet, ReplicaSetSpec};
use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, Time};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{self, Action};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Resource, ResourceExt};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;
use tracing::{info, info_span, warn, Instrument};

use super::podcontrol::{self, Claimer, PodControlError};
use super::{Context, ControllerError};

pub const REVISION: &str = "deployment.kubernetes.io/revision";
pub const REVISION_HISTORY: &str = "deployment.kubernetes.io/revision-history";
pub const DESIRED_REPLICAS: &str = "deployment.kubernetes.io/desired-replicas";
pub const MAX_REPLICAS: &str = "deployment.kubernetes.io/max-replicas";
pub const POD_TEMPLATE_HASH: &str = "pod-template-hash";
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";
const ROLLBACK_TO: &str = "deprecated.deployment.rollback.to";

const PROGRESSING: &str = "Progressing";
const AVAILABLE: &str = "Available";

/// Why a Deployment sync failed.
#[derive(Debug, thiserror::Error)]
pub enum DeploymentError {
    #[error("invalid spec of {key}: {reason}")]
    InvalidSpec { key: String, reason: String },
    #[error("claiming replica sets of {key}")]
    Claim {
        key: String,
        #[source]
        source: PodControlError,
    },
    #[error("creating replica set {name}")]
    CreateReplicaSet {
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("replica set {name} exists with another template: hash collision (collisionCount now {count})")]
    HashCollision { name: String, count: i32 },
    #[error("updating replica set {name}")]
    UpdateReplicaSet {
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("deleting replica set {name}")]
    DeleteReplicaSet {
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("updating deployment {key}")]
    UpdateDeployment {
        key: String,
        #[source]
        source: kube::Error,
    },
}

/// Starts the Deployment controller.
pub fn start(ctx: Context, shutdown: CancellationToken) -> BoxFuture<'static, Result<(), ControllerError>> {
    run(ctx, shutdown).boxed()
}

struct State {
    client: kube::Client,
    replicasets: Store<ReplicaSet>,
    pods: Store<Pod>,
    events: component_base::events::EventSink,
}

async fn run(ctx: Context, shutdown: CancellationToken) -> Result<(), ControllerError> {
    let client = ctx.client.clone();
    let (d_reader, d_writer) = reflector::store::<Deployment>();
    let (rs_reader, rs_writer) = reflector::store::<ReplicaSet>();
    let (pod_reader, pod_writer) = reflector::store::<Pod>();
    let (tx, rx) = mpsc::unbounded::<ObjectRef<Deployment>>();

    // ReplicaSets: enqueue their deployment, or for an orphan every deployment selecting it.
    let rs_stream = reflector::reflector(rs_writer, watcher(Api::<ReplicaSet>::all(client.clone()), watcher::Config::default()).default_backoff());
    let rs_tx = tx.clone();
    let deployments = d_reader.clone();
    let token = shutdown.clone();
    tokio::spawn(async move {
        let mut s = std::pin::pin!(rs_stream);
        loop {
            let ev = tokio::select! { _ = token.cancelled() => return, ev = s.next() => ev };
            let rs = match ev {
                None => return,
                Some(Ok(watcher::Event::Apply(r) | watcher::Event::Delete(r) | watcher::Event::InitApply(r))) => r,
                Some(_) => continue,
            };
            let ns = rs.namespace().unwrap_or_default();
            match podcontrol::controller_of(&rs.metadata) {
                Some(r) if r.kind == "Deployment" => {
                    let _ = rs_tx.unbounded_send(ObjectRef::new(&r.name).within(&ns));
                }
                Some(_) => {}
                None => {
                    let labels = rs.labels().clone();
                    for d in deployments.state() {
                        if d.namespace().as_deref() == Some(ns.as_str()) && selector_of(&d).is_ok_and(|s| s.matches(&labels)) {
                            let _ = rs_tx.unbounded_send(ObjectRef::from_obj(&*d));
                        }
                    }
                }
            }
        }
    });

    // Pods: a deleted pod may unblock a Recreate rollout waiting for old pods to go.
    let pod_stream = reflector::reflector(pod_writer, watcher(Api::<Pod>::all(client.clone()), watcher::Config::default()).default_backoff());
    let rs_for_pods = rs_reader.clone();
    let token = shutdown.clone();
    tokio::spawn(async move {
        let mut s = std::pin::pin!(pod_stream);
        loop {
            let ev = tokio::select! { _ = token.cancelled() => return, ev = s.next() => ev };
            let pod = match ev {
                None => return,
                Some(Ok(watcher::Event::Delete(p))) => p,
                Some(_) => continue,
            };
            let ns = pod.namespace().unwrap_or_default();
            let Some(owner) = podcontrol::controller_of(&pod.metadata).filter(|r| r.kind == "ReplicaSet") else { continue };
            let Some(rs) = rs_for_pods.get(&ObjectRef::new(&owner.name).within(&ns)) else { continue };
            if let Some(d) = podcontrol::controller_of(&rs.metadata).filter(|r| r.kind == "Deployment") {
                let _ = tx.unbounded_send(ObjectRef::new(&d.name).within(&ns));
            }
        }
    });

    let d_stream = reflector::reflector(d_writer, watcher(Api::<Deployment>::all(client.clone()), watcher::Config::default()).default_backoff());
    let d_refs = d_stream.applied_objects().map_ok(|d| ObjectRef::from_obj(&d));
    let queue = futures::stream::select(d_refs, rx.map(Ok::<_, watcher::Error>));

    tokio::select! {
        _ = shutdown.cancelled() => return Ok(()),
        r = async { rs_reader.wait_until_ready().await?; pod_reader.wait_until_ready().await } => {
            r.map_err(|e| ControllerError::Config(e.to_string()))?;
        }
    }
    let state = Arc::new(State { client, replicasets: rs_reader, pods: pod_reader, events: ctx.events("deployment-controller") });
    let applier = controller::applier(
        |d, st| Box::pin(reconcile(d, st)),
        |d: Arc<Deployment>, err: &DeploymentError, _| {
            warn!(deployment = %podcontrol::key_of(&d.metadata), error = %err, "sync failed");
            Action::requeue(Duration::from_millis(500))
        },
        state,
        d_reader,
        queue,
        controller::Config::default(),
    );
    super::drive("deployment", applier, &shutdown).await
}

use futures::TryStreamExt;

async fn reconcile(d: Arc<Deployment>, st: Arc<State>) -> Result<Action, DeploymentError> {
    let key = podcontrol::key_of(&d.metadata);
    let span = info_span!("sync", controller = "deployment", deployment = %key);
    // A working copy: the cached object is never mutated.
    let sync = Sync { st: &st, d: (*d).clone(), key, now: Timestamp::now() };
    sync.run().instrument(span).await
}

// ---------------------------------------------------------------------------------------
// Pure helpers over the API types.

fn selector_of(d: &Deployment) -> Result<Selector, String> {
    let spec = d.spec.as_ref().ok_or("no spec")?;
    super::selector_of(&spec.selector)
}

fn d_replicas(d: &Deployment) -> i32 {
    d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1)
}

fn is_rolling(d: &Deployment) -> bool {
    d.spec.as_ref().and_then(|s| s.strategy.as_ref()).and_then(|s| s.type_.as_deref()) != Some("Recreate")
}

/// An int, or a percent of `total` rounded up or down (`GetScaledValueFromIntOrPercent`).
pub fn scaled_value(v: &IntOrString, total: i32, round_up: bool) -> Result<i32, String> {
    match v {
        IntOrString::Int(i) => Ok(*i),
        IntOrString::String(s) => {
            let p: i64 = s.strip_suffix('%').and_then(|p| p.parse().ok()).ok_or_else(|| format!("invalid value for IntOrString: {s:?}"))?;
            let x = p.saturating_mul(i64::from(total));
            let r = if round_up { (x + 99).div_euclid(100) } else { x.div_euclid(100) };
            i32::try_from(r).map_err(|e| e.to_string())
        }
    }
}

/// maxSurge and maxUnavailable resolved against the replicas (`ResolveFenceposts`): surge
/// rounds up, unavailable down, and both zero means unavailable one.
pub fn fenceposts(d: &Deployment) -> Result<(i32, i32), String> {
    let ru = d.spec.as_ref().and_then(|s| s.strategy.as_ref()).and_then(|s| s.rolling_update.as_ref());
    let surge = ru.and_then(|r| r.max_surge.clone()).unwrap_or(IntOrString::String("25%".into()));
    let unavailable = ru.and_then(|r| r.max_unavailable.clone()).unwrap_or(IntOrString::String("25%".into()));
    let desired = d_replicas(d);
    let s = scaled_value(&surge, desired, true)?;
    let u = scaled_value(&unavailable, desired, false)?;
    Ok(if s == 0 && u == 0 { (0, 1) } else { (s, u) })
}

fn max_surge(d: &Deployment) -> i32 {
    if !is_rolling(d) {
        return 0;
    }
    fenceposts(d).map(|f| f.0).unwrap_or(0)
}

fn max_unavailable(d: &Deployment) -> i32 {
    if !is_rolling(d) || d_replicas(d) == 0 {
        return 0;
    }
    fenceposts(d).map(|f| f.1.min(d_replicas(d))).unwrap_or(0)
}

fn progress_deadline(d: &Deployment) -> Option<i32> {
    d.spec.as_ref().and_then(|s| s.progress_deadline_seconds).filter(|s| *s != i32::MAX)
}

fn rs_replicas(rs: &ReplicaSet) -> i32 {
    rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1)
}

fn rs_status_replicas(rs: &ReplicaSet) -> i32 {
    rs.status.as_ref().map_or(0, |s| s.replicas)
}

fn rs_available(rs: &ReplicaSet) -> i32 {
    rs.status.as_ref().and_then(|s| s.available_replicas).unwrap_or(0)
}

fn rs_ready(rs: &ReplicaSet) -> i32 {
    rs.status.as_ref().and_then(|s| s.ready_replicas).unwrap_or(0)
}

fn annotation<'a>(meta: &'a ObjectMeta, k: &str) -> Option<&'a str> {
    meta.annotations.as_ref()?.get(k).map(String::as_str)
}

fn revision(rs: &ReplicaSet) -> i64 {
    annotation(&rs.metadata, REVISION).and_then(|v| v.parse().ok()).unwrap_or(0)
}

fn created(rs: &ReplicaSet) -> Option<Timestamp> {
    rs.metadata.creation_timestamp.as_ref().map(|t| t.0)
}

fn by_creation(a: &ReplicaSet, b: &ReplicaSet) -> Ordering {
    created(a).cmp(&created(b)).then_with(|| a.name_any().cmp(&b.name_any()))
}

fn total_spec(rss: &[&ReplicaSet]) -> i32 {
    rss.iter().map(|r| rs_replicas(r)).sum()
}

/// A template as compared across a deployment and its replica sets: without the
/// `pod-template-hash` label (`EqualIgnoreHash`).
fn template_without_hash(t: &PodTemplateSpec) -> Value {
    let mut t = t.clone();
    if let Some(m) = t.metadata.as_mut() {
        if let Some(l) = m.labels.as_mut() {
            l.remove(POD_TEMPLATE_HASH);
            if l.is_empty() {
                m.labels = None;
            }
        }
    }
    serde_json::to_value(&t).unwrap_or(Value::Null)
}

fn equal_ignore_hash(a: &PodTemplateSpec, b: Option<&PodTemplateSpec>) -> bool {
    b.is_some_and(|b| template_without_hash(a) == template_without_hash(b))
}

/// The pod-template-hash: FNV-1a over the template's JSON and the collision count,
/// written with the 27 characters Kubernetes' `SafeEncodeString` uses (no vowels, no
/// look-alikes), 10 of them.
pub fn template_hash(t: &PodTemplateSpec, collision_count: Option<i32>) -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut feed = |bytes: &[u8]| {
        for b in bytes {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    };
    feed(template_without_hash(t).to_string().as_bytes());
    if let Some(c) = collision_count {
        feed(&c.to_le_bytes());
    }
    let mut out = String::with_capacity(10);
    let n = ALPHABET.len() as u64;
    for _ in 0..10 {
        out.push(char::from(ALPHABET[(h % n) as usize]));
        h /= n;
    }
    out
}

fn condition<'a>(s: &'a DeploymentStatus, t: &str) -> Option<&'a DeploymentCondition> {
    s.conditions.as_ref()?.iter().find(|c| c.type_ == t)
}

fn new_condition(t: &str, status: &str, reason: &str, message: String, now: Timestamp) -> DeploymentCondition {
    DeploymentCondition {
        type_: t.into(),
        status: status.into(),
        reason: Some(reason.into()),
        message: Some(message),
        last_update_time: Some(Time(now)),
        last_transition_time: Some(Time(now)),
    }
}

/// `SetDeploymentCondition`: same status and reason keeps the old one; same status keeps
/// its transition time.
fn set_condition(s: &mut DeploymentStatus, mut c: DeploymentCondition) {
    if let Some(cur) = condition(s, &c.type_) {
        if cur.status == c.status && cur.reason == c.reason {
            return;
        }
        if cur.status == c.status {
            c.last_transition_time = cur.last_transition_time.clone();
        }
    }
    remove_condition(s, &c.type_);
    s.conditions.get_or_insert_with(Vec::new).push(c);
}

fn remove_condition(s: &mut DeploymentStatus, t: &str) {
    if let Some(cs) = s.conditions.as_mut() {
        cs.retain(|c| c.type_ != t);
    }
}

fn deployment_complete(d: &Deployment, s: &DeploymentStatus) -> bool {
    let r = d_replicas(d);
    s.updated_replicas.unwrap_or(0) == r
        && s.replicas.unwrap_or(0) == r
        && s.available_replicas.unwrap_or(0) == r
        && s.observed_generation.unwrap_or(0) >= d.metadata.generation.unwrap_or(0)
}

fn deployment_progressing(d: &Deployment, new: &DeploymentStatus) -> bool {
    let old = d.status.clone().unwrap_or_default();
    let old_old = old.replicas.unwrap_or(0) - old.updated_replicas.unwrap_or(0);
    let new_old = new.replicas.unwrap_or(0) - new.updated_replicas.unwrap_or(0);
    new.updated_replicas.unwrap_or(0) > old.updated_replicas.unwrap_or(0)
        || new_old < old_old
        || new.ready_replicas.unwrap_or(0) > old.ready_replicas.unwrap_or(0)
        || new.available_replicas.unwrap_or(0) > old.available_replicas.unwrap_or(0)
}

fn timed_out(d: &Deployment, s: &DeploymentStatus, now: Timestamp) -> bool {
    let Some(deadline) = progress_deadline(d) else { return false };
    let Some(c) = condition(s, PROGRESSING) else { return false };
    match c.reason.as_deref() {
        Some("NewReplicaSetAvailable") => false,
        Some("ProgressDeadlineExceeded") => true,
        _ => c.last_update_time.as_ref().is_some_and(|t| t.0.as_second() + i64::from(deadline) < now.as_second()),
    }
}

/// The replicas of a replica set when the deployment is resized (`getReplicaSetFraction`).
fn proportion(rs: &ReplicaSet, d: &Deployment, to_add: i32, added: i32) -> i32 {
    let replicas = rs_replicas(rs);
    if replicas == 0 || to_add == 0 || to_add == added {
        return 0;
    }
    let fraction = if d_replicas(d) == 0 {
        -replicas
    } else {
        let deployment_replicas = d_replicas(d) + max_surge(d);
        let annotated = annotation(&rs.metadata, MAX_REPLICAS)
            .and_then(|v| v.parse::<i32>().ok())
            .unwrap_or_else(|| d.status.as_ref().and_then(|s| s.replicas).unwrap_or(0));
        if annotated == 0 {
            0
        } else {
            let size = f64::from(replicas) * f64::from(deployment_replicas) / f64::from(annotated);
            size.round() as i32 - replicas
        }
    };
    let allowed = to_add - added;
    if to_add > 0 {
        fraction.min(allowed)
    } else {
        fraction.max(allowed)
    }
}

// ---------------------------------------------------------------------------------------
// One sync of one deployment.

struct Sync<'a> {
    st: &'a State,
    d: Deployment,
    key: String,
    now: Timestamp,
}

impl Sync<'_> {
    fn ns(&self) -> String {
        self.d.namespace().unwrap_or_default()
    }

    fn rs_api(&self) -> Api<ReplicaSet> {
        Api::namespaced(self.st.client.clone(), &self.ns())
    }

    fn d_api(&self) -> Api<Deployment> {
        Api::namespaced(self.st.client.clone(), &self.ns())
    }

    fn spec_template(&self) -> PodTemplateSpec {
        self.d.spec.as_ref().map(|s| s.template.clone()).unwrap_or_default()
    }

    async fn run(mut self) -> Result<Action, DeploymentError> {
        let invalid = |reason: String| DeploymentError::InvalidSpec { key: self.key.clone(), reason };
        let selector = selector_of(&self.d).map_err(invalid)?;
        fenceposts(&self.d).map_err(|r| DeploymentError::InvalidSpec { key: self.key.clone(), reason: r })?;
        if selector.is_empty() {
            warn!("selecting all pods is not allowed; only observing the generation");
            if self.d.status.as_ref().and_then(|s| s.observed_generation) != self.d.metadata.generation {
                let mut s = self.d.status.clone().unwrap_or_default();
                s.observed_generation = self.d.metadata.generation;
                self.write_status(s).await?;
            }
            return Ok(Action::await_change());
        }

        // The replica sets this deployment controls, adopting and releasing by selector.
        let ns = self.ns();
        let candidates: Vec<Arc<ReplicaSet>> =
            self.st.replicasets.state().into_iter().filter(|r| r.namespace().as_deref() == Some(ns.as_str())).collect();
        let client = self.st.client.clone();
        let claimer = Claimer { owner: &self.d, selector: &selector };
        let claimed = podcontrol::claim(|ns| Api::<ReplicaSet>::namespaced(client.clone(), ns), &claimer, candidates)
            .await
            .map_err(|source| DeploymentError::Claim { key: self.key.clone(), source })?;
        let mut rs_list: Vec<ReplicaSet> = claimed.iter().map(|r| (**r).clone()).collect();
        rs_list.sort_by(by_creation);

        if self.d.metadata.deletion_timestamp.is_some() {
            let (new, old) = self.all_replicasets(&rs_list, false).await?;
            self.sync_status_only(new.as_ref(), &old).await?;
            return Ok(Action::await_change());
        }
        self.check_paused_conditions().await?;
        let paused = self.d.spec.as_ref().and_then(|s| s.paused).unwrap_or(false);
        if paused || self.is_scaling_event(&rs_list).await? {
            self.sync_scale(&rs_list, paused).await?;
            return Ok(Action::await_change());
        }
        if is_rolling(&self.d) {
            self.rollout_rolling(&rs_list).await
        } else {
            self.rollout_recreate(&rs_list).await
        }
    }

    // ---- status writes -----------------------------------------------------------------

    async fn write_status(&mut self, status: DeploymentStatus) -> Result<(), DeploymentError> {
        let mut v = serde_json::to_value(&status).unwrap_or(Value::Null);
        // Conditions are replaced as a whole; an empty list clears them.
        if status.conditions.is_none() {
            v["conditions"] = Value::Null;
        }
        let patch = json!({ "status": v });
        match self.d_api().patch_status(&self.d.name_any(), &PatchParams::default(), &Patch::Merge(&patch)).await {
            Ok(updated) => {
                self.d.status = updated.status;
                self.d.metadata.resource_version = updated.metadata.resource_version;
                Ok(())
            }
            Err(source) => Err(DeploymentError::UpdateDeployment { key: self.key.clone(), source }),
        }
    }

    /// `SetDeploymentRevision`, written to the deployment's own metadata.
    async fn set_deployment_revision(&mut self, rev: &str) -> Result<(), DeploymentError> {
        if annotation(&self.d.metadata, REVISION) == Some(rev) {
            return Ok(());
        }
        let patch = json!({"metadata": {"annotations": {REVISION: rev}}});
        match self.d_api().patch(&self.d.name_any(), &PatchParams::default(), &Patch::Merge(&patch)).await {
            Ok(updated) => {
                self.d.metadata.annotations = updated.metadata.annotations;
                Ok(())
            }
            Err(source) => Err(DeploymentError::UpdateDeployment { key: self.key.clone(), source }),
        }
    }

    async fn check_paused_conditions(&mut self) -> Result<(), DeploymentError> {
        if progress_deadline(&self.d).is_none() {
            return Ok(());
        }
        let paused = self.d.spec.as_ref().and_then(|s| s.paused).unwrap_or(false);
        let mut status = self.d.status.clone().unwrap_or_default();
        let reason = condition(&status, PROGRESSING).and_then(|c| c.reason.clone());
        let update = if paused && reason.as_deref() != Some("DeploymentPaused") {
            set_condition(&mut status, new_condition(PROGRESSING, "Unknown", "DeploymentPaused", "Deployment is paused".into(), self.now));
            true
        } else if !paused && reason.as_deref() == Some("DeploymentPaused") {
            set_condition(&mut status, new_condition(PROGRESSING, "Unknown", "DeploymentResumed", "Deployment is resumed".into(), self.now));
            true
        } else {
            false
        };
        if update {
            self.write_status(status).await?;
        }
        Ok(())
    }

    // ---- finding and creating the new replica set ----------------------------------------

    /// `getAllReplicaSetsAndSyncRevision`: the new replica set (created if asked and
    /// missing) and the old ones, with the revision annotations brought up to date.
    async fn all_replicasets(&mut self, rs_list: &[ReplicaSet], create: bool) -> Result<(Option<ReplicaSet>, Vec<ReplicaSet>), DeploymentError> {
        let template = self.spec_template();
        let existing = rs_list.iter().find(|r| equal_ignore_hash(&template, r.spec.as_ref().and_then(|s| s.template.as_ref())));
        let old: Vec<ReplicaSet> = rs_list.iter().filter(|r| Some(r.metadata.uid.as_ref()) != existing.map(|e| e.metadata.uid.as_ref())).cloned().collect();
        let new = self.new_replicaset(existing.cloned(), &old, create).await?;
        Ok((new, old))
    }

    /// The annotations a new replica set carries (`SetNewReplicaSetAnnotations`); true if
    /// they changed.
    fn new_rs_annotations(&self, rs: &mut ReplicaSet, new_revision: i64, exists: bool) -> bool {
        let mut changed = false;
        let annotations = rs.metadata.annotations.get_or_insert_with(BTreeMap::new);
        for (k, v) in self.d.metadata.annotations.iter().flatten() {
            if [LAST_APPLIED, REVISION, REVISION_HISTORY, DESIRED_REPLICAS, MAX_REPLICAS, ROLLBACK_TO].contains(&k.as_str()) {
                continue;
            }
            if annotations.get(k) != Some(v) {
                annotations.insert(k.clone(), v.clone());
                changed = true;
            }
        }
        let old_revision = annotations.get(REVISION).cloned();
        let old_num: i64 = old_revision.as_deref().and_then(|v| v.parse().ok()).unwrap_or(0);
        if old_num < new_revision {
            annotations.insert(REVISION.into(), new_revision.to_string());
            changed = true;
            if let Some(old) = old_revision.filter(|o| !o.is_empty()) {
                let history = match annotations.get(REVISION_HISTORY) {
                    Some(h) if !h.is_empty() => format!("{h},{old}"),
                    _ => old,
                };
                annotations.insert(REVISION_HISTORY.into(), history);
            }
        }
        if !exists {
            changed |= self.replicas_annotations(rs);
        }
        changed
    }

    /// Sets `desired-replicas`/`max-replicas`; true if they changed.
    fn replicas_annotations(&self, rs: &mut ReplicaSet) -> bool {
        let desired = d_replicas(&self.d).to_string();
        let max = (d_replicas(&self.d) + max_surge(&self.d)).to_string();
        let a = rs.metadata.annotations.get_or_insert_with(BTreeMap::new);
        let mut changed = false;
        for (k, v) in [(DESIRED_REPLICAS, desired), (MAX_REPLICAS, max)] {
            if a.get(k) != Some(&v) {
                a.insert(k.into(), v);
                changed = true;
            }
        }
        changed
    }

    async fn new_replicaset(&mut self, existing: Option<ReplicaSet>, old: &[ReplicaSet], create: bool) -> Result<Option<ReplicaSet>, DeploymentError> {
        let max_old = old.iter().map(revision).max().unwrap_or(0);
        let new_revision = max_old + 1;
        if let Some(existing) = existing {
            let mut rs = existing.clone();
            let annotations_changed = self.new_rs_annotations(&mut rs, new_revision, true);
            let min_ready = self.d.spec.as_ref().and_then(|s| s.min_ready_seconds);
            let min_ready_changed = rs.spec.as_ref().and_then(|s| s.min_ready_seconds).unwrap_or(0) != min_ready.unwrap_or(0);
            if annotations_changed || min_ready_changed {
                let patch = json!({
                    "metadata": {"annotations": rs.metadata.annotations, "resourceVersion": rs.metadata.resource_version},
                    "spec": {"minReadySeconds": min_ready.unwrap_or(0)},
                });
                rs = self.patch_rs(&rs.name_any(), &patch).await?;
                if annotations_changed {
                    info!(replicaset = %rs.name_any(), revision = revision(&rs), "replica set is the new one");
                }
            }
            let rev = annotation(&rs.metadata, REVISION).unwrap_or_default().to_string();
            self.set_deployment_revision(&rev).await?;
            let mut status = self.d.status.clone().unwrap_or_default();
            if progress_deadline(&self.d).is_some() && condition(&status, PROGRESSING).is_none() {
                let msg = format!("Found new replica set {:?}", rs.name_any());
                set_condition(&mut status, new_condition(PROGRESSING, "True", "FoundNewReplicaSet", msg, self.now));
                self.write_status(status).await?;
            }
            return Ok(Some(rs));
        }
        if !create {
            return Ok(None);
        }

        let collision_count = self.d.status.as_ref().and_then(|s| s.collision_count);
        let mut template = self.spec_template();
        let hash = template_hash(&template, collision_count);
        template.metadata.get_or_insert_with(Default::default).labels.get_or_insert_with(BTreeMap::new).insert(POD_TEMPLATE_HASH.into(), hash.clone());
        let mut selector: LabelSelector = self.d.spec.as_ref().map(|s| s.selector.clone()).unwrap_or_default();
        selector.match_labels.get_or_insert_with(BTreeMap::new).insert(POD_TEMPLATE_HASH.into(), hash.clone());
        let name = format!("{}-{}", self.d.name_any(), hash);
        let mut rs = ReplicaSet {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                namespace: Some(self.ns()),
                owner_references: Some(vec![podcontrol::controller_reference(&self.d)]),
                labels: template.metadata.as_ref().and_then(|m| m.labels.clone()),
                ..Default::default()
            },
            spec: Some(ReplicaSetSpec {
                replicas: Some(0),
                min_ready_seconds: self.d.spec.as_ref().and_then(|s| s.min_ready_seconds),
                selector,
                template: Some(template),
            }),
            status: None,
        };
        let mut all: Vec<&ReplicaSet> = old.iter().collect();
        all.push(&rs);
        let replicas = self.new_rs_new_replicas(&all, &rs);
        if let Some(s) = rs.spec.as_mut() {
            s.replicas = Some(replicas);
        }
        self.new_rs_annotations(&mut rs, new_revision, false);

        let (created, already_exists) = match self.rs_api().create(&PostParams::default(), &rs).await {
            Ok(created) => (created, false),
            Err(kube::Error::Api(s)) if s.code == 409 => {
                let found = self.rs_api().get(&name).await.map_err(|source| DeploymentError::CreateReplicaSet { name: name.clone(), source })?;
                let ours = podcontrol::controller_of(&found.metadata).is_some_and(|r| Some(&r.uid) == self.d.metadata.uid.as_ref());
                if ours && equal_ignore_hash(&self.spec_template(), found.spec.as_ref().and_then(|s| s.template.as_ref())) {
                    (found, true)
                } else {
                    let mut status = self.d.status.clone().unwrap_or_default();
                    let count = status.collision_count.unwrap_or(0).saturating_add(1);
                    status.collision_count = Some(count);
                    self.write_status(status).await?;
                    return Err(DeploymentError::HashCollision { name, count });
                }
            }
            Err(source) => {
                let msg = format!("Failed to create new replica set {name:?}: {}", super::api_error_message(&source));
                self.st.events.warning(self.d.object_ref(&()), "ReplicaSetCreateError", msg.clone());
                if progress_deadline(&self.d).is_some() {
                    let mut status = self.d.status.clone().unwrap_or_default();
                    set_condition(&mut status, new_condition(PROGRESSING, "False", "ReplicaSetCreateError", msg, self.now));
                    let _ = self.write_status(status).await;
                }
                return Err(DeploymentError::CreateReplicaSet { name, source });
            }
        };
        if !already_exists {
            info!(replicaset = %name, replicas, revision = new_revision, "Scaled up replica set {name} to {replicas}");
            if replicas > 0 {
                self.st.events.normal(self.d.object_ref(&()), "ScalingReplicaSet", format!("Scaled up replica set {name} from 0 to {replicas}"));
            }
        }
        self.set_deployment_revision(&new_revision.to_string()).await?;
        if !already_exists {
            let mut status = self.d.status.clone().unwrap_or_default();
            if progress_deadline(&self.d).is_some() {
                set_condition(&mut status, new_condition(PROGRESSING, "True", "NewReplicaSetCreated", format!("Created new replica set {name:?}"), self.now));
            }
            self.write_status(status).await?;
        }
        Ok(Some(created))
    }

    /// How many replicas the new replica set may have now (`NewRSNewReplicas`). The pods
    /// counted for an old replica set are the larger of its spec and its status, so that
    /// pods still being scaled down count against maxSurge.
    fn new_rs_new_replicas(&self, all: &[&ReplicaSet], new: &ReplicaSet) -> i32 {
        let desired = d_replicas(&self.d);
        if !is_rolling(&self.d) {
            return desired;
        }
        let new_uid = new.metadata.uid.as_ref();
        let current: i32 = all
            .iter()
            .map(|r| if r.metadata.uid.as_ref() == new_uid && new_uid.is_some() { rs_replicas(r) } else { rs_replicas(r).max(rs_status_replicas(r)) })
            .sum();
        let max_total = desired + max_surge(&self.d);
        if current >= max_total {
            return rs_replicas(new);
        }
        let up = (max_total - current).min(desired - rs_replicas(new));
        rs_replicas(new) + up.max(0)
    }

    // ---- scaling ---------------------------------------------------------------------------

    async fn patch_rs(&self, name: &str, patch: &Value) -> Result<ReplicaSet, DeploymentError> {
        self.rs_api()
            .patch(name, &PatchParams::default(), &Patch::Merge(patch))
            .await
            .map_err(|source| DeploymentError::UpdateReplicaSet { name: name.to_string(), source })
    }

    /// Scales a replica set and refreshes its annotations (`scaleReplicaSet`); returns
    /// whether the size changed and the written object.
    async fn scale_rs(&self, rs: &ReplicaSet, to: i32) -> Result<(bool, ReplicaSet), DeploymentError> {
        let from = rs_replicas(rs);
        let mut copy = rs.clone();
        let annotations_changed = self.replicas_annotations(&mut copy);
        if from == to && !annotations_changed {
            return Ok((false, rs.clone()));
        }
        let patch = json!({
            "metadata": {"annotations": copy.metadata.annotations, "resourceVersion": rs.metadata.resource_version},
            "spec": {"replicas": to},
        });
        let updated = self.patch_rs(&rs.name_any(), &patch).await?;
        if from != to {
            let dir = if to > from { "up" } else { "down" };
            info!(replicaset = %rs.name_any(), from, to, "Scaled {dir} replica set {} to {to} from {from}", rs.name_any());
            self.st.events.normal(self.d.object_ref(&()), "ScalingReplicaSet", format!("Scaled {dir} replica set {} to {to} from {from}", rs.name_any()));
        }
        Ok((from != to, updated))
    }

    /// `isScalingEvent`: an active replica set's desired-replicas annotation differs from
    /// the deployment's replicas.
    async fn is_scaling_event(&mut self, rs_list: &[ReplicaSet]) -> Result<bool, DeploymentError> {
        let (new, old) = self.all_replicasets(rs_list, false).await?;
        let desired = d_replicas(&self.d);
        Ok(new.iter().chain(old.iter()).filter(|r| rs_replicas(r) > 0).any(|r| {
            annotation(&r.metadata, DESIRED_REPLICAS).and_then(|v| v.parse::<i32>().ok()).is_some_and(|v| v != desired)
        }))
    }

    /// `sync`: scale (proportionally during a rolling update), clean up when paused, and
    /// write the status.
    async fn sync_scale(&mut self, rs_list: &[ReplicaSet], paused: bool) -> Result<(), DeploymentError> {
        let (new, mut old) = self.all_replicasets(rs_list, false).await?;
        self.scale(new.as_ref(), &mut old).await?;
        if paused {
            self.cleanup(&old).await?;
        }
        self.sync_status_only(new.as_ref(), &old).await
    }

    async fn scale(&mut self, new: Option<&ReplicaSet>, old: &mut [ReplicaSet]) -> Result<(), DeploymentError> {
        let desired = d_replicas(&self.d);
        // One active (or, with none, the newest) replica set gets all the replicas.
        old.sort_by(|a, b| by_creation(b, a));
        let mut all: Vec<&ReplicaSet> = old.iter().collect();
        all.extend(new);
        let active: Vec<&ReplicaSet> = all.iter().copied().filter(|r| rs_replicas(r) > 0).collect();
        let active_or_latest = match active.len() {
            0 => new.or(old.first()),
            1 => active.first().copied(),
            _ => None,
        };
        if let Some(rs) = active_or_latest {
            if rs_replicas(rs) != desired {
                self.scale_rs(rs, desired).await?;
            }
            return Ok(());
        }
        // A saturated new replica set: the old ones go to zero.
        if let Some(n) = new {
            let saturated = annotation(&n.metadata, DESIRED_REPLICAS).and_then(|v| v.parse::<i32>().ok()) == Some(desired)
                && rs_replicas(n) == desired
                && rs_available(n) == desired;
            if saturated {
                for o in old.iter().filter(|r| rs_replicas(r) > 0) {
                    self.scale_rs(o, 0).await?;
                }
                return Ok(());
            }
        }
        if !is_rolling(&self.d) {
            return Ok(());
        }
        // Proportional scaling of every active replica set.
        let allowed = if desired > 0 { desired + max_surge(&self.d) } else { 0 };
        let to_add = allowed - total_spec(&active);
        let mut ordered = active.clone();
        match to_add.cmp(&0) {
            // Larger first, newer first on ties.
            Ordering::Greater => ordered.sort_by(|a, b| rs_replicas(b).cmp(&rs_replicas(a)).then_with(|| by_creation(b, a))),
            // Larger first, older first on ties.
            Ordering::Less => ordered.sort_by(|a, b| rs_replicas(b).cmp(&rs_replicas(a)).then_with(|| by_creation(a, b))),
            Ordering::Equal => {}
        }
        let mut sizes: HashMap<String, i32> = HashMap::new();
        let mut added = 0;
        for rs in &ordered {
            let p = if to_add != 0 { proportion(rs, &self.d, to_add, added) } else { 0 };
            sizes.insert(rs.name_any(), rs_replicas(rs) + p);
            added += p;
        }
        for (i, rs) in ordered.iter().enumerate() {
            let mut size = sizes.get(&rs.name_any()).copied().unwrap_or(0);
            if i == 0 && to_add != 0 {
                size = (size + to_add - added).max(0);
            }
            self.scale_rs(rs, size).await?;
        }
        Ok(())
    }

    // ---- rolling update --------------------------------------------------------------------

    async fn rollout_rolling(&mut self, rs_list: &[ReplicaSet]) -> Result<Action, DeploymentError> {
        let (new, mut old) = self.all_replicasets(rs_list, true).await?;
        let Some(mut new) = new else { return Ok(Action::await_change()) };
        // Scale the new replica set up as far as maxSurge allows.
        let all: Vec<&ReplicaSet> = old.iter().chain(std::iter::once(&new)).collect();
        let desired = d_replicas(&self.d);
        let target = if rs_replicas(&new) > desired { desired } else { self.new_rs_new_replicas(&all, &new) };
        if target != rs_replicas(&new) {
            let (scaled, updated) = self.scale_rs(&new, target).await?;
            new = updated;
            if scaled {
                return self.sync_rollout_status(Some(&new), &old).await;
            }
        }
        // Scale the old ones down as far as maxUnavailable allows.
        if self.reconcile_old(&mut old, &new).await? {
            return self.sync_rollout_status(Some(&new), &old).await;
        }
        if deployment_complete(&self.d, &self.d.status.clone().unwrap_or_default()) {
            self.cleanup(&old).await?;
        }
        self.sync_rollout_status(Some(&new), &old).await
    }

    /// `reconcileOldReplicaSets`: true if anything was scaled down.
    async fn reconcile_old(&mut self, old: &mut [ReplicaSet], new: &ReplicaSet) -> Result<bool, DeploymentError> {
        let old_refs: Vec<&ReplicaSet> = old.iter().collect();
        if total_spec(&old_refs) == 0 {
            return Ok(false);
        }
        let all_pods = total_spec(&old_refs) + rs_replicas(new);
        let min_available = d_replicas(&self.d) - max_unavailable(&self.d);
        let new_unavailable = rs_replicas(new) - rs_available(new);
        let max_scaled_down = all_pods - min_available - new_unavailable;
        if max_scaled_down <= 0 {
            return Ok(false);
        }
        old.sort_by(by_creation);
        // First the unhealthy replicas of old replica sets, oldest first.
        let mut cleaned = 0;
        for rs in old.iter_mut() {
            if cleaned >= max_scaled_down {
                break;
            }
            let replicas = rs_replicas(rs);
            let available = rs_available(rs);
            if replicas == 0 || replicas <= available {
                continue;
            }
            let down = (max_scaled_down - cleaned).min(replicas - available);
            let (_, updated) = self.scale_rs(rs, replicas - down).await?;
            *rs = updated;
            cleaned += down;
        }
        // Then healthy ones, as long as enough stay available. A replica set's available
        // count is capped by its spec: a status written before a scale-down still counts
        // the pods being deleted, and trusting it would take availability below the floor.
        let capped = |r: &ReplicaSet| rs_available(r).min(rs_replicas(r));
        let available: i32 = old.iter().map(capped).sum::<i32>() + capped(new);
        let mut scaled = 0;
        if available > min_available {
            let total = available - min_available;
            for rs in old.iter_mut() {
                if scaled >= total {
                    break;
                }
                let replicas = rs_replicas(rs);
                if replicas == 0 {
                    continue;
                }
                let down = replicas.min(total - scaled);
                let (_, updated) = self.scale_rs(rs, replicas - down).await?;
                *rs = updated;
                scaled += down;
            }
        }
        Ok(cleaned + scaled > 0)
    }

    // ---- recreate ----------------------------------------------------------------------------

    async fn rollout_recreate(&mut self, rs_list: &[ReplicaSet]) -> Result<Action, DeploymentError> {
        let (mut new, mut old) = self.all_replicasets(rs_list, false).await?;
        let mut scaled_down = false;
        for rs in old.iter_mut().filter(|r| rs_replicas(r) != 0) {
            let (_, updated) = self.scale_rs(rs, 0).await?;
            *rs = updated;
            scaled_down = true;
        }
        if scaled_down || self.old_pods_running(new.as_ref(), &old) {
            return self.sync_rollout_status(new.as_ref(), &old).await;
        }
        if new.is_none() {
            let (n, o) = self.all_replicasets(rs_list, true).await?;
            new = n;
            old = o;
        }
        if let Some(n) = &new {
            let (_, updated) = self.scale_rs(n, d_replicas(&self.d)).await?;
            new = Some(updated);
        }
        if deployment_complete(&self.d, &self.d.status.clone().unwrap_or_default()) {
            self.cleanup(&old).await?;
        }
        self.sync_rollout_status(new.as_ref(), &old).await
    }

    /// Whether pods of old replica sets still exist (and are not finished).
    fn old_pods_running(&self, new: Option<&ReplicaSet>, old: &[ReplicaSet]) -> bool {
        if old.iter().map(rs_status_replicas).sum::<i32>() > 0 {
            return true;
        }
        let ns = self.ns();
        let old_uids: Vec<&str> = old.iter().filter_map(|r| r.metadata.uid.as_deref()).collect();
        let new_uid = new.and_then(|n| n.metadata.uid.as_deref());
        self.st.pods.state().iter().any(|p| {
            p.metadata.namespace.as_deref() == Some(ns.as_str())
                && podcontrol::controller_of(&p.metadata).is_some_and(|r| old_uids.contains(&r.uid.as_str()) && Some(r.uid.as_str()) != new_uid)
                && !matches!(p.status.as_ref().and_then(|s| s.phase.as_deref()), Some("Succeeded" | "Failed"))
        })
    }

    // ---- history and status ------------------------------------------------------------------

    /// Deletes the oldest unused replica sets beyond `revisionHistoryLimit`.
    async fn cleanup(&self, old: &[ReplicaSet]) -> Result<(), DeploymentError> {
        let Some(limit) = self.d.spec.as_ref().and_then(|s| s.revision_history_limit) else { return Ok(()) };
        let mut cleanable: Vec<&ReplicaSet> = old.iter().filter(|r| r.metadata.deletion_timestamp.is_none()).collect();
        let diff = cleanable.len() as i64 - i64::from(limit.max(0));
        if diff <= 0 {
            return Ok(());
        }
        cleanable.sort_by(|a, b| revision(a).cmp(&revision(b)).then_with(|| by_creation(a, b)));
        for rs in cleanable.into_iter().take(usize::try_from(diff).unwrap_or(0)) {
            let observed = rs.status.as_ref().and_then(|s| s.observed_generation).unwrap_or(0);
            if rs_status_replicas(rs) != 0 || rs_replicas(rs) != 0 || rs.metadata.generation.unwrap_or(0) > observed {
                continue;
            }
            info!(replicaset = %rs.name_any(), revision = revision(rs), "deleting old replica set");
            match self.rs_api().delete(&rs.name_any(), &DeleteParams::default()).await {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(source) => return Err(DeploymentError::DeleteReplicaSet { name: rs.name_any(), source }),
            }
        }
        Ok(())
    }

    /// `calculateStatus`.
    fn calculate_status(&self, new: Option<&ReplicaSet>, old: &[ReplicaSet]) -> DeploymentStatus {
        let all: Vec<&ReplicaSet> = old.iter().chain(new).collect();
        let available: i32 = all.iter().map(|r| rs_available(r)).sum();
        let total = total_spec(&all);
        let mut status = DeploymentStatus {
            observed_generation: self.d.metadata.generation,
            replicas: Some(all.iter().map(|r| rs_status_replicas(r)).sum()),
            updated_replicas: Some(new.map_or(0, rs_status_replicas)),
            ready_replicas: Some(all.iter().map(|r| rs_ready(r)).sum()),
            available_replicas: Some(available),
            unavailable_replicas: Some((total - available).max(0)),
            collision_count: self.d.status.as_ref().and_then(|s| s.collision_count),
            conditions: self.d.status.as_ref().and_then(|s| s.conditions.clone()),
            terminating_replicas: None,
        };
        if available >= d_replicas(&self.d) - max_unavailable(&self.d) {
            set_condition(&mut status, new_condition(AVAILABLE, "True", "MinimumReplicasAvailable", "Deployment has minimum availability.".into(), self.now));
        } else {
            set_condition(&mut status, new_condition(AVAILABLE, "False", "MinimumReplicasUnavailable", "Deployment does not have minimum availability.".into(), self.now));
        }
        status
    }

    fn same_status(&self, s: &DeploymentStatus) -> bool {
        let mut cur = self.d.status.clone().unwrap_or_default();
        let mut s = s.clone();
        // terminatingReplicas is not computed here.
        cur.terminating_replicas = None;
        s.terminating_replicas = None;
        if cur.conditions.as_ref().is_some_and(Vec::is_empty) {
            cur.conditions = None;
        }
        if s.conditions.as_ref().is_some_and(Vec::is_empty) {
            s.conditions = None;
        }
        cur == s
    }

    async fn sync_status_only(&mut self, new: Option<&ReplicaSet>, old: &[ReplicaSet]) -> Result<(), DeploymentError> {
        let status = self.calculate_status(new, old);
        if !self.same_status(&status) {
            self.write_status(status).await?;
        }
        Ok(())
    }

    /// `syncRolloutStatus`: the status plus the Progressing condition; comes back when the
    /// progress deadline would pass.
    async fn sync_rollout_status(&mut self, new: Option<&ReplicaSet>, old: &[ReplicaSet]) -> Result<Action, DeploymentError> {
        let mut status = self.calculate_status(new, old);
        let deadline = progress_deadline(&self.d);
        if deadline.is_none() {
            remove_condition(&mut status, PROGRESSING);
        }
        let current = self.d.status.as_ref().and_then(|s| condition(s, PROGRESSING)).cloned();
        let complete_before = status.replicas == status.updated_replicas
            && current.as_ref().is_some_and(|c| c.reason.as_deref() == Some("NewReplicaSetAvailable"));
        let new_name = new.map(|n| n.name_any());
        if deadline.is_some() && !complete_before {
            if deployment_complete(&self.d, &status) {
                let msg = match &new_name {
                    Some(n) => format!("ReplicaSet {n:?} has successfully progressed."),
                    None => format!("Deployment {:?} has successfully progressed.", self.d.name_any()),
                };
                set_condition(&mut status, new_condition(PROGRESSING, "True", "NewReplicaSetAvailable", msg, self.now));
            } else if deployment_progressing(&self.d, &status) {
                let msg = match &new_name {
                    Some(n) => format!("ReplicaSet {n:?} is progressing."),
                    None => format!("Deployment {:?} is progressing.", self.d.name_any()),
                };
                let mut c = new_condition(PROGRESSING, "True", "ReplicaSetUpdated", msg, self.now);
                // Progress refreshes lastUpdateTime even when the reason is unchanged.
                if let Some(cur) = &current {
                    if cur.status == "True" {
                        c.last_transition_time = cur.last_transition_time.clone();
                    }
                    remove_condition(&mut status, PROGRESSING);
                }
                set_condition(&mut status, c);
            } else if timed_out(&self.d, &status, self.now) {
                let msg = match &new_name {
                    Some(n) => format!("ReplicaSet {n:?} has timed out progressing."),
                    None => format!("Deployment {:?} has timed out progressing.", self.d.name_any()),
                };
                set_condition(&mut status, new_condition(PROGRESSING, "False", "ProgressDeadlineExceeded", msg, self.now));
            }
        }
        if !self.same_status(&status) {
            self.write_status(status.clone()).await?;
        }
        // requeueStuckDeployment: look again when the deadline would pass.
        let Some(deadline) = deadline else { return Ok(Action::await_change()) };
        let Some(cond) = condition(&status, PROGRESSING) else { return Ok(Action::await_change()) };
        if deployment_complete(&self.d, &status) || cond.reason.as_deref() == Some("ProgressDeadlineExceeded") {
            return Ok(Action::await_change());
        }
        let since = cond.last_update_time.as_ref().map_or(self.now.as_second(), |t| t.0.as_second());
        let after = since + i64::from(deadline) - self.now.as_second();
        Ok(Action::requeue(Duration::from_secs(u64::try_from(after.max(1)).unwrap_or(1))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::apps::v1::{DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment};

    fn deployment(replicas: i32, surge: IntOrString, unavailable: IntOrString) -> Deployment {
        Deployment {
            spec: Some(DeploymentSpec {
                replicas: Some(replicas),
                strategy: Some(DeploymentStrategy {
                    type_: Some("RollingUpdate".into()),
                    rolling_update: Some(RollingUpdateDeployment { max_surge: Some(surge), max_unavailable: Some(unavailable) }),
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn surge_rounds_up_and_unavailable_down() {
        let pct = |s: &str| IntOrString::String(s.into());
        assert_eq!(fenceposts(&deployment(10, pct("25%"), pct("25%"))), Ok((3, 2)));
        assert_eq!(fenceposts(&deployment(3, pct("25%"), pct("25%"))), Ok((1, 0)));
        assert_eq!(fenceposts(&deployment(3, IntOrString::Int(0), IntOrString::Int(0))), Ok((0, 1)));
        assert_eq!(fenceposts(&deployment(4, IntOrString::Int(2), pct("50%"))), Ok((2, 2)));
        assert!(fenceposts(&deployment(4, pct("x"), pct("50%"))).is_err());
    }

    #[test]
    fn template_hash_is_stable_and_ignores_its_own_label() {
        let mut t = PodTemplateSpec::default();
        t.metadata.get_or_insert_with(Default::default).labels = Some([("app".to_string(), "web".to_string())].into());
        let h = template_hash(&t, None);
        assert_eq!(h.len(), 10);
        assert!(h.chars().all(|c| "bcdfghjklmnpqrstvwxz2456789".contains(c)));
        assert_eq!(h, template_hash(&t, None));
        assert_ne!(h, template_hash(&t, Some(1)));
        let mut labelled = t.clone();
        if let Some(l) = labelled.metadata.as_mut().and_then(|m| m.labels.as_mut()) {
            l.insert(POD_TEMPLATE_HASH.into(), h.clone());
        }
        assert!(equal_ignore_hash(&t, Some(&labelled)));
        assert_eq!(h, template_hash(&labelled, None));
    }
}
