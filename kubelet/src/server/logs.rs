//! Container logs as `kubectl logs` sees them: CRI-format log files read back without
//! their prefixes, with the kubelet's options (`follow`, `tailLines`, `sinceSeconds`,
//! `sinceTime`, `timestamps`, `limitBytes`).
//!
//! The runtime writes one entry per line: `2016-10-06T00:17:09.669794202Z stdout F text`,
//! where the tag `P` marks a partial line that the next entry continues and `F` a full
//! one. Output is the joined text, each line optionally prefixed with its timestamp (in
//! the kubelet's fixed nine-digit RFC 3339 form) and a space.

use std::collections::VecDeque;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, SecondsFormat, Utc};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::runtime::{ContainerState, Runtime};

/// How often a followed log file is polled for new lines.
const FOLLOW_POLL: Duration = Duration::from_millis(100);
/// How often, while a followed file is idle, the container is checked for having stopped.
const RUNNING_CHECK: Duration = Duration::from_secs(1);
/// Output is sent in chunks of about this size.
const CHUNK: usize = 32 * 1024;

/// What reading or parsing a log failed at.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("invalid {name} {value:?}: {reason}")]
    InvalidOption { name: &'static str, value: String, reason: String },
    #[error("malformed CRI log line: {0}")]
    Malformed(&'static str),
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// The log request's options.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogOptions {
    pub follow: bool,
    pub previous: bool,
    /// Only the last N lines of what is already written.
    pub tail_lines: Option<usize>,
    /// Only lines written at or after this time.
    pub since: Option<DateTime<Utc>>,
    pub timestamps: bool,
    /// Stop after this many bytes of output.
    pub limit_bytes: Option<u64>,
}

impl LogOptions {
    /// Reads the query parameters of `/containerLogs/…` (`sinceSeconds` counts back from `now`).
    pub fn from_query(params: &[(String, String)], now: DateTime<Utc>) -> Result<LogOptions, LogError> {
        let get = |name: &str| params.iter().rev().find(|(k, _)| k == name).map(|(_, v)| v.as_str()).filter(|v| !v.is_empty());
        let flag = |name: &str| matches!(get(name), Some("true" | "1" | "True"));
        let number = |name: &'static str, min: i64| -> Result<Option<i64>, LogError> {
            match get(name) {
                None => Ok(None),
                Some(v) => match v.parse::<i64>() {
                    Ok(n) if n >= min => Ok(Some(n)),
                    Ok(_) => Err(LogError::InvalidOption { name, value: v.into(), reason: format!("must be greater than or equal to {min}") }),
                    Err(e) => Err(LogError::InvalidOption { name, value: v.into(), reason: e.to_string() }),
                },
            }
        };
        let since_seconds = number("sinceSeconds", 1)?;
        let since_time = match get("sinceTime") {
            None => None,
            Some(v) => Some(
                DateTime::parse_from_rfc3339(v)
                    .map_err(|e| LogError::InvalidOption { name: "sinceTime", value: v.into(), reason: e.to_string() })?
                    .with_timezone(&Utc),
            ),
        };
        if since_seconds.is_some() && since_time.is_some() {
            return Err(LogError::InvalidOption {
                name: "sinceTime",
                value: get("sinceTime").unwrap_or_default().into(),
                reason: "at most one of sinceTime or sinceSeconds may be specified".into(),
            });
        }
        let since = since_time.or_else(|| since_seconds.map(|s| now - chrono::Duration::seconds(s)));
        Ok(LogOptions {
            follow: flag("follow"),
            previous: flag("previous"),
            tail_lines: number("tailLines", 0)?.map(|n| usize::try_from(n).unwrap_or(usize::MAX)),
            since,
            timestamps: flag("timestamps"),
            limit_bytes: number("limitBytes", 1)?.map(|n| n.unsigned_abs()),
        })
    }
}

/// Which output a log entry came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogStream {
    Stdout,
    Stderr,
}

/// One parsed CRI log entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogEntry {
    pub timestamp: DateTime<Utc>,
    pub stream: LogStream,
    /// A `P` entry: the line continues in the next entry.
    pub partial: bool,
    /// The text, with its newline for full entries.
    pub content: Vec<u8>,
}

/// Parses one CRI log line (without its newline).
pub fn parse_cri_line(line: &[u8]) -> Result<LogEntry, LogError> {
    let mut fields = line.splitn(4, |&b| b == b' ');
    let timestamp = fields.next().ok_or(LogError::Malformed("no timestamp"))?;
    let timestamp = std::str::from_utf8(timestamp).map_err(|_| LogError::Malformed("timestamp is not text"))?;
    let timestamp = DateTime::parse_from_rfc3339(timestamp).map_err(|_| LogError::Malformed("timestamp is not RFC 3339"))?.with_timezone(&Utc);
    let stream = match fields.next() {
        Some(b"stdout") => LogStream::Stdout,
        Some(b"stderr") => LogStream::Stderr,
        _ => return Err(LogError::Malformed("stream is neither stdout nor stderr")),
    };
    let tag = fields.next().ok_or(LogError::Malformed("no tag"))?;
    // Tags may carry more flags after a colon; the first says partial or full.
    let partial = tag.split(|&b| b == b':').next() == Some(b"P");
    let mut content = fields.next().unwrap_or_default().to_vec();
    if !partial {
        content.push(b'\n');
    }
    Ok(LogEntry { timestamp, stream, partial, content })
}

/// Turns entries into output: joins partial lines, filters by time, prefixes
/// timestamps and stops at the byte limit.
#[derive(Debug)]
pub struct LogFormatter {
    since: Option<DateTime<Utc>>,
    timestamps: bool,
    remaining: Option<u64>,
    at_line_start: bool,
}

impl LogFormatter {
    pub fn new(opts: &LogOptions) -> LogFormatter {
        LogFormatter { since: opts.since, timestamps: opts.timestamps, remaining: opts.limit_bytes, at_line_start: true }
    }

    /// Whether the byte limit is reached (no more output will be produced).
    pub fn done(&self) -> bool {
        self.remaining == Some(0)
    }

    /// Appends the output for `entry` to `out`.
    pub fn push(&mut self, entry: &LogEntry, out: &mut Vec<u8>) {
        if self.done() || self.since.is_some_and(|since| entry.timestamp < since) {
            return;
        }
        let mut text = Vec::with_capacity(entry.content.len() + 32);
        if self.timestamps && self.at_line_start {
            text.extend_from_slice(entry.timestamp.to_rfc3339_opts(SecondsFormat::Nanos, true).as_bytes());
            text.push(b' ');
        }
        text.extend_from_slice(&entry.content);
        self.at_line_start = !entry.partial;
        if let Some(remaining) = self.remaining.as_mut() {
            let take = text.len().min(usize::try_from(*remaining).unwrap_or(usize::MAX));
            text.truncate(take);
            *remaining -= take as u64;
        }
        out.extend_from_slice(&text);
    }
}

/// Formats a whole log held in memory (used by tests and small reads).
pub fn format_log(data: &[u8], opts: &LogOptions) -> Vec<u8> {
    let mut lines: Vec<&[u8]> = data.split(|&b| b == b'\n').filter(|l| !l.is_empty()).collect();
    if let Some(n) = opts.tail_lines {
        lines = tail(lines, n);
    }
    let mut formatter = LogFormatter::new(opts);
    let mut out = Vec::new();
    for line in lines {
        if let Ok(entry) = parse_cri_line(line) {
            formatter.push(&entry, &mut out);
        }
    }
    out
}

/// The raw lines of the last `n` logical lines (a partial entry belongs to the line that
/// the next full entry ends).
fn tail<T: AsRef<[u8]>>(lines: Vec<T>, n: usize) -> Vec<T> {
    let mut logical = 0;
    let mut start = lines.len();
    for (i, line) in lines.iter().enumerate().rev() {
        let partial = parse_cri_line(line.as_ref()).map(|e| e.partial).unwrap_or(false);
        if !partial {
            if logical == n {
                break;
            }
            logical += 1;
        }
        start = i;
    }
    let mut lines = lines;
    lines.split_off(start)
}

/// Where a log stream goes, and what tells it to stop following.
pub struct LogSink {
    pub tx: mpsc::Sender<Bytes>,
    pub shutdown: CancellationToken,
}

/// What to follow: the container whose end stops the stream.
pub struct Follow {
    pub runtime: Arc<dyn Runtime>,
    pub container_id: String,
    pub running: bool,
}

/// Streams the log at `path` into `sink` with `opts`; follows the file while the
/// container runs if `follow` is given. A missing file is an empty log.
pub async fn stream_log(path: PathBuf, opts: LogOptions, follow: Option<Follow>, sink: LogSink) -> Result<(), LogError> {
    let read_err = |source| LogError::Read { path: path.clone(), source };
    let mut formatter = LogFormatter::new(&opts);
    let mut out = Vec::with_capacity(CHUNK);
    let mut follow = follow.filter(|f| f.running);

    let file = match open(&path, follow.is_some(), &sink, follow.as_ref()).await.map_err(read_err)? {
        Some(file) => file,
        None => return Ok(()),
    };
    let mut identity = file_identity(&path).await;
    let mut reader = BufReader::new(file);
    let mut line = Vec::new();

    // What is already written: all of it, or its last lines.
    if let Some(n) = opts.tail_lines {
        let mut window: VecDeque<Vec<u8>> = VecDeque::new();
        let mut logical = 0usize;
        loop {
            line.clear();
            let read = reader.read_until(b'\n', &mut line).await.map_err(read_err)?;
            if read == 0 || !line.ends_with(b"\n") {
                break;
            }
            line.pop();
            let partial = parse_cri_line(&line).map(|e| e.partial).unwrap_or(false);
            window.push_back(std::mem::take(&mut line));
            if !partial {
                logical += 1;
                while logical > n {
                    // Drop the oldest logical line: its partial entries and its full one.
                    while let Some(front) = window.pop_front() {
                        if !parse_cri_line(&front).map(|e| e.partial).unwrap_or(false) {
                            break;
                        }
                    }
                    logical -= 1;
                }
            }
        }
        for raw in window {
            emit(&raw, &mut formatter, &mut out);
        }
    } else {
        loop {
            let read = reader.read_until(b'\n', &mut line).await.map_err(read_err)?;
            if read == 0 || !line.ends_with(b"\n") {
                break;
            }
            line.pop();
            emit(&line, &mut formatter, &mut out);
            line.clear();
            if out.len() >= CHUNK && !send(&sink, &mut out).await {
                return Ok(());
            }
            if formatter.done() {
                break;
            }
        }
    }
    if !send(&sink, &mut out).await || formatter.done() {
        return Ok(());
    }
    let Some(f) = follow.take() else { return Ok(()) };

    // Follow: poll for more lines until the container stops or the client goes away.
    let mut since_check = Duration::ZERO;
    let mut stopping = false;
    loop {
        let read = reader.read_until(b'\n', &mut line).await.map_err(read_err)?;
        if read > 0 && line.ends_with(b"\n") {
            line.pop();
            emit(&line, &mut formatter, &mut out);
            line.clear();
            if (out.len() >= CHUNK && !send(&sink, &mut out).await) || formatter.done() {
                break;
            }
            continue;
        }
        // At the end of what is written (`line` may hold the start of an unfinished line).
        if !send(&sink, &mut out).await || stopping {
            break;
        }
        let now_identity = file_identity(&path).await;
        if now_identity.is_some() && now_identity != identity {
            // Rotated: the rest of the old file was read; go on with the new one.
            debug!(path = %path.display(), "log file rotated, reopening");
            reader = BufReader::new(tokio::fs::File::open(&path).await.map_err(read_err)?);
            identity = now_identity;
            line.clear();
            continue;
        }
        tokio::select! {
            _ = tokio::time::sleep(FOLLOW_POLL) => {}
            _ = sink.shutdown.cancelled() => break,
            _ = sink.tx.closed() => break,
        }
        since_check += FOLLOW_POLL;
        if since_check >= RUNNING_CHECK {
            since_check = Duration::ZERO;
            if !is_running(&f).await {
                // One more pass picks up what was written before it stopped.
                stopping = true;
            }
        }
    }
    Ok(())
}

fn emit(raw: &[u8], formatter: &mut LogFormatter, out: &mut Vec<u8>) {
    match parse_cri_line(raw) {
        Ok(entry) => formatter.push(&entry, out),
        Err(e) => debug!(error = %e, "skipping a log line"),
    }
}

/// Sends and clears `out`; false once the client is gone.
async fn send(sink: &LogSink, out: &mut Vec<u8>) -> bool {
    if out.is_empty() {
        return !sink.tx.is_closed();
    }
    sink.tx.send(Bytes::from(std::mem::take(out))).await.is_ok()
}

async fn is_running(f: &Follow) -> bool {
    matches!(f.runtime.container_status(&f.container_id).await, Ok(s) if s.state == ContainerState::Running)
}

/// Opens the log; when following, waits for a file the runtime has not created yet.
async fn open(path: &Path, wait: bool, sink: &LogSink, follow: Option<&Follow>) -> io::Result<Option<tokio::fs::File>> {
    loop {
        match tokio::fs::File::open(path).await {
            Ok(f) => return Ok(Some(f)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                if !wait || follow.is_none() {
                    return Ok(None);
                }
            }
            Err(e) => return Err(e),
        }
        tokio::select! {
            _ = tokio::time::sleep(RUNNING_CHECK) => {}
            _ = sink.shutdown.cancelled() => return Ok(None),
            _ = sink.tx.closed() => return Ok(None),
        }
        if let Some(f) = follow {
            if !is_running(f).await {
                return Ok(None);
            }
        }
    }
}

/// Device and inode of the file at `path`, to notice rotation.
async fn file_identity(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    tokio::fs::metadata(path).await.ok().map(|m| (m.dev(), m.ino()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOG: &str = "\
2016-10-06T00:17:09.669794202Z stdout F first line
2016-10-06T00:17:10.000000000Z stderr P second 
2016-10-06T00:17:10.100000000Z stderr P line in 
2016-10-06T00:17:10.200000000Z stderr F three parts
2016-10-06T00:17:11.5Z stdout F third line
2016-10-06T00:17:12.000000001Z stdout F 
";

    fn opts() -> LogOptions {
        LogOptions::default()
    }

    fn text(v: Vec<u8>) -> String {
        String::from_utf8(v).expect("utf8")
    }

    #[test]
    fn parses_cri_lines() {
        let e = parse_cri_line(b"2016-10-06T00:17:09.669794202Z stdout F hello world").expect("parse");
        assert_eq!(e.stream, LogStream::Stdout);
        assert!(!e.partial);
        assert_eq!(e.content, b"hello world\n");
        assert_eq!(e.timestamp.to_rfc3339_opts(SecondsFormat::Nanos, true), "2016-10-06T00:17:09.669794202Z");
        let p = parse_cri_line(b"2016-10-06T00:17:09Z stderr P:x part").expect("partial");
        assert!(p.partial && p.content == b"part" && p.stream == LogStream::Stderr);
        assert!(parse_cri_line(b"not-a-time stdout F x").is_err());
        assert!(parse_cri_line(b"2016-10-06T00:17:09Z stdin F x").is_err());
        assert!(parse_cri_line(b"2016-10-06T00:17:09Z stdout").is_err());
    }

    #[test]
    fn joins_partial_lines() {
        assert_eq!(text(format_log(LOG.as_bytes(), &opts())), "first line\nsecond line in three parts\nthird line\n\n");
    }

    #[test]
    fn timestamps_prefix_each_logical_line_in_fixed_width() {
        let out = text(format_log(LOG.as_bytes(), &LogOptions { timestamps: true, ..opts() }));
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines[0], "2016-10-06T00:17:09.669794202Z first line");
        assert_eq!(lines[1], "2016-10-06T00:17:10.000000000Z second line in three parts");
        assert_eq!(lines[2], "2016-10-06T00:17:11.500000000Z third line");
    }

    #[test]
    fn tail_counts_logical_lines() {
        assert_eq!(text(format_log(LOG.as_bytes(), &LogOptions { tail_lines: Some(1), ..opts() })), "\n");
        assert_eq!(text(format_log(LOG.as_bytes(), &LogOptions { tail_lines: Some(3), ..opts() })), "second line in three parts\nthird line\n\n");
        assert_eq!(text(format_log(LOG.as_bytes(), &LogOptions { tail_lines: Some(0), ..opts() })), "");
        assert_eq!(text(format_log(LOG.as_bytes(), &LogOptions { tail_lines: Some(99), ..opts() })).lines().count(), 4);
    }

    #[test]
    fn since_and_limit() {
        let since = DateTime::parse_from_rfc3339("2016-10-06T00:17:11Z").expect("time").with_timezone(&Utc);
        assert_eq!(text(format_log(LOG.as_bytes(), &LogOptions { since: Some(since), ..opts() })), "third line\n\n");
        assert_eq!(text(format_log(LOG.as_bytes(), &LogOptions { limit_bytes: Some(7), ..opts() })), "first l");
    }

    #[test]
    fn options_from_query() {
        let now = DateTime::parse_from_rfc3339("2024-01-01T00:01:00Z").expect("now").with_timezone(&Utc);
        let q = |pairs: &[(&str, &str)]| pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<Vec<_>>();
        let o =
            LogOptions::from_query(&q(&[("follow", "true"), ("tailLines", "5"), ("sinceSeconds", "60"), ("timestamps", "true"), ("limitBytes", "10")]), now)
                .expect("opts");
        assert!(o.follow && o.timestamps && !o.previous);
        assert_eq!(o.tail_lines, Some(5));
        assert_eq!(o.limit_bytes, Some(10));
        assert_eq!(o.since.map(|t| t.to_rfc3339()), Some("2024-01-01T00:00:00+00:00".to_string()));
        assert!(LogOptions::from_query(&q(&[("tailLines", "-1")]), now).is_err());
        assert!(LogOptions::from_query(&q(&[("tailLines", "x")]), now).is_err());
        assert!(LogOptions::from_query(&q(&[("sinceSeconds", "5"), ("sinceTime", "2024-01-01T00:00:00Z")]), now).is_err());
        let t = LogOptions::from_query(&q(&[("sinceTime", "2024-01-01T00:00:30Z"), ("previous", "true")]), now).expect("sinceTime");
        assert!(t.previous);
        assert_eq!(t.since.map(|t| t.timestamp()), Some(1_704_067_230));
    }

    #[tokio::test]
    async fn streams_a_file_with_tail() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("0.log");
        std::fs::write(&path, LOG).expect("write");
        let (tx, mut rx) = mpsc::channel(4);
        let sink = LogSink { tx, shutdown: CancellationToken::new() };
        stream_log(path, LogOptions { tail_lines: Some(2), ..opts() }, None, sink).await.expect("stream");
        let mut got = Vec::new();
        while let Some(chunk) = rx.recv().await {
            got.extend_from_slice(&chunk);
        }
        assert_eq!(text(got), "third line\n\n");
    }

    #[tokio::test]
    async fn missing_file_is_an_empty_log() {
        let (tx, mut rx) = mpsc::channel(4);
        let sink = LogSink { tx, shutdown: CancellationToken::new() };
        stream_log(PathBuf::from("/nonexistent/rkube/0.log"), opts(), None, sink).await.expect("stream");
        assert!(rx.recv().await.is_none());
    }
}
