//! The backends maps of both families as the agent mirrors them: values by
//! id, and one id per distinct value.
//!
//! Backend ids are handed out by a cursor (`ids.rs`), so the live ids sit in
//! a few contiguous runs: values are kept in fixed pages by id (8 bytes an
//! IPv4 entry, a page allocated while any of its ids is used; IPv6 values,
//! 20 bytes each, in pages of their own, so IPv4 pages stay as small as
//! before IPv6) and found by value
//! through a hash table of ids (4 bytes an entry). A `BTreeMap` and a
//! `HashMap<BackendValue, u32>` held about 60 bytes per backend; at 300,000
//! backends the difference is 12 MiB of the agent's heap.

use std::{fmt, hash::BuildHasher as _};

use foldhash::fast::RandomState;
use hashbrown::HashTable;
use proxy_common::{
    maps::{BackendValue, BackendValue6},
    sizes,
};

use super::entries::BackendMapValue;

/// Ids per page: a page is 4 KiB of IPv4 values (10 KiB of IPv6 ones).
const PAGE: usize = 512;

struct Page<V> {
    values: [V; PAGE],
    /// Which slots hold a value.
    used: [u64; PAGE / 64],
    count: u16,
}

impl<V: Copy + Default> Page<V> {
    fn new() -> Box<Self> {
        Box::new(Self {
            values: [V::default(); PAGE],
            used: [0; PAGE / 64],
            count: 0,
        })
    }

    fn has(&self, slot: usize) -> bool {
        self.used[slot / 64] & (1 << (slot % 64)) != 0
    }
}

/// One family's values in pages by id: a page allocated while any of its
/// ids holds a value of the family.
struct Pages<V>(Vec<Option<Box<Page<V>>>>);

impl<V> Default for Pages<V> {
    fn default() -> Self {
        Self(Vec::new())
    }
}

impl<V: Copy + Default> Pages<V> {
    fn get(&self, id: u32) -> Option<V> {
        let (page, slot) = place(id);
        let page = self.0.get(page)?.as_ref()?;
        page.has(slot).then(|| page.values[slot])
    }

    /// Holds `value` under `id`, which holds nothing.
    fn put(&mut self, id: u32, value: V) {
        let (page, slot) = place(id);
        if self.0.len() <= page {
            self.0.resize_with(page + 1, || None);
        }
        let entry = self.0[page].get_or_insert_with(Page::new);
        entry.values[slot] = value;
        entry.used[slot / 64] |= 1 << (slot % 64);
        entry.count += 1;
    }

    /// Empties `id`, which holds a value.
    fn clear(&mut self, id: u32) {
        let (page, slot) = place(id);
        if let Some(entry) = self.0[page].as_mut() {
            entry.used[slot / 64] &= !(1 << (slot % 64));
            entry.count -= 1;
            if entry.count == 0 {
                self.0[page] = None;
            }
        }
    }

    /// Whether page `n` is allocated.
    fn has_page(&self, n: usize) -> bool {
        self.0.get(n).is_some_and(Option::is_some)
    }
}

/// Both families' pages: an id holds a value in at most one of them.
#[derive(Default)]
struct Families {
    v4: Pages<BackendValue>,
    v6: Pages<BackendValue6>,
}

impl Families {
    fn get(&self, id: u32) -> Option<BackendMapValue> {
        self.v4
            .get(id)
            .map(BackendMapValue::V4)
            .or_else(|| self.v6.get(id).map(BackendMapValue::V6))
    }

    fn pages(&self) -> usize {
        self.v4.0.len().max(self.v6.0.len())
    }
}

/// Every backend the maps hold, by id, with the reverse lookup the syncer
/// reuses ids by. Ids at or above `MAX_BACKENDS` are never held.
pub struct BackendTable {
    pages: Families,
    /// One id per distinct value (the first inserted of equal ones).
    by_value: HashTable<u32>,
    hasher: RandomState,
    len: usize,
}

impl Default for BackendTable {
    fn default() -> Self {
        Self {
            pages: Families::default(),
            by_value: HashTable::new(),
            hasher: RandomState::default(),
            len: 0,
        }
    }
}

fn place(id: u32) -> (usize, usize) {
    (id as usize / PAGE, id as usize % PAGE)
}

impl BackendTable {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn get(&self, id: u32) -> Option<BackendMapValue> {
        self.pages.get(id)
    }

    pub fn contains(&self, id: u32) -> bool {
        self.get(id).is_some()
    }

    /// The id a value is held under (one of them, if several).
    pub fn id_of(&self, value: &BackendMapValue) -> Option<u32> {
        self.find(self.hasher.hash_one(value), value)
    }

    fn find(&self, hash: u64, value: &BackendMapValue) -> Option<u32> {
        self.by_value
            .find(hash, |&id| self.get(id).as_ref() == Some(value))
            .copied()
    }

    /// Holds `value` under `id`, replacing what `id` held (returned).
    ///
    /// # Panics
    /// When `id` is at or above `MAX_BACKENDS`: the id allocator never
    /// hands such an id out, and the map cannot hold it.
    pub fn insert(&mut self, id: u32, value: BackendMapValue) -> Option<BackendMapValue> {
        assert!(id < sizes::MAX_BACKENDS, "backend id {id} beyond the map");
        let previous = self.remove(id);
        match value {
            BackendMapValue::V4(v) => self.pages.v4.put(id, v),
            BackendMapValue::V6(v) => self.pages.v6.put(id, v),
        }
        self.len += 1;
        let hash = self.hasher.hash_one(value);
        if self.find(hash, &value).is_none() {
            let (pages, hasher) = (&self.pages, &self.hasher);
            self.by_value.insert_unique(hash, id, |&held| {
                hasher.hash_one(pages.get(held).expect("an id the table holds"))
            });
        }
        previous
    }

    pub fn remove(&mut self, id: u32) -> Option<BackendMapValue> {
        let value = self.get(id)?;
        let hash = self.hasher.hash_one(value);
        if let Ok(entry) = self.by_value.find_entry(hash, |&held| held == id) {
            entry.remove();
        }
        match value {
            BackendMapValue::V4(_) => self.pages.v4.clear(id),
            BackendMapValue::V6(_) => self.pages.v6.clear(id),
        }
        self.len -= 1;
        Some(value)
    }

    /// Every (id, value), by ascending id.
    pub fn iter(&self) -> impl Iterator<Item = (u32, BackendMapValue)> + '_ {
        let pages = &self.pages;
        (0..pages.pages())
            .filter(|&n| pages.v4.has_page(n) || pages.v6.has_page(n))
            .flat_map(move |n| {
                (0..PAGE).filter_map(move |slot| {
                    let id = (n * PAGE + slot) as u32;
                    Some((id, pages.get(id)?))
                })
            })
    }

    pub fn values(&self) -> impl Iterator<Item = BackendMapValue> + '_ {
        self.iter().map(|(_, value)| value)
    }
}

impl FromIterator<(u32, BackendMapValue)> for BackendTable {
    fn from_iter<I: IntoIterator<Item = (u32, BackendMapValue)>>(entries: I) -> Self {
        let mut table = Self::default();
        for (id, value) in entries {
            table.insert(id, value);
        }
        table
    }
}

impl Clone for BackendTable {
    fn clone(&self) -> Self {
        self.iter().collect()
    }
}

/// Equal when they hold the same values under the same ids.
impl PartialEq for BackendTable {
    fn eq(&self, other: &Self) -> bool {
        self.len == other.len && self.iter().eq(other.iter())
    }
}

impl Eq for BackendTable {}

impl fmt::Debug for BackendTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn value(addr: u32, port: u16) -> BackendMapValue {
        BackendMapValue::V4(BackendValue {
            addr,
            port,
            ..BackendValue::default()
        })
    }

    fn value6(addr: u32, port: u16) -> BackendMapValue {
        BackendMapValue::V6(BackendValue6 {
            addr: [0xfd, 0, 0, addr],
            port,
            ..BackendValue6::default()
        })
    }

    #[test]
    fn holds_what_a_btree_map_would_hold() {
        let mut table = BackendTable::default();
        let mut model: BTreeMap<u32, BackendMapValue> = BTreeMap::new();
        // A deterministic walk of inserts, replacements and removals over
        // ids spread across pages, the last page included.
        let mut state = 0x2545_f491_u32;
        for step in 0..20_000u32 {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            let id = match step % 3 {
                0 => state % 2048,
                1 => sizes::MAX_BACKENDS - 1 - state % 600,
                _ => state % sizes::MAX_BACKENDS,
            };
            // Both families, an id moving from one to the other at times.
            let v = if state % 7 < 2 {
                value6(state % 97, (state % 5) as u16)
            } else {
                value(state % 97, (state % 5) as u16)
            };
            if state.is_multiple_of(4) {
                assert_eq!(table.remove(id), model.remove(&id));
            } else {
                assert_eq!(table.insert(id, v), model.insert(id, v));
            }
            assert_eq!(table.len(), model.len());
        }
        assert!(table.iter().eq(model.iter().map(|(id, v)| (*id, *v))));
        for (id, v) in &model {
            assert_eq!(table.get(*id), Some(*v));
            // A value found is found under an id holding it.
            if let Some(found) = table.id_of(v) {
                assert_eq!(model.get(&found), Some(v));
            }
        }
        // Distinct values, each found under its id.
        for id in (0..sizes::MAX_BACKENDS).step_by(997) {
            table.insert(id, value(5000 + id, 1));
        }
        for id in (0..sizes::MAX_BACKENDS).step_by(997) {
            assert_eq!(table.id_of(&value(5000 + id, 1)), Some(id));
        }
        assert_eq!(table.id_of(&value(1000, 0)), None);
        assert_eq!(table.clone(), table);
    }

    #[test]
    fn a_value_is_found_under_its_first_id_until_that_id_goes() {
        let mut table = BackendTable::default();
        let v = value(7, 80);
        table.insert(3, v);
        table.insert(900, v);
        assert_eq!(table.id_of(&v), Some(3));
        table.remove(3);
        // The syncer then gives the value a new id of its own; the other
        // holder is left to its references.
        assert_eq!(table.id_of(&v), None);
        assert_eq!(table.get(900), Some(v));
    }

    #[test]
    fn an_emptied_page_is_freed() {
        let mut table = BackendTable::default();
        table.insert(PAGE as u32 + 1, value(1, 1));
        assert!(table.pages.v4.has_page(1) && !table.pages.v6.has_page(1));
        table.remove(PAGE as u32 + 1);
        assert!(!table.pages.v4.has_page(1));
        assert!(table.is_empty());
        assert_eq!(table.iter().count(), 0);
    }

    #[test]
    fn ipv6_values_live_in_their_own_pages_and_ipv4_pages_stay_small() {
        let mut table = BackendTable::default();
        table.insert(3, value(7, 80));
        table.insert(4, value6(7, 80));
        assert_eq!(table.get(4), Some(value6(7, 80)));
        assert_eq!(table.id_of(&value6(7, 80)), Some(4));
        assert_eq!(table.id_of(&value(7, 80)), Some(3));
        assert!(table.pages.v4.has_page(0) && table.pages.v6.has_page(0));
        assert_eq!(table.iter().map(|(id, _)| id).collect::<Vec<_>>(), [3, 4]);
        // An id changing family leaves the other family's page.
        table.insert(4, value(9, 80));
        assert!(!table.pages.v6.has_page(0));
        assert_eq!(table.len(), 2);
        // An IPv4 value takes 8 bytes in its page, as before IPv6.
        assert_eq!(size_of::<Page<BackendValue>>(), PAGE * 8 + PAGE / 8 + 8);
    }
}
