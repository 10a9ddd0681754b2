//! kube-controller-manager: one module per controller under [`controllers`], registered
//! by name and selected with `--controllers` as in Kubernetes, all running under one
//! leader-elected process.

pub mod controllers;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use component_base::leaderelection::{default_identity, ElectionError, LeaderElection};
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

/// A checked controller-manager configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub kubeconfig: Option<PathBuf>,
    /// The `--controllers` list: `*` for the defaults, `name` to add, `-name` to remove.
    pub controllers: Vec<String>,
    pub leader_elect: bool,
    /// How long a leader's Lease lasts without renewal (`--leader-elect-lease-duration`);
    /// a standby takes over this long after the leader dies.
    pub leader_elect_lease_duration: Duration,
    /// How long the leader keeps trying to renew before it stops leading
    /// (`--leader-elect-renew-deadline`).
    pub leader_elect_renew_deadline: Duration,
    /// How often candidates try to take or renew the Lease (`--leader-elect-retry-period`).
    pub leader_elect_retry_period: Duration,
    /// The pod network nodes' podCIDRs are carved from (`--cluster-cidr`).
    pub cluster_cidr: Option<String>,
    /// The prefix length of each node's podCIDR (`--node-cidr-mask-size`).
    pub node_cidr_mask_size: u8,
    /// How long a node's Lease may go unrenewed before it is NotReady
    /// (`--node-monitor-grace-period`).
    pub node_monitor_grace_period: Duration,
    /// The Job controller's wait before the first retry of a failed pod, doubled per
    /// consecutive failure up to 6 minutes (Kubernetes' `DefaultJobPodFailureBackOff`).
    pub job_pod_failure_backoff: Duration,
    /// How often each HorizontalPodAutoscaler is synced
    /// (`--horizontal-pod-autoscaler-sync-period`).
    pub hpa_sync_period: Duration,
    /// The HPA's tolerance, readiness delays and default scale-down window.
    pub hpa_tuning: controllers::hpa::recommend::Tuning,
    /// Where the local-path provisioner puts volumes' directories (on the node).
    pub local_path_root: PathBuf,
    /// The addresses LoadBalancer Services are given (`--load-balancer-ip-pool`): CIDRs
    /// and `first-last` ranges, comma-separated. None: the nodes' addresses, as k3s does.
    pub load_balancer_ip_pool: Option<String>,
    /// The cluster CA certificate (PEM) the `root-ca-cert-publisher` controller puts in
    /// every namespace's `kube-root-ca.crt` ConfigMap (`--root-ca-file`). None: that
    /// controller does not run.
    pub root_ca_file: Option<PathBuf>,
    /// How often every ResourceQuota's usage is counted again in full (Kubernetes'
    /// `--resource-quota-sync-period`, 5 minutes).
    pub resource_quota_sync_period: Duration,
    /// The CA certificate and key (PEM) the `csrsigning` controller signs
    /// CertificateSigningRequests of the `kubernetes.io/*` signers with
    /// (`--cluster-signing-cert-file`, `--cluster-signing-key-file`). Without them that
    /// controller does not run.
    pub cluster_signing_cert_file: Option<PathBuf>,
    pub cluster_signing_key_file: Option<PathBuf>,
    /// The longest certificate `csrsigning` signs (`--cluster-signing-duration`, 8760h);
    /// a request's `spec.expirationSeconds` may ask for less.
    pub cluster_signing_duration: Duration,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            kubeconfig: None,
            controllers: vec!["*".into()],
            leader_elect: true,
            leader_elect_lease_duration: Duration::from_secs(15),
            leader_elect_renew_deadline: Duration::from_secs(10),
            leader_elect_retry_period: Duration::from_secs(2),
            cluster_cidr: None,
            node_cidr_mask_size: 24,
            node_monitor_grace_period: Duration::from_secs(40),
            job_pod_failure_backoff: Duration::from_secs(10),
            hpa_sync_period: Duration::from_secs(15),
            hpa_tuning: Default::default(),
            local_path_root: PathBuf::from("/var/lib/rkube/storage"),
            load_balancer_ip_pool: None,
            root_ca_file: None,
            resource_quota_sync_period: controllers::resourcequota::DEFAULT_SYNC_PERIOD,
            cluster_signing_cert_file: None,
            cluster_signing_key_file: None,
            cluster_signing_duration: controllers::csrsigning::DEFAULT_SIGNING_DURATION,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("connecting to the API server")]
    Client(#[from] component_base::client::ClientError),
    #[error("--controllers: {0}")]
    SelectControllers(String),
    #[error("--load-balancer-ip-pool {0}")]
    LoadBalancerIpPool(controllers::servicelb::pool::PoolError),
    #[error(transparent)]
    LostLeadership(#[from] ElectionError),
}

/// Runs the selected controllers until `shutdown` (or until leadership is lost).
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), Error> {
    let selected = controllers::select(&config.controllers).map_err(Error::SelectControllers)?;
    if let Some(pool) = &config.load_balancer_ip_pool {
        controllers::servicelb::pool::Pool::parse(pool).map_err(Error::LoadBalancerIpPool)?;
    }
    let client = component_base::client::client(config.kubeconfig.as_deref()).await?;
    let ctx = controllers::Context { client: client.clone(), config: Arc::new(config.clone()) };
    let start = move |leading: CancellationToken| async move {
        let mut tasks = tokio::task::JoinSet::new();
        for c in selected {
            info!(controller = c.name, "starting controller");
            let fut = (c.start)(ctx.clone(), leading.clone());
            let name = c.name;
            tasks.spawn(async move {
                if let Err(e) = fut.await {
                    error!(controller = name, error = %e, "controller stopped with an error");
                }
            });
        }
        while tasks.join_next().await.is_some() {}
    };
    if config.leader_elect {
        let election = LeaderElection {
            lease_duration: config.leader_elect_lease_duration,
            renew_deadline: config.leader_elect_renew_deadline,
            retry_period: config.leader_elect_retry_period,
            ..LeaderElection::new("kube-controller-manager", default_identity())
        };
        election.run(client, shutdown, start).await?;
    } else {
        start(shutdown).await;
    }
    Ok(())
}
