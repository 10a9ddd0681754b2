//! API errors, answered as Kubernetes `Status` objects with the reason and code kubectl
//! and client libraries expect.

use axum::response::{IntoResponse, Response};
use http::StatusCode;
use serde_json::{json, Value};

use crate::registry::ResourceInfo;
use crate::storage::StoreError;

/// One field error of a 422 Invalid answer (`details.causes`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cause {
    /// `FieldValueInvalid`, `FieldValueRequired`, `FieldValueNotSupported`, …
    pub reason: &'static str,
    pub field: String,
    pub message: String,
}

impl Cause {
    pub fn invalid(field: impl Into<String>, value: impl std::fmt::Display, detail: impl Into<String>) -> Cause {
        let field = field.into();
        let detail = detail.into();
        Cause { reason: "FieldValueInvalid", message: format!("Invalid value: \"{value}\": {detail}"), field }
    }

    pub fn required(field: impl Into<String>) -> Cause {
        Cause { reason: "FieldValueRequired", field: field.into(), message: "Required value".into() }
    }

    pub fn not_supported(field: impl Into<String>, value: impl std::fmt::Display, supported: &[&str]) -> Cause {
        let quoted: Vec<String> = supported.iter().map(|s| format!("\"{s}\"")).collect();
        Cause {
            reason: "FieldValueNotSupported",
            field: field.into(),
            message: format!("Unsupported value: \"{value}\": supported values: {}", quoted.join(", ")),
        }
    }

    pub fn forbidden(field: impl Into<String>, detail: impl Into<String>) -> Cause {
        Cause { reason: "FieldValueForbidden", field: field.into(), message: format!("Forbidden: {}", detail.into()) }
    }

    pub fn duplicate(field: impl Into<String>, value: impl std::fmt::Display) -> Cause {
        Cause { reason: "FieldValueDuplicate", field: field.into(), message: format!("Duplicate value: \"{value}\"") }
    }
}

/// An error answered to a client as a `Status`.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub code: u16,
    pub reason: &'static str,
    pub message: String,
    pub details: Option<Value>,
}

impl ApiError {
    fn new(code: u16, reason: &'static str, message: impl Into<String>) -> ApiError {
        ApiError { code, reason, message: message.into(), details: None }
    }

    fn with_details(mut self, details: Value) -> ApiError {
        self.details = Some(details);
        self
    }

    pub fn not_found(res: &ResourceInfo, name: &str) -> ApiError {
        ApiError::new(404, "NotFound", format!("{} \"{}\" not found", res.group_resource(), name))
            .with_details(json!({"name": name, "group": res.group, "kind": res.plural}))
    }

    pub fn already_exists(res: &ResourceInfo, name: &str) -> ApiError {
        ApiError::new(409, "AlreadyExists", format!("{} \"{}\" already exists", res.group_resource(), name))
            .with_details(json!({"name": name, "group": res.group, "kind": res.plural}))
    }

    pub fn conflict(res: &ResourceInfo, name: &str, why: &str) -> ApiError {
        ApiError::new(
            409,
            "Conflict",
            format!("Operation cannot be fulfilled on {} \"{}\": {}", res.group_resource(), name, why),
        )
        .with_details(json!({"name": name, "group": res.group, "kind": res.plural}))
    }

    /// 409 for a server-side apply that would change fields other managers own, as
    /// Kubernetes answers it: the summary message, and one `FieldManagerConflict`
    /// cause per field.
    pub fn apply_conflicts(conflicts: &[apimachinery::managedfields::Conflict]) -> ApiError {
        let causes: Vec<Value> = conflicts
            .iter()
            .map(|c| json!({"reason": "FieldManagerConflict", "message": c.cause_message(), "field": c.field}))
            .collect();
        ApiError::new(409, "Conflict", apimachinery::managedfields::conflicts_message(conflicts)).with_details(json!({"causes": causes}))
    }

    /// 409 for a write with a stale resourceVersion.
    pub fn stale(res: &ResourceInfo, name: &str) -> ApiError {
        ApiError::conflict(
            res,
            name,
            "the object has been modified; please apply your changes to the latest version and try again",
        )
    }

    pub fn invalid(res: &ResourceInfo, name: &str, causes: Vec<Cause>) -> ApiError {
        ApiError::invalid_named(&kind_of(res), res.group, res.kind, name, causes)
    }

    /// A 422 for an object of `kind` that is not a stored resource (a review, a
    /// TokenRequest).
    pub fn invalid_kind(kind: &str, name: &str, causes: Vec<Cause>) -> ApiError {
        ApiError::invalid_named(kind, "", kind, name, causes)
    }

    fn invalid_named(shown_kind: &str, group: &str, kind: &str, name: &str, causes: Vec<Cause>) -> ApiError {
        let summary: Vec<String> = causes
            .iter()
            .map(|c| if c.field.is_empty() { c.message.clone() } else { format!("{}: {}", c.field, c.message) })
            .collect();
        let message = match summary.len() {
            1 => format!("{} \"{}\" is invalid: {}", shown_kind, name, summary[0]),
            _ => format!("{} \"{}\" is invalid: [{}]", shown_kind, name, summary.join(", ")),
        };
        let causes: Vec<Value> = causes
            .iter()
            .map(|c| json!({"reason": c.reason, "message": c.message, "field": c.field}))
            .collect();
        ApiError::new(422, "Invalid", message).with_details(json!({"name": name, "group": group, "kind": kind, "causes": causes}))
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(400, "BadRequest", message)
    }

    pub fn forbidden(res: &ResourceInfo, name: &str, why: impl std::fmt::Display) -> ApiError {
        let what = if name.is_empty() { String::new() } else { format!(" \"{name}\"") };
        ApiError::new(403, "Forbidden", format!("{}{} is forbidden: {}", res.group_resource(), what, why))
            .with_details(json!({"name": name, "group": res.group, "kind": res.plural}))
    }

    /// No credential, or one that proves nothing (Kubernetes answers just "Unauthorized").
    pub fn unauthorized() -> ApiError {
        ApiError::new(401, "Unauthorized", "Unauthorized")
    }

    /// A request an authorizer refused: `pods "web" is forbidden: User "jane" cannot get
    /// resource "pods" ...`, or `forbidden: User ... cannot get path "/metrics"` for a
    /// non-resource URL.
    pub fn forbidden_request(group: &str, resource: &str, name: &str, message: &str) -> ApiError {
        if resource.is_empty() {
            return ApiError::new(403, "Forbidden", format!("forbidden: {message}")).with_details(json!({}));
        }
        let gr = if group.is_empty() { resource.to_string() } else { format!("{resource}.{group}") };
        let what = if name.is_empty() { String::new() } else { format!(" \"{name}\"") };
        ApiError::new(403, "Forbidden", format!("{gr}{what} is forbidden: {message}")).with_details(json!({"name": name, "group": group, "kind": resource}))
    }

    pub fn method_not_allowed(message: impl Into<String>) -> ApiError {
        ApiError::new(405, "MethodNotAllowed", message)
    }

    /// A path nothing is served at. As Kubernetes' mux answers it, with empty `details`:
    /// clients tell it from a missing object by the empty name (kubectl debug reads it
    /// as "ephemeral containers are disabled", and dereferences the details to do so).
    pub fn path_not_found(path: &str) -> ApiError {
        ApiError::new(404, "NotFound", format!("the server could not find the requested resource ({path})")).with_details(json!({}))
    }

    pub fn gone(message: impl Into<String>) -> ApiError {
        ApiError::new(410, "Expired", message)
    }

    pub fn too_large(message: impl Into<String>) -> ApiError {
        ApiError::new(413, "RequestEntityTooLarge", message)
    }

    pub fn unsupported_media_type(content_type: &str) -> ApiError {
        ApiError::new(415, "UnsupportedMediaType", format!("the body of the request was in an unknown format - accepted media types include: application/json, application/yaml, application/vnd.kubernetes.protobuf (got {content_type:?})"))
    }

    pub fn not_acceptable(accept: &str) -> ApiError {
        ApiError::new(406, "NotAcceptable", format!("only the following media types are accepted: application/json, application/yaml, application/vnd.kubernetes.protobuf (asked for {accept:?})"))
    }

    pub fn service_unavailable(message: impl Into<String>) -> ApiError {
        ApiError::new(503, "ServiceUnavailable", message)
    }

    /// A create carrying a resourceVersion: Kubernetes' storage refuses it with a plain,
    /// unclassified 500 (the object was most likely copied from a read).
    pub fn resource_version_on_create() -> ApiError {
        ApiError::new(500, "", "resourceVersion should not be set on objects to be created")
    }

    pub fn internal(message: impl std::fmt::Display) -> ApiError {
        ApiError::new(500, "InternalError", format!("Internal error occurred: {message}"))
    }

    /// The `Status` object for this error.
    pub fn status(&self) -> Value {
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        // Errors Kubernetes does not classify carry no reason at all.
        if self.reason.is_empty() {
            if let Some(o) = status.as_object_mut() {
                o.remove("reason");
            }
        }
        if let Some(details) = &self.details {
            status["details"] = details.clone();
        }
        status
    }

    /// A store error met while working on `res`/`name`.
    pub fn from_store(res: &ResourceInfo, name: &str, err: StoreError) -> ApiError {
        match err {
            StoreError::AlreadyExists { .. } => ApiError::already_exists(res, name),
            StoreError::NotFound { .. } => ApiError::not_found(res, name),
            StoreError::Conflict { .. } => ApiError::stale(res, name),
            StoreError::Compacted { requested, compacted } => ApiError::gone(format!(
                "The resourceVersion for the provided list is too old (requested {requested}, compacted {compacted})."
            )),
            StoreError::FutureRevision { requested, current } => ApiError::new(
                504,
                "Timeout",
                format!("Too large resource version: {requested}, current: {current}"),
            )
            .with_details(json!({"causes": [{"reason": "ResourceVersionTooLarge", "message": "Too large resource version"}], "retryAfterSeconds": 1})),
            other => ApiError::internal(other),
        }
    }

    /// 429 TooManyRequests (apimachinery's `NewTooManyRequests`): the client should
    /// retry after `retry_after_seconds`; the caller sets the `Retry-After` header.
    pub fn too_many_requests(message: impl Into<String>, retry_after_seconds: u64) -> ApiError {
        ApiError::new(429, "TooManyRequests", message).with_details(ApiError::retry_after(retry_after_seconds))
    }

    /// 429 TooManyRequests with one cause (`reason`: `message`), as an eviction refused by
    /// a PodDisruptionBudget is.
    pub fn too_many_requests_because(message: impl Into<String>, reason: &str, cause: impl Into<String>) -> ApiError {
        ApiError::new(429, "TooManyRequests", message).with_details(json!({"causes": [{"reason": reason, "message": cause.into()}]}))
    }

    /// 504 Timeout (apimachinery's `NewTimeoutError`): `Timeout: <message>`.
    pub fn timeout(message: impl std::fmt::Display, retry_after_seconds: u64) -> ApiError {
        ApiError::new(504, "Timeout", format!("Timeout: {message}")).with_details(ApiError::retry_after(retry_after_seconds))
    }

    /// `details` with `retryAfterSeconds`, left out when zero (Kubernetes' omitempty).
    fn retry_after(seconds: u64) -> Value {
        if seconds == 0 {
            json!({})
        } else {
            json!({"retryAfterSeconds": seconds})
        }
    }
}

fn kind_of(res: &ResourceInfo) -> String {
    if res.group.is_empty() {
        res.kind.to_string()
    } else {
        format!("{}.{}", res.kind, res.group)
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({}): {}", self.code, self.reason, self.message)
    }
}

impl std::error::Error for ApiError {}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let code = StatusCode::from_u16(self.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = serde_json::to_vec(&self.status()).unwrap_or_default();
        (code, [(http::header::CONTENT_TYPE, "application/json")], body).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::lookup;

    #[test]
    fn not_found_reads_like_kubernetes() {
        let deploy = lookup("apps", "v1", "deployments").expect("deployments");
        let status = ApiError::not_found(deploy, "web").status();
        assert_eq!(status["message"], "deployments.apps \"web\" not found");
        assert_eq!(status["code"], 404);
        assert_eq!(status["reason"], "NotFound");
        assert_eq!(status["details"]["kind"], "deployments");
        // A path not served: empty details, which kubectl debug reads as a missing
        // subresource (and dereferences).
        let status = ApiError::path_not_found("/api/v1/nope").status();
        assert_eq!((&status["reason"], &status["details"]), (&json!("NotFound"), &json!({})));
    }

    #[test]
    fn apply_conflicts_list_each_field() {
        use apimachinery::managedfields::{Conflict, Operation};
        let c = Conflict {
            manager: "kubectl-client-side-apply".into(),
            operation: Operation::Update,
            api_version: "apps/v1".into(),
            subresource: String::new(),
            field: ".spec.replicas".into(),
        };
        let status = ApiError::apply_conflicts(&[c]).status();
        assert_eq!(status["code"], 409);
        assert_eq!(status["reason"], "Conflict");
        assert_eq!(status["message"], "Apply failed with 1 conflict: conflict with \"kubectl-client-side-apply\" using apps/v1: .spec.replicas");
        assert_eq!(status["details"]["causes"][0]["reason"], "FieldManagerConflict");
        assert_eq!(status["details"]["causes"][0]["message"], "conflict with \"kubectl-client-side-apply\" using apps/v1");
        assert_eq!(status["details"]["causes"][0]["field"], ".spec.replicas");
    }

    #[test]
    fn invalid_lists_causes() {
        let pods = lookup("", "v1", "pods").expect("pods");
        let err = ApiError::invalid(pods, "Bad", vec![Cause::invalid("metadata.name", "Bad", "must be lower case")]);
        let status = err.status();
        assert_eq!(status["code"], 422);
        assert_eq!(status["message"], "Pod \"Bad\" is invalid: metadata.name: Invalid value: \"Bad\": must be lower case");
        assert_eq!(status["details"]["causes"][0]["field"], "metadata.name");
    }
}
