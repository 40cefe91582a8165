//! Checksums, decided in one place. In tc the L4 checksum goes through the
//! kernel helper, the only one that knows whether the skb carries a full
//! checksum or a partial one (veth with offloads on); the IPv4 header
//! checksum is always full, so it is updated in place (RFC 1624) without a
//! helper call. XDP frames carry full checksums and have no such helper:
//! there every checksum is updated in place.

use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR},
    programs::TcContext,
};
use proxy_common::maps::PROTO_UDP;

use crate::parse::Ipv4Flow;

const TCP_CSUM_OFF: usize = 16;
const UDP_CSUM_OFF: usize = 6;

/// The L4 checksum's offset and the helper flags it needs.
#[inline(always)]
fn l4_csum(flow: &Ipv4Flow) -> (usize, u64) {
    let (off, udp) = l4_csum_off(flow);
    // A zero UDP checksum means "none" and must stay zero; a computed zero
    // is written as 0xffff.
    (off, if udp { BPF_F_MARK_MANGLED_0 as u64 } else { 0 })
}

/// Accounts for an IPv4 address change in the L4 (pseudo-header) checksum.
#[inline(always)]
pub fn l4_replace_addr(ctx: &TcContext, flow: &Ipv4Flow, from: u32, to: u32) -> Result<(), i64> {
    let (off, flags) = l4_csum(flow);
    ctx.l4_csum_replace(
        off,
        from as u64,
        to as u64,
        flags | BPF_F_PSEUDO_HDR as u64 | 4,
    )
}

/// Accounts for a port change in the L4 checksum.
#[inline(always)]
pub fn l4_replace_port(ctx: &TcContext, flow: &Ipv4Flow, from: u16, to: u16) -> Result<(), i64> {
    let (off, flags) = l4_csum(flow);
    ctx.l4_csum_replace(off, from as u64, to as u64, flags | 2)
}

/// The offset of the L4 checksum field, and whether it is UDP's.
#[inline(always)]
pub fn l4_csum_off(flow: &Ipv4Flow) -> (usize, bool) {
    if flow.proto == PROTO_UDP {
        (flow.l4_off + UDP_CSUM_OFF, true)
    } else {
        (flow.l4_off + TCP_CSUM_OFF, false)
    }
}

/// A checksum after a 16-bit field changed from `from` to `to` (RFC 1624).
#[inline(always)]
pub fn replace_u16(check: u16, from: u16, to: u16) -> u16 {
    let sum = (!check) as u32 + (!from) as u32 + to as u32;
    let sum = (sum & 0xffff) + (sum >> 16);
    let sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}

/// A checksum after a 32-bit field changed from `from` to `to`:
/// HC' = ~(~HC + ~m + m'), over 16-bit words. Byte order does not matter as
/// long as all values are read from the packet the same way.
#[inline(always)]
pub fn replace_u32(check: u16, from: u32, to: u32) -> u16 {
    let sum =
        (!check) as u32 + (!(from >> 16) & 0xffff) + (!from & 0xffff) + (to >> 16) + (to & 0xffff);
    // Five 16-bit terms: two folds always suffice.
    let sum = (sum & 0xffff) + (sum >> 16);
    let sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}
