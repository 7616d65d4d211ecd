//! Inodes: one whole block each, and the inode number is that block's number (as in GFS2), so
//! an inode can be locked, journaled and cached on its own without false sharing between nodes.
//! The fixed fields take the first 256 bytes; the rest is the *inline area*: a small file's data
//! ("stuffed"), or the root node of the inode's index tree (file extents, directory entries).
use super::le::*;
use super::{BlockNo, InodeNo};
use crate::error::{FsError, Result};

pub const INLINE_OFFSET: usize = 256;
pub const INLINE_LEN: usize = super::BLOCK_SIZE - INLINE_OFFSET;

/// The inline area holds file data instead of a tree root.
pub const FLAG_STUFFED: u32 = 1;
/// Filesystem-internal inode (orphan directories), never shown to users.
pub const FLAG_SYSTEM: u32 = 2;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Timespec {
    pub sec: i64,
    pub nsec: u32,
}

/// Set by [`Timespec::fix_clock`]: the time every `now()` of the process returns.
static FIXED_NOW: std::sync::OnceLock<Timespec> = std::sync::OnceLock::new();

impl Timespec {
    /// Makes every later `now()` of this process return `t`, and inode generations count up
    /// from 1 instead of being random: for `mafs image build`, whose bytes must depend on the
    /// source tree alone. Never called by a mount.
    pub fn fix_clock(t: Timespec) {
        let _ = FIXED_NOW.set(t);
    }

    pub fn clock_is_fixed() -> bool {
        FIXED_NOW.get().is_some()
    }

    pub fn now() -> Timespec {
        if let Some(t) = FIXED_NOW.get() {
            return *t;
        }
        let d = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        Timespec { sec: d.as_secs() as i64, nsec: d.subsec_nanos() }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Inode {
    pub ino: InodeNo,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub flags: u32,
    pub nlink: u32,
    pub size: u64,
    /// Blocks charged to this inode besides its own: data, tree nodes, xattr block.
    pub blocks: u64,
    pub atime: Timespec,
    pub mtime: Timespec,
    pub ctime: Timespec,
    pub crtime: Timespec,
    pub rdev: u64,
    pub generation: u64,
    /// The extended attribute block as recorded (0: none); see [`Inode::xattr_block`].
    pub xattr_blk: u64,
    /// Directories: the parent directory (for `..` and rename loop checks); 0 for others.
    pub parent: InodeNo,
    /// Directories: number of entries (excluding `.` and `..`).
    pub entries: u64,
}

impl Inode {
    pub fn file_type(&self) -> u32 {
        self.mode & libc::S_IFMT
    }
    pub fn is_dir(&self) -> bool {
        self.file_type() == libc::S_IFDIR
    }
    pub fn is_reg(&self) -> bool {
        self.file_type() == libc::S_IFREG
    }
    pub fn is_symlink(&self) -> bool {
        self.file_type() == libc::S_IFLNK
    }
    pub fn stuffed(&self) -> bool {
        self.flags & FLAG_STUFFED != 0
    }
    /// The block holding the inode's extended attributes, if it has one.
    pub fn xattr_block(&self) -> Option<BlockNo> {
        (self.xattr_blk != 0).then_some(BlockNo(self.xattr_blk))
    }

    /// Writes the fixed fields into an inode block, leaving the inline area alone.
    pub fn encode_into(&self, b: &mut [u8]) {
        put_u32(b, 32, self.mode);
        put_u32(b, 36, self.uid);
        put_u32(b, 40, self.gid);
        put_u32(b, 44, self.flags);
        put_u32(b, 48, self.nlink);
        put_u32(b, 52, 0);
        put_u64(b, 56, self.size);
        put_u64(b, 64, self.blocks);
        put_i64(b, 72, self.atime.sec);
        put_i64(b, 80, self.mtime.sec);
        put_i64(b, 88, self.ctime.sec);
        put_i64(b, 96, self.crtime.sec);
        put_u32(b, 104, self.atime.nsec);
        put_u32(b, 108, self.mtime.nsec);
        put_u32(b, 112, self.ctime.nsec);
        put_u32(b, 116, self.crtime.nsec);
        put_u64(b, 120, self.rdev);
        put_u64(b, 128, self.generation);
        put_u64(b, 136, self.xattr_blk);
        put_u64(b, 144, self.parent.get());
        put_u64(b, 152, self.entries);
    }

    pub fn decode(b: &[u8], ino: InodeNo) -> Result<Inode> {
        let ts = |s: usize, n: usize| Timespec { sec: i64_at(b, s), nsec: u32_at(b, n) };
        let inode = Inode {
            ino,
            mode: u32_at(b, 32),
            uid: u32_at(b, 36),
            gid: u32_at(b, 40),
            flags: u32_at(b, 44),
            nlink: u32_at(b, 48),
            size: u64_at(b, 56),
            blocks: u64_at(b, 64),
            atime: ts(72, 104),
            mtime: ts(80, 108),
            ctime: ts(88, 112),
            crtime: ts(96, 116),
            rdev: u64_at(b, 120),
            generation: u64_at(b, 128),
            xattr_blk: u64_at(b, 136),
            parent: InodeNo(u64_at(b, 144)),
            entries: u64_at(b, 152),
        };
        let valid_type = matches!(
            inode.file_type(),
            libc::S_IFREG | libc::S_IFDIR | libc::S_IFLNK | libc::S_IFIFO | libc::S_IFCHR | libc::S_IFBLK | libc::S_IFSOCK
        );
        if !valid_type {
            return Err(FsError::corrupt(ino, format!("inode has invalid file type in mode {:o}", inode.mode)));
        }
        if inode.stuffed() && inode.size > INLINE_LEN as u64 {
            return Err(FsError::corrupt(ino, format!("inline file claims size {} over the inline limit", inode.size)));
        }
        Ok(inode)
    }
}
