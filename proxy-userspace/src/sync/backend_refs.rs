//! Backend reference counts: which tables and draining lists still name each
//! backend id, so a backend is deleted only once nothing refers to it.

use std::collections::BTreeSet;

use foldhash::{HashMap, HashMapExt as _};

use super::{entries::FrontendMapKey, store::MapContents};

/// Who refers to each backend id, and the ids that may have lost their last
/// reference.
pub(super) struct BackendRefs {
    /// How many tables and draining lists refer to each backend id, by id:
    /// ids are handed out densely from 0 (below `sizes::MAX_BACKENDS`; the
    /// arena refuses tables naming others), so a vector is smaller and
    /// quicker than a map.
    counts: Vec<u32>,
    /// The backends each frontend keeps for existing connections only: in
    /// `backends` (the datapath checks a flow's backend is still there), in
    /// no table. Rebuilt by the reconcile after a restart.
    draining: HashMap<FrontendMapKey, Vec<u32>>,
    /// Backends a table may name after a write of it failed (half written,
    /// or not known to be swapped in): referenced until a later write of
    /// that table succeeds, so none a live table might name is deleted.
    unsettled: HashMap<u32, BTreeSet<u32>>,
    /// Backends that may have lost their last reference.
    unreferenced: BTreeSet<u32>,
}

impl BackendRefs {
    /// The references of the tables in `current`; its backends no table
    /// names are candidates for deletion.
    pub(super) fn adopt(current: &MapContents) -> Self {
        let mut refs = Self {
            counts: Vec::new(),
            draining: HashMap::new(),
            unsettled: HashMap::new(),
            unreferenced: BTreeSet::new(),
        };
        for id in current
            .tables
            .values()
            .flat_map(|t| t.members.iter().copied())
        {
            refs.hold(id);
        }
        refs.unreferenced = current
            .backends
            .iter()
            .map(|(id, _)| id)
            .filter(|id| !refs.is_referenced(*id))
            .collect();
        refs
    }

    /// Gives back the room the counts grew by beyond the highest id (up to
    /// as much again), once a full sync has written every backend.
    pub(super) fn trim(&mut self) {
        self.counts.shrink_to_fit();
    }

    /// The count of backend `id`, made room for.
    fn count_mut(&mut self, id: u32) -> &mut u32 {
        let index = id as usize;
        if index >= self.counts.len() {
            self.counts.resize(index + 1, 0);
        }
        &mut self.counts[index]
    }

    /// Adds one reference to backend `id`.
    fn hold(&mut self, id: u32) {
        *self.count_mut(id) += 1;
    }

    /// Records that a table now names `members`; held before the table's
    /// previous members are released (see [`Self::release_table`]).
    pub(super) fn hold_table(&mut self, members: &[u32]) {
        for id in members {
            self.hold(*id);
        }
    }

    /// Drops the references of the `previous` members of the table of
    /// `frontend_id` and of the backends a failed write of it held: the
    /// table is settled.
    pub(super) fn release_table(&mut self, frontend_id: u32, previous: Vec<u32>) {
        let unsettled = self.unsettled.remove(&frontend_id).unwrap_or_default();
        for old in previous.into_iter().chain(unsettled) {
            self.release(old);
        }
    }

    /// Records that a write of a table over `members` for `frontend_id`
    /// failed: the live table may name them until a later write settles it.
    pub(super) fn unsettle(&mut self, frontend_id: u32, members: &[u32]) {
        let held = self.unsettled.entry(frontend_id).or_default();
        let newly: Vec<u32> = members
            .iter()
            .copied()
            .filter(|id| held.insert(*id))
            .collect();
        for id in newly {
            self.hold(id);
        }
    }

    /// Records that frontend `key` keeps `ids` for its existing connections.
    pub(super) fn set_draining(&mut self, key: FrontendMapKey, ids: Vec<u32>) {
        for id in &ids {
            self.hold(*id);
        }
        let previous = if ids.is_empty() {
            self.draining.remove(&key)
        } else {
            self.draining.insert(key, ids)
        };
        for old in previous.unwrap_or_default() {
            self.release(old);
        }
    }

    /// Drops one reference to backend `id`; the last one makes it a
    /// candidate for deletion at the end of the sync.
    fn release(&mut self, id: u32) {
        let refs = self.count_mut(id);
        *refs = refs.saturating_sub(1);
        if *refs == 0 {
            self.unreferenced.insert(id);
        }
    }

    /// Makes backend `id` a candidate for deletion at the end of the sync:
    /// a new one nothing refers to yet, or one whose deletion failed.
    pub(super) fn candidate(&mut self, id: u32) {
        self.unreferenced.insert(id);
    }

    /// Takes the backends that may have lost their last reference.
    pub(super) fn take_candidates(&mut self) -> BTreeSet<u32> {
        std::mem::take(&mut self.unreferenced)
    }

    /// Whether a table or a draining list refers to backend `id`.
    pub(super) fn is_referenced(&self, id: u32) -> bool {
        self.counts.get(id as usize).is_some_and(|n| *n > 0)
    }
}
