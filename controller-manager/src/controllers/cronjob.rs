//! The CronJob controller (Kubernetes' `cronjob` v2): at each start time of the schedule
//! (five cron fields, `@hourly`-style macros, `CRON_TZ=`/`timeZone`) it creates a Job
//! named `<cronjob>-<start time in minutes since the epoch>` from `jobTemplate`,
//! annotated with `batch.kubernetes.io/cronjob-scheduled-timestamp`; honours
//! `concurrencyPolicy` (Allow, Forbid, Replace), `startingDeadlineSeconds` and `suspend`;
//! keeps `status.active`, `lastScheduleTime` and `lastSuccessfulTime`; and deletes the
//! oldest finished Jobs beyond `successfulJobsHistoryLimit` / `failedJobsHistoryLimit`.
//! The time logic is the pure [`schedule::Schedule::decide`], given "now".

pub mod schedule;

use std::sync::Arc;
use std::time::Duration;

use futures::channel::mpsc;
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use jiff::tz::TimeZone;
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, PropagationPolicy};
use kube::runtime::controller::{self, Action};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Resource, ResourceExt};
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, info_span, warn, Instrument};

use super::job;
use super::podcontrol;
use super::{Context, ControllerError};
use schedule::Schedule;

/// The annotation with the start time a Job was created for (RFC 3339, in the
/// CronJob's zone).
pub const SCHEDULED_TIMESTAMP: &str = "batch.kubernetes.io/cronjob-scheduled-timestamp";

/// Why a CronJob sync failed (it is retried).
#[derive(Debug, thiserror::Error)]
pub enum CronJobError {
    #[error("creating job {job} for {key}")]
    CreateJob {
        key: String,
        job: String,
        #[source]
        source: kube::Error,
    },
    #[error("deleting job {job} of {key}")]
    DeleteJob {
        key: String,
        job: String,
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
    jobs: Store<Job>,
    events: component_base::events::EventSink,
}

/// Starts the CronJob controller.
pub fn start(ctx: Context, shutdown: CancellationToken) -> BoxFuture<'static, Result<(), ControllerError>> {
    run(ctx, shutdown).boxed()
}

async fn run(ctx: Context, shutdown: CancellationToken) -> Result<(), ControllerError> {
    let client = ctx.client.clone();
    let (cj_reader, cj_writer) = reflector::store::<CronJob>();
    let (job_reader, job_writer) = reflector::store::<Job>();
    let (tx, rx) = mpsc::unbounded::<ObjectRef<CronJob>>();

    // Jobs: keep the store and enqueue the CronJob that controls each changed Job.
    let job_stream = reflector::reflector(job_writer, watcher(Api::<Job>::all(client.clone()), watcher::Config::default()).default_backoff());
    let stop = shutdown.clone();
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(job_stream.touched_objects());
        loop {
            let next = tokio::select! {
                _ = stop.cancelled() => return,
                n = stream.next() => n,
            };
            match next {
                None => return,
                Some(Err(e)) => debug!(error = %e, "job watch"),
                Some(Ok(j)) => {
                    if let Some(owner) = podcontrol::controller_of(&j.metadata).filter(|r| r.kind == "CronJob") {
                        let _ = tx.unbounded_send(ObjectRef::new(&owner.name).within(j.metadata.namespace.as_deref().unwrap_or_default()));
                    }
                }
            }
        }
    });

    let cj_stream = reflector::reflector(cj_writer, watcher(Api::<CronJob>::all(client.clone()), watcher::Config::default()).default_backoff());
    let queue = futures::stream::select(cj_stream.applied_objects().map(|r| r.map(|o| ObjectRef::from_obj(&o))), rx.map(Ok::<_, watcher::Error>));

    tokio::select! {
        _ = shutdown.cancelled() => return Ok(()),
        r = job_reader.wait_until_ready() => r.map_err(|e| ControllerError::Config(e.to_string()))?,
    }
    let state = Arc::new(State { client, jobs: job_reader, events: ctx.events("cronjob-controller") });
    let applier = controller::applier(
        |cj, st| Box::pin(reconcile(cj, st)),
        |cj: Arc<CronJob>, err: &CronJobError, _| {
            warn!(controller = "cronjob", object = %podcontrol::key_of(&cj.metadata), error = %err, "sync failed");
            Action::requeue(Duration::from_secs(1))
        },
        state,
        cj_reader,
        queue,
        controller::Config::default(),
    );
    super::drive("cronjob", applier, &shutdown).await
}

async fn reconcile(cj: Arc<CronJob>, st: Arc<State>) -> Result<Action, CronJobError> {
    let key = podcontrol::key_of(&cj.metadata);
    let span = info_span!("sync", controller = "cronjob", object = %key);
    sync(cj, st, key).instrument(span).await
}

/// The Job name for a start time: `<cronjob>-<minutes since the epoch>`.
pub fn job_name(cronjob: &str, scheduled: Timestamp) -> String {
    format!("{cronjob}-{}", scheduled.as_second().div_euclid(60))
}

/// A time as Go's RFC 3339 in `zone` ("2024-05-01T09:00:00+09:00", "Z" for UTC).
pub fn rfc3339_in(t: Timestamp, zone: &TimeZone) -> String {
    let z = t.to_zoned(zone.clone());
    if z.offset().seconds() == 0 {
        z.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
    } else {
        z.strftime("%Y-%m-%dT%H:%M:%S%:z").to_string()
    }
}

/// The Job a CronJob makes for `scheduled` (Kubernetes' `getJobFromTemplate2`).
pub fn job_for(cj: &CronJob, scheduled: Timestamp, zone: &TimeZone) -> Job {
    let template = cj.spec.as_ref().map(|s| s.job_template.clone()).unwrap_or_default();
    let tmeta = template.metadata.unwrap_or_default();
    let mut annotations = tmeta.annotations.unwrap_or_default();
    annotations.insert(SCHEDULED_TIMESTAMP.into(), rfc3339_in(scheduled, zone));
    Job {
        metadata: ObjectMeta {
            name: Some(job_name(&cj.name_any(), scheduled)),
            namespace: cj.metadata.namespace.clone(),
            labels: tmeta.labels,
            annotations: Some(annotations),
            owner_references: Some(vec![podcontrol::controller_reference(cj)]),
            ..Default::default()
        },
        spec: Some(template.spec.unwrap_or_default()),
        status: None,
    }
}

fn job_ref(j: &Job) -> ObjectReference {
    ObjectReference {
        api_version: Some("batch/v1".into()),
        kind: Some("Job".into()),
        name: j.metadata.name.clone(),
        namespace: j.metadata.namespace.clone(),
        uid: j.metadata.uid.clone(),
        resource_version: j.metadata.resource_version.clone(),
        ..Default::default()
    }
}

fn succeeded(j: &Job) -> bool {
    j.status.as_ref().is_some_and(|s| s.conditions.iter().flatten().any(|c| c.type_ == "Complete" && c.status == "True"))
}

fn duration_until(t: Timestamp, now: Timestamp) -> Duration {
    let ms = t.as_millisecond().saturating_sub(now.as_millisecond()).max(0);
    Duration::from_millis(u64::try_from(ms).unwrap_or(0)) + Duration::from_millis(100)
}

async fn sync(cj: Arc<CronJob>, st: Arc<State>, key: String) -> Result<Action, CronJobError> {
    let Some(spec) = cj.spec.as_ref() else { return Ok(Action::await_change()) };
    if cj.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let now = Timestamp::now();
    let ns = cj.metadata.namespace.clone().unwrap_or_default();
    let uid = cj.metadata.uid.clone().unwrap_or_default();
    let jobs_api: Api<Job> = Api::namespaced(st.client.clone(), &ns);
    let old = cj.status.clone().unwrap_or_default();
    let children: Vec<Arc<Job>> = st
        .jobs
        .state()
        .into_iter()
        .filter(|j| j.metadata.namespace.as_deref() == Some(ns.as_str()) && podcontrol::controller_of(&j.metadata).is_some_and(|r| r.uid == uid))
        .collect();

    // Active list: drop Jobs that finished or vanished; note the latest success.
    let mut active: Vec<ObjectReference> = old.active.clone().unwrap_or_default();
    let mut last_successful = old.last_successful_time.clone();
    active.retain(|r| {
        let Some(j) = children.iter().find(|j| j.metadata.uid == r.uid) else { return false };
        if !job::is_finished(j) {
            return true;
        }
        let condition = if succeeded(j) { "Complete" } else { "Failed" };
        st.events.normal(cj.object_ref(&()), "SawCompletedJob", format!("Saw completed job: {}, condition: {condition}", j.name_any()));
        if succeeded(j) {
            if let Some(t) = j.status.as_ref().and_then(|s| s.completion_time.clone()) {
                if last_successful.as_ref().is_none_or(|l| l.0 < t.0) {
                    last_successful = Some(t);
                }
            }
        }
        false
    });

    cleanup_history(&cj, &st, &children, &jobs_api, &key).await?;

    let mut last_schedule = old.last_schedule_time.clone();
    let mut requeue = None;
    let mut create = None;
    if !spec.suspend.unwrap_or(false) {
        match Schedule::parse(&spec.schedule, spec.time_zone.as_deref()) {
            Err(e) => {
                warn!(schedule = %spec.schedule, error = %e, "unparseable schedule");
                st.events.warning(cj.object_ref(&()), "UnparseableSchedule", format!("unparseable schedule: {:?} : {e}", spec.schedule));
            }
            Ok(sched) => {
                let earliest = last_schedule.as_ref().or(cj.metadata.creation_timestamp.as_ref()).map_or(now, |t| t.0);
                let decision = sched.decide(earliest, spec.starting_deadline_seconds, now);
                requeue = decision.next.map(|n| duration_until(n, now));
                match decision.due {
                    None => {}
                    Some(due) if due.too_late => {
                        info!(scheduled = %due.scheduled, "missed the starting deadline");
                        st.events.warning(cj.object_ref(&()), "MissSchedule", format!("Missed scheduled time to start a job: {}", due.scheduled));
                    }
                    Some(due) => {
                        if due.missed > schedule::MAX_MISSED {
                            warn!(missed = due.missed, "too many missed start times; check the clock or startingDeadlineSeconds");
                        }
                        let name = job_name(&cj.name_any(), due.scheduled);
                        let already = active.iter().any(|r| r.name.as_deref() == Some(name.as_str()));
                        let policy = spec.concurrency_policy.as_deref().unwrap_or("Allow");
                        if already {
                        } else if policy == "Forbid" && !active.is_empty() {
                            debug!("a job is still active; Forbid skips this start time");
                        } else {
                            if policy == "Replace" {
                                for r in std::mem::take(&mut active) {
                                    let name = r.name.unwrap_or_default();
                                    let dp = DeleteParams { propagation_policy: Some(PropagationPolicy::Background), ..Default::default() };
                                    match jobs_api.delete(&name, &dp).await {
                                        Ok(_) => {
                                            info!(job = %name, "replaced active job");
                                            st.events.normal(cj.object_ref(&()), "SuccessfulDelete", format!("Deleted job {name}"));
                                        }
                                        Err(kube::Error::Api(s)) if s.code == 404 => {}
                                        Err(source) => {
                                            st.events.warning(cj.object_ref(&()), "FailedDelete", format!("Deleted job: {}", super::api_error_message(&source)));
                                            return Err(CronJobError::DeleteJob { key, job: name, source });
                                        }
                                    }
                                }
                            }
                            create = Some((due.scheduled, job_for(&cj, due.scheduled, sched.zone())));
                        }
                    }
                }
            }
        }
    }

    if let Some((scheduled, job)) = create {
        let name = job.metadata.name.clone().unwrap_or_default();
        match jobs_api.create(&PostParams::default(), &job).await {
            Ok(created) => {
                info!(job = %name, scheduled = %scheduled, "created job");
                st.events.normal(cj.object_ref(&()), "SuccessfulCreate", format!("Created job {name}"));
                active.push(job_ref(&created));
            }
            Err(kube::Error::Api(s)) if s.code == 409 => {
                // Created by an earlier sync whose status write was lost or refused: track it.
                debug!(job = %name, "job already exists");
                if let Ok(Some(existing)) = jobs_api.get_opt(&name).await {
                    let ours = podcontrol::controller_of(&existing.metadata).is_some_and(|r| r.uid == uid);
                    if ours && !job::is_finished(&existing) && !active.iter().any(|r| r.uid == existing.metadata.uid) {
                        active.push(job_ref(&existing));
                    }
                }
            }
            Err(source) => {
                st.events.warning(cj.object_ref(&()), "FailedCreate", format!("Error creating job: {}", super::api_error_message(&source)));
                return Err(CronJobError::CreateJob { key, job: name, source });
            }
        }
        last_schedule = Some(Time(scheduled));
    }

    let changed = Some(&active) != old.active.as_ref().or(Some(&Vec::new())) || last_schedule != old.last_schedule_time || last_successful != old.last_successful_time;
    if changed {
        let api: Api<CronJob> = Api::namespaced(st.client.clone(), &ns);
        // Guarded by the resourceVersion read, as an update would be: a stale active list
        // must not overwrite a newer one.
        let patch = json!({"metadata": {"resourceVersion": cj.metadata.resource_version}, "status": {
            "active": if active.is_empty() { serde_json::Value::Null } else { json!(active) },
            "lastScheduleTime": last_schedule,
            "lastSuccessfulTime": last_successful,
        }});
        match api.patch_status(&cj.name_any(), &PatchParams::default(), &Patch::Merge(&patch)).await {
            Ok(_) => debug!(active = active.len(), "status updated"),
            Err(kube::Error::Api(s)) if s.code == 404 => return Ok(Action::await_change()),
            Err(kube::Error::Api(s)) if s.code == 409 => return Ok(Action::requeue(Duration::from_millis(200))),
            Err(source) => return Err(CronJobError::UpdateStatus { key, source }),
        }
    }
    Ok(requeue.map_or_else(Action::await_change, Action::requeue))
}

/// Deletes the oldest finished Jobs beyond the history limits (Background propagation).
async fn cleanup_history(cj: &CronJob, st: &State, children: &[Arc<Job>], api: &Api<Job>, key: &str) -> Result<(), CronJobError> {
    let spec = cj.spec.as_ref();
    let keep_ok = spec.and_then(|s| s.successful_jobs_history_limit);
    let keep_failed = spec.and_then(|s| s.failed_jobs_history_limit);
    for (keep, ok) in [(keep_ok, true), (keep_failed, false)] {
        let Some(keep) = keep else { continue };
        let mut done: Vec<&Arc<Job>> = children.iter().filter(|j| job::is_finished(j) && succeeded(j) == ok && j.metadata.deletion_timestamp.is_none()).collect();
        let keep = usize::try_from(keep.max(0)).unwrap_or(0);
        if done.len() <= keep {
            continue;
        }
        // Oldest first: by start time, then creation.
        done.sort_by_key(|j| (j.status.as_ref().and_then(|s| s.start_time.as_ref()).map(|t| t.0), j.metadata.creation_timestamp.as_ref().map(|t| t.0)));
        let excess = done.len() - keep;
        for j in done.into_iter().take(excess) {
            let name = j.name_any();
            let dp = DeleteParams { propagation_policy: Some(PropagationPolicy::Background), ..Default::default() };
            match api.delete(&name, &dp).await {
                Ok(_) => {
                    info!(job = %name, "deleted finished job beyond the history limit");
                    st.events.normal(cj.object_ref(&()), "SuccessfulDelete", format!("Deleted job {name}"));
                }
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(source) => {
                    st.events.warning(cj.object_ref(&()), "FailedDelete", format!("Deleted job: {}", super::api_error_message(&source)));
                    return Err(CronJobError::DeleteJob { key: key.to_string(), job: name, source });
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::batch::v1::{CronJobSpec, JobSpec, JobTemplateSpec};

    #[test]
    fn job_names_and_scheduled_annotation() {
        let t: Timestamp = "2024-05-01T00:05:00Z".parse().unwrap_or(Timestamp::UNIX_EPOCH);
        assert_eq!(job_name("hello", t), format!("hello-{}", 1714521900 / 60));
        let cj = CronJob {
            metadata: ObjectMeta { name: Some("hello".into()), namespace: Some("ns".into()), uid: Some("u1".into()), ..Default::default() },
            spec: Some(CronJobSpec {
                schedule: "*/5 * * * *".into(),
                job_template: JobTemplateSpec {
                    metadata: Some(ObjectMeta { labels: Some([("app".to_string(), "x".to_string())].into_iter().collect()), ..Default::default() }),
                    spec: Some(JobSpec::default()),
                },
                ..Default::default()
            }),
            status: None,
        };
        let tokyo = schedule::zone("Asia/Tokyo").unwrap_or(TimeZone::UTC);
        let j = job_for(&cj, t, &tokyo);
        assert_eq!(j.metadata.name.as_deref(), Some("hello-28575365"));
        assert_eq!(j.metadata.annotations.as_ref().and_then(|a| a.get(SCHEDULED_TIMESTAMP)).map(String::as_str), Some("2024-05-01T09:05:00+09:00"));
        assert_eq!(j.metadata.labels.as_ref().and_then(|l| l.get("app")).map(String::as_str), Some("x"));
        let owner = j.metadata.owner_references.as_ref().and_then(|o| o.first());
        assert_eq!(owner.map(|o| (o.kind.as_str(), o.uid.as_str(), o.controller)), Some(("CronJob", "u1", Some(true))));
        assert_eq!(rfc3339_in(t, &TimeZone::UTC), "2024-05-01T00:05:00Z");
    }
}
