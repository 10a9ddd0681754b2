//! Which Service an HTTP request goes to, by Kubernetes' Ingress rules: the most
//! specific host (exact, then `*.` wildcard of one label, then rules without a host),
//! then the longest matching path within that host (`Exact` before `Prefix` of the same
//! length; `ImplementationSpecific` is read as `Prefix`); failing a path, an Ingress's
//! `defaultBackend`. Among Ingresses that claim the same host and path, the oldest wins.

use std::sync::Arc;

use k8s_openapi::api::networking::v1::{Ingress, IngressBackend, IngressClass, ServiceBackendPort};

/// The `spec.controller` of the IngressClasses this controller serves.
pub const CONTROLLER: &str = "rkube.io/ingress";
/// Marks the IngressClass that Ingresses without a class get.
pub const DEFAULT_CLASS_ANNOTATION: &str = "ingressclass.kubernetes.io/is-default-class";
/// The class annotation older Ingresses use instead of `spec.ingressClassName`.
pub const LEGACY_CLASS_ANNOTATION: &str = "kubernetes.io/ingress.class";

/// A Service port a request is sent to.
#[derive(Debug, Clone, PartialEq)]
pub struct Backend {
    pub namespace: String,
    pub service: String,
    pub port: ServiceBackendPort,
}

/// Whether this controller serves `ingress`: its class (or legacy annotation) names one
/// of ours, or it names none and one of ours is the default class.
pub fn is_ours(ingress: &Ingress, classes: &[Arc<IngressClass>]) -> bool {
    let ours = |name: &str| classes.iter().any(|c| c.metadata.name.as_deref() == Some(name) && controller_of(c) == Some(CONTROLLER));
    let named = ingress.spec.as_ref().and_then(|s| s.ingress_class_name.as_deref()).or_else(|| {
        ingress.metadata.annotations.as_ref().and_then(|a| a.get(LEGACY_CLASS_ANNOTATION)).map(String::as_str)
    });
    match named {
        Some(name) => ours(name),
        None => classes.iter().any(|c| controller_of(c) == Some(CONTROLLER) && is_default(c)),
    }
}

fn controller_of(class: &IngressClass) -> Option<&str> {
    class.spec.as_ref().and_then(|s| s.controller.as_deref())
}

fn is_default(class: &IngressClass) -> bool {
    class.metadata.annotations.as_ref().and_then(|a| a.get(DEFAULT_CLASS_ANNOTATION)).is_some_and(|v| v == "true")
}

/// How well a rule's host matches the request's (higher is more specific).
pub(crate) fn host_rank(rule_host: Option<&str>, host: &str) -> Option<u8> {
    match rule_host.filter(|h| !h.is_empty()) {
        None => Some(0),
        Some(h) if h.eq_ignore_ascii_case(host) => Some(2),
        Some(h) => {
            let suffix = h.strip_prefix("*.")?;
            // One label, no more: `*.foo.com` is `bar.foo.com`, not `baz.bar.foo.com` or `foo.com`.
            let (label, rest) = host.split_once('.')?;
            (!label.is_empty() && rest.eq_ignore_ascii_case(suffix)).then_some(1)
        }
    }
}

/// The length of `rule_path` if it matches `path` (compared by path elements for
/// `Prefix`), and whether the match is exact.
fn path_match(rule_path: &str, path_type: &str, path: &str) -> Option<(usize, bool)> {
    let rule_path = if rule_path.is_empty() { "/" } else { rule_path };
    if path_type == "Exact" {
        return (rule_path == path).then_some((rule_path.len(), true));
    }
    let prefix = rule_path.trim_end_matches('/');
    let matches = prefix.is_empty() || path == prefix || path.strip_prefix(prefix).is_some_and(|rest| rest.starts_with('/'));
    matches.then_some((prefix.len(), false))
}

/// The request's host without a port, lowercased.
pub fn request_host(authority: &str) -> String {
    let host = match authority.rsplit_once(':') {
        // An IPv6 literal's colons are inside brackets.
        Some((h, port)) if port.chars().all(|c| c.is_ascii_digit()) && !h.ends_with(':') => h,
        _ => authority,
    };
    host.trim_start_matches('[').trim_end_matches(']').to_ascii_lowercase()
}

fn service_backend(namespace: &str, backend: &IngressBackend) -> Option<Backend> {
    let service = backend.service.as_ref()?;
    Some(Backend { namespace: namespace.to_string(), service: service.name.clone(), port: service.port.clone().unwrap_or_default() })
}

/// Oldest first, then by namespace and name: the order conflicts are settled in.
pub(crate) fn by_age(ingresses: &[Arc<Ingress>]) -> Vec<&Ingress> {
    let mut sorted: Vec<&Ingress> = ingresses.iter().map(Arc::as_ref).collect();
    sorted.sort_by(|a, b| {
        let key = |i: &Ingress| (i.metadata.creation_timestamp.clone().map(|t| t.0), i.metadata.namespace.clone(), i.metadata.name.clone());
        key(a).cmp(&key(b))
    });
    sorted
}

/// Where a request for `host` (no port) and `path` goes among `ingresses` (the ones this
/// controller serves); `None` when nothing matches (404).
pub fn route(ingresses: &[Arc<Ingress>], host: &str, path: &str) -> Option<Backend> {
    let sorted = by_age(ingresses);
    let best_host = sorted
        .iter()
        .flat_map(|i| i.spec.iter().flat_map(|s| s.rules.iter().flatten()))
        .filter_map(|rule| host_rank(rule.host.as_deref(), host))
        .max();
    if let Some(rank) = best_host {
        // (path length, exact) of the best so far, and its backend.
        let mut best: Option<((usize, bool), Backend)> = None;
        for ingress in &sorted {
            let namespace = ingress.metadata.namespace.as_deref().unwrap_or("default");
            for rule in ingress.spec.iter().flat_map(|s| s.rules.iter().flatten()) {
                if host_rank(rule.host.as_deref(), host) != Some(rank) {
                    continue;
                }
                for p in rule.http.iter().flat_map(|h| h.paths.iter()) {
                    let Some(score) = path_match(p.path.as_deref().unwrap_or("/"), &p.path_type, path) else { continue };
                    if best.as_ref().is_none_or(|(s, _)| score > *s) {
                        if let Some(backend) = service_backend(namespace, &p.backend) {
                            best = Some((score, backend));
                        }
                    }
                }
            }
        }
        if let Some((_, backend)) = best {
            return Some(backend);
        }
    }
    sorted.iter().find_map(|i| {
        let namespace = i.metadata.namespace.as_deref().unwrap_or("default");
        i.spec.as_ref().and_then(|s| s.default_backend.as_ref()).and_then(|b| service_backend(namespace, b))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ingress(name: &str, created: &str, spec: serde_json::Value) -> Arc<Ingress> {
        Arc::new(
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": name, "namespace": "default", "creationTimestamp": created},
                "spec": spec,
            }))
            .expect("an Ingress"),
        )
    }

    fn to(service: &str, port: i32) -> Option<Backend> {
        Some(Backend { namespace: "default".into(), service: service.into(), port: ServiceBackendPort { number: Some(port), name: None } })
    }

    fn path(p: &str, ty: &str, svc: &str) -> serde_json::Value {
        serde_json::json!({"path": p, "pathType": ty, "backend": {"service": {"name": svc, "port": {"number": 80}}}})
    }

    #[test]
    fn hosts_paths_and_defaults_follow_the_ingress_spec() {
        let all = vec![
            ingress("site", "2026-01-01T00:00:00Z", serde_json::json!({
                "defaultBackend": {"service": {"name": "fallback", "port": {"number": 80}}},
                "rules": [
                    {"host": "foo.bar.com", "http": {"paths": [path("/", "Prefix", "foo"), path("/api", "Prefix", "api"), path("/api/v1", "Exact", "v1")]}},
                    {"host": "*.bar.com", "http": {"paths": [path("/", "Prefix", "wild")]}},
                    {"http": {"paths": [path("/docs/", "Prefix", "docs")]}},
                ],
            })),
        ];
        assert_eq!(route(&all, "foo.bar.com", "/"), to("foo", 80));
        assert_eq!(route(&all, "foo.bar.com", "/api"), to("api", 80));
        assert_eq!(route(&all, "foo.bar.com", "/api/users"), to("api", 80));
        assert_eq!(route(&all, "foo.bar.com", "/apis"), to("foo", 80), "prefixes match whole path elements");
        assert_eq!(route(&all, "foo.bar.com", "/api/v1"), to("v1", 80));
        assert_eq!(route(&all, "foo.bar.com", "/api/v1/"), to("api", 80), "Exact is exact");
        assert_eq!(route(&all, "baz.bar.com", "/x"), to("wild", 80));
        assert_eq!(route(&all, "a.baz.bar.com", "/docs"), to("docs", 80), "a wildcard covers one label");
        assert_eq!(route(&all, "bar.com", "/docs/a"), to("docs", 80));
        assert_eq!(route(&all, "other.example", "/docsx"), to("fallback", 80));
        // A host with rules of its own does not fall through to the host-less rules.
        assert_eq!(route(&all, "baz.bar.com", "/docs"), to("wild", 80));
        assert_eq!(route(&[], "foo.bar.com", "/"), None);
    }

    #[test]
    fn the_oldest_ingress_wins_a_conflict() {
        let rule = |svc: &str| serde_json::json!({"rules": [{"host": "app.local", "http": {"paths": [path("/", "Prefix", svc)]}}]});
        let all = vec![ingress("newer", "2026-02-01T00:00:00Z", rule("new")), ingress("older", "2026-01-01T00:00:00Z", rule("old"))];
        assert_eq!(route(&all, "app.local", "/"), to("old", 80));
    }

    #[test]
    fn hosts_come_without_port_or_case() {
        assert_eq!(request_host("Foo.Bar.com:8080"), "foo.bar.com");
        assert_eq!(request_host("foo.bar.com"), "foo.bar.com");
        assert_eq!(request_host("[::1]:80"), "::1");
        assert_eq!(request_host("10.0.0.1"), "10.0.0.1");
    }

    #[test]
    fn classes_decide_which_ingresses_are_served() {
        let class = |name: &str, controller: &str, default: bool| {
            let annotations = if default { serde_json::json!({DEFAULT_CLASS_ANNOTATION: "true"}) } else { serde_json::json!({}) };
            Arc::new(serde_json::from_value::<IngressClass>(serde_json::json!({"metadata": {"name": name, "annotations": annotations}, "spec": {"controller": controller}})).expect("a class"))
        };
        let with_class = |class: Option<&str>| {
            let spec = match class { Some(c) => serde_json::json!({"ingressClassName": c}), None => serde_json::json!({}) };
            serde_json::from_value::<Ingress>(serde_json::json!({"metadata": {"name": "i"}, "spec": spec})).expect("an Ingress")
        };
        let classes = vec![class("rkube", CONTROLLER, true), class("nginx", "k8s.io/ingress-nginx", false)];
        assert!(is_ours(&with_class(Some("rkube")), &classes));
        assert!(!is_ours(&with_class(Some("nginx")), &classes));
        assert!(!is_ours(&with_class(Some("missing")), &classes));
        assert!(is_ours(&with_class(None), &classes), "the default class's");
        let not_default = vec![class("rkube", CONTROLLER, false)];
        assert!(!is_ours(&with_class(None), &not_default));
        let mut legacy = with_class(None);
        legacy.metadata.annotations = Some([(LEGACY_CLASS_ANNOTATION.to_string(), "rkube".to_string())].into());
        assert!(is_ours(&legacy, &not_default));
    }
}
