//! The BPF maps, pinned by name under the agent's pin path so a restarted
//! agent (and `kxdp services`) finds the same state.

use aya_ebpf::{
    bindings::BPF_F_NO_COMMON_LRU,
    macros::map,
    maps::{HashMap, LruHashMap, PerCpuArray},
};
use proxy_common::{
    maps::{BackendValue, CtEntry, FlowKey, ServiceKey, ServiceStats, ServiceValue, SlotKey},
    sizes,
};

/// (VIP, port, protocol, scope) → service id and slot count.
#[map]
pub static SERVICES: HashMap<ServiceKey, ServiceValue> = HashMap::pinned(sizes::MAX_SERVICES, 0);

/// Backend id → backend address and port.
#[map]
pub static BACKENDS: HashMap<u32, BackendValue> = HashMap::pinned(sizes::MAX_BACKENDS, 0);

/// (service id, slot) → backend id: the selection table the agent fills.
#[map]
pub static SELECTION: HashMap<SlotKey, u32> = HashMap::pinned(sizes::MAX_SELECTION_SLOTS, 0);

/// Flow → translation, one entry per direction of each connection. Per-CPU
/// LRU lists: inserting a new flow takes no map-wide lock.
#[map]
pub static CONNTRACK: LruHashMap<FlowKey, CtEntry> =
    LruHashMap::pinned(sizes::MAX_CONNTRACK, BPF_F_NO_COMMON_LRU);

/// Per-service packet and byte counters, indexed by service id.
#[map]
pub static STATS: PerCpuArray<ServiceStats> = PerCpuArray::pinned(sizes::MAX_SERVICES, 0);

/// Dropped packets by reason (`proxy_common::maps::drop_reason`).
#[map]
pub static DROPS: PerCpuArray<u64> = PerCpuArray::pinned(sizes::DROP_REASONS, 0);
