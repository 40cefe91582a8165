//! Per-CPU counters: packets and bytes per service, drops per reason.

use crate::maps::{DROPS, STATS};

#[inline(always)]
pub fn count_service(service_id: u32, bytes: u32) {
    if let Some(stats) = STATS.get_ptr_mut(service_id) {
        // SAFETY: per-CPU slot, no other writer on this CPU.
        unsafe {
            (*stats).packets += 1;
            (*stats).bytes += bytes as u64;
        }
    }
}

#[inline(always)]
pub fn count_drop(reason: u32) {
    if let Some(count) = DROPS.get_ptr_mut(reason) {
        // SAFETY: per-CPU slot, no other writer on this CPU.
        unsafe { *count += 1 };
    }
}
