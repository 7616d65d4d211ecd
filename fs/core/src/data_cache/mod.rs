//! File data blocks a node read or wrote, kept in its memory while it holds the file's inode
//! lock (GPFS's pagepool). A cluster node reads and writes the device past the host page cache
//! (other nodes change the device behind it), so without this every read of a file is a device
//! read, however recently the node wrote or read it.
//!
//! Why a cached block is right: every write of a data block on this node goes through here
//! (write-through: a whole block is put, a part of one patches the cached copy), and another
//! node can change a file's blocks only under the file's inode lock, which this node gives up
//! first — and then drops the file's blocks (`MetaCache::drop_covered`, the same place that drops
//! the inode's metadata, so blocks kept across a hand-over for an unchanged version are kept
//! together with it). A block is cached for one inode and found only for that inode: a block
//! freed by one file and reused by another never shows the first file's bytes; freeing drops it
//! anyway.
//!
//! Concurrency: one mutex over the map, held for a lookup and a copy of at most one block (or
//! a pass over the slots to drop inodes' blocks), never across device I/O. A block is filled after its device read without the mutex; the
//! caller holds the inode's lock (shared to read, exclusive to change), so no write of the same
//! block runs meanwhile.
mod arena;

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};

use fxhash::FxHashMap;
use parking_lot::Mutex;

use arena::Arena;

use crate::error::Result;
use crate::format::{BlockNo, InodeNo, BLOCK_SIZE};

#[derive(Default)]
struct Slot {
    pblk: u64,
    ino: u64,
    /// Holds a block the index points at (not dropped).
    live: bool,
    /// Being written to the device from the cache's memory: not to be evicted or refilled.
    pinned: bool,
    /// Used since the clock hand last passed (second chance).
    referenced: bool,
}

#[derive(Default)]
struct Blocks {
    slots: Vec<Slot>,
    /// Slot i's block.
    arena: Arena,
    /// Most slots, in blocks (what the arena has room for).
    capacity: usize,
    /// Block number to slot. Block numbers need no hash that resists chosen keys, and a put
    /// costs a few lookups: FxHash, not SipHash (perf: SipHash was a tenth of a large write).
    index: FxHashMap<u64, usize>,
    /// Slots whose block was dropped, to fill before evicting.
    free: Vec<usize>,
    hand: usize,
}

impl Blocks {
    /// Takes slot `slot`'s block out of the index.
    fn evict(&mut self, slot: usize) {
        self.index.remove(&self.slots[slot].pblk);
        self.slots[slot].live = false;
    }

    fn drop_slot(&mut self, slot: usize) {
        self.evict(slot);
        // A pinned slot is freed when its write ends (`write_through`).
        if !self.slots[slot].pinned {
            self.free.push(slot);
        }
    }

    fn remove(&mut self, pblk: u64) {
        if let Some(&slot) = self.index.get(&pblk) {
            self.drop_slot(slot);
        }
    }

    /// A slot to fill: a dropped one, a new one below the capacity, or the clock's victim.
    /// The capacity is not 0.
    fn vacant(&mut self) -> Option<usize> {
        // A free slot a write's run took since is skipped (taken out lazily).
        while let Some(s) = self.free.pop() {
            if !self.slots[s].live && !self.slots[s].pinned {
                return Some(s);
            }
        }
        if self.slots.len() < self.capacity {
            self.slots.push(Slot::default());
            return Some(self.slots.len() - 1);
        }
        // Two sweeps find a victim unless nearly everything is pinned (writes in flight take
        // at most an eighth of the cache each): then the block is not cached.
        for _ in 0..2 * self.slots.len() {
            let s = self.hand % self.slots.len();
            self.hand = s + 1;
            if self.slots[s].pinned || std::mem::take(&mut self.slots[s].referenced) {
                continue;
            }
            self.evict(s);
            return Some(s);
        }
        None
    }

    /// `n` consecutive slots for a write (none pinned), emptied: new ones while the cache
    /// grows, else those from the clock hand on, whatever they hold (a write streams through
    /// the cache, first in, first out).
    fn contiguous_run(&mut self, n: usize) -> Option<usize> {
        if self.slots.len() + n <= self.capacity {
            let first = self.slots.len();
            self.slots.extend((0..n).map(|_| Slot::default()));
            return Some(first);
        }
        let len = self.slots.len();
        let first = match self.hand % len.max(1) {
            h if h + n <= len => h,
            _ => 0,
        };
        if first + n > len || self.slots[first..first + n].iter().any(|s| s.pinned) {
            return None;
        }
        for s in first..first + n {
            if self.slots[s].live {
                self.evict(s);
            }
        }
        self.hand = first + n;
        Some(first)
    }

    /// The slot to hold block `pblk` of inode `ino`: its own, or a vacant one.
    fn slot_for(&mut self, ino: u64, pblk: u64) -> Option<usize> {
        match self.index.get(&pblk) {
            Some(&s) if self.slots[s].ino == ino => Some(s),
            Some(_) => {
                self.remove(pblk);
                self.vacant()
            }
            None => self.vacant(),
        }
    }

    /// Fills slot `s` with block `pblk` of inode `ino`.
    fn fill(&mut self, s: usize, ino: u64, pblk: u64, block: &[u8]) {
        self.slots[s] = Slot { pblk, ino, live: true, pinned: false, referenced: true };
        self.arena.block_mut(s).copy_from_slice(block);
        self.index.insert(pblk, s);
    }
}

/// A node's cache of file data blocks (see the top of this file). Empty and unused while its
/// capacity is 0 (a standalone mount, which has the host page cache).
#[derive(Default)]
pub struct DataCache {
    blocks: Mutex<Blocks>,
    /// In blocks.
    capacity: AtomicUsize,
}

impl DataCache {
    /// Sets how many bytes of data the cache may hold (rounded down to blocks); 0 turns it off
    /// and drops what it held.
    pub fn set_capacity(&self, bytes: u64) {
        let blocks = usize::try_from(bytes / BLOCK_SIZE as u64).unwrap_or(usize::MAX);
        let mut b = self.blocks.lock();
        // Sized once: growing the map and the slots as the cache first fills cost page faults
        // inside requests (perf).
        *b = Blocks {
            slots: Vec::with_capacity(blocks),
            arena: Arena::new(blocks),
            capacity: blocks,
            index: FxHashMap::with_capacity_and_hasher(blocks, Default::default()),
            free: Vec::with_capacity(blocks),
            hand: 0,
        };
        self.capacity.store(blocks, Ordering::Release);
    }

    pub fn enabled(&self) -> bool {
        self.capacity.load(Ordering::Acquire) > 0
    }

    /// Copies bytes `within..within + dst.len()` of block `pblk` of inode `ino` into `dst`, if
    /// cached; answers whether it was.
    pub fn read(&self, ino: InodeNo, pblk: BlockNo, within: usize, dst: &mut [u8]) -> bool {
        let mut b = self.blocks.lock();
        let Some(&s) = b.index.get(&pblk.0) else { return false };
        let slot = &mut b.slots[s];
        if slot.ino != ino.get() {
            return false;
        }
        slot.referenced = true;
        dst.copy_from_slice(&b.arena.block(s)[within..within + dst.len()]);
        true
    }

    /// Records the whole content of block `pblk` of inode `ino`.
    pub fn put(&self, ino: InodeNo, pblk: BlockNo, block: &[u8]) {
        if !self.enabled() {
            return;
        }
        let mut b = self.blocks.lock();
        if b.capacity == 0 {
            return;
        }
        if let Some(s) = b.slot_for(ino.get(), pblk.0) {
            b.fill(s, ino.get(), pblk.0, block);
        }
    }

    /// Writes `data` of inode `ino` at byte `within` of block `pblk` through the cache. Whole
    /// blocks are copied into a run of consecutive slots, pinned, and `write` writes that run
    /// to the device as one buffer (page-aligned, so an O_DIRECT device needs no bounce copy of
    /// its own, and contiguous, so the device gets the I/O it would get without the cache: a
    /// pwritev of scattered 4 KiB slots made it several requests and writes ran 35% slower).
    /// Anything else (a part of a block, or no run to be had) is written from `data` and then
    /// recorded ([`DataCache::wrote`]). A failed write drops the blocks it touched.
    pub fn write_through(
        &self,
        ino: InodeNo,
        pblk: BlockNo,
        within: usize,
        data: &[u8],
        write: impl FnOnce(&[u8]) -> Result<()>,
    ) -> Result<()> {
        let n = data.len() / BLOCK_SIZE;
        let run = {
            let mut b = self.blocks.lock();
            let fits = within == 0 && data.len().is_multiple_of(BLOCK_SIZE) && n > 0 && n <= b.capacity / 8;
            match fits.then(|| b.contiguous_run(n)).flatten() {
                Some(first) => {
                    for i in 0..n {
                        let p = pblk.0 + i as u64;
                        // An older copy elsewhere goes.
                        b.remove(p);
                        b.slots[first + i] = Slot { pblk: p, ino: ino.get(), live: true, pinned: true, referenced: true };
                        b.index.insert(p, first + i);
                    }
                    b.arena.run_mut(first, n).copy_from_slice(data);
                    b.arena.pinned(first).map(|pin| (first, pin))
                }
                None => None,
            }
        };
        let Some((first, (_mapping, ptr))) = run else {
            let r = write(data);
            match &r {
                Ok(()) => self.wrote(ino, pblk, within, data),
                // What the device holds now is not known.
                Err(_) => self.forget(pblk, (within + data.len()).div_ceil(BLOCK_SIZE) as u64),
            }
            return r;
        };
        // SAFETY: the run's slots are pinned, so nothing evicts or refills them until they are
        // unpinned below; nothing else writes a block of this inode meanwhile (the caller holds
        // its lock exclusively); the mapping lives while `_mapping` holds its clone.
        let r = write(unsafe { std::slice::from_raw_parts(ptr, n * BLOCK_SIZE) });
        let mut b = self.blocks.lock();
        for s in first..first + n {
            b.slots[s].pinned = false;
            if !b.slots[s].live {
                b.free.push(s);
            } else if r.is_err() {
                // What the device holds now is not known.
                let p = b.slots[s].pblk;
                b.remove(p);
            }
        }
        r
    }

    /// `data` was written at byte `within` of block `pblk` of inode `ino`, and the whole
    /// blocks after it: whole blocks are recorded, a cached block written in part is patched.
    pub fn wrote(&self, ino: InodeNo, pblk: BlockNo, within: usize, data: &[u8]) {
        if !self.enabled() {
            return;
        }
        let (mut at, mut blk) = (0usize, pblk.0);
        let mut off = within;
        while at < data.len() {
            let n = (BLOCK_SIZE - off).min(data.len() - at);
            if n == BLOCK_SIZE {
                self.put(ino, BlockNo(blk), &data[at..at + n]);
            } else {
                self.patch(ino, BlockNo(blk), off, &data[at..at + n]);
            }
            at += n;
            blk += 1;
            off = 0;
        }
    }

    fn patch(&self, ino: InodeNo, pblk: BlockNo, within: usize, data: &[u8]) {
        let mut b = self.blocks.lock();
        let Some(&s) = b.index.get(&pblk.0) else { return };
        if b.slots[s].ino == ino.get() {
            b.arena.block_mut(s)[within..within + data.len()].copy_from_slice(data);
        } else {
            b.remove(pblk.0);
        }
    }

    /// Drops blocks `pblk..pblk + n` (freed, zeroed in place, or written with an outcome not
    /// known).
    pub fn forget(&self, pblk: BlockNo, n: u64) {
        if !self.enabled() {
            return;
        }
        let mut b = self.blocks.lock();
        if n as usize > b.index.len() {
            // A large range (a big file truncated): walk what is cached, not the range.
            let gone: Vec<u64> = b.index.keys().copied().filter(|k| (pblk.0..pblk.0 + n).contains(k)).collect();
            gone.into_iter().for_each(|k| b.remove(k));
        } else {
            (pblk.0..pblk.0 + n).for_each(|k| b.remove(k));
        }
    }

    /// Drops every block of the inodes `inos` (their lock goes elsewhere): one pass over the
    /// slots, which costs less than keeping a set of blocks per inode up to date at every put.
    pub fn forget_inodes(&self, inos: impl IntoIterator<Item = InodeNo>) {
        if !self.enabled() {
            return;
        }
        let gone: HashSet<u64> = inos.into_iter().map(|i| i.get()).collect();
        if gone.is_empty() {
            return;
        }
        let mut b = self.blocks.lock();
        for s in 0..b.slots.len() {
            if b.slots[s].live && gone.contains(&b.slots[s].ino) {
                b.drop_slot(s);
            }
        }
    }

    /// Drops everything.
    pub fn clear(&self) {
        let mut b = self.blocks.lock();
        let b = &mut *b;
        b.index.clear();
        b.slots.iter_mut().for_each(|s| s.live = false);
        // A pinned slot is freed when its write ends.
        b.free = (0..b.slots.len()).rev().filter(|&s| !b.slots[s].pinned).collect();
    }

    /// How many blocks are cached.
    pub fn len(&self) -> usize {
        self.blocks.lock().index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(byte: u8) -> Vec<u8> {
        vec![byte; BLOCK_SIZE]
    }

    fn cache(blocks: u64) -> DataCache {
        let c = DataCache::default();
        c.set_capacity(blocks * BLOCK_SIZE as u64);
        c
    }

    fn cached(c: &DataCache, ino: u64, pblk: u64) -> Option<u8> {
        let mut b = [0u8; 1];
        c.read(InodeNo(ino), BlockNo(pblk), 0, &mut b).then_some(b[0])
    }

    #[test]
    fn a_block_is_found_only_for_the_inode_it_was_cached_for() {
        let c = cache(4);
        c.put(InodeNo(7), BlockNo(100), &block(1));
        assert_eq!(cached(&c, 7, 100), Some(1));
        assert_eq!(cached(&c, 8, 100), None, "a reused block must not show another file's bytes");
        c.put(InodeNo(8), BlockNo(100), &block(2));
        assert_eq!(cached(&c, 7, 100), None);
        assert_eq!(cached(&c, 8, 100), Some(2));
        c.forget_inodes([InodeNo(7)]);
        assert_eq!(cached(&c, 8, 100), Some(2), "dropping inode 7 keeps inode 8's block");
    }

    #[test]
    fn partial_writes_patch_cached_blocks_and_whole_ones_are_recorded() {
        let c = cache(8);
        c.put(InodeNo(7), BlockNo(10), &block(1));
        // Bytes 4000.. of block 10, all of 11, the start of 12 (not cached: stays so).
        let data = vec![9u8; (BLOCK_SIZE - 4000) + BLOCK_SIZE + 10];
        c.wrote(InodeNo(7), BlockNo(10), 4000, &data);
        let mut b = vec![0u8; BLOCK_SIZE];
        assert!(c.read(InodeNo(7), BlockNo(10), 0, &mut b));
        assert!(b[..4000].iter().all(|&x| x == 1) && b[4000..].iter().all(|&x| x == 9));
        assert_eq!(cached(&c, 7, 11), Some(9));
        assert_eq!(cached(&c, 7, 12), None, "a block known only in part is not cached");
    }

    #[test]
    fn dropping_an_inode_or_a_range_drops_exactly_those_blocks() {
        let c = cache(16);
        for p in 0..4 {
            c.put(InodeNo(1), BlockNo(p), &block(1));
            c.put(InodeNo(2), BlockNo(100 + p), &block(2));
        }
        c.forget_inodes([InodeNo(1)]);
        assert!((0..4).all(|p| cached(&c, 1, p).is_none()));
        assert!((0..4).all(|p| cached(&c, 2, 100 + p) == Some(2)));
        c.forget(BlockNo(101), 2);
        assert_eq!((0..4).map(|p| cached(&c, 2, 100 + p).is_some()).collect::<Vec<_>>(), [true, false, false, true]);
        c.forget(BlockNo(0), u64::MAX / 2);
        assert!(c.is_empty());
    }

    #[test]
    fn a_full_cache_evicts_blocks_not_used_since_the_hand_passed() {
        let c = cache(4);
        for p in 0..4 {
            c.put(InodeNo(1), BlockNo(p), &block(p as u8));
        }
        // Every block was just used: one sweep clears the marks, then block 0 goes.
        c.put(InodeNo(1), BlockNo(4), &block(4));
        assert_eq!(c.len(), 4);
        assert_eq!(cached(&c, 1, 0), None);
        // Block 1 is used again; the next eviction takes block 2 instead.
        assert_eq!(cached(&c, 1, 1), Some(1));
        c.put(InodeNo(1), BlockNo(5), &block(5));
        assert_eq!(cached(&c, 1, 1), Some(1));
        assert_eq!(cached(&c, 1, 2), None);
        c.forget_inodes([InodeNo(1)]);
        assert!(c.is_empty());
        c.put(InodeNo(3), BlockNo(9), &block(3));
        assert_eq!(cached(&c, 3, 9), Some(3), "freed slots are reused");
    }

    #[test]
    fn blocks_written_through_are_written_from_one_run_of_the_cache_and_a_failed_write_drops_them() {
        let c = cache(64);
        c.put(InodeNo(1), BlockNo(11), &block(1));
        let data = vec![5u8; 4 * BLOCK_SIZE];
        c.write_through(InodeNo(1), BlockNo(10), 0, &data, |buf| {
            assert_eq!(buf.len(), 4 * BLOCK_SIZE);
            assert!((buf.as_ptr() as usize).is_multiple_of(4096) && buf.iter().all(|&x| x == 5));
            Ok(())
        })
        .expect("write");
        assert!((10..14).all(|p| cached(&c, 1, p) == Some(5)), "the older copy of block 11 is gone");
        assert_eq!(c.len(), 4);
        let r = c.write_through(InodeNo(1), BlockNo(10), 0, &vec![6u8; 2 * BLOCK_SIZE], |_| Err(crate::error::FsError::NoSpace));
        assert!(r.is_err());
        assert_eq!((10..14).map(|p| cached(&c, 1, p)).collect::<Vec<_>>(), [None, None, Some(5), Some(5)]);
        // Slots freed on the way are used again, not handed out twice.
        for p in 100..200 {
            c.put(InodeNo(2), BlockNo(p), &block(2));
        }
        assert_eq!(c.len(), 64);
        assert!((100..200).rev().take(60).all(|p| cached(&c, 2, p) == Some(2)));
    }

    #[test]
    fn a_full_cache_writes_through_runs_from_the_hand_on() {
        let c = cache(64);
        for p in 0..64 {
            c.put(InodeNo(2), BlockNo(1000 + p), &block(2));
        }
        for round in 0..20u64 {
            let data = vec![round as u8 + 10; 8 * BLOCK_SIZE];
            c.write_through(InodeNo(1), BlockNo(round * 8), 0, &data, |buf| {
                assert_eq!(buf.len(), 8 * BLOCK_SIZE, "written as one run");
                Ok(())
            })
            .expect("write");
            assert!((0..8).all(|i| cached(&c, 1, round * 8 + i) == Some(round as u8 + 10)), "round {round}");
            assert_eq!(c.len(), 64);
        }
    }

    #[test]
    fn blocks_being_written_from_the_cache_are_not_evicted_or_refilled() {
        let c = cache(16);
        let data = vec![7u8; 2 * BLOCK_SIZE];
        c.write_through(InodeNo(1), BlockNo(0), 0, &data, |buf| {
            // Meanwhile other files fill the cache many times over, and it is cleared.
            for p in 100..200 {
                c.put(InodeNo(2), BlockNo(p), &block(9));
            }
            c.clear();
            for p in 200..300 {
                c.put(InodeNo(2), BlockNo(p), &block(8));
            }
            assert!(buf.iter().all(|&x| x == 7), "a block was refilled while being written");
            Ok(())
        })
        .expect("write");
        // Dropped by the clear while pinned, the two slots are free once the write ends.
        assert_eq!(c.len(), 14);
        c.put(InodeNo(2), BlockNo(300), &block(8));
        c.put(InodeNo(2), BlockNo(301), &block(8));
        assert_eq!(c.len(), 16, "the pinned slots came back to the cache");
    }

    #[test]
    fn a_cache_of_size_zero_holds_nothing() {
        let c = DataCache::default();
        c.put(InodeNo(1), BlockNo(1), &block(1));
        c.wrote(InodeNo(1), BlockNo(2), 0, &block(1));
        assert!(c.is_empty());
    }
}
