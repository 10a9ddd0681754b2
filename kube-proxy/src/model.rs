//! What kube-proxy needs from the API, flattened: one [`ServicePort`] per port of each
//! proxied Service with the endpoints its EndpointSlices list for that port, and one
//! [`HostPort`] per `hostPort` of the pods on this node. Pure functions of the objects,
//! so the ruleset built from them can be tested without a cluster.

use std::collections::BTreeSet;
use std::fmt;
use std::net::Ipv4Addr;

use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;

/// The label that ties an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    /// Kubernetes' spelling (`TCP`); absent means TCP.
    pub fn parse(protocol: Option<&str>) -> Option<Protocol> {
        match protocol.unwrap_or("TCP") {
            "TCP" => Some(Protocol::Tcp),
            "UDP" => Some(Protocol::Udp),
            "SCTP" => Some(Protocol::Sctp),
            _ => None,
        }
    }

    /// nftables' spelling (`tcp`).
    pub fn nft(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.nft())
    }
}

/// `namespace/name/protocol/port`, where port is the port's name or, for an unnamed
/// port, its number: stable while the Service keeps the port, unique within the cluster.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServicePortName {
    pub namespace: String,
    pub name: String,
    pub protocol: Protocol,
    pub port: String,
}

impl fmt::Display for ServicePortName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}/{}", self.namespace, self.name, self.protocol, self.port)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Endpoint {
    pub ip: Ipv4Addr,
    pub port: u16,
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
    /// On this node (the slice's `nodeName` is ours).
    pub local: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePort {
    pub name: ServicePortName,
    pub cluster_ips: Vec<Ipv4Addr>,
    pub port: u16,
    pub node_port: Option<u16>,
    pub external_ips: Vec<Ipv4Addr>,
    pub load_balancer_ips: Vec<Ipv4Addr>,
    /// `sessionAffinity: ClientIP` with its timeout in seconds.
    pub affinity_timeout: Option<u32>,
    /// `internalTrafficPolicy: Local`.
    pub internal_local: bool,
    /// `externalTrafficPolicy: Local` (only meaningful with external addresses).
    pub external_local: bool,
    pub endpoints: Vec<Endpoint>,
}

impl ServicePort {
    /// Endpoints that take traffic arriving at the ClusterIP.
    pub fn cluster_endpoints(&self) -> Vec<&Endpoint> {
        usable(self.endpoints.iter().filter(|e| !self.internal_local || e.local))
    }

    /// Endpoints that take traffic arriving at a NodePort, external IP or load-balancer IP.
    pub fn external_endpoints(&self) -> Vec<&Endpoint> {
        usable(self.endpoints.iter().filter(|e| !self.external_local || e.local))
    }

    /// Whether the Service is reachable from outside the cluster network at all.
    pub fn has_external_addresses(&self) -> bool {
        self.node_port.is_some() || !self.external_ips.is_empty() || !self.load_balancer_ips.is_empty()
    }
}

/// Kubernetes' rule: ready endpoints; when none is ready, the ones still serving while
/// terminating, so that a rolling restart does not drop traffic.
fn usable<'a>(endpoints: impl Iterator<Item = &'a Endpoint> + Clone) -> Vec<&'a Endpoint> {
    let ready: Vec<&Endpoint> = endpoints.clone().filter(|e| e.ready).collect();
    if !ready.is_empty() {
        return ready;
    }
    endpoints.filter(|e| e.serving && e.terminating).collect()
}

/// The ports of `service` that kube-proxy programs, with the endpoints that `slices` (the
/// Service's EndpointSlices) give each. Headless and ExternalName Services have none.
pub fn service_ports(service: &Service, slices: &[&EndpointSlice], node_name: &str) -> Vec<ServicePort> {
    let Some(spec) = &service.spec else { return Vec::new() };
    if spec.type_.as_deref() == Some("ExternalName") {
        return Vec::new();
    }
    let cluster_ips: Vec<Ipv4Addr> = match &spec.cluster_ips {
        Some(ips) if !ips.is_empty() => ips.iter().filter_map(|ip| ip.parse().ok()).collect(),
        _ => spec.cluster_ip.iter().filter_map(|ip| ip.parse().ok()).collect(),
    };
    if cluster_ips.is_empty() {
        return Vec::new();
    }
    let namespace = service.metadata.namespace.clone().unwrap_or_default();
    let name = service.metadata.name.clone().unwrap_or_default();
    let external_ips: Vec<Ipv4Addr> =
        spec.external_ips.iter().flatten().filter_map(|ip| ip.parse().ok()).collect();
    let load_balancer_ips: Vec<Ipv4Addr> = if spec.type_.as_deref() == Some("LoadBalancer") {
        let ingress = service.status.as_ref().and_then(|s| s.load_balancer.as_ref()).and_then(|lb| lb.ingress.as_ref());
        ingress.into_iter().flatten().filter_map(|i| i.ip.as_deref()?.parse().ok()).collect()
    } else {
        Vec::new()
    };
    let affinity_timeout = (spec.session_affinity.as_deref() == Some("ClientIP")).then(|| {
        let config = spec.session_affinity_config.as_ref().and_then(|c| c.client_ip.as_ref());
        config.and_then(|c| c.timeout_seconds).and_then(|t| u32::try_from(t).ok()).unwrap_or(10800)
    });
    let internal_local = spec.internal_traffic_policy.as_deref() == Some("Local");
    let external_local = matches!(spec.external_traffic_policy.as_deref(), Some("Local"));
    let node_ports_apply = matches!(spec.type_.as_deref(), Some("NodePort") | Some("LoadBalancer"));

    let mut ports = Vec::new();
    for port in spec.ports.iter().flatten() {
        let Some(protocol) = Protocol::parse(port.protocol.as_deref()) else { continue };
        let Ok(number) = u16::try_from(port.port) else { continue };
        let port_name = port.name.clone().unwrap_or_default();
        let name = ServicePortName {
            namespace: namespace.clone(),
            name: name.clone(),
            protocol,
            port: if port_name.is_empty() { number.to_string() } else { port_name.clone() },
        };
        let node_port = if node_ports_apply { port.node_port.and_then(|p| u16::try_from(p).ok()).filter(|p| *p != 0) } else { None };
        ports.push(ServicePort {
            name,
            cluster_ips: cluster_ips.clone(),
            port: number,
            node_port,
            external_ips: external_ips.clone(),
            load_balancer_ips: load_balancer_ips.clone(),
            affinity_timeout,
            internal_local,
            external_local,
            endpoints: endpoints_for(slices, &port_name, protocol, node_name),
        });
    }
    ports
}

/// The distinct IPv4 endpoints the slices give the port named `port_name`.
fn endpoints_for(slices: &[&EndpointSlice], port_name: &str, protocol: Protocol, node_name: &str) -> Vec<Endpoint> {
    let mut found = BTreeSet::new();
    for slice in slices {
        if slice.address_type != "IPv4" {
            continue;
        }
        let slice_port = slice.ports.iter().flatten().find(|p| {
            p.name.as_deref().unwrap_or("") == port_name && Protocol::parse(p.protocol.as_deref()) == Some(protocol)
        });
        let Some(port) = slice_port.and_then(|p| p.port).and_then(|p| u16::try_from(p).ok()) else { continue };
        for endpoint in &slice.endpoints {
            let Some(ip) = endpoint.addresses.first().and_then(|a| a.parse::<Ipv4Addr>().ok()) else { continue };
            let conditions = endpoint.conditions.as_ref();
            // Absent conditions mean ready (and so serving), as the API documents.
            let ready = conditions.and_then(|c| c.ready).unwrap_or(true);
            let serving = conditions.and_then(|c| c.serving).unwrap_or(ready);
            let terminating = conditions.and_then(|c| c.terminating).unwrap_or(false);
            let local = endpoint.node_name.as_deref() == Some(node_name);
            found.insert(Endpoint { ip, port, ready, serving, terminating, local });
        }
    }
    // One endpoint per address and port: a pod listed in two slices during a handover
    // keeps the most available of its conditions.
    let mut endpoints: Vec<Endpoint> = Vec::new();
    for e in found.into_iter().rev() {
        if !endpoints.iter().any(|o| o.ip == e.ip && o.port == e.port) {
            endpoints.push(e);
        }
    }
    endpoints.sort();
    endpoints
}

/// A `hostPort` of a running pod on this node (the CNI portmap plugin's job in Kubernetes).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct HostPort {
    pub namespace: String,
    pub pod: String,
    pub protocol: Protocol,
    pub host_port: u16,
    /// `hostIP`, when the port is bound to one address of the node.
    pub host_ip: Option<Ipv4Addr>,
    pub pod_ip: Ipv4Addr,
    pub container_port: u16,
}

/// The host ports of `pod` once it has an IP on the pod network.
pub fn host_ports(pod: &Pod) -> Vec<HostPort> {
    let Some(spec) = &pod.spec else { return Vec::new() };
    if spec.host_network == Some(true) {
        return Vec::new();
    }
    let status = pod.status.as_ref();
    if matches!(status.and_then(|s| s.phase.as_deref()), Some("Succeeded") | Some("Failed")) {
        return Vec::new();
    }
    let Some(pod_ip) = status.and_then(|s| s.pod_ip.as_deref()).and_then(|ip| ip.parse().ok()) else { return Vec::new() };
    let mut ports = Vec::new();
    for container in spec.containers.iter().chain(spec.init_containers.iter().flatten()) {
        for port in container.ports.iter().flatten() {
            let Some(host_port) = port.host_port.and_then(|p| u16::try_from(p).ok()).filter(|p| *p != 0) else { continue };
            let Some(protocol) = Protocol::parse(port.protocol.as_deref()) else { continue };
            let Ok(container_port) = u16::try_from(port.container_port) else { continue };
            let host_ip = port.host_ip.as_deref().and_then(|ip| ip.parse::<Ipv4Addr>().ok()).filter(|ip| !ip.is_unspecified());
            ports.push(HostPort {
                namespace: pod.metadata.namespace.clone().unwrap_or_default(),
                pod: pod.metadata.name.clone().unwrap_or_default(),
                protocol,
                host_port,
                host_ip,
                pod_ip,
                container_port,
            });
        }
    }
    ports
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(value: serde_json::Value) -> Service {
        serde_json::from_value(value).expect("test Service")
    }

    fn slice(value: serde_json::Value) -> EndpointSlice {
        serde_json::from_value(value).expect("test EndpointSlice")
    }

    fn web_slice() -> EndpointSlice {
        slice(serde_json::json!({
            "metadata": {"name": "web-abc", "namespace": "default", "labels": {SERVICE_NAME_LABEL: "web"}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            "endpoints": [
                {"addresses": ["10.42.0.5"], "conditions": {"ready": true}, "nodeName": "n1"},
                {"addresses": ["10.42.0.6"], "conditions": {"ready": false, "serving": true, "terminating": true}, "nodeName": "n2"},
                {"addresses": ["10.42.0.7"], "nodeName": "n2"},
            ]
        }))
    }

    #[test]
    fn ports_carry_addresses_policies_and_endpoints() {
        let svc = service(serde_json::json!({
            "metadata": {"name": "web", "namespace": "default"},
            "spec": {
                "type": "NodePort", "clusterIP": "10.43.0.5", "clusterIPs": ["10.43.0.5"],
                "externalIPs": ["192.0.2.9"], "sessionAffinity": "ClientIP",
                "externalTrafficPolicy": "Local",
                "ports": [{"name": "http", "port": 80, "targetPort": 8080, "nodePort": 30080}, {"port": 53, "protocol": "UDP"}]
            }
        }));
        let ports = service_ports(&svc, &[&web_slice()], "n1");
        assert_eq!(ports.len(), 2);
        let http = &ports[0];
        assert_eq!(http.name.to_string(), "default/web/tcp/http");
        assert_eq!((http.port, http.node_port), (80, Some(30080)));
        assert_eq!(http.external_ips, vec![Ipv4Addr::new(192, 0, 2, 9)]);
        assert_eq!(http.affinity_timeout, Some(10800));
        assert!(http.external_local && !http.internal_local);
        let ready: Vec<String> = http.cluster_endpoints().iter().map(|e| e.ip.to_string()).collect();
        assert_eq!(ready, ["10.42.0.5", "10.42.0.7"], "absent conditions count as ready; terminating ones wait");
        let external: Vec<String> = http.external_endpoints().iter().map(|e| e.ip.to_string()).collect();
        assert_eq!(external, ["10.42.0.5"], "externalTrafficPolicy Local keeps this node's endpoints");
        // The unnamed UDP port matches no slice port, so it has no endpoints.
        assert_eq!(ports[1].name.to_string(), "default/web/udp/53");
        assert!(ports[1].endpoints.is_empty());
    }

    #[test]
    fn terminating_endpoints_serve_only_when_none_is_ready() {
        let mut s = web_slice();
        for e in &mut s.endpoints {
            if e.addresses[0] != "10.42.0.6" {
                e.conditions = Some(serde_json::from_value(serde_json::json!({"ready": false})).expect("conditions"));
            }
        }
        let svc = service(serde_json::json!({
            "metadata": {"name": "web", "namespace": "default"},
            "spec": {"clusterIP": "10.43.0.5", "ports": [{"name": "http", "port": 80}]}
        }));
        let ports = service_ports(&svc, &[&s], "n1");
        let used: Vec<String> = ports[0].cluster_endpoints().iter().map(|e| e.ip.to_string()).collect();
        assert_eq!(used, ["10.42.0.6"]);
    }

    #[test]
    fn headless_external_name_and_cluster_ip_types() {
        let headless = service(serde_json::json!({
            "metadata": {"name": "db", "namespace": "default"},
            "spec": {"clusterIP": "None", "ports": [{"port": 5432}]}
        }));
        assert!(service_ports(&headless, &[], "n1").is_empty());
        let external = service(serde_json::json!({
            "metadata": {"name": "ext", "namespace": "default"},
            "spec": {"type": "ExternalName", "externalName": "example.com"}
        }));
        assert!(service_ports(&external, &[], "n1").is_empty());
        // A ClusterIP Service ignores a stale nodePort.
        let plain = service(serde_json::json!({
            "metadata": {"name": "web", "namespace": "default"},
            "spec": {"type": "ClusterIP", "clusterIP": "10.43.0.5", "ports": [{"port": 80, "nodePort": 30080}]}
        }));
        assert_eq!(service_ports(&plain, &[], "n1")[0].node_port, None);
    }

    #[test]
    fn load_balancer_ingress_becomes_an_address() {
        let lb = service(serde_json::json!({
            "metadata": {"name": "web", "namespace": "default"},
            "spec": {"type": "LoadBalancer", "clusterIP": "10.43.0.5", "ports": [{"port": 80, "nodePort": 31000}]},
            "status": {"loadBalancer": {"ingress": [{"ip": "192.0.2.50"}]}}
        }));
        let ports = service_ports(&lb, &[], "n1");
        assert_eq!(ports[0].load_balancer_ips, vec![Ipv4Addr::new(192, 0, 2, 50)]);
        assert_eq!(ports[0].node_port, Some(31000));
    }

    #[test]
    fn host_ports_of_a_running_pod() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web-0", "namespace": "default"},
            "spec": {"containers": [{"name": "c", "ports": [
                {"containerPort": 80, "hostPort": 8081},
                {"containerPort": 53, "hostPort": 5353, "protocol": "UDP", "hostIP": "192.0.2.1"},
                {"containerPort": 9090}
            ]}]},
            "status": {"phase": "Running", "podIP": "10.42.0.9"}
        }))
        .expect("test Pod");
        let ports = host_ports(&pod);
        assert_eq!(ports.len(), 2);
        assert_eq!((ports[0].host_port, ports[0].container_port, ports[0].host_ip), (8081, 80, None));
        assert_eq!((ports[1].protocol, ports[1].host_ip), (Protocol::Udp, Some(Ipv4Addr::new(192, 0, 2, 1))));
        let mut done = pod.clone();
        done.status.as_mut().expect("status").phase = Some("Succeeded".into());
        assert!(host_ports(&done).is_empty());
    }
}
