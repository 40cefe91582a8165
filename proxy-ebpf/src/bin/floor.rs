//! Empty programs for the benchmarks: the cost of BPF_PROG_TEST_RUN itself
//! (context set-up, program call, verdict) with no work inside. `kxdp-bench`
//! times them next to `pod_ingress` so its numbers can be read as "above the
//! floor". Not used by the agent.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::{xdp_action, TC_ACT_OK},
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};

#[xdp]
pub fn floor_xdp(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

/// The empty program for paths that end in XDP_TX (the real-traffic
/// bench's remote NodePort rows).
#[xdp]
pub fn floor_xdp_tx(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_TX
}

#[classifier]
pub fn floor_tc(_ctx: TcContext) -> i32 {
    TC_ACT_OK
}

#[path = "../object_runtime.rs"]
mod object_runtime;
