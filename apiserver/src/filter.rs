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
        Selectable::from_parts(obj.pointer(LABELS), pointers.iter().map(|p| (*p, obj.pointer(p))))
    }

    /// [`Selectable::of`] the object `json` encodes, without building it: one pass that
    /// steps into only the objects on the pointers' paths (`metadata`, `spec`, …) and
    /// skips everything else, decoding only the values found. The watch cache reads each
    /// object it is sent this way. Fails as decoding would, on anything but valid JSON.
    pub fn of_json(json: &[u8], pointers: &[&'static str]) -> Result<Selectable, serde_json::Error> {
        let mut paths: Vec<Vec<&str>> = Vec::with_capacity(pointers.len() + 1);
        for pointer in std::iter::once(&LABELS).chain(pointers) {
            paths.push(pointer.split('/').skip(1).collect());
        }
        let mut found: Vec<Option<Value>> = vec![None; paths.len()];
        let wanted: Vec<(usize, &[&str])> = paths.iter().enumerate().map(|(i, p)| (i, p.as_slice())).collect();
        let mut de = serde_json::Deserializer::from_slice(json);
        serde::de::DeserializeSeed::deserialize(Walk { wanted: &wanted, found: &mut found }, &mut de)?;
        de.end()?;
        let (labels, values) = found.split_at(1);
        Ok(Selectable::from_parts(labels[0].as_ref(), pointers.iter().copied().zip(values.iter().map(Option::as_ref))))
    }

    fn from_parts<'a>(labels: Option<&Value>, values: impl Iterator<Item = (&'static str, Option<&'a Value>)>) -> Selectable {
        let labels = labels
            .and_then(Value::as_object)
            .map(|m| m.iter().filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string()))).collect())
            .unwrap_or_default();
        let values = values.filter_map(|(p, v)| Some((p, scalar_text(v?)?))).collect();
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
    scalar_text(obj.pointer(pointer)?)
}

/// A string, boolean or number as a field selector compares it.
fn scalar_text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

const LABELS: &str = "/metadata/labels";

/// One level of [`Selectable::of_json`]'s pass: the paths (keys from here on) still
/// wanted below this value, each with where its value goes.
struct Walk<'w, 'p> {
    wanted: &'w [(usize, &'p [&'p str])],
    found: &'w mut [Option<Value>],
}

impl<'de> serde::de::DeserializeSeed<'de> for Walk<'_, '_> {
    type Value = ();

    fn deserialize<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for Walk<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(key) = map.next_key::<Key<'de>>()? {
            let key = key.as_str();
            let on_path = |(_, path): &&(usize, &[&str])| path.first() == Some(&key);
            if !self.wanted.iter().any(|w| on_path(&w)) {
                map.next_value::<serde::de::IgnoredAny>()?;
                continue;
            }
            let below: Vec<(usize, &[&str])> = self.wanted.iter().filter(on_path).map(|(i, path)| (*i, &path[1..])).collect();
            match below.iter().find(|(_, rest)| rest.is_empty()) {
                Some((i, _)) => self.found[*i] = Some(map.next_value::<Value>()?),
                None => map.next_value_seed(Walk { wanted: &below, found: &mut *self.found })?,
            }
        }
        Ok(())
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
        Ok(())
    }

    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }
}

/// An object key, borrowed from the input unless it had escapes.
struct Key<'de>(std::borrow::Cow<'de, str>);

impl Key<'_> {
    fn as_str(&self) -> &str {
        &self.0
    }
}

impl<'de> serde::Deserialize<'de> for Key<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> serde::de::Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an object key")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(std::borrow::Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Key<'de>, E> {
                Ok(Key(std::borrow::Cow::Owned(v.to_string())))
            }
        }
        deserializer.deserialize_str(KeyVisitor)
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
            let pointers = selectable_pointers(res.storage_resource);
            let selectable = Selectable::of(obj, &pointers);
            assert_eq!(filter.matches_selectable(&selectable), filter.matches(obj), "{obj} {namespace:?} {labels:?} {fields:?}");
            // Read from the JSON without decoding it, the same.
            let from_json = Selectable::of_json(&serde_json::to_vec(obj).expect("json"), &pointers).expect("of_json");
            assert_eq!(from_json, selectable, "{obj}");
        }
        // Escaped keys, values of other types, nested objects and arrays skipped, numbers.
        let pods_pointers = selectable_pointers(pods.storage_resource);
        let text = br#"{"kind":"Pod","spec":{"containers":[{"name":"a","env":[{"name":"x"}]}],"nodeName":"n1","hostNetwork":true},
            "metadata":{"labels":{"app":"web","n":3},"name":"a","namespace":"default","annotations":{"metadata":{"name":"no"}}},
            "status":{"phase":{"not":"a scalar"}}}"#;
        let from_json = Selectable::of_json(text, &pods_pointers).expect("of_json");
        let value: Value = serde_json::from_slice(text).expect("value");
        assert_eq!(from_json, Selectable::of(&value, &pods_pointers));
        assert_eq!(from_json.at("/spec/nodeName"), Some("n1"));
        assert_eq!(from_json.at("/spec/hostNetwork"), Some("true"));
        assert_eq!(from_json.at("/metadata/name"), Some("a"));
        assert_eq!(from_json.at("/status/phase"), None);
        assert_eq!(from_json.labels.len(), 1);
        // Not JSON, or JSON with trailing garbage, is an error as decoding is.
        assert!(Selectable::of_json(br#"{"metadata":{"name":"a"}"#, &pods_pointers).is_err());
        assert!(Selectable::of_json(br#"{"metadata":{}} x"#, &pods_pointers).is_err());
        assert!(Selectable::of_json(br#"[1,"a"]"#, &pods_pointers).is_ok_and(|s| s.labels.is_empty() && s.at("/metadata/name").is_none()));
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
