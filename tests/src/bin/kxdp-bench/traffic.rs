//! Part 5: packets per second through each hook in real traffic, beside
//! part 1's BPF_PROG_TEST_RUN harness. Frames from a sender (`sender`)
//! cross a veth into the hook's interface, meet the program attached there
//! as the agent attaches it (XDP in driver mode, tcx), and are counted
//! where they leave the node (`sink`, XDP on the wire's far end). Each path
//! runs beside the same hook with an empty program (and, where frames then
//! go up the stack, with none), fed frames that are already what kxdp
//! makes of them, so everything after the hook does the same work.
//!
//! In `nic_netns`'s private namespace: the NIC `nic0`, whose wire end
//! `peer0` sends the frames in and counts what comes back; a pod interface
//! `pod0`, whose pod end `pod0c` sends a pod's frames. Every path ends on
//! the wire: remote NodePort flows by the NIC program's XDP_TX, the others
//! forwarded by the stack to a backend behind the other node.

use std::os::fd::OwnedFd;

use aya::{
    maps::PerCpuArray,
    programs::{tc, Program, SchedClassifier, TcAttachType, Xdp, XdpMode},
    sys::{enable_stats, Stats},
};
use kxdp_testbed::{
    datapath::TestBackend,
    netns::run,
    nic_netns::{NIC, NIC_MAC, NODE_ADDR, OTHER_NODE_MAC, POD_SIDE},
    SINK_OBJECT,
};
use proxy_common::maps::{FrontendKey, FRONTEND_SNAT_REMOTE, SCOPE_NODE};

use super::*;

/// The pod interface (host side) and its pod-side peer.
const POD_IF: &str = "pod0";
const POD_PEER: &str = "pod0c";
const POD_IF_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xd1];
/// A pod's address on `pod0` (the bench's client, 10.0.1.5, is in it).
const POD_GATEWAY: &str = "10.0.1.1/24";
/// The NodePort frontend and its backends, all routed via the other node
/// (`nic_netns::REMOTE_PODS`): enough of them that the remote new flows'
/// SNAT ports (4,536 a backend) outnumber a run's flows.
const NODE_PORT: SocketAddrV4 = SocketAddrV4::new(ip(192, 168, 50, 1), 30080);
const NIC_BACKENDS: usize = 24;
fn nic_backend(i: usize) -> SocketAddrV4 {
    SocketAddrV4::new(
        Ipv4Addr::from(u32::from(ip(10, 1, 2, 101)) + i as u32),
        8080,
    )
}
/// The pods' ClusterIP's one backend, behind the other node too.
const POD_BACKEND: SocketAddrV4 = SocketAddrV4::new(ip(10, 1, 2, 200), 8080);
/// The client's port of the established flows.
const FLOW_PORT: u16 = 40_000;
/// Frames sent before each timed run: the established flow opens, caches warm.
pub(crate) const WARM_UP: u32 = 2_000;
/// Remote new flows per run at most: each claims one of the backends'
/// 24 × 4,536 SNAT ports, and a run must not run out of them.
pub(crate) const REMOTE_NEW_FLOWS: u32 = 50_000;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Hook {
    /// `nic_ingress`, XDP on the NIC.
    Nic,
    /// `pod_ingress`, tc on the host side of a pod interface.
    Pod,
}

/// What the hook runs.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Runs {
    Kxdp,
    Empty,
    Nothing,
}

impl Runs {
    fn label(self) -> &'static str {
        match self {
            Runs::Kxdp => "kxdp",
            Runs::Empty => "empty program",
            Runs::Nothing => "no program",
        }
    }
}

/// A path through a hook, with what the hook runs for it.
#[derive(Clone, Copy)]
struct Case {
    hook: Hook,
    /// NodePort to a backend on another node (SNAT, XDP_TX) rather than
    /// one on this node (DNAT, up the stack).
    remote: bool,
    new_flows: bool,
    runs: Runs,
}

impl Case {
    fn path(&self) -> &'static str {
        match (self.hook, self.remote, self.new_flows) {
            (Hook::Nic, true, false) => "NodePort established, remote backend",
            (Hook::Nic, true, true) => "NodePort new flows, remote backend",
            (Hook::Nic, false, false) => "NodePort established, local backend",
            (Hook::Nic, false, true) => "NodePort new flows, local backend",
            (Hook::Pod, _, false) => "ClusterIP established, from a pod",
            (Hook::Pod, _, true) => "ClusterIP new flows, from a pod",
        }
    }

    fn hook_label(&self) -> &'static str {
        match self.hook {
            Hook::Nic => "XDP, NIC",
            Hook::Pod => "tc, pod interface",
        }
    }

    /// What kxdp gets (a packet to the frontend), or what an empty hook
    /// gets where the stack goes on with it: the same packet as kxdp leaves
    /// it, addressed to a backend (an empty XDP_TX program sends the
    /// frontend's packet back out as it is).
    fn frame(&self) -> Vec<u8> {
        let flags = if self.new_flows { TCP_SYN } else { TCP_ACK };
        let translated = self.runs != Runs::Kxdp;
        match self.hook {
            Hook::Nic => {
                let dst = if translated && !self.remote {
                    nic_backend(0)
                } else {
                    NODE_PORT
                };
                pad(Packet {
                    src_mac: OTHER_NODE_MAC,
                    dst_mac: NIC_MAC,
                    ..Packet::tcp(client(FLOW_PORT), dst)
                        .payload(b"")
                        .tcp_flags(flags)
                }
                .build())
            }
            Hook::Pod => {
                let dst = if translated { POD_BACKEND } else { VIP };
                pad(Packet {
                    dst_mac: POD_IF_MAC,
                    ..Packet::tcp(client(FLOW_PORT), dst)
                        .payload(b"")
                        .tcp_flags(flags)
                }
                .build())
            }
        }
    }

    /// The interface the frames are sent from: the other end of the
    /// hook's veth.
    fn sent_from(&self) -> &'static str {
        match self.hook {
            Hook::Nic => POD_SIDE,
            Hook::Pod => POD_PEER,
        }
    }

    fn frames(&self, plan: &Plan) -> u32 {
        if self.remote && self.new_flows {
            plan.pps_frames.min(REMOTE_NEW_FLOWS)
        } else {
            plan.pps_frames
        }
    }
}

/// Every case, in the order of the report.
fn cases() -> Vec<Case> {
    let mut cases = Vec::new();
    for (hook, remote) in [(Hook::Nic, true), (Hook::Nic, false), (Hook::Pod, false)] {
        for new_flows in [false, true] {
            for runs in [Runs::Kxdp, Runs::Empty, Runs::Nothing] {
                // An empty XDP_TX program and no program are not the same
                // path: with none, frames go up the stack.
                if runs == Runs::Nothing && remote {
                    continue;
                }
                cases.push(Case {
                    hook,
                    remote,
                    new_flows,
                    runs,
                });
            }
        }
    }
    cases
}

/// One row of the report: medians over the plan's rounds.
pub(crate) struct PpsRow {
    pub(crate) hook: &'static str,
    pub(crate) path: &'static str,
    runs: Runs,
    pub(crate) frames: u32,
    /// Frames that reached the sink, a second (millions).
    pub(crate) mpps: f64,
    /// The share of generated frames that reached the sink.
    pub(crate) delivered: f64,
    /// The hook's program, ns a packet (`kernel.bpf_stats_enabled`'s run
    /// time over its run count); none without a program.
    pub(crate) program_ns: Option<f64>,
}

impl PpsRow {
    /// The row of the same path with an empty program, for kxdp's rows.
    pub(crate) fn baseline<'a>(&self, rows: &'a [PpsRow]) -> Option<&'a PpsRow> {
        (self.runs == Runs::Kxdp).then_some(())?;
        rows.iter()
            .find(|r| r.path == self.path && r.runs == Runs::Empty)
    }

    pub(crate) fn runs(&self) -> &'static str {
        self.runs.label()
    }
}

/// One timed run.
struct Measured {
    mpps: f64,
    delivered: f64,
    program_ns: Option<f64>,
}

/// The namespace's datapaths and empty programs.
struct Rig {
    nic_remote: Datapath,
    nic_local: Datapath,
    pod: Datapath,
    floor: Ebpf,
    /// Keeps `kernel.bpf_stats_enabled` on while it lives.
    _stats: OwnedFd,
}

pub(crate) fn measure_pps(plan: &Plan) -> anyhow::Result<Vec<PpsRow>> {
    std::thread::scope(|scope| {
        std::thread::Builder::new()
            .name("pps".into())
            .spawn_scoped(scope, || measure_in_nic_netns(plan, nic_netns::enter()))
            .context("spawning the pps thread")?
            .join()
            .map_err(|_| anyhow::anyhow!("the pps thread panicked"))?
    })
}

fn measure_in_nic_netns(plan: &Plan, nic: u32) -> anyhow::Result<Vec<PpsRow>> {
    set_up_namespace()?;
    let mut rig = Rig {
        nic_remote: nic_datapath(true, nic),
        nic_local: nic_datapath(false, nic),
        pod: pod_datapath(),
        floor: load_floor()?,
        _stats: enable_stats(Stats::RunTime).context("BPF_ENABLE_STATS")?,
    };
    let cases = cases();
    let mut samples: Vec<Vec<Measured>> = cases.iter().map(|_| Vec::new()).collect();
    // Rounds over every case, so drift spreads over all of them alike.
    for _ in 0..plan.pps_rounds {
        for (case, samples) in cases.iter().zip(&mut samples) {
            samples.push(measure(&mut rig, case, case.frames(plan))?);
        }
    }
    Ok(cases
        .iter()
        .zip(samples)
        .map(|(case, samples)| {
            let med = |f: fn(&Measured) -> f64| median_of(samples.iter().map(f).collect());
            let every_run_timed = samples.iter().all(|s| s.program_ns.is_some());
            PpsRow {
                hook: case.hook_label(),
                path: case.path(),
                runs: case.runs,
                frames: case.frames(plan),
                mpps: med(|s| s.mpps),
                delivered: med(|s| s.delivered),
                program_ns: every_run_timed.then(|| med(|s| s.program_ns.unwrap_or(0.0))),
            }
        })
        .collect())
}

/// The pod interface, and what lets the stack forward the frames: no
/// reverse-path filter (new flows come from many sources), no ICMP
/// redirects (the NIC forwards out of itself).
fn set_up_namespace() -> anyhow::Result<()> {
    let ip = |args: &[&str]| run(Command::new("ip").args(args)).map(|_| ());
    ip(&[
        "link", "add", POD_IF, "type", "veth", "peer", "name", POD_PEER,
    ])?;
    ip(&[
        "link",
        "set",
        POD_IF,
        "address",
        &nic_netns::mac(POD_IF_MAC),
    ])?;
    for dev in [POD_IF, POD_PEER] {
        ip(&["link", "set", dev, "up"])?;
    }
    ip(&["addr", "add", POD_GATEWAY, "dev", POD_IF])?;
    for (conf, value) in [
        ("all/rp_filter", "0"),
        ("default/rp_filter", "0"),
        (&format!("{NIC}/rp_filter"), "0"),
        (&format!("{POD_IF}/rp_filter"), "0"),
        ("all/send_redirects", "0"),
        (&format!("{NIC}/send_redirects"), "0"),
        (&format!("{POD_IF}/forwarding"), "1"),
    ] {
        let path = format!("/proc/sys/net/ipv4/conf/{conf}");
        std::fs::write(&path, value).with_context(|| format!("writing {path}"))?;
    }
    Ok(())
}

/// A datapath whose NIC `nic` serves the NodePort with 24 backends, on
/// this node or (`remote`) on another, SNATed.
fn nic_datapath(remote: bool, nic: u32) -> Datapath {
    let mut dp = Datapath::load_with_arena(proxy_common::sizes::MAGLEV_ARENA_ENTRIES);
    dp.set_nic_addr(nic, NODE_ADDR);
    let key = FrontendKey {
        addr: addr_to_net(*NODE_PORT.ip()),
        port: port_to_net(NODE_PORT.port()),
        proto: PROTO_TCP,
        scope: SCOPE_NODE,
    };
    let backends: Vec<TestBackend> = (0..NIC_BACKENDS)
        .map(|i| (*nic_backend(i).ip(), nic_backend(i).port(), !remote))
        .collect();
    dp.add_frontend(key, 1, FRONTEND_SNAT_REMOTE, &backends);
    dp
}

/// A datapath with the ClusterIP `VIP` → `POD_BACKEND` for pods.
fn pod_datapath() -> Datapath {
    let mut dp = Datapath::load_with_arena(proxy_common::sizes::MAGLEV_ARENA_ENTRIES);
    add_service(&mut dp, 1, PROTO_TCP, VIP, POD_BACKEND);
    dp
}

fn load_floor() -> anyhow::Result<Ebpf> {
    let mut floor = Ebpf::load(FLOOR_OBJECT).context("loading the floor object")?;
    for name in ["floor_xdp", "floor_xdp_tx"] {
        let xdp: &mut Xdp = program(&mut floor, name)?.try_into()?;
        xdp.load()?;
    }
    let tc: &mut SchedClassifier = program(&mut floor, "floor_tc")?.try_into()?;
    tc.load()?;
    Ok(floor)
}

fn program<'a>(ebpf: &'a mut Ebpf, name: &str) -> anyhow::Result<&'a mut Program> {
    ebpf.program_mut(name)
        .with_context(|| format!("no program {name}"))
}

/// The program `case` runs in the hook; none for no program.
fn hook_program<'a>(rig: &'a mut Rig, case: &Case) -> anyhow::Result<Option<&'a mut Program>> {
    Ok(match (case.runs, case.hook) {
        (Runs::Nothing, _) => None,
        (Runs::Empty, Hook::Nic) => {
            let name = if case.remote {
                "floor_xdp_tx"
            } else {
                "floor_xdp"
            };
            Some(program(&mut rig.floor, name)?)
        }
        (Runs::Empty, Hook::Pod) => Some(program(&mut rig.floor, "floor_tc")?),
        (Runs::Kxdp, Hook::Nic) => kxdp_datapath(rig, case).map(|dp| dp.program_mut(NIC_INGRESS)),
        (Runs::Kxdp, Hook::Pod) => kxdp_datapath(rig, case).map(|dp| dp.program_mut(POD_INGRESS)),
    })
}

/// The datapath of a kxdp case.
fn kxdp_datapath<'a>(rig: &'a mut Rig, case: &Case) -> Option<&'a mut Datapath> {
    match (case.runs, case.hook) {
        (Runs::Kxdp, Hook::Nic) if case.remote => Some(&mut rig.nic_remote),
        (Runs::Kxdp, Hook::Nic) => Some(&mut rig.nic_local),
        (Runs::Kxdp, Hook::Pod) => Some(&mut rig.pod),
        _ => None,
    }
}

/// A program attached for one run.
enum Attached {
    Xdp(aya::programs::xdp::XdpLinkId),
    Tc(aya::programs::tc::SchedClassifierLinkId),
}

fn attach(program: &mut Program, hook: Hook) -> anyhow::Result<Attached> {
    Ok(match hook {
        Hook::Nic => {
            let xdp: &mut Xdp = program.try_into()?;
            Attached::Xdp(
                xdp.attach(NIC, XdpMode::Driver)
                    .context("attaching to the NIC")?,
            )
        }
        Hook::Pod => {
            // tcx where the kernel has it; else a clsact qdisc first.
            let _ = tc::qdisc_add_clsact(POD_IF);
            let classifier: &mut SchedClassifier = program.try_into()?;
            let link = classifier
                .attach(POD_IF, TcAttachType::Ingress)
                .context("attaching to the pod interface")?;
            Attached::Tc(link)
        }
    })
}

fn detach(program: &mut Program, attached: Attached) -> anyhow::Result<()> {
    match attached {
        Attached::Xdp(link) => {
            let xdp: &mut Xdp = program.try_into()?;
            xdp.detach(link)?;
        }
        Attached::Tc(link) => {
            let classifier: &mut SchedClassifier = program.try_into()?;
            classifier.detach(link)?;
        }
    }
    Ok(())
}

/// The run time and run count kernel.bpf_stats_enabled has on record.
fn run_stats(program: &Program) -> anyhow::Result<(Duration, u64)> {
    let info = program.info()?;
    Ok((info.run_time(), info.run_count()))
}

/// The frontend's packet counter, for kxdp's cases.
fn translated(rig: &mut Rig, case: &Case) -> u64 {
    kxdp_datapath(rig, case).map_or(0, |dp| dp.stats(1).packets)
}

/// One run of `case`: the hook's program attached, a warm-up, then
/// `frames` frames timed from the first send until the last frame reached
/// the sink (the softirqs that carry them through the node run on the
/// sender's CPU as it goes; a few are still in flight when it is done).
fn measure(rig: &mut Rig, case: &Case, frames: u32) -> anyhow::Result<Measured> {
    let what = format!("{} ({})", case.path(), case.runs.label());
    let mut sink_object = Ebpf::load(SINK_OBJECT).context("loading the sink object")?;
    let sink: &mut Xdp = program(&mut sink_object, "sink")?.try_into()?;
    sink.load()?;
    sink.attach(POD_SIDE, XdpMode::Driver)
        .context("attaching the sink")?;
    if case.new_flows {
        if let Some(dp) = kxdp_datapath(rig, case) {
            dp.clear_conntrack();
        }
    }
    let attached = match hook_program(rig, case)? {
        Some(program) => Some(attach(program, case.hook)?),
        None => None,
    };
    let mut sender = FrameSender::open(case.sent_from(), &case.frame(), case.new_flows)?;
    sender
        .send(WARM_UP)
        .with_context(|| format!("{what}: warm-up"))?;

    let (sunk_before, _) = settled_sink_count(&sink_object)?;
    let stats_before = hook_program(rig, case)?.map(|p| run_stats(p)).transpose()?;
    let translated_before = translated(rig, case);
    let started = Instant::now();
    sender
        .send(frames)
        .with_context(|| format!("{what}: timed run"))?;
    let (sunk_after, last_arrival) = settled_sink_count(&sink_object)?;
    let wall = last_arrival.duration_since(started);
    let delivered = sunk_after - sunk_before;
    let stats_after = hook_program(rig, case)?.map(|p| run_stats(p)).transpose()?;
    let translated_count = translated(rig, case) - translated_before;

    if let Some(attached) = attached {
        let program = hook_program(rig, case)?.context("the attached program")?;
        detach(program, attached)?;
    }
    let program_ns = match (stats_before, stats_after) {
        (Some((t0, n0)), Some((t1, n1))) if n1 > n0 => {
            if case.runs == Runs::Kxdp {
                // Every frame the hook saw went through kxdp's path.
                ensure!(
                    translated_count * 100 >= (n1 - n0) * 99,
                    "{what}: the frontend counted {translated_count} of {} frames",
                    n1 - n0
                );
            }
            Some((t1 - t0).as_nanos() as f64 / (n1 - n0) as f64)
        }
        (Some(_), Some(_)) => bail!("{what}: the hook's program never ran"),
        _ => None,
    };
    Ok(Measured {
        mpps: delivered as f64 / wall.as_secs_f64() / 1e6,
        delivered: delivered as f64 / f64::from(frames),
        program_ns,
    })
}

fn sunk(sink: &Ebpf) -> anyhow::Result<u64> {
    let counts = PerCpuArray::<_, u64>::try_from(sink.map("SUNK").context("SUNK")?)?;
    Ok(counts.get(&0, 0)?.iter().sum())
}

/// The sink's count once frames still in flight have arrived (it stops
/// changing for a few ms; 200 ms at most), and when it last changed.
fn settled_sink_count(sink: &Ebpf) -> anyhow::Result<(u64, Instant)> {
    const QUIET: u32 = 5;
    let (mut count, mut changed, mut quiet) = (sunk(sink)?, Instant::now(), 0);
    for _ in 0..200 {
        std::thread::sleep(Duration::from_millis(1));
        let now = sunk(sink)?;
        if now != count {
            (count, changed, quiet) = (now, Instant::now(), 0);
        } else {
            quiet += 1;
            if quiet == QUIET {
                break;
            }
        }
    }
    Ok((count, changed))
}

pub(crate) fn pps_table(rows: &[PpsRow]) -> String {
    let mut t = String::from(
        "| hook | path | program | frames | Mpps | delivered | × empty | program ns/packet |\n\
         |---|---|---|---:|---:|---:|---:|---:|\n",
    );
    for row in rows {
        let ratio = row
            .baseline(rows)
            .map_or(String::new(), |b| format!("{:.2}×", row.mpps / b.mpps));
        let ns = row
            .program_ns
            .map_or("—".to_string(), |ns| format!("{ns:.0}"));
        let _ = writeln!(
            t,
            "| {} | {} | {} | {} | {:.3} | {:.0}% | {ratio} | {ns} |",
            row.hook,
            row.path,
            row.runs(),
            row.frames,
            row.mpps,
            row.delivered * 100.0
        );
    }
    t
}
