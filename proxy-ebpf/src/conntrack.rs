//! Per-flow state: a connection keeps the backend chosen for its first packet,
//! and replies find the VIP to restore.
//!
//! Each connection has two entries: the forward one keyed by the client → VIP
//! tuple and the reply one keyed by the backend → client tuple (backend →
//! the client's stand-in when the client is translated too: the VIP for a
//! hairpin connection, a node address and port for a SNATed one). Both are
//! built by [`pair`], the one place that lays them out, and go in reply
//! first: a flow is never forwarded unless its replies can be translated
//! back (fail closed).

use core::mem::MaybeUninit;

use aya_ebpf::bindings::BPF_ANY;
use proxy_common::maps::{CtEntryOf, DropReason, FlowKeyOf, CT_FORWARD, CT_REPLY};

use crate::{family::Family, nat::Endpoint, parse::Flow, select::Selected};

#[inline(always)]
pub fn flow_key<F: Family>(flow: &Flow<F>) -> FlowKeyOf<F> {
    tuple_key(
        (flow.src_addr, flow.src_port),
        (flow.dst_addr, flow.dst_port),
        flow.proto,
    )
}

/// The key of a packet from `src` to `dst` (address, port; network order).
#[inline(always)]
pub fn tuple_key<F: Family>(src: Endpoint<F>, dst: Endpoint<F>, proto: u8) -> FlowKeyOf<F> {
    FlowKeyOf {
        src_addr: src.0,
        dst_addr: dst.0,
        src_port: src.1,
        dst_port: dst.1,
        proto,
        _pad: [0; 3],
    }
}

/// The translation of a backend → client reply.
#[inline(always)]
pub fn lookup_reply<F: Family>(flow: &Flow<F>) -> Option<CtEntryOf<F>> {
    // SAFETY: the entry is copied out at once.
    let entry = unsafe { F::conntrack().get(flow_key(flow)).copied() }?;
    (entry.direction == CT_REPLY).then_some(entry)
}

/// The entry of `flow` in place, if it goes in `direction`: for paths that
/// record liveness in it.
#[inline(always)]
pub fn entry_mut<F: Family>(flow: &Flow<F>, direction: u8) -> Option<*mut CtEntryOf<F>> {
    let entry = F::conntrack().get_ptr_mut(flow_key(flow))?;
    // SAFETY: a map value pointer, valid for this program run.
    (unsafe { (*entry).direction } == direction).then_some(entry)
}

/// A TCP SYN that is not addressed to a service opens a connection that
/// bypasses us (e.g. straight to a pod IP). A reply entry left by an earlier
/// connection through a VIP on the same tuple would rewrite its replies to
/// come from the VIP; drop it.
#[inline(always)]
pub fn forget_stale_reply<F: Family>(flow: &Flow<F>) {
    let reply_key = tuple_key(
        (flow.dst_addr, flow.dst_port),
        (flow.src_addr, flow.src_port),
        flow.proto,
    );
    let _ = F::conntrack().remove(reply_key);
}

/// The two entries of a new connection.
pub struct Pair<F> {
    pub reply_key: FlowKeyOf<F>,
    pub reply: CtEntryOf<F>,
    pub forward: CtEntryOf<F>,
}

/// Where a new connection's entries are laid out before they go in.
pub type PairSlot<F> = MaybeUninit<Pair<F>>;

/// This CPU's scratch slot for a pair (`PAIR_SCRATCH`), for a program whose
/// stack frame has no room for one (the NIC program's IPv6 path); valid
/// until the program's next new connection.
#[inline(always)]
pub fn scratch_slot<F: Family>() -> Result<&'static mut PairSlot<F>, DropReason> {
    // A one-slot per-CPU array always has slot 0; were it missing, the
    // flow could not be recorded: fail closed, as for a full table.
    let slot = F::pair_scratch()
        .get_ptr_mut(0)
        .ok_or(DropReason::ConntrackFull)?;
    // SAFETY: this CPU's slot, used by this program run alone; every
    // field is written before it is read.
    Ok(unsafe { &mut *slot.cast::<PairSlot<F>>() })
}

/// The entries of `flow`, sent to `chosen` by frontend `frontend_id`, with
/// `CT_*` `flags`, laid out in `slot`. `stand_in`: the source the backend
/// sees instead of the client, if any (the entries then hold both ends'
/// translations); `last_seen`: the clock for entries that record liveness,
/// else 0.
#[inline(always)]
pub fn pair<'a, F: Family>(
    slot: &'a mut PairSlot<F>,
    flow: &Flow<F>,
    frontend_id: u32,
    chosen: &Selected<F>,
    flags: u8,
    stand_in: Option<Endpoint<F>>,
    last_seen: u32,
) -> &'a mut Pair<F> {
    let client = (flow.src_addr, flow.src_port);
    let backend = (chosen.backend.addr, chosen.backend.port);
    let seen_as = stand_in.unwrap_or(client);
    let (reply_snat, forward_snat) = match stand_in {
        Some(_) => (client, seen_as),
        None => ((F::default(), 0), (F::default(), 0)),
    };
    let reply = CtEntryOf {
        nat_addr: flow.dst_addr,
        nat_port: flow.dst_port,
        direction: CT_REPLY,
        flags,
        frontend_id,
        backend_id: chosen.id,
        snat_addr: reply_snat.0,
        snat_port: reply_snat.1,
        _pad: 0,
        last_seen,
    };
    slot.write(Pair {
        reply_key: tuple_key(backend, seen_as, flow.proto),
        reply,
        forward: CtEntryOf {
            nat_addr: backend.0,
            nat_port: backend.1,
            direction: CT_FORWARD,
            snat_addr: forward_snat.0,
            snat_port: forward_snat.1,
            ..reply
        },
    })
}

/// Records `pair`, reply entry first, and returns its forward entry.
#[inline(always)]
#[allow(
    clippy::needless_borrows_for_generic_args,
    reason = "the entries are passed where they lie, not copied"
)]
pub fn record<F: Family>(flow: &Flow<F>, pair: &Pair<F>) -> Result<CtEntryOf<F>, DropReason> {
    F::conntrack()
        .insert(&pair.reply_key, &pair.reply, BPF_ANY as u64)
        .map_err(|_| DropReason::ConntrackFull)?;
    record_forward(flow, pair)
}

/// Puts the forward entry of `pair`, whose reply entry is in already, and
/// returns it; if it cannot go in, the reply entry goes too (fail closed).
#[inline(always)]
#[allow(
    clippy::needless_borrows_for_generic_args,
    reason = "the entries are passed where they lie, not copied"
)]
pub fn record_forward<F: Family>(
    flow: &Flow<F>,
    pair: &Pair<F>,
) -> Result<CtEntryOf<F>, DropReason> {
    let conntrack = F::conntrack();
    if conntrack
        .insert(&flow_key(flow), &pair.forward, BPF_ANY as u64)
        .is_err()
    {
        let _ = conntrack.remove(&pair.reply_key);
        return Err(DropReason::ConntrackFull);
    }
    Ok(pair.forward)
}
