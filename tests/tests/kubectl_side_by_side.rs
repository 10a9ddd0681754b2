//! rkube's `kubectl` against the stock one, side by side on one in-process cluster with
//! fake nodes: every read command of the scripts below must print the same stdout and
//! stderr and exit with the same code (ages, uids and timestamps normalised; see
//! `rkube_tests::kubectl_compare`). Needs the stock kubectl on PATH and our binary
//! built (`cargo build -p kubectl`).

use std::time::Duration;

use rkube_tests::cluster::{eventually, Cluster};
use rkube_tests::fakenode::{create_node, run_fake_kubelet, run_fake_scheduler, NodeShape};
use rkube_tests::kubectl_compare::{
    compare_scripts_in, normalise, ours_binary, run, run_for, Scratch, STOCK,
};

const WAIT: Duration = Duration::from_secs(60);

/// A cluster with two Ready fake nodes that run whatever is scheduled, the controllers,
/// and a few objects made with the stock kubectl.
async fn setup() -> anyhow::Result<(Cluster, Scratch)> {
    let cluster = Cluster::start().await?;
    let nodes = vec!["node-a".to_string(), "node-b".to_string()];
    for n in &nodes {
        create_node(&cluster.client, n, &NodeShape::default()).await?;
    }
    run_fake_kubelet(
        cluster.client.clone(),
        nodes.clone(),
        cluster.shutdown.clone(),
    );
    run_fake_scheduler(cluster.client.clone(), nodes, cluster.shutdown.clone());
    cluster.start_controller_manager(&["*"], false);
    let scratch = Scratch::new()?;
    scratch.write(
        "objects.yaml",
        r#"apiVersion: v1
kind: ConfigMap
metadata:
  name: settings
  labels: {app: web, tier: front}
data:
  color: blue
  count: "3"
  script: |
    echo hello
    echo world
---
apiVersion: v1
kind: Secret
metadata:
  name: creds
type: Opaque
stringData:
  password: s3cret
---
apiVersion: v1
kind: Namespace
metadata:
  name: team-a
  labels: {team: a}
"#,
    )?;
    compare_scripts_in(
        &cluster,
        &scratch,
        &[
            "stock: apply -f {dir}/objects.yaml",
            "stock: create deployment web --image=busybox --replicas=2 -- sleep 3600",
            "stock: expose deployment web --port=80 --target-port=8080",
            "stock: create configmap other -n team-a --from-literal=a=b",
        ],
    )
    .await?;
    let pods: kube::Api<k8s_openapi::api::core::v1::Pod> =
        kube::Api::namespaced(cluster.client.clone(), "default");
    eventually(WAIT, "the web pods to run", || {
        let pods = pods.clone();
        async move {
            let list = pods.list(&Default::default()).await?;
            let running = list
                .items
                .iter()
                .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
                .count();
            Ok((running == 2).then_some(()))
        }
    })
    .await?;
    Ok((cluster, scratch))
}

#[tokio::test]
async fn get_prints_like_the_stock_kubectl() -> anyhow::Result<()> {
    let (cluster, scratch) = setup().await?;
    compare_scripts_in(
        &cluster,
        &scratch,
        &[
            // Tables: columns, alignment, -o wide, labels, namespaces, kind prefixes.
            "get pods",
            // What the parser refuses reads as cobra prints it (the study notes'
            // `run --replicas` is from an older kubectl).
            "get pods -z",
            "get pods --bogus=1",
            "run httpd-app --image=httpd --replicas=2",
            "get pods -o wide",
            "get po,svc,cm",
            "get all",
            "get all -A",
            "get deploy,rs --show-labels",
            "get cm -A",
            "get cm -L app -L tier",
            "get ns",
            "get nodes",
            "get nodes -o wide",
            // Deprecated, served with a warning, and in many tutorials.
            "get cs",
            "get componentstatus etcd-0 -o yaml",
            "get deployments.apps web",
            "get deployment.v1.apps/web service/web",
            "get Deployment",
            "get cm settings --no-headers",
            "get pods -l app=web --no-headers",
            "get pods --field-selector=status.phase=Running --no-headers",
            // Empty results and errors.
            "get secrets -n kube-public",
            "get pods -l app=nope",
            "get pods -A -l app=nope",
            "get pv",
            "get pods nope",
            "get cm settings nope",
            "get cm nope --ignore-not-found",
            "get foo",
            "get cm,foo",
            "get",
            "get pods -A nope",
            "get cm -o bogus",
            // Object formats.
            "get cm settings -o yaml",
            "get cm settings -o json",
            "get cm -o yaml",
            "get secret creds -o yaml",
            "get ns team-a -o yaml",
            "get deploy web -o yaml",
            "get svc web -o json",
            "get cm,svc -o name",
            "get ns -o name",
            "get cm nope -o yaml",
            // Templates.
            "get cm -o jsonpath={.items[*].metadata.name}",
            r#"get cm -o 'jsonpath={range .items[*]}{.metadata.name}{"\t"}{.data}{"\n"}{end}'"#,
            r#"get cm settings -o 'jsonpath={.metadata.labels} {.data.color} {.nope}'"#,
            r#"get pods -o 'jsonpath={.items[?(@.status.phase=="Running")].spec.nodeName}'"#,
            "get svc -o custom-columns=NAME:.metadata.name,TYPE:.spec.type,PORTS:.spec.ports[*].port",
            "get cm -o custom-columns=NAME:.metadata.name,MISSING:.spec.nothing --no-headers",
            "get cm settings -o 'jsonpath={.metadata.name'",
        ],
    )
    .await
}

#[tokio::test]
async fn describe_prints_like_the_stock_kubectl() -> anyhow::Result<()> {
    let (cluster, scratch) = setup().await?;
    compare_scripts_in(
        &cluster,
        &scratch,
        &[
            // (ConfigMaps with several keys are left out: the stock kubectl prints
            // their data in Go's random map order.)
            "describe cm other -n team-a",
            "describe cm kube-root-ca.crt",
            "describe secret creds",
            "describe ns team-a",
            "describe ns default",
            // The stock kubectl dereferences every EndpointSlice port's name (it once
            // panicked here, when unnamed ports had none).
            "describe svc web",
            "describe service/kubernetes",
            "describe deploy web",
            "describe rs",
            "describe pods",
            "describe pod web",
            "describe sa default",
            "describe pods nope",
            "describe foo",
            "describe",
            "describe pv",
            // A node without a Lease or node info, with pods and the node controller's event.
            "describe node node-a",
        ],
    )
    .await
}

#[tokio::test]
async fn discovery_config_auth_and_wait_print_like_the_stock_kubectl() -> anyhow::Result<()> {
    let (cluster, scratch) = setup().await?;
    compare_scripts_in(
        &cluster,
        &scratch,
        &[
            "api-resources",
            "api-resources -o wide",
            "api-resources --namespaced=false",
            "api-resources --api-group=apps -o name",
            "api-resources --verbs=list --namespaced --no-headers",
            "api-versions",
            "cluster-info",
            "config view",
            "config view --minify -o jsonpath={.contexts[0].name}",
            "config get-contexts",
            "config current-context",
            "config get-contexts nope",
            "config use-context nope",
            "auth whoami",
            "auth whoami -o yaml",
            "auth can-i list pods",
            "auth can-i create deployments.apps -n team-a",
            "auth can-i get /healthz",
            "auth can-i get pods --as=nobody",
            "auth can-i get pods --as=nobody --as-group=system:masters",
            "auth can-i create foo",
            "auth can-i",
            "auth can-i --list",
            "auth can-i --list --as=nobody",
            "wait --for=condition=Available deploy/web --timeout=30s",
            "wait --for=condition=Ready pod -l app=web",
            "wait --for=jsonpath={.status.readyReplicas}=2 deployment web",
            "wait --for=condition=Nope=True deploy/web --timeout=1s",
            "wait --for=delete cm/nope --timeout=1s",
            "wait --for=condition=Ready pod/nope",
            "stock: delete cm settings --wait=false",
            "wait --for=delete cm/settings --timeout=10s",
            "logs nope",
        ],
    )
    .await
}

#[tokio::test]
async fn get_watch_prints_rows_as_events_arrive() -> anyhow::Result<()> {
    let (cluster, _scratch) = setup().await?;
    let kubeconfig = cluster.kubeconfig.display().to_string();
    let words = |w: &[&str]| -> Vec<String> {
        ["--kubeconfig", kubeconfig.as_str()]
            .iter()
            .chain(w.iter())
            .map(|s| s.to_string())
            .collect()
    };
    let watch = words(&["get", "cm", "-w"]);
    let stock = std::path::PathBuf::from(STOCK);
    let ours = ours_binary()?;
    let both = async {
        tokio::join!(
            run_for(&stock, &watch, Duration::from_secs(5)),
            run_for(&ours, &watch, Duration::from_secs(5)),
        )
    };
    let create = async {
        tokio::time::sleep(Duration::from_millis(2500)).await;
        run(
            &stock,
            &words(&["create", "cm", "late", "--from-literal=x=y"]),
            None,
            WAIT,
        )
        .await
    };
    let ((s, o), made) = tokio::join!(both, create);
    let (s, o, made) = (s?, o?, made?);
    anyhow::ensure!(made.code == 0, "creating the ConfigMap: {}", made.stderr);
    anyhow::ensure!(
        s.stdout.contains("late"),
        "the stock kubectl did not print the new ConfigMap: {s:?}"
    );
    let norm = |t: &str| normalise(t, None, false, true);
    anyhow::ensure!(
        norm(&s.stdout) == norm(&o.stdout) && s.stderr == o.stderr,
        "`kubectl get cm -w` prints differently:\n--- stock:\n{}{}--- ours:\n{}{}",
        s.stdout,
        s.stderr,
        o.stdout,
        o.stderr
    );
    Ok(())
}
