//! `kxdp agent`: load, sync, attach, and keep following the source (manifests
//! or the Kubernetes API), the pod interfaces, the NICs and the node
//! addresses until SIGINT/SIGTERM, serving the health checks of
//! `externalTrafficPolicy: Local` Services and its own admin endpoints.
//! Stopping leaves the datapath running.
//!
//! Syncs run on this task and are never interrupted: a signal is seen
//! between two of them, so the agent stops with every sync whole.

use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use futures::FutureExt as _;
use tokio::{
    signal::unix::{signal, SignalKind},
    sync::mpsc,
};
use tracing::{error, info, warn};

use crate::{
    admin::{AdminServer, HealthState, Scrape},
    cli::{AgentArgs, PodAttach, SocketLb},
    dataplane::{
        interfaces::PodInterfaces,
        maps::BpfMaps,
        nic::{self, Nics},
        probe, sockets, Dataplane, LINKS_DIR,
    },
    features::Loadout,
    health_check::HealthCheckServer,
    metrics::Telemetry,
    model::types::Node,
    pipeline::{Outcome, Pipeline},
    plan::NodeFacts,
    source::{
        intern,
        kubernetes::{self, KubernetesSource},
        manifest::ManifestWatch,
        node_addresses::{self, InterfaceAddr},
        RejectionKind, Scope, Update,
    },
};

/// Where Services come from. Both start reading at once, so the initial
/// lists (or manifests) load while the datapath does.
enum Source {
    Manifests(ManifestWatch),
    /// The updates of the Kubernetes source, which runs as a task of its
    /// own (`follow_kubernetes`).
    Kubernetes(mpsc::Receiver<Update>),
}

impl Source {
    async fn open(args: &AgentArgs) -> anyhow::Result<Self> {
        if let Some(path) = &args.manifests {
            info!(path = %path.display(), "serving Services from manifests");
            return Ok(Self::Manifests(ManifestWatch::start(
                path.clone(),
                args.service_cidr,
            )));
        }
        let kubeconfig = args.kubeconfig.as_deref();
        if kubeconfig.is_none() && !kubernetes::in_cluster_environment() {
            bail!("no source of Services: give --manifests or --kubeconfig, or run the agent in a cluster");
        }
        let client = kubernetes::client(kubeconfig).await?;
        info!(kubeconfig = ?kubeconfig, "watching Services and EndpointSlices");
        let (updates, received) = mpsc::channel(1);
        tokio::spawn(follow_kubernetes(KubernetesSource::new(client), updates));
        Ok(Self::Kubernetes(received))
    }

    /// The next update from the Kubernetes API; never resolves for manifests,
    /// which are polled on the rescan tick instead. An error when the
    /// source's task is gone (it ends only by panicking): the agent stops
    /// rather than serve on without updates.
    async fn next_event(&mut self) -> anyhow::Result<Update> {
        match self {
            Self::Kubernetes(updates) => updates
                .recv()
                .await
                .context("the Kubernetes source stopped"),
            Self::Manifests(_) => std::future::pending().await,
        }
    }

    /// Re-reads the manifests if they changed.
    fn poll(&mut self) -> Option<Update> {
        let Self::Manifests(watch) = self else {
            return None;
        };
        match watch.poll() {
            Ok(update) => update,
            // Keep serving what we have: an unreadable path is not "no services".
            Err(e) => {
                error!(error = %e, "cannot read manifests; keeping the current services");
                None
            }
        }
    }
}

/// Hands the source's updates to the agent: one waits while the agent
/// applies another, and the events that arrive meanwhile are folded into
/// the one after.
async fn follow_kubernetes(mut source: KubernetesSource, updates: mpsc::Sender<Update>) {
    loop {
        let update = source.next().await;
        if updates.send(update).await.is_err() {
            return;
        }
    }
}

/// Logs what an update did: every skipped object, and one summary line.
fn log_outcome(scope: Scope, outcome: &Outcome, pipeline: &Pipeline) {
    for rejection in &outcome.rejections {
        let message = match rejection.kind {
            RejectionKind::NoRoom => "left out until the maps have room",
            _ => "skipping invalid object",
        };
        warn!(
            object = %rejection.object,
            kind = rejection.kind.as_str(),
            reason = %rejection.reason,
            "{message}"
        );
    }
    let report = &outcome.report;
    for e in &report.errors {
        error!(error = %e, "map update failed");
    }
    let counters = pipeline.counters();
    info!(
        full = scope == Scope::Full,
        services = pipeline.plan().service_count(),
        frontends = pipeline.plan().frontend_count(),
        touched = outcome.frontends_touched,
        rejected = outcome.rejections.len(),
        written = report.services_written,
        deleted = report.services_deleted,
        backends_written = report.backends_written,
        backends_deleted = report.backends_deleted,
        errors = report.errors.len(),
        duration_us = counters.last_sync_duration.as_micros() as u64,
        syncs = counters.syncs,
        "synced"
    );
}

/// Where each sync is reported: the metrics and the health endpoints.
struct Reporting {
    telemetry: Telemetry,
    health: HealthState,
}

impl Reporting {
    /// Call after anything that may have synced.
    fn synced(&mut self, pipeline: &Pipeline) {
        let counters = pipeline.counters();
        if counters.syncs == 0 {
            return;
        }
        self.telemetry.observe(counters);
        self.health.record_sync(
            pipeline.needs_retry(),
            counters.last_successful_sync,
            Instant::now(),
        );
    }
}

/// Renders the metrics for a scrape, unless its requester gave up waiting.
fn answer(reply: Scrape, reporting: &mut Reporting, pipeline: &Pipeline, maps: &BpfMaps) {
    if !reply.is_closed() {
        let _ = reply.send(reporting.telemetry.scrape(pipeline, maps));
    }
}

/// Applies `update`; whether it was a full one.
fn apply(
    update: Update,
    pipeline: &mut Pipeline,
    maps: &mut BpfMaps,
    reporting: &mut Reporting,
) -> bool {
    let scope = update.scope;
    let outcome = pipeline.apply(update, maps);
    log_outcome(scope, &outcome, pipeline);
    reporting.synced(pipeline);
    if scope == Scope::Full {
        // The update is gone: the names only it held go too (manifests keep
        // no objects), before the freed heap is handed back.
        intern::prune();
        maps.tables().unmap();
        release_freed_memory();
    }
    scope == Scope::Full
}

/// This node's addresses, or `None` (logged) when they cannot be read: the
/// last known ones keep serving.
fn read_addresses() -> Option<Vec<InterfaceAddr>> {
    node_addresses::list()
        .inspect_err(|e| error!(error = %e, "cannot list node addresses; keeping the last known"))
        .ok()
}

fn node_facts(args: &AgentArgs, addrs: &[InterfaceAddr]) -> NodeFacts {
    NodeFacts {
        addresses: node_addresses::nodeport_addresses(addrs, &args.nodeport_addresses),
        node_port_range: args.nodeport_range.0.clone(),
    }
}

/// Follows the node addresses: node frontends move with them, and each NIC
/// SNATs to its primary address.
fn follow_node(
    args: &AgentArgs,
    addrs: &[InterfaceAddr],
    pipeline: &mut Pipeline,
    maps: &mut BpfMaps,
    nics: Option<&Nics>,
    reporting: &mut Reporting,
) {
    let facts = node_facts(args, addrs);
    let addresses = facts.addresses.clone();
    if let Some(outcome) = pipeline.set_node_facts(facts, maps) {
        info!(?addresses, "node addresses changed");
        log_outcome(Scope::Changed, &outcome, pipeline);
        reporting.synced(pipeline);
    }
    if let Some(nics) = nics {
        let wanted = node_addresses::nic_addresses(addrs, nics.names());
        if let Err(e) = nic::sync_addrs(maps, &wanted) {
            error!(error = %e, "cannot write NIC SNAT addresses");
        }
    }
}

/// A full update decodes every object at once and frees them after the
/// sync; the allocator's pages that held only them go back to the system,
/// so the resident size is what the agent actually holds. Those of the
/// runtime's worker, where the Kubernetes source unpacked them, only once
/// that thread collects: objects freed here wait on its heap until then.
fn release_freed_memory() {
    // SAFETY: only releases free pages; no pointer is touched.
    unsafe {
        libmimalloc_sys::mi_collect(true);
    }
    // The runtime has one worker (main.rs): a spawned task runs there.
    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
        runtime.spawn(async {
            // SAFETY: as above.
            unsafe { libmimalloc_sys::mi_collect(true) }
        });
    }
}

/// Raises the soft limit on open files to the hard one: a large sync
/// holds a descriptor for every Maglev table waiting to be swapped in.
fn raise_open_files_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit read and write the struct passed.
    let raised = unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0
        }
    };
    if !raised {
        warn!(error = %std::io::Error::last_os_error(), "cannot raise the open files limit");
    }
}

/// Probes the kernel and decides what to load: one line per feature it
/// lacks, naming what degrades.
fn kernel_loadout(classic_tc_asked: bool) -> anyhow::Result<Loadout> {
    let (probed, loadout) = probe::this_kernel(classic_tc_asked)?;
    for feature in probed.missing() {
        warn!(
            feature = feature.name(),
            since = feature.first_kernel(),
            "this kernel lacks {}: {}",
            feature.name(),
            feature.without()
        );
    }
    Ok(loadout)
}

/// Socket-level load balancing (`--socket-lb`): the socket hooks on
/// `--cgroup-path`, or on the cgroup2 root. Without a cgroup2 mount and no
/// flag, sockets are simply not translated (pods' packets still are).
fn attach_socket_hooks(
    args: &AgentArgs,
    socket_lb: SocketLb,
    dataplane: &mut Dataplane,
) -> anyhow::Result<()> {
    if socket_lb == SocketLb::Off {
        // Hooks an earlier agent pinned would go on translating.
        let links = args.pin.pin_path.join(LINKS_DIR);
        let detached = sockets::detach_all(&links).context("detaching the socket hooks")?;
        if detached > 0 {
            info!(detached, "socket hooks detached (--socket-lb off)");
        }
        return Ok(());
    }
    let cgroup = match &args.cgroup_path {
        Some(path) => path.clone(),
        None => match sockets::default_cgroup_path() {
            Ok(path) => path,
            Err(e) => {
                warn!(error = %e, "sockets are not translated: host processes cannot reach ClusterIPs");
                return Ok(());
            }
        },
    };
    sockets::attach(dataplane, &cgroup, &args.pin.pin_path)
        .with_context(|| format!("socket hooks on cgroup {}", cgroup.display()))?;
    let whose = match socket_lb {
        SocketLb::All => "host processes and pods",
        _ => "host processes",
    };
    info!(cgroup = %cgroup.display(), sockets = whose, "processes in this cgroup reach ClusterIPs through the socket hooks");
    Ok(())
}

pub async fn run(args: AgentArgs) -> anyhow::Result<()> {
    // First of all, so a signal during start-up is a clean stop too.
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    // Up before anything slow: readiness answers 503 until the first sync.
    let health = HealthState::default();
    let (admin, mut scrapes) =
        AdminServer::start(args.health_addr, args.metrics_addr, health.clone());
    raise_open_files_limit();
    let mut source = Source::open(&args).await?;
    let pin_path = &args.pin.pin_path;
    let loadout = kernel_loadout(args.pod_attach == PodAttach::Tc)?.with_socket_lb(args.socket_lb);
    let mut dataplane = Dataplane::load(
        pin_path,
        &loadout,
        args.arena_entries(),
        !args.nic.is_empty(),
    )?;
    let mut maps = dataplane.take_maps()?;
    let mut reporting = Reporting {
        telemetry: Telemetry::new(pin_path),
        health,
    };
    let adopted = maps.read_contents().context("reading pinned maps")?;
    info!(pin_path = %pin_path.display(), frontends = adopted.frontends.len(), "maps ready");
    let node = Node {
        name: args.node_name.clone(),
    };
    let mut addrs = read_addresses().unwrap_or_default();
    let facts = node_facts(&args, &addrs);
    info!(addresses = ?facts.addresses, range = ?facts.node_port_range, "node ports answer on");
    let mut pipeline = Pipeline::new(node, facts, adopted, args.maglev_table_size);
    // The new programs read PORT_ROLES; an upgrade may have just created it.
    pipeline.publish_port_roles(&mut maps);
    let mut interfaces = PodInterfaces::new(&args.pod_interfaces, pin_path, loadout.classic_tc)?;
    let mut nics = if args.nic.is_empty() {
        info!("no --nic: nothing is served from outside the node");
        None
    } else {
        Some(Nics::new(&args.nic, pin_path)?)
    };
    let mut health_checks = HealthCheckServer::new(args.health_check_bind_address);

    // The first full sync happens before any attach, so a program never sees
    // a partial view; the Kubernetes source yields it only once both initial
    // lists are complete.
    if matches!(source, Source::Kubernetes(_)) {
        info!("waiting for the initial lists of Services and EndpointSlices");
    }
    let first = match source {
        // Unreadable manifests are logged; the adopted maps keep serving.
        Source::Manifests(_) => {
            let stop =
                |signal: &mut tokio::signal::unix::Signal| signal.recv().now_or_never().is_some();
            if stop(&mut sigterm) || stop(&mut sigint) {
                info!("stopped before the first sync; nothing was changed");
                return Ok(());
            }
            source.poll()
        }
        Source::Kubernetes(_) => loop {
            tokio::select! {
                // Watch errors (unreachable API server, missing RBAC) are
                // logged as they happen; until both lists arrive nothing is
                // attached.
                biased;
                _ = sigterm.recv() => break None,
                _ = sigint.recv() => break None,
                update = source.next_event() => break Some(update?),
                Some(reply) = scrapes.recv() => answer(reply, &mut reporting, &pipeline, &maps),
            }
        },
    };
    let mut full_synced = match first {
        Some(update) => apply(update, &mut pipeline, &mut maps, &mut reporting),
        None if matches!(source, Source::Kubernetes(_)) => {
            info!("stopped before the first sync; nothing was changed");
            return Ok(());
        }
        None => false,
    };
    interfaces.reconcile(&mut dataplane)?;
    attach_socket_hooks(&args, loadout.socket_lb, &mut dataplane)?;
    follow_node(
        &args,
        &addrs,
        &mut pipeline,
        &mut maps,
        nics.as_ref(),
        &mut reporting,
    );
    if let Some(nics) = &mut nics {
        nics.reconcile(&mut dataplane)?;
    }
    health_checks.update(&pipeline.plan().health_checks());
    // Attached; ready once a full sync is wholly in the maps too (manifests
    // that could not be read yet give it later) and every NIC is served.
    let ready = |full_synced: bool, pipeline: &Pipeline, nics: Option<&Nics>| {
        full_synced && !pipeline.needs_retry() && nics.is_none_or(Nics::all_attached)
    };
    if ready(full_synced, &pipeline, nics.as_ref()) {
        reporting.health.set_ready();
    }

    let mut tick = tokio::time::interval(Duration::from_millis(args.rescan_ms));
    loop {
        tokio::select! {
            // Signals first: a stop never waits behind another round.
            biased;
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
            _ = tick.tick() => {
                if let Some(update) = source.poll() {
                    full_synced |= apply(update, &mut pipeline, &mut maps, &mut reporting);
                } else if pipeline.needs_retry() {
                    let report = pipeline.retry(&mut maps);
                    for e in &report.errors {
                        error!(error = %e, "map update failed again");
                    }
                    reporting.synced(&pipeline);
                } else if pipeline.may_admit() {
                    // The last sync freed room (its frontend and backend ids
                    // are free from this sync on): Services waiting for it.
                    let outcome = pipeline.admit_waiting(&mut maps);
                    log_outcome(Scope::Changed, &outcome, &pipeline);
                    reporting.synced(&pipeline);
                }
                if let Err(e) = interfaces.reconcile(&mut dataplane) {
                    error!(error = %e, "interface scan failed");
                }
                if let Some(read) = read_addresses() {
                    addrs = read;
                }
                follow_node(&args, &addrs, &mut pipeline, &mut maps, nics.as_ref(), &mut reporting);
                if let Some(nics) = &mut nics {
                    if let Err(e) = nics.reconcile(&mut dataplane) {
                        error!(error = %e, "NIC scan failed");
                    }
                }
                // Also retries ports that could not be bound.
                health_checks.update(&pipeline.plan().health_checks());
            }
            update = source.next_event() => {
                full_synced |= apply(update?, &mut pipeline, &mut maps, &mut reporting);
                health_checks.update(&pipeline.plan().health_checks());
            }
            Some(reply) = scrapes.recv() => answer(reply, &mut reporting, &pipeline, &maps),
        }
        reporting.health.record_pass(Instant::now());
        if ready(full_synced, &pipeline, nics.as_ref()) {
            reporting.health.set_ready();
        }
    }
    // Closes the listeners: probes and health checks now fail fast.
    drop(admin);
    drop(health_checks);
    let attached: Vec<_> = interfaces
        .attached()
        .into_iter()
        .map(|i| i.name.as_str())
        .collect();
    let nics: Vec<_> = nics
        .iter()
        .flat_map(|n| n.attached())
        .map(|i| i.name.as_str())
        .collect();
    info!(
        ?attached,
        ?nics,
        "stopping; the datapath stays attached and pinned (`kxdp unload` removes it)"
    );
    Ok(())
}
