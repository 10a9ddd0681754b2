//! A reflector whose events wake a component's sync loop: the shape kube-proxy and the
//! ingress controller share (caches read whole at each sync, one `Notify` for "something
//! changed").

use std::sync::Arc;

use futures::StreamExt;
use kube::api::Api;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// A store of `api`'s objects kept by a watch (retried with backoff) until `shutdown`;
/// every event it applies notifies `changed`.
pub fn notifying_store<K>(api: Api<K>, config: watcher::Config, changed: &Arc<Notify>, shutdown: &CancellationToken) -> Store<K>
where
    K: kube::Resource<DynamicType = ()> + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + Sync + 'static,
{
    let (reader, writer) = reflector::store::<K>();
    let stream = watcher(api, config).default_backoff().reflect(writer);
    let (changed, shutdown) = (changed.clone(), shutdown.clone());
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                event = stream.next() => match event {
                    None => return,
                    Some(Ok(_)) => changed.notify_one(),
                    Some(Err(e)) => tracing::warn!(error = %e, "watch failed; retrying"),
                },
            }
        }
    });
    reader
}
