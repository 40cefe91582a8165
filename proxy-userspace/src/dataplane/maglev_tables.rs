//! The frontends' Maglev tables in `MAGLEV`, an array of maps indexed by
//! frontend id. A table is a separate BPF array sized for its frontend.
//!
//! Changing a table: when the new one has the same size M and the old one
//! has room for its members, its entries are rewritten in place, in two
//! ordered passes (see [`rewrite_in_place`]). Otherwise the new table is
//! built beside the old one and swapped in whole with an update of the
//! outer array, so a packet sees either table, never a mix of sizes.
//! The kernel waits for running programs (an RCU grace period) after
//! updating an array of maps: since Linux 6.8 once per batch update, before
//! it once per element. So swaps and removals are queued and done in one
//! batch update by [`MaglevTables::commit`] (or earlier, when too many new
//! tables wait). Arrays of maps have no batch delete, so a removed table is
//! replaced by one shared empty table (size 0), which the datapath never
//! reads: a frontend without backends is rejected before its table is
//! looked at.
//!
//! The agent never reads `MAGLEV` itself: before Linux 6.8 a lookup in an
//! array of maps from userspace waits for a grace period as well, so
//! reading back its 65,536 slots took minutes (hours under emulation). It
//! records each slot's table by kernel id in `MAGLEV_IDS`, a plain array,
//! and opens tables by id. The record is written before the outer array,
//! so a recorded table that never got into its slot (a failed commit, an
//! agent killed in between) was held only by the agent's descriptor: it is
//! gone, and read as no table, which the next write replaces.
//!
//! Layout (`proxy_common::maps::maglev_layout`): 64-bit entries, because an
//! array spends 8 bytes per entry whatever its value size. Entry 0 holds M
//! and the member capacity C; then C member backend ids, two per entry; then
//! the M slots as 16-bit member indexes, four per entry. At 100 slots per
//! backend a table of 10 backends (M = 1021) takes 262 entries, 2 KiB,
//! where one backend id per entry would take 8 KiB.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    io,
    os::fd::{AsFd, AsRawFd, BorrowedFd},
};

use aya::maps::{Array, ArrayOfMaps, Map, MapData, MapError, MapInfo, MapType};
use proxy_common::maps::{maglev_layout, MAGLEV_TABLE_FLAGS};

use super::bpf_syscall;
use crate::sync::store::{TableSpec, TableWrite};

/// Name of the outer map in the object and under the pin path.
pub const MAGLEV: &str = "MAGLEV";
/// Name of the record of the tables in `MAGLEV`'s slots.
pub const MAGLEV_IDS: &str = "MAGLEV_IDS";

/// New tables that may wait for a commit, each with an open descriptor:
/// half the usual 1024 soft limit (the agent raises it where it can), and
/// 59 commits for 30,000 tables.
const MAX_WAITING: usize = 512;

/// Member positions a 16-bit slot can name.
const MAX_MEMBERS: usize = 1 << 16;

/// Slots per member a new table leaves room for: the size class's own
/// ratio, so backends can be added in place until the table would grow.
const SLOTS_PER_MEMBER: u32 = 100;

#[derive(Debug, thiserror::Error)]
pub enum TableError {
    #[error("{0}")]
    Map(#[from] MapError),
    #[error("{what}: {error}")]
    Io {
        what: &'static str,
        #[source]
        error: io::Error,
    },
    #[error("a table of {0} slots cannot be stored (at most 65535 backends, 65521 slots)")]
    TooLarge(usize),
    #[error("table of frontend id {0} is malformed")]
    Malformed(u32),
    #[error("an earlier commit of waiting tables failed: {0}")]
    EarlierCommit(String),
}

fn io_error(what: &'static str) -> impl FnOnce(io::Error) -> TableError {
    move |error| TableError::Io { what, error }
}

/// A member position no backend holds.
const UNUSED: u32 = u32::MAX;

/// Where each backend of `slots` sits among `capacity` member positions:
/// where it sat in `previous` (the live table's members) if it is still
/// there, so a remaining backend keeps its index (session affinity checks
/// membership by it), new ones in the first free positions. `None` when
/// they do not fit.
fn member_positions(slots: &[u32], capacity: u32, previous: &[u32]) -> Option<Vec<u32>> {
    let wanted: HashSet<u32> = slots.iter().copied().collect();
    let mut positions = vec![UNUSED; capacity as usize];
    let mut placed = HashSet::new();
    for (position, id) in positions.iter_mut().zip(previous) {
        if wanted.contains(id) && placed.insert(*id) {
            *position = *id;
        }
    }
    let mut newcomers: Vec<u32> = wanted.difference(&placed).copied().collect();
    newcomers.sort_unstable();
    let mut free = positions.iter_mut().filter(|p| **p == UNUSED);
    for id in newcomers {
        *free.next()? = id;
    }
    Some(positions)
}

/// The entries of a table holding `slots` (slot → backend id) with room for
/// `capacity` members, keeping the positions of `previous` members; `None`
/// when they do not fit.
pub fn encode(slots: &[u32], capacity: u32, previous: &[u32]) -> Option<Vec<u64>> {
    let size = u32::try_from(slots.len()).ok()?;
    if capacity > u32::from(u16::MAX) + 1 {
        return None;
    }
    let members = member_positions(slots, capacity, previous)?;
    let index: HashMap<u32, u64> = (0u64..).zip(&members).map(|(i, id)| (*id, i)).collect();
    let mut entries = vec![u64::from(size) | u64::from(capacity) << 32];
    entries.resize(maglev_layout::slots_start(capacity) as usize, 0);
    set_members(&mut entries, &members);
    entries.extend(slots.chunks(4).map(|lanes| {
        lanes
            .iter()
            .enumerate()
            .fold(0, |e, (lane, id)| e | index[id] << (16 * lane))
    }));
    debug_assert_eq!(entries.len() as u32, maglev_layout::entries(size, capacity));
    Some(entries)
}

/// The member positions of a table's entries (`UNUSED` where free); `None`
/// when they are not a table.
fn members_in(entries: &[u64]) -> Option<Vec<u32>> {
    let header = *entries.first()?;
    let (size, capacity) = (header as u32, (header >> 32) as u32);
    if entries.len() as u32 != maglev_layout::entries(size, capacity) {
        return None;
    }
    let start = maglev_layout::MEMBERS_START as usize;
    Some(
        (0..capacity as usize)
            .map(|index| (entries[start + index / 2] >> (32 * (index % 2))) as u32)
            .collect(),
    )
}

/// The slots a table's entries hold; `None` when they are not a table.
pub fn decode(entries: &[u64]) -> Option<Vec<u32>> {
    let members = members_in(entries)?;
    let size = entries[0] as u32;
    let slots_start = maglev_layout::slots_start(members.len() as u32) as usize;
    (0..size as usize)
        .map(|slot| {
            let index = (entries[slots_start + slot / 4] >> (16 * (slot % 4))) & 0xffff;
            members
                .get(index as usize)
                .copied()
                .filter(|id| *id != UNUSED)
        })
        .collect()
}

/// `MAGLEV`, read and written.
pub struct MaglevTables {
    /// Kept untyped: batch updates need the map's own fd, which
    /// `ArrayOfMaps` does not give; typed views are made per call.
    outer: Map,
    /// `MAGLEV_IDS`: slot → kernel id of its table, 0 for none.
    record: Map,
    /// New tables waiting for [`Self::commit`], by frontend id.
    swaps: BTreeMap<u32, MapData>,
    /// Service ids whose table [`Self::commit`] removes.
    removals: Vec<u32>,
    /// The table removed ones are replaced by, made on first use.
    empty: Option<MapData>,
    /// Why an early commit (too many tables waiting) failed: reported by
    /// the next [`Self::commit`], which the sync checks.
    failed_early: Option<String>,
    /// Whether the kernel takes batch updates of an array of maps (5.10
    /// does not): otherwise a commit updates slot by slot.
    outer_batches: bool,
}

impl MaglevTables {
    /// Checks `outer` is the array of maps `MAGLEV` is and `record` the
    /// array `MAGLEV_IDS` is.
    pub fn new(outer: Map, record: Map) -> Result<Self, MapError> {
        ArrayOfMaps::<&MapData, MapData>::try_from(&outer)?;
        Array::<&MapData, u32>::try_from(&record)?;
        let outer_batches = fd_of(&outer).is_ok_and(takes_batch_updates);
        Ok(Self {
            outer,
            record,
            swaps: BTreeMap::new(),
            removals: Vec::new(),
            empty: None,
            failed_early: None,
            outer_batches,
        })
    }

    /// Makes `slots` (slot → backend id, not empty) the table of
    /// `frontend_id`: in place at once when the live table has the same size
    /// and room for the members, otherwise at the next [`Self::commit`].
    pub fn put(&mut self, frontend_id: u32, slots: &[u32]) -> Result<TableWrite, TableError> {
        self.removals.retain(|id| *id != frontend_id);
        let size = slots.len();
        let live = self.live(frontend_id)?;
        // A live table this version cannot read is replaced, not rewritten.
        let live =
            live.and_then(|(table, entries)| Some((table, members_in(&entries)?, entries[0])));
        let previous = live
            .as_ref()
            .map(|(_, members, _)| members.clone())
            .unwrap_or_default();
        if let Some((table, _, header)) = &live {
            let (live_size, capacity) = (*header as u32, (*header >> 32) as u32);
            let fits = encode(slots, capacity, &previous);
            if let (false, true, Some(entries)) = (
                self.swaps.contains_key(&frontend_id),
                live_size as usize == size,
                fits,
            ) {
                rewrite_in_place(table.fd().as_fd(), entries, &previous)
                    .map_err(io_error("rewriting a table"))?;
                return Ok(TableWrite::InPlace);
            }
        }
        let wanted: HashSet<u32> = slots.iter().copied().collect();
        // Room for the size class, and for every remaining backend to keep
        // its position (affinity checks membership by it).
        let kept_end = previous
            .iter()
            .rposition(|id| wanted.contains(id))
            .map_or(0, |p| p + 1);
        let room = (size / SLOTS_PER_MEMBER as usize)
            .max(wanted.len())
            .max(kept_end)
            .min(MAX_MEMBERS) as u32;
        let entries = encode(slots, room, &previous).ok_or(TableError::TooLarge(size))?;
        self.swaps.insert(frontend_id, new_table(entries)?);
        // Each waiting table holds a file descriptor: past a bound, commit
        // early (still before any service entry can point at them).
        if self.swaps.len() >= MAX_WAITING {
            if let Err(e) = self.commit() {
                self.failed_early.get_or_insert(e.to_string());
            }
        }
        Ok(TableWrite::Queued)
    }

    /// Removes the table of `frontend_id` at the next [`Self::commit`].
    pub fn delete(&mut self, frontend_id: u32) {
        self.swaps.remove(&frontend_id);
        self.removals.push(frontend_id);
    }

    /// Swaps in the new tables and replaces the removed ones by the empty
    /// table: one batch update of the outer array, so one wait for running
    /// programs (Linux ≥ 6.8); one update per slot where the kernel has no
    /// batch updates of arrays of maps. The queue is emptied even on
    /// failure; a failure may leave part of the batch applied. An early
    /// commit's failure is reported here too.
    pub fn commit(&mut self) -> Result<(), TableError> {
        if let Some(e) = self.failed_early.take() {
            self.swaps.clear();
            self.removals.clear();
            return Err(TableError::EarlierCommit(e));
        }
        let swaps = std::mem::take(&mut self.swaps);
        let removals = std::mem::take(&mut self.removals);
        if swaps.is_empty() && removals.is_empty() {
            return Ok(());
        }
        if !removals.is_empty() && self.empty.is_none() {
            self.empty = Some(new_table(vec![0])?);
        }
        // An array of maps takes inner map fds as values.
        let fd = |table: &MapData| table.fd().as_fd().as_raw_fd() as u32;
        let mut keys: Vec<u32> = swaps.keys().copied().collect();
        let mut fds: Vec<u32> = swaps.values().map(fd).collect();
        let mut ids = swaps
            .values()
            .map(|table| Ok(table.info()?.id()))
            .collect::<Result<Vec<u32>, MapError>>()?;
        if let Some(empty) = &self.empty {
            keys.extend(&removals);
            fds.extend(removals.iter().map(|_| fd(empty)));
            ids.extend(removals.iter().map(|_| 0));
        }
        // Recorded first (module comment).
        batch_call(
            BatchOp::Update,
            fd_of(&self.record)?,
            &mut keys.clone(),
            &mut ids,
        )
        .map_err(io_error("recording tables"))?;
        let outer = fd_of(&self.outer)?;
        if self.outer_batches {
            return batch_call(BatchOp::Update, outer, &mut keys, &mut fds)
                .map_err(io_error("swapping tables"));
        }
        for (key, fd) in keys.iter().zip(&fds) {
            // SAFETY: `MAGLEV` is an array of maps: `u32` keys, inner map
            // descriptors (`u32`) as values.
            unsafe { bpf_syscall::map_update_elem(outer, key, fd) }
                .map_err(io_error("swapping tables"))?;
        }
        Ok(())
    }

    /// The live table of `frontend_id` and its entries.
    fn live(&self, frontend_id: u32) -> Result<Option<(MapData, Vec<u64>)>, TableError> {
        let record = Array::<&MapData, u32>::try_from(&self.record)?;
        recorded_table(record.get(&frontend_id, 0)?)
    }

    /// The slots of `frontend_id`'s live table, if it has one.
    pub fn get(&self, frontend_id: u32) -> Result<Option<Vec<u32>>, TableError> {
        slots_of(frontend_id, self.live(frontend_id)?)
    }

    /// What every live table holds, by frontend id. One this version cannot
    /// read is left out (logged): the next sync replaces it.
    pub fn all(&self) -> Result<BTreeMap<u32, TableSpec>, TableError> {
        let len = Array::<&MapData, u32>::try_from(&self.record)?.len();
        let mut frontend_ids: Vec<u32> = (0..len).collect();
        let mut ids = vec![0u32; frontend_ids.len()];
        batch_call(
            BatchOp::Lookup,
            fd_of(&self.record)?,
            &mut frontend_ids,
            &mut ids,
        )
        .map_err(io_error("reading the table record"))?;
        let mut tables = BTreeMap::new();
        for (frontend_id, id) in frontend_ids.into_iter().zip(ids) {
            match recorded_table(id).and_then(|live| slots_of(frontend_id, live)) {
                Ok(Some(slots)) => {
                    tables.insert(frontend_id, TableSpec::of(&slots));
                }
                Ok(None) => {}
                Err(e @ TableError::Malformed(_)) => {
                    tracing::warn!(error = %e, "ignoring a Maglev table; it will be rebuilt");
                }
                Err(e) => return Err(e),
            }
        }
        Ok(tables)
    }
}

/// The fd of an array (outer or plain), which batch calls need and aya's
/// typed maps do not give.
fn fd_of(map: &Map) -> Result<BorrowedFd<'_>, TableError> {
    match map {
        Map::ArrayOfMaps(data) | Map::Array(data) => Ok(data.fd().as_fd()),
        _ => Err(MapError::InvalidMapType { map_type: 0 }.into()),
    }
}

/// Whether `info` describes a table as [`new_table`] makes them (a
/// recorded id may, rarely, have been given to another map since).
fn is_table(info: &MapInfo) -> bool {
    matches!(info.map_type(), Ok(MapType::Array))
        && info.key_size() as usize == size_of::<u32>()
        && info.value_size() as usize == size_of::<u64>()
        && info.map_flags() == MAGLEV_TABLE_FLAGS
}

/// The table recorded by kernel id `id` (0: none) and its entries; none
/// when it is gone (module comment).
fn recorded_table(id: u32) -> Result<Option<(MapData, Vec<u64>)>, TableError> {
    if id == 0 {
        return Ok(None);
    }
    let table = match MapData::from_id(id) {
        Ok(table) => table,
        Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => {
            return Ok(None)
        }
        Err(e) => return Err(e.into()),
    };
    let info = table.info()?;
    if !is_table(&info) {
        return Ok(None);
    }
    let mut entries = vec![0u64; info.max_entries() as usize];
    batch(BatchOp::Lookup, table.fd().as_fd(), &mut entries)
        .map_err(io_error("reading a table"))?;
    Ok(Some((table, entries)))
}

/// The slots of a live table of `frontend_id`; none for the shared empty
/// table of a removed one.
fn slots_of(
    frontend_id: u32,
    live: Option<(MapData, Vec<u64>)>,
) -> Result<Option<Vec<u32>>, TableError> {
    let Some((_, entries)) = live else {
        return Ok(None);
    };
    match decode(&entries) {
        Some(slots) if slots.is_empty() => Ok(None),
        Some(slots) => Ok(Some(slots)),
        None => Err(TableError::Malformed(frontend_id)),
    }
}

/// Rewrites a live table whose new `entries` keep its size and capacity.
/// A batch update writes entries in key order (header, members, slots), and
/// programs read the table meanwhile. So the first pass writes the members
/// with each position a leaving backend held kept as it was (that backend
/// is still in `backends` until the sync ends), then the new slots, which
/// name only new members; the second pass clears the leaving ones, which no
/// slot names any more. So a new flow almost always finds a live backend;
/// the rare one that reads a slot before the first pass and its member
/// after the second (no grace period between them) is dropped, counted as
/// `STALE_SELECTION`, and its retransmission chooses again.
fn rewrite_in_place(
    table: BorrowedFd<'_>,
    mut entries: Vec<u64>,
    previous: &[u32],
) -> io::Result<()> {
    let members = members_in(&entries).unwrap_or_default();
    let mut first = entries.clone();
    set_members(&mut first, &interim_members(&members, previous));
    batch(BatchOp::Update, table, &mut first)?;
    if first != entries {
        batch(BatchOp::Update, table, &mut entries)?;
    }
    Ok(())
}

/// The members while a table is rewritten: the new ones, and where a
/// position is left free, the backend that held it before.
fn interim_members(new: &[u32], previous: &[u32]) -> Vec<u32> {
    new.iter()
        .zip(previous.iter().chain(std::iter::repeat(&UNUSED)))
        .map(|(new, old)| if *new == UNUSED { *old } else { *new })
        .collect()
}

/// Writes `members` (one per position) into a table's member entries.
fn set_members(entries: &mut [u64], members: &[u32]) {
    let start = maglev_layout::MEMBERS_START as usize;
    for (entry, pair) in entries[start..].iter_mut().zip(members.chunks(2)) {
        *entry = pair
            .iter()
            .enumerate()
            .fold(0, |e, (lane, id)| e | u64::from(*id) << (32 * lane));
    }
}

/// A new table holding `entries`, not yet in the outer array.
fn new_table(mut entries: Vec<u64>) -> Result<MapData, TableError> {
    let table = MapData::create(
        aya_obj::Map::new_from_params(
            aya_obj::generated::bpf_map_type::BPF_MAP_TYPE_ARRAY as u32,
            size_of::<u32>() as u32,
            size_of::<u64>() as u32,
            entries.len() as u32,
            MAGLEV_TABLE_FLAGS,
        ),
        "kxdp_maglev",
        None,
    )?;
    batch(BatchOp::Update, table.fd().as_fd(), &mut entries)
        .map_err(io_error("filling a new table"))?;
    Ok(table)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum BatchOp {
    Lookup,
    Update,
}

/// One batch command on `map` for `keys` and `values` of the same count;
/// fails unless every key was handled. `V` is the map's value size: every
/// caller here passes `u64` entries for a table, `u32` ids for
/// `MAGLEV_IDS`, `u32` descriptors for `MAGLEV`, or nothing at all.
fn batch_call<V>(
    op: BatchOp,
    map: BorrowedFd<'_>,
    keys: &mut [u32],
    values: &mut [V],
) -> io::Result<()> {
    // SAFETY: the maps here are arrays (`u32` keys) of values of `V`'s size
    // (above).
    let handled = unsafe {
        match op {
            BatchOp::Lookup => bpf_syscall::map_lookup_batch(map, keys, values),
            BatchOp::Update => bpf_syscall::map_update_batch(map, keys, values),
        }
    }?;
    if handled != keys.len() {
        return Err(io::Error::other(format!(
            "batch handled {handled} of {} entries",
            keys.len()
        )));
    }
    Ok(())
}

/// Whether `map` takes batch updates: an empty one fails with ENOTSUPP on
/// kernels without them for its type, and does nothing otherwise.
pub fn takes_batch_updates(map: BorrowedFd<'_>) -> bool {
    batch_call::<u32>(BatchOp::Update, map, &mut [], &mut []).is_ok()
}

/// Writes `entries` to, or reads them from, table `map` at keys 0.. in one call.
fn batch(op: BatchOp, map: BorrowedFd<'_>, entries: &mut [u64]) -> io::Result<()> {
    let mut keys: Vec<u32> = (0..entries.len() as u32).collect();
    batch_call(op, map, &mut keys, entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_table_survives_encoding_and_takes_two_bytes_a_slot() {
        let slots: Vec<u32> = (0..1021).map(|s| 500_000 + (s * 7) % 10).collect();
        let entries = encode(&slots, 10, &[]).unwrap();
        assert_eq!(entries.len(), 1 + 5 + 256);
        assert_eq!(entries[0], 1021 | 10 << 32);
        assert_eq!(
            entries[1],
            500_000 | 500_001 << 32,
            "new members in id order"
        );
        assert_eq!(decode(&entries).unwrap(), slots);
        let odd: Vec<u32> = vec![7, 9, 7, 3, 3];
        assert_eq!(decode(&encode(&odd, 3, &[]).unwrap()).unwrap(), odd);
        // Room for more members: the same slots, a longer member list.
        assert_eq!(decode(&encode(&odd, 8, &[]).unwrap()).unwrap(), odd);
        assert!(
            encode(&odd, 2, &[]).is_none(),
            "three members need room for three"
        );
    }

    #[test]
    fn remaining_members_keep_their_positions_and_newcomers_fill_gaps() {
        let before = encode(&[1, 2, 3, 1], 5, &[]).unwrap();
        let previous = members_in(&before).unwrap();
        assert_eq!(previous, [1, 2, 3, UNUSED, UNUSED]);
        // 2 leaves, 9 and 0 come: 1 and 3 stay put, the newcomers take the
        // free positions in id order.
        let after = encode(&[9, 3, 1, 0], 5, &previous).unwrap();
        assert_eq!(members_in(&after).unwrap(), [1, 0, 3, 9, UNUSED]);
        assert_eq!(decode(&after).unwrap(), [9, 3, 1, 0]);
        // A smaller table keeps the positions that still exist.
        let smaller = encode(&[3, 1], 2, &[1, 2, 3]).unwrap();
        assert_eq!(members_in(&smaller).unwrap(), [1, 3]);
    }

    #[test]
    fn a_rewrite_keeps_a_leaving_backend_where_no_newcomer_takes_its_place() {
        assert_eq!(
            interim_members(&[1, UNUSED, 3, UNUSED], &[1, 2, 3]),
            [1, 2, 3, UNUSED]
        );
        // A newcomer in a leaving backend's place: both are live meanwhile.
        assert_eq!(interim_members(&[1, 9, 3], &[1, 2, 3]), [1, 9, 3]);
    }

    #[test]
    fn entries_that_are_not_a_table_are_refused() {
        let entries = encode(&[1, 2, 3], 4, &[]).unwrap();
        assert!(decode(&entries[..entries.len() - 1]).is_none());
        assert!(decode(&[]).is_none());
        let mut unused_member = entries.clone();
        let last = unused_member.len() - 1;
        unused_member[last] = 3; // slot 0 names the free fourth position
        assert!(decode(&unused_member).is_none());
    }
}
