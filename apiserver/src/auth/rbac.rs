//! The RBAC authorizer, with the semantics of Kubernetes' `plugin/pkg/auth/authorizer/rbac`
//! and `pkg/apis/rbac`: Roles, ClusterRoles, RoleBindings and ClusterRoleBindings (JSON
//! objects from the watch caches) compiled into an index by subject, asked per request.
//!
//! - A ClusterRoleBinding grants its ClusterRole's rules everywhere; a RoleBinding grants
//!   its Role's (same namespace) or ClusterRole's rules only in its own namespace.
//! - Subjects are `User` (the user's name), `Group` (one of the user's groups) and
//!   `ServiceAccount` (the user `system:serviceaccount:<namespace>:<name>`; in a
//!   RoleBinding a subject without a namespace means the binding's namespace).
//! - Resource rules match on verb, API group, resource (`*`, `pods`, `pods/log`,
//!   `*/scale`) and resource name; non-resource rules on verb and URL (exact, `*`, or a
//!   prefix ending in `*`). Non-resource requests have no namespace, so only
//!   ClusterRoleBindings can grant them.
//! - RBAC only allows: a request no rule matches gets `NoOpinion`.
//!
//! A ClusterRole's `rules` are used as stored: filling in an aggregated role is the
//! `clusterrole-aggregation` controller's job ([`aggregate`] computes the same result).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use serde_json::Value;
use tracing::{debug, trace};

use super::{Attributes, Decision, UserInfo, SERVICE_ACCOUNT_PREFIX};

/// The default policy lives in [`super::policy`]; re-exported here for callers that
/// bootstrap RBAC objects.
pub use super::policy::{bootstrap_cluster_role_bindings, bootstrap_cluster_roles};

/// The API group of the RBAC kinds, the only group a `roleRef` may name.
pub const RBAC_GROUP: &str = "rbac.authorization.k8s.io";

/// Why an RBAC object was left out of the compiled policy, or a binding grants nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RbacError {
    /// The object has no `metadata.name` (or, for namespaced kinds, no namespace).
    #[error("{kind} without a name or namespace")]
    MissingIdentity { kind: &'static str },
    /// A binding's `roleRef` is missing, or names a kind or group RBAC does not have.
    #[error("{kind} {name:?}: unsupported role reference {reference}")]
    RoleRef { kind: &'static str, name: String, reference: String },
    /// A binding refers to a Role or ClusterRole that does not exist (Kubernetes' message).
    #[error("{resource}.rbac.authorization.k8s.io {name:?} not found")]
    RoleNotFound { resource: &'static str, name: String },
}

/// One `PolicyRule`, ready to match.
#[derive(Debug)]
struct Rule {
    verbs: Vec<String>,
    api_groups: Vec<String>,
    resources: Vec<String>,
    resource_names: Vec<String>,
    non_resource_urls: Vec<String>,
    /// The rule in normal form, for [`Rbac::rules_for`].
    json: Value,
}

fn strings(rule: &Value, key: &str) -> Vec<String> {
    rule.get(key)
        .and_then(Value::as_array)
        .map(|items| items.iter().filter_map(Value::as_str).map(str::to_string).collect())
        .unwrap_or_default()
}

impl Rule {
    fn parse(rule: &Value) -> Option<Rule> {
        let json = apimachinery::rbac::normalize_rule(rule)?;
        Some(Rule {
            verbs: strings(&json, "verbs"),
            api_groups: strings(&json, "apiGroups"),
            resources: strings(&json, "resources"),
            resource_names: strings(&json, "resourceNames"),
            non_resource_urls: strings(&json, "nonResourceURLs"),
            json,
        })
    }

    fn is_non_resource(&self) -> bool {
        !self.non_resource_urls.is_empty()
    }

    /// Kubernetes' `RuleAllows`.
    fn allows(&self, attrs: &Attributes) -> bool {
        if !self.verbs.iter().any(|v| v == "*" || *v == attrs.verb) {
            return false;
        }
        if attrs.resource_request {
            self.api_groups.iter().any(|g| g == "*" || *g == attrs.api_group)
                && self.resource_matches(&attrs.resource, &attrs.subresource)
                && self.resource_name_matches(&attrs.name)
        } else {
            self.non_resource_urls.iter().any(|u| url_matches(u, &attrs.path))
        }
    }

    /// `*`, the exact `resource` or `resource/subresource`, or `*/subresource`.
    fn resource_matches(&self, resource: &str, subresource: &str) -> bool {
        self.resources.iter().any(|r| {
            if r == "*" {
                return true;
            }
            if subresource.is_empty() {
                return r == resource;
            }
            match r.split_once('/') {
                Some((res, sub)) => sub == subresource && (res == resource || res == "*"),
                None => false,
            }
        })
    }

    /// An empty list allows any name; otherwise the request must name one of them (so a
    /// `list` or `create` without a name never matches).
    fn resource_name_matches(&self, name: &str) -> bool {
        self.resource_names.is_empty() || (!name.is_empty() && self.resource_names.iter().any(|n| n == name))
    }
}

/// Kubernetes' `NonResourceURLMatches`: `*`, exact, or a prefix followed by `*`.
fn url_matches(rule_url: &str, path: &str) -> bool {
    if rule_url == "*" || rule_url == path {
        return true;
    }
    match rule_url.strip_suffix('*') {
        Some(prefix) => path.starts_with(prefix.trim_end_matches('*')),
        None => false,
    }
}

/// The rules of one role, shared by every binding that refers to it.
type Rules = Arc<[Rule]>;

fn compile_rules(role: &Value) -> Rules {
    role.get("rules")
        .and_then(Value::as_array)
        .map(|rs| rs.iter().filter_map(Rule::parse).collect::<Vec<_>>())
        .unwrap_or_default()
        .into()
}

/// What one binding grants: its role's rules, or why it grants nothing.
#[derive(Debug)]
struct Grant {
    /// `ClusterRoleBinding "x" of ClusterRole "y"`, for the trace.
    source: String,
    rules: Result<Rules, RbacError>,
}

/// The bindings of one scope (the cluster, or one namespace), indexed by subject.
#[derive(Debug, Default)]
struct Scope {
    grants: Vec<Grant>,
    /// User name (or service account user name) → indices into `grants`.
    users: HashMap<String, Vec<usize>>,
    /// Group name → indices into `grants`.
    groups: HashMap<String, Vec<usize>>,
}

impl Scope {
    /// The grants whose subjects include `user`, each once, in binding-name order.
    fn grants_for<'a>(&'a self, user: &UserInfo) -> impl Iterator<Item = &'a Grant> + 'a {
        let mut ids = BTreeSet::new();
        ids.extend(self.users.get(&user.name).into_iter().flatten().copied());
        for g in &user.groups {
            ids.extend(self.groups.get(g).into_iter().flatten().copied());
        }
        ids.into_iter().filter_map(|i| self.grants.get(i))
    }

    fn add(&mut self, binding: &Value, source: String, rules: Result<Rules, RbacError>, namespace: Option<&str>) {
        let id = self.grants.len();
        let mut bound = false;
        for subject in binding.get("subjects").and_then(Value::as_array).into_iter().flatten() {
            let field = |k: &str| subject.get(k).and_then(Value::as_str).unwrap_or_default();
            let name = field("name");
            if name.is_empty() {
                continue;
            }
            let key = match field("kind") {
                "User" => (&mut self.users, name.to_string()),
                "Group" => (&mut self.groups, name.to_string()),
                "ServiceAccount" => {
                    let ns = Some(field("namespace")).filter(|n| !n.is_empty()).or(namespace);
                    let Some(ns) = ns else { continue };
                    (&mut self.users, format!("{SERVICE_ACCOUNT_PREFIX}{ns}:{name}"))
                }
                other => {
                    debug!(binding = %source, kind = other, "RBAC: subject of unknown kind ignored");
                    continue;
                }
            };
            let (map, name) = key;
            let ids = map.entry(name).or_default();
            if ids.last() != Some(&id) {
                ids.push(id);
            }
            bound = true;
        }
        if bound {
            self.grants.push(Grant { source, rules });
        }
    }
}

/// The compiled RBAC policy: immutable, rebuilt by the caller when an RBAC object changes.
///
/// Cost: [`Rbac::compile`] is O(total size of the objects). [`Rbac::authorize`] does one
/// hash lookup for the user's name and one per group, in the cluster scope and (for a
/// namespaced resource request) in the request's namespace, then checks only the rules of
/// the bindings found: O((1 + groups) + rules of the user's bindings), independent of
/// how many bindings and roles exist for other subjects.
#[derive(Debug, Default)]
pub struct Rbac {
    cluster: Scope,
    namespaces: HashMap<String, Scope>,
}

/// `(namespace, name)` of an object ("" for a missing namespace).
fn identity(obj: &Value) -> (&str, &str) {
    let get = |p: &str| obj.pointer(p).and_then(Value::as_str).unwrap_or_default();
    (get("/metadata/namespace"), get("/metadata/name"))
}

/// A binding's `roleRef`: (kind, name), if it names an RBAC kind.
fn role_ref(binding: &Value, kind: &'static str) -> Result<(String, String), RbacError> {
    let r = binding.get("roleRef");
    let field = |k: &str| r.and_then(|r| r.get(k)).and_then(Value::as_str).unwrap_or_default();
    let (group, ref_kind, name) = (field("apiGroup"), field("kind"), field("name"));
    let allowed_kind = ref_kind == "ClusterRole" || (ref_kind == "Role" && kind == "RoleBinding");
    if group != RBAC_GROUP || !allowed_kind || name.is_empty() {
        return Err(RbacError::RoleRef {
            kind,
            name: identity(binding).1.to_string(),
            reference: format!("{group}/{ref_kind} {name:?}"),
        });
    }
    Ok((ref_kind.to_string(), name.to_string()))
}

/// Sorts objects by (namespace, name) so that the compiled order is stable.
fn sorted(objs: &[Arc<Value>]) -> Vec<&Value> {
    let mut v: Vec<&Value> = objs.iter().map(|o| o.as_ref()).collect();
    v.sort_by(|a, b| identity(a).cmp(&identity(b)));
    v
}

impl Rbac {
    /// Compiles the four kinds of RBAC objects. Malformed objects (no name, a bad
    /// `roleRef`, rules that are not objects) are skipped with a debug log; a binding to a
    /// role that does not exist grants nothing (and says so in [`Decision::NoOpinion`]).
    pub fn compile(
        roles: &[Arc<Value>],
        cluster_roles: &[Arc<Value>],
        role_bindings: &[Arc<Value>],
        cluster_role_bindings: &[Arc<Value>],
    ) -> Rbac {
        let mut role_rules: HashMap<(&str, &str), Rules> = HashMap::new();
        for role in roles {
            match identity(role) {
                (ns, name) if !ns.is_empty() && !name.is_empty() => {
                    role_rules.insert((ns, name), compile_rules(role));
                }
                _ => debug!(error = %RbacError::MissingIdentity { kind: "Role" }, "RBAC: object skipped"),
            }
        }
        let mut cluster_role_rules: HashMap<&str, Rules> = HashMap::new();
        for role in cluster_roles {
            match identity(role).1 {
                "" => debug!(error = %RbacError::MissingIdentity { kind: "ClusterRole" }, "RBAC: object skipped"),
                name => {
                    cluster_role_rules.insert(name, compile_rules(role));
                }
            }
        }
        let cluster_role = |name: &str| {
            cluster_role_rules
                .get(name)
                .cloned()
                .ok_or_else(|| RbacError::RoleNotFound { resource: "clusterrole", name: name.to_string() })
        };

        let mut rbac = Rbac::default();
        for binding in sorted(cluster_role_bindings) {
            let name = identity(binding).1;
            if name.is_empty() {
                debug!(error = %RbacError::MissingIdentity { kind: "ClusterRoleBinding" }, "RBAC: object skipped");
                continue;
            }
            let role = match role_ref(binding, "ClusterRoleBinding") {
                Ok((_, role)) => role,
                Err(e) => {
                    debug!(error = %e, "RBAC: object skipped");
                    continue;
                }
            };
            let source = format!("ClusterRoleBinding {name:?} of ClusterRole {role:?}");
            rbac.cluster.add(binding, source, cluster_role(&role), None);
        }
        for binding in sorted(role_bindings) {
            let (ns, name) = identity(binding);
            if ns.is_empty() || name.is_empty() {
                debug!(error = %RbacError::MissingIdentity { kind: "RoleBinding" }, "RBAC: object skipped");
                continue;
            }
            let (kind, role) = match role_ref(binding, "RoleBinding") {
                Ok(r) => r,
                Err(e) => {
                    debug!(error = %e, "RBAC: object skipped");
                    continue;
                }
            };
            let rules = if kind == "Role" {
                role_rules
                    .get(&(ns, role.as_str()))
                    .cloned()
                    .ok_or_else(|| RbacError::RoleNotFound { resource: "role", name: role.clone() })
            } else {
                cluster_role(&role)
            };
            let source = format!("RoleBinding \"{ns}/{name}\" of {kind} {role:?}");
            rbac.namespaces.entry(ns.to_string()).or_default().add(binding, source, rules, Some(ns));
        }
        rbac
    }

    /// The scopes a request is decided in: the cluster, and the namespace of a
    /// namespaced resource request.
    fn scopes(&self, namespace: &str, resource_request: bool) -> impl Iterator<Item = &Scope> {
        let ns = (resource_request && !namespace.is_empty()).then(|| self.namespaces.get(namespace)).flatten();
        std::iter::once(&self.cluster).chain(ns)
    }

    /// Allows the request if a rule bound to the user allows it; otherwise no opinion.
    /// The reason is empty, as in Kubernetes, unless bindings that apply to the user refer
    /// to missing roles (`RBAC: clusterrole.rbac.authorization.k8s.io "x" not found`).
    pub fn authorize(&self, attrs: &Attributes) -> Decision {
        let mut errors: Vec<String> = Vec::new();
        for scope in self.scopes(&attrs.namespace, attrs.resource_request) {
            for grant in scope.grants_for(&attrs.user) {
                match &grant.rules {
                    Ok(rules) => {
                        if rules.iter().any(|r| r.allows(attrs)) {
                            trace!(user = %attrs.user.name, verb = %attrs.verb, by = %grant.source, "RBAC: allowed");
                            return Decision::Allow;
                        }
                    }
                    Err(e) => errors.push(e.to_string()),
                }
            }
        }
        Decision::NoOpinion(match errors.as_slice() {
            [] => String::new(),
            [one] => format!("RBAC: {one}"),
            many => format!("RBAC: [{}]", many.join(", ")),
        })
    }

    /// The rules (normal-form `PolicyRule` JSON) that apply to `user` in `namespace`: those
    /// of ClusterRoleBindings, then those of RoleBindings in `namespace` (when not empty),
    /// without duplicates. Non-resource rules reached through a RoleBinding are left out,
    /// since they grant nothing. For SelfSubjectRulesReview (`kubectl auth can-i --list`).
    pub fn rules_for(&self, user: &UserInfo, namespace: &str) -> Vec<Value> {
        let mut seen: HashSet<String> = HashSet::new();
        let mut out = Vec::new();
        for (i, scope) in self.scopes(namespace, true).enumerate() {
            for grant in scope.grants_for(user) {
                let Ok(rules) = &grant.rules else { continue };
                for rule in rules.iter().filter(|r| i == 0 || !r.is_non_resource()) {
                    if seen.insert(rule.json.to_string()) {
                        out.push(rule.json.clone());
                    }
                }
            }
        }
        out
    }
}

/// The aggregated `rules` of a ClusterRole with an `aggregationRule`: the union of the
/// rules of every other ClusterRole in `all_cluster_roles` that one of its
/// `clusterRoleSelectors` matches, deduplicated, in Kubernetes' order (selector by
/// selector, roles by name). `None` when the role has no `aggregationRule`, or when the
/// rule is invalid (Kubernetes then leaves the role's rules as they are).
pub fn aggregate(role: &Value, all_cluster_roles: &[Arc<Value>]) -> Option<Vec<Value>> {
    match apimachinery::rbac::aggregate_rules(role, all_cluster_roles.iter().map(|r| r.as_ref()))? {
        Ok(rules) => Some(rules),
        Err(e) => {
            debug!(error = %e, "RBAC: aggregation rule ignored");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn arcs(v: Vec<Value>) -> Vec<Arc<Value>> {
        v.into_iter().map(Arc::new).collect()
    }

    fn user(name: &str, groups: &[&str]) -> UserInfo {
        let mut groups: Vec<String> = groups.iter().map(|g| g.to_string()).collect();
        groups.push(crate::auth::AUTHENTICATED_GROUP.into());
        UserInfo { name: name.into(), groups, ..Default::default() }
    }

    fn res(u: &UserInfo, verb: &str, ns: &str, group: &str, resource: &str, sub: &str, name: &str) -> Attributes {
        Attributes {
            user: u.clone(),
            verb: verb.into(),
            resource_request: true,
            namespace: ns.into(),
            api_group: group.into(),
            api_version: "v1".into(),
            resource: resource.into(),
            subresource: sub.into(),
            name: name.into(),
            path: String::new(),
        }
    }

    fn url(u: &UserInfo, verb: &str, path: &str) -> Attributes {
        Attributes { user: u.clone(), verb: verb.into(), path: path.into(), ..Default::default() }
    }

    fn allowed(rbac: &Rbac, a: &Attributes) -> bool {
        rbac.authorize(a) == Decision::Allow
    }

    fn subject(kind: &str, name: &str, ns: Option<&str>) -> Value {
        let mut s = json!({"kind": kind, "name": name});
        match ns {
            Some(ns) => s["namespace"] = json!(ns),
            None if kind != "ServiceAccount" => s["apiGroup"] = json!(RBAC_GROUP),
            None => {}
        }
        s
    }

    fn role_binding(ns: &str, name: &str, kind: &str, role: &str, subjects: Vec<Value>) -> Value {
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": {"name": name, "namespace": ns},
            "roleRef": {"apiGroup": RBAC_GROUP, "kind": kind, "name": role},
            "subjects": subjects,
        })
    }

    fn cluster_role_binding(name: &str, role: &str, subjects: Vec<Value>) -> Value {
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
            "metadata": {"name": name},
            "roleRef": {"apiGroup": RBAC_GROUP, "kind": "ClusterRole", "name": role},
            "subjects": subjects,
        })
    }

    fn cluster_role(name: &str, rules: Value) -> Value {
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": name}, "rules": rules})
    }

    /// The bootstrap policy plus extra objects.
    fn with_defaults(roles: Vec<Value>, cluster_roles: Vec<Value>, rbs: Vec<Value>, crbs: Vec<Value>) -> Rbac {
        let mut crs = bootstrap_cluster_roles();
        crs.extend(cluster_roles);
        let mut all_crbs = bootstrap_cluster_role_bindings();
        all_crbs.extend(crbs);
        Rbac::compile(&arcs(roles), &arcs(crs), &arcs(rbs), &arcs(all_crbs))
    }

    #[test]
    fn view_reads_workloads_but_not_secrets_and_writes_nothing() {
        let rbac = with_defaults(vec![], vec![], vec![role_binding("dev", "viewers", "ClusterRole", "view", vec![subject("User", "alice", None)])], vec![]);
        let alice = user("alice", &[]);
        assert!(allowed(&rbac, &res(&alice, "list", "dev", "", "pods", "", "")));
        assert!(allowed(&rbac, &res(&alice, "get", "dev", "apps", "deployments", "", "web")));
        assert!(allowed(&rbac, &res(&alice, "get", "dev", "", "pods", "log", "web-1")));
        assert!(!allowed(&rbac, &res(&alice, "get", "dev", "", "secrets", "", "token")));
        assert!(!allowed(&rbac, &res(&alice, "list", "dev", "", "secrets", "", "")));
        assert!(!allowed(&rbac, &res(&alice, "create", "dev", "", "pods", "", "")));
        assert!(!allowed(&rbac, &res(&alice, "create", "dev", "", "pods", "exec", "web-1")));
    }

    #[test]
    fn edit_reads_and_writes_secrets_and_workloads() {
        let rbac = with_defaults(vec![], vec![], vec![role_binding("dev", "editors", "ClusterRole", "edit", vec![subject("User", "bob", None)])], vec![]);
        let bob = user("bob", &[]);
        assert!(allowed(&rbac, &res(&bob, "get", "dev", "", "secrets", "", "token")));
        assert!(allowed(&rbac, &res(&bob, "create", "dev", "", "secrets", "", "")));
        assert!(allowed(&rbac, &res(&bob, "create", "dev", "", "pods", "", "")));
        assert!(allowed(&rbac, &res(&bob, "patch", "dev", "apps", "deployments", "scale", "web")));
        assert!(allowed(&rbac, &res(&bob, "list", "dev", "", "pods", "", "")), "edit includes view");
        assert!(!allowed(&rbac, &res(&bob, "create", "dev", RBAC_GROUP, "rolebindings", "", "")), "only admin binds roles");
        let admin = with_defaults(vec![], vec![], vec![role_binding("dev", "admins", "ClusterRole", "admin", vec![subject("User", "bob", None)])], vec![]);
        assert!(allowed(&admin, &res(&bob, "create", "dev", RBAC_GROUP, "rolebindings", "", "")));
        assert!(allowed(&admin, &res(&bob, "get", "dev", "", "secrets", "", "x")), "admin includes edit");
    }

    #[test]
    fn role_binding_to_cluster_role_is_limited_to_its_namespace() {
        let rbac = with_defaults(vec![], vec![], vec![role_binding("dev", "editors", "ClusterRole", "edit", vec![subject("User", "bob", None)])], vec![]);
        let bob = user("bob", &[]);
        assert!(allowed(&rbac, &res(&bob, "delete", "dev", "", "pods", "", "p")));
        assert!(!allowed(&rbac, &res(&bob, "delete", "prod", "", "pods", "", "p")));
        assert!(!allowed(&rbac, &res(&bob, "list", "", "", "pods", "", "")), "not across namespaces");
        assert!(!allowed(&rbac, &res(&bob, "list", "", "", "namespaces", "", "")), "not cluster-scoped");
    }

    #[test]
    fn cluster_role_binding_grants_everywhere_and_masters_do_anything() {
        let rbac = with_defaults(vec![], vec![], vec![], vec![cluster_role_binding("ops-view", "view", vec![subject("User", "ops", None)])]);
        let ops = user("ops", &[]);
        assert!(allowed(&rbac, &res(&ops, "list", "", "", "pods", "", "")));
        assert!(allowed(&rbac, &res(&ops, "get", "kube-system", "", "pods", "", "x")));
        let root = user("root", &[crate::auth::MASTERS_GROUP]);
        assert!(allowed(&rbac, &res(&root, "escalate", "", "rbac.authorization.k8s.io", "clusterroles", "", "x")));
        assert!(allowed(&rbac, &url(&root, "post", "/anything/at/all")));
    }

    #[test]
    fn role_in_namespace() {
        let role = json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
            "metadata": {"name": "cm-reader", "namespace": "dev"},
            "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get"]}],
        });
        let rb = role_binding("dev", "r", "Role", "cm-reader", vec![subject("User", "carol", None)]);
        // A RoleBinding in another namespace cannot use the Role of "dev".
        let other = role_binding("prod", "r", "Role", "cm-reader", vec![subject("User", "carol", None)]);
        let rbac = Rbac::compile(&arcs(vec![role]), &[], &arcs(vec![rb, other]), &[]);
        let carol = user("carol", &[]);
        assert!(allowed(&rbac, &res(&carol, "get", "dev", "", "configmaps", "", "x")));
        assert!(!allowed(&rbac, &res(&carol, "get", "prod", "", "configmaps", "", "x")));
        assert_eq!(
            rbac.authorize(&res(&carol, "get", "prod", "", "configmaps", "", "x")),
            Decision::NoOpinion("RBAC: role.rbac.authorization.k8s.io \"cm-reader\" not found".into())
        );
        assert_eq!(rbac.authorize(&res(&carol, "list", "", "", "nodes", "", "")), Decision::NoOpinion(String::new()));
    }

    #[test]
    fn service_account_subjects() {
        let cr = cluster_role("pod-reader", json!([{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]}]));
        let rbs = vec![
            // No namespace: the binding's.
            role_binding("dev", "local", "ClusterRole", "pod-reader", vec![subject("ServiceAccount", "builder", None)]),
            role_binding("dev", "remote", "ClusterRole", "pod-reader", vec![subject("ServiceAccount", "deployer", Some("ci"))]),
        ];
        let crbs = vec![
            cluster_role_binding("sa-global", "pod-reader", vec![subject("ServiceAccount", "monitor", Some("mon"))]),
            // A ServiceAccount subject without a namespace in a ClusterRoleBinding matches no one.
            cluster_role_binding("sa-nons", "pod-reader", vec![subject("ServiceAccount", "builder", None)]),
        ];
        let rbac = Rbac::compile(&[], &arcs(vec![cr]), &arcs(rbs), &arcs(crbs));
        let sa = |ns: &str, name: &str| user(&format!("system:serviceaccount:{ns}:{name}"), &["system:serviceaccounts"]);
        assert!(allowed(&rbac, &res(&sa("dev", "builder"), "list", "dev", "", "pods", "", "")));
        assert!(!allowed(&rbac, &res(&sa("dev", "builder"), "list", "prod", "", "pods", "", "")));
        assert!(!allowed(&rbac, &res(&sa("other", "builder"), "list", "dev", "", "pods", "", "")));
        assert!(allowed(&rbac, &res(&sa("ci", "deployer"), "get", "dev", "", "pods", "", "x")));
        assert!(!allowed(&rbac, &res(&sa("dev", "deployer"), "get", "dev", "", "pods", "", "x")));
        assert!(allowed(&rbac, &res(&sa("mon", "monitor"), "list", "", "", "pods", "", "")));
        assert!(!allowed(&rbac, &res(&sa("", "builder"), "list", "", "", "pods", "", "")));
    }

    #[test]
    fn resource_names() {
        let cr = cluster_role("one-cm", json!([{"apiGroups": [""], "resources": ["configmaps"], "resourceNames": ["settings"], "verbs": ["get", "update", "list", "create"]}]));
        let crb = cluster_role_binding("one-cm", "one-cm", vec![subject("User", "dave", None)]);
        let rbac = Rbac::compile(&[], &arcs(vec![cr]), &[], &arcs(vec![crb]));
        let dave = user("dave", &[]);
        assert!(allowed(&rbac, &res(&dave, "get", "dev", "", "configmaps", "", "settings")));
        assert!(allowed(&rbac, &res(&dave, "update", "dev", "", "configmaps", "", "settings")));
        assert!(!allowed(&rbac, &res(&dave, "get", "dev", "", "configmaps", "", "other")));
        assert!(!allowed(&rbac, &res(&dave, "list", "dev", "", "configmaps", "", "")), "a list has no name");
        assert!(!allowed(&rbac, &res(&dave, "create", "dev", "", "configmaps", "", "")));
    }

    #[test]
    fn subresources() {
        let cr = cluster_role(
            "subs",
            json!([
                {"apiGroups": [""], "resources": ["pods/log"], "verbs": ["get"]},
                {"apiGroups": ["*"], "resources": ["*/scale"], "verbs": ["update"]},
                {"apiGroups": [""], "resources": ["pods/*"], "verbs": ["create"]},
            ]),
        );
        let crb = cluster_role_binding("subs", "subs", vec![subject("Group", "devs", None)]);
        let rbac = Rbac::compile(&[], &arcs(vec![cr]), &[], &arcs(vec![crb]));
        let erin = user("erin", &["devs"]);
        assert!(allowed(&rbac, &res(&erin, "get", "dev", "", "pods", "log", "p")));
        assert!(!allowed(&rbac, &res(&erin, "get", "dev", "", "pods", "", "p")), "pods/log is not pods");
        assert!(!allowed(&rbac, &res(&erin, "get", "dev", "", "pods", "status", "p")));
        assert!(allowed(&rbac, &res(&erin, "update", "dev", "apps", "deployments", "scale", "d")));
        assert!(allowed(&rbac, &res(&erin, "update", "dev", "", "replicationcontrollers", "scale", "rc")));
        assert!(!allowed(&rbac, &res(&erin, "update", "dev", "apps", "deployments", "", "d")));
        assert!(!allowed(&rbac, &res(&erin, "update", "dev", "apps", "deployments", "status", "d")));
        // As in Kubernetes, `pods/*` is no wildcard: only `*` and `*/<subresource>` are.
        assert!(!allowed(&rbac, &res(&erin, "create", "dev", "", "pods", "exec", "p")));
        // `*` matches any resource and subresource.
        let star = cluster_role("star", json!([{"apiGroups": [""], "resources": ["*"], "verbs": ["get"]}]));
        let crb = cluster_role_binding("star", "star", vec![subject("User", "erin", None)]);
        let rbac = Rbac::compile(&[], &arcs(vec![star]), &[], &arcs(vec![crb]));
        assert!(allowed(&rbac, &res(&erin, "get", "dev", "", "pods", "log", "p")));
        assert!(!allowed(&rbac, &res(&erin, "get", "dev", "apps", "deployments", "", "p")));
    }

    #[test]
    fn non_resource_urls() {
        let cr = cluster_role("urls", json!([{"nonResourceURLs": ["/logs/*", "/metrics"], "verbs": ["get"]}]));
        let crb = cluster_role_binding("urls", "urls", vec![subject("User", "frank", None)]);
        // A RoleBinding to a ClusterRole with non-resource rules grants no URLs.
        let rb = role_binding("dev", "urls", "ClusterRole", "urls", vec![subject("User", "gina", None)]);
        let rbac = with_defaults(vec![], vec![cr], vec![rb], vec![crb]);
        let frank = user("frank", &[]);
        assert!(allowed(&rbac, &url(&frank, "get", "/metrics")));
        assert!(allowed(&rbac, &url(&frank, "get", "/logs/")));
        assert!(allowed(&rbac, &url(&frank, "get", "/logs/kube-apiserver.log")));
        assert!(!allowed(&rbac, &url(&frank, "get", "/logs")));
        assert!(!allowed(&rbac, &url(&frank, "get", "/metrics/slis")));
        assert!(!allowed(&rbac, &url(&frank, "post", "/metrics")));
        let gina = user("gina", &[]);
        assert!(!allowed(&rbac, &url(&gina, "get", "/metrics")));
        // Everyone authenticated may discover the API; anonymous users only read health.
        assert!(allowed(&rbac, &url(&gina, "get", "/apis/apps/v1")));
        assert!(allowed(&rbac, &url(&gina, "get", "/version")));
        let anonymous = UserInfo { name: crate::auth::ANONYMOUS_USER.into(), groups: vec![crate::auth::UNAUTHENTICATED_GROUP.into()], ..Default::default() };
        assert!(allowed(&rbac, &url(&anonymous, "get", "/healthz")));
        assert!(!allowed(&rbac, &url(&anonymous, "get", "/apis")));
        assert!(!allowed(&rbac, &res(&anonymous, "create", "", "authorization.k8s.io", "selfsubjectaccessreviews", "", "")));
    }

    #[test]
    fn group_bindings() {
        let rbac = with_defaults(vec![], vec![], vec![role_binding("dev", "team", "ClusterRole", "view", vec![subject("Group", "team-a", None)])], vec![]);
        assert!(allowed(&rbac, &res(&user("hank", &["team-a"]), "list", "dev", "", "pods", "", "")));
        assert!(!allowed(&rbac, &res(&user("hank", &["team-b"]), "list", "dev", "", "pods", "", "")));
        // A User subject does not match a group of that name, nor the reverse.
        assert!(!allowed(&rbac, &res(&user("team-a", &[]), "list", "dev", "", "pods", "", "")));
        // Every authenticated user may ask what it may do.
        assert!(allowed(&rbac, &res(&user("ivy", &[]), "create", "", "authorization.k8s.io", "selfsubjectaccessreviews", "", "")));
        assert!(allowed(&rbac, &res(&user("ivy", &[]), "create", "", "authentication.k8s.io", "selfsubjectreviews", "", "")));
    }

    #[test]
    fn malformed_objects_are_skipped() {
        let crs = arcs(vec![json!(null), json!({"metadata": {}}), cluster_role("ok", json!([{"verbs": ["get"], "apiGroups": [""], "resources": ["pods"]}, 7]))]);
        let crbs = arcs(vec![
            json!("not an object"),
            json!({"metadata": {"name": "no-ref"}, "subjects": [{"kind": "User", "name": "j"}]}),
            json!({"metadata": {"name": "bad-kind"}, "roleRef": {"apiGroup": RBAC_GROUP, "kind": "Role", "name": "ok"}, "subjects": [{"kind": "User", "name": "j"}]}),
            json!({"metadata": {"name": "bad-subjects"}, "roleRef": {"apiGroup": RBAC_GROUP, "kind": "ClusterRole", "name": "ok"}, "subjects": "j"}),
            cluster_role_binding("good", "ok", vec![json!({"kind": "Robot", "name": "j"}), subject("User", "j", None)]),
        ]);
        let rbs = arcs(vec![json!({"metadata": {"name": "no-ns"}, "roleRef": {"apiGroup": RBAC_GROUP, "kind": "ClusterRole", "name": "ok"}})]);
        let rbac = Rbac::compile(&arcs(vec![json!([])]), &crs, &rbs, &crbs);
        assert!(allowed(&rbac, &res(&user("j", &[]), "get", "x", "", "pods", "", "p")));
        assert!(!allowed(&rbac, &res(&user("j", &[]), "list", "x", "", "pods", "", "")));
    }

    #[test]
    fn rules_for_lists_cluster_then_namespace_rules() {
        let cr = cluster_role("urls", json!([{"nonResourceURLs": ["/metrics"], "verbs": ["get"]}, {"apiGroups": [""], "resources": ["nodes"], "verbs": ["get"]}]));
        let rb = role_binding("dev", "v", "ClusterRole", "view", vec![subject("User", "kim", None)]);
        let rb2 = role_binding("dev", "u", "ClusterRole", "urls", vec![subject("User", "kim", None)]);
        let rbac = with_defaults(vec![], vec![cr], vec![rb, rb2], vec![]);
        let kim = user("kim", &[]);
        let cluster_only = rbac.rules_for(&kim, "");
        assert!(cluster_only.iter().any(|r| r["nonResourceURLs"].as_array().is_some_and(|u| u.contains(&json!("/api")))));
        assert!(!cluster_only.iter().any(|r| r["resources"].as_array().is_some_and(|u| u.contains(&json!("pods")))));
        let dev = rbac.rules_for(&kim, "dev");
        assert!(dev.starts_with(&cluster_only));
        assert!(dev.iter().any(|r| r["resources"].as_array().is_some_and(|u| u.contains(&json!("pods")))));
        assert!(dev.iter().any(|r| r["resources"] == json!(["nodes"])));
        assert!(!dev.iter().any(|r| r["nonResourceURLs"] == json!(["/metrics"])), "URLs through a RoleBinding grant nothing");
        let unique: HashSet<String> = dev.iter().map(Value::to_string).collect();
        assert_eq!(unique.len(), dev.len());
    }

    #[test]
    fn aggregate_picks_up_custom_roles_labelled_aggregate_to_view() {
        let custom = json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
            "metadata": {"name": "widgets-view", "labels": {"rbac.authorization.k8s.io/aggregate-to-view": "true"}},
            "rules": [{"apiGroups": ["example.com"], "resources": ["widgets"], "verbs": ["get", "list", "watch"]}],
        });
        let mut all = bootstrap_cluster_roles();
        all.push(custom);
        let all = arcs(all);
        let find = |n: &str| all.iter().find(|r| r["metadata"]["name"] == n).cloned();
        let (Some(view), Some(admin_rules)) = (find("view"), find("cluster-admin")) else { panic!("bootstrap roles missing") };
        let rules = aggregate(&view, &all).unwrap_or_default();
        let widgets = json!({"verbs": ["get", "list", "watch"], "apiGroups": ["example.com"], "resources": ["widgets"]});
        assert!(rules.contains(&widgets));
        // What view had already comes first (system:aggregate-to-view < widgets-view).
        assert!(rules.starts_with(view["rules"].as_array().map(Vec::as_slice).unwrap_or_default()));
        assert_eq!(rules.len(), view["rules"].as_array().map_or(0, Vec::len) + 1);
        assert_eq!(aggregate(&admin_rules, &all), None);
        // And a user bound to view can now read widgets once the rules are stored.
        let mut stored = (*view).clone();
        stored["rules"] = json!(rules);
        let rb = role_binding("dev", "v", "ClusterRole", "view", vec![subject("User", "lee", None)]);
        let rbac = Rbac::compile(&[], &arcs(vec![stored]), &arcs(vec![rb]), &[]);
        assert!(allowed(&rbac, &res(&user("lee", &[]), "list", "dev", "example.com", "widgets", "", "")));
    }
}
