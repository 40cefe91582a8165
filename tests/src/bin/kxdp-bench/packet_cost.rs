//! Part 1: the measurement, every path once per round.

use super::*;

/// NodePort new flows per run (one per call): 300 per backend of the 16,
/// well within each backend's 4536 SNAT ports, which stay taken while their
/// flows look alive (the conntrack map is emptied before each run).
const NODEPORT_CALLS: u32 = 4_800;

/// DATA chunk values of the SCTP rows: a small one, whose frame is TCP's
/// minimum size (60 bytes), and a full-size packet's.
pub(crate) const SCTP_SMALL_DATA: usize = 4;
pub(crate) const SCTP_LARGE_DATA: usize = 1_400;

/// Labels of the floor rows, which the other rows name as their baseline.
pub(crate) const FLOOR_XDP: &str = "floor (empty XDP)";
pub(crate) const FLOOR_TC: &str = "floor (empty tc)";
pub(crate) const FLOOR_XDP_SINGLE: &str = "floor (empty XDP), one repetition per call";
/// The established path with `kxdp monitor` listening for every event.
pub(crate) const MONITORED_ESTABLISHED: &str = "monitor listening: established (CT hit + DNAT)";

pub(crate) struct PacketBench {
    pub(crate) label: String,
    pub(crate) program: &'static str,
    /// Label of the floor row this row is compared with.
    pub(crate) floor: &'static str,
    /// Repetitions per run, as the table shows them.
    pub(crate) repeat: String,
    pub(crate) case: Box<dyn Case>,
}

pub(crate) fn bench(
    label: &str,
    program: &'static str,
    repeat: String,
    case: Box<dyn Case>,
) -> PacketBench {
    let floor = match program {
        NIC_INGRESS => FLOOR_XDP_SINGLE,
        "floor_xdp" => FLOOR_XDP,
        _ => FLOOR_TC,
    };
    PacketBench {
        label: label.to_string(),
        program,
        floor,
        repeat,
        case,
    }
}

pub(crate) struct PacketRow {
    pub(crate) label: String,
    pub(crate) program: &'static str,
    pub(crate) floor: &'static str,
    pub(crate) repeat: String,
    pub(crate) kernel_ns: Summary,
    pub(crate) wall_ns: Summary,
}

/// `nic` is the NIC of the `nic_netns` the calling thread is in.
pub(crate) fn packet_benches(plan: &Plan, nic: u32) -> anyhow::Result<Vec<PacketBench>> {
    let frame = syn(client(40_003), NOT_A_SERVICE);
    let repeat = plan.repeat;
    let single_calls = NODEPORT_CALLS;
    let mut floor_single = bench(
        FLOOR_XDP_SINGLE,
        "floor_xdp",
        format!("1 × {single_calls} calls"),
        Box::new(Floor::load(true, frame.clone(), 1, single_calls)?),
    );
    floor_single.floor = FLOOR_XDP_SINGLE;
    let mut benches = vec![
        bench(
            FLOOR_XDP,
            "floor_xdp",
            repeat.to_string(),
            Box::new(Floor::load(true, frame.clone(), repeat, 1)?),
        ),
        bench(
            FLOOR_TC,
            "floor_tc",
            repeat.to_string(),
            Box::new(Floor::load(false, frame, repeat, 1)?),
        ),
        bench(
            "miss (not a service, on a Service's port)",
            POD_INGRESS,
            repeat.to_string(),
            Box::new(Miss::new(repeat, NOT_A_SERVICE)),
        ),
        bench(
            "miss (not a service, ports no Service uses)",
            POD_INGRESS,
            repeat.to_string(),
            Box::new(Miss::new(repeat, NO_SERVICE_PORT)),
        ),
    ];
    // The pod paths in each family, SCTP's established ones right after
    // IPv4's (to compare with its TCP row), IPv6's after them.
    benches.extend(pod_paths(plan, Family::V4)?);
    benches.extend(sctp_paths(plan)?);
    benches.extend(pod_paths(plan, Family::V6)?);
    benches.push(bench(
        MONITORED_ESTABLISHED,
        POD_INGRESS,
        plan.repeat.to_string(),
        Box::new(Established::new(plan.repeat, Family::V4, Flows::TCP, true)?),
    ));
    benches.push(floor_single);
    // The NIC paths in each family, IPv6's rows right after IPv4's.
    for family in [Family::V4, Family::V6] {
        benches.extend(nic_paths(plan, family, nic)?);
    }
    Ok(benches)
}

/// The NodePort paths of `family` on NIC `nic`: established and new flows,
/// to a local and a remote backend.
fn nic_paths(plan: &Plan, family: Family, nic: u32) -> anyhow::Result<Vec<PacketBench>> {
    let (warm, calls) = (plan.warm_chain, NODEPORT_CALLS);
    let label = |text: &str| family.label(text);
    let repeat = format!("1 × {calls} calls");
    Ok(vec![
        bench(
            &label("NodePort established, local backend (CT hit + DNAT)"),
            NIC_INGRESS,
            repeat.clone(),
            Box::new(NodePortEstablished::new(family, false, calls, nic)?),
        ),
        bench(
            &label("NodePort established, remote backend (CT hit + DNAT + SNAT + next hop learnt this second + XDP_TX)"),
            NIC_INGRESS,
            repeat.clone(),
            Box::new(NodePortEstablished::new(family, true, calls, nic)?),
        ),
        bench(
            &label(&format!("NodePort new flow, local backend (select + CT insert + DNAT), {warm} frontends")),
            NIC_INGRESS,
            repeat.clone(),
            Box::new(NodePortNewFlow::new(family, false, warm, calls, nic)),
        ),
        bench(
            &label(&format!("NodePort new flow, remote backend (+ SNAT + FIB lookup + XDP_TX), {warm} frontends")),
            NIC_INGRESS,
            repeat,
            Box::new(NodePortNewFlow::new(family, true, warm, calls, nic)),
        ),
    ])
}

/// The translating pod paths of `family`: established, new flows (cold and
/// warm chains, with affinity), reverse NAT.
fn pod_paths(plan: &Plan, family: Family) -> anyhow::Result<Vec<PacketBench>> {
    let repeat = plan.repeat;
    let (cold, warm, calls) = (plan.cold_chain, plan.warm_chain, plan.warm_calls);
    let label = |text: &str| family.label(text);
    Ok(vec![
        bench(
            &label("established (CT hit + DNAT)"),
            POD_INGRESS,
            repeat.to_string(),
            Box::new(Established::new(repeat, family, Flows::TCP, false)?),
        ),
        bench(
            &label(&format!("new flow (select + CT insert + DNAT), {cold}-service chain")),
            POD_INGRESS,
            cold.to_string(),
            Box::new(NewFlow::new(cold, 1, false, family)),
        ),
        bench(
            &label(&format!("new flow (select + CT insert + DNAT), {warm}-service chain")),
            POD_INGRESS,
            format!("{warm} × {calls} calls"),
            Box::new(NewFlow::new(warm, calls, false, family)),
        ),
        bench(
            &label(&format!("new flow with ClientIP affinity (affinity hit + CT insert + DNAT), {warm}-service chain")),
            POD_INGRESS,
            format!("{warm} × {calls} calls"),
            Box::new(NewFlow::new(warm, calls, true, family)),
        ),
        bench(
            &label("reply (CT reply hit + reverse NAT)"),
            POD_EGRESS,
            repeat.to_string(),
            Box::new(Reply::new(repeat, family)?),
        ),
    ])
}

/// The established pod path over SCTP (IPv4): DATA chunks whose DNAT
/// rewrites the port (and so updates the CRC32c) or keeps it, and one with
/// a full-size chunk, whose update costs what a small one's does.
fn sctp_paths(plan: &Plan) -> anyhow::Result<Vec<PacketBench>> {
    let repeat = plan.repeat;
    let established = |data_len, port_kept| -> anyhow::Result<Box<dyn Case>> {
        let transport = Transport::Sctp { data_len };
        let flows = Flows {
            transport,
            port_kept,
        };
        let case = Established::new(repeat, Family::V4, flows, false)?;
        Ok(Box::new(case))
    };
    Ok(vec![
        bench(
            "SCTP established (CT hit + DNAT + CRC32c update), port rewritten",
            POD_INGRESS,
            repeat.to_string(),
            established(SCTP_SMALL_DATA, false)?,
        ),
        bench(
            "SCTP established (CT hit + DNAT, no CRC32c update), port kept",
            POD_INGRESS,
            repeat.to_string(),
            established(SCTP_SMALL_DATA, true)?,
        ),
        bench(
            "SCTP established (CT hit + DNAT + CRC32c update), port rewritten, 1,400-byte DATA",
            POD_INGRESS,
            repeat.to_string(),
            established(SCTP_LARGE_DATA, false)?,
        ),
    ])
}

/// Every path once per round, rounds repeated: a slow moment of the machine
/// hits all paths alike instead of one path's every run.
///
/// Runs on a thread of its own inside a private `nic_netns`, whose NIC and
/// fixed neighbours give the NodePort paths' FIB lookups their answers.
pub(crate) fn measure_packet_costs(plan: &Plan) -> anyhow::Result<Vec<PacketRow>> {
    std::thread::scope(|scope| {
        scope
            .spawn(|| measure_in_nic_netns(plan, nic_netns::enter()))
            .join()
            .map_err(|_| anyhow::anyhow!("the packet benchmark thread panicked"))?
    })
}

fn measure_in_nic_netns(plan: &Plan, nic: u32) -> anyhow::Result<Vec<PacketRow>> {
    let mut benches = packet_benches(plan, nic)?;
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
            floor: b.floor,
            repeat: b.repeat,
        })
        .collect())
}
