//! The HorizontalPodAutoscaler end to end: fake nodes push usage summaries to the
//! apiserver's metrics store (as the kubelet will), the `horizontalpodautoscaling`
//! controller reads them back through `metrics.k8s.io`, scales a Deployment up at 200%
//! cpu (within maxReplicas) and down at 20% once the (zero) stabilisation window allows;
//! the stock `kubectl get hpa` shows the targets and `kubectl top pods/nodes` the usage.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, PostParams};
use rkube_tests::cluster::{eventually, Cluster};
use rkube_tests::fakenode::{create_node, run_fake_kubelet, run_fake_scheduler, NodeShape};
use serde_json::json;
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(60);
const NS: &str = "default";
const NODES: [&str; 2] = ["node-a", "node-b"];

/// A cluster with fake nodes and every controller, the HPA syncing every second and
/// trusting cpu samples at once (no initialisation period).
async fn setup() -> anyhow::Result<Cluster> {
    let cluster = Cluster::start().await?;
    let nodes: Vec<String> = NODES.iter().map(|s| s.to_string()).collect();
    for n in &nodes {
        create_node(&cluster.client, n, &NodeShape::default()).await?;
    }
    run_fake_kubelet(cluster.client.clone(), nodes.clone(), cluster.shutdown.clone());
    run_fake_scheduler(cluster.client.clone(), nodes, cluster.shutdown.clone());
    let config = controller_manager::Config {
        kubeconfig: Some(cluster.kubeconfig.clone()),
        controllers: vec!["*".into()],
        leader_elect: false,
        cluster_cidr: Some("10.42.0.0/16".into()),
        hpa_sync_period: Duration::from_secs(1),
        hpa_tuning: controller_manager::controllers::hpa::recommend::Tuning { cpu_initialization_period: Duration::ZERO, ..Default::default() },
        ..Default::default()
    };
    let token = cluster.shutdown.child_token();
    tokio::spawn(async move {
        if let Err(e) = controller_manager::run(config, token).await {
            eprintln!("controller-manager stopped: {e:#}");
        }
    });
    Ok(cluster)
}

/// Pushes each fake node's summary every 200 ms, as a kubelet would: every running pod
/// of the node uses `cpu_milli` (shared, so the test can change the load) and 10Mi.
fn run_usage_reporter(client: kube::Client, cpu_milli: Arc<AtomicU64>, shutdown: CancellationToken) {
    tokio::spawn(async move {
        let pods: Api<Pod> = Api::all(client.clone());
        loop {
            let list = pods.list(&ListParams::default()).await.map(|l| l.items).unwrap_or_default();
            let milli = cpu_milli.load(Ordering::Relaxed);
            let now = k8s_openapi::jiff::Timestamp::now().to_string();
            for node in NODES {
                let on_node: Vec<&Pod> = list
                    .iter()
                    .filter(|p| p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(node))
                    .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
                    .collect();
                let pod_stats: Vec<serde_json::Value> = on_node
                    .iter()
                    .map(|p| json!({
                        "podRef": {"name": p.metadata.name, "namespace": p.metadata.namespace, "uid": p.metadata.uid},
                        "containers": [{"name": "c", "cpu": {"time": now, "usageNanoCores": milli * 1_000_000}, "memory": {"time": now, "workingSetBytes": 10 * 1024 * 1024}}],
                    }))
                    .collect();
                let n = on_node.len() as u64;
                let summary = json!({
                    "node": {"nodeName": node, "cpu": {"time": now, "usageNanoCores": (100 + milli * n) * 1_000_000}, "memory": {"time": now, "workingSetBytes": (512 + 10 * n) * 1024 * 1024}},
                    "pods": pod_stats,
                    "window": "1s",
                });
                let body = serde_json::to_vec(&summary).unwrap_or_default();
                if let Ok(req) = http::Request::put(format!("/rkube/v1/nodes/{node}/stats/summary")).header("content-type", "application/json").body(body) {
                    if let Err(e) = client.request_text(req).await {
                        eprintln!("pushing the summary of {node} failed: {e}");
                    }
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
        }
    });
}

async fn kubectl(cluster: &Cluster, args: &[&str]) -> anyhow::Result<String> {
    let kubeconfig = cluster.kubeconfig.clone();
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let out = std::process::Command::new("kubectl").args(&args).env("KUBECONFIG", &kubeconfig).output().context("running kubectl")?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        anyhow::ensure!(out.status.success(), "kubectl {args:?} failed: {stdout}{}", String::from_utf8_lossy(&out.stderr));
        Ok(stdout)
    })
    .await?
}

fn replicas(d: &Deployment) -> i32 {
    d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1)
}

fn condition(hpa: &HorizontalPodAutoscaler, type_: &str) -> Option<(String, String)> {
    let c = hpa.status.as_ref()?.conditions.as_ref()?.iter().find(|c| c.type_ == type_)?;
    Some((c.status.clone(), c.reason.clone().unwrap_or_default()))
}

#[tokio::test]
async fn hpa_scales_a_deployment_on_cpu_and_kubectl_shows_it() -> anyhow::Result<()> {
    let cluster = setup().await?;
    let client = &cluster.client;
    let load = Arc::new(AtomicU64::new(200));
    run_usage_reporter(client.clone(), load.clone(), cluster.shutdown.clone());

    let deployments: Api<Deployment> = Api::namespaced(client.clone(), NS);
    deployments.create(&PostParams::default(), &serde_json::from_value(deployment("web", 2))?).await?;

    // 200m used of 100m requested: 200% against a 50% target.
    let hpas: Api<HorizontalPodAutoscaler> = Api::namespaced(client.clone(), NS);
    let hpa = json!({
        "apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": "web"},
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"},
            "minReplicas": 2, "maxReplicas": 5,
            "metrics": [{"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 50}}}],
            "behavior": {"scaleDown": {"stabilizationWindowSeconds": 0}},
        },
    });
    hpas.create(&PostParams::default(), &serde_json::from_value(hpa)?).await?;

    // Up to maxReplicas and no further.
    eventually(WAIT, "the HPA to scale web to 5", || async {
        let d = deployments.get("web").await?;
        anyhow::ensure!(replicas(&d) <= 5, "scaled beyond maxReplicas: {}", replicas(&d));
        let h = hpas.get("web").await?;
        let s = h.status.clone().unwrap_or_default();
        Ok((replicas(&d) == 5 && s.desired_replicas == 5 && s.current_replicas == Some(5)).then_some(()))
    })
    .await?;
    let h = hpas.get("web").await?;
    assert_eq!(condition(&h, "AbleToScale").map(|c| c.0), Some("True".into()));
    assert_eq!(condition(&h, "ScalingActive"), Some(("True".into(), "ValidMetricFound".into())));
    assert_eq!(condition(&h, "ScalingLimited"), Some(("True".into(), "TooManyReplicas".into())));
    assert!(h.status.as_ref().and_then(|s| s.last_scale_time.as_ref()).is_some());

    let got = eventually(WAIT, "kubectl get hpa to show cpu: 200%/50%", || async {
        let out = kubectl(&cluster, &["get", "hpa", "web"]).await?;
        Ok(out.contains("cpu: 200%/50%").then_some(out))
    })
    .await?;
    assert!(got.contains("REFERENCE") && got.contains("Deployment/web"), "{got}");

    let top = eventually(WAIT, "kubectl top pods to show 5 pods at 200m", || async {
        let out = kubectl(&cluster, &["top", "pods", "-l", "app=web"]).await?;
        Ok((out.lines().filter(|l| l.starts_with("web-") && l.contains("200m") && l.contains("10Mi")).count() == 5).then_some(out))
    })
    .await?;
    assert!(top.contains("CPU(cores)"), "{top}");
    let nodes = kubectl(&cluster, &["top", "nodes"]).await?;
    assert!(NODES.iter().all(|n| nodes.contains(n)) && nodes.contains("CPU(cores)"), "{nodes}");
    let raw = kubectl(&cluster, &["get", "--raw", "/apis/metrics.k8s.io/v1beta1/namespaces/default/pods"]).await?;
    let list: serde_json::Value = serde_json::from_str(&raw)?;
    assert_eq!(list["kind"], "PodMetricsList");

    // 20m of 100m: 20% → ceil(0.4 × 5) = 2, at once with a zero window; then minReplicas
    // holds it at 2.
    load.store(20, Ordering::Relaxed);
    eventually(WAIT, "the HPA to scale web down to 2", || async {
        let d = deployments.get("web").await?;
        let h = hpas.get("web").await?;
        let at_min = condition(&h, "ScalingLimited").is_some_and(|c| c.1 == "TooFewReplicas");
        Ok((replicas(&d) == 2 && at_min).then_some(()))
    })
    .await?;
    let out = kubectl(&cluster, &["get", "hpa", "web"]).await?;
    assert!(out.contains("cpu: 20%/50%"), "{out}");
    let described = kubectl(&cluster, &["describe", "hpa", "web"]).await?;
    for want in ["resource cpu on pods  (as a percentage of request):  20% (20m) / 50%", "ScalingLimited", "TooFewReplicas", "SuccessfulRescale", "Stabilization Window: 0 seconds"] {
        assert!(described.contains(want), "no {want:?} in {described}");
    }
    let events = kubectl(&cluster, &["get", "events", "--field-selector", "reason=SuccessfulRescale"]).await?;
    assert!(events.contains("New size: 5") && events.contains("New size: 2"), "{events}");
    let pods = Api::<Pod>::namespaced(client.clone(), NS).list(&ListParams::default().labels("app=web")).await?;
    let live: BTreeMap<String, bool> = pods.items.iter().map(|p| (p.metadata.name.clone().unwrap_or_default(), p.metadata.deletion_timestamp.is_none())).collect();
    assert!(live.values().filter(|l| **l).count() <= 5);

    // An autoscaling/v1 HPA, as older tutorials write it, is the same object to the
    // controller: 20% of requests used against a 10% target scales `legacy` to its max.
    deployments.create(&PostParams::default(), &serde_json::from_value(deployment("legacy", 1))?).await?;
    let v1 = "apiVersion: autoscaling/v1\nkind: HorizontalPodAutoscaler\nmetadata: {name: legacy}\nspec:\n  scaleTargetRef: {apiVersion: apps/v1, kind: Deployment, name: legacy}\n  maxReplicas: 3\n  targetCPUUtilizationPercentage: 10\n";
    let file = tempfile::NamedTempFile::new()?;
    std::fs::write(file.path(), v1)?;
    kubectl(&cluster, &["apply", "-f", &file.path().to_string_lossy()]).await?;
    eventually(WAIT, "the v1 HPA to scale legacy to 3", || async {
        let d = deployments.get("legacy").await?;
        Ok((replicas(&d) == 3).then_some(()))
    })
    .await?;
    let got = eventually(WAIT, "autoscaling/v1 to show the current utilization", || async {
        let out = kubectl(&cluster, &["get", "horizontalpodautoscalers.v1.autoscaling", "legacy", "-o", "jsonpath={.status.currentCPUUtilizationPercentage} {.status.desiredReplicas}"]).await?;
        Ok((out == "20 3").then_some(out))
    })
    .await?;
    assert_eq!(got, "20 3");
    let v1: serde_json::Value = serde_json::from_str(&kubectl(&cluster, &["get", "horizontalpodautoscalers.v1.autoscaling", "legacy", "-o", "json"]).await?)?;
    let conditions = v1["metadata"]["annotations"]["autoscaling.alpha.kubernetes.io/conditions"].as_str().unwrap_or_default();
    assert!(conditions.contains("TooManyReplicas"), "v1 carries the conditions in Kubernetes' annotation: {v1}");
    Ok(())
}

/// A Deployment of `replicas` pods requesting 100m cpu each.
fn deployment(name: &str, replicas: i32) -> serde_json::Value {
    json!({
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}}, "spec": {"containers": [{
                "name": "c", "image": "busybox:1",
                "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}},
            }]}},
        },
    })
}

#[tokio::test]
async fn metrics_api_is_discoverable_and_validates_pushes() -> anyhow::Result<()> {
    let cluster = Cluster::start().await?;
    let out = kubectl(&cluster, &["api-resources", "--api-group", "metrics.k8s.io"]).await?;
    assert!(out.contains("PodMetrics") && out.contains("NodeMetrics"), "{out}");
    // No reports yet: empty lists, 404 for one object.
    let raw = kubectl(&cluster, &["get", "--raw", "/apis/metrics.k8s.io/v1beta1/nodes"]).await?;
    assert!(raw.contains("NodeMetricsList"), "{raw}");
    let missing = kubectl(&cluster, &["get", "--raw", "/apis/metrics.k8s.io/v1beta1/namespaces/default/pods/nope"]).await;
    assert!(missing.is_err_and(|e| e.to_string().contains("NotFound") || e.to_string().contains("not found")));
    // A summary for another node is refused.
    let body = serde_json::to_vec(&json!({"node": {"nodeName": "other"}}))?;
    let req = http::Request::put("/rkube/v1/nodes/node-a/stats/summary").header("content-type", "application/json").body(body)?;
    let err = cluster.client.request_text(req).await;
    assert!(err.is_err(), "{err:?}");
    Ok(())
}
