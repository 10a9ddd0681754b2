//! NodeResourcesBalancedAllocation: prefers nodes whose CPU and memory would be used in
//! similar fractions once the pod is placed (score = (1 − std-dev of the fractions)·100).

use crate::framework::{PluginState, Score, MAX_NODE_SCORE};
use crate::types::{NodeInfo, PodInfo};

pub const NAME: &str = "NodeResourcesBalancedAllocation";

pub struct NodeResourcesBalancedAllocation;

pub fn score(pod: &PodInfo, node: &NodeInfo) -> i64 {
    let fraction = |requested: i64, capacity: i64| if capacity <= 0 { 0.0 } else { (requested as f64 / capacity as f64).min(1.0) };
    let cpu = fraction(node.requested.milli_cpu + pod.requests.milli_cpu, node.allocatable.milli_cpu);
    let mem = fraction(node.requested.memory + pod.requests.memory, node.allocatable.memory);
    // With two resources the standard deviation is half their difference.
    let std = (cpu - mem).abs() / 2.0;
    ((1.0 - std) * MAX_NODE_SCORE as f64) as i64
}

impl Score for NodeResourcesBalancedAllocation {
    fn name(&self) -> &'static str {
        NAME
    }

    fn score(&self, pod: &PodInfo, node: &NodeInfo, _: &PluginState) -> i64 {
        score(pod, node)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::testing::{node, pod};

    #[test]
    fn balanced_use_scores_higher() {
        let n = node("n", "4", "4Gi", "10", &[]);
        assert_eq!(score(&pod("p", "2", "2Gi"), &n), 100);
        assert_eq!(score(&pod("p", "4", "0"), &n), 50);
        assert!(score(&pod("p", "2", "1Gi"), &n) > score(&pod("p", "4", "1Gi"), &n));
    }
}
