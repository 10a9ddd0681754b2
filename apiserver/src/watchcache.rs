//! The watch cache: one store watch per resource feeds every client watch. It keeps the
//! current objects and a window of recent events, so a client can resume from any
//! resourceVersion in the window and a thousand watchers cost the store nothing more.
//!
//! Objects are kept as the JSON a watcher is sent, beside the few fields filters look at
//! ([`Selectable`]); an object is decoded only for a caller that asks for it as a
//! [`Value`], and kept decoded from then on. A pod as bytes is about a tenth of the same
//! pod as a `Value` tree, and most cached objects (pods, events, the history) are only
//! ever sent as they are.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;

use futures::StreamExt;
use serde_json::Value;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::filter::{selectable_pointers, Selectable};
use crate::registry::ResourceInfo;
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

/// One object as the cache keeps it.
#[derive(Debug)]
pub struct CachedObject {
    /// The object's JSON with its resourceVersion, as a watcher or a list is sent it.
    json: Bytes,
    revision: Revision,
    selectable: Selectable,
    /// The object decoded, once a caller asked for it as a [`Value`].
    decoded: OnceLock<Arc<Value>>,
}

impl CachedObject {
    /// An object from its stored bytes, at `revision`, keeping what filters read at
    /// `pointers` (see [`selectable_pointers`]).
    pub fn from_stored(stored: &[u8], revision: Revision, pointers: &[&'static str]) -> Result<CachedObject, StoreError> {
        // Read without decoding the object: most cached objects are only ever sent on.
        let selectable = Selectable::of_json(stored, pointers).map_err(|e| StoreError::Corrupt(format!("stored object is not JSON: {e}")))?;
        let mut json = Vec::with_capacity(stored.len() + 32);
        if !crate::rawjson::append_with_resource_version(&mut json, stored, revision) {
            json = encode(&decode_stored(stored, revision)?)?;
        }
        Ok(CachedObject { json: Bytes::from(json), revision, selectable, decoded: OnceLock::new() })
    }

    /// This object as it was deleted at `revision`: the same, with that resourceVersion.
    fn deleted_at(&self, revision: Revision) -> Result<CachedObject, StoreError> {
        let mut obj = self.decode();
        set_resource_version(&mut obj, revision);
        Ok(CachedObject { json: Bytes::from(encode(&obj)?), revision, selectable: self.selectable.clone(), decoded: OnceLock::new() })
    }

    /// The object's JSON, resourceVersion included.
    pub fn json(&self) -> &Bytes {
        &self.json
    }

    /// The revision the JSON carries as its resourceVersion.
    pub fn revision(&self) -> Revision {
        self.revision
    }

    /// What a filter looks at.
    pub fn selectable(&self) -> &Selectable {
        &self.selectable
    }

    /// The object decoded; decoded once, then shared by every caller.
    pub fn value(&self) -> Arc<Value> {
        self.decoded.get_or_init(|| Arc::new(self.decode())).clone()
    }

    /// The object decoded afresh and not kept (for a caller that uses it once).
    pub fn decode(&self) -> Value {
        if let Some(value) = self.decoded.get() {
            return (**value).clone();
        }
        // The bytes are JSON this cache wrote from a decoded object; they decode.
        serde_json::from_slice(&self.json).unwrap_or_else(|e| {
            warn!(error = %e, "watch cache: a cached object does not decode");
            Value::Null
        })
    }
}

fn encode(obj: &Value) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(obj).map_err(|e| StoreError::Corrupt(format!("object does not encode as JSON: {e}")))
}

/// A change to one object, with the object as it is after the change (for a delete, as
/// it was last, carrying the delete's resourceVersion) and as it was before.
#[derive(Debug)]
pub struct CacheEvent {
    pub kind: EventType,
    pub key: String,
    pub object: Arc<CachedObject>,
    pub prev: Option<Arc<CachedObject>>,
    pub revision: Revision,
}

impl CacheEvent {
    /// The event for a store event, reading `pointers` for filters; `None` for progress
    /// notifications and objects that do not decode. `current` is the object the cache
    /// holds at the key, if it knows one.
    pub fn from_store(ev: WatchEvent, current: Option<Arc<CachedObject>>, pointers: &[&'static str]) -> Option<Result<CacheEvent, (String, StoreError)>> {
        match ev {
            WatchEvent::Put { kv, prev } => {
                let object = match CachedObject::from_stored(&kv.value, kv.mod_revision, pointers) {
                    Ok(o) => Arc::new(o),
                    Err(e) => return Some(Err((kv.key, e))),
                };
                let prev = current.or_else(|| prev.and_then(|p| CachedObject::from_stored(&p.value, p.mod_revision, pointers).ok()).map(Arc::new));
                let kind = if prev.is_some() { EventType::Modified } else { EventType::Added };
                Some(Ok(CacheEvent { kind, key: kv.key, object, prev, revision: kv.mod_revision }))
            }
            WatchEvent::Delete { prev, revision } => {
                let object = match CachedObject::from_stored(&prev.value, revision, pointers) {
                    Ok(o) => Arc::new(o),
                    Err(e) => return Some(Err((prev.key, e))),
                };
                let old = current.or_else(|| CachedObject::from_stored(&prev.value, prev.mod_revision, pointers).ok().map(Arc::new));
                Some(Ok(CacheEvent { kind: EventType::Deleted, key: prev.key, object, prev: old, revision }))
            }
            WatchEvent::Progress { .. } => None,
        }
    }
}

/// Why a client watch cannot start or go on.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("too old resource version: {requested} ({oldest})")]
    TooOld { requested: Revision, oldest: Revision },
}

struct Inner {
    objects: BTreeMap<String, Arc<CachedObject>>,
    revision: Revision,
    /// Events with revision > `oldest` are all in `history`.
    oldest: Revision,
    history: VecDeque<Arc<CacheEvent>>,
    /// Counts changes to `objects` (not progress), so that derived views such as the
    /// compiled RBAC policy know when to rebuild.
    changes: u64,
}

/// A cache over every object of one storage resource.
pub struct WatchCache {
    prefix: String,
    /// What [`Selectable`] reads in this resource's objects.
    pointers: Vec<&'static str>,
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
    /// Starts a cache over every object stored as `res` (its storage resource): lists
    /// them, then follows the store's watch until `shutdown`. Returns once the initial
    /// list is loaded.
    pub async fn start(store: Arc<dyn Store>, res: &ResourceInfo, shutdown: CancellationToken) -> Result<Arc<WatchCache>, StoreError> {
        let (fanout, _) = broadcast::channel(FANOUT_BUFFER);
        let (progress, _) = tokio::sync::watch::channel(0);
        let cache = Arc::new(WatchCache {
            prefix: res.prefix(),
            pointers: selectable_pointers(res.storage_resource),
            inner: Mutex::new(Inner { objects: BTreeMap::new(), revision: 0, oldest: 0, history: VecDeque::new(), changes: 0 }),
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
            let obj = CachedObject::from_stored(&kv.value, kv.mod_revision, &self.pointers)?;
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
                    // A key's mod revision changes with every write to it.
                    Some(old) if old.revision != obj.revision => events.push((EventType::Modified, key.clone(), obj.clone(), Some(old.clone()))),
                    Some(_) => {}
                }
            }
            for (key, old) in &inner.objects {
                if !fresh.contains_key(key) {
                    let gone = old.deleted_at(revision)?;
                    events.push((EventType::Deleted, key.clone(), Arc::new(gone), Some(old.clone())));
                }
            }
            for (kind, key, object, prev) in events {
                let ev = Arc::new(CacheEvent { kind, key, object, prev, revision });
                Self::record(&mut inner, ev.clone());
                let _ = self.fanout.send(ev);
            }
        } else {
            inner.oldest = revision;
        }
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
        let key = match &ev {
            WatchEvent::Put { kv, .. } => kv.key.clone(),
            WatchEvent::Delete { prev, .. } => prev.key.clone(),
            WatchEvent::Progress { revision } => {
                let mut inner = self.lock();
                inner.revision = inner.revision.max(*revision);
                drop(inner);
                self.progress.send_replace(*revision);
                return;
            }
        };
        let current = self.lock().objects.get(&key).cloned();
        // Decoded outside the lock: only this task changes the objects.
        let ev = match CacheEvent::from_store(ev, current, &self.pointers) {
            Some(Ok(ev)) => Arc::new(ev),
            Some(Err((key, err))) => {
                warn!(%key, error = %err, "watch cache: skipping undecodable object");
                return;
            }
            None => return,
        };
        let mut inner = self.lock();
        match ev.kind {
            EventType::Deleted => inner.objects.remove(&ev.key),
            EventType::Added | EventType::Modified => inner.objects.insert(ev.key.clone(), ev.object.clone()),
        };
        inner.revision = ev.revision;
        Self::record(&mut inner, ev.clone());
        let revision = inner.revision;
        // Sent under the lock so that subscribers see events in order with history.
        let _ = self.fanout.send(ev);
        drop(inner);
        self.progress.send_replace(revision);
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
        let object = self.lock().objects.get(key).cloned();
        object.map(|o| o.value())
    }

    /// The current objects (as the cache keeps them) and the revision they are at.
    pub fn objects(&self) -> (Vec<Arc<CachedObject>>, Revision) {
        let inner = self.lock();
        (inner.objects.values().cloned().collect(), inner.revision)
    }

    /// The current objects, decoded, and the revision they are at. For resources with
    /// few objects; filter [`WatchCache::objects`] first where there may be many.
    pub fn snapshot(&self) -> (Vec<Arc<Value>>, Revision) {
        let (objects, revision) = self.objects();
        (objects.iter().map(|o| o.value()).collect(), revision)
    }

    /// Starts a client watch: `from = None` sends the current objects as ADDED events
    /// first; `Some(rv)` replays every event after `rv`.
    pub fn subscribe(&self, from: Option<Revision>) -> Result<Subscription, CacheError> {
        let inner = self.lock();
        let live = self.fanout.subscribe();
        match from {
            None => {
                let revision = inner.revision;
                let initial = inner
                    .objects
                    .iter()
                    .map(|(key, obj)| {
                        Arc::new(CacheEvent { kind: EventType::Added, key: key.clone(), object: obj.clone(), prev: None, revision: obj.revision })
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::embedded::EmbeddedStore;

    async fn put(store: &dyn Store, key: &str, name: &str) -> Revision {
        let body = serde_json::json!({"kind": "ConfigMap", "metadata": {"name": name, "namespace": "default", "labels": {"app": name}}});
        store.create(key, serde_json::to_vec(&body).expect("json")).await.expect("create")
    }

    fn configmaps() -> &'static ResourceInfo {
        crate::registry::lookup("", "v1", "configmaps").expect("configmaps")
    }

    #[tokio::test]
    async fn resumes_from_a_revision_without_gap_or_repeat() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store: Arc<dyn Store> = Arc::new(EmbeddedStore::open(dir.path()).await.expect("open"));
        let shutdown = CancellationToken::new();
        let first = put(store.as_ref(), "/registry/configmaps/default/a", "a").await;
        let cache = WatchCache::start(store.clone(), configmaps(), shutdown.clone()).await.expect("start");
        let second = put(store.as_ref(), "/registry/configmaps/default/b", "b").await;
        put(store.as_ref(), "/registry/secrets/default/x", "x").await;
        let third = put(store.as_ref(), "/registry/configmaps/default/c", "c").await;
        assert!(cache.wait_for(third, Duration::from_secs(5)).await);

        let sub = cache.subscribe(Some(first)).expect("subscribe");
        let revs: Vec<Revision> = sub.initial.iter().map(|e| e.revision).collect();
        assert_eq!(revs, vec![second, third]);

        let sub = cache.subscribe(None).expect("subscribe");
        let names: Vec<&str> = sub.initial.iter().filter_map(|e| e.object.selectable().at("/metadata/name")).collect();
        assert_eq!(names, vec!["a", "b", "c"]);
        // The JSON sent is what decoding the stored object, setting its resourceVersion
        // and encoding it would give, and the next watch's ADDED event shares it.
        let ev = &sub.initial[1];
        let (stored, _) = store.get("/registry/configmaps/default/b").await.expect("get");
        let stored = stored.expect("stored");
        let expected = serde_json::to_vec(&decode_stored(&stored.value, second).expect("decode")).expect("json");
        assert_eq!(ev.object.json().as_ref(), expected.as_slice());
        assert!(std::str::from_utf8(ev.object.json()).expect("utf-8").contains(&format!("\"resourceVersion\":\"{second}\"")));
        let again = cache.subscribe(None).expect("subscribe");
        assert_eq!(again.initial[1].object.json().as_ptr(), ev.object.json().as_ptr());
        shutdown.cancel();
    }

    #[tokio::test]
    async fn keeps_bytes_and_decodes_only_on_request() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store: Arc<dyn Store> = Arc::new(EmbeddedStore::open(dir.path()).await.expect("open"));
        let shutdown = CancellationToken::new();
        let cache = WatchCache::start(store.clone(), configmaps(), shutdown.clone()).await.expect("start");
        let created = put(store.as_ref(), "/registry/configmaps/default/a", "a").await;
        put(store.as_ref(), "/registry/configmaps/default/b", "b").await;
        let (_, deleted) = store.delete("/registry/configmaps/default/b", None).await.expect("delete");
        assert!(cache.wait_for(deleted, Duration::from_secs(5)).await);

        let (objects, _) = cache.objects();
        assert_eq!(objects.len(), 1);
        assert!(objects[0].decoded.get().is_none(), "nothing asked for the object yet");
        assert_eq!(objects[0].selectable().labels.get("app").map(String::as_str), Some("a"));
        assert_eq!(objects[0].selectable().namespace(), Some("default"));
        let value = cache.get("/registry/configmaps/default/a").expect("cached");
        assert_eq!(value.pointer("/metadata/resourceVersion").and_then(Value::as_str), Some(created.to_string().as_str()));
        assert!(objects[0].decoded.get().is_some_and(|v| Arc::ptr_eq(v, &value)), "kept once decoded");

        // The delete is sent as the object was last, at the delete's resourceVersion.
        let sub = cache.subscribe(Some(created)).expect("subscribe");
        let gone = sub.initial.last().expect("events");
        assert_eq!(gone.kind, EventType::Deleted);
        assert_eq!(gone.object.decode().pointer("/metadata/resourceVersion").and_then(Value::as_str), Some(deleted.to_string().as_str()));
        assert_eq!(gone.object.selectable().at("/metadata/name"), Some("b"));
        assert!(gone.prev.as_ref().is_some_and(|p| p.revision() < deleted));
        shutdown.cancel();
    }
}
