//! The pod's `/etc/hosts`, `/etc/hostname` and `/etc/resolv.conf`, rendered the way the
//! kubelet and containerd write them, so that what a learner sees with
//! `kubectl exec -- cat /etc/hosts` matches a real cluster.

use std::fmt::Write as _;
use std::net::IpAddr;

use crate::runtime::DnsConfig;

/// The header of the hosts file of a pod with its own network.
pub const MANAGED_HOSTS_HEADER: &str = "# Kubernetes-managed hosts file.";
/// The header of the hosts file of a host-network pod (a copy of the node's).
pub const HOST_NETWORK_HOSTS_HEADER: &str = "# Kubernetes-managed hosts file (host network).";

/// `/etc/hosts` of a pod with its own network namespace.
pub fn pod_hosts(pod_ip: &str, hostname: &str, aliases: &[(String, Vec<String>)]) -> String {
    let mut out = String::new();
    out.push_str(MANAGED_HOSTS_HEADER);
    out.push('\n');
    out.push_str("127.0.0.1\tlocalhost\n");
    out.push_str("::1\tlocalhost ip6-localhost ip6-loopback\n");
    out.push_str("fe00::0\tip6-localnet\n");
    out.push_str("fe00::0\tip6-mcastprefix\n");
    out.push_str("fe00::1\tip6-allnodes\n");
    out.push_str("fe00::2\tip6-allrouters\n");
    let _ = writeln!(out, "{pod_ip}\t{hostname}");
    push_host_aliases(&mut out, aliases);
    out
}

/// `/etc/hosts` of a host-network pod: the node's own file under a header, plus aliases.
pub fn host_network_hosts(node_hosts: &str, aliases: &[(String, Vec<String>)]) -> String {
    let mut out = String::new();
    out.push_str(HOST_NETWORK_HOSTS_HEADER);
    out.push('\n');
    out.push_str(node_hosts);
    if !out.ends_with('\n') {
        out.push('\n');
    }
    push_host_aliases(&mut out, aliases);
    out
}

fn push_host_aliases(out: &mut String, aliases: &[(String, Vec<String>)]) {
    if aliases.is_empty() {
        return;
    }
    out.push_str("\n# Entries added by HostAliases.\n");
    for (ip, hostnames) in aliases {
        let _ = writeln!(out, "{ip}\t{}", hostnames.join("\t"));
    }
}

/// `/etc/hostname`.
pub fn hostname_file(hostname: &str) -> String {
    format!("{hostname}\n")
}

/// What a resolv.conf says, in order.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ResolvConf {
    pub nameservers: Vec<String>,
    pub searches: Vec<String>,
    pub options: Vec<String>,
}

/// Reads the `nameserver`, `search`/`domain` and `options` lines of a resolv.conf.
pub fn parse_resolv_conf(text: &str) -> ResolvConf {
    let mut conf = ResolvConf::default();
    for line in text.lines() {
        let line = line.split(['#', ';']).next().unwrap_or_default();
        let mut fields = line.split_whitespace();
        match fields.next() {
            Some("nameserver") => conf.nameservers.extend(fields.next().map(str::to_string)),
            // The last search/domain line wins, as in glibc.
            Some("search") | Some("domain") => conf.searches = fields.map(str::to_string).collect(),
            Some("options") => conf.options.extend(fields.map(str::to_string)),
            _ => {}
        }
    }
    conf
}

/// Whether a nameserver address is a loopback stub (systemd-resolved's 127.0.0.53,
/// dnsmasq's 127.0.1.1, `::1`), which a pod in its own network namespace cannot reach.
pub fn is_loopback_nameserver(server: &str) -> bool {
    server
        .split('%')
        .next()
        .and_then(|s| s.parse::<IpAddr>().ok())
        .is_some_and(|ip| ip.is_loopback())
}

/// The nameservers of the node's resolv.conf a pod can use.
pub fn usable_nameservers(node: &ResolvConf, host_network: bool) -> Vec<String> {
    node.nameservers
        .iter()
        .filter(|s| host_network || !is_loopback_nameserver(s))
        .cloned()
        .collect()
}

/// `/etc/resolv.conf` from the pod's DNS config. Without servers the node's (usable)
/// nameservers are used; an entirely empty config means "the node's resolv.conf"
/// (dnsPolicy `Default`), so its search domains and options come along too.
pub fn resolv_conf(dns: &DnsConfig, node: &ResolvConf, host_network: bool) -> String {
    let entirely_empty =
        dns.servers.is_empty() && dns.searches.is_empty() && dns.options.is_empty();
    let servers = if dns.servers.is_empty() {
        usable_nameservers(node, host_network)
    } else {
        dns.servers.clone()
    };
    let (searches, options) = if entirely_empty {
        (node.searches.clone(), node.options.clone())
    } else {
        (dns.searches.clone(), dns.options.clone())
    };
    let mut out = String::new();
    if !searches.is_empty() {
        let _ = writeln!(out, "search {}", searches.join(" "));
    }
    for server in &servers {
        let _ = writeln!(out, "nameserver {server}");
    }
    if !options.is_empty() {
        let _ = writeln!(out, "options {}", options.join(" "));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn aliases() -> Vec<(String, Vec<String>)> {
        vec![
            (
                "127.0.0.1".into(),
                vec!["foo.local".into(), "bar.local".into()],
            ),
            (
                "10.1.2.3".into(),
                vec!["foo.remote".into(), "bar.remote".into()],
            ),
        ]
    }

    #[test]
    fn pod_hosts_file_is_the_kubelets() {
        let want = "# Kubernetes-managed hosts file.\n\
                    127.0.0.1\tlocalhost\n\
                    ::1\tlocalhost ip6-localhost ip6-loopback\n\
                    fe00::0\tip6-localnet\n\
                    fe00::0\tip6-mcastprefix\n\
                    fe00::1\tip6-allnodes\n\
                    fe00::2\tip6-allrouters\n\
                    10.200.0.5\thostaliases-pod\n\
                    \n\
                    # Entries added by HostAliases.\n\
                    127.0.0.1\tfoo.local\tbar.local\n\
                    10.1.2.3\tfoo.remote\tbar.remote\n";
        assert_eq!(pod_hosts("10.200.0.5", "hostaliases-pod", &aliases()), want);
    }

    #[test]
    fn pod_hosts_without_aliases_has_no_alias_section() {
        let hosts = pod_hosts("10.42.0.2", "web-0", &[]);
        assert!(
            hosts.ends_with("fe00::2\tip6-allrouters\n10.42.0.2\tweb-0\n"),
            "{hosts}"
        );
        assert!(!hosts.contains("HostAliases"));
    }

    #[test]
    fn host_network_hosts_copies_the_nodes_file() {
        let node = "127.0.0.1 localhost\n192.0.2.2 node-1";
        let want = "# Kubernetes-managed hosts file (host network).\n\
                    127.0.0.1 localhost\n\
                    192.0.2.2 node-1\n\
                    \n\
                    # Entries added by HostAliases.\n\
                    10.1.2.3\tdb\n";
        assert_eq!(
            host_network_hosts(node, &[("10.1.2.3".into(), vec!["db".into()])]),
            want
        );
    }

    #[test]
    fn hostname_file_ends_with_a_newline() {
        assert_eq!(hostname_file("web-0"), "web-0\n");
    }

    #[test]
    fn cluster_first_resolv_conf() {
        let dns = DnsConfig {
            servers: vec!["10.96.0.10".into()],
            searches: vec![
                "default.svc.cluster.local".into(),
                "svc.cluster.local".into(),
                "cluster.local".into(),
            ],
            options: vec!["ndots:5".into()],
        };
        let node = parse_resolv_conf("nameserver 192.0.2.53\nsearch example.com\n");
        let want = "search default.svc.cluster.local svc.cluster.local cluster.local\n\
                    nameserver 10.96.0.10\n\
                    options ndots:5\n";
        assert_eq!(resolv_conf(&dns, &node, false), want);
    }

    #[test]
    fn empty_dns_config_copies_the_node_without_loopback_stubs() {
        let node = parse_resolv_conf(
            "# generated\nnameserver 127.0.0.53\nnameserver 10.255.255.53 # upstream\n\
             nameserver ::1\nnameserver 2001:db8::53\nsearch lab.example\noptions edns0 trust-ad\n",
        );
        let want = "search lab.example\n\
                    nameserver 10.255.255.53\n\
                    nameserver 2001:db8::53\n\
                    options edns0 trust-ad\n";
        assert_eq!(resolv_conf(&DnsConfig::default(), &node, false), want);
        // On the host network the stub resolver is reachable and stays.
        assert!(resolv_conf(&DnsConfig::default(), &node, true).contains("nameserver 127.0.0.53\n"));
    }

    #[test]
    fn searches_without_servers_take_the_nodes_nameservers_only() {
        let node =
            parse_resolv_conf("nameserver 192.0.2.53\nsearch node.example\noptions rotate\n");
        let dns = DnsConfig {
            servers: vec![],
            searches: vec!["a.example".into()],
            options: vec![],
        };
        assert_eq!(
            resolv_conf(&dns, &node, false),
            "search a.example\nnameserver 192.0.2.53\n"
        );
    }

    #[test]
    fn loopback_detection() {
        assert!(is_loopback_nameserver("127.0.0.53"));
        assert!(is_loopback_nameserver("127.0.1.1"));
        assert!(is_loopback_nameserver("::1"));
        assert!(!is_loopback_nameserver("10.96.0.10"));
        assert!(!is_loopback_nameserver("fe80::1%eth0"));
        assert!(!is_loopback_nameserver("not-an-ip"));
    }
}
