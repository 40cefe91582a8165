//! Builds the eBPF crate (nightly, bpfel target) and leaves the objects in
//! OUT_DIR, where `src/ebpf_object.rs` embeds the agent's. The benchmarks'
//! `floor` and `sink` objects are named to the `tests` crate's build
//! script instead (`links` metadata: `DEP_KXDP_EBPF_FLOOR`, `…_SINK`).

use anyhow::{anyhow, Context as _};
use aya_build::Toolchain;

fn main() -> anyhow::Result<()> {
    let metadata = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("cargo metadata")?;
    let package_dir = |name: &str| {
        let package = metadata
            .packages
            .iter()
            .find(|p| p.name.as_str() == name)
            .ok_or_else(|| anyhow!("{name} package not found"))?;
        package
            .manifest_path
            .parent()
            .map(|dir| dir.to_string())
            .ok_or_else(|| anyhow!("{name} manifest has no parent"))
    };
    let root_dir = package_dir("proxy-ebpf")?;
    // aya-build watches the eBPF crate only; the map types it compiles in
    // live in proxy-common, and a stale object would disagree with them.
    println!("cargo:rerun-if-changed={}", package_dir("proxy-common")?);
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "proxy-ebpf",
            root_dir: &root_dir,
            ..Default::default()
        }],
        Toolchain::default(),
    )?;
    // The allocator's header, where the agent's tests check the option
    // numbers it sets (`src/main.rs`).
    let mimalloc_include =
        std::env::var("DEP_MIMALLOC_INCLUDE_DIR").context("mimalloc's include dir")?;
    println!("cargo:rustc-env=KXDP_MIMALLOC_INCLUDE_DIR={mimalloc_include}");
    let out_dir = std::env::var("OUT_DIR").context("OUT_DIR")?;
    println!("cargo::metadata=floor={out_dir}/floor");
    println!("cargo::metadata=sink={out_dir}/sink");
    Ok(())
}
