//! Content negotiation: decoding request bodies (JSON, YAML) and choosing the response
//! form a client asked for (an object, a `Table`, partial object metadata, JSON or YAML).

use http::HeaderMap;
use serde_json::Value;

use crate::errors::ApiError;

/// The largest request body accepted (Kubernetes' limit is 3 MiB for most writes).
pub const MAX_BODY_BYTES: usize = 3 * 1024 * 1024;

/// Serialisation of a response body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    Yaml,
}

/// What shape of object the client asked for (`as=` in the Accept header).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    Object,
    Table,
    PartialObjectMetadata,
}

/// The client's choice of response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Negotiated {
    pub format: Format,
    pub shape: Shape,
}

/// Picks the first acceptable media type of an Accept header, as Kubernetes does.
pub fn negotiate(headers: &HeaderMap) -> Result<Negotiated, ApiError> {
    let accept = headers
        .get(http::header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .trim();
    if accept.is_empty() {
        return Ok(Negotiated { format: Format::Json, shape: Shape::Object });
    }
    for candidate in accept.split(',') {
        let mut parts = candidate.split(';').map(str::trim);
        let media = parts.next().unwrap_or("").to_ascii_lowercase();
        let mut as_ = None;
        let mut group = None;
        let mut version = None;
        for p in parts {
            if let Some((k, v)) = p.split_once('=') {
                match k.trim() {
                    "as" => as_ = Some(v.trim().to_string()),
                    "g" => group = Some(v.trim().to_string()),
                    "v" => version = Some(v.trim().to_string()),
                    _ => {}
                }
            }
        }
        let format = match media.as_str() {
            "application/json" | "application/*" | "*/*" | "application/json-seq" => Format::Json,
            "application/yaml" => Format::Yaml,
            // Protobuf responses are not produced; clients that accept it also accept JSON.
            _ => continue,
        };
        let shape = match (as_.as_deref(), group.as_deref(), version.as_deref()) {
            (None, _, _) => Shape::Object,
            (Some("Table"), Some("meta.k8s.io"), Some("v1" | "v1beta1")) => Shape::Table,
            (Some("PartialObjectMetadata" | "PartialObjectMetadataList"), Some("meta.k8s.io"), Some("v1" | "v1beta1")) => {
                Shape::PartialObjectMetadata
            }
            _ => continue,
        };
        return Ok(Negotiated { format, shape });
    }
    Err(ApiError::not_acceptable(accept))
}

/// The media type of a request body.
pub fn content_type(headers: &HeaderMap) -> String {
    headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or("").trim().to_ascii_lowercase())
        .unwrap_or_default()
}

/// Decodes an object body in JSON or YAML.
pub fn decode_object(headers: &HeaderMap, body: &[u8]) -> Result<Value, ApiError> {
    if body.len() > MAX_BODY_BYTES {
        return Err(ApiError::too_large(format!("request body of {} bytes is over the limit of {MAX_BODY_BYTES}", body.len())));
    }
    let ct = content_type(headers);
    let value = match ct.as_str() {
        "" | "application/json" | "*/*" => decode_json(body)?,
        "application/yaml" | "application/x-yaml" | "text/yaml" => decode_yaml(body)?,
        "application/vnd.kubernetes.protobuf" => crate::protobuf::decode(body).map_err(|e| ApiError::bad_request(e.to_string()))?,
        other => return Err(ApiError::unsupported_media_type(other)),
    };
    if !value.is_object() {
        return Err(ApiError::bad_request("the request body must be an object"));
    }
    Ok(value)
}

pub fn decode_json(body: &[u8]) -> Result<Value, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("error decoding request body as JSON: {e}")))
}

/// The deepest flow nesting (`[`, `{`) a YAML body may have. The YAML parser's work per
/// token grows with the flow levels opened on the current line (libyaml's simple-key
/// bookkeeping): 100k `[` took minutes. Decoding refuses more than 128 levels anyway.
const MAX_YAML_FLOW_DEPTH: usize = 256;

pub fn decode_yaml(body: &[u8]) -> Result<Value, ApiError> {
    let text = std::str::from_utf8(body).map_err(|e| ApiError::bad_request(format!("request body is not UTF-8: {e}")))?;
    // JSON is YAML, and most YAML bodies are JSON (kubectl's server-side apply): the
    // JSON parser reads them faster, whatever braces their strings hold.
    if text.trim_start().starts_with('{') {
        if let Ok(value) = serde_json::from_str(text) {
            return Ok(value);
        }
    }
    if flow_depth_exceeds(text.as_bytes(), MAX_YAML_FLOW_DEPTH) {
        return Err(ApiError::bad_request(format!("error decoding request body as YAML: nested deeper than {MAX_YAML_FLOW_DEPTH} levels")));
    }
    serde_yaml_ng::from_str(text).map_err(|e| ApiError::bad_request(format!("error decoding request body as YAML: {e}")))
}

/// Whether more than `max` `[`/`{` are open at some point of `text`, counting every
/// bracket, quoted or not. (Closing brackets inside strings can hide levels from this
/// count, but then each level costs a string too, and such documents measured at a few
/// times the parse time of ordinary ones, not the hundreds of times of bare brackets.)
fn flow_depth_exceeds(text: &[u8], max: usize) -> bool {
    let mut depth = 0usize;
    for &c in text {
        match c {
            b'[' | b'{' => {
                depth += 1;
                if depth > max {
                    return true;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

/// Serialises a response body in the negotiated format.
pub fn encode(format: Format, value: &Value) -> (Vec<u8>, &'static str) {
    match format {
        Format::Json => (serde_json::to_vec(value).unwrap_or_default(), "application/json"),
        Format::Yaml => (serde_yaml_ng::to_string(value).unwrap_or_default().into_bytes(), "application/yaml"),
    }
}

/// Parses a Go duration string (`1h30m`, `1.5s`, `300ms`, `-2m`) into nanoseconds.
pub fn parse_go_duration(s: &str) -> Option<i64> {
    let (neg, mut rest) = match s.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, s.strip_prefix('+').unwrap_or(s)),
    };
    if rest == "0" {
        return Some(0);
    }
    if rest.is_empty() {
        return None;
    }
    let mut total: f64 = 0.0;
    while !rest.is_empty() {
        let num_end = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
        let digits = &rest[..num_end];
        if digits.is_empty() || digits == "." || digits.matches('.').count() > 1 {
            return None;
        }
        let number: f64 = digits.parse().ok()?;
        rest = &rest[num_end..];
        let unit_end = rest.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(rest.len());
        let scale = match &rest[..unit_end] {
            "ns" => 1.0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return None,
        };
        rest = &rest[unit_end..];
        total += number * scale;
    }
    // Go's durations are int64 nanoseconds (about 292 years).
    if !total.is_finite() || total > i64::MAX as f64 {
        return None;
    }
    let nanos = total.round() as i64;
    Some(if neg { -nanos } else { nanos })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accept(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(http::header::ACCEPT, v.parse().expect("header"));
        h
    }

    #[test]
    fn kubectl_get_asks_for_a_table() {
        let n = negotiate(&accept("application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json")).expect("ok");
        assert_eq!(n, Negotiated { format: Format::Json, shape: Shape::Table });
    }

    #[test]
    fn protobuf_first_falls_back_to_json() {
        let n = negotiate(&accept("application/vnd.kubernetes.protobuf, */*")).expect("ok");
        assert_eq!(n.format, Format::Json);
        assert_eq!(n.shape, Shape::Object);
    }

    #[test]
    fn deeply_nested_yaml_is_refused_quickly() {
        let started = std::time::Instant::now();
        for body in ["[".repeat(100_000), "{\"a\":".repeat(100_000), format!("a: {}", "[".repeat(300))] {
            let err = decode_yaml(body.as_bytes()).expect_err("too deep");
            assert_eq!(err.code, 400);
        }
        assert!(started.elapsed() < std::time::Duration::from_secs(2), "took {:?}", started.elapsed());
        // JSON with braces in its strings is read as JSON.
        let json = format!("{{\"metadata\": {{\"annotations\": {{\"a\": \"{}\"}}}}}}", "{".repeat(1000));
        assert!(decode_yaml(json.as_bytes()).expect("JSON is YAML").is_object());
        assert_eq!(decode_yaml(b"a: [1, {b: c}]\n").expect("yaml"), serde_json::json!({"a": [1, {"b": "c"}]}));
    }

    #[test]
    fn unknown_only_is_not_acceptable() {
        let err = negotiate(&accept("text/html")).expect_err("406");
        assert_eq!(err.code, 406);
    }
}
