//! Every frontend's Maglev table in one flat arena, `MAGLEV_ARENA` (an
//! mmapable array written through `mmap`, no syscall per entry), and in
//! `MAGLEV_INDEX` each frontend's block offset. The datapath reads both
//! with inlined array loads.
//!
//! Frontends with the same table (the same size and backends: a
//! Service's ClusterIP, NodePorts and external addresses) share one block,
//! counted by reference. Changing a table never shows a packet half of
//! one: a table of the same size whose block is not shared is rewritten in
//! place in two ordered passes (members kept in place, [`write_in_place`]);
//! otherwise the new table is written to a fresh block and the frontend's
//! index entry switched to it in one 8-byte store. A block nobody uses any
//! more rests until a grace period that began after its release has ended
//! ([`grace`]), and only then is reused ([`alloc`]).
//!
//! After a restart the agent reads the index and the blocks it names
//! through the mapping and rebuilds the allocator from them: no syscall
//! per table, no map of maps.

mod alloc;
pub mod block;
mod grace;
mod mapped;

use std::{
    collections::{BTreeMap, HashMap},
    io,
    os::fd::BorrowedFd,
    sync::Arc,
};

use proxy_common::maps::{maglev_layout, NO_TABLE};

use self::{
    alloc::{Allocation, Allocator},
    grace::GracePeriods,
    mapped::MappedArray,
};
use crate::sync::store::TableSpec;

/// Name of the arena in the object and under the pin path.
pub const MAGLEV_ARENA: &str = "MAGLEV_ARENA";
/// Name of the frontend id → block offset index.
pub const MAGLEV_INDEX: &str = "MAGLEV_INDEX";

#[derive(Debug, thiserror::Error)]
pub enum ArenaError {
    #[error("{what}: {error}")]
    Io {
        what: &'static str,
        #[source]
        error: io::Error,
    },
    #[error("a table of {0} slots cannot be stored (at most 65536 backends, 65521 slots)")]
    TooLarge(usize),
    #[error("the Maglev arena is full ({0} entries): raise --maglev-arena-mib")]
    Full(u32),
    #[error("frontend id {0} is beyond MAGLEV_INDEX")]
    NoSuchFrontend(u32),
}

fn io_error(what: &'static str) -> impl FnOnce(io::Error) -> ArenaError {
    move |error| ArenaError::Io { what, error }
}

/// A block in use.
#[derive(Debug)]
struct Block {
    /// Shared with the block's key in `by_spec`.
    spec: Arc<TableSpec>,
    /// Entries it spans.
    len: u32,
    /// Frontends pointing at it.
    refs: u32,
}

/// `MAGLEV_ARENA` and `MAGLEV_INDEX`, read and written.
pub struct MaglevArena {
    arena: MappedArray,
    index: MappedArray,
    /// Blocks in use, by offset.
    blocks: HashMap<u32, Block>,
    /// The block holding each table in use, to share it.
    by_spec: HashMap<Arc<TableSpec>, u32>,
    alloc: Allocator,
    grace: GracePeriods,
}

impl MaglevArena {
    /// Maps the arena (`arena_entries` entries) and the index
    /// (`index_entries`), and takes over the tables they hold.
    pub fn open(
        arena: BorrowedFd<'_>,
        arena_entries: u32,
        index: BorrowedFd<'_>,
        index_entries: u32,
    ) -> Result<Self, ArenaError> {
        let arena =
            MappedArray::new(arena, arena_entries).map_err(io_error("mapping MAGLEV_ARENA"))?;
        let index =
            MappedArray::new(index, index_entries).map_err(io_error("mapping MAGLEV_INDEX"))?;
        let mut grace = GracePeriods::new().map_err(io_error("making the grace barrier"))?;
        let mut blocks: HashMap<u32, Block> = HashMap::new();
        for frontend_id in 0..index.len() {
            let offset = index.get(frontend_id) as u32;
            if u64::from(offset) == NO_TABLE {
                continue;
            }
            if let Some(block) = blocks.get_mut(&offset) {
                block.refs += 1;
                continue;
            }
            match read_block(&arena, offset) {
                Some((spec, len)) => {
                    let spec = Arc::new(spec);
                    blocks.insert(offset, Block { spec, len, refs: 1 });
                }
                None => {
                    // Not a table this version can read: the next sync
                    // writes the frontend's table afresh.
                    tracing::warn!(
                        frontend_id,
                        offset,
                        "ignoring a malformed Maglev table; it will be rebuilt"
                    );
                    index.write(frontend_id, &[NO_TABLE]);
                }
            }
        }
        let live: Vec<(u32, u32)> = blocks.iter().map(|(o, b)| (*o, b.len)).collect();
        let alloc = Allocator::rebuild(arena.len(), &live, grace.ask());
        let by_spec = blocks.iter().map(|(o, b)| (b.spec.clone(), *o)).collect();
        Ok(Self {
            arena,
            index,
            blocks,
            by_spec,
            alloc,
            grace,
        })
    }

    /// What every frontend's table holds, by frontend id.
    pub fn all(&self) -> BTreeMap<u32, TableSpec> {
        (0..self.index.len())
            .filter_map(|id| {
                let block = self.blocks.get(&(self.index.get(id) as u32))?;
                Some((id, TableSpec::clone(&block.spec)))
            })
            .collect()
    }

    /// The slots of `frontend_id`'s table, as the datapath reads them.
    pub fn get(&self, frontend_id: u32) -> Option<Vec<u32>> {
        let offset = self.index.get(frontend_id) as u32;
        let len = self.blocks.get(&offset)?.len;
        block::decode(&self.arena.read(offset, len)?)
    }

    /// Whether some frontend has the table `spec`.
    pub fn has(&self, spec: &TableSpec) -> bool {
        self.by_spec.contains_key(spec)
    }

    /// The block offset of `frontend_id`'s table (0: none).
    pub fn block_of(&self, frontend_id: u32) -> u32 {
        self.index.get(frontend_id) as u32
    }

    /// Entries in live blocks, and entries of the arena.
    pub fn usage(&self) -> (u64, u64) {
        (self.alloc.usage().0, u64::from(self.arena.len()))
    }

    /// Makes the table `spec` (built by `build`, slot → backend id, only
    /// when no frontend has it already) the table of `frontend_id`: shared
    /// with a frontend that has the same, rewritten in place, or written to
    /// a fresh block and switched to. Live when this returns.
    pub fn put(
        &mut self,
        frontend_id: u32,
        spec: &TableSpec,
        build: impl FnOnce() -> Vec<u32>,
    ) -> Result<(), ArenaError> {
        if frontend_id >= self.index.len() {
            return Err(ArenaError::NoSuchFrontend(frontend_id));
        }
        let current = self.index.get(frontend_id) as u32;
        let live = self.blocks.get(&current);
        if live.is_some_and(|b| *b.spec == *spec) {
            return Ok(());
        }
        if let Some(&shared) = self.by_spec.get(spec) {
            if let Some(block) = self.blocks.get_mut(&shared) {
                block.refs += 1;
            }
            self.index.write(frontend_id, &[u64::from(shared)]);
            self.release(current);
            return Ok(());
        }
        let slots = build();
        let previous = live
            .and_then(|b| self.arena.read(current, b.len))
            .and_then(|entries| block::members_in(&entries))
            .unwrap_or_default();
        if self.blocks.get(&current).is_some_and(|b| b.refs == 1) {
            let (size, capacity) = block::header(self.arena.get(current));
            if size as usize == slots.len() {
                if let Some(entries) = block::encode(&slots, &spec.members, capacity, &previous) {
                    write_in_place(&self.arena, current, &entries, &previous);
                    if let Some(block) = self.blocks.get_mut(&current) {
                        let spec = Arc::new(spec.clone());
                        let old = std::mem::replace(&mut block.spec, spec.clone());
                        self.by_spec.remove(&old);
                        self.by_spec.insert(spec, current);
                    }
                    return Ok(());
                }
            }
        }
        let capacity = block::capacity_for(slots.len(), &spec.members, &previous);
        let entries = block::encode(&slots, &spec.members, capacity, &previous)
            .ok_or(ArenaError::TooLarge(slots.len()))?;
        let len = entries.len() as u32;
        let offset = self.allocate(len)?;
        self.arena.write(offset, &entries);
        // Written whole before any frontend can reach it.
        self.index.write(frontend_id, &[u64::from(offset)]);
        let spec = Arc::new(spec.clone());
        self.by_spec.insert(spec.clone(), offset);
        self.blocks.insert(offset, Block { spec, len, refs: 1 });
        self.release(current);
        Ok(())
    }

    /// Leaves `frontend_id` without a table (the datapath rejects a
    /// frontend without backends before it looks at one).
    pub fn delete(&mut self, frontend_id: u32) {
        let current = self.index.get(frontend_id) as u32;
        if u64::from(current) != NO_TABLE {
            self.index.write(frontend_id, &[NO_TABLE]);
            self.release(current);
        }
    }

    /// One frontend less points at the block at `offset`; the last one
    /// leaving frees it after a grace period.
    fn release(&mut self, offset: u32) {
        let Some(block) = self.blocks.get_mut(&offset) else {
            return;
        };
        block.refs -= 1;
        if block.refs > 0 {
            return;
        }
        if let Some(block) = self.blocks.remove(&offset) {
            self.by_spec.remove(&block.spec);
            let epoch = self.grace.ask();
            self.alloc.release(offset, block.len, epoch);
        }
    }

    /// A block of `len` entries; waits for a grace period only when the
    /// arena has room in resting blocks alone.
    fn allocate(&mut self, len: u32) -> Result<u32, ArenaError> {
        if self.alloc.has_resting() {
            self.alloc.grace_passed(self.grace.ended());
        }
        match self.alloc.allocate(len) {
            Allocation::At(offset) => Ok(offset),
            Allocation::AfterGrace => {
                let epoch = self
                    .grace
                    .wait_now()
                    .map_err(io_error("waiting for running programs"))?;
                self.alloc.grace_passed(epoch);
                match self.alloc.allocate(len) {
                    Allocation::At(offset) => Ok(offset),
                    _ => Err(ArenaError::Full(self.arena.len())),
                }
            }
            Allocation::Full => Err(ArenaError::Full(self.arena.len())),
        }
    }
}

/// The table in the block at `offset` and the entries it spans; `None`
/// when the entries there are not a table.
fn read_block(arena: &MappedArray, offset: u32) -> Option<(TableSpec, u32)> {
    let (size, capacity) = block::header(arena.get(offset));
    let len = maglev_layout::entries(size, capacity);
    let slots = block::decode(&arena.read(offset, len)?)?;
    (!slots.is_empty()).then(|| (TableSpec::of(&slots), len))
}

/// Rewrites the live table at `offset` with `entries` of the same size and
/// capacity. Entries are stored in order (header, members, slots) while
/// programs read the table. So the first pass writes the members with
/// each position a leaving backend held kept as it was (that backend is
/// still in `BACKENDS` until the sync ends), then the new slots, which
/// name only new members; the second pass clears the leaving ones, which
/// no slot names any more. So a new flow almost always finds a live
/// backend; the rare one that reads a slot before the first pass and its
/// member after the second is dropped, counted as `STALE_SELECTION`, and
/// its retransmission chooses again.
fn write_in_place(arena: &MappedArray, offset: u32, entries: &[u64], previous: &[u32]) {
    let first = block::interim_entries(entries, previous);
    arena.write(offset, &first);
    if first != entries {
        arena.write(offset, entries);
    }
}
