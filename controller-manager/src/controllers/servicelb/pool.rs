//! The address pool of `--load-balancer-ip-pool` and who holds which address: parsing
//! (CIDRs and `first-last` ranges, comma-separated) and the allocation rules, apart
//! from the API so they are tested as plain functions. One Service holds at most one
//! address and one address is held by at most one Service.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr};

/// Why a pool text was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PoolError {
    #[error("no address range given (expected a CIDR such as 192.168.1.240/28 or a range such as 192.168.1.240-192.168.1.250)")]
    Empty,
    #[error("{entry:?}: {reason}")]
    ParseEntry { entry: String, reason: String },
}

/// An inclusive range of IPv4 addresses, as numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Span {
    first: u32,
    last: u32,
}

/// The addresses `--load-balancer-ip-pool` allows, as sorted, non-overlapping spans.
///
/// A CIDR gives its host addresses: the network and broadcast addresses are left out
/// (except in a /31 or /32), since an address ending in .0 or .255 of a LAN breaks some
/// clients. A `first-last` range, or a single address, gives exactly what it says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pool {
    spans: Vec<Span>,
    text: String,
}

impl Pool {
    pub fn parse(text: &str) -> Result<Pool, PoolError> {
        let mut spans = Vec::new();
        for entry in text.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            spans.push(parse_entry(entry)?);
        }
        if spans.is_empty() {
            return Err(PoolError::Empty);
        }
        spans.sort();
        // Overlapping or adjacent entries are one span.
        let mut merged: Vec<Span> = Vec::with_capacity(spans.len());
        for s in spans {
            match merged.last_mut() {
                Some(m) if u64::from(s.first) <= u64::from(m.last) + 1 => m.last = m.last.max(s.last),
                _ => merged.push(s),
            }
        }
        Ok(Pool { spans: merged, text: text.trim().to_string() })
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        let n = u32::from(ip);
        self.spans.iter().any(|s| s.first <= n && n <= s.last)
    }

    /// How many addresses the pool has.
    pub fn size(&self) -> u64 {
        self.spans.iter().map(|s| u64::from(s.last) - u64::from(s.first) + 1).sum()
    }

    /// The lowest address of the pool not among `used`'s keys.
    fn first_free<V>(&self, used: &BTreeMap<Ipv4Addr, V>) -> Option<Ipv4Addr> {
        for s in &self.spans {
            // Walk the used addresses inside this span in order; the first gap is free.
            let mut candidate = u64::from(s.first);
            for ip in used.range(Ipv4Addr::from(s.first)..=Ipv4Addr::from(s.last)).map(|(ip, _)| u64::from(u32::from(*ip))) {
                if ip != candidate {
                    break;
                }
                candidate += 1;
            }
            if candidate <= u64::from(s.last) {
                return u32::try_from(candidate).ok().map(Ipv4Addr::from);
            }
        }
        None
    }
}

impl fmt::Display for Pool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

fn parse_entry(entry: &str) -> Result<Span, PoolError> {
    let err = |reason: String| PoolError::ParseEntry { entry: entry.to_string(), reason };
    let v4 = |text: &str| -> Result<u32, PoolError> {
        match text.trim().parse::<IpAddr>() {
            Ok(IpAddr::V4(a)) => Ok(u32::from(a)),
            Ok(IpAddr::V6(_)) => Err(err("IPv6 addresses are not supported: kube-proxy serves IPv4 load-balancer addresses only".into())),
            Err(_) => Err(err(format!("{:?} is not an IP address", text.trim()))),
        }
    };
    if let Some((ip, prefix)) = entry.split_once('/') {
        let base = v4(ip)?;
        let prefix: u8 = prefix.trim().parse().map_err(|_| err(format!("{prefix:?} is not a prefix length")))?;
        if prefix > 32 {
            return Err(err(format!("prefix length {prefix} is longer than 32")));
        }
        let host_bits = 32 - u32::from(prefix);
        let mask = if host_bits == 32 { 0 } else { u32::MAX << host_bits };
        if base & mask != base {
            let network = Ipv4Addr::from(base & mask);
            return Err(err(format!("the address has bits set beyond the prefix; the network is {network}/{prefix}")));
        }
        let last = base | !mask;
        return Ok(if prefix <= 30 { Span { first: base + 1, last: last - 1 } } else { Span { first: base, last } });
    }
    if let Some((first, last)) = entry.split_once('-') {
        let (first, last) = (v4(first)?, v4(last)?);
        if first > last {
            return Err(err("the range's first address comes after its last".into()));
        }
        return Ok(Span { first, last });
    }
    let ip = v4(entry)?;
    Ok(Span { first: ip, last: ip })
}

/// A Service holding an address: its uid (the identity that survives nothing but the
/// object itself) and `namespace/name` for messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    pub uid: String,
    pub service: String,
}

/// Why a Service gets no address from the pool: the text of its warning Event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pending {
    /// `spec.loadBalancerIP` asks for an address outside the pool.
    NotInPool { requested: Ipv4Addr, pool: String },
    /// `spec.loadBalancerIP` asks for an address another Service holds.
    InUse { requested: Ipv4Addr, by: String },
    /// Every address of the pool is held.
    Exhausted { pool: String, size: u64 },
}

impl fmt::Display for Pending {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Pending::NotInPool { requested, pool } => {
                write!(f, "spec.loadBalancerIP {requested} is not in the load-balancer pool {pool}")
            }
            Pending::InUse { requested, by } => write!(f, "spec.loadBalancerIP {requested} is already assigned to Service {by}"),
            Pending::Exhausted { pool, size } => {
                write!(f, "no address is free in the load-balancer pool {pool} (all {size} are assigned)")
            }
        }
    }
}

/// Which Service holds which pool address.
#[derive(Debug)]
pub struct Allocations {
    pool: Pool,
    by_ip: BTreeMap<Ipv4Addr, Holder>,
    by_uid: HashMap<String, Ipv4Addr>,
}

impl Allocations {
    pub fn new(pool: Pool) -> Allocations {
        Allocations { pool, by_ip: BTreeMap::new(), by_uid: HashMap::new() }
    }

    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// The address the Service with this uid holds.
    pub fn held_by(&self, uid: &str) -> Option<Ipv4Addr> {
        self.by_uid.get(uid).copied()
    }

    /// Takes `ip` for `holder` if it is in the pool, free, and the holder has none yet —
    /// how addresses already written in Services' statuses are taken back after a
    /// restart. Whether it was taken.
    pub fn adopt(&mut self, holder: &Holder, ip: Ipv4Addr) -> bool {
        if !self.pool.contains(ip) || self.by_ip.contains_key(&ip) || self.by_uid.contains_key(&holder.uid) {
            return false;
        }
        self.take(holder, ip);
        true
    }

    /// The address `holder` is to have: the one it holds (unless it asks for another),
    /// the one it asks for if that is in the pool and free, else the lowest free one.
    /// A holder whose request cannot be met holds nothing afterwards.
    pub fn assign(&mut self, holder: &Holder, requested: Option<Ipv4Addr>) -> Result<Ipv4Addr, Pending> {
        if let Some(held) = self.held_by(&holder.uid) {
            match requested {
                Some(r) if r != held => {
                    self.release(&holder.uid);
                }
                _ => return Ok(held),
            }
        }
        let ip = match requested {
            Some(requested) => {
                if !self.pool.contains(requested) {
                    return Err(Pending::NotInPool { requested, pool: self.pool.to_string() });
                }
                if let Some(other) = self.by_ip.get(&requested) {
                    return Err(Pending::InUse { requested, by: other.service.clone() });
                }
                requested
            }
            None => self
                .pool
                .first_free(&self.by_ip)
                .ok_or_else(|| Pending::Exhausted { pool: self.pool.to_string(), size: self.pool.size() })?,
        };
        self.take(holder, ip);
        Ok(ip)
    }

    /// Gives back what the Service with this uid holds.
    pub fn release(&mut self, uid: &str) -> Option<Ipv4Addr> {
        let ip = self.by_uid.remove(uid)?;
        self.by_ip.remove(&ip);
        Some(ip)
    }

    /// Keeps only the holders `keep` accepts (by uid); what the others held is free.
    pub fn retain(&mut self, mut keep: impl FnMut(&str) -> bool) {
        let gone: Vec<String> = self.by_uid.keys().filter(|uid| !keep(uid)).cloned().collect();
        for uid in gone {
            self.release(&uid);
        }
    }

    fn take(&mut self, holder: &Holder, ip: Ipv4Addr) {
        self.by_ip.insert(ip, holder.clone());
        self.by_uid.insert(holder.uid.clone(), ip);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(text: &str) -> Pool {
        Pool::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    fn ip(text: &str) -> Ipv4Addr {
        text.parse().unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    fn holder(name: &str) -> Holder {
        Holder { uid: format!("uid-{name}"), service: format!("default/{name}") }
    }

    #[test]
    fn a_cidr_gives_its_host_addresses() {
        let p = pool("192.168.1.240/28");
        assert_eq!(p.size(), 14);
        assert!(!p.contains(ip("192.168.1.240")));
        assert!(p.contains(ip("192.168.1.241")));
        assert!(p.contains(ip("192.168.1.254")));
        assert!(!p.contains(ip("192.168.1.255")));
        assert_eq!(pool("10.0.0.7/32").size(), 1);
        assert_eq!(pool("10.0.0.6/31").size(), 2);
    }

    #[test]
    fn ranges_lists_and_single_addresses_parse_and_merge() {
        let p = pool("192.168.1.240-192.168.1.250");
        assert_eq!(p.size(), 11);
        assert!(p.contains(ip("192.168.1.240")) && p.contains(ip("192.168.1.250")));
        let p = pool(" 10.0.0.1-10.0.0.5 , 10.0.0.4-10.0.0.9,10.0.0.10, 10.1.0.0/30 ,");
        assert_eq!(p.size(), 10 + 2);
        assert_eq!(p.spans.len(), 2);
        assert_eq!(p.to_string(), "10.0.0.1-10.0.0.5 , 10.0.0.4-10.0.0.9,10.0.0.10, 10.1.0.0/30 ,");
    }

    #[test]
    fn bad_pools_are_refused_with_the_reason() {
        let reason = |text: &str| Pool::parse(text).err().map(|e| e.to_string()).unwrap_or_default();
        assert_eq!(Pool::parse(" , "), Err(PoolError::Empty));
        assert!(reason("192.168.1.240/33").contains("longer than 32"), "{}", reason("192.168.1.240/33"));
        assert!(reason("192.168.1.241/28").contains("network is 192.168.1.240/28"));
        assert!(reason("192.168.1.250-192.168.1.240").contains("comes after"));
        assert!(reason("fd00::/120").contains("IPv6"));
        assert!(reason("lb.example.com").contains("not an IP address"));
        assert!(reason("10.0.0.0/x").contains("not a prefix length"));
        assert!(reason("10.0.0.1-").contains("not an IP address"));
    }

    #[test]
    fn the_whole_address_space_does_not_overflow() {
        let p = pool("0.0.0.0/0");
        assert_eq!(p.size(), (1u64 << 32) - 2);
        let p = pool("255.255.255.254-255.255.255.255");
        let mut a = Allocations::new(p);
        assert_eq!(a.assign(&holder("a"), None), Ok(ip("255.255.255.254")));
        assert_eq!(a.assign(&holder("b"), None), Ok(ip("255.255.255.255")));
        assert!(matches!(a.assign(&holder("c"), None), Err(Pending::Exhausted { size: 2, .. })));
    }

    #[test]
    fn addresses_are_handed_out_lowest_first_and_reused_after_release() {
        let mut a = Allocations::new(pool("10.0.0.1-10.0.0.2,10.0.0.9"));
        assert_eq!(a.assign(&holder("a"), None), Ok(ip("10.0.0.1")));
        assert_eq!(a.assign(&holder("b"), None), Ok(ip("10.0.0.2")));
        assert_eq!(a.assign(&holder("c"), None), Ok(ip("10.0.0.9")));
        // Asking again gives the same address.
        assert_eq!(a.assign(&holder("a"), None), Ok(ip("10.0.0.1")));
        let full = a.assign(&holder("d"), None);
        assert_eq!(full, Err(Pending::Exhausted { pool: "10.0.0.1-10.0.0.2,10.0.0.9".into(), size: 3 }));
        assert!(full.err().map(|p| p.to_string()).unwrap_or_default().contains("no address is free"));
        assert_eq!(a.release("uid-b"), Some(ip("10.0.0.2")));
        assert_eq!(a.release("uid-b"), None);
        assert_eq!(a.assign(&holder("d"), None), Ok(ip("10.0.0.2")));
    }

    #[test]
    fn a_requested_address_is_honoured_only_inside_the_pool_and_when_free() {
        let mut a = Allocations::new(pool("10.0.0.1-10.0.0.4"));
        assert_eq!(a.assign(&holder("a"), Some(ip("10.0.0.3"))), Ok(ip("10.0.0.3")));
        assert_eq!(a.assign(&holder("b"), Some(ip("10.0.0.3"))), Err(Pending::InUse { requested: ip("10.0.0.3"), by: "default/a".into() }));
        assert_eq!(a.held_by("uid-b"), None);
        assert!(matches!(a.assign(&holder("b"), Some(ip("10.9.9.9"))), Err(Pending::NotInPool { .. })));
        // Unrequested allocations go around the requested one.
        assert_eq!(a.assign(&holder("c"), None), Ok(ip("10.0.0.1")));
        assert_eq!(a.assign(&holder("d"), None), Ok(ip("10.0.0.2")));
        assert_eq!(a.assign(&holder("e"), None), Ok(ip("10.0.0.4")));
    }

    #[test]
    fn changing_the_request_moves_or_gives_up_the_address() {
        let mut a = Allocations::new(pool("10.0.0.1-10.0.0.4"));
        assert_eq!(a.assign(&holder("a"), None), Ok(ip("10.0.0.1")));
        assert_eq!(a.assign(&holder("a"), Some(ip("10.0.0.4"))), Ok(ip("10.0.0.4")));
        assert_eq!(a.assign(&holder("b"), None), Ok(ip("10.0.0.1")));
        // An unmet request leaves the Service without its old address.
        assert!(a.assign(&holder("a"), Some(ip("10.0.0.1"))).is_err());
        assert_eq!(a.held_by("uid-a"), None);
        assert_eq!(a.assign(&holder("c"), None), Ok(ip("10.0.0.2")));
    }

    #[test]
    fn adoption_rebuilds_from_statuses_without_double_assignment() {
        let mut a = Allocations::new(pool("10.0.0.1-10.0.0.3"));
        assert!(a.adopt(&holder("a"), ip("10.0.0.2")));
        // Already held, outside the pool, or a second address for the same holder.
        assert!(!a.adopt(&holder("b"), ip("10.0.0.2")));
        assert!(!a.adopt(&holder("b"), ip("192.0.2.1")));
        assert!(!a.adopt(&holder("a"), ip("10.0.0.3")));
        assert_eq!(a.assign(&holder("a"), None), Ok(ip("10.0.0.2")));
        assert_eq!(a.assign(&holder("b"), None), Ok(ip("10.0.0.1")));
        assert_eq!(a.assign(&holder("c"), None), Ok(ip("10.0.0.3")));
    }

    #[test]
    fn retain_frees_what_gone_holders_held() {
        let mut a = Allocations::new(pool("10.0.0.1-10.0.0.3"));
        for n in ["a", "b", "c"] {
            assert!(a.assign(&holder(n), None).is_ok());
        }
        a.retain(|uid| uid != "uid-b");
        assert_eq!(a.held_by("uid-b"), None);
        assert_eq!(a.assign(&holder("d"), None), Ok(ip("10.0.0.2")));
        assert_eq!(a.held_by("uid-a"), Some(ip("10.0.0.1")));
    }
}
