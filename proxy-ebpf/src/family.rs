//! What differs between IPv4 and IPv6 for the datapath, behind one trait
//! on the address type: its maps and where its addresses sit in the IP
//! header. Everything else (the core's rules, conntrack, selection,
//! translation) is written once over `F: Family` and monomorphized, so
//! each family's path is straight-line code.

use aya_ebpf::{
    bindings::bpf_fib_lookup as FibParams,
    maps::{Array, HashMap, LpmTrie, LruHashMap},
};
use proxy_common::{
    addr::{Addr, Addr6},
    maps::{
        AffinityKeyOf, AffinityValue, BackendValueOf, CtEntryOf, FlowKeyOf, FrontendKeyOf,
        FrontendValue, SockRevNatKey, SockRevNatKey6, SockRevNatValueOf, SourceRangeOf,
    },
};

use crate::maps::{
    AFFINITY, AFFINITY6, BACKEND_SLOTS, BACKEND_SLOTS6, CONNTRACK, CONNTRACK6, FRONTENDS,
    FRONTENDS6, NIC_ADDRS, SOCK_REVNAT, SOCK_REVNAT6, SOURCE_RANGES, SOURCE_RANGES6,
};
use crate::parse::{ptr_at_mut, Frame};

pub trait Family: Addr {
    /// Offsets of the source and destination addresses in the IP header.
    const SRC_OFF: usize;
    const DST_OFF: usize;
    /// Bits of an address: the source-range trie's prefix length is 32
    /// (the frontend id) plus these.
    const BITS: u32;
    /// IPv4: the IP header has a checksum of its own to update.
    const HEADER_CHECKSUM: bool;
    /// IPv6: the hop limit's offset in the header (IPv4's TTL is covered by
    /// the header checksum, and decremented with it).
    const HOP_LIMIT_OFF: usize;

    fn frontends() -> &'static HashMap<FrontendKeyOf<Self>, FrontendValue>;
    fn backends() -> &'static Array<BackendValueOf<Self>>;
    fn conntrack() -> &'static LruHashMap<FlowKeyOf<Self>, CtEntryOf<Self>>;
    fn affinity() -> &'static LruHashMap<AffinityKeyOf<Self>, AffinityValue>;
    fn source_ranges() -> &'static LpmTrie<SourceRangeOf<Self>, u8>;
    /// The address flows arriving on NIC `ifindex` are SNATed to.
    fn nic_address(ifindex: u32) -> Option<Self>;
    /// What the FIB routes by besides the addresses, from the IP header at
    /// `l3_off`: IPv4's TOS, IPv6's traffic class and flow label.
    fn traffic_class(ctx: &impl Frame, l3_off: usize) -> Option<u32>;
    /// Fills in the family's part of a FIB request.
    fn fib_request(params: &mut FibParams, class: u32, src: Self, dst: Self);

    /// The socket hooks' record of the frontend a socket asked for, by
    /// (socket cookie, the backend it was pointed at).
    type SockRevNatKey: 'static;
    fn sock_revnat_key(cookie: u64, backend: Self, port: u16) -> Self::SockRevNatKey;
    fn sock_revnat() -> &'static LruHashMap<Self::SockRevNatKey, SockRevNatValueOf<Self>>;
}

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

impl Family for u32 {
    const SRC_OFF: usize = 12;
    const DST_OFF: usize = 16;
    const BITS: u32 = 32;
    const HEADER_CHECKSUM: bool = true;
    const HOP_LIMIT_OFF: usize = 8;

    #[inline(always)]
    fn frontends() -> &'static HashMap<FrontendKeyOf<Self>, FrontendValue> {
        &FRONTENDS
    }
    #[inline(always)]
    fn backends() -> &'static Array<BackendValueOf<Self>> {
        &BACKEND_SLOTS
    }
    #[inline(always)]
    fn conntrack() -> &'static LruHashMap<FlowKeyOf<Self>, CtEntryOf<Self>> {
        &CONNTRACK
    }
    #[inline(always)]
    fn affinity() -> &'static LruHashMap<AffinityKeyOf<Self>, AffinityValue> {
        &AFFINITY
    }
    #[inline(always)]
    fn source_ranges() -> &'static LpmTrie<SourceRangeOf<Self>, u8> {
        &SOURCE_RANGES
    }
    #[inline(always)]
    fn nic_address(ifindex: u32) -> Option<Self> {
        // SAFETY: the value is copied out at once.
        unsafe { NIC_ADDRS.get(ifindex).copied() }
    }
    #[inline(always)]
    fn traffic_class(ctx: &impl Frame, l3_off: usize) -> Option<u32> {
        // SAFETY: bounds-checked by `ptr_at_mut`.
        ptr_at_mut::<u8>(ctx, l3_off + 1).map(|tos| unsafe { *tos } as u32)
    }
    #[inline(always)]
    fn fib_request(params: &mut FibParams, class: u32, src: Self, dst: Self) {
        params.family = AF_INET;
        params.__bindgen_anon_2.tos = class as u8;
        params.__bindgen_anon_3.ipv4_src = src;
        params.__bindgen_anon_4.ipv4_dst = dst;
    }

    type SockRevNatKey = SockRevNatKey;
    #[inline(always)]
    fn sock_revnat_key(cookie: u64, backend: Self, port: u16) -> SockRevNatKey {
        SockRevNatKey {
            cookie,
            backend_addr: backend,
            backend_port: port,
            _pad: 0,
        }
    }
    #[inline(always)]
    fn sock_revnat() -> &'static LruHashMap<SockRevNatKey, SockRevNatValueOf<Self>> {
        &SOCK_REVNAT
    }
}

impl Family for Addr6 {
    const SRC_OFF: usize = 8;
    const DST_OFF: usize = 24;
    const BITS: u32 = 128;
    const HEADER_CHECKSUM: bool = false;
    const HOP_LIMIT_OFF: usize = 7;

    #[inline(always)]
    fn frontends() -> &'static HashMap<FrontendKeyOf<Self>, FrontendValue> {
        &FRONTENDS6
    }
    #[inline(always)]
    fn backends() -> &'static Array<BackendValueOf<Self>> {
        &BACKEND_SLOTS6
    }
    #[inline(always)]
    fn conntrack() -> &'static LruHashMap<FlowKeyOf<Self>, CtEntryOf<Self>> {
        &CONNTRACK6
    }
    #[inline(always)]
    fn affinity() -> &'static LruHashMap<AffinityKeyOf<Self>, AffinityValue> {
        &AFFINITY6
    }
    #[inline(always)]
    fn source_ranges() -> &'static LpmTrie<SourceRangeOf<Self>, u8> {
        &SOURCE_RANGES6
    }
    /// The NIC program translates IPv4 only (IPv6 passes it untouched),
    /// so no IPv6 flow is ever SNATed yet.
    #[inline(always)]
    fn nic_address(_: u32) -> Option<Self> {
        None
    }
    #[inline(always)]
    fn traffic_class(ctx: &impl Frame, l3_off: usize) -> Option<u32> {
        // SAFETY: bounds-checked by `ptr_at_mut`.
        let head = unsafe { *ptr_at_mut::<u32>(ctx, l3_off)? };
        // All but the version's four bits, as the packet holds them.
        Some(head & u32::from_ne_bytes([0x0f, 0xff, 0xff, 0xff]))
    }
    #[inline(always)]
    fn fib_request(params: &mut FibParams, class: u32, src: Self, dst: Self) {
        params.family = AF_INET6;
        params.__bindgen_anon_2.flowinfo = class;
        params.__bindgen_anon_3.ipv6_src = src;
        params.__bindgen_anon_4.ipv6_dst = dst;
    }

    type SockRevNatKey = SockRevNatKey6;
    #[inline(always)]
    fn sock_revnat_key(cookie: u64, backend: Self, port: u16) -> SockRevNatKey6 {
        SockRevNatKey6 {
            cookie,
            backend_addr: backend,
            backend_port: port,
            _pad: 0,
            _pad2: 0,
        }
    }
    #[inline(always)]
    fn sock_revnat() -> &'static LruHashMap<SockRevNatKey6, SockRevNatValueOf<Self>> {
        &SOCK_REVNAT6
    }
}
