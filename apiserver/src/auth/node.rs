//! The Node authorizer and the NodeRestriction checks: a kubelet (user
//! `system:node:<name>` in group `system:nodes`) may read what the pods bound to its node
//! need — their Secrets, ConfigMaps, PersistentVolumeClaims and volumes, tokens of their
//! ServiceAccounts — and write only its own Node, its own Lease and the status of its own
//! pods, as Kubernetes' node authorizer and NodeRestriction admission allow.

use std::sync::Arc;

use serde_json::Value;

use super::{Attributes, Decision, NODES_GROUP, NODE_USER_PREFIX};

/// What the authorizer needs to know about pods and volumes (the watch caches).
pub trait Graph: Send + Sync {
    /// The pods bound to `node`.
    fn pods_on_node(&self, node: &str) -> Vec<Arc<Value>>;
    /// The node a pod is bound to ("" if unscheduled), or None if there is no such pod.
    fn pod_node(&self, namespace: &str, name: &str) -> Option<String>;
    /// The PersistentVolumeClaim `namespace/name`.
    fn claim(&self, namespace: &str, name: &str) -> Option<Arc<Value>>;
}

/// The node a user is, if it is a node.
pub fn node_name(attrs: &Attributes) -> Option<&str> {
    if !attrs.user.in_group(NODES_GROUP) {
        return None;
    }
    attrs.user.name.strip_prefix(NODE_USER_PREFIX).filter(|n| !n.is_empty())
}

fn is_read(verb: &str) -> bool {
    matches!(verb, "get" | "list" | "watch")
}

/// Decides a node's request; `NoOpinion` for users that are not nodes.
pub fn authorize(attrs: &Attributes, graph: &dyn Graph) -> Decision {
    let Some(node) = node_name(attrs) else { return Decision::NoOpinion(String::new()) };
    let no_relationship = || Decision::NoOpinion(format!("no relationship found between node '{node}' and this object"));
    let verb = attrs.verb.as_str();
    if !attrs.resource_request {
        let own_summary = format!("/rkube/v1/nodes/{node}/stats/summary");
        if attrs.path.trim_end_matches('/') == own_summary && matches!(verb, "put" | "post") {
            return Decision::Allow;
        }
        return Decision::NoOpinion(String::new());
    }
    let allow_if = |ok: bool| if ok { Decision::Allow } else { no_relationship() };
    match (attrs.api_group.as_str(), attrs.resource.as_str(), attrs.subresource.as_str()) {
        ("", kind @ ("secrets" | "configmaps" | "persistentvolumeclaims"), "") if is_read(verb) => {
            if attrs.name.is_empty() {
                return no_relationship();
            }
            allow_if(pods_reference(&graph.pods_on_node(node), kind, &attrs.namespace, &attrs.name))
        }
        ("", "persistentvolumes", "") if verb == "get" => {
            let pods = graph.pods_on_node(node);
            let bound = pods.iter().any(|p| {
                let ns = p.pointer("/metadata/namespace").and_then(Value::as_str).unwrap_or_default();
                claims_of(p).iter().any(|claim| {
                    graph.claim(ns, claim).is_some_and(|pvc| pvc.pointer("/spec/volumeName").and_then(Value::as_str) == Some(attrs.name.as_str()))
                })
            });
            allow_if(bound)
        }
        ("", "serviceaccounts", "token") if verb == "create" => {
            let used = graph.pods_on_node(node).iter().any(|p| {
                p.pointer("/metadata/namespace").and_then(Value::as_str) == Some(attrs.namespace.as_str())
                    && service_account_of(p) == attrs.name
            });
            allow_if(used)
        }
        ("", "pods", "") => match verb {
            "get" | "list" | "watch" => Decision::Allow,
            // Mirror pods; NodeRestriction checks the body names this node.
            "create" => Decision::Allow,
            "update" | "patch" | "delete" => allow_if(graph.pod_node(&attrs.namespace, &attrs.name).as_deref() == Some(node)),
            _ => no_relationship(),
        },
        ("", "pods", "status") if matches!(verb, "get" | "update" | "patch") => {
            allow_if(graph.pod_node(&attrs.namespace, &attrs.name).as_deref() == Some(node))
        }
        ("", "pods", "eviction") if verb == "create" => Decision::Allow,
        ("", "nodes", "") => match verb {
            "get" | "list" | "watch" => Decision::Allow,
            // NodeRestriction checks that a node creates only itself.
            "create" => Decision::Allow,
            "update" | "patch" | "delete" => allow_if(attrs.name == node),
            _ => no_relationship(),
        },
        ("", "nodes", "status") if matches!(verb, "get" | "update" | "patch") => allow_if(attrs.name == node),
        ("coordination.k8s.io", "leases", "") if attrs.namespace == "kube-node-lease" => match verb {
            "create" => Decision::Allow,
            "get" | "update" | "patch" | "delete" | "watch" | "list" => allow_if(attrs.name == node),
            _ => no_relationship(),
        },
        ("" | "events.k8s.io", "events", "") if matches!(verb, "create" | "update" | "patch") => Decision::Allow,
        ("", "services" | "endpoints" | "namespaces", "") | ("discovery.k8s.io", "endpointslices", "") if is_read(verb) => Decision::Allow,
        ("node.k8s.io", "runtimeclasses", "") | ("storage.k8s.io", "csidrivers" | "csinodes" | "storageclasses" | "volumeattachments", "") if is_read(verb) => {
            Decision::Allow
        }
        ("certificates.k8s.io", "certificatesigningrequests", "") if matches!(verb, "create" | "get" | "list" | "watch") => Decision::Allow,
        ("authentication.k8s.io", "tokenreviews", "") | ("authorization.k8s.io", "subjectaccessreviews", "") if verb == "create" => Decision::Allow,
        _ => Decision::NoOpinion(String::new()),
    }
}

/// What a node may create: only itself, its own Lease, and mirror pods bound to itself
/// (Kubernetes' NodeRestriction admission). `Err` carries the reason for a 403.
pub fn check_create(node: &str, group: &str, resource: &str, body: &Value) -> Result<(), String> {
    let name = body.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default();
    match (group, resource) {
        ("", "nodes") if name != node => Err(format!("node \"{node}\" is not allowed to modify node \"{name}\"")),
        ("coordination.k8s.io", "leases") if name != node => Err(format!("can only access node lease with the same name as the requesting node")),
        ("", "pods") => {
            let bound = body.pointer("/spec/nodeName").and_then(Value::as_str).unwrap_or_default();
            let mirror = body.pointer("/metadata/annotations/kubernetes.io~1config.mirror").is_some();
            if !mirror {
                return Err(format!("pod does not have \"kubernetes.io/config.mirror\" annotation, node \"{node}\" can only create mirror pods"));
            }
            if bound != node {
                return Err(format!("node \"{node}\" can only create pods with spec.nodeName set to itself"));
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

fn service_account_of(pod: &Value) -> &str {
    pod.pointer("/spec/serviceAccountName").and_then(Value::as_str).filter(|s| !s.is_empty()).unwrap_or("default")
}

fn claims_of(pod: &Value) -> Vec<String> {
    let mut out = Vec::new();
    for v in pod.pointer("/spec/volumes").and_then(Value::as_array).into_iter().flatten() {
        if let Some(c) = v.pointer("/persistentVolumeClaim/claimName").and_then(Value::as_str) {
            out.push(c.to_string());
        }
    }
    out
}

/// Whether any of `pods` in `namespace` uses the `kind` object `name`: as a volume, a
/// projected volume source, an env or envFrom source, or an image pull secret.
fn pods_reference(pods: &[Arc<Value>], kind: &str, namespace: &str, name: &str) -> bool {
    pods.iter()
        .filter(|p| p.pointer("/metadata/namespace").and_then(Value::as_str) == Some(namespace))
        .any(|p| references(p, kind).iter().any(|n| n == name))
}

fn references(pod: &Value, kind: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut push = |v: Option<&Value>| {
        if let Some(s) = v.and_then(Value::as_str) {
            out.push(s.to_string());
        }
    };
    let spec = pod.get("spec").unwrap_or(&Value::Null);
    for v in spec.get("volumes").and_then(Value::as_array).into_iter().flatten() {
        match kind {
            "secrets" => push(v.pointer("/secret/secretName")),
            "configmaps" => push(v.pointer("/configMap/name")),
            "persistentvolumeclaims" => push(v.pointer("/persistentVolumeClaim/claimName")),
            _ => {}
        }
        for source in v.pointer("/projected/sources").and_then(Value::as_array).into_iter().flatten() {
            match kind {
                "secrets" => push(source.pointer("/secret/name")),
                "configmaps" => push(source.pointer("/configMap/name")),
                _ => {}
            }
        }
    }
    if kind == "secrets" {
        for s in spec.get("imagePullSecrets").and_then(Value::as_array).into_iter().flatten() {
            push(s.get("name"));
        }
    }
    for list in ["containers", "initContainers", "ephemeralContainers"] {
        for c in spec.get(list).and_then(Value::as_array).into_iter().flatten() {
            for e in c.get("env").and_then(Value::as_array).into_iter().flatten() {
                match kind {
                    "secrets" => push(e.pointer("/valueFrom/secretKeyRef/name")),
                    "configmaps" => push(e.pointer("/valueFrom/configMapKeyRef/name")),
                    _ => {}
                }
            }
            for e in c.get("envFrom").and_then(Value::as_array).into_iter().flatten() {
                match kind {
                    "secrets" => push(e.pointer("/secretRef/name")),
                    "configmaps" => push(e.pointer("/configMapRef/name")),
                    _ => {}
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::UserInfo;
    use serde_json::json;

    struct Pods(Vec<Arc<Value>>);

    impl Graph for Pods {
        fn pods_on_node(&self, node: &str) -> Vec<Arc<Value>> {
            self.0.iter().filter(|p| p.pointer("/spec/nodeName").and_then(Value::as_str) == Some(node)).cloned().collect()
        }
        fn pod_node(&self, namespace: &str, name: &str) -> Option<String> {
            self.0
                .iter()
                .find(|p| p.pointer("/metadata/namespace").and_then(Value::as_str) == Some(namespace) && p.pointer("/metadata/name").and_then(Value::as_str) == Some(name))
                .map(|p| p.pointer("/spec/nodeName").and_then(Value::as_str).unwrap_or_default().to_string())
        }
        fn claim(&self, _: &str, name: &str) -> Option<Arc<Value>> {
            (name == "data").then(|| Arc::new(json!({"spec": {"volumeName": "pv-1"}})))
        }
    }

    fn graph() -> Pods {
        Pods(vec![
            Arc::new(json!({"metadata": {"name": "a", "namespace": "ns"}, "spec": {"nodeName": "n1", "serviceAccountName": "app",
                "volumes": [{"name": "s", "secret": {"secretName": "a-secret"}}, {"name": "d", "persistentVolumeClaim": {"claimName": "data"}}],
                "containers": [{"name": "c", "env": [{"name": "X", "valueFrom": {"configMapKeyRef": {"name": "a-config", "key": "x"}}}]}]}})),
            Arc::new(json!({"metadata": {"name": "b", "namespace": "ns"}, "spec": {"nodeName": "n2",
                "volumes": [{"name": "s", "secret": {"secretName": "b-secret"}}], "containers": [{"name": "c"}]}})),
        ])
    }

    fn attrs(node: &str, verb: &str, group: &str, resource: &str, sub: &str, ns: &str, name: &str) -> Attributes {
        Attributes {
            user: UserInfo { name: format!("system:node:{node}"), groups: vec!["system:nodes".into(), "system:authenticated".into()], ..Default::default() },
            verb: verb.into(),
            resource_request: true,
            namespace: ns.into(),
            api_group: group.into(),
            resource: resource.into(),
            subresource: sub.into(),
            name: name.into(),
            ..Default::default()
        }
    }

    #[test]
    fn a_node_reads_only_what_its_pods_use() {
        let g = graph();
        assert_eq!(authorize(&attrs("n1", "get", "", "secrets", "", "ns", "a-secret"), &g), Decision::Allow);
        assert!(matches!(authorize(&attrs("n1", "get", "", "secrets", "", "ns", "b-secret"), &g), Decision::NoOpinion(r) if r.contains("no relationship")));
        assert!(matches!(authorize(&attrs("n1", "list", "", "secrets", "", "ns", ""), &g), Decision::NoOpinion(_)));
        assert_eq!(authorize(&attrs("n1", "get", "", "configmaps", "", "ns", "a-config"), &g), Decision::Allow);
        assert_eq!(authorize(&attrs("n1", "get", "", "persistentvolumes", "", "", "pv-1"), &g), Decision::Allow);
        assert!(matches!(authorize(&attrs("n2", "get", "", "persistentvolumes", "", "", "pv-1"), &g), Decision::NoOpinion(_)));
        assert_eq!(authorize(&attrs("n1", "create", "", "serviceaccounts", "token", "ns", "app"), &g), Decision::Allow);
        assert!(matches!(authorize(&attrs("n2", "create", "", "serviceaccounts", "token", "ns", "app"), &g), Decision::NoOpinion(_)));
    }

    #[test]
    fn a_node_writes_only_itself_and_its_pods() {
        let g = graph();
        assert_eq!(authorize(&attrs("n1", "patch", "", "nodes", "status", "", "n1"), &g), Decision::Allow);
        assert!(matches!(authorize(&attrs("n1", "patch", "", "nodes", "status", "", "n2"), &g), Decision::NoOpinion(_)));
        assert_eq!(authorize(&attrs("n1", "patch", "", "pods", "status", "ns", "a"), &g), Decision::Allow);
        assert!(matches!(authorize(&attrs("n1", "patch", "", "pods", "status", "ns", "b"), &g), Decision::NoOpinion(_)));
        assert_eq!(authorize(&attrs("n1", "update", "coordination.k8s.io", "leases", "", "kube-node-lease", "n1"), &g), Decision::Allow);
        assert!(matches!(authorize(&attrs("n1", "update", "coordination.k8s.io", "leases", "", "kube-node-lease", "n2"), &g), Decision::NoOpinion(_)));
        assert!(matches!(authorize(&attrs("n1", "create", "", "configmaps", "", "ns", ""), &g), Decision::NoOpinion(_)));
        assert!(check_create("n1", "", "nodes", &json!({"metadata": {"name": "n1"}})).is_ok());
        assert!(check_create("n1", "", "nodes", &json!({"metadata": {"name": "n2"}})).is_err());
        assert!(check_create("n1", "", "pods", &json!({"metadata": {"name": "p"}, "spec": {"nodeName": "n1"}})).is_err());
    }

    #[test]
    fn other_users_get_no_opinion() {
        let mut a = attrs("n1", "get", "", "secrets", "", "ns", "a-secret");
        a.user.groups = vec!["system:authenticated".into()];
        assert_eq!(authorize(&a, &graph()), Decision::NoOpinion(String::new()));
    }
}
