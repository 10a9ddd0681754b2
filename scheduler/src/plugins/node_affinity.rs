//! NodeAffinity: a pod's `nodeSelector` and required node affinity (terms ORed,
//! expressions ANDed; In/NotIn/Exists/DoesNotExist/Gt/Lt on labels, `metadata.name` in
//! matchFields) must match the node; preferred terms add their weight to the score.

use k8s_openapi::api::core::v1::{NodeSelectorRequirement, NodeSelectorTerm};

use crate::framework::{default_normalize, Filter, PluginState, Score, Unfit};
use crate::types::{NodeInfo, PodInfo};

pub const NAME: &str = "NodeAffinity";
pub const REASON: &str = "node(s) didn't match Pod's node affinity/selector";

pub struct NodeAffinity;

/// One node selector requirement against a lookup (labels or fields).
fn requirement_matches<'a>(r: &NodeSelectorRequirement, lookup: impl Fn(&str) -> Option<&'a str>) -> bool {
    let values = r.values.as_deref().unwrap_or_default();
    let value = lookup(&r.key);
    match r.operator.as_str() {
        "In" => value.is_some_and(|v| values.iter().any(|x| x == v)),
        "NotIn" => value.is_none_or(|v| !values.iter().any(|x| x == v)),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        "Gt" | "Lt" => {
            let (Some(v), [bound]) = (value.and_then(|v| v.parse::<i64>().ok()), values) else { return false };
            let Ok(bound) = bound.parse::<i64>() else { return false };
            if r.operator == "Gt" { v > bound } else { v < bound }
        }
        _ => false,
    }
}

/// Whether a node selector term matches (an empty term matches nothing).
pub fn term_matches(term: &NodeSelectorTerm, node: &NodeInfo) -> bool {
    let exprs = term.match_expressions.as_deref().unwrap_or_default();
    let fields = term.match_fields.as_deref().unwrap_or_default();
    if exprs.is_empty() && fields.is_empty() {
        return false;
    }
    exprs.iter().all(|r| requirement_matches(r, |k| node.labels.get(k).map(String::as_str)))
        && fields.iter().all(|r| requirement_matches(r, |k| (k == "metadata.name").then_some(node.name.as_str())))
}

/// Whether the pod's nodeSelector and required node affinity allow the node.
pub fn fits(pod: &PodInfo, node: &NodeInfo) -> bool {
    let Some(spec) = pod.pod.spec.as_ref() else { return true };
    if let Some(selector) = &spec.node_selector {
        if !selector.iter().all(|(k, v)| node.labels.get(k) == Some(v)) {
            return false;
        }
    }
    let required = spec
        .affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|na| na.required_during_scheduling_ignored_during_execution.as_ref());
    required.is_none_or(|r| r.node_selector_terms.iter().any(|t| term_matches(t, node)))
}

/// The sum of the weights of the preferred terms the node matches.
pub fn preferred_score(pod: &PodInfo, node: &NodeInfo) -> i64 {
    let preferred = pod
        .pod
        .spec
        .as_ref()
        .and_then(|s| s.affinity.as_ref())
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|na| na.preferred_during_scheduling_ignored_during_execution.as_ref());
    preferred.into_iter().flatten().filter(|p| p.weight != 0 && term_matches(&p.preference, node)).map(|p| i64::from(p.weight)).sum()
}

impl Filter for NodeAffinity {
    fn name(&self) -> &'static str {
        NAME
    }

    fn filter(&self, pod: &PodInfo, node: &NodeInfo, _: &PluginState) -> Result<(), Unfit> {
        if fits(pod, node) { Ok(()) } else { Err(Unfit::unresolvable(REASON)) }
    }
}

impl Score for NodeAffinity {
    fn name(&self) -> &'static str {
        NAME
    }

    fn score(&self, pod: &PodInfo, node: &NodeInfo, _: &PluginState) -> i64 {
        preferred_score(pod, node)
    }

    fn normalize(&self, scores: &mut [i64]) {
        default_normalize(scores, false);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::testing::{node, pod_spec};
    use k8s_openapi::api::core::v1::{Affinity, NodeAffinity as NA, NodeSelector, PodSpec, PreferredSchedulingTerm};

    fn req(key: &str, op: &str, values: &[&str]) -> NodeSelectorRequirement {
        NodeSelectorRequirement { key: key.into(), operator: op.into(), values: Some(values.iter().map(|s| s.to_string()).collect()) }
    }

    fn with_required(terms: Vec<Vec<NodeSelectorRequirement>>) -> PodInfo {
        let terms = terms.into_iter().map(|e| NodeSelectorTerm { match_expressions: Some(e), match_fields: None }).collect();
        let affinity = Affinity {
            node_affinity: Some(NA { required_during_scheduling_ignored_during_execution: Some(NodeSelector { node_selector_terms: terms }), ..Default::default() }),
            ..Default::default()
        };
        pod_spec("p", PodSpec { affinity: Some(affinity), ..Default::default() }, &[])
    }

    #[test]
    fn node_selector_must_match_all_labels() {
        let p = pod_spec("p", PodSpec { node_selector: Some([("disk".to_string(), "ssd".to_string())].into()), ..Default::default() }, &[]);
        assert!(fits(&p, &node("a", "1", "1Gi", "10", &[("disk", "ssd")])));
        assert!(!fits(&p, &node("b", "1", "1Gi", "10", &[("disk", "hdd")])));
        assert!(!fits(&p, &node("c", "1", "1Gi", "10", &[])));
    }

    #[test]
    fn operators() {
        let n = node("a", "1", "1Gi", "10", &[("zone", "z1"), ("cores", "8")]);
        let cases = [
            (req("zone", "In", &["z1", "z2"]), true),
            (req("zone", "In", &["z2"]), false),
            (req("zone", "NotIn", &["z2"]), true),
            (req("rack", "NotIn", &["r1"]), true),
            (req("zone", "Exists", &[]), true),
            (req("rack", "Exists", &[]), false),
            (req("rack", "DoesNotExist", &[]), true),
            (req("cores", "Gt", &["4"]), true),
            (req("cores", "Lt", &["4"]), false),
            (req("zone", "Gt", &["4"]), false),
        ];
        for (r, want) in cases {
            assert_eq!(fits(&with_required(vec![vec![r.clone()]]), &n), want, "{r:?}");
        }
        // Terms are ORed, expressions ANDed.
        assert!(fits(&with_required(vec![vec![req("zone", "In", &["z9"])], vec![req("cores", "Gt", &["1"])]]), &n));
        assert!(!fits(&with_required(vec![vec![req("zone", "In", &["z1"]), req("cores", "Gt", &["9"])]]), &n));
    }

    #[test]
    fn preferred_terms_add_their_weight() {
        let affinity = Affinity {
            node_affinity: Some(NA {
                preferred_during_scheduling_ignored_during_execution: Some(vec![
                    PreferredSchedulingTerm { weight: 10, preference: NodeSelectorTerm { match_expressions: Some(vec![req("zone", "In", &["z1"])]), match_fields: None } },
                    PreferredSchedulingTerm { weight: 5, preference: NodeSelectorTerm { match_expressions: Some(vec![req("ssd", "Exists", &[])]), match_fields: None } },
                ]),
                ..Default::default()
            }),
            ..Default::default()
        };
        let p = pod_spec("p", PodSpec { affinity: Some(affinity), ..Default::default() }, &[]);
        assert_eq!(preferred_score(&p, &node("a", "1", "1Gi", "10", &[("zone", "z1"), ("ssd", "")])), 15);
        assert_eq!(preferred_score(&p, &node("b", "1", "1Gi", "10", &[("zone", "z2")])), 0);
    }
}
