//! Host-local IP address management for pods: one file per allocated address, named after
//! the address and holding the owning sandbox's id (as the CNI `host-local` plugin keeps
//! them under `/var/lib/cni/networks/<net>/`), so a restarted kubelet never hands out an
//! address that a living pod still uses.

use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// File in the IPAM directory remembering the last address handed out, so that allocation
/// goes round the range instead of re-using a just-released address at once.
const LAST_RESERVED_FILE: &str = "last_reserved_ip";

#[derive(Debug, thiserror::Error)]
pub enum IpamError {
    #[error("invalid podCIDR {cidr:?}: {reason}")]
    InvalidCidr { cidr: String, reason: String },
    #[error("no free IP address left in {cidr}")]
    Exhausted { cidr: Ipv4Cidr },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
}

fn io_error(context: impl Into<String>) -> impl FnOnce(io::Error) -> IpamError {
    let context = context.into();
    move |source| IpamError::Io { context, source }
}

/// An IPv4 network in CIDR notation (`10.42.0.0/24`); host bits are cleared on parse.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Ipv4Cidr {
    network: Ipv4Addr,
    prefix: u8,
}

impl Ipv4Cidr {
    /// The widest prefix that still leaves room for a gateway and one pod.
    pub const MAX_PREFIX: u8 = 30;

    pub fn new(address: Ipv4Addr, prefix: u8) -> Result<Self, IpamError> {
        if prefix > Self::MAX_PREFIX {
            return Err(IpamError::InvalidCidr {
                cidr: format!("{address}/{prefix}"),
                reason: format!(
                    "prefix must be at most /{} to hold a gateway and pods",
                    Self::MAX_PREFIX
                ),
            });
        }
        let network = Ipv4Addr::from(u32::from(address) & Self::mask(prefix));
        Ok(Ipv4Cidr { network, prefix })
    }

    fn mask(prefix: u8) -> u32 {
        if prefix == 0 {
            0
        } else {
            u32::MAX << (32 - u32::from(prefix))
        }
    }

    pub fn network(&self) -> Ipv4Addr {
        self.network
    }

    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    pub fn broadcast(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) | !Self::mask(self.prefix))
    }

    /// The first host address: the node bridge's, the pods' default gateway.
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) + 1)
    }

    /// The first and last addresses pods may get (after the gateway, before broadcast).
    pub fn pod_range(&self) -> (Ipv4Addr, Ipv4Addr) {
        (
            Ipv4Addr::from(u32::from(self.network) + 2),
            Ipv4Addr::from(u32::from(self.broadcast()) - 1),
        )
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & Self::mask(self.prefix) == u32::from(self.network)
    }
}

impl fmt::Display for Ipv4Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

impl FromStr for Ipv4Cidr {
    type Err = IpamError;

    fn from_str(text: &str) -> Result<Self, IpamError> {
        let invalid = |reason: &str| IpamError::InvalidCidr {
            cidr: text.to_string(),
            reason: reason.to_string(),
        };
        let (address, prefix) = text
            .trim()
            .split_once('/')
            .ok_or_else(|| invalid("expected ADDRESS/PREFIX"))?;
        let address: Ipv4Addr = address
            .parse()
            .map_err(|_| invalid("not an IPv4 address"))?;
        let prefix: u8 = prefix
            .parse()
            .map_err(|_| invalid("prefix is not a number"))?;
        if prefix > 32 {
            return Err(invalid("prefix is larger than 32"));
        }
        Ipv4Cidr::new(address, prefix).map_err(|e| match e {
            IpamError::InvalidCidr { reason, .. } => invalid(&reason),
            other => other,
        })
    }
}

/// The allocation records of one node, in one directory.
#[derive(Debug, Clone)]
pub struct Ipam {
    dir: PathBuf,
}

impl Ipam {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Ipam { dir: dir.into() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Every recorded allocation: address → owner. Unreadable records count as taken.
    pub fn allocations(&self) -> Result<BTreeMap<Ipv4Addr, String>, IpamError> {
        let mut allocations = BTreeMap::new();
        let entries = match fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(allocations),
            Err(e) => return Err(io_error(format!("reading {}", self.dir.display()))(e)),
        };
        for entry in entries {
            let entry = entry.map_err(io_error(format!("reading {}", self.dir.display())))?;
            let Some(ip) = entry
                .file_name()
                .to_str()
                .and_then(|name| name.parse::<Ipv4Addr>().ok())
            else {
                continue;
            };
            let owner = match fs::read_to_string(entry.path()) {
                Ok(owner) => owner.trim().to_string(),
                Err(e) => {
                    tracing::warn!(ip = %ip, error = %e, "unreadable IPAM record; keeping the address reserved");
                    String::new()
                }
            };
            allocations.insert(ip, owner);
        }
        Ok(allocations)
    }

    /// Gives `owner` an address in `cidr`: the one it already holds, or the next free one.
    pub fn allocate(&self, cidr: &Ipv4Cidr, owner: &str) -> Result<Ipv4Addr, IpamError> {
        let allocations = self.allocations()?;
        if let Some((ip, _)) = allocations
            .iter()
            .find(|(ip, o)| o.as_str() == owner && cidr.contains(**ip))
        {
            return Ok(*ip);
        }
        fs::create_dir_all(&self.dir)
            .map_err(io_error(format!("creating {}", self.dir.display())))?;
        let (first, last) = cidr.pod_range();
        let (first, last) = (u32::from(first), u32::from(last));
        let start = match self.last_reserved() {
            Some(ip) if cidr.contains(ip) && u32::from(ip) >= first && u32::from(ip) < last => {
                u32::from(ip) + 1
            }
            _ => first,
        };
        let candidates = (start..=last).chain(first..start);
        for candidate in candidates.map(Ipv4Addr::from) {
            if allocations.contains_key(&candidate) {
                continue;
            }
            if self.reserve(candidate, owner)? {
                if let Err(e) = fs::write(self.dir.join(LAST_RESERVED_FILE), candidate.to_string())
                {
                    tracing::warn!(error = %e, "cannot record the last reserved IP");
                }
                return Ok(candidate);
            }
        }
        Err(IpamError::Exhausted { cidr: *cidr })
    }

    /// Writes the record for `ip` unless it exists (`false` then: someone was faster).
    fn reserve(&self, ip: Ipv4Addr, owner: &str) -> Result<bool, IpamError> {
        let path = self.dir.join(ip.to_string());
        let mut file = match fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
        {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(false),
            Err(e) => return Err(io_error(format!("creating {}", path.display()))(e)),
        };
        if let Err(e) = file
            .write_all(owner.as_bytes())
            .and_then(|()| file.sync_all())
        {
            let _ = fs::remove_file(&path);
            return Err(io_error(format!("writing {}", path.display()))(e));
        }
        Ok(true)
    }

    fn last_reserved(&self) -> Option<Ipv4Addr> {
        fs::read_to_string(self.dir.join(LAST_RESERVED_FILE))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// Frees every address `owner` holds; returns them.
    pub fn release_owner(&self, owner: &str) -> Result<Vec<Ipv4Addr>, IpamError> {
        let mut released = Vec::new();
        for (ip, held_by) in self.allocations()? {
            if held_by == owner {
                self.release(ip)?;
                released.push(ip);
            }
        }
        Ok(released)
    }

    /// Frees one address (no error if it was free).
    pub fn release(&self, ip: Ipv4Addr) -> Result<(), IpamError> {
        let path = self.dir.join(ip.to_string());
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_error(format!("removing {}", path.display()))(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidr(text: &str) -> Ipv4Cidr {
        text.parse().unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    #[test]
    fn parses_and_normalizes_cidrs() {
        let c = cidr("10.42.0.7/24");
        assert_eq!(c.to_string(), "10.42.0.0/24");
        assert_eq!(c.gateway(), Ipv4Addr::new(10, 42, 0, 1));
        assert_eq!(c.broadcast(), Ipv4Addr::new(10, 42, 0, 255));
        assert_eq!(
            c.pod_range(),
            (Ipv4Addr::new(10, 42, 0, 2), Ipv4Addr::new(10, 42, 0, 254))
        );
        assert!(c.contains(Ipv4Addr::new(10, 42, 0, 200)));
        assert!(!c.contains(Ipv4Addr::new(10, 42, 1, 2)));
        assert_eq!(
            cidr("10.244.0.0/16").pod_range().1,
            Ipv4Addr::new(10, 244, 255, 254)
        );
        for bad in [
            "10.42.0.0",
            "10.42.0.0/33",
            "10.42.0.0/31",
            "fd00::/64",
            "x/24",
            "10.42.0.0/x",
        ] {
            assert!(bad.parse::<Ipv4Cidr>().is_err(), "{bad} should not parse");
        }
    }

    #[test]
    fn allocates_in_order_and_is_idempotent_per_owner() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let ipam = Ipam::new(dir.path().join("ipam"));
        let c = cidr("10.42.0.0/24");
        assert_eq!(ipam.allocate(&c, "a")?, Ipv4Addr::new(10, 42, 0, 2));
        assert_eq!(ipam.allocate(&c, "b")?, Ipv4Addr::new(10, 42, 0, 3));
        assert_eq!(ipam.allocate(&c, "a")?, Ipv4Addr::new(10, 42, 0, 2));
        assert_eq!(fs::read_to_string(dir.path().join("ipam/10.42.0.3"))?, "b");
        Ok(())
    }

    #[test]
    fn allocations_survive_a_restart() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let c = cidr("10.42.0.0/24");
        let first = Ipam::new(dir.path());
        first.allocate(&c, "a")?;
        first.allocate(&c, "b")?;
        let second = Ipam::new(dir.path());
        assert_eq!(second.allocate(&c, "c")?, Ipv4Addr::new(10, 42, 0, 4));
        let owners: Vec<String> = second.allocations()?.into_values().collect();
        assert_eq!(owners, ["a", "b", "c"]);
        Ok(())
    }

    #[test]
    fn release_frees_and_allocation_goes_round_the_range() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let ipam = Ipam::new(dir.path());
        let c = cidr("10.42.0.0/29"); // pods: .2 ..= .6
        for owner in ["a", "b", "c"] {
            ipam.allocate(&c, owner)?;
        }
        assert_eq!(ipam.release_owner("a")?, [Ipv4Addr::new(10, 42, 0, 2)]);
        assert_eq!(ipam.release_owner("a")?, Vec::<Ipv4Addr>::new());
        // The just-freed .2 is not handed out again before the rest of the range.
        assert_eq!(ipam.allocate(&c, "d")?, Ipv4Addr::new(10, 42, 0, 5));
        assert_eq!(ipam.allocate(&c, "e")?, Ipv4Addr::new(10, 42, 0, 6));
        assert_eq!(ipam.allocate(&c, "f")?, Ipv4Addr::new(10, 42, 0, 2));
        Ok(())
    }

    #[test]
    fn exhaustion_is_an_error() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let ipam = Ipam::new(dir.path());
        let c = cidr("10.42.0.0/30"); // one pod address: .2
        assert_eq!(ipam.allocate(&c, "a")?, Ipv4Addr::new(10, 42, 0, 2));
        let err = ipam.allocate(&c, "b").err().map(|e| e.to_string());
        assert_eq!(
            err.as_deref(),
            Some("no free IP address left in 10.42.0.0/30")
        );
        ipam.release_owner("a")?;
        assert_eq!(ipam.allocate(&c, "b")?, Ipv4Addr::new(10, 42, 0, 2));
        Ok(())
    }

    #[test]
    fn an_unreadable_or_foreign_record_keeps_its_address_taken() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        fs::write(dir.path().join("10.42.0.2"), "")?;
        let ipam = Ipam::new(dir.path());
        assert_eq!(
            ipam.allocate(&cidr("10.42.0.0/24"), "a")?,
            Ipv4Addr::new(10, 42, 0, 3)
        );
        Ok(())
    }
}
