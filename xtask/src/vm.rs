//! `cargo xtask vm-test`: the privileged suites inside QEMU on Debian's
//! cloud kernels (docs/ARCHITECTURE.md, "Tests"), for a kernel matrix and without loading
//! programs on the host. Each kernel boots an initramfs holding a static
//! busybox, the suites' test binaries with the libraries they link and the
//! modules they need; its `/init` (vm/init.sh) runs the suites, prints one
//! result line and powers off. Kernel packages are cached under target/vm/.
//! With `--bench` the VMs run the full-sync benchmark instead (vm/bench.rs).

mod bench;

use std::{
    fs,
    io::{BufRead, BufReader, Read},
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};

use crate::{cargo, run, run_in, setup, workspace_root};

/// The emulator, a busybox that needs no libraries, cpio for the archive,
/// and the CA bundle (`CA_BUNDLE`).
const HOST_PACKAGES: &[&str] = &[
    "qemu-system-x86",
    "busybox-static",
    "cpio",
    "ca-certificates",
];
/// The system's CA bundle, which the Kubernetes client loads when a
/// kubeconfig names no CA of its own (the API server stand-in's).
const CA_BUNDLE: &str = "etc/ssl/certs/ca-certificates.crt";
/// The suites the VM runs (tests/tests/<name>.rs), every test of each.
const SUITES: &[&str] = &[
    "kernel_probe",
    "packet_tests",
    "clusterip_netns",
    "service_rules_netns",
    "socket_lb_netns",
    "admin_netns",
    "nodeport_netns",
    "kubernetes_netns",
    "two_node_topology",
    "nic_packet_tests",
    "ipv6_packet_tests",
    "ipv6_nic_packet_tests",
    "sctp_packet_tests",
    "sctp_netns",
    "trace_agreement",
    "monitor_netns",
    "ipv6_maps",
    "ipv6_netns",
    "ipv6_nodeport_netns",
    "packet_fuzz",
    "control_plane_faults",
    "sync_interrupted",
];
// Not `full_maps`: it must offer more frontends than the map holds (66,000)
// and scrape `/metrics` over all of them, which emulation cannot finish
// within the agent's 10 s scrape deadline; what it checks is the plan's
// and the sync's, on no kernel feature the two suites above leave out.
/// Host programs the suites run, copied in with their libraries (busybox's
/// `ip` makes no veth pairs, its `tc` shows no filters, its ping and
/// curl-less wget would not do).
const HOST_TOOLS: &[&str] = &["ip", "tc", "ethtool", "curl", "ping"];
/// Programs of this workspace the suites start, and the variable that
/// tells the suites where (the test build also makes the bench and demo
/// binaries, which the VM does not need).
const PROGRAMS: &[(&str, &str)] = &[("kxdp", "KXDP_BIN"), ("kxdp-peer", "KXDP_PEER_BIN")];
/// Modules to load when the kernel's config builds them as modules (Debian's
/// cloud kernels do), in the order they load (a module after those it
/// depends on): veth for namespace suites, the bridge for the two-node
/// topology, clsact and cls_bpf for the classic tc attach below 6.6, SCTP
/// (with the CRC32c and UDP tunnel modules it needs) for real SCTP
/// associations.
const MODULES: &[(&str, &str)] = &[
    ("CONFIG_VETH", "kernel/drivers/net/veth.ko"),
    ("CONFIG_LLC", "kernel/net/llc/llc.ko"),
    ("CONFIG_STP", "kernel/net/802/stp.ko"),
    ("CONFIG_BRIDGE", "kernel/net/bridge/bridge.ko"),
    ("CONFIG_NET_SCH_INGRESS", "kernel/net/sched/sch_ingress.ko"),
    ("CONFIG_NET_CLS_BPF", "kernel/net/sched/cls_bpf.ko"),
    ("CONFIG_CRYPTO_CRC32C", "kernel/crypto/crc32c_generic.ko"),
    ("CONFIG_LIBCRC32C", "kernel/lib/libcrc32c.ko"),
    ("CONFIG_NET_UDP_TUNNEL", "kernel/net/ipv4/udp_tunnel.ko"),
    ("CONFIG_NET_UDP_TUNNEL", "kernel/net/ipv6/ip6_udp_tunnel.ko"),
    ("CONFIG_IP_SCTP", "kernel/net/sctp/sctp.ko"),
];
/// Suites whose tests the host cannot run are ignored there (with the
/// reason) and run here: the arguments they are run with in the VMs.
const SUITE_ARGS: &[(&str, &str)] = &[("sctp_netns", "--include-ignored")];
/// `kernel_versions` when `--kernel` is not given.
pub const DEFAULT_KERNELS: &[&str] = &["5.10", "6.1", "6.12"];
/// How long the KVM probe may take to reach init.
const PROBE_SECS: u64 = 20;
const INIT: &str = include_str!("vm/init.sh");
const BOOTED: &str = "kxdp-vm: booted";
const RESULT: &str = "kxdp-vm: exit status ";

fn vm_dir() -> PathBuf {
    workspace_root().join("target/vm")
}

/// A kernel to boot and, when it comes from a package, the package's tree.
struct Kernel {
    label: String,
    image: PathBuf,
    /// The unpacked package (boot/, lib/modules/<release>/).
    tree: Option<(PathBuf, String)>,
    /// The kernel line of the matrix it is, if any.
    line: Option<KernelLine>,
}

impl Kernel {
    /// Suites this kernel cannot run, and why.
    fn not_run(&self) -> &'static [(&'static str, &'static str)] {
        self.line.as_ref().map_or(&[], |line| line.not_run)
    }
}

/// Where apt finds a kernel line: the host's own sources, or a Debian
/// suite it is not configured for, reached through a private apt
/// configuration under target/vm/apt/ (the host's sources stay untouched).
#[derive(Clone, Copy)]
enum AptSource {
    Host,
    Suite(&'static str),
}

/// A kernel line of the matrix: Debian's package name pattern (apt-cache
/// regex), where apt finds it, and the features kxdp's probe must find
/// missing there (`features::Feature::name`, in probe order), which the
/// `kernel_probe` suite checks.
struct KernelLine {
    pattern: &'static str,
    source: AptSource,
    missing: &'static str,
    /// Suites this kernel line cannot run, and why.
    not_run: &'static [(&'static str, &'static str)],
}

fn kernel_line(version: &str) -> Option<KernelLine> {
    match version {
        // Debian 11's kernel line, as Amazon Linux 2 and Debian 11 run it.
        "5.10" => Some(KernelLine {
            pattern: r"^linux-image-5\.10\.0-[0-9]+-cloud-amd64$",
            source: AptSource::Suite("bullseye"),
            missing: "bpf_ktime_get_coarse_ns,bpf_set_retval in sock_addr,SO_NETNS_COOKIE,tcx",
            not_run: &[],
        }),
        "6.1" => Some(KernelLine {
            pattern: r"^linux-image-6\.1\.0-[0-9]+-cloud-amd64$",
            source: AptSource::Host,
            missing: "tcx",
            not_run: &[],
        }),
        "6.12" => Some(KernelLine {
            pattern: r"^linux-image-6\.12\.[0-9]+\+deb[0-9]+-cloud-amd64$",
            source: AptSource::Host,
            missing: "",
            not_run: &[],
        }),
        _ => None,
    }
}

/// The options that point apt at `source`: none for the host's sources;
/// for a suite, its own sources list, package lists and cache under
/// target/vm/apt/<suite>/, refreshed once per run.
fn apt_options(source: AptSource) -> anyhow::Result<Vec<String>> {
    let AptSource::Suite(suite) = source else {
        return Ok(Vec::new());
    };
    let dir = vm_dir().join("apt").join(suite);
    for sub in ["lists/partial", "cache/archives/partial"] {
        fs::create_dir_all(dir.join(sub))?;
    }
    let keyring = "/usr/share/keyrings/debian-archive-keyring.gpg";
    let sources = dir.join("sources.list");
    fs::write(
        &sources,
        format!(
            "deb [signed-by={keyring}] http://deb.debian.org/debian {suite} main\n\
             deb [signed-by={keyring}] http://deb.debian.org/debian-security {suite}-security main\n"
        ),
    )?;
    let options: Vec<String> = [
        format!("Dir::Etc::SourceList={}", sources.display()),
        "Dir::Etc::SourceParts=/nonexistent".to_string(),
        format!("Dir::State::Lists={}", dir.join("lists").display()),
        format!("Dir::Cache={}", dir.join("cache").display()),
        "Dir::State::Status=/dev/null".to_string(),
        // Fetching as root into directories the _apt user cannot write.
        "APT::Sandbox::User=root".to_string(),
    ]
    .into_iter()
    .flat_map(|o| ["-o".to_string(), o])
    .collect();
    run(Command::new("apt-get")
        .args(&options)
        .args(["-q", "update"]))?;
    Ok(options)
}

/// The numbers in a package name, to order `6.1.0-9` before `6.1.0-57`.
fn version_key(name: &str) -> Vec<u64> {
    name.split(|c: char| !c.is_ascii_digit())
        .filter_map(|n| n.parse().ok())
        .collect()
}

/// The newest kernel package matching `pattern` that apt (with `options`)
/// knows.
fn newest_package(pattern: &str, options: &[String]) -> anyhow::Result<String> {
    let out = Command::new("apt-cache")
        .args(options)
        .args(["search", "--names-only", pattern])
        .output()
        .context("apt-cache search")?;
    String::from_utf8(out.stdout)?
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .max_by_key(|name| version_key(name))
        .map(str::to_string)
        .with_context(|| {
            format!("no package matches {pattern} (run `apt-get update`, or pass --kernel PATH)")
        })
}

/// Downloads (with apt `options`) and unpacks `package` once; the unpacked
/// tree.
fn fetch_package(package: &str, options: &[String]) -> anyhow::Result<PathBuf> {
    let tree = vm_dir().join("kernels").join(package);
    if tree.join("boot").is_dir() {
        return Ok(tree);
    }
    let debs = vm_dir().join("debs");
    fs::create_dir_all(&debs)?;
    // Downloading as root into a directory the _apt user cannot write.
    run_in(
        &debs,
        Command::new("apt-get")
            .args(options)
            .args(["-o", "APT::Sandbox::User=root", "download"])
            .arg(package),
    )?;
    let prefix = format!("{package}_");
    let deb = fs::read_dir(&debs)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            p.file_name()
                .and_then(|f| f.to_str())
                .is_some_and(|f| f.starts_with(&prefix) && f.ends_with(".deb"))
        })
        .with_context(|| format!("apt-get download {package} left no .deb"))?;
    unpack_deb(&deb, &tree)?;
    Ok(tree)
}

/// `dpkg-deb -x` into `tree`, through a temporary directory so that an
/// interrupted run leaves no half tree behind.
fn unpack_deb(deb: &Path, tree: &Path) -> anyhow::Result<()> {
    let mut partial = tree.as_os_str().to_owned();
    partial.push(".partial");
    let partial = PathBuf::from(partial);
    let _ = fs::remove_dir_all(&partial);
    fs::create_dir_all(&partial)?;
    run(Command::new("dpkg-deb").arg("-x").arg(deb).arg(&partial))?;
    fs::rename(&partial, tree).with_context(|| format!("renaming to {}", tree.display()))
}

/// A kernel from a package tree: its `boot/vmlinuz-<release>`.
fn kernel_in_tree(label: String, tree: PathBuf) -> anyhow::Result<Kernel> {
    let release = fs::read_dir(tree.join("boot"))?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .find_map(|f| f.strip_prefix("vmlinuz-").map(str::to_string))
        .with_context(|| format!("no boot/vmlinuz-* in {}", tree.display()))?;
    Ok(Kernel {
        label,
        image: tree.join("boot").join(format!("vmlinuz-{release}")),
        tree: Some((tree, release)),
        line: None,
    })
}

/// `5.10`, `6.1`, `6.12` (Debian's newest cloud kernel of that line), a
/// linux-image `.deb`, or a kernel image (booted without modules).
fn resolve_kernel(arg: &str) -> anyhow::Result<Kernel> {
    if let Some(line) = kernel_line(arg) {
        let options = apt_options(line.source)?;
        let package = newest_package(line.pattern, &options)?;
        let mut kernel = kernel_in_tree(
            format!("{arg} ({package})"),
            fetch_package(&package, &options)?,
        )?;
        kernel.line = Some(line);
        return Ok(kernel);
    }
    let path = PathBuf::from(arg);
    if !path.is_file() {
        bail!("--kernel {arg}: neither 5.10, 6.1, 6.12 nor a file");
    }
    if path.extension().is_some_and(|e| e == "deb") {
        let stem = path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("kernel");
        let tree = vm_dir().join("kernels").join(stem);
        if !tree.join("boot").is_dir() {
            unpack_deb(&path, &tree)?;
        }
        return kernel_in_tree(arg.to_string(), tree);
    }
    Ok(Kernel {
        label: arg.to_string(),
        image: path,
        tree: None,
        line: None,
    })
}

/// Runs a cargo build with JSON messages; (target name, executable) of
/// each executable it built.
fn cargo_executables(args: &[&str]) -> anyhow::Result<Vec<(String, PathBuf)>> {
    let mut build = cargo();
    build
        .args(args)
        .arg("--message-format=json-render-diagnostics");
    eprintln!("xtask: running {build:?}");
    let out = build
        .current_dir(workspace_root())
        .stderr(Stdio::inherit())
        .output()?;
    if !out.status.success() {
        bail!("{build:?} failed: {}", out.status);
    }
    let mut built = Vec::new();
    for line in String::from_utf8(out.stdout)?.lines() {
        let message: serde_json::Value = serde_json::from_str(line)?;
        let name = message["target"]["name"].as_str();
        if let (Some(name), Some(exe)) = (name, message["executable"].as_str()) {
            built.push((name.to_string(), PathBuf::from(exe)));
        }
    }
    Ok(built)
}

/// Suites the CI's share of the matrix leaves to `cargo xtask vm-test`:
/// Service rules (affinity, draining, restarts) that depend on no kernel
/// feature the other suites do not already exercise in the VM, and the
/// longest suite under emulation (six minutes of the 5.10 run); and the
/// API server outage (a minute and a half of changes whose pace emulation
/// barely keeps; the host runs it at full scale).
pub const LEFT_TO_THE_FULL_MATRIX: &[&str] = &["service_rules_netns", "control_plane_faults"];

/// Every suite but those `chosen` (all of them when none is), for
/// `--suite`; an unknown name is an error.
pub fn left_out_but(chosen: &[String]) -> anyhow::Result<Vec<&'static str>> {
    if let Some(unknown) = chosen.iter().find(|c| !SUITES.contains(&c.as_str())) {
        anyhow::bail!("no suite {unknown:?}; the suites: {}", SUITES.join(", "));
    }
    Ok(SUITES
        .iter()
        .copied()
        .filter(|s| !chosen.is_empty() && !chosen.iter().any(|c| c == s))
        .collect())
}

/// What the VMs run.
pub enum Mode {
    /// The privileged suites (`SUITES`) but those `left_out`.
    Suites { left_out: Vec<&'static str> },
    /// The full-sync benchmark, compared across the kernels (vm/bench.rs).
    Bench,
}

/// What one VM runs: programs copied in (stripped, with the libraries they
/// link) as (path on the host, path in the VM), and the lines of
/// `/run.sh`, which init sources.
struct Payload {
    programs: Vec<(PathBuf, PathBuf)>,
    script: String,
}

/// The suites' test binaries by suite, and the programs they start by the
/// variable that names them (`PROGRAMS`).
struct Built {
    suites: Vec<(&'static str, PathBuf)>,
    programs: Vec<(&'static str, PathBuf)>,
}

fn build() -> anyhow::Result<Built> {
    let mut args = vec!["test", "--no-run", "-p", "kxdp-testbed"];
    for suite in SUITES {
        args.extend(["--test", suite]);
    }
    let mut built = cargo_executables(&args)?;
    built.extend(cargo_executables(&[
        "build",
        "-p",
        "proxy-userspace",
        "--bin",
        "kxdp",
    ])?);
    let mut suites = Vec::new();
    let mut programs = Vec::new();
    for (name, path) in built {
        if let Some(suite) = SUITES.iter().find(|s| **s == name) {
            suites.push((*suite, path));
        } else if let Some((_, variable)) = PROGRAMS.iter().find(|(p, _)| *p == name) {
            programs.push((*variable, path));
        }
    }
    if suites.len() != SUITES.len() || programs.len() != PROGRAMS.len() {
        bail!("cargo built {suites:?} and {programs:?}, not every suite and program the VM runs");
    }
    Ok(Built { suites, programs })
}

/// The suites `kernel` can run, with their programs where the host has them.
fn suites_payload(kernel: &Kernel, built: &Built, left_out: &[&str]) -> Payload {
    let mut programs = Vec::new();
    let mut script = String::new();
    if let Some(KernelLine { missing, .. }) = &kernel.line {
        script.push_str(&format!("export KXDP_EXPECT_MISSING='{missing}'\n"));
    }
    // Where the host has them: suites find them by compiled-in paths, and
    // by these variables.
    for (variable, program) in &built.programs {
        script.push_str(&format!("export {variable}={}\n", program.display()));
        programs.push((program.clone(), program.clone()));
    }
    for (suite, exe) in &built.suites {
        if let Some((_, why)) = kernel.not_run().iter().find(|(s, _)| s == suite) {
            script.push_str(&format!("echo 'kxdp-vm: not running {suite}: {why}'\n"));
            continue;
        }
        if left_out.contains(suite) {
            script.push_str(&format!(
                "echo 'kxdp-vm: not running {suite}: left to cargo xtask vm-test'\n"
            ));
            continue;
        }
        programs.push((exe.clone(), Path::new("/suites").join(suite)));
        let args = SUITE_ARGS
            .iter()
            .find(|(s, _)| s == suite)
            .map_or("", |(_, args)| args);
        script.push_str(&format!("run_suite {suite} {args}\n"));
    }
    Payload { programs, script }
}

/// The absolute paths of the shared libraries (and loader) `binary` needs.
fn libraries(binary: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let out = Command::new("ldd").arg(binary).output()?;
    if !out.status.success() {
        bail!("ldd {} failed", binary.display());
    }
    Ok(String::from_utf8(out.stdout)?
        .split_whitespace()
        .filter(|word| word.starts_with('/'))
        .map(PathBuf::from)
        .collect())
}

/// `tool`'s path on this host.
fn host_tool(tool: &str) -> anyhow::Result<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    let found = path
        .split(':')
        .chain(["/usr/sbin", "/sbin"])
        .map(|dir| Path::new(dir).join(tool))
        .find(|p| p.is_file());
    found.with_context(|| format!("{tool} is not installed (cargo xtask setup installs it)"))
}

/// Copies `from` to `to` (following links), creating `to`'s directory.
fn install(from: &Path, to: &Path, mode: u32) -> anyhow::Result<()> {
    fs::create_dir_all(to.parent().expect("a path inside the root"))?;
    fs::copy(from, to).with_context(|| format!("copying {}", from.display()))?;
    fs::set_permissions(to, fs::Permissions::from_mode(mode))?;
    Ok(())
}

/// The modules `MODULES` names that `kernel`'s config builds as modules,
/// decompressed (busybox insmod reads plain .ko files), numbered in
/// `MODULES`' order, which init loads them in.
fn install_modules(kernel: &Kernel, root: &Path) -> anyhow::Result<()> {
    let Some((tree, release)) = &kernel.tree else {
        return Ok(());
    };
    let config = fs::read_to_string(tree.join(format!("boot/config-{release}")))
        .context("reading the kernel's config")?;
    let modules = tree.join("lib/modules").join(release);
    for (n, (option, module)) in MODULES.iter().enumerate() {
        if !config.lines().any(|l| l == format!("{option}=m")) {
            continue;
        }
        let name = Path::new(module).file_name().expect("a file name");
        let to = root
            .join("lib/modules")
            .join(format!("{n:02}-{}", name.to_string_lossy()));
        fs::create_dir_all(to.parent().expect("lib/modules"))?;
        let plain = modules.join(module);
        let xz = plain.with_extension("ko.xz");
        if plain.is_file() {
            fs::copy(&plain, &to)?;
        } else if xz.is_file() {
            run(Command::new("xz")
                .arg("-dc")
                .arg(&xz)
                .stdout(fs::File::create(&to)?))?;
        } else {
            bail!("{option}=m but no {module}(.xz) in {}", modules.display());
        }
    }
    Ok(())
}

/// Every path under `dir`, relative, parents first (what cpio wants).
fn walk(dir: &Path, base: &Path, paths: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    let mut entries: Vec<_> = fs::read_dir(dir)?.collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let path = entry.path();
        paths.push(path.strip_prefix(base)?.to_path_buf());
        if entry.file_type()?.is_dir() {
            walk(&path, base, paths)?;
        }
    }
    Ok(())
}

/// Copies `binary` to `to` without its debug info: the archive is a
/// fraction of the size; symbols stay for backtraces.
fn strip(binary: &Path, to: &Path) -> anyhow::Result<()> {
    fs::create_dir_all(to.parent().expect("a path inside the root"))?;
    run(Command::new("strip")
        .arg("--strip-debug")
        .arg("-o")
        .arg(to)
        .arg(binary))
}

/// Builds `target/vm/<name>.cpio` for `kernel`, running `payload`; its path.
fn initramfs(name: &str, kernel: &Kernel, payload: &Payload) -> anyhow::Result<PathBuf> {
    let root = vm_dir().join("root").join(name);
    let _ = fs::remove_dir_all(&root);
    for dir in [
        "bin", "sbin", "usr/bin", "usr/sbin", "proc", "sys", "dev", "tmp", "root", "run", "var",
    ] {
        fs::create_dir_all(root.join(dir))?;
    }
    // `ip netns` keeps its namespaces under /run/netns or /var/run/netns.
    std::os::unix::fs::symlink("../run", root.join("var/run"))?;
    install(Path::new("/bin/busybox"), &root.join("bin/busybox"), 0o755)?;
    fs::write(root.join("init"), INIT)?;
    fs::set_permissions(root.join("init"), fs::Permissions::from_mode(0o755))?;
    let mut binaries = Vec::new();
    for (from, to) in &payload.programs {
        strip(from, &root.join(to.strip_prefix("/")?))?;
        binaries.push(from.clone());
    }
    fs::write(root.join("run.sh"), &payload.script)?;
    install(
        &Path::new("/").join(CA_BUNDLE),
        &root.join(CA_BUNDLE),
        0o644,
    )?;
    for tool in HOST_TOOLS {
        let path = host_tool(tool)?;
        install(&path, &root.join("usr/local/sbin").join(tool), 0o755)?;
        binaries.push(path);
    }
    for binary in &binaries {
        for library in libraries(binary)? {
            let to = root.join(library.strip_prefix("/")?);
            if !to.exists() {
                install(&library, &to, 0o755)?;
            }
        }
    }
    install_modules(kernel, &root)?;
    let mut paths = Vec::new();
    walk(&root, &root, &mut paths)?;
    let list: Vec<u8> = paths
        .iter()
        .flat_map(|p| [p.as_os_str().as_encoded_bytes(), b"\n"].concat())
        .collect();
    let archive = vm_dir().join(format!("{name}.cpio"));
    let mut cpio = Command::new("cpio")
        .args(["--create", "--format=newc", "--owner=0:0", "--quiet"])
        .current_dir(&root)
        .stdin(Stdio::piped())
        .stdout(fs::File::create(&archive)?)
        .spawn()
        .context("spawning cpio")?;
    std::io::Write::write_all(&mut cpio.stdin.take().expect("piped"), &list)?;
    if !cpio.wait()?.success() {
        bail!("cpio failed for {}", root.display());
    }
    Ok(archive)
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Accel {
    Kvm,
    Tcg,
}

/// What one boot printed and how long it took.
struct Boot {
    accel: Accel,
    /// The console, line by line.
    lines: Vec<String>,
    /// Until init's first line.
    booted: Option<Duration>,
    total: Duration,
    /// Until init's result line.
    finished: Option<Duration>,
    /// The suites' status from init's result line.
    status: Option<i32>,
    kvm_failed: bool,
    timed_out: bool,
}

/// Forwards `pipe`'s lines to `lines`.
fn forward(pipe: impl Read + Send + 'static, lines: mpsc::Sender<String>) {
    thread::spawn(move || {
        for line in BufReader::new(pipe).lines() {
            let Ok(line) = line else { break };
            if lines.send(line).is_err() {
                break;
            }
        }
    });
}

fn kill(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// Boots `kernel` with `initrd`, echoing the console when `echo`, and stops
/// it after `timeout`.
fn boot(
    kernel: &Kernel,
    initrd: &Path,
    accel: Accel,
    extra_append: &str,
    timeout: Duration,
    echo: bool,
) -> anyhow::Result<Boot> {
    let mut qemu = Command::new("qemu-system-x86_64");
    match accel {
        Accel::Kvm => qemu.args(["-accel", "kvm", "-cpu", "host"]),
        // `max` emulates every feature TCG knows, as a recent host would have.
        Accel::Tcg => qemu.args(["-accel", "tcg", "-cpu", "max"]),
    };
    qemu.args(["-m", "2G", "-smp", "2", "-no-reboot"])
        // No NIC, no VGA, no option ROMs: a serial console only.
        .args(["-nodefaults", "-display", "none", "-serial", "stdio"])
        .arg("-kernel")
        .arg(&kernel.image)
        .arg("-initrd")
        .arg(initrd)
        .arg("-append")
        // panic=-1 with -no-reboot: a kernel panic ends QEMU at once.
        .arg(format!("console=ttyS0 panic=-1 quiet {extra_append}"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if echo {
        eprintln!("xtask: running {qemu:?}");
    }
    let start = Instant::now();
    let mut child = qemu.spawn().context("spawning qemu-system-x86_64")?;
    let (send, lines) = mpsc::channel();
    forward(child.stdout.take().expect("piped"), send.clone());
    forward(child.stderr.take().expect("piped"), send);
    let mut boot = Boot {
        accel,
        lines: Vec::new(),
        booted: None,
        total: Duration::ZERO,
        finished: None,
        status: None,
        kvm_failed: false,
        timed_out: false,
    };
    loop {
        let left = timeout.saturating_sub(start.elapsed());
        match lines.recv_timeout(left) {
            Ok(line) => {
                let line = line.trim_end_matches('\r');
                if echo {
                    println!("{line}");
                }
                if line.starts_with(BOOTED) {
                    boot.booted.get_or_insert(start.elapsed());
                }
                if let Some(status) = line.strip_prefix(RESULT) {
                    boot.status = status.trim().parse().ok();
                    boot.finished = Some(start.elapsed());
                }
                // KVM that cannot run this guest stops the VM and waits.
                if line.contains("KVM internal error") {
                    boot.kvm_failed = true;
                    kill(&mut child);
                    break;
                }
                boot.lines.push(line.to_string());
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                boot.timed_out = true;
                kill(&mut child);
                break;
            }
            // Both pipes closed: QEMU is gone.
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                child.wait()?;
                break;
            }
        }
    }
    boot.total = start.elapsed();
    Ok(boot)
}

/// KVM when /dev/kvm is usable and a probe boot gets as far as init; TCG
/// otherwise (nested hosts may offer a /dev/kvm that cannot run the guest).
fn accelerator(kernel: &Kernel, initrd: &Path) -> anyhow::Result<Accel> {
    let open = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm");
    if let Err(e) = open {
        eprintln!("xtask: /dev/kvm: {e}; emulating (TCG)");
        return Ok(Accel::Tcg);
    }
    let probe = boot(
        kernel,
        initrd,
        Accel::Kvm,
        "kxdp.probe",
        // KVM boots to init in a second or two.
        Duration::from_secs(PROBE_SECS),
        false,
    )?;
    if probe.booted.is_some() {
        eprintln!("xtask: KVM works");
        Ok(Accel::Kvm)
    } else {
        eprintln!(
            "xtask: /dev/kvm is there but cannot boot the guest ({}); emulating (TCG)",
            if probe.kvm_failed {
                "KVM internal error"
            } else {
                "no init within the probe's time"
            }
        );
        Ok(Accel::Tcg)
    }
}

fn seconds(d: Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}

/// How one boot ended, in words.
fn verdict(boot: &Boot, timeout: Duration) -> String {
    match (boot.status, boot.timed_out) {
        (Some(0), _) => "passed".to_string(),
        (Some(_), _) => "FAILED".to_string(),
        (None, true) => format!("TIMED OUT after {}", seconds(timeout)),
        (None, false) => "FAILED (no result line: kernel panic or init died?)".to_string(),
    }
}

/// `cargo xtask vm-test`: boots each kernel in turn with what `mode` runs,
/// and fails if it failed in any of them.
pub fn vm_test(kernel_args: &[String], timeout: Duration, mode: Mode) -> anyhow::Result<()> {
    setup::apt_packages(HOST_PACKAGES, false)?;
    let kernels = kernel_args
        .iter()
        .map(|k| resolve_kernel(k))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let payload: Box<dyn Fn(&Kernel) -> Payload> = match &mode {
        Mode::Suites { left_out } => {
            let built = build()?;
            let left_out = left_out.clone();
            Box::new(move |kernel: &Kernel| suites_payload(kernel, &built, &left_out))
        }
        Mode::Bench => {
            let bench = bench::build()?;
            Box::new(move |_: &Kernel| bench::payload(&bench))
        }
    };
    let mut accel = None;
    let mut boots = Vec::new();
    for (n, kernel) in kernels.iter().enumerate() {
        let initrd = initramfs(&format!("kernel-{n}"), kernel, &payload(kernel))?;
        let accel = match accel {
            Some(accel) => accel,
            None => *accel.insert(accelerator(kernel, &initrd)?),
        };
        eprintln!("xtask: booting {} ({accel:?})", kernel.label);
        boots.push(boot(kernel, &initrd, accel, "", timeout, true)?);
    }
    match mode {
        Mode::Suites { left_out } => suites_summary(&kernels, &boots, timeout, &left_out),
        Mode::Bench => bench::summary(&kernels, &boots, timeout),
    }
}

/// Prints each kernel's verdict and times; fails if a suite failed.
fn suites_summary(
    kernels: &[Kernel],
    boots: &[Boot],
    timeout: Duration,
    left_out: &[&str],
) -> anyhow::Result<()> {
    let mut summary = Vec::new();
    for (kernel, boot) in kernels.iter().zip(boots) {
        let verdict = verdict(boot, timeout);
        let booted = boot.booted.unwrap_or(boot.total);
        let finished = boot.finished.unwrap_or(boot.total);
        let not_run: Vec<&str> = kernel
            .not_run()
            .iter()
            .map(|(suite, _)| *suite)
            .chain(left_out.iter().copied())
            .collect();
        let not_run = if not_run.is_empty() {
            String::new()
        } else {
            format!("; not run here: {}", not_run.join(", "))
        };
        summary.push((
            boot.status == Some(0),
            format!(
                "{}: {verdict}; boot {}, suites {}, total {} ({:?}){not_run}",
                kernel.label,
                seconds(booted),
                seconds(finished.saturating_sub(booted)),
                seconds(boot.total),
                boot.accel,
            ),
        ));
    }
    eprintln!("xtask: vm-test results:");
    for (_, line) in &summary {
        eprintln!("xtask:   {line}");
    }
    if summary.iter().any(|(passed, _)| !passed) {
        bail!("vm-test: a suite failed in the VM");
    }
    Ok(())
}
