//! List and watch filters: namespace, label selector and field selector, with the field
//! labels each resource supports as Kubernetes defines them.

use apimachinery::fields::FieldSelector;
use apimachinery::labels::Selector;
use serde_json::Value;

use crate::errors::ApiError;
use crate::registry::ResourceInfo;

/// Which objects a list or watch returns.
#[derive(Debug, Clone)]
pub struct Filter {
    pub namespace: Option<String>,
    pub labels: Selector,
    pub fields: FieldSelector,
    res: &'static ResourceInfo,
}

impl Filter {
    pub fn new(res: &'static ResourceInfo, namespace: Option<String>, labels: Option<&str>, fields: Option<&str>) -> Result<Filter, ApiError> {
        let labels = match labels {
            Some(s) if !s.trim().is_empty() => Selector::parse(s).map_err(|e| ApiError::bad_request(format!("unable to parse requirement: {e}")))?,
            _ => Selector::everything(),
        };
        let fields = match fields {
            Some(s) if !s.trim().is_empty() => FieldSelector::parse(s).map_err(|e| ApiError::bad_request(e.to_string()))?,
            _ => FieldSelector::parse("").map_err(|e| ApiError::bad_request(e.to_string()))?,
        };
        for req in fields.requirements() {
            if field_value(res, &Value::Null, &req.field).is_err() {
                return Err(ApiError::bad_request(format!(
                    "field label not supported: {}",
                    req.field
                )));
            }
        }
        Ok(Filter { namespace, labels, fields, res })
    }

    pub fn matches(&self, obj: &Value) -> bool {
        if let Some(ns) = &self.namespace {
            if self.res.namespaced && obj.pointer("/metadata/namespace").and_then(Value::as_str) != Some(ns.as_str()) {
                return false;
            }
        }
        if !self.labels.is_empty() && !self.labels.matches_json(obj.pointer("/metadata/labels").and_then(Value::as_object)) {
            return false;
        }
        if !self.fields.is_empty() {
            return self.fields.matches(|f| field_value(self.res, obj, f).ok().flatten());
        }
        true
    }
}

fn str_at(obj: &Value, pointer: &str) -> Option<String> {
    match obj.pointer(pointer) {
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Bool(b)) => Some(b.to_string()),
        Some(Value::Number(n)) => Some(n.to_string()),
        _ => None,
    }
}

/// A field selector named a field the resource does not support.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnsupportedField;

/// The value of a field label of an object; `Err` if the resource has no such label.
/// Absent values read as the empty string (or `false` for booleans), as in Kubernetes.
pub fn field_value(res: &ResourceInfo, obj: &Value, field: &str) -> Result<Option<String>, UnsupportedField> {
    let or_empty = |p: &str| Ok(Some(str_at(obj, p).unwrap_or_default()));
    let or_false = |p: &str| Ok(Some(str_at(obj, p).unwrap_or_else(|| "false".into())));
    match field {
        "metadata.name" => return or_empty("/metadata/name"),
        "metadata.namespace" if res.namespaced => return or_empty("/metadata/namespace"),
        _ => {}
    }
    match (res.group, res.plural, field) {
        ("", "pods", "spec.nodeName") => or_empty("/spec/nodeName"),
        ("", "pods", "spec.restartPolicy") => or_empty("/spec/restartPolicy"),
        ("", "pods", "spec.schedulerName") => or_empty("/spec/schedulerName"),
        ("", "pods", "spec.serviceAccountName") => or_empty("/spec/serviceAccountName"),
        ("", "pods", "spec.hostNetwork") => or_false("/spec/hostNetwork"),
        ("", "pods", "status.phase") => or_empty("/status/phase"),
        ("", "pods", "status.podIP") => or_empty("/status/podIP"),
        ("", "pods", "status.nominatedNodeName") => or_empty("/status/nominatedNodeName"),
        ("", "events", f) => match f {
            "involvedObject.kind" | "involvedObject.namespace" | "involvedObject.name" | "involvedObject.uid"
            | "involvedObject.apiVersion" | "involvedObject.resourceVersion" | "involvedObject.fieldPath" => {
                or_empty(&format!("/{}", f.replace('.', "/")))
            }
            "reason" | "reportingComponent" | "type" => or_empty(&format!("/{f}")),
            "source" => or_empty("/source/component"),
            _ => Err(UnsupportedField),
        },
        // Filters see the stored shape: events.k8s.io Events are stored as core Events.
        ("events.k8s.io", "events", f) => match f {
            "regarding.kind" | "regarding.namespace" | "regarding.name" | "regarding.uid" | "regarding.apiVersion"
            | "regarding.resourceVersion" | "regarding.fieldPath" => {
                or_empty(&format!("/involvedObject/{}", f.trim_start_matches("regarding.")))
            }
            "reportingController" => or_empty("/reportingComponent"),
            "reason" | "type" => or_empty(&format!("/{f}")),
            _ => Err(UnsupportedField),
        },
        ("", "secrets", "type") => or_empty("/type"),
        ("", "namespaces", "status.phase") => or_empty("/status/phase"),
        ("", "nodes", "spec.unschedulable") => or_false("/spec/unschedulable"),
        ("", "services", "spec.clusterIP") => or_empty("/spec/clusterIP"),
        ("", "services", "spec.type") => or_empty("/spec/type"),
        ("", "replicationcontrollers" , "status.replicas") | ("apps", "replicasets", "status.replicas") => {
            Ok(Some(str_at(obj, "/status/replicas").unwrap_or_else(|| "0".into())))
        }
        ("batch", "jobs", "status.successful") => Ok(Some(str_at(obj, "/status/succeeded").unwrap_or_else(|| "0".into()))),
        ("", "persistentvolumeclaims", "spec.volumeName") => or_empty("/spec/volumeName"),
        ("certificates.k8s.io", "certificatesigningrequests", "spec.signerName") => or_empty("/spec/signerName"),
        _ => Err(UnsupportedField),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::lookup;
    use serde_json::json;

    #[test]
    fn pods_filter_by_node_and_labels() {
        let pods = lookup("", "v1", "pods").expect("pods");
        let pod = json!({"metadata": {"name": "a", "namespace": "default", "labels": {"app": "web"}}, "spec": {"nodeName": "n1"}, "status": {"phase": "Running"}});
        let f = Filter::new(pods, Some("default".into()), Some("app=web"), Some("spec.nodeName=n1,status.phase!=Failed")).expect("filter");
        assert!(f.matches(&pod));
        let f = Filter::new(pods, None, Some("app in (db)"), None).expect("filter");
        assert!(!f.matches(&pod));
        let f = Filter::new(pods, Some("other".into()), None, None).expect("filter");
        assert!(!f.matches(&pod));
        let f = Filter::new(pods, None, None, Some("spec.nodeName=")).expect("filter");
        assert!(!f.matches(&pod));
    }

    #[test]
    fn unknown_field_labels_are_refused() {
        let cms = lookup("", "v1", "configmaps").expect("configmaps");
        let err = Filter::new(cms, None, None, Some("spec.foo=bar")).expect_err("unsupported");
        assert_eq!(err.code, 400);
        assert!(err.message.contains("field label not supported: spec.foo"));
    }
}
