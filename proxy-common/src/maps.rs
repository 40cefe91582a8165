//! Keys and values of the BPF maps (docs/ARCHITECTURE.md, "Maps").

pub use crate::addr::{addr_from_net, addr_to_net, Addr, Addr6};

/// IP protocol numbers the datapath translates.
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
pub const PROTO_SCTP: u8 = 132;

/// `FrontendKey::scope` of a frontend reached from pods (tc on pod
/// interfaces): ClusterIPs, and external addresses short-circuited to the
/// Service as kube-proxy does.
pub const SCOPE_POD: u8 = 0;
/// `FrontendKey::scope` of a frontend reached from outside through a NIC
/// (XDP): a NodePort on each node address, LoadBalancer ingress IPs and
/// `externalIPs` on the service port.
pub const SCOPE_NODE: u8 = 1;

/// Source ports the NIC program hands out when it SNATs a flow to a remote
/// backend: above Linux's default ephemeral range (32768–60999), so they never
/// collide with the node's own connections, and cheap to recognise.
pub const SNAT_PORT_MIN: u16 = 61_000;
pub const SNAT_PORT_MAX: u16 = 65_535;

/// A network-order `u16` as the packet holds it.
pub fn port_to_net(port: u16) -> u16 {
    port.to_be()
}

/// The inverse of [`port_to_net`].
pub fn port_from_net(port: u16) -> u16 {
    u16::from_be(port)
}

macro_rules! map_type {
    ($(#[$meta:meta])* pub struct $name:ident { $($body:tt)* }) => {
        $(#[$meta])*
        #[repr(C)]
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
        #[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable, Hash, PartialOrd, Ord))]
        pub struct $name { $($body)* }

        #[cfg(feature = "user")]
        // SAFETY: repr(C), every field is plain data, and bytemuck::Pod above
        // proves there is no padding.
        unsafe impl aya::Pod for $name {}
    };
}

/// A map type of both families: generic over the address (`u32` or
/// [`Addr6`]), with an alias for each (`$v4`, `$v6`), and with neither
/// layout holding a hidden padding byte (checked at compile time: the
/// `Pod` impls rely on it).
macro_rules! family_map_type {
    ($(#[$meta:meta])* pub struct $name:ident<A> {
        $($(#[$fmeta:meta])* pub $field:ident: $ty:ty,)*
    } $(#[$v4meta:meta])* $v4:ident, $(#[$v6meta:meta])* $v6:ident) => {
        $(#[$meta])*
        #[repr(C)]
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
        #[cfg_attr(feature = "user", derive(Hash, PartialOrd, Ord))]
        pub struct $name<A> { $($(#[$fmeta])* pub $field: $ty,)* }

        $(#[$v4meta])*
        pub type $v4 = $name<u32>;
        $(#[$v6meta])*
        pub type $v6 = $name<Addr6>;

        impl<A: Addr> $name<A> {
            const UNPADDED: bool =
                core::mem::size_of::<Self>() == 0 $(+ core::mem::size_of::<$ty>())*;
        }
        const _: () = assert!($v4::UNPADDED && $v6::UNPADDED);

        // SAFETY (each impl below): repr(C), every field is plain data,
        // and the assertion above proves neither layout has padding.
        #[cfg(feature = "user")]
        const _: () = {
            // SAFETY: as above.
            unsafe impl bytemuck::Zeroable for $v4 {}
            // SAFETY: as above.
            unsafe impl bytemuck::Pod for $v4 {}
            // SAFETY: as above.
            unsafe impl aya::Pod for $v4 {}
            // SAFETY: as above.
            unsafe impl bytemuck::Zeroable for $v6 {}
            // SAFETY: as above.
            unsafe impl bytemuck::Pod for $v6 {}
            // SAFETY: as above.
            unsafe impl aya::Pod for $v6 {}
        };
    };
}

family_map_type! {
    /// `FRONTENDS` (`FRONTENDS6`) key: a frontend the datapath answers for.
    pub struct FrontendKeyOf<A> {
        /// Virtual address, network order.
        pub addr: A,
        /// Service port, network order.
        pub port: u16,
        pub proto: u8,
        /// Where the frontend is reachable from, e.g. [`SCOPE_POD`].
        pub scope: u8,
    }
    /// An IPv4 frontend.
    FrontendKey,
    /// An IPv6 frontend.
    FrontendKey6
}

map_type! {
    /// `FRONTENDS` value.
    pub struct FrontendValue {
        /// Index into `MAGLEV_INDEX` and `STATS`; stable while the frontend exists.
        pub id: u32,
        /// Slots of the frontend's Maglev table; 0 means no backend. The
        /// datapath indexes the table by the size the table itself holds
        /// ([`maglev_layout::HEADER`]), so a table of another size replaces
        /// the old one by a single switch of its `MAGLEV_INDEX` entry.
        pub table_size: u32,
        /// `FRONTEND_*` bits.
        pub flags: u32,
        /// Seconds of inactivity after which ClientIP affinity lapses.
        pub affinity_timeout: u32,
    }
}

/// `FrontendValue::flags`: `sessionAffinity: ClientIP`.
pub const FRONTEND_AFFINITY_CLIENT_IP: u32 = 1;
/// `FrontendValue::flags`: with no slot, drop silently instead of rejecting
/// (a traffic policy `Local` with no endpoint on this node, as kube-proxy).
pub const FRONTEND_EMPTY_DROP: u32 = 2;
/// `FrontendValue::flags`: `externalTrafficPolicy: Cluster` on a node
/// frontend: a flow to a backend on another node is SNATed to this node.
pub const FRONTEND_SNAT_REMOTE: u32 = 4;
/// `FrontendValue::flags`: only clients in `SOURCE_RANGES` for this frontend
/// id may use it (`loadBalancerSourceRanges`).
pub const FRONTEND_SOURCE_RANGES: u32 = 8;

family_map_type! {
    /// `BACKEND_SLOTS` (`BACKEND_SLOTS6`) value, indexed by backend id:
    /// backend ids are one space over both families, each id's backend in
    /// the array of its family.
    pub struct BackendValueOf<A> {
        /// Pod (or external) address, network order.
        pub addr: A,
        /// Target port, network order.
        pub port: u16,
        /// `BACKEND_*` bits.
        pub flags: u8,
        pub _pad: u8,
    }
    BackendValue,
    BackendValue6
}

/// `BackendValue::flags`: the endpoint runs on this node.
pub const BACKEND_LOCAL: u8 = 1;

/// `BPF_F_MMAPABLE`: the Maglev arena and its index are written by the
/// agent through `mmap`, without a syscall per entry.
pub const MAGLEV_ARENA_FLAGS: u32 = 0x400;

/// `PORT_ROLES`: which ports some frontend or backend uses, one bit per
/// port and role, so a packet that no lookup could match skips the hash
/// lookups (a frontend's by its destination port, a reply's conntrack
/// entry by its source port). A word of 64 ports per entry, the roles one
/// after another.
pub mod port_roles {
    /// Destination ports of pod-scope frontends.
    pub const POD_FRONTEND: u32 = 0;
    /// Destination ports of node-scope frontends (at the NICs).
    pub const NODE_FRONTEND: u32 = 1;
    /// Ports of backends: the source port of every reply to translate.
    pub const BACKEND: u32 = 2;
    pub const ROLES: u32 = 3;
    /// Words per role: 65,536 ports, 64 to a word.
    pub const WORDS_PER_ROLE: u32 = 1024;
    /// Entries of `PORT_ROLES`.
    pub const WORDS: u32 = ROLES * WORDS_PER_ROLE;

    /// The word holding `port` (host order) for `role`, and its bit there.
    #[inline(always)]
    pub const fn position(role: u32, port: u16) -> (u32, u64) {
        let port = port as u32;
        (role * WORDS_PER_ROLE + port / 64, 1 << (port % 64))
    }
}

/// `MAGLEV_INDEX` value of a frontend without a table.
pub const NO_TABLE: u64 = 0;

/// Layout of a Maglev table, a block of 64-bit entries in `MAGLEV_ARENA`
/// starting at the offset `MAGLEV_INDEX` gives for its frontend (offsets
/// below are relative to the block; an array spends 8 bytes per entry
/// whatever the value size, so slots are packed). A table of M slots keeps
/// room for C member backend ids, each once, and each slot as a 16-bit
/// index into them; C leaves room to add backends in place.
pub mod maglev_layout {
    /// Entry 0: M in the low 32 bits, C in the high 32 bits.
    pub const HEADER: u32 = 0;
    /// Member `k`'s backend id: entry `MEMBERS_START + k / 2`, bits `32 · (k % 2)`.
    pub const MEMBERS_START: u32 = 1;

    /// Slot `s`'s member index: entry `slots_start(C) + s / 4`, bits `16 · (s % 4)`.
    #[inline(always)]
    pub const fn slots_start(capacity: u32) -> u32 {
        MEMBERS_START + capacity.div_ceil(2)
    }

    /// Entries of a table of `size` slots with room for `capacity` members.
    #[inline(always)]
    pub const fn entries(size: u32, capacity: u32) -> u32 {
        slots_start(capacity) + size.div_ceil(4)
    }
}

family_map_type! {
    /// `CONNTRACK` (`CONNTRACK6`) key: a flow's 5-tuple as seen in the
    /// packet, network order.
    pub struct FlowKeyOf<A> {
        pub src_addr: A,
        pub dst_addr: A,
        pub src_port: u16,
        pub dst_port: u16,
        pub proto: u8,
        pub _pad: [u8; 3],
    }
    FlowKey,
    FlowKey6
}

/// `CtEntry::direction` of a client → VIP entry: rewrite the destination.
pub const CT_FORWARD: u8 = 0;
/// `CtEntry::direction` of a backend → client entry: rewrite the source.
pub const CT_REPLY: u8 = 1;

/// `CtEntry::flags`: the flow is SNATed as well (remote NodePort backend);
/// `snat_addr`/`snat_port` hold the other end's translation.
pub const CT_SNAT: u8 = 1;
/// `CtEntry::flags`: the client came in through a NIC (NodePort, external
/// address) and the backend is a local pod: its reply gets the frontend
/// back as source where it leaves the pod (`pod_ingress`).
pub const CT_FROM_NIC: u8 = 2;
/// `CtEntry::flags`: a pod reached itself through a Service (hairpin). It
/// must not see its own address as the source, so the VIP stands in for it
/// (with the client's port): forward, `snat_*` is that stand-in; reply,
/// `snat_*` is the pod's own end to restore as destination.
pub const CT_HAIRPIN: u8 = 8;
/// `CtEntry::flags`: a FIN or RST of this SNATed TCP flow was seen; its
/// SNAT port may be reused soon ([`SNAT_CLOSED_REUSE_S`]).
pub const CT_CLOSING: u8 = 4;

/// Seconds without a packet after which a SNATed flow's port may be handed
/// to a new flow that needs it: UDP, TCP, and TCP after a FIN or RST. Ports
/// are reclaimed only on demand, so an idle flow keeps its port as long as
/// nobody needs it.
pub const SNAT_UDP_REUSE_S: u32 = 60;
pub const SNAT_TCP_REUSE_S: u32 = 3_600;
pub const SNAT_CLOSED_REUSE_S: u32 = 10;

family_map_type! {
    /// `CONNTRACK` (`CONNTRACK6`) value: how to translate the packet
    /// matching the key.
    pub struct CtEntryOf<A> {
        /// Forward: the backend address. Reply: the VIP. Network order.
        pub nat_addr: A,
        /// Forward: the backend port. Reply: the service port. Network order.
        pub nat_port: u16,
        /// [`CT_FORWARD`] or [`CT_REPLY`].
        pub direction: u8,
        /// `CT_*` bits.
        pub flags: u8,
        pub frontend_id: u32,
        pub backend_id: u32,
        /// With [`CT_SNAT`]: forward, the node address and port the backend
        /// sees as the client; reply, the client to restore as destination.
        pub snat_addr: A,
        pub snat_port: u16,
        pub _pad: u16,
        /// With [`CT_SNAT`]: when a packet of this direction last passed,
        /// on the datapath's clock (`kernel::clock_s`).
        pub last_seen: u32,
    }
    CtEntry,
    CtEntry6
}

family_map_type! {
    /// `SOURCE_RANGES` (`SOURCE_RANGES6`) LPM-trie data: a client prefix
    /// allowed to reach the frontend with id `frontend_id`. The trie's
    /// prefix length counts the 32 bits of `frontend_id` plus the CIDR's
    /// length, so a lookup with (frontend id, client address) at 32 plus
    /// the address's bits finds the longest match.
    pub struct SourceRangeOf<A> {
        /// Big-endian, so the id is the leading bytes the trie compares first.
        pub frontend_id_be: u32,
        /// Network order.
        pub addr: A,
    }
    SourceRange,
    SourceRange6
}

family_map_type! {
    /// `AFFINITY` (`AFFINITY6`) key: a client of a frontend with
    /// `sessionAffinity: ClientIP`.
    pub struct AffinityKeyOf<A> {
        pub frontend_id: u32,
        /// Network order.
        pub client_addr: A,
    }
    AffinityKey,
    AffinityKey6
}

map_type! {
    /// `affinity` value: where the client's connections go.
    pub struct AffinityValue {
        pub backend_id: u32,
        /// The backend's member index in the frontend's Maglev table: the
        /// affinity holds while that member is still this backend, i.e. it
        /// is still in the service (a rewritten table keeps every remaining
        /// backend's index).
        pub member: u32,
        /// When the client last opened a connection, on the datapath's
        /// clock (`kernel::clock_s`).
        pub last_used: u32,
    }
}

map_type! {
    /// `SOCK_AFFINITY` key: a client of a frontend with `sessionAffinity:
    /// ClientIP` as the socket hooks see it. A socket has no source address
    /// at connect time, so its network namespace stands for the client: a
    /// pod's own, or the node's for host processes (which share its
    /// addresses).
    pub struct SockAffinityKey {
        pub frontend_id: u32,
        pub _pad: u32,
        pub netns_cookie: u64,
    }
}

family_map_type! {
    /// `HOP_CACHE` (`HOP_CACHE6`) slot: the Ethernet addresses the FIB gave
    /// for packets from `src` to `dst` (network order) leaving by NIC
    /// `ifindex`, the one they came in on, and when (the datapath's clock):
    /// used within that second. The source counts: a multipath route hashes
    /// it to pick a path. An empty slot is all zeros (no NIC has index 0).
    pub struct NextHopOf<A> {
        pub dst: A,
        pub src: A,
        pub ifindex: u32,
        pub stamp: u32,
        pub dmac: [u8; 6],
        pub smac: [u8; 6],
    }
    NextHop,
    NextHop6
}

/// The hop-cache slot of packets from `src` to `dst` (network order)
/// leaving by NIC `ifindex`: a multiplicative hash of the addresses' words
/// folded together (an IPv4 address is its one word), so destinations of
/// one subnet spread over the slots; two hops sharing a slot take turns
/// (each costs the other a FIB lookup).
#[inline(always)]
pub fn hop_slot<A: Addr>(dst: A, src: A, ifindex: u32) -> u32 {
    const GOLDEN: u32 = 0x9e37_79b9;
    let fold = |addr: &A| addr.words().iter().fold(0, |acc, word| acc ^ word);
    let mixed = (fold(&dst) ^ (fold(&src) ^ ifindex).wrapping_mul(GOLDEN)).wrapping_mul(GOLDEN);
    mixed >> (32 - crate::sizes::HOP_CACHE_BITS)
}

map_type! {
    /// `sock_revnat` key: a socket (by cookie) whose connect or sendmsg to a
    /// ClusterIP was rewritten to this backend, network order.
    pub struct SockRevNatKey {
        pub cookie: u64,
        pub backend_addr: u32,
        pub backend_port: u16,
        pub _pad: u16,
    }
}

family_map_type! {
    /// `SOCK_REVNAT` (`SOCK_REVNAT6`) value: the frontend the socket asked
    /// for, restored as the peer by `getpeername` and as the source of UDP
    /// replies.
    pub struct SockRevNatValueOf<A> {
        /// Network order.
        pub vip: A,
        /// Network order.
        pub port: u16,
        pub _pad: u16,
    }
    SockRevNatValue,
    SockRevNatValue6
}

map_type! {
    /// `SOCK_REVNAT6` key: an IPv6 socket (by cookie) whose connect or
    /// sendmsg to an IPv6 frontend was rewritten to this backend.
    pub struct SockRevNatKey6 {
        pub cookie: u64,
        /// Network order.
        pub backend_addr: Addr6,
        /// Network order.
        pub backend_port: u16,
        pub _pad: u16,
        pub _pad2: u32,
    }
}

map_type! {
    /// `STATS` value (per CPU, indexed by frontend id).
    pub struct FrontendStats {
        pub packets: u64,
        pub bytes: u64,
    }
}

/// Bytes of a namespace or Service name in a [`FrontendLabel`]: Kubernetes
/// names them with DNS labels, at most 63 bytes.
pub const LABEL_NAME_LEN: usize = 64;
/// Bytes of a port name in a [`FrontendLabel`]: an IANA service name, at
/// most 15 bytes.
pub const LABEL_PORT_NAME_LEN: usize = 16;

/// `FRONTEND_LABELS` value, by frontend id: the Service a frontend serves,
/// for the CLI; no program reads it. Written by the agent with the
/// frontend, so `kxdp services` names the Services while the agent is
/// down and the datapath serves on. Strings are UTF-8, NUL-padded.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct FrontendLabel {
    pub namespace: [u8; LABEL_NAME_LEN],
    pub name: [u8; LABEL_NAME_LEN],
    pub port_name: [u8; LABEL_PORT_NAME_LEN],
    /// The Service port, host order (a node port frontend's own port is
    /// the node port).
    pub service_port: u16,
    /// The port's node port, host order; 0: none.
    pub node_port: u16,
    /// Terminating endpoints kept for their connections only (not in the
    /// frontend's table).
    pub terminating: u16,
    /// `LABEL_TYPE_*`.
    pub service_type: u8,
    /// `LABEL_VIA_*`: which of the Service's addresses the frontend is.
    pub via: u8,
    /// `LABEL_POLICY_*` bits.
    pub policies: u8,
    pub _pad: [u8; 3],
}

#[cfg(feature = "user")]
// SAFETY: repr(C), every field is plain data, and bytemuck::Pod above
// proves there is no padding.
unsafe impl aya::Pod for FrontendLabel {}

/// `FrontendLabel::service_type`.
pub const LABEL_TYPE_CLUSTER_IP: u8 = 0;
pub const LABEL_TYPE_NODE_PORT: u8 = 1;
pub const LABEL_TYPE_LOAD_BALANCER: u8 = 2;

/// `FrontendLabel::via`.
pub const LABEL_VIA_CLUSTER_IP: u8 = 0;
pub const LABEL_VIA_EXTERNAL_IP: u8 = 1;
pub const LABEL_VIA_LOAD_BALANCER_IP: u8 = 2;
pub const LABEL_VIA_NODE_PORT: u8 = 3;

/// `FrontendLabel::policies`: `externalTrafficPolicy: Local`.
pub const LABEL_POLICY_EXTERNAL_LOCAL: u8 = 1;
/// `FrontendLabel::policies`: `internalTrafficPolicy: Local`.
pub const LABEL_POLICY_INTERNAL_LOCAL: u8 = 2;

map_type! {
    /// `EVENTS` record: one datapath event for `kxdp monitor`.
    pub struct MonitorEvent {
        /// `EVENT_*`.
        pub kind: u8,
        /// A drop's [`DropReason`] index.
        pub reason: u8,
        /// 4 or 6: how many address words are used (1 or 4).
        pub family: u8,
        pub proto: u8,
        /// The frontend the packet was for.
        pub frontend_id: u32,
        /// Addresses as the packet holds them (network order; an IPv4 one
        /// in the first word).
        pub src_addr: [u32; 4],
        pub dst_addr: [u32; 4],
        /// A new flow's backend.
        pub backend_addr: [u32; 4],
        /// Ports, network order.
        pub src_port: u16,
        pub dst_port: u16,
        pub backend_port: u16,
        pub _pad: u16,
        /// Events this CPU's rate limit left out since its previous one.
        pub suppressed: u32,
    }
}

/// `MonitorEvent::kind`: a packet dropped (`reason` says why).
pub const EVENT_DROP: u8 = 1;
/// `MonitorEvent::kind`: a packet answered as refused (no endpoints).
pub const EVENT_REJECT: u8 = 2;
/// `MonitorEvent::kind`: a new flow sent to `backend_addr`.
pub const EVENT_NEW_FLOW: u8 = 3;
/// `MonitorEvent::kind`: a socket refused by the socket hooks (no
/// endpoints); its source is unknown (zero).
pub const EVENT_SOCKET_REFUSED: u8 = 4;

/// `MONITOR` bits: what a listening `kxdp monitor` asked for. Nothing is
/// sent without a listener.
pub const MONITOR_DROPS: u32 = 1;
pub const MONITOR_NEW_FLOWS: u32 = 2;

/// Events per second each CPU may send, and its burst: a flood of drops
/// costs the ring buffer and the reader no more than this.
pub const MONITOR_EVENTS_PER_S: u64 = 5_000;
pub const MONITOR_BURST: u32 = 500;

map_type! {
    /// `MONITOR_BUDGET` value (per CPU): the rate limit's token bucket.
    pub struct MonitorBudget {
        /// When tokens were last added, on `bpf_ktime_get_ns`.
        pub refilled_ns: u64,
        pub tokens: u32,
        /// Events left out since the last one sent.
        pub suppressed: u32,
    }
}

/// Why a packet was dropped: the index of its per-CPU `drops` counter.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    /// A TCP RST to a frontend without backends: a RST is never answered.
    NoBackend = 0,
    /// The selection slot or its backend vanished between lookups (a sync in flight).
    StaleSelection = 1,
    /// Conntrack insert failed: never forward a flow we cannot translate back.
    ConntrackFull = 2,
    /// A packet rewrite helper failed.
    RewriteFailed = 3,
    /// Traffic policy `Local` and no endpoint on this node (kube-proxy drops too).
    NoLocalBackend = 4,
    /// The client is outside the Service's `loadBalancerSourceRanges`.
    SourceRange = 5,
    /// No free SNAT port for a flow to a remote backend.
    SnatPortsExhausted = 6,
    /// A reject reply could not be built (e.g. IP options in the request).
    RejectFailed = 7,
    /// A flow to a remote backend came in on a NIC without an IPv4 address to SNAT to.
    NoSnatAddress = 8,
}

impl DropReason {
    pub const ALL: [DropReason; 9] = [
        DropReason::NoBackend,
        DropReason::StaleSelection,
        DropReason::ConntrackFull,
        DropReason::RewriteFailed,
        DropReason::NoLocalBackend,
        DropReason::SourceRange,
        DropReason::SnatPortsExhausted,
        DropReason::RejectFailed,
        DropReason::NoSnatAddress,
    ];

    /// Its counter's index in `drops`.
    #[inline(always)]
    pub const fn index(self) -> u32 {
        self as u32
    }

    /// Its name in metrics and the CLI.
    pub const fn name(self) -> &'static str {
        match self {
            DropReason::NoBackend => "no_backend",
            DropReason::StaleSelection => "stale_selection",
            DropReason::ConntrackFull => "conntrack_full",
            DropReason::RewriteFailed => "rewrite_failed",
            DropReason::NoLocalBackend => "no_local_backend",
            DropReason::SourceRange => "source_range",
            DropReason::SnatPortsExhausted => "snat_ports_exhausted",
            DropReason::RejectFailed => "reject_failed",
            DropReason::NoSnatAddress => "no_snat_address",
        }
    }
}

/// What was done that is not a plain translation: the index of its per-CPU
/// `verdicts` counter.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// TCP RST sent for a frontend without endpoints.
    RejectedTcp = 0,
    /// ICMP port unreachable sent for a frontend without endpoints.
    RejectedUdp = 1,
    /// A socket's connect or send to a frontend without endpoints failed
    /// with ECONNREFUSED (EPERM before Linux 6.1) in the socket hooks.
    RefusedSocket = 2,
    /// SCTP ABORT sent for a frontend without endpoints.
    RejectedSctp = 3,
}

impl Verdict {
    pub const ALL: [Verdict; 4] = [
        Verdict::RejectedTcp,
        Verdict::RejectedUdp,
        Verdict::RefusedSocket,
        Verdict::RejectedSctp,
    ];

    /// Its counter's index in `verdicts`.
    #[inline(always)]
    pub const fn index(self) -> u32 {
        self as u32
    }

    /// Its name in metrics.
    pub const fn name(self) -> &'static str {
        match self {
            Verdict::RejectedTcp => "tcp_rst",
            Verdict::RejectedUdp => "icmp_port_unreachable",
            Verdict::RefusedSocket => "socket_refused",
            Verdict::RejectedSctp => "sctp_abort",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sizes;

    #[test]
    fn next_hops_of_one_subnet_spread_over_the_cache() {
        extern crate std;
        let (nic, node) = (3, u32::from_be_bytes([192, 168, 50, 1]).to_be());
        let slots: std::collections::BTreeSet<u32> = (0..256u32)
            .map(|host| {
                hop_slot(
                    u32::from_be_bytes([10, 1, 2, host as u8]).to_be(),
                    node,
                    nic,
                )
            })
            .collect();
        assert!(slots.iter().all(|&s| s < sizes::HOP_CACHE_SLOTS));
        // 256 destinations in 4,096 slots: a handful may share one.
        assert!(slots.len() >= 240, "{} distinct slots", slots.len());
        let dst = u32::from_be_bytes([10, 1, 2, 7]).to_be();
        assert_ne!(hop_slot(dst, node, nic + 1), hop_slot(dst, node, nic));
        assert_ne!(
            hop_slot(dst, node.wrapping_add(1), nic),
            hop_slot(dst, node, nic)
        );
    }

    #[test]
    fn each_port_and_role_has_a_bit_of_its_own() {
        use port_roles::*;
        assert_eq!(position(POD_FRONTEND, 0), (0, 1));
        assert_eq!(position(POD_FRONTEND, 65), (1, 2));
        assert_eq!(position(BACKEND, 65_535), (WORDS - 1, 1 << 63));
        assert_eq!(position(NODE_FRONTEND, 80).0, WORDS_PER_ROLE + 1);
    }

    #[test]
    fn every_counter_has_its_own_index_and_name_within_its_map() {
        for (i, a) in DropReason::ALL.iter().enumerate() {
            assert!(a.index() < sizes::DROP_REASONS, "{a:?}");
            for b in &DropReason::ALL[i + 1..] {
                assert_ne!(a.index(), b.index());
                assert_ne!(a.name(), b.name());
            }
        }
        for (i, a) in Verdict::ALL.iter().enumerate() {
            assert!(a.index() < sizes::VERDICTS, "{a:?}");
            for b in &Verdict::ALL[i + 1..] {
                assert_ne!(a.index(), b.index());
                assert_ne!(a.name(), b.name());
            }
        }
    }
}
