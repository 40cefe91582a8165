//! Header parsing with direct packet access, for tc and XDP alike. Every
//! read is bounds-checked against `data_end`; anything that is not an
//! unfragmented IPv4 TCP/UDP packet yields `None` and is passed on untouched.

use aya_ebpf::programs::{TcContext, XdpContext};
use proxy_common::{
    lb::Packet,
    maps::{PROTO_TCP, PROTO_UDP},
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
const ETH_P_8021Q: u16 = 0x8100u16.to_be();
/// IPv4 "more fragments" flag and fragment offset bits, network order.
const IP_FRAGMENTED: u16 = 0x3fffu16.to_be();
const TCP_HLEN: usize = 20;
const UDP_HLEN: usize = 8;
/// Longest header chain we read: Ethernet + VLAN + IPv4 with options + TCP.
const MAX_HEADERS: u32 = (ETH_HLEN + VLAN_HLEN + 60 + TCP_HLEN) as u32;

/// The fields of an IPv4 TCP/UDP packet the datapath needs, network order.
pub struct Ipv4Flow {
    /// Offset of the IPv4 header.
    pub l3_off: usize,
    /// Offset of the TCP/UDP header (after IP options).
    pub l4_off: usize,
    pub proto: u8,
    /// IPv4 total length: the TCP payload length follows from it.
    pub ip_len: u16,
    pub src_addr: u32,
    pub dst_addr: u32,
    pub src_port: u16,
    pub dst_port: u16,
    /// TCP flags byte (0 for UDP).
    pub tcp_flags: u8,
}

impl Ipv4Flow {
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

/// Returns a pointer to a `T` at `off`, or `None` if it does not fit.
#[inline(always)]
fn ptr_at<T>(ctx: &impl Frame, off: usize) -> Option<*const T> {
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
    /// Not an unfragmented IPv4 TCP/UDP packet: not ours.
    NotOurs,
    /// Its headers end past the linear data (always complete in XDP).
    Short,
}

/// The flow of a tc packet. Its headers are nearly always in the skb's
/// linear part; only when a header read would go past it (a GRO'd or
/// paged packet) is the longest header chain pulled in. Pulling whenever
/// the linear part is shorter than that chain cost every TCP segment with
/// offloads on a copy: its linear part holds just its headers, and making
/// pulled payload writable copies the head of a cloned skb (TCP transmits
/// clones).
#[inline(always)]
pub fn tc_ipv4_flow(ctx: &TcContext) -> Option<Ipv4Flow> {
    match parse(ctx) {
        Ok(flow) => Some(flow),
        Err(Unparsed::NotOurs) => None,
        Err(Unparsed::Short) => {
            let want = if ctx.len() < MAX_HEADERS {
                ctx.len()
            } else {
                MAX_HEADERS
            };
            // On failure the parse below finds the headers short again.
            let _ = ctx.pull_data(want);
            parse(ctx).ok()
        }
    }
}

/// The flow of a packet whose headers are in linear memory (always so in XDP).
#[inline(always)]
pub fn ipv4_flow(ctx: &impl Frame) -> Option<Ipv4Flow> {
    parse(ctx).ok()
}

#[inline(always)]
fn parse(ctx: &impl Frame) -> Result<Ipv4Flow, Unparsed> {
    let mut l3_off = ETH_HLEN;
    // SAFETY: `ptr_at` checked that the value lies before `data_end`.
    let mut ether_type = unsafe { *ptr_at::<u16>(ctx, 12).ok_or(Unparsed::Short)? };
    if ether_type == ETH_P_8021Q {
        // SAFETY: `ptr_at` checked that the value lies before `data_end`.
        ether_type = unsafe { *ptr_at::<u16>(ctx, 16).ok_or(Unparsed::Short)? };
        l3_off += VLAN_HLEN;
    }
    if ether_type != ETH_P_IPV4 {
        return Err(Unparsed::NotOurs);
    }
    // SAFETY: `ptr_at` checked that the value lies before `data_end`.
    let ip = unsafe { &*ptr_at::<Ipv4Hdr>(ctx, l3_off).ok_or(Unparsed::Short)? };
    let ihl = ((ip.version_ihl & 0x0f) as usize) * 4;
    if ip.version_ihl >> 4 != 4 || ihl < 20 || ip.frag_off & IP_FRAGMENTED != 0 {
        return Err(Unparsed::NotOurs);
    }
    let l4_off = l3_off + ihl;
    let l4_len = match ip.proto {
        PROTO_TCP => TCP_HLEN,
        PROTO_UDP => UDP_HLEN,
        _ => return Err(Unparsed::NotOurs),
    };
    // The whole L4 header must be present: the checksum field is rewritten later.
    if ctx.data() + l4_off + l4_len > ctx.data_end() {
        return Err(Unparsed::Short);
    }
    // SAFETY: `ptr_at` checked that the value lies before `data_end`.
    let ports = unsafe { &*ptr_at::<[u16; 2]>(ctx, l4_off).ok_or(Unparsed::Short)? };
    let tcp_flags = if ip.proto == PROTO_TCP {
        // SAFETY: `ptr_at` checked that the value lies before `data_end`.
        unsafe { *ptr_at::<u8>(ctx, l4_off + 13).ok_or(Unparsed::Short)? }
    } else {
        0
    };
    Ok(Ipv4Flow {
        l3_off,
        l4_off,
        proto: ip.proto,
        ip_len: u16::from_be(ip.tot_len),
        src_addr: ip.saddr,
        dst_addr: ip.daddr,
        src_port: ports[0],
        dst_port: ports[1],
        tcp_flags,
    })
}
