//! `cargo xtask setup`: installs what is missing, one step at a time, and
//! says what it did. Safe to run again: each step checks first.

use std::{
    path::PathBuf,
    process::{Command, Stdio},
};

use anyhow::{bail, Context as _};

use crate::{run as checked, workspace_root};

/// Debian packages: LLVM 22 for bpf-linker (matches rustc's LLVM), the
/// tools the namespace suites drive, iptables/nftables for the kube-proxy
/// baselines of the benchmarks, python3-venv for the manifest validator's
/// virtualenv, and a C++ compiler for libFuzzer (the fuzz targets).
const APT_PACKAGES: &[&str] = &[
    "g++",
    "llvm-22-dev",
    "libclang-22-dev",
    "zlib1g-dev",
    "libzstd-dev",
    "iproute2",
    "ethtool",
    "curl",
    "iputils-ping",
    "util-linux",
    "iptables",
    "nftables",
    "python3-venv",
];
const BPF_LINKER_VERSION: &str = "0.13.0";
/// Builds and runs the libFuzzer targets under fuzz/.
const CARGO_FUZZ_VERSION: &str = "0.13.2";
const LLVM_BIN: &str = "/usr/lib/llvm-22/bin";
/// Validates deploy/*.yaml against the API's schemas, which it bundles (it
/// works offline); from PyPI into a virtualenv under target/.
const KUBERNETES_VALIDATE_VERSION: &str = "1.37.0";

fn python_venv() -> PathBuf {
    workspace_root().join("target/py-venv")
}

/// The `kubernetes-validate` the set-up installs; `cargo xtask test` hands
/// it to the deploy manifest test.
pub fn kubernetes_validate() -> PathBuf {
    python_venv().join("bin/kubernetes-validate")
}

fn succeeds(command: &mut Command) -> bool {
    command
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn output(command: &mut Command) -> String {
    command
        .stderr(Stdio::null())
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

fn step(
    name: &str,
    done: bool,
    install: impl FnOnce() -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    if done {
        eprintln!("setup: {name}: already present");
        return Ok(());
    }
    eprintln!("setup: {name}: installing");
    install().with_context(|| format!("setup step '{name}'"))?;
    eprintln!("setup: {name}: installed");
    Ok(())
}

fn apt_installed(package: &str) -> bool {
    output(Command::new("dpkg-query").args(["-W", "-f=${Status}", package]))
        .contains("install ok installed")
}

/// Installs those of `packages` that are missing, in one `apt-get install`;
/// without their recommended packages unless `recommends`.
pub fn apt_packages(packages: &[&str], recommends: bool) -> anyhow::Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .copied()
        .filter(|p| !apt_installed(p))
        .collect();
    step(
        &format!("apt packages ({})", packages.join(" ")),
        missing.is_empty(),
        || {
            checked(Command::new("apt-get").arg("update"))?;
            checked(
                Command::new("apt-get")
                    .args(["install", "-y"])
                    .args((!recommends).then_some("--no-install-recommends"))
                    .args(&missing)
                    .env("DEBIAN_FRONTEND", "noninteractive"),
            )
        },
    )
}

pub fn run() -> anyhow::Result<()> {
    apt_packages(APT_PACKAGES, true)?;

    let nightly = output(Command::new("rustup").args(["toolchain", "list"]))
        .lines()
        .any(|l| l.starts_with("nightly"));
    step(
        "rust nightly toolchain (eBPF crate, -Z build-std)",
        nightly,
        || {
            checked(Command::new("rustup").args([
                "toolchain",
                "install",
                "nightly",
                "--profile",
                "minimal",
            ]))
        },
    )?;
    let installed = output(Command::new("rustup").args([
        "component",
        "list",
        "--toolchain",
        "nightly",
        "--installed",
    ]));
    // rust-src for -Z build-std; clippy to lint the eBPF crate for its target.
    for component in ["rust-src", "clippy"] {
        let present = installed.lines().any(|l| l.starts_with(component));
        step(&format!("{component} for nightly"), present, || {
            checked(Command::new("rustup").args([
                "component",
                "add",
                component,
                "--toolchain",
                "nightly",
            ]))
        })?;
    }

    let linker = output(Command::new("bpf-linker").arg("--version")).contains(BPF_LINKER_VERSION);
    step(
        &format!("bpf-linker {BPF_LINKER_VERSION} (llvm-22)"),
        linker,
        || {
            let path = format!("{LLVM_BIN}:{}", std::env::var("PATH").unwrap_or_default());
            checked(
                Command::new("cargo")
                    .args([
                        "install",
                        "bpf-linker",
                        "--version",
                        BPF_LINKER_VERSION,
                        "--no-default-features",
                        "--features",
                        "llvm-22",
                    ])
                    .env("PATH", path),
            )
        },
    )?;

    let cargo_fuzz =
        output(Command::new("cargo").args(["fuzz", "--version"])).contains(CARGO_FUZZ_VERSION);
    step(
        &format!("cargo-fuzz {CARGO_FUZZ_VERSION}"),
        cargo_fuzz,
        || {
            checked(Command::new("cargo").args([
                "install",
                "cargo-fuzz",
                "--version",
                CARGO_FUZZ_VERSION,
                "--locked",
            ]))
        },
    )?;

    let validator = output(Command::new(kubernetes_validate()).arg("--version"));
    step(
        &format!("kubernetes-validate {KUBERNETES_VALIDATE_VERSION} (python venv in target/)"),
        validator.trim() == KUBERNETES_VALIDATE_VERSION,
        || {
            // Debian's python3, which python3-venv above equips with ensurepip.
            checked(
                Command::new("/usr/bin/python3")
                    .args(["-m", "venv"])
                    .arg(python_venv()),
            )?;
            checked(
                Command::new(python_venv().join("bin/pip"))
                    .args(["install", "--quiet"])
                    .arg(format!(
                        "kubernetes-validate=={KUBERNETES_VALIDATE_VERSION}"
                    )),
            )
        },
    )?;

    // The namespace suites need these at run time; a failure here is clearer
    // than one in the middle of a test.
    for tool in [
        "ip",
        "ethtool",
        "curl",
        "ping",
        "mount",
        "iptables-restore",
        "nft",
    ] {
        if !succeeds(Command::new("sh").args(["-c", &format!("command -v {tool}")])) {
            bail!("setup: {tool} is still missing after installing packages");
        }
    }
    eprintln!("setup: done");
    Ok(())
}
