//! `rkube agent --server URL --token T`: a worker node. It pins the server's CA by the
//! token's hash, gets its kubelet client and serving certificates through
//! CertificateSigningRequests (see [`crate::join`]), reads the cluster's networks from
//! `kube-public/cluster-info`, then runs the kubelet and kube-proxy in this process
//! until a signal. They reach the control plane through a client-side load balancer
//! on `127.0.0.1:6444` (see [`crate::loadbalancer`]). Its files live under `DIR` (`/var/lib/rkube` by default): `pki/`
//! (the CA and the node's certificates, reused while valid), `kubeconfigs/`, `agent/`
//! (the kubelet's root) and `lab.json`, so `rkube down|reset --data-dir DIR` cleans up
//! after it as after a lab.

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use futures::FutureExt as _;
use k8s_openapi::api::core::v1::{ConfigMap, Node, NodeAddress};
use kube::api::{Api, Patch, PatchParams};
use tokio_util::sync::CancellationToken;

use apiserver::auth::policy::{SIGNER_CLIENT_KUBELET, SIGNER_KUBELET_SERVING};
use component_base::pki::{self, CertPair};

use crate::join::{self, JoinToken};
use crate::lab::Lab;
use crate::loadbalancer::LoadBalancer;

/// How long the agent's components get to stop.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
pub struct AgentOptions {
    /// The apiserver, `https://host:port`.
    pub server: String,
    pub token: JoinToken,
    pub node_ip: Option<Ipv4Addr>,
    pub node_name: Option<String>,
    /// The port of the client-side load balancer on 127.0.0.1.
    pub lb_port: u16,
}

fn pki_dir(lab: &Lab) -> PathBuf {
    lab.dir.join("pki")
}

fn kubeconfig_path(lab: &Lab, name: &str) -> PathBuf {
    lab.dir.join("kubeconfigs").join(format!("{name}.kubeconfig"))
}

/// Runs the agent until `shutdown`.
pub async fn run(lab: &Lab, options: &AgentOptions, shutdown: CancellationToken) -> anyhow::Result<()> {
    lab.write_pid()?;
    let result = join_and_run(lab, options, shutdown).await;
    let _ = std::fs::remove_file(lab.pid_file());
    result
}

async fn join_and_run(lab: &Lab, options: &AgentOptions, shutdown: CancellationToken) -> anyhow::Result<()> {
    let node_name = options.node_name.clone().unwrap_or_else(crate::up::host_node_name);
    let node_ip = options.node_ip.unwrap_or_else(kubelet::node::default_node_ip);
    let pki_dir = pki_dir(lab);
    let ca_pem = trusted_ca(&pki_dir, options).await?;
    let user = format!("system:node:{node_name}");
    // Everything from here on reaches the control plane through the load balancer, so
    // that losing one server of an HA control plane loses nothing.
    let balancer = LoadBalancer::start(options.lb_port, &options.server, shutdown.clone()).await?;
    let server = balancer.url();

    // The node's client certificate: asked for with the bootstrap token the first time,
    // then kept until a fifth of its life is left.
    let client_cert = pki_dir.join("kubelet-client.crt");
    if !join::still_good(&client_cert, |c| common_name(c).as_deref() == Some(user.as_str())) {
        let bootstrap = kubeconfig_path(lab, "bootstrap");
        let text = pki::token_kubeconfig(&server, "rkube", "kubelet-bootstrap", &ca_pem, &options.token.bearer());
        pki::write_file(&bootstrap, text.as_bytes(), 0o600).with_context(|| format!("writing {}", bootstrap.display()))?;
        let client = component_base::client::client(Some(&bootstrap)).await?;
        let pair = join::request_certificate(client, &user, Some(apiserver::auth::NODES_GROUP), &[], &[], SIGNER_CLIENT_KUBELET)
            .await
            .context("getting the kubelet's client certificate")?;
        pair.write(&pki_dir, "kubelet-client")?;
        let _ = std::fs::remove_file(&bootstrap);
        println!("node {node_name} joined {}: it has its client certificate", options.server);
    }
    let pair = CertPair::read(&pki_dir, "kubelet-client")?.context("the kubelet's client certificate vanished")?;
    let kubeconfig = kubeconfig_path(lab, "kubelet");
    pki::write_file(&kubeconfig, pki::kubeconfig(&server, "rkube", &user, &ca_pem, &pair).as_bytes(), 0o600)
        .with_context(|| format!("writing {}", kubeconfig.display()))?;
    let client = component_base::client::client(Some(&kubeconfig)).await?;
    tokio::spawn(balancer.follow_endpoints(client.clone(), shutdown.clone()));

    // The cluster's networks, as the server published them.
    let (namespace, name) = crate::server::CLUSTER_INFO;
    let info = Api::<ConfigMap>::namespaced(client.clone(), namespace)
        .get(name)
        .await
        .with_context(|| format!("reading {namespace}/{name} from the server"))?
        .data
        .unwrap_or_default();
    let field = |key: &str| info.get(key).cloned().filter(|v| !v.is_empty()).with_context(|| format!("{namespace}/{name} has no {key}"));
    let (cluster_cidr, service_cidr) = (field("cluster-cidr")?, field("service-cidr")?);
    let settings = lab.cluster_settings(0, &cluster_cidr, &service_cidr)?;

    // The kubelet's serving certificate, for its name and current address (asked for
    // again when the address changes).
    let serving_cert = pki_dir.join("kubelet.crt");
    let ip = IpAddr::V4(node_ip);
    if !join::still_good(&serving_cert, |c| join::certificate_ips(c).contains(&ip)) {
        announce_address(&client, &node_name, node_ip).await.context("recording the node's new address")?;
        let pair = join::request_certificate(client.clone(), &user, Some(apiserver::auth::NODES_GROUP), std::slice::from_ref(&node_name), &[ip], SIGNER_KUBELET_SERVING)
            .await
            .context("getting the kubelet's serving certificate")?;
        pair.write(&pki_dir, "kubelet")?;
    }

    let mut kubelet_config = kubelet::KubeletConfig::new(&node_name, lab.agent_dir());
    kubelet_config.kubeconfig = Some(kubeconfig.clone());
    kubelet_config.node_ip = node_ip;
    kubelet_config.cgroup_root = settings.cgroup_root.clone();
    kubelet_config.bridge_name = settings.bridge_name.clone();
    kubelet_config.cluster_cidr = Some(cluster_cidr.clone());
    kubelet_config.cluster_dns = info.get("cluster-dns").filter(|d| !d.is_empty()).map(|d| vec![d.clone()]).unwrap_or_default();
    kubelet_config.tls_cert_file = Some(serving_cert);
    kubelet_config.tls_private_key_file = Some(pki_dir.join("kubelet.key"));
    // The apiserver calls the kubelet with a certificate from the cluster CA.
    kubelet_config.client_ca_file = Some(pki_dir.join("ca.crt"));

    // kube-proxy runs as the node: the Node authorizer lets a node read the Services,
    // EndpointSlices, Nodes and pods kube-proxy watches.
    let mut proxy_config = kube_proxy::Config::new(&node_name);
    proxy_config.kubeconfig = Some(kubeconfig);
    proxy_config.table = crate::up::proxy_table(&settings);
    proxy_config.cluster_cidr = cluster_cidr.parse().ok();

    tracing::info!(node = %node_name, %node_ip, server = %options.server, "starting the kubelet and kube-proxy");
    let mut handles = [
        ("kubelet", tokio::spawn(kubelet::run(kubelet_config, shutdown.clone()).map(|r| r.map_err(anyhow::Error::new)))),
        ("kube-proxy", tokio::spawn(kube_proxy::run(proxy_config, shutdown.clone()).map(|r| r.map_err(anyhow::Error::new)))),
    ];
    // Biased: once told to stop, the components ending is the stop, not a failure.
    let outcome: anyhow::Result<()> = tokio::select! {
        biased;
        _ = shutdown.cancelled() => Ok(()),
        (r, i, _) = futures::future::select_all(handles.iter_mut().map(|(_, h)| h)) => crate::up::flatten(handles[i].0, r),
    };
    shutdown.cancel();
    let stopping = futures::future::join_all(handles.iter_mut().filter(|(_, h)| !h.is_finished()).map(|(_, h)| h));
    if tokio::time::timeout(SHUTDOWN_TIMEOUT, stopping).await.is_err() {
        tracing::warn!("the kubelet or kube-proxy did not stop within {}s", SHUTDOWN_TIMEOUT.as_secs());
    }
    outcome
}

/// A node that comes back with a new address (a VM restarted) records it on its Node
/// before asking for a serving certificate for it: the approver signs only addresses
/// the Node has. The kubelet keeps them current from then on.
async fn announce_address(client: &kube::Client, node_name: &str, node_ip: Ipv4Addr) -> anyhow::Result<()> {
    let nodes: Api<Node> = Api::all(client.clone());
    let Some(node) = nodes.get_opt(node_name).await? else { return Ok(()) };
    let mut addresses = node.status.and_then(|s| s.addresses).unwrap_or_default();
    let ip = node_ip.to_string();
    if addresses.iter().any(|a| a.type_ == "InternalIP" && a.address == ip) {
        return Ok(());
    }
    addresses.retain(|a| a.type_ != "InternalIP");
    addresses.insert(0, NodeAddress { type_: "InternalIP".into(), address: ip });
    let patch = serde_json::json!({"status": {"addresses": addresses}});
    nodes.patch_status(node_name, &PatchParams::default(), &Patch::Merge(&patch)).await?;
    tracing::info!(node = node_name, %node_ip, "the node's address changed");
    Ok(())
}

/// The cluster CA: the one saved at the first join if the token still pins it, or else
/// the one the server presents, if the token pins that.
async fn trusted_ca(pki_dir: &Path, options: &AgentOptions) -> anyhow::Result<String> {
    let path = pki_dir.join("ca.crt");
    if let Ok(pem) = std::fs::read_to_string(&path) {
        let pinned = pki::pem_certificates(&pem).first().and_then(|der| join::ca_hash(der).ok()).is_some_and(|h| h == options.token.ca_hash);
        if pinned {
            return Ok(pem);
        }
    }
    let pem = join::discover_ca(&options.server, &options.token.ca_hash).await?;
    pki::write_file(&path, pem.as_bytes(), 0o644).with_context(|| format!("writing {}", path.display()))?;
    Ok(pem)
}

fn common_name(cert: &x509_parser::certificate::X509Certificate<'_>) -> Option<String> {
    cert.subject().iter_common_name().next().and_then(|cn| cn.as_str().ok()).map(str::to_string)
}
