//! `kubectl logs`, `exec`, `attach`, `port-forward` and `cp` through the apiserver to a
//! kubelet API server, with the stock kubectl as the client: the apiserver finds the
//! pod's node and its kubelet from the Node object, and proxies (logs) or splices
//! (upgraded streams) to it. The kubelet runs the host-process test runtime, so exec'd
//! commands are host commands and forwarded ports are on 127.0.0.1.
//!
//! The kubectl on PATH speaks WebSocket (exec v5, SPDY tunneled in WebSocket for
//! port-forward); kubectl 1.27 from the same folder speaks SPDY/3.1 for both.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, ensure, Context};
use kubelet::runtime::ContainerState;
use kubelet::server::testing::{HostRuntime, Pty, StaticPods, TestPod};
use kubelet::server::ContainerTarget;
use support::server::{have_kubectl, Backend, TestServer};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio_util::sync::CancellationToken;

/// An apiserver, a kubelet API server, and a Node and Pod that point at it.
struct Cluster {
    api: TestServer,
    runtime: Arc<HostRuntime>,
    /// The kubelet's files: logs, and files for `kubectl cp`.
    files: tempfile::TempDir,
    kubelet_shutdown: CancellationToken,
    kubelet_port: u16,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.kubelet_shutdown.cancel();
    }
}

async fn cluster() -> anyhow::Result<Option<Cluster>> {
    if !have_kubectl()? {
        return Ok(None);
    }
    let Some(api) = TestServer::start(Backend::Embedded).await? else { return Ok(None) };
    let files = tempfile::tempdir()?;
    std::fs::write(files.path().join("web-1.log"), kubelet::server::testing::SAMPLE_CRI_LOG)?;
    std::fs::write(files.path().join("web-0.log"), "2024-05-01T09:00:00Z stdout F from the last run\n")?;
    let runtime = Arc::new(HostRuntime::new(Some(files.path().to_path_buf())));
    let pods = Arc::new(StaticPods::new());
    let target = |id: &str, log: &str, previous: Option<&str>| ContainerTarget {
        container_id: id.to_string(),
        log_path: files.path().join(log),
        previous_log_path: previous.map(|p| files.path().join(p)),
        running: true,
    };
    pods.insert(
        "default",
        "web",
        TestPod {
            sandbox_id: "sandbox-web".into(),
            containers: vec![("web".into(), target("c-web", "web-1.log", Some("web-0.log"))), ("sidecar".into(), target("c-side", "side.log", None))],
            default_container: Some("web".into()),
            attach_command: vec!["cat".into()],
            ..Default::default()
        },
    );
    // A pod whose containers have not started: the fake resolver knows their names and
    // has no run of them (as for init containers still to come).
    pods.insert(
        "default",
        "starting",
        TestPod { sandbox_id: "sandbox-starting".into(), init_containers: vec!["web".into(), "sidecar".into()], default_container: Some("web".into()), ..Default::default() },
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let kubelet_port = listener.local_addr()?.port();
    let kubelet_shutdown = CancellationToken::new();
    // The kubelet API as a node serves it: TLS with a certificate from the cluster CA,
    // callers authenticated by client certificate and authorized by SubjectAccessReview.
    let ca = apiserver::server::cluster_ca(api.dir.path())?;
    let serving = ca.issue("node-1", None, &["node-1".into()], &["127.0.0.1".parse()?], component_base::pki::Usage::Server)?;
    let tls = kubelet::server::tls_config(&serving, &component_base::pki::pem_certificates(ca.cert_pem()))?;
    let kubelet_client = component_base::client::client(Some(&api.kubeconfig)).await?;
    let authorizer = Arc::new(kubelet::server::auth::Authorizer::new(kubelet_client, "node-1"));
    tokio::spawn(kubelet::server::serve_tls(listener, tls, authorizer, runtime.clone(), pods, kubelet_shutdown.clone()));

    let c = Cluster { api, runtime, files, kubelet_shutdown, kubelet_port };
    c.create("apiVersion: v1\nkind: Node\nmetadata: {name: node-1}\n").await?;
    c.status("node", "node-1", &format!(r#"{{"status":{{"addresses":[{{"type":"InternalIP","address":"127.0.0.1"}},{{"type":"Hostname","address":"node-1"}}],"daemonEndpoints":{{"kubeletEndpoint":{{"Port":{kubelet_port}}}}}}}}}"#)).await?;
    // A node whose kubelet is gone.
    let dead = tokio::net::TcpListener::bind("127.0.0.1:0").await?.local_addr()?.port();
    c.create("apiVersion: v1\nkind: Node\nmetadata: {name: node-2}\n").await?;
    c.status(
        "node",
        "node-2",
        &format!(r#"{{"status":{{"addresses":[{{"type":"InternalIP","address":"127.0.0.1"}}],"daemonEndpoints":{{"kubeletEndpoint":{{"Port":{dead}}}}}}}}}"#),
    )
    .await?;

    c.create(&pod_yaml("web", Some("node-1"))).await?;
    c.status("pod", "web", RUNNING).await?;
    c.create(&pod_yaml("pending", None)).await?;
    c.create(&pod_yaml("starting", Some("node-1"))).await?;
    c.create(&pod_yaml("orphan", Some("node-2"))).await?;
    c.status("pod", "orphan", RUNNING).await?;
    Ok(Some(c))
}

const RUNNING: &str = r#"{"status":{"phase":"Running","containerStatuses":[
  {"name":"web","ready":true,"restartCount":1,"image":"busybox","imageID":"","containerID":"rkube://c-web","started":true,"state":{"running":{"startedAt":"2024-05-01T10:00:00Z"}}},
  {"name":"sidecar","ready":true,"restartCount":0,"image":"busybox","imageID":"","containerID":"rkube://c-side","started":true,"state":{"running":{"startedAt":"2024-05-01T10:00:00Z"}}}]}}"#;

fn pod_yaml(name: &str, node: Option<&str>) -> String {
    let node = node.map(|n| format!("  nodeName: {n}\n")).unwrap_or_default();
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  annotations: {{kubectl.kubernetes.io/default-container: web}}\nspec:\n{node}  containers:\n  - {{name: web, image: busybox}}\n  - {{name: sidecar, image: busybox}}\n"
    )
}

/// The kubectl of another minor version, from the folder the one on PATH comes from.
fn kubectl_version(minor: &str) -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH").and_then(|p| std::env::split_paths(&p).map(|d| d.join("kubectl")).find(|k| k.is_file()))?;
    let real = std::fs::canonicalize(on_path).ok()?;
    let candidate = real.parent()?.join(format!("kubectl.{minor}"));
    candidate.is_file().then_some(candidate)
}

impl Cluster {
    fn command(&self, bin: &Path, args: &[&str]) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(bin);
        cmd.args(args).env("KUBECONFIG", &self.api.kubeconfig).env("HOME", self.api.dir.path()).kill_on_drop(true);
        cmd
    }

    async fn run_with(&self, bin: &Path, args: &[&str], stdin: Option<&str>) -> anyhow::Result<Output> {
        let mut cmd = self.command(bin, args);
        cmd.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() }).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().with_context(|| format!("running {}", bin.display()))?;
        if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
            pipe.write_all(input.as_bytes()).await?;
        }
        tokio::time::timeout(Duration::from_secs(120), child.wait_with_output())
            .await
            .with_context(|| format!("kubectl {} timed out", args.join(" ")))?
            .map_err(Into::into)
    }

    async fn ok(&self, args: &[&str]) -> anyhow::Result<String> {
        ok(self.run_with(Path::new("kubectl"), args, None).await?, args)
    }

    async fn fails(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = self.run_with(Path::new("kubectl"), args, None).await?;
        ensure!(!out.status.success(), "kubectl {} succeeded: {}", args.join(" "), String::from_utf8_lossy(&out.stdout));
        Ok(String::from_utf8_lossy(&out.stderr).into_owned())
    }

    async fn create(&self, yaml: &str) -> anyhow::Result<()> {
        ok(self.run_with(Path::new("kubectl"), &["create", "-f", "-"], Some(yaml)).await?, &["create"]).map(|_| ())
    }

    async fn status(&self, kind: &str, name: &str, patch: &str) -> anyhow::Result<()> {
        self.ok(&["patch", kind, name, "--subresource=status", "--type=merge", "-p", patch]).await.map(|_| ())
    }
}

fn ok(out: Output, args: &[&str]) -> anyhow::Result<String> {
    if !out.status.success() {
        bail!("kubectl {} failed: {}{}", args.join(" "), String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[tokio::test]
async fn logs() -> anyhow::Result<()> {
    let Some(c) = cluster().await? else { return Ok(()) };
    ensure!(c.ok(&["logs", "web"]).await? == "first\nsecond\nthird\n");
    ensure!(c.ok(&["logs", "web", "-c", "web", "--tail=1"]).await? == "third\n");
    let out = c.ok(&["logs", "pod/web", "--timestamps", "--tail=2"]).await?;
    ensure!(out == "2024-05-01T10:00:01.000000000Z second\n2024-05-01T10:00:02.000000000Z third\n", "{out:?}");
    ensure!(c.ok(&["logs", "web", "--since-time=2024-05-01T10:00:01Z", "--limit-bytes=8"]).await? == "second\nt");
    ensure!(c.ok(&["logs", "web", "--since=1h"]).await?.is_empty(), "those lines are older than an hour");
    ensure!(c.ok(&["logs", "web", "--previous"]).await? == "from the last run\n");
    let err = c.fails(&["logs", "web", "-c", "sidecar", "--previous"]).await?;
    ensure!(err.contains("Error from server (BadRequest): previous terminated container \"sidecar\" in pod \"web\" not found"), "{err}");
    let err = c.fails(&["logs", "web", "-c", "nope"]).await?;
    ensure!(err.contains("container nope is not valid for pod web"), "{err}");
    let err = c.fails(&["logs", "missing"]).await?;
    ensure!(err.contains("pods \"missing\" not found"), "{err}");
    ensure!(c.ok(&["logs", "pending"]).await?.is_empty(), "an unscheduled pod has no logs yet");
    let err = c.fails(&["logs", "orphan"]).await?;
    ensure!(err.contains("error dialing backend"), "{err}");

    // nodes/{name}/proxy reaches the kubelet API itself.
    ensure!(c.ok(&["get", "--raw", "/api/v1/nodes/node-1/proxy/healthz"]).await? == "ok");
    ensure!(c.ok(&["get", "--raw", "/api/v1/nodes/node-1/proxy/containerLogs/default/web/web?tailLines=1"]).await? == "third\n");
    Ok(())
}

#[tokio::test]
async fn logs_follow() -> anyhow::Result<()> {
    let Some(c) = cluster().await? else { return Ok(()) };
    let mut cmd = c.command(Path::new("kubectl"), &["logs", "-f", "web", "--tail=1"]);
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn()?;
    let mut lines = BufReader::new(child.stdout.take().context("stdout")?).lines();
    let mut next = async || -> anyhow::Result<String> {
        tokio::time::timeout(Duration::from_secs(20), lines.next_line()).await.context("no log line")??.context("logs -f ended")
    };
    ensure!(next().await? == "third");
    let log = c.files.path().join("web-1.log");
    let mut f = std::fs::OpenOptions::new().append(true).open(&log)?;
    std::io::Write::write_all(&mut f, b"2024-05-01T10:00:03Z stdout F fourth\n")?;
    ensure!(next().await? == "fourth");
    std::io::Write::write_all(&mut f, b"2024-05-01T10:00:04Z stdout F fifth\n")?;
    ensure!(next().await? == "fifth");
    // The container stops: the stream ends and kubectl exits by itself.
    c.runtime.set_state("c-web", ContainerState::Exited);
    let status = tokio::time::timeout(Duration::from_secs(20), child.wait()).await.context("logs -f did not end with the container")??;
    ensure!(status.success());
    Ok(())
}

#[tokio::test]
async fn exec() -> anyhow::Result<()> {
    let Some(c) = cluster().await? else { return Ok(()) };
    ensure!(c.ok(&["exec", "web", "--", "echo", "hi"]).await? == "hi\n");
    let out = c.run_with(Path::new("kubectl"), &["exec", "web", "-c", "sidecar", "--", "sh", "-c", "echo out; echo err >&2; exit 3"], None).await?;
    ensure!(out.status.code() == Some(3), "{out:?}");
    ensure!(out.stdout == b"out\n", "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(stderr.contains("err\n") && stderr.contains("command terminated with exit code 3"), "{stderr}");
    let out = ok(c.run_with(Path::new("kubectl"), &["exec", "-i", "web", "--", "cat"], Some("hello\nfrom stdin\n")).await?, &["exec -i"])?;
    ensure!(out == "hello\nfrom stdin\n", "{out:?}");
    let out = ok(c.run_with(Path::new("kubectl"), &["attach", "-i", "web", "-c", "web"], Some("attached\n")).await?, &["attach"])?;
    ensure!(out.contains("attached\n"), "{out:?}");

    let err = c.fails(&["exec", "pending", "--", "ls"]).await?;
    ensure!(err.contains("pod pending does not have a host assigned"), "{err}");
    let err = c.fails(&["exec", "orphan", "--", "ls"]).await?;
    ensure!(err.contains("error dialing backend"), "{err}");
    // As from Kubernetes' kubelet (a plain-text body kubectl cannot mistake for a Status).
    let err = c.fails(&["exec", "starting", "--", "ls"]).await?;
    ensure!(err.contains(r#"error: unable to upgrade connection: container not found ("web")"#), "{err}");
    let err = c.fails(&["logs", "starting"]).await?;
    ensure!(err.contains(r#"container "web" in pod "starting" is waiting to start: PodInitializing"#), "{err}");
    let err = c.fails(&["exec", "web", "-c", "nope", "--", "ls"]).await?;
    ensure!(err.contains("container nope is not valid for pod web"), "{err}");
    Ok(())
}

#[tokio::test]
async fn exec_interactive_tty() -> anyhow::Result<()> {
    let Some(c) = cluster().await? else { return Ok(()) };
    interactive(&c, Path::new("kubectl")).await?;
    // SPDY carries the terminal too (with its resize stream).
    if let Some(old) = kubectl_version("1.27") {
        interactive(&c, &old).await.context("kubectl 1.27")?;
    }
    Ok(())
}

/// `kubectl exec -it web -- sh` in a terminal: type at the remote prompt, read the answer.
async fn interactive(c: &Cluster, kubectl: &Path) -> anyhow::Result<()> {
    let pty = Pty::open(80, 24)?;
    let program = kubectl.to_string_lossy();
    let mut child = pty.spawn(&program, &["exec", "-it", "web", "--", "sh"], &[("KUBECONFIG", &c.api.kubeconfig), ("HOME", c.api.dir.path())])?;
    let mut reader = pty.reader()?;
    let mut writer = pty.writer()?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Vec<u8>>();
    tokio::spawn(async move {
        let mut buf = [0u8; 4096];
        // EIO once kubectl and its session have closed the terminal.
        while let Ok(n) = reader.read(&mut buf).await {
            if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    let mut screen = String::new();
    let mut wait_within = async |screen: &mut String, limit: Duration, what: &dyn Fn(&str) -> bool| -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + limit;
        while !what(screen) {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(chunk)) => screen.push_str(&String::from_utf8_lossy(&chunk)),
                Ok(None) => bail!("terminal closed: {screen:?}"),
                Err(_) => bail!("timed out; terminal shows {screen:?}"),
            }
        }
        Ok(())
    };
    // The remote shell's prompt.
    let long = Duration::from_secs(30);
    wait_within(&mut screen, long, &|s| s.contains("$ ") || s.contains("# ")).await?;
    writer.write_all(b"echo $((6*7))\n").await?;
    writer.flush().await?;
    wait_within(&mut screen, long, &|s| s.contains("42\r\n")).await?;
    // The remote terminal has the local one's size, and follows when it changes.
    writer.write_all(b"stty size\n").await?;
    writer.flush().await?;
    wait_within(&mut screen, long, &|s| s.contains("24 80\r\n")).await?;
    pty.resize(100, 30)?;
    // The new size travels kubectl → apiserver → kubelet asynchronously: ask until it shows.
    let mut resized = false;
    for _ in 0..40 {
        writer.write_all(b"stty size\n").await?;
        writer.flush().await?;
        if wait_within(&mut screen, Duration::from_millis(500), &|s| s.contains("30 100\r\n")).await.is_ok() {
            resized = true;
            break;
        }
    }
    ensure!(resized, "the resize never reached the remote terminal: {screen:?}");
    writer.write_all(b"exit\n").await?;
    writer.flush().await?;
    let status = tokio::time::timeout(Duration::from_secs(20), child.wait()).await.context("kubectl exec -it did not exit")??;
    ensure!(status.success(), "{status:?}: {screen:?}");
    // Closing the terminal ends the reader task.
    drop(pty);
    Ok(())
}

/// The "pod's" server: answers each read with it upper-cased.
async fn upper_case_server() -> anyhow::Result<u16> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                while let Ok(n) = conn.read(&mut buf).await {
                    if n == 0 || conn.write_all(&buf[..n].to_ascii_uppercase()).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    Ok(port)
}

/// Runs `kubectl port-forward` to `remote`, and checks two connections through it.
async fn port_forward(c: &Cluster, bin: &Path, remote: u16) -> anyhow::Result<()> {
    let mut cmd = c.command(bin, &["port-forward", "pod/web", &format!(":{remote}")]);
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn()?;
    let mut lines = BufReader::new(child.stdout.take().context("stdout")?).lines();
    let local = loop {
        let line = match tokio::time::timeout(Duration::from_secs(20), lines.next_line()).await.context("port-forward printed nothing")?? {
            Some(line) => line,
            None => {
                let mut err = String::new();
                if let Some(mut e) = child.stderr.take() {
                    e.read_to_string(&mut err).await?;
                }
                bail!("port-forward exited: {err}");
            }
        };
        // "Forwarding from 127.0.0.1:40123 -> 8080"
        if let Some(rest) = line.strip_prefix("Forwarding from 127.0.0.1:") {
            break rest.split_whitespace().next().unwrap_or_default().parse::<u16>()?;
        }
    };
    for message in ["hello through the tunnel", "second connection"] {
        let mut conn = tokio::net::TcpStream::connect(("127.0.0.1", local)).await?;
        conn.write_all(message.as_bytes()).await?;
        let mut got = vec![0u8; message.len()];
        tokio::time::timeout(Duration::from_secs(20), conn.read_exact(&mut got)).await.context("no answer through port-forward")??;
        ensure!(got == message.to_ascii_uppercase().as_bytes(), "{}", String::from_utf8_lossy(&got));
    }
    ensure!(child.try_wait()?.is_none(), "port-forward should still run");
    child.kill().await?;
    Ok(())
}

#[tokio::test]
async fn port_forward_websocket_tunnel() -> anyhow::Result<()> {
    let Some(c) = cluster().await? else { return Ok(()) };
    let remote = upper_case_server().await?;
    port_forward(&c, Path::new("kubectl"), remote).await?;

    // Nothing listens on the pod's port: kubectl reports the kubelet's error.
    let dead = tokio::net::TcpListener::bind("127.0.0.1:0").await?.local_addr()?.port();
    let mut cmd = c.command(Path::new("kubectl"), &["port-forward", "pod/web", &format!(":{dead}")]);
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn()?;
    let mut lines = BufReader::new(child.stdout.take().context("stdout")?).lines();
    let line = tokio::time::timeout(Duration::from_secs(20), lines.next_line()).await??.unwrap_or_default();
    let local: u16 = line.strip_prefix("Forwarding from 127.0.0.1:").and_then(|r| r.split_whitespace().next()).context("no Forwarding line")?.parse()?;
    let mut conn = tokio::net::TcpStream::connect(("127.0.0.1", local)).await?;
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(20), conn.read(&mut buf)).await.context("the local connection stayed open")?.unwrap_or(0);
    ensure!(n == 0, "no data expected");
    let mut err = String::new();
    let mut stderr = child.stderr.take().context("stderr")?;
    let _ = tokio::time::timeout(Duration::from_secs(10), stderr.read_to_string(&mut err)).await;
    ensure!(err.contains(&format!("error forwarding port {dead} to pod sandbox-web")), "{err}");
    Ok(())
}

/// rkube's own kubectl forwards with the kubelet's WebSocket channel protocol
/// (`v4.channel.k8s.io`, one WebSocket per connection), as client libraries do.
#[tokio::test]
async fn port_forward_websocket_channels_with_rkube_kubectl() -> anyhow::Result<()> {
    let Some(c) = cluster().await? else { return Ok(()) };
    let ours = std::env::current_exe()?.parent().and_then(Path::parent).context("no target directory")?.join("kubectl");
    if !ours.is_file() {
        ensure!(std::env::var_os("CI").is_none(), "no rkube kubectl at {} (cargo build --workspace --all-targets)", ours.display());
        println!("skipped: no rkube kubectl at {} (cargo build --workspace --all-targets)", ours.display());
        return Ok(());
    }
    let remote = upper_case_server().await?;
    port_forward(&c, &ours, remote).await
}

#[tokio::test]
async fn copy_a_file_out_of_the_pod() -> anyhow::Result<()> {
    let Some(c) = cluster().await? else { return Ok(()) };
    let data = c.files.path().join("data");
    std::fs::create_dir_all(&data)?;
    std::fs::write(data.join("report.txt"), "the report\n")?;
    let local = c.api.dir.path().join("copied.txt");
    let source = format!("web:{}", data.join("report.txt").display());
    c.ok(&["cp", &source, &local.to_string_lossy()]).await?;
    ensure!(std::fs::read_to_string(&local)? == "the report\n");

    // A few megabytes, through WebSocket (kubectl on PATH) and SPDY (1.27).
    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8).collect();
    std::fs::write(data.join("big.bin"), &big)?;
    let source = format!("web:{}", data.join("big.bin").display());
    let mut kubectls = vec![PathBuf::from("kubectl")];
    kubectls.extend(kubectl_version("1.27"));
    for (i, bin) in kubectls.iter().enumerate() {
        let local = c.api.dir.path().join(format!("big-{i}.bin"));
        ok(c.run_with(bin, &["cp", &source, &local.to_string_lossy()], None).await?, &["cp", &bin.to_string_lossy()])?;
        ensure!(std::fs::read(&local)? == big, "{} copied a different file", bin.display());
    }
    Ok(())
}

/// kubectl 1.27 knows no WebSockets: exec and port-forward go over SPDY/3.1.
#[tokio::test]
async fn kubectl_1_27_speaks_spdy() -> anyhow::Result<()> {
    let Some(old) = kubectl_version("1.27") else {
        return support::skip_or_fail("kubectl.1.27 not found beside the kubectl on PATH");
    };
    let Some(c) = cluster().await? else { return Ok(()) };
    ensure!(ok(c.run_with(&old, &["exec", "web", "--", "echo", "hi"], None).await?, &["1.27 exec"])? == "hi\n");
    let out = c.run_with(&old, &["exec", "web", "--", "sh", "-c", "exit 4"], None).await?;
    ensure!(out.status.code() == Some(4), "{out:?}");
    let out = ok(c.run_with(&old, &["exec", "-i", "web", "--", "cat"], Some("spdy stdin\n")).await?, &["1.27 exec -i"])?;
    ensure!(out == "spdy stdin\n", "{out:?}");
    let out = c.run_with(&old, &["exec", "pending", "--", "ls"], None).await?;
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(!out.status.success() && err.contains("pod pending does not have a host assigned"), "{err}");
    let remote = upper_case_server().await?;
    port_forward(&c, &old, remote).await
}

/// The kubectl minor versions around the one on PATH, where present.
#[tokio::test]
async fn other_kubectl_versions_exec_and_port_forward() -> anyhow::Result<()> {
    let Some(c) = cluster().await? else { return Ok(()) };
    let remote = upper_case_server().await?;
    for minor in ["1.29", "1.31", "1.32", "1.33"] {
        let Some(bin) = kubectl_version(minor) else { continue };
        let out = ok(c.run_with(&bin, &["exec", "-i", "web", "--", "sh", "-c", "cat; echo done"], Some("x\n")).await?, &[minor, "exec"])?;
        ensure!(out == "x\ndone\n", "{minor}: {out:?}");
        port_forward(&c, &bin, remote).await.with_context(|| format!("kubectl {minor} port-forward"))?;
    }
    Ok(())
}

/// A session that stays quiet for longer than client-go's WebSocket read deadline (61 s
/// without a pong) still ends normally. Slow, so run on demand: `-- --ignored`.
#[tokio::test]
#[ignore = "takes over a minute"]
async fn long_quiet_exec_survives_heartbeats() -> anyhow::Result<()> {
    let Some(c) = cluster().await? else { return Ok(()) };
    let mut kubectls = vec![PathBuf::from("kubectl")];
    kubectls.extend(kubectl_version("1.27"));
    let runs = kubectls.iter().map(|bin| c.run_with(bin, &["exec", "web", "--", "sh", "-c", "sleep 70; echo done"], None));
    for out in futures::future::join_all(runs).await {
        ensure!(ok(out?, &["exec sleep 70"])? == "done\n");
    }
    Ok(())
}

/// GET `path` from the kubelet API over TLS as `client` (or with no certificate);
/// `Err` when the TLS handshake itself refuses.
async fn kubelet_get(c: &Cluster, client: Option<&component_base::pki::CertPair>, path: &str) -> anyhow::Result<(u16, String)> {
    use http_body_util::BodyExt;
    let ca = apiserver::server::cluster_ca(c.api.dir.path())?;
    let config = component_base::tls::client_config(&component_base::pki::pem_certificates(ca.cert_pem()), client, &["http/1.1"])?;
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", c.kubelet_port)).await?;
    let tls = tokio_rustls::TlsConnector::from(config).connect(rustls::pki_types::ServerName::try_from("127.0.0.1")?, tcp).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake::<_, http_body_util::Empty<bytes::Bytes>>(hyper_util::rt::TokioIo::new(tls)).await?;
    tokio::spawn(conn);
    let response = sender.send_request(http::Request::get(path).header("host", "127.0.0.1").body(http_body_util::Empty::new())?).await?;
    let status = response.status().as_u16();
    let body = response.into_body().collect().await?.to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

#[tokio::test]
async fn the_kubelet_api_needs_a_certificate_and_permission() -> anyhow::Result<()> {
    let Some(c) = cluster().await? else { return Ok(()) };
    let path = "/containerLogs/default/web/web";
    // No certificate: the handshake (or the first request on it) fails.
    ensure!(kubelet_get(&c, None, path).await.is_err(), "the kubelet answered a caller without a certificate");
    // A user of the cluster CA without nodes/proxy is refused by the SubjectAccessReview.
    let ca = apiserver::server::cluster_ca(c.api.dir.path())?;
    let jane = ca.issue_client("jane", None)?;
    let (status, body) = kubelet_get(&c, Some(&jane), path).await?;
    ensure!(status == 403 && body.contains("user=jane") && body.contains("subresource=proxy"), "{status} {body}");
    // A user granted nodes/proxy reads the logs straight from the kubelet. (Another
    // user than jane: the kubelet caches a denial for 30 seconds, as the real one does.)
    c.api.ok(&["create", "clusterrole", "node-proxy", "--verb=get,create", "--resource=nodes/proxy"]).await?;
    c.api.ok(&["create", "clusterrolebinding", "bob-node-proxy", "--clusterrole=node-proxy", "--user=bob"]).await?;
    let bob = ca.issue_client("bob", None)?;
    let (status, body) = kubelet_get(&c, Some(&bob), path).await?;
    ensure!(status == 200 && !body.is_empty(), "{status} {body}");
    Ok(())
}
