//! tcx ingress on the host side of each pod interface: packets leaving a pod.
//! Pod → ClusterIP is DNATed to a backend. Everything else passes untouched;
//! replies are reverse-NATed on their way into the client (`pod_egress`),
//! wherever the backend is.

use aya_ebpf::{macros::classifier, programs::TcContext};

use proxy_common::maps::PROTO_UDP;

use crate::{conntrack, lookup, nat, parse, select, stats};

#[classifier]
pub fn pod_ingress(ctx: TcContext) -> i32 {
    stats::tc_verdict(translate(&ctx))
}

/// Err carries a `drop_reason`.
#[inline(always)]
fn translate(ctx: &TcContext) -> Result<(), u32> {
    let Some(flow) = parse::ipv4_flow(ctx) else {
        return Ok(());
    };
    if let Some(service) = lookup::cluster_ip_service(&flow) {
        // A SYN opens a new connection: an entry left on its tuple by an
        // earlier one may name a backend that has left the service since.
        let new_connection = flow.tcp_flags & (parse::TCP_SYN | parse::TCP_ACK) == parse::TCP_SYN;
        let existing = if new_connection {
            None
        } else {
            conntrack::lookup_forward(&flow)
                .filter(|e| flow.proto != PROTO_UDP || select::backend_still_exists(e))
        };
        let entry = match existing {
            Some(entry) => entry,
            None => {
                let chosen = select::select_backend(&service, &flow)?;
                conntrack::create(&flow, service.id, &chosen)?
            }
        };
        nat::dnat(ctx, &flow, entry.nat_addr, entry.nat_port)?;
        stats::count_service(service.id, ctx.len());
        return Ok(());
    }
    if flow.tcp_flags & (parse::TCP_SYN | parse::TCP_ACK) == parse::TCP_SYN {
        // A new connection, not to a service: its replies must not be taken
        // for replies of an earlier VIP connection on the same tuple.
        conntrack::forget_stale_reply(&flow);
    }
    Ok(())
}
