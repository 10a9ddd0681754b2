//! Workload controllers against an in-process cluster with fake nodes, the fake kubelet
//! and a fake binder: Deployments scale, roll out within maxSurge/maxUnavailable (checked
//! at every watched step), roll back onto the old ReplicaSet, restart, and Recreate;
//! ReplicationControllers and ReplicaSets keep their replicas, replace deleted pods and
//! adopt orphans; the stock `kubectl rollout status/history/undo` work against it.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use futures::StreamExt;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{Pod, ReplicationController};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use kube::ResourceExt;
use rkube_tests::cluster::{eventually, Cluster};
use rkube_tests::fakenode::{create_node, run_fake_kubelet, run_fake_scheduler, NodeShape};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(60);
const NS: &str = "default";

async fn setup() -> anyhow::Result<Cluster> {
    let cluster = Cluster::start().await?;
    let nodes = vec!["node-a".to_string(), "node-b".to_string()];
    for n in &nodes {
        create_node(&cluster.client, n, &NodeShape::default()).await?;
    }
    run_fake_kubelet(cluster.client.clone(), nodes.clone(), cluster.shutdown.clone());
    run_fake_scheduler(cluster.client.clone(), nodes, cluster.shutdown.clone());
    cluster.start_controller_manager(&["replicaset", "replicationcontroller", "deployment"], false);
    Ok(cluster)
}

fn from_json<T: k8s_openapi::serde::de::DeserializeOwned>(v: serde_json::Value) -> anyhow::Result<T> {
    Ok(serde_json::from_value(v)?)
}

fn is_ready(p: &Pod) -> bool {
    p.status.as_ref().and_then(|s| s.conditions.as_ref()).is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn is_active(p: &Pod) -> bool {
    p.metadata.deletion_timestamp.is_none() && !matches!(p.status.as_ref().and_then(|s| s.phase.as_deref()), Some("Succeeded" | "Failed"))
}

fn image_of(p: &Pod) -> String {
    p.spec.as_ref().and_then(|s| s.containers.first()).and_then(|c| c.image.clone()).unwrap_or_default()
}

async fn create_deployment(client: &kube::Client, name: &str, replicas: i32, strategy: serde_json::Value) -> anyhow::Result<Deployment> {
    let api: Api<Deployment> = Api::namespaced(client.clone(), NS);
    let d = json!({
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "strategy": strategy,
            "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}}, "spec": {"containers": [{"name": "c", "image": "busybox:1"}]}},
        },
    });
    Ok(api.create(&PostParams::default(), &from_json(d)?).await?)
}

/// Active pods with label app=`app`.
async fn active_pods(client: &kube::Client, app: &str) -> anyhow::Result<Vec<Pod>> {
    let api: Api<Pod> = Api::namespaced(client.clone(), NS);
    Ok(api.list(&ListParams::default().labels(&format!("app={app}"))).await?.items.into_iter().filter(is_active).collect())
}

/// Waits until `n` active, Ready pods with image `image` and nothing else remain.
async fn wait_running(client: &kube::Client, app: &str, n: usize, image: &str) -> anyhow::Result<Vec<Pod>> {
    eventually(WAIT, &format!("{n} ready pods of {app} with {image}"), || async {
        let pods = active_pods(client, app).await?;
        let ok = pods.len() == n && pods.iter().all(|p| is_ready(p) && image_of(p) == image);
        Ok(ok.then_some(pods))
    })
    .await
}

/// Waits until the deployment's rollout is complete (as `kubectl rollout status` decides).
async fn wait_complete(client: &kube::Client, name: &str) -> anyhow::Result<Deployment> {
    let api: Api<Deployment> = Api::namespaced(client.clone(), NS);
    eventually(WAIT, &format!("deployment {name} complete"), || async {
        let d = api.get(name).await?;
        let want = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
        let s = d.status.clone().unwrap_or_default();
        let done = s.observed_generation >= d.metadata.generation
            && s.updated_replicas.unwrap_or(0) == want
            && s.replicas.unwrap_or(0) == want
            && s.available_replicas.unwrap_or(0) == want;
        Ok(done.then_some(d))
    })
    .await
}

async fn replicasets(client: &kube::Client, app: &str) -> anyhow::Result<Vec<ReplicaSet>> {
    let api: Api<ReplicaSet> = Api::namespaced(client.clone(), NS);
    let mut list = api.list(&ListParams::default().labels(&format!("app={app}"))).await?.items;
    list.sort_by_key(|r| r.annotations().get("deployment.kubernetes.io/revision").and_then(|v| v.parse::<i64>().ok()).unwrap_or(0));
    Ok(list)
}

fn revision(rs: &ReplicaSet) -> String {
    rs.annotations().get("deployment.kubernetes.io/revision").cloned().unwrap_or_default()
}

async fn set_image(client: &kube::Client, name: &str, image: &str) -> anyhow::Result<()> {
    let api: Api<Deployment> = Api::namespaced(client.clone(), NS);
    let patch = json!({"spec": {"template": {"spec": {"containers": [{"name": "c", "image": image}]}}}});
    api.patch(name, &PatchParams::default(), &Patch::Strategic(&patch)).await?;
    Ok(())
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

#[tokio::test]
async fn deployment_scales_up_and_down() -> anyhow::Result<()> {
    let cluster = setup().await?;
    let client = &cluster.client;
    create_deployment(client, "web", 3, json!({"type": "RollingUpdate"})).await?;
    let pods = wait_running(client, "web", 3, "busybox:1").await?;
    let rss = replicasets(client, "web").await?;
    assert_eq!(rss.len(), 1, "one replica set");
    let rs = &rss[0];
    let hash = rs.labels().get("pod-template-hash").cloned().unwrap_or_default();
    assert_eq!(hash.len(), 10);
    assert_eq!(rs.name_any(), format!("web-{hash}"));
    assert_eq!(revision(rs), "1");
    for p in &pods {
        let name = p.name_any();
        assert!(name.starts_with(&format!("web-{hash}-")) && name.len() == rs.name_any().len() + 6, "pod name {name}");
        assert_eq!(p.labels().get("pod-template-hash"), Some(&hash));
        let owner = p.owner_references().first().cloned().context("pod without owner")?;
        assert_eq!((owner.kind.as_str(), owner.name.as_str(), owner.controller, owner.block_owner_deletion), ("ReplicaSet", rs.name_any().as_str(), Some(true), Some(true)));
    }
    let d = wait_complete(client, "web").await?;
    let conds = d.status.and_then(|s| s.conditions).unwrap_or_default();
    let reason = |t: &str| conds.iter().find(|c| c.type_ == t).and_then(|c| c.reason.clone()).unwrap_or_default();
    assert_eq!(reason("Available"), "MinimumReplicasAvailable");
    assert_eq!(reason("Progressing"), "NewReplicaSetAvailable");
    let out = kubectl(&cluster, &["rollout", "status", "deployment/web", "--timeout=60s"]).await?;
    assert!(out.contains("deployment \"web\" successfully rolled out"), "{out}");

    let api: Api<Deployment> = Api::namespaced(client.clone(), NS);
    for n in [5, 1] {
        api.patch("web", &PatchParams::default(), &Patch::Merge(&json!({"spec": {"replicas": n}}))).await?;
        wait_running(client, "web", n as usize, "busybox:1").await?;
        let d = wait_complete(client, "web").await?;
        assert_eq!(d.status.and_then(|s| s.ready_replicas), Some(n));
        let rss = replicasets(client, "web").await?;
        assert_eq!(rss.len(), 1, "scaling makes no new replica set");
        assert_eq!(rss[0].annotations().get("deployment.kubernetes.io/desired-replicas"), Some(&n.to_string()));
    }

    // `kubectl describe` tells the story as Kubernetes' controllers record it.
    let rs_name = rs.name_any();
    cluster
        .describe_shows(
            &["deployment", "web"],
            &[
                ("ScalingReplicaSet", "deployment-controller", &format!("Scaled up replica set {rs_name} from 0 to 3")),
                ("ScalingReplicaSet", "deployment-controller", &format!("Scaled up replica set {rs_name} to 5 from 3")),
                ("ScalingReplicaSet", "deployment-controller", &format!("Scaled down replica set {rs_name} to 1 from 5")),
            ],
        )
        .await?;
    let first_pod = pods[0].name_any();
    cluster
        .describe_shows(
            &["rs", &rs_name],
            &[("SuccessfulCreate", "replicaset-controller", &format!("Created pod: {first_pod}")), ("SuccessfulDelete", "replicaset-controller", "Deleted pod: ")],
        )
        .await?;
    Ok(())
}

/// What a watcher saw that broke the rollout's bounds.
#[derive(Default)]
struct Observed {
    steps: usize,
    max_total: usize,
    min_available: usize,
    violations: Vec<String>,
}

#[tokio::test]
async fn rolling_update_within_bounds_then_rollback_and_restart() -> anyhow::Result<()> {
    let cluster = setup().await?;
    let client = &cluster.client;
    let (replicas, surge, unavailable) = (4usize, 1usize, 1usize);
    create_deployment(client, "web", 4, json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": "25%"}})).await?;
    wait_running(client, "web", replicas, "busybox:1").await?;
    wait_complete(client, "web").await?;

    // Watch pods and replica sets for the whole rollout; check the bounds at every event.
    let observed = Arc::new(Mutex::new(Observed { min_available: usize::MAX, ..Default::default() }));
    let stop = cluster.shutdown.child_token();
    {
        let obs = observed.clone();
        let stop = stop.clone();
        let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
        let mut stream = watcher(pods, watcher::Config::default().labels("app=web")).boxed();
        let mut seen: BTreeMap<String, Pod> = BTreeMap::new();
        let mut initial = true;
        tokio::spawn(async move {
            loop {
                let ev = tokio::select! { _ = stop.cancelled() => return, ev = stream.next() => ev };
                match ev {
                    Some(Ok(watcher::Event::Init)) => {
                        initial = true;
                        seen.clear();
                    }
                    Some(Ok(watcher::Event::InitApply(p))) => {
                        seen.insert(p.name_any(), p);
                    }
                    Some(Ok(watcher::Event::InitDone)) => initial = false,
                    Some(Ok(watcher::Event::Apply(p))) => {
                        seen.insert(p.name_any(), p);
                    }
                    Some(Ok(watcher::Event::Delete(p))) => {
                        seen.remove(&p.name_any());
                    }
                    Some(Err(_)) => continue,
                    None => return,
                }
                if initial {
                    continue;
                }
                let total = seen.values().filter(|p| is_active(p)).count();
                let available = seen.values().filter(|p| is_active(p) && is_ready(p)).count();
                let mut o = obs.lock().unwrap_or_else(|e| e.into_inner());
                o.steps += 1;
                o.max_total = o.max_total.max(total);
                o.min_available = o.min_available.min(available);
                if total > replicas + surge {
                    o.violations.push(format!("{total} pods > {replicas}+{surge}"));
                }
                if available < replicas - unavailable {
                    o.violations.push(format!("{available} available < {replicas}-{unavailable}"));
                }
            }
        });
    }
    {
        let obs = observed.clone();
        let stop = stop.clone();
        let rss: Api<ReplicaSet> = Api::namespaced(client.clone(), NS);
        let mut stream = watcher(rss, watcher::Config::default().labels("app=web")).boxed();
        let mut seen: BTreeMap<String, i32> = BTreeMap::new();
        tokio::spawn(async move {
            loop {
                let ev = tokio::select! { _ = stop.cancelled() => return, ev = stream.next() => ev };
                match ev {
                    Some(Ok(watcher::Event::Apply(r) | watcher::Event::InitApply(r))) => {
                        seen.insert(r.name_any(), r.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0));
                    }
                    Some(Ok(watcher::Event::Delete(r))) => {
                        seen.remove(&r.name_any());
                    }
                    Some(_) => continue,
                    None => return,
                }
                let sum: i32 = seen.values().sum();
                if sum as usize > replicas + surge {
                    obs.lock().unwrap_or_else(|e| e.into_inner()).violations.push(format!("replica sets want {sum} > {replicas}+{surge}"));
                }
            }
        });
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    set_image(client, "web", "busybox:2").await?;
    wait_running(client, "web", replicas, "busybox:2").await?;
    wait_complete(client, "web").await?;
    let out = kubectl(&cluster, &["rollout", "status", "deployment/web", "--timeout=60s"]).await?;
    assert!(out.contains("successfully rolled out"), "{out}");
    stop.cancel();
    {
        let o = observed.lock().unwrap_or_else(|e| e.into_inner());
        assert!(o.violations.is_empty(), "bounds broken: {:?}", o.violations);
        assert!(o.steps >= replicas * 2, "saw only {} steps", o.steps);
        eprintln!("rollout: {} steps, at most {} pods, at least {} available", o.steps, o.max_total, o.min_available);
    }
    let rss = replicasets(client, "web").await?;
    assert_eq!(rss.len(), 2);
    let (old, new) = (&rss[0], &rss[1]);
    assert_eq!((revision(old).as_str(), revision(new).as_str()), ("1", "2"));
    assert_eq!(old.spec.as_ref().and_then(|s| s.replicas), Some(0));
    let d: Api<Deployment> = Api::namespaced(client.clone(), NS);
    assert_eq!(d.get("web").await?.annotations().get("deployment.kubernetes.io/revision").map(String::as_str), Some("2"));

    let history = kubectl(&cluster, &["rollout", "history", "deployment/web"]).await?;
    let revisions: Vec<&str> = history.lines().skip_while(|l| !l.starts_with("REVISION")).skip(1).filter_map(|l| l.split_whitespace().next()).collect();
    assert_eq!(revisions, ["1", "2"], "{history}");
    let detail = kubectl(&cluster, &["rollout", "history", "deployment/web", "--revision=1"]).await?;
    assert!(detail.contains("busybox:1"), "{detail}");

    // Rollback: kubectl copies the old template back; the old replica set is re-used and
    // becomes revision 3.
    let out = kubectl(&cluster, &["rollout", "undo", "deployment/web"]).await?;
    assert!(out.contains("rolled back"), "{out}");
    wait_running(client, "web", replicas, "busybox:1").await?;
    wait_complete(client, "web").await?;
    let rss = replicasets(client, "web").await?;
    assert_eq!(rss.len(), 2, "rollback made a new replica set: {:?}", rss.iter().map(|r| r.name_any()).collect::<Vec<_>>());
    let current = &rss[1];
    assert_eq!(current.name_any(), old.name_any(), "the old replica set is re-used");
    assert_eq!(revision(current), "3");
    assert_eq!(current.annotations().get("deployment.kubernetes.io/revision-history").map(String::as_str), Some("1"));
    let history = kubectl(&cluster, &["rollout", "history", "deployment/web"]).await?;
    let revisions: Vec<&str> = history.lines().skip_while(|l| !l.starts_with("REVISION")).skip(1).filter_map(|l| l.split_whitespace().next()).collect();
    assert_eq!(revisions, ["2", "3"], "{history}");

    // Restart: a template annotation → a third replica set with the same image.
    kubectl(&cluster, &["rollout", "restart", "deployment/web"]).await?;
    wait_complete(client, "web").await?;
    eventually(WAIT, "restart's replica set takes over", || async {
        let rss = replicasets(client, "web").await?;
        let ok = rss.len() == 3 && rss.last().is_some_and(|r| revision(r) == "4" && r.status.as_ref().and_then(|s| s.available_replicas) == Some(4));
        Ok(ok.then_some(()))
    })
    .await?;
    wait_running(client, "web", replicas, "busybox:1").await?;

    // Paused: a template change makes no replica set until resumed.
    kubectl(&cluster, &["rollout", "pause", "deployment/web"]).await?;
    set_image(client, "web", "busybox:3").await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(replicasets(client, "web").await?.len(), 3, "paused deployment rolled out");
    let paused = d.get("web").await?;
    let reason = paused.status.and_then(|s| s.conditions).unwrap_or_default().into_iter().find(|c| c.type_ == "Progressing").and_then(|c| c.reason);
    assert_eq!(reason.as_deref(), Some("DeploymentPaused"));
    kubectl(&cluster, &["rollout", "resume", "deployment/web"]).await?;
    wait_running(client, "web", replicas, "busybox:3").await?;
    wait_complete(client, "web").await?;
    Ok(())
}

#[tokio::test]
async fn recreate_deletes_old_pods_before_creating_new() -> anyhow::Result<()> {
    let cluster = setup().await?;
    let client = &cluster.client;
    create_deployment(client, "db", 3, json!({"type": "Recreate"})).await?;
    wait_running(client, "db", 3, "busybox:1").await?;
    wait_complete(client, "db").await?;

    let violations = Arc::new(Mutex::new(Vec::<String>::new()));
    let stop = cluster.shutdown.child_token();
    {
        let violations = violations.clone();
        let stop = stop.clone();
        let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
        let mut stream = watcher(pods, watcher::Config::default().labels("app=db")).boxed();
        let mut seen: BTreeMap<String, Pod> = BTreeMap::new();
        tokio::spawn(async move {
            loop {
                let ev = tokio::select! { _ = stop.cancelled() => return, ev = stream.next() => ev };
                match ev {
                    Some(Ok(watcher::Event::Apply(p) | watcher::Event::InitApply(p))) => {
                        if image_of(&p) == "busybox:2" {
                            let old: Vec<String> = seen.values().filter(|o| image_of(o) == "busybox:1").map(|o| o.name_any()).collect();
                            if !old.is_empty() {
                                violations.lock().unwrap_or_else(|e| e.into_inner()).push(format!("{} while old pods exist: {old:?}", p.name_any()));
                            }
                        }
                        seen.insert(p.name_any(), p);
                    }
                    Some(Ok(watcher::Event::Delete(p))) => {
                        seen.remove(&p.name_any());
                    }
                    Some(_) => continue,
                    None => return,
                }
            }
        });
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    set_image(client, "db", "busybox:2").await?;
    wait_running(client, "db", 3, "busybox:2").await?;
    wait_complete(client, "db").await?;
    stop.cancel();
    let v = violations.lock().unwrap_or_else(|e| e.into_inner()).clone();
    assert!(v.is_empty(), "Recreate overlapped: {v:?}");
    let out = kubectl(&cluster, &["rollout", "status", "deployment/db", "--timeout=60s"]).await?;
    assert!(out.contains("successfully rolled out"), "{out}");
    Ok(())
}

#[tokio::test]
async fn replication_controller_keeps_replicas_and_replaces_deleted_pods() -> anyhow::Result<()> {
    let cluster = setup().await?;
    let client = &cluster.client;
    let rcs: Api<ReplicationController> = Api::namespaced(client.clone(), NS);
    let rc = json!({
        "metadata": {"name": "legacy"},
        "spec": {"replicas": 3, "template": {"metadata": {"labels": {"app": "legacy"}}, "spec": {"containers": [{"name": "c", "image": "busybox:1"}]}}},
    });
    rcs.create(&PostParams::default(), &from_json(rc)?).await?;
    let pods = wait_running(client, "legacy", 3, "busybox:1").await?;
    for p in &pods {
        assert!(p.name_any().starts_with("legacy-"));
        assert_eq!(p.owner_references().first().map(|o| o.kind.as_str()), Some("ReplicationController"));
    }
    let victim = pods[0].name_any();
    let api: Api<Pod> = Api::namespaced(client.clone(), NS);
    api.delete(&victim, &DeleteParams::default()).await?;
    let replaced = eventually(WAIT, "the deleted pod replaced", || async {
        let pods = active_pods(client, "legacy").await?;
        let ok = pods.len() == 3 && pods.iter().all(is_ready) && !pods.iter().any(|p| p.name_any() == victim);
        Ok(ok.then_some(pods))
    })
    .await?;
    assert_eq!(replaced.len(), 3);
    let status = eventually(WAIT, "rc status", || async {
        let s = rcs.get("legacy").await?.status.unwrap_or_default();
        Ok((s.ready_replicas == Some(3) && s.available_replicas == Some(3) && s.fully_labeled_replicas == Some(3)).then_some(s))
    })
    .await?;
    assert_eq!(status.replicas, 3);
    // One event per pod made, the replacement's too.
    let replacement = replaced.iter().map(|p| p.name_any()).find(|n| !pods.iter().any(|p| &p.name_any() == n)).context("no new pod")?;
    let mut expected: Vec<String> = pods.iter().map(|p| format!("Created pod: {}", p.name_any())).collect();
    expected.push(format!("Created pod: {replacement}"));
    let lines: Vec<(&str, &str, &str)> = expected.iter().map(|m| ("SuccessfulCreate", "replication-controller", m.as_str())).collect();
    cluster.describe_shows(&["rc", "legacy"], &lines).await?;
    Ok(())
}

#[tokio::test]
async fn replicaset_adopts_orphans_and_releases_relabelled_pods() -> anyhow::Result<()> {
    let cluster = setup().await?;
    let client = &cluster.client;
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    let orphan = json!({
        "metadata": {"name": "orphan", "labels": {"app": "cache"}},
        "spec": {"containers": [{"name": "c", "image": "busybox:1"}]},
    });
    pods.create(&PostParams::default(), &from_json(orphan)?).await?;
    let rss: Api<ReplicaSet> = Api::namespaced(client.clone(), NS);
    let rs = json!({
        "metadata": {"name": "cache"},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "cache"}},
            "template": {"metadata": {"labels": {"app": "cache"}}, "spec": {"containers": [{"name": "c", "image": "busybox:1"}]}},
        },
    });
    let rs = rss.create(&PostParams::default(), &from_json(rs)?).await?;
    let running = wait_running(client, "cache", 2, "busybox:1").await?;
    assert!(running.iter().any(|p| p.name_any() == "orphan"), "the orphan counts as a replica");
    let adopted = pods.get("orphan").await?;
    let owner = adopted.owner_references().first().cloned().context("orphan not adopted")?;
    assert_eq!((owner.uid.as_str(), owner.controller), (rs.uid().unwrap_or_default().as_str(), Some(true)));

    // A pod that stops matching is released and replaced.
    pods.patch("orphan", &PatchParams::default(), &Patch::Merge(&json!({"metadata": {"labels": {"app": "debug"}}}))).await?;
    eventually(WAIT, "the relabelled pod released", || async {
        let p = pods.get("orphan").await?;
        Ok(p.owner_references().is_empty().then_some(()))
    })
    .await?;
    wait_running(client, "cache", 2, "busybox:1").await?;
    assert!(pods.get("orphan").await.is_ok(), "a released pod is not deleted");

    // Scale down removes pods; status follows.
    rss.patch("cache", &PatchParams::default(), &Patch::Merge(&json!({"spec": {"replicas": 1}}))).await?;
    wait_running(client, "cache", 1, "busybox:1").await?;
    eventually(WAIT, "rs status", || async {
        let s = rss.get("cache").await?.status.unwrap_or_default();
        Ok((s.replicas == 1 && s.ready_replicas == Some(1) && s.observed_generation == Some(2)).then_some(()))
    })
    .await?;
    Ok(())
}

#[tokio::test]
async fn progress_deadline_and_revision_history_limit() -> anyhow::Result<()> {
    let cluster = setup().await?;
    let client = &cluster.client;
    let api: Api<Deployment> = Api::namespaced(client.clone(), NS);

    // Pods bound to a node no kubelet runs never get Ready: the deadline passes.
    let stuck = json!({
        "metadata": {"name": "stuck"},
        "spec": {
            "replicas": 2,
            "progressDeadlineSeconds": 2,
            "selector": {"matchLabels": {"app": "stuck"}},
            "template": {"metadata": {"labels": {"app": "stuck"}}, "spec": {"nodeName": "ghost", "containers": [{"name": "c", "image": "busybox:1"}]}},
        },
    });
    api.create(&PostParams::default(), &from_json(stuck)?).await?;
    let d = eventually(WAIT, "ProgressDeadlineExceeded", || async {
        let d = api.get("stuck").await?;
        let conds = d.status.clone().and_then(|s| s.conditions).unwrap_or_default();
        let exceeded = conds.iter().any(|c| c.type_ == "Progressing" && c.status == "False" && c.reason.as_deref() == Some("ProgressDeadlineExceeded"));
        Ok(exceeded.then_some(d))
    })
    .await?;
    let status = d.status.unwrap_or_default();
    assert_eq!(status.unavailable_replicas, Some(2));
    let available = status.conditions.unwrap_or_default().into_iter().find(|c| c.type_ == "Available").context("no Available condition")?;
    assert_eq!((available.status.as_str(), available.reason.as_deref()), ("False", Some("MinimumReplicasUnavailable")));
    let err = kubectl(&cluster, &["rollout", "status", "deployment/stuck", "--timeout=20s"]).await.err().context("rollout status succeeded")?;
    assert!(format!("{err:#}").contains("exceeded its progress deadline"), "{err:#}");

    // revisionHistoryLimit 1: after three rollouts only the current and one old remain.
    let kept = json!({
        "metadata": {"name": "kept"},
        "spec": {
            "replicas": 1,
            "revisionHistoryLimit": 1,
            "selector": {"matchLabels": {"app": "kept"}},
            "template": {"metadata": {"labels": {"app": "kept"}}, "spec": {"containers": [{"name": "c", "image": "busybox:1"}]}},
        },
    });
    api.create(&PostParams::default(), &from_json(kept)?).await?;
    wait_complete(client, "kept").await?;
    for image in ["busybox:2", "busybox:3", "busybox:4"] {
        set_image(client, "kept", image).await?;
        wait_running(client, "kept", 1, image).await?;
        wait_complete(client, "kept").await?;
    }
    let rss = eventually(WAIT, "old replica sets cleaned up", || async {
        let rss = replicasets(client, "kept").await?;
        Ok((rss.len() == 2).then_some(rss))
    })
    .await?;
    assert_eq!(rss.iter().map(revision).collect::<Vec<_>>(), ["3", "4"]);
    Ok(())
}
