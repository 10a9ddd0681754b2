//! The service account controller: every namespace that is not being deleted has a
//! `default` ServiceAccount, created when the namespace appears and again whenever it is
//! deleted.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::ResourceExt;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::{Context, ControllerError};

/// The ServiceAccount every namespace gets.
pub const DEFAULT_SERVICE_ACCOUNT: &str = "default";

#[derive(Debug, thiserror::Error)]
pub enum ServiceAccountError {
    #[error("reading ServiceAccount {namespace}/default failed")]
    Read { namespace: String, #[source] source: kube::Error },
    #[error("creating ServiceAccount {namespace}/default failed")]
    Create { namespace: String, #[source] source: kube::Error },
}

/// Starts the service account controller.
pub fn start(ctx: Context, shutdown: CancellationToken) -> futures::future::BoxFuture<'static, Result<(), ControllerError>> {
    Box::pin(async move {
        let namespaces: Api<Namespace> = Api::all(ctx.client.clone());
        let accounts: Api<ServiceAccount> = Api::all(ctx.client.clone());
        Controller::new(namespaces, watcher::Config::default())
            .watches(accounts, watcher::Config::default(), |sa| {
                let ns = sa.namespace().filter(|_| sa.name_any() == DEFAULT_SERVICE_ACCOUNT);
                ns.map(|ns| ObjectRef::<Namespace>::new(&ns))
            })
            .graceful_shutdown_on(async move { shutdown.cancelled().await })
            .run(reconcile, error_policy, Arc::new(ctx))
            .for_each(|_| async {})
            .await;
        Ok(())
    })
}

fn error_policy(ns: Arc<Namespace>, err: &ServiceAccountError, _: Arc<Context>) -> Action {
    warn!(namespace = %ns.name_any(), error = %err, "service account reconcile failed");
    Action::requeue(Duration::from_secs(2))
}

async fn reconcile(ns: Arc<Namespace>, ctx: Arc<Context>) -> Result<Action, ServiceAccountError> {
    let namespace = ns.name_any();
    if ns.metadata.deletion_timestamp.is_some() || ns.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Terminating") {
        return Ok(Action::await_change());
    }
    let api: Api<ServiceAccount> = Api::namespaced(ctx.client.clone(), &namespace);
    let existing = api
        .get_opt(DEFAULT_SERVICE_ACCOUNT)
        .await
        .map_err(|source| ServiceAccountError::Read { namespace: namespace.clone(), source })?;
    if existing.is_some() {
        return Ok(Action::await_change());
    }
    let sa = ServiceAccount {
        metadata: ObjectMeta { name: Some(DEFAULT_SERVICE_ACCOUNT.into()), namespace: Some(namespace.clone()), ..Default::default() },
        ..Default::default()
    };
    match api.create(&PostParams::default(), &sa).await {
        Ok(_) => {
            info!(namespace = %namespace, "created the default service account");
            Ok(Action::await_change())
        }
        // Already there, or the namespace started terminating meanwhile.
        Err(kube::Error::Api(s)) if s.code == 409 || s.code == 403 || s.code == 404 => Ok(Action::await_change()),
        Err(source) => Err(ServiceAccountError::Create { namespace, source }),
    }
}
