//! Where the benchmarks' real traffic (`kxdp-bench --only pps`) ends:
//! `sink`, attached in XDP to the far end of the wire, counts each frame
//! that reaches it and drops it. Not used by the agent.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::xdp_action,
    macros::{map, xdp},
    maps::PerCpuArray,
    programs::XdpContext,
};

/// Frames that reached the sink.
#[map]
static SUNK: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

#[xdp]
pub fn sink(_ctx: XdpContext) -> u32 {
    if let Some(count) = SUNK.get_ptr_mut(0) {
        // SAFETY: a per-CPU map value, this program its only writer here.
        unsafe { *count += 1 };
    }
    xdp_action::XDP_DROP
}

#[path = "../object_runtime.rs"]
mod object_runtime;
