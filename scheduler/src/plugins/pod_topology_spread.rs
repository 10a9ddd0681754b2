//! PodTopologySpread: spreads matching pods across topology domains. A
//! `DoNotSchedule` constraint rejects a node when placing the pod there would make the
//! domain's count exceed the least-populated domain's by more than `maxSkew`; a
//! `ScheduleAnyway` constraint prefers nodes in less-populated domains.

use std::collections::HashMap;

use apimachinery::labels::Selector;
use k8s_openapi::api::core::v1::TopologySpreadConstraint;

use crate::framework::{Filter, PluginState, Score, Unfit, MAX_NODE_SCORE};
use crate::plugins::node_affinity;
use crate::types::{NodeInfo, PodInfo};

pub const NAME: &str = "PodTopologySpread";
pub const REASON_SKEW: &str = "node(s) didn't match pod topology spread constraints";
pub const REASON_MISSING_LABEL: &str = "node(s) didn't match pod topology spread constraints (missing required label)";

pub struct PodTopologySpread;

/// A constraint with its pod counts per domain.
#[derive(Debug, Clone)]
pub struct Spread {
    pub max_skew: i64,
    pub topology_key: String,
    pub min_domains: usize,
    pub selector: Selector,
    /// 1 when the incoming pod itself matches the selector.
    pub self_match: i64,
    pub counts: HashMap<String, i64>,
}

impl Spread {
    /// The count of the least-populated domain (0 while fewer than minDomains exist).
    pub fn min_count(&self) -> i64 {
        if self.counts.len() < self.min_domains {
            return 0;
        }
        self.counts.values().copied().min().unwrap_or(0)
    }
}

fn constraints<'a>(pod: &'a PodInfo, when: &str) -> Vec<&'a TopologySpreadConstraint> {
    let all = pod.pod.spec.as_ref().and_then(|s| s.topology_spread_constraints.as_deref()).unwrap_or_default();
    all.iter().filter(|c| c.when_unsatisfiable == when).collect()
}

/// Counts the pods each constraint selects per domain over the nodes eligible for the
/// pod (matching its node affinity and carrying every constraint's topology key).
pub fn count(pod: &PodInfo, nodes: &[NodeInfo], cs: &[&TopologySpreadConstraint]) -> Vec<Spread> {
    let mut spreads: Vec<Spread> = cs
        .iter()
        .map(|c| {
            let selector = c
                .label_selector
                .as_ref()
                .and_then(|s| serde_json::to_value(s).ok())
                .and_then(|v| Selector::from_label_selector(&v).ok())
                .unwrap_or_else(Selector::nothing);
            Spread {
                max_skew: i64::from(c.max_skew),
                topology_key: c.topology_key.clone(),
                min_domains: c.min_domains.map_or(1, |m| usize::try_from(m).unwrap_or(1)),
                self_match: i64::from(selector.matches(&pod.labels)),
                selector,
                counts: HashMap::new(),
            }
        })
        .collect();
    for node in nodes {
        if node.node.is_none() || !spreads.iter().all(|s| node.labels.contains_key(&s.topology_key)) || !node_affinity::fits(pod, node) {
            continue;
        }
        for s in &mut spreads {
            let Some(value) = node.labels.get(&s.topology_key) else { continue };
            let n = node
                .pods
                .iter()
                .filter(|p| p.namespace == pod.namespace && p.pod.metadata.deletion_timestamp.is_none() && s.selector.matches(&p.labels))
                .count() as i64;
            *s.counts.entry(value.clone()).or_insert(0) += n;
        }
    }
    spreads
}

/// Whether the node satisfies every hard constraint.
pub fn check(spreads: &[Spread], node: &NodeInfo) -> Result<(), Unfit> {
    for s in spreads {
        let Some(value) = node.labels.get(&s.topology_key) else { return Err(Unfit::unresolvable(REASON_MISSING_LABEL)) };
        let skew = s.counts.get(value).copied().unwrap_or(0) + s.self_match - s.min_count();
        if skew > s.max_skew {
            return Err(Unfit::new(REASON_SKEW));
        }
    }
    Ok(())
}

impl Filter for PodTopologySpread {
    fn name(&self) -> &'static str {
        NAME
    }

    fn pre_filter(&self, pod: &PodInfo, nodes: &[NodeInfo]) -> Result<PluginState, Unfit> {
        let cs = constraints(pod, "DoNotSchedule");
        if cs.is_empty() {
            return Ok(None);
        }
        Ok(Some(Box::new(count(pod, nodes, &cs))))
    }

    fn filter(&self, _pod: &PodInfo, node: &NodeInfo, state: &PluginState) -> Result<(), Unfit> {
        match state.as_ref().and_then(|s| s.downcast_ref::<Vec<Spread>>()) {
            Some(spreads) => check(spreads, node),
            None => Ok(()),
        }
    }
}

/// The raw soft-constraint score: matching pods in the node's domains, weighted by
/// log(number of domains + 2) as Kubernetes does; lower is better.
pub fn soft_score(spreads: &[Spread], node: &NodeInfo) -> i64 {
    let mut total = 0.0;
    for s in spreads {
        let Some(value) = node.labels.get(&s.topology_key) else { continue };
        let weight = ((s.counts.len() + 2) as f64).ln();
        total += s.counts.get(value).copied().unwrap_or(0) as f64 * weight + (s.max_skew - 1) as f64;
    }
    (total * 1000.0).round() as i64
}

/// Lower raw scores map to higher normalized ones (`maxScore + minScore − s`).
pub fn normalize(scores: &mut [i64]) {
    let max = scores.iter().copied().max().unwrap_or(0);
    let min = scores.iter().copied().min().unwrap_or(0);
    for s in scores.iter_mut() {
        *s = if max == 0 { MAX_NODE_SCORE } else { MAX_NODE_SCORE * (max + min - *s) / max };
    }
}

impl Score for PodTopologySpread {
    fn name(&self) -> &'static str {
        NAME
    }

    fn pre_score(&self, pod: &PodInfo, nodes: &[NodeInfo], _feasible: &[usize]) -> PluginState {
        let cs = constraints(pod, "ScheduleAnyway");
        if cs.is_empty() {
            return None;
        }
        Some(Box::new(count(pod, nodes, &cs)))
    }

    fn score(&self, _pod: &PodInfo, node: &NodeInfo, state: &PluginState) -> i64 {
        state.as_ref().and_then(|s| s.downcast_ref::<Vec<Spread>>()).map_or(0, |spreads| soft_score(spreads, node))
    }

    fn normalize(&self, scores: &mut [i64]) {
        normalize(scores);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::testing::{node, pod_spec};
    use k8s_openapi::api::core::v1::PodSpec;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
    use std::sync::Arc;

    fn spread_pod(name: &str, when: &str) -> PodInfo {
        let c = TopologySpreadConstraint {
            max_skew: 1,
            topology_key: "zone".into(),
            when_unsatisfiable: when.into(),
            label_selector: Some(LabelSelector { match_labels: Some([("app".to_string(), "web".to_string())].into()), ..Default::default() }),
            ..Default::default()
        };
        pod_spec(name, PodSpec { topology_spread_constraints: Some(vec![c]), ..Default::default() }, &[("app", "web")])
    }

    fn cluster() -> Vec<NodeInfo> {
        let mut a = node("a", "4", "4Gi", "10", &[("zone", "z1")]);
        let b = node("b", "4", "4Gi", "10", &[("zone", "z2")]);
        let c = node("c", "4", "4Gi", "10", &[]);
        a.add_pod(Arc::new(spread_pod("x", "DoNotSchedule")));
        vec![a, b, c]
    }

    #[test]
    fn hard_constraints_limit_the_skew() {
        let nodes = cluster();
        let p = spread_pod("p", "DoNotSchedule");
        let state = PodTopologySpread.pre_filter(&p, &nodes).unwrap();
        assert_eq!(PodTopologySpread.filter(&p, &nodes[0], &state).unwrap_err().reasons, vec![REASON_SKEW]);
        assert!(PodTopologySpread.filter(&p, &nodes[1], &state).is_ok());
        assert!(PodTopologySpread.filter(&p, &nodes[2], &state).unwrap_err().unresolvable);
    }

    #[test]
    fn soft_constraints_prefer_the_emptier_domain() {
        let nodes = cluster();
        let p = spread_pod("p", "ScheduleAnyway");
        assert!(PodTopologySpread.pre_filter(&p, &nodes).unwrap().is_none());
        let state = PodTopologySpread.pre_score(&p, &nodes, &[0, 1]);
        let mut scores = vec![PodTopologySpread.score(&p, &nodes[0], &state), PodTopologySpread.score(&p, &nodes[1], &state)];
        normalize(&mut scores);
        assert!(scores[1] > scores[0], "{scores:?}");
    }
}
