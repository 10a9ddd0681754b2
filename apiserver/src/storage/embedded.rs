//! The embedded store: the apiserver's default, a single-process MVCC key-value store
//! persisted in one append-only log under `--data-dir`.
//!
//! - **Model.** Like etcd: a fresh store is at revision 1 with nothing compacted (0);
//!   each write takes the next revision. Every key keeps its versions since the
//!   compacted revision, so [`Store::range`] can read the past, and the store keeps the
//!   watch events of every revision from the compacted one on (as etcd does, the
//!   compacted revision itself stays readable and watchable).
//! - **Durability.** One writer thread owns the log file ([`super::wal`] framing). It
//!   takes every write queued at that moment (group commit), checks each one's
//!   compare-and-swap in queue order against the state plus the batch so far, appends
//!   the batch as one frame, `sync_data`s once, then applies the batch to memory and
//!   answers each caller. A write is acknowledged only once it is on disk, and a reader
//!   never sees a write that is not.
//! - **Recovery.** [`EmbeddedStore::open`] replays the log; a torn last frame (a crash
//!   mid-append) is cut off; a damaged frame in the middle is [`StoreError::Corrupt`].
//! - **Compaction.** [`Store::compact`] is logged and drops older history. The store
//!   also compacts itself, keeping the last [`EmbeddedOptions::history_revisions`]
//!   revisions (10,000 by default, about what the Kubernetes watch cache and a
//!   reconnecting client need to resume, at a few MB of memory for typical objects) —
//!   the apiserver's periodic compaction can only make history shorter. After a
//!   compaction, if the log has grown to more than twice the live data (and past
//!   [`EmbeddedOptions::snapshot_min_bytes`]), it is rewritten as a snapshot: a new
//!   file, fsync'd, renamed over the old one, directory fsync'd.
//! - **Watches.** A watch is a cursor over the event history, woken by a revision
//!   broadcast: writers never wait for watchers. A watcher that falls behind the
//!   compacted revision gets [`StoreError::Compacted`] as its last item, as in etcd, and
//!   must re-list. Idle watches get a [`WatchEvent::Progress`] every
//!   [`EmbeddedOptions::progress_interval`].
//!
//! One process at a time may open a data directory (not yet enforced by a lock).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::{mpsc, oneshot, watch};

use super::wal::{self, Encoder, Entry};
use super::{
    KeyValue, RangeOptions, RangeResult, Revision, Store, StoreError, WatchEvent, WatchStream,
};

/// Name of the log file inside the data directory.
pub const LOG_FILE: &str = "store.log";
const LOG_TMP_FILE: &str = "store.log.tmp";

/// Tunables of an [`EmbeddedStore`].
#[derive(Debug, Clone)]
pub struct EmbeddedOptions {
    /// Revisions of history kept by automatic compaction (0 turns it off). The store
    /// compacts to `current - history_revisions` once history exceeds it by a tenth.
    pub history_revisions: i64,
    /// The log is never rewritten while smaller than this.
    pub snapshot_min_bytes: u64,
    /// How long a watch may be idle before it gets a progress event (`None`: never).
    pub progress_interval: Option<Duration>,
    /// Most writes in one group commit.
    pub max_batch: usize,
}

impl Default for EmbeddedOptions {
    fn default() -> Self {
        Self {
            history_revisions: 10_000,
            snapshot_min_bytes: 16 << 20,
            progress_interval: Some(Duration::from_secs(10)),
            max_batch: 1024,
        }
    }
}

/// One stored version of a key: `None` is a tombstone.
#[derive(Debug, Clone)]
struct Version {
    revision: Revision,
    kv: Option<KeyValue>,
}

#[derive(Debug)]
struct State {
    revision: Revision,
    compacted: Revision,
    /// Versions of each key in revision order, since the compacted revision (plus the
    /// one visible at it).
    keys: BTreeMap<String, Vec<Version>>,
    /// One event per revision from `compacted` on, in order.
    events: VecDeque<WatchEvent>,
}

impl State {
    fn new() -> Self {
        Self {
            revision: 1,
            compacted: 0,
            keys: BTreeMap::new(),
            events: VecDeque::new(),
        }
    }

    fn latest(&self, key: &str) -> Option<&KeyValue> {
        self.keys
            .get(key)
            .and_then(|h| h.last())
            .and_then(|v| v.kv.as_ref())
    }

    fn apply(&mut self, entry: Entry) -> Result<(), StoreError> {
        match entry {
            Entry::Put(kv) => {
                let revision = kv.mod_revision;
                self.check_next(revision)?;
                let prev = self.latest(&kv.key).cloned();
                self.keys.entry(kv.key.clone()).or_default().push(Version {
                    revision,
                    kv: Some(kv.clone()),
                });
                self.events.push_back(WatchEvent::Put { kv, prev });
                self.revision = revision;
            }
            Entry::Delete { key, revision } => {
                self.check_next(revision)?;
                let prev = self
                    .latest(&key)
                    .cloned()
                    .ok_or_else(|| StoreError::Corrupt(format!("log deletes missing key {key}")))?;
                self.keys
                    .entry(key)
                    .or_default()
                    .push(Version { revision, kv: None });
                self.events.push_back(WatchEvent::Delete { prev, revision });
                self.revision = revision;
            }
            Entry::Compact { revision } => self.compact(revision),
            Entry::SnapshotHeader {
                revision,
                compacted,
            } => {
                *self = State::new();
                self.revision = revision;
                self.compacted = compacted;
            }
            Entry::BaseKv(kv) => {
                let revision = kv.mod_revision;
                self.keys.entry(kv.key.clone()).or_default().push(Version {
                    revision,
                    kv: Some(kv),
                });
            }
            Entry::HistoryEvent(event) => self.events.push_back(event),
        }
        Ok(())
    }

    fn check_next(&self, revision: Revision) -> Result<(), StoreError> {
        if revision != self.revision + 1 {
            return Err(StoreError::Corrupt(format!(
                "log jumps from revision {} to {revision}",
                self.revision
            )));
        }
        Ok(())
    }

    fn compact(&mut self, revision: Revision) {
        if revision <= self.compacted {
            return;
        }
        self.compacted = revision;
        self.keys.retain(|_, history| {
            let visible = history.partition_point(|v| v.revision <= revision);
            let drop = match visible.checked_sub(1).map(|i| &history[i]) {
                Some(v) if v.kv.is_some() => visible - 1,
                _ => visible,
            };
            history.drain(..drop);
            !history.is_empty()
        });
        while self.events.front().is_some_and(|e| e.revision() < revision) {
            self.events.pop_front();
        }
    }

    /// The entries a snapshot of this state consists of.
    fn snapshot_entries(&self) -> Vec<Entry> {
        let base = self.compacted;
        let mut out = vec![Entry::SnapshotHeader {
            revision: base.max(1),
            compacted: base,
        }];
        for history in self.keys.values() {
            let visible = history.partition_point(|v| v.revision <= base);
            if let Some(kv) = visible.checked_sub(1).and_then(|i| history[i].kv.as_ref()) {
                out.push(Entry::BaseKv(kv.clone()));
            }
        }
        for event in &self.events {
            if event.revision() <= base {
                out.push(Entry::HistoryEvent(event.clone()));
                continue;
            }
            match event {
                WatchEvent::Put { kv, .. } => out.push(Entry::Put(kv.clone())),
                WatchEvent::Delete { prev, revision } => out.push(Entry::Delete {
                    key: prev.key.clone(),
                    revision: *revision,
                }),
                WatchEvent::Progress { .. } => {}
            }
        }
        out
    }

    /// Rough size of a snapshot, to decide when the log is worth rewriting.
    fn live_bytes(&self) -> u64 {
        let kv_size = |kv: &KeyValue| (kv.key.len() + kv.value.len() + 40) as u64;
        let keys: u64 = self
            .keys
            .values()
            .flat_map(|h| h.iter())
            .map(|v| v.kv.as_ref().map_or(16, kv_size))
            .sum();
        let events: u64 = self
            .events
            .iter()
            .map(|e| match e {
                WatchEvent::Put { kv, .. } => kv_size(kv),
                WatchEvent::Delete { prev, .. } => prev.key.len() as u64 + 16,
                WatchEvent::Progress { .. } => 0,
            })
            .sum();
        keys + events
    }
}

type Shared = Arc<RwLock<State>>;

fn read(state: &Shared) -> RwLockReadGuard<'_, State> {
    state.read().unwrap_or_else(|e| e.into_inner())
}

fn write(state: &Shared) -> RwLockWriteGuard<'_, State> {
    state.write().unwrap_or_else(|e| e.into_inner())
}

enum Op {
    Create {
        key: String,
        value: Vec<u8>,
    },
    Update {
        key: String,
        value: Vec<u8>,
        expected: Revision,
    },
    Delete {
        key: String,
        expected: Option<Revision>,
    },
    Compact {
        revision: Revision,
    },
}

enum Reply {
    Revision(Revision),
    Deleted(KeyValue, Revision),
    Done,
}

struct Request {
    op: Op,
    reply: oneshot::Sender<Result<Reply, StoreError>>,
}

/// The embedded MVCC store. See the module docs.
pub struct EmbeddedStore {
    state: Shared,
    requests: mpsc::Sender<Request>,
    revisions: watch::Receiver<Revision>,
    options: EmbeddedOptions,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
    dir: PathBuf,
}

impl std::fmt::Debug for EmbeddedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedStore")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

impl EmbeddedStore {
    /// Opens (creating if needed) the store in `dir` with default options.
    pub async fn open(dir: &Path) -> Result<EmbeddedStore, StoreError> {
        Self::open_with(dir, EmbeddedOptions::default()).await
    }

    /// Opens (creating if needed) the store in `dir`.
    pub async fn open_with(
        dir: &Path,
        options: EmbeddedOptions,
    ) -> Result<EmbeddedStore, StoreError> {
        let dir_owned = dir.to_path_buf();
        let (state, file, log_bytes) = tokio::task::spawn_blocking(move || recover(&dir_owned))
            .await
            .map_err(|e| StoreError::Io(std::io::Error::other(e)))??;
        let revision = state.revision;
        tracing::info!(dir = %dir.display(), revision, compacted = state.compacted, log_bytes, "embedded store opened");
        let state = Arc::new(RwLock::new(state));
        let (tx, rx) = mpsc::channel(options.max_batch.max(1) * 4);
        let (rev_tx, rev_rx) = watch::channel(revision);
        let writer = Writer {
            state: state.clone(),
            requests: rx,
            revisions: rev_tx,
            file,
            log_bytes,
            dir: dir.to_path_buf(),
            options: options.clone(),
            failed: None,
        };
        let handle = std::thread::Builder::new()
            .name("embedded-store-writer".into())
            .spawn(move || writer.run())
            .map_err(StoreError::Io)?;
        Ok(EmbeddedStore {
            state,
            requests: tx,
            revisions: rev_rx,
            options,
            writer: Mutex::new(Some(handle)),
            dir: dir.to_path_buf(),
        })
    }

    /// Stops the writer once queued writes are done and waits for it; open watches end.
    pub async fn close(self) {
        let handle = self.writer.lock().unwrap_or_else(|e| e.into_inner()).take();
        drop(self.requests);
        if let Some(handle) = handle {
            let _ = tokio::task::spawn_blocking(move || handle.join()).await;
        }
    }

    /// Size in bytes of the log file now (for tests and metrics).
    pub fn log_size(&self) -> Result<u64, StoreError> {
        std::fs::metadata(self.dir.join(LOG_FILE))
            .map(|m| m.len())
            .map_err(StoreError::Io)
    }

    async fn submit(&self, op: Op) -> Result<Reply, StoreError> {
        let (reply, rx) = oneshot::channel();
        self.requests
            .send(Request { op, reply })
            .await
            .map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }
}

/// Reads the log in `dir`, cutting off a torn tail; returns the state, the file open for
/// appending and its length.
fn recover(dir: &Path) -> Result<(State, File, u64), StoreError> {
    std::fs::create_dir_all(dir).map_err(StoreError::Io)?;
    // A leftover temporary snapshot is from a rewrite that did not finish.
    let _ = std::fs::remove_file(dir.join(LOG_TMP_FILE));
    let path = dir.join(LOG_FILE);
    let mut file = OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .open(&path)
        .map_err(StoreError::Io)?;
    let mut data = Vec::new();
    file.read_to_end(&mut data).map_err(StoreError::Io)?;
    let parsed = wal::parse_frames(&data)?;
    let mut state = State::new();
    for payload in &parsed.payloads {
        let mut decoder = wal::Decoder::new(payload);
        while let Some(entry) = decoder.next_entry()? {
            state.apply(entry)?;
        }
    }
    if parsed.valid_len < data.len() {
        tracing::warn!(
            path = %path.display(),
            valid = parsed.valid_len,
            dropped = data.len() - parsed.valid_len,
            "cutting off a torn tail of the store log"
        );
        file.set_len(parsed.valid_len as u64)
            .map_err(StoreError::Io)?;
        file.sync_all().map_err(StoreError::Io)?;
    }
    Ok((state, file, parsed.valid_len as u64))
}

fn clone_io(e: &std::io::Error) -> StoreError {
    StoreError::Io(std::io::Error::new(e.kind(), e.to_string()))
}

struct Writer {
    state: Shared,
    requests: mpsc::Receiver<Request>,
    revisions: watch::Sender<Revision>,
    file: File,
    log_bytes: u64,
    dir: PathBuf,
    options: EmbeddedOptions,
    /// Set when an append failed: the file's tail is unknown, so no more writes.
    failed: Option<std::io::Error>,
}

impl Writer {
    fn run(mut self) {
        while let Some(first) = self.requests.blocking_recv() {
            let mut batch = vec![first];
            while batch.len() < self.options.max_batch.max(1) {
                match self.requests.try_recv() {
                    Ok(r) => batch.push(r),
                    Err(_) => break,
                }
            }
            self.commit(batch);
        }
        tracing::debug!("embedded store writer stopped");
    }

    fn commit(&mut self, batch: Vec<Request>) {
        if let Some(e) = &self.failed {
            for r in batch {
                let _ = r.reply.send(Err(clone_io(e)));
            }
            return;
        }
        let (entries, outcomes, compacted) = self.evaluate(&batch);
        if !entries.is_empty() {
            let mut enc = Encoder::new();
            for e in &entries {
                enc.entry(e);
            }
            let payload = enc.finish();
            let mut frame = Vec::with_capacity(payload.len() + wal::FRAME_HEADER);
            let written = wal::write_frame(&mut frame, &payload)
                .and_then(|n| self.file.write_all(&frame).map(|()| n))
                .and_then(|n| self.file.sync_data().map(|()| n));
            match written {
                Ok(n) => self.log_bytes += n as u64,
                Err(e) => {
                    tracing::error!(error = %e, "appending to the store log failed; the store is now read-only");
                    for r in batch {
                        let _ = r.reply.send(Err(clone_io(&e)));
                    }
                    self.failed = Some(e);
                    return;
                }
            }
            let revision = {
                let mut state = write(&self.state);
                for entry in entries {
                    if let Err(e) = state.apply(entry) {
                        // Entries were built from this very state; this is a bug.
                        tracing::error!(error = %e, "applying a committed batch failed");
                    }
                }
                state.revision
            };
            self.revisions.send_replace(revision);
        }
        for (request, outcome) in batch.into_iter().zip(outcomes) {
            let _ = request.reply.send(outcome);
        }
        if compacted {
            self.maybe_snapshot();
        }
    }

    /// Checks each write in order against the state plus the batch before it.
    fn evaluate(&self, batch: &[Request]) -> (Vec<Entry>, Vec<Result<Reply, StoreError>>, bool) {
        let state = read(&self.state);
        let mut overlay: HashMap<&str, Option<KeyValue>> = HashMap::new();
        let mut revision = state.revision;
        let mut compacted = state.compacted;
        let mut entries = Vec::new();
        let mut outcomes = Vec::with_capacity(batch.len());
        let mut any_compaction = false;
        for request in batch {
            let current =
                |overlay: &HashMap<&str, Option<KeyValue>>, key: &str| match overlay.get(key) {
                    Some(v) => v.clone(),
                    None => state.latest(key).cloned(),
                };
            let outcome = match &request.op {
                Op::Create { key, value } => match current(&overlay, key) {
                    Some(_) => Err(StoreError::AlreadyExists { key: key.clone() }),
                    None => {
                        revision += 1;
                        let kv = KeyValue {
                            key: key.clone(),
                            value: value.clone(),
                            create_revision: revision,
                            mod_revision: revision,
                            version: 1,
                        };
                        overlay.insert(key, Some(kv.clone()));
                        entries.push(Entry::Put(kv));
                        Ok(Reply::Revision(revision))
                    }
                },
                Op::Update {
                    key,
                    value,
                    expected,
                } => match current(&overlay, key) {
                    None => Err(StoreError::NotFound { key: key.clone() }),
                    Some(cur) if cur.mod_revision != *expected => Err(StoreError::Conflict {
                        key: key.clone(),
                        expected: *expected,
                        current: Some(cur),
                    }),
                    Some(cur) => {
                        revision += 1;
                        let kv = KeyValue {
                            key: key.clone(),
                            value: value.clone(),
                            create_revision: cur.create_revision,
                            mod_revision: revision,
                            version: cur.version + 1,
                        };
                        overlay.insert(key, Some(kv.clone()));
                        entries.push(Entry::Put(kv));
                        Ok(Reply::Revision(revision))
                    }
                },
                Op::Delete { key, expected } => match current(&overlay, key) {
                    None => Err(StoreError::NotFound { key: key.clone() }),
                    Some(cur) if expected.is_some_and(|e| e != cur.mod_revision) => {
                        Err(StoreError::Conflict {
                            key: key.clone(),
                            expected: expected.unwrap_or_default(),
                            current: Some(cur),
                        })
                    }
                    Some(cur) => {
                        revision += 1;
                        overlay.insert(key, None);
                        entries.push(Entry::Delete {
                            key: key.clone(),
                            revision,
                        });
                        Ok(Reply::Deleted(cur, revision))
                    }
                },
                Op::Compact { revision: target } => {
                    if *target > revision {
                        Err(StoreError::FutureRevision {
                            requested: *target,
                            current: revision,
                        })
                    } else {
                        if *target > compacted {
                            compacted = *target;
                            any_compaction = true;
                            entries.push(Entry::Compact { revision: *target });
                        }
                        Ok(Reply::Done)
                    }
                }
            };
            outcomes.push(outcome);
        }
        let keep = self.options.history_revisions;
        if keep > 0 && revision - compacted > keep + keep / 10 {
            tracing::debug!(
                revision,
                compact_to = revision - keep,
                "automatic compaction"
            );
            entries.push(Entry::Compact {
                revision: revision - keep,
            });
            any_compaction = true;
        }
        (entries, outcomes, any_compaction)
    }

    /// Rewrites the log as a snapshot when it has grown well past the live data.
    fn maybe_snapshot(&mut self) {
        let (entries, live) = {
            let state = read(&self.state);
            let live = state.live_bytes();
            if self.log_bytes < self.options.snapshot_min_bytes || self.log_bytes < 2 * live {
                return;
            }
            (state.snapshot_entries(), live)
        };
        match self.write_snapshot(&entries) {
            Ok(()) => tracing::info!(
                live,
                log_bytes = self.log_bytes,
                "rewrote the store log as a snapshot"
            ),
            Err(e) => {
                tracing::warn!(error = %e, "rewriting the store log failed; keeping the old one")
            }
        }
    }

    fn write_snapshot(&mut self, entries: &[Entry]) -> std::io::Result<()> {
        const CHUNK: usize = 1 << 20;
        let tmp = self.dir.join(LOG_TMP_FILE);
        let path = self.dir.join(LOG_FILE);
        let mut out = std::io::BufWriter::new(File::create(&tmp)?);
        let mut size = 0u64;
        let mut enc = Encoder::new();
        for entry in entries {
            enc.entry(entry);
            if enc.len() >= CHUNK {
                size += wal::write_frame(&mut out, &std::mem::take(&mut enc).finish())? as u64;
            }
        }
        if !enc.is_empty() {
            size += wal::write_frame(&mut out, &enc.finish())? as u64;
        }
        let file = out.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        drop(file);
        std::fs::rename(&tmp, &path)?;
        File::open(&self.dir)?.sync_all()?;
        match OpenOptions::new().append(true).open(&path) {
            Ok(f) => {
                self.file = f;
                self.log_bytes = size;
                Ok(())
            }
            Err(e) => {
                // The snapshot is in place but we cannot append to it: stop writing.
                self.failed = Some(std::io::Error::new(e.kind(), e.to_string()));
                Err(e)
            }
        }
    }
}

/// Most events a watch copies out of history per lock.
const WATCH_BATCH: usize = 512;

struct Cursor {
    state: Shared,
    revisions: watch::Receiver<Revision>,
    prefix: String,
    /// Every event up to this revision has been delivered.
    delivered: Revision,
    buffer: VecDeque<Result<WatchEvent, StoreError>>,
    done: bool,
    progress_interval: Option<Duration>,
}

impl Cursor {
    /// Copies the next events after `delivered` into the buffer; false if none.
    fn fill(&mut self) -> bool {
        let state = read(&self.state);
        if self.delivered + 1 < state.compacted {
            self.buffer.push_back(Err(StoreError::Compacted {
                requested: self.delivered + 1,
                compacted: state.compacted,
            }));
            self.done = true;
            return true;
        }
        let start = state
            .events
            .partition_point(|e| e.revision() <= self.delivered);
        let mut scanned = 0;
        for event in state.events.range(start..) {
            if scanned >= WATCH_BATCH {
                break;
            }
            scanned += 1;
            self.delivered = event.revision();
            let key = match event {
                WatchEvent::Put { kv, .. } => &kv.key,
                WatchEvent::Delete { prev, .. } => &prev.key,
                WatchEvent::Progress { .. } => continue,
            };
            if key.starts_with(&self.prefix) {
                self.buffer.push_back(Ok(event.clone()));
            }
        }
        if scanned < WATCH_BATCH {
            self.delivered = self.delivered.max(state.revision);
        }
        !self.buffer.is_empty()
    }

    async fn next(mut self) -> Option<(Result<WatchEvent, StoreError>, Cursor)> {
        loop {
            if let Some(item) = self.buffer.pop_front() {
                return Some((item, self));
            }
            if self.done {
                return None;
            }
            self.revisions.borrow_and_update();
            if self.fill() {
                continue;
            }
            let changed = match self.progress_interval {
                Some(interval) => {
                    match tokio::time::timeout(interval, self.revisions.changed()).await {
                        Ok(r) => r,
                        Err(_) => {
                            self.buffer.push_back(Ok(WatchEvent::Progress {
                                revision: self.delivered,
                            }));
                            continue;
                        }
                    }
                }
                None => self.revisions.changed().await,
            };
            if changed.is_err() {
                // The store is shut down.
                return None;
            }
        }
    }
}

#[async_trait]
impl Store for EmbeddedStore {
    async fn get(&self, key: &str) -> Result<(Option<KeyValue>, Revision), StoreError> {
        let state = read(&self.state);
        Ok((state.latest(key).cloned(), state.revision))
    }

    async fn range(&self, prefix: &str, opts: RangeOptions) -> Result<RangeResult, StoreError> {
        let state = read(&self.state);
        let at = match opts.revision {
            Some(r) if r > 0 => r,
            _ => state.revision,
        };
        if at < state.compacted {
            return Err(StoreError::Compacted {
                requested: at,
                compacted: state.compacted,
            });
        }
        if at > state.revision {
            return Err(StoreError::FutureRevision {
                requested: at,
                current: state.revision,
            });
        }
        let limit = opts.limit.filter(|l| *l > 0);
        let lower = match opts.start_after {
            Some(after) if after.as_str() >= prefix => Bound::Excluded(after),
            _ => Bound::Included(prefix.to_string()),
        };
        let mut kvs = Vec::new();
        let mut count = 0i64;
        for (key, history) in state.keys.range::<String, _>((lower, Bound::Unbounded)) {
            if !key.starts_with(prefix) {
                break;
            }
            let visible = history.partition_point(|v| v.revision <= at);
            if let Some(kv) = visible.checked_sub(1).and_then(|i| history[i].kv.as_ref()) {
                count += 1;
                if limit.is_none_or(|l| kvs.len() < l) {
                    kvs.push(kv.clone());
                }
            }
        }
        Ok(RangeResult {
            more: count > kvs.len() as i64,
            kvs,
            remaining: count,
            revision: at,
        })
    }

    async fn create(&self, key: &str, value: Vec<u8>) -> Result<Revision, StoreError> {
        match self
            .submit(Op::Create {
                key: key.to_string(),
                value,
            })
            .await?
        {
            Reply::Revision(r) => Ok(r),
            _ => Err(StoreError::Closed),
        }
    }

    async fn update(
        &self,
        key: &str,
        value: Vec<u8>,
        expected: Revision,
    ) -> Result<Revision, StoreError> {
        match self
            .submit(Op::Update {
                key: key.to_string(),
                value,
                expected,
            })
            .await?
        {
            Reply::Revision(r) => Ok(r),
            _ => Err(StoreError::Closed),
        }
    }

    async fn delete(
        &self,
        key: &str,
        expected: Option<Revision>,
    ) -> Result<(KeyValue, Revision), StoreError> {
        match self
            .submit(Op::Delete {
                key: key.to_string(),
                expected,
            })
            .await?
        {
            Reply::Deleted(kv, r) => Ok((kv, r)),
            _ => Err(StoreError::Closed),
        }
    }

    async fn watch(&self, prefix: &str, after: Revision) -> Result<WatchStream, StoreError> {
        let after = after.max(0);
        {
            let state = read(&self.state);
            if after + 1 < state.compacted {
                return Err(StoreError::Compacted {
                    requested: after + 1,
                    compacted: state.compacted,
                });
            }
        }
        let cursor = Cursor {
            state: self.state.clone(),
            revisions: self.revisions.clone(),
            prefix: prefix.to_string(),
            delivered: after,
            buffer: VecDeque::new(),
            done: false,
            progress_interval: self.options.progress_interval,
        };
        Ok(Box::pin(futures::stream::unfold(cursor, Cursor::next)))
    }

    async fn current_revision(&self) -> Result<Revision, StoreError> {
        Ok(read(&self.state).revision)
    }

    async fn compact(&self, revision: Revision) -> Result<(), StoreError> {
        self.submit(Op::Compact { revision }).await.map(|_| ())
    }

    async fn compacted_revision(&self) -> Result<Revision, StoreError> {
        Ok(read(&self.state).compacted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reopen_keeps_data_and_compaction() -> Result<(), StoreError> {
        let dir = tempfile::tempdir().map_err(StoreError::Io)?;
        let store = EmbeddedStore::open(dir.path()).await?;
        assert_eq!(store.current_revision().await?, 1);
        let r1 = store.create("/a", b"1".to_vec()).await?;
        let r2 = store.update("/a", b"2".to_vec(), r1).await?;
        let (_, r3) = store.delete("/a", Some(r2)).await?;
        let r4 = store.create("/b", b"x".to_vec()).await?;
        store.compact(r3).await?;
        store.close().await;
        let store = EmbeddedStore::open(dir.path()).await?;
        assert_eq!(store.current_revision().await?, r4);
        assert_eq!(store.compacted_revision().await?, r3);
        assert!(store.get("/a").await?.0.is_none());
        assert_eq!(store.get("/b").await?.0.map(|kv| kv.mod_revision), Some(r4));
        Ok(())
    }

    #[tokio::test]
    async fn snapshot_rewrite_shrinks_log_and_keeps_history() -> Result<(), StoreError> {
        let dir = tempfile::tempdir().map_err(StoreError::Io)?;
        let options = EmbeddedOptions {
            history_revisions: 50,
            snapshot_min_bytes: 0,
            ..Default::default()
        };
        let store = EmbeddedStore::open_with(dir.path(), options.clone()).await?;
        let mut rev = store.create("/k", vec![0; 1000]).await?;
        for _ in 0..500 {
            rev = store.update("/k", vec![1; 1000], rev).await?;
        }
        let size = store.log_size()?;
        assert!(size < 500_000, "log is {size} bytes");
        let compacted = store.compacted_revision().await?;
        assert!(compacted > 400);
        // History from the compacted revision on survives a reopen.
        store.close().await;
        let store = EmbeddedStore::open_with(dir.path(), options).await?;
        assert_eq!(store.current_revision().await?, rev);
        assert_eq!(store.compacted_revision().await?, compacted);
        let old = store
            .range(
                "/k",
                RangeOptions {
                    revision: Some(compacted),
                    ..Default::default()
                },
            )
            .await?;
        assert_eq!(old.kvs.len(), 1);
        let mut watch = store.watch("/", compacted - 1).await?;
        use futures::StreamExt;
        let first = watch.next().await.ok_or(StoreError::Closed)??;
        assert_eq!(first.revision(), compacted);
        Ok(())
    }
}
