//! Forwarding from XDP: a translated packet for another host (a remote
//! backend, or the client of a reply) leaves straight from the driver when
//! the kernel's FIB knows the route and the neighbour; otherwise the stack
//! routes it (and resolves the neighbour for the next packets).

use aya_ebpf::{
    bindings::{
        bpf_fib_lookup as FibParams, xdp_action, BPF_FIB_LKUP_RET_SUCCESS, BPF_FIB_LOOKUP_DIRECT,
    },
    helpers::generated::{bpf_fib_lookup, bpf_redirect},
    programs::XdpContext,
    EbpfContext,
};

use crate::{
    csum,
    parse::{ptr_at_mut, Ipv4Flow, Ipv4Hdr},
};

const AF_INET: u8 = 2;

/// Sends the (already translated) packet of `flow` towards `dst` and returns
/// the XDP action: TX back out of the NIC it came in on, redirect to another
/// interface, or PASS to the stack when the FIB cannot say.
#[inline(always)]
pub fn xdp_forward(ctx: &XdpContext, flow: &Ipv4Flow, src: u32, dst: u32) -> u32 {
    let Some(ip) = ptr_at_mut::<Ipv4Hdr>(ctx, flow.l3_off) else {
        return xdp_action::XDP_PASS;
    };
    let Some(eth) = ptr_at_mut::<[[u8; 6]; 2]>(ctx, 0) else {
        return xdp_action::XDP_PASS;
    };
    // SAFETY: `ip` and `eth` were bounds-checked above.
    let (ttl, tos) = unsafe { ((*ip).ttl, (*ip).tos) };
    if ttl <= 1 {
        // The stack sends the ICMP time-exceeded.
        return xdp_action::XDP_PASS;
    }
    // SAFETY: an all-zero bpf_fib_lookup is a valid request to fill in.
    let mut params: FibParams = unsafe { core::mem::zeroed() };
    params.family = AF_INET;
    params.l4_protocol = flow.proto;
    params.__bindgen_anon_1.tot_len = flow.ip_len;
    params.ifindex = ctx.ingress_ifindex() as u32;
    params.__bindgen_anon_2.tos = tos;
    params.__bindgen_anon_3.ipv4_src = src;
    params.__bindgen_anon_4.ipv4_dst = dst;
    // SAFETY: params lives on this stack frame for the call.
    let rc = unsafe {
        bpf_fib_lookup(
            ctx.as_ptr(),
            &mut params,
            core::mem::size_of::<FibParams>() as i32,
            BPF_FIB_LOOKUP_DIRECT,
        )
    };
    if rc != BPF_FIB_LKUP_RET_SUCCESS as i64 {
        // No route or no neighbour entry yet: the stack knows what to do.
        return xdp_action::XDP_PASS;
    }
    // SAFETY: bounds-checked above; the FIB filled both addresses.
    unsafe {
        *eth = [params.dmac, params.smac];
        // A router decrements the TTL; the checksum word holds TTL and protocol.
        (*ip).ttl = ttl - 1;
        // Read as the packet holds them, like every checksum input here.
        let before = u16::from_ne_bytes([ttl, flow.proto]);
        let after = u16::from_ne_bytes([ttl - 1, flow.proto]);
        (*ip).check = csum::replace_u16((*ip).check, before, after);
    }
    if params.ifindex == ctx.ingress_ifindex() as u32 {
        xdp_action::XDP_TX
    } else {
        // SAFETY: plain helper call; it returns the action to take.
        unsafe { bpf_redirect(params.ifindex, 0) as u32 }
    }
}
