//! DaemonSets and StatefulSets against an in-process cluster with fake nodes and the fake
//! kubelet: a DaemonSet runs one pod per eligible node (not on a node whose taint it does
//! not tolerate), follows nodes coming and going and rolls an image update over every
//! node; a StatefulSet creates web-0, web-1, web-2 in order (each after the previous is
//! Ready), makes a claim per ordinal, scales down from the highest ordinal keeping
//! claims, and a partitioned rolling update replaces only the ordinals at or above the
//! partition; Parallel sets create at once and honour the claim retention policy and
//! revisionHistoryLimit. The stock `kubectl rollout status/history/undo` work on both.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use futures::StreamExt;
use k8s_openapi::api::apps::v1::{ControllerRevision, DaemonSet, StatefulSet};
use k8s_openapi::api::core::v1::{Node, PersistentVolumeClaim, Pod};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use kube::ResourceExt;
use rkube_tests::cluster::{eventually, Cluster};
use rkube_tests::fakenode::{create_node, run_fake_kubelet, run_fake_scheduler, NodeShape};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(60);
const NS: &str = "default";

fn from_json<T: k8s_openapi::serde::de::DeserializeOwned>(v: serde_json::Value) -> anyhow::Result<T> {
    Ok(serde_json::from_value(v)?)
}

fn is_ready(p: &Pod) -> bool {
    p.status.as_ref().and_then(|s| s.conditions.as_ref()).is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn image_of(p: &Pod) -> String {
    p.spec.as_ref().and_then(|s| s.containers.first()).and_then(|c| c.image.clone()).unwrap_or_default()
}

fn node_of(p: &Pod) -> String {
    p.spec.as_ref().and_then(|s| s.node_name.clone()).unwrap_or_default()
}

async fn pods(client: &kube::Client, app: &str) -> anyhow::Result<Vec<Pod>> {
    let api: Api<Pod> = Api::namespaced(client.clone(), NS);
    Ok(api.list(&ListParams::default().labels(&format!("app={app}"))).await?.items.into_iter().filter(|p| p.metadata.deletion_timestamp.is_none()).collect())
}

/// Runs the stock kubectl against the cluster; returns stdout, failing on a non-zero exit.
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

/// Waits until the app has exactly one Ready pod with `image` on each of `nodes`.
async fn wait_daemon_pods(client: &kube::Client, app: &str, nodes: &[&str], image: &str) -> anyhow::Result<Vec<Pod>> {
    let want: HashSet<String> = nodes.iter().map(|n| n.to_string()).collect();
    eventually(WAIT, &format!("{app} ready with {image} on {nodes:?}"), || async {
        let ps = pods(client, app).await?;
        let on: HashSet<String> = ps.iter().map(node_of).collect();
        let ok = ps.len() == want.len() && on == want && ps.iter().all(|p| is_ready(p) && image_of(p) == image);
        Ok(ok.then_some(ps))
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemonset_follows_nodes_taints_and_rolls_updates() -> anyhow::Result<()> {
    let cluster = Cluster::start().await?;
    let c = &cluster.client;
    let all = ["node-a", "node-b", "node-c", "node-tainted", "node-d"];
    for n in &all[..4] {
        create_node(c, n, &NodeShape::default()).await?;
    }
    let nodes: Api<Node> = Api::all(c.clone());
    let taint = json!({"spec": {"taints": [{"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}]}});
    nodes.patch("node-tainted", &PatchParams::default(), &Patch::Merge(&taint)).await?;
    run_fake_kubelet(c.clone(), all.iter().map(|s| s.to_string()).collect(), cluster.shutdown.clone());
    cluster.start_controller_manager(&["daemonset"], false);

    let api: Api<DaemonSet> = Api::namespaced(c.clone(), NS);
    let ds = json!({
        "metadata": {"name": "agent"},
        "spec": {
            "selector": {"matchLabels": {"app": "agent"}},
            "template": {"metadata": {"labels": {"app": "agent"}}, "spec": {"containers": [{"name": "c", "image": "busybox:1"}]}},
        },
    });
    api.create(&PostParams::default(), &from_json(ds)?).await?;

    // One pod per untainted node, none on the tainted one; pods carry Kubernetes' node
    // affinity, the daemon tolerations and the revision hash.
    let ps = wait_daemon_pods(c, "agent", &["node-a", "node-b", "node-c"], "busybox:1").await?;
    for p in &ps {
        let spec = p.spec.clone().unwrap_or_default();
        let term = serde_json::to_value(&spec.affinity)?;
        assert_eq!(term["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"][0]["matchFields"][0]["values"][0], json!(node_of(p)));
        let tolerations = spec.tolerations.unwrap_or_default();
        assert!(tolerations.iter().any(|t| t.key.as_deref() == Some("node.kubernetes.io/unschedulable")));
        assert!(p.labels().contains_key("controller-revision-hash"));
    }
    let out = kubectl(&cluster, &["rollout", "status", "ds/agent", "--timeout=60s"]).await?;
    assert!(out.contains("successfully rolled out"), "{out}");
    let status = eventually(WAIT, "ds status", || async {
        let s = api.get("agent").await?.status.unwrap_or_default();
        Ok((s.desired_number_scheduled == 3 && s.number_ready == 3).then_some(s))
    })
    .await?;
    assert_eq!((status.current_number_scheduled, status.number_misscheduled, status.updated_number_scheduled, status.number_available), (3, 0, Some(3), Some(3)));

    // A new node gets a pod.
    create_node(c, "node-d", &NodeShape::default()).await?;
    wait_daemon_pods(c, "agent", &["node-a", "node-b", "node-c", "node-d"], "busybox:1").await?;

    // An image update rolls every pod (maxUnavailable 1: never two old pods missing).
    let patch = json!({"spec": {"template": {"spec": {"containers": [{"name": "c", "image": "busybox:2"}]}}}});
    api.patch("agent", &PatchParams::default(), &Patch::Strategic(&patch)).await?;
    let out = kubectl(&cluster, &["rollout", "status", "ds/agent", "--timeout=60s"]).await?;
    assert!(out.contains("successfully rolled out"), "{out}");
    wait_daemon_pods(c, "agent", &["node-a", "node-b", "node-c", "node-d"], "busybox:2").await?;
    let revisions: Api<ControllerRevision> = Api::namespaced(c.clone(), NS);
    let revs = revisions.list(&ListParams::default().labels("app=agent")).await?.items;
    let mut numbers: Vec<i64> = revs.iter().map(|r| r.revision).collect();
    numbers.sort_unstable();
    assert_eq!(numbers, [1, 2]);
    let history = kubectl(&cluster, &["rollout", "history", "ds/agent"]).await?;
    assert!(history.contains('1') && history.contains('2'), "{history}");

    // Undo goes back to revision 1's template, which becomes revision 3.
    let out = kubectl(&cluster, &["rollout", "undo", "ds/agent"]).await?;
    assert!(out.contains("rolled back"), "{out}");
    wait_daemon_pods(c, "agent", &["node-a", "node-b", "node-c", "node-d"], "busybox:1").await?;
    let numbers = eventually(WAIT, "revisions renumbered", || async {
        let mut n: Vec<i64> = revisions.list(&ListParams::default().labels("app=agent")).await?.items.iter().map(|r| r.revision).collect();
        n.sort_unstable();
        Ok((n == [2, 3]).then_some(n))
    })
    .await?;
    assert_eq!(numbers, [2, 3]);

    // A node removed: its pod goes.
    nodes.delete("node-d", &DeleteParams::default()).await?;
    wait_daemon_pods(c, "agent", &["node-a", "node-b", "node-c"], "busybox:1").await?;
    let first = ps.first().map(|p| p.name_any()).unwrap_or_default();
    cluster
        .describe_shows(
            &["ds", "agent"],
            &[("SuccessfulCreate", "daemonset-controller", &format!("Created pod: {first}")), ("SuccessfulDelete", "daemonset-controller", "Deleted pod: agent-")],
        )
        .await?;
    Ok(())
}

/// Watches the app's pods and counts the moments, after `armed` is set, at which one of
/// `nodes` had no Ready pod that is not being deleted.
fn count_uncovered(client: &kube::Client, app: &str, nodes: &[&str], armed: Arc<std::sync::atomic::AtomicBool>, shutdown: tokio_util::sync::CancellationToken) -> Arc<Mutex<Vec<String>>> {
    let gaps: Arc<Mutex<Vec<String>>> = Arc::default();
    let api: Api<Pod> = Api::namespaced(client.clone(), NS);
    let mut stream = watcher(api, watcher::Config::default().labels(&format!("app={app}"))).boxed();
    let (g, nodes) = (gaps.clone(), nodes.iter().map(|n| n.to_string()).collect::<Vec<_>>());
    tokio::spawn(async move {
        let mut pods: std::collections::HashMap<String, Pod> = std::collections::HashMap::new();
        loop {
            let ev = tokio::select! { _ = shutdown.cancelled() => return, ev = stream.next() => ev };
            match ev {
                None => return,
                Some(Ok(watcher::Event::Apply(p) | watcher::Event::InitApply(p))) => {
                    pods.insert(p.name_any(), p);
                }
                Some(Ok(watcher::Event::Delete(p))) => {
                    pods.remove(&p.name_any());
                }
                Some(_) => continue,
            }
            if !armed.load(std::sync::atomic::Ordering::SeqCst) {
                continue;
            }
            for n in &nodes {
                if !pods.values().any(|p| node_of(p) == *n && is_ready(p) && p.metadata.deletion_timestamp.is_none()) {
                    if let Ok(mut g) = g.lock() {
                        g.push(n.clone());
                    }
                }
            }
        }
    });
    gaps
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemonset_surge_keeps_every_node_served_and_on_delete_waits() -> anyhow::Result<()> {
    let cluster = Cluster::start().await?;
    let c = &cluster.client;
    let all = ["node-a", "node-b", "node-c"];
    for n in &all {
        create_node(c, n, &NodeShape::default()).await?;
    }
    run_fake_kubelet(c.clone(), all.iter().map(|s| s.to_string()).collect(), cluster.shutdown.clone());
    cluster.start_controller_manager(&["daemonset"], false);
    let api: Api<DaemonSet> = Api::namespaced(c.clone(), NS);
    let ds = |name: &str, strategy: serde_json::Value| {
        json!({
            "metadata": {"name": name},
            "spec": {
                "updateStrategy": strategy,
                "selector": {"matchLabels": {"app": name}},
                "template": {"metadata": {"labels": {"app": name}}, "spec": {"containers": [{"name": "c", "image": "busybox:1"}]}},
            },
        })
    };
    let image2 = json!({"spec": {"template": {"spec": {"containers": [{"name": "c", "image": "busybox:2"}]}}}});

    // maxSurge 1, maxUnavailable 0: the new pod is Ready before the old one goes.
    api.create(&PostParams::default(), &from_json(ds("surge", json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}})))?).await?;
    wait_daemon_pods(c, "surge", &all, "busybox:1").await?;
    let armed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let gaps = count_uncovered(c, "surge", &all, armed.clone(), cluster.shutdown.clone());
    tokio::time::sleep(Duration::from_millis(500)).await;
    armed.store(true, std::sync::atomic::Ordering::SeqCst);
    api.patch("surge", &PatchParams::default(), &Patch::Strategic(&image2)).await?;
    let out = kubectl(&cluster, &["rollout", "status", "ds/surge", "--timeout=60s"]).await?;
    assert!(out.contains("successfully rolled out"), "{out}");
    wait_daemon_pods(c, "surge", &all, "busybox:2").await?;
    let gaps = gaps.lock().map(|g| g.clone()).unwrap_or_default();
    assert!(gaps.is_empty(), "nodes left without a ready pod: {gaps:?}");

    // OnDelete: the update waits until a pod is deleted by hand.
    api.create(&PostParams::default(), &from_json(ds("manual", json!({"type": "OnDelete"})))?).await?;
    wait_daemon_pods(c, "manual", &all, "busybox:1").await?;
    api.patch("manual", &PatchParams::default(), &Patch::Strategic(&image2)).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(pods(c, "manual").await?.iter().all(|p| image_of(p) == "busybox:1"));
    let victim = pods(c, "manual").await?.into_iter().find(|p| node_of(p) == "node-b").context("pod on node-b")?;
    Api::<Pod>::namespaced(c.clone(), NS).delete(&victim.name_any(), &DeleteParams::default()).await?;
    eventually(WAIT, "node-b's pod replaced with busybox:2", || async {
        let ps = pods(c, "manual").await?;
        let ok = ps.len() == 3 && ps.iter().all(|p| is_ready(p) && (image_of(p) == "busybox:2") == (node_of(p) == "node-b"));
        let s = api.get("manual").await?.status.unwrap_or_default();
        Ok((ok && s.updated_number_scheduled == Some(1) && s.number_ready == 3).then_some(()))
    })
    .await?;
    Ok(())
}

/// Pod events in the order the watch saw them: (name, event) with event one of
/// "created", "ready", "deleting".
type Timeline = Arc<Mutex<Vec<(String, &'static str)>>>;

fn record_pods(client: &kube::Client, app: &str, shutdown: tokio_util::sync::CancellationToken) -> Timeline {
    let timeline: Timeline = Arc::default();
    let api: Api<Pod> = Api::namespaced(client.clone(), NS);
    let mut stream = watcher(api, watcher::Config::default().labels(&format!("app={app}"))).boxed();
    let t = timeline.clone();
    tokio::spawn(async move {
        let mut seen: HashSet<(String, &'static str)> = HashSet::new();
        loop {
            let ev = tokio::select! { _ = shutdown.cancelled() => return, ev = stream.next() => ev };
            let (pod, deleted) = match ev {
                None => return,
                Some(Ok(watcher::Event::Apply(p) | watcher::Event::InitApply(p))) => (p, false),
                Some(Ok(watcher::Event::Delete(p))) => (p, true),
                Some(_) => continue,
            };
            let name = pod.name_any();
            let uid = pod.metadata.uid.clone().unwrap_or_default();
            let mut push = |what: &'static str| {
                if seen.insert((format!("{name}/{uid}"), what)) {
                    if let Ok(mut t) = t.lock() {
                        t.push((name.clone(), what));
                    }
                }
            };
            push("created");
            if is_ready(&pod) {
                push("ready");
            }
            if deleted || pod.metadata.deletion_timestamp.is_some() {
                push("deleting");
            }
        }
    });
    timeline
}

fn events(t: &Timeline, what: &str) -> Vec<String> {
    t.lock().map(|t| t.iter().filter(|(_, w)| *w == what).map(|(n, _)| n.clone()).collect()).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statefulset_orders_pods_keeps_claims_and_partitions_updates() -> anyhow::Result<()> {
    let cluster = Cluster::start().await?;
    let c = &cluster.client;
    let names = vec!["node-a".to_string(), "node-b".to_string()];
    for n in &names {
        create_node(c, n, &NodeShape::default()).await?;
    }
    run_fake_kubelet(c.clone(), names.clone(), cluster.shutdown.clone());
    run_fake_scheduler(c.clone(), names, cluster.shutdown.clone());
    cluster.start_controller_manager(&["statefulset"], false);
    let timeline = record_pods(c, "web", cluster.shutdown.clone());

    let api: Api<StatefulSet> = Api::namespaced(c.clone(), NS);
    let sts = json!({
        "metadata": {"name": "web"},
        "spec": {
            "replicas": 3,
            "serviceName": "web",
            "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "c", "image": "busybox:1"}]}},
            "volumeClaimTemplates": [{"metadata": {"name": "data"}, "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}],
        },
    });
    api.create(&PostParams::default(), &from_json(sts)?).await?;

    let ready3 = || async {
        let ps = pods(c, "web").await?;
        Ok((ps.len() == 3 && ps.iter().all(is_ready)).then_some(ps))
    };
    let ps = eventually(WAIT, "web-0..2 ready", ready3).await?;
    // In order, each created only once the one before was Ready.
    let order: Vec<(String, &str)> = timeline.lock().map(|t| t.clone()).unwrap_or_default();
    let created = events(&timeline, "created");
    assert_eq!(created, ["web-0", "web-1", "web-2"], "{order:?}");
    for i in 1..3 {
        let prev_ready = order.iter().position(|e| e == &(format!("web-{}", i - 1), "ready"));
        let this_created = order.iter().position(|e| e == &(format!("web-{i}"), "created"));
        assert!(prev_ready < this_created && prev_ready.is_some(), "web-{i} created before web-{} was ready: {order:?}", i - 1);
    }
    for p in &ps {
        let name = p.name_any();
        let spec = p.spec.clone().unwrap_or_default();
        assert_eq!(spec.hostname.as_deref(), Some(name.as_str()));
        assert_eq!(spec.subdomain.as_deref(), Some("web"));
        assert_eq!(p.labels().get("statefulset.kubernetes.io/pod-name"), Some(&name));
        assert_eq!(p.labels().get("apps.kubernetes.io/pod-index").cloned(), name.strip_prefix("web-").map(String::from));
        let claim = spec.volumes.unwrap_or_default().iter().find(|v| v.name == "data").and_then(|v| v.persistent_volume_claim.clone());
        assert_eq!(claim.map(|c| c.claim_name), Some(format!("data-{name}")));
    }
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(c.clone(), NS);
    for i in 0..3 {
        claims.get(&format!("data-web-{i}")).await.with_context(|| format!("claim data-web-{i}"))?;
    }
    let out = kubectl(&cluster, &["rollout", "status", "sts/web", "--timeout=60s"]).await?;
    assert!(out.contains("roll out complete") || out.contains("rolling update complete"), "{out}");

    // A pod that lost its identity label gets it back.
    let pod_api: Api<Pod> = Api::namespaced(c.clone(), NS);
    let unlabel = json!({"metadata": {"labels": {"statefulset.kubernetes.io/pod-name": null}}});
    pod_api.patch("web-1", &PatchParams::default(), &Patch::Merge(&unlabel)).await?;
    eventually(WAIT, "web-1's pod-name label restored", || async {
        let p = pod_api.get("web-1").await?;
        Ok((p.labels().get("statefulset.kubernetes.io/pod-name").map(String::as_str) == Some("web-1")).then_some(()))
    })
    .await?;

    // Scale down to 1: web-2 goes first, then web-1; the claims stay.
    api.patch("web", &PatchParams::default(), &Patch::Merge(&json!({"spec": {"replicas": 1}}))).await?;
    eventually(WAIT, "only web-0 left", || async {
        let ps = pods(c, "web").await?;
        Ok((ps.len() == 1 && ps[0].name_any() == "web-0").then_some(()))
    })
    .await?;
    assert_eq!(events(&timeline, "deleting"), ["web-2", "web-1"]);
    for i in 0..3 {
        claims.get(&format!("data-web-{i}")).await.with_context(|| format!("claim data-web-{i} kept"))?;
    }

    // Back to 3, then a partitioned update: only web-2 (ordinal >= 2) is replaced.
    api.patch("web", &PatchParams::default(), &Patch::Merge(&json!({"spec": {"replicas": 3}}))).await?;
    eventually(WAIT, "web-0..2 ready again", ready3).await?;
    let patch = json!({"spec": {
        "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"partition": 2}},
        "template": {"spec": {"containers": [{"name": "c", "image": "busybox:2"}]}},
    }});
    api.patch("web", &PatchParams::default(), &Patch::Strategic(&patch)).await?;
    let out = kubectl(&cluster, &["rollout", "status", "sts/web", "--timeout=60s"]).await?;
    assert!(out.contains("partitioned roll out complete"), "{out}");
    let ps = eventually(WAIT, "web-2 updated", || async {
        let ps = pods(c, "web").await?;
        let ok = ps.len() == 3 && ps.iter().all(is_ready) && ps.iter().any(|p| p.name_any() == "web-2" && image_of(p) == "busybox:2");
        Ok(ok.then_some(ps))
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let ps2 = pods(c, "web").await?;
    for p in ps.iter().chain(&ps2) {
        let want = if p.name_any() == "web-2" { "busybox:2" } else { "busybox:1" };
        assert_eq!(image_of(p), want, "{}", p.name_any());
    }
    let status = api.get("web").await?.status.unwrap_or_default();
    assert_eq!((status.replicas, status.ready_replicas, status.updated_replicas, status.current_replicas), (3, Some(3), Some(1), Some(2)));
    assert_ne!(status.current_revision, status.update_revision);
    assert_eq!(status.observed_generation, api.get("web").await?.metadata.generation);

    // Partition 0 finishes the rollout: the current revision becomes the update revision.
    api.patch("web", &PatchParams::default(), &Patch::Merge(&json!({"spec": {"updateStrategy": {"rollingUpdate": {"partition": 0}}}}))).await?;
    // kubectl says "partitioned roll out complete" whenever a partition is set, even 0.
    let out = kubectl(&cluster, &["rollout", "status", "sts/web", "--timeout=60s"]).await?;
    assert!(out.contains("3 new pods have been updated"), "{out}");
    eventually(WAIT, "current revision = update revision", || async {
        let s = api.get("web").await?.status.unwrap_or_default();
        Ok((s.current_revision == s.update_revision && s.updated_replicas == Some(3) && s.current_replicas == Some(3)).then_some(()))
    })
    .await?;
    assert!(pods(c, "web").await?.iter().all(|p| image_of(p) == "busybox:2"));

    // History and undo through the stock kubectl: revision 1's template comes back (as
    // revision 3) and replaces every pod, web-2 first.
    let history = kubectl(&cluster, &["rollout", "history", "sts/web"]).await?;
    assert!(history.contains('1') && history.contains('2'), "{history}");
    let before = events(&timeline, "deleting").len();
    let out = kubectl(&cluster, &["rollout", "undo", "sts/web"]).await?;
    assert!(out.contains("rolled back"), "{out}");
    eventually(WAIT, "web back on busybox:1", || async {
        let ps = pods(c, "web").await?;
        let s = api.get("web").await?.status.unwrap_or_default();
        let ok = ps.len() == 3 && ps.iter().all(|p| is_ready(p) && image_of(p) == "busybox:1") && s.current_revision == s.update_revision;
        Ok(ok.then_some(()))
    })
    .await?;
    let replaced: Vec<String> = events(&timeline, "deleting").into_iter().skip(before).collect();
    assert_eq!(replaced, ["web-2", "web-1", "web-0"]);
    cluster
        .describe_shows(
            &["sts", "web"],
            &[
                ("SuccessfulCreate", "statefulset-controller", "create Claim data-web-0 Pod web-0 in StatefulSet web success"),
                ("SuccessfulCreate", "statefulset-controller", "create Pod web-2 in StatefulSet web successful"),
                ("SuccessfulDelete", "statefulset-controller", "delete Pod web-0 in StatefulSet web successful"),
            ],
        )
        .await?;
    let revisions: Api<ControllerRevision> = Api::namespaced(c.clone(), NS);
    let mut numbers: Vec<i64> = revisions.list(&ListParams::default().labels("app=web")).await?.items.iter().map(|r| r.revision).collect();
    numbers.sort_unstable();
    assert_eq!(numbers, [2, 3]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_statefulset_and_claim_deletion_on_scale_down() -> anyhow::Result<()> {
    let cluster = Cluster::start().await?;
    let c = &cluster.client;
    let names = vec!["node-a".to_string()];
    create_node(c, "node-a", &NodeShape::default()).await?;
    run_fake_kubelet(c.clone(), names.clone(), cluster.shutdown.clone());
    run_fake_scheduler(c.clone(), names, cluster.shutdown.clone());
    cluster.start_controller_manager(&["statefulset", "garbagecollector"], false);

    let api: Api<StatefulSet> = Api::namespaced(c.clone(), NS);
    let sts = json!({
        "metadata": {"name": "db"},
        "spec": {
            "replicas": 3,
            "revisionHistoryLimit": 0,
            "podManagementPolicy": "Parallel",
            "persistentVolumeClaimRetentionPolicy": {"whenScaled": "Delete", "whenDeleted": "Delete"},
            "selector": {"matchLabels": {"app": "db"}},
            "template": {"metadata": {"labels": {"app": "db"}}, "spec": {"containers": [{"name": "c", "image": "busybox:1"}]}},
            "volumeClaimTemplates": [{"metadata": {"name": "data"}, "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}],
        },
    });
    api.create(&PostParams::default(), &from_json(sts)?).await?;
    eventually(WAIT, "db-0..2 ready", || async {
        let ps = pods(c, "db").await?;
        Ok((ps.len() == 3 && ps.iter().all(is_ready)).then_some(()))
    })
    .await?;
    api.patch("db", &PatchParams::default(), &Patch::Merge(&json!({"spec": {"replicas": 1}}))).await?;
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(c.clone(), NS);
    eventually(WAIT, "claims of db-1, db-2 deleted", || async {
        let left: Vec<String> = claims.list(&ListParams::default()).await?.items.iter().filter(|c| c.metadata.deletion_timestamp.is_none()).map(|c| c.name_any()).collect();
        Ok((left == ["data-db-0"]).then_some(()))
    })
    .await?;

    // revisionHistoryLimit 0: once the rollout is done only the update revision is left.
    for image in ["busybox:2", "busybox:3"] {
        let patch = json!({"spec": {"template": {"spec": {"containers": [{"name": "c", "image": image}]}}}});
        api.patch("db", &PatchParams::default(), &Patch::Strategic(&patch)).await?;
        kubectl(&cluster, &["rollout", "status", "sts/db", "--timeout=60s"]).await?;
    }
    let revisions: Api<ControllerRevision> = Api::namespaced(c.clone(), NS);
    eventually(WAIT, "one revision left", || async {
        let revs = revisions.list(&ListParams::default().labels("app=db")).await?.items;
        Ok((revs.len() == 1 && revs[0].revision == 3).then_some(()))
    })
    .await?;

    // whenDeleted Delete: the claims are owned by the set and go with it.
    api.delete("db", &DeleteParams::default()).await?;
    eventually(WAIT, "claims deleted with the set", || async {
        let left = claims.list(&ListParams::default()).await?.items.iter().filter(|c| c.metadata.deletion_timestamp.is_none()).count();
        Ok((left == 0).then_some(()))
    })
    .await?;
    Ok(())
}
