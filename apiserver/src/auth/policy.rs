//! The default RBAC policy the apiserver creates at startup, mirroring Kubernetes'
//! `plugin/pkg/auth/authorizer/rbac/bootstrappolicy`: the user-facing roles (`cluster-admin`,
//! `admin`, `edit`, `view` and their `system:aggregate-to-*` parts), discovery and
//! self-review for everyone, and one role per rkube component bound to the identity that
//! component authenticates as. Every object carries the `kubernetes.io/bootstrapping:
//! rbac-defaults` label and the `rbac.authorization.kubernetes.io/autoupdate: "true"`
//! annotation, as in Kubernetes.
//!
//! Where rkube differs from Kubernetes it is said at the role: the controllers run under
//! one identity (`system:kube-controller-manager`) instead of one service account each,
//! cluster DNS authenticates as the user `system:kube-dns`, and kube-proxy watches the
//! pods of its node.

use serde_json::{json, Map, Value};

use apimachinery::rbac::{AGGREGATE_TO_ADMIN, AGGREGATE_TO_EDIT, AGGREGATE_TO_VIEW};

use super::rbac::{aggregate, RBAC_GROUP};
use super::{AUTHENTICATED_GROUP, MASTERS_GROUP, NODES_GROUP, UNAUTHENTICATED_GROUP};

/// The label every bootstrap object carries.
pub const BOOTSTRAPPING_LABEL: &str = "kubernetes.io/bootstrapping";
/// Its value.
pub const BOOTSTRAPPING_VALUE: &str = "rbac-defaults";
/// The annotation that lets the apiserver reconcile a bootstrap object at startup.
pub const AUTOUPDATE_ANNOTATION: &str = "rbac.authorization.kubernetes.io/autoupdate";

/// The group node bootstrap tokens authenticate in.
pub const BOOTSTRAPPERS_GROUP: &str = "system:bootstrappers";
/// The group whose members may read metrics and health details.
pub const MONITORING_GROUP: &str = "system:monitoring";
/// The users rkube's components authenticate as.
pub const KUBE_SCHEDULER_USER: &str = "system:kube-scheduler";
pub const KUBE_CONTROLLER_MANAGER_USER: &str = "system:kube-controller-manager";
pub const KUBE_PROXY_USER: &str = "system:kube-proxy";
pub const KUBE_DNS_USER: &str = "system:kube-dns";

const READ: &[&str] = &["get", "list", "watch"];
const WRITE: &[&str] = &["create", "update", "patch", "delete", "deletecollection"];
const READ_WRITE: &[&str] = &["get", "list", "watch", "create", "update", "patch", "delete", "deletecollection"];
const EVENT_WRITE: &[&str] = &["create", "patch", "update"];

const CORE: &str = "";
const APPS: &str = "apps";
const AUTHENTICATION: &str = "authentication.k8s.io";
const AUTHORIZATION: &str = "authorization.k8s.io";
const AUTOSCALING: &str = "autoscaling";
const BATCH: &str = "batch";
const CERTIFICATES: &str = "certificates.k8s.io";
const COORDINATION: &str = "coordination.k8s.io";
/// The signers the controller-manager serves (Kubernetes' built-in signer names).
pub const SIGNER_CLIENT: &str = "kubernetes.io/kube-apiserver-client";
pub const SIGNER_CLIENT_KUBELET: &str = "kubernetes.io/kube-apiserver-client-kubelet";
pub const SIGNER_KUBELET_SERVING: &str = "kubernetes.io/kubelet-serving";
/// The ClusterRoles whose `create` on a CSR subresource the approver checks: a node's
/// first client certificate (bootstrap), and its renewals.
const NODE_CLIENT_ROLE: &str = "system:certificates.k8s.io:certificatesigningrequests:nodeclient";
const SELF_NODE_CLIENT_ROLE: &str = "system:certificates.k8s.io:certificatesigningrequests:selfnodeclient";
const DISCOVERY: &str = "discovery.k8s.io";
const EVENTS: &str = "events.k8s.io";
const EXTENSIONS: &str = "extensions";
const METRICS: &str = "metrics.k8s.io";
const NETWORKING: &str = "networking.k8s.io";
const NODE: &str = "node.k8s.io";
const POLICY: &str = "policy";
const STORAGE: &str = "storage.k8s.io";

fn strs(items: &[&str]) -> Value {
    Value::Array(items.iter().map(|s| Value::String(s.to_string())).collect())
}

/// A resource rule in normal form (the key order of `apimachinery::rbac::normalize_rule`).
fn rule(verbs: &[&str], groups: &[&str], resources: &[&str]) -> Value {
    json!({"verbs": strs(verbs), "apiGroups": strs(groups), "resources": strs(resources)})
}

/// A resource rule limited to some names.
fn named(verbs: &[&str], groups: &[&str], resources: &[&str], names: &[&str]) -> Value {
    json!({"verbs": strs(verbs), "apiGroups": strs(groups), "resources": strs(resources), "resourceNames": strs(names)})
}

/// A non-resource rule.
fn urls(verbs: &[&str], urls: &[&str]) -> Value {
    json!({"verbs": strs(verbs), "nonResourceURLs": strs(urls)})
}

/// Events, in both API groups, as the components write them.
fn events_rule() -> Value {
    rule(EVENT_WRITE, &[CORE, EVENTS], &["events"])
}

fn metadata(name: &str, labels: &[(&str, &str)]) -> Value {
    let mut l = Map::new();
    l.insert(BOOTSTRAPPING_LABEL.into(), json!(BOOTSTRAPPING_VALUE));
    for (k, v) in labels {
        l.insert((*k).into(), json!(v));
    }
    json!({"name": name, "labels": l, "annotations": {AUTOUPDATE_ANNOTATION: "true"}})
}

fn cluster_role(name: &str, labels: &[(&str, &str)], rules: Vec<Value>) -> Value {
    json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": metadata(name, labels),
        "rules": rules,
    })
}

/// A ClusterRole made of those labelled `aggregate_label: "true"` (rules filled in later).
fn aggregated_role(name: &str, labels: &[(&str, &str)], aggregate_label: &str) -> Value {
    let mut role = cluster_role(name, labels, Vec::new());
    role["aggregationRule"] = json!({"clusterRoleSelectors": [{"matchLabels": {aggregate_label: "true"}}]});
    role
}

fn user(name: &str) -> Value {
    json!({"apiGroup": RBAC_GROUP, "kind": "User", "name": name})
}

fn group(name: &str) -> Value {
    json!({"apiGroup": RBAC_GROUP, "kind": "Group", "name": name})
}

/// A ClusterRoleBinding named after its ClusterRole, as Kubernetes names its defaults.
fn binding(role: &str, subjects: Vec<Value>) -> Value {
    json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": metadata(role, &[]),
        "roleRef": {"apiGroup": RBAC_GROUP, "kind": "ClusterRole", "name": role},
        "subjects": subjects,
    })
}

/// `system:aggregate-to-view`: read access to what a namespace holds, except what would
/// let the reader escalate (secrets, exec, proxy).
fn aggregate_to_view_rules() -> Vec<Value> {
    vec![
        rule(
            READ,
            &[CORE],
            &[
                "pods",
                "replicationcontrollers",
                "replicationcontrollers/scale",
                "serviceaccounts",
                "services",
                "services/status",
                "endpoints",
                "persistentvolumeclaims",
                "persistentvolumeclaims/status",
                "configmaps",
            ],
        ),
        rule(
            READ,
            &[CORE],
            &[
                "limitranges",
                "resourcequotas",
                "bindings",
                "events",
                "pods/status",
                "resourcequotas/status",
                "namespaces/status",
                "replicationcontrollers/status",
                "pods/log",
            ],
        ),
        // Reading namespaces at namespace scope means reading *this* namespace.
        rule(READ, &[CORE], &["namespaces"]),
        rule(READ, &[DISCOVERY], &["endpointslices"]),
        rule(
            READ,
            &[APPS],
            &[
                "controllerrevisions",
                "statefulsets",
                "statefulsets/status",
                "statefulsets/scale",
                "daemonsets",
                "daemonsets/status",
                "deployments",
                "deployments/status",
                "deployments/scale",
                "replicasets",
                "replicasets/status",
                "replicasets/scale",
            ],
        ),
        rule(READ, &[AUTOSCALING], &["horizontalpodautoscalers", "horizontalpodautoscalers/status"]),
        rule(READ, &[BATCH], &["jobs", "jobs/status", "cronjobs", "cronjobs/status"]),
        rule(
            READ,
            &[EXTENSIONS],
            &[
                "daemonsets",
                "daemonsets/status",
                "deployments",
                "deployments/scale",
                "deployments/status",
                "ingresses",
                "ingresses/status",
                "replicasets",
                "replicasets/scale",
                "replicasets/status",
                "replicationcontrollers/scale",
                "networkpolicies",
            ],
        ),
        rule(READ, &[POLICY], &["poddisruptionbudgets", "poddisruptionbudgets/status"]),
        rule(READ, &[NETWORKING], &["ingresses", "ingresses/status", "networkpolicies"]),
    ]
}

/// `system:aggregate-to-edit`: writing workloads and their configuration, secrets
/// included (and reading them), but not roles, bindings, quotas or status.
fn aggregate_to_edit_rules() -> Vec<Value> {
    vec![
        // Reading what can escalate.
        rule(READ, &[CORE], &["pods/attach", "pods/proxy", "pods/exec", "pods/portforward", "secrets", "services/proxy"]),
        rule(&["impersonate"], &[CORE], &["serviceaccounts"]),
        rule(WRITE, &[CORE], &["pods", "pods/attach", "pods/proxy", "pods/exec", "pods/portforward"]),
        rule(&["create"], &[CORE], &["pods/eviction"]),
        rule(
            WRITE,
            &[CORE],
            &[
                "replicationcontrollers",
                "replicationcontrollers/scale",
                "serviceaccounts",
                "services",
                "services/proxy",
                "persistentvolumeclaims",
                "configmaps",
                "secrets",
                "events",
            ],
        ),
        rule(&["create"], &[CORE], &["serviceaccounts/token"]),
        rule(
            WRITE,
            &[APPS],
            &[
                "statefulsets",
                "statefulsets/scale",
                "daemonsets",
                "deployments",
                "deployments/scale",
                "deployments/rollback",
                "replicasets",
                "replicasets/scale",
            ],
        ),
        rule(WRITE, &[AUTOSCALING], &["horizontalpodautoscalers"]),
        rule(WRITE, &[BATCH], &["jobs", "cronjobs"]),
        rule(
            WRITE,
            &[EXTENSIONS],
            &[
                "daemonsets",
                "deployments",
                "deployments/scale",
                "deployments/rollback",
                "ingresses",
                "replicasets",
                "replicasets/scale",
                "replicationcontrollers/scale",
                "networkpolicies",
            ],
        ),
        rule(WRITE, &[POLICY], &["poddisruptionbudgets"]),
        rule(WRITE, &[NETWORKING], &["networkpolicies", "ingresses"]),
        rule(READ_WRITE, &[COORDINATION], &["leases"]),
    ]
}

/// `system:aggregate-to-admin`: granting access within the namespace.
fn aggregate_to_admin_rules() -> Vec<Value> {
    vec![
        rule(&["create"], &[AUTHORIZATION], &["localsubjectaccessreviews"]),
        rule(READ_WRITE, &[RBAC_GROUP], &["roles", "rolebindings"]),
    ]
}

/// `system:kube-scheduler`: watching pods and what they depend on, binding them, and
/// leading through the `kube-scheduler` Lease (as Kubernetes' role, with
/// `system:volume-scheduler`'s storage class read folded in).
fn kube_scheduler_rules() -> Vec<Value> {
    vec![
        events_rule(),
        // Leader election: create the Lease, then only touch its own.
        rule(&["create"], &[COORDINATION], &["leases"]),
        named(&["get", "update"], &[COORDINATION], &["leases"], &["kube-scheduler"]),
        // Endpoints-based leader election, as older Kubernetes releases had it.
        rule(&["create"], &[CORE], &["endpoints"]),
        named(&["get", "update"], &[CORE], &["endpoints"], &["kube-scheduler"]),
        rule(READ, &[CORE], &["nodes"]),
        rule(&["get", "list", "watch", "delete"], &[CORE], &["pods"]),
        rule(&["create"], &[CORE], &["bindings", "pods/binding"]),
        rule(&["patch", "update"], &[CORE], &["pods/status"]),
        rule(READ, &[CORE], &["replicationcontrollers", "services"]),
        rule(READ, &[APPS, EXTENSIONS], &["replicasets"]),
        rule(READ, &[APPS], &["statefulsets"]),
        rule(READ, &[POLICY], &["poddisruptionbudgets"]),
        rule(READ, &[CORE], &["persistentvolumeclaims", "persistentvolumes"]),
        rule(&["create"], &[AUTHENTICATION], &["tokenreviews"]),
        rule(&["create"], &[AUTHORIZATION], &["subjectaccessreviews"]),
        rule(READ, &[STORAGE], &["csinodes"]),
        rule(READ, &[CORE], &["namespaces"]),
        rule(READ, &[STORAGE], &["csidrivers"]),
        rule(READ, &[STORAGE], &["csistoragecapacities"]),
        rule(READ, &[STORAGE], &["storageclasses"]),
    ]
}

/// `system:kube-controller-manager`. Kubernetes gives each controller its own service
/// account and role and this identity only enough to start them; rkube runs every
/// controller under this one identity, so its role is the union of what they need.
fn kube_controller_manager_rules() -> Vec<Value> {
    vec![
        events_rule(),
        // Leader election.
        rule(&["create"], &[COORDINATION], &["leases"]),
        named(&["get", "update"], &[COORDINATION], &["leases"], &["kube-controller-manager"]),
        // The workloads and what they create, with their status and scale subresources.
        // Explicit verbs rather than `*`, which would include `impersonate` on
        // serviceaccounts.
        rule(
            READ_WRITE,
            &[CORE],
            &[
                "pods",
                "pods/status",
                "pods/eviction",
                "replicationcontrollers",
                "replicationcontrollers/status",
                "replicationcontrollers/scale",
                "services",
                "services/status",
                "endpoints",
                "persistentvolumes",
                "persistentvolumes/status",
                "persistentvolumeclaims",
                "persistentvolumeclaims/status",
                "serviceaccounts",
                "configmaps",
                "events",
            ],
        ),
        rule(
            READ_WRITE,
            &[APPS],
            &[
                "deployments",
                "deployments/status",
                "deployments/scale",
                "replicasets",
                "replicasets/status",
                "replicasets/scale",
                "statefulsets",
                "statefulsets/status",
                "statefulsets/scale",
                "daemonsets",
                "daemonsets/status",
                "controllerrevisions",
            ],
        ),
        rule(READ_WRITE, &[BATCH], &["jobs", "jobs/status", "cronjobs", "cronjobs/status"]),
        rule(READ_WRITE, &[AUTOSCALING], &["horizontalpodautoscalers", "horizontalpodautoscalers/status"]),
        rule(READ_WRITE, &[POLICY], &["poddisruptionbudgets", "poddisruptionbudgets/status"]),
        rule(READ_WRITE, &[NETWORKING], &["ingresses", "ingresses/status"]),
        rule(READ_WRITE, &[DISCOVERY], &["endpointslices"]),
        rule(READ_WRITE, &[COORDINATION], &["leases"]),
        rule(READ_WRITE, &[EVENTS], &["events"]),
        // Node IPAM and lifecycle (podCIDRs, taints, conditions, removing gone nodes).
        rule(&["get", "list", "watch", "update", "patch", "delete"], &[CORE], &["nodes"]),
        rule(&["patch", "update"], &[CORE], &["nodes/status"]),
        // The namespace controller: status, and the finalize call that ends deletion.
        rule(&["get", "list", "watch", "update", "patch", "delete"], &[CORE], &["namespaces"]),
        rule(&["update"], &[CORE], &["namespaces/finalize", "namespaces/status"]),
        // Service account token and bootstrap token cleanup.
        rule(&["get", "list", "watch", "create", "update", "delete"], &[CORE], &["secrets"]),
        // The clusterrole-aggregation controller; `escalate` because an aggregated role
        // may hold rules this identity does not have.
        rule(&["get", "list", "watch", "update", "patch", "escalate"], &[RBAC_GROUP], &["clusterroles"]),
        // The persistent volume binder and local-path provisioner.
        rule(READ, &[STORAGE], &["storageclasses"]),
        // The horizontal pod autoscaler's resource metrics.
        rule(&["get", "list"], &[METRICS], &["pods"]),
        // The CSR approver and signer (their reads and subresource writes are in the
        // wildcard below): which signers' requests they may approve and sign.
        named(&["approve"], &[CERTIFICATES], &["signers"], &[SIGNER_CLIENT_KUBELET, SIGNER_KUBELET_SERVING]),
        named(&["sign"], &[CERTIFICATES], &["signers"], &[SIGNER_CLIENT, SIGNER_CLIENT_KUBELET, SIGNER_KUBELET_SERVING]),
        // Delegated authentication and authorization, as Kubernetes' role has.
        rule(&["create"], &[AUTHENTICATION], &["tokenreviews"]),
        rule(&["create"], &[AUTHORIZATION], &["subjectaccessreviews"]),
        // The garbage collector and the namespace controller act on every resource
        // discovery lists, custom resources included, so they need these verbs on all
        // resources in all groups (Kubernetes gives `system:controller:generic-garbage-
        // collector` and `system:controller:namespace-controller` the same wildcard):
        // the collector reads, patches owner references away and deletes; the namespace
        // controller lists and deletes a namespace's contents. No `create`.
        rule(&["get", "list", "watch", "update", "patch", "delete", "deletecollection"], &["*"], &["*"]),
    ]
}

/// `system:node`: what a kubelet needs (Kubernetes' role; as there, it is not bound by
/// default: nodes are authorized by the Node authorizer).
fn node_rules() -> Vec<Value> {
    vec![
        rule(&["create"], &[AUTHENTICATION], &["tokenreviews"]),
        rule(&["create"], &[AUTHORIZATION], &["subjectaccessreviews", "localsubjectaccessreviews"]),
        rule(READ, &[CORE], &["services"]),
        rule(&["create", "get", "list", "watch"], &[CORE], &["nodes"]),
        rule(&["update", "patch"], &[CORE], &["nodes/status"]),
        rule(&["update", "patch"], &[CORE], &["nodes"]),
        rule(EVENT_WRITE, &[CORE], &["events"]),
        rule(READ, &[CORE], &["pods"]),
        rule(&["create", "delete"], &[CORE], &["pods"]),
        rule(&["update", "patch"], &[CORE], &["pods/status"]),
        rule(&["create"], &[CORE], &["pods/eviction"]),
        rule(READ, &[CORE], &["secrets", "configmaps"]),
        rule(&["get"], &[CORE], &["persistentvolumeclaims", "persistentvolumes"]),
        rule(&["get"], &[CORE], &["endpoints"]),
        rule(&["create", "get", "list", "watch"], &[CERTIFICATES], &["certificatesigningrequests"]),
        rule(&["get", "create", "update", "patch", "delete"], &[COORDINATION], &["leases"]),
        rule(&["get"], &[STORAGE], &["volumeattachments"]),
        rule(&["create"], &[CORE], &["serviceaccounts/token"]),
        rule(&["get", "update", "patch"], &[CORE], &["persistentvolumeclaims/status"]),
        rule(READ, &[STORAGE], &["csidrivers"]),
        rule(&["get", "create", "update", "patch", "delete"], &[STORAGE], &["csinodes"]),
        rule(READ, &[NODE], &["runtimeclasses"]),
    ]
}

/// The default ClusterRoles. `admin`, `edit` and `view` carry both their aggregation
/// rules and the rules aggregation gives them from these defaults, so that they work
/// before the `clusterrole-aggregation` controller first runs (which then finds nothing
/// to change).
pub fn bootstrap_cluster_roles() -> Vec<Value> {
    let mut roles = vec![
        cluster_role("cluster-admin", &[], vec![rule(&["*"], &["*"], &["*"]), urls(&["*"], &["*"])]),
        cluster_role(
            "system:discovery",
            &[],
            vec![urls(
                &["get"],
                &["/api", "/api/*", "/apis", "/apis/*", "/healthz", "/livez", "/openapi", "/openapi/*", "/readyz", "/version", "/version/"],
            )],
        ),
        cluster_role(
            "system:basic-user",
            &[],
            vec![
                rule(&["create"], &[AUTHORIZATION], &["selfsubjectaccessreviews", "selfsubjectrulesreviews"]),
                rule(&["create"], &[AUTHENTICATION], &["selfsubjectreviews"]),
            ],
        ),
        cluster_role(
            "system:public-info-viewer",
            &[],
            vec![urls(&["get"], &["/healthz", "/livez", "/readyz", "/version", "/version/"])],
        ),
        cluster_role(
            "system:monitoring",
            &[],
            vec![urls(&["get"], &["/healthz", "/healthz/*", "/livez", "/livez/*", "/metrics", "/metrics/slis", "/readyz", "/readyz/*"])],
        ),
        aggregated_role("admin", &[], AGGREGATE_TO_ADMIN),
        aggregated_role("edit", &[(AGGREGATE_TO_ADMIN, "true")], AGGREGATE_TO_EDIT),
        aggregated_role("view", &[(AGGREGATE_TO_EDIT, "true")], AGGREGATE_TO_VIEW),
        cluster_role("system:aggregate-to-admin", &[(AGGREGATE_TO_ADMIN, "true")], aggregate_to_admin_rules()),
        cluster_role("system:aggregate-to-edit", &[(AGGREGATE_TO_EDIT, "true")], aggregate_to_edit_rules()),
        cluster_role("system:aggregate-to-view", &[(AGGREGATE_TO_VIEW, "true")], aggregate_to_view_rules()),
        cluster_role(
            "system:auth-delegator",
            &[],
            vec![
                rule(&["create"], &[AUTHENTICATION], &["tokenreviews"]),
                rule(&["create"], &[AUTHORIZATION], &["subjectaccessreviews"]),
            ],
        ),
        cluster_role("system:kube-scheduler", &[], kube_scheduler_rules()),
        cluster_role("system:kube-controller-manager", &[], kube_controller_manager_rules()),
        cluster_role("system:node", &[], node_rules()),
        cluster_role(
            "system:node-proxier",
            &[],
            vec![
                rule(READ, &[CORE], &["services", "endpoints", "nodes"]),
                rule(READ, &[DISCOVERY], &["endpointslices"]),
                events_rule(),
                // rkube's kube-proxy watches the pods of its node (Kubernetes' does not).
                rule(&["list", "watch"], &[CORE], &["pods"]),
            ],
        ),
        cluster_role(
            "system:kube-dns",
            &[],
            vec![
                rule(&["list", "watch"], &[CORE], &["endpoints", "services", "pods", "namespaces"]),
                rule(&["list", "watch"], &[DISCOVERY], &["endpointslices"]),
            ],
        ),
        cluster_role(
            "system:node-bootstrapper",
            &[],
            vec![rule(&["create", "get", "list", "watch"], &[CERTIFICATES], &["certificatesigningrequests"])],
        ),
        cluster_role(NODE_CLIENT_ROLE, &[], vec![rule(&["create"], &[CERTIFICATES], &["certificatesigningrequests/nodeclient"])]),
        cluster_role(SELF_NODE_CLIENT_ROLE, &[], vec![rule(&["create"], &[CERTIFICATES], &["certificatesigningrequests/selfnodeclient"])]),
    ];
    // Fill in the aggregated roles innermost first: view feeds edit, edit feeds admin.
    for name in ["view", "edit", "admin"] {
        let all: Vec<std::sync::Arc<Value>> = roles.iter().cloned().map(std::sync::Arc::new).collect();
        if let Some(role) = roles.iter_mut().find(|r| r["metadata"]["name"] == name) {
            if let Some(rules) = aggregate(role, &all) {
                role["rules"] = Value::Array(rules);
            }
        }
    }
    roles
}

/// The default ClusterRoleBindings.
pub fn bootstrap_cluster_role_bindings() -> Vec<Value> {
    vec![
        binding("cluster-admin", vec![group(MASTERS_GROUP)]),
        binding("system:monitoring", vec![group(MONITORING_GROUP)]),
        binding("system:discovery", vec![group(AUTHENTICATED_GROUP)]),
        binding("system:basic-user", vec![group(AUTHENTICATED_GROUP)]),
        binding("system:public-info-viewer", vec![group(AUTHENTICATED_GROUP), group(UNAUTHENTICATED_GROUP)]),
        binding("system:kube-scheduler", vec![user(KUBE_SCHEDULER_USER)]),
        binding("system:kube-controller-manager", vec![user(KUBE_CONTROLLER_MANAGER_USER)]),
        binding("system:node-proxier", vec![user(KUBE_PROXY_USER)]),
        binding("system:kube-dns", vec![user(KUBE_DNS_USER)]),
        binding("system:node-bootstrapper", vec![group(BOOTSTRAPPERS_GROUP)]),
        // As kubeadm binds them: bootstrap tokens may ask for node client certificates
        // (auto-approved), and nodes may renew their own.
        binding(NODE_CLIENT_ROLE, vec![group(BOOTSTRAPPERS_GROUP)]),
        binding(SELF_NODE_CLIENT_ROLE, vec![group(NODES_GROUP)]),
    ]
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::sync::Arc;

    use super::*;
    use crate::auth::rbac::Rbac;
    use crate::auth::{Attributes, Decision, UserInfo};

    fn names(objs: &[Value]) -> Vec<String> {
        objs.iter().filter_map(|o| o["metadata"]["name"].as_str().map(str::to_string)).collect()
    }

    fn policy() -> Rbac {
        let arcs = |v: Vec<Value>| v.into_iter().map(Arc::new).collect::<Vec<_>>();
        Rbac::compile(&[], &arcs(bootstrap_cluster_roles()), &[], &arcs(bootstrap_cluster_role_bindings()))
    }

    /// Whether `user` may `verb` the `(group, resource, subresource)` named `name` in `ns`.
    fn can(rbac: &Rbac, user: &str, verb: &str, ns: &str, (group, resource, sub): (&str, &str, &str), name: &str) -> bool {
        let attrs = Attributes {
            user: UserInfo { name: user.into(), groups: vec![AUTHENTICATED_GROUP.into()], ..Default::default() },
            verb: verb.into(),
            resource_request: true,
            namespace: ns.into(),
            api_group: group.into(),
            resource: resource.into(),
            subresource: sub.into(),
            name: name.into(),
            ..Default::default()
        };
        rbac.authorize(&attrs) == Decision::Allow
    }

    #[test]
    fn every_object_is_labelled_annotated_and_unique() {
        for objs in [bootstrap_cluster_roles(), bootstrap_cluster_role_bindings()] {
            let n = names(&objs);
            assert_eq!(n.iter().collect::<HashSet<_>>().len(), n.len(), "duplicate names in {n:?}");
            for o in &objs {
                assert_eq!(o["apiVersion"], "rbac.authorization.k8s.io/v1");
                assert_eq!(o["metadata"]["labels"][BOOTSTRAPPING_LABEL], BOOTSTRAPPING_VALUE, "{o}");
                assert_eq!(o["metadata"]["annotations"][AUTOUPDATE_ANNOTATION], "true", "{o}");
            }
        }
    }

    #[test]
    fn every_binding_refers_to_a_default_role() {
        let roles = names(&bootstrap_cluster_roles());
        for b in bootstrap_cluster_role_bindings() {
            let r = b["roleRef"]["name"].as_str().unwrap_or_default().to_string();
            assert!(roles.contains(&r), "{r}");
        }
    }

    #[test]
    fn aggregated_roles_are_prefilled_and_stable() {
        let roles = bootstrap_cluster_roles();
        let all: Vec<Arc<Value>> = roles.iter().cloned().map(Arc::new).collect();
        for name in ["admin", "edit", "view"] {
            let Some(role) = roles.iter().find(|r| r["metadata"]["name"] == name) else { panic!("{name} missing") };
            let rules = role["rules"].as_array().cloned().unwrap_or_default();
            assert!(!rules.is_empty(), "{name}");
            // What the aggregation controller computes equals what is stored.
            assert_eq!(aggregate(role, &all), Some(rules), "{name}");
        }
        assert_eq!(roles.iter().find(|r| r["metadata"]["name"] == "edit").map(|r| r["metadata"]["labels"][AGGREGATE_TO_ADMIN].clone()), Some(json!("true")));
        assert_eq!(roles.iter().find(|r| r["metadata"]["name"] == "view").map(|r| r["metadata"]["labels"][AGGREGATE_TO_EDIT].clone()), Some(json!("true")));
    }

    #[test]
    fn components_can_do_their_jobs() {
        let p = policy();
        let sched = KUBE_SCHEDULER_USER;
        assert!(can(&p, sched, "create", "default", ("", "pods", "binding"), "web-1"));
        assert!(can(&p, sched, "watch", "", ("", "pods", ""), ""));
        assert!(can(&p, sched, "update", "kube-system", (COORDINATION, "leases", ""), "kube-scheduler"));
        assert!(!can(&p, sched, "update", "kube-system", (COORDINATION, "leases", ""), "kube-controller-manager"));
        assert!(can(&p, sched, "list", "", (STORAGE, "storageclasses", ""), ""));
        assert!(!can(&p, sched, "get", "default", ("", "secrets", ""), "x"));

        let cm = KUBE_CONTROLLER_MANAGER_USER;
        assert!(can(&p, cm, "create", "default", ("", "pods", ""), ""));
        assert!(can(&p, cm, "create", "default", (APPS, "replicasets", ""), ""));
        assert!(can(&p, cm, "update", "", ("", "namespaces", "finalize"), "dev"));
        assert!(can(&p, cm, "patch", "", ("", "nodes", "status"), "n1"));
        assert!(can(&p, cm, "update", "", (RBAC_GROUP, "clusterroles", ""), "admin"));
        assert!(can(&p, cm, "deletecollection", "dev", ("example.com", "widgets", ""), ""));
        assert!(can(&p, cm, "create", "kube-system", ("", "secrets", ""), ""));
        assert!(!can(&p, cm, "create", "dev", ("example.com", "widgets", ""), ""));
        assert!(!can(&p, cm, "impersonate", "dev", ("", "serviceaccounts", ""), "default"));
        assert!(!can(&p, cm, "create", "", (RBAC_GROUP, "clusterrolebindings", ""), ""));

        assert!(can(&p, KUBE_PROXY_USER, "watch", "", (DISCOVERY, "endpointslices", ""), ""));
        assert!(!can(&p, KUBE_PROXY_USER, "create", "default", ("", "services", ""), ""));
        assert!(can(&p, KUBE_DNS_USER, "list", "", ("", "services", ""), ""));
        assert!(!can(&p, KUBE_DNS_USER, "get", "default", ("", "secrets", ""), "x"));
    }
}
