//! A full sync writes its entries in batches (`dataplane::batch`): every
//! entry lands, a single one goes as one update, and when the kernel stops
//! a batch (here: a full map) the rest is written one by one so each
//! failure names its own key.

use std::os::fd::OwnedFd;

use aya::maps::{HashMap, Map, MapData, PerCpuArray};
use kxdp_testbed::privileged::require_root;
use proxy_common::maps::FrontendStats;
use proxy_userspace::dataplane::{
    batch,
    bpf_syscall::{self, MapSpec},
};

const BPF_MAP_TYPE_HASH: u32 = 1;
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
