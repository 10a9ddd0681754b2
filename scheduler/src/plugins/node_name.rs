//! NodeName: a pod that names a node in `spec.nodeName` fits only that node.

use crate::framework::{Filter, PluginState, Unfit};
use crate::types::{NodeInfo, PodInfo};

pub const NAME: &str = "NodeName";
pub const REASON: &str = "node(s) didn't match the requested node name";

pub struct NodeName;

pub fn fits(pod: &PodInfo, node: &NodeInfo) -> bool {
    pod.node_name().is_none_or(|n| n == node.name)
}

impl Filter for NodeName {
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
    use crate::types::testing::{node, pod_spec};
    use k8s_openapi::api::core::v1::PodSpec;

    #[test]
    fn only_the_named_node_fits() {
        let p = pod_spec("p", PodSpec { node_name: Some("a".into()), ..Default::default() }, &[]);
        assert!(fits(&p, &node("a", "1", "1Gi", "10", &[])));
        assert!(!fits(&p, &node("b", "1", "1Gi", "10", &[])));
        let any = pod_spec("q", PodSpec::default(), &[]);
        assert!(fits(&any, &node("b", "1", "1Gi", "10", &[])));
    }
}
