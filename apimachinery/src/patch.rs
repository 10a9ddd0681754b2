//! The three PATCH formats of the Kubernetes API, on `serde_json::Value`:
//!
//! - [`json_patch`]: RFC 6902 (`application/json-patch+json`),
//! - [`merge_patch`]: RFC 7386 (`application/merge-patch+json`),
//! - [`strategic_merge_patch`]: Kubernetes' strategic merge patch
//!   (`application/strategic-merge-patch+json`), a port of
//!   `k8s.io/apimachinery/pkg/util/strategicpatch`'s apply path, driven by a
//!   [`PatchMeta`] schema that says which lists merge and by which key.
//!   [`BuiltinPatchMeta`] carries the `patchStrategy`/`patchMergeKey` tags of the
//!   built-in types (core/v1, apps/v1, batch/v1, meta/v1).
//!
//! [`PatchError::http_status`] gives the status Kubernetes answers for each error.

use serde_json::{Map, Value};

/// Why a patch could not be applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatchError {
    /// The JSON patch document is not a list of RFC 6902 operations.
    #[error("{0}")]
    InvalidJsonPatch(String),
    /// A JSON patch operation failed on the object (missing path, failed test…).
    #[error("{0}")]
    JsonPatchFailed(String),
    /// A merge or strategic merge patch (or the object) is not a JSON object.
    #[error("invalid JSON document")]
    BadJsonDoc,
    /// A list contains lists.
    #[error("lists of lists are not supported")]
    NoListOfLists,
    /// A `$deleteFromPrimitiveList/<field>` directive is malformed.
    #[error("invalid patch format of primitive list")]
    BadPatchFormatForPrimitiveList,
    /// A `$retainKeys` directive is malformed or disagrees with the patch.
    #[error("invalid patch format of retainKeys")]
    BadPatchFormatForRetainKeys,
    /// A `$setElementOrder/<field>` directive is malformed.
    #[error("invalid patch format of setElementOrder list")]
    BadPatchFormatForSetElementOrderList,
    /// A list element lacks the list's merge key.
    #[error("map: {map} does not contain declared merge key: {key}")]
    NoMergeKey {
        /// The element, as JSON.
        map: String,
        /// The merge key.
        key: String,
    },
    /// A `$patch` directive has an unknown value.
    #[error("unknown patch type: {directive} in map: {map}")]
    BadPatchType {
        /// The directive's value.
        directive: String,
        /// The map holding it, as JSON.
        map: String,
    },
    /// Any other malformed strategic merge patch.
    #[error("{0}")]
    Invalid(String),
}

impl PatchError {
    /// The HTTP status Kubernetes answers with: 400 for malformed patch documents,
    /// 422 for patches that cannot apply to the object, 500 for the strategic merge
    /// errors Kubernetes does not classify.
    pub fn http_status(&self) -> u16 {
        match self {
            PatchError::InvalidJsonPatch(_)
            | PatchError::BadJsonDoc
            | PatchError::BadPatchFormatForPrimitiveList
            | PatchError::BadPatchFormatForRetainKeys
            | PatchError::BadPatchFormatForSetElementOrderList => 400,
            PatchError::JsonPatchFailed(_) | PatchError::NoListOfLists => 422,
            PatchError::NoMergeKey { .. }
            | PatchError::BadPatchType { .. }
            | PatchError::Invalid(_) => 500,
        }
    }
}

/// Applies an RFC 6902 JSON patch (a JSON array of operations) to `doc`.
pub fn json_patch(doc: &Value, patch: &Value) -> Result<Value, PatchError> {
    let ops: json_patch::Patch = serde_json::from_value(patch.clone())
        .map_err(|e| PatchError::InvalidJsonPatch(format!("invalid JSON patch: {e}")))?;
    let mut out = doc.clone();
    json_patch::patch(&mut out, &ops).map_err(|e| PatchError::JsonPatchFailed(e.to_string()))?;
    Ok(out)
}

/// Applies an RFC 7386 JSON merge patch: objects merge recursively, `null` deletes a
/// key, anything else (lists included) replaces. The patch must be an object.
pub fn merge_patch(doc: &Value, patch: &Value) -> Result<Value, PatchError> {
    if !patch.is_object() {
        return Err(PatchError::BadJsonDoc);
    }
    let mut out = doc.clone();
    json_patch::merge(&mut out, patch);
    Ok(out)
}

/// How a field is patched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PatchStrategy {
    /// Lists merge element by element (by merge key for lists of objects, as a set for
    /// lists of scalars).
    Merge,
    /// The patch value replaces the field wholesale (maps too).
    Replace,
}

/// What the schema says about one field: its `patchStrategy` and `patchMergeKey` tags.
/// The default (no strategy) replaces lists and merges maps.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct FieldPatchMeta {
    /// `merge` or `replace`; `None` when the field has no tag.
    pub strategy: Option<PatchStrategy>,
    /// Whether the tag also carries `retainKeys` (informational when applying: the
    /// `$retainKeys` directive in a patch is honoured wherever it appears).
    pub retain_keys: bool,
    /// The key identifying elements of a list of objects (`name`, `containerPort`…).
    pub merge_key: Option<String>,
}

impl FieldPatchMeta {
    /// A list merged by `key` (`patchStrategy:"merge" patchMergeKey:"<key>"`).
    pub fn merge_by(key: &str) -> Self {
        FieldPatchMeta {
            strategy: Some(PatchStrategy::Merge),
            retain_keys: false,
            merge_key: Some(key.to_string()),
        }
    }

    /// A list of scalars merged as a set (`patchStrategy:"merge"`).
    pub fn merge_set() -> Self {
        FieldPatchMeta { strategy: Some(PatchStrategy::Merge), retain_keys: false, merge_key: None }
    }

    fn with_retain_keys(mut self) -> Self {
        self.retain_keys = true;
        self
    }
}

/// The schema a strategic merge patch follows.
pub trait PatchMeta {
    /// The patch metadata of the field at `path`: field names from the object's root,
    /// list indices left out — e.g. `["spec", "template", "spec", "containers", "env"]`.
    fn lookup(&self, path: &[&str]) -> FieldPatchMeta;
}

/// The `patchStrategy`/`patchMergeKey` tags of Kubernetes' built-in types for one kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BuiltinPatchMeta {
    kind: Kind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Kind {
    /// Only `metadata` is known.
    Generic,
    Pod,
    PodTemplate,
    ReplicationController,
    Deployment,
    /// ReplicaSet, StatefulSet, DaemonSet, Job: a pod template and status conditions.
    Workload,
    CronJob,
    Service,
    Node,
    /// Namespace, PersistentVolumeClaim, autoscaling/v2 HorizontalPodAutoscaler: status
    /// conditions.
    StatusConditions,
    /// policy/v1 PodDisruptionBudget: a replaced selector and status conditions.
    PodDisruptionBudget,
    ServiceAccount,
    ComponentStatus,
}

const BUILTIN_GROUPS: &[&str] = &[
    "",
    "core",
    "apps",
    "batch",
    "autoscaling",
    "policy",
    "rbac.authorization.k8s.io",
    "networking.k8s.io",
    "discovery.k8s.io",
    "coordination.k8s.io",
    "storage.k8s.io",
    "scheduling.k8s.io",
    "node.k8s.io",
    "certificates.k8s.io",
    "admissionregistration.k8s.io",
    "apiextensions.k8s.io",
    "apiregistration.k8s.io",
    "events.k8s.io",
    "flowcontrol.apiserver.k8s.io",
    "resource.k8s.io",
    "authentication.k8s.io",
    "authorization.k8s.io",
];

impl BuiltinPatchMeta {
    /// Whether `group` is a built-in API group (`""` or `"core"` for the core group).
    /// Kubernetes refuses strategic merge patches on custom resources (415
    /// Unsupported Media Type); the apiserver can use this to do the same.
    pub fn is_builtin_group(group: &str) -> bool {
        BUILTIN_GROUPS.contains(&group)
    }

    /// The table for a kind (`group` is `""` or `"core"` for the core group). Kinds
    /// without list tags, and kinds of other groups, get the `metadata` table only.
    pub fn for_kind(group: &str, kind: &str) -> Self {
        let core = group.is_empty() || group == "core";
        let k = match (core, group, kind) {
            (true, _, "Pod") => Kind::Pod,
            (true, _, "PodTemplate") => Kind::PodTemplate,
            (true, _, "ReplicationController") => Kind::ReplicationController,
            (true, _, "Service") => Kind::Service,
            (true, _, "Node") => Kind::Node,
            (true, _, "Namespace" | "PersistentVolumeClaim") => Kind::StatusConditions,
            (true, _, "ServiceAccount") => Kind::ServiceAccount,
            (true, _, "ComponentStatus") => Kind::ComponentStatus,
            (_, "apps", "Deployment") => Kind::Deployment,
            (_, "apps", "ReplicaSet" | "StatefulSet" | "DaemonSet") => Kind::Workload,
            (_, "batch", "Job") => Kind::Workload,
            (_, "batch", "CronJob") => Kind::CronJob,
            (_, "autoscaling", "HorizontalPodAutoscaler") => Kind::StatusConditions,
            (_, "policy", "PodDisruptionBudget") => Kind::PodDisruptionBudget,
            _ => Kind::Generic,
        };
        BuiltinPatchMeta { kind: k }
    }

    /// A table that knows only `metadata` (`ownerReferences` by `uid`, `finalizers` as a set).
    pub fn generic() -> Self {
        BuiltinPatchMeta { kind: Kind::Generic }
    }

    fn pod_spec_prefix(&self) -> Option<&'static [&'static str]> {
        Some(match self.kind {
            Kind::Pod => &["spec"],
            Kind::PodTemplate => &["template", "spec"],
            Kind::ReplicationController | Kind::Deployment | Kind::Workload => {
                &["spec", "template", "spec"]
            }
            Kind::CronJob => &["spec", "jobTemplate", "spec", "template", "spec"],
            _ => return None,
        })
    }
}

const CONTAINER_LISTS: &[&str] = &["containers", "initContainers", "ephemeralContainers"];
const CONTAINER_STATUS_LISTS: &[&str] =
    &["containerStatuses", "initContainerStatuses", "ephemeralContainerStatuses"];

/// core/v1 `PodSpec` (and `Container`, `EphemeralContainerCommon`) tags.
fn pod_spec_field(rel: &[&str]) -> FieldPatchMeta {
    match rel {
        ["volumes"] | ["resourceClaims"] => FieldPatchMeta::merge_by("name").with_retain_keys(),
        [c] if CONTAINER_LISTS.contains(c) => FieldPatchMeta::merge_by("name"),
        ["imagePullSecrets"] | ["schedulingGates"] => FieldPatchMeta::merge_by("name"),
        ["hostAliases"] => FieldPatchMeta::merge_by("ip"),
        ["topologySpreadConstraints"] => FieldPatchMeta::merge_by("topologyKey"),
        [c, field] if CONTAINER_LISTS.contains(c) => match *field {
            "ports" => FieldPatchMeta::merge_by("containerPort"),
            "env" => FieldPatchMeta::merge_by("name"),
            "volumeMounts" => FieldPatchMeta::merge_by("mountPath"),
            "volumeDevices" => FieldPatchMeta::merge_by("devicePath"),
            _ => FieldPatchMeta::default(),
        },
        _ => FieldPatchMeta::default(),
    }
}

/// core/v1 `PodStatus` (and `ContainerStatus`) tags.
fn pod_status_field(rel: &[&str]) -> FieldPatchMeta {
    match rel {
        ["conditions"] => FieldPatchMeta::merge_by("type"),
        ["hostIPs"] | ["podIPs"] => FieldPatchMeta::merge_by("ip"),
        ["resourceClaimStatuses"] => FieldPatchMeta::merge_by("name").with_retain_keys(),
        [c, "volumeMounts"] if CONTAINER_STATUS_LISTS.contains(c) => {
            FieldPatchMeta::merge_by("mountPath")
        }
        [c, "allocatedResourcesStatus"] if CONTAINER_STATUS_LISTS.contains(c) => {
            FieldPatchMeta::merge_by("name")
        }
        _ => FieldPatchMeta::default(),
    }
}

impl PatchMeta for BuiltinPatchMeta {
    fn lookup(&self, path: &[&str]) -> FieldPatchMeta {
        // meta/v1 ObjectMeta, at the root or in any embedded template.
        if let [.., "metadata", last] = path {
            match *last {
                "ownerReferences" => return FieldPatchMeta::merge_by("uid"),
                "finalizers" => return FieldPatchMeta::merge_set(),
                _ => {}
            }
        }
        if let Some(prefix) = self.pod_spec_prefix() {
            if let Some(rel) = path.strip_prefix(prefix) {
                return pod_spec_field(rel);
            }
        }
        match (self.kind, path) {
            (Kind::Pod, ["status", rel @ ..]) => pod_status_field(rel),
            (
                Kind::ReplicationController
                | Kind::Deployment
                | Kind::Workload
                | Kind::Service
                | Kind::Node
                | Kind::StatusConditions
                | Kind::PodDisruptionBudget,
                ["status", "conditions"],
            ) => FieldPatchMeta::merge_by("type"),
            (Kind::PodDisruptionBudget, ["spec", "selector"]) => {
                FieldPatchMeta { strategy: Some(PatchStrategy::Replace), retain_keys: false, merge_key: None }
            }
            (Kind::Deployment, ["spec", "strategy"]) => {
                FieldPatchMeta { strategy: None, retain_keys: true, merge_key: None }
            }
            (Kind::Service, ["spec", "ports"]) => FieldPatchMeta::merge_by("port"),
            (Kind::Node, ["spec", "podCIDRs"]) => FieldPatchMeta::merge_set(),
            (Kind::Node, ["status", "addresses"]) => FieldPatchMeta::merge_by("type"),
            (Kind::ServiceAccount, ["secrets"]) => FieldPatchMeta::merge_by("name"),
            (Kind::ComponentStatus, ["conditions"]) => FieldPatchMeta::merge_by("type"),
            _ => FieldPatchMeta::default(),
        }
    }
}

const DIRECTIVE_MARKER: &str = "$patch";
const RETAIN_KEYS_DIRECTIVE: &str = "$retainKeys";
const DELETE_FROM_PRIMITIVE_LIST_PREFIX: &str = "$deleteFromPrimitiveList";
const SET_ELEMENT_ORDER_PREFIX: &str = "$setElementOrder";

/// Applies a strategic merge patch to `doc` (both JSON objects), following `schema`.
///
/// Maps merge recursively and `null` deletes a key; lists with strategy `merge` merge by
/// their merge key (or as a set of scalars), other lists are replaced. Directives:
/// `$patch: replace|delete` in maps, `$patch: delete|replace` elements in merging lists,
/// `$retainKeys`, `$deleteFromPrimitiveList/<field>` and `$setElementOrder/<field>`.
pub fn strategic_merge_patch(
    doc: &Value,
    patch: &Value,
    schema: &dyn PatchMeta,
) -> Result<Value, PatchError> {
    let original = match doc {
        Value::Object(m) => m.clone(),
        Value::Null => Map::new(),
        _ => return Err(PatchError::BadJsonDoc),
    };
    let patch = match patch {
        Value::Object(m) => m.clone(),
        Value::Null => Map::new(),
        _ => return Err(PatchError::BadJsonDoc),
    };
    let mut path = Vec::new();
    merge_map(original, patch, schema, &mut path).map(Value::Object)
}

fn is_directive_key(k: &str) -> bool {
    k == DIRECTIVE_MARKER
        || k == RETAIN_KEYS_DIRECTIVE
        || k.starts_with("$setElementOrder/")
        || k.starts_with("$deleteFromPrimitiveList/")
}

/// Turns patch content into object content: drops `$patch: delete` maps, directive keys
/// and `null` map values. `None` when the value itself is to be dropped.
fn clean(v: Value) -> Option<Value> {
    match v {
        Value::Object(m) => {
            if let Some(d) = m.get(DIRECTIVE_MARKER) {
                if d.as_str() != Some("replace") {
                    return None;
                }
            }
            let mut out = Map::new();
            for (k, v) in m {
                if v.is_null() || is_directive_key(&k) {
                    continue;
                }
                if let Some(c) = clean(v) {
                    out.insert(k, c);
                }
            }
            Some(Value::Object(out))
        }
        Value::Array(a) => Some(Value::Array(a.into_iter().filter_map(clean).collect())),
        other => Some(other),
    }
}

fn compact(v: &Value) -> String {
    serde_json::to_string(v).unwrap_or_default()
}

fn no_merge_key(m: &Value, key: &str) -> PatchError {
    PatchError::NoMergeKey { map: compact(m), key: key.to_string() }
}

fn extract_key<'a>(s: &'a str, prefix: &str) -> Result<&'a str, PatchError> {
    match s.split_once('/') {
        Some((p, rest)) if p == prefix => Ok(rest),
        _ if prefix == DELETE_FROM_PRIMITIVE_LIST_PREFIX => {
            Err(PatchError::BadPatchFormatForPrimitiveList)
        }
        _ => Err(PatchError::BadPatchFormatForSetElementOrderList),
    }
}

fn lookup(schema: &dyn PatchMeta, path: &[String], key: &str) -> FieldPatchMeta {
    let mut p: Vec<&str> = path.iter().map(String::as_str).collect();
    p.push(key);
    schema.lookup(&p)
}

fn merge_map(
    mut original: Map<String, Value>,
    mut patch: Map<String, Value>,
    schema: &dyn PatchMeta,
    path: &mut Vec<String>,
) -> Result<Map<String, Value>, PatchError> {
    if let Some(d) = patch.get(DIRECTIVE_MARKER) {
        return match d.as_str() {
            Some("replace") => match clean(Value::Object(patch)) {
                Some(Value::Object(m)) => Ok(m),
                _ => Ok(Map::new()),
            },
            Some("delete") => Ok(Map::new()),
            _ => Err(PatchError::BadPatchType {
                directive: d.as_str().map(str::to_string).unwrap_or_else(|| compact(d)),
                map: compact(&Value::Object(patch.clone())),
            }),
        };
    }
    apply_retain_keys(&mut original, &mut patch)?;
    merge_set_element_order(&mut original, &mut patch, schema, path)?;

    for (k, patch_v) in patch {
        let (key, is_delete_list) = if k.starts_with(DELETE_FROM_PRIMITIVE_LIST_PREFIX) {
            (extract_key(&k, DELETE_FROM_PRIMITIVE_LIST_PREFIX)?.to_string(), true)
        } else {
            (k, false)
        };
        if patch_v.is_null() {
            original.remove(&key);
            continue;
        }
        let Some(orig_v) = original.get_mut(&key) else {
            if !is_delete_list {
                if let Some(v) = clean(patch_v) {
                    original.insert(key, v);
                }
            }
            continue;
        };
        match (orig_v, patch_v) {
            (Value::Object(o), Value::Object(p)) => {
                let meta = lookup(schema, path, &key);
                let o = std::mem::take(o);
                let merged = if meta.strategy == Some(PatchStrategy::Replace) {
                    match clean(Value::Object(p)) {
                        Some(Value::Object(m)) => m,
                        _ => Map::new(),
                    }
                } else {
                    path.push(key.clone());
                    let r = merge_map(o, p, schema, path);
                    path.pop();
                    r?
                };
                original.insert(key, Value::Object(merged));
            }
            (Value::Array(o), Value::Array(p)) => {
                let meta = lookup(schema, path, &key);
                let o = std::mem::take(o);
                path.push(key.clone());
                let r = merge_slice_handler(o, p, schema, &meta, is_delete_list, path);
                path.pop();
                original.insert(key, Value::Array(r?));
            }
            (orig_v, patch_v) => {
                if !is_delete_list {
                    match clean(patch_v) {
                        Some(v) => *orig_v = v,
                        None => {
                            original.remove(&key);
                        }
                    }
                }
            }
        }
    }
    Ok(original)
}

fn apply_retain_keys(
    original: &mut Map<String, Value>,
    patch: &mut Map<String, Value>,
) -> Result<(), PatchError> {
    let Some(retain) = patch.remove(RETAIN_KEYS_DIRECTIVE) else {
        return Ok(());
    };
    let Value::Array(list) = retain else {
        return Err(PatchError::BadPatchFormatForRetainKeys);
    };
    let keep: Vec<&str> = list.iter().filter_map(Value::as_str).collect();
    for (k, v) in patch.iter() {
        if v.is_null()
            || k.starts_with(DELETE_FROM_PRIMITIVE_LIST_PREFIX)
            || k.starts_with(SET_ELEMENT_ORDER_PREFIX)
        {
            continue;
        }
        if !keep.contains(&k.as_str()) {
            return Err(PatchError::BadPatchFormatForRetainKeys);
        }
    }
    original.retain(|k, _| keep.contains(&k.as_str()));
    Ok(())
}

/// Handles every `$setElementOrder/<field>` directive of `patch`, merging the list it
/// names and ordering the result; removes both from `patch`.
fn merge_set_element_order(
    original: &mut Map<String, Value>,
    patch: &mut Map<String, Value>,
    schema: &dyn PatchMeta,
    path: &mut Vec<String>,
) -> Result<(), PatchError> {
    let keys: Vec<String> = patch
        .keys()
        .filter(|k| k.starts_with(SET_ELEMENT_ORDER_PREFIX))
        .cloned()
        .collect();
    for key in keys {
        let Some(order) = patch.remove(&key) else { continue };
        let Value::Array(order) = order else {
            return Err(PatchError::BadPatchFormatForSetElementOrderList);
        };
        let field = extract_key(&key, SET_ELEMENT_ORDER_PREFIX)?.to_string();
        let original_list = match original.get(&field) {
            None => None,
            Some(Value::Array(a)) => Some(a.clone()),
            Some(_) => return Err(PatchError::BadPatchFormatForSetElementOrderList),
        };
        let patch_list = match patch.get(&field) {
            None => None,
            Some(Value::Array(a)) => Some(a.clone()),
            Some(_) => return Err(PatchError::BadPatchFormatForSetElementOrderList),
        };
        let meta = lookup(schema, path, &field);
        let merge_key = meta.merge_key.as_deref();
        validate_patch_with_set_order_list(
            patch_list.as_deref().unwrap_or(&[]),
            &order,
            merge_key,
        )?;
        let orig_ids_src = original_list.clone().unwrap_or_default();
        let patch_src = patch_list.clone().unwrap_or_default();
        let merged = match (original_list, patch_list) {
            (Some(o), None) => o,
            (None, Some(p)) => p.into_iter().filter_map(clean).collect(),
            (Some(o), Some(p)) => {
                path.push(field.clone());
                let r = merge_slice_handler(o, p, schema, &meta, false, path);
                path.pop();
                r?
            }
            (None, None) => continue,
        };
        patch.remove(&field);
        if orig_ids_src.is_empty() && patch_src.is_empty() {
            original.insert(field, Value::Array(merged));
            continue;
        }
        let kind = element_kind(&orig_ids_src, &patch_src)?;
        let server_order = if meta.strategy == Some(PatchStrategy::Merge) && !patch_src.is_empty() {
            aliased_server_order(&orig_ids_src, &patch_src, merge_key, kind)
        } else {
            ids(&orig_ids_src, merge_key, kind)
        };
        let (patch_items, server_only) = partition(merged, &order, merge_key, kind)?;
        let both = normalize_element_order(
            patch_items,
            server_only,
            &ids(&order, merge_key, kind),
            &server_order,
            merge_key,
            kind,
        );
        original.insert(field, Value::Array(both));
    }
    Ok(())
}

/// The order of the live list that Kubernetes uses to place server-only items after a
/// `$setElementOrder` merge. Kubernetes reads it from the original list's backing array
/// *after* merging in place: deletions shift later items left, and appended patch items
/// land in the freed slots. The result orders are part of the observable behaviour (and
/// of Kubernetes' own test cases), so this replays those in-place edits on the keys.
fn aliased_server_order(
    original: &[Value],
    patch: &[Value],
    merge_key: Option<&str>,
    kind: ElemKind,
) -> Vec<Option<Value>> {
    let mut backing = ids(original, merge_key, kind);
    let (ElemKind::Map, Some(mk)) = (kind, merge_key) else {
        return backing;
    };
    let len = backing.len();
    let mut n = len;
    let mut replace = false;
    for item in patch {
        match item.get(DIRECTIVE_MARKER).and_then(Value::as_str) {
            Some("delete") => {
                let key = item.get(mk).cloned();
                while let Some(i) = backing[..n].iter().position(|b| b.is_some() && *b == key) {
                    backing.copy_within_clone(i + 1..n, i);
                    n -= 1;
                }
            }
            Some("replace") => replace = true,
            _ => {}
        }
    }
    if replace {
        return backing;
    }
    // Appends: items whose key is not already in the (growing) list.
    let mut present: Vec<Option<Value>> = backing[..n].to_vec();
    for item in patch {
        if item.get(DIRECTIVE_MARKER).is_some() {
            continue;
        }
        let key = item.get(mk).cloned();
        if present.contains(&key) {
            continue;
        }
        if n < len {
            backing[n] = key.clone();
        }
        n += 1;
        present.push(key);
    }
    backing
}

trait CopyWithinClone {
    fn copy_within_clone(&mut self, src: std::ops::Range<usize>, dest: usize);
}

impl<T: Clone> CopyWithinClone for Vec<T> {
    fn copy_within_clone(&mut self, src: std::ops::Range<usize>, dest: usize) {
        for (k, from) in src.enumerate() {
            self[dest + k] = self[from].clone();
        }
    }
}

fn validate_patch_with_set_order_list(
    patch_list: &[Value],
    order: &[Value],
    merge_key: Option<&str>,
) -> Result<(), PatchError> {
    if order.is_empty() || patch_list.is_empty() {
        return Ok(());
    }
    let non_delete: Vec<&Value> = match merge_key {
        Some(_) => {
            let mut v = Vec::new();
            for item in patch_list {
                let Value::Object(m) = item else {
                    return Err(PatchError::BadPatchFormatForSetElementOrderList);
                };
                if m.get(DIRECTIVE_MARKER).and_then(Value::as_str) != Some("delete") {
                    v.push(item);
                }
            }
            v
        }
        None => patch_list.iter().collect(),
    };
    let (mut pi, mut si) = (0, 0);
    while pi < non_delete.len() && si < order.len() {
        if non_delete[pi].get(DIRECTIVE_MARKER).is_some() {
            pi += 1;
            continue;
        }
        let equal = match merge_key {
            None => non_delete[pi] == &order[si],
            Some(mk) => {
                let l = non_delete[pi].get(mk).ok_or_else(|| no_merge_key(non_delete[pi], mk))?;
                let r = order[si].get(mk).ok_or_else(|| no_merge_key(&order[si], mk))?;
                l == r
            }
        };
        if equal {
            pi += 1;
        }
        si += 1;
    }
    if pi < non_delete.len() && si >= order.len() {
        return Err(PatchError::Invalid(format!(
            "The order in patch list:\n{}\n doesn't match {SET_ELEMENT_ORDER_PREFIX} list:\n{}\n",
            compact(&Value::Array(patch_list.to_vec())),
            compact(&Value::Array(order.to_vec()))
        )));
    }
    Ok(())
}

fn merge_slice_handler(
    original: Vec<Value>,
    patch: Vec<Value>,
    schema: &dyn PatchMeta,
    meta: &FieldPatchMeta,
    is_delete_list: bool,
    path: &mut Vec<String>,
) -> Result<Vec<Value>, PatchError> {
    if meta.strategy == Some(PatchStrategy::Merge) || is_delete_list {
        merge_slice(original, patch, schema, meta.merge_key.as_deref(), is_delete_list, path)
    } else {
        Ok(patch.into_iter().filter_map(clean).collect())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ElemKind {
    Map,
    Scalar,
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "nil",
        Value::Bool(_) => "bool",
        Value::Number(_) => "float64",
        Value::String(_) => "string",
        Value::Array(_) => "[]interface {}",
        Value::Object(_) => "map[string]interface {}",
    }
}

fn element_kind(a: &[Value], b: &[Value]) -> Result<ElemKind, PatchError> {
    let mut prev: Option<&'static str> = None;
    for v in a.iter().chain(b) {
        let t = type_name(v);
        match prev {
            None => {
                if v.is_array() {
                    return Err(PatchError::NoListOfLists);
                }
                prev = Some(t);
            }
            Some(p) if p != t => {
                return Err(PatchError::Invalid(format!(
                    "list element types are not identical: {} {}",
                    compact(&Value::Array(a.to_vec())),
                    compact(&Value::Array(b.to_vec()))
                )))
            }
            Some(_) => {}
        }
    }
    match prev {
        None => Err(PatchError::Invalid("no elements in any of the given slices".into())),
        Some("map[string]interface {}") => Ok(ElemKind::Map),
        Some(_) => Ok(ElemKind::Scalar),
    }
}

/// The identity of a list element: its merge key value, or itself for scalars.
fn id<'a>(v: &'a Value, merge_key: Option<&str>, kind: ElemKind) -> Option<&'a Value> {
    match (kind, merge_key) {
        (ElemKind::Map, Some(mk)) => v.get(mk),
        (ElemKind::Map, None) => None,
        (ElemKind::Scalar, _) => Some(v),
    }
}

fn ids(list: &[Value], merge_key: Option<&str>, kind: ElemKind) -> Vec<Option<Value>> {
    list.iter().map(|v| id(v, merge_key, kind).cloned()).collect()
}

fn index_of(order: &[Option<Value>], v: &Value, merge_key: Option<&str>, kind: ElemKind) -> Option<usize> {
    let want = id(v, merge_key, kind);
    order.iter().position(|o| o.as_ref() == want)
}

fn merge_slice(
    original: Vec<Value>,
    patch: Vec<Value>,
    schema: &dyn PatchMeta,
    merge_key: Option<&str>,
    is_delete_list: bool,
    path: &mut Vec<String>,
) -> Result<Vec<Value>, PatchError> {
    if original.is_empty() && patch.is_empty() {
        return Ok(original);
    }
    let kind = element_kind(&original, &patch)?;
    let (merged, server_order, patch) = match kind {
        ElemKind::Scalar => {
            if is_delete_list {
                return Ok(original.into_iter().filter(|v| !patch.contains(v)).collect());
            }
            let server_order = ids(&original, None, kind);
            let mut merged: Vec<Value> = Vec::with_capacity(original.len() + patch.len());
            for v in original.into_iter().chain(patch.iter().cloned()) {
                if !merged.contains(&v) {
                    merged.push(v);
                }
            }
            (merged, server_order, patch)
        }
        ElemKind::Map => {
            let Some(mk) = merge_key else {
                return Err(PatchError::Invalid(format!(
                    "cannot merge lists without merge key for {}",
                    path.join(".")
                )));
            };
            let (original, patch) = merge_slice_with_special_elements(original, patch, mk)?;
            let server_order = ids(&original, merge_key, kind);
            let mut merged = original;
            for item in &patch {
                let key_value = item.get(mk).ok_or_else(|| no_merge_key(item, mk))?;
                let mut found = None;
                for (i, o) in merged.iter().enumerate() {
                    if !o.is_object() {
                        return Err(PatchError::Invalid(format!("value for key {i} is not a map")));
                    }
                    if o.get(mk) == Some(key_value) {
                        found = Some(i);
                        break;
                    }
                }
                match (found, item) {
                    (Some(i), Value::Object(p)) => {
                        let o = match std::mem::take(&mut merged[i]) {
                            Value::Object(o) => o,
                            _ => Map::new(),
                        };
                        merged[i] = Value::Object(merge_map(o, p.clone(), schema, path)?);
                    }
                    _ => {
                        if let Some(v) = clean(item.clone()) {
                            merged.push(v);
                        }
                    }
                }
            }
            (merged, server_order, patch)
        }
    };
    let (patch_items, server_only) = partition(merged, &patch, merge_key, kind)?;
    Ok(normalize_element_order(
        patch_items,
        server_only,
        &ids(&patch, merge_key, kind),
        &server_order,
        merge_key,
        kind,
    ))
}

/// Applies `$patch: delete` and `$patch: replace` elements; returns the new original and
/// the patch without special elements.
fn merge_slice_with_special_elements(
    mut original: Vec<Value>,
    patch: Vec<Value>,
    merge_key: &str,
) -> Result<(Vec<Value>, Vec<Value>), PatchError> {
    let mut plain = Vec::with_capacity(patch.len());
    let mut replace = false;
    for v in patch {
        let Some(d) = v.get(DIRECTIVE_MARKER) else {
            plain.push(v);
            continue;
        };
        match d.as_str() {
            Some("delete") => {
                let kv = v.get(merge_key).ok_or_else(|| no_merge_key(&v, merge_key))?;
                original.retain(|o| o.get(merge_key) != Some(kv));
            }
            Some("replace") => replace = true,
            Some("merge") => {
                return Err(PatchError::Invalid(
                    "merging lists cannot yet be specified in the patch".into(),
                ))
            }
            _ => {
                return Err(PatchError::BadPatchType {
                    directive: d.as_str().map(str::to_string).unwrap_or_else(|| compact(d)),
                    map: compact(&v),
                })
            }
        }
    }
    if replace {
        return Ok((plain.into_iter().filter_map(clean).collect(), Vec::new()));
    }
    Ok((original, plain))
}

/// Splits `merged` into the items present in `by` and the others (server-only).
fn partition(
    merged: Vec<Value>,
    by: &[Value],
    merge_key: Option<&str>,
    kind: ElemKind,
) -> Result<(Vec<Value>, Vec<Value>), PatchError> {
    let by_ids = ids(by, merge_key, kind);
    let mut in_patch = Vec::new();
    let mut server_only = Vec::new();
    for v in merged {
        if let (ElemKind::Map, Some(mk)) = (kind, merge_key) {
            if v.get(mk).is_none() {
                return Err(no_merge_key(&v, mk));
            }
        }
        if index_of(&by_ids, &v, merge_key, kind).is_some() {
            in_patch.push(v);
        } else {
            server_only.push(v);
        }
    }
    Ok((in_patch, server_only))
}

/// Orders the result: patch items in `patch_order`, server-only items in `server_order`,
/// interleaved by their positions in `server_order` (Kubernetes' `normalizeElementOrder`).
fn normalize_element_order(
    mut patch_items: Vec<Value>,
    mut server_only: Vec<Value>,
    patch_order: &[Option<Value>],
    server_order: &[Option<Value>],
    merge_key: Option<&str>,
    kind: ElemKind,
) -> Vec<Value> {
    let sort_by = |items: &mut Vec<Value>, order: &[Option<Value>]| {
        items.sort_by_key(|v| index_of(order, v, merge_key, kind).unwrap_or(usize::MAX));
    };
    sort_by(&mut patch_items, patch_order);
    sort_by(&mut server_only, server_order);
    // mergeSortedSlice(left = server_only, right = patch_items)
    let (left, right) = (server_only, patch_items);
    let mut out = Vec::with_capacity(left.len() + right.len());
    let mut left = left.into_iter().peekable();
    let mut right = right.into_iter().peekable();
    loop {
        let take_left = match (left.peek(), right.peek()) {
            (None, None) => break,
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (Some(l), Some(r)) => {
                match (
                    index_of(server_order, l, merge_key, kind),
                    index_of(server_order, r, merge_key, kind),
                ) {
                    (Some(li), Some(ri)) => li < ri,
                    _ => false,
                }
            }
        };
        let next = if take_left { left.next() } else { right.next() };
        if let Some(v) = next {
            out.push(v);
        }
    }
    out
}

#[cfg(test)]
mod tests;
