//! The fuzzer's fixed set-up: frontends of every kind in both families
//! (ClusterIPs, node ports to local and remote backends, without endpoints
//! rejecting or dropping, source ranges, affinity), the clients that send
//! to them, and how they are written into a loaded datapath (as the agent
//! writes them). Conntrack, affinity and SNAT entries are not written
//! here: the fuzzed flows themselves create them.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use proxy_common::maps::{
    FrontendKey, FrontendKey6, FRONTEND_EMPTY_DROP, FRONTEND_SNAT_REMOTE, FRONTEND_SOURCE_RANGES,
    PROTO_TCP, PROTO_UDP, SCOPE_NODE, SCOPE_POD,
};
use proxy_userspace::sync::entries::FrontendMapKey;

use crate::{datapath::Datapath, nic_netns};

/// Where a frontend is reachable from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// From pods (`pod_ingress`): a ClusterIP.
    Pod,
    /// From outside, at a NIC (`nic_ingress`): a node port.
    Node,
}

/// One frontend as the model reads it.
#[derive(Clone, Debug)]
pub struct Service {
    pub id: u32,
    pub vip: SocketAddr,
    pub proto: u8,
    pub scope: Scope,
    /// Address, port; on this node?
    pub backends: Vec<(SocketAddr, bool)>,
    /// No endpoints: drop rather than reject (a traffic policy Local).
    pub empty_drop: bool,
    /// Remote backends are reached through SNAT (policy Cluster).
    pub snat_remote: bool,
    /// `sessionAffinity: ClientIP`.
    pub affinity: bool,
    /// `loadBalancerSourceRanges`: none means everyone.
    pub ranges: Vec<(IpAddr, u8)>,
}

impl Service {
    pub fn key(&self) -> FrontendMapKey {
        let scope = match self.scope {
            Scope::Pod => SCOPE_POD,
            Scope::Node => SCOPE_NODE,
        };
        let port = self.vip.port().to_be();
        match self.vip.ip() {
            IpAddr::V4(a) => FrontendKey {
                addr: proxy_common::maps::addr_to_net(a),
                port,
                proto: self.proto,
                scope,
            }
            .into(),
            IpAddr::V6(a) => FrontendKey6 {
                addr: proxy_common::addr::addr6_to_net(a),
                port,
                proto: self.proto,
                scope,
            }
            .into(),
        }
    }

    /// Whether `client` may use this frontend.
    pub fn admits(&self, client: IpAddr) -> bool {
        self.ranges.is_empty()
            || self
                .ranges
                .iter()
                .any(|&(p, len)| in_prefix(client, p, len))
    }
}

/// Whether `addr` is inside `prefix`/`len` (of its own family).
pub fn in_prefix(addr: IpAddr, prefix: IpAddr, len: u8) -> bool {
    match (addr, prefix) {
        (IpAddr::V4(a), IpAddr::V4(p)) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
            u32::from(a) & mask == u32::from(p) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(p)) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
            u128::from(a) & mask == u128::from(p) & mask
        }
        _ => false,
    }
}

/// The set-up, both families.
pub struct World {
    pub services: Vec<Service>,
    /// Pods sending from this node's pod interfaces, both families (some
    /// are backends themselves: hairpin).
    pub pod_clients: Vec<IpAddr>,
    /// Hosts outside sending to the NIC, both families.
    pub nic_clients: Vec<IpAddr>,
    /// Addresses that are neither frontends nor backends.
    pub strangers: Vec<IpAddr>,
}

const fn v4(a: u8, b: u8, c: u8, d: u8) -> Ipv4Addr {
    Ipv4Addr::new(a, b, c, d)
}

/// An IPv4 address's IPv6 twin for the fuzzer's addresses: 10.a.b.c is
/// fd00::(10·256+a):(b·256+c), so the remote pods 10.1.2.0/24 land in the
/// NIC namespace's IPv6 remote pods; the node and its clients have their
/// own.
fn twin(addr: Ipv4Addr) -> Ipv6Addr {
    match addr {
        nic_netns::NODE_ADDR => nic_netns::NODE_ADDR6,
        nic_netns::CLIENT => nic_netns::CLIENT6,
        a if a == OUTSIDER => Ipv6Addr::new(0xfd00, 0x50, 0, 0, 0, 0, 0, 0x101),
        a => {
            let [w, x, y, z] = a.octets();
            Ipv6Addr::new(
                0xfd00,
                0,
                0,
                0,
                0,
                0,
                u16::from_be_bytes([w, x]),
                u16::from_be_bytes([y, z]),
            )
        }
    }
}

/// A host on the NIC's subnet outside every source range, with no
/// neighbour entry (replies to it are passed to the stack, unforwarded).
const OUTSIDER: Ipv4Addr = v4(192, 168, 50, 101);

struct Template {
    vip: (Ipv4Addr, u16),
    proto: u8,
    scope: Scope,
    backends: &'static [(Ipv4Addr, u16, bool)],
    flags: u32,
    affinity: bool,
    ranges: &'static [(Ipv4Addr, u8)],
}

const fn t(
    vip: (Ipv4Addr, u16),
    proto: u8,
    scope: Scope,
    backends: &'static [(Ipv4Addr, u16, bool)],
    flags: u32,
) -> Template {
    Template {
        vip,
        proto,
        scope,
        backends,
        flags,
        affinity: false,
        ranges: &[],
    }
}

const NODE: Ipv4Addr = nic_netns::NODE_ADDR;
const TCP: u8 = PROTO_TCP;
const UDP: u8 = PROTO_UDP;
const DROP: u32 = FRONTEND_EMPTY_DROP;
const SNAT: u32 = FRONTEND_SNAT_REMOTE;

const TEMPLATES: &[Template] = &[
    t(
        (v4(10, 96, 0, 10), 80),
        TCP,
        Scope::Pod,
        &[
            (v4(10, 0, 2, 1), 8080, false),
            (v4(10, 0, 2, 2), 8080, false),
            (v4(10, 0, 2, 3), 80, false),
        ],
        0,
    ),
    t(
        (v4(10, 96, 0, 53), 53),
        UDP,
        Scope::Pod,
        &[(v4(10, 0, 3, 1), 5353, false), (v4(10, 0, 3, 2), 53, false)],
        0,
    ),
    t((v4(10, 96, 0, 20), 80), TCP, Scope::Pod, &[], 0),
    t((v4(10, 96, 0, 20), 53), UDP, Scope::Pod, &[], 0),
    t((v4(10, 96, 0, 21), 80), TCP, Scope::Pod, &[], DROP),
    Template {
        ranges: &[(v4(10, 0, 1, 0), 24)],
        ..t(
            (v4(10, 96, 0, 22), 80),
            TCP,
            Scope::Pod,
            &[(v4(10, 0, 2, 4), 8080, false)],
            FRONTEND_SOURCE_RANGES,
        )
    },
    Template {
        affinity: true,
        ..t(
            (v4(10, 96, 0, 23), 80),
            TCP,
            Scope::Pod,
            &[
                (v4(10, 0, 2, 5), 8080, false),
                (v4(10, 0, 2, 6), 8080, false),
                (v4(10, 0, 2, 7), 8080, false),
            ],
            0,
        )
    },
    Template {
        affinity: true,
        ..t(
            (v4(10, 96, 0, 23), 53),
            UDP,
            Scope::Pod,
            &[(v4(10, 0, 3, 3), 53, false), (v4(10, 0, 3, 4), 53, false)],
            0,
        )
    },
    t(
        (NODE, 30080),
        TCP,
        Scope::Node,
        &[(v4(10, 0, 5, 1), 8080, true)],
        0,
    ),
    t(
        (NODE, 30081),
        TCP,
        Scope::Node,
        &[
            (v4(10, 1, 2, 10), 8080, false),
            (v4(10, 1, 2, 11), 8080, false),
        ],
        SNAT,
    ),
    t(
        (NODE, 30053),
        UDP,
        Scope::Node,
        &[(v4(10, 1, 2, 12), 53, false)],
        SNAT,
    ),
    t((NODE, 30090), TCP, Scope::Node, &[], 0),
    t((NODE, 30090), UDP, Scope::Node, &[], 0),
    t((NODE, 30091), TCP, Scope::Node, &[], DROP),
    Template {
        ranges: &[(nic_netns::CLIENT, 32)],
        ..t(
            (NODE, 30092),
            TCP,
            Scope::Node,
            &[(v4(10, 0, 5, 2), 80, true)],
            FRONTEND_SOURCE_RANGES,
        )
    },
    t(
        (NODE, 30093),
        TCP,
        Scope::Node,
        &[
            (v4(10, 0, 5, 3), 8080, true),
            (v4(10, 1, 2, 13), 8080, false),
        ],
        SNAT,
    ),
];

/// IPv6 frontends' ids are their IPv4 twins' plus this.
const V6_IDS: u32 = 100;

impl World {
    pub fn new() -> Self {
        let mut services = Vec::new();
        for (i, tpl) in TEMPLATES.iter().enumerate() {
            for v6 in [false, true] {
                let addr = |a: Ipv4Addr| -> IpAddr {
                    if v6 {
                        twin(a).into()
                    } else {
                        a.into()
                    }
                };
                let ranges = tpl.ranges.iter().map(|&(p, len)| {
                    if v6 {
                        (addr(p), len + 96)
                    } else {
                        (addr(p), len)
                    }
                });
                services.push(Service {
                    id: i as u32 + 1 + if v6 { V6_IDS } else { 0 },
                    vip: SocketAddr::new(addr(tpl.vip.0), tpl.vip.1),
                    proto: tpl.proto,
                    scope: tpl.scope,
                    backends: tpl
                        .backends
                        .iter()
                        .map(|&(a, p, local)| (SocketAddr::new(addr(a), p), local))
                        .collect(),
                    empty_drop: tpl.flags & FRONTEND_EMPTY_DROP != 0,
                    snat_remote: tpl.flags & FRONTEND_SNAT_REMOTE != 0,
                    affinity: tpl.affinity,
                    ranges: ranges.collect(),
                });
            }
        }
        let both = |list: &[Ipv4Addr]| -> Vec<IpAddr> {
            list.iter()
                .flat_map(|&a| [IpAddr::V4(a), IpAddr::V6(twin(a))])
                .collect()
        };
        World {
            services,
            pod_clients: both(&[
                v4(10, 0, 1, 5),
                v4(10, 0, 1, 6),
                v4(10, 0, 4, 7),
                // Backends of the first and the affinity frontend.
                v4(10, 0, 2, 1),
                v4(10, 0, 2, 5),
            ]),
            nic_clients: both(&[nic_netns::CLIENT, OUTSIDER]),
            strangers: both(&[v4(10, 0, 9, 9), v4(192, 168, 77, 1)]),
        }
    }

    /// Writes every frontend into `dp` (in a `nic_netns`, whose NIC is
    /// `nic`), as the agent would.
    pub fn install(&self, dp: &mut Datapath, nic: u32) {
        dp.set_nic_addr(nic, nic_netns::NODE_ADDR);
        dp.set_nic_addr(nic, nic_netns::NODE_ADDR6);
        for s in &self.services {
            let mut flags = 0;
            if s.empty_drop {
                flags |= FRONTEND_EMPTY_DROP;
            }
            if s.snat_remote {
                flags |= FRONTEND_SNAT_REMOTE;
            }
            if !s.ranges.is_empty() {
                flags |= FRONTEND_SOURCE_RANGES;
            }
            let backends: Vec<(IpAddr, u16, bool)> = s
                .backends
                .iter()
                .map(|&(a, local)| (a.ip(), a.port(), local))
                .collect();
            dp.add_frontend_any(s.key(), s.id, flags, &backends);
            if s.affinity {
                dp.set_affinity(s.key(), 10_800);
            }
            for &(prefix, len) in &s.ranges {
                dp.allow_source(s.id, prefix, u32::from(len));
            }
        }
    }

    /// Whether some node frontend has `port` (any address, protocol).
    pub fn node_frontend_port(&self, port: u16) -> bool {
        self.services
            .iter()
            .any(|s| s.scope == Scope::Node && s.vip.port() == port)
    }

    /// The index in `services` of the frontend at `dst` for `proto` in
    /// `scope`.
    pub fn frontend(&self, dst: SocketAddr, proto: u8, scope: Scope) -> Option<usize> {
        self.services
            .iter()
            .position(|s| s.vip == dst && s.proto == proto && s.scope == scope)
    }
}

impl Default for World {
    fn default() -> Self {
        Self::new()
    }
}

/// Whether `addr` lies on the NIC's subnet or behind the other node, where
/// the NIC's FIB finds a route (and, for the client and the other node, a
/// neighbour).
pub fn has_neighbour(addr: IpAddr) -> bool {
    let remote = |a: IpAddr| match a {
        IpAddr::V4(a) => in_prefix(a.into(), v4(10, 1, 2, 0).into(), 24),
        IpAddr::V6(a) => in_prefix(a.into(), twin(v4(10, 1, 2, 0)).into(), 120),
    };
    addr == IpAddr::V4(nic_netns::CLIENT) || addr == IpAddr::V6(nic_netns::CLIENT6) || remote(addr)
}

/// Whether `addr` is routed out of the NIC (its subnet, or behind the
/// other node): a forward there succeeds at least to a missing neighbour.
pub fn routed_out_of_nic(addr: IpAddr) -> bool {
    let subnet = match addr {
        IpAddr::V4(_) => in_prefix(addr, NODE.into(), 24),
        IpAddr::V6(_) => in_prefix(addr, nic_netns::NODE_ADDR6.into(), 64),
    };
    subnet || has_neighbour(addr)
}
