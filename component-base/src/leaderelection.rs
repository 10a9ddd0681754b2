//! Leader election on a `coordination.k8s.io/v1` Lease, with client-go's timing: a
//! candidate takes the lease when it is free or its holder has not renewed it for
//! `lease_duration`; the leader renews every `retry_period` and gives up leading when it
//! cannot renew within `renew_deadline`. Two copies of a component can run; one acts.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, PostParams};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

#[derive(Debug, thiserror::Error)]
pub enum ElectionError {
    #[error("lost the {lease} lease: it could not be renewed within {deadline:?}")]
    Lost { lease: String, deadline: Duration },
}

/// Timing and identity of a candidate.
#[derive(Debug, Clone)]
pub struct LeaderElection {
    pub namespace: String,
    pub name: String,
    /// Unique per process: `hostname_uuid`, as Kubernetes components use.
    pub identity: String,
    pub lease_duration: Duration,
    pub renew_deadline: Duration,
    pub retry_period: Duration,
}

impl LeaderElection {
    /// Kubernetes' defaults (15 s lease, 10 s renew deadline, 2 s retry) for a lease in
    /// kube-system named after the component.
    pub fn new(component: &str, identity: String) -> LeaderElection {
        LeaderElection {
            namespace: "kube-system".into(),
            name: component.into(),
            identity,
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }

    /// Waits to become leader, then runs `lead` with a token cancelled when leadership
    /// ends. Returns when `shutdown` fires (after releasing the lease) or with an error
    /// when leadership is lost, in which case a component should exit, as Kubernetes'
    /// components do.
    pub async fn run<F, Fut>(self, client: kube::Client, shutdown: CancellationToken, lead: F) -> Result<(), ElectionError>
    where
        F: FnOnce(CancellationToken) -> Fut,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let api: Api<Lease> = Api::namespaced(client, &self.namespace);
        // Acquire.
        loop {
            if shutdown.is_cancelled() {
                return Ok(());
            }
            match self.try_acquire_or_renew(&api).await {
                Ok(true) => break,
                Ok(false) => {}
                Err(e) => debug!(lease = %self.name, error = %e, "leader election: acquire failed"),
            }
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                _ = tokio::time::sleep(self.retry_period) => {}
            }
        }
        info!(lease = %self.name, identity = %self.identity, "became leader");
        let leading = shutdown.child_token();
        // Leading ends with this call, however it ends: a caller that drops (aborts) it
        // stops the work it started too.
        let _stop_leading = leading.clone().drop_guard();
        let task = tokio::spawn(lead(leading.clone()));
        let mut last_renew = tokio::time::Instant::now();
        let result = loop {
            tokio::select! {
                _ = shutdown.cancelled() => break Ok(()),
                _ = tokio::time::sleep(self.retry_period) => {}
            }
            match self.try_acquire_or_renew(&api).await {
                Ok(true) => last_renew = tokio::time::Instant::now(),
                Ok(false) => {
                    warn!(lease = %self.name, "leader election: another candidate holds the lease");
                    break Err(ElectionError::Lost { lease: self.name.clone(), deadline: self.renew_deadline });
                }
                Err(e) => {
                    warn!(lease = %self.name, error = %e, "leader election: renew failed");
                    if last_renew.elapsed() > self.renew_deadline {
                        break Err(ElectionError::Lost { lease: self.name.clone(), deadline: self.renew_deadline });
                    }
                }
            }
        };
        leading.cancel();
        let _ = task.await;
        if result.is_ok() {
            self.release(&api).await;
        }
        result
    }

    fn lease_duration_secs(&self) -> i32 {
        i32::try_from(self.lease_duration.as_secs()).unwrap_or(i32::MAX)
    }

    /// Takes or renews the lease; `Ok(false)` when another live holder has it.
    async fn try_acquire_or_renew(&self, api: &Api<Lease>) -> Result<bool, kube::Error> {
        let now = Timestamp::now();
        let existing = api.get_opt(&self.name).await?;
        let Some(mut lease) = existing else {
            let lease = Lease {
                metadata: ObjectMeta { name: Some(self.name.clone()), namespace: Some(self.namespace.clone()), ..Default::default() },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.identity.clone()),
                    lease_duration_seconds: Some(self.lease_duration_secs()),
                    acquire_time: Some(MicroTime(now)),
                    renew_time: Some(MicroTime(now)),
                    lease_transitions: Some(0),
                    ..Default::default()
                }),
            };
            return match api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
                Err(e) => Err(e),
            };
        };
        let spec = lease.spec.get_or_insert_with(Default::default);
        let holder = spec.holder_identity.clone().unwrap_or_default();
        let ours = holder == self.identity;
        if !ours && !holder.is_empty() && !expired(spec, now) {
            return Ok(false);
        }
        if !ours {
            spec.acquire_time = Some(MicroTime(now));
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
            spec.holder_identity = Some(self.identity.clone());
        }
        spec.lease_duration_seconds = Some(self.lease_duration_secs());
        spec.renew_time = Some(MicroTime(now));
        // The replace carries the resourceVersion read above: two candidates racing for
        // an expired lease cannot both win.
        match api.replace(&self.name, &PostParams::default(), &lease).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Gives the lease up on a clean shutdown so a standby takes over at once.
    async fn release(&self, api: &Api<Lease>) {
        if let Ok(Some(mut lease)) = api.get_opt(&self.name).await {
            if let Some(spec) = lease.spec.as_mut() {
                if spec.holder_identity.as_deref() == Some(self.identity.as_str()) {
                    spec.holder_identity = None;
                    spec.lease_duration_seconds = Some(1);
                    let _ = api.replace(&self.name, &PostParams::default(), &lease).await;
                }
            }
        }
    }
}

/// Whether a lease's holder has let it run out at `now` (not renewed within its duration,
/// 15 s when unset): a standby may take it, and `kubectl get cs` calls its holder unhealthy.
pub fn expired(spec: &LeaseSpec, now: Timestamp) -> bool {
    let Some(renew) = spec.renew_time.as_ref().map(|t| t.0) else { return true };
    let duration = SignedDuration::from_secs(i64::from(spec.lease_duration_seconds.unwrap_or(15)));
    renew.checked_add(duration).ok().is_none_or(|until| until < now)
}

/// A unique identity for this process: `hostname_uuid`.
pub fn default_identity() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_string()).unwrap_or_else(|_| "localhost".into());
    format!("{host}_{}", random_suffix())
}

fn random_suffix() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0));
    h.write_u32(std::process::id());
    format!("{:016x}", h.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_expires_after_its_duration() {
        let now = Timestamp::now();
        let ago = |s: i64| MicroTime(now.checked_sub(SignedDuration::from_secs(s)).expect("in range"));
        let spec = LeaseSpec { renew_time: Some(ago(20)), lease_duration_seconds: Some(15), ..Default::default() };
        assert!(expired(&spec, now));
        let spec = LeaseSpec { renew_time: Some(ago(5)), lease_duration_seconds: Some(15), ..Default::default() };
        assert!(!expired(&spec, now));
        assert!(expired(&LeaseSpec::default(), now));
    }
}
