//! The in-memory index the DNS answers come from: Services and the EndpointSlices of each
//! Service, reduced to what DNS needs (cluster IPs, named ports, ready endpoint addresses
//! and hostnames), keyed by lower-cased names so that lookups are case-insensitive.
//!
//! The watchers ([`crate::watch`]) feed it from the API; tests build it by hand.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;

/// The label that ties an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// A namespaced name, lower-cased.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key {
    pub namespace: String,
    pub name: String,
}

impl Key {
    pub fn new(namespace: &str, name: &str) -> Key {
        Key { namespace: namespace.to_ascii_lowercase(), name: name.to_ascii_lowercase() }
    }
}

/// What a Service name resolves to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServiceKind {
    /// A virtual IP per family (`spec.clusterIPs`); empty while none is allocated.
    ClusterIp(Vec<IpAddr>),
    /// `clusterIP: None`: the name resolves to the ready endpoints.
    Headless,
    /// `type: ExternalName`: a CNAME to this name.
    ExternalName(String),
}

/// A port with a name, as SRV records need it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamedPort {
    /// Lower-cased port name.
    pub name: String,
    /// Lower-cased protocol: `tcp`, `udp` or `sctp`.
    pub protocol: String,
    pub port: u16,
}

/// A Service reduced to what DNS needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceEntry {
    pub kind: ServiceKind,
    /// The Service's named ports (`spec.ports[].port`); unnamed ports have no SRV record.
    pub ports: Vec<NamedPort>,
    /// `spec.publishNotReadyAddresses`: not-ready endpoints are published too.
    pub publish_not_ready: bool,
}

/// One endpoint of an EndpointSlice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointEntry {
    pub addresses: Vec<IpAddr>,
    /// Lower-cased `hostname` (StatefulSet pods and Services with `subdomain`).
    pub hostname: Option<String>,
    /// `conditions.ready`, where unset means ready (as the API documents).
    pub ready: bool,
}

impl EndpointEntry {
    /// The DNS label of this endpoint under its Service: its hostname, else its first
    /// address with dashes (`10-42-0-5`, `fd00--5`), as CoreDNS names SRV targets.
    pub fn label(&self) -> Option<String> {
        match &self.hostname {
            Some(h) => Some(h.clone()),
            None => self.addresses.first().map(dashed),
        }
    }
}

/// An IP address written as a DNS label: dots and colons become dashes.
pub fn dashed(ip: &IpAddr) -> String {
    ip.to_string().replace(['.', ':'], "-")
}

/// An EndpointSlice reduced to what DNS needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SliceEntry {
    /// The Service it belongs to (its `kubernetes.io/service-name` label), lower-cased.
    pub service: String,
    /// The slice's named ports (the endpoints' ports, which headless SRV records carry).
    pub ports: Vec<NamedPort>,
    pub endpoints: Vec<EndpointEntry>,
}

/// Services and EndpointSlices, with the slices grouped by Service.
#[derive(Debug, Clone)]
pub struct Index {
    services: BTreeMap<Key, ServiceEntry>,
    /// By (namespace, slice name).
    slices: BTreeMap<Key, SliceEntry>,
    /// (namespace, service name) → names of its slices.
    slices_by_service: BTreeMap<Key, BTreeSet<String>>,
    services_listed: bool,
    slices_listed: bool,
    serial: u32,
}

impl Default for Index {
    fn default() -> Index {
        Index::new()
    }
}

impl Index {
    pub fn new() -> Index {
        Index {
            services: BTreeMap::new(),
            slices: BTreeMap::new(),
            slices_by_service: BTreeMap::new(),
            services_listed: false,
            slices_listed: false,
            serial: unix_seconds(),
        }
    }

    /// True once both the Services and the EndpointSlices have been listed once.
    pub fn is_synced(&self) -> bool {
        self.services_listed && self.slices_listed
    }

    /// Marks both lists as complete (for indexes built by hand).
    pub fn mark_synced(&mut self) {
        self.services_listed = true;
        self.slices_listed = true;
    }

    /// The SOA serial: seconds since the epoch of the last change, strictly increasing.
    pub fn serial(&self) -> u32 {
        self.serial
    }

    fn changed(&mut self) {
        self.serial = self.serial.wrapping_add(1).max(unix_seconds());
    }

    pub fn service(&self, namespace: &str, name: &str) -> Option<&ServiceEntry> {
        self.services.get(&Key::new(namespace, name))
    }

    pub fn services(&self) -> impl Iterator<Item = (&Key, &ServiceEntry)> {
        self.services.iter()
    }

    /// Whether any Service lives in `namespace` (so that `<ns>.svc.<zone>` exists).
    pub fn namespace_has_services(&self, namespace: &str) -> bool {
        let ns = namespace.to_ascii_lowercase();
        let from = Key { namespace: ns.clone(), name: String::new() };
        self.services.range(from..).next().is_some_and(|(k, _)| k.namespace == ns)
    }

    /// The slices of a Service.
    pub fn slices_of(&self, namespace: &str, service: &str) -> impl Iterator<Item = &SliceEntry> {
        let ns = namespace.to_ascii_lowercase();
        self.slices_by_service
            .get(&Key::new(namespace, service))
            .into_iter()
            .flatten()
            .filter_map(move |slice| self.slices.get(&Key { namespace: ns.clone(), name: slice.clone() }))
    }

    /// Adds or replaces a Service entry.
    pub fn insert_service(&mut self, key: Key, entry: ServiceEntry) {
        self.services.insert(key, entry);
        self.changed();
    }

    pub fn remove_service(&mut self, key: &Key) {
        if self.services.remove(key).is_some() {
            self.changed();
        }
    }

    /// Adds or replaces an EndpointSlice entry; `key` is (namespace, slice name).
    pub fn insert_slice(&mut self, key: Key, entry: SliceEntry) {
        self.unlink_slice(&key);
        self.slices_by_service
            .entry(Key { namespace: key.namespace.clone(), name: entry.service.clone() })
            .or_default()
            .insert(key.name.clone());
        self.slices.insert(key, entry);
        self.changed();
    }

    pub fn remove_slice(&mut self, key: &Key) {
        if self.unlink_slice(key).is_some() {
            self.changed();
        }
    }

    fn unlink_slice(&mut self, key: &Key) -> Option<SliceEntry> {
        let old = self.slices.remove(key)?;
        let owner = Key { namespace: key.namespace.clone(), name: old.service.clone() };
        if let Some(names) = self.slices_by_service.get_mut(&owner) {
            names.remove(&key.name);
            if names.is_empty() {
                self.slices_by_service.remove(&owner);
            }
        }
        Some(old)
    }

    /// Adds or replaces a Service from the API.
    pub fn apply_service(&mut self, service: &Service) {
        if let Some((key, entry)) = service_entry(service) {
            self.insert_service(key, entry);
        }
    }

    pub fn delete_service(&mut self, service: &Service) {
        if let Some(key) = object_key(&service.metadata) {
            self.remove_service(&key);
        }
    }

    /// Replaces every Service with a fresh list (a watcher's initial list or relist).
    pub fn replace_services(&mut self, services: &[Service]) {
        self.services = services.iter().filter_map(service_entry).collect();
        self.services_listed = true;
        self.changed();
    }

    /// Adds or replaces an EndpointSlice from the API; one without a Service label is
    /// dropped (it cannot be named in DNS).
    pub fn apply_slice(&mut self, slice: &EndpointSlice) {
        let Some(key) = object_key(&slice.metadata) else { return };
        match slice_entry(slice) {
            Some(entry) => self.insert_slice(key, entry),
            None => self.remove_slice(&key),
        }
    }

    pub fn delete_slice(&mut self, slice: &EndpointSlice) {
        if let Some(key) = object_key(&slice.metadata) {
            self.remove_slice(&key);
        }
    }

    /// Replaces every EndpointSlice with a fresh list.
    pub fn replace_slices(&mut self, slices: &[EndpointSlice]) {
        self.slices.clear();
        self.slices_by_service.clear();
        for slice in slices {
            self.apply_slice(slice);
        }
        self.slices_listed = true;
        self.changed();
    }
}

fn unix_seconds() -> u32 {
    let secs = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    u32::try_from(secs).unwrap_or(u32::MAX)
}

fn object_key(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> Option<Key> {
    Some(Key::new(meta.namespace.as_deref()?, meta.name.as_deref()?))
}

fn named_port(name: Option<&str>, protocol: Option<&str>, port: Option<i32>) -> Option<NamedPort> {
    let name = name.filter(|n| !n.is_empty())?;
    Some(NamedPort {
        name: name.to_ascii_lowercase(),
        protocol: protocol.unwrap_or("TCP").to_ascii_lowercase(),
        port: u16::try_from(port?).ok()?,
    })
}

/// A Service as an index entry, or `None` if it has no name or namespace.
pub fn service_entry(service: &Service) -> Option<(Key, ServiceEntry)> {
    let key = object_key(&service.metadata)?;
    let spec = service.spec.clone().unwrap_or_default();
    let kind = if spec.type_.as_deref() == Some("ExternalName") {
        ServiceKind::ExternalName(spec.external_name.unwrap_or_default().trim_end_matches('.').to_ascii_lowercase())
    } else if spec.cluster_ip.as_deref() == Some("None") {
        ServiceKind::Headless
    } else {
        let listed = spec.cluster_ips.unwrap_or_default();
        let ips = if listed.is_empty() { spec.cluster_ip.into_iter().collect() } else { listed };
        ServiceKind::ClusterIp(ips.iter().filter_map(|ip| ip.parse().ok()).collect())
    };
    let ports = spec
        .ports
        .unwrap_or_default()
        .iter()
        .filter_map(|p| named_port(p.name.as_deref(), p.protocol.as_deref(), Some(p.port)))
        .collect();
    Some((key, ServiceEntry { kind, ports, publish_not_ready: spec.publish_not_ready_addresses.unwrap_or(false) }))
}

/// An EndpointSlice as an index entry, or `None` without a `kubernetes.io/service-name`
/// label. Addresses that are not IPs (`addressType: FQDN`) are left out.
pub fn slice_entry(slice: &EndpointSlice) -> Option<SliceEntry> {
    let service = slice.metadata.labels.as_ref()?.get(SERVICE_NAME_LABEL)?.to_ascii_lowercase();
    let ports = slice
        .ports
        .iter()
        .flatten()
        .filter_map(|p| named_port(p.name.as_deref(), p.protocol.as_deref(), p.port))
        .collect();
    let endpoints = slice
        .endpoints
        .iter()
        .map(|e| EndpointEntry {
            addresses: e.addresses.iter().filter_map(|a| a.parse().ok()).collect(),
            hostname: e.hostname.as_ref().filter(|h| !h.is_empty()).map(|h| h.to_ascii_lowercase()),
            ready: e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true),
        })
        .filter(|e| !e.addresses.is_empty())
        .collect();
    Some(SliceEntry { service, ports, endpoints })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(json: serde_json::Value) -> Service {
        serde_json::from_value(json).unwrap()
    }

    fn slice(json: serde_json::Value) -> EndpointSlice {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn cluster_ip_service_keeps_both_families_and_named_ports_only() {
        let (key, entry) = service_entry(&service(serde_json::json!({
            "metadata": {"name": "Web", "namespace": "Default"},
            "spec": {"clusterIP": "10.43.0.10", "clusterIPs": ["10.43.0.10", "fd00::10"],
                     "ports": [{"name": "HTTP", "port": 80}, {"port": 81}, {"name": "dns", "port": 53, "protocol": "UDP"}]}
        })))
        .unwrap();
        assert_eq!(key, Key { namespace: "default".into(), name: "web".into() });
        assert_eq!(entry.kind, ServiceKind::ClusterIp(vec!["10.43.0.10".parse().unwrap(), "fd00::10".parse().unwrap()]));
        assert_eq!(
            entry.ports,
            vec![
                NamedPort { name: "http".into(), protocol: "tcp".into(), port: 80 },
                NamedPort { name: "dns".into(), protocol: "udp".into(), port: 53 },
            ]
        );
    }

    #[test]
    fn headless_and_external_name_services() {
        let (_, headless) = service_entry(&service(serde_json::json!({
            "metadata": {"name": "db", "namespace": "a"}, "spec": {"clusterIP": "None", "publishNotReadyAddresses": true}
        })))
        .unwrap();
        assert_eq!(headless.kind, ServiceKind::Headless);
        assert!(headless.publish_not_ready);
        let (_, ext) = service_entry(&service(serde_json::json!({
            "metadata": {"name": "ext", "namespace": "a"}, "spec": {"type": "ExternalName", "externalName": "Example.COM."}
        })))
        .unwrap();
        assert_eq!(ext.kind, ServiceKind::ExternalName("example.com".into()));
    }

    #[test]
    fn slices_group_by_service_and_follow_relabels_and_deletes() {
        let mut index = Index::new();
        let s = |name: &str, svc: &str, ip: &str| {
            slice(serde_json::json!({
                "metadata": {"name": name, "namespace": "ns", "labels": {SERVICE_NAME_LABEL: svc}},
                "addressType": "IPv4",
                "endpoints": [{"addresses": [ip], "hostname": "Pod-0", "conditions": {"ready": false}}, {"addresses": ["not-an-ip"]}],
                "ports": [{"name": "web", "port": 8080, "protocol": "TCP"}]
            }))
        };
        index.apply_slice(&s("a-1", "a", "10.42.0.1"));
        index.apply_slice(&s("a-2", "a", "10.42.0.2"));
        let a: Vec<_> = index.slices_of("NS", "A").collect();
        assert_eq!(a.len(), 2);
        assert_eq!(a[0].endpoints.len(), 1, "an endpoint without IP addresses is dropped");
        assert_eq!(a[0].endpoints[0].hostname.as_deref(), Some("pod-0"));
        assert!(!a[0].endpoints[0].ready);
        assert_eq!(a[0].ports, vec![NamedPort { name: "web".into(), protocol: "tcp".into(), port: 8080 }]);

        index.apply_slice(&s("a-2", "b", "10.42.0.2"));
        assert_eq!(index.slices_of("ns", "a").count(), 1);
        assert_eq!(index.slices_of("ns", "b").count(), 1);
        index.delete_slice(&s("a-1", "a", "10.42.0.1"));
        assert_eq!(index.slices_of("ns", "a").count(), 0);

        index.replace_slices(&[s("c-1", "c", "10.42.0.3")]);
        assert_eq!(index.slices_of("ns", "b").count(), 0);
        assert_eq!(index.slices_of("ns", "c").count(), 1);
    }

    #[test]
    fn unready_unset_means_ready_and_unlabelled_slices_are_ignored() {
        let entry = slice_entry(&slice(serde_json::json!({
            "metadata": {"name": "x", "namespace": "ns", "labels": {SERVICE_NAME_LABEL: "x"}},
            "addressType": "IPv4", "endpoints": [{"addresses": ["10.42.0.9"]}]
        })))
        .unwrap();
        assert!(entry.endpoints[0].ready);
        assert!(slice_entry(&slice(serde_json::json!({
            "metadata": {"name": "y", "namespace": "ns"}, "addressType": "IPv4", "endpoints": []
        })))
        .is_none());
    }

    #[test]
    fn sync_needs_both_lists_and_serial_increases() {
        let mut index = Index::new();
        let before = index.serial();
        index.replace_services(&[]);
        assert!(!index.is_synced());
        index.replace_slices(&[]);
        assert!(index.is_synced());
        assert!(index.serial() > before);
    }

    #[test]
    fn namespace_presence() {
        let mut index = Index::new();
        let entry = ServiceEntry { kind: ServiceKind::Headless, ports: vec![], publish_not_ready: false };
        index.insert_service(Key::new("b", "x"), entry);
        assert!(index.namespace_has_services("B"));
        assert!(!index.namespace_has_services("a"));
        assert!(!index.namespace_has_services("c"));
    }

    #[test]
    fn endpoint_labels() {
        let e = EndpointEntry { addresses: vec!["fd00::5".parse().unwrap()], hostname: None, ready: true };
        assert_eq!(e.label().as_deref(), Some("fd00--5"));
        let e = EndpointEntry { addresses: vec!["10.1.2.3".parse().unwrap()], hostname: Some("web-0".into()), ready: true };
        assert_eq!(e.label().as_deref(), Some("web-0"));
    }
}
