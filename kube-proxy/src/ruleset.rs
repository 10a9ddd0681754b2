//! The nftables table kube-proxy owns, as data: the fixed skeleton (hooks, lookup maps,
//! masquerading) plus the per-Service chains, affinity sets and map elements that the
//! proxier computes. [`Ruleset::full_batch`] rewrites the table in one transaction (at
//! start, and after a failed sync); [`Ruleset::diff_batch`] turns the difference between
//! two rulesets into one transaction that touches only what changed, so one Service's
//! change rewrites that Service's chains and map entries and nothing else.

use std::collections::BTreeMap;
use std::fmt::Write as _;

/// The fixed maps and sets that per-Service entries go into.
pub const SERVICE_IPS: &str = "service-ips";
pub const SERVICE_NODEPORTS: &str = "service-nodeports";
pub const NO_ENDPOINT_SERVICES: &str = "no-endpoint-services";
pub const NO_ENDPOINT_NODEPORTS: &str = "no-endpoint-nodeports";
pub const HOST_PORTS: &str = "host-ports";
pub const CLUSTER_IPS: &str = "cluster-ips";

/// Chains of the skeleton that per-Service rules jump to.
pub const MARK_FOR_MASQUERADE: &str = "mark-for-masquerade";
pub const REJECT_CHAIN: &str = "reject-chain";

/// The mark bit that asks the postrouting hook to masquerade (kube-proxy's 0x4000).
pub const MASQUERADE_MARK: u32 = 0x4000;

/// Every container of elements, with its nftables type. Sets have an empty value.
const CONTAINERS: &[(&str, &str, bool)] = &[
    (CLUSTER_IPS, "ipv4_addr", false),
    (SERVICE_IPS, "ipv4_addr . inet_proto . inet_service : verdict", true),
    (SERVICE_NODEPORTS, "inet_proto . inet_service : verdict", true),
    (NO_ENDPOINT_SERVICES, "ipv4_addr . inet_proto . inet_service : verdict", true),
    (NO_ENDPOINT_NODEPORTS, "inet_proto . inet_service : verdict", true),
    (HOST_PORTS, "inet_proto . inet_service : verdict", true),
];

/// The whole desired content of the table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ruleset {
    /// Per-Service chains: name → rules, in order.
    pub chains: BTreeMap<String, Vec<String>>,
    /// Session-affinity sets: name → timeout in seconds.
    pub affinity_sets: BTreeMap<String, u32>,
    /// Elements of the fixed maps and sets: container → key → value (empty for sets).
    pub elements: BTreeMap<&'static str, BTreeMap<String, String>>,
}

impl Ruleset {
    pub fn add_element(&mut self, container: &'static str, key: String, value: String) {
        self.elements.entry(container).or_default().insert(key, value);
    }

    pub fn element_count(&self) -> usize {
        self.elements.values().map(BTreeMap::len).sum()
    }

    /// One transaction that replaces the table `table` with exactly this ruleset.
    /// Established connections keep flowing: their NAT lives in conntrack, not in rules.
    pub fn full_batch(&self, table: &str) -> String {
        let mut out = String::with_capacity(256 + self.chains.len() * 160);
        // `add` first so that `delete` succeeds whether or not the table exists.
        let _ = writeln!(out, "add table ip {table}\ndelete table ip {table}");
        out.push_str(&self.render(table));
        out
    }

    /// The table as one `table ip NAME { … }` block, the form `nft list table` prints.
    pub fn render(&self, table: &str) -> String {
        let mut out = String::with_capacity(256 + self.chains.len() * 160);
        let _ = writeln!(out, "table ip {table} {{");
        out.push_str(SKELETON);
        for (name, type_, _) in CONTAINERS {
            let kind = if type_.contains(':') { "map" } else { "set" };
            let _ = write!(out, "\t{kind} {name} {{\n\t\ttype {type_}\n");
            if let Some(elements) = self.elements.get(name).filter(|e| !e.is_empty()) {
                out.push_str("\t\telements = { ");
                write_elements(&mut out, elements.iter());
                out.push_str(" }\n");
            }
            out.push_str("\t}\n");
        }
        for (name, timeout) in &self.affinity_sets {
            let _ = writeln!(out, "\tset {name} {{\n\t\ttype ipv4_addr\n\t\tflags dynamic,timeout\n\t\ttimeout {timeout}s\n\t}}");
        }
        for (name, rules) in &self.chains {
            let _ = writeln!(out, "\tchain {name} {{");
            for rule in rules {
                let _ = writeln!(out, "\t\t{rule}");
            }
            out.push_str("\t}\n");
        }
        out.push_str("}\n");
        out
    }

    /// One transaction that turns the table from `old` into `self`, touching only the
    /// chains, sets and elements that differ. Empty when nothing does.
    pub fn diff_batch(&self, old: &Ruleset, table: &str) -> String {
        let mut out = String::new();
        for (name, timeout) in &self.affinity_sets {
            if old.affinity_sets.get(name) != Some(timeout) {
                if old.affinity_sets.contains_key(name) {
                    let _ = writeln!(out, "delete set ip {table} {name}");
                }
                let _ = writeln!(out, "add set ip {table} {name} {{ type ipv4_addr; flags dynamic,timeout; timeout {timeout}s; }}");
            }
        }
        // Declare new chains before any rule can refer to them.
        for name in self.chains.keys().filter(|n| !old.chains.contains_key(*n)) {
            let _ = writeln!(out, "add chain ip {table} {name}");
        }
        for (name, rules) in &self.chains {
            match old.chains.get(name) {
                Some(old_rules) if old_rules == rules => continue,
                Some(_) => {
                    let _ = writeln!(out, "flush chain ip {table} {name}");
                }
                None => {}
            }
            for rule in rules {
                let _ = writeln!(out, "add rule ip {table} {name} {rule}");
            }
        }
        for (container, _, is_map) in CONTAINERS {
            let empty = BTreeMap::new();
            let new = self.elements.get(container).unwrap_or(&empty);
            let before = old.elements.get(container).unwrap_or(&empty);
            let gone: Vec<&String> =
                before.iter().filter(|(k, v)| new.get(*k) != Some(*v)).map(|(k, _)| k).collect();
            if !gone.is_empty() {
                let _ = write!(out, "delete element ip {table} {container} {{ ");
                for (i, key) in gone.iter().enumerate() {
                    out.push_str(if i == 0 { "" } else { ", " });
                    out.push_str(key);
                }
                out.push_str(" }\n");
            }
            let added: Vec<(&String, &String)> = new.iter().filter(|(k, v)| before.get(*k) != Some(*v)).collect();
            if !added.is_empty() {
                let _ = write!(out, "add element ip {table} {container} {{ ");
                write_elements(&mut out, added.into_iter());
                out.push_str(" }\n");
            }
            debug_assert!(*is_map || new.values().all(String::is_empty));
        }
        // Chains and sets go last, once nothing refers to them any more; a chain's own
        // rules may refer to another stale chain, so all are flushed before any is deleted.
        let stale: Vec<&String> = old.chains.keys().filter(|n| !self.chains.contains_key(*n)).collect();
        for name in &stale {
            let _ = writeln!(out, "flush chain ip {table} {name}");
        }
        for name in &stale {
            let _ = writeln!(out, "delete chain ip {table} {name}");
        }
        for name in old.affinity_sets.keys().filter(|n| !self.affinity_sets.contains_key(*n)) {
            let _ = writeln!(out, "delete set ip {table} {name}");
        }
        out
    }
}

fn write_elements<'a>(out: &mut String, elements: impl Iterator<Item = (&'a String, &'a String)>) {
    for (i, (key, value)) in elements.enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        out.push_str(key);
        if !value.is_empty() {
            out.push_str(" : ");
            out.push_str(value);
        }
    }
}

/// The fixed part of the table: where packets enter (nat and filter hooks), the lookups
/// that send them to a Service's chain, the rejection of Services without endpoints and
/// masquerading. Tabs as `nft list` prints them, so the golden files read the same.
const SKELETON: &str = "\
\tchain nat-prerouting {
\t\ttype nat hook prerouting priority dstnat; policy accept;
\t\tjump services
\t}
\tchain nat-output {
\t\ttype nat hook output priority -100; policy accept;
\t\tjump services
\t}
\tchain nat-postrouting {
\t\ttype nat hook postrouting priority srcnat; policy accept;
\t\tjump masquerading
\t}
\tchain filter-prerouting {
\t\ttype filter hook prerouting priority -110; policy accept;
\t\tiifname != \"lo\" ip daddr 127.0.0.0/8 drop
\t}
\tchain filter-input {
\t\ttype filter hook input priority -110; policy accept;
\t\tct state new jump nodeport-endpoints-check
\t\tct state new jump service-endpoints-check
\t}
\tchain filter-forward {
\t\ttype filter hook forward priority -110; policy accept;
\t\tct state new jump service-endpoints-check
\t\tct state new jump cluster-ips-check
\t}
\tchain filter-output {
\t\ttype filter hook output priority -110; policy accept;
\t\tct state new jump service-endpoints-check
\t}
\tchain filter-output-post-dnat {
\t\ttype filter hook output priority -90; policy accept;
\t\tct state new jump cluster-ips-check
\t}
\tchain services {
\t\tip daddr . meta l4proto . th dport vmap @service-ips
\t\tfib daddr type local meta l4proto . th dport vmap @host-ports
\t\tfib daddr type local meta l4proto . th dport vmap @service-nodeports
\t}
\tchain service-endpoints-check {
\t\tip daddr . meta l4proto . th dport vmap @no-endpoint-services
\t}
\tchain nodeport-endpoints-check {
\t\tfib daddr type local meta l4proto . th dport vmap @no-endpoint-nodeports
\t}
\tchain cluster-ips-check {
\t\tip daddr @cluster-ips reject
\t}
\tchain reject-chain {
\t\treject
\t}
\tchain mark-for-masquerade {
\t\tmeta mark set meta mark | 0x4000
\t}
\tchain masquerading {
\t\tmeta mark & 0x4000 == 0 return
\t\tmeta mark set meta mark ^ 0x4000
\t\tmasquerade fully-random
\t}
";

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Ruleset {
        let mut r = Ruleset::default();
        r.chains.insert("service-a".into(), vec!["numgen random mod 1 vmap { 0 : goto endpoint-a1 }".into()]);
        r.chains.insert("endpoint-a1".into(), vec!["meta l4proto tcp dnat to 10.42.0.5:8080".into()]);
        r.add_element(SERVICE_IPS, "10.43.0.5 . tcp . 80".into(), "goto service-a".into());
        r.add_element(CLUSTER_IPS, "10.43.0.5".into(), String::new());
        r
    }

    #[test]
    fn nothing_changed_means_an_empty_batch() {
        assert_eq!(sample().diff_batch(&sample(), "t"), "");
    }

    #[test]
    fn a_new_service_adds_its_chains_then_its_entries() {
        let old = sample();
        let mut new = sample();
        new.chains.insert("service-b".into(), vec!["goto endpoint-b1".into()]);
        new.chains.insert("endpoint-b1".into(), vec!["meta l4proto tcp dnat to 10.42.0.6:80".into()]);
        new.add_element(SERVICE_IPS, "10.43.0.6 . tcp . 80".into(), "goto service-b".into());
        assert_eq!(
            new.diff_batch(&old, "t"),
            "add chain ip t endpoint-b1\n\
             add chain ip t service-b\n\
             add rule ip t endpoint-b1 meta l4proto tcp dnat to 10.42.0.6:80\n\
             add rule ip t service-b goto endpoint-b1\n\
             add element ip t service-ips { 10.43.0.6 . tcp . 80 : goto service-b }\n"
        );
    }

    #[test]
    fn a_removed_service_leaves_its_entries_before_its_chains() {
        let old = sample();
        let new = Ruleset::default();
        assert_eq!(
            new.diff_batch(&old, "t"),
            "delete element ip t cluster-ips { 10.43.0.5 }\n\
             delete element ip t service-ips { 10.43.0.5 . tcp . 80 }\n\
             flush chain ip t endpoint-a1\n\
             flush chain ip t service-a\n\
             delete chain ip t endpoint-a1\n\
             delete chain ip t service-a\n"
        );
    }

    #[test]
    fn a_changed_chain_is_flushed_and_refilled_and_a_changed_value_replaced() {
        let old = sample();
        let mut new = sample();
        new.chains.insert("endpoint-a1".into(), vec!["meta l4proto tcp dnat to 10.42.0.5:9090".into()]);
        new.add_element(SERVICE_IPS, "10.43.0.5 . tcp . 80".into(), "goto reject-chain".into());
        new.affinity_sets.insert("affinity-a1".into(), 60);
        assert_eq!(
            new.diff_batch(&old, "t"),
            "add set ip t affinity-a1 { type ipv4_addr; flags dynamic,timeout; timeout 60s; }\n\
             flush chain ip t endpoint-a1\n\
             add rule ip t endpoint-a1 meta l4proto tcp dnat to 10.42.0.5:9090\n\
             delete element ip t service-ips { 10.43.0.5 . tcp . 80 }\n\
             add element ip t service-ips { 10.43.0.5 . tcp . 80 : goto reject-chain }\n"
        );
    }

    #[test]
    fn full_batch_replaces_the_table_atomically() {
        let batch = sample().full_batch("kube-proxy");
        assert!(batch.starts_with("add table ip kube-proxy\ndelete table ip kube-proxy\ntable ip kube-proxy {\n"));
        assert!(batch.contains("\tmap service-ips {\n\t\ttype ipv4_addr . inet_proto . inet_service : verdict\n\t\telements = { 10.43.0.5 . tcp . 80 : goto service-a }\n\t}\n"));
        assert!(batch.contains("\tset cluster-ips {\n\t\ttype ipv4_addr\n\t\telements = { 10.43.0.5 }\n\t}\n"));
        assert!(batch.ends_with("\tchain service-a {\n\t\tnumgen random mod 1 vmap { 0 : goto endpoint-a1 }\n\t}\n}\n"));
    }
}
