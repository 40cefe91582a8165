//! Part 2: through a ClusterIP in the namespace mini node, with kxdp (its
//! socket hooks, and per packet) and with the rulesets kube-proxy writes, while N other Services exist: short
//! TCP connections per second with their latency, and (at the smallest N)
//! one bulk TCP stream; next to the same client talking to the pod IP with
//! no proxy at all (the floor).

use std::net::{Ipv6Addr, SocketAddr, SocketAddrV4};

use aya::sys::{enable_stats, Stats};

use super::*;

/// The `sink` Service for the stream test: port 5001 on every backend.
const SINK_VIP: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 9);
const SINK_PORT: u16 = 5001;
/// `echo`'s IPv6 ClusterIP: the Service is dual-stack, for the IPv6 rows.
const ECHO_VIP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x10, 0x96, 0, 0, 0, 0, 0x80);
/// The paths measured over IPv6 too: no proxy and kxdp's two.
const IPV6_PROXIES: [Proxy; 3] = [Proxy::None, Proxy::Kxdp, Proxy::KxdpPerPacket];

/// One `kxdp-peer conn-rate` result line.
pub(crate) struct ConnSample {
    pub(crate) conns: u64,
    pub(crate) rate: f64,
    pub(crate) p50_us: f64,
    pub(crate) p99_us: f64,
    pub(crate) errors: u64,
}

/// `key=value` fields of a peer's result line.
fn fields(line: &str) -> BTreeMap<&str, &str> {
    line.split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .collect()
}

fn field(line: &str, key: &str) -> anyhow::Result<f64> {
    let value = *fields(line)
        .get(key)
        .with_context(|| format!("no {key} in {line:?}"))?;
    value
        .parse()
        .with_context(|| format!("bad {key} in {line:?}"))
}

pub(crate) fn parse_conn_line(line: &str) -> anyhow::Result<ConnSample> {
    Ok(ConnSample {
        conns: field(line, "conns")? as u64,
        rate: field(line, "rate")?,
        p50_us: field(line, "p50_us")?,
        p99_us: field(line, "p99_us")?,
        errors: field(line, "errors")? as u64,
    })
}

fn conn_rate(s: &EchoScenario, target: &str, ms: u64, plan: &Plan) -> anyhow::Result<ConnSample> {
    let args = [
        "conn-rate",
        target,
        &ms.to_string(),
        &plan.concurrency.to_string(),
    ];
    let line = s
        .from_client_in_cgroup(peer_bin(), &args)
        .map_err(|e| anyhow::anyhow!("conn-rate to {target}: {e}"))?;
    let sample = parse_conn_line(&line)?;
    ensure!(
        sample.conns > 0,
        "conn-rate to {target}: no connection succeeded ({line})"
    );
    Ok(sample)
}

/// One bulk stream; its goodput in Gbit/s.
fn stream(s: &EchoScenario, target: &str, ms: u64) -> anyhow::Result<f64> {
    let line = s
        .from_client_in_cgroup(peer_bin(), &["stream", target, &ms.to_string()])
        .map_err(|e| anyhow::anyhow!("stream to {target}: {e}"))?;
    field(&line, "gbps")
}

/// What kxdp's programs took of a stream, measured in a stream of its own:
/// with `BPF_ENABLE_STATS` on, every program run also reads the clock
/// twice, which the timed streams must not pay.
#[derive(Clone, Copy)]
pub(crate) struct ProgramShare {
    /// The programs' run time over the stream's duration: the most they
    /// can take from it (less where another CPU has time to spare; the
    /// clock reads of the statistics are in it too).
    pub(crate) share: f64,
    /// Their mean run time a run, ns.
    pub(crate) ns_per_run: f64,
}

fn kxdp_program_share(s: &EchoScenario, target: &str, ms: u64) -> anyhow::Result<ProgramShare> {
    let _stats = enable_stats(Stats::RunTime).context("BPF_ENABLE_STATS")?;
    let before = kxdp_run_stats()?;
    let started = Instant::now();
    stream(s, target, ms)?;
    let wall = started.elapsed();
    let after = kxdp_run_stats()?;
    // Programs loaded throughout only: one that came or went in between
    // (an earlier agent's being freed) has no difference to take.
    let (mut time, mut runs) = (Duration::ZERO, 0u64);
    for (id, (time_after, runs_after)) in &after {
        if let Some((time_before, runs_before)) = before.get(id) {
            time += time_after.saturating_sub(*time_before);
            runs += runs_after.saturating_sub(*runs_before);
        }
    }
    Ok(ProgramShare {
        share: time.as_secs_f64() / wall.as_secs_f64(),
        ns_per_run: time.as_nanos() as f64 / runs.max(1) as f64,
    })
}

/// The run time and run count on record of every loaded kxdp program, by
/// id: the pod and NIC programs and the socket hooks, by their names'
/// prefixes (the kernel keeps 15 characters of a name).
fn kxdp_run_stats() -> anyhow::Result<BTreeMap<u32, (Duration, u64)>> {
    let mut stats = BTreeMap::new();
    for info in aya::programs::loaded_programs() {
        let info = info.context("listing loaded programs")?;
        let name = info.name_as_str().unwrap_or_default();
        if ["pod_", "nic_", "sock_"]
            .iter()
            .any(|p| name.starts_with(p))
        {
            stats.insert(info.id(), (info.run_time(), info.run_count()));
        }
    }
    Ok(stats)
}

pub(crate) struct ConnRow {
    pub(crate) rate: Summary,
    pub(crate) p50_us: Summary,
    pub(crate) p99_us: Summary,
    pub(crate) conns: u64,
    pub(crate) errors: u64,
}

pub(crate) fn conn_row(samples: &[ConnSample]) -> ConnRow {
    let column = |f: fn(&ConnSample) -> f64| summarize(&samples.iter().map(f).collect::<Vec<_>>());
    ConnRow {
        rate: column(|s| s.rate),
        p50_us: column(|s| s.p50_us),
        p99_us: column(|s| s.p99_us),
        conns: samples.iter().map(|s| s.conns).sum(),
        errors: samples.iter().map(|s| s.errors).sum(),
    }
}

/// Every proxy at one number of other Services.
pub(crate) struct ScaleRow {
    pub(crate) others: usize,
    pub(crate) modes: Vec<(Proxy, ConnRow)>,
}

impl ScaleRow {
    pub(crate) fn get(&self, proxy: Proxy) -> Option<&ConnRow> {
        self.modes.iter().find(|(p, _)| *p == proxy).map(|(_, r)| r)
    }

    /// Median connection rate of `proxy` over that of no proxy.
    pub(crate) fn rate_ratio(&self, proxy: Proxy) -> Option<f64> {
        Some(self.get(proxy)?.rate.median / self.get(Proxy::None)?.rate.median)
    }
}

/// One bulk stream (Gbit/s) with one proxy installed.
pub(crate) struct StreamRow {
    pub(crate) proxy: Proxy,
    /// Checksum and segmentation offloads on the veths (veth's default) or
    /// off (every MTU-sized packet crosses the programs and rules alone).
    pub(crate) offloads: bool,
    /// Through the `sink` Service (to the pod IP for `Proxy::None`).
    pub(crate) to_service: Summary,
    /// To a pod IP while the proxy is installed: what the proxy costs
    /// traffic that is not for a Service (`None` for `Proxy::None`).
    pub(crate) to_pod: Option<Summary>,
    /// kxdp's rows: what its programs took of a stream through the
    /// Service and of one to the pod IP (the cycles' medians).
    pub(crate) program_share: Option<(ProgramShare, ProgramShare)>,
}

pub(crate) struct ConnReport {
    pub(crate) rows: Vec<ScaleRow>,
    /// The same short connections over IPv6 (at `rows[0].others` other
    /// Services), with no proxy and with kxdp's two paths.
    pub(crate) ipv6: ScaleRow,
    /// Share of CPU time the hypervisor took from this machine while the
    /// part ran: a measure of how noisy the figures are.
    pub(crate) steal: f64,
    /// One bulk stream per proxy, at `rows[0].others` other Services.
    pub(crate) streams: Vec<StreamRow>,
}

impl ConnReport {
    pub(crate) fn stream(&self, proxy: Proxy, offloads: bool) -> Option<&StreamRow> {
        self.streams
            .iter()
            .find(|r| r.proxy == proxy && r.offloads == offloads)
    }

    /// Median stream rate through `proxy`'s Service over the no-proxy one.
    pub(crate) fn stream_ratio(&self, proxy: Proxy, offloads: bool) -> Option<f64> {
        let through = self.stream(proxy, offloads)?.to_service.median;
        Some(through / self.stream(Proxy::None, offloads)?.to_service.median)
    }
}

/// Endpoints of each other Service. Packets to `echo` never reach another
/// Service's endpoints, so one each shows the cost of N Services while
/// keeping kube-proxy's loads short (and within what iptables-legacy can
/// hold at 30,000 Services; with 10 endpoints each it cannot, see part 3).
const OTHER_ENDPOINTS: usize = 1;

/// The mini node one Service count is measured on: the `echo` Service (3
/// backends, port 80 → 8080) and `sink` (port 5001 on the same pods) among
/// `others` Services of the control-plane benchmark's shape, with
/// `OTHER_ENDPOINTS` endpoints each.
struct Bed {
    s: EchoScenario,
    /// Every Service as kube-proxy sees it, `echo` and `sink` in the middle
    /// of the list (iptables mode matches KUBE-SERVICES rules in order; in a
    /// real cluster the order is arbitrary, so the middle is the average).
    kube_proxy_services: Vec<KpService>,
}

impl Bed {
    fn new(others: usize) -> anyhow::Result<Self> {
        let mut s = EchoScenario::new(3, peer_bin())?;
        s.make_dual_stack(ECHO_VIP6)?;
        s.add_sink_service(SINK_VIP, SINK_PORT)?;
        // The client closes first (see `kxdp-peer serve`), so its TIME_WAIT
        // sockets would exhaust the ephemeral ports within seconds; reuse
        // them, as load generators do.
        let client = s.node.pod("client").netns.clone();
        s.node
            .exec_ok(&client, &["sysctl", "-q", "-w", "net.ipv4.tcp_tw_reuse=1"])?;

        let mut kube_proxy_services: Vec<KpService> = (0..others)
            .map(|i| {
                let mut service = kp_service(i, 0);
                service.endpoints.truncate(OTHER_ENDPOINTS);
                service
            })
            .collect();
        ensure!(
            kube_proxy_services
                .iter()
                .all(|k| k.cluster_ip != s.vip && k.cluster_ip != SINK_VIP),
            "echo's ClusterIP {} collides with another Service",
            s.vip
        );
        let on_backends = |port| {
            s.backends
                .iter()
                .map(|b| SocketAddrV4::new(*b, port))
                .collect()
        };
        let echo = KpService {
            namespace: "default".into(),
            name: "echo".into(),
            port_name: "80-8080".into(),
            cluster_ip: s.vip,
            port: 80,
            protocol: "tcp",
            endpoints: on_backends(8080),
        };
        let sink = KpService {
            namespace: "default".into(),
            name: "sink".into(),
            port_name: "sink".into(),
            cluster_ip: SINK_VIP,
            port: SINK_PORT,
            protocol: "tcp",
            endpoints: on_backends(SINK_PORT),
        };
        kube_proxy_services.insert(others / 2, sink);
        kube_proxy_services.insert(others / 2, echo);

        // kxdp reads the same Services from manifests.
        s.write_manifest("others.yaml", &manifest_yaml(others, OTHER_ENDPOINTS))?;
        Ok(Self {
            s,
            kube_proxy_services,
        })
    }

    fn node_netns(&self) -> String {
        self.s.node.node_netns.clone()
    }

    /// Where the client connects for HTTP over IPv6.
    fn target6(&self, proxy: Proxy) -> String {
        match proxy {
            Proxy::None => SocketAddr::new(self.s.backends_ip6()[0].into(), 8080).to_string(),
            _ => SocketAddr::new(ECHO_VIP6.into(), 80).to_string(),
        }
    }

    /// Where the client connects for HTTP and for the stream.
    fn targets(&self, proxy: Proxy) -> (String, String) {
        match proxy {
            Proxy::None => (
                format!("{}:8080", self.s.backends[0]),
                format!("{}:{SINK_PORT}", self.s.backends[0]),
            ),
            _ => (
                format!("{}:80", self.s.vip),
                format!("{SINK_VIP}:{SINK_PORT}"),
            ),
        }
    }

    /// Installs `proxy`, runs `measure`, removes `proxy` again (also when
    /// `measure` failed).
    fn with_proxy<T>(
        &self,
        proxy: Proxy,
        measure: impl FnOnce() -> anyhow::Result<T>,
    ) -> anyhow::Result<T> {
        let netns = self.node_netns();
        match proxy {
            Proxy::None => measure(),
            Proxy::Kxdp | Proxy::KxdpPerPacket => {
                let socket_lb = if proxy == Proxy::Kxdp { "all" } else { "host" };
                let agent = self
                    .s
                    .start_agent_with(&["--socket-lb", socket_lb], Duration::from_secs(120))?;
                let result = measure();
                agent.stop()?;
                self.s.kxdp(&["unload"])?;
                result
            }
            _ => {
                // The measured Services exactly as kube-proxy writes them.
                let measured = |k: &KpService| k.namespace == "default";
                let rules = proxy.ruleset(&self.kube_proxy_services, &measured);
                let installed = load_rules(&netns, proxy.loader(), &rules);
                let result = installed.and_then(|_| measure());
                proxy.flush(&netns)?;
                result
            }
        }
    }
}

/// CPU time counters from the first line of /proc/stat: (stolen, total).
fn cpu_ticks() -> anyhow::Result<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    let ticks: Vec<u64> = stat
        .lines()
        .next()
        .context("empty /proc/stat")?
        .split_whitespace()
        .skip(1)
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    // user nice system idle iowait irq softirq steal (guest time is in user).
    ensure!(ticks.len() >= 8, "/proc/stat has no steal column");
    Ok((ticks[7], ticks[..8].iter().sum()))
}

pub(crate) fn measure_conn_rate(plan: &Plan) -> anyhow::Result<ConnReport> {
    let (steal_before, total_before) = cpu_ticks()?;
    let mut rows = Vec::new();
    let mut streams = Vec::new();
    let mut ipv6 = None;
    for (index, &others) in plan.conn_sizes.iter().enumerate() {
        let bed = Bed::new(others)?;
        let what = format!("with {others} other Services");
        let modes = measure_passes(&bed, &Proxy::ALL, &what, plan, |p| bed.targets(p).0)?;
        if index == 0 {
            for offloads in [false, true] {
                bed.s.node.set_offloads(offloads)?;
                streams.extend(measure_streams(&bed, offloads, plan)?);
            }
            bed.s.node.set_offloads(false)?;
            // The same short connections over IPv6, with no proxy and
            // kxdp's two paths.
            let modes = measure_passes(&bed, &IPV6_PROXIES, "over IPv6", plan, |p| bed.target6(p))?;
            ipv6 = Some(ScaleRow { others, modes });
        }
        rows.push(ScaleRow { others, modes });
    }
    let (steal_after, total_after) = cpu_ticks()?;
    let steal = (steal_after - steal_before) as f64 / (total_after - total_before).max(1) as f64;
    Ok(ConnReport {
        rows,
        ipv6: ipv6.context("no Service count to measure at")?,
        steal,
        streams,
    })
}

/// Short connections to `target(proxy)` for each of `proxies`, in passes
/// over all of them, so that a slow minute of the shared machine does not
/// land on one proxy only; `what` names the measurement in the progress.
fn measure_passes(
    bed: &Bed,
    proxies: &[Proxy],
    what: &str,
    plan: &Plan,
    target: impl Fn(Proxy) -> String,
) -> anyhow::Result<Vec<(Proxy, ConnRow)>> {
    let mut samples: Vec<Vec<ConnSample>> = proxies.iter().map(|_| Vec::new()).collect();
    for pass in 0..plan.conn_passes {
        for (&proxy, samples) in proxies.iter().zip(&mut samples) {
            eprintln!(
                "  {} {what}, pass {}/{}",
                proxy.label(),
                pass + 1,
                plan.conn_passes
            );
            let http = target(proxy);
            bed.with_proxy(proxy, || {
                // Warm-up: neighbour entries, page cache, first connections.
                conn_rate(&bed.s, &http, 300, plan)?;
                for _ in 0..plan.conn_rounds {
                    samples.push(conn_rate(&bed.s, &http, plan.conn_ms, plan)?);
                }
                Ok(())
            })?;
        }
    }
    Ok(proxies
        .iter()
        .zip(&samples)
        .map(|(&proxy, samples)| (proxy, conn_row(samples)))
        .collect())
}

/// One bulk stream per proxy, in cycles (each proxy installed in turn, once
/// per cycle) so that the machine's drift over minutes spreads over all of
/// them; under each proxy one stream through the Service and one to the pod
/// IP, back to back.
fn measure_streams(bed: &Bed, offloads: bool, plan: &Plan) -> anyhow::Result<Vec<StreamRow>> {
    let direct = bed.targets(Proxy::None).1;
    let mut samples: Vec<StreamSamples> = vec![StreamSamples::default(); Proxy::ALL.len()];
    for cycle in 0..plan.stream_rounds {
        eprintln!(
            "  one TCP stream per proxy, offloads {}, cycle {}/{}",
            offloads_label(offloads),
            cycle + 1,
            plan.stream_rounds
        );
        for (proxy, samples) in Proxy::ALL.into_iter().zip(&mut samples) {
            let bulk = bed.targets(proxy).1;
            bed.with_proxy(proxy, || {
                samples
                    .to_service
                    .push(stream(&bed.s, &bulk, plan.stream_ms)?);
                if proxy != Proxy::None {
                    samples
                        .to_pod
                        .push(stream(&bed.s, &direct, plan.stream_ms)?);
                }
                if matches!(proxy, Proxy::Kxdp | Proxy::KxdpPerPacket) {
                    let service = kxdp_program_share(&bed.s, &bulk, plan.stream_ms)?;
                    let pod = kxdp_program_share(&bed.s, &direct, plan.stream_ms)?;
                    samples.shares.push((service, pod));
                }
                Ok(())
            })?;
        }
    }
    Ok(Proxy::ALL
        .into_iter()
        .zip(samples)
        .map(|(proxy, samples)| {
            let median = |f: &dyn Fn(&(ProgramShare, ProgramShare)) -> f64| {
                median_of(samples.shares.iter().map(f).collect())
            };
            let share = |pick: fn(&(ProgramShare, ProgramShare)) -> &ProgramShare| ProgramShare {
                share: median(&|s| pick(s).share),
                ns_per_run: median(&|s| pick(s).ns_per_run),
            };
            StreamRow {
                proxy,
                offloads,
                to_service: summarize(&samples.to_service),
                to_pod: (!samples.to_pod.is_empty()).then(|| summarize(&samples.to_pod)),
                program_share: (!samples.shares.is_empty())
                    .then(|| (share(|s| &s.0), share(|s| &s.1))),
            }
        })
        .collect())
}

/// One proxy's streams over the cycles.
#[derive(Clone, Default)]
struct StreamSamples {
    to_service: Vec<f64>,
    to_pod: Vec<f64>,
    /// kxdp's programs' share of a stream: (through the Service, to the pod IP).
    shares: Vec<(ProgramShare, ProgramShare)>,
}
