//! Fake nodes: Node objects with capacity and a Ready condition, kept alive by renewing
//! their Lease, and a fake kubelet that "runs" pods bound to them by writing a Running,
//! Ready status with a pod IP (and deletes pods marked for deletion), so controllers and
//! the scheduler can be tested without containers.

use std::collections::BTreeMap;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, NodeCondition, NodeSpec, NodeStatus, Pod, PodCondition, PodStatus, ContainerStatus, ContainerState, ContainerStateRunning};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use tokio_util::sync::CancellationToken;

/// The annotation that makes a pod finish on the fake kubelet with this exit code.
pub const EXIT_CODE_ANNOTATION: &str = "rkube.test/exit-code";
/// How long (milliseconds) a pod with [`EXIT_CODE_ANNOTATION`] runs before it finishes.
pub const RUN_MILLIS_ANNOTATION: &str = "rkube.test/run-ms";

/// What a fake node offers.
#[derive(Debug, Clone)]
pub struct NodeShape {
    pub cpu: String,
    pub memory: String,
    pub pods: String,
    pub labels: BTreeMap<String, String>,
}

impl Default for NodeShape {
    fn default() -> NodeShape {
        NodeShape { cpu: "4".into(), memory: "8Gi".into(), pods: "110".into(), labels: BTreeMap::new() }
    }
}

/// Creates a Ready node named `name`.
pub async fn create_node(client: &kube::Client, name: &str, shape: &NodeShape) -> anyhow::Result<Node> {
    let mut labels = shape.labels.clone();
    labels.insert("kubernetes.io/hostname".into(), name.into());
    labels.insert("kubernetes.io/os".into(), "linux".into());
    let capacity: BTreeMap<String, Quantity> = [("cpu", &shape.cpu), ("memory", &shape.memory), ("pods", &shape.pods)]
        .into_iter()
        .map(|(k, v)| (k.to_string(), Quantity(v.clone())))
        .collect();
    let now = Time(Timestamp::now());
    let node = Node {
        metadata: ObjectMeta { name: Some(name.into()), labels: Some(labels), ..Default::default() },
        spec: Some(NodeSpec::default()),
        status: Some(NodeStatus {
            capacity: Some(capacity.clone()),
            allocatable: Some(capacity),
            conditions: Some(vec![NodeCondition {
                type_: "Ready".into(),
                status: "True".into(),
                reason: Some("KubeletReady".into()),
                message: Some("fake kubelet is posting ready status".into()),
                last_heartbeat_time: Some(now.clone()),
                last_transition_time: Some(now),
            }]),
            ..Default::default()
        }),
    };
    let api: Api<Node> = Api::all(client.clone());
    let created = api.create(&PostParams::default(), &node).await?;
    // Status is a subresource: write it separately, as a kubelet does.
    let status = serde_json::json!({"status": node.status});
    Ok(api.patch_status(name, &PatchParams::default(), &Patch::Merge(&status)).await.unwrap_or(created))
}

/// Runs bound pods on `nodes` until `shutdown`: each pod bound to one of them goes
/// Running and Ready with an IP; a pod marked for deletion is deleted at once.
pub fn run_fake_kubelet(client: kube::Client, nodes: Vec<String>, shutdown: CancellationToken) {
    tokio::spawn(async move {
        let pods: Api<Pod> = Api::all(client.clone());
        let mut stream = watcher(pods.clone(), watcher::Config::default()).boxed();
        let mut next_ip: u32 = 2;
        loop {
            let ev = tokio::select! {
                _ = shutdown.cancelled() => return,
                ev = stream.next() => ev,
            };
            let pod = match ev {
                Some(Ok(watcher::Event::Apply(p) | watcher::Event::InitApply(p))) => p,
                Some(_) => continue,
                None => return,
            };
            let Some(node) = pod.spec.as_ref().and_then(|s| s.node_name.clone()) else { continue };
            if !nodes.contains(&node) {
                continue;
            }
            let name = pod.metadata.name.clone().unwrap_or_default();
            let ns = pod.metadata.namespace.clone().unwrap_or_default();
            let api: Api<Pod> = Api::namespaced(client.clone(), &ns);
            if pod.metadata.deletion_timestamp.is_some() {
                let _ = api.delete(&name, &DeleteParams { grace_period_seconds: Some(0), ..Default::default() }).await;
                continue;
            }
            let phase = pod.status.as_ref().and_then(|s| s.phase.clone());
            if matches!(phase.as_deref(), Some("Running" | "Succeeded" | "Failed")) {
                continue;
            }
            let now = Time(Timestamp::now());
            let ip = format!("10.42.{}.{}", next_ip / 250, next_ip % 250 + 1);
            next_ip += 1;
            let containers = pod.spec.as_ref().map(|s| s.containers.clone()).unwrap_or_default();
            let status = PodStatus {
                phase: Some("Running".into()),
                pod_ip: Some(ip.clone()),
                host_ip: Some("127.0.0.1".into()),
                start_time: Some(now.clone()),
                conditions: Some(["PodScheduled", "Initialized", "ContainersReady", "Ready"].iter().map(|t| PodCondition {
                    type_: t.to_string(),
                    status: "True".into(),
                    last_transition_time: Some(now.clone()),
                    ..Default::default()
                }).collect()),
                container_statuses: Some(containers.iter().map(|c| ContainerStatus {
                    name: c.name.clone(),
                    image: c.image.clone().unwrap_or_default(),
                    image_id: String::new(),
                    ready: true,
                    started: Some(true),
                    restart_count: 0,
                    state: Some(ContainerState { running: Some(ContainerStateRunning { started_at: Some(now.clone()) }), ..Default::default() }),
                    ..Default::default()
                }).collect()),
                ..Default::default()
            };
            let patch = serde_json::json!({"status": status});
            let _ = api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch)).await;
            let annotations = pod.metadata.annotations.clone().unwrap_or_default();
            if let Some(code) = annotations.get(EXIT_CODE_ANNOTATION).and_then(|c| c.parse::<i32>().ok()) {
                let millis = annotations.get(RUN_MILLIS_ANNOTATION).and_then(|m| m.parse::<u64>().ok()).unwrap_or(200);
                tokio::spawn(finish_pod(api, name, containers, code, std::time::Duration::from_millis(millis), shutdown.clone()));
            }
        }
    });
}

/// Ends a "running" pod after `after`: every container terminated with `code`, the pod
/// Succeeded (code 0) or Failed, and no longer Ready.
async fn finish_pod(api: Api<Pod>, name: String, containers: Vec<k8s_openapi::api::core::v1::Container>, code: i32, after: std::time::Duration, shutdown: CancellationToken) {
    tokio::select! {
        _ = shutdown.cancelled() => return,
        _ = tokio::time::sleep(after) => {}
    }
    let now = Time(Timestamp::now());
    let reason = if code == 0 { "Completed" } else { "Error" };
    let conditions: Vec<serde_json::Value> = ["PodScheduled", "Initialized", "ContainersReady", "Ready"]
        .iter()
        .map(|t| {
            let ok = *t == "PodScheduled" || *t == "Initialized";
            let reason = if ok { serde_json::Value::Null } else { serde_json::json!("PodCompleted") };
            serde_json::json!({"type": t, "status": if ok { "True" } else { "False" }, "lastTransitionTime": now, "reason": reason})
        })
        .collect();
    let container_statuses: Vec<serde_json::Value> = containers
        .iter()
        .map(|c| {
            serde_json::json!({
                "name": c.name, "image": c.image, "imageID": "", "ready": false, "started": false, "restartCount": 0,
                "state": {"terminated": {"exitCode": code, "reason": reason, "startedAt": now, "finishedAt": now}},
            })
        })
        .collect();
    let phase = if code == 0 { "Succeeded" } else { "Failed" };
    let status = serde_json::json!({"phase": phase, "conditions": conditions, "containerStatuses": container_statuses});
    let _ = api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&serde_json::json!({"status": status}))).await;
}

/// Binds pods that have no node to `nodes`, round-robin, until `shutdown`: a stand-in for
/// kube-scheduler in tests of controllers. It POSTs a Binding to `pods/{name}/binding`
/// as the scheduler does.
pub fn run_fake_scheduler(client: kube::Client, nodes: Vec<String>, shutdown: CancellationToken) {
    tokio::spawn(async move {
        if nodes.is_empty() {
            return;
        }
        let pods: Api<Pod> = Api::all(client.clone());
        let mut stream = watcher(pods, watcher::Config::default()).boxed();
        let mut next = 0usize;
        loop {
            let ev = tokio::select! {
                _ = shutdown.cancelled() => return,
                ev = stream.next() => ev,
            };
            let pod = match ev {
                Some(Ok(watcher::Event::Apply(p) | watcher::Event::InitApply(p))) => p,
                Some(_) => continue,
                None => return,
            };
            let unbound = pod.spec.as_ref().is_none_or(|s| s.node_name.as_deref().unwrap_or_default().is_empty());
            if !unbound || pod.metadata.deletion_timestamp.is_some() {
                continue;
            }
            let name = pod.metadata.name.clone().unwrap_or_default();
            let ns = pod.metadata.namespace.clone().unwrap_or_default();
            let node = &nodes[next % nodes.len()];
            next += 1;
            let binding = serde_json::json!({
                "apiVersion": "v1",
                "kind": "Binding",
                "metadata": {"name": name, "namespace": ns},
                "target": {"apiVersion": "v1", "kind": "Node", "name": node},
            });
            let api: Api<Pod> = Api::namespaced(client.clone(), &ns);
            let _ = api.create_subresource::<_, serde_json::Value>("binding", &name, &PostParams::default(), &binding).await;
        }
    });
}
