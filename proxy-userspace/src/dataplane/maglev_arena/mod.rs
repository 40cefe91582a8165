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
pub mod mapped;

use std::{borrow::Cow, collections::BTreeMap, io, os::fd::BorrowedFd, sync::Arc};

use foldhash::{HashMap, HashMapExt as _};
use proxy_common::{
    maps::{maglev_layout, NO_TABLE},
    sizes,
};

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

/// Entries of the arena mapped at a time (2 MiB): what the agent's RSS
/// holds of it, whatever its size (`mapped.rs`).
const ARENA_WINDOW: u32 = 1 << 18;

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

/// Who opens the arena: the agent, which writes it, or a command that only
/// reads it (`kxdp services`, `trace`, `status`, `monitor`) while an agent
/// may be writing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Opening {
    Owner,
    Reader,
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
    /// Made on the first release: a reader (`kxdp services`) needs none.
    grace: Option<GracePeriods>,
    opening: Opening,
}

impl MaglevArena {
    /// Maps the arena (`arena_entries` entries) and the index
    /// (`index_entries`), and takes over the tables they hold (`Owner`) or
    /// only reads them (`Reader`).
    pub fn open(
        arena: BorrowedFd<'_>,
        arena_entries: u32,
        index: BorrowedFd<'_>,
        index_entries: u32,
        opening: Opening,
    ) -> Result<Self, ArenaError> {
        let arena = MappedArray::new(arena, arena_entries, ARENA_WINDOW)
            .map_err(io_error("mapping MAGLEV_ARENA"))?;
        // Small: mapped whole, once.
        let index = MappedArray::new(index, index_entries, index_entries)
            .map_err(io_error("mapping MAGLEV_INDEX"))?;
        let offsets = index
            .read(0, index.entries())
            .map_err(io_error("reading MAGLEV_INDEX"))?;
        // The frontends of each block, blocks in offset order: the arena's
        // window then only moves forward.
        let mut users: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
        for (frontend_id, descriptor) in (0u32..).zip(offsets) {
            if descriptor != NO_TABLE {
                users
                    .entry(descriptor as u32)
                    .or_default()
                    .push(frontend_id);
            }
        }
        let mut blocks: HashMap<u32, Block> = HashMap::new();
        for (offset, frontend_ids) in users {
            match read_block(&arena, offset) {
                Some((spec, len)) => {
                    let refs = frontend_ids.len() as u32;
                    let spec = Arc::new(spec);
                    blocks.insert(offset, Block { spec, len, refs });
                }
                // Not a table this version can read: the owner clears these
                // frontends' entries and its next sync writes their tables
                // afresh. A reader leaves them: it may have read a block
                // the agent is rewriting, and only the agent writes.
                None if opening == Opening::Owner => {
                    tracing::warn!(
                        ?frontend_ids,
                        offset,
                        "ignoring a malformed Maglev table; it will be rebuilt"
                    );
                    for frontend_id in frontend_ids {
                        index
                            .write(frontend_id, &[NO_TABLE])
                            .map_err(io_error("writing MAGLEV_INDEX"))?;
                    }
                }
                None => {}
            }
        }
        let live: Vec<(u32, u32)> = blocks.iter().map(|(o, b)| (*o, b.len)).collect();
        // The space between live blocks rests until the first grace period
        // (epoch 1), which begins after this.
        let alloc = Allocator::rebuild(arena.entries(), &live, 1);
        let by_spec = blocks.iter().map(|(o, b)| (b.spec.clone(), *o)).collect();
        Ok(Self {
            arena,
            index,
            blocks,
            by_spec,
            alloc,
            grace: None,
            opening,
        })
    }

    /// What every frontend's table holds, by frontend id.
    pub fn all(&self) -> Result<BTreeMap<u32, TableSpec>, ArenaError> {
        let offsets = self
            .index
            .read(0, self.index.entries())
            .map_err(io_error("reading MAGLEV_INDEX"))?;
        Ok((0u32..)
            .zip(offsets)
            .filter_map(|(id, offset)| match self.blocks.get(&(offset as u32)) {
                Some(block) => Some((id, TableSpec::clone(&block.spec))),
                // A reader's blocks are those of its opening: the agent has
                // moved this table since, and it is read where it is now.
                None if self.opening == Opening::Reader && offset != NO_TABLE => {
                    read_block(&self.arena, offset as u32).map(|(spec, _)| (id, spec))
                }
                None => None,
            })
            .collect())
    }

    /// The slots of `frontend_id`'s table, as the datapath reads them.
    pub fn get(&self, frontend_id: u32) -> Result<Option<Vec<u32>>, ArenaError> {
        Ok(self
            .entries(frontend_id)?
            .and_then(|entries| block::decode(&entries)))
    }

    /// The entries of `frontend_id`'s table block, as the datapath reads
    /// them (`maglev_layout`); `None` without a table.
    pub fn entries(&self, frontend_id: u32) -> Result<Option<Vec<u64>>, ArenaError> {
        let offset = self.block_of(frontend_id)?;
        let Some(block) = self.blocks.get(&offset) else {
            return Ok(None);
        };
        let entries = self
            .arena
            .read(offset, block.len)
            .map_err(io_error("reading MAGLEV_ARENA"))?;
        Ok(Some(entries))
    }

    /// Whether some frontend has the table `spec`.
    pub fn has(&self, spec: &TableSpec) -> bool {
        self.by_spec.contains_key(spec)
    }

    /// The block offset of `frontend_id`'s table (0: none).
    pub fn block_of(&self, frontend_id: u32) -> Result<u32, ArenaError> {
        if frontend_id >= self.index.entries() {
            return Err(ArenaError::NoSuchFrontend(frontend_id));
        }
        let descriptor = self
            .index
            .get(frontend_id)
            .map_err(io_error("reading MAGLEV_INDEX"))?;
        Ok(descriptor as u32)
    }

    /// Unmaps the windows onto the arena and the index (see
    /// [`MappedArray::unmap`]).
    pub fn unmap(&self) {
        self.arena.unmap();
        self.index.unmap();
    }

    /// Entries in live blocks, and entries of the arena.
    pub fn usage(&self) -> (u64, u64) {
        (self.alloc.usage().0, u64::from(self.arena.entries()))
    }

    /// Makes the table `spec` (built by `build`, slot → backend id, only
    /// when no frontend has it already) the table of `frontend_id`: shared
    /// with a frontend that has the same, rewritten in place, or written to
    /// a fresh block and switched to. Live when this returns.
    pub fn put<'s>(
        &mut self,
        frontend_id: u32,
        spec: &TableSpec,
        build: impl FnOnce() -> Cow<'s, [u32]>,
    ) -> Result<(), ArenaError> {
        let current = self.block_of(frontend_id)?;
        let live = self.blocks.get(&current);
        if live.is_some_and(|b| *b.spec == *spec) {
            return Ok(());
        }
        if let Some(&shared) = self.by_spec.get(spec) {
            if let Some(block) = self.blocks.get_mut(&shared) {
                block.refs += 1;
            }
            self.switch(frontend_id, shared)?;
            self.release(current);
            return Ok(());
        }
        let slots = build();
        let (previous, alone) = match live {
            Some(block) => {
                let entries = self
                    .arena
                    .read(current, block.len)
                    .map_err(io_error("reading MAGLEV_ARENA"))?;
                let members = block::members_in(&entries).unwrap_or_default();
                let (size, capacity) = entries.first().map_or((0, 0), |h| block::header(*h));
                let fits = block.refs == 1 && size as usize == slots.len();
                (members, fits.then_some(capacity))
            }
            None => (Vec::new(), None),
        };
        // Alone on a block of the same size: rewritten in place if the
        // members fit its capacity.
        let in_place =
            alone.and_then(|capacity| block::encode(&slots, &spec.members, capacity, &previous));
        if let Some(entries) = in_place {
            write_in_place(&self.arena, current, &entries, &previous)
                .map_err(io_error("writing MAGLEV_ARENA"))?;
            if let Some(block) = self.blocks.get_mut(&current) {
                let spec = Arc::new(spec.clone());
                let old = std::mem::replace(&mut block.spec, spec.clone());
                self.by_spec.remove(&old);
                self.by_spec.insert(spec, current);
            }
            return Ok(());
        }
        let capacity = block::capacity_for(slots.len(), &spec.members, &previous);
        let entries = block::encode(&slots, &spec.members, capacity, &previous)
            .ok_or(ArenaError::TooLarge(slots.len()))?;
        let len = entries.len() as u32;
        let offset = self.allocate(len)?;
        if let Err(e) = self.arena.write(offset, &entries) {
            // Never reachable by a packet: free again at once.
            self.alloc.release(offset, len, 0);
            return Err(io_error("writing MAGLEV_ARENA")(e));
        }
        // Written whole before any frontend can reach it.
        self.switch(frontend_id, offset)?;
        let spec = Arc::new(spec.clone());
        self.by_spec.insert(spec.clone(), offset);
        self.blocks.insert(offset, Block { spec, len, refs: 1 });
        self.release(current);
        Ok(())
    }

    /// Leaves `frontend_id` without a table (the datapath rejects a
    /// frontend without backends before it looks at one).
    pub fn delete(&mut self, frontend_id: u32) -> Result<(), ArenaError> {
        let current = self.block_of(frontend_id)?;
        if u64::from(current) != NO_TABLE {
            self.switch(frontend_id, NO_TABLE as u32)?;
            self.release(current);
        }
        Ok(())
    }

    /// Points `frontend_id` at the block at `offset`: one 8-byte store.
    fn switch(&mut self, frontend_id: u32, offset: u32) -> Result<(), ArenaError> {
        self.index
            .write(frontend_id, &[u64::from(offset)])
            .map_err(io_error("writing MAGLEV_INDEX"))
    }

    /// The grace periods, made on first use.
    fn grace(&mut self) -> Result<&mut GracePeriods, ArenaError> {
        let grace = match self.grace.take() {
            Some(grace) => grace,
            None => GracePeriods::new().map_err(io_error("making the grace barrier"))?,
        };
        Ok(self.grace.insert(grace))
    }

    /// One frontend less points at the block at `offset`; the last one
    /// leaving frees it after a grace period (none to be had: never).
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
            match self.grace() {
                Ok(grace) => {
                    let epoch = grace.ask();
                    self.alloc.release(offset, block.len, epoch);
                }
                Err(e) => {
                    tracing::warn!(error = %e, offset, "a released Maglev block is not reused")
                }
            }
        }
    }

    /// A block of `len` entries; waits for a grace period only when the
    /// arena has room in resting blocks alone.
    fn allocate(&mut self, len: u32) -> Result<u32, ArenaError> {
        if let Some(grace) = &self.grace {
            self.alloc.grace_passed(grace.ended());
        }
        match self.alloc.allocate(len) {
            Allocation::At(offset) => Ok(offset),
            Allocation::AfterGrace => {
                let epoch = self
                    .grace()?
                    .wait_now()
                    .map_err(io_error("waiting for running programs"))?;
                self.alloc.grace_passed(epoch);
                match self.alloc.allocate(len) {
                    Allocation::At(offset) => Ok(offset),
                    _ => Err(ArenaError::Full(self.arena.entries())),
                }
            }
            Allocation::Full => Err(ArenaError::Full(self.arena.entries())),
        }
    }
}

/// The table in the block at `offset` and the entries it spans; `None`
/// when the entries there are not a table of backend ids this version
/// hands out.
fn read_block(arena: &MappedArray, offset: u32) -> Option<(TableSpec, u32)> {
    let (size, capacity) = block::header(arena.get(offset).ok()?);
    let len = maglev_layout::entries(size, capacity);
    let entries = arena.read(offset, len).ok()?;
    // Checked whole (every slot names a member), described by its members:
    // no sort of its slots per table at start.
    let slots = block::decode(&entries)?;
    let spec = TableSpec::new(size, block::member_ids(&block::members_in(&entries)?));
    let known = spec.members.iter().all(|id| *id < sizes::MAX_BACKENDS);
    (!slots.is_empty() && known).then_some((spec, len))
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
fn write_in_place(
    arena: &MappedArray,
    offset: u32,
    entries: &[u64],
    previous: &[u32],
) -> io::Result<()> {
    let first = block::interim_entries(entries, previous);
    arena.write(offset, &first)?;
    if first != entries {
        arena.write(offset, entries)?;
    }
    Ok(())
}
