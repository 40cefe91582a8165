//! tcx ingress on the host side of each pod interface: packets leaving a pod.
//! Pod → ClusterIP is DNATed to a backend, or rejected when the Service has
//! none. A pod's reply to a client that reached it through the NIC program
//! (NodePort, external address) gets its frontend back as source here.
//! Everything else passes untouched; replies to pod clients are
//! reverse-NATed on their way into the client (`pod_egress`), wherever the
//! backend is.

use aya_ebpf::{bindings::TC_ACT_OK, macros::classifier, programs::TcContext};
use proxy_common::maps::{
    drop_reason, CT_FROM_NIC, CT_HAIRPIN, PROTO_UDP, SERVICE_EMPTY_DROP, SERVICE_SOURCE_RANGES,
};

use crate::{conntrack, forward, lookup, nat, parse, reject, select, stats};

#[classifier]
pub fn pod_ingress(ctx: TcContext) -> i32 {
    stats::tc_verdict(translate(&ctx))
}

/// Ok carries the tc action, Err a `drop_reason`.
#[inline(always)]
fn translate(ctx: &TcContext) -> Result<i32, u32> {
    let Some(flow) = parse::tc_ipv4_flow(ctx) else {
        return Ok(TC_ACT_OK);
    };
    let opening = flow.tcp_flags & (parse::TCP_SYN | parse::TCP_ACK) == parse::TCP_SYN;
    if let Some(service) = lookup::cluster_ip_service(&flow) {
        if service.flags & SERVICE_SOURCE_RANGES != 0
            && !lookup::source_allowed(service.id, flow.src_addr)
        {
            // A load balancer's address whose ranges leave this pod out.
            return Err(drop_reason::SOURCE_RANGE);
        }
        // A SYN opens a new connection: an entry left on its tuple by an
        // earlier one may name a backend that has left the service since.
        let existing = match conntrack::lookup_forward(&flow).filter(|_| !opening) {
            Some(entry) if !select::backend_still_exists(&entry) => {
                if flow.proto != PROTO_UDP {
                    // Its backend has left the Service: end the connection
                    // now, rather than let it hang or move mid-stream.
                    return reject::tc_reject(ctx, &flow);
                }
                // A datagram flow just moves on.
                None
            }
            other => other,
        };
        let entry = match existing {
            Some(entry) => entry,
            None if service.table_size == 0 => {
                if service.flags & SERVICE_EMPTY_DROP != 0 {
                    return Err(drop_reason::NO_LOCAL_BACKEND);
                }
                return reject::tc_reject(ctx, &flow);
            }
            None => {
                let chosen = select::select_backend(&service, &flow)?;
                if chosen.backend.addr == flow.src_addr {
                    conntrack::create_hairpin(&flow, service.id, &chosen)?
                } else {
                    conntrack::create(&flow, service.id, &chosen, 0)?
                }
            }
        };
        nat::dnat(ctx, &flow, entry.nat_addr, entry.nat_port)?;
        stats::count_service(service.id, ctx.len());
        if entry.flags & CT_HAIRPIN != 0 {
            // The pod is its own backend: from the VIP stand-in, straight back in.
            nat::snat(ctx, &flow, entry.snat_addr, entry.snat_port)?;
            forward::tc_swap_macs(ctx)?;
            return forward::tc_back_into_pod(ctx);
        }
        return Ok(TC_ACT_OK);
    }
    if opening {
        // A new connection, not to a service: its replies must not be taken
        // for replies of an earlier VIP connection on the same tuple.
        conntrack::forget_stale_reply(&flow);
    } else if let Some(entry) = conntrack::lookup_reply(&flow) {
        if entry.flags == CT_FROM_NIC {
            nat::reverse_nat(ctx, &flow, entry.nat_addr, entry.nat_port)?;
            // Its source is now a node address: the stack would take it for a
            // spoofed packet, so it leaves without the stack's routing input.
            return Ok(forward::tc_forward(
                ctx,
                &flow,
                entry.nat_addr,
                flow.dst_addr,
            ));
        }
        if entry.flags == CT_HAIRPIN {
            // A pod answering itself through its Service: from the VIP, to
            // its own end, straight back in.
            nat::dnat(ctx, &flow, entry.snat_addr, entry.snat_port)?;
            nat::reverse_nat(ctx, &flow, entry.nat_addr, entry.nat_port)?;
            forward::tc_swap_macs(ctx)?;
            return forward::tc_back_into_pod(ctx);
        }
    }
    Ok(TC_ACT_OK)
}
