//! The `service-lb` controller against an in-process cluster: LoadBalancer Services get
//! an EXTERNAL-IP from `--load-balancer-ip-pool` (the stock kubectl shows it), addresses
//! come back when a Service is deleted or stops being a LoadBalancer and are handed out
//! again, an exhausted pool or an unmet `spec.loadBalancerIP` leaves a Service pending
//! with a Warning Event, allocations survive a controller restart, other
//! `loadBalancerClass`es are left alone, and without a pool Services get the Ready,
//! schedulable nodes' addresses as nodes come and go.

use std::time::Duration;

use anyhow::Context as _;
use k8s_openapi::api::core::v1::{Event, Node, Service};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use rkube_tests::cluster::{eventually, Cluster};
use rkube_tests::fakenode::{create_node, NodeShape};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(30);

/// Creates a LoadBalancer Service `name` in `default`, with `extra` merged into its spec.
async fn create_lb(client: &kube::Client, name: &str, extra: serde_json::Value) -> anyhow::Result<Service> {
    let mut spec = json!({"type": "LoadBalancer", "selector": {"app": name}, "ports": [{"port": 80}]});
    if let (Some(spec), Some(extra)) = (spec.as_object_mut(), extra.as_object()) {
        for (k, v) in extra {
            spec.insert(k.clone(), v.clone());
        }
    }
    let svc: Service = serde_json::from_value(json!({"metadata": {"name": name}, "spec": spec}))?;
    let api: Api<Service> = Api::namespaced(client.clone(), "default");
    Ok(api.create(&PostParams::default(), &svc).await?)
}

/// The ingress IPs (with their ipMode) a Service's status shows.
async fn ingress(api: &Api<Service>, name: &str) -> anyhow::Result<Vec<(String, String)>> {
    let svc = api.get(name).await?;
    let list = svc.status.and_then(|s| s.load_balancer).and_then(|lb| lb.ingress).unwrap_or_default();
    Ok(list.into_iter().map(|i| (i.ip.unwrap_or_default(), i.ip_mode.unwrap_or_default())).collect())
}

/// Waits until the Service's ingress is exactly `ips`, each with ipMode VIP.
async fn wait_ingress(api: &Api<Service>, name: &str, ips: &[&str]) -> anyhow::Result<()> {
    let want: Vec<(String, String)> = ips.iter().map(|ip| (ip.to_string(), "VIP".to_string())).collect();
    let what = format!("Service {name} to have the load-balancer ingress {ips:?}");
    eventually(WAIT, &what, || async {
        let got = ingress(api, name).await?;
        if got == want {
            Ok(Some(()))
        } else {
            Err(anyhow::anyhow!("the ingress is {got:?}"))
        }
    })
    .await
}

/// Waits for a Warning Event about Service `name` whose message contains `text`.
async fn wait_warning(client: &kube::Client, name: &str, text: &str) -> anyhow::Result<Event> {
    let events: Api<Event> = Api::namespaced(client.clone(), "default");
    let what = format!("a Warning Event on Service {name} saying {text:?}");
    eventually(WAIT, &what, || async {
        let list = events.list(&Default::default()).await?;
        Ok(list.items.into_iter().find(|e| {
            e.involved_object.kind.as_deref() == Some("Service")
                && e.involved_object.name.as_deref() == Some(name)
                && e.type_.as_deref() == Some("Warning")
                && e.message.as_deref().is_some_and(|m| m.contains(text))
        }))
    })
    .await
}

/// Events about Service `name`.
async fn events_of(client: &kube::Client, name: &str) -> anyhow::Result<Vec<Event>> {
    let events: Api<Event> = Api::namespaced(client.clone(), "default");
    let list = events.list(&Default::default()).await?;
    Ok(list.items.into_iter().filter(|e| e.involved_object.name.as_deref() == Some(name)).collect())
}

/// Runs the stock kubectl against the cluster.
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

/// The EXTERNAL-IP column of `kubectl get svc NAME`.
async fn kubectl_external_ip(cluster: &Cluster, name: &str) -> anyhow::Result<String> {
    let out = kubectl(cluster, &["get", "svc", name, "--no-headers"]).await?;
    // NAME TYPE CLUSTER-IP EXTERNAL-IP PORT(S) AGE
    let columns: Vec<&str> = out.split_whitespace().collect();
    columns.get(3).map(|c| c.to_string()).with_context(|| format!("no EXTERNAL-IP column in {out:?}"))
}

#[tokio::test]
async fn a_pool_gives_addresses_takes_them_back_and_hands_them_out_again() -> anyhow::Result<()> {
    let cluster = Cluster::start().await?;
    // `*` runs every default controller, service-lb among them.
    let _cm = cluster.start_controller_manager_with(&["*"], false, |c| {
        c.load_balancer_ip_pool = Some("192.168.1.240-192.168.1.241".into());
    });
    let api: Api<Service> = Api::namespaced(cluster.client.clone(), "default");
    create_lb(&cluster.client, "lb-a", json!({})).await?;
    wait_ingress(&api, "lb-a", &["192.168.1.240"]).await?;
    create_lb(&cluster.client, "lb-b", json!({})).await?;
    wait_ingress(&api, "lb-b", &["192.168.1.241"]).await?;
    assert_eq!(kubectl_external_ip(&cluster, "lb-a").await?, "192.168.1.240");

    // The pool is exhausted: the next Service stays pending and is told why.
    create_lb(&cluster.client, "lb-c", json!({})).await?;
    let warning = wait_warning(&cluster.client, "lb-c", "no address is free in the load-balancer pool").await?;
    assert_eq!(warning.reason.as_deref(), Some("AllocationFailed"));
    assert!(ingress(&api, "lb-c").await?.is_empty());
    assert_eq!(kubectl_external_ip(&cluster, "lb-c").await?, "<pending>");
    let described = kubectl(&cluster, &["describe", "svc", "lb-c"]).await?;
    assert!(described.contains("AllocationFailed"), "{described}");

    // Deleting a Service frees its address for the pending one.
    api.delete("lb-a", &DeleteParams::default()).await?;
    wait_ingress(&api, "lb-c", &["192.168.1.240"]).await?;
    assert_eq!(kubectl_external_ip(&cluster, "lb-c").await?, "192.168.1.240");
    let allocated = events_of(&cluster.client, "lb-c").await?;
    assert!(allocated.iter().any(|e| e.reason.as_deref() == Some("IPAllocated")), "{allocated:?}");

    // A Service that stops being a LoadBalancer loses its status and its address.
    api.patch("lb-b", &PatchParams::default(), &Patch::Merge(json!({"spec": {"type": "NodePort"}}))).await?;
    wait_ingress(&api, "lb-b", &[]).await?;
    create_lb(&cluster.client, "lb-d", json!({})).await?;
    wait_ingress(&api, "lb-d", &["192.168.1.241"]).await?;
    // Turned back into a LoadBalancer, it waits for an address again.
    api.patch("lb-b", &PatchParams::default(), &Patch::Merge(json!({"spec": {"type": "LoadBalancer"}}))).await?;
    wait_warning(&cluster.client, "lb-b", "no address is free").await?;
    assert_eq!(kubectl_external_ip(&cluster, "lb-b").await?, "<pending>");
    Ok(())
}

#[tokio::test]
async fn requested_addresses_and_load_balancer_classes() -> anyhow::Result<()> {
    let cluster = Cluster::start().await?;
    let _cm = cluster.start_controller_manager_with(&["service-lb"], false, |c| {
        c.load_balancer_ip_pool = Some("192.168.1.240/29".into());
    });
    let api: Api<Service> = Api::namespaced(cluster.client.clone(), "default");
    create_lb(&cluster.client, "wants-245", json!({"loadBalancerIP": "192.168.1.245"})).await?;
    wait_ingress(&api, "wants-245", &["192.168.1.245"]).await?;
    create_lb(&cluster.client, "also-245", json!({"loadBalancerIP": "192.168.1.245"})).await?;
    wait_warning(&cluster.client, "also-245", "192.168.1.245 is already assigned to Service default/wants-245").await?;
    create_lb(&cluster.client, "outside", json!({"loadBalancerIP": "10.0.0.1"})).await?;
    wait_warning(&cluster.client, "outside", "10.0.0.1 is not in the load-balancer pool 192.168.1.240/29").await?;

    // Our class is handled (the network address .240 is never handed out); another is not.
    create_lb(&cluster.client, "ours", json!({"loadBalancerClass": "rkube.io/service-lb"})).await?;
    wait_ingress(&api, "ours", &["192.168.1.241"]).await?;
    create_lb(&cluster.client, "theirs", json!({"loadBalancerClass": "example.com/metal"})).await?;

    // Moving the request to a free address moves the Service there.
    api.patch("ours", &PatchParams::default(), &Patch::Merge(json!({"spec": {"loadBalancerIP": "192.168.1.246"}}))).await?;
    wait_ingress(&api, "ours", &["192.168.1.246"]).await?;
    // When the holder goes, the Service that asked for its address gets it.
    api.delete("wants-245", &DeleteParams::default()).await?;
    wait_ingress(&api, "also-245", &["192.168.1.245"]).await?;

    assert!(ingress(&api, "theirs").await?.is_empty());
    assert!(events_of(&cluster.client, "theirs").await?.is_empty());
    assert!(ingress(&api, "outside").await?.is_empty());
    Ok(())
}

#[tokio::test]
async fn allocations_survive_a_controller_restart() -> anyhow::Result<()> {
    let cluster = Cluster::start().await?;
    let pool = |c: &mut controller_manager::Config| c.load_balancer_ip_pool = Some("10.200.0.1-10.200.0.4".into());
    let first = cluster.start_controller_manager_with(&["service-lb"], false, pool);
    let api: Api<Service> = Api::namespaced(cluster.client.clone(), "default");
    for (name, ip) in [("one", "10.200.0.1"), ("two", "10.200.0.2"), ("three", "10.200.0.3")] {
        create_lb(&cluster.client, name, json!({})).await?;
        wait_ingress(&api, name, &[ip]).await?;
    }
    // The lowest address comes free while no controller runs; what the others hold must
    // not be handed out again by the next one.
    first.cancel();
    api.delete("one", &DeleteParams::default()).await?;
    let before_two = api.get("two").await?.metadata.resource_version;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _second = cluster.start_controller_manager_with(&["service-lb"], false, pool);
    create_lb(&cluster.client, "four", json!({})).await?;
    create_lb(&cluster.client, "five", json!({})).await?;
    let mut got = Vec::new();
    for name in ["four", "five"] {
        let ips = eventually(WAIT, "an address for a new Service", || async {
            let ips = ingress(&api, name).await?;
            Ok((!ips.is_empty()).then_some(ips))
        })
        .await?;
        got.extend(ips.into_iter().map(|(ip, _)| ip));
    }
    got.sort();
    assert_eq!(got, vec!["10.200.0.1".to_string(), "10.200.0.4".to_string()]);
    wait_ingress(&api, "two", &["10.200.0.2"]).await?;
    wait_ingress(&api, "three", &["10.200.0.3"]).await?;
    assert_eq!(api.get("two").await?.metadata.resource_version, before_two, "the status of two was rewritten");
    Ok(())
}

/// Sets a node's addresses (and optionally its Ready status) as its kubelet would.
async fn set_node_status(client: &kube::Client, name: &str, addresses: &[(&str, &str)], ready: bool) -> anyhow::Result<()> {
    let nodes: Api<Node> = Api::all(client.clone());
    let addresses: Vec<serde_json::Value> = addresses.iter().map(|(t, a)| json!({"type": t, "address": a})).collect();
    let mut node = nodes.get_status(name).await?;
    let status = node.status.get_or_insert_with(Default::default);
    status.addresses = Some(serde_json::from_value(json!(addresses))?);
    for c in status.conditions.iter_mut().flatten() {
        if c.type_ == "Ready" {
            c.status = if ready { "True" } else { "False" }.into();
        }
    }
    nodes.replace_status(name, &PostParams::default(), &node).await?;
    Ok(())
}

async fn add_node(client: &kube::Client, name: &str, addresses: &[(&str, &str)], ready: bool) -> anyhow::Result<()> {
    create_node(client, name, &NodeShape::default()).await?;
    set_node_status(client, name, addresses, ready).await
}

#[tokio::test]
async fn without_a_pool_services_get_the_ready_nodes_addresses() -> anyhow::Result<()> {
    let cluster = Cluster::start().await?;
    let client = &cluster.client;
    add_node(client, "n1", &[("InternalIP", "10.0.0.11"), ("Hostname", "n1")], true).await?;
    add_node(client, "n2", &[("InternalIP", "10.0.0.12"), ("ExternalIP", "203.0.113.12")], true).await?;
    add_node(client, "down", &[("InternalIP", "10.0.0.13")], false).await?;
    let _cm = cluster.start_controller_manager(&["service-lb"], false);
    let api: Api<Service> = Api::namespaced(client.clone(), "default");
    create_lb(client, "web", json!({})).await?;
    wait_ingress(&api, "web", &["10.0.0.11", "203.0.113.12"]).await?;
    assert_eq!(kubectl_external_ip(&cluster, "web").await?, "10.0.0.11,203.0.113.12");

    // Nodes coming, getting Ready, cordoned and going change every Service's addresses.
    add_node(client, "n3", &[("InternalIP", "10.0.0.3")], true).await?;
    wait_ingress(&api, "web", &["10.0.0.3", "10.0.0.11", "203.0.113.12"]).await?;
    set_node_status(client, "down", &[("InternalIP", "10.0.0.13")], true).await?;
    wait_ingress(&api, "web", &["10.0.0.3", "10.0.0.11", "10.0.0.13", "203.0.113.12"]).await?;
    let nodes: Api<Node> = Api::all(client.clone());
    nodes.patch("n1", &PatchParams::default(), &Patch::Merge(json!({"spec": {"unschedulable": true}}))).await?;
    wait_ingress(&api, "web", &["10.0.0.3", "10.0.0.13", "203.0.113.12"]).await?;
    nodes.delete("n2", &DeleteParams::default()).await?;
    wait_ingress(&api, "web", &["10.0.0.3", "10.0.0.13"]).await?;
    create_lb(client, "second", json!({})).await?;
    wait_ingress(&api, "second", &["10.0.0.3", "10.0.0.13"]).await?;

    // No node left to serve: pending, with the reason.
    for n in ["n3", "down"] {
        nodes.patch(n, &PatchParams::default(), &Patch::Merge(json!({"spec": {"unschedulable": true}}))).await?;
    }
    wait_ingress(&api, "web", &[]).await?;
    wait_warning(client, "web", "no Ready, schedulable node").await?;
    Ok(())
}

#[tokio::test]
async fn a_bad_pool_is_refused_at_startup_naming_the_flag() -> anyhow::Result<()> {
    let config = controller_manager::Config {
        load_balancer_ip_pool: Some("192.168.1.240/33".into()),
        leader_elect: false,
        ..Default::default()
    };
    let err = controller_manager::run(config, tokio_util::sync::CancellationToken::new()).await.err().context("a bad pool must be refused")?;
    let text = format!("{err:#}");
    assert!(text.contains("--load-balancer-ip-pool") && text.contains("longer than 32"), "{text}");
    Ok(())
}
