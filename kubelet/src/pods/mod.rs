//! The pods bound to this node: a watch on them, one worker per pod that drives the
//! runtime toward the pod's spec and writes its status back, and the pod lifecycle event
//! generator (PLEG) that relists containers every second and wakes the workers whose
//! containers changed (started, exited), as the real kubelet's pod workers and PLEG do.

mod env;
pub mod probes;
mod resolver;
mod resources;
pub mod snapshot;
mod status;
pub mod volumes;
mod worker;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use kube::runtime::watcher;
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;

use crate::config::KubeletConfig;
use crate::runtime::{ContainerState, ImageService, Runtime, LABEL_POD_UID};
use component_base::events::EventRecorder;

/// What every pod worker shares.
pub struct Context {
    pub config: KubeletConfig,
    pub client: kube::Client,
    pub runtime: Arc<dyn Runtime>,
    pub images: Arc<dyn ImageService>,
    pub recorder: EventRecorder,
    /// The podCIDR once the pod network is configured.
    pub network: watch::Receiver<Option<String>>,
    /// The node's allocatable resources (limits default to these in the downward API).
    pub node_allocatable: BTreeMap<String, String>,
    /// The runtime's listing, shared by workers that ask at the same time.
    pub snapshot: snapshot::Snapshot,
}

struct Handle {
    pod: watch::Sender<Option<Arc<Pod>>>,
    poke: Arc<Notify>,
}

/// The pods of this node and their workers.
pub struct PodManager {
    ctx: Arc<Context>,
    workers: Mutex<HashMap<String, Handle>>,
    /// namespace/name → the pod as last seen (for the kubelet API's lookups).
    by_name: Mutex<HashMap<(String, String), Arc<Pod>>>,
    shutdown: CancellationToken,
}

impl PodManager {
    pub fn new(ctx: Context, shutdown: CancellationToken) -> Arc<PodManager> {
        Arc::new(PodManager {
            ctx: Arc::new(ctx),
            workers: Mutex::new(HashMap::new()),
            by_name: Mutex::new(HashMap::new()),
            shutdown,
        })
    }

    pub fn context(&self) -> &Arc<Context> {
        &self.ctx
    }

    /// The pod named `namespace/name` as last seen on this node.
    pub fn pod(&self, namespace: &str, name: &str) -> Option<Arc<Pod>> {
        self.by_name.lock().unwrap_or_else(|p| p.into_inner()).get(&(namespace.to_string(), name.to_string())).cloned()
    }

    /// Every pod this node currently runs.
    pub fn pods(&self) -> Vec<Arc<Pod>> {
        self.by_name.lock().unwrap_or_else(|p| p.into_inner()).values().cloned().collect()
    }

    /// Watches this node's pods and relists the runtime until shutdown.
    pub async fn run(self: Arc<Self>) {
        let pleg = tokio::spawn(self.clone().pleg());
        self.clone().watch_pods().await;
        let _ = pleg.await;
    }

    async fn watch_pods(self: Arc<Self>) {
        let api: Api<Pod> = Api::all(self.ctx.client.clone());
        let config = watcher::Config::default().fields(&format!("spec.nodeName={}", self.ctx.config.node_name));
        let mut stream = watcher(api, config).boxed();
        let mut initial: Option<HashSet<String>> = None;
        loop {
            let event = tokio::select! {
                _ = self.shutdown.cancelled() => return,
                e = stream.next() => e,
            };
            let Some(event) = event else { return };
            match event {
                Ok(watcher::Event::Init) => initial = Some(HashSet::new()),
                Ok(watcher::Event::InitApply(pod)) => {
                    if let (Some(set), Some(uid)) = (initial.as_mut(), pod.metadata.uid.clone()) {
                        set.insert(uid);
                    }
                    self.apply(pod);
                }
                Ok(watcher::Event::InitDone) => {
                    let live = initial.take().unwrap_or_default();
                    self.clean_orphans(&live).await;
                }
                Ok(watcher::Event::Apply(pod)) => self.apply(pod),
                Ok(watcher::Event::Delete(pod)) => {
                    if let Some(uid) = pod.metadata.uid.clone() {
                        self.forget_name(&pod);
                        self.dispatch(&uid, None);
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "pod watch failed; retrying");
                    tokio::select! {
                        _ = self.shutdown.cancelled() => return,
                        _ = tokio::time::sleep(std::time::Duration::from_millis(500)) => {}
                    }
                }
            }
        }
    }

    fn apply(self: &Arc<Self>, pod: Pod) {
        let Some(uid) = pod.metadata.uid.clone() else { return };
        let pod = Arc::new(pod);
        let key = (pod.metadata.namespace.clone().unwrap_or_default(), pod.metadata.name.clone().unwrap_or_default());
        self.by_name.lock().unwrap_or_else(|p| p.into_inner()).insert(key, pod.clone());
        self.dispatch(&uid, Some(pod));
    }

    fn forget_name(&self, pod: &Pod) {
        let key = (pod.metadata.namespace.clone().unwrap_or_default(), pod.metadata.name.clone().unwrap_or_default());
        let mut map = self.by_name.lock().unwrap_or_else(|p| p.into_inner());
        if map.get(&key).map(|p| p.metadata.uid == pod.metadata.uid).unwrap_or(false) {
            map.remove(&key);
        }
    }

    /// Hands the pod (or its deletion) to its worker, starting one if needed.
    fn dispatch(self: &Arc<Self>, uid: &str, pod: Option<Arc<Pod>>) {
        let mut workers = self.workers.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(h) = workers.get(uid) {
            h.pod.send_replace(pod);
            return;
        }
        let (tx, rx) = watch::channel(pod);
        let poke = Arc::new(Notify::new());
        workers.insert(uid.to_string(), Handle { pod: tx, poke: poke.clone() });
        let ctx = self.ctx.clone();
        let shutdown = self.shutdown.clone();
        let uid = uid.to_string();
        let manager = Arc::downgrade(self);
        tokio::spawn(async move {
            worker::Worker::new(ctx, uid.clone()).run(rx, poke, shutdown).await;
            if let Some(m) = manager.upgrade() {
                m.workers.lock().unwrap_or_else(|p| p.into_inner()).remove(&uid);
            }
        });
    }

    /// Sandboxes and containers of pods that no longer exist (deleted while the kubelet
    /// was down) are stopped and removed.
    async fn clean_orphans(self: &Arc<Self>, live: &HashSet<String>) {
        let mut uids: HashSet<String> = HashSet::new();
        if let Ok(sandboxes) = self.ctx.runtime.list_pod_sandboxes().await {
            uids.extend(sandboxes.into_iter().map(|s| s.pod.uid));
        }
        if let Ok(containers) = self.ctx.runtime.list_containers().await {
            uids.extend(containers.into_iter().filter_map(|c| c.labels.get(LABEL_POD_UID).cloned()));
        }
        for uid in uids.difference(live) {
            tracing::info!(pod_uid = %uid, "cleaning up the containers of a pod that no longer exists");
            self.dispatch(uid, None);
        }
    }

    /// The pod lifecycle event generator: relists containers and wakes the workers of
    /// pods whose containers changed state.
    async fn pleg(self: Arc<Self>) {
        let mut last: HashMap<String, (ContainerState, Option<i32>)> = HashMap::new();
        loop {
            tokio::select! {
                _ = self.shutdown.cancelled() => return,
                _ = tokio::time::sleep(self.ctx.config.relist_period) => {}
            }
            let containers = match self.ctx.runtime.list_containers().await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "relisting containers failed");
                    continue;
                }
            };
            let mut now = HashMap::with_capacity(containers.len());
            let mut changed: HashSet<String> = HashSet::new();
            for c in containers {
                let state = (c.state, c.exit_code);
                if last.get(&c.id) != Some(&state) {
                    if let Some(uid) = c.labels.get(LABEL_POD_UID) {
                        changed.insert(uid.clone());
                    }
                }
                now.insert(c.id, state);
            }
            last = now;
            let workers = self.workers.lock().unwrap_or_else(|p| p.into_inner());
            for uid in changed {
                if let Some(h) = workers.get(&uid) {
                    h.poke.notify_one();
                }
            }
        }
    }
}
