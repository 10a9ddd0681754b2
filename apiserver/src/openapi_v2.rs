//! The OpenAPI v2 (Swagger 2.0) document at `/openapi/v2`, as JSON and as the gnostic
//! `openapi.v2.Document` protobuf message client-go asks for.
//!
//! The definitions are the v3 documents' schemas ([`crate::openapi::schemas`]) turned into
//! Swagger 2.0, with what only the v2 document carries in Kubernetes: the
//! `x-kubernetes-patch-strategy` and `x-kubernetes-patch-merge-key` of every field whose
//! Go type has `patchStrategy`/`patchMergeKey` tags. kubectl's client-side `apply` (and
//! `edit`) computes its strategic merge patches from these once this document lists
//! strategic merge patch for a kind's PATCH: a list without them is atomic to kubectl, sent
//! whole, and an element taken out of the manifest is never deleted. So they come from the
//! table the apiserver applies strategic merge patches with, [`BuiltinPatchMeta`], and
//! nowhere else: each kind's schema is walked from its root and every field the table
//! gives a strategy or merge key is marked on the definition that holds it. Tags belong to
//! Go types, so a definition marked through one kind is marked wherever it is embedded, as
//! in Kubernetes.
//!
//! `x-kubernetes-list-type` / `x-kubernetes-list-map-keys` are carried where the source
//! schemas have them (the `k8s-openapi` schemas of the served kinds have none today).
//!
//! Both bodies are built once, on first use, and share one `ETag` (the SHA-512 of the
//! JSON, as kube-openapi computes it), so `If-None-Match` is answered with 304.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use apimachinery::patch::{BuiltinPatchMeta, FieldPatchMeta, PatchMeta, PatchStrategy};
use axum::response::{IntoResponse, Response};
use http::{header, HeaderMap, StatusCode};
use serde_json::{json, Map, Value};

use crate::discovery::GIT_VERSION;
use crate::errors::ApiError;
use crate::registry::{self, ResourceInfo};

/// The media type of the protobuf document, as Kubernetes answers it.
pub const PROTOBUF_CONTENT_TYPE: &str = "application/com.github.proto-openapi.spec.v2.v1.0+protobuf";
/// The subtype client-go asks for (`application/com.github.proto-openapi.spec.v2@v1.0+protobuf`).
const PROTOBUF_SUBTYPE_CLIENT_GO: &str = "com.github.proto-openapi.spec.v2@v1.0+protobuf";
const PROTOBUF_SUBTYPE: &str = "com.github.proto-openapi.spec.v2.v1.0+protobuf";

/// How deep (in field names) a kind's schema is walked for patch metadata; Kubernetes'
/// deepest tagged field is `spec.jobTemplate.spec.template.spec.containers.volumeMounts`.
const MAX_FIELD_DEPTH: usize = 32;

/// The representations a client can ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    Protobuf,
}

struct Served {
    json: Vec<u8>,
    protobuf: Vec<u8>,
    /// Quoted, ready for the `ETag` header.
    etag: String,
}

fn served() -> &'static Served {
    static SERVED: OnceLock<Served> = OnceLock::new();
    SERVED.get_or_init(|| {
        let doc = document();
        let json = serde_json::to_vec(doc).unwrap_or_default();
        let mut problems = Vec::new();
        let protobuf = encode_document(doc, &mut problems);
        for p in &problems {
            tracing::warn!(problem = %p, "openapi/v2: left out of the protobuf document");
        }
        let digest = ring::digest::digest(&ring::digest::SHA512, &json);
        let hex: String = digest.as_ref().iter().map(|b| format!("{b:02X}")).collect();
        Served { json, protobuf, etag: format!("\"{hex}\"") }
    })
}

/// The Swagger 2.0 document.
pub fn document() -> &'static Value {
    static DOC: OnceLock<Value> = OnceLock::new();
    DOC.get_or_init(|| {
        let (doc, conflicts) = build();
        for c in &conflicts {
            tracing::warn!(field = %c, "openapi/v2: kinds' patch tables disagree on a shared definition; the first kept");
        }
        doc
    })
}

/// The document in the representation asked for.
pub fn body(format: Format) -> &'static [u8] {
    match format {
        Format::Json => &served().json,
        Format::Protobuf => &served().protobuf,
    }
}

/// Answers `GET /openapi/v2`: JSON for `application/json` (or no `Accept`), protobuf for
/// the gnostic media type, 406 otherwise; 304 when `If-None-Match` names the current
/// document.
pub fn serve(headers: &HeaderMap) -> Result<Response, ApiError> {
    let accept: Vec<String> = headers.get_all(header::ACCEPT).iter().map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned()).collect();
    let accept = accept.join(",");
    let format = negotiate(&accept).ok_or_else(|| ApiError {
        code: 406,
        reason: "NotAcceptable",
        message: format!(
            "only the following media types are accepted: application/json, application/{PROTOBUF_SUBTYPE}, application/{PROTOBUF_SUBTYPE_CLIENT_GO} (asked for {accept:?})"
        ),
        details: None,
    })?;
    let served = served();
    let content_type = match format {
        Format::Json => "application/json",
        Format::Protobuf => PROTOBUF_CONTENT_TYPE,
    };
    let etag = served.etag.as_str();
    let not_modified = headers.get_all(header::IF_NONE_MATCH).iter().any(|v| v.to_str().is_ok_and(|v| etag_matches(v, etag)));
    if not_modified {
        return Ok((StatusCode::NOT_MODIFIED, [(header::ETAG, etag), (header::VARY, "Accept")]).into_response());
    }
    Ok((StatusCode::OK, [(header::CONTENT_TYPE, content_type), (header::ETAG, etag), (header::VARY, "Accept")], body(format)).into_response())
}

/// Picks the representation for an `Accept` header the way kube-openapi does: clauses
/// by quality, then the more specific first; the first clause that matches JSON or the
/// protobuf type wins, JSON before protobuf for wildcards. An empty header means `*/*`.
pub fn negotiate(accept: &str) -> Option<Format> {
    let accept = if accept.trim().is_empty() { "*/*" } else { accept };
    let mut clauses: Vec<(f32, String, String)> = Vec::new();
    for clause in accept.split(',') {
        let mut parts = clause.split(';');
        let media = parts.next().unwrap_or_default().trim().to_ascii_lowercase();
        let (ty, sub) = match media.split_once('/') {
            Some((t, s)) => (t.trim().to_string(), s.trim().to_string()),
            None if media == "*" => ("*".to_string(), "*".to_string()),
            None => continue,
        };
        let mut q = 1.0f32;
        for param in parts {
            if let Some((k, v)) = param.split_once('=') {
                if k.trim().eq_ignore_ascii_case("q") {
                    q = v.trim().parse().unwrap_or(0.0);
                }
            }
        }
        if q > 0.0 {
            clauses.push((q, ty, sub));
        }
    }
    clauses.sort_by(|a, b| b.0.total_cmp(&a.0).then((a.1 == "*").cmp(&(b.1 == "*"))).then((a.2 == "*").cmp(&(b.2 == "*"))));
    let offered = [("json", Format::Json), (PROTOBUF_SUBTYPE_CLIENT_GO, Format::Protobuf), (PROTOBUF_SUBTYPE, Format::Protobuf)];
    for (_, ty, sub) in &clauses {
        if ty != "application" && ty != "*" {
            continue;
        }
        if let Some((_, format)) = offered.iter().find(|(s, _)| sub == "*" || sub == s) {
            return Some(*format);
        }
    }
    None
}

/// Whether an `If-None-Match` value names `etag` (weak comparison, `*` matches anything).
fn etag_matches(if_none_match: &str, etag: &str) -> bool {
    if_none_match.split(',').map(str::trim).any(|t| t == "*" || t.strip_prefix("W/").unwrap_or(t) == etag)
}

// ---------------------------------------------------------------------------------------
// The JSON document.

/// Builds the document; also returns the fields two kinds' patch tables disagreed on.
fn build() -> (Value, Vec<String>) {
    let kinds = crate::openapi::kind_schemas();
    let mut definitions: BTreeMap<String, Value> = crate::openapi::schemas().iter().map(|(name, schema)| (name.clone(), definition(name, schema))).collect();
    let conflicts = mark_patch_meta(&mut definitions, kinds);
    let doc = json!({
        "swagger": "2.0",
        "info": {"title": "Kubernetes", "version": GIT_VERSION},
        "paths": paths(kinds),
        "definitions": definitions,
        "securityDefinitions": {
            "BearerToken": {"description": "Bearer Token authentication", "type": "apiKey", "name": "authorization", "in": "header"},
        },
        "security": [{"BearerToken": []}],
    });
    (doc, conflicts)
}

fn definition(name: &str, schema: &Value) -> Value {
    let mut out = to_v2(schema);
    // Kubernetes publishes a Quantity as a plain string (an IntOrString as a string of
    // format `int-or-string`); both are `x-kubernetes-int-or-string` in v3.
    if name == "io.k8s.apimachinery.pkg.api.resource.Quantity" {
        if let Some(m) = out.as_object_mut() {
            m.remove("format");
        }
    }
    out
}

const V3_PREFIX: &str = "#/components/schemas/";
const V2_PREFIX: &str = "#/definitions/";

/// The keys a Swagger 2.0 schema may have besides `x-` extensions and the ones that hold
/// schemas (`$ref`, `items`, `allOf`, `properties`, `additionalProperties`).
const PLAIN_SCHEMA_KEYS: &[&str] = &[
    "format", "title", "description", "default", "multipleOf", "maximum", "exclusiveMaximum", "minimum", "exclusiveMinimum", "maxLength", "minLength",
    "pattern", "maxItems", "minItems", "uniqueItems", "maxProperties", "minProperties", "required", "enum", "type", "discriminator", "readOnly",
    "example",
];

/// An OpenAPI v3 schema (as `schemars` writes it) in Swagger 2.0: references point into
/// `#/definitions/`, a described reference (`allOf: [{$ref}]` beside a description) is a
/// `$ref` with siblings as in Kubernetes' v2 document, `x-kubernetes-int-or-string`
/// becomes `type: string, format: int-or-string`, and OpenAPI 3-only keywords (`nullable`,
/// `oneOf`, `anyOf`, `not`, …) are left out.
fn to_v2(schema: &Value) -> Value {
    let Value::Object(m) = schema else { return schema.clone() };
    let mut out = Map::new();
    let single_ref = m
        .get("allOf")
        .and_then(Value::as_array)
        .filter(|a| a.len() == 1)
        .and_then(|a| a.first())
        .and_then(Value::as_object)
        .filter(|o| o.len() == 1)
        .and_then(|o| o.get("$ref"))
        .filter(|_| !m.contains_key("$ref"));
    if let Some(r) = single_ref.or_else(|| m.get("$ref")) {
        out.insert("$ref".into(), v2_ref(r));
    }
    for (k, v) in m {
        match k.as_str() {
            "$ref" => {}
            "allOf" if single_ref.is_some() => {}
            "allOf" => {
                out.insert(k.clone(), Value::Array(v.as_array().map(|a| a.iter().map(to_v2).collect()).unwrap_or_default()));
            }
            "items" => {
                let items = match v {
                    Value::Array(a) => Value::Array(a.iter().map(to_v2).collect()),
                    other => to_v2(other),
                };
                out.insert(k.clone(), items);
            }
            "additionalProperties" => {
                out.insert(k.clone(), if v.is_object() { to_v2(v) } else { v.clone() });
            }
            "properties" => {
                let props: Map<String, Value> = v.as_object().map(|p| p.iter().map(|(name, s)| (name.clone(), to_v2(s))).collect()).unwrap_or_default();
                out.insert(k.clone(), Value::Object(props));
            }
            "x-kubernetes-int-or-string" if v == &Value::Bool(true) && !m.contains_key("type") => {
                out.insert("type".into(), "string".into());
                out.insert("format".into(), "int-or-string".into());
            }
            "x-kubernetes-int-or-string" => {}
            key if key.starts_with("x-") || PLAIN_SCHEMA_KEYS.contains(&key) => {
                out.insert(k.clone(), v.clone());
            }
            _ => {}
        }
    }
    Value::Object(out)
}

fn v2_ref(r: &Value) -> Value {
    match r.as_str() {
        Some(s) => Value::String(match s.strip_prefix(V3_PREFIX) {
            Some(name) => format!("{V2_PREFIX}{name}"),
            None => s.to_string(),
        }),
        None => r.clone(),
    }
}

/// The definition a property's schema stands for: its `$ref`, or its items' for a list
/// (list indices are not part of a patch-metadata path).
fn referenced_definition(schema: &Value) -> Option<&str> {
    let target = match schema.get("items") {
        Some(items) if schema.get("$ref").is_none() => items,
        _ => schema,
    };
    target.get("$ref").and_then(Value::as_str).and_then(|r| r.strip_prefix(V2_PREFIX))
}

/// Marks every field [`BuiltinPatchMeta`] gives a strategy or merge key, for every kind,
/// on the property of the definition that holds it. Definitions are shared between kinds
/// (a `PodSpec` is in Pods, Deployments, Jobs…): the first kind's answer is kept, and a
/// different answer from another kind is returned as a conflict.
fn mark_patch_meta(definitions: &mut BTreeMap<String, Value>, kinds: &BTreeMap<(String, String, String), String>) -> Vec<String> {
    let mut found: BTreeMap<(String, String), FieldPatchMeta> = BTreeMap::new();
    let mut conflicts = Vec::new();
    for ((group, _, kind), name) in kinds {
        let table = BuiltinPatchMeta::for_kind(group, kind);
        let mut path = Vec::new();
        walk_patch_meta(definitions, name, &table, &mut path, &mut |def, field, meta, path| match found.get(&(def.to_string(), field.to_string())) {
            Some(known) if known != &meta => conflicts.push(format!("{kind} {}: {def}.{field}", path.join("."))),
            Some(_) => {}
            None => {
                found.insert((def.to_string(), field.to_string()), meta);
            }
        });
    }
    for ((def, field), meta) in found {
        let Some(prop) = definitions.get_mut(&def).and_then(|d| d.get_mut("properties")).and_then(|p| p.get_mut(&field)).and_then(Value::as_object_mut) else {
            continue;
        };
        if let Some(strategy) = strategy_text(&meta) {
            prop.insert("x-kubernetes-patch-strategy".into(), strategy.into());
        }
        if let Some(key) = meta.merge_key {
            prop.insert("x-kubernetes-patch-merge-key".into(), key.into());
        }
    }
    conflicts
}

/// Called with (definition, field, its metadata, the path from the kind's root).
type Found<'a> = dyn FnMut(&str, &str, FieldPatchMeta, &[String]) + 'a;

fn walk_patch_meta(definitions: &BTreeMap<String, Value>, name: &str, table: &dyn PatchMeta, path: &mut Vec<String>, found: &mut Found<'_>) {
    if path.len() >= MAX_FIELD_DEPTH {
        return;
    }
    let Some(props) = definitions.get(name).and_then(|d| d.get("properties")).and_then(Value::as_object) else { return };
    for (field, schema) in props {
        path.push(field.clone());
        let segments: Vec<&str> = path.iter().map(String::as_str).collect();
        let meta = table.lookup(&segments);
        if meta != FieldPatchMeta::default() {
            found(name, field, meta, path);
        }
        if let Some(child) = referenced_definition(schema) {
            walk_patch_meta(definitions, child, table, path, found);
        }
        path.pop();
    }
}

/// `x-kubernetes-patch-strategy`: the Go tag's strategies, comma-separated (`merge`,
/// `retainKeys`, `merge,retainKeys`, `replace`).
fn strategy_text(meta: &FieldPatchMeta) -> Option<String> {
    let mut parts = Vec::new();
    match meta.strategy {
        Some(PatchStrategy::Merge) => parts.push("merge"),
        Some(PatchStrategy::Replace) => parts.push("replace"),
        None => {}
    }
    if meta.retain_keys {
        parts.push("retainKeys");
    }
    (!parts.is_empty()).then(|| parts.join(","))
}

/// `apps` → `Apps`, `rbac.authorization.k8s.io` → `RbacAuthorization`, `` → `Core`.
fn group_camel(group: &str) -> String {
    let g = group.strip_suffix(".k8s.io").unwrap_or(group);
    if g.is_empty() {
        return "Core".into();
    }
    g.split('.')
        .map(|part| {
            let mut c = part.chars();
            c.next().map(|f| f.to_ascii_uppercase().to_string() + c.as_str()).unwrap_or_default()
        })
        .collect()
}

fn lower_first(s: &str) -> String {
    let mut c = s.chars();
    c.next().map(|f| f.to_ascii_lowercase().to_string() + c.as_str()).unwrap_or_default()
}

fn query(name: &str, ty: &str, description: &str) -> Value {
    json!({"uniqueItems": true, "type": ty, "description": description, "name": name, "in": "query"})
}

fn path_param(name: &str, description: &str) -> Value {
    json!({"uniqueItems": true, "type": "string", "description": description, "name": name, "in": "path", "required": true})
}

const PRODUCES: &[&str] = &["application/json", "application/yaml", "application/vnd.kubernetes.protobuf"];
/// What PATCH accepts on built-in kinds, strategic merge patch included: kubectl computes
/// its client-side patches from the definitions' patch extensions when this lists it.
const PATCH_CONSUMES: &[&str] = &["application/json-patch+json", "application/merge-patch+json", "application/strategic-merge-patch+json", "application/apply-patch+yaml"];

/// The collection and item paths of every served kind with a schema, with the operations
/// the v3 documents list (list, create, read, replace, patch, delete).
fn paths(kinds: &BTreeMap<(String, String, String), String>) -> Map<String, Value> {
    let mut paths = Map::new();
    for (group, versions) in registry::group_versions() {
        for version in versions {
            for res in registry::resources_of(group, version) {
                let Some(schema) = kinds.get(&(group.to_string(), version.to_string(), res.kind.to_string())) else { continue };
                resource_paths(res, schema, &mut paths);
            }
        }
    }
    paths
}

fn resource_paths(res: &ResourceInfo, schema: &str, paths: &mut Map<String, Value>) {
    let gv_camel = format!("{}{}", group_camel(res.group), upper_first(res.version));
    let tag = format!("{}_{}", lower_first(&group_camel(res.group)), res.version);
    let scope = if res.namespaced { "Namespaced" } else { "" };
    let base = if res.group.is_empty() { format!("/api/{}", res.version) } else { format!("/apis/{}/{}", res.group, res.version) };
    let ns = if res.namespaced { "/namespaces/{namespace}" } else { "" };
    let collection = format!("{base}{ns}/{}", res.plural);
    let item = format!("{collection}/{{name}}");
    let gvk = json!({"group": res.group, "kind": res.kind, "version": res.version});
    let reference = json!({"$ref": format!("{V2_PREFIX}{schema}")});
    let ok = |codes: &[&str]| {
        let mut r = Map::new();
        for code in codes {
            let description = match *code {
                "201" => "Created",
                "202" => "Accepted",
                _ => "OK",
            };
            r.insert(code.to_string(), json!({"description": description, "schema": reference}));
        }
        r.insert("401".into(), json!({"description": "Unauthorized"}));
        Value::Object(r)
    };
    let op = |verb: &str, action: &str, description: String, consumes: &[&str], params: Vec<Value>, responses: Value| {
        json!({
            "description": description,
            "consumes": consumes,
            "produces": PRODUCES,
            "schemes": ["https"],
            "tags": [tag],
            "operationId": format!("{verb}{gv_camel}{scope}{}", res.kind),
            "parameters": params,
            "responses": responses,
            "x-kubernetes-action": action,
            "x-kubernetes-group-version-kind": gvk,
        })
    };
    let body = json!({"name": "body", "in": "body", "required": true, "schema": reference});
    let dry_run = query("dryRun", "string", "When present, indicates that modifications should not be persisted. An invalid or unrecognized dryRun directive will result in an error response and no further processing of the request. Valid values are: - All: all dry run stages will be processed");
    let field_manager = query("fieldManager", "string", "fieldManager is a name associated with the actor or entity that is making these changes. The value must be less than or 128 characters long, and only contain printable characters, as defined by https://golang.org/pkg/unicode/#IsPrint.");
    let field_validation = query("fieldValidation", "string", "fieldValidation instructs the server on how to handle objects in the request (POST/PUT/PATCH) containing unknown or duplicate fields. Valid values are: - Ignore: This will ignore any unknown fields that are silently dropped from the object, and will ignore all but the last duplicate field that the decoder encounters. - Warn: This will send a warning via the standard warning response header for each unknown field that is dropped from the object, and for each duplicate field that is encountered. The request will still succeed if there are no other errors, and will only persist the last of any duplicate fields. This is the default. - Strict: This will fail the request with a BadRequest error if any unknown fields would be dropped from the object, or if any duplicate fields are present. The error returned from the server will contain all unknown and duplicate fields encountered.");
    let write_params = || vec![body.clone(), dry_run.clone(), field_manager.clone(), field_validation.clone()];
    let kind = res.kind;
    let mut scope_params = Vec::new();
    if res.namespaced {
        scope_params.push(path_param("namespace", "object name and auth scope, such as for teams and projects"));
    }
    let pretty = query("pretty", "string", "If 'true', then the output is pretty printed. Defaults to 'false' unless the user-agent indicates a browser or command-line HTTP tool (curl and wget).");

    let mut collection_params = scope_params.clone();
    collection_params.push(pretty.clone());
    let list_params = vec![
        query("continue", "string", "The continue option should be set when retrieving more results from the server."),
        query("fieldSelector", "string", "A selector to restrict the list of returned objects by their fields. Defaults to everything."),
        query("labelSelector", "string", "A selector to restrict the list of returned objects by their labels. Defaults to everything."),
        query("limit", "integer", "limit is a maximum number of responses to return for a list call."),
        query("resourceVersion", "string", "resourceVersion sets a constraint on what resource versions a request may be served from."),
        query("timeoutSeconds", "integer", "Timeout for the list/watch call."),
        query("watch", "boolean", "Watch for changes to the described resources and return them as a stream of add, update, and remove notifications."),
    ];
    paths.insert(
        collection,
        json!({
            "get": op("list", "list", format!("list or watch objects of kind {kind}"), &["*/*"], list_params, json!({"200": {"description": "OK"}, "401": {"description": "Unauthorized"}})),
            "post": op("create", "post", format!("create a {kind}"), &["*/*"], write_params(), ok(&["200", "201", "202"])),
            "parameters": collection_params,
        }),
    );

    let mut item_params = vec![path_param("name", &format!("name of the {kind}"))];
    item_params.extend(scope_params);
    item_params.push(pretty);
    let mut patch_params = write_params();
    patch_params[0] = json!({"name": "body", "in": "body", "required": true, "schema": {"description": "Patch is provided to give a concrete name and type to the Kubernetes PATCH request body.", "type": "object"}});
    patch_params.push(query("force", "boolean", "Force is going to \"force\" Apply requests. It means user will re-acquire conflicting fields owned by other people. Force flag must be unset for non-apply patch requests."));
    let delete_params = vec![
        dry_run.clone(),
        query("gracePeriodSeconds", "integer", "The duration in seconds before the object should be deleted. Value must be non-negative integer. The value zero indicates delete immediately."),
        query("propagationPolicy", "string", "Whether and how garbage collection will be performed. Acceptable values are: 'Orphan', 'Background', 'Foreground'."),
    ];
    paths.insert(
        item,
        json!({
            "get": op("read", "get", format!("read the specified {kind}"), &["*/*"], vec![], ok(&["200"])),
            "put": op("replace", "put", format!("replace the specified {kind}"), &["*/*"], write_params(), ok(&["200", "201"])),
            "patch": op("patch", "patch", format!("partially update the specified {kind}"), PATCH_CONSUMES, patch_params, ok(&["200", "201"])),
            "delete": op("delete", "delete", format!("delete a {kind}"), &["*/*"], delete_params, json!({"200": {"description": "OK"}, "202": {"description": "Accepted"}, "401": {"description": "Unauthorized"}})),
            "parameters": item_params,
        }),
    );
}

fn upper_first(s: &str) -> String {
    let mut c = s.chars();
    c.next().map(|f| f.to_ascii_uppercase().to_string() + c.as_str()).unwrap_or_default()
}

// ---------------------------------------------------------------------------------------
// The protobuf document: gnostic's `openapi.v2.Document`
// (github.com/google/gnostic-models, openapiv2/OpenAPIv2.proto), proto3, fields written
// in field-number order, zero scalars left out, as Go's proto.Marshal writes them.

/// How one JSON key of a message is written.
#[derive(Clone, Copy)]
enum F {
    Str,
    Bool,
    Int,
    Double,
    /// `repeated string`.
    Strs,
    /// `Any`: the value as YAML text (JSON is YAML), in field `yaml`.
    Any,
    /// `repeated Any`.
    Anys,
    Schema,
    /// `repeated Schema`.
    Schemas,
    /// `Properties` / `Definitions`: `repeated NamedSchema additional_properties = 1`.
    NamedSchemas,
    /// `TypeItem`: `repeated string value = 1`.
    Type,
    /// `ItemsItem`: `repeated Schema schema = 1`.
    Items,
    /// `AdditionalPropertiesItem`: `oneof { Schema schema = 1; bool boolean = 2; }`.
    AdditionalProperties,
    /// `SchemaItem`: `oneof { Schema schema = 1; FileSchema file_schema = 2; }`.
    SchemaItem,
    PrimitivesItems,
    /// `repeated ParametersItem`.
    Parameters,
    Responses,
    Paths,
    SecurityDefinitions,
    /// `repeated SecurityRequirement`.
    Security,
    Msg(&'static Msg),
}

/// A message: its fields by JSON key, and the field number of its vendor extensions
/// (`repeated NamedAny`), written from the object's `x-` keys.
struct Msg {
    name: &'static str,
    fields: &'static [(&'static str, u32, F)],
    extensions: Option<u32>,
}

const DOCUMENT: Msg = Msg {
    name: "Document",
    fields: &[
        ("swagger", 1, F::Str),
        ("info", 2, F::Msg(&INFO)),
        ("host", 3, F::Str),
        ("basePath", 4, F::Str),
        ("schemes", 5, F::Strs),
        ("consumes", 6, F::Strs),
        ("produces", 7, F::Strs),
        ("paths", 8, F::Paths),
        ("definitions", 9, F::NamedSchemas),
        ("security", 12, F::Security),
        ("securityDefinitions", 13, F::SecurityDefinitions),
    ],
    extensions: Some(16),
};

const INFO: Msg = Msg {
    name: "Info",
    fields: &[("title", 1, F::Str), ("version", 2, F::Str), ("description", 3, F::Str), ("termsOfService", 4, F::Str)],
    extensions: Some(7),
};

const SCHEMA: Msg = Msg {
    name: "Schema",
    fields: &[
        ("$ref", 1, F::Str),
        ("format", 2, F::Str),
        ("title", 3, F::Str),
        ("description", 4, F::Str),
        ("default", 5, F::Any),
        ("multipleOf", 6, F::Double),
        ("maximum", 7, F::Double),
        ("exclusiveMaximum", 8, F::Bool),
        ("minimum", 9, F::Double),
        ("exclusiveMinimum", 10, F::Bool),
        ("maxLength", 11, F::Int),
        ("minLength", 12, F::Int),
        ("pattern", 13, F::Str),
        ("maxItems", 14, F::Int),
        ("minItems", 15, F::Int),
        ("uniqueItems", 16, F::Bool),
        ("maxProperties", 17, F::Int),
        ("minProperties", 18, F::Int),
        ("required", 19, F::Strs),
        ("enum", 20, F::Anys),
        ("additionalProperties", 21, F::AdditionalProperties),
        ("type", 22, F::Type),
        ("items", 23, F::Items),
        ("allOf", 24, F::Schemas),
        ("properties", 25, F::NamedSchemas),
        ("discriminator", 26, F::Str),
        ("readOnly", 27, F::Bool),
        ("example", 30, F::Any),
    ],
    extensions: Some(31),
};

const PATH_ITEM: Msg = Msg {
    name: "PathItem",
    fields: &[
        ("$ref", 1, F::Str),
        ("get", 2, F::Msg(&OPERATION)),
        ("put", 3, F::Msg(&OPERATION)),
        ("post", 4, F::Msg(&OPERATION)),
        ("delete", 5, F::Msg(&OPERATION)),
        ("options", 6, F::Msg(&OPERATION)),
        ("head", 7, F::Msg(&OPERATION)),
        ("patch", 8, F::Msg(&OPERATION)),
        ("parameters", 9, F::Parameters),
    ],
    extensions: Some(10),
};

const OPERATION: Msg = Msg {
    name: "Operation",
    fields: &[
        ("tags", 1, F::Strs),
        ("summary", 2, F::Str),
        ("description", 3, F::Str),
        ("operationId", 5, F::Str),
        ("produces", 6, F::Strs),
        ("consumes", 7, F::Strs),
        ("parameters", 8, F::Parameters),
        ("responses", 9, F::Responses),
        ("schemes", 10, F::Strs),
        ("deprecated", 11, F::Bool),
    ],
    extensions: Some(13),
};

const RESPONSE: Msg = Msg { name: "Response", fields: &[("description", 1, F::Str), ("schema", 2, F::SchemaItem)], extensions: Some(5) };

const JSON_REFERENCE: Msg = Msg { name: "JsonReference", fields: &[("$ref", 1, F::Str), ("description", 2, F::Str)], extensions: None };

const BODY_PARAMETER: Msg = Msg {
    name: "BodyParameter",
    fields: &[("description", 1, F::Str), ("name", 2, F::Str), ("in", 3, F::Str), ("required", 4, F::Bool), ("schema", 5, F::Schema)],
    extensions: Some(6),
};

/// `QueryParameterSubSchema` and `FormDataParameterSubSchema` (same numbering).
const QUERY_PARAMETER: Msg = Msg {
    name: "QueryParameterSubSchema",
    fields: &[
        ("required", 1, F::Bool),
        ("in", 2, F::Str),
        ("description", 3, F::Str),
        ("name", 4, F::Str),
        ("allowEmptyValue", 5, F::Bool),
        ("type", 6, F::Str),
        ("format", 7, F::Str),
        ("items", 8, F::PrimitivesItems),
        ("collectionFormat", 9, F::Str),
        ("default", 10, F::Any),
        ("maximum", 11, F::Double),
        ("exclusiveMaximum", 12, F::Bool),
        ("minimum", 13, F::Double),
        ("exclusiveMinimum", 14, F::Bool),
        ("maxLength", 15, F::Int),
        ("minLength", 16, F::Int),
        ("pattern", 17, F::Str),
        ("maxItems", 18, F::Int),
        ("minItems", 19, F::Int),
        ("uniqueItems", 20, F::Bool),
        ("enum", 21, F::Anys),
        ("multipleOf", 22, F::Double),
    ],
    extensions: Some(23),
};

/// `PathParameterSubSchema` and `HeaderParameterSubSchema` (same numbering).
const PATH_PARAMETER: Msg = Msg {
    name: "PathParameterSubSchema",
    fields: &[
        ("required", 1, F::Bool),
        ("in", 2, F::Str),
        ("description", 3, F::Str),
        ("name", 4, F::Str),
        ("type", 5, F::Str),
        ("format", 6, F::Str),
        ("items", 7, F::PrimitivesItems),
        ("collectionFormat", 8, F::Str),
        ("default", 9, F::Any),
        ("maximum", 10, F::Double),
        ("exclusiveMaximum", 11, F::Bool),
        ("minimum", 12, F::Double),
        ("exclusiveMinimum", 13, F::Bool),
        ("maxLength", 14, F::Int),
        ("minLength", 15, F::Int),
        ("pattern", 16, F::Str),
        ("maxItems", 17, F::Int),
        ("minItems", 18, F::Int),
        ("uniqueItems", 19, F::Bool),
        ("enum", 20, F::Anys),
        ("multipleOf", 21, F::Double),
    ],
    extensions: Some(22),
};

const PRIMITIVES_ITEMS: Msg = Msg {
    name: "PrimitivesItems",
    fields: &[
        ("type", 1, F::Str),
        ("format", 2, F::Str),
        ("items", 3, F::PrimitivesItems),
        ("collectionFormat", 4, F::Str),
        ("default", 5, F::Any),
        ("maximum", 6, F::Double),
        ("exclusiveMaximum", 7, F::Bool),
        ("minimum", 8, F::Double),
        ("exclusiveMinimum", 9, F::Bool),
        ("maxLength", 10, F::Int),
        ("minLength", 11, F::Int),
        ("pattern", 12, F::Str),
        ("maxItems", 13, F::Int),
        ("minItems", 14, F::Int),
        ("uniqueItems", 15, F::Bool),
        ("enum", 16, F::Anys),
        ("multipleOf", 17, F::Double),
    ],
    extensions: Some(18),
};

const API_KEY_SECURITY: Msg = Msg {
    name: "ApiKeySecurity",
    fields: &[("type", 1, F::Str), ("name", 2, F::Str), ("in", 3, F::Str), ("description", 4, F::Str)],
    extensions: Some(5),
};

const BASIC_AUTHENTICATION_SECURITY: Msg =
    Msg { name: "BasicAuthenticationSecurity", fields: &[("type", 1, F::Str), ("description", 2, F::Str)], extensions: Some(3) };

/// A protobuf message being written.
#[derive(Default)]
struct Pb(Vec<u8>);

impl Pb {
    fn varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.0.push((v as u8) | 0x80);
            v >>= 7;
        }
        self.0.push(v as u8);
    }

    fn key(&mut self, tag: u32, wire_type: u8) {
        self.varint((u64::from(tag) << 3) | u64::from(wire_type));
    }

    fn bytes(&mut self, tag: u32, b: &[u8]) {
        self.key(tag, 2);
        self.varint(b.len() as u64);
        self.0.extend_from_slice(b);
    }

    fn message(&mut self, tag: u32, m: Pb) {
        self.bytes(tag, &m.0);
    }

    fn string(&mut self, tag: u32, s: &str) {
        if !s.is_empty() {
            self.bytes(tag, s.as_bytes());
        }
    }

    fn boolean(&mut self, tag: u32, b: bool) {
        if b {
            self.key(tag, 0);
            self.varint(1);
        }
    }
}

/// Writes `doc` (a Swagger 2.0 document) as an `openapi.v2.Document`. What the message
/// has no field for is reported in `problems` (and left out).
fn encode_document(doc: &Value, problems: &mut Vec<String>) -> Vec<u8> {
    encode_msg(&DOCUMENT, doc, "", problems).0
}

fn encode_msg(msg: &Msg, v: &Value, path: &str, problems: &mut Vec<String>) -> Pb {
    let mut out = Pb::default();
    let Some(obj) = v.as_object() else {
        problems.push(format!("{path}: a {} must be an object", msg.name));
        return out;
    };
    for (key, _) in obj {
        let known = msg.fields.iter().any(|(k, _, _)| k == key) || (key.starts_with("x-") && msg.extensions.is_some());
        if !known {
            problems.push(format!("{path}.{key}: no such field in {}", msg.name));
        }
    }
    // Fields and the extensions in field-number order.
    let mut order: Vec<(u32, Option<(&str, F)>)> = msg.fields.iter().map(|(k, tag, f)| (*tag, Some((*k, *f)))).collect();
    if let Some(tag) = msg.extensions {
        order.push((tag, None));
    }
    order.sort_by_key(|(tag, _)| *tag);
    for (tag, field) in order {
        match field {
            Some((key, f)) => {
                if let Some(value) = obj.get(key) {
                    encode_field(&mut out, tag, f, value, &format!("{path}.{key}"), problems);
                }
            }
            None => encode_extensions(&mut out, tag, obj),
        }
    }
    out
}

fn encode_extensions(out: &mut Pb, tag: u32, obj: &Map<String, Value>) {
    for (k, v) in obj.iter().filter(|(k, _)| k.starts_with("x-")) {
        let mut named = Pb::default();
        named.string(1, k);
        named.message(2, any(v));
        out.message(tag, named);
    }
}

/// An `Any` holding `v` as YAML: its JSON text, non-ASCII characters escaped so any YAML
/// reader takes it.
fn any(v: &Value) -> Pb {
    let text = serde_json::to_string(v).unwrap_or_default();
    let mut yaml = String::with_capacity(text.len() + 1);
    for c in text.chars() {
        if c.is_ascii() {
            yaml.push(c);
        } else {
            let mut units = [0u16; 2];
            for u in c.encode_utf16(&mut units) {
                yaml.push_str(&format!("\\u{u:04x}"));
            }
        }
    }
    yaml.push('\n');
    let mut out = Pb::default();
    out.string(2, &yaml);
    out
}

fn named_schemas(v: &Value, path: &str, problems: &mut Vec<String>) -> Pb {
    let mut out = Pb::default();
    let Some(obj) = v.as_object() else {
        problems.push(format!("{path}: must be an object of schemas"));
        return out;
    };
    for (name, schema) in obj {
        let mut named = Pb::default();
        named.string(1, name);
        named.message(2, encode_msg(&SCHEMA, schema, &format!("{path}.{name}"), problems));
        out.message(1, named);
    }
    out
}

fn encode_field(out: &mut Pb, tag: u32, f: F, v: &Value, path: &str, problems: &mut Vec<String>) {
    let mut wrong = |what: &str| problems.push(format!("{path}: expected {what}, found {v}"));
    match f {
        F::Str => match v.as_str() {
            Some(s) => out.string(tag, s),
            None => wrong("a string"),
        },
        F::Bool => match v.as_bool() {
            Some(b) => out.boolean(tag, b),
            None => wrong("a boolean"),
        },
        F::Int => match v.as_i64().or_else(|| v.as_f64().map(|f| f as i64)) {
            Some(0) => {}
            Some(i) => {
                out.key(tag, 0);
                out.varint(i as u64);
            }
            None => wrong("an integer"),
        },
        F::Double => match v.as_f64() {
            Some(0.0) => {}
            Some(d) => {
                out.key(tag, 1);
                out.0.extend_from_slice(&d.to_le_bytes());
            }
            None => wrong("a number"),
        },
        F::Strs => match v.as_array() {
            Some(items) => {
                for item in items {
                    match item.as_str() {
                        Some(s) => out.bytes(tag, s.as_bytes()),
                        None => problems.push(format!("{path}: expected strings, found {item}")),
                    }
                }
            }
            None => wrong("a list of strings"),
        },
        F::Any => out.message(tag, any(v)),
        F::Anys => match v.as_array() {
            Some(items) => items.iter().for_each(|item| out.message(tag, any(item))),
            None => wrong("a list"),
        },
        F::Schema => out.message(tag, encode_msg(&SCHEMA, v, path, problems)),
        F::Schemas => match v.as_array() {
            Some(items) => {
                for (i, item) in items.iter().enumerate() {
                    out.message(tag, encode_msg(&SCHEMA, item, &format!("{path}[{i}]"), problems));
                }
            }
            None => wrong("a list of schemas"),
        },
        F::NamedSchemas => out.message(tag, named_schemas(v, path, problems)),
        F::Type => {
            let mut item = Pb::default();
            match v {
                Value::String(s) => item.bytes(1, s.as_bytes()),
                Value::Array(types) => types.iter().filter_map(Value::as_str).for_each(|s| item.bytes(1, s.as_bytes())),
                _ => wrong("a type"),
            }
            out.message(tag, item);
        }
        F::Items => {
            let mut item = Pb::default();
            match v {
                Value::Array(schemas) => {
                    for (i, s) in schemas.iter().enumerate() {
                        item.message(1, encode_msg(&SCHEMA, s, &format!("{path}[{i}]"), problems));
                    }
                }
                other => item.message(1, encode_msg(&SCHEMA, other, path, problems)),
            }
            out.message(tag, item);
        }
        F::AdditionalProperties => {
            let mut item = Pb::default();
            match v {
                Value::Bool(b) => {
                    // A oneof member is written even when false.
                    item.key(2, 0);
                    item.varint(u64::from(*b));
                }
                other => item.message(1, encode_msg(&SCHEMA, other, path, problems)),
            }
            out.message(tag, item);
        }
        F::SchemaItem => {
            let mut item = Pb::default();
            item.message(1, encode_msg(&SCHEMA, v, path, problems));
            out.message(tag, item);
        }
        F::PrimitivesItems => out.message(tag, encode_msg(&PRIMITIVES_ITEMS, v, path, problems)),
        F::Parameters => match v.as_array() {
            Some(params) => {
                for (i, p) in params.iter().enumerate() {
                    out.message(tag, parameters_item(p, &format!("{path}[{i}]"), problems));
                }
            }
            None => wrong("a list of parameters"),
        },
        F::Responses => out.message(tag, responses(v, path, problems)),
        F::Paths => {
            let mut paths = Pb::default();
            if let Some(obj) = v.as_object() {
                encode_extensions(&mut paths, 1, obj);
                for (name, item) in obj.iter().filter(|(k, _)| !k.starts_with("x-")) {
                    let mut named = Pb::default();
                    named.string(1, name);
                    named.message(2, encode_msg(&PATH_ITEM, item, &format!("{path}[{name}]"), problems));
                    paths.message(2, named);
                }
            } else {
                wrong("an object of paths");
            }
            out.message(tag, paths);
        }
        F::SecurityDefinitions => {
            let mut defs = Pb::default();
            for (name, def) in v.as_object().into_iter().flatten() {
                let mut item = Pb::default();
                let p = format!("{path}.{name}");
                match def.get("type").and_then(Value::as_str) {
                    Some("basic") => item.message(1, encode_msg(&BASIC_AUTHENTICATION_SECURITY, def, &p, problems)),
                    Some("apiKey") => item.message(2, encode_msg(&API_KEY_SECURITY, def, &p, problems)),
                    _ => problems.push(format!("{p}: only basic and apiKey security definitions are written")),
                }
                let mut named = Pb::default();
                named.string(1, name);
                named.message(2, item);
                defs.message(1, named);
            }
            out.message(tag, defs);
        }
        F::Security => {
            for requirement in v.as_array().into_iter().flatten() {
                let mut req = Pb::default();
                for (name, scopes) in requirement.as_object().into_iter().flatten() {
                    let mut list = Pb::default();
                    scopes.as_array().into_iter().flatten().filter_map(Value::as_str).for_each(|s| list.bytes(1, s.as_bytes()));
                    let mut named = Pb::default();
                    named.string(1, name);
                    named.message(2, list);
                    req.message(1, named);
                }
                out.message(tag, req);
            }
        }
        F::Msg(msg) => out.message(tag, encode_msg(msg, v, path, problems)),
    }
}

/// A `ParametersItem`: a `JsonReference` for `$ref`, else a `Parameter` — a
/// `BodyParameter` or a `NonBodyParameter` of the kind its `in` says.
fn parameters_item(p: &Value, path: &str, problems: &mut Vec<String>) -> Pb {
    let mut item = Pb::default();
    if p.get("$ref").is_some() {
        item.message(2, encode_msg(&JSON_REFERENCE, p, path, problems));
        return item;
    }
    let mut parameter = Pb::default();
    match p.get("in").and_then(Value::as_str) {
        Some("body") => parameter.message(1, encode_msg(&BODY_PARAMETER, p, path, problems)),
        Some(location) => {
            let (tag, msg) = match location {
                "header" => (1, &PATH_PARAMETER),
                "formData" => (2, &QUERY_PARAMETER),
                "query" => (3, &QUERY_PARAMETER),
                _ => (4, &PATH_PARAMETER),
            };
            let mut non_body = Pb::default();
            non_body.message(tag, encode_msg(msg, p, path, problems));
            parameter.message(2, non_body);
        }
        None => problems.push(format!("{path}: a parameter needs `in`")),
    }
    item.message(1, parameter);
    item
}

/// `Responses`: `repeated NamedResponseValue response_code = 1`, extensions in 2.
fn responses(v: &Value, path: &str, problems: &mut Vec<String>) -> Pb {
    let mut out = Pb::default();
    let Some(obj) = v.as_object() else {
        problems.push(format!("{path}: responses must be an object"));
        return out;
    };
    for (code, response) in obj.iter().filter(|(k, _)| !k.starts_with("x-")) {
        let p = format!("{path}.{code}");
        let mut value = Pb::default();
        if response.get("$ref").is_some() {
            value.message(2, encode_msg(&JSON_REFERENCE, response, &p, problems));
        } else {
            value.message(1, encode_msg(&RESPONSE, response, &p, problems));
        }
        let mut named = Pb::default();
        named.string(1, code);
        named.message(2, value);
        out.message(1, named);
    }
    encode_extensions(&mut out, 2, obj);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn def<'a>(name: &str) -> &'a Value {
        &document()["definitions"][name]
    }

    fn prop<'a>(definition: &str, field: &str) -> &'a Value {
        &document()["definitions"][definition]["properties"][field]
    }

    fn ext(definition: &str, field: &str) -> (Option<&'static str>, Option<&'static str>) {
        let p = prop(definition, field);
        assert!(p.is_object(), "{definition}.{field} exists");
        (p["x-kubernetes-patch-strategy"].as_str(), p["x-kubernetes-patch-merge-key"].as_str())
    }

    #[test]
    fn patch_extensions_are_where_kubernetes_has_them() {
        assert_eq!(ext("io.k8s.api.core.v1.PodSpec", "containers"), (Some("merge"), Some("name")));
        assert_eq!(ext("io.k8s.api.core.v1.PodSpec", "initContainers"), (Some("merge"), Some("name")));
        assert_eq!(ext("io.k8s.api.core.v1.PodSpec", "ephemeralContainers"), (Some("merge"), Some("name")));
        assert_eq!(ext("io.k8s.api.core.v1.PodSpec", "volumes"), (Some("merge,retainKeys"), Some("name")));
        assert_eq!(ext("io.k8s.api.core.v1.PodSpec", "imagePullSecrets"), (Some("merge"), Some("name")));
        assert_eq!(ext("io.k8s.api.core.v1.PodSpec", "hostAliases"), (Some("merge"), Some("ip")));
        assert_eq!(ext("io.k8s.api.core.v1.PodSpec", "topologySpreadConstraints"), (Some("merge"), Some("topologyKey")));
        assert_eq!(ext("io.k8s.api.core.v1.PodSpec", "tolerations"), (None, None));
        assert_eq!(ext("io.k8s.api.core.v1.Container", "ports"), (Some("merge"), Some("containerPort")));
        assert_eq!(ext("io.k8s.api.core.v1.Container", "env"), (Some("merge"), Some("name")));
        assert_eq!(ext("io.k8s.api.core.v1.Container", "volumeMounts"), (Some("merge"), Some("mountPath")));
        assert_eq!(ext("io.k8s.api.core.v1.Container", "volumeDevices"), (Some("merge"), Some("devicePath")));
        assert_eq!(ext("io.k8s.api.core.v1.Container", "args"), (None, None));
        assert_eq!(ext("io.k8s.api.core.v1.EphemeralContainer", "env"), (Some("merge"), Some("name")));
        assert_eq!(ext("io.k8s.api.core.v1.PodStatus", "conditions"), (Some("merge"), Some("type")));
        assert_eq!(ext("io.k8s.api.core.v1.PodStatus", "podIPs"), (Some("merge"), Some("ip")));
        assert_eq!(ext("io.k8s.api.core.v1.ServiceSpec", "ports"), (Some("merge"), Some("port")));
        assert_eq!(ext("io.k8s.api.core.v1.NodeSpec", "podCIDRs"), (Some("merge"), None));
        assert_eq!(ext("io.k8s.api.core.v1.NodeStatus", "addresses"), (Some("merge"), Some("type")));
        assert_eq!(ext("io.k8s.api.core.v1.ServiceAccount", "secrets"), (Some("merge"), Some("name")));
        assert_eq!(ext("io.k8s.api.apps.v1.DeploymentSpec", "strategy"), (Some("retainKeys"), None));
        assert_eq!(ext("io.k8s.api.apps.v1.DeploymentStatus", "conditions"), (Some("merge"), Some("type")));
        assert_eq!(ext("io.k8s.api.batch.v1.JobStatus", "conditions"), (Some("merge"), Some("type")));
        assert_eq!(ext("io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta", "ownerReferences"), (Some("merge"), Some("uid")));
        assert_eq!(ext("io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta", "finalizers"), (Some("merge"), None));
        assert_eq!(ext("io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta", "labels"), (None, None));
        // A described reference keeps its `$ref` beside the extension, as in Kubernetes.
        assert_eq!(prop("io.k8s.api.apps.v1.DeploymentSpec", "strategy")["$ref"], "#/definitions/io.k8s.api.apps.v1.DeploymentStrategy");
    }

    /// Every kind, walked from its root, carries its table's metadata wherever the table
    /// has some. Tags belong to Go types, so a type marked through one kind is marked
    /// wherever it is embedded, as in Kubernetes; the one place where that is more than a
    /// kind's own table knows is listed.
    #[test]
    fn every_kind_reads_back_its_own_patch_table() {
        let (_, conflicts) = build();
        assert!(conflicts.is_empty(), "{conflicts:#?}");
        let defs: BTreeMap<String, Value> = document()["definitions"].as_object().expect("definitions").iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        let mut mismatches = Vec::new();
        let mut marked = 0;
        for ((group, _, kind), name) in crate::openapi::kind_schemas() {
            let table = BuiltinPatchMeta::for_kind(group, kind);
            check_kind(&defs, name, &table, &mut Vec::new(), &mut mismatches, &mut marked, kind);
        }
        assert_eq!(
            mismatches,
            vec![r#"StatefulSet spec.volumeClaimTemplates.status.conditions: table (None, None), document (Some("merge"), Some("type"))"#.to_string()]
        );
        assert!(marked > 100, "only {marked} marked fields seen");
    }

    fn check_kind(defs: &BTreeMap<String, Value>, name: &str, table: &BuiltinPatchMeta, path: &mut Vec<String>, out: &mut Vec<String>, marked: &mut usize, kind: &str) {
        if path.len() >= MAX_FIELD_DEPTH {
            return;
        }
        let Some(props) = defs.get(name).and_then(|d| d.get("properties")).and_then(Value::as_object) else { return };
        for (field, schema) in props {
            path.push(field.clone());
            let segments: Vec<&str> = path.iter().map(String::as_str).collect();
            let meta = table.lookup(&segments);
            let want = (strategy_text(&meta), meta.merge_key.clone());
            let got = (schema["x-kubernetes-patch-strategy"].as_str().map(String::from), schema["x-kubernetes-patch-merge-key"].as_str().map(String::from));
            if want != got {
                out.push(format!("{kind} {}: table {want:?}, document {got:?}", path.join(".")));
            }
            if got.0.is_some() {
                *marked += 1;
            }
            if let Some(child) = referenced_definition(schema) {
                check_kind(defs, child, table, path, out, marked, kind);
            }
            path.pop();
        }
    }

    #[test]
    fn document_is_swagger_2_that_kube_openapi_accepts() {
        let doc = document();
        assert_eq!(doc["swagger"], "2.0");
        let defs = doc["definitions"].as_object().expect("definitions");
        let mut bad = Vec::new();
        fn check(v: &Value, where_: &str, defs: &Map<String, Value>, bad: &mut Vec<String>) {
            match v {
                Value::Object(m) => {
                    if let Some(r) = m.get("$ref").and_then(Value::as_str) {
                        match r.strip_prefix(V2_PREFIX) {
                            Some(name) if defs.contains_key(name) => {}
                            _ => bad.push(format!("{where_}: dangling {r}")),
                        }
                        if m.contains_key("type") || m.contains_key("properties") {
                            bad.push(format!("{where_}: $ref beside type/properties"));
                        }
                    }
                    for k in ["anyOf", "oneOf", "not", "nullable", "allOf", "x-kubernetes-int-or-string"] {
                        if m.contains_key(k) {
                            bad.push(format!("{where_}: {k}"));
                        }
                    }
                    if m.get("type") == Some(&json!("array")) && !m.get("items").is_some_and(Value::is_object) {
                        bad.push(format!("{where_}: array without one items schema"));
                    }
                    if let Some(t) = m.get("type") {
                        if !matches!(t.as_str(), Some("string" | "integer" | "number" | "boolean" | "object" | "array")) {
                            bad.push(format!("{where_}: type {t}"));
                        }
                    }
                    for (k, child) in m {
                        match (k.as_str(), child) {
                            // Property names, not schema keywords.
                            ("properties", Value::Object(props)) => {
                                props.iter().for_each(|(name, s)| check(s, &format!("{where_}.{name}"), defs, bad));
                            }
                            ("default" | "enum" | "example", _) => {}
                            (k, _) if k.starts_with("x-") => {}
                            _ => check(child, &format!("{where_}/{k}"), defs, bad),
                        }
                    }
                }
                Value::Array(a) => a.iter().for_each(|x| check(x, where_, defs, bad)),
                _ => {}
            }
        }
        check(&doc["definitions"], "definitions", defs, &mut bad);
        check(&doc["paths"], "paths", defs, &mut bad);
        assert!(bad.is_empty(), "{bad:#?}");
        assert_eq!(def("io.k8s.apimachinery.pkg.util.intstr.IntOrString")["format"], "int-or-string");
        assert_eq!(def("io.k8s.apimachinery.pkg.api.resource.Quantity")["type"], "string");
        assert!(def("io.k8s.apimachinery.pkg.api.resource.Quantity").get("format").is_none());
        assert_eq!(def("io.k8s.api.apps.v1.Deployment")["x-kubernetes-group-version-kind"], json!([{"group": "apps", "kind": "Deployment", "version": "v1"}]));
        assert!(def("io.k8s.api.apps.v1.DeploymentStrategy")["description"].as_str().is_some_and(|d| d.contains("replace existing pods")));
        let patch = &doc["paths"]["/apis/apps/v1/namespaces/{namespace}/deployments/{name}"]["patch"];
        assert_eq!(patch["x-kubernetes-group-version-kind"], json!({"group": "apps", "kind": "Deployment", "version": "v1"}));
        assert_eq!(patch["operationId"], "patchAppsV1NamespacedDeployment");
        assert!(patch["consumes"].as_array().expect("consumes").contains(&json!("application/strategic-merge-patch+json")));
        assert!(patch["parameters"].as_array().expect("params").iter().any(|p| p["name"] == "fieldValidation" && p["in"] == "query"));
        assert_eq!(doc["paths"]["/api/v1/nodes/{name}"]["get"]["operationId"], "readCoreV1Node");
        assert_eq!(doc["paths"]["/apis/rbac.authorization.k8s.io/v1/clusterroles"]["post"]["operationId"], "createRbacAuthorizationV1ClusterRole");
    }

    #[test]
    fn everything_in_the_document_has_a_protobuf_field() {
        let mut problems = Vec::new();
        let bytes = encode_document(document(), &mut problems);
        assert!(problems.is_empty(), "{problems:#?}");
        assert_eq!(bytes, body(Format::Protobuf));
    }

    /// A minimal protobuf reader: the length-delimited and varint fields of a message.
    fn fields(mut buf: &[u8]) -> Vec<(u32, Result<&[u8], u64>)> {
        fn varint(buf: &mut &[u8]) -> u64 {
            let mut v = 0u64;
            for i in 0.. {
                let b = buf[0];
                *buf = &buf[1..];
                v |= u64::from(b & 0x7f) << (7 * i);
                if b & 0x80 == 0 {
                    break;
                }
            }
            v
        }
        let mut out = Vec::new();
        while !buf.is_empty() {
            let key = varint(&mut buf);
            let tag = (key >> 3) as u32;
            match key & 7 {
                0 => out.push((tag, Err(varint(&mut buf)))),
                1 => {
                    out.push((tag, Err(0)));
                    buf = &buf[8..];
                }
                2 => {
                    let len = varint(&mut buf) as usize;
                    out.push((tag, Ok(&buf[..len])));
                    buf = &buf[len..];
                }
                w => panic!("wire type {w}"),
            }
        }
        out
    }

    fn bytes_of(buf: &[u8], tag: u32) -> Vec<&[u8]> {
        fields(buf).into_iter().filter(|(t, _)| *t == tag).filter_map(|(_, v)| v.ok()).collect()
    }

    fn text(buf: &[u8], tag: u32) -> String {
        bytes_of(buf, tag).first().map(|b| String::from_utf8_lossy(b).into_owned()).unwrap_or_default()
    }

    /// The entry named `name` of a `repeated Named…` field.
    fn named<'a>(buf: &'a [u8], tag: u32, name: &str) -> &'a [u8] {
        bytes_of(buf, tag).into_iter().find(|n| text(n, 1) == name).map(|n| bytes_of(n, 2)[0]).unwrap_or_else(|| panic!("no {name}"))
    }

    fn extensions(schema: &[u8], tag: u32) -> BTreeMap<String, String> {
        bytes_of(schema, tag).into_iter().map(|n| (text(n, 1), text(bytes_of(n, 2)[0], 2))).collect()
    }

    #[test]
    fn protobuf_document_reads_back() {
        let doc = body(Format::Protobuf);
        assert_eq!(text(doc, 1), "2.0");
        assert_eq!(text(bytes_of(doc, 2)[0], 1), "Kubernetes");
        let definitions = bytes_of(doc, 9)[0];
        let pod_spec = named(definitions, 1, "io.k8s.api.core.v1.PodSpec");
        let containers = named(bytes_of(pod_spec, 25)[0], 1, "containers");
        let ext = extensions(containers, 31);
        assert_eq!(ext.get("x-kubernetes-patch-strategy").map(String::as_str), Some("\"merge\"\n"));
        assert_eq!(ext.get("x-kubernetes-patch-merge-key").map(String::as_str), Some("\"name\"\n"));
        assert_eq!(text(bytes_of(containers, 22)[0], 1), "array");
        let items = bytes_of(bytes_of(containers, 23)[0], 1);
        assert_eq!(items.len(), 1);
        assert_eq!(text(items[0], 1), "#/definitions/io.k8s.api.core.v1.Container");
        let deployment = named(definitions, 1, "io.k8s.api.apps.v1.Deployment");
        assert_eq!(extensions(deployment, 31).get("x-kubernetes-group-version-kind").map(String::as_str), Some("[{\"group\":\"apps\",\"kind\":\"Deployment\",\"version\":\"v1\"}]\n"));
        let strategy = named(bytes_of(named(definitions, 1, "io.k8s.api.apps.v1.DeploymentSpec"), 25)[0], 1, "strategy");
        assert_eq!(text(strategy, 1), "#/definitions/io.k8s.api.apps.v1.DeploymentStrategy");
        assert!(text(strategy, 4).contains("deployment strategy"));
        // The PATCH operation of deployments lists strategic merge patch and fieldValidation.
        let paths = bytes_of(doc, 8)[0];
        let item = named(paths, 2, "/apis/apps/v1/namespaces/{namespace}/deployments/{name}");
        let patch = bytes_of(item, 8)[0];
        let consumes: Vec<String> = bytes_of(patch, 7).iter().map(|b| String::from_utf8_lossy(b).into_owned()).collect();
        assert!(consumes.contains(&"application/strategic-merge-patch+json".to_string()), "{consumes:?}");
        let query_names: Vec<String> = bytes_of(patch, 8)
            .into_iter()
            .map(|p| bytes_of(p, 1)[0])
            .filter_map(|param| bytes_of(param, 2).first().copied())
            .filter_map(|non_body| bytes_of(non_body, 3).first().copied())
            .map(|q| text(q, 4))
            .collect();
        assert!(query_names.contains(&"fieldValidation".to_string()), "{query_names:?}");
    }

    #[test]
    fn yaml_of_non_ascii_is_escaped() {
        let pb = any(&json!({"a": "é😀"}));
        assert_eq!(text(&pb.0, 2), "{\"a\":\"\\u00e9\\ud83d\\ude00\"}\n");
    }

    #[test]
    fn negotiates_like_kube_openapi() {
        assert_eq!(negotiate(""), Some(Format::Json));
        assert_eq!(negotiate("application/json"), Some(Format::Json));
        assert_eq!(negotiate("application/json, */*"), Some(Format::Json));
        assert_eq!(negotiate("*/*"), Some(Format::Json));
        assert_eq!(negotiate("application/com.github.proto-openapi.spec.v2@v1.0+protobuf"), Some(Format::Protobuf));
        assert_eq!(negotiate("application/com.github.proto-openapi.spec.v2.v1.0+protobuf"), Some(Format::Protobuf));
        assert_eq!(negotiate("application/json;q=0.5, application/com.github.proto-openapi.spec.v2@v1.0+protobuf"), Some(Format::Protobuf));
        assert_eq!(negotiate("*/*;q=0.1, application/com.github.proto-openapi.spec.v2@v1.0+protobuf"), Some(Format::Protobuf));
        assert_eq!(negotiate("application/yaml"), None);
        assert_eq!(negotiate("application/vnd.kubernetes.protobuf"), None);
        assert_eq!(negotiate("text/html"), None);
        assert_eq!(negotiate("application/json;q=0"), None);
    }

    #[test]
    fn serves_the_asked_representation_and_304_for_the_current_etag() {
        let mut headers = HeaderMap::new();
        headers.insert(header::ACCEPT, "application/com.github.proto-openapi.spec.v2@v1.0+protobuf".parse().expect("header"));
        let r = serve(&headers).expect("protobuf");
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()[header::CONTENT_TYPE], PROTOBUF_CONTENT_TYPE);
        let etag = r.headers()[header::ETAG].to_str().expect("etag").to_string();
        assert!(etag.starts_with('"') && etag.len() == 130, "{etag}");
        headers.insert(header::IF_NONE_MATCH, etag.parse().expect("header"));
        assert_eq!(serve(&headers).expect("304").status(), StatusCode::NOT_MODIFIED);
        headers.insert(header::IF_NONE_MATCH, "\"other\"".parse().expect("header"));
        assert_eq!(serve(&headers).expect("200").status(), StatusCode::OK);
        headers.insert(header::ACCEPT, "application/yaml".parse().expect("header"));
        let err = serve(&headers).expect_err("406");
        assert_eq!((err.code, err.reason), (406, "NotAcceptable"));
        let json: Value = serde_json::from_slice(body(Format::Json)).expect("json");
        assert_eq!(&json, document());
    }
}
