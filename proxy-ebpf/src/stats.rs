//! Per-CPU counters: packets and bytes per service, drops per reason.

use core::intrinsics::{atomic_xadd, AtomicOrdering};

use aya_ebpf::bindings::{xdp_action, TC_ACT_SHOT};

use proxy_common::maps::{DropReason, Verdict};

use crate::maps::{DROPS, REJECTS, STATS, VERDICTS};

#[inline(always)]
pub fn count_frontend(frontend_id: u32, bytes: u32) {
    if let Some(stats) = STATS.get_ptr_mut(frontend_id) {
        // SAFETY: per-CPU slot, no other writer on this CPU.
        unsafe {
            (*stats).packets += 1;
            (*stats).bytes += bytes as u64;
        }
    }
}

/// A packet or socket of frontend `frontend_id` refused.
#[inline(always)]
pub fn count_reject(frontend_id: u32) {
    if let Some(count) = REJECTS.get_ptr_mut(frontend_id) {
        // SAFETY: a map value pointer, valid for this program run; shared
        // by every CPU, hence the atomic add.
        unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(count, 1) };
    }
}

#[inline(always)]
pub fn count_verdict(verdict: Verdict) {
    if let Some(count) = VERDICTS.get_ptr_mut(verdict.index()) {
        // SAFETY: per-CPU slot, no other writer on this CPU.
        unsafe { *count += 1 };
    }
}

#[inline(always)]
pub fn count_drop(reason: DropReason) {
    if let Some(count) = DROPS.get_ptr_mut(reason.index()) {
        // SAFETY: per-CPU slot, no other writer on this CPU.
        unsafe { *count += 1 };
    }
}

/// The tc verdict for a program's result: the action it chose, or drop
/// and count why. Every verdict is decided here.
#[inline(always)]
pub fn tc_verdict(result: Result<i32, DropReason>) -> i32 {
    match result {
        Ok(action) => action,
        Err(reason) => {
            count_drop(reason);
            TC_ACT_SHOT
        }
    }
}

/// The XDP verdict for a program's result, as [`tc_verdict`].
#[inline(always)]
pub fn xdp_verdict(result: Result<u32, DropReason>) -> u32 {
    match result {
        Ok(action) => action,
        Err(reason) => {
            count_drop(reason);
            xdp_action::XDP_DROP
        }
    }
}
