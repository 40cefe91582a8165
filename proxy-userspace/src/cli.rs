//! Command-line interface. Every flag has a `KXDP_…` environment twin so the
//! DaemonSet can configure the agent without arguments.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    ops::RangeInclusive,
    path::PathBuf,
    str::FromStr,
};

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::{cidr::IpCidr, maglev, source::cluster_ip::ServiceCidrs};

pub const DEFAULT_PIN_PATH: &str = "/sys/fs/bpf/kxdp";
/// kube-proxy's healthz port: the DaemonSet's probes use it.
pub const DEFAULT_HEALTH_ADDR: &str = "0.0.0.0:10256";
/// kube-proxy's metrics address.
pub const DEFAULT_METRICS_ADDR: &str = "127.0.0.1:10249";

#[derive(Debug, Parser)]
#[command(
    name = "kxdp",
    version,
    about = "Kubernetes Services in eBPF: a kube-proxy replacement"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Log level (error, warn, info, debug, trace); RUST_LOG overrides it.
    #[arg(long, env = "KXDP_LOG_LEVEL", default_value = "info", global = true)]
    pub log_level: String,
    /// Log lines as plain text or as one JSON object each.
    #[arg(long, env = "KXDP_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// How the read-only commands print.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Table,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Load the datapath, attach it, and keep the maps in sync with Services.
    Agent(Box<AgentArgs>),
    /// Show the Services the pinned maps serve, by name, with their frontends, backends and counters.
    Services(ServicesArgs),
    /// Explain what the datapath would do now with one packet, step by step.
    Trace(TraceArgs),
    /// Stream the datapath's drops and rejects (and new flows) as they happen.
    Monitor(MonitorArgs),
    /// Show the attached programs, how full the maps are and the agent's last sync.
    Status(StatusArgs),
    /// Detach the programs and remove every pin.
    Unload(PinArgs),
}

#[derive(Debug, Args)]
pub struct PinArgs {
    /// bpffs directory holding the pinned maps and links.
    #[arg(long, env = "KXDP_PIN_PATH", default_value = DEFAULT_PIN_PATH)]
    pub pin_path: PathBuf,
}

#[derive(Debug, Args)]
pub struct ReadArgs {
    #[command(flatten)]
    pub pin: PinArgs,
    /// table for people, json for scripts (stable field names).
    #[arg(long, short = 'o', env = "KXDP_OUTPUT", value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

/// How `kxdp services` prints, as kubectl's `-o`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ListOutput {
    Table,
    /// The table with each frontend's id, affinity, sockets and backends.
    Wide,
    Json,
    Yaml,
}

#[derive(Debug, Args)]
pub struct ServicesArgs {
    #[command(flatten)]
    pub pin: PinArgs,
    /// Only the Service of this name.
    pub name: Option<String>,
    /// Namespace of the Services shown.
    #[arg(long, short = 'n', env = "KXDP_NAMESPACE", default_value = "default")]
    pub namespace: String,
    /// Services of every namespace (overrides --namespace).
    #[arg(long, short = 'A', env = "KXDP_ALL_NAMESPACES")]
    pub all_namespaces: bool,
    /// table or wide for people, json or yaml for scripts (stable field names).
    #[arg(long, short = 'o', env = "KXDP_OUTPUT", value_enum, default_value_t = ListOutput::Table)]
    pub output: ListOutput,
}

#[derive(Debug, Args)]
pub struct MonitorArgs {
    #[command(flatten)]
    pub pin: PinArgs,
    /// Each new flow too, with the backend it was sent to.
    #[arg(long, env = "KXDP_MONITOR_NEW_FLOWS")]
    pub new_flows: bool,
    /// Only events of these Services (NAMESPACE/NAME), comma-separated.
    #[arg(long, env = "KXDP_MONITOR_SERVICE", value_delimiter = ',')]
    pub service: Vec<String>,
    /// Only these drop reasons (e.g. source_range) or kinds (reject,
    /// socket_refused, new_flow), comma-separated.
    #[arg(long, env = "KXDP_MONITOR_REASON", value_delimiter = ',')]
    pub reason: Vec<String>,
    /// Only events with one of these addresses as source, destination or
    /// backend, comma-separated.
    #[arg(long, env = "KXDP_MONITOR_ADDRESS", value_delimiter = ',')]
    pub address: Vec<IpAddr>,
    /// Stop after this many events.
    #[arg(long, env = "KXDP_MONITOR_COUNT")]
    pub count: Option<u64>,
    /// Stop after this many seconds.
    #[arg(long, env = "KXDP_MONITOR_SECONDS")]
    pub seconds: Option<u64>,
    /// table (one line an event) for people, json (one object a line) for scripts.
    #[arg(long, short = 'o', env = "KXDP_OUTPUT", value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

#[derive(Debug, Args)]
pub struct TraceArgs {
    #[command(flatten)]
    pub pin: PinArgs,
    /// The packet's source: ADDR or ADDR:PORT ([ADDR]:PORT for IPv6).
    pub source: String,
    /// Its destination: ADDR:PORT[/tcp|udp|sctp] (TCP by default).
    pub destination: String,
    /// Where the datapath sees it: leaving a pod, arriving on a NIC, or a
    /// host process's socket.
    #[arg(long, env = "KXDP_TRACE_VIA", value_enum, default_value_t = crate::commands::trace::request::Via::Pod)]
    pub via: crate::commands::trace::request::Via,
    /// table (one step a line) for people, json for scripts.
    #[arg(long, short = 'o', env = "KXDP_OUTPUT", value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub read: ReadArgs,
    /// The agent's --health-addr, asked for its version and last sync (an
    /// unspecified address means this host's loopback).
    #[arg(long, env = "KXDP_HEALTH_ADDR", default_value = DEFAULT_HEALTH_ADDR)]
    pub health_addr: SocketAddr,
}

#[derive(Debug, Args)]
pub struct AgentArgs {
    /// Kubernetes YAML to serve: a file or a directory of files (re-read on
    /// change), instead of a cluster.
    #[arg(long, env = "KXDP_MANIFESTS", conflicts_with = "kubeconfig")]
    pub manifests: Option<PathBuf>,
    /// Kubeconfig of the cluster to watch; without it and without
    /// --manifests, the in-cluster service account is used.
    #[arg(long, env = "KXDP_KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// This node's name, as in the endpoints' nodeName (set from the downward
    /// API in the DaemonSet), so local endpoints are known.
    #[arg(long, env = "KXDP_NODE_NAME")]
    pub node_name: Option<String>,
    /// Globs naming the host side of pod interfaces, comma-separated (e.g. 'veth*,cali*').
    #[arg(
        long,
        env = "KXDP_POD_INTERFACES",
        value_delimiter = ',',
        required = true
    )]
    pub pod_interfaces: Vec<String>,
    /// Where manifests without a clusterIP get one, as the API server would
    /// allocate it: one CIDR per family, comma-separated (e.g.
    /// 10.96.0.0/12,fd00:10:96::/112); the first one's family is the
    /// default of a Service that names none.
    #[arg(long, env = "KXDP_SERVICE_CIDR", default_value = "10.96.0.0/12")]
    pub service_cidr: ServiceCidrs,
    /// How often to look for manifest changes and new interfaces, in milliseconds.
    #[arg(long, env = "KXDP_RESCAN_MS", default_value_t = 1000, value_parser = clap::value_parser!(u64).range(50..=60_000))]
    pub rescan_ms: u64,
    /// Interfaces where traffic from outside arrives (NodePorts,
    /// LoadBalancer and external IPs), comma-separated; XDP is attached to
    /// each. Without it, nothing is served from outside.
    #[arg(long, env = "KXDP_NIC", value_delimiter = ',')]
    pub nic: Vec<String>,
    /// CIDRs (IPv4 or IPv6) whose node addresses NodePorts answer on,
    /// comma-separated (kube-proxy's flag); default: every address but
    /// loopback and IPv6 link-local.
    #[arg(long, env = "KXDP_NODEPORT_ADDRESSES", value_delimiter = ',')]
    pub nodeport_addresses: Vec<IpCidr>,
    /// Node ports outside this range (the API server's
    /// --service-node-port-range) are refused.
    #[arg(long, env = "KXDP_NODEPORT_RANGE", default_value = "30000-32767")]
    pub nodeport_range: PortRange,
    /// Address the healthCheckNodePort listeners of
    /// `externalTrafficPolicy: Local` Services bind; 0.0.0.0 or :: (the
    /// default): every address of both families.
    #[arg(long, env = "KXDP_HEALTH_CHECK_BIND_ADDRESS", default_value_t = IpAddr::V4(Ipv4Addr::UNSPECIFIED))]
    pub health_check_bind_address: IpAddr,
    /// cgroup (v2 directory) whose processes reach Services through the
    /// socket hooks (see --socket-lb). Default: the cgroup2 mount point in
    /// /proc/mounts, i.e. every process on the node, pods' included.
    #[arg(long, env = "KXDP_CGROUP_PATH")]
    pub cgroup_path: Option<PathBuf>,
    /// Whose sockets the cgroup socket hooks send straight to a backend at
    /// connect (or send) time: `all` (host processes and pods: no
    /// per-packet translation for pods' TCP and unconnected UDP), `host`
    /// (host processes only; pods go through the per-packet path, e.g.
    /// where service-mesh sidecars must see the ClusterIP) or `off` (no
    /// socket hooks: host processes cannot reach ClusterIPs).
    #[arg(long, env = "KXDP_SOCKET_LB", value_enum, default_value_t = SocketLb::All)]
    pub socket_lb: SocketLb,
    /// How the pod programs attach: `auto` (tcx, or classic tc filters on
    /// kernels without tcx, before 6.6) or `tc` (classic tc filters always,
    /// e.g. next to tools that manage clsact filters themselves).
    #[arg(long, env = "KXDP_POD_ATTACH", value_enum, default_value_t = PodAttach::Auto)]
    pub pod_attach: PodAttach,
    /// Largest Maglev table a frontend gets (slots; one of 251, 509, 1021,
    /// 2039, 4093, 8191, 16381, 32749, 65521). A frontend's table has about
    /// 100 slots per backend up to this cap.
    #[arg(long, env = "KXDP_MAGLEV_TABLE_SIZE", default_value_t = maglev::DEFAULT_MAX_TABLE_SIZE, value_parser = parse_table_size)]
    pub maglev_table_size: u32,
    /// Kernel memory kept for every Maglev table (MiB, 1 to 4095): 64 holds
    /// 30,000 distinct tables of 10 backends. Frontends with the same
    /// backends share a table. Takes effect when the maps are created (a
    /// pinned arena keeps its size until `kxdp unload`).
    #[arg(long, env = "KXDP_MAGLEV_ARENA_MIB", default_value_t = DEFAULT_ARENA_MIB, value_parser = clap::value_parser!(u32).range(1..4096))]
    pub maglev_arena_mib: u32,
    /// Where /healthz and /readyz answer (kube-proxy's healthz port).
    #[arg(long, env = "KXDP_HEALTH_ADDR", default_value = DEFAULT_HEALTH_ADDR)]
    pub health_addr: SocketAddr,
    /// Where /metrics answers, in the Prometheus text format.
    #[arg(long, env = "KXDP_METRICS_ADDR", default_value = DEFAULT_METRICS_ADDR)]
    pub metrics_addr: SocketAddr,
    #[command(flatten)]
    pub pin: PinArgs,
}

/// `--maglev-arena-mib` by default: `sizes::MAGLEV_ARENA_ENTRIES`.
const DEFAULT_ARENA_MIB: u32 = proxy_common::sizes::MAGLEV_ARENA_ENTRIES >> 17;

impl AgentArgs {
    /// Entries of the Maglev arena `--maglev-arena-mib` asks for.
    pub fn arena_entries(&self) -> u32 {
        self.maglev_arena_mib << 17
    }
}

fn parse_table_size(s: &str) -> Result<u32, String> {
    s.parse()
        .ok()
        .filter(|size| maglev::is_table_size(*size))
        .ok_or_else(|| {
            format!(
                "'{s}' is not a Maglev table size (one of {:?})",
                maglev::TABLE_SIZES
            )
        })
}

/// `--pod-attach`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum PodAttach {
    Auto,
    Tc,
}

/// `--socket-lb`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum SocketLb {
    All,
    Host,
    Off,
}

/// A port range `A-B` with `1 <= A <= B`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortRange(pub RangeInclusive<u16>);

impl FromStr for PortRange {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("'{s}' is not a port range (expected A-B, 1 <= A <= B <= 65535)");
        let (first, last) = s.split_once('-').ok_or_else(bad)?;
        let first: u16 = first.trim().parse().map_err(|_| bad())?;
        let last: u16 = last.trim().parse().map_err(|_| bad())?;
        if first == 0 || first > last {
            return Err(bad());
        }
        Ok(Self(first..=last))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_flags_parse_with_defaults() {
        let cli = Cli::try_parse_from([
            "kxdp",
            "agent",
            "--manifests",
            "/m",
            "--pod-interfaces",
            "veth*,cali*",
        ])
        .unwrap();
        assert_eq!(cli.log_format, LogFormat::Text);
        let Command::Agent(args) = cli.command else {
            panic!("not agent")
        };
        assert_eq!(args.manifests, Some(PathBuf::from("/m")));
        assert_eq!((args.kubeconfig, args.node_name), (None, None));
        assert_eq!(args.pod_interfaces, ["veth*", "cali*"]);
        assert_eq!(args.pin.pin_path, PathBuf::from(DEFAULT_PIN_PATH));
        assert_eq!(args.service_cidr.to_string(), "10.96.0.0/12");
        assert_eq!(args.rescan_ms, 1000);
        assert!(args.nic.is_empty() && args.nodeport_addresses.is_empty());
        assert_eq!(args.nodeport_range, PortRange(30_000..=32_767));
        assert_eq!(args.health_check_bind_address.to_string(), "0.0.0.0");
        assert_eq!(args.cgroup_path, None);
        assert_eq!(args.maglev_table_size, 16_381);
        assert_eq!(args.pod_attach, PodAttach::Auto);
        assert_eq!(args.socket_lb, SocketLb::All);
        assert_eq!(args.health_addr.to_string(), "0.0.0.0:10256");
        assert_eq!(args.metrics_addr.to_string(), "127.0.0.1:10249");
    }

    #[test]
    fn admin_addresses_log_format_and_output_parse() {
        let args = agent(&[
            "--health-addr",
            "127.0.0.1:20256",
            "--metrics-addr",
            "0.0.0.0:20249",
        ])
        .unwrap();
        assert_eq!(args.health_addr.to_string(), "127.0.0.1:20256");
        assert_eq!(args.metrics_addr.to_string(), "0.0.0.0:20249");
        assert!(
            agent(&["--metrics-addr", "10249"]).is_err(),
            "needs an address"
        );
        let cli = Cli::try_parse_from([
            "kxdp",
            "services",
            "--output",
            "yaml",
            "--log-format",
            "json",
        ])
        .unwrap();
        assert_eq!(cli.log_format, LogFormat::Json);
        let Command::Services(args) = cli.command else {
            panic!("not services")
        };
        assert_eq!(args.output, ListOutput::Yaml);
        assert_eq!(
            (args.namespace.as_str(), args.all_namespaces),
            ("default", false)
        );
        let cli = Cli::try_parse_from(["kxdp", "services", "web", "-n", "shop", "-o", "wide"]);
        let Command::Services(args) = cli.unwrap().command else {
            panic!("not services")
        };
        assert_eq!(args.name.as_deref(), Some("web"));
        assert_eq!(
            (args.namespace.as_str(), args.output),
            ("shop", ListOutput::Wide)
        );
        let cli = Cli::try_parse_from(["kxdp", "services", "-A"]).unwrap();
        let Command::Services(args) = cli.command else {
            panic!("not services")
        };
        assert!(args.all_namespaces);
        let cli = Cli::try_parse_from(["kxdp", "status", "-o", "json"]).unwrap();
        let Command::Status(args) = cli.command else {
            panic!("not status")
        };
        assert_eq!(args.read.output, Output::Json);
        assert_eq!(args.health_addr.to_string(), DEFAULT_HEALTH_ADDR);
        assert!(Cli::try_parse_from(["kxdp", "status", "-o", "yaml"]).is_err());
    }

    #[test]
    fn pod_programs_can_be_told_to_use_classic_tc() {
        assert_eq!(
            agent(&["--pod-attach", "tc"]).unwrap().pod_attach,
            PodAttach::Tc
        );
        assert!(agent(&["--pod-attach", "tcx-only"]).is_err());
    }

    #[test]
    fn the_maglev_table_size_must_be_a_prime_of_the_ladder() {
        assert_eq!(
            agent(&["--maglev-table-size", "65521"])
                .unwrap()
                .maglev_table_size,
            65_521
        );
        let refused = agent(&["--maglev-table-size", "16384"])
            .unwrap_err()
            .to_string();
        assert!(refused.contains("not a Maglev table size"), "{refused}");
    }

    #[test]
    fn the_arena_size_is_given_in_mib_of_8_byte_entries() {
        assert_eq!(agent(&[]).unwrap().arena_entries(), 8 << 20);
        assert_eq!(
            agent(&["--maglev-arena-mib", "1"]).unwrap().arena_entries(),
            131_072
        );
        assert!(agent(&["--maglev-arena-mib", "0"]).is_err());
        assert!(agent(&["--maglev-arena-mib", "4096"]).is_err());
    }

    #[test]
    fn the_cgroup_path_flag_parses() {
        let args = agent(&["--cgroup-path", "/sys/fs/cgroup/kxdp"]).unwrap();
        assert_eq!(args.cgroup_path, Some(PathBuf::from("/sys/fs/cgroup/kxdp")));
    }

    fn agent(extra: &[&str]) -> Result<AgentArgs, clap::Error> {
        let base = [
            "kxdp",
            "agent",
            "--manifests",
            "/m",
            "--pod-interfaces",
            "v*",
        ];
        let cli = Cli::try_parse_from(base.iter().chain(extra))?;
        match cli.command {
            Command::Agent(args) => Ok(*args),
            _ => panic!("not agent"),
        }
    }

    #[test]
    fn node_frontend_flags_parse() {
        let args = agent(&[
            "--nic",
            "eth0,eth1",
            "--nodeport-addresses",
            "192.168.1.0/24,10.0.0.0/8,fd00:192:168::/64",
            "--service-cidr",
            "10.96.0.0/12,fd00:10:96::/112",
            "--nodeport-range",
            "20000-20100",
            "--health-check-bind-address",
            "192.168.1.10",
        ])
        .unwrap();
        assert_eq!(args.nic, ["eth0", "eth1"]);
        let cidrs: Vec<String> = args
            .nodeport_addresses
            .iter()
            .map(|c| c.to_string())
            .collect();
        assert_eq!(cidrs, ["192.168.1.0/24", "10.0.0.0/8", "fd00:192:168::/64"]);
        assert_eq!(
            args.service_cidr.to_string(),
            "10.96.0.0/12,fd00:10:96::/112"
        );
        assert_eq!(args.nodeport_range, PortRange(20_000..=20_100));
        assert_eq!(args.health_check_bind_address.to_string(), "192.168.1.10");
        for bad in [
            ["--nodeport-range", "32767-30000"],
            ["--nodeport-range", "0-100"],
            ["--nodeport-range", "30000"],
            ["--nodeport-range", "30000-70000"],
            ["--nodeport-addresses", "192.168.1.1/24"],
            ["--health-check-bind-address", "localhost"],
        ] {
            assert!(agent(&bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn bad_flags_are_refused() {
        assert!(
            Cli::try_parse_from(["kxdp", "agent", "--manifests", "/m"]).is_err(),
            "pod interfaces are required"
        );
        let both_sources = [
            "kxdp",
            "agent",
            "--manifests",
            "/m",
            "--kubeconfig",
            "/k",
            "--pod-interfaces",
            "v*",
        ];
        assert!(
            Cli::try_parse_from(both_sources).is_err(),
            "one source at a time"
        );
        let bad_cidr = [
            "kxdp",
            "agent",
            "--manifests",
            "/m",
            "--pod-interfaces",
            "v*",
            "--service-cidr",
            "10.96.0.1/12",
        ];
        assert!(Cli::try_parse_from(bad_cidr).is_err());
        assert!(Cli::try_parse_from(["kxdp", "services", "--pin-path"]).is_err());
    }

    #[test]
    fn every_flag_has_an_environment_twin() {
        let command = <Cli as clap::CommandFactory>::command();
        for sub in command.get_subcommands() {
            for arg in sub.get_arguments().filter(|a| !a.is_positional()) {
                let id = arg.get_id().as_str();
                if id == "help" || id == "version" {
                    continue;
                }
                let env = arg
                    .get_env()
                    .unwrap_or_else(|| panic!("--{id} of {} has no env twin", sub.get_name()));
                assert!(env.to_string_lossy().starts_with("KXDP_"), "{id}");
            }
        }
    }
}
