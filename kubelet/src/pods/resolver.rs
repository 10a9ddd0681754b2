//! Names to containers for the kubelet API: `kubectl logs/exec/attach/port-forward`
//! arrive as namespace/pod/container, and this finds the container's current run (and
//! the one before it, for `--previous`) in the runtime.

use async_trait::async_trait;

use super::PodManager;
use crate::runtime::{ContainerState, ContainerStatus, ExecSession, LABEL_CONTAINER_NAME, LABEL_POD_UID};
use crate::server::{choose_container, ContainerTarget, PodResolver, ServerError, DEFAULT_CONTAINER_ANNOTATION};

fn runtime_error(context: &str) -> impl FnOnce(crate::runtime::RuntimeError) -> ServerError + '_ {
    move |source| ServerError::Runtime { context: context.to_string(), source }
}

#[async_trait]
impl PodResolver for PodManager {
    async fn container(&self, namespace: &str, pod: &str, container: Option<&str>) -> Result<ContainerTarget, ServerError> {
        let p = self.pod(namespace, pod).ok_or_else(|| ServerError::NotFound(format!("pod {namespace}/{pod} not found on this node")))?;
        let spec = p.spec.clone().unwrap_or_default();
        let names: Vec<&str> = spec.containers.iter().map(|c| c.name.as_str()).collect();
        let init: Vec<&str> = spec.init_containers.iter().flatten().map(|c| c.name.as_str()).collect();
        let annotation = p.metadata.annotations.as_ref().and_then(|a| a.get(DEFAULT_CONTAINER_ANNOTATION)).map(String::as_str);
        // An ephemeral container (`kubectl debug`) is there only when asked for by name.
        let ephemeral: Vec<&str> = spec.ephemeral_containers.iter().flatten().map(|c| c.name.as_str()).collect();
        let name = match container.filter(|n| ephemeral.contains(n)) {
            Some(n) => n.to_string(),
            None => choose_container(pod, container, &names, &init, annotation)?.to_string(),
        };
        let uid = p.metadata.uid.clone().unwrap_or_default();
        let mut runs: Vec<ContainerStatus> = self
            .context()
            .runtime
            .list_containers()
            .await
            .map_err(runtime_error("listing containers"))?
            .into_iter()
            .filter(|c| c.labels.get(LABEL_POD_UID) == Some(&uid) && c.labels.get(LABEL_CONTAINER_NAME) == Some(&name))
            .collect();
        runs.sort_by(|a, b| b.attempt.cmp(&a.attempt).then(b.created_at.cmp(&a.created_at)));
        let Some(latest) = runs.first() else {
            let reason = p
                .status
                .as_ref()
                .and_then(|s| {
                    let all = s.container_statuses.iter().chain(s.init_container_statuses.iter()).chain(s.ephemeral_container_statuses.iter());
                    all.flatten().find(|c| c.name == name).cloned()
                })
                .and_then(|c| c.state.and_then(|s| s.waiting).and_then(|w| w.reason))
                .unwrap_or_else(|| "ContainerCreating".into());
            return Err(ServerError::NotStarted(format!("container {name:?} in pod {pod:?} is waiting to start: {reason}")));
        };
        Ok(ContainerTarget {
            container_id: latest.id.clone(),
            log_path: latest.log_path.clone(),
            previous_log_path: runs.get(1).map(|c| c.log_path.clone()),
            running: latest.state == ContainerState::Running,
        })
    }

    /// The runtime's attach, reporting no exit code: the kubelet ends an attach session
    /// with `Success` whatever the container's exit code (`kubectl run -i --rm` reads it
    /// from the pod's status, and would keep the pod if attach failed).
    async fn attach(&self, target: &ContainerTarget, stdin: bool, tty: bool) -> Result<ExecSession, ServerError> {
        let mut session = self.context().runtime.attach(&target.container_id, stdin, tty).await.map_err(runtime_error("attaching"))?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        let runtime_exit = std::mem::replace(&mut session.exit, rx);
        tokio::spawn(async move {
            let mut tx = tx;
            tokio::select! {
                _ = runtime_exit => {
                    let _ = tx.send(0);
                }
                // The client left: dropping `runtime_exit` lets the runtime end the session.
                _ = tx.closed() => {}
            }
        });
        Ok(session)
    }

    async fn sandbox(&self, namespace: &str, pod: &str) -> Result<String, ServerError> {
        let p = self.pod(namespace, pod).ok_or_else(|| ServerError::NotFound(format!("pod {namespace}/{pod} not found on this node")))?;
        let uid = p.metadata.uid.clone().unwrap_or_default();
        let mut sandboxes: Vec<_> = self
            .context()
            .runtime
            .list_pod_sandboxes()
            .await
            .map_err(runtime_error("listing sandboxes"))?
            .into_iter()
            .filter(|s| s.pod.uid == uid && s.state == crate::runtime::SandboxState::Ready)
            .collect();
        sandboxes.sort_by_key(|s| std::cmp::Reverse(s.created_at));
        sandboxes
            .into_iter()
            .next()
            .map(|s| s.id)
            .ok_or_else(|| ServerError::BadRequest(format!("pod {pod:?} has no running sandbox")))
    }
}
