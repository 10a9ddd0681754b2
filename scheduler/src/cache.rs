//! The scheduler's cache: every node with the pods bound or assumed on it and their
//! aggregates, so a scheduling cycle reads sums instead of walking pods. A pod is assumed
//! on its node when the scheduler decides, before the binding is written; the watch then
//! confirms it, or a failed binding forgets it.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use k8s_openapi::api::core::v1::Node;

use crate::types::{NodeInfo, PodInfo};

#[derive(Debug, Clone)]
struct PodPlace {
    node: String,
    assumed: bool,
}

/// Nodes and the pods on them.
#[derive(Debug, Default)]
pub struct Cache {
    nodes: Vec<NodeInfo>,
    index: HashMap<String, usize>,
    pods: HashMap<String, PodPlace>,
}

impl Cache {
    /// Every node entry, including placeholders for nodes known only from bound pods
    /// (`node == None`), in a stable order.
    pub fn nodes(&self) -> &[NodeInfo] {
        &self.nodes
    }

    pub fn node(&self, name: &str) -> Option<&NodeInfo> {
        self.index.get(name).map(|&i| &self.nodes[i])
    }

    /// How many real nodes there are.
    pub fn node_count(&self) -> usize {
        self.nodes.iter().filter(|n| n.node.is_some()).count()
    }

    fn entry(&mut self, name: &str) -> &mut NodeInfo {
        let i = match self.index.get(name) {
            Some(&i) => i,
            None => {
                self.nodes.push(NodeInfo::empty(name));
                self.index.insert(name.to_string(), self.nodes.len() - 1);
                self.nodes.len() - 1
            }
        };
        &mut self.nodes[i]
    }

    /// Adds or updates a node; returns whether anything scheduling depends on changed
    /// (so pods that did not fit should be retried).
    pub fn upsert_node(&mut self, node: Arc<Node>) -> bool {
        let name = node.metadata.name.clone().unwrap_or_default();
        let entry = self.entry(&name);
        let before = entry.node.is_some().then(|| (entry.allocatable.clone(), entry.allowed_pods, entry.labels.clone(), entry.taints.clone(), entry.unschedulable, entry.images.len()));
        entry.set_node(node);
        let after = (entry.allocatable.clone(), entry.allowed_pods, entry.labels.clone(), entry.taints.clone(), entry.unschedulable, entry.images.len());
        before.as_ref() != Some(&after)
    }

    pub fn remove_node(&mut self, name: &str) {
        let Some(&i) = self.index.get(name) else { return };
        if !self.nodes[i].pods.is_empty() {
            // Pods still point at it: keep their sums until they are deleted.
            self.nodes[i].node = None;
            return;
        }
        self.drop_entry(i);
    }

    fn drop_entry(&mut self, i: usize) {
        let removed = self.nodes.swap_remove(i);
        self.index.remove(&removed.name);
        if let Some(moved) = self.nodes.get(i) {
            self.index.insert(moved.name.clone(), i);
        }
    }

    /// Records the scheduler's decision before the binding is written.
    pub fn assume(&mut self, pod: Arc<PodInfo>, node: &str) {
        self.remove_pod(&pod.key);
        self.pods.insert(pod.key.clone(), PodPlace { node: node.to_string(), assumed: true });
        self.entry(node).add_pod(pod);
    }

    /// Undoes `assume` after the binding failed.
    pub fn forget(&mut self, key: &str) {
        if self.pods.get(key).is_some_and(|p| p.assumed) {
            self.remove_pod(key);
        }
    }

    pub fn is_assumed(&self, key: &str) -> bool {
        self.pods.get(key).is_some_and(|p| p.assumed)
    }

    pub fn contains_pod(&self, key: &str) -> bool {
        self.pods.contains_key(key)
    }

    /// A pod the watch shows bound to `node`: confirms an assumed pod or adds/updates it.
    pub fn add_bound_pod(&mut self, pod: Arc<PodInfo>, node: &str) {
        self.remove_pod(&pod.key);
        self.pods.insert(pod.key.clone(), PodPlace { node: node.to_string(), assumed: false });
        self.entry(node).add_pod(pod);
    }

    /// Removes a pod; returns whether it was on a node.
    pub fn remove_pod(&mut self, key: &str) -> bool {
        let Some(place) = self.pods.remove(key) else { return false };
        if let Some(&i) = self.index.get(&place.node) {
            self.nodes[i].remove_pod(key);
            if self.nodes[i].node.is_none() && self.nodes[i].pods.is_empty() {
                self.drop_entry(i);
            }
        }
        true
    }

    /// After a relist: drops confirmed pods the list did not show (assumed ones stay).
    pub fn retain_pods(&mut self, seen: &HashSet<String>) {
        let gone: Vec<String> = self.pods.iter().filter(|(k, p)| !p.assumed && !seen.contains(*k)).map(|(k, _)| k.clone()).collect();
        for k in gone {
            self.remove_pod(&k);
        }
    }

    /// After a relist: drops nodes the list did not show.
    pub fn retain_nodes(&mut self, seen: &HashSet<String>) {
        let gone: Vec<String> = self.nodes.iter().filter(|n| n.node.is_some() && !seen.contains(&n.name)).map(|n| n.name.clone()).collect();
        for n in gone {
            self.remove_node(&n);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::testing::{node, pod};

    fn node_obj(name: &str) -> Arc<Node> {
        node(name, "4", "8Gi", "110", &[]).node.unwrap()
    }

    #[test]
    fn assume_confirm_and_forget() {
        let mut c = Cache::default();
        assert!(c.upsert_node(node_obj("a")));
        assert!(!c.upsert_node(node_obj("a")), "an identical update changes nothing");
        let p = Arc::new(pod("p", "1", "1Gi"));
        c.assume(p.clone(), "a");
        assert!(c.is_assumed("default/p"));
        assert_eq!(c.node("a").unwrap().requested.milli_cpu, 1000);
        c.forget("default/p");
        assert_eq!(c.node("a").unwrap().requested.milli_cpu, 0);
        c.assume(p.clone(), "a");
        c.add_bound_pod(p, "a");
        assert!(!c.is_assumed("default/p"));
        c.forget("default/p");
        assert_eq!(c.node("a").unwrap().pods.len(), 1, "a confirmed pod is not forgotten");
        assert!(c.remove_pod("default/p"));
        assert_eq!(c.node("a").unwrap().requested.milli_cpu, 0);
    }

    #[test]
    fn pods_on_unknown_nodes_keep_a_placeholder() {
        let mut c = Cache::default();
        c.add_bound_pod(Arc::new(pod("p", "1", "")), "later");
        assert_eq!(c.node_count(), 0);
        c.upsert_node(node_obj("later"));
        assert_eq!(c.node("later").unwrap().requested.milli_cpu, 1000);
        c.upsert_node(node_obj("b"));
        c.remove_node("later");
        assert_eq!(c.node_count(), 1);
        c.remove_pod("default/p");
        assert!(c.node("later").is_none());
        assert!(c.node("b").is_some(), "indexes stay right after a swap-remove");
    }
}
