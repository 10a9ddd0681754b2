//! Tests modelled on Kubernetes' strategic merge patch test cases.

use super::*;
use serde_json::json;

fn deployment() -> BuiltinPatchMeta {
    BuiltinPatchMeta::for_kind("apps", "Deployment")
}

fn pod() -> BuiltinPatchMeta {
    BuiltinPatchMeta::for_kind("", "Pod")
}

fn smp(doc: Value, patch: Value, schema: &dyn PatchMeta) -> Value {
    strategic_merge_patch(&doc, &patch, schema).unwrap_or_else(|e| panic!("{e}"))
}

fn deploy_with(containers: Value) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web", "labels": {"app": "web", "tier": "front"}},
        "spec": {"replicas": 1, "template": {"spec": {"containers": containers}}}
    })
}

#[test]
fn change_one_container_image_keeps_the_others() {
    let doc = deploy_with(json!([
        {"name": "nginx", "image": "nginx:1.25", "ports": [{"containerPort": 80}]},
        {"name": "sidecar", "image": "busybox", "args": ["sleep", "1d"]}
    ]));
    let patch = json!({"spec": {"template": {"spec": {"containers": [
        {"name": "nginx", "image": "nginx:1.27"}
    ]}}}});
    let out = smp(doc, patch, &deployment());
    assert_eq!(
        out["spec"]["template"]["spec"]["containers"],
        json!([
            {"name": "nginx", "image": "nginx:1.27", "ports": [{"containerPort": 80}]},
            {"name": "sidecar", "image": "busybox", "args": ["sleep", "1d"]}
        ])
    );
    assert_eq!(out["spec"]["replicas"], json!(1));
}

#[test]
fn add_container_appends() {
    let doc = deploy_with(json!([{"name": "a", "image": "x"}]));
    let patch = json!({"spec": {"template": {"spec": {"containers": [
        {"name": "b", "image": "y", "env": null}
    ]}}}});
    let out = smp(doc, patch, &deployment());
    // Without $setElementOrder, Kubernetes puts patch items before server-only items.
    assert_eq!(
        out["spec"]["template"]["spec"]["containers"],
        json!([{"name": "b", "image": "y"}, {"name": "a", "image": "x"}])
    );
}

#[test]
fn delete_container_with_patch_delete() {
    let doc = deploy_with(json!([
        {"name": "a", "image": "x"}, {"name": "b", "image": "y"}, {"name": "c", "image": "z"}
    ]));
    let patch = json!({"spec": {"template": {"spec": {"containers": [
        {"name": "b", "$patch": "delete"}
    ]}}}});
    let out = smp(doc, patch, &deployment());
    assert_eq!(
        out["spec"]["template"]["spec"]["containers"],
        json!([{"name": "a", "image": "x"}, {"name": "c", "image": "z"}])
    );
}

#[test]
fn replace_list_with_patch_replace() {
    let doc = deploy_with(json!([{"name": "a", "image": "x"}, {"name": "b", "image": "y"}]));
    let patch = json!({"spec": {"template": {"spec": {"containers": [
        {"name": "c", "image": "z"}, {"$patch": "replace"}
    ]}}}});
    let out = smp(doc, patch, &deployment());
    assert_eq!(out["spec"]["template"]["spec"]["containers"], json!([{"name": "c", "image": "z"}]));
}

#[test]
fn replace_and_delete_maps() {
    let doc = json!({"metadata": {"labels": {"a": "1", "b": "2"}, "annotations": {"x": "y"}}});
    let patch = json!({"metadata": {
        "labels": {"$patch": "replace", "c": "3"},
        "annotations": {"$patch": "delete"}
    }});
    let out = smp(doc, patch, &BuiltinPatchMeta::generic());
    assert_eq!(out, json!({"metadata": {"labels": {"c": "3"}, "annotations": {}}}));
}

#[test]
fn set_element_order() {
    // From Kubernetes' "set element order" cases: reorder and add.
    let doc = deploy_with(json!([
        {"name": "a", "image": "1"}, {"name": "b", "image": "2"}, {"name": "c", "image": "3"}
    ]));
    let patch = json!({"spec": {"template": {"spec": {
        "$setElementOrder/containers": [{"name": "c"}, {"name": "d"}, {"name": "a"}, {"name": "b"}],
        "containers": [{"name": "d", "image": "4"}]
    }}}});
    let out = smp(doc, patch, &deployment());
    let names: Vec<&str> = out["spec"]["template"]["spec"]["containers"]
        .as_array()
        .map(|a| a.iter().filter_map(|c| c["name"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(names, ["c", "d", "a", "b"]);
    assert!(out["spec"]["template"]["spec"].get("$setElementOrder/containers").is_none());

    // Scalars: finalizers with a deletion list and an order.
    let doc = json!({"metadata": {"finalizers": ["a", "b", "c"]}});
    let patch = json!({"metadata": {
        "$setElementOrder/finalizers": ["c", "a"],
        "$deleteFromPrimitiveList/finalizers": ["b"]
    }});
    let out = smp(doc, patch, &BuiltinPatchMeta::generic());
    assert_eq!(out, json!({"metadata": {"finalizers": ["c", "a"]}}));
}

#[test]
fn set_element_order_mismatch_is_an_error() {
    let doc = deploy_with(json!([{"name": "a"}, {"name": "b"}]));
    let patch = json!({"spec": {"template": {"spec": {
        "$setElementOrder/containers": [{"name": "a"}],
        "containers": [{"name": "b", "image": "x"}]
    }}}});
    assert!(strategic_merge_patch(&doc, &patch, &deployment()).is_err());
}

#[test]
fn merge_env_by_name() {
    let doc = deploy_with(json!([{"name": "app", "env": [
        {"name": "A", "value": "1"}, {"name": "B", "value": "2"}
    ]}]));
    let patch = json!({"spec": {"template": {"spec": {"containers": [{"name": "app", "env": [
        {"name": "B", "value": "20"}, {"name": "C", "value": "3"}, {"name": "A", "$patch": "delete"}
    ]}]}}}});
    let out = smp(doc, patch, &deployment());
    assert_eq!(
        out["spec"]["template"]["spec"]["containers"][0]["env"],
        json!([{"name": "B", "value": "20"}, {"name": "C", "value": "3"}])
    );
}

#[test]
fn null_deletes_a_label() {
    let doc = deploy_with(json!([]));
    let patch = json!({"metadata": {"labels": {"tier": null, "new": "x"}}});
    let out = smp(doc, patch, &deployment());
    assert_eq!(out["metadata"]["labels"], json!({"app": "web", "new": "x"}));
}

#[test]
fn unmarked_lists_are_replaced() {
    let doc = deploy_with(json!([{"name": "a", "args": ["1", "2"]}]));
    let patch = json!({"spec": {"template": {"spec": {"containers": [{"name": "a", "args": ["3"]}]}}}});
    let out = smp(doc, patch, &deployment());
    assert_eq!(out["spec"]["template"]["spec"]["containers"][0]["args"], json!(["3"]));
}

#[test]
fn finalizers_merge_as_a_set_and_owner_references_by_uid() {
    let doc = json!({"metadata": {
        "finalizers": ["a", "b"],
        "ownerReferences": [{"uid": "1", "name": "x"}, {"uid": "2", "name": "y"}]
    }});
    let patch = json!({"metadata": {
        "finalizers": ["b", "c"],
        "ownerReferences": [{"uid": "2", "name": "z"}]
    }});
    let out = smp(doc, patch, &BuiltinPatchMeta::generic());
    assert_eq!(out["metadata"]["finalizers"], json!(["a", "b", "c"]));
    assert_eq!(
        out["metadata"]["ownerReferences"],
        json!([{"uid": "1", "name": "x"}, {"uid": "2", "name": "z"}])
    );
}

#[test]
fn retain_keys_on_deployment_strategy() {
    let doc = json!({"spec": {"strategy": {
        "type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1}
    }}});
    let patch = json!({"spec": {"strategy": {"$retainKeys": ["type"], "type": "Recreate"}}});
    let out = smp(doc, patch, &deployment());
    assert_eq!(out, json!({"spec": {"strategy": {"type": "Recreate"}}}));
    let bad = json!({"spec": {"strategy": {"$retainKeys": ["type"], "rollingUpdate": {}}}});
    let doc = json!({"spec": {"strategy": {"type": "Recreate"}}});
    let err = strategic_merge_patch(&doc, &bad, &deployment());
    assert_eq!(err, Err(PatchError::BadPatchFormatForRetainKeys));
}

#[test]
fn pod_volumes_with_retain_keys() {
    let doc = json!({"spec": {"volumes": [
        {"name": "data", "emptyDir": {}}, {"name": "cfg", "configMap": {"name": "c"}}
    ]}});
    let patch = json!({"spec": {"volumes": [
        {"name": "data", "$retainKeys": ["name", "hostPath"], "hostPath": {"path": "/d"}}
    ]}});
    let out = smp(doc, patch, &pod());
    assert_eq!(
        out["spec"]["volumes"],
        json!([{"name": "data", "hostPath": {"path": "/d"}}, {"name": "cfg", "configMap": {"name": "c"}}])
    );
}

#[test]
fn service_ports_and_conditions() {
    let svc = BuiltinPatchMeta::for_kind("", "Service");
    let doc = json!({"spec": {"ports": [{"port": 80, "targetPort": 8080}, {"port": 443}]}});
    let patch = json!({"spec": {"ports": [{"port": 80, "targetPort": 9090}]}});
    let out = smp(doc, patch, &svc);
    assert_eq!(out["spec"]["ports"], json!([{"port": 80, "targetPort": 9090}, {"port": 443}]));

    let doc = json!({"status": {"conditions": [
        {"type": "Ready", "status": "False"}, {"type": "PodScheduled", "status": "True"}
    ]}});
    let patch = json!({"status": {"conditions": [{"type": "Ready", "status": "True"}]}});
    let out = smp(doc, patch, &pod());
    assert_eq!(
        out["status"]["conditions"],
        json!([{"type": "Ready", "status": "True"}, {"type": "PodScheduled", "status": "True"}])
    );
}

#[test]
fn errors() {
    let doc = deploy_with(json!([{"name": "a"}]));
    let no_key = json!({"spec": {"template": {"spec": {"containers": [{"image": "x"}]}}}});
    let e = strategic_merge_patch(&doc, &no_key, &deployment());
    assert!(matches!(e, Err(PatchError::NoMergeKey { .. })), "{e:?}");
    let bad_directive = json!({"metadata": {"labels": {"$patch": "explode"}}});
    let e = strategic_merge_patch(&doc, &bad_directive, &deployment());
    assert!(matches!(e, Err(PatchError::BadPatchType { .. })), "{e:?}");
    let lists = json!({"metadata": {"finalizers": [["a"]]}});
    let e = strategic_merge_patch(&json!({"metadata": {"finalizers": []}}), &lists, &deployment());
    assert_eq!(e, Err(PatchError::NoListOfLists));
    assert_eq!(
        strategic_merge_patch(&doc, &json!([1]), &deployment()),
        Err(PatchError::BadJsonDoc)
    );
    assert_eq!(PatchError::BadJsonDoc.http_status(), 400);
}

#[test]
fn cronjob_and_node_tables() {
    let cj = BuiltinPatchMeta::for_kind("batch", "CronJob");
    assert_eq!(
        cj.lookup(&["spec", "jobTemplate", "spec", "template", "spec", "containers", "env"]),
        FieldPatchMeta::merge_by("name")
    );
    let node = BuiltinPatchMeta::for_kind("", "Node");
    assert_eq!(node.lookup(&["status", "addresses"]), FieldPatchMeta::merge_by("type"));
    assert_eq!(node.lookup(&["spec", "taints"]), FieldPatchMeta::default());
    assert_eq!(
        deployment().lookup(&["spec", "template", "metadata", "finalizers"]),
        FieldPatchMeta::merge_set()
    );
    assert!(!BuiltinPatchMeta::is_builtin_group("example.com"));
    assert!(BuiltinPatchMeta::is_builtin_group("apps"));
    assert_eq!(BuiltinPatchMeta::for_kind("", "ConfigMap"), BuiltinPatchMeta::generic());
}

#[test]
fn json_patch_and_merge_patch() {
    let doc = json!({"a": {"b": 1}, "l": [1, 2]});
    let out = json_patch(&doc, &json!([
        {"op": "replace", "path": "/a/b", "value": 2},
        {"op": "add", "path": "/l/-", "value": 3},
        {"op": "test", "path": "/a/b", "value": 2}
    ]));
    assert_eq!(out, Ok(json!({"a": {"b": 2}, "l": [1, 2, 3]})));
    let e = json_patch(&doc, &json!([{"op": "remove", "path": "/nope"}]));
    assert!(matches!(e, Err(PatchError::JsonPatchFailed(_))));
    assert!(matches!(json_patch(&doc, &json!({"op": "x"})), Err(PatchError::InvalidJsonPatch(_))));

    let out = merge_patch(&doc, &json!({"a": {"b": null, "c": 1}, "l": [9]}));
    assert_eq!(out, Ok(json!({"a": {"c": 1}, "l": [9]})));
    assert_eq!(merge_patch(&doc, &json!([1])), Err(PatchError::BadJsonDoc));
}

#[test]
fn kubernetes_add_item_and_preserve_order() {
    // "add an item in a list and preserve order" (three-way patch applied to current).
    let schema = |path: &[&str]| match path {
        ["mergingList"] => FieldPatchMeta::merge_by("name"),
        _ => FieldPatchMeta::default(),
    };
    let current = json!({"mergingList": [
        {"name": 1, "other": "a"}, {"name": 2, "value": 2, "other": "b"}
    ]});
    let patch = json!({
        "$setElementOrder/mergingList": [{"name": 3}, {"name": 1}, {"name": 2}],
        "mergingList": [{"name": 3, "value": 3}]
    });
    let out = smp(current, patch, &FnMeta(schema));
    assert_eq!(out, json!({"mergingList": [
        {"name": 3, "value": 3}, {"name": 1, "other": "a"}, {"name": 2, "value": 2, "other": "b"}
    ]}));

    // "set elements order in a list with server-only items".
    let current = json!({"mergingList": [
        {"name": 1, "other": "a"}, {"name": 3, "value": 3}, {"name": 4, "value": 4},
        {"name": 2, "value": 2}, {"name": 9}
    ]});
    let patch = json!({"$setElementOrder/mergingList": [
        {"name": 4}, {"name": 2}, {"name": 3}, {"name": 1}
    ]});
    let out = smp(current, patch, &FnMeta(schema));
    assert_eq!(out, json!({"mergingList": [
        {"name": 4, "value": 4}, {"name": 2, "value": 2}, {"name": 3, "value": 3},
        {"name": 1, "other": "a"}, {"name": 9}
    ]}));
}

struct FnMeta<F>(F);

impl<F: Fn(&[&str]) -> FieldPatchMeta> PatchMeta for FnMeta<F> {
    fn lookup(&self, path: &[&str]) -> FieldPatchMeta {
        (self.0)(path)
    }
}

#[test]
fn set_element_order_with_delete_places_server_only_items_like_kubernetes() {
    // kubectl apply removing item 1 and adding item 3 while item 4 exists only on the
    // server: Kubernetes yields [2, 4, 3] (its in-place list edits decide where 4 goes).
    let schema = |path: &[&str]| match path {
        ["mergingList"] => FieldPatchMeta::merge_by("name"),
        _ => FieldPatchMeta::default(),
    };
    let current = json!({"mergingList": [
        {"name": 1}, {"name": 2, "other": "b"}, {"name": 4, "other": "c"}
    ]});
    let patch = json!({
        "$setElementOrder/mergingList": [{"name": 2}, {"name": 3}],
        "mergingList": [{"name": 3}, {"name": 1, "$patch": "delete"}]
    });
    let out = smp(current, patch, &FnMeta(schema));
    assert_eq!(out, json!({"mergingList": [
        {"name": 2, "other": "b"}, {"name": 4, "other": "c"}, {"name": 3}
    ]}));
}

#[test]
fn hpa_and_pdb_conditions_merge_by_type_and_a_pdb_selector_is_replaced() {
    let hpa = BuiltinPatchMeta::for_kind("autoscaling", "HorizontalPodAutoscaler");
    let doc = json!({"status": {"conditions": [{"type": "AbleToScale", "status": "True"}, {"type": "ScalingActive", "status": "True"}]}});
    let patch = json!({"status": {"conditions": [{"type": "ScalingActive", "status": "False"}]}});
    let out = strategic_merge_patch(&doc, &patch, &hpa).expect("patch");
    assert_eq!(out["status"]["conditions"], json!([{"type": "AbleToScale", "status": "True"}, {"type": "ScalingActive", "status": "False"}]));

    let pdb = BuiltinPatchMeta::for_kind("policy", "PodDisruptionBudget");
    let doc = json!({"spec": {"selector": {"matchLabels": {"app": "a", "tier": "web"}}}, "status": {"conditions": [{"type": "DisruptionAllowed", "status": "True"}]}});
    let patch = json!({"spec": {"selector": {"matchLabels": {"app": "b"}}}, "status": {"conditions": [{"type": "Other", "status": "True"}]}});
    let out = strategic_merge_patch(&doc, &patch, &pdb).expect("patch");
    assert_eq!(out["spec"]["selector"], json!({"matchLabels": {"app": "b"}}), "replaced, not merged");
    assert_eq!(out["status"]["conditions"].as_array().map(Vec::len), Some(2));
}
