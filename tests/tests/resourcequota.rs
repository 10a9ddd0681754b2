//! The resource quota controller against an in-process cluster: it counts what was in a
//! namespace before its quota existed (pods, ConfigMaps, other kinds by `count/…`),
//! gives room back when objects are deleted or pods finish, follows `spec.hard`, and
//! agrees with the charges quota admission makes meanwhile; a controller refused by a
//! quota says so in its events.

use std::time::Duration;

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, ResourceQuota};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use rkube_tests::cluster::{eventually, Cluster};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(30);

fn from_json<T: k8s_openapi::serde::de::DeserializeOwned>(v: Value) -> anyhow::Result<T> {
    Ok(serde_json::from_value(v)?)
}

/// The quota's `status`, as JSON.
async fn status_of(quotas: &Api<ResourceQuota>) -> anyhow::Result<Value> {
    let rq = quotas.get("compute").await?;
    Ok(serde_json::to_value(rq.status)?)
}

/// Waits until the quota's `status.used` is `want`.
async fn used_becomes(quotas: &Api<ResourceQuota>, want: Value, what: &str) -> anyhow::Result<()> {
    let waited = eventually(WAIT, what, || {
        let quotas = quotas.clone();
        let want = want.clone();
        async move { Ok((status_of(&quotas).await?["used"] == want).then_some(())) }
    })
    .await;
    if let Err(e) = waited {
        let last = status_of(quotas).await.unwrap_or_default();
        return Err(e.context(format!("last status: {last}")));
    }
    Ok(())
}

#[tokio::test]
async fn quota_controller_counts_and_replenishes() -> anyhow::Result<()> {
    let cluster = Cluster::start().await?;
    let c = &cluster.client;
    Api::<Namespace>::all(c.clone()).create(&PostParams::default(), &from_json(json!({"metadata": {"name": "q"}}))?).await?;
    let pp = PostParams::default();
    let configmaps: Api<ConfigMap> = Api::namespaced(c.clone(), "q");
    for name in ["a", "b"] {
        configmaps.create(&pp, &from_json(json!({"metadata": {"name": name}}))?).await?;
    }
    let pods: Api<Pod> = Api::namespaced(c.clone(), "q");
    let pod = json!({"metadata": {"name": "web"}, "spec": {"containers": [{"name": "c", "image": "nginx:1.27", "resources": {"requests": {"cpu": "100m"}}}]}});
    pods.create(&pp, &from_json(pod)?).await?;
    let deploy = json!({
        "metadata": {"name": "d"},
        "spec": {"selector": {"matchLabels": {"app": "d"}}, "template": {"metadata": {"labels": {"app": "d"}}, "spec": {"containers": [{"name": "c", "image": "nginx:1.27"}]}}},
    });
    Api::<Deployment>::namespaced(c.clone(), "q").create(&pp, &from_json(deploy)?).await?;

    // The quota comes after its namespace's objects: only the controller can count them.
    let quotas: Api<ResourceQuota> = Api::namespaced(c.clone(), "q");
    let quota =
        json!({"metadata": {"name": "compute"}, "spec": {"hard": {"pods": "5", "requests.cpu": "1", "configmaps": "5", "count/deployments.apps": "2"}}});
    quotas.create(&pp, &from_json(quota)?).await?;
    let _cm = cluster.start_controller_manager(&["resourcequota"], false);
    used_becomes(&quotas, json!({"configmaps": "2", "count/deployments.apps": "1", "pods": "1", "requests.cpu": "100m"}), "the first count").await?;
    let status = status_of(&quotas).await?;
    anyhow::ensure!(status["hard"] == json!({"configmaps": "5", "count/deployments.apps": "2", "pods": "5", "requests.cpu": "1"}), "hard: {status}");

    // Admission charges a create; the controller agrees.
    configmaps.create(&pp, &from_json(json!({"metadata": {"name": "c"}}))?).await?;
    let used = status_of(&quotas).await?["used"]["configmaps"].clone();
    anyhow::ensure!(used == "3", "admission charged the create: {used}");

    // A delete gives room back.
    configmaps.delete("a", &DeleteParams::default()).await?;
    used_becomes(&quotas, json!({"configmaps": "2", "count/deployments.apps": "1", "pods": "1", "requests.cpu": "100m"}), "the delete given back").await?;

    // So does a pod that finished.
    pods.patch_status("web", &PatchParams::default(), &Patch::Merge(json!({"status": {"phase": "Succeeded"}}))).await?;
    used_becomes(&quotas, json!({"configmaps": "2", "count/deployments.apps": "1", "pods": "0", "requests.cpu": "0"}), "the finished pod given back").await?;

    // New limits are taken up in status (and a resource added to them is counted).
    quotas.patch("compute", &PatchParams::default(), &Patch::Merge(json!({"spec": {"hard": {"pods": "10", "count/configmaps": "9"}}}))).await?;
    used_becomes(
        &quotas,
        json!({"configmaps": "2", "count/configmaps": "2", "count/deployments.apps": "1", "pods": "0", "requests.cpu": "0"}),
        "the new limits",
    )
    .await?;
    let status = status_of(&quotas).await?;
    anyhow::ensure!(status["hard"]["pods"] == "10", "hard: {status}");
    Ok(())
}

/// A ReplicaSet over its namespace's pod quota gets the pods the quota allows, and
/// `kubectl describe rs` says why the rest are missing, as on Kubernetes.
#[tokio::test]
async fn a_replicaset_over_quota_says_why_in_its_events() -> anyhow::Result<()> {
    let cluster = Cluster::start().await?;
    let c = &cluster.client;
    let pp = PostParams::default();
    Api::<Namespace>::all(c.clone()).create(&pp, &from_json(json!({"metadata": {"name": "q"}}))?).await?;
    let quotas: Api<ResourceQuota> = Api::namespaced(c.clone(), "q");
    quotas.create(&pp, &from_json(json!({"metadata": {"name": "compute"}, "spec": {"hard": {"pods": "2"}}}))?).await?;
    let _cm = cluster.start_controller_manager(&["resourcequota", "replicaset"], false);
    used_becomes(&quotas, json!({"pods": "0"}), "the quota counted").await?;
    let rs = json!({
        "metadata": {"name": "r"},
        "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "r"}}, "template": {"metadata": {"labels": {"app": "r"}}, "spec": {"containers": [{"name": "c", "image": "busybox"}]}}},
    });
    Api::<ReplicaSet>::namespaced(c.clone(), "q").create(&pp, &from_json(rs)?).await?;
    cluster
        .describe_shows(
            &["rs", "r", "-n", "q"],
            &[
                ("SuccessfulCreate", "replicaset-controller", "Created pod: r-"),
                ("FailedCreate", "replicaset-controller", "is forbidden: exceeded quota: compute, requested: pods=1, used: pods=2, limited: pods=2"),
            ],
        )
        .await?;
    let pods = Api::<Pod>::namespaced(c.clone(), "q").list(&Default::default()).await?;
    anyhow::ensure!(pods.items.len() == 2, "the quota's two pods: {}", pods.items.len());
    Ok(())
}
