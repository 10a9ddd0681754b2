//! Who may use the kubelet API, as the real kubelet decides with
//! `--authentication-x509` and `--authorization-mode=Webhook`: the caller is the client
//! certificate the TLS handshake verified (CN user, O groups), and what it asks for is
//! checked with a SubjectAccessReview against the apiserver on the `nodes` resource of
//! this node (`nodes/proxy` for exec, attach, port-forward and container logs,
//! `nodes/stats`, `nodes/metrics`, `nodes/log` for their paths). Answers are cached
//! briefly (allowed 5 minutes, denied 30 seconds, as the kubelet's webhook cache does).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use http::Method;
use k8s_openapi::api::authorization::v1::{ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec};
use kube::api::{Api, PostParams};

const ALLOWED_TTL: Duration = Duration::from_secs(300);
const DENIED_TTL: Duration = Duration::from_secs(30);

/// A verified caller of the kubelet API.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Caller {
    pub user: String,
    pub groups: Vec<String>,
}

impl Caller {
    /// The caller a verified client certificate names.
    pub fn from_certificate(der: &[u8]) -> Option<Caller> {
        let (user, groups) = component_base::pki::subject_of(der)?;
        (!user.is_empty()).then_some(Caller { user, groups })
    }
}

/// The attributes of a kubelet API request: (verb, subresource of `nodes`).
pub fn attributes(method: &Method, path: &str) -> (&'static str, &'static str) {
    let first = path.trim_start_matches('/').split('/').next().unwrap_or_default();
    let subresource = match first {
        "stats" => "stats",
        "metrics" => "metrics",
        "logs" => "log",
        "spec" => "spec",
        _ => "proxy",
    };
    // Running a command is a create whatever the method (a WebSocket upgrade is a GET).
    let verb = match (first, method) {
        ("exec" | "attach" | "portForward" | "run", _) => "create",
        (_, &Method::GET) | (_, &Method::HEAD) => "get",
        (_, &Method::POST) => "create",
        (_, &Method::PUT) => "update",
        (_, &Method::PATCH) => "patch",
        (_, &Method::DELETE) => "delete",
        _ => "get",
    };
    (verb, subresource)
}

/// Decides kubelet API requests by SubjectAccessReview.
pub struct Authorizer {
    client: kube::Client,
    node: String,
    cache: Mutex<HashMap<(Caller, &'static str, &'static str), (bool, Instant)>>,
}

impl Authorizer {
    pub fn new(client: kube::Client, node: &str) -> Authorizer {
        Authorizer { client, node: node.to_string(), cache: Mutex::default() }
    }

    /// Whether `caller` may make this request. An unreachable apiserver denies.
    pub async fn allowed(&self, caller: &Caller, method: &Method, path: &str) -> bool {
        if path.trim_end_matches('/') == "/healthz" {
            return true;
        }
        let (verb, subresource) = attributes(method, path);
        let key = (caller.clone(), verb, subresource);
        {
            let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
            if let Some((allowed, at)) = cache.get(&key) {
                let ttl = if *allowed { ALLOWED_TTL } else { DENIED_TTL };
                if at.elapsed() < ttl {
                    return *allowed;
                }
            }
        }
        let review = SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: Some(caller.user.clone()),
                groups: Some(caller.groups.clone()),
                resource_attributes: Some(ResourceAttributes {
                    verb: Some(verb.into()),
                    resource: Some("nodes".into()),
                    subresource: Some(subresource.into()),
                    name: Some(self.node.clone()),
                    ..Default::default()
                }),
                ..Default::default()
            },
            ..Default::default()
        };
        let allowed = match Api::<SubjectAccessReview>::all(self.client.clone()).create(&PostParams::default(), &review).await {
            Ok(answer) => answer.status.map(|s| s.allowed).unwrap_or(false),
            Err(e) => {
                tracing::warn!(error = %e, user = %caller.user, "SubjectAccessReview failed; denying the kubelet API request");
                return false;
            }
        };
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        // Keep the cache bounded: callers are few (the apiserver, monitoring), so a full
        // cache is simply cleared.
        if cache.len() > 1024 {
            cache.clear();
        }
        cache.insert(key, (allowed, Instant::now()));
        allowed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_map_to_node_subresources_as_in_the_kubelet() {
        assert_eq!(attributes(&Method::GET, "/exec/default/web/c?command=ls"), ("create", "proxy"));
        assert_eq!(attributes(&Method::POST, "/portForward/default/web"), ("create", "proxy"));
        assert_eq!(attributes(&Method::GET, "/containerLogs/default/web/c"), ("get", "proxy"));
        assert_eq!(attributes(&Method::GET, "/stats/summary"), ("get", "stats"));
        assert_eq!(attributes(&Method::GET, "/metrics/cadvisor"), ("get", "metrics"));
        assert_eq!(attributes(&Method::GET, "/logs/syslog"), ("get", "log"));
    }
}
