//! `kxdp-bench`: what the datapath costs, measured, never asserted.
//!
//!   kxdp-bench [--quick] [--only packets|conns|control|sync|maglev|pps|memory]
//!              [--services N[,N…]] [--without-peers] [--out PATH]
//!   (root; `cargo xtask bench` runs it)
//!
//! Part 1 times the pod programs and the NIC program per packet through
//! BPF_PROG_TEST_RUN, path by path, next to empty XDP and tc programs (the
//! cost of the harness itself).
//! Part 2 measures short TCP connections per second and one bulk stream in a
//! namespace mini node through a ClusterIP, with the real agent and with the
//! rulesets kube-proxy writes (iptables, nftables), while N other Services
//! exist, next to no proxy at all.
//! Part 3 times the control plane: N Services programmed from empty and one
//! endpoint change at that size, by kxdp and by kube-proxy's tools, and the
//! agent's memory.
//! `--only sync` runs part 3's pipeline alone (no agent process, no
//! kube-proxy tool), light enough for a VM (`cargo xtask vm-test --bench`
//! compares kernels with it); a full run leaves it out, as part 3 has its
//! figures.
//! Part 4 builds and writes Maglev tables for 30,000 frontends, rebuilds
//! one, and measures how much of a table moves when a backend goes.
//! Part 5 counts packets per second through each hook in real traffic: a
//! generator's frames through the NIC and a pod interface of a private
//! namespace, with kxdp, an empty program and none attached.
//! Each prints a table and goes into a Markdown report (default
//! `docs/bench/REPORT.md` in the workspace) with SVG figures beside it.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Write as _,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4},
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context as _};
use aya::{
    programs::{SchedClassifier, TestRun, TestRunOptions, TestRunResult, Xdp},
    Ebpf,
};
use kxdp_testbed::{
    datapath::{pod_key, pod_key6, Datapath, NIC_INGRESS, POD_EGRESS, POD_INGRESS, TC_ACT_OK},
    nic_netns,
    packet::{Packet, SCTP_DATA, TCP_ACK, TCP_SYN},
    privileged::require_root,
    scenario::{peer_bin, EchoScenario},
    FLOOR_OBJECT,
};
use proxy_common::{
    addr::addr6_to_net,
    maps::{
        addr_to_net, port_to_net, CtEntry, CtEntry6, DropReason, FlowKey, FlowKey6, CT_REPLY,
        MONITOR_DROPS, MONITOR_NEW_FLOWS, PROTO_SCTP, PROTO_TCP,
    },
};
use proxy_userspace::sync::entries::FrontendMapKey;

mod checksum;
mod conn_rate;
mod control_plane;
mod floors;
mod frames;
mod kube_proxy;
mod maglev;
mod nodeport;
mod options;
mod packet_cost;
mod paths;
mod plots;
mod proxies;
mod report;
mod sender;
mod stats;
mod timed_store;
mod timing;
mod traffic;

use checksum::*;
use conn_rate::*;
use control_plane::*;
use floors::*;
use frames::*;
use kube_proxy::*;
use maglev::*;
use nodeport::*;
use options::*;
use packet_cost::*;
use paths::*;
use plots::*;
use proxies::*;
use report::*;
use sender::*;
use stats::*;
use timing::*;
use traffic::*;

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

fn main() -> anyhow::Result<()> {
    let options = parse_args()?;
    require_root("kxdp-bench");
    let plan = Plan::for_options(&options);
    if options.only.as_deref() == Some("memory") {
        eprintln!("kxdp-bench: the agent's memory (part 3's agent runs, with a relist)");
        println!("{}", measure_agent_memory(&plan)?);
        return Ok(());
    }
    let machine = machine();

    let (mut packets, mut checksums) = (None, None);
    if options.runs("packets") {
        eprintln!("kxdp-bench: part 1, per-packet cost through BPF_PROG_TEST_RUN");
        let rows = measure_packet_costs(&plan)?;
        println!("\n{}", packet_table(&rows));
        packets = Some(rows);
        eprintln!("kxdp-bench: part 1, SCTP checksum arithmetic on the host");
        let rows = measure_checksums()?;
        println!("{}", checksum_table(&rows));
        checksums = Some(rows);
    }
    let mut conns = None;
    if options.runs("conns") {
        eprintln!("kxdp-bench: part 2, short TCP connections in a mini node");
        let report = measure_conn_rate(&plan)?;
        println!("{}\n{}", conn_table(&report), stream_table(&report));
        conns = Some(report);
    }
    let mut control = None;
    if options.runs("control") {
        eprintln!("kxdp-bench: part 3, control plane");
        let rows = measure_control_plane(&plan)?;
        println!(
            "{}\n{}",
            control_table(&rows),
            kube_proxy_control_table(&rows)
        );
        control = Some(rows);
    }

    let mut sync = None;
    if options.runs("sync") {
        eprintln!("kxdp-bench: the control plane's pipeline alone, full sync and changes");
        let report = measure_sync(&plan)?;
        println!("{}", sync_table(&report));
        for row in &report.rows {
            println!("{}", sync_line(&report, row));
        }
        sync = Some(report);
    }

    let mut maglev = None;
    if options.runs("maglev") {
        eprintln!("kxdp-bench: part 4, Maglev tables");
        let report = measure_maglev(&plan)?;
        println!("{}", maglev_table(&report));
        maglev = Some(report);
    }

    let mut pps = None;
    if options.runs("pps") {
        eprintln!("kxdp-bench: part 5, packets per second in real traffic");
        let rows = measure_pps(&plan)?;
        println!("{}", pps_table(&rows));
        pps = Some(rows);
    }

    let dir = options.out.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let figures = write_figures(dir, conns.as_ref(), control.as_deref())?;
    let results = Results {
        packets: packets.as_deref(),
        checksums: checksums.as_deref(),
        conns: conns.as_ref(),
        control: control.as_deref(),
        sync: sync.as_ref(),
        maglev: maglev.as_ref(),
        pps: pps.as_deref(),
        figures: &figures,
    };
    let report = render_report(&plan, options.quick, &machine, &results);
    std::fs::write(&options.out, report)
        .with_context(|| format!("writing {}", options.out.display()))?;
    println!("report written to {}", options.out.display());
    Ok(())
}
