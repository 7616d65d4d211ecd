//! Numbers for new inodes. An inode's number is its block, set aside before the create's
//! transaction so that the inode can be locked first (`locks.rs`). Standalone sets one block
//! aside per create. A cluster node keeps a pool of set-aside numbers whose locks it took
//! together (`ClusterLocks::inode_batch`, `prefetch_new`): a create then finds its new inode's
//! lock cached, and a node creating alone makes one round of lockd requests per batch, not a
//! round trip per file.
use super::Fs;
use crate::alloc::BlockState;
use crate::error::Result;
use crate::format::InodeNo;
use crate::journal::Handle;
use crate::locks::AgHolds;

/// The number of an inode a create is making: claimed in its transaction, or else given back
/// (to the pool it came from, or to the allocator).
pub(crate) struct NewInode<'a> {
    fs: &'a Fs,
    ino: InodeNo,
    pooled: bool,
    claimed: bool,
}

impl NewInode<'_> {
    pub(crate) fn ino(&self) -> InodeNo {
        self.ino
    }

    /// Marks the inode's block in use, in `h`'s transaction.
    pub(crate) fn claim(mut self, h: &Handle) -> Result<()> {
        // Out of the pool and the allocator's map even if the transaction fails halfway: a
        // block unavailable until the next reload is safer than one handed out twice.
        self.claimed = true;
        self.fs.vol.alloc.claim_reserved(h, self.ino.block(), BlockState::Inode)
    }
}

impl Drop for NewInode<'_> {
    fn drop(&mut self) {
        if self.claimed {
            return;
        }
        if self.pooled {
            self.fs.inode_pool.lock().push(self.ino);
        } else {
            self.fs.vol.alloc.unreserve(self.ino.block());
        }
    }
}

impl Fs {
    /// A number for a new inode near `goal`, in a group `ags` holds (any, without).
    pub(crate) fn new_inode_number(&self, goal: InodeNo, ags: &Option<AgHolds>) -> Result<NewInode<'_>> {
        let held = ags.as_ref().map(|h| h.ags());
        let batch = self.locks.cluster().inode_batch();
        if batch <= 1 {
            let b = self.vol.alloc.reserve_many(Some(goal.block()), held, 1)?;
            return Ok(NewInode { fs: self, ino: InodeNo::from_block(b[0]), pooled: false, claimed: false });
        }
        let in_held = |i: &InodeNo| held.is_none_or(|h| self.vol.alloc.ag_index_of(i.block()).is_some_and(|a| h.contains(&a)));
        loop {
            {
                let mut pool = self.inode_pool.lock();
                if let Some(pos) = pool.iter().rposition(in_held) {
                    let ino = pool.swap_remove(pos);
                    return Ok(NewInode { fs: self, ino, pooled: true, claimed: false });
                }
            }
            // A new batch: set the numbers aside, then take their locks (a network call: not
            // under the pool's mutex).
            let blocks = self.vol.alloc.reserve_many(Some(goal.block()), held, batch)?;
            let inos: Vec<InodeNo> = blocks.iter().map(|b| InodeNo::from_block(*b)).collect();
            if let Err(e) = self.locks.cluster().prefetch_new(&inos) {
                blocks.into_iter().for_each(|b| self.vol.alloc.unreserve(b));
                return Err(e);
            }
            self.inode_pool.lock().extend(inos);
        }
    }

    /// Forgets the pooled numbers in group `group` (every group: `None`) without giving them
    /// back: the allocator's map of the group is being forgotten (its lock goes to another
    /// node, which may then use those blocks), so they are free again on the device's terms.
    pub(crate) fn forget_pooled_inodes(&self, group: Option<u32>) {
        let alloc = &self.vol.alloc;
        self.inode_pool.lock().retain(|i| group.is_some_and(|g| alloc.ag_index_of(i.block()) != Some(g)));
    }
}
