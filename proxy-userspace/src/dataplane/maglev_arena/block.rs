//! A Maglev table's entries (pure): encoding slots and members into a
//! block of the arena (`proxy_common::maps::maglev_layout`), decoding one,
//! and keeping each remaining backend's member position across a rewrite.
//!
//! 64-bit entries, because an array spends 8 bytes per entry whatever its
//! value size. Entry 0 holds M and the member capacity C; then C member
//! backend ids, two per entry; then the M slots as 16-bit member indexes,
//! four per entry. At 100 slots per backend a table of 10 backends
//! (M = 1021) takes 262 entries, 2 KiB, where one backend id per entry
//! would take 8 KiB.

use proxy_common::maps::maglev_layout;

/// Member positions a 16-bit slot can name.
const MAX_MEMBERS: usize = 1 << 16;

/// Slots per member a new table leaves room for: the size class's own
/// ratio, so backends can be added in place until the table would grow.
const SLOTS_PER_MEMBER: usize = 100;

/// A table's size M and member capacity C, from its header entry.
pub fn header(entry: u64) -> (u32, u32) {
    (entry as u32, (entry >> 32) as u32)
}

/// The member capacity of a new table of `size` slots over `members`
/// (distinct, ascending): room for the size class, and for every
/// remaining backend of `previous` to keep its position (affinity checks
/// membership by it).
pub fn capacity_for(size: usize, members: &[u32], previous: &[u32]) -> u32 {
    let kept_end = previous
        .iter()
        .rposition(|id| members.binary_search(id).is_ok())
        .map_or(0, |p| p + 1);
    (size / SLOTS_PER_MEMBER)
        .max(members.len())
        .max(kept_end)
        .min(MAX_MEMBERS) as u32
}

/// The entries to write first when a live table is rewritten in place
/// with `entries`: the new ones, except that a position a leaving backend
/// of `previous` held still names it (see `MaglevArena::put`).
pub fn interim_entries(entries: &[u64], previous: &[u32]) -> Vec<u64> {
    let members = members_in(entries).unwrap_or_default();
    let mut first = entries.to_vec();
    set_members(&mut first, &interim_members(&members, previous));
    first
}

/// A member position no backend holds.
const UNUSED: u32 = u32::MAX;

/// Where each of `members` (distinct, ascending) sits among `capacity`
/// member positions: where it sat in `previous` (the live table's members)
/// if it is still there, so a remaining backend keeps its index (session
/// affinity checks membership by it), new ones in the first free positions
/// in id order. `None` when they do not fit.
fn member_positions(members: &[u32], capacity: u32, previous: &[u32]) -> Option<Vec<u32>> {
    let mut positions = vec![UNUSED; capacity as usize];
    let mut placed = vec![false; members.len()];
    for (position, id) in positions.iter_mut().zip(previous) {
        if let Ok(i) = members.binary_search(id) {
            if !std::mem::replace(&mut placed[i], true) {
                *position = *id;
            }
        }
    }
    let mut free = positions.iter_mut().filter(|p| **p == UNUSED);
    for (id, _) in members.iter().zip(&placed).filter(|(_, placed)| !**placed) {
        *free.next()? = *id;
    }
    Some(positions)
}

/// The entries of a table holding `slots` (slot → backend id, every one
/// of `members`: distinct, ascending) with room for `capacity` members,
/// keeping the positions of `previous` members; `None` when they do not
/// fit or a slot names no member.
pub fn encode(slots: &[u32], members: &[u32], capacity: u32, previous: &[u32]) -> Option<Vec<u64>> {
    let size = u32::try_from(slots.len()).ok()?;
    if capacity as usize > MAX_MEMBERS {
        return None;
    }
    let positions = member_positions(members, capacity, previous)?;
    let index = PositionIndex::new(&positions);
    let mut entries = vec![u64::from(size) | u64::from(capacity) << 32];
    entries.resize(maglev_layout::slots_start(capacity) as usize, 0);
    set_members(&mut entries, &positions);
    for lanes in slots.chunks(4) {
        let mut entry = 0;
        for (lane, id) in lanes.iter().enumerate() {
            entry |= index.position_of(*id)? << (16 * lane);
        }
        entries.push(entry);
    }
    debug_assert_eq!(entries.len() as u32, maglev_layout::entries(size, capacity));
    Some(entries)
}

/// Each member's position, by backend id, looked up once per slot: by
/// offset from the lowest id when the ids are close together (a Service's
/// backends get ids one after the other), else in a sorted list.
enum PositionIndex {
    Dense { first: u32, positions: Vec<u32> },
    Sorted(Vec<(u32, u32)>),
}

impl PositionIndex {
    /// Widest id range (per member) kept as a dense table.
    const DENSE_SPREAD: usize = 8;

    fn new(positions: &[u32]) -> Self {
        let mut sorted: Vec<(u32, u32)> = (0u32..)
            .zip(positions)
            .filter(|(_, id)| **id != UNUSED)
            .map(|(position, id)| (*id, position))
            .collect();
        sorted.sort_unstable();
        let (Some(&(first, _)), Some(&(last, _))) = (sorted.first(), sorted.last()) else {
            return Self::Sorted(sorted);
        };
        let spread = (last - first) as usize + 1;
        if spread > Self::DENSE_SPREAD * sorted.len() {
            return Self::Sorted(sorted);
        }
        let mut dense = vec![UNUSED; spread];
        for (id, position) in sorted {
            dense[(id - first) as usize] = position;
        }
        Self::Dense {
            first,
            positions: dense,
        }
    }

    fn position_of(&self, id: u32) -> Option<u64> {
        let position = match self {
            Self::Dense { first, positions } => *positions.get(id.checked_sub(*first)? as usize)?,
            Self::Sorted(sorted) => {
                let found = sorted.binary_search_by_key(&id, |&(id, _)| id).ok()?;
                sorted[found].1
            }
        };
        (position != UNUSED).then_some(u64::from(position))
    }
}

/// The member positions of a table's entries (`UNUSED` where free); `None`
/// when they are not a table.
pub fn members_in(entries: &[u64]) -> Option<Vec<u32>> {
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

/// The backend ids a table's members hold (its free positions left out).
pub fn member_ids(positions: &[u32]) -> Vec<u32> {
    positions
        .iter()
        .copied()
        .filter(|id| *id != UNUSED)
        .collect()
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

#[cfg(test)]
mod tests {
    use super::*;

    fn distinct(slots: &[u32]) -> Vec<u32> {
        let mut ids = slots.to_vec();
        ids.sort_unstable();
        ids.dedup();
        ids
    }

    #[test]
    fn a_table_survives_encoding_and_takes_two_bytes_a_slot() {
        let slots: Vec<u32> = (0..1021).map(|s| 500_000 + (s * 7) % 10).collect();
        let entries = encode(&slots, &distinct(&slots), 10, &[]).unwrap();
        assert_eq!(entries.len(), 1 + 5 + 256);
        assert_eq!(entries[0], 1021 | 10 << 32);
        assert_eq!(
            entries[1],
            500_000 | 500_001 << 32,
            "new members in id order"
        );
        assert_eq!(decode(&entries).unwrap(), slots);
        let odd: Vec<u32> = vec![7, 9, 7, 3, 3];
        assert_eq!(
            decode(&encode(&odd, &distinct(&odd), 3, &[]).unwrap()).unwrap(),
            odd
        );
        // Room for more members: the same slots, a longer member list.
        assert_eq!(
            decode(&encode(&odd, &distinct(&odd), 8, &[]).unwrap()).unwrap(),
            odd
        );
        assert!(
            encode(&odd, &distinct(&odd), 2, &[]).is_none(),
            "three members need room for three"
        );
    }

    #[test]
    fn remaining_members_keep_their_positions_and_newcomers_fill_gaps() {
        let before = encode(&[1, 2, 3, 1], &distinct(&[1, 2, 3, 1]), 5, &[]).unwrap();
        let previous = members_in(&before).unwrap();
        assert_eq!(previous, [1, 2, 3, UNUSED, UNUSED]);
        // 2 leaves, 9 and 0 come: 1 and 3 stay put, the newcomers take the
        // free positions in id order.
        let after = encode(&[9, 3, 1, 0], &distinct(&[9, 3, 1, 0]), 5, &previous).unwrap();
        assert_eq!(members_in(&after).unwrap(), [1, 0, 3, 9, UNUSED]);
        assert_eq!(decode(&after).unwrap(), [9, 3, 1, 0]);
        // A smaller table keeps the positions that still exist.
        let smaller = encode(&[3, 1], &distinct(&[3, 1]), 2, &[1, 2, 3]).unwrap();
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
    fn scattered_and_close_ids_encode_alike() {
        // Ids far apart take the sorted list, close ones the dense table.
        let scattered: Vec<u32> = (0..1021).map(|s| [7, 400_000, 90][s % 3]).collect();
        let entries = encode(&scattered, &distinct(&scattered), 3, &[]).unwrap();
        assert_eq!(decode(&entries).unwrap(), scattered);
        let close: Vec<u32> = scattered.iter().map(|id| id % 100).collect();
        let entries = encode(&close, &distinct(&close), 3, &[]).unwrap();
        assert_eq!(decode(&entries).unwrap(), close);
        // A slot naming no member: not a table.
        assert!(encode(&[7, 8], &[7], 2, &[]).is_none());
        assert!(encode(&[7, 400_000], &[7], 2, &[]).is_none());
    }

    #[test]
    fn entries_that_are_not_a_table_are_refused() {
        let entries = encode(&[1, 2, 3], &distinct(&[1, 2, 3]), 4, &[]).unwrap();
        assert!(decode(&entries[..entries.len() - 1]).is_none());
        assert!(decode(&[]).is_none());
        let mut unused_member = entries.clone();
        let last = unused_member.len() - 1;
        unused_member[last] = 3; // slot 0 names the free fourth position
        assert!(decode(&unused_member).is_none());
    }
}
