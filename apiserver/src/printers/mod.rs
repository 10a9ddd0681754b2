//! Server-side table printing: what kube-apiserver answers when a client
//! (`kubectl get`) asks for `Accept: application/json;as=Table;v=v1;g=meta.k8s.io`.
//!
//! The column sets and cell values follow Kubernetes' own printers
//! (`pkg/printers/internalversion`). As in kube-apiserver, rows are always
//! generated "wide": every column, including the `priority: 1` ones that only
//! `kubectl get -o wide` shows, has a cell; the client drops what it hides.
//!
//! Resources without a dedicated printer get one of two generic layouts:
//! built-in kinds Kubernetes serves with its default table convertor
//! (`roles`, `clusterroles`, `limitranges`, `customresourcedefinitions`, …)
//! print `Name` + `Created At` (RFC 3339), and anything else (custom
//! resources) prints `Name` + `Age`, like a CRD without printer columns.
//!
//! Everything here is a pure function over objects as stored (JSON with
//! `apiVersion`, `kind`, `metadata`); missing or malformed fields never panic,
//! they print the way Go prints a zero value.

mod apps;
mod core;
mod other;
pub(crate) mod util;

use chrono::{DateTime, Utc};
use serde_json::{json, Map, Value};

pub use util::{human_duration, parse_time, translate_timestamp_since};

/// One column of a table (`meta.k8s.io/v1` `TableColumnDefinition`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Column {
    /// Header as Kubernetes names it (`Name`, `Nominated Node`); kubectl upper-cases it.
    pub name: &'static str,
    /// OpenAPI type: `string`, `integer`, `boolean`, `number`, `date`.
    pub type_: &'static str,
    /// OpenAPI format; `name` marks the column holding the object name.
    pub format: &'static str,
    /// Human description of the column.
    pub description: &'static str,
    /// 0 for default columns, 1 for columns only shown by `-o wide`.
    pub priority: i32,
}

impl Column {
    /// The JSON form of the column definition.
    pub fn to_json(&self) -> Value {
        json!({
            "name": self.name,
            "type": self.type_,
            "format": self.format,
            "description": self.description,
            "priority": self.priority,
        })
    }
}

/// The `includeObject` query parameter of a Table request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IncludeObject {
    /// `None`: rows carry no object (`"object": null`).
    None,
    /// `Metadata` (the default): rows carry a `PartialObjectMetadata`.
    #[default]
    Metadata,
    /// `Object`: rows carry the full object (kubectl asks for it with `--sort-by`).
    Object,
}

impl IncludeObject {
    /// Parses the query parameter value; an empty value is the default
    /// (`Metadata`), an unknown one is `None` (the caller should answer 400).
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "" | "Metadata" => Some(Self::Metadata),
            "None" => Some(Self::None),
            "Object" => Some(Self::Object),
            _ => None,
        }
    }
}

pub(crate) const NAME_DESC: &str = "Name must be unique within a namespace. Is required when creating resources, although some resources may allow a client to request the generation of an appropriate name automatically. Name is primarily intended for creation idempotence and configuration definition. Cannot be updated. More info: https://kubernetes.io/docs/concepts/overview/working-with-objects/names#names";
pub(crate) const CREATION_DESC: &str = "CreationTimestamp is a timestamp representing the server time when this object was created. It is not guaranteed to be set in happens-before order across separate operations. Clients may not set this value. It is represented in RFC3339 form and is in UTC.\n\nPopulated by the system. Read-only. Null for lists. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#metadata";

/// A default-priority column.
pub(crate) const fn col(
    name: &'static str,
    type_: &'static str,
    description: &'static str,
) -> Column {
    Column {
        name,
        type_,
        format: "",
        description,
        priority: 0,
    }
}

/// A `-o wide` (priority 1) column.
pub(crate) const fn wide(
    name: &'static str,
    type_: &'static str,
    description: &'static str,
) -> Column {
    Column {
        name,
        type_,
        format: "",
        description,
        priority: 1,
    }
}

/// The `Name` column every printer starts with.
pub(crate) const NAME: Column = Column {
    name: "Name",
    type_: "string",
    format: "name",
    description: NAME_DESC,
    priority: 0,
};

/// The `Age` column.
pub(crate) const AGE: Column = col("Age", "string", CREATION_DESC);

pub(crate) const CONTAINERS: Column = wide(
    "Containers",
    "string",
    "Names of each container in the template.",
);
pub(crate) const IMAGES: Column = wide(
    "Images",
    "string",
    "Images referenced by each container in the template.",
);

/// Row function of a printer: all cells (wide included) for one object.
pub(crate) type RowFn = fn(&Value, DateTime<Utc>) -> Vec<Value>;

/// A printer: its columns and its row function.
pub(crate) type Printer = (&'static [Column], RowFn);

/// Built-in resources Kubernetes serves with the default table convertor.
const CREATED_AT_RESOURCES: &[(&str, &str)] = &[
    ("rbac.authorization.k8s.io", "roles"),
    ("rbac.authorization.k8s.io", "clusterroles"),
    ("", "limitranges"),
    ("apiextensions.k8s.io", "customresourcedefinitions"),
    ("", "bindings"),
];

static CREATED_AT_COLUMNS: &[Column] = &[NAME, col("Created At", "date", CREATION_DESC)];
static CUSTOM_COLUMNS: &[Column] = &[NAME, col("Age", "date", CREATION_DESC)];

fn created_at_row(obj: &Value, _now: DateTime<Utc>) -> Vec<Value> {
    let created = util::parse_time(util::get(obj, &["metadata", "creationTimestamp"])).map_or_else(
        || "0001-01-01T00:00:00Z".to_string(),
        |t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
    );
    vec![json!(util::name(obj)), json!(created)]
}

fn custom_row(obj: &Value, now: DateTime<Utc>) -> Vec<Value> {
    // A CRD "date" column is rendered by the server as an age; a missing
    // timestamp gives a null cell.
    let age = util::parse_time(util::get(obj, &["metadata", "creationTimestamp"]))
        .map_or(Value::Null, |t| {
            json!(translate_timestamp_since(Some(t), now))
        });
    vec![json!(util::name(obj)), age]
}

fn printer(resource: &str, group: &str) -> Printer {
    if let Some(p) = core::printer(resource, group)
        .or_else(|| apps::printer(resource, group))
        .or_else(|| other::printer(resource, group))
    {
        return p;
    }
    if CREATED_AT_RESOURCES.contains(&(group, resource)) {
        (CREATED_AT_COLUMNS, created_at_row)
    } else {
        (CUSTOM_COLUMNS, custom_row)
    }
}

/// The columns of `resource` (plural) in `group` (`""` for the core group).
pub fn columns(resource: &str, group: &str) -> &'static [Column] {
    printer(resource, group).0
}

/// The cells of one object's row: as many as [`columns`] returns, as JSON
/// strings, integers or booleans, exactly as Kubernetes emits them.
pub fn row(resource: &str, group: &str, obj: &Value, now: DateTime<Utc>) -> Vec<Value> {
    (printer(resource, group).1)(obj, now)
}

/// Row conditions Kubernetes attaches (pods that `Succeeded` or `Failed` are
/// marked `Completed`), or `None`.
pub fn row_conditions(resource: &str, group: &str, obj: &Value) -> Option<Value> {
    if !group.is_empty() || resource != "pods" {
        return None;
    }
    let (reason, message) = match util::str_at(obj, &["status", "phase"]) {
        "Succeeded" => ("Succeeded", "The pod has completed successfully."),
        "Failed" => ("Failed", "The pod failed."),
        _ => return None,
    };
    Some(json!([{"type": "Completed", "status": "True", "reason": reason, "message": message}]))
}

/// The `object` of a table row for `include`.
pub fn row_object(obj: &Value, include: IncludeObject) -> Value {
    match include {
        IncludeObject::None => Value::Null,
        IncludeObject::Object => obj.clone(),
        IncludeObject::Metadata => json!({
            "kind": "PartialObjectMetadata",
            "apiVersion": "meta.k8s.io/v1",
            "metadata": obj.get("metadata").cloned().unwrap_or_else(|| json!({})),
        }),
    }
}

/// One `TableRow` (`cells`, `conditions` when present, `object`).
pub fn table_row(
    resource: &str,
    group: &str,
    obj: &Value,
    include: IncludeObject,
    now: DateTime<Utc>,
) -> Value {
    let mut r = Map::new();
    r.insert("cells".into(), Value::Array(row(resource, group, obj, now)));
    if let Some(c) = row_conditions(resource, group, obj) {
        r.insert("conditions".into(), c);
    }
    r.insert("object".into(), row_object(obj, include));
    Value::Object(r)
}

/// The whole `meta.k8s.io/v1` `Table` for `objs`. `list_meta` is the list's
/// metadata (`resourceVersion`, `continue`, `remainingItemCount`); null or
/// empty fields are dropped as Go's `omitempty` does.
pub fn table(
    resource: &str,
    group: &str,
    objs: &[Value],
    include: IncludeObject,
    list_meta: Value,
    now: DateTime<Utc>,
) -> Value {
    let mut meta = Map::new();
    if let Value::Object(m) = list_meta {
        for (k, v) in m {
            let empty = match &v {
                Value::Null => true,
                Value::String(s) => s.is_empty(),
                _ => false,
            };
            if !empty {
                meta.insert(k, v);
            }
        }
    }
    let cols: Vec<Value> = columns(resource, group)
        .iter()
        .map(Column::to_json)
        .collect();
    let rows: Vec<Value> = objs
        .iter()
        .map(|o| table_row(resource, group, o, include, now))
        .collect();
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": Value::Object(meta),
        "columnDefinitions": cols,
        "rows": rows,
    })
}

#[cfg(test)]
pub(crate) mod test_support {
    use chrono::{DateTime, Utc};

    /// Fixed "now" for tests: 2025-01-01T12:00:00Z.
    pub fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2025-01-01T12:00:00Z")
            .map(|t| t.with_timezone(&Utc))
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::now;
    use super::*;

    /// Every printer's rows are as long as its columns, even for empty objects.
    #[test]
    fn row_length_matches_columns() {
        let kinds = [
            ("pods", ""),
            ("nodes", ""),
            ("namespaces", ""),
            ("services", ""),
            ("endpoints", ""),
            ("configmaps", ""),
            ("secrets", ""),
            ("serviceaccounts", ""),
            ("events", ""),
            ("replicationcontrollers", ""),
            ("persistentvolumes", ""),
            ("persistentvolumeclaims", ""),
            ("limitranges", ""),
            ("resourcequotas", ""),
            ("podtemplates", ""),
            ("deployments", "apps"),
            ("replicasets", "apps"),
            ("statefulsets", "apps"),
            ("daemonsets", "apps"),
            ("controllerrevisions", "apps"),
            ("jobs", "batch"),
            ("cronjobs", "batch"),
            ("horizontalpodautoscalers", "autoscaling"),
            ("poddisruptionbudgets", "policy"),
            ("certificatesigningrequests", "certificates.k8s.io"),
            ("leases", "coordination.k8s.io"),
            ("ingresses", "networking.k8s.io"),
            ("ingressclasses", "networking.k8s.io"),
            ("networkpolicies", "networking.k8s.io"),
            ("roles", "rbac.authorization.k8s.io"),
            ("clusterroles", "rbac.authorization.k8s.io"),
            ("rolebindings", "rbac.authorization.k8s.io"),
            ("clusterrolebindings", "rbac.authorization.k8s.io"),
            ("storageclasses", "storage.k8s.io"),
            ("endpointslices", "discovery.k8s.io"),
            ("events", "events.k8s.io"),
            ("priorityclasses", "scheduling.k8s.io"),
            ("runtimeclasses", "node.k8s.io"),
            (
                "mutatingwebhookconfigurations",
                "admissionregistration.k8s.io",
            ),
            (
                "validatingwebhookconfigurations",
                "admissionregistration.k8s.io",
            ),
            ("widgets", "example.com"),
        ];
        for (res, group) in kinds {
            for obj in [
                json!({}),
                json!({"metadata": {"name": "x"}, "spec": null, "status": 7}),
            ] {
                assert_eq!(
                    row(res, group, &obj, now()).len(),
                    columns(res, group).len(),
                    "{res}.{group}"
                );
            }
            assert_eq!(
                columns(res, group)
                    .iter()
                    .filter(|c| c.format == "name")
                    .count(),
                1,
                "{res}"
            );
        }
    }

    #[test]
    fn default_layouts() {
        let role = json!({"metadata": {"name": "r", "creationTimestamp": "2024-06-01T10:00:00Z"}});
        let names: Vec<&str> = columns("roles", "rbac.authorization.k8s.io")
            .iter()
            .map(|c| c.name)
            .collect();
        assert_eq!(names, ["Name", "Created At"]);
        assert_eq!(
            row("roles", "rbac.authorization.k8s.io", &role, now()),
            vec![json!("r"), json!("2024-06-01T10:00:00Z")]
        );
        let names: Vec<&str> = columns("widgets", "example.com")
            .iter()
            .map(|c| c.name)
            .collect();
        assert_eq!(names, ["Name", "Age"]);
        assert_eq!(
            row("widgets", "example.com", &role, now()),
            vec![json!("r"), json!("214d")]
        );
    }

    #[test]
    fn table_json_shape() {
        let pod = json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "done", "namespace": "default", "uid": "u1",
                         "creationTimestamp": "2025-01-01T11:00:00Z"},
            "spec": {"containers": [{"name": "c", "image": "busybox"}]},
            "status": {"phase": "Succeeded", "containerStatuses": [{"name": "c", "ready": false,
                "restartCount": 0, "state": {"terminated": {"exitCode": 0, "reason": "Completed"}}}]}
        });
        let t = table(
            "pods",
            "",
            std::slice::from_ref(&pod),
            IncludeObject::Metadata,
            json!({"resourceVersion": "42", "continue": "", "remainingItemCount": null}),
            now(),
        );
        assert_eq!(t["kind"], "Table");
        assert_eq!(t["apiVersion"], "meta.k8s.io/v1");
        assert_eq!(t["metadata"], json!({"resourceVersion": "42"}));
        assert_eq!(t["columnDefinitions"][0]["name"], "Name");
        assert_eq!(t["columnDefinitions"][0]["format"], "name");
        assert_eq!(t["columnDefinitions"][5]["priority"], 1);
        let r = &t["rows"][0];
        assert_eq!(
            r["cells"],
            json!([
                "done",
                "0/1",
                "Completed",
                "0",
                "60m",
                "<none>",
                "<none>",
                "<none>",
                "<none>"
            ])
        );
        assert_eq!(r["conditions"][0]["type"], "Completed");
        assert_eq!(r["conditions"][0]["reason"], "Succeeded");
        assert_eq!(r["object"]["kind"], "PartialObjectMetadata");
        assert_eq!(r["object"]["apiVersion"], "meta.k8s.io/v1");
        assert_eq!(r["object"]["metadata"]["uid"], "u1");

        let t = table(
            "pods",
            "",
            std::slice::from_ref(&pod),
            IncludeObject::Object,
            json!({}),
            now(),
        );
        assert_eq!(t["rows"][0]["object"], pod);
        let t = table("pods", "", &[pod], IncludeObject::None, json!({}), now());
        assert!(t["rows"][0]["object"].is_null());
        assert_eq!(t["metadata"], json!({}));
        assert_eq!(IncludeObject::parse(""), Some(IncludeObject::Metadata));
        assert_eq!(IncludeObject::parse("Object"), Some(IncludeObject::Object));
        assert_eq!(IncludeObject::parse("x"), None);
    }
}
