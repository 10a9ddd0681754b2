//! A node dies: its Lease stops renewing, the node lifecycle controller marks it
//! Unknown and taints it, its pods are evicted after their toleration, the ReplicaSet
//! replaces them and the real scheduler places the replacements on the node still alive.

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use rkube_tests::cluster::{eventually, Cluster};
use rkube_tests::fakenode::{create_node, run_fake_kubelet, NodeShape};
use serde_json::json;
use tokio_util::sync::CancellationToken;

/// Renews the node's Lease every 300 ms until `stop`, as a kubelet does every 10 s.
fn keep_lease(client: kube::Client, node: &'static str, stop: CancellationToken) {
    tokio::spawn(async move {
        let leases: Api<k8s_openapi::api::coordination::v1::Lease> = Api::namespaced(client, "kube-node-lease");
        while !stop.is_cancelled() {
            let lease = json!({
                "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": {"name": node, "namespace": "kube-node-lease"},
                "spec": {"holderIdentity": node, "leaseDurationSeconds": 40, "renewTime": k8s_openapi::jiff::Timestamp::now().to_string()},
            });
            let _ = leases.patch(node, &PatchParams::apply("fake-kubelet").force(), &Patch::Apply(lease)).await;
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    });
}

/// Where the deployment's live (not terminating) pods run.
async fn live_pod_nodes(pods: &Api<Pod>) -> anyhow::Result<Vec<String>> {
    let list = pods.list(&ListParams::default().labels("app=web")).await?;
    Ok(list
        .items
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
        .filter_map(|p| p.spec.as_ref().and_then(|s| s.node_name.clone()))
        .collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_nodes_pods_are_rescheduled_elsewhere() -> anyhow::Result<()> {
    let cluster = Cluster::start().await?;
    let client = cluster.client.clone();
    let config = controller_manager::Config {
        kubeconfig: Some(cluster.kubeconfig.clone()),
        controllers: vec!["*".into()],
        leader_elect: false,
        node_monitor_grace_period: Duration::from_secs(2),
        ..Default::default()
    };
    let token = cluster.shutdown.child_token();
    tokio::spawn(async move { controller_manager::run(config, token).await });
    let scheduler = scheduler::Config { kubeconfig: Some(cluster.kubeconfig.clone()), leader_elect: false, ..Default::default() };
    let token = cluster.shutdown.child_token();
    tokio::spawn(async move { scheduler::run(scheduler, token).await });

    let (dies, lives) = (CancellationToken::new(), cluster.shutdown.child_token());
    for (node, life) in [("doomed", &dies), ("steady", &lives)] {
        create_node(&client, node, &NodeShape::default()).await?;
        keep_lease(client.clone(), node, life.clone());
        run_fake_kubelet(client.clone(), vec![node.to_string()], life.clone());
    }

    // Four replicas spread over both nodes; they tolerate an unreachable node for 2 s.
    let deployment: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "web"},
        "spec": {
            "replicas": 4,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {
                    "containers": [{"name": "web", "image": "busybox"}],
                    "topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "kubernetes.io/hostname", "whenUnsatisfiable": "ScheduleAnyway", "labelSelector": {"matchLabels": {"app": "web"}}}],
                    "tolerations": [
                        {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 2},
                        {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 2},
                    ],
                },
            },
        },
    }))?;
    Api::<Deployment>::namespaced(client.clone(), "default").create(&PostParams::default(), &deployment).await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let before = eventually(Duration::from_secs(60), "4 running pods on both nodes", || async {
        let nodes = live_pod_nodes(&pods).await?;
        Ok((nodes.len() == 4 && nodes.iter().any(|n| n == "doomed") && nodes.iter().any(|n| n == "steady")).then_some(nodes))
    })
    .await?;
    eprintln!("before the failure: {before:?}");

    // The node dies: no more lease renewals, and its kubelet is gone.
    dies.cancel();
    let after = eventually(Duration::from_secs(90), "4 running pods, all on the live node", || async {
        let nodes = live_pod_nodes(&pods).await?;
        Ok((nodes.len() == 4 && nodes.iter().all(|n| n == "steady")).then_some(nodes))
    })
    .await?;
    eprintln!("after the failure: {after:?}");
    cluster
        .describe_shows(
            &["node", "doomed"],
            &[
                ("RegisteredNode", "node-controller", "Node doomed event: Registered Node doomed in Controller"),
                ("NodeNotReady", "node-controller", "Node doomed status is now: NodeNotReady"),
            ],
        )
        .await?;
    Ok(())
}
