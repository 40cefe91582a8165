//! tcx egress on the host side of each pod interface: packets entering a pod.
//! Replies of a connection the pod opened through a ClusterIP are
//! reverse-NATed here (either family), so the pod sees the VIP whether the backend was a pod
//! on this node, on another node, or outside the cluster. Everything else
//! passes untouched.

use aya_ebpf::{bindings::TC_ACT_OK, macros::classifier, programs::TcContext};
use proxy_common::maps::DropReason;

use crate::{
    conntrack,
    family::Family,
    lookup, nat,
    parse::{self, AnyFlow, Flow},
    stats,
};

#[classifier]
pub fn pod_egress(ctx: TcContext) -> i32 {
    stats::tc_verdict(translate(&ctx))
}

#[inline(always)]
fn translate(ctx: &TcContext) -> Result<i32, DropReason> {
    match parse::tc_flow(ctx) {
        Some(AnyFlow::V4(flow)) => reverse(ctx, &flow),
        Some(AnyFlow::V6(flow)) => reverse(ctx, &flow),
        None => Ok(TC_ACT_OK),
    }
}

/// The reverse NAT of a reply to the pod's own connection through a
/// frontend.
#[inline(always)]
fn reverse<F: Family>(ctx: &TcContext, flow: &Flow<F>) -> Result<i32, DropReason> {
    if !lookup::from_backend_port(flow.src_port) {
        return Ok(TC_ACT_OK);
    }
    if let Some(entry) = conntrack::lookup_reply(flow) {
        nat::set_source(ctx, flow, (entry.nat_addr, entry.nat_port))?;
    }
    Ok(TC_ACT_OK)
}
