//! The TTL-after-finished controller: deletes a finished Job (`Complete` or `Failed`)
//! `spec.ttlSecondsAfterFinished` seconds after it finished, with Background
//! propagation so the garbage collector takes its pods. The decision is re-checked on a
//! fresh read just before deleting, with the read's resourceVersion as a precondition,
//! so a TTL changed meanwhile is honoured.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, Preconditions, PropagationPolicy};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::ResourceExt;
use tokio_util::sync::CancellationToken;
use tracing::{info, info_span, warn, Instrument};

use super::job;
use super::podcontrol;
use super::{Context, ControllerError};

/// Why a TTL check failed (it is retried).
#[derive(Debug, thiserror::Error)]
pub enum TtlError {
    #[error("reading job {key}")]
    Read {
        key: String,
        #[source]
        source: kube::Error,
    },
    #[error("deleting job {key}")]
    Delete {
        key: String,
        #[source]
        source: kube::Error,
    },
}

/// Starts the ttl-after-finished controller.
pub fn start(ctx: Context, shutdown: CancellationToken) -> futures::future::BoxFuture<'static, Result<(), ControllerError>> {
    Box::pin(async move {
        let jobs: Api<Job> = Api::all(ctx.client.clone());
        Controller::new(jobs, watcher::Config::default())
            .graceful_shutdown_on(async move { shutdown.cancelled().await })
            .run(reconcile, error_policy, Arc::new(ctx))
            .for_each(|_| async {})
            .await;
        Ok(())
    })
}

fn error_policy(job: Arc<Job>, err: &TtlError, _: Arc<Context>) -> Action {
    warn!(job = %podcontrol::key_of(&job.metadata), error = %err, "ttl-after-finished check failed");
    Action::requeue(Duration::from_secs(1))
}

/// How long until the Job expires at `now`: `None` when it never does (no TTL, not
/// finished, being deleted), zero when it has.
pub fn time_left(job: &Job, now: Timestamp) -> Option<Duration> {
    if job.metadata.deletion_timestamp.is_some() {
        return None;
    }
    let ttl = job.spec.as_ref()?.ttl_seconds_after_finished?;
    let finished = job::finish_time(job)?;
    let expires_ms = finished.as_millisecond().saturating_add(i64::from(ttl).saturating_mul(1000));
    let left = expires_ms.saturating_sub(now.as_millisecond());
    Some(Duration::from_millis(u64::try_from(left).unwrap_or(0)))
}

async fn reconcile(job: Arc<Job>, ctx: Arc<Context>) -> Result<Action, TtlError> {
    let key = podcontrol::key_of(&job.metadata);
    let span = info_span!("sync", controller = "ttl-after-finished", object = %key);
    async move {
        match time_left(&job, Timestamp::now()) {
            None => return Ok(Action::await_change()),
            Some(left) if !left.is_zero() => return Ok(Action::requeue(left)),
            Some(_) => {}
        }
        let api: Api<Job> = Api::namespaced(ctx.client.clone(), job.metadata.namespace.as_deref().unwrap_or_default());
        // Check again on a fresh read: the cache may be behind a TTL change.
        let fresh = match api.get_opt(&job.name_any()).await {
            Ok(Some(j)) => j,
            Ok(None) => return Ok(Action::await_change()),
            Err(source) => return Err(TtlError::Read { key: key.clone(), source }),
        };
        match time_left(&fresh, Timestamp::now()) {
            None => return Ok(Action::await_change()),
            Some(left) if !left.is_zero() => return Ok(Action::requeue(left)),
            Some(_) => {}
        }
        let dp = DeleteParams {
            propagation_policy: Some(PropagationPolicy::Background),
            preconditions: Some(Preconditions { uid: fresh.metadata.uid.clone(), resource_version: fresh.metadata.resource_version.clone() }),
            ..Default::default()
        };
        match api.delete(&fresh.name_any(), &dp).await {
            Ok(_) => info!("finished job expired, deleted"),
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(source) => return Err(TtlError::Delete { key, source }),
        }
        Ok(Action::await_change())
    }
    .instrument(span)
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::batch::v1::{JobCondition, JobSpec, JobStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn at(s: i64) -> Timestamp {
        Timestamp::from_second(s).unwrap_or(Timestamp::UNIX_EPOCH)
    }

    fn finished_job(ttl: Option<i32>, done_at: Option<i64>) -> Job {
        Job {
            spec: Some(JobSpec { ttl_seconds_after_finished: ttl, ..Default::default() }),
            status: done_at.map(|t| JobStatus {
                completion_time: Some(Time(at(t))),
                conditions: Some(vec![JobCondition { type_: "Complete".into(), status: "True".into(), ..Default::default() }]),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn expires_ttl_after_completion() {
        assert_eq!(time_left(&finished_job(None, Some(100)), at(1000)), None);
        assert_eq!(time_left(&finished_job(Some(10), None), at(1000)), None);
        assert_eq!(time_left(&finished_job(Some(10), Some(100)), at(104)), Some(Duration::from_secs(6)));
        assert_eq!(time_left(&finished_job(Some(10), Some(100)), at(110)), Some(Duration::ZERO));
        assert_eq!(time_left(&finished_job(Some(0), Some(100)), at(100)), Some(Duration::ZERO));
    }
}
