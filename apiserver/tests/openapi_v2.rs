//! `/openapi/v2` with real clients: every stock kubectl here (the one on PATH and the
//! versioned 1.27–1.33 binaries beside it) reads the protobuf document for `explain
//! --output=plaintext-openapiv2`, computes client-side `apply` patches from its
//! `x-kubernetes-patch-*` extensions (containers merge by name, the strategy keeps only
//! the keys given), and has unknown fields refused under `--validate=strict`; and the
//! protobuf body decodes as gnostic's `openapi.v2.Document` with an independent decoder
//! (prost), next to JSON, 406 and 304 answers.

mod support;

use std::path::{Path, PathBuf};
use std::process::Output;

use anyhow::{bail, ensure, Context};
use http_body_util::BodyExt;
use kube::config::{KubeConfigOptions, Kubeconfig};
use prost::Message;
use support::server::{have_kubectl, Backend, TestServer};

const PROTOBUF: &str = "application/com.github.proto-openapi.spec.v2@v1.0+protobuf";

/// A kubectl binary and the name it is reported under.
struct Kubectl {
    label: String,
    path: PathBuf,
}

/// The kubectl on PATH and, beside the file it resolves to, `kubectl.1.27` … `kubectl.1.33`
/// (the Google Cloud SDK layout; the `kubectl` there picks a version by the server's).
fn kubectls() -> Vec<Kubectl> {
    let mut out = Vec::new();
    let on_path = std::env::var_os("PATH").and_then(|p| std::env::split_paths(&p).map(|d| d.join("kubectl")).find(|f| f.is_file()));
    let Some(on_path) = on_path else { return out };
    out.push(Kubectl { label: "path".into(), path: on_path.clone() });
    if let Some(dir) = std::fs::canonicalize(&on_path).ok().and_then(|p| p.parent().map(Path::to_path_buf)) {
        for minor in 27..=33 {
            let path = dir.join(format!("kubectl.1.{minor}"));
            if path.is_file() {
                out.push(Kubectl { label: format!("1.{minor}"), path });
            }
        }
    }
    out
}

async fn run(s: &TestServer, k: &Kubectl, args: &[&str]) -> anyhow::Result<Output> {
    // Each binary gets its own HOME, so no discovery or OpenAPI cache is shared.
    let home = s.dir.path().join(format!("home-{}", k.label));
    std::fs::create_dir_all(&home)?;
    let mut cmd = tokio::process::Command::new(&k.path);
    cmd.args(args)
        .env("KUBECONFIG", &s.kubeconfig)
        .env("HOME", &home)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let child = cmd.spawn().with_context(|| format!("running {}", k.path.display()))?;
    tokio::time::timeout(std::time::Duration::from_secs(90), child.wait_with_output())
        .await
        .with_context(|| format!("kubectl {} {} timed out", k.label, args.join(" ")))?
        .map_err(Into::into)
}

async fn ok(s: &TestServer, k: &Kubectl, args: &[&str]) -> anyhow::Result<(String, String)> {
    let out = run(s, k, args).await?;
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned());
    if !out.status.success() {
        bail!("kubectl {} {} failed: {stdout}{stderr}", k.label, args.join(" "));
    }
    Ok((stdout, stderr))
}

fn write(s: &TestServer, name: &str, text: &str) -> anyhow::Result<String> {
    let path = s.dir.path().join(name);
    std::fs::write(&path, text)?;
    Ok(path.to_string_lossy().into_owned())
}

fn deployment(name: &str, web_image: &str, strategy: &str) -> String {
    format!(
        r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: {name}
spec:
  replicas: 1
{strategy}  selector:
    matchLabels: {{app: {name}}}
  template:
    metadata:
      labels: {{app: {name}}}
    spec:
      containers:
      - name: web
        image: {web_image}
        ports: [{{containerPort: 8080}}]
        env: [{{name: A, value: "1"}}]
      - name: sidecar
        image: busybox:1.36
        command: ["sleep", "3600"]
"#
    )
}

/// What one kubectl version must do with the document.
async fn kubectl_reads_the_document(s: &TestServer, k: &Kubectl) -> anyhow::Result<()> {
    let who = &k.label;
    // explain from the v2 document (the protobuf one: that is what client-go fetches).
    let (out, log) = ok(s, k, &["explain", "deployment.spec.strategy", "--output=plaintext-openapiv2", "-v=6"]).await?;
    ensure!(
        out.contains("The deployment strategy to use to replace existing pods with new ones")
            && out.contains("DeploymentStrategy describes how to replace existing pods with new ones")
            && out.contains("rollingUpdate")
            && out.contains("RollingUpdate"),
        "{who}: explain: {out}"
    );
    ensure!(log.contains("/openapi/v2") && log.contains("200 OK"), "{who}: explain did not read /openapi/v2: {log}");
    let (out, _) = ok(s, k, &["explain", "pod.spec.containers.ports", "--output=plaintext-openapiv2"]).await?;
    ensure!(out.contains("containerPort") && out.contains("List of ports to expose from the container"), "{who}: explain ports: {out}");

    // Client-side apply, then a re-apply changing one container's image: the patch
    // merges containers by name, so the sidecar and every defaulted field stay.
    let name = format!("web-{}", who.replace('.', "-"));
    let file = write(s, &format!("{name}.yaml"), &deployment(&name, "busybox:1.36", ""))?;
    let (out, _) = ok(s, k, &["apply", "-f", &file]).await?;
    ensure!(out.contains(&format!("deployment.apps/{name} created")), "{who}: {out}");
    // Someone else sets a field of the sidecar the file does not have: a merge keeps it,
    // replacing the list would drop it.
    let set_workdir = r#"[{"op":"add","path":"/spec/template/spec/containers/1/workingDir","value":"/data"}]"#;
    ok(s, k, &["patch", "deploy", &name, "--type=json", "-p", set_workdir]).await?;
    let file = write(s, &format!("{name}.yaml"), &deployment(&name, "busybox:1.37", ""))?;
    let (out, log) = ok(s, k, &["apply", "-f", &file, "-v=8"]).await?;
    ensure!(out.contains(&format!("deployment.apps/{name} configured")), "{who}: {out}");
    ensure!(!log.contains("error calculating patch"), "{who}: kubectl could not use the document: {log}");
    ensure!(log.contains("/openapi/v2") && log.contains(PROTOBUF), "{who}: apply did not read the protobuf /openapi/v2: {log}");
    ensure!(log.contains("$setElementOrder/containers"), "{who}: not a strategic merge patch by container name: {log}");
    let template = "{range .spec.template.spec.containers[*]}{.name}={.image},{.imagePullPolicy},{.terminationMessagePath},{.ports[*].protocol},{.env[*].name},{.workingDir};{end}";
    let (got, _) = ok(s, k, &["get", "deploy", &name, "-o", &format!("jsonpath={template}")]).await?;
    ensure!(
        got == "web=busybox:1.37,IfNotPresent,/dev/termination-log,TCP,A,;sidecar=busybox:1.36,IfNotPresent,/dev/termination-log,,,/data;",
        "{who}: containers after re-apply: {got}"
    );

    // The strategy carries retainKeys: going to Recreate drops the defaulted rollingUpdate.
    let recreate = deployment(&name, "busybox:1.37", "  strategy:\n    type: Recreate\n");
    let file = write(s, &format!("{name}.yaml"), &recreate)?;
    let (_, log) = ok(s, k, &["apply", "-f", &file, "-v=8"]).await?;
    ensure!(log.contains("$retainKeys"), "{who}: no $retainKeys in the strategy patch: {log}");
    let (got, _) = ok(s, k, &["get", "deploy", &name, "-o", "jsonpath={.spec.strategy}"]).await?;
    ensure!(got == r#"{"type":"Recreate"}"#, "{who}: strategy after re-apply: {got}");

    // A container taken out of the file is deleted by name. (Sent as a whole list, the
    // server's merge by name would keep it.)
    let sidecar = "      - name: sidecar\n        image: busybox:1.36\n        command: [\"sleep\", \"3600\"]\n";
    ensure!(recreate.contains(sidecar), "{who}: the manifest changed shape");
    let file = write(s, &format!("{name}.yaml"), &recreate.replace(sidecar, ""))?;
    ok(s, k, &["apply", "-f", &file]).await?;
    let (got, _) = ok(s, k, &["get", "deploy", &name, "-o", "jsonpath={.spec.template.spec.containers[*].name}"]).await?;
    ensure!(got == "web", "{who}: containers after removing the sidecar from the file: {got}");

    // Strict validation names the unknown field and stores nothing.
    let bad = deployment(&format!("{name}-bad"), "busybox:1.36", "  bogusField: 3\n");
    let file = write(s, &format!("{name}-bad.yaml"), &bad)?;
    let out = run(s, k, &["apply", "--validate=strict", "-f", &file]).await?;
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(!out.status.success() && err.contains(r#"unknown field "spec.bogusField""#), "{who}: strict apply: {err}");
    let out = run(s, k, &["get", "deploy", &format!("{name}-bad")]).await?;
    ensure!(!out.status.success(), "{who}: a refused object was stored");
    Ok(())
}

#[tokio::test]
async fn stock_kubectls_use_the_v2_document() -> anyhow::Result<()> {
    if !have_kubectl()? {
        return Ok(());
    }
    let Some(s) = TestServer::start(Backend::Embedded).await? else { return Ok(()) };
    let all = kubectls();
    let labels: Vec<&str> = all.iter().map(|k| k.label.as_str()).collect();
    eprintln!("kubectl versions: {labels:?}");
    let mut failures = Vec::new();
    for k in &all {
        if let Err(e) = kubectl_reads_the_document(&s, k).await {
            failures.push(format!("{e:#}"));
        }
    }
    ensure!(failures.is_empty(), "{}", failures.join("\n\n"));
    Ok(())
}

// The messages of gnostic's openapiv2/OpenAPIv2.proto this test reads (prost skips the
// other fields). A `oneof` is read as optional fields, which is the same on the wire.

#[derive(Clone, PartialEq, Message)]
struct Document {
    #[prost(string, tag = "1")]
    swagger: String,
    #[prost(message, optional, tag = "2")]
    info: Option<Info>,
    #[prost(message, optional, tag = "8")]
    paths: Option<Paths>,
    #[prost(message, optional, tag = "9")]
    definitions: Option<Definitions>,
}

#[derive(Clone, PartialEq, Message)]
struct Info {
    #[prost(string, tag = "1")]
    title: String,
    #[prost(string, tag = "2")]
    version: String,
}

#[derive(Clone, PartialEq, Message)]
struct Paths {
    #[prost(message, repeated, tag = "2")]
    path: Vec<NamedPathItem>,
}

#[derive(Clone, PartialEq, Message)]
struct NamedPathItem {
    #[prost(string, tag = "1")]
    name: String,
    #[prost(message, optional, tag = "2")]
    value: Option<PathItem>,
}

#[derive(Clone, PartialEq, Message)]
struct PathItem {
    #[prost(message, optional, tag = "2")]
    get: Option<Operation>,
    #[prost(message, optional, tag = "8")]
    patch: Option<Operation>,
    #[prost(message, repeated, tag = "9")]
    parameters: Vec<ParametersItem>,
}

#[derive(Clone, PartialEq, Message)]
struct Operation {
    #[prost(string, tag = "5")]
    operation_id: String,
    #[prost(string, repeated, tag = "7")]
    consumes: Vec<String>,
    #[prost(message, repeated, tag = "8")]
    parameters: Vec<ParametersItem>,
    #[prost(message, repeated, tag = "13")]
    vendor_extension: Vec<NamedAny>,
}

#[derive(Clone, PartialEq, Message)]
struct ParametersItem {
    #[prost(message, optional, tag = "1")]
    parameter: Option<Parameter>,
}

#[derive(Clone, PartialEq, Message)]
struct Parameter {
    #[prost(message, optional, tag = "1")]
    body_parameter: Option<BodyParameter>,
    #[prost(message, optional, tag = "2")]
    non_body_parameter: Option<NonBodyParameter>,
}

#[derive(Clone, PartialEq, Message)]
struct BodyParameter {
    #[prost(string, tag = "2")]
    name: String,
    #[prost(bool, tag = "4")]
    required: bool,
    #[prost(message, optional, tag = "5")]
    schema: Option<Schema>,
}

#[derive(Clone, PartialEq, Message)]
struct NonBodyParameter {
    #[prost(message, optional, tag = "3")]
    query_parameter_sub_schema: Option<QueryParameterSubSchema>,
    #[prost(message, optional, tag = "4")]
    path_parameter_sub_schema: Option<PathParameterSubSchema>,
}

#[derive(Clone, PartialEq, Message)]
struct QueryParameterSubSchema {
    #[prost(string, tag = "2")]
    r#in: String,
    #[prost(string, tag = "4")]
    name: String,
    #[prost(string, tag = "6")]
    r#type: String,
}

#[derive(Clone, PartialEq, Message)]
struct PathParameterSubSchema {
    #[prost(bool, tag = "1")]
    required: bool,
    #[prost(string, tag = "4")]
    name: String,
}

#[derive(Clone, PartialEq, Message)]
struct Definitions {
    #[prost(message, repeated, tag = "1")]
    additional_properties: Vec<NamedSchema>,
}

#[derive(Clone, PartialEq, Message)]
struct NamedSchema {
    #[prost(string, tag = "1")]
    name: String,
    #[prost(message, optional, tag = "2")]
    value: Option<Schema>,
}

#[derive(Clone, PartialEq, Message)]
struct Schema {
    #[prost(string, tag = "1")]
    xref: String,
    #[prost(string, tag = "4")]
    description: String,
    #[prost(message, optional, tag = "22")]
    r#type: Option<TypeItem>,
    #[prost(message, optional, tag = "23")]
    items: Option<ItemsItem>,
    #[prost(message, optional, tag = "25")]
    properties: Option<Properties>,
    #[prost(message, repeated, tag = "31")]
    vendor_extension: Vec<NamedAny>,
}

#[derive(Clone, PartialEq, Message)]
struct TypeItem {
    #[prost(string, repeated, tag = "1")]
    value: Vec<String>,
}

#[derive(Clone, PartialEq, Message)]
struct ItemsItem {
    #[prost(message, repeated, tag = "1")]
    schema: Vec<Schema>,
}

#[derive(Clone, PartialEq, Message)]
struct Properties {
    #[prost(message, repeated, tag = "1")]
    additional_properties: Vec<NamedSchema>,
}

#[derive(Clone, PartialEq, Message)]
struct NamedAny {
    #[prost(string, tag = "1")]
    name: String,
    #[prost(message, optional, tag = "2")]
    value: Option<Any>,
}

#[derive(Clone, PartialEq, Message)]
struct Any {
    #[prost(string, tag = "2")]
    yaml: String,
}

fn definition<'a>(doc: &'a Document, name: &str) -> anyhow::Result<&'a Schema> {
    doc.definitions
        .as_ref()
        .and_then(|d| d.additional_properties.iter().find(|n| n.name == name))
        .and_then(|n| n.value.as_ref())
        .with_context(|| format!("no definition {name}"))
}

fn property<'a>(schema: &'a Schema, name: &str) -> anyhow::Result<&'a Schema> {
    schema
        .properties
        .as_ref()
        .and_then(|p| p.additional_properties.iter().find(|n| n.name == name))
        .and_then(|n| n.value.as_ref())
        .with_context(|| format!("no property {name}"))
}

/// An extension's value, read as YAML (as kube-openapi does).
fn extension(extensions: &[NamedAny], name: &str) -> Option<serde_json::Value> {
    let yaml = &extensions.iter().find(|e| e.name == name)?.value.as_ref()?.yaml;
    serde_yaml_ng::from_str(yaml).ok()
}

async fn get(client: &kube::Client, headers: &[(&str, &str)]) -> anyhow::Result<(u16, http::HeaderMap, Vec<u8>)> {
    let mut req = http::Request::get("/openapi/v2");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = client.send(req.body(kube::client::Body::empty())?).await?;
    let (parts, body) = resp.into_parts();
    let bytes = body.collect().await?.to_bytes().to_vec();
    Ok((parts.status.as_u16(), parts.headers, bytes))
}

#[tokio::test]
async fn protobuf_json_406_and_304() -> anyhow::Result<()> {
    let Some(s) = TestServer::start(Backend::Embedded).await? else { return Ok(()) };
    let kc = Kubeconfig::read_from(&s.kubeconfig)?;
    let client = kube::Client::try_from(kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await?)?;

    let (code, headers, body) = get(&client, &[("accept", PROTOBUF)]).await?;
    ensure!(code == 200, "protobuf: {code}");
    ensure!(headers.get("content-type").is_some_and(|c| c == "application/com.github.proto-openapi.spec.v2.v1.0+protobuf"), "{headers:?}");
    ensure!(body.first() != Some(&b'{'), "JSON served for protobuf");
    let doc = Document::decode(body.as_slice()).context("decoding openapi.v2.Document")?;
    ensure!(doc.swagger == "2.0" && doc.info.as_ref().is_some_and(|i| i.title == "Kubernetes"), "{:?} {:?}", doc.swagger, doc.info);

    let deployment = definition(&doc, "io.k8s.api.apps.v1.Deployment")?;
    ensure!(
        extension(&deployment.vendor_extension, "x-kubernetes-group-version-kind")
            == Some(serde_json::json!([{"group": "apps", "kind": "Deployment", "version": "v1"}])),
        "{:?}",
        deployment.vendor_extension
    );
    let containers = property(definition(&doc, "io.k8s.api.core.v1.PodSpec")?, "containers")?;
    ensure!(containers.r#type.as_ref().is_some_and(|t| t.value == ["array"]), "{:?}", containers.r#type);
    ensure!(
        containers.items.as_ref().is_some_and(|i| i.schema.len() == 1 && i.schema[0].xref == "#/definitions/io.k8s.api.core.v1.Container"),
        "{:?}",
        containers.items
    );
    ensure!(extension(&containers.vendor_extension, "x-kubernetes-patch-strategy") == Some("merge".into()));
    ensure!(extension(&containers.vendor_extension, "x-kubernetes-patch-merge-key") == Some("name".into()));
    let volumes = property(definition(&doc, "io.k8s.api.core.v1.PodSpec")?, "volumes")?;
    ensure!(extension(&volumes.vendor_extension, "x-kubernetes-patch-strategy") == Some("merge,retainKeys".into()));
    let ports = property(definition(&doc, "io.k8s.api.core.v1.Container")?, "ports")?;
    ensure!(extension(&ports.vendor_extension, "x-kubernetes-patch-merge-key") == Some("containerPort".into()));
    let strategy = property(definition(&doc, "io.k8s.api.apps.v1.DeploymentSpec")?, "strategy")?;
    ensure!(strategy.xref == "#/definitions/io.k8s.api.apps.v1.DeploymentStrategy" && strategy.description.contains("deployment strategy"), "{strategy:?}");
    ensure!(extension(&strategy.vendor_extension, "x-kubernetes-patch-strategy") == Some("retainKeys".into()));
    ensure!(extension(&strategy.vendor_extension, "x-kubernetes-patch-merge-key").is_none());
    let tolerations = property(definition(&doc, "io.k8s.api.core.v1.PodSpec")?, "tolerations")?;
    ensure!(tolerations.vendor_extension.is_empty(), "{:?}", tolerations.vendor_extension);

    let item = doc
        .paths
        .as_ref()
        .and_then(|p| p.path.iter().find(|n| n.name == "/apis/apps/v1/namespaces/{namespace}/deployments/{name}"))
        .and_then(|n| n.value.as_ref())
        .context("no deployment item path")?;
    let patch = item.patch.as_ref().context("no patch operation")?;
    ensure!(patch.operation_id == "patchAppsV1NamespacedDeployment", "{}", patch.operation_id);
    ensure!(patch.consumes.iter().any(|c| c == "application/strategic-merge-patch+json"), "{:?}", patch.consumes);
    ensure!(
        extension(&patch.vendor_extension, "x-kubernetes-group-version-kind") == Some(serde_json::json!({"group": "apps", "kind": "Deployment", "version": "v1"})),
        "{:?}",
        patch.vendor_extension
    );
    let query: Vec<&str> = patch
        .parameters
        .iter()
        .filter_map(|p| p.parameter.as_ref()?.non_body_parameter.as_ref()?.query_parameter_sub_schema.as_ref())
        .map(|q| q.name.as_str())
        .collect();
    ensure!(query.contains(&"fieldValidation") && query.contains(&"force"), "{query:?}");
    ensure!(patch.parameters.iter().any(|p| p.parameter.as_ref().and_then(|p| p.body_parameter.as_ref()).is_some_and(|b| b.name == "body" && b.required)));
    let path_params: Vec<&str> = item
        .parameters
        .iter()
        .filter_map(|p| p.parameter.as_ref()?.non_body_parameter.as_ref()?.path_parameter_sub_schema.as_ref())
        .filter(|p| p.required)
        .map(|p| p.name.as_str())
        .collect();
    ensure!(path_params == ["name", "namespace"], "{path_params:?}");

    // JSON for JSON (and for no Accept), the same document; one ETag for both.
    let etag = headers.get("etag").context("no ETag")?.to_str()?.to_string();
    for accept in [Some("application/json"), None, Some("*/*")] {
        let h: Vec<(&str, &str)> = accept.map(|a| ("accept", a)).into_iter().collect();
        let (code, headers, body) = get(&client, &h).await?;
        ensure!(code == 200 && headers.get("content-type").is_some_and(|c| c == "application/json"), "{accept:?}: {code} {headers:?}");
        ensure!(headers.get("etag").is_some_and(|e| e == etag.as_str()), "{accept:?}: ETag differs");
        let json: serde_json::Value = serde_json::from_slice(&body)?;
        ensure!(json["swagger"] == "2.0", "{accept:?}");
        let containers = &json["definitions"]["io.k8s.api.core.v1.PodSpec"]["properties"]["containers"];
        ensure!(containers["x-kubernetes-patch-merge-key"] == "name" && containers["x-kubernetes-patch-strategy"] == "merge", "{containers}");
    }

    // Anything else is 406, as a Status.
    let (code, _, body) = get(&client, &[("accept", "application/yaml")]).await?;
    let status: serde_json::Value = serde_json::from_slice(&body).context("406 body")?;
    ensure!(code == 406 && status["kind"] == "Status" && status["reason"] == "NotAcceptable" && status["code"] == 406, "{code} {status}");

    // A client holding the current document gets 304.
    let (code, headers, body) = get(&client, &[("accept", PROTOBUF), ("if-none-match", &etag)]).await?;
    ensure!(code == 304 && body.is_empty() && headers.get("etag").is_some_and(|e| e == etag.as_str()), "If-None-Match: {code}");
    let (code, _, _) = get(&client, &[("accept", PROTOBUF), ("if-none-match", "\"stale\"")]).await?;
    ensure!(code == 200, "stale If-None-Match: {code}");
    Ok(())
}
