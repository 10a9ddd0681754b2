//! The scheduling framework: `Filter` plugins say whether a pod may run on a node,
//! `Score` plugins rank the nodes that may, and [`Framework`] runs one scheduling cycle
//! over a snapshot of the cache — filtering only as many nodes as
//! `percentageOfNodesToScore` asks, as kube-scheduler does — and explains a failure with
//! kube-scheduler's `FitError` message.

use std::any::Any;
use std::collections::BTreeMap;
use std::fmt;

use crate::types::{NodeInfo, PodInfo};

/// Per-cycle data a plugin computes once for a pod (kube-scheduler's CycleState entry).
pub type PluginState = Option<Box<dyn Any + Send + Sync>>;

/// The highest score a plugin gives a node (`framework.MaxNodeScore`).
pub const MAX_NODE_SCORE: i64 = 100;

/// Why a pod does not fit a node, in kube-scheduler's words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unfit {
    pub reasons: Vec<String>,
    /// `UnschedulableAndUnresolvable`: evicting pods (preemption) would not help.
    pub unresolvable: bool,
}

impl Unfit {
    /// Unschedulable: preemption could make room.
    pub fn new(reason: impl Into<String>) -> Unfit {
        Unfit { reasons: vec![reason.into()], unresolvable: false }
    }

    /// UnschedulableAndUnresolvable.
    pub fn unresolvable(reason: impl Into<String>) -> Unfit {
        Unfit { reasons: vec![reason.into()], unresolvable: true }
    }
}

/// A filter plugin (PreFilter + Filter extension points).
pub trait Filter: Send + Sync {
    fn name(&self) -> &'static str;

    /// Computes what `filter` needs from the whole cluster, once per pod. An `Err` makes
    /// every node unfit (kube-scheduler's PreFilter rejection).
    fn pre_filter(&self, _pod: &PodInfo, _nodes: &[NodeInfo]) -> Result<PluginState, Unfit> {
        Ok(None)
    }

    fn filter(&self, pod: &PodInfo, node: &NodeInfo, state: &PluginState) -> Result<(), Unfit>;
}

/// A score plugin (PreScore + Score + NormalizeScore).
pub trait Score: Send + Sync {
    fn name(&self) -> &'static str;

    /// Computes what `score` needs, once per pod, given all nodes and the feasible ones.
    fn pre_score(&self, _pod: &PodInfo, _nodes: &[NodeInfo], _feasible: &[usize]) -> PluginState {
        None
    }

    /// A raw score for `node`; `normalize` then maps raw scores to 0..=100.
    fn score(&self, pod: &PodInfo, node: &NodeInfo, state: &PluginState) -> i64;

    fn normalize(&self, _scores: &mut [i64]) {}
}

/// Maps scores to 0..=MAX_NODE_SCORE by the maximum, optionally reversed
/// (`helper.DefaultNormalizeScore`).
pub fn default_normalize(scores: &mut [i64], reverse: bool) {
    let max = scores.iter().copied().max().unwrap_or(0);
    if max == 0 {
        if reverse {
            scores.iter_mut().for_each(|s| *s = MAX_NODE_SCORE);
        }
        return;
    }
    for s in scores.iter_mut() {
        *s = MAX_NODE_SCORE * *s / max;
        if reverse {
            *s = MAX_NODE_SCORE - *s;
        }
    }
}

/// Why a pod fits no node: kube-scheduler's `FitError` with its `Diagnosis`.
#[derive(Debug, Clone, Default)]
pub struct FitError {
    pub num_all_nodes: usize,
    /// Set when a PreFilter plugin rejected the pod outright.
    pub pre_filter_msg: Option<String>,
    /// Node name → why it was unfit.
    pub node_status: BTreeMap<String, Unfit>,
}

impl FitError {
    /// The message of the PostFilter (preemption) step. This scheduler does not preempt;
    /// it reports what DefaultPreemption reports when no lower-priority pod could be
    /// evicted: nodes failing an unresolvable filter are not helpful, the others have no
    /// victims.
    fn post_filter_msg(&self) -> String {
        let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
        if self.pre_filter_msg.is_some() {
            counts.insert("Preemption is not helpful for scheduling", self.num_all_nodes);
        } else {
            for status in self.node_status.values() {
                let msg = if status.unresolvable { "Preemption is not helpful for scheduling" } else { "No preemption victims found for incoming pod" };
                *counts.entry(msg).or_insert(0) += 1;
            }
        }
        let mut parts: Vec<String> = counts.iter().map(|(m, n)| format!("{n} {m}")).collect();
        parts.sort();
        format!("preemption: 0/{} nodes are available: {}", self.num_all_nodes, parts.join(", "))
    }
}

impl fmt::Display for FitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.num_all_nodes == 0 && self.pre_filter_msg.is_none() {
            // kube-scheduler's ErrNoNodesAvailable.
            return write!(f, "no nodes available to schedule pods");
        }
        write!(f, "0/{} nodes are available:", self.num_all_nodes)?;
        if let Some(msg) = &self.pre_filter_msg {
            write!(f, " {msg}.")?;
        } else {
            let mut histogram: BTreeMap<&str, usize> = BTreeMap::new();
            for status in self.node_status.values() {
                for reason in &status.reasons {
                    *histogram.entry(reason.as_str()).or_insert(0) += 1;
                }
            }
            let mut parts: Vec<String> = histogram.iter().map(|(r, n)| format!("{n} {r}")).collect();
            parts.sort();
            if !parts.is_empty() {
                write!(f, " {}.", parts.join(", "))?;
            }
        }
        if self.num_all_nodes > 0 {
            write!(f, " {}.", self.post_filter_msg())?;
        }
        Ok(())
    }
}

/// A score plugin with its weight.
pub struct WeightedScore {
    pub plugin: Box<dyn Score>,
    pub weight: i64,
}

/// The enabled plugins of one profile and the cycle that runs them.
pub struct Framework {
    pub filters: Vec<Box<dyn Filter>>,
    pub scores: Vec<WeightedScore>,
    /// `percentageOfNodesToScore`; 0 = adaptive.
    pub percentage_of_nodes_to_score: u32,
    next_start_node_index: usize,
    rng: u64,
}

impl Framework {
    pub fn new(filters: Vec<Box<dyn Filter>>, scores: Vec<WeightedScore>, percentage_of_nodes_to_score: u32) -> Framework {
        Framework { filters, scores, percentage_of_nodes_to_score, next_start_node_index: 0, rng: 0x9e37_79b9_7f4a_7c15 }
    }

    /// How many feasible nodes to find before scoring (`numFeasibleNodesToFind`).
    pub fn num_feasible_nodes_to_find(&self, num_all_nodes: usize) -> usize {
        const MIN_FEASIBLE_NODES_TO_FIND: usize = 100;
        const MIN_FEASIBLE_NODES_PERCENTAGE_TO_FIND: usize = 5;
        if num_all_nodes < MIN_FEASIBLE_NODES_TO_FIND {
            return num_all_nodes;
        }
        let mut percentage = self.percentage_of_nodes_to_score as usize;
        if percentage == 0 {
            percentage = 50usize.saturating_sub(num_all_nodes / 125).max(MIN_FEASIBLE_NODES_PERCENTAGE_TO_FIND);
        }
        if percentage >= 100 {
            return num_all_nodes;
        }
        (num_all_nodes * percentage / 100).max(MIN_FEASIBLE_NODES_TO_FIND)
    }

    /// Picks a node for `pod` among `nodes` (entries without a node object are skipped),
    /// or explains why none fits. Returns the index into `nodes`.
    pub fn schedule(&mut self, pod: &PodInfo, nodes: &[NodeInfo]) -> Result<usize, FitError> {
        let real: usize = nodes.iter().filter(|n| n.node.is_some()).count();
        let mut err = FitError { num_all_nodes: real, ..Default::default() };
        if real == 0 {
            return Err(err);
        }
        let mut filter_states = Vec::with_capacity(self.filters.len());
        for f in &self.filters {
            match f.pre_filter(pod, nodes) {
                Ok(s) => filter_states.push(s),
                Err(unfit) => {
                    err.pre_filter_msg = Some(unfit.reasons.join(", "));
                    return Err(err);
                }
            }
        }
        let want = self.num_feasible_nodes_to_find(real);
        let mut feasible: Vec<usize> = Vec::with_capacity(want.min(1024));
        let len = nodes.len();
        let start = self.next_start_node_index % len;
        let mut processed = 0;
        for offset in 0..len {
            if feasible.len() >= want {
                break;
            }
            let i = (start + offset) % len;
            processed += 1;
            let node = &nodes[i];
            if node.node.is_none() {
                continue;
            }
            let mut verdict = Ok(());
            for (f, state) in self.filters.iter().zip(&filter_states) {
                verdict = f.filter(pod, node, state);
                if verdict.is_err() {
                    break;
                }
            }
            match verdict {
                Ok(()) => feasible.push(i),
                Err(unfit) => {
                    err.node_status.insert(node.name.clone(), unfit);
                }
            }
        }
        self.next_start_node_index = (start + processed) % len;
        if feasible.is_empty() {
            return Err(err);
        }
        if feasible.len() == 1 || self.scores.is_empty() {
            return Ok(feasible[0]);
        }
        let mut totals = vec![0i64; feasible.len()];
        let mut raw = vec![0i64; feasible.len()];
        for ws in &self.scores {
            let state = ws.plugin.pre_score(pod, nodes, &feasible);
            for (slot, &i) in raw.iter_mut().zip(&feasible) {
                *slot = ws.plugin.score(pod, &nodes[i], &state);
            }
            ws.plugin.normalize(&mut raw);
            for (t, s) in totals.iter_mut().zip(&raw) {
                *t += s * ws.weight;
            }
        }
        // The highest total wins; ties are broken uniformly at random (reservoir sampling,
        // as kube-scheduler's selectHost).
        let mut best = 0;
        let mut ties = 1u64;
        for j in 1..totals.len() {
            if totals[j] > totals[best] {
                best = j;
                ties = 1;
            } else if totals[j] == totals[best] {
                ties += 1;
                if self.next_random().is_multiple_of(ties) {
                    best = j;
                }
            }
        }
        Ok(feasible[best])
    }

    fn next_random(&mut self) -> u64 {
        // xorshift64: cheap, and good enough for tie-breaking.
        let mut x = self.rng;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng = x;
        x
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fit_error(statuses: &[(&str, Unfit)]) -> FitError {
        FitError {
            num_all_nodes: statuses.len(),
            pre_filter_msg: None,
            node_status: statuses.iter().map(|(n, u)| (n.to_string(), u.clone())).collect(),
        }
    }

    #[test]
    fn a_cluster_without_nodes_says_so() {
        assert_eq!(fit_error(&[]).to_string(), "no nodes available to schedule pods");
    }

    #[test]
    fn the_message_has_kube_schedulers_shape() {
        let e = fit_error(&[
            ("cp", Unfit::unresolvable("node(s) had untolerated taint {node-role.kubernetes.io/control-plane: }")),
            ("a", Unfit::new("Insufficient cpu")),
            ("b", Unfit::new("Insufficient cpu")),
        ]);
        assert_eq!(
            e.to_string(),
            "0/3 nodes are available: 1 node(s) had untolerated taint {node-role.kubernetes.io/control-plane: }, 2 Insufficient cpu. \
             preemption: 0/3 nodes are available: 1 Preemption is not helpful for scheduling, 2 No preemption victims found for incoming pod."
        );
        let e = fit_error(&[("a", Unfit::unresolvable("node(s) didn't match Pod's node affinity/selector"))]);
        assert_eq!(
            e.to_string(),
            "0/1 nodes are available: 1 node(s) didn't match Pod's node affinity/selector. preemption: 0/1 nodes are available: 1 Preemption is not helpful for scheduling."
        );
    }

    #[test]
    fn adaptive_percentage_of_nodes_to_score() {
        let f = Framework::new(vec![], vec![], 0);
        assert_eq!(f.num_feasible_nodes_to_find(50), 50);
        assert_eq!(f.num_feasible_nodes_to_find(100), 100);
        assert_eq!(f.num_feasible_nodes_to_find(1000), 420);
        assert_eq!(f.num_feasible_nodes_to_find(5000), 500);
        assert_eq!(f.num_feasible_nodes_to_find(10000), 500);
        let f = Framework::new(vec![], vec![], 100);
        assert_eq!(f.num_feasible_nodes_to_find(5000), 5000);
    }

    #[test]
    fn normalize_by_the_maximum() {
        let mut s = vec![0, 5, 10];
        default_normalize(&mut s, false);
        assert_eq!(s, vec![0, 50, 100]);
        let mut s = vec![0, 5, 10];
        default_normalize(&mut s, true);
        assert_eq!(s, vec![100, 50, 0]);
    }
}
