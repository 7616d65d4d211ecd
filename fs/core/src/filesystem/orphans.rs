//! Orphans: an inode whose last name is removed (or whose truncate takes several
//! transactions) is first listed in this slot's orphan
//! directory (in the same transaction as the unlink), then freed in bounded steps once no one
//! has it open. A crash anywhere in between leaves it listed, and the next mount of the slot
//! (or, in cluster mode, the node recovering it) finishes the job.
use super::data::{extents_in, EXTENTS_PER_STEP};
use super::Fs;
use crate::alloc::BlockState;
use crate::cache::MetaBuf;
use crate::dir;
use crate::error::{FsError, Result};
use crate::format::inode::Inode;
use crate::format::InodeNo;
use crate::journal::Handle;
use crate::locks::Mode;
use std::sync::Arc;

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

    /// Lists `ino` in the orphan directory (the caller holds the inode's lock and `h`).
    pub(crate) fn add_orphan(&self, h: &Handle, ino: InodeNo) -> Result<()> {
        let _g = self.locks.lock(self.orphan_dir, Mode::Exclusive)?;
        let (dbuf, mut d) = self.iget(self.orphan_dir)?;
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

    pub(crate) fn remove_orphan(&self, h: &Handle, ino: InodeNo) -> Result<()> {
        self.remove_orphan_from(h, self.orphan_dir, ino)
    }

    fn remove_orphan_from(&self, h: &Handle, dir: InodeNo, ino: InodeNo) -> Result<()> {
        let _g = self.locks.lock(dir, Mode::Exclusive)?;
        let (dbuf, mut d) = self.iget(dir)?;
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
            let h = self.begin()?;
            let _g = self.locks.lock(ino, Mode::Exclusive)?;
            // Decided under the inode's lock: a racing close or unlink may have freed it (and
            // unlisted it in the same transaction), and a create may since have reused the
            // number, its new inode not yet written. Only a listed number is still the inode
            // the caller meant, and one opened again waits for its last close. Open on another
            // node, it waits for the last close there, which frees it.
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
            if inode.nlink != 0 {
                if which == Reclaim::Unlinked {
                    return Ok(()); // linked again, or the number now names another inode
                }
                // Still linked: listed by a truncate that a crash interrupted. Finish freeing
                // what lies past EOF, then unlist it.
                let from = inode.size.div_ceil(crate::format::BLOCK_SIZE as u64);
                if !inode.stuffed() && !self.free_data_from(&h, &buf, &mut inode, from, EXTENTS_PER_STEP)? {
                    self.iput(&h, &buf, &inode);
                    continue;
                }
                self.iput(&h, &buf, &inode);
                return self.remove_orphan_from(&h, listing, ino);
            }
            if !unlinked {
                // Unlinked since the check above (a racing unlink): the next close frees it.
                return Ok(());
            }
            if (inode.is_reg() || inode.is_symlink()) && !self.free_data_from(&h, &buf, &mut inode, 0, EXTENTS_PER_STEP)? {
                self.iput(&h, &buf, &inode);
                continue;
            }
            self.free_inode_blocks(&h, &buf, &inode)?;
            self.remove_orphan_from(&h, listing, ino)?;
            return Ok(());
        }
    }

    /// Frees an inode whose last link is gone, if its data fits in one bounded step; returns
    /// false (and changes nothing) if it is too big to free in this transaction.
    pub(crate) fn free_inode_now(&self, h: &Handle, buf: &Arc<MetaBuf>, inode: &mut Inode) -> Result<bool> {
        if (inode.is_reg() || inode.is_symlink()) && !inode.stuffed() {
            let n = extents_in(&self.tree(buf), 0, u64::MAX >> 16, EXTENTS_PER_STEP + 1)?.len();
            if n > EXTENTS_PER_STEP {
                return Ok(false);
            }
            self.free_data_from(h, buf, inode, 0, EXTENTS_PER_STEP)?;
        }
        self.free_inode_blocks(h, buf, inode)?;
        Ok(true)
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
        self.vol.alloc.free(h, inode.ino.block(), 1)
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
        let (dbuf, _) = self.iget(orphan_dir)?;
        let mut inos = Vec::new();
        dir::list(&self.tree(&dbuf), 0, &mut |e| {
            inos.push(e.ino);
            true
        })?;
        for ino in inos {
            self.reclaim_inode(ino, Reclaim::Listed(orphan_dir))?;
        }
        Ok(())
    }
}
