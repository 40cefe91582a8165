//! SNAT for flows the NIC program sends to a backend on another node: the
//! source becomes this node's address and a port from 61000–65535, claimed
//! per (backend, node address, protocol) by inserting the reply entry with
//! BPF_NOEXIST. Ports come back on demand: a port whose flow is gone (its
//! forward entry lost or moved on), closed (FIN/RST seen, then quiet for a
//! few seconds) or idle past its protocol's limit is taken over by the new
//! flow that needs it; every packet of a SNATed flow records when it passed.

use aya_ebpf::bindings::{BPF_ANY, BPF_NOEXIST};
use proxy_common::{
    lb::{TCP_FIN, TCP_RST},
    maps::{
        CtEntryOf, DropReason, FlowKeyOf, CT_CLOSING, CT_FORWARD, CT_REPLY, CT_SNAT, PROTO_UDP,
        SNAT_CLOSED_REUSE_S, SNAT_PORT_MAX, SNAT_PORT_MIN, SNAT_TCP_REUSE_S, SNAT_UDP_REUSE_S,
    },
};

use crate::{
    conntrack::{self, PairSlot},
    family::Family,
    kernel::now_s,
    parse::Flow,
    select::{flow_hash, Selected},
};

/// Candidate ports per new flow; each costs a map insert (and, when taken,
/// a liveness check).
const TRIES: u32 = 8;
/// Step between candidates: odd and prime to the range's length (4536 =
/// 2³·3⁴·7), so candidates never repeat within a flow's tries.
const STRIDE: u32 = 2_203;

/// Records that a packet of a SNATed flow passed in `entry`'s direction,
/// and a FIN or RST. Writes only when something changed: once a second
/// at most for a busy flow.
#[inline(always)]
pub fn touch<F: Family>(entry: *mut CtEntryOf<F>, flow: &Flow<F>) {
    let now = now_s();
    let closing = flow.tcp_flags & (TCP_FIN | TCP_RST) != 0;
    // SAFETY: a map value pointer, valid for this program run.
    unsafe {
        if (*entry).last_seen != now {
            (*entry).last_seen = now;
        }
        if closing && (*entry).flags & CT_CLOSING == 0 {
            (*entry).flags |= CT_CLOSING;
        }
    }
}

/// Whether the SNAT port held by the reply entry at `reply_key` may go to a
/// new flow; if so, the old flow's forward entry is removed, so the old
/// client's next packet opens a flow of its own. Entries are read in place,
/// not copied: an IPv6 pair of copies would not fit the NIC program's stack.
#[inline(always)]
fn reclaim<F: Family>(reply_key: &FlowKeyOf<F>, now: u32) -> bool {
    let conntrack = F::conntrack();
    let Some(reply) = conntrack.get_ptr(reply_key) else {
        return true;
    };
    // SAFETY: map value pointers, valid for this program run.
    let reply = unsafe { &*reply };
    if reply.direction != CT_REPLY || reply.flags & CT_SNAT == 0 {
        return false;
    }
    let forward_key = conntrack::tuple_key(
        (reply.snat_addr, reply.snat_port),
        (reply.nat_addr, reply.nat_port),
        reply_key.proto,
    );
    let Some(forward) = conntrack.get_ptr(forward_key) else {
        // Its flow is gone (evicted): the port is free.
        return true;
    };
    // SAFETY: as above.
    let forward = unsafe { &*forward };
    let same_flow = forward.direction == CT_FORWARD
        && forward.snat_addr == reply_key.dst_addr
        && forward.snat_port == reply_key.dst_port;
    if same_flow {
        let limit = if (reply.flags | forward.flags) & CT_CLOSING != 0 {
            SNAT_CLOSED_REUSE_S
        } else if reply_key.proto == PROTO_UDP {
            SNAT_UDP_REUSE_S
        } else {
            SNAT_TCP_REUSE_S
        };
        let last = if reply.last_seen > forward.last_seen {
            reply.last_seen
        } else {
            forward.last_seen
        };
        if now.saturating_sub(last) <= limit {
            return false;
        }
        let _ = conntrack.remove(forward_key);
    }
    true
}

/// Records a new connection that the node SNATs to `node_addr` and returns
/// its forward translation; the reply entry claims the port (fail closed).
/// One pair of entries serves every try, each changing its port.
#[inline(always)]
#[allow(
    clippy::needless_borrows_for_generic_args,
    reason = "the entries are passed where they lie, not copied"
)]
pub fn create<F: Family>(
    slot: &mut PairSlot<F>,
    flow: &Flow<F>,
    frontend_id: u32,
    chosen: &Selected<F>,
    node_addr: &F,
) -> Result<CtEntryOf<F>, DropReason> {
    let conntrack = F::conntrack();
    let span = (SNAT_PORT_MAX - SNAT_PORT_MIN) as u32 + 1;
    let hash = flow_hash(flow);
    let now = now_s();
    let pair = conntrack::pair(
        slot,
        flow,
        frontend_id,
        chosen,
        CT_SNAT,
        Some((*node_addr, 0)),
        now,
    );
    for attempt in 0..TRIES {
        let offset = hash.wrapping_add(attempt.wrapping_mul(STRIDE)) % span;
        let port = (SNAT_PORT_MIN + offset as u16).to_be();
        // The node's end of the flow: the reply's destination, the
        // forward entry's stand-in source.
        pair.reply_key.dst_port = port;
        pair.forward.snat_port = port;
        let claimed = conntrack
            .insert(&pair.reply_key, &pair.reply, BPF_NOEXIST as u64)
            .is_ok()
            || (reclaim(&pair.reply_key, now)
                && conntrack
                    .insert(&pair.reply_key, &pair.reply, BPF_ANY as u64)
                    .is_ok());
        if claimed {
            return conntrack::record_forward(flow, pair);
        }
    }
    Err(DropReason::SnatPortsExhausted)
}
