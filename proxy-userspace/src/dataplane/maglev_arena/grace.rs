//! Waiting for running programs: an update of an array of maps returns
//! only after every non-sleepable BPF program running when it began has
//! finished (the kernel's `maybe_wait_bpf_programs`, an RCU grace period,
//! on every kernel kxdp supports). A private one-slot array of maps serves
//! only as that barrier. Freed arena blocks wait for one: a background
//! thread runs them back to back, so a sync never waits, and several
//! releases share one wait.

use std::{
    io,
    os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd},
    sync::{
        atomic::{AtomicU64, Ordering},
        mpsc, Arc,
    },
    thread,
};

use crate::dataplane::bpf_syscall::{self, MapSpec};

const MAP_ARRAY: u32 = 2;
const MAP_ARRAY_OF_MAPS: u32 = 12;

fn one_slot(map_type: u32, inner_map: Option<BorrowedFd<'_>>) -> MapSpec<'_> {
    MapSpec {
        map_type,
        key_size: 4,
        value_size: 4,
        max_entries: 1,
        flags: 0,
        inner_map,
    }
}

/// The barrier map and the map its one slot takes.
struct Barrier {
    outer: OwnedFd,
    inner: OwnedFd,
}

impl Barrier {
    fn new() -> io::Result<Self> {
        let inner = bpf_syscall::map_create(&one_slot(MAP_ARRAY, None))?;
        let outer = bpf_syscall::map_create(&one_slot(MAP_ARRAY_OF_MAPS, Some(inner.as_fd())))?;
        Ok(Self { outer, inner })
    }

    /// Returns once every program running when it was called has finished.
    fn wait(&self) -> io::Result<()> {
        let fd = self.inner.as_raw_fd() as u32;
        // SAFETY: an array of maps: `u32` key, an inner map fd as value.
        unsafe { bpf_syscall::map_update_elem(self.outer.as_fd(), &0u32, &fd) }
    }
}

/// Grace periods on demand, numbered by epoch.
pub struct GracePeriods {
    barrier: Arc<Barrier>,
    /// Epochs asked for so far.
    asked: u64,
    /// The last epoch whose grace period has ended.
    ended: Arc<AtomicU64>,
    requests: mpsc::Sender<u64>,
}

impl GracePeriods {
    pub fn new() -> io::Result<Self> {
        let barrier = Arc::new(Barrier::new()?);
        let ended = Arc::new(AtomicU64::new(0));
        let (requests, waiting) = mpsc::channel::<u64>();
        let (thread_barrier, thread_ended) = (barrier.clone(), ended.clone());
        thread::Builder::new()
            .name("kxdp-grace".into())
            .spawn(move || {
                while let Ok(mut epoch) = waiting.recv() {
                    // Every epoch asked for before this wait began is covered.
                    epoch = waiting.try_iter().fold(epoch, u64::max);
                    match thread_barrier.wait() {
                        Ok(()) => thread_ended.fetch_max(epoch, Ordering::Release),
                        Err(e) => {
                            tracing::warn!(error = %e, "waiting for running programs failed; freed Maglev blocks wait for the next try");
                            continue;
                        }
                    };
                }
            })?;
        Ok(Self {
            barrier,
            asked: 0,
            ended,
            requests,
        })
    }

    /// A new epoch whose grace period begins after this call; its end is
    /// waited for in the background.
    pub fn ask(&mut self) -> u64 {
        self.asked += 1;
        // The thread lives as long as the sender; a send cannot fail.
        let _ = self.requests.send(self.asked);
        self.asked
    }

    /// The last epoch whose grace period has ended.
    pub fn ended(&self) -> u64 {
        self.ended.load(Ordering::Acquire)
    }

    /// Waits here for a grace period beginning now; returns its epoch,
    /// which covers every release until now.
    pub fn wait_now(&mut self) -> io::Result<u64> {
        self.asked += 1;
        let epoch = self.asked;
        self.barrier.wait()?;
        self.ended.fetch_max(epoch, Ordering::Release);
        Ok(epoch)
    }
}
