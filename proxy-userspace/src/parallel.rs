//! Independent work spread over the machine's CPUs: a large manifest's
//! documents, a full sync's Maglev tables.

use std::{num::NonZeroUsize, sync::OnceLock};

/// The CPUs this process may use, counted once (the count reads the
/// cgroup's CPU limit and the affinity mask).
fn cpus() -> usize {
    static CPUS: OnceLock<usize> = OnceLock::new();
    *CPUS.get_or_init(|| std::thread::available_parallelism().map_or(1, NonZeroUsize::get))
}

/// `work` applied to consecutive chunks of `items`, one chunk per CPU but
/// none of fewer than `min_per_chunk` items (a thread would cost more than
/// it saves), the results in the chunks' order. With one chunk, it runs on
/// the calling thread.
pub fn map_chunks<T, R, F>(items: &[T], min_per_chunk: usize, work: F) -> Vec<R>
where
    T: Sync,
    R: Send,
    F: Fn(&[T]) -> R + Sync,
{
    let chunks = chunk_count(items.len(), min_per_chunk);
    if chunks == 1 {
        return vec![work(items)];
    }
    let work = &work;
    std::thread::scope(|scope| {
        let handles: Vec<_> = items
            .chunks(items.len().div_ceil(chunks))
            .map(|chunk| scope.spawn(move || work(chunk)))
            .collect();
        handles
            .into_iter()
            .map(|handle| match handle.join() {
                Ok(result) => result,
                // The work does not panic; were it to, the panic goes on.
                Err(panic) => std::panic::resume_unwind(panic),
            })
            .collect()
    })
}

/// `work` applied to consecutive chunks of `items`, as [`map_chunks`]
/// splits them, with each chunk lent mutably (work that writes its results
/// into the items, for example into slices of one buffer).
pub fn for_chunks_mut<T, F>(items: &mut [T], min_per_chunk: usize, work: F)
where
    T: Send,
    F: Fn(&mut [T]) + Sync,
{
    let chunks = chunk_count(items.len(), min_per_chunk);
    if chunks == 1 {
        return work(items);
    }
    let work = &work;
    let size = items.len().div_ceil(chunks);
    std::thread::scope(|scope| {
        for chunk in items.chunks_mut(size) {
            scope.spawn(move || work(chunk));
        }
    });
}

/// How many chunks `len` items are split into: one per CPU, none of fewer
/// than `min_per_chunk` items (a thread would cost more than it saves).
fn chunk_count(len: usize, min_per_chunk: usize) -> usize {
    let most = len / min_per_chunk.max(1);
    // Asked second: counting the CPUs reads cgroup files, a single change's
    // sync should not.
    if most < 2 {
        1
    } else {
        cpus().min(most)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_item_is_worked_on_once_in_order() {
        let items: Vec<u32> = (0..10_000).collect();
        let parts = map_chunks(&items, 1, |chunk| chunk.to_vec());
        assert_eq!(parts.len(), cpus().min(items.len()));
        assert_eq!(parts.concat(), items);
    }

    #[test]
    fn chunks_lent_mutably_cover_every_item_once() {
        let mut items: Vec<u32> = (0..10_000).collect();
        for_chunks_mut(&mut items, 1, |chunk| {
            for item in chunk {
                *item *= 2;
            }
        });
        assert!(items.iter().enumerate().all(|(i, v)| *v == 2 * i as u32));
    }

    #[test]
    fn few_items_stay_on_the_calling_thread() {
        let caller = std::thread::current().id();
        let parts = map_chunks(&[1, 2, 3], 64, |chunk| {
            (std::thread::current().id(), chunk.len())
        });
        assert_eq!(parts, vec![(caller, 3)]);
        let empty: Vec<usize> = map_chunks(&[] as &[u8], 64, <[u8]>::len);
        assert_eq!(empty, vec![0]);
    }
}
