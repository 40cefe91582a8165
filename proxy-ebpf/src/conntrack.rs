//! Per-flow state: a connection keeps the backend chosen for its first packet,
//! and replies find the VIP to restore.
//!
//! Each connection has two entries: the forward one keyed by the client → VIP
//! tuple and the reply one keyed by the backend → client tuple (backend →
//! node address and SNAT port when the node SNATs the flow).

use aya_ebpf::bindings::{BPF_ANY, BPF_NOEXIST};
use proxy_common::maps::{
    drop_reason, CtEntry, FlowKey, CT_FORWARD, CT_REPLY, CT_SNAT, SNAT_PORT_MAX, SNAT_PORT_MIN,
};

use crate::{
    maps::CONNTRACK,
    parse::Ipv4Flow,
    select::{flow_hash, Selected},
};

/// SNAT ports tried per new flow before giving up: each try is one insert.
const SNAT_TRIES: u32 = 4;

#[inline(always)]
fn flow_key(flow: &Ipv4Flow) -> FlowKey {
    FlowKey {
        src_addr: flow.src_addr,
        dst_addr: flow.dst_addr,
        src_port: flow.src_port,
        dst_port: flow.dst_port,
        proto: flow.proto,
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

/// A TCP SYN that is not addressed to a service opens a connection that
/// bypasses us (e.g. straight to a pod IP). A reply entry left by an earlier
/// connection through a VIP on the same tuple would rewrite its replies to
/// come from the VIP; drop it.
#[inline(always)]
pub fn forget_stale_reply(flow: &Ipv4Flow) {
    let reply_key = FlowKey {
        src_addr: flow.dst_addr,
        dst_addr: flow.src_addr,
        src_port: flow.dst_port,
        dst_port: flow.src_port,
        proto: flow.proto,
        _pad: [0; 3],
    };
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
    let reply_key = FlowKey {
        src_addr: chosen.backend.addr,
        dst_addr: flow.src_addr,
        src_port: chosen.backend.port,
        dst_port: flow.src_port,
        proto: flow.proto,
        _pad: [0; 3],
    };
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
    if CONNTRACK
        .insert(flow_key(flow), forward, BPF_ANY as u64)
        .is_err()
    {
        let _ = CONNTRACK.remove(reply_key);
        return Err(drop_reason::CONNTRACK_FULL);
    }
    Ok(forward)
}

/// Records a new connection that the node SNATs to `node_addr` (a NodePort
/// flow to a backend on another node) and returns its forward translation.
/// The SNAT port is the first free one of a few hash-chosen candidates: the
/// reply entry goes in only if nobody holds that tuple (BPF_NOEXIST), so two
/// flows never share a port towards the same backend.
#[inline(always)]
pub fn create_snat(
    flow: &Ipv4Flow,
    service_id: u32,
    chosen: &Selected,
    node_addr: u32,
) -> Result<CtEntry, u32> {
    let span = (SNAT_PORT_MAX - SNAT_PORT_MIN) as u32 + 1;
    let hash = flow_hash(flow);
    for attempt in 0..SNAT_TRIES {
        // A large odd stride walks the whole range.
        let port = SNAT_PORT_MIN + (hash.wrapping_add(attempt.wrapping_mul(40_503)) % span) as u16;
        let port = port.to_be();
        let reply_key = FlowKey {
            src_addr: chosen.backend.addr,
            dst_addr: node_addr,
            src_port: chosen.backend.port,
            dst_port: port,
            proto: flow.proto,
            _pad: [0; 3],
        };
        let reply = CtEntry {
            nat_addr: flow.dst_addr,
            nat_port: flow.dst_port,
            direction: CT_REPLY,
            flags: CT_SNAT,
            service_id,
            backend_id: chosen.id,
            snat_addr: flow.src_addr,
            snat_port: flow.src_port,
            _pad: 0,
        };
        if CONNTRACK
            .insert(reply_key, reply, BPF_NOEXIST as u64)
            .is_err()
        {
            continue;
        }
        let forward = CtEntry {
            nat_addr: chosen.backend.addr,
            nat_port: chosen.backend.port,
            direction: CT_FORWARD,
            flags: CT_SNAT,
            service_id,
            backend_id: chosen.id,
            snat_addr: node_addr,
            snat_port: port,
            _pad: 0,
        };
        if CONNTRACK
            .insert(flow_key(flow), forward, BPF_ANY as u64)
            .is_err()
        {
            let _ = CONNTRACK.remove(reply_key);
            return Err(drop_reason::CONNTRACK_FULL);
        }
        return Ok(forward);
    }
    Err(drop_reason::SNAT_PORTS_EXHAUSTED)
}
