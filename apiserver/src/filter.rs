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
        let namespace = || obj.pointer("/metadata/namespace").and_then(Value::as_str);
        let labels = obj.pointer("/metadata/labels").and_then(Value::as_object);
        self.matches_parts(namespace, |s| s.matches_json(labels), |pointer| str_at(obj, pointer))
    }

    /// [`Filter::matches`] for an object known by its [`Selectable`] fields alone.
    pub fn matches_selectable(&self, obj: &Selectable) -> bool {
        self.matches_parts(|| obj.namespace(), |s| s.matches(&obj.labels), |pointer| obj.at(pointer).map(str::to_string))
    }

    fn matches_parts<'a>(
        &self,
        namespace: impl FnOnce() -> Option<&'a str>,
        labels: impl FnOnce(&Selector) -> bool,
        at: impl Fn(&str) -> Option<String>,
    ) -> bool {
        if let Some(ns) = &self.namespace {
            if self.res.namespaced && namespace() != Some(ns.as_str()) {
                return false;
            }
        }
        if !self.labels.is_empty() && !labels(&self.labels) {
            return false;
        }
        if !self.fields.is_empty() {
            return self.fields.matches(|f| {
                let label = field_label(self.res, f)?;
                Some(at(label.pointer).unwrap_or_else(|| label.default.to_string()))
            });
        }
        true
    }
}

/// What a filter looks at in an object, kept apart from the object so that a cache can
/// match objects it holds only as bytes: the namespace, the labels, and the value at
/// every JSON pointer a field label of the resource reads.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selectable {
    pub labels: std::collections::BTreeMap<String, String>,
    /// `(pointer, value)` for each pointer the object has a scalar at.
    values: Vec<(&'static str, String)>,
}

impl Selectable {
    /// Reads `obj` at `pointers` (from [`selectable_pointers`]) and its labels.
    pub fn of(obj: &Value, pointers: &[&'static str]) -> Selectable {
        let labels = obj
            .pointer("/metadata/labels")
            .and_then(Value::as_object)
            .map(|m| m.iter().filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string()))).collect())
            .unwrap_or_default();
        let values = pointers.iter().filter_map(|p| Some((*p, str_at(obj, p)?))).collect();
        Selectable { labels, values }
    }

    /// The object's value at a JSON pointer, if it was read and the object has one.
    pub fn at(&self, pointer: &str) -> Option<&str> {
        self.values.iter().find(|(p, _)| *p == pointer).map(|(_, v)| v.as_str())
    }

    pub fn namespace(&self) -> Option<&str> {
        self.at("/metadata/namespace")
    }
}

/// Every JSON pointer a filter may read in objects stored as `storage_resource` (for
/// every resource served from that storage): what [`Selectable::of`] has to keep.
pub fn selectable_pointers(storage_resource: &str) -> Vec<&'static str> {
    let mut pointers = vec!["/metadata/name", "/metadata/namespace"];
    for label in FIELD_LABELS {
        let served_here = crate::registry::RESOURCES
            .iter()
            .any(|r| r.group == label.group && r.plural == label.plural && r.storage_resource == storage_resource);
        if served_here && !pointers.contains(&label.pointer) {
            pointers.push(label.pointer);
        }
    }
    pointers
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
#[derive(Debug)]
pub struct UnsupportedField;

/// A field label: where in the stored object its value is, and the value when the
/// object has none there.
struct FieldLabel {
    group: &'static str,
    plural: &'static str,
    field: &'static str,
    pointer: &'static str,
    default: &'static str,
}

const fn label(group: &'static str, plural: &'static str, field: &'static str, pointer: &'static str, default: &'static str) -> FieldLabel {
    FieldLabel { group, plural, field, pointer, default }
}

/// The field labels beyond `metadata.name` and `metadata.namespace`, as Kubernetes
/// defines them per resource. Pointers are into the stored shape: events.k8s.io Events
/// are stored as core Events.
const FIELD_LABELS: &[FieldLabel] = &[
    label("", "pods", "spec.nodeName", "/spec/nodeName", ""),
    label("", "pods", "spec.restartPolicy", "/spec/restartPolicy", ""),
    label("", "pods", "spec.schedulerName", "/spec/schedulerName", ""),
    label("", "pods", "spec.serviceAccountName", "/spec/serviceAccountName", ""),
    label("", "pods", "spec.hostNetwork", "/spec/hostNetwork", "false"),
    label("", "pods", "status.phase", "/status/phase", ""),
    label("", "pods", "status.podIP", "/status/podIP", ""),
    label("", "pods", "status.nominatedNodeName", "/status/nominatedNodeName", ""),
    label("", "events", "involvedObject.kind", "/involvedObject/kind", ""),
    label("", "events", "involvedObject.namespace", "/involvedObject/namespace", ""),
    label("", "events", "involvedObject.name", "/involvedObject/name", ""),
    label("", "events", "involvedObject.uid", "/involvedObject/uid", ""),
    label("", "events", "involvedObject.apiVersion", "/involvedObject/apiVersion", ""),
    label("", "events", "involvedObject.resourceVersion", "/involvedObject/resourceVersion", ""),
    label("", "events", "involvedObject.fieldPath", "/involvedObject/fieldPath", ""),
    label("", "events", "reason", "/reason", ""),
    label("", "events", "reportingComponent", "/reportingComponent", ""),
    label("", "events", "type", "/type", ""),
    label("", "events", "source", "/source/component", ""),
    label("events.k8s.io", "events", "regarding.kind", "/involvedObject/kind", ""),
    label("events.k8s.io", "events", "regarding.namespace", "/involvedObject/namespace", ""),
    label("events.k8s.io", "events", "regarding.name", "/involvedObject/name", ""),
    label("events.k8s.io", "events", "regarding.uid", "/involvedObject/uid", ""),
    label("events.k8s.io", "events", "regarding.apiVersion", "/involvedObject/apiVersion", ""),
    label("events.k8s.io", "events", "regarding.resourceVersion", "/involvedObject/resourceVersion", ""),
    label("events.k8s.io", "events", "regarding.fieldPath", "/involvedObject/fieldPath", ""),
    label("events.k8s.io", "events", "reportingController", "/reportingComponent", ""),
    label("events.k8s.io", "events", "reason", "/reason", ""),
    label("events.k8s.io", "events", "type", "/type", ""),
    label("", "secrets", "type", "/type", ""),
    label("", "namespaces", "status.phase", "/status/phase", ""),
    label("", "nodes", "spec.unschedulable", "/spec/unschedulable", "false"),
    label("", "services", "spec.clusterIP", "/spec/clusterIP", ""),
    label("", "services", "spec.type", "/spec/type", ""),
    label("", "replicationcontrollers", "status.replicas", "/status/replicas", "0"),
    label("apps", "replicasets", "status.replicas", "/status/replicas", "0"),
    label("batch", "jobs", "status.successful", "/status/succeeded", "0"),
    label("", "persistentvolumeclaims", "spec.volumeName", "/spec/volumeName", ""),
    label("certificates.k8s.io", "certificatesigningrequests", "spec.signerName", "/spec/signerName", ""),
];

const NAME: FieldLabel = label("", "", "metadata.name", "/metadata/name", "");
const NAMESPACE: FieldLabel = label("", "", "metadata.namespace", "/metadata/namespace", "");

/// The field label `field` of `res`, if it has one.
fn field_label(res: &ResourceInfo, field: &str) -> Option<&'static FieldLabel> {
    match field {
        "metadata.name" => Some(&NAME),
        "metadata.namespace" if res.namespaced => Some(&NAMESPACE),
        _ => FIELD_LABELS.iter().find(|l| l.group == res.group && l.plural == res.plural && l.field == field),
    }
}

/// The value of field label `field` of `res` in `obj` (`Ok(Some)` even when the object
/// lacks the field: the label's default, as Kubernetes compares against ""), or an error
/// for a field the resource does not support.
pub fn field_value(res: &ResourceInfo, obj: &Value, field: &str) -> Result<Option<String>, UnsupportedField> {
    let label = field_label(res, field).ok_or(UnsupportedField)?;
    Ok(Some(str_at(obj, label.pointer).unwrap_or_else(|| label.default.to_string())))
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
    fn selectable_fields_match_as_the_object_does() {
        let pods = lookup("", "v1", "pods").expect("pods");
        let new_events = lookup("events.k8s.io", "v1", "events").expect("events");
        let pod = json!({"metadata": {"name": "a", "namespace": "default", "labels": {"app": "web", "tier": "1"}}, "spec": {"nodeName": "n1", "hostNetwork": true}, "status": {"phase": "Running"}});
        let bare = json!({"metadata": {"name": "b", "namespace": "other"}});
        let event = json!({"metadata": {"name": "e", "namespace": "default"}, "involvedObject": {"kind": "Pod", "name": "a"}, "reason": "Started", "type": "Normal"});
        let cases = [
            (pods, &pod, None, Some("app=web,tier in (1,2)"), Some("spec.nodeName=n1,status.phase!=Failed")),
            (pods, &pod, Some("default"), Some("app!=web"), None),
            (pods, &pod, Some("other"), None, None),
            (pods, &pod, None, None, Some("spec.hostNetwork=true,metadata.name=a")),
            (pods, &bare, None, None, Some("spec.hostNetwork=false,spec.nodeName=")),
            (pods, &bare, None, Some("!app"), Some("status.phase=Running")),
            (new_events, &event, Some("default"), None, Some("regarding.kind=Pod,regarding.name=a,reason=Started")),
            (new_events, &event, None, None, Some("regarding.uid=x")),
        ];
        for (res, obj, namespace, labels, fields) in cases {
            let filter = Filter::new(res, namespace.map(str::to_string), labels, fields).expect("filter");
            let selectable = Selectable::of(obj, &selectable_pointers(res.storage_resource));
            assert_eq!(filter.matches_selectable(&selectable), filter.matches(obj), "{obj} {namespace:?} {labels:?} {fields:?}");
        }
        // Both event groups are filtered in the one store of core Events.
        let pointers = selectable_pointers(new_events.storage_resource);
        assert!(pointers.contains(&"/involvedObject/kind") && pointers.contains(&"/source/component"));
    }

    #[test]
    fn unknown_field_labels_are_refused() {
        let cms = lookup("", "v1", "configmaps").expect("configmaps");
        let err = Filter::new(cms, None, None, Some("spec.foo=bar")).expect_err("unsupported");
        assert_eq!(err.code, 400);
        assert!(err.message.contains("field label not supported: spec.foo"));
    }
}
