//! The metadata block cache. Every metadata block a node reads or changes lives here as a
//! `MetaBuf`; changes are made in memory under the buffer's own lock and reach the disk only
//! through the journal (`journal::Journal::commit`), never directly.
use crate::cover_versions::CoverVersions;
use crate::data_cache::DataCache;
use crate::device::BlockDevice;
use crate::error::Result;
use crate::format::header::{self, BlockType};
use crate::format::le::*;
use crate::format::{BlockNo, InodeNo, BLOCK_SIZE, FORMAT_VERSION};
use parking_lot::{Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

/// The lock that covers a cached block (cluster mode): what a node gives up decides what it
/// drops (`MetaCache::drop_covered`). Every block enters the cache with its cover.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cover {
    /// An inode's block, its index tree's nodes and its xattr block: the inode's lock.
    Inode(InodeNo),
    /// An allocation group's header and bitmap blocks: the group's lock.
    Group(u32),
    /// What no other node changes while this one runs (the superblock, this slot's header),
    /// and what tools that own the whole volume read (fsck).
    Volume,
}

impl Cover {
    const GROUP: u64 = 1 << 63;
    const VOLUME: u64 = u64::MAX;

    fn encode(self) -> u64 {
        match self {
            Cover::Inode(i) => i.get(),
            Cover::Group(a) => Self::GROUP | a as u64,
            Cover::Volume => Self::VOLUME,
        }
    }

    fn decode(code: u64) -> Cover {
        match code {
            Self::VOLUME => Cover::Volume,
            c if c & Self::GROUP != 0 => Cover::Group((c & !Self::GROUP) as u32),
            c => Cover::Inode(InodeNo(c)),
        }
    }
}

pub struct MetaBuf {
    pub blkno: BlockNo,
    /// `Cover::encode` of the lock that covers the block.
    cover: AtomicU64,
    data: RwLock<Box<[u8]>>,
    /// In the running transaction: must not be evicted, will be journaled.
    pub(crate) dirty: AtomicBool,
    /// Sequence of the last transaction that captured this block; it may be evicted only once
    /// that transaction is written home (otherwise a re-read would see the older home copy).
    pub(crate) last_seq: AtomicU64,
}

impl MetaBuf {
    /// Whether the cache may let the block go: nobody holds it, it is not in the running
    /// transaction, and everything that captured it (up to `checkpointed`) is at home.
    fn is_droppable(self: &Arc<Self>, checkpointed: u64) -> bool {
        Arc::strong_count(self) == 1 && !self.dirty.load(Ordering::Acquire) && self.last_seq.load(Ordering::Acquire) <= checkpointed
    }

    /// The lock that covers the block.
    pub(crate) fn cover(&self) -> Cover {
        Cover::decode(self.cover.load(Ordering::Relaxed))
    }

    fn new(blkno: BlockNo, cover: Cover, data: Box<[u8]>) -> Arc<MetaBuf> {
        Arc::new(MetaBuf {
            blkno,
            cover: AtomicU64::new(cover.encode()),
            data: RwLock::new(data),
            dirty: AtomicBool::new(false),
            last_seq: AtomicU64::new(0),
        })
    }

    pub fn read(&self) -> RwLockReadGuard<'_, Box<[u8]>> {
        self.data.read()
    }
    /// Changes go through `Handle::write`, which also joins the block to the transaction.
    pub(crate) fn write_raw(&self) -> RwLockWriteGuard<'_, Box<[u8]>> {
        self.data.write()
    }
}

pub struct MetaCache {
    dev: Arc<dyn BlockDevice>,
    seed: u32,
    map: Mutex<HashMap<BlockNo, Arc<MetaBuf>>>,
    capacity: usize,
    /// Highest transaction whose blocks are all at home.
    pub(crate) checkpointed_seq: AtomicU64,
    /// Cluster mode: which inodes this node changed under its locks, and whose blocks it kept
    /// when it gave their lock up.
    pub versions: CoverVersions,
    /// File data blocks, under the same inode locks: dropped with the inode's metadata.
    pub data: DataCache,
}

impl MetaCache {
    pub fn new(dev: Arc<dyn BlockDevice>, seed: u32, capacity: usize) -> MetaCache {
        MetaCache {
            dev,
            seed,
            map: Mutex::new(HashMap::new()),
            capacity,
            checkpointed_seq: AtomicU64::new(0),
            versions: CoverVersions::default(),
            data: DataCache::default(),
        }
    }

    /// The device the blocks come from (fsck reads file data beside metadata through it).
    pub fn device(&self) -> &dyn BlockDevice {
        &*self.dev
    }

    /// The block `blkno`, which must be a valid block of type `ty`, covered by `cover`; read
    /// from disk on a miss.
    pub fn get(&self, blkno: BlockNo, ty: BlockType, cover: Cover) -> Result<Arc<MetaBuf>> {
        if let Some(b) = self.map.lock().get(&blkno) {
            // A clean copy cached under another lock is stale if anything: a block changes
            // owner only when freed and reused, and a node drops what it frees itself; so it
            // was another node's doing, while this one kept the block for its old owner
            // (`CoverVersions`). Read again.
            let moved = b.cover.load(Ordering::Relaxed) != cover.encode();
            if !moved || !b.is_droppable(self.checkpointed_seq.load(Ordering::Acquire)) {
                b.cover.store(cover.encode(), Ordering::Relaxed);
                return Ok(b.clone());
            }
        }
        let data = self.read_verified(blkno, ty)?;
        // Read from home, so it is checkpointed by definition.
        let buf = MetaBuf::new(blkno, cover, data);
        let mut map = self.map.lock();
        if map.len() >= self.capacity {
            self.evict(&mut map);
        }
        let entry = map.entry(blkno).or_insert_with(|| buf.clone());
        if entry.cover.load(Ordering::Relaxed) != cover.encode() {
            if entry.is_droppable(self.checkpointed_seq.load(Ordering::Acquire)) {
                *entry = buf;
            } else {
                entry.cover.store(cover.encode(), Ordering::Relaxed);
            }
        }
        Ok(entry.clone())
    }

    /// A copy of block `blkno` (of type `ty`): the cached one if there is one, else read from
    /// the device and verified but not kept. Cluster mode reads so what another node's lock
    /// covers (a peek at an allocation group it does not hold): a copy kept in the cache would
    /// go stale and be trusted later, once this node takes that lock.
    pub fn copy_uncached(&self, blkno: BlockNo, ty: BlockType) -> Result<Box<[u8]>> {
        if let Some(b) = self.map.lock().get(&blkno).cloned() {
            return Ok(b.read().clone());
        }
        self.read_verified(blkno, ty)
    }

    /// Block `blkno` as the device has it, checked to be a valid block of type `ty`.
    fn read_verified(&self, blkno: BlockNo, ty: BlockType) -> Result<Box<[u8]>> {
        let mut data = vec![0u8; BLOCK_SIZE].into_boxed_slice();
        self.dev.read_at(&mut data, blkno.byte_offset())?;
        header::verify(&data, ty, blkno.get(), self.seed)?;
        Ok(data)
    }

    /// A freshly allocated block of type `ty`, covered by `cover`, zeroed but for its header;
    /// replaces whatever the cache held for that block number.
    pub fn create(&self, blkno: BlockNo, ty: BlockType, cover: Cover) -> Arc<MetaBuf> {
        let mut data = vec![0u8; BLOCK_SIZE].into_boxed_slice();
        put_u32(&mut data, 0, ty as u32);
        put_u32(&mut data, 4, FORMAT_VERSION);
        put_u64(&mut data, 8, blkno.get());
        let buf = MetaBuf::new(blkno, cover, data);
        let mut map = self.map.lock();
        if map.len() >= self.capacity {
            self.evict(&mut map);
        }
        map.insert(blkno, buf.clone());
        buf
    }

    /// Drops a freed block from the cache.
    pub fn forget(&self, blkno: BlockNo) {
        self.map.lock().remove(&blkno);
    }

    /// Drops every clean, checkpointed block nobody holds (cluster mode: after losing the locks
    /// that covered them). A block an operation holds stays: its change must land in the
    /// cached copy the transaction will journal, not in one the map no longer knows.
    pub fn drop_clean(&self) {
        let done = self.checkpointed_seq.load(Ordering::Acquire);
        self.map.lock().retain(|_, b| !b.is_droppable(done));
        self.data.clear();
        self.versions.forget_kept();
    }

    /// Drops the clean, checkpointed blocks that `covers` cover and nobody holds (cluster mode:
    /// the node gave those locks up, after writing everything home), in one pass over the
    /// cache, and the covered inodes' data blocks. Returns how many such blocks it had to keep: held by an operation, or changed
    /// since (none, when no operation holds the locks, as a revocation ensures).
    pub fn drop_covered(&self, covers: &[Cover]) -> usize {
        let done = self.checkpointed_seq.load(Ordering::Acquire);
        let codes: std::collections::HashSet<u64> = covers.iter().map(|c| c.encode()).collect();
        self.data.forget_inodes(covers.iter().filter_map(|c| match c {
            Cover::Inode(i) => Some(*i),
            _ => None,
        }));
        let mut kept = 0;
        self.map.lock().retain(|_, b| {
            if !codes.contains(&b.cover.load(Ordering::Relaxed)) {
                return true;
            }
            let keep = !b.is_droppable(done);
            kept += usize::from(keep);
            keep
        });
        kept
    }

    /// Whether `blkno` is cached (tests).
    pub fn contains(&self, blkno: BlockNo) -> bool {
        self.map.lock().contains_key(&blkno)
    }

    pub fn len(&self) -> usize {
        self.map.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Evicts about a quarter of the clean, checkpointed blocks nobody else references.
    fn evict(&self, map: &mut HashMap<BlockNo, Arc<MetaBuf>>) {
        let done = self.checkpointed_seq.load(Ordering::Acquire);
        let target = self.capacity / 4;
        let victims: Vec<BlockNo> = map.iter().filter(|(_, b)| b.is_droppable(done)).map(|(k, _)| *k).take(target).collect();
        for k in victims {
            map.remove(&k);
        }
    }
}
