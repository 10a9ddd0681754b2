//! What the scheduler knows about a pod and a node, computed once when an object arrives
//! from a watch (requests, ports, affinity terms, taints, allocatable) so that a
//! scheduling cycle over thousands of nodes only compares numbers and borrowed strings.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use apimachinery::labels::Selector;
use apimachinery::quantity::Quantity;
use k8s_openapi::api::core::v1::{Node, Pod, PodAffinityTerm, Taint, Toleration};

/// The scheduler's default request for a container that asks for no CPU, used only for
/// scoring (Kubernetes' `DefaultMilliCPURequest`).
pub const DEFAULT_MILLI_CPU_REQUEST: i64 = 100;
/// The scheduler's default memory request for scoring (`DefaultMemoryRequest`, 200 MiB).
pub const DEFAULT_MEMORY_REQUEST: i64 = 200 * 1024 * 1024;

/// An amount of every resource the scheduler accounts for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resources {
    pub milli_cpu: i64,
    pub memory: i64,
    pub ephemeral_storage: i64,
    /// Extended resources (`example.com/gpu`, `hugepages-2Mi`…), by name.
    pub scalar: BTreeMap<String, i64>,
}

impl Resources {
    /// Reads a `requests`/`allocatable` map. CPU is counted in millicores, everything
    /// else in units; an unparsable quantity counts as zero.
    pub fn from_map(map: Option<&BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>>) -> Resources {
        let mut r = Resources::default();
        for (name, q) in map.into_iter().flatten() {
            let Ok(q) = Quantity::parse(&q.0) else { continue };
            match name.as_str() {
                "cpu" => r.milli_cpu = clamp(q.to_millis()),
                "memory" => r.memory = clamp(q.to_units()),
                "ephemeral-storage" => r.ephemeral_storage = clamp(q.to_units()),
                "pods" => {}
                other => {
                    r.scalar.insert(other.to_string(), clamp(q.to_units()));
                }
            }
        }
        r
    }

    pub fn add(&mut self, other: &Resources) {
        self.milli_cpu += other.milli_cpu;
        self.memory += other.memory;
        self.ephemeral_storage += other.ephemeral_storage;
        for (k, v) in &other.scalar {
            *self.scalar.entry(k.clone()).or_insert(0) += v;
        }
    }

    pub fn sub(&mut self, other: &Resources) {
        self.milli_cpu -= other.milli_cpu;
        self.memory -= other.memory;
        self.ephemeral_storage -= other.ephemeral_storage;
        for (k, v) in &other.scalar {
            *self.scalar.entry(k.clone()).or_insert(0) -= v;
        }
    }

    /// Each resource the larger of the two (the init-container rule).
    pub fn max_with(&mut self, other: &Resources) {
        self.milli_cpu = self.milli_cpu.max(other.milli_cpu);
        self.memory = self.memory.max(other.memory);
        self.ephemeral_storage = self.ephemeral_storage.max(other.ephemeral_storage);
        for (k, v) in &other.scalar {
            let e = self.scalar.entry(k.clone()).or_insert(0);
            *e = (*e).max(*v);
        }
    }
}

fn clamp(v: i128) -> i64 {
    i64::try_from(v).unwrap_or(if v < 0 { i64::MIN } else { i64::MAX })
}

/// A hostPort a pod occupies: `(ip, protocol, port)`, ip `0.0.0.0` for all addresses.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HostPort {
    pub ip: String,
    pub protocol: String,
    pub port: i32,
}

impl HostPort {
    /// Whether two host ports collide (same protocol and port, and either binds all
    /// addresses or both bind the same one).
    pub fn conflicts(&self, other: &HostPort) -> bool {
        self.port == other.port
            && self.protocol == other.protocol
            && (self.ip == other.ip || self.ip == "0.0.0.0" || other.ip == "0.0.0.0")
    }
}

/// A pod (anti-)affinity term with its selectors parsed.
#[derive(Debug, Clone)]
pub struct AffinityTerm {
    pub selector: Selector,
    /// Namespaces the term looks at; `None` means all namespaces.
    pub namespaces: Option<Vec<String>>,
    pub topology_key: String,
}

impl AffinityTerm {
    fn parse(term: &PodAffinityTerm, pod_namespace: &str) -> AffinityTerm {
        let selector = term
            .label_selector
            .as_ref()
            .and_then(|s| serde_json::to_value(s).ok())
            .and_then(|v| Selector::from_label_selector(&v).ok())
            .unwrap_or_else(Selector::nothing);
        let mut namespaces: Vec<String> = term.namespaces.clone().unwrap_or_default();
        // An empty namespaceSelector ({}) selects every namespace; a non-empty one needs
        // namespace labels, which this scheduler does not watch, so it adds nothing.
        let all = term
            .namespace_selector
            .as_ref()
            .is_some_and(|s| s.match_labels.as_ref().is_none_or(BTreeMap::is_empty) && s.match_expressions.as_ref().is_none_or(Vec::is_empty));
        if namespaces.is_empty() && term.namespace_selector.is_none() {
            namespaces.push(pod_namespace.to_string());
        }
        AffinityTerm { selector, namespaces: if all { None } else { Some(namespaces) }, topology_key: term.topology_key.clone() }
    }

    /// Whether `pod` is one of the pods this term selects.
    pub fn matches(&self, pod: &PodInfo) -> bool {
        let ns_ok = self.namespaces.as_ref().is_none_or(|ns| ns.iter().any(|n| n == &pod.namespace));
        ns_ok && self.selector.matches(&pod.labels)
    }
}

/// A pod as the scheduler sees it.
#[derive(Debug, Clone)]
pub struct PodInfo {
    /// `namespace/name`.
    pub key: String,
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub pod: Arc<Pod>,
    pub labels: BTreeMap<String, String>,
    pub priority: i32,
    /// Effective requests: max(sum of containers, each init container) + overhead.
    pub requests: Resources,
    /// CPU and memory with the scoring defaults for containers that request none.
    pub non_zero_milli_cpu: i64,
    pub non_zero_memory: i64,
    pub host_ports: Vec<HostPort>,
    pub tolerations: Vec<Toleration>,
    pub required_affinity: Vec<AffinityTerm>,
    pub required_anti_affinity: Vec<AffinityTerm>,
    pub preferred_affinity: Vec<(i32, AffinityTerm)>,
    pub preferred_anti_affinity: Vec<(i32, AffinityTerm)>,
    pub images: Vec<String>,
}

impl PodInfo {
    pub fn new(pod: Arc<Pod>) -> PodInfo {
        let namespace = pod.metadata.namespace.clone().unwrap_or_default();
        let name = pod.metadata.name.clone().unwrap_or_default();
        let spec = pod.spec.as_ref();
        let containers = spec.map(|s| s.containers.as_slice()).unwrap_or_default();
        let init_containers = spec.and_then(|s| s.init_containers.as_deref()).unwrap_or_default();
        let container_requests = |c: &k8s_openapi::api::core::v1::Container| {
            Resources::from_map(c.resources.as_ref().and_then(|r| r.requests.as_ref()))
        };
        let mut requests = Resources::default();
        let (mut nz_cpu, mut nz_mem) = (0, 0);
        for c in containers {
            let r = container_requests(c);
            nz_cpu += if r.milli_cpu == 0 { DEFAULT_MILLI_CPU_REQUEST } else { r.milli_cpu };
            nz_mem += if r.memory == 0 { DEFAULT_MEMORY_REQUEST } else { r.memory };
            requests.add(&r);
        }
        // Restartable init containers (sidecars) keep running: they add to what follows.
        let mut sidecars = Resources::default();
        let mut init_max = Resources::default();
        for c in init_containers {
            let r = container_requests(c);
            if c.restart_policy.as_deref() == Some("Always") {
                sidecars.add(&r);
                init_max.max_with(&sidecars);
            } else {
                let mut during = sidecars.clone();
                during.add(&r);
                init_max.max_with(&during);
            }
        }
        requests.add(&sidecars);
        nz_cpu += sidecars.milli_cpu;
        nz_mem += sidecars.memory;
        requests.max_with(&init_max);
        nz_cpu = nz_cpu.max(init_max.milli_cpu);
        nz_mem = nz_mem.max(init_max.memory);
        if let Some(overhead) = spec.and_then(|s| s.overhead.as_ref()) {
            let o = Resources::from_map(Some(overhead));
            requests.add(&o);
            nz_cpu += o.milli_cpu;
            nz_mem += o.memory;
        }
        let host_ports = containers
            .iter()
            .chain(init_containers.iter())
            .flat_map(|c| c.ports.iter().flatten())
            .filter_map(|p| {
                let port = p.host_port.filter(|p| *p > 0)?;
                Some(HostPort {
                    ip: p.host_ip.clone().filter(|ip| !ip.is_empty()).unwrap_or_else(|| "0.0.0.0".into()),
                    protocol: p.protocol.clone().unwrap_or_else(|| "TCP".into()),
                    port,
                })
            })
            .collect();
        let affinity = spec.and_then(|s| s.affinity.as_ref());
        let pa = affinity.and_then(|a| a.pod_affinity.as_ref());
        let paa = affinity.and_then(|a| a.pod_anti_affinity.as_ref());
        let required = |terms: Option<&Vec<PodAffinityTerm>>| terms.into_iter().flatten().map(|t| AffinityTerm::parse(t, &namespace)).collect::<Vec<_>>();
        let preferred = |terms: Option<&Vec<k8s_openapi::api::core::v1::WeightedPodAffinityTerm>>| {
            terms.into_iter().flatten().map(|t| (t.weight, AffinityTerm::parse(&t.pod_affinity_term, &namespace))).collect::<Vec<_>>()
        };
        PodInfo {
            key: format!("{namespace}/{name}"),
            uid: pod.metadata.uid.clone().unwrap_or_default(),
            labels: pod.metadata.labels.clone().unwrap_or_default(),
            priority: spec.and_then(|s| s.priority).unwrap_or(0),
            requests,
            non_zero_milli_cpu: nz_cpu,
            non_zero_memory: nz_mem,
            host_ports,
            tolerations: spec.and_then(|s| s.tolerations.clone()).unwrap_or_default(),
            required_affinity: required(pa.and_then(|a| a.required_during_scheduling_ignored_during_execution.as_ref())),
            required_anti_affinity: required(paa.and_then(|a| a.required_during_scheduling_ignored_during_execution.as_ref())),
            preferred_affinity: preferred(pa.and_then(|a| a.preferred_during_scheduling_ignored_during_execution.as_ref())),
            preferred_anti_affinity: preferred(paa.and_then(|a| a.preferred_during_scheduling_ignored_during_execution.as_ref())),
            images: containers.iter().filter_map(|c| c.image.clone()).collect(),
            namespace,
            name,
            pod,
        }
    }

    pub fn node_name(&self) -> Option<&str> {
        self.pod.spec.as_ref().and_then(|s| s.node_name.as_deref()).filter(|n| !n.is_empty())
    }

    /// Whether this pod carries any pod (anti-)affinity, which other pods' scheduling must
    /// then look at.
    pub fn has_affinity(&self) -> bool {
        !(self.required_affinity.is_empty()
            && self.required_anti_affinity.is_empty()
            && self.preferred_affinity.is_empty()
            && self.preferred_anti_affinity.is_empty())
    }
}

/// A node with the aggregates of the pods on it (bound and assumed).
#[derive(Debug, Clone)]
pub struct NodeInfo {
    pub name: String,
    /// `None` while pods are known to be bound to a node the watch has not shown yet.
    pub node: Option<Arc<Node>>,
    pub labels: BTreeMap<String, String>,
    pub allocatable: Resources,
    pub allowed_pods: i64,
    pub taints: Vec<Taint>,
    pub unschedulable: bool,
    /// Image name (every tag/digest name the node reports) → size in bytes.
    pub images: HashMap<String, i64>,
    pub requested: Resources,
    pub non_zero_milli_cpu: i64,
    pub non_zero_memory: i64,
    pub pods: Vec<Arc<PodInfo>>,
    pub used_ports: Vec<HostPort>,
    /// Pods here that carry pod (anti-)affinity terms.
    pub pods_with_affinity: usize,
}

impl NodeInfo {
    pub fn empty(name: &str) -> NodeInfo {
        NodeInfo {
            name: name.to_string(),
            node: None,
            labels: BTreeMap::new(),
            allocatable: Resources::default(),
            allowed_pods: 0,
            taints: Vec::new(),
            unschedulable: false,
            images: HashMap::new(),
            requested: Resources::default(),
            non_zero_milli_cpu: 0,
            non_zero_memory: 0,
            pods: Vec::new(),
            used_ports: Vec::new(),
            pods_with_affinity: 0,
        }
    }

    /// A node with no pods, from its object (tests and the cache use it).
    pub fn from_node(node: Arc<Node>) -> NodeInfo {
        let mut info = NodeInfo::empty(node.metadata.name.as_deref().unwrap_or_default());
        info.set_node(node);
        info
    }

    /// Replaces the node object, keeping the pods.
    pub fn set_node(&mut self, node: Arc<Node>) {
        let status = node.status.as_ref();
        let allocatable = status.and_then(|s| s.allocatable.as_ref().or(s.capacity.as_ref()));
        self.allocatable = Resources::from_map(allocatable);
        self.allowed_pods = allocatable
            .and_then(|a| a.get("pods"))
            .and_then(|q| Quantity::parse(&q.0).ok())
            .map_or(0, |q| clamp(q.to_units()));
        self.labels = node.metadata.labels.clone().unwrap_or_default();
        self.taints = node.spec.as_ref().and_then(|s| s.taints.clone()).unwrap_or_default();
        self.unschedulable = node.spec.as_ref().and_then(|s| s.unschedulable).unwrap_or(false);
        self.images = status
            .and_then(|s| s.images.as_ref())
            .into_iter()
            .flatten()
            .flat_map(|img| {
                let size = img.size_bytes.unwrap_or(0);
                img.names.iter().flatten().map(move |n| (n.clone(), size))
            })
            .collect();
        self.node = Some(node);
    }

    pub fn add_pod(&mut self, pod: Arc<PodInfo>) {
        self.requested.add(&pod.requests);
        self.non_zero_milli_cpu += pod.non_zero_milli_cpu;
        self.non_zero_memory += pod.non_zero_memory;
        self.used_ports.extend(pod.host_ports.iter().cloned());
        if pod.has_affinity() {
            self.pods_with_affinity += 1;
        }
        self.pods.push(pod);
    }

    /// Removes the pod with `key`; returns whether it was here.
    pub fn remove_pod(&mut self, key: &str) -> bool {
        let Some(i) = self.pods.iter().position(|p| p.key == key) else { return false };
        let pod = self.pods.swap_remove(i);
        self.requested.sub(&pod.requests);
        self.non_zero_milli_cpu -= pod.non_zero_milli_cpu;
        self.non_zero_memory -= pod.non_zero_memory;
        for hp in &pod.host_ports {
            if let Some(j) = self.used_ports.iter().position(|u| u == hp) {
                self.used_ports.swap_remove(j);
            }
        }
        if pod.has_affinity() {
            self.pods_with_affinity -= 1;
        }
        true
    }
}

/// Whether `toleration` tolerates `taint` (Kubernetes' `ToleratesTaint`).
pub fn tolerates(toleration: &Toleration, taint: &Taint) -> bool {
    if let Some(effect) = toleration.effect.as_deref().filter(|e| !e.is_empty()) {
        if effect != taint.effect {
            return false;
        }
    }
    let key = toleration.key.as_deref().unwrap_or_default();
    if !key.is_empty() && key != taint.key {
        return false;
    }
    match toleration.operator.as_deref().unwrap_or("Equal") {
        "Exists" => true,
        "Equal" | "" => toleration.value.as_deref().unwrap_or_default() == taint.value.as_deref().unwrap_or_default(),
        _ => false,
    }
}

/// Builders for unit tests of plugins.
#[cfg(test)]
pub mod testing {
    use super::*;
    use k8s_openapi::api::core::v1::{Container, NodeSpec, NodeStatus, PodSpec, ResourceRequirements};
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity as Q;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    pub fn node(name: &str, cpu: &str, memory: &str, pods: &str, labels: &[(&str, &str)]) -> NodeInfo {
        let alloc: BTreeMap<String, Q> = [("cpu", cpu), ("memory", memory), ("pods", pods)].iter().map(|(k, v)| (k.to_string(), Q(v.to_string()))).collect();
        let node = Node {
            metadata: ObjectMeta {
                name: Some(name.into()),
                labels: Some(labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()),
                ..Default::default()
            },
            spec: Some(NodeSpec::default()),
            status: Some(NodeStatus { allocatable: Some(alloc), ..Default::default() }),
        };
        NodeInfo::from_node(Arc::new(node))
    }

    pub fn pod_spec(name: &str, spec: PodSpec, labels: &[(&str, &str)]) -> PodInfo {
        let pod = Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("default".into()),
                labels: Some(labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()),
                ..Default::default()
            },
            spec: Some(spec),
            status: None,
        };
        PodInfo::new(Arc::new(pod))
    }

    pub fn container(cpu: &str, memory: &str) -> Container {
        let mut requests = BTreeMap::new();
        if !cpu.is_empty() {
            requests.insert("cpu".to_string(), Q(cpu.into()));
        }
        if !memory.is_empty() {
            requests.insert("memory".to_string(), Q(memory.into()));
        }
        Container { name: "c".into(), image: Some("busybox".into()), resources: Some(ResourceRequirements { requests: Some(requests), ..Default::default() }), ..Default::default() }
    }

    pub fn pod(name: &str, cpu: &str, memory: &str) -> PodInfo {
        pod_spec(name, PodSpec { containers: vec![container(cpu, memory)], ..Default::default() }, &[])
    }
}

#[cfg(test)]
mod tests {
    use super::testing::*;
    use k8s_openapi::api::core::v1::PodSpec;

    #[test]
    fn requests_take_the_larger_of_containers_and_each_init_container() {
        let p = pod_spec(
            "p",
            PodSpec {
                containers: vec![container("100m", "64Mi"), container("200m", "")],
                init_containers: Some(vec![container("500m", "10Mi")]),
                ..Default::default()
            },
            &[],
        );
        assert_eq!(p.requests.milli_cpu, 500);
        assert_eq!(p.requests.memory, 64 * 1024 * 1024);
        // The second container asks for no memory: scoring counts 200Mi for it.
        assert_eq!(p.non_zero_memory, 64 * 1024 * 1024 + super::DEFAULT_MEMORY_REQUEST);
    }

    #[test]
    fn a_node_sums_the_pods_on_it() {
        let mut n = node("n", "4", "8Gi", "110", &[]);
        let p = std::sync::Arc::new(pod("a", "1", "1Gi"));
        n.add_pod(p);
        assert_eq!(n.requested.milli_cpu, 1000);
        assert!(n.remove_pod("default/a"));
        assert_eq!(n.requested.milli_cpu, 0);
        assert!(!n.remove_pod("default/a"));
    }
}
