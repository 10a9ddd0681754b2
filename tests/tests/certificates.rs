//! Kubelet TLS bootstrapping against an in-process cluster: a bootstrap token asks for a
//! node client certificate, the `csrapproving` controller approves it after a
//! SubjectAccessReview and `csrsigning` signs it with the cluster CA; the certificate then
//! authenticates as the node, which gets its serving certificate the same way. Requests
//! for anything else are not approved, requests that break a signer's constraints fail,
//! and a denied request is never signed. The controller-manager runs as its own identity
//! (`system:kube-controller-manager`), so the default RBAC policy is checked too.

use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use component_base::pki;
use controller_manager::controllers::{csr, csrapproving, csrsigning};
use k8s_openapi::api::authentication::v1::SelfSubjectReview;
use k8s_openapi::api::certificates::v1::{CertificateSigningRequest, CertificateSigningRequestCondition};
use k8s_openapi::api::core::v1::{Node, Secret};
use kube::api::{Api, Patch, PatchParams, PostParams};
use rkube_tests::cluster::{eventually, Cluster};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(30);
const TOKEN: &str = "abcdef.0123456789abcdef";
const CLIENT_USAGES: &[&str] = &["digital signature", "key encipherment", "client auth"];
const SERVING_USAGES: &[&str] = &["digital signature", "key encipherment", "server auth"];

fn from_json<T: k8s_openapi::serde::de::DeserializeOwned>(v: serde_json::Value) -> anyhow::Result<T> {
    Ok(serde_json::from_value(v)?)
}

/// A client for the cluster from an inline kubeconfig text.
async fn client_from(dir: &Path, name: &str, kubeconfig: &str) -> anyhow::Result<kube::Client> {
    let path = dir.join(format!("{name}.kubeconfig"));
    std::fs::write(&path, kubeconfig)?;
    Ok(component_base::client::client(Some(&path)).await?)
}

/// A CertificateSigningRequest for a new key; returns it with the key (PEM).
async fn request(
    client: &kube::Client,
    name: &str,
    signer: &str,
    subject: (&str, Option<&str>),
    sans: (&[String], &[std::net::IpAddr]),
    usages: &[&str],
) -> anyhow::Result<String> {
    let (pem, key) = pki::new_request(subject.0, subject.1, sans.0, sans.1)?;
    let body = json!({
        "apiVersion": "certificates.k8s.io/v1",
        "kind": "CertificateSigningRequest",
        "metadata": {"name": name},
        "spec": {
            "request": k8s_openapi::ByteString(pem.into_bytes()),
            "signerName": signer,
            "usages": usages,
            "expirationSeconds": 3600,
        },
    });
    Api::<CertificateSigningRequest>::all(client.clone())
        .create(&PostParams::default(), &from_json(body)?)
        .await
        .with_context(|| format!("creating CSR {name}"))?;
    Ok(key)
}

fn conditions(c: &CertificateSigningRequest) -> Vec<CertificateSigningRequestCondition> {
    c.status.as_ref().and_then(|s| s.conditions.clone()).unwrap_or_default()
}

fn certificate(c: &CertificateSigningRequest) -> Option<String> {
    c.status.as_ref().and_then(|s| s.certificate.as_ref()).map(|b| String::from_utf8_lossy(&b.0).into_owned())
}

/// Waits until CSR `name` is signed; returns it and its certificate.
async fn signed(admin: &kube::Client, name: &str) -> anyhow::Result<(CertificateSigningRequest, String)> {
    let api: Api<CertificateSigningRequest> = Api::all(admin.clone());
    eventually(WAIT, &format!("CSR {name} approved and signed"), || {
        let api = api.clone();
        async move {
            let c = api.get(name).await?;
            Ok(certificate(&c).map(|cert| (c, cert)))
        }
    })
    .await
}

async fn approve_or_deny(admin: &kube::Client, name: &str, type_: &str, reason: &str) -> anyhow::Result<()> {
    let api: Api<CertificateSigningRequest> = Api::all(admin.clone());
    let mut c = api.get(name).await?;
    csr::add_condition(&mut c, type_, reason, "by the test's admin");
    api.replace_subresource("approval", name, &PostParams::default(), &c).await?;
    Ok(())
}

/// Waits for the CSR API (the apiserver that serves it may still be landing).
async fn csr_api_served(admin: &kube::Client) -> anyhow::Result<()> {
    let api: Api<CertificateSigningRequest> = Api::all(admin.clone());
    eventually(WAIT, "the certificates.k8s.io/v1 API", || {
        let api = api.clone();
        async move { Ok(api.list(&Default::default()).await.ok().map(|_| ())) }
    })
    .await
}

#[tokio::test]
async fn kubelet_tls_bootstrapping() -> anyhow::Result<()> {
    let cluster = Cluster::start().await?;
    let admin = cluster.client.clone();
    csr_api_served(&admin).await?;
    let pki_dir = apiserver::server::pki_dir(cluster.dir.path());
    let ca_pem = std::fs::read_to_string(pki_dir.join("ca.crt"))?;
    let server = format!("https://{}", cluster.addr);

    // The bootstrap token, as `kubeadm token create` or `rkube server` writes it.
    let (id, secret) = TOKEN.split_once('.').context("token")?;
    let token_secret: Secret = from_json(json!({
        "metadata": {"name": format!("bootstrap-token-{id}"), "namespace": "kube-system"},
        "type": "bootstrap.kubernetes.io/token",
        "stringData": {
            "token-id": id, "token-secret": secret, "usage-bootstrap-authentication": "true",
            "auth-extra-groups": "system:bootstrappers:rkube:default-node-token",
        },
    }))?;
    Api::<Secret>::namespaced(admin.clone(), "kube-system").create(&PostParams::default(), &token_secret).await?;
    let bootstrap = client_from(cluster.dir.path(), "bootstrap", &pki::token_kubeconfig(&server, "rkube", "bootstrap", &ca_pem, TOKEN)).await?;

    // Before the controllers run: a node client request the approver would approve,
    // denied by an admin first. It must stay denied and unsigned.
    request(&bootstrap, "node-csr-denied", csr::KUBE_APISERVER_CLIENT_KUBELET, ("system:node:n9", Some("system:nodes")), (&[], &[]), CLIENT_USAGES).await?;
    approve_or_deny(&admin, "node-csr-denied", csr::DENIED, "AdminDenied").await?;

    // The controller-manager as itself, not as an admin: its RBAC is part of the test.
    let cm_kubeconfig = cluster.dir.path().join("controller-manager.kubeconfig");
    apiserver::server::write_client_kubeconfig(cluster.dir.path(), &server, "system:kube-controller-manager", None, &cm_kubeconfig)?;
    cluster.start_controller_manager_with(&["*"], false, |c| {
        c.kubeconfig = Some(cm_kubeconfig.clone());
        c.cluster_signing_cert_file = Some(pki_dir.join("ca.crt"));
        c.cluster_signing_key_file = Some(pki_dir.join("ca.key"));
    });

    // 1. The bootstrap token asks for n1's client certificate: approved, signed.
    let key = request(&bootstrap, "node-csr-n1", csr::KUBE_APISERVER_CLIENT_KUBELET, ("system:node:n1", Some("system:nodes")), (&[], &[]), CLIENT_USAGES).await?;
    let (c, cert_pem) = signed(&admin, "node-csr-n1").await?;
    let approved = conditions(&c).into_iter().find(|c| c.type_ == csr::APPROVED).context("an Approved condition")?;
    assert_eq!(approved.status, "True");
    assert_eq!(approved.reason.as_deref(), Some(csrapproving::AUTO_APPROVED));
    assert_eq!(approved.message.as_deref(), Some(csrapproving::NODE_CLIENT_MESSAGE));
    assert_eq!(c.spec.username.as_deref(), Some("system:bootstrap:abcdef"));
    let names = pki::certificate_names(&cert_pem)?;
    assert_eq!((names.common_name.as_str(), names.organizations.as_slice()), ("system:node:n1", &["system:nodes".to_string()][..]));

    // The certificate authenticates as the node.
    let node_pair = pki::CertPair { cert_pem, key_pem: key };
    let node = client_from(cluster.dir.path(), "n1", &pki::kubeconfig(&server, "rkube", "system:node:n1", &ca_pem, &node_pair)).await?;
    let review = Api::<SelfSubjectReview>::all(node.clone()).create(&PostParams::default(), &SelfSubjectReview::default()).await?;
    let user = review.status.and_then(|s| s.user_info).context("user info")?;
    assert_eq!(user.username.as_deref(), Some("system:node:n1"));
    assert!(user.groups.unwrap_or_default().contains(&"system:nodes".to_string()));
    // Something only node n1 may do: register itself (NodeRestriction), and report its
    // addresses.
    let nodes: Api<Node> = Api::all(node.clone());
    nodes.create(&PostParams::default(), &from_json(json!({"metadata": {"name": "n1"}}))?).await.context("n1 registers itself")?;
    let addresses = json!({"status": {"addresses": [{"type": "InternalIP", "address": "10.0.0.1"}, {"type": "Hostname", "address": "n1"}]}});
    nodes.patch_status("n1", &PatchParams::default(), &Patch::Merge(&addresses)).await.context("n1 reports its addresses")?;
    let other = nodes.create(&PostParams::default(), &from_json(json!({"metadata": {"name": "n2"}}))?).await;
    assert!(matches!(other, Err(kube::Error::Api(ref s)) if s.code == 403), "n1 may not register n2: {other:?}");

    // 2. n1 asks for its serving certificate: approved, signed with its names.
    let ip: std::net::IpAddr = "10.0.0.1".parse()?;
    request(&node, "serving-n1", csr::KUBELET_SERVING, ("system:node:n1", Some("system:nodes")), (&["n1".into()], &[ip]), SERVING_USAGES).await?;
    let (c, serving_pem) = signed(&admin, "serving-n1").await?;
    let approved = conditions(&c).into_iter().find(|c| c.type_ == csr::APPROVED).context("an Approved condition")?;
    assert_eq!(approved.message.as_deref(), Some(csrapproving::KUBELET_SERVING_MESSAGE));
    let names = pki::certificate_names(&serving_pem)?;
    assert_eq!(names.common_name, "system:node:n1");
    assert_eq!(names.dns_names, ["n1"]);
    assert_eq!(names.ips, [ip]);

    // 3. Not approved: a node's serving certificate for an address that is not its own,
    // a bootstrap token asking for a node in system:masters, for a plain user, or for a
    // serving certificate.
    let foreign: std::net::IpAddr = "10.9.9.9".parse()?;
    request(&node, "serving-n1-foreign", csr::KUBELET_SERVING, ("system:node:n1", Some("system:nodes")), (&["n1".into()], &[foreign]), SERVING_USAGES).await?;
    request(&bootstrap, "node-csr-masters", csr::KUBE_APISERVER_CLIENT_KUBELET, ("system:node:n2", Some("system:masters")), (&[], &[]), CLIENT_USAGES).await?;
    request(&bootstrap, "user-csr", csr::KUBE_APISERVER_CLIENT, ("jane", Some("system:masters")), (&[], &[]), CLIENT_USAGES).await?;
    request(&bootstrap, "serving-from-token", csr::KUBELET_SERVING, ("system:node:n2", Some("system:nodes")), (&["n2".into()], &[]), SERVING_USAGES).await?;
    // A request made after them is signed, so the controllers have seen them.
    request(&bootstrap, "node-csr-n3", csr::KUBE_APISERVER_CLIENT_KUBELET, ("system:node:n3", Some("system:nodes")), (&[], &[]), CLIENT_USAGES).await?;
    signed(&admin, "node-csr-n3").await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let api: Api<CertificateSigningRequest> = Api::all(admin.clone());
    for name in ["serving-n1-foreign", "node-csr-masters", "user-csr", "serving-from-token", "node-csr-denied"] {
        let c = api.get(name).await?;
        assert!(!conditions(&c).iter().any(|c| c.type_ == csr::APPROVED), "{name} was approved: {:?}", conditions(&c));
        assert!(certificate(&c).is_none(), "{name} was signed");
    }
    let denied = api.get("node-csr-denied").await?;
    assert!(conditions(&denied).iter().any(|c| c.type_ == csr::DENIED), "still denied");

    // 4. An admin approves the node request in system:masters: the signer refuses it.
    approve_or_deny(&admin, "node-csr-masters", csr::APPROVED, "AdminApproved").await?;
    let failed = eventually(WAIT, "node-csr-masters Failed", || {
        let api = api.clone();
        async move {
            let c = api.get("node-csr-masters").await?;
            Ok(conditions(&c).into_iter().find(|c| c.type_ == csr::FAILED))
        }
    })
    .await?;
    assert_eq!(failed.reason.as_deref(), Some(csrsigning::SIGNER_VALIDATION_FAILURE));
    assert!(failed.message.unwrap_or_default().contains("organization"));
    assert!(certificate(&api.get("node-csr-masters").await?).is_none());

    // 5. An admin approves the plain user's request: the kube-apiserver-client signer
    // signs whatever subject its approver vouched for.
    approve_or_deny(&admin, "user-csr", csr::APPROVED, "AdminApproved").await?;
    let (_, user_pem) = signed(&admin, "user-csr").await?;
    assert_eq!(pki::certificate_names(&user_pem)?.common_name, "jane");
    Ok(())
}
