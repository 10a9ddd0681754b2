//! kube-scheduler: watches unscheduled pods and nodes, picks a node for each pod through
//! Filter and Score plugins ([`framework`], [`plugins`]) over a cache of node aggregates
//! ([`cache`]), in priority order with backoff ([`queue`]), and binds it through
//! `pods/binding` — under leader election so that only one copy acts.

#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod cache;
pub mod config;
pub mod framework;
pub mod plugins;
pub mod queue;
pub mod scheduler;
pub mod types;

use std::path::PathBuf;
use std::time::Duration;

use component_base::leaderelection::{default_identity, ElectionError, LeaderElection};
use tokio_util::sync::CancellationToken;

pub use config::Profile;

/// Lease timing for leader election (client-go's defaults: 15 s, 10 s, 2 s).
#[derive(Debug, Clone)]
pub struct LeaseTiming {
    pub lease_duration: Duration,
    pub renew_deadline: Duration,
    pub retry_period: Duration,
}

impl Default for LeaseTiming {
    fn default() -> LeaseTiming {
        LeaseTiming { lease_duration: Duration::from_secs(15), renew_deadline: Duration::from_secs(10), retry_period: Duration::from_secs(2) }
    }
}

/// A checked scheduler configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub kubeconfig: Option<PathBuf>,
    pub leader_elect: bool,
    pub lease: LeaseTiming,
    /// The profile from `--config`, or the defaults.
    pub profile: Profile,
}

impl Default for Config {
    fn default() -> Config {
        Config { kubeconfig: None, leader_elect: true, lease: LeaseTiming::default(), profile: Profile::default() }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("connecting to the API server")]
    Client(#[from] component_base::client::ClientError),
    #[error("reading --config")]
    Config(#[from] config::ConfigError),
    #[error(transparent)]
    LostLeadership(#[from] ElectionError),
}

/// Schedules pods until `shutdown` (or until leadership is lost).
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), Error> {
    let client = component_base::client::client(config.kubeconfig.as_deref()).await?;
    let profile = config.profile.clone();
    let loop_client = client.clone();
    let identity = default_identity();
    let instance = identity.clone();
    let lead = move |leading: CancellationToken| scheduler::run_loop(loop_client, profile, instance, leading);
    if config.leader_elect {
        let mut election = LeaderElection::new("kube-scheduler", identity);
        election.lease_duration = config.lease.lease_duration;
        election.renew_deadline = config.lease.renew_deadline;
        election.retry_period = config.lease.retry_period;
        election.run(client, shutdown, lead).await?;
    } else {
        lead(shutdown).await;
    }
    Ok(())
}
