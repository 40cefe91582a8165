//! Many entries of a hash map written in few calls (`BPF_MAP_UPDATE_BATCH`,
//! every kernel kxdp runs on has it), so a full sync of 30,000 Services
//! costs tens of syscalls instead of hundreds of thousands. A single entry
//! is written as one update, and a batch the kernel stops in is finished
//! entry by entry, so each failure names its own entry.

use std::os::fd::AsFd;

use aya::{
    maps::{Array, HashMap, IterableMap, MapData, PerCpuArray, PerCpuValues},
    Pod,
};

use super::bpf_syscall;
use crate::sync::store::StoreError;

/// Entries per batch call: the kernel copies each batch in whole.
const BATCH: usize = 4096;

/// Batch calls per thread, at least: fewer are not worth a thread (a
/// single change's sync writes on the calling thread).
const MIN_BATCHES_PER_THREAD: usize = 4;

/// Hands `items` of `map` to `batch` a chunk at a time (a single item goes to
/// `one` directly) and to `one` whatever a batch did not write (`batch`
/// says how many it wrote from the start of its chunk); returns the items
/// `one` could not write, with why.
///
/// The batches go out on every CPU: the kernel's maps take concurrent
/// updates, and a full sync's 300,000 backends written from one thread
/// were its longest step that left a core idle.
fn in_batches<M: Sync, T: Copy + Sync>(
    map: &mut M,
    items: &[T],
    name: &'static str,
    batch: impl Fn(&M, &[T]) -> usize + Sync,
    one: impl Fn(&mut M, &T) -> Result<(), String>,
) -> Vec<(T, StoreError)> {
    let chunks: Vec<&[T]> = items.chunks(BATCH).collect();
    let shared: &M = map;
    let written: Vec<usize> =
        crate::parallel::map_chunks(&chunks, MIN_BATCHES_PER_THREAD, |part| {
            part.iter()
                .map(|chunk| match chunk.len() {
                    1 => 0,
                    len => batch(shared, chunk).min(len),
                })
                .collect::<Vec<_>>()
        })
        .concat();
    let mut failures = Vec::new();
    for (chunk, written) in chunks.iter().zip(written) {
        for item in &chunk[written..] {
            if let Err(reason) = one(map, item) {
                failures.push((*item, StoreError { map: name, reason }));
            }
        }
    }
    failures
}

/// How many entries a batch call wrote: where it stopped is not said on
/// every error, so then all again, one by one.
fn written(result: std::io::Result<usize>) -> usize {
    result.unwrap_or(0)
}

/// One `BPF_MAP_UPDATE_BATCH` of `chunk` into `map`: how many entries it
/// wrote from the start.
///
/// # Safety
///
/// `K` and `V` are the map's key and value types.
unsafe fn update_batch<K: Pod, V: Pod>(map: &MapData, chunk: &[(K, V)]) -> usize {
    let keys: Vec<K> = chunk.iter().map(|(k, _)| *k).collect();
    let values: Vec<V> = chunk.iter().map(|(_, v)| *v).collect();
    // SAFETY: the caller's word on `K` and `V`.
    written(unsafe { bpf_syscall::map_update_batch(map.fd().as_fd(), &keys, &values) })
}

/// Writes `entries` into `map` (named `name` in errors); returns the keys
/// that could not be written, with why.
pub fn put_all<K: Pod + Sync, V: Pod + Sync>(
    map: &mut HashMap<MapData, K, V>,
    name: &'static str,
    entries: &[(K, V)],
) -> Vec<(K, StoreError)> {
    let failures = in_batches(
        map,
        entries,
        name,
        // SAFETY: `K` and `V` are the map's key and value types (aya
        // checked their sizes when it typed the map).
        |map, chunk| unsafe { update_batch(map.map(), chunk) },
        |map, (key, value)| map.insert(key, value, 0).map_err(|e| e.to_string()),
    );
    failures.into_iter().map(|((k, _), e)| (k, e)).collect()
}

/// [`put_all`] for an array: `entries` are (index, value).
pub fn put_all_indexed<V: Pod + Sync>(
    map: &mut Array<MapData, V>,
    name: &'static str,
    entries: &[(u32, V)],
) -> Vec<(u32, StoreError)> {
    let failures = in_batches(
        map,
        entries,
        name,
        // SAFETY: `u32` and `V` are the array's key and value types (aya
        // checked the value size when it typed the map).
        |map, chunk| unsafe { update_batch(map.map(), chunk) },
        |map, (index, value)| map.set(*index, value, 0).map_err(|e| e.to_string()),
    );
    failures.into_iter().map(|((k, _), e)| (k, e)).collect()
}

/// Hands every slot of `map` to `each` with its index, read a batch of
/// `BATCH` slots at a time (`BPF_MAP_LOOKUP_BATCH`), so reading a large
/// array holds one batch, never the whole array.
pub fn read_each<V: Pod + Default>(
    map: &Array<MapData, V>,
    mut each: impl FnMut(u32, V),
) -> std::io::Result<()> {
    let fd = map.map().fd().as_fd();
    let mut keys = vec![0u32; BATCH];
    let mut values = vec![V::default(); BATCH];
    let mut after = None;
    // Bounded by the map's size: every call reads up to a batch.
    for _ in 0..=map.len() as usize / BATCH {
        // SAFETY: `V` is the array's value type (aya checked its size).
        let (read, next) =
            unsafe { bpf_syscall::map_lookup_batch(fd, after, &mut keys, &mut values) }?;
        for (key, value) in keys[..read].iter().zip(&values[..read]) {
            each(*key, *value);
        }
        match next {
            Some(token) => after = Some(token),
            None => break,
        }
    }
    Ok(())
}

/// Sets the per-CPU values at `indexes` of `map` (named `name` in errors)
/// to `V::default()` on every CPU; returns the indexes that could not be
/// set, with why.
pub fn zero_all<V: Pod + Default + Sync>(
    map: &mut PerCpuArray<MapData, V>,
    name: &'static str,
    indexes: &[u32],
) -> Vec<(u32, StoreError)> {
    let cpus = match aya::util::nr_cpus() {
        Ok(cpus) => cpus,
        Err((_, e)) => {
            let error = |i: &u32| {
                (
                    *i,
                    StoreError {
                        map: name,
                        reason: e.to_string(),
                    },
                )
            };
            return indexes.iter().map(error).collect();
        }
    };
    in_batches(
        map,
        indexes,
        name,
        |map, chunk| {
            let zeroes = vec![V::default(); chunk.len() * cpus];
            let fd = map.map().fd().as_fd();
            // SAFETY: `u32` indexes, and one `V` (8-byte aligned in every
            // map kxdp zeroes) per possible CPU per index.
            written(unsafe { bpf_syscall::map_update_batch(fd, chunk, &zeroes) })
        },
        |map, index| {
            let zeroes =
                PerCpuValues::try_from(vec![V::default(); cpus]).map_err(|e| e.to_string())?;
            map.set(*index, zeroes, 0).map_err(|e| e.to_string())
        },
    )
}
