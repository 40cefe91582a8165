//! `kxdp status`: the programs attached (from the pinned links), how full the
//! maps are (from the pinned maps), and what the agent says of itself: its
//! `/healthz` answer, which holds its version and last successful sync. A
//! stopped agent shows as not answering while the datapath keeps serving.

use std::{
    fmt::Write as _,
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    path::Path,
    time::Duration,
};

use anyhow::Context as _;

use crate::{
    admin::HealthReport,
    cli::{Output, StatusArgs},
    dataplane::{
        fill::{self, Conntrack, CONNTRACK_COUNT_CAP},
        interfaces,
        maglev_arena::MAGLEV_ARENA,
        maps::{BpfMaps, AGENT_WRITTEN},
        nic, probe, sockets,
        xdp_mode::{xdp_mode, XdpMode},
        POD_INGRESS,
    },
};

/// How long the agent gets to answer.
const AGENT_TIMEOUT: Duration = Duration::from_secs(2);

/// One attached program.
#[derive(Debug, serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct Program {
    program: &'static str,
    /// None for the cgroup socket hooks.
    interface: Option<String>,
    ifindex: Option<u32>,
    /// e.g. "tcx ingress", "xdp", "cgroup connect4".
    hook: String,
    /// "tcx", "tc" (a classic tc filter, kernels without tcx), "xdp" or
    /// "cgroup": how the program is attached.
    mode: &'static str,
    /// For XDP: "native", "generic" (needs GRO off) or "offloaded", as the
    /// kernel reports it.
    xdp_mode: Option<&'static str>,
}

/// A kernel feature kxdp probes, and what its absence means.
#[derive(Debug, serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct KernelFeature {
    feature: &'static str,
    present: bool,
    since: &'static str,
    /// What kxdp does without it.
    without: &'static str,
}

#[derive(Debug, serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct MapFill {
    map: String,
    entries: u32,
    capacity: u32,
    /// False when counting stopped at a cap: there are at least `entries`.
    complete: bool,
}

#[derive(Debug, serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct AgentStatus {
    /// Where it was asked.
    address: String,
    /// Its `/healthz` answer; None when it did not answer.
    report: Option<HealthReport>,
    error: Option<String>,
}

#[derive(Debug, serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct Status {
    /// This binary's version.
    version: &'static str,
    pin_path: String,
    kernel: Vec<KernelFeature>,
    programs: Vec<Program>,
    maps: Vec<MapFill>,
    agent: AgentStatus,
}

fn programs(pin_path: &Path) -> anyhow::Result<Vec<Program>> {
    let links_dir = pin_path.join(crate::dataplane::LINKS_DIR);
    let context = || format!("reading links under {}", links_dir.display());
    let mut programs = Vec::new();
    for ((hook, interface), path) in interfaces::pinned_links(&links_dir).with_context(context)? {
        let direction = if hook == POD_INGRESS {
            "ingress"
        } else {
            "egress"
        };
        let mode = if interfaces::is_tc_pin(&path) {
            "tc"
        } else {
            "tcx"
        };
        programs.push(Program {
            program: hook.program,
            interface: Some(interface.name),
            ifindex: Some(interface.index),
            hook: format!("{mode} {direction}"),
            mode,
            xdp_mode: None,
        });
    }
    for interface in nic::pinned_links(&links_dir)
        .with_context(context)?
        .into_keys()
    {
        // An interface gone since shows as unknown.
        let xdp_mode = xdp_mode(interface.index).map_or("unknown", XdpMode::name);
        programs.push(Program {
            program: nic::NIC_PROGRAM,
            interface: Some(interface.name),
            ifindex: Some(interface.index),
            hook: "xdp".into(),
            mode: "xdp",
            xdp_mode: Some(xdp_mode),
        });
    }
    for program in sockets::pinned(&links_dir) {
        programs.push(Program {
            program,
            interface: None,
            ifindex: None,
            hook: format!("cgroup {}", program.trim_start_matches("sock_")),
            mode: "cgroup",
            xdp_mode: None,
        });
    }
    Ok(programs)
}

/// Every feature kxdp probes, probed now (the agent probed the same
/// kernel).
fn kernel() -> anyhow::Result<Vec<KernelFeature>> {
    Ok(probe::probe()?
        .0
        .into_iter()
        .map(|(feature, present)| KernelFeature {
            feature: feature.name(),
            present,
            since: feature.first_kernel(),
            without: feature.without(),
        })
        .collect())
}

fn maps(pin_path: &Path) -> anyhow::Result<Vec<MapFill>> {
    let maps = BpfMaps::open_pinned(pin_path).with_context(|| {
        format!(
            "no kxdp maps under {} (is the agent loaded?)",
            pin_path.display()
        )
    })?;
    let mut fills = Vec::new();
    for name in AGENT_WRITTEN {
        let capacity = fill::capacity(pin_path, name)?;
        // Bounded by the map's own size: the count is exact.
        let count = maps
            .count(name, capacity)
            .context("not an agent-written map")??;
        fills.push(MapFill {
            map: name.to_lowercase(),
            entries: count.entries,
            capacity,
            complete: count.complete,
        });
    }
    // The Maglev arena, in 8-byte entries held by live tables.
    let (used, total) = maps.tables().usage();
    fills.push(MapFill {
        map: MAGLEV_ARENA.to_lowercase(),
        entries: u32::try_from(used).unwrap_or(u32::MAX),
        capacity: u32::try_from(total).unwrap_or(u32::MAX),
        complete: true,
    });
    for (map, count) in Conntrack::open(pin_path)?.count()? {
        fills.push(MapFill {
            map: map.to_lowercase(),
            entries: count.entries,
            capacity: fill::capacity(pin_path, map)?,
            complete: count.complete,
        });
    }
    Ok(fills)
}

/// Where to reach an agent listening on `addr`: this host, if it listens
/// on every address.
fn reachable(addr: SocketAddr) -> SocketAddr {
    if addr.ip().is_unspecified() {
        SocketAddr::new(std::net::Ipv4Addr::LOCALHOST.into(), addr.port())
    } else {
        addr
    }
}

/// GET /healthz from the agent; its JSON answers 200 and 503 alike.
fn ask_agent(addr: SocketAddr) -> anyhow::Result<HealthReport> {
    let mut stream = TcpStream::connect_timeout(&addr, AGENT_TIMEOUT)?;
    stream.set_read_timeout(Some(AGENT_TIMEOUT))?;
    stream.set_write_timeout(Some(AGENT_TIMEOUT))?;
    write!(stream, "GET /healthz HTTP/1.1\r\nHost: {addr}\r\n\r\n")?;
    let mut response = Vec::new();
    // The agent closes the connection after its answer; bound it anyway.
    stream.take(64 * 1024).read_to_end(&mut response)?;
    let response = String::from_utf8_lossy(&response);
    let (_, body) = response
        .split_once("\r\n\r\n")
        .context("not an HTTP answer")?;
    serde_json::from_str(body).context("not a kxdp health report")
}

fn agent(addr: SocketAddr) -> AgentStatus {
    let addr = reachable(addr);
    let (report, error) = match ask_agent(addr) {
        Ok(report) => (Some(report), None),
        Err(e) => (None, Some(format!("{e:#}"))),
    };
    AgentStatus {
        address: addr.to_string(),
        report,
        error,
    }
}

fn render_table(status: &Status) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "kxdp {}, pins under {}",
        status.version, status.pin_path
    );
    let agent = &status.agent;
    match (&agent.report, &agent.error) {
        (Some(r), _) => {
            let _ = writeln!(
                out,
                "agent {}: version {}, {}, {}, last successful sync {}",
                agent.address,
                r.version,
                if r.ready { "ready" } else { "not ready" },
                if r.healthy { "healthy" } else { "unhealthy" },
                r.last_updated.as_deref().unwrap_or("never"),
            );
        }
        (None, error) => {
            let _ = writeln!(
                out,
                "agent {}: not answering ({}); a pinned datapath keeps serving without it",
                agent.address,
                error.as_deref().unwrap_or("no answer")
            );
        }
    }
    let _ = writeln!(
        out,
        "\n{:<28}  {:<7}  {:<5}  WITHOUT IT",
        "KERNEL FEATURE", "PRESENT", "SINCE"
    );
    for f in &status.kernel {
        let _ = writeln!(
            out,
            "{:<28}  {:<7}  {:<5}  {}",
            f.feature,
            if f.present { "yes" } else { "no" },
            f.since,
            if f.present { "-" } else { f.without }
        );
    }
    let _ = writeln!(
        out,
        "\n{:<18}  {:<16}  {:>7}  {:<16}  MODE",
        "PROGRAM", "INTERFACE", "IFINDEX", "HOOK"
    );
    for p in &status.programs {
        let mode = match p.xdp_mode {
            Some(xdp) => format!("{} {xdp}", p.mode),
            None => p.mode.to_string(),
        };
        let _ = writeln!(
            out,
            "{:<18}  {:<16}  {:>7}  {:<16}  {mode}",
            p.program,
            p.interface.as_deref().unwrap_or("-"),
            p.ifindex.map_or_else(|| "-".into(), |i| i.to_string()),
            p.hook,
        );
    }
    let _ = writeln!(
        out,
        "\n{:<14}  {:>9}  {:>9}  FILL",
        "MAP", "ENTRIES", "CAPACITY"
    );
    for m in &status.maps {
        let fill = f64::from(m.entries) * 100.0 / f64::from(m.capacity.max(1));
        let _ = writeln!(
            out,
            "{:<14}  {:>8}{}  {:>9}  {fill:.1}%",
            m.map,
            m.entries,
            if m.complete { " " } else { "+" },
            m.capacity,
        );
    }
    if status.maps.iter().any(|m| !m.complete) {
        let _ = writeln!(
            out,
            "+: counted up to {CONNTRACK_COUNT_CAP} entries; there are at least that many"
        );
    }
    out
}

pub fn run(args: &StatusArgs) -> anyhow::Result<()> {
    let pin_path = &args.read.pin.pin_path;
    let status = Status {
        version: env!("CARGO_PKG_VERSION"),
        pin_path: pin_path.display().to_string(),
        kernel: kernel()?,
        programs: programs(pin_path)?,
        maps: maps(pin_path)?,
        agent: agent(args.health_addr),
    };
    match args.read.output {
        Output::Table => print!("{}", render_table(&status)),
        Output::Json => println!("{:#}", serde_json::to_value(&status)?),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(report: Option<HealthReport>) -> Status {
        Status {
            version: "0.1.0",
            pin_path: "/sys/fs/bpf/kxdp".into(),
            kernel: vec![
                KernelFeature {
                    feature: "tcx",
                    present: false,
                    since: "6.6",
                    without: "classic tc filters",
                },
                KernelFeature {
                    feature: "bpf_ktime_get_coarse_ns",
                    present: true,
                    since: "5.11",
                    without: "bpf_ktime_get_ns",
                },
            ],
            programs: vec![
                Program {
                    program: "pod_ingress",
                    interface: Some("veth1".into()),
                    ifindex: Some(7),
                    hook: "tcx ingress".into(),
                    mode: "tcx",
                    xdp_mode: None,
                },
                Program {
                    program: "sock_connect4",
                    interface: None,
                    ifindex: None,
                    hook: "cgroup connect4".into(),
                    mode: "cgroup",
                    xdp_mode: None,
                },
                Program {
                    program: "nic_ingress",
                    interface: Some("eth0".into()),
                    ifindex: Some(2),
                    hook: "xdp".into(),
                    mode: "xdp",
                    xdp_mode: Some("generic"),
                },
            ],
            maps: vec![
                MapFill {
                    map: "services".into(),
                    entries: 2,
                    capacity: 65_536,
                    complete: true,
                },
                MapFill {
                    map: "conntrack".into(),
                    entries: 65_536,
                    capacity: 524_288,
                    complete: false,
                },
            ],
            agent: AgentStatus {
                address: "127.0.0.1:10256".into(),
                error: report.is_none().then(|| "Connection refused".into()),
                report,
            },
        }
    }

    fn report() -> HealthReport {
        HealthReport {
            last_updated: Some("2024-01-01T00:00:00Z".into()),
            current_time: "2024-01-01T00:00:05Z".into(),
            ready: true,
            healthy: true,
            version: "0.1.0".into(),
        }
    }

    #[test]
    fn json_names_programs_maps_and_the_agent() {
        let json = serde_json::to_value(status(Some(report()))).unwrap();
        assert_eq!(
            json["programs"][0],
            serde_json::json!({"program": "pod_ingress", "interface": "veth1", "ifindex": 7,
                               "hook": "tcx ingress", "mode": "tcx", "xdpMode": null})
        );
        assert_eq!(json["programs"][2]["xdpMode"], "generic");
        assert_eq!(
            json["kernel"][0],
            serde_json::json!({"feature": "tcx", "present": false, "since": "6.6",
                               "without": "classic tc filters"})
        );
        assert_eq!(json["programs"][1]["interface"], serde_json::Value::Null);
        assert_eq!(
            json["maps"][1],
            serde_json::json!({"map": "conntrack", "entries": 65536, "capacity": 524288,
                               "complete": false})
        );
        assert_eq!(
            json["agent"]["report"]["lastUpdated"],
            "2024-01-01T00:00:00Z"
        );
        assert_eq!(json["agent"]["report"]["ready"], true);
        assert_eq!(json["pinPath"], "/sys/fs/bpf/kxdp");
        // The agent's own report reads back as it was written.
        let back: HealthReport = serde_json::from_value(json["agent"]["report"].clone()).unwrap();
        assert_eq!(back, report());
    }

    #[test]
    fn the_table_says_when_the_agent_is_away_and_marks_capped_counts() {
        let table = render_table(&status(None));
        assert!(
            table.contains("agent 127.0.0.1:10256: not answering (Connection refused)"),
            "{table}"
        );
        assert!(table.contains("veth1"), "{table}");
        assert!(table.contains("65536+"), "{table}");
        assert!(table.contains("xdp generic"), "{table}");
        assert!(
            table.contains("tcx                           no       6.6    classic tc filters"),
            "{table}"
        );
        assert!(
            table.contains("bpf_ktime_get_coarse_ns       yes      5.11   -"),
            "{table}"
        );
        let table = render_table(&status(Some(report())));
        assert!(
            table.contains("ready, healthy, last successful sync 2024-01-01T00:00:00Z"),
            "{table}"
        );
    }

    #[test]
    fn an_agent_on_every_address_is_asked_on_loopback() {
        assert_eq!(
            reachable("0.0.0.0:10256".parse().unwrap()).to_string(),
            "127.0.0.1:10256"
        );
        assert_eq!(
            reachable("10.0.0.1:10256".parse().unwrap()).to_string(),
            "10.0.0.1:10256"
        );
    }
}
