//! Server-side apply and field ownership, after Kubernetes' field manager tests.

use super::*;
use crate::patch::BuiltinPatchMeta;
use serde_json::json;

const T0: &str = "2024-01-01T00:00:00Z";
const T1: &str = "2024-01-01T00:01:00Z";
const T2: &str = "2024-01-01T00:02:00Z";

fn deployment() -> BuiltinPatchMeta {
    BuiltinPatchMeta::for_kind("apps", "Deployment")
}

fn deploy(replicas: i64, labels: Value, image: &str) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web", "labels": labels},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [
                    {"name": "web", "image": image, "command": ["httpd", "-f"], "ports": [{"containerPort": 8080}]}
                ]}
            }
        }
    })
}

fn apply_ok(current: Option<&Value>, applied: &Value, manager: &str, force: bool, now: &str) -> Value {
    apply(current, applied, manager, force, &deployment(), now).unwrap_or_else(|e| panic!("{e}"))
}

fn entry<'a>(obj: &'a Value, manager: &str, operation: &str) -> Option<&'a Value> {
    obj.pointer("/metadata/managedFields")?
        .as_array()?
        .iter()
        .find(|e| e["manager"] == manager && e["operation"] == operation)
}

fn owns(obj: &Value, manager: &str, operation: &str, path: &str) -> bool {
    let Some(e) = entry(obj, manager, operation) else { return false };
    let set = FieldSet::from_fields_v1(&e["fieldsV1"]).unwrap_or_else(|e| panic!("{e}"));
    set.iter().any(|p| path_string(p) == path)
}

fn conflicts_of(r: Result<Value, ApplyError>) -> Vec<Conflict> {
    match r {
        Err(ApplyError::Conflicts(c)) => c,
        other => panic!("expected conflicts, got {other:?}"),
    }
}

#[test]
fn fields_v1_round_trips() {
    let v = json!({
        "f:metadata": {"f:labels": {"f:app": {}}},
        "f:spec": {"f:containers": {"k:{\"name\":\"web\"}": {".": {}, "f:image": {}}}}
    });
    let set = FieldSet::from_fields_v1(&v).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(set.len(), 3);
    let printed: Vec<String> = set.iter().map(|p| path_string(p)).collect();
    assert!(printed.contains(&".metadata.labels.app".to_string()), "{printed:?}");
    assert!(printed.contains(&".spec.containers[name=\"web\"]".to_string()), "{printed:?}");
    assert!(printed.contains(&".spec.containers[name=\"web\"].image".to_string()), "{printed:?}");
    assert_eq!(set.to_fields_v1(), v);
    assert_eq!(serde_json::to_string(&set.to_fields_v1()).unwrap_or_default(), serde_json::to_string(&v).unwrap_or_default());
}

#[test]
fn fields_v1_keys_values_and_indices_parse() {
    let v = json!({
        "f:metadata": {"f:finalizers": {".": {}, "v:\"example.com/x\"": {}}},
        "f:spec": {"f:ports": {"k:{\"protocol\":\"TCP\",\"port\":80}": {".": {}, "f:port": {}}}, "f:list": {"i:0": {}}}
    });
    let set = FieldSet::from_fields_v1(&v).unwrap_or_else(|e| panic!("{e}"));
    let printed: Vec<String> = set.iter().map(|p| path_string(p)).collect();
    assert!(printed.contains(&".metadata.finalizers[=\"example.com/x\"]".to_string()), "{printed:?}");
    assert!(printed.contains(&".spec.ports[port=80,protocol=\"TCP\"].port".to_string()), "{printed:?}");
    assert!(printed.contains(&".spec.list[0]".to_string()), "{printed:?}");
    // Keys are canonical: sorted key fields.
    let again = set.to_fields_v1();
    assert!(again["f:spec"]["f:ports"].get("k:{\"port\":80,\"protocol\":\"TCP\"}").is_some(), "{again}");
    assert!(FieldSet::from_fields_v1(&json!({"x:y": {}})).is_err());
    assert!(FieldSet::from_fields_v1(&json!({"f:a": 1})).is_err());
}

#[test]
fn set_operations() {
    let a: FieldSet = [vec![PathElement::Field("a".into())], vec![PathElement::Field("b".into())]].into_iter().collect();
    let b: FieldSet = [vec![PathElement::Field("b".into())], vec![PathElement::Field("c".into())]].into_iter().collect();
    assert_eq!(a.union(&b).len(), 3);
    assert_eq!(a.intersection(&b).len(), 1);
    assert!(a.difference(&b).contains(&[PathElement::Field("a".into())]));
    assert!(!a.difference(&b).contains(&[PathElement::Field("b".into())]));
}

#[test]
fn field_set_keys_lists_by_their_list_map_keys() {
    let mut obj = deploy(2, json!({"app": "web"}), "busybox");
    obj["metadata"]["finalizers"] = json!(["example.com/x"]);
    obj["metadata"]["uid"] = json!("u");
    obj["status"] = json!({"replicas": 2});
    let set = field_set(&obj, &deployment());
    let printed: BTreeSet<String> = set.iter().map(|p| path_string(p)).collect();
    let c = ".spec.template.spec.containers[name=\"web\"]";
    for want in [
        ".metadata.labels.app".to_string(),
        ".metadata.finalizers[=\"example.com/x\"]".to_string(),
        ".spec.replicas".to_string(),
        c.to_string(),
        format!("{c}.image"),
        format!("{c}.name"),
        format!("{c}.command"),
        format!("{c}.ports[containerPort=8080,protocol=\"TCP\"]"),
        format!("{c}.ports[containerPort=8080,protocol=\"TCP\"].containerPort"),
    ] {
        assert!(printed.contains(&want), "missing {want} in {printed:?}");
    }
    for absent in [".apiVersion", ".kind", ".metadata.name", ".metadata.uid", ".status.replicas", ".spec", ".metadata.labels"] {
        assert!(!printed.contains(absent), "{absent} in {printed:?}");
    }
}

#[test]
fn service_ports_are_keyed_by_port_and_protocol() {
    let svc = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s"},
        "spec": {"ports": [{"port": 80, "protocol": "UDP"}, {"port": 80}]}});
    let set = field_set(&svc, &BuiltinPatchMeta::for_kind("", "Service"));
    let printed: BTreeSet<String> = set.iter().map(|p| path_string(p)).collect();
    assert!(printed.contains(".spec.ports[port=80,protocol=\"UDP\"]"), "{printed:?}");
    assert!(printed.contains(".spec.ports[port=80,protocol=\"TCP\"]"), "{printed:?}");
}

#[test]
fn first_apply_owns_the_applied_fields() {
    let applied = deploy(2, json!({"app": "web"}), "busybox:1.36");
    let obj = apply_ok(None, &applied, "kubectl", false, T0);
    assert_eq!(obj["spec"]["replicas"], 2);
    assert_eq!(obj["metadata"]["name"], "web");
    let e = entry(&obj, "kubectl", "Apply").unwrap_or_else(|| panic!("no entry: {obj}"));
    assert_eq!(e["apiVersion"], "apps/v1");
    assert_eq!(e["time"], T0);
    assert_eq!(e["fieldsType"], "FieldsV1");
    assert!(e.get("subresource").is_none());
    let f = &e["fieldsV1"];
    assert_eq!(f["f:metadata"]["f:labels"]["f:app"], json!({}));
    assert!(f["f:metadata"].get("f:name").is_none());
    let container = &f["f:spec"]["f:template"]["f:spec"]["f:containers"]["k:{\"name\":\"web\"}"];
    assert_eq!(container["."], json!({}));
    assert_eq!(container["f:image"], json!({}));
    assert_eq!(obj["metadata"]["managedFields"].as_array().map(Vec::len), Some(1));
}

#[test]
fn reapplying_without_a_label_removes_it() {
    let first = apply_ok(None, &deploy(2, json!({"app": "web", "tier": "front"}), "busybox"), "kubectl", false, T0);
    assert_eq!(first["metadata"]["labels"]["tier"], "front");
    let second = apply_ok(Some(&first), &deploy(2, json!({"app": "web"}), "busybox"), "kubectl", false, T1);
    assert!(second["metadata"]["labels"].get("tier").is_none(), "{second}");
    assert_eq!(second["metadata"]["labels"]["app"], "web");
    assert!(!owns(&second, "kubectl", "Apply", ".metadata.labels.tier"));
}

#[test]
fn reapplying_the_same_config_keeps_the_time() {
    let first = apply_ok(None, &deploy(2, json!({"app": "web"}), "busybox"), "kubectl", false, T0);
    let second = apply_ok(Some(&first), &deploy(2, json!({"app": "web"}), "busybox"), "kubectl", false, T1);
    assert_eq!(first, second);
}

#[test]
fn two_managers_with_different_values_conflict() {
    let first = apply_ok(None, &deploy(2, json!({"app": "web"}), "busybox"), "alice", false, T0);
    let conflicts = conflicts_of(apply(Some(&first), &deploy(3, json!({"app": "web"}), "busybox"), "bob", false, &deployment(), T1));
    assert_eq!(conflicts.len(), 1, "{conflicts:?}");
    assert_eq!(conflicts[0].field, ".spec.replicas");
    assert_eq!(conflicts[0].manager, "alice");
    assert_eq!(conflicts[0].cause_message(), "conflict with \"alice\"");
    assert_eq!(
        ApplyError::Conflicts(conflicts).to_string(),
        "Apply failed with 1 conflict: conflict with \"alice\": .spec.replicas"
    );
}

#[test]
fn force_takes_ownership() {
    let first = apply_ok(None, &deploy(2, json!({"app": "web"}), "busybox"), "alice", false, T0);
    let forced = apply_ok(Some(&first), &deploy(3, json!({"app": "web"}), "busybox"), "bob", true, T1);
    assert_eq!(forced["spec"]["replicas"], 3);
    assert!(owns(&forced, "bob", "Apply", ".spec.replicas"));
    assert!(!owns(&forced, "alice", "Apply", ".spec.replicas"));
    // Alice still shares the fields both set to the same value.
    assert!(owns(&forced, "alice", "Apply", ".metadata.labels.app"));
    // Alice re-applying her old value now conflicts with bob.
    let c = conflicts_of(apply(Some(&forced), &deploy(2, json!({"app": "web"}), "busybox"), "alice", false, &deployment(), T2));
    assert_eq!(c[0].manager, "bob");
}

#[test]
fn same_value_is_shared_and_survives_one_manager_dropping_it() {
    let first = apply_ok(None, &deploy(2, json!({"app": "web", "team": "a"}), "busybox"), "alice", false, T0);
    let shared = apply_ok(Some(&first), &json!({"apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web", "labels": {"team": "a"}}}), "bob", false, T1);
    assert!(owns(&shared, "alice", "Apply", ".metadata.labels.team"));
    assert!(owns(&shared, "bob", "Apply", ".metadata.labels.team"));
    // Alice drops the label: bob still owns it, so it stays.
    let dropped = apply_ok(Some(&shared), &deploy(2, json!({"app": "web"}), "busybox"), "alice", false, T2);
    assert_eq!(dropped["metadata"]["labels"]["team"], "a");
    assert!(!owns(&dropped, "alice", "Apply", ".metadata.labels.team"));
    // Bob's own set is unchanged; bob's config omits replicas, which stays with alice.
    assert_eq!(dropped["spec"]["replicas"], 2);
}

#[test]
fn an_update_then_reapply_conflicts_on_the_updated_field() {
    let applied = deploy(2, json!({"app": "web"}), "busybox:1.36");
    let first = apply_ok(None, &applied, "kubectl", false, T0);
    // kubectl edit changes the image.
    let mut edited = first.clone();
    edited["spec"]["template"]["spec"]["containers"][0]["image"] = json!("busybox:1.37");
    let after_edit = update(Some(&first), &edited, "kubectl-edit", &deployment(), T1);
    let image = ".spec.template.spec.containers[name=\"web\"].image";
    assert!(owns(&after_edit, "kubectl-edit", "Update", image));
    assert!(!owns(&after_edit, "kubectl", "Apply", image));
    assert!(owns(&after_edit, "kubectl", "Apply", ".spec.replicas"));
    // Re-applying a different image conflicts with the editor.
    let reapplied = deploy(2, json!({"app": "web"}), "busybox:1.38");
    let c = conflicts_of(apply(Some(&after_edit), &reapplied, "kubectl", false, &deployment(), T2));
    assert_eq!(c.len(), 1, "{c:?}");
    assert_eq!(c[0].field, image);
    assert_eq!(
        ApplyError::Conflicts(c).to_string(),
        format!("Apply failed with 1 conflict: conflict with \"kubectl-edit\" using apps/v1: {image}")
    );
    // The editor's value, re-applied, is shared, not a conflict.
    let same = apply_ok(Some(&after_edit), &deploy(2, json!({"app": "web"}), "busybox:1.37"), "kubectl", false, T2);
    assert!(owns(&same, "kubectl", "Apply", image) && owns(&same, "kubectl-edit", "Update", image));
}

#[test]
fn several_conflicts_are_listed_by_manager() {
    let first = apply_ok(None, &deploy(2, json!({"app": "web"}), "a:1"), "alice", false, T0);
    let c = conflicts_of(apply(Some(&first), &deploy(3, json!({"app": "web"}), "a:2"), "bob", false, &deployment(), T1));
    let msg = ApplyError::Conflicts(c).to_string();
    assert_eq!(
        msg,
        "Apply failed with 2 conflicts: conflicts with \"alice\":\n- .spec.replicas\n- .spec.template.spec.containers[name=\"web\"].image"
    );
}

#[test]
fn scale_subresource_manager_is_named_with_its_subresource() {
    let first = apply_ok(None, &deploy(2, json!({"app": "web"}), "busybox"), "kubectl", false, T0);
    let mut scaled = first.clone();
    scaled["spec"]["replicas"] = json!(5);
    let scaled = update_subresource(Some(&first), &scaled, "kubectl", "scale", &deployment(), T1);
    let c = conflicts_of(apply(Some(&scaled), &deploy(3, json!({"app": "web"}), "busybox"), "kubectl", false, &deployment(), T2));
    assert_eq!(c[0].cause_message(), "conflict with \"kubectl\" with subresource \"scale\" using apps/v1");
    let forced = apply_ok(Some(&scaled), &deploy(3, json!({"app": "web"}), "busybox"), "kubectl", true, T2);
    assert_eq!(forced["spec"]["replicas"], 3);
    // The scaler owned nothing else: its entry is gone.
    assert_eq!(forced["metadata"]["managedFields"].as_array().map(Vec::len), Some(1), "{forced}");
}

#[test]
fn create_owns_everything_with_maps_as_members() {
    let obj = deploy(2, json!({"app": "web"}), "busybox");
    let created = update(None, &obj, "kubectl-create", &deployment(), T0);
    let e = entry(&created, "kubectl-create", "Update").unwrap_or_else(|| panic!("{created}"));
    assert_eq!(e["fieldsV1"]["f:metadata"]["f:labels"]["."], json!({}));
    assert!(owns(&created, "kubectl-create", "Update", ".spec.replicas"));
    // A write that changes nothing records nothing.
    let again = update(Some(&created), &created, "other", &deployment(), T1);
    assert_eq!(again, created);
    let mut without = created.clone();
    if let Some(m) = without["metadata"].as_object_mut() {
        m.shift_remove("managedFields");
    }
    assert_eq!(update(Some(&created), &without, "other", &deployment(), T1), created);
}

#[test]
fn an_update_removing_a_field_removes_it_from_every_set() {
    let first = apply_ok(None, &deploy(2, json!({"app": "web", "tier": "x"}), "busybox"), "kubectl", false, T0);
    let mut edited = first.clone();
    if let Some(l) = edited["metadata"]["labels"].as_object_mut() {
        l.shift_remove("tier");
    }
    let out = update(Some(&first), &edited, "kubectl-label", &deployment(), T1);
    assert!(!owns(&out, "kubectl", "Apply", ".metadata.labels.tier"));
    assert!(owns(&out, "kubectl", "Apply", ".metadata.labels.app"));
    assert!(entry(&out, "kubectl-label", "Update").is_none());
}

#[test]
fn applying_a_keyed_element_without_its_key_is_an_error() {
    let mut applied = deploy(2, json!({"app": "web"}), "busybox");
    applied["spec"]["template"]["spec"]["containers"] = json!([{"image": "x"}]);
    assert!(matches!(apply(None, &applied, "m", false, &deployment(), T0), Err(ApplyError::MissingKey { .. })));
    assert!(matches!(apply(None, &json!([1]), "m", false, &deployment(), T0), Err(ApplyError::NotAnObject)));
}

#[test]
fn dropping_a_container_removes_it_and_keeps_status() {
    let mut two = deploy(2, json!({"app": "web"}), "busybox");
    two["spec"]["template"]["spec"]["containers"]
        .as_array_mut()
        .unwrap_or_else(|| panic!())
        .push(json!({"name": "side", "image": "busybox"}));
    let mut first = apply_ok(None, &two, "kubectl", false, T0);
    first["status"] = json!({"replicas": 2});
    let second = apply_ok(Some(&first), &deploy(2, json!({"app": "web"}), "busybox"), "kubectl", false, T1);
    let names: Vec<&Value> = second["spec"]["template"]["spec"]["containers"].as_array().map(|a| a.iter().map(|c| &c["name"]).collect()).unwrap_or_default();
    assert_eq!(names, vec![&json!("web")]);
    assert_eq!(second["status"]["replicas"], 2);
}

#[test]
fn managed_fields_json_round_trips() {
    let obj = apply_ok(None, &deploy(2, json!({"app": "web"}), "busybox"), "kubectl", false, T0);
    let entries = decode_managed_fields(&obj);
    let mut again = obj.clone();
    encode_managed_fields(&mut again, entries);
    assert_eq!(again, obj);
}

#[test]
fn manager_from_the_user_agent() {
    assert_eq!(manager_from_user_agent("kubectl/v1.32.0 (linux/amd64) kubernetes/abc"), "kubectl");
    assert_eq!(manager_from_user_agent("python-requests/2.31"), "python-requests");
    assert_eq!(manager_from_user_agent(""), "");
}

#[test]
fn reapply_after_owning_whole_maps_keeps_what_is_still_applied() {
    // After kubectl's client-side-apply migration the Apply entry owns `.spec` and
    // `.metadata` themselves, and defaulted fields.
    let svc = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
        "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]}});
    let meta = BuiltinPatchMeta::for_kind("", "Service");
    let mut current = svc.clone();
    current["spec"]["type"] = json!("ClusterIP");
    current["spec"]["ports"][0]["protocol"] = json!("TCP");
    let migrated = update(None, &current, "kubectl", &meta, T0);
    let mut migrated = migrated;
    migrated["metadata"]["managedFields"][0]["operation"] = json!("Apply");
    let out = apply(Some(&migrated), &svc, "kubectl", false, &meta, T1).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(out["spec"]["ports"][0]["port"], 80, "{out}");
    assert_eq!(out["spec"]["selector"]["app"], "web", "{out}");
    assert!(out["spec"].get("type").is_none(), "{out}");
}
