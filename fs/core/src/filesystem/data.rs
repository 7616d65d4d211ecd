//! File data: the extent map (logical block -> physical extent, in the inode's tree), small
//! files stuffed in the inode block, reads, writes, truncation, fallocate and SEEK_DATA/HOLE.
//!
//! The extent record is `format::extent`.
use super::Fs;
use crate::alloc::BlockState;
use crate::btree::{TreeRead, TreeWrite};
use crate::cache::MetaBuf;
use crate::error::{FsError, Result};
use crate::format::extent::Extent;
use crate::format::inode::{Inode, Timespec, FLAG_STUFFED, INLINE_LEN, INLINE_OFFSET};
use crate::format::{BlockNo, InodeNo, BLOCK_SIZE};
use crate::journal::Handle;
use crate::locks::Mode;
use std::sync::Arc;

const BS: u64 = BLOCK_SIZE as u64;
/// Longest extent recorded (fits u32 and keeps one extent inside one AG anyway).
const MAX_EXTENT: u64 = 1 << 20;

/// Writes `e` as its tree record (replacing the one that starts at the same logical block).
fn put_extent(t: &mut TreeWrite, e: Extent) -> Result<()> {
    t.insert(e.lblk, &e.value()).map(drop)
}

/// The extent holding logical block `lblk`, if any.
pub fn extent_at(t: &TreeRead, lblk: u64) -> Result<Option<Extent>> {
    Ok(t.last_le(lblk)?.and_then(|(k, v)| Extent::decode(k, &v)).filter(|e| lblk < e.lblk + e.len))
}

/// Data extents freed per transaction while truncating or reclaiming, so no transaction
/// outgrows the journal.
pub(crate) const EXTENTS_PER_STEP: usize = 16;

/// Extents overlapping [from, to), in order, at most `max`.
pub fn extents_in(t: &TreeRead, from: u64, to: u64, max: usize) -> Result<Vec<Extent>> {
    let mut out = Vec::new();
    if let Some(e) = extent_at(t, from)? {
        out.push(e);
    }
    t.scan(from + 1, &mut |k, v| {
        if k >= to || out.len() >= max {
            return false;
        }
        if let Some(e) = Extent::decode(k, v) {
            out.push(e);
        }
        true
    })?;
    Ok(out)
}

pub(super) fn insert_extent(t: &mut TreeWrite, e: Extent) -> Result<()> {
    if e.lblk > 0 {
        if let Some(prev) = extent_at(&t.read, e.lblk - 1)? {
            if prev.lblk + prev.len == e.lblk && prev.pblk + prev.len == e.pblk && prev.len + e.len <= MAX_EXTENT {
                return put_extent(t, Extent { len: prev.len + e.len, ..prev });
            }
        }
    }
    put_extent(t, e)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Whence {
    Data,
    Hole,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FallocMode {
    pub keep_size: bool,
    pub punch_hole: bool,
    pub zero_range: bool,
}

impl FallocMode {
    pub fn from_flags(mode: i32) -> Result<FallocMode> {
        let known = libc::FALLOC_FL_KEEP_SIZE | libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_ZERO_RANGE;
        if mode & !known != 0 {
            return Err(FsError::NotSupported);
        }
        let m = FallocMode {
            keep_size: mode & libc::FALLOC_FL_KEEP_SIZE != 0,
            punch_hole: mode & libc::FALLOC_FL_PUNCH_HOLE != 0,
            zero_range: mode & libc::FALLOC_FL_ZERO_RANGE != 0,
        };
        if m.punch_hole && (!m.keep_size || m.zero_range) {
            return Err(FsError::Invalid("PUNCH_HOLE needs KEEP_SIZE and excludes ZERO_RANGE"));
        }
        Ok(m)
    }
}

/// Where a write goes.
#[derive(Clone, Copy)]
enum WriteAt {
    Offset(u64),
    /// The end of the file, as it is once the inode is locked.
    End,
}

impl Fs {
    /// Writes file data of inode `ino` (through the node's data cache, `data_cache/`): the
    /// whole blocks from the cache's memory, a partial block at either end patched into it.
    fn dev_write(&self, ino: InodeNo, data: &[u8], pblk: BlockNo, within: u64) -> Result<()> {
        let cache = &self.vol.cache.data;
        let at = pblk.byte_offset() + within;
        if !cache.enabled() {
            return self.vol.dev.write_at(data, at);
        }
        let len = data.len() as u64;
        let head = ((BS - at % BS) % BS).min(len);
        let body = (len - head) / BS * BS;
        for (from, n) in [(0, head), (head, body), (head + body, len - head - body)] {
            if n > 0 {
                let off = at + from;
                let part = &data[from as usize..(from + n) as usize];
                cache.write_through(ino, BlockNo(off / BS), (off % BS) as usize, part, |buf| self.vol.dev.write_at(buf, off))?;
            }
        }
        Ok(())
    }

    /// Zeroes `len` bytes of file data from byte `within` of block `pblk` on.
    fn dev_zero(&self, pblk: BlockNo, within: u64, len: u64) -> Result<()> {
        self.vol.cache.data.forget(pblk, (within + len).div_ceil(BS));
        self.vol.dev.zero_range(pblk.byte_offset() + within, len)
    }

    /// Reads bytes [s, en) of the file, which extent `e` maps, into `dst`: cached blocks from
    /// the data cache, runs of the others from the device in one read each (whole blocks,
    /// which the cache then keeps).
    fn read_mapped(&self, ino: InodeNo, e: Extent, s: u64, en: u64, dst: &mut [u8]) -> Result<()> {
        let cache = &self.vol.cache.data;
        if !cache.enabled() {
            return self.vol.dev.read_at(dst, e.pblk.byte_offset() + (s - e.lblk * BS));
        }
        let (first, last) = (s / BS, (en - 1) / BS);
        // Blocks [miss, l) are not cached and not read yet.
        let mut miss = None;
        for l in first..=last + 1 {
            let hit = l <= last && {
                let (bs, be) = ((l * BS).max(s), ((l + 1) * BS).min(en));
                cache.read(ino, e.pblk_of(l), (bs - l * BS) as usize, &mut dst[(bs - s) as usize..(be - s) as usize])
            };
            match (hit || l > last, miss) {
                (false, None) => miss = Some(l),
                (true, Some(m)) => {
                    self.read_blocks_into(ino, e, m, l, s, en, dst)?;
                    miss = None;
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Reads logical blocks [from, to) of extent `e` whole from the device, caches them, and
    /// copies their part of bytes [s, en) into `dst` (which holds [s, en)).
    #[allow(clippy::too_many_arguments)]
    fn read_blocks_into(&self, ino: InodeNo, e: Extent, from: u64, to: u64, s: u64, en: u64, dst: &mut [u8]) -> Result<()> {
        let mut whole = vec![0u8; ((to - from) * BS) as usize];
        self.vol.dev.read_at(&mut whole, e.pblk_of(from).byte_offset())?;
        for (i, block) in whole.chunks_exact(BS as usize).enumerate() {
            self.vol.cache.data.put(ino, e.pblk_of(from + i as u64), block);
        }
        let (bs, be) = ((from * BS).max(s), (to * BS).min(en));
        dst[(bs - s) as usize..(be - s) as usize].copy_from_slice(&whole[(bs - from * BS) as usize..(be - from * BS) as usize]);
        Ok(())
    }

    /// Moves a stuffed file's bytes out of the inode into a data block.
    fn unstuff(&self, h: &Handle, buf: &Arc<MetaBuf>, inode: &mut Inode) -> Result<()> {
        let inline: Vec<u8> = buf.read()[INLINE_OFFSET..INLINE_OFFSET + inode.size as usize].to_vec();
        {
            let mut d = h.write(buf);
            d[INLINE_OFFSET..].fill(0);
        }
        inode.flags &= !FLAG_STUFFED;
        if inode.size > 0 {
            let (p, _) = self.vol.alloc.alloc(h, 1, Some(buf.blkno + 1), BlockState::Data)?;
            let mut block = vec![0u8; BLOCK_SIZE];
            block[..inline.len()].copy_from_slice(&inline);
            self.dev_write(inode.ino, &block, p, 0)?;
            let mut t = self.tree_mut(h, buf);
            insert_extent(&mut t, Extent { lblk: 0, pblk: p, len: 1 })?;
            inode.blocks = (inode.blocks as i64 + 1 + t.blocks_delta) as u64;
        }
        inode.encode_into(&mut h.write(buf));
        Ok(())
    }

    /// Allocates and fills blocks for the hole [lblk, lblk+n) with `fill(i, block)` giving the
    /// content of the i-th block; returns how many blocks were mapped (at least one).
    fn fill_hole(
        &self,
        h: &Handle,
        buf: &Arc<MetaBuf>,
        inode: &mut Inode,
        lblk: u64,
        n: u64,
        fill: &mut dyn FnMut(u64, BlockNo, u64) -> Result<()>,
    ) -> Result<u64> {
        let goal = {
            let t = self.tree(buf);
            match lblk.checked_sub(1).map(|p| extent_at(&t, p)).transpose()?.flatten() {
                Some(prev) => prev.pblk + (lblk - prev.lblk),
                None => buf.blkno + 1,
            }
        };
        // Data may not take the last blocks: tree nodes for the new extents need them.
        let room = self.vol.alloc.available_to(h).saturating_sub(super::METADATA_RESERVE);
        if room == 0 {
            tracing::debug!(free = self.vol.alloc.free_blocks(), quarantined = self.vol.alloc.quarantined(), "no space for file data");
            return Err(FsError::NoSpace);
        }
        let (p, got) = self.vol.alloc.alloc(h, n.min(MAX_EXTENT).min(room), Some(goal), BlockState::Data)?;
        // Data first, then the mapping (ordered mode). Blocks that could not be filled are
        // given back, or they would be in use with nothing pointing at them.
        if let Err(e) = fill(lblk, p, got) {
            self.vol.cache.data.forget(p, got);
            self.vol.alloc.free(h, p, got)?;
            return Err(e);
        }
        let mut t = self.tree_mut(h, buf);
        insert_extent(&mut t, Extent { lblk, pblk: p, len: got })?;
        inode.blocks = (inode.blocks as i64 + got as i64 + t.blocks_delta) as u64;
        Ok(got)
    }

    /// Writes `data` at byte `off` of an unstuffed file, allocating holes.
    /// `progress` ends as the number of bytes from `off` on that are written and mapped, so a
    /// write that runs out of space partway can report a short write.
    fn write_extents(&self, h: &Handle, buf: &Arc<MetaBuf>, inode: &mut Inode, off: u64, data: &[u8], progress: &mut u64) -> Result<()> {
        let end = off + data.len() as u64;
        let ino = inode.ino;
        let mut lblk = off / BS;
        let last = (end - 1) / BS;
        while lblk <= last {
            let (mapped, next_key) = {
                let t = self.tree(buf);
                let m = extent_at(&t, lblk)?;
                let mut next = None;
                if m.is_none() {
                    t.scan(lblk + 1, &mut |k, _| {
                        next = Some(k);
                        false
                    })?;
                }
                (m, next)
            };
            match mapped {
                Some(e) => {
                    let run_end = (e.lblk + e.len).min(last + 1);
                    let bstart = (lblk * BS).max(off);
                    let bend = (run_end * BS).min(end);
                    let src = &data[(bstart - off) as usize..(bend - off) as usize];
                    self.dev_write(ino, src, e.pblk_of(lblk), bstart - lblk * BS)?;
                    lblk = run_end;
                    *progress = bend - off;
                }
                None => {
                    let hole_end = next_key.unwrap_or(u64::MAX).min(last + 1);
                    let got = self.fill_hole(h, buf, inode, lblk, hole_end - lblk, &mut |l0, p, n| {
                        let bstart = l0 * BS;
                        let bend = (l0 + n) * BS;
                        let (ds, de) = (bstart.max(off), bend.min(end));
                        if ds == bstart && de == bend {
                            return self.dev_write(ino, &data[(ds - off) as usize..(de - off) as usize], p, 0);
                        }
                        // Partial blocks at the edges of a new run: the rest reads as zeros.
                        let mut tmp = vec![0u8; (n * BS) as usize];
                        tmp[(ds - bstart) as usize..(de - bstart) as usize]
                            .copy_from_slice(&data[(ds - off) as usize..(de - off) as usize]);
                        self.dev_write(ino, &tmp, p, 0)
                    })?;
                    lblk += got;
                    *progress = (lblk * BS).min(end) - off;
                }
            }
        }
        Ok(())
    }

    /// Makes bytes from `from` up to the end of its block, and every allocated block from the
    /// next block up to `to_blk`, read as zeros (they may hold stale bytes beyond the old EOF).
    fn zero_beyond_eof(&self, buf: &Arc<MetaBuf>, inode: &Inode, from: u64, to: u64) -> Result<()> {
        if inode.stuffed() || to <= from {
            return Ok(());
        }
        let t = self.tree(buf);
        let first_full = from.div_ceil(BS);
        if !from.is_multiple_of(BS) {
            if let Some(e) = extent_at(&t, from / BS)? {
                let within = from % BS;
                let n = (BS - within).min(to - from);
                self.dev_zero(e.pblk_of(from / BS), within, n)?;
            }
        }
        let last_blk = to.div_ceil(BS);
        if first_full < last_blk {
            for e in extents_in(&t, first_full, last_blk, usize::MAX)? {
                let s = e.lblk.max(first_full);
                let eend = (e.lblk + e.len).min(last_blk);
                if s < eend {
                    self.dev_zero(e.pblk_of(s), 0, (eend - s) * BS)?;
                }
            }
        }
        Ok(())
    }

    pub fn write(&self, ino: InodeNo, off: u64, data: &[u8]) -> Result<usize> {
        self.write_at(ino, WriteAt::Offset(off), data)
    }

    /// Writes `data` at the end of the file as it is under the inode's lock (O_APPEND): the
    /// size a kernel last saw may be stale (another node appended since, in cluster mode).
    pub fn append(&self, ino: InodeNo, data: &[u8]) -> Result<usize> {
        self.write_at(ino, WriteAt::End, data)
    }

    fn write_at(&self, ino: InodeNo, at: WriteAt, data: &[u8]) -> Result<usize> {
        if data.is_empty() {
            return Ok(0);
        }
        let len = data.len() as u64;
        let too_big = |off: u64| off.checked_add(len).filter(|end| *end <= super::MAX_FILE_SIZE).ok_or(FsError::FileTooBig);
        // Reserved before the transaction; at the end of the file the offset is known only
        // under the lock, and data may then straddle one block more than its length spans.
        let blocks = match at {
            WriteAt::Offset(off) => too_big(off)?.div_ceil(BS) - off / BS,
            WriteAt::End => len.div_ceil(BS) + 1,
        };
        let _g = self.locks.lock(ino, Mode::Exclusive)?;
        let mut plan = self.ag_plan();
        plan.allocates_data(blocks, super::METADATA_OP_BLOCKS);
        let ags = self.hold_ags(plan)?;
        let h = self.begin_alloc_in(blocks, &ags)?;
        let (buf, mut inode) = self.iget(ino)?;
        if inode.is_dir() {
            return Err(FsError::IsDir);
        }
        let off = match at {
            WriteAt::Offset(off) => off,
            WriteAt::End => inode.size,
        };
        let end = too_big(off)?;
        if inode.stuffed() && end <= INLINE_LEN as u64 {
            let mut d = h.write(&buf);
            d[INLINE_OFFSET + off as usize..INLINE_OFFSET + end as usize].copy_from_slice(data);
        } else {
            if inode.stuffed() {
                self.unstuff(&h, &buf, &mut inode)?;
            }
            if off > inode.size {
                self.zero_beyond_eof(&buf, &inode, inode.size, off)?;
            }
            let mut progress = 0;
            let r = self.write_extents(&h, &buf, &mut inode, off, data, &mut progress);
            if let Err(e) = r {
                // What was mapped stays mapped and counted; a partial write is a short write.
                if progress > 0 {
                    inode.size = inode.size.max(off + progress);
                    inode.mtime = Timespec::now();
                    inode.ctime = inode.mtime;
                }
                self.iput(&h, &buf, &inode);
                return if progress > 0 && matches!(e, FsError::NoSpace) { Ok(progress as usize) } else { Err(e) };
            }
        }
        let now = Timespec::now();
        inode.size = inode.size.max(end);
        inode.mtime = now;
        inode.ctime = now;
        self.iput(&h, &buf, &inode);
        Ok(data.len())
    }

    pub fn read(&self, ino: InodeNo, off: u64, size: u32) -> Result<Vec<u8>> {
        let _g = self.locks.lock(ino, Mode::Shared)?;
        let (buf, inode) = self.iget(ino)?;
        if inode.is_dir() {
            return Err(FsError::IsDir);
        }
        if off >= inode.size {
            return Ok(Vec::new());
        }
        let end = (off + size as u64).min(inode.size);
        let mut out = vec![0u8; (end - off) as usize];
        if inode.stuffed() {
            out.copy_from_slice(&buf.read()[INLINE_OFFSET + off as usize..INLINE_OFFSET + end as usize]);
            return Ok(out);
        }
        let t = self.tree(&buf);
        for e in extents_in(&t, off / BS, end.div_ceil(BS), usize::MAX)? {
            let s = (e.lblk * BS).max(off);
            let en = ((e.lblk + e.len) * BS).min(end);
            if s < en {
                self.read_mapped(ino, e, s, en, &mut out[(s - off) as usize..(en - off) as usize])?;
            }
        }
        Ok(out)
    }

    /// Frees the data blocks of logical blocks [from, to), at most `max` extents; returns
    /// whether the range is now empty. The caller writes the inode back.
    pub(crate) fn free_blocks_range(
        &self,
        h: &Handle,
        buf: &Arc<MetaBuf>,
        inode: &mut Inode,
        from: u64,
        to: u64,
        max: usize,
    ) -> Result<bool> {
        if inode.stuffed() {
            return Ok(true);
        }
        let list = extents_in(&self.tree(buf), from, to, max.saturating_add(1))?;
        let done = list.len() <= max;
        let mut t = self.tree_mut(h, buf);
        let mut freed = 0u64;
        for e in list.into_iter().take(max) {
            let s = e.lblk.max(from);
            let en = (e.lblk + e.len).min(to);
            if s >= en {
                continue;
            }
            t.remove(e.lblk)?;
            if e.lblk < s {
                put_extent(&mut t, Extent { len: s - e.lblk, ..e })?;
            }
            if e.lblk + e.len > en {
                put_extent(&mut t, Extent { lblk: en, pblk: e.pblk_of(en), len: e.lblk + e.len - en })?;
            }
            self.vol.cache.data.forget(e.pblk_of(s), en - s);
            self.vol.alloc.free(h, e.pblk_of(s), en - s)?;
            freed += en - s;
        }
        inode.blocks = (inode.blocks as i64 - freed as i64 + t.blocks_delta) as u64;
        Ok(done)
    }

    /// Frees every data block at or after logical block `from` (bounded step).
    pub(crate) fn free_data_from(&self, h: &Handle, buf: &Arc<MetaBuf>, inode: &mut Inode, from: u64, max: usize) -> Result<bool> {
        self.free_blocks_range(h, buf, inode, from, u64::MAX >> 16, max)
    }

    /// Changes the size: shrinking frees blocks in bounded transactions; growing leaves a hole.
    pub(crate) fn truncate(&self, ino: InodeNo, new_size: u64) -> Result<()> {
        if new_size > super::MAX_FILE_SIZE {
            return Err(FsError::FileTooBig);
        }
        let mut first = true;
        // Listed in the orphan directory while a truncate spans several transactions, so a
        // crash in between is finished by the next mount (see orphans.rs).
        let mut listed = false;
        loop {
            let _g = self.locks.lock(ino, Mode::Exclusive)?;
            let (buf, mut inode) = self.iget(ino)?;
            if inode.is_dir() {
                return Err(FsError::IsDir);
            }
            // The orphan directory is locked (before the handle) only for a truncate that
            // takes more than one step: the rest need not wait for each other there.
            let from = new_size.div_ceil(BS);
            let orphans =
                if listed || (!inode.stuffed() && self.more_than_a_step(&buf, from)?) { Some(self.lock_orphans()?) } else { None };
            let mut plan = self.ag_plan();
            self.plan_data_frees(&mut plan, &buf, &inode, from, u64::MAX >> 16, false)?;
            // Unstuffing, and listing or unlisting the inode in the orphan directory.
            plan.allocates(1 + super::METADATA_OP_BLOCKS);
            if let Some(od) = &orphans {
                self.plan_orphan_change(&mut plan, od, ino)?;
            }
            let ags = self.hold_ags(plan)?;
            let h = self.begin_in(&ags)?;
            if first {
                first = false;
                let old = inode.size;
                if inode.stuffed() {
                    if new_size <= INLINE_LEN as u64 {
                        if new_size < old {
                            h.write(&buf)[INLINE_OFFSET + new_size as usize..INLINE_OFFSET + old as usize].fill(0);
                        }
                    } else {
                        self.unstuff(&h, &buf, &mut inode)?;
                    }
                } else if new_size < old {
                    // Nothing is zeroed now: bytes past the new EOF in its last block are zeroed
                    // when the file grows again (every path that extends a file calls
                    // zero_beyond_eof first), so a truncate that a crash undoes never has
                    // changed data on the device.
                } else if new_size > old {
                    self.zero_beyond_eof(&buf, &inode, old, new_size)?;
                }
                if new_size != old {
                    let now = Timespec::now();
                    inode.mtime = now;
                    inode.ctime = now;
                }
                inode.size = new_size;
            }
            let done = if inode.stuffed() { true } else { self.free_data_from(&h, &buf, &mut inode, from, EXTENTS_PER_STEP)? };
            if orphans.is_some() || !done {
                let od = orphans.as_ref().ok_or(FsError::Invalid("a truncate of several steps without its orphan directory's lock"))?;
                if !done && !listed {
                    self.add_orphan(&h, od, ino)?;
                    listed = true;
                }
                if done && listed {
                    self.remove_orphan(&h, od, ino)?;
                }
            }
            self.iput(&h, &buf, &inode);
            if done {
                return Ok(());
            }
        }
    }

    pub fn fallocate(&self, ino: InodeNo, off: u64, len: u64, mode: FallocMode) -> Result<()> {
        if len == 0 {
            return Err(FsError::Invalid("fallocate length 0"));
        }
        let end = off.checked_add(len).ok_or(FsError::FileTooBig)?;
        if end > super::MAX_FILE_SIZE {
            return Err(FsError::FileTooBig);
        }
        if mode.punch_hole || mode.zero_range {
            self.punch(ino, off, end)?;
            if mode.punch_hole {
                return Ok(());
            }
        }
        let _g = self.locks.lock(ino, Mode::Exclusive)?;
        let (buf, mut inode) = self.iget(ino)?;
        let blocks = end.div_ceil(BS) - off / BS;
        let mut plan = self.ag_plan();
        plan.allocates_data(blocks, super::METADATA_OP_BLOCKS);
        // A fallocate that runs out of space unmaps what it mapped, which may free tree nodes.
        self.plan_data_frees(&mut plan, &buf, &inode, 0, 0, false)?;
        let ags = self.hold_ags(plan)?;
        let h = self.begin_alloc_in(blocks, &ags)?;
        if !inode.is_reg() {
            return Err(if inode.is_dir() { FsError::IsDir } else { FsError::NotSupported });
        }
        let stays_inline = inode.stuffed() && (end <= INLINE_LEN as u64 || mode.keep_size && off >= inode.size);
        if !stays_inline || end > INLINE_LEN as u64 {
            if inode.stuffed() {
                self.unstuff(&h, &buf, &mut inode)?;
            }
            if end > inode.size && !mode.keep_size {
                self.zero_beyond_eof(&buf, &inode, inode.size, end)?;
            }
            if let Err(e) = self.allocate_range(&h, &buf, &mut inode, off / BS, end.div_ceil(BS)) {
                self.iput(&h, &buf, &inode);
                return Err(e);
            }
        }
        if !mode.keep_size && end > inode.size {
            inode.size = end;
        }
        inode.ctime = Timespec::now();
        if !mode.keep_size {
            inode.mtime = inode.ctime;
        }
        self.iput(&h, &buf, &inode);
        Ok(())
    }

    /// Allocates zeroed blocks for every hole in logical blocks [from, to). All or nothing: if
    /// the space runs out partway, what this call mapped is freed again in the same transaction
    /// (a failed fallocate must not leave a partial allocation that only a delete gets back).
    fn allocate_range(&self, h: &Handle, buf: &Arc<MetaBuf>, inode: &mut Inode, from: u64, to: u64) -> Result<()> {
        let mut mapped: Vec<(u64, u64)> = Vec::new();
        let r = self.fill_holes(h, buf, inode, from, to, &mut mapped);
        if r.is_err() {
            for &(lblk, n) in &mapped {
                self.free_blocks_range(h, buf, inode, lblk, lblk + n, usize::MAX)?;
            }
        }
        r
    }

    /// Fills the holes of [from, to) with zeroed blocks, recording each new run in `mapped`.
    fn fill_holes(
        &self,
        h: &Handle,
        buf: &Arc<MetaBuf>,
        inode: &mut Inode,
        from: u64,
        to: u64,
        mapped: &mut Vec<(u64, u64)>,
    ) -> Result<()> {
        let mut lblk = from;
        while lblk < to {
            let t = self.tree(buf);
            if let Some(e) = extent_at(&t, lblk)? {
                lblk = e.lblk + e.len;
                continue;
            }
            let mut next = u64::MAX;
            t.scan(lblk + 1, &mut |k, _| {
                next = k;
                false
            })?;
            let hole_end = next.min(to);
            let got = self.fill_hole(h, buf, inode, lblk, hole_end - lblk, &mut |_, p, n| self.dev_zero(p, 0, n * BS))?;
            mapped.push((lblk, got));
            lblk += got;
        }
        Ok(())
    }

    /// Punches [off, end): whole blocks are freed, partial edge blocks zeroed.
    fn punch(&self, ino: InodeNo, off: u64, end: u64) -> Result<()> {
        let mut first = true;
        loop {
            let _g = self.locks.lock(ino, Mode::Exclusive)?;
            let (buf, mut inode) = self.iget(ino)?;
            let mut plan = self.ag_plan();
            self.plan_data_frees(&mut plan, &buf, &inode, off.div_ceil(BS), end / BS, false)?;
            // A hole in the middle of an extent splits it.
            plan.allocates(super::METADATA_OP_BLOCKS);
            let ags = self.hold_ags(plan)?;
            let h = self.begin_in(&ags)?;
            if !inode.is_reg() {
                return Err(if inode.is_dir() { FsError::IsDir } else { FsError::NotSupported });
            }
            if inode.stuffed() {
                let s = off.min(inode.size) as usize;
                let e = end.min(inode.size) as usize;
                if s < e {
                    h.write(&buf)[INLINE_OFFSET + s..INLINE_OFFSET + e].fill(0);
                }
                inode.mtime = Timespec::now();
                inode.ctime = inode.mtime;
                self.iput(&h, &buf, &inode);
                return Ok(());
            }
            if first {
                first = false;
                let t = self.tree(&buf);
                // Partial blocks at either edge: zero the covered bytes in place.
                for (s, e) in [(off, end.min(off.div_ceil(BS) * BS)), ((end / BS * BS).max(off), end)] {
                    if s < e && (s % BS != 0 || e % BS != 0) {
                        if let Some(x) = extent_at(&t, s / BS)? {
                            self.dev_zero(x.pblk_of(s / BS), s % BS, e - s)?;
                        }
                    }
                }
                inode.mtime = Timespec::now();
                inode.ctime = inode.mtime;
            }
            let done = self.free_blocks_range(&h, &buf, &mut inode, off.div_ceil(BS), end / BS, EXTENTS_PER_STEP)?;
            self.iput(&h, &buf, &inode);
            if done {
                return Ok(());
            }
        }
    }

    /// SEEK_DATA / SEEK_HOLE from `off`; ENXIO past the end.
    pub fn lseek(&self, ino: InodeNo, off: u64, whence: Whence) -> Result<u64> {
        let _g = self.locks.lock(ino, Mode::Shared)?;
        let (buf, inode) = self.iget(ino)?;
        if off >= inode.size {
            return Err(FsError::PastEnd);
        }
        if inode.stuffed() {
            return Ok(match whence {
                Whence::Data => off,
                Whence::Hole => inode.size,
            });
        }
        let t = self.tree(&buf);
        let mut lblk = off / BS;
        let last = inode.size.div_ceil(BS);
        loop {
            if lblk >= last {
                return match whence {
                    Whence::Data => Err(FsError::PastEnd),
                    Whence::Hole => Ok(inode.size),
                };
            }
            let here = extent_at(&t, lblk)?;
            match (whence, here) {
                (Whence::Data, Some(_)) | (Whence::Hole, None) => return Ok((lblk * BS).max(off).min(inode.size)),
                (Whence::Hole, Some(e)) => lblk = e.lblk + e.len,
                (Whence::Data, None) => {
                    let mut next = u64::MAX;
                    t.scan(lblk + 1, &mut |k, _| {
                        next = k;
                        false
                    })?;
                    lblk = next;
                }
            }
        }
    }
}
