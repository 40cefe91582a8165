//! Address and port translation of either family: DNAT towards the
//! backend, reverse NAT on replies so the client sees the VIP and service
//! port; in XDP both ends at once for flows that are SNATed too.
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
    parse::{ptr_at_mut, Flow, Ipv4Hdr},
};

const TCP_CSUM_OFF: usize = 16;
const UDP_CSUM_OFF: usize = 6;

/// One end of a flow: address and port, network order.
pub type Endpoint<F> = csum::Endpoint<F>;

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
    let (old_addr, old_port, port_index, source) = match end {
        End::Source => (flow.src_addr, flow.src_port, 0, true),
        End::Destination => (flow.dst_addr, flow.dst_port, 1, false),
    };
    // L4 checksum first: the helper may move the packet, so the header
    // pointers are taken afterwards.
    if addr != old_addr {
        l4_replace_addr(ctx, flow, old_addr, addr)?;
    }
    if port != old_port {
        l4_replace(ctx, flow, old_port as u32, port as u32, 2, false)?;
    }
    let ip = ptr_at_mut::<F::IpHeader>(ctx, flow.l3_off).ok_or(DropReason::RewriteFailed)?;
    let ports = ptr_at_mut::<[u16; 2]>(ctx, flow.l4_off).ok_or(DropReason::RewriteFailed)?;
    // SAFETY: every field lies in the header, bounds-checked just above,
    // as are the ports.
    unsafe {
        if F::HEADER_CHECKSUM {
            let ip = ip as *mut Ipv4Hdr;
            if let ([from], [to]) = (old_addr.words(), addr.words()) {
                (*ip).check = csum::replace_u32((*ip).check, *from, *to);
            }
        }
        *F::addr_field(ip, source) = addr;
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

/// XDP: rewrites the packet to go from `src` to `dst`, updating the L4
/// checksum (and IPv4's header checksum) in place.
#[inline(always)]
pub fn xdp_translate<F: Family>(
    ctx: &XdpContext,
    flow: &Flow<F>,
    src: Endpoint<F>,
    dst: Endpoint<F>,
) -> Result<(), DropReason> {
    let (csum_off, udp) = l4_csum_off(flow);
    let ip = ptr_at_mut::<F::IpHeader>(ctx, flow.l3_off).ok_or(DropReason::RewriteFailed)?;
    let ports = ptr_at_mut::<[u16; 2]>(ctx, flow.l4_off).ok_or(DropReason::RewriteFailed)?;
    let l4_check = ptr_at_mut::<u16>(ctx, csum_off).ok_or(DropReason::RewriteFailed)?;
    let from = (
        (flow.src_addr, flow.src_port),
        (flow.dst_addr, flow.dst_port),
    );
    // SAFETY: every field lies in the header, bounds-checked just above,
    // as are the ports and the L4 checksum.
    unsafe {
        if F::HEADER_CHECKSUM {
            if let ([from_src], [from_dst], [to_src], [to_dst]) = (
                from.0 .0.words(),
                from.1 .0.words(),
                src.0.words(),
                dst.0.words(),
            ) {
                let ip = ip as *mut Ipv4Hdr;
                (*ip).check =
                    csum::ipv4_translated((*ip).check, (*from_src, *from_dst), (*to_src, *to_dst));
            }
        }
        *F::addr_field(ip, true) = src.0;
        *F::addr_field(ip, false) = dst.0;
        (*ports)[0] = src.1;
        (*ports)[1] = dst.1;
        *l4_check = csum::l4_translated(*l4_check, udp, from, (src, dst));
    }
    Ok(())
}
