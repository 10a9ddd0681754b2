//! Service ports and host ports → the [`Ruleset`] that implements them, the way
//! kube-proxy's nftables mode lays it out:
//!
//! - `service-ips` maps ClusterIP (and external IP, load-balancer IP) · protocol · port to
//!   the Service port's chain, `service-nodeports` maps protocol · nodePort to it, so the
//!   cost of finding a packet's Service does not grow with the number of Services;
//! - `service-<port>` balances ClusterIP traffic across the usable endpoints with
//!   `numgen random` (see [`balance`]), `external-<port>` does the same for traffic from
//!   outside with the masquerading and `externalTrafficPolicy` rules that apply to it;
//! - `endpoint-<port>__<ip>/<port>` DNATs to one endpoint (and masquerades hairpin
//!   traffic, a pod reaching itself through its own Service);
//! - Service ports without usable endpoints get an entry in `no-endpoint-services` /
//!   `no-endpoint-nodeports`, which the filter hooks answer with a REJECT (or a drop when
//!   a Local traffic policy leaves this node without endpoints).

use ipnet::Ipv4Net;

use crate::model::{Endpoint, HostPort, ServicePort};
use crate::ruleset::{self, Ruleset};

/// What, beyond the API objects, decides the rules.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProxyRules {
    /// `--cluster-cidr`: traffic to a ClusterIP from outside it is masqueraded so that
    /// replies come back through this node. None: only external and hairpin traffic is.
    pub cluster_cidr: Option<Ipv4Net>,
}

/// The ruleset for `services` and `host_ports`.
pub fn build(services: &[ServicePort], host_ports: &[HostPort], rules: &ProxyRules) -> Ruleset {
    let mut out = Ruleset::default();
    for service in services {
        add_service_port(&mut out, service, rules);
    }
    for host_port in host_ports {
        add_host_port(&mut out, host_port);
    }
    out
}

fn add_service_port(out: &mut Ruleset, sp: &ServicePort, rules: &ProxyRules) {
    let id = sp.name.to_string();
    let proto = sp.name.protocol.nft();
    let service_chain = format!("service-{id}");
    let external_chain = format!("external-{id}");
    let cluster = sp.cluster_endpoints();
    let external = if sp.has_external_addresses() { sp.external_endpoints() } else { Vec::new() };
    // With a Local policy, "no endpoints here" drops (the client should try another node);
    // with none anywhere, the client is told at once with a REJECT.
    let no_endpoints_verdict = |local: bool| {
        if local && !sp.endpoints.is_empty() { "drop".to_string() } else { format!("goto {}", ruleset::REJECT_CHAIN) }
    };

    for endpoint in cluster.iter().chain(external.iter()) {
        let chain = endpoint_chain(&id, endpoint);
        if out.chains.contains_key(&chain) {
            continue;
        }
        let mut chain_rules = vec![format!("ip saddr {} jump {}", endpoint.ip, ruleset::MARK_FOR_MASQUERADE)];
        if let Some(timeout) = sp.affinity_timeout {
            let set = affinity_set(&id, endpoint);
            chain_rules.push(format!("update @{set} {{ ip saddr }}"));
            out.affinity_sets.insert(set, timeout);
        }
        chain_rules.push(format!("meta l4proto {proto} dnat to {}:{}", endpoint.ip, endpoint.port));
        out.chains.insert(chain, chain_rules);
    }

    for ip in &sp.cluster_ips {
        out.add_element(ruleset::CLUSTER_IPS, ip.to_string(), String::new());
        let key = format!("{ip} . {proto} . {}", sp.port);
        if cluster.is_empty() {
            out.add_element(ruleset::NO_ENDPOINT_SERVICES, key, no_endpoints_verdict(sp.internal_local));
        } else {
            out.add_element(ruleset::SERVICE_IPS, key, format!("goto {service_chain}"));
        }
    }
    if !cluster.is_empty() {
        let mut chain_rules = Vec::new();
        if let Some(cidr) = rules.cluster_cidr {
            chain_rules.push(format!("ip saddr != {cidr} jump {}", ruleset::MARK_FOR_MASQUERADE));
        }
        balance(&mut chain_rules, &id, &cluster, sp.affinity_timeout.is_some());
        out.chains.insert(service_chain.clone(), chain_rules);
    }

    if !sp.has_external_addresses() {
        return;
    }
    let external_keys = sp.external_ips.iter().chain(&sp.load_balancer_ips).map(|ip| format!("{ip} . {proto} . {}", sp.port));
    let node_port_key = sp.node_port.map(|p| format!("{proto} . {p}"));
    if external.is_empty() {
        let verdict = no_endpoints_verdict(sp.external_local);
        for key in external_keys {
            out.add_element(ruleset::NO_ENDPOINT_SERVICES, key, verdict.clone());
        }
        if let Some(key) = node_port_key {
            out.add_element(ruleset::NO_ENDPOINT_NODEPORTS, key, verdict);
        }
        return;
    }
    let mut chain_rules = Vec::new();
    if sp.external_local {
        // Pods and the node itself are inside the cluster: they use the Service as its
        // ClusterIP would (masquerading the node's own traffic, which may come from
        // 127.0.0.1). Everyone else keeps their source address and reaches only
        // endpoints on this node.
        if !cluster.is_empty() {
            if let Some(cidr) = rules.cluster_cidr {
                chain_rules.push(format!("ip saddr {cidr} goto {service_chain}"));
            }
            chain_rules.push(format!("fib saddr type local jump {}", ruleset::MARK_FOR_MASQUERADE));
            chain_rules.push(format!("fib saddr type local goto {service_chain}"));
        }
    } else {
        chain_rules.push(format!("jump {}", ruleset::MARK_FOR_MASQUERADE));
    }
    balance(&mut chain_rules, &id, &external, sp.affinity_timeout.is_some());
    out.chains.insert(external_chain.clone(), chain_rules);
    for key in external_keys {
        out.add_element(ruleset::SERVICE_IPS, key, format!("goto {external_chain}"));
    }
    if let Some(key) = node_port_key {
        out.add_element(ruleset::SERVICE_NODEPORTS, key, format!("goto {external_chain}"));
    }
}

/// Session affinity first (a client seen recently goes back to its endpoint), then a
/// uniform random pick: endpoint k of n is taken with probability 1/(n-k) when none
/// before it was, which gives each 1/n. One rule per endpoint rather than one
/// `numgen … vmap { … }`, because every such anonymous map is a set nft 1.0 looks up
/// linearly, which made programming 10,000 Services take minutes.
fn balance(chain_rules: &mut Vec<String>, id: &str, endpoints: &[&Endpoint], affinity: bool) {
    if affinity {
        for endpoint in endpoints {
            chain_rules.push(format!("ip saddr @{} goto {}", affinity_set(id, endpoint), endpoint_chain(id, endpoint)));
        }
    }
    let n = endpoints.len();
    for (k, endpoint) in endpoints.iter().enumerate() {
        if k + 1 < n {
            chain_rules.push(format!("numgen random mod {} 0 goto {}", n - k, endpoint_chain(id, endpoint)));
        } else {
            chain_rules.push(format!("goto {}", endpoint_chain(id, endpoint)));
        }
    }
}

fn endpoint_chain(id: &str, endpoint: &Endpoint) -> String {
    format!("endpoint-{id}__{}/{}", endpoint.ip, endpoint.port)
}

fn affinity_set(id: &str, endpoint: &Endpoint) -> String {
    format!("affinity-{id}__{}/{}", endpoint.ip, endpoint.port)
}

fn add_host_port(out: &mut Ruleset, hp: &HostPort) {
    let proto = hp.protocol.nft();
    let key = format!("{proto} . {}", hp.host_port);
    if out.elements.get(ruleset::HOST_PORTS).is_some_and(|m| m.contains_key(&key)) {
        // Two pods cannot hold one host port; the scheduler keeps them apart, and the
        // first (in name order) keeps it if they meet anyway.
        return;
    }
    let chain = format!("hostport-{}/{}/{proto}/{}", hp.namespace, hp.pod, hp.host_port);
    let mut chain_rules = Vec::new();
    if let Some(ip) = hp.host_ip {
        chain_rules.push(format!("ip daddr != {ip} return"));
    }
    // Traffic from the node to its own 127.0.0.1, or from the pod back to itself, would
    // not find its way back without a source address on the pod's side.
    chain_rules.push(format!("ip daddr 127.0.0.0/8 jump {}", ruleset::MARK_FOR_MASQUERADE));
    chain_rules.push(format!("ip saddr {} jump {}", hp.pod_ip, ruleset::MARK_FOR_MASQUERADE));
    chain_rules.push(format!("meta l4proto {proto} dnat to {}:{}", hp.pod_ip, hp.container_port));
    out.chains.insert(chain.clone(), chain_rules);
    out.add_element(ruleset::HOST_PORTS, key, format!("goto {chain}"));
}
