//! A BPF array created with `BPF_F_MMAPABLE`, seen by the agent through a
//! window of its pages mapped shared: entries read and written as plain
//! memory, no syscall per entry. The kernel maps every page of a mapping
//! at once, and mapped pages count in the process's RSS although they are
//! the map's own memory, so a large array is mapped a window at a time
//! (moved when an access falls outside it: a full sync writes blocks in
//! order, so it moves a few dozen times; a single change maps just the
//! pages it touches), a small one whole. The agent unmaps both arrays
//! after a full sync, whose windows would otherwise stay resident.

use std::{
    cell::RefCell,
    io,
    os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd},
    ptr::NonNull,
    sync::atomic::{AtomicU64, Ordering},
};

/// The 64-bit entries of an mmapable array.
pub struct MappedArray {
    map: OwnedFd,
    /// Entries in the array.
    len: u32,
    /// Entries a window spans when accesses go on in order (more when one
    /// access needs more).
    window: u32,
    /// Entries per page: windows start on a page.
    page: u32,
    view: RefCell<Option<View>>,
}

/// One mapping of entries `first..first + count`.
struct View {
    first: u32,
    count: u32,
    base: NonNull<AtomicU64>,
    bytes: usize,
}

// SAFETY: the mappings are plain shared memory, owned by this value alone;
// every access to the entries goes through `AtomicU64`.
unsafe impl Send for MappedArray {}

impl MappedArray {
    /// The `entries` entries of the array behind `map`, seen `window`
    /// entries at a time.
    pub fn new(map: BorrowedFd<'_>, entries: u32, window: u32) -> io::Result<Self> {
        // SAFETY: sysconf has no memory effects.
        let page_bytes = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) })
            .map_err(|_| io::Error::other("no page size"))?;
        let page = (page_bytes / size_of::<u64>()) as u32;
        Ok(Self {
            map: map.try_clone_to_owned()?,
            len: entries,
            window: window.max(page),
            page,
            view: RefCell::new(None),
        })
    }

    /// Entries in the array.
    pub fn entries(&self) -> u32 {
        self.len
    }

    /// Runs `f` on entries `start..start + count`, mapping them first when
    /// the window does not hold them.
    fn with<R>(&self, start: u32, count: u32, f: impl FnOnce(&[AtomicU64]) -> R) -> io::Result<R> {
        let end = start
            .checked_add(count)
            .filter(|end| *end <= self.len)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "beyond the array"))?;
        let mut view = self.view.borrow_mut();
        let covered = view
            .as_ref()
            .is_some_and(|v| v.first <= start && end <= v.first + v.count);
        if !covered {
            // Going on past the window (a full sync writing blocks in
            // order, a restart reading them) maps a whole window; an access
            // elsewhere (one change) maps only its own pages, which is
            // quicker: the kernel fills every page of a mapping at once.
            // The first access after [`Self::unmap`] maps only its pages.
            let onward = view.as_ref().is_some_and(|v| {
                let past = v.first + v.count;
                start >= past && start - past < self.window
            });
            // The old mapping goes first: at most one is mapped.
            *view = None;
            let first = start - start % self.page;
            let wanted = if onward {
                (end - first).max(self.window)
            } else {
                (end - first).div_ceil(self.page) * self.page
            };
            let count = wanted.min(self.len - first);
            *view = Some(View::map(self.map.as_fd(), first, count)?);
        }
        let Some(v) = view.as_ref() else {
            return Err(io::Error::other("no view"));
        };
        // SAFETY: the view maps `count` entries from `first` (page-aligned,
        // so aligned for `AtomicU64`); it lives while `view` is borrowed.
        let entries = unsafe { std::slice::from_raw_parts(v.base.as_ptr(), v.count as usize) };
        Ok(f(
            &entries[(start - v.first) as usize..(end - v.first) as usize]
        ))
    }

    /// Unmaps the window, so its pages stop counting in the agent's RSS;
    /// the next access maps what it needs again.
    pub fn unmap(&self) {
        *self.view.borrow_mut() = None;
    }

    /// Entry `index`.
    pub fn get(&self, index: u32) -> io::Result<u64> {
        self.with(index, 1, |e| e[0].load(Ordering::Acquire))
    }

    /// Entries `start..start + count`.
    pub fn read(&self, start: u32, count: u32) -> io::Result<Vec<u64>> {
        self.with(start, count, |e| {
            e.iter().map(|e| e.load(Ordering::Acquire)).collect()
        })
    }

    /// Writes `values` from `start` on, in order, each entry in one store;
    /// a program reading meanwhile sees every entry either old or new.
    pub fn write(&self, start: u32, values: &[u64]) -> io::Result<()> {
        self.with(start, values.len() as u32, |entries| {
            for (entry, value) in entries.iter().zip(values) {
                entry.store(*value, Ordering::Release);
            }
        })
    }
}

impl View {
    fn map(map: BorrowedFd<'_>, first: u32, count: u32) -> io::Result<Self> {
        let bytes = count as usize * size_of::<u64>();
        let offset = libc::off_t::from(first) * size_of::<u64>() as libc::off_t;
        // SAFETY: a new shared mapping of the map's pages from `offset`, at
        // an address the kernel picks; nothing else is touched.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                map.as_raw_fd(),
                offset,
            )
        };
        if addr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let base = NonNull::new(addr.cast::<AtomicU64>()).ok_or(io::Error::other("mapped at 0"))?;
        Ok(Self {
            first,
            count,
            base,
            bytes,
        })
    }
}

impl Drop for View {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping `map` made; no reference into
        // it outlives the view (they are lent only within `with`).
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.bytes) };
    }
}
