//! The apiserver's storage: a `Store` trait with etcd's data model (one global revision,
//! per-key create/mod revision and version, compare-and-swap on mod revision, ranges with
//! limit/continue, watches from a revision, compaction) and its two backends.
//!
//! Only the apiserver touches a `Store`; everything above it speaks resourceVersions,
//! which are the store's mod revisions.

use std::pin::Pin;

use async_trait::async_trait;
use futures::Stream;

#[doc(hidden)]
pub mod conformance;
pub mod embedded;
pub mod encryption;
pub mod etcd;
mod wal;

/// A store revision. As in etcd, a fresh store is at revision 1, and each committed
/// write takes the next one (the first write is at revision 2).
pub type Revision = i64;

/// One key at one revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    pub key: String,
    pub value: Vec<u8>,
    /// Revision of the write that created this key (unchanged by updates).
    pub create_revision: Revision,
    /// Revision of the last write to this key.
    pub mod_revision: Revision,
    /// Number of writes to this key since it was created (1 after create).
    pub version: i64,
}

/// Options for [`Store::range`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RangeOptions {
    /// Return only keys strictly greater than this one (a list continuation).
    pub start_after: Option<String>,
    /// At most this many keys; `None` or `Some(0)` means no limit.
    pub limit: Option<usize>,
    /// Read the store as it was at this revision; `None` reads the newest.
    /// A revision below the compacted one fails with [`StoreError::Compacted`].
    pub revision: Option<Revision>,
}

/// What [`Store::range`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RangeResult {
    /// Keys in ascending byte order.
    pub kvs: Vec<KeyValue>,
    /// True when `limit` cut the answer short.
    pub more: bool,
    /// Keys matching the prefix (after `start_after`) in all, `kvs` included.
    pub remaining: i64,
    /// The revision the range was read at.
    pub revision: Revision,
}

/// One change seen by a watch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchEvent {
    /// A create or update; `prev` is the value before (None for a create).
    Put { kv: KeyValue, prev: Option<KeyValue> },
    /// A delete at `revision`; `prev` is the last value of the key.
    Delete { prev: KeyValue, revision: Revision },
    /// No change under the prefix up to and including this revision
    /// (a progress notification, used for watch bookmarks).
    Progress { revision: Revision },
}

impl WatchEvent {
    /// The revision the event happened at.
    pub fn revision(&self) -> Revision {
        match self {
            WatchEvent::Put { kv, .. } => kv.mod_revision,
            WatchEvent::Delete { revision, .. } | WatchEvent::Progress { revision } => *revision,
        }
    }
}

/// A stream of watch events in revision order. It ends when the store shuts down; an
/// `Err` item is the last one.
pub type WatchStream = Pin<Box<dyn Stream<Item = Result<WatchEvent, StoreError>> + Send>>;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("key {key} already exists")]
    AlreadyExists { key: String },
    #[error("key {key} not found")]
    NotFound { key: String },
    /// The key's mod revision is not the expected one; `current` is what is stored now.
    #[error("key {key} was modified (expected mod revision {expected})")]
    Conflict { key: String, expected: Revision, current: Option<KeyValue> },
    /// The requested revision has been compacted away.
    #[error("revision {requested} is compacted (compacted up to {compacted})")]
    Compacted { requested: Revision, compacted: Revision },
    /// The requested revision is in the future.
    #[error("revision {requested} is newer than the store's {current}")]
    FutureRevision { requested: Revision, current: Revision },
    #[error("storage I/O failed: {0}")]
    Io(#[source] std::io::Error),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    #[error("etcd request failed: {0}")]
    Etcd(#[source] etcd_client::Error),
    #[error("the store is closed")]
    Closed,
}

/// A key-value store with etcd's model. Values are opaque bytes; keys are
/// `/registry/<resource>/<namespace>/<name>` paths.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// The newest value of `key`, and the store's current revision.
    async fn get(&self, key: &str) -> Result<(Option<KeyValue>, Revision), StoreError>;

    /// Keys starting with `prefix`, in ascending order.
    async fn range(&self, prefix: &str, opts: RangeOptions) -> Result<RangeResult, StoreError>;

    /// Creates `key`; fails with `AlreadyExists` if it exists. Returns the new revision.
    async fn create(&self, key: &str, value: Vec<u8>) -> Result<Revision, StoreError>;

    /// Replaces `key` if its mod revision is `expected`; fails with `Conflict` otherwise
    /// (or `NotFound` if it does not exist). Returns the new revision.
    async fn update(&self, key: &str, value: Vec<u8>, expected: Revision) -> Result<Revision, StoreError>;

    /// Deletes `key`, only if its mod revision is `expected` when that is given. Returns
    /// the last value and the revision of the delete.
    async fn delete(&self, key: &str, expected: Option<Revision>) -> Result<(KeyValue, Revision), StoreError>;

    /// Every change under `prefix` with a revision greater than `after`, in order; events
    /// already in history are replayed first, then live ones follow. Fails with
    /// `Compacted` if history after `after` is no longer complete.
    async fn watch(&self, prefix: &str, after: Revision) -> Result<WatchStream, StoreError>;

    /// The newest committed revision.
    async fn current_revision(&self) -> Result<Revision, StoreError>;

    /// Forgets history older than `revision`: ranges and watches below it fail with
    /// `Compacted`. Compacting at or below the current compacted revision is a no-op.
    async fn compact(&self, revision: Revision) -> Result<(), StoreError>;

    /// The revision history is compacted up to (0 if never).
    async fn compacted_revision(&self) -> Result<Revision, StoreError>;

    /// Whether each member behind the store answers, in the order they were configured
    /// (what `kubectl get componentstatuses` lists as `etcd-0`, `etcd-1`…): `Err` says
    /// why one does not. A store that is not a cluster is one member.
    async fn member_health(&self) -> Vec<Result<(), String>> {
        vec![self.current_revision().await.map(|_| ()).map_err(|e| e.to_string())]
    }
}

/// The smallest key greater than every key starting with `prefix` (etcd's range end).
pub fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}
