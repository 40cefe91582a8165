//! Header parsing with direct packet access, for tc and XDP alike. Every
//! read is bounds-checked against `data_end`; anything that is not an
//! unfragmented IPv4 or IPv6 TCP, UDP or SCTP packet yields `None` and is
//! passed on untouched (ICMP, ICMPv6 with neighbour discovery, router
//! advertisements and MLD among them). Of SCTP only the common header and
//! the first chunk's type are read (`proxy_common::sctp`).

use aya_ebpf::programs::{TcContext, XdpContext};
use proxy_common::{
    addr::Addr6,
    lb::Packet,
    maps::{PROTO_SCTP, PROTO_TCP, PROTO_UDP},
    sctp,
};

/// A packet in linear memory: what direct packet access needs of a context.
pub trait Frame {
    fn data(&self) -> usize;
    fn data_end(&self) -> usize;
}

impl Frame for TcContext {
    #[inline(always)]
    fn data(&self) -> usize {
        TcContext::data(self)
    }
    #[inline(always)]
    fn data_end(&self) -> usize {
        TcContext::data_end(self)
    }
}

impl Frame for XdpContext {
    #[inline(always)]
    fn data(&self) -> usize {
        XdpContext::data(self)
    }
    #[inline(always)]
    fn data_end(&self) -> usize {
        XdpContext::data_end(self)
    }
}

pub const ETH_HLEN: usize = 14;
const VLAN_HLEN: usize = 4;
const ETH_P_IPV4: u16 = 0x0800u16.to_be();
const ETH_P_IPV6: u16 = 0x86ddu16.to_be();
const ETH_P_8021Q: u16 = 0x8100u16.to_be();
/// IPv4 "more fragments" flag and fragment offset bits, network order.
const IP_FRAGMENTED: u16 = 0x3fffu16.to_be();
pub const IPV4_HLEN: usize = 20;
pub const IPV6_HLEN: usize = 40;
const TCP_HLEN: usize = 20;
const UDP_HLEN: usize = 8;
/// IPv6 extension headers walked past: hop-by-hop options, routing,
/// fragment, destination options. Any other next header (ESP, AH, ICMPv6,
/// no next header) is not ours.
const IPV6_HOP_BY_HOP: u8 = 0;
const IPV6_ROUTING: u8 = 43;
const IPV6_FRAGMENT: u8 = 44;
const IPV6_DEST_OPTS: u8 = 60;
/// Extension headers read before giving up on a packet (the verifier needs
/// a bound; real packets carry one or two).
const IPV6_MAX_EXT: usize = 4;
/// A fragment header's offset and "more fragments" bits: an atomic
/// fragment (both zero) is a whole packet.
const IPV6_FRAGMENTED: u16 = 0xfff9;
/// Longest header chains tc pulls into the linear part: Ethernet + VLAN +
/// IPv4 with options + TCP; Ethernet + VLAN + IPv6 + room for extension
/// headers + TCP.
const MAX_HEADERS4: u32 = (ETH_HLEN + VLAN_HLEN + 60 + TCP_HLEN) as u32;
const MAX_HEADERS6: u32 = (ETH_HLEN + VLAN_HLEN + IPV6_HLEN + 64 + TCP_HLEN) as u32;

/// The fields of a TCP/UDP packet the datapath needs, network order; `A`
/// is its family's address (`u32`, `Addr6`).
pub struct Flow<A> {
    /// Offset of the IP header.
    pub l3_off: usize,
    /// Offset of the TCP/UDP header (after IPv4 options or IPv6
    /// extension headers).
    pub l4_off: usize,
    pub proto: u8,
    /// What the IP header says follows its fixed part: IPv4's total length
    /// less 20 (options included), IPv6's payload length (extension
    /// headers included; 0 for a jumbogram). Behind a plain header the TCP
    /// payload is it less the TCP header. Kept in 16 bits, as the header
    /// has it: an IPv6 total length can pass them, and `pod_ingress`'s
    /// frame has no room to grow (5.10 rounds each call's frame up to 32
    /// bytes within the 512).
    pub ip_payload_len: u16,
    pub src_addr: A,
    pub dst_addr: A,
    pub src_port: u16,
    pub dst_port: u16,
    /// TCP flags byte (0 for UDP; for SCTP, what its first chunk means as
    /// TCP flags: `sctp::as_tcp_flags`).
    pub tcp_flags: u8,
}

pub type Ipv4Flow = Flow<u32>;
pub type Ipv6Flow = Flow<Addr6>;

/// A packet's flow, of either family.
pub enum AnyFlow {
    V4(Ipv4Flow),
    V6(Ipv6Flow),
}

impl<A> Flow<A> {
    /// What the load-balancing rules read of it.
    #[inline(always)]
    pub fn packet(&self) -> Packet {
        Packet {
            proto: self.proto,
            tcp_flags: self.tcp_flags,
        }
    }
}

#[repr(C)]
pub struct Ipv4Hdr {
    pub version_ihl: u8,
    pub tos: u8,
    pub tot_len: u16,
    pub id: u16,
    pub frag_off: u16,
    pub ttl: u8,
    pub proto: u8,
    pub check: u16,
    pub saddr: u32,
    pub daddr: u32,
}

#[repr(C)]
pub struct Ipv6Hdr {
    /// Version, traffic class, flow label.
    pub head: [u8; 4],
    pub payload_len: u16,
    pub next_header: u8,
    pub hop_limit: u8,
    pub saddr: Addr6,
    pub daddr: Addr6,
}

/// No header the datapath reads starts this far into a packet (IPv6
/// extension headers end well before it).
const MAX_OFFSET: usize = 0x3fff;

/// Zero, in a global the programs never write: the verifier cannot know
/// its value (.bss is a writable map).
static mut VERIFIER_ZERO: u16 = 0;

/// `off`, unchanged, as the verifier sees a range up to [`MAX_OFFSET`].
/// The L4 offset after IPv6 extension headers is a different range for
/// each number of headers, and the verifier walked the rest of a program
/// once per range; widened, the paths past extension headers share their
/// states (instructions verified, Linux 6.18: the NIC program 260,524 →
/// 126,741, `pod_ingress` 102,703 → 40,388). Added, then masked (no
/// offset here reaches the mask): 5.10's verifier forgets a value ORed
/// with an unknown one, and bounds a packet pointer only below 64 KiB,
/// which a mask holds for every copy of the value and a comparison only
/// for the one compared. Packets without extension headers keep their
/// constant offset, and skip the load.
#[inline(always)]
fn widened(off: usize) -> usize {
    // SAFETY: a read of a plain integer nothing writes.
    let zero = unsafe { core::ptr::read_volatile(&raw const VERIFIER_ZERO) };
    (off + zero as usize) & MAX_OFFSET
}

/// `value` masked below 64 KiB where the verifier sees the mask. LLVM
/// drops a mask it can prove has no effect, and the verifier, which may
/// know less, then finds an index derived from the value unbounded (the
/// SCTP checksum update's table lookups, from the packet's length); added
/// to an unknown zero first, the value is one LLVM knows nothing of.
#[inline(always)]
pub fn below_64k(value: u32) -> u32 {
    // SAFETY: a read of a plain integer nothing writes.
    let zero = unsafe { core::ptr::read_volatile(&raw const VERIFIER_ZERO) };
    (value + zero as u32) & 0xffff
}

/// Returns a pointer to a `T` at `off`, or `None` if it does not fit.
/// `off` is bounded first: a flow's offsets reach a subprogram through
/// memory, where the verifier no longer knows their range, and it adds no
/// unbounded value to a packet pointer.
#[inline(always)]
fn ptr_at<T>(ctx: &impl Frame, off: usize) -> Option<*const T> {
    if off > MAX_OFFSET {
        return None;
    }
    let start = ctx.data();
    if start + off + core::mem::size_of::<T>() > ctx.data_end() {
        return None;
    }
    Some((start + off) as *const T)
}

/// A writable pointer to a `T` at `off`, or `None` if it does not fit.
#[inline(always)]
pub fn ptr_at_mut<T>(ctx: &impl Frame, off: usize) -> Option<*mut T> {
    ptr_at::<T>(ctx, off).map(|p| p as *mut T)
}

/// Why a packet yielded no flow.
enum Unparsed {
    /// Not an unfragmented IPv4 or IPv6 TCP/UDP packet: not ours.
    NotOurs,
    /// Its headers end past the linear data (always complete in XDP); the
    /// longest header chain of its family, to pull.
    Short(u32),
}

/// The flow of a tc packet. Its headers are nearly always in the skb's
/// linear part; only when a header read would go past it (a GRO'd or
/// paged packet) is the longest header chain pulled in. Pulling whenever
/// the linear part is shorter than that chain cost every TCP segment with
/// offloads on a copy: its linear part holds just its headers, and making
/// pulled payload writable copies the head of a cloned skb (TCP transmits
/// clones).
#[inline(always)]
pub fn tc_flow(ctx: &TcContext) -> Option<AnyFlow> {
    match parse(ctx) {
        Ok(flow) => Some(flow),
        Err(Unparsed::NotOurs) => None,
        Err(Unparsed::Short(longest)) => {
            let want = if ctx.len() < longest {
                ctx.len()
            } else {
                longest
            };
            // On failure the parse below finds the headers short again.
            let _ = ctx.pull_data(want);
            parse(ctx).ok()
        }
    }
}

/// Where a packet's IP header starts, and which family it is (by its
/// EtherType, past an optional VLAN tag), if it is IP at all.
pub enum L3 {
    V4(usize),
    V6(usize),
}

#[inline(always)]
pub fn l3(ctx: &impl Frame) -> Option<L3> {
    classify(ctx).ok()
}

/// The flow of an IPv4 packet at `l3_off` whose headers are in linear
/// memory (always so in XDP).
#[inline(always)]
pub fn linear_ipv4(ctx: &impl Frame, l3_off: usize) -> Option<Ipv4Flow> {
    parse_ipv4(ctx, l3_off).ok()
}

/// The flow of an IPv6 packet at `l3_off`, as [`linear_ipv4`].
#[inline(always)]
pub fn linear_ipv6(ctx: &impl Frame, l3_off: usize) -> Option<Ipv6Flow> {
    parse_ipv6(ctx, l3_off).ok()
}

/// [`l3`], or why the packet is not ours (or too short to tell).
#[inline(always)]
fn classify(ctx: &impl Frame) -> Result<L3, Unparsed> {
    // The EtherType, past an optional VLAN tag.
    // SAFETY: `ptr_at` checked that the value lies before `data_end`.
    let mut ether_type = unsafe { *ptr_at::<u16>(ctx, 12).ok_or(Unparsed::Short(MAX_HEADERS4))? };
    let mut l3_off = ETH_HLEN;
    if ether_type == ETH_P_8021Q {
        // SAFETY: as above.
        ether_type = unsafe { *ptr_at::<u16>(ctx, 16).ok_or(Unparsed::Short(MAX_HEADERS4))? };
        l3_off += VLAN_HLEN;
    }
    match ether_type {
        ETH_P_IPV4 => Ok(L3::V4(l3_off)),
        ETH_P_IPV6 => Ok(L3::V6(l3_off)),
        _ => Err(Unparsed::NotOurs),
    }
}

#[inline(always)]
fn parse(ctx: &impl Frame) -> Result<AnyFlow, Unparsed> {
    match classify(ctx)? {
        L3::V4(l3_off) => parse_ipv4(ctx, l3_off).map(AnyFlow::V4),
        L3::V6(l3_off) => parse_ipv6(ctx, l3_off).map(AnyFlow::V6),
    }
}

#[inline(always)]
fn parse_ipv4(ctx: &impl Frame, l3_off: usize) -> Result<Ipv4Flow, Unparsed> {
    let short = Unparsed::Short(MAX_HEADERS4);
    // SAFETY: `ptr_at` checked that the value lies before `data_end`.
    let ip = unsafe { &*ptr_at::<Ipv4Hdr>(ctx, l3_off).ok_or(short)? };
    let ihl = ((ip.version_ihl & 0x0f) as usize) * 4;
    if ip.version_ihl >> 4 != 4 || ihl < IPV4_HLEN || ip.frag_off & IP_FRAGMENTED != 0 {
        return Err(Unparsed::NotOurs);
    }
    let l4_off = l3_off + ihl;
    let (src_port, dst_port, tcp_flags) = ports(ctx, l4_off, ip.proto, MAX_HEADERS4)?;
    Ok(Flow {
        l3_off,
        l4_off,
        proto: ip.proto,
        ip_payload_len: u16::from_be(ip.tot_len).saturating_sub(IPV4_HLEN as u16),
        src_addr: ip.saddr,
        dst_addr: ip.daddr,
        src_port,
        dst_port,
        tcp_flags,
    })
}

/// An IPv6 packet, past its extension headers; a fragment (but an atomic
/// one) is not ours, as an IPv4 fragment is not: only the first would
/// carry the ports.
#[inline(always)]
fn parse_ipv6(ctx: &impl Frame, l3_off: usize) -> Result<Ipv6Flow, Unparsed> {
    let short = || Unparsed::Short(MAX_HEADERS6);
    // SAFETY: `ptr_at` checked that the value lies before `data_end`.
    let ip = unsafe { &*ptr_at::<Ipv6Hdr>(ctx, l3_off).ok_or(short())? };
    if ip.head[0] >> 4 != 6 {
        return Err(Unparsed::NotOurs);
    }
    let mut next = ip.next_header;
    let mut l4_off = l3_off + IPV6_HLEN;
    for _ in 0..IPV6_MAX_EXT {
        match next {
            PROTO_TCP | PROTO_UDP | PROTO_SCTP => break,
            IPV6_HOP_BY_HOP | IPV6_ROUTING | IPV6_DEST_OPTS | IPV6_FRAGMENT => {}
            // Read nothing of what is not ours: it costs no pull.
            _ => return Err(Unparsed::NotOurs),
        }
        // Every extension header begins with its next header and length.
        // SAFETY: `ptr_at` checked that the value lies before `data_end`.
        let ext = unsafe { *ptr_at::<[u8; 4]>(ctx, l4_off).ok_or(short())? };
        match next {
            IPV6_FRAGMENT => {
                if u16::from_be_bytes([ext[2], ext[3]]) & IPV6_FRAGMENTED != 0 {
                    return Err(Unparsed::NotOurs);
                }
                l4_off += 8;
            }
            // With segments left, the destination is a waypoint and the
            // checksum covers the final one (RFC 8200 §8.1): not ours.
            IPV6_ROUTING if ext[3] != 0 => return Err(Unparsed::NotOurs),
            _ => l4_off += (ext[1] as usize + 1) * 8,
        }
        next = ext[0];
    }
    if l4_off > MAX_OFFSET {
        return Err(Unparsed::NotOurs);
    }
    if l4_off != l3_off + IPV6_HLEN {
        l4_off = widened(l4_off);
    }
    let (src_port, dst_port, tcp_flags) = ports(ctx, l4_off, next, MAX_HEADERS6)?;
    Ok(Flow {
        l3_off,
        l4_off,
        proto: next,
        ip_payload_len: u16::from_be(ip.payload_len),
        src_addr: ip.saddr,
        dst_addr: ip.daddr,
        src_port,
        dst_port,
        tcp_flags,
    })
}

/// The ports and TCP flags of the TCP/UDP/SCTP header at `l4_off`;
/// `longest`: the header chain to pull if it is short. An SCTP packet
/// shorter than its common header and one chunk header is not ours.
#[inline(always)]
fn ports(
    ctx: &impl Frame,
    l4_off: usize,
    proto: u8,
    longest: u32,
) -> Result<(u16, u16, u8), Unparsed> {
    let l4_len = match proto {
        PROTO_TCP => TCP_HLEN,
        PROTO_UDP => UDP_HLEN,
        PROTO_SCTP => sctp::MIN_LEN,
        _ => return Err(Unparsed::NotOurs),
    };
    // The whole L4 header must be present: the checksum field is rewritten later.
    if ctx.data() + l4_off + l4_len > ctx.data_end() {
        return Err(Unparsed::Short(longest));
    }
    // SAFETY: `ptr_at` checked that the value lies before `data_end`.
    let ports = unsafe { &*ptr_at::<[u16; 2]>(ctx, l4_off).ok_or(Unparsed::Short(longest))? };
    let tcp_flags = match proto {
        // SAFETY: `ptr_at` checked that the value lies before `data_end`.
        PROTO_TCP => unsafe { *ptr_at::<u8>(ctx, l4_off + 13).ok_or(Unparsed::Short(longest))? },
        PROTO_SCTP => {
            let chunk = ptr_at::<u8>(ctx, l4_off + sctp::COMMON_HLEN);
            // SAFETY: as above.
            sctp::as_tcp_flags(unsafe { *chunk.ok_or(Unparsed::Short(longest))? })
        }
        _ => 0,
    };
    Ok((ports[0], ports[1], tcp_flags))
}
