//! Orphans: an inode whose last name is removed (or whose truncate takes several
//! transactions) is first listed in this slot's orphan
//! directory (in the same transaction as the unlink), then freed in bounded steps once no one
//! has it open. A crash anywhere in between leaves it listed, and the next mount of the slot
//! (or, in cluster mode, the node recovering it) finishes the job.
use super::ag_plan::AgPlan;
use super::data::{extents_in, EXTENTS_PER_STEP};
use super::Fs;
use crate::alloc::BlockState;
use crate::cache::MetaBuf;
use crate::dir;
use crate::error::{FsError, Result};
use crate::format::inode::Inode;
use crate::format::InodeNo;
use crate::journal::Handle;
use crate::locks::{InodeGuard, Mode};
use std::sync::Arc;

/// An orphan directory locked exclusively, taken (as every inode lock) before the journal
/// handle of the operation that lists or unlists an inode in it.
pub(crate) struct OrphanDirLock {
    dir: InodeNo,
    _guard: InodeGuard,
}

/// What dropping an inode's link will do, decided under the inode's lock before the
/// transaction, so that the operation knows whether it needs the orphan directory's lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LinkDrop {
    /// Links remain.
    Keeps,
    /// The last link goes and the inode is closed everywhere and small: freed in the
    /// transaction.
    FreesNow,
    /// The last link goes; the inode is open somewhere or too big for one transaction: listed
    /// in this slot's orphan directory and freed later.
    Lists,
}

/// Which inodes a reclaim frees.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reclaim {
    /// Only one with no links left (after a last close or a last unlink).
    Unlinked,
    /// Whatever the given orphan directory lists (at mount, this slot's; after recovering a
    /// dead node, its slot's): unlinked inodes, and linked ones whose truncate a crash
    /// interrupted.
    Listed(InodeNo),
}

fn orphan_name(ino: InodeNo) -> Vec<u8> {
    let ino = ino.get();
    format!("{ino:016x}").into_bytes()
}

impl Fs {
    /// Whether `ino` is listed in the orphan directory `dir`: the identity of an unlinked
    /// inode waiting to be freed. Freeing it unlists it in the same transaction, so a listed
    /// number still names that inode, never a later one that reuses its block.
    fn is_listed_in(&self, dir: InodeNo, ino: InodeNo) -> Result<bool> {
        let _g = self.locks.lock(dir, Mode::Shared)?;
        let (dbuf, _) = self.iget(dir)?;
        Ok(dir::lookup(&self.tree(&dbuf), &orphan_name(ino))?.is_some())
    }

    /// The orphan directory that lists `ino`, if one does: this slot's, or (in cluster mode,
    /// for an inode another node unlinked while this one had it open) another slot's. The
    /// others are searched only for an inode with no links left, so a last close of a linked
    /// file costs one lookup in this slot's (small) directory.
    pub(crate) fn listing_orphan_dir(&self, ino: InodeNo) -> Result<Option<InodeNo>> {
        self.listing_orphan_dir_if(ino, || {
            let _g = self.locks.lock(ino, Mode::Shared)?;
            Ok(self.has_no_links(ino))
        })
    }

    /// Whether `ino` is an inode with no links left (the caller holds its lock).
    fn has_no_links(&self, ino: InodeNo) -> bool {
        matches!(self.vol.alloc.state(ino.block()), Ok(BlockState::Inode)) && self.iget(ino).is_ok_and(|(_, i)| i.nlink == 0)
    }

    /// [`Self::listing_orphan_dir`], asking `unlinked` before searching the other slots'.
    fn listing_orphan_dir_if(&self, ino: InodeNo, unlinked: impl FnOnce() -> Result<bool>) -> Result<Option<InodeNo>> {
        if self.is_listed_in(self.orphan_dir, ino)? {
            return Ok(Some(self.orphan_dir));
        }
        if !unlinked()? {
            return Ok(None);
        }
        for &d in &self.orphan_dirs[1..] {
            if self.is_listed_in(d, ino)? {
                return Ok(Some(d));
            }
        }
        Ok(None)
    }

    /// Whether an unlinked `ino` may be freed now: open on no node (`wait`: see
    /// `ClusterLocks::unused_elsewhere`).
    pub(crate) fn unused_everywhere(&self, ino: InodeNo, wait: bool) -> Result<bool> {
        Ok(!self.is_open(ino) && (self.made_here.lock().contains(&ino) || self.locks.cluster().unused_elsewhere(ino, wait)?))
    }

    /// Locks this slot's orphan directory (before the handle, after the inode locks).
    pub(crate) fn lock_orphans(&self) -> Result<OrphanDirLock> {
        self.lock_orphan_dir(self.orphan_dir)
    }

    fn lock_orphan_dir(&self, dir: InodeNo) -> Result<OrphanDirLock> {
        Ok(OrphanDirLock { dir, _guard: self.locks.lock(dir, Mode::Exclusive)? })
    }

    /// What dropping one link of `inode` (locked by the caller) will do.
    pub(crate) fn plan_link_drop(&self, buf: &Arc<MetaBuf>, inode: &Inode) -> Result<LinkDrop> {
        if !inode.is_dir() && inode.nlink > 1 {
            return Ok(LinkDrop::Keeps);
        }
        let small = inode.stuffed() || !(inode.is_reg() || inode.is_symlink()) || !self.more_than_a_step(buf, 0)?;
        Ok(if small && self.unused_everywhere(inode.ino, false)? { LinkDrop::FreesNow } else { LinkDrop::Lists })
    }

    /// Whether freeing the data at and after logical block `from` takes more than one bounded
    /// step (so a crash in between must find the inode listed).
    pub(crate) fn more_than_a_step(&self, buf: &Arc<MetaBuf>, from: u64) -> Result<bool> {
        Ok(extents_in(&self.tree(buf), from, u64::MAX >> 16, EXTENTS_PER_STEP + 1)?.len() > EXTENTS_PER_STEP)
    }

    /// What listing or unlisting `ino` in the orphan directory `od` does to the allocator: an
    /// entry removed may free nodes on its way, one added may split them.
    pub(crate) fn plan_orphan_change(&self, plan: &mut AgPlan, od: &OrphanDirLock, ino: InodeNo) -> Result<()> {
        if !plan.is_active() {
            return Ok(()); // standalone: no lookup for a plan nobody reads
        }
        let (dbuf, _) = self.iget(od.dir)?;
        if let Some(e) = dir::lookup(&self.tree(&dbuf), &orphan_name(ino))? {
            self.plan_key_removal(plan, &dbuf, e.key)?;
        }
        plan.allocates(super::METADATA_OP_BLOCKS);
        Ok(())
    }

    /// Lists `ino` in this slot's orphan directory (the caller holds the inode's lock, the
    /// directory's, and `h`).
    pub(crate) fn add_orphan(&self, h: &Handle, od: &OrphanDirLock, ino: InodeNo) -> Result<()> {
        debug_assert_eq!(od.dir, self.orphan_dir, "inodes are listed in this slot's orphan directory");
        let (dbuf, mut d) = self.iget(od.dir)?;
        if dir::lookup(&self.tree(&dbuf), &orphan_name(ino))?.is_some() {
            return Ok(()); // already listed (a truncate in progress, then its last unlink)
        }
        let mut t = self.tree_mut(h, &dbuf);
        dir::add(&mut t, &orphan_name(ino), ino, libc::DT_REG)?;
        d.blocks = (d.blocks as i64 + t.blocks_delta) as u64;
        d.entries += 1;
        self.iput(h, &dbuf, &d);
        Ok(())
    }

    /// Unlists `ino` from the orphan directory `od` locks.
    pub(crate) fn remove_orphan(&self, h: &Handle, od: &OrphanDirLock, ino: InodeNo) -> Result<()> {
        let (dbuf, mut d) = self.iget(od.dir)?;
        let Some(e) = dir::lookup(&self.tree(&dbuf), &orphan_name(ino))? else { return Ok(()) };
        let mut t = self.tree_mut(h, &dbuf);
        dir::remove(&mut t, e.key)?;
        d.blocks = (d.blocks as i64 + t.blocks_delta) as u64;
        d.entries = d.entries.saturating_sub(1);
        self.iput(h, &dbuf, &d);
        Ok(())
    }

    /// Frees an unlinked, closed inode: its data in steps, then its tree, xattrs and itself; or
    /// finishes an interrupted truncate of a linked one listed here.
    pub(crate) fn reclaim(&self, ino: InodeNo) -> Result<()> {
        self.reclaim_inode(ino, Reclaim::Listed(self.orphan_dir))
    }

    pub(crate) fn reclaim_inode(&self, ino: InodeNo, which: Reclaim) -> Result<()> {
        // Asked before any transaction, since it may wait for other nodes: is an unlinked inode
        // open anywhere? Nobody can open it meanwhile (it has no name, and the caller holds the
        // right to change the volume), so the answer holds below.
        let unlinked = {
            let _g = self.locks.lock(ino, Mode::Shared)?;
            self.has_no_links(ino)
        };
        if unlinked && !self.unused_everywhere(ino, true)? {
            return Ok(());
        }
        loop {
            let _g = self.locks.lock(ino, Mode::Exclusive)?;
            // Decided under the inode's lock: a racing close or unlink may have freed it (and
            // unlisted it in the same transaction), and a create may since have reused the
            // number, its new inode not yet written. Only a listed number is still the inode
            // the caller meant, and one opened again waits for its last close. Open on another
            // node, it waits for the last close there, which frees it. An inode is listed and
            // unlisted only under its own lock, so the answer holds while it is held.
            let listing = match which {
                Reclaim::Listed(dir) => dir,
                Reclaim::Unlinked => match self.listing_orphan_dir_if(ino, || Ok(self.has_no_links(ino)))? {
                    Some(d) if !self.is_open(ino) => d,
                    _ => return Ok(()),
                },
            };
            match self.vol.alloc.state(ino.block()) {
                Ok(BlockState::Inode) => {}
                // Freed already (a listed entry outlives its inode only on a damaged volume,
                // which fsck reports; a mount must not stop for it).
                Ok(_) | Err(FsError::NotFound) => return Ok(()),
                Err(e) => return Err(e),
            }
            let (buf, mut inode) = match self.iget(ino) {
                Ok(x) => x,
                Err(FsError::NotFound) => return Ok(()),
                Err(e) => return Err(e),
            };
            if inode.nlink != 0 && which == Reclaim::Unlinked {
                return Ok(()); // linked again, or the number now names another inode
            }
            if inode.nlink == 0 && !unlinked {
                // Unlinked since the check above (a racing unlink): the next close frees it.
                return Ok(());
            }
            let od = self.lock_orphan_dir(listing)?;
            let mut plan = self.ag_plan();
            let (from, whole) = if inode.nlink != 0 { (inode.size.div_ceil(crate::format::BLOCK_SIZE as u64), false) } else { (0, true) };
            self.plan_data_frees(&mut plan, &buf, &inode, from, u64::MAX >> 16, whole)?;
            self.plan_orphan_change(&mut plan, &od, ino)?;
            let ags = self.hold_ags(plan)?;
            let h = self.begin_in(&ags)?;
            if inode.nlink != 0 {
                // Still linked: listed by a truncate that a crash interrupted. Finish freeing
                // what lies past EOF, then unlist it.
                let from = inode.size.div_ceil(crate::format::BLOCK_SIZE as u64);
                if !inode.stuffed() && !self.free_data_from(&h, &buf, &mut inode, from, EXTENTS_PER_STEP)? {
                    self.iput(&h, &buf, &inode);
                    continue;
                }
                self.iput(&h, &buf, &inode);
                return self.remove_orphan(&h, &od, ino);
            }
            if (inode.is_reg() || inode.is_symlink()) && !self.free_data_from(&h, &buf, &mut inode, 0, EXTENTS_PER_STEP)? {
                self.iput(&h, &buf, &inode);
                continue;
            }
            self.free_inode_blocks(&h, &buf, &inode)?;
            self.remove_orphan(&h, &od, ino)?;
            return Ok(());
        }
    }

    /// Frees an inode whose last link is gone and whose data fits in one bounded step
    /// ([`LinkDrop::FreesNow`]).
    pub(crate) fn free_inode_now(&self, h: &Handle, buf: &Arc<MetaBuf>, inode: &mut Inode) -> Result<()> {
        if (inode.is_reg() || inode.is_symlink()) && !inode.stuffed() && !self.free_data_from(h, buf, inode, 0, EXTENTS_PER_STEP)? {
            // The plan said one step; the tree said otherwise (a damaged tree): a half-freed
            // unlisted inode would leak, so stop the transaction's author here.
            return Err(FsError::corrupt(inode.ino, "inode's extents changed between the plan to free it and the freeing"));
        }
        self.free_inode_blocks(h, buf, inode)
    }

    /// Frees the tree nodes, xattr block and inode block of an inode with no data left.
    fn free_inode_blocks(&self, h: &Handle, buf: &Arc<MetaBuf>, inode: &Inode) -> Result<()> {
        if !inode.stuffed() {
            self.tree_mut(h, buf).clear()?;
        }
        if let Some(xb) = inode.xattr_block() {
            h.revoke(xb);
            self.vol.alloc.free(h, xb, 1)?;
        }
        h.revoke(inode.ino.block());
        self.vol.alloc.free(h, inode.ino.block(), 1)?;
        self.locks.cluster().inode_freed(inode.ino);
        Ok(())
    }

    /// At mount: frees everything a previous mount of this slot left orphaned.
    pub fn reclaim_orphans(&self) -> Result<()> {
        self.reclaim_listed_in(self.orphan_dir)
    }

    /// After a survivor recovered the dead node of `slot` (cluster mode, holding the volume
    /// lock exclusively): frees what that node left orphaned and no node has open, as its
    /// slot's next mount would, so the space comes back without waiting for one. An inode
    /// still open on another node stays listed; that node's last close frees it.
    pub fn reclaim_orphans_of_slot(&self, slot: u32) -> Result<()> {
        if slot >= self.vol.sb.layout.slot_count {
            return Err(FsError::Invalid("no such slot on this volume"));
        }
        self.reclaim_listed_in(InodeNo(crate::mkfs::orphan_dir_ino(&self.vol.sb, slot)))
    }

    fn reclaim_listed_in(&self, orphan_dir: InodeNo) -> Result<()> {
        let mut inos = Vec::new();
        {
            let _g = self.locks.lock(orphan_dir, Mode::Shared)?;
            let (dbuf, _) = self.iget(orphan_dir)?;
            dir::list(&self.tree(&dbuf), 0, &mut |e| {
                inos.push(e.ino);
                true
            })?;
        }
        for ino in inos {
            self.reclaim_inode(ino, Reclaim::Listed(orphan_dir))?;
        }
        Ok(())
    }
}
