//! A mini node built from network namespaces: a "node" namespace where the
//! agent runs, and pod namespaces joined to it by veth pairs, the host side
//! of each in the node. Pod `i` is 10.200.i.2/24 behind gateway 10.200.i.1.
//! Hosts outside the cluster hang off the node the same way, on 192.168.x.
//!
//! Checksum offloads are switched off on every veth: with them on, veth
//! leaves TCP checksums partial and nobody verifies them, so a broken
//! checksum rewrite would still pass.
//!
//! Everything is removed on drop, also when a test panics.

use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::atomic::{AtomicU32, Ordering},
};

use anyhow::{bail, Context as _};

use crate::privileged::{require_root, PrivateBpffs};

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

pub struct Pod {
    pub name: String,
    /// The pod's network namespace.
    pub netns: String,
    pub ip: Ipv4Addr,
    /// Host side of the pod's veth, in the node namespace.
    pub host_interface: String,
}

/// A host outside the cluster, routed through the node.
pub struct ExternalHost {
    pub netns: String,
    pub ip: Ipv4Addr,
    /// Node side of its veth.
    pub node_interface: String,
}

pub struct MiniNode {
    /// Short unique prefix for every name this node creates.
    pub prefix: String,
    pub node_netns: String,
    pub pods: Vec<Pod>,
    /// Private bpffs mount for this node's pins.
    bpffs: PrivateBpffs,
    children: Vec<Child>,
    namespaces: Vec<String>,
}

impl MiniNode {
    pub fn new() -> anyhow::Result<Self> {
        require_root("the namespace suite");
        let tag = std::process::id() % 100_000 * 10 + NEXT_TAG.fetch_add(1, Ordering::Relaxed) % 10;
        let prefix = format!("kx{tag}");
        let bpffs = PrivateBpffs::new(&prefix).context("mounting a private bpffs")?;
        let mut node = Self {
            node_netns: format!("{prefix}-node"),
            prefix,
            pods: Vec::new(),
            bpffs,
            children: Vec::new(),
            namespaces: Vec::new(),
        };
        let ns = node.node_netns.clone();
        node.add_netns(&ns)?;
        node.exec_ok(&ns, &["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"])?;
        Ok(node)
    }

    fn add_netns(&mut self, name: &str) -> anyhow::Result<()> {
        run(Command::new("ip").args(["netns", "add", name]))?;
        self.namespaces.push(name.to_string());
        self.exec_ok(name, &["ip", "link", "set", "lo", "up"])?;
        Ok(())
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
        let netns = format!("{}-{name}", self.prefix);
        let host_interface = format!("{}p{index}", self.prefix);
        let peer = format!("{}c{index}", self.prefix);
        let ip = Ipv4Addr::new(10, 200, index, 2);
        let gateway = Ipv4Addr::new(10, 200, index, 1);
        self.add_netns(&netns)?;
        self.link_to_node(&netns, &host_interface, &peer, gateway, ip)?;
        self.pods.push(Pod {
            name: name.to_string(),
            netns,
            ip,
            host_interface,
        });
        Ok(self.pods.last().expect("just pushed"))
    }

    /// Adds a host outside the cluster (an external server) at
    /// 192.168.`subnet`.2/24 behind the node's 192.168.`subnet`.1. Its veth's
    /// node side is not named like pod interfaces, so no agent attaches to it.
    pub fn add_external_host(&mut self, name: &str, subnet: u8) -> anyhow::Result<ExternalHost> {
        let netns = format!("{}-{name}", self.prefix);
        let node_interface = format!("{}x{subnet}", self.prefix);
        let peer = format!("{}e{subnet}", self.prefix);
        let ip = Ipv4Addr::new(192, 168, subnet, 2);
        let gateway = Ipv4Addr::new(192, 168, subnet, 1);
        self.add_netns(&netns)?;
        self.link_to_node(&netns, &node_interface, &peer, gateway, ip)?;
        Ok(ExternalHost {
            netns,
            ip,
            node_interface,
        })
    }

    /// Joins `netns` to the node by a veth: `host_interface` holds `gateway`
    /// in the node, `eth0` holds `ip` in `netns` (both /24) and routes
    /// everything via the gateway. `peer` names `eth0` until it moves.
    fn link_to_node(
        &self,
        netns: &str,
        host_interface: &str,
        peer: &str,
        gateway: Ipv4Addr,
        ip: Ipv4Addr,
    ) -> anyhow::Result<()> {
        let node = self.node_netns.clone();
        self.exec_ok(
            &node,
            &[
                "ip",
                "link",
                "add",
                host_interface,
                "type",
                "veth",
                "peer",
                "name",
                peer,
            ],
        )?;
        self.exec_ok(&node, &["ip", "link", "set", peer, "netns", netns])?;
        self.exec_ok(netns, &["ip", "link", "set", peer, "name", "eth0"])?;
        self.exec_ok(
            &node,
            &[
                "ip",
                "addr",
                "add",
                &format!("{gateway}/24"),
                "dev",
                host_interface,
            ],
        )?;
        self.exec_ok(
            netns,
            &["ip", "addr", "add", &format!("{ip}/24"), "dev", "eth0"],
        )?;
        for (ns, dev) in [(node.as_str(), host_interface), (netns, "eth0")] {
            self.exec_ok(ns, &["ethtool", "-K", dev, "tx", "off", "rx", "off"])?;
            self.exec_ok(ns, &["ip", "link", "set", dev, "up"])?;
        }
        self.exec_ok(
            netns,
            &["ip", "route", "add", "default", "via", &gateway.to_string()],
        )?;
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
        let mut command = Command::new("ip");
        command.args(["netns", "exec", netns]).arg(program.as_ref());
        command
    }

    pub fn exec_ok(&self, netns: &str, argv: &[&str]) -> anyhow::Result<Output> {
        let mut command = self.command(netns, argv[0]);
        command.args(&argv[1..]);
        run(&mut command)
    }

    /// Starts a long-running process that is killed when the node goes.
    pub fn spawn(&mut self, mut command: Command) -> anyhow::Result<&mut Child> {
        let child = command
            .stdin(Stdio::null())
            .spawn()
            .with_context(|| format!("spawning {command:?}"))?;
        self.children.push(child);
        Ok(self.children.last_mut().expect("just pushed"))
    }
}

impl Drop for MiniNode {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        // Deleting a namespace deletes its veths, which detaches their links.
        for ns in self.namespaces.iter().rev() {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
        // `bpffs` unmounts itself after this.
    }
}
