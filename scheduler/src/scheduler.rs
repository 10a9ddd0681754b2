//! The scheduling loop: one task owns the cache and the queue, applies pod and node watch
//! events to them, pops the next pod, runs the framework, assumes the chosen node and
//! hands the binding to a task of its own (kube-scheduler's binding cycle). A pod that
//! fits nowhere gets a FailedScheduling event and a PodScheduled=False condition.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use k8s_openapi::api::core::v1::{Binding, Event, EventSource, Node, ObjectReference, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::{watcher, WatchStreamExt};
use tokio::sync::{mpsc, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::cache::Cache;
use crate::config::Profile;
use crate::framework::{FitError, Framework};
use crate::queue::{Attempt, Queue};
use crate::types::PodInfo;

/// Bindings written at once; more wait their turn.
const MAX_CONCURRENT_BINDINGS: usize = 64;

// Watch events arrive one at a time and are consumed at once; boxing them buys nothing.
#[allow(clippy::large_enum_variant)]
enum Input {
    Pod(Result<watcher::Event<Pod>, watcher::Error>),
    Node(Result<watcher::Event<Node>, watcher::Error>),
    Bound(BindResult),
}

struct BindResult {
    info: Arc<PodInfo>,
    node: String,
    attempts: u32,
    result: Result<(), kube::Error>,
}

/// The state of one leading scheduler.
pub struct Scheduler {
    client: kube::Client,
    scheduler_name: String,
    identity: String,
    framework: Framework,
    cache: Cache,
    queue: Queue,
    binds: mpsc::UnboundedSender<BindResult>,
    bind_slots: Arc<Semaphore>,
    pods_relist: Option<HashSet<String>>,
    nodes_relist: Option<HashSet<String>>,
    pods_synced: bool,
    nodes_synced: bool,
    shutdown: CancellationToken,
}

/// Runs the scheduling loop until `shutdown`.
/// `identity` names this scheduler in the events it writes (`reportingInstance`).
pub async fn run_loop(client: kube::Client, profile: Profile, identity: String, shutdown: CancellationToken) {
    let (binds_tx, binds_rx) = mpsc::unbounded_channel();
    let pods = watcher(Api::<Pod>::all(client.clone()), watcher::Config::default()).default_backoff().map(Input::Pod);
    let nodes = watcher(Api::<Node>::all(client.clone()), watcher::Config::default()).default_backoff().map(Input::Node);
    let bound = futures::stream::unfold(binds_rx, |mut rx| async move { rx.recv().await.map(|r| (Input::Bound(r), rx)) });
    let mut inputs = futures::stream::select(futures::stream::select(pods, nodes), bound).boxed();
    let mut s = Scheduler {
        client,
        scheduler_name: profile.scheduler_name.clone(),
        identity,
        framework: profile.framework(),
        cache: Cache::default(),
        queue: Queue::default(),
        binds: binds_tx,
        bind_slots: Arc::new(Semaphore::new(MAX_CONCURRENT_BINDINGS)),
        pods_relist: None,
        nodes_relist: None,
        pods_synced: false,
        nodes_synced: false,
        shutdown: shutdown.clone(),
    };
    info!(scheduler = %s.scheduler_name, "scheduler started");
    let mut next_leftover_flush = Instant::now() + Duration::from_secs(30);
    loop {
        if shutdown.is_cancelled() {
            break;
        }
        // Take in everything that has already arrived, so the cycle sees a fresh cache.
        while let Some(Some(input)) = inputs.next().now_or_never() {
            s.handle(input);
        }
        let now = Instant::now();
        if now >= next_leftover_flush {
            s.queue.flush_unschedulable_leftover(now);
            next_leftover_flush = now + Duration::from_secs(30);
        }
        if s.pods_synced && s.nodes_synced {
            if let Some(attempt) = s.queue.pop(now) {
                s.schedule_one(attempt);
                tokio::task::yield_now().await;
                continue;
            }
        }
        let wake = s.queue.next_backoff_expiry().map_or(next_leftover_flush, |t| t.min(next_leftover_flush));
        tokio::select! {
            _ = shutdown.cancelled() => break,
            input = inputs.next() => match input {
                Some(input) => s.handle(input),
                None => break,
            },
            _ = tokio::time::sleep_until(wake) => {}
        }
    }
    info!("scheduler stopped");
}

impl Scheduler {
    fn handle(&mut self, input: Input) {
        match input {
            Input::Pod(Ok(ev)) => self.handle_pod_event(ev),
            Input::Node(Ok(ev)) => self.handle_node_event(ev),
            Input::Pod(Err(e)) => warn!(error = %e, "pod watch failed; retrying"),
            Input::Node(Err(e)) => warn!(error = %e, "node watch failed; retrying"),
            Input::Bound(r) => self.handle_bind_result(r),
        }
    }

    fn handle_pod_event(&mut self, ev: watcher::Event<Pod>) {
        let now = Instant::now();
        match ev {
            watcher::Event::Init => self.pods_relist = Some(HashSet::new()),
            watcher::Event::InitApply(pod) => {
                let info = Arc::new(PodInfo::new(Arc::new(pod)));
                if let Some(seen) = self.pods_relist.as_mut() {
                    seen.insert(info.key.clone());
                }
                self.apply_pod(info, now);
            }
            watcher::Event::InitDone => {
                if let Some(seen) = self.pods_relist.take() {
                    self.cache.retain_pods(&seen);
                }
                self.pods_synced = true;
            }
            watcher::Event::Apply(pod) => self.apply_pod(Arc::new(PodInfo::new(Arc::new(pod))), now),
            watcher::Event::Delete(pod) => {
                let key = format!("{}/{}", pod.metadata.namespace.as_deref().unwrap_or_default(), pod.metadata.name.as_deref().unwrap_or_default());
                self.queue.remove(&key);
                if self.cache.remove_pod(&key) {
                    self.queue.move_all_unschedulable(now);
                }
            }
        }
    }

    fn apply_pod(&mut self, info: Arc<PodInfo>, now: Instant) {
        let phase = info.pod.status.as_ref().and_then(|s| s.phase.as_deref());
        let terminal = matches!(phase, Some("Succeeded" | "Failed"));
        if let Some(node) = info.node_name().map(str::to_string) {
            self.queue.remove(&info.key);
            if terminal {
                // A finished pod no longer holds its node's resources.
                if self.cache.remove_pod(&info.key) {
                    self.queue.move_all_unschedulable(now);
                }
            } else {
                self.cache.add_bound_pod(info, &node);
            }
            return;
        }
        let ours = info.pod.spec.as_ref().and_then(|s| s.scheduler_name.as_deref()).unwrap_or("default-scheduler") == self.scheduler_name;
        if !ours || terminal || info.pod.metadata.deletion_timestamp.is_some() {
            self.queue.remove(&info.key);
            return;
        }
        if self.cache.contains_pod(&info.key) {
            // Assumed and being bound: this event predates the binding.
            return;
        }
        self.queue.add_or_update(info, now);
    }

    fn handle_node_event(&mut self, ev: watcher::Event<Node>) {
        let now = Instant::now();
        match ev {
            watcher::Event::Init => self.nodes_relist = Some(HashSet::new()),
            watcher::Event::InitApply(node) => {
                if let Some(seen) = self.nodes_relist.as_mut() {
                    seen.insert(node.metadata.name.clone().unwrap_or_default());
                }
                if self.cache.upsert_node(Arc::new(node)) {
                    self.queue.move_all_unschedulable(now);
                }
            }
            watcher::Event::InitDone => {
                if let Some(seen) = self.nodes_relist.take() {
                    self.cache.retain_nodes(&seen);
                }
                self.nodes_synced = true;
            }
            watcher::Event::Apply(node) => {
                if self.cache.upsert_node(Arc::new(node)) {
                    self.queue.move_all_unschedulable(now);
                }
            }
            watcher::Event::Delete(node) => self.cache.remove_node(node.metadata.name.as_deref().unwrap_or_default()),
        }
    }

    fn handle_bind_result(&mut self, r: BindResult) {
        match r.result {
            Ok(()) => debug!(pod = %r.info.key, node = %r.node, "bound"),
            Err(e) => {
                let now = Instant::now();
                self.cache.forget(&r.info.key);
                self.queue.move_all_unschedulable(now);
                match &e {
                    // Deleted, or bound by someone else: the watch will tell.
                    kube::Error::Api(s) if s.code == 404 || s.code == 409 => {
                        debug!(pod = %r.info.key, error = %e, "binding rejected; not retrying");
                    }
                    _ => {
                        warn!(pod = %r.info.key, node = %r.node, error = %e, "binding failed; retrying");
                        self.queue.requeue(r.info, r.attempts, now);
                    }
                }
            }
        }
    }

    fn schedule_one(&mut self, attempt: Attempt) {
        let info = attempt.info.clone();
        match self.framework.schedule(&info, self.cache.nodes()) {
            Ok(i) => {
                let node = self.cache.nodes()[i].name.clone();
                self.cache.assume(info.clone(), &node);
                self.queue.done(&info.key);
                self.spawn_bind(info, node, attempt.attempts);
            }
            Err(fit) => {
                let message = fit.to_string();
                info!(pod = %info.key, %message, "unschedulable");
                self.queue.unschedulable(&attempt, Instant::now());
                self.spawn_record_failure(info, &fit);
            }
        }
    }

    fn spawn_bind(&self, info: Arc<PodInfo>, node: String, attempts: u32) {
        let client = self.client.clone();
        let tx = self.binds.clone();
        let slots = self.bind_slots.clone();
        let shutdown = self.shutdown.clone();
        let (component, instance) = (self.scheduler_name.clone(), self.identity.clone());
        tokio::spawn(async move {
            let Ok(permit) = slots.acquire().await else { return };
            if shutdown.is_cancelled() {
                // No longer leading: leave the pod for whoever leads now.
                return;
            }
            let result = bind(&client, &info, &node).await;
            drop(permit);
            let bound = result.is_ok();
            let _ = tx.send(BindResult { info: info.clone(), node: node.clone(), attempts, result });
            if bound {
                let message = format!("Successfully assigned {} to {node}", info.key);
                let event = pod_event(&info, "Normal", "Scheduled", "Binding", &message, &component, &instance);
                if let Err(e) = Api::<Event>::namespaced(client, &info.namespace).create(&PostParams::default(), &event).await {
                    debug!(pod = %info.key, error = %e, "recording the Scheduled event failed");
                }
            }
        });
    }

    fn spawn_record_failure(&self, info: Arc<PodInfo>, fit: &FitError) {
        let client = self.client.clone();
        let message = fit.to_string();
        let (component, instance) = (self.scheduler_name.clone(), self.identity.clone());
        tokio::spawn(async move {
            if let Err(e) = record_failure(&client, &info, &message, &component, &instance).await {
                warn!(pod = %info.key, error = %e, "recording the scheduling failure failed");
            }
        });
    }
}

/// Writes `pods/binding`.
pub async fn bind(client: &kube::Client, info: &PodInfo, node: &str) -> Result<(), kube::Error> {
    let api: Api<Pod> = Api::namespaced(client.clone(), &info.namespace);
    let binding = Binding {
        metadata: ObjectMeta { name: Some(info.name.clone()), namespace: Some(info.namespace.clone()), uid: Some(info.uid.clone()).filter(|u| !u.is_empty()), ..Default::default() },
        target: ObjectReference { kind: Some("Node".into()), api_version: Some("v1".into()), name: Some(node.to_string()), ..Default::default() },
    };
    let _: serde_json::Value = api.create_subresource("binding", &info.name, &PostParams::default(), &binding).await?;
    Ok(())
}

/// A core/v1 Event about a pod.
fn pod_event(info: &PodInfo, type_: &str, reason: &str, action: &str, message: &str, component: &str, instance: &str) -> Event {
    let now = Timestamp::now();
    Event {
        metadata: ObjectMeta {
            name: Some(format!("{}.{:x}", info.name, now.as_nanosecond())),
            namespace: Some(info.namespace.clone()),
            ..Default::default()
        },
        involved_object: ObjectReference {
            kind: Some("Pod".into()),
            api_version: Some("v1".into()),
            namespace: Some(info.namespace.clone()),
            name: Some(info.name.clone()),
            uid: Some(info.uid.clone()),
            resource_version: info.pod.metadata.resource_version.clone(),
            ..Default::default()
        },
        reason: Some(reason.into()),
        message: Some(message.to_string()),
        type_: Some(type_.into()),
        action: Some(action.into()),
        source: Some(EventSource { component: Some(component.to_string()), host: None }),
        reporting_component: Some(component.to_string()),
        reporting_instance: Some(instance.to_string()),
        first_timestamp: Some(Time(now)),
        last_timestamp: Some(Time(now)),
        event_time: Some(MicroTime(now)),
        count: Some(1),
        ..Default::default()
    }
}

/// A FailedScheduling event on the pod and its PodScheduled=False condition.
async fn record_failure(client: &kube::Client, info: &PodInfo, message: &str, component: &str, instance: &str) -> Result<(), kube::Error> {
    let now = Timestamp::now();
    let events: Api<Event> = Api::namespaced(client.clone(), &info.namespace);
    let event = pod_event(info, "Warning", "FailedScheduling", "Scheduling", message, component, instance);
    events.create(&PostParams::default(), &event).await?;
    let already = info.pod.status.as_ref().and_then(|s| s.conditions.as_ref()).is_some_and(|cs| {
        cs.iter().any(|c| c.type_ == "PodScheduled" && c.status == "False" && c.reason.as_deref() == Some("Unschedulable") && c.message.as_deref() == Some(message))
    });
    if !already {
        let pods: Api<Pod> = Api::namespaced(client.clone(), &info.namespace);
        let patch = serde_json::json!({"status": {"conditions": [{
            "type": "PodScheduled",
            "status": "False",
            "reason": "Unschedulable",
            "message": message,
            "lastTransitionTime": Time(now),
        }]}});
        pods.patch_status(&info.name, &PatchParams::default(), &Patch::Strategic(&patch)).await?;
    }
    Ok(())
}
