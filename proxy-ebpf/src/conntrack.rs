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

use aya_ebpf::bindings::BPF_ANY;
use proxy_common::maps::{CtEntry, DropReason, FlowKey, CT_FORWARD, CT_REPLY};

use crate::{maps::CONNTRACK, nat::Endpoint, parse::Ipv4Flow, select::Selected};

#[inline(always)]
pub fn flow_key(flow: &Ipv4Flow) -> FlowKey {
    tuple_key(
        (flow.src_addr, flow.src_port),
        (flow.dst_addr, flow.dst_port),
        flow.proto,
    )
}

/// The key of a packet from `src` to `dst` (address, port; network order).
#[inline(always)]
pub fn tuple_key(src: Endpoint, dst: Endpoint, proto: u8) -> FlowKey {
    FlowKey {
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
pub fn lookup_reply(flow: &Ipv4Flow) -> Option<CtEntry> {
    // SAFETY: the entry is copied out at once.
    let entry = unsafe { CONNTRACK.get(flow_key(flow)).copied() }?;
    (entry.direction == CT_REPLY).then_some(entry)
}

/// The entry of `flow` in place, if it goes in `direction`: for paths that
/// record liveness in it.
#[inline(always)]
pub fn entry_mut(flow: &Ipv4Flow, direction: u8) -> Option<*mut CtEntry> {
    let entry = CONNTRACK.get_ptr_mut(flow_key(flow))?;
    // SAFETY: a map value pointer, valid for this program run.
    (unsafe { (*entry).direction } == direction).then_some(entry)
}

/// A TCP SYN that is not addressed to a service opens a connection that
/// bypasses us (e.g. straight to a pod IP). A reply entry left by an earlier
/// connection through a VIP on the same tuple would rewrite its replies to
/// come from the VIP; drop it.
#[inline(always)]
pub fn forget_stale_reply(flow: &Ipv4Flow) {
    let reply_key = tuple_key(
        (flow.dst_addr, flow.dst_port),
        (flow.src_addr, flow.src_port),
        flow.proto,
    );
    let _ = CONNTRACK.remove(reply_key);
}

/// The two entries of a new connection.
pub struct Pair {
    pub reply_key: FlowKey,
    pub reply: CtEntry,
    pub forward: CtEntry,
}

/// The entries of `flow`, sent to `chosen` by frontend `frontend_id`, with
/// `CT_*` `flags`. `stand_in`: the source the backend sees instead of the
/// client, if any (the entries then hold both ends' translations);
/// `last_seen`: the clock for entries that record liveness, else 0.
#[inline(always)]
pub fn pair(
    flow: &Ipv4Flow,
    frontend_id: u32,
    chosen: &Selected,
    flags: u8,
    stand_in: Option<Endpoint>,
    last_seen: u32,
) -> Pair {
    let client = (flow.src_addr, flow.src_port);
    let backend = (chosen.backend.addr, chosen.backend.port);
    let reply = CtEntry {
        nat_addr: flow.dst_addr,
        nat_port: flow.dst_port,
        direction: CT_REPLY,
        flags,
        frontend_id,
        backend_id: chosen.id,
        snat_addr: if stand_in.is_some() { client.0 } else { 0 },
        snat_port: if stand_in.is_some() { client.1 } else { 0 },
        _pad: 0,
        last_seen,
    };
    let seen_as = stand_in.unwrap_or(client);
    let forward = CtEntry {
        nat_addr: backend.0,
        nat_port: backend.1,
        direction: CT_FORWARD,
        snat_addr: if stand_in.is_some() { seen_as.0 } else { 0 },
        snat_port: if stand_in.is_some() { seen_as.1 } else { 0 },
        ..reply
    };
    Pair {
        reply_key: tuple_key(backend, seen_as, flow.proto),
        reply,
        forward,
    }
}

/// Records `pair`, reply entry first, and returns its forward entry.
#[inline(always)]
pub fn record(flow: &Ipv4Flow, pair: &Pair) -> Result<CtEntry, DropReason> {
    CONNTRACK
        .insert(pair.reply_key, pair.reply, BPF_ANY as u64)
        .map_err(|_| DropReason::ConntrackFull)?;
    record_forward(flow, pair)
}

/// Puts the forward entry of `pair`, whose reply entry is in already, and
/// returns it; if it cannot go in, the reply entry goes too (fail closed).
#[inline(always)]
pub fn record_forward(flow: &Ipv4Flow, pair: &Pair) -> Result<CtEntry, DropReason> {
    if CONNTRACK
        .insert(flow_key(flow), pair.forward, BPF_ANY as u64)
        .is_err()
    {
        let _ = CONNTRACK.remove(pair.reply_key);
        return Err(DropReason::ConntrackFull);
    }
    Ok(pair.forward)
}
