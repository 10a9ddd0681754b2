//! JSON output as kubectl prints it (Go's `json.MarshalIndent` of a map): keys sorted
//! bytewise, four-space indents, and `<`, `>`, `&` escaped as `\u003c`, `\u003e`, `\u0026`.

use serde_json::Value;

/// `value` as indented JSON, with a trailing newline.
pub fn to_json(value: &Value) -> String {
    let mut out = String::new();
    write(&mut out, value, 0, true);
    out.push('\n');
    out
}

/// [`to_json`] keeping the keys in the value's order (Go's encoding of a typed struct,
/// as the generators of `kubectl create --dry-run=client -o json` print).
pub fn to_json_in_order(value: &Value) -> String {
    let mut out = String::new();
    write(&mut out, value, 0, false);
    out.push('\n');
    out
}

fn write(out: &mut String, value: &Value, indent: usize, sort: bool) {
    match value {
        Value::Object(m) if m.is_empty() => out.push_str("{}"),
        Value::Array(a) if a.is_empty() => out.push_str("[]"),
        Value::Object(m) => {
            let mut entries: Vec<_> = m.iter().collect();
            if sort {
                entries.sort_by(|a, b| a.0.cmp(b.0));
            }
            out.push_str("{\n");
            for (i, (k, v)) in entries.iter().enumerate() {
                out.extend(std::iter::repeat_n(' ', indent + 4));
                write_string(out, k);
                out.push_str(": ");
                write(out, v, indent + 4, sort);
                if i + 1 < entries.len() {
                    out.push(',');
                }
                out.push('\n');
            }
            out.extend(std::iter::repeat_n(' ', indent));
            out.push('}');
        }
        Value::Array(a) => {
            out.push_str("[\n");
            for (i, v) in a.iter().enumerate() {
                out.extend(std::iter::repeat_n(' ', indent + 4));
                write(out, v, indent + 4, sort);
                if i + 1 < a.len() {
                    out.push(',');
                }
                out.push('\n');
            }
            out.extend(std::iter::repeat_n(' ', indent));
            out.push(']');
        }
        Value::String(s) => write_string(out, s),
        other => out.push_str(&other.to_string()),
    }
}

/// A JSON string with Go's escaping.
pub fn write_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '<' | '>' | '&' | '\u{2028}' | '\u{2029}' => {
                out.push_str(&format!("\\u{:04x}", c as u32))
            }
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prints_like_go() {
        let v = serde_json::json!({"b": [1, {}], "a": "x<&>", "c": []});
        assert_eq!(to_json(&v), "{\n    \"a\": \"x\\u003c\\u0026\\u003e\",\n    \"b\": [\n        1,\n        {}\n    ],\n    \"c\": []\n}\n");
    }
}
