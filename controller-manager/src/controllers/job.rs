//! The Job controller: runs a Job's pods to `completions` successes with at most
//! `parallelism` at a time, in NonIndexed or Indexed mode (each index 0..completions-1
//! succeeds once; pods carry `batch.kubernetes.io/job-completion-index` and the hostname
//! `<job>-<index>`); retries failed pods with an exponential backoff (10 s doubling, at
//! most 6 min) until `backoffLimit` failures; stops at `activeDeadlineSeconds`; deletes
//! the active pods of a suspended Job. As in Kubernetes 1.33 a Job that met its success
//! criteria or its failure target first gets `SuccessCriteriaMet` / `FailureTarget`, and
//! `Complete` / `Failed` once none of its pods is left running.
//!
//! Succeeded and failed counts come from the Job's pods, kept monotonic across pods that
//! vanish (Kubernetes tracks them with a pod finalizer and `uncountedTerminatedPods`;
//! this controller does not), and completed indexes accumulate in `completedIndexes`.

use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;
use std::time::Duration;

use apimachinery::labels::Selector;
use futures::channel::mpsc;
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use k8s_openapi::api::batch::v1::{Job, JobCondition, JobStatus, UncountedTerminatedPods};
use k8s_openapi::api::core::v1::{EnvVar, EnvVarSource, ObjectFieldSelector, Pod, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::controller::{self, Action};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Resource, ResourceExt};
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, info_span, warn, Instrument};

use super::podcontrol::{self, Claimer, Expectations, PodControlError, BURST_REPLICAS};
use super::{Context, ControllerError};

/// The annotation and label holding an Indexed Job pod's completion index.
pub const COMPLETION_INDEX: &str = "batch.kubernetes.io/job-completion-index";
/// The longest wait between retries of failed pods (Kubernetes' `MaxJobPodFailureBackOff`).
pub const MAX_BACKOFF: Duration = Duration::from_secs(6 * 60);

/// Why a Job sync failed (it is retried).
#[derive(Debug, thiserror::Error)]
pub enum JobError {
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

struct State {
    client: kube::Client,
    pods: Store<Pod>,
    expectations: Arc<Expectations>,
    backoff_base: Duration,
    events: component_base::events::EventSink,
}

/// Starts the Job controller.
pub fn start(ctx: Context, shutdown: CancellationToken) -> BoxFuture<'static, Result<(), ControllerError>> {
    run(ctx, shutdown).boxed()
}

async fn run(ctx: Context, shutdown: CancellationToken) -> Result<(), ControllerError> {
    let client = ctx.client.clone();
    let expectations = Arc::new(Expectations::default());
    let (job_reader, job_writer) = reflector::store::<Job>();
    let (pod_reader, pod_writer) = reflector::store::<Pod>();
    let (tx, rx) = mpsc::unbounded::<ObjectRef<Job>>();

    let pod_stream = reflector::reflector(pod_writer, watcher(Api::<Pod>::all(client.clone()), watcher::Config::default()).default_backoff());
    tokio::spawn(watch_pods(pod_stream, expectations.clone(), tx, shutdown.clone()));

    let job_stream = reflector::reflector(job_writer, watcher(Api::<Job>::all(client.clone()), watcher::Config::default()).default_backoff());
    let exp = expectations.clone();
    let job_refs = job_stream.filter_map(move |ev| {
        let out = match ev {
            Ok(watcher::Event::Apply(o) | watcher::Event::InitApply(o)) => Some(Ok(ObjectRef::from_obj(&o))),
            Ok(watcher::Event::Delete(o)) => {
                exp.forget(&podcontrol::key_of(&o.metadata));
                None
            }
            Ok(_) => None,
            Err(e) => Some(Err(e)),
        };
        futures::future::ready(out)
    });
    let queue = futures::stream::select(job_refs, rx.map(Ok::<_, watcher::Error>));

    // Act only once the pods are known, or a first sync would create them all again.
    tokio::select! {
        _ = shutdown.cancelled() => return Ok(()),
        r = pod_reader.wait_until_ready() => r.map_err(|e| ControllerError::Config(e.to_string()))?,
    }
    let state = Arc::new(State { client, pods: pod_reader, expectations, backoff_base: ctx.config.job_pod_failure_backoff, events: ctx.events("job-controller") });
    let applier = controller::applier(
        |job, st| Box::pin(reconcile(job, st)),
        |job: Arc<Job>, err: &JobError, _| {
            warn!(controller = "job", object = %podcontrol::key_of(&job.metadata), error = %err, "sync failed");
            Action::requeue(Duration::from_millis(500))
        },
        state,
        job_reader,
        queue,
        controller::Config::default(),
    );
    super::drive("job", applier, &shutdown).await
}

/// Consumes the pod watch: records creations and deletions against expectations and
/// enqueues the pod's Job.
async fn watch_pods(
    stream: impl futures::Stream<Item = Result<watcher::Event<Pod>, watcher::Error>>,
    expectations: Arc<Expectations>,
    tx: mpsc::UnboundedSender<ObjectRef<Job>>,
    shutdown: CancellationToken,
) {
    let mut seen: HashSet<String> = HashSet::new();
    let mut stream = std::pin::pin!(stream);
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
        let Some(owner) = podcontrol::controller_of(&pod.metadata).filter(|r| r.kind == "Job" && r.api_version.starts_with("batch/")) else {
            continue;
        };
        let ns = pod.metadata.namespace.clone().unwrap_or_default();
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let key = format!("{ns}/{}", owner.name);
        // A pod first seen (also in a re-list after a watch gap) is a creation seen.
        let first = if deleted {
            seen.remove(&uid);
            false
        } else {
            seen.insert(uid.clone())
        };
        if first {
            expectations.creation_observed(&key);
        }
        if deleted || pod.metadata.deletion_timestamp.is_some() {
            expectations.deletion_observed(&key, &uid);
        }
        let _ = tx.unbounded_send(ObjectRef::new(&owner.name).within(&ns));
    }
}

async fn reconcile(job: Arc<Job>, st: Arc<State>) -> Result<Action, JobError> {
    let key = podcontrol::key_of(&job.metadata);
    let span = info_span!("sync", controller = "job", object = %key);
    sync(job, st, key).instrument(span).await
}

fn phase(p: &Pod) -> Option<&str> {
    p.status.as_ref().and_then(|s| s.phase.as_deref())
}

/// The condition of `type_` if it is True.
fn condition<'a>(status: &'a JobStatus, type_: &str) -> Option<&'a JobCondition> {
    status.conditions.iter().flatten().find(|c| c.type_ == type_ && c.status == "True")
}

/// Whether the Job finished (a `Complete` or `Failed` condition is True).
pub fn is_finished(job: &Job) -> bool {
    job.status.as_ref().is_some_and(|s| condition(s, "Complete").is_some() || condition(s, "Failed").is_some())
}

/// When the Job finished, if it did: `completionTime`, else the finishing condition's
/// transition time.
pub fn finish_time(job: &Job) -> Option<Timestamp> {
    let status = job.status.as_ref()?;
    let cond = condition(status, "Complete").or_else(|| condition(status, "Failed"))?;
    status.completion_time.as_ref().map(|t| t.0).or_else(|| cond.last_transition_time.as_ref().map(|t| t.0))
}

/// Sets condition `type_` to `status` (keeping the transition time if it did not change).
fn set_condition(conds: &mut Vec<JobCondition>, type_: &str, status: &str, reason: &str, message: &str, now: Timestamp) {
    let fresh = JobCondition {
        type_: type_.into(),
        status: status.into(),
        reason: Some(reason.into()),
        message: Some(message.into()),
        last_probe_time: Some(Time(now)),
        last_transition_time: Some(Time(now)),
    };
    match conds.iter_mut().find(|c| c.type_ == type_) {
        Some(c) if c.status == status => {}
        Some(c) => *c = fresh,
        None => conds.push(fresh),
    }
}

/// The completion index of an Indexed Job's pod.
fn index_of(p: &Pod) -> Option<i32> {
    p.metadata.annotations.as_ref()?.get(COMPLETION_INDEX)?.parse().ok()
}

/// When a finished pod finished: its containers' latest finish, else its last condition
/// change, else its creation.
fn finished_at(p: &Pod) -> Option<Timestamp> {
    let status = p.status.as_ref();
    let containers = status.and_then(|s| s.container_statuses.as_ref()).into_iter().flatten();
    containers
        .filter_map(|c| c.state.as_ref()?.terminated.as_ref()?.finished_at.as_ref().map(|t| t.0))
        .max()
        .or_else(|| status.and_then(|s| s.conditions.as_ref()).into_iter().flatten().filter_map(|c| c.last_transition_time.as_ref().map(|t| t.0)).max())
        .or_else(|| p.metadata.creation_timestamp.as_ref().map(|t| t.0))
}

/// Parses `completedIndexes` ("1,3-5,7").
pub fn parse_indexes(s: &str) -> BTreeSet<i32> {
    let mut out = BTreeSet::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                if let (Ok(a), Ok(b)) = (a.parse::<i32>(), b.parse::<i32>()) {
                    out.extend(a..=b);
                }
            }
            None => out.extend(part.parse::<i32>().ok()),
        }
    }
    out
}

/// Formats indexes as `completedIndexes` does: ascending, runs collapsed ("1,3-5,7").
pub fn format_indexes(set: &BTreeSet<i32>) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut run: Option<(i32, i32)> = None;
    for &i in set {
        run = match run {
            Some((a, b)) if i == b + 1 => Some((a, i)),
            Some(r) => {
                parts.push(range_text(r));
                Some((i, i))
            }
            None => Some((i, i)),
        };
    }
    parts.extend(run.map(range_text));
    parts.join(",")
}

fn range_text((a, b): (i32, i32)) -> String {
    if a == b {
        a.to_string()
    } else {
        format!("{a}-{b}")
    }
}

/// The wait before the next pod after `failures` consecutive failures (10 s, 20 s, 40 s…
/// for a 10 s base, at most [`MAX_BACKOFF`]).
pub fn backoff_delay(base: Duration, failures: u32) -> Duration {
    if failures == 0 {
        return Duration::ZERO;
    }
    let factor = 1u32.checked_shl(failures - 1).unwrap_or(u32::MAX);
    base.checked_mul(factor).unwrap_or(MAX_BACKOFF).min(MAX_BACKOFF)
}

fn count(n: usize) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

fn secs(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}

async fn sync(job: Arc<Job>, st: Arc<State>, key: String) -> Result<Action, JobError> {
    let Some(spec) = job.spec.as_ref() else { return Ok(Action::await_change()) };
    if is_finished(&job) || job.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let now = Timestamp::now();
    let ns = job.metadata.namespace.clone().unwrap_or_default();
    let name = job.name_any();
    let old = job.status.clone().unwrap_or_default();
    let sel = serde_json::to_value(&spec.selector).map_err(|e| JobError::InvalidSelector { key: key.clone(), reason: e.to_string() })?;
    let selector = if spec.selector.is_some() {
        Selector::from_label_selector(&sel).map_err(|e| JobError::InvalidSelector { key: key.clone(), reason: e.to_string() })?
    } else {
        Selector::nothing()
    };

    let candidates: Vec<Arc<Pod>> = st.pods.state().into_iter().filter(|p| p.metadata.namespace.as_deref() == Some(ns.as_str())).collect();
    let present: std::collections::HashSet<&str> = candidates.iter().filter_map(|p| p.metadata.uid.as_deref()).collect();
    st.expectations.observe_gone(&key, |uid| present.contains(uid));
    let satisfied = st.expectations.satisfied(&key);
    let client = st.client.clone();
    let claimer = Claimer { owner: &*job, selector: &selector };
    let pods = podcontrol::claim(|ns| Api::<Pod>::namespaced(client.clone(), ns), &claimer, candidates)
        .await
        .map_err(|source| JobError::Claim { key: key.clone(), source })?;

    let active: Vec<&Arc<Pod>> = pods.iter().filter(|p| podcontrol::is_active(p)).collect();
    let terminating = pods.iter().filter(|p| p.metadata.deletion_timestamp.is_some() && !matches!(phase(p), Some("Succeeded" | "Failed"))).count();
    let succeeded_pods: Vec<&Arc<Pod>> = pods.iter().filter(|p| phase(p) == Some("Succeeded")).collect();
    let failed_pods: Vec<&Arc<Pod>> = pods.iter().filter(|p| phase(p) == Some("Failed")).collect();

    let indexed = spec.completion_mode.as_deref() == Some("Indexed");
    let parallelism = spec.parallelism.unwrap_or(1).max(0);
    let backoff_limit = spec.backoff_limit.unwrap_or(6);
    let suspended = spec.suspend.unwrap_or(false);

    let mut completed: BTreeSet<i32> = old.completed_indexes.as_deref().map(parse_indexes).unwrap_or_default();
    let succeeded = if indexed {
        let limit = spec.completions.unwrap_or(0);
        completed.extend(succeeded_pods.iter().filter_map(|p| index_of(p)).filter(|i| (0..limit).contains(i)));
        count(completed.len())
    } else {
        old.succeeded.unwrap_or(0).max(count(succeeded_pods.len()))
    };
    let failed = old.failed.unwrap_or(0).max(count(failed_pods.len()));

    let mut status = old.clone();
    let mut conds = old.conditions.clone().unwrap_or_default();
    let mut requeue: Option<Duration> = None;

    // Resuming resets the start time (and so the active deadline), as in Kubernetes.
    if !suspended && old.conditions.iter().flatten().any(|c| c.type_ == "Suspended" && c.status == "True") {
        set_condition(&mut conds, "Suspended", "False", "JobResumed", "Job resumed", now);
        status.start_time = Some(Time(now));
        st.events.normal(job.object_ref(&()), "Resumed", "Job resumed");
    }
    if !suspended && status.start_time.is_none() {
        status.start_time = Some(Time(now));
    }

    // Success or failure, once decided, is kept.
    let mut target = if condition(&old, "FailureTarget").is_some() {
        Some(false)
    } else if condition(&old, "SuccessCriteriaMet").is_some() {
        Some(true)
    } else {
        None
    };
    if target.is_none() {
        let deadline = spec.active_deadline_seconds.zip(status.start_time.as_ref()).map(|(ads, st)| st.0.as_second().saturating_add(ads));
        let complete = match spec.completions {
            Some(c) => succeeded >= c,
            None => succeeded > 0 && active.is_empty(),
        };
        if failed > backoff_limit {
            set_condition(&mut conds, "FailureTarget", "True", "BackoffLimitExceeded", "Job has reached the specified backoff limit", now);
            target = Some(false);
        } else if complete {
            set_condition(&mut conds, "SuccessCriteriaMet", "True", "CompletionsReached", "Reached expected number of succeeded pods", now);
            target = Some(true);
        } else if let (false, Some(deadline)) = (suspended, deadline) {
            if now.as_second() >= deadline {
                set_condition(&mut conds, "FailureTarget", "True", "DeadlineExceeded", "Job was active longer than specified deadline", now);
                target = Some(false);
            } else {
                requeue = Some(Duration::from_secs(u64::try_from(deadline - now.as_second()).unwrap_or(1).max(1)));
            }
        }
    }

    let mut manage = Ok(());
    match target {
        Some(success) => {
            // Stop whatever still runs; finish once nothing does.
            if !active.is_empty() {
                manage = delete_pods(&job, &st, &key, &ns, &active).await;
            } else if terminating == 0 {
                if success {
                    set_condition(&mut conds, "Complete", "True", "CompletionsReached", "Reached expected number of succeeded pods", now);
                    status.completion_time = Some(Time(now));
                    info!(succeeded, "job complete");
                    if condition(&old, "Complete").is_none() {
                        st.events.normal(job.object_ref(&()), "Completed", "Job completed");
                    }
                } else if let Some(reason_cond) = conds.iter().find(|c| c.type_ == "FailureTarget").cloned() {
                    let reason = reason_cond.reason.unwrap_or_default();
                    let message = reason_cond.message.unwrap_or_default();
                    set_condition(&mut conds, "Failed", "True", &reason, &message, now);
                    info!(failed, reason, "job failed");
                    if condition(&old, "Failed").is_none() {
                        st.events.warning(job.object_ref(&()), &reason, message);
                    }
                }
            }
        }
        None if suspended => {
            if !old.conditions.iter().flatten().any(|c| c.type_ == "Suspended" && c.status == "True") {
                st.events.normal(job.object_ref(&()), "Suspended", "Job suspended");
            }
            set_condition(&mut conds, "Suspended", "True", "JobSuspended", "Job suspended", now);
            if !active.is_empty() {
                manage = delete_pods(&job, &st, &key, &ns, &active).await;
            }
        }
        None if satisfied => {
            // Consecutive failures since the last success decide the backoff.
            let last_success = succeeded_pods.iter().filter_map(|p| finished_at(p)).max();
            let recent: Vec<Timestamp> = failed_pods.iter().filter_map(|p| finished_at(p)).filter(|t| last_success.is_none_or(|s| *t > s)).collect();
            let failures = u32::try_from(recent.len()).unwrap_or(u32::MAX);
            let wait = recent.iter().max().and_then(|last| {
                let ready_at = last.as_second().saturating_add(secs(backoff_delay(st.backoff_base, failures)));
                let left_ms = (ready_at.saturating_mul(1000)).saturating_sub(now.as_millisecond());
                (left_ms > 0).then(|| Duration::from_millis(u64::try_from(left_ms).unwrap_or(0)))
            });
            let plan = plan_pods(&job, indexed, parallelism, succeeded, &completed, &active);
            if !plan.delete.is_empty() {
                let victims: Vec<&Arc<Pod>> = plan.delete.clone();
                manage = delete_pods(&job, &st, &key, &ns, &victims).await;
            } else if !plan.create.is_empty() {
                match wait {
                    Some(w) => {
                        debug!(wait_ms = w.as_millis(), failures, "backing off before new pods");
                        requeue = Some(requeue.map_or(w, |r| r.min(w)));
                    }
                    None => manage = create_pods(&job, &st, &key, &ns, &name, &plan.create).await,
                }
            }
        }
        None => {}
    }

    status.active = Some(count(active.len()));
    status.ready = Some(count(active.iter().filter(|p| podcontrol::is_ready(p)).count()));
    status.terminating = Some(count(terminating));
    status.succeeded = Some(succeeded);
    status.failed = Some(failed);
    if indexed {
        status.completed_indexes = Some(format_indexes(&completed));
    }
    status.uncounted_terminated_pods = Some(UncountedTerminatedPods::default());
    status.conditions = (!conds.is_empty()).then_some(conds);
    if status != old {
        let api = Api::<Job>::namespaced(st.client.clone(), &ns);
        // Guarded by the resourceVersion read: a status computed from a stale cache is
        // refused (409) and recomputed on the retry.
        let patch = json!({ "metadata": {"resourceVersion": job.metadata.resource_version}, "status": status });
        match api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch)).await {
            Ok(_) => debug!(active = active.len(), succeeded, failed, "status updated"),
            Err(kube::Error::Api(s)) if s.code == 404 => return Ok(Action::await_change()),
            Err(kube::Error::Api(s)) if s.code == 409 => {
                debug!("status computed from a stale job; retrying");
                return Ok(Action::requeue(Duration::from_millis(200)));
            }
            Err(source) => return Err(JobError::UpdateStatus { key, source }),
        }
    }
    manage?;
    Ok(requeue.map_or_else(Action::await_change, Action::requeue))
}

/// What to change: pods to create (their completion index, if Indexed) and to delete.
struct Plan<'a> {
    create: Vec<Option<i32>>,
    delete: Vec<&'a Arc<Pod>>,
}

/// Decides the pods to create or delete so that the right number stays active
/// (`manageJob`).
fn plan_pods<'a>(job: &Job, indexed: bool, parallelism: i32, succeeded: i32, completed: &BTreeSet<i32>, active: &[&'a Arc<Pod>]) -> Plan<'a> {
    let completions = job.spec.as_ref().and_then(|s| s.completions);
    let mut delete: Vec<&Arc<Pod>> = Vec::new();
    let mut keep: Vec<&Arc<Pod>> = Vec::new();
    let mut held: BTreeSet<i32> = BTreeSet::new();
    if indexed {
        // Pods without a valid index, with a completed index or duplicating another go.
        let limit = completions.unwrap_or(0);
        for p in active {
            match index_of(p) {
                Some(i) if (0..limit).contains(&i) && !completed.contains(&i) && held.insert(i) => keep.push(p),
                _ => delete.push(p),
            }
        }
    } else {
        keep = active.to_vec();
    }
    let want = match completions {
        Some(c) => parallelism.min(c.saturating_sub(succeeded)).max(0),
        None if succeeded > 0 => count(keep.len()),
        None => parallelism,
    };
    let want = usize::try_from(want).unwrap_or(0);
    let mut create = Vec::new();
    if keep.len() > want {
        let mut ranked = keep.clone();
        ranked.sort_by(|a, b| podcontrol::deletion_order(a, b));
        delete.extend(ranked.into_iter().take(keep.len() - want));
    } else if keep.len() < want {
        let n = (want - keep.len()).min(BURST_REPLICAS);
        if indexed {
            let limit = completions.unwrap_or(0);
            create = (0..limit).filter(|i| !completed.contains(i) && !held.contains(i)).take(n).map(Some).collect();
        } else {
            create = vec![None; n];
        }
    }
    Plan { create, delete }
}

/// A pod for the Job, with its completion index when Indexed.
fn pod_for(job: &Job, ns: &str, name: &str, index: Option<i32>) -> Option<Pod> {
    let template: &PodTemplateSpec = &job.spec.as_ref()?.template;
    let owner = podcontrol::controller_reference(job);
    let Some(i) = index else { return Some(podcontrol::pod_from_template(template, name, ns, owner)) };
    let mut pod = podcontrol::pod_from_template(template, &format!("{name}-{i}"), ns, owner);
    pod.metadata.annotations.get_or_insert_with(Default::default).insert(COMPLETION_INDEX.into(), i.to_string());
    pod.metadata.labels.get_or_insert_with(Default::default).insert(COMPLETION_INDEX.into(), i.to_string());
    if let Some(spec) = pod.spec.as_mut() {
        if spec.hostname.as_deref().is_none_or(str::is_empty) {
            let mut host = format!("{name}-{i}");
            host.truncate(63);
            spec.hostname = Some(host.trim_end_matches('-').to_string());
        }
        let env = EnvVar {
            name: "JOB_COMPLETION_INDEX".into(),
            value: None,
            value_from: Some(EnvVarSource {
                field_ref: Some(ObjectFieldSelector { api_version: Some("v1".into()), field_path: format!("metadata.annotations['{COMPLETION_INDEX}']") }),
                ..Default::default()
            }),
        };
        for c in spec.containers.iter_mut().chain(spec.init_containers.iter_mut().flatten()) {
            let vars = c.env.get_or_insert_with(Vec::new);
            if !vars.iter().any(|v| v.name == env.name) {
                vars.push(env.clone());
            }
        }
    }
    Some(pod)
}

async fn create_pods(job: &Job, st: &State, key: &str, ns: &str, name: &str, indexes: &[Option<i32>]) -> Result<(), JobError> {
    let api = Api::<Pod>::namespaced(st.client.clone(), ns);
    st.expectations.expect_creations(key, indexes.len());
    info!(creating = indexes.len(), "too few active pods");
    let pp = PostParams::default();
    let results = futures::future::join_all(indexes.iter().map(|i| {
        let pod = pod_for(job, ns, name, *i);
        let api = &api;
        let pp = &pp;
        async move {
            match pod {
                Some(p) => api.create(pp, &p).await.map(|created| Some(created.name_any())),
                None => Ok(None),
            }
        }
    }))
    .await;
    let mut failure = None;
    for r in results {
        match r {
            Ok(Some(pod)) => st.events.normal(job.object_ref(&()), "SuccessfulCreate", format!("Created pod: {pod}")),
            Ok(None) => {}
            Err(e) => {
                st.expectations.creation_observed(key);
                st.events.warning(job.object_ref(&()), "FailedCreate", format!("Error creating: {}", super::api_error_message(&e)));
                failure = Some(e);
            }
        }
    }
    match failure {
        Some(source) => Err(JobError::CreatePods { key: key.to_string(), source }),
        None => Ok(()),
    }
}

async fn delete_pods(job: &Job, st: &State, key: &str, ns: &str, victims: &[&Arc<Pod>]) -> Result<(), JobError> {
    let api = Api::<Pod>::namespaced(st.client.clone(), ns);
    st.expectations.expect_deletions(key, victims.iter().map(|p| p.metadata.uid.clone().unwrap_or_default()));
    info!(deleting = victims.len(), "deleting active pods");
    let failure = podcontrol::delete_pods(&api, victims, &st.expectations, key, &st.events, &job.object_ref(&())).await;
    match failure {
        Some(source) => Err(JobError::DeletePods { key: key.to_string(), source }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::batch::v1::JobSpec;
    use k8s_openapi::api::core::v1::PodStatus;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    #[test]
    fn indexes_round_trip() {
        let set = parse_indexes("1,3-5,7");
        assert_eq!(set.iter().copied().collect::<Vec<_>>(), [1, 3, 4, 5, 7]);
        assert_eq!(format_indexes(&set), "1,3-5,7");
        assert_eq!(format_indexes(&BTreeSet::new()), "");
        assert_eq!(format_indexes(&[0, 1, 2].into_iter().collect()), "0-2");
    }

    #[test]
    fn backoff_doubles_up_to_six_minutes() {
        let base = Duration::from_secs(10);
        assert_eq!(backoff_delay(base, 0), Duration::ZERO);
        assert_eq!(backoff_delay(base, 1), Duration::from_secs(10));
        assert_eq!(backoff_delay(base, 2), Duration::from_secs(20));
        assert_eq!(backoff_delay(base, 4), Duration::from_secs(80));
        assert_eq!(backoff_delay(base, 6), Duration::from_secs(320));
        assert_eq!(backoff_delay(base, 7), MAX_BACKOFF);
        assert_eq!(backoff_delay(base, 60), MAX_BACKOFF);
    }

    fn job(completions: Option<i32>, parallelism: i32, indexed: bool) -> Job {
        Job {
            metadata: ObjectMeta { name: Some("j".into()), namespace: Some("ns".into()), uid: Some("u".into()), ..Default::default() },
            spec: Some(JobSpec {
                completions,
                parallelism: Some(parallelism),
                completion_mode: Some(if indexed { "Indexed" } else { "NonIndexed" }.into()),
                ..Default::default()
            }),
            status: None,
        }
    }

    fn running(index: Option<i32>) -> Arc<Pod> {
        let annotations = index.map(|i| [(COMPLETION_INDEX.to_string(), i.to_string())].into_iter().collect());
        Arc::new(Pod {
            metadata: ObjectMeta { annotations, ..Default::default() },
            spec: None,
            status: Some(PodStatus { phase: Some("Running".into()), ..Default::default() }),
        })
    }

    #[test]
    fn plans_non_indexed() {
        let j = job(Some(5), 2, false);
        let a = running(None);
        let plan = plan_pods(&j, false, 2, 0, &BTreeSet::new(), &[&a]);
        assert_eq!((plan.create.len(), plan.delete.len()), (1, 0));
        // Only one completion left: the extra active pod goes.
        let b = running(None);
        let plan = plan_pods(&j, false, 2, 4, &BTreeSet::new(), &[&a, &b]);
        assert_eq!((plan.create.len(), plan.delete.len()), (0, 1));
        // No completions: once one succeeded no more pods start.
        let j = job(None, 3, false);
        let plan = plan_pods(&j, false, 3, 1, &BTreeSet::new(), &[&a]);
        assert_eq!((plan.create.len(), plan.delete.len()), (0, 0));
    }

    #[test]
    fn plans_lowest_missing_indexes() {
        let j = job(Some(4), 3, true);
        let one = running(Some(1));
        let dup = running(Some(1));
        let completed: BTreeSet<i32> = [0].into_iter().collect();
        let plan = plan_pods(&j, true, 3, 1, &completed, &[&one, &dup]);
        assert_eq!(plan.create, [Some(2), Some(3)]);
        assert_eq!(plan.delete.len(), 1);
        let pod = pod_for(&j, "ns", "j", Some(2));
        let pod = pod.as_ref();
        assert_eq!(pod.and_then(|p| p.metadata.generate_name.clone()).as_deref(), Some("j-2-"));
        assert_eq!(pod.and_then(|p| p.metadata.labels.as_ref()).and_then(|l| l.get(COMPLETION_INDEX)).map(String::as_str), Some("2"));
    }
}
