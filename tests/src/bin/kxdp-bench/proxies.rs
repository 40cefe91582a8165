//! The mechanisms the benchmarks compare: no proxy, kxdp, and kube-proxy's
//! modes, each with the tool that programs it.

use super::*;

/// How the client pod reaches the backends in one phase of the benchmark.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Proxy {
    /// No Service: the client connects to a backend's pod IP.
    None,
    /// kxdp as it runs by default: pods' sockets sent to a backend at
    /// connect (`--socket-lb all`).
    Kxdp,
    /// kxdp translating pods' packets (`--socket-lb host`).
    KxdpPerPacket,
    /// kube-proxy's iptables mode through `iptables-nft-restore`
    /// (Debian's default iptables: rules run in nf_tables).
    IptablesNft,
    /// kube-proxy's iptables mode through `iptables-legacy-restore` (x_tables).
    IptablesLegacy,
    /// kube-proxy's nftables mode through `nft -f`.
    Nftables,
}

impl Proxy {
    pub(crate) const ALL: [Proxy; 6] = [
        Proxy::None,
        Proxy::Kxdp,
        Proxy::KxdpPerPacket,
        Proxy::IptablesNft,
        Proxy::IptablesLegacy,
        Proxy::Nftables,
    ];
    /// The kube-proxy modes, programmed by the tool kube-proxy runs.
    pub(crate) const KUBE_PROXY: [Proxy; 3] =
        [Proxy::IptablesNft, Proxy::IptablesLegacy, Proxy::Nftables];

    pub(crate) fn label(self) -> &'static str {
        match self {
            Proxy::None => "no proxy (pod IP)",
            Proxy::Kxdp => "kxdp",
            Proxy::KxdpPerPacket => "kxdp per packet (--socket-lb host)",
            Proxy::IptablesNft => "kube-proxy iptables (nft backend)",
            Proxy::IptablesLegacy => "kube-proxy iptables (legacy)",
            Proxy::Nftables => "kube-proxy nftables",
        }
    }

    /// The command that loads this mode's ruleset from stdin.
    pub(crate) fn loader(self) -> &'static [&'static str] {
        match self {
            Proxy::IptablesNft => &["iptables-nft-restore"],
            Proxy::IptablesLegacy => &["iptables-legacy-restore"],
            Proxy::Nftables => &["nft", "-f", "-"],
            Proxy::None | Proxy::Kxdp | Proxy::KxdpPerPacket => &[],
        }
    }

    /// `loader` for a partial update that keeps what it does not name.
    pub(crate) fn partial_loader(self) -> &'static [&'static str] {
        match self {
            Proxy::IptablesNft => &["iptables-nft-restore", "--noflush"],
            Proxy::IptablesLegacy => &["iptables-legacy-restore", "--noflush"],
            other => other.loader(),
        }
    }

    /// This mode's complete ruleset for `services`. In nftables mode only
    /// the Services `numgen` accepts pick endpoints with kube-proxy's inline
    /// `numgen` map; the others go to their first endpoint: the kernel names
    /// each inline map by scanning all the table's sets, so N of them take
    /// O(N²) to load (measured in part 3), while a packet to one Service never
    /// enters another Service's chain.
    pub(crate) fn ruleset(
        self,
        services: &[KpService],
        numgen: &dyn Fn(&KpService) -> bool,
    ) -> String {
        match self {
            Proxy::IptablesNft | Proxy::IptablesLegacy => iptables_ruleset(services, &KP_CONFIG),
            Proxy::Nftables => nftables_ruleset(services, numgen, &KP_CONFIG),
            Proxy::None | Proxy::Kxdp | Proxy::KxdpPerPacket => String::new(),
        }
    }

    /// Removes this mode's rules from `netns`.
    pub(crate) fn flush(self, netns: &str) -> anyhow::Result<()> {
        match self {
            // Restoring empty tables deletes every rule and user chain.
            Proxy::IptablesLegacy => {
                load_rules(netns, self.loader(), "*nat\nCOMMIT\n*filter\nCOMMIT\n").map(drop)
            }
            // iptables-nft keeps its rules in the nftables ruleset.
            Proxy::IptablesNft | Proxy::Nftables => flush_rules(netns),
            Proxy::None | Proxy::Kxdp | Proxy::KxdpPerPacket => Ok(()),
        }
    }
}

/// The mini node's pods are 10.200.i.2; Services live in 10.96.0.0/12.
pub(crate) const KP_CONFIG: KpConfig = KpConfig {
    cluster_cidr: "10.200.0.0/16",
    service_cidr: "10.96.0.0/12",
};
