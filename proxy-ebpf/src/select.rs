//! Backend choice for a new flow: a hash of the 5-tuple indexes the
//! frontend's Maglev table, so flows spread evenly over every backend and
//! most keep their slot's backend when another backend comes or goes. With
//! `sessionAffinity: ClientIP` a client's new flows go where its last one
//! went, while that backend is still in the service and the client opened a
//! connection within the timeout.

use aya_ebpf::{bindings::BPF_ANY, maps::LruHashMap};
use proxy_common::maps::{
    maglev_layout, AffinityKeyOf, AffinityValue, BackendValueOf, CtEntryOf, DropReason,
    FrontendValue, FRONTEND_AFFINITY_CLIENT_IP, NO_TABLE,
};

use crate::{
    family::Family,
    kernel,
    maps::{MAGLEV_ARENA, MAGLEV_INDEX},
    parse::Flow,
};

/// A backend chosen for a flow.
pub struct Selected<F> {
    pub id: u32,
    pub backend: BackendValueOf<F>,
}

#[inline(always)]
pub fn select_backend<F: Family>(
    frontend: &FrontendValue,
    flow: &Flow<F>,
) -> Result<Selected<F>, DropReason> {
    let client = || AffinityKeyOf {
        frontend_id: frontend.id,
        client_addr: flow.src_addr,
    };
    choose(frontend, flow_hash(flow), F::affinity(), client)
}

/// The backend for a new flow or socket of `frontend` whose hash is
/// `hash`: with `sessionAffinity: ClientIP`, the one the client (its key
/// in `clients`, made by `client`) was last sent to, else the slot `hash`
/// of the table.
#[inline(always)]
pub fn choose<F: Family, K>(
    frontend: &FrontendValue,
    hash: u32,
    clients: &LruHashMap<K, AffinityValue>,
    client: impl FnOnce() -> K,
) -> Result<Selected<F>, DropReason> {
    if frontend.flags & FRONTEND_AFFINITY_CLIENT_IP == 0 {
        return slot_backend(frontend, hash).map(|(s, _)| s);
    }
    with_affinity(frontend, hash, clients, client())
}

/// `sessionAffinity: ClientIP`: the backend `client` (its key in
/// `clients`) was last sent to, else the slot `hash` of the table, which
/// the client is then sent to.
#[inline(always)]
fn with_affinity<F: Family, K>(
    frontend: &FrontendValue,
    hash: u32,
    clients: &LruHashMap<K, AffinityValue>,
    client: K,
) -> Result<Selected<F>, DropReason> {
    let now = kernel::now_s();
    if let Some(entry) = clients.get_ptr_mut(&client) {
        // SAFETY: a map value pointer, valid for this program run.
        let remembered = unsafe { *entry };
        let id = remembered.backend_id;
        if now.saturating_sub(remembered.last_used) <= frontend.affinity_timeout
            && table_member(frontend.id, remembered.member) == Some(id)
        {
            // Still a member of the frontend: the client stays; refreshed in place.
            if let Some(backend) = backend(id) {
                // SAFETY: as above.
                unsafe { (*entry).last_used = now };
                return Ok(Selected { id, backend });
            }
        }
    }
    // None yet, lapsed, or its backend left: choose afresh and remember.
    let (chosen, member) = slot_backend(frontend, hash)?;
    let value = AffinityValue {
        backend_id: chosen.id,
        member,
        last_used: now,
    };
    // Best effort: without an entry the next flow is balanced as usual.
    let _ = clients.insert(&client, value, BPF_ANY as u64);
    Ok(chosen)
}

/// Backend `id`, if there is one of this family (an empty slot is all
/// zeros).
#[inline(always)]
fn backend<F: Family>(id: u32) -> Option<BackendValueOf<F>> {
    F::backends().get(id).copied().filter(|b| !b.addr.is_zero())
}

/// The backend in slot `hash` mod M of `frontend`'s table, and its member index.
#[inline(always)]
fn slot_backend<F: Family>(
    frontend: &FrontendValue,
    hash: u32,
) -> Result<(Selected<F>, u32), DropReason> {
    let (id, member) = table_entry(frontend.id, hash).ok_or(DropReason::StaleSelection)?;
    let backend = backend(id).ok_or(DropReason::StaleSelection)?;
    Ok((Selected { id, backend }, member))
}

/// The backend id in slot `hash` mod M of the Maglev table of `frontend_id`,
/// and its member index. The block is read once from `MAGLEV_INDEX`, and M
/// and the layout from the block itself, so they always match the table
/// being read, even while the agent switches to one of another size.
#[inline(always)]
fn table_entry(frontend_id: u32, hash: u32) -> Option<(u32, u32)> {
    let block = table_block(frontend_id)?;
    let header = *MAGLEV_ARENA.get(block + maglev_layout::HEADER)?;
    let (size, capacity) = (header as u32, (header >> 32) as u32);
    if size == 0 {
        return None;
    }
    let slot = hash % size;
    let lanes = *MAGLEV_ARENA.get(block + maglev_layout::slots_start(capacity) + slot / 4)?;
    let member = ((lanes >> ((slot % 4) * 16)) & 0xffff) as u32;
    if member >= capacity {
        return None;
    }
    member_of(block, member).map(|id| (id, member))
}

/// The backend id at member index `member` of the Maglev table of
/// `frontend_id`, if the table has such a member.
#[inline(always)]
fn table_member(frontend_id: u32, member: u32) -> Option<u32> {
    let block = table_block(frontend_id)?;
    let capacity = (*MAGLEV_ARENA.get(block + maglev_layout::HEADER)? >> 32) as u32;
    if member >= capacity {
        return None;
    }
    member_of(block, member)
}

/// Where the table of `frontend_id` starts in `MAGLEV_ARENA`.
#[inline(always)]
fn table_block(frontend_id: u32) -> Option<u32> {
    let descriptor = *MAGLEV_INDEX.get(frontend_id)?;
    (descriptor != NO_TABLE).then_some(descriptor as u32)
}

#[inline(always)]
fn member_of(block: u32, member: u32) -> Option<u32> {
    let ids = *MAGLEV_ARENA.get(block + maglev_layout::MEMBERS_START + member / 2)?;
    Some((ids >> ((member % 2) * 32)) as u32)
}

/// Whether the backend a conntrack entry names still exists as it was. The
/// agent deletes a backend once no service lists it, so a UDP flow whose
/// endpoint went away is balanced afresh instead of going on to the old
/// address (kube-proxy flushes such UDP entries for the same reason).
#[inline(always)]
pub fn backend_still_exists<F: Family>(entry: &CtEntryOf<F>) -> bool {
    backend::<F>(entry.backend_id)
        .is_some_and(|b| b.addr == entry.nat_addr && b.port == entry.nat_port)
}

/// The hash of the flow's 5-tuple ([`proxy_common::hash::flow_hash`]).
#[inline(always)]
pub fn flow_hash<F: Family>(flow: &Flow<F>) -> u32 {
    proxy_common::hash::flow_hash(
        flow.src_addr,
        flow.dst_addr,
        flow.src_port,
        flow.dst_port,
        flow.proto,
    )
}
