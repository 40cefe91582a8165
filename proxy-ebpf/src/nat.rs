//! Address and port translation: DNAT towards the backend, reverse NAT on
//! replies so the client sees the VIP and service port; in XDP both ends at
//! once for flows that are SNATed too.

use aya_ebpf::programs::{TcContext, XdpContext};
use proxy_common::maps::drop_reason;

use crate::{
    csum,
    parse::{ptr_at_mut, Ipv4Flow, Ipv4Hdr},
};

/// Which end of the packet a rewrite touches.
#[derive(Clone, Copy)]
enum End {
    Source,
    Destination,
}

#[inline(always)]
fn rewrite(ctx: &TcContext, flow: &Ipv4Flow, end: End, addr: u32, port: u16) -> Result<(), u32> {
    let (old_addr, old_port, port_index) = match end {
        End::Source => (flow.src_addr, flow.src_port, 0),
        End::Destination => (flow.dst_addr, flow.dst_port, 1),
    };
    // L4 checksum first: the helper may move the packet, so the header
    // pointers are taken afterwards.
    if addr != old_addr {
        csum::l4_replace_addr(ctx, flow, old_addr, addr)
            .map_err(|_| drop_reason::REWRITE_FAILED)?;
    }
    if port != old_port {
        csum::l4_replace_port(ctx, flow, old_port, port)
            .map_err(|_| drop_reason::REWRITE_FAILED)?;
    }
    let ip = ptr_at_mut::<Ipv4Hdr>(ctx, flow.l3_off).ok_or(drop_reason::REWRITE_FAILED)?;
    let ports = ptr_at_mut::<[u16; 2]>(ctx, flow.l4_off).ok_or(drop_reason::REWRITE_FAILED)?;
    // SAFETY: both pointers were bounds-checked against data_end just above.
    unsafe {
        (*ip).check = csum::replace_u32((*ip).check, old_addr, addr);
        match end {
            End::Source => (*ip).saddr = addr,
            End::Destination => (*ip).daddr = addr,
        }
        (*ports)[port_index] = port;
    }
    Ok(())
}

/// Client → VIP becomes client → backend.
#[inline(always)]
pub fn dnat(ctx: &TcContext, flow: &Ipv4Flow, addr: u32, port: u16) -> Result<(), u32> {
    rewrite(ctx, flow, End::Destination, addr, port)
}

/// Client → backend becomes stand-in → backend (hairpin).
#[inline(always)]
pub fn snat(ctx: &TcContext, flow: &Ipv4Flow, addr: u32, port: u16) -> Result<(), u32> {
    rewrite(ctx, flow, End::Source, addr, port)
}

/// Backend → client becomes VIP → client.
#[inline(always)]
pub fn reverse_nat(ctx: &TcContext, flow: &Ipv4Flow, addr: u32, port: u16) -> Result<(), u32> {
    rewrite(ctx, flow, End::Source, addr, port)
}

/// One end of a flow: address and port, network order.
pub type Endpoint = (u32, u16);

/// XDP: rewrites the packet to go from `src` to `dst`, updating the IPv4
/// and L4 checksums in place. A UDP checksum of zero ("none") stays zero.
#[inline(always)]
pub fn xdp_translate(
    ctx: &XdpContext,
    flow: &Ipv4Flow,
    src: Endpoint,
    dst: Endpoint,
) -> Result<(), u32> {
    let (csum_off, udp) = csum::l4_csum_off(flow);
    let ip = ptr_at_mut::<Ipv4Hdr>(ctx, flow.l3_off).ok_or(drop_reason::REWRITE_FAILED)?;
    let ports = ptr_at_mut::<[u16; 2]>(ctx, flow.l4_off).ok_or(drop_reason::REWRITE_FAILED)?;
    let l4_check = ptr_at_mut::<u16>(ctx, csum_off).ok_or(drop_reason::REWRITE_FAILED)?;
    // SAFETY: every pointer was bounds-checked against data_end just above.
    unsafe {
        let mut ip_check = (*ip).check;
        ip_check = csum::replace_u32(ip_check, flow.src_addr, src.0);
        ip_check = csum::replace_u32(ip_check, flow.dst_addr, dst.0);
        (*ip).check = ip_check;
        (*ip).saddr = src.0;
        (*ip).daddr = dst.0;
        (*ports)[0] = src.1;
        (*ports)[1] = dst.1;
        let mut check = *l4_check;
        if !(udp && check == 0) {
            // The pseudo-header holds both addresses.
            check = csum::replace_u32(check, flow.src_addr, src.0);
            check = csum::replace_u32(check, flow.dst_addr, dst.0);
            check = csum::replace_u16(check, flow.src_port, src.1);
            check = csum::replace_u16(check, flow.dst_port, dst.1);
            if udp && check == 0 {
                check = 0xffff;
            }
            *l4_check = check;
        }
    }
    Ok(())
}
