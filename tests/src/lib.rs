pub mod agent;
pub mod api_objects;
pub mod cases;
pub mod cgroup;
pub mod datapath;
pub mod fake_apiserver;
pub mod fuzz;
pub mod manifests;
pub mod netns;
pub mod nic_checks;
pub mod nic_netns;
pub mod packet;
pub mod privileged;
pub mod scenario;
pub mod sctp_socket;
pub mod served;
pub mod two_node;

use std::time::Duration;

/// Empty XDP (`floor_xdp`) and tc (`floor_tc`) programs (`proxy-ebpf`'s
/// `floor` binary, `build.rs`). They exist only for benchmarks: timing them
/// measures the cost of the test harness (BPF_PROG_TEST_RUN) itself, the
/// floor under every datapath number.
pub static FLOOR_OBJECT: &[u8] = aya::include_bytes_aligned!(env!("KXDP_FLOOR_OBJECT"));

/// The XDP program that counts and drops the real-traffic benchmark's
/// frames where they leave (`proxy-ebpf`'s `sink` binary); for benchmarks
/// only.
pub static SINK_OBJECT: &[u8] = aya::include_bytes_aligned!(env!("KXDP_SINK_OBJECT"));

/// `wait` stretched by `$KXDP_TEST_PATIENCE` (a whole factor, 1 when unset):
/// the VM suites run under emulation, many times slower. Only the bounds on
/// waiting for something grow; a passing test waits no longer.
pub fn patience(wait: Duration) -> Duration {
    let factor = std::env::var("KXDP_TEST_PATIENCE")
        .ok()
        .and_then(|f| f.parse::<u32>().ok())
        .unwrap_or(1)
        .max(1);
    wait * factor
}
