//! `kubectl attach` (and `kubectl run -i`): the container's own stdio, reached through
//! its shim. The shim owns the container's output (pipes, or a pty master with `tty`)
//! and, when the container has `stdin: true`, the write side of its stdin; it listens on
//! `attach.sock` in the container directory, and every connection gets the live output
//! and may write stdin and resize the terminal. Output still goes to the CRI log.
//!
//! The wire format, both ways, is a sequence of frames: one type byte, a big-endian
//! `u32` payload length, then the payload (at most [`MAX_PAYLOAD`] bytes):
//! - client → shim: `HELLO` (1 byte of flags, bit 0: this session writes stdin; first),
//!   `STDIN` (bytes), `CLOSE_STDIN` (empty), `RESIZE` (columns, rows: two `u16`);
//! - shim → client: `STDOUT` and `STDERR` (bytes; with a tty everything is `STDOUT`),
//!   then `EXIT` (the container's exit code, an `i32`) before the shim closes.
//!
//! Kubernetes' `stdinOnce`, as containerd implements it: without a tty, when a session
//! that writes stdin closes its stdin (or goes away), the container's stdin is closed for
//! good and the process reads to its end. Otherwise (no `stdinOnce`, or a tty, whose
//! input cannot be closed), closing a session's stdin ends that session and the
//! container keeps its stdin for the next one. A session ends when the container exits
//! or the client leaves.
//!
//! The shim side ([`AttachServer`]) is synchronous: the shim is a single-threaded
//! process that multiplexes everything with one `poll`. The kubelet side
//! ([`open_session`]) is async and turns a connection into an [`ExecSession`].

use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use super::logs::Stream;
use super::store::{read_json, ExitRecord, EXIT_FILE};
use crate::runtime::{ExecSession, Result, RuntimeError};

/// The shim's listening socket, in the container directory.
pub const ATTACH_SOCKET: &str = "attach.sock";
/// The largest payload a frame may carry.
pub const MAX_PAYLOAD: usize = 1 << 20;
/// Output a session may have queued before the shim drops it as too slow.
const MAX_QUEUED_OUTPUT: usize = 8 << 20;
/// Stdin the shim buffers before it stops reading from sessions.
const MAX_QUEUED_STDIN: usize = 1 << 20;
/// How many sessions may be attached at once.
const MAX_SESSIONS: usize = 32;
/// How long the shim tries to hand each session its last output and exit code.
const FINAL_WRITE_TIMEOUT: Duration = Duration::from_secs(2);
const READ_CHUNK: usize = 32 * 1024;

const HEADER: usize = 5;
const T_HELLO: u8 = 0x01;
const T_STDIN: u8 = 0x02;
const T_CLOSE_STDIN: u8 = 0x03;
const T_RESIZE: u8 = 0x04;
const T_STDOUT: u8 = 0x11;
const T_STDERR: u8 = 0x12;
const T_EXIT: u8 = 0x13;
const HELLO_STDIN: u8 = 0x01;

/// One message of the attach protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// The first client frame: whether this session writes stdin.
    Hello {
        stdin: bool,
    },
    Stdin(Vec<u8>),
    CloseStdin,
    Resize {
        cols: u16,
        rows: u16,
    },
    Stdout(Vec<u8>),
    Stderr(Vec<u8>),
    Exit(i32),
}

/// Why a byte stream is not a sequence of frames.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("unknown attach frame type {0:#04x}")]
    UnknownType(u8),
    #[error("attach frame of {0} bytes is larger than {MAX_PAYLOAD}")]
    TooLarge(usize),
    #[error("attach frame of type {kind:#04x} has a payload of {len} bytes")]
    BadLength { kind: u8, len: usize },
}

fn push_header(out: &mut Vec<u8>, kind: u8, len: usize) {
    out.push(kind);
    out.extend_from_slice(&(len as u32).to_be_bytes());
}

/// Appends a data frame (`STDIN`, `STDOUT`, `STDERR`) for `data`, cut into frames of at
/// most [`MAX_PAYLOAD`] bytes.
fn encode_data(out: &mut Vec<u8>, kind: u8, data: &[u8]) {
    if data.is_empty() {
        push_header(out, kind, 0);
    }
    for chunk in data.chunks(MAX_PAYLOAD) {
        push_header(out, kind, chunk.len());
        out.extend_from_slice(chunk);
    }
}

impl Frame {
    /// Appends the frame's bytes to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Frame::Hello { stdin } => {
                push_header(out, T_HELLO, 1);
                out.push(if *stdin { HELLO_STDIN } else { 0 });
            }
            Frame::Stdin(data) => encode_data(out, T_STDIN, data),
            Frame::CloseStdin => push_header(out, T_CLOSE_STDIN, 0),
            Frame::Resize { cols, rows } => {
                push_header(out, T_RESIZE, 4);
                out.extend_from_slice(&cols.to_be_bytes());
                out.extend_from_slice(&rows.to_be_bytes());
            }
            Frame::Stdout(data) => encode_data(out, T_STDOUT, data),
            Frame::Stderr(data) => encode_data(out, T_STDERR, data),
            Frame::Exit(code) => {
                push_header(out, T_EXIT, 4);
                out.extend_from_slice(&code.to_be_bytes());
            }
        }
    }

    fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode(&mut out);
        out
    }
}

/// Cuts a byte stream into frames, keeping an incomplete frame until the rest arrives.
#[derive(Debug, Default)]
pub struct FrameDecoder {
    buf: Vec<u8>,
    start: usize,
}

impl FrameDecoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds bytes read from the connection.
    pub fn push(&mut self, data: &[u8]) {
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.extend_from_slice(data);
    }

    /// The next complete frame, if one has arrived.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, FrameError> {
        let rest = &self.buf[self.start..];
        if rest.len() < HEADER {
            return Ok(None);
        }
        let kind = rest[0];
        let len = u32::from_be_bytes([rest[1], rest[2], rest[3], rest[4]]) as usize;
        if len > MAX_PAYLOAD {
            return Err(FrameError::TooLarge(len));
        }
        let fixed = match kind {
            T_HELLO => Some(1),
            T_CLOSE_STDIN => Some(0),
            T_RESIZE | T_EXIT => Some(4),
            T_STDIN | T_STDOUT | T_STDERR => None,
            other => return Err(FrameError::UnknownType(other)),
        };
        if fixed.is_some_and(|want| want != len) {
            return Err(FrameError::BadLength { kind, len });
        }
        if rest.len() < HEADER + len {
            return Ok(None);
        }
        let payload = &rest[HEADER..HEADER + len];
        let frame = match kind {
            T_HELLO => Frame::Hello {
                stdin: payload[0] & HELLO_STDIN != 0,
            },
            T_STDIN => Frame::Stdin(payload.to_vec()),
            T_CLOSE_STDIN => Frame::CloseStdin,
            T_RESIZE => Frame::Resize {
                cols: u16::from_be_bytes([payload[0], payload[1]]),
                rows: u16::from_be_bytes([payload[2], payload[3]]),
            },
            T_STDOUT => Frame::Stdout(payload.to_vec()),
            T_STDERR => Frame::Stderr(payload.to_vec()),
            _ => Frame::Exit(i32::from_be_bytes([
                payload[0], payload[1], payload[2], payload[3],
            ])),
        };
        self.start += HEADER + len;
        if self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        }
        Ok(Some(frame))
    }
}

/// A path naming `name` in the directory open as `dir`: socket paths are limited to 108
/// bytes, container directories can be longer.
fn path_via_fd(dir: &std::fs::File, name: &str) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}/{name}", dir.as_raw_fd()))
}

// ---------------------------------------------------------------------------------------
// The shim's side.

/// What a file descriptor of the attach server is polled for; handed back to
/// [`AttachServer::ready`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interest {
    Listener,
    Session(u64),
    Stdin,
}

/// The container's stdin as the shim holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StdinMode {
    /// `stdin: false`: sessions' stdin is ignored.
    None,
    /// The write side of a pipe that is the container's stdin.
    Pipe,
    /// The container's terminal (the pty master).
    Tty,
}

struct Session {
    id: u64,
    stream: UnixStream,
    decoder: FrameDecoder,
    /// Frames not yet written, from `out_pos` on.
    out: Vec<u8>,
    out_pos: usize,
    /// From the hello frame: this session writes stdin.
    writes_stdin: bool,
    /// Detaching: write what is queued, then close.
    closing: bool,
}

impl Session {
    fn queued(&self) -> usize {
        self.out.len() - self.out_pos
    }

    /// Writes what it can without blocking; false if the connection failed.
    fn flush(&mut self) -> bool {
        while self.out_pos < self.out.len() {
            match self.stream.write(&self.out[self.out_pos..]) {
                Ok(0) => return false,
                Ok(n) => self.out_pos += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return false,
            }
        }
        if self.out_pos == self.out.len() {
            self.out.clear();
            self.out_pos = 0;
        }
        true
    }
}

/// The shim's attach endpoint: the listening socket, the attached sessions, and the
/// container's stdin.
pub struct AttachServer {
    listener: Option<UnixListener>,
    /// Where the socket was bound (removed when the server goes).
    socket: PathBuf,
    sessions: Vec<Session>,
    next_id: u64,
    mode: StdinMode,
    stdin_once: bool,
    /// The container's stdin (the pipe's write side or a pty master), nonblocking; gone
    /// once closed.
    stdin: Option<OwnedFd>,
    stdin_pending: Vec<u8>,
    /// Close stdin once what is pending is written (`stdinOnce`).
    close_stdin_when_flushed: bool,
    /// The pty master, for resizes.
    terminal: Option<OwnedFd>,
}

fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    let flags = fcntl(fd, FcntlArg::F_GETFL).map_err(io::Error::from)?;
    let flags = OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK;
    fcntl(fd, FcntlArg::F_SETFL(flags)).map_err(io::Error::from)?;
    Ok(())
}

impl AttachServer {
    /// Binds `dir/attach.sock` (only root may connect). `stdin` is the container's stdin
    /// as the shim keeps it (see [`StdinMode`]), `terminal` the pty master of a tty
    /// container.
    pub fn bind(
        dir: &Path,
        mode: StdinMode,
        stdin: Option<OwnedFd>,
        stdin_once: bool,
        terminal: Option<OwnedFd>,
    ) -> io::Result<Self> {
        let socket = dir.join(ATTACH_SOCKET);
        let dir_file = std::fs::File::open(dir)?;
        let via = path_via_fd(&dir_file, ATTACH_SOCKET);
        match std::fs::remove_file(&via) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let listener = UnixListener::bind(&via)?;
        std::fs::set_permissions(&via, std::fs::Permissions::from_mode(0o600))?;
        listener.set_nonblocking(true)?;
        if let Some(fd) = &stdin {
            set_nonblocking(fd.as_raw_fd())?;
        }
        let stdin = if mode == StdinMode::None { None } else { stdin };
        Ok(AttachServer {
            listener: Some(listener),
            socket,
            sessions: Vec::new(),
            next_id: 0,
            mode,
            stdin_once,
            stdin,
            stdin_pending: Vec::new(),
            close_stdin_when_flushed: false,
            terminal,
        })
    }

    /// The descriptors to poll, with their events and what they are.
    pub fn interests(&self) -> Vec<(RawFd, i16, Interest)> {
        let mut out = Vec::with_capacity(self.sessions.len() + 2);
        if let Some(l) = &self.listener {
            out.push((l.as_raw_fd(), libc::POLLIN, Interest::Listener));
        }
        let stdin_full = self.stdin_pending.len() >= MAX_QUEUED_STDIN;
        for s in &self.sessions {
            let mut events = 0;
            if !stdin_full && !s.closing {
                events |= libc::POLLIN;
            }
            if s.queued() > 0 {
                events |= libc::POLLOUT;
            }
            out.push((s.stream.as_raw_fd(), events, Interest::Session(s.id)));
        }
        if let Some(fd) = &self.stdin {
            if !self.stdin_pending.is_empty() {
                out.push((fd.as_raw_fd(), libc::POLLOUT, Interest::Stdin));
            }
        }
        out
    }

    /// Handles a descriptor `poll` reported with `revents`.
    pub fn ready(&mut self, interest: Interest, revents: i16) {
        match interest {
            Interest::Listener => self.accept_all(),
            Interest::Stdin => self.flush_stdin(),
            Interest::Session(id) => {
                let Some(i) = self.sessions.iter().position(|s| s.id == id) else {
                    return;
                };
                if revents & libc::POLLOUT != 0 && !self.sessions[i].flush() {
                    self.drop_session(i, "writing failed");
                    return;
                }
                if revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0 {
                    self.read_session(id);
                }
                if let Some(i) = self.sessions.iter().position(|s| s.id == id) {
                    if self.sessions[i].closing && self.sessions[i].queued() == 0 {
                        self.drop_session(i, "detached");
                    }
                }
            }
        }
    }

    fn accept_all(&mut self) {
        let Some(listener) = &self.listener else {
            return;
        };
        loop {
            match listener.accept() {
                Ok((stream, _)) => {
                    if self.sessions.len() >= MAX_SESSIONS {
                        tracing::warn!("too many attach sessions; refusing one");
                        continue;
                    }
                    if let Err(e) = stream.set_nonblocking(true) {
                        tracing::warn!(error = %e, "attach session");
                        continue;
                    }
                    let id = self.next_id;
                    self.next_id += 1;
                    tracing::info!(session = id, "attach session connected");
                    self.sessions.push(Session {
                        id,
                        stream,
                        decoder: FrameDecoder::new(),
                        out: Vec::new(),
                        out_pos: 0,
                        writes_stdin: false,
                        closing: false,
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    tracing::warn!(error = %e, "accepting an attach session");
                    return;
                }
            }
        }
    }

    fn read_session(&mut self, id: u64) {
        let mut buf = [0u8; READ_CHUNK];
        let Some(i) = self.sessions.iter().position(|s| s.id == id) else {
            return;
        };
        let n = loop {
            match self.sessions[i].stream.read(&mut buf) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(_) => break 0,
            }
        };
        if n == 0 {
            self.drop_session(i, "disconnected");
            return;
        }
        self.sessions[i].decoder.push(&buf[..n]);
        loop {
            let Some(i) = self.sessions.iter().position(|s| s.id == id) else {
                return;
            };
            let frame = match self.sessions[i].decoder.next_frame() {
                Ok(Some(frame)) => frame,
                Ok(None) => return,
                Err(e) => {
                    tracing::warn!(session = id, error = %e, "bad attach frame");
                    self.drop_session(i, "protocol error");
                    return;
                }
            };
            self.handle_frame(i, frame);
        }
    }

    fn handle_frame(&mut self, i: usize, frame: Frame) {
        match frame {
            Frame::Hello { stdin } => {
                self.sessions[i].writes_stdin = stdin;
            }
            Frame::Stdin(data) => {
                if self.sessions[i].writes_stdin
                    && self.stdin.is_some()
                    && !self.close_stdin_when_flushed
                {
                    self.stdin_pending.extend_from_slice(&data);
                    self.flush_stdin();
                }
            }
            Frame::CloseStdin => {
                if !self.sessions[i].writes_stdin {
                    return;
                }
                self.sessions[i].writes_stdin = false;
                if self.closes_stdin_once() {
                    // The container reads to the end of its input, output keeps coming.
                    self.close_stdin();
                } else {
                    // Without stdinOnce (or with a terminal, which cannot be closed),
                    // the session ends here and stdin stays for the next one.
                    self.sessions[i].closing = true;
                }
            }
            Frame::Resize { cols, rows } => {
                if let Some(master) = &self.terminal {
                    let size = rustix::termios::Winsize {
                        ws_row: rows,
                        ws_col: cols,
                        ws_xpixel: 0,
                        ws_ypixel: 0,
                    };
                    if let Err(e) = rustix::termios::tcsetwinsize(master, size) {
                        tracing::debug!(error = %e, "resizing the terminal");
                    }
                }
            }
            Frame::Stdout(_) | Frame::Stderr(_) | Frame::Exit(_) => {
                tracing::warn!(session = self.sessions[i].id, "attach client sent output");
                self.drop_session(i, "protocol error");
            }
        }
    }

    fn drop_session(&mut self, i: usize, why: &str) {
        let session = self.sessions.remove(i);
        tracing::info!(session = session.id, why, "attach session ended");
        if session.writes_stdin && self.closes_stdin_once() {
            // stdinOnce: the first session that wrote stdin has gone.
            self.close_stdin();
        }
    }

    /// Whether a stdin-writing session that is done closes the container's stdin.
    fn closes_stdin_once(&self) -> bool {
        // containerd leaves a terminal open (kubectl would otherwise lose it on every
        // detach); so does this.
        self.stdin_once && self.mode == StdinMode::Pipe
    }

    /// Closes the container's stdin once what is pending has been written.
    fn close_stdin(&mut self) {
        if self.stdin.is_none() {
            return;
        }
        self.close_stdin_when_flushed = true;
        self.flush_stdin();
    }

    fn flush_stdin(&mut self) {
        let Some(fd) = &self.stdin else {
            self.stdin_pending.clear();
            return;
        };
        let mut written = 0;
        let mut failed = false;
        while written < self.stdin_pending.len() {
            match nix::unistd::write(fd, &self.stdin_pending[written..]) {
                Ok(n) => written += n,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(nix::errno::Errno::EAGAIN) => break,
                Err(e) => {
                    // EPIPE: the container closed its stdin.
                    tracing::debug!(error = %e, "writing the container's stdin");
                    failed = true;
                    break;
                }
            }
        }
        self.stdin_pending.drain(..written);
        if failed || (self.close_stdin_when_flushed && self.stdin_pending.is_empty()) {
            tracing::info!("container stdin closed");
            self.stdin = None;
            self.stdin_pending.clear();
        }
    }

    /// Sends container output to every session.
    pub fn output(&mut self, stream: Stream, data: &[u8]) {
        if data.is_empty() || self.sessions.is_empty() {
            return;
        }
        let kind = match stream {
            Stream::Stdout => T_STDOUT,
            Stream::Stderr => T_STDERR,
        };
        let mut i = 0;
        while i < self.sessions.len() {
            let session = &mut self.sessions[i];
            encode_data(&mut session.out, kind, data);
            if !session.flush() {
                self.drop_session(i, "writing failed");
                continue;
            }
            if self.sessions[i].queued() > MAX_QUEUED_OUTPUT {
                tracing::warn!(
                    session = self.sessions[i].id,
                    "attach session does not keep up; dropping it"
                );
                self.drop_session(i, "too slow");
                continue;
            }
            i += 1;
        }
    }

    /// The container has exited: takes in connections still queued, stops listening,
    /// tells every session the exit code and closes them.
    pub fn finish(&mut self, exit_code: i32) {
        self.accept_all();
        self.listener = None;
        let _ = std::fs::remove_file(&self.socket);
        self.stdin = None;
        self.stdin_pending.clear();
        let exit = Frame::Exit(exit_code).to_bytes();
        for mut session in self.sessions.drain(..) {
            session.out.extend_from_slice(&exit);
            let pending = &session.out[session.out_pos..];
            let sent = session.stream.set_nonblocking(false).and_then(|()| {
                session
                    .stream
                    .set_write_timeout(Some(FINAL_WRITE_TIMEOUT))?;
                session.stream.write_all(pending)
            });
            if let Err(e) = sent {
                tracing::debug!(session = session.id, error = %e, "final attach output");
            }
            let _ = session.stream.shutdown(std::net::Shutdown::Both);
        }
    }
}

impl Drop for AttachServer {
    fn drop(&mut self) {
        if self.listener.take().is_some() {
            let _ = std::fs::remove_file(&self.socket);
        }
    }
}

// ---------------------------------------------------------------------------------------
// The kubelet's side.

/// Connects to the shim of the container in `dir` and wires the session into an
/// [`ExecSession`]: `stdin` when the client writes stdin and the container has one,
/// `stdout` (everything with a tty), `stderr` (without a tty), `resize` with a tty.
/// `exit` resolves to the container's exit code when it exits during the session; when
/// the session ends first (detached, or the shim went away) it resolves to the exit
/// code on record if the container has exited, else its sender is dropped.
pub(super) async fn open_session(
    dir: &Path,
    container_id: &str,
    stdin: bool,
    container_stdin: bool,
    container_tty: bool,
) -> Result<ExecSession> {
    let op_err = |message: String| RuntimeError::Operation {
        op: "attach",
        id: container_id.to_string(),
        message,
    };
    let dir_file = std::fs::File::open(dir)
        .map_err(|e| RuntimeError::io(format!("opening {}", dir.display()), e))?;
    let stream = tokio::net::UnixStream::connect(path_via_fd(&dir_file, ATTACH_SOCKET))
        .await
        .map_err(|e| op_err(format!("connecting to the container's shim: {e}")))?;
    drop(dir_file);
    let (mut rd, mut wr) = stream.into_split();
    let writes_stdin = stdin && container_stdin;
    wr.write_all(
        &Frame::Hello {
            stdin: writes_stdin,
        }
        .to_bytes(),
    )
    .await
    .map_err(|e| op_err(format!("greeting the container's shim: {e}")))?;

    let (stdout_session, stdout_feed) = tokio::io::duplex(64 * 1024);
    let (stderr_session, stderr_feed) = if container_tty {
        (None, None)
    } else {
        let (a, b) = tokio::io::duplex(64 * 1024);
        (Some(a), Some(b))
    };
    let (stdin_session, stdin_feed) = if writes_stdin {
        let (a, b) = tokio::io::duplex(64 * 1024);
        (Some(a), Some(b))
    } else {
        (None, None)
    };
    let (resize_tx, resize_rx) = if container_tty {
        let (tx, rx) = tokio::sync::mpsc::channel::<(u16, u16)>(8);
        (Some(tx), Some(rx))
    } else {
        (None, None)
    };
    let (exit_tx, exit_rx) = tokio::sync::oneshot::channel();
    let done = CancellationToken::new();

    // Client input → frames.
    tokio::spawn({
        let done = done.clone();
        async move {
            let mut stdin = stdin_feed;
            let mut resize = resize_rx;
            let mut buf = vec![0u8; READ_CHUNK];
            loop {
                let frame = tokio::select! {
                    _ = done.cancelled() => break,
                    n = async { match stdin.as_mut() { Some(s) => s.read(&mut buf).await, None => Ok(0) } }, if stdin.is_some() => match n {
                        Ok(n) if n > 0 => Frame::Stdin(buf[..n].to_vec()),
                        _ => {
                            stdin = None;
                            Frame::CloseStdin
                        }
                    },
                    size = async { match resize.as_mut() { Some(r) => r.recv().await, None => None } }, if resize.is_some() => match size {
                        Some((cols, rows)) => Frame::Resize { cols, rows },
                        None => {
                            resize = None;
                            continue;
                        }
                    },
                };
                if wr.write_all(&frame.to_bytes()).await.is_err() {
                    break;
                }
            }
            // Dropping `wr` shuts the connection's write side: the shim sees the
            // session leave.
        }
    });

    // Frames → session output and exit code.
    let exit_file = dir.join(EXIT_FILE);
    tokio::spawn(async move {
        let mut exit_tx = exit_tx;
        let mut stdout = Some(stdout_feed);
        let mut stderr = stderr_feed;
        let mut decoder = FrameDecoder::new();
        let mut code = None;
        let mut buf = vec![0u8; 64 * 1024];
        'read: loop {
            let n = tokio::select! {
                _ = exit_tx.closed() => break,
                n = rd.read(&mut buf) => match n {
                    Ok(n) if n > 0 => n,
                    _ => break,
                },
            };
            decoder.push(&buf[..n]);
            loop {
                match decoder.next_frame() {
                    Ok(Some(Frame::Stdout(data))) => write_or_forget(&mut stdout, &data).await,
                    Ok(Some(Frame::Stderr(data))) => {
                        if stderr.is_some() {
                            write_or_forget(&mut stderr, &data).await;
                        } else {
                            write_or_forget(&mut stdout, &data).await;
                        }
                    }
                    Ok(Some(Frame::Exit(c))) => code = Some(c),
                    Ok(Some(other)) => {
                        tracing::debug!(frame = ?other, "unexpected frame from the shim");
                    }
                    Ok(None) => break,
                    Err(e) => {
                        tracing::warn!(error = %e, "bad frame from the shim");
                        break 'read;
                    }
                }
            }
        }
        drop(rd);
        done.cancel();
        // The session's readers see the end of their streams.
        drop(stdout.take());
        drop(stderr.take());
        if code.is_none() {
            code = read_json::<ExitRecord>(&exit_file)
                .ok()
                .flatten()
                .map(|e| e.exit_code);
        }
        if let Some(code) = code {
            let _ = exit_tx.send(code);
        }
    });

    Ok(ExecSession {
        stdin: stdin_session.map(|s| Box::new(s) as Box<dyn tokio::io::AsyncWrite + Send + Unpin>),
        stdout: Some(Box::new(stdout_session)),
        stderr: stderr_session.map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Send + Unpin>),
        exit: exit_rx,
        resize: resize_tx,
    })
}

/// Writes to a session stream; a stream the session dropped is forgotten (its output is
/// not wanted), the others keep going.
async fn write_or_forget(stream: &mut Option<tokio::io::DuplexStream>, data: &[u8]) {
    if let Some(s) = stream.as_mut() {
        if s.write_all(data).await.is_err() {
            *stream = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(bytes: &[u8], step: usize) -> Result<Vec<Frame>, FrameError> {
        let mut decoder = FrameDecoder::new();
        let mut frames = Vec::new();
        for chunk in bytes.chunks(step.max(1)) {
            decoder.push(chunk);
            while let Some(frame) = decoder.next_frame()? {
                frames.push(frame);
            }
        }
        Ok(frames)
    }

    #[test]
    fn frames_round_trip_whatever_the_read_sizes() {
        let frames = vec![
            Frame::Hello { stdin: true },
            Frame::Hello { stdin: false },
            Frame::Stdin(b"echo hi\n".to_vec()),
            Frame::Stdin(Vec::new()),
            Frame::CloseStdin,
            Frame::Resize { cols: 80, rows: 24 },
            Frame::Stdout(b"hi\r\n".to_vec()),
            Frame::Stderr(vec![0, 255, 10]),
            Frame::Exit(-1),
            Frame::Exit(137),
        ];
        let mut bytes = Vec::new();
        for f in &frames {
            f.encode(&mut bytes);
        }
        for step in [1, 2, 5, 7, bytes.len()] {
            assert_eq!(decode_all(&bytes, step), Ok(frames.clone()), "step {step}");
        }
    }

    #[test]
    fn the_wire_format_is_type_length_payload() {
        assert_eq!(
            Frame::Hello { stdin: true }.to_bytes(),
            vec![0x01, 0, 0, 0, 1, 1]
        );
        assert_eq!(Frame::CloseStdin.to_bytes(), vec![0x03, 0, 0, 0, 0]);
        assert_eq!(
            Frame::Resize {
                cols: 0x0102,
                rows: 0x0304
            }
            .to_bytes(),
            vec![0x04, 0, 0, 0, 4, 1, 2, 3, 4]
        );
        assert_eq!(
            Frame::Stdout(b"ok".to_vec()).to_bytes(),
            vec![0x11, 0, 0, 0, 2, b'o', b'k']
        );
        assert_eq!(
            Frame::Exit(42).to_bytes(),
            vec![0x13, 0, 0, 0, 4, 0, 0, 0, 42]
        );
    }

    #[test]
    fn large_output_is_cut_into_frames() {
        let data = vec![7u8; MAX_PAYLOAD * 2 + 3];
        let bytes = Frame::Stderr(data.clone()).to_bytes();
        let frames = decode_all(&bytes, 64 * 1024).expect("decode");
        assert_eq!(frames.len(), 3);
        let joined: Vec<u8> = frames
            .into_iter()
            .flat_map(|f| match f {
                Frame::Stderr(d) => d,
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        assert_eq!(joined, data);
    }

    #[test]
    fn malformed_streams_are_refused() {
        let mut d = FrameDecoder::new();
        d.push(&[0x7f, 0, 0, 0, 0]);
        assert_eq!(d.next_frame(), Err(FrameError::UnknownType(0x7f)));

        let mut d = FrameDecoder::new();
        d.push(&[T_STDIN, 0xff, 0xff, 0xff, 0xff]);
        assert_eq!(d.next_frame(), Err(FrameError::TooLarge(0xffff_ffff)));

        let mut d = FrameDecoder::new();
        d.push(&[T_RESIZE, 0, 0, 0, 3, 1, 2, 3]);
        assert_eq!(
            d.next_frame(),
            Err(FrameError::BadLength {
                kind: T_RESIZE,
                len: 3
            })
        );

        // An incomplete frame waits for the rest.
        let mut d = FrameDecoder::new();
        d.push(&[T_EXIT, 0, 0, 0, 4, 0, 0]);
        assert_eq!(d.next_frame(), Ok(None));
        d.push(&[0, 9]);
        assert_eq!(d.next_frame(), Ok(Some(Frame::Exit(9))));
        assert_eq!(d.next_frame(), Ok(None));
    }

    /// Lets the server handle whatever is pending, as the shim's poll loop would.
    fn drive(server: &mut AttachServer) {
        for _ in 0..20 {
            for (_, events, interest) in server.interests() {
                server.ready(interest, events | libc::POLLIN);
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    struct Client {
        stream: UnixStream,
        decoder: FrameDecoder,
    }

    impl Client {
        fn connect(dir: &Path, stdin: bool) -> Client {
            let mut stream = UnixStream::connect(dir.join(ATTACH_SOCKET)).expect("connect");
            stream
                .set_read_timeout(Some(Duration::from_millis(50)))
                .expect("timeout");
            stream
                .write_all(&Frame::Hello { stdin }.to_bytes())
                .expect("hello");
            Client {
                stream,
                decoder: FrameDecoder::new(),
            }
        }

        fn send(&mut self, frame: Frame) {
            self.stream.write_all(&frame.to_bytes()).expect("send");
        }

        /// The frames that have arrived, and whether the shim closed the connection.
        fn receive(&mut self) -> (Vec<Frame>, bool) {
            let mut buf = [0u8; 4096];
            let mut frames = Vec::new();
            let closed = loop {
                match self.stream.read(&mut buf) {
                    Ok(0) => break true,
                    Ok(n) => self.decoder.push(&buf[..n]),
                    Err(_) => break false,
                }
            };
            while let Some(f) = self.decoder.next_frame().expect("frame") {
                frames.push(f);
            }
            (frames, closed)
        }
    }

    fn stdin_pipe() -> (std::fs::File, OwnedFd) {
        let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).expect("pipe");
        set_nonblocking(r.as_raw_fd()).expect("nonblocking");
        (std::fs::File::from(r), w)
    }

    /// What the container would read from its stdin now: bytes, or None at its end.
    fn container_reads(stdin: &mut std::fs::File) -> Option<Vec<u8>> {
        let mut buf = [0u8; 4096];
        match stdin.read(&mut buf) {
            Ok(0) => None,
            Ok(n) => Some(buf[..n].to_vec()),
            Err(_) => Some(Vec::new()),
        }
    }

    #[test]
    fn stdin_once_closes_stdin_when_the_first_writer_is_done() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut container_stdin, keep) = stdin_pipe();
        let mut server =
            AttachServer::bind(dir.path(), StdinMode::Pipe, Some(keep), true, None).expect("bind");
        let mut watcher = Client::connect(dir.path(), false);
        let mut writer = Client::connect(dir.path(), true);
        drive(&mut server);

        // The watcher cannot write stdin, the writer can.
        watcher.send(Frame::Stdin(b"ignored\n".to_vec()));
        writer.send(Frame::Stdin(b"hello\n".to_vec()));
        drive(&mut server);
        assert_eq!(
            container_reads(&mut container_stdin),
            Some(b"hello\n".to_vec())
        );

        // Output reaches every session, streams kept apart.
        server.output(Stream::Stdout, b"out");
        server.output(Stream::Stderr, b"err");
        drive(&mut server);
        for client in [&mut watcher, &mut writer] {
            let (frames, closed) = client.receive();
            assert_eq!(
                frames,
                vec![
                    Frame::Stdout(b"out".to_vec()),
                    Frame::Stderr(b"err".to_vec())
                ]
            );
            assert!(!closed);
        }

        // Closing the writer's stdin closes the container's: it reads to the end.
        writer.send(Frame::Stdin(b"last\n".to_vec()));
        writer.send(Frame::CloseStdin);
        drive(&mut server);
        assert_eq!(
            container_reads(&mut container_stdin),
            Some(b"last\n".to_vec())
        );
        assert_eq!(container_reads(&mut container_stdin), None);
        // The session stays for the output, and a later one can attach.
        server.output(Stream::Stdout, b"bye");
        let mut late = Client::connect(dir.path(), true);
        drive(&mut server);
        late.send(Frame::Stdin(b"too late\n".to_vec()));
        drive(&mut server);
        assert_eq!(
            writer.receive(),
            (vec![Frame::Stdout(b"bye".to_vec())], false)
        );

        server.finish(3);
        assert_eq!(
            watcher.receive(),
            (vec![Frame::Stdout(b"bye".to_vec()), Frame::Exit(3)], true)
        );
        assert_eq!(writer.receive(), (vec![Frame::Exit(3)], true));
        assert_eq!(late.receive(), (vec![Frame::Exit(3)], true));
        assert!(!dir.path().join(ATTACH_SOCKET).exists());
    }

    #[test]
    fn without_stdin_once_closing_stdin_detaches_the_session() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut container_stdin, keep) = stdin_pipe();
        let mut server =
            AttachServer::bind(dir.path(), StdinMode::Pipe, Some(keep), false, None).expect("bind");
        let mut first = Client::connect(dir.path(), true);
        drive(&mut server);
        first.send(Frame::Stdin(b"one\n".to_vec()));
        first.send(Frame::CloseStdin);
        drive(&mut server);
        assert_eq!(
            container_reads(&mut container_stdin),
            Some(b"one\n".to_vec())
        );
        assert_eq!(first.receive(), (vec![], true), "the session ended");

        // stdin stays open for the next session, which may also just leave.
        let mut second = Client::connect(dir.path(), true);
        drive(&mut server);
        second.send(Frame::Stdin(b"two\n".to_vec()));
        drive(&mut server);
        assert_eq!(
            container_reads(&mut container_stdin),
            Some(b"two\n".to_vec())
        );
        drop(second);
        drive(&mut server);
        assert_eq!(
            container_reads(&mut container_stdin),
            Some(Vec::new()),
            "still open"
        );
        let mut third = Client::connect(dir.path(), true);
        drive(&mut server);
        third.send(Frame::Stdin(b"three\n".to_vec()));
        drive(&mut server);
        assert_eq!(
            container_reads(&mut container_stdin),
            Some(b"three\n".to_vec())
        );
        drop(server);
        assert!(!dir.path().join(ATTACH_SOCKET).exists());
    }

    #[test]
    fn a_stdin_once_writer_that_leaves_closes_stdin() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut container_stdin, keep) = stdin_pipe();
        let mut server =
            AttachServer::bind(dir.path(), StdinMode::Pipe, Some(keep), true, None).expect("bind");
        let mut writer = Client::connect(dir.path(), true);
        drive(&mut server);
        writer.send(Frame::Stdin(b"x".to_vec()));
        drop(writer);
        drive(&mut server);
        assert_eq!(container_reads(&mut container_stdin), Some(b"x".to_vec()));
        assert_eq!(container_reads(&mut container_stdin), None);
    }

    #[test]
    fn a_terminal_keeps_its_stdin_despite_stdin_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        // A pipe stands in for the pty master: what matters is that it is never closed.
        let (mut container_stdin, keep) = stdin_pipe();
        let mut server =
            AttachServer::bind(dir.path(), StdinMode::Tty, Some(keep), true, None).expect("bind");
        let mut first = Client::connect(dir.path(), true);
        drive(&mut server);
        first.send(Frame::Stdin(b"ls\r".to_vec()));
        first.send(Frame::CloseStdin);
        drive(&mut server);
        assert_eq!(
            container_reads(&mut container_stdin),
            Some(b"ls\r".to_vec())
        );
        assert_eq!(first.receive(), (vec![], true), "the session ended");
        let mut second = Client::connect(dir.path(), true);
        drive(&mut server);
        second.send(Frame::Stdin(b"exit\r".to_vec()));
        drop(second);
        drive(&mut server);
        assert_eq!(
            container_reads(&mut container_stdin),
            Some(b"exit\r".to_vec())
        );
        assert_eq!(
            container_reads(&mut container_stdin),
            Some(Vec::new()),
            "still open"
        );
    }
}
