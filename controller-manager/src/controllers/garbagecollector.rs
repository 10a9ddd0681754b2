//! The garbage collector: a graph of ownerReferences built from watching every
//! deletable kind in discovery, and a work queue that acts on it as Kubernetes' does —
//! dependents whose owners (by uid) are all gone are deleted (background cascading),
//! an owner carrying the `orphan` finalizer has its references removed from its
//! dependents before the finalizer goes, and an owner carrying `foregroundDeletion`
//! has its dependents deleted first, keeping the finalizer until no dependent with
//! `blockOwnerDeletion` remains.
//!
//! As in Kubernetes (GraphBuilder + the attemptToDelete/attemptToOrphan queues) this is
//! not one kube-runtime `Controller`: it spans every kind at once. Its queue still works
//! the same way: events enqueue uids, a worker re-reads the object from the API and
//! decides, and failures come back after a delay.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, Preconditions, PropagationPolicy};
use kube::runtime::{watcher, WatchStreamExt};
use kube::ResourceExt;
use serde_json::json;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, info_span, warn, Instrument};

use super::resources::{self, Kind};
use super::{Context, ControllerError};

const ORPHAN: &str = "orphan";
const FOREGROUND: &str = "foregroundDeletion";
/// Kinds that never own nor depend on anything and change too often to watch for it.
const IGNORED: &[(&str, &str)] = &[("", "events"), ("events.k8s.io", "events")];
const WORKERS: usize = 4;

/// Why one attempt on a graph node failed (it is retried).
#[derive(Debug, thiserror::Error)]
pub enum GcError {
    #[error("reading {what} failed")]
    Read { what: String, #[source] source: kube::Error },
    #[error("deleting {what} failed")]
    Delete { what: String, #[source] source: kube::Error },
    #[error("removing owner references from {what} failed")]
    RemoveOwnerRefs { what: String, #[source] source: kube::Error },
    #[error("{what} kept changing under the garbage collector")]
    Busy { what: String },
    #[error("removing the {finalizer} finalizer from {what} failed")]
    RemoveFinalizer { what: String, finalizer: &'static str, #[source] source: kube::Error },
}

/// One object as the graph knows it.
#[derive(Debug, Clone)]
struct GraphNode {
    kind: usize,
    namespace: Option<String>,
    name: String,
    owners: Vec<OwnerReference>,
    deleting: bool,
}

/// The ownership graph: objects by uid, and each owner uid's dependents.
#[derive(Debug, Default)]
struct Graph {
    nodes: HashMap<String, GraphNode>,
    dependents: HashMap<String, HashSet<String>>,
}

impl Graph {
    /// Records an object; returns the uids to look at because of the change.
    fn upsert(&mut self, uid: &str, node: GraphNode, finalizers: &[String]) -> Vec<String> {
        let old = self.nodes.insert(uid.to_string(), node.clone());
        let mut work = Vec::new();
        let old_owners: Vec<String> = old.as_ref().map(|o| o.owners.iter().map(|r| r.uid.clone()).collect()).unwrap_or_default();
        let new_owners: Vec<String> = node.owners.iter().map(|r| r.uid.clone()).collect();
        for gone in old_owners.iter().filter(|o| !new_owners.contains(o)) {
            if let Some(set) = self.dependents.get_mut(gone) {
                set.remove(uid);
            }
            // An owner waiting on its dependents may be done now.
            work.push(gone.clone());
        }
        for owner in &new_owners {
            self.dependents.entry(owner.clone()).or_default().insert(uid.to_string());
        }
        let owners_changed = old.as_ref().is_none_or(|o| o.owners != node.owners);
        if (owners_changed && !node.owners.is_empty()) || (old.is_none() && !node.owners.is_empty()) {
            work.push(uid.to_string());
        }
        if node.deleting && finalizers.iter().any(|f| f == ORPHAN || f == FOREGROUND) {
            work.push(uid.to_string());
        }
        if node.deleting && old.as_ref().is_some_and(|o| !o.deleting) {
            // A dependent starting to go may unblock an owner.
            work.extend(new_owners);
        }
        work
    }

    /// Forgets an object; returns its dependents and owners, which may need action now.
    fn remove(&mut self, uid: &str) -> Vec<String> {
        let Some(old) = self.nodes.remove(uid) else { return vec![] };
        let mut work = Vec::new();
        for r in &old.owners {
            if let Some(set) = self.dependents.get_mut(&r.uid) {
                set.remove(uid);
            }
            work.push(r.uid.clone());
        }
        if let Some(deps) = self.dependents.get(uid) {
            work.extend(deps.iter().cloned());
        }
        if self.dependents.get(uid).is_some_and(HashSet::is_empty) {
            self.dependents.remove(uid);
        }
        work
    }

    fn dependents_of(&self, uid: &str) -> Vec<(String, GraphNode)> {
        self.dependents
            .get(uid)
            .into_iter()
            .flatten()
            .filter_map(|d| self.nodes.get(d).map(|n| (d.clone(), n.clone())))
            .collect()
    }
}

/// A de-duplicating queue of uids.
#[derive(Clone)]
struct Queue {
    tx: mpsc::UnboundedSender<String>,
    queued: Arc<Mutex<HashSet<String>>>,
}

impl Queue {
    fn add(&self, uid: String) {
        let fresh = self.queued.lock().map(|mut q| q.insert(uid.clone())).unwrap_or(true);
        if fresh {
            let _ = self.tx.send(uid);
        }
    }

    fn add_after(&self, uid: String, delay: Duration) {
        let q = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            q.add(uid);
        });
    }

    fn done(&self, uid: &str) {
        if let Ok(mut q) = self.queued.lock() {
            q.remove(uid);
        }
    }
}

struct Collector {
    client: kube::Client,
    kinds: Vec<Kind>,
    graph: Mutex<Graph>,
    queue: Queue,
}

/// Starts the garbage collector.
pub fn start(ctx: Context, shutdown: CancellationToken) -> futures::future::BoxFuture<'static, Result<(), ControllerError>> {
    Box::pin(run(ctx, shutdown))
}

async fn run(ctx: Context, shutdown: CancellationToken) -> Result<(), ControllerError> {
    let kinds: Vec<Kind> = resources::deletable_kinds(&ctx.client)
        .await?
        .into_iter()
        .filter(|k| k.watchable && !IGNORED.contains(&(k.resource.group.as_str(), k.resource.plural.as_str())))
        .collect();
    info!(kinds = kinds.len(), "garbage collector watching");
    let (tx, rx) = mpsc::unbounded_channel();
    let gc = Arc::new(Collector {
        client: ctx.client.clone(),
        kinds,
        graph: Mutex::new(Graph::default()),
        queue: Queue { tx, queued: Default::default() },
    });
    let mut synced = Vec::new();
    for idx in 0..gc.kinds.len() {
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        synced.push(done_rx);
        tokio::spawn(watch_kind(gc.clone(), idx, done_tx, shutdown.clone()));
    }
    // Decisions about dependents need the whole graph: wait for every kind's first list.
    for s in synced {
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = s => {}
        }
    }
    info!("garbage collector graph synced");
    let rx = Arc::new(tokio::sync::Mutex::new(rx));
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..WORKERS {
        let gc = gc.clone();
        let rx = rx.clone();
        let shutdown = shutdown.clone();
        workers.spawn(async move {
            loop {
                let next = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    uid = async { rx.lock().await.recv().await } => uid,
                };
                let Some(uid) = next else { return };
                gc.queue.done(&uid);
                let span = info_span!("gc", uid = %uid);
                match gc.process(&uid).instrument(span).await {
                    Ok(Some(after)) => gc.queue.add_after(uid, after),
                    Ok(None) => {}
                    Err(e) => {
                        warn!(uid = %uid, error = %e, source = ?std::error::Error::source(&e), "garbage collection failed; retrying");
                        gc.queue.add_after(uid, Duration::from_secs(1));
                    }
                }
            }
        });
    }
    while workers.join_next().await.is_some() {}
    Ok(())
}

/// Feeds one kind's watch events into the graph.
async fn watch_kind(gc: Arc<Collector>, idx: usize, synced: tokio::sync::oneshot::Sender<()>, shutdown: CancellationToken) {
    let ar = gc.kinds[idx].resource.clone();
    let api: Api<DynamicObject> = Api::all_with(gc.client.clone(), &ar);
    let mut stream = watcher(api, watcher::Config::default()).default_backoff().boxed();
    let mut synced = Some(synced);
    let mut listing: Option<HashSet<String>> = None;
    loop {
        let ev = tokio::select! {
            _ = shutdown.cancelled() => return,
            ev = stream.next() => ev,
        };
        let work = match ev {
            None => return,
            Some(Err(e)) => {
                debug!(resource = %ar.plural, error = %e, "watch failed; retrying");
                continue;
            }
            Some(Ok(watcher::Event::Init)) => {
                listing = Some(HashSet::new());
                continue;
            }
            Some(Ok(watcher::Event::InitApply(obj))) => {
                if let (Some(seen), Some(uid)) = (listing.as_mut(), obj.metadata.uid.clone()) {
                    seen.insert(uid);
                }
                gc.observe(idx, &obj)
            }
            Some(Ok(watcher::Event::InitDone)) => {
                // Objects deleted while no watch was open are forgotten now.
                let seen = listing.take().unwrap_or_default();
                let work = match gc.graph.lock() {
                    Ok(mut g) => {
                        let stale: Vec<String> = g.nodes.iter().filter(|(u, n)| n.kind == idx && !seen.contains(*u)).map(|(u, _)| u.clone()).collect();
                        stale.iter().flat_map(|u| g.remove(u)).collect()
                    }
                    Err(_) => vec![],
                };
                if let Some(s) = synced.take() {
                    let _ = s.send(());
                }
                work
            }
            Some(Ok(watcher::Event::Apply(obj))) => gc.observe(idx, &obj),
            Some(Ok(watcher::Event::Delete(obj))) => match (obj.metadata.uid.as_deref(), gc.graph.lock()) {
                (Some(uid), Ok(mut g)) => g.remove(uid),
                _ => vec![],
            },
        };
        for uid in work {
            gc.queue.add(uid);
        }
    }
}

impl Collector {
    fn observe(&self, idx: usize, obj: &DynamicObject) -> Vec<String> {
        let Some(uid) = obj.metadata.uid.clone() else { return vec![] };
        let node = GraphNode {
            kind: idx,
            namespace: obj.metadata.namespace.clone(),
            name: obj.name_any(),
            owners: obj.metadata.owner_references.clone().unwrap_or_default(),
            deleting: obj.metadata.deletion_timestamp.is_some(),
        };
        match self.graph.lock() {
            Ok(mut g) => g.upsert(&uid, node, obj.finalizers()),
            Err(_) => vec![],
        }
    }

    fn api_for(&self, kind: &Kind, namespace: Option<&str>) -> Api<DynamicObject> {
        match namespace {
            Some(ns) if kind.namespaced => Api::namespaced_with(self.client.clone(), ns, &kind.resource),
            _ => Api::all_with(self.client.clone(), &kind.resource),
        }
    }

    /// Looks at one object; returns when to look again, if it must.
    async fn process(&self, uid: &str) -> Result<Option<Duration>, GcError> {
        let node = match self.graph.lock() {
            Ok(g) => g.nodes.get(uid).cloned(),
            Err(_) => None,
        };
        let Some(node) = node else { return Ok(None) };
        let kind = &self.kinds[node.kind];
        let what = describe(kind, node.namespace.as_deref(), &node.name);
        let api = self.api_for(kind, node.namespace.as_deref());
        let latest = api.get_opt(&node.name).await.map_err(|source| GcError::Read { what: what.clone(), source })?;
        let Some(latest) = latest.filter(|o| o.metadata.uid.as_deref() == Some(uid)) else { return Ok(None) };
        if latest.metadata.deletion_timestamp.is_some() {
            if latest.finalizers().iter().any(|f| f == ORPHAN) {
                let dependents = self.dependents_now(uid, node.namespace.as_deref()).await?;
                return self.orphan_dependents(uid, dependents, &api, &node.name, &what).await;
            }
            if latest.finalizers().iter().any(|f| f == FOREGROUND) {
                let dependents = self.dependents_now(uid, node.namespace.as_deref()).await?;
                return self.delete_dependents_first(uid, dependents, &api, &node.name, &what).await;
            }
            return Ok(None);
        }
        let owners = latest.metadata.owner_references.clone().unwrap_or_default();
        if owners.is_empty() {
            return Ok(None);
        }
        let (mut solid, mut dangling, mut waiting) = (Vec::new(), Vec::new(), Vec::new());
        for r in &owners {
            match self.owner_state(r, node.namespace.as_deref()).await? {
                OwnerState::Solid => solid.push(r.uid.clone()),
                OwnerState::Absent => dangling.push(r.uid.clone()),
                OwnerState::WaitingForDependents => waiting.push(r.uid.clone()),
            }
        }
        if !solid.is_empty() {
            if dangling.is_empty() && waiting.is_empty() {
                return Ok(None);
            }
            let gone: Vec<String> = dangling.into_iter().chain(waiting).collect();
            info!(object = %what, owners = ?gone, "removing references to owners that are gone or going");
            self.remove_owner_refs(&api, &node.name, &gone, &what).await?;
            return Ok(None);
        }
        let has_dependents = self.graph.lock().map(|g| !g.dependents_of(uid).is_empty()).unwrap_or(false);
        let policy = if !waiting.is_empty() && has_dependents {
            PropagationPolicy::Foreground
        } else if latest.finalizers().iter().any(|f| f == ORPHAN) {
            PropagationPolicy::Orphan
        } else if latest.finalizers().iter().any(|f| f == FOREGROUND) {
            PropagationPolicy::Foreground
        } else {
            PropagationPolicy::Background
        };
        info!(object = %what, policy = ?policy, "deleting an object whose owners are all gone or going");
        let dp = DeleteParams {
            propagation_policy: Some(policy),
            preconditions: Some(Preconditions { uid: Some(uid.to_string()), resource_version: None }),
            ..Default::default()
        };
        match api.delete(&node.name, &dp).await {
            Ok(_) => Ok(None),
            Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => Ok(None),
            Err(source) => Err(GcError::Delete { what, source }),
        }
    }

    /// Whether an owner exists with the referenced uid, and whether it is waiting for
    /// its dependents to go.
    async fn owner_state(&self, r: &OwnerReference, namespace: Option<&str>) -> Result<OwnerState, GcError> {
        let Some(kind) = resources::find_kind(&self.kinds, &r.api_version, &r.kind) else {
            // An owner of a kind the API does not serve cannot be checked: leave it be.
            debug!(api_version = %r.api_version, kind = %r.kind, "owner of an unknown kind");
            return Ok(OwnerState::Solid);
        };
        if kind.namespaced && namespace.is_none() {
            // A cluster-scoped dependent cannot be owned by a namespaced object: the
            // reference cannot be resolved, and such a dependent is never collected.
            warn!(owner_kind = %r.kind, owner = %r.name, "cluster-scoped object with a namespaced owner; not collecting it");
            return Ok(OwnerState::Solid);
        }
        let api = self.api_for(kind, namespace);
        let owner = api
            .get_opt(&r.name)
            .await
            .map_err(|source| GcError::Read { what: describe(kind, namespace, &r.name), source })?;
        Ok(match owner {
            Some(o) if o.metadata.uid.as_deref() == Some(r.uid.as_str()) => {
                if o.metadata.deletion_timestamp.is_some() && o.finalizers().iter().any(|f| f == FOREGROUND) {
                    OwnerState::WaitingForDependents
                } else {
                    OwnerState::Solid
                }
            }
            _ => OwnerState::Absent,
        })
    }

    /// An owner's dependents before a decision that cannot be undone (orphaning, or
    /// ending a foreground deletion): the graph's, and — for a namespaced owner — those
    /// a fresh list of its namespace finds, since a dependent created just before may
    /// not have reached the graph through its watch yet.
    async fn dependents_now(&self, uid: &str, namespace: Option<&str>) -> Result<Vec<(String, GraphNode)>, GcError> {
        let mut dependents = self.graph.lock().map(|g| g.dependents_of(uid)).unwrap_or_default();
        let Some(ns) = namespace else { return Ok(dependents) };
        for (idx, kind) in self.kinds.iter().enumerate().filter(|(_, k)| k.namespaced) {
            let api: Api<DynamicObject> = Api::namespaced_with(self.client.clone(), ns, &kind.resource);
            let list = api
                .list(&ListParams::default())
                .await
                .map_err(|source| GcError::Read { what: format!("{} in {ns}", kind.group_resource()), source })?;
            for obj in list.items {
                let Some(dep_uid) = obj.metadata.uid.clone() else { continue };
                let owned = obj.owner_references().iter().any(|r| r.uid == uid);
                if owned && !dependents.iter().any(|(u, _)| *u == dep_uid) {
                    let node = GraphNode {
                        kind: idx,
                        namespace: obj.metadata.namespace.clone(),
                        name: obj.name_any(),
                        owners: obj.owner_references().to_vec(),
                        deleting: obj.metadata.deletion_timestamp.is_some(),
                    };
                    dependents.push((dep_uid, node));
                }
            }
        }
        Ok(dependents)
    }

    /// The `orphan` finalizer: drop this owner from every dependent, then the finalizer.
    async fn orphan_dependents(&self, uid: &str, dependents: Vec<(String, GraphNode)>, api: &Api<DynamicObject>, name: &str, what: &str) -> Result<Option<Duration>, GcError> {
        for (_, dep) in &dependents {
            let kind = &self.kinds[dep.kind];
            let dep_api = self.api_for(kind, dep.namespace.as_deref());
            let dep_what = describe(kind, dep.namespace.as_deref(), &dep.name);
            self.remove_owner_refs(&dep_api, &dep.name, &[uid.to_string()], &dep_what).await?;
        }
        info!(object = %what, dependents = dependents.len(), "orphaned dependents");
        self.remove_finalizer(api, name, uid, ORPHAN, what).await
    }

    /// The `foregroundDeletion` finalizer: delete the dependents, and drop the
    /// finalizer once none that blocks the owner's deletion is left.
    async fn delete_dependents_first(&self, uid: &str, dependents: Vec<(String, GraphNode)>, api: &Api<DynamicObject>, name: &str, what: &str) -> Result<Option<Duration>, GcError> {
        let blocking = dependents
            .iter()
            .filter(|(_, d)| d.owners.iter().any(|r| r.uid == uid && r.block_owner_deletion == Some(true)))
            .count();
        if blocking == 0 {
            info!(object = %what, "no blocking dependents left; finishing foreground deletion");
            return self.remove_finalizer(api, name, uid, FOREGROUND, what).await;
        }
        for (dep_uid, dep) in dependents {
            if !dep.deleting {
                self.queue.add(dep_uid);
            }
        }
        debug!(object = %what, blocking, "waiting for dependents to be deleted");
        Ok(Some(Duration::from_secs(5)))
    }

    async fn remove_owner_refs(&self, api: &Api<DynamicObject>, name: &str, uids: &[String], what: &str) -> Result<(), GcError> {
        for _ in 0..5 {
            let Some(obj) = api.get_opt(name).await.map_err(|source| GcError::Read { what: what.to_string(), source })? else { return Ok(()) };
            let refs = obj.metadata.owner_references.clone().unwrap_or_default();
            let kept: Vec<&OwnerReference> = refs.iter().filter(|r| !uids.contains(&r.uid)).collect();
            if kept.len() == refs.len() {
                return Ok(());
            }
            let refs_value = if kept.is_empty() { serde_json::Value::Null } else { json!(kept) };
            let patch = json!({"metadata": {"ownerReferences": refs_value, "resourceVersion": obj.metadata.resource_version}});
            match api.patch(name, &PatchParams::default(), &Patch::Merge(&patch)).await {
                Ok(_) => return Ok(()),
                Err(kube::Error::Api(s)) if s.code == 409 => continue,
                Err(kube::Error::Api(s)) if s.code == 404 => return Ok(()),
                Err(source) => return Err(GcError::RemoveOwnerRefs { what: what.to_string(), source }),
            }
        }
        Err(GcError::Busy { what: what.to_string() })
    }

    async fn remove_finalizer(&self, api: &Api<DynamicObject>, name: &str, uid: &str, finalizer: &'static str, what: &str) -> Result<Option<Duration>, GcError> {
        for _ in 0..5 {
            let obj = api.get_opt(name).await.map_err(|source| GcError::Read { what: what.to_string(), source })?;
            let Some(obj) = obj.filter(|o| o.metadata.uid.as_deref() == Some(uid)) else { return Ok(None) };
            let kept: Vec<&String> = obj.finalizers().iter().filter(|f| *f != finalizer).collect();
            if kept.len() == obj.finalizers().len() {
                return Ok(None);
            }
            let value = if kept.is_empty() { serde_json::Value::Null } else { json!(kept) };
            let patch = json!({"metadata": {"finalizers": value, "resourceVersion": obj.metadata.resource_version}});
            match api.patch(name, &PatchParams::default(), &Patch::Merge(&patch)).await {
                Ok(_) => return Ok(None),
                Err(kube::Error::Api(s)) if s.code == 409 => continue,
                Err(kube::Error::Api(s)) if s.code == 404 => return Ok(None),
                Err(source) => return Err(GcError::RemoveFinalizer { what: what.to_string(), finalizer, source }),
            }
        }
        Err(GcError::Busy { what: what.to_string() })
    }
}

enum OwnerState {
    Solid,
    Absent,
    WaitingForDependents,
}

fn describe(kind: &Kind, namespace: Option<&str>, name: &str) -> String {
    match namespace {
        Some(ns) if kind.namespaced => format!("{} {ns}/{name}", kind.group_resource()),
        _ => format!("{} {name}", kind.group_resource()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner(uid: &str, block: bool) -> OwnerReference {
        OwnerReference { api_version: "apps/v1".into(), kind: "ReplicaSet".into(), name: "rs".into(), uid: uid.into(), block_owner_deletion: Some(block), controller: Some(true) }
    }

    fn node(owners: Vec<OwnerReference>, deleting: bool) -> GraphNode {
        GraphNode { kind: 0, namespace: Some("default".into()), name: "p".into(), owners, deleting }
    }

    #[test]
    fn dependents_are_indexed_by_owner_uid() {
        let mut g = Graph::default();
        let work = g.upsert("pod-1", node(vec![owner("rs-1", true)], false), &[]);
        assert_eq!(work, vec!["pod-1".to_string()]);
        assert_eq!(g.dependents_of("rs-1").len(), 1);
        // Unchanged owners: nothing to do.
        assert!(g.upsert("pod-1", node(vec![owner("rs-1", true)], false), &[]).is_empty());
        // The owner going: its dependents come up for a look.
        g.upsert("rs-1", node(vec![], false), &[]);
        let work = g.remove("rs-1");
        assert_eq!(work, vec!["pod-1".to_string()]);
        // The dependent losing its reference: the old owner is looked at again.
        let work = g.upsert("pod-1", node(vec![], false), &[]);
        assert_eq!(work, vec!["rs-1".to_string()]);
        assert!(g.dependents_of("rs-1").is_empty());
    }

    #[test]
    fn owners_with_deletion_finalizers_are_queued() {
        let mut g = Graph::default();
        let work = g.upsert("rs-1", node(vec![], true), &[ORPHAN.to_string()]);
        assert_eq!(work, vec!["rs-1".to_string()]);
    }
}
