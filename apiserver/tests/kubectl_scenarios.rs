//! The stock kubectl against the apiserver, on the embedded store and on etcd: the
//! commands a learner types first, with the outputs they expect.

mod support;

use anyhow::{ensure, Context};
use support::server::{have_kubectl, Backend, TestServer};

const APP: &str = r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  labels: {app: web}
spec:
  replicas: 2
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
      - name: web
        image: busybox:1.36
        command: ["httpd", "-f", "-p", "8080"]
        ports: [{containerPort: 8080}]
      - name: sidecar
        image: busybox:1.36
        command: ["sleep", "3600"]
---
apiVersion: v1
kind: Service
metadata:
  name: web
spec:
  selector: {app: web}
  ports:
  - port: 80
    targetPort: 8080
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: web-config
data:
  greeting: hello
"#;

async fn server(backend: Backend) -> anyhow::Result<Option<TestServer>> {
    if !have_kubectl()? {
        return Ok(None);
    }
    TestServer::start(backend).await
}

fn write_manifest(s: &TestServer, name: &str, text: &str) -> anyhow::Result<String> {
    let path = s.dir.path().join(name);
    std::fs::write(&path, text)?;
    Ok(path.to_string_lossy().into_owned())
}

async fn apply_and_reapply(s: &TestServer) -> anyhow::Result<()> {
    let out = s.ok(&["api-resources"]).await?;
    ensure!(out.lines().any(|l| l.starts_with("deployments ") && l.contains("apps/v1") && l.contains("deploy")), "api-resources: {out}");

    let file = write_manifest(s, "app.yaml", APP)?;
    let out = s.ok(&["apply", "-f", &file]).await?;
    ensure!(out.contains("deployment.apps/web created") && out.contains("service/web created") && out.contains("configmap/web-config created"), "{out}");

    // Change one container's image: only that container changes, the other keeps its
    // image and every defaulted field.
    let edited = APP.replacen("image: busybox:1.36", "image: busybox:1.37", 1);
    let file = write_manifest(s, "app.yaml", &edited)?;
    let out = s.ok(&["apply", "-f", &file]).await?;
    ensure!(out.contains("deployment.apps/web configured") && out.contains("service/web unchanged"), "{out}");
    let images = s.ok(&["get", "deploy", "web", "-o", "jsonpath={.spec.template.spec.containers[*].image} {.spec.template.spec.containers[1].imagePullPolicy} {.metadata.generation}"]).await?;
    ensure!(images == "busybox:1.37 busybox:1.36 IfNotPresent 2", "images after re-apply: {images}");

    // Default table, wide, name, yaml, json, jsonpath.
    let out = s.ok(&["get", "deploy"]).await?;
    let header: Vec<&str> = out.lines().next().unwrap_or_default().split_whitespace().collect();
    ensure!(header == ["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"], "header: {out}");
    ensure!(out.contains("web ") && out.contains("0/2"), "{out}");
    let out = s.ok(&["get", "deploy", "-o", "wide"]).await?;
    ensure!(out.contains("CONTAINERS") && out.contains("web,sidecar") && out.contains("app=web"), "{out}");
    let out = s.ok(&["get", "svc", "web"]).await?;
    ensure!(out.contains("ClusterIP") && out.contains("10.43.") && out.contains("80/TCP"), "{out}");
    let out = s.ok(&["get", "cm", "-o", "name"]).await?;
    ensure!(out.lines().any(|l| l == "configmap/web-config"), "{out}");
    let out = s.ok(&["get", "deploy", "web", "-o", "yaml"]).await?;
    ensure!(out.contains("kind: Deployment") && out.contains("maxSurge: 25%") && out.contains("resourceVersion:"), "{out}");
    let out = s.ok(&["get", "svc", "web", "-o", "json"]).await?;
    let svc: serde_json::Value = serde_json::from_str(&out)?;
    ensure!(svc["spec"]["ports"][0]["targetPort"] == 8080 && svc["spec"]["type"] == "ClusterIP", "{out}");
    let out = s.ok(&["get", "all", "-A"]).await?;
    ensure!(out.contains("service/kubernetes") && out.contains("deployment.apps/web"), "get all -A: {out}");
    Ok(())
}

async fn edit_commands(s: &TestServer) -> anyhow::Result<()> {
    let file = write_manifest(s, "app.yaml", APP)?;
    s.ok(&["apply", "-f", &file]).await?;
    ensure!(s.ok(&["label", "deploy", "web", "tier=front"]).await?.contains("labeled"));
    ensure!(s.ok(&["annotate", "deploy", "web", "note=hi"]).await?.contains("annotated"));
    s.ok(&["patch", "deploy", "web", "-p", r#"{"spec":{"template":{"spec":{"containers":[{"name":"web","image":"busybox:1.38"}]}}}}"#]).await?;
    s.ok(&["patch", "deploy", "web", "--type=merge", "-p", r#"{"metadata":{"labels":{"merged":"yes"}}}"#]).await?;
    s.ok(&["patch", "deploy", "web", "--type=json", "-p", r#"[{"op":"replace","path":"/spec/replicas","value":4}]"#]).await?;
    let got = s.ok(&["get", "deploy", "web", "-o", "jsonpath={.spec.template.spec.containers[*].image} {.spec.replicas} {.metadata.labels.merged} {.metadata.labels.tier} {.metadata.annotations.note}"]).await?;
    ensure!(got == "busybox:1.38 busybox:1.36 4 yes front hi", "after patches: {got}");
    ensure!(s.ok(&["scale", "deploy", "web", "--replicas=3"]).await?.contains("scaled"));
    ensure!(s.ok(&["get", "deploy", "web", "-o", "jsonpath={.spec.replicas}"]).await? == "3");

    // Scale and patch took replicas and the web image from the applier: server-side
    // apply of the original file conflicts on them, as in Kubernetes, unless forced.
    let err = s.fails(&["apply", "--server-side", "-f", &file]).await?;
    ensure!(err.contains("Apply failed with 2 conflicts") && err.contains(".spec.replicas"), "{err}");
    let out = s.ok(&["apply", "--server-side", "--force-conflicts", "-f", &file]).await?;
    ensure!(out.contains("serverside-applied") && !out.contains("Warning"), "{out}");

    // diff exits 1 when the live object differs from the file.
    let edited = write_manifest(s, "edited.yaml", &APP.replace("replicas: 2", "replicas: 5"))?;
    let out = s.kubectl(&["diff", "-f", &edited]).await?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    ensure!(out.status.code() == Some(1) && stdout.contains("+  replicas: 5"), "diff: {stdout} {}", String::from_utf8_lossy(&out.stderr));

    let out = s.ok(&["describe", "deploy", "web"]).await?;
    ensure!(out.contains("Name:") && out.contains("Replicas:") && out.contains("RollingUpdateStrategy:"), "{out}");
    let out = s.ok(&["describe", "svc", "web"]).await?;
    ensure!(out.contains("IP:") && out.contains("TargetPort:"), "{out}");

    // A Service's type goes to NodePort (a node port is allocated and then kept across
    // patches) and back to ClusterIP (the carried-over node port is dropped, as
    // Kubernetes does, instead of the update being refused).
    s.ok(&["patch", "svc", "web", "-p", r#"{"spec":{"type":"NodePort"}}"#]).await?;
    let node_port = s.ok(&["get", "svc", "web", "-o", "jsonpath={.spec.ports[0].nodePort}"]).await?;
    ensure!(node_port.parse::<u16>().is_ok_and(|p| (30000..=32767).contains(&p)), "nodePort: {node_port:?}");
    s.ok(&["label", "svc", "web", "exposed=yes"]).await?;
    ensure!(s.ok(&["get", "svc", "web", "-o", "jsonpath={.spec.ports[0].nodePort}"]).await? == node_port, "the node port is kept");
    s.ok(&["patch", "svc", "web", "-p", r#"{"spec":{"type":"ClusterIP"}}"#]).await?;
    let got = s.ok(&["get", "svc", "web", "-o", "jsonpath={.spec.type} {.spec.ports[0].nodePort}"]).await?;
    ensure!(got.trim() == "ClusterIP", "back to ClusterIP without a node port: {got:?}");
    let out = s.ok(&["explain", "deployment.spec.strategy"]).await?;
    ensure!(out.contains("DESCRIPTION") && out.contains("rollingUpdate"), "{out}");
    Ok(())
}

async fn watch_sees_changes(s: &TestServer) -> anyhow::Result<()> {
    s.kubectl_stdin(&["create", "-f", "-"], Some("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: first}\n")).await?;
    let mut cmd = tokio::process::Command::new("kubectl");
    cmd.args(["get", "configmaps", "-w", "--request-timeout=20s"])
        .env("KUBECONFIG", &s.kubeconfig)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn()?;
    let stdout = child.stdout.take().context("stdout")?;
    let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(stdout));
    // The first line is the table header once the initial list is printed.
    let header = tokio::time::timeout(std::time::Duration::from_secs(20), lines.next_line()).await??.unwrap_or_default();
    ensure!(header.starts_with("NAME"), "watch header: {header}");
    s.kubectl_stdin(&["create", "-f", "-"], Some("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: watched}\ndata: {a: b}\n")).await?;
    let line = tokio::time::timeout(std::time::Duration::from_secs(20), async {
        loop {
            match lines.next_line().await? {
                Some(l) if l.starts_with("watched") => return anyhow::Ok(l),
                Some(_) => continue,
                None => anyhow::bail!("watch ended"),
            }
        }
    })
    .await??;
    ensure!(line.split_whitespace().nth(1) == Some("1"), "watch line: {line}");
    child.kill().await.ok();
    Ok(())
}

async fn errors_read_like_kubernetes(s: &TestServer) -> anyhow::Result<()> {
    let err = s.fails(&["get", "deploy", "nope"]).await?;
    ensure!(err.contains(r#"Error from server (NotFound): deployments.apps "nope" not found"#), "{err}");
    let bad = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: Bad_Name}\n";
    let out = s.kubectl_stdin(&["create", "-f", "-"], Some(bad)).await?;
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(!out.status.success() && err.contains("is invalid") && err.contains("metadata.name: Invalid value: \"Bad_Name\""), "{err}");
    let unknown = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: ok}\ndatum: {a: b}\n";
    let out = s.kubectl_stdin(&["apply", "-f", "-"], Some(unknown)).await?;
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(!out.status.success() && err.contains(r#"unknown field "datum""#), "{err}");
    let err = s.fails(&["get", "cm", "ok"]).await?;
    ensure!(err.contains("NotFound"), "a refused object must not be stored: {err}");
    // An exported object carries its resourceVersion. kubectl create drops it; a client
    // that posts it as it is gets Kubernetes' refusal, and nothing is stored.
    s.ok(&["create", "configmap", "exported", "--from-literal=a=b"]).await?;
    let exported = write_manifest(s, "exported.json", &s.ok(&["get", "configmap", "exported", "-o", "json"]).await?)?;
    s.ok(&["delete", "configmap", "exported"]).await?;
    let err = s.fails(&["create", "--raw", "/api/v1/namespaces/default/configmaps", "-f", &exported]).await?;
    ensure!(err.contains("resourceVersion should not be set on objects to be created"), "{err}");
    ensure!(s.fails(&["get", "configmap", "exported"]).await?.contains("NotFound"));
    s.ok(&["create", "-f", &exported]).await?;
    let recreate = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: both}\nspec:\n  selector: {matchLabels: {app: b}}\n  strategy: {type: Recreate, rollingUpdate: {maxSurge: 1}}\n  template:\n    metadata: {labels: {app: b}}\n    spec: {containers: [{name: c, image: busybox}]}\n";
    let out = s.kubectl_stdin(&["create", "-f", "-"], Some(recreate)).await?;
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(!out.status.success() && err.contains("spec.strategy.rollingUpdate: Forbidden: may not be specified when strategy `type` is 'Recreate'"), "{err}");
    // seccompProfile: a known type, localhostProfile exactly with Localhost, relative.
    let seccomp = |pod: &str, container: &str| format!("apiVersion: v1\nkind: Pod\nmetadata: {{name: sc}}\nspec:\n  securityContext: {{seccompProfile: {pod}}}\n  containers: [{{name: c, image: busybox, securityContext: {{seccompProfile: {container}}}}}]\n");
    for (pod, container, expected) in [
        ("{type: Localhost}", "{type: RuntimeDefault}", "spec.securityContext.seccompProfile.localhostProfile: Required value: must be set when seccomp type is Localhost"),
        ("{type: RuntimeDefault}", "{type: Strict}", r#"spec.containers[0].securityContext.seccompProfile.type: Unsupported value: "Strict": supported values: "Localhost", "RuntimeDefault", "Unconfined""#),
        ("{type: Unconfined, localhostProfile: a.json}", "{type: RuntimeDefault}", r#"spec.securityContext.seccompProfile.localhostProfile: Invalid value: "a.json": can only be set when seccomp type is Localhost"#),
        ("{type: RuntimeDefault}", "{type: Localhost, localhostProfile: ../../etc/x.json}", r#"spec.containers[0].securityContext.seccompProfile.localhostProfile: Invalid value: "../../etc/x.json": must not contain '..'"#),
    ] {
        let out = s.kubectl_stdin(&["create", "-f", "-"], Some(&seccomp(pod, container))).await?;
        let err = String::from_utf8_lossy(&out.stderr);
        ensure!(!out.status.success() && err.contains(expected), "{pod} {container}: {err}");
    }
    ensure!(s.fails(&["get", "pod", "sc"]).await?.contains("NotFound"), "a pod with a bad seccompProfile was stored");
    let out = s.kubectl_stdin(&["create", "-f", "-"], Some(&seccomp("{type: RuntimeDefault}", "{type: Localhost, localhostProfile: profiles/audit.json}"))).await?;
    ensure!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // Ingresses: hosts, path types and shapes, backends, as Kubernetes validates them.
    let ingress = |rule: &str| format!("apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {{name: ing}}\nspec:\n  rules: [{rule}]\n");
    for (rule, expected) in [
        ("{http: {paths: [{path: /, backend: {service: {name: web, port: {number: 80}}}}]}}", "spec.rules[0].http.paths[0].pathType: Required value: pathType must be specified"),
        ("{http: {paths: [{path: api, pathType: Prefix, backend: {service: {name: web, port: {number: 80}}}}]}}", r#"spec.rules[0].http.paths[0].path: Invalid value: "api": must be an absolute path"#),
        ("{http: {paths: [{path: /, pathType: Regex, backend: {service: {name: web, port: {number: 80}}}}]}}", r#"spec.rules[0].http.paths[0].pathType: Unsupported value: "Regex""#),
        ("{host: 10.0.0.1, http: {paths: [{path: /, pathType: Prefix, backend: {service: {name: web, port: {number: 80}}}}]}}", r#"spec.rules[0].host: Invalid value: "10.0.0.1": must be a DNS name, not an IP address"#),
        ("{host: '*.Shop', http: {paths: [{path: /, pathType: Prefix, backend: {service: {name: web, port: {number: 80}}}}]}}", r#"spec.rules[0].host: Invalid value: "*.Shop": a wildcard DNS-1123 subdomain"#),
        ("{http: {paths: [{path: /, pathType: Prefix, backend: {service: {name: web, port: {number: 80, name: http}}}}]}}", "spec.rules[0].http.paths[0].backend.service.port: Invalid value: \"\": cannot set both port name & port number"),
        ("{http: {paths: [{path: /, pathType: Prefix, backend: {}}]}}", "spec.rules[0].http.paths[0].backend: Invalid value: \"\": one backend (`service` or `resource`) must be specified"),
    ] {
        let out = s.kubectl_stdin(&["create", "-f", "-"], Some(&ingress(rule))).await?;
        let err = String::from_utf8_lossy(&out.stderr);
        ensure!(!out.status.success() && err.contains(expected), "{rule}: {err}");
    }
    let out = s.kubectl_stdin(&["create", "-f", "-"], Some("apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {name: ing}\nspec: {}\n")).await?;
    ensure!(String::from_utf8_lossy(&out.stderr).contains("either `defaultBackend` or `rules` must be specified"), "{}", String::from_utf8_lossy(&out.stderr));
    ensure!(s.fails(&["get", "ingress", "ing"]).await?.contains("NotFound"), "an invalid Ingress was stored");
    s.ok(&["create", "ingress", "ing", "--rule=*.shop.local/api*=api:http", "--rule=shop.local/=web:80,tls=shop-tls"]).await?;
    let out = s.kubectl_stdin(&["create", "-n", "missing", "-f", "-"], Some("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\n")).await?;
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(!out.status.success() && err.contains(r#"namespaces "missing" not found"#), "{err}");
    // kubectl debug adds an ephemeral container through pods/ephemeralcontainers; they
    // are only ever added, and may not have what a debugging container may not.
    s.ok(&["run", "target", "--image=busybox"]).await?;
    s.ok(&["debug", "target", "--image=busybox", "-c", "dbg", "--", "true"]).await?;
    let names = s.ok(&["get", "pod", "target", "-o", "jsonpath={.spec.ephemeralContainers[*].name}"]).await?;
    ensure!(names == "dbg", "{names}");
    let err = s.fails(&["patch", "pod", "target", "--subresource=ephemeralcontainers", "--type=json", "-p", r#"[{"op":"remove","path":"/spec/ephemeralContainers/0"}]"#]).await?;
    ensure!(err.contains(r#"spec.ephemeralContainers: Forbidden: existing ephemeral containers "dbg" may not be changed"#), "{err}");
    let with_ports = r#"{"spec":{"ephemeralContainers":[{"name":"p","image":"busybox","ports":[{"containerPort":80}]}]}}"#;
    let err = s.fails(&["patch", "pod", "target", "--subresource=ephemeralcontainers", "-p", with_ports]).await?;
    ensure!(err.contains("spec.ephemeralContainers[0].ports: Forbidden: cannot be set for an Ephemeral Container"), "{err}");
    // A pod update may not change them (Kubernetes' pod update validation).
    let err = s.fails(&["patch", "pod", "target", "-p", r#"{"spec":{"ephemeralContainers":[{"name":"sneaky","image":"busybox"}]}}"#]).await?;
    ensure!(err.contains("spec: Forbidden: pod updates may not change fields other than"), "{err}");
    s.ok(&["label", "pod", "target", "debugged=yes"]).await?;
    let names = s.ok(&["get", "pod", "target", "-o", "jsonpath={.spec.ephemeralContainers[*].name}"]).await?;
    ensure!(names == "dbg", "{names}");
    Ok(())
}

/// The eviction API (what `kubectl drain` calls) under a PodDisruptionBudget whose
/// status is written by hand here, as the disruption controller would.
async fn evictions_respect_disruption_budgets(s: &TestServer) -> anyhow::Result<()> {
    let eviction = |pod: &str| -> anyhow::Result<String> {
        write_manifest(s, &format!("evict-{pod}.json"), &format!(r#"{{"apiVersion":"policy/v1","kind":"Eviction","metadata":{{"name":"{pod}"}}}}"#))
    };
    let evict = |pod: &str, file: &str| -> Vec<String> {
        vec!["create".into(), "--raw".into(), format!("/api/v1/namespaces/default/pods/{pod}/eviction"), "-f".into(), file.to_string()]
    };
    let running = r#"{"status":{"phase":"Running","conditions":[{"type":"Ready","status":"True"}]}}"#;
    for pod in ["guarded-a", "guarded-b"] {
        // Bound to a node (no kubelet here), so a delete leaves them terminating.
        let manifest = format!("apiVersion: v1\nkind: Pod\nmetadata: {{name: {pod}, labels: {{app: guarded}}}}\nspec: {{nodeName: node-x, containers: [{{name: c, image: busybox}}]}}\n");
        let out = s.kubectl_stdin(&["create", "-f", "-"], Some(&manifest)).await?;
        ensure!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        s.ok(&["patch", "pod", pod, "--subresource=status", "--type=merge", "-p", running]).await?;
    }
    s.ok(&["create", "pdb", "guard", "--selector=app=guarded", "--min-available=2"]).await?;
    let budget = |allowed: u32| format!(r#"{{"status":{{"observedGeneration":1,"disruptionsAllowed":{allowed},"currentHealthy":2,"desiredHealthy":2,"expectedPods":2}}}}"#);
    s.ok(&["patch", "pdb", "guard", "--subresource=status", "--type=merge", "-p", &budget(0)]).await?;
    let file = eviction("guarded-a")?;
    let args = evict("guarded-a", &file);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let err = s.fails(&args).await?;
    ensure!(err.contains("Error from server (TooManyRequests): Cannot evict pod as it would violate the pod's disruption budget."), "{err}");
    s.ok(&["get", "pod", "guarded-a"]).await.context("a refused eviction deleted the pod")?;

    // One disruption allowed: the eviction goes through, is recorded, and uses it up.
    s.ok(&["patch", "pdb", "guard", "--subresource=status", "--type=merge", "-p", &budget(1)]).await?;
    s.ok(&args).await?;
    let status = s.ok(&["get", "pdb", "guard", "-o", "jsonpath={.status.disruptionsAllowed} {.status.disruptedPods.guarded-a}"]).await?;
    ensure!(status.starts_with("0 ") && status.len() > 2, "{status}");
    let evicted = s.ok(&["get", "pod", "guarded-a", "-o", r#"jsonpath={.metadata.deletionTimestamp} {.status.conditions[?(@.type=="DisruptionTarget")].reason}"#]).await?;
    ensure!(evicted.ends_with(" EvictionByEvictionAPI") && evicted.len() > " EvictionByEvictionAPI".len(), "the evicted pod terminating, saying why: {evicted}");
    let file_b = eviction("guarded-b")?;
    let args_b = evict("guarded-b", &file_b);
    let args_b: Vec<&str> = args_b.iter().map(String::as_str).collect();
    let err = s.fails(&args_b).await?;
    ensure!(err.contains("TooManyRequests"), "the budget was not used up: {err}");

    // A running pod that is not Ready takes nothing from a budget that is met.
    let unready = "apiVersion: v1\nkind: Pod\nmetadata: {name: guarded-c, labels: {app: guarded}}\nspec: {nodeName: node-x, containers: [{name: c, image: busybox}]}\n";
    let out = s.kubectl_stdin(&["create", "-f", "-"], Some(unready)).await?;
    ensure!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    s.ok(&["patch", "pod", "guarded-c", "--subresource=status", "--type=merge", "-p", r#"{"status":{"phase":"Running","conditions":[{"type":"Ready","status":"False"}]}}"#]).await?;
    let file_c = eviction("guarded-c")?;
    let args_c = evict("guarded-c", &file_c);
    s.ok(&args_c.iter().map(String::as_str).collect::<Vec<_>>()).await?;
    let status = s.ok(&["get", "pdb", "guard", "-o", "jsonpath={.status.disruptionsAllowed} {.status.disruptedPods.guarded-c}"]).await?;
    ensure!(status.trim() == "0", "an unready pod's eviction took from the budget: {status}");

    // A pod that has not started counts against no budget.
    s.ok(&["run", "guarded-pending", "--image=busybox", "--labels=app=guarded"]).await?;
    let file_p = eviction("guarded-pending")?;
    let args_p = evict("guarded-pending", &file_p);
    s.ok(&args_p.iter().map(String::as_str).collect::<Vec<_>>()).await?;
    // Two budgets over one pod: Kubernetes' eviction refuses to choose.
    s.ok(&["create", "pdb", "guard-too", "--selector=app=guarded", "--max-unavailable=1"]).await?;
    let err = s.fails(&args_b).await?;
    ensure!(err.contains("This pod has more than one PodDisruptionBudget, which the eviction subresource does not support."), "{err}");
    s.ok(&["get", "pod", "guarded-b"]).await?;
    Ok(())
}

/// `kubectl get --raw /readyz?verbose`, as Kubernetes' docs on the API health
/// endpoints show it, and its answer once etcd is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_endpoints_follow_the_store() -> anyhow::Result<()> {
    let Some(mut s) = server(Backend::Etcd).await? else { return Ok(()) };
    ensure!(s.ok(&["get", "--raw", "/readyz"]).await? == "ok");
    let verbose = s.ok(&["get", "--raw", "/readyz?verbose"]).await?;
    ensure!(verbose == "[+]ping ok\n[+]log ok\n[+]etcd ok\nreadyz check passed\n", "{verbose:?}");
    let excluded = s.ok(&["get", "--raw", "/livez?verbose&exclude=etcd"]).await?;
    ensure!(excluded.contains("[+]etcd excluded: ok\n") && excluded.ends_with("livez check passed\n"), "{excluded:?}");
    ensure!(s.ok(&["get", "--raw", "/healthz/etcd"]).await? == "ok");
    let err = s.fails(&["get", "--raw", "/readyz/nonsense"]).await?;
    ensure!(err.contains("NotFound") || err.contains("not found"), "{err}");
    s.kill_etcd();
    let err = s.fails(&["get", "--raw", "/readyz?verbose"]).await?;
    ensure!(err.contains("[-]etcd failed: reason withheld") && err.contains("readyz check failed") && err.contains("[+]ping ok"), "{err}");
    let err = s.fails(&["get", "--raw", "/livez/etcd"]).await?;
    ensure!(err.contains("internal server error"), "{err}");
    Ok(())
}

async fn delete_cascades(s: &TestServer) -> anyhow::Result<()> {
    let file = write_manifest(s, "app.yaml", APP)?;
    s.ok(&["apply", "-f", &file]).await?;
    let out = s.ok(&["delete", "deploy", "web", "--cascade=background"]).await?;
    ensure!(out.contains(r#"deployment.apps "web" deleted"#), "{out}");
    s.fails(&["get", "deploy", "web"]).await?;
    // Orphan and foreground deletes leave the object with its finalizer for the garbage
    // collector (kube-controller-manager) to finish.
    s.ok(&["apply", "-f", &file]).await?;
    s.ok(&["delete", "deploy", "web", "--cascade=orphan", "--wait=false"]).await?;
    let fin = s.ok(&["get", "deploy", "web", "-o", "jsonpath={.metadata.finalizers} {.metadata.deletionTimestamp}"]).await?;
    ensure!(fin.starts_with(r#"["orphan"] "#) && fin.len() > 12, "orphan delete: {fin}");
    s.ok(&["delete", "cm", "web-config"]).await?;
    s.fails(&["get", "cm", "web-config"]).await?;
    Ok(())
}

async fn generators(s: &TestServer) -> anyhow::Result<()> {
    ensure!(s.ok(&["create", "namespace", "demo"]).await?.contains("namespace/demo created"));
    ensure!(s.ok(&["create", "configmap", "c", "--from-literal=a=b", "-n", "demo"]).await?.contains("created"));
    ensure!(s.ok(&["create", "secret", "generic", "s", "--from-literal=k=v", "-n", "demo"]).await?.contains("created"));
    ensure!(s.ok(&["create", "deployment", "web", "--image=busybox", "--replicas=2", "-n", "demo"]).await?.contains("created"));
    ensure!(s.ok(&["create", "service", "clusterip", "web", "--tcp=80:8080", "-n", "demo"]).await?.contains("created"));
    ensure!(s.ok(&["create", "job", "once", "--image=busybox", "-n", "demo"]).await?.contains("created"));
    let got = s.ok(&["get", "cm", "c", "-n", "demo", "-o", "jsonpath={.data.a}"]).await?;
    ensure!(got == "b", "configmap data: {got}");
    let got = s.ok(&["get", "secret", "s", "-n", "demo", "-o", "jsonpath={.data.k}"]).await?;
    ensure!(got == "dg==", "secret data: {got}");
    let got = s.ok(&["get", "deploy", "web", "-n", "demo", "-o", "jsonpath={.spec.replicas} {.spec.template.spec.containers[0].image}"]).await?;
    ensure!(got == "2 busybox", "deployment: {got}");
    let got = s.ok(&["get", "svc", "web", "-n", "demo", "-o", "jsonpath={.spec.ports[0].port} {.spec.ports[0].targetPort}"]).await?;
    ensure!(got == "80 8080", "service: {got}");
    let got = s.ok(&["get", "job", "once", "-n", "demo", "-o", "jsonpath={.spec.selector.matchLabels}"]).await?;
    ensure!(got.contains("batch.kubernetes.io/controller-uid"), "job selector: {got}");
    Ok(())
}

const SSA: &str = r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: ssa
  labels: {app: ssa, tier: front}
spec:
  replicas: 2
  selector:
    matchLabels: {app: ssa}
  template:
    metadata:
      labels: {app: ssa}
    spec:
      containers:
      - name: web
        image: busybox:1.36
        command: ["sleep", "3600"]
        ports: [{containerPort: 8080}]
"#;

async fn server_side_apply(s: &TestServer) -> anyhow::Result<()> {
    let file = write_manifest(s, "ssa.yaml", SSA)?;
    let out = s.ok(&["apply", "--server-side", "-f", &file]).await?;
    ensure!(out.contains("deployment.apps/ssa serverside-applied"), "{out}");

    // Ownership is recorded, and shown only on request.
    let yaml = s.ok(&["get", "deploy", "ssa", "-o", "yaml"]).await?;
    ensure!(!yaml.contains("managedFields"), "managedFields shown by default: {yaml}");
    let yaml = s.ok(&["get", "deploy", "ssa", "-o", "yaml", "--show-managed-fields"]).await?;
    ensure!(yaml.contains("manager: kubectl") && yaml.contains("operation: Apply") && yaml.contains("f:replicas: {}"), "{yaml}");
    ensure!(yaml.contains(r#"k:{"name":"web"}"#), "containers keyed by name: {yaml}");

    // Another manager takes replicas; applying a different value conflicts.
    ensure!(s.ok(&["scale", "deploy", "ssa", "--replicas=5"]).await?.contains("scaled"));
    let changed = SSA.replace("replicas: 2", "replicas: 3");
    let file = write_manifest(s, "ssa.yaml", &changed)?;
    let err = s.fails(&["apply", "--server-side", "-f", &file]).await?;
    ensure!(err.contains("Apply failed with 1 conflict") && err.contains(".spec.replicas"), "{err}");
    let got = s.ok(&["get", "deploy", "ssa", "-o", "jsonpath={.spec.replicas}"]).await?;
    ensure!(got == "5", "replicas after a refused apply: {got}");

    // Forced, the applier takes the field.
    let out = s.ok(&["apply", "--server-side", "--force-conflicts", "-f", &file]).await?;
    ensure!(out.contains("serverside-applied"), "{out}");
    let got = s.ok(&["get", "deploy", "ssa", "-o", "jsonpath={.spec.replicas}"]).await?;
    ensure!(got == "3", "replicas after a forced apply: {got}");

    // Re-applying without a label removes it; an image edit by another manager conflicts.
    let without = changed.replace("labels: {app: ssa, tier: front}", "labels: {app: ssa}");
    let file = write_manifest(s, "ssa.yaml", &without)?;
    s.ok(&["apply", "--server-side", "-f", &file]).await?;
    let got = s.ok(&["get", "deploy", "ssa", "-o", "jsonpath={.metadata.labels}"]).await?;
    ensure!(got.contains("app") && !got.contains("tier"), "labels after dropping tier: {got}");
    s.ok(&["set", "image", "deploy/ssa", "web=busybox:1.37"]).await?;
    let edited = without.replace("busybox:1.36", "busybox:1.38");
    let file = write_manifest(s, "ssa.yaml", &edited)?;
    let err = s.fails(&["apply", "--server-side", "-f", &file]).await?;
    ensure!(err.contains(r#".spec.template.spec.containers[name="web"].image"#), "{err}");
    Ok(())
}

async fn priority_classes(s: &TestServer) -> anyhow::Result<()> {
    let out = s.ok(&["get", "priorityclasses"]).await?;
    ensure!(out.contains("system-node-critical") && out.contains("2000001000"), "{out}");
    s.ok(&["create", "priorityclass", "high", "--value=1000"]).await?;
    s.ok(&["run", "urgent", "--image=busybox", r#"--overrides={"spec":{"priorityClassName":"high"}}"#]).await?;
    let got = s.ok(&["get", "pod", "urgent", "-o", "jsonpath={.spec.priority}"]).await?;
    ensure!(got == "1000", "priority from the class: {got}");
    s.ok(&["run", "plain", "--image=busybox"]).await?;
    let got = s.ok(&["get", "pod", "plain", "-o", "jsonpath={.spec.priority}"]).await?;
    ensure!(got == "0", "default priority: {got}");
    let err = s.fails(&["run", "lost", "--image=busybox", r#"--overrides={"spec":{"priorityClassName":"nope"}}"#]).await?;
    ensure!(err.contains("no PriorityClass with name nope was found"), "{err}");
    // A global default class applies to pods that name none; deleting it stops that.
    s.ok(&["create", "priorityclass", "everyday", "--value=7", "--global-default"]).await?;
    s.ok(&["run", "defaulted", "--image=busybox"]).await?;
    let got = s.ok(&["get", "pod", "defaulted", "-o", "jsonpath={.spec.priority} {.spec.priorityClassName}"]).await?;
    ensure!(got == "7 everyday", "priority from the global default: {got}");
    s.ok(&["delete", "priorityclass", "everyday"]).await?;
    Ok(())
}

/// Lists page with limit/continue (kubectl's --chunk-size), carry every item's
/// resourceVersion, and filter by label across pages.
async fn lists_page_and_filter(s: &TestServer) -> anyhow::Result<()> {
    s.ok(&["create", "namespace", "paged"]).await?;
    for i in 0..7 {
        let name = format!("cm-{i}");
        let parity = if i % 2 == 0 { "even" } else { "odd" };
        s.ok(&["create", "configmap", &name, "-n", "paged", &format!("--from-literal=i={i}")]).await?;
        s.ok(&["label", "configmap", &name, "-n", "paged", &format!("parity={parity}")]).await?;
    }
    let names = s.ok(&["get", "configmaps", "-n", "paged", "--chunk-size=2", "-o", "name", "-l", "parity"]).await?;
    ensure!(names.lines().count() == 7 && names.contains("configmap/cm-6"), "{names}");
    let mut seen = Vec::new();
    let mut next = String::new();
    for _ in 0..10 {
        let path = format!("/api/v1/namespaces/paged/configmaps?limit=3{next}");
        let page: serde_json::Value = serde_json::from_str(&s.ok(&["get", "--raw", &path]).await?)?;
        ensure!(page["kind"] == "ConfigMapList" && page["apiVersion"] == "v1", "{page}");
        for item in page["items"].as_array().context("items")? {
            let rv = item["metadata"]["resourceVersion"].as_str().unwrap_or_default();
            ensure!(rv.parse::<u64>().is_ok(), "an item without its resourceVersion: {item}");
            seen.push(item["metadata"]["name"].as_str().unwrap_or_default().to_string());
        }
        match page["metadata"]["continue"].as_str() {
            Some(token) if !token.is_empty() => next = format!("&continue={token}"),
            _ => break,
        }
    }
    ensure!(seen == (0..7).map(|i| format!("cm-{i}")).collect::<Vec<_>>(), "pages gave {seen:?}");
    let odd: serde_json::Value = serde_json::from_str(&s.ok(&["get", "--raw", "/api/v1/namespaces/paged/configmaps?labelSelector=parity%3Dodd&limit=2"]).await?)?;
    let names: Vec<&str> = odd["items"].as_array().context("items")?.iter().filter_map(|i| i["metadata"]["name"].as_str()).collect();
    ensure!(names == ["cm-1", "cm-3"] && odd["metadata"]["continue"].is_string(), "{odd}");
    let one = s.ok(&["get", "configmap", "cm-4", "-n", "paged", "-o", "jsonpath={.metadata.resourceVersion}"]).await?;
    let listed = s.ok(&["get", "configmaps", "-n", "paged", "-o", "jsonpath={.items[?(@.metadata.name==\"cm-4\")].metadata.resourceVersion}"]).await?;
    ensure!(one == listed, "get and list disagree on the resourceVersion: {one} vs {listed}");
    Ok(())
}

const HPA_V1: &str = "apiVersion: autoscaling/v1
kind: HorizontalPodAutoscaler
metadata:
  name: web
spec:
  scaleTargetRef: {apiVersion: apps/v1, kind: Deployment, name: web}
  minReplicas: 1
  maxReplicas: 5
  targetCPUUtilizationPercentage: 50
";

const CORE_EVENT: &str = "apiVersion: v1
kind: Event
metadata: {name: old-style}
involvedObject: {kind: Pod, name: p1, namespace: default}
reason: Tested
message: from the core API
type: Normal
source: {component: tester}
";

const NEW_EVENT: &str = "apiVersion: events.k8s.io/v1
kind: Event
metadata: {name: new-style}
regarding: {kind: Pod, name: p2, namespace: default}
reason: Made
note: from events.k8s.io
type: Normal
action: Make
eventTime: 2026-11-22T10:00:00.000000Z
reportingController: example.com/tester
reportingInstance: tester-1
";

/// autoscaling v1 and v2, and core and events.k8s.io Events, are one storage in two
/// shapes: what one version writes, the other reads, lists and watches.
async fn versions_share_storage(s: &TestServer) -> anyhow::Result<()> {
    // A tutorial's autoscaling/v1 HPA is the one `kubectl get hpa` (v2) shows.
    s.kubectl_stdin(&["apply", "-f", "-"], Some(HPA_V1)).await.and_then(|o| {
        ensure!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        Ok(())
    })?;
    let got = s.ok(&["get", "hpa", "web", "-o", "jsonpath={.apiVersion} {.spec.metrics[0].resource.target.averageUtilization}"]).await?;
    ensure!(got == "autoscaling/v2 50", "v1 HPA read as v2: {got}");
    let out = s.ok(&["get", "hpa"]).await?;
    ensure!(out.contains("Deployment/web") && out.contains("/50%"), "{out}");

    // `kubectl autoscale` writes v2; v1 reads its CPU target.
    s.ok(&["create", "deployment", "api", "--image=busybox"]).await?;
    s.ok(&["autoscale", "deployment", "api", "--max=3", "--cpu-percent=70"]).await?;
    let got = s.ok(&["get", "horizontalpodautoscalers.v1.autoscaling", "api", "-o", "jsonpath={.apiVersion} {.spec.targetCPUUtilizationPercentage} {.spec.maxReplicas}"]).await?;
    ensure!(got == "autoscaling/v1 70 3", "v2 HPA read as v1: {got}");

    // A metric v1 has no field for travels in Kubernetes' annotation, and a v1 update
    // (label, then a full replace) keeps it.
    s.ok(&["patch", "hpa", "web", "--type=merge", "-p", r#"{"spec":{"metrics":[
        {"type":"Resource","resource":{"name":"cpu","target":{"type":"Utilization","averageUtilization":50}}},
        {"type":"Resource","resource":{"name":"memory","target":{"type":"AverageValue","averageValue":"100Mi"}}}]}}"#]).await?;
    let v1: serde_json::Value = serde_json::from_str(&s.ok(&["get", "horizontalpodautoscalers.v1.autoscaling", "web", "-o", "json"]).await?)?;
    let carried = v1["metadata"]["annotations"]["autoscaling.alpha.kubernetes.io/metrics"].as_str().unwrap_or_default();
    ensure!(carried.contains(r#""name":"memory""#) && carried.contains(r#""targetAverageValue":"100Mi""#), "{v1}");
    ensure!(v1["spec"]["targetCPUUtilizationPercentage"] == 50, "{v1}");
    s.ok(&["label", "horizontalpodautoscalers.v1.autoscaling", "web", "tier=front"]).await?;
    let mut edited = v1.clone();
    edited["spec"]["maxReplicas"] = serde_json::json!(7);
    if let Some(meta) = edited["metadata"].as_object_mut() {
        meta.remove("resourceVersion");
        meta.insert("labels".into(), serde_json::json!({"tier": "front"}));
    }
    let file = write_manifest(s, "hpa-v1.json", &edited.to_string())?;
    s.ok(&["replace", "-f", &file]).await?;
    let got = s.ok(&["get", "hpa", "web", "-o", "jsonpath={.spec.maxReplicas} {.spec.metrics[*].resource.name} {.metadata.labels.tier}"]).await?;
    ensure!(got == "7 cpu memory front", "after v1 writes, v2 reads: {got:?}");
    let v2: serde_json::Value = serde_json::from_str(&s.ok(&["get", "hpa", "web", "-o", "json"]).await?)?;
    ensure!(v2["metadata"]["annotations"].get("autoscaling.alpha.kubernetes.io/metrics").is_none(), "v2 keeps no conversion annotation: {v2}");

    // Events: each API reads the other's, with its own field names and field selectors.
    s.kubectl_stdin(&["create", "-f", "-"], Some(CORE_EVENT)).await?;
    s.kubectl_stdin(&["create", "-f", "-"], Some(NEW_EVENT)).await.and_then(|o| {
        ensure!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        Ok(())
    })?;
    let got = s.ok(&["get", "events.v1.events.k8s.io", "--field-selector", "regarding.name=p1", "-o", "jsonpath={.items[*].note}|{.items[*].deprecatedSource.component}"]).await?;
    ensure!(got == "from the core API|tester", "core event as events.k8s.io: {got}");
    let got = s.ok(&["get", "events", "--field-selector", "involvedObject.name=p2", "-o", "jsonpath={.items[*].message}|{.items[*].reportingComponent}"]).await?;
    ensure!(got == "from events.k8s.io|example.com/tester", "events.k8s.io event as core: {got}");
    let out = s.ok(&["get", "events"]).await?;
    ensure!(out.contains("from the core API") && out.contains("from events.k8s.io"), "{out}");
    // A watch from the cache converts too.
    let raw = s.ok(&["get", "--raw", "/apis/events.k8s.io/v1/namespaces/default/events?watch=true&resourceVersion=0&timeoutSeconds=1&fieldSelector=reason%3DTested"]).await?;
    let event: serde_json::Value = serde_json::from_str(raw.lines().next().unwrap_or_default())?;
    ensure!(event["type"] == "ADDED" && event["object"]["apiVersion"] == "events.k8s.io/v1" && event["object"]["note"] == "from the core API", "{raw}");
    Ok(())
}

macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod embedded {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() -> anyhow::Result<()> {
                    let Some(s) = super::server(super::Backend::Embedded).await? else { return Ok(()) };
                    super::$name(&s).await
                }
            )*
        }
        mod etcd {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() -> anyhow::Result<()> {
                    let Some(s) = super::server(super::Backend::Etcd).await? else { return Ok(()) };
                    super::$name(&s).await
                }
            )*
        }
    };
}

on_both_backends!(evictions_respect_disruption_budgets, lists_page_and_filter, versions_share_storage, priority_classes, apply_and_reapply, edit_commands, watch_sees_changes, errors_read_like_kubernetes, delete_cascades, generators, server_side_apply);
