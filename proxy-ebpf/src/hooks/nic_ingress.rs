//! XDP on the node's NICs: traffic from outside the cluster to a NodePort,
//! a LoadBalancer ingress IP or an external IP is translated in the driver.
//! A backend on this node gets the packet DNATed and handed to the stack,
//! which routes it to the pod (its reply is reverse-NATed by `pod_ingress`).
//! A backend on another node (traffic policy Cluster) gets it DNATed and
//! SNATed to this node, then forwarded from XDP; its reply comes back here
//! and is translated back to the client. Everything else passes untouched.

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};
use proxy_common::{
    addr::Addr6,
    lb::{Decision, Hook},
    maps::{DropReason, CT_REPLY, CT_SNAT, SNAT_PORT_MIN},
};

use crate::{
    conntrack,
    family::Family,
    forward, lb, lookup, nat,
    parse::{self, L3},
    reject, snat, stats,
};

#[xdp]
pub fn nic_ingress(ctx: XdpContext) -> u32 {
    match parse::l3(&ctx) {
        Some(L3::V4(l3_off)) => translate_family::<u32>(&ctx, l3_off),
        Some(L3::V6(l3_off)) => translate_family::<Addr6>(&ctx, l3_off),
        None => xdp_action::XDP_PASS,
    }
}

/// A subprogram per family (a BPF-to-BPF call), each parsing its own
/// packet: inlined side by side, the two families' stack frames would be
/// summed past the 512 bytes BPF allows a program. It returns the XDP
/// action, a plain number: a `Result` may come back through the caller's
/// stack, which the verifier refuses.
#[inline(never)]
fn translate_family<F: Family>(ctx: &XdpContext, l3_off: usize) -> u32 {
    stats::xdp_verdict(translate::<F>(ctx, l3_off))
}

/// Ok carries the XDP action.
#[inline(always)]
fn translate<F: Family>(ctx: &XdpContext, l3_off: usize) -> Result<u32, DropReason> {
    let Some(flow) = F::linear_flow(ctx, l3_off) else {
        return Ok(xdp_action::XDP_PASS);
    };
    let flow = &flow;
    // Only SNATed replies use these ports: other traffic skips the lookup.
    if u16::from_be(flow.dst_port) >= SNAT_PORT_MIN {
        if let Some(reply) = conntrack::entry_mut(flow, CT_REPLY) {
            // SAFETY: a map value pointer, valid for this program run.
            let entry = unsafe { *reply };
            if entry.flags & CT_SNAT != 0 {
                snat::touch(reply, flow);
                // From the frontend the client contacted, to the client.
                let frontend = (entry.nat_addr, entry.nat_port);
                let client = (entry.snat_addr, entry.snat_port);
                nat::xdp_translate(ctx, flow, frontend, client)?;
                return Ok(forward::xdp_forward(ctx, flow, frontend.0, client.0));
            }
        }
    }
    if !lookup::node_frontend_port(flow.dst_port) {
        return Ok(xdp_action::XDP_PASS);
    }
    let ingress = ctx.ingress_ifindex() as u32;
    let entry = match lb::balance_conntrack_first(flow, Hook::Nic, ingress, lookup::node_frontend)?
    {
        Some(Decision::Translate(entry)) => entry,
        Some(Decision::Reject(frontend_id)) => {
            stats::count_reject(frontend_id);
            return reject::xdp_reject(ctx, flow);
        }
        None => return Ok(xdp_action::XDP_PASS),
    };
    stats::count_frontend(entry.frontend_id, (ctx.data_end() - ctx.data()) as u32);
    let backend = (entry.nat_addr, entry.nat_port);
    if entry.flags & CT_SNAT != 0 {
        let node = (entry.snat_addr, entry.snat_port);
        nat::xdp_translate(ctx, flow, node, backend)?;
        Ok(forward::xdp_forward(ctx, flow, node.0, backend.0))
    } else {
        nat::xdp_translate(ctx, flow, (flow.src_addr, flow.src_port), backend)?;
        Ok(xdp_action::XDP_PASS)
    }
}
