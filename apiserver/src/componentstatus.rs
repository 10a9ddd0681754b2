//! `componentstatuses` (core/v1, deprecated since Kubernetes 1.19 and still served): the
//! health of the scheduler, the controller-manager and each etcd member, worked out on
//! every request as Kubernetes does. `kubectl get cs` is among the first commands of many
//! tutorials.
//!
//! Kubernetes probes the scheduler's and controller-manager's `/healthz` on localhost.
//! rkube's components either run in the apiserver's own process (`rkube up`: a task that
//! still runs is healthy) or apart, with leader election (a Lease in kube-system renewed
//! within its duration is a healthy leader).

use chrono::Utc;
use component_base::leaderelection;
use http::{HeaderMap, Method, StatusCode};
use k8s_openapi::api::coordination::v1::LeaseSpec;
use k8s_openapi::jiff::{self, Timestamp};
use serde_json::{json, Value};

use crate::codec::{self, Shape};
use crate::errors::ApiError;
use crate::filter::Filter;
use crate::handlers::Params;
use crate::printers;
use crate::registry::{self, ResourceInfo};
use crate::server::ApiServer;

/// The warning Kubernetes sends with every answer about this resource.
pub const DEPRECATION: &str = "v1 ComponentStatus is deprecated in v1.19+";

/// The resource, for discovery and error messages.
pub fn resource() -> &'static ResourceInfo {
    &registry::COMPONENT_STATUS_RESOURCES[0]
}

/// The components judged by a Lease, by their `componentstatuses` name.
const LEASED: &[(&str, &str)] = &[("controller-manager", "kube-controller-manager"), ("scheduler", "kube-scheduler")];

/// A `ComponentStatus` with its one `Healthy` condition.
fn component_status(name: &str, health: Result<&str, String>) -> Value {
    let condition = match health {
        Ok(message) => json!({"type": "Healthy", "status": "True", "message": message}),
        Err(error) => json!({"type": "Healthy", "status": "False", "error": error}),
    };
    json!({"kind": "ComponentStatus", "apiVersion": "v1", "metadata": {"name": name}, "conditions": [condition]})
}

/// Whether `lease` (a leader-election Lease, as stored) shows a live holder at `now`, by
/// the rule the leader election itself follows.
fn lease_health(component: &str, lease: Option<&Value>, now: Timestamp) -> Result<&'static str, String> {
    let Some(lease) = lease else {
        return Err(format!("{component} does not run in this process and holds no Lease kube-system/{component}"));
    };
    let spec: LeaseSpec = lease.get("spec").cloned().and_then(|s| serde_json::from_value(s).ok()).unwrap_or_default();
    let holder = spec.holder_identity.as_deref().unwrap_or_default();
    if holder.is_empty() {
        return Err(format!("no {component} holds Lease kube-system/{component}"));
    }
    if !leaderelection::expired(&spec, now) {
        return Ok("ok");
    }
    match &spec.renew_time {
        Some(at) => Err(format!("{holder} last renewed Lease kube-system/{component} at {}", at.0.round(jiff::Unit::Second).unwrap_or(at.0))),
        None => Err(format!("Lease kube-system/{component} has no renewTime")),
    }
}

impl ApiServer {
    /// Every component's status, in the order Kubernetes usually lists them.
    async fn component_statuses(&self) -> Result<Vec<Value>, ApiError> {
        let leases = registry::lookup("coordination.k8s.io", "v1", "leases").ok_or_else(|| ApiError::internal("leases not registered"))?;
        let cache = self.cache(leases)?;
        let now = Timestamp::now();
        let mut out = Vec::new();
        for (name, lease_name) in LEASED {
            let health = match self.config.local_components.iter().find(|(n, _)| n == name) {
                Some((_, running)) if running.is_running() => Ok("ok"),
                Some(_) => Err(format!("{lease_name} has stopped")),
                None => lease_health(lease_name, cache.get(&leases.key(Some("kube-system"), lease_name)).as_deref(), now),
            };
            out.push(component_status(name, health));
        }
        for (i, health) in self.store.member_health().await.into_iter().enumerate() {
            out.push(component_status(&format!("etcd-{i}"), health.map(|()| "ok")));
        }
        Ok(out)
    }

    /// Serves `GET /api/v1/componentstatuses[/<name>]`.
    pub async fn serve_component_statuses(&self, method: &Method, rest: &[&str], headers: &HeaderMap, query: Option<&str>) -> Result<axum::response::Response, ApiError> {
        let params = Params::parse(query)?;
        if method != Method::GET || params.flag("watch") {
            let verb = if method == Method::GET { "watch".to_string() } else { method.to_string() };
            return Err(ApiError::method_not_allowed(format!("the server does not allow this method on the requested resource ({verb})")));
        }
        let negotiated = codec::negotiate(headers)?;
        let res = resource();
        let mut items = self.component_statuses().await?;
        let single = match rest {
            [] => {
                let filter = Filter::new(res, None, params.get("labelSelector"), params.get("fieldSelector"))?;
                items.retain(|o| filter.matches(o));
                false
            }
            [name] => {
                items.retain(|o| o.pointer("/metadata/name").and_then(Value::as_str) == Some(*name));
                if items.is_empty() {
                    return Err(ApiError::not_found(res, name));
                }
                true
            }
            _ => return Err(ApiError::path_not_found(&format!("/api/v1/componentstatuses/{}", rest.join("/")))),
        };
        let body = match negotiated.shape {
            Shape::Table => printers::table(res.plural, res.group, &items, crate::handlers::include_object(&params), json!({}), Utc::now()),
            Shape::PartialObjectMetadata if single => crate::handlers::partial_metadata(&items[0]),
            Shape::PartialObjectMetadata => json!({
                "kind": "PartialObjectMetadataList", "apiVersion": "meta.k8s.io/v1", "metadata": {},
                "items": items.iter().map(crate::handlers::partial_metadata).collect::<Vec<_>>(),
            }),
            Shape::Object if single => items.remove(0),
            Shape::Object => json!({"kind": "ComponentStatusList", "apiVersion": "v1", "metadata": {}, "items": items}),
        };
        let (bytes, content_type) = codec::encode(negotiated.format, &body);
        let warning = format!("299 - {}", Value::String(DEPRECATION.into()));
        Ok(axum::response::IntoResponse::into_response((
            StatusCode::OK,
            [(http::header::CONTENT_TYPE, content_type.to_string()), (http::header::WARNING, warning)],
            bytes,
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap_or_default()
    }

    #[test]
    fn a_lease_renewed_within_its_duration_is_healthy() {
        let lease = json!({"spec": {"holderIdentity": "vm_1", "renewTime": "2025-01-01T12:00:00.000000Z", "leaseDurationSeconds": 15}});
        assert_eq!(lease_health("kube-scheduler", Some(&lease), at("2025-01-01T12:00:10Z")), Ok("ok"));
        let stale = lease_health("kube-scheduler", Some(&lease), at("2025-01-01T12:00:16Z"));
        assert_eq!(stale, Err("vm_1 last renewed Lease kube-system/kube-scheduler at 2025-01-01T12:00:00Z".to_string()));
        let released = json!({"spec": {"holderIdentity": "", "renewTime": "2025-01-01T12:00:00.000000Z", "leaseDurationSeconds": 15}});
        assert!(lease_health("kube-scheduler", Some(&released), at("2025-01-01T12:00:01Z")).is_err(), "a released lease has no leader");
        assert!(lease_health("kube-scheduler", None, at("2025-01-01T12:00:01Z")).is_err());
    }

    #[test]
    fn conditions_read_as_kubernetes_writes_them() {
        let ok = component_status("etcd-0", Ok("ok"));
        assert_eq!(ok["conditions"], json!([{"type": "Healthy", "status": "True", "message": "ok"}]));
        let bad = component_status("scheduler", Err("kube-scheduler has stopped".into()));
        assert_eq!(bad["conditions"], json!([{"type": "Healthy", "status": "False", "error": "kube-scheduler has stopped"}]));
        let table = printers::table("componentstatuses", "", &[ok, bad], printers::IncludeObject::None, json!({}), Utc::now());
        assert_eq!(table["rows"][0]["cells"], json!(["etcd-0", "Healthy", "ok", ""]));
        assert_eq!(table["rows"][1]["cells"], json!(["scheduler", "Unhealthy", "", "kube-scheduler has stopped"]));
    }
}
