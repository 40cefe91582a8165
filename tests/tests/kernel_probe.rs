//! The kernel feature probe (`dataplane::probe`): on a kernel of the VM
//! matrix it finds exactly what that kernel line lacks (`cargo xtask
//! vm-test` names it in `KXDP_EXPECT_MISSING`); on any kernel, its answers
//! agree with the functions the kernel was built with.

use kxdp_testbed::privileged::require_root;
use proxy_userspace::{dataplane::probe, features::Feature};

fn kernel_has_function(symbols: &str, name: &str) -> bool {
    symbols
        .lines()
        .any(|l| l.split_whitespace().nth(2) == Some(name))
}

#[test]
fn the_probe_finds_what_this_kernel_lacks() {
    require_root("the kernel probe");
    let (probed, loadout) = probe::this_kernel(false).expect("probing the kernel");
    let missing: Vec<&str> = probed.missing().map(Feature::name).collect();
    eprintln!("missing here: {missing:?}");
    if let Ok(expected) = std::env::var("KXDP_EXPECT_MISSING") {
        assert_eq!(missing.join(","), expected);
    }
    let symbols = std::fs::read_to_string("/proc/kallsyms").expect("/proc/kallsyms");
    assert_eq!(
        probed.has(Feature::Tcx),
        kernel_has_function(&symbols, "tcx_link_attach")
    );
    assert_eq!(
        probed.has(Feature::KtimeCoarse),
        kernel_has_function(&symbols, "bpf_ktime_get_coarse_ns")
    );
    assert_eq!(loadout.classic_tc, !probed.has(Feature::Tcx));
}
