//! The echo scenario shared by the namespace suite, the demo and the
//! benchmarks: a mini node with a client pod and backend pods running
//! `kxdp-peer serve`, the kubectl-written `echo` Service and its
//! EndpointSlice in a manifest directory.

use std::{
    ffi::OsStr,
    fs,
    io::{BufRead, BufReader},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
    process::Stdio,
    sync::mpsc::{self, Receiver},
    time::Duration,
};

use crate::{
    agent::{kxdp_bin, pod_hook_adopted, Agent},
    manifests::{
        allocated_cluster_ip, echo_endpoint_slice, endpoint_slice, service, write_manifest,
        Endpoint, ServiceManifest, ECHO_SERVICE, SLICE_CONTROLLER,
    },
    netns::{run, MiniNode},
};

const AGENT_READY: Duration = Duration::from_secs(10);

/// `kxdp-peer` next to the running binary (bins) or one level up (tests run
/// from `target/<profile>/deps`), unless `$KXDP_PEER_BIN` says otherwise.
pub fn peer_bin() -> PathBuf {
    if let Some(path) = std::env::var_os("KXDP_PEER_BIN") {
        return path.into();
    }
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe.parent().expect("exe dir");
    [dir.join("kxdp-peer"), dir.join("../kxdp-peer")]
        .into_iter()
        .find(|p| p.exists())
        .unwrap_or_else(|| {
            panic!(
                "kxdp-peer not found near {}: build the kxdp-testbed package",
                exe.display()
            )
        })
}

/// Longest a `kxdp-peer` server may take to listen.
pub const PEER_READY: Duration = Duration::from_secs(5);

/// Starts `peer ARGS` (a server) in `netns`, killed when the node goes, and
/// waits for its "ready".
fn start_peer(node: &mut MiniNode, peer: &Path, netns: &str, args: &[&str]) -> anyhow::Result<()> {
    let mut command = node.command(netns, peer);
    command.args(args);
    node.spawn_ready(command, PEER_READY)
}

pub struct EchoScenario {
    pub node: MiniNode,
    pub manifests: PathBuf,
    /// The ClusterIP the agent allocates for `echo`.
    pub vip: Ipv4Addr,
    pub backends: Vec<Ipv4Addr>,
    peer: PathBuf,
}

impl EchoScenario {
    /// Pod "client" (index 1) and backends "b1".."bN" (index 2..), serving
    /// HTTP on 8080 and UDP on 5353, all ready in the EndpointSlice.
    pub fn new(backend_count: u8, peer: PathBuf) -> anyhow::Result<Self> {
        let mut node = MiniNode::new()?;
        node.add_pod("client", 1)?;
        let mut backends = Vec::new();
        for i in 1..=backend_count {
            let name = format!("b{i}");
            let pod = node.add_pod(&name, i + 1)?;
            let (netns, ip) = (pod.netns.clone(), pod.ip);
            let serve = ["serve", "--name", &name, "--tcp", "8080", "--udp", "5353"];
            start_peer(&mut node, &peer, &netns, &serve)?;
            backends.push(ip);
        }
        let manifests = std::env::temp_dir().join(format!("{}-manifests", node.prefix));
        fs::create_dir_all(&manifests)?;
        fs::write(manifests.join("service.yaml"), ECHO_SERVICE)?;
        let scenario = Self {
            vip: allocated_cluster_ip(ECHO_SERVICE),
            node,
            manifests,
            backends,
            peer,
        };
        let all_ready: Vec<_> = scenario.backends.iter().map(|b| (*b, true)).collect();
        scenario.write_slice(&all_ready)?;
        Ok(scenario)
    }

    /// Starts the agent and waits until it has synced and attached to every pod.
    pub fn start_agent(&self) -> anyhow::Result<Agent> {
        self.start_agent_within(AGENT_READY)
    }

    /// `start_agent` for manifests so large that the first sync may take
    /// longer than a test's usual patience.
    pub fn start_agent_within(&self, ready: Duration) -> anyhow::Result<Agent> {
        self.start_agent_with(&[], ready)
    }

    /// `start_agent_within` with `flags` besides the manifests.
    pub fn start_agent_with(&self, flags: &[&str], ready: Duration) -> anyhow::Result<Agent> {
        let mut all: Vec<&OsStr> = vec!["--manifests".as_ref(), self.manifests.as_os_str()];
        all.extend(flags.iter().map(OsStr::new));
        let mut agent = Agent::start_with(&self.node, &all)?;
        // The first sync comes before the attachments.
        agent.wait_for(&["synced"], 1, ready)?;
        agent.wait_attached(&self.node, AGENT_READY)?;
        Ok(agent)
    }

    /// Makes `echo` dual-stack, as the API server would for `ipFamilyPolicy:
    /// PreferDualStack`: the ClusterIPs the allocated IPv4 one and `vip6`,
    /// and an IPv6 EndpointSlice of the backends beside the IPv4 one.
    pub fn make_dual_stack(&self, vip6: Ipv6Addr) -> anyhow::Result<()> {
        self.write_echo_service(&[self.vip.into(), vip6.into()])?;
        let endpoints: Vec<Endpoint> = self
            .backends_ip6()
            .into_iter()
            .map(Endpoint::ready)
            .collect();
        let ports = [("80-8080", "TCP", 8080), ("53-5353", "UDP", 5353)];
        let slice = endpoint_slice("echo", "echo-v6x9k", SLICE_CONTROLLER, &ports, &endpoints);
        self.write_manifest("slice6.yaml", &slice)
    }

    /// Rewrites `echo` on `cluster_ips` (see `ServiceManifest::echo`).
    pub fn write_echo_service(&self, cluster_ips: &[IpAddr]) -> anyhow::Result<()> {
        let service = ServiceManifest::echo(cluster_ips).to_yaml();
        self.write_manifest("service.yaml", &service)
    }

    /// The backends' IPv6 addresses, in backend order.
    pub fn backends_ip6(&self) -> Vec<Ipv6Addr> {
        self.node.pods[1..=self.backends.len()]
            .iter()
            .map(|pod| pod.ip6.expect("mini node pods are dual-stack"))
            .collect()
    }

    /// Replaces the EndpointSlice (write, then rename: never half a file).
    pub fn write_slice(&self, endpoints: &[(Ipv4Addr, bool)]) -> anyhow::Result<()> {
        self.write_manifest("slice.yaml", &echo_endpoint_slice(endpoints))
    }

    /// Writes (or replaces) manifest `file`, atomically.
    pub fn write_manifest(&self, file: &str, yaml: &str) -> anyhow::Result<()> {
        Ok(write_manifest(&self.manifests, file, yaml)?)
    }

    /// Writes the Service `sticky` on `vip`:80 → 8080 of every backend, with
    /// `sessionAffinity: ClientIP` and a timeout of 30 s: long enough that
    /// no burst of connections outlasts it, even under emulation (tests
    /// outlast it by back-dating the affinity entries instead).
    pub fn write_sticky_service(&self, vip: Ipv4Addr) -> anyhow::Result<()> {
        let ports = ["{name: http, port: 80, protocol: TCP, targetPort: 8080}"];
        let sticky = service("sticky", "ClusterIP", vip, Some("sticky"), &ports)
            + "  sessionAffinity: ClientIP\n  sessionAffinityConfig: {clientIP: {timeoutSeconds: 30}}\n";
        let endpoints: Vec<Endpoint> = self.backends.iter().map(|b| Endpoint::ready(*b)).collect();
        let slice = endpoint_slice(
            "sticky",
            "sticky-4fj2k",
            SLICE_CONTROLLER,
            &[("http", "TCP", 8080)],
            &endpoints,
        );
        self.write_manifest("sticky.yaml", &format!("{sticky}---\n{slice}"))
    }

    /// Starts `kxdp-peer sink` on `port` of every backend and writes the
    /// Service `sink` on `vip`:`port` → `port` of them: where a bulk TCP
    /// stream (`kxdp-peer stream`) goes.
    pub fn add_sink_service(&mut self, vip: Ipv4Addr, port: u16) -> anyhow::Result<()> {
        for i in 0..self.backends.len() {
            let netns = self.node.pods[i + 1].netns.clone();
            self.start_peer(&netns, &["sink", "--tcp", &port.to_string()])?;
        }
        let ports = format!("{{name: sink, port: {port}, targetPort: {port}}}");
        let sink = service("sink", "ClusterIP", vip, Some("sink"), &[&ports]);
        let endpoints: Vec<Endpoint> = self.backends.iter().map(|b| Endpoint::ready(*b)).collect();
        let slice = endpoint_slice(
            "sink",
            "sink-abcde",
            SLICE_CONTROLLER,
            &[("sink", "TCP", port)],
            &endpoints,
        );
        self.write_manifest("sink.yaml", &format!("{sink}---\n{slice}"))
    }

    /// Deletes manifest `file`, as `kubectl delete -f` would its objects.
    pub fn remove_manifest(&self, file: &str) -> anyhow::Result<()> {
        Ok(fs::remove_file(self.manifests.join(file))?)
    }

    /// Starts `kxdp-peer ARGS` in `netns` for as long as the node lives, and
    /// waits until it listens.
    pub fn start_peer(&mut self, netns: &str, args: &[&str]) -> anyhow::Result<()> {
        start_peer(&mut self.node, &self.peer, netns, args)
    }

    /// Runs a client program in the client pod from inside the node's
    /// hooked cgroup (where the socket hooks see it); its stdout, or its
    /// stderr on failure.
    pub fn from_client_in_cgroup(
        &self,
        program: impl AsRef<Path>,
        args: &[&str],
    ) -> Result<String, String> {
        let program = program.as_ref().to_string_lossy();
        let argv: Vec<&str> = [&*program]
            .into_iter()
            .chain(args.iter().copied())
            .collect();
        match self
            .node
            .cgroup
            .output(&self.node.pod("client").netns, &argv)
        {
            Ok(o) if o.status.success() => {
                Ok(String::from_utf8_lossy(&o.stdout).trim().to_string())
            }
            Ok(o) => Err(String::from_utf8_lossy(&o.stderr).trim().to_string()),
            Err(e) => Err(e.to_string()),
        }
    }

    fn client(&self, program: impl AsRef<Path>, args: &[&str]) -> Result<String, String> {
        self.from_pod("client", program, args)
    }

    /// Runs a client program in pod `pod`; its stdout, or its stderr on failure.
    pub fn from_pod(
        &self,
        pod: &str,
        program: impl AsRef<Path>,
        args: &[&str],
    ) -> Result<String, String> {
        self.from_netns(&self.node.pod(pod).netns, program, args)
    }

    /// Runs a client program in namespace `netns` (a pod's, an external
    /// host's); its stdout, or its stderr on failure.
    pub fn from_netns(
        &self,
        netns: &str,
        program: impl AsRef<Path>,
        args: &[&str],
    ) -> Result<String, String> {
        let output = self.node.command(netns, program).args(args).output();
        match output {
            Ok(o) if o.status.success() => {
                Ok(String::from_utf8_lossy(&o.stdout).trim().to_string())
            }
            Ok(o) => Err(String::from_utf8_lossy(&o.stderr).trim().to_string()),
            Err(e) => Err(e.to_string()),
        }
    }

    /// One HTTP GET from the client pod (curl); the backend's answer.
    /// `target` may be an IPv6 `[address]:port` (`-g`: brackets are no
    /// glob to curl).
    pub fn http_get(&self, target: &str) -> Result<String, String> {
        self.client(
            "curl",
            &["-gsS", "--max-time", "3", &format!("http://{target}/")],
        )
    }

    /// One HTTP GET from the client pod that gives up after `max_time`: for
    /// targets expected not to answer.
    pub fn http_get_within(&self, target: &str, max_time: Duration) -> Result<String, String> {
        let max_time = format!("{:.1}", max_time.as_secs_f64());
        let url = format!("http://{target}/");
        self.client("curl", &["-gsS", "--max-time", &max_time, &url])
    }

    /// One UDP request from the client pod; `from=<addr> <answer>`.
    pub fn udp_query(&self, target: &str, payload: &str) -> Result<String, String> {
        self.udp_query_from(&self.node.pod("client").netns, target, payload)
    }

    /// `GET http://{addr}{path}` from the node namespace, given at most
    /// `max_time`: (status code, body); code 0 when nothing answered.
    pub fn get_from_node(&self, addr: &str, path: &str, max_time: Duration) -> (u16, String) {
        let url = format!("http://{addr}{path}");
        let output = self
            .node
            .command(&self.node.node_netns, "curl")
            .args(["-sS", "--max-time", &max_time.as_secs().to_string()])
            .args(["-w", "\n%{http_code}", &url])
            .output()
            .expect("curl");
        let text = String::from_utf8_lossy(&output.stdout);
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
        (code.trim().parse().unwrap_or(0), body.to_string())
    }

    /// Which backend answers an HTTP request to `target` from the client
    /// pod (`backend=NAME`, the first word of its answer).
    pub fn http_backend(&self, target: &str) -> Result<String, String> {
        let body = self.http_get(target)?;
        let first = body.split_whitespace().next().unwrap_or_default();
        match first.starts_with("backend=") {
            true => Ok(first.to_string()),
            false => Err(format!("not a backend's answer: {body:?}")),
        }
    }

    /// [`Self::udp_query`] from namespace `netns`.
    pub fn udp_query_from(
        &self,
        netns: &str,
        target: &str,
        payload: &str,
    ) -> Result<String, String> {
        self.from_netns(netns, &self.peer, &["udp-query", target, payload, "2000"])
    }

    /// One connection from the client pod to `target` (a `kxdp-peer
    /// echo-lines` server behind it), `exchanges` lines 100 ms apart; its
    /// output lines ("N backend=NAME", then "done N") as they come.
    pub fn start_chat(&mut self, target: &str, exchanges: usize) -> Receiver<String> {
        let mut chat = self
            .node
            .command(&self.node.pod("client").netns, &self.peer);
        chat.args(["chat", target, &exchanges.to_string(), "100"])
            .stdout(Stdio::piped());
        let stdout = self.node.spawn(chat).unwrap().stdout.take().unwrap();
        lines_of(stdout)
    }

    /// A chat of `exchanges` lines to `target` during which `agent` is
    /// killed (no chance to tidy up) after `kill_after` answers and replaced
    /// by a new one, which adopts the pinned hooks and maps; the chat's
    /// answers and the new agent. Panics if the chat ends early, goes
    /// silent, or is over before the new agent has synced.
    pub fn chat_across_agent_restart(
        &mut self,
        agent: Agent,
        target: &str,
        exchanges: usize,
        kill_after: usize,
    ) -> (Vec<String>, Agent) {
        let lines = self.start_chat(target, exchanges);
        // The chat's errors go to its stderr, shown with the test's output.
        let next = || {
            lines
                .recv_timeout(AGENT_READY)
                .expect("the chat ended early or went silent")
        };
        let mut answers: Vec<String> = (0..kill_after).map(|_| next()).collect();
        // Dropping an Agent SIGKILLs it.
        drop(agent);
        let mut agent = self.start_agent().unwrap();
        agent
            .wait_for(&[pod_hook_adopted()], 2 * self.node.pods.len(), AGENT_READY)
            .unwrap();
        agent
            .wait_for(&["synced", "written=0", "deleted=0"], 1, AGENT_READY)
            .unwrap();
        answers.extend(lines.try_iter());
        let answered_at_resync = answers.len();
        loop {
            let line = next();
            if line == format!("done {exchanges}") {
                break;
            }
            answers.push(line);
        }
        assert!(
            answered_at_resync < exchanges,
            "the chat ended before the new agent had synced: make it longer"
        );
        (answers, agent)
    }

    /// Runs `kxdp ARGS --pin-path <this node's pins>` in the node namespace.
    pub fn kxdp(&self, args: &[&str]) -> anyhow::Result<String> {
        let mut command = self.node.command(&self.node.node_netns, kxdp_bin());
        command
            .args(args)
            .arg("--pin-path")
            .arg(self.node.pin_path());
        Ok(String::from_utf8_lossy(&run(&mut command)?.stdout).into_owned())
    }

    /// Frontend `frontend` (`ADDR:PORT/PROTO`) of `scope` ("pod" or
    /// "node") as `kxdp services -A -o json` lists it under its Service.
    pub fn served(&self, frontend: &str, scope: &str) -> serde_json::Value {
        let listed = self.kxdp(&["services", "-A", "-o", "json"]).unwrap();
        let document: serde_json::Value = serde_json::from_str(&listed).unwrap();
        document["services"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|service| service["frontends"].as_array().into_iter().flatten())
            .find(|f| f["frontend"] == frontend && f["scope"] == scope)
            .cloned()
            .unwrap_or_else(|| panic!("no {frontend} ({scope}) in {document:#}"))
    }
}

/// A running `kxdp monitor`, listening once [`EchoScenario::monitor`]
/// returns it; killed when dropped.
pub struct Monitor {
    child: std::process::Child,
    lines: Receiver<String>,
}

impl EchoScenario {
    /// Starts `kxdp monitor ARGS` on this node's pins and waits until it
    /// says it listens.
    pub fn monitor(&self, args: &[&str]) -> anyhow::Result<Monitor> {
        let mut command = self.node.command(&self.node.node_netns, kxdp_bin());
        command
            .arg("monitor")
            .args(args)
            .arg("--pin-path")
            .arg(self.node.pin_path())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = anyhow::Context::context(command.spawn(), "starting kxdp monitor")?;
        let said = lines_of(child.stderr.take().expect("piped stderr"));
        let lines = lines_of(child.stdout.take().expect("piped stdout"));
        let monitor = Monitor { child, lines };
        match said.recv_timeout(crate::patience(Duration::from_secs(10))) {
            Ok(line) if line.contains("monitoring") => Ok(monitor),
            Ok(line) => anyhow::bail!("kxdp monitor: {line}"),
            Err(_) => anyhow::bail!("kxdp monitor never said it listens"),
        }
    }
}

impl Monitor {
    /// Its next line, within `wait` (stretched by the testbed's patience).
    pub fn next_line(&self, wait: Duration) -> Option<String> {
        self.lines.recv_timeout(crate::patience(wait)).ok()
    }

    /// Waits for it to end by itself (`--count`, `--seconds`) and returns
    /// what it printed since the last line taken.
    pub fn finish(mut self) -> anyhow::Result<String> {
        let status = self.child.wait()?;
        anyhow::ensure!(status.success(), "kxdp monitor: {status}");
        Ok(self.lines.try_iter().map(|l| l + "\n").collect())
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The lines `stdout` (or a stderr) prints, as they come.
pub fn lines_of(stdout: impl std::io::Read + Send + 'static) -> Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

impl Drop for EchoScenario {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.manifests);
    }
}
