//! Developer tasks: `cargo xtask setup | test | demo | bench | fuzz | vm-test`.
//! `test`, `demo` and `bench` run `setup` first, so each works on a fresh
//! machine with one command.

mod bench_check;
mod fuzz;
mod setup;
mod vm;

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{bail, Context as _};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what building and testing need (idempotent).
    Setup,
    /// Formatting, clippy, unit, packet, fuzzing and namespace suites, the
    /// privileged suites again in a 5.10 VM, a short run of each libFuzzer
    /// target, and the benchmark smoke test (needs root).
    Test,
    /// Build a mini node from network namespaces and show a ClusterIP at work (needs root).
    Demo,
    /// Per-packet, connection-rate, throughput and control-plane benchmarks,
    /// kxdp next to kube-proxy's rulesets; writes docs/bench/REPORT.md with
    /// SVG figures (needs root).
    Bench {
        /// Shorter runs, for a quick look.
        #[arg(long)]
        quick: bool,
        /// Where the report goes (figures beside it).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Differential fuzzing of the datapath: frames for every program
    /// through the real object (BPF_PROG_TEST_RUN), each verdict and output
    /// held to the tests' reference model; then the libFuzzer targets under
    /// fuzz/ for a fixed time each, growing their corpus (needs root).
    Fuzz {
        /// Frames per program.
        #[arg(long, default_value_t = 1_000_000)]
        packets: u64,
        /// Stop after this many seconds, whatever the count.
        #[arg(long)]
        seconds: Option<u64>,
        /// Replay this seed (decimal or 0x…); a fresh one by default.
        #[arg(long)]
        seed: Option<String>,
        /// Seconds each libFuzzer target runs (0: none).
        #[arg(long, default_value_t = 120)]
        target_seconds: u64,
    },
    /// The packet and namespace suites inside QEMU, on each kernel in turn (Debian's
    /// cloud kernels, downloaded with apt and cached under target/vm/).
    VmTest {
        /// 5.10, 6.1 or 6.12 (Debian's newest of that line), a linux-image
        /// .deb, or a kernel image; repeat for several. Default: all three.
        #[arg(long = "kernel", value_name = "5.10|6.1|6.12|PATH")]
        kernels: Vec<String>,
        /// Seconds one kernel's boot and suites (or bench) may take.
        #[arg(long, default_value_t = 1800)]
        timeout: u64,
        /// Run only this suite (repeat for several); all by default.
        #[arg(long = "suite", value_name = "NAME")]
        suites: Vec<String>,
        /// Instead of the suites, time the full sync of 30,000 Services ×
        /// 10 endpoints in each VM (`kxdp-bench --only sync`, release
        /// build) and compare the kernels; writes target/vm/bench.md.
        #[arg(long)]
        bench: bool,
    },
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

/// Runs a command in the workspace root, failing if it fails.
fn run(command: &mut Command) -> anyhow::Result<()> {
    run_in(&workspace_root(), command)
}

/// Runs a command in `dir`, failing if it fails.
fn run_in(dir: &Path, command: &mut Command) -> anyhow::Result<()> {
    command.current_dir(dir);
    eprintln!("xtask: running {command:?}");
    let status = command
        .status()
        .with_context(|| format!("spawning {command:?}"))?;
    if !status.success() {
        bail!("{command:?} failed: {status}");
    }
    Ok(())
}

fn cargo() -> Command {
    Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

fn require_root(task: &str) -> anyhow::Result<()> {
    let uid = String::from_utf8(Command::new("id").arg("-u").output()?.stdout)?;
    if uid.trim() != "0" {
        bail!("`cargo xtask {task}` loads eBPF programs and builds network namespaces: run it as root");
    }
    Ok(())
}

/// How long `cargo xtask test` runs each libFuzzer target.
const FUZZ_TARGET_SECONDS_IN_CI: u64 = 15;

fn test() -> anyhow::Result<()> {
    require_root("test")?;
    run(cargo().args(["fmt", "--all", "--check"]))?;
    // The fuzz targets, outside the workspace.
    run(cargo().args(["fmt", "--check", "--manifest-path", "fuzz/Cargo.toml"]))?;
    // Default members: every crate but the eBPF one, which only builds for bpfel.
    run(cargo().args(["clippy", "--all-targets", "--", "-D", "warnings"]))?;
    // The eBPF crate alone, for its own target.
    run(Command::new("rustup")
        .args(["run", "nightly", "cargo", "clippy", "-p", "proxy-ebpf"])
        .args([
            "--target",
            "bpfel-unknown-none",
            "-Z",
            "build-std=core",
            "--",
            "-D",
            "warnings",
        ])
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("CARGO")
        .env_remove("RUSTC"))?;
    run(cargo().args(["build", "-p", "proxy-userspace"]))?;
    let kxdp = workspace_root().join("target/debug/kxdp");
    // Unit, packet (BPF_PROG_TEST_RUN), namespace and deploy manifest
    // suites. The privileged ones fail, never skip, when they cannot run.
    run(cargo()
        .arg("test")
        .env("KXDP_BIN", kxdp)
        .env("KXDP_KUBERNETES_VALIDATE", setup::kubernetes_validate()))?;
    // The packet and namespace suites again inside QEMU on Debian 11's 5.10
    // kernel, the oldest of the matrix, where most features degrade: all
    // but the Service-rule suite (`LEFT_TO_THE_FULL_MATRIX`), which keeps
    // the run within the CI's time. The whole matrix, every suite on 5.10,
    // 6.1 and 6.12, runs with `cargo xtask vm-test`.
    vm::vm_test(
        &["5.10".to_string()],
        Duration::from_secs(1800),
        vm::Mode::Suites {
            left_out: vm::LEFT_TO_THE_FULL_MATRIX.to_vec(),
        },
    )?;
    // The libFuzzer targets, briefly (`cargo xtask fuzz` runs them longer),
    // from the repository's corpus; what they find stays out of it.
    fuzz::run_targets(FUZZ_TARGET_SECONDS_IN_CI, fuzz::Run::Brief)?;
    // Benchmark smoke test: the quick run works and fills every section.
    let report = workspace_root().join("target/bench-smoke/REPORT.md");
    let _ = std::fs::remove_file(&report);
    bench(true, Some(&report))?;
    bench_check::check_file(&report)?;
    eprintln!("xtask: benchmark smoke test passed ({})", report.display());
    Ok(())
}

fn release_build() -> anyhow::Result<PathBuf> {
    run(cargo().args([
        "build",
        "--release",
        "-p",
        "proxy-userspace",
        "-p",
        "kxdp-testbed",
    ]))?;
    Ok(workspace_root().join("target/release"))
}

fn bench(quick: bool, out: Option<&Path>) -> anyhow::Result<()> {
    let bin = release_build()?;
    let mut bench = Command::new(bin.join("kxdp-bench"));
    if quick {
        bench.arg("--quick");
    }
    if let Some(out) = out {
        bench.arg("--out").arg(out);
    }
    run(bench.env("KXDP_BIN", bin.join("kxdp")))
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().task {
        Task::Setup => setup::run(),
        Task::Test => {
            setup::run()?;
            test()
        }
        Task::Demo => {
            setup::run()?;
            require_root("demo")?;
            let bin = release_build()?;
            run(Command::new(bin.join("kxdp-demo")).env("KXDP_BIN", bin.join("kxdp")))
        }
        Task::Bench { quick, out } => {
            setup::run()?;
            require_root("bench")?;
            bench(quick, out.as_deref())
        }
        Task::Fuzz {
            packets,
            seconds,
            seed,
            target_seconds,
        } => {
            setup::run()?;
            require_root("fuzz")?;
            let bin = release_build()?;
            let mut fuzz = Command::new(bin.join("kxdp-fuzz"));
            fuzz.args(["--packets", &packets.to_string()]);
            if let Some(seconds) = seconds {
                fuzz.args(["--seconds", &seconds.to_string()]);
            }
            if let Some(seed) = seed {
                fuzz.args(["--seed", &seed]);
            }
            run(&mut fuzz)?;
            if target_seconds > 0 {
                fuzz::run_targets(target_seconds, fuzz::Run::Long)?;
            }
            Ok(())
        }
        Task::VmTest {
            kernels,
            timeout,
            suites,
            bench,
        } => {
            setup::run()?;
            let kernels = if kernels.is_empty() {
                vm::DEFAULT_KERNELS.iter().map(|k| k.to_string()).collect()
            } else {
                kernels
            };
            let mode = if bench {
                vm::Mode::Bench
            } else {
                vm::Mode::Suites {
                    left_out: vm::left_out_but(&suites)?,
                }
            };
            vm::vm_test(&kernels, Duration::from_secs(timeout), mode)
        }
    }
}
