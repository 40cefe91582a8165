//! Every map size in one place. The agent may override them at load time.

/// Service frontends: one per (address, port, protocol).
pub const MAX_FRONTENDS: u32 = 65_536;
/// Distinct backends (address, port) across all services: room for 30,000
/// services with 10 endpoints each, none shared.
pub const MAX_BACKENDS: u32 = 524_288;
/// 64-bit entries of `MAGLEV_ARENA`, the store of every Maglev table
/// (64 MiB): 30,000 distinct tables of 10 backends (M = 1021, 262 entries
/// each) with room to spare. The agent may set another size
/// (`--maglev-arena-mib`).
pub const MAGLEV_ARENA_ENTRIES: u32 = 8 << 20;
/// Connection-tracking entries (two per connection: forward and reply).
pub const MAX_CONNTRACK: u32 = 524_288;
/// ClientIP session-affinity entries (one per client and frontend in use).
pub const MAX_AFFINITY: u32 = 262_144;
/// Sockets translated by the cgroup hooks, one entry per (socket, backend)
/// pair.
pub const MAX_SOCK_REVNAT: u32 = 262_144;
/// ClientIP affinity entries of the socket hooks (one per client network
/// namespace and frontend in use).
pub const MAX_SOCK_AFFINITY: u32 = 65_536;
/// log2 of [`HOP_CACHE_SLOTS`].
pub const HOP_CACHE_BITS: u32 = 12;
/// Slots of the NIC program's next-hop cache, per CPU: 4,096 of 28 bytes,
/// 112 KiB for each *possible* CPU (the kernel allocates them all).
pub const HOP_CACHE_SLOTS: u32 = 1 << HOP_CACHE_BITS;
/// Number of drop-reason counters (see [`crate::maps::drop_reason`]).
pub const DROP_REASONS: u32 = 16;
/// Number of verdict counters (see [`crate::maps::verdict`]).
pub const VERDICTS: u32 = 4;
/// `loadBalancerSourceRanges` prefixes across all frontends.
pub const MAX_SOURCE_RANGES: u32 = 16_384;
/// NICs the node program can SNAT on (ifindex → address).
pub const MAX_NICS: u32 = 64;
