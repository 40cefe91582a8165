//! Where Maglev tables go in the arena (pure). Blocks are rounded up to
//! whole cache lines ([`ALIGN`] entries), so a table's header and first
//! members share one line and lengths fall into few classes. A freed block
//! rests until a grace period that began after its release has ended
//! (programs may still be reading it); it is then reused for a table of
//! the same length class, or split for a shorter one.

use std::collections::BTreeMap;

/// Entries per 64-byte cache line: blocks start and end on line bounds.
pub const ALIGN: u32 = 8;

/// What [`Allocator::allocate`] could do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Allocation {
    /// A block at this offset, of the rounded length asked for.
    At(u32),
    /// Only blocks still resting would fit: wait for a grace period, call
    /// [`Allocator::grace_passed`] with the last release's epoch, and ask
    /// again.
    AfterGrace,
    /// The arena has no room for it.
    Full,
}

/// Free space of the arena, by block length.
#[derive(Debug)]
pub struct Allocator {
    /// Entries in the arena.
    capacity: u32,
    /// Start of the untouched tail.
    tail: u32,
    /// Free blocks by rounded length, reusable at once.
    free: BTreeMap<u32, Vec<u32>>,
    /// Blocks waiting for a grace period: (offset, rounded length, the
    /// epoch of the grace period that frees them).
    resting: Vec<(u32, u32, u64)>,
}

/// `len` rounded up to whole cache lines.
pub fn rounded(len: u32) -> u32 {
    len.div_ceil(ALIGN) * ALIGN
}

impl Allocator {
    /// An empty arena of `capacity` entries. The first line stays unused,
    /// so offset 0 can mean "no table".
    pub fn new(capacity: u32) -> Self {
        Self {
            capacity,
            tail: ALIGN.min(capacity),
            free: BTreeMap::new(),
            resting: Vec::new(),
        }
    }

    /// The allocator of an arena holding the blocks `live` (offset, length)
    /// as a previous agent left it. The space between them rests until the
    /// grace period of `epoch`: the previous agent may have freed it just
    /// before it stopped.
    pub fn rebuild(capacity: u32, live: &[(u32, u32)], epoch: u64) -> Self {
        let mut alloc = Self::new(capacity);
        let mut blocks: Vec<(u32, u32)> = live.iter().map(|&(o, l)| (o, rounded(l))).collect();
        blocks.sort_unstable();
        for (offset, len) in blocks {
            if offset > alloc.tail {
                alloc.resting.push((alloc.tail, offset - alloc.tail, epoch));
            }
            alloc.tail = alloc.tail.max(offset + len);
        }
        alloc
    }

    /// A block of at least `len` entries.
    pub fn allocate(&mut self, len: u32) -> Allocation {
        let len = rounded(len.max(1));
        if let Some(offset) = self.free.get_mut(&len).and_then(Vec::pop) {
            return Allocation::At(offset);
        }
        if self.capacity - self.tail >= len {
            self.tail += len;
            return Allocation::At(self.tail - len);
        }
        // A longer free block, split: the rest stays free.
        let longer = self.free.range(len + 1..).find(|(_, v)| !v.is_empty());
        if let Some((&found, _)) = longer {
            let offset = self.free.get_mut(&found).and_then(Vec::pop);
            if let Some(offset) = offset {
                self.free.entry(found - len).or_default().push(offset + len);
                return Allocation::At(offset);
            }
        }
        if self.resting.iter().any(|&(_, l, _)| l >= len) {
            return Allocation::AfterGrace;
        }
        Allocation::Full
    }

    /// Gives back the block at `offset` of `len` entries; it rests until
    /// the grace period of `epoch` (one that begins after this call) ends.
    pub fn release(&mut self, offset: u32, len: u32, epoch: u64) {
        self.resting.push((offset, rounded(len), epoch));
    }

    /// Whether freed blocks wait for a grace period.
    #[cfg(test)]
    fn has_resting(&self) -> bool {
        !self.resting.is_empty()
    }

    /// The grace periods up to `epoch` have ended: every program that could
    /// read the blocks they rest for has finished, so those become free.
    pub fn grace_passed(&mut self, epoch: u64) {
        let (done, waiting) = self.resting.drain(..).partition(|&(_, _, e)| e <= epoch);
        self.resting = waiting;
        for (offset, len, _) in done {
            self.free.entry(len).or_default().push(offset);
        }
    }

    /// Entries handed out (live blocks) and entries not yet touched.
    pub fn usage(&self) -> (u64, u64) {
        let spare: u64 = self
            .free
            .iter()
            .map(|(len, offsets)| u64::from(*len) * offsets.len() as u64)
            .chain(self.resting.iter().map(|&(_, len, _)| u64::from(len)))
            .sum();
        let tail = u64::from(self.capacity - self.tail);
        (
            u64::from(self.tail) - u64::from(ALIGN.min(self.capacity)) - spare,
            tail,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(allocation: Allocation) -> u32 {
        match allocation {
            Allocation::At(offset) => offset,
            other => panic!("expected a block, got {other:?}"),
        }
    }

    #[test]
    fn blocks_are_line_aligned_and_never_at_zero() {
        let mut alloc = Allocator::new(1024);
        let a = at(alloc.allocate(262));
        let b = at(alloc.allocate(3));
        assert_eq!((a, b), (8, 8 + 264));
        assert_eq!(alloc.usage(), (264 + 8, 1024 - 8 - 264 - 8));
    }

    #[test]
    fn a_freed_block_is_reused_only_after_a_grace_period() {
        let mut alloc = Allocator::new(8 + 64);
        let a = at(alloc.allocate(64));
        assert_eq!(alloc.allocate(64), Allocation::Full);
        alloc.release(a, 64, 1);
        assert!(alloc.has_resting());
        assert_eq!(alloc.allocate(60), Allocation::AfterGrace);
        alloc.grace_passed(0);
        assert_eq!(
            alloc.allocate(60),
            Allocation::AfterGrace,
            "an earlier grace period"
        );
        alloc.grace_passed(1);
        assert!(!alloc.has_resting());
        assert_eq!(at(alloc.allocate(60)), a, "same length class");
        assert_eq!(alloc.allocate(8), Allocation::Full);
    }

    #[test]
    fn the_tail_comes_before_resting_blocks_and_longer_free_blocks_split() {
        let mut alloc = Allocator::new(8 + 64 + 16);
        let a = at(alloc.allocate(64));
        alloc.release(a, 64, 1);
        // Room in the tail: no wait.
        let b = at(alloc.allocate(16));
        assert_eq!(b, 8 + 64);
        assert_eq!(alloc.allocate(16), Allocation::AfterGrace);
        alloc.grace_passed(1);
        // No free block of 16: the 64 one is split, its rest stays free.
        assert_eq!(at(alloc.allocate(16)), a);
        assert_eq!(at(alloc.allocate(48)), a + 16);
        assert_eq!(alloc.allocate(8), Allocation::Full);
    }

    #[test]
    fn fragmentation_under_churn_stays_within_the_classes_in_use() {
        // Tables of two sizes replaced over and over, each grace period
        // ending a round later: once warm, every allocation reuses a freed
        // block of its class and the tail stops growing.
        let mut alloc = Allocator::new(1 << 20);
        let mut live: Vec<(u32, u32)> = Vec::new();
        for round in 0..2000u32 {
            alloc.grace_passed(u64::from(round));
            let len = if round % 3 == 0 { 262 } else { 131 };
            let offset = match alloc.allocate(len) {
                Allocation::At(offset) => offset,
                other => panic!("{other:?} at round {round}"),
            };
            live.push((offset, len));
            if live.len() > 50 {
                let (o, l) = live.remove(0);
                alloc.release(o, l, u64::from(round) + 1);
            }
        }
        let (used, untouched) = alloc.usage();
        assert_eq!(
            used,
            live.iter()
                .map(|&(_, l)| u64::from(rounded(l)))
                .sum::<u64>()
        );
        assert!(
            untouched > (1 << 20) - 100 * 264,
            "the tail grew with churn: {untouched} entries left"
        );
    }

    #[test]
    fn a_rebuilt_allocator_keeps_live_blocks_and_rests_the_gaps() {
        let live = [(8 + 264, 262), (8, 262), (8 + 264 * 3, 5)];
        let mut alloc = Allocator::rebuild(4096, &live, 1);
        // The gap [8 + 528, 8 + 792) may have been freed just before the
        // previous agent stopped: not handed out before a grace period.
        assert!(alloc.has_resting());
        let next = at(alloc.allocate(264));
        assert_eq!(
            next,
            8 + 264 * 3 + 8,
            "from the tail, past every live block"
        );
        alloc.grace_passed(1);
        assert_eq!(at(alloc.allocate(264)), 8 + 528);
        assert_eq!(
            Allocator::rebuild(64, &[], 1).allocate(8),
            Allocation::At(8)
        );
    }
}
