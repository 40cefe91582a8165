//! `kxdp agent`: load, sync, attach, and keep following manifests and
//! interfaces until SIGINT/SIGTERM. Stopping leaves the datapath running.

use std::time::Duration;

use anyhow::Context as _;
use tokio::signal::unix::{signal, SignalKind};
use tracing::{error, info, warn};

use crate::{
    cli::AgentArgs,
    dataplane::{interfaces::PodInterfaces, maps::BpfMaps, Dataplane},
    model, plan,
    source::manifest::{Loaded, ManifestWatch},
    sync::Syncer,
};

/// source → model → plan → sync, logging every object that is skipped.
fn apply(loaded: Loaded, syncer: &mut Syncer, maps: &mut BpfMaps) {
    let model = model::build(&loaded.objects);
    let plan = plan::plan(&model);
    let rejections = loaded
        .rejections
        .iter()
        .chain(&model.rejections)
        .chain(&plan.conflicts);
    let mut rejected = 0;
    for rejection in rejections {
        warn!(object = %rejection.object, reason = %rejection.reason, "skipping invalid object");
        rejected += 1;
    }
    let report = syncer.apply(&plan, maps);
    for e in &report.errors {
        error!(error = %e, "map update failed");
    }
    info!(
        services = model.services.len(),
        frontends = plan.frontends.len(),
        rejected,
        written = report.services_written,
        deleted = report.services_deleted,
        backends_written = report.backends_written,
        backends_deleted = report.backends_deleted,
        errors = report.errors.len(),
        "synced"
    );
}

fn sync_manifests(watch: &mut ManifestWatch, syncer: &mut Syncer, maps: &mut BpfMaps) {
    match watch.poll() {
        Ok(Some(loaded)) => apply(loaded, syncer, maps),
        Ok(None) => {}
        // Keep serving what we have: an unreadable path is not "no services".
        Err(e) => error!(error = %e, "cannot read manifests; keeping the current services"),
    }
}

pub async fn run(args: AgentArgs) -> anyhow::Result<()> {
    let pin_path = &args.pin.pin_path;
    let mut dataplane = Dataplane::load(pin_path)?;
    let mut maps = dataplane.take_maps()?;
    let mut syncer = Syncer::adopt(maps.read_contents().context("reading pinned maps")?);
    info!(pin_path = %pin_path.display(), services = syncer.current().services.len(), "maps ready");

    let mut watch = ManifestWatch::new(args.manifests.clone(), args.service_cidr);
    let mut interfaces = PodInterfaces::new(&args.pod_interfaces, pin_path)?;
    // The first full sync happens before any attach: a program never sees a
    // partial view of the services.
    sync_manifests(&mut watch, &mut syncer, &mut maps);
    interfaces.reconcile(dataplane.pod_ingress()?)?;

    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut tick = tokio::time::interval(Duration::from_millis(args.rescan_ms));
    loop {
        tokio::select! {
            _ = tick.tick() => {
                sync_manifests(&mut watch, &mut syncer, &mut maps);
                if let Err(e) = interfaces.reconcile(dataplane.pod_ingress()?) {
                    error!(error = %e, "interface scan failed");
                }
            }
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
        }
    }
    let attached: Vec<_> = interfaces.attached().map(|i| i.name.as_str()).collect();
    info!(
        ?attached,
        "stopping; the datapath stays attached and pinned (`kxdp unload` removes it)"
    );
    Ok(())
}
