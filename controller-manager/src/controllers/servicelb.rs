//! The service load-balancer controller (`service-lb`): gives `type: LoadBalancer`
//! Services an address in `status.loadBalancer.ingress` (with `ipMode: VIP`), so
//! `kubectl get svc` shows an EXTERNAL-IP and kube-proxy answers on it — what k3s's
//! servicelb does for a lab. With `--load-balancer-ip-pool` each Service gets one free
//! address of the pool (its `spec.loadBalancerIP` when that is in the pool and free);
//! a Service that gets none stays pending with a Warning Event saying why. Without a
//! pool, every Service's addresses are the Ready, schedulable nodes' (their ExternalIP,
//! else InternalIP), following nodes as they come and go. Only Services without a
//! `spec.loadBalancerClass`, or with [`LOAD_BALANCER_CLASS`], are handled. The pool's
//! allocations are rebuilt from the Services' own statuses, so a restart keeps every
//! address where it was; a Service that is deleted or stops being a LoadBalancer gives
//! its address back (and the latter has its `status.loadBalancer` cleared).

pub mod pool;

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures::channel::mpsc;
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use k8s_openapi::api::core::v1::{LoadBalancerIngress, Node, Service};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::{self, Action};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Resource, ResourceExt};
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, info_span, warn, Instrument};

use self::pool::{Allocations, Holder, Pool};
use super::{Context, ControllerError};

/// The `spec.loadBalancerClass` this controller answers to (as do Services with none).
pub const LOAD_BALANCER_CLASS: &str = "rkube.io/service-lb";

/// The component named in the Events it records.
const COMPONENT: &str = "service-lb-controller";

/// How often a pending Service is looked at again even if nothing seems to change.
const PENDING_RETRY: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum ServiceLbError {
    #[error("writing the load-balancer status of Service {service} failed")]
    WriteStatus {
        service: String,
        #[source]
        source: kube::Error,
    },
}

/// Where addresses come from.
enum Source {
    /// `--load-balancer-ip-pool`: one address of the pool per Service.
    Pool(Mutex<Allocations>),
    /// No pool: the nodes' addresses, shared by every Service.
    Nodes(Store<Node>),
}

struct State {
    client: kube::Client,
    services: Store<Service>,
    source: Source,
    /// The last Warning each Service (by uid) was given, so a pending Service is not
    /// told the same thing on every retry.
    last_warning: Mutex<HashMap<String, String>>,
    /// Services to look at again: pending ones, when an address may have come free.
    retry: mpsc::UnboundedSender<ObjectRef<Service>>,
    recorder: component_base::events::EventRecorder,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Starts the service load-balancer controller.
pub fn start(ctx: Context, shutdown: CancellationToken) -> BoxFuture<'static, Result<(), ControllerError>> {
    run(ctx, shutdown).boxed()
}

async fn run(ctx: Context, shutdown: CancellationToken) -> Result<(), ControllerError> {
    let client = ctx.client.clone();
    let pool = match ctx.config.load_balancer_ip_pool.as_deref() {
        Some(text) => Some(Pool::parse(text).map_err(|e| ControllerError::Config(format!("--load-balancer-ip-pool {e}")))?),
        None => None,
    };
    let (svc_reader, svc_writer) = reflector::store::<Service>();
    let (tx, rx) = mpsc::unbounded::<ObjectRef<Service>>();

    let source = match pool {
        Some(pool) => {
            info!(pool = %pool, addresses = pool.size(), "LoadBalancer Services get addresses from the pool");
            Source::Pool(Mutex::new(Allocations::new(pool)))
        }
        None => {
            info!("no --load-balancer-ip-pool: LoadBalancer Services get the Ready nodes' addresses");
            let (node_reader, node_writer) = reflector::store::<Node>();
            let node_stream = reflector::reflector(node_writer, watcher(Api::<Node>::all(client.clone()), watcher::Config::default()).default_backoff());
            tokio::spawn(follow_nodes(node_stream, node_reader.clone(), svc_reader.clone(), tx.clone(), shutdown.clone()));
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                r = node_reader.wait_until_ready() => r.map_err(|e| ControllerError::Config(e.to_string()))?,
            }
            Source::Nodes(node_reader)
        }
    };
    let state = Arc::new(State {
        client: client.clone(),
        services: svc_reader.clone(),
        source,
        last_warning: Mutex::new(HashMap::new()),
        retry: tx,
        recorder: component_base::events::EventRecorder::new(client.clone(), COMPONENT, None),
    });

    let svc_stream = reflector::reflector(svc_writer, watcher(Api::<Service>::all(client.clone()), watcher::Config::default()).default_backoff());
    let st = state.clone();
    let svc_refs = svc_stream.filter_map(move |ev| {
        let out = match ev {
            Ok(watcher::Event::Apply(s) | watcher::Event::InitApply(s)) => Some(Ok(ObjectRef::from_obj(&s))),
            Ok(watcher::Event::Delete(s)) => {
                service_deleted(&st, &s);
                None
            }
            Ok(watcher::Event::Init | watcher::Event::InitDone) => None,
            Err(e) => Some(Err(e)),
        };
        futures::future::ready(out)
    });
    let queue = futures::stream::select(svc_refs, rx.map(Ok::<_, watcher::Error>));
    let applier = controller::applier(
        |svc, st| {
            let span = info_span!("reconcile", controller = "service-lb", service = %key(&svc));
            reconcile(svc, st).instrument(span).boxed()
        },
        |svc: Arc<Service>, err: &ServiceLbError, _| {
            warn!(service = %key(&svc), error = %err, "service-lb reconcile failed");
            Action::requeue(Duration::from_secs(2))
        },
        state,
        svc_reader,
        queue,
        controller::Config::default(),
    );
    super::drive("service-lb", applier, &shutdown).await
}

/// A Service is gone: what it held is free, and pending Services may now get it.
fn service_deleted(st: &State, svc: &Service) {
    let uid = svc.metadata.uid.clone().unwrap_or_default();
    lock(&st.last_warning).remove(&uid);
    if let Source::Pool(allocations) = &st.source {
        if let Some(ip) = lock(allocations).release(&uid) {
            info!(service = %key(svc), ip = %ip, "released the address of a deleted Service");
            retry_pending(st);
        }
    }
}

/// Queues every handled LoadBalancer Service that has no address yet.
fn retry_pending(st: &State) {
    for svc in st.services.state() {
        if handled(&svc) && current_ingress(&svc).is_empty() {
            let _ = st.retry.unbounded_send(ObjectRef::from_obj(svc.as_ref()));
        }
    }
}

/// Follows the nodes (without a pool): when a node's readiness, schedulability or
/// addresses change, or a node comes or goes, every handled Service is looked at again.
async fn follow_nodes(
    stream: impl futures::Stream<Item = Result<watcher::Event<Node>, watcher::Error>>,
    nodes: Store<Node>,
    services: Store<Service>,
    tx: mpsc::UnboundedSender<ObjectRef<Service>>,
    shutdown: CancellationToken,
) {
    let requeue_all = || {
        for svc in services.state() {
            if handled(&svc) {
                let _ = tx.unbounded_send(ObjectRef::from_obj(svc.as_ref()));
            }
        }
    };
    let mut seen: HashMap<String, NodeFingerprint> = HashMap::new();
    let mut stream = std::pin::pin!(stream);
    loop {
        let ev = tokio::select! { _ = shutdown.cancelled() => return, ev = stream.next() => ev };
        match ev {
            None => return,
            Some(Ok(watcher::Event::Apply(node))) => {
                let print = fingerprint(&node);
                if seen.get(&node.name_any()) != Some(&print) {
                    seen.insert(node.name_any(), print);
                    requeue_all();
                }
            }
            Some(Ok(watcher::Event::Delete(node))) => {
                seen.remove(&node.name_any());
                requeue_all();
            }
            Some(Ok(watcher::Event::InitDone)) => {
                seen = nodes.state().iter().map(|n| (n.name_any(), fingerprint(n))).collect();
                requeue_all();
            }
            Some(Ok(watcher::Event::Init | watcher::Event::InitApply(_))) => {}
            Some(Err(e)) => debug!(error = %e, "watching nodes"),
        }
    }
}

/// What of a node decides whether and how it serves LoadBalancer addresses.
type NodeFingerprint = (bool, Vec<(String, String)>);

fn fingerprint(node: &Node) -> NodeFingerprint {
    let addresses = node.status.as_ref().and_then(|s| s.addresses.as_ref()).into_iter().flatten();
    (serves(node), addresses.map(|a| (a.type_.clone(), a.address.clone())).collect())
}

pub(crate) fn key(svc: &Service) -> String {
    format!("{}/{}", svc.namespace().unwrap_or_default(), svc.name_any())
}

fn is_load_balancer(svc: &Service) -> bool {
    svc.spec.as_ref().and_then(|s| s.type_.as_deref()) == Some("LoadBalancer")
}

/// A LoadBalancer Service this controller is responsible for (no class, or ours).
pub fn handled(svc: &Service) -> bool {
    let class = svc.spec.as_ref().and_then(|s| s.load_balancer_class.as_deref());
    is_load_balancer(svc) && class.is_none_or(|c| c == LOAD_BALANCER_CLASS)
}

fn current_ingress(svc: &Service) -> &[LoadBalancerIngress] {
    svc.status.as_ref().and_then(|s| s.load_balancer.as_ref()).and_then(|lb| lb.ingress.as_deref()).unwrap_or_default()
}

fn holder(svc: &Service) -> Holder {
    Holder { uid: svc.metadata.uid.clone().unwrap_or_default(), service: key(svc) }
}

/// The IP families a Service asks for (IPv4 when it says nothing).
fn families(svc: &Service) -> Vec<String> {
    let listed = svc.spec.as_ref().and_then(|s| s.ip_families.clone()).unwrap_or_default();
    if listed.is_empty() {
        vec!["IPv4".to_string()]
    } else {
        listed
    }
}

/// Whether a node takes load-balancer traffic: Ready, schedulable, not being deleted.
pub fn serves(node: &Node) -> bool {
    let ready = node
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
    let unschedulable = node.spec.as_ref().and_then(|s| s.unschedulable) == Some(true);
    ready && !unschedulable && node.metadata.deletion_timestamp.is_none()
}

/// The addresses load-balanced traffic reaches through the nodes that serve it: per
/// node and family, its ExternalIPs if it has any, else its InternalIPs; sorted, once each.
pub fn node_addresses(nodes: &[Arc<Node>], families: &[String]) -> Vec<IpAddr> {
    let wanted = |ip: &IpAddr| match ip {
        IpAddr::V4(_) => families.iter().any(|f| f == "IPv4"),
        IpAddr::V6(_) => families.iter().any(|f| f == "IPv6"),
    };
    let mut out = Vec::new();
    for node in nodes.iter().filter(|n| serves(n)) {
        let addresses = node.status.as_ref().and_then(|s| s.addresses.as_ref()).map(Vec::as_slice).unwrap_or_default();
        let of_type = |type_: &str| -> Vec<IpAddr> {
            addresses.iter().filter(|a| a.type_ == type_).filter_map(|a| a.address.parse::<IpAddr>().ok()).filter(wanted).collect()
        };
        let (external, internal) = (of_type("ExternalIP"), of_type("InternalIP"));
        for v6 in [false, true] {
            let external: Vec<IpAddr> = external.iter().copied().filter(|ip| ip.is_ipv6() == v6).collect();
            if external.is_empty() {
                out.extend(internal.iter().copied().filter(|ip| ip.is_ipv6() == v6));
            } else {
                out.extend(external);
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

/// The ingress points for these addresses, as this controller writes them.
fn ingress_for(ips: &[IpAddr]) -> Vec<LoadBalancerIngress> {
    ips.iter().map(|ip| LoadBalancerIngress { ip: Some(ip.to_string()), ip_mode: Some("VIP".into()), ..Default::default() }).collect()
}

/// Takes back into the pool the addresses Services already show in their status (after
/// a restart, or ones written before this process saw them), and frees what Services
/// that are gone or no longer handled held. Older Services win any conflict.
fn sync_allocations(allocations: &mut Allocations, services: &[Arc<Service>]) {
    let mut handled: Vec<&Arc<Service>> = services.iter().filter(|s| handled(s)).collect();
    let live: HashSet<String> = handled.iter().filter_map(|s| s.metadata.uid.clone()).collect();
    allocations.retain(|uid| live.contains(uid));
    handled.sort_by_key(|s| (s.creation_timestamp(), key(s)));
    for svc in handled {
        let holder = holder(svc);
        if allocations.held_by(&holder.uid).is_some() {
            continue;
        }
        for ip in current_ingress(svc).iter().filter_map(|i| i.ip.as_deref()?.parse::<Ipv4Addr>().ok()) {
            if allocations.adopt(&holder, ip) {
                break;
            }
        }
    }
}

/// The address `spec.loadBalancerIP` asks for, if any.
fn requested_ip(svc: &Service) -> Result<Option<Ipv4Addr>, String> {
    match svc.spec.as_ref().and_then(|s| s.load_balancer_ip.as_deref()).map(str::trim).filter(|s| !s.is_empty()) {
        None => Ok(None),
        Some(text) => text.parse::<Ipv4Addr>().map(Some).map_err(|_| format!("spec.loadBalancerIP {text:?} is not an IPv4 address")),
    }
}

/// The addresses a handled Service is to have, or why it has none.
fn desired(st: &State, svc: &Service) -> Result<Vec<IpAddr>, String> {
    let families = families(svc);
    match &st.source {
        Source::Pool(allocations) => {
            let mut allocations = lock(allocations);
            sync_allocations(&mut allocations, &st.services.state());
            let holder = holder(svc);
            if !families.iter().any(|f| f == "IPv4") {
                allocations.release(&holder.uid);
                return Err(format!("the load-balancer pool {} has only IPv4 addresses and the Service asks for {}", allocations.pool(), families.join(",")));
            }
            let requested = requested_ip(svc).inspect_err(|_| {
                allocations.release(&holder.uid);
            })?;
            allocations.assign(&holder, requested).map(|ip| vec![IpAddr::V4(ip)]).map_err(|p| p.to_string())
        }
        Source::Nodes(nodes) => {
            let ips = node_addresses(&nodes.state(), &families);
            if ips.is_empty() {
                Err(format!("no Ready, schedulable node has an {} address", families.join(" or ")))
            } else {
                Ok(ips)
            }
        }
    }
}

async fn reconcile(svc: Arc<Service>, st: Arc<State>) -> Result<Action, ServiceLbError> {
    let uid = svc.metadata.uid.clone().unwrap_or_default();
    if !is_load_balancer(&svc) {
        // Not (or no longer) a LoadBalancer: give back its address and clear its status.
        let released = match &st.source {
            Source::Pool(allocations) => lock(allocations).release(&uid),
            Source::Nodes(_) => None,
        };
        lock(&st.last_warning).remove(&uid);
        if let Some(ip) = released {
            info!(ip = %ip, "released the address of a Service that is no longer type LoadBalancer");
            retry_pending(&st);
        }
        if !current_ingress(&svc).is_empty() {
            write_ingress(&st, &svc, &[]).await?;
            info!("cleared the load-balancer status of a Service that is no longer type LoadBalancer");
        }
        return Ok(Action::await_change());
    }
    if !handled(&svc) {
        // Another load balancer's Service.
        return Ok(Action::await_change());
    }
    match desired(&st, &svc) {
        Ok(ips) => {
            let ingress = ingress_for(&ips);
            if current_ingress(&svc) != ingress.as_slice() {
                if !write_ingress(&st, &svc, &ingress).await? {
                    return Ok(Action::await_change());
                }
                let list = ips.iter().map(IpAddr::to_string).collect::<Vec<_>>().join(", ");
                info!(addresses = %list, "load-balancer addresses written");
                let (reason, message) = match &st.source {
                    Source::Pool(_) => ("IPAllocated", format!("Assigned IP {list} from the load-balancer pool")),
                    Source::Nodes(_) => ("UpdatedLoadBalancer", format!("Load balancer on the nodes' addresses {list}")),
                };
                publish(&st, &svc, EventType::Normal, reason, message).await;
            }
            Ok(Action::await_change())
        }
        Err(why) => {
            if !current_ingress(&svc).is_empty() {
                write_ingress(&st, &svc, &[]).await?;
            }
            info!(reason = %why, "Service stays pending");
            publish(&st, &svc, EventType::Warning, "AllocationFailed", why).await;
            Ok(Action::requeue(PENDING_RETRY))
        }
    }
}

/// Writes `status.loadBalancer.ingress` through the status subresource, on the version
/// of the Service this decision was made from. Whether it was written: a Service that is
/// gone, or changed meanwhile (its new version comes through the watch), is not.
async fn write_ingress(st: &State, svc: &Service, ingress: &[LoadBalancerIngress]) -> Result<bool, ServiceLbError> {
    let api: Api<Service> = Api::namespaced(st.client.clone(), &svc.namespace().unwrap_or_default());
    let ingress = if ingress.is_empty() { serde_json::Value::Null } else { json!(ingress) };
    let patch = json!({
        "metadata": {"resourceVersion": svc.resource_version()},
        "status": {"loadBalancer": {"ingress": ingress}},
    });
    match api.patch_status(&svc.name_any(), &PatchParams::default(), &Patch::Merge(&patch)).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {
            debug!(code = s.code, "the Service changed or went before its status was written");
            Ok(false)
        }
        Err(source) => Err(ServiceLbError::WriteStatus { service: key(svc), source }),
    }
}

/// Which kind of Event: `Normal` or `Warning`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EventType {
    Normal,
    Warning,
}

/// Records a core/v1 Event about the Service (what `kubectl describe svc` lists). The
/// same Warning twice in a row is recorded once.
async fn publish(st: &State, svc: &Service, type_: EventType, reason: &str, message: String) {
    let uid = svc.metadata.uid.clone().unwrap_or_default();
    {
        let mut last = lock(&st.last_warning);
        match type_ {
            EventType::Warning => {
                let text = format!("{reason}: {message}");
                if last.get(&uid) == Some(&text) {
                    return;
                }
                last.insert(uid, text);
            }
            EventType::Normal => {
                last.remove(&uid);
            }
        }
    }
    st.recorder.record(&svc.object_ref(&()), &format!("{type_:?}"), reason, &message).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(v: serde_json::Value) -> Arc<Service> {
        Arc::new(serde_json::from_value(v).unwrap_or_else(|e| panic!("{e}")))
    }

    fn lb(name: &str, uid: &str, created: &str, status_ip: Option<&str>) -> Arc<Service> {
        let ingress = status_ip.map(|ip| json!([{"ip": ip}])).unwrap_or(serde_json::Value::Null);
        service(json!({
            "metadata": {"name": name, "namespace": "default", "uid": uid, "creationTimestamp": created},
            "spec": {"type": "LoadBalancer", "ports": [{"port": 80}]},
            "status": {"loadBalancer": {"ingress": ingress}},
        }))
    }

    fn node(name: &str, ready: bool, unschedulable: bool, addresses: &[(&str, &str)]) -> Arc<Node> {
        let addresses: Vec<serde_json::Value> = addresses.iter().map(|(t, a)| json!({"type": t, "address": a})).collect();
        Arc::new(
            serde_json::from_value(json!({
                "metadata": {"name": name},
                "spec": {"unschedulable": unschedulable},
                "status": {
                    "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}],
                    "addresses": addresses,
                },
            }))
            .unwrap_or_else(|e| panic!("{e}")),
        )
    }

    fn ips(list: &[&str]) -> Vec<IpAddr> {
        list.iter().map(|s| s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))).collect()
    }

    #[test]
    fn classes_decide_what_is_handled() {
        let plain = lb("a", "1", "2024-01-01T00:00:00Z", None);
        assert!(handled(&plain));
        let mut ours = (*plain).clone();
        if let Some(spec) = ours.spec.as_mut() {
            spec.load_balancer_class = Some(LOAD_BALANCER_CLASS.into());
        }
        assert!(handled(&ours));
        let mut theirs = ours.clone();
        if let Some(spec) = theirs.spec.as_mut() {
            spec.load_balancer_class = Some("example.com/metal".into());
        }
        assert!(!handled(&theirs));
        let cluster_ip = service(json!({"metadata": {"name": "c"}, "spec": {"type": "ClusterIP"}}));
        assert!(!handled(&cluster_ip));
    }

    #[test]
    fn node_addresses_prefer_external_ips_of_ready_schedulable_nodes_sorted() {
        let nodes = vec![
            node("b", true, false, &[("InternalIP", "10.0.0.12"), ("Hostname", "b")]),
            node("a", true, false, &[("InternalIP", "10.0.0.11"), ("ExternalIP", "203.0.113.5")]),
            node("c", true, false, &[("InternalIP", "10.0.0.2"), ("InternalIP", "fd00::2")]),
            node("down", false, false, &[("InternalIP", "10.0.0.3")]),
            node("cordoned", true, true, &[("InternalIP", "10.0.0.4")]),
            node("dup", true, false, &[("InternalIP", "10.0.0.12")]),
        ];
        assert_eq!(node_addresses(&nodes, &["IPv4".into()]), ips(&["10.0.0.2", "10.0.0.12", "203.0.113.5"]));
        assert_eq!(node_addresses(&nodes, &["IPv6".into()]), ips(&["fd00::2"]));
        assert_eq!(node_addresses(&nodes, &["IPv4".into(), "IPv6".into()]), ips(&["10.0.0.2", "10.0.0.12", "203.0.113.5", "fd00::2"]));
        assert!(node_addresses(&nodes[3..5], &["IPv4".into()]).is_empty());
    }

    #[test]
    fn allocations_are_rebuilt_from_statuses_and_older_services_win_conflicts() {
        let pool = Pool::parse("10.0.0.1-10.0.0.3").unwrap_or_else(|e| panic!("{e}"));
        let mut a = Allocations::new(pool);
        let services = vec![
            lb("young", "u-young", "2024-01-02T00:00:00Z", Some("10.0.0.2")),
            lb("old", "u-old", "2024-01-01T00:00:00Z", Some("10.0.0.2")),
            lb("outside", "u-outside", "2024-01-01T00:00:00Z", Some("192.0.2.1")),
            lb("kept", "u-kept", "2024-01-03T00:00:00Z", Some("10.0.0.3")),
        ];
        sync_allocations(&mut a, &services);
        assert_eq!(a.held_by("u-old"), Some(Ipv4Addr::new(10, 0, 0, 2)));
        assert_eq!(a.held_by("u-young"), None);
        assert_eq!(a.held_by("u-outside"), None);
        assert_eq!(a.held_by("u-kept"), Some(Ipv4Addr::new(10, 0, 0, 3)));
        // The loser of the conflict gets the free address, never the taken one.
        assert_eq!(a.assign(&holder(&services[0]), None), Ok(Ipv4Addr::new(10, 0, 0, 1)));
        // A Service that is gone frees its address on the next sync.
        sync_allocations(&mut a, &services[..2]);
        assert_eq!(a.held_by("u-kept"), None);
        assert_eq!(a.held_by("u-young"), Some(Ipv4Addr::new(10, 0, 0, 1)));
    }

    #[test]
    fn requested_addresses_must_be_ipv4() {
        let mut svc = (*lb("a", "1", "2024-01-01T00:00:00Z", None)).clone();
        assert_eq!(requested_ip(&svc), Ok(None));
        if let Some(spec) = svc.spec.as_mut() {
            spec.load_balancer_ip = Some("192.168.1.241".into());
        }
        assert_eq!(requested_ip(&svc), Ok(Some(Ipv4Addr::new(192, 168, 1, 241))));
        if let Some(spec) = svc.spec.as_mut() {
            spec.load_balancer_ip = Some("fd00::1".into());
        }
        assert!(requested_ip(&svc).is_err());
    }

    #[test]
    fn ingress_points_carry_ip_mode_vip() {
        let ingress = ingress_for(&ips(&["192.168.1.240"]));
        let v = serde_json::to_value(&ingress).unwrap_or_default();
        assert_eq!(v, json!([{"ip": "192.168.1.240", "ipMode": "VIP"}]));
    }
}
