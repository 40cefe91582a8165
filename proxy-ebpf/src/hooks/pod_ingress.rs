//! tcx ingress on the host side of each pod interface: packets leaving a pod,
//! of either family. Pod → ClusterIP is DNATed to a backend, or rejected
//! when the Service has none. A pod's reply to a client that reached it through the NIC program
//! (NodePort, external address) gets its frontend back as source here (and
//! the client back as destination, when the NIC program SNATed it).
//! Everything else passes untouched; replies to pod clients are
//! reverse-NATed on their way into the client (`pod_egress`), wherever the
//! backend is.

use aya_ebpf::{bindings::TC_ACT_OK, macros::classifier, programs::TcContext};
use proxy_common::{
    lb::{Decision, Hook},
    maps::{DropReason, CT_FROM_NIC, CT_HAIRPIN, CT_SNAT},
};

use crate::{
    conntrack,
    family::Family,
    forward, lb, lookup, nat,
    parse::{self, AnyFlow, Flow},
    reject, stats,
};

#[classifier]
pub fn pod_ingress(ctx: TcContext) -> i32 {
    stats::tc_verdict(translate(&ctx))
}

/// Ok carries the tc action.
#[inline(always)]
fn translate(ctx: &TcContext) -> Result<i32, DropReason> {
    match parse::tc_flow(ctx) {
        Some(AnyFlow::V4(flow)) => translate_flow(ctx, &flow),
        Some(AnyFlow::V6(flow)) => translate_flow(ctx, &flow),
        None => Ok(TC_ACT_OK),
    }
}

#[inline(always)]
fn translate_flow<F: Family>(ctx: &TcContext, flow: &Flow<F>) -> Result<i32, DropReason> {
    let frontend = if lookup::pod_frontend_port(flow.dst_port) {
        lookup::pod_frontend(flow)
    } else {
        None
    };
    if let Some(frontend) = frontend {
        let entry = match lb::balance(flow, &frontend, Hook::Pod, 0)? {
            Decision::Translate(entry) => entry,
            Decision::Reject(frontend_id) => {
                stats::count_reject(frontend_id);
                return reject::tc_reject(ctx, flow);
            }
        };
        nat::set_destination(ctx, flow, (entry.nat_addr, entry.nat_port))?;
        stats::count_frontend(entry.frontend_id, ctx.len());
        if entry.flags & CT_HAIRPIN != 0 {
            // The pod is its own backend: from the VIP stand-in, straight back in.
            nat::set_source(ctx, flow, (entry.snat_addr, entry.snat_port))?;
            forward::tc_swap_macs(ctx)?;
            return forward::tc_back_into_pod(ctx);
        }
        return Ok(TC_ACT_OK);
    }
    // Reply entries are keyed from a backend's port (the port filter skips
    // both lookups for other packets).
    if flow.packet().opens_connection() {
        // A new connection, not to a service: its replies must not be taken
        // for replies of an earlier VIP connection on the same tuple.
        if lookup::from_backend_port(flow.dst_port) {
            conntrack::forget_stale_reply(flow);
        }
    } else if !lookup::from_backend_port(flow.src_port) {
        return Ok(TC_ACT_OK);
    } else if let Some(entry) = conntrack::lookup_reply(flow) {
        if entry.flags == CT_FROM_NIC {
            nat::set_source(ctx, flow, (entry.nat_addr, entry.nat_port))?;
            // Its source is now a node address: the stack would take it for a
            // spoofed packet, so it leaves without the stack's routing input.
            return Ok(forward::tc_forward(
                ctx,
                flow,
                entry.nat_addr,
                flow.dst_addr,
            ));
        }
        if entry.flags & CT_SNAT != 0 {
            // A backend on this node that the NIC program took for another
            // node's (its endpoint named no node, or another) and SNATed:
            // the reply comes back here, not through a NIC. Translated back
            // as the NIC program would, so the flow works all the same.
            nat::set_destination(ctx, flow, (entry.snat_addr, entry.snat_port))?;
            nat::set_source(ctx, flow, (entry.nat_addr, entry.nat_port))?;
            return Ok(forward::tc_forward(
                ctx,
                flow,
                entry.nat_addr,
                entry.snat_addr,
            ));
        }
        if entry.flags == CT_HAIRPIN {
            // A pod answering itself through its Service: from the VIP, to
            // its own end, straight back in.
            nat::set_destination(ctx, flow, (entry.snat_addr, entry.snat_port))?;
            nat::set_source(ctx, flow, (entry.nat_addr, entry.nat_port))?;
            forward::tc_swap_macs(ctx)?;
            return forward::tc_back_into_pod(ctx);
        }
    }
    Ok(TC_ACT_OK)
}
