//! The apiserver on an etcd that speaks only TLS and wants client certificates, as
//! kubeadm runs it: `--etcd-cafile`, `--etcd-certfile`, `--etcd-keyfile`.

mod support;

use std::process::{Command, Stdio};

use anyhow::{ensure, Context};
use component_base::pki::{CertificateAuthority, Usage};
use support::etcd::{etcd_binary, free_ports};

#[tokio::test]
async fn the_apiserver_stores_through_etcd_over_mutual_tls() -> anyhow::Result<()> {
    let Some(binary) = etcd_binary() else { return support::skip_or_fail("etcd not on PATH") };
    let dir = tempfile::tempdir()?;
    let pki = dir.path().join("etcd-pki");
    let ca = CertificateAuthority::load_or_create(&pki, "etcd-ca")?;
    let (server_cert, server_key) = ca.issue("etcd", None, &["localhost".into()], &["127.0.0.1".parse()?], Usage::ServerAndClient)?.write(&pki, "server")?;
    let (client_cert, client_key) = ca.issue_client("kube-apiserver-etcd-client", None)?.write(&pki, "apiserver-etcd-client")?;
    let ports = free_ports(2)?;
    let client_url = format!("https://127.0.0.1:{}", ports[0]);
    let peer_url = format!("http://127.0.0.1:{}", ports[1]);
    let log = std::fs::File::create(dir.path().join("etcd.log"))?;
    let mut etcd = Command::new(&binary)
        .args(["--name", "tls", "--data-dir"])
        .arg(dir.path().join("etcd"))
        .args(["--listen-client-urls", &client_url, "--advertise-client-urls", &client_url])
        .args(["--listen-peer-urls", &peer_url, "--initial-advertise-peer-urls", &peer_url])
        .args(["--initial-cluster", &format!("tls={peer_url}")])
        .arg("--cert-file")
        .arg(&server_cert)
        .arg("--key-file")
        .arg(&server_key)
        .arg("--trusted-ca-file")
        .arg(pki.join("ca.crt"))
        .arg("--client-cert-auth")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("starting etcd")?;
    let result = async {
        let mut security = apiserver::server::SecurityConfig::default();
        security.etcd_cafile = Some(pki.join("ca.crt"));
        security.etcd_certfile = Some(client_cert.clone());
        security.etcd_keyfile = Some(client_key.clone());
        // Without a client certificate etcd refuses the apiserver.
        let mut no_client = security.clone();
        no_client.etcd_certfile = None;
        no_client.etcd_keyfile = None;
        let tls = no_client.etcd_tls()?;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        // Wait until etcd serves, through a correctly configured client.
        let good = security.etcd_tls()?;
        loop {
            if apiserver::storage::etcd::EtcdStore::connect_with(std::slice::from_ref(&client_url), good.as_ref()).await.is_ok() {
                break;
            }
            ensure!(std::time::Instant::now() < deadline, "etcd did not come up over TLS");
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
        ensure!(
            apiserver::storage::etcd::EtcdStore::connect_with(std::slice::from_ref(&client_url), tls.as_ref()).await.is_err(),
            "etcd accepted a client without a certificate"
        );
        let config = apiserver::Config {
            data_dir: dir.path().join("apiserver"),
            bind: "127.0.0.1:0".parse()?,
            etcd_servers: vec![client_url.clone()],
            service_ranges: apiserver::admission::ServiceRanges::parse("10.43.0.0/16", "30000-32767").map_err(anyhow::Error::msg)?,
            advertise_address: "127.0.0.1".parse()?,
            security,
            local_components: Vec::new(),
        };
        let shutdown = tokio_util::sync::CancellationToken::new();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let token = shutdown.clone();
        tokio::spawn(async move {
            if let Err(e) = apiserver::run(config, token, Some(tx)).await {
                eprintln!("apiserver failed: {e:#}");
            }
        });
        rx.await.context("the apiserver stopped before serving")?;
        let client = component_base::client::client(Some(&dir.path().join("apiserver/admin.kubeconfig"))).await?;
        let cms: kube::Api<k8s_openapi::api::core::v1::ConfigMap> = kube::Api::namespaced(client, "default");
        cms.create(&Default::default(), &serde_json::from_value(serde_json::json!({"metadata": {"name": "over-tls"}, "data": {"a": "b"}}))?).await?;
        // The object is in etcd, read back with etcd's own client over TLS.
        let store = apiserver::storage::etcd::EtcdStore::connect_with(std::slice::from_ref(&client_url), good.as_ref()).await?;
        let (kv, _) = apiserver::storage::Store::get(&store, "/registry/configmaps/default/over-tls").await?;
        ensure!(kv.is_some(), "the ConfigMap is not in etcd");
        shutdown.cancel();
        Ok(())
    }
    .await;
    let _ = etcd.kill();
    let _ = etcd.wait();
    result
}
