//! What this kernel offers, as the agent probed it (`KXDP_FEATURES`, bits
//! of `proxy_common::kernel`), and the datapath's one clock.

use aya_ebpf::helpers::generated::{bpf_ktime_get_coarse_ns, bpf_ktime_get_ns};
use proxy_common::kernel::{clock_s, FEATURE_KTIME_COARSE};

/// Set by the loader before the programs load; read-only to them, so the
/// verifier prunes the branches of features this kernel lacks.
#[unsafe(no_mangle)]
static KXDP_FEATURES: u32 = 0;

#[inline(always)]
pub fn has(feature: u32) -> bool {
    // SAFETY: the global is read as the loader set it.
    unsafe { core::ptr::read_volatile(&KXDP_FEATURES) & feature != 0 }
}

/// Seconds of the datapath's clock (`proxy_common::kernel::clock_s`):
/// conntrack, affinity and SNAT entries are stamped with it.
#[inline(always)]
pub fn now_s() -> u32 {
    // The coarse clock only where the kernel has the helper: the verifier
    // drops the branch not taken.
    let ns = if has(FEATURE_KTIME_COARSE) {
        // SAFETY: a plain helper call without arguments.
        unsafe { bpf_ktime_get_coarse_ns() }
    } else {
        // SAFETY: a plain helper call without arguments.
        unsafe { bpf_ktime_get_ns() }
    };
    clock_s(ns)
}
