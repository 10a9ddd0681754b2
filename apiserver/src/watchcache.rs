//! The watch cache: one store watch per resource feeds every client watch. It keeps the
//! current objects and a window of recent events, so a client can resume from any
//! resourceVersion in the window and a thousand watchers cost the store nothing more.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use serde_json::Value;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::storage::{Revision, Store, StoreError, WatchEvent};

/// How many recent events each resource keeps for watches to resume from.
pub const HISTORY: usize = 10_000;
/// How many live events a slow watcher may fall behind before its watch is ended.
const FANOUT_BUFFER: usize = 4_096;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    Added,
    Modified,
    Deleted,
}

impl EventType {
    pub fn as_str(&self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
}

/// A change to one object, with the object as it is after the change (for a delete, as
/// it was last, carrying the delete's resourceVersion) and as it was before.
#[derive(Debug)]
pub struct CacheEvent {
    pub kind: EventType,
    pub key: String,
    pub object: Arc<Value>,
    pub prev: Option<Arc<Value>>,
    pub revision: Revision,
    /// `object` as JSON, encoded by the first watcher that sends it as it is and
    /// shared by every other (and by the ADDED events of watches that start while the
    /// object is current).
    json: Encoding,
}

type Encoding = Arc<std::sync::OnceLock<bytes::Bytes>>;

impl CacheEvent {
    pub fn new(kind: EventType, key: String, object: Arc<Value>, prev: Option<Arc<Value>>, revision: Revision) -> CacheEvent {
        CacheEvent { kind, key, object, prev, revision, json: Encoding::default() }
    }

    /// The object's JSON, encoded once however many watchers send it.
    pub fn object_json(&self) -> &bytes::Bytes {
        self.json.get_or_init(|| bytes::Bytes::from(serde_json::to_vec(&*self.object).unwrap_or_default()))
    }
}

/// Why a client watch cannot start or go on.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("too old resource version: {requested} ({oldest})")]
    TooOld { requested: Revision, oldest: Revision },
}

struct Inner {
    objects: BTreeMap<String, Arc<Value>>,
    /// The shared encoding of each current object (see [`CacheEvent::object_json`]).
    encodings: std::collections::HashMap<String, Encoding>,
    revision: Revision,
    /// Events with revision > `oldest` are all in `history`.
    oldest: Revision,
    history: VecDeque<Arc<CacheEvent>>,
    /// Counts changes to `objects` (not progress), so that derived views such as the
    /// compiled RBAC policy know when to rebuild.
    changes: u64,
}

/// A cache over every object under one store prefix.
pub struct WatchCache {
    prefix: String,
    inner: Mutex<Inner>,
    fanout: broadcast::Sender<Arc<CacheEvent>>,
    progress: tokio::sync::watch::Sender<Revision>,
}

/// What a client watch starts with: the events to replay and a live feed.
pub struct Subscription {
    pub initial: Vec<Arc<CacheEvent>>,
    pub live: broadcast::Receiver<Arc<CacheEvent>>,
    /// Live events at or below this revision were already in `initial` (or in the
    /// list the client resumes from) and are skipped.
    pub after: Revision,
}

/// Decodes a stored value into an object carrying its resourceVersion.
pub fn decode_stored(value: &[u8], revision: Revision) -> Result<Value, StoreError> {
    let mut obj: Value = serde_json::from_slice(value).map_err(|e| StoreError::Corrupt(format!("stored object is not JSON: {e}")))?;
    set_resource_version(&mut obj, revision);
    Ok(obj)
}

pub fn set_resource_version(obj: &mut Value, revision: Revision) {
    if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.insert("resourceVersion".into(), Value::String(revision.to_string()));
    }
}

impl WatchCache {
    /// Starts a cache over `prefix`: lists it, then follows the store's watch until
    /// `shutdown`. Returns once the initial list is loaded.
    pub async fn start(store: Arc<dyn Store>, prefix: String, shutdown: CancellationToken) -> Result<Arc<WatchCache>, StoreError> {
        let (fanout, _) = broadcast::channel(FANOUT_BUFFER);
        let (progress, _) = tokio::sync::watch::channel(0);
        let cache = Arc::new(WatchCache {
            prefix,
            inner: Mutex::new(Inner { objects: BTreeMap::new(), encodings: Default::default(), revision: 0, oldest: 0, history: VecDeque::new(), changes: 0 }),
            fanout,
            progress,
        });
        let revision = cache.relist(store.as_ref()).await?;
        let task = cache.clone();
        tokio::spawn(async move { task.follow(store, revision, shutdown).await });
        Ok(cache)
    }

    /// Loads the prefix from the store, turning differences from what the cache held
    /// into events. Returns the revision the list was read at.
    async fn relist(&self, store: &dyn Store) -> Result<Revision, StoreError> {
        let listed = store.range(&self.prefix, Default::default()).await?;
        let mut fresh = BTreeMap::new();
        for kv in listed.kvs {
            let obj = decode_stored(&kv.value, kv.mod_revision)?;
            fresh.insert(kv.key, Arc::new(obj));
        }
        let revision = listed.revision;
        let mut inner = self.lock();
        let initial = inner.revision == 0 && inner.objects.is_empty();
        if !initial {
            let mut events = Vec::new();
            for (key, obj) in &fresh {
                match inner.objects.get(key) {
                    None => events.push((EventType::Added, key.clone(), obj.clone(), None)),
                    Some(old) if old != obj => events.push((EventType::Modified, key.clone(), obj.clone(), Some(old.clone()))),
                    Some(_) => {}
                }
            }
            for (key, old) in &inner.objects {
                if !fresh.contains_key(key) {
                    let mut gone = (**old).clone();
                    set_resource_version(&mut gone, revision);
                    events.push((EventType::Deleted, key.clone(), Arc::new(gone), Some(old.clone())));
                }
            }
            for (kind, key, object, prev) in events {
                let ev = Arc::new(CacheEvent::new(kind, key, object, prev, revision));
                Self::record(&mut inner, ev.clone());
                let _ = self.fanout.send(ev);
            }
        } else {
            inner.oldest = revision;
        }
        let mut encodings = std::mem::take(&mut inner.encodings);
        encodings.retain(|key, _| fresh.get(key).is_some_and(|obj| inner.objects.get(key) == Some(obj)));
        inner.encodings = encodings;
        inner.objects = fresh;
        inner.changes += 1;
        inner.revision = revision.max(inner.revision);
        drop(inner);
        self.progress.send_replace(revision);
        Ok(revision)
    }

    async fn follow(self: Arc<Self>, store: Arc<dyn Store>, mut revision: Revision, shutdown: CancellationToken) {
        let mut backoff = Duration::from_millis(100);
        loop {
            let stream = tokio::select! {
                _ = shutdown.cancelled() => return,
                s = store.watch(&self.prefix, revision) => s,
            };
            let mut stream = match stream {
                Ok(s) => s,
                Err(err) => {
                    warn!(prefix = %self.prefix, error = %err, "watch cache: store watch failed; relisting");
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    match self.relist(store.as_ref()).await {
                        Ok(r) => revision = r,
                        Err(err) => warn!(prefix = %self.prefix, error = %err, "watch cache: relist failed"),
                    }
                    continue;
                }
            };
            loop {
                let next = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    n = stream.next() => n,
                };
                match next {
                    Some(Ok(ev)) => {
                        backoff = Duration::from_millis(100);
                        revision = ev.revision();
                        self.apply(ev);
                    }
                    Some(Err(err)) => {
                        debug!(prefix = %self.prefix, error = %err, "watch cache: store watch ended");
                        break;
                    }
                    None => break,
                }
            }
            if shutdown.is_cancelled() {
                return;
            }
            // The stream ended: resume from the last revision seen; a compacted
            // revision makes the next watch fail, which relists.
        }
    }

    fn apply(&self, ev: WatchEvent) {
        let mut inner = self.lock();
        let cache_event = match ev {
            WatchEvent::Put { kv, .. } => {
                let obj = match decode_stored(&kv.value, kv.mod_revision) {
                    Ok(o) => Arc::new(o),
                    Err(err) => {
                        warn!(key = %kv.key, error = %err, "watch cache: skipping undecodable object");
                        return;
                    }
                };
                let prev = inner.objects.insert(kv.key.clone(), obj.clone());
                let kind = if prev.is_some() { EventType::Modified } else { EventType::Added };
                let ev = CacheEvent::new(kind, kv.key, obj, prev, kv.mod_revision);
                inner.encodings.insert(ev.key.clone(), ev.json.clone());
                Some(ev)
            }
            WatchEvent::Delete { prev, revision } => {
                let old = inner.objects.remove(&prev.key);
                inner.encodings.remove(&prev.key);
                let last = match old.clone() {
                    Some(o) => Some((*o).clone()),
                    None => decode_stored(&prev.value, prev.mod_revision).ok(),
                };
                last.map(|mut obj| {
                    set_resource_version(&mut obj, revision);
                    CacheEvent::new(EventType::Deleted, prev.key, Arc::new(obj), old, revision)
                })
            }
            WatchEvent::Progress { revision } => {
                inner.revision = inner.revision.max(revision);
                drop(inner);
                self.progress.send_replace(revision);
                return;
            }
        };
        if let Some(ev) = cache_event {
            let ev = Arc::new(ev);
            inner.revision = ev.revision;
            Self::record(&mut inner, ev.clone());
            let revision = inner.revision;
            // Sent under the lock so that subscribers see events in order with history.
            let _ = self.fanout.send(ev);
            drop(inner);
            self.progress.send_replace(revision);
        }
    }

    fn record(inner: &mut Inner, ev: Arc<CacheEvent>) {
        inner.changes += 1;
        inner.history.push_back(ev);
        while inner.history.len() > HISTORY {
            if let Some(old) = inner.history.pop_front() {
                inner.oldest = old.revision;
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave `Inner` half-updated in a way that
        // matters more than stopping: recover the data.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The revision the cache has caught up to.
    pub fn revision(&self) -> Revision {
        self.lock().revision
    }

    /// A counter that moves whenever the cached objects change (and only then).
    pub fn changes(&self) -> u64 {
        self.lock().changes
    }

    /// Waits until the cache has seen `revision` (or `timeout` passes); false on timeout.
    pub async fn wait_for(&self, revision: Revision, timeout: Duration) -> bool {
        let mut rx = self.progress.subscribe();
        let result = tokio::time::timeout(timeout, rx.wait_for(|r| *r >= revision)).await;
        matches!(result, Ok(Ok(_)))
    }

    /// The cached object at `key`, if the cache has seen it.
    pub fn get(&self, key: &str) -> Option<Arc<Value>> {
        self.lock().objects.get(key).cloned()
    }

    /// A snapshot of the current objects and the revision they are at.
    pub fn snapshot(&self) -> (Vec<Arc<Value>>, Revision) {
        let inner = self.lock();
        (inner.objects.values().cloned().collect(), inner.revision)
    }

    /// Starts a client watch: `from = None` sends the current objects as ADDED events
    /// first; `Some(rv)` replays every event after `rv`.
    pub fn subscribe(&self, from: Option<Revision>) -> Result<Subscription, CacheError> {
        let mut inner = self.lock();
        let live = self.fanout.subscribe();
        match from {
            None => {
                let revision = inner.revision;
                let Inner { objects, encodings, .. } = &mut *inner;
                let initial = objects
                    .iter()
                    .map(|(key, obj)| {
                        let mut ev = CacheEvent::new(EventType::Added, key.clone(), obj.clone(), None, resource_version_of(obj).unwrap_or(revision));
                        ev.json = encodings.entry(key.clone()).or_default().clone();
                        Arc::new(ev)
                    })
                    .collect();
                Ok(Subscription { initial, live, after: revision })
            }
            Some(rv) => {
                if rv < inner.oldest {
                    return Err(CacheError::TooOld { requested: rv, oldest: inner.oldest });
                }
                let initial = inner.history.iter().filter(|e| e.revision > rv).cloned().collect::<Vec<_>>();
                let after = initial.last().map(|e| e.revision).unwrap_or(rv).max(rv);
                Ok(Subscription { initial, live, after })
            }
        }
    }
}

/// The resourceVersion of an object as a revision.
pub fn resource_version_of(obj: &Value) -> Option<Revision> {
    obj.pointer("/metadata/resourceVersion")?.as_str()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::embedded::EmbeddedStore;

    async fn put(store: &dyn Store, key: &str, name: &str) -> Revision {
        let body = serde_json::json!({"kind": "ConfigMap", "metadata": {"name": name}});
        store.create(key, serde_json::to_vec(&body).expect("json")).await.expect("create")
    }

    #[tokio::test]
    async fn resumes_from_a_revision_without_gap_or_repeat() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store: Arc<dyn Store> = Arc::new(EmbeddedStore::open(dir.path()).await.expect("open"));
        let shutdown = CancellationToken::new();
        let first = put(store.as_ref(), "/registry/configmaps/default/a", "a").await;
        let cache = WatchCache::start(store.clone(), "/registry/configmaps/".into(), shutdown.clone()).await.expect("start");
        let second = put(store.as_ref(), "/registry/configmaps/default/b", "b").await;
        put(store.as_ref(), "/registry/secrets/default/x", "x").await;
        let third = put(store.as_ref(), "/registry/configmaps/default/c", "c").await;
        assert!(cache.wait_for(third, Duration::from_secs(5)).await);

        let sub = cache.subscribe(Some(first)).expect("subscribe");
        let revs: Vec<Revision> = sub.initial.iter().map(|e| e.revision).collect();
        assert_eq!(revs, vec![second, third]);

        let sub = cache.subscribe(None).expect("subscribe");
        let names: Vec<&str> = sub.initial.iter().filter_map(|e| e.object.pointer("/metadata/name")?.as_str()).collect();
        assert_eq!(names, vec!["a", "b", "c"]);
        // The shared encoding is the object's JSON, resourceVersion included, and the
        // next watch's ADDED event reuses it.
        let ev = &sub.initial[1];
        assert_eq!(ev.object_json().as_ref(), serde_json::to_vec(&*ev.object).expect("json").as_slice());
        assert!(std::str::from_utf8(ev.object_json()).expect("utf-8").contains(&format!("\"resourceVersion\":\"{second}\"")));
        let again = cache.subscribe(None).expect("subscribe");
        assert!(again.initial[1].json.get().is_some_and(|b| b.as_ptr() == ev.object_json().as_ptr()));
        assert!(again.initial[0].json.get().is_none());
        shutdown.cancel();
    }
}
