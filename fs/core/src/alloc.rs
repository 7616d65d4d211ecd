//! The block allocator: allocation groups (AGs), each with its own header (free count) and a
//! bitmap of two bits per block (free / data / metadata / inode), each behind its own lock, so
//! that nodes — and threads of one node — allocating in different AGs never contend.
//!
//! The on-disk bitmaps change only through the journal. Each AG also keeps an in-memory map
//! of blocks that may be handed out: a freed block enters it only when the transaction that
//! freed it has committed, so a crash can never leave a committed file pointing at a block
//! that was already reused.
use crate::cache::{Cover, MetaBuf, MetaCache};
use crate::error::{FsError, Result};
pub use crate::format::ag::BlockState;
use crate::format::ag::{bitmap_fill, bitmap_get, AgHeader};
use crate::format::header::BlockType;
use crate::format::layout::{Layout, STATES_PER_BITMAP_BLOCK};
use crate::format::BlockNo;
use crate::journal::Handle;
use parking_lot::Mutex;
use std::sync::Arc;

struct AgMem {
    /// One bit per AG block: 1 = not available for allocation.
    used: Vec<u64>,
    free: u64,
    cursor: u64,
}

struct Ag {
    index: u32,
    first: u64,
    len: u64,
    mem: Mutex<Option<AgMem>>,
    /// Free count from the AG header, known without loading the bitmap; `None` after a
    /// `reload`, until the header is read again.
    free_hint: Mutex<Option<u64>>,
}

pub struct Allocator {
    cache: Arc<MetaCache>,
    layout: Layout,
    ags: Vec<Ag>,
    /// Blocks freed by transactions that have not committed yet (free on disk, not yet
    /// allocatable).
    quarantined: std::sync::atomic::AtomicU64,
    /// See [`Allocator::unheld_frees`].
    unheld_frees: std::sync::atomic::AtomicU64,
    /// See [`Allocator::current_ag`].
    current_ag: std::sync::atomic::AtomicU32,
    /// See [`Allocator::share_groups`].
    shared: std::sync::atomic::AtomicBool,
}

impl Allocator {
    pub fn open(cache: Arc<MetaCache>, layout: Layout, slot: u32) -> Result<Allocator> {
        let mut ags = Vec::with_capacity(layout.ag_count as usize);
        for a in 0..layout.ag_count {
            let first = layout.ag_first_block(a);
            let hdr = cache.get(BlockNo(first), BlockType::AgHeader, Cover::Group(a))?;
            let free = AgHeader::of(&hdr.read()).free();
            ags.push(Ag { index: a, first, len: layout.ag_len(a) as u64, mem: Mutex::new(None), free_hint: Mutex::new(Some(free)) });
        }
        let home_ag = ((slot as u64 * layout.ag_count as u64) / layout.slot_count as u64) as u32;
        Ok(Allocator {
            cache,
            layout,
            ags,
            quarantined: std::sync::atomic::AtomicU64::new(0),
            unheld_frees: Default::default(),
            current_ag: home_ag.into(),
            shared: false.into(),
        })
    }

    /// Forgets the in-memory maps and free counts, so the next allocation reads the bitmaps and
    /// headers again: another node may have changed them since they were loaded (cluster mode,
    /// after the locks covering them were given up). Call with no transaction allocating.
    /// Nothing is read here: what this node read now could already be stale when it next
    /// allocates.
    pub fn reload(&self) {
        (0..self.ag_count()).for_each(|a| self.forget_ag(a));
    }

    /// Blocks that can be allocated now in the groups the operation of `h` may use: with shared
    /// groups, the loaded ones it holds; otherwise [`Allocator::available`].
    pub fn available_to(&self, h: &Handle) -> u64 {
        if !self.is_shared() {
            return self.available();
        }
        self.ags.iter().filter(|ag| h.may_use_ag(ag.index)).filter_map(|ag| ag.mem.lock().as_ref().map(|m| m.free)).sum()
    }

    /// Groups are shared with other nodes, each under a cluster lock of its own (cluster mode
    /// with per-group locks): from now on the allocator reads a group's header and bitmap
    /// into the cache only for an operation that holds the group (`Handle::may_use_ag`); a
    /// look at any other (statfs, the state of one block) reads a copy that is not kept.
    /// Forgets everything read so far (at mount, before the locks were known).
    pub fn share_groups(&self) {
        self.shared.store(true, std::sync::atomic::Ordering::Release);
        self.reload();
    }

    /// Whether groups are shared ([`Allocator::share_groups`]): then room is counted per group,
    /// under the groups' locks, and [`Allocator::available`] knows only the groups loaded.
    pub fn is_shared(&self) -> bool {
        self.shared.load(std::sync::atomic::Ordering::Acquire)
    }

    /// An AG's free count: the hint, or the header's count read now (not kept in the cache
    /// when groups are shared: the group may not be held).
    fn free_hint(&self, ag: &Ag) -> Result<u64> {
        let mut hint = ag.free_hint.lock();
        if let Some(free) = *hint {
            return Ok(free);
        }
        let free = if self.is_shared() {
            AgHeader::of(&self.cache.copy_uncached(BlockNo(ag.first), BlockType::AgHeader)?).free()
        } else {
            AgHeader::of(&self.cache.get(BlockNo(ag.first), BlockType::AgHeader, Cover::Group(ag.index))?.read()).free()
        };
        *hint = Some(free);
        Ok(free)
    }

    /// Free blocks on the volume. With shared groups: the groups this node has loaded as it
    /// counts them, the others as their headers on the device say — as of the last commit of
    /// the node that holds each (docs/design.md, "Toward a lock per inode and per allocation
    /// group").
    pub fn free_blocks(&self) -> u64 {
        if self.is_shared() {
            return self
                .ags
                .iter()
                .map(|ag| {
                    if let Some(m) = ag.mem.lock().as_ref() {
                        return m.free;
                    }
                    *ag.free_hint.lock() = None;
                    self.free_hint(ag).unwrap_or(0)
                })
                .sum();
        }
        // A header that cannot be read counts as full: the allocator will not pick it either.
        self.ags.iter().map(|a| self.free_hint(a).unwrap_or(0)).sum()
    }

    /// Blocks that can be allocated now (free, and not waiting for their freeing commit). With
    /// shared groups: in the groups this node has loaded (those its operations hold), read
    /// nothing.
    pub fn available(&self) -> u64 {
        if self.is_shared() {
            return self.ags.iter().filter_map(|ag| ag.mem.lock().as_ref().map(|m| m.free)).sum();
        }
        self.free_blocks().saturating_sub(self.quarantined.load(std::sync::atomic::Ordering::Acquire))
    }

    /// Blocks freed by transactions not yet committed: a commit makes them available.
    pub fn quarantined(&self) -> u64 {
        self.quarantined.load(std::sync::atomic::Ordering::Acquire)
    }

    pub fn total_blocks(&self) -> u64 {
        self.layout.data_blocks()
    }

    fn bitmap_buf(&self, ag: &Ag, rel: u64) -> Result<Arc<MetaBuf>> {
        self.cache.get(BlockNo(ag.first + 1 + rel / STATES_PER_BITMAP_BLOCK), BlockType::Bitmap, Cover::Group(ag.index))
    }

    /// Calls `f` with every AG-relative block of `ag` and its state in the bitmap.
    fn for_each_state(&self, ag: &Ag, f: &mut dyn FnMut(u64, BlockState)) -> Result<()> {
        let mut rel = 0;
        while rel < ag.len {
            let buf = self.bitmap_buf(ag, rel)?;
            let data = buf.read();
            let end = (rel + STATES_PER_BITMAP_BLOCK).min(ag.len);
            for r in rel..end {
                f(r, bitmap_get(&data, r));
            }
            rel = end;
        }
        Ok(())
    }

    fn load(&self, ag: &Ag) -> Result<AgMem> {
        let words = (ag.len as usize).div_ceil(64);
        let mut used = vec![0u64; words];
        let mut free = 0;
        self.for_each_state(ag, &mut |r, s| {
            if s == BlockState::Free {
                free += 1;
            } else {
                used[(r / 64) as usize] |= 1 << (r % 64);
            }
        })?;
        // Bits past the AG's end are never free.
        for r in ag.len..(words as u64 * 64) {
            used[(r / 64) as usize] |= 1 << (r % 64);
        }
        Ok(AgMem { used, free, cursor: self.layout.ag_overhead() as u64 })
    }

    fn set_states(&self, h: &Handle, ag: &Ag, rel: u64, len: u64, s: BlockState) -> Result<()> {
        debug_assert!(h.may_use_ag(ag.index), "allocation group {} changed by an operation that does not hold it", ag.index);
        let mut r = rel;
        while r < rel + len {
            let buf = self.bitmap_buf(ag, r)?;
            let end = ((r / STATES_PER_BITMAP_BLOCK + 1) * STATES_PER_BITMAP_BLOCK).min(rel + len);
            bitmap_fill(&mut h.write(&buf), r / STATES_PER_BITMAP_BLOCK, r, end, s);
            r = end;
        }
        Ok(())
    }

    fn adjust_header(&self, h: &Handle, ag: &Ag, delta: i64) -> Result<()> {
        let hdr = self.cache.get(BlockNo(ag.first), BlockType::AgHeader, Cover::Group(ag.index))?;
        let free = {
            let mut d = h.write(&hdr);
            let agh = AgHeader::of_mut(&mut d);
            let free = (agh.free() as i64 + delta).max(0) as u64;
            agh.set_free(free);
            free
        };
        // After the header's lock is gone: `free_hint` reads the header under the hint's lock.
        *ag.free_hint.lock() = Some(free);
        Ok(())
    }

    /// Allocates up to `want` contiguous blocks, preferably at or after `goal`, marking them
    /// `kind`. Returns (first block, count); count >= 1.
    pub fn alloc(&self, h: &Handle, want: u64, goal: Option<BlockNo>, kind: BlockState) -> Result<(BlockNo, u64)> {
        let (a, rel, len) = self.pick(want, goal, &|a| h.may_use_ag(a))?;
        let ag = &self.ags[a];
        self.set_states(h, ag, rel, len, kind)?;
        self.adjust_header(h, ag, -(len as i64))?;
        Ok((BlockNo(ag.first + rel), len))
    }

    /// Sets up to `n` free blocks aside (at least one, or ENOSPC), near `goal`, before the
    /// transaction that will use them: an operation learns the number of the inode it will
    /// create while it can still lock it (inode locks come before the journal handle,
    /// `locks.rs`). Only groups in `ags` (those the operation holds, in cluster mode) are used.
    /// Nothing changes on disk; each is claimed with [`Allocator::claim_reserved`] or given
    /// back with [`Allocator::unreserve`].
    pub fn reserve_many(&self, goal: Option<BlockNo>, ags: Option<&[u32]>, n: usize) -> Result<Vec<BlockNo>> {
        let usable = |a: u32| ags.is_none_or(|held| held.contains(&a));
        let mut out = Vec::with_capacity(n);
        let mut goal = goal;
        while out.len() < n {
            match self.pick(1, goal, &usable) {
                Ok((a, rel, _)) => {
                    let b = BlockNo(self.ags[a].first + rel);
                    goal = Some(b + 1);
                    out.push(b);
                }
                Err(FsError::NoSpace) if !out.is_empty() => break,
                Err(e) => {
                    out.into_iter().for_each(|b| self.unreserve(b));
                    return Err(e);
                }
            }
        }
        Ok(out)
    }

    /// Finds up to `want` contiguous available blocks and takes them out of the in-memory map:
    /// (AG index, AG-relative first block, count).
    fn pick(&self, want: u64, goal: Option<BlockNo>, usable: &dyn Fn(u32) -> bool) -> Result<(usize, u64, u64)> {
        let want = want.max(1);
        let goal = goal.map_or(0, BlockNo::get); // block 0 (the superblock) is in no AG
        let start_ag = self.layout.ag_of(goal).filter(|a| usable(*a)).unwrap_or_else(|| self.current_ag());
        let n = self.ags.len() as u32;
        for i in 0..n {
            let a = ((start_ag + i) % n) as usize;
            let ag = &self.ags[a];
            if !usable(ag.index) || self.free_hint(ag)? == 0 {
                continue;
            }
            let mut guard = ag.mem.lock();
            if guard.is_none() {
                *guard = Some(self.load(ag)?);
            }
            let Some(mem) = guard.as_mut() else { continue };
            if mem.free == 0 {
                continue;
            }
            let from = if i == 0 && goal >= ag.first && goal < ag.first + ag.len { goal - ag.first } else { mem.cursor };
            let Some(rel) = find_free(&mem.used, from, ag.len).or_else(|| find_free(&mem.used, 0, ag.len)) else {
                continue;
            };
            let mut len = 1;
            while len < want && rel + len < ag.len && !is_used(&mem.used, rel + len) {
                len += 1;
            }
            for r in rel..rel + len {
                mem.used[(r / 64) as usize] |= 1 << (r % 64);
            }
            mem.free -= len;
            mem.cursor = rel + len;
            return Ok((a, rel, len));
        }
        tracing::debug!(want, free = self.free_blocks(), quarantined = self.quarantined(), "no allocation group has a free block");
        Err(FsError::NoSpace)
    }

    /// Gives a reserved, unclaimed block back to the in-memory map.
    pub fn unreserve(&self, blk: BlockNo) {
        let Some(a) = self.layout.ag_of(blk.get()) else { return };
        let ag = &self.ags[a as usize];
        if let Some(mem) = ag.mem.lock().as_mut() {
            let r = blk.get() - ag.first;
            if is_used(&mem.used, r) {
                mem.used[(r / 64) as usize] &= !(1 << (r % 64));
                mem.free += 1;
            }
        }
    }

    /// Marks an extent free on disk (in this transaction). It becomes allocatable through
    /// `release` after the transaction commits.
    pub fn free(&self, h: &Handle, first: BlockNo, len: u64) -> Result<()> {
        let start = first.get();
        let mut s = start;
        let mut freed = 0;
        while s < start + len {
            let a = self.layout.ag_of(s).ok_or_else(|| FsError::corrupt(s, "freeing a block outside every allocation group"))?;
            let ag = &self.ags[a as usize];
            let end = (start + len).min(ag.first + ag.len);
            if !h.may_use_ag(a) {
                // A group the operation does not hold (its plan missed it, a bug): another node
                // may hold it, and a change here would be lost or would overwrite its own. The
                // blocks stay marked in use instead — leaked, which fsck finds and frees.
                self.unheld_frees.fetch_add(end - s, std::sync::atomic::Ordering::Relaxed);
                tracing::warn!(
                    ag = a,
                    first = s,
                    count = end - s,
                    "blocks to free lie in an allocation group this operation does not hold; left in use for fsck to free"
                );
                s = end;
                continue;
            }
            freed += end - s;
            // Load the in-memory map before the on-disk bits change, so the freed blocks stay
            // unavailable in it until the freeing transaction commits.
            let mut g = ag.mem.lock();
            if g.is_none() {
                *g = Some(self.load(ag)?);
            }
            self.set_states(h, ag, s - ag.first, end - s, BlockState::Free)?;
            self.adjust_header(h, ag, (end - s) as i64)?;
            h.freed(BlockNo(s), end - s);
            s = end;
        }
        self.quarantined.fetch_add(freed, std::sync::atomic::Ordering::AcqRel);
        Ok(())
    }

    pub fn ag_count(&self) -> u32 {
        self.ags.len() as u32
    }

    /// The group this node allocates from now: its own (by slot) until that fills up.
    pub fn current_ag(&self) -> u32 {
        self.current_ag.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn set_current_ag(&self, a: u32) {
        self.current_ag.store(a, std::sync::atomic::Ordering::Relaxed)
    }

    /// Blocks group `a` can hand out now (free, and not waiting for their freeing commit),
    /// from its bitmap, read now if it is not loaded. Cluster mode: call with the group held.
    pub fn available_in(&self, a: u32) -> Result<u64> {
        let ag = self.ags.get(a as usize).ok_or(FsError::Invalid("no such allocation group"))?;
        let mut g = ag.mem.lock();
        if g.is_none() {
            *g = Some(self.load(ag)?);
        }
        Ok(g.as_ref().map_or(0, |m| m.free))
    }

    /// Forgets group `a`'s in-memory map and free count (cluster mode: its lock went to another
    /// node, which may change its bitmap). Call with no operation holding the group.
    pub fn forget_ag(&self, a: u32) {
        if let Some(ag) = self.ags.get(a as usize) {
            let mut mem = ag.mem.lock();
            *ag.free_hint.lock() = None;
            *mem = None;
        }
    }

    /// Marks a reserved block `kind` on disk, in `h`'s transaction.
    pub fn claim_reserved(&self, h: &Handle, blk: BlockNo, kind: BlockState) -> Result<()> {
        let a = self.layout.ag_of(blk.get()).ok_or_else(|| FsError::corrupt(blk.get(), "reserved block outside every allocation group"))?;
        let ag = &self.ags[a as usize];
        self.set_states(h, ag, blk.get() - ag.first, 1, kind)?;
        self.adjust_header(h, ag, -1)
    }

    /// Blocks left in use because an operation freed them in a group it did not hold (should
    /// stay 0: the tests check it).
    pub fn unheld_frees(&self) -> u64 {
        self.unheld_frees.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Makes extents freed by a committed transaction allocatable again.
    pub fn release(&self, freed: &[(BlockNo, u64)]) {
        for &(first, len) in freed {
            let start = first.get();
            let _ = self
                .quarantined
                .fetch_update(std::sync::atomic::Ordering::AcqRel, std::sync::atomic::Ordering::Acquire, |q| Some(q.saturating_sub(len)));
            let mut s = start;
            while s < start + len {
                let Some(a) = self.layout.ag_of(s) else { break };
                let ag = &self.ags[a as usize];
                let end = (start + len).min(ag.first + ag.len);
                if let Some(mem) = ag.mem.lock().as_mut() {
                    for b in s..end {
                        let r = b - ag.first;
                        if is_used(&mem.used, r) {
                            mem.used[(r / 64) as usize] &= !(1 << (r % 64));
                            mem.free += 1;
                        }
                    }
                }
                s = end;
            }
        }
    }

    /// The bitmap's state of `blk` as of the running transaction (a block freed by it reads
    /// Free). For file handles, which may name any block number: `NotFound` for a block outside
    /// every AG rather than a corruption report.
    pub fn state(&self, blk: BlockNo) -> Result<BlockState> {
        let blk = blk.get();
        let a = self.layout.ag_of(blk).ok_or(FsError::NotFound)?;
        let ag = &self.ags[a as usize];
        let rel = blk - ag.first;
        if self.is_shared() {
            // The group may be another node's: a copy, not kept.
            let bitmap = BlockNo(ag.first + 1 + rel / STATES_PER_BITMAP_BLOCK);
            return Ok(bitmap_get(&self.cache.copy_uncached(bitmap, BlockType::Bitmap)?, rel));
        }
        let buf = self.bitmap_buf(ag, rel)?;
        let data = buf.read();
        Ok(bitmap_get(&data, rel))
    }

    pub fn ag_index_of(&self, blk: BlockNo) -> Option<u32> {
        self.layout.ag_of(blk.get()).map(|a| self.ags[a as usize].index)
    }
}

fn is_used(used: &[u64], r: u64) -> bool {
    used[(r / 64) as usize] & (1 << (r % 64)) != 0
}

/// First clear bit at or after `from` and before `len`.
fn find_free(used: &[u64], from: u64, len: u64) -> Option<u64> {
    let mut w = (from / 64) as usize;
    if w >= used.len() {
        return None;
    }
    let mut word = !used[w] & (!0u64 << (from % 64));
    loop {
        if word != 0 {
            let r = w as u64 * 64 + word.trailing_zeros() as u64;
            return (r < len).then_some(r);
        }
        w += 1;
        if w >= used.len() {
            return None;
        }
        word = !used[w];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn find_free_skips_used_words_and_respects_the_end() {
        let mut used = vec![!0u64; 4];
        used[2] = !0u64 ^ (1 << 5);
        assert_eq!(find_free(&used, 0, 256), Some(133));
        assert_eq!(find_free(&used, 134, 256), None);
        assert_eq!(find_free(&used, 0, 100), None);
    }
}

/// Repairs used by fsck: set a block's state regardless of what the bitmap said, and set an AG's
/// free count to what the bitmap really holds.
impl Allocator {
    pub fn set_state(&self, h: &Handle, b: BlockNo, s: BlockState) -> Result<()> {
        let blk = b.get();
        let a = self.layout.ag_of(blk).ok_or_else(|| FsError::corrupt(blk, "block outside every allocation group"))?;
        let ag = &self.ags[a as usize];
        let mut g = ag.mem.lock();
        if g.is_none() {
            *g = Some(self.load(ag)?);
        }
        let rel = blk - ag.first;
        if let Some(mem) = g.as_mut() {
            let was_used = is_used(&mem.used, rel);
            if s != BlockState::Free && !was_used {
                mem.used[(rel / 64) as usize] |= 1 << (rel % 64);
                mem.free -= 1;
            }
        }
        self.set_states(h, ag, rel, 1, s)?;
        if s == BlockState::Free {
            h.freed(b, 1);
            self.quarantined.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        }
        Ok(())
    }

    /// Counts free states in AG `a`'s bitmap and writes that count to its header; returns
    /// (old count, new count).
    pub fn recount(&self, h: &Handle, a: u32) -> Result<(u64, u64)> {
        let ag = &self.ags[a as usize];
        let _g = ag.mem.lock();
        let mut free = 0;
        self.for_each_state(ag, &mut |_, s| free += (s == BlockState::Free) as u64)?;
        let hdr = self.cache.get(BlockNo(ag.first), BlockType::AgHeader, Cover::Group(ag.index))?;
        let old = AgHeader::of(&hdr.read()).free();
        if old != free {
            AgHeader::of_mut(&mut h.write(&hdr)).set_free(free);
            *ag.free_hint.lock() = Some(free);
        }
        Ok((old, free))
    }
}

#[cfg(test)]
mod commit_tests {
    //! The allocator on a real volume: extents never overlap, bitmaps and free counts follow
    //! every change and survive a remount, the volume fills up to a clean NoSpace, and a freed
    //! block is not handed out again before the transaction that freed it has committed.
    use super::*;
    use crate::device::CrashDevice;
    use crate::format::header::BlockType;
    use crate::mkfs::{mkfs, MkfsOptions};
    use crate::volume::Volume;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};
    use std::collections::{HashMap, HashSet};

    fn setup(size: u64) -> (Arc<CrashDevice>, Volume) {
        let dev = Arc::new(CrashDevice::new(size));
        mkfs(&*dev, &MkfsOptions { slots: 1, journal_blocks: Some(1024), ..Default::default() }).expect("mkfs");
        let vol = Volume::open(dev.clone(), 0, "alloc-test", 1 << 16).expect("open");
        (dev, vol)
    }

    fn state_of(vol: &Volume, blk: u64) -> BlockState {
        let l = vol.sb.layout;
        let a = l.ag_of(blk).expect("block in an AG");
        let first = l.ag_first_block(a);
        let rel = blk - first;
        let buf = vol.cache.get(BlockNo(first + 1 + rel / STATES_PER_BITMAP_BLOCK), BlockType::Bitmap, Cover::Volume).unwrap();
        let d = buf.read();
        bitmap_get(&d, rel)
    }

    fn is_data_area(vol: &Volume, blk: u64) -> bool {
        let l = vol.sb.layout;
        l.ag_of(blk).is_some_and(|a| blk >= l.ag_first_block(a) + l.ag_overhead() as u64)
    }

    #[test]
    fn a_freed_block_is_not_reused_before_the_freeing_transaction_commits() {
        let (_dev, vol) = setup(16 << 20);
        let h = vol.begin().unwrap();
        let (a, n) = vol.alloc.alloc(&h, 8, None, BlockState::Data).unwrap();
        assert_eq!(n, 8, "a fresh volume has 8 contiguous free blocks");
        drop(h);
        vol.commit().unwrap();
        let free0 = vol.alloc.free_blocks();

        let h = vol.begin().unwrap();
        vol.alloc.free(&h, a, 8).unwrap();
        assert_eq!(state_of(&vol, a.get()), BlockState::Free);
        assert_eq!(vol.alloc.free_blocks(), free0 + 8);
        let mut got = Vec::new();
        // Same handle, aiming right at the freed extent.
        for _ in 0..10 {
            got.push(vol.alloc.alloc(&h, 4, Some(a), BlockState::Data).unwrap());
        }
        drop(h);
        // Later handles of the same running transaction.
        let h = vol.begin().unwrap();
        for _ in 0..10 {
            got.push(vol.alloc.alloc(&h, 1, Some(a + 3), BlockState::Meta).unwrap());
        }
        drop(h);
        for &(s, n) in &got {
            assert!(s + n <= a || s >= a + 8, "extent {s}+{n} reuses a block freed by the uncommitted transaction");
        }
        // Once the freeing transaction is committed, the extent is available again.
        vol.commit().unwrap();
        let h = vol.begin().unwrap();
        assert_eq!(vol.alloc.alloc(&h, 8, Some(a), BlockState::Inode).unwrap(), (a, 8));
        assert_eq!(state_of(&vol, (a + 7).get()), BlockState::Inode);
    }

    #[test]
    fn random_allocations_never_overlap_and_bitmaps_and_counts_agree() {
        let (dev, vol) = setup(32 << 20);
        let l = vol.sb.layout;
        let free0 = vol.alloc.free_blocks();
        assert_eq!(free0, vol.alloc.total_blocks() - (2 + l.slot_count as u64), "only the system inodes are in use after mkfs");
        let kinds = [BlockState::Data, BlockState::Meta, BlockState::Inode];
        let mut rng = StdRng::seed_from_u64(99);
        let mut owned: Vec<(u64, u64, BlockState)> = Vec::new();
        let mut used: HashMap<u64, BlockState> = HashMap::new();
        for round in 0..300 {
            let mut freed_now: HashSet<u64> = HashSet::new();
            let h = vol.begin().unwrap();
            for _ in 0..12 {
                // Keep the volume between a third and two thirds full.
                if rng.gen_bool(if used.len() as u64 > free0 * 2 / 3 { 0.3 } else { 0.6 }) || owned.is_empty() {
                    let want = rng.gen_range(1..80);
                    let goal = rng.gen_bool(0.5).then(|| BlockNo(rng.gen_range(l.ag_start..l.total_blocks)));
                    let kind = kinds[rng.gen_range(0..3)];
                    let (s, n) = vol
                        .alloc
                        .alloc(&h, want, goal, kind)
                        .unwrap_or_else(|e| panic!("round {round}: {e} with {} blocks in use of {free0}", used.len()));
                    let s = s.get();
                    assert!(n >= 1 && n <= want, "asked {want}, got {n}");
                    assert_eq!(l.ag_of(s), l.ag_of(s + n - 1), "an extent stays inside one AG");
                    for b in s..s + n {
                        assert!(is_data_area(&vol, b), "block {b} is an AG header or bitmap");
                        assert!(!freed_now.contains(&b), "block {b} reused in the transaction that freed it");
                        assert!(used.insert(b, kind).is_none(), "block {b} handed out twice");
                    }
                    owned.push((s, n, kind));
                } else {
                    let (s, n, _) = owned.swap_remove(rng.gen_range(0..owned.len()));
                    vol.alloc.free(&h, BlockNo(s), n).unwrap();
                    for b in s..s + n {
                        used.remove(&b);
                        freed_now.insert(b);
                    }
                }
            }
            drop(h);
            vol.commit().unwrap();
            assert_eq!(vol.alloc.free_blocks(), free0 - used.len() as u64, "round {round}: free count");
            if round % 50 == 49 {
                for (&b, &k) in &used {
                    assert_eq!(state_of(&vol, b), k, "bitmap state of block {b}");
                }
                for &b in freed_now.iter().take(50) {
                    assert_eq!(state_of(&vol, b), BlockState::Free);
                }
            }
        }
        // Counts and bitmaps survive a clean close and a remount.
        vol.close().unwrap();
        drop(vol);
        let dev2 = Arc::new(CrashDevice::from_image(dev.crash_image(|_| false)));
        let vol2 = Volume::open(dev2, 0, "alloc-test", 1 << 16).unwrap();
        assert_eq!(vol2.alloc.free_blocks(), free0 - used.len() as u64);
        for (&b, &k) in &used {
            assert_eq!(state_of(&vol2, b), k, "bitmap state of block {b} after remount");
        }
        // And the remounted allocator does not hand out what is in use.
        let h = vol2.begin().unwrap();
        for _ in 0..50 {
            let (s, n) = vol2.alloc.alloc(&h, 16, None, BlockState::Data).unwrap();
            for b in s.get()..s.get() + n {
                assert!(!used.contains_key(&b), "block {b} in use handed out after remount");
            }
        }
    }

    #[test]
    fn allocating_everything_ends_in_nospace_and_freeing_gives_it_all_back() {
        let (_dev, vol) = setup(16 << 20);
        let free0 = vol.alloc.free_blocks();
        let mut exts = Vec::new();
        let mut seen = HashSet::new();
        loop {
            let h = vol.begin().unwrap();
            let r = vol.alloc.alloc(&h, 50, None, BlockState::Data);
            drop(h);
            match r {
                Ok((s, n)) => {
                    for b in s.get()..s.get() + n {
                        assert!(seen.insert(b), "block {b} handed out twice");
                    }
                    exts.push((s, n));
                }
                Err(FsError::NoSpace) => break,
                Err(e) => panic!("unexpected error filling the volume: {e}"),
            }
            if exts.len() % 20 == 0 {
                vol.commit().unwrap();
            }
        }
        vol.commit().unwrap();
        assert_eq!(seen.len() as u64, free0, "every free block was handed out");
        assert_eq!(vol.alloc.free_blocks(), 0);
        // Freed but not committed: still full.
        let h = vol.begin().unwrap();
        for &(s, n) in &exts {
            vol.alloc.free(&h, s, n).unwrap();
        }
        assert!(matches!(vol.alloc.alloc(&h, 1, None, BlockState::Meta), Err(FsError::NoSpace)));
        drop(h);
        vol.commit().unwrap();
        assert_eq!(vol.alloc.free_blocks(), free0);
        let h = vol.begin().unwrap();
        let (_, n) = vol.alloc.alloc(&h, 64, None, BlockState::Data).unwrap();
        assert_eq!(n, 64, "after freeing everything, long extents are available again");
    }
}
