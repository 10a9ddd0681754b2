//! The disruption controller against an in-process cluster: PodDisruptionBudgets get
//! their status — healthy, desired, expected pods and the disruptions allowed — from the
//! pods they select (marked Ready here through `pods/status`, as no kubelet runs), by
//! pod count for an integer `minAvailable` and by the controllers' scale otherwise; a
//! budget that cannot be counted says why in its events and allows nothing; disruptions
//! recorded by evictions hold a pod until it goes; the stock `kubectl get pdb` shows the
//! result.

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Api, EvictParams, ListParams, Patch, PatchParams, PostParams};
use kube::ResourceExt;
use rkube_tests::cluster::{eventually, Cluster};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(30);

fn from_json<T: k8s_openapi::serde::de::DeserializeOwned>(v: Value) -> anyhow::Result<T> {
    Ok(serde_json::from_value(v)?)
}

async fn create_namespace(c: &kube::Client, name: &str) -> anyhow::Result<()> {
    Api::<Namespace>::all(c.clone()).create(&PostParams::default(), &from_json(json!({"metadata": {"name": name}}))?).await?;
    Ok(())
}

/// A pod with `labels` and the controller `owner` if any (nothing schedules or runs it).
async fn create_pod(pods: &Api<Pod>, name: &str, labels: Value, owner: Option<Value>) -> anyhow::Result<()> {
    let mut pod = json!({"metadata": {"name": name, "labels": labels}, "spec": {"containers": [{"name": "c", "image": "busybox:1"}]}});
    if let Some(owner) = owner {
        pod["metadata"]["ownerReferences"] = json!([owner]);
    }
    pods.create(&PostParams::default(), &from_json(pod)?).await?;
    Ok(())
}

/// Reports the pod Running and Ready (or not), as its kubelet would.
async fn set_ready(pods: &Api<Pod>, name: &str, ready: bool) -> anyhow::Result<()> {
    let status = if ready { "True" } else { "False" };
    let patch = json!({"status": {"phase": "Running", "conditions": [{"type": "Ready", "status": status}, {"type": "ContainersReady", "status": status}]}});
    pods.patch_status(name, &PatchParams::default(), &Patch::Merge(patch)).await?;
    Ok(())
}

async fn create_budget(budgets: &Api<PodDisruptionBudget>, name: &str, spec: Value) -> anyhow::Result<()> {
    budgets.create(&PostParams::default(), &from_json(json!({"metadata": {"name": name}, "spec": spec}))?).await?;
    Ok(())
}

async fn status_of(budgets: &Api<PodDisruptionBudget>, name: &str) -> anyhow::Result<Value> {
    let pdb = budgets.get(name).await?;
    Ok(serde_json::to_value(pdb.status)?)
}

/// Waits until every field of `want` is in the budget's status with that value; returns
/// the status.
async fn status_becomes(budgets: &Api<PodDisruptionBudget>, name: &str, want: Value, what: &str) -> anyhow::Result<Value> {
    let fields = want.as_object().cloned().unwrap_or_default();
    let waited = eventually(WAIT, what, || {
        let fields = fields.clone();
        async move {
            let status = status_of(budgets, name).await?;
            Ok(fields.iter().all(|(k, v)| status.get(k) == Some(v)).then_some(status))
        }
    })
    .await;
    match waited {
        Ok(status) => Ok(status),
        Err(e) => {
            let last = status_of(budgets, name).await.unwrap_or_default();
            Err(e.context(format!("wanted {want}; last status of {name}: {last}")))
        }
    }
}

fn rfc3339(t: k8s_openapi::jiff::Timestamp) -> String {
    t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// The budget's `DisruptionAllowed` condition.
fn allowed_condition(status: &Value) -> Value {
    status["conditions"].as_array().and_then(|cs| cs.iter().find(|c| c["type"] == "DisruptionAllowed")).cloned().unwrap_or_default()
}

async fn kubectl(cluster: &Cluster, args: &[&str]) -> anyhow::Result<String> {
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new("kubectl").args(args).env("KUBECONFIG", &cluster.kubeconfig).output(),
    )
    .await??;
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    anyhow::ensure!(out.status.success(), "kubectl {args:?} failed: {stdout} {}", String::from_utf8_lossy(&out.stderr));
    Ok(stdout)
}

#[tokio::test]
async fn min_available_counts_ready_pods() -> anyhow::Result<()> {
    let cluster = Cluster::start().await?;
    let c = &cluster.client;
    create_namespace(c, "pdb").await?;
    let pods: Api<Pod> = Api::namespaced(c.clone(), "pdb");
    for name in ["web-a", "web-b", "web-c"] {
        create_pod(&pods, name, json!({"app": "web"}), None).await?;
        set_ready(&pods, name, true).await?;
    }
    create_pod(&pods, "other", json!({"app": "other"}), None).await?;
    set_ready(&pods, "other", true).await?;
    let budgets: Api<PodDisruptionBudget> = Api::namespaced(c.clone(), "pdb");
    create_budget(&budgets, "web", json!({"minAvailable": 2, "selector": {"matchLabels": {"app": "web"}}})).await?;
    let generation = budgets.get("web").await?.metadata.generation;
    let _cm = cluster.start_controller_manager(&["disruption"], false);

    let status = status_becomes(
        &budgets,
        "web",
        json!({"disruptionsAllowed": 1, "currentHealthy": 3, "desiredHealthy": 2, "expectedPods": 3}),
        "one disruption allowed",
    )
    .await?;
    anyhow::ensure!(status["observedGeneration"] == json!(generation), "observedGeneration {} for generation {generation:?}", status["observedGeneration"]);
    anyhow::ensure!(status.get("disruptedPods").is_none(), "no disrupted pods: {status}");
    let cond = allowed_condition(&status);
    anyhow::ensure!(cond["status"] == "True" && cond["reason"] == "SufficientPods", "condition: {cond}");
    let allowed_since = cond["lastTransitionTime"].clone();
    anyhow::ensure!(allowed_since.is_string(), "condition has a transition time: {cond}");

    // One pod stops being Ready: the budget is at its minimum.
    set_ready(&pods, "web-b", false).await?;
    let status = status_becomes(&budgets, "web", json!({"disruptionsAllowed": 0, "currentHealthy": 2, "desiredHealthy": 2, "expectedPods": 3}), "none allowed").await?;
    let cond = allowed_condition(&status);
    anyhow::ensure!(cond["status"] == "False" && cond["reason"] == "InsufficientPods" && cond["message"] == "", "condition: {cond}");

    // A pod leaving the selector is noticed as well.
    set_ready(&pods, "web-b", true).await?;
    status_becomes(&budgets, "web", json!({"disruptionsAllowed": 1, "currentHealthy": 3}), "allowed again").await?;
    pods.patch("web-c", &PatchParams::default(), &Patch::Merge(json!({"metadata": {"labels": {"app": "gone"}}}))).await?;
    status_becomes(&budgets, "web", json!({"disruptionsAllowed": 0, "currentHealthy": 2, "expectedPods": 2}), "web-c no longer selected").await?;

    // An empty selector selects every pod of the namespace.
    create_budget(&budgets, "all", json!({"minAvailable": 1, "selector": {}})).await?;
    status_becomes(&budgets, "all", json!({"expectedPods": 4, "currentHealthy": 4, "disruptionsAllowed": 3}), "every pod selected").await?;
    Ok(())
}

#[tokio::test]
async fn max_unavailable_counts_the_deployments_replicas() -> anyhow::Result<()> {
    let cluster = Cluster::start().await?;
    let c = &cluster.client;
    create_namespace(c, "pdb").await?;
    let _cm = cluster.start_controller_manager(&["disruption", "deployment", "replicaset"], false);
    let deployments: Api<Deployment> = Api::namespaced(c.clone(), "pdb");
    let d = json!({
        "metadata": {"name": "web"},
        "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "web"}}, "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "c", "image": "busybox:1"}]}}},
    });
    deployments.create(&PostParams::default(), &from_json(d)?).await?;
    let pods: Api<Pod> = Api::namespaced(c.clone(), "pdb");
    let names = eventually(WAIT, "the deployment's three pods", || async {
        let list = pods.list(&ListParams::default().labels("app=web")).await?;
        Ok((list.items.len() == 3).then(|| list.items.iter().map(|p| p.name_any()).collect::<Vec<_>>()))
    })
    .await?;
    for name in &names {
        set_ready(&pods, name, true).await?;
    }
    let budgets: Api<PodDisruptionBudget> = Api::namespaced(c.clone(), "pdb");
    create_budget(&budgets, "web", json!({"maxUnavailable": 1, "selector": {"matchLabels": {"app": "web"}}})).await?;
    // Half of three is two unavailable, rounded up.
    create_budget(&budgets, "half", json!({"maxUnavailable": "50%", "selector": {"matchLabels": {"app": "web"}}})).await?;
    create_budget(&budgets, "most", json!({"minAvailable": "50%", "selector": {"matchLabels": {"app": "web"}}})).await?;
    let status = status_becomes(
        &budgets,
        "web",
        json!({"expectedPods": 3, "desiredHealthy": 2, "currentHealthy": 3, "disruptionsAllowed": 1}),
        "maxUnavailable 1 of 3",
    )
    .await?;
    let cond = allowed_condition(&status);
    anyhow::ensure!(cond["status"] == "True" && cond["reason"] == "SufficientPods", "condition: {cond}");
    status_becomes(&budgets, "half", json!({"expectedPods": 3, "desiredHealthy": 1, "disruptionsAllowed": 2}), "maxUnavailable 50% of 3").await?;
    status_becomes(&budgets, "most", json!({"expectedPods": 3, "desiredHealthy": 2, "disruptionsAllowed": 1}), "minAvailable 50% of 3").await?;

    // Scaled up, the new pod not Ready yet: four expected, three needed, none to spare.
    deployments.patch("web", &PatchParams::default(), &Patch::Merge(json!({"spec": {"replicas": 4}}))).await?;
    status_becomes(&budgets, "web", json!({"expectedPods": 4, "desiredHealthy": 3, "currentHealthy": 3, "disruptionsAllowed": 0}), "the scale followed").await?;
    Ok(())
}

#[tokio::test]
async fn budgets_that_cannot_be_counted_allow_nothing_and_say_why() -> anyhow::Result<()> {
    let cluster = Cluster::start().await?;
    let c = &cluster.client;
    create_namespace(c, "pdb").await?;
    let pods: Api<Pod> = Api::namespaced(c.clone(), "pdb");
    for name in ["bare-a", "bare-b", "bare-c"] {
        create_pod(&pods, name, json!({"app": "bare"}), None).await?;
        set_ready(&pods, name, true).await?;
    }
    // A Job has no scale: pods it controls cannot be counted against a percentage.
    let jobs: Api<Job> = Api::namespaced(c.clone(), "pdb");
    let job = json!({"metadata": {"name": "batch"}, "spec": {"template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "busybox:1"}]}}}});
    let job = jobs.create(&PostParams::default(), &from_json(job)?).await?;
    let owner = json!({"apiVersion": "batch/v1", "kind": "Job", "name": "batch", "uid": job.uid().unwrap_or_default(), "controller": true});
    create_pod(&pods, "batch-a", json!({"app": "batch"}), Some(owner)).await?;
    set_ready(&pods, "batch-a", true).await?;

    let budgets: Api<PodDisruptionBudget> = Api::namespaced(c.clone(), "pdb");
    create_budget(&budgets, "bare", json!({"maxUnavailable": 1, "selector": {"matchLabels": {"app": "bare"}}})).await?;
    create_budget(&budgets, "batch", json!({"minAvailable": "50%", "selector": {"matchLabels": {"app": "batch"}}})).await?;
    let _cm = cluster.start_controller_manager(&["disruption"], false);

    // Pods without a controller count for nothing against maxUnavailable.
    let status = status_becomes(&budgets, "bare", json!({"expectedPods": 0, "currentHealthy": 3, "disruptionsAllowed": 0}), "no disruption for unmanaged pods").await?;
    let cond = allowed_condition(&status);
    anyhow::ensure!(cond["status"] == "False" && cond["reason"] == "InsufficientPods", "condition: {cond}");
    cluster
        .describe_shows(
            &["pdb", "bare", "-n", "pdb"],
            &[("UnmanagedPods", "controllermanager", "Pods selected by this PodDisruptionBudget (selector: app=bare) were found to be unmanaged")],
        )
        .await?;

    // A controller without scale fails the count: nothing allowed, and the reason shown.
    let status = eventually(WAIT, "a SyncFailed condition", || async {
        let s = status_of(&budgets, "batch").await?;
        Ok((allowed_condition(&s)["reason"] == "SyncFailed").then_some(s))
    })
    .await?;
    let cond = allowed_condition(&status);
    anyhow::ensure!(status["disruptionsAllowed"] == 0, "no disruption for the job's pods: {status}");
    anyhow::ensure!(cond["status"] == "False" && cond["message"] == "jobs.batch does not implement the scale subresource", "condition: {cond}");
    cluster
        .describe_shows(
            &["pdb", "batch", "-n", "pdb"],
            &[("CalculateExpectedPodCountFailed", "controllermanager", "Failed to calculate the number of expected pods: jobs.batch does not implement the scale subresource")],
        )
        .await?;
    Ok(())
}

/// The ALLOWED DISRUPTIONS column of `kubectl get pdb <name>`.
async fn kubectl_allowed(cluster: &Cluster, name: &str) -> anyhow::Result<String> {
    let out = kubectl(cluster, &["get", "pdb", name, "-n", "pdb"]).await?;
    let mut lines = out.lines();
    let header: Vec<&str> = lines.next().unwrap_or_default().split("  ").map(str::trim).filter(|s| !s.is_empty()).collect();
    anyhow::ensure!(header == ["NAME", "MIN AVAILABLE", "MAX UNAVAILABLE", "ALLOWED DISRUPTIONS", "AGE"], "header: {out}");
    let row: Vec<&str> = lines.next().unwrap_or_default().split_whitespace().collect();
    anyhow::ensure!(row.first() == Some(&name), "row: {out}");
    Ok(row.get(3).copied().unwrap_or_default().to_string())
}

#[tokio::test]
async fn kubectl_get_pdb_shows_allowed_disruptions() -> anyhow::Result<()> {
    let cluster = Cluster::start().await?;
    let c = &cluster.client;
    create_namespace(c, "pdb").await?;
    let pods: Api<Pod> = Api::namespaced(c.clone(), "pdb");
    for name in ["a", "b", "c", "d"] {
        create_pod(&pods, name, json!({"app": "web"}), None).await?;
        set_ready(&pods, name, true).await?;
    }
    kubectl(&cluster, &["create", "poddisruptionbudget", "web", "-n", "pdb", "--selector=app=web", "--min-available=2"]).await?;
    // Before any controller ran, nothing is allowed.
    anyhow::ensure!(kubectl_allowed(&cluster, "web").await? == "0");
    let _cm = cluster.start_controller_manager(&["*"], false);
    eventually(WAIT, "kubectl get pdb showing 2 allowed", || async { Ok((kubectl_allowed(&cluster, "web").await? == "2").then_some(())) }).await?;
    set_ready(&pods, "a", false).await?;
    eventually(WAIT, "kubectl get pdb showing 1 allowed", || async { Ok((kubectl_allowed(&cluster, "web").await? == "1").then_some(())) }).await?;
    let described = kubectl(&cluster, &["describe", "pdb", "web", "-n", "pdb"]).await?;
    let shown = described.lines().find_map(|l| l.trim().strip_prefix("Allowed disruptions:")).map(str::trim);
    anyhow::ensure!(shown == Some("1"), "kubectl describe pdb: {described}");
    Ok(())
}

#[tokio::test]
async fn evictions_hold_their_pod_until_it_goes() -> anyhow::Result<()> {
    let cluster = Cluster::start().await?;
    let c = &cluster.client;
    create_namespace(c, "pdb").await?;
    let pods: Api<Pod> = Api::namespaced(c.clone(), "pdb");
    for name in ["a", "b", "c"] {
        create_pod(&pods, name, json!({"app": "web"}), None).await?;
        set_ready(&pods, name, true).await?;
    }
    let budgets: Api<PodDisruptionBudget> = Api::namespaced(c.clone(), "pdb");
    create_budget(&budgets, "web", json!({"minAvailable": 2, "selector": {"matchLabels": {"app": "web"}}})).await?;
    let _cm = cluster.start_controller_manager(&["disruption"], false);
    status_becomes(&budgets, "web", json!({"disruptionsAllowed": 1, "currentHealthy": 3}), "one disruption allowed").await?;

    // A disruption recorded just now (as the eviction subresource records one) holds its
    // pod out of the healthy count while the pod is still there.
    let now = k8s_openapi::jiff::Timestamp::now();
    budgets.patch_status("web", &PatchParams::default(), &Patch::Merge(json!({"status": {"disruptedPods": {"a": rfc3339(now)}}}))).await?;
    let status = status_becomes(&budgets, "web", json!({"disruptionsAllowed": 0, "currentHealthy": 2}), "pod a held as disrupted").await?;
    anyhow::ensure!(status["disruptedPods"]["a"].is_string(), "the disruption is kept: {status}");

    // One recorded more than two minutes ago has expired: the pod counts again, and the
    // pod's events say it was expected to go.
    let old = now.checked_sub(k8s_openapi::jiff::SignedDuration::from_secs(180))?;
    budgets.patch_status("web", &PatchParams::default(), &Patch::Merge(json!({"status": {"disruptedPods": {"a": rfc3339(old)}}}))).await?;
    let status = status_becomes(&budgets, "web", json!({"disruptionsAllowed": 1, "currentHealthy": 3}), "the expired disruption dropped").await?;
    anyhow::ensure!(status.get("disruptedPods").is_none(), "expired disruption dropped: {status}");
    cluster.describe_shows(&["pod", "a", "-n", "pdb"], &[("NotDeleted", "controllermanager", "Pod was expected by PDB pdb/web to be deleted but it wasn't")]).await?;

    // A real eviction takes the disruption; once its pod is gone, so is its record. (A
    // second eviction would be refused with 429, which kube-rs retries for minutes.)
    pods.evict("b", &EvictParams::default()).await?;
    eventually(WAIT, "pod b gone or going", || async {
        Ok(pods.get_opt("b").await?.is_none_or(|p| p.metadata.deletion_timestamp.is_some()).then_some(()))
    })
    .await?;
    let status = status_becomes(&budgets, "web", json!({"disruptionsAllowed": 0, "currentHealthy": 2, "expectedPods": 2}), "pod b gone").await?;
    anyhow::ensure!(status.get("disruptedPods").is_none(), "the eviction's record dropped once its pod went: {status}");
    Ok(())
}

#[tokio::test]
async fn stale_disruption_targets_are_cleared() -> anyhow::Result<()> {
    let cluster = Cluster::start().await?;
    let c = &cluster.client;
    create_namespace(c, "pdb").await?;
    let pods: Api<Pod> = Api::namespaced(c.clone(), "pdb");
    create_pod(&pods, "a", json!({"app": "web"}), None).await?;
    let old = k8s_openapi::jiff::Timestamp::now().checked_sub(k8s_openapi::jiff::SignedDuration::from_secs(180))?;
    let conditions = json!([
        {"type": "Ready", "status": "True"},
        {"type": "DisruptionTarget", "status": "True", "reason": "EvictionByEvictionAPI", "message": "Eviction API: evicting", "lastTransitionTime": rfc3339(old)},
    ]);
    pods.patch_status("a", &PatchParams::default(), &Patch::Merge(json!({"status": {"phase": "Running", "conditions": conditions}}))).await?;
    let _cm = cluster.start_controller_manager(&["disruption"], false);
    let pod = eventually(WAIT, "the stale DisruptionTarget cleared", || async {
        let pod = pods.get("a").await?;
        let cleared = pod.status.as_ref().and_then(|s| s.conditions.as_ref()).is_some_and(|cs| cs.iter().any(|c| c.type_ == "DisruptionTarget" && c.status == "False"));
        Ok(cleared.then_some(pod))
    })
    .await?;
    let conditions = pod.status.and_then(|s| s.conditions).unwrap_or_default();
    anyhow::ensure!(conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True"), "Ready kept: {conditions:?}");
    let target = conditions.iter().find(|c| c.type_ == "DisruptionTarget");
    anyhow::ensure!(target.is_some_and(|c| c.reason.as_deref() == Some("EvictionByEvictionAPI")), "reason kept: {target:?}");
    Ok(())
}
