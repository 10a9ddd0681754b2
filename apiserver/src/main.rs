//! `kube-apiserver`: flags → checked config → [`apiserver::run`].

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use anyhow::Context;
use apiserver::admission::ServiceRanges;
use clap::Parser;
use tokio_util::sync::CancellationToken;

/// The Kubernetes API server of rkube.
#[derive(Parser, Debug)]
#[command(name = "kube-apiserver", version)]
struct Options {
    /// Directory for the embedded store and the admin kubeconfig.
    #[arg(long, default_value = "/var/lib/rkube/server")]
    data_dir: PathBuf,
    /// Port to serve the API on.
    #[arg(long, default_value_t = 6443)]
    secure_port: u16,
    /// Address to listen on.
    #[arg(long, default_value = "0.0.0.0")]
    bind_address: IpAddr,
    /// The address advertised to the cluster (the `kubernetes` Service's endpoint).
    #[arg(long)]
    advertise_address: Option<IpAddr>,
    /// etcd v3 endpoints (comma-separated). Without it the embedded store is used.
    #[arg(long, value_delimiter = ',')]
    etcd_servers: Vec<String>,
    /// The range Service ClusterIPs are allocated from.
    #[arg(long, default_value = "10.43.0.0/16")]
    service_cluster_ip_range: String,
    /// The range NodePorts are allocated from.
    #[arg(long, default_value = "30000-32767")]
    service_node_port_range: String,
    /// Serve plain HTTP with NO authentication or authorization: anyone who can connect
    /// is cluster-admin. For experiments on a machine nobody else can reach.
    #[arg(long)]
    insecure_serve_http: bool,
    /// The serving certificate (PEM). Without it, one is issued by the cluster CA under
    /// DATA_DIR/pki at every start.
    #[arg(long, requires = "tls_private_key_file")]
    tls_cert_file: Option<PathBuf>,
    /// The serving certificate's private key (PEM, PKCS#8).
    #[arg(long, requires = "tls_cert_file")]
    tls_private_key_file: Option<PathBuf>,
    /// Client certificates signed by a CA in this bundle authenticate as their CN (user)
    /// and O (groups). Defaults to the cluster CA.
    #[arg(long)]
    client_ca_file: Option<PathBuf>,
    /// Extra DNS names or IP addresses for the serving certificate (comma-separated).
    #[arg(long, value_delimiter = ',')]
    tls_san: Vec<String>,
    /// A CSV file of static bearer tokens: token,user,uid,"group1,group2".
    #[arg(long)]
    token_auth_file: Option<PathBuf>,
    /// The PKCS#8 P-256 key that signs ServiceAccount tokens (created if missing).
    /// Defaults to DATA_DIR/pki/service-account.key.
    #[arg(long)]
    service_account_key_file: Option<PathBuf>,
    /// The issuer (and audience) of ServiceAccount tokens.
    #[arg(long, default_value = apiserver::auth::serviceaccount::DEFAULT_ISSUER)]
    service_account_issuer: String,
    /// Authorizers, in order (Node, RBAC, AlwaysAllow, AlwaysDeny).
    #[arg(long, value_delimiter = ',', default_value = "Node,RBAC")]
    authorization_mode: Vec<String>,
    /// File with an EncryptionConfiguration (apiserver.config.k8s.io/v1) saying which
    /// resources are encrypted at rest and with which providers (identity, aescbc,
    /// aesgcm, secretbox; kms is not supported). Without it nothing is encrypted.
    #[arg(long, value_name = "FILE")]
    encryption_provider_config: Option<PathBuf>,
    /// The CA bundle kubelets' serving certificates are checked against. Defaults to the
    /// cluster CA.
    #[arg(long)]
    kubelet_certificate_authority: Option<PathBuf>,
    /// The CA that signed etcd's serving certificate (TLS to etcd: https:// endpoints).
    #[arg(long)]
    etcd_cafile: Option<PathBuf>,
    /// The client certificate the apiserver presents to etcd.
    #[arg(long, requires = "etcd_keyfile")]
    etcd_certfile: Option<PathBuf>,
    /// The key of --etcd-certfile.
    #[arg(long, requires = "etcd_certfile")]
    etcd_keyfile: Option<PathBuf>,
    /// Write audit events (audit.k8s.io/v1, Metadata level: who did what to which
    /// object) to this file, one JSON line each; "-" is standard output.
    #[arg(long)]
    audit_log_path: Option<PathBuf>,
}

// glibc's allocator fragments under the apiserver's many short-lived JSON trees (malloc
// and free were a third of the CPU of a create); mimalloc does not.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .init();
    let opts = Options::parse();
    let service_ranges = ServiceRanges::parse(&opts.service_cluster_ip_range, &opts.service_node_port_range)
        .map_err(|e| anyhow::anyhow!("--service-cluster-ip-range/--service-node-port-range: {e}"))?;
    let authorization_modes = opts
        .authorization_mode
        .iter()
        .map(|m| apiserver::auth::filter::Mode::parse(m))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow::anyhow!("--authorization-mode: {e}"))?;
    let security = apiserver::server::SecurityConfig {
        insecure_serve_http: opts.insecure_serve_http,
        tls_cert_file: opts.tls_cert_file,
        tls_private_key_file: opts.tls_private_key_file,
        client_ca_file: opts.client_ca_file,
        tls_sans: opts.tls_san,
        token_auth_file: opts.token_auth_file,
        service_account_key_file: opts.service_account_key_file,
        service_account_issuer: opts.service_account_issuer,
        authorization_modes,
        encryption_provider_config: opts.encryption_provider_config,
        kubelet_certificate_authority: opts.kubelet_certificate_authority,
        etcd_cafile: opts.etcd_cafile,
        etcd_certfile: opts.etcd_certfile,
        etcd_keyfile: opts.etcd_keyfile,
        audit_log_path: opts.audit_log_path,
    };
    let config = apiserver::Config {
        data_dir: opts.data_dir,
        bind: SocketAddr::new(opts.bind_address, opts.secure_port),
        etcd_servers: opts.etcd_servers,
        service_ranges,
        advertise_address: opts.advertise_address.unwrap_or(if opts.bind_address.is_unspecified() { IpAddr::from([127, 0, 0, 1]) } else { opts.bind_address }),
        security,
        // The scheduler and controller-manager run apart: their Leases tell.
        local_components: Vec::new(),
    };
    let shutdown = CancellationToken::new();
    let token = shutdown.clone();
    tokio::spawn(async move {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => return,
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        token.cancel();
    });
    apiserver::run(config, shutdown, None).await.context("kube-apiserver failed")
}
