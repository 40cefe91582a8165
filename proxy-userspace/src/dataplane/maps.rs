//! Typed access to the pinned maps: the sync writer (`MapStore`) and the
//! readers behind `kxdp services`.

use std::{borrow::Cow, net::IpAddr, os::fd::AsFd, path::Path};

use aya::{
    maps::{
        lpm_trie::{Key, LpmTrie},
        Array, HashMap, Map, MapData, MapError, MapInfo, PerCpuArray,
    },
    Ebpf,
};
use proxy_common::{
    addr::{addr6_from_net, addr6_to_net},
    maps::{
        addr_from_net, addr_to_net, AffinityKey, AffinityKey6, AffinityValue, BackendValue,
        BackendValue6, CtEntry, CtEntry6, FlowKey, FlowKey6, FrontendKey, FrontendKey6,
        FrontendLabel, FrontendStats, FrontendValue, NextHop, NextHop6, SockAffinityKey,
        SockRevNatKey, SockRevNatKey6, SockRevNatValue, SockRevNatValue6, SourceRange,
        SourceRange6,
    },
};

use super::{
    batch,
    fill::{count_keys, Count},
    maglev_arena::{ArenaError, MaglevArena, Opening, MAGLEV_ARENA, MAGLEV_INDEX},
    DataplaneError,
};
use crate::{
    cidr::IpCidr,
    source::node_addresses::NicAddrs,
    sync::{
        entries::{BackendMapValue, FrontendMapKey},
        store::{MapContents, MapStore, RangeEntry, StoreError, TableSpec},
    },
};

pub const FRONTENDS: &str = "FRONTENDS";
pub const FRONTENDS6: &str = "FRONTENDS6";
/// The backends map as metrics and `kxdp status` name it.
pub const BACKENDS: &str = "BACKENDS";
/// Where the backends are pinned: an array by id. An earlier layout pinned
/// a hash map as `BACKENDS`; an upgraded agent copies it
/// ([`adopt_backends_hash`]).
pub const BACKEND_SLOTS: &str = "BACKEND_SLOTS";
/// The IPv6 backends as metrics and `kxdp status` name them; pinned as
/// `BACKEND_SLOTS6`. Backend ids are one space over both arrays.
pub const BACKENDS6: &str = "BACKENDS6";
pub const BACKEND_SLOTS6: &str = "BACKEND_SLOTS6";
pub const STATS: &str = "STATS";
pub const SOCK_STATS: &str = "SOCK_STATS";
pub const PORT_ROLES: &str = "PORT_ROLES";
pub const DROPS: &str = "DROPS";
pub const VERDICTS: &str = "VERDICTS";
pub const SOURCE_RANGES: &str = "SOURCE_RANGES";
pub const SOURCE_RANGES6: &str = "SOURCE_RANGES6";
pub const NIC_ADDRS: &str = "NIC_ADDRS";
pub const NIC_ADDRS6: &str = "NIC_ADDRS6";
pub const REJECTS: &str = "REJECTS";
pub const FRONTEND_LABELS: &str = "FRONTEND_LABELS";
/// `kxdp monitor`'s ring buffer of events, and what it asks for.
pub const EVENTS: &str = "EVENTS";
pub const MONITOR: &str = "MONITOR";
/// The maps the agent writes from the Services, whose fill it reports.
pub const AGENT_WRITTEN: [&str; 6] = [
    FRONTENDS,
    FRONTENDS6,
    BACKENDS,
    BACKENDS6,
    SOURCE_RANGES,
    SOURCE_RANGES6,
];

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
pub const ALL: [PinnedMap; 28] = [
    pinned::<FrontendKey, FrontendValue>(FRONTENDS),
    pinned::<FrontendKey6, FrontendValue>(FRONTENDS6),
    pinned::<u32, BackendValue>(BACKEND_SLOTS),
    pinned::<u32, BackendValue6>(BACKEND_SLOTS6),
    pinned::<u32, u64>(MAGLEV_ARENA),
    pinned::<u32, u64>(MAGLEV_INDEX),
    pinned::<FlowKey, CtEntry>(super::fill::CONNTRACK),
    pinned::<FlowKey6, CtEntry6>(super::fill::CONNTRACK6),
    pinned::<u32, FrontendStats>(STATS),
    pinned::<u32, u64>(DROPS),
    pinned::<u32, u64>(VERDICTS),
    pinned::<Key<SourceRange>, u8>(SOURCE_RANGES),
    pinned::<Key<SourceRange6>, u8>(SOURCE_RANGES6),
    pinned::<u32, u32>(NIC_ADDRS),
    pinned::<AffinityKey, AffinityValue>("AFFINITY"),
    pinned::<AffinityKey6, AffinityValue>("AFFINITY6"),
    pinned::<SockRevNatKey, SockRevNatValue>("SOCK_REVNAT"),
    pinned::<u32, u64>(SOCK_STATS),
    pinned::<SockAffinityKey, AffinityValue>("SOCK_AFFINITY"),
    pinned::<u32, u64>(PORT_ROLES),
    pinned::<SockRevNatKey6, SockRevNatValue6>("SOCK_REVNAT6"),
    pinned::<u32, NextHop>("HOP_CACHE"),
    pinned::<u32, [u32; 4]>(NIC_ADDRS6),
    pinned::<u32, NextHop6>("HOP_CACHE6"),
    pinned::<u32, u64>(REJECTS),
    pinned::<u32, FrontendLabel>(FRONTEND_LABELS),
    // A ring buffer has neither keys nor values.
    pinned::<(), ()>(EVENTS),
    pinned::<u32, u32>(MONITOR),
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
    match name {
        BACKENDS => BACKEND_SLOTS,
        BACKENDS6 => BACKEND_SLOTS6,
        _ => name,
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

/// A range's trie key in the trie of its family: the frontend id's 32
/// bits, then the prefix.
enum RangeKey {
    V4(Key<SourceRange>),
    V6(Key<SourceRange6>),
}

fn range_key(entry: &RangeEntry) -> RangeKey {
    let bits = FRONTEND_ID_BITS + u32::from(entry.cidr.prefix_len());
    let frontend_id_be = entry.frontend_id.to_be();
    match entry.cidr.network() {
        IpAddr::V4(addr) => RangeKey::V4(Key::new(
            bits,
            SourceRange {
                frontend_id_be,
                addr: addr_to_net(addr),
            },
        )),
        IpAddr::V6(addr) => RangeKey::V6(Key::new(
            bits,
            SourceRange6 {
                frontend_id_be,
                addr: addr6_to_net(addr),
            },
        )),
    }
}

/// The inverse of [`range_key`], for either family's key; `None` for a
/// key no agent writes.
fn range_entry(prefix_len: u32, frontend_id_be: u32, addr: IpAddr) -> Option<RangeEntry> {
    let len = prefix_len.checked_sub(FRONTEND_ID_BITS)?;
    Some(RangeEntry {
        frontend_id: u32::from_be(frontend_id_be),
        cidr: IpCidr::new(addr, u8::try_from(len).ok()?)?,
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
    frontends6: HashMap<MapData, FrontendKey6, FrontendValue>,
    backends: Array<MapData, BackendValue>,
    backends6: Array<MapData, BackendValue6>,
    maglev: MaglevArena,
    stats: PerCpuArray<MapData, FrontendStats>,
    sock_stats: PerCpuArray<MapData, u64>,
    drops: PerCpuArray<MapData, u64>,
    verdicts: PerCpuArray<MapData, u64>,
    source_ranges: LpmTrie<MapData, SourceRange, u8>,
    source_ranges6: LpmTrie<MapData, SourceRange6, u8>,
    nic_addrs: HashMap<MapData, u32, u32>,
    nic_addrs6: HashMap<MapData, u32, [u32; 4]>,
    port_roles: Array<MapData, u64>,
    rejects: Array<MapData, u64>,
    labels: HashMap<MapData, u32, FrontendLabel>,
}

fn typed<T: TryFrom<Map, Error = MapError>>(
    name: &'static str,
    map: Option<Map>,
) -> Result<T, DataplaneError> {
    let map = map.ok_or(DataplaneError::MissingMap(name))?;
    T::try_from(map).map_err(|e| DataplaneError::Map(name, e))
}

/// The arena and its index, mapped.
fn maglev(
    arena: Option<Map>,
    index: Option<Map>,
    opening: Opening,
) -> Result<MaglevArena, DataplaneError> {
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
        opening,
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
            frontends6: typed(FRONTENDS6, ebpf.take_map(FRONTENDS6))?,
            backends: typed(BACKEND_SLOTS, ebpf.take_map(BACKEND_SLOTS))?,
            backends6: typed(BACKEND_SLOTS6, ebpf.take_map(BACKEND_SLOTS6))?,
            maglev: maglev(
                ebpf.take_map(MAGLEV_ARENA),
                ebpf.take_map(MAGLEV_INDEX),
                Opening::Owner,
            )?,
            stats: typed(STATS, ebpf.take_map(STATS))?,
            sock_stats: typed(SOCK_STATS, ebpf.take_map(SOCK_STATS))?,
            drops: typed(DROPS, ebpf.take_map(DROPS))?,
            verdicts: typed(VERDICTS, ebpf.take_map(VERDICTS))?,
            source_ranges: typed(SOURCE_RANGES, ebpf.take_map(SOURCE_RANGES))?,
            source_ranges6: typed(SOURCE_RANGES6, ebpf.take_map(SOURCE_RANGES6))?,
            nic_addrs: typed(NIC_ADDRS, ebpf.take_map(NIC_ADDRS))?,
            nic_addrs6: typed(NIC_ADDRS6, ebpf.take_map(NIC_ADDRS6))?,
            port_roles: typed(PORT_ROLES, ebpf.take_map(PORT_ROLES))?,
            rejects: typed(REJECTS, ebpf.take_map(REJECTS))?,
            labels: typed(FRONTEND_LABELS, ebpf.take_map(FRONTEND_LABELS))?,
        })
    }

    /// Opens the maps a running (or stopped) agent pinned under `pin_path`,
    /// to read: the Maglev tables are not taken over (see [`Opening`]).
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
            frontends6: typed(FRONTENDS6, open(FRONTENDS6)?)?,
            backends: typed(BACKEND_SLOTS, open(BACKEND_SLOTS)?)?,
            backends6: typed(BACKEND_SLOTS6, open(BACKEND_SLOTS6)?)?,
            maglev: maglev(open(MAGLEV_ARENA)?, open(MAGLEV_INDEX)?, Opening::Reader)?,
            stats: typed(STATS, open(STATS)?)?,
            sock_stats: typed(SOCK_STATS, open(SOCK_STATS)?)?,
            drops: typed(DROPS, open(DROPS)?)?,
            verdicts: typed(VERDICTS, open(VERDICTS)?)?,
            source_ranges: typed(SOURCE_RANGES, open(SOURCE_RANGES)?)?,
            source_ranges6: typed(SOURCE_RANGES6, open(SOURCE_RANGES6)?)?,
            nic_addrs: typed(NIC_ADDRS, open(NIC_ADDRS)?)?,
            nic_addrs6: typed(NIC_ADDRS6, open(NIC_ADDRS6)?)?,
            port_roles: typed(PORT_ROLES, open(PORT_ROLES)?)?,
            rejects: typed(REJECTS, open(REJECTS)?)?,
            labels: typed(FRONTEND_LABELS, open(FRONTEND_LABELS)?)?,
        })
    }

    /// The Maglev tables, to read one as the datapath does.
    pub fn tables(&self) -> &MaglevArena {
        &self.maglev
    }

    /// Everything the service maps of both families hold now.
    pub fn read_contents(&self) -> Result<MapContents, StoreError> {
        let mut contents = MapContents::default();
        for entry in self.frontends.iter() {
            let (k, v) = entry.map_err(store_error(FRONTENDS))?;
            contents.frontends.insert(FrontendMapKey::V4(k), v);
        }
        for entry in self.frontends6.iter() {
            let (k, v) = entry.map_err(store_error(FRONTENDS6))?;
            contents.frontends.insert(FrontendMapKey::V6(k), v);
        }
        self.each_backend(|id, backend| {
            // An id no agent hands out (none at or above the map's size)
            // is named by no table of ours: not mirrored, left alone.
            if id < proxy_common::sizes::MAX_BACKENDS {
                contents.backends.insert(id, backend);
            }
        })?;
        contents.tables = self.maglev.all().map_err(arena_error)?;
        // A key no agent wrote cannot be named for deletion; it also
        // matches no frontend of ours.
        for entry in self.source_ranges.iter() {
            let (k, _) = entry.map_err(store_error(SOURCE_RANGES))?;
            let data = k.data();
            let addr = addr_from_net(data.addr).into();
            if let Some(range) = range_entry(k.prefix_len(), data.frontend_id_be, addr) {
                contents.source_ranges.insert(range);
            }
        }
        for entry in self.source_ranges6.iter() {
            let (k, _) = entry.map_err(store_error(SOURCE_RANGES6))?;
            let data = k.data();
            let addr = addr6_from_net(data.addr).into();
            if let Some(range) = range_entry(k.prefix_len(), data.frontend_id_be, addr) {
                contents.source_ranges.insert(range);
            }
        }
        Ok(contents)
    }

    /// Hands each backend the arrays hold (their non-empty slots) to
    /// `each`: IPv4 ones first, then IPv6 ones.
    fn each_backend(&self, mut each: impl FnMut(u32, BackendMapValue)) -> Result<(), StoreError> {
        self.each_backend_of(Family::V4, &mut each)?;
        self.each_backend_of(Family::V6, &mut each)
    }

    /// Hands each backend of `family`'s array to `each`.
    fn each_backend_of(
        &self,
        family: Family,
        mut each: impl FnMut(u32, BackendMapValue),
    ) -> Result<(), StoreError> {
        let read = match family {
            Family::V4 => batch::read_each(&self.backends, |id, backend| {
                if backend.addr != 0 {
                    each(id, BackendMapValue::V4(backend));
                }
            }),
            Family::V6 => batch::read_each(&self.backends6, |id, backend| {
                if backend.addr != [0; 4] {
                    each(id, BackendMapValue::V6(backend));
                }
            }),
        };
        read.map_err(|e| StoreError {
            map: family.backends_pin(),
            reason: e.to_string(),
        })
    }

    /// The value of frontend `key`, if the map holds it.
    pub fn frontend(&self, key: &FrontendMapKey) -> Result<Option<FrontendValue>, StoreError> {
        let found = match key {
            FrontendMapKey::V4(key) => self.frontends.get(key, 0),
            FrontendMapKey::V6(key) => self.frontends6.get(key, 0),
        };
        match found {
            Ok(value) => Ok(Some(value)),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(store_error(FRONTENDS)(e)),
        }
    }

    /// Backend `id` of `family_v6`'s array, if its slot holds one.
    pub fn backend(&self, id: u32, family_v6: bool) -> Result<Option<BackendMapValue>, StoreError> {
        let held = if family_v6 {
            let value = self
                .backends6
                .get(&id, 0)
                .map_err(store_error(BACKEND_SLOTS6))?;
            (value.addr != [0; 4]).then_some(BackendMapValue::V6(value))
        } else {
            let value = self
                .backends
                .get(&id, 0)
                .map_err(store_error(BACKEND_SLOTS))?;
            (value.addr != 0).then_some(BackendMapValue::V4(value))
        };
        Ok(held)
    }

    /// Whether `loadBalancerSourceRanges` of frontend `frontend_id` admit
    /// `client`: the datapath's longest-prefix lookup.
    pub fn source_allowed(&self, frontend_id: u32, client: IpAddr) -> Result<bool, StoreError> {
        let entry = RangeEntry {
            frontend_id,
            cidr: IpCidr::host(client),
        };
        let found = match range_key(&entry) {
            RangeKey::V4(key) => self.source_ranges.get(&key, 0),
            RangeKey::V6(key) => self.source_ranges6.get(&key, 0),
        };
        match found {
            Ok(_) => Ok(true),
            Err(MapError::KeyNotFound) => Ok(false),
            Err(e) => Err(store_error(SOURCE_RANGES)(e)),
        }
    }

    /// What `NIC_ADDRS` and `NIC_ADDRS6` hold: ifindex → SNAT address.
    pub fn nic_addrs(&self) -> Result<NicAddrs, StoreError> {
        let mut addrs = NicAddrs::default();
        for entry in self.nic_addrs.iter() {
            let (index, addr) = entry.map_err(store_error(NIC_ADDRS))?;
            addrs.v4.insert(index, addr_from_net(addr));
        }
        for entry in self.nic_addrs6.iter() {
            let (index, addr) = entry.map_err(store_error(NIC_ADDRS6))?;
            addrs.v6.insert(index, addr6_from_net(addr));
        }
        Ok(addrs)
    }

    /// Sets the address NIC `ifindex` SNATs flows of `addr`'s family to.
    pub fn put_nic_addr(&mut self, ifindex: u32, addr: IpAddr) -> Result<(), StoreError> {
        match addr {
            IpAddr::V4(addr) => self
                .nic_addrs
                .insert(ifindex, addr_to_net(addr), 0)
                .map_err(store_error(NIC_ADDRS)),
            IpAddr::V6(addr) => self
                .nic_addrs6
                .insert(ifindex, addr6_to_net(addr), 0)
                .map_err(store_error(NIC_ADDRS6)),
        }
    }

    /// Removes NIC `ifindex`'s SNAT address of one family (`v6`: IPv6's).
    pub fn delete_nic_addr(&mut self, ifindex: u32, v6: bool) -> Result<(), StoreError> {
        if v6 {
            self.nic_addrs6
                .remove(&ifindex)
                .map_err(store_error(NIC_ADDRS6))
        } else {
            self.nic_addrs
                .remove(&ifindex)
                .map_err(store_error(NIC_ADDRS))
        }
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

    /// Packets and sockets of a frontend refused (no endpoints).
    pub fn frontend_rejects(&self, frontend_id: u32) -> Result<u64, StoreError> {
        self.rejects
            .get(&frontend_id, 0)
            .map_err(store_error(REJECTS))
    }

    /// The Service of a frontend, if the agent labelled it.
    pub fn frontend_label(&self, frontend_id: u32) -> Result<Option<FrontendLabel>, StoreError> {
        match self.labels.get(&frontend_id, 0) {
            Ok(label) => Ok(Some(label)),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(store_error(FRONTEND_LABELS)(e)),
        }
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

    /// Entries of the agent-written map `name` (one of `AGENT_WRITTEN`),
    /// counted up to `cap`; `None` for another map.
    pub fn count(&self, name: &str, cap: u32) -> Option<Result<Count, StoreError>> {
        let (map, counted) = match name {
            FRONTENDS => (FRONTENDS, count_keys(self.frontends.keys(), cap)),
            FRONTENDS6 => (FRONTENDS6, count_keys(self.frontends6.keys(), cap)),
            BACKENDS | BACKENDS6 => {
                let family = if name == BACKENDS {
                    Family::V4
                } else {
                    Family::V6
                };
                let mut held = 0u32;
                if let Err(e) = self.each_backend_of(family, |_, _| held += 1) {
                    return Some(Err(e));
                }
                return Some(Ok(Count {
                    entries: held.min(cap),
                    complete: held <= cap,
                }));
            }
            SOURCE_RANGES => (SOURCE_RANGES, count_keys(self.source_ranges.keys(), cap)),
            SOURCE_RANGES6 => (SOURCE_RANGES6, count_keys(self.source_ranges6.keys(), cap)),
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

/// An address family, for the maps that come in one per family.
#[derive(Clone, Copy)]
enum Family {
    V4,
    V6,
}

impl Family {
    fn backends_pin(self) -> &'static str {
        match self {
            Self::V4 => BACKEND_SLOTS,
            Self::V6 => BACKEND_SLOTS6,
        }
    }
}

impl MapStore for BpfMaps {
    fn put_backends(&mut self, entries: &[(u32, BackendMapValue)]) -> Vec<(u32, StoreError)> {
        // Each family's array in batches of its own.
        let mut v4 = Vec::new();
        let mut v6 = Vec::new();
        for (id, value) in entries {
            match value {
                BackendMapValue::V4(value) => v4.push((*id, *value)),
                BackendMapValue::V6(value) => v6.push((*id, *value)),
            }
        }
        let mut failed = batch::put_all_indexed(&mut self.backends, BACKEND_SLOTS, &v4);
        if !v6.is_empty() {
            failed.extend(batch::put_all_indexed(
                &mut self.backends6,
                BACKEND_SLOTS6,
                &v6,
            ));
        }
        failed
    }
    fn delete_backend(&mut self, id: u32, held: &BackendMapValue) -> Result<(), StoreError> {
        // An empty slot is no backend.
        match held {
            BackendMapValue::V4(_) => self
                .backends
                .set(id, BackendValue::default(), 0)
                .map_err(store_error(BACKEND_SLOTS)),
            BackendMapValue::V6(_) => self
                .backends6
                .set(id, BackendValue6::default(), 0)
                .map_err(store_error(BACKEND_SLOTS6)),
        }
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
        entries: &[(FrontendMapKey, FrontendValue)],
    ) -> Vec<(FrontendMapKey, StoreError)> {
        // Each family's map in batches of its own.
        let mut v4 = Vec::new();
        let mut v6 = Vec::new();
        for (key, value) in entries {
            match key {
                FrontendMapKey::V4(key) => v4.push((*key, *value)),
                FrontendMapKey::V6(key) => v6.push((*key, *value)),
            }
        }
        let failed4 = batch::put_all(&mut self.frontends, FRONTENDS, &v4);
        let failed6 = if v6.is_empty() {
            Vec::new()
        } else {
            batch::put_all(&mut self.frontends6, FRONTENDS6, &v6)
        };
        let failed4 = failed4.into_iter().map(|(k, e)| (FrontendMapKey::V4(k), e));
        let failed6 = failed6.into_iter().map(|(k, e)| (FrontendMapKey::V6(k), e));
        failed4.chain(failed6).collect()
    }
    fn delete_frontend(&mut self, key: &FrontendMapKey) -> Result<(), StoreError> {
        match key {
            FrontendMapKey::V4(key) => self.frontends.remove(key).map_err(store_error(FRONTENDS)),
            FrontendMapKey::V6(key) => self.frontends6.remove(key).map_err(store_error(FRONTENDS6)),
        }
    }
    fn put_labels(&mut self, labels: &[(u32, FrontendLabel)]) -> Vec<(u32, StoreError)> {
        batch::put_all(&mut self.labels, FRONTEND_LABELS, labels)
    }
    fn delete_label(&mut self, frontend_id: u32) -> Result<(), StoreError> {
        match self.labels.remove(&frontend_id) {
            Err(MapError::SyscallError(e)) if e.io_error.kind() == std::io::ErrorKind::NotFound => {
                Ok(())
            }
            done => done.map_err(store_error(FRONTEND_LABELS)),
        }
    }
    fn put_source_range(&mut self, entry: &RangeEntry) -> Result<(), StoreError> {
        match range_key(entry) {
            RangeKey::V4(key) => self
                .source_ranges
                .insert(&key, 1, 0)
                .map_err(store_error(SOURCE_RANGES)),
            RangeKey::V6(key) => self
                .source_ranges6
                .insert(&key, 1, 0)
                .map_err(store_error(SOURCE_RANGES6)),
        }
    }
    fn delete_source_range(&mut self, entry: &RangeEntry) -> Result<(), StoreError> {
        match range_key(entry) {
            RangeKey::V4(key) => self
                .source_ranges
                .remove(&key)
                .map_err(store_error(SOURCE_RANGES)),
            RangeKey::V6(key) => self
                .source_ranges6
                .remove(&key)
                .map_err(store_error(SOURCE_RANGES6)),
        }
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
        let zeros: Vec<(u32, u64)> = frontend_ids.iter().map(|id| (*id, 0)).collect();
        failed.extend(batch::put_all_indexed(&mut self.rejects, REJECTS, &zeros));
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
        let RangeKey::V4(key) = range_key(&entry) else {
            panic!("an IPv4 range in the IPv4 trie");
        };
        assert_eq!(key.prefix_len(), 56);
        let data = key.data();
        let bytes: Vec<u8> = bytemuck::bytes_of(&data).to_vec();
        assert_eq!(
            bytes,
            [1, 2, 3, 4, 203, 0, 113, 0],
            "big-endian id, then the address"
        );
        let addr = addr_from_net(data.addr).into();
        assert_eq!(
            range_entry(key.prefix_len(), data.frontend_id_be, addr),
            Some(entry)
        );
        assert_eq!(
            range_entry(8, data.frontend_id_be, addr),
            None,
            "shorter than an id"
        );
    }

    #[test]
    fn ipv6_range_keys_go_to_their_own_trie_and_round_trip() {
        let entry = RangeEntry {
            frontend_id: 7,
            cidr: "fd00:203::/32".parse().unwrap(),
        };
        let RangeKey::V6(key) = range_key(&entry) else {
            panic!("an IPv6 range in the IPv6 trie");
        };
        // 32 bits of frontend id, then the CIDR's 32.
        assert_eq!(key.prefix_len(), 64);
        let data = key.data();
        let bytes: Vec<u8> = bytemuck::bytes_of(&data).to_vec();
        assert_eq!(bytes[..8], [0, 0, 0, 7, 0xfd, 0, 2, 3]);
        assert!(bytes[8..].iter().all(|b| *b == 0));
        let addr = addr6_from_net(data.addr).into();
        assert_eq!(
            range_entry(key.prefix_len(), data.frontend_id_be, addr),
            Some(entry)
        );
        assert_eq!(range_entry(32 + 129, data.frontend_id_be, addr), None);
    }

    #[test]
    fn the_pinned_layout_lists_the_node_frontend_maps_and_the_ipv6_maps() {
        let sizes: Vec<(&str, usize, usize)> = ALL
            .iter()
            .map(|m| (m.name, m.key_size, m.value_size))
            .collect();
        assert!(sizes.contains(&(SOURCE_RANGES, 12, 1)), "{sizes:?}");
        assert!(sizes.contains(&(SOURCE_RANGES6, 24, 1)));
        assert!(sizes.contains(&(FRONTENDS6, 20, 16)));
        assert!(sizes.contains(&(BACKEND_SLOTS6, 4, 20)));
        assert!(sizes.contains(&(NIC_ADDRS, 4, 4)));
        assert!(sizes.contains(&(NIC_ADDRS6, 4, 16)));
        assert!(sizes.contains(&(VERDICTS, 4, 8)));
        assert!(sizes.contains(&("SOCK_REVNAT", 16, 8)));
    }
}
