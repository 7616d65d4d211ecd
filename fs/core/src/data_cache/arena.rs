//! Memory for the data cache's blocks: one anonymous mapping of the cache's whole capacity,
//! which the kernel may back with transparent huge pages (MADV_HUGEPAGE; the default "madvise"
//! mode needs the advice), faulted in by a background thread when the cache is sized
//! (MADV_POPULATE_WRITE), as GPFS pins its pagepool at start. Without that, the first write of
//! each 4 KiB cost a page fault and a zeroing inside a request: writes ran at a third of their
//! speed until 256 MiB had been written (dd on a --direct-io mount; perf showed the time in
//! the kernel's clear_page under our copy into the cache).
use std::ptr::NonNull;
use std::sync::Arc;

use crate::format::BLOCK_SIZE;

/// Faulted in this much at a time, so that the thread can stop early.
const POPULATE_STEP: usize = 32 << 20;

pub(super) struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: plain memory; its arena hands out references only through `&`/`&mut Arena`, and the
// populating thread never reads or writes it (MADV_POPULATE_WRITE keeps what pages hold).
unsafe impl Send for Mapping {}
unsafe impl Sync for Mapping {}

impl Mapping {
    fn new(len: usize) -> Mapping {
        // SAFETY: a fresh private anonymous mapping; no existing memory is touched.
        let p = unsafe {
            libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_PRIVATE | libc::MAP_ANONYMOUS, -1, 0)
        };
        let Some(ptr) = NonNull::new(p.cast::<u8>()).filter(|_| p != libc::MAP_FAILED) else {
            // As for any allocation that fails: the process cannot go on without memory.
            let layout = std::alloc::Layout::from_size_align(len, 4096).unwrap_or(std::alloc::Layout::new::<u8>());
            std::alloc::handle_alloc_error(layout);
        };
        // SAFETY: advice on the mapping just made; failing only means no huge pages.
        unsafe { libc::madvise(p, len, libc::MADV_HUGEPAGE) };
        Mapping { ptr, len }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping `new` made; nothing borrowed from it outlives the
        // last owner.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// Blocks numbered 0..capacity (the cache's slots), zeroed until written.
#[derive(Default)]
pub(super) struct Arena {
    map: Option<Arc<Mapping>>,
}

impl Arena {
    /// Room for `blocks` blocks, faulted in by a background thread.
    pub(super) fn new(blocks: usize) -> Arena {
        if blocks == 0 {
            return Arena::default();
        }
        let map = Arc::new(Mapping::new(blocks * BLOCK_SIZE));
        let m = map.clone();
        let spawned = std::thread::Builder::new().name("mafs-data-cache".into()).spawn(move || {
            // Lowest priority: requests come first (on two cores, two nodes of a test
            // populating at full speed delayed their first requests by a second).
            // SAFETY: plain syscalls about this thread.
            unsafe { libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, 19) };
            let mut at = 0;
            // Stops once the arena is gone (only this thread holds the mapping then).
            while at < m.len && Arc::strong_count(&m) > 1 {
                let n = POPULATE_STEP.min(m.len - at);
                // SAFETY: a range of the live mapping this thread co-owns; it keeps contents.
                let rc = unsafe { libc::madvise(m.ptr.as_ptr().add(at).cast(), n, libc::MADV_POPULATE_WRITE) };
                if rc != 0 {
                    // An older kernel: pages are faulted in at first use instead.
                    break;
                }
                at += n;
            }
        });
        if let Err(e) = spawned {
            tracing::debug!("data cache memory is faulted in at first use: {e}");
        }
        Arena { map: Some(map) }
    }

    fn at(&self, i: usize) -> *mut u8 {
        let Some(m) = &self.map else { panic!("block {i} of a data cache with no room") };
        assert!((i + 1) * BLOCK_SIZE <= m.len, "block {i} is beyond the data cache's room");
        // SAFETY: in bounds of the mapping (checked above).
        unsafe { m.ptr.as_ptr().add(i * BLOCK_SIZE) }
    }

    /// The memory of block `i` (and the blocks after it) for a device write outside the
    /// cache's mutex, with the mapping kept alive by the caller's clone of it.
    pub(super) fn pinned(&self, i: usize) -> Option<(Arc<Mapping>, *const u8)> {
        let m = self.map.as_ref()?;
        Some((m.clone(), self.at(i)))
    }

    pub(super) fn block(&self, i: usize) -> &[u8] {
        // SAFETY: BLOCK_SIZE bytes of a live mapping this arena owns, borrowed with `self`.
        unsafe { std::slice::from_raw_parts(self.at(i), BLOCK_SIZE) }
    }

    /// Blocks `first..first + n`, one after another in memory.
    pub(super) fn run_mut(&mut self, first: usize, n: usize) -> &mut [u8] {
        if n == 0 {
            return &mut [];
        }
        // Checks that the last block is within the mapping too.
        self.at(first + n - 1);
        // SAFETY: n blocks from `first` on, all within the mapping (checked above); `&mut
        // self` makes the borrow exclusive.
        unsafe { std::slice::from_raw_parts_mut(self.at(first), n * BLOCK_SIZE) }
    }

    pub(super) fn block_mut(&mut self, i: usize) -> &mut [u8] {
        // SAFETY: as `block`, and `&mut self` makes the borrow exclusive.
        unsafe { std::slice::from_raw_parts_mut(self.at(i), BLOCK_SIZE) }
    }
}
