//! Per-CPU counters: packets and bytes per service, drops per reason.

use aya_ebpf::bindings::{TC_ACT_OK, TC_ACT_SHOT};

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

/// The tc verdict for a program's result: pass, or drop and count why
/// (`Err` carries a `drop_reason`). Every verdict is decided here.
#[inline(always)]
pub fn tc_verdict(result: Result<(), u32>) -> i32 {
    match result {
        Ok(()) => TC_ACT_OK,
        Err(reason) => {
            count_drop(reason);
            TC_ACT_SHOT
        }
    }
}
