//! InterPodAffinity: required pod affinity (the node's topology domain must hold a
//! matching pod), required anti-affinity both ways (the pod's own terms, and existing
//! pods' terms that select the incoming pod), and preferred terms as a score.

use std::collections::{HashMap, HashSet};

use crate::framework::{Filter, PluginState, Score, Unfit, MAX_NODE_SCORE};
use crate::types::{AffinityTerm, NodeInfo, PodInfo};

pub const NAME: &str = "InterPodAffinity";
pub const REASON_AFFINITY: &str = "node(s) didn't match pod affinity rules";
pub const REASON_ANTI_AFFINITY: &str = "node(s) didn't match pod anti-affinity rules";
pub const REASON_EXISTING_ANTI_AFFINITY: &str = "node(s) didn't satisfy existing pods anti-affinity rules";

pub struct InterPodAffinity;

type Domain = (String, String);

/// What the filter needs, counted once over the cluster.
#[derive(Debug, Default)]
pub struct Required {
    /// Domains an existing pod's anti-affinity keeps the incoming pod out of.
    existing_anti: HashSet<Domain>,
    /// Per required affinity term: the domains holding a matching pod.
    affinity: Vec<HashSet<Domain>>,
    /// Whether no pod in the cluster matches any affinity term and the pod matches its
    /// own terms: the first pod of a group may go anywhere.
    affinity_self_satisfied: bool,
    /// Per required anti-affinity term: the domains holding a matching pod.
    anti: Vec<HashSet<Domain>>,
}

fn domain(node: &NodeInfo, key: &str) -> Option<Domain> {
    node.labels.get(key).map(|v| (key.to_string(), v.clone()))
}

fn any_pod_with_affinity(nodes: &[NodeInfo]) -> bool {
    nodes.iter().any(|n| n.pods_with_affinity > 0)
}

pub fn required(pod: &PodInfo, nodes: &[NodeInfo]) -> Required {
    let mut r = Required { affinity: vec![HashSet::new(); pod.required_affinity.len()], anti: vec![HashSet::new(); pod.required_anti_affinity.len()], ..Default::default() };
    let own_terms = !pod.required_affinity.is_empty() || !pod.required_anti_affinity.is_empty();
    for node in nodes {
        if node.pods_with_affinity > 0 {
            for existing in node.pods.iter().filter(|p| !p.required_anti_affinity.is_empty()) {
                for t in existing.required_anti_affinity.iter().filter(|t| t.matches(pod)) {
                    r.existing_anti.extend(domain(node, &t.topology_key));
                }
            }
        }
        if !own_terms {
            continue;
        }
        for existing in &node.pods {
            for (i, t) in pod.required_affinity.iter().enumerate() {
                if t.matches(existing) {
                    r.affinity[i].extend(domain(node, &t.topology_key));
                }
            }
            for (i, t) in pod.required_anti_affinity.iter().enumerate() {
                if t.matches(existing) {
                    r.anti[i].extend(domain(node, &t.topology_key));
                }
            }
        }
    }
    r.affinity_self_satisfied = r.affinity.iter().all(HashSet::is_empty) && pod.required_affinity.iter().all(|t| t.matches(pod));
    r
}

pub fn check(pod: &PodInfo, r: &Required, node: &NodeInfo) -> Result<(), Unfit> {
    let in_domain = |set: &HashSet<Domain>, t: &AffinityTerm| domain(node, &t.topology_key).is_some_and(|d| set.contains(&d));
    for (t, set) in pod.required_affinity.iter().zip(&r.affinity) {
        let has_key = node.labels.contains_key(&t.topology_key);
        if !has_key || !(in_domain(set, t) || r.affinity_self_satisfied) {
            return Err(Unfit::unresolvable(REASON_AFFINITY));
        }
    }
    for (t, set) in pod.required_anti_affinity.iter().zip(&r.anti) {
        if in_domain(set, t) {
            return Err(Unfit::new(REASON_ANTI_AFFINITY));
        }
    }
    if !r.existing_anti.is_empty() && node.labels.iter().any(|(k, v)| r.existing_anti.contains(&(k.clone(), v.clone()))) {
        return Err(Unfit::new(REASON_EXISTING_ANTI_AFFINITY));
    }
    Ok(())
}

impl Filter for InterPodAffinity {
    fn name(&self) -> &'static str {
        NAME
    }

    fn pre_filter(&self, pod: &PodInfo, nodes: &[NodeInfo]) -> Result<PluginState, Unfit> {
        if pod.required_affinity.is_empty() && pod.required_anti_affinity.is_empty() && !any_pod_with_affinity(nodes) {
            return Ok(None);
        }
        Ok(Some(Box::new(required(pod, nodes))))
    }

    fn filter(&self, pod: &PodInfo, node: &NodeInfo, state: &PluginState) -> Result<(), Unfit> {
        match state.as_ref().and_then(|s| s.downcast_ref::<Required>()) {
            Some(r) => check(pod, r, node),
            None => Ok(()),
        }
    }
}

/// Domain → weight: the incoming pod's preferred terms over existing pods, and existing
/// pods' preferred terms over the incoming pod (affinity adds, anti-affinity subtracts).
pub fn preferred(pod: &PodInfo, nodes: &[NodeInfo]) -> HashMap<Domain, i64> {
    let mut scores: HashMap<Domain, i64> = HashMap::new();
    let own = !pod.preferred_affinity.is_empty() || !pod.preferred_anti_affinity.is_empty();
    for node in nodes {
        if !own && node.pods_with_affinity == 0 {
            continue;
        }
        for existing in &node.pods {
            let mut add = |t: &AffinityTerm, w: i64| {
                if let Some(d) = domain(node, &t.topology_key) {
                    *scores.entry(d).or_insert(0) += w;
                }
            };
            for (w, t) in &pod.preferred_affinity {
                if t.matches(existing) {
                    add(t, i64::from(*w));
                }
            }
            for (w, t) in &pod.preferred_anti_affinity {
                if t.matches(existing) {
                    add(t, -i64::from(*w));
                }
            }
            for (w, t) in &existing.preferred_affinity {
                if t.matches(pod) {
                    add(t, i64::from(*w));
                }
            }
            for (w, t) in &existing.preferred_anti_affinity {
                if t.matches(pod) {
                    add(t, -i64::from(*w));
                }
            }
        }
    }
    scores
}

impl Score for InterPodAffinity {
    fn name(&self) -> &'static str {
        NAME
    }

    fn pre_score(&self, pod: &PodInfo, nodes: &[NodeInfo], _feasible: &[usize]) -> PluginState {
        let own = !pod.preferred_affinity.is_empty() || !pod.preferred_anti_affinity.is_empty();
        if !own && !any_pod_with_affinity(nodes) {
            return None;
        }
        Some(Box::new(preferred(pod, nodes)))
    }

    fn score(&self, _pod: &PodInfo, node: &NodeInfo, state: &PluginState) -> i64 {
        let Some(scores) = state.as_ref().and_then(|s| s.downcast_ref::<HashMap<Domain, i64>>()) else { return 0 };
        node.labels.iter().filter_map(|(k, v)| scores.get(&(k.clone(), v.clone()))).sum()
    }

    fn normalize(&self, scores: &mut [i64]) {
        let max = scores.iter().copied().max().unwrap_or(0);
        let min = scores.iter().copied().min().unwrap_or(0);
        for s in scores.iter_mut() {
            *s = if max == min { 0 } else { MAX_NODE_SCORE * (*s - min) / (max - min) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::testing::{node, pod_spec};
    use k8s_openapi::api::core::v1::{Affinity, PodAffinity, PodAffinityTerm, PodAntiAffinity, PodSpec, WeightedPodAffinityTerm};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
    use std::sync::Arc;

    fn term(app: &str) -> PodAffinityTerm {
        PodAffinityTerm {
            label_selector: Some(LabelSelector { match_labels: Some([("app".to_string(), app.to_string())].into()), ..Default::default() }),
            topology_key: "kubernetes.io/hostname".into(),
            ..Default::default()
        }
    }

    fn pod(name: &str, app: &str, affinity: Option<Affinity>) -> PodInfo {
        pod_spec(name, PodSpec { affinity, ..Default::default() }, &[("app", app)])
    }

    fn nodes() -> Vec<NodeInfo> {
        vec![
            node("a", "4", "4Gi", "10", &[("kubernetes.io/hostname", "a")]),
            node("b", "4", "4Gi", "10", &[("kubernetes.io/hostname", "b")]),
        ]
    }

    fn run(p: &PodInfo, nodes: &[NodeInfo], i: usize) -> Result<(), Unfit> {
        let state = InterPodAffinity.pre_filter(p, nodes)?;
        InterPodAffinity.filter(p, &nodes[i], &state)
    }

    #[test]
    fn required_affinity_follows_matching_pods() {
        let mut ns = nodes();
        let aff = Affinity { pod_affinity: Some(PodAffinity { required_during_scheduling_ignored_during_execution: Some(vec![term("db")]), ..Default::default() }), ..Default::default() };
        let p = pod("p", "web", Some(aff.clone()));
        // No db pod anywhere, and the pod is not a db itself: nowhere fits.
        assert_eq!(run(&p, &ns, 0).unwrap_err().reasons, vec![REASON_AFFINITY]);
        ns[1].add_pod(Arc::new(pod("db", "db", None)));
        assert!(run(&p, &ns, 0).is_err());
        assert!(run(&p, &ns, 1).is_ok());
        // The first pod of a self-affine group may go anywhere.
        let first = pod("first", "db", Some(aff));
        assert!(run(&first, &nodes(), 0).is_ok());
    }

    #[test]
    fn anti_affinity_both_ways() {
        let mut ns = nodes();
        let anti = Affinity { pod_anti_affinity: Some(PodAntiAffinity { required_during_scheduling_ignored_during_execution: Some(vec![term("web")]), ..Default::default() }), ..Default::default() };
        ns[0].add_pod(Arc::new(pod("w1", "web", Some(anti.clone()))));
        let p = pod("w2", "web", Some(anti));
        assert_eq!(run(&p, &ns, 0).unwrap_err().reasons, vec![REASON_ANTI_AFFINITY]);
        assert!(run(&p, &ns, 1).is_ok());
        // A plain pod selected by the existing pod's anti-affinity is kept out too.
        let plain = pod("w3", "web", None);
        assert_eq!(run(&plain, &ns, 0).unwrap_err().reasons, vec![REASON_EXISTING_ANTI_AFFINITY]);
        assert!(run(&pod("other", "api", None), &ns, 0).is_ok());
    }

    #[test]
    fn preferred_affinity_scores() {
        let mut ns = nodes();
        ns[1].add_pod(Arc::new(pod("cache", "cache", None)));
        let aff = Affinity {
            pod_affinity: Some(PodAffinity { preferred_during_scheduling_ignored_during_execution: Some(vec![WeightedPodAffinityTerm { weight: 50, pod_affinity_term: term("cache") }]), ..Default::default() }),
            ..Default::default()
        };
        let p = pod("p", "web", Some(aff));
        let state = InterPodAffinity.pre_score(&p, &ns, &[0, 1]);
        let mut scores = vec![InterPodAffinity.score(&p, &ns[0], &state), InterPodAffinity.score(&p, &ns[1], &state)];
        InterPodAffinity.normalize(&mut scores);
        assert_eq!(scores, vec![0, 100]);
    }
}
