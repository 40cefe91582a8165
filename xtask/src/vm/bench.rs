//! `cargo xtask vm-test --bench`: instead of the suites, each VM runs
//! `kxdp-bench --only sync` (the agent's pipeline programming Services
//! into the maps from empty, then single endpoint changes) and the kernels'
//! figures are compared. Before Linux 6.8 every update of an array-of-maps
//! slot waited for an RCU grace period; with the Maglev tables in one
//! mmapable arena, 6.1 should program as fast as 6.12 (issue 18: within
//! 1.5×), which only running both kernels on one machine can show.

use std::collections::HashMap;

use super::*;

/// Services per run, 10 endpoints each: the size issue 18 asks about.
const SERVICES: usize = 30_000;
/// How kxdp-bench's machine-readable line starts (`SYNC_LINE` in
/// tests/src/bin/kxdp-bench/report.rs).
const SYNC_LINE: &str = "kxdp-bench: sync ";
/// Where the bench sits in the VM.
const BENCH: &str = "/bench/kxdp-bench";

/// The release bench: debug builds time the pipeline's debug code.
pub(super) fn build() -> anyhow::Result<PathBuf> {
    cargo_executables(&[
        "build",
        "--release",
        "-p",
        "kxdp-testbed",
        "--bin",
        "kxdp-bench",
    ])?
    .into_iter()
    .find(|(name, _)| name == "kxdp-bench")
    .map(|(_, exe)| exe)
    .context("cargo built no kxdp-bench")
}

/// The bench alone, without `KXDP_BIN`: the sync part starts no agent, it
/// loads the datapath object compiled into it.
pub(super) fn payload(bench: &Path) -> Payload {
    Payload {
        programs: vec![(bench.to_path_buf(), PathBuf::from(BENCH))],
        script: format!(
            "echo 'kxdp-vm: running kxdp-bench --only sync'\n\
             {BENCH} --only sync --services {SERVICES} --quick --out /tmp/sync.md || status=1\n"
        ),
    }
}

/// One kernel's figures, from the bench's line.
struct Figures {
    release: String,
    full_ms: f64,
    writes_ms: f64,
    change_p99_us: f64,
}

/// The figures of the bench's line for `SERVICES`, if the VM printed it.
fn figures(boot: &Boot) -> Option<Figures> {
    boot.lines.iter().find_map(|line| {
        let words: HashMap<&str, &str> = line
            .strip_prefix(SYNC_LINE)?
            .split_whitespace()
            .filter_map(|word| word.split_once('='))
            .collect();
        if words.get("services")?.parse::<usize>().ok()? != SERVICES {
            return None;
        }
        Some(Figures {
            release: words.get("kernel")?.to_string(),
            full_ms: words.get("full_ms")?.parse().ok()?,
            writes_ms: words.get("writes_ms")?.parse().ok()?,
            change_p99_us: words.get("change_p99_us")?.parse().ok()?,
        })
    })
}

/// Prints and writes (target/vm/bench.md) each kernel's figures and the
/// first kernel's over the last one's; fails if a VM gave none.
pub(super) fn summary(kernels: &[Kernel], boots: &[Boot], timeout: Duration) -> anyhow::Result<()> {
    let mut table = String::from(
        "| kernel | release | full sync ms | of it map writes ms | one change p99 µs | run |\n\
         |---|---|---:|---:|---:|---|\n",
    );
    let mut measured = Vec::new();
    for (kernel, boot) in kernels.iter().zip(boots) {
        let found = figures(boot).filter(|_| boot.status == Some(0));
        let run = format!(
            "{}, {} in all ({:?})",
            verdict(boot, timeout),
            seconds(boot.total),
            boot.accel
        );
        match &found {
            Some(f) => table.push_str(&format!(
                "| {} | {} | {:.0} | {:.0} | {:.0} | {run} |\n",
                kernel.label, f.release, f.full_ms, f.writes_ms, f.change_p99_us
            )),
            None => table.push_str(&format!(
                "| {} | | | | | {run}; no `{}services={SERVICES}` line |\n",
                kernel.label,
                SYNC_LINE.trim_end()
            )),
        }
        measured.push((kernel, found));
    }
    let ratio = match (measured.first(), measured.last()) {
        (Some((first, Some(a))), Some((last, Some(b)))) if measured.len() > 1 => format!(
            "{} / {}: full sync {:.2}×, one change p99 {:.2}×\n",
            first.label,
            last.label,
            a.full_ms / b.full_ms,
            a.change_p99_us / b.change_p99_us
        ),
        _ => String::new(),
    };
    let report = format!(
        "# Full sync across kernels (`cargo xtask vm-test --bench`)\n\n\
         {SERVICES} Services × 10 endpoints programmed from empty by the agent's pipeline into the \
         maps, then single endpoint changes (`kxdp-bench --only sync --services {SERVICES} --quick`: \
         one run), in a QEMU VM per kernel (2 vCPUs, 2 GiB). Under TCG emulation the times are the \
         emulator's: compare the kernels, not the figures with a host's.\n\n\
         {table}\n{ratio}"
    );
    println!("\n{report}");
    let path = vm_dir().join("bench.md");
    fs::write(&path, &report).with_context(|| format!("writing {}", path.display()))?;
    eprintln!("xtask: written to {}", path.display());
    if measured.iter().any(|(_, found)| found.is_none()) {
        bail!("vm-test --bench: a VM gave no full-sync figures");
    }
    Ok(())
}
