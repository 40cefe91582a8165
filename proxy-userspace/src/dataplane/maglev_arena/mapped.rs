//! A BPF array created with `BPF_F_MMAPABLE`, mapped into the agent: its
//! entries read and written as plain memory, shared with the programs.

use std::{
    io,
    os::fd::{AsRawFd, BorrowedFd},
    ptr::NonNull,
    sync::atomic::{AtomicU64, Ordering},
};

/// The 64-bit entries of an mmapable array, mapped shared.
pub struct MappedArray {
    base: NonNull<AtomicU64>,
    len: usize,
    bytes: usize,
}

// SAFETY: the mapping is plain shared memory; every access goes through
// `AtomicU64`.
unsafe impl Send for MappedArray {}

impl MappedArray {
    /// Maps the `entries` 64-bit entries of the array behind `map`.
    pub fn new(map: BorrowedFd<'_>, entries: u32) -> io::Result<Self> {
        let len = entries as usize;
        // SAFETY: sysconf has no memory effects.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) })
            .map_err(|_| io::Error::other("no page size"))?;
        let bytes = (len * size_of::<u64>()).div_ceil(page) * page;
        // SAFETY: a new shared mapping of the map's pages, at an address
        // the kernel picks; nothing else is touched.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                map.as_raw_fd(),
                0,
            )
        };
        if addr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let base = NonNull::new(addr.cast::<AtomicU64>()).ok_or(io::Error::other("mapped at 0"))?;
        Ok(Self { base, len, bytes })
    }

    fn entries(&self) -> &[AtomicU64] {
        // SAFETY: `len` entries are mapped at `base` (page-aligned, so
        // aligned for `AtomicU64`) for as long as `self` lives.
        unsafe { std::slice::from_raw_parts(self.base.as_ptr(), self.len) }
    }

    pub fn len(&self) -> u32 {
        self.len as u32
    }

    /// Entry `index`; 0 beyond the end.
    pub fn get(&self, index: u32) -> u64 {
        self.entries()
            .get(index as usize)
            .map_or(0, |e| e.load(Ordering::Acquire))
    }

    /// Entries `start..start + count`, or `None` where the range runs past
    /// the end.
    pub fn read(&self, start: u32, count: u32) -> Option<Vec<u64>> {
        let range = start as usize..start as usize + count as usize;
        let entries = self.entries().get(range)?;
        Some(entries.iter().map(|e| e.load(Ordering::Acquire)).collect())
    }

    /// Writes `values` from `start` on, in order, each entry in one store;
    /// a program reading meanwhile sees every entry either old or new.
    /// The caller keeps `start + values.len()` within the array.
    pub fn write(&self, start: u32, values: &[u64]) {
        let entries = &self.entries()[start as usize..start as usize + values.len()];
        for (entry, value) in entries.iter().zip(values) {
            entry.store(*value, Ordering::Release);
        }
    }
}

impl Drop for MappedArray {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping `new` made; no reference into
        // it outlives `self`.
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.bytes) };
    }
}
