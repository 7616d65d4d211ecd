//! Changed-block tracking: which chunks of the volume a node wrote, persisted in its slot's
//! change map before the write itself, so a snapshot reads only what changed since the last
//! one — and a node that crashes or dies loses no mark (the mark is on the device before the
//! data it announces). The records are in `format/change_map.rs`; the protocol (when the
//! generation is read, why marks are one ahead of it) in `docs/design.md`, "Snapshots".
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

use crate::device::BlockDevice;
use crate::error::Result;
use crate::format::change_map::{self, ChangeState};
use crate::format::layout::{Layout, CHUNK_BLOCKS, MARKS_PER_BLOCK};
use crate::format::superblock::Superblock;
use crate::format::{BlockNo, BLOCK_SIZE};

const CHUNK_BYTES: u64 = CHUNK_BLOCKS * BLOCK_SIZE as u64;

/// One slot's change map, held in memory by the node writing through that slot (the only
/// writer of it), and written block by block as marks are added.
pub struct ChangeTracker {
    dev: Arc<dyn BlockDevice>,
    layout: Layout,
    seed: u32,
    slot: u32,
    /// The generation as last read from the state block.
    known: AtomicU64,
    /// The node is being granted the volume lock anew: the generation must be read again
    /// before the next write under it (set before the lock is asked for, cleared by a read).
    stale: AtomicBool,
    marks: Vec<AtomicU32>,
    /// One per change map block: serializes the writes of that block (narrow: one block).
    block_writes: Vec<parking_lot::Mutex<()>>,
}

impl ChangeTracker {
    /// The tracker of `slot`, with its change map and the current generation read from `dev`
    /// (the device without tracking); None on a volume made before change tracking.
    pub fn open(dev: Arc<dyn BlockDevice>, sb: &Superblock, slot: u32) -> Result<Option<Arc<ChangeTracker>>> {
        let layout = sb.layout;
        if !layout.tracks_changes() {
            return Ok(None);
        }
        let seed = sb.crc_seed();
        let marks = read_slot_marks(&*dev, &layout, seed, slot)?.into_iter().map(AtomicU32::new).collect();
        let block_writes = (0..layout.cbt_blocks_per_slot).map(|_| parking_lot::Mutex::new(())).collect();
        let state = read_state(&*dev, sb)?;
        Ok(Some(Arc::new(ChangeTracker {
            dev,
            layout,
            seed,
            slot,
            known: AtomicU64::new(state.generation),
            stale: AtomicBool::new(false),
            marks,
            block_writes,
        })))
    }

    /// Reads the generation again: after the node was granted the volume lock anew (a snapshot
    /// may have bumped it while the node held none), or a standalone mount was thawed.
    pub fn refresh(&self) -> Result<()> {
        let mut b = vec![0u8; BLOCK_SIZE];
        let blk = self.layout.cbt_state_blkno();
        self.dev.forget_cached(BlockNo(blk).byte_offset(), BLOCK_SIZE as u64);
        self.dev.read_at(&mut b, BlockNo(blk).byte_offset())?;
        let state = ChangeState::decode(&b, blk, self.seed)?;
        self.known.fetch_max(state.generation, Ordering::AcqRel);
        Ok(())
    }

    /// A freeze moved the generation on but it could not be read: marks go one further.
    pub fn assume_next_generation(&self) {
        self.known.fetch_add(1, Ordering::AcqRel);
    }

    /// The node is about to ask for the volume lock afresh: until the generation is read again
    /// ([`refresh_if_stale`](Self::refresh_if_stale)), a request holding it must not write.
    pub fn expect_new_generation(&self) {
        self.stale.store(true, Ordering::Release);
    }

    /// Reads the generation if [`expect_new_generation`](Self::expect_new_generation) said it
    /// may have changed (an atomic load otherwise).
    pub fn refresh_if_stale(&self) -> Result<()> {
        if self.stale.load(Ordering::Acquire) {
            self.refresh()?;
            self.stale.store(false, Ordering::Release);
        }
        Ok(())
    }

    /// The generation this node last read.
    pub fn known_generation(&self) -> u64 {
        self.known.load(Ordering::Acquire)
    }

    /// Marks every chunk `len` bytes at `offset` touch, persisting each change map block that
    /// changes, before the caller writes there.
    pub fn mark(&self, offset: u64, len: u64) -> Result<()> {
        if len == 0 {
            return Ok(());
        }
        // One ahead: a node that has not yet read the generation a snapshot's freeze set marks
        // with that one (docs/design.md, "Snapshots").
        let want = (self.known.load(Ordering::Acquire) + 1) as u32;
        let first = offset / CHUNK_BYTES;
        let last = ((offset + len - 1) / CHUNK_BYTES).min(self.marks.len() as u64 - 1);
        let mut c = first;
        while c <= last {
            let block = c / MARKS_PER_BLOCK;
            let block_end = ((block + 1) * MARKS_PER_BLOCK - 1).min(last);
            if (c..=block_end).any(|k| self.marks[k as usize].load(Ordering::Acquire) < want) {
                self.mark_in_block(block, c, block_end, want)?;
            }
            c = block_end + 1;
        }
        Ok(())
    }

    /// Raises the marks of chunks `from..=to` (all in change map block `block`) to `want` and
    /// writes the block; memory changes only once the block is written, so a failed write
    /// leaves the marks to be written again by the next write there.
    fn mark_in_block(&self, block: u64, from: u64, to: u64, want: u32) -> Result<()> {
        let _only_writer = self.block_writes[block as usize].lock();
        let base = block * MARKS_PER_BLOCK;
        let end = (base + MARKS_PER_BLOCK).min(self.marks.len() as u64);
        let mut img: Vec<u32> = (base..end).map(|k| self.marks[k as usize].load(Ordering::Acquire)).collect();
        let mut changed = false;
        for k in from..=to {
            let m = &mut img[(k - base) as usize];
            if *m < want {
                *m = want;
                changed = true;
            }
        }
        if !changed {
            return Ok(());
        }
        let blk = self.layout.change_map_blkno(self.slot, block);
        self.dev.write_at(&change_map::encode_marks(&img, blk, self.seed), BlockNo(blk).byte_offset())?;
        for k in from..=to {
            self.marks[k as usize].fetch_max(want, Ordering::AcqRel);
        }
        Ok(())
    }
}

/// A device whose every write is first marked in a [`ChangeTracker`].
pub struct TrackedDevice {
    inner: Arc<dyn BlockDevice>,
    tracker: Arc<ChangeTracker>,
}

impl TrackedDevice {
    pub fn new(inner: Arc<dyn BlockDevice>, tracker: Arc<ChangeTracker>) -> TrackedDevice {
        TrackedDevice { inner, tracker }
    }
}

impl BlockDevice for TrackedDevice {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        self.inner.read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> Result<()> {
        self.tracker.mark(offset, buf.len() as u64)?;
        self.inner.write_at(buf, offset)
    }
    fn flush(&self) -> Result<()> {
        self.inner.flush()
    }
    fn size(&self) -> u64 {
        self.inner.size()
    }
    fn forget_cached(&self, offset: u64, len: u64) {
        self.inner.forget_cached(offset, len)
    }
    fn zero_range(&self, offset: u64, len: u64) -> Result<()> {
        self.tracker.mark(offset, len)?;
        self.inner.zero_range(offset, len)
    }
}

/// The volume's change state.
pub fn read_state(dev: &dyn BlockDevice, sb: &Superblock) -> Result<ChangeState> {
    let mut b = vec![0u8; BLOCK_SIZE];
    let blk = sb.layout.cbt_state_blkno();
    dev.read_at(&mut b, BlockNo(blk).byte_offset())?;
    ChangeState::decode(&b, blk, sb.crc_seed())
}

/// Writes the volume's change state: only while the volume is frozen or unmounted.
pub fn write_state(dev: &dyn BlockDevice, sb: &Superblock, state: ChangeState) -> Result<()> {
    let blk = sb.layout.cbt_state_blkno();
    dev.write_at(&state.encode(blk, sb.crc_seed()), BlockNo(blk).byte_offset())?;
    dev.flush()
}

/// Every chunk's highest mark over all slots: the generation in which it last changed, as far
/// as any node recorded.
pub fn read_volume_marks(dev: &dyn BlockDevice, sb: &Superblock) -> Result<Vec<u32>> {
    let mut out = vec![0u32; sb.layout.chunk_count() as usize];
    for slot in 0..sb.layout.slot_count {
        for (o, m) in out.iter_mut().zip(read_slot_marks(dev, &sb.layout, sb.crc_seed(), slot)?) {
            *o = (*o).max(m);
        }
    }
    Ok(out)
}

/// One slot's marks, one per chunk.
fn read_slot_marks(dev: &dyn BlockDevice, layout: &Layout, seed: u32, slot: u32) -> Result<Vec<u32>> {
    let n = layout.cbt_blocks_per_slot as usize;
    let mut buf = vec![0u8; n * BLOCK_SIZE];
    let first = layout.change_map_blkno(slot, 0);
    dev.forget_cached(BlockNo(first).byte_offset(), buf.len() as u64);
    dev.read_at(&mut buf, BlockNo(first).byte_offset())?;
    let mut marks = Vec::with_capacity(n * MARKS_PER_BLOCK as usize);
    for (i, b) in buf.chunks_exact(BLOCK_SIZE).enumerate() {
        marks.extend(change_map::decode_marks(b, first + i as u64, seed)?);
    }
    marks.truncate(layout.chunk_count() as usize);
    Ok(marks)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::CrashDevice;
    use crate::test_support::scratch_device;

    /// Records the writes that reach the device, and fails the next one when told.
    struct Recorder {
        inner: Arc<CrashDevice>,
        writes: parking_lot::Mutex<Vec<u64>>,
        fail_next: std::sync::atomic::AtomicBool,
    }

    impl BlockDevice for Recorder {
        fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
            self.inner.read_at(buf, offset)
        }
        fn write_at(&self, buf: &[u8], offset: u64) -> Result<()> {
            if self.fail_next.swap(false, Ordering::AcqRel) {
                return Err(crate::error::FsError::Io { offset, source: std::io::Error::from_raw_os_error(libc::EIO) });
            }
            self.writes.lock().push(offset / BLOCK_SIZE as u64);
            self.inner.write_at(buf, offset)
        }
        fn flush(&self) -> Result<()> {
            self.inner.flush()
        }
        fn size(&self) -> u64 {
            self.inner.size()
        }
    }

    fn setup() -> (Arc<Recorder>, Superblock, TrackedDevice) {
        let inner = scratch_device();
        let (sb, _) = crate::volume::read_superblock(&*inner).expect("superblock");
        let rec = Arc::new(Recorder { inner, writes: Default::default(), fail_next: Default::default() });
        let tracker = ChangeTracker::open(rec.clone(), &sb, 0).expect("open").expect("a new volume tracks changes");
        (rec.clone(), sb, TrackedDevice::new(rec, tracker))
    }

    #[test]
    fn a_chunk_is_marked_on_the_device_before_its_first_write_in_a_generation_and_only_then() {
        let (rec, sb, dev) = setup();
        let map_block = sb.layout.change_map_blkno(0, 0);
        let data_block = 100 * CHUNK_BLOCKS + 5;
        let gen = read_state(&*rec, &sb).expect("state").generation;
        dev.write_at(&[7u8; BLOCK_SIZE], data_block * BLOCK_SIZE as u64).expect("write");
        assert_eq!(*rec.writes.lock(), vec![map_block, data_block], "the mark goes first");
        assert_eq!(read_volume_marks(&*rec, &sb).expect("marks")[100], gen as u32 + 1);
        dev.write_at(&[8u8; 2 * BLOCK_SIZE], (data_block + 1) * BLOCK_SIZE as u64).expect("write");
        assert_eq!(rec.writes.lock().len(), 3, "a chunk marked in this generation is not marked again");
        // A snapshot moves the generation on; the node reads it when granted the volume again.
        write_state(&*rec, &sb, ChangeState { generation: gen + 1, ..ChangeState::NEW }).expect("bump");
        dev.tracker.expect_new_generation();
        dev.tracker.refresh_if_stale().expect("refresh");
        rec.writes.lock().clear();
        dev.write_at(&[9u8; BLOCK_SIZE], data_block * BLOCK_SIZE as u64).expect("write");
        let state_block = sb.layout.cbt_state_blkno();
        assert_eq!(rec.writes.lock().iter().filter(|&&b| b != state_block).copied().collect::<Vec<_>>(), vec![map_block, data_block]);
        assert_eq!(read_volume_marks(&*rec, &sb).expect("marks")[100], gen as u32 + 2);
    }

    #[test]
    fn a_mark_that_cannot_be_written_fails_the_write_and_is_tried_again_by_the_next() {
        let (rec, sb, dev) = setup();
        let data_block = 10 * CHUNK_BLOCKS;
        rec.fail_next.store(true, Ordering::Release);
        assert!(dev.write_at(&[1u8; BLOCK_SIZE], data_block * BLOCK_SIZE as u64).is_err());
        assert!(rec.writes.lock().is_empty(), "the data was written without its mark");
        dev.write_at(&[1u8; BLOCK_SIZE], data_block * BLOCK_SIZE as u64).expect("write");
        assert_eq!(*rec.writes.lock(), vec![sb.layout.change_map_blkno(0, 0), data_block]);
        assert!(read_volume_marks(&*rec, &sb).expect("marks")[10] > 0);
    }

    #[test]
    fn a_write_across_chunks_marks_each_and_a_zeroed_range_is_marked_too() {
        let (rec, sb, dev) = setup();
        dev.write_at(&vec![3u8; 3 * CHUNK_BYTES as usize], 20 * CHUNK_BYTES).expect("write");
        dev.zero_range(40 * CHUNK_BYTES + 4096, 4096).expect("zero");
        let marks = read_volume_marks(&*rec, &sb).expect("marks");
        let marked: Vec<usize> = (0..marks.len()).filter(|&c| marks[c] > 0).collect();
        assert_eq!(marked, vec![20, 21, 22, 40]);
    }
}
