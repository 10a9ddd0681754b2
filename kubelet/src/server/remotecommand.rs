//! `kubectl exec` and `kubectl attach`: the remote-command protocols that carry a
//! process's stdin, stdout, stderr, terminal resizes and final status between the client
//! and an [`ExecSession`].
//!
//! Two transports carry the same streams:
//! - WebSocket (`v5.channel.k8s.io`, `v4.channel.k8s.io`; kubectl ≥ 1.30): every binary
//!   message starts with a channel byte: 0 stdin, 1 stdout, 2 stderr, 3 error (the final
//!   `Status`), 4 resize (`{"Width":…,"Height":…}`); v5 adds 255, whose message
//!   `[255, 0]` closes stdin.
//! - SPDY/3.1 (`v4.channel.k8s.io`; kubectl < 1.30, and newer ones when WebSockets fail):
//!   the client opens one stream per channel, named by its `streamtype` header.
//!
//! The error channel always ends a session with a `Status`: `Success`, `Failure` with
//! reason `NonZeroExitCode` and the exit code as an `ExitCode` cause, or an
//! `InternalError`.

use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use futures::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::spdy::{self, SpdyStream};
use crate::runtime::ExecSession;

/// The WebSocket channel protocol with the close-stdin channel.
pub const WEBSOCKET_V5: &str = "v5.channel.k8s.io";
/// The WebSocket channel protocol (and the SPDY exec protocol) of Kubernetes ≥ 1.4.
pub const CHANNEL_V4: &str = "v4.channel.k8s.io";

const CHANNEL_STDIN: u8 = 0;
const CHANNEL_STDOUT: u8 = 1;
const CHANNEL_STDERR: u8 = 2;
const CHANNEL_ERROR: u8 = 3;
const CHANNEL_RESIZE: u8 = 4;
const CHANNEL_CLOSE: u8 = 255;

/// How long the client has to open the SPDY streams it announced (the kubelet's
/// `streamCreationTimeout`).
const STREAM_CREATION_TIMEOUT: Duration = Duration::from_secs(30);
/// How long to wait for the client's WebSocket close reply.
const CLOSE_GRACE: Duration = Duration::from_secs(5);
const READ_CHUNK: usize = 32 * 1024;

/// What an exec or attach request asks for (its query parameters).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamOptions {
    pub command: Vec<String>,
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    pub tty: bool,
}

impl StreamOptions {
    /// Reads `command` (repeated), `stdin`, `stdout`, `stderr`, `tty` as the kubelet does;
    /// exec needs a command, attach has none. With a TTY, stderr is merged into stdout.
    pub fn from_query(params: &[(String, String)], needs_command: bool) -> Result<StreamOptions, String> {
        let flag = |name: &str| params.iter().rev().find(|(k, _)| k == name).is_some_and(|(_, v)| matches!(v.as_str(), "true" | "1" | "True"));
        let command: Vec<String> = params.iter().filter(|(k, _)| k == "command").map(|(_, v)| v.clone()).collect();
        let tty = flag("tty");
        let opts = StreamOptions { stdin: flag("stdin"), stdout: flag("stdout"), stderr: flag("stderr") && !tty, tty, command };
        if needs_command && opts.command.is_empty() {
            return Err("you must specify at least one command for the container".into());
        }
        if !(opts.stdin || opts.stdout || opts.stderr || (tty && flag("stderr"))) {
            return Err("you must specify at least 1 of stdin, stdout, stderr".into());
        }
        Ok(opts)
    }
}

/// The `Status` the error channel carries for a process that exited with `code`.
pub fn exit_status(code: i32, command: &[String]) -> Value {
    if code == 0 {
        return json!({"metadata": {}, "status": "Success"});
    }
    json!({
        "metadata": {},
        "status": "Failure",
        "message": format!("command terminated with non-zero exit code: error executing command {command:?}, exit code {code}"),
        "reason": "NonZeroExitCode",
        "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]},
    })
}

/// The `Status` for a session the runtime could not run.
pub fn internal_error_status(message: &str) -> Value {
    let message = format!("error executing command in container: {message}");
    json!({
        "metadata": {},
        "status": "Failure",
        "message": format!("Internal error occurred: {message}"),
        "reason": "InternalError",
        "details": {"causes": [{"message": message}]},
        "code": 500,
    })
}

/// Client input to a session, whatever the transport.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Input {
    Stdin(Bytes),
    CloseStdin,
    /// Columns, rows.
    Resize(u16, u16),
}

/// Process output for the client.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Output {
    Stdout(Bytes),
    Stderr(Bytes),
}

#[derive(Deserialize)]
struct TerminalSize {
    #[serde(rename = "Width")]
    width: u16,
    #[serde(rename = "Height")]
    height: u16,
}

/// Runs a session: feeds `input` to the process, sends its output, and returns the final
/// `Status` once it has exited and its output is drained; `None` if the client went away
/// (`gone`) first.
pub(crate) async fn drive(
    session: ExecSession,
    mut input: mpsc::Receiver<Input>,
    output: mpsc::Sender<Output>,
    command: &[String],
    gone: CancellationToken,
) -> Option<Value> {
    let ExecSession { stdin, stdout, stderr, exit, resize } = session;
    let feeder = tokio::spawn(async move {
        let mut stdin = stdin;
        while let Some(item) = input.recv().await {
            match item {
                Input::Stdin(data) => {
                    if let Some(w) = stdin.as_mut() {
                        if w.write_all(&data).await.is_err() || w.flush().await.is_err() {
                            stdin = None;
                        }
                    }
                }
                Input::CloseStdin => {
                    if let Some(mut w) = stdin.take() {
                        let _ = w.shutdown().await;
                    }
                }
                Input::Resize(cols, rows) => {
                    if let Some(tx) = &resize {
                        let _ = tx.send((cols, rows)).await;
                    }
                }
            }
        }
        if let Some(mut w) = stdin.take() {
            let _ = w.shutdown().await;
        }
    });
    let out_pump = stdout.map(|r| tokio::spawn(pump(r, output.clone(), Output::Stdout)));
    let err_pump = stderr.map(|r| tokio::spawn(pump(r, output.clone(), Output::Stderr)));
    drop(output);
    let finished = async {
        let code = exit.await;
        if let Some(p) = out_pump {
            let _ = p.await;
        }
        if let Some(p) = err_pump {
            let _ = p.await;
        }
        code
    };
    let result = tokio::select! {
        code = finished => Some(match code {
            Ok(code) => exit_status(code, command),
            Err(_) => internal_error_status("the process ended without an exit code"),
        }),
        _ = gone.cancelled() => None,
    };
    feeder.abort();
    result
}

async fn pump(mut reader: Box<dyn AsyncRead + Send + Unpin>, output: mpsc::Sender<Output>, wrap: fn(Bytes) -> Output) {
    let mut buf = vec![0u8; READ_CHUNK];
    loop {
        // A pty reports EIO once the process side has closed: that is its end of file.
        let n = match reader.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if output.send(wrap(Bytes::copy_from_slice(&buf[..n]))).await.is_err() {
            return;
        }
    }
}

fn channel_message(channel: u8, data: &[u8]) -> Message {
    let mut buf = BytesMut::with_capacity(data.len() + 1);
    buf.put_u8(channel);
    buf.put_slice(data);
    Message::Binary(buf.freeze())
}

/// Parses one client WebSocket message into session input.
pub(crate) fn parse_channel_message(data: &[u8], v5: bool) -> Option<Input> {
    let (&channel, payload) = data.split_first()?;
    match channel {
        CHANNEL_STDIN => Some(Input::Stdin(Bytes::copy_from_slice(payload))),
        CHANNEL_RESIZE => serde_json::from_slice::<TerminalSize>(payload).ok().map(|s| Input::Resize(s.width, s.height)),
        CHANNEL_CLOSE if v5 && payload == [CHANNEL_STDIN] => Some(Input::CloseStdin),
        _ => None,
    }
}

/// Serves a session over an accepted WebSocket speaking `protocol` (v4 or v5).
/// `session` is the started process, or why it could not start.
pub(crate) async fn serve_websocket<S>(ws: WebSocketStream<S>, protocol: &str, session: Result<ExecSession, String>, command: Vec<String>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let v5 = protocol == WEBSOCKET_V5;
    let (mut sink, mut stream) = ws.split();
    let gone = CancellationToken::new();
    let (in_tx, in_rx) = mpsc::channel::<Input>(16);
    let (out_tx, mut out_rx) = mpsc::channel::<Output>(16);
    let reader = tokio::spawn({
        let gone = gone.clone();
        async move {
            while let Some(message) = stream.next().await {
                match message {
                    Ok(Message::Binary(data)) => {
                        if let Some(input) = parse_channel_message(&data, v5) {
                            if in_tx.send(input).await.is_err() {
                                break;
                            }
                        }
                    }
                    Ok(Message::Close(_)) | Err(_) => break,
                    Ok(_) => {}
                }
            }
            gone.cancel();
        }
    });
    let status = match session {
        Err(message) => Some(internal_error_status(&message)),
        Ok(session) => {
            let driver = tokio::spawn({
                let gone = gone.clone();
                async move { drive(session, in_rx, out_tx, &command, gone).await }
            });
            while let Some(out) = out_rx.recv().await {
                let message = match out {
                    Output::Stdout(d) => channel_message(CHANNEL_STDOUT, &d),
                    Output::Stderr(d) => channel_message(CHANNEL_STDERR, &d),
                };
                if sink.send(message).await.is_err() {
                    gone.cancel();
                    break;
                }
            }
            driver.await.ok().flatten()
        }
    };
    if let Some(status) = status {
        let body = serde_json::to_vec(&status).unwrap_or_default();
        let _ = sink.send(channel_message(CHANNEL_ERROR, &body)).await;
        let _ = sink.send(Message::Close(Some(CloseFrame { code: CloseCode::Normal, reason: "".into() }))).await;
    }
    // Let the reader see the client's close reply, then drop the connection.
    let _ = tokio::time::timeout(CLOSE_GRACE, reader).await;
    debug!("exec WebSocket session ended");
}

/// The streams a SPDY remote-command client opened.
#[derive(Default)]
struct SpdyStreams {
    error: Option<SpdyStream>,
    stdin: Option<SpdyStream>,
    stdout: Option<SpdyStream>,
    stderr: Option<SpdyStream>,
    resize: Option<SpdyStream>,
}

impl SpdyStreams {
    fn complete(&self, opts: &StreamOptions) -> bool {
        self.error.is_some()
            && (!opts.stdin || self.stdin.is_some())
            && (!opts.stdout || self.stdout.is_some())
            && (!opts.stderr || self.stderr.is_some())
            && (!opts.tty || self.resize.is_some())
    }
}

/// Serves a session over an upgraded SPDY/3.1 connection (protocol v4): waits for the
/// client's streams, starts the process with `start`, and streams until it exits.
pub(crate) async fn serve_spdy<IO, F>(io: IO, opts: StreamOptions, start: F)
where
    IO: AsyncRead + AsyncWrite + Send + 'static,
    F: std::future::Future<Output = Result<ExecSession, String>>,
{
    let (handle, mut incoming) = spdy::serve_session(io);
    let mut streams = SpdyStreams::default();
    let deadline = tokio::time::sleep(STREAM_CREATION_TIMEOUT);
    tokio::pin!(deadline);
    while !streams.complete(&opts) {
        let stream = tokio::select! {
            s = incoming.recv() => s,
            _ = &mut deadline => None,
        };
        let Some(stream) = stream else {
            debug!("SPDY exec client did not open its streams");
            if let Some(error) = &streams.error {
                let _ = error.writer.write(b"timed out waiting for client to create streams").await;
                let _ = error.writer.close().await;
            }
            handle.shutdown().await;
            return;
        };
        let slot = match stream.header("streamtype") {
            Some("error") => &mut streams.error,
            Some("stdin") => &mut streams.stdin,
            Some("stdout") => &mut streams.stdout,
            Some("stderr") => &mut streams.stderr,
            Some("resize") => &mut streams.resize,
            other => {
                debug!(streamtype = ?other, "unexpected SPDY stream type");
                let _ = stream.writer.reset().await;
                continue;
            }
        };
        *slot = Some(stream);
    }
    // Streams opened after these are refused rather than left queued.
    drop(incoming);
    let gone = handle.closed();
    let (in_tx, in_rx) = mpsc::channel::<Input>(16);
    let (out_tx, mut out_rx) = mpsc::channel::<Output>(16);
    if let Some(mut stdin) = streams.stdin.take() {
        let tx = in_tx.clone();
        tokio::spawn(async move {
            while let Some(chunk) = stdin.reader.next_chunk().await {
                if tx.send(Input::Stdin(chunk)).await.is_err() {
                    return;
                }
            }
            let _ = tx.send(Input::CloseStdin).await;
        });
    }
    if let Some(mut resize) = streams.resize.take() {
        let tx = in_tx.clone();
        tokio::spawn(async move {
            let mut buf = Vec::new();
            while let Some(chunk) = resize.reader.next_chunk().await {
                buf.extend_from_slice(&chunk);
                let mut sizes = serde_json::Deserializer::from_slice(&buf).into_iter::<TerminalSize>();
                let mut used = 0;
                while let Some(Ok(size)) = sizes.next() {
                    used = sizes.byte_offset();
                    if tx.send(Input::Resize(size.width, size.height)).await.is_err() {
                        return;
                    }
                }
                buf.drain(..used);
            }
        });
    }
    drop(in_tx);
    let stdout = streams.stdout.take();
    let stderr = streams.stderr.take();
    let status = match start.await {
        Err(message) => Some(internal_error_status(&message)),
        Ok(session) => {
            let command = opts.command.clone();
            let driver = tokio::spawn({
                let gone = gone.clone();
                async move { drive(session, in_rx, out_tx, &command, gone).await }
            });
            while let Some(out) = out_rx.recv().await {
                let (target, data) = match out {
                    Output::Stdout(d) => (&stdout, d),
                    Output::Stderr(d) => (&stderr, d),
                };
                if let Some(s) = target {
                    let _ = s.writer.write(&data).await;
                }
            }
            driver.await.ok().flatten()
        }
    };
    for s in [&stdout, &stderr].into_iter().flatten() {
        let _ = s.writer.close().await;
    }
    if let (Some(status), Some(error)) = (status, &streams.error) {
        let _ = error.writer.write(&serde_json::to_vec(&status).unwrap_or_default()).await;
        let _ = error.writer.close().await;
    }
    handle.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn options_from_query() {
        let opts = StreamOptions::from_query(&q(&[("command", "sh"), ("command", "-c"), ("command", "echo hi"), ("stdout", "true"), ("stderr", "true")]), true)
            .expect("opts");
        assert_eq!(opts.command, ["sh", "-c", "echo hi"]);
        assert!(opts.stdout && opts.stderr && !opts.stdin && !opts.tty);
        let tty =
            StreamOptions::from_query(&q(&[("command", "sh"), ("stdin", "true"), ("stdout", "true"), ("stderr", "true"), ("tty", "true")]), true).expect("tty");
        assert!(tty.tty && !tty.stderr, "a TTY merges stderr into stdout");
        assert!(StreamOptions::from_query(&q(&[("stdout", "true")]), true).is_err());
        assert!(StreamOptions::from_query(&q(&[("command", "ls")]), true).is_err());
        assert!(StreamOptions::from_query(&q(&[("stdout", "true")]), false).is_ok());
    }

    #[test]
    fn statuses_read_as_client_go_expects() {
        assert_eq!(exit_status(0, &[]), json!({"metadata": {}, "status": "Success"}));
        let failed = exit_status(3, &["sh".into(), "-c".into(), "exit 3".into()]);
        assert_eq!(failed["reason"], "NonZeroExitCode");
        assert_eq!(failed["details"]["causes"][0], json!({"reason": "ExitCode", "message": "3"}));
        let internal = internal_error_status("no such file");
        assert_eq!(internal["reason"], "InternalError");
        assert_eq!(internal["message"], "Internal error occurred: error executing command in container: no such file");
    }

    #[test]
    fn channel_framing() {
        assert_eq!(channel_message(CHANNEL_STDOUT, b"hi"), Message::Binary(Bytes::from_static(b"\x01hi")));
        assert_eq!(parse_channel_message(b"\x00abc", false), Some(Input::Stdin(Bytes::from_static(b"abc"))));
        assert_eq!(parse_channel_message(b"\x04{\"Width\":120,\"Height\":40}", true), Some(Input::Resize(120, 40)));
        assert_eq!(parse_channel_message(&[255, 0], true), Some(Input::CloseStdin));
        assert_eq!(parse_channel_message(&[255, 0], false), None, "v4 has no close channel");
        assert_eq!(parse_channel_message(&[], true), None);
        assert_eq!(parse_channel_message(b"\x04not json", true), None);
    }

    #[tokio::test]
    async fn drive_pumps_and_reports_exit() {
        let (stdout_w, stdout_r) = tokio::io::duplex(64);
        let (stdin_w, mut stdin_r) = tokio::io::duplex(64);
        let (exit_tx, exit_rx) = tokio::sync::oneshot::channel();
        let session = ExecSession { stdin: Some(Box::new(stdin_w)), stdout: Some(Box::new(stdout_r)), stderr: None, exit: exit_rx, resize: None };
        let (in_tx, in_rx) = mpsc::channel(4);
        let (out_tx, mut out_rx) = mpsc::channel(4);
        let driver = tokio::spawn(drive(session, in_rx, out_tx, &[], CancellationToken::new()));
        in_tx.send(Input::Stdin(Bytes::from_static(b"in"))).await.expect("send");
        in_tx.send(Input::CloseStdin).await.expect("send");
        let mut got = Vec::new();
        stdin_r.read_to_end(&mut got).await.expect("stdin");
        assert_eq!(got, b"in");
        let mut stdout_w = stdout_w;
        stdout_w.write_all(b"out").await.expect("write");
        drop(stdout_w);
        assert_eq!(out_rx.recv().await, Some(Output::Stdout(Bytes::from_static(b"out"))));
        exit_tx.send(0).expect("exit");
        assert_eq!(driver.await.expect("join"), Some(exit_status(0, &[])));
    }
}
