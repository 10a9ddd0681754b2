//! NodeResourcesFit: the pod's requests (containers, the init-container max rule,
//! overhead) must fit in what the node's allocatable leaves after the pods already there,
//! and the node's pod count must allow one more. Scores by the LeastAllocated (default)
//! or MostAllocated strategy over CPU and memory.

use crate::framework::{Filter, PluginState, Score, Unfit, MAX_NODE_SCORE};
use crate::types::{NodeInfo, PodInfo};

pub const NAME: &str = "NodeResourcesFit";

/// The scoring strategy (`scoringStrategy.type` in the plugin's args).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Strategy {
    #[default]
    LeastAllocated,
    MostAllocated,
}

pub struct NodeResourcesFit {
    pub strategy: Strategy,
}

/// The reasons the pod does not fit, empty when it does.
pub fn insufficient(pod: &PodInfo, node: &NodeInfo) -> Vec<String> {
    let mut reasons = Vec::new();
    if node.pods.len() as i64 + 1 > node.allowed_pods {
        reasons.push("Too many pods".to_string());
    }
    let (want, have, used) = (&pod.requests, &node.allocatable, &node.requested);
    if want.milli_cpu > 0 && want.milli_cpu > have.milli_cpu - used.milli_cpu {
        reasons.push("Insufficient cpu".into());
    }
    if want.memory > 0 && want.memory > have.memory - used.memory {
        reasons.push("Insufficient memory".into());
    }
    if want.ephemeral_storage > 0 && want.ephemeral_storage > have.ephemeral_storage - used.ephemeral_storage {
        reasons.push("Insufficient ephemeral-storage".into());
    }
    for (name, amount) in &want.scalar {
        if *amount == 0 {
            continue;
        }
        let free = have.scalar.get(name).copied().unwrap_or(0) - used.scalar.get(name).copied().unwrap_or(0);
        if *amount > free {
            reasons.push(format!("Insufficient {name}"));
        }
    }
    reasons
}

fn least_allocated(requested: i64, capacity: i64) -> i64 {
    if capacity <= 0 || requested > capacity {
        return 0;
    }
    (capacity - requested) * MAX_NODE_SCORE / capacity
}

fn most_allocated(requested: i64, capacity: i64) -> i64 {
    if capacity <= 0 {
        return 0;
    }
    requested.min(capacity) * MAX_NODE_SCORE / capacity
}

/// The strategy's score over CPU and memory (weight 1 each), counting the scheduler's
/// defaults for containers without requests.
pub fn score(strategy: Strategy, pod: &PodInfo, node: &NodeInfo) -> i64 {
    let f = match strategy {
        Strategy::LeastAllocated => least_allocated,
        Strategy::MostAllocated => most_allocated,
    };
    let cpu = f(node.non_zero_milli_cpu + pod.non_zero_milli_cpu, node.allocatable.milli_cpu);
    let mem = f(node.non_zero_memory + pod.non_zero_memory, node.allocatable.memory);
    (cpu + mem) / 2
}

impl Filter for NodeResourcesFit {
    fn name(&self) -> &'static str {
        NAME
    }

    fn filter(&self, pod: &PodInfo, node: &NodeInfo, _: &PluginState) -> Result<(), Unfit> {
        let reasons = insufficient(pod, node);
        if reasons.is_empty() { Ok(()) } else { Err(Unfit { reasons, unresolvable: false }) }
    }
}

impl Score for NodeResourcesFit {
    fn name(&self) -> &'static str {
        NAME
    }

    fn score(&self, pod: &PodInfo, node: &NodeInfo, _: &PluginState) -> i64 {
        score(self.strategy, pod, node)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::testing::{container, node, pod, pod_spec};
    use k8s_openapi::api::core::v1::PodSpec;
    use std::sync::Arc;

    #[test]
    fn requests_must_fit_what_is_left() {
        let mut n = node("n", "2", "4Gi", "2", &[]);
        assert!(insufficient(&pod("a", "1500m", "1Gi"), &n).is_empty());
        n.add_pod(Arc::new(pod("a", "1500m", "1Gi")));
        assert_eq!(insufficient(&pod("b", "1", "4Gi"), &n), vec!["Insufficient cpu", "Insufficient memory"]);
        assert!(insufficient(&pod("b", "500m", "3Gi"), &n).is_empty());
        n.add_pod(Arc::new(pod("b", "", "")));
        assert_eq!(insufficient(&pod("c", "", ""), &n), vec!["Too many pods"]);
    }

    #[test]
    fn init_containers_count_by_their_maximum() {
        let n = node("n", "2", "4Gi", "10", &[]);
        let p = pod_spec("p", PodSpec { containers: vec![container("100m", "")], init_containers: Some(vec![container("3", "")]), ..Default::default() }, &[]);
        assert_eq!(insufficient(&p, &n), vec!["Insufficient cpu"]);
    }

    #[test]
    fn least_allocated_prefers_empty_nodes_and_most_allocated_full_ones() {
        let empty = node("e", "4", "8Gi", "10", &[]);
        let mut busy = node("b", "4", "8Gi", "10", &[]);
        busy.add_pod(Arc::new(pod("x", "3", "6Gi")));
        let p = pod("p", "1", "2Gi");
        assert!(score(Strategy::LeastAllocated, &p, &empty) > score(Strategy::LeastAllocated, &p, &busy));
        assert!(score(Strategy::MostAllocated, &p, &empty) < score(Strategy::MostAllocated, &p, &busy));
        assert_eq!(score(Strategy::MostAllocated, &p, &busy), 100);
        assert_eq!(score(Strategy::LeastAllocated, &p, &empty), 75);
    }
}
