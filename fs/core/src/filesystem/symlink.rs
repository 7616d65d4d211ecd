//! Symbolic links. The target is the link's data: inline in the inode when it fits, else in
//! one data block, with the size saying how long it is. It is stored in the transaction that
//! creates the link, so a link never exists without its target (a link whose target could not
//! be stored, for lack of space, is rolled back whole rather than left empty).
use super::data::{extent_at, insert_extent};
use super::{Fs, METADATA_RESERVE};
use crate::alloc::BlockState;
use crate::btree::TreeRead;
use crate::cache::MetaBuf;
use crate::error::{FsError, Result};
use crate::format::extent::Extent;
use crate::format::inode::{Inode, FLAG_STUFFED, INLINE_LEN, INLINE_OFFSET};
use crate::format::{BlockNo, InodeNo, BLOCK_SIZE};
use crate::journal::Handle;
use std::sync::Arc;

/// Longest target (PATH_MAX less its terminating NUL), as the kernel allows.
pub const MAX_TARGET: usize = 4095;

/// ENOENT for an empty target and ENAMETOOLONG past `MAX_TARGET`, as symlink(2) says.
pub(crate) fn check_target(target: &[u8]) -> Result<()> {
    if target.is_empty() {
        return Err(FsError::NotFound);
    }
    if target.len() > MAX_TARGET {
        return Err(FsError::NameTooLong);
    }
    Ok(())
}

/// A target too long for the inode's inline area takes a data block.
fn needs_block(target: &[u8]) -> bool {
    target.len() > INLINE_LEN
}

impl Fs {
    /// ENOSPC, before anything changes, if the target needs a block and file data may not
    /// take another (the last blocks are kept for metadata, as for any file's data).
    pub(crate) fn ensure_room_for_target(&self, target: &[u8]) -> Result<()> {
        if self.vol.alloc.is_shared() {
            return Ok(()); // counted under the groups' locks (`hold_ags`)
        }
        if needs_block(target) && self.vol.alloc.available() <= METADATA_RESERVE {
            return Err(FsError::NoSpace);
        }
        Ok(())
    }

    /// Stores a new link's target in its (not yet written back) inode. On error nothing is
    /// left allocated; the caller drops the inode.
    pub(crate) fn store_target(&self, h: &Handle, buf: &Arc<MetaBuf>, inode: &mut Inode, target: &[u8]) -> Result<()> {
        inode.size = target.len() as u64;
        if !needs_block(target) {
            inode.flags |= FLAG_STUFFED;
            h.write(buf)[INLINE_OFFSET..INLINE_OFFSET + target.len()].copy_from_slice(target);
            return Ok(());
        }
        inode.flags &= !FLAG_STUFFED;
        let (p, _) = self.vol.alloc.alloc(h, 1, Some(buf.blkno + 1), BlockState::Data)?;
        let r = self.map_target_block(h, buf, inode, target, p);
        if r.is_err() {
            self.vol.alloc.free(h, p, 1)?;
        }
        r
    }

    /// Writes the target into block `p` and maps it as the link's logical block 0.
    fn map_target_block(&self, h: &Handle, buf: &Arc<MetaBuf>, inode: &mut Inode, target: &[u8], p: BlockNo) -> Result<()> {
        let mut block = vec![0u8; BLOCK_SIZE];
        block[..target.len()].copy_from_slice(target);
        // Data before the mapping that points at it (ordered mode).
        self.vol.dev.write_at(&block, p.byte_offset())?;
        let mut t = self.tree_mut(h, buf);
        insert_extent(&mut t, Extent { lblk: 0, pblk: p, len: 1 })?;
        inode.blocks = (1 + t.blocks_delta).max(0) as u64;
        Ok(())
    }

    /// Gives back the inode block of a node whose creation failed before it was linked.
    pub(crate) fn drop_new_inode(&self, h: &Handle, ino: InodeNo) -> Result<()> {
        h.revoke(ino.block());
        self.vol.alloc.free(h, ino.block(), 1)
    }
}

/// What is wrong with a symbolic link's target, if anything: for fsck, whose walk has the
/// inode and its tree at hand. A target must be 1 to `MAX_TARGET` bytes long, stored (inline,
/// or in a mapped block), and hold no NUL within its length — a link whose length does not
/// match its data reads back as garbage or not at all.
pub fn target_problem(t: &TreeRead, inode: &Inode) -> Option<String> {
    if !inode.is_symlink() {
        return None;
    }
    let len = inode.size as usize;
    if len == 0 || len > MAX_TARGET {
        return Some(format!("symbolic link with a target of {len} bytes (must be 1 to {MAX_TARGET})"));
    }
    let data = match read_target(t, inode, len) {
        Ok(Some(d)) => d,
        Ok(None) => return Some(format!("symbolic link's {len}-byte target has no data block")),
        Err(e) => return Some(format!("symbolic link's target is unreadable ({e})")),
    };
    data.iter().position(|&b| b == 0).map(|at| format!("symbolic link's target is {len} bytes long but its data ends after {at}"))
}

/// The first `len` bytes of a link's data; `None` if they are in no mapped block.
fn read_target(t: &TreeRead, inode: &Inode, len: usize) -> Result<Option<Vec<u8>>> {
    if inode.stuffed() {
        return Ok(Some(t.inode_buf.read()[INLINE_OFFSET..INLINE_OFFSET + len.min(INLINE_LEN)].to_vec()));
    }
    let Some(e) = extent_at(t, 0)? else { return Ok(None) };
    let mut block = vec![0u8; len];
    t.cache.device().read_at(&mut block, e.pblk.byte_offset())?;
    Ok(Some(block))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::filesystem::namespace::NewNode;
    use crate::filesystem::Caller;
    use crate::locks::Mode;
    use crate::test_support::scratch_device;
    use crate::volume::Volume;

    fn fs() -> Fs {
        let vol = Volume::open(scratch_device(), 0, "symlink-test", 1 << 12).expect("open");
        Fs::new(vol).expect("fs")
    }

    fn link(fs: &Fs, name: &[u8], target: &[u8]) -> InodeNo {
        let node = NewNode { mode: libc::S_IFLNK | 0o777, rdev: 0, symlink_target: Some(target) };
        fs.create(fs.root(), name, node, Caller::ROOT).expect("symlink").ino
    }

    fn problem(fs: &Fs, ino: InodeNo) -> Option<String> {
        let _g = fs.locks.lock(ino, Mode::Shared).expect("lock");
        let (buf, inode) = fs.iget(ino).expect("iget");
        target_problem(&fs.tree(&buf), &inode)
    }

    fn set_size(fs: &Fs, ino: InodeNo, size: u64) {
        let _g = fs.locks.lock(ino, Mode::Exclusive).expect("lock");
        let h = fs.begin().expect("begin");
        let (buf, mut inode) = fs.iget(ino).expect("iget");
        inode.size = size;
        fs.iput(&h, &buf, &inode);
    }

    #[test]
    fn stored_targets_read_back_and_pass_the_check() {
        let fs = fs();
        for (name, len) in [(&b"short"[..], 10), (b"inline-max", INLINE_LEN), (b"block", INLINE_LEN + 1), (b"max", MAX_TARGET)] {
            let target = vec![b'x'; len];
            let ino = link(&fs, name, &target);
            assert_eq!(fs.readlink(ino).expect("readlink"), target);
            assert_eq!(problem(&fs, ino), None, "{len}-byte target");
        }
    }

    #[test]
    fn a_length_that_does_not_match_the_data_is_flagged() {
        let fs = fs();
        let short = link(&fs, b"short", b"abc");
        let long = link(&fs, b"long", &[b'y'; 4000]);
        set_size(&fs, short, 0);
        assert!(problem(&fs, short).is_some_and(|p| p.contains("0 bytes")), "{:?}", problem(&fs, short));
        set_size(&fs, short, 10);
        assert!(problem(&fs, short).is_some_and(|p| p.contains("ends after 3")), "{:?}", problem(&fs, short));
        set_size(&fs, long, 4095);
        assert!(problem(&fs, long).is_some_and(|p| p.contains("ends after 4000")), "{:?}", problem(&fs, long));
    }

    #[test]
    fn a_long_target_without_its_block_is_flagged() {
        let fs = fs();
        let ino = link(&fs, b"long", &[b'z'; 4000]);
        let _g = fs.locks.lock(ino, Mode::Exclusive).expect("lock");
        let h = fs.begin().expect("begin");
        let (buf, mut inode) = fs.iget(ino).expect("iget");
        assert!(fs.free_data_from(&h, &buf, &mut inode, 0, 8).expect("free"));
        fs.iput(&h, &buf, &inode);
        drop((h, _g));
        assert!(problem(&fs, ino).is_some_and(|p| p.contains("no data block")), "{:?}", problem(&fs, ino));
    }
}
