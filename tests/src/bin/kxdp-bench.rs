//! `kxdp-bench`: what the datapath costs, measured, never asserted.
//!
//!   kxdp-bench [--quick] [--out PATH]     (root; `cargo xtask bench` runs it)
//!
//! Part 1 times `pod_ingress` per packet through BPF_PROG_TEST_RUN, path by
//! path, next to empty XDP and tc programs (the cost of the harness itself).
//! Part 2 measures short TCP connections per second in a namespace mini node
//! with the real agent, through a ClusterIP and directly to a pod.
//! Both print a table and go into a Markdown report (default
//! `docs/bench/REPORT.md` in the workspace).

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, SocketAddrV4},
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{bail, ensure, Context as _};
use aya::{
    programs::{SchedClassifier, TestRun, TestRunOptions, TestRunResult, Xdp},
    Ebpf,
};
use kxdp_testbed::{
    datapath::{Datapath, TC_ACT_OK},
    packet::{Packet, L4, TCP_ACK, TCP_SYN},
    privileged::require_root,
    scenario::{peer_bin, EchoScenario},
};
use proxy_common::{
    maps::{addr_to_net, port_to_net, CtEntry, FlowKey, CT_REPLY, PROTO_TCP},
    sizes::DROP_REASONS,
};
use proxy_userspace::ebpf_object::FLOOR_OBJECT;

// ------------------------------------------------------------------ options

struct Options {
    quick: bool,
    out: PathBuf,
}

fn workspace_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the testbed lives in the workspace")
}

fn default_report_path() -> PathBuf {
    workspace_root().join("docs/bench/REPORT.md")
}

fn parse_args() -> anyhow::Result<Options> {
    let mut options = Options {
        quick: false,
        out: default_report_path(),
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--quick" => options.quick = true,
            "--out" => options.out = args.next().context("--out needs a path")?.into(),
            _ => bail!("usage: kxdp-bench [--quick] [--out PATH]"),
        }
    }
    Ok(options)
}

/// How much to measure; `--quick` trades precision for time.
struct Plan {
    /// Timed runs per path (after one warm-up run).
    runs: usize,
    /// Repetitions per BPF_PROG_TEST_RUN call for the floors and the
    /// steady-state paths; one call per run.
    repeat: u32,
    /// New flow, cold: service chain length (= repetitions), one call per run.
    cold_chain: u32,
    /// New flow, warm: a short chain, `warm_calls` calls per run.
    warm_chain: u32,
    warm_calls: u32,
    /// Alternating ClusterIP / direct rounds of the connection-rate test.
    conn_rounds: usize,
    conn_ms: u64,
    concurrency: usize,
}

impl Plan {
    fn new(quick: bool) -> Self {
        if quick {
            Plan {
                runs: 5,
                repeat: 100_000,
                cold_chain: 5_000,
                warm_chain: 16,
                warm_calls: 300,
                conn_rounds: 3,
                conn_ms: 1_000,
                concurrency: 4,
            }
        } else {
            Plan {
                runs: 9,
                repeat: 1_000_000,
                cold_chain: 20_000,
                warm_chain: 16,
                warm_calls: 2_000,
                conn_rounds: 5,
                conn_ms: 3_000,
                concurrency: 4,
            }
        }
    }
}

// --------------------------------------------------------------- statistics

#[derive(Clone, Copy)]
struct Summary {
    median: f64,
    min: f64,
    max: f64,
}

fn summarize(values: &[f64]) -> Summary {
    assert!(!values.is_empty(), "nothing to summarize");
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let mid = sorted.len() / 2;
    let median = if sorted.len() % 2 == 1 {
        sorted[mid]
    } else {
        (sorted[mid - 1] + sorted[mid]) / 2.0
    };
    Summary {
        median,
        min: sorted[0],
        max: sorted[sorted.len() - 1],
    }
}

// ---------------------------------------------------- part 1: packet frames

const fn ip(a: u8, b: u8, c: u8, d: u8) -> Ipv4Addr {
    Ipv4Addr::new(a, b, c, d)
}

const CLIENT: Ipv4Addr = ip(10, 0, 1, 5);
const VIP: SocketAddrV4 = SocketAddrV4::new(ip(10, 96, 0, 10), 80);
const BACKEND: SocketAddrV4 = SocketAddrV4::new(ip(10, 0, 2, 1), 8080);
const NOT_A_SERVICE: SocketAddrV4 = SocketAddrV4::new(ip(10, 0, 9, 9), 80);
/// Frame length: Ethernet + IPv4 + TCP with no payload is 54 bytes; padded
/// to the Ethernet minimum of 60 (64 on the wire with the FCS).
const FRAME_LEN: usize = 60;
/// Room for the output frame; nothing here grows packets.
const OUT_SLACK: usize = 256;
const XDP_PASS: u32 = 2;

fn client(port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(CLIENT, port)
}

fn pad(mut frame: Vec<u8>) -> Vec<u8> {
    assert!(frame.len() <= FRAME_LEN);
    frame.resize(FRAME_LEN, 0);
    frame
}

/// A minimum-size TCP SYN frame.
fn syn(src: SocketAddrV4, dst: SocketAddrV4) -> Vec<u8> {
    pad(Packet::tcp(src, dst).payload(b"").build())
}

/// A minimum-size TCP frame with `flags`.
fn tcp_with_flags(src: SocketAddrV4, dst: SocketAddrV4, flags: u8) -> Vec<u8> {
    let mut packet = Packet::tcp(src, dst).payload(b"");
    packet.l4 = L4::Tcp { flags };
    pad(packet.build())
}

/// A minimum-size TCP SYN-ACK frame (what a backend answers).
fn syn_ack(src: SocketAddrV4, dst: SocketAddrV4) -> Vec<u8> {
    tcp_with_flags(src, dst, TCP_SYN | TCP_ACK)
}

fn flow_key(src: SocketAddrV4, dst: SocketAddrV4) -> FlowKey {
    FlowKey {
        src_addr: addr_to_net(*src.ip()),
        dst_addr: addr_to_net(*dst.ip()),
        src_port: port_to_net(src.port()),
        dst_port: port_to_net(dst.port()),
        proto: PROTO_TCP,
        _pad: [0; 3],
    }
}

// ---------------------------------------------------- part 1: timing a run

/// Nanoseconds per packet, measured two ways.
#[derive(Clone, Copy)]
struct Sample {
    /// The kernel's per-repetition mean: it times the loop around the
    /// program alone and divides by `repeat` (whole ns, rounded down).
    kernel_ns: f64,
    /// Wall time of the whole call divided by `repeat`, as a cross-check. It
    /// includes the call's one-off set-up, which is large for XDP.
    wall_ns: f64,
}

/// One BPF_PROG_TEST_RUN call of `repeat` repetitions.
struct Timed {
    verdict: u32,
    /// The frame as the last repetition left it.
    out: Vec<u8>,
    sample: Sample,
}

fn time_test_run<P>(prog: &P, frame: &[u8], repeat: u32) -> anyhow::Result<Timed>
where
    P: for<'a> TestRun<Opts<'a> = TestRunOptions<'a>, Result = TestRunResult>,
{
    let mut out = vec![0u8; frame.len() + OUT_SLACK];
    let started = Instant::now();
    let result = prog
        .test_run(TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            repeat,
            ..Default::default()
        })
        .context("BPF_PROG_TEST_RUN")?;
    let wall = started.elapsed();
    out.truncate(result.data_size_out as usize);
    Ok(Timed {
        verdict: result.return_value,
        out,
        sample: Sample {
            kernel_ns: result.duration.as_nanos() as f64,
            wall_ns: wall.as_nanos() as f64 / f64::from(repeat),
        },
    })
}

/// A path to time. `run` makes one timed run and checks afterwards that
/// every repetition took the path; a check that fails stops the bench.
trait Case {
    fn run(&mut self) -> anyhow::Result<Sample>;
}

fn expect_frame(what: &str, got: &[u8], want: &[u8]) -> anyhow::Result<()> {
    ensure!(
        got == want,
        "{what}: the output frame is not the expected one\n got {got:02x?}\nwant {want:02x?}"
    );
    Ok(())
}

fn expect_verdict(what: &str, got: u32, want: u32) -> anyhow::Result<()> {
    ensure!(got == want, "{what}: verdict {got}, expected {want}");
    Ok(())
}

fn expect_no_drops(what: &str, dp: &Datapath) -> anyhow::Result<()> {
    let drops: u64 = (0..DROP_REASONS).map(|r| dp.drops(r)).sum();
    ensure!(drops == 0, "{what}: {drops} packets dropped");
    Ok(())
}

/// Runs `pod_ingress` once (repeat 1) and checks the result: set-up steps.
fn run_once(dp: &Datapath, what: &str, frame: &[u8], want: &[u8]) -> anyhow::Result<()> {
    let once = time_test_run(dp.pod_ingress(), frame, 1)?;
    expect_verdict(what, once.verdict, TC_ACT_OK)?;
    expect_frame(what, &once.out, want)
}

/// The frame after `repeat` steps of a 2-cycle `a → b → a → …`.
fn cycle_end<'a>(a: &'a [u8], b: &'a [u8], repeat: u32) -> &'a [u8] {
    if repeat.is_multiple_of(2) {
        a
    } else {
        b
    }
}

// ------------------------------------------------------ part 1: the floors

/// One empty program of `FLOOR_OBJECT`: `floor_xdp` or `floor_tc`.
struct Floor {
    ebpf: Ebpf,
    xdp: bool,
    frame: Vec<u8>,
    repeat: u32,
}

impl Floor {
    fn load(xdp: bool, frame: Vec<u8>, repeat: u32) -> anyhow::Result<Self> {
        let mut ebpf = Ebpf::load(FLOOR_OBJECT).context("loading the floor object")?;
        let name = if xdp { "floor_xdp" } else { "floor_tc" };
        let program = ebpf.program_mut(name).context(name)?;
        if xdp {
            <&mut Xdp>::try_from(program)?.load()?;
        } else {
            <&mut SchedClassifier>::try_from(program)?.load()?;
        }
        Ok(Floor {
            ebpf,
            xdp,
            frame,
            repeat,
        })
    }
}

impl Case for Floor {
    fn run(&mut self) -> anyhow::Result<Sample> {
        let (name, pass) = if self.xdp {
            ("floor_xdp", XDP_PASS)
        } else {
            ("floor_tc", TC_ACT_OK)
        };
        let program = self.ebpf.program(name).context(name)?;
        let timed = if self.xdp {
            time_test_run(<&Xdp>::try_from(program)?, &self.frame, self.repeat)?
        } else {
            time_test_run(
                <&SchedClassifier>::try_from(program)?,
                &self.frame,
                self.repeat,
            )?
        };
        expect_verdict(name, timed.verdict, pass)?;
        expect_frame(name, &timed.out, &self.frame)?;
        Ok(timed.sample)
    }
}

// ------------------------------------------------ part 1: pod_ingress paths

/// Service VIP:80 → BACKEND, and service BACKEND → VIP:80: with both, a
/// translated packet is again addressed to a service, which is what lets a
/// repeated run take the same path every time (see `Established`).
fn two_cycle_datapath() -> Datapath {
    let mut dp = Datapath::load();
    add_tcp_service(&mut dp, 1, VIP, BACKEND);
    add_tcp_service(&mut dp, 2, BACKEND, VIP);
    dp
}

/// A TCP ClusterIP service `id` on `frontend` with the single `backend`.
fn add_tcp_service(dp: &mut Datapath, id: u32, frontend: SocketAddrV4, backend: SocketAddrV4) {
    let backends = [(*backend.ip(), backend.port())];
    dp.add_service(*frontend.ip(), frontend.port(), PROTO_TCP, id, &backends);
}

/// Service lookup miss, then conntrack reply lookup miss: the packet (an ACK
/// of an established connection that is not to a service, the bulk of pod
/// traffic) passes unchanged, so every repetition sees the same input.
struct Miss {
    dp: Datapath,
    frame: Vec<u8>,
    repeat: u32,
}

impl Miss {
    fn new(repeat: u32) -> Self {
        Miss {
            dp: two_cycle_datapath(),
            frame: tcp_with_flags(client(40_002), NOT_A_SERVICE, TCP_ACK),
            repeat,
        }
    }
}

impl Case for Miss {
    fn run(&mut self) -> anyhow::Result<Sample> {
        let timed = time_test_run(self.dp.pod_ingress(), &self.frame, self.repeat)?;
        expect_verdict("miss", timed.verdict, TC_ACT_OK)?;
        expect_frame("miss", &timed.out, &self.frame)?;
        ensure!(
            self.dp.conntrack_len() == 0,
            "miss: conntrack entries appeared"
        );
        expect_no_drops("miss", &self.dp)?;
        Ok(timed.sample)
    }
}

/// Conntrack hit + DNAT + checksums on every repetition: client → VIP is
/// DNATed to client → BACKEND, which is itself a service whose established
/// flow is DNATed back to client → VIP, and so on.
struct Established {
    dp: Datapath,
    to_vip: Vec<u8>,
    to_backend: Vec<u8>,
    repeat: u32,
}

impl Established {
    fn new(repeat: u32) -> anyhow::Result<Self> {
        let mut dp = two_cycle_datapath();
        let to_vip = syn(client(40_000), VIP);
        let to_backend = syn(client(40_000), BACKEND);
        // One first packet each way creates both flows (forward + reply entries).
        run_once(&dp, "established warm-up (VIP)", &to_vip, &to_backend)?;
        run_once(&dp, "established warm-up (backend)", &to_backend, &to_vip)?;
        ensure!(
            dp.conntrack_len() == 4,
            "established: expected 4 conntrack entries"
        );
        Ok(Established {
            dp,
            to_vip,
            to_backend,
            repeat,
        })
    }

    fn packets_counted(&self) -> u64 {
        self.dp.stats(1).packets + self.dp.stats(2).packets
    }
}

impl Case for Established {
    fn run(&mut self) -> anyhow::Result<Sample> {
        let before = self.packets_counted();
        let timed = time_test_run(self.dp.pod_ingress(), &self.to_vip, self.repeat)?;
        expect_verdict("established", timed.verdict, TC_ACT_OK)?;
        let want = cycle_end(&self.to_vip, &self.to_backend, self.repeat);
        expect_frame("established", &timed.out, want)?;
        // A service packet is counted only after a successful DNAT, and no
        // new flow was created: every repetition was a conntrack hit + DNAT.
        let counted = self.packets_counted() - before;
        ensure!(
            counted == u64::from(self.repeat),
            "established: {counted} translated packets counted, expected {}",
            self.repeat
        );
        ensure!(
            self.dp.conntrack_len() == 4,
            "established: new conntrack entries"
        );
        expect_no_drops("established", &self.dp)?;
        Ok(timed.sample)
    }
}

/// The first packet of a new flow on every repetition: services VIP_0 →
/// VIP_1 → … → VIP_K, each with the next one as its only backend, and
/// repeat = K, so repetition i selects a backend for a flow to VIP_i, creates
/// its two conntrack entries and DNATs to VIP_{i+1}. A long chain touches a
/// different service on every repetition (cold map entries); a short one,
/// run many times per sample, keeps the service entries warm.
struct NewFlow {
    dp: Datapath,
    chain: u32,
    /// BPF_PROG_TEST_RUN calls per sample, each with a new client port.
    calls: u32,
    next_port: u16,
}

fn chain_vip(i: u32) -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::from(u32::from(ip(10, 100, 0, 1)) + i), 80)
}

impl NewFlow {
    fn new(chain: u32, calls: u32) -> Self {
        assert!(calls < 60_000, "client ports must not repeat within a run");
        let mut dp = Datapath::load();
        for i in 0..chain {
            add_tcp_service(&mut dp, i + 1, chain_vip(i), chain_vip(i + 1));
        }
        NewFlow {
            dp,
            chain,
            calls,
            next_port: 1024,
        }
    }

    /// A client port not used by the last 60,000 calls.
    fn fresh_port(&mut self) -> u16 {
        let port = self.next_port;
        self.next_port = if port == u16::MAX { 1024 } else { port + 1 };
        port
    }

    /// One call down the whole chain from a new client port.
    fn one_call(&mut self) -> anyhow::Result<Sample> {
        let port = self.fresh_port();
        let frame = syn(client(port), chain_vip(0));
        let timed = time_test_run(self.dp.pod_ingress(), &frame, self.chain)?;
        expect_verdict("new flow", timed.verdict, TC_ACT_OK)?;
        let end = syn(client(port), chain_vip(self.chain));
        expect_frame("new flow", &timed.out, &end)?;
        Ok(timed.sample)
    }
}

impl Case for NewFlow {
    fn run(&mut self) -> anyhow::Result<Sample> {
        // An empty table each run, so every run inserts into the same state.
        self.dp.clear_conntrack();
        let mut total = Sample {
            kernel_ns: 0.0,
            wall_ns: 0.0,
        };
        for _ in 0..self.calls {
            let sample = self.one_call()?;
            total.kernel_ns += sample.kernel_ns;
            total.wall_ns += sample.wall_ns;
        }
        let entries = self.dp.conntrack_len();
        let want = 2 * (self.chain * self.calls) as usize;
        ensure!(
            entries == want,
            "new flow: conntrack has {entries} entries after the run, expected {want} \
             (2 per repetition): not every repetition created a flow"
        );
        expect_no_drops("new flow", &self.dp)?;
        let calls = f64::from(self.calls);
        Ok(Sample {
            kernel_ns: total.kernel_ns / calls,
            wall_ns: total.wall_ns / calls,
        })
    }
}

/// Conntrack reply hit + reverse NAT on every repetition: reply entries
/// written from userspace turn BACKEND → client into VIP → client and
/// VIP → client back into BACKEND → client.
struct Reply {
    dp: Datapath,
    from_backend: Vec<u8>,
    from_vip: Vec<u8>,
    repeat: u32,
}

impl Reply {
    fn new(repeat: u32) -> anyhow::Result<Self> {
        let mut dp = two_cycle_datapath();
        let peer = client(40_001);
        let reply_to = |nat: SocketAddrV4| CtEntry {
            nat_addr: addr_to_net(*nat.ip()),
            nat_port: port_to_net(nat.port()),
            direction: CT_REPLY,
            _pad: 0,
            service_id: 1,
            backend_id: Datapath::backend_id(1, 0),
        };
        dp.insert_conntrack(flow_key(BACKEND, peer), reply_to(VIP));
        dp.insert_conntrack(flow_key(VIP, peer), reply_to(BACKEND));
        let from_backend = syn_ack(BACKEND, peer);
        let from_vip = syn_ack(VIP, peer);
        // Each step of the cycle, checked once: a repeated run cannot stall.
        run_once(&dp, "reply set-up (backend)", &from_backend, &from_vip)?;
        run_once(&dp, "reply set-up (VIP)", &from_vip, &from_backend)?;
        Ok(Reply {
            dp,
            from_backend,
            from_vip,
            repeat,
        })
    }
}

impl Case for Reply {
    fn run(&mut self) -> anyhow::Result<Sample> {
        let timed = time_test_run(self.dp.pod_ingress(), &self.from_backend, self.repeat)?;
        expect_verdict("reply", timed.verdict, TC_ACT_OK)?;
        let want = cycle_end(&self.from_backend, &self.from_vip, self.repeat);
        expect_frame("reply", &timed.out, want)?;
        ensure!(self.dp.conntrack_len() == 2, "reply: conntrack changed");
        expect_no_drops("reply", &self.dp)?;
        Ok(timed.sample)
    }
}

// ------------------------------------------------- part 1: the measurement

struct PacketBench {
    label: String,
    program: &'static str,
    /// Repetitions per run, as the table shows them.
    repeat: String,
    case: Box<dyn Case>,
}

fn bench(label: &str, program: &'static str, repeat: String, case: Box<dyn Case>) -> PacketBench {
    PacketBench {
        label: label.to_string(),
        program,
        repeat,
        case,
    }
}

struct PacketRow {
    label: String,
    program: &'static str,
    repeat: String,
    kernel_ns: Summary,
    wall_ns: Summary,
}

fn packet_benches(plan: &Plan) -> anyhow::Result<Vec<PacketBench>> {
    let frame = syn(client(40_003), NOT_A_SERVICE);
    let repeat = plan.repeat;
    let (cold, warm, calls) = (plan.cold_chain, plan.warm_chain, plan.warm_calls);
    Ok(vec![
        bench(
            "floor (empty XDP)",
            "floor_xdp",
            repeat.to_string(),
            Box::new(Floor::load(true, frame.clone(), repeat)?),
        ),
        bench(
            "floor (empty tc)",
            "floor_tc",
            repeat.to_string(),
            Box::new(Floor::load(false, frame, repeat)?),
        ),
        bench(
            "miss (not a service)",
            "pod_ingress",
            repeat.to_string(),
            Box::new(Miss::new(repeat)),
        ),
        bench(
            "established (CT hit + DNAT)",
            "pod_ingress",
            repeat.to_string(),
            Box::new(Established::new(repeat)?),
        ),
        bench(
            &format!("new flow (select + CT insert + DNAT), {cold}-service chain"),
            "pod_ingress",
            cold.to_string(),
            Box::new(NewFlow::new(cold, 1)),
        ),
        bench(
            &format!("new flow (select + CT insert + DNAT), {warm}-service chain"),
            "pod_ingress",
            format!("{warm} × {calls} calls"),
            Box::new(NewFlow::new(warm, calls)),
        ),
        bench(
            "reply (CT reply hit + reverse NAT)",
            "pod_ingress",
            repeat.to_string(),
            Box::new(Reply::new(repeat)?),
        ),
    ])
}

/// Every path once per round, rounds repeated: a slow moment of the machine
/// hits all paths alike instead of one path's every run.
fn measure_packet_costs(plan: &Plan) -> anyhow::Result<Vec<PacketRow>> {
    let mut benches = packet_benches(plan)?;
    for b in &mut benches {
        b.case
            .run()
            .with_context(|| format!("warm-up of {}", b.label))?;
    }
    let mut samples: Vec<Vec<Sample>> = benches.iter().map(|_| Vec::new()).collect();
    for round in 0..plan.runs {
        eprintln!("kxdp-bench: packet round {}/{}", round + 1, plan.runs);
        for (b, s) in benches.iter_mut().zip(&mut samples) {
            s.push(b.case.run().with_context(|| b.label.clone())?);
        }
    }
    let column =
        |s: &[Sample], f: fn(&Sample) -> f64| summarize(&s.iter().map(f).collect::<Vec<_>>());
    Ok(benches
        .into_iter()
        .zip(samples)
        .map(|(b, s)| PacketRow {
            kernel_ns: column(&s, |t| t.kernel_ns),
            wall_ns: column(&s, |t| t.wall_ns),
            label: b.label,
            program: b.program,
            repeat: b.repeat,
        })
        .collect())
}

// -------------------------------------------- part 2: short TCP connections

/// One `kxdp-peer conn-rate` result line.
struct ConnSample {
    conns: u64,
    rate: f64,
    p50_us: f64,
    p99_us: f64,
    errors: u64,
}

fn parse_conn_line(line: &str) -> anyhow::Result<ConnSample> {
    let fields: BTreeMap<&str, &str> = line
        .split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .collect();
    let get = |key: &str| -> anyhow::Result<f64> {
        let value = fields
            .get(key)
            .with_context(|| format!("no {key} in {line:?}"))?;
        value
            .parse()
            .with_context(|| format!("bad {key} in {line:?}"))
    };
    Ok(ConnSample {
        conns: get("conns")? as u64,
        rate: get("rate")?,
        p50_us: get("p50_us")?,
        p99_us: get("p99_us")?,
        errors: get("errors")? as u64,
    })
}

fn conn_rate(
    s: &EchoScenario,
    pod: &str,
    target: &str,
    ms: u64,
    plan: &Plan,
) -> anyhow::Result<ConnSample> {
    let args = [
        "conn-rate",
        target,
        &ms.to_string(),
        &plan.concurrency.to_string(),
    ];
    let line = s
        .from_pod(pod, peer_bin(), &args)
        .map_err(|e| anyhow::anyhow!("conn-rate from {pod} to {target}: {e}"))?;
    let sample = parse_conn_line(&line)?;
    ensure!(
        sample.conns > 0,
        "conn-rate from {pod} to {target}: no connection succeeded ({line})"
    );
    Ok(sample)
}

struct ConnRow {
    label: String,
    rate: Summary,
    p50_us: Summary,
    p99_us: Summary,
    conns: u64,
    errors: u64,
}

fn conn_row(label: String, samples: &[ConnSample]) -> ConnRow {
    let column = |f: fn(&ConnSample) -> f64| summarize(&samples.iter().map(f).collect::<Vec<_>>());
    ConnRow {
        label,
        rate: column(|s| s.rate),
        p50_us: column(|s| s.p50_us),
        p99_us: column(|s| s.p99_us),
        conns: samples.iter().map(|s| s.conns).sum(),
        errors: samples.iter().map(|s| s.errors).sum(),
    }
}

struct ConnReport {
    rows: [ConnRow; 2],
    /// kxdp / direct per round (paired), for rate, p50 and p99.
    ratios: [Summary; 3],
}

/// The pod that runs the direct (no proxy) measurement: not the ClusterIP
/// client, so the two measurements share no conntrack state.
const DIRECT_POD: &str = "direct";

fn measure_conn_rate(plan: &Plan) -> anyhow::Result<ConnReport> {
    let mut s = EchoScenario::new(3, peer_bin())?;
    s.node.add_pod(DIRECT_POD, 5)?;
    // The load generator closes first (see `kxdp-peer serve`), so its
    // TIME_WAIT sockets would exhaust the ephemeral ports within seconds;
    // reuse them, as load generators do.
    for pod in ["client", DIRECT_POD] {
        let netns = s.node.pod(pod).netns.clone();
        s.node
            .exec_ok(&netns, &["sysctl", "-q", "-w", "net.ipv4.tcp_tw_reuse=1"])?;
    }
    let _agent = s.start_agent()?;
    let vip = format!("{}:80", s.vip);
    let direct = format!("{}:8080", s.backends[0]);
    // Warm-up: neighbour entries, page cache, first connections.
    conn_rate(&s, "client", &vip, 300, plan)?;
    conn_rate(&s, DIRECT_POD, &direct, 300, plan)?;
    let (mut through, mut bypass) = (Vec::new(), Vec::new());
    for round in 0..plan.conn_rounds {
        eprintln!(
            "kxdp-bench: connection round {}/{}",
            round + 1,
            plan.conn_rounds
        );
        through.push(conn_rate(&s, "client", &vip, plan.conn_ms, plan)?);
        bypass.push(conn_rate(&s, DIRECT_POD, &direct, plan.conn_ms, plan)?);
    }
    let ratio = |f: fn(&ConnSample) -> f64| {
        let per_round: Vec<f64> = through
            .iter()
            .zip(&bypass)
            .map(|(a, b)| f(a) / f(b))
            .collect();
        summarize(&per_round)
    };
    let ratios = [ratio(|s| s.rate), ratio(|s| s.p50_us), ratio(|s| s.p99_us)];
    Ok(ConnReport {
        rows: [
            conn_row(format!("client → ClusterIP {vip} (kxdp)"), &through),
            conn_row(format!("client → pod {direct} (direct)"), &bypass),
        ],
        ratios,
    })
}

// ------------------------------------------------------------------ report

struct Machine {
    kernel: String,
    nproc: String,
    cpu: String,
    /// JIT and BPF statistics switches: both change per-program cost.
    bpf: String,
    /// Spectre v2 mitigation: retpolines make every indirect call dearer.
    mitigation: String,
    date: String,
    commit: String,
}

/// A command's trimmed stdout, or "unknown".
fn output_of(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into())
}

fn read_trimmed(path: &str) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

/// The CPU model, with "(virtual machine)" when the CPU says so.
fn cpu_model() -> String {
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

fn machine() -> Machine {
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

fn packet_table(rows: &[PacketRow]) -> String {
    let floor = rows
        .iter()
        .find(|r| r.program == "floor_tc")
        .map(|r| r.kernel_ns.median)
        .expect("the tc floor is measured");
    let mut t = String::from(
        "| path | program | repeat | ns/packet (median) | min | max | × tc floor | above tc floor (ns) | wall ns/packet (median) |\n\
         |---|---|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for r in rows {
        let k = r.kernel_ns;
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

fn conn_table(report: &ConnReport) -> String {
    let mut t = String::from(
        "| path | conn/s median | min | max | p50 µs (median) | p99 µs (median) | connections | errors |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for r in &report.rows {
        t.push_str(&format!(
            "| {} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {} | {} |\n",
            r.label,
            r.rate.median,
            r.rate.min,
            r.rate.max,
            r.p50_us.median,
            r.p99_us.median,
            r.conns,
            r.errors,
        ));
    }
    let [rate, p50, p99] = report.ratios;
    t.push_str(&format!(
        "| **kxdp / direct** (median of per-round ratios) | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} | | |\n",
        rate.median, rate.min, rate.max, p50.median, p99.median,
    ));
    t
}

fn render_report(
    plan: &Plan,
    quick: bool,
    m: &Machine,
    packets: &[PacketRow],
    conns: &ConnReport,
) -> String {
    let mode = if quick {
        "a `--quick` run; without `--quick` it makes the full one"
    } else {
        "a full run"
    };
    let conn_secs = plan.conn_ms as f64 / 1000.0;
    format!(
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

## 1. Per-packet cost of `pod_ingress` (BPF_PROG_TEST_RUN)

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
  else: they are the cost of the harness itself. `pod_ingress` is a tc program, so its rows are compared with the tc
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
    and a service on 10.0.2.1:8080 whose only backend is 10.96.0.10:80. One warm-up packet client → VIP and one
    client → backend (repeat 1 each) create both forward conntrack entries. The timed run sends client → VIP: each
    repetition is a service hit, a conntrack forward hit and a DNAT (address, port, IPv4 and TCP checksums) that
    alternately translates VIP → backend and backend → VIP. Checked: the service packet counters (incremented only after
    a successful DNAT) grew by exactly `repeat`, no conntrack entry was created, the final frame is the expected end of
    the cycle byte for byte.
  - **new flow**: a chain of K services 10.100.0.1:80 → 10.100.0.2:80 → ... → VIP_K, each service's only backend
    being the next VIP, and repeat = K: repetition i is the first packet of a flow to VIP_i, so it runs the service
    lookup, a conntrack miss, backend selection, two conntrack inserts (reply, then forward) and the DNAT to VIP_(i+1).
    Two variants: K = {cold} with one call per run, where every repetition looks up a different service, selection slot
    and backend, so those lookups mostly miss the CPU caches (as on a node whose new flows go to many services); and
    K = {warm} with {calls} calls per run, where the few service entries stay cached and only the conntrack work is new
    (ns/packet is then the mean over the calls). The conntrack map is emptied before every run, so every run inserts
    into the same state, and every call uses a new client source port, so no flow was seen before. Checked: after each
    run the conntrack map holds exactly 2 entries per repetition (one forward, one reply), every call's final frame is
    addressed to VIP_K, no drops.
  - **reply**: two conntrack reply entries written from userspace (direction CT_REPLY): 10.0.2.1:8080 → client
    restores the source to 10.96.0.10:80, and 10.96.0.10:80 → client restores it to 10.0.2.1:8080. The timed run
    sends a SYN-ACK from the backend: each repetition is a service miss (the destination is the client), a conntrack
    reply hit and a source rewrite, alternating between the two entries. Checked: each step of the cycle once with
    repeat 1 beforehand (the path is deterministic, so a repeated run cannot stall), the final frame, an unchanged
    conntrack map, no drops.

## 2. Short TCP connections per second (namespace mini node, real agent)

{conn_table}
### Method

- A mini node (`tests/src/netns.rs`): network namespaces for the node and each pod, joined by veth pairs; the real
  `kxdp agent` (`$KXDP_BIN`) runs in the node namespace with tcx on every pod interface, fed the `echo` Service
  (ClusterIP port 80 → targetPort 8080) with three ready backend pods running `kxdp-peer serve` (one thread per
  connection; it answers a short HTTP response and closes).
- Load: `kxdp-peer conn-rate ADDR:PORT {conn_ms} {concurrency}` in a client pod: {concurrency} threads, each one
  connection after another (connect, send `GET / HTTP/1.1`, read until the server closes, close) for
  {conn_secs:.1} s. Rate = successful connections / elapsed seconds; p50/p99 are per-connection latencies from connect to
  EOF. Connect, read and write each time out after 1 s; a timed-out or refused connection counts as an error.
- (a) **kxdp**: client pod → ClusterIP:80, DNATed by `pod_ingress` to one of three backends, replies reverse-NATed.
  (b) **direct**: a second, identical client pod → backend pod b1's IP:8080, no Service involved: the no-proxy floor
  (its packets still pass `pod_ingress`, which finds no service and no conntrack entry). One asymmetry remains: (a)
  spreads connections over three server processes, (b) sends them all to one. One warm-up of 0.3 s each, then
  {rounds} rounds alternating (a), (b); the table gives the median (and min, max) over the rounds, and the ratios are
  medians of the per-round kxdp / direct ratios (rate: higher is better; latencies: lower is better).
- The client closes each connection first (the server waits for it), so the client pods run with
  `net.ipv4.tcp_tw_reuse=1`: without it their TIME_WAIT sockets exhaust the ephemeral ports within seconds.
- Every veth in the mini node has checksum offloads off (`ethtool -K tx off rx off`, done by the MiniNode so that a
  broken checksum rewrite cannot hide behind a partial checksum); this makes both paths pay for software checksums.
- Client, servers, agent and kernel share the machine's {nproc} CPUs; nothing is pinned.
- The direct measurement runs from its own, identical pod so the two measurements share no conntrack state. (Before
  the datapath dropped stale reply entries on a direct SYN, a direct connection that reused a client port of an
  earlier ClusterIP connection had its SYN-ACK rewritten to come from the VIP and stalled.)
- kube-proxy baselines (iptables and nftables modes on the same mini node) come with the benchmark issue.
"#,
        date = m.date,
        kernel = m.kernel,
        nproc = m.nproc,
        cpu = m.cpu,
        bpf = m.bpf,
        mitigation = m.mitigation,
        commit = m.commit,
        packet_table = packet_table(packets),
        runs = plan.runs,
        frame_len = FRAME_LEN,
        cold = plan.cold_chain,
        warm = plan.warm_chain,
        calls = plan.warm_calls,
        conn_table = conn_table(conns),
        conn_ms = plan.conn_ms,
        concurrency = plan.concurrency,
        rounds = plan.conn_rounds,
    )
}

fn main() -> anyhow::Result<()> {
    let options = parse_args()?;
    require_root("kxdp-bench");
    let plan = Plan::new(options.quick);
    let machine = machine();

    eprintln!("kxdp-bench: part 1, per-packet cost through BPF_PROG_TEST_RUN");
    let packets = measure_packet_costs(&plan)?;
    println!("\n{}", packet_table(&packets));

    eprintln!("kxdp-bench: part 2, short TCP connections in a mini node");
    let conns = measure_conn_rate(&plan)?;
    println!("{}", conn_table(&conns));

    let report = render_report(&plan, options.quick, &machine, &packets, &conns);
    if let Some(dir) = options.out.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(&options.out, report)
        .with_context(|| format!("writing {}", options.out.display()))?;
    println!("report written to {}", options.out.display());
    Ok(())
}
