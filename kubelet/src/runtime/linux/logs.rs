//! The CRI log format the shim writes container output in, one line per record:
//! `2016-10-06T00:17:09.669794202Z stdout F hello` — timestamp (RFC 3339 with
//! nanoseconds, UTC), stream, `F` for a full line or `P` for a partial one (a line longer
//! than 16 KiB is cut into `P` records followed by an `F`), then the bytes.

use std::io::{self, Write};

use chrono::{DateTime, Utc};

/// Longest record content before a line is split into partial records.
pub const MAX_LINE: usize = 16 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    pub fn as_str(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// A timestamp as Go's `time.RFC3339Nano` prints it (trailing zeros of the fraction
/// dropped), which is what containerd writes.
pub fn format_timestamp(t: DateTime<Utc>) -> String {
    let base = t.format("%Y-%m-%dT%H:%M:%S").to_string();
    let nanos = t.timestamp_subsec_nanos();
    if nanos == 0 {
        return format!("{base}Z");
    }
    let fraction = format!("{nanos:09}");
    format!("{base}.{}Z", fraction.trim_end_matches('0'))
}

/// One CRI log record.
pub fn write_record(
    out: &mut impl Write,
    time: DateTime<Utc>,
    stream: Stream,
    partial: bool,
    content: &[u8],
) -> io::Result<()> {
    let mut line = Vec::with_capacity(content.len() + 48);
    line.extend_from_slice(format_timestamp(time).as_bytes());
    line.push(b' ');
    line.extend_from_slice(stream.as_str().as_bytes());
    line.extend_from_slice(if partial { b" P " } else { b" F " });
    line.extend_from_slice(content);
    line.push(b'\n');
    out.write_all(&line)
}

/// Cuts one stream's bytes into records, keeping an unfinished line until its end (or
/// until it grows past [`MAX_LINE`]) arrives.
#[derive(Debug)]
pub struct LineSplitter {
    stream: Stream,
    pending: Vec<u8>,
}

impl LineSplitter {
    pub fn new(stream: Stream) -> Self {
        LineSplitter {
            stream,
            pending: Vec::new(),
        }
    }

    pub fn stream(&self) -> Stream {
        self.stream
    }

    /// Takes freshly read bytes and writes every record they complete.
    pub fn push(
        &mut self,
        data: &[u8],
        now: DateTime<Utc>,
        out: &mut impl Write,
    ) -> io::Result<()> {
        self.pending.extend_from_slice(data);
        let mut start = 0;
        loop {
            let rest = &self.pending[start..];
            match rest.iter().position(|b| *b == b'\n') {
                Some(n) if n <= MAX_LINE => {
                    write_record(out, now, self.stream, false, &rest[..n])?;
                    start += n + 1;
                }
                _ if rest.len() > MAX_LINE => {
                    write_record(out, now, self.stream, true, &rest[..MAX_LINE])?;
                    start += MAX_LINE;
                }
                _ => break,
            }
        }
        self.pending.drain(..start);
        Ok(())
    }

    /// At end of stream: what is left is a last, full line.
    pub fn finish(&mut self, now: DateTime<Utc>, out: &mut impl Write) -> io::Result<()> {
        if !self.pending.is_empty() {
            let rest = std::mem::take(&mut self.pending);
            write_record(out, now, self.stream, false, &rest)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    fn at(nanos: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2016, 10, 6, 0, 17, 9)
            .single()
            .expect("time")
            + chrono::Duration::nanoseconds(i64::from(nanos))
    }

    #[test]
    fn timestamps_print_like_go() {
        assert_eq!(
            format_timestamp(at(669_794_202)),
            "2016-10-06T00:17:09.669794202Z"
        );
        assert_eq!(
            format_timestamp(at(669_000_000)),
            "2016-10-06T00:17:09.669Z"
        );
        assert_eq!(format_timestamp(at(0)), "2016-10-06T00:17:09Z");
    }

    #[test]
    fn lines_become_full_records() {
        let mut out = Vec::new();
        let mut split = LineSplitter::new(Stream::Stdout);
        split
            .push(b"hello\nwor", at(669_794_202), &mut out)
            .expect("push");
        split
            .push(b"ld\n\nlast", at(669_794_202), &mut out)
            .expect("push");
        split.finish(at(669_794_202), &mut out).expect("finish");
        let text = String::from_utf8(out).expect("utf8");
        assert_eq!(
            text,
            "2016-10-06T00:17:09.669794202Z stdout F hello\n\
             2016-10-06T00:17:09.669794202Z stdout F world\n\
             2016-10-06T00:17:09.669794202Z stdout F \n\
             2016-10-06T00:17:09.669794202Z stdout F last\n"
        );
    }

    #[test]
    fn long_lines_are_split_into_partials() {
        let mut out = Vec::new();
        let mut split = LineSplitter::new(Stream::Stderr);
        let mut data = vec![b'a'; MAX_LINE * 2 + 10];
        data.push(b'\n');
        split.push(&data, at(1), &mut out).expect("push");
        split.finish(at(1), &mut out).expect("finish");
        let text = String::from_utf8(out).expect("utf8");
        let records: Vec<(&str, usize)> = text
            .lines()
            .map(|l| {
                let mut parts = l.splitn(4, ' ');
                let _ts = parts.next();
                assert_eq!(parts.next(), Some("stderr"));
                let tag = parts.next().expect("tag");
                (tag, parts.next().map_or(0, str::len))
            })
            .collect();
        assert_eq!(records, vec![("P", MAX_LINE), ("P", MAX_LINE), ("F", 10)]);
    }

    #[test]
    fn a_line_of_exactly_the_limit_is_full() {
        let mut out = Vec::new();
        let mut split = LineSplitter::new(Stream::Stdout);
        let mut data = vec![b'b'; MAX_LINE];
        split.push(&data, at(1), &mut out).expect("push");
        assert!(out.is_empty(), "waits for the newline");
        data.clear();
        split.push(b"\n", at(1), &mut out).expect("push");
        let text = String::from_utf8(out).expect("utf8");
        assert_eq!(text.lines().count(), 1);
        assert!(text.contains(" stdout F "));
    }
}

/// The kubelet's defaults: `containerLogMaxSize` 10 MiB, `containerLogMaxFiles` 5.
pub const LOG_MAX_BYTES: u64 = 10 * 1024 * 1024;
pub const LOG_MAX_FILES: usize = 5;

/// A container's log file that rotates itself as the kubelet rotates CRI logs: when the
/// next write would pass `max_bytes`, the file is renamed to `<name>.<UTC time>` and a
/// new one opened; beyond `max_files` files in all, the oldest rotated ones go.
/// Rotation happens between CRI records, never inside one.
pub struct RotatingLog {
    path: std::path::PathBuf,
    file: std::fs::File,
    size: u64,
    max_bytes: u64,
    max_files: usize,
}

impl RotatingLog {
    pub fn open(path: &std::path::Path, max_bytes: u64, max_files: usize) -> io::Result<RotatingLog> {
        let file = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
        let size = file.metadata()?.len();
        Ok(RotatingLog { path: path.to_path_buf(), file, size, max_bytes, max_files: max_files.max(1) })
    }

    fn rotated(&self) -> Vec<std::path::PathBuf> {
        let Some(name) = self.path.file_name().map(|n| format!("{}.", n.to_string_lossy())) else { return Vec::new() };
        let Some(dir) = self.path.parent() else { return Vec::new() };
        let mut found: Vec<std::path::PathBuf> = std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with(&name))
            .map(|e| e.path())
            .collect();
        found.sort();
        found
    }

    fn rotate(&mut self) -> io::Result<()> {
        let stamp = Utc::now().format("%Y%m%d-%H%M%S%.6f");
        let name = self.path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        std::fs::rename(&self.path, self.path.with_file_name(format!("{name}.{stamp}")))?;
        self.file = std::fs::OpenOptions::new().create(true).append(true).open(&self.path)?;
        self.size = 0;
        let rotated = self.rotated();
        let excess = rotated.len().saturating_sub(self.max_files - 1);
        for old in rotated.into_iter().take(excess) {
            let _ = std::fs::remove_file(old);
        }
        Ok(())
    }
}

impl Write for RotatingLog {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.size > 0 && self.size + buf.len() as u64 > self.max_bytes {
            if let Err(e) = self.rotate() {
                tracing::warn!(error = %e, path = %self.path.display(), "rotating the container log failed");
            }
        }
        self.file.write_all(buf)?;
        self.size += buf.len() as u64;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

#[cfg(test)]
mod rotation_tests {
    use super::*;

    #[test]
    fn rotates_between_records_and_keeps_max_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("0.log");
        let mut log = RotatingLog::open(&path, 100, 3).expect("open");
        let record = [b'x'; 40];
        for _ in 0..20 {
            log.write_all(&record).expect("write");
            // Distinct rotation names even within one second.
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        let current = std::fs::metadata(&path).expect("current").len();
        assert!(current <= 100 && current % 40 == 0, "records are never split: {current}");
        let rotated = log.rotated();
        assert_eq!(rotated.len(), 2, "three files in all: {rotated:?}");
        for r in rotated {
            let len = std::fs::metadata(&r).expect("rotated").len();
            assert!(len <= 100 && len % 40 == 0);
        }
    }
}
