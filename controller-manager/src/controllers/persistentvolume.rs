//! PersistentVolume binding and local-path provisioning: a claim binds to an Available
//! volume that fits it (class, size, access modes); a claim of a class whose provisioner
//! is `rancher.io/local-path` gets a hostPath volume on the node of the first pod that
//! uses it (`WaitForFirstConsumer`), as k3s's local-path-provisioner gives labs. A
//! released volume with the `Delete` policy is deleted, its directory with it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{
    HostPathVolumeSource, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm, ObjectReference, PersistentVolume,
    PersistentVolumeClaim, PersistentVolumeSpec, Pod, VolumeNodeAffinity,
};
use k8s_openapi::api::storage::v1::StorageClass;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::{Context, ControllerError};

/// The provisioner name k3s's local-path-provisioner registers.
pub const LOCAL_PATH_PROVISIONER: &str = "rancher.io/local-path";
const PROVISIONED_BY: &str = "pv.kubernetes.io/provisioned-by";
const SELECTED_NODE: &str = "volume.kubernetes.io/selected-node";

#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    #[error("reading {what} failed")]
    Read { what: String, #[source] source: kube::Error },
    #[error("binding claim {claim} to volume {volume} failed")]
    Bind { claim: String, volume: String, #[source] source: kube::Error },
    #[error("provisioning a volume for claim {claim} failed")]
    Provision { claim: String, #[source] source: kube::Error },
    #[error("deleting released volume {volume} failed")]
    Delete { volume: String, #[source] source: kube::Error },
}

pub fn start(ctx: Context, shutdown: CancellationToken) -> futures::future::BoxFuture<'static, Result<(), ControllerError>> {
    Box::pin(async move {
        let claims: Api<PersistentVolumeClaim> = Api::all(ctx.client.clone());
        let volumes: Api<PersistentVolume> = Api::all(ctx.client.clone());
        let pods: Api<Pod> = Api::all(ctx.client.clone());
        let claim_state = Arc::new(Claims { controller: ctx.events("persistentvolume-controller"), provisioner: ctx.events(LOCAL_PATH_PROVISIONER), ctx: ctx.clone() });
        let ctx = Arc::new(ctx);
        let claim_loop = Controller::new(claims, watcher::Config::default())
            // A pod that uses a claim and has been scheduled is the "first consumer".
            .watches(pods, watcher::Config::default(), |pod| {
                let ns = pod.namespace().unwrap_or_default();
                let names: Vec<String> = pod
                    .spec
                    .iter()
                    .flat_map(|s| s.volumes.iter().flatten())
                    .filter_map(|v| v.persistent_volume_claim.as_ref().map(|c| c.claim_name.clone()))
                    .collect();
                names.into_iter().map(move |n| ObjectRef::<PersistentVolumeClaim>::new(&n).within(&ns))
            })
            .graceful_shutdown_on({
                let s = shutdown.clone();
                async move { s.cancelled().await }
            })
            .run(reconcile_claim, claim_error, claim_state)
            .for_each(|_| async {});
        let claims_for_volumes: Api<PersistentVolumeClaim> = Api::all(ctx.client.clone());
        let volume_loop = Controller::new(volumes, watcher::Config::default())
            // A deleted claim releases its volume.
            .watches(claims_for_volumes, watcher::Config::default(), |pvc| {
                pvc.spec.and_then(|s| s.volume_name).filter(|v| !v.is_empty()).map(|v| ObjectRef::<PersistentVolume>::new(&v))
            })
            .graceful_shutdown_on(async move { shutdown.cancelled().await })
            .run(reconcile_volume, volume_error, ctx)
            .for_each(|_| async {});
        tokio::join!(claim_loop, volume_loop);
        Ok(())
    })
}

/// What the claim loop works with: the client and configuration, and the event sinks of
/// the volume controller and of the local-path provisioner (`kubectl describe pvc` shows
/// both, as on k3s).
struct Claims {
    ctx: Context,
    controller: component_base::events::EventSink,
    provisioner: component_base::events::EventSink,
}

fn claim_error(pvc: Arc<PersistentVolumeClaim>, err: &VolumeError, _: Arc<Claims>) -> Action {
    warn!(claim = %pvc.name_any(), error = %err, "persistent volume claim reconcile failed");
    Action::requeue(Duration::from_secs(2))
}

fn volume_error(pv: Arc<PersistentVolume>, err: &VolumeError, _: Arc<Context>) -> Action {
    warn!(volume = %pv.name_any(), error = %err, "persistent volume reconcile failed");
    Action::requeue(Duration::from_secs(5))
}

fn bytes(q: Option<&Quantity>) -> i128 {
    q.and_then(|q| apimachinery::quantity::Quantity::parse(&q.0).ok()).map(|q| q.to_bytes()).unwrap_or(0)
}

fn claim_ref(pvc: &PersistentVolumeClaim) -> ObjectReference {
    ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("PersistentVolumeClaim".into()),
        name: pvc.metadata.name.clone(),
        namespace: pvc.metadata.namespace.clone(),
        uid: pvc.metadata.uid.clone(),
        resource_version: pvc.metadata.resource_version.clone(),
        ..Default::default()
    }
}

/// Does `pv` satisfy `pvc` (class, capacity, access modes) and is it free for it?
fn fits(pv: &PersistentVolume, pvc: &PersistentVolumeClaim) -> bool {
    let (Some(vs), Some(cs)) = (pv.spec.as_ref(), pvc.spec.as_ref()) else { return false };
    if pv.metadata.deletion_timestamp.is_some() || pv.status.as_ref().and_then(|s| s.phase.as_deref()) != Some("Available") {
        return false;
    }
    if let Some(r) = &vs.claim_ref {
        if r.name != pvc.metadata.name || r.namespace != pvc.metadata.namespace {
            return false;
        }
    }
    if vs.storage_class_name.clone().unwrap_or_default() != cs.storage_class_name.clone().unwrap_or_default() {
        return false;
    }
    let want = bytes(cs.resources.as_ref().and_then(|r| r.requests.as_ref()).and_then(|r| r.get("storage")));
    let have = bytes(vs.capacity.as_ref().and_then(|c| c.get("storage")));
    if have < want {
        return false;
    }
    let modes = vs.access_modes.clone().unwrap_or_default();
    cs.access_modes.iter().flatten().all(|m| modes.contains(m))
}

async fn reconcile_claim(pvc: Arc<PersistentVolumeClaim>, st: Arc<Claims>) -> Result<Action, VolumeError> {
    if pvc.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let ctx = &st.ctx;
    let claim = || pvc.object_ref(&());
    let ns = pvc.namespace().unwrap_or_default();
    let name = pvc.name_any();
    let key = format!("{ns}/{name}");
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &ns);
    let volumes: Api<PersistentVolume> = Api::all(ctx.client.clone());
    let bound_to = pvc.spec.as_ref().and_then(|s| s.volume_name.clone()).filter(|v| !v.is_empty());
    let phase = pvc.status.as_ref().and_then(|s| s.phase.clone()).unwrap_or_default();
    if bound_to.is_some() && phase == "Bound" {
        return Ok(Action::await_change());
    }
    let all = volumes.list(&ListParams::default()).await.map_err(|source| VolumeError::Read { what: "persistentvolumes".into(), source })?;
    // A pre-bound or matching Available volume: the smallest that fits.
    let candidate = match &bound_to {
        Some(v) => all.items.into_iter().find(|pv| pv.metadata.name.as_deref() == Some(v.as_str())),
        None => {
            let mut fitting: Vec<PersistentVolume> = all.items.into_iter().filter(|pv| fits(pv, &pvc)).collect();
            fitting.sort_by_key(|pv| bytes(pv.spec.as_ref().and_then(|s| s.capacity.as_ref()).and_then(|c| c.get("storage"))));
            fitting.into_iter().next()
        }
    };
    if let Some(pv) = candidate {
        bind(ctx, &claims, &volumes, &pvc, &pv).await?;
        info!(claim = %key, volume = %pv.name_any(), "bound");
        return Ok(Action::await_change());
    }
    // Dynamic provisioning by the local-path provisioner.
    let class_name = pvc.spec.as_ref().and_then(|s| s.storage_class_name.clone()).unwrap_or_default();
    if class_name.is_empty() {
        st.controller.normal(claim(), "FailedBinding", "no persistent volumes available for this claim and no storage class is set");
        return Ok(Action::requeue(Duration::from_secs(15)));
    }
    let classes: Api<StorageClass> = Api::all(ctx.client.clone());
    let Some(class) = classes.get_opt(&class_name).await.map_err(|source| VolumeError::Read { what: format!("storageclass {class_name}"), source })? else {
        st.controller.warning(claim(), "ProvisioningFailed", format!("storageclass.storage.k8s.io {class_name:?} not found"));
        return Ok(Action::requeue(Duration::from_secs(15)));
    };
    if class.provisioner != LOCAL_PATH_PROVISIONER {
        st.controller.normal(
            claim(),
            "ExternalProvisioning",
            format!(
                "Waiting for a volume to be created either by the external provisioner '{}' or manually by the system administrator. If volume creation is delayed, please verify that the provisioner is running and correctly registered.",
                class.provisioner
            ),
        );
        return Ok(Action::requeue(Duration::from_secs(15)));
    }
    let node = match pvc.metadata.annotations.as_ref().and_then(|a| a.get(SELECTED_NODE)).cloned() {
        Some(n) => Some(n),
        None => {
            let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
            let list = pods.list(&ListParams::default()).await.map_err(|source| VolumeError::Read { what: "pods".into(), source })?;
            list.items.into_iter().find_map(|p| {
                let spec = p.spec?;
                let uses = spec.volumes.iter().flatten().any(|v| v.persistent_volume_claim.as_ref().map(|c| c.claim_name == name).unwrap_or(false));
                if uses { spec.node_name } else { None }
            })
        }
    };
    let immediate = class.volume_binding_mode.as_deref() == Some("Immediate");
    let Some(node) = node.or_else(|| immediate.then(String::new)) else {
        // WaitForFirstConsumer: a pod event brings us back.
        st.controller.normal(claim(), "WaitForFirstConsumer", "waiting for first consumer to be created before binding");
        return Ok(Action::await_change());
    };
    st.provisioner.normal(claim(), "Provisioning", format!("External provisioner is provisioning volume for claim {key:?}"));
    let pv = provision(ctx, &pvc, &class, &node).await?;
    let pv = match volumes.create(&PostParams::default(), &pv).await {
        Ok(created) => {
            st.provisioner.normal(claim(), "ProvisioningSucceeded", format!("Successfully provisioned volume {}", created.name_any()));
            created
        }
        Err(kube::Error::Api(s)) if s.code == 409 => pv,
        Err(source) => {
            st.provisioner.warning(claim(), "ProvisioningFailed", format!("failed to provision volume with StorageClass {class_name:?}: {}", super::api_error_message(&source)));
            return Err(VolumeError::Provision { claim: key.clone(), source });
        }
    };
    // The new volume is Available once its status is written; bind right away.
    let pv = set_volume_phase(&volumes, &pv, "Available").await.unwrap_or(pv);
    bind(ctx, &claims, &volumes, &pvc, &pv).await?;
    info!(claim = %key, volume = %pv.name_any(), node = %node, "provisioned and bound");
    Ok(Action::await_change())
}

async fn set_volume_phase(volumes: &Api<PersistentVolume>, pv: &PersistentVolume, phase: &str) -> Option<PersistentVolume> {
    let patch = json!({"status": {"phase": phase}});
    volumes.patch_status(&pv.name_any(), &PatchParams::default(), &Patch::Merge(&patch)).await.ok()
}

/// A hostPath volume under the configured local-path root, pinned to `node`.
async fn provision(ctx: &Context, pvc: &PersistentVolumeClaim, class: &StorageClass, node: &str) -> Result<PersistentVolume, VolumeError> {
    let uid = pvc.metadata.uid.clone().unwrap_or_default();
    let ns = pvc.namespace().unwrap_or_default();
    let name = pvc.name_any();
    let path = ctx.config.local_path_root.join(format!("pvc-{uid}_{ns}_{name}"));
    let spec = pvc.spec.clone().unwrap_or_default();
    let capacity: BTreeMap<String, Quantity> = spec
        .resources
        .as_ref()
        .and_then(|r| r.requests.as_ref())
        .and_then(|r| r.get("storage").cloned())
        .map(|q| BTreeMap::from([("storage".to_string(), q)]))
        .unwrap_or_default();
    let node_affinity = (!node.is_empty()).then(|| VolumeNodeAffinity {
        required: Some(NodeSelector {
            node_selector_terms: vec![NodeSelectorTerm {
                match_expressions: Some(vec![NodeSelectorRequirement {
                    key: "kubernetes.io/hostname".into(),
                    operator: "In".into(),
                    values: Some(vec![node.to_string()]),
                }]),
                ..Default::default()
            }],
        }),
    });
    Ok(PersistentVolume {
        metadata: ObjectMeta {
            name: Some(format!("pvc-{uid}")),
            annotations: Some(BTreeMap::from([(PROVISIONED_BY.to_string(), LOCAL_PATH_PROVISIONER.to_string())])),
            ..Default::default()
        },
        spec: Some(PersistentVolumeSpec {
            access_modes: spec.access_modes.clone(),
            capacity: Some(capacity),
            claim_ref: Some(claim_ref(pvc)),
            host_path: Some(HostPathVolumeSource { path: path.to_string_lossy().into_owned(), type_: Some("DirectoryOrCreate".into()) }),
            node_affinity,
            persistent_volume_reclaim_policy: Some(class.reclaim_policy.clone().unwrap_or_else(|| "Delete".into())),
            storage_class_name: class.metadata.name.clone(),
            volume_mode: spec.volume_mode.clone(),
            ..Default::default()
        }),
        status: None,
    })
}

async fn bind(
    _ctx: &Context,
    claims: &Api<PersistentVolumeClaim>,
    volumes: &Api<PersistentVolume>,
    pvc: &PersistentVolumeClaim,
    pv: &PersistentVolume,
) -> Result<(), VolumeError> {
    let claim = pvc.name_any();
    let volume = pv.name_any();
    let err = |source| VolumeError::Bind { claim: claim.clone(), volume: volume.clone(), source };
    let pv_patch = json!({"spec": {"claimRef": claim_ref(pvc)}});
    volumes.patch(&volume, &PatchParams::default(), &Patch::Merge(&pv_patch)).await.map_err(err)?;
    volumes
        .patch_status(&volume, &PatchParams::default(), &Patch::Merge(&json!({"status": {"phase": "Bound"}})))
        .await
        .map_err(err)?;
    let claim_patch = json!({
        "metadata": {"annotations": {"pv.kubernetes.io/bind-completed": "yes", "pv.kubernetes.io/bound-by-controller": "yes"}},
        "spec": {"volumeName": volume},
    });
    claims.patch(&claim, &PatchParams::default(), &Patch::Merge(&claim_patch)).await.map_err(err)?;
    let vs = pv.spec.clone().unwrap_or_default();
    let status = json!({"status": {"phase": "Bound", "accessModes": vs.access_modes, "capacity": vs.capacity}});
    claims.patch_status(&claim, &PatchParams::default(), &Patch::Merge(&status)).await.map_err(err)?;
    Ok(())
}

/// Volumes whose claim is gone are Released; the local-path provisioner's with the
/// `Delete` policy are deleted with their data, as the provisioner does.
async fn reconcile_volume(pv: Arc<PersistentVolume>, ctx: Arc<Context>) -> Result<Action, VolumeError> {
    let volumes: Api<PersistentVolume> = Api::all(ctx.client.clone());
    let name = pv.name_any();
    let spec = pv.spec.clone().unwrap_or_default();
    let phase = pv.status.as_ref().and_then(|s| s.phase.clone()).unwrap_or_default();
    if pv.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let Some(claim) = spec.claim_ref.clone() else {
        if phase.is_empty() || phase == "Pending" {
            set_volume_phase(&volumes, &pv, "Available").await;
        }
        return Ok(Action::await_change());
    };
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), claim.namespace.as_deref().unwrap_or("default"));
    let current = claims
        .get_opt(claim.name.as_deref().unwrap_or(""))
        .await
        .map_err(|source| VolumeError::Read { what: "persistentvolumeclaim".into(), source })?;
    let claim_alive = current.as_ref().map(|c| c.metadata.uid == claim.uid || claim.uid.is_none()).unwrap_or(false);
    if claim_alive {
        if phase.is_empty() || phase == "Pending" {
            set_volume_phase(&volumes, &pv, "Available").await;
        }
        return Ok(Action::await_change());
    }
    if phase != "Released" {
        set_volume_phase(&volumes, &pv, "Released").await;
    }
    let ours = pv.metadata.annotations.as_ref().and_then(|a| a.get(PROVISIONED_BY)).map(String::as_str) == Some(LOCAL_PATH_PROVISIONER);
    if ours && spec.persistent_volume_reclaim_policy.as_deref() == Some("Delete") {
        if let Some(path) = spec.host_path.as_ref().map(|h| std::path::PathBuf::from(&h.path)) {
            // Only ever below the provisioner's own root.
            if path.starts_with(&ctx.config.local_path_root) && path.exists() {
                if let Err(e) = std::fs::remove_dir_all(&path) {
                    warn!(volume = %name, path = %path.display(), error = %e, "removing the volume's data failed");
                }
            }
        }
        match volumes.delete(&name, &Default::default()).await {
            Ok(_) => info!(volume = %name, "released volume deleted"),
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(source) => return Err(VolumeError::Delete { volume: name, source }),
        }
    }
    Ok(Action::await_change())
}
