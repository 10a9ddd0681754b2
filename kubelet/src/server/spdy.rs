//! SPDY/3.1, the framing `kubectl port-forward` (and `kubectl exec` before v1.30) speaks
//! after an HTTP upgrade: frame encoding and decoding with zlib-compressed header blocks,
//! and a server-side session that accepts the client's streams.
//!
//! Kubernetes uses a small part of SPDY: the client opens every stream (SYN_STREAM with
//! headers such as `streamtype: data`), the server accepts each with an empty SYN_REPLY,
//! both sides send DATA and half-close with the FIN flag, and PINGs keep the connection
//! alive. Flow control (WINDOW_UPDATE, SETTINGS) is not enforced by the Go client
//! (moby/spdystream), so this session ignores it too.

use std::collections::HashMap;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, trace};

/// The only SPDY version Kubernetes speaks.
pub const VERSION: u16 = 3;
/// The `Upgrade` token of a SPDY/3.1 connection upgrade.
pub const UPGRADE_TOKEN: &str = "SPDY/3.1";

pub const FLAG_FIN: u8 = 0x01;
pub const FLAG_UNIDIRECTIONAL: u8 = 0x02;

const TYPE_SYN_STREAM: u16 = 1;
const TYPE_SYN_REPLY: u16 = 2;
const TYPE_RST_STREAM: u16 = 3;
const TYPE_SETTINGS: u16 = 4;
const TYPE_PING: u16 = 6;
const TYPE_GOAWAY: u16 = 7;
const TYPE_HEADERS: u16 = 8;
const TYPE_WINDOW_UPDATE: u16 = 9;

/// RST_STREAM status codes used here.
pub const RST_PROTOCOL_ERROR: u32 = 1;
pub const RST_REFUSED_STREAM: u32 = 3;
pub const RST_CANCEL: u32 = 5;

/// The largest DATA payload this side sends in one frame.
const MAX_DATA_CHUNK: usize = 32 * 1024;
/// The largest frame length SPDY can express (24 bits).
const MAX_FRAME_LENGTH: usize = 0x00ff_ffff;
/// A decompressed header block larger than this is refused (a zlib bomb guard).
const MAX_HEADER_BLOCK: usize = 1 << 20;
/// How long a session waits for the client to close after this side's GOAWAY.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(10);

/// The zlib dictionary SPDY/3 header blocks are compressed with (SPDY/3 spec, 2.6.10.1).
pub const HEADER_DICTIONARY: &[u8] = b"\
    \x00\x00\x00\x07options\x00\x00\x00\x04head\x00\x00\x00\x04post\x00\x00\x00\x03put\x00\
    \x00\x00\x06delete\x00\x00\x00\x05trace\x00\x00\x00\x06accept\x00\x00\x00\x0eaccept-c\
    harset\x00\x00\x00\x0faccept-encoding\x00\x00\x00\x0faccept-language\x00\x00\x00\x0da\
    ccept-ranges\x00\x00\x00\x03age\x00\x00\x00\x05allow\x00\x00\x00\x0dauthorization\x00\
    \x00\x00\x0dcache-control\x00\x00\x00\x0aconnection\x00\x00\x00\x0ccontent-base\x00\x00\
    \x00\x10content-encoding\x00\x00\x00\x10content-language\x00\x00\x00\x0econtent-lengt\
    h\x00\x00\x00\x10content-location\x00\x00\x00\x0bcontent-md5\x00\x00\x00\x0dcontent-r\
    ange\x00\x00\x00\x0ccontent-type\x00\x00\x00\x04date\x00\x00\x00\x04etag\x00\x00\x00\x06\
    expect\x00\x00\x00\x07expires\x00\x00\x00\x04from\x00\x00\x00\x04host\x00\x00\x00\x08\
    if-match\x00\x00\x00\x11if-modified-since\x00\x00\x00\x0dif-none-match\x00\x00\x00\x08\
    if-range\x00\x00\x00\x13if-unmodified-since\x00\x00\x00\x0dlast-modified\x00\x00\x00\x08\
    location\x00\x00\x00\x0cmax-forwards\x00\x00\x00\x06pragma\x00\x00\x00\x12proxy-authe\
    nticate\x00\x00\x00\x13proxy-authorization\x00\x00\x00\x05range\x00\x00\x00\x07refere\
    r\x00\x00\x00\x0bretry-after\x00\x00\x00\x06server\x00\x00\x00\x02te\x00\x00\x00\x07t\
    railer\x00\x00\x00\x11transfer-encoding\x00\x00\x00\x07upgrade\x00\x00\x00\x0auser-ag\
    ent\x00\x00\x00\x04vary\x00\x00\x00\x03via\x00\x00\x00\x07warning\x00\x00\x00\x10www-\
    authenticate\x00\x00\x00\x06method\x00\x00\x00\x03get\x00\x00\x00\x06status\x00\x00\x00\
    \x06200\x20OK\x00\x00\x00\x07version\x00\x00\x00\x08HTTP/1.1\x00\x00\x00\x03url\x00\x00\
    \x00\x06public\x00\x00\x00\x0aset-cookie\x00\x00\x00\x0akeep-alive\x00\x00\x00\x06ori\
    gin1001012012022052063003023033043053063074024054064074084094104114124134144154164175\
    02504505203\x20Non-Authoritative\x20Information204\x20No\x20Content301\x20Moved\x20Pe\
    rmanently400\x20Bad\x20Request401\x20Unauthorized403\x20Forbidden404\x20Not\x20Found5\
    00\x20Internal\x20Server\x20Error501\x20Not\x20Implemented503\x20Service\x20Unavailab\
    leJan\x20Feb\x20Mar\x20Apr\x20May\x20Jun\x20Jul\x20Aug\x20Sept\x20Oct\x20Nov\x20Dec\x20\
    00:00:00\x20Mon,\x20Tue,\x20Wed,\x20Thu,\x20Fri,\x20Sat,\x20Sun,\x20GMTchunked,text/h\
    tml,image/png,image/jpg,image/gif,application/xml,application/xhtml+xml,text/plain,te\
    xt/javascript,publicprivatemax-age=gzip,deflate,sdchcharset=utf-8charset=iso-8859-1,u\
    tf-,*,enq=0.";

/// What reading, writing or decoding SPDY failed at.
#[derive(Debug, thiserror::Error)]
pub enum SpdyError {
    #[error("reading a SPDY frame failed")]
    Read(#[source] io::Error),
    #[error("writing a SPDY frame failed")]
    Write(#[source] io::Error),
    #[error("unsupported SPDY version {0}")]
    Version(u16),
    #[error("malformed {frame} frame: {reason}")]
    Malformed { frame: &'static str, reason: String },
    #[error("decompressing a header block failed: {0}")]
    Decompress(String),
    #[error("compressing a header block failed: {0}")]
    Compress(String),
    #[error("a {0}-byte frame is larger than SPDY allows")]
    TooLarge(usize),
    #[error("stream {0} was reset")]
    Reset(u32),
    #[error("the SPDY session is closed")]
    Closed,
}

/// Header name/value pairs; names are lowercase on the wire, a name may repeat.
pub type Headers = Vec<(String, String)>;

/// One SPDY/3.1 frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    SynStream {
        stream_id: u32,
        associated_to: u32,
        priority: u8,
        flags: u8,
        headers: Headers,
    },
    SynReply {
        stream_id: u32,
        flags: u8,
        headers: Headers,
    },
    RstStream {
        stream_id: u32,
        status: u32,
    },
    /// (flags, id, value) triples.
    Settings {
        flags: u8,
        entries: Vec<(u8, u32, u32)>,
    },
    Ping {
        id: u32,
    },
    GoAway {
        last_good_stream_id: u32,
        status: u32,
    },
    Headers {
        stream_id: u32,
        flags: u8,
        headers: Headers,
    },
    WindowUpdate {
        stream_id: u32,
        delta: u32,
    },
    Data {
        stream_id: u32,
        flags: u8,
        data: Bytes,
    },
    /// A control frame of a type SPDY/3.1 does not define (ignored, as the spec asks).
    Unknown {
        frame_type: u16,
    },
}

/// The compressing half of a connection's header-block zlib stream (one per direction,
/// shared by every frame written).
pub struct HeaderCompressor(Compress);

impl HeaderCompressor {
    pub fn new() -> Result<Self, SpdyError> {
        let mut inner = Compress::new(Compression::best(), true);
        inner.set_dictionary(HEADER_DICTIONARY).map_err(|e| SpdyError::Compress(e.to_string()))?;
        Ok(HeaderCompressor(inner))
    }

    /// Compresses one header block and sync-flushes, so the peer can decode it alone.
    pub fn compress(&mut self, block: &[u8]) -> Result<Vec<u8>, SpdyError> {
        let mut out = Vec::with_capacity(block.len() / 2 + 64);
        let start = self.0.total_in();
        loop {
            if out.capacity() - out.len() < 64 {
                out.reserve(256 + block.len());
            }
            let consumed = usize::try_from(self.0.total_in() - start).map_err(|e| SpdyError::Compress(e.to_string()))?;
            self.0.compress_vec(&block[consumed..], &mut out, FlushCompress::Sync).map_err(|e| SpdyError::Compress(e.to_string()))?;
            let consumed = usize::try_from(self.0.total_in() - start).map_err(|e| SpdyError::Compress(e.to_string()))?;
            if consumed == block.len() && out.len() < out.capacity() {
                return Ok(out);
            }
        }
    }
}

/// The decompressing half of a connection's header-block zlib stream.
pub struct HeaderDecompressor(Decompress);

impl HeaderDecompressor {
    pub fn new() -> Self {
        HeaderDecompressor(Decompress::new(true))
    }

    /// Decompresses one header block (the peer sync-flushed after it).
    pub fn decompress(&mut self, input: &[u8]) -> Result<Vec<u8>, SpdyError> {
        let mut out = Vec::with_capacity(input.len() * 4 + 256);
        let start_in = self.0.total_in();
        loop {
            if out.len() == out.capacity() {
                if out.len() >= MAX_HEADER_BLOCK {
                    return Err(SpdyError::Decompress(format!("header block larger than {MAX_HEADER_BLOCK} bytes")));
                }
                out.reserve(out.capacity().max(1024));
            }
            let before = (self.0.total_in(), self.0.total_out());
            let consumed = usize::try_from(self.0.total_in() - start_in).map_err(|e| SpdyError::Decompress(e.to_string()))?;
            match self.0.decompress_vec(&input[consumed..], &mut out, FlushDecompress::Sync) {
                Ok(Status::StreamEnd) => return Ok(out),
                Ok(_) => {}
                Err(e) if e.needs_dictionary().is_some() => {
                    self.0.set_dictionary(HEADER_DICTIONARY).map_err(|e| SpdyError::Decompress(e.to_string()))?;
                    continue;
                }
                Err(e) => return Err(SpdyError::Decompress(e.to_string())),
            }
            let consumed = usize::try_from(self.0.total_in() - start_in).map_err(|e| SpdyError::Decompress(e.to_string()))?;
            let progressed = before != (self.0.total_in(), self.0.total_out());
            if consumed == input.len() && (out.len() < out.capacity() || !progressed) {
                return Ok(out);
            }
            if !progressed && out.len() < out.capacity() {
                return Err(SpdyError::Decompress("no progress decoding the header block".into()));
            }
        }
    }
}

impl Default for HeaderDecompressor {
    fn default() -> Self {
        Self::new()
    }
}

/// Encodes an uncompressed header block: a count, then length-prefixed names and values,
/// the values of a repeated name joined by NUL as SPDY requires.
pub fn encode_header_block(headers: &[(String, String)]) -> Vec<u8> {
    let mut grouped: Vec<(String, Vec<&str>)> = Vec::new();
    for (name, value) in headers {
        let name = name.to_ascii_lowercase();
        match grouped.iter_mut().find(|(n, _)| *n == name) {
            Some((_, values)) => values.push(value),
            None => grouped.push((name, vec![value])),
        }
    }
    let mut out = Vec::new();
    out.put_u32(grouped.len() as u32);
    for (name, values) in grouped {
        let value = values.join("\0");
        out.put_u32(name.len() as u32);
        out.put_slice(name.as_bytes());
        out.put_u32(value.len() as u32);
        out.put_slice(value.as_bytes());
    }
    out
}

/// Decodes an uncompressed header block.
pub fn decode_header_block(mut block: &[u8]) -> Result<Headers, SpdyError> {
    let malformed = |reason: &str| SpdyError::Malformed { frame: "header block", reason: reason.to_string() };
    if block.remaining() < 4 {
        return Err(malformed("truncated count"));
    }
    let count = block.get_u32();
    let mut headers = Vec::new();
    for _ in 0..count {
        let mut field = || -> Result<String, SpdyError> {
            if block.remaining() < 4 {
                return Err(malformed("truncated length"));
            }
            let len = block.get_u32() as usize;
            if block.remaining() < len {
                return Err(malformed("truncated name or value"));
            }
            let text = String::from_utf8_lossy(&block[..len]).into_owned();
            block.advance(len);
            Ok(text)
        };
        let name = field()?.to_ascii_lowercase();
        let value = field()?;
        for v in value.split('\0') {
            headers.push((name.clone(), v.to_string()));
        }
    }
    Ok(headers)
}

fn control_header(out: &mut BytesMut, frame_type: u16, flags: u8, length: usize) -> Result<(), SpdyError> {
    if length > MAX_FRAME_LENGTH {
        return Err(SpdyError::TooLarge(length));
    }
    out.put_u16(0x8000 | VERSION);
    out.put_u16(frame_type);
    out.put_u32((u32::from(flags) << 24) | length as u32);
    Ok(())
}

/// Appends the wire form of `frame` to `out`, compressing header blocks with `compressor`.
pub fn encode_frame(frame: &Frame, compressor: &mut HeaderCompressor, out: &mut BytesMut) -> Result<(), SpdyError> {
    match frame {
        Frame::SynStream { stream_id, associated_to, priority, flags, headers } => {
            let block = compressor.compress(&encode_header_block(headers))?;
            control_header(out, TYPE_SYN_STREAM, *flags, block.len() + 10)?;
            out.put_u32(stream_id & 0x7fff_ffff);
            out.put_u32(associated_to & 0x7fff_ffff);
            out.put_u8((priority & 0x07) << 5);
            out.put_u8(0);
            out.put_slice(&block);
        }
        Frame::SynReply { stream_id, flags, headers } | Frame::Headers { stream_id, flags, headers } => {
            let frame_type = if matches!(frame, Frame::SynReply { .. }) { TYPE_SYN_REPLY } else { TYPE_HEADERS };
            let block = compressor.compress(&encode_header_block(headers))?;
            control_header(out, frame_type, *flags, block.len() + 4)?;
            out.put_u32(stream_id & 0x7fff_ffff);
            out.put_slice(&block);
        }
        Frame::RstStream { stream_id, status } => {
            control_header(out, TYPE_RST_STREAM, 0, 8)?;
            out.put_u32(stream_id & 0x7fff_ffff);
            out.put_u32(*status);
        }
        Frame::Settings { flags, entries } => {
            control_header(out, TYPE_SETTINGS, *flags, 4 + entries.len() * 8)?;
            out.put_u32(entries.len() as u32);
            for (entry_flags, id, value) in entries {
                out.put_u32((u32::from(*entry_flags) << 24) | (id & 0x00ff_ffff));
                out.put_u32(*value);
            }
        }
        Frame::Ping { id } => {
            control_header(out, TYPE_PING, 0, 4)?;
            out.put_u32(*id);
        }
        Frame::GoAway { last_good_stream_id, status } => {
            control_header(out, TYPE_GOAWAY, 0, 8)?;
            out.put_u32(last_good_stream_id & 0x7fff_ffff);
            out.put_u32(*status);
        }
        Frame::WindowUpdate { stream_id, delta } => {
            control_header(out, TYPE_WINDOW_UPDATE, 0, 8)?;
            out.put_u32(stream_id & 0x7fff_ffff);
            out.put_u32(delta & 0x7fff_ffff);
        }
        Frame::Data { stream_id, flags, data } => {
            if data.len() > MAX_FRAME_LENGTH {
                return Err(SpdyError::TooLarge(data.len()));
            }
            out.put_u32(stream_id & 0x7fff_ffff);
            out.put_u32((u32::from(*flags) << 24) | data.len() as u32);
            out.put_slice(data);
        }
        Frame::Unknown { frame_type } => {
            control_header(out, *frame_type, 0, 0)?;
        }
    }
    Ok(())
}

/// Decodes one frame from its 8-byte header and its payload.
pub fn decode_frame(header: [u8; 8], payload: Bytes, decompressor: &mut HeaderDecompressor) -> Result<Frame, SpdyError> {
    let first = u32::from_be_bytes([header[0], header[1], header[2], header[3]]);
    let flags = header[4];
    if first & 0x8000_0000 == 0 {
        return Ok(Frame::Data { stream_id: first & 0x7fff_ffff, flags, data: payload });
    }
    let version = ((first >> 16) & 0x7fff) as u16;
    if version != VERSION {
        return Err(SpdyError::Version(version));
    }
    let frame_type = (first & 0xffff) as u16;
    let mut p = payload;
    let need = |p: &Bytes, n: usize, frame: &'static str| -> Result<(), SpdyError> {
        if p.len() < n {
            return Err(SpdyError::Malformed { frame, reason: format!("{} bytes, at least {n} expected", p.len()) });
        }
        Ok(())
    };
    Ok(match frame_type {
        TYPE_SYN_STREAM => {
            need(&p, 10, "SYN_STREAM")?;
            let stream_id = p.get_u32() & 0x7fff_ffff;
            let associated_to = p.get_u32() & 0x7fff_ffff;
            let priority = p.get_u8() >> 5;
            let _slot = p.get_u8();
            let headers = decode_header_block(&decompressor.decompress(&p)?)?;
            Frame::SynStream { stream_id, associated_to, priority, flags, headers }
        }
        TYPE_SYN_REPLY | TYPE_HEADERS => {
            need(&p, 4, "SYN_REPLY")?;
            let stream_id = p.get_u32() & 0x7fff_ffff;
            let headers = decode_header_block(&decompressor.decompress(&p)?)?;
            if frame_type == TYPE_SYN_REPLY {
                Frame::SynReply { stream_id, flags, headers }
            } else {
                Frame::Headers { stream_id, flags, headers }
            }
        }
        TYPE_RST_STREAM => {
            need(&p, 8, "RST_STREAM")?;
            Frame::RstStream { stream_id: p.get_u32() & 0x7fff_ffff, status: p.get_u32() }
        }
        TYPE_SETTINGS => {
            need(&p, 4, "SETTINGS")?;
            let count = p.get_u32() as usize;
            need(&p, count.saturating_mul(8), "SETTINGS")?;
            let entries = (0..count)
                .map(|_| {
                    let id = p.get_u32();
                    ((id >> 24) as u8, id & 0x00ff_ffff, p.get_u32())
                })
                .collect();
            Frame::Settings { flags, entries }
        }
        TYPE_PING => {
            need(&p, 4, "PING")?;
            Frame::Ping { id: p.get_u32() }
        }
        TYPE_GOAWAY => {
            need(&p, 8, "GOAWAY")?;
            Frame::GoAway { last_good_stream_id: p.get_u32() & 0x7fff_ffff, status: p.get_u32() }
        }
        TYPE_WINDOW_UPDATE => {
            need(&p, 8, "WINDOW_UPDATE")?;
            Frame::WindowUpdate { stream_id: p.get_u32() & 0x7fff_ffff, delta: p.get_u32() & 0x7fff_ffff }
        }
        other => Frame::Unknown { frame_type: other },
    })
}

/// Reads one frame; `Ok(None)` at a clean end of the connection between frames.
pub async fn read_frame<R: AsyncRead + Unpin>(reader: &mut R, decompressor: &mut HeaderDecompressor) -> Result<Option<Frame>, SpdyError> {
    let mut header = [0u8; 8];
    let mut filled = 0;
    while filled < header.len() {
        let n = reader.read(&mut header[filled..]).await.map_err(SpdyError::Read)?;
        if n == 0 {
            if filled == 0 {
                return Ok(None);
            }
            return Err(SpdyError::Read(io::ErrorKind::UnexpectedEof.into()));
        }
        filled += n;
    }
    let length = (u32::from_be_bytes([header[4], header[5], header[6], header[7]]) & 0x00ff_ffff) as usize;
    let mut payload = vec![0u8; length];
    reader.read_exact(&mut payload).await.map_err(SpdyError::Read)?;
    decode_frame(header, Bytes::from(payload), decompressor).map(Some)
}

/// A frame, or an instruction, for a session's writer task.
enum Outgoing {
    Frame(Frame),
    /// Send GOAWAY, flush and half-close the connection.
    Shutdown,
}

/// One stream the client opened, accepted with a SYN_REPLY.
pub struct SpdyStream {
    pub id: u32,
    pub headers: Headers,
    pub reader: StreamReader,
    pub writer: StreamWriter,
}

impl SpdyStream {
    /// The first value of header `name` (lowercase).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}

/// The data the client sends on one stream; ends at its FIN or RST_STREAM, or when the
/// connection ends.
pub struct StreamReader {
    rx: mpsc::Receiver<Bytes>,
    pending: Bytes,
}

impl StreamReader {
    /// The next chunk of data, `None` at the end of the stream.
    pub async fn next_chunk(&mut self) -> Option<Bytes> {
        if !self.pending.is_empty() {
            return Some(std::mem::take(&mut self.pending));
        }
        self.rx.recv().await
    }
}

impl AsyncRead for StreamReader {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        while self.pending.is_empty() {
            match self.rx.poll_recv(cx) {
                Poll::Ready(Some(chunk)) => self.pending = chunk,
                Poll::Ready(None) => return Poll::Ready(Ok(())),
                Poll::Pending => return Poll::Pending,
            }
        }
        let n = self.pending.len().min(buf.remaining());
        buf.put_slice(&self.pending[..n]);
        self.pending.advance(n);
        Poll::Ready(Ok(()))
    }
}

/// Sends data on one stream.
#[derive(Clone)]
pub struct StreamWriter {
    id: u32,
    tx: mpsc::Sender<Outgoing>,
    reset: Arc<AtomicBool>,
}

impl StreamWriter {
    pub fn id(&self) -> u32 {
        self.id
    }

    async fn send(&self, frame: Frame) -> Result<(), SpdyError> {
        if self.reset.load(Ordering::Relaxed) {
            return Err(SpdyError::Reset(self.id));
        }
        self.tx.send(Outgoing::Frame(frame)).await.map_err(|_| SpdyError::Closed)
    }

    /// Sends `data` in DATA frames.
    pub async fn write(&self, data: &[u8]) -> Result<(), SpdyError> {
        for chunk in data.chunks(MAX_DATA_CHUNK) {
            self.send(Frame::Data { stream_id: self.id, flags: 0, data: Bytes::copy_from_slice(chunk) }).await?;
        }
        Ok(())
    }

    /// Half-closes the stream (an empty DATA frame with FIN).
    pub async fn close(&self) -> Result<(), SpdyError> {
        self.send(Frame::Data { stream_id: self.id, flags: FLAG_FIN, data: Bytes::new() }).await
    }

    /// Aborts the stream (RST_STREAM CANCEL).
    pub async fn reset(&self) -> Result<(), SpdyError> {
        self.reset.store(true, Ordering::Relaxed);
        self.tx.send(Outgoing::Frame(Frame::RstStream { stream_id: self.id, status: RST_CANCEL })).await.map_err(|_| SpdyError::Closed)
    }
}

/// Controls a running session.
#[derive(Clone)]
pub struct SessionHandle {
    tx: mpsc::Sender<Outgoing>,
    closed: CancellationToken,
}

impl SessionHandle {
    /// Sends GOAWAY, flushes what was queued before, and half-closes the connection.
    pub async fn shutdown(&self) {
        let _ = self.tx.send(Outgoing::Shutdown).await;
    }

    /// Cancelled once the connection has ended (read side closed or failed).
    pub fn closed(&self) -> CancellationToken {
        self.closed.clone()
    }
}

struct StreamEntry {
    data: Option<mpsc::Sender<Bytes>>,
    reset: Arc<AtomicBool>,
}

/// Runs the server side of a SPDY session over `io`: accepts every stream the client
/// opens and hands it out on the returned receiver, answers PINGs, and delivers DATA to
/// its stream. The session ends when the client closes the connection, or after
/// [`SessionHandle::shutdown`] once the client has gone.
pub fn serve_session<IO>(io: IO) -> (SessionHandle, mpsc::Receiver<SpdyStream>)
where
    IO: AsyncRead + AsyncWrite + Send + 'static,
{
    let (read_half, write_half) = tokio::io::split(io);
    let (out_tx, out_rx) = mpsc::channel::<Outgoing>(128);
    let (incoming_tx, incoming_rx) = mpsc::channel::<SpdyStream>(16);
    let closed = CancellationToken::new();
    tokio::spawn(write_loop(write_half, out_rx, closed.clone()));
    tokio::spawn(read_loop(read_half, out_tx.clone(), incoming_tx, closed.clone()));
    (SessionHandle { tx: out_tx, closed }, incoming_rx)
}

async fn write_loop<W: AsyncWrite + Unpin>(writer: W, mut rx: mpsc::Receiver<Outgoing>, closed: CancellationToken) {
    let mut writer = tokio::io::BufWriter::new(writer);
    let mut compressor = match HeaderCompressor::new() {
        Ok(c) => c,
        Err(e) => {
            debug!(error = %e, "SPDY session cannot compress headers");
            closed.cancel();
            return;
        }
    };
    let mut buf = BytesMut::with_capacity(MAX_DATA_CHUNK + 64);
    let mut last_stream_id = 0;
    'session: loop {
        let next = tokio::select! {
            next = rx.recv() => next,
            _ = closed.cancelled() => break 'session,
        };
        let Some(mut item) = next else { break };
        loop {
            match item {
                Outgoing::Frame(frame) => {
                    if let Frame::SynReply { stream_id, .. } = &frame {
                        last_stream_id = *stream_id;
                    }
                    buf.clear();
                    if let Err(e) = encode_frame(&frame, &mut compressor, &mut buf) {
                        debug!(error = %e, "dropping a SPDY frame that cannot be encoded");
                    } else if let Err(e) = writer.write_all(&buf).await {
                        trace!(error = %e, "SPDY connection write failed");
                        closed.cancel();
                        return;
                    }
                }
                Outgoing::Shutdown => {
                    buf.clear();
                    let goaway = Frame::GoAway { last_good_stream_id: last_stream_id, status: 0 };
                    if encode_frame(&goaway, &mut compressor, &mut buf).is_ok() {
                        let _ = writer.write_all(&buf).await;
                    }
                    let _ = writer.flush().await;
                    let _ = writer.shutdown().await;
                    // The client closes its side once it has read the GOAWAY; one that
                    // does not is cut off after a grace period.
                    tokio::select! {
                        _ = tokio::time::sleep(SHUTDOWN_GRACE) => closed.cancel(),
                        _ = closed.cancelled() => {}
                    }
                    return;
                }
            }
            match rx.try_recv() {
                Ok(next) => item = next,
                Err(_) => break,
            }
        }
        if let Err(e) = writer.flush().await {
            trace!(error = %e, "SPDY connection flush failed");
            closed.cancel();
            return;
        }
    }
    let _ = writer.flush().await;
    let _ = writer.shutdown().await;
}

async fn read_loop<R: AsyncRead + Unpin>(mut reader: R, out: mpsc::Sender<Outgoing>, incoming: mpsc::Sender<SpdyStream>, closed: CancellationToken) {
    let mut decompressor = HeaderDecompressor::new();
    let mut streams: HashMap<u32, StreamEntry> = HashMap::new();
    let mut going_away = false;
    loop {
        let frame = tokio::select! {
            frame = read_frame(&mut reader, &mut decompressor) => frame,
            _ = closed.cancelled() => break,
        };
        let frame = match frame {
            Ok(Some(frame)) => frame,
            Ok(None) => break,
            Err(e) => {
                debug!(error = %e, "SPDY session read failed");
                break;
            }
        };
        trace!(?frame, "SPDY frame received");
        match frame {
            Frame::SynStream { stream_id, flags, headers, .. } => {
                if going_away || stream_id == 0 || streams.contains_key(&stream_id) {
                    let _ = out.send(Outgoing::Frame(Frame::RstStream { stream_id, status: RST_PROTOCOL_ERROR })).await;
                    continue;
                }
                let (data_tx, data_rx) = mpsc::channel(32);
                let reset = Arc::new(AtomicBool::new(false));
                let stream = SpdyStream {
                    id: stream_id,
                    headers,
                    reader: StreamReader { rx: data_rx, pending: Bytes::new() },
                    writer: StreamWriter { id: stream_id, tx: out.clone(), reset: reset.clone() },
                };
                let remote_open = flags & (FLAG_FIN | FLAG_UNIDIRECTIONAL) == 0;
                streams.insert(stream_id, StreamEntry { data: remote_open.then_some(data_tx), reset });
                if out.send(Outgoing::Frame(Frame::SynReply { stream_id, flags: 0, headers: vec![] })).await.is_err() {
                    break;
                }
                if incoming.send(stream).await.is_err() {
                    streams.remove(&stream_id);
                    let _ = out.send(Outgoing::Frame(Frame::RstStream { stream_id, status: RST_REFUSED_STREAM })).await;
                }
            }
            Frame::Data { stream_id, flags, data } => {
                let Some(entry) = streams.get_mut(&stream_id) else { continue };
                if !data.is_empty() {
                    if let Some(tx) = &entry.data {
                        if tx.send(data).await.is_err() {
                            entry.data = None;
                        }
                    }
                }
                if flags & FLAG_FIN != 0 {
                    entry.data = None;
                }
            }
            Frame::RstStream { stream_id, .. } => {
                if let Some(entry) = streams.remove(&stream_id) {
                    entry.reset.store(true, Ordering::Relaxed);
                }
            }
            Frame::Headers { stream_id, flags, .. } => {
                if flags & FLAG_FIN != 0 {
                    if let Some(entry) = streams.get_mut(&stream_id) {
                        entry.data = None;
                    }
                }
            }
            Frame::Ping { id } => {
                if out.send(Outgoing::Frame(Frame::Ping { id })).await.is_err() {
                    break;
                }
            }
            Frame::GoAway { .. } => going_away = true,
            Frame::SynReply { .. } | Frame::Settings { .. } | Frame::WindowUpdate { .. } | Frame::Unknown { .. } => {}
        }
    }
    for entry in streams.values() {
        entry.reset.store(true, Ordering::Relaxed);
    }
    closed.cancel();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap_or_default()).collect()
    }

    fn h(pairs: &[(&str, &str)]) -> Headers {
        pairs.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect()
    }

    #[test]
    fn dictionary_is_spdy3s() {
        // Its zlib dictionary id (Adler-32) is the one every SPDY/3 stream names.
        assert_eq!(HEADER_DICTIONARY.len(), 1423);
        let (mut a, mut b) = (1u32, 0u32);
        for &byte in HEADER_DICTIONARY {
            a = (a + u32::from(byte)) % 65521;
            b = (b + a) % 65521;
        }
        assert_eq!((b << 16) | a, 0xe3c6_a7c2);
    }

    #[test]
    fn header_block_round_trip() {
        let headers = h(&[("streamtype", "data"), ("Port", "8080"), ("x", "a"), ("x", "b")]);
        let block = encode_header_block(&headers);
        let decoded = decode_header_block(&block).expect("decode");
        assert_eq!(decoded, h(&[("streamtype", "data"), ("port", "8080"), ("x", "a"), ("x", "b")]));
        assert!(decode_header_block(&block[..block.len() - 1]).is_err());
    }

    /// A SYN_STREAM as a zlib-with-dictionary client writes it (bytes produced by C zlib
    /// with SPDY's dictionary, level 9, sync flush), then a second header block that
    /// continues the same zlib stream.
    #[test]
    fn decodes_known_syn_stream_and_continued_block() {
        let frame =
            hex("800300010000003d0000000100000000000078f9e3c6a7c202253a703a2b294a4dcc851625aca9a0808614cb45e01c6061606100a4398b20d198094ade8c0600000000ffff");
        let mut d = HeaderDecompressor::new();
        let mut header = [0u8; 8];
        header.copy_from_slice(&frame[..8]);
        let decoded = decode_frame(header, Bytes::copy_from_slice(&frame[8..]), &mut d).expect("decode");
        assert_eq!(
            decoded,
            Frame::SynStream {
                stream_id: 1,
                associated_to: 0,
                priority: 0,
                flags: 0,
                headers: h(&[("streamtype", "error"), ("port", "8080"), ("requestid", "0")])
            }
        );
        let second = d.decompress(&hex("c2aa19540e2512d60b000000ffff")).expect("second block");
        assert_eq!(decode_header_block(&second).expect("block"), h(&[("streamtype", "data"), ("port", "8080"), ("requestid", "0")]));
    }

    #[test]
    fn frames_round_trip_through_one_compression_context() {
        let frames = vec![
            Frame::SynStream { stream_id: 1, associated_to: 0, priority: 2, flags: FLAG_FIN, headers: h(&[("streamtype", "error")]) },
            Frame::SynReply { stream_id: 1, flags: 0, headers: vec![] },
            Frame::SynReply { stream_id: 3, flags: FLAG_FIN, headers: h(&[("a", "b")]) },
            Frame::Headers { stream_id: 3, flags: 0, headers: h(&[("c", "d")]) },
            Frame::RstStream { stream_id: 3, status: RST_CANCEL },
            Frame::Settings { flags: 1, entries: vec![(0, 7, 65536)] },
            Frame::Ping { id: 7 },
            Frame::GoAway { last_good_stream_id: 5, status: 0 },
            Frame::WindowUpdate { stream_id: 1, delta: 1000 },
            Frame::Data { stream_id: 5, flags: FLAG_FIN, data: Bytes::from_static(b"hello") },
        ];
        let mut c = HeaderCompressor::new().expect("compressor");
        let mut wire = BytesMut::new();
        for f in &frames {
            encode_frame(f, &mut c, &mut wire).expect("encode");
        }
        let mut d = HeaderDecompressor::new();
        let mut wire = wire.freeze();
        for expected in &frames {
            let mut header = [0u8; 8];
            header.copy_from_slice(&wire[..8]);
            let len = (u32::from_be_bytes([header[4], header[5], header[6], header[7]]) & 0xff_ffff) as usize;
            let payload = wire.slice(8..8 + len);
            wire.advance(8 + len);
            assert_eq!(&decode_frame(header, payload, &mut d).expect("decode"), expected);
        }
        assert!(wire.is_empty());
    }

    #[test]
    fn known_control_frame_bytes() {
        let mut c = HeaderCompressor::new().expect("compressor");
        let mut out = BytesMut::new();
        encode_frame(&Frame::Ping { id: 1 }, &mut c, &mut out).expect("ping");
        assert_eq!(&out[..], &hex("800300060000000400000001")[..]);
        out.clear();
        encode_frame(&Frame::RstStream { stream_id: 3, status: RST_CANCEL }, &mut c, &mut out).expect("rst");
        assert_eq!(&out[..], &hex("80030003000000080000000300000005")[..]);
        out.clear();
        encode_frame(&Frame::Data { stream_id: 1, flags: FLAG_FIN, data: Bytes::from_static(b"ok") }, &mut c, &mut out).expect("data");
        assert_eq!(&out[..], &hex("00000001010000026f6b")[..]);
    }

    #[test]
    fn rejects_other_versions_and_short_frames() {
        let mut d = HeaderDecompressor::new();
        assert!(matches!(decode_frame([0x80, 2, 0, 6, 0, 0, 0, 4], Bytes::from_static(&[0, 0, 0, 1]), &mut d), Err(SpdyError::Version(2))));
        assert!(matches!(decode_frame([0x80, 3, 0, 6, 0, 0, 0, 2], Bytes::from_static(&[0, 0]), &mut d), Err(SpdyError::Malformed { .. })));
    }

    #[tokio::test]
    async fn session_accepts_streams_answers_pings_and_half_closes() {
        let (client, server) = tokio::io::duplex(1 << 16);
        let (handle, mut incoming) = serve_session(server);
        let (mut client_read, mut client_write) = tokio::io::split(client);
        let mut c = HeaderCompressor::new().expect("compressor");
        let mut wire = BytesMut::new();
        encode_frame(&Frame::SynStream { stream_id: 1, associated_to: 0, priority: 0, flags: 0, headers: h(&[("streamtype", "data")]) }, &mut c, &mut wire)
            .expect("syn");
        encode_frame(&Frame::Data { stream_id: 1, flags: FLAG_FIN, data: Bytes::from_static(b"ping?") }, &mut c, &mut wire).expect("data");
        encode_frame(&Frame::Ping { id: 1 }, &mut c, &mut wire).expect("ping");
        client_write.write_all(&wire).await.expect("write");

        let mut stream = incoming.recv().await.expect("stream");
        assert_eq!(stream.header("streamtype"), Some("data"));
        let mut got = Vec::new();
        stream.reader.read_to_end(&mut got).await.expect("read");
        assert_eq!(got, b"ping?");
        stream.writer.write(b"pong").await.expect("write");
        stream.writer.close().await.expect("close");
        handle.shutdown().await;

        let mut d = HeaderDecompressor::new();
        let mut seen = Vec::new();
        while let Some(frame) = read_frame(&mut client_read, &mut d).await.expect("frame") {
            seen.push(frame);
        }
        assert_eq!(seen[0], Frame::SynReply { stream_id: 1, flags: 0, headers: vec![] });
        assert!(seen.contains(&Frame::Ping { id: 1 }));
        assert!(seen.contains(&Frame::Data { stream_id: 1, flags: 0, data: Bytes::from_static(b"pong") }));
        assert!(seen.contains(&Frame::Data { stream_id: 1, flags: FLAG_FIN, data: Bytes::new() }));
        assert_eq!(seen.last(), Some(&Frame::GoAway { last_good_stream_id: 1, status: 0 }));
    }
}
