//! A volume opened by this node: superblock, its slot's journal (replayed at open), the
//! metadata cache and the allocator.
use crate::alloc::Allocator;
use crate::cache::MetaCache;
use crate::change_tracking::{ChangeTracker, TrackedDevice};
use crate::device::BlockDevice;
use crate::error::{FsError, Result};
use crate::format::slot::SlotHeader;
use crate::format::superblock::{Superblock, BACKUP_SUPERBLOCK_BLKNO, SUPERBLOCK_BLKNO};
use crate::format::{BlockNo, BLOCK_SIZE};
use crate::journal::replay::{self, ReplayStats};
use crate::journal::{read_slot, Journal};
use std::sync::Arc;

/// Metadata blocks kept in memory (256 MiB); clean ones are evicted past this.
pub const DEFAULT_CACHE_BLOCKS: usize = 65536;

pub struct Volume {
    pub dev: Arc<dyn BlockDevice>,
    pub sb: Superblock,
    pub seed: u32,
    pub cache: Arc<MetaCache>,
    pub journal: Journal,
    pub alloc: Allocator,
    pub replayed: ReplayStats,
    /// Marks the chunks this node writes (None on a volume made before change tracking).
    pub tracker: Option<Arc<ChangeTracker>>,
    /// The primary superblock was unreadable and the backup copy was used.
    pub used_backup_superblock: bool,
}

/// Reads the superblock, falling back to the backup copy; returns it and whether the backup
/// was used. Errors name what is wrong with the primary.
pub fn read_superblock(dev: &dyn BlockDevice) -> Result<(Superblock, bool)> {
    if dev.size() < 2 * BLOCK_SIZE as u64 {
        return Err(FsError::NotMafs(format!("device of {} bytes is too small to hold a mafs volume", dev.size())));
    }
    let mut b = vec![0u8; BLOCK_SIZE];
    dev.read_at(&mut b, BlockNo(SUPERBLOCK_BLKNO).byte_offset())?;
    let primary = Superblock::decode(&b, SUPERBLOCK_BLKNO);
    let (sb, backup) = match primary {
        Ok(sb) => (sb, false),
        Err(e) => {
            dev.read_at(&mut b, BlockNo(BACKUP_SUPERBLOCK_BLKNO).byte_offset())?;
            match Superblock::decode(&b, BACKUP_SUPERBLOCK_BLKNO) {
                Ok(sb) => (sb, true),
                Err(_) => return Err(e),
            }
        }
    };
    let need = sb.layout.total_blocks * BLOCK_SIZE as u64;
    if dev.size() < need {
        return Err(FsError::corrupt(
            SUPERBLOCK_BLKNO,
            format!("superblock says the volume has {need} bytes but the device has only {}", dev.size()),
        ));
    }
    Ok((sb, backup))
}

impl Volume {
    /// Opens the volume through `slot`: replays the slot's journal, then starts a new one.
    pub fn open(dev: Arc<dyn BlockDevice>, slot: u32, owner: &str, cache_blocks: usize) -> Result<Volume> {
        Self::open_with(dev, slot, owner, cache_blocks, false)
    }

    /// [`open`](Self::open); with `keep_alive`, the slot's multi-mount protection sequence keeps
    /// changing while the journal replays (a long replay must not look like a dead node to
    /// another host; see `crate::mmp`).
    pub fn open_with(dev: Arc<dyn BlockDevice>, slot: u32, owner: &str, cache_blocks: usize, keep_alive: bool) -> Result<Volume> {
        let (sb, used_backup_superblock) = read_superblock(&*dev)?;
        let seed = sb.crc_seed();
        // Every write of this volume from here on, the replay's included, is marked first.
        let tracker = ChangeTracker::open(dev.clone(), &sb, slot)?;
        let dev: Arc<dyn BlockDevice> = match &tracker {
            Some(t) => Arc::new(TrackedDevice::new(dev, t.clone())),
            None => dev,
        };
        let hdr = read_slot(&*dev, &sb, slot)?;
        let replayed = if keep_alive {
            let done = std::sync::atomic::AtomicBool::new(false);
            std::thread::scope(|s| {
                let keeper = s.spawn(|| {
                    while !done.load(std::sync::atomic::Ordering::Acquire) {
                        std::thread::park_timeout(crate::mmp::INTERVAL);
                        if !done.load(std::sync::atomic::Ordering::Acquire) {
                            if let Err(e) = crate::mmp::touch(&*dev, &sb, slot) {
                                tracing::warn!("multi-mount protection update failed during replay: {e}");
                            }
                        }
                    }
                });
                let r = replay::replay(&*dev, &sb.layout, &hdr, seed);
                done.store(true, std::sync::atomic::Ordering::Release);
                keeper.thread().unpark();
                r
            })?
        } else {
            replay::replay(&*dev, &sb.layout, &hdr, seed)?
        };
        // The sequence as the replay left it, so the journal's next value is a change.
        let hdr = match read_slot(&*dev, &sb, slot) {
            // And its version: the journal's first write must be newer than the replay's last.
            Ok(now) => SlotHeader { mmp_seq: now.mmp_seq, mmp_time: now.mmp_time, update_seq: now.update_seq, ..hdr },
            Err(_) => hdr,
        };
        let cache = Arc::new(MetaCache::new(dev.clone(), seed, cache_blocks));
        let journal = Journal::start(dev.clone(), cache.clone(), sb.layout, seed, hdr, replayed.next_seq, owner)?;
        let alloc = Allocator::open(cache.clone(), sb.layout, slot)?;
        Ok(Volume { dev, sb, seed, cache, journal, alloc, replayed, tracker, used_backup_superblock })
    }

    /// Joins the running transaction, committing it first if it is full.
    pub fn begin(&self) -> Result<crate::journal::Handle<'_>> {
        // A full transaction goes to the background committer while operations go on; the
        // caller commits itself only without one, or when it has fallen behind.
        if self.journal.is_full() {
            if !self.journal.request_commit() {
                self.commit()?;
            }
            while self.journal.is_over_hard_limit() {
                self.commit()?;
            }
        }
        self.journal.begin()
    }

    /// Commits the running transaction and returns the blocks it freed to the allocator.
    pub fn commit(&self) -> Result<()> {
        let c = self.journal.commit()?;
        self.alloc.release(&c.freed);
        Ok(())
    }

    /// Makes everything done before this call durable (fsync).
    pub fn sync(&self) -> Result<()> {
        let seq = self.journal.running_seq();
        if let Some(c) = self.journal.commit_upto(seq)? {
            self.alloc.release(&c.freed);
        }
        Ok(())
    }

    /// Commits, checkpoints and marks the slot clean.
    pub fn close(&self) -> Result<()> {
        self.commit()?;
        self.journal.shutdown()
    }
}
