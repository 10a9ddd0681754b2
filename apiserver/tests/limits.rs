//! The apiserver's abuse resistance as clients meet it over TLS: request bodies over
//! the limit refused with a 413 Status (and ones under it accepted, past axum's own
//! 2 MB default), a user over their request rate answered 429 while the admin is served,
//! long-running requests capped per user, and a request past its deadline answered 504.

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, ensure, Context};
use futures::StreamExt;
use http_body_util::BodyExt;
use k8s_openapi::api::core::v1::{ConfigMap, Node, Pod};
use k8s_openapi::api::rbac::v1::ClusterRoleBinding;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::{json, Value};
use support::server::{Backend, TestServer};

/// A client for `kubeconfig` that does not retry 429s and 504s by itself (kube-rs does
/// by default), so that the test sees them.
async fn client(kubeconfig: &Path) -> anyhow::Result<kube::Client> {
    let kubeconfig = kube::config::Kubeconfig::read_from(kubeconfig)?;
    let mut config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await?;
    config.default_retry = false;
    config.read_timeout = Some(Duration::from_secs(30));
    Ok(kube::Client::try_from(config)?)
}

/// A kubeconfig for `user` (a client certificate from the server's CA), bound to
/// `cluster-admin` through RBAC — all rights, but not `system:masters`, so the per-user
/// limits apply.
async fn rbac_admin(server: &TestServer, admin: &kube::Client, user: &str) -> anyhow::Result<PathBuf> {
    let path = server.dir.path().join(format!("{user}.kubeconfig"));
    apiserver::server::write_client_kubeconfig(server.dir.path(), &format!("https://{}", server.addr), user, Some("dev"), &path)?;
    let bindings: Api<ClusterRoleBinding> = Api::all(admin.clone());
    let binding = json!({
        "metadata": {"name": format!("{user}-cluster-admin")},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin"},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}],
    });
    bindings.create(&PostParams::default(), &serde_json::from_value(binding)?).await?;
    Ok(path)
}

/// Sends a request and returns its code, `Retry-After` header and body.
async fn send(client: &kube::Client, req: http::Request<Vec<u8>>) -> anyhow::Result<(u16, Option<String>, Vec<u8>)> {
    let answer = client.send(req.map(kube::client::Body::from)).await?;
    let code = answer.status().as_u16();
    let retry_after = answer.headers().get(http::header::RETRY_AFTER).and_then(|v| v.to_str().ok()).map(str::to_string);
    let body = answer.into_body().collect().await?.to_bytes().to_vec();
    Ok((code, retry_after, body))
}

fn status_of(body: &[u8]) -> anyhow::Result<Value> {
    let status: Value = serde_json::from_slice(body).with_context(|| format!("not JSON: {}", String::from_utf8_lossy(&body[..body.len().min(200)])))?;
    ensure!(status["kind"] == "Status" && status["apiVersion"] == "v1", "not a Status: {status}");
    Ok(status)
}

fn config_map(name: &str, bytes: usize) -> anyhow::Result<ConfigMap> {
    let data: BTreeMap<String, String> = [("blob".to_string(), "x".repeat(bytes))].into();
    Ok(serde_json::from_value(json!({"metadata": {"name": name}, "data": data}))?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_over_the_limit_get_a_413_status_and_store_nothing() -> anyhow::Result<()> {
    let Some(server) = TestServer::start(Backend::Embedded).await? else { return Ok(()) };
    let admin = client(&server.kubeconfig).await?;
    let config_maps: Api<ConfigMap> = Api::namespaced(admin.clone(), "default");

    match config_maps.create(&PostParams::default(), &config_map("huge", 4 << 20)?).await {
        Err(kube::Error::Api(s)) => ensure!(s.code == 413 && s.reason == "RequestEntityTooLarge", "{s:?}"),
        other => bail!("a 4 MiB ConfigMap was not refused with 413: {:?}", other.map(|c| c.metadata.name)),
    }
    ensure!(config_maps.get_opt("huge").await?.is_none(), "the refused ConfigMap was stored");
    // The raw answer is a Status, as kubectl expects (axum's own limit answers text).
    let body = serde_json::to_vec(&config_map("huge", 4 << 20)?)?;
    let req = http::Request::post("/api/v1/namespaces/default/configmaps").header(http::header::CONTENT_TYPE, "application/json").body(body)?;
    let (code, _, body) = send(&admin, req).await?;
    let status = status_of(&body)?;
    ensure!(code == 413 && status["reason"] == "RequestEntityTooLarge" && status["code"] == 413, "{code} {status}");

    // 2.5 MiB is over axum's default 2 MB but under Kubernetes' 3 MiB: accepted.
    let made = config_maps.create(&PostParams::default(), &config_map("large", 5 << 19)?).await?;
    ensure!(made.metadata.name.as_deref() == Some("large"));
    let read = config_maps.get("large").await?;
    ensure!(read.data.and_then(|d| d.get("blob").map(String::len)) == Some(5 << 19), "the large ConfigMap reads back whole");
    // An update of it (PUT) too.
    let mut updated = config_map("large", (5 << 19) + 1)?;
    updated.metadata.resource_version = made.metadata.resource_version;
    config_maps.replace("large", &PostParams::default(), &updated).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_over_their_rate_gets_429s_while_the_admin_is_served() -> anyhow::Result<()> {
    let Some(server) = TestServer::start(Backend::Embedded).await? else { return Ok(()) };
    let admin = client(&server.kubeconfig).await?;
    let jane = client(&rbac_admin(&server, &admin, "jane").await?).await?;
    ensure!(send(&jane, http::Request::get("/api/v1/namespaces/default").body(Vec::new())?).await?.0 == 200, "jane is allowed in");

    // Far more requests than the burst (200), faster than the rate refills it (100/s).
    let hammer = futures::stream::iter(0..800)
        .map(|_| {
            let jane = jane.clone();
            async move { send(&jane, http::Request::get("/api/v1/namespaces/default/configmaps").body(Vec::new())?).await }
        })
        .buffer_unordered(64);
    let admin_loop = async {
        let mut served = 0;
        for _ in 0..50 {
            let (code, _, body) = send(&admin, http::Request::get("/api/v1/namespaces/default/configmaps").body(Vec::new())?).await?;
            ensure!(code == 200, "the admin was refused while jane hammered: {code} {}", String::from_utf8_lossy(&body));
            served += 1;
        }
        anyhow::Ok(served)
    };
    let (answers, served) = tokio::join!(hammer.collect::<Vec<_>>(), admin_loop);
    ensure!(served? == 50);
    let (mut ok, mut limited) = (0, 0);
    for answer in answers {
        let (code, retry_after, body) = answer?;
        match code {
            200 => ok += 1,
            429 => {
                limited += 1;
                let status = status_of(&body)?;
                ensure!(status["reason"] == "TooManyRequests" && status["message"] == "Too many requests, please try again later.", "{status}");
                let seconds: u64 = retry_after.context("no Retry-After")?.parse()?;
                ensure!(seconds >= 1 && status["details"]["retryAfterSeconds"] == seconds, "{status}");
            }
            other => bail!("jane got {other}: {}", String::from_utf8_lossy(&body)),
        }
    }
    eprintln!("jane: {ok} served, {limited} refused");
    ensure!(limited > 0, "800 requests in a burst were all served");
    ensure!(ok >= 200, "jane's burst was not served: {ok}");
    // Still limited now, the admin still served; then jane's bucket refills.
    let (code, _, _) = send(&admin, http::Request::get("/api/v1/namespaces").body(Vec::new())?).await?;
    ensure!(code == 200);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    ensure!(send(&jane, http::Request::get("/api/v1/namespaces/default").body(Vec::new())?).await?.0 == 200, "jane is served again after a pause");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watches_beyond_the_per_user_cap_get_429() -> anyhow::Result<()> {
    let Some(server) = TestServer::start(Backend::Embedded).await? else { return Ok(()) };
    let admin = client(&server.kubeconfig).await?;
    let joe = client(&rbac_admin(&server, &admin, "joe").await?).await?;
    let watch = || http::Request::get("/api/v1/namespaces/default/configmaps?watch=true&timeoutSeconds=120").body(kube::client::Body::from(Vec::new()));
    let mut open = Vec::new();
    for i in 0..100 {
        let answer = joe.send(watch()?).await?;
        ensure!(answer.status() == 200, "watch {i}: {}", answer.status());
        open.push(answer);
    }
    let refused = joe.send(watch()?).await?;
    ensure!(refused.status() == 429, "the 101st watch: {}", refused.status());
    ensure!(refused.headers().get(http::header::RETRY_AFTER).is_some_and(|v| v == "1"));
    let status = status_of(&refused.into_body().collect().await?.to_bytes())?;
    ensure!(status["reason"] == "TooManyRequests", "{status}");
    // Short requests are not long-running: still served.
    ensure!(send(&joe, http::Request::get("/api/v1/namespaces/default/configmaps").body(Vec::new())?).await?.0 == 200);
    // The admin (system:masters) is not capped per user.
    for _ in 0..3 {
        ensure!(admin.send(watch()?).await?.status() == 200);
    }
    // Closing a watch gives its seat back (once the server sees the stream go).
    drop(open.pop());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let answer = joe.send(watch()?).await?;
        if answer.status() == 200 {
            break;
        }
        ensure!(tokio::time::Instant::now() < deadline, "the closed watch's seat never came back");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_past_its_deadline_gets_a_504_status() -> anyhow::Result<()> {
    let Some(server) = TestServer::start(Backend::Embedded).await? else { return Ok(()) };
    let admin = client(&server.kubeconfig).await?;
    // A "kubelet" that accepts connections and never answers.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = silent.local_addr()?.port();
    let held = tokio::spawn(async move {
        let mut conns = Vec::new();
        while let Ok((c, _)) = silent.accept().await {
            conns.push(c);
        }
    });
    let nodes: Api<Node> = Api::all(admin.clone());
    nodes.create(&PostParams::default(), &serde_json::from_value(json!({"metadata": {"name": "slow"}}))?).await?;
    let status = json!({"status": {"addresses": [{"type": "InternalIP", "address": "127.0.0.1"}], "daemonEndpoints": {"kubeletEndpoint": {"Port": port}}}});
    nodes.patch_status("slow", &PatchParams::default(), &Patch::Merge(&status)).await?;
    let pods: Api<Pod> = Api::namespaced(admin.clone(), "default");
    let pod = json!({"metadata": {"name": "p"}, "spec": {"nodeName": "slow", "containers": [{"name": "c", "image": "busybox"}]}});
    pods.create(&PostParams::default(), &serde_json::from_value(pod)?).await?;

    let started = std::time::Instant::now();
    let (code, _, body) = send(&admin, http::Request::get("/api/v1/namespaces/default/pods/p/log?timeout=1s").body(Vec::new())?).await?;
    let took = started.elapsed();
    let status = status_of(&body)?;
    ensure!(code == 504 && status["reason"] == "Timeout", "{code} {status}");
    ensure!(status["message"] == "Timeout: request did not complete within the allotted timeout", "{status}");
    ensure!(took >= Duration::from_millis(900) && took < Duration::from_secs(8), "answered after {took:?}");
    // A malformed timeout is a 400, as in Kubernetes.
    let (code, _, body) = send(&admin, http::Request::get("/api/v1/namespaces/default/configmaps?timeout=soon").body(Vec::new())?).await?;
    ensure!(code == 400 && status_of(&body)?["message"].as_str().is_some_and(|m| m.starts_with("invalid timeout specified in the request URL")));
    held.abort();
    Ok(())
}
