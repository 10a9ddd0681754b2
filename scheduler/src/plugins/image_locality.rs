//! ImageLocality: prefers nodes that already have the pod's images (by
//! `node.status.images`), weighting each image by its size and by how widely it is
//! spread, between kube-scheduler's 23 MB and 1000 MB-per-container thresholds.

use std::collections::HashMap;

use crate::framework::{PluginState, Score, MAX_NODE_SCORE};
use crate::types::{NodeInfo, PodInfo};

pub const NAME: &str = "ImageLocality";
const MB: i64 = 1024 * 1024;
const MIN_THRESHOLD: i64 = 23 * MB;
const MAX_CONTAINER_THRESHOLD: i64 = 1000 * MB;

pub struct ImageLocality;

/// `busybox` → `docker.io/library/busybox:latest`, the way node status reports names.
pub fn normalize_image(name: &str) -> String {
    let (repo, tag) = match name.rsplit_once('@') {
        Some(_) => (name.to_string(), String::new()),
        None => {
            let last = name.rsplit('/').next().unwrap_or(name);
            if last.contains(':') { (name.to_string(), String::new()) } else { (name.to_string(), ":latest".into()) }
        }
    };
    let first = repo.split('/').next().unwrap_or_default();
    let has_registry = repo.contains('/') && (first.contains('.') || first.contains(':') || first == "localhost");
    let full = if has_registry {
        repo
    } else if repo.contains('/') {
        format!("docker.io/{repo}")
    } else {
        format!("docker.io/library/{repo}")
    };
    format!("{full}{tag}")
}

fn node_image_size(node: &NodeInfo, image: &str) -> Option<i64> {
    node.images.get(image).copied()
}

/// Per normalized image of the pod: how many nodes have it.
pub struct Spread {
    images: Vec<String>,
    nodes_with: HashMap<String, usize>,
    total_nodes: usize,
}

pub fn spread(pod: &PodInfo, nodes: &[NodeInfo]) -> Spread {
    let images: Vec<String> = pod.images.iter().map(|i| normalize_image(i)).collect();
    let mut nodes_with = HashMap::new();
    let mut total_nodes = 0;
    for node in nodes.iter().filter(|n| n.node.is_some()) {
        total_nodes += 1;
        if node.images.is_empty() {
            continue;
        }
        for image in &images {
            if node_image_size(node, image).is_some() {
                *nodes_with.entry(image.clone()).or_insert(0) += 1;
            }
        }
    }
    Spread { images, nodes_with, total_nodes }
}

pub fn score(s: &Spread, node: &NodeInfo) -> i64 {
    let mut sum = 0i64;
    for image in &s.images {
        if let Some(size) = node_image_size(node, image) {
            let with = s.nodes_with.get(image).copied().unwrap_or(0) as f64;
            sum += (size as f64 * with / s.total_nodes.max(1) as f64) as i64;
        }
    }
    let max = MAX_CONTAINER_THRESHOLD * s.images.len().max(1) as i64;
    let clamped = sum.clamp(MIN_THRESHOLD, max);
    MAX_NODE_SCORE * (clamped - MIN_THRESHOLD) / (max - MIN_THRESHOLD)
}

impl Score for ImageLocality {
    fn name(&self) -> &'static str {
        NAME
    }

    fn pre_score(&self, pod: &PodInfo, nodes: &[NodeInfo], _feasible: &[usize]) -> PluginState {
        Some(Box::new(spread(pod, nodes)))
    }

    fn score(&self, _pod: &PodInfo, node: &NodeInfo, state: &PluginState) -> i64 {
        state.as_ref().and_then(|s| s.downcast_ref::<Spread>()).map_or(0, |s| score(s, node))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::testing::{node, pod};

    #[test]
    fn image_names_normalize_like_node_status() {
        assert_eq!(normalize_image("busybox"), "docker.io/library/busybox:latest");
        assert_eq!(normalize_image("user/app:1"), "docker.io/user/app:1");
        assert_eq!(normalize_image("registry.local:5000/app"), "registry.local:5000/app:latest");
    }

    #[test]
    fn nodes_with_big_images_score_higher() {
        let mut with = node("a", "1", "1Gi", "10", &[]);
        with.images.insert("docker.io/library/busybox:latest".into(), 500 * MB);
        let without = node("b", "1", "1Gi", "10", &[]);
        let nodes = vec![with, without];
        let p = pod("p", "", "");
        let s = spread(&p, &nodes);
        assert!(score(&s, &nodes[0]) > 0);
        assert_eq!(score(&s, &nodes[1]), 0);
    }
}
