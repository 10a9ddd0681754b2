//! NodeUnschedulable: a cordoned node (`spec.unschedulable`) takes only pods that
//! tolerate the `node.kubernetes.io/unschedulable:NoSchedule` taint.

use k8s_openapi::api::core::v1::Taint;

use crate::framework::{Filter, PluginState, Unfit};
use crate::types::{tolerates, NodeInfo, PodInfo};

pub const NAME: &str = "NodeUnschedulable";
pub const REASON: &str = "node(s) were unschedulable";

pub struct NodeUnschedulable;

/// Whether the pod may land on the node as far as cordoning goes.
pub fn fits(pod: &PodInfo, node: &NodeInfo) -> bool {
    if !node.unschedulable {
        return true;
    }
    let taint = Taint { key: "node.kubernetes.io/unschedulable".into(), effect: "NoSchedule".into(), ..Default::default() };
    pod.tolerations.iter().any(|t| tolerates(t, &taint))
}

impl Filter for NodeUnschedulable {
    fn name(&self) -> &'static str {
        NAME
    }

    fn filter(&self, pod: &PodInfo, node: &NodeInfo, _: &PluginState) -> Result<(), Unfit> {
        if fits(pod, node) { Ok(()) } else { Err(Unfit::unresolvable(REASON)) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::testing::{node, pod};
    use k8s_openapi::api::core::v1::Toleration;

    #[test]
    fn cordoned_nodes_take_only_tolerating_pods() {
        let mut n = node("n", "1", "1Gi", "10", &[]);
        let mut p = pod("p", "", "");
        assert!(fits(&p, &n));
        n.unschedulable = true;
        assert!(!fits(&p, &n));
        p.tolerations.push(Toleration { key: Some("node.kubernetes.io/unschedulable".into()), operator: Some("Exists".into()), ..Default::default() });
        assert!(fits(&p, &n));
    }
}
