//! The resources this apiserver serves: for each one its group, version, names, scope,
//! verbs and subresources, as discovery and the REST handlers need them.

/// A served resource (one group/version/resource).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResourceInfo {
    pub group: &'static str,
    pub version: &'static str,
    /// Plural, lower-case resource name (`deployments`).
    pub plural: &'static str,
    pub singular: &'static str,
    pub kind: &'static str,
    pub namespaced: bool,
    pub short_names: &'static [&'static str],
    pub categories: &'static [&'static str],
    /// Subresources served under `<name>/<sub>`.
    pub subresources: &'static [Subresource],
    /// The resource in storage. Versions that are converted (autoscaling v1 and v2,
    /// events in two groups, see [`crate::conversion`]) share one.
    pub storage_resource: &'static str,
    /// Whether `metadata.generation` is tracked (bumped on spec changes).
    pub tracks_generation: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subresource {
    Status,
    Scale,
    Binding,
    Eviction,
    /// `namespaces/{name}/finalize`: replaces a namespace's `spec.finalizers` only.
    Finalize,
    /// `serviceaccounts/{name}/token`: the TokenRequest API.
    Token,
    /// `certificatesigningrequests/{name}/approval`: a CSR's Approved/Denied conditions.
    Approval,
    /// `pods/{name}/ephemeralcontainers`: adds a pod's ephemeral containers (`kubectl debug`).
    EphemeralContainers,
    /// Routed to the kubelet once it exists (log, exec, attach, portforward, proxy).
    NodeStream(&'static str),
}

impl Subresource {
    pub fn name(&self) -> &'static str {
        match self {
            Subresource::Status => "status",
            Subresource::Scale => "scale",
            Subresource::Binding => "binding",
            Subresource::Eviction => "eviction",
            Subresource::Finalize => "finalize",
            Subresource::Token => "token",
            Subresource::Approval => "approval",
            Subresource::EphemeralContainers => "ephemeralcontainers",
            Subresource::NodeStream(n) => n,
        }
    }
}

impl ResourceInfo {
    /// `deployments.apps`, or `pods` for the core group, as Kubernetes names a
    /// group-resource in messages.
    pub fn group_resource(&self) -> String {
        if self.group.is_empty() {
            self.plural.to_string()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }

    /// `apps/v1`, or `v1` for the core group.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    pub fn has_subresource(&self, sub: &str) -> bool {
        self.subresources.iter().any(|s| s.name() == sub)
    }

    pub fn has_status(&self) -> bool {
        self.subresources.contains(&Subresource::Status)
    }

    /// The verbs Kubernetes lists for this resource in discovery.
    pub fn verbs(&self) -> &'static [&'static str] {
        match (self.group, self.plural) {
            ("", "bindings") => &["create"],
            ("metrics.k8s.io", _) | ("", "componentstatuses") => &["get", "list"],
            ("authorization.k8s.io" | "authentication.k8s.io", _) => &["create"],
            _ => &["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"],
        }
    }

    /// The store key prefix of every object of this resource (ends with `/`).
    pub fn prefix(&self) -> String {
        format!("/registry/{}/", self.storage_resource)
    }

    /// The store key prefix of this resource in one namespace (or all, for `None`).
    pub fn namespace_prefix(&self, namespace: Option<&str>) -> String {
        match namespace {
            Some(ns) if self.namespaced => format!("/registry/{}/{}/", self.storage_resource, ns),
            _ => self.prefix(),
        }
    }

    /// The store key of one object.
    pub fn key(&self, namespace: Option<&str>, name: &str) -> String {
        match namespace {
            Some(ns) if self.namespaced => format!("/registry/{}/{}/{}", self.storage_resource, ns, name),
            _ => format!("/registry/{}/{}", self.storage_resource, name),
        }
    }
}

use Subresource::*;

const STATUS: &[Subresource] = &[Status];
const STATUS_SCALE: &[Subresource] = &[Status, Scale];
const NONE: &[Subresource] = &[];
const POD_SUBS: &[Subresource] = &[
    Status,
    EphemeralContainers,
    Binding,
    Eviction,
    NodeStream("log"),
    NodeStream("exec"),
    NodeStream("attach"),
    NodeStream("portforward"),
    NodeStream("proxy"),
];
const NODE_SUBS: &[Subresource] = &[Status, NodeStream("proxy")];
const NAMESPACE_SUBS: &[Subresource] = &[Status, Finalize];
const SERVICE_SUBS: &[Subresource] = &[Status, NodeStream("proxy")];

#[allow(clippy::too_many_arguments)]
const fn r(
    group: &'static str,
    version: &'static str,
    plural: &'static str,
    singular: &'static str,
    kind: &'static str,
    namespaced: bool,
    short_names: &'static [&'static str],
    categories: &'static [&'static str],
    subresources: &'static [Subresource],
    tracks_generation: bool,
) -> ResourceInfo {
    ResourceInfo {
        group,
        version,
        plural,
        singular,
        kind,
        namespaced,
        short_names,
        categories,
        subresources,
        storage_resource: plural,
        tracks_generation,
    }
}

const ALL: &[&str] = &["all"];
const NS: bool = true;
const CLUSTER: bool = false;

/// Every resource served, in discovery order.
pub static RESOURCES: &[ResourceInfo] = &[
    // core/v1
    r("", "v1", "bindings", "binding", "Binding", NS, &[], &[], NONE, false),
    r("", "v1", "configmaps", "configmap", "ConfigMap", NS, &["cm"], &[], NONE, false),
    r("", "v1", "endpoints", "endpoints", "Endpoints", NS, &["ep"], &[], NONE, false),
    r("", "v1", "events", "event", "Event", NS, &["ev"], &[], NONE, false),
    r("", "v1", "limitranges", "limitrange", "LimitRange", NS, &["limits"], &[], NONE, false),
    r("", "v1", "namespaces", "namespace", "Namespace", CLUSTER, &["ns"], &[], NAMESPACE_SUBS, false),
    r("", "v1", "nodes", "node", "Node", CLUSTER, &["no"], &[], NODE_SUBS, false),
    r("", "v1", "persistentvolumeclaims", "persistentvolumeclaim", "PersistentVolumeClaim", NS, &["pvc"], &[], STATUS, false),
    r("", "v1", "persistentvolumes", "persistentvolume", "PersistentVolume", CLUSTER, &["pv"], &[], STATUS, false),
    r("", "v1", "pods", "pod", "Pod", NS, &["po"], ALL, POD_SUBS, false),
    r("", "v1", "replicationcontrollers", "replicationcontroller", "ReplicationController", NS, &["rc"], ALL, STATUS_SCALE, true),
    r("", "v1", "resourcequotas", "resourcequota", "ResourceQuota", NS, &["quota"], &[], STATUS, false),
    r("", "v1", "secrets", "secret", "Secret", NS, &[], &[], NONE, false),
    r("", "v1", "serviceaccounts", "serviceaccount", "ServiceAccount", NS, &["sa"], &[], &[Token], false),
    r("", "v1", "services", "service", "Service", NS, &["svc"], ALL, SERVICE_SUBS, false),
    // apps/v1
    r("apps", "v1", "controllerrevisions", "controllerrevision", "ControllerRevision", NS, &[], &[], NONE, false),
    r("apps", "v1", "daemonsets", "daemonset", "DaemonSet", NS, &["ds"], ALL, STATUS, true),
    r("apps", "v1", "deployments", "deployment", "Deployment", NS, &["deploy"], ALL, STATUS_SCALE, true),
    r("apps", "v1", "replicasets", "replicaset", "ReplicaSet", NS, &["rs"], ALL, STATUS_SCALE, true),
    r("apps", "v1", "statefulsets", "statefulset", "StatefulSet", NS, &["sts"], ALL, STATUS_SCALE, true),
    // autoscaling
    hpa("v2"),
    hpa("v1"),
    // batch/v1
    r("batch", "v1", "cronjobs", "cronjob", "CronJob", NS, &["cj"], ALL, STATUS, true),
    r("batch", "v1", "jobs", "job", "Job", NS, &[], ALL, STATUS, true),
    // certificates.k8s.io/v1
    r("certificates.k8s.io", "v1", "certificatesigningrequests", "certificatesigningrequest", "CertificateSigningRequest", CLUSTER, &["csr"], &[], &[Approval, Status], false),
    // coordination.k8s.io/v1
    r("coordination.k8s.io", "v1", "leases", "lease", "Lease", NS, &[], &[], NONE, false),
    // discovery.k8s.io/v1
    r("discovery.k8s.io", "v1", "endpointslices", "endpointslice", "EndpointSlice", NS, &[], &[], NONE, false),
    // events.k8s.io/v1: the same objects as core events, in another shape
    ResourceInfo { storage_resource: "events", ..r("events.k8s.io", "v1", "events", "event", "Event", NS, &["ev"], &[], NONE, false) },
    // networking.k8s.io/v1
    r("networking.k8s.io", "v1", "ingressclasses", "ingressclass", "IngressClass", CLUSTER, &[], &[], NONE, true),
    r("networking.k8s.io", "v1", "ingresses", "ingress", "Ingress", NS, &["ing"], &[], STATUS, true),
    r("networking.k8s.io", "v1", "networkpolicies", "networkpolicy", "NetworkPolicy", NS, &["netpol"], &[], NONE, true),
    // policy/v1
    r("policy", "v1", "poddisruptionbudgets", "poddisruptionbudget", "PodDisruptionBudget", NS, &["pdb"], &[], STATUS, true),
    // rbac.authorization.k8s.io/v1
    r("rbac.authorization.k8s.io", "v1", "clusterrolebindings", "clusterrolebinding", "ClusterRoleBinding", CLUSTER, &[], &[], NONE, false),
    r("rbac.authorization.k8s.io", "v1", "clusterroles", "clusterrole", "ClusterRole", CLUSTER, &[], &[], NONE, false),
    r("rbac.authorization.k8s.io", "v1", "rolebindings", "rolebinding", "RoleBinding", NS, &[], &[], NONE, false),
    r("rbac.authorization.k8s.io", "v1", "roles", "role", "Role", NS, &[], &[], NONE, false),
    // scheduling.k8s.io/v1
    r("scheduling.k8s.io", "v1", "priorityclasses", "priorityclass", "PriorityClass", CLUSTER, &["pc"], &[], NONE, false),
    // storage.k8s.io/v1
    r("storage.k8s.io", "v1", "storageclasses", "storageclass", "StorageClass", CLUSTER, &["sc"], &[], NONE, false),
];

/// Both versions are served from one storage, in v2's shape.
const fn hpa(version: &'static str) -> ResourceInfo {
    r("autoscaling", version, "horizontalpodautoscalers", "horizontalpodautoscaler", "HorizontalPodAutoscaler", NS, &["hpa"], ALL, STATUS, true)
}

/// Resources served from memory by [`crate::metrics`], not from storage: listed in
/// discovery, never cached, stored or given an OpenAPI schema.
pub static METRICS_RESOURCES: &[ResourceInfo] = &[
    r("metrics.k8s.io", "v1beta1", "nodes", "", "NodeMetrics", CLUSTER, &[], &[], NONE, false),
    r("metrics.k8s.io", "v1beta1", "pods", "", "PodMetrics", NS, &[], &[], NONE, false),
];

/// `componentstatuses`, answered by [`crate::componentstatus`] from the components'
/// health on each request: listed in discovery, never cached or stored.
pub static COMPONENT_STATUS_RESOURCES: &[ResourceInfo] =
    &[r("", "v1", "componentstatuses", "componentstatus", "ComponentStatus", CLUSTER, &["cs"], &[], NONE, false)];

/// The create-only review resources, answered from the request by
/// [`crate::auth::reviews`]: listed in discovery, never cached or stored.
pub static REVIEW_RESOURCES: &[ResourceInfo] = &[
    r("authentication.k8s.io", "v1", "selfsubjectreviews", "", "SelfSubjectReview", CLUSTER, &[], &[], NONE, false),
    r("authentication.k8s.io", "v1", "tokenreviews", "", "TokenReview", CLUSTER, &[], &[], NONE, false),
    r("authorization.k8s.io", "v1", "localsubjectaccessreviews", "", "LocalSubjectAccessReview", NS, &[], &[], NONE, false),
    r("authorization.k8s.io", "v1", "selfsubjectaccessreviews", "", "SelfSubjectAccessReview", CLUSTER, &[], &[], NONE, false),
    r("authorization.k8s.io", "v1", "selfsubjectrulesreviews", "", "SelfSubjectRulesReview", CLUSTER, &[], &[], NONE, false),
    r("authorization.k8s.io", "v1", "subjectaccessreviews", "", "SubjectAccessReview", CLUSTER, &[], &[], NONE, false),
];

/// The review resource at `/apis/<group>/<version>/<plural>`.
pub fn lookup_review(group: &str, version: &str, plural: &str) -> Option<&'static ResourceInfo> {
    REVIEW_RESOURCES.iter().find(|r| r.group == group && r.version == version && r.plural == plural)
}

/// What discovery lists: the stored resources, the [`METRICS_RESOURCES`], the
/// [`COMPONENT_STATUS_RESOURCES`] and the [`REVIEW_RESOURCES`].
fn discoverable() -> impl Iterator<Item = &'static ResourceInfo> {
    RESOURCES.iter().chain(METRICS_RESOURCES.iter()).chain(COMPONENT_STATUS_RESOURCES.iter()).chain(REVIEW_RESOURCES.iter())
}

/// The group versions discovery lists (stored and in-memory resources), in order.
pub fn served_group_versions() -> Vec<(&'static str, Vec<&'static str>)> {
    group_versions_of(discoverable())
}

/// The resources of one group version discovery lists.
pub fn served_resources_of<'a>(group: &'a str, version: &'a str) -> impl Iterator<Item = &'static ResourceInfo> + 'a {
    discoverable().filter(move |r| r.group == group && r.version == version)
}

/// The group versions served, in the order discovery lists them; the first version of a
/// group is its preferred one.
pub fn group_versions() -> Vec<(&'static str, Vec<&'static str>)> {
    group_versions_of(RESOURCES.iter())
}

fn group_versions_of(resources: impl Iterator<Item = &'static ResourceInfo>) -> Vec<(&'static str, Vec<&'static str>)> {
    let mut out: Vec<(&'static str, Vec<&'static str>)> = Vec::new();
    for r in resources {
        match out.iter_mut().find(|(g, _)| *g == r.group) {
            Some((_, versions)) => {
                if !versions.contains(&r.version) {
                    versions.push(r.version);
                }
            }
            None => out.push((r.group, vec![r.version])),
        }
    }
    out
}

/// Resources of one group version.
pub fn resources_of<'a>(group: &'a str, version: &'a str) -> impl Iterator<Item = &'static ResourceInfo> + 'a {
    RESOURCES.iter().filter(move |r| r.group == group && r.version == version)
}

/// The resource at `/api[s]/<group>/<version>/<plural>`.
pub fn lookup(group: &str, version: &str, plural: &str) -> Option<&'static ResourceInfo> {
    RESOURCES.iter().find(|r| r.group == group && r.version == version && r.plural == plural)
}

/// The resource that stores a kind in a group (its preferred version).
pub fn by_kind(group: &str, kind: &str) -> Option<&'static ResourceInfo> {
    RESOURCES.iter().find(|r| r.group == group && r.kind == kind)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_finds_core_and_grouped_resources() {
        let pods = lookup("", "v1", "pods").expect("pods");
        assert_eq!(pods.key(Some("default"), "web"), "/registry/pods/default/web");
        assert_eq!(pods.group_resource(), "pods");
        let deploy = lookup("apps", "v1", "deployments").expect("deployments");
        assert_eq!(deploy.group_resource(), "deployments.apps");
        assert_eq!(deploy.api_version(), "apps/v1");
        let ns = lookup("", "v1", "namespaces").expect("namespaces");
        assert_eq!(ns.key(Some("ignored"), "kube-system"), "/registry/namespaces/kube-system");
    }

    #[test]
    fn autoscaling_prefers_v2() {
        let groups = group_versions();
        let autoscaling = groups.iter().find(|(g, _)| *g == "autoscaling").expect("autoscaling");
        assert_eq!(autoscaling.1, vec!["v2", "v1"]);
    }

    #[test]
    fn storage_prefixes_do_not_nest() {
        // A prefix that is a prefix of another resource's prefix would leak objects
        // between resources in ranges and watches.
        for a in RESOURCES {
            for b in RESOURCES {
                if a.storage_resource != b.storage_resource {
                    assert!(!b.prefix().starts_with(&a.prefix()), "{} inside {}", b.prefix(), a.prefix());
                }
            }
        }
    }
}
