//! OpenAPI v3 documents for every served group version, generated from the `k8s-openapi`
//! types' schemas (descriptions included), so `kubectl explain` has field docs and
//! `kubectl apply` finds `fieldValidation` support; and the schema walk behind
//! server-side field validation (Strict / Warn / Ignore).

use std::collections::BTreeMap;
use std::sync::OnceLock;

use schemars::generate::SchemaSettings;
use serde_json::{json, Map, Value};

use crate::discovery::GIT_VERSION;
use crate::registry::{self, ResourceInfo};

/// The generated documents: `api/v1`, `apis/apps/v1`, … → (JSON bytes, hash).
struct Documents {
    by_path: BTreeMap<String, (Vec<u8>, String)>,
    schemas: Map<String, Value>,
    /// `group/version/kind` → schema name.
    kinds: BTreeMap<(String, String, String), String>,
    /// The schemas' field structure, for the walks every write makes.
    shapes: Shapes,
}

fn documents() -> &'static Documents {
    static DOCS: OnceLock<Documents> = OnceLock::new();
    DOCS.get_or_init(build)
}

macro_rules! kind_schemas {
    ($gen:expr, $($group:literal $kind:literal => $ty:ty),* $(,)?) => {{
        let mut out: Vec<(&'static str, &'static str, String)> = Vec::new();
        $(
            let _ = $gen.subschema_for::<$ty>();
            out.push(($group, $kind, <$ty as schemars::JsonSchema>::schema_name().into_owned()));
        )*
        out
    }};
}

fn build() -> Documents {
    use k8s_openapi::api::{
        apps::v1 as apps, autoscaling::v1 as as1, autoscaling::v2 as as2, batch::v1 as batch, certificates::v1 as certs, coordination::v1 as coord,
        core::v1 as core, discovery::v1 as disc, events::v1 as events, networking::v1 as net, policy::v1 as policy,
        rbac::v1 as rbac, scheduling::v1 as scheduling, storage::v1 as storage,
    };
    let mut settings = SchemaSettings::openapi3();
    settings.definitions_path = "/components/schemas".into();
    let mut generator = settings.into_generator();
    let kinds = kind_schemas!(generator,
        "" "Binding" => core::Binding,
        "" "ConfigMap" => core::ConfigMap,
        "" "Endpoints" => core::Endpoints,
        "" "Event" => core::Event,
        "" "LimitRange" => core::LimitRange,
        "" "Namespace" => core::Namespace,
        "" "Node" => core::Node,
        "" "PersistentVolumeClaim" => core::PersistentVolumeClaim,
        "" "PersistentVolume" => core::PersistentVolume,
        "" "Pod" => core::Pod,
        "" "ReplicationController" => core::ReplicationController,
        "" "ResourceQuota" => core::ResourceQuota,
        "" "Secret" => core::Secret,
        "" "ServiceAccount" => core::ServiceAccount,
        "" "Service" => core::Service,
        "apps" "ControllerRevision" => apps::ControllerRevision,
        "apps" "DaemonSet" => apps::DaemonSet,
        "apps" "Deployment" => apps::Deployment,
        "apps" "ReplicaSet" => apps::ReplicaSet,
        "apps" "StatefulSet" => apps::StatefulSet,
        "autoscaling/v2" "HorizontalPodAutoscaler" => as2::HorizontalPodAutoscaler,
        "autoscaling/v1" "HorizontalPodAutoscaler" => as1::HorizontalPodAutoscaler,
        "autoscaling/v1" "Scale" => as1::Scale,
        "batch" "CronJob" => batch::CronJob,
        "batch" "Job" => batch::Job,
        "certificates.k8s.io" "CertificateSigningRequest" => certs::CertificateSigningRequest,
        "coordination.k8s.io" "Lease" => coord::Lease,
        "discovery.k8s.io" "EndpointSlice" => disc::EndpointSlice,
        "events.k8s.io" "Event" => events::Event,
        "networking.k8s.io" "IngressClass" => net::IngressClass,
        "networking.k8s.io" "Ingress" => net::Ingress,
        "networking.k8s.io" "NetworkPolicy" => net::NetworkPolicy,
        "policy" "PodDisruptionBudget" => policy::PodDisruptionBudget,
        "scheduling.k8s.io" "PriorityClass" => scheduling::PriorityClass,
        "rbac.authorization.k8s.io" "ClusterRoleBinding" => rbac::ClusterRoleBinding,
        "rbac.authorization.k8s.io" "ClusterRole" => rbac::ClusterRole,
        "rbac.authorization.k8s.io" "RoleBinding" => rbac::RoleBinding,
        "rbac.authorization.k8s.io" "Role" => rbac::Role,
        "storage.k8s.io" "StorageClass" => storage::StorageClass,
    );
    let mut schemas: Map<String, Value> = generator.take_definitions(true).into_iter().collect();
    let mut kind_index = BTreeMap::new();
    for (group, kind, name) in &kinds {
        let (g, v) = match *group {
            "autoscaling/v2" => ("autoscaling", "v2"),
            "autoscaling/v1" => ("autoscaling", "v1"),
            "apps" | "batch" | "certificates.k8s.io" | "coordination.k8s.io" | "discovery.k8s.io" | "events.k8s.io" | "networking.k8s.io"
            | "rbac.authorization.k8s.io" | "storage.k8s.io" | "policy" | "scheduling.k8s.io" => (*group, "v1"),
            _ => ("", "v1"),
        };
        if let Some(schema) = schemas.get_mut(name).and_then(Value::as_object_mut) {
            schema.insert("x-kubernetes-group-version-kind".into(), json!([{"group": g, "kind": kind, "version": v}]));
        }
        kind_index.insert((g.to_string(), v.to_string(), kind.to_string()), name.clone());
    }
    let mut by_path = BTreeMap::new();
    for (group, versions) in registry::group_versions() {
        for version in versions {
            let doc = group_version_document(group, version, &schemas, &kind_index);
            let bytes = serde_json::to_vec(&doc).unwrap_or_default();
            let hash = hash_hex(&bytes);
            let path = if group.is_empty() { format!("api/{version}") } else { format!("apis/{group}/{version}") };
            by_path.insert(path, (bytes, hash));
        }
    }
    let shapes = Shapes::compile(&schemas, &kind_index);
    Documents { by_path, schemas, kinds: kind_index, shapes }
}

fn hash_hex(bytes: &[u8]) -> String {
    // FNV-1a, 64 bits twice with different offsets: stable across runs and builds.
    let mut a: u64 = 0xcbf2_9ce4_8422_2325;
    let mut b: u64 = 0x8422_2325_cbf2_9ce4;
    for &x in bytes {
        a = (a ^ x as u64).wrapping_mul(0x0000_0100_0000_01b3);
        b = (b ^ x as u64).wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{a:016X}{b:016X}")
}

fn gvk_ext(res: &ResourceInfo) -> Value {
    json!({"group": res.group, "version": res.version, "kind": res.kind})
}

fn schema_ref(name: &str) -> Value {
    json!({"$ref": format!("#/components/schemas/{name}")})
}

fn group_version_document(group: &str, version: &str, schemas: &Map<String, Value>, kinds: &BTreeMap<(String, String, String), String>) -> Value {
    let mut paths = Map::new();
    let mut used = Vec::new();
    let query = |name: &str, desc: &str| json!({"name": name, "in": "query", "description": desc, "schema": {"type": "string", "uniqueItems": true}});
    for res in registry::resources_of(group, version) {
        let Some(schema_name) = kinds.get(&(group.to_string(), version.to_string(), res.kind.to_string())) else { continue };
        used.push(schema_name.clone());
        let base = if group.is_empty() { format!("/api/{version}") } else { format!("/apis/{group}/{version}") };
        let scope = if res.namespaced { "/namespaces/{namespace}" } else { "" };
        let collection = format!("{base}{scope}/{}", res.plural);
        let item = format!("{collection}/{{name}}");
        let body = |types: &[&str]| {
            let content: Map<String, Value> = types.iter().map(|t| (t.to_string(), json!({"schema": schema_ref(schema_name)}))).collect();
            json!({"content": content, "required": true})
        };
        let ok = json!({"200": {"description": "OK", "content": {"application/json": {"schema": schema_ref(schema_name)}}}});
        let write_params = vec![
            query("dryRun", "When present, indicates that modifications should not be persisted."),
            query("fieldManager", "fieldManager is a name associated with the actor or entity that is making these changes."),
            query("fieldValidation", "fieldValidation instructs the server on how to handle objects in the request (POST/PUT/PATCH) containing unknown or duplicate fields. Valid values are: Ignore, Warn (the default) and Strict."),
        ];
        let mut patch_params = write_params.clone();
        patch_params.push(json!({"name": "force", "in": "query", "description": "Force is going to \"force\" Apply requests.", "schema": {"type": "boolean", "uniqueItems": true}}));
        let op = |action: &str, params: Vec<Value>, request: Option<Value>| {
            let mut o = json!({
                "tags": [format!("{}{}", if group.is_empty() { "core" } else { group }, version)],
                "operationId": format!("{action}{}", res.kind),
                "responses": ok,
                "x-kubernetes-action": action,
                "x-kubernetes-group-version-kind": gvk_ext(res),
                "parameters": params,
            });
            if let Some(r) = request {
                o["requestBody"] = r;
            }
            o
        };
        paths.insert(
            collection,
            json!({
                "get": op("list", vec![query("labelSelector", "A selector to restrict the list of returned objects by their labels."), query("fieldSelector", "A selector to restrict the list of returned objects by their fields.")], None),
                "post": op("post", write_params.clone(), Some(body(&["*/*"]))),
            }),
        );
        // Strategic merge patch is deliberately not listed: kubectl then computes
        // apply patches from its own built-in types, which carry the exact merge keys.
        paths.insert(
            item,
            json!({
                "get": op("get", vec![], None),
                "put": op("put", write_params.clone(), Some(body(&["*/*"]))),
                "patch": op("patch", patch_params, Some(body(&["application/json-patch+json", "application/merge-patch+json", "application/apply-patch+yaml"]))),
                "delete": op("delete", vec![query("dryRun", "When present, indicates that modifications should not be persisted.")], None),
            }),
        );
    }
    // Every schema reachable from the kinds of this group version.
    let mut components = Map::new();
    let mut stack = used;
    while let Some(name) = stack.pop() {
        if components.contains_key(&name) {
            continue;
        }
        if let Some(schema) = schemas.get(&name) {
            collect_refs(schema, &mut stack);
            components.insert(name, schema.clone());
        }
    }
    json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": GIT_VERSION},
        "paths": paths,
        "components": {"schemas": components},
    })
}

fn collect_refs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            if let Some(r) = m.get("$ref").and_then(Value::as_str) {
                if let Some(name) = r.strip_prefix("#/components/schemas/") {
                    out.push(name.to_string());
                }
            }
            m.values().for_each(|x| collect_refs(x, out));
        }
        Value::Array(a) => a.iter().for_each(|x| collect_refs(x, out)),
        _ => {}
    }
}

/// The `/openapi/v3` discovery document.
pub fn root() -> Value {
    let paths: Map<String, Value> = documents()
        .by_path
        .iter()
        .map(|(path, (_, hash))| (path.clone(), json!({"serverRelativeURL": format!("/openapi/v3/{path}?hash={hash}")})))
        .collect();
    json!({"paths": paths})
}

/// The document of one group version (`api/v1`, `apis/apps/v1`).
pub fn document(path: &str) -> Option<&'static [u8]> {
    documents().by_path.get(path).map(|(b, _)| b.as_slice())
}

/// Every generated schema by name (`io.k8s.api.apps.v1.Deployment`), in the OpenAPI v3
/// form above (`#/components/schemas/…` references), kinds marked with
/// `x-kubernetes-group-version-kind`; the v2 document ([`crate::openapi_v2`]) is made from them.
pub(crate) fn schemas() -> &'static Map<String, Value> {
    &documents().schemas
}

/// `(group, version, kind)` → the name of the kind's schema in [`schemas`].
pub(crate) fn kind_schemas() -> &'static BTreeMap<(String, String, String), String> {
    &documents().kinds
}

/// How unknown fields in a request body are treated (`fieldValidation`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldValidation {
    Ignore,
    Warn,
    Strict,
}

impl FieldValidation {
    pub fn parse(v: Option<&str>) -> Result<FieldValidation, String> {
        match v {
            None | Some("") | Some("Warn") => Ok(FieldValidation::Warn),
            Some("Strict") => Ok(FieldValidation::Strict),
            Some("Ignore") => Ok(FieldValidation::Ignore),
            Some(other) => Err(format!("fieldValidation: Unsupported value: \"{other}\": supported values: \"Ignore\", \"Strict\", \"Warn\"")),
        }
    }
}

/// The field structure of the schemas, compiled once for the walks every write makes
/// (the unknown-field check and pruning): `$ref`s and `allOf`s resolved, so a field
/// costs one lookup instead of several by schema name.
struct Shapes {
    nodes: Vec<Shape>,
    /// `(group, version, kind)` of each served kind → its node.
    kinds: std::collections::HashMap<(&'static str, &'static str, &'static str), usize>,
}

enum Shape {
    /// An object with known fields.
    Object(std::collections::HashMap<String, usize>),
    /// A map whose values all have one shape.
    Map(usize),
    /// A list whose items all have one shape.
    List(usize),
    /// Anything (scalars, free-form objects).
    Any,
}

const REF_PREFIX: &str = "#/components/schemas/";

impl Shapes {
    fn compile(schemas: &Map<String, Value>, kinds: &BTreeMap<(String, String, String), String>) -> Shapes {
        let mut shapes = Shapes { nodes: Vec::new(), kinds: Default::default() };
        let mut named = std::collections::HashMap::new();
        for res in registry::RESOURCES {
            let key = (res.group.to_string(), res.version.to_string(), res.kind.to_string());
            if let Some(schema) = kinds.get(&key).and_then(|name| schemas.get(name)) {
                let node = shapes.node(schema, schemas, &mut named);
                shapes.kinds.insert((res.group, res.version, res.kind), node);
            }
        }
        shapes
    }

    /// The node of `schema`; a named schema is compiled once (recursive types refer back).
    fn node(&mut self, schema: &Value, all: &Map<String, Value>, named: &mut std::collections::HashMap<String, usize>) -> usize {
        if let Some(name) = schema.get("$ref").and_then(Value::as_str).and_then(|r| r.strip_prefix(REF_PREFIX)) {
            if let Some(&id) = named.get(name) {
                return id;
            }
            let id = self.push(Shape::Any);
            named.insert(name.to_string(), id);
            if let Some(target) = all.get(name) {
                self.nodes[id] = self.shape(target, all, named);
            }
            return id;
        }
        if let Some(first) = schema.get("allOf").and_then(Value::as_array).and_then(|a| a.first()) {
            return self.node(first, all, named);
        }
        let id = self.push(Shape::Any);
        self.nodes[id] = self.shape(schema, all, named);
        id
    }

    fn shape(&mut self, schema: &Value, all: &Map<String, Value>, named: &mut std::collections::HashMap<String, usize>) -> Shape {
        if schema.get("$ref").is_some() || schema.get("allOf").is_some() {
            let id = self.node(schema, all, named);
            return match &self.nodes[id] {
                Shape::Object(props) => Shape::Object(props.clone()),
                Shape::Map(n) => Shape::Map(*n),
                Shape::List(n) => Shape::List(*n),
                Shape::Any => Shape::Any,
            };
        }
        if let Some(props) = schema.get("properties").and_then(Value::as_object) {
            return Shape::Object(props.iter().map(|(k, v)| (k.clone(), self.node(v, all, named))).collect());
        }
        if let Some(additional) = schema.get("additionalProperties").filter(|a| a.is_object()) {
            return Shape::Map(self.node(additional, all, named));
        }
        if let Some(items) = schema.get("items") {
            return Shape::List(self.node(items, all, named));
        }
        Shape::Any
    }

    fn push(&mut self, shape: Shape) -> usize {
        self.nodes.push(shape);
        self.nodes.len() - 1
    }

    fn kind(&self, res: &ResourceInfo) -> Option<usize> {
        self.kinds.get(&(res.group, res.version, res.kind)).copied()
    }
}

/// The paths of fields in `obj` that the kind's schema does not know, in Kubernetes'
/// notation (`spec.template.spec.containers[0].imagex`). Patch directives (`$patch`,
/// `$setElementOrder/…`) are not fields.
pub fn unknown_fields(res: &ResourceInfo, obj: &Value) -> Vec<String> {
    let shapes = &documents().shapes;
    let mut out = Vec::new();
    if let Some(node) = shapes.kind(res) {
        walk(shapes, node, obj, &mut Vec::new(), &mut out, 0);
    }
    out
}

/// Drops the fields of `obj` that `res`'s schema does not have, as decoding into
/// Kubernetes' typed objects drops them: an unknown field is refused (Strict), warned
/// about (Warn) or ignored, but never stored.
pub fn prune_unknown_fields(res: &ResourceInfo, obj: &mut Value) {
    let shapes = &documents().shapes;
    if let Some(node) = shapes.kind(res) {
        prune(shapes, node, obj, 0);
    }
}

fn prune(shapes: &Shapes, node: usize, v: &mut Value, depth: usize) {
    if depth > 64 {
        return;
    }
    match (&shapes.nodes[node], v) {
        (Shape::Object(props), Value::Object(m)) => {
            m.retain(|k, _| props.contains_key(k));
            for (k, child) in m.iter_mut() {
                if let Some(&n) = props.get(k) {
                    prune(shapes, n, child, depth + 1);
                }
            }
        }
        (Shape::Map(n), Value::Object(m)) => {
            for child in m.values_mut() {
                prune(shapes, *n, child, depth + 1);
            }
        }
        (Shape::List(n), Value::Array(items)) => {
            for child in items.iter_mut() {
                prune(shapes, *n, child, depth + 1);
            }
        }
        _ => {}
    }
}

/// One step of a field path: an object field, a list index or a map key.
enum Step<'a> {
    Field(&'a str),
    Index(usize),
    Key(&'a str),
}

/// A path in Kubernetes' notation (`spec.containers[0].image`, `metadata.labels[app]`).
fn render(path: &[Step<'_>]) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    for step in path {
        match step {
            Step::Field(k) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(k);
            }
            Step::Index(i) => {
                let _ = write!(out, "[{i}]");
            }
            Step::Key(k) => {
                let _ = write!(out, "[{k}]");
            }
        }
    }
    out
}

/// Collects the unknown fields under `v`; `path` is where `v` is (paths are only
/// rendered for the fields reported, so a clean object costs no allocation per field).
fn walk<'v>(shapes: &Shapes, node: usize, v: &'v Value, path: &mut Vec<Step<'v>>, out: &mut Vec<String>, depth: usize) {
    if depth > 64 {
        return;
    }
    match (&shapes.nodes[node], v) {
        (Shape::Object(props), Value::Object(m)) => {
            for (k, child) in m {
                if k.starts_with('$') {
                    continue;
                }
                path.push(Step::Field(k));
                match props.get(k) {
                    Some(&n) => walk(shapes, n, child, path, out, depth + 1),
                    None => out.push(render(path)),
                }
                path.pop();
            }
        }
        (Shape::Map(n), Value::Object(m)) => {
            for (k, child) in m {
                path.push(Step::Key(k));
                walk(shapes, *n, child, path, out, depth + 1);
                path.pop();
            }
        }
        (Shape::List(n), Value::Array(items)) => {
            for (i, child) in items.iter().enumerate() {
                path.push(Step::Index(i));
                walk(shapes, *n, child, path, out, depth + 1);
                path.pop();
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::lookup;

    #[test]
    fn deployment_document_has_field_validation_and_docs() {
        let doc: Value = serde_json::from_slice(document("apis/apps/v1").expect("apps/v1")).expect("json");
        let patch = &doc["paths"]["/apis/apps/v1/namespaces/{namespace}/deployments/{name}"]["patch"];
        assert_eq!(patch["x-kubernetes-group-version-kind"]["kind"], "Deployment");
        let params = patch["parameters"].as_array().expect("params");
        assert!(params.iter().any(|p| p["name"] == "fieldValidation"));
        let strategy = &doc["components"]["schemas"]["io.k8s.api.apps.v1.DeploymentStrategy"];
        assert!(strategy["description"].as_str().is_some_and(|d| d.contains("replace existing pods")));
        assert!(root()["paths"]["apis/apps/v1"]["serverRelativeURL"].as_str().is_some_and(|u| u.starts_with("/openapi/v3/apis/apps/v1?hash=")));
    }

    #[test]
    fn finds_unknown_fields_with_their_paths() {
        let deploy = lookup("apps", "v1", "deployments").expect("deployments");
        let obj = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "x", "labels": {"a": "b"}},
            "spec": {"replicas": 1, "bogus": 1, "template": {"spec": {"containers": [{"name": "c", "image": "i", "imagex": "y"}]}}}});
        assert_eq!(unknown_fields(deploy, &obj), vec!["spec.bogus", "spec.template.spec.containers[0].imagex"]);
        let cm = lookup("", "v1", "configmaps").expect("configmaps");
        assert!(unknown_fields(cm, &json!({"metadata": {"name": "c"}, "data": {"any-key": "v"}})).is_empty());
    }

    #[test]
    fn pruning_drops_unknown_fields_and_keeps_free_form_ones() {
        let deploy = lookup("apps", "v1", "deployments").expect("deployments");
        let mut obj = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "x", "labels": {"a": "b"}},
            "spec": {"replicas": 1, "bogus": 1, "template": {"spec": {"containers": [{"name": "c", "image": "i", "imagex": "y"}]}}}});
        prune_unknown_fields(deploy, &mut obj);
        assert_eq!(obj, json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "x", "labels": {"a": "b"}},
            "spec": {"replicas": 1, "template": {"spec": {"containers": [{"name": "c", "image": "i"}]}}}}));
        // A ControllerRevision's data is whatever its owner stored (a RawExtension).
        let revisions = lookup("apps", "v1", "controllerrevisions").expect("controllerrevisions");
        let data = json!({"spec": {"template": {"$patch": "replace", "spec": {"anything": [1, {"x": "y"}]}}}});
        let mut revision = json!({"apiVersion": "apps/v1", "kind": "ControllerRevision", "metadata": {"name": "r"}, "revision": 1, "data": data});
        prune_unknown_fields(revisions, &mut revision);
        assert_eq!(revision["data"], data);
    }
}
