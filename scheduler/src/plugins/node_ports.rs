//! NodePorts: a pod's hostPorts must be free on the node.

use crate::framework::{Filter, PluginState, Unfit};
use crate::types::{NodeInfo, PodInfo};

pub const NAME: &str = "NodePorts";
pub const REASON: &str = "node(s) didn't have free ports for the requested pod ports";

pub struct NodePorts;

pub fn fits(pod: &PodInfo, node: &NodeInfo) -> bool {
    pod.host_ports.iter().all(|want| !node.used_ports.iter().any(|used| used.conflicts(want)))
}

impl Filter for NodePorts {
    fn name(&self) -> &'static str {
        NAME
    }

    fn filter(&self, pod: &PodInfo, node: &NodeInfo, _: &PluginState) -> Result<(), Unfit> {
        if fits(pod, node) { Ok(()) } else { Err(Unfit::new(REASON)) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::testing::{container, node, pod_spec};
    use k8s_openapi::api::core::v1::{ContainerPort, PodSpec};
    use std::sync::Arc;

    fn with_port(name: &str, ip: &str, port: i32) -> PodInfo {
        let mut c = container("", "");
        c.ports = Some(vec![ContainerPort { container_port: 80, host_port: Some(port), host_ip: Some(ip.into()), ..Default::default() }]);
        pod_spec(name, PodSpec { containers: vec![c], ..Default::default() }, &[])
    }

    #[test]
    fn host_ports_conflict_on_the_same_port_and_address() {
        let mut n = node("n", "1", "1Gi", "10", &[]);
        n.add_pod(Arc::new(with_port("a", "", 8080)));
        assert!(!fits(&with_port("b", "", 8080), &n));
        assert!(!fits(&with_port("b", "10.0.0.1", 8080), &n));
        assert!(fits(&with_port("b", "", 8081), &n));
        let mut m = node("m", "1", "1Gi", "10", &[]);
        m.add_pod(Arc::new(with_port("a", "10.0.0.1", 8080)));
        assert!(fits(&with_port("b", "10.0.0.2", 8080), &m));
        assert!(!fits(&with_port("b", "0.0.0.0", 8080), &m));
    }
}
