//! Typed access to the pinned maps: the sync writer (`MapStore`) and the
//! readers behind `kxdp services`.

use std::{borrow::Cow, collections::BTreeMap, net::Ipv4Addr, os::fd::AsFd, path::Path};

use aya::{
    maps::{
        lpm_trie::{Key, LpmTrie},
        Array, HashMap, Map, MapData, MapError, MapInfo, PerCpuArray,
    },
    Ebpf,
};
use proxy_common::maps::{
    addr_from_net, addr_to_net, AffinityKey, AffinityKey6, AffinityValue, BackendValue,
    BackendValue6, CtEntry, CtEntry6, FlowKey, FlowKey6, FrontendKey, FrontendKey6, FrontendStats,
    FrontendValue, NextHop, SockAffinityKey, SockRevNatKey, SockRevNatKey6, SockRevNatValue,
    SockRevNatValue6, SourceRange, SourceRange6,
};

use super::{
    batch,
    fill::{count_keys, Count},
    maglev_arena::{ArenaError, MaglevArena, MAGLEV_ARENA, MAGLEV_INDEX},
    DataplaneError,
};
use crate::{
    cidr::Ipv4Cidr,
    sync::store::{MapContents, MapStore, RangeEntry, StoreError, TableSpec},
};

pub const FRONTENDS: &str = "FRONTENDS";
/// The backends map as metrics and `kxdp status` name it.
pub const BACKENDS: &str = "BACKENDS";
/// Where the backends are pinned: an array by id. An earlier layout pinned
/// a hash map as `BACKENDS`; an upgraded agent copies it
/// ([`adopt_backends_hash`]).
pub const BACKEND_SLOTS: &str = "BACKEND_SLOTS";
pub const STATS: &str = "STATS";
pub const SOCK_STATS: &str = "SOCK_STATS";
pub const PORT_ROLES: &str = "PORT_ROLES";
pub const DROPS: &str = "DROPS";
pub const VERDICTS: &str = "VERDICTS";
pub const SOURCE_RANGES: &str = "SOURCE_RANGES";
pub const NIC_ADDRS: &str = "NIC_ADDRS";
/// The maps the agent writes from the Services, whose fill it reports.
pub const AGENT_WRITTEN: [&str; 3] = [FRONTENDS, BACKENDS, SOURCE_RANGES];

/// Bits of an LPM key before the address: the frontend id.
const FRONTEND_ID_BITS: u32 = 32;

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
pub const ALL: [PinnedMap; 22] = [
    pinned::<FrontendKey, FrontendValue>(FRONTENDS),
    pinned::<u32, BackendValue>(BACKEND_SLOTS),
    pinned::<u32, u64>(MAGLEV_ARENA),
    pinned::<u32, u64>(MAGLEV_INDEX),
    pinned::<FlowKey, CtEntry>(super::fill::CONNTRACK),
    pinned::<u32, FrontendStats>(STATS),
    pinned::<u32, u64>(DROPS),
    pinned::<u32, u64>(VERDICTS),
    pinned::<Key<SourceRange>, u8>(SOURCE_RANGES),
    pinned::<u32, u32>(NIC_ADDRS),
    pinned::<AffinityKey, AffinityValue>("AFFINITY"),
    pinned::<SockRevNatKey, SockRevNatValue>("SOCK_REVNAT"),
    pinned::<u32, u64>(SOCK_STATS),
    pinned::<SockAffinityKey, AffinityValue>("SOCK_AFFINITY"),
    pinned::<u32, u64>(PORT_ROLES),
    pinned::<u32, NextHop>("HOP_CACHE"),
    pinned::<FrontendKey6, FrontendValue>("FRONTENDS6"),
    pinned::<u32, BackendValue6>("BACKEND_SLOTS6"),
    pinned::<FlowKey6, CtEntry6>("CONNTRACK6"),
    pinned::<Key<SourceRange6>, u8>("SOURCE_RANGES6"),
    pinned::<AffinityKey6, AffinityValue>("AFFINITY6"),
    pinned::<SockRevNatKey6, SockRevNatValue6>("SOCK_REVNAT6"),
];

/// Maps earlier versions pinned and this one no longer uses (`SELECTION`:
/// the slot table before Maglev; `MAGLEV` and `MAGLEV_IDS`: the Maglev
/// tables as an array of maps, before the arena; `BACKENDS`: the backends
/// as a hash map, before `BACKEND_SLOTS`; `NEXT_HOPS`: the next hops as an
/// LRU hash map, before `HOP_CACHE`). A new agent removes their pins once
/// its own object is loaded (the programs still running keep theirs until
/// replaced), and so does `kxdp unload`.
pub const RETIRED: [&str; 5] = ["SELECTION", "MAGLEV", "MAGLEV_IDS", BACKENDS, "NEXT_HOPS"];

/// Maps earlier versions pinned under another name, same layout: (old, new).
pub const RENAMED: [(&str, &str); 1] = [("SERVICES", FRONTENDS)];

/// Moves the pins of [`RENAMED`] maps to their new names, so an upgraded
/// agent adopts them (and their frontend ids) like any other pinned map.
/// A pin already under the new name wins; the old one is then left to
/// `kxdp unload`.
pub fn adopt_renamed_pins(pin_path: &Path) -> Result<(), DataplaneError> {
    for (old, new) in RENAMED {
        let (from, to) = (pin_path.join(old), pin_path.join(new));
        if from.exists() && !to.exists() {
            std::fs::rename(&from, &to).map_err(|e| DataplaneError::RenamePin(from, e))?;
        }
    }
    Ok(())
}

/// The pin of the agent-written map `name` (`AGENT_WRITTEN`).
pub fn pinned_as(name: &'static str) -> &'static str {
    if name == BACKENDS {
        BACKEND_SLOTS
    } else {
        name
    }
}

/// Copies the backends an earlier agent kept in the hash map `BACKENDS`
/// into `BACKEND_SLOTS`, just created empty, ids and all, so the flows
/// and tables naming them go on; the old pin is retired after. How many.
pub fn adopt_backends_hash(pin_path: &Path) -> Result<usize, DataplaneError> {
    let old = pin_path.join(BACKENDS);
    if !old.exists() {
        return Ok(0);
    }
    let hash: HashMap<MapData, u32, BackendValue> = MapData::from_pin(&old)
        .and_then(Map::from_map_data)
        .and_then(HashMap::try_from)
        .map_err(|e| DataplaneError::Map(BACKENDS, e))?;
    let mut slots: Array<MapData, BackendValue> = MapData::from_pin(pin_path.join(BACKEND_SLOTS))
        .and_then(Map::from_map_data)
        .and_then(Array::try_from)
        .map_err(|e| DataplaneError::Map(BACKEND_SLOTS, e))?;
    let mut entries = Vec::new();
    for entry in hash.iter() {
        let (id, backend) = entry.map_err(|e| DataplaneError::Map(BACKENDS, e))?;
        // Ids at or above the array's size were never handed out.
        if id < proxy_common::sizes::MAX_BACKENDS {
            entries.push((id, backend));
        }
    }
    let failed = batch::put_all_indexed(&mut slots, BACKEND_SLOTS, &entries);
    if let Some((id, e)) = failed.first() {
        return Err(DataplaneError::AdoptBackends(*id, e.reason.clone()));
    }
    Ok(entries.len())
}

/// The trie key of a range: the frontend id's 32 bits, then the prefix.
fn range_key(entry: &RangeEntry) -> Key<SourceRange> {
    Key::new(
        FRONTEND_ID_BITS + u32::from(entry.cidr.prefix_len()),
        SourceRange {
            frontend_id_be: entry.frontend_id.to_be(),
            addr: addr_to_net(entry.cidr.network()),
        },
    )
}

/// The inverse of [`range_key`]; `None` for a key no agent writes.
fn range_entry(key: &Key<SourceRange>) -> Option<RangeEntry> {
    let len = key.prefix_len().checked_sub(FRONTEND_ID_BITS)?;
    let data = key.data();
    Some(RangeEntry {
        frontend_id: u32::from_be(data.frontend_id_be),
        cidr: Ipv4Cidr::new(addr_from_net(data.addr), u8::try_from(len).ok()?)?,
    })
}

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
    frontends: HashMap<MapData, FrontendKey, FrontendValue>,
    backends: Array<MapData, BackendValue>,
    maglev: MaglevArena,
    stats: PerCpuArray<MapData, FrontendStats>,
    sock_stats: PerCpuArray<MapData, u64>,
    drops: PerCpuArray<MapData, u64>,
    verdicts: PerCpuArray<MapData, u64>,
    source_ranges: LpmTrie<MapData, SourceRange, u8>,
    nic_addrs: HashMap<MapData, u32, u32>,
    port_roles: Array<MapData, u64>,
}

fn typed<T: TryFrom<Map, Error = MapError>>(
    name: &'static str,
    map: Option<Map>,
) -> Result<T, DataplaneError> {
    let map = map.ok_or(DataplaneError::MissingMap(name))?;
    T::try_from(map).map_err(|e| DataplaneError::Map(name, e))
}

/// The arena and its index, mapped.
fn maglev(arena: Option<Map>, index: Option<Map>) -> Result<MaglevArena, DataplaneError> {
    let array = |name: &'static str, map: Option<Map>| match map {
        Some(Map::Array(data)) => {
            let entries = data
                .info()
                .map_err(|e| DataplaneError::Map(name, e))?
                .max_entries();
            Ok((data, entries))
        }
        Some(_) => Err(DataplaneError::Map(
            name,
            MapError::InvalidMapType { map_type: 0 },
        )),
        None => Err(DataplaneError::MissingMap(name)),
    };
    let (arena, arena_entries) = array(MAGLEV_ARENA, arena)?;
    let (index, index_entries) = array(MAGLEV_INDEX, index)?;
    MaglevArena::open(
        arena.fd().as_fd(),
        arena_entries,
        index.fd().as_fd(),
        index_entries,
    )
    .map_err(DataplaneError::Arena)
}

fn arena_error(e: ArenaError) -> StoreError {
    StoreError {
        map: MAGLEV_ARENA,
        reason: e.to_string(),
    }
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
            frontends: typed(FRONTENDS, ebpf.take_map(FRONTENDS))?,
            backends: typed(BACKEND_SLOTS, ebpf.take_map(BACKEND_SLOTS))?,
            maglev: maglev(ebpf.take_map(MAGLEV_ARENA), ebpf.take_map(MAGLEV_INDEX))?,
            stats: typed(STATS, ebpf.take_map(STATS))?,
            sock_stats: typed(SOCK_STATS, ebpf.take_map(SOCK_STATS))?,
            drops: typed(DROPS, ebpf.take_map(DROPS))?,
            verdicts: typed(VERDICTS, ebpf.take_map(VERDICTS))?,
            source_ranges: typed(SOURCE_RANGES, ebpf.take_map(SOURCE_RANGES))?,
            nic_addrs: typed(NIC_ADDRS, ebpf.take_map(NIC_ADDRS))?,
            port_roles: typed(PORT_ROLES, ebpf.take_map(PORT_ROLES))?,
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
            frontends: typed(FRONTENDS, open(FRONTENDS)?)?,
            backends: typed(BACKEND_SLOTS, open(BACKEND_SLOTS)?)?,
            maglev: maglev(open(MAGLEV_ARENA)?, open(MAGLEV_INDEX)?)?,
            stats: typed(STATS, open(STATS)?)?,
            sock_stats: typed(SOCK_STATS, open(SOCK_STATS)?)?,
            drops: typed(DROPS, open(DROPS)?)?,
            verdicts: typed(VERDICTS, open(VERDICTS)?)?,
            source_ranges: typed(SOURCE_RANGES, open(SOURCE_RANGES)?)?,
            nic_addrs: typed(NIC_ADDRS, open(NIC_ADDRS)?)?,
            port_roles: typed(PORT_ROLES, open(PORT_ROLES)?)?,
        })
    }

    /// The Maglev tables, to read one as the datapath does.
    pub fn tables(&self) -> &MaglevArena {
        &self.maglev
    }

    /// Everything the service maps hold now.
    pub fn read_contents(&self) -> Result<MapContents, StoreError> {
        let mut contents = MapContents::default();
        for entry in self.frontends.iter() {
            let (k, v) = entry.map_err(store_error(FRONTENDS))?;
            contents.frontends.insert(k, v);
        }
        self.each_backend(|id, backend| {
            // An id no agent hands out (none at or above the map's size)
            // is named by no table of ours: not mirrored, left alone.
            if id < proxy_common::sizes::MAX_BACKENDS {
                contents.backends.insert(id, backend);
            }
        })?;
        contents.tables = self.maglev.all().map_err(arena_error)?;
        for entry in self.source_ranges.iter() {
            let (k, _) = entry.map_err(store_error(SOURCE_RANGES))?;
            // A key no agent wrote cannot be named for deletion; it also
            // matches no frontend of ours.
            if let Some(range) = range_entry(&k) {
                contents.source_ranges.insert(range);
            }
        }
        Ok(contents)
    }

    /// Hands each backend the array holds (its non-empty slots) to `each`.
    fn each_backend(&self, mut each: impl FnMut(u32, BackendValue)) -> Result<(), StoreError> {
        batch::read_each(&self.backends, |id, backend| {
            if backend.addr != 0 {
                each(id, backend);
            }
        })
        .map_err(|e| StoreError {
            map: BACKEND_SLOTS,
            reason: e.to_string(),
        })
    }

    /// What `NIC_ADDRS` holds: ifindex → SNAT address.
    pub fn nic_addrs(&self) -> Result<BTreeMap<u32, Ipv4Addr>, StoreError> {
        self.nic_addrs
            .iter()
            .map(|entry| {
                let (index, addr) = entry.map_err(store_error(NIC_ADDRS))?;
                Ok((index, addr_from_net(addr)))
            })
            .collect()
    }

    pub fn put_nic_addr(&mut self, ifindex: u32, addr: Ipv4Addr) -> Result<(), StoreError> {
        self.nic_addrs
            .insert(ifindex, addr_to_net(addr), 0)
            .map_err(store_error(NIC_ADDRS))
    }

    pub fn delete_nic_addr(&mut self, ifindex: u32) -> Result<(), StoreError> {
        self.nic_addrs
            .remove(&ifindex)
            .map_err(store_error(NIC_ADDRS))
    }

    /// One verdict counter (`proxy_common::maps::verdict`), summed over CPUs.
    pub fn verdicts(&self, verdict: u32) -> Result<u64, StoreError> {
        let per_cpu = self
            .verdicts
            .get(&verdict, 0)
            .map_err(store_error(VERDICTS))?;
        Ok(per_cpu.iter().sum())
    }

    /// A service's counters summed over CPUs.
    pub fn frontend_stats(&self, frontend_id: u32) -> Result<FrontendStats, StoreError> {
        let per_cpu = self
            .stats
            .get(&frontend_id, 0)
            .map_err(store_error(STATS))?;
        Ok(per_cpu
            .iter()
            .fold(FrontendStats::default(), |sum, s| FrontendStats {
                packets: sum.packets + s.packets,
                bytes: sum.bytes + s.bytes,
            }))
    }

    /// Sockets the socket hooks pointed from a frontend at a backend,
    /// summed over CPUs.
    pub fn frontend_sockets(&self, frontend_id: u32) -> Result<u64, StoreError> {
        let per_cpu = self
            .sock_stats
            .get(&frontend_id, 0)
            .map_err(store_error(SOCK_STATS))?;
        Ok(per_cpu.iter().sum())
    }

    /// Entries of the agent-written map `name` (`FRONTENDS`, `BACKENDS` or
    /// `SOURCE_RANGES`), counted up to `cap`; `None` for another map.
    pub fn count(&self, name: &str, cap: u32) -> Option<Result<Count, StoreError>> {
        let (map, counted) = match name {
            FRONTENDS => (FRONTENDS, count_keys(self.frontends.keys(), cap)),
            BACKENDS => {
                let mut held = 0u32;
                if let Err(e) = self.each_backend(|_, _| held += 1) {
                    return Some(Err(e));
                }
                return Some(Ok(Count {
                    entries: held.min(cap),
                    complete: held <= cap,
                }));
            }
            SOURCE_RANGES => (SOURCE_RANGES, count_keys(self.source_ranges.keys(), cap)),
            _ => return None,
        };
        Some(counted.map_err(store_error(map)))
    }

    /// Drops for one reason (`proxy_common::maps::drop_reason`), summed over CPUs.
    pub fn drops(&self, reason: u32) -> Result<u64, StoreError> {
        let per_cpu = self.drops.get(&reason, 0).map_err(store_error(DROPS))?;
        Ok(per_cpu.iter().sum())
    }
}

impl MapStore for BpfMaps {
    fn put_backends(&mut self, entries: &[(u32, BackendValue)]) -> Vec<(u32, StoreError)> {
        batch::put_all_indexed(&mut self.backends, BACKEND_SLOTS, entries)
    }
    fn delete_backend(&mut self, id: u32) -> Result<(), StoreError> {
        // An empty slot is no backend.
        self.backends
            .set(id, BackendValue::default(), 0)
            .map_err(store_error(BACKEND_SLOTS))
    }
    fn put_table<'s>(
        &mut self,
        frontend_id: u32,
        spec: &TableSpec,
        build: impl FnOnce() -> Cow<'s, [u32]>,
    ) -> Result<(), StoreError> {
        self.maglev
            .put(frontend_id, spec, build)
            .map_err(arena_error)
    }
    fn has_table(&self, spec: &TableSpec) -> bool {
        self.maglev.has(spec)
    }
    fn delete_table(&mut self, frontend_id: u32) -> Result<(), StoreError> {
        self.maglev.delete(frontend_id).map_err(arena_error)
    }
    fn put_frontends(
        &mut self,
        entries: &[(FrontendKey, FrontendValue)],
    ) -> Vec<(FrontendKey, StoreError)> {
        batch::put_all(&mut self.frontends, FRONTENDS, entries)
    }
    fn delete_frontend(&mut self, key: &FrontendKey) -> Result<(), StoreError> {
        self.frontends.remove(key).map_err(store_error(FRONTENDS))
    }
    fn put_source_range(&mut self, entry: &RangeEntry) -> Result<(), StoreError> {
        self.source_ranges
            .insert(&range_key(entry), 1, 0)
            .map_err(store_error(SOURCE_RANGES))
    }
    fn delete_source_range(&mut self, entry: &RangeEntry) -> Result<(), StoreError> {
        self.source_ranges
            .remove(&range_key(entry))
            .map_err(store_error(SOURCE_RANGES))
    }
    fn put_port_roles(&mut self, words: &[(u32, u64)]) -> Vec<(u32, StoreError)> {
        // A few words a sync: one call each.
        words
            .iter()
            .filter_map(|&(word, bits)| {
                let written = self.port_roles.set(word, bits, 0);
                written.err().map(|e| (word, store_error(PORT_ROLES)(e)))
            })
            .collect()
    }
    fn reset_stats(&mut self, frontend_ids: &[u32]) -> Vec<(u32, StoreError)> {
        let mut failed = batch::zero_all(&mut self.stats, STATS, frontend_ids);
        failed.extend(batch::zero_all(
            &mut self.sock_stats,
            SOCK_STATS,
            frontend_ids,
        ));
        failed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_keys_put_the_service_id_first_and_round_trip() {
        let entry = RangeEntry {
            frontend_id: 0x0102_0304,
            cidr: "203.0.113.0/24".parse().unwrap(),
        };
        let key = range_key(&entry);
        assert_eq!(key.prefix_len(), 56);
        let data = key.data();
        let bytes: Vec<u8> = bytemuck::bytes_of(&data).to_vec();
        assert_eq!(
            bytes,
            [1, 2, 3, 4, 203, 0, 113, 0],
            "big-endian id, then the address"
        );
        assert_eq!(range_entry(&key), Some(entry));
        assert_eq!(range_entry(&Key::new(8, data)), None, "shorter than an id");
    }

    #[test]
    fn the_pinned_layout_lists_the_node_frontend_maps() {
        let sizes: Vec<(&str, usize, usize)> = ALL
            .iter()
            .map(|m| (m.name, m.key_size, m.value_size))
            .collect();
        assert!(sizes.contains(&(SOURCE_RANGES, 12, 1)), "{sizes:?}");
        assert!(sizes.contains(&(NIC_ADDRS, 4, 4)));
        assert!(sizes.contains(&(VERDICTS, 4, 8)));
        assert!(sizes.contains(&("SOCK_REVNAT", 16, 8)));
    }
}
