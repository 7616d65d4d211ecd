//! The node's metadata journal (write-ahead log in its own slot).
//!
//! Operations change metadata blocks in the cache inside a `Handle`; the handle joins every
//! block it changes to the *running transaction*. `Journal::commit` closes that transaction
//! (briefly excluding new handles while it copies the block images), writes it to the slot's
//! journal, flushes, writes the commit record, flushes again, and then writes the images home.
//! Many operations share one transaction (group commit), so a burst of creates costs a few
//! flushes, not one per create.
//!
//! Ordered data: file data is written to its home blocks before the operation that maps it
//! ends, and the first flush of the commit makes it durable before the commit record is, so
//! metadata never points at unwritten data after a crash.
pub mod records;
pub mod replay;
pub mod slot_header;

pub use slot_header::{read_slot, slot_copies_ok, write_slot};

use crate::cache::{MetaBuf, MetaCache};
use crate::device::BlockDevice;
use crate::error::{FsError, Result};
use crate::format::layout::Layout;
use crate::format::slot::{SlotHeader, SlotState};
use crate::format::{header, BlockNo, BLOCK_SIZE};
use parking_lot::{Condvar, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

#[derive(Default)]
struct Running {
    dirty: HashMap<BlockNo, Arc<MetaBuf>>,
    revokes: HashSet<BlockNo>,
    /// Extents (first block, length) freed in this transaction: reusable only once it is
    /// committed.
    freed: Vec<(BlockNo, u64)>,
}

struct State {
    /// Next free block in the journal (relative).
    head: u64,
    /// Sequence of the running transaction.
    next_seq: u64,
    committed_seq: u64,
    slot: SlotHeader,
}

pub struct Journal {
    dev: Arc<dyn BlockDevice>,
    cache: Arc<MetaCache>,
    layout: Layout,
    seed: u32,
    /// Held shared by every handle and exclusively by a commit while it captures images.
    gate: RwLock<()>,
    running: Mutex<Running>,
    state: Mutex<State>,
    /// One commit at a time; it holds the buffer the commit assembles its blocks in.
    commit_lock: Mutex<Vec<u8>>,
    committed: Condvar,
    fatal: Mutex<Option<String>>,
    /// A running transaction with this many blocks is due for commit: by the background
    /// committer if there is one (see [`Journal::request_commit`]), else before new handles start.
    limit: usize,
    committer: Mutex<Committer>,
    kick: Condvar,
    /// Serializes slot header writes (see `update_slot`); true once the slot was marked clean:
    /// from then on another node may own the slot, and nothing of ours may touch its header.
    slot_write: Mutex<bool>,
}

/// The background committer's mailbox.
#[derive(Default)]
struct Committer {
    /// A thread waits in [`Journal::wait_for_commit_request`] (the mount's commit thread).
    present: bool,
    wanted: bool,
}

/// One operation's membership in the running transaction.
pub struct Handle<'a> {
    j: &'a Journal,
    _gate: RwLockReadGuard<'a, ()>,
    /// The allocation groups this operation holds (cluster mode's AG locks, taken before the
    /// handle): the allocator allocates and frees only there. `None`: any group (standalone).
    ags: Option<Box<[u32]>>,
}

impl Drop for Handle<'_> {
    fn drop(&mut self) {
        HANDLES_HERE.with(|n| n.set(n.get().saturating_sub(1)));
    }
}

thread_local! {
    /// Journal handles the current thread holds.
    static HANDLES_HERE: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

/// How many journal handles the calling thread holds. Cluster mode asserts it is 0 before every
/// lockd call that may wait (a handle held across one could deadlock nodes across commits).
pub fn handles_held_here() -> u32 {
    HANDLES_HERE.with(|n| n.get())
}

/// What a commit released for reuse.
pub struct Committed {
    pub seq: u64,
    pub freed: Vec<(BlockNo, u64)>,
}

impl Journal {
    /// Starts journaling into `slot`, whose journal has been replayed: writes the slot header
    /// as in use, with replay starting at the journal's start and sequence `next_seq`.
    pub fn start(
        dev: Arc<dyn BlockDevice>,
        cache: Arc<MetaCache>,
        layout: Layout,
        seed: u32,
        mut slot: SlotHeader,
        next_seq: u64,
        owner: &str,
    ) -> Result<Journal> {
        slot.state = SlotState::InUse;
        slot.generation += 1;
        slot.journal_tail = 0;
        slot.tail_seq = next_seq;
        slot.mounted_at = crate::format::inode::Timespec::now().sec;
        slot.owner = owner.to_string();
        slot.mmp_seq = slot.mmp_seq.wrapping_add(1).max(1);
        slot.mmp_time = slot.mounted_at;
        write_slot(&*dev, &layout, &mut slot, seed)?;
        let limit = (layout.journal_blocks as usize / 4).max(64);
        Ok(Journal {
            dev,
            cache,
            layout,
            seed,
            gate: RwLock::new(()),
            running: Mutex::new(Running::default()),
            state: Mutex::new(State { head: 0, next_seq, committed_seq: next_seq.saturating_sub(1), slot }),
            commit_lock: Mutex::new(Vec::new()),
            committed: Condvar::new(),
            fatal: Mutex::new(None),
            limit,
            committer: Mutex::new(Committer::default()),
            kick: Condvar::new(),
            slot_write: Mutex::new(false),
        })
    }

    fn check_fatal(&self) -> Result<()> {
        match &*self.fatal.lock() {
            Some(why) => Err(FsError::Stopped(why.clone())),
            None => Ok(()),
        }
    }

    /// Why the journal stopped writing (its first fatal error), if it did.
    pub fn fatal_error(&self) -> Option<String> {
        self.fatal.lock().clone()
    }

    /// True if the running transaction has grown past its limit and should be committed
    /// before another handle joins it.
    pub fn is_full(&self) -> bool {
        self.running.lock().dirty.len() >= self.limit
    }

    /// True past twice the limit: the background committer is behind, and callers must commit
    /// themselves so that one transaction never outgrows the journal.
    pub fn is_over_hard_limit(&self) -> bool {
        self.running.lock().dirty.len() >= 2 * self.limit
    }

    /// Asks the background committer to commit now; false if there is none, and the caller
    /// must commit itself. Why a thread: a commit of a full transaction writes and flushes
    /// megabytes, and the operation that happened to fill it should not wait for that (jbd2
    /// commits in its own thread for the same reason).
    pub fn request_commit(&self) -> bool {
        let mut c = self.committer.lock();
        if c.present {
            c.wanted = true;
            self.kick.notify_one();
        }
        c.present
    }

    /// For the background committer: registers it, then waits until a commit is requested or
    /// `timeout` passes. True if one was requested.
    pub fn wait_for_commit_request(&self, timeout: Duration) -> bool {
        let mut c = self.committer.lock();
        c.present = true;
        if !c.wanted {
            self.kick.wait_for(&mut c, timeout);
        }
        std::mem::take(&mut c.wanted)
    }

    /// The background committer is gone: callers commit for themselves again.
    pub fn committer_stopped(&self) {
        *self.committer.lock() = Committer::default();
    }

    /// Joins the running transaction. Callers check `is_full` first (see `Volume::begin`), so
    /// that one transaction never outgrows the journal.
    pub fn begin(&self) -> Result<Handle<'_>> {
        self.check_fatal()?;
        let h = Handle { j: self, _gate: self.gate.read(), ags: None };
        HANDLES_HERE.with(|n| n.set(n.get() + 1));
        Ok(h)
    }

    /// True if the running transaction holds no change (a periodic commit would only flush).
    pub fn is_idle(&self) -> bool {
        let run = self.running.lock();
        run.dirty.is_empty() && run.revokes.is_empty() && run.freed.is_empty()
    }

    /// Sequence of the running transaction: once it is committed, everything done so far is durable.
    pub fn running_seq(&self) -> u64 {
        self.state.lock().next_seq
    }

    pub fn slot(&self) -> SlotHeader {
        self.state.lock().slot.clone()
    }

    /// Commits unless transaction `seq` already is.
    pub fn commit_upto(&self, seq: u64) -> Result<Option<Committed>> {
        if self.state.lock().committed_seq >= seq {
            return Ok(None);
        }
        let c = self.commit()?;
        Ok(Some(c))
    }

    /// Closes the running transaction and makes it durable (see the module comment).
    pub fn commit(&self) -> Result<Committed> {
        let mut scratch = self.commit_lock.lock();
        self.check_fatal()?;
        let (seq, images, revokes, freed) = {
            let _excl: RwLockWriteGuard<'_, ()> = self.gate.write();
            let mut run = self.running.lock();
            let mut st = self.state.lock();
            let empty = run.dirty.is_empty() && run.revokes.is_empty() && run.freed.is_empty();
            if empty {
                // Nothing to log: an empty transaction must not use up a sequence number, or
                // replay would stop at the gap. fsync still needs the data writes durable.
                let done = st.committed_seq;
                drop(st);
                drop(run);
                drop(_excl);
                if let Err(e) = self.dev.flush() {
                    *self.fatal.lock() = Some(format!("flush failed: {e}"));
                    return Err(e);
                }
                return Ok(Committed { seq: done, freed: Vec::new() });
            }
            let seq = st.next_seq;
            st.next_seq += 1;
            let taken = std::mem::take(&mut *run);
            let mut images: Vec<(BlockNo, Vec<u8>)> = Vec::with_capacity(taken.dirty.len());
            for (blk, buf) in taken.dirty {
                let mut img = buf.read().to_vec();
                header::reseal(&mut img, seq, self.seed);
                buf.dirty.store(false, Ordering::Release);
                buf.last_seq.store(seq, Ordering::Release);
                images.push((blk, img));
            }
            images.sort_unstable_by_key(|(b, _)| *b);
            let mut revokes: Vec<BlockNo> = taken.revokes.into_iter().collect();
            revokes.sort_unstable();
            (seq, images, revokes, taken.freed)
        };
        match self.write_txn(&mut scratch, seq, &images, &revokes) {
            Ok(()) => {}
            Err(e) => {
                *self.fatal.lock() = Some(format!("journal commit {seq} failed: {e}"));
                return Err(e);
            }
        }
        self.cache.checkpointed_seq.fetch_max(seq, Ordering::AcqRel);
        let mut st = self.state.lock();
        st.committed_seq = seq;
        self.committed.notify_all();
        Ok(Committed { seq, freed })
    }

    fn write_txn(&self, body: &mut Vec<u8>, seq: u64, images: &[(BlockNo, Vec<u8>)], revokes: &[BlockNo]) -> Result<()> {
        let items: Vec<(u64, Option<&[u8]>)> =
            revokes.iter().map(|r| (r.get(), None)).chain(images.iter().map(|(b, img)| (b.get(), Some(img.as_slice())))).collect();
        let (jstart, jlen) = self.layout.journal_ring(self.state.lock().slot.index);
        let ndesc = items.len().div_ceil(records::DESC_CAPACITY).max(1);
        let total = (ndesc + images.len() + 1) as u64;
        if total > jlen as u64 {
            return Err(FsError::Stopped(format!("transaction of {total} blocks does not fit the {jlen}-block journal")));
        }
        let mut head = self.state.lock().head;
        if head + total > jlen as u64 {
            // Wrap: every earlier transaction is already home; make that durable, then move the
            // replay start to the journal's beginning before overwriting it.
            self.dev.flush()?;
            self.update_slot(|st| {
                st.slot.journal_tail = 0;
                st.slot.tail_seq = seq;
                st.head = 0;
            })?;
            head = 0;
        }
        records::build_txn(body, &items, jstart + head, seq, self.seed);
        let nblocks = (body.len() / BLOCK_SIZE) as u64;
        self.dev.write_at(body, BlockNo(jstart + head).byte_offset())?;
        self.dev.flush()?;
        let commit = records::encode_commit(nblocks as u32, records::txn_crc(body, seq), jstart + head + nblocks, seq, self.seed);
        self.dev.write_at(&commit, BlockNo(jstart + head + nblocks).byte_offset())?;
        self.dev.flush()?;
        self.state.lock().head = head + nblocks + 1;
        // Checkpoint: the transaction is durable in the journal, so home writes may now land
        // in any order; they are made durable by the next flush (at the latest before a wrap).
        write_home(&*self.dev, images, body)
    }

    /// Leaves nothing in the journal that a replay would write: the committed transactions'
    /// home writes are made durable, then the replay start moves to the head. From then on
    /// another node may change any block this node journaled, and a crash of this node replays
    /// nothing over it. The caller commits first; a transaction that commits meanwhile is
    /// covered too (its home writes precede the flush below, under the commit lock).
    pub fn retire_committed(&self) -> Result<()> {
        let _no_commit = self.commit_lock.lock();
        self.check_fatal()?;
        {
            // Nothing committed since the tail last moved (a node that only read gives the
            // volume lock up): nothing to flush, no slot header to write.
            let st = self.state.lock();
            if st.slot.journal_tail == st.head && st.slot.tail_seq == st.next_seq {
                return Ok(());
            }
        }
        if let Err(e) = self.dev.flush() {
            *self.fatal.lock() = Some(format!("flush failed: {e}"));
            return Err(e);
        }
        self.update_slot(|st| {
            st.slot.journal_tail = st.head;
            st.slot.tail_seq = st.next_seq;
        })
    }

    /// Commits everything and marks the slot clean (unmount).
    pub fn shutdown(&self) -> Result<()> {
        self.commit()?;
        self.dev.flush()?;
        self.update_slot(|st| {
            st.slot.state = SlotState::Clean;
            st.slot.journal_tail = st.head;
            st.slot.tail_seq = st.next_seq;
            // 0: cleanly unmounted, nobody to watch for (crate::mmp).
            st.slot.mmp_seq = 0;
        })?;
        *self.slot_write.lock() = true;
        Ok(())
    }

    /// Multi-mount protection: shows other hosts that this mount is alive (see `crate::mmp`).
    pub fn touch_mmp(&self) -> Result<()> {
        self.update_slot(|st| {
            st.slot.mmp_seq = st.slot.mmp_seq.wrapping_add(1).max(1);
            st.slot.mmp_time = crate::format::inode::Timespec::now().sec;
        })
    }

    /// Changes the slot header and writes it. The writes are serialized (one block, held only
    /// for its write): two writers each writing its own copy could land out of order, and an
    /// older journal tail written last would make a replay start before checkpointed data.
    fn update_slot(&self, change: impl FnOnce(&mut State)) -> Result<()> {
        let closed = self.slot_write.lock();
        if *closed {
            return Ok(());
        }
        let mut slot = {
            let mut st = self.state.lock();
            change(&mut st);
            st.slot.clone()
        };
        let written = write_slot(&*self.dev, &self.layout, &mut slot, self.seed);
        // The version moves on even if the write failed: the next one must not reuse its copy.
        self.state.lock().slot.update_seq = slot.update_seq;
        written
    }
}

/// Writes images to their home blocks, coalescing runs of consecutive blocks in `run`.
fn write_home(dev: &dyn BlockDevice, images: &[(BlockNo, Vec<u8>)], run: &mut Vec<u8>) -> Result<()> {
    let mut i = 0;
    while i < images.len() {
        let mut j = i + 1;
        while j < images.len() && images[j].0 == images[j - 1].0 + 1 && j - i < 256 {
            j += 1;
        }
        if j - i == 1 {
            dev.write_at(&images[i].1, images[i].0.byte_offset())?;
        } else {
            run.clear();
            for (_, img) in &images[i..j] {
                run.extend_from_slice(img);
            }
            dev.write_at(run, images[i].0.byte_offset())?;
        }
        i = j;
    }
    Ok(())
}

impl Handle<'_> {
    /// Limits the operation's allocations and frees to the allocation groups `ags` (those it
    /// holds the locks of); `None` leaves every group open to it.
    pub fn limit_to_ags(mut self, ags: Option<&[u32]>) -> Self {
        self.ags = ags.map(Box::from);
        self
    }

    /// Whether this operation may allocate in, or free into, allocation group `ag`.
    pub fn may_use_ag(&self, ag: u32) -> bool {
        self.ags.as_ref().is_none_or(|a| a.contains(&ag))
    }

    /// Write access to `buf`, joining it to the running transaction.
    pub fn write<'b>(&self, buf: &'b Arc<MetaBuf>) -> parking_lot::RwLockWriteGuard<'b, Box<[u8]>> {
        if !buf.dirty.swap(true, Ordering::AcqRel) {
            if let crate::cache::Cover::Inode(ino) = buf.cover() {
                self.j.cache.versions.note_changed(ino);
            }
            let mut run = self.j.running.lock();
            run.revokes.remove(&buf.blkno);
            run.dirty.insert(buf.blkno, buf.clone());
        }
        buf.write_raw()
    }

    /// A metadata block was freed: never replay older images of it, and drop it from the cache.
    pub fn revoke(&self, blkno: BlockNo) {
        let mut run = self.j.running.lock();
        if let Some(buf) = run.dirty.remove(&blkno) {
            buf.dirty.store(false, Ordering::Release);
        }
        run.revokes.insert(blkno);
        drop(run);
        self.j.cache.forget(blkno);
    }

    /// An extent was freed; it becomes allocatable when this transaction commits.
    pub fn freed(&self, start: BlockNo, len: u64) {
        self.j.running.lock().freed.push((start, len));
    }
}

#[cfg(test)]
mod tests;
