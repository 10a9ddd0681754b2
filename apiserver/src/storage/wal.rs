//! The embedded store's log format: an append-only file of framed records.
//!
//! A frame is `len: u32 LE`, `crc32: u32 LE` (IEEE CRC-32 of the payload), then `len`
//! payload bytes. One frame holds one group commit (a batch of entries), so a crash in
//! the middle of a batch tears exactly one frame. On reading, a frame that runs past the
//! end of the file, or a bad-CRC frame with nothing valid after it, is a torn tail (cut
//! off); a bad-CRC frame followed by a valid one is corruption.
//!
//! A payload is a sequence of [`Entry`]s, each a tag byte and its fields; integers are
//! little-endian `i64`, strings and byte strings a `u32` length then the bytes.

use std::io::Write;

use super::{KeyValue, Revision, StoreError, WatchEvent};

/// Bytes of a frame header (length + CRC).
pub const FRAME_HEADER: usize = 8;

/// Frames larger than this are never written; a header claiming more is treated as
/// garbage.
pub const MAX_FRAME: usize = 1 << 30;

/// One logical record of the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// A create or update of `kv.key` at `kv.mod_revision`.
    Put(KeyValue),
    /// A delete of `key` at `revision`.
    Delete { key: String, revision: Revision },
    /// History below `revision` was dropped.
    Compact { revision: Revision },
    /// First entry of a snapshot file: the state below is as of `revision`, compacted
    /// at `compacted`.
    SnapshotHeader {
        revision: Revision,
        compacted: Revision,
    },
    /// A live key in a snapshot's base state (no watch event).
    BaseKv(KeyValue),
    /// A watch event kept in history whose effect is already in the base state.
    HistoryEvent(WatchEvent),
}

const TAG_PUT: u8 = 1;
const TAG_DELETE: u8 = 2;
const TAG_COMPACT: u8 = 3;
const TAG_SNAPSHOT: u8 = 4;
const TAG_BASE_KV: u8 = 5;
const TAG_HISTORY_PUT: u8 = 6;
const TAG_HISTORY_DELETE: u8 = 7;

const CRC_TABLE: [u32; 256] = make_crc_table();

const fn make_crc_table() -> [u32; 256] {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
            k += 1;
        }
        table[i] = c;
        i += 1;
    }
    table
}

/// IEEE CRC-32 (the zlib/PNG one).
pub fn crc32(data: &[u8]) -> u32 {
    let mut c = 0xFFFF_FFFFu32;
    for b in data {
        c = CRC_TABLE[((c ^ u32::from(*b)) & 0xFF) as usize] ^ (c >> 8);
    }
    c ^ 0xFFFF_FFFF
}

/// Appends one frame holding `payload` to `out`.
pub fn write_frame(out: &mut impl Write, payload: &[u8]) -> std::io::Result<usize> {
    let len = u32::try_from(payload.len())
        .ok()
        .filter(|l| (*l as usize) <= MAX_FRAME)
        .ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "log record too large")
        })?;
    let mut header = [0u8; FRAME_HEADER];
    header[..4].copy_from_slice(&len.to_le_bytes());
    header[4..].copy_from_slice(&crc32(payload).to_le_bytes());
    out.write_all(&header)?;
    out.write_all(payload)?;
    Ok(FRAME_HEADER + payload.len())
}

/// What parsing a log file found.
#[derive(Debug)]
pub struct ParsedLog<'a> {
    /// Payloads of the valid frames, in order.
    pub payloads: Vec<&'a [u8]>,
    /// Length of the valid prefix; bytes after it are a torn tail.
    pub valid_len: usize,
}

enum Frame<'a> {
    Valid(&'a [u8], usize),
    BadCrc(usize),
    Torn,
}

fn frame_at(data: &[u8], pos: usize) -> Frame<'_> {
    let rest = &data[pos..];
    if rest.len() < FRAME_HEADER {
        return Frame::Torn;
    }
    let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
    let crc = u32::from_le_bytes([rest[4], rest[5], rest[6], rest[7]]);
    if len > MAX_FRAME || rest.len() - FRAME_HEADER < len {
        return Frame::Torn;
    }
    let payload = &rest[FRAME_HEADER..FRAME_HEADER + len];
    if crc32(payload) == crc {
        Frame::Valid(payload, FRAME_HEADER + len)
    } else {
        Frame::BadCrc(FRAME_HEADER + len)
    }
}

/// Splits a log file into frames, telling a torn tail from corruption.
pub fn parse_frames(data: &[u8]) -> Result<ParsedLog<'_>, StoreError> {
    let mut payloads = Vec::new();
    let mut pos = 0;
    while pos < data.len() {
        match frame_at(data, pos) {
            Frame::Valid(payload, size) => {
                payloads.push(payload);
                pos += size;
            }
            Frame::BadCrc(size) => {
                // A crash tears only the last frame; a valid frame after a bad one means
                // the bad one was damaged in place.
                let next = pos + size;
                if next < data.len() && matches!(frame_at(data, next), Frame::Valid(..)) {
                    return Err(StoreError::Corrupt(format!(
                        "log record at byte {pos} fails its checksum"
                    )));
                }
                break;
            }
            Frame::Torn => break,
        }
    }
    Ok(ParsedLog {
        payloads,
        valid_len: pos,
    })
}

/// Serializes entries into a payload.
#[derive(Debug, Default)]
pub struct Encoder {
    buf: Vec<u8>,
}

impl Encoder {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn len(&self) -> usize {
        self.buf.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    pub fn finish(self) -> Vec<u8> {
        self.buf
    }

    fn i64(&mut self, v: i64) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }

    fn bytes(&mut self, b: &[u8]) {
        // Keys and values are far below 4 GiB: frames are capped at MAX_FRAME.
        self.buf.extend_from_slice(&(b.len() as u32).to_le_bytes());
        self.buf.extend_from_slice(b);
    }

    fn kv(&mut self, kv: &KeyValue) {
        self.i64(kv.create_revision);
        self.i64(kv.mod_revision);
        self.i64(kv.version);
        self.bytes(kv.key.as_bytes());
        self.bytes(&kv.value);
    }

    pub fn entry(&mut self, entry: &Entry) {
        match entry {
            Entry::Put(kv) => {
                self.buf.push(TAG_PUT);
                self.kv(kv);
            }
            Entry::Delete { key, revision } => {
                self.buf.push(TAG_DELETE);
                self.i64(*revision);
                self.bytes(key.as_bytes());
            }
            Entry::Compact { revision } => {
                self.buf.push(TAG_COMPACT);
                self.i64(*revision);
            }
            Entry::SnapshotHeader {
                revision,
                compacted,
            } => {
                self.buf.push(TAG_SNAPSHOT);
                self.i64(*revision);
                self.i64(*compacted);
            }
            Entry::BaseKv(kv) => {
                self.buf.push(TAG_BASE_KV);
                self.kv(kv);
            }
            Entry::HistoryEvent(WatchEvent::Put { kv, prev }) => {
                self.buf.push(TAG_HISTORY_PUT);
                self.kv(kv);
                match prev {
                    Some(prev) => {
                        self.buf.push(1);
                        self.kv(prev);
                    }
                    None => self.buf.push(0),
                }
            }
            Entry::HistoryEvent(WatchEvent::Delete { prev, revision }) => {
                self.buf.push(TAG_HISTORY_DELETE);
                self.i64(*revision);
                self.kv(prev);
            }
            // Progress is never stored.
            Entry::HistoryEvent(WatchEvent::Progress { .. }) => {}
        }
    }
}

/// Reads entries back out of a payload.
pub struct Decoder<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Decoder<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Self { data, pos: 0 }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], StoreError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|e| *e <= self.data.len())
            .ok_or_else(|| {
                StoreError::Corrupt(format!("log entry truncated at payload byte {}", self.pos))
            })?;
        let s = &self.data[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn u8(&mut self) -> Result<u8, StoreError> {
        Ok(self.take(1)?[0])
    }

    fn i64(&mut self) -> Result<i64, StoreError> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(i64::from_le_bytes(a))
    }

    fn bytes(&mut self) -> Result<&'a [u8], StoreError> {
        let b = self.take(4)?;
        let len = u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize;
        self.take(len)
    }

    fn string(&mut self) -> Result<String, StoreError> {
        let b = self.bytes()?;
        String::from_utf8(b.to_vec())
            .map_err(|_| StoreError::Corrupt("log key is not UTF-8".into()))
    }

    fn kv(&mut self) -> Result<KeyValue, StoreError> {
        let create_revision = self.i64()?;
        let mod_revision = self.i64()?;
        let version = self.i64()?;
        let key = self.string()?;
        let value = self.bytes()?.to_vec();
        Ok(KeyValue {
            key,
            value,
            create_revision,
            mod_revision,
            version,
        })
    }

    /// The next entry, or `None` at the end of the payload.
    pub fn next_entry(&mut self) -> Result<Option<Entry>, StoreError> {
        if self.pos >= self.data.len() {
            return Ok(None);
        }
        let entry = match self.u8()? {
            TAG_PUT => Entry::Put(self.kv()?),
            TAG_DELETE => {
                let revision = self.i64()?;
                Entry::Delete {
                    key: self.string()?,
                    revision,
                }
            }
            TAG_COMPACT => Entry::Compact {
                revision: self.i64()?,
            },
            TAG_SNAPSHOT => {
                let revision = self.i64()?;
                Entry::SnapshotHeader {
                    revision,
                    compacted: self.i64()?,
                }
            }
            TAG_BASE_KV => Entry::BaseKv(self.kv()?),
            TAG_HISTORY_PUT => {
                let kv = self.kv()?;
                let prev = match self.u8()? {
                    0 => None,
                    _ => Some(self.kv()?),
                };
                Entry::HistoryEvent(WatchEvent::Put { kv, prev })
            }
            TAG_HISTORY_DELETE => {
                let revision = self.i64()?;
                Entry::HistoryEvent(WatchEvent::Delete {
                    prev: self.kv()?,
                    revision,
                })
            }
            tag => return Err(StoreError::Corrupt(format!("unknown log entry tag {tag}"))),
        };
        Ok(Some(entry))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(key: &str, rev: i64) -> KeyValue {
        KeyValue {
            key: key.into(),
            value: b"v".to_vec(),
            create_revision: rev,
            mod_revision: rev,
            version: 1,
        }
    }

    #[test]
    fn crc_matches_reference() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }

    #[test]
    fn entries_round_trip() {
        let entries = vec![
            Entry::Put(kv("/a", 2)),
            Entry::Delete {
                key: "/a".into(),
                revision: 3,
            },
            Entry::Compact { revision: 3 },
            Entry::SnapshotHeader {
                revision: 3,
                compacted: 3,
            },
            Entry::BaseKv(kv("/b", 2)),
            Entry::HistoryEvent(WatchEvent::Put {
                kv: kv("/c", 4),
                prev: Some(kv("/c", 1)),
            }),
            Entry::HistoryEvent(WatchEvent::Delete {
                prev: kv("/d", 1),
                revision: 5,
            }),
        ];
        let mut enc = Encoder::new();
        for e in &entries {
            enc.entry(e);
        }
        let payload = enc.finish();
        let mut dec = Decoder::new(&payload);
        let mut back = Vec::new();
        while let Ok(Some(e)) = dec.next_entry() {
            back.push(e);
        }
        assert_eq!(back, entries);
    }

    #[test]
    fn torn_tail_and_corruption() {
        let mut file = Vec::new();
        for p in [b"one".as_slice(), b"two", b"three"] {
            let _ = write_frame(&mut file, p);
        }
        let full = file.len();
        // Torn: the last frame is cut short.
        let parsed = parse_frames(&file[..full - 2]).map(|p| (p.payloads.len(), p.valid_len));
        assert!(matches!(parsed, Ok((2, 22))), "{parsed:?}");
        // Garbage appended after valid frames.
        let mut garbage = file.clone();
        garbage.extend_from_slice(&[0xde, 0xad, 0xbe, 0xef, 1, 2, 3]);
        let parsed = parse_frames(&garbage).map(|p| (p.payloads.len(), p.valid_len));
        assert!(matches!(parsed, Ok((3, v)) if v == full), "{parsed:?}");
        // A flipped byte in the middle frame is corruption.
        let mut bad = file.clone();
        bad[FRAME_HEADER + 3 + FRAME_HEADER] ^= 0xff;
        assert!(matches!(parse_frames(&bad), Err(StoreError::Corrupt(_))));
        // A flipped byte in the last frame is a torn tail.
        let mut last = file.clone();
        last[full - 1] ^= 0xff;
        let parsed = parse_frames(&last).map(|p| p.payloads.len());
        assert!(matches!(parsed, Ok(2)));
    }
}
