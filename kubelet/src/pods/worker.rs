//! One pod's worker: brings the runtime to the pod's spec (volumes, sandbox, init
//! containers in order, then the app containers, restarted per `restartPolicy` with
//! CrashLoopBackOff), runs its probes, terminates it gracefully when it is deleted, and
//! writes its status back whenever what `kubectl get pods` would show has changed.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use k8s_openapi::api::core::v1::{Container, ObjectReference, Pod, PodSpec};
use kube::api::{Api, DeleteParams, Patch, PatchParams, Preconditions};
use serde_json::{json, Value};
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;

use super::env::{self, Sources};
use super::probes;
use super::resources::container_resources;
use super::status::{self, ContainerView};
use super::volumes::{self, VolumePaths};
use super::Context;
use crate::config::KubeletConfig;
use crate::runtime::{
    ContainerConfig, ContainerState, ContainerStatus, DnsConfig, ExecRequest, Mount, PidNamespace, PodMeta, RuntimeError, SecurityConfig, RegistryAuth, SandboxConfig, SeccompProfile,
    SandboxState, SandboxStatus, LABEL_CONTAINER_NAME, LABEL_POD_NAME, LABEL_POD_NAMESPACE, LABEL_POD_UID,
};

/// The first restart waits this long; each further one twice as long, up to five minutes.
const BACKOFF_INITIAL: Duration = Duration::from_secs(10);
const BACKOFF_MAX: Duration = Duration::from_secs(300);
/// How often a pod with nothing pending is looked at again (picks up ConfigMap changes).
const RESYNC: Duration = Duration::from_secs(10);
const RETRY: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, Copy)]
struct Backoff {
    period: Duration,
    /// No restart before this time.
    until: chrono::DateTime<Utc>,
}

/// What the runtime has for this pod.
struct RuntimeView {
    sandbox: Option<SandboxStatus>,
    /// Every sandbox of the pod, newest first.
    sandboxes: Vec<SandboxStatus>,
    containers: Vec<ContainerStatus>,
}

impl RuntimeView {
    /// The newest run of a container and the one before it.
    fn runs(&self, name: &str) -> (Option<&ContainerStatus>, Option<&ContainerStatus>) {
        let mut runs: Vec<&ContainerStatus> =
            self.containers.iter().filter(|c| c.labels.get(LABEL_CONTAINER_NAME).map(String::as_str) == Some(name)).collect();
        runs.sort_by(|a, b| b.attempt.cmp(&a.attempt).then(b.created_at.cmp(&a.created_at)));
        (runs.first().copied(), runs.get(1).copied())
    }

    fn running(&self) -> impl Iterator<Item = &ContainerStatus> {
        self.containers.iter().filter(|c| matches!(c.state, ContainerState::Running | ContainerState::Created))
    }
}

pub struct Worker {
    ctx: Arc<Context>,
    uid: String,
    last_pod: Option<Arc<Pod>>,
    backoff: HashMap<String, Backoff>,
    image_backoff: HashMap<String, Backoff>,
    /// Why a container is waiting, when we are not starting it (by container name).
    waiting: HashMap<String, (String, String)>,
    probes: HashMap<String, probes::Tracker>,
    last_status: Option<Value>,
    /// Set once the pod's containers are stopped and its resources released.
    cleaned_up: bool,
    sandbox_attempt: u32,
    /// The ServiceAccount tokens in the pod's projected volumes.
    tokens: volumes::ServiceAccountTokens,
}

impl Worker {
    pub fn new(ctx: Arc<Context>, uid: String) -> Worker {
        Worker {
            ctx,
            uid,
            last_pod: None,
            backoff: HashMap::new(),
            image_backoff: HashMap::new(),
            waiting: HashMap::new(),
            probes: HashMap::new(),
            last_status: None,
            cleaned_up: false,
            sandbox_attempt: 0,
            tokens: Default::default(),
        }
    }

    pub async fn run(mut self, mut pod: watch::Receiver<Option<Arc<Pod>>>, poke: Arc<Notify>, shutdown: CancellationToken) {
        loop {
            let current = pod.borrow_and_update().clone();
            let synced = current.as_deref().map(kubelet_view);
            let span = tracing::info_span!("sync_pod", pod_uid = %self.uid);
            let next = tracing::Instrument::instrument(self.sync(current), span).await;
            let Some(next) = next else { return };
            let deadline = tokio::time::Instant::now() + next;
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    changed = pod.changed() => {
                        if changed.is_err() {
                            return;
                        }
                        // Our own status writes come back as updates: only a change the
                        // kubelet acts on (spec, deletion, labels, annotations) syncs early.
                        let latest = pod.borrow().as_deref().map(kubelet_view);
                        if latest.is_some() && latest == synced {
                            continue;
                        }
                    }
                    _ = poke.notified() => {}
                    _ = tokio::time::sleep_until(deadline) => {}
                }
                break;
            }
        }
    }

    fn object_ref(&self, pod: &Pod) -> ObjectReference {
        ObjectReference {
            kind: Some("Pod".into()),
            api_version: Some("v1".into()),
            name: pod.metadata.name.clone(),
            namespace: pod.metadata.namespace.clone(),
            uid: pod.metadata.uid.clone(),
            ..Default::default()
        }
    }

    async fn event(&self, pod: &Pod, type_: &str, reason: &str, message: &str) {
        let mut object = self.object_ref(pod);
        object.resource_version = pod.metadata.resource_version.clone();
        self.ctx.recorder.record(&object, type_, reason, message).await;
    }

    async fn event_for(&self, pod: &Pod, container: &str, type_: &str, reason: &str, message: &str) {
        let mut object = self.object_ref(pod);
        object.field_path = Some(field_path(pod, container));
        self.ctx.recorder.record(&object, type_, reason, message).await;
    }

    async fn view(&self) -> crate::runtime::Result<RuntimeView> {
        let listing = self.ctx.snapshot.get(&self.ctx.runtime).await?;
        let mut sandboxes: Vec<SandboxStatus> = listing.sandboxes.iter().filter(|s| s.pod.uid == self.uid).cloned().collect();
        sandboxes.sort_by_key(|s| std::cmp::Reverse(s.created_at));
        let containers = listing
            .containers
            .iter()
            .filter(|c| c.labels.get(LABEL_POD_UID).map(String::as_str) == Some(self.uid.as_str()))
            .cloned()
            .collect();
        Ok(RuntimeView { sandbox: sandboxes.first().cloned(), sandboxes, containers })
    }

    /// One pass; returns when to look again, or None when the worker is done.
    async fn sync(&mut self, pod: Option<Arc<Pod>>) -> Option<Duration> {
        let Some(pod) = pod else {
            // Gone from the API (deleted, or force-deleted): stop everything at once.
            if !self.cleaned_up {
                let last = self.last_pod.clone();
                self.terminate(last.as_deref(), Some(Duration::from_secs(2))).await;
            }
            return if self.cleaned_up { None } else { Some(RETRY) };
        };
        self.last_pod = Some(pod.clone());
        if pod.metadata.deletion_timestamp.is_some() {
            if !self.cleaned_up {
                let grace = pod.metadata.deletion_grace_period_seconds.map(|s| Duration::from_secs(s.max(0) as u64));
                self.terminate(Some(&pod), grace).await;
            }
            if self.cleaned_up {
                self.delete_from_api(&pod).await;
            }
            return Some(RETRY);
        }
        let phase = pod.status.as_ref().and_then(|s| s.phase.clone()).unwrap_or_default();
        let view = match self.view().await {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(error = %e, "listing the pod's containers failed");
                return Some(RETRY);
            }
        };
        if phase == "Succeeded" || phase == "Failed" {
            // A finished pod keeps its exited containers (for logs) but not its network.
            if let Some(s) = view.sandbox.as_ref().filter(|s| s.state == SandboxState::Ready) {
                for c in view.running() {
                    let _ = self.ctx.runtime.stop_container(&c.id, Duration::ZERO).await;
                }
                if let Err(e) = self.ctx.runtime.stop_pod_sandbox(&s.id).await {
                    tracing::warn!(error = %e, "stopping a finished pod's sandbox failed");
                }
            }
            return Some(Duration::from_secs(60));
        }
        let next = self.sync_running(&pod, view).await;
        Some(next)
    }

    /// Drives a live pod toward its spec.
    async fn sync_running(&mut self, pod: &Arc<Pod>, view: RuntimeView) -> Duration {
        let spec = pod.spec.clone().unwrap_or_default();
        let host_network = spec.host_network.unwrap_or(false);
        if !host_network && self.ctx.network.borrow().is_none() {
            self.write_status(pod, &view, None).await;
            return Duration::from_millis(500);
        }
        let mut sources = Sources::new(self.ctx.client.clone(), pod.metadata.namespace.as_deref().unwrap_or("default"));
        let volumes = match volumes::prepare(&self.ctx.config.pods_dir(), self.ctx.config.memory_backing(), pod, &mut sources, &mut self.tokens).await {
            Ok(v) => v,
            Err(e) => {
                self.event(pod, "Warning", "FailedMount", &e.to_string()).await;
                self.write_status(pod, &view, None).await;
                return RETRY;
            }
        };
        // A sandbox that lost its network is replaced, and its containers with it.
        let sandbox = match view.sandbox.clone().filter(|s| s.state == SandboxState::Ready) {
            Some(s) => s,
            None => {
                for c in view.running() {
                    let _ = self.ctx.runtime.stop_container(&c.id, Duration::ZERO).await;
                }
                for old in &view.sandboxes {
                    let _ = self.ctx.runtime.stop_pod_sandbox(&old.id).await;
                }
                match self.ctx.runtime.run_pod_sandbox(&self.sandbox_config(pod, &spec)).await {
                    Ok(s) => {
                        self.sandbox_attempt += 1;
                        s
                    }
                    Err(e) => {
                        self.event(pod, "Warning", "FailedCreatePodSandBox", &format!("Failed to create pod sandbox: {e}")).await;
                        self.write_status(pod, &view, None).await;
                        return RETRY;
                    }
                }
            }
        };
        let mut next = RESYNC;
        let mut view = view;
        let service_env = env::service_env(&self.ctx.client, pod).await;
        let policy = spec.restart_policy.clone().unwrap_or_else(|| "Always".into());

        // Init containers, one at a time, each to a successful exit.
        let mut initialized = true;
        for c in spec.init_containers.iter().flatten() {
            let (latest, _) = view.runs(&c.name);
            match latest.map(|l| (l.state, l.exit_code, l.attempt, l.finished_at)) {
                None => {
                    self.start(pod, &sandbox, c, 0, &volumes, &service_env, &mut sources, &mut next).await;
                    initialized = false;
                    break;
                }
                Some((ContainerState::Running | ContainerState::Created | ContainerState::Unknown, ..)) => {
                    initialized = false;
                    break;
                }
                Some((ContainerState::Exited, Some(0), ..)) => continue,
                Some((ContainerState::Exited, _, attempt, finished)) => {
                    initialized = false;
                    if policy != "Never" {
                        self.restart_with_backoff(pod, &sandbox, c, attempt, finished, &volumes, &service_env, &mut sources, &mut next).await;
                    }
                    break;
                }
            }
        }

        if initialized {
            for c in &spec.containers {
                let (latest, _) = view.runs(&c.name);
                match latest.cloned() {
                    None => {
                        self.start(pod, &sandbox, c, 0, &volumes, &service_env, &mut sources, &mut next).await;
                    }
                    Some(l) if l.state == ContainerState::Running => {
                        self.waiting.remove(&c.name);
                        self.probe(pod, &sandbox, c, &l, &mut next).await;
                    }
                    Some(l) if l.state == ContainerState::Exited => {
                        self.probes.remove(&c.name);
                        let restart = match policy.as_str() {
                            "Never" => false,
                            "OnFailure" => l.exit_code != Some(0),
                            _ => true,
                        };
                        if restart {
                            self.restart_with_backoff(pod, &sandbox, c, l.attempt, l.finished_at, &volumes, &service_env, &mut sources, &mut next)
                                .await;
                        } else {
                            self.waiting.remove(&c.name);
                        }
                    }
                    Some(_) => {}
                }
            }
        }
        // Ephemeral containers (`kubectl debug`) run once, in the pod's sandbox, never
        // restarted; as in Kubernetes, even while init containers have not finished
        // (debugging a stuck init is what they are for).
        for c in &ephemeral_containers(&spec) {
            if view.runs(&c.name).0.is_none() {
                self.start(pod, &sandbox, c, 0, &volumes, &service_env, &mut sources, &mut next).await;
            }
        }
        if let Ok(v) = self.view().await {
            view = v;
        }
        self.write_status(pod, &view, Some(&sandbox)).await;
        next
    }

    /// Restarts an exited container unless it is inside its back-off window.
    #[allow(clippy::too_many_arguments)]
    async fn restart_with_backoff(
        &mut self,
        pod: &Pod,
        sandbox: &SandboxStatus,
        c: &Container,
        attempt: u32,
        finished: Option<chrono::DateTime<Utc>>,
        volumes: &VolumePaths,
        service_env: &[(String, String)],
        sources: &mut Sources,
        next: &mut Duration,
    ) {
        let now = Utc::now();
        let finished = finished.unwrap_or(now);
        // A container that stayed up long enough starts over with the shortest back-off.
        if let Some(b) = self.backoff.get(&c.name) {
            if now.signed_duration_since(finished).to_std().unwrap_or_default() > BACKOFF_MAX * 2 {
                self.backoff.remove(&c.name);
            } else if b.until > now {
                let wait = b.until.signed_duration_since(now).to_std().unwrap_or_default();
                let message = format!(
                    "back-off {} restarting failed container={} pod={}_{}({})",
                    go_duration(b.period),
                    c.name,
                    pod.metadata.name.as_deref().unwrap_or(""),
                    pod.metadata.namespace.as_deref().unwrap_or(""),
                    self.uid
                );
                if self.waiting.get(&c.name).map(|(r, _)| r.as_str()) != Some("CrashLoopBackOff") {
                    self.event_for(pod, &c.name, "Warning", "BackOff", "Back-off restarting failed container").await;
                }
                self.waiting.insert(c.name.clone(), ("CrashLoopBackOff".into(), message));
                *next = (*next).min(wait + Duration::from_millis(50));
                return;
            }
        }
        let period = match self.backoff.get(&c.name) {
            Some(b) => (b.period * 2).min(BACKOFF_MAX),
            None => BACKOFF_INITIAL,
        };
        let until = now + chrono::Duration::from_std(period).unwrap_or_default();
        self.backoff.insert(c.name.clone(), Backoff { period, until });
        self.start(pod, sandbox, c, attempt + 1, volumes, service_env, sources, next).await;
    }

    fn sandbox_config(&self, pod: &Pod, spec: &PodSpec) -> SandboxConfig {
        let name = pod.metadata.name.clone().unwrap_or_default();
        let namespace = pod.metadata.namespace.clone().unwrap_or_else(|| "default".into());
        let host_network = spec.host_network.unwrap_or(false);
        let mut hostname = spec.hostname.clone().unwrap_or_else(|| name.clone());
        hostname.truncate(63);
        let hostname = hostname.trim_end_matches(['-', '.']).to_string();
        let domain = &self.ctx.config.cluster_domain;
        let mut aliases: Vec<(String, Vec<String>)> = spec
            .host_aliases
            .iter()
            .flatten()
            .map(|a| (a.ip.clone(), a.hostnames.clone().unwrap_or_default()))
            .collect();
        aliases.retain(|(_, names)| !names.is_empty());
        if let Some(sub) = spec.subdomain.as_ref().filter(|s| !s.is_empty()) {
            // The pod's FQDN, as StatefulSet pods behind a headless Service have.
            aliases.push((String::new(), vec![format!("{hostname}.{sub}.{namespace}.svc.{domain}")]));
        }
        let policy = spec.dns_policy.clone().unwrap_or_else(|| "ClusterFirst".into());
        let cluster_first = policy == "ClusterFirst" || (policy == "ClusterFirstWithHostNet" && host_network);
        let mut dns = DnsConfig::default();
        if cluster_first && !self.ctx.config.cluster_dns.is_empty() && !(host_network && policy == "ClusterFirst") {
            dns.servers = self.ctx.config.cluster_dns.clone();
            dns.searches = vec![format!("{namespace}.svc.{domain}"), format!("svc.{domain}"), domain.clone()];
            dns.options = vec!["ndots:5".into()];
        }
        if let Some(cfg) = &spec.dns_config {
            if policy == "None" {
                dns = DnsConfig::default();
            }
            dns.servers.extend(cfg.nameservers.clone().unwrap_or_default());
            dns.searches.extend(cfg.searches.clone().unwrap_or_default());
            for o in cfg.options.iter().flatten() {
                let Some(n) = o.name.clone() else { continue };
                dns.options.retain(|x| x.split(':').next() != Some(n.as_str()));
                dns.options.push(match &o.value {
                    Some(v) => format!("{n}:{v}"),
                    None => n,
                });
            }
        }
        let port_mappings = spec
            .containers
            .iter()
            .flat_map(|c| c.ports.iter().flatten())
            .filter(|p| p.host_port.unwrap_or(0) > 0)
            .filter_map(|p| {
                Some(crate::runtime::PortMapping {
                    protocol: p.protocol.clone().unwrap_or_else(|| "TCP".into()),
                    container_port: u16::try_from(p.container_port).ok()?,
                    host_port: u16::try_from(p.host_port?).ok()?,
                    host_ip: p.host_ip.clone(),
                })
            })
            .collect();
        let labels: BTreeMap<String, String> = [
            (LABEL_POD_NAME, name.clone()),
            (LABEL_POD_NAMESPACE, namespace.clone()),
            (LABEL_POD_UID, self.uid.clone()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        SandboxConfig {
            pod: PodMeta { name, namespace, uid: self.uid.clone() },
            hostname,
            host_aliases: aliases,
            dns,
            host_network,
            port_mappings,
            labels,
            annotations: pod.metadata.annotations.clone().unwrap_or_default(),
            cgroup_parent: format!("{}/kubepods/pod{}", self.ctx.config.cgroup_root, self.uid),
            share_process_namespace: spec.share_process_namespace.unwrap_or(false),
        }
    }

    /// Pulls (per `imagePullPolicy`), builds and starts one container. Failures become
    /// the container's waiting reason and an event, as the kubelet reports them.
    #[allow(clippy::too_many_arguments)]
    async fn start(
        &mut self,
        pod: &Pod,
        sandbox: &SandboxStatus,
        c: &Container,
        attempt: u32,
        volumes: &VolumePaths,
        service_env: &[(String, String)],
        sources: &mut Sources,
        next: &mut Duration,
    ) {
        let image = c.image.clone().unwrap_or_default();
        if let Err((reason, message, wait)) = self.ensure_image(pod, c, &image, sources).await {
            self.waiting.insert(c.name.clone(), (reason, message));
            *next = (*next).min(wait);
            return;
        }
        let config = match self.container_config(pod, sandbox, c, attempt, volumes, service_env, sources).await {
            Ok(cfg) => cfg,
            Err(message) => {
                self.event_for(pod, &c.name, "Warning", "Failed", &format!("Error: {message}")).await;
                self.waiting.insert(c.name.clone(), ("CreateContainerConfigError".into(), message));
                *next = (*next).min(RETRY);
                return;
            }
        };
        let id = match self.ctx.runtime.create_container(&sandbox.id, &config).await {
            Ok(id) => id,
            Err(e) => {
                // A config the runtime refuses (runAsNonRoot, say) reads as the kubelet's own.
                let (reason, message) = match e {
                    RuntimeError::InvalidConfig(message) => ("CreateContainerConfigError", message),
                    e => ("CreateContainerError", e.to_string()),
                };
                self.event_for(pod, &c.name, "Warning", "Failed", &format!("Error: {message}")).await;
                self.waiting.insert(c.name.clone(), (reason.into(), message));
                *next = (*next).min(RETRY);
                return;
            }
        };
        self.event_for(pod, &c.name, "Normal", "Created", &format!("Created container: {}", c.name)).await;
        if let Err(e) = self.ctx.runtime.start_container(&id).await {
            let message = e.to_string();
            tracing::info!(container = %c.name, error = %message, "container failed to start");
            self.event_for(pod, &c.name, "Warning", "Failed", &format!("Error: {message}")).await;
            self.waiting.remove(&c.name);
            *next = (*next).min(Duration::from_millis(200));
            return;
        }
        self.waiting.remove(&c.name);
        self.event_for(pod, &c.name, "Normal", "Started", &format!("Started container {}", c.name)).await;
        if let Some(exec) = c.lifecycle.as_ref().and_then(|l| l.post_start.as_ref()).and_then(|h| h.exec.as_ref()) {
            let command = exec.command.clone().unwrap_or_default();
            if let Err(message) = self.exec_hook(&id, command).await {
                self.event_for(pod, &c.name, "Warning", "FailedPostStartHook", &format!("PostStartHook failed: {message}")).await;
                let _ = self.ctx.runtime.stop_container(&id, Duration::from_secs(2)).await;
            }
        }
        *next = (*next).min(Duration::from_secs(1));
    }

    async fn exec_hook(&self, container_id: &str, command: Vec<String>) -> Result<(), String> {
        let session = self
            .ctx
            .runtime
            .exec(ExecRequest { container_id: container_id.into(), command, tty: false, stdin: false })
            .await
            .map_err(|e| e.to_string())?;
        match session.exit.await {
            Ok(0) => Ok(()),
            Ok(code) => Err(format!("command exited with {code}")),
            Err(_) => Err("the hook ended without an exit code".into()),
        }
    }

    /// Ok when the image is present (pulling it if the policy asks); Err(reason, message,
    /// when to retry) otherwise.
    async fn ensure_image(&mut self, pod: &Pod, c: &Container, image: &str, sources: &mut Sources) -> Result<(), (String, String, Duration)> {
        let policy = c.image_pull_policy.clone().unwrap_or_else(|| {
            let tag_latest = !image.contains('@') && image.rsplit('/').next().map(|last| !last.contains(':') || last.ends_with(":latest")).unwrap_or(true);
            if tag_latest { "Always".into() } else { "IfNotPresent".into() }
        });
        let present = self.ctx.images.image_status(image).await.ok().flatten();
        match policy.as_str() {
            "Never" => {
                if present.is_some() {
                    return Ok(());
                }
                let message = format!("Container image \"{image}\" is not present with pull policy of Never");
                self.event_for(pod, &c.name, "Warning", "ErrImageNeverPull", &message).await;
                return Err(("ErrImageNeverPull".into(), message, RETRY));
            }
            "IfNotPresent" if present.is_some() => {
                if !self.waiting.contains_key(&c.name) {
                    self.event_for(pod, &c.name, "Normal", "Pulled", &format!("Container image \"{image}\" already present on machine")).await;
                }
                return Ok(());
            }
            _ => {}
        }
        let now = Utc::now();
        if let Some(b) = self.image_backoff.get(image) {
            if b.until > now {
                let message = format!("Back-off pulling image \"{image}\"");
                self.event_for(pod, &c.name, "Normal", "BackOff", &message).await;
                let wait = b.until.signed_duration_since(now).to_std().unwrap_or_default();
                return Err(("ImagePullBackOff".into(), message, wait + Duration::from_millis(50)));
            }
        }
        self.event_for(pod, &c.name, "Normal", "Pulling", &format!("Pulling image \"{image}\"")).await;
        let auth = self.pull_auth(pod, image, sources).await;
        let started = Instant::now();
        match self.ctx.images.pull_image(image, auth.as_ref()).await {
            Ok(info) => {
                self.image_backoff.remove(image);
                let took = started.elapsed();
                self.event_for(
                    pod,
                    &c.name,
                    "Normal",
                    "Pulled",
                    &format!("Successfully pulled image \"{image}\" in {} ({} including waiting). Image size: {} bytes.", go_duration(took), go_duration(took), info.size),
                )
                .await;
                Ok(())
            }
            Err(e) if present.is_some() => {
                // An offline lab: the policy asks for a pull, the registry is out of reach,
                // and the node has the image (busybox, imported archives). Run what is here.
                tracing::info!(image, error = %e, "pull failed; using the image present on the node");
                self.event_for(pod, &c.name, "Normal", "Pulled", &format!("Container image \"{image}\" already present on machine (pull failed: {e})")).await;
                Ok(())
            }
            Err(e) => {
                let message = format!("Failed to pull image \"{image}\": {e}");
                self.event_for(pod, &c.name, "Warning", "Failed", &message).await;
                self.event_for(pod, &c.name, "Warning", "Failed", "Error: ErrImagePull").await;
                let period = match self.image_backoff.get(image) {
                    Some(b) => (b.period * 2).min(BACKOFF_MAX),
                    None => BACKOFF_INITIAL,
                };
                self.image_backoff.insert(image.into(), Backoff { period, until: now + chrono::Duration::from_std(period).unwrap_or_default() });
                Err(("ErrImagePull".into(), message, period))
            }
        }
    }

    /// Credentials for `image` from the pod's `imagePullSecrets` (`.dockerconfigjson`).
    async fn pull_auth(&self, pod: &Pod, image: &str, sources: &mut Sources) -> Option<RegistryAuth> {
        let host = registry_host(image);
        for r in pod.spec.as_ref().and_then(|s| s.image_pull_secrets.clone()).unwrap_or_default() {
            let Ok(Some(secret)) = sources.secret(&r.name).await else { continue };
            let entries = env::secret_entries(secret);
            let Some(raw) = entries.get(".dockerconfigjson").or_else(|| entries.get(".dockercfg")) else { continue };
            if let Some(auth) = registry_auth(raw, &host) {
                return Some(auth);
            }
        }
        None
    }

    #[allow(clippy::too_many_arguments)]
    async fn container_config(
        &self,
        pod: &Pod,
        sandbox: &SandboxStatus,
        c: &Container,
        attempt: u32,
        volumes: &VolumePaths,
        service_env: &[(String, String)],
        sources: &mut Sources,
    ) -> Result<ContainerConfig, String> {
        // The downward API's status.podIP must be the sandbox's IP even before it is written.
        let mut pod_for_env = pod.clone();
        let status = pod_for_env.status.get_or_insert_with(Default::default);
        status.pod_ip = sandbox.ip.clone();
        status.host_ip = Some(self.ctx.config.node_ip.to_string());
        let envs = env::container_env(&pod_for_env, c, service_env, &self.ctx.node_allocatable, sources).await.map_err(|e| e.to_string())?;
        let vars: BTreeMap<String, String> = envs.iter().cloned().collect();
        let expand = |v: &Vec<String>| v.iter().map(|s| env::expand(s, &vars)).collect::<Vec<_>>();
        let mut mounts = Vec::new();
        for m in c.volume_mounts.iter().flatten() {
            let Some(host) = volumes.get(&m.name) else {
                return Err(format!("cannot find volume \"{}\" to mount into container \"{}\"", m.name, c.name));
            };
            let mut host_path = host.clone();
            let sub = m.sub_path.clone().filter(|s| !s.is_empty()).or_else(|| m.sub_path_expr.as_ref().map(|e| env::expand(e, &vars)));
            if let Some(sub) = sub {
                if sub.starts_with('/') || sub.split('/').any(|p| p == "..") {
                    return Err(format!("invalid subpath {sub:?}: must be a relative path without '..'"));
                }
                host_path = host_path.join(&sub);
                if !host_path.exists() {
                    std::fs::create_dir_all(&host_path).map_err(|e| format!("creating subpath {}: {e}", host_path.display()))?;
                }
            }
            mounts.push(Mount { host_path, container_path: m.mount_path.clone(), readonly: m.read_only.unwrap_or(false) });
        }
        let namespace = pod.metadata.namespace.clone().unwrap_or_default();
        let name = pod.metadata.name.clone().unwrap_or_default();
        let log_dir = self.ctx.config.logs_dir().join(format!("{namespace}_{name}_{}", self.uid)).join(&c.name);
        std::fs::create_dir_all(&log_dir).map_err(|e| format!("creating {}: {e}", log_dir.display()))?;
        let security = c.security_context.clone().unwrap_or_default();
        let pod_security = pod.spec.as_ref().and_then(|s| s.security_context.clone()).unwrap_or_default();
        let labels: BTreeMap<String, String> = [
            (LABEL_POD_NAME, name),
            (LABEL_POD_NAMESPACE, namespace),
            (LABEL_POD_UID, self.uid.clone()),
            (LABEL_CONTAINER_NAME, c.name.clone()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        Ok(ContainerConfig {
            name: c.name.clone(),
            attempt,
            image: c.image.clone().unwrap_or_default(),
            command: expand(&c.command.clone().unwrap_or_default()),
            args: expand(&c.args.clone().unwrap_or_default()),
            working_dir: c.working_dir.clone().filter(|w| !w.is_empty()),
            envs,
            mounts,
            log_path: log_dir.join(format!("{attempt}.log")),
            resources: container_resources(c),
            run_as_user: security.run_as_user.or(pod_security.run_as_user).and_then(|u| u32::try_from(u).ok()),
            run_as_group: security.run_as_group.or(pod_security.run_as_group).and_then(|g| u32::try_from(g).ok()),
            privileged: security.privileged.unwrap_or(false),
            tty: c.tty.unwrap_or(false),
            stdin: c.stdin.unwrap_or(false),
            stdin_once: c.stdin_once.unwrap_or(false),
            pid_namespace: self.pid_namespace(pod, &c.name).await?,
            security: security_config(&security, &pod_security, &self.ctx.config)?,
            labels,
            annotations: BTreeMap::new(),
        })
    }

    /// The PID namespace a container joins: the pod's with `shareProcessNamespace`; for
    /// an ephemeral container with `targetContainerName` (`kubectl debug --target`), the
    /// running target's; else one of its own.
    async fn pid_namespace(&self, pod: &Pod, container: &str) -> Result<PidNamespace, String> {
        let Some(spec) = pod.spec.as_ref() else { return Ok(PidNamespace::Container) };
        if spec.share_process_namespace == Some(true) {
            return Ok(PidNamespace::Pod);
        }
        let target = spec.ephemeral_containers.iter().flatten().find(|e| e.name == container).and_then(|e| e.target_container_name.as_deref()).filter(|t| !t.is_empty());
        let Some(target) = target else { return Ok(PidNamespace::Container) };
        let view = self.view().await.map_err(|e| e.to_string())?;
        match view.runs(target).0 {
            Some(run) if run.state == ContainerState::Running => Ok(PidNamespace::Target(run.id.clone())),
            _ => Err(format!("target container \"{target}\" is not running")),
        }
    }

    /// Runs the container's due probes; a failed liveness probe restarts it.
    async fn probe(&mut self, pod: &Pod, sandbox: &SandboxStatus, c: &Container, running: &ContainerStatus, next: &mut Duration) {
        let started = running
            .started_at
            .map(|s| {
                let ago = Utc::now().signed_duration_since(s).to_std().unwrap_or_default();
                Instant::now().checked_sub(ago).unwrap_or_else(Instant::now)
            })
            .unwrap_or_else(Instant::now);
        let tracker = self.probes.entry(c.name.clone()).or_insert_with(|| probes::Tracker::new(&running.id, c, started));
        if tracker.container_id != running.id {
            *tracker = probes::Tracker::new(&running.id, c, started);
        }
        let has_probes = c.liveness_probe.is_some() || c.readiness_probe.is_some() || c.startup_probe.is_some();
        if !has_probes {
            tracker.ready = true;
            tracker.startup_done = true;
            return;
        }
        let outcome = tracker.run_due(&self.ctx.runtime, c, sandbox.ip.as_deref()).await;
        if let Some(due) = outcome.next {
            *next = (*next).min(due.saturating_duration_since(Instant::now()) + Duration::from_millis(10));
        }
        for message in &outcome.unhealthy {
            self.event_for(pod, &c.name, "Warning", "Unhealthy", message).await;
        }
        if let Some(message) = outcome.kill {
            self.event_for(pod, &c.name, "Normal", "Killing", &message).await;
            let grace = pod.spec.as_ref().and_then(|s| s.termination_grace_period_seconds).unwrap_or(30).max(0) as u64;
            self.stop_with_hook(c, &running.id, Duration::from_secs(grace)).await;
            self.probes.remove(&c.name);
            *next = Duration::ZERO;
        }
    }

    /// Runs the preStop hook (within the grace period), then stops the container.
    async fn stop_with_hook(&self, c: &Container, id: &str, grace: Duration) {
        let started = Instant::now();
        if let Some(exec) = c.lifecycle.as_ref().and_then(|l| l.pre_stop.as_ref()).and_then(|h| h.exec.as_ref()) {
            let command = exec.command.clone().unwrap_or_default();
            if tokio::time::timeout(grace, self.exec_hook(id, command)).await.is_err() {
                tracing::info!(container = %c.name, "preStop hook did not finish within the grace period");
            }
        } else if let Some(sleep) = c.lifecycle.as_ref().and_then(|l| l.pre_stop.as_ref()).and_then(|h| h.sleep.as_ref()) {
            tokio::time::sleep(Duration::from_secs(sleep.seconds.max(0) as u64).min(grace)).await;
        }
        let remaining = grace.saturating_sub(started.elapsed());
        if let Err(e) = self.ctx.runtime.stop_container(id, remaining).await {
            tracing::warn!(container = %c.name, error = %e, "stopping a container failed");
        }
    }

    /// Stops every container (gracefully), then releases the sandbox, the containers'
    /// records, the volumes and the logs. Sets `cleaned_up` when all of it is done.
    async fn terminate(&mut self, pod: Option<&Pod>, grace: Option<Duration>) {
        let view = match self.view().await {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(error = %e, "listing the pod's containers failed");
                return;
            }
        };
        let spec = pod.and_then(|p| p.spec.clone()).unwrap_or_default();
        let grace = grace.unwrap_or_else(|| Duration::from_secs(spec.termination_grace_period_seconds.unwrap_or(30).max(0) as u64));
        let running: Vec<ContainerStatus> = view.running().cloned().collect();
        if let Some(p) = pod {
            for c in &running {
                let name = c.labels.get(LABEL_CONTAINER_NAME).cloned().unwrap_or_default();
                self.event_for(p, &name, "Normal", "Killing", &format!("Stopping container {name}")).await;
            }
        }
        let this = &*self;
        let stops = running.iter().map(|c| {
            let name = c.labels.get(LABEL_CONTAINER_NAME).cloned().unwrap_or_default();
            let spec_c = spec.containers.iter().chain(spec.init_containers.iter().flatten()).find(|x| x.name == name).cloned();
            async move {
                match spec_c {
                    Some(sc) => this.stop_with_hook(&sc, &c.id, grace).await,
                    None => {
                        let _ = this.ctx.runtime.stop_container(&c.id, grace).await;
                    }
                }
            }
        });
        futures::future::join_all(stops).await;
        if let Some(p) = pod {
            // The final status shows every container terminated.
            if let Ok(v) = self.view().await {
                self.write_status(p, &v, None).await;
            }
        }
        for s in &view.sandboxes {
            if let Err(e) = self.ctx.runtime.stop_pod_sandbox(&s.id).await {
                tracing::warn!(error = %e, "stopping the sandbox failed");
                return;
            }
        }
        for c in &view.containers {
            if let Err(e) = self.ctx.runtime.remove_container(&c.id).await {
                tracing::warn!(error = %e, "removing a container failed");
                return;
            }
        }
        for s in &view.sandboxes {
            if let Err(e) = self.ctx.runtime.remove_pod_sandbox(&s.id).await {
                tracing::warn!(error = %e, "removing the sandbox failed");
                return;
            }
        }
        if let Err(e) = volumes::cleanup(&self.ctx.config.pods_dir(), &self.uid) {
            tracing::warn!(error = %e, "cleaning up the pod's volumes failed");
            return;
        }
        if let Some(p) = pod.or(self.last_pod.as_deref()) {
            let dir = self.ctx.config.logs_dir().join(format!(
                "{}_{}_{}",
                p.metadata.namespace.as_deref().unwrap_or(""),
                p.metadata.name.as_deref().unwrap_or(""),
                self.uid
            ));
            let _ = std::fs::remove_dir_all(dir);
        }
        self.cleaned_up = true;
    }

    /// Once a deleted pod's containers are gone, the kubelet removes the object for good.
    async fn delete_from_api(&self, pod: &Pod) {
        let api: Api<Pod> = Api::namespaced(self.ctx.client.clone(), pod.metadata.namespace.as_deref().unwrap_or("default"));
        let params = DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(Preconditions { uid: pod.metadata.uid.clone(), resource_version: None }),
            ..Default::default()
        };
        match api.delete(pod.metadata.name.as_deref().unwrap_or(""), &params).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {}
            Err(e) => tracing::warn!(error = %e, "deleting the terminated pod failed"),
        }
    }

    /// Computes the pod's status and patches it if anything changed.
    async fn write_status(&mut self, pod: &Pod, view: &RuntimeView, sandbox: Option<&SandboxStatus>) {
        let spec = pod.spec.clone().unwrap_or_default();
        let previous_conditions = status::previous_conditions(pod);
        let sandbox = sandbox.or(view.sandbox.as_ref().filter(|s| s.state == SandboxState::Ready));
        let init_specs: Vec<Container> = spec.init_containers.clone().unwrap_or_default();
        let mut init_statuses = Vec::new();
        let mut init_done = true;
        for c in &init_specs {
            let (latest, previous) = view.runs(&c.name);
            let cv = ContainerView { latest, previous, waiting: self.waiting.get(&c.name).cloned(), ready: false, started: false };
            let mut s = status::container_status(c, &cv, "PodInitializing");
            let done = latest.map(|l| l.state == ContainerState::Exited && l.exit_code == Some(0)).unwrap_or(false);
            if done {
                s["ready"] = json!(true);
            }
            init_done &= done;
            init_statuses.push(s);
        }
        let mut statuses = Vec::new();
        for c in &spec.containers {
            let (latest, previous) = view.runs(&c.name);
            let tracker = self.probes.get(&c.name).filter(|t| latest.map(|l| l.id == t.container_id).unwrap_or(false));
            let cv = ContainerView {
                latest,
                previous,
                waiting: self.waiting.get(&c.name).cloned(),
                ready: tracker.map(|t| t.ready).unwrap_or(false),
                started: tracker.map(|t| t.startup_done).unwrap_or(false),
            };
            let default_waiting = if init_done { "ContainerCreating" } else { "PodInitializing" };
            statuses.push(status::container_status(c, &cv, default_waiting));
        }
        let ephemeral_statuses: Vec<Value> = ephemeral_containers(&spec)
            .iter()
            .map(|c| {
                let (latest, previous) = view.runs(&c.name);
                let cv = ContainerView { latest, previous, waiting: self.waiting.get(&c.name).cloned(), ready: false, started: false };
                status::container_status(c, &cv, "ContainerCreating")
            })
            .collect();
        let existing_phase = pod.status.as_ref().and_then(|s| s.phase.clone()).unwrap_or_default();
        let mut phase = status::phase(&spec, &init_statuses, &statuses).to_string();
        if existing_phase == "Succeeded" || existing_phase == "Failed" {
            phase = existing_phase;
        }
        let terminal = phase == "Succeeded" || phase == "Failed";
        let unready = status::unready(&statuses);
        let containers_ready = unready.is_empty() && !terminal;
        let incomplete: Vec<String> = init_statuses
            .iter()
            .filter(|s| s.get("ready").and_then(Value::as_bool) != Some(true))
            .filter_map(|s| s.get("name").and_then(Value::as_str).map(str::to_string))
            .collect();
        let not_ready_reason = if terminal { "PodCompleted" } else { "ContainersNotReady" };
        let unready_message = (!terminal).then(|| format!("containers with unready status: [{}]", unready.join(" ")));
        let mut conditions = vec![
            status::condition(&previous_conditions, "PodReadyToStartContainers", sandbox.is_some(), None, None),
            if init_done {
                status::condition(&previous_conditions, "Initialized", true, terminal.then_some("PodCompleted"), None)
            } else {
                status::condition(
                    &previous_conditions,
                    "Initialized",
                    false,
                    Some("ContainersNotInitialized"),
                    Some(format!("containers with incomplete status: [{}]", incomplete.join(" "))),
                )
            },
            if containers_ready {
                status::condition(&previous_conditions, "Ready", true, None, None)
            } else {
                status::condition(&previous_conditions, "Ready", false, Some(not_ready_reason), unready_message.clone())
            },
            if containers_ready {
                status::condition(&previous_conditions, "ContainersReady", true, None, None)
            } else {
                status::condition(&previous_conditions, "ContainersReady", false, Some(not_ready_reason), unready_message)
            },
        ];
        // Conditions the kubelet does not own (PodScheduled, readiness gates…) stay.
        let owned = ["PodReadyToStartContainers", "Initialized", "Ready", "ContainersReady"];
        for c in pod.status.as_ref().and_then(|s| s.conditions.clone()).unwrap_or_default() {
            if !owned.contains(&c.type_.as_str()) {
                if let Ok(v) = serde_json::to_value(&c) {
                    conditions.push(v);
                }
            }
        }
        let pod_ip = sandbox.and_then(|s| s.ip.clone()).or_else(|| pod.status.as_ref().and_then(|s| s.pod_ip.clone()));
        let node_ip = self.ctx.config.node_ip.to_string();
        let start_time = pod
            .status
            .as_ref()
            .and_then(|s| s.start_time.as_ref())
            .map(|t| t.0.to_string())
            .unwrap_or_else(|| status::rfc3339(Utc::now()));
        let mut new_status = json!({
            "phase": phase,
            "conditions": conditions,
            "hostIP": node_ip,
            "hostIPs": [{"ip": node_ip}],
            "startTime": start_time,
            "containerStatuses": statuses,
            "qosClass": status::qos_class(&spec),
        });
        if !init_statuses.is_empty() {
            new_status["initContainerStatuses"] = json!(init_statuses);
        }
        if !ephemeral_statuses.is_empty() {
            new_status["ephemeralContainerStatuses"] = json!(ephemeral_statuses);
        }
        if let Some(ip) = pod_ip {
            new_status["podIP"] = json!(ip);
            new_status["podIPs"] = json!([{"ip": ip}]);
        }
        // Only what a user would see changing is written (not a heartbeat per sync).
        let comparable = strip_times(&new_status);
        if self.last_status.as_ref() == Some(&comparable) {
            return;
        }
        let api: Api<Pod> = Api::namespaced(self.ctx.client.clone(), pod.metadata.namespace.as_deref().unwrap_or("default"));
        let patch = json!({"status": new_status});
        match api.patch_status(pod.metadata.name.as_deref().unwrap_or(""), &PatchParams::default(), &Patch::Merge(&patch)).await {
            Ok(_) => self.last_status = Some(comparable),
            Err(e) => tracing::debug!(error = %e, "writing pod status failed; will retry"),
        }
    }
}

/// What of a container's and its pod's `securityContext` the runtime applies (the
/// container's fields win over the pod's). Without a `seccompProfile` the container
/// runs unconfined, or under `RuntimeDefault` with `--seccomp-default`; `Localhost`
/// profiles are files under the node's seccomp directory.
fn security_config(
    container: &k8s_openapi::api::core::v1::SecurityContext,
    pod: &k8s_openapi::api::core::v1::PodSecurityContext,
    node: &KubeletConfig,
) -> Result<SecurityConfig, String> {
    let caps = container.capabilities.clone().unwrap_or_default();
    let gid = |g: &i64| u32::try_from(*g).ok();
    let seccomp = match container.seccomp_profile.as_ref().or(pod.seccomp_profile.as_ref()) {
        None if node.seccomp_default => SeccompProfile::RuntimeDefault,
        None => SeccompProfile::Unconfined,
        Some(profile) => match profile.type_.as_str() {
            "Unconfined" => SeccompProfile::Unconfined,
            "RuntimeDefault" => SeccompProfile::RuntimeDefault,
            "Localhost" => {
                let file = profile.localhost_profile.as_deref().filter(|f| !f.is_empty());
                let file = file.ok_or("localhostProfile must be set if seccompProfile type is Localhost.")?;
                let relative = Path::new(file);
                if relative.is_absolute() || relative.components().any(|c| matches!(c, std::path::Component::ParentDir)) {
                    return Err(format!("localhostProfile {file:?} must be a path under the kubelet's seccomp directory"));
                }
                SeccompProfile::Localhost(node.seccomp_dir().join(relative))
            }
            other => return Err(format!("unsupported seccompProfile type {other:?}")),
        },
    };
    Ok(SecurityConfig {
        add_capabilities: caps.add.unwrap_or_default(),
        drop_capabilities: caps.drop.unwrap_or_default(),
        readonly_rootfs: container.read_only_root_filesystem.unwrap_or(false),
        no_new_privileges: container.allow_privilege_escalation == Some(false),
        run_as_non_root: container.run_as_non_root.or(pod.run_as_non_root).unwrap_or(false),
        supplemental_groups: pod.fs_group.iter().chain(pod.supplemental_groups.iter().flatten()).filter_map(gid).collect(),
        seccomp,
    })
}

/// A pod's ephemeral containers as the containers they run as (the same fields, less
/// `targetContainerName`, which [`Worker::pid_namespace`] reads from the pod).
fn ephemeral_containers(spec: &PodSpec) -> Vec<Container> {
    let as_container = |e: &k8s_openapi::api::core::v1::EphemeralContainer| serde_json::to_value(e).ok().and_then(|v| serde_json::from_value(v).ok());
    spec.ephemeral_containers.iter().flatten().filter_map(as_container).collect()
}

/// What of a pod the kubelet acts on: everything but its status.
fn kubelet_view(pod: &Pod) -> Value {
    json!({
        "spec": pod.spec,
        "deletionTimestamp": pod.metadata.deletion_timestamp,
        "deletionGracePeriodSeconds": pod.metadata.deletion_grace_period_seconds,
        "labels": pod.metadata.labels,
        "annotations": pod.metadata.annotations,
    })
}

/// The status without transition timestamps, to tell real changes from re-renders.
fn strip_times(status: &Value) -> Value {
    let mut s = status.clone();
    if let Some(conds) = s.get_mut("conditions").and_then(Value::as_array_mut) {
        for c in conds {
            if let Some(o) = c.as_object_mut() {
                o.remove("lastTransitionTime");
            }
        }
    }
    s
}

/// `spec.containers{name}` / `spec.initContainers{name}`, as events name containers.
fn field_path(pod: &Pod, container: &str) -> String {
    let spec = pod.spec.as_ref();
    let is_init = spec.and_then(|s| s.init_containers.as_ref()).map(|v| v.iter().any(|c| c.name == container)).unwrap_or(false);
    let is_ephemeral = spec.and_then(|s| s.ephemeral_containers.as_ref()).map(|v| v.iter().any(|c| c.name == container)).unwrap_or(false);
    if is_init {
        format!("spec.initContainers{{{container}}}")
    } else if is_ephemeral {
        format!("spec.ephemeralContainers{{{container}}}")
    } else {
        format!("spec.containers{{{container}}}")
    }
}

/// The credentials for registry `host` in a `.dockerconfigjson` (`{"auths": {…}}`) or
/// legacy `.dockercfg` document: `username`/`password`, or `auth` (base64 `user:pass`).
fn registry_auth(raw: &[u8], host: &str) -> Option<RegistryAuth> {
    let doc = serde_json::from_slice::<Value>(raw).ok()?;
    let map = doc.get("auths").unwrap_or(&doc).as_object()?;
    map.iter().find_map(|(server, entry)| {
        let server_host = server.trim_start_matches("https://").trim_start_matches("http://").split('/').next().unwrap_or("");
        if server_host != host && !(host == "docker.io" && server_host.ends_with("docker.io")) {
            return None;
        }
        if let (Some(u), Some(p)) = (entry.get("username").and_then(Value::as_str), entry.get("password").and_then(Value::as_str)) {
            return Some(RegistryAuth { username: u.into(), password: p.into() });
        }
        use base64::Engine;
        let decoded = base64::engine::general_purpose::STANDARD.decode(entry.get("auth")?.as_str()?).ok()?;
        let (u, p) = std::str::from_utf8(&decoded).ok()?.split_once(':')?;
        Some(RegistryAuth { username: u.into(), password: p.into() })
    })
}

/// The registry host of an image reference (`docker.io` for Docker Hub names).
fn registry_host(image: &str) -> String {
    match image.split_once('/') {
        Some((first, _)) if first.contains('.') || first.contains(':') || first == "localhost" => first.to_string(),
        _ => "docker.io".to_string(),
    }
}

/// A duration as Go prints it (`10s`, `2m40s`, `1.5s`).
pub fn go_duration(d: Duration) -> String {
    let secs = d.as_secs();
    if secs >= 60 {
        let (m, s) = (secs / 60, secs % 60);
        if m >= 60 {
            return format!("{}h{}m{}s", m / 60, m % 60, s);
        }
        return format!("{m}m{s}s");
    }
    if secs >= 1 {
        let ms = d.subsec_millis();
        return if ms == 0 {
            format!("{secs}s")
        } else {
            format!("{}s", format!("{:.3}", d.as_secs_f64()).trim_end_matches('0').trim_end_matches('.'))
        };
    }
    format!("{}ms", d.as_millis())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seccomp_profile_of_the_container_wins_over_the_pods() {
        use k8s_openapi::api::core::v1::{PodSecurityContext, SeccompProfile as Profile, SecurityContext};
        let profile = |ty: &str, file: Option<&str>| Some(Profile { type_: ty.into(), localhost_profile: file.map(str::to_string) });
        let mut node = KubeletConfig::new("vm", "/var/lib/rkube/agent".into());
        let dir = node.seccomp_dir();
        assert_eq!(dir, Path::new("/var/lib/rkube/agent/seccomp"));
        let pod = PodSecurityContext { seccomp_profile: profile("RuntimeDefault", None), ..Default::default() };
        let resolve = |container: &SecurityContext, pod: &PodSecurityContext, node: &KubeletConfig| security_config(container, pod, node).map(|s| s.seccomp);
        assert_eq!(resolve(&SecurityContext::default(), &PodSecurityContext::default(), &node), Ok(SeccompProfile::Unconfined));
        node.seccomp_default = true;
        assert_eq!(resolve(&SecurityContext::default(), &PodSecurityContext::default(), &node), Ok(SeccompProfile::RuntimeDefault));
        node.seccomp_default = false;
        let resolve = |container: &SecurityContext, pod: &PodSecurityContext| resolve(container, pod, &node);
        assert_eq!(resolve(&SecurityContext::default(), &pod), Ok(SeccompProfile::RuntimeDefault));
        let unconfined = SecurityContext { seccomp_profile: profile("Unconfined", None), ..Default::default() };
        assert_eq!(resolve(&unconfined, &pod), Ok(SeccompProfile::Unconfined));
        let local = SecurityContext { seccomp_profile: profile("Localhost", Some("profiles/audit.json")), ..Default::default() };
        assert_eq!(resolve(&local, &pod), Ok(SeccompProfile::Localhost(dir.join("profiles/audit.json"))));
        for file in [None, Some("../x.json"), Some("/etc/x.json")] {
            let bad = SecurityContext { seccomp_profile: profile("Localhost", file), ..Default::default() };
            assert!(resolve(&bad, &pod).is_err(), "{file:?}");
        }
    }

    #[test]
    fn go_durations() {
        assert_eq!(go_duration(Duration::from_secs(10)), "10s");
        assert_eq!(go_duration(Duration::from_secs(160)), "2m40s");
        assert_eq!(go_duration(Duration::from_millis(1500)), "1.5s");
        assert_eq!(go_duration(Duration::from_millis(250)), "250ms");
    }

    #[test]
    fn pull_secrets_give_credentials_for_their_registry() {
        let cfg = br#"{"auths": {"localhost:5000": {"auth": "YWxpY2U6czNjcjN0"},
                                  "https://index.docker.io/v1/": {"username": "bob", "password": "pw"}}}"#;
        assert_eq!(registry_auth(cfg, "localhost:5000"), Some(RegistryAuth { username: "alice".into(), password: "s3cr3t".into() }));
        assert_eq!(registry_auth(cfg, "docker.io"), Some(RegistryAuth { username: "bob".into(), password: "pw".into() }));
        assert_eq!(registry_auth(cfg, "ghcr.io"), None);
        // The legacy .dockercfg has no "auths" wrapper.
        assert_eq!(registry_auth(br#"{"ghcr.io": {"auth": "dTpw"}}"#, "ghcr.io"), Some(RegistryAuth { username: "u".into(), password: "p".into() }));
        assert_eq!(registry_auth(b"not json", "ghcr.io"), None);
    }

    #[test]
    fn registry_hosts() {
        assert_eq!(registry_host("busybox"), "docker.io");
        assert_eq!(registry_host("library/busybox:1"), "docker.io");
        assert_eq!(registry_host("localhost:5000/app"), "localhost:5000");
        assert_eq!(registry_host("ghcr.io/x/y"), "ghcr.io");
    }
}
