//! One listing of the node's sandboxes and containers shared by every pod worker that
//! asks at about the same time. Each worker needs only its own pod's entries, but the
//! runtime lists the whole node; during a burst of pod starts, a listing per worker per
//! sync is O(pods²) record reads. Here callers queue on one lock, and a listing that
//! began after a caller arrived answers it, so a worker still sees everything it did
//! before asking (read-your-writes) while concurrent workers share the work.

use std::sync::Arc;
use std::time::Instant;

use crate::runtime::{ContainerStatus, Result, Runtime, SandboxStatus};

pub struct Listing {
    pub sandboxes: Vec<SandboxStatus>,
    pub containers: Vec<ContainerStatus>,
}

#[derive(Default)]
pub struct Snapshot {
    latest: tokio::sync::Mutex<Option<(Instant, Arc<Listing>)>>,
}

impl Snapshot {
    /// A listing taken no earlier than this call.
    pub async fn get(&self, runtime: &Arc<dyn Runtime>) -> Result<Arc<Listing>> {
        let asked = Instant::now();
        let mut latest = self.latest.lock().await;
        if let Some((taken, listing)) = latest.as_ref() {
            if *taken >= asked {
                return Ok(listing.clone());
            }
        }
        let taken = Instant::now();
        let listing = Arc::new(Listing { sandboxes: runtime.list_pod_sandboxes().await?, containers: runtime.list_containers().await? });
        *latest = Some((taken, listing.clone()));
        Ok(listing)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::fake::FakeRuntime;

    #[tokio::test]
    async fn a_listing_never_predates_the_request() {
        let fake = Arc::new(FakeRuntime::new());
        let runtime: Arc<dyn Runtime> = fake.clone();
        let snapshot = Snapshot::default();
        assert!(snapshot.get(&runtime).await.expect("list").sandboxes.is_empty());
        runtime.update_pod_cidr("10.9.0.0/24").await.expect("cidr");
        let config = crate::runtime::SandboxConfig {
            pod: crate::runtime::PodMeta { name: "p".into(), namespace: "n".into(), uid: "u".into() },
            hostname: "p".into(),
            host_aliases: vec![],
            dns: Default::default(),
            host_network: false,
            port_mappings: vec![],
            labels: Default::default(),
            annotations: Default::default(),
            cgroup_parent: String::new(),
            share_process_namespace: false,
        };
        runtime.run_pod_sandbox(&config).await.expect("sandbox");
        // Asked after the write: the cached listing from before is not reused.
        assert_eq!(snapshot.get(&runtime).await.expect("list").sandboxes.len(), 1);
    }
}
