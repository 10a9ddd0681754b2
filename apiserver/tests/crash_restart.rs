//! `kube-apiserver` killed with SIGKILL while writes are in flight, then restarted on the
//! same data dir (embedded store) or the same etcd: every acknowledged write survives,
//! and a watch resumed from the last resourceVersion seen before the crash delivers
//! every later event exactly once, in order.

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::{Api, ListParams, PostParams, WatchEvent, WatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config, ResourceExt};
use serde_json::json;
use support::etcd::{free_ports, start_etcd, EtcdCluster};
use support::server::Backend;

const NAMESPACE: &str = "crash";
const WRITES: usize = 200;
const CONCURRENCY: usize = 16;
/// The apiserver is killed once this many creates are acknowledged, with the rest of
/// the writers still sending.
const KILL_AFTER: usize = 80;

/// A `kube-apiserver` child process; SIGKILLed when dropped.
struct ApiServerProcess {
    child: Option<Child>,
    log: PathBuf,
}

impl ApiServerProcess {
    fn spawn(data_dir: &Path, port: u16, etcd: &[String], log: PathBuf) -> anyhow::Result<ApiServerProcess> {
        let log_file = std::fs::OpenOptions::new().create(true).append(true).open(&log)?;
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_kube-apiserver"));
        cmd.arg("--data-dir").arg(data_dir).arg("--secure-port").arg(port.to_string());
        if !etcd.is_empty() {
            cmd.arg("--etcd-servers").arg(etcd.join(","));
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file)
            .spawn()
            .context("starting kube-apiserver")?;
        Ok(ApiServerProcess { child: Some(child), log })
    }

    /// SIGKILL (what `Child::kill` sends), and reap.
    fn kill(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill()?;
            child.wait()?;
        }
        Ok(())
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Polls `/readyz` until it answers 200; fails early if the process exits.
    async fn wait_ready(&mut self, client: &Client) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                bail!("kube-apiserver exited with {status}:\n{}", self.log_text());
            }
            let req = http::Request::get("/readyz").body(Vec::new())?;
            if let Ok(body) = client.request_text(req).await {
                if body.trim() == "ok" {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                bail!("kube-apiserver not ready after 60s:\n{}", self.log_text());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for ApiServerProcess {
    fn drop(&mut self) {
        let _ = self.kill();
    }
}

fn rv_of(cm: &ConfigMap) -> anyhow::Result<u64> {
    cm.resource_version().context("object without resourceVersion")?.parse().context("resourceVersion is not a number")
}

/// One watch event as recorded: type, name, resourceVersion.
type Seen = (String, String, u64);

fn record(ev: WatchEvent<ConfigMap>) -> anyhow::Result<Option<Seen>> {
    let (kind, cm) = match ev {
        WatchEvent::Added(cm) => ("ADDED", cm),
        WatchEvent::Modified(cm) => ("MODIFIED", cm),
        WatchEvent::Deleted(cm) => ("DELETED", cm),
        WatchEvent::Bookmark(_) => return Ok(None),
        WatchEvent::Error(e) => bail!("watch error: {e:?}"),
    };
    Ok(Some((kind.to_string(), cm.name_any(), rv_of(&cm)?)))
}

fn config_map(name: &str) -> anyhow::Result<ConfigMap> {
    Ok(serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name},
        "data": {"payload": "x".repeat(512)},
    }))?)
}

/// Every object in the namespace by name, with its resourceVersion.
async fn listed(cms: &Api<ConfigMap>) -> anyhow::Result<BTreeMap<String, u64>> {
    cms.list(&ListParams::default()).await?.items.iter().map(|c| Ok((c.name_any(), rv_of(c)?))).collect()
}

async fn crash_and_restart(backend: Backend) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let data_dir = dir.path().join("data");
    let log = dir.path().join("apiserver.log");
    // etcd (if used) lives across the apiserver's crash.
    let mut etcd: Option<EtcdCluster> = None;
    if backend == Backend::Etcd {
        let Some(mut cluster) = start_etcd(1)? else { return Ok(()) };
        let _ = cluster.connect().await?;
        etcd = Some(cluster);
    }
    let endpoints = etcd.as_ref().map(|e| e.endpoints()).unwrap_or_default();
    let port = free_ports(1)?[0];
    // Readiness is public (anonymous) and checked before the kubeconfig exists, so this
    // client has no credential and does not check the serving certificate.
    let mut probe = Config::new(format!("https://127.0.0.1:{port}").parse()?);
    probe.accept_invalid_certs = true;
    let base = Client::try_from(probe)?;

    let mut server = ApiServerProcess::spawn(&data_dir, port, &endpoints, log.clone())?;
    server.wait_ready(&base).await?;
    // The program a user writes: a client from the kubeconfig the server wrote.
    let kc = Kubeconfig::read_from(data_dir.join("admin.kubeconfig"))?;
    let client = Client::try_from(Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await?)?;
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &serde_json::from_value(json!({"metadata": {"name": NAMESPACE}}))?)
        .await?;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), NAMESPACE);
    let start_rv = cms.list(&ListParams::default()).await?.metadata.resource_version.context("list without resourceVersion")?;

    // The first watch, from a known resourceVersion; it ends when the server dies.
    let first_seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let first_watch = {
        let seen = first_seen.clone();
        let stream = cms.watch(&WatchParams::default().timeout(290), &start_rv).await?;
        tokio::spawn(async move {
            let mut stream = stream.boxed();
            while let Ok(Some(ev)) = stream.try_next().await {
                match record(ev) {
                    Ok(Some(s)) => seen.lock().unwrap_or_else(|e| e.into_inner()).push(s),
                    Ok(None) => {}
                    Err(_) => break,
                }
            }
        })
    };

    // Concurrent creates; the acknowledged ones are recorded with their resourceVersion.
    let acked: Arc<Mutex<BTreeMap<String, u64>>> = Arc::default();
    let (count_tx, mut count_rx) = tokio::sync::watch::channel(0usize);
    let writers = {
        let cms = cms.clone();
        let acked = acked.clone();
        tokio::spawn(async move {
            futures::stream::iter(0..WRITES)
                .map(|i| {
                    let cms = cms.clone();
                    let acked = acked.clone();
                    let count_tx = count_tx.clone();
                    async move {
                        let name = format!("cm-{i:03}");
                        let Ok(obj) = config_map(&name) else { return };
                        if let Ok(created) = cms.create(&PostParams::default(), &obj).await {
                            if let Ok(rv) = rv_of(&created) {
                                let n = {
                                    let mut acked = acked.lock().unwrap_or_else(|e| e.into_inner());
                                    acked.insert(name, rv);
                                    acked.len()
                                };
                                count_tx.send_replace(n);
                            }
                        }
                    }
                })
                .buffer_unordered(CONCURRENCY)
                .collect::<Vec<()>>()
                .await;
        })
    };
    tokio::time::timeout(Duration::from_secs(60), count_rx.wait_for(|n| *n >= KILL_AFTER))
        .await
        .context("creates were not acknowledged")?
        .context("writers stopped")?;
    server.kill()?;
    tokio::time::timeout(Duration::from_secs(60), writers).await.context("writers did not finish after the kill")??;
    tokio::time::timeout(Duration::from_secs(60), first_watch).await.context("the first watch did not end after the kill")??;
    let acked = acked.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let first_seen = first_seen.lock().unwrap_or_else(|e| e.into_inner()).clone();
    ensure!(acked.len() >= KILL_AFTER && acked.len() < WRITES, "{} of {WRITES} creates acknowledged: the kill did not land mid-stream", acked.len());
    eprintln!("{backend:?}: {} creates acknowledged before the kill, the first watch saw {} events", acked.len(), first_seen.len());

    // Restart on the same data dir / etcd and port.
    let mut server = ApiServerProcess::spawn(&data_dir, port, &endpoints, log.clone())?;
    server.wait_ready(&base).await?;

    // Every acknowledged create is there, unchanged.
    let after_restart = listed(&cms).await?;
    for (name, rv) in &acked {
        match after_restart.get(name) {
            Some(found) if found == rv => {}
            Some(found) => bail!("{name}: acknowledged at resourceVersion {rv}, found at {found}"),
            None => bail!("{name} was acknowledged (resourceVersion {rv}) but is gone after the restart"),
        }
    }

    // The first watch saw exactly the objects created after start_rv up to its last event,
    // in order, once each.
    let start: u64 = start_rv.parse()?;
    let last_seen = first_seen.last().map(|s| s.2).unwrap_or(start);
    let mut expect_first: Vec<(u64, String)> = after_restart.iter().filter(|(_, rv)| **rv > start && **rv <= last_seen).map(|(n, rv)| (*rv, n.clone())).collect();
    expect_first.sort();
    let got_first: Vec<(u64, String)> = first_seen.iter().map(|(kind, n, rv)| {
        if kind != "ADDED" {
            return (0, format!("{kind} {n}"));
        }
        (*rv, n.clone())
    }).collect();
    ensure!(got_first == expect_first, "first watch:\n got  {got_first:?}\n want {expect_first:?}");

    // A watch resumed from the last resourceVersion seen gets every later event exactly
    // once, in order: the writes that landed before the crash, then new ones. So does one
    // resumed from halfway through the first watch, which replays many pre-crash writes
    // from the store's history (the restarted server's cache starts after them).
    let halfway = first_seen.get(first_seen.len() / 2).map(|s| s.2).unwrap_or(start);
    let mut resumed_last = cms.watch(&WatchParams::default().timeout(290), &last_seen.to_string()).await?.boxed();
    let mut resumed_half = cms.watch(&WatchParams::default().timeout(290), &halfway.to_string()).await?.boxed();
    for i in 0..5 {
        cms.create(&PostParams::default(), &config_map(&format!("after-{i}"))?).await?;
    }
    let now = listed(&cms).await?;
    for (from, stream) in [(last_seen, &mut resumed_last), (halfway, &mut resumed_half)] {
        let mut expected: Vec<(u64, String)> = now.iter().filter(|(_, rv)| **rv > from).map(|(n, rv)| (*rv, n.clone())).collect();
        expected.sort();
        let last_expected = expected.last().map(|e| e.0).context("nothing to resume")?;
        let mut got = Vec::new();
        while got.last().is_none_or(|(rv, _): &(u64, String)| *rv < last_expected) {
            let ev = tokio::time::timeout(Duration::from_secs(20), stream.try_next())
                .await
                .with_context(|| format!("watch resumed from {from} stalled after {} of {} events", got.len(), expected.len()))??
                .with_context(|| format!("watch resumed from {from} ended"))?;
            if let Some((kind, name, rv)) = record(ev)? {
                ensure!(kind == "ADDED", "watch resumed from {from}: unexpected {kind} {name} at {rv}");
                got.push((rv, name));
            }
        }
        ensure!(got == expected, "watch resumed from {from}:\n got  {got:?}\n want {expected:?}");
        eprintln!("{backend:?}: watch resumed from {from} delivered {} events, {} of them written before the crash", got.len(), got.len() - 5);
    }
    drop(server);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_restart_embedded() -> anyhow::Result<()> {
    crash_and_restart(Backend::Embedded).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_restart_etcd() -> anyhow::Result<()> {
    crash_and_restart(Backend::Etcd).await
}
