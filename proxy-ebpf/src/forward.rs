//! Forwarding a translated packet for another host (a remote backend, or
//! the client of a reply) without the stack's routing input, which would
//! drop it: its source is now this node's own address.
//!
//! From XDP it leaves straight from the driver when the kernel's FIB knows
//! the route and the neighbour; otherwise the stack routes it (and resolves
//! the neighbour for the next packets; the agent sets `accept_local` on its
//! NICs for that). From tc the kernel resolves the neighbour itself
//! (`bpf_redirect_neigh`).

use aya_ebpf::{
    bindings::{
        bpf_fib_lookup as FibParams, xdp_action, BPF_FIB_LKUP_RET_NO_NEIGH,
        BPF_FIB_LKUP_RET_SUCCESS, BPF_FIB_LOOKUP_DIRECT, TC_ACT_OK, TC_ACT_REDIRECT,
    },
    helpers::generated::{bpf_fib_lookup, bpf_redirect, bpf_redirect_neigh},
    programs::{TcContext, XdpContext},
    EbpfContext,
};

use proxy_common::{
    csum,
    maps::{hop_slot, DropReason, NextHopOf},
};

use crate::{
    family::Family,
    kernel,
    parse::{ptr_at_mut, Flow, Ipv4Hdr, Ipv6Hdr},
};

/// Asks the FIB where a packet of `flow` from `src` to `dst`, arriving on
/// `ifindex`, goes: (return code, params holding the egress interface and,
/// on success, the MAC addresses). A non-zero `tot_len` has the FIB check
/// it against the egress MTU; `class`: IPv4's TOS, IPv6's flow information.
#[inline(always)]
fn fib_lookup<F: Family>(
    ctx: &impl EbpfContext,
    ifindex: u32,
    (proto, tot_len, class): (u8, u16, u32),
    (src, dst): (F, F),
) -> (i64, FibParams) {
    // SAFETY: an all-zero bpf_fib_lookup is a valid request to fill in.
    let mut params: FibParams = unsafe { core::mem::zeroed() };
    params.l4_protocol = proto;
    params.__bindgen_anon_1.tot_len = tot_len;
    params.ifindex = ifindex;
    F::fib_request(&mut params, class, src, dst);
    // SAFETY: params lives on this stack frame for the call.
    let rc = unsafe {
        bpf_fib_lookup(
            ctx.as_ptr(),
            &mut params,
            core::mem::size_of::<FibParams>() as i32,
            BPF_FIB_LOOKUP_DIRECT,
        )
    };
    (rc, params)
}

/// A router lowers the TTL (IPv6: the hop limit, which no checksum
/// covers). Returns false, changing nothing, when it is spent (the stack
/// then sends the time-exceeded error).
#[inline(always)]
fn decrement_hop_limit<F: Family>(ip: *mut F::IpHeader) -> bool {
    if F::HEADER_CHECKSUM {
        return decrement_ttl(ip as *mut Ipv4Hdr);
    }
    let ip = ip as *mut Ipv6Hdr;
    // SAFETY: the caller bounds-checked the header.
    unsafe {
        let hop_limit = &raw mut (*ip).hop_limit;
        if *hop_limit <= 1 {
            return false;
        }
        *hop_limit -= 1;
    }
    true
}

/// IPv4's TTL; the checksum word holds TTL and protocol.
#[inline(always)]
fn decrement_ttl(ip: *mut Ipv4Hdr) -> bool {
    // SAFETY: the caller bounds-checked `ip`.
    unsafe {
        let (ttl, proto) = ((*ip).ttl, (*ip).proto);
        if ttl <= 1 {
            return false;
        }
        (*ip).ttl = ttl - 1;
        // Read as the packet holds them, like every checksum input here.
        let before = u16::from_ne_bytes([ttl, proto]);
        let after = u16::from_ne_bytes([ttl - 1, proto]);
        (*ip).check = csum::replace_u16((*ip).check, before, after);
    }
    true
}

/// Sends the (already translated) packet of `flow` from `src` to `dst` and
/// returns the XDP action: TX back out of the NIC it came in on, redirect to
/// another interface, or PASS to the stack when the FIB cannot say.
#[inline(always)]
pub fn xdp_forward<F: Family>(ctx: &XdpContext, flow: &Flow<F>, src: F, dst: F) -> u32 {
    // The Ethernet header first: checked after the IP header, its check is
    // one LLVM finds implied and drops, where the verifier cannot follow.
    let Some(eth) = ptr_at_mut::<[[u8; 6]; 2]>(ctx, 0) else {
        return xdp_action::XDP_PASS;
    };
    let Some(ip) = ptr_at_mut::<F::IpHeader>(ctx, flow.l3_off) else {
        return xdp_action::XDP_PASS;
    };
    let ingress = ctx.ingress_ifindex() as u32;
    let now = kernel::now_s();
    let slot = F::hop_cache().get_ptr_mut(hop_slot(dst, src, ingress));
    if let Some(slot) = slot {
        // SAFETY: this CPU's slot, read in place (an IPv6 copy is 52 bytes
        // of the NIC program's stack).
        let hop = unsafe { &*slot };
        // Learnt this second for these addresses and NIC: the FIB would
        // say the same (a packet that came in on this NIC fits its MTU
        // going back out).
        if hop.dst == dst && hop.src == src && hop.ifindex == ingress && hop.stamp == now {
            if !decrement_hop_limit::<F>(ip) {
                return xdp_action::XDP_PASS;
            }
            // SAFETY: bounds-checked above.
            unsafe { *eth = [hop.dmac, hop.smac] };
            return xdp_action::XDP_TX;
        }
    }
    let class = F::traffic_class(ip);
    // The FIB checks the MTU against the bytes the frame holds, not its
    // IP header's claim: a wrong length field must not decide what the
    // cached hop above would not (found by the differential fuzzer).
    let on_wire = (ctx.data_end() - ctx.data()).saturating_sub(flow.l3_off) as u16;
    let (rc, params) = fib_lookup(ctx, ingress, (flow.proto, on_wire, class), (src, dst));
    // Another interface takes XDP frames only if it is one of ours (a NIC
    // with the program attached); a tunnel or bridge would drop them.
    let egress_ok = params.ifindex == ingress || F::nic_address(params.ifindex).is_some();
    if rc != BPF_FIB_LKUP_RET_SUCCESS as i64 || !egress_ok || !decrement_hop_limit::<F>(ip) {
        // No route or no neighbour entry yet, an egress XDP cannot use, or
        // TTL spent: the stack knows what to do.
        return xdp_action::XDP_PASS;
    }
    // SAFETY: bounds-checked above; the FIB filled both addresses.
    unsafe { *eth = [params.dmac, params.smac] };
    if params.ifindex == ingress {
        if let Some(slot) = slot {
            // SAFETY: this CPU's slot; a program run is never interrupted
            // by another on the same CPU.
            unsafe {
                *slot = NextHopOf {
                    dst,
                    src,
                    ifindex: ingress,
                    stamp: now,
                    dmac: params.dmac,
                    smac: params.smac,
                }
            };
        }
        xdp_action::XDP_TX
    } else {
        // SAFETY: plain helper call; it returns the action to take.
        unsafe { bpf_redirect(params.ifindex, 0) as u32 }
    }
}

/// Sends the (already translated) packet of `flow` from `src` to `dst` out
/// of the interface the FIB names, the kernel filling in the neighbour, and
/// returns the tc action; without a route, the stack gets it.
#[inline(always)]
pub fn tc_forward<F: Family>(ctx: &TcContext, flow: &Flow<F>, src: F, dst: F) -> i32 {
    let Some(ip) = ptr_at_mut::<F::IpHeader>(ctx, flow.l3_off) else {
        return TC_ACT_OK;
    };
    let class = F::traffic_class(ip);
    // The interface the program runs on, which at tc ingress is the one the
    // packet came in on (as `ingress_ifindex`, which BPF_PROG_TEST_RUN
    // cannot set on 5.10, while it can set this one).
    // SAFETY: reading our own skb's fields.
    let ingress = unsafe { (*ctx.skb.skb).ifindex };
    // tot_len 0: the FIB checks the MTU against the skb itself, which knows
    // about GSO (a pod's 64 KB TCP segment is fine, an explicit length not).
    let (rc, params) = fib_lookup(ctx, ingress, (flow.proto, 0, class), (src, dst));
    let routed = rc == BPF_FIB_LKUP_RET_SUCCESS as i64 || rc == BPF_FIB_LKUP_RET_NO_NEIGH as i64;
    if !routed || !decrement_hop_limit::<F>(ip) {
        return TC_ACT_OK;
    }
    // SAFETY: plain helper call; without neighbour parameters the kernel
    // resolves the next hop of the packet's own destination.
    unsafe { bpf_redirect_neigh(params.ifindex, core::ptr::null_mut(), 0, 0) as i32 }
}

/// Swaps the Ethernet addresses, so a frame that came out of a pod is
/// addressed to it when it goes back in.
#[inline(always)]
pub fn tc_swap_macs(ctx: &TcContext) -> Result<(), DropReason> {
    let eth = ptr_at_mut::<[[u8; 6]; 2]>(ctx, 0).ok_or(DropReason::RewriteFailed)?;
    // SAFETY: bounds-checked just above.
    unsafe {
        let [dst, src] = *eth;
        *eth = [src, dst];
    }
    Ok(())
}

/// tc on a pod interface: sends the packet back into the pod it came from
/// (a reject reply, a hairpin connection; addressed to the pod already),
/// past the stack.
#[inline(always)]
pub fn tc_back_into_pod(ctx: &TcContext) -> Result<i32, DropReason> {
    // SAFETY: reading our own skb's interface index.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    // SAFETY: a plain helper call; it returns the action to take.
    if unsafe { bpf_redirect(ifindex, 0) } != TC_ACT_REDIRECT as i64 {
        return Err(DropReason::RewriteFailed);
    }
    Ok(TC_ACT_REDIRECT)
}
