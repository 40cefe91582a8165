//! The printed table and the Markdown report.

use super::*;

pub(crate) struct Machine {
    pub(crate) kernel: String,
    pub(crate) nproc: String,
    pub(crate) cpu: String,
    /// JIT and BPF statistics switches: both change per-program cost.
    pub(crate) bpf: String,
    /// Spectre v2 mitigation: retpolines make every indirect call dearer.
    pub(crate) mitigation: String,
    pub(crate) date: String,
    pub(crate) commit: String,
}

/// A command's trimmed stdout, or "unknown".
pub(crate) fn output_of(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into())
}

pub(crate) fn read_trimmed(path: &str) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

/// The CPU model, with "(virtual machine)" when the CPU says so.
pub(crate) fn cpu_model() -> String {
    let info = read_trimmed("/proc/cpuinfo");
    let field = |name: &str| {
        info.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
    };
    let model = field("model name").unwrap_or_else(|| "unknown".into());
    let virtualized = field("flags").is_some_and(|f| f.split(' ').any(|f| f == "hypervisor"));
    if virtualized {
        format!("{model} (virtual machine)")
    } else {
        model
    }
}

pub(crate) fn machine() -> Machine {
    let root = workspace_root().to_string_lossy();
    let mut commit = output_of("git", &["-C", &root, "rev-parse", "--short", "HEAD"]);
    let dirty = Command::new("git")
        .args(["-C", &root, "status", "--porcelain"])
        .output()
        .is_ok_and(|o| o.status.success() && !o.stdout.is_empty());
    if dirty {
        commit.push_str(" + uncommitted changes");
    }
    Machine {
        kernel: output_of("uname", &["-r"]),
        nproc: output_of("nproc", &[]),
        cpu: cpu_model(),
        bpf: format!(
            "net.core.bpf_jit_enable={}, kernel.bpf_stats_enabled={}",
            read_trimmed("/proc/sys/net/core/bpf_jit_enable"),
            read_trimmed("/proc/sys/kernel/bpf_stats_enabled"),
        ),
        mitigation: read_trimmed("/sys/devices/system/cpu/vulnerabilities/spectre_v2"),
        date: output_of("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
        commit,
    }
}

/// The median of the floor row `row` is compared with: the empty program
/// of the same hook, timed the same way.
fn floor_median(rows: &[PacketRow], row: &PacketRow) -> Option<f64> {
    rows.iter()
        .find(|r| r.label == row.floor)
        .map(|r| r.kernel_ns.median)
}

pub(crate) fn packet_table(rows: &[PacketRow]) -> String {
    let mut t = String::from(
        "| path | program | repeat | ns/packet (median) | min | max | × floor (same hook) | above floor (ns) | wall ns/packet (median) |\n\
         |---|---|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for r in rows {
        let k = r.kernel_ns;
        let floor = floor_median(rows, r).expect("every floor is measured");
        t.push_str(&format!(
            "| {} | `{}` | {} | {:.0} | {:.0} | {:.0} | {:.2} | {:.0} | {:.1} |\n",
            r.label,
            r.program,
            r.repeat,
            k.median,
            k.min,
            k.max,
            k.median / floor,
            k.median - floor,
            r.wall_ns.median,
        ));
    }
    t
}

pub(crate) fn conn_table(report: &ConnReport) -> String {
    scale_table(&report.rows)
}

/// Rows of short-connection rates, one per proxy at each Service count.
fn scale_table(rows: &[ScaleRow]) -> String {
    let mut t = String::from(
        "| other Services | path | conn/s median | min | max | × no proxy | p50 µs (median) | p99 µs (median) | connections | errors |\n\
         |---:|---|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for row in rows {
        for (proxy, r) in &row.modes {
            let ratio = row
                .rate_ratio(*proxy)
                .map_or_else(|| "–".to_string(), |x| format!("{x:.3}"));
            t.push_str(&format!(
                "| {} | {} | {:.0} | {:.0} | {:.0} | {ratio} | {:.0} | {:.0} | {} | {} |\n",
                row.others,
                proxy.label(),
                r.rate.median,
                r.rate.min,
                r.rate.max,
                r.p50_us.median,
                r.p99_us.median,
                r.conns,
                r.errors,
            ));
        }
    }
    t
}

pub(crate) fn offloads_label(on: bool) -> &'static str {
    if on {
        "on"
    } else {
        "off"
    }
}

pub(crate) fn stream_table(report: &ConnReport) -> String {
    let mut t = String::from(
        "| veth offloads | installed | Gbit/s through the Service, median | min | max | × no proxy | Gbit/s to the pod IP meanwhile, median | min | max | kxdp's programs' run time, % of a stream (through the Service / to the pod IP), with statistics on |\n\
         |---|---|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for row in &report.streams {
        let ratio = report
            .stream_ratio(row.proxy, row.offloads)
            .map_or_else(|| "–".to_string(), |x| format!("{x:.3}"));
        let to_pod = row.to_pod.map_or_else(
            || "(the row's own figure is to the pod IP) | | ".to_string(),
            |g| format!("{:.2} | {:.2} | {:.2}", g.median, g.min, g.max),
        );
        let share = row
            .program_share
            .map_or_else(String::new, |(service, pod)| {
                format!(
                    "{:.1}% ({:.0} ns a run) / {:.1}% ({:.0} ns a run)",
                    service.share * 100.0,
                    service.ns_per_run,
                    pod.share * 100.0,
                    pod.ns_per_run
                )
            });
        let g = row.to_service;
        t.push_str(&format!(
            "| {} | {} | {:.2} | {:.2} | {:.2} | {ratio} | {to_pod} | {share} |\n",
            offloads_label(row.offloads),
            row.proxy.label(),
            g.median,
            g.min,
            g.max,
        ));
    }
    t
}

/// Everything one run measured; a part not run is `None`.
pub(crate) struct Results<'a> {
    pub(crate) packets: Option<&'a [PacketRow]>,
    pub(crate) checksums: Option<&'a [ChecksumRow]>,
    pub(crate) conns: Option<&'a ConnReport>,
    pub(crate) control: Option<&'a [ControlRow]>,
    pub(crate) sync: Option<&'a SyncReport>,
    pub(crate) maglev: Option<&'a MaglevReport>,
    pub(crate) pps: Option<&'a [PpsRow]>,
    /// SVG files (relative to the report) with their captions.
    pub(crate) figures: &'a [(String, String)],
}

pub(crate) fn render_report(plan: &Plan, quick: bool, m: &Machine, results: &Results) -> String {
    let mode = if quick {
        "a `--quick` run; without `--quick` it makes the full one"
    } else {
        "a full run"
    };
    let mut report = format!(
        r#"# kxdp benchmark report

Generated by `kxdp-bench` (`cargo xtask bench`), {mode}.
Nothing here is asserted: these are measurements. Compare runs on one machine, not across machines.

| | |
|---|---|
| date | {date} |
| kernel (`uname -r`) | {kernel} |
| CPUs (`nproc`) | {nproc} |
| CPU model | {cpu} |
| BPF | {bpf} |
| Spectre v2 mitigation | {mitigation} |
| commit | {commit} |

"#,
        date = m.date,
        kernel = m.kernel,
        nproc = m.nproc,
        cpu = m.cpu,
        bpf = m.bpf,
        mitigation = m.mitigation,
        commit = m.commit,
    );
    report.push_str(&headline_section(results));
    if let Some(packets) = results.packets {
        report.push_str(&packet_section(plan, packets));
    }
    if let Some(checksums) = results.checksums {
        report.push_str(&checksum_section(checksums));
    }
    if let Some(conns) = results.conns {
        report.push_str(&conn_section(plan, m, conns, results.figures));
    }
    if let Some(control) = results.control {
        report.push_str(&control_section(plan, control, results.figures));
    }
    if let Some(sync) = results.sync {
        report.push_str(&sync_section(plan, sync));
    }
    if let Some(maglev) = results.maglev {
        report.push_str(&maglev_section(plan, maglev));
    }
    if let Some(pps) = results.pps {
        report.push_str(&pps_section(plan, pps));
    }
    report
}

fn pps_section(plan: &Plan, rows: &[PpsRow]) -> String {
    format!(
        r#"
## 5. Packets per second in real traffic

{table}
### Method

- In a private network namespace: a NIC (`nic0`, a veth) whose wire end `peer0` stands for the outside, and a
  pod interface (`pod0`, a veth) whose other end `pod0c` stands for the pod. A sender writes each frame from a
  template to an AF_PACKET socket on `peer0` or `pod0c` that hands it straight to the veth
  (`PACKET_QDISC_BYPASS`, {batch} frames a `sendmmsg`): this kernel has no pktgen, and refuses
  `BPF_PROG_TEST_RUN`'s live frames (`BPF_F_TEST_XDP_LIVE_FRAMES`: EPERM). The hook runs `nic_ingress` in
  driver mode, or `pod_ingress` by tcx, each with its datapath's maps (one NodePort with 24 backends behind the
  other node, SNATed, or on this node; one ClusterIP for pods). Every frame ends on the wire, counted by `sink`
  (XDP on `peer0`): remote NodePort flows by the NIC program's XDP_TX, the others forwarded by the stack to a
  backend routed via the other node.
- **Mpps**: frames that reached the sink over the time from the first send until the last frame reached it (the
  softirqs that carry the frames through run on the sender's CPU as it goes); medians of {rounds} round(s) over every row, {frames} frames a run
  (remote new flows: at most {remote_new}, fewer than the backends' SNAT ports) after {warm} frames of warm-up.
  **Delivered**: the share of sent frames that reached the sink.
- **Empty program / no program**: the same hook running an empty program (`floor_xdp_tx` for paths ending in
  XDP_TX, sending the frontend's frame back out as it is; `floor_xdp` or `floor_tc` for the others), or nothing;
  where the stack goes on with the frame, it is fed frames already translated as kxdp translates them, so the
  stack after the hook does the same work. **× empty**: kxdp's Mpps over the empty program's.
- **Established**: one flow's ACKs (its first frame, in the warm-up, opens it). **New flows**: SYNs from a new
  source port (and after 60,000 ports, address) each, conntrack emptied before each run.
- **Program ns/packet**: the hook program's run time over its run count (`BPF_ENABLE_STATS`), taken around the
  timed run; kxdp's rows also check that the frontend counted every frame the program saw.
"#,
        table = pps_table(rows),
        rounds = plan.pps_rounds,
        frames = plan.pps_frames,
        remote_new = plan.pps_frames.min(REMOTE_NEW_FLOWS),
        warm = WARM_UP,
        batch = SEND_BATCH,
    )
}

/// The real-traffic target: the NodePort established path at ≥ 0.8× the
/// same hook with an empty program.
fn pps_verdicts(rows: &[PpsRow]) -> Vec<Verdict> {
    rows.iter()
        .filter(|r| r.path.starts_with("NodePort established"))
        .filter_map(|r| r.baseline(rows).map(|b| (r, r.mpps / b.mpps)))
        .map(|(r, ratio)| Verdict {
            target: format!("{}: Mpps ≥ 0.8× the empty program", r.path),
            measured: format!("{ratio:.2}× ({:.3} Mpps)", r.mpps),
            met: ratio >= 0.8,
            limit: "see the table",
        })
        .collect()
}

fn maglev_section(plan: &Plan, r: &MaglevReport) -> String {
    format!(
        r#"
## 4. Maglev tables

{table}
### Method

- **built**: `proxy_userspace::maglev::build` for {frontends} frontends of {backends} backends each (distinct
  addresses), M = {size} (the smallest prime of the ladder ≥ 100 × N); best of {runs} run(s).
- **written**: each (prebuilt) table through the agent's `MapStore::put_table` into a freshly loaded datapath
  (private bpffs): a block of `MAGLEV_ARENA` written through `mmap`, then the frontend's `MAGLEV_INDEX` entry
  switched to it; no syscall. **Kernel memory**: the arena and its index as created at load (fixed: 64 MiB +
  0.5 MiB by default, checked against the growth of `SUnreclaim` + `VmallocUsed` across the load); **in use**:
  the blocks handed out. **Layout**: entries × 8 bytes (header, backend ids two per entry, 16-bit slots four per
  entry).
- **rebuilt**: one frontend's table built, written and made live (`put_table`), {rebuilds} times: alternating
  between two backend sets of the same size class (rewritten in place), and between 10 and 11 backends (a new
  block of the other size, switched to; the old one released).
- **moved**: one of N backends removed, M = 16381; the fraction of slots whose backend changed (its own 1/N must
  move; Maglev moves some others too, more when a backend has fewer slots).
"#,
        table = maglev_table(r),
        frontends = r.frontends,
        backends = r.backends_each,
        size = r.table_size,
        runs = plan.maglev_runs,
        rebuilds = plan.maglev_rebuilds,
    )
}

fn maglev_verdicts(r: &MaglevReport) -> Vec<Verdict> {
    let rebuild_p99 = r.rebuilds.iter().map(|x| x.2).fold(0.0, f64::max);
    vec![
        Verdict {
            target: format!(
                "Maglev tables for {} frontends × {} backends built in userspace < 2 s",
                r.frontends, r.backends_each
            ),
            measured: format!("{:.0} ms", r.build_ms),
            met: r.build_ms < 2_000.0,
            limit: "",
        },
        Verdict {
            target: "… and held in < 200 MiB of map memory".into(),
            measured: format!(
                "{:.1} MiB (in use {:.1} MiB, layout {:.1} MiB)",
                r.kernel_mib, r.used_mib, r.layout_mib
            ),
            met: r.kernel_mib < 200.0,
            limit: "",
        },
        Verdict {
            target: "one frontend's table rebuilt < 1 ms".into(),
            measured: format!("{rebuild_p99:.0} µs p99, worst of in place (up to 1000 backends, M = 16381) and swapped to another size"),
            met: rebuild_p99 < 1_000.0,
            limit: "a swap into another size class is an update of an array of maps, after which the kernel waits for an RCU grace period (synchronize_rcu_expedited), milliseconds on this VM; within a size class the table is rewritten in place without it",
        },
    ]
}

/// A figure's Markdown if it was drawn.
fn figure(figures: &[(String, String)], file: &str) -> String {
    figures
        .iter()
        .find(|(f, _)| f == file)
        .map(|(f, caption)| format!("![{caption}]({f})\n\n"))
        .unwrap_or_default()
}

/// One judged target: what was measured against what was asked.
struct Verdict {
    target: String,
    measured: String,
    met: bool,
    /// Why, when it was missed.
    limit: &'static str,
}

fn verdict_table(verdicts: &[Verdict]) -> String {
    let mut t = String::from("| target | measured | met? |\n|---|---|---|\n");
    for v in verdicts {
        let met = if v.met {
            "yes".to_string()
        } else {
            format!("**no**: {}", v.limit)
        };
        t.push_str(&format!("| {} | {} | {met} |\n", v.target, v.measured));
    }
    t
}

/// Katran's XDP balancer (`balancer.bpf.c`, built with its own recipe, one
/// VIP), timed as kxdp's NodePort rows (one repetition per call) in the
/// same window as a 43 ns empty XDP program on this machine kind (issue
/// 19): 126 ns for a packet of a known flow, 398 ns for a new flow with a
/// table of kxdp's size. Katran is not built here, so its figures are kept
/// as multiples of that window's floor.
const KATRAN_SAME_FLOW: f64 = 126.0 / 43.0;
const KATRAN_NEW_FLOW: f64 = 398.0 / 43.0;

fn packet_verdicts(packets: &[PacketRow]) -> Vec<Verdict> {
    let median = |pred: &dyn Fn(&PacketRow) -> bool| {
        packets.iter().find(|r| pred(r)).map(|r| r.kernel_ns.median)
    };
    let Some(floor) = median(&|r| r.program == "floor_tc") else {
        return Vec::new();
    };
    let mut verdicts = Vec::new();
    let xdp_floor = median(&|r| r.label == FLOOR_XDP_SINGLE).unwrap_or(f64::NAN);
    let nodeport_rows = [
        (
            "NodePort established, local backend",
            2.0,
            "2× the empty XDP program",
            "parse + the port filter + the conntrack lookup (conntrack first: no frontend lookup) + the backend's existence check (an array load) + counters (≈ 5 ns) + DNAT with in-place checksums; runs on this machine differ by ± 5 ns",
        ),
        (
            "NodePort established, remote backend",
            KATRAN_SAME_FLOW,
            "Katran's same-flow path",
            "does more than Katran's: SNAT and the reply's state (Katran encapsulates and never sees replies); the next hop comes from the FIB once a second (`HOP_CACHE`), Katran's from a fixed gateway address",
        ),
        (
            "NodePort new flow, local backend",
            KATRAN_NEW_FLOW,
            "Katran's new flow (equal table size)",
            "two LRU conntrack inserts (the forward entry and the reply's, which reverse NAT needs; Katran inserts one and keeps no reply state)",
        ),
        (
            "NodePort new flow, remote backend",
            KATRAN_NEW_FLOW,
            "Katran's new flow (equal table size)",
            "as the local path, plus a SNAT port claimed with a BPF_NOEXIST insert, the FIB lookup (`bpf_fib_lookup`) and the MAC/TTL rewrite",
        ),
    ];
    for (label, bound, what, limit) in nodeport_rows {
        if let Some(ns) = median(&|r| r.program == NIC_INGRESS && r.label.starts_with(label)) {
            let ratio = ns / xdp_floor;
            verdicts.push(Verdict {
                target: format!("{label} ≤ {what} ({bound:.1}× the empty XDP program)"),
                measured: format!("{ns:.0} ns = {ratio:.2}× the empty XDP program ({xdp_floor:.0} ns), one repetition per call both, caches warm"),
                met: ratio <= bound,
                limit,
            });
        }
    }
    if let Some(established) = median(&|r| r.label.starts_with("established")) {
        let ratio = established / floor;
        verdicts.push(Verdict {
            target: "ClusterIP established hit ≤ 3× the empty program".into(),
            measured: format!("{established:.0} ns = {ratio:.2}× the empty tc program ({floor:.0} ns)"),
            met: ratio <= 3.0,
            limit: "parse + service lookup + conntrack lookup + DNAT with two `bpf_l4_csum_replace` helper calls (≈ 35 ns per hash lookup, ≈ 45 ns per skb helper on this VM with retpolines); the tc floor itself is only the harness",
        });
    }
    if let Some(new_flow) =
        median(&|r| r.label.starts_with("new flow") && r.repeat.contains("calls"))
    {
        let ratio = new_flow / floor;
        verdicts.push(Verdict {
            target: "ClusterIP new flow ≤ 10× the empty program".into(),
            measured: format!("{new_flow:.0} ns = {ratio:.1}× ({floor:.0} ns), caches warm"),
            met: ratio <= 10.0,
            limit: "dominated by the two LRU conntrack inserts (`bpf_lru_pop_free`, cold element memory: ≈ 300–400 ns each here); a new flow is once per connection, so the connection-rate figures are the ones users feel",
        });
    }
    if let (Some(monitored), Some(plain)) = (
        median(&|r| r.label == MONITORED_ESTABLISHED),
        median(&|r| r.label.starts_with("established")),
    ) {
        let ratio = monitored / plain;
        verdicts.push(Verdict {
            target: "established with `kxdp monitor` listening ≤ 1.05× without (nothing measurable)".into(),
            measured: format!("{monitored:.0} ns = {ratio:.2}× {plain:.0} ns"),
            met: ratio <= 1.05,
            limit: "the established path never reaches the monitor's code; the rest is run-to-run noise",
        });
    }
    // Each IPv6 pod path against the same path over IPv4, in this run.
    for v6 in packets.iter().filter(|r| r.label.starts_with("IPv6 ")) {
        let v4_label = &v6.label["IPv6 ".len()..];
        if let Some(v4) = median(&|r| r.label == v4_label) {
            let ratio = v6.kernel_ns.median / v4;
            verdicts.push(Verdict {
                target: format!("{} ≤ 1.2× IPv4's", v6.label),
                measured: format!("{:.0} ns = {ratio:.2}× IPv4's {v4:.0} ns", v6.kernel_ns.median),
                met: ratio <= 1.2,
                limit: "IPv6 keys are 40 bytes where IPv4's are 16 (hashed in every lookup and insert), and its header is longer to parse",
            });
        }
    }
    verdicts
}

fn conn_verdicts(conns: &ConnReport) -> Vec<Verdict> {
    let mut verdicts = Vec::new();
    let ratios: Vec<(usize, f64)> = conns
        .rows
        .iter()
        .filter_map(|r| Some((r.others, r.rate_ratio(Proxy::Kxdp)?)))
        .collect();
    if !ratios.is_empty() {
        let ratio = summarize(&ratios.iter().map(|(_, x)| *x).collect::<Vec<_>>());
        let listed: Vec<String> = ratios
            .iter()
            .map(|(n, x)| format!("{x:.3} at N={n}"))
            .collect();
        verdicts.push(Verdict {
            target: "short connections from a pod through kxdp's socket hooks ≥ 0.95× direct to the pod at every N".into(),
            measured: listed.join(", "),
            met: ratio.min >= 0.95,
            limit: "see section 2; one pass of a few seconds per proxy is noisy on this shared 2-CPU machine",
        });
    }
    let stream_limit = "see section 2; a single stream's rate varies by several percent from one run to the next here";
    for offloads in [false, true] {
        if let Some(ratio) = conns.stream_ratio(Proxy::Kxdp, offloads) {
            verdicts.push(Verdict {
                target: format!(
                    "one TCP stream from a pod through a ClusterIP, socket hooks, ≥ 0.97× direct (veth offloads {})",
                    offloads_label(offloads)
                ),
                measured: format!("{ratio:.3}×{}", share_note(conns, Proxy::Kxdp, offloads, |s| &s.0)),
                met: ratio >= 0.97,
                limit: stream_limit,
            });
        }
        // Traffic for no Service, with kxdp attached, against none at all.
        let direct = conns.stream(Proxy::None, offloads);
        let attached = conns
            .stream(Proxy::Kxdp, offloads)
            .and_then(|r| r.to_pod.as_ref());
        if let (Some(direct), Some(attached)) = (direct, attached) {
            let ratio = attached.median / direct.to_service.median;
            verdicts.push(Verdict {
                target: format!(
                    "one TCP stream from a pod to a pod IP with kxdp attached ≥ 0.98× without (veth offloads {})",
                    offloads_label(offloads)
                ),
                measured: format!("{ratio:.3}×{}", share_note(conns, Proxy::Kxdp, offloads, |s| &s.1)),
                met: ratio >= 0.98,
                limit: stream_limit,
            });
        }
    }
    if let Some(ratio) = conns.stream_ratio(Proxy::KxdpPerPacket, false) {
        verdicts.push(Verdict {
            target: "one TCP stream through a ClusterIP per packet (--socket-lb host) ≥ 0.95× direct (veth offloads off)".into(),
            measured: format!("{ratio:.3}×{}", share_note(conns, Proxy::KxdpPerPacket, false, |s| &s.0)),
            met: ratio >= 0.95,
            limit: "with offloads off every MTU-sized packet crosses two programs on each side (≈ 100–150 ns each in real traffic, measured with `kernel.bpf_stats_enabled`)",
        });
    }
    verdicts
}

/// What kxdp's programs can take from a stream at most: their run time's
/// share of it (`pick`: through the Service, or to the pod IP).
fn share_note(
    conns: &ConnReport,
    proxy: Proxy,
    offloads: bool,
    pick: fn(&(ProgramShare, ProgramShare)) -> &ProgramShare,
) -> String {
    conns
        .stream(proxy, offloads)
        .and_then(|r| r.program_share.as_ref())
        .map_or_else(String::new, |shares| {
            format!(
                "; kxdp's programs ran {:.1}% of a stream's time ({:.0} ns a run, statistics on), the most they can take from it",
                pick(shares).share * 100.0,
                pick(shares).ns_per_run
            )
        })
}

fn control_verdicts(control: &[ControlRow]) -> Vec<Verdict> {
    let Some(largest) = control.iter().max_by_key(|r| r.sync.services) else {
        return Vec::new();
    };
    let n = largest.sync.services;
    let full_s = largest.sync.full_ms.median / 1e3;
    let (manifests, api) = (&largest.manifests, &largest.kubernetes);
    let rss = manifests.rss_mib.max(api.rss_mib);
    let peak = manifests.peak_rss_mib.max(api.peak_rss_mib);
    let start_s = manifests.first_sync_ms.max(api.first_sync_ms) / 1e3;
    let at = format!("at {n} Services");
    vec![
        Verdict {
            target: format!("30,000 Services × 10 endpoints programmed from empty in < 1 s (largest measured here: {n})"),
            measured: format!("{full_s:.2} s"),
            met: full_s < 1.0 && n >= 30_000,
            limit: "building N Maglev tables (M = 1021, 19 µs each) is a third of the CPU, spread over the machine's cores (2 here), as are the map writes; the rest is serial: modelling, planning and staging ≈ 20%",
        },
        Verdict {
            target: "of that, the map writes alone < 250 ms".into(),
            measured: format!("{:.0} ms {at}", largest.sync.writes_ms.median),
            met: largest.sync.writes_ms.median < 250.0 && n >= 30_000,
            limit: "the backends' hash-map updates in the kernel, one element at a time inside each batch call",
        },
        Verdict {
            target: "one endpoint change < 5 ms p99".into(),
            measured: format!("{:.0} µs p99 {at}", largest.sync.change_p99_us),
            met: largest.sync.change_p99_us < 5_000.0,
            limit: "",
        },
        Verdict {
            target: "agent start to its first sync < 2 s".into(),
            measured: format!(
                "{:.2} s from manifests, {:.2} s from the API, {at}",
                manifests.first_sync_ms / 1e3,
                api.first_sync_ms / 1e3
            ),
            met: start_s < 2.0 && n >= 30_000,
            limit: "from manifests, parsing the YAML comes first (29 MB at 30,000 Services)",
        },
        Verdict {
            target: "agent RSS < 64 MiB at 30,000 Services".into(),
            measured: format!(
                "{:.1} MiB from manifests, {:.1} MiB from the API, {at}",
                manifests.rss_mib, api.rss_mib
            ),
            met: rss < 64.0 && n >= 30_000,
            limit: "from the API, the Kubernetes source's kept objects and indexes (≈ 1.5 KB per Service + slice) come on top of the pipeline's own state (the pipeline state column)",
        },
        Verdict {
            target: "agent peak RSS < 128 MiB at 30,000 Services".into(),
            measured: format!(
                "{:.1} MiB from manifests, {:.1} MiB from the API, {at}",
                manifests.peak_rss_mib, api.peak_rss_mib
            ),
            met: peak < 128.0 && n >= 30_000,
            limit: "from the API, the source's kept objects come on top of the sync's",
        },
    ]
}

fn headline_section(results: &Results) -> String {
    let mut verdicts = Vec::new();
    if let Some(packets) = results.packets {
        verdicts.extend(packet_verdicts(packets));
    }
    if let Some(conns) = results.conns {
        verdicts.extend(conn_verdicts(conns));
    }
    if let Some(control) = results.control {
        verdicts.extend(control_verdicts(control));
    }
    if let Some(maglev) = results.maglev {
        verdicts.extend(maglev_verdicts(maglev));
    }
    if let Some(pps) = results.pps {
        verdicts.extend(pps_verdicts(pps));
    }
    // `--only sync` judges nothing: its figures are for comparing kernels.
    if verdicts.is_empty() && results.conns.is_none() && results.control.is_none() {
        return String::new();
    }
    let mut out = String::from("## Headline\n\n");
    if let Some(conns) = results.conns {
        out.push_str("Short TCP connections per second from a client pod through a ClusterIP with 3 backends, while N other Services exist (× the no-proxy floor measured on the same mini node at the same N):\n\n");
        out.push_str(&headline_conn_table(conns));
        out.push('\n');
    }
    if let Some(control) = results.control {
        out.push_str(
            "Programming N Services × 10 endpoints from empty, and one endpoint change (p99):\n\n",
        );
        out.push_str(&headline_control_table(control));
        out.push('\n');
    }
    out.push_str("Targets:\n\n");
    out.push_str(&verdict_table(&verdicts));
    out.push('\n');
    out
}

/// A Markdown table head: `cells`, every column right-aligned.
fn table_head<'a>(cells: impl IntoIterator<Item = &'a str>) -> String {
    let (mut head, mut rule) = (String::from("|"), String::from("|"));
    for cell in cells {
        head.push_str(&format!(" {cell} |"));
        rule.push_str("---:|");
    }
    format!("{head}\n{rule}\n")
}

fn headline_conn_table(conns: &ConnReport) -> String {
    let labels = Proxy::ALL.iter().map(|p| p.label());
    let mut t = table_head(["N other Services"].into_iter().chain(labels));
    for row in &conns.rows {
        t.push_str(&format!("| {} |", row.others));
        for proxy in Proxy::ALL {
            let cell = match (row.get(proxy), row.rate_ratio(proxy)) {
                (Some(r), Some(x)) if proxy != Proxy::None => {
                    format!(" {:.0} ({x:.2}×) |", r.rate.median)
                }
                (Some(r), _) => format!(" {:.0} |", r.rate.median),
                _ => " – |".into(),
            };
            t.push_str(&cell);
        }
        t.push('\n');
    }
    for offloads in [false, true] {
        if conns.stream(Proxy::None, offloads).is_none() {
            continue;
        }
        t.push_str(&format!(
            "| one TCP stream, Gbit/s, veth offloads {} |",
            offloads_label(offloads)
        ));
        for proxy in Proxy::ALL {
            let cell = conns.stream(proxy, offloads).map_or_else(
                || " – |".to_string(),
                |row| match conns.stream_ratio(proxy, offloads) {
                    Some(x) if proxy != Proxy::None => {
                        format!(" {:.2} ({x:.2}×) |", row.to_service.median)
                    }
                    _ => format!(" {:.2} |", row.to_service.median),
                },
            );
            t.push_str(&cell);
        }
        t.push('\n');
    }
    t
}

fn headline_control_table(control: &[ControlRow]) -> String {
    let labels = Proxy::KUBE_PROXY.iter().map(|p| p.label());
    let mut t = table_head(
        ["Services × 10 endpoints", "kxdp"]
            .into_iter()
            .chain(labels)
            .chain(["kxdp agent RSS (manifests / API)"]),
    );
    for r in control {
        t.push_str(&format!(
            "| {} | {:.0} ms, change {:.3} ms |",
            r.sync.services,
            r.sync.full_ms.median,
            r.sync.change_p99_us / 1e3
        ));
        for proxy in Proxy::KUBE_PROXY {
            let cell = match r
                .kube_proxy
                .iter()
                .find(|k| k.proxy == proxy)
                .map(|k| &k.outcome)
            {
                Some(Ok(k)) => format!(
                    " {:.0} ms, change {:.1} ms |",
                    k.full_ms.median, k.change_p99_ms
                ),
                Some(Err(why)) if why.starts_with("refused") => " refused by the kernel |".into(),
                _ => " not run |".into(),
            };
            t.push_str(&cell);
        }
        t.push_str(&format!(
            " {:.1} / {:.1} MiB |\n",
            r.manifests.rss_mib, r.kubernetes.rss_mib
        ));
    }
    t
}

fn packet_section(plan: &Plan, packets: &[PacketRow]) -> String {
    format!(
        r#"## 1. Per-packet cost of the pod and NIC programs (BPF_PROG_TEST_RUN)

{packet_table}
### Method

- Every number is the **median of {runs} runs** (min and max shown) after one untimed warm-up run. Each run is one
  `BPF_PROG_TEST_RUN` call with `repeat` repetitions (the warm new-flow row: many calls, see below); the runs of all
  paths are interleaved (round 1 of every path, then round 2, ...) so a noisy moment of the machine does not land on
  one path only.
- **ns/packet** is the kernel's own figure: `BPF_PROG_TEST_RUN` reads the clock around its repetition loop (pausing
  it while it reschedules) and reports the mean per repetition in whole nanoseconds, rounded down; the resolution is
  therefore 1 ns (the warm new-flow row averages many calls per run, hence its fractions).
- **wall ns/packet** is a cross-check: the wall time of the whole call divided by `repeat`. For tc programs it agrees
  with the kernel figure to within a nanosecond or so when a call has many repetitions (the call's one-off set-up, a
  few microseconds, is spread over them); the warm new-flow row has only 16 per call, so there the set-up shows. For
  XDP it does not: with `repeat` > 1 the kernel swaps the program into the XDP dispatcher before
  the loop and back after it, which costs milliseconds (about 20 ms on the machine this bench was written on, for
  repeat 2 as for repeat 10^6), so the wall figure of the XDP floor is mostly that swap. The kernel figure excludes it.
- The frame is a {frame_len}-byte TCP SYN (Ethernet + IPv4 + TCP, no payload, padded to the Ethernet minimum; 64 bytes on
  the wire with the FCS) for every path and both floors. Reply frames are SYN-ACKs of the same size.
- **Floors**: `floor_xdp` and `floor_tc` (`proxy-ebpf/src/bin/floor.rs`) return XDP_PASS / TC_ACT_OK and do nothing
  else: they are the cost of the harness itself. `pod_ingress` and `pod_egress` are tc programs, so their rows are compared with the tc
  floor: "× tc floor" is the ratio of medians, "above tc floor" their difference, i.e. what the datapath itself costs.
  The XDP floor can come out below the tc one: repeated XDP runs call the program through the XDP dispatcher (a direct
  call), tc runs through an indirect call, which the Spectre v2 mitigation above may make dearer.
- **The repeat trap**: with `repeat` > 1 the kernel runs the program again on the buffer the previous repetition
  rewrote. Timed naively, a DNAT path is taken once and every later repetition sees a packet addressed to a backend,
  i.e. the miss path. Each path is therefore set up so that the rewritten packet takes the same path again:
  - **miss**: a TCP ACK client → 10.0.9.9:80, an address that is no service. The service lookup misses, the conntrack reply
    lookup misses, the packet passes unchanged, so every repetition sees the same input. Checked: frame unchanged, no
    conntrack entry created, no drops.
  - **established**: two services that point at each other: VIP 10.96.0.10:80 whose only backend is 10.0.2.1:8080,
    and a service on 10.0.2.1:8080 whose only backend is 10.96.0.10:80. One SYN client → VIP and one client →
    backend (repeat 1 each) open both flows; the timed run sends the connection's later packets (ACK; a SYN is
    balanced afresh, as a new connection on a reused tuple must be) client → VIP: each
    repetition is a service hit, a conntrack forward hit and a DNAT (address, port, IPv4 and TCP checksums) that
    alternately translates VIP → backend and backend → VIP. Checked: the service packet counters (incremented only after
    a successful DNAT) grew by exactly `repeat`, no conntrack entry was created, the final frame is the expected end of
    the cycle byte for byte.
  - **SCTP established** (IPv4): the same two services over SCTP. One INIT each way opens the flows, and the timed
    packets are DATA chunks (a {small}-byte value, a {frame_len}-byte frame; a {large}-byte value in the last row), which
    conntrack carries as it does ACKs. **Port rewritten**: as above (80 ↔ 8080), so every DNAT updates the CRC32c from
    the ports and the packet's length, without reading the payload. **Port kept**: the backend and the second service
    are on 10.0.2.1:80, the VIP's own port, so the DNAT rewrites the address alone, which SCTP's CRC32c does not
    cover: no update. Same checks as the TCP row.
  - **new flow**: a chain of K services 10.100.0.1:80 → 10.100.0.2:80 → ... → VIP_K, each service's only backend
    being the next VIP, and repeat = K: repetition i is the first packet of a flow to VIP_i, so it runs the service
    lookup, a conntrack miss, backend selection, two conntrack inserts (reply, then forward) and the DNAT to VIP_(i+1).
    Two variants: K = {cold} with one call per run, where every repetition looks up a different service, selection slot
    and backend, so those lookups mostly miss the CPU caches (as on a node whose new flows go to many services); and
    K = {warm} with {calls} calls per run, where the few service entries stay cached and only the conntrack work is new
    (ns/packet is then the mean over the calls). The conntrack map is emptied before every run, so every run inserts
    into the same state, and every call uses a new client source port, so no flow was seen before. Checked: after each
    run the conntrack map holds exactly 2 entries per repetition (one forward, one reply), every call's final frame is
    addressed to VIP_K, no drops. The **ClientIP affinity** variant gives every service of the warm chain
    `sessionAffinity: ClientIP`: the client is the same address in every call, so from the second call on each
    repetition also finds the client's affinity entry, checks that its backend is still in its slot, and refreshes it.
  - **reply** (`pod_egress`, the program on packets entering a pod): two conntrack reply entries written from
    userspace (direction CT_REPLY): 10.0.2.1:8080 → client restores the source to 10.96.0.10:80, and
    10.96.0.10:80 → client restores it to 10.0.2.1:8080. The timed run sends a SYN-ACK from the backend: each
    repetition is a conntrack reply hit and a source rewrite, alternating between the two entries. Checked: each step of the cycle once with
    repeat 1 beforehand (the path is deterministic, so a repeated run cannot stall), the final frame, an unchanged
    conntrack map, no drops.
- **NodePort** (`nic_ingress`, the XDP program on the node's NICs): 16 node frontends (an address × NodePort 30080),
  each with one backend; every call is one repetition, the first packet of a new flow from a new client port to one
  of them, arriving on the NIC of a private network namespace whose FIB knows the other node and the client as
  neighbours. Local backend: lookup, selection, two conntrack inserts, DNAT with in-place checksums, XDP_PASS.
  Remote backend (traffic policy Cluster): also a SNAT port claimed with a BPF_NOEXIST reply insert, the SNAT, the
  FIB lookup, the MAC and TTL rewrite and XDP_TX. Checked per call: the verdict, the whole frame (local) or the
  MACs, addresses and checksums (remote); per run: 2 conntrack entries per call, no drops. **Why one repetition per
  call**: with `repeat` > 1 the kernel first swaps the program into its XDP dispatcher (a synchronize_rcu), and the
  repetitions after it find everything cold: tens of microseconds per call were measured here, which a 16-long
  chain would spread over its packets. These rows are therefore compared with the empty XDP program timed the same
  way ("one repetition per call"), which includes the timer's own cost around a single run.

"#,
        packet_table = packet_table(packets),
        runs = plan.runs,
        frame_len = FRAME_LEN,
        small = SCTP_SMALL_DATA,
        large = SCTP_LARGE_DATA,
        cold = plan.cold_chain,
        warm = plan.warm_chain,
        calls = plan.warm_calls,
    )
}

fn checksum_section(rows: &[ChecksumRow]) -> String {
    let build = if cfg!(debug_assertions) {
        "a debug build (unoptimised: far slower than a release build)"
    } else {
        "a release build"
    };
    format!(
        r#"### SCTP checksum arithmetic on the host

{table}
The update the SCTP rows above make in the datapath for a rewritten port, against computing the CRC32c afresh over
the whole packet, timed on the host: each figure is the mean of one run of many operations, median of the runs.
Before timing, the update's result is checked against the `crc32c` crate's CRC of the rewritten packet. This is
{build}.

"#,
        table = checksum_table(rows),
    )
}

/// `proxy`'s median rate over IPv6 as a share of its IPv4 one at the same
/// Service count, as text.
fn ipv6_share(conns: &ConnReport, proxy: Proxy) -> String {
    let v4 = conns
        .rows
        .iter()
        .find(|r| r.others == conns.ipv6.others)
        .and_then(|r| r.get(proxy));
    match (conns.ipv6.get(proxy), v4) {
        (Some(v6), Some(v4)) => format!("{:.0}%", 100.0 * v6.rate.median / v4.rate.median),
        _ => "–".to_string(),
    }
}

fn conn_section(
    plan: &Plan,
    m: &Machine,
    conns: &ConnReport,
    figures: &[(String, String)],
) -> String {
    let conn_secs = plan.conn_ms as f64 / 1000.0;
    let stream_secs = plan.stream_ms as f64 / 1000.0;
    let stream_others = conns.rows.first().map_or(0, |r| r.others);
    format!(
        r#"## 2. Through a ClusterIP while N other Services exist: kxdp, kube-proxy, no proxy

{conn_table}
{rate_figure}{p99_figure}The same over IPv6 (`echo` is dual-stack), with {stream_others} other Services; "× no proxy" is against
IPv6 to the pod IP, and kxdp's rate over IPv6 is {kxdp6} and {per_packet6} of its IPv4 rate (sockets, per packet):

{ipv6_table}
One TCP stream, with {stream_others} other Services:

{stream_table}
### Method

- A mini node (`tests/src/netns.rs`): network namespaces for the node and each pod, joined by veth pairs; three
  backend pods run `kxdp-peer serve` (HTTP on 8080, one thread per connection, a short answer, then it waits for the
  client to close) and `kxdp-peer sink` (port 5001). Services: `echo` (ClusterIP port 80 → 8080 on the three pods),
  `sink` (port 5001 → 5001 on the same pods), and N others like the control-plane benchmark's (one TCP port,
  10.100.0.0/17) but with one endpoint each: a packet to `echo` never reaches another Service's endpoints, so
  what N costs shows with one, and kube-proxy's loads stay short (with 10 endpoints each, iptables-legacy cannot
  hold 30,000 Services at all, see part 3). Every mechanism holds the same N + 2 Services. A fresh mini node per N.
- The same client pod measures, one after another (one phase each, nothing else loaded meanwhile):
  - **no proxy (pod IP)**: connections to backend b1's pod IP:8080, no rules and no programs anywhere: the floor;
  - **kxdp**: the real `kxdp agent` (`$KXDP_BIN`) in the node namespace, fed all N + 2 Services as manifests,
    tcx programs on every pod interface; stopped and `kxdp unload`ed after the phase;
  - **kube-proxy iptables**: the ruleset kube-proxy's iptables mode writes for the same Services
    (`tests/src/bin/kxdp-bench/kube_proxy.rs`), loaded into the node namespace with `iptables-nft-restore` (Debian's
    default `iptables`, rules evaluated by nf_tables) and, in a second phase, with `iptables-legacy-restore`
    (x_tables): nat PREROUTING/OUTPUT → KUBE-SERVICES (one `-d VIP -p tcp --dport` rule per Service port, matched in
    order; `echo` and `sink` sit in the middle of the list, the average place in a real cluster where the order is
    arbitrary) → KUBE-SVC-… (`! -s` cluster CIDR → KUBE-MARK-MASQ, then `statistic --mode random --probability
    1/(n-i)` per endpoint) → KUBE-SEP-… (hairpin KUBE-MARK-MASQ, DNAT), KUBE-POSTROUTING with MASQUERADE, and
    kube-proxy's filter chains (KUBE-FORWARD with its ctstate rules, KUBE-SERVICES, KUBE-EXTERNAL-SERVICES,
    KUBE-FIREWALL, KUBE-PROXY-FIREWALL, KUBE-NODEPORTS) jumped to from INPUT/FORWARD/OUTPUT;
  - **kube-proxy nftables**: the table `ip kube-proxy` of kube-proxy's nftables mode, loaded with `nft -f`: base
    chains at kube-proxy's priorities, the `service-ips` verdict map (VIP . proto . port → goto the Service chain),
    per-Service chains with `numgen random mod n vmap`, per-endpoint chains (masquerade mark, `dnat to`), the
    `cluster-ips` set, `masquerading`, and the empty no-endpoint / NodePort / firewall maps and their check chains.
    One difference: only `echo` and `sink` pick their endpoint with kube-proxy's inline `numgen … vmap {{ … }}`; the
    N other Service chains `goto` their one endpoint chain. With an inline map in every Service chain, `nft -f`
    takes time growing with N² in the kernel (`nf_tables_newsetelem`; 210 s at 10,000 Services here, see part 3),
    and a packet to `echo` never enters another Service's chain, so its path is the same either way.
  - Left out of both kube-proxy rulesets, because ClusterIP traffic to Services with endpoints never reaches them:
    NodePort, LoadBalancer, external-IP, firewall and health-check rules, session affinity, the mangle canary
    chains and the nfacct counters. Chain names carry a base32 hash as kube-proxy's do (FNV-1a here, SHA-256 there).
- Connection rate: `kxdp-peer conn-rate ADDR:PORT {conn_ms} {concurrency}` in the client pod: {concurrency}
  threads, each one connection after another (connect, send `GET / HTTP/1.1`, read the whole answer, close) for
  {conn_secs:.1} s; rate = successful connections / elapsed seconds; p50/p99 are per-connection latencies from
  connect to the end of the answer. Connect, read and write each time out after 1 s; a timed-out or refused
  connection counts as an error. The phases run in {passes} pass(es) (none, kxdp, iptables ×2, nftables, then again),
  each phase with one warm-up of 0.3 s and {rounds} rounds; the table gives the median, min and max of a proxy's
  rounds over all passes; "× no proxy" is the ratio of medians at the same N. The shared 2-CPU machine has slow
  minutes, in which a phase can lose a third of its rate; the passes spread them over the proxies, and the min
  column shows them.
- One TCP stream (at {stream_others} other Services only): `kxdp-peer stream ADDR:PORT {stream_ms}` writes 128 KiB
  blocks on one connection for {stream_secs:.1} s, closes its side, and waits for the sink's count of the bytes
  that arrived; Gbit/s = that count × 8 / the time until the count came back. {stream_rounds} cycle(s): in each,
  every proxy is installed in turn (as above) and carries one stream through the `sink` Service and, right after,
  one to b1's pod IP (the second figure: what the proxy costs traffic that is for no Service). Cycling spreads the
  machine's drift over all proxies; the stream figures still vary by ±20% from one run to the next here.
- Every veth in the mini node has checksum offloads off (`ethtool -K tx off rx off`, so that a broken checksum rewrite
  cannot hide behind a partial checksum, and so also no TSO/GSO): every path pays for software checksums and
  MTU-sized segments. The connection rates are measured so. The stream is measured both so and with veth's default
  offloads switched back on (`tx rx sg tso gso on`, both ends of every pod veth), as pods have them in a cluster:
  then the programs and rules see 64 KB GSO packets and their per-packet cost all but vanishes.
- The client closes each connection first (the server waits for it), so the client pod runs with
  `net.ipv4.tcp_tw_reuse=1`: without it its TIME_WAIT sockets exhaust the ephemeral ports within seconds.
- The kube-proxy modes bring netfilter connection tracking into the node namespace (NAT needs it); kxdp and the
  floor run without it, as they would on a node with no NAT rules. Client, servers, agent and kernel share the
  machine's {nproc} CPUs; nothing is pinned. While this part ran, the hypervisor took {steal:.1}% of the CPU time
  (`steal` in /proc/stat). kxdp spreads connections over three server processes, the floor sends them
  all to one, the kube-proxy modes spread them like kxdp.
"#,
        conn_table = conn_table(conns),
        ipv6_table = scale_table(std::slice::from_ref(&conns.ipv6)),
        kxdp6 = ipv6_share(conns, Proxy::Kxdp),
        per_packet6 = ipv6_share(conns, Proxy::KxdpPerPacket),
        stream_table = stream_table(conns),
        rate_figure = figure(figures, CONN_RATE_SVG),
        p99_figure = figure(figures, CONN_P99_SVG),
        conn_ms = plan.conn_ms,
        stream_ms = plan.stream_ms,
        concurrency = plan.concurrency,
        rounds = plan.conn_rounds,
        passes = plan.conn_passes,
        steal = conns.steal * 100.0,
        stream_rounds = plan.stream_rounds,
        nproc = m.nproc,
    )
}

pub(crate) fn control_table(rows: &[ControlRow]) -> String {
    let mut t = String::from(
        "| services × endpoints | full sync ms median | min | max | of it map writes ms median | one change p50 µs | p99 µs | max µs | changes | pipeline state MiB | agent on manifests: first sync ms / RSS / peak MiB | agent on the API: first sync ms / RSS / peak MiB |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|\n",
    );
    for r in rows {
        t.push_str(&format!(
            "| {} × {ENDPOINTS_PER_SERVICE} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {} | {:.1} | {} | {} |\n",
            r.sync.services,
            r.sync.full_ms.median,
            r.sync.full_ms.min,
            r.sync.full_ms.max,
            r.sync.writes_ms.median,
            r.sync.change_p50_us,
            r.sync.change_p99_us,
            r.sync.change_max_us,
            r.sync.changes,
            r.sync.state_mib,
            agent_cell(&r.manifests),
            agent_cell(&r.kubernetes),
        ));
    }
    t
}

pub(crate) fn kube_proxy_control_table(rows: &[ControlRow]) -> String {
    let mut t = String::from(
        "| services × endpoints | programmed by | full ms median | min | max | × kxdp | one change p50 ms | p99 ms | × kxdp (p99) | changes |\n\
         |---|---|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for r in rows {
        t.push_str(&format!(
            "| {} × {ENDPOINTS_PER_SERVICE} | kxdp (pipeline → maps) | {:.0} | {:.0} | {:.0} | 1 | {:.3} | {:.3} | 1 | {} |\n",
            r.sync.services,
            r.sync.full_ms.median,
            r.sync.full_ms.min,
            r.sync.full_ms.max,
            r.sync.change_p50_us / 1e3,
            r.sync.change_p99_us / 1e3,
            r.sync.changes,
        ));
        for kp in &r.kube_proxy {
            let k = match &kp.outcome {
                Ok(k) => k,
                Err(why) => {
                    t.push_str(&format!(
                        "| {} × {ENDPOINTS_PER_SERVICE} | {} | {} | | | | | | | |\n",
                        r.sync.services,
                        kp.proxy.label(),
                        why.replace('|', "/").replace('\n', " "),
                    ));
                    continue;
                }
            };
            t.push_str(&format!(
                "| {} × {ENDPOINTS_PER_SERVICE} | {} | {:.0} | {:.0} | {:.0} | {:.1} | {:.1} | {:.1} | {:.0} | {} |\n",
                r.sync.services,
                kp.proxy.label(),
                k.full_ms.median,
                k.full_ms.min,
                k.full_ms.max,
                k.full_ms.median / r.sync.full_ms.median,
                k.change_p50_ms,
                k.change_p99_ms,
                k.change_p99_ms * 1e3 / r.sync.change_p99_us,
                k.changes,
            ));
        }
    }
    t
}

pub(crate) fn sync_table(report: &SyncReport) -> String {
    let mut t = String::from(
        "| services × endpoints | full sync ms median | min | max | of it map writes ms median | one change p50 µs | p99 µs | max µs | changes | pipeline state MiB | kernel |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n",
    );
    for r in &report.rows {
        t.push_str(&format!(
            "| {} × {ENDPOINTS_PER_SERVICE} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {} | {:.1} | {} |\n",
            r.services,
            r.full_ms.median,
            r.full_ms.min,
            r.full_ms.max,
            r.writes_ms.median,
            r.change_p50_us,
            r.change_p99_us,
            r.change_max_us,
            r.changes,
            r.state_mib,
            report.kernel,
        ));
    }
    t
}

/// How `sync_line` starts: `cargo xtask vm-test --bench` looks for it on
/// the VM's console.
pub(crate) const SYNC_LINE: &str = "kxdp-bench: sync ";

/// One size of the `sync` part as `key=value` words, for programs to read.
pub(crate) fn sync_line(report: &SyncReport, r: &SyncRow) -> String {
    format!(
        "{SYNC_LINE}services={} endpoints={ENDPOINTS_PER_SERVICE} full_ms={:.1} writes_ms={:.1} change_p50_us={:.1} change_p99_us={:.1} kernel={}",
        r.services, r.full_ms.median, r.writes_ms.median, r.change_p50_us, r.change_p99_us, report.kernel
    )
}

fn sync_section(plan: &Plan, report: &SyncReport) -> String {
    format!(
        r#"
## Full sync on {kernel}: the control plane's pipeline alone

{table}
The bench process's peak resident memory (`VmHWM`) after every size: {rss:.0} MiB.

### Method

{pipeline_method}- Part 3's pipeline figures without the real agent and kube-proxy's tools (`kxdp-bench --only sync`), light
  enough for a small VM: `cargo xtask vm-test --bench` runs it on each kernel and compares them. A full run leaves it
  out, as part 3 has the same figures.
"#,
        kernel = report.kernel,
        table = sync_table(report),
        rss = report.peak_rss_mib,
        pipeline_method = pipeline_method(plan),
    )
}

fn agent_cell(sample: &AgentSample) -> String {
    format!(
        "{:.0} / {:.1} / {:.1}",
        sample.first_sync_ms, sample.rss_mib, sample.peak_rss_mib
    )
}

fn control_section(plan: &Plan, rows: &[ControlRow], figures: &[(String, String)]) -> String {
    format!(
        r#"
## 3. Control plane: programming Services

{table}
Next to kube-proxy's tools, the same Services and the same changes:

{kube_proxy_table}
{full_figure}{change_figure}### Method

{pipeline_method}- **kube-proxy's tools**: the rulesets of section 2 for the same N Services × {ENDPOINTS_PER_SERVICE} endpoints,
  generated in memory, then timed from spawning the tool to its exit, as kube-proxy runs it: `iptables-nft-restore`
  / `iptables-legacy-restore` / `nft -f -` reading the whole ruleset on stdin, in an empty network namespace
  ({runs} run(s), each in a new namespace). Then {kp_changes} single-endpoint changes per run, the same
  Services and new addresses as kxdp's first ones, written as kube-proxy's partial syncs write them: iptables mode
  (`iptables-restore --noflush`) rewrites the whole KUBE-SERVICES chain (kube-proxy always does) plus the changed
  Service's KUBE-SVC and KUBE-SEP chains and deletes the old KUBE-SEP chain; nftables mode sends one transaction
  adding the new endpoint chain, rewriting the Service chain and deleting the old endpoint chain. Checked: every
  tool exits 0, and after the third change the Service's chain lists the new endpoint. kube-proxy's own work before
  the tool runs (computing the rules) is not counted, nor is kxdp's decoding. Budget: a further run, or a change
  beyond the third, starts only while the tool's time at that size is under {budget} s, so the large sizes have fewer
  samples (the "changes" column says how many).
- What limits kube-proxy's tools here: `iptables-restore` rebuilds and hands over the whole table (legacy: one
  x_tables blob, which the kernel caps at 512 MiB; at 30,000 Services × 10 endpoints, with a 256-byte comment match in
  most of ≈ 1 million rules, the table is refused at COMMIT) and parses the text; a partial sync still carries the
  whole KUBE-SERVICES chain, and iptables-legacy reads and rewrites the whole table for it. `nft -f` of kube-proxy's
  nftables table spends its time in the kernel adding the elements of the per-Service inline `numgen` verdict maps
  (`nf_tables_newsetelem`: the kernel logged soft lockups of minutes while loading 10,000 Services), growing with N²;
  it is run up to {nft_max} Services. `iptables-nft-restore` is run up to {ipt_nft_max} Services (at 30,000 × 10 it had
  not finished after 4 minutes on this machine). kxdp writes its map entries in batches and its Maglev tables through `mmap`.
- **pipeline state**: heap bytes the bench process holds after the full sync minus before it, counted by a global
  allocator wrapper (the update itself is freed by then): the model, plan and map mirror the agent keeps for N
  Services, without the allocator's own overhead and fragmentation.
- **agent**: the real `kxdp agent` started on a manifest file with the same N Services and slices (YAML, as a user
  would write them), no pod interface to attach to; first sync = from process start to its first `synced` line
  (reading and decoding the YAML included); RSS and peak RSS (`VmRSS`, `VmHWM` from `/proc/PID/status`) right after.
  With the Kubernetes source (a stand-in API server paging its lists as the API server does), the source keeps its
  compact objects instead of the YAML text.
"#,
        table = control_table(rows),
        kube_proxy_table = kube_proxy_control_table(rows),
        pipeline_method = pipeline_method(plan),
        full_figure = figure(figures, CONTROL_FULL_SVG),
        change_figure = figure(figures, CONTROL_CHANGE_SVG),
        runs = plan.control_runs,
        kp_changes = plan.kube_proxy_changes,
        budget = plan.kube_proxy_budget.as_secs(),
        nft_max = plan.nftables_max_services,
        ipt_nft_max = plan.iptables_nft_max_services,
    )
}

/// How the pipeline's full sync and single changes are timed (parts 3 and
/// `sync`).
fn pipeline_method(plan: &Plan) -> String {
    format!(
        r#"- **full sync**: the agent's own pipeline (`proxy_userspace::pipeline::Pipeline`: model → plan → sync) applies one
  update holding N Services (one TCP port each) with one EndpointSlice of {ENDPOINTS_PER_SERVICE} ready endpoints
  each to freshly created maps of the real object (pinned in a private bpffs), from empty; no two Services share an
  endpoint, so every endpoint is its own backend entry (N × {ENDPOINTS_PER_SERVICE} backends and N service entries, written in
  batches of `BPF_MAP_UPDATE_BATCH`; N Maglev tables built on every core and written into the arena through `mmap`).
  The time runs from handing the update over (objects already
  decoded, as the watch delivers them) to the last map write. Median, min and max of {runs} runs, each on new maps.
  Checked: no error, every service and backend written. **Map writes**: of that time, what the sync spent inside the
  map store's calls (batch updates, arena writes through `mmap`, counter resets), clocked around each call by a
  wrapping store, the Maglev builds taken out.
- **one change**: then {changes} single-Service updates, each replacing one endpoint of one Service by a new pod
  address (as an EndpointSlice event does), spread over the Services; time from handing the update over to the last
  map write (new backend, its slot, the old backend deleted). Percentiles over all changes of all runs. Checked: each
  change wrote exactly one backend and deleted one.
"#,
        runs = plan.control_runs,
        changes = plan.control_changes,
    )
}
