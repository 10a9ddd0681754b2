//! The horizontal pod autoscaler controller (`horizontalpodautoscaling`): every sync
//! period each autoscaling/v2 HorizontalPodAutoscaler reads its target's `scale`
//! subresource (Deployment, ReplicaSet, StatefulSet, ReplicationController), the pods its
//! selector selects and their metrics, lets [`recommend::decide`] pick the replica count,
//! writes the scale when it changed, and reports currentReplicas, desiredReplicas,
//! currentMetrics, lastScaleTime and the AbleToScale / ScalingActive / ScalingLimited
//! conditions.

pub mod recommend;
pub mod source;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use apimachinery::labels::Selector;
use futures::future::BoxFuture;
use futures::StreamExt;
use k8s_openapi::api::autoscaling::v2::{
    CrossVersionObjectReference, HorizontalPodAutoscaler, HorizontalPodAutoscalerCondition, HorizontalPodAutoscalerStatus,
};
use component_base::events::EventSink;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::core::{ApiResource, GroupVersionKind};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector;
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Resource, ResourceExt};
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tracing::{info, info_span, warn, Instrument};

use self::recommend::{Condition, History, Input, Tuning};
use self::source::{ApiMetricsSource, MetricsSource};
use super::{Context, ControllerError};

/// Why an HPA sync failed.
#[derive(Debug, thiserror::Error)]
pub enum HpaError {
    #[error("updating the scale of {target} for {key}")]
    UpdateScale {
        key: String,
        target: String,
        #[source]
        source: kube::Error,
    },
    #[error("updating the status of {key}")]
    UpdateStatus {
        key: String,
        #[source]
        source: kube::Error,
    },
}

struct State {
    client: kube::Client,
    pods: reflector::Store<Pod>,
    source: Arc<dyn MetricsSource>,
    tuning: Tuning,
    sync_period: Duration,
    /// Recommendations and scale events per HPA (`namespace/name`).
    history: Mutex<HashMap<String, History>>,
    /// When each HPA was last synced, and at which generation: events in between (our
    /// own status writes) wait for the sync period, as in Kubernetes.
    last_sync: Mutex<HashMap<String, (Instant, Option<i64>)>>,
    /// Where its events go; a failure repeated every sync becomes one event whose count
    /// grows, as client-go's recorder aggregates them.
    events: EventSink,
    /// The controller's HPA cache, to forget deleted HPAs.
    hpas: std::sync::OnceLock<reflector::Store<HorizontalPodAutoscaler>>,
}

/// Starts the controller with metrics from the resource metrics API.
pub fn start(ctx: Context, shutdown: CancellationToken) -> BoxFuture<'static, Result<(), ControllerError>> {
    let source = Arc::new(ApiMetricsSource::new(ctx.client.clone()));
    Box::pin(run(ctx, shutdown, source))
}

/// Runs the controller with metrics from `source` until `shutdown`.
pub async fn run(ctx: Context, shutdown: CancellationToken, source: Arc<dyn MetricsSource>) -> Result<(), ControllerError> {
    let client = ctx.client.clone();
    let (pods, pod_writer) = reflector::store::<Pod>();
    let pod_stream = reflector::reflector(pod_writer, watcher(Api::<Pod>::all(client.clone()), watcher::Config::default()).default_backoff());
    super::keep_filled("horizontal-pod-autoscaler", pod_stream, shutdown.clone());
    tokio::select! {
        _ = shutdown.cancelled() => return Ok(()),
        r = pods.wait_until_ready() => r.map_err(|e| ControllerError::Config(e.to_string()))?,
    }
    let state = Arc::new(State {
        client: client.clone(),
        pods,
        source,
        tuning: ctx.config.hpa_tuning.clone(),
        sync_period: ctx.config.hpa_sync_period,
        history: Mutex::default(),
        last_sync: Mutex::default(),
        events: ctx.events("horizontal-pod-autoscaler"),
        hpas: std::sync::OnceLock::new(),
    });
    let hpas: Api<HorizontalPodAutoscaler> = Api::all(client);
    let controller = Controller::new(hpas, watcher::Config::default());
    let _ = state.hpas.set(controller.store());
    controller
        .graceful_shutdown_on(async move { shutdown.cancelled().await })
        .run(reconcile, error_policy, state)
        .for_each(|_| async {})
        .await;
    Ok(())
}

fn error_policy(hpa: Arc<HorizontalPodAutoscaler>, err: &HpaError, st: Arc<State>) -> Action {
    warn!(hpa = %key_of(&hpa), error = %err, "horizontal pod autoscaler sync failed");
    Action::requeue(st.sync_period)
}

fn key_of(hpa: &HorizontalPodAutoscaler) -> String {
    format!("{}/{}", hpa.namespace().unwrap_or_default(), hpa.name_any())
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Forgets the history of HPAs that no longer exist.
fn forget_deleted(st: &State) {
    let Some(store) = st.hpas.get() else { return };
    let live: std::collections::HashSet<String> = store.state().iter().map(|h| key_of(h)).collect();
    lock(&st.history).retain(|k, _| live.contains(k));
    lock(&st.last_sync).retain(|k, _| live.contains(k));
}

async fn reconcile(hpa: Arc<HorizontalPodAutoscaler>, st: Arc<State>) -> Result<Action, HpaError> {
    let key = key_of(&hpa);
    {
        let mut last = lock(&st.last_sync);
        if let Some((at, generation)) = last.get(&key) {
            let elapsed = at.elapsed();
            if *generation == hpa.metadata.generation && elapsed < st.sync_period {
                return Ok(Action::requeue(st.sync_period - elapsed));
            }
        }
        last.insert(key.clone(), (Instant::now(), hpa.metadata.generation));
    }
    forget_deleted(&st);
    let span = info_span!("sync", controller = "horizontalpodautoscaling", object = %key);
    sync(hpa, st.clone(), key).instrument(span).await?;
    Ok(Action::requeue(st.sync_period))
}

/// The resource of a scale target kind, if it has a `scale` subresource here.
fn scale_resource(target: &CrossVersionObjectReference) -> Result<ApiResource, String> {
    let group = target.api_version.as_deref().unwrap_or_default().split_once('/').map(|(g, _)| g).unwrap_or_default();
    let plural = match (group, target.kind.as_str()) {
        ("apps", "Deployment") => "deployments",
        ("apps", "ReplicaSet") => "replicasets",
        ("apps", "StatefulSet") => "statefulsets",
        ("", "ReplicationController") => "replicationcontrollers",
        _ => return Err(format!("unrecognized resource {:?} of kind {:?}", target.api_version.as_deref().unwrap_or_default(), target.kind)),
    };
    Ok(ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, "v1", &target.kind), plural))
}

/// Sets `c` in `conditions` as Kubernetes' `setCondition`: the transition time moves
/// only when the status changes.
fn set_condition(conditions: &mut Vec<HorizontalPodAutoscalerCondition>, c: &Condition, now: Timestamp) {
    let status = if c.status { "True" } else { "False" };
    match conditions.iter_mut().find(|x| x.type_ == c.type_) {
        Some(existing) => {
            if existing.status != status {
                existing.last_transition_time = Some(Time(now));
            }
            existing.status = status.into();
            existing.reason = Some(c.reason.clone());
            existing.message = Some(c.message.clone());
        }
        None => conditions.push(HorizontalPodAutoscalerCondition {
            type_: c.type_.into(),
            status: status.into(),
            reason: Some(c.reason.clone()),
            message: Some(c.message.clone()),
            last_transition_time: Some(Time(now)),
        }),
    }
}

async fn sync(hpa: Arc<HorizontalPodAutoscaler>, st: Arc<State>, key: String) -> Result<(), HpaError> {
    let ns = hpa.namespace().unwrap_or_default();
    let Some(spec) = hpa.spec.clone() else { return Ok(()) };
    let old = hpa.status.clone().unwrap_or_default();
    let now = Timestamp::now();
    let mut status = HorizontalPodAutoscalerStatus { observed_generation: hpa.metadata.generation, ..old.clone() };
    let mut conditions = old.conditions.clone().unwrap_or_default();
    let target = &spec.scale_target_ref;
    let target_name = format!("{}/{}", target.kind, target.name);

    let scale_api = scale_resource(target).map(|ar| Api::<DynamicObject>::namespaced_with(st.client.clone(), &ns, &ar));
    let scale = match &scale_api {
        Ok(api) => api.get_scale(&target.name).await.map_err(|e| api_message(&e)),
        Err(e) => Err(e.clone()),
    };
    let scale = match scale {
        Ok(s) => s,
        Err(e) => {
            let c = recommend_condition("AbleToScale", false, "FailedGetScale", format!("the HPA controller was unable to get the target's current scale: {e}"));
            set_condition(&mut conditions, &c, now);
            st.events.warning(hpa.object_ref(&()), "FailedGetScale", e);
            status.conditions = Some(conditions);
            return write_status(&st, &hpa, &key, old, status).await;
        }
    };
    set_condition(&mut conditions, &recommend_condition("AbleToScale", true, "SucceededGetScale", "the HPA controller was able to get the target's current scale"), now);
    let current = scale.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0);
    // As Kubernetes, the target's desired count (`scale.spec.replicas`) is "current".
    status.current_replicas = Some(current);

    let selector_text = scale.status.as_ref().and_then(|s| s.selector.clone()).unwrap_or_default();
    let selector = match Selector::parse(&selector_text) {
        Ok(s) if !selector_text.is_empty() => s,
        _ => {
            let reason = if selector_text.is_empty() { "selector is required" } else { "couldn't convert selector into a corresponding internal selector object" };
            set_condition(&mut conditions, &recommend_condition("ScalingActive", false, "InvalidSelector", format!("the HPA target's scale is missing a selector: {reason}")), now);
            status.conditions = Some(conditions);
            return write_status(&st, &hpa, &key, old, status).await;
        }
    };
    let pods: Vec<Pod> = st
        .pods
        .state()
        .iter()
        .filter(|p| p.metadata.namespace.as_deref() == Some(ns.as_str()) && selector.matches(&p.metadata.labels.clone().unwrap_or_default()))
        .map(|p| (**p).clone())
        .collect();
    let fetched = st.source.pod_metrics(&ns, &selector).await.map_err(|e| {
        let mut msg = e.to_string();
        let mut src = std::error::Error::source(&e);
        while let Some(s) = src {
            msg = format!("{msg}: {s}");
            src = s.source();
        }
        msg
    });
    let decision = {
        let mut histories = lock(&st.history);
        let history = histories.entry(key.clone()).or_default();
        let input = Input { spec: &spec, current_replicas: current, pods: &pods, metrics: fetched.as_ref().map_err(String::as_str), now, tuning: &st.tuning };
        recommend::decide(&input, history)
    };
    for c in &decision.conditions {
        set_condition(&mut conditions, c, now);
    }
    status.current_metrics = (!decision.metric_statuses.is_empty()).then(|| decision.metric_statuses.clone());
    if let Some(err) = &decision.error {
        st.events.warning(hpa.object_ref(&()), "FailedComputeMetricsReplicas", err.clone());
        status.conditions = Some(conditions);
        return write_status(&st, &hpa, &key, old, status).await;
    }
    status.desired_replicas = decision.desired_replicas;
    if decision.rescale {
        let patch = json!({"spec": {"replicas": decision.desired_replicas}});
        let result = match &scale_api {
            Ok(api) => api.patch_scale(&target.name, &PatchParams::default(), &Patch::Merge(&patch)).await.map(|_| ()),
            Err(_) => Ok(()),
        };
        if let Err(source) = result {
            let c = recommend_condition("AbleToScale", false, "FailedUpdateScale", format!("the HPA controller was unable to update the target scale: {}", api_message(&source)));
            set_condition(&mut conditions, &c, now);
            st.events.warning(hpa.object_ref(&()), "FailedRescale", format!("New size: {}; reason: {}; error: {}", decision.desired_replicas, decision.reason, api_message(&source)));
            status.desired_replicas = old.desired_replicas;
            status.conditions = Some(conditions);
            write_status(&st, &hpa, &key, old, status).await?;
            return Err(HpaError::UpdateScale { key, target: target_name, source });
        }
        lock(&st.history).entry(key.clone()).or_default().record_scale(&spec, &st.tuning, current, decision.desired_replicas, now);
        let msg = format!("the HPA controller was able to update the target scale to {}", decision.desired_replicas);
        set_condition(&mut conditions, &recommend_condition("AbleToScale", true, "SucceededRescale", msg), now);
        info!(hpa = %key, target = %target_name, from = current, to = decision.desired_replicas, reason = %decision.reason, "rescaled");
        st.events.normal(hpa.object_ref(&()), "SuccessfulRescale", format!("New size: {}; reason: {}", decision.desired_replicas, decision.reason));
        status.last_scale_time = Some(Time(now));
    }
    status.conditions = Some(conditions);
    write_status(&st, &hpa, &key, old, status).await
}

/// The API's own message for an API error (`deployments.apps "web" not found`).
fn api_message(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(status) => status.message.clone(),
        other => other.to_string(),
    }
}

fn recommend_condition(type_: &'static str, status: bool, reason: &str, message: impl Into<String>) -> Condition {
    Condition { type_, status, reason: reason.into(), message: message.into() }
}

async fn write_status(st: &State, hpa: &HorizontalPodAutoscaler, key: &str, old: HorizontalPodAutoscalerStatus, new: HorizontalPodAutoscalerStatus) -> Result<(), HpaError> {
    if old == new {
        return Ok(());
    }
    let api: Api<HorizontalPodAutoscaler> = Api::namespaced(st.client.clone(), &hpa.namespace().unwrap_or_default());
    let patch = json!({"status": new});
    api.patch_status(&hpa.name_any(), &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(|source| HpaError::UpdateStatus { key: key.to_string(), source })?;
    Ok(())
}
