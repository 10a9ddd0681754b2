//! Serving stored objects without decoding them. A stored object is the compact JSON
//! `serde_json` wrote, without `metadata.resourceVersion` (that is the store's revision);
//! adding the revision back as metadata's last field gives byte for byte what decoding,
//! setting the field and encoding again would, at the cost of one scan of the bytes.

use crate::storage::Revision;

/// A forward-only scanner over JSON that checks only what it needs to find its way.
struct Scanner<'a> {
    b: &'a [u8],
    i: usize,
}

impl<'a> Scanner<'a> {
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    fn ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.i += 1;
        }
    }

    fn eat(&mut self, byte: u8) -> Option<()> {
        self.ws();
        (self.peek()? == byte).then(|| self.i += 1)
    }

    /// A string; returns its raw contents (escapes left as they are).
    fn string(&mut self) -> Option<&'a [u8]> {
        self.eat(b'"')?;
        let (b, start) = (self.b, self.i);
        loop {
            match self.peek()? {
                b'"' => {
                    self.i += 1;
                    return Some(&b[start..self.i - 1]);
                }
                b'\\' => self.i += 2,
                _ => self.i += 1,
            }
        }
    }

    /// Skips one value of any type.
    fn value(&mut self) -> Option<()> {
        self.ws();
        match self.peek()? {
            b'"' => self.string().map(|_| ()),
            b'{' | b'[' => {
                let mut depth = 0usize;
                loop {
                    match self.peek()? {
                        b'"' => {
                            self.string()?;
                            continue;
                        }
                        b'{' | b'[' => depth += 1,
                        b'}' | b']' => {
                            depth -= 1;
                            if depth == 0 {
                                self.i += 1;
                                return Some(());
                            }
                        }
                        _ => {}
                    }
                    self.i += 1;
                }
            }
            _ => {
                let start = self.i;
                while !matches!(self.peek(), None | Some(b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r')) {
                    self.i += 1;
                }
                (self.i > start).then_some(())
            }
        }
    }

    /// Walks the members of an object whose `{` was just eaten, calling `member` with each
    /// key once the scanner stands before its value; `member` must consume the value.
    /// Returns the index of the closing `}`.
    fn members(&mut self, mut member: impl FnMut(&mut Self, &'a [u8]) -> Option<()>) -> Option<usize> {
        self.ws();
        if self.peek()? == b'}' {
            return Some(self.i);
        }
        loop {
            let key = self.string()?;
            self.eat(b':')?;
            member(self, key)?;
            self.ws();
            match self.peek()? {
                b',' => self.i += 1,
                b'}' => return Some(self.i),
                _ => return None,
            }
            self.ws();
        }
    }
}

/// Where the top-level `metadata` object of `json` closes, and whether it is empty;
/// `None` if `json` is not an object with a metadata object, or if metadata already has
/// a resourceVersion.
fn metadata_close(json: &[u8]) -> Option<(usize, bool)> {
    let mut s = Scanner { b: json, i: 0 };
    s.eat(b'{')?;
    let mut found = None;
    s.members(|s, key| {
        if key != b"metadata" || found.is_some() {
            return s.value();
        }
        s.eat(b'{')?;
        let open = s.i;
        let mut has_rv = false;
        let close = s.members(|s, key| {
            has_rv |= key == b"resourceVersion";
            s.value()
        })?;
        s.i = close + 1;
        if !has_rv {
            found = Some((close, json[open..close].iter().all(u8::is_ascii_whitespace)));
        }
        Some(())
    })?;
    found
}

/// Appends `stored` to `out` with `"resourceVersion":"<revision>"` as the last field of
/// its metadata. False (and nothing appended) if the bytes are not shaped for that.
pub fn append_with_resource_version(out: &mut Vec<u8>, stored: &[u8], revision: Revision) -> bool {
    let Some((close, empty)) = metadata_close(stored) else { return false };
    out.extend_from_slice(&stored[..close]);
    if !empty {
        out.push(b',');
    }
    out.extend_from_slice(b"\"resourceVersion\":\"");
    out.extend_from_slice(revision.to_string().as_bytes());
    out.push(b'"');
    out.extend_from_slice(&stored[close..]);
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// What decoding, setting the field and encoding again gives.
    fn slow(stored: &[u8], rev: Revision) -> Vec<u8> {
        let obj = crate::watchcache::decode_stored(stored, rev).expect("decode");
        serde_json::to_vec(&obj).expect("encode")
    }

    #[test]
    fn matches_decoding_and_encoding_again() {
        let objects = [
            json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "a", "labels": {"x": "y"}}, "spec": {"containers": [{"name": "c"}]}}),
            json!({"kind": "Deployment", "spec": {"template": {"metadata": {"labels": {"a": "b"}}}}, "metadata": {"name": "d"}}),
            json!({"metadata": {}, "data": {"k": "quote \" backslash \\ brace } bracket ] unicode é \u{1F600} \n"}}),
            json!({"metadata": {"name": "n", "annotations": {"metadata": "{\"resourceVersion\":\"1\"}"}}, "n": [1, 2.5, -3e10, true, false, null]}),
        ];
        for obj in objects {
            let stored = serde_json::to_vec(&obj).expect("json");
            let mut fast = Vec::new();
            assert!(append_with_resource_version(&mut fast, &stored, 42), "{obj}");
            assert_eq!(String::from_utf8_lossy(&fast), String::from_utf8_lossy(&slow(&stored, 42)));
        }
    }

    #[test]
    fn refuses_what_it_cannot_place_the_field_in() {
        for stored in [&b"[]"[..], b"{\"kind\":\"x\"}", b"{\"metadata\":\"x\"}", b"{\"metadata\":{\"resourceVersion\":\"3\"}}", b"{\"metadata\":{", b"not json"] {
            let mut out = Vec::new();
            assert!(!append_with_resource_version(&mut out, stored, 1), "{}", String::from_utf8_lossy(stored));
            assert!(out.is_empty());
        }
    }
}
