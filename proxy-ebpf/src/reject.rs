//! Rejecting a flow to a Service without endpoints, as kube-proxy does: the
//! request is turned into its answer in place (TCP RST, ICMP / ICMPv6
//! port unreachable for UDP, SCTP ABORT) and sent back where it came from, so the
//! client fails at once instead of timing out. `proxy_common::reject` rewrites the
//! bytes; this module only resizes the packet and sends it.

use aya_ebpf::{
    bindings::xdp_action,
    helpers::generated::{
        bpf_skb_change_head, bpf_skb_change_tail, bpf_xdp_adjust_head, bpf_xdp_adjust_tail,
    },
    programs::{TcContext, XdpContext},
};
use proxy_common::{
    lb::{TCP_RST, TCP_SYN},
    maps::{DropReason, Verdict, PROTO_SCTP, PROTO_TCP, PROTO_UDP},
    reject::{
        icmp6_port_unreachable, icmp_port_unreachable, sctp_abort, sctp_abort6, tcp_rst, tcp_rst6,
        AbortTag, QuoteRest, ABORT6_FRAME_LEN, ABORT_FRAME_LEN, ICMP6_FRAME_LEN, ICMP6_GROWTH,
        ICMP6_REQUEST_LEN, ICMP_FRAME_LEN, ICMP_GROWTH, ICMP_REQUEST_LEN, QUOTE6_REST_MAX,
        RST6_FRAME_LEN, RST_FRAME_LEN,
    },
    sctp,
};

use crate::{
    family::Family,
    forward,
    parse::{ptr_at_mut, Flow, Frame, ETH_HLEN, IPV4_HLEN, IPV6_HLEN},
    stats,
};

/// What the request becomes.
#[derive(Clone, Copy)]
enum Answer {
    /// A RST; the TCP payload length of the request.
    Rst(u16),
    /// An ICMP error; over IPv6, quoting `QuoteRest` more of the request.
    Unreachable(QuoteRest),
    /// An SCTP ABORT with this verification tag.
    Abort(AbortTag),
}

/// The IP header's length in the requests answered: IPv4 without
/// options, IPv6 without extension headers.
#[inline(always)]
fn plain_ip_len<F: Family>() -> usize {
    if F::HEADER_CHECKSUM {
        IPV4_HLEN
    } else {
        IPV6_HLEN
    }
}

/// Decides the answer, before the request is cut: only untagged IPv4
/// without options or IPv6 without extension headers is answered, and a
/// RST, an SCTP ABORT or SHUTDOWN COMPLETE never is. An ABORT answering an
/// INIT carries its Initiate Tag, any other its own tag reflected (RFC
/// 9260 §8.4).
#[inline(always)]
fn answer<F: Family>(ctx: &impl Frame, flow: &Flow<F>) -> Result<Answer, DropReason> {
    let ip_len = plain_ip_len::<F>();
    if flow.l3_off != ETH_HLEN || flow.l4_off != ETH_HLEN + ip_len {
        return Err(DropReason::RejectFailed);
    }
    if flow.proto == PROTO_SCTP {
        if flow.tcp_flags & TCP_RST != 0 {
            return Err(DropReason::NoBackend);
        }
        let init = flow.tcp_flags & TCP_SYN != 0;
        // The INIT chunk's Initiate Tag follows its chunk header.
        let at = if init { sctp::MIN_LEN } else { 4 };
        let tag = ptr_at_mut::<[u8; 4]>(ctx, flow.l4_off + at).ok_or(DropReason::RejectFailed)?;
        return Ok(Answer::Abort(AbortTag {
            // SAFETY: bounds-checked just above.
            tag: unsafe { *tag },
            reflected: !init,
        }));
    }
    if flow.proto != PROTO_TCP {
        let rest = if F::HEADER_CHECKSUM {
            QuoteRest::default()
        } else {
            quote_rest(ctx)
        };
        return Ok(Answer::Unreachable(rest));
    }
    if flow.tcp_flags & TCP_RST != 0 {
        return Err(DropReason::NoBackend);
    }
    let data_offset = ptr_at_mut::<u8>(ctx, flow.l4_off + 12).ok_or(DropReason::RejectFailed)?;
    // SAFETY: bounds-checked just above.
    let header_len = ((unsafe { *data_offset } >> 4) as u16) * 4;
    Ok(Answer::Rst(flow.ip_payload_len.saturating_sub(header_len)))
}

/// What an ICMPv6 error quotes of the request past the builder's prefix:
/// the rest of the (linear) frame, up to the minimum MTU's bound, and its
/// sum. Words are read as big-endian, as the builder sums.
#[inline(always)]
fn quote_rest(ctx: &impl Frame) -> QuoteRest {
    let start = ICMP6_REQUEST_LEN;
    let frame_len = ctx.data_end() - ctx.data();
    let len = frame_len.saturating_sub(start).min(QUOTE6_REST_MAX);
    let words = len / 4;
    let mut sum = 0u32;
    for i in 0..QUOTE6_REST_MAX / 4 {
        if i >= words {
            break;
        }
        let Some(word) = ptr_at_mut::<u32>(ctx, start + i * 4) else {
            return QuoteRest::default();
        };
        // SAFETY: bounds-checked just above.
        let word = u32::from_be(unsafe { word.read_unaligned() });
        sum += (word >> 16) + (word & 0xffff);
    }
    let tail = start + words * 4;
    if len & 2 != 0 {
        let Some(half) = ptr_at_mut::<[u8; 2]>(ctx, tail) else {
            return QuoteRest::default();
        };
        // SAFETY: bounds-checked just above.
        sum += u16::from_be_bytes(unsafe { *half }) as u32;
    }
    if len & 1 != 0 {
        // Read with the byte before it: a one-byte bounds check compiles
        // to a comparison the verifier draws no range from.
        let Some(pair) = ptr_at_mut::<[u8; 2]>(ctx, tail + (len & 2) - 1) else {
            return QuoteRest::default();
        };
        // SAFETY: bounds-checked just above.
        sum += (unsafe { *pair }[1] as u32) << 8;
    }
    QuoteRest {
        len: len as u16,
        sum,
    }
}

/// Rewrites the (resized) frame into the answer and counts it.
#[inline(always)]
fn rewrite<F: Family>(ctx: &impl Frame, answer: &Answer) -> Result<(), DropReason> {
    let done = match (*answer, F::HEADER_CHECKSUM) {
        (Answer::Rst(payload_len), true) => {
            let frame =
                ptr_at_mut::<[u8; RST_FRAME_LEN]>(ctx, 0).ok_or(DropReason::RejectFailed)?;
            // SAFETY: bounds-checked just above.
            tcp_rst(unsafe { &mut *frame }, payload_len)
                .then(|| stats::count_verdict(Verdict::RejectedTcp))
        }
        (Answer::Rst(payload_len), false) => {
            let frame =
                ptr_at_mut::<[u8; RST6_FRAME_LEN]>(ctx, 0).ok_or(DropReason::RejectFailed)?;
            // SAFETY: bounds-checked just above.
            tcp_rst6(unsafe { &mut *frame }, payload_len)
                .then(|| stats::count_verdict(Verdict::RejectedTcp))
        }
        (Answer::Unreachable(_), true) => {
            let frame =
                ptr_at_mut::<[u8; ICMP_FRAME_LEN]>(ctx, 0).ok_or(DropReason::RejectFailed)?;
            // SAFETY: bounds-checked just above.
            icmp_port_unreachable(unsafe { &mut *frame })
                .then(|| stats::count_verdict(Verdict::RejectedUdp))
        }
        (Answer::Unreachable(rest), false) => {
            let frame =
                ptr_at_mut::<[u8; ICMP6_FRAME_LEN]>(ctx, 0).ok_or(DropReason::RejectFailed)?;
            // SAFETY: bounds-checked just above.
            icmp6_port_unreachable(unsafe { &mut *frame }, rest)
                .then(|| stats::count_verdict(Verdict::RejectedUdp))
        }
        (Answer::Abort(tag), true) => {
            let frame =
                ptr_at_mut::<[u8; ABORT_FRAME_LEN]>(ctx, 0).ok_or(DropReason::RejectFailed)?;
            // SAFETY: bounds-checked just above.
            sctp_abort(unsafe { &mut *frame }, tag)
                .then(|| stats::count_verdict(Verdict::RejectedSctp))
        }
        (Answer::Abort(tag), false) => {
            let frame =
                ptr_at_mut::<[u8; ABORT6_FRAME_LEN]>(ctx, 0).ok_or(DropReason::RejectFailed)?;
            // SAFETY: bounds-checked just above.
            sctp_abort6(unsafe { &mut *frame }, tag)
                .then(|| stats::count_verdict(Verdict::RejectedSctp))
        }
    };
    done.ok_or(DropReason::RejectFailed)
}

/// The request's length once resized: what stays of it, and the room the
/// answer needs in front of it.
#[inline(always)]
fn sizes<F: Family>(answer: &Answer) -> (usize, usize) {
    match (answer, F::HEADER_CHECKSUM) {
        (Answer::Rst(_), true) => (RST_FRAME_LEN, 0),
        (Answer::Rst(_), false) => (RST6_FRAME_LEN, 0),
        (Answer::Unreachable(_), true) => (ICMP_REQUEST_LEN, ICMP_GROWTH),
        (Answer::Unreachable(rest), false) => (ICMP6_REQUEST_LEN + rest.len as usize, ICMP6_GROWTH),
        (Answer::Abort(_), true) => (ABORT_FRAME_LEN, 0),
        (Answer::Abort(_), false) => (ABORT6_FRAME_LEN, 0),
    }
}

/// XDP: answers `flow` out of the NIC it came in on.
#[inline(always)]
pub fn xdp_reject<F: Family>(ctx: &XdpContext, flow: &Flow<F>) -> Result<u32, DropReason> {
    let answer = answer(ctx, flow)?;
    let (keep, grow) = sizes::<F>(&answer);
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
    rewrite::<F>(ctx, &answer)?;
    Ok(xdp_action::XDP_TX)
}

/// tc, on the host side of a pod interface: answers `flow` back into the pod.
#[inline(always)]
pub fn tc_reject<F: Family>(ctx: &TcContext, flow: &Flow<F>) -> Result<i32, DropReason> {
    if !F::HEADER_CHECKSUM && flow.proto == PROTO_UDP {
        // What an ICMPv6 error quotes must be linear to be summed; on
        // failure it quotes what is.
        let want = (ICMP6_REQUEST_LEN + QUOTE6_REST_MAX) as u32;
        let _ = ctx.pull_data(if ctx.len() < want { ctx.len() } else { want });
    }
    let answer = answer(ctx, flow)?;
    let (keep, grow) = sizes::<F>(&answer);
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
    rewrite::<F>(ctx, &answer)?;
    forward::tc_back_into_pod(ctx)
}
