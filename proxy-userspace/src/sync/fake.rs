//! A map store in memory that records every write, for tests.

use std::borrow::Cow;

use proxy_common::maps::{FrontendLabel, FrontendValue};

use super::{
    entries::{BackendMapValue, FrontendMapKey},
    store::{MapContents, MapStore, RangeEntry, StoreError, TableSpec},
};

/// Records every write in order and can be told to fail on a map.
#[derive(Default)]
pub struct FakeStore {
    pub maps: MapContents,
    pub log: Vec<String>,
    pub fail_backend_puts: bool,
    pub fail_range_puts: bool,
    pub fail_table_puts: bool,
    /// Tables built: a table some frontend has already is shared, not built.
    pub builds: usize,
    /// `PORT_ROLES` as written, by word.
    pub port_roles: std::collections::BTreeMap<u32, u64>,
    /// Log `PORT_ROLES` writes too (most tests follow the other maps only).
    pub log_port_roles: bool,
    /// `FRONTEND_LABELS` as written, by frontend id (not logged).
    pub labels: std::collections::BTreeMap<u32, FrontendLabel>,
}

impl MapStore for FakeStore {
    fn put_backends(&mut self, entries: &[(u32, BackendMapValue)]) -> Vec<(u32, StoreError)> {
        if self.fail_backend_puts {
            let full = |id| StoreError {
                map: "BACKENDS",
                reason: format!("full, backend {id}"),
            };
            return entries.iter().map(|(id, _)| (*id, full(id))).collect();
        }
        for (id, value) in entries {
            self.log.push(format!("put backend {id}"));
            self.maps.backends.insert(*id, *value);
        }
        Vec::new()
    }
    fn delete_backend(&mut self, id: u32, held: &BackendMapValue) -> Result<(), StoreError> {
        self.log.push(format!("delete backend {id}"));
        let removed = self.maps.backends.remove(id);
        assert_eq!(removed.as_ref(), Some(held), "the value the slot holds");
        Ok(())
    }
    /// Like the real store: shares a table some frontend has, else builds
    /// it and checks it is the one `spec` describes.
    fn put_table<'s>(
        &mut self,
        frontend_id: u32,
        spec: &TableSpec,
        build: impl FnOnce() -> Cow<'s, [u32]>,
    ) -> Result<(), StoreError> {
        if self.fail_table_puts {
            return Err(StoreError {
                map: "MAGLEV_ARENA",
                reason: "put failed".into(),
            });
        }
        self.log.push(format!("put table {frontend_id}"));
        if !self.has_table(spec) {
            self.builds += 1;
            let built = TableSpec::of(&build());
            assert_eq!(&built, spec, "the slots built are the table described");
        }
        self.maps.tables.insert(frontend_id, spec.clone());
        Ok(())
    }
    fn has_table(&self, spec: &TableSpec) -> bool {
        self.maps.tables.values().any(|t| t == spec)
    }
    fn delete_table(&mut self, frontend_id: u32) -> Result<(), StoreError> {
        self.log.push(format!("delete table {frontend_id}"));
        self.maps.tables.remove(&frontend_id);
        Ok(())
    }
    fn put_frontends(
        &mut self,
        entries: &[(FrontendMapKey, FrontendValue)],
    ) -> Vec<(FrontendMapKey, StoreError)> {
        for (key, value) in entries {
            self.log.push(format!("put service {}", value.id));
            self.maps.frontends.insert(*key, *value);
        }
        Vec::new()
    }
    fn delete_frontend(&mut self, key: &FrontendMapKey) -> Result<(), StoreError> {
        let id = self.maps.frontends.remove(key).map(|v| v.id);
        self.log.push(format!("delete service {id:?}"));
        Ok(())
    }
    fn put_labels(&mut self, labels: &[(u32, FrontendLabel)]) -> Vec<(u32, StoreError)> {
        self.labels.extend(labels.iter().copied());
        Vec::new()
    }
    fn delete_label(&mut self, frontend_id: u32) -> Result<(), StoreError> {
        self.labels.remove(&frontend_id);
        Ok(())
    }
    fn reset_stats(&mut self, frontend_ids: &[u32]) -> Vec<(u32, StoreError)> {
        for id in frontend_ids {
            self.log.push(format!("reset stats {id}"));
        }
        Vec::new()
    }
    fn put_port_roles(&mut self, words: &[(u32, u64)]) -> Vec<(u32, StoreError)> {
        for &(word, bits) in words {
            if self.log_port_roles {
                self.log.push(format!("port roles {word} = {bits:#x}"));
            }
            self.port_roles.insert(word, bits);
        }
        Vec::new()
    }
    fn put_source_range(&mut self, entry: &RangeEntry) -> Result<(), StoreError> {
        if self.fail_range_puts {
            return Err(StoreError {
                map: "SOURCE_RANGES",
                reason: "full".into(),
            });
        }
        self.log
            .push(format!("put range {} {}", entry.frontend_id, entry.cidr));
        self.maps.source_ranges.insert(*entry);
        Ok(())
    }
    fn delete_source_range(&mut self, entry: &RangeEntry) -> Result<(), StoreError> {
        self.log
            .push(format!("delete range {} {}", entry.frontend_id, entry.cidr));
        self.maps.source_ranges.remove(entry);
        Ok(())
    }
}
