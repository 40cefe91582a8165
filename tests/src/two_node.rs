//! Two nodes and an external client on one L2 segment, for NodePort and
//! LoadBalancer tests:
//!
//! ```text
//!   ext     eth0 192.168.50.100 ─┐
//!   node-a  eth0 192.168.50.1   ─┼─ br0 in `lan` (192.168.50.0/24)
//!   node-b  eth0 192.168.50.2   ─┘
//! ```
//!
//! Node A's pods are 10.1.1.i, node B's 10.1.2.i (i ≥ 2), each behind a
//! host veth holding gateway 10.1.x.1/32 with a /32 route to the pod, as
//! routed CNIs do. Each node routes the other's pod CIDR via the other's NIC;
//! `ext` routes the LoadBalancer / external IP range via node A, as a router
//! told by node A about those IPs would. kxdp runs on node A only.
//!
//! Every link and pod is dual-stack: each IPv4 address a.b.c.d has its
//! IPv6 twin fd00:a.b:c::d ([`ipv6_twin`]; a /24 becomes a /64), with the
//! same routes, and duplicate address detection off (`netns::skip_dad`).
//!
//! Checksum offloads are off on every veth end (see `netns`), rp_filter off
//! in the nodes (paths through a load balancer are asymmetric), and
//! everything is removed on drop, also when a test panics.

use std::{
    collections::BTreeSet,
    ffi::OsStr,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    os::fd::AsRawFd,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{bail, Context as _};
use aya::{
    programs::{Xdp, XdpMode},
    Ebpf,
};

use crate::{
    agent::{Agent, AgentHost},
    cgroup::TestCgroup,
    manifests::write_manifest,
    netns::{add_veth, command, exec_ok, skip_dad, Namespaces, Pod},
    privileged::{require_root, PrivateBpffs},
    scenario::{peer_bin, PEER_READY},
    FLOOR_OBJECT,
};

pub const EXT_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 50, 100);
/// Where a cloud controller's load balancer sends traffic: in
/// `status.loadBalancer.ingress`, routed by `ext` to node A.
pub const LB_INGRESS_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 60, 10);
/// An address for `spec.externalIPs`, routed by `ext` to node A too.
pub const EXTERNAL_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 60, 20);
/// The range `ext` routes via node A.
pub const EXTERNAL_RANGE: &str = "192.168.60.0/24";
/// The IPv6 twin of `addr` a.b.c.d in this topology: fd00:a.b:c::d, so a
/// /24 of IPv4 is a /64 of IPv6.
pub fn ipv6_twin(addr: Ipv4Addr) -> Ipv6Addr {
    let [a, b, c, d] = addr.octets();
    Ipv6Addr::new(
        0xfd00,
        u16::from_be_bytes([a, b]),
        c.into(),
        0,
        0,
        0,
        0,
        d.into(),
    )
}

/// The IPv6 twin of a /24 IPv4 CIDR (`a.b.c.0/24` → `fd00:a.b:c::/64`).
pub fn ipv6_twin_cidr(cidr: &str) -> String {
    let (addr, len) = cidr.split_once('/').expect("a CIDR");
    assert_eq!(len, "24", "only /24s have a /64 twin");
    format!("{}/64", ipv6_twin(addr.parse().expect("an IPv4 address")))
}

/// (backend, client address it saw) of a `kxdp-peer serve` answer
/// `backend=NAME client=ADDR:PORT …` (an IPv6 client in brackets).
pub fn parse_answer(answer: &str) -> (String, IpAddr) {
    let field = |key: &str| {
        answer
            .split_whitespace()
            .find_map(|w| w.strip_prefix(key))
            .unwrap_or_else(|| panic!("no {key} in {answer:?}"))
            .to_string()
    };
    let client: SocketAddr = field("client=")
        .parse()
        .unwrap_or_else(|e| panic!("client in {answer:?}: {e}"));
    (field("backend="), client.ip())
}

/// Ports every pod's `kxdp-peer serve` listens on.
pub const POD_HTTP_PORT: u16 = 8080;
pub const POD_UDP_PORT: u16 = 5353;

/// Longest a client helper waits for an answer that should come.
const ANSWER: Duration = Duration::from_secs(3);

/// Just under Linux's first SYN retransmission (TCP_TIMEOUT_INIT, 1 s).
const BEFORE_SYN_RETRANSMIT: Duration = Duration::from_millis(900);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NodeId {
    A,
    B,
}

impl NodeId {
    /// The node's name, as in `nodeName` of EndpointSlices.
    pub fn name(self) -> &'static str {
        match self {
            NodeId::A => "node-a",
            NodeId::B => "node-b",
        }
    }

    /// Address of its `eth0` on the underlay.
    pub fn nic_ip(self) -> Ipv4Addr {
        match self {
            NodeId::A => Ipv4Addr::new(192, 168, 50, 1),
            NodeId::B => Ipv4Addr::new(192, 168, 50, 2),
        }
    }

    /// Pod `index` of this node: 10.1.1.index on A, 10.1.2.index on B;
    /// index 1 is the pods' gateway.
    pub fn pod_ip(self, index: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, 1, self.subnet(), index)
    }

    /// Its pod CIDR.
    pub fn pod_cidr(self) -> String {
        format!("{}/24", self.pod_ip(0))
    }

    fn subnet(self) -> u8 {
        match self {
            NodeId::A => 1,
            NodeId::B => 2,
        }
    }

    fn other(self) -> Self {
        match self {
            NodeId::A => NodeId::B,
            NodeId::B => NodeId::A,
        }
    }

    /// One letter for interface and namespace names.
    fn letter(self) -> char {
        match self {
            NodeId::A => 'a',
            NodeId::B => 'b',
        }
    }
}

pub struct TwoNode {
    /// Short unique prefix of every namespace and interface created.
    pub prefix: String,
    /// Holds bridge `br0`, the underlay.
    pub lan: String,
    /// The external client.
    pub ext: String,
    node_a: String,
    node_b: String,
    pub pods: Vec<Pod>,
    /// The manifest directory node A's agent reads.
    pub manifests: PathBuf,
    peer: PathBuf,
    /// The pass-everything XDP program on node A's bridge port, attached
    /// while this lives (see `pass_xdp_on_bridge_port`).
    _pass_xdp: Option<Ebpf>,
    /// Declared before `bpffs`: processes and veths go before the pins.
    namespaces: Namespaces,
    /// Private bpffs for node A's pins.
    bpffs: PrivateBpffs,
    /// The cgroup node A's socket hooks attach to (never the machine's root).
    pub cgroup: TestCgroup,
}

impl TwoNode {
    pub fn new() -> anyhow::Result<Self> {
        require_root("the two-node topology");
        let mut namespaces = Namespaces::new();
        let prefix = namespaces.prefix.clone();
        let bpffs = PrivateBpffs::new(&prefix).context("mounting a private bpffs")?;
        let cgroup = TestCgroup::new(&prefix).context("making a test cgroup")?;
        let lan = namespaces.add("lan")?;
        let ext = namespaces.add("ext")?;
        let node_a = namespaces.add(NodeId::A.name())?;
        let node_b = namespaces.add(NodeId::B.name())?;
        let manifests = std::env::temp_dir().join(format!("{prefix}-manifests"));
        let mut topology = Self {
            prefix,
            lan,
            ext,
            node_a,
            node_b,
            pods: Vec::new(),
            manifests,
            peer: peer_bin(),
            _pass_xdp: None,
            namespaces,
            bpffs,
            cgroup,
        };
        std::fs::create_dir_all(&topology.manifests)?;
        topology.build()?;
        topology._pass_xdp = Some(topology.pass_xdp_on_bridge_port()?);
        Ok(topology)
    }

    fn build(&self) -> anyhow::Result<()> {
        let lan = self.lan.as_str();
        // No multicast snooping: neighbour discovery's multicast reaches
        // every port without waiting for the bridge to learn listeners.
        exec_ok(
            lan,
            &[
                "ip",
                "link",
                "add",
                "br0",
                "type",
                "bridge",
                "mcast_snooping",
                "0",
            ],
        )?;
        exec_ok(lan, &["ip", "link", "set", "br0", "up"])?;

        skip_dad(&self.ext)?;
        self.attach_to_lan(&self.ext, 'x', EXT_IP)?;
        let via_a = NodeId::A.nic_ip();
        for (range, via) in [
            (EXTERNAL_RANGE.to_string(), via_a.to_string()),
            (ipv6_twin_cidr(EXTERNAL_RANGE), ipv6_twin(via_a).to_string()),
        ] {
            exec_ok(&self.ext, &["ip", "route", "add", &range, "via", &via])?;
        }

        for node in [NodeId::A, NodeId::B] {
            let ns = self.netns(node);
            // Before eth0 moves in: a device takes `default` on arrival, and
            // the effective rp_filter is the larger of `all` and the device's.
            for sysctl in [
                "net.ipv4.ip_forward=1",
                "net.ipv4.conf.all.rp_filter=0",
                "net.ipv4.conf.default.rp_filter=0",
                "net.ipv6.conf.all.forwarding=1",
            ] {
                exec_ok(ns, &["sysctl", "-q", "-w", sysctl])?;
            }
            skip_dad(ns)?;
            self.attach_to_lan(ns, node.letter(), node.nic_ip())?;
            let other = node.other();
            let via = other.nic_ip();
            for (cidr, via) in [
                (other.pod_cidr(), via.to_string()),
                (
                    ipv6_twin_cidr(&other.pod_cidr()),
                    ipv6_twin(via).to_string(),
                ),
            ] {
                exec_ok(ns, &["ip", "route", "add", &cidr, "via", &via])?;
            }
        }

        Ok(())
    }

    /// kxdp answers on node A's NIC with XDP_TX (and redirects to it). A
    /// veth hands such frames to its peer only when the peer runs NAPI (an
    /// XDP program or GRO), and it wakes the peer's NAPI for them only when
    /// the peer has an XDP program (veth_xdp_flush): with GRO alone they
    /// wait, measured here, until the next ordinary packet, up to seconds.
    /// So the bridge side of node A's NIC gets an XDP program that passes
    /// everything, as a physical NIC needs none.
    fn pass_xdp_on_bridge_port(&self) -> anyhow::Result<Ebpf> {
        let (lan, port) = (self.lan.clone(), self.nic_bridge_port(NodeId::A));
        std::thread::scope(|scope| {
            scope
                .spawn(move || -> anyhow::Result<Ebpf> {
                    // Only this thread moves into the LAN's namespace.
                    let netns = std::fs::File::open(format!("/run/netns/{lan}"))?;
                    // SAFETY: a valid namespace fd; affects this thread only.
                    if unsafe { libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                        bail!("setns {lan}: {}", std::io::Error::last_os_error());
                    }
                    let mut ebpf = Ebpf::load(FLOOR_OBJECT)?;
                    let pass: &mut Xdp = ebpf
                        .program_mut("floor_xdp")
                        .context("floor_xdp")?
                        .try_into()?;
                    pass.load()?;
                    pass.attach(&port, XdpMode::Driver)
                        .with_context(|| format!("XDP on {port}"))?;
                    Ok(ebpf)
                })
                .join()
                .map_err(|_| anyhow::anyhow!("the XDP attach thread panicked"))?
        })
    }

    /// Gives `netns` an `eth0` holding `ip`/24 and its twin/64, plugged
    /// into `br0`.
    fn attach_to_lan(&self, netns: &str, letter: char, ip: Ipv4Addr) -> anyhow::Result<()> {
        let port = format!("{}l{letter}", self.prefix);
        let temp = format!("{}t{letter}", self.prefix);
        add_veth(&self.lan, &port, netns, &temp, "eth0")?;
        exec_ok(&self.lan, &["ip", "link", "set", &port, "master", "br0"])?;
        exec_ok(
            netns,
            &["ip", "addr", "add", &format!("{ip}/24"), "dev", "eth0"],
        )?;
        let ip6 = format!("{}/64", ipv6_twin(ip));
        exec_ok(netns, &["ip", "addr", "add", &ip6, "dev", "eth0", "nodad"])?;
        Ok(())
    }

    /// The namespace of `node`.
    pub fn netns(&self, node: NodeId) -> &str {
        match node {
            NodeId::A => &self.node_a,
            NodeId::B => &self.node_b,
        }
    }

    /// The bridge port (in `lan`) that is the peer of `node`'s `eth0`.
    pub fn nic_bridge_port(&self, node: NodeId) -> String {
        format!("{}l{}", self.prefix, node.letter())
    }

    /// Glob matching the host side of every pod interface, on both nodes.
    pub fn pod_interface_glob(&self) -> String {
        format!("{}p*", self.prefix)
    }

    /// Where node A's agent pins its maps and links.
    pub fn pin_path(&self) -> PathBuf {
        self.bpffs.path().join("kxdp")
    }

    /// Adds pod `name` on `node` at `node.pod_ip(index)` (index 2..=254),
    /// serving `kxdp-peer serve --name NAME` on `POD_HTTP_PORT` and
    /// `POD_UDP_PORT`; its address.
    pub fn add_pod(&mut self, node: NodeId, name: &str, index: u8) -> anyhow::Result<Ipv4Addr> {
        if !(2..=254).contains(&index) {
            bail!("pod index {index} is not in 2..=254");
        }
        let host_ns = self.netns(node).to_string();
        let host_interface = format!("{}p{index}", self.prefix);
        let temp = format!("{}c{index}", self.prefix);
        let ip = node.pod_ip(index);
        let gateway = node.pod_ip(1).to_string();
        let netns = self.namespaces.add(&format!("{}-{name}", node.letter()))?;
        skip_dad(&netns)?;
        add_veth(&host_ns, &host_interface, &netns, &temp, "eth0")?;
        let ip6 = ipv6_twin(ip);
        let gateway6 = ipv6_twin(node.pod_ip(1)).to_string();
        // The same gateway on every host veth; each pod is a host route.
        for (gateway, pod) in [
            (format!("{gateway}/32"), format!("{ip}/32")),
            (format!("{gateway6}/128"), format!("{ip6}/128")),
        ] {
            let dev = host_interface.as_str();
            exec_ok(&host_ns, &["ip", "addr", "add", &gateway, "dev", dev])?;
            exec_ok(&host_ns, &["ip", "route", "add", &pod, "dev", dev])?;
            exec_ok(&netns, &["ip", "addr", "add", &pod, "dev", "eth0"])?;
        }
        for gateway in [gateway, gateway6] {
            exec_ok(
                &netns,
                &[
                    "ip", "route", "add", &gateway, "dev", "eth0", "scope", "link",
                ],
            )?;
            exec_ok(
                &netns,
                &[
                    "ip", "route", "add", "default", "via", &gateway, "dev", "eth0",
                ],
            )?;
        }
        self.pods.push(Pod {
            name: name.to_string(),
            netns: netns.clone(),
            ip,
            ip6: Some(ip6),
            host_interface,
        });
        let (http, udp) = (POD_HTTP_PORT.to_string(), POD_UDP_PORT.to_string());
        self.start_peer(
            &netns,
            &["serve", "--name", name, "--tcp", &http, "--udp", &udp],
        )?;
        Ok(ip)
    }

    pub fn pod(&self, name: &str) -> &Pod {
        self.pods
            .iter()
            .find(|p| p.name == name)
            .unwrap_or_else(|| panic!("no pod {name}"))
    }

    /// Starts `kxdp-peer ARGS` (a server) in `netns` for as long as the
    /// topology lives, and waits until it listens.
    pub fn start_peer(&mut self, netns: &str, args: &[&str]) -> anyhow::Result<()> {
        let mut server = command(netns, &self.peer);
        server.args(args);
        self.namespaces.spawn_ready(server, PEER_READY)
    }

    /// Runs client `program ARGS` in `netns`; its stdout, or its stderr on
    /// failure. Bounding the wait is up to the client's arguments.
    pub fn run_in(
        &self,
        netns: &str,
        program: impl AsRef<Path>,
        args: &[&str],
    ) -> Result<String, String> {
        match command(netns, program).args(args).output() {
            Ok(o) if o.status.success() => {
                Ok(String::from_utf8_lossy(&o.stdout).trim().to_string())
            }
            Ok(o) => Err(String::from_utf8_lossy(&o.stderr).trim().to_string()),
            Err(e) => Err(e.to_string()),
        }
    }

    /// One HTTP GET of `http://TARGET/` from `netns`, given up after
    /// `max_time`; the body, whatever the status.
    pub fn curl(&self, netns: &str, target: &str, max_time: Duration) -> Result<String, String> {
        let max_time = format!("{:.1}", max_time.as_secs_f64());
        let url = format!("http://{target}/");
        // -g: an IPv6 target's brackets are no glob.
        self.run_in(netns, "curl", &["-gsS", "--max-time", &max_time, &url])
    }

    /// One HTTP GET from `ext`; the body.
    pub fn ext_http_get(&self, target: &str) -> Result<String, String> {
        self.curl(&self.ext, target, ANSWER)
    }

    /// One HTTP GET from `ext` that gives up after `max_time`: for targets
    /// expected not to answer.
    pub fn ext_http_get_within(&self, target: &str, max_time: Duration) -> Result<String, String> {
        self.curl(&self.ext, target, max_time)
    }

    /// Whether `ext`'s connect to `target` is refused (RST or ICMP
    /// unreachable) at its first SYN: curl, given less time to connect than
    /// the SYN's first retransmission takes, reports a refusal as "Couldn't
    /// connect" and a dropped SYN as "timed out", so no wall clock is read.
    pub fn ext_connect_refused_at_once(&self, target: &str) -> Result<(), String> {
        let connect_timeout = format!("{:.1}", BEFORE_SYN_RETRANSMIT.as_secs_f64());
        let url = format!("http://{target}/");
        match self.run_in(
            &self.ext,
            "curl",
            &["-gsS", "--connect-timeout", &connect_timeout, &url],
        ) {
            Err(e) if e.contains("Couldn't connect") => Ok(()),
            other => Err(format!("{target}: not refused at once: {other:?}")),
        }
    }

    /// One HTTP GET of `http://TARGET/` from `ext`, e.g. to a
    /// healthCheckNodePort, which answers 503 when it has no local endpoint:
    /// the status code and the body.
    pub fn ext_http_status(&self, target: &str) -> Result<(u16, String), String> {
        let url = format!("http://{target}/");
        let max_time = format!("{:.1}", ANSWER.as_secs_f64());
        // The status goes on a line of its own after the body.
        let out = self.run_in(
            &self.ext,
            "curl",
            &[
                "-gsS",
                "--max-time",
                &max_time,
                "-w",
                "\n%{http_code}",
                &url,
            ],
        )?;
        let (body, code) = out.rsplit_once('\n').unwrap_or(("", &out));
        let code = code
            .parse()
            .map_err(|_| format!("no status code in {out:?}"))?;
        Ok((code, body.trim().to_string()))
    }

    /// One UDP request from `ext`; `from=<addr> <answer>`.
    pub fn ext_udp_query(&self, target: &str, payload: &str) -> Result<String, String> {
        let timeout_ms = ANSWER.as_millis().to_string();
        self.run_in(
            &self.ext,
            &self.peer,
            &["udp-query", target, payload, &timeout_ms],
        )
    }

    /// One datagram from `ext` on a connected socket: "answered", "refused"
    /// (an ICMP port unreachable came back), or an error on silence.
    pub fn ext_udp_probe(&self, target: &str) -> Result<String, String> {
        let timeout_ms = ANSWER.as_millis().to_string();
        self.run_in(&self.ext, &self.peer, &["udp-probe", target, &timeout_ms])
    }

    /// `n` HTTP GETs from `ext` to `target`, every one answered: the
    /// (backend, client address seen) pairs.
    pub fn ext_answers(&self, target: &str, n: usize) -> BTreeSet<(String, IpAddr)> {
        (0..n)
            .map(|i| {
                let answer = self
                    .ext_http_get(target)
                    .unwrap_or_else(|e| panic!("GET {target} #{i}: {e}"));
                parse_answer(&answer)
            })
            .collect()
    }

    /// Writes (or replaces) manifest `file` for node A's agent, atomically.
    pub fn write_manifest(&self, file: &str, yaml: &str) -> anyhow::Result<()> {
        Ok(write_manifest(&self.manifests, file, yaml)?)
    }

    /// Starts `kxdp agent` on node A: NIC `eth0`, node name `node-a`, the
    /// manifest directory, pod interfaces, pins, and `flags`.
    pub fn start_agent(&self, flags: &[&OsStr]) -> anyhow::Result<Agent> {
        let host = AgentHost {
            netns: &self.node_a,
            pod_interfaces: &self.pod_interface_glob(),
            pin_path: &self.pin_path(),
            cgroup_path: self.cgroup.path(),
        };
        let mut all: Vec<&OsStr> = vec![
            "--nic".as_ref(),
            "eth0".as_ref(),
            "--node-name".as_ref(),
            NodeId::A.name().as_ref(),
            "--manifests".as_ref(),
            self.manifests.as_os_str(),
        ];
        all.extend_from_slice(flags);
        Agent::start_on(&host, &all)
    }
}

impl TwoNode {
    /// [`Self::start_agent`] without flags, once it has synced and attached
    /// XDP (each awaited up to `timeout`).
    pub fn start_agent_attached(&self, timeout: Duration) -> anyhow::Result<Agent> {
        let mut agent = self.start_agent(&[])?;
        agent.wait_for(&["synced"], 1, timeout)?;
        agent.wait_for(&["attached XDP"], 1, timeout)?;
        Ok(agent)
    }
}

impl Drop for TwoNode {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.manifests);
    }
}
