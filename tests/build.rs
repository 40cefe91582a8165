//! Embeds the benchmarks' objects (`proxy-ebpf`'s `floor` and `sink`
//! binaries), which proxy-userspace's build script builds beside the
//! datapath and names here, so that the agent itself does not carry them.

fn main() {
    let floor = std::env::var("DEP_KXDP_EBPF_FLOOR")
        .expect("proxy-userspace's build script names the floor object");
    println!("cargo::rerun-if-env-changed=DEP_KXDP_EBPF_FLOOR");
    println!("cargo::rustc-env=KXDP_FLOOR_OBJECT={floor}");
    let sink = std::env::var("DEP_KXDP_EBPF_SINK")
        .expect("proxy-userspace's build script names the sink object");
    println!("cargo::rerun-if-env-changed=DEP_KXDP_EBPF_SINK");
    println!("cargo::rustc-env=KXDP_SINK_OBJECT={sink}");
}
