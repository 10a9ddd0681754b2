//! The rkube kubelet: registers its Node, renews its Lease, runs the pods bound to it
//! through the embedded runtime, writes their status back, and serves the kubelet API
//! (logs, exec, port-forward, stats) that the apiserver proxies to.

pub mod config;
pub mod imagegc;
pub mod network;
pub mod node;
pub mod pods;
pub mod runtime;
pub mod server;
pub mod stats;

use std::collections::BTreeMap;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

pub use config::{KubeletConfig, RuntimeKind};
use runtime::{ImageService, Runtime};

#[derive(Debug, thiserror::Error)]
pub enum KubeletError {
    #[error("building the API client: {0}")]
    Client(#[from] component_base::client::ClientError),
    #[error("setting up the container runtime: {0}")]
    Runtime(#[from] runtime::RuntimeError),
    #[error("pod network: {0}")]
    Network(#[from] network::NetworkError),
    #[error("setting up the kubelet API's TLS: {0}")]
    Tls(String),
    #[error("listening on {address}: {source}")]
    Listen {
        address: String,
        #[source]
        source: std::io::Error,
    },
}

/// The runtime and image service a kubelet drives.
#[derive(Clone)]
pub struct Runtimes {
    pub runtime: Arc<dyn Runtime>,
    pub images: Arc<dyn ImageService>,
}

/// Builds the runtime `config` asks for (the real one imports the air-gap archives in
/// `ROOT/images/` and makes sure the busybox demo image exists).
pub async fn build_runtime(config: &KubeletConfig) -> Result<Runtimes, KubeletError> {
    match config.runtime {
        RuntimeKind::Fake => {
            let fake = Arc::new(runtime::fake::FakeRuntime::new());
            Ok(Runtimes { runtime: fake.clone(), images: fake })
        }
        RuntimeKind::Linux => Ok(runtime::linux_runtime(config, true).await?),
    }
}

/// Runs a kubelet until `shutdown`. Containers keep running after it returns: a new
/// kubelet over the same root finds them.
pub async fn run(config: KubeletConfig, shutdown: CancellationToken) -> Result<(), KubeletError> {
    let client = component_base::client::client(config.kubeconfig.as_deref()).await?;
    let runtimes = build_runtime(&config).await?;
    run_with(config, client, runtimes, shutdown).await
}

/// Runs a kubelet with a given client and runtime (tests start hollow kubelets this way).
pub async fn run_with(config: KubeletConfig, client: kube::Client, runtimes: Runtimes, shutdown: CancellationToken) -> Result<(), KubeletError> {
    let address = std::net::SocketAddr::from((config.address, config.port));
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .map_err(|source| KubeletError::Listen { address: address.to_string(), source })?;
    let port = listener.local_addr().map(|a| a.port()).unwrap_or(config.port);
    tracing::info!(node = %config.node_name, %port, "kubelet starting");

    let agent = Arc::new(node::NodeAgent::new(config.clone(), client.clone(), runtimes.runtime.clone(), runtimes.images.clone(), port));
    // A real node also masquerades pod egress (pods wait for it) and routes to the other
    // nodes' pods; hollow nodes have no pod network to manage.
    let pod_network = match config.runtime {
        RuntimeKind::Linux => network::start(&config, client.clone(), agent.network_ready(), shutdown.clone())?,
        RuntimeKind::Fake => network::PodNetwork { ready: agent.network_ready(), tasks: Vec::new() },
    };
    let allocatable: BTreeMap<String, String> = node::capacity(&config).into_iter().map(|(k, v)| (k, v.0)).collect();
    let ctx = pods::Context {
        config: config.clone(),
        client: client.clone(),
        runtime: runtimes.runtime.clone(),
        images: runtimes.images.clone(),
        recorder: component_base::events::EventRecorder::new(client.clone(), "kubelet", Some(&config.node_name)),
        network: pod_network.ready,
        node_allocatable: allocatable,
        snapshot: Default::default(),
    };
    let manager = pods::PodManager::new(ctx, shutdown.clone());
    let node_task = tokio::spawn(agent.clone().run(shutdown.clone()));
    let pods_task = tokio::spawn(manager.clone().run());
    let stats_task = tokio::spawn(stats::run(config.clone(), client.clone(), manager.clone(), shutdown.clone()));
    let tls = api_tls(&config)?;
    let authorizer = Arc::new(server::auth::Authorizer::new(client.clone(), &config.node_name));
    let server_task = tokio::spawn(serve_api(listener, tls, authorizer, runtimes.clone(), manager.clone(), shutdown.clone()));
    let gc_task = tokio::spawn(imagegc::run(config.clone(), runtimes.runtime.clone(), runtimes.images.clone(), shutdown.clone()));
    shutdown.cancelled().await;
    let _ = tokio::join!(node_task, pods_task, stats_task, server_task, gc_task, futures::future::join_all(pod_network.tasks));
    tracing::info!("kubelet stopped; containers keep running");
    Ok(())
}

/// The kubelet API's TLS configuration: the configured serving certificate or a
/// self-signed one (kept under `ROOT/pki`, naming the node's address and name), and
/// client certificates checked against `--client-ca-file`. Without a client CA no
/// certificate can pass, and nobody can use the API.
fn api_tls(config: &KubeletConfig) -> Result<Arc<rustls::ServerConfig>, KubeletError> {
    use component_base::pki::{self, CertPair};
    let serving = match (&config.tls_cert_file, &config.tls_private_key_file) {
        (Some(cert), Some(key)) => CertPair {
            cert_pem: std::fs::read_to_string(cert).map_err(|source| KubeletError::Tls(format!("reading {}: {source}", cert.display())))?,
            key_pem: std::fs::read_to_string(key).map_err(|source| KubeletError::Tls(format!("reading {}: {source}", key.display())))?,
        },
        _ => {
            let dir = config.root_dir.join("pki");
            match CertPair::read(&dir, "kubelet").map_err(|e| KubeletError::Tls(e.to_string()))? {
                Some(pair) => pair,
                None => {
                    let ca = pki::CertificateAuthority::generate(&format!("{}-ca", config.node_name)).map_err(|e| KubeletError::Tls(e.to_string()))?;
                    let pair = ca
                        .issue(&config.node_name, None, std::slice::from_ref(&config.node_name), &[std::net::IpAddr::V4(config.node_ip)], pki::Usage::Server)
                        .map_err(|e| KubeletError::Tls(e.to_string()))?;
                    pair.write(&dir, "kubelet").map_err(|e| KubeletError::Tls(e.to_string()))?;
                    pair
                }
            }
        }
    };
    let client_cas = match &config.client_ca_file {
        Some(path) => pki::read_certificates(path).map_err(|e| KubeletError::Tls(e.to_string()))?,
        None => {
            tracing::warn!("no --client-ca-file: nobody can authenticate to the kubelet API, so logs, exec and port-forward are refused");
            // A CA nobody holds the key of: every client certificate fails.
            pki::pem_certificates(pki::CertificateAuthority::generate("nobody").map_err(|e| KubeletError::Tls(e.to_string()))?.cert_pem())
        }
    };
    server::tls_config(&serving, &client_cas).map_err(|e| KubeletError::Tls(e.to_string()))
}

async fn serve_api(
    listener: tokio::net::TcpListener,
    tls: Arc<rustls::ServerConfig>,
    authorizer: Arc<server::auth::Authorizer>,
    runtimes: Runtimes,
    pods: Arc<pods::PodManager>,
    shutdown: CancellationToken,
) {
    if let Err(e) = server::serve_tls(listener, tls, authorizer, runtimes.runtime, pods, shutdown).await {
        tracing::error!(error = %e, "the kubelet API stopped");
    }
}

/// Stops every container of the node and removes what the runtime set up on the host
/// (mounts, network namespaces, veths, the bridge, cgroups) and the pod network's
/// masquerade table and routes: `rkube down`.
pub async fn teardown(config: &KubeletConfig) -> Result<(), KubeletError> {
    let runtimes = runtime::linux_runtime(config, false).await?;
    let removed = runtimes.runtime.teardown().await;
    // The pods' memory-backed volumes (secrets, ServiceAccount tokens, `medium: Memory`
    // emptyDirs), now that no container uses them. The pods' directories stay, for
    // `rkube reset` to delete.
    pods::volumes::unmount_under(&config.pods_dir());
    // The network goes even when some container could not be removed.
    let network = network::teardown(config).await;
    removed?;
    network?;
    Ok(())
}
