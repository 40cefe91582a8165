//! Sync: turns the plan's frontends into map entries and writes only what
//! differs, in an order that never exposes a half-built service
//! (docs/ARCHITECTURE.md, "Data flow"): backends, then the Maglev table, then the service entry;
//! removal in reverse. A table of a new size is switched to whole, so the
//! datapath never indexes half of one. Work is per frontend, so a change to one Service costs
//! the same whether ten or thirty thousand others exist.
//!
//! A frontend limited to `loadBalancerSourceRanges` gets its ranges written
//! before the service entry that makes the datapath check them, and loses the
//! ones it no longer needs only after the entry stops needing them.
//!
//! The ports frontends and backends use (`PORT_ROLES`, which lets packets
//! no lookup could match skip them) gain their bits before the entries
//! needing them are written and lose them after the sync removed the last
//! user (`port_roles.rs`).
//!
//! Ids stay stable for as long as their frontend or backend exists, and an id
//! freed by a sync is not reused in that same sync, so no packet can see a new
//! service's table through an old service's entry.

mod backend_refs;
pub mod backend_table;
pub mod entries;
#[cfg(any(test, feature = "fake-store"))]
pub mod fake;
mod ids;
pub mod map_values;
mod port_roles;
pub mod store;

use std::{borrow::Cow, collections::BTreeSet};

use foldhash::{HashMap, HashMapExt as _, HashSet, HashSetExt as _};

use proxy_common::{
    maps::{FrontendLabel, FrontendValue},
    sizes,
};

use crate::{
    frontend_text::frontend_text,
    maglev::{self, Member},
    plan::{Frontend, FrontendAddr, Plan},
};

use self::{
    backend_refs::BackendRefs,
    entries::{BackendMapValue, FrontendMapKey},
    ids::IdCursor,
    map_values::{
        backend_value, frontend_key, frontend_label, frontend_value, member, range_entries,
    },
    port_roles::PortRoles,
    store::{MapContents, MapStore, RangeEntry, TableSpec},
};

/// What one sync changed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct SyncReport {
    pub services_written: usize,
    pub services_deleted: usize,
    pub backends_written: usize,
    pub backends_deleted: usize,
    pub errors: Vec<String>,
}

/// A frontend between the steps of a sync.
struct Staged {
    key: FrontendMapKey,
    frontend: Frontend,
    existing: Option<FrontendValue>,
    value: FrontendValue,
    complete: bool,
    /// Its backends as Maglev members, and its table.
    members: Vec<Member>,
    spec: TableSpec,
    /// Backends kept for its existing connections only.
    draining: Vec<u32>,
}

impl Staged {
    /// Whether its table must be written: one with backends that differs
    /// from the live one.
    fn needs_table(&self, live: &MapContents) -> bool {
        self.complete && self.spec.size > 0 && live.tables.get(&self.value.id) != Some(&self.spec)
    }
}

/// A frontend whose entry is written with the others of its sync.
struct Finishing {
    key: FrontendMapKey,
    value: FrontendValue,
    /// The source ranges it needs.
    ranges: BTreeSet<RangeEntry>,
    /// Whether its entry is to be written (complete, and changed).
    write: bool,
    /// Whether its id is new to it (its counters are zeroed first).
    fresh: bool,
    /// Its Service for the CLI, written with every sync that stages it.
    label: FrontendLabel,
}

/// Tables built at once (in parallel), then written: bounds the slots held
/// in memory meanwhile (1024 tables of M = 1021: 4 MiB).
const BUILD_BATCH: usize = 1024;

/// Frontends staged and written together: a full sync's steps (backends,
/// tables, entries) run over this many at a time, enough for its batched
/// map writes to be split over the CPUs. The unit tests' fake store looks
/// tables up one by one, so they take smaller parts to show several.
const WRITE_PART: usize = if cfg!(test) { 64 } else { 8192 };

/// Holds what the maps contain and brings them to what the plan wants.
pub struct Syncer {
    current: MapContents,
    /// Who refers to each backend, and which backends may go.
    refs: BackendRefs,
    /// Which ports the mirror's frontends and backends use.
    roles: PortRoles,
    live_frontend_ids: HashSet<u32>,
    /// Ids freed during the current sync; not handed out again until the next.
    resting_frontend_ids: HashSet<u32>,
    resting_backend_ids: HashSet<u32>,
    /// Ids handed to frontends staged in the current sync, not yet live.
    reserved_frontend_ids: HashSet<u32>,
    /// Backends given an id in the current sync, written together before
    /// any table can name them.
    new_backends: Vec<(u32, BackendMapValue)>,
    /// Cap on a Maglev table's size (`--maglev-table-size`).
    max_table_size: u32,
    frontend_ids: IdCursor,
    backend_id_cursor: IdCursor,
}

impl Syncer {
    /// Starts from what the (possibly pinned, pre-existing) maps hold, so a
    /// restarted agent keeps every id and touches only what changed.
    /// Tables get at most `max_table_size` slots.
    pub fn adopt(current: MapContents, max_table_size: u32) -> Self {
        Self::with_limits(current, sizes::MAX_FRONTENDS, sizes::MAX_BACKENDS)
            .with_max_table_size(max_table_size)
    }

    fn with_max_table_size(mut self, max_table_size: u32) -> Self {
        self.max_table_size = max_table_size;
        self
    }

    fn with_limits(current: MapContents, max_frontends: u32, max_backends: u32) -> Self {
        Self {
            live_frontend_ids: current.frontends.values().map(|v| v.id).collect(),
            refs: BackendRefs::adopt(&current),
            roles: PortRoles::of(&current),
            reserved_frontend_ids: HashSet::new(),
            new_backends: Vec::new(),
            max_table_size: maglev::DEFAULT_MAX_TABLE_SIZE,
            current,
            resting_frontend_ids: HashSet::new(),
            resting_backend_ids: HashSet::new(),
            frontend_ids: IdCursor::new(max_frontends),
            backend_id_cursor: IdCursor::new(max_backends),
        }
    }

    /// Writes the port roles of what the maps hold (adopted ones at
    /// start: a map that did not exist before starts empty), before any
    /// program that reads them is attached, sync or not; the errors.
    pub fn publish_port_roles(&mut self, store: &mut impl MapStore) -> Vec<String> {
        let mut report = SyncReport::default();
        self.publish_roles(PortRoles::changes, store, &mut report);
        report.errors
    }

    pub fn current(&self) -> &MapContents {
        &self.current
    }

    /// Brings the frontends `keys` to what `plan` wants for them.
    pub fn apply<'k>(
        &mut self,
        plan: &Plan,
        keys: impl IntoIterator<Item = &'k FrontendAddr>,
        store: &mut impl MapStore,
    ) -> SyncReport {
        let mut report = SyncReport::default();
        self.begin();
        let mut wanted = Vec::new();
        let mut unwanted = Vec::new();
        for key in keys {
            match plan.frontend(key) {
                Some(frontend) => wanted.push((frontend_key(key), frontend)),
                None => unwanted.push(frontend_key(key)),
            }
        }
        self.write(wanted, unwanted, store, &mut report);
        report
    }

    /// Brings every entry to what `plan` wants, removing whatever the maps
    /// hold beyond it (an adopted map may hold Services deleted meanwhile,
    /// or the leftovers of an interrupted sync).
    pub fn reconcile(&mut self, plan: &Plan, store: &mut impl MapStore) -> SyncReport {
        let wanted: HashSet<FrontendMapKey> = plan.frontend_keys().map(frontend_key).collect();
        let mut report = SyncReport::default();
        self.begin();
        let unwanted: Vec<FrontendMapKey> = self
            .current
            .frontends
            .keys()
            .filter(|k| !wanted.contains(k))
            .copied()
            .collect();
        let orphan_tables: Vec<u32> = self
            .current
            .tables
            .keys()
            .filter(|id| !self.live_frontend_ids.contains(id))
            .copied()
            .collect();
        for id in orphan_tables {
            self.drop_table(id, store, &mut report);
            self.resting_frontend_ids.insert(id);
        }
        let orphan_range_owners: BTreeSet<u32> = self
            .current
            .source_ranges
            .iter()
            .map(|r| r.frontend_id)
            .filter(|id| !self.live_frontend_ids.contains(id))
            .collect();
        for id in orphan_range_owners {
            self.trim_ranges(id, &BTreeSet::new(), store, &mut report);
        }
        let frontends = plan
            .frontend_keys()
            .filter_map(|key| Some((frontend_key(key), plan.frontend(key)?)));
        self.write(frontends, unwanted, store, &mut report);
        self.refs.trim();
        report
    }

    fn begin(&mut self) {
        self.resting_frontend_ids.clear();
        self.resting_backend_ids.clear();
    }

    /// Writes `wanted` a part at a time, then removes `unwanted` and last
    /// the backends nothing refers to any more. A part of a full sync is
    /// staged and written whole before the next is taken from the plan, so
    /// what a sync holds at once stays bounded (30,000 Services' 60,000
    /// frontends staged together held about 20 MiB).
    fn write(
        &mut self,
        wanted: impl IntoIterator<Item = (FrontendMapKey, Frontend)>,
        unwanted: Vec<FrontendMapKey>,
        store: &mut impl MapStore,
        report: &mut SyncReport,
    ) {
        let mut wanted = wanted.into_iter();
        // The parts' tables are built into one buffer, kept for the sync.
        let mut slots = Vec::new();
        loop {
            let part: Vec<(FrontendMapKey, Frontend)> = wanted.by_ref().take(WRITE_PART).collect();
            if part.is_empty() {
                break;
            }
            self.write_part(part, &mut slots, store, report);
        }
        drop(slots);
        for key in unwanted {
            self.remove(key, store, report);
        }
        self.reserved_frontend_ids.clear();
        self.collect_backends(store, report);
        self.publish_roles(PortRoles::changes, store, report);
    }

    /// Writes the words of `PORT_ROLES` that `which` names (the roles'
    /// additions or all their changes); a word that could not be written
    /// is reported and left to the next sync.
    fn publish_roles(
        &mut self,
        which: fn(&PortRoles) -> Vec<(u32, u64)>,
        store: &mut impl MapStore,
        report: &mut SyncReport,
    ) {
        let words = which(&self.roles);
        if words.is_empty() {
            return;
        }
        let failed: HashSet<u32> = store
            .put_port_roles(&words)
            .into_iter()
            .map(|(word, e)| {
                report.errors.push(e.to_string());
                word
            })
            .collect();
        let written: Vec<(u32, u64)> = words
            .into_iter()
            .filter(|(word, _)| !failed.contains(word))
            .collect();
        self.roles.written(&written);
    }

    /// Writes frontends in steps: their new backends (together), every
    /// frontend's table, its source ranges, then the frontend entries
    /// (together).
    fn write_part(
        &mut self,
        part: Vec<(FrontendMapKey, Frontend)>,
        slots: &mut Vec<u32>,
        store: &mut impl MapStore,
        report: &mut SyncReport,
    ) {
        let mut staged: Vec<Staged> = part
            .into_iter()
            .filter_map(|(key, frontend)| self.stage(key, frontend, report))
            .collect();
        let failed = self.write_new_backends(store, report);
        for entry in &mut staged {
            if entry.spec.members.iter().any(|id| failed.contains(id)) {
                entry.complete = false;
            }
            entry.draining.retain(|id| !failed.contains(id));
            self.refs
                .set_draining(entry.key, std::mem::take(&mut entry.draining));
        }
        for batch in staged.chunks_mut(BUILD_BATCH) {
            self.write_tables(batch, slots, store, report);
        }
        let finishing: Vec<Finishing> = staged
            .into_iter()
            .map(|entry| self.write_ranges(entry, store, report))
            .collect();
        self.write_entries(&finishing, store, report);
        for entry in finishing {
            self.settle(entry, store, report);
        }
    }

    /// First step for one frontend: its id, the ids of its backends (new
    /// ones queued for [`Self::write_new_backends`]) and its table.
    fn stage(
        &mut self,
        key: FrontendMapKey,
        frontend: Frontend,
        report: &mut SyncReport,
    ) -> Option<Staged> {
        let existing = self.current.frontends.get(&key).copied();
        let Some(id) = existing.map(|v| v.id).or_else(|| {
            let (live, resting, reserved) = (
                &self.live_frontend_ids,
                &self.resting_frontend_ids,
                &self.reserved_frontend_ids,
            );
            // Nor an id whose table is still there (an orphan of an
            // interrupted sync, removed at the end of this one).
            let tables = &self.current.tables;
            self.frontend_ids.allocate(|id| {
                live.contains(&id)
                    || resting.contains(&id)
                    || reserved.contains(&id)
                    || tables.contains_key(&id)
            })
        }) else {
            report.errors.push(format!(
                "{} ({}): no free frontend id, the FRONTENDS map is full",
                frontend_text(&key),
                frontend.service
            ));
            return None;
        };
        self.reserved_frontend_ids.insert(id);
        let members: Option<Vec<Member>> = frontend
            .backends
            .iter()
            .map(|b| {
                let value = backend_value(b);
                self.backend_id(&value, report).map(|id| member(&value, id))
            })
            .collect();
        let complete = members.is_some();
        let members = members.unwrap_or_default();
        let size = match members.len() {
            0 => 0,
            n => maglev::table_size(n, self.max_table_size),
        };
        let spec = TableSpec::new(size, members.iter().map(|m| m.id).collect());
        let value = frontend_value(&frontend, id, spec.size);
        let draining: Vec<u32> = frontend
            .draining
            .iter()
            .filter_map(|b| self.backend_id(&backend_value(b), report))
            .collect();
        Some(Staged {
            key,
            frontend,
            existing,
            value,
            complete,
            members,
            spec,
            draining,
        })
    }

    /// Writes the backends staged frontends named for the first time, in
    /// one batch; returns the ids whose write failed (reported, and taken
    /// back: a later sync gives them afresh).
    fn write_new_backends(
        &mut self,
        store: &mut impl MapStore,
        report: &mut SyncReport,
    ) -> HashSet<u32> {
        let new = std::mem::take(&mut self.new_backends);
        self.publish_roles(PortRoles::additions, store, report);
        let failures = store.put_backends(&new);
        let mut failed = HashSet::new();
        for (id, error) in failures {
            report.errors.push(error.to_string());
            self.forget_backend(id);
            failed.insert(id);
        }
        report.backends_written += new.len() - failed.len();
        failed
    }

    /// Writes the tables `batch` needs: those no frontend has yet are built
    /// first, in parallel, each once however many frontends want it.
    fn write_tables(
        &mut self,
        batch: &mut [Staged],
        slots: &mut Vec<u32>,
        store: &mut impl MapStore,
        report: &mut SyncReport,
    ) {
        // Which entry's members build each missing table, and each entry's
        // build (the first entry wanting a table builds it).
        let mut builder_of: HashMap<&TableSpec, usize> = HashMap::new();
        let mut job_of: Vec<Option<usize>> = vec![None; batch.len()];
        let mut jobs: Vec<(&[Member], u32)> = Vec::new();
        for (i, entry) in batch.iter().enumerate() {
            if !entry.needs_table(&self.current) || store.has_table(&entry.spec) {
                continue;
            }
            job_of[i] = Some(*builder_of.entry(&entry.spec).or_insert_with(|| {
                jobs.push((&entry.members, entry.spec.size));
                jobs.len() - 1
            }));
        }
        let built = maglev::build_all_into(&jobs, slots);
        for (i, entry) in batch.iter_mut().enumerate() {
            if !entry.needs_table(&self.current) {
                continue;
            }
            let id = entry.value.id;
            let (spec, members) = (&entry.spec, &entry.members);
            // A table shared since it was built is not asked for; one
            // that was not built here (its sharer released meanwhile) is
            // built now.
            let prebuilt = job_of[i].map(|job| &slots[built[job].clone()]);
            let build = || match prebuilt {
                Some(table) => Cow::Borrowed(table),
                None => Cow::Owned(maglev::build(members, spec.size)),
            };
            match store.put_table(id, spec, build) {
                Ok(()) => self.set_table(id, Some(entry.spec.clone())),
                Err(e) => {
                    self.refs.unsettle(id, &entry.spec.members);
                    report.errors.push(format!(
                        "{} ({}): {e}",
                        frontend_text(&entry.key),
                        entry.frontend.service
                    ));
                    entry.complete = false;
                }
            }
        }
    }

    /// Third step for one frontend: its source ranges (the entry may make
    /// the datapath check them), and whether its entry is to be written.
    fn write_ranges(
        &mut self,
        staged: Staged,
        store: &mut impl MapStore,
        report: &mut SyncReport,
    ) -> Finishing {
        let Staged {
            key,
            frontend,
            existing,
            value,
            mut complete,
            ..
        } = staged;
        let ranges: BTreeSet<RangeEntry> = range_entries(&frontend, value.id).collect();
        let missing: Vec<RangeEntry> = ranges
            .iter()
            .filter(|r| !self.current.source_ranges.contains(r))
            .copied()
            .collect();
        for entry in missing {
            if !complete {
                break;
            }
            match store.put_source_range(&entry) {
                Ok(()) => {
                    self.current.source_ranges.insert(entry);
                }
                Err(e) => {
                    report.errors.push(e.to_string());
                    complete = false;
                }
            }
        }
        if !complete {
            report.errors.push(format!(
                "{} ({}): backends incomplete, service entry not updated",
                frontend_text(&key),
                frontend.service
            ));
        }
        Finishing {
            key,
            value,
            ranges,
            write: complete && existing != Some(value),
            fresh: existing.is_none(),
            label: frontend_label(&frontend),
        }
    }

    /// Writes the entries of `finishing` that are to be written, together:
    /// counters of new ids zeroed first.
    fn write_entries(
        &mut self,
        finishing: &[Finishing],
        store: &mut impl MapStore,
        report: &mut SyncReport,
    ) {
        let fresh: Vec<u32> = finishing
            .iter()
            .filter(|f| f.write && f.fresh)
            .map(|f| f.value.id)
            .collect();
        let mut unready = HashSet::new();
        for (id, e) in store.reset_stats(&fresh) {
            report.errors.push(e.to_string());
            unready.insert(id);
        }
        let entries: Vec<(FrontendMapKey, FrontendValue)> = finishing
            .iter()
            .filter(|f| f.write && !unready.contains(&f.value.id))
            .map(|f| (f.key, f.value))
            .collect();
        // New frontends' ports get their bits before the entries.
        let new_keys: HashSet<FrontendMapKey> = entries
            .iter()
            .map(|(key, _)| *key)
            .filter(|key| !self.current.frontends.contains_key(key))
            .collect();
        for key in &new_keys {
            self.roles.add_frontend(key);
        }
        self.publish_roles(PortRoles::additions, store, report);
        let mut failed = HashSet::new();
        for (key, e) in store.put_frontends(&entries) {
            report.errors.push(e.to_string());
            if new_keys.contains(&key) {
                self.roles.remove_frontend(&key);
            }
            failed.insert(key);
        }
        for (key, value) in entries {
            if !failed.contains(&key) {
                self.current.frontends.insert(key, value);
                self.live_frontend_ids.insert(value.id);
                report.services_written += 1;
            }
        }
        // Every live entry staged gets its label, changed or not: a
        // Service's type or port name may change without its entries.
        let labels: Vec<(u32, FrontendLabel)> = finishing
            .iter()
            .filter(|f| self.current.frontends.get(&f.key).map(|v| v.id) == Some(f.value.id))
            .map(|f| (f.value.id, f.label))
            .collect();
        for (_, e) in store.put_labels(&labels) {
            report.errors.push(e.to_string());
        }
    }

    /// Last step for one frontend: a table the entry no longer uses goes,
    /// and so do ranges it no longer needs.
    fn settle(&mut self, finishing: Finishing, store: &mut impl MapStore, report: &mut SyncReport) {
        let Finishing {
            key, value, ranges, ..
        } = finishing;
        // A table the entry no longer uses (no backends) is unreachable.
        let live = self.current.frontends.get(&key).copied();
        if live.is_none_or(|v| v.table_size == 0) {
            self.drop_table(value.id, store, report);
        }
        // Ranges beyond the wanted ones may still be needed by an entry
        // that could not be updated; the retry removes them.
        if live == Some(value) {
            self.trim_ranges(value.id, &ranges, store, report);
        }
    }

    /// Deletes the ranges of `frontend_id` not in `keep`.
    fn trim_ranges(
        &mut self,
        frontend_id: u32,
        keep: &BTreeSet<RangeEntry>,
        store: &mut impl MapStore,
        report: &mut SyncReport,
    ) {
        let doomed: Vec<RangeEntry> = self
            .current
            .source_ranges
            .range(RangeEntry::bounds(frontend_id))
            .filter(|r| !keep.contains(r))
            .copied()
            .collect();
        for entry in doomed {
            match store.delete_source_range(&entry) {
                Ok(()) => {
                    self.current.source_ranges.remove(&entry);
                }
                Err(e) => report.errors.push(e.to_string()),
            }
        }
    }

    /// The id of `backend`; a new one is queued for
    /// [`Self::write_new_backends`].
    fn backend_id(&mut self, backend: &BackendMapValue, report: &mut SyncReport) -> Option<u32> {
        if let Some(id) = self.current.backends.id_of(backend) {
            return Some(id);
        }
        let (current, resting) = (&self.current.backends, &self.resting_backend_ids);
        let Some(id) = self
            .backend_id_cursor
            .allocate(|id| current.contains(id) || resting.contains(&id))
        else {
            report
                .errors
                .push("no free backend id, the backends map is full".to_string());
            return None;
        };
        self.current.backends.insert(id, *backend);
        self.roles.add_backend(backend);
        self.refs.candidate(id);
        self.new_backends.push((id, *backend));
        Some(id)
    }

    /// Takes backend `id` out of the mirror, and its port's role with it.
    fn forget_backend(&mut self, id: u32) {
        if let Some(backend) = self.current.backends.remove(id) {
            self.roles.remove_backend(&backend);
        }
    }

    /// Records that `frontend_id` now has the table `spec` (`None`: none).
    fn set_table(&mut self, frontend_id: u32, spec: Option<TableSpec>) {
        let previous = match spec {
            Some(spec) => {
                self.refs.hold_table(&spec.members);
                self.current.tables.insert(frontend_id, spec)
            }
            None => self.current.tables.remove(&frontend_id),
        };
        self.refs
            .release_table(frontend_id, previous.unwrap_or_default().members);
    }

    fn remove(&mut self, key: FrontendMapKey, store: &mut impl MapStore, report: &mut SyncReport) {
        let Some(existing) = self.current.frontends.get(&key).copied() else {
            return;
        };
        if let Err(e) = store.delete_frontend(&key) {
            report.errors.push(e.to_string());
            return;
        }
        self.current.frontends.remove(&key);
        if let Err(e) = store.delete_label(existing.id) {
            report.errors.push(e.to_string());
        }
        self.roles.remove_frontend(&key);
        self.live_frontend_ids.remove(&existing.id);
        self.resting_frontend_ids.insert(existing.id);
        report.services_deleted += 1;
        self.drop_table(existing.id, store, report);
        self.refs.set_draining(key, Vec::new());
        self.trim_ranges(existing.id, &BTreeSet::new(), store, report);
    }

    /// Removes the table of `frontend_id`, if it has one; one that could
    /// not be removed is left to the next sync.
    fn drop_table(&mut self, frontend_id: u32, store: &mut impl MapStore, report: &mut SyncReport) {
        if self.current.tables.contains_key(&frontend_id) {
            match store.delete_table(frontend_id) {
                Ok(()) => self.set_table(frontend_id, None),
                Err(e) => report.errors.push(e.to_string()),
            }
        }
    }

    /// Deletes the backends no table and no draining list refers to any more.
    fn collect_backends(&mut self, store: &mut impl MapStore, report: &mut SyncReport) {
        let candidates = self.refs.take_candidates();
        for id in candidates {
            if self.refs.is_referenced(id) {
                continue;
            }
            let Some(held) = self.current.backends.get(id) else {
                continue;
            };
            match store.delete_backend(id, &held) {
                Ok(()) => {
                    self.forget_backend(id);
                    self.resting_backend_ids.insert(id);
                    report.backends_deleted += 1;
                }
                Err(e) => {
                    report.errors.push(e.to_string());
                    self.refs.candidate(id);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{
        collections::BTreeMap,
        net::{IpAddr, SocketAddr},
    };

    use proxy_common::maps::{
        addr_to_net, port_to_net, BackendValue, BACKEND_LOCAL, FRONTEND_AFFINITY_CLIENT_IP,
        FRONTEND_EMPTY_DROP, FRONTEND_SNAT_REMOTE, FRONTEND_SOURCE_RANGES,
        LABEL_TYPE_LOAD_BALANCER, LABEL_VIA_CLUSTER_IP, LABEL_VIA_LOAD_BALANCER_IP, SCOPE_NODE,
        SCOPE_POD,
    };

    use super::*;
    use crate::{
        model::types::{
            Backend, ExternalAddr, Protocol, ServiceModel, ServicePortModel, ServiceType,
        },
        plan::{FrontendScope, PlanChange},
        source::ServiceName,
        sync::fake::FakeStore,
    };

    fn model_without_ports(name: &ServiceName) -> ServiceModel {
        ServiceModel {
            service_type: ServiceType::ClusterIp,
            name: name.clone(),
            cluster_ips: vec![],
            ports: vec![],
            affinity_timeout: None,
            external_addrs: vec![],
            external_policy_local: false,
            internal_policy_local: false,
            health_check_node_port: None,
            source_ranges: None,
        }
    }

    /// A syncer over empty maps.
    fn fresh_syncer() -> Syncer {
        Syncer::adopt(MapContents::default(), maglev::DEFAULT_MAX_TABLE_SIZE)
    }

    /// A restarted agent's syncer, adopting what `store` holds.
    fn adopting_syncer(store: &FakeStore) -> Syncer {
        Syncer::adopt(store.maps.clone(), maglev::DEFAULT_MAX_TABLE_SIZE)
    }

    /// A plan with one single-port Service per frontend.
    fn plan_of(frontends: &[(&str, u16, &[&str])]) -> Plan {
        let mut plan = Plan::default();
        let mut change = PlanChange::default();
        for (vip, port, backends) in frontends {
            let name = ServiceName::new("default", &format!("{vip}-{port}"));
            let model = ServiceModel {
                service_type: ServiceType::ClusterIp,
                name: name.clone(),
                cluster_ips: vec![vip.parse().unwrap()],
                ports: vec![ServicePortModel {
                    name: String::new(),
                    protocol: Protocol::Tcp,
                    port: *port,
                    node_port: None,
                    backends: backends
                        .iter()
                        .map(|b| Backend {
                            addr: b.parse::<SocketAddr>().unwrap(),
                            local: false,
                        })
                        .collect(),
                    draining: Vec::new(),
                }],
                ..model_without_ports(&name)
            };
            plan.set(&name, Some(model), &mut change);
        }
        plan
    }

    /// The backends each service entry can reach, read back through the maps
    /// the way the datapath does (each once, in text order).
    fn reachable(maps: &MapContents) -> BTreeMap<String, Vec<String>> {
        maps.frontends
            .iter()
            .map(|(key, value)| {
                let vip = SocketAddr::new(key.addr(), key.port());
                let spec = match value.table_size {
                    0 => TableSpec::default(),
                    _ => maps.tables[&value.id].clone(),
                };
                assert_eq!(spec.size, value.table_size);
                let backends: BTreeSet<String> = spec
                    .members
                    .iter()
                    .map(|id| {
                        let b = maps.backends.get(*id).expect("a table names held backends");
                        SocketAddr::new(b.addr(), b.port()).to_string()
                    })
                    .collect();
                let backends: Vec<String> = backends.into_iter().collect();
                (vip.to_string(), backends)
            })
            .collect()
    }

    #[test]
    fn builds_backends_then_the_table_then_the_service() {
        let mut store = FakeStore::default();
        let mut syncer = fresh_syncer();
        let report = syncer.reconcile(
            &plan_of(&[("10.96.0.1", 80, &["10.244.0.2:8080", "10.244.0.3:8080"])]),
            &mut store,
        );
        assert!(report.errors.is_empty(), "{:?}", report.errors);
        assert_eq!(
            store.log,
            [
                "put backend 0",
                "put backend 1",
                "put table 0",
                "reset stats 0",
                "put service 0"
            ]
        );
        assert_eq!(&store.maps, syncer.current());
        assert_eq!(
            reachable(&store.maps)["10.96.0.1:80"],
            ["10.244.0.2:8080", "10.244.0.3:8080"]
        );
        // Nothing changed: nothing written.
        store.log.clear();
        let report = syncer.reconcile(
            &plan_of(&[("10.96.0.1", 80, &["10.244.0.2:8080", "10.244.0.3:8080"])]),
            &mut store,
        );
        assert_eq!(report, SyncReport::default());
        assert!(store.log.is_empty());
    }

    #[test]
    fn ports_gain_their_roles_before_the_entries_and_lose_them_after() {
        let mut store = FakeStore {
            log_port_roles: true,
            ..Default::default()
        };
        let mut syncer = fresh_syncer();
        let plan = plan_of(&[("10.96.0.1", 80, &["10.244.0.2:8080"])]);
        let report = syncer.reconcile(&plan, &mut store);
        assert!(report.errors.is_empty(), "{:?}", report.errors);
        // Port 80 of a pod frontend: word 1, bit 16; backend port 8080:
        // word 2 × 1024 + 126, bit 16.
        assert_eq!(
            store.log,
            [
                "port roles 2174 = 0x10000",
                "put backend 0",
                "put table 0",
                "reset stats 0",
                "port roles 1 = 0x10000",
                "put service 0"
            ]
        );
        store.log.clear();
        syncer.reconcile(&Plan::default(), &mut store);
        assert_eq!(
            store.log,
            [
                "delete service Some(0)",
                "delete table 0",
                "delete backend 0",
                "port roles 1 = 0x0",
                "port roles 2174 = 0x0"
            ]
        );
    }

    #[test]
    fn a_restarted_agent_publishes_the_roles_of_what_it_adopted() {
        let mut store = FakeStore::default();
        let plan = plan_of(&[("10.96.0.1", 80, &["10.244.0.2:8080"])]);
        fresh_syncer().reconcile(&plan, &mut store);
        let written = std::mem::take(&mut store.port_roles);
        // At start, before any sync (manifests may not be readable yet).
        let mut adopted = adopting_syncer(&store);
        assert!(adopted.publish_port_roles(&mut store).is_empty());
        assert_eq!(store.port_roles, written);
        // And by a sync.
        store.port_roles.clear();
        let mut adopted = adopting_syncer(&store);
        let report = adopted.reconcile(&plan, &mut store);
        assert!(report.errors.is_empty(), "{:?}", report.errors);
        assert_eq!(store.port_roles, written);
    }

    #[test]
    fn deletes_service_first_then_the_table_then_backends() {
        let mut store = FakeStore::default();
        let mut syncer = fresh_syncer();
        syncer.reconcile(
            &plan_of(&[("10.96.0.1", 80, &["10.244.0.2:8080"])]),
            &mut store,
        );
        store.log.clear();
        let report = syncer.reconcile(&Plan::default(), &mut store);
        assert_eq!(
            store.log,
            [
                "delete service Some(0)",
                "delete table 0",
                "delete backend 0"
            ]
        );
        assert_eq!((report.services_deleted, report.backends_deleted), (1, 1));
        assert_eq!(store.maps, MapContents::default());
    }

    #[test]
    fn a_changed_backend_set_gets_a_whole_new_table_before_backends_go() {
        let mut store = FakeStore::default();
        let mut syncer = fresh_syncer();
        let three = ["10.244.0.2:80", "10.244.0.3:80", "10.244.0.4:80"];
        syncer.reconcile(&plan_of(&[("10.96.0.1", 80, &three)]), &mut store);
        store.log.clear();
        syncer.reconcile(&plan_of(&[("10.96.0.1", 80, &three[..1])]), &mut store);
        assert_eq!(
            store.log,
            [
                "put table 0",
                "put service 0",
                "delete backend 1",
                "delete backend 2"
            ]
        );
        store.log.clear();
        syncer.reconcile(&plan_of(&[("10.96.0.1", 80, &three)]), &mut store);
        // Backend ids move on (3, 4): recently freed ids rest a while.
        assert_eq!(
            store.log,
            [
                "put backend 3",
                "put backend 4",
                "put table 0",
                "put service 0"
            ]
        );
        assert_eq!(reachable(&store.maps)["10.96.0.1:80"], three);
    }

    #[test]
    fn ids_are_stable_and_not_reused_within_the_sync_that_frees_them() {
        let mut store = FakeStore::default();
        let mut syncer = fresh_syncer();
        syncer.reconcile(
            &plan_of(&[
                ("10.96.0.1", 80, &["10.244.0.2:80"]),
                ("10.96.0.2", 80, &["10.244.0.3:80"]),
            ]),
            &mut store,
        );
        let id_of = |m: &MapContents, vip: &str| {
            let addr: IpAddr = vip.parse().unwrap();
            m.frontends
                .iter()
                .find(|(k, _)| k.addr() == addr)
                .map(|(_, v)| v.id)
        };
        let (first, second) = (
            id_of(&store.maps, "10.96.0.1"),
            id_of(&store.maps, "10.96.0.2"),
        );
        // Replace service 1 by service 3 and backend .2 by .4 in one sync.
        syncer.reconcile(
            &plan_of(&[
                ("10.96.0.3", 80, &["10.244.0.4:80"]),
                ("10.96.0.2", 80, &["10.244.0.3:80"]),
            ]),
            &mut store,
        );
        assert_eq!(
            id_of(&store.maps, "10.96.0.2"),
            second,
            "unchanged service keeps its id"
        );
        let third = id_of(&store.maps, "10.96.0.3");
        assert_ne!(third, first, "a freed id is not reused in the same sync");
        assert_eq!(reachable(&store.maps).len(), 2);
        assert_eq!(reachable(&store.maps)["10.96.0.3:80"], ["10.244.0.4:80"]);
        assert_eq!(store.maps.backends.len(), 2);
    }

    #[test]
    fn shared_backend_has_one_id_and_survives_while_referenced() {
        let mut store = FakeStore::default();
        let mut syncer = fresh_syncer();
        syncer.reconcile(
            &plan_of(&[
                ("10.96.0.1", 80, &["10.244.0.2:80"]),
                ("10.96.0.2", 80, &["10.244.0.2:80"]),
            ]),
            &mut store,
        );
        assert_eq!(store.maps.backends.len(), 1);
        syncer.reconcile(
            &plan_of(&[("10.96.0.2", 80, &["10.244.0.2:80"])]),
            &mut store,
        );
        assert_eq!(store.maps.backends.len(), 1);
        assert_eq!(reachable(&store.maps)["10.96.0.2:80"], ["10.244.0.2:80"]);
    }

    #[test]
    fn restarted_agent_adopts_maps_and_changes_nothing() {
        let mut store = FakeStore::default();
        let plan = plan_of(&[("10.96.0.1", 80, &["10.244.0.2:80", "10.244.0.3:80"])]);
        fresh_syncer().reconcile(&plan, &mut store);
        store.log.clear();
        let report = adopting_syncer(&store).reconcile(&plan, &mut store);
        assert_eq!(report, SyncReport::default());
        assert!(store.log.is_empty());
    }

    #[test]
    fn a_failed_backend_write_never_exposes_the_service() {
        let mut store = FakeStore {
            fail_backend_puts: true,
            ..Default::default()
        };
        let mut syncer = fresh_syncer();
        let report = syncer.reconcile(
            &plan_of(&[
                ("10.96.0.1", 80, &["10.244.0.2:80"]),
                ("10.96.0.2", 80, &[]),
            ]),
            &mut store,
        );
        assert!(
            report.errors.iter().any(|e| e.contains("BACKENDS")),
            "{:?}",
            report.errors
        );
        // The service without backends is still written; the other is held back.
        assert_eq!(store.maps.frontends.len(), 1);
        assert_eq!(store.maps.frontends.values().next().unwrap().table_size, 0);
        assert!(store.maps.tables.is_empty());
        assert_eq!(&store.maps, syncer.current());
    }

    #[test]
    fn a_failed_table_write_holds_a_new_entry_back_until_a_retry_heals_it() {
        let mut store = FakeStore {
            fail_table_puts: true,
            ..Default::default()
        };
        let mut syncer = fresh_syncer();
        let plan = plan_of(&[("10.96.0.1", 80, &["10.244.0.2:80"])]);
        let report = syncer.reconcile(&plan, &mut store);
        assert!(
            report
                .errors
                .iter()
                .any(|e| e.contains("put failed") && e.contains("10.96.0.1:80")),
            "{:?}",
            report.errors
        );
        assert!(
            store.maps.frontends.is_empty(),
            "no entry without its table"
        );
        assert!(syncer.current().tables.is_empty());
        store.fail_table_puts = false;
        let report = syncer.reconcile(&plan, &mut store);
        assert!(report.errors.is_empty(), "{:?}", report.errors);
        assert_eq!(reachable(&store.maps)["10.96.0.1:80"], ["10.244.0.2:80"]);
    }

    #[test]
    fn a_failed_table_write_keeps_every_backend_it_may_name_until_a_retry() {
        let mut store = FakeStore::default();
        let mut syncer = fresh_syncer();
        syncer.reconcile(
            &plan_of(&[("10.96.0.1", 80, &["10.244.0.2:80"])]),
            &mut store,
        );
        let two = plan_of(&[("10.96.0.1", 80, &["10.244.0.2:80", "10.244.0.9:80"])]);
        store.fail_table_puts = true;
        let report = syncer.reconcile(&two, &mut store);
        assert!(!report.errors.is_empty());
        // A half-written table may name the newcomer already: it stays.
        let newcomer: IpAddr = "10.244.0.9".parse().unwrap();
        assert!(store.maps.backends.values().any(|b| b.addr() == newcomer));
        store.fail_table_puts = false;
        let report = syncer.reconcile(&two, &mut store);
        assert!(report.errors.is_empty(), "{:?}", report.errors);
        assert_eq!(
            reachable(&store.maps)["10.96.0.1:80"],
            ["10.244.0.2:80", "10.244.0.9:80"]
        );
        // Settled: once it leaves, it goes.
        syncer.reconcile(
            &plan_of(&[("10.96.0.1", 80, &["10.244.0.2:80"])]),
            &mut store,
        );
        assert!(!store.maps.backends.values().any(|b| b.addr() == newcomer));
    }

    #[test]
    fn an_orphan_tables_id_is_not_handed_to_a_new_frontend_in_the_sync_removing_it() {
        let mut store = FakeStore::default();
        let plan = plan_of(&[("10.96.0.1", 80, &["10.244.0.2:80"])]);
        fresh_syncer().reconcile(&plan, &mut store);
        // An agent killed between swapping a table in and writing its entry.
        let (key, value) = store.maps.frontends.pop_first().unwrap();
        store.log.clear();
        let report = adopting_syncer(&store).reconcile(&plan, &mut store);
        assert!(report.errors.is_empty(), "{:?}", report.errors);
        let now = store.maps.frontends[&key];
        assert_ne!(now.id, value.id, "the orphan's id is reused only later");
        assert_eq!(reachable(&store.maps)["10.96.0.1:80"], ["10.244.0.2:80"]);
        assert!(!store.maps.tables.contains_key(&value.id), "orphan removed");
    }

    #[test]
    fn every_table_of_a_part_is_live_before_any_entry_of_it() {
        let mut store = FakeStore::default();
        let mut syncer = fresh_syncer();
        syncer.reconcile(
            &plan_of(&[
                ("10.96.0.1", 80, &["10.244.0.2:80"]),
                ("10.96.0.2", 80, &["10.244.0.3:80"]),
                ("10.96.0.3", 80, &["10.244.0.4:80"]),
            ]),
            &mut store,
        );
        let first_entry = store
            .log
            .iter()
            .position(|l| l.starts_with("put service"))
            .unwrap();
        let last_table = store
            .log
            .iter()
            .rposition(|l| l.starts_with("put table"))
            .unwrap();
        assert!(
            last_table < first_entry,
            "tables before entries: {:?}",
            store.log
        );
    }

    #[test]
    fn a_sync_larger_than_a_part_writes_each_frontend_after_its_table_and_backends() {
        let n = WRITE_PART * 2 + 5;
        let address = |net: u8, i: usize| format!("10.{net}.{}.{}", i / 250, i % 250 + 1);
        let vips: Vec<String> = (0..n).map(|i| address(96, i)).collect();
        let backends: Vec<[String; 1]> = (0..n).map(|i| [address(244, i) + ":80"]).collect();
        let backend_refs: Vec<[&str; 1]> = backends.iter().map(|[b]| [b.as_str()]).collect();
        let frontends: Vec<(&str, u16, &[&str])> = (0..n)
            .map(|i| (vips[i].as_str(), 80, &backend_refs[i][..]))
            .collect();
        let mut store = FakeStore::default();
        let mut syncer = fresh_syncer();
        let report = syncer.reconcile(&plan_of(&frontends), &mut store);
        assert!(report.errors.is_empty(), "{:?}", report.errors);
        assert_eq!(&store.maps, syncer.current());
        assert_eq!(store.maps.frontends.len(), n);
        let position = |what: &str| {
            let map: HashMap<u32, usize> = store
                .log
                .iter()
                .enumerate()
                .filter_map(|(at, line)| Some((line.strip_prefix(what)?.parse().ok()?, at)))
                .collect();
            map
        };
        let (backend_at, table_at, entry_at) = (
            position("put backend "),
            position("put table "),
            position("put service "),
        );
        for value in store.maps.frontends.values() {
            let entry = entry_at[&value.id];
            assert!(table_at[&value.id] < entry);
            for member in &store.maps.tables[&value.id].members {
                assert!(backend_at[member] < entry);
            }
        }
        // Written a part at a time: the first entries went out before the
        // last tables were built.
        assert!(entry_at.values().min() < table_at.values().max());
    }

    #[test]
    fn a_table_wanted_by_several_frontends_is_built_once() {
        let mut store = FakeStore::default();
        let mut syncer = fresh_syncer();
        let backends: &[&str] = &["10.244.0.2:80", "10.244.0.3:80"];
        let report = syncer.reconcile(
            &plan_of(&[
                ("10.96.0.1", 80, backends),
                ("10.96.0.2", 80, backends),
                ("10.96.0.3", 80, &backends[..1]),
            ]),
            &mut store,
        );
        assert!(report.errors.is_empty(), "{:?}", report.errors);
        assert_eq!(store.builds, 2, "{:?}", store.log);
        assert_eq!(reachable(&store.maps)["10.96.0.2:80"], backends);
        // A new frontend over the same backends later: shared, not built.
        syncer.reconcile(
            &plan_of(&[
                ("10.96.0.1", 80, backends),
                ("10.96.0.2", 80, backends),
                ("10.96.0.3", 80, &backends[..1]),
                ("10.96.0.4", 80, backends),
            ]),
            &mut store,
        );
        assert_eq!(store.builds, 2);
    }

    #[test]
    fn a_full_frontends_map_is_reported_not_silent() {
        let mut store = FakeStore::default();
        let mut syncer = Syncer::with_limits(MapContents::default(), 1, 8);
        let report = syncer.reconcile(
            &plan_of(&[("10.96.0.1", 80, &[]), ("10.96.0.2", 80, &[])]),
            &mut store,
        );
        assert_eq!(store.maps.frontends.len(), 1);
        assert_eq!(report.errors.len(), 1);
        assert!(
            report.errors[0].contains("FRONTENDS map is full"),
            "{:?}",
            report.errors
        );
    }

    #[test]
    fn apply_touches_only_the_frontends_it_is_given() {
        let mut store = FakeStore::default();
        let mut syncer = fresh_syncer();
        let before = plan_of(&[
            ("10.96.0.1", 80, &["10.244.0.2:80"]),
            ("10.96.0.2", 80, &["10.244.0.3:80"]),
            ("10.96.0.3", 80, &["10.244.0.4:80"]),
        ]);
        syncer.reconcile(&before, &mut store);
        store.log.clear();
        let after = plan_of(&[
            ("10.96.0.1", 80, &["10.244.0.2:80"]),
            ("10.96.0.2", 80, &["10.244.0.3:80", "10.244.0.9:80"]),
        ]);
        let two = FrontendAddr {
            addr: "10.96.0.2".parse().unwrap(),
            port: 80,
            protocol: Protocol::Tcp,
            scope: FrontendScope::Pod,
        };
        let report = syncer.apply(&after, [&two], &mut store);
        assert!(report.errors.is_empty(), "{:?}", report.errors);
        assert_eq!(
            store.log,
            // A new table, and the entry itself is unchanged.
            ["put backend 3", "put table 1"]
        );
        assert_eq!(
            reachable(&store.maps).len(),
            3,
            "10.96.0.3 was not named, so it stays"
        );
        let three = FrontendAddr {
            addr: "10.96.0.3".parse().unwrap(),
            ..two
        };
        store.log.clear();
        syncer.apply(&after, [&three], &mut store);
        assert_eq!(
            store.log,
            [
                "delete service Some(2)",
                "delete table 2",
                "delete backend 2"
            ]
        );
        assert_eq!(&store.maps, syncer.current());
    }

    #[test]
    fn reconcile_clears_what_adopted_maps_hold_beyond_the_plan() {
        let mut store = FakeStore::default();
        let plan = plan_of(&[("10.96.0.1", 80, &["10.244.0.2:80"])]);
        fresh_syncer().reconcile(&plan, &mut store);
        // Leftovers of an interrupted agent: the table of a frontend id
        // without an entry, and a backend nothing refers to.
        store.maps.tables.insert(7, TableSpec::of(&[0; 251]));
        store.maps.backends.insert(
            9,
            BackendMapValue::V4(BackendValue {
                addr: addr_to_net("10.244.0.9".parse().unwrap()),
                port: port_to_net(80),
                flags: 0,
                _pad: 0,
            }),
        );
        store.log.clear();
        let report = adopting_syncer(&store).reconcile(&plan, &mut store);
        assert!(report.errors.is_empty(), "{:?}", report.errors);
        assert_eq!(store.log, ["delete table 7", "delete backend 9"]);
        assert_eq!(reachable(&store.maps)["10.96.0.1:80"], ["10.244.0.2:80"]);
        assert_eq!(store.maps.backends.len(), 1);
    }

    #[test]
    fn local_backends_and_session_affinity_reach_the_entries() {
        let mut plan = Plan::default();
        let mut change = PlanChange::default();
        let name = ServiceName::new("default", "sticky");
        let local = Backend {
            addr: "10.244.0.2:80".parse().unwrap(),
            local: true,
        };
        let model = ServiceModel {
            service_type: ServiceType::ClusterIp,
            name: name.clone(),
            cluster_ips: vec!["10.96.0.1".parse().unwrap()],
            ports: vec![ServicePortModel {
                name: String::new(),
                protocol: Protocol::Udp,
                port: 53,
                node_port: None,
                backends: vec![local],
                draining: Vec::new(),
            }],
            affinity_timeout: Some(600),
            ..model_without_ports(&name)
        };
        plan.set(&name, Some(model), &mut change);
        let mut store = FakeStore::default();
        fresh_syncer().reconcile(&plan, &mut store);
        let (key, value) = store.maps.frontends.iter().next().unwrap();
        assert_eq!(key.proto(), proxy_common::maps::PROTO_UDP);
        assert_eq!(value.flags, FRONTEND_AFFINITY_CLIENT_IP);
        assert_eq!(value.affinity_timeout, 600);
        assert_eq!(
            store.maps.backends.values().next().unwrap().flags(),
            BACKEND_LOCAL
        );
    }

    #[test]
    fn draining_backends_stay_for_their_connections_until_they_leave_the_slice() {
        let name = ServiceName::new("default", "web");
        let backend = |addr: &str| Backend {
            addr: addr.parse().unwrap(),
            local: false,
        };
        let model = |backends: &[&str], draining: &[&str]| ServiceModel {
            service_type: ServiceType::ClusterIp,
            name: name.clone(),
            cluster_ips: vec!["10.96.0.1".parse().unwrap()],
            ports: vec![ServicePortModel {
                name: String::new(),
                protocol: Protocol::Tcp,
                port: 80,
                node_port: None,
                backends: backends.iter().map(|b| backend(b)).collect(),
                draining: draining.iter().map(|b| backend(b)).collect(),
            }],
            ..model_without_ports(&name)
        };
        let mut plan = Plan::default();
        let mut store = FakeStore::default();
        let mut syncer = fresh_syncer();
        let mut apply = |plan: &mut Plan, store: &mut FakeStore, m: ServiceModel| {
            let mut change = PlanChange::default();
            plan.set(&name, Some(m), &mut change);
            syncer.apply(plan, &change.frontends, store)
        };
        let addrs = |store: &FakeStore| -> Vec<IpAddr> {
            let mut a: Vec<IpAddr> = store.maps.backends.values().map(|b| b.addr()).collect();
            a.sort();
            a
        };
        let a: IpAddr = "10.244.0.1".parse().unwrap();
        let b: IpAddr = "10.244.0.2".parse().unwrap();
        apply(
            &mut plan,
            &mut store,
            model(&["10.244.0.1:80", "10.244.0.2:80"], &[]),
        );
        let b_id = store
            .maps
            .backends
            .iter()
            .find(|(_, v)| v.addr() == b)
            .unwrap()
            .0;
        // b terminates: in no table any more, but its entry (and id) stays.
        apply(
            &mut plan,
            &mut store,
            model(&["10.244.0.1:80"], &["10.244.0.2:80"]),
        );
        let table: BTreeSet<u32> = store
            .maps
            .tables
            .values()
            .flat_map(|t| t.members.iter().copied())
            .collect();
        assert!(!table.contains(&b_id));
        assert_eq!(store.maps.backends.get(b_id).map(|v| v.addr()), Some(b));
        // b leaves the slice: gone, so its connections are reset.
        let report = apply(&mut plan, &mut store, model(&["10.244.0.1:80"], &[]));
        assert_eq!(addrs(&store), [a]);
        assert_eq!(report.backends_deleted, 1);
    }

    /// A LoadBalancer `default/lb` with ingress IP 192.0.2.10 port 80 (one
    /// remote backend) and the given source ranges, with no node address.
    fn load_balancer_plan(ranges: Option<&[&str]>, external_local: bool) -> Plan {
        plan_with(load_balancer_model(ranges, external_local))
    }

    fn plan_with(model: ServiceModel) -> Plan {
        let mut plan = Plan::default();
        plan.set(&model.name.clone(), Some(model), &mut PlanChange::default());
        plan
    }

    fn load_balancer_model(ranges: Option<&[&str]>, external_local: bool) -> ServiceModel {
        let name = ServiceName::new("default", "lb");
        ServiceModel {
            service_type: ServiceType::ClusterIp,
            cluster_ips: vec!["10.96.0.1".parse().unwrap()],
            ports: vec![ServicePortModel {
                name: String::new(),
                protocol: Protocol::Tcp,
                port: 80,
                node_port: None,
                backends: vec![Backend {
                    addr: "10.244.1.2:80".parse().unwrap(),
                    local: false,
                }],
                draining: Vec::new(),
            }],
            external_addrs: vec![ExternalAddr {
                addr: "192.0.2.10".parse().unwrap(),
                load_balancer: true,
            }],
            external_policy_local: external_local,
            source_ranges: ranges.map(|r| r.iter().map(|c| c.parse().unwrap()).collect()),
            ..model_without_ports(&name)
        }
    }

    fn node_entry(maps: &MapContents) -> (FrontendMapKey, FrontendValue) {
        let (key, value) = maps
            .frontends
            .iter()
            .find(|(k, _)| k.scope() == SCOPE_NODE)
            .expect("a node frontend");
        (*key, *value)
    }

    #[test]
    fn node_frontends_get_node_scope_and_policy_flags() {
        let mut store = FakeStore::default();
        let mut syncer = fresh_syncer();
        syncer.reconcile(&load_balancer_plan(None, false), &mut store);
        // Cluster IP and ingress IP from pods, ingress IP from outside.
        assert_eq!(store.maps.frontends.len(), 3);
        let (key, value) = node_entry(&store.maps);
        assert_eq!(
            key.addr(),
            "192.0.2.10".parse::<IpAddr>().unwrap(),
            "{}",
            frontend_text(&key)
        );
        assert_eq!(value.flags, FRONTEND_SNAT_REMOTE);
        assert_eq!(value.table_size, 251);
        let pod_flags: Vec<u32> = store
            .maps
            .frontends
            .iter()
            .filter(|(k, _)| k.scope() == SCOPE_POD)
            .map(|(_, v)| v.flags)
            .collect();
        assert_eq!(pod_flags, [0, 0]);
        // externalTrafficPolicy Local, the only endpoint elsewhere: drop.
        syncer.reconcile(&load_balancer_plan(None, true), &mut store);
        let (_, value) = node_entry(&store.maps);
        assert_eq!((value.flags, value.table_size), (FRONTEND_EMPTY_DROP, 0));
    }

    #[test]
    fn every_live_frontend_is_labelled_with_its_service_until_it_goes() {
        let mut store = FakeStore::default();
        let mut syncer = fresh_syncer();
        syncer.reconcile(&load_balancer_plan(None, true), &mut store);
        let labels = |store: &FakeStore| -> Vec<(u32, String, u16, u8, u8, u8)> {
            store
                .maps
                .frontends
                .values()
                .map(|v| {
                    let label = store.labels.get(&v.id).expect("a label per live frontend");
                    let text = |bytes: &[u8]| {
                        String::from_utf8(bytes.iter().copied().take_while(|b| *b != 0).collect())
                            .unwrap()
                    };
                    let name = format!("{}/{}", text(&label.namespace), text(&label.name));
                    let l = label;
                    (
                        v.id,
                        name,
                        l.service_port,
                        l.service_type,
                        l.via,
                        l.policies,
                    )
                })
                .collect()
        };
        let cluster_ip = |id| (id, "default/lb".to_string(), 80, 0, LABEL_VIA_CLUSTER_IP, 1);
        let ingress = |id| {
            (
                id,
                "default/lb".to_string(),
                80,
                0,
                LABEL_VIA_LOAD_BALANCER_IP,
                1,
            )
        };
        let ids: Vec<u32> = store.maps.frontends.values().map(|v| v.id).collect();
        assert_eq!(
            labels(&store),
            [cluster_ip(ids[0]), ingress(ids[1]), ingress(ids[2])]
        );
        // The type alone changes: no entry is rewritten, every label is.
        let mut model = load_balancer_model(None, true);
        model.service_type = ServiceType::LoadBalancer;
        store.log.clear();
        syncer.reconcile(&plan_with(model), &mut store);
        assert!(store.log.is_empty(), "{:?}", store.log);
        let types: Vec<u8> = labels(&store).iter().map(|l| l.3).collect();
        assert_eq!(types, [LABEL_TYPE_LOAD_BALANCER; 3]);
        // Gone with its frontends.
        syncer.reconcile(&Plan::default(), &mut store);
        assert!(store.labels.is_empty(), "{:?}", store.labels.keys());
    }

    #[test]
    fn source_ranges_are_written_before_and_removed_after_the_entry_needing_them() {
        let mut store = FakeStore::default();
        let mut syncer = fresh_syncer();
        syncer.reconcile(
            &load_balancer_plan(Some(&["203.0.113.0/24"]), false),
            &mut store,
        );
        let (_, value) = node_entry(&store.maps);
        let id = value.id;
        assert_eq!(value.flags, FRONTEND_SNAT_REMOTE | FRONTEND_SOURCE_RANGES);
        let put_range = store
            .log
            .iter()
            .position(|l| l == &format!("put range {id} 203.0.113.0/24"))
            .expect("range written");
        let put_frontend = store
            .log
            .iter()
            .position(|l| l == &format!("put service {id}"))
            .unwrap();
        assert!(put_range < put_frontend, "{:?}", store.log);
        // The node frontend's lines (the pod one of the same address has
        // its own ranges and id).
        let of_id = |log: &[String]| -> Vec<String> {
            log.iter()
                .filter(|l| l.contains(&format!(" {id} ")) || l.ends_with(&format!(" {id}")))
                .cloned()
                .collect()
        };
        // Ranges replaced: the new one comes before the old one goes.
        store.log.clear();
        syncer.reconcile(
            &load_balancer_plan(Some(&["198.51.100.0/24"]), false),
            &mut store,
        );
        assert_eq!(
            of_id(&store.log),
            [
                format!("put range {id} 198.51.100.0/24"),
                format!("delete range {id} 203.0.113.0/24")
            ]
        );
        // Restriction lifted: the entry drops the flag before the ranges go.
        store.log.clear();
        syncer.reconcile(&load_balancer_plan(None, false), &mut store);
        assert_eq!(
            of_id(&store.log),
            [
                format!("put service {id}"),
                format!("delete range {id} 198.51.100.0/24")
            ]
        );
        assert!(store.maps.source_ranges.is_empty());
        assert_eq!(&store.maps, syncer.current());
    }

    #[test]
    fn only_ipv6_ranges_leave_the_check_on_with_nobody_allowed() {
        let mut store = FakeStore::default();
        fresh_syncer().reconcile(&load_balancer_plan(Some(&[]), false), &mut store);
        let (_, value) = node_entry(&store.maps);
        assert_ne!(value.flags & FRONTEND_SOURCE_RANGES, 0);
        assert!(store.maps.source_ranges.is_empty());
    }

    #[test]
    fn a_failed_range_write_never_exposes_the_restricted_entry() {
        let mut store = FakeStore {
            fail_range_puts: true,
            ..Default::default()
        };
        let report = fresh_syncer().reconcile(
            &load_balancer_plan(Some(&["203.0.113.0/24"]), false),
            &mut store,
        );
        assert!(
            report.errors.iter().any(|e| e.contains("SOURCE_RANGES")),
            "{:?}",
            report.errors
        );
        assert!(
            !store.maps.frontends.keys().any(|k| k.scope() == SCOPE_NODE),
            "the node entry waits for its ranges"
        );
    }

    #[test]
    fn removed_frontends_and_adopted_orphans_lose_their_ranges() {
        let mut store = FakeStore::default();
        let mut syncer = fresh_syncer();
        syncer.reconcile(
            &load_balancer_plan(Some(&["203.0.113.0/24"]), false),
            &mut store,
        );
        let (_, value) = node_entry(&store.maps);
        store.log.clear();
        syncer.reconcile(&Plan::default(), &mut store);
        assert!(store
            .log
            .contains(&format!("delete range {} 203.0.113.0/24", value.id)));
        assert_eq!(store.maps, MapContents::default());
        // A range of a frontend id without an entry, left by an interrupted agent.
        store.maps.source_ranges.insert(RangeEntry {
            frontend_id: 9,
            cidr: "10.0.0.0/8".parse().unwrap(),
        });
        store.log.clear();
        adopting_syncer(&store).reconcile(&Plan::default(), &mut store);
        assert_eq!(store.log, ["delete range 9 10.0.0.0/8"]);
    }

    /// A dual-stack LoadBalancer `default/web`: cluster IPs 10.96.0.1 and
    /// fd00:10:96::1, ingress IPs 192.168.50.10 and fd00:192::10, port 80
    /// with an endpoint of each family, and the given source ranges (none:
    /// no restriction).
    fn dual_stack_plan(ranges: &[&str]) -> Plan {
        let name = ServiceName::new("default", "web");
        let backend = |addr: &str| Backend {
            addr: addr.parse().unwrap(),
            local: false,
        };
        let external = |addr: &str| ExternalAddr {
            addr: addr.parse().unwrap(),
            load_balancer: true,
        };
        let model = ServiceModel {
            service_type: ServiceType::ClusterIp,
            cluster_ips: vec![
                "10.96.0.1".parse().unwrap(),
                "fd00:10:96::1".parse().unwrap(),
            ],
            ports: vec![ServicePortModel {
                name: String::new(),
                protocol: Protocol::Tcp,
                port: 80,
                node_port: None,
                backends: vec![backend("10.244.1.2:8080"), backend("[fd00:10:244::2]:8080")],
                draining: Vec::new(),
            }],
            external_addrs: vec![external("192.168.50.10"), external("fd00:192::10")],
            source_ranges: (!ranges.is_empty())
                .then(|| ranges.iter().map(|c| c.parse().unwrap()).collect()),
            ..model_without_ports(&name)
        };
        let mut plan = Plan::default();
        plan.set(&name, Some(model), &mut PlanChange::default());
        plan
    }

    #[test]
    fn each_family_s_entries_go_to_its_maps_with_ids_of_one_space() {
        let mut store = FakeStore::default();
        let mut syncer = fresh_syncer();
        let plan = dual_stack_plan(&[]);
        let report = syncer.reconcile(&plan, &mut store);
        assert!(report.errors.is_empty(), "{:?}", report.errors);
        let reachable = reachable(&store.maps);
        assert_eq!(reachable["10.96.0.1:80"], ["10.244.1.2:8080"]);
        assert_eq!(reachable["[fd00:10:96::1]:80"], ["[fd00:10:244::2]:8080"]);
        assert_eq!(reachable["[fd00:192::10]:80"], ["[fd00:10:244::2]:8080"]);
        let v6 = store
            .maps
            .frontends
            .keys()
            .filter(|k| matches!(k, FrontendMapKey::V6(_)))
            .count();
        assert_eq!((store.maps.frontends.len(), v6), (6, 3));
        // Frontend ids and backend ids: each once over both families.
        let ids: BTreeSet<u32> = store.maps.frontends.values().map(|v| v.id).collect();
        assert_eq!(ids.len(), 6);
        let backends: Vec<(u32, bool)> = store
            .maps
            .backends
            .iter()
            .map(|(id, b)| (id, matches!(b, BackendMapValue::V6(_))))
            .collect();
        assert_eq!(backends, [(0, false), (1, true)]);
        // A restarted agent adopts both families and changes nothing.
        store.log.clear();
        let report = adopting_syncer(&store).reconcile(&plan, &mut store);
        assert_eq!(report, SyncReport::default());
        assert!(store.log.is_empty(), "{:?}", store.log);
        // Removed in reverse, both families.
        syncer.reconcile(&Plan::default(), &mut store);
        assert_eq!(store.maps, MapContents::default());
    }

    #[test]
    fn an_ipv6_frontend_gets_its_backend_before_its_table_and_its_table_before_its_entry() {
        let name = ServiceName::new("default", "v6");
        let model = ServiceModel {
            service_type: ServiceType::ClusterIp,
            cluster_ips: vec!["fd00:10:96::a".parse().unwrap()],
            ports: vec![ServicePortModel {
                name: String::new(),
                protocol: Protocol::Udp,
                port: 53,
                node_port: None,
                backends: vec![Backend {
                    addr: "[fd00:10:244::5]:5353".parse().unwrap(),
                    local: true,
                }],
                draining: Vec::new(),
            }],
            ..model_without_ports(&name)
        };
        let mut plan = Plan::default();
        plan.set(&name, Some(model), &mut PlanChange::default());
        let mut store = FakeStore::default();
        fresh_syncer().reconcile(&plan, &mut store);
        assert_eq!(
            store.log,
            [
                "put backend 0",
                "put table 0",
                "reset stats 0",
                "put service 0"
            ]
        );
        let Some((FrontendMapKey::V6(key), _)) = store.maps.frontends.iter().next() else {
            panic!("an IPv6 key: {:?}", store.maps.frontends);
        };
        assert_eq!(
            proxy_common::addr::addr6_from_net(key.addr),
            "fd00:10:96::a".parse::<std::net::Ipv6Addr>().unwrap()
        );
        let Some(BackendMapValue::V6(backend)) = store.maps.backends.get(0) else {
            panic!("an IPv6 backend");
        };
        assert_eq!(
            (backend.port, backend.flags),
            (port_to_net(5353), BACKEND_LOCAL)
        );
    }

    #[test]
    fn source_ranges_are_written_per_family_and_a_family_without_any_admits_nobody() {
        let mut store = FakeStore::default();
        let mut syncer = fresh_syncer();
        syncer.reconcile(&dual_stack_plan(&["192.168.0.0/16"]), &mut store);
        let restricted: Vec<(IpAddr, u32)> = store
            .maps
            .frontends
            .iter()
            .filter(|(_, v)| v.flags & FRONTEND_SOURCE_RANGES != 0)
            .map(|(k, v)| (k.addr(), v.id))
            .collect();
        // Each ingress IP, from pods and from outside.
        assert_eq!(restricted.len(), 4, "{restricted:?}");
        let ranges_of = |maps: &MapContents, id: u32| -> Vec<String> {
            maps.source_ranges
                .range(RangeEntry::bounds(id))
                .map(|r| r.cidr.to_string())
                .collect()
        };
        for (addr, id) in &restricted {
            let expected: &[&str] = if addr.is_ipv4() {
                &["192.168.0.0/16"]
            } else {
                &[]
            };
            assert_eq!(ranges_of(&store.maps, *id), expected, "{addr}");
        }
        // An IPv6 range goes to the IPv6 frontends only.
        syncer.reconcile(
            &dual_stack_plan(&["192.168.0.0/16", "fd00:203::/32"]),
            &mut store,
        );
        for (addr, id) in &restricted {
            let expected: &[&str] = if addr.is_ipv4() {
                &["192.168.0.0/16"]
            } else {
                &["fd00:203::/32"]
            };
            assert_eq!(ranges_of(&store.maps, *id), expected, "{addr}");
        }
        assert_eq!(&store.maps, syncer.current());
        syncer.reconcile(&Plan::default(), &mut store);
        assert!(store.maps.source_ranges.is_empty());
    }
}
