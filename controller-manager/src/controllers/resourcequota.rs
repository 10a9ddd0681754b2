//! The resource quota controller: keeps each ResourceQuota's `status` true to its
//! namespace — `hard` copied from `spec.hard`, `used` counted from the objects there with
//! the same charges quota admission makes ([`apimachinery::quota`]).
//!
//! As in Kubernetes, admission charges creates as it admits them, and this controller
//! does the rest: a quota is counted when it appears or its `spec.hard` changes, its
//! namespace's quotas when something there gives room back (a delete, a pod that
//! finished or is being deleted), and every quota again each
//! `Config::resource_quota_sync_period` (which also corrects charges for creates that
//! failed after admission). Creates and quota status writes do not trigger a count, so a
//! count from a watch cache that has not yet seen a freshly admitted object does not
//! undo its charge. Status is written with the quota's resourceVersion, so a charge made
//! by admission meanwhile is not overwritten.

use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use apimachinery::quota::{self as q, ResourceList};
use futures::channel::mpsc;
use futures::{FutureExt, Stream, StreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Pod, ReplicationController, ResourceQuota, ResourceQuotaStatus, Secret, Service};
use kube::api::{Api, DynamicObject, ListParams, PostParams};
use kube::core::PartialObjectMeta;
use kube::discovery::ApiResource;
use kube::runtime::controller::{self, Action};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Resource, ResourceExt};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, info_span, warn, Instrument};

use super::{Context, ControllerError};

/// Kubernetes' default `--resource-quota-sync-period`.
pub const DEFAULT_SYNC_PERIOD: Duration = Duration::from_secs(300);

#[derive(Debug, thiserror::Error)]
pub enum ResourceQuotaError {
    #[error("encoding {what} as JSON failed")]
    Encode {
        what: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("discovering the API group {group:?} failed")]
    Discover {
        group: String,
        #[source]
        source: kube::Error,
    },
    #[error("listing {resource} in namespace {namespace} failed")]
    List {
        resource: String,
        namespace: String,
        #[source]
        source: kube::Error,
    },
    #[error("updating the status of ResourceQuota {key} failed")]
    UpdateStatus {
        key: String,
        #[source]
        source: kube::Error,
    },
}

struct State {
    client: kube::Client,
    pods: Store<Pod>,
    services: Store<Service>,
    claims: Store<PersistentVolumeClaim>,
    configmaps: Store<PartialObjectMeta<ConfigMap>>,
    secrets: Store<PartialObjectMeta<Secret>>,
    controllers: Store<PartialObjectMeta<ReplicationController>>,
    quotas: Store<ResourceQuota>,
    sync_period: Duration,
    /// Kinds counted by `count/<resource>.<group>` that have no store here, as found in
    /// discovery (the first time a quota names them).
    discovered: Mutex<HashMap<(String, String), ApiResource>>,
}

/// Starts the resource quota controller.
pub fn start(ctx: Context, shutdown: CancellationToken) -> futures::future::BoxFuture<'static, Result<(), ControllerError>> {
    run(ctx, shutdown).boxed()
}

/// Every quota in `namespace`, as queue keys.
fn quotas_in(quotas: &Store<ResourceQuota>, namespace: Option<&str>) -> Vec<ObjectRef<ResourceQuota>> {
    quotas.state().iter().filter(|rq| rq.namespace().as_deref() == namespace).map(|rq| ObjectRef::from_obj(rq.as_ref())).collect()
}

/// Follows one kind's reflector and enqueues its namespace's quotas whenever `gives_back`
/// says an event may have released quota.
fn forward<K, S, F>(events: S, quotas: Store<ResourceQuota>, tx: mpsc::UnboundedSender<ObjectRef<ResourceQuota>>, mut gives_back: F, stop: CancellationToken)
where
    K: Resource + Send + 'static,
    S: Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static,
    F: FnMut(&watcher::Event<K>) -> bool + Send + 'static,
{
    tokio::spawn(async move {
        let mut events = std::pin::pin!(events);
        loop {
            let next = tokio::select! {
                _ = stop.cancelled() => return,
                n = events.next() => n,
            };
            match next {
                None => return,
                Some(Err(e)) => debug!(controller = "resourcequota", error = %e, "watch"),
                Some(Ok(event)) => {
                    if !gives_back(&event) {
                        continue;
                    }
                    let namespace = match &event {
                        watcher::Event::Apply(o) | watcher::Event::Delete(o) => o.meta().namespace.clone(),
                        _ => None,
                    };
                    for rq in quotas_in(&quotas, namespace.as_deref()) {
                        let _ = tx.unbounded_send(rq);
                    }
                }
            }
        }
    });
}

/// Deletes give room back; so does a pod that no longer counts (finished, or deleted).
fn pod_gives_back(event: &watcher::Event<Pod>) -> bool {
    match event {
        watcher::Event::Delete(_) => true,
        watcher::Event::Apply(pod) => {
            let finished = pod.status.as_ref().and_then(|s| s.phase.as_deref()).is_some_and(|p| p == "Succeeded" || p == "Failed");
            finished || pod.metadata.deletion_timestamp.is_some()
        }
        _ => false,
    }
}

fn deleted<K>(event: &watcher::Event<K>) -> bool {
    matches!(event, watcher::Event::Delete(_))
}

/// Deletes give room back; a service also changes what it charges when its type changes,
/// so the last type seen of each service is kept (by uid).
fn service_types() -> impl FnMut(&watcher::Event<Service>) -> bool + Send + 'static {
    let mut types: HashMap<String, String> = HashMap::new();
    move |event| {
        let ty = |svc: &Service| svc.spec.as_ref().and_then(|s| s.type_.clone()).unwrap_or_else(|| "ClusterIP".into());
        match event {
            watcher::Event::Delete(svc) => {
                types.remove(&svc.uid().unwrap_or_default());
                true
            }
            watcher::Event::InitApply(svc) => {
                types.insert(svc.uid().unwrap_or_default(), ty(svc));
                false
            }
            watcher::Event::Apply(svc) => {
                let now = ty(svc);
                types.insert(svc.uid().unwrap_or_default(), now.clone()).is_some_and(|before| before != now)
            }
            _ => false,
        }
    }
}

/// Whether a quota needs counting now: its status does not reflect `spec.hard` (new, or
/// its limits changed).
pub fn needs_sync(rq: &ResourceQuota) -> bool {
    let spec = rq.spec.as_ref().and_then(|s| s.hard.clone()).unwrap_or_default();
    let status = rq.status.as_ref().and_then(|s| s.hard.clone()).unwrap_or_default();
    let list = |m: std::collections::BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>| -> ResourceList {
        m.into_iter().filter_map(|(k, v)| apimachinery::Quantity::parse(&v.0).ok().map(|q| (k, q))).collect()
    };
    let used_names: Vec<String> = rq.status.as_ref().and_then(|s| s.used.as_ref()).map(|u| u.keys().cloned().collect()).unwrap_or_default();
    !q::equals(&list(spec.clone()), &list(status)) || spec.keys().any(|k| !used_names.contains(k))
}

async fn run(ctx: Context, shutdown: CancellationToken) -> Result<(), ControllerError> {
    let client = ctx.client.clone();
    let (quota_reader, quota_writer) = reflector::store::<ResourceQuota>();
    let (pod_reader, pod_writer) = reflector::store::<Pod>();
    let (svc_reader, svc_writer) = reflector::store::<Service>();
    let (pvc_reader, pvc_writer) = reflector::store::<PersistentVolumeClaim>();
    let (cm_reader, cm_writer) = reflector::store::<PartialObjectMeta<ConfigMap>>();
    let (secret_reader, secret_writer) = reflector::store::<PartialObjectMeta<Secret>>();
    let (rc_reader, rc_writer) = reflector::store::<PartialObjectMeta<ReplicationController>>();
    let (tx, rx) = mpsc::unbounded::<ObjectRef<ResourceQuota>>();
    let cfg = watcher::Config::default;

    let pods = reflector::reflector(pod_writer, watcher(Api::<Pod>::all(client.clone()), cfg()).default_backoff());
    forward(pods, quota_reader.clone(), tx.clone(), pod_gives_back, shutdown.clone());
    let services = reflector::reflector(svc_writer, watcher(Api::<Service>::all(client.clone()), cfg()).default_backoff());
    forward(services, quota_reader.clone(), tx.clone(), service_types(), shutdown.clone());
    let claims = reflector::reflector(pvc_writer, watcher(Api::<PersistentVolumeClaim>::all(client.clone()), cfg()).default_backoff());
    forward(claims, quota_reader.clone(), tx.clone(), deleted, shutdown.clone());
    let configmaps = reflector::reflector(cm_writer, watcher(Api::<PartialObjectMeta<ConfigMap>>::all(client.clone()), cfg()).default_backoff());
    forward(configmaps, quota_reader.clone(), tx.clone(), deleted, shutdown.clone());
    let secrets = reflector::reflector(secret_writer, watcher(Api::<PartialObjectMeta<Secret>>::all(client.clone()), cfg()).default_backoff());
    forward(secrets, quota_reader.clone(), tx.clone(), deleted, shutdown.clone());
    let controllers = reflector::reflector(rc_writer, watcher(Api::<PartialObjectMeta<ReplicationController>>::all(client.clone()), cfg()).default_backoff());
    forward(controllers, quota_reader.clone(), tx.clone(), deleted, shutdown.clone());

    // Quotas: counted when they appear (every one on each (re)list) or their limits
    // change; a deleted quota gives back `resourcequotas` room to the others.
    let quotas = reflector::reflector(quota_writer, watcher(Api::<ResourceQuota>::all(client.clone()), cfg()).default_backoff());
    let quota_store = quota_reader.clone();
    let quota_events = quotas.flat_map(move |event| {
        let refs = match event {
            Ok(watcher::Event::InitApply(rq)) => vec![ObjectRef::from_obj(&rq)],
            Ok(watcher::Event::Apply(rq)) if needs_sync(&rq) => vec![ObjectRef::from_obj(&rq)],
            Ok(watcher::Event::Delete(rq)) => quotas_in(&quota_store, rq.namespace().as_deref()),
            Ok(_) => vec![],
            Err(e) => {
                debug!(controller = "resourcequota", error = %e, "quota watch");
                vec![]
            }
        };
        futures::stream::iter(refs.into_iter().map(Ok::<_, watcher::Error>))
    });
    let queue = futures::stream::select(quota_events, rx.map(Ok::<_, watcher::Error>));

    for ready in [pod_reader.wait_until_ready().boxed(), svc_reader.wait_until_ready().boxed(), pvc_reader.wait_until_ready().boxed()] {
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            r = ready => r.map_err(|e| ControllerError::Config(e.to_string()))?,
        }
    }
    for ready in [cm_reader.wait_until_ready().boxed(), secret_reader.wait_until_ready().boxed(), rc_reader.wait_until_ready().boxed()] {
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            r = ready => r.map_err(|e| ControllerError::Config(e.to_string()))?,
        }
    }
    let state = Arc::new(State {
        client,
        pods: pod_reader,
        services: svc_reader,
        claims: pvc_reader,
        configmaps: cm_reader,
        secrets: secret_reader,
        controllers: rc_reader,
        quotas: quota_reader.clone(),
        sync_period: ctx.config.resource_quota_sync_period,
        discovered: Mutex::new(HashMap::new()),
    });
    let applier = controller::applier(
        |rq, st| Box::pin(reconcile(rq, st)),
        |rq: Arc<ResourceQuota>, err: &ResourceQuotaError, _| {
            warn!(controller = "resourcequota", quota = %key_of(&rq), error = %err, "sync failed");
            Action::requeue(Duration::from_secs(1))
        },
        state,
        quota_reader,
        queue,
        controller::Config::default().debounce(Duration::from_millis(200)),
    );
    super::drive("resourcequota", applier, &shutdown).await
}

fn key_of(rq: &ResourceQuota) -> String {
    format!("{}/{}", rq.namespace().unwrap_or_default(), rq.name_any())
}

async fn reconcile(rq: Arc<ResourceQuota>, st: Arc<State>) -> Result<Action, ResourceQuotaError> {
    let span = info_span!("sync", controller = "resourcequota", object = %key_of(&rq));
    sync(rq, st).instrument(span).await
}

fn encode<T: serde::Serialize>(what: &str, obj: &T) -> Result<Value, ResourceQuotaError> {
    serde_json::to_value(obj).map_err(|source| ResourceQuotaError::Encode { what: what.to_string(), source })
}

/// The objects of `group`/`resource` in `namespace`, as JSON.
async fn objects_of(st: &State, group: &str, resource: &str, namespace: &str) -> Result<Vec<Value>, ResourceQuotaError> {
    fn from_store<K: Resource + serde::Serialize + Clone>(store: &Store<K>, namespace: &str, what: &str) -> Result<Vec<Value>, ResourceQuotaError>
    where
        K::DynamicType: Eq + std::hash::Hash + Clone,
    {
        store.state().iter().filter(|o| o.meta().namespace.as_deref() == Some(namespace)).map(|o| encode(what, o.as_ref())).collect()
    }
    match (group, resource) {
        ("", "pods") => from_store(&st.pods, namespace, "a pod"),
        ("", "services") => from_store(&st.services, namespace, "a service"),
        ("", "persistentvolumeclaims") => from_store(&st.claims, namespace, "a claim"),
        // Object counts need only the metadata.
        ("", "configmaps") => from_store(&st.configmaps, namespace, "a configmap"),
        ("", "secrets") => from_store(&st.secrets, namespace, "a secret"),
        ("", "replicationcontrollers") => from_store(&st.controllers, namespace, "a replication controller"),
        ("", "resourcequotas") => from_store(&st.quotas, namespace, "a quota"),
        _ => list_other(st, group, resource, namespace).await,
    }
}

/// Lists a kind this controller does not watch (metadata only), found in discovery.
async fn list_other(st: &State, group: &str, resource: &str, namespace: &str) -> Result<Vec<Value>, ResourceQuotaError> {
    let key = (group.to_string(), resource.to_string());
    let known = st.discovered.lock().unwrap_or_else(|e| e.into_inner()).get(&key).cloned();
    let ar = match known {
        Some(ar) => ar,
        None => {
            let found = kube::discovery::oneshot::group(&st.client, group).await;
            let found = match found {
                Ok(g) => g.recommended_resources().into_iter().find(|(ar, caps)| ar.plural == resource && caps.scope == kube::discovery::Scope::Namespaced),
                // A group the API does not serve counts nothing.
                Err(kube::Error::Api(s)) if s.code == 404 => None,
                Err(source) => return Err(ResourceQuotaError::Discover { group: group.to_string(), source }),
            };
            let Some((ar, _)) = found else {
                debug!(group, resource, "a quota counts a resource the API does not serve");
                return Ok(vec![]);
            };
            st.discovered.lock().unwrap_or_else(|e| e.into_inner()).insert(key, ar.clone());
            ar
        }
    };
    let api: Api<DynamicObject> = Api::namespaced_with(st.client.clone(), namespace, &ar);
    let listed = api.list_metadata(&ListParams::default()).await.map_err(|source| ResourceQuotaError::List {
        resource: q::object_count_name(group, resource),
        namespace: namespace.to_string(),
        source,
    })?;
    listed.items.iter().map(|o| Ok(json!({"metadata": encode("metadata", &o.metadata)?}))).collect()
}

/// What `objects` (by group and resource) charge against a quota at `now`: a value for
/// each resource of `spec.hard`.
pub fn count_usage(quota: &Value, objects: &[(String, String, Vec<Value>)], now: i64) -> ResourceList {
    let names: Vec<String> = q::hard_of(quota).into_keys().collect();
    let mut used = q::zeros(&names);
    for (group, resource, list) in objects {
        for o in list {
            if let Some(u) = q::usage_for_quota(quota, group, resource, o, now) {
                used = q::add(&used, &u);
            }
        }
    }
    q::mask(&used, &names)
}

async fn sync(rq: Arc<ResourceQuota>, st: Arc<State>) -> Result<Action, ResourceQuotaError> {
    let namespace = rq.namespace().unwrap_or_default();
    let key = key_of(&rq);
    let quota = encode("the quota", rq.as_ref())?;
    let names: Vec<String> = q::hard_of(&quota).into_keys().collect();
    let mut objects = Vec::new();
    for (group, resource) in q::tracked_kinds(&names) {
        let list = objects_of(&st, &group, &resource, &namespace).await?;
        objects.push((group, resource, list));
    }
    let used = count_usage(&quota, &objects, chrono::Utc::now().timestamp());
    let desired = q::status_for(&quota, &used);
    let current_hard = q::parse_list(quota.pointer("/status/hard"));
    let current_used = q::parse_list(quota.pointer("/status/used"));
    let same = q::equals(&current_hard, &q::parse_list(desired.get("hard"))) && q::equals(&current_used, &q::parse_list(desired.get("used")));
    if same {
        return Ok(Action::requeue(st.sync_period));
    }
    let status: ResourceQuotaStatus = serde_json::from_value(desired).map_err(|source| ResourceQuotaError::Encode { what: "the status".into(), source })?;
    let mut updated = rq.as_ref().clone();
    updated.status = Some(status);
    let api: Api<ResourceQuota> = Api::namespaced(st.client.clone(), &namespace);
    // The resourceVersion it carries makes this a compare-and-swap with admission.
    match api.replace_status(&rq.name_any(), &PostParams::default(), &updated).await {
        Ok(_) => {
            info!(quota = %key, used = %q::pretty_print(&used), "updated quota usage");
            Ok(Action::requeue(st.sync_period))
        }
        // Charged by admission (or changed) meanwhile: count again.
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(Action::requeue(Duration::from_millis(200))),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(Action::await_change()),
        Err(source) => Err(ResourceQuotaError::UpdateStatus { key, source }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quota(hard: Value, status: Value) -> ResourceQuota {
        serde_json::from_value(json!({"metadata": {"name": "compute", "namespace": "ns"}, "spec": {"hard": hard}, "status": status})).unwrap_or_default()
    }

    #[test]
    fn counts_running_pods_and_services_against_hard() {
        let q = json!({"spec": {"hard": {"pods": "3", "limits.cpu": "2", "services.nodeports": "4", "count/deployments.apps": "1"}}});
        let pod = |cpu: &str, phase: &str| json!({"spec": {"containers": [{"name": "a", "resources": {"limits": {"cpu": cpu}}}]}, "status": {"phase": phase}});
        let objects = vec![
            ("".to_string(), "pods".to_string(), vec![pod("500m", "Running"), pod("1", "Pending"), pod("2", "Succeeded")]),
            (
                "".to_string(),
                "services".to_string(),
                vec![json!({"spec": {"type": "NodePort", "ports": [{"port": 80}]}}), json!({"spec": {"type": "ClusterIP", "ports": [{"port": 80}]}})],
            ),
        ];
        let used = count_usage(&q, &objects, 0);
        assert_eq!(q::pretty_print(&used), "count/deployments.apps=0,limits.cpu=1500m,pods=2,services.nodeports=1");
        let status = q::status_for(&q, &used);
        assert_eq!(status["used"]["limits.cpu"], "1500m");
        assert_eq!(status["hard"]["pods"], "3");
    }

    #[test]
    fn quotas_sync_when_their_limits_are_not_in_status() {
        assert!(needs_sync(&quota(json!({"pods": "2"}), json!({}))));
        assert!(needs_sync(&quota(json!({"pods": "3"}), json!({"hard": {"pods": "2"}, "used": {"pods": "1"}}))));
        assert!(needs_sync(&quota(json!({"pods": "2", "cpu": "1"}), json!({"hard": {"pods": "2", "cpu": "1"}, "used": {"pods": "1"}}))));
        assert!(!needs_sync(&quota(json!({"pods": "2"}), json!({"hard": {"pods": "2"}, "used": {"pods": "1"}}))));
    }

    #[test]
    fn only_released_room_triggers_a_count() {
        let pod = |phase: &str| -> Pod {
            serde_json::from_value(json!({"metadata": {"name": "p", "namespace": "ns"}, "status": {"phase": phase}})).unwrap_or_default()
        };
        assert!(!pod_gives_back(&watcher::Event::Apply(pod("Running"))));
        assert!(pod_gives_back(&watcher::Event::Apply(pod("Succeeded"))));
        assert!(pod_gives_back(&watcher::Event::Delete(pod("Running"))));
        assert!(!pod_gives_back(&watcher::Event::InitApply(pod("Failed"))));
        let svc = |ty: &str| -> Service {
            serde_json::from_value(json!({"metadata": {"name": "s", "namespace": "ns", "uid": "u1"}, "spec": {"type": ty}})).unwrap_or_default()
        };
        let mut services = service_types();
        assert!(!services(&watcher::Event::Apply(svc("NodePort"))), "a create is charged by admission");
        assert!(!services(&watcher::Event::Apply(svc("NodePort"))));
        assert!(services(&watcher::Event::Apply(svc("ClusterIP"))), "a type change");
        assert!(services(&watcher::Event::Delete(svc("ClusterIP"))));
    }
}
