//! The store contract: what the agent's maps hold ([`MapContents`]) and the
//! [`MapStore`] the syncer writes them through (the pinned BPF maps, or a
//! fake in tests).

use std::{
    borrow::Cow,
    collections::{BTreeMap, BTreeSet},
    net::{Ipv4Addr, Ipv6Addr},
};

use proxy_common::maps::{FrontendLabel, FrontendValue};

use super::{
    backend_table::BackendTable,
    entries::{BackendMapValue, FrontendMapKey},
};
use crate::cidr::IpCidr;

/// A source ranges entry: clients in `cidr` may use frontend
/// `frontend_id` (in `SOURCE_RANGES` or `SOURCE_RANGES6` by its family).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RangeEntry {
    pub frontend_id: u32,
    pub cidr: IpCidr,
}

impl RangeEntry {
    /// Every entry of `frontend_id`, both families, as bounds of a range
    /// over sorted entries (IPv4 blocks sort first).
    pub(super) fn bounds(frontend_id: u32) -> std::ops::RangeInclusive<Self> {
        let entry = |cidr| Self { frontend_id, cidr };
        let lowest = IpCidr::new(Ipv4Addr::UNSPECIFIED.into(), 0);
        let highest = IpCidr::host(Ipv6Addr::from(u128::MAX).into());
        entry(lowest.expect("/0 is a prefix of IPv4"))..=entry(highest)
    }
}

/// The content of the maps the agent owns.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MapContents {
    /// `FRONTENDS` and `FRONTENDS6`.
    pub frontends: BTreeMap<FrontendMapKey, FrontendValue>,
    /// `BACKEND_SLOTS` and `BACKEND_SLOTS6`.
    pub backends: BackendTable,
    /// Maglev tables by frontend id, as what decides their content.
    pub tables: BTreeMap<u32, TableSpec>,
    /// `SOURCE_RANGES` and `SOURCE_RANGES6`.
    pub source_ranges: BTreeSet<RangeEntry>,
}

/// What a Maglev table holds, in short: its size and its members. The
/// slots follow from them (a backend id names one backend for as long as a
/// table refers to it), so the agent keeps this instead of every slot.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct TableSpec {
    pub size: u32,
    /// Distinct backend ids, ascending.
    pub members: Vec<u32>,
}

impl TableSpec {
    /// A table of `size` slots over the backend ids `ids` (in any order,
    /// repeats allowed).
    pub fn new(size: u32, mut ids: Vec<u32>) -> Self {
        ids.sort_unstable();
        ids.dedup();
        Self { size, members: ids }
    }

    /// The spec of a table holding `slots` (the tests' fake store checks
    /// what a build gives with it).
    #[cfg(any(test, feature = "fake-store"))]
    pub fn of(slots: &[u32]) -> Self {
        Self::new(slots.len() as u32, slots.to_vec())
    }
}

#[derive(Debug, thiserror::Error)]
#[error("map {map}: {reason}")]
pub struct StoreError {
    pub map: &'static str,
    pub reason: String,
}

/// Where sync writes: the pinned BPF maps, or a fake in tests.
pub trait MapStore {
    /// Writes `entries` (backend id, value) each into its family's array,
    /// as few calls as the maps take; returns the ones that could not be
    /// written, with why.
    fn put_backends(&mut self, entries: &[(u32, BackendMapValue)]) -> Vec<(u32, StoreError)>;
    /// Empties the slot of backend `id`, which holds `held` (in its
    /// family's array).
    fn delete_backend(&mut self, id: u32, held: &BackendMapValue) -> Result<(), StoreError>;
    /// Makes the table `spec` the Maglev table of `frontend_id`, live when
    /// this returns; `build` gives its slots (slot → backend id) and is
    /// called only when no frontend has the same table already. After an
    /// error the live table may hold the old or the new backends.
    fn put_table<'s>(
        &mut self,
        frontend_id: u32,
        spec: &TableSpec,
        build: impl FnOnce() -> Cow<'s, [u32]>,
    ) -> Result<(), StoreError>;
    /// Whether some frontend has the table `spec` (a new frontend with it
    /// shares it, nothing is built).
    fn has_table(&self, spec: &TableSpec) -> bool;
    /// Leaves `frontend_id` without a table.
    fn delete_table(&mut self, frontend_id: u32) -> Result<(), StoreError>;
    /// Writes `entries` each into its family's map, as few calls as the
    /// maps take; returns the ones that could not be written, with why.
    fn put_frontends(
        &mut self,
        entries: &[(FrontendMapKey, FrontendValue)],
    ) -> Vec<(FrontendMapKey, StoreError)>;
    fn delete_frontend(&mut self, key: &FrontendMapKey) -> Result<(), StoreError>;
    /// Writes the labels (frontend id, label) of live frontends, as few
    /// calls as the map takes; returns the ones that could not be written.
    fn put_labels(&mut self, labels: &[(u32, FrontendLabel)]) -> Vec<(u32, StoreError)>;
    /// Removes the label of `frontend_id`, if it has one.
    fn delete_label(&mut self, frontend_id: u32) -> Result<(), StoreError>;
    fn put_source_range(&mut self, entry: &RangeEntry) -> Result<(), StoreError>;
    fn delete_source_range(&mut self, entry: &RangeEntry) -> Result<(), StoreError>;
    /// Zeroes the counters (packets, bytes, rejects) of frontend ids about to be (re)used; returns
    /// the ids whose counters could not be zeroed, with why.
    fn reset_stats(&mut self, frontend_ids: &[u32]) -> Vec<(u32, StoreError)>;
    /// Writes words of `PORT_ROLES` (index, bits); returns the ones that
    /// could not be written, with why.
    fn put_port_roles(&mut self, words: &[(u32, u64)]) -> Vec<(u32, StoreError)>;
}
