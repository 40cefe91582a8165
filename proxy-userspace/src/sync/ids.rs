//! Id allocation: how the syncer picks free service and backend ids.

/// Hands out the lowest-numbered free ids above a moving cursor, so repeated
/// allocations stay cheap even with tens of thousands of ids in use.
pub(super) struct IdCursor {
    next: u32,
    limit: u32,
}

impl IdCursor {
    /// A cursor over the ids `0..limit`, starting at 0.
    pub(super) fn new(limit: u32) -> Self {
        Self { next: 0, limit }
    }

    pub(super) fn allocate(&mut self, in_use: impl Fn(u32) -> bool) -> Option<u32> {
        (0..self.limit)
            .map(|step| (self.next + step) % self.limit)
            .find(|id| !in_use(*id))
            .inspect(|id| self.next = (id + 1) % self.limit)
    }
}
