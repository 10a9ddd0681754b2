//! `kubectl port-forward`: the `portforward.k8s.io` protocol over SPDY/3.1, either on a
//! plain upgraded connection or tunneled in WebSocket binary messages
//! (`SPDY/3.1+portforward.k8s.io`, kubectl ≥ 1.31); and the kubelet's plain WebSocket
//! port forwarding (`v4.channel.k8s.io`, what client libraries such as kube-rs speak),
//! one connection per port named in the `ports` query, see [`serve_channels`].
//!
//! Each local connection the client accepts becomes a pair of streams sharing a
//! `requestid` header: `streamtype: error`, on which the server writes a message if
//! forwarding fails, and `streamtype: data`, which carries the bytes both ways. The
//! server connects the pair to `port` in the pod's network namespace through the runtime.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use super::spdy::{self, SpdyStream};
use crate::runtime::Runtime;

/// The SPDY sub-protocol of port forwarding.
pub const PROTOCOL_V1: &str = "portforward.k8s.io";
/// The WebSocket sub-protocol that tunnels SPDY port forwarding (KEP-4006).
pub const WEBSOCKET_TUNNEL: &str = "SPDY/3.1+portforward.k8s.io";

/// The WebSocket channel protocol of port forwarding: channel `2i` carries port `i`'s
/// bytes both ways, channel `2i + 1` its errors; each channel's first message from the
/// server is the port (two bytes, little-endian).
pub const CHANNEL_V4: &str = "v4.channel.k8s.io";

/// How long the first stream of a pair waits for the second (the kubelet's
/// `streamCreationTimeout`).
const PAIR_TIMEOUT: Duration = Duration::from_secs(30);
const READ_CHUNK: usize = 32 * 1024;

/// What the forwarding is for: the pod's sandbox, and names for messages.
#[derive(Clone)]
pub(crate) struct Target {
    pub runtime: Arc<dyn Runtime>,
    pub sandbox_id: String,
    pub pod: String,
}

#[derive(Default)]
struct Pair {
    error: Option<SpdyStream>,
    data: Option<SpdyStream>,
    created: Option<Instant>,
}

/// The request a stream belongs to: its `requestid`, or for clients older than that
/// header, one derived from the stream ids (data streams follow their error stream).
fn request_id(stream: &SpdyStream, kind: &str) -> String {
    match stream.header("requestid") {
        Some(id) => id.to_string(),
        None if kind == "data" => stream.id.saturating_sub(2).to_string(),
        None => stream.id.to_string(),
    }
}

/// Serves port forwarding on an upgraded SPDY connection until the client closes it
/// or `shutdown`.
pub(crate) async fn serve_spdy<IO>(io: IO, target: Target, shutdown: CancellationToken)
where
    IO: AsyncRead + AsyncWrite + Send + 'static,
{
    let (handle, mut incoming) = spdy::serve_session(io);
    let closed = handle.closed();
    let mut pairs: HashMap<String, Pair> = HashMap::new();
    let mut sweep = tokio::time::interval(Duration::from_secs(5));
    loop {
        let stream = tokio::select! {
            s = incoming.recv() => s,
            _ = shutdown.cancelled() => {
                handle.shutdown().await;
                break;
            }
            _ = sweep.tick() => {
                expire(&mut pairs).await;
                continue;
            }
        };
        let Some(stream) = stream else { break };
        let kind = stream.header("streamtype").unwrap_or_default().to_string();
        let id = request_id(&stream, &kind);
        let pair = pairs.entry(id.clone()).or_default();
        pair.created.get_or_insert_with(Instant::now);
        let slot = match kind.as_str() {
            "error" => &mut pair.error,
            "data" => &mut pair.data,
            other => {
                debug!(streamtype = other, "unexpected port-forward stream type");
                let _ = stream.writer.reset().await;
                continue;
            }
        };
        if slot.is_some() {
            debug!(request = %id, "duplicate port-forward stream");
            let _ = stream.writer.reset().await;
            continue;
        }
        *slot = Some(stream);
        if pair.error.is_some() && pair.data.is_some() {
            if let Some(Pair { error: Some(error), data: Some(data), .. }) = pairs.remove(&id) {
                tokio::spawn(forward(target.clone(), error, data, closed.clone()));
            }
        }
    }
    debug!(sandbox = %target.sandbox_id, "port-forward session ended");
}

async fn expire(pairs: &mut HashMap<String, Pair>) {
    let expired: Vec<String> = pairs.iter().filter(|(_, p)| p.created.is_some_and(|t| t.elapsed() > PAIR_TIMEOUT)).map(|(id, _)| id.clone()).collect();
    for id in expired {
        if let Some(pair) = pairs.remove(&id) {
            if let Some(error) = pair.error {
                let _ = error.writer.write(format!("timed out waiting for the data stream of request {id}").as_bytes()).await;
                let _ = error.writer.close().await;
            }
            if let Some(data) = pair.data {
                let _ = data.writer.reset().await;
            }
        }
    }
}

/// Connects one stream pair to the pod's port and copies until the pod side ends.
async fn forward(target: Target, error: SpdyStream, data: SpdyStream, closed: CancellationToken) {
    let port = error.header("port").or_else(|| data.header("port")).unwrap_or_default().to_string();
    let SpdyStream { reader: mut from_client, writer: to_client, .. } = data;
    let result = match port.parse::<u16>() {
        Ok(0) | Err(_) => Err(format!("invalid port {port:?}")),
        Ok(port) => target.runtime.port_forward(&target.sandbox_id, port).await.map_err(|e| e.to_string()),
    };
    match result {
        Err(e) => {
            let message = format!("error forwarding port {port} to pod {}, uid : {e}", target.sandbox_id);
            info!(pod = %target.pod, %port, error = %e, "port-forward failed");
            let _ = error.writer.write(message.as_bytes()).await;
        }
        Ok(conn) => {
            let (mut pod_read, mut pod_write) = conn.into_split();
            let upstream = tokio::spawn(async move {
                let _ = tokio::io::copy(&mut from_client, &mut pod_write).await;
                let _ = pod_write.shutdown().await;
            });
            let downstream = async {
                let mut buf = vec![0u8; READ_CHUNK];
                loop {
                    let n = match pod_read.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    if to_client.write(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            };
            tokio::select! {
                _ = downstream => {}
                _ = closed.cancelled() => {}
            }
            upstream.abort();
        }
    }
    let _ = to_client.close().await;
    let _ = error.writer.close().await;
}

/// The ports of a WebSocket port-forward request: `?ports=80&ports=8080` or
/// `?ports=80,8080`.
pub(crate) fn query_ports(query: Option<&str>) -> Result<Vec<u16>, String> {
    let mut ports = Vec::new();
    for (key, value) in query.unwrap_or_default().split('&').filter_map(|kv| kv.split_once('=')) {
        if key != "ports" {
            continue;
        }
        for p in value.split(',').filter(|p| !p.is_empty()) {
            match p.parse::<u16>() {
                Ok(port) if port > 0 => ports.push(port),
                _ => return Err(format!("invalid port {p:?}")),
            }
        }
    }
    if ports.is_empty() {
        return Err("at least one port must be given in the ports query parameter".into());
    }
    Ok(ports)
}

/// Serves `v4.channel.k8s.io` port forwarding on `ws`: one connection to each of `ports`
/// in the pod, until the client closes or every pod side has ended.
pub(crate) async fn serve_channels<S>(ws: WebSocketStream<S>, target: Target, ports: Vec<u16>, shutdown: CancellationToken)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sink, mut stream) = ws.split();
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(64);
    let mut writers = Vec::with_capacity(ports.len());
    let mut open = 0usize;
    for (i, port) in ports.iter().enumerate() {
        let (data, error) = ((2 * i) as u8, (2 * i + 1) as u8);
        for channel in [data, error] {
            let mut first = vec![channel];
            first.extend_from_slice(&port.to_le_bytes());
            if sink.send(Message::Binary(Bytes::from(first))).await.is_err() {
                return;
            }
        }
        match target.runtime.port_forward(&target.sandbox_id, *port).await {
            Err(e) => {
                info!(pod = %target.pod, %port, error = %e, "port-forward failed");
                let mut message = vec![error];
                message.extend_from_slice(format!("error forwarding port {port} to pod {}, uid : {e}", target.sandbox_id).as_bytes());
                let _ = sink.send(Message::Binary(Bytes::from(message))).await;
                writers.push(None);
            }
            Ok(conn) => {
                let (mut pod_read, pod_write) = conn.into_split();
                writers.push(Some(pod_write));
                open += 1;
                let tx = tx.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; READ_CHUNK];
                    loop {
                        let n = match pod_read.read(&mut buf[1..]).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        buf[0] = data;
                        if tx.send(buf[..=n].to_vec()).await.is_err() {
                            break;
                        }
                    }
                    // An empty message marks this port's end.
                    let _ = tx.send(vec![data]).await;
                });
            }
        }
    }
    drop(tx);
    if open == 0 {
        let _ = sink.send(Message::Close(Some(CloseFrame { code: CloseCode::Normal, reason: "".into() }))).await;
        return;
    }
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            out = rx.recv() => match out {
                Some(frame) if frame.len() == 1 => {
                    open -= 1;
                    if open == 0 {
                        break;
                    }
                }
                Some(frame) => {
                    if sink.send(Message::Binary(Bytes::from(frame))).await.is_err() {
                        break;
                    }
                }
                None => break,
            },
            message = stream.next() => match message {
                Some(Ok(Message::Binary(frame))) if !frame.is_empty() => {
                    let index = usize::from(frame[0]) / 2;
                    if frame[0] % 2 == 0 {
                        if let Some(Some(writer)) = writers.get_mut(index) {
                            if writer.write_all(&frame[1..]).await.is_err() {
                                writers[index] = None;
                            }
                        }
                    }
                }
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break,
                Some(Ok(_)) => {}
            },
        }
    }
    for writer in writers.iter_mut().flatten() {
        let _ = writer.shutdown().await;
    }
    let _ = sink.send(Message::Close(Some(CloseFrame { code: CloseCode::Normal, reason: "".into() }))).await;
    let _ = sink.close().await;
}

/// Turns a WebSocket that tunnels a byte stream in binary messages into a plain byte
/// stream (what kubectl's `TunnelingConnection` is on the client side).
pub(crate) fn websocket_tunnel<S>(ws: WebSocketStream<S>) -> DuplexStream
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (ours, theirs) = tokio::io::duplex(256 * 1024);
    let (mut sink, mut stream) = ws.split();
    let (mut from_tunnel, mut into_tunnel) = tokio::io::split(ours);
    tokio::spawn(async move {
        while let Some(message) = stream.next().await {
            match message {
                Ok(Message::Binary(data)) => {
                    if into_tunnel.write_all(&data).await.is_err() {
                        break;
                    }
                }
                Ok(Message::Close(_)) | Err(_) => break,
                Ok(_) => {}
            }
        }
        let _ = into_tunnel.shutdown().await;
    });
    tokio::spawn(async move {
        let mut buf = vec![0u8; READ_CHUNK];
        loop {
            let n = match from_tunnel.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if sink.send(Message::Binary(Bytes::copy_from_slice(&buf[..n]))).await.is_err() {
                return;
            }
        }
        let _ = sink.send(Message::Close(Some(CloseFrame { code: CloseCode::Normal, reason: "".into() }))).await;
        let _ = sink.close().await;
    });
    theirs
}
