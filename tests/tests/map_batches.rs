//! How the agent reaches many map entries at once. A full sync writes its
//! entries in batches (`dataplane::batch`): every entry lands, a single one
//! goes as one update, and when the kernel stops a batch (here: a full map)
//! the rest is written one by one so each failure names its own key;
//! many batches go out from several threads. The
//! Maglev arena is written through a window of mapped pages
//! (`maglev_arena::mapped`).

use std::os::fd::OwnedFd;

use aya::maps::{Array, HashMap, Map, MapData, PerCpuArray};
use kxdp_testbed::privileged::require_root;
use proxy_common::maps::FrontendStats;
use proxy_userspace::dataplane::{
    batch,
    bpf_syscall::{self, MapSpec},
};

const BPF_MAP_TYPE_HASH: u32 = 1;
const BPF_MAP_TYPE_ARRAY: u32 = 2;
const BPF_MAP_TYPE_PERCPU_ARRAY: u32 = 6;

fn map(map_type: u32, value_size: u32, max_entries: u32) -> MapData {
    let fd: OwnedFd = bpf_syscall::map_create(&MapSpec {
        map_type,
        key_size: 4,
        value_size,
        max_entries,
        flags: 0,
        inner_map: None,
    })
    .unwrap_or_else(|e| panic!("BPF_MAP_CREATE: {e}"));
    MapData::from_fd(fd).expect("a map")
}

#[test]
fn a_batch_writes_every_entry_and_names_each_one_that_does_not_fit() {
    require_root("the map batch test");
    let data = map(BPF_MAP_TYPE_HASH, 8, 6000);
    let mut hash: HashMap<MapData, u32, u64> =
        HashMap::try_from(Map::HashMap(data)).expect("a hash map");
    // Over two batches, and 500 more than the map holds.
    let entries: Vec<(u32, u64)> = (0..6500u32).map(|k| (k, u64::from(k) * 3)).collect();
    let failed = batch::put_all(&mut hash, "TEST", &entries);
    let failed_keys: Vec<u32> = failed.iter().map(|(k, _)| *k).collect();
    assert_eq!(failed_keys, (6000..6500).collect::<Vec<_>>());
    assert!(failed.iter().all(|(_, e)| e.map == "TEST"));
    for (key, value) in &entries[..6000] {
        assert_eq!(hash.get(key, 0).expect("written"), *value, "key {key}");
    }
    // One entry alone, replacing a value.
    assert!(batch::put_all(&mut hash, "TEST", &[(7, 1)]).is_empty());
    assert_eq!(hash.get(&7, 0).unwrap(), 1);
}

#[test]
fn an_array_is_written_in_batches_and_read_back_a_batch_at_a_time() {
    require_root("the map batch test");
    let data = map(BPF_MAP_TYPE_ARRAY, 8, 20_000);
    let mut array: Array<MapData, u64> = Array::try_from(Map::Array(data)).expect("an array");
    // Slots spread over several read batches, the last one included, and
    // one past the end.
    let entries: Vec<(u32, u64)> = [0u32, 4_095, 4_096, 9_000, 19_999, 20_000]
        .iter()
        .map(|&k| (k, u64::from(k) + 1))
        .collect();
    let failed = batch::put_all_indexed(&mut array, "TEST", &entries);
    assert_eq!(failed.iter().map(|(k, _)| *k).collect::<Vec<_>>(), [20_000]);
    let mut kept = Vec::new();
    batch::read_each(&array, |k, v| {
        if v != 0 {
            kept.push((k, v));
        }
    })
    .expect("read back");
    assert_eq!(kept, entries[..5]);
}

#[test]
fn a_full_syncs_batches_go_out_on_every_cpu_and_still_name_what_does_not_fit() {
    require_root("the map batch test");
    // Ten batches, enough to be split over threads, 4,000 more entries
    // than the map holds: which ones miss out depends on the threads'
    // order, but every entry is either written or named.
    let data = map(BPF_MAP_TYPE_HASH, 8, 36_000);
    let mut hash: HashMap<MapData, u32, u64> =
        HashMap::try_from(Map::HashMap(data)).expect("a hash map");
    let entries: Vec<(u32, u64)> = (0..40_000u32).map(|k| (k, u64::from(k) * 5)).collect();
    let failed = batch::put_all(&mut hash, "TEST", &entries);
    assert_eq!(failed.len(), 4_000);
    let failed_keys: std::collections::HashSet<u32> = failed.iter().map(|(k, _)| *k).collect();
    assert_eq!(failed_keys.len(), 4_000);
    for (key, value) in &entries {
        match hash.get(key, 0) {
            Ok(found) => {
                assert_eq!(found, *value, "key {key}");
                assert!(!failed_keys.contains(key), "key {key} written and named");
            }
            Err(_) => assert!(failed_keys.contains(key), "key {key} lost unnamed"),
        }
    }
}

#[test]
fn per_cpu_counters_are_zeroed_in_a_batch_on_every_cpu() {
    require_root("the map batch test");
    let data = map(BPF_MAP_TYPE_PERCPU_ARRAY, 16, 64);
    let mut stats: PerCpuArray<MapData, FrontendStats> =
        PerCpuArray::try_from(Map::PerCpuArray(data)).expect("a per-CPU array");
    let cpus = aya::util::nr_cpus().expect("CPUs");
    let busy = FrontendStats {
        packets: 5,
        bytes: 500,
    };
    for index in 0..64 {
        stats
            .set(index, vec![busy; cpus].try_into().unwrap(), 0)
            .expect("set");
    }
    let zeroed: Vec<u32> = (0..64).filter(|i| i % 3 == 0).collect();
    assert!(batch::zero_all(&mut stats, "STATS", &zeroed).is_empty());
    assert!(
        batch::zero_all(&mut stats, "STATS", &[64]).len() == 1,
        "out of range"
    );
    for index in 0..64 {
        let values = stats.get(&index, 0).expect("read");
        let want = if index % 3 == 0 {
            FrontendStats::default()
        } else {
            busy
        };
        assert!(values.iter().all(|v| *v == want), "index {index}");
    }
}

/// The arena is seen through a window of its pages (what the agent's RSS
/// holds of it): entries anywhere in it are written and read back right,
/// the window moving as needed, and the kernel's view (a syscall lookup)
/// agrees.
#[test]
fn an_array_larger_than_its_window_is_written_and_read_everywhere() {
    use aya::maps::Array;
    use proxy_common::maps::MAGLEV_ARENA_FLAGS;
    use proxy_userspace::dataplane::maglev_arena::mapped::MappedArray;
    use std::os::fd::AsFd;

    require_root("the map batch test");
    let entries = 5 * 512 + 100;
    let fd: OwnedFd = bpf_syscall::map_create(&MapSpec {
        map_type: 2, // BPF_MAP_TYPE_ARRAY
        key_size: 4,
        value_size: 8,
        max_entries: entries,
        flags: MAGLEV_ARENA_FLAGS,
        inner_map: None,
    })
    .unwrap_or_else(|e| panic!("BPF_MAP_CREATE: {e}"));
    // A window of one page (512 entries).
    let mapped = MappedArray::new(fd.as_fd(), entries, 512).expect("mapped");
    let value = |i: u32| u64::from(i) * 0x1_0001 + 7;
    // Runs that cross page and window bounds, then back to the start, and
    // the very end.
    for (start, count) in [(0, 10), (500, 30), (1020, 1100), (3, 4), (entries - 9, 9)] {
        let values: Vec<u64> = (start..start + count).map(value).collect();
        mapped.write(start, &values).expect("write");
        assert_eq!(mapped.read(start, count).expect("read"), values);
    }
    assert!(mapped.read(entries - 1, 2).is_err(), "beyond the end");
    let array: Array<MapData, u64> =
        Array::try_from(Map::Array(MapData::from_fd(fd).unwrap())).unwrap();
    for i in [0, 9, 500, 529, 1020, 1600, 2119, 3, 6, entries - 1] {
        assert_eq!(array.get(&i, 0).unwrap(), value(i), "entry {i}");
        assert_eq!(mapped.get(i).unwrap(), value(i), "entry {i}");
    }
    assert_eq!(array.get(&12, 0).unwrap(), 0, "never written");
    // Unmapped (as the agent does after a full sync), none of the array's
    // pages stay mapped, and the next access maps what it needs again.
    let mappings = || {
        std::fs::read_to_string("/proc/self/maps")
            .expect("/proc/self/maps")
            .lines()
            .filter(|line| line.contains("anon_inode:bpf-map"))
            .count()
    };
    assert_eq!(mappings(), 1, "one window mapped");
    mapped.unmap();
    assert_eq!(mappings(), 0, "nothing mapped after unmap");
    assert_eq!(mapped.get(1600).unwrap(), value(1600));
    assert_eq!(mappings(), 1, "mapped again on access");
}
