//! Events for `kxdp monitor`: drops, rejects and (on request) new flows,
//! into a ring buffer, only while a monitor listens (`MONITOR`), and no
//! more per CPU than `MONITOR_EVENTS_PER_S` (a token bucket per CPU), so
//! a flood of drops costs the node little and tells the reader how many it
//! missed. The established path never comes here.

use aya_ebpf::helpers::bpf_ktime_get_ns;
use proxy_common::{
    addr::Addr,
    maps::{
        DropReason, MonitorEvent, EVENT_DROP, EVENT_NEW_FLOW, EVENT_REJECT, EVENT_SOCKET_REFUSED,
        MONITOR_BURST, MONITOR_DROPS, MONITOR_EVENTS_PER_S, MONITOR_NEW_FLOWS,
    },
};

use crate::{
    maps::{EVENTS, MONITOR, MONITOR_BUDGET},
    parse::Flow,
};

const NS_PER_TOKEN: u64 = 1_000_000_000 / MONITOR_EVENTS_PER_S;

/// Whether a monitor listens for `what` (`MONITOR_*`).
#[inline(always)]
fn listening(what: u32) -> bool {
    MONITOR.get(0).is_some_and(|bits| bits & what != 0)
}

/// Takes a token of this CPU's budget; `None` (and counted) when spent.
/// Returns the events left out before this one.
#[inline(always)]
fn take_token() -> Option<u32> {
    let budget = MONITOR_BUDGET.get_ptr_mut(0)?;
    // SAFETY: helper without arguments; this CPU's slot, no other writer.
    unsafe {
        let now = bpf_ktime_get_ns();
        let earned = now.wrapping_sub((*budget).refilled_ns) / NS_PER_TOKEN;
        if earned > 0 {
            let tokens = u64::from((*budget).tokens) + earned;
            (*budget).tokens = tokens.min(u64::from(MONITOR_BURST)) as u32;
            (*budget).refilled_ns = now;
        }
        if (*budget).tokens == 0 {
            (*budget).suppressed = (*budget).suppressed.wrapping_add(1);
            return None;
        }
        (*budget).tokens -= 1;
        let suppressed = (*budget).suppressed;
        (*budget).suppressed = 0;
        Some(suppressed)
    }
}

fn words_into<A: Addr>(addr: &A, into: &mut [u32; 4]) {
    for (to, word) in into.iter_mut().zip(addr.words()) {
        *to = *word;
    }
}

/// Sends an event of `kind` about a packet from `src` to `dst`.
#[inline(always)]
fn send<A: Addr>(
    kind: u8,
    reason: u8,
    frontend_id: u32,
    proto: u8,
    src: (A, u16),
    dst: (A, u16),
    backend: (A, u16),
) {
    let Some(suppressed) = take_token() else {
        return;
    };
    // Written where it lies in the ring buffer, not built on the stack.
    let Some(mut entry) = EVENTS.reserve::<MonitorEvent>(0) else {
        return;
    };
    let event = entry.as_mut_ptr();
    // SAFETY: a reserved record of the event's size, every field written.
    unsafe {
        (*event).kind = kind;
        (*event).reason = reason;
        (*event).family = if src.0.words().len() == 1 { 4 } else { 6 };
        (*event).proto = proto;
        (*event).frontend_id = frontend_id;
        (*event).src_addr = [0; 4];
        (*event).dst_addr = [0; 4];
        (*event).backend_addr = [0; 4];
        words_into(&src.0, &mut (*event).src_addr);
        words_into(&dst.0, &mut (*event).dst_addr);
        words_into(&backend.0, &mut (*event).backend_addr);
        (*event).src_port = src.1;
        (*event).dst_port = dst.1;
        (*event).backend_port = backend.1;
        (*event)._pad = 0;
        (*event).suppressed = suppressed;
    }
    entry.submit(0);
}

/// `flow`, for frontend `frontend_id`, dropped for `reason`.
#[inline(always)]
pub fn dropped<F: Addr>(flow: &Flow<F>, frontend_id: u32, reason: DropReason) {
    if listening(MONITOR_DROPS) {
        let none = (F::default(), 0);
        let (src, dst) = (
            (flow.src_addr, flow.src_port),
            (flow.dst_addr, flow.dst_port),
        );
        send(
            EVENT_DROP,
            reason.index() as u8,
            frontend_id,
            flow.proto,
            src,
            dst,
            none,
        );
    }
}

/// `flow`, for frontend `frontend_id`, answered as refused.
#[inline(always)]
pub fn rejected<F: Addr>(flow: &Flow<F>, frontend_id: u32) {
    if listening(MONITOR_DROPS) {
        let none = (F::default(), 0);
        let (src, dst) = (
            (flow.src_addr, flow.src_port),
            (flow.dst_addr, flow.dst_port),
        );
        send(EVENT_REJECT, 0, frontend_id, flow.proto, src, dst, none);
    }
}

/// `flow`, new, sent to `backend` by frontend `frontend_id`.
#[inline(always)]
pub fn new_flow<F: Addr>(flow: &Flow<F>, frontend_id: u32, backend: (F, u16)) {
    if listening(MONITOR_NEW_FLOWS) {
        let (src, dst) = (
            (flow.src_addr, flow.src_port),
            (flow.dst_addr, flow.dst_port),
        );
        send(
            EVENT_NEW_FLOW,
            0,
            frontend_id,
            flow.proto,
            src,
            dst,
            backend,
        );
    }
}

/// A socket's connect or send to frontend `frontend_id` at `dst` refused.
#[inline(always)]
pub fn socket_refused<F: Addr>(frontend_id: u32, proto: u8, dst: (F, u16)) {
    if listening(MONITOR_DROPS) {
        let none = (F::default(), 0);
        send(EVENT_SOCKET_REFUSED, 0, frontend_id, proto, none, dst, none);
    }
}
