//! What a request asks for, read from its method and URL the way Kubernetes'
//! `RequestInfoFactory` reads it: the verb (`list` vs `get`, `watch`, `deletecollection`),
//! the namespace, group, resource, subresource and name. Authorizers decide on this.

use http::{Method, Uri};

use super::{Attributes, UserInfo};

impl Attributes {
    /// Reads a request (with no user yet: see [`Attributes::with_user`]).
    pub fn parse(method: &Method, uri: &Uri) -> Attributes {
        let path = uri.path().to_string();
        let non_resource = || Attributes { resource_request: false, verb: method.as_str().to_ascii_lowercase(), path: path.clone(), ..Default::default() };
        let parts: Vec<&str> = uri.path().trim_matches('/').split('/').filter(|s| !s.is_empty()).collect();
        let (group, version, mut rest) = match parts.as_slice() {
            ["api", version, rest @ ..] => ("", *version, rest),
            ["apis", group, version, rest @ ..] => (*group, *version, rest),
            _ => return non_resource(),
        };
        // `/api/v1` and `/apis/g/v` are discovery documents, not resources.
        if rest.is_empty() {
            return non_resource();
        }
        let query = uri.query().unwrap_or("");
        let mut info = Attributes { resource_request: true, api_group: group.into(), api_version: version.into(), path: path.clone(), ..Default::default() };
        let mut legacy_watch = false;
        if let ["watch", tail @ ..] = rest {
            legacy_watch = true;
            rest = tail;
        }
        if let ["namespaces", ns, tail @ ..] = rest {
            info.namespace = (*ns).to_string();
            // The namespace object itself (`namespaces/<name>`, and its `status` and
            // `finalize` subresources) stays; otherwise the namespace is a scope.
            if !matches!(tail, [] | ["status" | "finalize"]) {
                rest = tail;
            }
        }
        match rest {
            [resource] => info.resource = (*resource).into(),
            [resource, name] => {
                info.resource = (*resource).into();
                info.name = (*name).into();
            }
            [resource, name, sub, ..] => {
                info.resource = (*resource).into();
                info.name = (*name).into();
                info.subresource = (*sub).into();
            }
            [] => return non_resource(),
        }
        if info.resource == "namespaces" && !info.name.is_empty() {
            info.namespace = info.name.clone();
        }
        let param = |key: &str| serde_urlencoded::from_str::<Vec<(String, String)>>(query).ok().and_then(|pairs| pairs.into_iter().find(|(k, _)| k == key).map(|(_, v)| v));
        info.verb = match *method {
            Method::GET | Method::HEAD => {
                let watch = legacy_watch || param("watch").is_some_and(|v| v == "true" || v == "1");
                if watch {
                    "watch"
                } else if info.name.is_empty() {
                    "list"
                } else {
                    "get"
                }
            }
            Method::POST => "create",
            Method::PUT => "update",
            Method::PATCH => "patch",
            Method::DELETE => {
                if info.name.is_empty() {
                    "deletecollection"
                } else {
                    "delete"
                }
            }
            _ => return Attributes { verb: method.as_str().to_ascii_lowercase(), ..info },
        }
        .to_string();
        // A list or watch of one object by field selector names it, so that rules with
        // resourceNames (and the node authorizer) can allow it, as Kubernetes does.
        if matches!(info.verb.as_str(), "list" | "watch") && info.name.is_empty() {
            if let Some(selector) = param("fieldSelector") {
                if let Some(name) = selector.strip_prefix("metadata.name=").filter(|n| !n.contains(',')) {
                    info.name = name.to_string();
                }
            }
        }
        info
    }

    /// These attributes, asked by `user`.
    pub fn with_user(self, user: UserInfo) -> Attributes {
        Attributes { user, ..self }
    }
}

/// Kubernetes' message for a refused request, e.g. `User "jane" cannot list resource
/// "pods" in API group "" in the namespace "default"`.
pub fn forbidden_message(attrs: &Attributes) -> String {
    let user = &attrs.user.name;
    if !attrs.resource_request {
        return format!("User \"{user}\" cannot {} path \"{}\"", attrs.verb, attrs.path);
    }
    let resource = if attrs.subresource.is_empty() { attrs.resource.clone() } else { format!("{}/{}", attrs.resource, attrs.subresource) };
    let scope = if attrs.namespace.is_empty() { "at the cluster scope".to_string() } else { format!("in the namespace \"{}\"", attrs.namespace) };
    format!("User \"{user}\" cannot {} resource \"{resource}\" in API group \"{}\" {scope}", attrs.verb, attrs.api_group)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(method: Method, uri: &str) -> Attributes {
        Attributes::parse(&method, &uri.parse().expect("uri"))
    }

    #[test]
    fn verbs_follow_kubernetes() {
        let i = info(Method::GET, "/api/v1/namespaces/default/pods");
        assert_eq!((i.verb.as_str(), i.namespace.as_str(), i.resource.as_str(), i.name.as_str()), ("list", "default", "pods", ""));
        assert_eq!(info(Method::GET, "/api/v1/namespaces/default/pods?watch=true").verb, "watch");
        assert_eq!(info(Method::GET, "/api/v1/watch/namespaces/default/pods/web").verb, "watch");
        assert_eq!(info(Method::GET, "/api/v1/namespaces/default/pods/web").verb, "get");
        assert_eq!(info(Method::DELETE, "/api/v1/namespaces/default/pods").verb, "deletecollection");
        assert_eq!(info(Method::DELETE, "/api/v1/namespaces/default/pods/web").verb, "delete");
        let exec = info(Method::POST, "/api/v1/namespaces/default/pods/web/exec?command=ls");
        assert_eq!((exec.verb.as_str(), exec.resource.as_str(), exec.subresource.as_str()), ("create", "pods", "exec"));
        let d = info(Method::PATCH, "/apis/apps/v1/namespaces/ns1/deployments/web/scale");
        assert_eq!((d.api_group.as_str(), d.verb.as_str(), d.subresource.as_str(), d.namespace.as_str()), ("apps", "patch", "scale", "ns1"));
        let n = info(Method::GET, "/api/v1/nodes/n1");
        assert_eq!((n.namespace.as_str(), n.resource.as_str(), n.name.as_str()), ("", "nodes", "n1"));
    }

    #[test]
    fn namespaces_are_their_own_namespace() {
        let i = info(Method::GET, "/api/v1/namespaces/kube-system");
        assert_eq!((i.verb.as_str(), i.resource.as_str(), i.name.as_str(), i.namespace.as_str()), ("get", "namespaces", "kube-system", "kube-system"));
        let i = info(Method::PUT, "/api/v1/namespaces/ns1/finalize");
        assert_eq!((i.resource.as_str(), i.subresource.as_str(), i.namespace.as_str()), ("namespaces", "finalize", "ns1"));
        let i = info(Method::GET, "/api/v1/namespaces");
        assert_eq!((i.verb.as_str(), i.resource.as_str(), i.namespace.as_str()), ("list", "namespaces", ""));
    }

    #[test]
    fn a_field_selector_on_the_name_names_the_object() {
        let i = info(Method::GET, "/api/v1/namespaces/default/secrets?fieldSelector=metadata.name%3Dtoken&watch=1");
        assert_eq!((i.verb.as_str(), i.name.as_str()), ("watch", "token"));
    }

    #[test]
    fn discovery_and_health_are_not_resources() {
        for p in ["/api", "/api/v1", "/apis", "/apis/apps/v1", "/healthz", "/version", "/openapi/v3"] {
            let i = info(Method::GET, p);
            assert!(!i.resource_request, "{p}");
            assert_eq!(i.verb, "get");
        }
    }

    #[test]
    fn forbidden_messages_read_like_kubernetes() {
        let mut a = info(Method::GET, "/api/v1/namespaces/default/secrets").with_user(UserInfo { name: "jane".into(), ..Default::default() });
        assert_eq!(forbidden_message(&a), "User \"jane\" cannot list resource \"secrets\" in API group \"\" in the namespace \"default\"");
        a = info(Method::POST, "/apis/rbac.authorization.k8s.io/v1/clusterroles").with_user(a.user);
        assert_eq!(forbidden_message(&a), "User \"jane\" cannot create resource \"clusterroles\" in API group \"rbac.authorization.k8s.io\" at the cluster scope");
        a = info(Method::GET, "/metrics").with_user(a.user);
        assert_eq!(forbidden_message(&a), "User \"jane\" cannot get path \"/metrics\"");
    }
}
