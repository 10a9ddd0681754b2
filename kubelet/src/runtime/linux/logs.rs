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
