//! kube-apiserver benchmark: pod creates through the apiserver against raw writes of the
//! same bytes to the same storage, and list/watch of many pods, all measured in one run on
//! one machine. Run with `cargo bench -p apiserver --bench apiserver`; BENCHMARKS.md at
//! the repo root has results and what the figures mean.
//!
//! The apiserver is the built `kube-apiserver` binary run as a child process, so its
//! resident memory is the apiserver's alone; etcd is the `etcd` binary on PATH, started on
//! free loopback ports with its data in a temp dir (shared with the tests' support code).
//!
//! Scaling (environment variables):
//! - `RKUBE_BENCH_PODS` (2000): creates per round, apiserver and reference alike
//! - `RKUBE_BENCH_ROUNDS` (3): rounds; apiserver and reference rounds alternate, medians
//! - `RKUBE_BENCH_CLIENTS` (32): concurrent clients
//! - `RKUBE_BENCH_LIST_PODS` (10000): pods stored before the list/watch figures
//! - `RKUBE_BENCH_LIST_ITERS` (20): full lists timed (limit=500 lists: 10× as many)
//! - `RKUBE_BENCH_WATCH_ITERS` (5): watches from resourceVersion=0 timed
//! - `RKUBE_BENCH_BACKENDS` (`etcd,embedded`): which stores to run on
//!
//! Besides the raw references, each round also times the floor of any HTTP apiserver on
//! the same store: a server that only stores the body it is sent (see [`null_server_main`]).

#![allow(clippy::unwrap_used)]

#[path = "../tests/support/mod.rs"]
#[allow(unused)]
mod support;

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;

use support::etcd::{etcd_binary, free_ports, EtcdCluster};

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

struct Settings {
    pods: usize,
    rounds: usize,
    clients: usize,
    list_pods: usize,
    list_iters: usize,
    watch_iters: usize,
    backends: Vec<String>,
}

impl Settings {
    fn from_env() -> Settings {
        Settings {
            pods: env_usize("RKUBE_BENCH_PODS", 2000),
            rounds: env_usize("RKUBE_BENCH_ROUNDS", 3).max(1),
            clients: env_usize("RKUBE_BENCH_CLIENTS", 32).max(1),
            list_pods: env_usize("RKUBE_BENCH_LIST_PODS", 10_000),
            list_iters: env_usize("RKUBE_BENCH_LIST_ITERS", 20).max(1),
            watch_iters: env_usize("RKUBE_BENCH_WATCH_ITERS", 5).max(1),
            backends: std::env::var("RKUBE_BENCH_BACKENDS")
                .unwrap_or_else(|_| "etcd,embedded".into())
                .split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect(),
        }
    }
}

/// A realistic Pod, as a Deployment's ReplicaSet would create it (about 2 KiB of JSON).
fn pod_json(name: &str) -> Bytes {
    let pod = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": "default",
            "labels": {"app": "web", "pod-template-hash": "7d9f8c6b5", "tier": "frontend", "version": "v1.4.2"},
            "annotations": {
                "kubectl.kubernetes.io/restartedAt": "2025-01-01T00:00:00Z",
                "prometheus.io/scrape": "true",
                "prometheus.io/port": "9090"
            },
            "ownerReferences": [{
                "apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-7d9f8c6b5",
                "uid": "3f5b8a9e-2c1d-4e6f-9a7b-1c2d3e4f5a6b", "controller": true, "blockOwnerDeletion": true
            }]
        },
        "spec": {
            "containers": [{
                "name": "web",
                "image": "registry.example.com/team/web:v1.4.2",
                "imagePullPolicy": "IfNotPresent",
                "args": ["--listen=:8080", "--metrics=:9090", "--log-level=info"],
                "ports": [
                    {"name": "http", "containerPort": 8080, "protocol": "TCP"},
                    {"name": "metrics", "containerPort": 9090, "protocol": "TCP"}
                ],
                "env": [
                    {"name": "POD_NAME", "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.name"}}},
                    {"name": "POD_IP", "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "status.podIP"}}},
                    {"name": "CACHE_SIZE", "value": "256Mi"}
                ],
                "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"cpu": "500m", "memory": "256Mi"}},
                "readinessProbe": {"httpGet": {"path": "/healthz", "port": 8080, "scheme": "HTTP"}, "periodSeconds": 5, "timeoutSeconds": 1, "successThreshold": 1, "failureThreshold": 3},
                "livenessProbe": {"httpGet": {"path": "/livez", "port": 8080, "scheme": "HTTP"}, "initialDelaySeconds": 10, "periodSeconds": 10, "timeoutSeconds": 1, "successThreshold": 1, "failureThreshold": 3},
                "volumeMounts": [{"name": "config", "mountPath": "/etc/web", "readOnly": true}],
                "terminationMessagePath": "/dev/termination-log",
                "terminationMessagePolicy": "File"
            }],
            "volumes": [{"name": "config", "configMap": {"name": "web-config", "defaultMode": 420}}],
            "restartPolicy": "Always",
            "terminationGracePeriodSeconds": 30,
            "dnsPolicy": "ClusterFirst",
            "schedulerName": "default-scheduler",
            "securityContext": {"runAsNonRoot": true, "runAsUser": 1000},
            "tolerations": [
                {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300},
                {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}
            ]
        }
    });
    Bytes::from(serde_json::to_vec(&pod).unwrap())
}

// ---------------------------------------------------------------------------------------
// The apiserver as a child process.

struct ApiServerProcess {
    child: Child,
    addr: SocketAddr,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl ApiServerProcess {
    async fn start(etcd_servers: Option<String>) -> anyhow::Result<ApiServerProcess> {
        let dir = tempfile::tempdir()?;
        let port = free_ports(1)?[0];
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
        let log = dir.path().join("kube-apiserver.log");
        let log_file = std::fs::File::create(&log)?;
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_kube-apiserver"));
        cmd.arg("--data-dir")
            .arg(dir.path().join("data"))
            .arg("--secure-port")
            .arg(port.to_string())
            .arg("--bind-address")
            .arg("127.0.0.1")
            // Plain HTTP without authentication: the figures are the API path's, not
            // TLS's or the authorizer's (the clients here speak plain HTTP/1.1).
            .arg("--insecure-serve-http")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file);
        if let Some(servers) = etcd_servers {
            cmd.arg("--etcd-servers").arg(servers);
        }
        let child = cmd.spawn().context("starting kube-apiserver")?;
        let mut server = ApiServerProcess { child, addr, log, _dir: dir };
        let ready = wait_ready(&mut server.child, addr, Duration::from_secs(60)).await;
        ready.with_context(|| format!("kube-apiserver:\n{}", std::fs::read_to_string(&server.log).unwrap_or_default()))?;
        Ok(server)
    }

    /// Resident memory of the apiserver process, in bytes.
    fn rss(&self) -> anyhow::Result<u64> {
        rss_of(self.child.id())
    }
}

impl Drop for ApiServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until the server `child` answers `GET /readyz` on `addr` with 200; fails if it
/// exits first or does not answer within `timeout`.
async fn wait_ready(child: &mut Child, addr: SocketAddr, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait()? {
            bail!("exited with {status}");
        }
        if let Ok(mut conn) = connect(addr).await {
            if let Ok((200, _)) = get(&mut conn, addr, "/readyz").await {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            bail!("not ready after {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// CPU time a process has used so far (all its threads, user and system), from
/// `/proc/<pid>/stat` in USER_HZ ticks, which Linux fixes at 100 per second.
fn cpu_of(pid: u32) -> anyhow::Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces): state is field 3, utime 14.
    let rest = stat.rsplit_once(") ").context("bad stat")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| -> anyhow::Result<u64> { Ok(fields.get(i).context("short stat")?.parse()?) };
    Ok(Duration::from_millis((ticks(11)? + ticks(12)?) * 10))
}

/// CPU used by each of `pids` while `work` runs.
async fn cpu_during<T>(pids: &[u32], work: impl std::future::Future<Output = anyhow::Result<T>>) -> anyhow::Result<(T, Vec<Duration>)> {
    let before = pids.iter().map(|p| cpu_of(*p)).collect::<anyhow::Result<Vec<_>>>()?;
    let out = work.await?;
    let used = pids.iter().zip(before).map(|(p, b)| Ok(cpu_of(*p)?.saturating_sub(b))).collect::<anyhow::Result<Vec<_>>>()?;
    Ok((out, used))
}

fn rss_of(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).context("no VmRSS")?;
    let kb: u64 = line.split_whitespace().nth(1).context("bad VmRSS")?.parse()?;
    Ok(kb * 1024)
}

// ---------------------------------------------------------------------------------------
// HTTP: one HTTP/1.1 keep-alive connection per client.

type Conn = SendRequest<Full<Bytes>>;

async fn connect(addr: SocketAddr) -> anyhow::Result<Conn> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

fn request(method: http::Method, addr: SocketAddr, path: &str, body: Bytes) -> http::Request<Full<Bytes>> {
    http::Request::builder()
        .method(method)
        .uri(path)
        .header(http::header::HOST, addr.to_string())
        .header(http::header::CONTENT_TYPE, "application/json")
        .header(http::header::ACCEPT, "application/json")
        .body(Full::new(body))
        .unwrap()
}

async fn get(conn: &mut Conn, addr: SocketAddr, path: &str) -> anyhow::Result<(u16, Bytes)> {
    conn.ready().await?;
    let resp = conn.send_request(request(http::Method::GET, addr, path, Bytes::new())).await?;
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await?.to_bytes();
    Ok((status, body))
}

async fn post(conn: &mut Conn, addr: SocketAddr, path: &str, body: Bytes) -> anyhow::Result<(u16, Bytes)> {
    conn.ready().await?;
    let resp = conn.send_request(request(http::Method::POST, addr, path, body)).await?;
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await?.to_bytes();
    Ok((status, body))
}

// ---------------------------------------------------------------------------------------
// Measurement helpers.

/// Runs `op(i)` for i in 0..n from `clients` concurrent workers (each with its own state
/// from `init`); returns operations per second.
async fn concurrent<S, I, IF, O, OF>(n: usize, clients: usize, init: I, op: O) -> anyhow::Result<f64>
where
    S: Send + 'static,
    I: Fn() -> IF,
    IF: std::future::Future<Output = anyhow::Result<S>>,
    O: Fn(S, usize) -> OF + Send + Sync + 'static,
    OF: std::future::Future<Output = anyhow::Result<S>> + Send + 'static,
{
    let mut states = Vec::with_capacity(clients);
    for _ in 0..clients {
        states.push(init().await?);
    }
    let next = Arc::new(AtomicUsize::new(0));
    let op = Arc::new(op);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for mut state in states {
        let next = next.clone();
        let op = op.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    return anyhow::Ok(());
                }
                state = op(state, i).await?;
            }
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(n as f64 / started.elapsed().as_secs_f64())
}

fn median(v: &[f64]) -> f64 {
    percentile(v, 50.0)
}

/// Nearest-rank percentile.
fn percentile(v: &[f64], p: f64) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let rank = ((p / 100.0) * s.len() as f64).ceil() as usize;
    s[rank.clamp(1, s.len()) - 1]
}

struct Row {
    backend: String,
    figure: String,
    value: String,
    reference: String,
    ratio: String,
    goal: String,
}

fn row(backend: &str, figure: &str, value: String, reference: String, ratio: String, goal: &str) -> Row {
    let r = Row { backend: backend.into(), figure: figure.into(), value, reference, ratio, goal: goal.into() };
    eprintln!("  {:<9} {:<44} {:>16} {:>26} {:>7} {:>6}", r.backend, r.figure, r.value, r.reference, r.ratio, r.goal);
    r
}

fn ms(seconds: f64) -> String {
    format!("{:.1} ms", seconds * 1e3)
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1 << 20) as f64)
}

// ---------------------------------------------------------------------------------------
// Pod creates through the apiserver.

const PODS_PATH: &str = "/api/v1/namespaces/default/pods";

async fn create_pods(addr: SocketAddr, prefix: &str, n: usize, clients: usize) -> anyhow::Result<f64> {
    let prefix = prefix.to_string();
    concurrent(
        n,
        clients,
        || connect(addr),
        move |mut conn, i| {
            let body = pod_json(&format!("{prefix}-{i}"));
            async move {
                let (status, resp) = post(&mut conn, addr, PODS_PATH, body).await?;
                if status != 201 {
                    bail!("create returned {status}: {}", String::from_utf8_lossy(&resp));
                }
                Ok(conn)
            }
        },
    )
    .await
}

/// `n` writes of `size` bytes to the keys `<prefix><i>`, `clients` concurrent on one
/// etcd client (one gRPC connection, as the apiserver has); `write` makes one of them.
async fn etcd_writes<W, F>(client: &etcd_client::Client, prefix: &str, n: usize, clients: usize, size: usize, write: W) -> anyhow::Result<f64>
where
    W: Fn(etcd_client::Client, String, Vec<u8>) -> F + Send + Sync + 'static,
    F: std::future::Future<Output = anyhow::Result<etcd_client::Client>> + Send + 'static,
{
    let value = Bytes::from(vec![b'x'; size]);
    let prefix = prefix.to_string();
    let client = client.clone();
    concurrent(
        n,
        clients,
        || {
            let c = client.clone();
            async move { Ok(c) }
        },
        move |c, i| write(c, format!("{prefix}{i}"), value.to_vec()),
    )
    .await
}

/// The raw etcd reference: `put`s of `size` bytes.
async fn etcd_puts(client: &etcd_client::Client, prefix: &str, n: usize, clients: usize, size: usize) -> anyhow::Result<f64> {
    etcd_writes(client, prefix, n, clients, size, |mut c, key, value| async move {
        c.put(key, value, None).await?;
        Ok(c)
    })
    .await
}

/// The storage contract's own cost, a second etcd reference: the write any Kubernetes
/// apiserver must ask of etcd for a create (a `txn` that puts the key only if it does not
/// exist yet), while one prefix watch with previous values (as a watch cache keeps)
/// takes every event. No apiserver can create faster than etcd answers these, so
/// `this ÷ raw puts` bounds the create ratio from above.
async fn etcd_creates_watched(client: &etcd_client::Client, prefix: &str, n: usize, clients: usize, size: usize) -> anyhow::Result<f64> {
    let options = etcd_client::WatchOptions::new().with_prefix().with_prev_key();
    let mut stream = client.clone().watch(prefix, Some(options)).await?;
    let watched = tokio::spawn(async move {
        let mut seen = 0;
        while seen < n {
            match stream.message().await? {
                Some(resp) => seen += resp.events().len(),
                None => bail!("the watch ended after {seen} of {n} events"),
            }
        }
        anyhow::Ok(())
    });
    let rate = etcd_writes(client, prefix, n, clients, size, |mut c, key, value| async move {
        etcd_create(&mut c, key, value).await?;
        Ok(c)
    })
    .await?;
    tokio::time::timeout(Duration::from_secs(60), watched).await.context("the reference watch lagged")???;
    Ok(rate)
}

/// A create as etcd must be asked for one: put the key only if it does not exist yet.
async fn etcd_create(c: &mut etcd_client::Client, key: String, value: Vec<u8>) -> anyhow::Result<()> {
    let txn = etcd_client::Txn::new()
        .when([etcd_client::Compare::create_revision(key.clone(), etcd_client::CompareOp::Equal, 0)])
        .and_then([etcd_client::TxnOp::put(key, value, None)]);
    if !c.txn(txn).await?.succeeded() {
        bail!("a create-if-absent txn found its key");
    }
    Ok(())
}

/// Raw appends of `size`-byte records (plus the key, framed like the store's log) to one
/// file, each made durable with `sync_data` before its writer is answered.
///
/// Grouped (the reference): one writer thread takes every record queued at that moment,
/// appends them in one `write` and `sync_data`s once — the group commit any good log does
/// with concurrent writers, and what the embedded store does. Ungrouped (shown for
/// context): every writer does its own append + `sync_data`.
/// One log record as the bench frames it (length, checksum slot, key, value).
fn log_record(key: &str, value: &[u8]) -> Vec<u8> {
    let mut rec = Vec::with_capacity(16 + key.len() + value.len());
    rec.extend_from_slice(&((key.len() + value.len() + 8) as u32).to_le_bytes());
    rec.extend_from_slice(&0u32.to_le_bytes());
    rec.extend_from_slice(&(key.len() as u32).to_le_bytes());
    rec.extend_from_slice(key.as_bytes());
    rec.extend_from_slice(&(value.len() as u32).to_le_bytes());
    rec.extend_from_slice(value);
    rec
}

/// A record for the group-commit writer, with the sender its writer is answered on.
type LogRequest = (Vec<u8>, tokio::sync::oneshot::Sender<std::io::Result<()>>);

/// The group commit any good log does with concurrent writers, as the embedded store does:
/// one thread takes every record queued at that moment, appends them in one `write` and
/// `sync_data`s once, then answers each writer. Ends when every sender is dropped.
fn group_writer(file: Arc<std::fs::File>) -> (tokio::sync::mpsc::UnboundedSender<LogRequest>, std::thread::JoinHandle<()>) {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<LogRequest>();
    let writer = std::thread::spawn(move || {
        let mut buf = Vec::new();
        while let Some(first) = rx.blocking_recv() {
            let mut waiters = vec![first.1];
            buf.clear();
            buf.extend_from_slice(&first.0);
            while let Ok((rec, w)) = rx.try_recv() {
                buf.extend_from_slice(&rec);
                waiters.push(w);
            }
            let result = (&*file).write_all(&buf).and_then(|()| file.sync_data());
            for w in waiters {
                let _ = w.send(result.as_ref().map(|_| ()).map_err(|e| std::io::Error::new(e.kind(), e.to_string())));
            }
        }
    });
    (tx, writer)
}

async fn raw_appends(dir: &Path, n: usize, clients: usize, size: usize, grouped: bool) -> anyhow::Result<f64> {
    let path = dir.join(if grouped { "grouped.log" } else { "single.log" });
    let file = Arc::new(std::fs::OpenOptions::new().create(true).append(true).open(&path)?);
    let value = Arc::new(vec![b'x'; size]);
    let record = move |i: usize| log_record(&format!("/registry/pods/default/raw-{i}"), &value);
    if grouped {
        let (tx, writer) = group_writer(file);
        let rate = concurrent(
            n,
            clients,
            || {
                let tx = tx.clone();
                async move { Ok(tx) }
            },
            move |tx, i| {
                let rec = record(i);
                async move {
                    let (done, wait) = tokio::sync::oneshot::channel();
                    tx.send((rec, done)).map_err(|_| anyhow::anyhow!("writer stopped"))?;
                    wait.await??;
                    Ok(tx)
                }
            },
        )
        .await;
        drop(tx);
        let _ = writer.join();
        rate
    } else {
        concurrent(
            n,
            clients,
            || {
                let f = file.clone();
                async move { Ok(f) }
            },
            move |f, i| {
                let rec = record(i);
                async move {
                    let f2 = f.clone();
                    tokio::task::spawn_blocking(move || (&*f2).write_all(&rec).and_then(|()| f2.sync_data())).await??;
                    Ok(f)
                }
            },
        )
        .await
    }
}

// ---------------------------------------------------------------------------------------
// The floor of any HTTP apiserver on a store.

/// Set (to `<port> etcd <endpoints>` or `<port> log <file>`) when this binary runs as the
/// null server, a child process of the bench as the apiserver is.
const NULL_SERVER_ENV: &str = "RKUBE_BENCH_NULL_SERVER";

/// Where the null server puts a body.
enum NullSink {
    Etcd(etcd_client::Client),
    Log(tokio::sync::mpsc::UnboundedSender<LogRequest>),
}

impl NullSink {
    async fn store(&self, key: String, body: Bytes) -> anyhow::Result<()> {
        match self {
            NullSink::Etcd(client) => etcd_create(&mut client.clone(), key, body.to_vec()).await,
            NullSink::Log(queue) => {
                let (done, wait) = tokio::sync::oneshot::channel();
                queue.send((log_record(&key, &body), done)).map_err(|_| anyhow::anyhow!("writer stopped"))?;
                Ok(wait.await??)
            }
        }
    }
}

/// The null server: an HTTP/1.1 server that answers a POST by storing its body under a
/// fresh key the way a create must be stored (on etcd the create-if-absent txn, with one
/// prefix watch taking every event as a watch cache would; on a log the grouped
/// append + fsync), then answering 201 with the body. It parses nothing, checks nothing
/// and keeps nothing in memory, so no apiserver on the same store, reached over the same
/// HTTP by the same clients, can create faster: its rate ÷ the raw reference bounds the
/// create ratio from above, with the cost of serving HTTP on these two cores included.
fn null_server_main(spec: &str) -> anyhow::Result<()> {
    let mut parts = spec.splitn(3, ' ');
    let (Some(port), Some(kind), Some(target)) = (parts.next(), parts.next(), parts.next()) else {
        bail!("{NULL_SERVER_ENV}={spec:?}: expected `<port> etcd|log <endpoints|file>`");
    };
    let port: u16 = port.parse()?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async move {
        let sink = match kind {
            "etcd" => {
                let client = etcd_client::Client::connect(target.split(',').collect::<Vec<_>>(), None).await?;
                let options = etcd_client::WatchOptions::new().with_prefix().with_prev_key();
                let mut stream = client.clone().watch("/null/", Some(options)).await?;
                tokio::spawn(async move { while let Ok(Some(_)) = stream.message().await {} });
                NullSink::Etcd(client)
            }
            "log" => {
                let file = std::fs::OpenOptions::new().create(true).append(true).open(target)?;
                NullSink::Log(group_writer(Arc::new(file)).0)
            }
            other => bail!("unknown null server store {other:?}"),
        };
        let sink = Arc::new(sink);
        let next = Arc::new(AtomicUsize::new(0));
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
        loop {
            let (stream, _) = listener.accept().await?;
            stream.set_nodelay(true)?;
            let (sink, next) = (sink.clone(), next.clone());
            let service = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                let (sink, next) = (sink.clone(), next.clone());
                async move {
                    let post = req.method() == http::Method::POST;
                    let body = req.into_body().collect().await?.to_bytes();
                    let (status, body) = if !post {
                        (http::StatusCode::OK, Bytes::from_static(b"ok"))
                    } else {
                        match sink.store(format!("/null/{}", next.fetch_add(1, Ordering::Relaxed)), body.clone()).await {
                            Ok(()) => (http::StatusCode::CREATED, body),
                            Err(e) => (http::StatusCode::INTERNAL_SERVER_ERROR, Bytes::from(format!("{e:#}"))),
                        }
                    };
                    let resp = http::Response::builder()
                        .status(status)
                        .header(http::header::CONTENT_TYPE, "application/json")
                        .body(Full::new(body))?;
                    anyhow::Ok(resp)
                }
            });
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
            });
        }
    })
}

/// The null server as a child process; killed on drop.
struct NullServer {
    child: Child,
    addr: SocketAddr,
}

impl NullServer {
    async fn start(kind: &str, target: &str) -> anyhow::Result<NullServer> {
        let port = free_ports(1)?[0];
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
        let child = Command::new(std::env::current_exe()?)
            .env(NULL_SERVER_ENV, format!("{port} {kind} {target}"))
            .stdin(Stdio::null())
            .spawn()
            .context("starting the null server")?;
        let mut server = NullServer { child, addr };
        wait_ready(&mut server.child, addr, Duration::from_secs(30)).await.context("the null server")?;
        Ok(server)
    }
}

impl Drop for NullServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------------------
// List and watch.

async fn time_lists(addr: SocketAddr, path: &str, iters: usize, expect_items: Option<usize>) -> anyhow::Result<Vec<f64>> {
    let mut conn = connect(addr).await?;
    let mut times = Vec::with_capacity(iters);
    for _ in 0..iters {
        let started = Instant::now();
        let (status, body) = get(&mut conn, addr, path).await?;
        times.push(started.elapsed().as_secs_f64());
        if status != 200 {
            bail!("GET {path} returned {status}: {}", String::from_utf8_lossy(&body[..body.len().min(500)]));
        }
        if let Some(expect) = expect_items {
            // Checked outside the timed part, on the first answer only (parsing is slow).
            if times.len() == 1 {
                let list: serde_json::Value = serde_json::from_slice(&body)?;
                let got = list["items"].as_array().map_or(0, Vec::len);
                if got != expect {
                    bail!("GET {path} returned {got} items, expected {expect}");
                }
            }
        }
    }
    Ok(times)
}

/// Time from sending a watch from resourceVersion=0 until `expect` ADDED events arrived.
async fn time_watch(addr: SocketAddr, expect: usize) -> anyhow::Result<f64> {
    let mut conn = connect(addr).await?;
    let started = Instant::now();
    conn.ready().await?;
    let resp = conn
        .send_request(request(http::Method::GET, addr, "/api/v1/pods?watch=true&resourceVersion=0", Bytes::new()))
        .await?;
    if resp.status() != 200 {
        bail!("watch returned {}", resp.status());
    }
    let mut body = resp.into_body();
    let mut pending: Vec<u8> = Vec::new();
    let mut added = 0usize;
    while added < expect {
        let frame = tokio::time::timeout(Duration::from_secs(120), body.frame())
            .await
            .context("watch stalled")?
            .context("watch ended early")??;
        let Ok(data) = frame.into_data() else { continue };
        pending.extend_from_slice(&data);
        let mut start = 0;
        while let Some(pos) = pending[start..].iter().position(|&b| b == b'\n') {
            let line = &pending[start..start + pos];
            if !line.starts_with(br#"{"type":"ADDED""#) {
                bail!("unexpected watch event: {}", String::from_utf8_lossy(&line[..line.len().min(200)]));
            }
            added += 1;
            start += pos + 1;
        }
        pending.drain(..start);
    }
    Ok(started.elapsed().as_secs_f64())
}

// ---------------------------------------------------------------------------------------

struct EtcdRun {
    cluster: EtcdCluster,
    client: etcd_client::Client,
}

async fn start_etcd() -> anyhow::Result<EtcdRun> {
    let binary = etcd_binary().context("etcd not on PATH (Debian: apt-get install etcd-server)")?;
    let mut cluster = EtcdCluster::start(&binary, 1)?;
    let _ = cluster.connect().await?;
    let client = etcd_client::Client::connect(cluster.endpoints(), None).await?;
    Ok(EtcdRun { cluster, client })
}

async fn run_backend(backend: &str, s: &Settings, rows: &mut Vec<Row>, stored_size: &mut Option<usize>) -> anyhow::Result<()> {
    eprintln!("== {backend}");
    let etcd = if backend == "etcd" { Some(start_etcd().await?) } else { None };
    let server = ApiServerProcess::start(etcd.as_ref().map(|e| e.cluster.endpoints().join(","))).await?;
    let addr = server.addr;
    let rss_before = server.rss()?;

    // Warm up (connections, caches, allocator) and learn the stored size of a pod.
    create_pods(addr, "warmup", 64, s.clients).await?;
    if let Some(etcd) = &etcd {
        let mut c = etcd.client.clone();
        let got = c.get("/registry/pods/default/warmup-0", None).await?;
        let kv = got.kvs().first().context("warmup pod not stored under /registry/pods/default/")?;
        *stored_size = Some(kv.value().len());
        etcd_puts(&etcd.client, "/bench/warmup/", 64, s.clients, kv.value().len()).await?;
    }
    // The embedded store writes the same JSON as etcd gets; without an etcd run, use the
    // apiserver's answer to a GET (the same object plus nothing the store omits, to within
    // a few bytes).
    let size = match *stored_size {
        Some(n) => n,
        None => {
            let mut conn = connect(addr).await?;
            let (_, body) = get(&mut conn, addr, &format!("{PODS_PATH}/warmup-0")).await?;
            body.len()
        }
    };
    let scratch = tempfile::tempdir()?;
    let null_log = scratch.path().join("null.log");
    let null = match &etcd {
        Some(etcd) => NullServer::start("etcd", &etcd.cluster.endpoints().join(",")).await?,
        None => NullServer::start("log", &null_log.to_string_lossy()).await?,
    };
    create_pods(null.addr, "warmup", 64, s.clients).await?;

    // Figures 1 / 2: alternate apiserver rounds and reference rounds; medians.
    let mut api_rates = Vec::new();
    let mut ref_rates = Vec::new();
    let mut single_rates = Vec::new();
    let mut contract_rates = Vec::new();
    let mut null_rates = Vec::new();
    let mut null_cpu = Vec::new();
    // CPU per write: the apiserver's and etcd's during apiserver rounds, etcd's during
    // reference rounds (µs per create or put, one value per round).
    let etcd_pid = etcd.as_ref().and_then(|e| e.cluster.members.first()?.child.as_ref().map(|c| c.id()));
    let pids: Vec<u32> = std::iter::once(server.child.id()).chain(etcd_pid).collect();
    let (mut api_cpu, mut etcd_cpu, mut ref_cpu, mut contract_cpu) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let per_write = |d: Duration| d.as_secs_f64() * 1e6 / s.pods as f64;
    for round in 0..s.rounds {
        let (api, used) = cpu_during(&pids, create_pods(addr, &format!("bench-r{round}"), s.pods, s.clients)).await?;
        api_cpu.push(per_write(used[0]));
        if let Some(etcd_used) = used.get(1) {
            etcd_cpu.push(per_write(*etcd_used));
        }
        let reference = match &etcd {
            Some(etcd) => {
                let (rate, used) = cpu_during(&pids, etcd_puts(&etcd.client, &format!("/bench/r{round}/"), s.pods, s.clients, size)).await?;
                if let Some(etcd_used) = used.get(1) {
                    ref_cpu.push(per_write(*etcd_used));
                }
                let (contract, used) = cpu_during(&pids, etcd_creates_watched(&etcd.client, &format!("/bench/t{round}/"), s.pods, s.clients, size)).await?;
                if let Some(etcd_used) = used.get(1) {
                    contract_cpu.push(per_write(*etcd_used));
                }
                contract_rates.push(contract);
                rate
            }
            None => {
                let grouped = raw_appends(scratch.path(), s.pods, s.clients, size, true).await?;
                single_rates.push(raw_appends(scratch.path(), s.pods, s.clients, size, false).await?);
                grouped
            }
        };
        let (floor, used) = cpu_during(&[null.child.id()], create_pods(null.addr, &format!("null-r{round}"), s.pods, s.clients)).await?;
        null_cpu.push(per_write(used[0]));
        null_rates.push(floor);
        match contract_rates.last() {
            Some(contract) => eprintln!("  round {round}: apiserver {api:.0}/s, reference {reference:.0}/s, create txns watched {contract:.0}/s, null server {floor:.0}/s"),
            None => eprintln!("  round {round}: apiserver {api:.0}/s, reference {reference:.0}/s, null server {floor:.0}/s"),
        }
        api_rates.push(api);
        ref_rates.push(reference);
    }
    let (api, reference) = (median(&api_rates), median(&ref_rates));
    let ref_name = if etcd.is_some() { "raw etcd put" } else { "raw append+fsync, grouped" };
    rows.push(row(
        backend,
        &format!("pod creates/s ({} clients, {}×{} pods)", s.clients, s.rounds, s.pods),
        format!("{api:.0}/s"),
        format!("{reference:.0}/s {ref_name}"),
        format!("{:.2}", api / reference),
        "≥ 0.70",
    ));
    rows.push(row(backend, "apiserver CPU per create", format!("{:.0} µs", median(&api_cpu)), String::new(), String::new(), ""));
    if !etcd_cpu.is_empty() && !ref_cpu.is_empty() {
        let (during, reference) = (median(&etcd_cpu), median(&ref_cpu));
        rows.push(row(
            backend,
            "etcd CPU per create",
            format!("{during:.0} µs"),
            format!("{reference:.0} µs per raw put"),
            format!("{:.2}", reference / during),
            "",
        ));
    }
    if !contract_rates.is_empty() {
        let contract = median(&contract_rates);
        rows.push(row(
            backend,
            "  (ceiling: etcd's create-if-absent txns under a watch, ÷ raw puts)",
            format!("{contract:.0}/s"),
            format!("{reference:.0}/s raw etcd put"),
            format!("{:.2}", contract / reference),
            "",
        ));
        rows.push(row(
            backend,
            "  pod creates/s ÷ that ceiling",
            format!("{api:.0}/s"),
            format!("{contract:.0}/s create txns watched"),
            format!("{:.2}", api / contract),
            "",
        ));
        if !contract_cpu.is_empty() {
            rows.push(row(backend, "  etcd CPU per watched create txn", format!("{:.0} µs", median(&contract_cpu)), String::new(), String::new(), ""));
        }
    }
    let floor = median(&null_rates);
    rows.push(row(
        backend,
        "  (ceiling: an HTTP server that only stores the body, ÷ reference)",
        format!("{floor:.0}/s"),
        format!("{reference:.0}/s {ref_name}"),
        format!("{:.2}", floor / reference),
        "",
    ));
    rows.push(row(
        backend,
        "  pod creates/s ÷ that ceiling",
        format!("{api:.0}/s"),
        format!("{floor:.0}/s null server"),
        format!("{:.2}", api / floor),
        "",
    ));
    rows.push(row(backend, "  null server CPU per create", format!("{:.0} µs", median(&null_cpu)), String::new(), String::new(), ""));
    drop(null);
    if !single_rates.is_empty() {
        let single = median(&single_rates);
        rows.push(row(
            backend,
            "  (context: ungrouped append+fsync per write)",
            String::new(),
            format!("{single:.0}/s raw, ungrouped"),
            format!("{:.2}", api / single),
            "",
        ));
    }

    // Figure 3: top up to list_pods pods, then list and watch.
    // Counted, not listed: a full list may be exactly what fails.
    let mut total = 64 + s.rounds * s.pods;
    if total < s.list_pods {
        create_pods(addr, "fill", s.list_pods - total, s.clients).await?;
        total = s.list_pods;
    }
    // Let the allocator and the watch cache settle before reading RSS.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_after = server.rss()?;

    // A failing list is a finding, not a reason to stop: it is reported in the table.
    let full = time_lists(addr, "/api/v1/pods", s.list_iters, Some(total)).await.map_err(|e| format!("{e:#}"));
    let full_ref = match &etcd {
        Some(etcd) => {
            // etcd-client's gRPC default caps answers at 4 MiB; a raw list must lift it.
            let mut c = etcd.client.kv_client().max_decoding_message_size(usize::MAX);
            let mut times = Vec::new();
            for _ in 0..s.list_iters {
                let started = Instant::now();
                let got = c.get("/registry/pods/", Some(etcd_client::GetOptions::new().with_prefix())).await?;
                times.push(started.elapsed().as_secs_f64());
                if got.kvs().len() != total {
                    bail!("etcd range returned {} pods, expected {total}", got.kvs().len());
                }
            }
            Some(times)
        }
        None => None,
    };
    let paged = time_lists(addr, "/api/v1/pods?limit=500", s.list_iters * 10, Some(500.min(total))).await.map_err(|e| format!("{e:#}"));
    let mut watches = Vec::new();
    for _ in 0..s.watch_iters {
        watches.push(time_watch(addr, total).await?);
    }

    let failed = |e: &String| format!("FAILS: {}", e.chars().take(160).collect::<String>().replace('|', "/"));
    for (p, label) in [(50.0, "p50"), (99.0, "p99")] {
        let (value, ratio) = match &full {
            Ok(t) => (ms(percentile(t, p)), full_ref.as_ref().map(|r| format!("{:.2}", percentile(r, p) / percentile(t, p))).unwrap_or_default()),
            Err(e) => (failed(e), String::new()),
        };
        let reference = full_ref.as_ref().map(|r| format!("{} raw etcd range", ms(percentile(r, p)))).unwrap_or_default();
        rows.push(row(backend, &format!("GET /api/v1/pods ({total} pods) {label}"), value, reference, ratio, ""));
    }
    for (p, label) in [(50.0, "p50"), (99.0, "p99")] {
        let value = match &paged {
            Ok(t) => ms(percentile(t, p)),
            Err(e) => failed(e),
        };
        rows.push(row(backend, &format!("GET /api/v1/pods?limit=500 {label}"), value, String::new(), String::new(), ""));
    }
    rows.push(row(backend, &format!("watch rv=0 → {total} ADDED, median"), ms(median(&watches)), String::new(), String::new(), ""));
    rows.push(row(backend, "apiserver VmRSS before loading", mib(rss_before), String::new(), String::new(), ""));
    rows.push(row(backend, &format!("apiserver VmRSS with {total} pods"), mib(rss_after), String::new(), String::new(), ""));
    drop(server);
    drop(etcd);
    Ok(())
}

fn main() -> anyhow::Result<()> {
    if let Ok(spec) = std::env::var(NULL_SERVER_ENV) {
        return null_server_main(&spec);
    }
    // `cargo bench` passes `--bench`; any filter arguments are ignored.
    let settings = Settings::from_env();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        eprintln!(
            "kube-apiserver benchmark: {} rounds × {} pods, {} clients, {} pods for list/watch, {} cores",
            settings.rounds,
            settings.pods,
            settings.clients,
            settings.list_pods,
            std::thread::available_parallelism().map_or(0, |n| n.get())
        );
        let mut rows = Vec::new();
        let mut stored_size = None;
        for backend in &settings.backends {
            match backend.as_str() {
                "etcd" | "embedded" => run_backend(backend, &settings, &mut rows, &mut stored_size).await?,
                other => bail!("unknown backend {other:?} in RKUBE_BENCH_BACKENDS (etcd, embedded)"),
            }
        }
        if let Some(size) = stored_size {
            println!("\nstored Pod JSON: {size} bytes (reference writes use the same size)");
        }
        println!();
        println!("| backend | figure | value | reference | ratio | goal |");
        println!("|---|---|---|---|---|---|");
        for r in &rows {
            println!("| {} | {} | {} | {} | {} | {} |", r.backend, r.figure, r.value, r.reference, r.ratio, r.goal);
        }
        anyhow::Ok(())
    })
}
