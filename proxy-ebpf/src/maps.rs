//! The BPF maps, pinned by name under the agent's pin path so a restarted
//! agent (and `kxdp services`) finds the same state.

use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, RingBuf},
};
use proxy_common::{
    addr::Addr6,
    maps::{
        port_roles, AffinityKey, AffinityKey6, AffinityValue, BackendValue, BackendValue6, CtEntry,
        CtEntry6, FlowKey, FlowKey6, FrontendKey, FrontendKey6, FrontendLabel, FrontendStats,
        FrontendValue, MonitorBudget, NextHop, NextHop6, SockAffinityKey, SockRevNatKey,
        SockRevNatKey6, SockRevNatValue, SockRevNatValue6, SourceRange, SourceRange6,
        MAGLEV_ARENA_FLAGS,
    },
    sizes,
};

use crate::conntrack::Pair;

/// (VIP, port, protocol, scope) → frontend id and table size.
#[map]
pub static FRONTENDS: HashMap<FrontendKey, FrontendValue> =
    HashMap::pinned(sizes::MAX_FRONTENDS, 0);

/// Backend id → backend address and port; an all-zero value is no
/// backend (no backend has address 0.0.0.0: the model refuses it). An
/// array, so reading a backend is an inlined load, not a hash lookup (an
/// earlier layout kept them in the hash map `BACKENDS`).
#[map]
pub static BACKEND_SLOTS: Array<BackendValue> = Array::pinned(sizes::MAX_BACKENDS, 0);

/// The IPv6 frontends, as `FRONTENDS`. Frontend ids are one space over
/// both families (`MAGLEV_INDEX`, `STATS`).
#[map]
pub static FRONTENDS6: HashMap<FrontendKey6, FrontendValue> =
    HashMap::pinned(sizes::MAX_FRONTENDS, 0);

/// The IPv6 backends by id, as `BACKEND_SLOTS`: ids are one space over
/// both families, each id's backend in its family's array (the other's
/// slot stays empty), so a Maglev table's member ids need no family.
#[map]
pub static BACKEND_SLOTS6: Array<BackendValue6> = Array::pinned(sizes::MAX_BACKENDS, 0);

/// Every frontend's Maglev table, each a block of entries
/// (`proxy_common::maps::maglev_layout`); frontends with the same backends
/// share one. A plain array, so each read is an inlined load. The agent
/// writes it through `mmap`: a table of the same size in place, another
/// one in a fresh block that `MAGLEV_INDEX` then points at; a block is
/// reused only after every program that could read it has finished.
#[map]
pub static MAGLEV_ARENA: Array<u64> =
    Array::pinned(sizes::MAGLEV_ARENA_ENTRIES, MAGLEV_ARENA_FLAGS);

/// Frontend id → offset of its table's block in `MAGLEV_ARENA` (low 32
/// bits; `NO_TABLE`: none). Switched in one 8-byte store.
#[map]
pub static MAGLEV_INDEX: Array<u64> = Array::pinned(sizes::MAX_FRONTENDS, MAGLEV_ARENA_FLAGS);

/// Flow → translation, one entry per direction of each connection. One
/// LRU shared by every CPU: per-CPU lists (`BPF_F_NO_COMMON_LRU`) would
/// give each *possible* CPU a fixed share for good, so a node with 64
/// possible CPUs and its flows on a few would evict them at 8,192 each.
#[map]
pub static CONNTRACK: LruHashMap<FlowKey, CtEntry> = LruHashMap::pinned(sizes::MAX_CONNTRACK, 0);

/// IPv6 flows, as `CONNTRACK`.
#[map]
pub static CONNTRACK6: LruHashMap<FlowKey6, CtEntry6> = LruHashMap::pinned(sizes::MAX_CONNTRACK, 0);

/// Which ports frontends and backends use, a bit per port and role
/// (`proxy_common::maps::port_roles`), written by the agent: packets no
/// lookup could match skip them.
#[map]
pub static PORT_ROLES: Array<u64> = Array::pinned(port_roles::WORDS, 0);

/// Per-frontend packet and byte counters, indexed by frontend id.
#[map]
pub static STATS: PerCpuArray<FrontendStats> = PerCpuArray::pinned(sizes::MAX_FRONTENDS, 0);

/// Per-frontend count of sockets the socket hooks pointed at a backend
/// (connects, and datagrams of unconnected UDP sockets), by frontend id.
#[map]
pub static SOCK_STATS: PerCpuArray<u64> = PerCpuArray::pinned(sizes::MAX_FRONTENDS, 0);

/// Per-frontend count of packets answered as refused (TCP RST, ICMP port
/// unreachable) or sockets refused, by frontend id: rare, so one shared
/// counter per frontend, added to atomically.
#[map]
pub static REJECTS: Array<u64> = Array::pinned(sizes::MAX_FRONTENDS, 0);

/// The Service each frontend serves, by frontend id, for the CLI alone
/// (`proxy_common::maps::FrontendLabel`): no program reads it. Allocated
/// per entry, as frontends come.
#[map]
pub static FRONTEND_LABELS: HashMap<u32, FrontendLabel> =
    HashMap::pinned(sizes::MAX_FRONTENDS, BPF_F_NO_PREALLOC);

/// `kxdp monitor`'s events (`proxy_common::maps::MonitorEvent`): 256 KiB,
/// 3,800 events, read as they come.
#[map]
pub static EVENTS: RingBuf = RingBuf::pinned(256 * 1024, 0);

/// What a listening `kxdp monitor` asked for (`MONITOR_*` bits, slot 0);
/// 0: nobody listens, and no event is sent.
#[map]
pub static MONITOR: Array<u32> = Array::pinned(1, 0);

/// Each CPU's token bucket for events (`MonitorBudget`), not pinned: a new
/// object starts with empty buckets.
#[map]
pub static MONITOR_BUDGET: PerCpuArray<MonitorBudget> = PerCpuArray::with_max_entries(1, 0);

/// Dropped packets by reason (`proxy_common::maps::drop_reason`).
#[map]
pub static DROPS: PerCpuArray<u64> = PerCpuArray::pinned(sizes::DROP_REASONS, 0);

/// What was done besides translating, by `proxy_common::maps::verdict`.
#[map]
pub static VERDICTS: PerCpuArray<u64> = PerCpuArray::pinned(sizes::VERDICTS, 0);

/// (frontend id, client prefix) allowed by `loadBalancerSourceRanges`.
/// LPM tries must not be preallocated.
#[map]
pub static SOURCE_RANGES: LpmTrie<SourceRange, u8> =
    LpmTrie::pinned(sizes::MAX_SOURCE_RANGES, BPF_F_NO_PREALLOC);

/// IPv6 client prefixes, as `SOURCE_RANGES`.
#[map]
pub static SOURCE_RANGES6: LpmTrie<SourceRange6, u8> =
    LpmTrie::pinned(sizes::MAX_SOURCE_RANGES, BPF_F_NO_PREALLOC);

/// NIC ifindex → the IPv4 address flows to remote backends are SNATed to.
#[map]
pub static NIC_ADDRS: HashMap<u32, u32> = HashMap::pinned(sizes::MAX_NICS, 0);

/// NIC ifindex → the IPv6 address IPv6 flows to remote backends are
/// SNATed to.
#[map]
pub static NIC_ADDRS6: HashMap<u32, Addr6> = HashMap::pinned(sizes::MAX_NICS, 0);

/// (frontend id, client address) → the backend its connections go to, for
/// `sessionAffinity: ClientIP`. LRU: clients that went away age out.
#[map]
pub static AFFINITY: LruHashMap<AffinityKey, AffinityValue> =
    LruHashMap::pinned(sizes::MAX_AFFINITY, 0);

/// IPv6 clients' affinity, as `AFFINITY`.
#[map]
pub static AFFINITY6: LruHashMap<AffinityKey6, AffinityValue> =
    LruHashMap::pinned(sizes::MAX_AFFINITY, 0);

/// (socket cookie, backend) → the ClusterIP and port the socket asked for:
/// the cgroup hooks restore it as the peer (`getpeername`, UDP `recvmsg`).
/// LRU: closed sockets age out.
#[map]
pub static SOCK_REVNAT: LruHashMap<SockRevNatKey, SockRevNatValue> =
    LruHashMap::pinned(sizes::MAX_SOCK_REVNAT, 0);

/// IPv6 sockets' frontends, as `SOCK_REVNAT` (an IPv6 socket to an
/// IPv4-mapped address is an IPv4 socket's business: `SOCK_REVNAT`).
#[map]
pub static SOCK_REVNAT6: LruHashMap<SockRevNatKey6, SockRevNatValue6> =
    LruHashMap::pinned(sizes::MAX_SOCK_REVNAT, 0);

/// (frontend id, network namespace) → the backend its sockets go to: the
/// socket hooks' `sessionAffinity: ClientIP` (`SockAffinityKey`). LRU, as
/// `AFFINITY`.
#[map]
pub static SOCK_AFFINITY: LruHashMap<SockAffinityKey, AffinityValue> =
    LruHashMap::pinned(sizes::MAX_SOCK_AFFINITY, 0);

/// The next hops the FIB gave the NIC program, per CPU, direct-mapped by
/// destination, source and NIC (`proxy_common::maps::hop_slot`): a flow
/// to a remote backend (and its replies) costs the FIB one lookup a second
/// on each CPU it lands on, not one a packet, and finding the hop is an
/// array lookup, which the JIT inlines since Linux 6.10 (an LRU hash map
/// here cost an established remote packet 20 ns more on 6.18). Per CPU,
/// so a slot is never read half-written.
#[map]
pub static HOP_CACHE: PerCpuArray<NextHop> = PerCpuArray::pinned(sizes::HOP_CACHE_SLOTS, 0);

/// IPv6 next hops, as `HOP_CACHE`.
#[map]
pub static HOP_CACHE6: PerCpuArray<NextHop6> = PerCpuArray::pinned(sizes::HOP_CACHE_SLOTS, 0);

/// A new connection's two entries, laid out here before they go into
/// conntrack (one slot per CPU; a program run has its CPU to itself): an
/// IPv6 pair is 144 bytes, which the NIC program's 512-byte stack cannot
/// spare beside the rest of a new flow's path. Not pinned: it holds
/// nothing between runs.
#[map]
pub static PAIR_SCRATCH: PerCpuArray<Pair<u32>> = PerCpuArray::with_max_entries(1, 0);

/// The IPv6 pair's scratch, as `PAIR_SCRATCH`.
#[map]
pub static PAIR_SCRATCH6: PerCpuArray<Pair<Addr6>> = PerCpuArray::with_max_entries(1, 0);
