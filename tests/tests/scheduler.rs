//! kube-scheduler against the in-process apiserver with fake nodes: placement by
//! nodeSelector, taints and tolerations, resource requests (and the FailedScheduling
//! event of a pod that fits nowhere), topology spread, a pod that waits for a node, and
//! two schedulers under leader election where the standby takes over from a crashed
//! leader.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Event, Node, Pod};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use rkube_tests::cluster::{eventually, Cluster};
use rkube_tests::fakenode::{create_node, NodeShape};
use serde_json::json;
use tokio_util::sync::CancellationToken;

fn shape(labels: &[(&str, &str)]) -> NodeShape {
    NodeShape { labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<BTreeMap<_, _>>(), ..Default::default() }
}

/// Starts a scheduler in-process on the cluster; it stops with the returned token.
fn start_scheduler(cluster: &Cluster, leader_elect: bool, lease: scheduler::LeaseTiming) -> CancellationToken {
    let token = cluster.shutdown.child_token();
    let config = scheduler::Config { kubeconfig: Some(cluster.kubeconfig.clone()), leader_elect, lease, ..Default::default() };
    let t = token.clone();
    tokio::spawn(async move {
        if let Err(e) = scheduler::run(config, t).await {
            eprintln!("scheduler stopped: {e:#}");
        }
    });
    token
}

async fn create_pod(client: &kube::Client, name: &str, spec: serde_json::Value, labels: serde_json::Value) -> anyhow::Result<()> {
    let mut spec = spec;
    if spec.get("containers").is_none() {
        spec["containers"] = json!([{"name": "c", "image": "busybox"}]);
    }
    let pod: Pod = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "default", "labels": labels},
        "spec": spec,
    }))?;
    Api::<Pod>::namespaced(client.clone(), "default").create(&PostParams::default(), &pod).await?;
    Ok(())
}

async fn node_of(client: &kube::Client, name: &str) -> anyhow::Result<Option<String>> {
    let pod = Api::<Pod>::namespaced(client.clone(), "default").get(name).await?;
    Ok(pod.spec.and_then(|s| s.node_name).filter(|n| !n.is_empty()))
}

async fn wait_bound(client: &kube::Client, name: &str, timeout: Duration) -> anyhow::Result<String> {
    eventually(timeout, &format!("pod {name} bound"), || node_of(client, name)).await
}

/// The message of the pod's latest event with `reason`.
async fn event_message(client: &kube::Client, pod: &str, reason: &str) -> anyhow::Result<Option<String>> {
    let events = Api::<Event>::namespaced(client.clone(), "default").list(&ListParams::default()).await?;
    Ok(events
        .items
        .into_iter()
        .filter(|e| e.involved_object.name.as_deref() == Some(pod) && e.reason.as_deref() == Some(reason))
        .last()
        .and_then(|e| e.message))
}

async fn taint(client: &kube::Client, node: &str, key: &str, value: &str, effect: &str) -> anyhow::Result<()> {
    let patch = json!({"spec": {"taints": [{"key": key, "value": value, "effect": effect}]}});
    Api::<Node>::all(client.clone()).patch(node, &PatchParams::default(), &Patch::Merge(&patch)).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_land_by_selector_taints_and_resources() -> anyhow::Result<()> {
    let cluster = Cluster::start().await?;
    let c = &cluster.client;
    create_node(c, "ssd", &shape(&[("disk", "ssd")])).await?;
    create_node(c, "gpu", &shape(&[])).await?;
    create_node(c, "plain", &shape(&[])).await?;
    taint(c, "gpu", "dedicated", "gpu", "NoSchedule").await?;
    start_scheduler(&cluster, false, Default::default());

    create_pod(c, "wants-ssd", json!({"nodeSelector": {"disk": "ssd"}}), json!({})).await?;
    create_pod(
        c,
        "tolerates-gpu",
        json!({
            "nodeSelector": {"kubernetes.io/hostname": "gpu"},
            "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"}],
        }),
        json!({}),
    )
    .await?;
    create_pod(c, "intolerant", json!({"nodeSelector": {"kubernetes.io/hostname": "gpu"}}), json!({})).await?;
    create_pod(
        c,
        "too-big",
        json!({"containers": [{"name": "c", "image": "busybox", "resources": {"requests": {"cpu": "100", "memory": "1Gi"}}}]}),
        json!({}),
    )
    .await?;
    create_pod(
        c,
        "fits",
        json!({"containers": [{"name": "c", "image": "busybox", "resources": {"requests": {"cpu": "3", "memory": "1Gi"}}}]}),
        json!({}),
    )
    .await?;

    assert_eq!(wait_bound(c, "wants-ssd", Duration::from_secs(10)).await?, "ssd");
    assert_eq!(wait_bound(c, "tolerates-gpu", Duration::from_secs(10)).await?, "gpu");
    let fits = wait_bound(c, "fits", Duration::from_secs(10)).await?;
    assert_ne!(fits, "gpu", "untolerated taint");

    let msg = eventually(Duration::from_secs(10), "FailedScheduling for too-big", || event_message(c, "too-big", "FailedScheduling")).await?;
    assert_eq!(
        msg,
        "0/3 nodes are available: 1 node(s) had untolerated taint {dedicated: gpu}, 2 Insufficient cpu. \
         preemption: 0/3 nodes are available: 1 Preemption is not helpful for scheduling, 2 No preemption victims found for incoming pod."
    );
    let msg = eventually(Duration::from_secs(10), "FailedScheduling for intolerant", || event_message(c, "intolerant", "FailedScheduling")).await?;
    assert_eq!(
        msg,
        "0/3 nodes are available: 1 node(s) had untolerated taint {dedicated: gpu}, 2 node(s) didn't match Pod's node affinity/selector. \
         preemption: 0/3 nodes are available: 3 Preemption is not helpful for scheduling."
    );
    // The pod says so in its status too, and stays Pending.
    let cond = eventually(Duration::from_secs(10), "PodScheduled=False on too-big", || async {
        let pod = Api::<Pod>::namespaced(c.clone(), "default").get("too-big").await?;
        Ok(pod.status.and_then(|s| s.conditions).and_then(|cs| cs.into_iter().find(|c| c.type_ == "PodScheduled" && c.status == "False")))
    })
    .await?;
    assert_eq!(cond.reason.as_deref(), Some("Unschedulable"));
    assert!(cond.message.unwrap_or_default().starts_with("0/3 nodes are available"));
    assert_eq!(node_of(c, "too-big").await?, None);
    assert_eq!(node_of(c, "intolerant").await?, None);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topology_spread_puts_two_pods_in_each_of_three_zones() -> anyhow::Result<()> {
    let cluster = Cluster::start().await?;
    let c = &cluster.client;
    for (node, zone) in [("a", "z1"), ("b", "z2"), ("c", "z3")] {
        create_node(c, node, &shape(&[("topology.kubernetes.io/zone", zone)])).await?;
    }
    start_scheduler(&cluster, false, Default::default());
    let spec = json!({"topologySpreadConstraints": [{
        "maxSkew": 1,
        "topologyKey": "topology.kubernetes.io/zone",
        "whenUnsatisfiable": "DoNotSchedule",
        "labelSelector": {"matchLabels": {"app": "web"}},
    }]});
    let mut placed: BTreeMap<String, usize> = BTreeMap::new();
    // One at a time, so each decision sees the previous ones.
    for i in 0..6 {
        let name = format!("web-{i}");
        create_pod(c, &name, spec.clone(), json!({"app": "web"})).await?;
        *placed.entry(wait_bound(c, &name, Duration::from_secs(10)).await?).or_default() += 1;
    }
    assert_eq!(placed, [("a".to_string(), 2), ("b".to_string(), 2), ("c".to_string(), 2)].into_iter().collect());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_is_bound_when_a_fitting_node_appears() -> anyhow::Result<()> {
    let cluster = Cluster::start().await?;
    let c = &cluster.client;
    create_node(c, "small", &shape(&[])).await?;
    start_scheduler(&cluster, false, Default::default());
    create_pod(c, "waits", json!({"nodeSelector": {"pool": "big"}}), json!({})).await?;
    let msg = eventually(Duration::from_secs(10), "FailedScheduling", || event_message(c, "waits", "FailedScheduling")).await?;
    assert!(msg.starts_with("0/1 nodes are available: 1 node(s) didn't match Pod's node affinity/selector."), "{msg}");
    create_node(c, "big", &shape(&[("pool", "big")])).await?;
    assert_eq!(wait_bound(c, "waits", Duration::from_secs(15)).await?, "big");
    Ok(())
}

/// Who holds the kube-scheduler lease.
async fn lease_holder(client: &kube::Client) -> anyhow::Result<Option<String>> {
    let lease = Api::<Lease>::namespaced(client.clone(), "kube-system").get_opt("kube-scheduler").await?;
    Ok(lease.and_then(|l| l.spec).and_then(|s| s.holder_identity).filter(|h| !h.is_empty()))
}

/// The reportingInstance of the pod's Scheduled event: which scheduler bound it.
async fn bound_by(client: &kube::Client, pod: &str) -> anyhow::Result<Option<String>> {
    let events = Api::<Event>::namespaced(client.clone(), "default").list(&ListParams::default()).await?;
    Ok(events
        .items
        .into_iter()
        .find(|e| e.involved_object.name.as_deref() == Some(pod) && e.reason.as_deref() == Some("Scheduled"))
        .and_then(|e| e.reporting_instance))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_standby_scheduler_takes_over_from_a_crashed_leader() -> anyhow::Result<()> {
    let cluster = Cluster::start().await?;
    let c = &cluster.client;
    for n in ["n1", "n2"] {
        create_node(c, n, &shape(&[])).await?;
    }
    let lease = scheduler::LeaseTiming { lease_duration: Duration::from_secs(8), renew_deadline: Duration::from_secs(6), retry_period: Duration::from_secs(1) };

    // The first scheduler runs on a runtime of its own, as if in another process, so that
    // it can crash: its runtime is torn down without running any shutdown path, and the
    // lease it holds is not released.
    let (crash_tx, crash_rx) = tokio::sync::oneshot::channel::<()>();
    let config = scheduler::Config { kubeconfig: Some(cluster.kubeconfig.clone()), leader_elect: true, lease: lease.clone(), ..Default::default() };
    let first = std::thread::spawn(move || -> anyhow::Result<()> {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
        rt.block_on(async move {
            tokio::select! {
                r = scheduler::run(config, CancellationToken::new()) => { r?; }
                _ = crash_rx => {}
            }
            anyhow::Ok(())
        })?;
        rt.shutdown_background();
        Ok(())
    });
    let leader = eventually(Duration::from_secs(10), "a leader", || lease_holder(c)).await?;
    start_scheduler(&cluster, true, lease.clone());

    for i in 0..4 {
        create_pod(c, &format!("before-{i}"), json!({}), json!({})).await?;
    }
    for i in 0..4 {
        let name = format!("before-{i}");
        wait_bound(c, &name, Duration::from_secs(10)).await?;
        let by = eventually(Duration::from_secs(10), "the Scheduled event", || bound_by(c, &name)).await?;
        assert_eq!(by, leader, "only the leader binds");
    }
    assert_eq!(lease_holder(c).await?.as_deref(), Some(leader.as_str()));

    let _ = crash_tx.send(());
    first.join().map_err(|_| anyhow::anyhow!("the first scheduler's thread panicked"))?.context("first scheduler")?;
    let crashed = tokio::time::Instant::now();
    for i in 0..4 {
        create_pod(c, &format!("after-{i}"), json!({}), json!({})).await?;
    }
    for i in 0..4 {
        let name = format!("after-{i}");
        let left = Duration::from_secs(15).saturating_sub(crashed.elapsed());
        wait_bound(c, &name, left).await.context("the standby did not take over within 15 s")?;
        let by = eventually(Duration::from_secs(10), "the Scheduled event", || bound_by(c, &name)).await?;
        assert_ne!(by, leader, "bound by the new leader");
    }
    let new_leader = lease_holder(c).await?;
    assert!(new_leader.is_some() && new_leader.as_deref() != Some(leader.as_str()));
    Ok(())
}
