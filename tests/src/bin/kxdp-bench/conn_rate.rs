//! Part 2: short TCP connections per second in the namespace mini node.

use super::*;

/// One `kxdp-peer conn-rate` result line.
pub(crate) struct ConnSample {
    pub(crate) conns: u64,
    pub(crate) rate: f64,
    pub(crate) p50_us: f64,
    pub(crate) p99_us: f64,
    pub(crate) errors: u64,
}

pub(crate) fn parse_conn_line(line: &str) -> anyhow::Result<ConnSample> {
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

pub(crate) fn conn_rate(
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

pub(crate) struct ConnRow {
    pub(crate) label: String,
    pub(crate) rate: Summary,
    pub(crate) p50_us: Summary,
    pub(crate) p99_us: Summary,
    pub(crate) conns: u64,
    pub(crate) errors: u64,
}

pub(crate) fn conn_row(label: String, samples: &[ConnSample]) -> ConnRow {
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

pub(crate) struct ConnReport {
    pub(crate) rows: [ConnRow; 2],
    /// kxdp / direct per round (paired), for rate, p50 and p99.
    pub(crate) ratios: [Summary; 3],
}

/// The pod that runs the direct (no proxy) measurement: not the ClusterIP
/// client, so the two measurements share no conntrack state.
pub(crate) const DIRECT_POD: &str = "direct";

pub(crate) fn measure_conn_rate(plan: &Plan) -> anyhow::Result<ConnReport> {
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
