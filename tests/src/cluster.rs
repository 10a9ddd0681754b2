//! Starts the apiserver in-process on a free loopback port and gives a kube client for it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use tokio_util::sync::CancellationToken;

/// A running apiserver with a client; everything started on it stops when dropped.
pub struct Cluster {
    pub addr: SocketAddr,
    pub kubeconfig: PathBuf,
    pub client: kube::Client,
    pub dir: tempfile::TempDir,
    pub shutdown: CancellationToken,
}

impl Cluster {
    /// Starts an apiserver on the embedded store in a temp dir.
    pub async fn start() -> anyhow::Result<Cluster> {
        let dir = tempfile::tempdir()?;
        let config = apiserver::Config {
            data_dir: dir.path().to_path_buf(),
            bind: "127.0.0.1:0".parse()?,
            etcd_servers: vec![],
            service_ranges: apiserver::admission::ServiceRanges::parse("10.43.0.0/16", "30000-32767").map_err(anyhow::Error::msg)?,
            advertise_address: "127.0.0.1".parse()?,
            security: Default::default(),
            local_components: Vec::new(),
        };
        let shutdown = CancellationToken::new();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let token = shutdown.clone();
        tokio::spawn(async move {
            if let Err(e) = apiserver::run(config, token, Some(tx)).await {
                eprintln!("test apiserver failed: {e:#}");
            }
        });
        let addr = rx.await.context("the apiserver stopped before serving")?;
        let kubeconfig = dir.path().join("admin.kubeconfig");
        let client = component_base::client::client(Some(&kubeconfig)).await?;
        Ok(Cluster { addr, kubeconfig, client, dir, shutdown })
    }

    /// Starts the controller-manager in-process with `controllers` (e.g. `["*"]`),
    /// without leader election unless asked; it stops with the returned token.
    pub fn start_controller_manager(&self, controllers: &[&str], leader_elect: bool) -> CancellationToken {
        self.start_controller_manager_with(controllers, leader_elect, |_| {})
    }

    /// [`Cluster::start_controller_manager`], with `configure` changing the config first
    /// (e.g. to set `load_balancer_ip_pool`).
    pub fn start_controller_manager_with(
        &self,
        controllers: &[&str],
        leader_elect: bool,
        configure: impl FnOnce(&mut controller_manager::Config),
    ) -> CancellationToken {
        let token = self.shutdown.child_token();
        let mut config = controller_manager::Config {
            kubeconfig: Some(self.kubeconfig.clone()),
            controllers: controllers.iter().map(|s| s.to_string()).collect(),
            leader_elect,
            cluster_cidr: Some("10.42.0.0/16".into()),
            node_monitor_grace_period: Duration::from_secs(40),
            // The CA pods' projected service account volumes carry (kube-root-ca.crt).
            root_ca_file: Some(apiserver::server::pki_dir(self.dir.path()).join("ca.crt")),
            ..Default::default()
        };
        configure(&mut config);
        let t = token.clone();
        tokio::spawn(async move {
            if let Err(e) = controller_manager::run(config, t).await {
                eprintln!("controller-manager stopped: {e:#}");
            }
        });
        token
    }

    /// Runs the stock `kubectl describe <what>` until its Events section has, for each
    /// `(reason, from, message)`, a line with the three in that order; returns the last
    /// output. Controllers record events without waiting for them, so they may lag.
    pub async fn describe_shows(&self, what: &[&str], events: &[(&str, &str, &str)]) -> anyhow::Result<String> {
        let mut args = vec!["describe".to_string()];
        args.extend(what.iter().map(|s| s.to_string()));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let out = tokio::process::Command::new("kubectl").args(&args).env("KUBECONFIG", &self.kubeconfig).output().await.context("running kubectl")?;
            anyhow::ensure!(out.status.success(), "kubectl {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            let section = text.split_once("\nEvents:").map(|(_, e)| e).unwrap_or_default();
            let shown = |(reason, from, message): &(&str, &str, &str)| {
                section.lines().any(|line| {
                    line.split_once(reason).and_then(|(_, rest)| rest.split_once(from)).is_some_and(|(_, rest)| rest.contains(message))
                })
            };
            if events.iter().all(shown) {
                return Ok(text);
            }
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for kubectl describe {} to show {events:?}; it printed:\n{text}",
                what.join(" ")
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Polls `check` every 50 ms until it returns `Some`, or fails after `timeout` with the
/// last state `describe` gives.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Option<T>>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    let mut last_err = None;
    loop {
        match check().await {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) => last_err = Some(e),
        }
        if tokio::time::Instant::now() > deadline {
            return Err(match last_err {
                Some(e) => e.context(format!("timed out after {timeout:?} waiting for {what}")),
                None => anyhow::anyhow!("timed out after {timeout:?} waiting for {what}"),
            });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
