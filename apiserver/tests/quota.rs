//! LimitRanger and ResourceQuota admission as users meet them through the stock kubectl,
//! against an in-process apiserver with no controller running: admission alone fills in
//! defaults, refuses what breaks a LimitRange or would exceed a quota, and keeps the
//! quota's `status.used`.

mod support;

use anyhow::{ensure, Context};
use support::server::{have_kubectl, Backend, TestServer};

async fn start() -> anyhow::Result<Option<TestServer>> {
    if !have_kubectl()? {
        return Ok(None);
    }
    TestServer::start(Backend::Embedded).await
}

/// `kubectl run` arguments for a pod whose one container has `resources`.
fn run_with(name: &str, namespace: &str, resources: &str) -> Vec<String> {
    let overrides = format!(r#"{{"apiVersion":"v1","spec":{{"containers":[{{"name":"{name}","image":"nginx:1.27","resources":{resources}}}]}}}}"#);
    ["run", name, "--image=nginx:1.27", "-n", namespace, "--overrides", &overrides].iter().map(|s| s.to_string()).collect()
}

fn args(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

const LIMITS: &str = "apiVersion: v1
kind: LimitRange
metadata: {name: cpu-limits, namespace: team}
spec:
  limits:
  - type: Container
    default: {cpu: 200m}
    max: {cpu: 500m}
";

#[tokio::test]
async fn limit_ranges_default_and_bound_pods_and_quota_counts_them() -> anyhow::Result<()> {
    let Some(s) = start().await? else { return Ok(()) };
    s.ok(&["create", "namespace", "team"]).await?;
    let created = s.kubectl_stdin(&["create", "-f", "-"], Some(LIMITS)).await?;
    ensure!(created.status.success(), "creating the LimitRange: {}", String::from_utf8_lossy(&created.stderr));
    // Its API defaults: the default request follows the default limit.
    let defaults = s.ok(&["get", "limitrange", "cpu-limits", "-n", "team", "-o", "jsonpath={.spec.limits[0].defaultRequest.cpu}"]).await?;
    ensure!(defaults == "200m", "defaultRequest: {defaults}");
    s.ok(&["create", "quota", "compute", "-n", "team", "--hard=pods=2,limits.cpu=1"]).await?;

    // The first pod states nothing: the LimitRange's default is its limit and request.
    s.ok(&["run", "web1", "--image=nginx:1.27", "-n", "team"]).await?;
    let resources = s.ok(&["get", "pod", "web1", "-n", "team", "-o", "jsonpath={.spec.containers[0].resources}"]).await?;
    let resources: serde_json::Value = serde_json::from_str(&resources).context("resources as JSON")?;
    ensure!(resources == serde_json::json!({"limits": {"cpu": "200m"}, "requests": {"cpu": "200m"}}), "web1 got {resources}");
    let note = s.ok(&["get", "pod", "web1", "-n", "team", "-o", r"jsonpath={.metadata.annotations.kubernetes\.io/limit-ranger}"]).await?;
    ensure!(note == "LimitRanger plugin set: cpu request for container web1; cpu limit for container web1", "annotation: {note}");

    // A limit above the LimitRange's max is refused by LimitRanger, before quota.
    let err = s.fails(&args(&run_with("web2", "team", r#"{"limits":{"cpu":"1"}}"#))).await?;
    ensure!(err.contains(r#"Error from server (Forbidden): pods "web2" is forbidden: maximum cpu usage per Container is 500m, but limit is 1"#), "web2: {err}");

    // A pod within both fits.
    s.ok(&args(&run_with("web3", "team", r#"{"limits":{"cpu":"500m"}}"#))).await?;

    // The third pod would exceed both of the quota's limits.
    let err = s.fails(&args(&run_with("web4", "team", r#"{"limits":{"cpu":"500m"}}"#))).await?;
    ensure!(
        err.contains(
            r#"pods "web4" is forbidden: exceeded quota: compute, requested: limits.cpu=500m,pods=1, used: limits.cpu=700m,pods=2, limited: limits.cpu=1,pods=2"#
        ),
        "web4: {err}"
    );
    // A server-side dry run is checked the same way, and charges nothing when it fits.
    let err = s.fails(&["run", "web5", "--image=nginx:1.27", "-n", "team", "--dry-run=server"]).await?;
    ensure!(err.contains("exceeded quota: compute, requested: pods=1, used: pods=2, limited: pods=2"), "dry run: {err}");

    // Admission kept the quota's status: kubectl's table and describe show it.
    let table = s.ok(&["get", "quota", "compute", "-n", "team"]).await?;
    ensure!(table.contains("pods: 2/2") && table.contains("limits.cpu: 700m/1"), "get quota:\n{table}");
    let described = s.ok(&["describe", "quota", "compute", "-n", "team"]).await?;
    let rows: Vec<Vec<&str>> = described.lines().map(|l| l.split_whitespace().collect()).collect();
    ensure!(rows.contains(&vec!["limits.cpu", "700m", "1"]) && rows.contains(&vec!["pods", "2", "2"]), "describe quota:\n{described}");
    Ok(())
}

#[tokio::test]
async fn quota_requires_requests_and_counts_objects() -> anyhow::Result<()> {
    let Some(s) = start().await? else { return Ok(()) };
    s.ok(&["create", "namespace", "lean"]).await?;
    s.ok(&["create", "quota", "mem", "-n", "lean", "--hard=requests.memory=1Gi,configmaps=2,services=1"]).await?;

    // A quota on memory needs every container to say how much it requests.
    let err = s.fails(&["run", "bare", "--image=nginx:1.27", "-n", "lean"]).await?;
    ensure!(err.contains(r#"pods "bare" is forbidden: failed quota: mem: must specify requests.memory for: bare"#), "bare: {err}");
    s.ok(&args(&run_with("sized", "lean", r#"{"requests":{"memory":"512Mi"}}"#))).await?;
    let err = s.fails(&args(&run_with("big", "lean", r#"{"requests":{"memory":"768Mi"}}"#))).await?;
    ensure!(err.contains("exceeded quota: mem, requested: requests.memory=768Mi, used: requests.memory=512Mi, limited: requests.memory=1Gi"), "big: {err}");

    // Object counts (no controller publishes the root CA ConfigMap here). Creating a
    // name that is taken is refused as AlreadyExists and charges nothing, so the second
    // ConfigMap still fits and only a third is refused.
    s.ok(&["create", "configmap", "one", "-n", "lean"]).await?;
    let err = s.fails(&["create", "configmap", "one", "-n", "lean"]).await?;
    ensure!(err.contains(r#"configmaps "one" already exists"#), "one again: {err}");
    s.ok(&["create", "configmap", "two", "-n", "lean"]).await?;
    let err = s.fails(&["create", "configmap", "three", "-n", "lean"]).await?;
    ensure!(
        err.contains(r#"configmaps "three" is forbidden: exceeded quota: mem, requested: configmaps=1, used: configmaps=2, limited: configmaps=2"#),
        "three: {err}"
    );
    s.ok(&["create", "service", "clusterip", "web", "--tcp=80:80", "-n", "lean"]).await?;
    let err = s.fails(&["create", "service", "nodeport", "api", "--tcp=80:80", "-n", "lean"]).await?;
    ensure!(err.contains("exceeded quota: mem, requested: services=1, used: services=1, limited: services=1"), "api: {err}");
    let used = s.ok(&["get", "quota", "mem", "-n", "lean", "-o", "jsonpath={.status.used}"]).await?;
    let used: serde_json::Value = serde_json::from_str(&used).context("used as JSON")?;
    ensure!(used == serde_json::json!({"configmaps": "2", "requests.memory": "512Mi", "services": "1"}), "used: {used}");
    Ok(())
}

#[tokio::test]
async fn concurrent_creates_never_overspend_a_quota() -> anyhow::Result<()> {
    let Some(s) = start().await? else { return Ok(()) };
    s.ok(&["create", "namespace", "race"]).await?;
    s.ok(&["create", "quota", "three", "-n", "race", "--hard=pods=3"]).await?;
    let names: Vec<String> = (0..8).map(|i| format!("p{i}")).collect();
    let commands: Vec<[&str; 5]> = names.iter().map(|n| ["run", n.as_str(), "--image=nginx:1.27", "-n", "race"]).collect();
    let runs = commands.iter().map(|c| s.kubectl(c));
    let outcomes = futures::future::join_all(runs).await;
    let mut admitted = 0;
    for out in outcomes {
        let out = out?;
        if out.status.success() {
            admitted += 1;
        } else {
            let err = String::from_utf8_lossy(&out.stderr);
            ensure!(err.contains("exceeded quota: three"), "unexpected failure: {err}");
        }
    }
    ensure!(admitted == 3, "{admitted} pods were admitted against pods=3");
    let pods = s.ok(&["get", "pods", "-n", "race", "-o", "name"]).await?;
    ensure!(pods.lines().count() == 3, "pods: {pods}");
    let used = s.ok(&["get", "quota", "three", "-n", "race", "-o", "jsonpath={.status.used.pods}"]).await?;
    ensure!(used == "3", "used pods: {used}");

    // A tighter burst from one client: 40 creates at once against room for 10.
    use kube::config::{KubeConfigOptions, Kubeconfig};
    let kc = Kubeconfig::read_from(&s.kubeconfig).context("reading the admin kubeconfig")?;
    let client = kube::Client::try_from(kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await?)?;
    s.ok(&["create", "namespace", "burst"]).await?;
    s.ok(&["create", "quota", "ten", "-n", "burst", "--hard=count/pods=10,requests.cpu=5"]).await?;
    let pods: kube::Api<k8s_openapi::api::core::v1::Pod> = kube::Api::namespaced(client, "burst");
    let creates = (0..40).map(|i| {
        let pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": format!("b{i}")},
            "spec": {"containers": [{"name": "c", "image": "nginx:1.27", "resources": {"requests": {"cpu": "100m"}}}]},
        }));
        let pods = pods.clone();
        async move { pods.create(&kube::api::PostParams::default(), &pod?).await.map_err(anyhow::Error::from) }
    });
    let results = futures::future::join_all(creates).await;
    let admitted = results.iter().filter(|r| r.is_ok()).count();
    for r in results.iter().filter_map(|r| r.as_ref().err()) {
        ensure!(
            r.to_string().contains("exceeded quota: ten, requested: count/pods=1, used: count/pods=10, limited: count/pods=10"),
            "unexpected failure: {r:#}"
        );
    }
    ensure!(admitted == 10, "{admitted} pods were admitted against count/pods=10");
    let used = s.ok(&["get", "quota", "ten", "-n", "burst", "-o", "jsonpath={.status.used}"]).await?;
    let used: serde_json::Value = serde_json::from_str(&used).context("used as JSON")?;
    ensure!(used == serde_json::json!({"count/pods": "10", "requests.cpu": "1"}), "used: {used}");
    Ok(())
}
