//! `kxdp services`: the Services the datapath serves, by name, read from
//! the pinned maps alone (the agent need not run): each Service's
//! addresses and ports as `kubectl get svc` shows them, then each of its
//! frontends with its policy, backends and counters. What the maps hold is
//! read here (`read`), grouped by Service in `view`, printed by `render`.

mod render;
mod view;

use std::{collections::BTreeSet, path::Path};

use anyhow::Context as _;
use proxy_common::maps::{DropReason, FrontendLabel, Verdict};

use self::view::{Backend, Counters, Frontend, Totals};
use crate::{
    cli::ServicesArgs,
    dataplane::maps::BpfMaps,
    sync::{entries::BackendMapValue, store::MapContents},
};

/// What the views read of a frontend besides the map contents: its label
/// and counters (the pinned maps, or a fake in tests).
trait FrontendFacts {
    fn label(&self, frontend_id: u32) -> anyhow::Result<Option<FrontendLabel>>;
    fn counters(&self, frontend_id: u32) -> anyhow::Result<Counters>;
}

impl FrontendFacts for BpfMaps {
    fn label(&self, frontend_id: u32) -> anyhow::Result<Option<FrontendLabel>> {
        Ok(self.frontend_label(frontend_id)?)
    }
    fn counters(&self, frontend_id: u32) -> anyhow::Result<Counters> {
        let stats = self.frontend_stats(frontend_id)?;
        Ok(Counters {
            sockets: self.frontend_sockets(frontend_id)?,
            packets: stats.packets,
            bytes: stats.bytes,
            rejects: self.frontend_rejects(frontend_id)?,
        })
    }
}

/// Every frontend the maps hold, with its label if it has one.
fn read(
    contents: &MapContents,
    facts: &impl FrontendFacts,
) -> anyhow::Result<Vec<(Option<FrontendLabel>, Frontend)>> {
    let mut frontends = Vec::with_capacity(contents.frontends.len());
    for (key, value) in &contents.frontends {
        // Each backend once, in address order, however many slots it holds.
        let members: BTreeSet<u32> = match value.table_size {
            0 => BTreeSet::new(),
            _ => contents.tables.get(&value.id).map_or_else(
                || [u32::MAX].into(),
                |table| table.members.iter().copied().collect(),
            ),
        };
        let mut found: Vec<Option<BackendMapValue>> = members
            .iter()
            .map(|id| contents.backends.get(*id))
            .collect();
        found.sort_by_key(|b| b.map(|b| (b.addr(), b.port())));
        let backends = found
            .into_iter()
            .map(|backend| backend.map(|b| Backend::of(&b)))
            .collect();
        let label = facts.label(value.id)?;
        let counters = facts.counters(value.id)?;
        frontends.push((label, Frontend::of(key, value, backends, counters)));
    }
    Ok(frontends)
}

pub fn run(args: &ServicesArgs) -> anyhow::Result<()> {
    let pin_path: &Path = &args.pin.pin_path;
    let maps = BpfMaps::open_pinned(pin_path).with_context(|| {
        format!(
            "no kxdp maps under {} (is the agent loaded?)",
            pin_path.display()
        )
    })?;
    let contents = maps.read_contents()?;
    let services = view::by_service(read(&contents, &maps)?);
    let namespace = (!args.all_namespaces).then_some(args.namespace.as_str());
    let shown = view::select(services, namespace, args.name.as_deref())?;
    let totals = Totals {
        no_backend_drops: maps.drops(DropReason::NoBackend.index())?,
        rejected_tcp: maps.verdicts(Verdict::RejectedTcp.index())?,
        rejected_udp: maps.verdicts(Verdict::RejectedUdp.index())?,
        refused_sockets: maps.verdicts(Verdict::RefusedSocket.index())?,
    };
    print!(
        "{}",
        render::render(&shown, &totals, args.output, args.all_namespaces)?
    );
    Ok(())
}

#[cfg(test)]
mod tests;
