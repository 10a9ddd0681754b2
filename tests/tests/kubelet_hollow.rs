//! The kubelet's control loop against a real apiserver, scheduler and controllers, on
//! the fake runtime (hollow nodes): registration and Lease, the node turning Ready once
//! the controller-manager assigns a podCIDR, pods going Running and Ready with an IP
//! from that podCIDR, events, and deletion through the kubelet's graceful path.

use std::time::Duration;

use anyhow::Context as _;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Event, Node, Pod};
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use rkube_tests::cluster::{eventually, Cluster};

/// Starts a hollow kubelet named `name`; returns what stops it and its root directory.
async fn start_hollow_kubelet(cluster: &Cluster, name: &str) -> anyhow::Result<(tokio_util::sync::CancellationToken, std::path::PathBuf)> {
    let root = cluster.dir.path().join(format!("kubelet-{name}"));
    let mut config = kubelet::KubeletConfig::new(name, root.clone());
    config.runtime = kubelet::RuntimeKind::Fake;
    config.port = 0;
    config.address = std::net::Ipv4Addr::LOCALHOST;
    config.node_status_update_frequency = Duration::from_millis(300);
    let runtimes = kubelet::build_runtime(&config).await?;
    let token = cluster.shutdown.child_token();
    let client = cluster.client.clone();
    let t = token.clone();
    tokio::spawn(async move {
        if let Err(e) = kubelet::run_with(config, client, runtimes, t).await {
            eprintln!("hollow kubelet failed: {e:#}");
        }
    });
    Ok((token, root))
}

fn ready(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .map(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        .unwrap_or(false)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hollow_kubelet_registers_runs_and_deletes_pods() -> anyhow::Result<()> {
    let cluster = Cluster::start().await?;
    let _cm = cluster.start_controller_manager(&["*"], false);
    let sched_token = cluster.shutdown.child_token();
    let sched_config = scheduler::Config { kubeconfig: Some(cluster.kubeconfig.clone()), leader_elect: false, ..Default::default() };
    tokio::spawn(scheduler::run(sched_config, sched_token));
    let (_kubelet, root) = start_hollow_kubelet(&cluster, "hollow-1").await?;

    let nodes: Api<Node> = Api::all(cluster.client.clone());
    let node = eventually(Duration::from_secs(20), "node hollow-1 Ready with a podCIDR", || {
        let nodes = nodes.clone();
        async move { Ok(nodes.get_opt("hollow-1").await?.filter(|n| ready(n) && n.spec.as_ref().and_then(|s| s.pod_cidr.clone()).is_some())) }
    })
    .await?;
    // `kubectl describe node` shows the kubelet starting and the node's conditions, and
    // the node controller taking the node on, as on Kubernetes.
    cluster
        .describe_shows(
            &["node", "hollow-1"],
            &[
                ("Starting", "kubelet", "Starting kubelet."),
                ("NodeHasSufficientMemory", "kubelet", "Node hollow-1 status is now: NodeHasSufficientMemory"),
                ("NodeHasNoDiskPressure", "kubelet", "Node hollow-1 status is now: NodeHasNoDiskPressure"),
                ("NodeHasSufficientPID", "kubelet", "Node hollow-1 status is now: NodeHasSufficientPID"),
                ("NodeReady", "kubelet", "Node hollow-1 status is now: NodeReady"),
                ("RegisteredNode", "node-controller", "Node hollow-1 event: Registered Node hollow-1 in Controller"),
            ],
        )
        .await?;
    // A node that came up NotReady (until its podCIDR is set) and then Ready shows only
    // its NodeReady, as on Kubernetes: a Ready condition's first status is not an event.
    let events: Api<Event> = Api::namespaced(cluster.client.clone(), "default");
    let not_ready = events.list(&ListParams::default().fields("involvedObject.name=hollow-1,reason=NodeNotReady")).await?;
    assert!(not_ready.items.is_empty(), "a fresh node records no NodeNotReady: {:?}", not_ready.items);
    // Conditions carry when they last changed, and a heartbeat does not move it.
    let times = |n: &Node| -> Vec<(String, Option<String>, Option<String>)> {
        let conditions = n.status.as_ref().and_then(|s| s.conditions.clone()).unwrap_or_default();
        conditions.into_iter().map(|c| (c.type_, c.last_transition_time.map(|t| t.0.to_string()), c.last_heartbeat_time.map(|t| t.0.to_string()))).collect()
    };
    let first = times(&node);
    assert!(first.iter().all(|(_, transition, _)| transition.is_some()), "every condition has a lastTransitionTime: {first:?}");
    let later = eventually(Duration::from_secs(20), "a newer heartbeat", || {
        let nodes = nodes.clone();
        let first = first.clone();
        async move {
            let n = nodes.get("hollow-1").await?;
            let later = times(&n);
            Ok((later.iter().map(|c| &c.2).ne(first.iter().map(|c| &c.2))).then_some(later))
        }
    })
    .await?;
    let transitions = |v: &[(String, Option<String>, Option<String>)]| v.iter().map(|c| (c.0.clone(), c.1.clone())).collect::<Vec<_>>();
    assert_eq!(transitions(&first), transitions(&later), "a heartbeat leaves the transition times alone");

    // The node controller marks the node Unknown (as when the kubelet could not reach the
    // apiserver for a while): the kubelet's next post makes it Ready again, from a new
    // transition time, with a second NodeReady event.
    let ready_since = |n: &Node| {
        n.status.as_ref().and_then(|s| s.conditions.as_ref()).and_then(|cs| cs.iter().find(|c| c.type_ == "Ready")).and_then(|c| c.last_transition_time.clone()).map(|t| t.0)
    };
    let was = ready_since(&nodes.get("hollow-1").await?).context("a Ready transition time")?;
    // Condition times are whole seconds: let one pass, so that a new time can be told apart.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let unknown = serde_json::json!({"status": {"conditions": [{
        "type": "Ready", "status": "Unknown", "reason": "NodeStatusUnknown", "message": "Kubelet stopped posting node status.",
        "lastHeartbeatTime": later.iter().find(|c| c.0 == "Ready").and_then(|c| c.2.clone()), "lastTransitionTime": k8s_openapi::jiff::Timestamp::now().to_string(),
    }]}});
    nodes.patch_status("hollow-1", &kube::api::PatchParams::default(), &kube::api::Patch::Merge(&unknown)).await?;
    let again = eventually(Duration::from_secs(20), "hollow-1 Ready again", || {
        let nodes = nodes.clone();
        async move { Ok(nodes.get_opt("hollow-1").await?.filter(ready).and_then(|n| ready_since(&n))) }
    })
    .await?;
    assert!(again > was, "Ready again from a new transition time: {again} after {was}");
    eventually(Duration::from_secs(10), "two NodeReady events", || {
        let events = events.clone();
        async move {
            let list = events.list(&ListParams::default().fields("involvedObject.name=hollow-1,reason=NodeReady")).await?;
            Ok((list.items.iter().map(|e| e.count.unwrap_or(1)).sum::<i32>() >= 2).then_some(()))
        }
    })
    .await?;
    let status = node.status.clone().unwrap_or_default();
    let capacity = status.capacity.unwrap_or_default();
    for key in ["cpu", "memory", "pods", "ephemeral-storage"] {
        assert!(capacity.contains_key(key), "capacity has {key}: {capacity:?}");
    }
    assert!(status.daemon_endpoints.and_then(|d| d.kubelet_endpoint).map(|e| e.port > 0).unwrap_or(false));
    let leases: Api<Lease> = Api::namespaced(cluster.client.clone(), "kube-node-lease");
    let lease = leases.get("hollow-1").await?;
    assert_eq!(lease.spec.and_then(|s| s.holder_identity).as_deref(), Some("hollow-1"));
    let pod_cidr = node.spec.and_then(|s| s.pod_cidr).unwrap_or_default();
    let prefix = pod_cidr.rsplitn(2, '.').last().unwrap_or_default().to_string();

    let deployments: Api<Deployment> = Api::namespaced(cluster.client.clone(), "default");
    let deploy: Deployment = serde_json::from_value(serde_json::json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web"},
        "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "web"}},
                 "template": {"metadata": {"labels": {"app": "web"}},
                              "spec": {"containers": [{"name": "web", "image": "busybox", "command": ["sleep", "3600"]}]}}}
    }))?;
    deployments.create(&PostParams::default(), &deploy).await?;
    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), "default");
    let running = eventually(Duration::from_secs(20), "3 Running, Ready pods", || {
        let pods = pods.clone();
        async move {
            let list = pods.list(&ListParams::default().labels("app=web")).await?;
            let ok: Vec<Pod> = list
                .items
                .into_iter()
                .filter(|p| {
                    let s = p.status.clone().unwrap_or_default();
                    s.phase.as_deref() == Some("Running")
                        && s.conditions.unwrap_or_default().iter().any(|c| c.type_ == "Ready" && c.status == "True")
                })
                .collect();
            Ok((ok.len() == 3).then_some(ok))
        }
    })
    .await?;
    for p in &running {
        let s = p.status.clone().unwrap_or_default();
        let ip = s.pod_ip.unwrap_or_default();
        assert!(ip.starts_with(&prefix), "pod IP {ip} is in the node's podCIDR {pod_cidr}");
        let cs = &s.container_statuses.unwrap_or_default()[0];
        assert!(cs.ready && cs.started == Some(true), "container ready and started: {cs:?}");
        assert!(cs.container_id.as_deref().unwrap_or("").starts_with("rkube://"));
        assert_eq!(s.qos_class.as_deref(), Some("BestEffort"));
    }

    // A hollow node sets up each pod's volumes (here the ServiceAccount token's projected
    // volume) as plain directories: its fake runtime runs nothing that reads them, so it
    // mounts nothing on the host, and nothing is left behind when it stops.
    for p in &running {
        let uid = p.metadata.uid.clone().unwrap_or_default();
        let projected = root.join("pods").join(&uid).join("volumes/kubernetes.io~projected");
        let token = std::fs::read_dir(&projected)?.flatten().map(|e| e.path().join("token")).next();
        let token = token.map(std::fs::read_to_string).transpose()?.unwrap_or_default();
        assert_eq!(token.split('.').count(), 3, "a JWT in {}: {token:?}", projected.display());
    }
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")?;
    let under_root: Vec<&str> = mountinfo.lines().filter(|l| l.split(' ').nth(4).is_some_and(|m| std::path::Path::new(m).starts_with(&root))).collect();
    assert!(under_root.is_empty(), "a hollow kubelet mounts nothing: {under_root:#?}");

    // The kubelet reports what it did as events on the pod.
    let events: Api<Event> = Api::namespaced(cluster.client.clone(), "default");
    let name = running[0].metadata.name.clone().unwrap_or_default();
    eventually(Duration::from_secs(10), "Started event", || {
        let events = events.clone();
        let name = name.clone();
        async move {
            let list = events.list(&ListParams::default().fields(&format!("involvedObject.name={name}"))).await?;
            Ok(list.items.iter().any(|e| e.reason.as_deref() == Some("Started")).then_some(()))
        }
    })
    .await?;

    // Deleting a pod goes through the kubelet: it stops the containers and removes the object.
    pods.delete(&name, &DeleteParams::default()).await?;
    eventually(Duration::from_secs(20), "the deleted pod gone from the API", || {
        let pods = pods.clone();
        let name = name.clone();
        async move { Ok(pods.get_opt(&name).await?.is_none().then_some(())) }
    })
    .await?;
    Ok(())
}
