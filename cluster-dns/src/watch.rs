//! Keeps the [`Index`] in step with the API: one kube-runtime watcher for Services and one
//! for EndpointSlices (discovery.k8s.io/v1), each list applied atomically when it
//! completes (so a relist drops what was deleted meanwhile), and a readiness signal once
//! both have been listed.

use std::fmt::Debug;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::{Api, Resource};
use serde::de::DeserializeOwned;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::index::Index;

/// The index shared between the watchers (writers) and the DNS handler (readers).
#[derive(Debug)]
pub struct ClusterState {
    index: RwLock<Index>,
    ready: watch::Sender<bool>,
}

impl ClusterState {
    pub fn new(index: Index) -> Arc<ClusterState> {
        let synced = index.is_synced();
        Arc::new(ClusterState { index: RwLock::new(index), ready: watch::Sender::new(synced) })
    }

    /// Reads the index. A writer that panicked leaves a consistent index behind (updates
    /// replace whole entries), so a poisoned lock is read anyway.
    pub fn read(&self) -> RwLockReadGuard<'_, Index> {
        self.index.read().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Index> {
        self.index.write().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Changes the index, and announces readiness when it has become synced.
    pub fn update(&self, change: impl FnOnce(&mut Index)) {
        let synced = {
            let mut index = self.write();
            change(&mut index);
            index.is_synced()
        };
        self.ready.send_if_modified(|ready| {
            let became = synced && !*ready;
            *ready |= synced;
            became
        });
    }

    pub fn is_ready(&self) -> bool {
        *self.ready.borrow()
    }

    /// Waits until both lists have completed once, at most `timeout`; true if they have.
    pub async fn wait_ready(&self, timeout: Duration) -> bool {
        let mut ready = self.ready.subscribe();
        let waited = tokio::time::timeout(timeout, ready.wait_for(|r| *r)).await;
        matches!(waited, Ok(Ok(_)))
    }
}

/// A resource the index is built from.
trait Indexed: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static {
    const KIND: &'static str;
    fn apply(index: &mut Index, object: &Self);
    fn delete(index: &mut Index, object: &Self);
    fn replace(index: &mut Index, objects: &[Self]);
}

impl Indexed for Service {
    const KIND: &'static str = "Service";
    fn apply(index: &mut Index, object: &Self) {
        index.apply_service(object);
    }
    fn delete(index: &mut Index, object: &Self) {
        index.delete_service(object);
    }
    fn replace(index: &mut Index, objects: &[Self]) {
        index.replace_services(objects);
    }
}

impl Indexed for EndpointSlice {
    const KIND: &'static str = "EndpointSlice";
    fn apply(index: &mut Index, object: &Self) {
        index.apply_slice(object);
    }
    fn delete(index: &mut Index, object: &Self) {
        index.delete_slice(object);
    }
    fn replace(index: &mut Index, objects: &[Self]) {
        index.replace_slices(objects);
    }
}

/// Watches Services and EndpointSlices in all namespaces into `state` until `shutdown`.
pub async fn watch_cluster(client: kube::Client, state: Arc<ClusterState>, shutdown: CancellationToken) {
    tokio::join!(
        watch_kind::<Service>(Api::all(client.clone()), state.clone(), shutdown.clone()),
        watch_kind::<EndpointSlice>(Api::all(client), state, shutdown),
    );
}

async fn watch_kind<K: Indexed>(api: Api<K>, state: Arc<ClusterState>, shutdown: CancellationToken) {
    let events = watcher::watcher(api, watcher::Config::default()).default_backoff();
    let mut events = std::pin::pin!(events);
    // Objects of a list in progress, applied at once when it completes.
    let mut listing: Vec<K> = vec![];
    loop {
        let event = tokio::select! {
            _ = shutdown.cancelled() => return,
            event = events.next() => event,
        };
        match event {
            None => return,
            Some(Ok(Event::Init)) => listing.clear(),
            Some(Ok(Event::InitApply(object))) => listing.push(object),
            Some(Ok(Event::InitDone)) => {
                let objects = std::mem::take(&mut listing);
                info!(kind = K::KIND, count = objects.len(), "listed");
                state.update(|index| K::replace(index, &objects));
            }
            Some(Ok(Event::Apply(object))) => {
                debug!(kind = K::KIND, name = ?object.meta().name, namespace = ?object.meta().namespace, "applied");
                state.update(|index| K::apply(index, &object));
            }
            Some(Ok(Event::Delete(object))) => {
                debug!(kind = K::KIND, name = ?object.meta().name, namespace = ?object.meta().namespace, "deleted");
                state.update(|index| K::delete(index, &object));
            }
            // The stream backs off and retries by itself; the index keeps serving what it had.
            Some(Err(error)) => warn!(kind = K::KIND, %error, "watch failed, retrying"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn readiness_follows_both_lists() {
        let state = ClusterState::new(Index::new());
        assert!(!state.is_ready());
        assert!(!state.wait_ready(Duration::from_millis(10)).await);
        let waiter = {
            let state = state.clone();
            tokio::spawn(async move { state.wait_ready(Duration::from_secs(10)).await })
        };
        state.update(|i| i.replace_services(&[]));
        assert!(!state.is_ready());
        state.update(|i| i.replace_slices(&[]));
        assert!(state.is_ready());
        assert!(waiter.await.unwrap());
    }
}
