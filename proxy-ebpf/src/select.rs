//! Backend choice for a new flow: a hash of the 5-tuple indexes the service's
//! slots in the selection table, so flows spread over every backend. With
//! `sessionAffinity: ClientIP` a client's new flows go where its last one
//! went, while that backend is still in the service and the client opened a
//! connection within the timeout.

use aya_ebpf::{bindings::BPF_ANY, helpers::generated::bpf_ktime_get_coarse_ns};
use proxy_common::maps::{
    drop_reason, AffinityKey, AffinityValue, BackendValue, CtEntry, ServiceValue, SlotKey,
    SERVICE_AFFINITY_CLIENT_IP,
};

use crate::{
    maps::{AFFINITY, BACKENDS, SELECTION},
    parse::Ipv4Flow,
};

/// A backend chosen for a flow.
pub struct Selected {
    pub id: u32,
    pub backend: BackendValue,
}

#[inline(always)]
pub fn select_backend(service: &ServiceValue, flow: &Ipv4Flow) -> Result<Selected, u32> {
    if service.slot_count == 0 {
        return Err(drop_reason::NO_BACKEND);
    }
    if service.flags & SERVICE_AFFINITY_CLIENT_IP == 0 {
        return slot_backend(service, flow_hash(flow) % service.slot_count).map(|(s, _)| s);
    }
    let key = AffinityKey {
        service_id: service.id,
        client_addr: flow.src_addr,
    };
    // SAFETY: plain helper call.
    let now = (unsafe { bpf_ktime_get_coarse_ns() } / 1_000_000_000) as u32;
    if let Some(entry) = AFFINITY.get_ptr_mut(key) {
        // SAFETY: a map value pointer, valid for this program run.
        let remembered = unsafe { *entry };
        if now.saturating_sub(remembered.last_used) <= service.affinity_timeout {
            if let Ok((chosen, _)) = slot_backend(service, remembered.slot) {
                // Still in its slot: the client stays; refreshed in place.
                if chosen.id == remembered.backend_id {
                    // SAFETY: as above.
                    unsafe { (*entry).last_used = now };
                    return Ok(chosen);
                }
            }
        }
    }
    // None yet, lapsed, or its backend left: choose afresh and remember.
    let (chosen, slot) = slot_backend(service, flow_hash(flow) % service.slot_count)?;
    let value = AffinityValue {
        backend_id: chosen.id,
        slot,
        last_used: now,
    };
    // Best effort: without an entry the next flow is balanced as usual.
    let _ = AFFINITY.insert(key, value, BPF_ANY as u64);
    Ok(chosen)
}

/// The backend in slot `slot` of `service` (which must be < its slot count).
#[inline(always)]
fn slot_backend(service: &ServiceValue, slot: u32) -> Result<(Selected, u32), u32> {
    let key = SlotKey {
        service_id: service.id,
        slot: slot % service.slot_count,
    };
    // SAFETY: values are copied out at once.
    let id = unsafe { SELECTION.get(key).copied() }.ok_or(drop_reason::STALE_SELECTION)?;
    let backend = unsafe { BACKENDS.get(id).copied() }.ok_or(drop_reason::STALE_SELECTION)?;
    Ok((Selected { id, backend }, key.slot))
}

/// Whether the backend a conntrack entry names still exists as it was. The
/// agent deletes a backend once no service lists it, so a UDP flow whose
/// endpoint went away is balanced afresh instead of going on to the old
/// address (kube-proxy flushes such UDP entries for the same reason).
#[inline(always)]
pub fn backend_still_exists(entry: &CtEntry) -> bool {
    // SAFETY: the value is read at once.
    unsafe { BACKENDS.get(entry.backend_id) }
        .is_some_and(|b| b.addr == entry.nat_addr && b.port == entry.nat_port)
}

/// 32-bit finaliser (from the "lowbias32" family): cheap and well mixed.
#[inline(always)]
pub fn mix(mut x: u32) -> u32 {
    x ^= x >> 16;
    x = x.wrapping_mul(0x7feb_352d);
    x ^= x >> 15;
    x = x.wrapping_mul(0x846c_a68b);
    x ^ (x >> 16)
}

/// A well-mixed hash of the 5-tuple.
#[inline(always)]
pub fn flow_hash(flow: &Ipv4Flow) -> u32 {
    let ports = ((flow.src_port as u32) << 16) | flow.dst_port as u32;
    let h = mix(flow.src_addr ^ 0x9e37_79b9);
    let h = mix(h ^ flow.dst_addr);
    mix(h ^ ports ^ ((flow.proto as u32) << 24))
}
