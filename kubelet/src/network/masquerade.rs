//! Egress masquerade of the pod network, as the CNI `bridge` plugin's `ipMasq: true`:
//! traffic from this node's podCIDR to anywhere outside the cluster CIDR (outside the
//! podCIDR when no cluster CIDR is known) leaves with the node's address, while
//! pod-to-pod traffic keeps its pod IPs. One small nftables table per node bridge,
//! `table ip rkube-podnet-<bridge>`, written in one `nft -f -` transaction behind the
//! narrow [`Nft`] trait so that the generated text is tested against golden text.

pub use component_base::nft::{Nft, NftCommand, NftError};

use crate::runtime::sandbox::Ipv4Cidr;

/// Every table this module writes is named this followed by the bridge's name.
pub const TABLE_PREFIX: &str = "rkube-podnet-";

/// Multicast destinations are never masqueraded (the CNI bridge plugin excludes them too).
const MULTICAST: &str = "224.0.0.0/4";

/// The table of `bridge`: `rkube-podnet-<bridge>`, with any character nft would not take
/// in a name (interface names allow more) replaced by `_`.
pub fn table_name(bridge: &str) -> String {
    let safe: String = bridge
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("{TABLE_PREFIX}{safe}")
}

/// The destinations whose traffic from `pod_cidr` is left alone: the cluster CIDR (the
/// podCIDR too, should it lie outside it), or only the podCIDR without a cluster CIDR.
fn unmasqueraded(pod_cidr: Ipv4Cidr, cluster_cidr: Option<Ipv4Cidr>) -> Vec<Ipv4Cidr> {
    match cluster_cidr {
        Some(cluster) if covers(cluster, pod_cidr) => vec![cluster],
        Some(cluster) => vec![cluster, pod_cidr],
        None => vec![pod_cidr],
    }
}

/// Whether `inner` lies entirely inside `outer`.
pub fn covers(outer: Ipv4Cidr, inner: Ipv4Cidr) -> bool {
    outer.prefix() <= inner.prefix() && outer.contains(inner.network())
}

/// The batch that (re)creates the table of `bridge`, replacing whatever it held, in one
/// transaction (`add` first so that `delete` never fails on a missing table).
pub fn ensure_batch(bridge: &str, pod_cidr: Ipv4Cidr, cluster_cidr: Option<Ipv4Cidr>) -> String {
    let table = table_name(bridge);
    let exclusions: String = unmasqueraded(pod_cidr, cluster_cidr)
        .iter()
        .map(|cidr| format!(" ip daddr != {cidr}"))
        .collect();
    format!(
        "add table ip {table}\n\
         delete table ip {table}\n\
         table ip {table} {{\n\
         \tchain postrouting {{\n\
         \t\ttype nat hook postrouting priority srcnat; policy accept;\n\
         \t\tip saddr {pod_cidr}{exclusions} ip daddr != {MULTICAST} masquerade\n\
         \t}}\n\
         }}\n"
    )
}

/// The batch that removes the table of `bridge`, fine if there is none.
pub fn delete_batch(bridge: &str) -> String {
    let table = table_name(bridge);
    format!("add table ip {table}\ndelete table ip {table}\n")
}

/// The masquerade of one node bridge.
#[derive(Clone)]
pub struct Masquerade {
    nft: std::sync::Arc<dyn Nft>,
    bridge: String,
    cluster_cidr: Option<Ipv4Cidr>,
}

impl Masquerade {
    pub fn new(
        nft: std::sync::Arc<dyn Nft>,
        bridge: impl Into<String>,
        cluster_cidr: Option<Ipv4Cidr>,
    ) -> Self {
        Masquerade {
            nft,
            bridge: bridge.into(),
            cluster_cidr,
        }
    }

    /// Makes the table match `pod_cidr` (idempotent: the table is rewritten whole).
    pub fn ensure(&self, pod_cidr: Ipv4Cidr) -> Result<(), NftError> {
        if let Some(cluster) = self.cluster_cidr.filter(|c| !covers(*c, pod_cidr)) {
            tracing::warn!(pod_cidr = %pod_cidr, cluster_cidr = %cluster, "the podCIDR lies outside the cluster CIDR");
        }
        self.nft
            .apply(&ensure_batch(&self.bridge, pod_cidr, self.cluster_cidr))?;
        tracing::info!(table = %table_name(&self.bridge), pod_cidr = %pod_cidr, cluster_cidr = ?self.cluster_cidr.map(|c| c.to_string()), "pod egress masquerade set up");
        Ok(())
    }

    /// Deletes the table (teardown).
    pub fn remove(&self) -> Result<(), NftError> {
        self.nft.apply(&delete_batch(&self.bridge))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use component_base::nft::RecordingNft;
    use std::sync::Arc;

    fn cidr(text: &str) -> Ipv4Cidr {
        text.parse().unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    #[test]
    fn ensure_batch_with_a_cluster_cidr() {
        let golden = "\
add table ip rkube-podnet-rkube0
delete table ip rkube-podnet-rkube0
table ip rkube-podnet-rkube0 {
\tchain postrouting {
\t\ttype nat hook postrouting priority srcnat; policy accept;
\t\tip saddr 10.42.1.0/24 ip daddr != 10.42.0.0/16 ip daddr != 224.0.0.0/4 masquerade
\t}
}
";
        assert_eq!(
            ensure_batch("rkube0", cidr("10.42.1.0/24"), Some(cidr("10.42.0.0/16"))),
            golden
        );
    }

    #[test]
    fn ensure_batch_without_a_cluster_cidr_keeps_only_the_pod_cidr() {
        let golden = "\
add table ip rkube-podnet-lab1
delete table ip rkube-podnet-lab1
table ip rkube-podnet-lab1 {
\tchain postrouting {
\t\ttype nat hook postrouting priority srcnat; policy accept;
\t\tip saddr 10.42.0.0/24 ip daddr != 10.42.0.0/24 ip daddr != 224.0.0.0/4 masquerade
\t}
}
";
        assert_eq!(ensure_batch("lab1", cidr("10.42.0.7/24"), None), golden);
    }

    #[test]
    fn a_pod_cidr_outside_the_cluster_cidr_is_still_excluded() {
        let batch = ensure_batch("rkube0", cidr("10.99.0.0/24"), Some(cidr("10.42.0.0/16")));
        assert!(
            batch.contains(
                "ip saddr 10.99.0.0/24 ip daddr != 10.42.0.0/16 ip daddr != 10.99.0.0/24 ip daddr != 224.0.0.0/4 masquerade"
            ),
            "{batch}"
        );
    }

    #[test]
    fn delete_batch_golden() {
        assert_eq!(
            delete_batch("rkube0"),
            "add table ip rkube-podnet-rkube0\ndelete table ip rkube-podnet-rkube0\n"
        );
    }

    #[test]
    fn table_names_are_safe_for_nft() {
        assert_eq!(table_name("rkube0"), "rkube-podnet-rkube0");
        assert_eq!(table_name("br-x.1_y"), "rkube-podnet-br-x.1_y");
        assert_eq!(table_name("a@b;c"), "rkube-podnet-a_b_c");
    }

    #[test]
    fn covers_is_containment() {
        assert!(covers(cidr("10.42.0.0/16"), cidr("10.42.3.0/24")));
        assert!(covers(cidr("10.42.0.0/16"), cidr("10.42.0.0/16")));
        assert!(!covers(cidr("10.42.0.0/24"), cidr("10.42.0.0/16")));
        assert!(!covers(cidr("10.42.0.0/16"), cidr("10.43.0.0/24")));
    }

    #[test]
    fn masquerade_applies_and_removes_through_nft() {
        let nft = Arc::new(RecordingNft::default());
        let masq = Masquerade::new(nft.clone(), "rkube0", Some(cidr("10.42.0.0/16")));
        assert!(masq.ensure(cidr("10.42.1.0/24")).is_ok());
        assert!(masq.remove().is_ok());
        assert_eq!(
            nft.batches(),
            [
                ensure_batch("rkube0", cidr("10.42.1.0/24"), Some(cidr("10.42.0.0/16"))),
                delete_batch("rkube0")
            ]
        );
        let failing = Masquerade::new(Arc::new(RecordingNft::failing(1)), "rkube0", None);
        let err = failing
            .ensure(cidr("10.42.1.0/24"))
            .err()
            .map(|e| e.to_string());
        assert_eq!(
            err.as_deref(),
            Some("`nft -f -` failed (exit status: 1): injected failure")
        );
    }
}
