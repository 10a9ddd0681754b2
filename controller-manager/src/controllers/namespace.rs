//! The namespace controller: a namespace being deleted is emptied — every namespaced
//! resource discovery lists is deleted in it — and then finalized by removing the
//! `kubernetes` finalizer through `namespaces/{name}/finalize`, after which the API
//! server deletes it. Progress is reported in the namespace's status conditions as
//! Kubernetes does (`NamespaceContentRemaining`, `NamespaceDeletionContentFailure`…).

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, NamespaceCondition};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::ResourceExt;
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::resources;
use super::{Context, ControllerError};

/// The finalizer that keeps a namespace until its content is gone.
pub const KUBERNETES_FINALIZER: &str = "kubernetes";

#[derive(Debug, thiserror::Error)]
pub enum NamespaceError {
    #[error("discovering the API's resources failed")]
    Discover(#[source] kube::Error),
    #[error("writing the status of namespace {name} failed")]
    WriteStatus { name: String, #[source] source: kube::Error },
    #[error("finalizing namespace {name} failed")]
    Finalize { name: String, #[source] source: kube::Error },
}

/// Starts the namespace controller.
pub fn start(ctx: Context, shutdown: CancellationToken) -> futures::future::BoxFuture<'static, Result<(), ControllerError>> {
    Box::pin(async move {
        let api: Api<Namespace> = Api::all(ctx.client.clone());
        Controller::new(api, watcher::Config::default())
            .graceful_shutdown_on(shutdown.cancelled_owned())
            .run(reconcile, error_policy, Arc::new(ctx))
            .for_each(|_| async {})
            .await;
        Ok(())
    })
}

fn error_policy(ns: Arc<Namespace>, err: &NamespaceError, _: Arc<Context>) -> Action {
    warn!(namespace = %ns.name_any(), error = %err, "namespace reconcile failed");
    Action::requeue(Duration::from_secs(2))
}

/// What deleting the content found.
#[derive(Debug, Default)]
struct Sweep {
    /// `pods.` → count, for resources with objects left.
    remaining: Vec<(String, usize)>,
    /// finalizer → count of objects still carrying it.
    finalizers: Vec<(String, usize)>,
    /// Deletion errors, as messages.
    failures: Vec<String>,
}

async fn reconcile(ns: Arc<Namespace>, ctx: Arc<Context>) -> Result<Action, NamespaceError> {
    let name = ns.name_any();
    if ns.metadata.deletion_timestamp.is_none() {
        return Ok(Action::await_change());
    }
    let finalizers = ns.spec.as_ref().and_then(|s| s.finalizers.clone()).unwrap_or_default();
    if !finalizers.iter().any(|f| f == KUBERNETES_FINALIZER) {
        return Ok(Action::await_change());
    }
    let kinds = resources::deletable_kinds(&ctx.client).await.map_err(NamespaceError::Discover)?;
    let mut sweep = Sweep::default();
    for kind in kinds.iter().filter(|k| k.namespaced) {
        let api: Api<DynamicObject> = Api::namespaced_with(ctx.client.clone(), &name, &kind.resource);
        if let Err(e) = api.delete_collection(&DeleteParams::background(), &ListParams::default()).await {
            if !matches!(&e, kube::Error::Api(s) if s.code == 404 || s.code == 405) {
                sweep.failures.push(format!("{}: {e}", kind.group_resource()));
            }
        }
    }
    for kind in kinds.iter().filter(|k| k.namespaced) {
        let api: Api<DynamicObject> = Api::namespaced_with(ctx.client.clone(), &name, &kind.resource);
        match api.list(&ListParams::default()).await {
            Ok(list) if !list.items.is_empty() => {
                sweep.remaining.push((kind.group_resource(), list.items.len()));
                for obj in &list.items {
                    for f in obj.finalizers() {
                        match sweep.finalizers.iter_mut().find(|(n, _)| n == f) {
                            Some((_, c)) => *c += 1,
                            None => sweep.finalizers.push((f.clone(), 1)),
                        }
                    }
                }
            }
            Ok(_) => {}
            Err(e) => sweep.failures.push(format!("{}: {e}", kind.group_resource())),
        }
    }
    write_conditions(&ctx, &ns, &sweep).await?;
    if !sweep.remaining.is_empty() || !sweep.failures.is_empty() {
        info!(namespace = %name, remaining = ?sweep.remaining, "namespace content still being deleted");
        return Ok(Action::requeue(Duration::from_secs(1)));
    }
    let mut finalized = (*ns).clone();
    let spec = finalized.spec.get_or_insert_with(Default::default);
    spec.finalizers = Some(finalizers.into_iter().filter(|f| f != KUBERNETES_FINALIZER).collect());
    finalized.metadata.managed_fields = None;
    let api: Api<Namespace> = Api::all(ctx.client.clone());
    match api.replace_subresource("finalize", &name, &PostParams::default(), &finalized).await {
        Ok(_) => {
            info!(namespace = %name, "namespace emptied and finalized");
            Ok(Action::await_change())
        }
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(Action::await_change()),
        Err(source) => Err(NamespaceError::Finalize { name, source }),
    }
}

/// The deletion conditions Kubernetes' namespace controller reports.
fn conditions(sweep: &Sweep) -> Vec<(&'static str, bool, &'static str, String)> {
    let remaining = sweep.remaining.iter().map(|(r, n)| format!("{r} has {n} resource instances")).collect::<Vec<_>>().join(", ");
    let finalizers = sweep.finalizers.iter().map(|(f, n)| format!("{f} in {n} resource instances")).collect::<Vec<_>>().join(", ");
    vec![
        ("NamespaceDeletionDiscoveryFailure", false, "ResourcesDiscovered", "All resources successfully discovered".to_string()),
        ("NamespaceDeletionGroupVersionParsingFailure", false, "ParsedGroupVersions", "All legacy kube types successfully parsed".to_string()),
        if sweep.failures.is_empty() {
            ("NamespaceDeletionContentFailure", false, "ContentDeleted", "All content successfully deleted, may be waiting on finalization".to_string())
        } else {
            ("NamespaceDeletionContentFailure", true, "ContentDeletionFailed", format!("Failed to delete all resource types, {} remaining: {}", sweep.failures.len(), sweep.failures.join(", ")))
        },
        if sweep.remaining.is_empty() {
            ("NamespaceContentRemaining", false, "ContentRemoved", "All content successfully removed".to_string())
        } else {
            ("NamespaceContentRemaining", true, "SomeResourcesRemain", format!("Some resources are remaining: {remaining}"))
        },
        if sweep.finalizers.is_empty() {
            ("NamespaceFinalizersRemaining", false, "ContentHasNoFinalizers", "All content-preserving finalizers finished".to_string())
        } else {
            ("NamespaceFinalizersRemaining", true, "SomeFinalizersRemain", format!("Some content in the namespace has finalizers remaining: {finalizers}"))
        },
    ]
}

async fn write_conditions(ctx: &Context, ns: &Namespace, sweep: &Sweep) -> Result<(), NamespaceError> {
    let name = ns.name_any();
    let current = ns.status.as_ref().and_then(|s| s.conditions.clone()).unwrap_or_default();
    let now = Time(Timestamp::now());
    let mut changed = false;
    let wanted: Vec<NamespaceCondition> = conditions(sweep)
        .into_iter()
        .map(|(type_, status, reason, message)| {
            let status = if status { "True" } else { "False" }.to_string();
            let old = current.iter().find(|c| c.type_ == type_);
            let same = old.is_some_and(|c| c.status == status && c.reason.as_deref() == Some(reason) && c.message.as_deref() == Some(message.as_str()));
            changed |= !same;
            let transition = match old {
                Some(c) if c.status == status => c.last_transition_time.clone(),
                _ => Some(now.clone()),
            };
            NamespaceCondition { type_: type_.to_string(), status, reason: Some(reason.to_string()), message: Some(message), last_transition_time: transition }
        })
        .collect();
    if !changed {
        return Ok(());
    }
    let api: Api<Namespace> = Api::all(ctx.client.clone());
    let patch = json!({"status": {"phase": "Terminating", "conditions": wanted}});
    match api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch)).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(source) => Err(NamespaceError::WriteStatus { name, source }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remaining_content_is_reported_as_kubernetes_words_it() {
        let sweep = Sweep { remaining: vec![("pods".into(), 2)], finalizers: vec![("foregroundDeletion".into(), 1)], failures: vec![] };
        let c = conditions(&sweep);
        let remaining = c.iter().find(|c| c.0 == "NamespaceContentRemaining").map(|c| c.3.clone()).unwrap_or_default();
        assert_eq!(remaining, "Some resources are remaining: pods has 2 resource instances");
        assert!(c.iter().any(|c| c.0 == "NamespaceFinalizersRemaining" && c.1));
        assert!(c.iter().any(|c| c.0 == "NamespaceDeletionContentFailure" && !c.1));
    }
}
