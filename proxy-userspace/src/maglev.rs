//! Maglev consistent hashing (Eisenbud et al., NSDI 2016): the selection
//! table of one frontend. Each backend gets a permutation of the table's
//! slots from two hashes of its identity (address and port), and the
//! backends take turns claiming the next free slot of their permutation
//! until the table is full. So every backend holds ⌊M/N⌋ or ⌈M/N⌉ slots,
//! and removing one backend moves little more than its own slots.
//!
//! The table depends only on the set of backend identities, never on the
//! order they come in or on ids, so every node builds the same table for
//! the same endpoints and a flow that moves between nodes (ECMP) keeps its
//! backend.

use std::ops::Range;

/// Table sizes: primes, each about twice the one before. A frontend gets
/// the smallest that is at least [`SLOTS_PER_BACKEND`] × its backend count,
/// so memory grows with backends, not with the number of frontends.
pub const TABLE_SIZES: [u32; 9] = [251, 509, 1021, 2039, 4093, 8191, 16381, 32749, 65521];

/// Default cap on a table's size (`--maglev-table-size`).
pub const DEFAULT_MAX_TABLE_SIZE: u32 = 16_381;

/// Slots per backend the size is chosen for: each backend's share is then
/// within 1% of 1/N (a count differs from M/N by less than one slot).
const SLOTS_PER_BACKEND: u64 = 100;

/// The table size for `backends` backends: the smallest of [`TABLE_SIZES`]
/// with room for [`SLOTS_PER_BACKEND`] each, at most `max` (itself one of
/// [`TABLE_SIZES`]).
pub fn table_size(backends: usize, max: u32) -> u32 {
    let wanted = SLOTS_PER_BACKEND * backends as u64;
    TABLE_SIZES
        .iter()
        .copied()
        .find(|&m| u64::from(m) >= wanted)
        .unwrap_or(TABLE_SIZES[TABLE_SIZES.len() - 1])
        .min(max)
}

/// Whether `size` may be used as `--maglev-table-size`.
pub fn is_table_size(size: u32) -> bool {
    TABLE_SIZES.contains(&size)
}

/// A backend as Maglev sees it: the identity its permutation is derived
/// from, and the value its slots hold (its backend id).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Member {
    /// Address and port, e.g. `(u32::from(ip) as u64) << 16 | port`.
    pub identity: u64,
    pub id: u32,
}

/// The identity of backend `addr:port`, the same on every node: an IPv4
/// backend's address and port as they are; an IPv6 backend's folded into 64
/// bits by the hash its permutation is drawn with (two IPv6 backends of one
/// frontend collide, one then taking no slot, with a chance of 2⁻⁶⁴; the
/// two families never share a table).
pub fn identity(addr: std::net::IpAddr, port: u16) -> u64 {
    match addr {
        std::net::IpAddr::V4(addr) => (u64::from(u32::from(addr)) << 16) | u64::from(port),
        std::net::IpAddr::V6(addr) => {
            let bits = u128::from(addr);
            let high = hash((bits >> 64) as u64, IPV6_SEED);
            hash(high ^ bits as u64, IPV6_SEED ^ u64::from(port))
        }
    }
}

/// The filled table of size `size` (a prime from [`TABLE_SIZES`]): slot →
/// backend id. Empty when there are no members. Duplicate identities count
/// once.
pub fn build(members: &[Member], size: u32) -> Vec<u32> {
    if members.is_empty() {
        return Vec::new();
    }
    let mut slots = vec![0; size as usize];
    build_into(members, &mut slots);
    slots
}

/// Fills `slots` (its length the table's size, a prime from
/// [`TABLE_SIZES`]) as [`build`] would; left as it is without members.
pub fn build_into(members: &[Member], slots: &mut [u32]) {
    let mut members = members.to_vec();
    members.sort_unstable();
    members.dedup_by_key(|m| m.identity);
    if members.is_empty() {
        return;
    }
    let size = slots.len() as u32;
    let m = size;
    // Where each member's permutation stands: slot = offset + j·skip (mod m).
    let mut cursors: Vec<(u32, u32)> = members
        .iter()
        .map(|member| {
            let offset = hash(member.identity, OFFSET_SEED) % u64::from(m);
            let skip = hash(member.identity, SKIP_SEED) % u64::from(m - 1) + 1;
            (offset as u32, skip as u32)
        })
        .collect();
    // Slots hold a member's index while the table fills, then its id.
    const FREE: u32 = u32::MAX;
    slots.fill(FREE);
    let mut filled = 0u32;
    'fill: loop {
        for (index, (position, skip)) in cursors.iter_mut().enumerate() {
            // m is prime and 0 < skip < m, so the permutation visits every
            // slot: a free one is found within m steps. Claiming and
            // stepping in one pass keeps the loop to one unpredictable
            // branch per probe (the table's build time is in it).
            loop {
                let slot = &mut slots[*position as usize];
                let free = *slot == FREE;
                if free {
                    *slot = index as u32;
                }
                // Both terms are below m: one subtraction, no division.
                *position += *skip;
                if *position >= m {
                    *position -= m;
                }
                if free {
                    break;
                }
            }
            filled += 1;
            if filled == size {
                break 'fill;
            }
        }
    }
    for slot in slots {
        *slot = members[*slot as usize].id;
    }
}

/// The tables of `jobs` (members, size), built on every CPU into `out`
/// (resized to hold them all, one after the other); returns where each
/// table lies in it. A full sync builds thousands, each independent, and
/// builds them into one buffer it keeps across its batches: tables
/// allocated one by one on short-lived threads went back to the system and
/// were faulted in again batch after batch (about 7% of a full sync).
pub fn build_all_into(jobs: &[(&[Member], u32)], out: &mut Vec<u32>) -> Vec<Range<usize>> {
    // A table of 10 backends takes tens of microseconds: a thread pays
    // off from a few of them.
    const MIN_PER_THREAD: usize = 8;
    let mut ranges = Vec::with_capacity(jobs.len());
    let mut end = 0;
    for (_, size) in jobs {
        ranges.push(end..end + *size as usize);
        end += *size as usize;
    }
    out.clear();
    out.resize(end, 0);
    let mut rest: &mut [u32] = out;
    let mut tasks: Vec<(&[Member], &mut [u32])> = Vec::with_capacity(jobs.len());
    for (members, size) in jobs {
        let (table, tail) = std::mem::take(&mut rest).split_at_mut(*size as usize);
        tasks.push((members, table));
        rest = tail;
    }
    crate::parallel::for_chunks_mut(&mut tasks, MIN_PER_THREAD, |chunk| {
        for (members, table) in chunk {
            build_into(members, table);
        }
    });
    ranges
}

const OFFSET_SEED: u64 = 0x243f_6a88_85a3_08d3;
const SKIP_SEED: u64 = 0x1319_8a2e_0370_7344;
const IPV6_SEED: u64 = 0xa409_3822_299f_31d0;

/// 64-bit mix (the SplitMix64 finaliser) of `value` under `seed`: two seeds
/// give two independent hashes of the same identity.
fn hash(value: u64, seed: u64) -> u64 {
    let mut x = value ^ seed;
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

#[cfg(test)]
mod tests {
    use std::{collections::BTreeMap, net::Ipv4Addr};

    use super::*;

    /// `n` backends 10.(i/250).(i%250).1:8080 with ids 100 + i.
    fn members(n: u32) -> Vec<Member> {
        (0..n)
            .map(|i| Member {
                identity: identity(
                    Ipv4Addr::new(10, (i / 250) as u8, (i % 250) as u8, 1).into(),
                    8080,
                ),
                id: 100 + i,
            })
            .collect()
    }

    fn shares(table: &[u32]) -> BTreeMap<u32, usize> {
        let mut counts = BTreeMap::new();
        for id in table {
            *counts.entry(*id).or_default() += 1;
        }
        counts
    }

    /// Fraction of slots whose backend differs between two tables.
    fn changed(a: &[u32], b: &[u32]) -> f64 {
        let moved = a.iter().zip(b).filter(|(x, y)| x != y).count();
        moved as f64 / a.len() as f64
    }

    #[test]
    fn size_is_the_smallest_rung_with_100_slots_per_backend_capped() {
        assert_eq!(table_size(0, DEFAULT_MAX_TABLE_SIZE), 251);
        assert_eq!(table_size(2, DEFAULT_MAX_TABLE_SIZE), 251);
        assert_eq!(table_size(3, DEFAULT_MAX_TABLE_SIZE), 509);
        assert_eq!(table_size(10, DEFAULT_MAX_TABLE_SIZE), 1021);
        assert_eq!(table_size(100, DEFAULT_MAX_TABLE_SIZE), 16381);
        assert_eq!(table_size(1000, DEFAULT_MAX_TABLE_SIZE), 16381);
        assert_eq!(table_size(1000, 65521), 65521);
        assert_eq!(table_size(10, 251), 251);
        assert!(is_table_size(16381) && !is_table_size(16384));
    }

    #[test]
    fn every_share_is_within_one_percent_of_even() {
        for n in [1, 2, 3, 7, 10, 33, 100, 163] {
            let size = table_size(n as usize, 65521);
            let table = build(&members(n), size);
            assert_eq!(table.len(), size as usize);
            let counts = shares(&table);
            assert_eq!(counts.len(), n as usize, "every backend has slots");
            let even = f64::from(size) / f64::from(n);
            for (id, count) in counts {
                let deviation = (count as f64 - even).abs() / even;
                assert!(
                    deviation <= 0.01,
                    "N={n}: backend {id} holds {count}, even {even:.1}"
                );
            }
        }
    }

    #[test]
    fn removing_one_backend_moves_about_its_own_share() {
        // Maglev trades some movement for evenness, more so when a backend
        // has few slots: measured 0.1045, 0.0231 and 0.0073 of M = 16381
        // against the minimum 1/N (0.1, 0.01, 0.001).
        for (n, bound) in [(10, 0.12), (100, 0.03), (1000, 0.01)] {
            let all = members(n);
            let before = build(&all, 16381);
            let after = build(&all[1..], 16381);
            let fraction = changed(&before, &after);
            // Its own slots must move; the rest should mostly stay.
            assert!(fraction >= 1.0 / f64::from(n) * 0.9, "N={n}: {fraction}");
            assert!(fraction <= bound, "N={n}: {fraction:.4} of the table moved");
            assert!(after.iter().all(|id| *id != all[0].id));
        }
    }

    #[test]
    fn adding_the_backend_back_restores_the_table_whatever_the_order() {
        let all = members(10);
        let before = build(&all, 1021);
        let mut shuffled: Vec<Member> = all[1..].to_vec();
        shuffled.reverse();
        shuffled.insert(4, all[0]);
        assert_eq!(build(&shuffled, 1021), before);
        assert_ne!(build(&all[1..], 1021), before);
    }

    #[test]
    fn no_members_no_table_and_duplicates_count_once() {
        assert!(build(&[], 251).is_empty());
        let one = members(1);
        let twice = [one[0], one[0]];
        assert_eq!(build(&twice, 251), vec![100; 251]);
    }

    #[test]
    fn building_in_parallel_gives_each_job_its_own_table_in_order() {
        // Enough jobs to be split over threads.
        let sets: Vec<Vec<Member>> = (1..=40).map(|n| members(n % 12 + 1)).collect();
        let jobs: Vec<(&[Member], u32)> = sets
            .iter()
            .enumerate()
            .map(|(i, m)| (m.as_slice(), TABLE_SIZES[i % 3]))
            .collect();
        // A buffer that held something else before.
        let mut out = vec![7; 5];
        let ranges = build_all_into(&jobs, &mut out);
        assert_eq!(ranges.len(), jobs.len());
        for ((members, size), range) in jobs.iter().zip(ranges) {
            assert_eq!(out[range], build(members, *size));
        }
        assert!(build_all_into(&[], &mut out).is_empty());
        assert!(out.is_empty());
    }

    #[test]
    fn ipv4_identities_are_address_and_port_and_ipv6_ones_differ_by_both() {
        let v4: std::net::IpAddr = "10.244.1.2".parse().unwrap();
        assert_eq!(identity(v4, 8080), 0x0af4_0102_1f90);
        let addr = |text: &str| text.parse::<std::net::IpAddr>().unwrap();
        let a = identity(addr("fd00:10:244::5"), 8080);
        assert_eq!(
            a,
            identity(addr("fd00:10:244::5"), 8080),
            "the same on every node"
        );
        assert_ne!(a, identity(addr("fd00:10:244::5"), 8081));
        assert_ne!(a, identity(addr("fd00:10:244::6"), 8080));
        // Differing only in the high half of the address.
        assert_ne!(a, identity(addr("fd01:10:244::5"), 8080));
        // A table of IPv6 backends shares its slots as an IPv4 one does.
        let members: Vec<Member> = (0..10u32)
            .map(|i| Member {
                identity: identity(addr(&format!("fd00:10:244::{:x}", i + 1)), 8080),
                id: i,
            })
            .collect();
        let table = build(&members, 1021);
        let counts = shares(&table);
        assert_eq!(counts.len(), 10);
        assert!(
            counts.values().all(|n| (102..=103).contains(n)),
            "{counts:?}"
        );
    }
}
