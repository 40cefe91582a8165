//! Running the real `kxdp` binary in a node namespace (a mini node, or node
//! A of the two-node topology), and watching its log.

use std::{
    ffi::OsStr,
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};

use crate::{
    api_objects::NODE_NAME,
    fake_apiserver::FakeApiServer,
    netns::{command, run, MiniNode},
    patience,
    privileged::kernel_has_tcx,
};

/// The `kxdp` binary under test: `$KXDP_BIN` (set by `cargo xtask test`),
/// else the workspace's debug build.
pub fn kxdp_bin() -> PathBuf {
    let path = std::env::var_os("KXDP_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug/kxdp"));
    assert!(
        path.exists(),
        "kxdp binary not found at {}: build it first (`cargo xtask test` does)",
        path.display()
    );
    path
}

/// Where an agent runs: its node's namespace, the glob of that node's pod
/// interfaces and the directory of its pins.
pub struct AgentHost<'a> {
    pub netns: &'a str,
    pub pod_interfaces: &'a str,
    pub pin_path: &'a Path,
    /// The cgroup its socket hooks attach to: a test's own, never the root.
    pub cgroup_path: &'a Path,
}

/// What a restarted agent logs for each pod hook it takes over: a pinned
/// tcx link's program replaced, or where the kernel has no tcx (the 5.10 and 6.1 VMs) a
/// classic tc filter's.
pub fn pod_hook_adopted() -> &'static str {
    if kernel_has_tcx() {
        "adopted pinned link"
    } else {
        "filter's program replaced in place"
    }
}

/// A `kxdp agent` running in the node namespace.
pub struct Agent {
    child: Child,
    log: Arc<Mutex<Vec<String>>>,
}

impl Agent {
    /// An agent serving the manifests under `manifests`.
    pub fn start(node: &MiniNode, manifests: &Path) -> anyhow::Result<Self> {
        Self::start_with(node, &["--manifests".as_ref(), manifests.as_os_str()])
    }

    /// An agent with `source` as its source of Services (and any other flags).
    pub fn start_with(node: &MiniNode, source: &[&OsStr]) -> anyhow::Result<Self> {
        let host = AgentHost {
            netns: &node.node_netns,
            pod_interfaces: &node.pod_interface_glob(),
            pin_path: &node.pin_path(),
            cgroup_path: node.cgroup.path(),
        };
        Self::start_on(&host, source)
    }

    /// An agent of node `node-a` watching the API server stand-in `server`.
    pub fn start_with_api(node: &MiniNode, server: &FakeApiServer) -> anyhow::Result<Self> {
        Self::start_with(
            node,
            &[
                "--kubeconfig".as_ref(),
                server.kubeconfig().as_os_str(),
                "--node-name".as_ref(),
                NODE_NAME.as_ref(),
            ],
        )
    }

    /// An agent on `host` with `flags` (its source of Services and any other).
    pub fn start_on(host: &AgentHost, flags: &[&OsStr]) -> anyhow::Result<Self> {
        let mut command = command(host.netns, kxdp_bin());
        command
            .arg("agent")
            .args(flags)
            .args([
                "--pod-interfaces",
                host.pod_interfaces,
                "--rescan-ms",
                "100",
            ])
            .arg("--pin-path")
            .arg(host.pin_path)
            .arg("--cgroup-path")
            .arg(host.cgroup_path)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = command.spawn().context("starting kxdp agent")?;
        let stderr = child.stderr.take().expect("piped");
        let log = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&log);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("[agent] {line}");
                sink.lock().expect("log lock").push(line);
            }
        });
        Ok(Self { child, log })
    }

    /// How many log lines contain all of `needles`.
    pub fn count(&self, needles: &[&str]) -> usize {
        let log = self.log.lock().expect("log lock");
        log.iter()
            .filter(|l| needles.iter().all(|n| l.contains(n)))
            .count()
    }

    /// Waits (bounded) until at least `n` log lines contain all of `needles`.
    pub fn wait_for(
        &mut self,
        needles: &[&str],
        n: usize,
        timeout: Duration,
    ) -> anyhow::Result<()> {
        let timeout = patience(timeout);
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.count(needles) >= n {
                return Ok(());
            }
            if let Some(status) = self.child.try_wait()? {
                bail!("agent exited early ({status}) while waiting for {needles:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        bail!("agent did not log {needles:?} {n} times within {timeout:?}")
    }

    /// Waits (`within`, stretched by the patience) until the agent has
    /// attached both programs, pod_ingress and pod_egress, to every pod
    /// interface of `node`.
    pub fn wait_attached(&mut self, node: &MiniNode, within: Duration) -> anyhow::Result<()> {
        self.wait_for(&["attached"], 2 * node.pods.len(), within)
    }

    /// Makes `change` (to what the agent reads) and waits (bounded) for
    /// its next sync.
    pub fn synced_after(&mut self, change: impl FnOnce(), timeout: Duration) -> anyhow::Result<()> {
        let before = self.count(&["synced"]);
        change();
        self.wait_for(&["synced"], before + 1, timeout)
    }

    /// SIGTERM, then wait (bounded) for the exit status.
    pub fn stop(mut self) -> anyhow::Result<ExitStatus> {
        run(Command::new("kill").args(["-TERM", &self.child.id().to_string()]))?;
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        bail!("agent did not exit within 5 s of SIGTERM")
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
