//! kubectl's JSONPath templates (`-o jsonpath=…`, `wait --for=jsonpath=…`,
//! custom columns): literal text with `{…}` actions — paths (`.a.b`, `['a.b']`, `[0]`,
//! `[*]`, `[1:3]`, `..name`, `[?(@.x=="y")]`), `range … end` and quoted strings.
//! Results of one action are joined with spaces; strings print raw, other values as
//! compact JSON; missing keys print nothing, as with `kubectl get`.

use serde_json::Value;

#[derive(Debug, Clone, PartialEq)]
enum Segment {
    Field(String),
    Wildcard,
    Index(i64),
    Slice(Option<i64>, Option<i64>, Option<i64>),
    Recursive(String),
    Filter(Filter),
    Union(Vec<String>),
}

#[derive(Debug, Clone, PartialEq)]
enum Operand {
    Path(Vec<Segment>),
    Literal(Value),
}

#[derive(Debug, Clone, PartialEq)]
struct Filter {
    left: Operand,
    op: Option<(String, Operand)>,
}

#[derive(Debug, Clone, PartialEq)]
enum Node {
    Text(String),
    Path(Vec<Segment>),
    Range(Vec<Segment>, Vec<Node>),
}

/// A parsed template.
#[derive(Debug, Clone)]
pub struct Template {
    nodes: Vec<Node>,
}

impl Template {
    /// Parses `text`; errors read as the stock ones (`unclosed action`…).
    pub fn parse(text: &str) -> Result<Template, String> {
        let mut parser = Parser {
            chars: text.chars().collect(),
            pos: 0,
        };
        let (nodes, end) = parser
            .nodes(false)
            .map_err(|e| format!("error parsing jsonpath {text}, {e}"))?;
        if end {
            return Err(format!(
                "error parsing jsonpath {text}, not in range, nothing to end"
            ));
        }
        Ok(Template { nodes })
    }

    /// The template's output for `data`.
    pub fn execute(&self, data: &Value) -> Result<String, String> {
        let mut out = String::new();
        run(&self.nodes, data, data, &mut out)?;
        Ok(out)
    }

    /// The values the template's first path selects (for `wait --for=jsonpath` and
    /// custom columns).
    pub fn values(&self, data: &Value) -> Vec<Value> {
        for node in &self.nodes {
            if let Node::Path(p) = node {
                return eval(p, data, data).into_iter().cloned().collect();
            }
        }
        Vec::new()
    }
}

fn run(nodes: &[Node], root: &Value, current: &Value, out: &mut String) -> Result<(), String> {
    for node in nodes {
        match node {
            Node::Text(t) => out.push_str(t),
            Node::Path(p) => {
                let values = eval(p, root, current);
                let texts: Vec<String> = values.iter().map(|v| text(v)).collect();
                out.push_str(&texts.join(" "));
            }
            Node::Range(p, body) => {
                for v in eval(p, root, current) {
                    match v {
                        Value::Array(items) if is_single_array(p) => {
                            for item in items {
                                run(body, root, item, out)?;
                            }
                        }
                        other => run(body, root, other, out)?,
                    }
                }
            }
        }
    }
    Ok(())
}

/// `{range .items}` iterates over the array itself.
fn is_single_array(p: &[Segment]) -> bool {
    !p.iter().any(|s| {
        matches!(
            s,
            Segment::Wildcard | Segment::Slice(..) | Segment::Filter(_) | Segment::Recursive(_)
        )
    })
}

/// How one result prints: strings raw, everything else as compact JSON.
pub fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => compact_json(other),
    }
}

/// Go's `json.Marshal` of a map: keys sorted, no spaces.
pub fn compact_json(v: &Value) -> String {
    match v {
        Value::Object(m) => {
            let mut entries: Vec<_> = m.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            let parts: Vec<String> = entries
                .into_iter()
                .map(|(k, v)| {
                    let mut key = String::new();
                    super::json::write_string(&mut key, k);
                    format!("{key}:{}", compact_json(v))
                })
                .collect();
            format!("{{{}}}", parts.join(","))
        }
        Value::Array(a) => format!(
            "[{}]",
            a.iter().map(compact_json).collect::<Vec<_>>().join(",")
        ),
        Value::String(s) => {
            let mut out = String::new();
            super::json::write_string(&mut out, s);
            out
        }
        other => other.to_string(),
    }
}

fn eval<'a>(path: &[Segment], root: &'a Value, current: &'a Value) -> Vec<&'a Value> {
    let mut values: Vec<&Value> = vec![current];
    let mut path = path;
    if let Some(Segment::Field(f)) = path.first() {
        if f == "$" {
            values = vec![root];
            path = &path[1..];
        } else if f == "@" {
            path = &path[1..];
        }
    }
    for seg in path {
        let mut next = Vec::new();
        for v in values {
            apply(seg, v, root, &mut next);
        }
        values = next;
    }
    values
}

fn apply<'a>(seg: &Segment, v: &'a Value, root: &'a Value, next: &mut Vec<&'a Value>) {
    match seg {
        Segment::Field(name) => {
            if let Value::Object(m) = v {
                if let Some(x) = m.get(name) {
                    next.push(x);
                }
            }
        }
        Segment::Union(names) => {
            if let Value::Object(m) = v {
                next.extend(names.iter().filter_map(|n| m.get(n)));
            }
        }
        Segment::Wildcard => match v {
            Value::Array(a) => next.extend(a.iter()),
            Value::Object(m) => {
                let mut entries: Vec<_> = m.iter().collect();
                entries.sort_by(|a, b| a.0.cmp(b.0));
                next.extend(entries.into_iter().map(|(_, v)| v));
            }
            _ => {}
        },
        Segment::Index(i) => {
            if let Value::Array(a) = v {
                let idx = if *i < 0 { a.len() as i64 + i } else { *i };
                if let Some(x) = usize::try_from(idx).ok().and_then(|i| a.get(i)) {
                    next.push(x);
                }
            }
        }
        Segment::Slice(start, end, step) => {
            if let Value::Array(a) = v {
                let len = a.len() as i64;
                let norm = |x: i64| if x < 0 { (len + x).max(0) } else { x.min(len) };
                let s = norm(start.unwrap_or(0));
                let e = norm(end.unwrap_or(len));
                let step = step.unwrap_or(1).max(1) as usize;
                if s < e {
                    next.extend(a[s as usize..e as usize].iter().step_by(step));
                }
            }
        }
        Segment::Recursive(name) => recurse(name, v, next),
        Segment::Filter(f) => {
            let items: Vec<&Value> = match v {
                Value::Array(a) => a.iter().collect(),
                Value::Object(m) => m.values().collect(),
                _ => Vec::new(),
            };
            next.extend(
                items
                    .into_iter()
                    .filter(|item| matches_filter(f, root, item)),
            );
        }
    }
}

fn recurse<'a>(name: &str, v: &'a Value, next: &mut Vec<&'a Value>) {
    match v {
        Value::Object(m) => {
            if name.is_empty() || name == "*" {
                next.push(v);
            } else if let Some(x) = m.get(name) {
                next.push(x);
            }
            for (k, child) in m {
                if k != name {
                    recurse(name, child, next);
                }
            }
        }
        Value::Array(a) => {
            for child in a {
                recurse(name, child, next);
            }
        }
        _ => {}
    }
}

fn operand<'a>(o: &'a Operand, root: &'a Value, current: &'a Value) -> Vec<Value> {
    match o {
        Operand::Literal(v) => vec![v.clone()],
        Operand::Path(p) => eval(p, root, current).into_iter().cloned().collect(),
    }
}

fn matches_filter(f: &Filter, root: &Value, item: &Value) -> bool {
    let left = operand(&f.left, root, item);
    let Some((op, right)) = &f.op else {
        return !left.is_empty();
    };
    let right = operand(right, root, item);
    let (Some(l), Some(r)) = (left.first(), right.first()) else {
        return false;
    };
    let ord = match (l, r) {
        (Value::Number(a), Value::Number(b)) => a.as_f64().partial_cmp(&b.as_f64()),
        (Value::String(a), Value::String(b)) => Some(a.cmp(b)),
        (a, b) => (a == b).then_some(std::cmp::Ordering::Equal),
    };
    match op.as_str() {
        "==" => l == r || ord == Some(std::cmp::Ordering::Equal),
        "!=" => !(l == r || ord == Some(std::cmp::Ordering::Equal)),
        "<" => ord == Some(std::cmp::Ordering::Less),
        ">" => ord == Some(std::cmp::Ordering::Greater),
        "<=" => matches!(
            ord,
            Some(std::cmp::Ordering::Less | std::cmp::Ordering::Equal)
        ),
        ">=" => matches!(
            ord,
            Some(std::cmp::Ordering::Greater | std::cmp::Ordering::Equal)
        ),
        _ => false,
    }
}

struct Parser {
    chars: Vec<char>,
    pos: usize,
}

impl Parser {
    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    fn rest_starts_with(&self, s: &str) -> bool {
        s.chars()
            .enumerate()
            .all(|(i, c)| self.chars.get(self.pos + i) == Some(&c))
    }

    /// Nodes until the end of input, or an `{end}` (then `true`).
    fn nodes(&mut self, in_range: bool) -> Result<(Vec<Node>, bool), String> {
        let mut nodes = Vec::new();
        let mut text = String::new();
        while let Some(c) = self.peek() {
            if c != '{' {
                text.push(c);
                self.pos += 1;
                continue;
            }
            if !text.is_empty() {
                nodes.push(Node::Text(std::mem::take(&mut text)));
            }
            self.pos += 1;
            // The action's text up to its closing brace (braces inside quotes don't count).
            let start = self.pos;
            let mut quote: Option<char> = None;
            let mut depth = 0;
            loop {
                let Some(c) = self.peek() else {
                    return Err("unclosed action".into());
                };
                match quote {
                    Some(_) if c == '\\' => self.pos += 1,
                    Some(q) if c == q => quote = None,
                    Some(_) => {}
                    None if c == '"' || c == '\'' => quote = Some(c),
                    None if c == '[' => depth += 1,
                    None if c == ']' => depth -= 1,
                    None if c == '}' && depth <= 0 => break,
                    None => {}
                }
                self.pos += 1;
            }
            let action: String = self.chars[start..self.pos].iter().collect();
            self.pos += 1;
            let action = action.trim();
            if action == "end" {
                if !in_range {
                    return Ok((nodes, true));
                }
                return Ok((nodes, true));
            }
            if let Some(rest) = action.strip_prefix("range ") {
                let path = parse_path(rest.trim())?;
                let (body, ended) = self.nodes(true)?;
                if !ended {
                    return Err("unclosed range".into());
                }
                nodes.push(Node::Range(path, body));
                continue;
            }
            nodes.extend(parse_action(action)?);
        }
        if !text.is_empty() {
            nodes.push(Node::Text(text));
        }
        let _ = self.rest_starts_with("");
        Ok((nodes, false))
    }
}

/// An action's contents: quoted strings and paths, e.g. `"\n"`, `.a.b`, `.a}{"x"`.
fn parse_action(action: &str) -> Result<Vec<Node>, String> {
    let chars: Vec<char> = action.chars().collect();
    if chars.first().is_some_and(|c| *c == '"' || *c == '\'') {
        let (s, end) = quoted(&chars, 0)?;
        if end != chars.len() {
            return Err(format!("unrecognized character in action: {}", chars[end]));
        }
        return Ok(vec![Node::Text(s)]);
    }
    Ok(vec![Node::Path(parse_path(action)?)])
}

/// A quoted string starting at `start`; the text and the index after the closing quote.
fn quoted(chars: &[char], start: usize) -> Result<(String, usize), String> {
    let q = chars[start];
    let mut out = String::new();
    let mut i = start + 1;
    while i < chars.len() {
        let c = chars[i];
        if c == '\\' && i + 1 < chars.len() {
            i += 1;
            out.push(match chars[i] {
                'n' => '\n',
                't' => '\t',
                'r' => '\r',
                other => other,
            });
        } else if c == q {
            return Ok((out, i + 1));
        } else {
            out.push(c);
        }
        i += 1;
    }
    Err("unterminated quoted string".into())
}

fn parse_path(text: &str) -> Result<Vec<Segment>, String> {
    let chars: Vec<char> = text.chars().collect();
    let mut segs = Vec::new();
    let mut i = 0;
    if chars.first() == Some(&'$') || chars.first() == Some(&'@') {
        segs.push(Segment::Field(chars[0].to_string()));
        i = 1;
    }
    while i < chars.len() {
        match chars[i] {
            '.' if chars.get(i + 1) == Some(&'.') => {
                let (name, end) = ident(&chars, i + 2);
                segs.push(Segment::Recursive(name));
                i = end;
            }
            '.' => {
                if chars.get(i + 1) == Some(&'*') {
                    segs.push(Segment::Wildcard);
                    i += 2;
                    continue;
                }
                let (name, end) = ident(&chars, i + 1);
                if !name.is_empty() {
                    segs.push(Segment::Field(name));
                }
                i = end;
            }
            '[' => {
                let mut depth = 0;
                let mut j = i;
                let mut quote: Option<char> = None;
                while j < chars.len() {
                    let c = chars[j];
                    match quote {
                        Some(q) if c == q => quote = None,
                        Some(_) => {}
                        None if c == '"' || c == '\'' => quote = Some(c),
                        None if c == '[' => depth += 1,
                        None if c == ']' => {
                            depth -= 1;
                            if depth == 0 {
                                break;
                            }
                        }
                        None => {}
                    }
                    j += 1;
                }
                if j >= chars.len() {
                    return Err("unterminated array".into());
                }
                let inner: String = chars[i + 1..j].iter().collect();
                segs.push(bracket(inner.trim())?);
                i = j + 1;
            }
            c if c.is_whitespace() => i += 1,
            c => {
                return Err(format!(
                    "unrecognized character in action: U+{:04X} '{c}'",
                    c as u32
                ))
            }
        }
    }
    Ok(segs)
}

fn ident(chars: &[char], start: usize) -> (String, usize) {
    let mut name = String::new();
    let mut i = start;
    while i < chars.len() {
        let c = chars[i];
        if c == '\\' && i + 1 < chars.len() {
            name.push(chars[i + 1]);
            i += 2;
            continue;
        }
        if c == '.'
            || c == '['
            || c.is_whitespace()
            || c == ')'
            || c == '='
            || c == '!'
            || c == '<'
            || c == '>'
        {
            break;
        }
        name.push(c);
        i += 1;
    }
    (name, i)
}

fn bracket(inner: &str) -> Result<Segment, String> {
    if inner == "*" {
        return Ok(Segment::Wildcard);
    }
    if let Some(f) = inner.strip_prefix("?(").and_then(|s| s.strip_suffix(')')) {
        return Ok(Segment::Filter(parse_filter(f.trim())?));
    }
    if inner.starts_with('\'') || inner.starts_with('"') {
        let chars: Vec<char> = inner.chars().collect();
        let mut names = Vec::new();
        let mut i = 0;
        while i < chars.len() {
            if chars[i] == '\'' || chars[i] == '"' {
                let (s, end) = quoted(&chars, i)?;
                names.push(s);
                i = end;
            } else {
                i += 1;
            }
        }
        return Ok(if names.len() == 1 {
            Segment::Field(names.remove(0))
        } else {
            Segment::Union(names)
        });
    }
    if inner.contains(':') {
        let parts: Vec<&str> = inner.split(':').collect();
        let num = |s: &str| -> Result<Option<i64>, String> {
            let s = s.trim();
            if s.is_empty() {
                Ok(None)
            } else {
                s.parse()
                    .map(Some)
                    .map_err(|_| format!("invalid array index {s}"))
            }
        };
        return Ok(Segment::Slice(
            num(parts[0])?,
            num(parts.get(1).copied().unwrap_or(""))?,
            num(parts.get(2).copied().unwrap_or(""))?,
        ));
    }
    inner
        .parse()
        .map(Segment::Index)
        .map_err(|_| format!("invalid array index {inner}"))
}

fn parse_filter(text: &str) -> Result<Filter, String> {
    for op in ["==", "!=", "<=", ">=", "<", ">"] {
        if let Some((l, r)) = split_outside_quotes(text, op) {
            return Ok(Filter {
                left: parse_operand(l.trim())?,
                op: Some((op.to_string(), parse_operand(r.trim())?)),
            });
        }
    }
    Ok(Filter {
        left: parse_operand(text)?,
        op: None,
    })
}

fn split_outside_quotes<'a>(text: &'a str, op: &str) -> Option<(&'a str, &'a str)> {
    let mut quote: Option<char> = None;
    for (i, c) in text.char_indices() {
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None if c == '"' || c == '\'' => quote = Some(c),
            None if text[i..].starts_with(op) => return Some((&text[..i], &text[i + op.len()..])),
            None => {}
        }
    }
    None
}

fn parse_operand(text: &str) -> Result<Operand, String> {
    if text.starts_with('@') || text.starts_with('$') || text.starts_with('.') {
        return Ok(Operand::Path(parse_path(text)?));
    }
    if text.starts_with('"') || text.starts_with('\'') {
        let chars: Vec<char> = text.chars().collect();
        return Ok(Operand::Literal(Value::String(quoted(&chars, 0)?.0)));
    }
    if let Ok(v) = serde_json::from_str::<Value>(text) {
        return Ok(Operand::Literal(v));
    }
    Err(format!("unrecognized filter operand {text}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn run(t: &str, v: &Value) -> String {
        Template::parse(t)
            .and_then(|t| t.execute(v))
            .unwrap_or_else(|e| format!("ERR {e}"))
    }

    #[test]
    fn executes_kubectl_templates() {
        let list = json!({"kind": "List", "items": [
            {"metadata": {"name": "a", "labels": {"z": "1", "app": "x"}}, "status": {"phase": "Running"}, "spec": {"n": 2}},
            {"metadata": {"name": "b"}, "status": {"phase": "Pending"}, "spec": {"n": 5}},
        ]});
        assert_eq!(run("{.items[*].metadata.name}", &list), "a b");
        assert_eq!(
            run("{range .items[*]}{.metadata.name}{\"\\n\"}{end}", &list),
            "a\nb\n"
        );
        assert_eq!(
            run(
                "{.items[?(@.status.phase==\"Pending\")].metadata.name}",
                &list
            ),
            "b"
        );
        assert_eq!(run("{.items[?(@.spec.n>3)].metadata.name}", &list), "b");
        assert_eq!(
            run("{.items[0].metadata.labels}", &list),
            "{\"app\":\"x\",\"z\":\"1\"}"
        );
        assert_eq!(run("x={.items[-1].metadata.name} {.nope}|", &list), "x=b |");
        assert_eq!(run("{..name}", &list), "a b");
        assert_eq!(run("{.items[0].metadata.labels['app']}", &list), "x");
        assert_eq!(
            run("{.metadata.name", &list),
            "ERR error parsing jsonpath {.metadata.name, unclosed action"
        );
        assert_eq!(run("{range .items}{.metadata.name},{end}", &list), "a,b,");
    }
}
