//! Names → records, by the Kubernetes DNS-based service discovery specification
//! (kubernetes/dns `docs/specification.md`): Service A/AAAA records, headless Services'
//! endpoints, endpoint hostnames, SRV records for named ports, ExternalName CNAMEs, pod
//! records by dashed IP, the `dns-version` TXT record, and PTR records for what the index
//! knows. A pure function of the [`Index`], so that it is tested without a network.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::rdata::{A, AAAA, CNAME, PTR, SOA, SRV, TXT};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use hickory_proto::ProtoError;

use crate::index::{dashed, EndpointEntry, Index, ServiceEntry, ServiceKind};

/// The schema version the `dns-version.<zone>` TXT record announces.
pub const SCHEMA_VERSION: &str = "1.1.0";

/// CNAMEs followed inside the cluster domain before giving up (ExternalName Services
/// pointing at each other).
const MAX_CNAME_CHAIN: usize = 8;

#[derive(Debug, thiserror::Error)]
pub enum ZoneError {
    #[error("parsing the cluster domain {domain:?}")]
    ParseDomain {
        domain: String,
        #[source]
        source: ProtoError,
    },
    #[error("the cluster domain must not be the root")]
    RootDomain,
}

/// The cluster domain (`cluster.local`) and the TTL of the records in it.
#[derive(Debug, Clone)]
pub struct Zone {
    name: Name,
    /// Lower-cased labels, leftmost first.
    labels: Vec<String>,
    /// The zone as text with the trailing dot, for building names under it.
    text: String,
    ttl: u32,
}

impl Zone {
    pub fn new(domain: &str, ttl: u32) -> Result<Zone, ZoneError> {
        let trimmed = domain.trim().trim_end_matches('.').to_ascii_lowercase();
        if trimmed.is_empty() {
            return Err(ZoneError::RootDomain);
        }
        let text = format!("{trimmed}.");
        let name = Name::from_ascii(&text).map_err(|source| ZoneError::ParseDomain { domain: domain.to_string(), source })?;
        let labels = lower_labels(&name);
        Ok(Zone { name, labels, text, ttl })
    }

    /// The zone apex, fully qualified.
    pub fn name(&self) -> &Name {
        &self.name
    }

    pub fn ttl(&self) -> u32 {
        self.ttl
    }

    /// The lower-cased labels of `name` below the zone, leftmost first, or `None` when
    /// `name` is not in the zone.
    pub fn relative_labels(&self, name: &Name) -> Option<Vec<String>> {
        let labels = lower_labels(name);
        let cut = labels.len().checked_sub(self.labels.len())?;
        (labels[cut..] == self.labels[..]).then(|| labels[..cut].to_vec())
    }

    pub fn contains(&self, name: &Name) -> bool {
        self.relative_labels(name).is_some()
    }

    /// `labels` (leftmost first) under the zone, e.g. `["web", "default", "svc"]`.
    pub fn name_of(&self, labels: &[&str]) -> Option<Name> {
        Name::from_ascii(format!("{}.{}", labels.join("."), self.text)).ok()
    }

    /// The zone's SOA record, which negative answers carry in their authority section.
    pub fn soa(&self, serial: u32) -> Record {
        let mname = self.name_of(&["ns", "dns"]).unwrap_or_else(|| self.name.clone());
        let rname = self.name_of(&["hostmaster"]).unwrap_or_else(|| self.name.clone());
        let soa = SOA::new(mname, rname, serial, 7200, 1800, 86400, self.ttl);
        Record::from_rdata(self.name.clone(), self.ttl, RData::SOA(soa))
    }
}

fn lower_labels(name: &Name) -> Vec<String> {
    name.iter().map(|l| String::from_utf8_lossy(l).to_ascii_lowercase()).collect()
}

/// What to do with a query.
#[derive(Debug, Clone, PartialEq)]
pub enum Resolution {
    /// Not ours: ask the upstream resolvers.
    Forward,
    /// Answered from the index.
    Authoritative(Answer),
}

/// An authoritative answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    /// `NoError` (with or without records), `NXDomain`, or `ServFail` for a CNAME loop.
    pub rcode: ResponseCode,
    pub answers: Vec<Record>,
    /// The zone's SOA on negative answers.
    pub authorities: Vec<Record>,
    pub additionals: Vec<Record>,
    /// A CNAME chain that left the cluster domain ends here; the caller resolves this
    /// name upstream for the same type and appends what it finds.
    pub external_target: Option<Name>,
}

impl Answer {
    fn new() -> Answer {
        Answer {
            rcode: ResponseCode::NoError,
            answers: vec![],
            authorities: vec![],
            additionals: vec![],
            external_target: None,
        }
    }
}

/// The outcome of one name lookup, before CNAMEs are followed.
enum Found {
    Records { answers: Vec<Record>, additionals: Vec<Record> },
    Alias(Name),
    NoData,
    NxDomain,
}

impl Found {
    fn answers(answers: Vec<Record>) -> Found {
        if answers.is_empty() {
            Found::NoData
        } else {
            Found::Records { answers, additionals: vec![] }
        }
    }
}

/// Resolves `qname`/`qtype`: names in the zone from the index (never forwarded), reverse
/// names of addresses the index knows as PTRs, everything else [`Resolution::Forward`].
pub fn resolve(index: &Index, zone: &Zone, qname: &Name, qtype: RecordType) -> Resolution {
    if zone.contains(qname) {
        return Resolution::Authoritative(resolve_in_zone(index, zone, qname, qtype));
    }
    match reverse(index, zone, qname, qtype) {
        Some(answer) => Resolution::Authoritative(answer),
        None => Resolution::Forward,
    }
}

/// Whether `name` is under `in-addr.arpa.` or `ip6.arpa.` (names [`resolve`] may answer
/// outside the zone).
pub fn is_reverse_name(name: &Name) -> bool {
    let labels = lower_labels(name);
    matches!(labels.as_slice(), [.., second, last] if last == "arpa" && (second == "in-addr" || second == "ip6"))
}

fn resolve_in_zone(index: &Index, zone: &Zone, qname: &Name, qtype: RecordType) -> Answer {
    let mut answer = Answer::new();
    let mut name = qname.clone();
    for _ in 0..MAX_CNAME_CHAIN {
        let Some(relative) = zone.relative_labels(&name) else {
            // An ExternalName pointed outside the cluster domain.
            if qtype != RecordType::CNAME {
                answer.external_target = Some(name);
            }
            return answer;
        };
        match lookup(index, zone, &name, &relative, qtype) {
            Found::Records { answers, additionals } => {
                answer.answers.extend(answers);
                answer.additionals.extend(additionals);
                return answer;
            }
            Found::Alias(target) => {
                answer.answers.push(Record::from_rdata(name.clone(), zone.ttl, RData::CNAME(CNAME(target.clone()))));
                if qtype == RecordType::CNAME {
                    return answer;
                }
                name = target;
            }
            Found::NoData => {
                answer.authorities.push(zone.soa(index.serial()));
                return answer;
            }
            Found::NxDomain => {
                answer.rcode = ResponseCode::NXDomain;
                answer.authorities.push(zone.soa(index.serial()));
                return answer;
            }
        }
    }
    // A CNAME loop among ExternalName Services.
    answer.rcode = ResponseCode::ServFail;
    answer
}

fn lookup(index: &Index, zone: &Zone, owner: &Name, relative: &[String], qtype: RecordType) -> Found {
    let labels: Vec<&str> = relative.iter().map(String::as_str).collect();
    match labels.as_slice() {
        [] => match qtype {
            RecordType::SOA | RecordType::ANY => Found::answers(vec![zone.soa(index.serial())]),
            _ => Found::NoData,
        },
        ["dns-version"] => match qtype {
            RecordType::TXT | RecordType::ANY => {
                let txt = RData::TXT(TXT::new(vec![SCHEMA_VERSION.to_string()]));
                Found::answers(vec![Record::from_rdata(owner.clone(), zone.ttl, txt)])
            }
            _ => Found::NoData,
        },
        ["svc"] | ["pod"] | [_, "pod"] => Found::NoData,
        [ns, "svc"] => {
            if index.namespace_has_services(ns) {
                Found::NoData
            } else {
                Found::NxDomain
            }
        }
        [service, ns, "svc"] => service_records(index, zone, owner, ns, service, qtype),
        [first, service, ns, "svc"] => match first.strip_prefix('_') {
            Some(proto) => protocol_node(index, ns, service, proto),
            None => endpoint_records(index, zone, owner, ns, service, first, qtype),
        },
        [port, proto, service, ns, "svc"] => match (port.strip_prefix('_'), proto.strip_prefix('_')) {
            (Some(port), Some(proto)) => srv_records(index, zone, owner, ns, service, port, proto, qtype),
            _ => Found::NxDomain,
        },
        [ip, _ns, "pod"] => match parse_dashed(ip) {
            Some(ip) => Found::answers(address_records(owner, zone.ttl, &[ip], qtype)),
            None => Found::NxDomain,
        },
        _ => Found::NxDomain,
    }
}

/// `<service>.<ns>.svc.<zone>`.
fn service_records(index: &Index, zone: &Zone, owner: &Name, ns: &str, name: &str, qtype: RecordType) -> Found {
    let Some(service) = index.service(ns, name) else { return Found::NxDomain };
    match &service.kind {
        ServiceKind::ExternalName(target) => match Name::from_ascii(format!("{target}.")) {
            Ok(target) if !target.is_root() => Found::Alias(target),
            _ => Found::NoData,
        },
        ServiceKind::ClusterIp(ips) => Found::answers(address_records(owner, zone.ttl, ips, qtype)),
        ServiceKind::Headless => {
            let ips: BTreeSet<IpAddr> =
                published_endpoints(index, ns, name, service).flat_map(|(_, e)| e.addresses.iter().copied()).collect();
            Found::answers(address_records(owner, zone.ttl, &ips.into_iter().collect::<Vec<_>>(), qtype))
        }
    }
}

/// `_<proto>.<service>.<ns>.svc.<zone>`: an empty non-terminal when the Service has a
/// named port of that protocol.
fn protocol_node(index: &Index, ns: &str, name: &str, proto: &str) -> Found {
    let Some(service) = index.service(ns, name) else { return Found::NxDomain };
    let in_service = service.ports.iter().any(|p| p.protocol == proto);
    let in_slices = index.slices_of(ns, name).any(|s| s.ports.iter().any(|p| p.protocol == proto));
    if in_service || in_slices {
        Found::NoData
    } else {
        Found::NxDomain
    }
}

/// `<hostname>.<service>.<ns>.svc.<zone>` of a headless Service's endpoint (or its
/// dashed address when it has no hostname, the SRV target name).
fn endpoint_records(
    index: &Index,
    zone: &Zone,
    owner: &Name,
    ns: &str,
    name: &str,
    label: &str,
    qtype: RecordType,
) -> Found {
    let Some(service) = index.service(ns, name) else { return Found::NxDomain };
    if service.kind != ServiceKind::Headless {
        return Found::NxDomain;
    }
    let matching = |e: &EndpointEntry| match &e.hostname {
        Some(hostname) => hostname == label,
        None => e.addresses.iter().any(|ip| dashed(ip) == label),
    };
    let ips: BTreeSet<IpAddr> = published_endpoints(index, ns, name, service)
        .filter(|(_, e)| matching(e))
        .flat_map(|(_, e)| e.addresses.iter().copied())
        .collect();
    if ips.is_empty() {
        return Found::NxDomain;
    }
    Found::answers(address_records(owner, zone.ttl, &ips.into_iter().collect::<Vec<_>>(), qtype))
}

/// `_<port>._<proto>.<service>.<ns>.svc.<zone>`: for a ClusterIP Service one SRV record
/// with the Service's name and port; for a headless Service one per published endpoint,
/// named by its hostname, with the endpoint's port. Targets' addresses go in the
/// additional section.
#[allow(clippy::too_many_arguments)]
fn srv_records(
    index: &Index,
    zone: &Zone,
    owner: &Name,
    ns: &str,
    name: &str,
    port_name: &str,
    proto: &str,
    qtype: RecordType,
) -> Found {
    let Some(service) = index.service(ns, name) else { return Found::NxDomain };
    let declared = service.ports.iter().find(|p| p.name == port_name && p.protocol == proto);
    // (target, port, target addresses)
    let mut targets: Vec<(Name, u16, Vec<IpAddr>)> = vec![];
    match &service.kind {
        ServiceKind::ExternalName(_) => return Found::NxDomain,
        ServiceKind::ClusterIp(ips) => {
            let Some(port) = declared else { return Found::NxDomain };
            if let Some(target) = zone.name_of(&[name, ns, "svc"]) {
                targets.push((target, port.port, ips.clone()));
            }
        }
        ServiceKind::Headless => {
            for slice in index.slices_of(ns, name) {
                let Some(port) = slice.ports.iter().find(|p| p.name == port_name && p.protocol == proto) else { continue };
                for endpoint in slice.endpoints.iter().filter(|e| e.ready || service.publish_not_ready) {
                    let Some(label) = endpoint.label() else { continue };
                    if let Some(target) = zone.name_of(&[&label, name, ns, "svc"]) {
                        targets.push((target, port.port, endpoint.addresses.clone()));
                    }
                }
            }
            if targets.is_empty() && declared.is_none() {
                return Found::NxDomain;
            }
        }
    }
    if !matches!(qtype, RecordType::SRV | RecordType::ANY) {
        return Found::NoData;
    }
    let weight = u16::try_from(100 / targets.len().max(1)).unwrap_or(1).max(1);
    let mut answers = vec![];
    let mut additionals = vec![];
    for (target, port, ips) in targets {
        let srv = SRV::new(0, weight, port, target.clone());
        answers.push(Record::from_rdata(owner.clone(), zone.ttl, RData::SRV(srv)));
        additionals.extend(address_records(&target, zone.ttl, &ips, RecordType::ANY));
    }
    match answers.is_empty() {
        true => Found::NoData,
        false => Found::Records { answers, additionals },
    }
}

/// The endpoints of a Service that DNS publishes: ready ones, or all of them with
/// `publishNotReadyAddresses`.
fn published_endpoints<'a>(
    index: &'a Index,
    ns: &str,
    name: &str,
    service: &'a ServiceEntry,
) -> impl Iterator<Item = (&'a crate::index::SliceEntry, &'a EndpointEntry)> + 'a {
    index
        .slices_of(ns, name)
        .flat_map(|s| s.endpoints.iter().map(move |e| (s, e)))
        .filter(move |(_, e)| e.ready || service.publish_not_ready)
}

/// A/AAAA records for `ips` of the family `qtype` asks for (both for ANY).
fn address_records(owner: &Name, ttl: u32, ips: &[IpAddr], qtype: RecordType) -> Vec<Record> {
    ips.iter()
        .filter_map(|ip| match (ip, qtype) {
            (IpAddr::V4(v4), RecordType::A | RecordType::ANY) => Some(RData::A(A(*v4))),
            (IpAddr::V6(v6), RecordType::AAAA | RecordType::ANY) => Some(RData::AAAA(AAAA(*v6))),
            _ => None,
        })
        .map(|rdata| Record::from_rdata(owner.clone(), ttl, rdata))
        .collect()
}

/// `10-42-0-5` → 10.42.0.5, `fd00--5` → fd00::5.
fn parse_dashed(label: &str) -> Option<IpAddr> {
    if let Ok(v4) = label.replace('-', ".").parse::<Ipv4Addr>() {
        return Some(IpAddr::V4(v4));
    }
    label.replace('-', ":").parse::<Ipv6Addr>().ok().map(IpAddr::V6)
}

/// PTR records for a cluster IP (→ the Service's name) or a headless Service's endpoint
/// address (→ its hostname name); `None` for addresses the index does not know.
fn reverse(index: &Index, zone: &Zone, qname: &Name, qtype: RecordType) -> Option<Answer> {
    if !is_reverse_name(qname) {
        return None;
    }
    let net = qname.parse_arpa_name().ok()?;
    let ip = net.addr();
    if net.prefix_len() != net.max_prefix_len() {
        return None;
    }
    let mut targets: BTreeSet<Name> = BTreeSet::new();
    for (key, service) in index.services() {
        match &service.kind {
            ServiceKind::ClusterIp(ips) if ips.contains(&ip) => {
                targets.extend(zone.name_of(&[&key.name, &key.namespace, "svc"]));
            }
            ServiceKind::Headless => {
                for (_, endpoint) in published_endpoints(index, &key.namespace, &key.name, service) {
                    if endpoint.addresses.contains(&ip) {
                        if let Some(label) = endpoint.label() {
                            targets.extend(zone.name_of(&[&label, &key.name, &key.namespace, "svc"]));
                        }
                    }
                }
            }
            _ => {}
        }
    }
    if targets.is_empty() {
        return None;
    }
    let mut answer = Answer::new();
    if matches!(qtype, RecordType::PTR | RecordType::ANY) {
        answer.answers =
            targets.into_iter().map(|t| Record::from_rdata(qname.clone(), zone.ttl, RData::PTR(PTR(t)))).collect();
    }
    Some(answer)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::{Key, NamedPort, SliceEntry};

    const TTL: u32 = 5;

    fn port(name: &str, protocol: &str, port: u16) -> NamedPort {
        NamedPort { name: name.into(), protocol: protocol.into(), port }
    }

    fn endpoint(ip: &str, hostname: Option<&str>, ready: bool) -> EndpointEntry {
        EndpointEntry { addresses: vec![ip.parse().unwrap()], hostname: hostname.map(String::from), ready }
    }

    fn cluster_ip(ips: &[&str], ports: Vec<NamedPort>) -> ServiceEntry {
        ServiceEntry {
            kind: ServiceKind::ClusterIp(ips.iter().map(|ip| ip.parse().unwrap()).collect()),
            ports,
            publish_not_ready: false,
        }
    }

    fn index() -> Index {
        let mut index = Index::new();
        index.insert_service(Key::new("default", "web"), cluster_ip(&["10.43.0.10"], vec![port("http", "tcp", 80)]));
        index.insert_service(Key::new("default", "both"), cluster_ip(&["10.43.0.11", "fd00::11"], vec![]));
        index.insert_service(Key::new("default", "v6"), cluster_ip(&["fd00::12"], vec![]));
        index.insert_service(
            Key::new("data", "db"),
            ServiceEntry { kind: ServiceKind::Headless, ports: vec![port("pg", "tcp", 5432)], publish_not_ready: false },
        );
        index.insert_slice(
            Key::new("data", "db-abcde"),
            SliceEntry {
                service: "db".into(),
                ports: vec![port("pg", "tcp", 15432)],
                endpoints: vec![
                    endpoint("10.42.0.5", Some("db-0"), true),
                    endpoint("10.42.0.6", None, true),
                    endpoint("10.42.0.7", Some("db-2"), false),
                ],
            },
        );
        index.insert_service(
            Key::new("default", "ext"),
            ServiceEntry { kind: ServiceKind::ExternalName("example.com".into()), ports: vec![], publish_not_ready: false },
        );
        index.insert_service(
            Key::new("default", "alias"),
            ServiceEntry {
                kind: ServiceKind::ExternalName("web.default.svc.cluster.local".into()),
                ports: vec![],
                publish_not_ready: false,
            },
        );
        index.insert_service(
            Key::new("default", "loop"),
            ServiceEntry {
                kind: ServiceKind::ExternalName("loop.default.svc.cluster.local".into()),
                ports: vec![],
                publish_not_ready: false,
            },
        );
        index.mark_synced();
        index
    }

    fn zone() -> Zone {
        Zone::new("cluster.local", TTL).unwrap()
    }

    fn name(s: &str) -> Name {
        Name::from_ascii(s).unwrap()
    }

    fn answer(index: &Index, qname: &str, qtype: RecordType) -> Answer {
        match resolve(index, &zone(), &name(qname), qtype) {
            Resolution::Authoritative(a) => a,
            Resolution::Forward => panic!("{qname} was forwarded"),
        }
    }

    fn rdatas(records: &[Record]) -> Vec<String> {
        records.iter().map(|r| r.data.to_string()).collect()
    }

    fn assert_negative(a: &Answer, rcode: ResponseCode) {
        assert_eq!(a.rcode, rcode);
        assert!(a.answers.is_empty(), "{:?}", a.answers);
        assert_eq!(a.authorities.len(), 1);
        assert_eq!(a.authorities[0].record_type(), RecordType::SOA);
    }

    #[test]
    fn cluster_ip_service_a_record() {
        let a = answer(&index(), "web.default.svc.cluster.local.", RecordType::A);
        assert_eq!(a.rcode, ResponseCode::NoError);
        assert_eq!(rdatas(&a.answers), vec!["10.43.0.10"]);
        assert_eq!(a.answers[0].ttl, TTL);
        assert_eq!(a.answers[0].name, name("web.default.svc.cluster.local."));
        assert!(a.authorities.is_empty());
    }

    #[test]
    fn matching_ignores_case_and_answers_keep_the_question_spelling() {
        let a = answer(&index(), "WeB.DEFAULT.svc.Cluster.LOCAL.", RecordType::A);
        assert_eq!(rdatas(&a.answers), vec!["10.43.0.10"]);
        assert!(a.answers[0].name.eq_case(&name("WeB.DEFAULT.svc.Cluster.LOCAL.")));
    }

    #[test]
    fn families_and_empty_answers() {
        let index = index();
        assert_negative(&answer(&index, "web.default.svc.cluster.local.", RecordType::AAAA), ResponseCode::NoError);
        assert_eq!(rdatas(&answer(&index, "v6.default.svc.cluster.local.", RecordType::AAAA).answers), vec!["fd00::12"]);
        assert_negative(&answer(&index, "v6.default.svc.cluster.local.", RecordType::A), ResponseCode::NoError);
        assert_eq!(rdatas(&answer(&index, "both.default.svc.cluster.local.", RecordType::A).answers), vec!["10.43.0.11"]);
        assert_eq!(rdatas(&answer(&index, "both.default.svc.cluster.local.", RecordType::AAAA).answers), vec!["fd00::11"]);
        assert_negative(&answer(&index, "web.default.svc.cluster.local.", RecordType::MX), ResponseCode::NoError);
    }

    #[test]
    fn missing_names_are_nxdomain_with_the_zone_soa() {
        let index = index();
        for missing in [
            "nope.default.svc.cluster.local.",
            "web.other.svc.cluster.local.",
            "other.svc.cluster.local.",
            "a.b.c.d.e.f.cluster.local.",
            "whatever.cluster.local.",
            "_http._tcp.nope.default.svc.cluster.local.",
            "_nope._tcp.web.default.svc.cluster.local.",
            "_http._udp.web.default.svc.cluster.local.",
            "x-y.default.pod.cluster.local.",
        ] {
            let a = answer(&index, missing, RecordType::A);
            assert_negative(&a, ResponseCode::NXDomain);
            match &a.authorities[0].data {
                RData::SOA(soa) => {
                    assert_eq!(soa.serial, index.serial());
                    assert_eq!(soa.minimum, TTL);
                    assert_eq!(soa.mname, name("ns.dns.cluster.local."));
                }
                other => panic!("{other:?}"),
            }
            assert_eq!(a.authorities[0].name, name("cluster.local."));
        }
    }

    #[test]
    fn empty_non_terminals_exist() {
        let index = index();
        for existing in ["svc.cluster.local.", "default.svc.cluster.local.", "_tcp.web.default.svc.cluster.local.", "cluster.local."] {
            assert_negative(&answer(&index, existing, RecordType::A), ResponseCode::NoError);
        }
        let soa = answer(&index, "cluster.local.", RecordType::SOA);
        assert_eq!(soa.answers.len(), 1);
        assert_eq!(soa.answers[0].record_type(), RecordType::SOA);
    }

    #[test]
    fn headless_service_resolves_to_ready_endpoints() {
        let a = answer(&index(), "db.data.svc.cluster.local.", RecordType::A);
        assert_eq!(rdatas(&a.answers), vec!["10.42.0.5", "10.42.0.6"]);
    }

    #[test]
    fn publish_not_ready_addresses_includes_unready_endpoints() {
        let mut index = index();
        let mut db = index.service("data", "db").unwrap().clone();
        db.publish_not_ready = true;
        index.insert_service(Key::new("data", "db"), db);
        let a = answer(&index, "db.data.svc.cluster.local.", RecordType::A);
        assert_eq!(rdatas(&a.answers), vec!["10.42.0.5", "10.42.0.6", "10.42.0.7"]);
        assert_eq!(rdatas(&answer(&index, "db-2.db.data.svc.cluster.local.", RecordType::A).answers), vec!["10.42.0.7"]);
    }

    #[test]
    fn endpoint_hostnames() {
        let index = index();
        assert_eq!(rdatas(&answer(&index, "db-0.db.data.svc.cluster.local.", RecordType::A).answers), vec!["10.42.0.5"]);
        assert_eq!(rdatas(&answer(&index, "DB-0.db.data.svc.cluster.local.", RecordType::A).answers), vec!["10.42.0.5"]);
        assert_eq!(rdatas(&answer(&index, "10-42-0-6.db.data.svc.cluster.local.", RecordType::A).answers), vec!["10.42.0.6"]);
        assert_negative(&answer(&index, "db-0.db.data.svc.cluster.local.", RecordType::AAAA), ResponseCode::NoError);
        // Not ready, and a hostname that does not exist.
        assert_negative(&answer(&index, "db-2.db.data.svc.cluster.local.", RecordType::A), ResponseCode::NXDomain);
        assert_negative(&answer(&index, "db-9.db.data.svc.cluster.local.", RecordType::A), ResponseCode::NXDomain);
        // A hostname's endpoint is not also reachable by its dashed IP.
        assert_negative(&answer(&index, "10-42-0-5.db.data.svc.cluster.local.", RecordType::A), ResponseCode::NXDomain);
        // Only headless Services have endpoint names.
        assert_negative(&answer(&index, "x.web.default.svc.cluster.local.", RecordType::A), ResponseCode::NXDomain);
    }

    #[test]
    fn srv_for_a_cluster_ip_service_names_the_service() {
        let a = answer(&index(), "_http._tcp.web.default.svc.cluster.local.", RecordType::SRV);
        assert_eq!(a.rcode, ResponseCode::NoError);
        assert_eq!(rdatas(&a.answers), vec!["0 100 80 web.default.svc.cluster.local."]);
        assert_eq!(a.additionals.len(), 1);
        assert_eq!(a.additionals[0].name, name("web.default.svc.cluster.local."));
        assert_eq!(a.additionals[0].data.to_string(), "10.43.0.10");
        // The SRV name exists but has no A record.
        assert_negative(&answer(&index(), "_http._tcp.web.default.svc.cluster.local.", RecordType::A), ResponseCode::NoError);
    }

    #[test]
    fn srv_for_a_headless_service_names_each_endpoint_with_its_port() {
        let a = answer(&index(), "_PG._TCP.db.data.svc.cluster.local.", RecordType::SRV);
        assert_eq!(
            rdatas(&a.answers),
            vec!["0 50 15432 db-0.db.data.svc.cluster.local.", "0 50 15432 10-42-0-6.db.data.svc.cluster.local."]
        );
        let extra: Vec<_> = a.additionals.iter().map(|r| format!("{} {}", r.name, r.data)).collect();
        assert_eq!(
            extra,
            vec!["db-0.db.data.svc.cluster.local. 10.42.0.5", "10-42-0-6.db.data.svc.cluster.local. 10.42.0.6"]
        );
    }

    #[test]
    fn external_name_is_a_cname_left_for_upstream() {
        let a = answer(&index(), "ext.default.svc.cluster.local.", RecordType::A);
        assert_eq!(a.rcode, ResponseCode::NoError);
        assert_eq!(rdatas(&a.answers), vec!["example.com."]);
        assert_eq!(a.answers[0].record_type(), RecordType::CNAME);
        assert_eq!(a.external_target, Some(name("example.com.")));
        let c = answer(&index(), "ext.default.svc.cluster.local.", RecordType::CNAME);
        assert_eq!(c.external_target, None);
        assert_eq!(c.answers.len(), 1);
    }

    #[test]
    fn external_name_inside_the_zone_is_followed() {
        let a = answer(&index(), "alias.default.svc.cluster.local.", RecordType::A);
        assert_eq!(rdatas(&a.answers), vec!["web.default.svc.cluster.local.", "10.43.0.10"]);
        assert_eq!(a.external_target, None);
        // A loop stops after a bounded number of CNAMEs.
        let l = answer(&index(), "loop.default.svc.cluster.local.", RecordType::A);
        assert_eq!(l.rcode, ResponseCode::ServFail);
        assert_eq!(l.answers.len(), MAX_CNAME_CHAIN);
    }

    #[test]
    fn pod_records_by_dashed_ip() {
        let index = index();
        assert_eq!(rdatas(&answer(&index, "10-42-1-9.default.pod.cluster.local.", RecordType::A).answers), vec!["10.42.1.9"]);
        assert_eq!(rdatas(&answer(&index, "fd00--9.any.pod.cluster.local.", RecordType::AAAA).answers), vec!["fd00::9"]);
        assert_negative(&answer(&index, "10-42-1-9.default.pod.cluster.local.", RecordType::AAAA), ResponseCode::NoError);
        assert_negative(&answer(&index, "10-42-1-999.default.pod.cluster.local.", RecordType::A), ResponseCode::NXDomain);
    }

    #[test]
    fn schema_version_record() {
        let a = answer(&index(), "dns-version.cluster.local.", RecordType::TXT);
        assert_eq!(rdatas(&a.answers), vec!["1.1.0"]);
    }

    #[test]
    fn names_outside_the_zone_are_forwarded() {
        let index = index();
        for outside in ["example.com.", "cluster.local.example.com.", "local.", "web.default.svc.cluster.loca.", "."] {
            assert_eq!(resolve(&index, &zone(), &name(outside), RecordType::A), Resolution::Forward, "{outside}");
        }
    }

    #[test]
    fn other_cluster_domains() {
        let zone = Zone::new("K8s.Internal.", TTL).unwrap();
        let r = resolve(&index(), &zone, &name("web.default.svc.k8s.internal."), RecordType::A);
        let Resolution::Authoritative(a) = r else { panic!("forwarded") };
        assert_eq!(rdatas(&a.answers), vec!["10.43.0.10"]);
        assert_eq!(
            resolve(&index(), &zone, &name("web.default.svc.cluster.local."), RecordType::A),
            Resolution::Forward
        );
        assert!(Zone::new(".", TTL).is_err());
        assert!(Zone::new("bad..domain", TTL).is_err());
    }

    #[test]
    fn reverse_records_for_known_addresses() {
        let index = index();
        let a = answer(&index, "10.0.43.10.in-addr.arpa.", RecordType::PTR);
        assert_eq!(rdatas(&a.answers), vec!["web.default.svc.cluster.local."]);
        let a = answer(&index, "5.0.42.10.in-addr.arpa.", RecordType::PTR);
        assert_eq!(rdatas(&a.answers), vec!["db-0.db.data.svc.cluster.local."]);
        let v6 = "2.1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.d.f.ip6.arpa.";
        assert_eq!(rdatas(&answer(&index, v6, RecordType::PTR).answers), vec!["v6.default.svc.cluster.local."]);
        assert_eq!(resolve(&index, &zone(), &name("1.1.1.1.in-addr.arpa."), RecordType::PTR), Resolution::Forward);
        assert_eq!(resolve(&index, &zone(), &name("43.10.in-addr.arpa."), RecordType::PTR), Resolution::Forward);
        assert!(is_reverse_name(&name("1.1.1.1.IN-ADDR.ARPA.")));
        assert!(!is_reverse_name(&name("example.arpa.")));
    }
}
