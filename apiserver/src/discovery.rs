//! Discovery: `/version`, `/api`, `/apis`, per group-version resource lists, and the
//! aggregated form (`apidiscovery.k8s.io/v2`) that kubectl asks for first.

use http::HeaderMap;
use serde_json::{json, Value};

use crate::registry::{self, ResourceInfo, Subresource};

/// The Kubernetes version rkube serves the API of.
pub const KUBE_MAJOR: &str = "1";
pub const KUBE_MINOR: &str = "33";
pub const GIT_VERSION: &str = "v1.33.0-rkube";

pub fn version() -> Value {
    json!({
        "major": KUBE_MAJOR,
        "minor": KUBE_MINOR,
        "gitVersion": GIT_VERSION,
        "gitCommit": env!("CARGO_PKG_VERSION"),
        "gitTreeState": "clean",
        "buildDate": "1970-01-01T00:00:00Z",
        "goVersion": "rust",
        "compiler": "rustc",
        "platform": format!("{}/{}", std::env::consts::OS, match std::env::consts::ARCH { "x86_64" => "amd64", "aarch64" => "arm64", other => other }),
    })
}

/// The media type of aggregated discovery responses, if the client asked for it.
pub fn wants_aggregated(headers: &HeaderMap) -> Option<&'static str> {
    let accept = headers.get(http::header::ACCEPT)?.to_str().ok()?;
    for candidate in accept.split(',') {
        let c = candidate.replace(' ', "");
        if c.contains("as=APIGroupDiscoveryList") && c.contains("g=apidiscovery.k8s.io") {
            if c.contains("v=v2beta1") {
                return Some("application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList");
            }
            if c.contains("v=v2") {
                return Some("application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList");
            }
        }
        if c.starts_with("application/json") && !c.contains("as=") {
            return None;
        }
    }
    None
}

pub fn core_versions(server_address: &str) -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}],
    })
}

fn group_json(group: &str, versions: &[&str]) -> Value {
    let gvs: Vec<Value> = versions.iter().map(|v| json!({"groupVersion": format!("{group}/{v}"), "version": v})).collect();
    json!({"name": group, "versions": gvs, "preferredVersion": gvs.first().cloned().unwrap_or(Value::Null)})
}

pub fn group_list() -> Value {
    let groups: Vec<Value> = registry::served_group_versions()
        .into_iter()
        .filter(|(g, _)| !g.is_empty())
        .map(|(g, vs)| group_json(g, &vs))
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

pub fn group(group: &str) -> Option<Value> {
    let (_, versions) = registry::served_group_versions().into_iter().find(|(g, _)| *g == group && !g.is_empty())?;
    let mut v = group_json(group, &versions);
    v["kind"] = json!("APIGroup");
    v["apiVersion"] = json!("v1");
    Some(v)
}

fn sub_verbs(sub: &Subresource) -> Vec<&'static str> {
    match sub {
        Subresource::Status | Subresource::Scale | Subresource::Approval | Subresource::EphemeralContainers => vec!["get", "patch", "update"],
        Subresource::Binding | Subresource::Eviction | Subresource::Token => vec!["create"],
        Subresource::Finalize => vec!["update"],
        Subresource::NodeStream("log") => vec!["get"],
        Subresource::NodeStream("exec" | "attach" | "portforward") => vec!["create", "get"],
        Subresource::NodeStream(_) => vec!["create", "delete", "get", "patch", "update"],
    }
}

fn sub_kind(r: &ResourceInfo, sub: &Subresource) -> (&'static str, &'static str, &'static str) {
    match sub {
        Subresource::Status | Subresource::Finalize | Subresource::Approval | Subresource::EphemeralContainers => (r.group, r.version, r.kind),
        Subresource::Scale => ("autoscaling", "v1", "Scale"),
        Subresource::Binding => ("", "v1", "Binding"),
        Subresource::Eviction => ("policy", "v1", "Eviction"),
        Subresource::Token => ("authentication.k8s.io", "v1", "TokenRequest"),
        Subresource::NodeStream("log") => ("", "v1", "Pod"),
        Subresource::NodeStream("exec" | "attach") => ("", "v1", "PodExecOptions"),
        Subresource::NodeStream("portforward") => ("", "v1", "PodPortForwardOptions"),
        Subresource::NodeStream(_) => ("", "v1", "NodeProxyOptions"),
    }
}

pub fn resource_list(group: &str, version: &str) -> Option<Value> {
    let mut resources = Vec::new();
    for r in registry::served_resources_of(group, version) {
        let mut entry = json!({
            "name": r.plural,
            "singularName": r.singular,
            "namespaced": r.namespaced,
            "kind": r.kind,
            "verbs": r.verbs(),
        });
        if !r.short_names.is_empty() {
            entry["shortNames"] = json!(r.short_names);
        }
        if !r.categories.is_empty() {
            entry["categories"] = json!(r.categories);
        }
        resources.push(entry);
        for sub in r.subresources {
            let (g, v, k) = sub_kind(r, sub);
            let mut e = json!({"name": format!("{}/{}", r.plural, sub.name()), "singularName": "", "namespaced": r.namespaced, "kind": k, "verbs": sub_verbs(sub)});
            if g != r.group || v != r.version {
                e["group"] = json!(g);
                e["version"] = json!(v);
            }
            resources.push(e);
        }
    }
    if resources.is_empty() {
        return None;
    }
    let gv = if group.is_empty() { version.to_string() } else { format!("{group}/{version}") };
    Some(json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources}))
}

/// The aggregated discovery document for the core group (`/api`) or the named groups
/// (`/apis`).
pub fn aggregated(core: bool, media: &str) -> Value {
    let api_version = if media.contains("v2beta1") { "apidiscovery.k8s.io/v2beta1" } else { "apidiscovery.k8s.io/v2" };
    let items: Vec<Value> = registry::served_group_versions()
        .into_iter()
        .filter(|(g, _)| g.is_empty() == core)
        .map(|(g, versions)| {
            let versions: Vec<Value> = versions
                .iter()
                .map(|v| {
                    let resources: Vec<Value> = registry::served_resources_of(g, v)
                        .map(|r| {
                            let mut e = json!({
                                "resource": r.plural,
                                "responseKind": {"group": r.group, "version": r.version, "kind": r.kind},
                                "scope": if r.namespaced { "Namespaced" } else { "Cluster" },
                                "singularResource": r.singular,
                                "verbs": r.verbs(),
                            });
                            if !r.short_names.is_empty() {
                                e["shortNames"] = json!(r.short_names);
                            }
                            if !r.categories.is_empty() {
                                e["categories"] = json!(r.categories);
                            }
                            if !r.subresources.is_empty() {
                                e["subresources"] = Value::Array(
                                    r.subresources
                                        .iter()
                                        .map(|s| {
                                            let (sg, sv, sk) = sub_kind(r, s);
                                            json!({"subresource": s.name(), "responseKind": {"group": sg, "version": sv, "kind": sk}, "verbs": sub_verbs(s)})
                                        })
                                        .collect(),
                                );
                            }
                            e
                        })
                        .collect();
                    json!({"version": v, "resources": resources, "freshness": "Current"})
                })
                .collect();
            let meta = if g.is_empty() { json!({"creationTimestamp": null}) } else { json!({"name": g, "creationTimestamp": null}) };
            json!({"metadata": meta, "versions": versions})
        })
        .collect();
    json!({"kind": "APIGroupDiscoveryList", "apiVersion": api_version, "metadata": {}, "items": items})
}
