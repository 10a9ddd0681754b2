//! The apiserver's security as users meet it, through the stock kubectl and kube-rs over
//! TLS: 401 without a credential, RBAC's `view` role, the Node authorizer between
//! kubelets, ServiceAccount tokens bound to pods, bootstrap tokens and their expiry,
//! impersonation, `kubectl auth can-i`/`whoami`, and Pod Security admission.

mod support;

use std::path::PathBuf;

use anyhow::{ensure, Context};
use base64::Engine;
use k8s_openapi::api::core::v1::{Pod, Secret, ServiceAccount};
use kube::api::{Api, ListParams, PostParams};
use serde_json::json;
use support::server::{have_kubectl, Backend, TestServer};

/// A kubeconfig for `user` in `group`, with a client certificate from the server's CA.
fn identity(server: &TestServer, user: &str, group: Option<&str>) -> anyhow::Result<PathBuf> {
    let file = user.replace(':', "-");
    let path = server.dir.path().join(format!("{file}.kubeconfig"));
    apiserver::server::write_client_kubeconfig(server.dir.path(), &format!("https://{}", server.addr), user, group, &path)?;
    Ok(path)
}

/// A kubeconfig that authenticates with a bearer token.
fn token_kubeconfig(server: &TestServer, name: &str, token: &str) -> anyhow::Result<PathBuf> {
    let ca = std::fs::read_to_string(apiserver::server::pki_dir(server.dir.path()).join("ca.crt"))?;
    let path = server.dir.path().join(format!("{name}.kubeconfig"));
    std::fs::write(&path, component_base::pki::token_kubeconfig(&format!("https://{}", server.addr), "rkube", name, &ca, token))?;
    Ok(path)
}

/// A client that trusts the cluster CA and presents no credential.
async fn anonymous(server: &TestServer) -> anyhow::Result<kube::Client> {
    let ca = std::fs::read_to_string(apiserver::server::pki_dir(server.dir.path()).join("ca.crt"))?;
    let mut config = kube::Config::new(format!("https://{}", server.addr).parse()?);
    config.root_cert = Some(component_base::pki::pem_certificates(&ca));
    Ok(kube::Client::try_from(config)?)
}

async fn status_of(client: &kube::Client, path: &str) -> anyhow::Result<(u16, String)> {
    let req = http::Request::get(path).body(Vec::new())?;
    match client.request_text(req).await {
        Ok(body) => Ok((200, body)),
        Err(kube::Error::Api(s)) => Ok((s.code, s.message)),
        Err(e) => Err(e.into()),
    }
}

async fn kubectl_as(server: &TestServer, kubeconfig: &std::path::Path, args: &[&str]) -> anyhow::Result<std::process::Output> {
    let mut full = vec!["--kubeconfig", kubeconfig.to_str().context("path")?];
    full.extend_from_slice(args);
    server.kubectl(&full).await
}

fn text(out: &std::process::Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

async fn start() -> anyhow::Result<Option<TestServer>> {
    if !have_kubectl()? {
        return Ok(None);
    }
    TestServer::start(Backend::Embedded).await
}

#[tokio::test]
async fn no_credential_is_unauthorized_except_health_and_version() -> anyhow::Result<()> {
    let Some(server) = start().await? else { return Ok(()) };
    let client = anonymous(&server).await?;
    for path in ["/healthz", "/livez", "/readyz", "/version"] {
        let (code, _) = status_of(&client, path).await?;
        ensure!(code == 200, "{path} answered {code} to an anonymous client");
    }
    for path in ["/api", "/api/v1/namespaces/default/pods", "/apis/apps/v1/deployments", "/openapi/v3", "/metrics"] {
        let (code, message) = status_of(&client, path).await?;
        ensure!(code == 401 && message == "Unauthorized", "{path}: {code} {message}");
    }
    // A token that proves nothing is refused, not treated as anonymous.
    let bogus = token_kubeconfig(&server, "bogus", "not-a-token")?;
    let out = kubectl_as(&server, &bogus, &["get", "pods"]).await?;
    ensure!(!out.status.success() && text(&out).contains("You must be logged in to the server"), "{}", text(&out));
    // Plain HTTP is not served at all.
    let mut plain = kube::Config::new(format!("http://{}", server.addr).parse()?);
    plain.read_timeout = Some(std::time::Duration::from_secs(5));
    let plain = kube::Client::try_from(plain)?;
    ensure!(status_of(&plain, "/api/v1/namespaces").await.is_err(), "plain HTTP must not be answered");
    Ok(())
}

#[tokio::test]
async fn a_view_user_reads_pods_but_not_secrets_and_creates_nothing() -> anyhow::Result<()> {
    let Some(server) = start().await? else { return Ok(()) };
    server.ok(&["create", "rolebinding", "jane-view", "--clusterrole=view", "--user=jane", "-n", "default"]).await?;
    server.ok(&["create", "secret", "generic", "db", "--from-literal=password=s3cret"]).await?;
    let jane = identity(&server, "jane", Some("dev"))?;

    let out = kubectl_as(&server, &jane, &["get", "pods"]).await?;
    ensure!(out.status.success(), "jane lists pods: {}", text(&out));
    let out = kubectl_as(&server, &jane, &["get", "secrets"]).await?;
    ensure!(
        text(&out).contains(r#"Error from server (Forbidden): secrets is forbidden: User "jane" cannot list resource "secrets" in API group "" in the namespace "default""#),
        "{}",
        text(&out)
    );
    let out = kubectl_as(&server, &jane, &["get", "secret", "db", "-o", "yaml"]).await?;
    ensure!(!out.status.success() && !text(&out).contains("czNjcmV0"), "jane must not read the secret: {}", text(&out));
    let out = kubectl_as(&server, &jane, &["create", "configmap", "x", "--from-literal=a=b"]).await?;
    ensure!(
        text(&out).contains(r#"configmaps is forbidden: User "jane" cannot create resource "configmaps" in API group "" in the namespace "default""#),
        "{}",
        text(&out)
    );
    // Only in the namespace of the binding.
    let out = kubectl_as(&server, &jane, &["get", "pods", "-n", "kube-system"]).await?;
    ensure!(text(&out).contains(r#"in the namespace "kube-system""#), "{}", text(&out));
    let out = kubectl_as(&server, &jane, &["get", "pods", "-A"]).await?;
    ensure!(text(&out).contains("at the cluster scope"), "{}", text(&out));

    // kubectl auth can-i and whoami.
    ensure!(kubectl_as(&server, &jane, &["auth", "can-i", "list", "pods"]).await?.stdout.starts_with(b"yes"), "can-i list pods");
    let no = kubectl_as(&server, &jane, &["auth", "can-i", "create", "pods"]).await?;
    ensure!(no.stdout.starts_with(b"no") && !no.status.success(), "can-i create pods: {}", text(&no));
    let no = kubectl_as(&server, &jane, &["auth", "can-i", "get", "secrets"]).await?;
    ensure!(no.stdout.starts_with(b"no"), "can-i get secrets: {}", text(&no));
    let whoami = kubectl_as(&server, &jane, &["auth", "whoami"]).await?;
    let shown = text(&whoami);
    ensure!(shown.contains("jane") && shown.contains("dev") && shown.contains("system:authenticated"), "{shown}");
    // The review APIs are in discovery, and discovery still reads whole.
    let resources = server.ok(&["api-resources"]).await?;
    ensure!(resources.contains("selfsubjectreviews") && resources.contains("subjectaccessreviews"), "{resources}");
    let list = kubectl_as(&server, &jane, &["auth", "can-i", "--list"]).await?;
    ensure!(String::from_utf8_lossy(&list.stdout).contains("pods"), "{}", text(&list));

    // The admin may impersonate; jane may not.
    let as_jane = server.fails(&["get", "secrets", "--as", "jane"]).await?;
    ensure!(as_jane.contains(r#"User "jane" cannot list resource "secrets""#), "{as_jane}");
    ensure!(server.ok(&["auth", "can-i", "list", "pods", "--as", "jane"]).await?.starts_with("yes"), "can-i --as");
    let out = kubectl_as(&server, &jane, &["get", "pods", "--as", "admin"]).await?;
    ensure!(text(&out).contains(r#"cannot impersonate resource "users""#), "{}", text(&out));
    Ok(())
}

/// A pod bound to `node` that uses Secret `secret` and ServiceAccount `account`.
fn pod_on(name: &str, node: &str, secret: &str, account: &str) -> anyhow::Result<Pod> {
    Ok(serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {
            "nodeName": node,
            "serviceAccountName": account,
            "containers": [{"name": "c", "image": "busybox", "env": [{"name": "P", "valueFrom": {"secretKeyRef": {"name": secret, "key": "k"}}}]}],
        },
    }))?)
}

#[tokio::test]
async fn a_kubelet_reads_only_its_own_pods_secrets_and_tokens_die_with_their_pod() -> anyhow::Result<()> {
    let Some(server) = start().await? else { return Ok(()) };
    let admin = component_base::client::client(Some(&server.kubeconfig)).await?;
    let secrets: Api<Secret> = Api::namespaced(admin.clone(), "default");
    for name in ["s1", "s2"] {
        secrets.create(&PostParams::default(), &serde_json::from_value(json!({"metadata": {"name": name}, "stringData": {"k": name}}))?).await?;
    }
    let accounts: Api<ServiceAccount> = Api::namespaced(admin.clone(), "default");
    accounts.create(&PostParams::default(), &serde_json::from_value(json!({"metadata": {"name": "reader"}}))?).await?;
    server.ok(&["create", "rolebinding", "reader-view", "--clusterrole=view", "--serviceaccount=default:reader"]).await?;
    let pods: Api<Pod> = Api::namespaced(admin.clone(), "default");
    pods.create(&PostParams::default(), &pod_on("a", "n1", "s1", "reader")?).await?;
    pods.create(&PostParams::default(), &pod_on("b", "n2", "s2", "default")?).await?;

    // The ServiceAccount admission plugin gave the pod its token volume.
    let a = pods.get("a").await?;
    let spec = a.spec.clone().context("spec")?;
    let volume = spec.volumes.iter().flatten().find(|v| v.name.starts_with("kube-api-access-")).context("no kube-api-access volume")?;
    let mount = spec.containers[0].volume_mounts.iter().flatten().find(|m| m.name == volume.name).context("no mount")?;
    ensure!(mount.mount_path == "/var/run/secrets/kubernetes.io/serviceaccount" && mount.read_only == Some(true));

    let n1 = component_base::client::client(Some(&identity(&server, "system:node:n1", Some("system:nodes"))?)).await?;
    let n1_secrets: Api<Secret> = Api::namespaced(n1.clone(), "default");
    ensure!(n1_secrets.get("s1").await?.data.is_some(), "n1 reads its pod's secret");
    match n1_secrets.get("s2").await {
        Err(kube::Error::Api(s)) => ensure!(
            s.code == 403 && s.message.contains(r#"User "system:node:n1" cannot get resource "secrets""#) && s.message.contains("no relationship found between node 'n1' and this object"),
            "{s:?}"
        ),
        other => anyhow::bail!("n1 read another node's pod's secret: {other:?}"),
    }
    ensure!(matches!(n1_secrets.list(&ListParams::default()).await, Err(kube::Error::Api(s)) if s.code == 403), "a node lists no secrets");
    // A node writes only its own pods' status.
    let status = json!({"status": {"phase": "Running"}});
    let n1_pods: Api<Pod> = Api::namespaced(n1.clone(), "default");
    n1_pods.patch_status("a", &Default::default(), &kube::api::Patch::Merge(&status)).await?;
    ensure!(matches!(n1_pods.patch_status("b", &Default::default(), &kube::api::Patch::Merge(&status)).await, Err(kube::Error::Api(s)) if s.code == 403));

    // The kubelet asks for pod a's token, as it does to project it.
    let request = json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {"audiences": [], "expirationSeconds": 3607,
        "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": "a", "uid": a.metadata.uid}}});
    let n1_accounts: Api<ServiceAccount> = Api::namespaced(n1.clone(), "default");
    let token = n1_accounts
        .create_token_request("reader", &PostParams::default(), &serde_json::from_value(request.clone())?)
        .await?
        .status
        .context("no status")?
        .token;
    // n2 runs no pod of that account.
    let n2 = component_base::client::client(Some(&identity(&server, "system:node:n2", Some("system:nodes"))?)).await?;
    ensure!(
        matches!(Api::<ServiceAccount>::namespaced(n2, "default").create_token_request("reader", &PostParams::default(), &serde_json::from_value(request)?).await, Err(kube::Error::Api(s)) if s.code == 403)
    );

    // The token lets an in-pod client do what the account's RoleBinding allows.
    let pod_client = token_kubeconfig(&server, "pod-a", &token)?;
    let out = kubectl_as(&server, &pod_client, &["get", "pods"]).await?;
    ensure!(out.status.success() && String::from_utf8_lossy(&out.stdout).contains('a'), "{}", text(&out));
    let out = kubectl_as(&server, &pod_client, &["get", "secret", "s1"]).await?;
    ensure!(
        text(&out).contains(r#"secrets "s1" is forbidden: User "system:serviceaccount:default:reader" cannot get resource "secrets""#),
        "{}",
        text(&out)
    );
    let whoami = text(&kubectl_as(&server, &pod_client, &["auth", "whoami"]).await?);
    ensure!(whoami.contains("system:serviceaccount:default:reader") && whoami.contains("system:serviceaccounts:default"), "{whoami}");
    // Deleting the pod revokes the token bound to it.
    pods.delete("a", &kube::api::DeleteParams { grace_period_seconds: Some(0), ..Default::default() }).await?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let out = kubectl_as(&server, &pod_client, &["get", "pods"]).await?;
        if text(&out).contains("Unauthorized") {
            break;
        }
        ensure!(std::time::Instant::now() < deadline, "the token outlived its pod: {}", text(&out));
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    // `kubectl create token` for a user.
    let minted = server.ok(&["create", "token", "reader", "--duration=15m"]).await?;
    let out = kubectl_as(&server, &token_kubeconfig(&server, "minted", minted.trim())?, &["auth", "whoami"]).await?;
    ensure!(text(&out).contains("system:serviceaccount:default:reader"), "{}", text(&out));
    Ok(())
}

#[tokio::test]
async fn bootstrap_tokens_work_until_they_expire() -> anyhow::Result<()> {
    let Some(server) = start().await? else { return Ok(()) };
    let admin = component_base::client::client(Some(&server.kubeconfig)).await?;
    let secrets: Api<Secret> = Api::namespaced(admin, "kube-system");
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let token_secret = |id: &str, secret: &str, expiration: &str| -> anyhow::Result<Secret> {
        Ok(serde_json::from_value(json!({
            "metadata": {"name": format!("bootstrap-token-{id}")},
            "type": "bootstrap.kubernetes.io/token",
            "data": {"token-id": b64(id), "token-secret": b64(secret), "expiration": b64(expiration), "usage-bootstrap-authentication": b64("true")},
        }))?)
    };
    let later = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    let earlier = (chrono::Utc::now() - chrono::Duration::hours(1)).to_rfc3339();
    secrets.create(&PostParams::default(), &token_secret("abcdef", "0123456789abcdef", &later)?).await?;
    secrets.create(&PostParams::default(), &token_secret("expire", "0123456789abcdef", &earlier)?).await?;
    let fresh = token_kubeconfig(&server, "fresh", "abcdef.0123456789abcdef")?;
    let out = kubectl_as(&server, &fresh, &["auth", "whoami"]).await?;
    ensure!(text(&out).contains("system:bootstrap:abcdef") && text(&out).contains("system:bootstrappers"), "{}", text(&out));
    let wrong = token_kubeconfig(&server, "wrong", "abcdef.0123456789abcdee")?;
    ensure!(text(&kubectl_as(&server, &wrong, &["auth", "whoami"]).await?).contains("Unauthorized"));
    let expired = token_kubeconfig(&server, "expired", "expire.0123456789abcdef")?;
    let out = kubectl_as(&server, &expired, &["auth", "whoami"]).await?;
    ensure!(!out.status.success() && text(&out).contains("Unauthorized"), "an expired bootstrap token must be refused: {}", text(&out));
    Ok(())
}

#[tokio::test]
async fn pod_security_levels_are_enforced_per_namespace() -> anyhow::Result<()> {
    let Some(server) = start().await? else { return Ok(()) };
    server.ok(&["create", "namespace", "locked"]).await?;
    server.ok(&["label", "namespace", "locked", "pod-security.kubernetes.io/enforce=restricted"]).await?;
    let err = server.fails(&["run", "web", "--image=busybox", "-n", "locked", "--", "sleep", "3600"]).await?;
    ensure!(
        err.contains(r#"pods "web" is forbidden: violates PodSecurity "restricted:latest": allowPrivilegeEscalation != false"#)
            && err.contains("runAsNonRoot != true"),
        "{err}"
    );
    // Deployments are admitted with a warning; their pods would be refused.
    let out = server
        .kubectl(&["create", "deployment", "web", "--image=busybox", "-n", "locked"])
        .await?;
    ensure!(out.status.success() && text(&out).contains(r#"Warning: would violate PodSecurity "restricted:latest""#), "{}", text(&out));
    // A baseline namespace takes the same pod.
    server.ok(&["create", "namespace", "open"]).await?;
    server.ok(&["label", "namespace", "open", "pod-security.kubernetes.io/enforce=baseline"]).await?;
    server.ok(&["run", "web", "--image=busybox", "-n", "open", "--", "sleep", "3600"]).await?;
    let err = server.fails(&["label", "namespace", "open", "--overwrite", "pod-security.kubernetes.io/enforce=strict"]).await?;
    ensure!(err.contains("Invalid value") && err.contains("strict"), "{err}");
    Ok(())
}
