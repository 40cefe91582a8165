//! What differs between IPv4 and IPv6 for the datapath, behind one trait
//! on the address type: its maps and where its addresses sit in the IP
//! header. Everything else (the core's rules, conntrack, selection,
//! translation) is written once over `F: Family` and monomorphized, so
//! each family's path is straight-line code.

use aya_ebpf::{
    bindings::bpf_fib_lookup as FibParams,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray},
};
use proxy_common::{
    addr::{Addr, Addr6},
    maps::{
        AffinityKeyOf, AffinityValue, BackendValueOf, CtEntryOf, FlowKeyOf, FrontendKeyOf,
        FrontendValue, NextHopOf, SockRevNatKey, SockRevNatKey6, SockRevNatValueOf, SourceRangeOf,
    },
};

use crate::maps::{
    AFFINITY, AFFINITY6, BACKEND_SLOTS, BACKEND_SLOTS6, CONNTRACK, CONNTRACK6, FRONTENDS,
    FRONTENDS6, HOP_CACHE, HOP_CACHE6, NIC_ADDRS, NIC_ADDRS6, SOCK_REVNAT, SOCK_REVNAT6,
    SOURCE_RANGES, SOURCE_RANGES6,
};
use crate::{
    conntrack::Pair,
    maps::{PAIR_SCRATCH, PAIR_SCRATCH6},
    parse::{self, Flow, Frame, Ipv4Hdr, Ipv6Hdr},
};

pub trait Family: Addr {
    /// The fixed IP header: every field the datapath writes lies in it.
    type IpHeader;
    /// Bits of an address: the source-range trie's prefix length is 32
    /// (the frontend id) plus these.
    const BITS: u32;
    /// IPv4: the IP header has a checksum of its own to update.
    const HEADER_CHECKSUM: bool;
    /// The source (`source`) or destination address field of the (bounds-
    /// checked) IP header: a projection of the header's pointer, so the
    /// verifier sees it inside the checked range (a pointer computed afresh
    /// may lose it).
    fn addr_field(header: *mut Self::IpHeader, source: bool) -> *mut Self;
    /// The flow of this family's packet whose IP header is at `l3_off`
    /// and whose headers are in linear memory (always so in XDP).
    fn linear_flow(ctx: &impl Frame, l3_off: usize) -> Option<Flow<Self>>;

    fn frontends() -> &'static HashMap<FrontendKeyOf<Self>, FrontendValue>;
    fn backends() -> &'static Array<BackendValueOf<Self>>;
    fn conntrack() -> &'static LruHashMap<FlowKeyOf<Self>, CtEntryOf<Self>>;
    /// Where a new connection's entries are laid out before they go in.
    fn pair_scratch() -> &'static PerCpuArray<Pair<Self>>;
    fn affinity() -> &'static LruHashMap<AffinityKeyOf<Self>, AffinityValue>;
    fn source_ranges() -> &'static LpmTrie<SourceRangeOf<Self>, u8>;
    /// The address flows arriving on NIC `ifindex` are SNATed to.
    fn nic_address(ifindex: u32) -> Option<Self>;
    /// The NIC program's next hops.
    fn hop_cache() -> &'static PerCpuArray<NextHopOf<Self>>;
    /// What the FIB routes by besides the addresses, from the (bounds-
    /// checked) IP header: IPv4's TOS, IPv6's traffic class and flow label.
    fn traffic_class(header: *mut Self::IpHeader) -> u32;
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
    type IpHeader = Ipv4Hdr;
    const BITS: u32 = 32;
    const HEADER_CHECKSUM: bool = true;

    #[inline(always)]
    fn linear_flow(ctx: &impl Frame, l3_off: usize) -> Option<Flow<Self>> {
        parse::linear_ipv4(ctx, l3_off)
    }
    #[inline(always)]
    fn pair_scratch() -> &'static PerCpuArray<Pair<Self>> {
        &PAIR_SCRATCH
    }
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
    fn hop_cache() -> &'static PerCpuArray<NextHopOf<Self>> {
        &HOP_CACHE
    }
    #[inline(always)]
    fn addr_field(header: *mut Ipv4Hdr, source: bool) -> *mut u32 {
        // SAFETY: a field projection of a valid pointer, nothing read.
        unsafe {
            if source {
                &raw mut (*header).saddr
            } else {
                &raw mut (*header).daddr
            }
        }
    }
    #[inline(always)]
    fn traffic_class(header: *mut Ipv4Hdr) -> u32 {
        // SAFETY: the caller bounds-checked the header.
        unsafe { (*header).tos as u32 }
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
    type IpHeader = Ipv6Hdr;
    const BITS: u32 = 128;
    const HEADER_CHECKSUM: bool = false;

    #[inline(always)]
    fn linear_flow(ctx: &impl Frame, l3_off: usize) -> Option<Flow<Self>> {
        parse::linear_ipv6(ctx, l3_off)
    }
    #[inline(always)]
    fn pair_scratch() -> &'static PerCpuArray<Pair<Self>> {
        &PAIR_SCRATCH6
    }
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
    #[inline(always)]
    fn nic_address(ifindex: u32) -> Option<Self> {
        // SAFETY: the value is copied out at once.
        unsafe { NIC_ADDRS6.get(ifindex).copied() }
    }
    #[inline(always)]
    fn hop_cache() -> &'static PerCpuArray<NextHopOf<Self>> {
        &HOP_CACHE6
    }
    #[inline(always)]
    fn addr_field(header: *mut Ipv6Hdr, source: bool) -> *mut Addr6 {
        // SAFETY: a field projection of a valid pointer, nothing read.
        unsafe {
            if source {
                &raw mut (*header).saddr
            } else {
                &raw mut (*header).daddr
            }
        }
    }
    #[inline(always)]
    fn traffic_class(header: *mut Ipv6Hdr) -> u32 {
        // SAFETY: the caller bounds-checked the header.
        let head = u32::from_ne_bytes(unsafe { (*header).head });
        // All but the version's four bits, as the packet holds them.
        head & u32::from_ne_bytes([0x0f, 0xff, 0xff, 0xff])
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
