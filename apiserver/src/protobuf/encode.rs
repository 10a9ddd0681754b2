//! JSON → Kubernetes protobuf, the inverse of [`super::decode`], driven by the same field
//! table: an object's JSON becomes the `k8s\0`-framed `runtime.Unknown` envelope a Go
//! client would send or receive. Fields are written in field-number order and map entries
//! sorted by key, as gogo-protobuf writes them; absent and `null` fields are not written
//! (a Go reader decodes them to the same zero value).

use std::collections::BTreeMap;

use base64::Engine as _;
use serde_json::Value;

use super::schema_types::{Card, Field, Msg, Special, Ty};
use super::{lookup_kind, message, ProtobufError, MAGIC, MAX_DEPTH};

const LEN: u64 = 2;
const VARINT: u64 = 0;
const FIXED64: u64 = 1;

/// Encodes an object (with `apiVersion` and `kind`) as a `k8s\0`-framed protobuf body.
pub fn encode(value: &Value) -> Result<Vec<u8>, ProtobufError> {
    let api_version = value.get("apiVersion").and_then(Value::as_str).unwrap_or_default();
    let kind = value.get("kind").and_then(Value::as_str).unwrap_or_default();
    if api_version.is_empty() || kind.is_empty() {
        return Err(ProtobufError::MissingTypeMeta);
    }
    let idx = lookup_kind(api_version, kind)
        .ok_or_else(|| ProtobufError::UnknownKind { api_version: api_version.to_string(), kind: kind.to_string() })?;
    let raw = encode_message(idx, value, 1)?;
    let mut type_meta = Vec::new();
    put_len(&mut type_meta, 1, api_version.as_bytes());
    put_len(&mut type_meta, 2, kind.as_bytes());
    let mut out = MAGIC.to_vec();
    put_len(&mut out, 1, &type_meta);
    put_len(&mut out, 2, &raw);
    put_len(&mut out, 3, b"");
    put_len(&mut out, 4, b"");
    Ok(out)
}

#[cfg(test)]
pub(super) fn encode_message_for_test(idx: u16, value: &Value) -> Result<Vec<u8>, ProtobufError> {
    encode_message(idx, value, 0)
}

pub(super) fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_key(out: &mut Vec<u8>, tag: u32, wire_type: u64) {
    put_varint(out, (u64::from(tag) << 3) | wire_type);
}

fn put_len(out: &mut Vec<u8>, tag: u32, bytes: &[u8]) {
    put_key(out, tag, LEN);
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

fn wrong(msg: &Msg, field: &str, expected: &'static str) -> ProtobufError {
    ProtobufError::JsonType { message: msg.name, field: field.to_string(), expected }
}

fn encode_message(idx: u16, value: &Value, depth: usize) -> Result<Vec<u8>, ProtobufError> {
    if depth > MAX_DEPTH {
        return Err(ProtobufError::TooDeep);
    }
    let msg = message(idx)?;
    let mut out = Vec::new();
    if value.is_null() {
        return Ok(out);
    }
    let field = |tag: u32| msg.fields.iter().find(|f| f.tag == tag);
    match msg.special {
        Special::Object => {
            let obj = value.as_object().ok_or_else(|| wrong(msg, "", "an object"))?;
            let mut fields: Vec<&Field> = msg.fields.iter().collect();
            fields.sort_by_key(|f| f.tag);
            for f in fields {
                if f.has(super::INLINE) {
                    if let Ty::Msg(child) = f.ty {
                        put_len(&mut out, f.tag, &encode_message(child, value, depth + 1)?);
                    }
                    continue;
                }
                match obj.get(f.json) {
                    None | Some(Value::Null) => {}
                    Some(v) => encode_field(msg, f, v, depth, &mut out)?,
                }
            }
        }
        Special::Time | Special::MicroTime => {
            let s = value.as_str().ok_or_else(|| wrong(msg, "", "an RFC 3339 time"))?;
            let t = chrono::DateTime::parse_from_rfc3339(s).map_err(|_| wrong(msg, "", "an RFC 3339 time"))?;
            put_key(&mut out, 1, VARINT);
            put_varint(&mut out, t.timestamp() as u64);
            let nanos = if msg.special == Special::MicroTime { t.timestamp_subsec_micros() * 1000 } else { 0 };
            put_key(&mut out, 2, VARINT);
            put_varint(&mut out, u64::from(nanos));
        }
        Special::Duration => {
            let s = value.as_str().ok_or_else(|| wrong(msg, "", "a duration"))?;
            let nanos = crate::codec::parse_go_duration(s).ok_or_else(|| wrong(msg, "", "a duration"))?;
            put_key(&mut out, 1, VARINT);
            put_varint(&mut out, nanos as u64);
        }
        Special::RawJson => {
            let raw = serde_json::to_vec(value).map_err(|e| ProtobufError::BadRawJson(msg.name, e))?;
            put_len(&mut out, 1, &raw);
        }
        Special::Quantity => match value {
            Value::String(s) => put_len(&mut out, 1, s.as_bytes()),
            Value::Number(n) => put_len(&mut out, 1, n.to_string().as_bytes()),
            _ => return Err(wrong(msg, "", "a quantity")),
        },
        Special::IntOrString => {
            let (kind, int, text) = match value {
                Value::Number(n) => {
                    let i = n.as_i64().and_then(|i| i32::try_from(i).ok()).ok_or_else(|| wrong(msg, "", "an int32"))?;
                    (0u64, i, "")
                }
                Value::String(s) => (1, 0, s.as_str()),
                _ => return Err(wrong(msg, "", "an integer or a string")),
            };
            put_key(&mut out, 1, VARINT);
            put_varint(&mut out, kind);
            put_key(&mut out, 2, VARINT);
            put_varint(&mut out, i64::from(int) as u64);
            put_len(&mut out, 3, text.as_bytes());
        }
        Special::Items => {
            if let Some(f) = field(1) {
                encode_field(msg, f, value, depth, &mut out)?;
            }
        }
        Special::SchemaOrArray | Special::SchemaOrStringArray => {
            let tag = if value.is_array() { 2 } else { 1 };
            if let Some(f) = field(tag) {
                encode_field(msg, f, value, depth, &mut out)?;
            }
        }
        Special::SchemaOrBool => {
            put_key(&mut out, 1, VARINT);
            match value {
                Value::Bool(b) => put_varint(&mut out, u64::from(*b)),
                _ => {
                    put_varint(&mut out, 1);
                    if let Some(f) = field(2) {
                        encode_field(msg, f, value, depth, &mut out)?;
                    }
                }
            }
        }
    }
    Ok(out)
}

fn encode_field(msg: &Msg, f: &Field, v: &Value, depth: usize, out: &mut Vec<u8>) -> Result<(), ProtobufError> {
    match f.card {
        Card::One => encode_single(msg, f, v, depth, out),
        Card::Repeated => {
            let items = v.as_array().ok_or_else(|| wrong(msg, f.json, "an array"))?;
            for item in items {
                encode_single(msg, f, item, depth, out)?;
            }
            Ok(())
        }
        Card::Map => {
            let entries = v.as_object().ok_or_else(|| wrong(msg, f.json, "an object"))?;
            let sorted: BTreeMap<&String, &Value> = entries.iter().collect();
            for (k, val) in sorted {
                let mut entry = Vec::new();
                put_len(&mut entry, 1, k.as_bytes());
                if !val.is_null() {
                    encode_single(msg, &Field { tag: 2, json: f.json, ty: f.ty, card: Card::One, flags: 0 }, val, depth, &mut entry)?;
                }
                put_len(out, f.tag, &entry);
            }
            Ok(())
        }
    }
}

fn encode_single(msg: &Msg, f: &Field, v: &Value, depth: usize, out: &mut Vec<u8>) -> Result<(), ProtobufError> {
    match f.ty {
        Ty::String => put_len(out, f.tag, v.as_str().ok_or_else(|| wrong(msg, f.json, "a string"))?.as_bytes()),
        Ty::Bytes => {
            let s = v.as_str().ok_or_else(|| wrong(msg, f.json, "a base64 string"))?;
            let b = base64::engine::general_purpose::STANDARD.decode(s).map_err(|_| wrong(msg, f.json, "a base64 string"))?;
            put_len(out, f.tag, &b);
        }
        Ty::Int32 => {
            let i = integer(v).and_then(|i| i32::try_from(i).ok()).ok_or_else(|| wrong(msg, f.json, "an int32"))?;
            put_key(out, f.tag, VARINT);
            put_varint(out, i64::from(i) as u64);
        }
        Ty::Int64 => {
            let i = integer(v).ok_or_else(|| wrong(msg, f.json, "an int64"))?;
            put_key(out, f.tag, VARINT);
            put_varint(out, i as u64);
        }
        Ty::Bool => {
            let b = v.as_bool().ok_or_else(|| wrong(msg, f.json, "a boolean"))?;
            put_key(out, f.tag, VARINT);
            put_varint(out, u64::from(b));
        }
        Ty::Double => {
            let x = v.as_f64().ok_or_else(|| wrong(msg, f.json, "a number"))?;
            put_key(out, f.tag, FIXED64);
            out.extend_from_slice(&x.to_bits().to_le_bytes());
        }
        Ty::Msg(child) => put_len(out, f.tag, &encode_message(child, v, depth + 1)?),
    }
    Ok(())
}

/// An integral JSON number (Go accepts `3.0` for an int field too).
fn integer(v: &Value) -> Option<i64> {
    v.as_i64().or_else(|| v.as_f64().filter(|x| x.fract() == 0.0 && x.abs() < 9.2e18).map(|x| x as i64))
}

