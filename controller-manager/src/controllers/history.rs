//! ControllerRevisions, the history of DaemonSets and StatefulSets (Kubernetes'
//! `controller/history`): each distinct pod template is stored once as a revision named
//! `<owner>-<hash>` whose data is the patch `{"spec":{"template":…,"$patch":"replace"}}`,
//! numbered by `revision`; re-applying an old template renumbers its revision instead of
//! creating a new one, and revisions no live pod uses are pruned beyond
//! `revisionHistoryLimit`.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::sync::Arc;

use apimachinery::labels::Selector;
use k8s_openapi::api::apps::v1::ControllerRevision;
use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::runtime::RawExtension;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Resource, ResourceExt};
use serde_json::{json, Value};
use tracing::{debug, info};

use super::deployment::template_hash;
use super::podcontrol::{self, Claimer, PodControlError};

/// The label on revisions (and pods) naming the revision's hash (DaemonSet pods) or name
/// (StatefulSet pods).
pub const CONTROLLER_REVISION_HASH: &str = "controller-revision-hash";

/// Why a history operation failed.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    #[error("listing controller revisions of {key}")]
    List {
        key: String,
        #[source]
        source: kube::Error,
    },
    #[error("claiming controller revisions of {key}")]
    Claim {
        key: String,
        #[source]
        source: PodControlError,
    },
    #[error("creating controller revision {name}")]
    Create {
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("renumbering controller revision {name}")]
    Renumber {
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("deleting controller revision {name}")]
    Delete {
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("controller revision {name} exists with other data: hash collision")]
    Collision { name: String },
}

/// The data a revision stores for `template` (`getPatch`).
pub fn revision_data(template: &PodTemplateSpec) -> Value {
    let mut t = serde_json::to_value(template).unwrap_or(Value::Null);
    if let Value::Object(m) = &mut t {
        m.insert("$patch".into(), json!("replace"));
    }
    json!({"spec": {"template": t}})
}

/// The pod template a revision stores, if it stores one.
pub fn template_of(rev: &ControllerRevision) -> Option<PodTemplateSpec> {
    let mut t = rev.data.as_ref()?.0.get("spec")?.get("template")?.clone();
    if let Value::Object(m) = &mut t {
        m.remove("$patch");
    }
    serde_json::from_value(t).ok()
}

/// The hash naming the revision of `template` (with the owner's collision count).
pub fn hash_of(template: &PodTemplateSpec, collision_count: Option<i32>) -> String {
    template_hash(template, collision_count)
}

/// The revision's name for `owner` and `hash` (`ControllerRevisionName`).
pub fn revision_name(owner: &str, hash: &str) -> String {
    let mut prefix = owner.to_string();
    prefix.truncate(223);
    format!("{prefix}-{hash}")
}

fn same_data(rev: &ControllerRevision, data: &Value) -> bool {
    rev.data.as_ref().is_some_and(|d| &d.0 == data)
}

/// The revisions `owner` controls (adopting matching orphans, releasing those that stopped
/// matching), oldest revision first.
pub async fn owned_revisions<O>(client: &kube::Client, owner: &O, selector: &Selector) -> Result<Vec<ControllerRevision>, HistoryError>
where
    O: Resource<DynamicType = ()>,
{
    let key = podcontrol::key_of(owner.meta());
    let ns = owner.meta().namespace.clone().unwrap_or_default();
    let api: Api<ControllerRevision> = Api::namespaced(client.clone(), &ns);
    let list = api.list(&ListParams::default()).await.map_err(|source| HistoryError::List { key: key.clone(), source })?;
    let claimer = Claimer { owner, selector };
    let objects: Vec<Arc<ControllerRevision>> = list.items.into_iter().map(Arc::new).collect();
    let claimed = podcontrol::claim(|ns| Api::<ControllerRevision>::namespaced(client.clone(), ns), &claimer, objects)
        .await
        .map_err(|source| HistoryError::Claim { key, source })?;
    let mut revs: Vec<ControllerRevision> = claimed.into_iter().map(|r| (*r).clone()).collect();
    revs.sort_by(|a, b| a.revision.cmp(&b.revision).then_with(|| a.name_any().cmp(&b.name_any())));
    Ok(revs)
}

/// The revision for `template`: an existing one with the same data (renumbered to be
/// the newest if it is not), or a new one numbered after the newest. A name taken by a
/// revision with other data is a [`HistoryError::Collision`]: the caller bumps its
/// `collisionCount` and tries again.
pub async fn ensure_revision<O>(
    client: &kube::Client,
    owner: &O,
    template: &PodTemplateSpec,
    collision_count: Option<i32>,
    revisions: &[ControllerRevision],
) -> Result<ControllerRevision, HistoryError>
where
    O: Resource<DynamicType = ()>,
{
    let ns = owner.meta().namespace.clone().unwrap_or_default();
    let api: Api<ControllerRevision> = Api::namespaced(client.clone(), &ns);
    let data = revision_data(template);
    let newest = revisions.iter().map(|r| r.revision).max().unwrap_or(0);
    // Several revisions with equal data: the newest wins (`FindEqualRevisions`).
    if let Some(existing) = revisions.iter().rev().find(|r| same_data(r, &data)) {
        if existing.revision == newest {
            return Ok(existing.clone());
        }
        let name = existing.name_any();
        let patch = json!({"revision": newest + 1});
        let updated = api
            .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(|source| HistoryError::Renumber { name: name.clone(), source })?;
        info!(revision = %name, number = newest + 1, "re-used an old revision");
        return Ok(updated);
    }
    let hash = hash_of(template, collision_count);
    let name = revision_name(&owner.meta().name.clone().unwrap_or_default(), &hash);
    let mut labels: BTreeMap<String, String> = template.metadata.as_ref().and_then(|m| m.labels.clone()).unwrap_or_default();
    labels.insert(CONTROLLER_REVISION_HASH.into(), hash);
    let rev = ControllerRevision {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            namespace: Some(ns),
            labels: Some(labels),
            owner_references: Some(vec![podcontrol::controller_reference(owner)]),
            ..Default::default()
        },
        data: Some(RawExtension(data.clone())),
        revision: newest + 1,
    };
    match api.create(&PostParams::default(), &rev).await {
        Ok(created) => {
            info!(revision = %name, number = newest + 1, "created controller revision");
            Ok(created)
        }
        Err(kube::Error::Api(s)) if s.code == 409 => {
            let found = api.get(&name).await.map_err(|source| HistoryError::Create { name: name.clone(), source })?;
            let ours = podcontrol::controller_of(&found.metadata).is_some_and(|r| Some(&r.uid) == owner.meta().uid.as_ref());
            if ours && same_data(&found, &data) {
                Ok(found)
            } else {
                Err(HistoryError::Collision { name })
            }
        }
        Err(source) => Err(HistoryError::Create { name, source }),
    }
}

/// Deletes the oldest revisions for which `in_use` is false, keeping `limit` of them.
pub async fn truncate(client: &kube::Client, revisions: &[ControllerRevision], limit: i32, in_use: impl Fn(&ControllerRevision) -> bool) -> Result<(), HistoryError> {
    let unused: Vec<&ControllerRevision> = revisions.iter().filter(|r| !in_use(r)).collect();
    let limit = usize::try_from(limit.max(0)).unwrap_or(0);
    if unused.len() <= limit {
        return Ok(());
    }
    for rev in &unused[..unused.len() - limit] {
        let name = rev.name_any();
        let api: Api<ControllerRevision> = Api::namespaced(client.clone(), rev.meta().namespace.as_deref().unwrap_or_default());
        match api.delete(&name, &DeleteParams::default()).await {
            Ok(_) => debug!(revision = %name, "pruned old revision"),
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(source) => return Err(HistoryError::Delete { name, source }),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_round_trips_the_template() {
        let t: PodTemplateSpec = serde_json::from_value(json!({
            "metadata": {"labels": {"app": "x"}},
            "spec": {"containers": [{"name": "c", "image": "busybox"}]},
        }))
        .unwrap_or_default();
        let rev = ControllerRevision { data: Some(RawExtension(revision_data(&t))), ..Default::default() };
        assert_eq!(revision_data(&t)["spec"]["template"]["$patch"], json!("replace"));
        assert_eq!(template_of(&rev), Some(t.clone()));
        assert_ne!(hash_of(&t, None), hash_of(&t, Some(1)));
        assert_eq!(revision_name("web", "abc"), "web-abc");
    }
}
