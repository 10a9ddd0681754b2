//! Label selectors, as in `k8s.io/apimachinery/pkg/labels`: the string syntax of
//! `?labelSelector=` (`a=b`, `a==b`, `a!=b`, `a in (x,y)`, `a notin (x)`, `a`, `!a`,
//! `a>1`, `a<1`, comma-joined) and the structured `LabelSelector`
//! (`matchLabels`/`matchExpressions`) used by workloads, both parsed into one [`Selector`].

use std::collections::BTreeMap;
use std::fmt;

use serde_json::{Map, Value};

use crate::validation::{is_qualified_name, is_valid_label_value};

/// Why a label selector could not be parsed or built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LabelSelectorError {
    /// A requirement in the string form is malformed or invalid.
    #[error("unable to parse requirement: {0}")]
    Requirement(String),
    /// The string form has a syntax error between requirements.
    #[error("{0}")]
    Syntax(String),
    /// A `matchExpressions` operator is not In, NotIn, Exists or DoesNotExist.
    #[error("{0:?} is not a valid label selector operator")]
    InvalidOperator(String),
    /// A structured `LabelSelector` is not shaped as one, or one of its requirements is invalid.
    #[error("{0}")]
    Invalid(String),
}

/// The operator of one [`Requirement`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Operator {
    /// `key=value`
    Equals,
    /// `key==value`
    DoubleEquals,
    /// `key!=value`
    NotEquals,
    /// `key in (v1,v2)`
    In,
    /// `key notin (v1,v2)`
    NotIn,
    /// `key`
    Exists,
    /// `!key`
    DoesNotExist,
    /// `key>n` (integer comparison)
    GreaterThan,
    /// `key<n` (integer comparison)
    LessThan,
}

/// One requirement of a selector: a key, an operator and (sorted, deduplicated) values.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Requirement {
    key: String,
    operator: Operator,
    values: Vec<String>,
}

fn invalid(value: &str, detail: &str) -> String {
    format!("Invalid value: {value:?}: {detail}")
}

impl Requirement {
    /// Builds a validated requirement (Kubernetes' `labels.NewRequirement`).
    pub fn new(
        key: &str,
        operator: Operator,
        values: Vec<String>,
    ) -> Result<Self, LabelSelectorError> {
        let mut errs: Vec<String> = Vec::new();
        let key_errs = is_qualified_name(key);
        if !key_errs.is_empty() {
            errs.push(format!("key: {}", invalid(key, &key_errs.join("; "))));
        }
        let vals_str = format!("{values:?}");
        match operator {
            Operator::In | Operator::NotIn if values.is_empty() => errs.push(format!(
                "values: {}",
                invalid(&vals_str, "for 'in', 'notin' operators, values set can't be empty")
            )),
            Operator::Equals | Operator::DoubleEquals | Operator::NotEquals
                if values.len() != 1 =>
            {
                errs.push(format!(
                    "values: {}",
                    invalid(&vals_str, "exact-match compatibility requires one single value")
                ))
            }
            Operator::Exists | Operator::DoesNotExist if !values.is_empty() => errs.push(format!(
                "values: {}",
                invalid(&vals_str, "values set must be empty for exists and does not exist")
            )),
            Operator::GreaterThan | Operator::LessThan => {
                if values.len() != 1 {
                    errs.push(format!(
                        "values: {}",
                        invalid(&vals_str, "for 'Gt', 'Lt' operators, exactly one value is required")
                    ));
                }
                for (i, v) in values.iter().enumerate() {
                    if v.parse::<i64>().is_err() {
                        errs.push(format!(
                            "values[{i}]: {}",
                            invalid(v, "for 'Gt', 'Lt' operators, the value must be an integer")
                        ));
                    }
                }
            }
            _ => {}
        }
        for (i, v) in values.iter().enumerate() {
            let verrs = is_valid_label_value(v);
            if !verrs.is_empty() {
                errs.push(format!("values[{i}][{key}]: {}", invalid(v, &verrs.join("; "))));
            }
        }
        if !errs.is_empty() {
            return Err(LabelSelectorError::Invalid(if errs.len() == 1 {
                errs.remove(0)
            } else {
                format!("[{}]", errs.join(", "))
            }));
        }
        let mut values = values;
        values.sort();
        values.dedup();
        Ok(Requirement { key: key.to_string(), operator, values })
    }

    /// The label key.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The operator.
    pub fn operator(&self) -> Operator {
        self.operator
    }

    /// The values, sorted and deduplicated.
    pub fn values(&self) -> &[String] {
        &self.values
    }

    /// Whether a label set (given as a lookup) satisfies this requirement.
    pub fn matches_with<'a>(&self, lookup: impl Fn(&str) -> Option<&'a str>) -> bool {
        let has = |v: &str| self.values.iter().any(|x| x == v);
        match self.operator {
            Operator::In | Operator::Equals | Operator::DoubleEquals => {
                lookup(&self.key).is_some_and(has)
            }
            Operator::NotIn | Operator::NotEquals => !lookup(&self.key).is_some_and(has),
            Operator::Exists => lookup(&self.key).is_some(),
            Operator::DoesNotExist => lookup(&self.key).is_none(),
            Operator::GreaterThan | Operator::LessThan => {
                let Some(Ok(have)) = lookup(&self.key).map(str::parse::<i64>) else {
                    return false;
                };
                let Some(Ok(want)) = self.values.first().map(|v| v.parse::<i64>()) else {
                    return false;
                };
                if self.operator == Operator::GreaterThan {
                    have > want
                } else {
                    have < want
                }
            }
        }
    }
}

impl fmt::Display for Requirement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.operator == Operator::DoesNotExist {
            f.write_str("!")?;
        }
        f.write_str(&self.key)?;
        let op = match self.operator {
            Operator::Equals => "=",
            Operator::DoubleEquals => "==",
            Operator::NotEquals => "!=",
            Operator::In => " in ",
            Operator::NotIn => " notin ",
            Operator::GreaterThan => ">",
            Operator::LessThan => "<",
            Operator::Exists | Operator::DoesNotExist => return Ok(()),
        };
        f.write_str(op)?;
        let set = matches!(self.operator, Operator::In | Operator::NotIn);
        if set {
            f.write_str("(")?;
        }
        f.write_str(&self.values.join(","))?;
        if set {
            f.write_str(")")?;
        }
        Ok(())
    }
}

/// A parsed label selector: requirements that must all hold (sorted by key), or the
/// selector that matches nothing (from a `null` `LabelSelector`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct Selector {
    requirements: Vec<Requirement>,
    nothing: bool,
}

impl Selector {
    /// The selector that matches every label set (the empty string, `{}`).
    pub fn everything() -> Self {
        Self::default()
    }

    /// The selector that matches no label set (a `null` `LabelSelector`).
    pub fn nothing() -> Self {
        Selector { requirements: Vec::new(), nothing: true }
    }

    /// Parses the string form (`?labelSelector=`), like Kubernetes' `labels.Parse`.
    pub fn parse(s: &str) -> Result<Self, LabelSelectorError> {
        let mut reqs = Parser::new(s).parse()?;
        reqs.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(Selector { requirements: reqs, nothing: false })
    }

    /// A selector requiring exactly these labels (`matchLabels`-like).
    pub fn from_map(labels: &BTreeMap<String, String>) -> Result<Self, LabelSelectorError> {
        let mut reqs = Vec::with_capacity(labels.len());
        for (k, v) in labels {
            reqs.push(Requirement::new(k, Operator::Equals, vec![v.clone()])?);
        }
        Ok(Selector { requirements: reqs, nothing: false })
    }

    /// Converts a `metav1.LabelSelector` JSON value, like `LabelSelectorAsSelector`:
    /// `null` matches nothing, `{}` matches everything.
    pub fn from_label_selector(value: &Value) -> Result<Self, LabelSelectorError> {
        let obj = match value {
            Value::Null => return Ok(Self::nothing()),
            Value::Object(o) => o,
            other => {
                return Err(LabelSelectorError::Invalid(format!(
                    "label selector must be an object, got {other}"
                )))
            }
        };
        let mut reqs = Vec::new();
        match obj.get("matchLabels") {
            None | Some(Value::Null) => {}
            Some(Value::Object(ml)) => {
                for (k, v) in ml {
                    let Some(v) = v.as_str() else {
                        return Err(LabelSelectorError::Invalid(format!(
                            "matchLabels[{k}] must be a string"
                        )));
                    };
                    reqs.push(Requirement::new(k, Operator::Equals, vec![v.to_string()])?);
                }
            }
            Some(_) => {
                return Err(LabelSelectorError::Invalid("matchLabels must be an object".into()))
            }
        }
        match obj.get("matchExpressions") {
            None | Some(Value::Null) => {}
            Some(Value::Array(exprs)) => {
                for expr in exprs {
                    reqs.push(expression_requirement(expr)?);
                }
            }
            Some(_) => {
                return Err(LabelSelectorError::Invalid(
                    "matchExpressions must be an array".into(),
                ))
            }
        }
        reqs.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(Selector { requirements: reqs, nothing: false })
    }

    /// Whether this selector has no requirements (and so matches everything).
    pub fn is_empty(&self) -> bool {
        !self.nothing && self.requirements.is_empty()
    }

    /// Whether this is the selector that matches nothing.
    pub fn matches_nothing(&self) -> bool {
        self.nothing
    }

    /// The requirements, sorted by key.
    pub fn requirements(&self) -> &[Requirement] {
        &self.requirements
    }

    /// Adds a requirement (kept sorted by key).
    pub fn add(&mut self, requirement: Requirement) {
        let pos = self.requirements.partition_point(|r| r.key <= requirement.key);
        self.requirements.insert(pos, requirement);
    }

    /// If the selector pins `key` to a single value (`=`, `==`, `in` with one value), that value.
    pub fn requires_exact_match(&self, key: &str) -> Option<&str> {
        let r = self.requirements.iter().find(|r| r.key == key)?;
        match (r.operator, r.values.as_slice()) {
            (Operator::Equals | Operator::DoubleEquals | Operator::In, [v]) => Some(v),
            _ => None,
        }
    }

    /// Whether the labels match.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.matches_with(|k| labels.get(k).map(String::as_str))
    }

    /// Whether a JSON `metadata.labels` object matches (`None` = no labels; non-string
    /// values count as absent).
    pub fn matches_json(&self, labels: Option<&Map<String, Value>>) -> bool {
        self.matches_with(|k| labels.and_then(|m| m.get(k)).and_then(Value::as_str))
    }

    /// Whether the labels given by a lookup function match.
    pub fn matches_with<'a>(&self, lookup: impl Fn(&str) -> Option<&'a str>) -> bool {
        !self.nothing && self.requirements.iter().all(|r| r.matches_with(&lookup))
    }
}

fn expression_requirement(expr: &Value) -> Result<Requirement, LabelSelectorError> {
    let bad = || LabelSelectorError::Invalid(format!("invalid matchExpressions entry: {expr}"));
    let key = expr.get("key").and_then(Value::as_str).ok_or_else(bad)?;
    let op = expr.get("operator").and_then(Value::as_str).ok_or_else(bad)?;
    let operator = match op {
        "In" => Operator::In,
        "NotIn" => Operator::NotIn,
        "Exists" => Operator::Exists,
        "DoesNotExist" => Operator::DoesNotExist,
        other => return Err(LabelSelectorError::InvalidOperator(other.to_string())),
    };
    let values = match expr.get("values") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(vs)) => vs
            .iter()
            .map(|v| v.as_str().map(str::to_string).ok_or_else(bad))
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(bad()),
    };
    Requirement::new(key, operator, values)
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, r) in self.requirements.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{r}")?;
        }
        Ok(())
    }
}

impl std::str::FromStr for Selector {
    type Err = LabelSelectorError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Selector::parse(s)
    }
}

// ---- lexer and parser (a port of Kubernetes' hand-written one) ----

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Token {
    Error,
    End,
    ClosedPar,
    Comma,
    DoesNotExist,
    DoubleEquals,
    Equals,
    GreaterThan,
    Identifier,
    In,
    LessThan,
    NotEquals,
    NotIn,
    OpenPar,
}

fn keyword(s: &str) -> Option<Token> {
    Some(match s {
        ")" => Token::ClosedPar,
        "," => Token::Comma,
        "!" => Token::DoesNotExist,
        "==" => Token::DoubleEquals,
        "=" => Token::Equals,
        ">" => Token::GreaterThan,
        "in" => Token::In,
        "<" => Token::LessThan,
        "!=" => Token::NotEquals,
        "notin" => Token::NotIn,
        "(" => Token::OpenPar,
        _ => return None,
    })
}

fn is_whitespace(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\r' | b'\n')
}

fn is_special(c: u8) -> bool {
    matches!(c, b'=' | b'!' | b'(' | b')' | b',' | b'>' | b'<')
}

fn lex(s: &str) -> Vec<(Token, String)> {
    let b = s.as_bytes();
    let mut pos = 0;
    let mut out = Vec::new();
    loop {
        while pos < b.len() && is_whitespace(b[pos]) {
            pos += 1;
        }
        if pos >= b.len() {
            out.push((Token::End, String::new()));
            return out;
        }
        if is_special(b[pos]) {
            let start = pos;
            let mut last: Option<(Token, usize)> = None;
            while pos < b.len() && is_special(b[pos]) {
                let cand = &s[start..=pos];
                if let Some(t) = keyword(cand) {
                    last = Some((t, pos + 1));
                } else if last.is_some() {
                    break;
                }
                pos += 1;
            }
            match last {
                Some((t, end)) => {
                    out.push((t, s[start..end].to_string()));
                    pos = end;
                }
                None => {
                    out.push((
                        Token::Error,
                        format!("error expected: keyword found '{}'", &s[start..pos]),
                    ));
                }
            }
        } else {
            let start = pos;
            while pos < b.len() && !is_special(b[pos]) && !is_whitespace(b[pos]) {
                pos += 1;
            }
            let lit = &s[start..pos];
            out.push((keyword(lit).unwrap_or(Token::Identifier), lit.to_string()));
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Ctx {
    KeyAndOperator,
    Values,
}

struct Parser {
    items: Vec<(Token, String)>,
    pos: usize,
}

impl Parser {
    fn new(s: &str) -> Self {
        Parser { items: lex(s), pos: 0 }
    }

    fn get(&self, i: usize, ctx: Ctx) -> (Token, String) {
        let (tok, lit) = self
            .items
            .get(i)
            .cloned()
            .unwrap_or((Token::End, String::new()));
        let tok = match (ctx, tok) {
            (Ctx::Values, Token::In | Token::NotIn) => Token::Identifier,
            (_, t) => t,
        };
        (tok, lit)
    }

    fn lookahead(&self, ctx: Ctx) -> (Token, String) {
        self.get(self.pos, ctx)
    }

    fn consume(&mut self, ctx: Ctx) -> (Token, String) {
        let r = self.get(self.pos, ctx);
        if self.pos < self.items.len() {
            self.pos += 1;
        }
        r
    }

    fn parse(&mut self) -> Result<Vec<Requirement>, LabelSelectorError> {
        let mut reqs = Vec::new();
        loop {
            let (tok, lit) = self.lookahead(Ctx::Values);
            match tok {
                Token::Identifier | Token::DoesNotExist => {
                    let r = self.parse_requirement().map_err(LabelSelectorError::Requirement)?;
                    reqs.push(r);
                    let (t, l) = self.consume(Ctx::Values);
                    match t {
                        Token::End => return Ok(reqs),
                        Token::Comma => {
                            let (t2, l2) = self.lookahead(Ctx::Values);
                            if t2 != Token::Identifier && t2 != Token::DoesNotExist {
                                return Err(LabelSelectorError::Syntax(format!(
                                    "found '{l2}', expected: identifier after ','"
                                )));
                            }
                        }
                        _ => {
                            return Err(LabelSelectorError::Syntax(format!(
                                "found '{l}', expected: ',' or 'end of string'"
                            )))
                        }
                    }
                }
                Token::End => return Ok(reqs),
                _ => {
                    return Err(LabelSelectorError::Syntax(format!(
                        "found '{lit}', expected: !, identifier, or 'end of string'"
                    )))
                }
            }
        }
    }

    fn parse_requirement(&mut self) -> Result<Requirement, String> {
        let (key, op) = self.parse_key_and_infer_operator()?;
        if let Some(op @ (Operator::Exists | Operator::DoesNotExist)) = op {
            return Requirement::new(&key, op, Vec::new()).map_err(|e| e.to_string());
        }
        let op = self.parse_operator()?;
        let values = match op {
            Operator::In | Operator::NotIn => self.parse_values()?,
            _ => self.parse_exact_value()?,
        };
        Requirement::new(&key, op, values).map_err(|e| e.to_string())
    }

    fn parse_key_and_infer_operator(&mut self) -> Result<(String, Option<Operator>), String> {
        let mut op = None;
        let (mut tok, mut lit) = self.consume(Ctx::Values);
        if tok == Token::DoesNotExist {
            op = Some(Operator::DoesNotExist);
            (tok, lit) = self.consume(Ctx::Values);
        }
        if tok != Token::Identifier {
            return Err(format!("found '{lit}', expected: identifier"));
        }
        let errs = is_qualified_name(&lit);
        if !errs.is_empty() {
            return Err(format!("<nil>: {}", invalid(&lit, &errs.join("; "))));
        }
        let (t, _) = self.lookahead(Ctx::Values);
        if (t == Token::End || t == Token::Comma) && op != Some(Operator::DoesNotExist) {
            op = Some(Operator::Exists);
        }
        Ok((lit, op))
    }

    fn parse_operator(&mut self) -> Result<Operator, String> {
        let (tok, lit) = self.consume(Ctx::KeyAndOperator);
        Ok(match tok {
            Token::In => Operator::In,
            Token::Equals => Operator::Equals,
            Token::DoubleEquals => Operator::DoubleEquals,
            Token::GreaterThan => Operator::GreaterThan,
            Token::LessThan => Operator::LessThan,
            Token::NotIn => Operator::NotIn,
            Token::NotEquals => Operator::NotEquals,
            _ => return Err(format!("found '{lit}', expected: in, notin, =, ==, !=, gt, lt")),
        })
    }

    fn parse_values(&mut self) -> Result<Vec<String>, String> {
        let (tok, lit) = self.consume(Ctx::Values);
        if tok != Token::OpenPar {
            return Err(format!("found '{lit}' expected: '('"));
        }
        let (tok, lit) = self.lookahead(Ctx::Values);
        match tok {
            Token::Identifier | Token::Comma => {
                let s = self.parse_identifiers_list()?;
                let (t, _) = self.consume(Ctx::Values);
                if t != Token::ClosedPar {
                    return Err(format!("found '{lit}', expected: ')'"));
                }
                Ok(s)
            }
            Token::ClosedPar => {
                self.consume(Ctx::Values);
                Ok(vec![String::new()])
            }
            _ => Err(format!("found '{lit}', expected: ',', ')' or identifier")),
        }
    }

    fn parse_identifiers_list(&mut self) -> Result<Vec<String>, String> {
        let mut s: Vec<String> = Vec::new();
        loop {
            let (tok, lit) = self.consume(Ctx::Values);
            match tok {
                Token::Identifier => {
                    s.push(lit);
                    let (t2, l2) = self.lookahead(Ctx::Values);
                    match t2 {
                        Token::Comma => continue,
                        Token::ClosedPar => return Ok(s),
                        _ => return Err(format!("found '{l2}', expected: ',' or ')'")),
                    }
                }
                Token::Comma => {
                    if s.is_empty() {
                        s.push(String::new());
                    }
                    let (t2, _) = self.lookahead(Ctx::Values);
                    if t2 == Token::ClosedPar || t2 == Token::Comma {
                        s.push(String::new());
                        if t2 == Token::ClosedPar {
                            return Ok(s);
                        }
                    }
                }
                _ => return Err(format!("found '{lit}', expected: ',', or identifier")),
            }
        }
    }

    fn parse_exact_value(&mut self) -> Result<Vec<String>, String> {
        let (tok, _) = self.lookahead(Ctx::Values);
        if tok == Token::End || tok == Token::Comma {
            return Ok(vec![String::new()]);
        }
        let (tok, lit) = self.consume(Ctx::Values);
        if tok == Token::Identifier {
            return Ok(vec![lit]);
        }
        Err(format!("found '{lit}', expected: identifier"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn parse_and_render() {
        let cases = [
            ("", ""),
            ("x=a,y=b,z=c", "x=a,y=b,z=c"),
            ("z=c,x=a", "x=a,z=c"),
            ("x==a", "x==a"),
            ("x!=a", "x!=a"),
            ("x in (b,a)", "x in (a,b)"),
            ("x notin (a)", "x notin (a)"),
            ("x", "x"),
            ("!x", "!x"),
            ("  x  ,  !y ", "x,!y"),
            ("x>1", "x>1"),
            ("x<1", "x<1"),
            ("x=", "x="),
            ("x= ", "x="),
            ("x=,z= ", "x=,z="),
            ("x>1,z<5", "x>1,z<5"),
            ("x in (foo,,baz),y,z notin ()", "x in (,baz,foo),y,z notin ()"),
            ("x in (in)", "x in (in)"),
            ("example.com/app=web", "example.com/app=web"),
        ];
        for (input, want) in cases {
            let s = Selector::parse(input).unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(s.to_string(), want, "{input}");
        }
    }

    #[test]
    fn parse_errors() {
        for bad in [
            "x=a||y=b", "x==a==b", "!x=a", "x<a", "x in (a", "x in a", ",x", "x,", "x=a b",
            "x in ((a", "-x=a", "x=-a", "x notin", "x>", "=a",
        ] {
            assert!(Selector::parse(bad).is_err(), "{bad} should fail");
        }
        let e = Selector::parse("x==a==b").err().map(|e| e.to_string()).unwrap_or_default();
        assert_eq!(e, "found '==', expected: ',' or 'end of string'");
        let e = Selector::parse("-x=a").err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.starts_with("unable to parse requirement: <nil>: Invalid value: \"-x\": name part"), "{e}");
        let e = Selector::parse("x=-a").err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.starts_with("unable to parse requirement: values[0][x]: Invalid value: \"-a\": a valid label must"), "{e}");
    }

    #[test]
    fn matching() {
        let l = labels(&[("app", "web"), ("tier", "front"), ("n", "5")]);
        let ok = ["", "app=web", "app==web", "app!=db", "app in (web,db)", "app notin (db)",
            "app", "!missing", "missing notin (x)", "missing!=x", "n>4", "n<6", "app=web,tier"];
        for s in ok {
            assert!(Selector::parse(s).map(|s| s.matches(&l)).unwrap_or(false), "{s}");
        }
        let bad = ["app=db", "app!=web", "app in (db)", "app notin (web)", "missing", "!app",
            "n>5", "app>1", "missing=x", "app=web,tier=back"];
        for s in bad {
            assert!(!Selector::parse(s).map(|s| s.matches(&l)).unwrap_or(true), "{s}");
        }
    }

    #[test]
    fn json_labels_and_label_selector() {
        let obj = json!({"app": "web", "env": "prod"});
        let sel = Selector::from_label_selector(&json!({
            "matchLabels": {"app": "web"},
            "matchExpressions": [
                {"key": "env", "operator": "In", "values": ["prod", "staging"]},
                {"key": "canary", "operator": "DoesNotExist"}
            ]
        }))
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(sel.to_string(), "app=web,!canary,env in (prod,staging)");
        assert!(sel.matches_json(obj.as_object()));
        assert!(!sel.matches_json(None));
        let everything = Selector::from_label_selector(&json!({})).unwrap_or_default();
        assert!(everything.is_empty() && everything.matches_json(None));
        let nothing = Selector::from_label_selector(&Value::Null).unwrap_or_default();
        assert!(!nothing.is_empty() && !nothing.matches_json(obj.as_object()));
        let err = Selector::from_label_selector(&json!({
            "matchExpressions": [{"key": "a", "operator": "Foo"}]
        }));
        assert_eq!(
            err.err().map(|e| e.to_string()).unwrap_or_default(),
            "\"Foo\" is not a valid label selector operator"
        );
        assert!(Selector::from_label_selector(&json!({
            "matchExpressions": [{"key": "a", "operator": "In", "values": []}]
        }))
        .is_err());
        assert_eq!(
            Selector::from_label_selector(&json!({"matchLabels": {"a": "b"}}))
                .ok()
                .and_then(|s| s.requires_exact_match("a").map(str::to_string)),
            Some("b".to_string())
        );
    }
}
