//! `kxdp agent`: load, sync, attach, and keep following the source (manifests
//! or the Kubernetes API) and the pod interfaces until SIGINT/SIGTERM.
//! Stopping leaves the datapath running.

use std::{sync::Once, time::Duration};

use anyhow::{bail, Context as _};
use tokio::signal::unix::{signal, SignalKind};
use tracing::{error, info, warn};

use crate::{
    cli::AgentArgs,
    dataplane::{interfaces::PodInterfaces, maps::BpfMaps, Dataplane},
    model::Node,
    pipeline::{Outcome, Pipeline},
    source::{
        kubernetes::{self, KubernetesSource},
        manifest::ManifestWatch,
        Scope, Update,
    },
};

/// Where Services come from.
enum Source {
    Manifests(ManifestWatch),
    Kubernetes(KubernetesSource),
}

impl Source {
    async fn open(args: &AgentArgs) -> anyhow::Result<Self> {
        if let Some(path) = &args.manifests {
            info!(path = %path.display(), "serving Services from manifests");
            return Ok(Self::Manifests(ManifestWatch::new(
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
        Ok(Self::Kubernetes(KubernetesSource::new(client)))
    }

    /// The next update from the Kubernetes API; never resolves for manifests,
    /// which are polled on the rescan tick instead.
    async fn next_event(&mut self) -> Update {
        match self {
            Self::Kubernetes(source) => source.next().await,
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

/// Logs what an update did: every skipped object, and one summary line.
fn log_outcome(scope: Scope, outcome: &Outcome, pipeline: &Pipeline) {
    static IPV6_NOTICE: Once = Once::new();
    for rejection in &outcome.rejections {
        warn!(
            object = %rejection.object,
            kind = rejection.kind.as_str(),
            reason = %rejection.reason,
            "skipping invalid object"
        );
    }
    if outcome.ipv6_skipped {
        IPV6_NOTICE.call_once(|| {
            info!("IPv6 cluster IPs and endpoints are not proxied yet; skipping them")
        });
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

fn apply(update: Update, pipeline: &mut Pipeline, maps: &mut BpfMaps) {
    let scope = update.scope;
    let outcome = pipeline.apply(update, maps);
    log_outcome(scope, &outcome, pipeline);
    if scope == Scope::Full {
        release_freed_memory();
    }
}

/// A full update decodes every object at once and frees them after the
/// sync; glibc keeps that heap mapped. Handing it back keeps the resident
/// size to what the agent actually holds.
fn release_freed_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only releases free heap pages; no pointer is touched.
    unsafe {
        libc::malloc_trim(0);
    }
}

pub async fn run(args: AgentArgs) -> anyhow::Result<()> {
    let mut source = Source::open(&args).await?;
    let pin_path = &args.pin.pin_path;
    let mut dataplane = Dataplane::load(pin_path)?;
    let mut maps = dataplane.take_maps()?;
    let adopted = maps.read_contents().context("reading pinned maps")?;
    info!(pin_path = %pin_path.display(), services = adopted.services.len(), "maps ready");
    let node = Node {
        name: args.node_name.clone(),
    };
    let mut pipeline = Pipeline::new(node, adopted);
    let mut interfaces = PodInterfaces::new(&args.pod_interfaces, pin_path)?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;

    // The first full sync happens before any attach, so a program never sees
    // a partial view; the Kubernetes source yields it only once both initial
    // lists are complete.
    if matches!(source, Source::Kubernetes(_)) {
        info!("waiting for the initial lists of Services and EndpointSlices");
    }
    let first = match source {
        // Unreadable manifests are logged; the adopted maps keep serving.
        Source::Manifests(_) => source.poll(),
        Source::Kubernetes(_) => tokio::select! {
            // Watch errors (unreachable API server, missing RBAC) are logged
            // as they happen; until both lists arrive nothing is attached.
            update = source.next_event() => Some(update),
            _ = sigterm.recv() => None,
            _ = sigint.recv() => None,
        },
    };
    match first {
        Some(update) => apply(update, &mut pipeline, &mut maps),
        None if matches!(source, Source::Kubernetes(_)) => {
            info!("stopped before the first sync; nothing was changed");
            return Ok(());
        }
        None => {}
    }
    interfaces.reconcile(&mut dataplane)?;

    let mut tick = tokio::time::interval(Duration::from_millis(args.rescan_ms));
    loop {
        tokio::select! {
            _ = tick.tick() => {
                if let Some(update) = source.poll() {
                    apply(update, &mut pipeline, &mut maps);
                } else if pipeline.needs_retry() {
                    let report = pipeline.retry(&mut maps);
                    for e in &report.errors {
                        error!(error = %e, "map update failed again");
                    }
                }
                if let Err(e) = interfaces.reconcile(&mut dataplane) {
                    error!(error = %e, "interface scan failed");
                }
            }
            update = source.next_event() => apply(update, &mut pipeline, &mut maps),
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
        }
    }
    let attached: Vec<_> = interfaces
        .attached()
        .into_iter()
        .map(|i| i.name.as_str())
        .collect();
    info!(
        ?attached,
        "stopping; the datapath stays attached and pinned (`kxdp unload` removes it)"
    );
    Ok(())
}
