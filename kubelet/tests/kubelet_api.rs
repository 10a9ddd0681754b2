//! The kubelet API server over the host-process test runtime, driven the way the
//! apiserver and kubectl drive it: WebSocket exec and attach (v5 and v4 channel
//! protocols), container logs (tail, timestamps, previous, follow while the file grows),
//! and port-forward over a plain SPDY/3.1 upgrade.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, ensure, Context};
use bytes::{Bytes, BytesMut};
use futures::{SinkExt, StreamExt};
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use kubelet::runtime::ContainerState;
use kubelet::server::spdy::{self, Frame, HeaderCompressor, HeaderDecompressor};
use kubelet::server::testing::{HostRuntime, StaticPods, TestPod};
use kubelet::server::ContainerTarget;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

struct Kubelet {
    addr: SocketAddr,
    runtime: Arc<HostRuntime>,
    dir: tempfile::TempDir,
    shutdown: CancellationToken,
}

impl Drop for Kubelet {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn start() -> anyhow::Result<Kubelet> {
    let dir = tempfile::tempdir()?;
    std::fs::write(dir.path().join("web-1.log"), kubelet::server::testing::SAMPLE_CRI_LOG)?;
    std::fs::write(dir.path().join("web-0.log"), "2024-05-01T09:00:00Z stdout F from the last run\n")?;
    let runtime = Arc::new(HostRuntime::new(None));
    let pods = Arc::new(StaticPods::new());
    let target = |id: &str, log: &str, previous: Option<&str>| ContainerTarget {
        container_id: id.to_string(),
        log_path: dir.path().join(log),
        previous_log_path: previous.map(|p| dir.path().join(p)),
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
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let shutdown = CancellationToken::new();
    tokio::spawn(kubelet::server::serve(listener, runtime.clone(), pods, shutdown.clone()));
    Ok(Kubelet { addr, runtime, dir, shutdown })
}

/// A plain GET; returns the status and the whole body.
async fn get(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    let stream = TcpStream::connect(addr).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let req = http::Request::get(path).header("Host", addr.to_string()).body(http_body_util::Empty::<Bytes>::new())?;
    let resp = sender.send_request(req).await?;
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await?.to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// What a finished remote-command session sent.
#[derive(Debug, Default)]
struct Session {
    protocol: String,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    status: Option<Value>,
}

type Ws = tokio_tungstenite::WebSocketStream<TcpStream>;

async fn connect(addr: SocketAddr, path_and_query: &str, protocols: &str) -> anyhow::Result<(Ws, String)> {
    let mut request = format!("ws://{addr}{path_and_query}").into_client_request()?;
    request.headers_mut().insert("Sec-WebSocket-Protocol", protocols.parse()?);
    let stream = TcpStream::connect(addr).await?;
    let (ws, response) = tokio_tungstenite::client_async(request, stream).await?;
    let protocol = response.headers().get("Sec-WebSocket-Protocol").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
    Ok((ws, protocol))
}

/// Reads a session to its end: stdout, stderr and the final status.
async fn finish(mut ws: Ws, protocol: String) -> anyhow::Result<Session> {
    let mut session = Session { protocol, ..Default::default() };
    let read = async {
        while let Some(message) = ws.next().await {
            match message? {
                Message::Binary(data) => match data.split_first() {
                    Some((1, rest)) => session.stdout.extend_from_slice(rest),
                    Some((2, rest)) => session.stderr.extend_from_slice(rest),
                    Some((3, rest)) => session.status = Some(serde_json::from_slice(rest)?),
                    _ => {}
                },
                Message::Close(_) => break,
                _ => {}
            }
        }
        anyhow::Ok(())
    };
    tokio::time::timeout(Duration::from_secs(20), read).await.context("session did not end")??;
    Ok(session)
}

fn exec_path(command: &[&str], flags: &str) -> String {
    let args: Vec<String> = command.iter().map(|c| format!("command={}", form_encode(c))).collect();
    format!("/exec/default/web/web?{}&{flags}", args.join("&"))
}

fn form_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[tokio::test]
async fn exec_over_websocket_v5_and_v4() -> anyhow::Result<()> {
    let k = start().await?;

    let (ws, protocol) = connect(k.addr, &exec_path(&["echo", "hi"], "stdout=true&stderr=true"), "v5.channel.k8s.io, v4.channel.k8s.io").await?;
    let s = finish(ws, protocol).await?;
    ensure!(s.protocol == "v5.channel.k8s.io", "{s:?}");
    ensure!(s.stdout == b"hi\n", "{s:?}");
    ensure!(s.status == Some(serde_json::json!({"metadata": {}, "status": "Success"})), "{s:?}");

    let (ws, protocol) = connect(k.addr, &exec_path(&["sh", "-c", "echo oops >&2; exit 3"], "stdout=true&stderr=true"), "v5.channel.k8s.io").await?;
    let s = finish(ws, protocol).await?;
    let status = s.status.clone().context("no status")?;
    ensure!(status["status"] == "Failure" && status["reason"] == "NonZeroExitCode", "{s:?}");
    ensure!(status["details"]["causes"][0]["reason"] == "ExitCode" && status["details"]["causes"][0]["message"] == "3", "{s:?}");
    ensure!(s.stderr == b"oops\n", "{s:?}");

    // v4 (no close channel) still runs commands.
    let (ws, protocol) = connect(k.addr, &exec_path(&["printf", "v4"], "stdout=true"), "v4.channel.k8s.io").await?;
    let s = finish(ws, protocol).await?;
    ensure!(s.protocol == "v4.channel.k8s.io" && s.stdout == b"v4", "{s:?}");

    // A command the host cannot run ends with an InternalError status.
    let (ws, protocol) = connect(k.addr, &exec_path(&["/nonexistent/rkube-cmd"], "stdout=true"), "v5.channel.k8s.io").await?;
    let s = finish(ws, protocol).await?;
    ensure!(s.status.as_ref().is_some_and(|st| st["reason"] == "InternalError"), "{s:?}");
    Ok(())
}

#[tokio::test]
async fn exec_stdin_closes_with_v5_and_attach() -> anyhow::Result<()> {
    let k = start().await?;
    let (mut ws, protocol) = connect(k.addr, &exec_path(&["cat"], "stdin=true&stdout=true&stderr=true"), "v5.channel.k8s.io").await?;
    ws.send(Message::Binary(Bytes::from_static(b"\x00hello "))).await?;
    ws.send(Message::Binary(Bytes::from_static(b"\x00world\n"))).await?;
    ws.send(Message::Binary(Bytes::from_static(&[255, 0]))).await?;
    let s = finish(ws, protocol).await?;
    ensure!(s.stdout == b"hello world\n", "{s:?}");
    ensure!(s.status.as_ref().is_some_and(|st| st["status"] == "Success"), "{s:?}");

    // attach runs the test pod's attach command (cat) on the same protocol.
    let (mut ws, protocol) = connect(k.addr, "/attach/default/web/web?stdin=true&stdout=true", "v5.channel.k8s.io").await?;
    ws.send(Message::Binary(Bytes::from_static(b"\x00attached\n"))).await?;
    ws.send(Message::Binary(Bytes::from_static(&[255, 0]))).await?;
    let s = finish(ws, protocol).await?;
    ensure!(s.stdout == b"attached\n", "{s:?}");
    Ok(())
}

#[tokio::test]
async fn exec_with_a_tty_follows_resizes() -> anyhow::Result<()> {
    let k = start().await?;
    let (mut ws, protocol) =
        connect(k.addr, &exec_path(&["sh", "-c", "read x; sleep 0.3; stty size; echo got $x"], "stdin=true&stdout=true&tty=true"), "v5.channel.k8s.io").await?;
    ws.send(Message::Binary(Bytes::from_static(b"\x04{\"Width\":101,\"Height\":33}"))).await?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    ws.send(Message::Binary(Bytes::from_static(b"\x00go\n"))).await?;
    let s = finish(ws, protocol).await?;
    let out = String::from_utf8_lossy(&s.stdout).into_owned();
    ensure!(out.contains("33 101"), "terminal size not applied: {out:?}");
    ensure!(out.contains("got go"), "{out:?}");
    ensure!(s.stderr.is_empty(), "a tty has no separate stderr");
    Ok(())
}

#[tokio::test]
async fn exec_errors_before_the_upgrade() -> anyhow::Result<()> {
    let k = start().await?;
    let (status, body) = get(k.addr, "/exec/default/nope/web?command=ls&stdout=1").await?;
    ensure!(status == 404 && body.contains("nope"), "{status} {body}");
    let (status, body) = get(k.addr, "/exec/default/web/web?command=ls&stdout=1").await?;
    ensure!(status == 400 && body.contains("Upgrade request required"), "{status} {body}");
    let err = connect(k.addr, &exec_path(&["ls"], "stdout=true"), "v1.channel.k8s.io").await.err().context("an unknown protocol must be refused")?;
    ensure!(err.to_string().contains("403"), "{err}");
    let (status, _) = get(k.addr, "/healthz").await?;
    ensure!(status == 200);
    Ok(())
}

#[tokio::test]
async fn container_logs() -> anyhow::Result<()> {
    let k = start().await?;
    let (status, body) = get(k.addr, "/containerLogs/default/web/web").await?;
    ensure!(status == 200 && body == "first\nsecond\nthird\n", "{status} {body:?}");
    let (_, body) = get(k.addr, "/containerLogs/default/web/web?tailLines=1&timestamps=true").await?;
    ensure!(body == "2024-05-01T10:00:02.000000000Z third\n", "{body:?}");
    let (_, body) = get(k.addr, "/containerLogs/default/web/web?sinceTime=2024-05-01T10:00:01Z&limitBytes=8").await?;
    ensure!(body == "second\nt", "{body:?}");
    let (_, body) = get(k.addr, "/containerLogs/default/web/web?previous=true").await?;
    ensure!(body == "from the last run\n", "{body:?}");
    let (status, body) = get(k.addr, "/containerLogs/default/web/sidecar?previous=true").await?;
    ensure!(status == 400 && body == "previous terminated container \"sidecar\" in pod \"web\" not found", "{status} {body}");
    let (status, body) = get(k.addr, "/containerLogs/default/web/sidecar").await?;
    ensure!(status == 200 && body.is_empty(), "no log file yet is an empty log: {status} {body}");
    let (status, _) = get(k.addr, "/containerLogs/default/web/web?tailLines=-3").await?;
    ensure!(status == 400);
    Ok(())
}

#[tokio::test]
async fn follow_reads_new_lines_until_the_container_stops() -> anyhow::Result<()> {
    let k = start().await?;
    let stream = TcpStream::connect(k.addr).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let req =
        http::Request::get("/containerLogs/default/web/web?follow=true&tailLines=1").header("Host", "kubelet").body(http_body_util::Empty::<Bytes>::new())?;
    let mut body = sender.send_request(req).await?.into_body();
    let mut seen = String::new();
    let mut next = async |seen: &mut String| -> anyhow::Result<bool> {
        match tokio::time::timeout(Duration::from_secs(10), body.frame()).await.context("no log data")? {
            Some(frame) => {
                if let Ok(data) = frame?.into_data() {
                    seen.push_str(&String::from_utf8_lossy(&data));
                }
                Ok(true)
            }
            None => Ok(false),
        }
    };
    while !seen.contains("third\n") {
        ensure!(next(&mut seen).await?, "stream ended early: {seen:?}");
    }
    ensure!(seen == "third\n", "{seen:?}");
    let log = k.dir.path().join("web-1.log");
    append(&log, "2024-05-01T10:00:03Z stdout P fou\n")?;
    append(&log, "2024-05-01T10:00:03Z stdout F rth\n")?;
    while !seen.contains("fourth\n") {
        ensure!(next(&mut seen).await?, "stream ended early: {seen:?}");
    }
    append(&log, "2024-05-01T10:00:04Z stdout F last words\n")?;
    k.runtime.set_state("c-web", ContainerState::Exited);
    while next(&mut seen).await? {}
    ensure!(seen == "third\nfourth\nlast words\n", "{seen:?}");
    Ok(())
}

fn append(path: &Path, text: &str) -> anyhow::Result<()> {
    let mut f = std::fs::OpenOptions::new().append(true).open(path)?;
    std::io::Write::write_all(&mut f, text.as_bytes())?;
    Ok(())
}

/// A minimal SPDY client: the upgrade, then frames.
struct SpdyClient {
    read: tokio::net::tcp::OwnedReadHalf,
    write: tokio::net::tcp::OwnedWriteHalf,
    compressor: HeaderCompressor,
    decompressor: HeaderDecompressor,
}

impl SpdyClient {
    async fn connect(addr: SocketAddr, path: &str, protocol: &str) -> anyhow::Result<SpdyClient> {
        let mut stream = TcpStream::connect(addr).await?;
        let request = format!(
            "POST {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\nX-Stream-Protocol-Version: {protocol}\r\nContent-Length: 0\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await?;
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let mut byte = [0u8; 1];
            if stream.read(&mut byte).await? == 0 {
                bail!("connection closed during the upgrade: {}", String::from_utf8_lossy(&head));
            }
            head.push(byte[0]);
        }
        let head = String::from_utf8_lossy(&head).to_lowercase();
        ensure!(head.starts_with("http/1.1 101"), "{head}");
        ensure!(head.contains(&format!("x-stream-protocol-version: {}", protocol.to_lowercase())), "{head}");
        let (read, write) = stream.into_split();
        Ok(SpdyClient { read, write, compressor: HeaderCompressor::new()?, decompressor: HeaderDecompressor::new() })
    }

    async fn send(&mut self, frame: Frame) -> anyhow::Result<()> {
        let mut buf = BytesMut::new();
        spdy::encode_frame(&frame, &mut self.compressor, &mut buf)?;
        self.write.write_all(&buf).await?;
        Ok(())
    }

    async fn recv(&mut self) -> anyhow::Result<Option<Frame>> {
        Ok(tokio::time::timeout(Duration::from_secs(10), spdy::read_frame(&mut self.read, &mut self.decompressor)).await.context("no frame")??)
    }

    async fn open(&mut self, id: u32, headers: &[(&str, &str)]) -> anyhow::Result<()> {
        let headers = headers.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        self.send(Frame::SynStream { stream_id: id, associated_to: 0, priority: 0, flags: 0, headers }).await
    }
}

#[tokio::test]
async fn port_forward_over_spdy() -> anyhow::Result<()> {
    let k = start().await?;
    // The "pod's" server: answers each line with it upper-cased, then closes.
    let echo = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = echo.local_addr()?.port().to_string();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = echo.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 64];
                if let Ok(n) = conn.read(&mut buf).await {
                    let _ = conn.write_all(&buf[..n].to_ascii_uppercase()).await;
                }
            });
        }
    });

    let mut c = SpdyClient::connect(k.addr, "/portForward/default/web", "portforward.k8s.io").await?;
    c.open(1, &[("streamtype", "error"), ("port", &port), ("requestid", "0")]).await?;
    c.send(Frame::Data { stream_id: 1, flags: spdy::FLAG_FIN, data: Bytes::new() }).await?;
    c.open(3, &[("streamtype", "data"), ("port", &port), ("requestid", "0")]).await?;
    c.send(Frame::Data { stream_id: 3, flags: 0, data: Bytes::from_static(b"hello pod") }).await?;
    c.send(Frame::Ping { id: 1 }).await?;
    let mut data = Vec::new();
    let (mut replies, mut pong, mut data_fin, mut error_fin) = (0, false, false, false);
    while !(data_fin && error_fin && pong) {
        match c.recv().await?.context("connection closed")? {
            Frame::SynReply { .. } => replies += 1,
            Frame::Ping { id: 1 } => pong = true,
            Frame::Data { stream_id: 3, flags, data: d } => {
                data.extend_from_slice(&d);
                data_fin |= flags & spdy::FLAG_FIN != 0;
            }
            Frame::Data { stream_id: 1, flags, data: d } => {
                ensure!(d.is_empty(), "error stream: {}", String::from_utf8_lossy(&d));
                error_fin |= flags & spdy::FLAG_FIN != 0;
            }
            other => bail!("unexpected frame {other:?}"),
        }
    }
    ensure!(replies == 2 && data == b"HELLO POD", "{replies} {:?}", String::from_utf8_lossy(&data));

    // A port nothing listens on: the error stream says why.
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let dead = closed.local_addr()?.port().to_string();
    drop(closed);
    c.open(5, &[("streamtype", "error"), ("port", &dead), ("requestid", "1")]).await?;
    c.open(7, &[("streamtype", "data"), ("port", &dead), ("requestid", "1")]).await?;
    let mut message = Vec::new();
    loop {
        if let Frame::Data { stream_id: 5, flags, data } = c.recv().await?.context("connection closed")? {
            message.extend_from_slice(&data);
            if flags & spdy::FLAG_FIN != 0 {
                break;
            }
        }
    }
    let message = String::from_utf8_lossy(&message);
    ensure!(message.starts_with(&format!("error forwarding port {dead} to pod sandbox-web")), "{message}");
    Ok(())
}
