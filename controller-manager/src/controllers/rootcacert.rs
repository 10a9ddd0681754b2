//! The root CA publisher (Kubernetes' `root-ca-cert-publisher`): every namespace that is
//! not being deleted has a ConfigMap `kube-root-ca.crt` whose `ca.crt` is the cluster CA
//! (PEM), so that pods can verify the apiserver at `kubernetes.default.svc`. The ConfigMap
//! is recreated when deleted and reset when edited. The CA comes from `--root-ca-file`;
//! without it the controller does not run.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::ResourceExt;
use tokio_util::sync::CancellationToken;
use tracing::{info, info_span, warn, Instrument};

use super::{Context, ControllerError};

const CONTROLLER: &str = "root-ca-cert-publisher";
/// The ConfigMap every namespace gets.
pub const ROOT_CA_CONFIG_MAP: &str = "kube-root-ca.crt";
/// Its one key.
pub const CA_KEY: &str = "ca.crt";
/// The annotation saying what the ConfigMap is for, and its text (Kubernetes').
pub const DESCRIPTION_ANNOTATION: &str = "kubernetes.io/description";
pub const DESCRIPTION: &str = "Contains a CA bundle that can be used to verify the kube-apiserver when using internal endpoints such as the internal service IP or kubernetes.default.svc. No other usage is guaranteed across distributions of Kubernetes clusters.";

#[derive(Debug, thiserror::Error)]
pub enum RootCaError {
    #[error("reading ConfigMap {namespace}/{ROOT_CA_CONFIG_MAP} failed")]
    Read { namespace: String, #[source] source: kube::Error },
    #[error("creating ConfigMap {namespace}/{ROOT_CA_CONFIG_MAP} failed")]
    Create { namespace: String, #[source] source: kube::Error },
    #[error("updating ConfigMap {namespace}/{ROOT_CA_CONFIG_MAP} failed")]
    Update { namespace: String, #[source] source: kube::Error },
}

struct State {
    client: kube::Client,
    ca_pem: String,
}

/// Reads and checks the CA file: it must hold at least one PEM certificate.
async fn read_ca(path: &Path) -> Result<String, ControllerError> {
    let pem = tokio::fs::read_to_string(path)
        .await
        .map_err(|e| ControllerError::Config(format!("--root-ca-file {}: {e}", path.display())))?;
    if !pem.contains("-----BEGIN CERTIFICATE-----") {
        return Err(ControllerError::Config(format!("--root-ca-file {}: no PEM certificate in the file", path.display())));
    }
    Ok(pem)
}

/// Starts the root CA publisher, unless no CA file is configured.
pub fn start(ctx: Context, shutdown: CancellationToken) -> BoxFuture<'static, Result<(), ControllerError>> {
    Box::pin(async move {
        let Some(path) = ctx.config.root_ca_file.clone() else {
            info!(controller = CONTROLLER, "not starting: no --root-ca-file given");
            return Ok(());
        };
        let ca_pem = read_ca(&path).await?;
        let namespaces: Api<Namespace> = Api::all(ctx.client.clone());
        let config_maps: Api<ConfigMap> = Api::all(ctx.client.clone());
        let state = Arc::new(State { client: ctx.client.clone(), ca_pem });
        Controller::new(namespaces, watcher::Config::default())
            .watches(config_maps, watcher::Config::default().fields(&format!("metadata.name={ROOT_CA_CONFIG_MAP}")), |cm| {
                cm.namespace().filter(|_| cm.name_any() == ROOT_CA_CONFIG_MAP).map(|ns| ObjectRef::<Namespace>::new(&ns))
            })
            .graceful_shutdown_on(async move { shutdown.cancelled().await })
            .run(reconcile, error_policy, state)
            .for_each(|_| async {})
            .await;
        Ok(())
    })
}

fn error_policy(ns: Arc<Namespace>, err: &RootCaError, _: Arc<State>) -> Action {
    warn!(controller = CONTROLLER, namespace = %ns.name_any(), error = %err, "sync failed");
    Action::requeue(Duration::from_secs(2))
}

/// The `data` the ConfigMap must have.
fn desired_data(ca_pem: &str) -> BTreeMap<String, String> {
    BTreeMap::from([(CA_KEY.to_string(), ca_pem.to_string())])
}

/// The ConfigMap to create in `namespace`.
pub fn desired_config_map(namespace: &str, ca_pem: &str) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(ROOT_CA_CONFIG_MAP.into()),
            namespace: Some(namespace.into()),
            annotations: Some(BTreeMap::from([(DESCRIPTION_ANNOTATION.to_string(), DESCRIPTION.to_string())])),
            ..Default::default()
        },
        data: Some(desired_data(ca_pem)),
        ..Default::default()
    }
}

/// The existing ConfigMap reset to what it must hold (`data` exactly `ca.crt`, and the
/// description annotation present), or `None` when it already does (Kubernetes' test).
pub fn reset(existing: &ConfigMap, ca_pem: &str) -> Option<ConfigMap> {
    let data = desired_data(ca_pem);
    let described = existing.annotations().get(DESCRIPTION_ANNOTATION).is_some_and(|d| !d.is_empty());
    if existing.data.as_ref() == Some(&data) && described {
        return None;
    }
    let mut cm = existing.clone();
    cm.data = Some(data);
    cm.annotations_mut().insert(DESCRIPTION_ANNOTATION.into(), DESCRIPTION.into());
    Some(cm)
}

async fn reconcile(ns: Arc<Namespace>, st: Arc<State>) -> Result<Action, RootCaError> {
    let namespace = ns.name_any();
    let span = info_span!("sync", controller = CONTROLLER, namespace = %namespace);
    sync(ns, st, namespace).instrument(span).await
}

async fn sync(ns: Arc<Namespace>, st: Arc<State>, namespace: String) -> Result<Action, RootCaError> {
    if ns.metadata.deletion_timestamp.is_some() || ns.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Terminating") {
        return Ok(Action::await_change());
    }
    let api: Api<ConfigMap> = Api::namespaced(st.client.clone(), &namespace);
    let existing = api
        .get_opt(ROOT_CA_CONFIG_MAP)
        .await
        .map_err(|source| RootCaError::Read { namespace: namespace.clone(), source })?;
    match existing {
        None => match api.create(&PostParams::default(), &desired_config_map(&namespace, &st.ca_pem)).await {
            Ok(_) => {
                info!("published the root CA");
                Ok(Action::await_change())
            }
            // Created meanwhile (its watch event brings us back), or the namespace is gone
            // or terminating.
            Err(kube::Error::Api(s)) if s.code == 409 || s.code == 403 || s.code == 404 => Ok(Action::await_change()),
            Err(source) => Err(RootCaError::Create { namespace, source }),
        },
        Some(cm) => {
            let Some(updated) = reset(&cm, &st.ca_pem) else { return Ok(Action::await_change()) };
            // The update carries the resourceVersion read above; a conflict is retried.
            match api.replace(ROOT_CA_CONFIG_MAP, &PostParams::default(), &updated).await {
                Ok(_) => {
                    info!("reset the root CA ConfigMap");
                    Ok(Action::await_change())
                }
                Err(kube::Error::Api(s)) if s.code == 404 => Ok(Action::requeue(Duration::from_millis(200))),
                Err(source) => Err(RootCaError::Update { namespace, source }),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PEM: &str = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";

    #[test]
    fn the_config_map_holds_only_the_ca() {
        let cm = desired_config_map("dev", PEM);
        assert_eq!(cm.metadata.name.as_deref(), Some(ROOT_CA_CONFIG_MAP));
        assert_eq!(cm.metadata.namespace.as_deref(), Some("dev"));
        assert_eq!(cm.data, Some(BTreeMap::from([("ca.crt".to_string(), PEM.to_string())])));
        assert_eq!(cm.annotations().get(DESCRIPTION_ANNOTATION).map(String::as_str), Some(DESCRIPTION));
        assert!(cm.binary_data.is_none());
        // What was created needs no reset.
        assert!(reset(&cm, PEM).is_none());
    }

    #[test]
    fn edits_are_reset_and_other_fields_kept() {
        let mut cm = desired_config_map("dev", PEM);
        cm.metadata.resource_version = Some("42".into());
        cm.labels_mut().insert("team".into(), "a".into());
        // Edited data, an extra key, a new CA, a lost annotation: each is reset.
        let mut edited = cm.clone();
        edited.data = Some(BTreeMap::from([("ca.crt".to_string(), "junk".to_string()), ("extra".to_string(), "x".to_string())]));
        let fixed = reset(&edited, PEM);
        assert_eq!(fixed.as_ref().and_then(|c| c.data.clone()), cm.data);
        assert_eq!(fixed.as_ref().and_then(|c| c.metadata.resource_version.clone()).as_deref(), Some("42"));
        assert_eq!(fixed.as_ref().map(|c| c.labels().get("team").cloned()), Some(Some("a".into())));
        assert!(reset(&cm, "-----BEGIN CERTIFICATE-----\nNEW\n-----END CERTIFICATE-----\n").is_some());
        let mut undescribed = cm.clone();
        undescribed.metadata.annotations = None;
        assert_eq!(reset(&undescribed, PEM).map(|c| c.annotations().get(DESCRIPTION_ANNOTATION).cloned()), Some(Some(DESCRIPTION.into())));
        let mut no_data = cm.clone();
        no_data.data = None;
        assert!(reset(&no_data, PEM).is_some());
    }

    #[tokio::test]
    async fn the_ca_file_must_hold_a_certificate() {
        let dir = std::env::temp_dir().join(format!("rootcacert-test-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let good = dir.join("ca.crt");
        let bad = dir.join("bad.crt");
        let _ = std::fs::write(&good, PEM);
        let _ = std::fs::write(&bad, "not a certificate");
        assert_eq!(read_ca(&good).await.ok().as_deref(), Some(PEM));
        assert!(read_ca(&bad).await.is_err());
        assert!(read_ca(&dir.join("missing.crt")).await.is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
