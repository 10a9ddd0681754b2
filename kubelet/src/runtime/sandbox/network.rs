//! The pod network on the node, as the CNI `bridge` plugin builds it: one Linux bridge
//! holding the podCIDR's first address, and per pod a veth pair whose host end is a bridge
//! port and whose other end is the pod's `eth0`. The kernel is driven behind the narrow
//! [`NetOps`] trait, so the sandbox logic is tested with a fake: [`Rtnetlink`] sends the
//! rtnetlink requests itself (the kubelet's choice); [`IpRoute2`] runs iproute2's `ip`
//! for the same steps (the reference the netlink one is measured and checked against).

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use sha2::{Digest, Sha256};

use super::netns::{self, NsError};
use crate::network::netlink::{Netlink, NetlinkError};

/// The pod's interface name inside its network namespace.
pub const POD_IFNAME: &str = "eth0";

/// Linux's limit on interface names (IFNAMSIZ - 1).
pub const MAX_IFNAME_LEN: usize = 15;

const IP_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("`{command}` failed ({status}): {stderr}")]
    Command {
        command: String,
        status: String,
        stderr: String,
    },
    #[error("running `{command}`: {source}")]
    Spawn {
        command: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("unexpected output of `{command}`: {message}")]
    Output { command: String, message: String },
    #[error(transparent)]
    Netns(#[from] NsError),
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    #[error("link {0} does not exist")]
    NoSuchLink(String),
}

/// The host end of a sandbox's veth pair: `veth` + 8 hex digits of a hash of the bridge
/// and sandbox id (12 bytes), so two labs with their own bridges never collide.
pub fn host_veth_name(bridge: &str, sandbox_id: &str) -> String {
    let digest = Sha256::new()
        .chain_update(bridge.as_bytes())
        .chain_update(b"/")
        .chain_update(sandbox_id.as_bytes())
        .finalize();
    format!("veth{}", hex::encode(&digest[..4]))
}

/// Whether `name` is usable as a Linux interface name.
pub fn valid_ifname(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_IFNAME_LEN
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'/' && b != b':')
}

/// The path of a system command (`ip`, `nft`): the first on PATH or in the sbin
/// directories a daemon's PATH may lack; the bare name if none is found.
pub fn find_command(name: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from(name))
}

/// The network operations the sandbox manager needs (the OS boundary; faked in tests).
pub trait NetOps: Send + Sync {
    /// Creates the bridge if missing, makes `gateway/prefix` its only IPv4 address, sets it up.
    fn ensure_bridge(&self, bridge: &str, gateway: Ipv4Addr, prefix: u8) -> Result<(), NetError>;
    /// Turns on `net.ipv4.ip_forward`, which routing pod traffic off the node needs.
    fn enable_ip_forward(&self) -> Result<(), NetError>;
    /// Creates a veth pair: `host_ifname` on the bridge (hairpin on, up), its peer named
    /// `pod_ifname` inside the network namespace at `netns`. All or nothing.
    fn add_veth(
        &self,
        host_ifname: &str,
        bridge: &str,
        netns: &Path,
        pod_ifname: &str,
    ) -> Result<(), NetError>;
    /// Inside `netns`: `lo` up, `address/prefix` on `pod_ifname`, up, default route via `gateway`.
    fn configure_pod_interface(
        &self,
        netns: &Path,
        pod_ifname: &str,
        address: Ipv4Addr,
        prefix: u8,
        gateway: Ipv4Addr,
    ) -> Result<(), NetError>;
    /// Deletes a link (a veth takes its peer along); fine if it does not exist.
    fn delete_link(&self, ifname: &str) -> Result<(), NetError>;
}

/// [`NetOps`] by iproute2's `ip` command.
#[derive(Debug, Clone)]
pub struct IpRoute2 {
    ip: PathBuf,
}

impl Default for IpRoute2 {
    fn default() -> Self {
        Self::new()
    }
}

impl IpRoute2 {
    /// Finds `ip` on PATH or in the sbin directories a daemon's PATH may lack.
    pub fn new() -> Self {
        IpRoute2 {
            ip: find_command("ip"),
        }
    }

    fn command_line(&self, args: &[&str]) -> String {
        format!("ip {}", args.join(" "))
    }

    /// Runs `ip ARGS` in the calling thread's network namespace; returns stdout.
    fn run(&self, args: &[&str]) -> Result<String, NetError> {
        let output = Command::new(&self.ip)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(|source| NetError::Spawn {
                command: self.command_line(args),
                source,
            })?;
        if !output.status.success() {
            return Err(NetError::Command {
                command: self.command_line(args),
                status: output.status.to_string(),
                stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
            });
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    fn link_exists(&self, ifname: &str) -> Result<bool, NetError> {
        match self.run(&["link", "show", "dev", ifname]) {
            Ok(_) => Ok(true),
            Err(NetError::Command { stderr, .. }) if stderr.contains("does not exist") => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// The IPv4 addresses (address, prefix) on a link.
    fn ipv4_addresses(&self, ifname: &str) -> Result<Vec<(Ipv4Addr, u8)>, NetError> {
        let args = ["-j", "-4", "addr", "show", "dev", ifname];
        let out = self.run(&args)?;
        let bad = |message: String| NetError::Output {
            command: self.command_line(&args),
            message,
        };
        let links: Vec<serde_json::Value> =
            serde_json::from_str(if out.trim().is_empty() { "[]" } else { &out })
                .map_err(|e| bad(e.to_string()))?;
        let mut addresses = Vec::new();
        for info in links
            .iter()
            .filter_map(|l| l.get("addr_info")?.as_array())
            .flatten()
        {
            let local = info
                .get("local")
                .and_then(|v| v.as_str())
                .and_then(|v| v.parse::<Ipv4Addr>().ok());
            let prefix = info
                .get("prefixlen")
                .and_then(|v| v.as_u64())
                .and_then(|v| u8::try_from(v).ok());
            match (local, prefix) {
                (Some(local), Some(prefix)) => addresses.push((local, prefix)),
                _ => return Err(bad(format!("address entry {info}"))),
            }
        }
        Ok(addresses)
    }
}

impl NetOps for IpRoute2 {
    fn ensure_bridge(&self, bridge: &str, gateway: Ipv4Addr, prefix: u8) -> Result<(), NetError> {
        if !self.link_exists(bridge)? {
            tracing::info!(bridge, "creating the pod bridge");
            self.run(&["link", "add", "name", bridge, "type", "bridge"])?;
        }
        let wanted = (gateway, prefix);
        let addresses = self.ipv4_addresses(bridge)?;
        for (address, len) in addresses.iter().filter(|a| **a != wanted) {
            tracing::info!(bridge, address = %address, "removing a stale bridge address");
            self.run(&["addr", "del", &format!("{address}/{len}"), "dev", bridge])?;
        }
        if !addresses.contains(&wanted) {
            self.run(&["addr", "add", &format!("{gateway}/{prefix}"), "dev", bridge])?;
        }
        self.run(&["link", "set", "dev", bridge, "up"])?;
        Ok(())
    }

    fn enable_ip_forward(&self) -> Result<(), NetError> {
        enable_ip_forward()
    }

    fn add_veth(
        &self,
        host_ifname: &str,
        bridge: &str,
        netns: &Path,
        pod_ifname: &str,
    ) -> Result<(), NetError> {
        // A leftover of a crashed attempt would make `link add` fail.
        self.delete_link(host_ifname)?;
        let netns = netns.to_str().ok_or_else(|| NetError::Output {
            command: "ip link add".into(),
            message: format!("network namespace path {} is not UTF-8", netns.display()),
        })?;
        self.run(&[
            "link",
            "add",
            "name",
            host_ifname,
            "type",
            "veth",
            "peer",
            "name",
            pod_ifname,
            "netns",
            netns,
        ])?;
        let attach = || -> Result<(), NetError> {
            self.run(&["link", "set", "dev", host_ifname, "master", bridge])?;
            // Hairpin lets a pod reach itself through a Service address (as kubenet does).
            self.run(&[
                "link",
                "set",
                "dev",
                host_ifname,
                "type",
                "bridge_slave",
                "hairpin",
                "on",
            ])?;
            self.run(&["link", "set", "dev", host_ifname, "up"])?;
            Ok(())
        };
        if let Err(e) = attach() {
            let _ = self.delete_link(host_ifname);
            return Err(e);
        }
        Ok(())
    }

    fn configure_pod_interface(
        &self,
        netns: &Path,
        pod_ifname: &str,
        address: Ipv4Addr,
        prefix: u8,
        gateway: Ipv4Addr,
    ) -> Result<(), NetError> {
        let ip = self.clone();
        let pod_ifname = pod_ifname.to_string();
        netns::in_netns(netns, move || -> Result<(), NetError> {
            ip.run(&["link", "set", "dev", "lo", "up"])?;
            ip.run(&[
                "addr",
                "add",
                &format!("{address}/{prefix}"),
                "dev",
                &pod_ifname,
            ])?;
            ip.run(&["link", "set", "dev", &pod_ifname, "up"])?;
            ip.run(&[
                "route",
                "add",
                "default",
                "via",
                &gateway.to_string(),
                "dev",
                &pod_ifname,
            ])?;
            Ok(())
        })?
    }

    fn delete_link(&self, ifname: &str) -> Result<(), NetError> {
        if !self.link_exists(ifname)? {
            return Ok(());
        }
        match self.run(&["link", "del", "dev", ifname]) {
            Ok(_) => Ok(()),
            // Gone meanwhile (a veth dies with its namespace): that is what we wanted.
            Err(_) if !self.link_exists(ifname)? => Ok(()),
            Err(e) => Err(e),
        }
    }
}

/// Sets `net.ipv4.ip_forward` to 1 unless it is.
fn enable_ip_forward() -> Result<(), NetError> {
    let current = std::fs::read_to_string(IP_FORWARD).map_err(|source| NetError::Io {
        context: format!("reading {IP_FORWARD}"),
        source,
    })?;
    if current.trim() != "1" {
        tracing::info!("enabling net.ipv4.ip_forward");
        std::fs::write(IP_FORWARD, "1").map_err(|source| NetError::Io {
            context: format!("writing {IP_FORWARD}"),
            source,
        })?;
    }
    Ok(())
}

/// [`NetOps`] by rtnetlink requests on a socket per operation: the same links, addresses
/// and routes as [`IpRoute2`] makes, without a process per step.
#[derive(Debug, Default, Clone, Copy)]
pub struct Rtnetlink;

/// Whether a netlink request failed because what it would create already exists.
fn exists(e: &NetlinkError) -> bool {
    e.errno() == Some(libc::EEXIST)
}

fn required_index(netlink: &mut Netlink, name: &str) -> Result<u32, NetError> {
    netlink
        .link_index(name)?
        .ok_or_else(|| NetError::NoSuchLink(name.to_string()))
}

impl NetOps for Rtnetlink {
    fn ensure_bridge(&self, bridge: &str, gateway: Ipv4Addr, prefix: u8) -> Result<(), NetError> {
        let mut netlink = Netlink::open()?;
        let index = match netlink.link_index(bridge)? {
            Some(index) => index,
            None => {
                tracing::info!(bridge, "creating the pod bridge");
                match netlink.add_bridge(bridge) {
                    Err(e) if !exists(&e) => return Err(e.into()),
                    _ => required_index(&mut netlink, bridge)?,
                }
            }
        };
        let wanted = (gateway, prefix);
        let addresses = netlink.ipv4_addresses(index)?;
        for (address, len) in addresses.iter().filter(|a| **a != wanted) {
            tracing::info!(bridge, address = %address, "removing a stale bridge address");
            netlink.delete_address(index, bridge, *address, *len)?;
        }
        if !addresses.contains(&wanted) {
            match netlink.add_address(index, bridge, gateway, prefix) {
                Err(e) if !exists(&e) => return Err(e.into()),
                _ => {}
            }
        }
        netlink.set_up(index, bridge)?;
        Ok(())
    }

    fn enable_ip_forward(&self) -> Result<(), NetError> {
        enable_ip_forward()
    }

    fn add_veth(
        &self,
        host_ifname: &str,
        bridge: &str,
        netns: &Path,
        pod_ifname: &str,
    ) -> Result<(), NetError> {
        // A leftover of a crashed attempt would make the creation fail.
        self.delete_link(host_ifname)?;
        let mut netlink = Netlink::open()?;
        netlink.add_veth(host_ifname, pod_ifname, netns)?;
        let mut attach = || -> Result<(), NetError> {
            let index = required_index(&mut netlink, host_ifname)?;
            let master = required_index(&mut netlink, bridge)?;
            netlink.set_master(index, host_ifname, master)?;
            // Hairpin lets a pod reach itself through a Service address (as kubenet does).
            netlink.set_hairpin(index, host_ifname)?;
            netlink.set_up(index, host_ifname)?;
            Ok(())
        };
        if let Err(e) = attach() {
            let _ = self.delete_link(host_ifname);
            return Err(e);
        }
        Ok(())
    }

    fn configure_pod_interface(
        &self,
        netns: &Path,
        pod_ifname: &str,
        address: Ipv4Addr,
        prefix: u8,
        gateway: Ipv4Addr,
    ) -> Result<(), NetError> {
        let pod_ifname = pod_ifname.to_string();
        netns::in_netns(netns, move || -> Result<(), NetError> {
            let mut netlink = Netlink::open()?;
            let lo = required_index(&mut netlink, "lo")?;
            netlink.set_up(lo, "lo")?;
            let index = required_index(&mut netlink, &pod_ifname)?;
            netlink.add_address(index, &pod_ifname, address, prefix)?;
            netlink.set_up(index, &pod_ifname)?;
            netlink.add_default_route(gateway, index, &pod_ifname)?;
            Ok(())
        })?
    }

    fn delete_link(&self, ifname: &str) -> Result<(), NetError> {
        let mut netlink = Netlink::open()?;
        let Some(index) = netlink.link_index(ifname)? else {
            return Ok(());
        };
        match netlink.delete_link(index, ifname) {
            Ok(()) => Ok(()),
            // Gone meanwhile (a veth dies with its namespace): that is what we wanted.
            Err(_) if netlink.link_index(ifname)?.is_none() => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn veth_names_are_short_stable_and_distinct_per_bridge() {
        let name = host_veth_name("rkube0", "4f1c2a9e-pod");
        assert_eq!(name.len(), 12);
        assert!(name.starts_with("veth"));
        assert!(name[4..].bytes().all(|b| b.is_ascii_hexdigit()));
        assert!(valid_ifname(&name));
        assert_eq!(name, host_veth_name("rkube0", "4f1c2a9e-pod"));
        assert_ne!(name, host_veth_name("rkube1", "4f1c2a9e-pod"));
        assert_ne!(name, host_veth_name("rkube0", "4f1c2a9e-pod2"));
        // A known value, so a change of scheme (which would orphan veths) is noticed.
        assert_eq!(
            host_veth_name("rkube0", "a"),
            format!("veth{}", &hex::encode(Sha256::digest(b"rkube0/a"))[..8])
        );
    }

    #[test]
    fn interface_name_rules() {
        assert!(valid_ifname("rkube0"));
        assert!(valid_ifname("rkt0123456789ab"));
        assert!(!valid_ifname("rkt0123456789abc"));
        assert!(!valid_ifname(""));
        assert!(!valid_ifname("a/b"));
        assert!(!valid_ifname("a b"));
        assert!(!valid_ifname(".."));
    }
}
