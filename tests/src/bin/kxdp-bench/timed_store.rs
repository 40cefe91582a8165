//! A map store that clocks the time a sync spends in the maps, apart from
//! what it computes: the "map writes alone" figure. Maglev builds
//! run before their tables are put, or inside `put_table`'s build, which
//! is taken out.

use std::{
    borrow::Cow,
    time::{Duration, Instant},
};

use proxy_common::maps::{FrontendLabel, FrontendValue};
use proxy_userspace::sync::{
    entries::{BackendMapValue, FrontendMapKey},
    store::{MapStore, RangeEntry, StoreError, TableSpec},
};

pub(crate) struct TimedStore<'s, S> {
    inner: &'s mut S,
    /// Time spent in the inner store's calls, builds excluded.
    pub(crate) writing: Duration,
}

impl<'s, S: MapStore> TimedStore<'s, S> {
    pub(crate) fn new(inner: &'s mut S) -> Self {
        Self {
            inner,
            writing: Duration::ZERO,
        }
    }

    fn timed<R>(&mut self, call: impl FnOnce(&mut S) -> R) -> R {
        let started = Instant::now();
        let result = call(self.inner);
        self.writing += started.elapsed();
        result
    }
}

impl<S: MapStore> MapStore for TimedStore<'_, S> {
    fn put_backends(&mut self, entries: &[(u32, BackendMapValue)]) -> Vec<(u32, StoreError)> {
        self.timed(|s| s.put_backends(entries))
    }

    fn delete_backend(&mut self, id: u32, held: &BackendMapValue) -> Result<(), StoreError> {
        self.timed(|s| s.delete_backend(id, held))
    }

    fn put_table<'b>(
        &mut self,
        frontend_id: u32,
        spec: &TableSpec,
        build: impl FnOnce() -> Cow<'b, [u32]>,
    ) -> Result<(), StoreError> {
        let mut building = Duration::ZERO;
        let timed_build = || {
            let started = Instant::now();
            let slots = build();
            building = started.elapsed();
            slots
        };
        let result = self.timed(|s| s.put_table(frontend_id, spec, timed_build));
        self.writing -= building;
        result
    }

    fn has_table(&self, spec: &TableSpec) -> bool {
        self.inner.has_table(spec)
    }

    fn delete_table(&mut self, frontend_id: u32) -> Result<(), StoreError> {
        self.timed(|s| s.delete_table(frontend_id))
    }

    fn put_frontends(
        &mut self,
        entries: &[(FrontendMapKey, FrontendValue)],
    ) -> Vec<(FrontendMapKey, StoreError)> {
        self.timed(|s| s.put_frontends(entries))
    }

    fn put_labels(&mut self, labels: &[(u32, FrontendLabel)]) -> Vec<(u32, StoreError)> {
        self.timed(|s| s.put_labels(labels))
    }

    fn delete_label(&mut self, frontend_id: u32) -> Result<(), StoreError> {
        self.timed(|s| s.delete_label(frontend_id))
    }

    fn delete_frontend(&mut self, key: &FrontendMapKey) -> Result<(), StoreError> {
        self.timed(|s| s.delete_frontend(key))
    }

    fn put_source_range(&mut self, entry: &RangeEntry) -> Result<(), StoreError> {
        self.timed(|s| s.put_source_range(entry))
    }

    fn delete_source_range(&mut self, entry: &RangeEntry) -> Result<(), StoreError> {
        self.timed(|s| s.delete_source_range(entry))
    }

    fn reset_stats(&mut self, frontend_ids: &[u32]) -> Vec<(u32, StoreError)> {
        self.timed(|s| s.reset_stats(frontend_ids))
    }

    fn put_port_roles(&mut self, words: &[(u32, u64)]) -> Vec<(u32, StoreError)> {
        self.timed(|s| s.put_port_roles(words))
    }
}
