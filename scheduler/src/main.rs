//! `kube-scheduler`: flags → checked config → [`scheduler::run`].

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;

/// Assigns pods to nodes.
#[derive(Parser, Debug)]
#[command(name = "kube-scheduler", version)]
struct Options {
    /// Path to a kubeconfig with the API server's address and credentials.
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// Elect a leader through the kube-system/kube-scheduler Lease so that only one copy acts.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    leader_elect: bool,
    /// A KubeSchedulerConfiguration file: enabled plugins, score weights, plugin args.
    #[arg(long)]
    config: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .init();
    let o = Options::parse();
    let profile = match &o.config {
        Some(path) => scheduler::Profile::from_file(path).with_context(|| format!("--config {}", path.display()))?,
        None => scheduler::Profile::default(),
    };
    let config = scheduler::Config { kubeconfig: o.kubeconfig, leader_elect: o.leader_elect, profile, ..Default::default() };
    let shutdown = component_base::signals::shutdown_on_signals();
    scheduler::run(config, shutdown).await.context("kube-scheduler failed")
}
