//! The endpoints controller: for each Service with a selector, an Endpoints object of
//! the same name listing the selected pods' IPs — ready pods under `addresses`, others
//! under `notReadyAddresses` — grouped into subsets by the ports each pod resolves
//! (a named `targetPort` is looked up in the pod's container ports). Services without a
//! selector are left alone: their Endpoints are someone else's. Also the pod and port
//! helpers the EndpointSlice controller shares.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{EndpointAddress, EndpointPort, EndpointSubset, Endpoints, ObjectReference, Pod, Service, ServicePort};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, ListParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::ResourceExt;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::{Context, ControllerError};

/// The label a headless Service's Endpoints and EndpointSlices carry.
pub const HEADLESS_LABEL: &str = "service.kubernetes.io/headless";

#[derive(Debug, thiserror::Error)]
pub enum EndpointsError {
    #[error("listing the pods of Service {service} failed")]
    ListPods { service: String, #[source] source: kube::Error },
    #[error("reading Endpoints {service} failed")]
    Read { service: String, #[source] source: kube::Error },
    #[error("writing Endpoints {service} failed")]
    Write { service: String, #[source] source: kube::Error },
}

/// Starts the endpoints controller.
pub fn start(ctx: Context, shutdown: CancellationToken) -> futures::future::BoxFuture<'static, Result<(), ControllerError>> {
    Box::pin(async move {
        let services: Api<Service> = Api::all(ctx.client.clone());
        let controller = Controller::new(services, watcher::Config::default());
        let store = controller.store();
        controller
            .owns(Api::<Endpoints>::all(ctx.client.clone()), watcher::Config::default())
            .watches(Api::<Pod>::all(ctx.client.clone()), watcher::Config::default(), move |pod| services_for_pod(&store, &pod))
            .graceful_shutdown_on(async move { shutdown.cancelled().await })
            .run(reconcile, error_policy, Arc::new(ctx))
            .for_each(|_| async {})
            .await;
        Ok(())
    })
}

/// Every Service with a selector in the pod's namespace: a pod whose labels changed may
/// have left a selector as well as joined one.
pub(crate) fn services_for_pod(store: &Store<Service>, pod: &Pod) -> Vec<ObjectRef<Service>> {
    let ns = pod.namespace();
    store
        .state()
        .iter()
        .filter(|s| s.namespace() == ns && selector(s).is_some())
        .map(|s| ObjectRef::from_obj(s.as_ref()))
        .collect()
}

fn error_policy(svc: Arc<Service>, err: &EndpointsError, _: Arc<Context>) -> Action {
    warn!(service = %key(&svc), error = %err, "endpoints reconcile failed");
    Action::requeue(Duration::from_secs(1))
}

pub(crate) fn key(svc: &Service) -> String {
    format!("{}/{}", svc.namespace().unwrap_or_default(), svc.name_any())
}

/// The Service's selector, if it has a non-empty one.
pub(crate) fn selector(svc: &Service) -> Option<&BTreeMap<String, String>> {
    svc.spec.as_ref().and_then(|s| s.selector.as_ref()).filter(|s| !s.is_empty())
}

pub(crate) fn is_headless(svc: &Service) -> bool {
    svc.spec.as_ref().and_then(|s| s.cluster_ip.as_deref()) == Some("None")
}

pub(crate) fn publishes_not_ready(svc: &Service) -> bool {
    svc.spec.as_ref().and_then(|s| s.publish_not_ready_addresses) == Some(true)
}

/// The pods a selector picks, from the API (not a cache, so a reconcile never works
/// from an older view than the event that caused it).
pub(crate) async fn selected_pods(client: &kube::Client, svc: &Service) -> Result<Vec<Pod>, kube::Error> {
    let Some(sel) = selector(svc) else { return Ok(vec![]) };
    let labels = sel.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",");
    let api: Api<Pod> = Api::namespaced(client.clone(), &svc.namespace().unwrap_or_default());
    Ok(api.list(&ListParams::default().labels(&labels)).await?.items)
}

/// Whether a pod belongs in endpoints at all: it has an IP and has not finished.
pub(crate) fn has_address(pod: &Pod) -> Option<String> {
    let status = pod.status.as_ref()?;
    if matches!(status.phase.as_deref(), Some("Succeeded" | "Failed")) {
        return None;
    }
    status.pod_ip.clone().filter(|ip| !ip.is_empty())
}

/// The pod's Ready condition is True.
pub(crate) fn is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// The container port a Service port's `targetPort` means on this pod: a number as it
/// is, a name looked up among the containers' ports of the same protocol.
pub(crate) fn resolve_port(port: &ServicePort, pod: &Pod) -> Option<i32> {
    let protocol = port.protocol.as_deref().unwrap_or("TCP");
    match &port.target_port {
        None => Some(port.port),
        Some(IntOrString::Int(n)) => Some(*n),
        Some(IntOrString::String(name)) => pod.spec.as_ref()?.containers.iter().flat_map(|c| c.ports.iter().flatten()).find_map(|p| {
            (p.name.as_deref() == Some(name.as_str()) && p.protocol.as_deref().unwrap_or("TCP") == protocol).then_some(p.container_port)
        }),
    }
}

/// The ports a pod serves for the Service, in the Service's order; ports whose
/// `targetPort` name the pod does not have are left out.
pub(crate) fn pod_ports(svc: &Service, pod: &Pod) -> Vec<ResolvedPort> {
    svc.spec
        .as_ref()
        .and_then(|s| s.ports.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|p| resolve_port(p, pod).map(|n| (p.name.clone(), n, p.protocol.clone().unwrap_or_else(|| "TCP".into()))))
        .collect()
}

pub(crate) fn pod_reference(pod: &Pod) -> ObjectReference {
    ObjectReference {
        kind: Some("Pod".into()),
        name: pod.metadata.name.clone(),
        namespace: pod.metadata.namespace.clone(),
        uid: pod.metadata.uid.clone(),
        ..Default::default()
    }
}

/// The owner reference objects derived from a Service carry.
pub(crate) fn service_owner(svc: &Service) -> OwnerReference {
    OwnerReference {
        api_version: "v1".into(),
        kind: "Service".into(),
        name: svc.name_any(),
        uid: svc.metadata.uid.clone().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

/// The hostname a pod has under a headless Service (`spec.hostname` when its
/// `spec.subdomain` is the Service's name).
pub(crate) fn hostname(svc: &Service, pod: &Pod) -> Option<String> {
    let spec = pod.spec.as_ref()?;
    (is_headless(svc) && spec.subdomain.as_deref() == Some(svc.name_any().as_str())).then(|| spec.hostname.clone()).flatten()
}

/// A resolved port: the Service port's name, the pod's port number, the protocol.
pub(crate) type ResolvedPort = (Option<String>, i32, String);

/// Ready and not-ready addresses of the pods that resolve the same ports.
type AddressGroups = BTreeMap<Vec<ResolvedPort>, (Vec<EndpointAddress>, Vec<EndpointAddress>)>;

/// The subsets of a Service's Endpoints for these pods.
pub fn desired_subsets(svc: &Service, pods: &[Pod]) -> Vec<EndpointSubset> {
    let no_ports = svc.spec.as_ref().and_then(|s| s.ports.as_ref()).is_none_or(Vec::is_empty);
    let mut groups = AddressGroups::new();
    for pod in pods {
        let Some(ip) = has_address(pod) else { continue };
        let terminating = pod.metadata.deletion_timestamp.is_some();
        if terminating && !publishes_not_ready(svc) {
            continue;
        }
        let ports = pod_ports(svc, pod);
        if ports.is_empty() && !(no_ports && is_headless(svc)) {
            continue;
        }
        let address = EndpointAddress {
            ip,
            hostname: hostname(svc, pod),
            node_name: pod.spec.as_ref().and_then(|s| s.node_name.clone()),
            target_ref: Some(pod_reference(pod)),
        };
        let entry = groups.entry(ports).or_default();
        if publishes_not_ready(svc) || is_ready(pod) {
            entry.0.push(address);
        } else {
            entry.1.push(address);
        }
    }
    groups
        .into_iter()
        .map(|(ports, (mut ready, mut not_ready))| {
            ready.sort_by(|a, b| a.ip.cmp(&b.ip));
            not_ready.sort_by(|a, b| a.ip.cmp(&b.ip));
            EndpointSubset {
                addresses: (!ready.is_empty()).then_some(ready),
                not_ready_addresses: (!not_ready.is_empty()).then_some(not_ready),
                ports: (!ports.is_empty()).then(|| {
                    ports.into_iter().map(|(name, port, protocol)| EndpointPort { name, port, protocol: Some(protocol), app_protocol: None }).collect()
                }),
            }
        })
        .collect()
}

fn desired_labels(svc: &Service) -> BTreeMap<String, String> {
    let mut labels = svc.labels().clone();
    if is_headless(svc) {
        labels.insert(HEADLESS_LABEL.into(), String::new());
    } else {
        labels.remove(HEADLESS_LABEL);
    }
    labels
}

async fn reconcile(svc: Arc<Service>, ctx: Arc<Context>) -> Result<Action, EndpointsError> {
    let service = key(&svc);
    if selector(&svc).is_none() || svc.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let ns = svc.namespace().unwrap_or_default();
    let name = svc.name_any();
    let pods = selected_pods(&ctx.client, &svc).await.map_err(|source| EndpointsError::ListPods { service: service.clone(), source })?;
    let subsets = desired_subsets(&svc, &pods);
    let labels = desired_labels(&svc);
    let api: Api<Endpoints> = Api::namespaced(ctx.client.clone(), &ns);
    let existing = api.get_opt(&name).await.map_err(|source| EndpointsError::Read { service: service.clone(), source })?;
    let result = match existing {
        None => {
            let ep = Endpoints {
                metadata: ObjectMeta {
                    name: Some(name.clone()),
                    namespace: Some(ns.clone()),
                    labels: Some(labels),
                    owner_references: Some(vec![service_owner(&svc)]),
                    ..Default::default()
                },
                subsets: (!subsets.is_empty()).then_some(subsets),
            };
            api.create(&PostParams::default(), &ep).await.map(|_| ())
        }
        Some(current) => {
            let same = current.subsets.clone().unwrap_or_default() == subsets && current.metadata.labels.clone().unwrap_or_default() == labels;
            if same {
                return Ok(Action::await_change());
            }
            let mut ep = current.clone();
            ep.metadata.labels = Some(labels);
            ep.metadata.managed_fields = None;
            ep.subsets = (!subsets.is_empty()).then_some(subsets);
            api.replace(&name, &PostParams::default(), &ep).await.map(|_| ())
        }
    };
    match result {
        Ok(()) => {
            info!(service = %service, pods = pods.len(), "endpoints updated");
            Ok(Action::await_change())
        }
        // Someone wrote meanwhile, or the namespace is going: look again.
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(Action::requeue(Duration::from_millis(200))),
        Err(kube::Error::Api(s)) if s.code == 403 || s.code == 404 => Ok(Action::await_change()),
        Err(source) => Err(EndpointsError::Write { service, source }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{Container, ContainerPort, PodCondition, PodSpec, PodStatus, ServiceSpec};

    fn pod(name: &str, ip: &str, ready: bool) -> Pod {
        Pod {
            metadata: ObjectMeta { name: Some(name.into()), namespace: Some("default".into()), ..Default::default() },
            spec: Some(PodSpec {
                containers: vec![Container {
                    name: "c".into(),
                    ports: Some(vec![ContainerPort { name: Some("http".into()), container_port: 8080, ..Default::default() }]),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            status: Some(PodStatus {
                phase: Some("Running".into()),
                pod_ip: Some(ip.into()),
                conditions: Some(vec![PodCondition { type_: "Ready".into(), status: if ready { "True" } else { "False" }.into(), ..Default::default() }]),
                ..Default::default()
            }),
        }
    }

    fn service(target: IntOrString) -> Service {
        Service {
            metadata: ObjectMeta { name: Some("web".into()), namespace: Some("default".into()), ..Default::default() },
            spec: Some(ServiceSpec {
                selector: Some([("app".to_string(), "web".to_string())].into()),
                ports: Some(vec![ServicePort { name: Some("http".into()), port: 80, target_port: Some(target), protocol: Some("TCP".into()), ..Default::default() }]),
                ..Default::default()
            }),
            status: None,
        }
    }

    #[test]
    fn named_target_ports_resolve_through_container_ports() {
        let svc = service(IntOrString::String("http".into()));
        let subsets = desired_subsets(&svc, &[pod("a", "10.0.0.2", true), pod("b", "10.0.0.1", false)]);
        assert_eq!(subsets.len(), 1);
        let s = &subsets[0];
        assert_eq!(s.ports.as_ref().map(|p| p[0].port), Some(8080));
        assert_eq!(s.addresses.as_ref().map(|a| a[0].ip.clone()), Some("10.0.0.2".into()));
        assert_eq!(s.not_ready_addresses.as_ref().map(|a| a[0].ip.clone()), Some("10.0.0.1".into()));
    }

    #[test]
    fn pods_without_the_named_port_are_left_out() {
        let svc = service(IntOrString::String("metrics".into()));
        assert!(desired_subsets(&svc, &[pod("a", "10.0.0.2", true)]).is_empty());
        let svc = service(IntOrString::Int(9000));
        let subsets = desired_subsets(&svc, &[pod("a", "10.0.0.2", true)]);
        assert_eq!(subsets[0].ports.as_ref().map(|p| p[0].port), Some(9000));
    }
}
