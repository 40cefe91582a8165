//! Embeds the benchmarks' floor object (`proxy-ebpf`'s `floor` binary),
//! which proxy-userspace's build script builds beside the datapath and
//! names here, so that the agent itself does not carry it.

fn main() {
    let floor = std::env::var("DEP_KXDP_EBPF_FLOOR")
        .expect("proxy-userspace's build script names the floor object");
    println!("cargo::rerun-if-env-changed=DEP_KXDP_EBPF_FLOOR");
    println!("cargo::rustc-env=KXDP_FLOOR_OBJECT={floor}");
}
