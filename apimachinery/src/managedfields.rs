//! Server-side apply and field ownership (`metadata.managedFields`), with the semantics
//! of Kubernetes' structured-merge-diff.
//!
//! Every write records which *manager* owns which fields of an object:
//!
//! - [`apply`] (an `application/apply-patch+yaml` PATCH) merges a fully specified
//!   intent into the current object, removes the fields the manager applied before and
//!   no longer applies, and refuses to change a field another manager owns to a
//!   different value ([`ApplyError::Conflicts`]) unless forced, in which case it takes
//!   the field over.
//! - [`update`] (create, update, every other patch) gives the manager the fields the
//!   write changed and takes them from every other manager.
//!
//! A [`FieldSet`] is a set of paths; it is stored as `FieldsV1` JSON, a tree whose keys
//! are `f:<field>`, `k:<key fields as JSON>` (an element of a list keyed by its merge
//! keys), `v:<value as JSON>` (an element of a set) and `i:<index>`; `"."` marks that
//! the node itself, and not only its children, is a member.
//!
//! Lists follow the schema's `patchStrategy`/`patchMergeKey` tags ([`PatchMeta`]):
//! merge lists with a key are maps keyed by it (`+listMapKey` adds `protocol` for
//! container and Service ports, `whenUnsatisfiable` for topology spread constraints),
//! merge lists of scalars are sets, every other list is atomic (one leaf).

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Map, Value};

use crate::patch::{PatchMeta, PatchStrategy};

/// A malformed `metadata.managedFields` entry or `fieldsV1` tree.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FieldsV1Error {
    /// A node of the tree is not a JSON object.
    #[error("fieldsV1: expected an object at {path:?}")]
    ParseNode { path: String },
    /// A key is not `f:`, `k:`, `v:`, `i:` or `.`.
    #[error("fieldsV1: invalid key {key:?}")]
    ParseKey { key: String },
}

/// Why a server-side apply was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApplyError {
    /// Fields owned by other managers would change (the message is Kubernetes').
    #[error("{}", conflicts_message(.0))]
    Conflicts(Vec<Conflict>),
    /// The apply configuration is not a JSON object.
    #[error("apply configuration must be an object")]
    NotAnObject,
    /// An element of a keyed list lacks one of the key fields.
    #[error("{path}: element {index} of an associative list with keys {keys:?} omits key field {missing:?}")]
    MissingKey { path: String, index: usize, keys: Vec<String>, missing: String },
}

/// One field another manager owns and an apply would change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    /// The owning manager's name.
    pub manager: String,
    /// Its operation, API version and subresource, as `managedFields` record them.
    pub operation: Operation,
    pub api_version: String,
    pub subresource: String,
    /// The field, as Kubernetes prints paths: `.spec.replicas`,
    /// `.spec.template.spec.containers[name="web"].image`.
    pub field: String,
}

impl Conflict {
    /// The manager as Kubernetes names it in conflict messages:
    /// `"kubectl" with subresource "scale" using apps/v1` (Update managers carry their
    /// API version; appliers only their name).
    pub fn describe_manager(&self) -> String {
        let mut s = format!("{:?}", self.manager);
        if !self.subresource.is_empty() {
            s.push_str(&format!(" with subresource {:?}", self.subresource));
        }
        if self.operation == Operation::Update {
            s.push_str(&format!(" using {}", self.api_version));
        }
        s
    }

    /// The message of this conflict's `details.causes` entry.
    pub fn cause_message(&self) -> String {
        format!("conflict with {}", self.describe_manager())
    }
}

/// Kubernetes' message for a refused apply: `Apply failed with 1 conflict: conflict with
/// "x" using apps/v1: .spec.replicas`, or, for several, one `conflicts with "x":` line
/// per manager (sorted) followed by `- <field>` lines.
pub fn conflicts_message(conflicts: &[Conflict]) -> String {
    if let [c] = conflicts {
        return format!("Apply failed with 1 conflict: {}: {}", c.cause_message(), c.field);
    }
    let mut by_manager: BTreeMap<String, Vec<&str>> = BTreeMap::new();
    for c in conflicts {
        by_manager.entry(c.describe_manager()).or_default().push(&c.field);
    }
    let mut lines = Vec::new();
    for (manager, fields) in by_manager {
        lines.push(format!("conflicts with {manager}:"));
        lines.extend(fields.into_iter().map(|f| format!("- {f}")));
    }
    format!("Apply failed with {} conflicts: {}", conflicts.len(), lines.join("\n"))
}

/// One step of a field path.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PathElement {
    /// A field of an object (`f:name`).
    Field(String),
    /// An element of a keyed list, by its key fields as canonical (sorted) JSON (`k:{"name":"web"}`).
    Key(String),
    /// An element of a set, as canonical JSON (`v:"example.com/finalizer"`).
    Value(String),
    /// An element of a list by position (`i:0`), for elements without their keys.
    Index(usize),
}

impl PathElement {
    /// The `fieldsV1` key of this element.
    pub fn to_fields_v1_key(&self) -> String {
        match self {
            PathElement::Field(f) => format!("f:{f}"),
            PathElement::Key(k) => format!("k:{k}"),
            PathElement::Value(v) => format!("v:{v}"),
            PathElement::Index(i) => format!("i:{i}"),
        }
    }

    /// Parses a `fieldsV1` key (not `.`).
    pub fn parse(key: &str) -> Result<PathElement, FieldsV1Error> {
        let bad = || FieldsV1Error::ParseKey { key: key.to_string() };
        let (kind, rest) = key.split_once(':').ok_or_else(bad)?;
        match kind {
            "f" => Ok(PathElement::Field(rest.to_string())),
            "k" => match serde_json::from_str::<Value>(rest) {
                Ok(Value::Object(m)) => Ok(PathElement::Key(canonical_key(m.iter()))),
                _ => Err(bad()),
            },
            "v" => serde_json::from_str::<Value>(rest).map(|v| PathElement::Value(v.to_string())).map_err(|_| bad()),
            "i" => rest.parse().map(PathElement::Index).map_err(|_| bad()),
            _ => Err(bad()),
        }
    }
}

impl std::fmt::Display for PathElement {
    /// As Kubernetes prints path elements: `.name`, `[name="web"]`, `[="value"]`, `[0]`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PathElement::Field(name) => write!(f, ".{name}"),
            PathElement::Key(k) => {
                let parts: Vec<String> = match serde_json::from_str::<Value>(k) {
                    Ok(Value::Object(m)) => m.iter().map(|(k, v)| format!("{k}={v}")).collect(),
                    _ => vec![k.clone()],
                };
                write!(f, "[{}]", parts.join(","))
            }
            PathElement::Value(v) => write!(f, "[={v}]"),
            PathElement::Index(i) => write!(f, "[{i}]"),
        }
    }
}

/// A path from the object's root.
pub type Path = Vec<PathElement>;

/// A path as Kubernetes prints it (`.spec.template.spec.containers[name="web"].image`).
pub fn path_string(path: &[PathElement]) -> String {
    path.iter().map(ToString::to_string).collect()
}

fn canonical_key<'a>(pairs: impl Iterator<Item = (&'a String, &'a Value)>) -> String {
    let sorted: BTreeMap<&String, &Value> = pairs.collect();
    let body: Vec<String> = sorted.into_iter().map(|(k, v)| format!("{}:{}", Value::String(k.clone()), v)).collect();
    format!("{{{}}}", body.join(","))
}

/// A set of field paths.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldSet {
    paths: BTreeSet<Path>,
}

#[derive(Default)]
struct Node {
    member: bool,
    children: BTreeMap<PathElement, Node>,
}

impl FieldSet {
    /// The empty set.
    pub fn new() -> FieldSet {
        FieldSet::default()
    }

    /// Adds a path.
    pub fn insert(&mut self, path: Path) {
        self.paths.insert(path);
    }

    /// Whether `path` is a member.
    pub fn contains(&self, path: &[PathElement]) -> bool {
        self.paths.contains(path)
    }

    /// Whether `prefix` or any path below it is a member.
    pub fn has_prefix(&self, prefix: &[PathElement]) -> bool {
        self.paths.range(prefix.to_vec()..).next().is_some_and(|p| p.starts_with(prefix))
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.paths.is_empty()
    }

    /// The number of paths.
    pub fn len(&self) -> usize {
        self.paths.len()
    }

    /// The paths, in order.
    pub fn iter(&self) -> std::collections::btree_set::Iter<'_, Path> {
        self.paths.iter()
    }

    /// Paths in either set.
    pub fn union(&self, other: &FieldSet) -> FieldSet {
        FieldSet { paths: self.paths.union(&other.paths).cloned().collect() }
    }

    /// Paths in `self` and not in `other`.
    pub fn difference(&self, other: &FieldSet) -> FieldSet {
        FieldSet { paths: self.paths.difference(&other.paths).cloned().collect() }
    }

    /// Paths in both sets.
    pub fn intersection(&self, other: &FieldSet) -> FieldSet {
        FieldSet { paths: self.paths.intersection(&other.paths).cloned().collect() }
    }

    /// Keeps the paths for which `keep` holds.
    pub fn retain(&mut self, keep: impl FnMut(&Path) -> bool) {
        self.paths.retain(keep);
    }

    /// The `fieldsV1` JSON of the set.
    pub fn to_fields_v1(&self) -> Value {
        let mut root = Node::default();
        for path in &self.paths {
            let mut node = &mut root;
            for pe in path {
                node = node.children.entry(pe.clone()).or_default();
            }
            node.member = true;
        }
        fn encode(node: &Node) -> Value {
            let mut m = Map::new();
            if node.member && !node.children.is_empty() {
                m.insert(".".into(), Value::Object(Map::new()));
            }
            let mut children: Vec<(String, Value)> =
                node.children.iter().map(|(pe, child)| (pe.to_fields_v1_key(), encode(child))).collect();
            children.sort_by(|a, b| a.0.cmp(&b.0));
            m.extend(children);
            Value::Object(m)
        }
        encode(&root)
    }

    /// Parses `fieldsV1` JSON.
    pub fn from_fields_v1(v: &Value) -> Result<FieldSet, FieldsV1Error> {
        fn walk(v: &Value, prefix: &mut Path, out: &mut FieldSet) -> Result<(), FieldsV1Error> {
            let obj = v.as_object().ok_or_else(|| FieldsV1Error::ParseNode { path: path_string(prefix) })?;
            if obj.is_empty() && !prefix.is_empty() {
                out.insert(prefix.clone());
            }
            for (k, child) in obj {
                if k == "." {
                    if !prefix.is_empty() {
                        out.insert(prefix.clone());
                    }
                    continue;
                }
                prefix.push(PathElement::parse(k)?);
                walk(child, prefix, out)?;
                prefix.pop();
            }
            Ok(())
        }
        let mut out = FieldSet::new();
        walk(v, &mut Vec::new(), &mut out)?;
        Ok(out)
    }
}

impl FromIterator<Path> for FieldSet {
    fn from_iter<I: IntoIterator<Item = Path>>(iter: I) -> FieldSet {
        FieldSet { paths: iter.into_iter().collect() }
    }
}

/// The operation a `managedFields` entry records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Operation {
    Apply,
    Update,
}

impl Operation {
    /// `Apply` or `Update`.
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Apply => "Apply",
            Operation::Update => "Update",
        }
    }
}

/// One entry of `metadata.managedFields`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManagedFieldsEntry {
    pub manager: String,
    pub operation: Operation,
    pub api_version: String,
    pub time: Option<String>,
    /// `""` for the main resource, else `status`, `scale`…
    pub subresource: String,
    pub fields: FieldSet,
}

impl ManagedFieldsEntry {
    /// Whether both entries belong to the same manager: name, operation and
    /// subresource, and for Update managers the API version too (as Kubernetes'
    /// manager identifiers).
    pub fn same_manager(&self, manager: &str, operation: Operation, api_version: &str, subresource: &str) -> bool {
        self.manager == manager
            && self.operation == operation
            && self.subresource == subresource
            && (operation == Operation::Apply || self.api_version == api_version)
    }

    /// The entry as stored in `metadata.managedFields`.
    pub fn to_json(&self) -> Value {
        let mut m = Map::new();
        m.insert("manager".into(), Value::String(self.manager.clone()));
        m.insert("operation".into(), Value::String(self.operation.as_str().into()));
        m.insert("apiVersion".into(), Value::String(self.api_version.clone()));
        if let Some(t) = &self.time {
            m.insert("time".into(), Value::String(t.clone()));
        }
        m.insert("fieldsType".into(), Value::String("FieldsV1".into()));
        m.insert("fieldsV1".into(), self.fields.to_fields_v1());
        if !self.subresource.is_empty() {
            m.insert("subresource".into(), Value::String(self.subresource.clone()));
        }
        Value::Object(m)
    }

    /// Parses one stored entry.
    pub fn from_json(v: &Value) -> Result<ManagedFieldsEntry, FieldsV1Error> {
        let s = |k: &str| v.get(k).and_then(Value::as_str).unwrap_or_default().to_string();
        let operation = match v.get("operation").and_then(Value::as_str) {
            Some("Apply") => Operation::Apply,
            _ => Operation::Update,
        };
        let empty = Value::Object(Map::new());
        Ok(ManagedFieldsEntry {
            manager: s("manager"),
            operation,
            api_version: s("apiVersion"),
            time: v.get("time").and_then(Value::as_str).map(str::to_string),
            subresource: s("subresource"),
            fields: FieldSet::from_fields_v1(v.get("fieldsV1").unwrap_or(&empty))?,
        })
    }
}

/// The entries of an object's `metadata.managedFields`; malformed entries are dropped.
pub fn decode_managed_fields(obj: &Value) -> Vec<ManagedFieldsEntry> {
    obj.pointer("/metadata/managedFields")
        .and_then(Value::as_array)
        .map(|entries| entries.iter().filter_map(|e| ManagedFieldsEntry::from_json(e).ok()).collect())
        .unwrap_or_default()
}

/// Stores `entries` in `obj`'s `metadata.managedFields`, without empty sets, in
/// Kubernetes' order (Apply before Update, then by time, manager, API version,
/// subresource); no entries removes the field.
pub fn encode_managed_fields(obj: &mut Value, mut entries: Vec<ManagedFieldsEntry>) {
    entries.retain(|e| !e.fields.is_empty());
    entries.sort_by(|a, b| {
        (a.operation, &a.time, &a.manager, &a.api_version, &a.subresource).cmp(&(
            b.operation,
            &b.time,
            &b.manager,
            &b.api_version,
            &b.subresource,
        ))
    });
    let Some(root) = obj.as_object_mut() else { return };
    let meta = root.entry("metadata").or_insert_with(|| Value::Object(Map::new()));
    let Some(meta) = meta.as_object_mut() else { return };
    if entries.is_empty() {
        meta.remove("managedFields");
    } else {
        meta.insert("managedFields".into(), Value::Array(entries.iter().map(ManagedFieldsEntry::to_json).collect()));
    }
}

/// The manager Kubernetes records for a write without `fieldManager`: the User-Agent
/// up to its first `/` (`kubectl/v1.32.0 (linux/amd64)…` → `kubectl`), printable
/// characters only, at most 128.
pub fn manager_from_user_agent(user_agent: &str) -> String {
    user_agent.split('/').next().unwrap_or_default().chars().filter(|c| !c.is_control()).take(128).collect()
}

// ---------------------------------------------------------------------------------
// Schema: how a list is identified.

#[derive(Debug, Clone, PartialEq, Eq)]
enum ListKind {
    /// Elements keyed by these fields.
    Map(Vec<String>),
    /// Scalars, each a member.
    Set,
    /// The whole list is one leaf.
    Atomic,
}

fn list_kind(meta: &dyn PatchMeta, schema: &[String]) -> ListKind {
    let path: Vec<&str> = schema.iter().map(String::as_str).collect();
    let m = meta.lookup(&path);
    match (m.strategy, m.merge_key) {
        (Some(PatchStrategy::Merge), Some(key)) => ListKind::Map(list_map_keys(&path, &key)),
        (Some(PatchStrategy::Merge), None) => ListKind::Set,
        _ => ListKind::Atomic,
    }
}

/// `+listMapKey` markers where they differ from `patchMergeKey`.
fn list_map_keys(path: &[&str], merge_key: &str) -> Vec<String> {
    let keys: &[&str] = match (path.last().copied(), merge_key) {
        (Some("ports"), "containerPort") => &["containerPort", "protocol"],
        (Some("ports"), "port") => &["port", "protocol"],
        (Some("topologySpreadConstraints"), "topologyKey") => &["topologyKey", "whenUnsatisfiable"],
        _ => return vec![merge_key.to_string()],
    };
    keys.iter().map(|k| k.to_string()).collect()
}

/// The value a key field takes when omitted (the API's defaults).
fn key_default(key: &str) -> Option<Value> {
    match key {
        "protocol" => Some(Value::String("TCP".into())),
        _ => None,
    }
}

/// The key of a keyed-list element, or the name of the first key field it lacks.
fn element_key(elem: &Value, keys: &[String]) -> Result<PathElement, String> {
    let obj = elem.as_object().ok_or_else(|| keys.first().cloned().unwrap_or_default())?;
    let mut pairs: Vec<(String, Value)> = Vec::new();
    for k in keys {
        match obj.get(k).cloned().or_else(|| key_default(k)) {
            Some(v) => pairs.push((k.clone(), v)),
            None => return Err(k.clone()),
        }
    }
    Ok(PathElement::Key(canonical_key(pairs.iter().map(|(k, v)| (k, v)))))
}

fn element_matches(elem: &Value, pe: &PathElement) -> bool {
    match pe {
        PathElement::Key(k) => match (serde_json::from_str::<Value>(k), elem.as_object()) {
            (Ok(Value::Object(key)), Some(obj)) => {
                key.iter().all(|(name, want)| obj.get(name).cloned().or_else(|| key_default(name)).as_ref() == Some(want))
            }
            _ => false,
        },
        PathElement::Value(v) => serde_json::from_str::<Value>(v).is_ok_and(|v| &v == elem),
        _ => false,
    }
}

fn child<'a>(v: &'a Value, pe: &PathElement) -> Option<&'a Value> {
    match pe {
        PathElement::Field(f) => v.as_object()?.get(f),
        PathElement::Index(i) => v.as_array()?.get(*i),
        _ => v.as_array()?.iter().find(|e| element_matches(e, pe)),
    }
}

/// The value at `path` in `v`, if present.
pub fn get_path<'a>(v: &'a Value, path: &[PathElement]) -> Option<&'a Value> {
    path.iter().try_fold(v, |v, pe| child(v, pe))
}

fn child_mut<'a>(v: &'a mut Value, pe: &PathElement) -> Option<&'a mut Value> {
    match pe {
        PathElement::Field(f) => v.as_object_mut()?.get_mut(f),
        PathElement::Index(i) => v.as_array_mut()?.get_mut(*i),
        _ => v.as_array_mut()?.iter_mut().find(|e| element_matches(e, pe)),
    }
}

/// Removes the value at `path` from `v`; whether it was there.
pub fn remove_path(v: &mut Value, path: &[PathElement]) -> bool {
    let Some((last, parent)) = path.split_last() else { return false };
    let Some(parent) = parent.iter().try_fold(v, |v, pe| child_mut(v, pe)) else { return false };
    match last {
        PathElement::Field(f) => parent.as_object_mut().and_then(|o| o.shift_remove(f)).is_some(),
        PathElement::Index(i) => match parent.as_array_mut() {
            Some(a) if *i < a.len() => {
                a.remove(*i);
                true
            }
            _ => false,
        },
        pe => match parent.as_array_mut() {
            Some(a) => {
                let before = a.len();
                a.retain(|e| !element_matches(e, pe));
                a.len() != before
            }
            None => false,
        },
    }
}

// ---------------------------------------------------------------------------------
// Field sets of objects.

/// Metadata fields that no manager owns.
const UNOWNED_META: &[&str] =
    &["name", "namespace", "uid", "resourceVersion", "generation", "creationTimestamp", "managedFields", "selfLink", "deletionTimestamp", "deletionGracePeriodSeconds"];

struct Walk<'a> {
    meta: &'a dyn PatchMeta,
    /// Leave `status` out (an apply to the main resource).
    skip_status: bool,
    /// Also make maps and newly added structures members (an update's changed set);
    /// an applied configuration's set has only leaves and list elements.
    changes: bool,
    /// For `changes`: fail on a keyed element without its key instead of using its index.
    strict_keys: bool,
}

impl Walk<'_> {
    fn skip(&self, schema: &[String], field: &str) -> bool {
        match schema {
            [] => field == "apiVersion" || field == "kind" || (self.skip_status && field == "status"),
            [m] if m == "metadata" => UNOWNED_META.contains(&field),
            _ => false,
        }
    }

    /// Collects into `out` the paths of `new` that are not in `old` or differ from it
    /// (with `old` `None`, every path).
    fn object(&self, old: Option<&Value>, new: &Map<String, Value>, schema: &mut Vec<String>, path: &mut Path, out: &mut FieldSet) -> Result<(), ApplyError> {
        for (k, nv) in new {
            if self.skip(schema, k) || (!self.changes && nv.is_null()) {
                continue;
            }
            let ov = old.and_then(|o| o.get(k));
            schema.push(k.clone());
            path.push(PathElement::Field(k.clone()));
            let r = self.value(ov, nv, schema, path, out);
            path.pop();
            schema.pop();
            r?;
        }
        Ok(())
    }

    fn value(&self, old: Option<&Value>, new: &Value, schema: &mut Vec<String>, path: &mut Path, out: &mut FieldSet) -> Result<(), ApplyError> {
        match new {
            Value::Object(m) if !m.is_empty() => {
                if self.changes && !old.is_some_and(Value::is_object) {
                    out.insert(path.clone());
                }
                self.object(old.filter(|o| o.is_object()), m, schema, path, out)
            }
            Value::Array(items) if !items.is_empty() => self.list(old, items, schema, path, out),
            _ => {
                if old != Some(new) {
                    out.insert(path.clone());
                }
                Ok(())
            }
        }
    }

    fn list(&self, old: Option<&Value>, items: &[Value], schema: &mut Vec<String>, path: &mut Path, out: &mut FieldSet) -> Result<(), ApplyError> {
        let old_items = old.and_then(Value::as_array);
        match list_kind(self.meta, schema) {
            ListKind::Atomic => {
                if old.map(|o| o.as_array().map(Vec::as_slice)) != Some(Some(items)) {
                    out.insert(path.clone());
                }
            }
            ListKind::Set => {
                for item in items {
                    if item.is_object() || item.is_array() {
                        // Not a set of scalars after all: the list is a leaf.
                        if old_items.map(Vec::as_slice) != Some(items) {
                            out.insert(path.clone());
                        }
                        return Ok(());
                    }
                }
                for item in items {
                    if !old_items.is_some_and(|o| o.contains(item)) {
                        let mut p = path.clone();
                        p.push(PathElement::Value(item.to_string()));
                        out.insert(p);
                    }
                }
            }
            ListKind::Map(keys) => {
                for (i, item) in items.iter().enumerate() {
                    let pe = match element_key(item, &keys) {
                        Ok(pe) => pe,
                        Err(missing) if self.strict_keys => {
                            return Err(ApplyError::MissingKey { path: path_string(path), index: i, keys: keys.clone(), missing });
                        }
                        Err(_) => PathElement::Index(i),
                    };
                    let old_item = old_items.and_then(|o| match &pe {
                        PathElement::Index(i) => o.get(*i),
                        pe => o.iter().find(|e| element_matches(e, pe)),
                    });
                    path.push(pe);
                    if old_item.is_none() {
                        out.insert(path.clone());
                    }
                    let r = match item {
                        Value::Object(m) if !m.is_empty() => self.object(old_item, m, schema, path, out),
                        _ => Ok(()),
                    };
                    path.pop();
                    r?;
                }
            }
        }
        Ok(())
    }
}

/// The fields an applied configuration sets: its leaves, and the elements of its keyed
/// lists (by key) and sets (by value); atomic lists are leaves. `apiVersion`, `kind`,
/// `status` and the system-managed metadata (`name`, `namespace`, `uid`,
/// `resourceVersion`, `generation`, `creationTimestamp`, `managedFields`) are left out.
/// Elements of keyed lists without their key are identified by index.
pub fn field_set(obj: &Value, meta: &dyn PatchMeta) -> FieldSet {
    let walk = Walk { meta, skip_status: true, changes: false, strict_keys: false };
    let mut out = FieldSet::new();
    if let Some(m) = obj.as_object() {
        // Never fails without strict keys.
        let _ = walk.object(None, m, &mut Vec::new(), &mut Vec::new(), &mut out);
    }
    out
}

fn applied_field_set(obj: &Map<String, Value>, meta: &dyn PatchMeta) -> Result<FieldSet, ApplyError> {
    let walk = Walk { meta, skip_status: true, changes: false, strict_keys: true };
    let mut out = FieldSet::new();
    walk.object(None, obj, &mut Vec::new(), &mut Vec::new(), &mut out)?;
    Ok(out)
}

/// The paths of `new` that `old` lacks or holds with another value — with `old` `None`
/// every path, maps and list elements included (what an Update manager comes to own).
pub fn changed_fields(old: Option<&Value>, new: &Value, meta: &dyn PatchMeta) -> FieldSet {
    let walk = Walk { meta, skip_status: false, changes: true, strict_keys: false };
    let mut out = FieldSet::new();
    if let Some(m) = new.as_object() {
        let _ = walk.object(old, m, &mut Vec::new(), &mut Vec::new(), &mut out);
    }
    out
}

// ---------------------------------------------------------------------------------
// Merging an applied configuration.

fn merge(current: Option<&Value>, applied: &Value, meta: &dyn PatchMeta, schema: &mut Vec<String>) -> Value {
    match (current, applied) {
        (Some(Value::Object(cur)), Value::Object(app)) => Value::Object(merge_object(Some(cur), app, meta, schema)),
        (None, Value::Object(app)) => Value::Object(merge_object(None, app, meta, schema)),
        (cur, Value::Array(app)) => {
            let cur = cur.and_then(Value::as_array);
            match (list_kind(meta, schema), cur) {
                (ListKind::Set, Some(cur)) => {
                    let mut out = cur.clone();
                    out.extend(app.iter().filter(|a| !cur.contains(a)).cloned());
                    Value::Array(out)
                }
                (ListKind::Map(keys), Some(cur)) => {
                    let keyed: Vec<Option<PathElement>> = app.iter().map(|a| element_key(a, &keys).ok()).collect();
                    let mut used = vec![false; app.len()];
                    let mut out = Vec::with_capacity(cur.len().max(app.len()));
                    for c in cur {
                        let found = keyed.iter().enumerate().find(|(i, k)| !used[*i] && k.as_ref().is_some_and(|k| element_matches(c, k)));
                        match found {
                            Some((i, _)) => {
                                used[i] = true;
                                out.push(merge(Some(c), &app[i], meta, schema));
                            }
                            None => out.push(c.clone()),
                        }
                    }
                    out.extend(app.iter().zip(&used).filter(|(_, u)| !**u).map(|(a, _)| merge(None, a, meta, schema)));
                    Value::Array(out)
                }
                _ => Value::Array(app.iter().map(|a| strip_nulls(a, meta, schema)).collect()),
            }
        }
        (_, v) => v.clone(),
    }
}

fn strip_nulls(v: &Value, meta: &dyn PatchMeta, schema: &mut Vec<String>) -> Value {
    merge(None, v, meta, schema)
}

fn merge_object(cur: Option<&Map<String, Value>>, app: &Map<String, Value>, meta: &dyn PatchMeta, schema: &mut Vec<String>) -> Map<String, Value> {
    let mut out = cur.cloned().unwrap_or_default();
    for (k, av) in app {
        let system = match schema.as_slice() {
            [] => k == "status",
            [m] if m == "metadata" => UNOWNED_META.contains(&k.as_str()) && (cur.is_some() || k == "managedFields"),
            _ => false,
        };
        if system || av.is_null() {
            continue;
        }
        schema.push(k.clone());
        let merged = merge(cur.and_then(|c| c.get(k)), av, meta, schema);
        schema.pop();
        out.insert(k.clone(), merged);
    }
    out
}

fn api_version_of(applied: &Value, current: Option<&Value>) -> String {
    applied
        .get("apiVersion")
        .and_then(Value::as_str)
        .or_else(|| current.and_then(|c| c.get("apiVersion")).and_then(Value::as_str))
        .unwrap_or_default()
        .to_string()
}

fn is_leaf(v: &Value) -> bool {
    match v {
        Value::Object(m) => m.is_empty(),
        _ => true,
    }
}

fn without_managed_fields(v: &Value) -> Value {
    let mut v = v.clone();
    if let Some(m) = v.get_mut("metadata").and_then(Value::as_object_mut) {
        m.shift_remove("managedFields");
    }
    v
}

/// Server-side apply of `applied` (a fully specified intent) by `manager` onto
/// `current` (`None`: the object does not exist yet).
///
/// The result is the current object with the applied configuration merged in (maps
/// recursively, keyed lists by key, sets by value, other lists and scalars replaced),
/// without the fields `manager` applied before and applies no more (unless another
/// manager owns them), and with `metadata.managedFields` updated: `manager`'s Apply
/// entry owns exactly the applied fields. A field that another manager owns and that
/// the apply sets to a different value is a conflict; with `force` the applier takes it
/// from them instead. `now` is the RFC 3339 time recorded on changed entries.
pub fn apply(current: Option<&Value>, applied: &Value, manager: &str, force: bool, meta: &dyn PatchMeta, now: &str) -> Result<Value, ApplyError> {
    let app = applied.as_object().ok_or(ApplyError::NotAnObject)?;
    let api_version = api_version_of(applied, current);
    let applied_set = applied_field_set(app, meta)?;
    let mut entries = current.map(decode_managed_fields).unwrap_or_default();
    let mine = |e: &ManagedFieldsEntry| e.same_manager(manager, Operation::Apply, "", "");
    let previous = entries.iter().find(|e| mine(e)).cloned();

    // Conflicts: fields of other managers the apply changes.
    let mut conflicts = Vec::new();
    if let Some(cur) = current {
        for e in entries.iter_mut().filter(|e| !mine(e)) {
            let mut taken = Vec::new();
            for p in e.fields.intersection(&applied_set).iter() {
                let (Some(a), Some(c)) = (get_path(applied, p), get_path(cur, p)) else { continue };
                if (is_leaf(a) || is_leaf(c)) && a != c {
                    conflicts.push(Conflict {
                        manager: e.manager.clone(),
                        operation: e.operation,
                        api_version: e.api_version.clone(),
                        subresource: e.subresource.clone(),
                        field: path_string(p),
                    });
                    taken.push(p.clone());
                }
            }
            if force {
                e.fields.retain(|p| !taken.contains(p));
            }
        }
    }
    if !conflicts.is_empty() && !force {
        return Err(ApplyError::Conflicts(conflicts));
    }

    let mut result = merge(current, applied, meta, &mut Vec::new());

    // Fields this manager applied before and no longer applies, unless someone (the
    // applier included, for maps and elements whose members it still sets) owns them
    // or something below them.
    if let Some(prev) = &previous {
        let dropped = prev.fields.difference(&applied_set);
        let others: Vec<&ManagedFieldsEntry> = entries.iter().filter(|e| !mine(e)).collect();
        // Parents come first; a removed parent takes its members with it (an element is
        // found by its key fields, so these must still be there when it goes).
        let mut removed: Vec<&Path> = Vec::new();
        for p in dropped.iter() {
            let still_owned = applied_set.has_prefix(p) || others.iter().any(|e| e.fields.has_prefix(p));
            if removed.iter().any(|r| p.starts_with(r)) || still_owned {
                continue;
            }
            if remove_path(&mut result, p) {
                removed.push(p);
            }
        }
    }

    // Ownership: the applier owns exactly what it applied; every set keeps only
    // fields that still exist.
    let unchanged_object = current.is_some_and(|c| without_managed_fields(c) == without_managed_fields(&result));
    entries.retain(|e| !mine(e));
    for e in &mut entries {
        e.fields.retain(|p| get_path(&result, p).is_some());
    }
    let time = match &previous {
        Some(prev) if unchanged_object && prev.fields == applied_set => prev.time.clone(),
        _ => Some(now.to_string()),
    };
    entries.push(ManagedFieldsEntry {
        manager: manager.to_string(),
        operation: Operation::Apply,
        api_version,
        time,
        subresource: String::new(),
        fields: applied_set,
    });
    encode_managed_fields(&mut result, entries);
    Ok(result)
}

/// Records a non-apply write (create, update, patch) of `new` by `manager`: the fields
/// that changed from `old` (all of them on create, `old` `None`) become `manager`'s
/// (operation Update) and no other manager's; fields gone from the object leave every
/// set. When the write carries no `managedFields`, `old`'s are kept; when it carries
/// them, they are taken as the starting point (as in Kubernetes, which lets a client
/// reset them).
pub fn update(old: Option<&Value>, new: &Value, manager: &str, meta: &dyn PatchMeta, now: &str) -> Value {
    update_subresource(old, new, manager, "", meta, now)
}

/// [`update`] of a subresource (`status`, `scale`): the entry records it.
pub fn update_subresource(old: Option<&Value>, new: &Value, manager: &str, subresource: &str, meta: &dyn PatchMeta, now: &str) -> Value {
    let mut out = new.clone();
    let base = if new.pointer("/metadata/managedFields").is_some() { Some(new) } else { old };
    let mut entries = base.map(decode_managed_fields).unwrap_or_default();
    let changed = changed_fields(old, new, meta);
    let before = entries.clone();
    for e in &mut entries {
        e.fields = e.fields.difference(&changed);
        e.fields.retain(|p| get_path(new, p).is_some());
    }
    if !changed.is_empty() && !manager.is_empty() {
        let api_version = api_version_of(new, old);
        match entries.iter_mut().find(|e| e.same_manager(manager, Operation::Update, &api_version, subresource)) {
            Some(e) => {
                e.fields = e.fields.union(&changed);
                e.time = Some(now.to_string());
            }
            None => entries.push(ManagedFieldsEntry {
                manager: manager.to_string(),
                operation: Operation::Update,
                api_version,
                time: Some(now.to_string()),
                subresource: subresource.to_string(),
                fields: changed,
            }),
        }
    }
    if entries == before && base == Some(new) {
        return out;
    }
    encode_managed_fields(&mut out, entries);
    out
}

#[cfg(test)]
mod tests;
