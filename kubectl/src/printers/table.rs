//! Server-side tables (`Accept: application/json;as=Table;v=v1;g=meta.k8s.io`): the
//! apiserver chooses the columns, kubectl decorates them — uppercase headers, columns
//! of priority > 0 only with `-o wide`, a NAMESPACE column for `-A`, `kind/` name
//! prefixes when several types are printed, LABELS for `--show-labels`, `-L` columns.

use serde::Deserialize;
use serde_json::Value;

use super::tabwriter::TabWriter;
use crate::resources::ResourceInfo;

/// What `kubectl get` asks for to print a table.
pub const TABLE_ACCEPT: &str = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json";

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct ColumnDefinition {
    pub name: String,
    #[serde(default)]
    pub priority: i32,
}

#[derive(Debug, Clone, Deserialize, Default)]
pub struct TableRow {
    #[serde(default)]
    pub cells: Vec<Value>,
    #[serde(default)]
    pub object: Value,
}

/// A `meta.k8s.io/v1` Table.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct Table {
    #[serde(default)]
    pub column_definitions: Vec<ColumnDefinition>,
    #[serde(default)]
    pub rows: Vec<TableRow>,
    #[serde(default)]
    pub metadata: Value,
}

impl Table {
    /// A table from the server's answer: a Table, or (for servers without tables) a
    /// list or object shown as NAME and AGE.
    pub fn from_response(v: Value) -> anyhow::Result<Table> {
        if v["kind"] == "Table" {
            return Ok(serde_json::from_value(v)?);
        }
        let items: Vec<Value> = match v.get("items") {
            Some(Value::Array(items)) => items.clone(),
            _ => vec![v.clone()],
        };
        Ok(Table {
            column_definitions: vec![
                ColumnDefinition {
                    name: "Name".into(),
                    priority: 0,
                },
                ColumnDefinition {
                    name: "Age".into(),
                    priority: 0,
                },
            ],
            rows: items
                .into_iter()
                .map(|o| TableRow {
                    cells: vec![
                        o["metadata"]["name"].clone(),
                        Value::String(age(o["metadata"]["creationTimestamp"].as_str())),
                    ],
                    object: o,
                })
                .collect(),
            metadata: v["metadata"].clone(),
        })
    }

    pub fn resource_version(&self) -> Option<String> {
        self.metadata["resourceVersion"]
            .as_str()
            .map(str::to_string)
    }
}

/// How a table is decorated.
#[derive(Debug, Clone, Default)]
pub struct TableOptions {
    pub wide: bool,
    pub show_labels: bool,
    pub namespace_column: bool,
    /// Prefix names with `kind.group/`.
    pub with_kind: bool,
    pub no_headers: bool,
    pub label_columns: Vec<String>,
}

/// The header cells of `table`.
pub fn headers(table: &Table, opts: &TableOptions) -> Vec<String> {
    let mut out = Vec::new();
    if opts.namespace_column {
        out.push("NAMESPACE".to_string());
    }
    for c in table
        .column_definitions
        .iter()
        .filter(|c| opts.wide || c.priority == 0)
    {
        out.push(c.name.to_uppercase());
    }
    for l in &opts.label_columns {
        out.push(l.rsplit('/').next().unwrap_or(l).to_uppercase());
    }
    if opts.show_labels {
        out.push("LABELS".to_string());
    }
    out
}

/// The cells of each row of `table`.
pub fn rows(table: &Table, res: &ResourceInfo, opts: &TableOptions) -> Vec<Vec<String>> {
    table
        .rows
        .iter()
        .map(|row| row_cells(table, row, res, opts))
        .collect()
}

fn row_cells(
    table: &Table,
    row: &TableRow,
    res: &ResourceInfo,
    opts: &TableOptions,
) -> Vec<String> {
    let meta = &row.object["metadata"];
    let mut out = Vec::new();
    if opts.namespace_column {
        out.push(meta["namespace"].as_str().unwrap_or_default().to_string());
    }
    for (i, (c, cell)) in table
        .column_definitions
        .iter()
        .zip(row.cells.iter())
        .enumerate()
    {
        if !(opts.wide || c.priority == 0) {
            continue;
        }
        let mut text = cell_text(cell);
        if i == 0 && opts.with_kind {
            text = format!("{}/{text}", res.kind_group());
        }
        out.push(text);
    }
    for l in &opts.label_columns {
        out.push(meta["labels"][l].as_str().unwrap_or_default().to_string());
    }
    if opts.show_labels {
        out.push(format_labels(&meta["labels"]));
    }
    out
}

/// A cell as kubectl prints it.
pub fn cell_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "<none>".into(),
        Value::Number(n) => match n.as_f64() {
            Some(f) if f.fract() == 0.0 && f.abs() < 1e15 => format!("{}", f as i64),
            _ => n.to_string(),
        },
        other => super::go_value_text(other),
    }
}

/// `a=b,c=d` sorted by key, or `<none>`.
pub fn format_labels(labels: &Value) -> String {
    let Value::Object(m) = labels else {
        return "<none>".into();
    };
    if m.is_empty() {
        return "<none>".into();
    }
    let mut entries: Vec<_> = m.iter().collect();
    entries.sort_by(|a, b| a.0.cmp(b.0));
    entries
        .iter()
        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
        .collect::<Vec<_>>()
        .join(",")
}

/// Prints tables, one per resource type, separated by blank lines as the stock kubectl.
pub struct TablePrinter {
    pub opts: TableOptions,
    printed_any: bool,
}

impl TablePrinter {
    pub fn new(opts: TableOptions) -> TablePrinter {
        TablePrinter {
            opts,
            printed_any: false,
        }
    }

    /// The text for one resource type's table (nothing for no rows).
    pub fn print(&mut self, table: &Table, res: &ResourceInfo) -> String {
        if table.rows.is_empty() {
            return String::new();
        }
        let mut tw = TabWriter::table();
        let mut out = String::new();
        if self.printed_any {
            out.push('\n');
        }
        self.printed_any = true;
        if !self.opts.no_headers {
            tw.row(&headers(table, &self.opts));
        }
        for r in rows(table, res, &self.opts) {
            tw.row(&r);
        }
        out.push_str(&tw.flush());
        out
    }

    pub fn printed_any(&self) -> bool {
        self.printed_any
    }
}

/// kubectl's human-readable age of a timestamp: `45s`, `3m12s`, `5h`, `2d3h`, `<unknown>`.
pub fn age(timestamp: Option<&str>) -> String {
    let Some(ts) = timestamp.and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok()) else {
        return "<unknown>".into();
    };
    let d = chrono::Utc::now().signed_duration_since(ts);
    human_duration(d.num_seconds())
}

/// `duration.HumanDuration` of the apimachinery: the short forms kubectl prints.
pub fn human_duration(seconds: i64) -> String {
    if seconds < -1 {
        return "<invalid>".into();
    }
    let s = seconds.max(0);
    if s < 60 * 2 {
        return format!("{s}s");
    }
    let m = s / 60;
    if m < 10 {
        let rem = s % 60;
        return if rem == 0 {
            format!("{m}m")
        } else {
            format!("{m}m{rem}s")
        };
    }
    if m < 60 * 3 {
        return format!("{m}m");
    }
    let h = s / 3600;
    if h < 8 {
        let rem = (s % 3600) / 60;
        return if rem == 0 {
            format!("{h}h")
        } else {
            format!("{h}h{rem}m")
        };
    }
    if h < 48 {
        return format!("{h}h");
    }
    if h < 24 * 8 {
        let rem = h % 24;
        return if rem == 0 {
            format!("{}d", h / 24)
        } else {
            format!("{}d{rem}h", h / 24)
        };
    }
    if h < 24 * 365 * 2 {
        return format!("{}d", h / 24);
    }
    if h < 24 * 365 * 8 {
        let days = h / 24 % 365;
        return if days == 0 {
            format!("{}y", h / 24 / 365)
        } else {
            format!("{}y{days}d", h / 24 / 365)
        };
    }
    format!("{}y", h / 24 / 365)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_durations() {
        assert_eq!(human_duration(5), "5s");
        assert_eq!(human_duration(119), "119s");
        assert_eq!(human_duration(125), "2m5s");
        assert_eq!(human_duration(600), "10m");
        assert_eq!(human_duration(3 * 3600 + 60), "3h1m");
        assert_eq!(human_duration(50 * 3600), "2d2h");
    }
}
