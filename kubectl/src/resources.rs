//! The server's resource types and how a user names them, as kubectl's RESTMapper does:
//! `po`, `pod`, `pods`, `Pod`, `deployments.apps`, `deployment.v1.apps` all resolve to
//! one resource; and the `TYPE NAME…`, `TYPE/NAME…`, `TYPE1,TYPE2` argument forms.

use anyhow::Context as _;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::APIResourceList;
use kube::discovery::ApiResource;

/// One resource type the server serves, in one version.
#[derive(Clone, Debug, PartialEq)]
pub struct ResourceInfo {
    pub group: String,
    pub version: String,
    /// The plural resource name (`deployments`).
    pub plural: String,
    pub singular: String,
    pub kind: String,
    pub namespaced: bool,
    pub short_names: Vec<String>,
    pub verbs: Vec<String>,
    pub categories: Vec<String>,
    /// Whether this is the group's preferred version.
    pub preferred: bool,
}

impl ResourceInfo {
    /// `v1` or `apps/v1`.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    #[allow(dead_code)] // for commands that use kube's dynamic API (write commands)
    pub fn api_resource(&self) -> ApiResource {
        ApiResource {
            group: self.group.clone(),
            version: self.version.clone(),
            api_version: self.api_version(),
            kind: self.kind.clone(),
            plural: self.plural.clone(),
        }
    }

    /// `pods` or `deployments.apps`: how API errors and messages name the resource.
    pub fn group_resource(&self) -> String {
        if self.group.is_empty() {
            self.plural.clone()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }

    /// `pod` or `deployment.apps`: the prefix of `-o name` and of kind-prefixed names.
    pub fn kind_group(&self) -> String {
        let kind = self.kind.to_lowercase();
        if self.group.is_empty() {
            kind
        } else {
            format!("{kind}.{}", self.group)
        }
    }

    /// The collection URL: `/api/v1/namespaces/ns/pods`, `/apis/apps/v1/deployments`.
    pub fn collection_url(&self, namespace: Option<&str>) -> String {
        let base = if self.group.is_empty() {
            format!("/api/{}", self.version)
        } else {
            format!("/apis/{}/{}", self.group, self.version)
        };
        match namespace.filter(|_| self.namespaced) {
            Some(ns) => format!("{base}/namespaces/{ns}/{}", self.plural),
            None => format!("{base}/{}", self.plural),
        }
    }

    /// The URL of one object.
    pub fn object_url(&self, namespace: Option<&str>, name: &str) -> String {
        format!("{}/{name}", self.collection_url(namespace))
    }

    pub fn supports(&self, verb: &str) -> bool {
        self.verbs.iter().any(|v| v == verb)
    }

    fn matches_name(&self, name: &str) -> bool {
        self.plural == name
            || self.singular == name
            || self.kind.to_lowercase() == name
            || self.short_names.iter().any(|s| s == name)
    }
}

/// Every resource type the server serves, in discovery order (the core group first).
#[derive(Debug, Default)]
pub struct Discovery {
    pub resources: Vec<ResourceInfo>,
}

impl Discovery {
    /// Reads `/api`, `/apis` and each group version's resource list.
    pub async fn run(client: kube::Client) -> anyhow::Result<Discovery> {
        let mut lists: Vec<(String, String, bool)> = Vec::new();
        let core = client.list_core_api_versions().await?;
        for (i, v) in core.versions.iter().enumerate() {
            lists.push((String::new(), v.clone(), i == 0));
        }
        let groups = client.list_api_groups().await?;
        for g in &groups.groups {
            let preferred = g.preferred_version.as_ref().map(|p| p.version.clone());
            for v in &g.versions {
                let is_preferred = preferred.as_deref() == Some(v.version.as_str());
                lists.push((g.name.clone(), v.version.clone(), is_preferred));
            }
        }
        let fetches = lists.iter().map(|(group, version, _)| {
            let client = client.clone();
            let gv = if group.is_empty() {
                version.clone()
            } else {
                format!("{group}/{version}")
            };
            async move {
                if gv.contains('/') {
                    client.list_api_group_resources(&gv).await
                } else {
                    client.list_core_api_resources(&gv).await
                }
            }
        });
        let results: Vec<kube::Result<APIResourceList>> = futures::future::join_all(fetches).await;
        let mut resources = Vec::new();
        for ((group, version, preferred), result) in lists.into_iter().zip(results) {
            let list = result.with_context(|| format!("discovering {group}/{version}"))?;
            for r in list.resources {
                if r.name.contains('/') {
                    continue; // subresources
                }
                resources.push(ResourceInfo {
                    group: group.clone(),
                    version: version.clone(),
                    singular: if r.singular_name.is_empty() {
                        r.kind.to_lowercase()
                    } else {
                        r.singular_name
                    },
                    plural: r.name,
                    kind: r.kind,
                    namespaced: r.namespaced,
                    short_names: r.short_names.unwrap_or_default(),
                    verbs: r.verbs,
                    categories: r.categories.unwrap_or_default(),
                    preferred,
                });
            }
        }
        Ok(Discovery { resources })
    }

    /// The resource a user's type argument names, or the stock error
    /// `the server doesn't have a resource type "foo"`.
    pub fn resolve(&self, input: &str) -> anyhow::Result<ResourceInfo> {
        self.find(input)
            .ok_or_else(|| anyhow::anyhow!("the server doesn't have a resource type \"{input}\""))
    }

    /// [`Discovery::resolve`] without the error.
    pub fn find(&self, input: &str) -> Option<ResourceInfo> {
        let lower = input.to_lowercase();
        // A bare name: the first match in discovery order, preferred versions first.
        let preferred = |r: &&ResourceInfo| r.preferred;
        if let Some(r) = self
            .resources
            .iter()
            .filter(preferred)
            .find(|r| r.matches_name(&lower))
        {
            return Some(r.clone());
        }
        let parts: Vec<&str> = lower.splitn(3, '.').collect();
        // resource.version.group
        if parts.len() == 3 && looks_like_version(parts[1]) {
            if let Some(r) = self
                .resources
                .iter()
                .find(|r| r.matches_name(parts[0]) && r.version == parts[1] && r.group == parts[2])
            {
                return Some(r.clone());
            }
        }
        // resource.group (the group may be given in part: `deployments.apps`, `hpa.autoscaling`)
        if let Some((name, group)) = lower.split_once('.') {
            let candidates = || self.resources.iter().filter(|r| r.matches_name(name));
            if let Some(r) = candidates().filter(preferred).find(|r| r.group == group) {
                return Some(r.clone());
            }
            if let Some(r) = candidates()
                .filter(preferred)
                .find(|r| r.group.starts_with(&format!("{group}.")))
            {
                return Some(r.clone());
            }
        }
        None
    }

    /// The preferred-version resources in a category (`all`), in discovery order.
    pub fn category(&self, category: &str) -> Vec<ResourceInfo> {
        self.resources
            .iter()
            .filter(|r| r.preferred && r.categories.iter().any(|c| c == category))
            .cloned()
            .collect()
    }

    /// The resource of `kind` in `api_version` (for objects read from files or the server).
    #[allow(dead_code)] // for commands that read objects from files (apply, create)
    pub fn for_kind(&self, api_version: &str, kind: &str) -> Option<ResourceInfo> {
        let (group, version) = match api_version.split_once('/') {
            Some((g, v)) => (g, v),
            None => ("", api_version),
        };
        self.resources
            .iter()
            .find(|r| r.group == group && r.version == version && r.kind == kind)
            .or_else(|| {
                self.resources
                    .iter()
                    .find(|r| r.group == group && r.kind == kind && r.preferred)
            })
            .cloned()
    }
}

fn looks_like_version(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next() == Some('v') && chars.next().is_some_and(|c| c.is_ascii_digit())
}

/// One `TYPE` argument and the names given with it (none: every object of the type).
#[derive(Debug, Clone, PartialEq)]
pub struct TypeNames {
    pub type_arg: String,
    pub names: Vec<String>,
}

/// Splits `TYPE[,TYPE…] [NAME…]` or `TYPE/NAME…` arguments, with the stock errors.
pub fn parse_type_names(args: &[String]) -> anyhow::Result<Vec<TypeNames>> {
    let Some(first) = args.first() else {
        return Ok(Vec::new());
    };
    if args.iter().any(|a| a.contains('/')) {
        if !first.contains('/') {
            anyhow::bail!(
                "there is no need to specify a resource type as a separate argument when passing arguments in resource/name form (e.g. 'kubectl get resource/<resource_name>' instead of 'kubectl get resource resource/<resource_name>'"
            );
        }
        let mut out: Vec<TypeNames> = Vec::new();
        for a in args {
            let Some((t, n)) = a.split_once('/') else {
                anyhow::bail!(
                    "arguments in resource/name form must have a single resource and name"
                );
            };
            if t.is_empty() || n.is_empty() || n.contains('/') {
                anyhow::bail!(
                    "arguments in resource/name form must have a single resource and name"
                );
            }
            match out.last_mut() {
                Some(last) if last.type_arg == t => last.names.push(n.to_string()),
                _ => out.push(TypeNames {
                    type_arg: t.to_string(),
                    names: vec![n.to_string()],
                }),
            }
        }
        return Ok(out);
    }
    let names: Vec<String> = args[1..].to_vec();
    Ok(first
        .split(',')
        .filter(|t| !t.is_empty())
        .map(|t| TypeNames {
            type_arg: t.to_string(),
            names: names.clone(),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn res(group: &str, plural: &str, kind: &str, short: &[&str], preferred: bool) -> ResourceInfo {
        ResourceInfo {
            group: group.into(),
            version: "v1".into(),
            plural: plural.into(),
            singular: kind.to_lowercase(),
            kind: kind.into(),
            namespaced: true,
            short_names: short.iter().map(|s| s.to_string()).collect(),
            verbs: vec![],
            categories: vec![],
            preferred,
        }
    }

    #[test]
    fn resolves_the_names_kubectl_accepts() {
        let d = Discovery {
            resources: vec![
                res("", "pods", "Pod", &["po"], true),
                res("", "events", "Event", &["ev"], true),
                res("apps", "deployments", "Deployment", &["deploy"], true),
                res("events.k8s.io", "events", "Event", &["ev"], true),
            ],
        };
        for input in ["po", "pod", "pods", "Pod", "PODS"] {
            assert_eq!(
                d.resolve(input).map(|r| r.plural).ok().as_deref(),
                Some("pods"),
                "{input}"
            );
        }
        for input in [
            "deploy",
            "deployments.apps",
            "deployment.v1.apps",
            "Deployment.apps",
        ] {
            assert_eq!(
                d.resolve(input).map(|r| r.group).ok().as_deref(),
                Some("apps"),
                "{input}"
            );
        }
        assert_eq!(
            d.resolve("events").map(|r| r.group).ok().as_deref(),
            Some("")
        );
        assert_eq!(
            d.resolve("events.events.k8s.io")
                .map(|r| r.group)
                .ok()
                .as_deref(),
            Some("events.k8s.io")
        );
        assert_eq!(
            d.resolve("events.events").map(|r| r.group).ok().as_deref(),
            Some("events.k8s.io")
        );
        let err = d.resolve("foo").err().map(|e| e.to_string());
        assert_eq!(
            err.as_deref(),
            Some("the server doesn't have a resource type \"foo\"")
        );
    }

    #[test]
    fn parses_type_and_name_arguments() {
        let a = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let t = |t: &str, n: &[&str]| TypeNames {
            type_arg: t.into(),
            names: a(n),
        };
        assert_eq!(
            parse_type_names(&a(&["pods", "a", "b"])).ok(),
            Some(vec![t("pods", &["a", "b"])])
        );
        assert_eq!(
            parse_type_names(&a(&["po,svc"])).ok(),
            Some(vec![t("po", &[]), t("svc", &[])])
        );
        assert_eq!(
            parse_type_names(&a(&["po/a", "po/b", "svc/c"])).ok(),
            Some(vec![t("po", &["a", "b"]), t("svc", &["c"])])
        );
        assert!(parse_type_names(&a(&["po", "svc/c"])).is_err());
    }
}
