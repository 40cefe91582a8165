//! Many entries of a hash map written in few calls (`BPF_MAP_UPDATE_BATCH`,
//! every kernel kxdp runs on has it), so a full sync of 30,000 Services
//! costs tens of syscalls instead of hundreds of thousands. A single entry
//! is written as one update, and a batch the kernel stops in is finished
//! entry by entry, so each failure names its own entry.

use std::os::fd::AsFd;

use aya::{
    maps::{HashMap, IterableMap, MapData, PerCpuArray, PerCpuValues},
    Pod,
};

use super::bpf_syscall;
use crate::sync::store::StoreError;

/// Entries per batch call: the kernel copies each batch in whole.
const BATCH: usize = 4096;

/// Writes `entries` into `map` (named `name` in errors); returns the keys
/// that could not be written, with why.
pub fn put_all<K: Pod, V: Pod>(
    map: &mut HashMap<MapData, K, V>,
    name: &'static str,
    entries: &[(K, V)],
) -> Vec<(K, StoreError)> {
    let mut failures = Vec::new();
    for chunk in entries.chunks(BATCH) {
        let written = if chunk.len() == 1 {
            0
        } else {
            batch(map, chunk)
        };
        for (key, value) in &chunk[written..] {
            if let Err(e) = map.insert(key, value, 0) {
                failures.push((
                    *key,
                    StoreError {
                        map: name,
                        reason: e.to_string(),
                    },
                ));
            }
        }
    }
    failures
}

/// One batch update of `chunk`; how many of its entries it wrote (the
/// kernel stops at the first it cannot write).
fn batch<K: Pod, V: Pod>(map: &HashMap<MapData, K, V>, chunk: &[(K, V)]) -> usize {
    let keys: Vec<K> = chunk.iter().map(|(k, _)| *k).collect();
    let values: Vec<V> = chunk.iter().map(|(_, v)| *v).collect();
    let fd = map.map().fd().as_fd();
    // SAFETY: `K` and `V` are the map's key and value types (aya checked
    // their sizes when it typed the map).
    match unsafe { bpf_syscall::map_update_batch(fd, &keys, &values) } {
        Ok(written) => written.min(chunk.len()),
        // Where it stopped is not said on every error: all again, one by one.
        Err(_) => 0,
    }
}

/// Sets the per-CPU values at `indexes` of `map` (named `name` in errors)
/// to `V::default()` on every CPU; returns the indexes that could not be
/// set, with why.
pub fn zero_all<V: Pod + Default>(
    map: &mut PerCpuArray<MapData, V>,
    name: &'static str,
    indexes: &[u32],
) -> Vec<(u32, StoreError)> {
    let error = |reason: String| StoreError { map: name, reason };
    let cpus = match aya::util::nr_cpus() {
        Ok(cpus) => cpus,
        Err((_, e)) => return indexes.iter().map(|i| (*i, error(e.to_string()))).collect(),
    };
    let mut failures = Vec::new();
    for chunk in indexes.chunks(BATCH) {
        let written = if chunk.len() == 1 {
            0
        } else {
            let zeroes = vec![V::default(); chunk.len() * cpus];
            let fd = map.map().fd().as_fd();
            // SAFETY: `u32` indexes, and one `V` (8-byte aligned in every
            // map kxdp zeroes) per possible CPU per index.
            match unsafe { bpf_syscall::map_update_batch(fd, chunk, &zeroes) } {
                Ok(written) => written.min(chunk.len()),
                Err(_) => 0,
            }
        };
        for index in &chunk[written..] {
            let zeroes = PerCpuValues::try_from(vec![V::default(); cpus])
                .map_err(|e| error(e.to_string()))
                .and_then(|z| map.set(*index, z, 0).map_err(|e| error(e.to_string())));
            if let Err(e) = zeroes {
                failures.push((*index, e));
            }
        }
    }
    failures
}
