//! Part 3: the control plane. Time to compute and apply N Services × 10
//! endpoints from empty, and one endpoint change at that size, through the
//! agent's own pipeline (model → plan → sync) into the real maps; and the
//! real agent's resident memory serving N Services from manifests.

use std::sync::Arc;

use kxdp_testbed::{fake_apiserver::FakeApiServer, netns::MiniNode, privileged::PrivateBpffs};
use proxy_userspace::{
    dataplane::{probe, Dataplane},
    maglev,
    model::types::Node,
    pipeline::Pipeline,
    plan::NodeFacts,
    source::{
        objects::{
            Endpoint, EndpointConditions, EndpointPort, EndpointSlice, IpText, Labels, Meta, Name,
            Service, ServicePort, ServiceSpec,
        },
        Scope, ServiceName, ServiceObjects, Update, SERVICE_NAME_LABEL,
    },
};
use serde_json::json;

use super::{timed_store::TimedStore, *};

pub(crate) const ENDPOINTS_PER_SERVICE: usize = 10;

/// The agent's pipeline programming N Services into the maps.
pub(crate) struct SyncRow {
    pub(crate) services: usize,
    /// Milliseconds to compute and apply everything from empty.
    pub(crate) full_ms: Summary,
    /// Of them, milliseconds spent in the map store's calls (writing the
    /// maps), the Maglev builds excluded.
    pub(crate) writes_ms: Summary,
    /// Microseconds to apply one endpoint change, over many changes.
    pub(crate) change_p50_us: f64,
    pub(crate) change_p99_us: f64,
    pub(crate) change_max_us: f64,
    pub(crate) changes: usize,
    /// Heap the pipeline keeps for the N Services (model, plan, map mirror).
    pub(crate) state_mib: f64,
}

/// The pipeline alone (`--only sync`) at each size, on this kernel.
pub(crate) struct SyncReport {
    pub(crate) rows: Vec<SyncRow>,
    /// `/proc/sys/kernel/osrelease`: what `uname -r` prints.
    pub(crate) kernel: String,
    /// The bench process's peak resident memory after every size (`VmHWM`),
    /// to tell whether a small VM holds the largest.
    pub(crate) peak_rss_mib: f64,
}

pub(crate) struct ControlRow {
    pub(crate) sync: SyncRow,
    /// The real agent serving the same Services from a manifest file, and
    /// from the (stand-in) API server.
    pub(crate) manifests: AgentSample,
    pub(crate) kubernetes: AgentSample,
    /// The same Services programmed by kube-proxy's tools, per mode.
    pub(crate) kube_proxy: Vec<KpControl>,
}

/// kube-proxy's tool programming N Services in one mode: its times, or why
/// there are none (the tool refused the ruleset, or it was not run at N).
pub(crate) struct KpControl {
    pub(crate) proxy: Proxy,
    pub(crate) outcome: Result<KpTimes, String>,
}

pub(crate) struct KpTimes {
    /// Milliseconds for the full ruleset, from empty.
    pub(crate) full_ms: Summary,
    /// Milliseconds per single-endpoint change.
    pub(crate) change_p50_ms: f64,
    pub(crate) change_p99_ms: f64,
    pub(crate) changes: usize,
}

/// Times `proxy`'s tool at `n` Services, within the plan's budget.
fn measure_kube_proxy(
    proxy: Proxy,
    n: usize,
    plan: &Plan,
) -> anyhow::Result<Result<KpTimes, String>> {
    if plan.without_peers {
        return Ok(Err("not run (--without-peers)".into()));
    }
    let limit = plan.kube_proxy_max_services(proxy);
    if n > limit {
        return Ok(Err(format!(
            "not run above {limit} Services: too slow for the bench's time budget (see the method)"
        )));
    }
    let (mut fulls, mut changes) = (Vec::new(), Vec::new());
    let started = Instant::now();
    // Runs of the tool take seconds to minutes at large N: further runs
    // only while the budget lasts.
    for run in 0..plan.control_runs {
        if run > 0 && started.elapsed() > plan.kube_proxy_budget {
            break;
        }
        match kube_proxy_run(proxy, n, plan.kube_proxy_changes, plan.kube_proxy_budget)? {
            Ok((full, times)) => {
                fulls.push(full);
                changes.extend(times);
            }
            // A ruleset the tool refuses at this size is a result.
            Err(refusal) => return Ok(Err(refusal)),
        }
    }
    changes.sort_by(f64::total_cmp);
    Ok(Ok(KpTimes {
        full_ms: summarize(&fulls),
        change_p50_ms: percentile(&changes, 0.5),
        change_p99_ms: percentile(&changes, 0.99),
        changes: changes.len(),
    }))
}

fn cluster_ip(i: usize) -> Ipv4Addr {
    // Inside 10.96.0.0/12, away from the low addresses the namespace
    // suites and the echo Service use.
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 100, 0, 0)) + i as u32)
}

/// Endpoint `e` of service `i`: no two services share a pod, the harder case
/// for the maps (every endpoint is its own backend entry).
fn pod_ip(i: usize, e: usize, generation: u32) -> Ipv4Addr {
    let n = (i * ENDPOINTS_PER_SERVICE + e) as u32 + generation * 1_000_000;
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 128, 0, 0)) + n)
}

fn service_objects(i: usize, generation: u32) -> (ServiceName, ServiceObjects) {
    let name = ServiceName::new("bench", &format!("svc-{i}"));
    let metadata = |object: String, labels| Meta {
        name: Some(Name::new(&object)),
        namespace: Some(Name::new(&name.namespace)),
        labels,
        ..Meta::default()
    };
    let service = Service {
        metadata: metadata(name.name.to_string(), Labels::default()),
        spec: Some(ServiceSpec {
            cluster_ip: Some(IpText::V4(cluster_ip(i))),
            ports: Some(Box::new([ServicePort {
                name: Some(Name::new("http")),
                port: 80,
                protocol: Some(Name::new("TCP")),
                target_port: Some(8080),
                ..ServicePort::default()
            }])),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    };
    let labels = Labels {
        service_name: Some(Name::new(&name.name)),
        ..Labels::default()
    };
    let slice = EndpointSlice {
        metadata: metadata(format!("{}-abcde", name.name), labels),
        address_type: Some(Name::new("IPv4")),
        endpoints: (0..ENDPOINTS_PER_SERVICE)
            .map(|e| Endpoint {
                address: Some(IpText::V4(pod_ip(i, e, generation))),
                conditions: Some(EndpointConditions {
                    ready: Some(true),
                    serving: Some(true),
                    terminating: Some(false),
                }),
                node_name: None,
            })
            .collect(),
        ports: Some(Box::new([EndpointPort {
            name: Some(Name::new("http")),
            port: Some(8080),
            protocol: Some(Name::new("TCP")),
        }])),
    };
    let objects = ServiceObjects {
        service: Some(Arc::new(service)),
        slices: vec![Arc::new(slice)],
        endpoints: None,
    };
    (name, objects)
}

/// Service `i` as kube-proxy's rulesets see it; endpoint 0 of `generation`
/// (0: all as first written), as `one_change` leaves it.
pub(crate) fn kp_service(i: usize, generation: u32) -> KpService {
    KpService {
        namespace: "bench".into(),
        name: format!("svc-{i}"),
        port_name: "http".into(),
        cluster_ip: cluster_ip(i),
        port: 80,
        protocol: "tcp",
        endpoints: (0..ENDPOINTS_PER_SERVICE)
            .map(|e| {
                let generation = if e == 0 { generation } else { 0 };
                std::net::SocketAddrV4::new(pod_ip(i, e, generation), 8080)
            })
            .collect(),
    }
}

fn full_update(n: usize) -> Update {
    Update {
        scope: Scope::Full,
        services: (0..n).map(|i| service_objects(i, 0)).collect(),
        rejections: Vec::new(),
    }
}

/// Service `i` with its first endpoint replaced (a pod rescheduled).
fn one_change(i: usize, generation: u32) -> Update {
    let (name, mut objects) = service_objects(i, 0);
    Arc::make_mut(&mut objects.slices[0]).endpoints[0].address =
        Some(IpText::V4(pod_ip(i, 0, generation)));
    Update {
        scope: Scope::Changed,
        services: BTreeMap::from([(name, objects)]),
        rejections: Vec::new(),
    }
}

/// What one pipeline run measured.
struct PipelineRun {
    full_ms: f64,
    /// Of `full_ms`, in the map store's calls.
    writes_ms: f64,
    /// Heap the pipeline keeps for the Services.
    state_mib: f64,
    /// Each change's microseconds.
    changes_us: Vec<f64>,
}

/// Programs `n` Services from empty, then applies `changes` single-endpoint
/// changes one by one.
fn pipeline_run(n: usize, changes: usize) -> anyhow::Result<PipelineRun> {
    let mount = PrivateBpffs::new("kxdp-bench-control")?;
    let mut dataplane = Dataplane::load(
        &mount.path().join("kxdp"),
        &probe::this_kernel(false)?.1,
        proxy_common::sizes::MAGLEV_ARENA_ENTRIES,
        false,
    )?;
    let mut maps = dataplane.take_maps()?;
    let mut pipeline = Pipeline::new(
        Node::default(),
        NodeFacts::default(),
        maps.read_contents()?,
        maglev::DEFAULT_MAX_TABLE_SIZE,
    );
    let heap_before = heap_mib();
    let update = full_update(n);
    let mut timed = TimedStore::new(&mut maps);
    let started = Instant::now();
    let outcome = pipeline.apply(update, &mut timed);
    let full_ms = started.elapsed().as_secs_f64() * 1e3;
    let writes_ms = timed.writing.as_secs_f64() * 1e3;
    let state_mib = heap_mib() - heap_before;
    ensure!(
        outcome.report.errors.is_empty(),
        "full sync of {n}: {:?}",
        &outcome.report.errors[..outcome.report.errors.len().min(3)]
    );
    ensure!(
        outcome.report.services_written == n
            && outcome.report.backends_written == n * ENDPOINTS_PER_SERVICE,
        "full sync of {n} wrote {:?}",
        outcome.report
    );
    let mut times = Vec::with_capacity(changes);
    for c in 0..changes {
        // Spread over the services; every change is a new pod address.
        let i = (c * 7919) % n;
        let update = one_change(i, c as u32 + 1);
        let started = Instant::now();
        let outcome = pipeline.apply(update, &mut maps);
        times.push(started.elapsed().as_secs_f64() * 1e6);
        let report = &outcome.report;
        ensure!(
            report.errors.is_empty()
                && report.backends_written == 1
                && report.backends_deleted == 1,
            "change {c}: {report:?}"
        );
    }
    Ok(PipelineRun {
        full_ms,
        writes_ms,
        state_mib,
        changes_us: times,
    })
}

/// The manifests a user would write for `n` Services with their slices,
/// each with its first `endpoints` endpoints.
pub(crate) fn manifest_yaml(n: usize, endpoints: usize) -> String {
    let mut yaml = String::with_capacity(n * (200 + 70 * endpoints));
    for i in 0..n {
        let name = format!("svc-{i}");
        let ip = cluster_ip(i);
        yaml.push_str(&format!(
            "---\napiVersion: v1\nkind: Service\nmetadata: {{name: {n}, namespace: bench}}\n\
             spec: {{clusterIP: {ip}, ports: [{{name: http, port: 80, targetPort: 8080}}]}}\n\
             ---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
             metadata: {{name: {n}-abcde, namespace: bench, labels: {{{SERVICE_NAME_LABEL}: {n}}}}}\n\
             addressType: IPv4\nports: [{{name: http, port: 8080, protocol: TCP}}]\nendpoints:\n",
            n = name
        ));
        for e in 0..endpoints.min(ENDPOINTS_PER_SERVICE) {
            yaml.push_str(&format!(
                "- {{addresses: [{}], conditions: {{ready: true}}}}\n",
                pod_ip(i, e, 0)
            ));
        }
    }
    yaml
}

/// `VmRSS` and `VmHWM` (peak) of a process, in MiB.
fn rss_mib(pid: u32) -> anyhow::Result<(f64, f64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| -> anyhow::Result<f64> {
        let line = status
            .lines()
            .find(|l| l.starts_with(name))
            .with_context(|| format!("no {name} in /proc/{pid}/status"))?;
        let kib: f64 = line
            .split_whitespace()
            .nth(1)
            .context("no value")?
            .parse()?;
        Ok(kib / 1024.0)
    };
    Ok((field("VmRSS:")?, field("VmHWM:")?))
}

/// Where the measured agent reads its Services from.
#[derive(Clone, Copy)]
pub(crate) enum AgentSource {
    /// One YAML file with every Service and slice.
    Manifests,
    /// A local API server stand-in listing them (JSON), watches held open.
    Kubernetes,
}

/// What one agent run measured.
pub(crate) struct AgentSample {
    /// From process start to the first `synced` line.
    pub(crate) first_sync_ms: f64,
    pub(crate) rss_mib: f64,
    pub(crate) peak_rss_mib: f64,
    /// RSS and peak after the API server forced a relist of everything
    /// (when asked for, from the API only).
    pub(crate) relisted_mib: Option<(f64, f64)>,
}

/// Full syncs the agent has logged so far.
fn full_syncs(log: &Path) -> usize {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    text.lines()
        .filter(|l| l.contains("synced full=true"))
        .count()
}

/// Starts the real agent on `n` Services from `source`, waits (bounded) for
/// its first sync, and reads its memory; with `relist` (API only), then has
/// every watch end with 410 Gone, waits for the agent's full sync of what
/// it listed again and reads its memory once more.
fn agent_run(n: usize, source: AgentSource, relist: bool) -> anyhow::Result<AgentSample> {
    let mount = PrivateBpffs::new("kxdp-bench-agent")?;
    // The agent runs in the host's network namespace: its socket hooks go
    // on a cgroup of ours, never the machine's root.
    let cgroup = kxdp_testbed::cgroup::TestCgroup::new("kxdp-bench-agent")?;
    let dir = std::env::temp_dir().join(format!("kxdp-bench-agent-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let log = dir.join("agent.log");
    let mut command = Command::new(kxdp_testbed::agent::kxdp_bin());
    command.args(["agent", "--pod-interfaces", "kxdp-bench-none*"]);
    // Kept alive until the agent is stopped.
    let server = match source {
        AgentSource::Manifests => {
            std::fs::write(
                dir.join("services.yaml"),
                manifest_yaml(n, ENDPOINTS_PER_SERVICE),
            )?;
            command.arg("--manifests").arg(&dir);
            None
        }
        AgentSource::Kubernetes => {
            let (services, slices) = api_objects(n);
            let server = FakeApiServer::start(None, services, slices)?;
            command.arg("--kubeconfig").arg(server.kubeconfig());
            Some(server)
        }
    };
    let mut child = command
        .arg("--pin-path")
        .arg(mount.path().join("kxdp"))
        .arg("--cgroup-path")
        .arg(cgroup.path())
        .env("RUST_LOG", "info")
        .stderr(std::fs::File::create(&log)?)
        .spawn()
        .context("starting kxdp agent")?;
    let started = Instant::now();
    let result = (|| {
        let deadline = started + std::time::Duration::from_secs(120);
        loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if text.contains("synced") {
                ensure!(text.contains("errors=0"), "agent sync failed:\n{text}");
                break;
            }
            if let Some(status) = child.try_wait()? {
                bail!("agent exited with {status}:\n{text}");
            }
            ensure!(
                Instant::now() < deadline,
                "agent did not sync {n} services in 120 s"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let first_sync_ms = started.elapsed().as_secs_f64() * 1e3;
        // The agent returns the decoded objects' heap right after logging.
        std::thread::sleep(std::time::Duration::from_millis(500));
        let (rss, peak) = rss_mib(child.id())?;
        let relisted_mib = match server.as_ref().filter(|_| relist) {
            None => None,
            Some(server) => {
                let before = full_syncs(&log);
                server.expire_watches();
                // Both kinds are listed again; each relist may end in a full
                // sync of its own. Settled: no new one for two seconds.
                let mut seen = (before, Instant::now());
                loop {
                    let now = full_syncs(&log);
                    if now != seen.0 {
                        seen = (now, Instant::now());
                    }
                    if now > before && seen.1.elapsed() > Duration::from_secs(2) {
                        break;
                    }
                    ensure!(
                        Instant::now() < deadline + Duration::from_secs(120),
                        "agent did not sync again after the relist"
                    );
                    std::thread::sleep(Duration::from_millis(50));
                }
                Some(rss_mib(child.id())?)
            }
        };
        Ok(AgentSample {
            first_sync_ms,
            rss_mib: rss,
            peak_rss_mib: peak,
            relisted_mib,
        })
    })();
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// The same Services and slices as the API server would list them.
fn api_objects(n: usize) -> (Vec<serde_json::Value>, Vec<serde_json::Value>) {
    let mut services = Vec::with_capacity(n);
    let mut slices = Vec::with_capacity(n);
    for i in 0..n {
        let name = format!("svc-{i}");
        let ip = cluster_ip(i).to_string();
        services.push(json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": name, "namespace": "bench"},
            "spec": {
                "clusterIP": ip,
                "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080}],
            },
        }));
        let endpoints: Vec<_> = (0..ENDPOINTS_PER_SERVICE)
            .map(|e| {
                json!({
                    "addresses": [pod_ip(i, e, 0).to_string()],
                    "conditions": {"ready": true, "serving": true, "terminating": false},
                })
            })
            .collect();
        slices.push(json!({
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {
                "name": format!("{name}-abcde"),
                "namespace": "bench",
                "labels": {SERVICE_NAME_LABEL: name},
            },
            "addressType": "IPv4",
            "endpoints": endpoints,
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        }));
    }
    (services, slices)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let rank = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

/// Fewest single changes timed per run, whatever the time budget.
const MIN_KUBE_PROXY_CHANGES: usize = 3;

/// Loads `n` Services × 10 endpoints with `proxy`'s tool into an empty
/// network namespace, then applies up to `changes` single-endpoint changes
/// the way kube-proxy writes them, stopping early (after at least
/// `MIN_KUBE_PROXY_CHANGES`) once they have taken `budget`. Returns (full
/// ms, change ms each), or the tool's complaint if it refused the full
/// ruleset.
fn kube_proxy_run(
    proxy: Proxy,
    n: usize,
    changes: usize,
    budget: Duration,
) -> anyhow::Result<Result<(f64, Vec<f64>), String>> {
    let node = MiniNode::new()?;
    let netns = &node.node_netns;
    let mut services: Vec<KpService> = (0..n).map(|i| kp_service(i, 0)).collect();
    let started = Instant::now();
    let full_ms = match load_rules(netns, proxy.loader(), &proxy.ruleset(&services, &|_| true)) {
        Ok(ms) => ms,
        Err(e) => {
            let took = started.elapsed().as_secs_f64();
            return Ok(Err(format!("refused after {took:.0} s: {e:#}")));
        }
    };
    let mut times = Vec::with_capacity(changes);
    let started = Instant::now();
    for c in 0..changes {
        if c >= MIN_KUBE_PROXY_CHANGES && started.elapsed() > budget {
            break;
        }
        // The same changes, in the same order, as the kxdp pipeline gets.
        let i = (c * 7919) % n;
        let old = services[i].endpoints[0];
        services[i] = kp_service(i, c as u32 + 1);
        let new = services[i].endpoints[0];
        let update = match proxy {
            Proxy::Nftables => nftables_endpoint_change(&services[i], &old, &new, &KP_CONFIG),
            _ => iptables_endpoint_change(&services, i, &old, &KP_CONFIG),
        };
        times.push(load_rules(netns, proxy.partial_loader(), &update)?);
        if c + 1 == MIN_KUBE_PROXY_CHANGES {
            let listed = list_service_rules(proxy, netns, &services[i])?;
            ensure!(
                listed.contains(&new.to_string())
                    || listed.contains(&format!("{}/{}", new.ip(), new.port())),
                "{}: the last change ({old} → {new}) is not in the rules:\n{listed}",
                proxy.label()
            );
        }
    }
    Ok(Ok((full_ms, times)))
}

/// The pipeline's figures at `n` Services over the plan's runs.
fn measure_sync_row(n: usize, plan: &Plan) -> anyhow::Result<SyncRow> {
    let (mut fulls, mut writes) = (Vec::new(), Vec::new());
    let mut state_mib = 0.0;
    let mut changes = Vec::new();
    for _ in 0..plan.control_runs {
        let run = pipeline_run(n, plan.control_changes)?;
        fulls.push(run.full_ms);
        writes.push(run.writes_ms);
        state_mib = run.state_mib;
        changes.extend(run.changes_us);
    }
    changes.sort_by(f64::total_cmp);
    Ok(SyncRow {
        services: n,
        full_ms: summarize(&fulls),
        writes_ms: summarize(&writes),
        change_p50_us: percentile(&changes, 0.5),
        change_p99_us: percentile(&changes, 0.99),
        change_max_us: changes[changes.len() - 1],
        changes: changes.len(),
        state_mib,
    })
}

/// The pipeline alone at each control size: no agent process, no
/// kube-proxy tool, light enough for an emulated VM.
pub(crate) fn measure_sync(plan: &Plan) -> anyhow::Result<SyncReport> {
    let mut rows = Vec::new();
    for &n in &plan.control_sizes {
        eprintln!("  full sync: {n} services × {ENDPOINTS_PER_SERVICE} endpoints");
        rows.push(measure_sync_row(n, plan)?);
    }
    Ok(SyncReport {
        rows,
        kernel: read_trimmed("/proc/sys/kernel/osrelease"),
        peak_rss_mib: rss_mib(std::process::id())?.1,
    })
}

pub(crate) fn measure_control_plane(plan: &Plan) -> anyhow::Result<Vec<ControlRow>> {
    let mut rows = Vec::new();
    for &n in &plan.control_sizes {
        eprintln!("  control plane: {n} services × {ENDPOINTS_PER_SERVICE} endpoints");
        let sync = measure_sync_row(n, plan)?;
        let manifests = agent_run(n, AgentSource::Manifests, false)?;
        let kubernetes = agent_run(n, AgentSource::Kubernetes, false)?;
        let mut kube_proxy = Vec::new();
        for proxy in Proxy::KUBE_PROXY {
            eprintln!("  control plane: {} with {n} services", proxy.label());
            let outcome = measure_kube_proxy(proxy, n, plan)?;
            if let Err(why) = &outcome {
                eprintln!("    {why}");
            }
            kube_proxy.push(KpControl { proxy, outcome });
        }
        rows.push(ControlRow {
            sync,
            manifests,
            kubernetes,
            kube_proxy,
        });
    }
    Ok(rows)
}

/// The real agent's memory alone (`--only memory`), at each control size:
/// from manifests, and from the API before and after a forced relist of
/// everything. Printed, not written into the report.
pub(crate) fn measure_agent_memory(plan: &Plan) -> anyhow::Result<String> {
    let mut table = String::from(
        "| services × endpoints | source | first sync ms | RSS MiB | peak MiB | after a relist: RSS / peak MiB |\n\
         |---|---|---:|---:|---:|---|\n",
    );
    for &n in &plan.control_sizes {
        eprintln!("  agent memory: {n} services × {ENDPOINTS_PER_SERVICE} endpoints");
        for (label, source) in [
            ("manifests", AgentSource::Manifests),
            ("API", AgentSource::Kubernetes),
        ] {
            let sample = agent_run(n, source, true)?;
            let relisted = sample.relisted_mib.map_or("—".to_string(), |(rss, peak)| {
                format!("{rss:.1} / {peak:.1}")
            });
            writeln!(
                table,
                "| {n} × {ENDPOINTS_PER_SERVICE} | {label} | {:.0} | {:.1} | {:.1} | {relisted} |",
                sample.first_sync_ms, sample.rss_mib, sample.peak_rss_mib
            )?;
        }
    }
    Ok(table)
}

/// Counts the bytes the bench process holds on the heap, so the pipeline's
/// own state can be told apart from what the allocator keeps around. The
/// allocator under it is the agent's (mimalloc, tuned as the agent tunes
/// it), so the pipeline is timed as the agent runs it.
pub(crate) struct CountingAllocator;

static HEAP_BYTES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// As the `kxdp` binary does: before the first allocation.
#[used]
#[unsafe(link_section = ".init_array")]
static TUNE_ALLOCATOR: extern "C" fn() = proxy_userspace::allocator::tune;

// SAFETY: every call is forwarded to mimalloc unchanged.
unsafe impl std::alloc::GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        HEAP_BYTES.fetch_add(layout.size(), std::sync::atomic::Ordering::Relaxed);
        // SAFETY: our caller's contract for `layout` is mimalloc's.
        unsafe { mimalloc::MiMalloc.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        HEAP_BYTES.fetch_sub(layout.size(), std::sync::atomic::Ordering::Relaxed);
        // SAFETY: `ptr` came from `alloc` with this `layout`, i.e. from
        // mimalloc.
        unsafe { mimalloc::MiMalloc.dealloc(ptr, layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: std::alloc::Layout) -> *mut u8 {
        HEAP_BYTES.fetch_add(layout.size(), std::sync::atomic::Ordering::Relaxed);
        // SAFETY: as for `alloc`.
        unsafe { mimalloc::MiMalloc.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new_size: usize) -> *mut u8 {
        HEAP_BYTES.fetch_add(new_size, std::sync::atomic::Ordering::Relaxed);
        HEAP_BYTES.fetch_sub(layout.size(), std::sync::atomic::Ordering::Relaxed);
        // SAFETY: `ptr` came from this allocator with `layout`; the caller
        // vouches for `new_size`.
        unsafe { mimalloc::MiMalloc.realloc(ptr, layout, new_size) }
    }
}

fn heap_mib() -> f64 {
    HEAP_BYTES.load(std::sync::atomic::Ordering::Relaxed) as f64 / (1024.0 * 1024.0)
}
