//! Address and port translation: DNAT towards the backend, reverse NAT on
//! replies so the client sees the VIP and service port (tc: both families;
//! XDP: IPv4); in XDP both ends at once for flows that are SNATed too.
//!
//! Checksums: in tc the L4 checksum goes through the kernel helper, which
//! updates it as the skb carries it, full or partial (veth with offloads
//! on): an IPv4 address as one 4-byte replacement, an IPv6 address (four
//! words of the pseudo-header) as one difference; the
//! IPv4 header checksum is always full, so it is updated in place (IPv6 has
//! none). XDP frames carry full checksums and have no such helper: there
//! every checksum is updated in place. The arithmetic is
//! `proxy_common::csum`'s.

use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR},
    helpers::generated::bpf_csum_update,
    programs::{TcContext, XdpContext},
};
use proxy_common::{
    csum,
    maps::{DropReason, PROTO_UDP},
};

use crate::{
    family::Family,
    parse::{ptr_at_mut, Flow, Ipv4Flow, Ipv4Hdr},
};

const TCP_CSUM_OFF: usize = 16;
const UDP_CSUM_OFF: usize = 6;
/// The IPv4 header checksum's offset.
const IPV4_CSUM_OFF: usize = 10;

/// One end of a flow: address and port, network order.
pub type Endpoint<F> = (F, u16);

/// The offset of the L4 checksum field, and whether it is UDP's.
#[inline(always)]
fn l4_csum_off<F>(flow: &Flow<F>) -> (usize, bool) {
    if flow.proto == PROTO_UDP {
        (flow.l4_off + UDP_CSUM_OFF, true)
    } else {
        (flow.l4_off + TCP_CSUM_OFF, false)
    }
}

/// tc: accounts for a change of `from` to `to` (`size` bytes; `pseudo`: a
/// field of the pseudo-header) in the L4 checksum, through the helper.
#[inline(always)]
fn l4_replace<F>(
    ctx: &TcContext,
    flow: &Flow<F>,
    from: u32,
    to: u32,
    size: u64,
    pseudo: bool,
) -> Result<(), DropReason> {
    let (off, udp) = l4_csum_off(flow);
    // A zero UDP checksum means "none" and must stay zero; a computed zero
    // is written as 0xffff.
    let mut flags = size;
    if udp {
        flags |= BPF_F_MARK_MANGLED_0 as u64;
    }
    if pseudo {
        flags |= BPF_F_PSEUDO_HDR as u64;
    }
    ctx.l4_csum_replace(off, from as u64, to as u64, flags)
        .map_err(|_| DropReason::RewriteFailed)
}

/// Which end of the packet a rewrite touches.
#[derive(Clone, Copy)]
enum End {
    Source,
    Destination,
}

/// tc: accounts for an address of the pseudo-header changing from `from`
/// to `to` in the L4 checksum: IPv4's in one 4-byte replacement, IPv6's
/// four words as one difference (size 0: `to` is the difference).
#[inline(always)]
fn l4_replace_addr<F: Family>(
    ctx: &TcContext,
    flow: &Flow<F>,
    from: F,
    to: F,
) -> Result<(), DropReason> {
    match (from.words(), to.words()) {
        ([from], [to]) => l4_replace(ctx, flow, *from, *to, 4, true),
        (from, to) => {
            let diff = csum::words_diff(from, to);
            l4_replace(ctx, flow, 0, diff, 0, true)?;
            // On a CHECKSUM_COMPLETE skb the helper also took the
            // difference out of skb->csum, as IPv4's header checksum
            // would have changed by it; IPv6 has none, so the sum of the
            // packet is what it was: give it back (nothing on any other
            // skb; kernels from 6.16 do this themselves with BPF_F_IPV6).
            // SAFETY: a plain helper call on our own skb.
            unsafe { bpf_csum_update(ctx.skb.skb, diff) };
            Ok(())
        }
    }
}

#[inline(always)]
fn rewrite<F: Family>(
    ctx: &TcContext,
    flow: &Flow<F>,
    end: End,
    to: Endpoint<F>,
) -> Result<(), DropReason> {
    let (addr, port) = to;
    let (old_addr, old_port, port_index, addr_off) = match end {
        End::Source => (flow.src_addr, flow.src_port, 0, F::SRC_OFF),
        End::Destination => (flow.dst_addr, flow.dst_port, 1, F::DST_OFF),
    };
    // L4 checksum first: the helper may move the packet, so the header
    // pointers are taken afterwards.
    if addr != old_addr {
        l4_replace_addr(ctx, flow, old_addr, addr)?;
    }
    if port != old_port {
        l4_replace(ctx, flow, old_port as u32, port as u32, 2, false)?;
    }
    let field = ptr_at_mut::<F>(ctx, flow.l3_off + addr_off).ok_or(DropReason::RewriteFailed)?;
    let ports = ptr_at_mut::<[u16; 2]>(ctx, flow.l4_off).ok_or(DropReason::RewriteFailed)?;
    if F::HEADER_CHECKSUM {
        let check =
            ptr_at_mut::<u16>(ctx, flow.l3_off + IPV4_CSUM_OFF).ok_or(DropReason::RewriteFailed)?;
        if let ([from], [to]) = (old_addr.words(), addr.words()) {
            // SAFETY: bounds-checked just above.
            unsafe { *check = csum::replace_u32(*check, *from, *to) };
        }
    }
    // SAFETY: both pointers were bounds-checked against data_end just above.
    unsafe {
        *field = addr;
        (*ports)[port_index] = port;
    }
    Ok(())
}

/// tc: the packet goes to `destination` (DNAT: client → VIP becomes
/// client → backend).
#[inline(always)]
pub fn set_destination<F: Family>(
    ctx: &TcContext,
    flow: &Flow<F>,
    destination: Endpoint<F>,
) -> Result<(), DropReason> {
    rewrite(ctx, flow, End::Destination, destination)
}

/// tc: the packet comes from `source` (reverse NAT: backend → client
/// becomes VIP → client; hairpin: the VIP stands in for the client).
#[inline(always)]
pub fn set_source<F: Family>(
    ctx: &TcContext,
    flow: &Flow<F>,
    source: Endpoint<F>,
) -> Result<(), DropReason> {
    rewrite(ctx, flow, End::Source, source)
}

/// XDP: rewrites the packet to go from `src` to `dst`, updating the IPv4
/// and L4 checksums in place.
#[inline(always)]
pub fn xdp_translate(
    ctx: &XdpContext,
    flow: &Ipv4Flow,
    src: Endpoint<u32>,
    dst: Endpoint<u32>,
) -> Result<(), DropReason> {
    let (csum_off, udp) = l4_csum_off(flow);
    let ip = ptr_at_mut::<Ipv4Hdr>(ctx, flow.l3_off).ok_or(DropReason::RewriteFailed)?;
    let ports = ptr_at_mut::<[u16; 2]>(ctx, flow.l4_off).ok_or(DropReason::RewriteFailed)?;
    let l4_check = ptr_at_mut::<u16>(ctx, csum_off).ok_or(DropReason::RewriteFailed)?;
    let from = (
        (flow.src_addr, flow.src_port),
        (flow.dst_addr, flow.dst_port),
    );
    // SAFETY: every pointer was bounds-checked against data_end just above.
    unsafe {
        (*ip).check = csum::ipv4_translated((*ip).check, (from.0 .0, from.1 .0), (src.0, dst.0));
        (*ip).saddr = src.0;
        (*ip).daddr = dst.0;
        (*ports)[0] = src.1;
        (*ports)[1] = dst.1;
        *l4_check = csum::l4_translated(*l4_check, udp, from, (src, dst));
    }
    Ok(())
}
