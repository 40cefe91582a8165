//! XDP on the node's NICs: traffic from outside the cluster to a NodePort,
//! a LoadBalancer ingress IP or an external IP is translated in the driver.
//! A backend on this node gets the packet DNATed and handed to the stack,
//! which routes it to the pod (its reply is reverse-NATed by `pod_ingress`).
//! A backend on another node (traffic policy Cluster) gets it DNATed and
//! SNATed to this node, then forwarded from XDP; its reply comes back here
//! and is translated back to the client. Everything else passes untouched.

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};
use proxy_common::maps::{
    drop_reason, ServiceValue, BACKEND_LOCAL, CT_CLOSING, CT_FORWARD, CT_FROM_NIC, CT_REPLY,
    CT_SNAT, PROTO_UDP, SERVICE_EMPTY_DROP, SERVICE_SNAT_REMOTE, SERVICE_SOURCE_RANGES,
    SNAT_PORT_MIN,
};

use crate::{
    conntrack, forward, lookup, nat,
    parse::{self, Ipv4Flow},
    reject, select, snat, stats,
};

#[xdp]
pub fn nic_ingress(ctx: XdpContext) -> u32 {
    stats::xdp_verdict(translate(&ctx))
}

/// Ok carries the XDP action, Err a `drop_reason`.
#[inline(always)]
fn translate(ctx: &XdpContext) -> Result<u32, u32> {
    let Some(flow) = parse::ipv4_flow(ctx) else {
        return Ok(xdp_action::XDP_PASS);
    };
    // Only SNATed replies use these ports: other traffic skips the lookup.
    if u16::from_be(flow.dst_port) >= SNAT_PORT_MIN {
        if let Some(reply) = conntrack::entry_mut(&flow, CT_REPLY) {
            // SAFETY: a map value pointer, valid for this program run.
            let entry = unsafe { *reply };
            if entry.flags & CT_SNAT != 0 {
                snat::touch(reply, &flow);
                // From the frontend the client contacted, to the client.
                let frontend = (entry.nat_addr, entry.nat_port);
                let client = (entry.snat_addr, entry.snat_port);
                nat::xdp_translate(ctx, &flow, frontend, client)?;
                return Ok(forward::xdp_forward(ctx, &flow, frontend.0, client.0));
            }
        }
    }
    let Some(service) = lookup::node_service(&flow) else {
        return Ok(xdp_action::XDP_PASS);
    };
    if service.flags & SERVICE_SOURCE_RANGES != 0
        && !lookup::source_allowed(service.id, flow.src_addr)
    {
        return Err(drop_reason::SOURCE_RANGE);
    }
    // An entry holds while its backend exists; then a SYN or a datagram is
    // balanced afresh and any other TCP segment gets a RST, rather than
    // hang or move mid-stream. A SYN never reuses a closing entry (its SNAT
    // port may be handed on).
    let syn = flow.tcp_flags & (parse::TCP_SYN | parse::TCP_ACK) == parse::TCP_SYN;
    let existing = match conntrack::entry_mut(&flow, CT_FORWARD) {
        Some(e) => {
            // SAFETY: a map value pointer, valid for this program run.
            let entry = unsafe { &*e };
            if !select::backend_still_exists(entry) {
                if flow.proto != PROTO_UDP && !syn {
                    return reject::xdp_reject(ctx, &flow);
                }
                None
            } else if syn && entry.flags & CT_CLOSING != 0 {
                None
            } else {
                Some(e)
            }
        }
        None => None,
    };
    let entry = match existing {
        Some(forward) => {
            // SAFETY: a map value pointer, valid for this program run.
            let entry = unsafe { *forward };
            if entry.flags & CT_SNAT != 0 {
                snat::touch(forward, &flow);
            }
            entry
        }
        None if service.table_size == 0 => return no_backend(ctx, &flow, &service),
        None => {
            let chosen = select::select_backend(&service, &flow)?;
            let remote = chosen.backend.flags & BACKEND_LOCAL == 0;
            if remote && service.flags & SERVICE_SNAT_REMOTE != 0 {
                let node_addr = lookup::nic_address(ctx.ingress_ifindex() as u32)
                    .ok_or(drop_reason::NO_SNAT_ADDRESS)?;
                snat::create(&flow, service.id, &chosen, node_addr)?
            } else {
                conntrack::create(&flow, service.id, &chosen, CT_FROM_NIC)?
            }
        }
    };
    stats::count_service(service.id, (ctx.data_end() - ctx.data()) as u32);
    let backend = (entry.nat_addr, entry.nat_port);
    if entry.flags & CT_SNAT != 0 {
        let node = (entry.snat_addr, entry.snat_port);
        nat::xdp_translate(ctx, &flow, node, backend)?;
        Ok(forward::xdp_forward(ctx, &flow, node.0, backend.0))
    } else {
        nat::xdp_translate(ctx, &flow, (flow.src_addr, flow.src_port), backend)?;
        Ok(xdp_action::XDP_PASS)
    }
}

/// A frontend without a backend to use: rejected like kube-proxy does, or
/// dropped when the traffic policy is Local and only other nodes have endpoints.
#[inline(always)]
fn no_backend(ctx: &XdpContext, flow: &Ipv4Flow, service: &ServiceValue) -> Result<u32, u32> {
    if service.flags & SERVICE_EMPTY_DROP != 0 {
        return Err(drop_reason::NO_LOCAL_BACKEND);
    }
    reject::xdp_reject(ctx, flow)
}
