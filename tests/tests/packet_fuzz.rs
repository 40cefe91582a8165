//! The datapath's differential fuzzing, bounded for CI: 50,000 frames a
//! program from a fixed seed and 50,000 from a fresh one (printed, so a
//! failure replays with `cargo xtask fuzz --seed`); 20,000 each in the VMs
//! (`$KXDP_FUZZ_FRAMES`). Every verdict and
//! output frame of `pod_ingress`, `pod_egress` and `nic_ingress` is held
//! to the reference model (`kxdp_testbed::fuzz`), and its counters and
//! conntrack to the model's. `cargo xtask fuzz` runs a million frames a
//! program. Needs root; panics rather than skipping without it.

use kxdp_testbed::fuzz::{self, Config};

/// Frames a program: `$KXDP_FUZZ_FRAMES` (the VMs run fewer), else 50,000.
fn frames() -> u64 {
    match std::env::var("KXDP_FUZZ_FRAMES") {
        Ok(n) => n
            .parse()
            .unwrap_or_else(|e| panic!("KXDP_FUZZ_FRAMES={n:?}: {e}")),
        Err(_) => 50_000,
    }
}

fn fuzz_from(seed: u64) {
    let frames = frames();
    let report = fuzz::run(Config {
        frames,
        time_limit: None,
        seed,
    });
    println!("{}", report.summary());
    assert!(report.passed(), "{}", report.summary());
    for (program, tally) in &report.tallies {
        assert_eq!(tally.frames, frames, "{program} ran every frame");
    }
    // The run reached every rule, not only the easy ones.
    for rule in [
        "new flow: pod",
        "new flow: pod, hairpin",
        "new flow: NIC, local backend",
        "new flow: NIC, SNAT",
        "new flow: with affinity",
        "pod: carried by conntrack",
        "nic: carried by conntrack",
        "nic: a SNATed reply",
        "pod egress: reverse NAT",
        "pod: a reply to a NIC client",
        "pod: a reply to a SNATed NIC client",
        "refused: RST",
        "refused: port unreachable",
        "drop: source range",
        "drop: no local backend",
        "drop: a RST not answered",
        "drop: refusal not built (tag, options)",
        "passed: a connection past the frontends",
        "no flow",
    ] {
        assert!(
            report.seen.get(rule).copied().unwrap_or(0) > 0,
            "no frame reached rule {rule:?}: {:?}",
            report.seen
        );
    }
}

#[test]
fn a_fixed_seed_matches_the_model() {
    fuzz_from(0x6b78_6470);
}

#[test]
fn a_fresh_seed_matches_the_model() {
    let seed = fuzz::fresh_seed();
    println!("fresh seed {seed:#x}");
    fuzz_from(seed);
}
