//! The eBPF objects built by `build.rs`, embedded in the binary.

/// The datapath object (`proxy-ebpf`'s `kxdp` binary), 8-byte aligned for the ELF parser.
pub static KXDP_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/kxdp"));

/// Empty XDP (`floor_xdp`) and tc (`floor_tc`) programs (`proxy-ebpf`'s
/// `floor` binary). They exist only for benchmarks: timing them measures the
/// cost of the test harness (BPF_PROG_TEST_RUN) itself, the floor under
/// every datapath number. The agent never loads them.
pub static FLOOR_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/floor"));

/// The program that learns the agent's network-namespace cookie on kernels
/// without `SO_NETNS_COOKIE` (`proxy-ebpf`'s `netns_cookie` binary;
/// `dataplane::sockets::learn_netns_cookie`).
pub static NETNS_COOKIE_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/netns_cookie"));
