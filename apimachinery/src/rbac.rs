//! RBAC helpers shared by the apiserver (bootstrap policy, authorizer) and the
//! controller-manager (the `clusterrole-aggregation` controller): the normal form of a
//! `PolicyRule` and ClusterRole aggregation, with the semantics of Kubernetes'
//! `pkg/controller/clusterroleaggregation`, all on `serde_json::Value`.
//!
//! Aggregation: a ClusterRole with an `aggregationRule` gets as its `rules` the union of
//! the rules of every *other* ClusterRole whose labels match any of its
//! `clusterRoleSelectors`. The order is Kubernetes': selector by selector, the matching
//! roles sorted by name, each role's rules in order, a rule left out when a semantically
//! equal one is already there.

use serde_json::{Map, Value};

use crate::labels::{LabelSelectorError, Selector};

/// The label that aggregates a ClusterRole into `admin`.
pub const AGGREGATE_TO_ADMIN: &str = "rbac.authorization.k8s.io/aggregate-to-admin";
/// The label that aggregates a ClusterRole into `edit`.
pub const AGGREGATE_TO_EDIT: &str = "rbac.authorization.k8s.io/aggregate-to-edit";
/// The label that aggregates a ClusterRole into `view`.
pub const AGGREGATE_TO_VIEW: &str = "rbac.authorization.k8s.io/aggregate-to-view";

/// The string lists of a `PolicyRule`, in the order its normal form writes them.
const RULE_LISTS: [&str; 5] = ["verbs", "apiGroups", "resources", "resourceNames", "nonResourceURLs"];

/// Why a ClusterRole's aggregation could not be computed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AggregationError {
    /// `aggregationRule` is not an object, or its `clusterRoleSelectors` is not a list.
    #[error("ClusterRole {role:?}: aggregationRule must be an object with a clusterRoleSelectors list")]
    MalformedRule {
        /// The aggregating ClusterRole.
        role: String,
    },
    /// One of the `clusterRoleSelectors` is not a valid label selector.
    #[error("ClusterRole {role:?}: aggregationRule.clusterRoleSelectors[{index}] is invalid")]
    Selector {
        /// The aggregating ClusterRole.
        role: String,
        /// The selector's position in the list.
        index: usize,
        /// What is wrong with it.
        #[source]
        source: LabelSelectorError,
    },
}

/// The `metadata.name` of an object ("" when it has none).
fn name_of(obj: &Value) -> &str {
    obj.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default()
}

/// A `PolicyRule` in normal form, as Kubernetes would store it: the string lists in a
/// fixed order, `verbs` always present, the other lists left out when empty or absent,
/// entries that are not strings dropped. Two rules are semantically equal (Kubernetes'
/// `equality.Semantic.DeepEqual`, where an empty list equals a missing one) exactly when
/// their normal forms are equal. `None` when `rule` is not an object.
pub fn normalize_rule(rule: &Value) -> Option<Value> {
    let obj = rule.as_object()?;
    let mut out = Map::new();
    for key in RULE_LISTS {
        let list: Vec<Value> = obj
            .get(key)
            .and_then(Value::as_array)
            .map(|items| items.iter().filter(|v| v.is_string()).cloned().collect())
            .unwrap_or_default();
        if key == "verbs" || !list.is_empty() {
            out.insert(key.to_string(), Value::Array(list));
        }
    }
    Some(Value::Object(out))
}

/// The normal forms of a `rules` list (`null` or absent: none; malformed rules dropped).
pub fn normalize_rules(rules: Option<&Value>) -> Vec<Value> {
    rules.and_then(Value::as_array).map(|rs| rs.iter().filter_map(normalize_rule).collect()).unwrap_or_default()
}

/// The label selectors of a ClusterRole's `aggregationRule`, or `None` when it has none
/// (absent or `null`). A `null` selector matches nothing and `{}` matches every
/// ClusterRole, as `metav1.LabelSelectorAsSelector` has it.
pub fn aggregation_selectors(role: &Value) -> Option<Result<Vec<Selector>, AggregationError>> {
    let rule = role.get("aggregationRule").filter(|r| !r.is_null())?;
    let malformed = || AggregationError::MalformedRule { role: name_of(role).to_string() };
    let Some(obj) = rule.as_object() else { return Some(Err(malformed())) };
    let selectors = match obj.get("clusterRoleSelectors") {
        None | Some(Value::Null) => return Some(Ok(Vec::new())),
        Some(Value::Array(list)) => list,
        Some(_) => return Some(Err(malformed())),
    };
    Some(
        selectors
            .iter()
            .enumerate()
            .map(|(index, s)| {
                Selector::from_label_selector(s).map_err(|source| AggregationError::Selector {
                    role: name_of(role).to_string(),
                    index,
                    source,
                })
            })
            .collect(),
    )
}

/// Whether the aggregating ClusterRole `role` takes the rules of `candidate`: one of its
/// selectors matches `candidate`'s labels and `candidate` is not `role` itself. False
/// when `role` has no (valid) aggregation rule.
pub fn selects(role: &Value, candidate: &Value) -> bool {
    if name_of(role) == name_of(candidate) {
        return false;
    }
    let Some(Ok(selectors)) = aggregation_selectors(role) else { return false };
    let labels = candidate.pointer("/metadata/labels").and_then(Value::as_object);
    selectors.iter().any(|s| s.matches_json(labels))
}

/// The aggregated `rules` of `role` (normal forms, deduplicated, in Kubernetes' order)
/// from the ClusterRoles in `cluster_roles` (which may include `role` itself; it is
/// skipped by name). `None` when `role` has no `aggregationRule`; an error when the rule
/// or one of its selectors is invalid (Kubernetes then leaves the role as it is).
pub fn aggregate_rules<'a>(
    role: &Value,
    cluster_roles: impl IntoIterator<Item = &'a Value>,
) -> Option<Result<Vec<Value>, AggregationError>> {
    let selectors = match aggregation_selectors(role)? {
        Ok(s) => s,
        Err(e) => return Some(Err(e)),
    };
    let own_name = name_of(role);
    let mut others: Vec<&Value> = cluster_roles.into_iter().filter(|r| name_of(r) != own_name).collect();
    others.sort_by(|a, b| name_of(a).cmp(name_of(b)));
    let mut rules: Vec<Value> = Vec::new();
    for selector in &selectors {
        for other in others.iter().filter(|o| selector.matches_json(o.pointer("/metadata/labels").and_then(Value::as_object))) {
            for rule in normalize_rules(other.get("rules")) {
                if !rules.contains(&rule) {
                    rules.push(rule);
                }
            }
        }
    }
    Some(Ok(rules))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn role(name: &str, labels: Value, rules: Value) -> Value {
        json!({"metadata": {"name": name, "labels": labels}, "rules": rules})
    }

    fn aggregating(name: &str, selectors: Value) -> Value {
        json!({"metadata": {"name": name}, "aggregationRule": {"clusterRoleSelectors": selectors}, "rules": []})
    }

    #[test]
    fn normal_form_orders_lists_and_drops_empty_ones() {
        let r = json!({"resources": ["pods"], "apiGroups": [""], "verbs": ["get"], "resourceNames": [], "nonResourceURLs": null});
        let n = normalize_rule(&r).unwrap_or_default();
        assert_eq!(serde_json::to_string(&n).unwrap_or_default(), r#"{"verbs":["get"],"apiGroups":[""],"resources":["pods"]}"#);
        assert_eq!(normalize_rule(&json!({})), Some(json!({"verbs": []})));
        assert_eq!(normalize_rule(&json!("x")), None);
    }

    #[test]
    fn no_aggregation_rule_is_none() {
        assert!(aggregate_rules(&json!({"metadata": {"name": "x"}}), []).is_none());
        assert!(aggregate_rules(&json!({"metadata": {"name": "x"}, "aggregationRule": null}), []).is_none());
    }

    #[test]
    fn union_in_selector_then_name_order_without_duplicates() {
        let get_pods = json!({"verbs": ["get"], "apiGroups": [""], "resources": ["pods"]});
        let list_svc = json!({"verbs": ["list"], "apiGroups": [""], "resources": ["services"]});
        let b = role("b", json!({"agg": "true"}), json!([get_pods, list_svc]));
        let a = role("a", json!({"agg": "true"}), json!([list_svc]));
        let other = role("c", json!({"agg": "false"}), json!([{"verbs": ["*"]}]));
        let extra = role("d", json!({"second": "yes"}), json!([{"verbs": ["watch"], "resources": ["x"], "apiGroups": ["g"]}]));
        let agg = aggregating(
            "agg",
            json!([{"matchLabels": {"agg": "true"}}, {"matchExpressions": [{"key": "second", "operator": "Exists"}]}]),
        );
        let all = [b, a, other, extra, agg.clone()];
        let got = aggregate_rules(&agg, all.iter()).and_then(Result::ok).unwrap_or_default();
        assert_eq!(got, vec![list_svc.clone(), get_pods.clone(), json!({"verbs": ["watch"], "apiGroups": ["g"], "resources": ["x"]})]);
    }

    #[test]
    fn a_role_does_not_aggregate_itself() {
        let agg = json!({"metadata": {"name": "me", "labels": {"x": "y"}}, "aggregationRule": {"clusterRoleSelectors": [{}]}, "rules": [{"verbs": ["get"]}]});
        assert_eq!(aggregate_rules(&agg, [&agg]).and_then(Result::ok), Some(vec![]));
        assert!(!selects(&agg, &agg));
    }

    #[test]
    fn invalid_selector_is_an_error() {
        let agg = aggregating("agg", json!([{"matchExpressions": [{"key": "a", "operator": "Near"}]}]));
        assert!(matches!(aggregate_rules(&agg, []), Some(Err(AggregationError::Selector { index: 0, .. }))));
        let bad = json!({"metadata": {"name": "agg"}, "aggregationRule": []});
        assert!(matches!(aggregate_rules(&bad, []), Some(Err(AggregationError::MalformedRule { .. }))));
    }

    #[test]
    fn selects_by_labels() {
        let agg = aggregating("admin", json!([{"matchLabels": {AGGREGATE_TO_ADMIN: "true"}}]));
        assert!(selects(&agg, &role("edit", json!({AGGREGATE_TO_ADMIN: "true"}), json!([]))));
        assert!(!selects(&agg, &role("view", json!({AGGREGATE_TO_EDIT: "true"}), json!([]))));
        // A null selector matches nothing.
        let none = aggregating("n", json!([null]));
        assert!(!selects(&none, &role("edit", json!({AGGREGATE_TO_ADMIN: "true"}), json!([]))));
    }
}
