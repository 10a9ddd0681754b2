//! Output formats of `kubectl get` and friends: server-side tables (`-o wide`,
//! `--show-labels`, `-A`), `-o yaml|json|name`, `-o jsonpath=…` and
//! `-o custom-columns=…`, each printed byte for byte as the stock kubectl prints it.

pub mod json;
pub mod jsonpath;
pub mod table;
pub mod tabwriter;
pub mod yaml;

use serde_json::{json, Value};

use crate::resources::ResourceInfo;

/// The `-o` flag.
#[derive(Debug, Clone)]
pub enum Output {
    /// The server's table; `wide` adds the columns of priority > 0.
    Table {
        wide: bool,
    },
    Yaml,
    Json,
    Name,
    JsonPath(jsonpath::Template),
    CustomColumns(Vec<(String, jsonpath::Template)>),
}

impl Output {
    /// Parses `-o`; the stock error for unknown formats.
    pub fn parse(o: Option<&str>) -> anyhow::Result<Output> {
        let Some(o) = o.filter(|o| !o.is_empty()) else {
            return Ok(Output::Table { wide: false });
        };
        let (name, arg) = match o.split_once('=') {
            Some((n, a)) => (n, Some(a)),
            None => (o, None),
        };
        Ok(match (name, arg) {
            ("wide", None) => Output::Table { wide: true },
            ("yaml", None) => Output::Yaml,
            ("json", None) => Output::Json,
            ("name", None) => Output::Name,
            ("jsonpath" | "jsonpath-as-json", Some(t)) => {
                Output::JsonPath(jsonpath::Template::parse(t).map_err(anyhow::Error::msg)?)
            }
            ("custom-columns", Some(spec)) => Output::CustomColumns(parse_custom_columns(spec)?),
            ("jsonpath" | "custom-columns", None) => {
                anyhow::bail!("{name} template format specified but no {name} template given")
            }
            _ => anyhow::bail!(
                "unable to match a printer suitable for the output format \"{o}\", allowed formats are: custom-columns,custom-columns-file,go-template,go-template-file,json,jsonpath,jsonpath-as-json,jsonpath-file,name,template,templatefile,wide,yaml"
            ),
        })
    }

    /// Whether this format prints the server's Table rather than the objects.
    pub fn is_table(&self) -> bool {
        matches!(self, Output::Table { .. })
    }
}

fn parse_custom_columns(spec: &str) -> anyhow::Result<Vec<(String, jsonpath::Template)>> {
    let mut columns = Vec::new();
    for part in spec.split(',') {
        let Some((header, path)) = part.split_once(':') else {
            anyhow::bail!(
                "unexpected custom-columns spec: {part}, expected <header>:<json-path-expr>"
            );
        };
        let path = path.trim();
        let template = if path.starts_with('{') {
            path.to_string()
        } else {
            format!("{{{path}}}")
        };
        let t = jsonpath::Template::parse(&template).map_err(anyhow::Error::msg)?;
        columns.push((header.to_string(), t));
    }
    Ok(columns)
}

/// The object with `apiVersion` and `kind` set (list items come without them).
pub fn with_type(mut obj: Value, res: &ResourceInfo) -> Value {
    if let Value::Object(m) = &mut obj {
        if !m.contains_key("apiVersion") || !m.contains_key("kind") {
            let mut out = serde_json::Map::new();
            out.insert("apiVersion".into(), json!(res.api_version()));
            out.insert("kind".into(), json!(res.kind));
            for (k, v) in std::mem::take(m) {
                out.entry(k).or_insert(v);
            }
            return Value::Object(out);
        }
    }
    obj
}

/// Drops `metadata.managedFields`, as kubectl does unless `--show-managed-fields`.
pub fn strip_managed_fields(obj: &mut Value) {
    if let Some(Value::Object(meta)) = obj.get_mut("metadata") {
        meta.remove("managedFields");
    }
}

/// The `kind: List` kubectl wraps several objects in.
pub fn list_of(items: Vec<Value>) -> Value {
    json!({"apiVersion": "v1", "items": items, "kind": "List", "metadata": {"resourceVersion": ""}})
}

/// `pod/x` or `deployment.apps/x`.
pub fn object_name(obj: &Value, res: &ResourceInfo) -> String {
    format!(
        "{}/{}",
        res.kind_group(),
        obj["metadata"]["name"].as_str().unwrap_or_default()
    )
}

/// Prints objects (each with its resource type) in a non-table format. `single`: the
/// user named exactly one object, which then prints alone rather than in a List.
pub fn print_objects(
    output: &Output,
    objects: &[(Value, ResourceInfo)],
    single: bool,
    no_headers: bool,
) -> anyhow::Result<String> {
    let typed: Vec<Value> = objects
        .iter()
        .map(|(o, r)| with_type(o.clone(), r))
        .collect();
    let data = if single && typed.len() == 1 {
        typed[0].clone()
    } else {
        list_of(typed)
    };
    Ok(match output {
        Output::Yaml => yaml::to_yaml(&data),
        Output::Json => json::to_json(&data),
        Output::Name => objects
            .iter()
            .map(|(o, r)| format!("{}\n", object_name(o, r)))
            .collect(),
        Output::JsonPath(t) => t.execute(&data).map_err(anyhow::Error::msg)?,
        Output::CustomColumns(columns) => {
            custom_columns(columns, objects.iter().map(|(o, _)| o), !no_headers)
        }
        Output::Table { .. } => String::new(),
    })
}

/// The `-o custom-columns` table.
pub fn custom_columns<'a>(
    columns: &[(String, jsonpath::Template)],
    objects: impl Iterator<Item = &'a Value>,
    headers: bool,
) -> String {
    let mut tw = tabwriter::TabWriter::table();
    if headers {
        tw.row(&columns.iter().map(|(h, _)| h.clone()).collect::<Vec<_>>());
    }
    for obj in objects {
        let cells: Vec<String> = columns
            .iter()
            .map(|(_, t)| {
                let values = t.values(obj);
                if values.is_empty() {
                    "<none>".to_string()
                } else {
                    values
                        .iter()
                        .map(go_value_text)
                        .collect::<Vec<_>>()
                        .join(",")
                }
            })
            .collect();
        tw.row(&cells);
    }
    tw.flush()
}

/// A value as Go's `fmt.Sprint` prints a decoded JSON value (`map[a:b]`, `[x y]`).
pub fn go_value_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "<nil>".into(),
        Value::Array(a) => format!(
            "[{}]",
            a.iter().map(go_value_text).collect::<Vec<_>>().join(" ")
        ),
        Value::Object(m) => {
            let mut entries: Vec<_> = m.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            let parts: Vec<String> = entries
                .iter()
                .map(|(k, v)| format!("{k}:{}", go_value_text(v)))
                .collect();
            format!("map[{}]", parts.join(" "))
        }
        other => other.to_string(),
    }
}

/// `No resources found in default namespace.` (or without the namespace).
pub fn no_resources_message(namespace: Option<&str>) -> String {
    match namespace {
        Some(ns) => format!("No resources found in {ns} namespace."),
        None => "No resources found".to_string(),
    }
}
