//! File handles (NFS export, `open_by_handle_at`): finding an inode by its number alone, and a
//! directory's parent, for a kernel that has forgotten both; and the generation numbers that
//! tell a deleted file's handle from that of a later file given the same inode number.
//!
//! A handle holds the inode number and the generation the inode had when the handle was made.
//! The kernel decodes it itself while it still caches the inode; otherwise it asks the
//! filesystem for "." of that number (and walks ".." to reconnect a directory to the root), then
//! compares generations. So the number may name anything by now — a freed block, file data, an
//! inode being created — and every such case must come back as "no such inode", never as a
//! corruption report or another file.
use super::Fs;
use crate::alloc::BlockState;
use crate::error::{FsError, Result};
use crate::format::header::BlockType;
use crate::format::inode::{Inode, FLAG_SYSTEM};
use crate::format::le::u32_at;
use crate::format::InodeNo;
use crate::locks::Mode;

impl Fs {
    /// The live inode numbered `ino`, for a file handle: `NotFound` unless the block is an
    /// allocated, initialised, user-visible inode that is still linked (or still open here).
    pub fn inode_by_number(&self, ino: InodeNo) -> Result<Inode> {
        let _g = self.locks.lock(ino, Mode::Shared)?;
        self.inode_by_number_locked(ino)
    }

    /// The parent of directory `ino` (its ".."), for reconnecting a directory handle.
    pub fn parent_of(&self, ino: InodeNo) -> Result<Inode> {
        let parent = {
            let _g = self.locks.lock(ino, Mode::Shared)?;
            let dir = self.inode_by_number_locked(ino)?;
            if !dir.is_dir() {
                return Err(FsError::NotDir);
            }
            dir.parent
        };
        // Read without the child's lock (a parent is locked before its child, never after):
        // a rename in between yields the old parent, which the kernel's reconnect checks by
        // name and retries, as for any filesystem.
        self.inode_by_number(parent)
    }

    fn inode_by_number_locked(&self, ino: InodeNo) -> Result<Inode> {
        // The bitmap first: a freed inode's block may still sit in the cache with its old
        // image, or hold file data or a tree node now, which must not be read as an inode.
        if self.vol.alloc.state(ino.block())? != BlockState::Inode {
            return Err(FsError::NotFound);
        }
        let buf = self.vol.cache.get(ino.block(), BlockType::Inode, crate::cache::Cover::Inode(ino))?;
        // An inode a create has allocated but not written yet is all zeroes: not a file yet.
        if u32_at(&buf.read(), 32) & libc::S_IFMT == 0 {
            return Err(FsError::NotFound);
        }
        let (_, inode) = self.iget(ino)?;
        if inode.flags & FLAG_SYSTEM != 0 || (inode.nlink == 0 && !self.is_open(ino)) {
            return Err(FsError::NotFound);
        }
        Ok(inode)
    }
}

/// A generation for a new inode. The kernel keeps 32 bits of it (`i_generation`, and the
/// handle carries those 32), so it is a random u32 — what ext4 and XFS give new inodes: a file
/// created on an inode number freed by another one gets a different generation but for a
/// 1-in-2^32 chance, whichever node or mount frees and reuses the number, and without any
/// on-disk counter (the old inode's block is gone by the time its number is reused). Never 0.
pub(crate) fn new_generation() -> u64 {
    static COUNTED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    if crate::format::inode::Timespec::clock_is_fixed() {
        // An image build: the same tree must give the same bytes.
        return COUNTED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    let mut b = [0u8; 4];
    loop {
        // SAFETY: writes at most 4 bytes into `b`.
        let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
        let g = if n == b.len() as isize {
            u32::from_ne_bytes(b)
        } else {
            // No getrandom (or interrupted): the clock, mixed so its low 32 bits vary.
            let t = crate::format::inode::Timespec::now();
            let x = (t.sec as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ (t.nsec as u64).wrapping_mul(0xff51_afd7_ed55_8ccd);
            (x >> 32) as u32 ^ x as u32
        };
        if g != 0 {
            return g as u64;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::filesystem::namespace::NewNode;
    use crate::filesystem::Caller;
    use crate::test_support::scratch_device;
    use crate::volume::Volume;

    fn fs() -> Fs {
        let vol = Volume::open(scratch_device(), 0, "export-test", 1 << 12).expect("open");
        Fs::new(vol).expect("fs")
    }

    fn make(fs: &Fs, parent: InodeNo, name: &[u8], mode: u32) -> Inode {
        fs.create(parent, name, NewNode { mode, rdev: 0, symlink_target: None }, Caller::ROOT).expect("create")
    }

    #[test]
    fn numbers_resolve_to_live_inodes_and_directories_to_their_parents() {
        let fs = fs();
        let d = make(&fs, fs.root(), b"d", libc::S_IFDIR | 0o755);
        let sub = make(&fs, d.ino, b"sub", libc::S_IFDIR | 0o755);
        let f = make(&fs, sub.ino, b"f", libc::S_IFREG | 0o644);
        assert_eq!(fs.inode_by_number(f.ino).expect("file by number"), f);
        assert_eq!(fs.parent_of(sub.ino).expect("parent of sub").ino, d.ino);
        assert_eq!(fs.parent_of(d.ino).expect("parent of d").ino, fs.root());
        assert_eq!(fs.parent_of(fs.root()).expect("parent of root").ino, fs.root());
        assert!(matches!(fs.parent_of(f.ino), Err(FsError::NotDir)));
        fs.rename(sub.ino, b"f", d.ino, b"f", 0).expect("rename file");
        fs.rename(d.ino, b"sub", fs.root(), b"sub", 0).expect("rename dir");
        assert_eq!(fs.parent_of(sub.ino).expect("parent after rename").ino, fs.root());
    }

    #[test]
    fn freed_metadata_data_and_system_blocks_are_not_found() {
        let fs = fs();
        let f = make(&fs, fs.root(), b"f", libc::S_IFREG | 0o644);
        fs.write(f.ino, 0, &vec![7u8; 64 << 10]).expect("write");
        fs.unlink(fs.root(), b"f", false).expect("unlink");
        for ino in [f.ino, InodeNo(0), InodeNo(1), InodeNo(fs.vol.sb.layout.ag_start), fs.orphan_dir, InodeNo(u64::MAX)] {
            assert!(matches!(fs.inode_by_number(ino), Err(FsError::NotFound)), "block {ino}: {:?}", fs.inode_by_number(ino));
        }
        // A block that now holds file data.
        let g = make(&fs, fs.root(), b"g", libc::S_IFREG | 0o644);
        fs.write(g.ino, 0, &vec![1u8; 64 << 10]).expect("write");
        let data_blk =
            (1..64).map(|i| g.ino.block() + i).find(|&b| fs.vol.alloc.state(b).ok() == Some(BlockState::Data)).expect("a data block");
        assert!(matches!(fs.inode_by_number(InodeNo::from_block(data_blk)), Err(FsError::NotFound)));
    }

    #[test]
    fn a_reused_inode_number_gets_a_new_generation() {
        let fs = fs();
        let d = make(&fs, fs.root(), b"d", libc::S_IFDIR | 0o755);
        let old = make(&fs, d.ino, b"old", libc::S_IFREG | 0o644);
        fs.unlink(d.ino, b"old", false).expect("unlink");
        fs.sync().expect("commit, so the freed block can be reused");
        let new = (0..100)
            .map(|i| make(&fs, d.ino, format!("n{i}").as_bytes(), libc::S_IFREG | 0o644))
            .find(|n| n.ino == old.ino)
            .expect("number reused");
        assert_ne!(new.generation as u32, old.generation as u32, "the kernel compares the low 32 bits");
        assert!(new.generation <= u32::MAX as u64 && new.generation != 0);
    }
}
