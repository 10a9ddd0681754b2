//! The etcd v3 backend (`--etcd-servers`), over the `etcd-client` crate.
//!
//! Every write is one transaction, so compare-and-swap is etcd's own:
//! - create: `if create_revision(key) == 0 then put`;
//! - update: `if mod_revision(key) == expected && version(key) > 0 then put else get`;
//! - delete: `if [mod_revision(key) == expected &&] version(key) > 0 then delete(prev_kv)
//!   else get`.
//!
//! Ranges read `[prefix, prefix_end)` (from `start_after + "\0"` for a continuation) with
//! etcd's own limit and revision. Watches start at `after + 1` with `prev_kv` and
//! progress notifications; a watch canceled for compaction ends with
//! [`StoreError::Compacted`]. etcd does not report its compacted revision, so
//! [`Store::compacted_revision`] finds it by bisecting ranges at old revisions.
//!
//! The store keeps one client per endpoint and fails over itself: a request that
//! cannot reach a member (connection refused, no leader) moves on to the next member;
//! reads also retry after a broken connection, writes do not (they might have been
//! applied) but later ones go elsewhere. So the store keeps working while a minority of
//! a cluster is down. An open watch ends with an error when its member goes away; the
//! caller re-watches from its last revision.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use etcd_client::{
    Client, CompactionOptions, Compare, CompareOp, ConnectOptions, DeleteOptions, EventType,
    GetOptions, TxnOp, TxnOpResponse, WatchOptions,
};

use super::{
    prefix_end, KeyValue, RangeOptions, RangeResult, Revision, Store, StoreError, WatchEvent,
    WatchStream,
};

/// The largest etcd answer accepted (a range of every object of a resource, or a watch
/// replaying history, can be far over gRPC's default 4 MiB).
const MAX_RESPONSE_BYTES: usize = 1 << 30;

/// How long [`EtcdStore::connect`] waits for the cluster to answer.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

const COMPACTED_MSG: &str = "required revision has been compacted";
const FUTURE_MSG: &str = "required revision is a future revision";

/// A [`Store`] on an etcd v3 cluster.
#[derive(Clone)]
pub struct EtcdStore {
    /// One client per endpoint: the store fails over itself, since a balanced channel
    /// keeps sending to a dead member.
    clients: Arc<[Client]>,
    /// Index of the endpoint in use.
    current: Arc<AtomicUsize>,
}

impl std::fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdStore").finish_non_exhaustive()
    }
}

/// A failed health check in a line: the gRPC status message and the innermost cause
/// ("tcp connect error: Connection refused (os error 111)"), not tonic's whole chain.
fn health_error(e: &etcd_client::Error) -> String {
    let etcd_client::Error::GRpcStatus(status) = e else { return e.to_string() };
    let mut root: Option<&dyn std::error::Error> = std::error::Error::source(status);
    while let Some(next) = root.and_then(std::error::Error::source) {
        root = Some(next);
    }
    match root {
        Some(cause) => format!("{}: {cause}", status.message()),
        None => status.message().to_string(),
    }
}

fn grpc_message(e: &etcd_client::Error) -> Option<&str> {
    match e {
        etcd_client::Error::GRpcStatus(status) => Some(status.message()),
        _ => None,
    }
}

/// Whether the request surely never reached a member (so any request may be retried
/// on another one).
fn is_unreachable(e: &etcd_client::Error) -> bool {
    match e {
        etcd_client::Error::TransportError(_) => true,
        etcd_client::Error::GRpcStatus(status) => {
            let m = status.message();
            m.contains("tcp connect error")
                || m.contains("etcdserver: no leader")
                || m.contains("not capable")
        }
        _ => false,
    }
}

/// Whether the connection to the member failed (the request may or may not have been
/// applied; only reads are retried).
fn is_transport(e: &etcd_client::Error) -> bool {
    match e {
        etcd_client::Error::TransportError(_) => true,
        etcd_client::Error::GRpcStatus(status) => {
            // Unavailable, or a transport error surfaced as Unknown.
            let code = status.code() as i32;
            code == 14 || (code == 2 && status.message().contains("transport error"))
        }
        _ => false,
    }
}

fn is_compacted(e: &etcd_client::Error) -> bool {
    grpc_message(e).is_some_and(|m| m.contains(COMPACTED_MSG))
}

fn is_future(e: &etcd_client::Error) -> bool {
    grpc_message(e).is_some_and(|m| m.contains(FUTURE_MSG))
}

fn key_string(key: &[u8]) -> Result<String, StoreError> {
    String::from_utf8(key.to_vec()).map_err(|_| StoreError::Corrupt("etcd key is not UTF-8".into()))
}

fn convert(kv: &etcd_client::KeyValue) -> Result<KeyValue, StoreError> {
    Ok(KeyValue {
        key: key_string(kv.key())?,
        value: kv.value().to_vec(),
        create_revision: kv.create_revision(),
        mod_revision: kv.mod_revision(),
        version: kv.version(),
    })
}

fn header_revision(header: Option<&etcd_client::ResponseHeader>) -> Result<Revision, StoreError> {
    header
        .map(|h| h.revision())
        .ok_or_else(|| StoreError::Corrupt("etcd response without a header".into()))
}

/// The first key of the first `Get` among transaction responses.
fn first_get(responses: &[TxnOpResponse]) -> Result<Option<KeyValue>, StoreError> {
    for r in responses {
        if let TxnOpResponse::Get(get) = r {
            return get.kvs().first().map(convert).transpose();
        }
    }
    Ok(None)
}

/// TLS to etcd (`--etcd-cafile`, `--etcd-certfile`, `--etcd-keyfile`): the CA that
/// signed etcd's serving certificate, and the apiserver's client certificate, PEM.
#[derive(Clone)]
pub struct EtcdTls {
    pub ca_pem: String,
    pub client: Option<(String, String)>,
}

impl std::fmt::Debug for EtcdTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdTls").field("client", &self.client.is_some()).finish_non_exhaustive()
    }
}

impl EtcdStore {
    /// Connects to the cluster at `endpoints` (`http://host:port`, several for a
    /// cluster) and checks that it answers.
    pub async fn connect(endpoints: &[String]) -> Result<EtcdStore, StoreError> {
        EtcdStore::connect_with(endpoints, None).await
    }

    /// [`EtcdStore::connect`], over TLS when `tls` is given (`https://` endpoints).
    pub async fn connect_with(endpoints: &[String], tls: Option<&EtcdTls>) -> Result<EtcdStore, StoreError> {
        let mut options = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(5))
            .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5))
            .with_keep_alive_while_idle(true);
        if let Some(tls) = tls {
            let mut config = etcd_client::TlsOptions::new().ca_certificate(etcd_client::Certificate::from_pem(&tls.ca_pem));
            if let Some((cert, key)) = &tls.client {
                config = config.identity(etcd_client::Identity::from_pem(cert, key));
            }
            options = options.with_tls(config);
        }
        if endpoints.is_empty() {
            return Err(StoreError::Etcd(etcd_client::Error::InvalidArgs(
                "no etcd endpoints".into(),
            )));
        }
        let mut clients = Vec::with_capacity(endpoints.len());
        for endpoint in endpoints {
            clients.push(
                Client::connect([endpoint], Some(options.clone()))
                    .await
                    .map_err(StoreError::Etcd)?,
            );
        }
        let store = EtcdStore {
            clients: clients.into(),
            current: Arc::new(AtomicUsize::new(0)),
        };
        match tokio::time::timeout(CONNECT_TIMEOUT, store.current_revision()).await {
            Ok(r) => r.map(|_| store),
            Err(_) => Err(StoreError::Etcd(etcd_client::Error::EndpointError(
                format!(
                    "no answer from {} within {CONNECT_TIMEOUT:?}",
                    endpoints.join(",")
                ),
            ))),
        }
    }

    /// A client of the endpoint in use, for callers that need more of etcd.
    pub fn client(&self) -> Client {
        let i = self.current.load(Ordering::Relaxed) % self.clients.len();
        self.clients[i].clone()
    }

    /// Runs `op` on the endpoint in use, moving on to the next endpoint when the member
    /// cannot be reached — and, for `idempotent` requests, on any connection failure.
    async fn call<T, F, Fut>(&self, idempotent: bool, op: F) -> Result<T, etcd_client::Error>
    where
        F: Fn(Client) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        let n = self.clients.len();
        let mut attempt = 0;
        loop {
            let i = self.current.load(Ordering::Relaxed) % n;
            match op(self.clients[i].clone()).await {
                Ok(v) => return Ok(v),
                Err(e) => {
                    let transport = is_transport(&e);
                    if transport || is_unreachable(&e) {
                        // Later calls start at the next member.
                        let _ = self.current.compare_exchange(
                            i,
                            (i + 1) % n,
                            Ordering::Relaxed,
                            Ordering::Relaxed,
                        );
                    }
                    attempt += 1;
                    let retry = is_unreachable(&e) || (idempotent && transport);
                    if !retry || attempt >= n {
                        return Err(e);
                    }
                    tracing::debug!(endpoint = i, error = %e, "etcd member unavailable, trying the next one");
                }
            }
        }
    }

    async fn compacted_error(&self, requested: Revision) -> StoreError {
        let compacted = self.compacted_revision().await.unwrap_or(0);
        StoreError::Compacted {
            requested,
            compacted,
        }
    }

    /// Whether a range at `revision` fails because it is compacted.
    async fn revision_compacted(&self, revision: Revision) -> Result<bool, StoreError> {
        let opts = GetOptions::new().with_revision(revision).with_count_only();
        match self
            .call(true, |mut c| {
                let opts = opts.clone();
                async move { c.get(vec![0u8], Some(opts)).await }
            })
            .await
        {
            Ok(_) => Ok(false),
            Err(e) if is_compacted(&e) => Ok(true),
            Err(e) if is_future(&e) => Ok(false),
            Err(e) => Err(StoreError::Etcd(e)),
        }
    }
}

#[async_trait]
impl Store for EtcdStore {
    async fn get(&self, key: &str) -> Result<(Option<KeyValue>, Revision), StoreError> {
        let resp = self
            .call(true, |mut c| async move { c.get(key, None).await })
            .await
            .map_err(StoreError::Etcd)?;
        let kv = resp.kvs().first().map(convert).transpose()?;
        Ok((kv, header_revision(resp.header())?))
    }

    async fn range(&self, prefix: &str, opts: RangeOptions) -> Result<RangeResult, StoreError> {
        let end = prefix_end(prefix);
        let start: Vec<u8> = match &opts.start_after {
            Some(after) if after.as_str() >= prefix => {
                let mut k = after.as_bytes().to_vec();
                k.push(0);
                k
            }
            _ => prefix.as_bytes().to_vec(),
        };
        let mut get = GetOptions::new().with_range(end);
        if let Some(limit) = opts.limit.filter(|l| *l > 0) {
            get = get.with_limit(i64::try_from(limit).unwrap_or(i64::MAX));
        }
        let requested = opts.revision.filter(|r| *r > 0);
        if let Some(r) = requested {
            get = get.with_revision(r);
        }
        let resp = match self
            .call(true, |c| {
                let (start, get) = (start.clone(), get.clone());
                // A list of thousands of objects is larger than tonic's default 4 MiB
                // message limit.
                async move { c.kv_client().max_decoding_message_size(MAX_RESPONSE_BYTES).get(start, Some(get)).await }
            })
            .await
        {
            Ok(resp) => resp,
            Err(e) if is_compacted(&e) => {
                return Err(self.compacted_error(requested.unwrap_or(0)).await)
            }
            Err(e) if is_future(&e) => {
                let current = self.current_revision().await?;
                return Err(StoreError::FutureRevision {
                    requested: requested.unwrap_or(0),
                    current,
                });
            }
            Err(e) => return Err(StoreError::Etcd(e)),
        };
        let kvs = resp
            .kvs()
            .iter()
            .map(convert)
            .collect::<Result<Vec<_>, _>>()?;
        let revision = match requested {
            Some(r) => r,
            None => header_revision(resp.header())?,
        };
        Ok(RangeResult {
            more: resp.more(),
            remaining: resp.count(),
            kvs,
            revision,
        })
    }

    async fn create(&self, key: &str, value: Vec<u8>) -> Result<Revision, StoreError> {
        let txn = etcd_client::Txn::new()
            .when([Compare::create_revision(key, CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key, value, None)]);
        let resp = self
            .call(false, |mut c| {
                let txn = txn.clone();
                async move { c.txn(txn).await }
            })
            .await
            .map_err(StoreError::Etcd)?;
        if !resp.succeeded() {
            return Err(StoreError::AlreadyExists {
                key: key.to_string(),
            });
        }
        header_revision(resp.header())
    }

    async fn update(
        &self,
        key: &str,
        value: Vec<u8>,
        expected: Revision,
    ) -> Result<Revision, StoreError> {
        let txn = etcd_client::Txn::new()
            .when([
                Compare::mod_revision(key, CompareOp::Equal, expected),
                Compare::version(key, CompareOp::Greater, 0),
            ])
            .and_then([TxnOp::put(key, value, None)])
            .or_else([TxnOp::get(key, None)]);
        let resp = self
            .call(false, |mut c| {
                let txn = txn.clone();
                async move { c.txn(txn).await }
            })
            .await
            .map_err(StoreError::Etcd)?;
        if resp.succeeded() {
            return header_revision(resp.header());
        }
        match first_get(&resp.op_responses())? {
            None => Err(StoreError::NotFound {
                key: key.to_string(),
            }),
            Some(current) => Err(StoreError::Conflict {
                key: key.to_string(),
                expected,
                current: Some(current),
            }),
        }
    }

    async fn delete(
        &self,
        key: &str,
        expected: Option<Revision>,
    ) -> Result<(KeyValue, Revision), StoreError> {
        let mut compares = vec![Compare::version(key, CompareOp::Greater, 0)];
        if let Some(expected) = expected {
            compares.push(Compare::mod_revision(key, CompareOp::Equal, expected));
        }
        let txn = etcd_client::Txn::new()
            .when(compares)
            .and_then([TxnOp::delete(
                key,
                Some(DeleteOptions::new().with_prev_key()),
            )])
            .or_else([TxnOp::get(key, None)]);
        let resp = self
            .call(false, |mut c| {
                let txn = txn.clone();
                async move { c.txn(txn).await }
            })
            .await
            .map_err(StoreError::Etcd)?;
        let responses = resp.op_responses();
        if resp.succeeded() {
            let prev = responses
                .iter()
                .find_map(|r| match r {
                    TxnOpResponse::Delete(d) => d.prev_kvs().first().map(convert),
                    _ => None,
                })
                .transpose()?
                .ok_or_else(|| {
                    StoreError::Corrupt(format!("etcd deleted {key} without its previous value"))
                })?;
            return Ok((prev, header_revision(resp.header())?));
        }
        match first_get(&responses)? {
            None => Err(StoreError::NotFound {
                key: key.to_string(),
            }),
            Some(current) => Err(StoreError::Conflict {
                key: key.to_string(),
                expected: expected.unwrap_or_default(),
                current: Some(current),
            }),
        }
    }

    async fn watch(&self, prefix: &str, after: Revision) -> Result<WatchStream, StoreError> {
        let start = after.max(0) + 1;
        // etcd confirms a watch before it cancels it for compaction; check first so that
        // a compacted start fails here, as the trait promises.
        if start > 1 && self.revision_compacted(start).await? {
            return Err(self.compacted_error(start).await);
        }
        let options = WatchOptions::new()
            .with_prefix()
            .with_start_revision(start)
            .with_prev_key()
            .with_progress_notify();
        let mut stream = self
            .call(true, |c| {
                let options = options.clone();
                async move { c.watch_client().max_decoding_message_size(MAX_RESPONSE_BYTES).watch(prefix, Some(options)).await }
            })
            .await
            .map_err(StoreError::Etcd)?;
        // The first response confirms the watch; a compacted start may cancel it at once.
        let mut pending = Vec::new();
        loop {
            match stream.message().await.map_err(StoreError::Etcd)? {
                None => return Err(StoreError::Closed),
                Some(resp) if resp.compact_revision() != 0 => {
                    return Err(StoreError::Compacted {
                        requested: start,
                        compacted: resp.compact_revision(),
                    })
                }
                Some(resp) if resp.canceled() => {
                    return Err(StoreError::Etcd(etcd_client::Error::WatchError(
                        resp.cancel_reason().to_string(),
                    )))
                }
                Some(resp) if resp.created() => break,
                Some(resp) => pending.push(resp),
            }
        }
        struct State {
            stream: etcd_client::WatchStream,
            buffer: std::collections::VecDeque<Result<WatchEvent, StoreError>>,
            done: bool,
            start: Revision,
        }
        fn translate(state: &mut State, resp: &etcd_client::WatchResponse) {
            if resp.compact_revision() != 0 {
                // Compacted while this watcher was behind: the client must re-list.
                state.buffer.push_back(Err(StoreError::Compacted {
                    requested: state.start,
                    compacted: resp.compact_revision(),
                }));
                state.done = true;
                return;
            }
            if resp.canceled() {
                state
                    .buffer
                    .push_back(Err(StoreError::Etcd(etcd_client::Error::WatchError(
                        resp.cancel_reason().to_string(),
                    ))));
                state.done = true;
                return;
            }
            if resp.events().is_empty() {
                if let Some(h) = resp.header() {
                    state.buffer.push_back(Ok(WatchEvent::Progress {
                        revision: h.revision(),
                    }));
                }
                return;
            }
            for event in resp.events() {
                let item = match (event.event_type(), event.kv()) {
                    (EventType::Put, Some(kv)) => convert(kv).and_then(|kv| {
                        let prev = event.prev_kv().map(convert).transpose()?;
                        Ok(WatchEvent::Put { kv, prev })
                    }),
                    (EventType::Delete, Some(kv)) => {
                        let revision = kv.mod_revision();
                        match event.prev_kv() {
                            Some(prev) => {
                                convert(prev).map(|prev| WatchEvent::Delete { prev, revision })
                            }
                            // prev_kv can be missing if it was compacted; keep the key.
                            None => convert(kv).map(|prev| WatchEvent::Delete { prev, revision }),
                        }
                    }
                    (_, None) => Err(StoreError::Corrupt("etcd watch event without a key".into())),
                };
                if let Ok(e) = &item {
                    state.start = e.revision() + 1;
                }
                let failed = item.is_err();
                state.buffer.push_back(item);
                if failed {
                    state.done = true;
                    return;
                }
            }
        }
        let mut state = State {
            stream,
            buffer: Default::default(),
            done: false,
            start,
        };
        for resp in &pending {
            translate(&mut state, resp);
        }
        let events = futures::stream::unfold(state, |mut state| async move {
            loop {
                if let Some(item) = state.buffer.pop_front() {
                    return Some((item, state));
                }
                if state.done {
                    return None;
                }
                match state.stream.message().await {
                    Ok(Some(resp)) => translate(&mut state, &resp),
                    Ok(None) => return None,
                    Err(e) => {
                        state.buffer.push_back(Err(StoreError::Etcd(e)));
                        state.done = true;
                    }
                }
            }
        });
        Ok(Box::pin(events))
    }

    async fn current_revision(&self) -> Result<Revision, StoreError> {
        let opts = GetOptions::new().with_count_only();
        let resp = self
            .call(true, |mut c| {
                let opts = opts.clone();
                async move { c.get(vec![0u8], Some(opts)).await }
            })
            .await
            .map_err(StoreError::Etcd)?;
        header_revision(resp.header())
    }

    async fn compact(&self, revision: Revision) -> Result<(), StoreError> {
        match self
            .call(true, |mut c| async move {
                c.compact(revision, Some(CompactionOptions::new().with_physical()))
                    .await
            })
            .await
        {
            Ok(_) => Ok(()),
            // Already compacted at or past `revision`: nothing to do.
            Err(e) if is_compacted(&e) => Ok(()),
            Err(e) if is_future(&e) => {
                let current = self.current_revision().await?;
                Err(StoreError::FutureRevision {
                    requested: revision,
                    current,
                })
            }
            Err(e) => Err(StoreError::Etcd(e)),
        }
    }

    async fn compacted_revision(&self) -> Result<Revision, StoreError> {
        // Ranges below the compacted revision fail: find the lowest one that works.
        let current = self.current_revision().await?;
        if !self.revision_compacted(1).await? {
            return Ok(0);
        }
        let (mut lo, mut hi) = (1, current); // lo is compacted, hi is not.
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            if self.revision_compacted(mid).await? {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        Ok(hi)
    }

    async fn member_health(&self) -> Vec<Result<(), String>> {
        // As Kubernetes checks each server: a linearizable read of the key `health`
        // through that member, so a member cut off from its quorum reads as unhealthy.
        let checks = self.clients.iter().map(|c| {
            let mut c = c.clone();
            async move {
                match tokio::time::timeout(Duration::from_secs(3), c.get("health", None)).await {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err(e)) => Err(health_error(&e)),
                    Err(_) => Err("no answer within 3s".to_string()),
                }
            }
        });
        futures::future::join_all(checks).await
    }
}
