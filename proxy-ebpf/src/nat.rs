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
//!
//! SCTP's checksum is a CRC32c over its packet alone (no pseudo-header):
//! an address changes nothing in it, a port changes it by what
//! `proxy_common::crc32c::update_ports` computes from the ports and the
//! packet's length, with no pass over the payload, in tc and XDP alike. A
//! zero checksum is left as it is: it is a CRC still to be computed (an
//! skb with SCTP CRC offload, `CHECKSUM_PARTIAL`, carries zero until the
//! device or the software fallback fills it in over the rewritten bytes,
//! and a veth peer never checks it), and a real CRC is zero once in 2^32
//! packets.

use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR},
    helpers::generated::bpf_csum_update,
    programs::{TcContext, XdpContext},
};
use proxy_common::{
    crc32c, csum,
    maps::{DropReason, PROTO_SCTP, PROTO_UDP},
    sctp,
};

use crate::{
    family::Family,
    parse::{below_64k, ptr_at_mut, Flow, Ipv4Hdr, IPV4_HLEN, IPV6_HLEN},
};

const TCP_CSUM_OFF: usize = 16;
const UDP_CSUM_OFF: usize = 6;

/// One end of a flow: address and port, network order.
pub type Endpoint<F> = csum::Endpoint<F>;

/// The offset of the L4 checksum field, and whether it is UDP's (SCTP's
/// CRC32c is no such sum: its offset only keeps a short packet's bounds).
#[inline(always)]
fn l4_csum_off<F>(flow: &Flow<F>) -> (usize, bool) {
    match flow.proto {
        PROTO_UDP => (flow.l4_off + UDP_CSUM_OFF, true),
        PROTO_SCTP => (flow.l4_off + sctp::CHECKSUM_OFF, false),
        _ => (flow.l4_off + TCP_CSUM_OFF, false),
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
    if flow.proto == PROTO_SCTP {
        if port != old_port {
            let mut ports = [flow.src_port, flow.dst_port];
            ports[port_index] = port;
            tc_sctp_crc(ctx, flow, ports)?;
        }
    } else {
        // L4 checksum first: the helper may move the packet, so the header
        // pointers are taken afterwards.
        if addr != old_addr {
            l4_replace_addr(ctx, flow, old_addr, addr)?;
        }
        if port != old_port {
            l4_replace(ctx, flow, old_port as u32, port as u32, 2, false)?;
        }
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

/// The SCTP packet's length: what its IP header says follows, less IPv4
/// options or IPv6 extension headers; `None` below a common header and a
/// chunk header (an IPv6 jumbogram's length is not in its header).
#[inline(always)]
fn sctp_len<F: Family>(flow: &Flow<F>) -> Option<u32> {
    let fixed = if F::HEADER_CHECKSUM {
        IPV4_HLEN
    } else {
        IPV6_HLEN
    };
    let len = (flow.ip_payload_len as usize + fixed).checked_sub(flow.l4_off - flow.l3_off)?;
    (len >= sctp::MIN_LEN).then_some(len as u32)
}

/// The SCTP checksum field's new value once the ports become `ports`, from
/// its value `crc` (as the packet holds it); `None` when it stays.
#[inline(always)]
fn sctp_crc<F: Family>(
    flow: &Flow<F>,
    crc: u32,
    ports: [u16; 2],
) -> Result<Option<u32>, DropReason> {
    let old = [flow.src_port, flow.dst_port];
    if crc == 0 || ports == old {
        return Ok(None);
    }
    let len = below_64k(sctp_len(flow).ok_or(DropReason::RewriteFailed)?);
    let updated = crc32c::update_ports(u32::from_le(crc), old, ports, len);
    Ok(Some(updated.to_le()))
}

/// tc: updates an SCTP packet's checksum for its ports becoming `ports`
/// (the caller writes them). On a `CHECKSUM_COMPLETE` skb the sum of the
/// packet changed with the ports and the checksum: it is told (nothing on
/// any other skb).
#[inline(always)]
fn tc_sctp_crc<F: Family>(
    ctx: &TcContext,
    flow: &Flow<F>,
    ports: [u16; 2],
) -> Result<(), DropReason> {
    let field = ptr_at_mut::<u32>(ctx, flow.l4_off + sctp::CHECKSUM_OFF)
        .ok_or(DropReason::RewriteFailed)?;
    // SAFETY: bounds-checked just above.
    let crc = unsafe { field.read_unaligned() };
    if let Some(updated) = sctp_crc(flow, crc, ports)? {
        // SAFETY: as above.
        unsafe { field.write_unaligned(updated) };
        let word = |ports: [u16; 2]| ports[0] as u32 | (ports[1] as u32) << 16;
        let diff = csum::words_diff(
            &[word([flow.src_port, flow.dst_port]), crc],
            &[word(ports), updated],
        );
        // SAFETY: a plain helper call on our own skb.
        unsafe { bpf_csum_update(ctx.skb.skb, diff) };
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
    if flow.proto == PROTO_SCTP {
        let field = ptr_at_mut::<u32>(ctx, flow.l4_off + sctp::CHECKSUM_OFF)
            .ok_or(DropReason::RewriteFailed)?;
        // SAFETY: bounds-checked just above.
        let crc = unsafe { field.read_unaligned() };
        if let Some(updated) = sctp_crc(flow, crc, [src.1, dst.1])? {
            // SAFETY: as above.
            unsafe { field.write_unaligned(updated) };
        }
    }
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
        if flow.proto != PROTO_SCTP {
            *l4_check = csum::l4_translated(*l4_check, udp, from, (src, dst));
        }
    }
    Ok(())
}
