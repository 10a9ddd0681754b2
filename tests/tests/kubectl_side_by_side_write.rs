//! rkube's `kubectl` against the stock one for WRITE commands: each kubectl works in a
//! namespace of its own on one in-process cluster with fake nodes (see
//! `rkube_tests::kubectl_compare::compare_scripts_isolated`), and every compared line
//! must print the same stdout and stderr and exit with the same code (names, uids,
//! timestamps and the namespaces normalised). Needs the stock kubectl on PATH and our
//! binary built (`cargo build -p kubectl`).
//!
//! exec and cp run against an in-process kubelet API server whose "containers" are host
//! processes (the last test); port-forward, which prints nothing comparable, is checked
//! through the same kind of kubelet in `apiserver/tests/pod_streams.rs`.

use std::sync::Once;

use rkube_tests::cluster::Cluster;
use rkube_tests::fakenode::{create_node, run_fake_kubelet, run_fake_scheduler, NodeShape};
use rkube_tests::kubectl_compare::{compare_scripts_isolated, Scratch};

/// A cluster with two Ready fake nodes that run whatever is scheduled, and the
/// controllers (Deployments, ReplicaSets, garbage collection, root CA ConfigMaps…).
async fn setup(extra_nodes: &[String]) -> anyhow::Result<Cluster> {
    let cluster = Cluster::start().await?;
    let nodes = vec!["node-a".to_string(), "node-b".to_string()];
    for n in nodes.iter().chain(extra_nodes) {
        create_node(&cluster.client, n, &NodeShape::default()).await?;
    }
    run_fake_kubelet(
        cluster.client.clone(),
        nodes.clone(),
        cluster.shutdown.clone(),
    );
    run_fake_scheduler(cluster.client.clone(), nodes, cluster.shutdown.clone());
    cluster.start_controller_manager(&["*"], false);
    Ok(cluster)
}

/// `$EDITOR` for `kubectl edit`: a script that edits the file with sed. Set once, before
/// any test starts a process.
fn set_editor() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // Beside the test executable (in the target directory), so runs reuse one file
        // rather than leave one each in /tmp.
        let dir = std::env::current_exe()
            .ok()
            .and_then(|exe| exe.parent().map(std::path::Path::to_path_buf))
            .unwrap_or_else(std::env::temp_dir);
        let path = dir.join("rkube-kubectl-editor.sh");
        std::fs::write(
            &path,
            "#!/bin/sh\nsed -i -e 's/color: blue/color: green/' \"$1\"\n",
        )
        .expect("writing the editor script");
        let _ = std::process::Command::new("chmod")
            .arg("+x")
            .arg(&path)
            .status();
        std::env::set_var("EDITOR", &path);
        std::env::remove_var("KUBE_EDITOR");
    });
}

const APP: &str = r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: app
  labels: {app: app}
spec:
  replicas: 1
  selector: {matchLabels: {app: app}}
  template:
    metadata: {labels: {app: app}}
    spec:
      containers:
      - name: c
        image: busybox
        command: [sleep, "3600"]
        ports: [{containerPort: 80}]
        env: [{name: A, value: "1"}, {name: B, value: "2"}]
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: app-config
  labels: {app: app}
data:
  color: blue
"#;

#[tokio::test]
async fn apply_create_run_expose_and_delete_print_like_the_stock_kubectl() -> anyhow::Result<()> {
    set_editor();
    let cluster = setup(&[]).await?;
    let scratch = Scratch::new()?;
    scratch.write("app.yaml", APP)?;
    // v2: one more replica, env B dropped, a label added, the ConfigMap changed.
    scratch.write(
        "app-v2.yaml",
        &APP.replace("replicas: 1", "replicas: 2")
            .replace(", {name: B, value: \"2\"}", "")
            .replace(
                "labels: {app: app}\ndata:",
                "labels: {app: app, v: \"2\"}\ndata:",
            )
            .replace("color: blue", "color: red"),
    )?;
    std::fs::create_dir_all(scratch.dir.path().join("tree/sub"))?;
    scratch.write(
        "tree/a.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: tree-a\n",
    )?;
    scratch.write(
        "tree/sub/b.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: tree-b\n",
    )?;
    scratch.write("tree/ignored.txt", "not a manifest")?;
    scratch.write(
        "ssa.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: ssa\ndata:\n  a: b\n",
    )?;
    scratch.write(
        "bad.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: [bad\n",
    )?;
    scratch.write(
        "bad-indent.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: x\n  labels:\n    a: b\n   c: d\n",
    )?;
    scratch.write("nokind.yaml", "metadata:\n  name: x\n")?;
    scratch.write(
        "unknown-field.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: typo\ndata:\n  a: b\nspec:\n  foo: bar\n",
    )?;
    std::fs::create_dir_all(scratch.dir.path().join("files"))?;
    scratch.write("files/one.txt", "first\n")?;
    scratch.write("files/two.conf", "second")?;
    compare_scripts_isolated(
        &cluster,
        &scratch,
        "wr-apply",
        &[
            // Client-side apply: created, unchanged, configured (three-way: env B and
            // the scaled replicas follow the file, the label is added).
            "apply -f {dir}/app.yaml",
            "apply -f {dir}/app.yaml",
            "scale deploy app --replicas=3",
            "apply -f {dir}/app.yaml",
            "apply -f {dir}/app-v2.yaml --dry-run=client",
            "apply -f {dir}/app-v2.yaml --dry-run=server",
            "apply -f {dir}/app-v2.yaml",
            r#"get deploy app -o 'jsonpath={.spec.replicas} {.spec.template.spec.containers[0].env}'"#,
            "get cm app-config -o yaml",
            "apply -f {dir}/app-v2.yaml -o name",
            "stdin: {dir}/app.yaml apply -f -",
            // (`kind: List` is left out: the stock kubectl cannot validate it against
            // this apiserver's OpenAPI; parse_documents unit-tests it.)
            "apply -f {dir}/tree",
            "apply -R -f {dir}/tree",
            // Server-side apply.
            "apply --server-side -f {dir}/ssa.yaml",
            "apply --server-side -f {dir}/ssa.yaml",
            "get cm ssa -o jsonpath={.metadata.managedFields[0].manager}",
            // Errors: file names, parse errors, validation, AlreadyExists.
            "create -f {dir}/app.yaml",
            "apply -f {dir}/bad.yaml",
            "apply -f {dir}/bad-indent.yaml",
            "create -f {dir}/bad.yaml",
            "apply -f {dir}/nokind.yaml",
            "apply -f {dir}/nope.yaml",
            // Unknown fields: refused (--validate=strict, the default), a warning, or
            // nothing, as fieldValidation asks the server.
            "apply -f {dir}/unknown-field.yaml",
            "create -f {dir}/unknown-field.yaml --validate=true",
            "apply -f {dir}/unknown-field.yaml --validate=warn",
            "apply -f {dir}/unknown-field.yaml --validate=false",
            "apply --server-side -f {dir}/unknown-field.yaml",
            "apply -f {dir}/unknown-field.yaml --validate=bogus",
            "delete cm typo",
            "apply",
            // Generators.
            "create configmap c1 --from-literal=a=b --from-literal=c=d",
            "create configmap c2 --from-file={dir}/files --from-file=renamed={dir}/files/one.txt",
            "get cm c2 -o yaml",
            "create configmap c3 --from-literal=novalue",
            "create secret generic s1 --from-literal=pw=s3cret --from-file={dir}/files/one.txt",
            "get secret s1 -o jsonpath={.data}",
            "create deployment d1 --image=busybox --replicas=2 --port=80 -- sleep 3600",
            "create deployment d1 --image=busybox",
            "create deployment d2 --image=nginx:1.27 --image=registry.k8s.io/pause@sha256:abc --dry-run=client -o json",
            "create service clusterip s1 --tcp=80:8080 --tcp=443",
            "get svc s1 -o jsonpath={.spec.ports}",
            "create service nodeport s2 --tcp=80:8080 --dry-run=client -o yaml",
            "create job j1 --image=busybox --dry-run=client -o yaml -- echo hi",
            "create job j2 --image=busybox -- echo hi",
            "create namespace {ns}-extra",
            "create namespace {ns}-extra",
            "create serviceaccount robot -o name",
            "create serviceaccount robot",
            "create configmap c1 --from-literal=a=b",
            "create secret generic s1",
            "create service clusterip s1 --tcp=80",
            "run p1 --image=nginx --port=80 --env=A=B --labels=x=y,z=w -- sleep 1",
            "run p2 --image=nginx --restart=Never --dry-run=client -o yaml",
            "run p3",
            "get pod p1 -o 'jsonpath={.metadata.labels} {.spec.containers[0].args} {.spec.containers[0].env} {.spec.containers[0].ports}'",
            "expose deployment d1 --port=80 --target-port=8080",
            "expose deployment d1 --port=81 --name=d1b --type=NodePort --dry-run=client -o yaml",
            "expose pod p1 --port=90 --name=p1svc",
            "get svc d1 p1svc -o 'jsonpath={.items[*].spec.selector}'",
            "expose deployment nope --port=80",
            // Delete: names, files, selectors, errors, dry runs; waits for the objects to go.
            "delete cm c1",
            "delete cm c1",
            "delete cm c2 nope",
            "delete cm nope --ignore-not-found",
            "delete secret s1 --dry-run=server",
            "delete secret s1 --dry-run=client",
            "delete secret s1 -o name",
            "delete -f {dir}/app.yaml",
            "delete -f {dir}/app.yaml",
            "delete cm -l nope=nope",
            "delete cm -l app=app",
            "delete pod p1 --grace-period=0 --force",
            "delete deploy d1 --cascade=orphan",
            "delete deploy d1 --cascade=bogus",
            "delete namespace {ns}-extra --wait=false",
            "delete cm",
            "delete",
            "get deploy,cm,secret,svc -o name",
        ],
    )
    .await
}

#[tokio::test]
async fn label_annotate_patch_scale_edit_and_rollout_print_like_the_stock_kubectl(
) -> anyhow::Result<()> {
    set_editor();
    let cluster = setup(&[]).await?;
    let scratch = Scratch::new()?;
    scratch.write(
        "settings.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: settings\ndata:\n  color: blue\n",
    )?;
    let wait = "rollout status deploy/web --timeout=60s";
    let both = |l: &str| [format!("stock: {l}"), format!("ours: {l}")];
    let mut lines: Vec<String> = Vec::new();
    lines.extend(both(
        "create deployment web --image=busybox --replicas=2 -- sleep 3600",
    ));
    lines.extend(both("apply -f {dir}/settings.yaml"));
    lines.extend(both(wait));
    lines.extend(
        [
            // label / annotate
            "label deploy web tier=front",
            "label deploy web tier=back",
            "label deploy web tier=back --overwrite",
            "label deploy web tier=back --overwrite",
            "label deploy web tier-",
            "label deploy web tier-",
            "label deploy web",
            "label deploy web a=b --dry-run=client",
            "label deploy/web c=d -o name",
            "label cm --all team=a",
            "label cm team=a",
            "label cm settings --list",
            "annotate deploy web note=hello",
            "annotate deploy web note=bye",
            "annotate deploy web note=bye --overwrite",
            "annotate deploy web note-",
            "get deploy web --show-labels",
            // patch
            r#"patch deploy web -p '{"metadata":{"labels":{"p":"q"}}}'"#,
            r#"patch deploy web -p '{"metadata":{"labels":{"p":"q"}}}'"#,
            r#"patch deploy web --type=merge -p '{"metadata":{"annotations":{"x":"y"}}}'"#,
            r#"patch deploy web --type=json -p '[{"op":"remove","path":"/metadata/annotations/x"}]'"#,
            r#"patch deploy web --type=bogus -p '{}'"#,
            r#"patch deploy nope -p '{}'"#,
            "patch deploy web",
            // scale
            "scale deploy web --replicas=3",
            "scale deploy web --replicas=1 --current-replicas=2",
            "scale deploy/web --replicas=2 --dry-run=server",
            "scale deploy web",
            "get deploy web -o jsonpath={.spec.replicas}",
            // edit: the editor script turns blue into green; a second edit changes nothing.
            "edit cm settings",
            "get cm settings -o jsonpath={.data.color}",
            "edit cm settings",
            "edit cm nope",
        ]
        .map(String::from),
    );
    lines.extend(both(wait));
    lines.extend(
        [
            // rollout
            "rollout status deploy/web",
            "set image deploy/web busybox=busybox:1.36",
            "set image deploy/web nope=x",
        ]
        .map(String::from),
    );
    lines.extend(both(wait));
    lines.extend(
        [
            "rollout history deploy/web",
            "rollout undo deploy/web",
            "rollout undo deploy/web --to-revision=9",
        ]
        .map(String::from),
    );
    lines.extend(both(wait));
    lines.extend(
        [
            "rollout history deployment web",
            "get deploy web -o jsonpath={.spec.template.spec.containers[0].image}",
            "rollout pause deploy/web",
            "rollout pause deploy/web",
            "rollout restart deploy/web",
            "rollout resume deploy/web",
            "rollout resume deploy/web",
            "rollout restart deploy/web",
            "rollout status deploy/nope",
        ]
        .map(String::from),
    );
    let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
    compare_scripts_isolated(&cluster, &scratch, "wr-mutate", &refs).await
}

#[tokio::test]
async fn node_commands_and_explain_print_like_the_stock_kubectl() -> anyhow::Result<()> {
    set_editor();
    let prefix = "wr-node";
    // One node per side, named after the side's namespace (`{ns}` in the script).
    let cluster = setup(&[format!("{prefix}-stock"), format!("{prefix}-ours")]).await?;
    // And one CertificateSigningRequest per side, for `certificate approve|deny`.
    for side in ["stock", "ours"] {
        let (pem, _key) = component_base::pki::new_request("jane", Some("dev"), &[], &[])?;
        let csr = serde_json::json!({
            "apiVersion": "certificates.k8s.io/v1",
            "kind": "CertificateSigningRequest",
            "metadata": {"name": format!("{prefix}-{side}")},
            "spec": {
                "request": k8s_openapi::ByteString(pem.into_bytes()),
                "signerName": "kubernetes.io/kube-apiserver-client",
                "usages": ["client auth"],
            },
        });
        kube::Api::<k8s_openapi::api::certificates::v1::CertificateSigningRequest>::all(
            cluster.client.clone(),
        )
        .create(&Default::default(), &serde_json::from_value(csr)?)
        .await?;
    }
    let scratch = Scratch::new()?;
    compare_scripts_isolated(
        &cluster,
        &scratch,
        prefix,
        &[
            "cordon {ns}",
            "cordon {ns}",
            "get node {ns} -o jsonpath={.spec.unschedulable}",
            "uncordon {ns}",
            "uncordon {ns}",
            "cordon {ns} --dry-run=client",
            "cordon nope",
            "taint nodes {ns} dedicated=db:NoSchedule",
            "taint nodes {ns} dedicated=web:NoSchedule",
            "taint nodes {ns} dedicated=web:NoSchedule --overwrite",
            "get node {ns} -o jsonpath={.spec.taints}",
            "taint nodes {ns} dedicated:NoSchedule-",
            "taint nodes {ns} dedicated-",
            "taint nodes {ns} a=b:Bad",
            "taint nodes {ns} nothing",
            "drain {ns} --ignore-daemonsets",
            "uncordon {ns}",
            // certificate approve|deny
            "certificate approve {ns}",
            "certificate approve {ns}",
            "get csr {ns} -o 'jsonpath={.status.conditions[0].type} {.status.conditions[0].reason}'",
            "certificate deny {ns}",
            "certificate approve nope",
            "certificate approve",
            // explain, from the server's OpenAPI v3 documents.
            "explain deployment",
            "explain pods.spec.containers.ports",
            "explain svc.spec.type",
            "explain deploy.spec.strategy --recursive",
            "explain pods.metadata.creationTimestamp",
            "explain pods.spec.nope",
            "explain nope",
        ],
    )
    .await
}

/// `kubectl exec` and `cp` side by side through the apiserver to an in-process kubelet
/// API server on the host-process test runtime (as in `apiserver/tests/pod_streams.rs`):
/// exec'd commands are host commands, and `cp` paths are host paths.
#[tokio::test]
async fn exec_and_cp_print_like_the_stock_kubectl_through_a_kubelet() -> anyhow::Result<()> {
    use std::sync::Arc;

    use kubelet::server::testing::{HostRuntime, StaticPods, TestPod};
    use kubelet::server::ContainerTarget;

    set_editor();
    let prefix = "wr-exec";
    let cluster = Cluster::start().await?;
    let files = tempfile::tempdir()?;
    let runtime = Arc::new(HostRuntime::new(Some(files.path().to_path_buf())));
    let pods = Arc::new(StaticPods::new());
    for side in ["stock", "ours"] {
        let target = |id: &str, log: &str| ContainerTarget {
            container_id: id.to_string(),
            log_path: files.path().join(log),
            previous_log_path: None,
            running: true,
        };
        pods.insert(
            &format!("{prefix}-{side}"),
            "web",
            TestPod {
                sandbox_id: format!("sandbox-{side}"),
                containers: vec![
                    ("web".into(), target("c-web", "web.log")),
                    ("sidecar".into(), target("c-side", "side.log")),
                ],
                default_container: Some("web".into()),
                attach_command: vec!["cat".into()],
                ..Default::default()
            },
        );
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let kubelet_port = listener.local_addr()?.port();
    let ca = apiserver::server::cluster_ca(cluster.dir.path())?;
    let serving = ca.issue(
        "node-1",
        None,
        &["node-1".into()],
        &["127.0.0.1".parse()?],
        component_base::pki::Usage::Server,
    )?;
    let tls = kubelet::server::tls_config(
        &serving,
        &component_base::pki::pem_certificates(ca.cert_pem()),
    )?;
    let authorizer = Arc::new(kubelet::server::auth::Authorizer::new(
        cluster.client.clone(),
        "node-1",
    ));
    tokio::spawn(kubelet::server::serve_tls(
        listener,
        tls,
        authorizer,
        runtime,
        pods,
        cluster.shutdown.clone(),
    ));
    let nodes: kube::Api<k8s_openapi::api::core::v1::Node> = kube::Api::all(cluster.client.clone());
    nodes
        .create(
            &Default::default(),
            &serde_json::from_value(serde_json::json!({"metadata": {"name": "node-1"}}))?,
        )
        .await?;
    nodes
        .patch_status(
            "node-1",
            &Default::default(),
            &kube::api::Patch::Merge(serde_json::json!({"status": {
                "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}, {"type": "Hostname", "address": "node-1"}],
                "daemonEndpoints": {"kubeletEndpoint": {"Port": kubelet_port}}}})),
        )
        .await?;

    let scratch = Scratch::new()?;
    scratch.write(
        "pods.yaml",
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: web\n  annotations: {kubectl.kubernetes.io/default-container: web}\nspec:\n  nodeName: node-1\n  containers:\n  - {name: web, image: busybox}\n  - {name: sidecar, image: busybox}\n---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: pending\nspec:\n  containers:\n  - {name: web, image: busybox}\n  - {name: other, image: busybox}\n",
    )?;
    scratch.write("input.txt", "hello\nfrom stdin\n")?;
    scratch.write("local.txt", "a local file\n")?;
    std::fs::create_dir_all(scratch.dir.path().join("tree/sub"))?;
    scratch.write("tree/a.txt", "a\n")?;
    scratch.write("tree/sub/b.txt", "b\n")?;
    // The "pod's" files: in the kubelet's work dir.
    std::fs::write(files.path().join("report.txt"), "the report\n")?;
    std::fs::create_dir_all(files.path().join("tree/sub"))?;
    std::fs::write(files.path().join("tree/a.txt"), "pod a\n")?;
    std::fs::write(files.path().join("tree/sub/b.txt"), "pod b\n")?;
    let running = r#"'{"status":{"phase":"Running","containerStatuses":[{"name":"web","ready":true,"restartCount":0,"image":"busybox","imageID":"","containerID":"rkube://c-web","started":true,"state":{"running":{"startedAt":"2024-05-01T10:00:00Z"}}},{"name":"sidecar","ready":true,"restartCount":0,"image":"busybox","imageID":"","containerID":"rkube://c-side","started":true,"state":{"running":{"startedAt":"2024-05-01T10:00:00Z"}}}]}}'"#;
    let status = format!("patch pod web --subresource=status --type=merge -p {running}");
    let lines = [
        "stock: create -f {dir}/pods.yaml".to_string(),
        "ours: create -f {dir}/pods.yaml".to_string(),
        format!("stock: {status}"),
        format!("ours: {status}"),
        "exec web -- echo hi".into(),
        "exec pod/web -- echo hi".into(),
        "exec web -c sidecar -- sh -c 'echo out; echo err >&2; exit 3'".into(),
        "stdin: {dir}/input.txt exec -i web -- cat".into(),
        "exec pending -- ls".into(),
        "exec web -c nope -- ls".into(),
        "exec web".into(),
        "exec nope -- ls".into(),
        // cp both ways; the copies are read back with exec (host commands). Paths in
        // the "pod" are relative to the kubelet's work dir (absolute ones make tar
        // print a message whose order against the exec status is not fixed).
        "cp web:report.txt {dir}/copied-{ns}.txt".into(),
        "exec web -- cat {dir}/copied-{ns}.txt".into(),
        "cp {dir}/local.txt web:uploaded-{ns}.txt".into(),
        "exec web -- cat uploaded-{ns}.txt".into(),
        "cp {dir}/tree web:tree-{ns}".into(),
        "exec web -- cat tree-{ns}/sub/b.txt".into(),
        "cp web:tree {dir}/back-{ns}".into(),
        "exec web -- cat {dir}/back-{ns}/a.txt {dir}/back-{ns}/sub/b.txt".into(),
        "cp {dir}/nope.txt web:{dir}/x".into(),
    ];
    let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
    compare_scripts_isolated(&cluster, &scratch, prefix, &refs).await
}
