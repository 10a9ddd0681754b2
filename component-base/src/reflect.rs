//! Reflector streams kept running in the background: the store-filling loop every
//! watching component needs, and the variant whose events wake a sync loop (kube-proxy
//! and the ingress controller read their caches whole at each sync, with one `Notify`
//! for "something changed").

use std::sync::Arc;

use futures::StreamExt;
use kube::api::Api;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// Drives a watch stream (a reflector's, which fills its store as events pass) until
/// `stop` or its end, calling `on_event` for each applied event; errors are traced for
/// `what` and the stream's backoff retries.
pub fn keep_running<K, S>(what: &'static str, events: S, stop: CancellationToken, on_event: impl Fn() + Send + 'static)
where
    K: Send + 'static,
    S: futures::Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static,
{
    tokio::spawn(async move {
        let mut events = std::pin::pin!(events);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                next = events.next() => match next {
                    None => return,
                    Some(Ok(_)) => on_event(),
                    Some(Err(e)) => tracing::warn!(what, error = %e, "watch failed; retrying"),
                },
            }
        }
    });
}

/// A store of `api`'s objects kept by a watch (retried with backoff) until `shutdown`;
/// every event it applies notifies `changed`.
pub fn notifying_store<K>(api: Api<K>, config: watcher::Config, changed: &Arc<Notify>, shutdown: &CancellationToken) -> Store<K>
where
    K: kube::Resource<DynamicType = ()> + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + Sync + 'static,
{
    let (reader, writer) = reflector::store::<K>();
    let stream = watcher(api, config).default_backoff().reflect(writer);
    let changed = changed.clone();
    keep_running(std::any::type_name::<K>(), stream, shutdown.clone(), move || changed.notify_one());
    reader
}
