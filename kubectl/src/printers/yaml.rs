//! YAML output as kubectl prints it (Go's yaml.v2 via sigs.k8s.io/yaml): keys sorted in
//! yaml.v2's order, sequences not indented under their key, strings quoted only when
//! plain text would read as something else, `|`/`|-` blocks for multi-line strings and
//! long lines folded after column 80.

use std::cmp::Ordering;

use serde_json::Value;

const BEST_WIDTH: usize = 80;

/// `value` as a YAML document (without the `---` separator).
pub fn to_yaml(value: &Value) -> String {
    let mut out = String::new();
    match value {
        Value::Object(m) if !m.is_empty() => write_mapping(&mut out, value, 0),
        Value::Array(a) if !a.is_empty() => write_sequence(&mut out, value, 0),
        scalar => {
            out.push_str(&scalar_text(scalar, 0, 0));
            out.push('\n');
        }
    }
    out
}

/// yaml.v2's order of mapping keys: letters after other characters, runs of digits
/// compared as numbers.
pub fn key_order(a: &str, b: &str) -> Ordering {
    if let (Ok(x), Ok(y)) = (a.parse::<f64>(), b.parse::<f64>()) {
        if x != y {
            return x.partial_cmp(&y).unwrap_or(Ordering::Equal);
        }
    }
    let ar: Vec<char> = a.chars().collect();
    let br: Vec<char> = b.chars().collect();
    let mut i = 0;
    while i < ar.len() && i < br.len() {
        if ar[i] == br[i] {
            i += 1;
            continue;
        }
        let al = ar[i].is_alphabetic();
        let bl = br[i].is_alphabetic();
        if al && bl {
            return ar[i].cmp(&br[i]);
        }
        if al || bl {
            return if bl {
                Ordering::Less
            } else {
                Ordering::Greater
            };
        }
        let (mut an, mut bn) = (0i64, 0i64);
        if ar[i] == '0' || br[i] == '0' {
            let mut j = i;
            while j > 0 && ar[j - 1].is_ascii_digit() {
                j -= 1;
                if ar[j] != '0' {
                    an = 1;
                    bn = 1;
                    break;
                }
            }
        }
        let mut ai = i;
        while ai < ar.len() && ar[ai].is_ascii_digit() {
            an = an
                .saturating_mul(10)
                .saturating_add(i64::from(ar[ai] as u8 - b'0'));
            ai += 1;
        }
        let mut bi = i;
        while bi < br.len() && br[bi].is_ascii_digit() {
            bn = bn
                .saturating_mul(10)
                .saturating_add(i64::from(br[bi] as u8 - b'0'));
            bi += 1;
        }
        if an != bn {
            return an.cmp(&bn);
        }
        if ai != bi {
            return ai.cmp(&bi);
        }
        return ar[i].cmp(&br[i]);
    }
    ar.len().cmp(&br.len())
}

fn sorted_entries(value: &Value) -> Vec<(&String, &Value)> {
    let mut entries: Vec<(&String, &Value)> = match value {
        Value::Object(m) => m.iter().collect(),
        _ => Vec::new(),
    };
    entries.sort_by(|a, b| key_order(a.0, b.0));
    entries
}

fn write_mapping(out: &mut String, value: &Value, indent: usize) {
    for (i, (key, v)) in sorted_entries(value).into_iter().enumerate() {
        if i > 0 {
            out.extend(std::iter::repeat_n(' ', indent));
        }
        let key_text = scalar_text(&Value::String(key.clone()), indent, 0);
        out.push_str(&key_text);
        out.push(':');
        write_value(out, v, indent, indent + key_text.chars().count() + 1, true);
    }
}

/// Writes a mapping value or sequence item after its `key:` or `-` (the cursor is at
/// `column`), ending with a newline.
fn write_value(out: &mut String, v: &Value, indent: usize, column: usize, in_mapping: bool) {
    match v {
        Value::Object(m) if !m.is_empty() => {
            if in_mapping {
                out.push('\n');
                out.extend(std::iter::repeat_n(' ', indent + 2));
                write_mapping(out, v, indent + 2);
            } else {
                out.push(' ');
                write_mapping(out, v, indent + 2);
            }
        }
        Value::Array(a) if !a.is_empty() => {
            if in_mapping {
                out.push('\n');
                out.extend(std::iter::repeat_n(' ', indent));
                write_sequence(out, v, indent);
            } else {
                out.push(' ');
                write_sequence(out, v, indent + 2);
            }
        }
        Value::String(s) if s.contains('\n') && literal_allowed(s) => {
            out.push(' ');
            write_literal(out, s, indent + 2);
        }
        scalar => {
            out.push(' ');
            out.push_str(&scalar_text(scalar, indent + 2, column + 1));
            out.push('\n');
        }
    }
}

fn write_sequence(out: &mut String, value: &Value, indent: usize) {
    let Value::Array(items) = value else { return };
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.extend(std::iter::repeat_n(' ', indent));
        }
        out.push('-');
        write_value(out, item, indent, indent + 1, false);
    }
}

fn write_literal(out: &mut String, s: &str, indent: usize) {
    out.push('|');
    if s.starts_with(' ') {
        out.push_str(&2.to_string());
    }
    let trailing = s.len() - s.trim_end_matches('\n').len();
    match trailing {
        0 => out.push('-'),
        1 => {}
        _ => out.push('+'),
    }
    out.push('\n');
    let body = if trailing == 0 { s } else { &s[..s.len() - 1] };
    for line in body.split('\n') {
        if !line.is_empty() {
            out.extend(std::iter::repeat_n(' ', indent));
            out.push_str(line);
        }
        out.push('\n');
    }
}

fn literal_allowed(s: &str) -> bool {
    !s.chars().any(|c| is_special(c) && c != '\n')
        && !s.contains(" \n")
        && !s.contains("\n ")
        && !s.starts_with('\n')
}

fn is_special(c: char) -> bool {
    let printable = matches!(c, '\t' | '\n' | '\r' | '\u{85}')
        || (' '..='~').contains(&c)
        || (('\u{a0}'..='\u{d7ff}').contains(&c))
        || (('\u{e000}'..='\u{fffd}').contains(&c) && c != '\u{feff}')
        || c >= '\u{10000}';
    !printable || c == '\t' || c == '\r' || c == '\u{85}'
}

/// A scalar as yaml.v2 writes it; continuation lines of folded text start at `indent`,
/// and the scalar starts at `column`.
fn scalar_text(v: &Value, indent: usize, column: usize) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => string_text(s, indent, column),
        Value::Array(_) => "[]".into(),
        Value::Object(_) => "{}".into(),
    }
}

fn string_text(s: &str, indent: usize, column: usize) -> String {
    if !resolves_to_string(s) {
        return double_quoted(s, indent, column);
    }
    if plain_allowed(s) {
        return folded(s, indent, column, 0);
    }
    if !s.chars().any(is_special) && !s.contains('\n') {
        let escaped = s.replace('\'', "''");
        return format!("'{}'", folded(&escaped, indent, column, 1));
    }
    double_quoted(s, indent, column)
}

/// Breaks text at single spaces once past column 80, as yaml.v2's emitter does.
fn folded(s: &str, indent: usize, column: usize, quote: usize) -> String {
    let mut out = String::new();
    let mut col = column + quote;
    let chars: Vec<char> = s.chars().collect();
    let mut prev_space = false;
    for (i, &c) in chars.iter().enumerate() {
        if c == ' ' {
            let next_space = chars.get(i + 1) == Some(&' ');
            let at_edge = quote > 0 && (i == 0 || i + 1 == chars.len());
            if !prev_space && col > BEST_WIDTH && !next_space && !at_edge {
                out.push('\n');
                out.extend(std::iter::repeat_n(' ', indent));
                col = indent;
                prev_space = true;
                continue;
            }
            prev_space = true;
        } else {
            prev_space = false;
        }
        out.push(c);
        col += 1;
    }
    out
}

fn double_quoted(s: &str, indent: usize, column: usize) -> String {
    let mut out = String::from("\"");
    let mut col = column + 1;
    let chars: Vec<char> = s.chars().collect();
    let mut prev_space = false;
    for (i, &c) in chars.iter().enumerate() {
        let piece = match c {
            '"' => "\\\"".to_string(),
            '\\' => "\\\\".to_string(),
            '\n' => "\\n".to_string(),
            '\t' => "\\t".to_string(),
            '\r' => "\\r".to_string(),
            '\0' => "\\0".to_string(),
            '\u{7}' => "\\a".to_string(),
            '\u{8}' => "\\b".to_string(),
            '\u{b}' => "\\v".to_string(),
            '\u{c}' => "\\f".to_string(),
            '\u{1b}' => "\\e".to_string(),
            '\u{85}' => "\\N".to_string(),
            '\u{a0}' => "\\_".to_string(),
            '\u{2028}' => "\\L".to_string(),
            '\u{2029}' => "\\P".to_string(),
            c if is_special(c) => {
                let n = c as u32;
                if n <= 0xff {
                    format!("\\x{n:02X}")
                } else if n <= 0xffff {
                    format!("\\u{n:04X}")
                } else {
                    format!("\\U{n:08X}")
                }
            }
            c => c.to_string(),
        };
        if c == ' ' {
            if !prev_space && col > BEST_WIDTH && i != 0 && i + 1 != chars.len() {
                out.push('\n');
                out.extend(std::iter::repeat_n(' ', indent));
                col = indent;
                if chars.get(i + 1) == Some(&' ') {
                    out.push('\\');
                    col += 1;
                }
                prev_space = true;
                continue;
            }
            prev_space = true;
        } else {
            prev_space = false;
        }
        col += piece.chars().count();
        out.push_str(&piece);
    }
    out.push('"');
    out
}

/// Whether yaml.v2 reads `s`, unquoted, back as a string (not a bool, number, null or
/// timestamp).
fn resolves_to_string(s: &str) -> bool {
    if s.is_empty() {
        return false;
    }
    const SPECIAL: &[&str] = &[
        "~", "null", "Null", "NULL", "y", "Y", "yes", "Yes", "YES", "n", "N", "no", "No", "NO",
        "true", "True", "TRUE", "false", "False", "FALSE", "on", "On", "ON", "off", "Off", "OFF",
        ".nan", ".NaN", ".NAN", ".inf", ".Inf", ".INF", "+.inf", "+.Inf", "+.INF", "-.inf",
        "-.Inf", "-.INF", "<<",
    ];
    if SPECIAL.contains(&s) {
        return false;
    }
    let first = s.chars().next().unwrap_or(' ');
    if !(first.is_ascii_digit() || matches!(first, '+' | '-' | '.')) {
        return true;
    }
    let plain = s.replace('_', "");
    if parse_go_int(&plain)
        || plain
            .parse::<f64>()
            .is_ok_and(|_| !plain.contains(['i', 'I', 'n', 'N']))
    {
        return false;
    }
    if is_base60_float(s) {
        return false;
    }
    !is_timestamp(s)
}

fn parse_go_int(s: &str) -> bool {
    let body = s.strip_prefix(['+', '-']).unwrap_or(s);
    if body.is_empty() {
        return false;
    }
    if let Some(hex) = body.strip_prefix("0x").or_else(|| body.strip_prefix("0X")) {
        return !hex.is_empty() && hex.chars().all(|c| c.is_ascii_hexdigit());
    }
    if let Some(bin) = body.strip_prefix("0b").or_else(|| body.strip_prefix("0B")) {
        return !bin.is_empty() && bin.chars().all(|c| c == '0' || c == '1');
    }
    if let Some(oct) = body.strip_prefix("0o").or_else(|| body.strip_prefix("0O")) {
        return !oct.is_empty() && oct.chars().all(|c| ('0'..='7').contains(&c));
    }
    if body.len() > 1 && body.starts_with('0') {
        return body.chars().all(|c| ('0'..='7').contains(&c));
    }
    body.chars().all(|c| c.is_ascii_digit())
}

fn is_base60_float(s: &str) -> bool {
    // [-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+(?:\.[0-9_]*)?
    let body = s.strip_prefix(['+', '-']).unwrap_or(s);
    let (int_part, _frac) = match body.split_once('.') {
        Some((a, b)) if b.chars().all(|c| c.is_ascii_digit() || c == '_') => (a, Some(b)),
        Some(_) => return false,
        None => (body, None),
    };
    let mut parts = int_part.split(':');
    let Some(head) = parts.next() else {
        return false;
    };
    if !head.starts_with(|c: char| c.is_ascii_digit())
        || !head.chars().all(|c| c.is_ascii_digit() || c == '_')
    {
        return false;
    }
    let rest: Vec<&str> = parts.collect();
    !rest.is_empty()
        && rest.iter().all(|p| {
            (1..=2).contains(&p.len())
                && p.chars().all(|c| c.is_ascii_digit())
                && (p.len() == 1 || p.as_bytes()[0] <= b'5')
        })
}

fn is_timestamp(s: &str) -> bool {
    // yyyy-m-d, optionally followed by [Tt ]h:m:s(.frac)?(Z|±hh:mm)?
    let b = s.as_bytes();
    let digits = |from: usize, min: usize, max: usize| -> Option<usize> {
        let n = b[from.min(b.len())..]
            .iter()
            .take_while(|c| c.is_ascii_digit())
            .count();
        (n >= min && n <= max).then_some(from + n)
    };
    let Some(i) = digits(0, 4, 4) else {
        return false;
    };
    if b.get(i) != Some(&b'-') {
        return false;
    }
    let Some(i) = digits(i + 1, 1, 2) else {
        return false;
    };
    if b.get(i) != Some(&b'-') {
        return false;
    }
    let Some(i) = digits(i + 1, 1, 2) else {
        return false;
    };
    if i == b.len() {
        return true;
    }
    if !matches!(b[i], b'T' | b't' | b' ') {
        return false;
    }
    let Some(i) = digits(i + 1, 1, 2) else {
        return false;
    };
    if b.get(i) != Some(&b':') {
        return false;
    }
    let Some(i) = digits(i + 1, 1, 2) else {
        return false;
    };
    if b.get(i) != Some(&b':') {
        return false;
    }
    let Some(mut i) = digits(i + 1, 1, 2) else {
        return false;
    };
    if b.get(i) == Some(&b'.') {
        let Some(j) = digits(i + 1, 1, 9) else {
            return false;
        };
        i = j;
    }
    let rest = &s[i..];
    rest.is_empty() || rest == "Z" || {
        let r = rest.as_bytes();
        r.len() == 6 && matches!(r[0], b'+' | b'-') && r[3] == b':'
    }
}

fn plain_allowed(s: &str) -> bool {
    if s.is_empty() || s.starts_with(' ') || s.ends_with(' ') || s.contains('\n') {
        return false;
    }
    if s.starts_with("---") || s.starts_with("...") {
        return false;
    }
    let chars: Vec<char> = s.chars().collect();
    if chars.iter().any(|&c| is_special(c)) {
        return false;
    }
    let first = chars[0];
    let followed_by_blank = |i: usize| chars.get(i + 1).is_none_or(|c| *c == ' ');
    if matches!(
        first,
        '#' | ','
            | '['
            | ']'
            | '{'
            | '}'
            | '&'
            | '*'
            | '!'
            | '|'
            | '>'
            | '\''
            | '"'
            | '%'
            | '@'
            | '`'
    ) {
        return false;
    }
    if matches!(first, '?' | ':' | '-') && followed_by_blank(0) {
        return false;
    }
    for (i, &c) in chars.iter().enumerate().skip(1) {
        if c == ':' && followed_by_blank(i) {
            return false;
        }
        if c == '#' && chars[i - 1] == ' ' {
            return false;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn prints_like_kubectl() {
        let v = json!({
            "kind": "ConfigMap", "apiVersion": "v1",
            "data": {"num": "42", "t": "true", "star": "*", "colon": "a: b", "empty": "", "lead": " x",
                     "q": "it's", "date": "2024-01-01", "dash": "- x", "tab": "a\tb", "trail": "a \nb",
                     "multi": "line1\nline2\n", "nonl": "a\nb",
                     "long": "aaaa bbbb cccc dddd eeee ffff gggg hhhh iiii jjjj kkkk llll mmmm nnnn oooo pppp qqqq rrrr ssss tttt"},
            "metadata": {"creationTimestamp": null, "name": "t1", "labels": {}},
            "list": [{"a": 1, "b": [1, 2]}, "x"],
        });
        let expected = "apiVersion: v1
data:
  colon: 'a: b'
  dash: '- x'
  date: \"2024-01-01\"
  empty: \"\"
  lead: ' x'
  long: aaaa bbbb cccc dddd eeee ffff gggg hhhh iiii jjjj kkkk llll mmmm nnnn oooo
    pppp qqqq rrrr ssss tttt
  multi: |
    line1
    line2
  nonl: |-
    a
    b
  num: \"42\"
  q: it's
  star: '*'
  t: \"true\"
  tab: \"a\\tb\"
  trail: \"a \\nb\"
kind: ConfigMap
list:
- a: 1
  b:
  - 1
  - 2
- x
metadata:
  creationTimestamp: null
  labels: {}
  name: t1
";
        assert_eq!(to_yaml(&v), expected);
    }

    #[test]
    fn orders_keys_like_yaml_v2() {
        let mut keys = vec!["b", "a10", "a9", "A", "a_b", "aB"];
        keys.sort_by(|a, b| key_order(a, b));
        assert_eq!(keys, vec!["A", "a_b", "a9", "a10", "aB", "b"]);
    }
}
