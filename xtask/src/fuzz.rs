//! `cargo xtask fuzz`'s libFuzzer half: the targets under `fuzz/` (manifest
//! streams, API objects, the reject builders, the checksum arithmetic),
//! built with cargo-fuzz (nightly, AddressSanitizer) and each run for a
//! fixed time over the corpus kept in the repository.

use std::{path::PathBuf, process::Command};

use anyhow::Context as _;

use crate::{run, workspace_root};

/// The targets, as `fuzz/Cargo.toml` names them.
pub const TARGETS: &[&str] = &["manifests", "api_objects", "reject_builders", "checksums"];

fn cargo_fuzz() -> Command {
    let mut command = Command::new("rustup");
    command
        .args(["run", "nightly", "cargo", "fuzz"])
        .current_dir(workspace_root().join("fuzz"))
        // Not the stable toolchain `cargo xtask` runs under.
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("CARGO")
        .env_remove("RUSTC");
    command
}

/// How the targets run: `Long` (`cargo xtask fuzz`) optimized, writing
/// what it finds into the repository's corpus, which then grows (commit
/// it); `Brief` (`cargo xtask test`) a debug build (3 minutes to build
/// from scratch here, the optimized one 10), writing into a scratch corpus
/// beside the repository's, which it reads.
#[derive(Clone, Copy)]
pub enum Run {
    Long,
    Brief,
}

impl Run {
    fn profile(self) -> &'static str {
        match self {
            Run::Long => "-O",
            Run::Brief => "--dev",
        }
    }
}

/// Builds every target, then runs each for `seconds` and prints its
/// executions.
pub fn run_targets(seconds: u64, how: Run) -> anyhow::Result<()> {
    run(cargo_fuzz().args(["build", how.profile()]))?;
    for &target in TARGETS {
        let kept = workspace_root().join("fuzz/corpus").join(target);
        let mut dirs: Vec<PathBuf> = Vec::new();
        if let Run::Brief = how {
            let scratch = workspace_root().join("target/fuzz-corpus").join(target);
            let _ = std::fs::remove_dir_all(&scratch);
            std::fs::create_dir_all(&scratch).context("scratch corpus")?;
            dirs.push(scratch);
        }
        dirs.push(kept);
        eprintln!("xtask: fuzzing {target} for {seconds} s");
        let output = cargo_fuzz()
            .args(["run", how.profile(), target])
            .args(&dirs)
            .args(["--", &format!("-max_total_time={seconds}")])
            .output()
            .with_context(|| format!("cargo fuzz run {target}"))?;
        let log = String::from_utf8_lossy(&output.stderr);
        if !output.status.success() {
            eprintln!("{log}");
            anyhow::bail!(
                "fuzz target {target} failed (its input is under fuzz/artifacts/{target}/)"
            );
        }
        let runs: u64 = log
            .lines()
            .find_map(|l| l.strip_prefix("Done ")?.split(' ').next()?.parse().ok())
            .with_context(|| format!("{target}: no \"Done N runs\" line"))?;
        eprintln!("xtask: {target}: {runs} executions in {seconds} s, no failure");
    }
    Ok(())
}
