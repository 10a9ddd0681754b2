//! The controller-manager under leader election: of two copies only the Lease holder
//! acts, and when the leader crashes (its task aborted, so it cannot release the lease)
//! the standby takes the lease once it expires and acts in its place.

use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, PostParams};
use rkube_tests::cluster::{eventually, Cluster};
use serde_json::json;

async fn lease_holder(client: &kube::Client) -> anyhow::Result<Option<String>> {
    let lease = Api::<Lease>::namespaced(client.clone(), "kube-system").get_opt("kube-controller-manager").await?;
    Ok(lease.and_then(|l| l.spec).and_then(|s| s.holder_identity).filter(|h| !h.is_empty()))
}

async fn create_rs(client: &kube::Client, name: &str, replicas: i32) -> anyhow::Result<()> {
    let rs: ReplicaSet = serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}}, "spec": {"containers": [{"name": "c", "image": "busybox"}]}},
        },
    }))?;
    Api::<ReplicaSet>::namespaced(client.clone(), "default").create(&PostParams::default(), &rs).await?;
    Ok(())
}

async fn pod_count(client: &kube::Client, app: &str) -> anyhow::Result<usize> {
    let pods = Api::<Pod>::namespaced(client.clone(), "default").list(&ListParams::default().labels(&format!("app={app}"))).await?;
    Ok(pods.items.len())
}

/// A controller-manager running only the ReplicaSet controller under leader election,
/// with a lease shorter than Kubernetes' default 15 s (renewed every second).
fn elected_replicaset_controller(cluster: &Cluster, lease: Duration, renew_deadline: Duration) -> controller_manager::Config {
    controller_manager::Config {
        kubeconfig: Some(cluster.kubeconfig.clone()),
        controllers: vec!["replicaset".into()],
        leader_elect: true,
        leader_elect_lease_duration: lease,
        leader_elect_renew_deadline: renew_deadline,
        leader_elect_retry_period: Duration::from_secs(1),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_standby_controller_manager_takes_over_from_a_crashed_leader() -> anyhow::Result<()> {
    let cluster = Cluster::start().await?;
    let c = &cluster.client;

    // The first copy runs in a task of its own, so that aborting it is a crash: no
    // release of the lease.
    // Shorter than Kubernetes' default 15 s lease, so a takeover is well within 15 s.
    let config = elected_replicaset_controller(&cluster, Duration::from_secs(8), Duration::from_secs(6));
    let standby = config.clone();
    let token = cluster.shutdown.child_token();
    let leader_task = tokio::spawn(async move { controller_manager::run(config, token).await });
    let leader = eventually(Duration::from_secs(15), "a controller-manager leader", || lease_holder(c)).await?;

    // The second copy stands by.
    let token = cluster.shutdown.child_token();
    tokio::spawn(async move { controller_manager::run(standby, token).await });

    // Only one acts: a ReplicaSet of 3 gets exactly 3 pods, and the lease stays put.
    create_rs(c, "first", 3).await?;
    eventually(Duration::from_secs(15), "3 pods of first", || async { Ok((pod_count(c, "first").await? == 3).then_some(())) }).await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(pod_count(c, "first").await?, 3, "two controller-managers acted");
    assert_eq!(lease_holder(c).await?.as_deref(), Some(leader.as_str()));

    // Crash the leader (aborting its task stops its controllers without releasing the
    // lease); the standby takes the lease when it expires (8 s after the last renewal,
    // plus up to one retry period) and then acts.
    leader_task.abort();
    let crashed_at = Instant::now();
    let new_leader = eventually(Duration::from_secs(20), "a new leader", || async {
        Ok(lease_holder(c).await?.filter(|h| *h != leader))
    })
    .await?;
    let took = crashed_at.elapsed();
    eprintln!("the standby took over {took:?} after the leader crashed");
    assert!(took <= Duration::from_secs(15), "takeover took {took:?}");
    assert_ne!(new_leader, leader);
    create_rs(c, "second", 2).await?;
    eventually(Duration::from_secs(15), "2 pods of second", || async { Ok((pod_count(c, "second").await? == 2).then_some(())) }).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(pod_count(c, "second").await?, 2, "the crashed leader's controllers still acted");
    assert_eq!(pod_count(c, "first").await?, 3);
    Ok(())
}

async fn kubectl(cluster: &Cluster, args: &[&str]) -> anyhow::Result<std::process::Output> {
    Ok(tokio::process::Command::new("kubectl").args(args).env("KUBECONFIG", &cluster.kubeconfig).output().await?)
}

/// The `STATUS`, `MESSAGE` and `ERROR` cells of `component` in `kubectl get cs`.
async fn component_status(cluster: &Cluster, component: &str) -> anyhow::Result<(String, String)> {
    let out = kubectl(cluster, &["get", "cs", component, "-o", "jsonpath={.conditions[0].status}|{.conditions[0].message}{.conditions[0].error}"]).await?;
    anyhow::ensure!(out.status.success(), "kubectl get cs {component}: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (status, said) = text.split_once('|').unwrap_or((&text, ""));
    Ok((status.to_string(), said.to_string()))
}

/// `kubectl get cs` (componentstatuses, deprecated and still in many tutorials): the
/// store is healthy, and a controller-manager apart from the apiserver is healthy while
/// it holds its Lease and unhealthy once it crashed and the Lease ran out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_get_cs_follows_the_controller_managers_lease() -> anyhow::Result<()> {
    let cluster = Cluster::start().await?;
    let out = kubectl(&cluster, &["get", "cs"]).await?;
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("Warning: v1 ComponentStatus is deprecated in v1.19+"), "the deprecation warning: {stderr}");
    let rows: Vec<Vec<&str>> = stdout.lines().map(|l| l.split_whitespace().collect()).collect();
    assert_eq!(rows.first().map(|r| r.as_slice()), Some(["NAME", "STATUS", "MESSAGE", "ERROR"].as_slice()), "{stdout}");
    assert!(rows.iter().any(|r| r.as_slice() == ["etcd-0", "Healthy", "ok"]), "the store is healthy: {stdout}");
    // No controller-manager runs yet.
    let (status, said) = component_status(&cluster, "controller-manager").await?;
    assert_eq!(status, "False", "no controller-manager: {said}");
    assert!(said.contains("kube-controller-manager"), "{said}");

    let config = elected_replicaset_controller(&cluster, Duration::from_secs(4), Duration::from_secs(3));
    let token = cluster.shutdown.child_token();
    let task = tokio::spawn(async move { controller_manager::run(config, token).await });
    eventually(Duration::from_secs(15), "controller-manager Healthy", || async {
        Ok((component_status(&cluster, "controller-manager").await? == ("True".to_string(), "ok".to_string())).then_some(()))
    })
    .await?;
    // A crash leaves the Lease behind; once it has run out the component is unhealthy.
    task.abort();
    let said = eventually(Duration::from_secs(15), "controller-manager Unhealthy", || async {
        let (status, said) = component_status(&cluster, "controller-manager").await?;
        Ok((status == "False").then_some(said))
    })
    .await?;
    assert!(said.contains("last renewed Lease kube-system/kube-controller-manager"), "{said}");

    let missing = kubectl(&cluster, &["get", "cs", "nope"]).await?;
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert!(!missing.status.success() && stderr.contains(r#"componentstatuses "nope" not found"#), "{stderr}");
    Ok(())
}
