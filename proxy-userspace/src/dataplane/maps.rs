//! Typed access to the pinned maps: the sync writer (`MapStore`) and the
//! readers behind `kxdp services`.

use std::path::Path;

use aya::{
    maps::{HashMap, Map, MapData, MapError, MapInfo, PerCpuArray, PerCpuValues},
    Ebpf,
};
use proxy_common::maps::{
    BackendValue, CtEntry, FlowKey, ServiceKey, ServiceStats, ServiceValue, SlotKey,
};

use super::DataplaneError;
use crate::sync::{MapContents, MapStore, StoreError};

pub const SERVICES: &str = "SERVICES";
pub const BACKENDS: &str = "BACKENDS";
pub const SELECTION: &str = "SELECTION";
pub const STATS: &str = "STATS";
pub const DROPS: &str = "DROPS";

/// A map pinned under the pin path, with the key and value sizes this
/// version of the object gives it.
pub struct PinnedMap {
    pub name: &'static str,
    key_size: usize,
    value_size: usize,
}

const fn pinned<K, V>(name: &'static str) -> PinnedMap {
    PinnedMap {
        name,
        key_size: size_of::<K>(),
        value_size: size_of::<V>(),
    }
}

/// Every map pinned under the pin path.
pub const ALL: [PinnedMap; 6] = [
    pinned::<ServiceKey, ServiceValue>(SERVICES),
    pinned::<u32, BackendValue>(BACKENDS),
    pinned::<SlotKey, u32>(SELECTION),
    pinned::<FlowKey, CtEntry>("CONNTRACK"),
    pinned::<u32, ServiceStats>(STATS),
    pinned::<u32, u64>(DROPS),
];

/// Refuses maps pinned by a version of kxdp that laid them out differently:
/// the loader would adopt them as they are and the programs would read past
/// their values.
pub fn check_pinned_layout(pin_path: &Path) -> Result<(), DataplaneError> {
    for map in &ALL {
        let path = pin_path.join(map.name);
        if !path.exists() {
            continue;
        }
        let info = MapInfo::from_pin(&path).map_err(|e| DataplaneError::Map(map.name, e))?;
        let pinned = (info.key_size() as usize, info.value_size() as usize);
        if pinned != (map.key_size, map.value_size) {
            return Err(DataplaneError::PinnedLayout {
                path,
                pinned,
                expected: (map.key_size, map.value_size),
            });
        }
    }
    Ok(())
}

/// The maps the agent writes and the CLI reads.
pub struct BpfMaps {
    services: HashMap<MapData, ServiceKey, ServiceValue>,
    backends: HashMap<MapData, u32, BackendValue>,
    selection: HashMap<MapData, SlotKey, u32>,
    stats: PerCpuArray<MapData, ServiceStats>,
    drops: PerCpuArray<MapData, u64>,
}

fn typed<T: TryFrom<Map, Error = MapError>>(
    name: &'static str,
    map: Option<Map>,
) -> Result<T, DataplaneError> {
    let map = map.ok_or(DataplaneError::MissingMap(name))?;
    T::try_from(map).map_err(|e| DataplaneError::Map(name, e))
}

fn store_error(map: &'static str) -> impl Fn(MapError) -> StoreError {
    move |e| StoreError {
        map,
        reason: e.to_string(),
    }
}

impl BpfMaps {
    pub fn from_ebpf(ebpf: &mut Ebpf) -> Result<Self, DataplaneError> {
        Ok(Self {
            services: typed(SERVICES, ebpf.take_map(SERVICES))?,
            backends: typed(BACKENDS, ebpf.take_map(BACKENDS))?,
            selection: typed(SELECTION, ebpf.take_map(SELECTION))?,
            stats: typed(STATS, ebpf.take_map(STATS))?,
            drops: typed(DROPS, ebpf.take_map(DROPS))?,
        })
    }

    /// Opens the maps a running (or stopped) agent pinned under `pin_path`.
    pub fn open_pinned(pin_path: &Path) -> Result<Self, DataplaneError> {
        let open = |name: &'static str| {
            let data =
                MapData::from_pin(pin_path.join(name)).map_err(|e| DataplaneError::Map(name, e))?;
            Map::from_map_data(data)
                .map(Some)
                .map_err(|e| DataplaneError::Map(name, e))
        };
        Ok(Self {
            services: typed(SERVICES, open(SERVICES)?)?,
            backends: typed(BACKENDS, open(BACKENDS)?)?,
            selection: typed(SELECTION, open(SELECTION)?)?,
            stats: typed(STATS, open(STATS)?)?,
            drops: typed(DROPS, open(DROPS)?)?,
        })
    }

    /// Everything the service maps hold now.
    pub fn read_contents(&self) -> Result<MapContents, StoreError> {
        let mut contents = MapContents::default();
        for entry in self.services.iter() {
            let (k, v) = entry.map_err(store_error(SERVICES))?;
            contents.services.insert(k, v);
        }
        for entry in self.backends.iter() {
            let (k, v) = entry.map_err(store_error(BACKENDS))?;
            contents.backends.insert(k, v);
        }
        for entry in self.selection.iter() {
            let (k, v) = entry.map_err(store_error(SELECTION))?;
            contents.selection.insert(k, v);
        }
        Ok(contents)
    }

    /// A service's counters summed over CPUs.
    pub fn service_stats(&self, service_id: u32) -> Result<ServiceStats, StoreError> {
        let per_cpu = self.stats.get(&service_id, 0).map_err(store_error(STATS))?;
        Ok(per_cpu
            .iter()
            .fold(ServiceStats::default(), |sum, s| ServiceStats {
                packets: sum.packets + s.packets,
                bytes: sum.bytes + s.bytes,
            }))
    }

    /// Drops for one reason (`proxy_common::maps::drop_reason`), summed over CPUs.
    pub fn drops(&self, reason: u32) -> Result<u64, StoreError> {
        let per_cpu = self.drops.get(&reason, 0).map_err(store_error(DROPS))?;
        Ok(per_cpu.iter().sum())
    }
}

impl MapStore for BpfMaps {
    fn put_backend(&mut self, id: u32, value: &BackendValue) -> Result<(), StoreError> {
        self.backends
            .insert(id, value, 0)
            .map_err(store_error(BACKENDS))
    }
    fn delete_backend(&mut self, id: u32) -> Result<(), StoreError> {
        self.backends.remove(&id).map_err(store_error(BACKENDS))
    }
    fn put_slot(&mut self, key: &SlotKey, backend_id: u32) -> Result<(), StoreError> {
        self.selection
            .insert(key, backend_id, 0)
            .map_err(store_error(SELECTION))
    }
    fn delete_slot(&mut self, key: &SlotKey) -> Result<(), StoreError> {
        self.selection.remove(key).map_err(store_error(SELECTION))
    }
    fn put_service(&mut self, key: &ServiceKey, value: &ServiceValue) -> Result<(), StoreError> {
        self.services
            .insert(key, value, 0)
            .map_err(store_error(SERVICES))
    }
    fn delete_service(&mut self, key: &ServiceKey) -> Result<(), StoreError> {
        self.services.remove(key).map_err(store_error(SERVICES))
    }
    fn reset_stats(&mut self, service_id: u32) -> Result<(), StoreError> {
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| StoreError {
            map: STATS,
            reason: e.to_string(),
        })?;
        let zeroes = PerCpuValues::try_from(vec![ServiceStats::default(); cpus]).map_err(|e| {
            StoreError {
                map: STATS,
                reason: e.to_string(),
            }
        })?;
        self.stats
            .set(service_id, zeroes, 0)
            .map_err(store_error(STATS))
    }
}
