//! The in-tree plugins, one per file, and the registry that builds them by name.

pub mod image_locality;
pub mod inter_pod_affinity;
pub mod node_affinity;
pub mod node_name;
pub mod node_ports;
pub mod node_resources_balanced_allocation;
pub mod node_resources_fit;
pub mod node_unschedulable;
pub mod pod_topology_spread;
pub mod taint_toleration;

use crate::framework::{Filter, Score};
use node_resources_fit::Strategy;

/// Filter plugins in kube-scheduler's default order (the first failing one names why a
/// node does not fit).
pub const DEFAULT_FILTERS: &[&str] = &[
    node_unschedulable::NAME,
    node_name::NAME,
    taint_toleration::NAME,
    node_affinity::NAME,
    node_ports::NAME,
    node_resources_fit::NAME,
    pod_topology_spread::NAME,
    inter_pod_affinity::NAME,
];

/// Score plugins with kube-scheduler's default weights.
pub const DEFAULT_SCORES: &[(&str, i64)] = &[
    (taint_toleration::NAME, 3),
    (node_affinity::NAME, 2),
    (node_resources_fit::NAME, 1),
    (pod_topology_spread::NAME, 2),
    (inter_pod_affinity::NAME, 2),
    (node_resources_balanced_allocation::NAME, 1),
    (image_locality::NAME, 1),
];

/// Plugin arguments from the configuration.
#[derive(Debug, Clone, Default)]
pub struct Args {
    pub fit_strategy: Strategy,
}

/// The filter plugin called `name`, if there is one.
pub fn filter(name: &str, args: &Args) -> Option<Box<dyn Filter>> {
    Some(match name {
        node_unschedulable::NAME => Box::new(node_unschedulable::NodeUnschedulable),
        node_name::NAME => Box::new(node_name::NodeName),
        taint_toleration::NAME => Box::new(taint_toleration::TaintToleration),
        node_affinity::NAME => Box::new(node_affinity::NodeAffinity),
        node_ports::NAME => Box::new(node_ports::NodePorts),
        node_resources_fit::NAME => Box::new(node_resources_fit::NodeResourcesFit { strategy: args.fit_strategy }),
        pod_topology_spread::NAME => Box::new(pod_topology_spread::PodTopologySpread),
        inter_pod_affinity::NAME => Box::new(inter_pod_affinity::InterPodAffinity),
        _ => return None,
    })
}

/// The score plugin called `name`, if there is one.
pub fn score(name: &str, args: &Args) -> Option<Box<dyn Score>> {
    Some(match name {
        taint_toleration::NAME => Box::new(taint_toleration::TaintToleration),
        node_affinity::NAME => Box::new(node_affinity::NodeAffinity),
        node_resources_fit::NAME => Box::new(node_resources_fit::NodeResourcesFit { strategy: args.fit_strategy }),
        node_resources_balanced_allocation::NAME => Box::new(node_resources_balanced_allocation::NodeResourcesBalancedAllocation),
        pod_topology_spread::NAME => Box::new(pod_topology_spread::PodTopologySpread),
        inter_pod_affinity::NAME => Box::new(inter_pod_affinity::InterPodAffinity),
        image_locality::NAME => Box::new(image_locality::ImageLocality),
        _ => return None,
    })
}
