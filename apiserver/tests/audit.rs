//! The audit log as an operator reads it: an apiserver with an audit log, the stock
//! kubectl and kube-rs as clients, and the JSON lines they leave — who created what,
//! who was refused, who impersonated whom, and watches logged when they start and end.

mod support;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{ensure, Context};
use apiserver::admission::ServiceRanges;
use apiserver::auth::authn::Authenticator;
use apiserver::auth::filter::{Mode, Security};
use http_body_util::BodyExt;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

/// An apiserver on the embedded store with an audit log at `audit`, serving HTTPS.
struct AuditedServer {
    addr: std::net::SocketAddr,
    dir: tempfile::TempDir,
    audit: PathBuf,
    shutdown: CancellationToken,
}

impl Drop for AuditedServer {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

impl AuditedServer {
    async fn start() -> anyhow::Result<AuditedServer> {
        use component_base::pki::{pem_certificates, Usage};
        let dir = tempfile::tempdir()?;
        let ca = apiserver::server::cluster_ca(dir.path())?;
        let serving = ca.issue("kube-apiserver", None, &["localhost".to_string()], &["127.0.0.1".parse()?], Usage::Server)?;
        let tls = apiserver::tls::server_config(&serving.cert_pem, &serving.key_pem, &pem_certificates(ca.cert_pem()))?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let config = apiserver::Config {
            data_dir: dir.path().to_path_buf(),
            bind: addr,
            etcd_servers: vec![],
            service_ranges: ServiceRanges::parse("10.43.0.0/16", "30000-32767").map_err(anyhow::Error::msg)?,
            advertise_address: "127.0.0.1".parse()?,
            security: Default::default(),
            local_components: Vec::new(),
        };
        let store = Arc::new(apiserver::storage::embedded::EmbeddedStore::open(&dir.path().join("db")).await?);
        let security = Security::new(false, Authenticator::new(Default::default(), None), vec![Mode::Node, Mode::Rbac], None);
        let shutdown = CancellationToken::new();
        let api = apiserver::ApiServer::with_store(config, store, security, shutdown.clone()).await?;
        let audit = dir.path().join("log/audit.log");
        api.audit.set(apiserver::audit::AuditLog::open(&audit)?).map_err(|_| anyhow::anyhow!("the audit log was already set"))?;
        tokio::spawn(apiserver::tls::serve(listener, tls, api.router(), shutdown.clone()));
        let server = AuditedServer { addr, dir, audit, shutdown };
        server.identity("system:admin", Some("system:masters"))?;
        Ok(server)
    }

    /// A kubeconfig for `user` in `group`.
    fn identity(&self, user: &str, group: Option<&str>) -> anyhow::Result<PathBuf> {
        let path = self.dir.path().join(format!("{}.kubeconfig", user.replace(':', "-")));
        apiserver::server::write_client_kubeconfig(self.dir.path(), &format!("https://{}", self.addr), user, group, &path)?;
        Ok(path)
    }

    async fn kubectl(&self, kubeconfig: &Path, args: &[&str]) -> anyhow::Result<std::process::Output> {
        let out = tokio::process::Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .args(args)
            .env("HOME", self.dir.path())
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .output();
        Ok(tokio::time::timeout(Duration::from_secs(60), out).await.context("kubectl timed out")??)
    }

    /// Waits until a line of the audit log satisfies `pred`, and returns it.
    async fn wait_for(&self, what: &str, pred: impl Fn(&Value) -> bool) -> anyhow::Result<Value> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let text = std::fs::read_to_string(&self.audit).unwrap_or_default();
            for line in text.lines() {
                let event: Value = serde_json::from_str(line).with_context(|| format!("an audit line is not JSON: {line}"))?;
                if pred(&event) {
                    return Ok(event);
                }
            }
            if tokio::time::Instant::now() > deadline {
                anyhow::bail!("no audit event for {what} in:\n{text}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn text(out: &std::process::Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

fn has_group(event: &Value, key: &str, group: &str) -> bool {
    event[key]["groups"].as_array().is_some_and(|g| g.iter().any(|v| v == group))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn who_did_what_to_which_object() -> anyhow::Result<()> {
    if !support::server::have_kubectl()? {
        return Ok(());
    }
    let server = AuditedServer::start().await?;
    let admin = server.dir.path().join("system-admin.kubeconfig");
    let out = server.kubectl(&admin, &["create", "clusterrolebinding", "jane-admin", "--clusterrole=cluster-admin", "--user=jane"]).await?;
    ensure!(out.status.success(), "{}", text(&out));
    let jane = server.identity("jane", Some("dev"))?;
    let out = server.kubectl(&jane, &["create", "configmap", "settings", "--from-literal=a=b"]).await?;
    ensure!(out.status.success(), "{}", text(&out));

    let created = server.wait_for("jane's create", |e| e["verb"] == "create" && e["user"]["username"] == "jane" && e["objectRef"]["resource"] == "configmaps").await?;
    ensure!(created["kind"] == "Event" && created["apiVersion"] == "audit.k8s.io/v1" && created["level"] == "Metadata", "{created}");
    ensure!(created["stage"] == "ResponseComplete", "{created}");
    ensure!(created["objectRef"]["namespace"] == "default" && created["objectRef"]["name"] == "settings" && created["objectRef"]["apiVersion"] == "v1", "{created}");
    ensure!(created["responseStatus"]["code"] == 201, "{created}");
    ensure!(has_group(&created, "user", "dev") && has_group(&created, "user", "system:authenticated"), "{created}");
    ensure!(created["sourceIPs"] == serde_json::json!(["127.0.0.1"]), "{created}");
    ensure!(created["userAgent"].as_str().is_some_and(|a| a.starts_with("kubectl")), "{created}");
    ensure!(created["requestURI"].as_str().is_some_and(|u| u.starts_with("/api/v1/namespaces/default/configmaps")), "{created}");
    ensure!(created["annotations"]["authorization.k8s.io/decision"] == "allow", "{created}");
    let id = created["auditID"].as_str().context("auditID")?;
    ensure!(uuid::Uuid::parse_str(id).is_ok(), "{created}");
    for stamp in ["requestReceivedTimestamp", "stageTimestamp"] {
        let t = created[stamp].as_str().context("timestamp")?;
        ensure!(chrono::DateTime::parse_from_rfc3339(t).is_ok() && t.len() == "2024-05-01T10:00:00.123456Z".len(), "{stamp}: {t}");
    }

    // A refused request names who was refused.
    let mallory = server.identity("mallory", None)?;
    let out = server.kubectl(&mallory, &["delete", "configmap", "settings"]).await?;
    ensure!(!out.status.success(), "{}", text(&out));
    let refused = server.wait_for("mallory's refusal", |e| e["user"]["username"] == "mallory" && e["verb"] == "delete").await?;
    ensure!(refused["responseStatus"]["code"] == 403 && refused["responseStatus"]["reason"] == "Forbidden", "{refused}");
    ensure!(refused["annotations"]["authorization.k8s.io/decision"] == "forbid", "{refused}");
    ensure!(refused["objectRef"]["name"] == "settings", "{refused}");

    // Impersonation: the admin is the user, jane the impersonated one.
    let out = server.kubectl(&admin, &["get", "configmap", "settings", "--as", "jane", "--as-group", "dev"]).await?;
    ensure!(out.status.success(), "{}", text(&out));
    let impersonated = server.wait_for("the impersonated get", |e| e["verb"] == "get" && e["impersonatedUser"]["username"] == "jane").await?;
    ensure!(impersonated["user"]["username"] == "system:admin" && has_group(&impersonated, "user", "system:masters"), "{impersonated}");
    ensure!(has_group(&impersonated, "impersonatedUser", "dev"), "{impersonated}");

    // A watch is logged when it starts and when it ends.
    let client = component_base::client::client(Some(&jane)).await?;
    let req = http::Request::get("/api/v1/namespaces/default/configmaps?watch=true&timeoutSeconds=1").body(kube::client::Body::from(Vec::new()))?;
    let answer = client.send(req).await?;
    let header_id = answer.headers().get("audit-id").and_then(|v| v.to_str().ok()).map(str::to_string).context("no Audit-Id header")?;
    let started = server.wait_for("the watch's start", |e| e["auditID"] == header_id.as_str() && e["stage"] == "ResponseStarted").await?;
    ensure!(started["verb"] == "watch" && started["responseStatus"]["code"] == 200, "{started}");
    let _ = answer.into_body().collect().await?;
    let ended = server.wait_for("the watch's end", |e| e["auditID"] == header_id.as_str() && e["stage"] == "ResponseComplete").await?;
    ensure!(ended["user"]["username"] == "jane", "{ended}");

    // No credential at all: a 401, logged as the anonymous user.
    let ca = std::fs::read_to_string(apiserver::server::pki_dir(server.dir.path()).join("ca.crt"))?;
    let mut config = kube::Config::new(format!("https://{}", server.addr).parse()?);
    config.root_cert = Some(component_base::pki::pem_certificates(&ca));
    let anonymous = kube::Client::try_from(config)?;
    let _ = anonymous.send(http::Request::get("/api/v1/secrets").body(kube::client::Body::from(Vec::new()))?).await?;
    let unauthorized = server.wait_for("the anonymous request", |e| e["responseStatus"]["code"] == 401).await?;
    ensure!(unauthorized["user"]["username"] == "system:anonymous" && unauthorized["verb"] == "list", "{unauthorized}");

    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&server.audit)?.permissions().mode() & 0o777;
    ensure!(mode == 0o600, "the audit log is {mode:o}");
    Ok(())
}
