//! Part 1: the measurement, every path once per round.

use super::*;

pub(crate) struct PacketBench {
    pub(crate) label: String,
    pub(crate) program: &'static str,
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
    PacketBench {
        label: label.to_string(),
        program,
        repeat,
        case,
    }
}

pub(crate) struct PacketRow {
    pub(crate) label: String,
    pub(crate) program: &'static str,
    pub(crate) repeat: String,
    pub(crate) kernel_ns: Summary,
    pub(crate) wall_ns: Summary,
}

pub(crate) fn packet_benches(plan: &Plan) -> anyhow::Result<Vec<PacketBench>> {
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
            POD_INGRESS,
            repeat.to_string(),
            Box::new(Miss::new(repeat)),
        ),
        bench(
            "established (CT hit + DNAT)",
            POD_INGRESS,
            repeat.to_string(),
            Box::new(Established::new(repeat)?),
        ),
        bench(
            &format!("new flow (select + CT insert + DNAT), {cold}-service chain"),
            POD_INGRESS,
            cold.to_string(),
            Box::new(NewFlow::new(cold, 1)),
        ),
        bench(
            &format!("new flow (select + CT insert + DNAT), {warm}-service chain"),
            POD_INGRESS,
            format!("{warm} × {calls} calls"),
            Box::new(NewFlow::new(warm, calls)),
        ),
        bench(
            "reply (CT reply hit + reverse NAT)",
            POD_EGRESS,
            repeat.to_string(),
            Box::new(Reply::new(repeat)?),
        ),
    ])
}

/// Every path once per round, rounds repeated: a slow moment of the machine
/// hits all paths alike instead of one path's every run.
pub(crate) fn measure_packet_costs(plan: &Plan) -> anyhow::Result<Vec<PacketRow>> {
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
