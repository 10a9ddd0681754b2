//! The core controllers against an in-process cluster: garbage collection (orphan,
//! background, foreground, owners by uid), namespace deletion (also through the stock
//! kubectl), default service accounts, Endpoints and EndpointSlices following pod
//! readiness, node IPAM and the node lifecycle (unreachable taints and evictions), and
//! claims that cannot be bound saying why in `kubectl describe pvc`.

use std::time::Duration;

use anyhow::Context as _;
use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Endpoints, Namespace, Node, Pod, Service, ServiceAccount};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::ResourceExt;
use rkube_tests::cluster::{eventually, Cluster};
use rkube_tests::fakenode::{create_node, run_fake_kubelet, NodeShape};
use serde_json::json;
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(30);

fn from_json<T: k8s_openapi::serde::de::DeserializeOwned>(v: serde_json::Value) -> anyhow::Result<T> {
    Ok(serde_json::from_value(v)?)
}

async fn create_ns(client: &kube::Client, name: &str) -> anyhow::Result<()> {
    let api: Api<Namespace> = Api::all(client.clone());
    api.create(&PostParams::default(), &from_json(json!({"metadata": {"name": name}}))?).await?;
    Ok(())
}

async fn create_rs(client: &kube::Client, ns: &str, name: &str) -> anyhow::Result<ReplicaSet> {
    let api: Api<ReplicaSet> = Api::namespaced(client.clone(), ns);
    let rs = json!({
        "metadata": {"name": name},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}}, "spec": {"containers": [{"name": "c", "image": "busybox"}]}},
        },
    });
    Ok(api.create(&PostParams::default(), &from_json(rs)?).await?)
}

/// A pod owned by `owner` (as a ReplicaSet controller makes them), not on any node.
async fn create_owned_pod(client: &kube::Client, ns: &str, name: &str, owner: &ReplicaSet, extra_meta: serde_json::Value) -> anyhow::Result<Pod> {
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    let mut pod = json!({
        "metadata": {
            "name": name,
            "labels": {"app": owner.name_any()},
            "ownerReferences": [{
                "apiVersion": "apps/v1", "kind": "ReplicaSet", "name": owner.name_any(),
                "uid": owner.uid().unwrap_or_default(), "controller": true, "blockOwnerDeletion": true,
            }],
        },
        "spec": {"containers": [{"name": "c", "image": "busybox"}]},
    });
    if let (Some(meta), Some(extra)) = (pod["metadata"].as_object_mut(), extra_meta.as_object()) {
        for (k, v) in extra {
            meta.insert(k.clone(), v.clone());
        }
    }
    Ok(api.create(&PostParams::default(), &from_json(pod)?).await?)
}

async fn gone<K>(api: &Api<K>, name: &str) -> anyhow::Result<Option<()>>
where
    K: kube::Resource + Clone + k8s_openapi::serde::de::DeserializeOwned + std::fmt::Debug,
{
    Ok(api.get_opt(name).await?.is_none().then_some(()))
}

#[tokio::test]
async fn orphan_deletion_leaves_pods_without_owner_references() -> anyhow::Result<()> {
    let cluster = Cluster::start().await?;
    let _cm = cluster.start_controller_manager(&["garbagecollector"], false);
    let rs = create_rs(&cluster.client, "default", "orphans").await?;
    for i in 0..2 {
        create_owned_pod(&cluster.client, "default", &format!("orphans-{i}"), &rs, json!({})).await?;
    }
    let rss: Api<ReplicaSet> = Api::namespaced(cluster.client.clone(), "default");
    rss.delete("orphans", &DeleteParams::orphan()).await?;
    eventually(WAIT, "the orphaned ReplicaSet to go", || gone(&rss, "orphans")).await?;
    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), "default");
    for i in 0..2 {
        let pod = pods.get(&format!("orphans-{i}")).await.context("an orphaned pod must stay")?;
        assert!(pod.owner_references().is_empty(), "owner references left: {:?}", pod.owner_references());
    }
    Ok(())
}

#[tokio::test]
async fn background_deletion_deletes_dependents() -> anyhow::Result<()> {
    let cluster = Cluster::start().await?;
    let _cm = cluster.start_controller_manager(&["garbagecollector"], false);
    let rs = create_rs(&cluster.client, "default", "bg").await?;
    for i in 0..2 {
        create_owned_pod(&cluster.client, "default", &format!("bg-{i}"), &rs, json!({})).await?;
    }
    let rss: Api<ReplicaSet> = Api::namespaced(cluster.client.clone(), "default");
    rss.delete("bg", &DeleteParams::background()).await?;
    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), "default");
    for name in ["bg-0", "bg-1"] {
        eventually(WAIT, "a dependent pod to be collected", || gone(&pods, name)).await?;
    }
    Ok(())
}

#[tokio::test]
async fn foreground_deletion_deletes_dependents_before_the_owner() -> anyhow::Result<()> {
    let cluster = Cluster::start().await?;
    let _cm = cluster.start_controller_manager(&["garbagecollector"], false);
    let rs = create_rs(&cluster.client, "default", "fg").await?;
    create_owned_pod(&cluster.client, "default", "fg-0", &rs, json!({})).await?;
    // This one holds on with a finalizer of its own, so the owner must wait for it.
    create_owned_pod(&cluster.client, "default", "fg-1", &rs, json!({"finalizers": ["example.com/hold"]})).await?;
    let rss: Api<ReplicaSet> = Api::namespaced(cluster.client.clone(), "default");
    rss.delete("fg", &DeleteParams::foreground()).await?;
    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), "default");
    eventually(WAIT, "the free dependent to go", || gone(&pods, "fg-0")).await?;
    eventually(WAIT, "the held dependent to be marked for deletion", || async {
        Ok(pods.get("fg-1").await?.metadata.deletion_timestamp.map(|_| ()))
    })
    .await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let owner = rss.get("fg").await.context("the owner must wait for its blocking dependent")?;
    assert!(owner.finalizers().iter().any(|f| f == "foregroundDeletion"), "{:?}", owner.finalizers());
    pods.patch("fg-1", &PatchParams::default(), &Patch::Merge(json!({"metadata": {"finalizers": null}}))).await?;
    eventually(WAIT, "the held dependent to go", || gone(&pods, "fg-1")).await?;
    eventually(WAIT, "the owner to go after its dependents", || gone(&rss, "fg")).await?;
    Ok(())
}

#[tokio::test]
async fn owners_are_matched_by_uid_not_name() -> anyhow::Result<()> {
    let cluster = Cluster::start().await?;
    let _cm = cluster.start_controller_manager(&["garbagecollector"], false);
    let rs = create_rs(&cluster.client, "default", "same-name").await?;
    let pod = create_owned_pod(&cluster.client, "default", "kept", &rs, json!({})).await?;
    // An owner of the same name but another uid: the old one is gone.
    let mut stale = rs.clone();
    stale.metadata.uid = Some("00000000-0000-0000-0000-000000000000".into());
    create_owned_pod(&cluster.client, "default", "stale", &stale, json!({})).await?;
    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), "default");
    eventually(WAIT, "the pod of a vanished owner uid to be collected", || gone(&pods, "stale")).await?;
    let kept = pods.get("kept").await.context("the pod of a live owner must stay")?;
    assert_eq!(kept.uid(), pod.uid());
    Ok(())
}

async fn fill_namespace(client: &kube::Client, ns: &str) -> anyhow::Result<()> {
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    cms.create(&PostParams::default(), &from_json(json!({"metadata": {"name": "cfg"}, "data": {"a": "b"}}))?).await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    pods.create(&PostParams::default(), &from_json(json!({"metadata": {"name": "p", "labels": {"app": "x"}}, "spec": {"containers": [{"name": "c", "image": "busybox"}]}}))?).await?;
    let svcs: Api<Service> = Api::namespaced(client.clone(), ns);
    svcs.create(&PostParams::default(), &from_json(json!({"metadata": {"name": "svc"}, "spec": {"selector": {"app": "x"}, "ports": [{"port": 80}]}}))?).await?;
    let deploys: Api<k8s_openapi::api::apps::v1::Deployment> = Api::namespaced(client.clone(), ns);
    let d = json!({
        "metadata": {"name": "web"},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "web"}}, "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "c", "image": "busybox"}]}}},
    });
    deploys.create(&PostParams::default(), &from_json(d)?).await?;
    Ok(())
}

#[tokio::test]
async fn deleting_a_namespace_empties_it_and_then_removes_it() -> anyhow::Result<()> {
    let cluster = Cluster::start().await?;
    let _cm = cluster.start_controller_manager(&["namespace", "garbagecollector", "serviceaccount", "endpoint", "endpointslice"], false);
    create_ns(&cluster.client, "demo").await?;
    fill_namespace(&cluster.client, "demo").await?;
    let nss: Api<Namespace> = Api::all(cluster.client.clone());
    nss.delete("demo", &DeleteParams::default()).await?;
    eventually(WAIT, "namespace demo to disappear", || gone(&nss, "demo")).await?;
    let cms: Api<ConfigMap> = Api::namespaced(cluster.client.clone(), "demo");
    assert!(cms.list(&ListParams::default()).await?.items.is_empty());
    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), "demo");
    assert!(pods.list(&ListParams::default()).await?.items.is_empty());

    // The stock kubectl waits for the namespace to be gone, and returns.
    create_ns(&cluster.client, "demo2").await?;
    fill_namespace(&cluster.client, "demo2").await?;
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new("kubectl").args(["delete", "ns", "demo2", "--timeout=50s"]).env("KUBECONFIG", &cluster.kubeconfig).output(),
    )
    .await
    .context("kubectl delete ns did not return")??;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "kubectl failed: {stdout} {}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("namespace \"demo2\" deleted"), "{stdout}");
    assert!(nss.get_opt("demo2").await?.is_none());
    Ok(())
}

#[tokio::test]
async fn every_namespace_gets_a_default_service_account() -> anyhow::Result<()> {
    let cluster = Cluster::start().await?;
    let _cm = cluster.start_controller_manager(&["serviceaccount"], false);
    create_ns(&cluster.client, "team-a").await?;
    let sas: Api<ServiceAccount> = Api::namespaced(cluster.client.clone(), "team-a");
    let first = eventually(WAIT, "the default service account", || async { Ok(sas.get_opt("default").await?) }).await?;
    sas.delete("default", &DeleteParams::default()).await?;
    eventually(WAIT, "the default service account to come back", || async {
        Ok(sas.get_opt("default").await?.filter(|sa| sa.uid() != first.uid()))
    })
    .await?;
    let kube_system: Api<ServiceAccount> = Api::namespaced(cluster.client.clone(), "kube-system");
    eventually(WAIT, "kube-system's default service account", || async { Ok(kube_system.get_opt("default").await?) }).await?;
    Ok(())
}

async fn create_running_pod(client: &kube::Client, name: &str, node: &str, app: &str) -> anyhow::Result<()> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let pod = json!({
        "metadata": {"name": name, "labels": {"app": app}},
        "spec": {"nodeName": node, "containers": [{"name": "c", "image": "busybox", "ports": [{"name": "http", "containerPort": 8080}]}]},
    });
    pods.create(&PostParams::default(), &from_json(pod)?).await?;
    Ok(())
}

fn endpoints_ips(ep: &Endpoints) -> (Vec<String>, Vec<String>, Vec<i32>) {
    let subsets = ep.subsets.clone().unwrap_or_default();
    let ready = subsets.iter().flat_map(|s| s.addresses.clone().unwrap_or_default()).map(|a| a.ip).collect();
    let not_ready = subsets.iter().flat_map(|s| s.not_ready_addresses.clone().unwrap_or_default()).map(|a| a.ip).collect();
    let ports = subsets.iter().flat_map(|s| s.ports.clone().unwrap_or_default()).map(|p| p.port).collect();
    (ready, not_ready, ports)
}

#[tokio::test]
async fn endpoints_and_slices_follow_pod_readiness() -> anyhow::Result<()> {
    let cluster = Cluster::start().await?;
    let _cm = cluster.start_controller_manager(&["endpoint", "endpointslice", "garbagecollector"], false);
    create_node(&cluster.client, "node-1", &NodeShape::default()).await?;
    run_fake_kubelet(cluster.client.clone(), vec!["node-1".into()], cluster.shutdown.child_token());
    create_running_pod(&cluster.client, "web-0", "node-1", "web").await?;
    create_running_pod(&cluster.client, "web-1", "node-1", "web").await?;
    let svcs: Api<Service> = Api::namespaced(cluster.client.clone(), "default");
    let svc = json!({"metadata": {"name": "web", "labels": {"tier": "front"}}, "spec": {"selector": {"app": "web"}, "ports": [{"name": "http", "port": 80, "targetPort": "http"}]}});
    let svc: Service = svcs.create(&PostParams::default(), &from_json(svc)?).await?;
    let headless = json!({"metadata": {"name": "web-headless"}, "spec": {"clusterIP": "None", "selector": {"app": "web"}, "ports": [{"port": 8080}]}});
    svcs.create(&PostParams::default(), &from_json(headless)?).await?;
    // A Service without a selector: its Endpoints are the user's.
    svcs.create(&PostParams::default(), &from_json(json!({"metadata": {"name": "external"}, "spec": {"ports": [{"port": 5432}]}}))?).await?;
    let eps: Api<Endpoints> = Api::namespaced(cluster.client.clone(), "default");
    let manual = json!({"metadata": {"name": "external"}, "subsets": [{"addresses": [{"ip": "192.0.2.10"}], "ports": [{"port": 5432}]}]});
    eps.create(&PostParams::default(), &from_json(manual)?).await?;

    let ep = eventually(WAIT, "two ready addresses on the named port", || async {
        Ok(eps.get_opt("web").await?.filter(|e| {
            let (ready, not_ready, ports) = endpoints_ips(e);
            ready.len() == 2 && not_ready.is_empty() && ports == vec![8080]
        }))
    })
    .await?;
    assert_eq!(ep.labels().get("tier").map(String::as_str), Some("front"));
    eventually(WAIT, "headless endpoints", || async {
        Ok(eps.get_opt("web-headless").await?.filter(|e| endpoints_ips(e).0.len() == 2))
    })
    .await?;

    let slices: Api<EndpointSlice> = Api::namespaced(cluster.client.clone(), "default");
    let lp = ListParams::default().labels("kubernetes.io/service-name=web");
    let slice = eventually(WAIT, "an EndpointSlice with two ready endpoints", || async {
        let list = slices.list(&lp).await?;
        Ok(list.items.into_iter().find(|s| s.endpoints.iter().filter(|e| e.conditions.as_ref().and_then(|c| c.ready) == Some(true)).count() == 2))
    })
    .await?;
    assert_eq!(slice.labels().get("endpointslice.kubernetes.io/managed-by").map(String::as_str), Some("endpointslice-controller.k8s.io"));
    assert_eq!(slice.address_type, "IPv4");
    assert_eq!(slice.ports.as_ref().and_then(|p| p.first()).and_then(|p| p.port), Some(8080));
    let owner = slice.owner_references().first().cloned().context("slices are owned by their Service")?;
    assert_eq!((owner.kind.as_str(), Some(owner.uid)), ("Service", svc.uid()));

    // web-0 stops being Ready.
    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), "default");
    let web0 = pods.get("web-0").await?;
    let ip0 = web0.status.as_ref().and_then(|s| s.pod_ip.clone()).unwrap_or_default();
    let conditions: Vec<serde_json::Value> = web0
        .status
        .as_ref()
        .and_then(|s| s.conditions.clone())
        .unwrap_or_default()
        .into_iter()
        .map(|mut c| {
            if c.type_ == "Ready" || c.type_ == "ContainersReady" {
                c.status = "False".into();
            }
            serde_json::to_value(c).unwrap_or_default()
        })
        .collect();
    pods.patch_status("web-0", &PatchParams::default(), &Patch::Merge(json!({"status": {"conditions": conditions}}))).await?;
    eventually(WAIT, "web-0 under notReadyAddresses", || async {
        Ok(eps.get_opt("web").await?.filter(|e| {
            let (ready, not_ready, _) = endpoints_ips(e);
            ready.len() == 1 && not_ready == vec![ip0.clone()]
        }))
    })
    .await?;
    eventually(WAIT, "web-0 not ready nor serving in the slice", || async {
        let list = slices.list(&lp).await?;
        Ok(list.items.iter().flat_map(|s| s.endpoints.iter()).find(|e| e.addresses == vec![ip0.clone()]).and_then(|e| {
            let c = e.conditions.clone().unwrap_or_default();
            (c.ready == Some(false) && c.serving == Some(false) && c.terminating == Some(false)).then_some(())
        }))
    })
    .await?;

    let external = eps.get("external").await?;
    assert_eq!(endpoints_ips(&external).0, vec!["192.0.2.10".to_string()]);
    let external_slices = slices.list(&ListParams::default().labels("kubernetes.io/service-name=external")).await?;
    assert!(external_slices.items.is_empty());
    Ok(())
}

fn pod_cidr(node: &Node) -> Option<String> {
    node.spec.as_ref().and_then(|s| s.pod_cidr.clone())
}

#[tokio::test]
async fn node_ipam_gives_each_node_its_own_range() -> anyhow::Result<()> {
    let cluster = Cluster::start().await?;
    let cm = cluster.start_controller_manager(&["nodeipam"], false);
    let nodes: Api<Node> = Api::all(cluster.client.clone());
    for name in ["n1", "n2", "n3"] {
        create_node(&cluster.client, name, &NodeShape::default()).await?;
    }
    let mut cidrs = Vec::new();
    for name in ["n1", "n2", "n3"] {
        let node = eventually(WAIT, "a podCIDR", || async { Ok(nodes.get(name).await.ok().filter(|n| pod_cidr(n).is_some())) }).await?;
        let spec = node.spec.clone().unwrap_or_default();
        assert_eq!(spec.pod_cidrs, spec.pod_cidr.clone().map(|c| vec![c]));
        cidrs.push(pod_cidr(&node).unwrap_or_default());
    }
    // A restarted controller-manager remembers what the nodes hold.
    cm.cancel();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let _cm = cluster.start_controller_manager(&["nodeipam"], false);
    create_node(&cluster.client, "n4", &NodeShape::default()).await?;
    let n4 = eventually(WAIT, "n4's podCIDR", || async { Ok(nodes.get("n4").await.ok().filter(|n| pod_cidr(n).is_some())) }).await?;
    cidrs.push(pod_cidr(&n4).unwrap_or_default());
    let mut unique = cidrs.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), 4, "{cidrs:?}");
    assert!(cidrs.iter().all(|c| c.starts_with("10.42.") && c.ends_with(".0/24")), "{cidrs:?}");
    Ok(())
}

async fn renew_lease(client: &kube::Client, node: &str) -> anyhow::Result<()> {
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    let now = k8s_openapi::jiff::Timestamp::now().to_string();
    let lease = json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": node, "namespace": "kube-node-lease"},
        "spec": {"holderIdentity": node, "leaseDurationSeconds": 40, "renewTime": now},
    });
    leases.patch(node, &PatchParams::apply("fake-kubelet").force(), &Patch::Apply(lease)).await?;
    Ok(())
}

fn ready_status(node: &Node) -> Option<(String, Option<String>)> {
    let c = node.status.as_ref()?.conditions.as_ref()?.iter().find(|c| c.type_ == "Ready")?;
    Some((c.status.clone(), c.reason.clone()))
}

fn has_taint(node: &Node, key: &str, effect: &str) -> bool {
    node.spec.as_ref().and_then(|s| s.taints.as_ref()).is_some_and(|ts| ts.iter().any(|t| t.key == key && t.effect == effect))
}

#[tokio::test]
async fn a_silent_node_goes_unknown_is_tainted_and_loses_its_pods() -> anyhow::Result<()> {
    let cluster = Cluster::start().await?;
    let config = controller_manager::Config {
        kubeconfig: Some(cluster.kubeconfig.clone()),
        controllers: vec!["nodelifecycle".into()],
        leader_elect: false,
        node_monitor_grace_period: Duration::from_secs(2),
        ..Default::default()
    };
    let cm = cluster.shutdown.child_token();
    let token = cm.clone();
    tokio::spawn(async move { controller_manager::run(config, token).await });
    create_node(&cluster.client, "quiet", &NodeShape::default()).await?;
    run_fake_kubelet(cluster.client.clone(), vec!["quiet".into()], cluster.shutdown.child_token());
    let renewing = CancellationToken::new();
    {
        let client = cluster.client.clone();
        let stop = renewing.clone();
        renew_lease(&client, "quiet").await?;
        tokio::spawn(async move {
            while !stop.is_cancelled() {
                let _ = renew_lease(&client, "quiet").await;
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        });
    }
    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), "default");
    let pod = json!({
        "metadata": {"name": "tolerant"},
        "spec": {
            "nodeName": "quiet",
            "containers": [{"name": "c", "image": "busybox"}],
            "tolerations": [{"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 2}],
        },
    });
    pods.create(&PostParams::default(), &from_json(pod)?).await?;
    let nodes: Api<Node> = Api::all(cluster.client.clone());
    // While the lease is renewed, the node stays Ready well past the grace period.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let node = nodes.get("quiet").await?;
    assert_eq!(ready_status(&node).map(|s| s.0), Some("True".into()));
    assert!(!has_taint(&node, "node.kubernetes.io/unreachable", "NoExecute"));

    renewing.cancel();
    let silenced = tokio::time::Instant::now();
    let node = eventually(WAIT, "the node to go Unknown and be tainted", || async {
        let n = nodes.get("quiet").await?;
        let unknown = ready_status(&n) == Some(("Unknown".into(), Some("NodeStatusUnknown".into())));
        Ok((unknown && has_taint(&n, "node.kubernetes.io/unreachable", "NoExecute") && has_taint(&n, "node.kubernetes.io/unreachable", "NoSchedule")).then_some(n))
    })
    .await?;
    let message = node.status.as_ref().and_then(|s| s.conditions.as_ref()).and_then(|cs| cs.iter().find(|c| c.type_ == "Ready")).and_then(|c| c.message.clone());
    assert_eq!(message.as_deref(), Some("Kubelet stopped posting node status."));
    eventually(WAIT, "the pod to be evicted after its tolerationSeconds", || gone(&pods, "tolerant")).await?;
    assert!(silenced.elapsed() >= Duration::from_secs(3), "evicted too early: {:?}", silenced.elapsed());

    // The kubelet comes back: the taints go.
    let back = CancellationToken::new();
    {
        let client = cluster.client.clone();
        let stop = back.clone();
        tokio::spawn(async move {
            while !stop.is_cancelled() {
                let _ = renew_lease(&client, "quiet").await;
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        });
    }
    let now = k8s_openapi::jiff::Timestamp::now().to_string();
    let ready = json!({"status": {"conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "back", "lastHeartbeatTime": now, "lastTransitionTime": now}]}});
    nodes.patch_status("quiet", &PatchParams::default(), &Patch::Merge(ready)).await?;
    eventually(WAIT, "the taints to be removed", || async {
        let n = nodes.get("quiet").await?;
        Ok((!has_taint(&n, "node.kubernetes.io/unreachable", "NoExecute") && !has_taint(&n, "node.kubernetes.io/unreachable", "NoSchedule")).then_some(()))
    })
    .await?;
    back.cancel();
    cm.cancel();
    Ok(())
}

async fn kubectl(cluster: &Cluster, args: &[&str]) -> anyhow::Result<String> {
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new("kubectl").args(args).env("KUBECONFIG", &cluster.kubeconfig).output(),
    )
    .await
    .with_context(|| format!("kubectl {args:?} did not return"))??;
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    anyhow::ensure!(out.status.success(), "kubectl {args:?} failed: {stdout} {}", String::from_utf8_lossy(&out.stderr));
    Ok(stdout)
}

#[tokio::test]
async fn kubectl_cascades_through_a_deployment_with_every_controller() -> anyhow::Result<()> {
    let cluster = Cluster::start().await?;
    let _cm = cluster.start_controller_manager(&["*"], false);
    create_node(&cluster.client, "node-1", &NodeShape::default()).await?;
    rkube_tests::fakenode::run_fake_scheduler(cluster.client.clone(), vec!["node-1".into()], cluster.shutdown.child_token());
    run_fake_kubelet(cluster.client.clone(), vec!["node-1".into()], cluster.shutdown.child_token());
    kubectl(&cluster, &["create", "deployment", "web", "--image=busybox", "--replicas=2"]).await?;
    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), "default");
    let lp = ListParams::default().labels("app=web");
    eventually(WAIT, "two running pods", || async {
        let list = pods.list(&lp).await?;
        Ok((list.items.iter().filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")).count() == 2).then_some(()))
    })
    .await?;
    let rss: Api<ReplicaSet> = Api::namespaced(cluster.client.clone(), "default");
    let rs = rss.list(&ListParams::default().labels("app=web")).await?.items.into_iter().next().context("the deployment's ReplicaSet")?;
    kubectl(&cluster, &["delete", "deploy", "web", "--cascade=foreground"]).await?;
    let deploys: Api<k8s_openapi::api::apps::v1::Deployment> = Api::namespaced(cluster.client.clone(), "default");
    eventually(WAIT, "the deployment to go", || gone(&deploys, "web")).await?;
    let rs_name = rs.name_any();
    eventually(WAIT, "its ReplicaSet to go", || gone(&rss, &rs_name)).await?;
    eventually(WAIT, "its pods to go", || async { Ok(pods.list(&lp).await?.items.is_empty().then_some(())) }).await?;

    kubectl(&cluster, &["create", "deployment", "keep", "--image=busybox", "--replicas=2"]).await?;
    let keep = ListParams::default().labels("app=keep");
    eventually(WAIT, "two pods of keep", || async { Ok((pods.list(&keep).await?.items.len() == 2).then_some(())) }).await?;
    kubectl(&cluster, &["delete", "deploy", "keep", "--cascade=orphan"]).await?;
    eventually(WAIT, "the deployment keep to go", || gone(&deploys, "keep")).await?;
    let orphaned = eventually(WAIT, "keep's ReplicaSet without owners", || async {
        let list = rss.list(&ListParams::default().labels("app=keep")).await?;
        Ok(list.items.into_iter().next().filter(|rs| rs.owner_references().is_empty()))
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(pods.list(&keep).await?.items.len(), 2, "orphaned pods stay");
    assert!(rss.get_opt(&orphaned.name_any()).await?.is_some());
    Ok(())
}

#[tokio::test]
async fn pending_claims_say_why_in_their_events() -> anyhow::Result<()> {
    let cluster = Cluster::start().await?;
    cluster.start_controller_manager(&["persistentvolume-binder"], false);
    let claims: Api<k8s_openapi::api::core::v1::PersistentVolumeClaim> = Api::namespaced(cluster.client.clone(), "default");
    for (name, class) in [("no-class", json!("")), ("missing-class", json!("fast-ssd"))] {
        let claim = json!({
            "metadata": {"name": name},
            "spec": {"storageClassName": class, "accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}},
        });
        claims.create(&PostParams::default(), &from_json(claim)?).await?;
    }
    cluster
        .describe_shows(
            &["pvc", "no-class"],
            &[("FailedBinding", "persistentvolume-controller", "no persistent volumes available for this claim and no storage class is set")],
        )
        .await?;
    cluster
        .describe_shows(
            &["pvc", "missing-class"],
            &[("ProvisioningFailed", "persistentvolume-controller", "storageclass.storage.k8s.io \"fast-ssd\" not found")],
        )
        .await?;
    // Still Pending, as on Kubernetes.
    for name in ["no-class", "missing-class"] {
        let phase = claims.get(name).await?.status.and_then(|s| s.phase).unwrap_or_default();
        assert_eq!(phase, "Pending", "{name}");
    }
    Ok(())
}
