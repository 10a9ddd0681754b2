//! The API's resource kinds as the garbage collector and the namespace controller need
//! them: every listable, deletable resource discovery reports (its preferred version),
//! with its scope, so that both can act on kinds they were not compiled against.

use kube::core::GroupVersionKind;
use kube::discovery::{verbs, ApiCapabilities, ApiResource, Discovery, Scope};

/// One resource kind found in discovery.
#[derive(Debug, Clone)]
pub struct Kind {
    pub resource: ApiResource,
    pub namespaced: bool,
    pub watchable: bool,
}

impl Kind {
    fn new(resource: ApiResource, caps: &ApiCapabilities) -> Kind {
        Kind {
            namespaced: caps.scope == Scope::Namespaced,
            watchable: caps.supports_operation(verbs::WATCH),
            resource,
        }
    }

    /// `deployments.apps`, or `pods` for the core group.
    pub fn group_resource(&self) -> String {
        if self.resource.group.is_empty() {
            self.resource.plural.clone()
        } else {
            format!("{}.{}", self.resource.plural, self.resource.group)
        }
    }
}

/// Every resource that can be listed and deleted, at its preferred version. Kinds served
/// in several groups (core and `events.k8s.io` events) appear once per group.
pub async fn deletable_kinds(client: &kube::Client) -> Result<Vec<Kind>, kube::Error> {
    let discovery = Discovery::new(client.clone()).run().await?;
    let mut out = Vec::new();
    for group in discovery.groups() {
        for (resource, caps) in group.recommended_resources() {
            if caps.supports_operation(verbs::LIST) && caps.supports_operation(verbs::DELETE) {
                out.push(Kind::new(resource, &caps));
            }
        }
    }
    Ok(out)
}

/// Finds the kind an ownerReference's `apiVersion` and `kind` name, in any version of
/// its group (an owner recorded as `apps/v1beta1` is still a Deployment).
pub fn find_kind<'a>(kinds: &'a [Kind], api_version: &str, kind: &str) -> Option<&'a Kind> {
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    let gvk = GroupVersionKind::gvk(group, version, kind);
    kinds
        .iter()
        .find(|k| k.resource.group == gvk.group && k.resource.kind == gvk.kind && k.resource.version == gvk.version)
        .or_else(|| kinds.iter().find(|k| k.resource.group == gvk.group && k.resource.kind == gvk.kind))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind(group: &str, version: &str, kind: &str, plural: &str) -> Kind {
        let gvk = GroupVersionKind::gvk(group, version, kind);
        Kind { resource: ApiResource::from_gvk_with_plural(&gvk, plural), namespaced: true, watchable: true }
    }

    #[test]
    fn owners_are_found_in_any_version_of_their_group() {
        let kinds = vec![kind("apps", "v1", "ReplicaSet", "replicasets"), kind("", "v1", "Pod", "pods")];
        assert_eq!(find_kind(&kinds, "apps/v1", "ReplicaSet").map(|k| k.group_resource()), Some("replicasets.apps".into()));
        assert_eq!(find_kind(&kinds, "apps/v1beta2", "ReplicaSet").map(|k| k.resource.plural.clone()), Some("replicasets".into()));
        assert_eq!(find_kind(&kinds, "v1", "Pod").map(|k| k.group_resource()), Some("pods".into()));
        assert!(find_kind(&kinds, "batch/v1", "Job").is_none());
    }
}
