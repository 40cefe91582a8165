//! A mini node built from network namespaces: a "node" namespace where the
//! agent runs, and pod namespaces joined to it by veth pairs, the host side
//! of each in the node. Pod `i` is 10.200.i.2/24 behind gateway 10.200.i.1,
//! and fd00:200:i::2/64 behind fd00:200:i::1: every pod is dual-stack.
//! Hosts outside the cluster hang off the node the same way, on 192.168.x
//! and fd00:c0a8:x::.
//!
//! Checksum offloads are switched off on every veth: with them on, veth
//! leaves TCP checksums partial and nobody verifies them, so a broken
//! checksum rewrite would still pass.
//!
//! Everything is removed on drop, also when a test panics. The building
//! blocks (`Namespaces`, `add_veth`, `command`) also make the two-node
//! topology.

use std::{
    io::{BufRead as _, BufReader},
    net::{Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::{
        atomic::{AtomicU32, Ordering},
        mpsc,
    },
    time::Duration,
};

use anyhow::{bail, Context as _};

use crate::{
    cgroup::TestCgroup,
    privileged::{require_root, PrivateBpffs},
};

static NEXT_TAG: AtomicU32 = AtomicU32::new(0);

/// Runs a command, failing with its stderr if it fails.
pub fn run(command: &mut Command) -> anyhow::Result<Output> {
    let output = command
        .output()
        .with_context(|| format!("spawning {command:?}"))?;
    if !output.status.success() {
        bail!(
            "{command:?} failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(output)
}

/// A command run inside `netns`.
pub fn command(netns: &str, program: impl AsRef<Path>) -> Command {
    let mut command = Command::new("ip");
    command.args(["netns", "exec", netns]).arg(program.as_ref());
    command
}

/// Runs `argv` inside `netns`, failing with its stderr if it fails.
pub fn exec_ok(netns: &str, argv: &[&str]) -> anyhow::Result<Output> {
    let mut command = command(netns, argv[0]);
    command.args(&argv[1..]);
    run(&mut command)
}

/// Network namespaces named `<prefix>-…` and the processes started in them.
/// On drop the processes are killed, then the namespaces deleted (which
/// deletes their veths and detaches whatever was attached to them).
pub struct Namespaces {
    /// Short prefix unique to this process and instance, for every name.
    pub prefix: String,
    names: Vec<String>,
    children: Vec<Child>,
}

impl Namespaces {
    pub fn new() -> Self {
        let tag = std::process::id() % 100_000 * 10 + NEXT_TAG.fetch_add(1, Ordering::Relaxed) % 10;
        Self {
            prefix: format!("kx{tag}"),
            names: Vec::new(),
            children: Vec::new(),
        }
    }

    /// Creates namespace `<prefix>-<suffix>` with loopback up; its name.
    pub fn add(&mut self, suffix: &str) -> anyhow::Result<String> {
        let name = format!("{}-{suffix}", self.prefix);
        run(Command::new("ip").args(["netns", "add", &name]))?;
        self.names.push(name.clone());
        exec_ok(&name, &["ip", "link", "set", "lo", "up"])?;
        Ok(name)
    }

    /// Starts a long-running process that is killed on drop.
    pub fn spawn(&mut self, mut command: Command) -> anyhow::Result<&mut Child> {
        let child = command
            .stdin(Stdio::null())
            .spawn()
            .with_context(|| format!("spawning {command:?}"))?;
        self.children.push(child);
        Ok(self.children.last_mut().expect("just pushed"))
    }

    /// Starts a server that prints "ready" once it listens, and waits for
    /// that line at most `within`: no sleeping in tests, no hanging either.
    pub fn spawn_ready(&mut self, mut command: Command, within: Duration) -> anyhow::Result<()> {
        let what = format!("{command:?}");
        command.stdout(Stdio::piped());
        let stdout = self.spawn(command)?.stdout.take().context("piped stdout")?;
        let (tx, rx) = mpsc::channel();
        // A reader thread, so the wait can time out; it ends at the
        // server's first line or at its death.
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let within = crate::patience(within);
        match rx.recv_timeout(within) {
            Ok(line) if line.trim() == "ready" => Ok(()),
            Ok(line) => bail!("{what} did not start: it printed {line:?}"),
            Err(_) => bail!("{what} was not ready within {within:?}"),
        }
    }
}

impl Default for Namespaces {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        for ns in self.names.iter().rev() {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// A veth pair, both ends up with checksum offloads off: `dev` in `netns`
/// and `peer_name` in `peer_netns`. `temp_peer` names the peer until it
/// moves, so it must be free in `netns`.
pub fn add_veth(
    netns: &str,
    dev: &str,
    peer_netns: &str,
    temp_peer: &str,
    peer_name: &str,
) -> anyhow::Result<()> {
    exec_ok(
        netns,
        &[
            "ip", "link", "add", dev, "type", "veth", "peer", "name", temp_peer,
        ],
    )?;
    exec_ok(
        netns,
        &["ip", "link", "set", temp_peer, "netns", peer_netns],
    )?;
    exec_ok(
        peer_netns,
        &["ip", "link", "set", temp_peer, "name", peer_name],
    )?;
    for (ns, dev) in [(netns, dev), (peer_netns, peer_name)] {
        exec_ok(ns, &["ethtool", "-K", dev, "tx", "off", "rx", "off"])?;
        exec_ok(ns, &["ip", "link", "set", dev, "up"])?;
    }
    Ok(())
}

pub struct Pod {
    pub name: String,
    /// The pod's network namespace.
    pub netns: String,
    pub ip: Ipv4Addr,
    /// Its IPv6 address, if it has one (every pod of a mini node and of the
    /// two-node topology has).
    pub ip6: Option<Ipv6Addr>,
    /// Host side of the pod's veth, in the node namespace.
    pub host_interface: String,
}

/// A host outside the cluster, routed through the node.
pub struct ExternalHost {
    pub netns: String,
    pub ip: Ipv4Addr,
    pub ip6: Ipv6Addr,
    /// Node side of its veth.
    pub node_interface: String,
}

/// No duplicate address detection on interfaces `netns` gets from now on:
/// while a fresh veth's link-local address is tentative, IPv6 between the
/// namespaces stalls (the first connection took 2 s, measured), and the
/// addresses here are unique by construction.
pub fn skip_dad(netns: &str) -> anyhow::Result<()> {
    for conf in ["all", "default"] {
        let setting = format!("net.ipv6.conf.{conf}.accept_dad=0");
        exec_ok(netns, &["sysctl", "-q", "-w", &setting])?;
    }
    Ok(())
}

/// Pod `index`'s IPv6 subnet fd00:200:`index`::/64, host `host` in it.
pub fn pod_ip6(index: u8, host: u16) -> Ipv6Addr {
    Ipv6Addr::new(0xfd00, 0x200, index.into(), 0, 0, 0, 0, host)
}

/// A veth joining a namespace to the node, with both families' addresses.
struct Link<'a> {
    host_interface: &'a str,
    /// Names the namespace's `eth0` until it moves.
    peer: &'a str,
    gateway: Ipv4Addr,
    ip: Ipv4Addr,
    gateway6: Ipv6Addr,
    ip6: Ipv6Addr,
}

pub struct MiniNode {
    /// Short unique prefix for every name this node creates.
    pub prefix: String,
    pub node_netns: String,
    pub pods: Vec<Pod>,
    /// Declared before `bpffs`: processes and veths go before the pins.
    namespaces: Namespaces,
    /// Private bpffs mount for this node's pins.
    bpffs: PrivateBpffs,
    /// The cgroup the agent's socket hooks attach to (never the machine's
    /// root); last, so its processes and links are gone when it goes.
    pub cgroup: TestCgroup,
}

impl MiniNode {
    pub fn new() -> anyhow::Result<Self> {
        require_root("the namespace suite");
        let mut namespaces = Namespaces::new();
        let prefix = namespaces.prefix.clone();
        let bpffs = PrivateBpffs::new(&prefix).context("mounting a private bpffs")?;
        let cgroup = TestCgroup::new(&prefix).context("making a test cgroup")?;
        let node_netns = namespaces.add("node")?;
        for forwarding in ["net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"] {
            exec_ok(&node_netns, &["sysctl", "-q", "-w", forwarding])?;
        }
        skip_dad(&node_netns)?;
        Ok(Self {
            prefix,
            node_netns,
            pods: Vec::new(),
            namespaces,
            bpffs,
            cgroup,
        })
    }

    /// Where the agent of this node pins its maps and links.
    pub fn pin_path(&self) -> PathBuf {
        self.bpffs.path().join("kxdp")
    }

    /// Glob matching the host side of every pod interface.
    pub fn pod_interface_glob(&self) -> String {
        format!("{}p*", self.prefix)
    }

    /// Adds pod number `index` (1..=250) named `name`.
    pub fn add_pod(&mut self, name: &str, index: u8) -> anyhow::Result<&Pod> {
        let host_interface = format!("{}p{index}", self.prefix);
        let peer = format!("{}c{index}", self.prefix);
        let ip = Ipv4Addr::new(10, 200, index, 2);
        let gateway = Ipv4Addr::new(10, 200, index, 1);
        let (ip6, gateway6) = (pod_ip6(index, 2), pod_ip6(index, 1));
        let netns = self.namespaces.add(name)?;
        let link = Link {
            host_interface: &host_interface,
            peer: &peer,
            gateway,
            ip,
            gateway6,
            ip6,
        };
        self.link_to_node(&netns, &link)?;
        self.pods.push(Pod {
            name: name.to_string(),
            netns,
            ip,
            ip6: Some(ip6),
            host_interface,
        });
        Ok(self.pods.last().expect("just pushed"))
    }

    /// Adds a host outside the cluster (an external server) at
    /// 192.168.`subnet`.2/24 and fd00:c0a8:`subnet`::2/64 behind the node's
    /// .1 and ::1. Its veth's node side is not named like pod interfaces, so
    /// no agent attaches to it.
    pub fn add_external_host(&mut self, name: &str, subnet: u8) -> anyhow::Result<ExternalHost> {
        let node_interface = format!("{}x{subnet}", self.prefix);
        let peer = format!("{}e{subnet}", self.prefix);
        let ip = Ipv4Addr::new(192, 168, subnet, 2);
        let ip6 = Ipv6Addr::new(0xfd00, 0xc0a8, subnet.into(), 0, 0, 0, 0, 2);
        let netns = self.namespaces.add(name)?;
        let link = Link {
            host_interface: &node_interface,
            peer: &peer,
            gateway: Ipv4Addr::new(192, 168, subnet, 1),
            ip,
            gateway6: Ipv6Addr::new(0xfd00, 0xc0a8, subnet.into(), 0, 0, 0, 0, 1),
            ip6,
        };
        self.link_to_node(&netns, &link)?;
        Ok(ExternalHost {
            netns,
            ip,
            ip6,
            node_interface,
        })
    }

    /// Joins `netns` to the node by a veth: `host_interface` holds the
    /// gateways in the node, `eth0` holds the addresses in `netns` (a /24
    /// and a /64) and routes everything via the gateways. IPv6 addresses
    /// skip duplicate address detection (`skip_dad`), so they serve at once.
    fn link_to_node(&self, netns: &str, link: &Link) -> anyhow::Result<()> {
        let node = self.node_netns.as_str();
        skip_dad(netns)?;
        add_veth(node, link.host_interface, netns, link.peer, "eth0")?;
        let dev = link.host_interface;
        for (ns, dev, cidr) in [
            (node, dev, format!("{}/24", link.gateway)),
            (netns, "eth0", format!("{}/24", link.ip)),
        ] {
            exec_ok(ns, &["ip", "addr", "add", &cidr, "dev", dev])?;
        }
        for (ns, dev, cidr) in [
            (node, dev, format!("{}/64", link.gateway6)),
            (netns, "eth0", format!("{}/64", link.ip6)),
        ] {
            exec_ok(ns, &["ip", "-6", "addr", "add", &cidr, "dev", dev, "nodad"])?;
        }
        for gateway in [link.gateway.to_string(), link.gateway6.to_string()] {
            exec_ok(netns, &["ip", "route", "add", "default", "via", &gateway])?;
        }
        Ok(())
    }

    /// Switches checksum and segmentation offloads on every pod veth, both
    /// ends. They start off (see the module doc); benchmarks switch them on
    /// to measure what pods get with veth's defaults.
    pub fn set_offloads(&self, on: bool) -> anyhow::Result<()> {
        let state = if on { "on" } else { "off" };
        let features = [
            "tx", state, "rx", state, "sg", state, "tso", state, "gso", state,
        ];
        for pod in &self.pods {
            for (ns, dev) in [
                (self.node_netns.as_str(), pod.host_interface.as_str()),
                (pod.netns.as_str(), "eth0"),
            ] {
                let mut argv = vec!["ethtool", "-K", dev];
                argv.extend(features);
                self.exec_ok(ns, &argv)?;
            }
        }
        Ok(())
    }

    pub fn pod(&self, name: &str) -> &Pod {
        self.pods
            .iter()
            .find(|p| p.name == name)
            .unwrap_or_else(|| panic!("no pod {name}"))
    }

    /// A command run inside `netns`.
    pub fn command(&self, netns: &str, program: impl AsRef<Path>) -> Command {
        command(netns, program)
    }

    pub fn exec_ok(&self, netns: &str, argv: &[&str]) -> anyhow::Result<Output> {
        exec_ok(netns, argv)
    }

    /// Starts a long-running process that is killed when the node goes.
    pub fn spawn(&mut self, command: Command) -> anyhow::Result<&mut Child> {
        self.namespaces.spawn(command)
    }

    /// Starts a server printing "ready" (see `Namespaces::spawn_ready`).
    pub fn spawn_ready(&mut self, command: Command, within: Duration) -> anyhow::Result<()> {
        self.namespaces.spawn_ready(command, within)
    }
}
