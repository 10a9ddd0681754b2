//! The EndpointSlice controller: for each Service with a selector, EndpointSlices (one
//! per address type and resolved port set) listing the selected pods with the
//! `ready`/`serving`/`terminating` conditions, labelled `kubernetes.io/service-name` and
//! managed by `endpointslice-controller.k8s.io`, owned by the Service. A Service with no
//! endpoints keeps one empty slice, as in Kubernetes.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::ResourceExt;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::endpoint::{self, is_headless, is_ready, publishes_not_ready};
use super::{Context, ControllerError};

pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
pub const MANAGED_BY_LABEL: &str = "endpointslice.kubernetes.io/managed-by";
pub const MANAGED_BY: &str = "endpointslice-controller.k8s.io";

#[derive(Debug, thiserror::Error)]
pub enum EndpointSliceError {
    #[error("listing the pods of Service {service} failed")]
    ListPods { service: String, #[source] source: kube::Error },
    #[error("listing the EndpointSlices of Service {service} failed")]
    ListSlices { service: String, #[source] source: kube::Error },
    #[error("writing an EndpointSlice of Service {service} failed")]
    Write { service: String, #[source] source: kube::Error },
}

/// Starts the EndpointSlice controller.
pub fn start(ctx: Context, shutdown: CancellationToken) -> futures::future::BoxFuture<'static, Result<(), ControllerError>> {
    Box::pin(async move {
        let services: Api<Service> = Api::all(ctx.client.clone());
        let controller = Controller::new(services, watcher::Config::default());
        let store = controller.store();
        let managed = watcher::Config::default().labels(&format!("{MANAGED_BY_LABEL}={MANAGED_BY}"));
        controller
            .owns(Api::<EndpointSlice>::all(ctx.client.clone()), managed)
            .watches(Api::<Pod>::all(ctx.client.clone()), watcher::Config::default(), move |pod| endpoint::services_for_pod(&store, &pod))
            .graceful_shutdown_on(async move { shutdown.cancelled().await })
            .run(reconcile, error_policy, Arc::new(ctx))
            .for_each(|_| async {})
            .await;
        Ok(())
    })
}

fn error_policy(svc: Arc<Service>, err: &EndpointSliceError, _: Arc<Context>) -> Action {
    warn!(service = %endpoint::key(&svc), error = %err, "endpointslice reconcile failed");
    Action::requeue(Duration::from_secs(1))
}

/// What one slice holds: its address type and ports, and the endpoints.
type SliceKey = (String, Vec<EndpointPort>);

/// The slices a Service's pods make, by address type and port set.
pub fn desired_slices(svc: &Service, pods: &[Pod]) -> Vec<(SliceKey, Vec<Endpoint>)> {
    let mut groups: BTreeMap<String, (SliceKey, Vec<Endpoint>)> = BTreeMap::new();
    let no_ports = svc.spec.as_ref().and_then(|s| s.ports.as_ref()).is_none_or(Vec::is_empty);
    for pod in pods {
        let Some(ip) = endpoint::has_address(pod) else { continue };
        let ports: Vec<EndpointPort> = endpoint::pod_ports(svc, pod)
            .into_iter()
            // An unnamed Service port gives a port named "" (never absent), as Kubernetes'
            // controller writes it: `kubectl describe service` dereferences the name.
            .map(|(name, port, protocol)| EndpointPort { name: Some(name.unwrap_or_default()), port: Some(port), protocol: Some(protocol), app_protocol: None })
            .collect();
        if ports.is_empty() && !(no_ports && is_headless(svc)) {
            continue;
        }
        let serving = publishes_not_ready(svc) || is_ready(pod);
        let terminating = pod.metadata.deletion_timestamp.is_some();
        let ready = publishes_not_ready(svc) || (serving && !terminating);
        let address_type = if ip.contains(':') { "IPv6" } else { "IPv4" }.to_string();
        let ep = Endpoint {
            addresses: vec![ip],
            conditions: Some(EndpointConditions { ready: Some(ready), serving: Some(serving), terminating: Some(terminating) }),
            hostname: endpoint::hostname(svc, pod),
            node_name: pod.spec.as_ref().and_then(|s| s.node_name.clone()),
            target_ref: Some(endpoint::pod_reference(pod)),
            ..Default::default()
        };
        let id = format!("{address_type}{}", serde_json::to_string(&ports).unwrap_or_default());
        groups.entry(id).or_insert_with(|| ((address_type, ports), Vec::new())).1.push(ep);
    }
    let mut out: Vec<(SliceKey, Vec<Endpoint>)> = groups.into_values().collect();
    for (_, eps) in &mut out {
        eps.sort_by(|a, b| a.addresses.cmp(&b.addresses));
    }
    if out.is_empty() {
        // The placeholder slice of a Service with no endpoints.
        out.push((("IPv4".to_string(), Vec::new()), Vec::new()));
    }
    out
}

fn desired_labels(svc: &Service) -> BTreeMap<String, String> {
    let mut labels = svc.labels().clone();
    labels.insert(SERVICE_NAME_LABEL.into(), svc.name_any());
    labels.insert(MANAGED_BY_LABEL.into(), MANAGED_BY.into());
    if is_headless(svc) {
        labels.insert(endpoint::HEADLESS_LABEL.into(), String::new());
    } else {
        labels.remove(endpoint::HEADLESS_LABEL);
    }
    labels
}

fn key_of(slice: &EndpointSlice) -> SliceKey {
    (slice.address_type.clone(), slice.ports.clone().unwrap_or_default())
}

async fn reconcile(svc: Arc<Service>, ctx: Arc<Context>) -> Result<Action, EndpointSliceError> {
    let service = endpoint::key(&svc);
    if endpoint::selector(&svc).is_none() || svc.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let ns = svc.namespace().unwrap_or_default();
    let name = svc.name_any();
    let pods = endpoint::selected_pods(&ctx.client, &svc).await.map_err(|source| EndpointSliceError::ListPods { service: service.clone(), source })?;
    let api: Api<EndpointSlice> = Api::namespaced(ctx.client.clone(), &ns);
    let lp = ListParams::default().labels(&format!("{SERVICE_NAME_LABEL}={name},{MANAGED_BY_LABEL}={MANAGED_BY}"));
    let mut existing: Vec<Option<EndpointSlice>> = api
        .list(&lp)
        .await
        .map_err(|source| EndpointSliceError::ListSlices { service: service.clone(), source })?
        .items
        .into_iter()
        .map(Some)
        .collect();
    let labels = desired_labels(&svc);
    let owner = endpoint::service_owner(&svc);
    let mut writes = 0;
    let desired = desired_slices(&svc, &pods);
    // Slices with the same ports first; then any left over are reused; then new ones.
    let mut pending = Vec::new();
    for (key, endpoints) in desired {
        match existing.iter_mut().find(|s| s.as_ref().is_some_and(|s| key_of(s) == key)).and_then(Option::take) {
            Some(slice) => pending.push((key, endpoints, Some(slice))),
            None => pending.push((key, endpoints, None)),
        }
    }
    for (key, endpoints, slot) in pending {
        let slot = slot.or_else(|| existing.iter_mut().find_map(Option::take));
        let result = match slot {
            Some(current) => {
                let owned = current.metadata.owner_references.as_ref().is_some_and(|o| o.iter().any(|r| r.uid == owner.uid));
                let same = key_of(&current) == key && current.endpoints == endpoints && current.metadata.labels.clone().unwrap_or_default() == labels && owned;
                if same {
                    continue;
                }
                let mut slice = current.clone();
                slice.metadata.labels = Some(labels.clone());
                slice.metadata.owner_references = Some(vec![owner.clone()]);
                slice.metadata.managed_fields = None;
                slice.address_type = key.0;
                slice.ports = Some(key.1);
                slice.endpoints = endpoints;
                api.replace(&slice.name_any(), &PostParams::default(), &slice).await.map(|_| ())
            }
            None => {
                let slice = EndpointSlice {
                    metadata: ObjectMeta {
                        generate_name: Some(format!("{name}-")),
                        namespace: Some(ns.clone()),
                        labels: Some(labels.clone()),
                        owner_references: Some(vec![owner.clone()]),
                        ..Default::default()
                    },
                    address_type: key.0,
                    ports: Some(key.1),
                    endpoints,
                };
                api.create(&PostParams::default(), &slice).await.map(|_| ())
            }
        };
        writes += 1;
        match result {
            Ok(()) => {}
            Err(kube::Error::Api(s)) if s.code == 409 => return Ok(Action::requeue(Duration::from_millis(200))),
            Err(kube::Error::Api(s)) if s.code == 403 || s.code == 404 => return Ok(Action::await_change()),
            Err(source) => return Err(EndpointSliceError::Write { service, source }),
        }
    }
    for stale in existing.into_iter().flatten() {
        writes += 1;
        match api.delete(&stale.name_any(), &DeleteParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(source) => return Err(EndpointSliceError::Write { service, source }),
        }
    }
    if writes > 0 {
        info!(service = %service, pods = pods.len(), writes, "endpointslices updated");
    }
    Ok(Action::await_change())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{PodCondition, PodSpec, PodStatus, ServicePort, ServiceSpec};
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

    fn pod(ip: &str, ready: bool, terminating: bool) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some(format!("p-{ip}")),
                deletion_timestamp: terminating.then(|| k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(k8s_openapi::jiff::Timestamp::now())),
                ..Default::default()
            },
            spec: Some(PodSpec::default()),
            status: Some(PodStatus {
                phase: Some("Running".into()),
                pod_ip: Some(ip.into()),
                conditions: Some(vec![PodCondition { type_: "Ready".into(), status: if ready { "True" } else { "False" }.into(), ..Default::default() }]),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn conditions_follow_readiness_and_termination() {
        let svc = Service {
            metadata: ObjectMeta { name: Some("web".into()), ..Default::default() },
            spec: Some(ServiceSpec {
                selector: Some([("app".to_string(), "web".to_string())].into()),
                ports: Some(vec![ServicePort { port: 80, target_port: Some(IntOrString::Int(8080)), ..Default::default() }]),
                ..Default::default()
            }),
            status: None,
        };
        let slices = desired_slices(&svc, &[pod("10.0.0.1", true, false), pod("10.0.0.2", false, false), pod("10.0.0.3", true, true)]);
        assert_eq!(slices.len(), 1);
        let conds: Vec<(bool, bool, bool)> = slices[0]
            .1
            .iter()
            .filter_map(|e| e.conditions.as_ref())
            .map(|c| (c.ready == Some(true), c.serving == Some(true), c.terminating == Some(true)))
            .collect();
        assert_eq!(conds, vec![(true, true, false), (false, false, false), (false, true, true)]);
        assert_eq!(slices[0].0 .1[0].port, Some(8080));
        assert!(desired_slices(&svc, &[])[0].1.is_empty());
    }
}
