//! A map store in memory that records every write, for tests.

use proxy_common::maps::{BackendValue, FrontendKey, FrontendValue};

use super::store::{MapContents, MapStore, RangeEntry, StoreError, TableSpec, TableWrite};

/// Records every write in order and can be told to fail on a map.
#[derive(Default)]
pub struct FakeStore {
    pub maps: MapContents,
    pub log: Vec<String>,
    pub fail_backend_puts: bool,
    pub fail_range_puts: bool,
    pub fail_table_puts: bool,
    pub fail_table_commits: bool,
    /// Table changes since the last commit (only then is a commit logged).
    pub uncommitted: usize,
}

impl MapStore for FakeStore {
    fn put_backend(&mut self, id: u32, value: &BackendValue) -> Result<(), StoreError> {
        if self.fail_backend_puts {
            return Err(StoreError {
                map: "BACKENDS",
                reason: "full".into(),
            });
        }
        self.log.push(format!("put backend {id}"));
        self.maps.backends.insert(id, *value);
        Ok(())
    }
    fn delete_backend(&mut self, id: u32) -> Result<(), StoreError> {
        self.log.push(format!("delete backend {id}"));
        self.maps.backends.remove(&id);
        Ok(())
    }
    /// Like the real store: a table of the same size is rewritten in place
    /// (and not committed), another is queued for the commit.
    fn put_table(&mut self, frontend_id: u32, slots: &[u32]) -> Result<TableWrite, StoreError> {
        if self.fail_table_puts {
            return Err(StoreError {
                map: "MAGLEV",
                reason: "put failed".into(),
            });
        }
        self.log.push(format!("put table {frontend_id}"));
        let previous = self.maps.tables.insert(frontend_id, TableSpec::of(slots));
        if previous.is_some_and(|p| p.size as usize == slots.len()) {
            return Ok(TableWrite::InPlace);
        }
        self.uncommitted += 1;
        Ok(TableWrite::Queued)
    }
    fn delete_table(&mut self, frontend_id: u32) -> Result<(), StoreError> {
        self.log.push(format!("delete table {frontend_id}"));
        self.maps.tables.remove(&frontend_id);
        self.uncommitted += 1;
        Ok(())
    }
    fn commit_tables(&mut self) -> Result<(), StoreError> {
        if std::mem::take(&mut self.uncommitted) == 0 {
            return Ok(());
        }
        if self.fail_table_commits {
            return Err(StoreError {
                map: "MAGLEV",
                reason: "commit failed".into(),
            });
        }
        self.log.push("commit tables".to_string());
        Ok(())
    }
    fn put_frontend(&mut self, key: &FrontendKey, value: &FrontendValue) -> Result<(), StoreError> {
        self.log.push(format!("put service {}", value.id));
        self.maps.frontends.insert(*key, *value);
        Ok(())
    }
    fn delete_frontend(&mut self, key: &FrontendKey) -> Result<(), StoreError> {
        let id = self.maps.frontends.remove(key).map(|v| v.id);
        self.log.push(format!("delete service {id:?}"));
        Ok(())
    }
    fn reset_stats(&mut self, frontend_id: u32) -> Result<(), StoreError> {
        self.log.push(format!("reset stats {frontend_id}"));
        Ok(())
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
