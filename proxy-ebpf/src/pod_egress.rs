//! tcx egress on the host side of each pod interface: packets entering a pod.
//! Replies of a connection the pod opened through a ClusterIP are
//! reverse-NATed here, so the pod sees the VIP whether the backend was a pod
//! on this node, on another node, or outside the cluster. Everything else
//! passes untouched.

use aya_ebpf::{macros::classifier, programs::TcContext};

use crate::{conntrack, nat, parse, stats};

#[classifier]
pub fn pod_egress(ctx: TcContext) -> i32 {
    stats::tc_verdict(translate(&ctx))
}

/// Err carries a `drop_reason`.
#[inline(always)]
fn translate(ctx: &TcContext) -> Result<(), u32> {
    let Some(flow) = parse::ipv4_flow(ctx) else {
        return Ok(());
    };
    match conntrack::lookup_reply(&flow) {
        Some(entry) => nat::reverse_nat(ctx, &flow, entry.nat_addr, entry.nat_port),
        None => Ok(()),
    }
}
