//! Per-flow state: a connection keeps the backend chosen for its first packet,
//! and replies find the VIP to restore.
//!
//! Each connection has two entries: the forward one keyed by the client → VIP
//! tuple and the reply one keyed by the backend → client tuple (backend →
//! node address and SNAT port when the node SNATs the flow).

use aya_ebpf::bindings::BPF_ANY;
use proxy_common::maps::{drop_reason, CtEntry, FlowKey, CT_FORWARD, CT_HAIRPIN, CT_REPLY};

use crate::{maps::CONNTRACK, parse::Ipv4Flow, select::Selected};

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
pub fn tuple_key(src: (u32, u16), dst: (u32, u16), proto: u8) -> FlowKey {
    FlowKey {
        src_addr: src.0,
        dst_addr: dst.0,
        src_port: src.1,
        dst_port: dst.1,
        proto,
        _pad: [0; 3],
    }
}

#[inline(always)]
fn lookup(flow: &Ipv4Flow, direction: u8) -> Option<CtEntry> {
    // SAFETY: the entry is copied out at once.
    let entry = unsafe { CONNTRACK.get(flow_key(flow)).copied() }?;
    (entry.direction == direction).then_some(entry)
}

/// The translation of an established client → VIP flow.
#[inline(always)]
pub fn lookup_forward(flow: &Ipv4Flow) -> Option<CtEntry> {
    lookup(flow, CT_FORWARD)
}

/// The translation of a backend → client reply.
#[inline(always)]
pub fn lookup_reply(flow: &Ipv4Flow) -> Option<CtEntry> {
    lookup(flow, CT_REPLY)
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

/// Records a new connection and returns its forward translation. The reply
/// entry goes in first: a flow is never forwarded unless its replies can be
/// translated back (fail closed). `flags` are `CT_*` bits for both entries.
#[inline(always)]
pub fn create(
    flow: &Ipv4Flow,
    service_id: u32,
    chosen: &Selected,
    flags: u8,
) -> Result<CtEntry, u32> {
    let backend = (chosen.backend.addr, chosen.backend.port);
    let reply_key = tuple_key(backend, (flow.src_addr, flow.src_port), flow.proto);
    let reply = CtEntry {
        nat_addr: flow.dst_addr,
        nat_port: flow.dst_port,
        direction: CT_REPLY,
        flags,
        service_id,
        backend_id: chosen.id,
        ..CtEntry::default()
    };
    let forward = CtEntry {
        nat_addr: chosen.backend.addr,
        nat_port: chosen.backend.port,
        direction: CT_FORWARD,
        flags,
        service_id,
        backend_id: chosen.id,
        ..CtEntry::default()
    };
    CONNTRACK
        .insert(reply_key, reply, BPF_ANY as u64)
        .map_err(|_| drop_reason::CONNTRACK_FULL)?;
    insert_forward(flow, forward, reply_key)
}

/// Records a connection from a pod to a Service that chose the pod itself
/// (hairpin): the VIP with the client's port stands in as the source, and
/// the reply, addressed to that stand-in, is translated back.
#[inline(always)]
pub fn create_hairpin(flow: &Ipv4Flow, service_id: u32, chosen: &Selected) -> Result<CtEntry, u32> {
    let backend = (chosen.backend.addr, chosen.backend.port);
    let reply_key = tuple_key(backend, (flow.dst_addr, flow.src_port), flow.proto);
    let reply = CtEntry {
        nat_addr: flow.dst_addr,
        nat_port: flow.dst_port,
        direction: CT_REPLY,
        flags: CT_HAIRPIN,
        service_id,
        backend_id: chosen.id,
        snat_addr: flow.src_addr,
        snat_port: flow.src_port,
        ..CtEntry::default()
    };
    let forward = CtEntry {
        nat_addr: chosen.backend.addr,
        nat_port: chosen.backend.port,
        direction: CT_FORWARD,
        snat_addr: flow.dst_addr,
        snat_port: flow.src_port,
        ..reply
    };
    CONNTRACK
        .insert(reply_key, reply, BPF_ANY as u64)
        .map_err(|_| drop_reason::CONNTRACK_FULL)?;
    insert_forward(flow, forward, reply_key)
}

/// Puts the forward entry of `flow`, whose reply entry at `reply_key` is in
/// already, and returns it; if it cannot go in, the reply entry goes too
/// (fail closed).
#[inline(always)]
pub fn insert_forward(
    flow: &Ipv4Flow,
    forward: CtEntry,
    reply_key: FlowKey,
) -> Result<CtEntry, u32> {
    if CONNTRACK
        .insert(flow_key(flow), forward, BPF_ANY as u64)
        .is_err()
    {
        let _ = CONNTRACK.remove(reply_key);
        return Err(drop_reason::CONNTRACK_FULL);
    }
    Ok(forward)
}
