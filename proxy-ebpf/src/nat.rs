//! Address and port translation: DNAT towards the backend, reverse NAT on
//! replies so the client sees the VIP and service port.

use aya_ebpf::programs::TcContext;
use proxy_common::maps::drop_reason;

use crate::{csum, parse::Ipv4Flow};

const IP_SADDR_OFF: usize = 12;
const IP_DADDR_OFF: usize = 16;
const L4_SPORT_OFF: usize = 0;
const L4_DPORT_OFF: usize = 2;

/// Which end of the packet a rewrite touches.
#[derive(Clone, Copy)]
enum End {
    Source,
    Destination,
}

#[inline(always)]
fn rewrite(ctx: &TcContext, flow: &Ipv4Flow, end: End, addr: u32, port: u16) -> Result<(), u32> {
    let (addr_off, port_off, old_addr, old_port) = match end {
        End::Source => (IP_SADDR_OFF, L4_SPORT_OFF, flow.src_addr, flow.src_port),
        End::Destination => (IP_DADDR_OFF, L4_DPORT_OFF, flow.dst_addr, flow.dst_port),
    };
    let result = (|| {
        if addr != old_addr {
            csum::replace_addr(ctx, flow, old_addr, addr)?;
            ctx.store(flow.l3_off + addr_off, &addr, 0)?;
        }
        if port != old_port {
            csum::replace_port(ctx, flow, old_port, port)?;
            ctx.store(flow.l4_off + port_off, &port, 0)?;
        }
        Ok::<(), i64>(())
    })();
    result.map_err(|_| drop_reason::REWRITE_FAILED)
}

/// Client → VIP becomes client → backend.
#[inline(always)]
pub fn dnat(ctx: &TcContext, flow: &Ipv4Flow, addr: u32, port: u16) -> Result<(), u32> {
    rewrite(ctx, flow, End::Destination, addr, port)
}

/// Backend → client becomes VIP → client.
#[inline(always)]
pub fn reverse_nat(ctx: &TcContext, flow: &Ipv4Flow, addr: u32, port: u16) -> Result<(), u32> {
    rewrite(ctx, flow, End::Source, addr, port)
}
