//! The eBPF object built by `build.rs`, embedded in the binary.

/// The datapath object (`proxy-ebpf`'s `kxdp` binary), 8-byte aligned for the ELF parser.
pub static KXDP_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/kxdp"));
