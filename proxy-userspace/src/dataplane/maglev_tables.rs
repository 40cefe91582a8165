//! The frontends' Maglev tables in `MAGLEV`, an array of maps indexed by
//! service id. A table is a separate BPF array sized for its frontend,
//! created whole, filled with one batch update and swapped in with one
//! update of the outer array: a packet sees the old table or the new one,
//! never a mix, whatever their sizes. The kernel frees the old table once no
//! program uses it.
//!
//! Layout (`proxy_common::maps::MAGLEV_*`): 64-bit entries, because an array
//! spends 8 bytes per entry whatever its value size. Entry 0 holds M and the
//! member count N; then the N member backend ids, two per entry; then the M
//! slots as 16-bit member indexes, four per entry. At 100 slots per backend
//! a table of 10 backends (M = 1021) takes 262 entries, 2 KiB, where one
//! backend id per entry would take 8 KiB.

use std::{
    collections::BTreeMap,
    io,
    os::fd::{AsFd, AsRawFd, BorrowedFd},
};

use aya::maps::{ArrayOfMaps, Map, MapData, MapError};
use proxy_common::maps::{maglev_layout, MAGLEV_TABLE_FLAGS};

/// Name of the outer map in the object and under the pin path.
pub const MAGLEV: &str = "MAGLEV";

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
    #[error("table of service id {0} is malformed")]
    Malformed(u32),
}

fn io_error(what: &'static str) -> impl FnOnce(io::Error) -> TableError {
    move |error| TableError::Io { what, error }
}

/// The entries of the table holding `slots` (slot → backend id).
pub fn encode(slots: &[u32]) -> Option<Vec<u64>> {
    let members: Vec<u32> = {
        let mut ids = slots.to_vec();
        ids.sort_unstable();
        ids.dedup();
        ids
    };
    let size = u32::try_from(slots.len()).ok()?;
    let count = u16::try_from(members.len()).ok()?;
    let index: BTreeMap<u32, u64> = (0u64..)
        .zip(members.iter().copied())
        .map(|(i, id)| (id, i))
        .collect();
    let mut entries = vec![u64::from(size) | u64::from(count) << 32];
    entries.extend(members.chunks(2).map(|pair| {
        pair.iter()
            .enumerate()
            .fold(0, |e, (lane, id)| e | u64::from(*id) << (32 * lane))
    }));
    entries.extend(slots.chunks(4).map(|lanes| {
        lanes
            .iter()
            .enumerate()
            .fold(0, |e, (lane, id)| e | index[id] << (16 * lane))
    }));
    debug_assert_eq!(
        entries.len() as u32,
        maglev_layout::entries(size, u32::from(count))
    );
    Some(entries)
}

/// The slots a table's entries hold; `None` when they are not a table.
pub fn decode(entries: &[u64]) -> Option<Vec<u32>> {
    let header = *entries.first()?;
    let (size, count) = (header as u32, (header >> 32) as u32);
    if entries.len() as u32 != maglev_layout::entries(size, count) {
        return None;
    }
    let member = |index: u32| {
        (index < count).then(|| {
            let entry = entries[(maglev_layout::MEMBERS_START + index / 2) as usize];
            (entry >> (32 * (index % 2))) as u32
        })
    };
    let slots_start = maglev_layout::slots_start(count);
    (0..size)
        .map(|slot| {
            let entry = entries[(slots_start + slot / 4) as usize];
            member(((entry >> (16 * (slot % 4))) & 0xffff) as u32)
        })
        .collect()
}

/// `MAGLEV`, read and written.
pub struct MaglevTables {
    /// Kept untyped: `ArrayOfMaps` has no removal, so `delete` needs the
    /// map's own fd; typed views are made per call.
    outer: Map,
}

impl MaglevTables {
    /// Checks `outer` is the array of maps `MAGLEV` is.
    pub fn new(outer: Map) -> Result<Self, MapError> {
        ArrayOfMaps::<&MapData, MapData>::try_from(&outer)?;
        Ok(Self { outer })
    }

    /// Makes `slots` (slot → backend id, not empty) the table of `service_id`.
    pub fn put(&mut self, service_id: u32, slots: &[u32]) -> Result<(), TableError> {
        let entries = encode(slots).ok_or(TableError::TooLarge(slots.len()))?;
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
        batch(BatchOp::Update, table.fd().as_fd(), &mut entries.clone())
            .map_err(io_error("filling a new table"))?;
        ArrayOfMaps::<&mut MapData, MapData>::try_from(&mut self.outer)?
            .set(service_id, &table, 0)?;
        Ok(())
    }

    /// Removes the table of `service_id`; a missing one is not an error.
    pub fn delete(&mut self, service_id: u32) -> Result<(), TableError> {
        delete_elem(self.outer_fd()?, service_id).map_err(io_error("deleting a table"))
    }

    /// The slots of `service_id`'s table, if it has one.
    pub fn get(&self, service_id: u32) -> Result<Option<Vec<u32>>, TableError> {
        let outer = ArrayOfMaps::<&MapData, MapData>::try_from(&self.outer)?;
        let table = match outer.get(&service_id, 0) {
            Ok(table) => table,
            Err(MapError::KeyNotFound) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let mut entries = vec![0u64; table.info()?.max_entries() as usize];
        batch(BatchOp::Lookup, table.fd().as_fd(), &mut entries)
            .map_err(io_error("reading a table"))?;
        decode(&entries)
            .map(Some)
            .ok_or(TableError::Malformed(service_id))
    }

    /// Every table, by service id.
    pub fn all(&self) -> Result<BTreeMap<u32, Vec<u32>>, TableError> {
        let mut tables = BTreeMap::new();
        let len = ArrayOfMaps::<&MapData, MapData>::try_from(&self.outer)?.len();
        for service_id in 0..len {
            if let Some(slots) = self.get(service_id)? {
                tables.insert(service_id, slots);
            }
        }
        Ok(tables)
    }

    fn outer_fd(&self) -> Result<BorrowedFd<'_>, TableError> {
        match &self.outer {
            Map::ArrayOfMaps(data) => Ok(data.fd().as_fd()),
            _ => Err(MapError::InvalidMapType { map_type: 0 }.into()),
        }
    }
}

// aya has no calls for batch operations or for removing an element of an
// array of maps: the few `bpf()` commands needed, by hand.

const BPF_MAP_DELETE_ELEM: libc::c_long = 3;
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;

/// The `union bpf_attr` member of the element commands.
#[repr(C)]
struct ElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

/// The `union bpf_attr` member of the batch commands.
#[repr(C)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

fn bpf<T>(command: libc::c_long, attr: &mut T) -> io::Result<()> {
    // SAFETY: `attr` is the fully initialised bpf_attr member `command`
    // reads, of the size passed; the pointers in it outlive the call.
    let ret = unsafe { libc::syscall(libc::SYS_bpf, command, attr as *mut T, size_of::<T>()) };
    match ret {
        0 => Ok(()),
        _ => Err(io::Error::last_os_error()),
    }
}

fn delete_elem(map: BorrowedFd<'_>, key: u32) -> io::Result<()> {
    let mut attr = ElemAttr {
        map_fd: map.as_raw_fd() as u32,
        _pad: 0,
        key: std::ptr::from_ref(&key) as u64,
        value: 0,
        flags: 0,
    };
    match bpf(BPF_MAP_DELETE_ELEM, &mut attr) {
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        other => other,
    }
}

enum BatchOp {
    Update,
    Lookup,
}

/// Writes `entries` to, or reads them from, array `map` at keys 0.. in one call.
fn batch(op: BatchOp, map: BorrowedFd<'_>, entries: &mut [u64]) -> io::Result<()> {
    let keys: Vec<u32> = (0..entries.len() as u32).collect();
    let mut out_batch = 0u32;
    let mut attr = BatchAttr {
        in_batch: 0,
        out_batch: std::ptr::from_mut(&mut out_batch) as u64,
        keys: keys.as_ptr() as u64,
        values: entries.as_mut_ptr() as u64,
        count: entries.len() as u32,
        map_fd: map.as_raw_fd() as u32,
        elem_flags: 0,
        flags: 0,
    };
    let command = match op {
        BatchOp::Update => BPF_MAP_UPDATE_BATCH,
        BatchOp::Lookup => BPF_MAP_LOOKUP_BATCH,
    };
    match bpf(command, &mut attr) {
        // A lookup that reached the end says so with ENOENT.
        Err(e) if matches!(op, BatchOp::Lookup) && e.raw_os_error() == Some(libc::ENOENT) => {}
        other => other?,
    }
    if attr.count as usize != entries.len() {
        return Err(io::Error::other(format!(
            "batch handled {} of {} entries",
            attr.count,
            entries.len()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_table_survives_encoding_and_takes_two_bytes_a_slot() {
        let slots: Vec<u32> = (0..1021).map(|s| 500_000 + (s * 7) % 10).collect();
        let entries = encode(&slots).unwrap();
        assert_eq!(entries.len(), 1 + 5 + 256);
        assert_eq!(entries[0], 1021 | 10 << 32);
        assert_eq!(entries[1], 500_000 | 500_001 << 32, "members in id order");
        assert_eq!(decode(&entries).unwrap(), slots);
        let odd: Vec<u32> = vec![7, 9, 7, 3, 3];
        assert_eq!(decode(&encode(&odd).unwrap()).unwrap(), odd);
    }

    #[test]
    fn entries_that_are_not_a_table_are_refused() {
        let entries = encode(&[1, 2, 3]).unwrap();
        assert!(decode(&entries[..entries.len() - 1]).is_none());
        assert!(decode(&[]).is_none());
        let mut bad_index = entries.clone();
        let last = bad_index.len() - 1;
        bad_index[last] = 0xffff;
        assert!(decode(&bad_index).is_none());
    }
}
