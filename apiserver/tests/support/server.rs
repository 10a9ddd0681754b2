//! An apiserver started in-process on a free loopback port, on the embedded store or on
//! etcd, with its admin kubeconfig; and the stock kubectl pointed at it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Output;

use anyhow::{bail, Context};
use apiserver::admission::ServiceRanges;
use tokio_util::sync::CancellationToken;

use super::etcd::{start_etcd, EtcdCluster};

/// A running apiserver; stopped (and its etcd killed) when dropped.
pub struct TestServer {
    pub addr: SocketAddr,
    pub kubeconfig: PathBuf,
    pub dir: tempfile::TempDir,
    shutdown: CancellationToken,
    _etcd: Option<EtcdCluster>,
}

/// Which store a test server runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Embedded,
    Etcd,
}

impl TestServer {
    /// Starts a server; `Ok(None)` when the backend cannot run here (etcd missing,
    /// outside CI), after printing why.
    pub async fn start(backend: Backend) -> anyhow::Result<Option<TestServer>> {
        let dir = tempfile::tempdir()?;
        let (etcd_servers, etcd) = match backend {
            Backend::Embedded => (vec![], None),
            Backend::Etcd => {
                let Some(mut cluster) = start_etcd(1)? else {
                    return Ok(None);
                };
                // Wait until etcd answers before the apiserver connects.
                let _ = cluster.connect().await?;
                (cluster.endpoints(), Some(cluster))
            }
        };
        let service_ranges =
            ServiceRanges::parse("10.43.0.0/16", "30000-32767").map_err(anyhow::Error::msg)?;
        let config = apiserver::Config {
            data_dir: dir.path().to_path_buf(),
            bind: "127.0.0.1:0".parse()?,
            etcd_servers,
            service_ranges,
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
        Ok(Some(TestServer {
            addr,
            kubeconfig,
            dir,
            shutdown,
            _etcd: etcd,
        }))
    }

    /// Kills every member of the server's etcd (none on the embedded store).
    #[allow(dead_code)] // not every test binary that shares this module calls it
    pub fn kill_etcd(&mut self) {
        for member in self._etcd.iter_mut().flat_map(|c| c.members.iter_mut()) {
            member.kill();
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Runs the stock kubectl against this server.
    pub async fn kubectl(&self, args: &[&str]) -> anyhow::Result<Output> {
        self.kubectl_stdin(args, None).await
    }

    /// Runs kubectl with `stdin` as its standard input.
    pub async fn kubectl_stdin(
        &self,
        args: &[&str],
        stdin: Option<&str>,
    ) -> anyhow::Result<Output> {
        use tokio::io::AsyncWriteExt;
        let mut cmd = tokio::process::Command::new("kubectl");
        cmd.args(args)
            .env("KUBECONFIG", &self.kubeconfig)
            .env("HOME", self.dir.path())
            .stdin(if stdin.is_some() {
                std::process::Stdio::piped()
            } else {
                std::process::Stdio::null()
            })
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn().context("running kubectl")?;
        if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
            pipe.write_all(input.as_bytes()).await?;
        }
        let out =
            tokio::time::timeout(std::time::Duration::from_secs(60), child.wait_with_output())
                .await
                .with_context(|| format!("kubectl {} timed out", args.join(" ")))??;
        Ok(out)
    }

    /// Runs kubectl and returns its stdout, failing with its stderr if it failed.
    pub async fn ok(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = self.kubectl(args).await?;
        if !out.status.success() {
            bail!(
                "kubectl {} failed: {}{}",
                args.join(" "),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Runs kubectl expecting failure; returns its stderr.
    pub async fn fails(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = self.kubectl(args).await?;
        if out.status.success() {
            bail!(
                "kubectl {} succeeded but should have failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stdout)
            );
        }
        Ok(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Whether the stock kubectl is on PATH; prints why a test is skipped if not.
pub fn have_kubectl() -> anyhow::Result<bool> {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join("kubectl").is_file()))
        .unwrap_or(false);
    if !found {
        super::skip_or_fail("kubectl not on PATH")?;
    }
    Ok(found)
}
