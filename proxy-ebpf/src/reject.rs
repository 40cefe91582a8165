//! Rejecting a flow to a Service without endpoints, as kube-proxy does: the
//! request is turned into its answer in place (TCP RST, or ICMP port
//! unreachable for UDP) and sent back where it came from, so the client
//! fails at once instead of timing out. `proxy_common::reject` rewrites the
//! bytes; this module only resizes the packet and sends it.

use aya_ebpf::{
    bindings::xdp_action,
    helpers::generated::{
        bpf_skb_change_head, bpf_skb_change_tail, bpf_xdp_adjust_head, bpf_xdp_adjust_tail,
    },
    programs::{TcContext, XdpContext},
};
use proxy_common::{
    lb::TCP_RST,
    maps::{DropReason, Verdict, PROTO_TCP},
    reject::{
        icmp_port_unreachable, tcp_rst, ICMP_FRAME_LEN, ICMP_GROWTH, ICMP_REQUEST_LEN,
        RST_FRAME_LEN,
    },
};

use crate::{
    forward,
    parse::{ptr_at_mut, Frame, Ipv4Flow, ETH_HLEN},
    stats,
};

/// What the request becomes.
enum Answer {
    /// A RST; the TCP payload length of the request.
    Rst(u16),
    Unreachable,
}

/// Decides the answer, before the request is cut: only untagged IPv4
/// without options is answered, and a RST never is.
#[inline(always)]
fn answer(ctx: &impl Frame, flow: &Ipv4Flow) -> Result<Answer, DropReason> {
    if flow.l3_off != ETH_HLEN || flow.l4_off != ETH_HLEN + 20 {
        return Err(DropReason::RejectFailed);
    }
    if flow.proto != PROTO_TCP {
        return Ok(Answer::Unreachable);
    }
    if flow.tcp_flags & TCP_RST != 0 {
        return Err(DropReason::NoBackend);
    }
    let data_offset = ptr_at_mut::<u8>(ctx, flow.l4_off + 12).ok_or(DropReason::RejectFailed)?;
    // SAFETY: bounds-checked just above.
    let header_len = ((unsafe { *data_offset } >> 4) as u16) * 4;
    Ok(Answer::Rst(flow.ip_len.saturating_sub(20 + header_len)))
}

/// Rewrites the (resized) frame into the answer and counts it.
#[inline(always)]
fn rewrite(ctx: &impl Frame, answer: &Answer) -> Result<(), DropReason> {
    let done = match *answer {
        Answer::Rst(payload_len) => {
            let frame =
                ptr_at_mut::<[u8; RST_FRAME_LEN]>(ctx, 0).ok_or(DropReason::RejectFailed)?;
            // SAFETY: bounds-checked just above.
            tcp_rst(unsafe { &mut *frame }, payload_len)
                .then(|| stats::count_verdict(Verdict::RejectedTcp))
        }
        Answer::Unreachable => {
            let frame =
                ptr_at_mut::<[u8; ICMP_FRAME_LEN]>(ctx, 0).ok_or(DropReason::RejectFailed)?;
            // SAFETY: bounds-checked just above.
            icmp_port_unreachable(unsafe { &mut *frame })
                .then(|| stats::count_verdict(Verdict::RejectedUdp))
        }
    };
    done.ok_or(DropReason::RejectFailed)
}

/// The request's length once resized: what stays of it, and the room the
/// answer needs in front of it.
#[inline(always)]
fn sizes(answer: &Answer) -> (usize, usize) {
    match answer {
        Answer::Rst(_) => (RST_FRAME_LEN, 0),
        Answer::Unreachable => (ICMP_REQUEST_LEN, ICMP_GROWTH),
    }
}

/// XDP: answers `flow` out of the NIC it came in on.
#[inline(always)]
pub fn xdp_reject(ctx: &XdpContext, flow: &Ipv4Flow) -> Result<u32, DropReason> {
    let answer = answer(ctx, flow)?;
    let (keep, grow) = sizes(&answer);
    let len = (ctx.data_end() - ctx.data()) as i32;
    // SAFETY: plain helper calls on our context.
    unsafe {
        if bpf_xdp_adjust_tail(ctx.ctx, keep as i32 - len) != 0 {
            return Err(DropReason::RejectFailed);
        }
        if grow > 0 && bpf_xdp_adjust_head(ctx.ctx, -(grow as i32)) != 0 {
            return Err(DropReason::RejectFailed);
        }
    }
    rewrite(ctx, &answer)?;
    Ok(xdp_action::XDP_TX)
}

/// tc, on the host side of a pod interface: answers `flow` back into the pod.
#[inline(always)]
pub fn tc_reject(ctx: &TcContext, flow: &Ipv4Flow) -> Result<i32, DropReason> {
    let answer = answer(ctx, flow)?;
    let (keep, grow) = sizes(&answer);
    let skb = ctx.skb.skb;
    // SAFETY: plain helper calls on our context.
    unsafe {
        if bpf_skb_change_tail(skb, keep as u32, 0) != 0 {
            return Err(DropReason::RejectFailed);
        }
        if grow > 0 && bpf_skb_change_head(skb, grow as u32, 0) != 0 {
            return Err(DropReason::RejectFailed);
        }
    }
    // Resizing may leave the skb non-linear; direct access needs it linear.
    ctx.pull_data((keep + grow) as u32)
        .map_err(|_| DropReason::RejectFailed)?;
    rewrite(ctx, &answer)?;
    forward::tc_back_into_pod(ctx)
}
