//! The eBPF objects built by `build.rs` that the agent loads, embedded in
//! the binary. (The benchmarks' `floor` object is built beside them but
//! embedded only by the `tests` crate.)

/// The datapath object (`proxy-ebpf`'s `kxdp` binary), 8-byte aligned for the ELF parser.
pub static KXDP_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/kxdp"));

/// The program that learns the agent's network-namespace cookie on kernels
/// without `SO_NETNS_COOKIE` (`proxy-ebpf`'s `netns_cookie` binary;
/// `dataplane::sockets::learn_netns_cookie`).
pub static NETNS_COOKIE_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/netns_cookie"));
