//! Sync: turns a plan into map entries and applies the difference to the maps
//! in an order that never exposes a half-built service (DESIGN.md §1):
//! backends, then selection slots, then the service entry; deletions in
//! reverse. Ids stay stable for as long as their frontend or backend exists,
//! and an id freed by a sync is not reused in that same sync, so no packet can
//! see a new service's slots through an old service's entry.

use std::collections::{BTreeMap, BTreeSet};

use proxy_common::{
    maps::{
        addr_to_net, port_to_net, BackendValue, ServiceKey, ServiceValue, SlotKey, SCOPE_CLUSTER_IP,
    },
    sizes,
};

use crate::plan::Plan;

/// The content of the maps the agent owns.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MapContents {
    pub services: BTreeMap<ServiceKey, ServiceValue>,
    pub backends: BTreeMap<u32, BackendValue>,
    pub selection: BTreeMap<SlotKey, u32>,
}

#[derive(Debug, thiserror::Error)]
#[error("map {map}: {reason}")]
pub struct StoreError {
    pub map: &'static str,
    pub reason: String,
}

/// Where sync writes: the pinned BPF maps, or a fake in tests.
pub trait MapStore {
    fn put_backend(&mut self, id: u32, value: &BackendValue) -> Result<(), StoreError>;
    fn delete_backend(&mut self, id: u32) -> Result<(), StoreError>;
    fn put_slot(&mut self, key: &SlotKey, backend_id: u32) -> Result<(), StoreError>;
    fn delete_slot(&mut self, key: &SlotKey) -> Result<(), StoreError>;
    fn put_service(&mut self, key: &ServiceKey, value: &ServiceValue) -> Result<(), StoreError>;
    fn delete_service(&mut self, key: &ServiceKey) -> Result<(), StoreError>;
    /// Zeroes the counters of a service id about to be (re)used.
    fn reset_stats(&mut self, service_id: u32) -> Result<(), StoreError>;
}

/// What one sync changed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct SyncReport {
    pub services_written: usize,
    pub services_deleted: usize,
    pub backends_written: usize,
    pub backends_deleted: usize,
    pub errors: Vec<String>,
}

/// Hands out the lowest-numbered free ids above a moving cursor, so repeated
/// allocations stay cheap even with tens of thousands of ids in use.
struct IdCursor {
    next: u32,
    limit: u32,
}

impl IdCursor {
    fn allocate(&mut self, in_use: impl Fn(u32) -> bool) -> Option<u32> {
        (0..self.limit)
            .map(|step| (self.next + step) % self.limit)
            .find(|id| !in_use(*id))
            .inspect(|id| self.next = (id + 1) % self.limit)
    }
}

/// Holds what the maps contain and brings them to what a plan wants.
pub struct Syncer {
    current: MapContents,
    service_ids: IdCursor,
    backend_ids: IdCursor,
}

impl Syncer {
    /// Starts from what the (possibly pinned, pre-existing) maps hold, so a
    /// restarted agent keeps every id and touches only what changed.
    pub fn adopt(current: MapContents) -> Self {
        Self::with_limits(current, sizes::MAX_SERVICES, sizes::MAX_BACKENDS)
    }

    fn with_limits(current: MapContents, max_services: u32, max_backends: u32) -> Self {
        Self {
            current,
            service_ids: IdCursor {
                next: 0,
                limit: max_services,
            },
            backend_ids: IdCursor {
                next: 0,
                limit: max_backends,
            },
        }
    }

    pub fn current(&self) -> &MapContents {
        &self.current
    }

    /// The map content for `plan`, reusing the ids already in the maps.
    fn desired(&mut self, plan: &Plan, errors: &mut Vec<String>) -> MapContents {
        let current = &self.current;
        let backend_by_addr: BTreeMap<BackendValue, u32> =
            current.backends.iter().map(|(id, b)| (*b, *id)).collect();
        let current_service_ids: BTreeSet<u32> = current.services.values().map(|v| v.id).collect();
        let mut desired = MapContents::default();
        let mut new_backends: BTreeMap<BackendValue, u32> = BTreeMap::new();
        let mut used_service_ids = BTreeSet::new();
        for (frontend, plan_entry) in &plan.frontends {
            let key = ServiceKey {
                addr: addr_to_net(frontend.addr),
                port: port_to_net(frontend.port),
                proto: frontend.protocol.ip_proto(),
                scope: SCOPE_CLUSTER_IP,
            };
            let id = match current.services.get(&key) {
                Some(existing) => existing.id,
                None => match self.service_ids.allocate(|id| {
                    current_service_ids.contains(&id) || used_service_ids.contains(&id)
                }) {
                    Some(id) => id,
                    None => {
                        errors.push(format!(
                            "{frontend} ({}): no free service id, the services map is full",
                            plan_entry.service
                        ));
                        continue;
                    }
                },
            };
            used_service_ids.insert(id);
            let mut slot_count = 0;
            for backend in &plan_entry.backends {
                let value = BackendValue {
                    addr: addr_to_net(*backend.ip()),
                    port: port_to_net(backend.port()),
                    _pad: 0,
                };
                let existing = backend_by_addr
                    .get(&value)
                    .or_else(|| new_backends.get(&value))
                    .copied();
                let backend_id = match existing {
                    Some(id) => id,
                    None => {
                        let taken = |id| {
                            current.backends.contains_key(&id) || desired.backends.contains_key(&id)
                        };
                        let Some(id) = self.backend_ids.allocate(taken) else {
                            errors.push(format!(
                                "{frontend}: no free backend id, the backends map is full"
                            ));
                            break;
                        };
                        new_backends.insert(value, id);
                        id
                    }
                };
                desired.backends.insert(backend_id, value);
                desired.selection.insert(
                    SlotKey {
                        service_id: id,
                        slot: slot_count,
                    },
                    backend_id,
                );
                slot_count += 1;
            }
            desired
                .services
                .insert(key, ServiceValue { id, slot_count });
        }
        desired
    }

    /// Applies `plan` to `store`. Entries that fail to write are reported and
    /// left as they were; everything else is still applied.
    pub fn apply(&mut self, plan: &Plan, store: &mut impl MapStore) -> SyncReport {
        let mut report = SyncReport::default();
        let desired = self.desired(plan, &mut report.errors);
        let current = &mut self.current;

        for (id, value) in &desired.backends {
            if current.backends.get(id) != Some(value) {
                match store.put_backend(*id, value) {
                    Ok(()) => {
                        current.backends.insert(*id, *value);
                        report.backends_written += 1;
                    }
                    Err(e) => report.errors.push(e.to_string()),
                }
            }
        }
        let mut failed_services = BTreeSet::new();
        for (key, backend_id) in &desired.selection {
            if current.selection.get(key) == Some(backend_id) {
                continue;
            }
            if !current.backends.contains_key(backend_id) {
                failed_services.insert(key.service_id);
                continue;
            }
            match store.put_slot(key, *backend_id) {
                Ok(()) => {
                    current.selection.insert(*key, *backend_id);
                }
                Err(e) => {
                    failed_services.insert(key.service_id);
                    report.errors.push(e.to_string());
                }
            }
        }
        let live_ids: BTreeSet<u32> = current.services.values().map(|v| v.id).collect();
        for (key, value) in &desired.services {
            if current.services.get(key) == Some(value) {
                continue;
            }
            if failed_services.contains(&value.id) {
                report.errors.push(format!(
                    "service id {}: backends incomplete, entry not updated",
                    value.id
                ));
                continue;
            }
            let result = if live_ids.contains(&value.id) {
                Ok(())
            } else {
                store.reset_stats(value.id)
            };
            match result.and_then(|()| store.put_service(key, value)) {
                Ok(()) => {
                    current.services.insert(*key, *value);
                    report.services_written += 1;
                }
                Err(e) => report.errors.push(e.to_string()),
            }
        }

        let stale_services: Vec<ServiceKey> = current
            .services
            .keys()
            .filter(|k| !desired.services.contains_key(k))
            .copied()
            .collect();
        for key in stale_services {
            match store.delete_service(&key) {
                Ok(()) => {
                    current.services.remove(&key);
                    report.services_deleted += 1;
                }
                Err(e) => report.errors.push(e.to_string()),
            }
        }
        // A slot may go once no live service entry can index it.
        let slot_counts: BTreeMap<u32, u32> = current
            .services
            .values()
            .map(|v| (v.id, v.slot_count))
            .collect();
        let stale_slots: Vec<SlotKey> = current
            .selection
            .iter()
            .filter(|(k, id)| desired.selection.get(k) != Some(id))
            .filter(|(k, _)| {
                slot_counts
                    .get(&k.service_id)
                    .is_none_or(|count| k.slot >= *count)
            })
            .map(|(k, _)| *k)
            .collect();
        for key in stale_slots {
            match store.delete_slot(&key) {
                Ok(()) => {
                    current.selection.remove(&key);
                }
                Err(e) => report.errors.push(e.to_string()),
            }
        }
        // A backend may go once no slot refers to it.
        let referenced: BTreeSet<u32> = current.selection.values().copied().collect();
        let stale_backends: Vec<u32> = current
            .backends
            .keys()
            .filter(|id| !desired.backends.contains_key(id) && !referenced.contains(id))
            .copied()
            .collect();
        for id in stale_backends {
            match store.delete_backend(id) {
                Ok(()) => {
                    current.backends.remove(&id);
                    report.backends_deleted += 1;
                }
                Err(e) => report.errors.push(e.to_string()),
            }
        }
        report
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddrV4;

    use super::*;
    use crate::{
        model::Protocol,
        plan::{Frontend, FrontendKey},
    };

    /// Records every write in order and can be told to fail on a map.
    #[derive(Default)]
    struct FakeStore {
        maps: MapContents,
        log: Vec<String>,
        fail_backend_puts: bool,
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
        fn put_slot(&mut self, key: &SlotKey, backend_id: u32) -> Result<(), StoreError> {
            self.log
                .push(format!("put slot {}/{}", key.service_id, key.slot));
            self.maps.selection.insert(*key, backend_id);
            Ok(())
        }
        fn delete_slot(&mut self, key: &SlotKey) -> Result<(), StoreError> {
            self.log
                .push(format!("delete slot {}/{}", key.service_id, key.slot));
            self.maps.selection.remove(key);
            Ok(())
        }
        fn put_service(
            &mut self,
            key: &ServiceKey,
            value: &ServiceValue,
        ) -> Result<(), StoreError> {
            self.log.push(format!("put service {}", value.id));
            self.maps.services.insert(*key, *value);
            Ok(())
        }
        fn delete_service(&mut self, key: &ServiceKey) -> Result<(), StoreError> {
            let id = self.maps.services.remove(key).map(|v| v.id);
            self.log.push(format!("delete service {id:?}"));
            Ok(())
        }
        fn reset_stats(&mut self, service_id: u32) -> Result<(), StoreError> {
            self.log.push(format!("reset stats {service_id}"));
            Ok(())
        }
    }

    fn plan_of(frontends: &[(&str, u16, &[&str])]) -> Plan {
        let mut plan = Plan::default();
        for (vip, port, backends) in frontends {
            plan.frontends.insert(
                FrontendKey {
                    addr: vip.parse().unwrap(),
                    port: *port,
                    protocol: Protocol::Tcp,
                },
                Frontend {
                    service: format!("default/{vip}"),
                    port_name: String::new(),
                    backends: backends
                        .iter()
                        .map(|b| b.parse::<SocketAddrV4>().unwrap())
                        .collect(),
                },
            );
        }
        plan
    }

    /// The backends each service entry can reach, read back through the maps
    /// the way the datapath does.
    fn reachable(maps: &MapContents) -> BTreeMap<String, Vec<String>> {
        maps.services
            .iter()
            .map(|(key, value)| {
                let vip = proxy_common::maps::addr_from_net(key.addr);
                let backends = (0..value.slot_count)
                    .map(|slot| {
                        let id = maps.selection[&SlotKey {
                            service_id: value.id,
                            slot,
                        }];
                        let b = maps.backends[&id];
                        format!(
                            "{}:{}",
                            proxy_common::maps::addr_from_net(b.addr),
                            proxy_common::maps::port_from_net(b.port)
                        )
                    })
                    .collect();
                (
                    format!("{vip}:{}", proxy_common::maps::port_from_net(key.port)),
                    backends,
                )
            })
            .collect()
    }

    #[test]
    fn builds_backends_then_slots_then_service() {
        let mut store = FakeStore::default();
        let mut syncer = Syncer::adopt(MapContents::default());
        let report = syncer.apply(
            &plan_of(&[("10.96.0.1", 80, &["10.244.0.2:8080", "10.244.0.3:8080"])]),
            &mut store,
        );
        assert!(report.errors.is_empty(), "{:?}", report.errors);
        assert_eq!(
            store.log,
            [
                "put backend 0",
                "put backend 1",
                "put slot 0/0",
                "put slot 0/1",
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
        let report = syncer.apply(
            &plan_of(&[("10.96.0.1", 80, &["10.244.0.2:8080", "10.244.0.3:8080"])]),
            &mut store,
        );
        assert_eq!(report, SyncReport::default());
        assert!(store.log.is_empty());
    }

    #[test]
    fn deletes_service_first_then_slots_then_backends() {
        let mut store = FakeStore::default();
        let mut syncer = Syncer::adopt(MapContents::default());
        syncer.apply(
            &plan_of(&[("10.96.0.1", 80, &["10.244.0.2:8080"])]),
            &mut store,
        );
        store.log.clear();
        let report = syncer.apply(&Plan::default(), &mut store);
        assert_eq!(
            store.log,
            [
                "delete service Some(0)",
                "delete slot 0/0",
                "delete backend 0"
            ]
        );
        assert_eq!((report.services_deleted, report.backends_deleted), (1, 1));
        assert_eq!(store.maps, MapContents::default());
    }

    #[test]
    fn shrinking_lowers_the_count_before_removing_slots_and_growing_adds_slots_first() {
        let mut store = FakeStore::default();
        let mut syncer = Syncer::adopt(MapContents::default());
        let three = ["10.244.0.2:80", "10.244.0.3:80", "10.244.0.4:80"];
        syncer.apply(&plan_of(&[("10.96.0.1", 80, &three)]), &mut store);
        store.log.clear();
        syncer.apply(&plan_of(&[("10.96.0.1", 80, &three[..1])]), &mut store);
        assert_eq!(
            store.log,
            [
                "put service 0",
                "delete slot 0/1",
                "delete slot 0/2",
                "delete backend 1",
                "delete backend 2"
            ]
        );
        store.log.clear();
        syncer.apply(&plan_of(&[("10.96.0.1", 80, &three)]), &mut store);
        // Backend ids move on (3, 4): recently freed ids rest a while.
        assert_eq!(
            store.log,
            [
                "put backend 3",
                "put backend 4",
                "put slot 0/1",
                "put slot 0/2",
                "put service 0"
            ]
        );
        assert_eq!(reachable(&store.maps)["10.96.0.1:80"], three);
    }

    #[test]
    fn ids_are_stable_and_not_reused_within_the_sync_that_frees_them() {
        let mut store = FakeStore::default();
        let mut syncer = Syncer::adopt(MapContents::default());
        syncer.apply(
            &plan_of(&[
                ("10.96.0.1", 80, &["10.244.0.2:80"]),
                ("10.96.0.2", 80, &["10.244.0.3:80"]),
            ]),
            &mut store,
        );
        let id_of = |m: &MapContents, vip: &str| {
            let addr = proxy_common::maps::addr_to_net(vip.parse().unwrap());
            m.services
                .iter()
                .find(|(k, _)| k.addr == addr)
                .map(|(_, v)| v.id)
        };
        let (first, second) = (
            id_of(&store.maps, "10.96.0.1"),
            id_of(&store.maps, "10.96.0.2"),
        );
        // Replace service 1 by service 3 and backend .2 by .4 in one sync.
        syncer.apply(
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
        let mut syncer = Syncer::adopt(MapContents::default());
        syncer.apply(
            &plan_of(&[
                ("10.96.0.1", 80, &["10.244.0.2:80"]),
                ("10.96.0.2", 80, &["10.244.0.2:80"]),
            ]),
            &mut store,
        );
        assert_eq!(store.maps.backends.len(), 1);
        syncer.apply(
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
        Syncer::adopt(MapContents::default()).apply(&plan, &mut store);
        store.log.clear();
        let report = Syncer::adopt(store.maps.clone()).apply(&plan, &mut store);
        assert_eq!(report, SyncReport::default());
        assert!(store.log.is_empty());
    }

    #[test]
    fn a_failed_backend_write_never_exposes_the_service() {
        let mut store = FakeStore {
            fail_backend_puts: true,
            ..Default::default()
        };
        let mut syncer = Syncer::adopt(MapContents::default());
        let report = syncer.apply(
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
        assert_eq!(store.maps.services.len(), 1);
        assert_eq!(store.maps.services.values().next().unwrap().slot_count, 0);
        assert!(store.maps.selection.is_empty());
        assert_eq!(&store.maps, syncer.current());
    }

    #[test]
    fn full_services_map_is_reported_not_silent() {
        let mut store = FakeStore::default();
        let mut syncer = Syncer::with_limits(MapContents::default(), 1, 8);
        let report = syncer.apply(
            &plan_of(&[("10.96.0.1", 80, &[]), ("10.96.0.2", 80, &[])]),
            &mut store,
        );
        assert_eq!(store.maps.services.len(), 1);
        assert_eq!(report.errors.len(), 1);
        assert!(
            report.errors[0].contains("services map is full"),
            "{:?}",
            report.errors
        );
    }
}
