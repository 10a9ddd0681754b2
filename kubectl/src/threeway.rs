//! Client-side apply's patch: the three-way strategic merge patch between the last
//! applied configuration (`original`), the new configuration (`modified`) and the live
//! object (`current`). Changes and additions come from `current → modified`, deletions
//! from `original → modified`, so fields other writers set are left alone. Lists the
//! schema merges (containers by `name`, ports by `containerPort`…) are diffed element by
//! element, with `$patch: delete` for removed elements and `$setElementOrder` for order.

use apimachinery::patch::{PatchMeta, PatchStrategy};
use serde_json::{json, Map, Value};

#[derive(Clone, Copy)]
struct Mode {
    changes: bool,
    deletions: bool,
}

/// The patch taking `current` to `modified`, deleting what `original` had and
/// `modified` dropped. `{}` when nothing is to change.
pub fn three_way(
    original: Option<&Value>,
    modified: &Value,
    current: &Value,
    meta: &dyn PatchMeta,
) -> Value {
    let empty = Map::new();
    let m = modified.as_object().unwrap_or(&empty);
    let c = current.as_object().unwrap_or(&empty);
    let mut path = Vec::new();
    let delta = diff_maps(
        c,
        m,
        meta,
        &mut path,
        Mode {
            changes: true,
            deletions: false,
        },
    );
    let deletions = match original.and_then(Value::as_object) {
        Some(o) => diff_maps(
            o,
            m,
            meta,
            &mut path,
            Mode {
                changes: false,
                deletions: true,
            },
        ),
        None => Map::new(),
    };
    Value::Object(merge(deletions, delta))
}

/// The two-way patch from `from` to `to` (edit, label): changes, additions, deletions.
pub fn two_way(from: &Value, to: &Value, meta: &dyn PatchMeta) -> Value {
    let empty = Map::new();
    let f = from.as_object().unwrap_or(&empty);
    let t = to.as_object().unwrap_or(&empty);
    Value::Object(diff_maps(
        f,
        t,
        meta,
        &mut Vec::new(),
        Mode {
            changes: true,
            deletions: true,
        },
    ))
}

fn diff_maps(
    from: &Map<String, Value>,
    to: &Map<String, Value>,
    meta: &dyn PatchMeta,
    path: &mut Vec<String>,
    mode: Mode,
) -> Map<String, Value> {
    let mut out = Map::new();
    for (k, tv) in to {
        match from.get(k) {
            None => {
                if mode.changes {
                    out.insert(k.clone(), tv.clone());
                }
            }
            Some(fv) => {
                path.push(k.clone());
                match (fv, tv) {
                    (Value::Object(fm), Value::Object(tm)) => {
                        let d = diff_maps(fm, tm, meta, path, mode);
                        if !d.is_empty() {
                            out.insert(k.clone(), Value::Object(d));
                        }
                    }
                    (Value::Array(fa), Value::Array(ta)) => {
                        diff_lists(k, fa, ta, meta, path, mode, &mut out);
                    }
                    _ => {
                        if mode.changes && fv != tv {
                            out.insert(k.clone(), tv.clone());
                        }
                    }
                }
                path.pop();
            }
        }
    }
    if mode.deletions {
        for k in from.keys() {
            if !to.contains_key(k) {
                out.insert(k.clone(), Value::Null);
            }
        }
    }
    out
}

fn diff_lists(
    key: &str,
    from: &[Value],
    to: &[Value],
    meta: &dyn PatchMeta,
    path: &mut Vec<String>,
    mode: Mode,
    out: &mut Map<String, Value>,
) {
    let p: Vec<&str> = path.iter().map(String::as_str).collect();
    let fm = meta.lookup(&p);
    if fm.strategy != Some(PatchStrategy::Merge) {
        if mode.changes && from != to {
            out.insert(key.to_string(), Value::Array(to.to_vec()));
        }
        return;
    }
    match &fm.merge_key {
        Some(mk) => {
            let key_of = |v: &Value| v.get(mk).cloned();
            let mut items = Vec::new();
            if mode.changes {
                for t in to {
                    let Some(tk) = key_of(t) else {
                        items.push(t.clone());
                        continue;
                    };
                    match from.iter().find(|f| key_of(f).as_ref() == Some(&tk)) {
                        None => items.push(t.clone()),
                        Some(f) => {
                            if let (Value::Object(fo), Value::Object(to_)) = (f, t) {
                                let d = diff_maps(fo, to_, meta, path, mode);
                                if !d.is_empty() {
                                    let mut d2 = Map::new();
                                    d2.insert(mk.clone(), tk.clone());
                                    d2.extend(d);
                                    items.push(Value::Object(d2));
                                }
                            }
                        }
                    }
                }
            } else {
                for t in to {
                    if let (Some(tk), Value::Object(to_)) = (key_of(t), t) {
                        if let Some(Value::Object(fo)) =
                            from.iter().find(|f| key_of(f).as_ref() == Some(&tk))
                        {
                            let d = diff_maps(fo, to_, meta, path, mode);
                            if !d.is_empty() {
                                let mut d2 = Map::new();
                                d2.insert(mk.clone(), tk.clone());
                                d2.extend(d);
                                items.push(Value::Object(d2));
                            }
                        }
                    }
                }
            }
            if mode.deletions {
                for f in from {
                    if let Some(fk) = key_of(f) {
                        if !to.iter().any(|t| key_of(t).as_ref() == Some(&fk)) {
                            items.push(json!({ mk.clone(): fk, "$patch": "delete" }));
                        }
                    }
                }
            }
            let order: Vec<Value> = to
                .iter()
                .filter_map(|t| key_of(t).map(|k| json!({ mk.clone(): k })))
                .collect();
            let from_order: Vec<Value> = from
                .iter()
                .filter_map(|f| key_of(f).map(|k| json!({ mk.clone(): k })))
                .collect();
            if !items.is_empty() || (mode.changes && mode.deletions && order != from_order) {
                if mode.changes {
                    out.insert(format!("$setElementOrder/{key}"), Value::Array(order));
                }
                if !items.is_empty() {
                    out.insert(key.to_string(), Value::Array(items));
                }
            }
        }
        None => {
            if mode.changes {
                let added: Vec<Value> = to.iter().filter(|t| !from.contains(t)).cloned().collect();
                if !added.is_empty() {
                    out.insert(format!("$setElementOrder/{key}"), Value::Array(to.to_vec()));
                    out.insert(key.to_string(), Value::Array(added));
                }
            }
            if mode.deletions {
                let removed: Vec<Value> =
                    from.iter().filter(|f| !to.contains(f)).cloned().collect();
                if !removed.is_empty() {
                    out.insert(
                        format!("$deleteFromPrimitiveList/{key}"),
                        Value::Array(removed),
                    );
                }
            }
        }
    }
}

/// Merges two patches (the second wins; lists of patch elements are concatenated).
fn merge(mut a: Map<String, Value>, b: Map<String, Value>) -> Map<String, Value> {
    for (k, bv) in b {
        match (a.remove(&k), bv) {
            (Some(Value::Object(am)), Value::Object(bm)) => {
                a.insert(k, Value::Object(merge(am, bm)));
            }
            (Some(Value::Array(mut aa)), Value::Array(ba)) if !k.starts_with('$') => {
                for v in ba {
                    if !aa.contains(&v) {
                        aa.push(v);
                    }
                }
                a.insert(k, Value::Array(aa));
            }
            (_, bv) => {
                a.insert(k, bv);
            }
        }
    }
    a
}

/// A schema in which every list is atomic (JSON merge patch semantics).
pub struct Atomic;

impl PatchMeta for Atomic {
    fn lookup(&self, _path: &[&str]) -> apimachinery::patch::FieldPatchMeta {
        Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use apimachinery::patch::BuiltinPatchMeta;

    #[test]
    fn three_way_keeps_other_writers_fields_and_deletes_dropped_ones() {
        let meta = BuiltinPatchMeta::for_kind("apps", "Deployment");
        let original = json!({"spec": {"replicas": 2, "paused": false, "template": {"spec": {"containers": [{"name": "a", "image": "x"}, {"name": "b", "image": "y"}]}}}});
        let modified = json!({"spec": {"replicas": 3, "template": {"spec": {"containers": [{"name": "a", "image": "x2"}]}}}});
        let current = json!({"spec": {"replicas": 2, "paused": false, "revisionHistoryLimit": 10, "template": {"spec": {"containers": [{"name": "a", "image": "x", "imagePullPolicy": "Always"}, {"name": "b", "image": "y"}]}}}});
        let patch = three_way(Some(&original), &modified, &current, &meta);
        assert_eq!(
            patch,
            json!({"spec": {"paused": null, "replicas": 3, "template": {"spec": {
                "containers": [{"name": "b", "$patch": "delete"}, {"name": "a", "image": "x2"}],
                "$setElementOrder/containers": [{"name": "a"}]}}}})
        );
        let merged = apimachinery::patch::strategic_merge_patch(&current, &patch, &meta)
            .expect("patch applies");
        assert_eq!(
            merged,
            json!({"spec": {"replicas": 3, "revisionHistoryLimit": 10, "template": {"spec": {"containers": [{"name": "a", "image": "x2", "imagePullPolicy": "Always"}]}}}})
        );
        assert_eq!(
            three_way(Some(&modified), &modified, &merged, &meta),
            json!({})
        );
    }

    #[test]
    fn two_way_sees_deletions() {
        let meta = Atomic;
        let p = two_way(
            &json!({"metadata": {"labels": {"a": "1", "b": "2"}}}),
            &json!({"metadata": {"labels": {"a": "1", "c": "3"}}}),
            &meta,
        );
        assert_eq!(p, json!({"metadata": {"labels": {"c": "3", "b": null}}}));
    }
}
