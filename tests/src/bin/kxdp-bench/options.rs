//! Options, the measurement plan and where things are.

use super::*;

pub(crate) struct Options {
    pub(crate) quick: bool,
    pub(crate) out: PathBuf,
    /// Run only this part (one of `PARTS`); the report then holds only it.
    /// `memory` (the agent's memory alone, a quick look at part 3's) writes
    /// no report.
    pub(crate) only: Option<String>,
    /// Service counts for the control plane (and `sync`) instead of the plan's.
    pub(crate) services: Option<Vec<usize>>,
    /// Leave kube-proxy's tools out of the control plane (kxdp alone).
    pub(crate) without_peers: bool,
}

/// The parts `--only` takes. `sync` and `memory` run only when asked for:
/// they are part 3 (`control`) without the agent process and kube-proxy's
/// tools, and the agent process alone.
const PARTS: &[&str] = &[
    "packets", "conns", "control", "sync", "maglev", "pps", "memory",
];

impl Options {
    pub(crate) fn runs(&self, part: &str) -> bool {
        match self.only.as_deref() {
            Some(only) => only == part,
            None => !["sync", "memory"].contains(&part),
        }
    }
}

pub(crate) fn workspace_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the testbed lives in the workspace")
}

pub(crate) fn default_report_path() -> PathBuf {
    workspace_root().join("docs/bench/REPORT.md")
}

pub(crate) fn parse_args() -> anyhow::Result<Options> {
    let mut options = Options {
        quick: false,
        out: default_report_path(),
        only: None,
        services: None,
        without_peers: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--quick" => options.quick = true,
            "--without-peers" => options.without_peers = true,
            "--services" => {
                let list = args.next().context("--services needs a list, e.g. 30000")?;
                let counts = list
                    .split(',')
                    .map(|n| n.trim().parse::<usize>().ok().filter(|n| *n > 0))
                    .collect::<Option<Vec<usize>>>()
                    .with_context(|| format!("--services {list}: not a list of counts"))?;
                options.services = Some(counts);
            }
            "--out" => options.out = args.next().context("--out needs a path")?.into(),
            "--only" => {
                let part = args.next().context("--only needs a part")?;
                ensure!(
                    PARTS.contains(&part.as_str()),
                    "--only takes one of {}",
                    PARTS.join(", ")
                );
                options.only = Some(part);
            }
            _ => bail!(
                "usage: kxdp-bench [--quick] [--only packets|conns|control|sync|maglev|pps|memory] \
                 [--services N[,N…]] [--without-peers] [--out PATH]"
            ),
        }
    }
    Ok(options)
}

/// How much to measure; `--quick` trades precision for time.
pub(crate) struct Plan {
    /// Timed runs per path (after one warm-up run).
    pub(crate) runs: usize,
    /// Repetitions per BPF_PROG_TEST_RUN call for the floors and the
    /// steady-state paths; one call per run.
    pub(crate) repeat: u32,
    /// New flow, cold: service chain length (= repetitions), one call per run.
    pub(crate) cold_chain: u32,
    /// New flow, warm: a short chain, `warm_calls` calls per run.
    pub(crate) warm_chain: u32,
    pub(crate) warm_calls: u32,
    /// Connection rate: numbers of other Services, passes over all proxies,
    /// rounds per proxy and pass and their length, client threads.
    pub(crate) conn_sizes: Vec<usize>,
    pub(crate) conn_passes: usize,
    pub(crate) conn_rounds: usize,
    pub(crate) conn_ms: u64,
    pub(crate) concurrency: usize,
    /// Bulk stream (at the smallest size): rounds per proxy, their length.
    pub(crate) stream_rounds: usize,
    pub(crate) stream_ms: u64,
    /// Control plane: Service counts, runs per count, single changes per run.
    pub(crate) control_sizes: Vec<usize>,
    pub(crate) control_runs: usize,
    pub(crate) control_changes: usize,
    /// kube-proxy's tools left out (`--without-peers`).
    pub(crate) without_peers: bool,
    /// Maglev: builds of all tables (best kept), rebuilds of one table.
    pub(crate) maglev_runs: usize,
    pub(crate) maglev_rebuilds: usize,
    /// Real traffic: frames a run, rounds over every path.
    pub(crate) pps_frames: u32,
    pub(crate) pps_rounds: usize,
    /// Single changes per run for kube-proxy's tools (a process each).
    pub(crate) kube_proxy_changes: usize,
    /// Time after which no further run (or change) of a kube-proxy tool
    /// starts at one size.
    pub(crate) kube_proxy_budget: Duration,
    /// Largest N for `nft -f` of the full nftables ruleset: its load time
    /// grows with N² (210 s at 10,000 here), see the report.
    pub(crate) nftables_max_services: usize,
    /// Largest N for `iptables-nft-restore` of the full iptables ruleset (at
    /// 30,000 × 10 endpoints it had not finished after 4 minutes here).
    pub(crate) iptables_nft_max_services: usize,
}

impl Plan {
    /// Largest N at which `proxy`'s tool is run in the control-plane part.
    pub(crate) fn kube_proxy_max_services(&self, proxy: Proxy) -> usize {
        match proxy {
            Proxy::Nftables => self.nftables_max_services,
            Proxy::IptablesNft => self.iptables_nft_max_services,
            _ => usize::MAX,
        }
    }
}

impl Plan {
    /// The plan `options` ask for.
    pub(crate) fn for_options(options: &Options) -> Self {
        let mut plan = Self::new(options.quick);
        if let Some(services) = &options.services {
            plan.control_sizes = services.clone();
            plan.conn_sizes = services.clone();
        }
        plan.without_peers = options.without_peers;
        plan
    }

    fn new(quick: bool) -> Self {
        if quick {
            Plan {
                runs: 5,
                repeat: 100_000,
                cold_chain: 5_000,
                warm_chain: 16,
                warm_calls: 300,
                conn_sizes: vec![1, 1_000],
                conn_passes: 1,
                conn_rounds: 2,
                conn_ms: 500,
                concurrency: 4,
                stream_rounds: 1,
                stream_ms: 500,
                control_sizes: vec![1_000, 3_000],
                control_runs: 1,
                control_changes: 300,
                maglev_runs: 1,
                maglev_rebuilds: 100,
                pps_frames: 100_000,
                pps_rounds: 1,
                kube_proxy_changes: 5,
                kube_proxy_budget: Duration::from_secs(5),
                nftables_max_services: 3_000,
                iptables_nft_max_services: usize::MAX,
                without_peers: false,
            }
        } else {
            Plan {
                runs: 9,
                repeat: 1_000_000,
                cold_chain: 20_000,
                warm_chain: 16,
                warm_calls: 2_000,
                conn_sizes: vec![1, 1_000, 10_000, 30_000],
                conn_passes: 2,
                conn_rounds: 2,
                conn_ms: 1_500,
                concurrency: 4,
                stream_rounds: 3,
                stream_ms: 1_500,
                control_sizes: vec![1_000, 10_000, 30_000],
                control_runs: 3,
                control_changes: 1_000,
                maglev_runs: 3,
                maglev_rebuilds: 1_000,
                pps_frames: 500_000,
                pps_rounds: 5,
                kube_proxy_changes: 20,
                kube_proxy_budget: Duration::from_secs(10),
                nftables_max_services: 10_000,
                iptables_nft_max_services: 10_000,
                without_peers: false,
            }
        }
    }
}
