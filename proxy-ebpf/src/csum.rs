//! Checksum offsets and flags, decided in one place. The kernel helpers keep
//! the checksums right for every `ip_summed` state of the skb, including
//! CHECKSUM_PARTIAL packets from veth with offloads on.

use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR},
    programs::TcContext,
};
use proxy_common::maps::PROTO_UDP;

use crate::parse::Ipv4Flow;

const IP_CSUM_OFF: usize = 10;
const TCP_CSUM_OFF: usize = 16;
const UDP_CSUM_OFF: usize = 6;

#[inline(always)]
fn l4_csum(flow: &Ipv4Flow) -> (usize, u64) {
    if flow.proto == PROTO_UDP {
        // A zero UDP checksum means "none" and must stay zero; a computed
        // zero is written as 0xffff.
        (flow.l4_off + UDP_CSUM_OFF, BPF_F_MARK_MANGLED_0 as u64)
    } else {
        (flow.l4_off + TCP_CSUM_OFF, 0)
    }
}

/// Accounts for an IPv4 address change in the IP and L4 (pseudo-header) checksums.
#[inline(always)]
pub fn replace_addr(ctx: &TcContext, flow: &Ipv4Flow, from: u32, to: u32) -> Result<(), i64> {
    ctx.l3_csum_replace(flow.l3_off + IP_CSUM_OFF, from as u64, to as u64, 4)?;
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
pub fn replace_port(ctx: &TcContext, flow: &Ipv4Flow, from: u16, to: u16) -> Result<(), i64> {
    let (off, flags) = l4_csum(flow);
    ctx.l4_csum_replace(off, from as u64, to as u64, flags | 2)
}
