//! Block numbers and inode numbers. An inode's number is its block's number (as in GFS2), yet
//! the two say different things where they cross module boundaries: an inode number names a
//! file to look up, lock or hand to the kernel; a block number names 4 KiB of the device to
//! read, cache, allocate, free or revoke. The types keep them apart, so handing an inode to
//! something that wants a block takes an explicit [`InodeNo::block`], and a block that is to
//! hold a new inode becomes one through [`InodeNo::from_block`].
//!
//! Neither is made from a bare `u64` behind the caller's back (no `From<u64>`): a number read
//! from a record or computed from the geometry becomes one with `BlockNo(n)` or `InodeNo(n)`
//! where it leaves the code that knows what it is. Both turn back into `u64` freely (`get`,
//! `.0`, `u64::from`), for arithmetic, records and messages, which print the bare number.
use super::BLOCK_SHIFT;
use std::fmt;

/// A block of the volume, counted from the device's start in `BLOCK_SIZE` units.
#[repr(transparent)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BlockNo(pub u64);

/// An inode, named by the number of the block it occupies. 0 names no inode (a file's
/// `parent` field; the superblock holds block 0).
#[repr(transparent)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct InodeNo(pub u64);

impl BlockNo {
    pub const fn get(self) -> u64 {
        self.0
    }

    /// Where the block starts on the device: every block number becomes a byte offset here.
    pub const fn byte_offset(self) -> u64 {
        self.0 << BLOCK_SHIFT
    }
}

/// The block `n` blocks further on (the next blocks of an extent or a run).
impl std::ops::Add<u64> for BlockNo {
    type Output = BlockNo;
    fn add(self, n: u64) -> BlockNo {
        BlockNo(self.0 + n)
    }
}

impl InodeNo {
    pub const fn get(self) -> u64 {
        self.0
    }

    /// The block the inode occupies.
    pub const fn block(self) -> BlockNo {
        BlockNo(self.0)
    }

    /// The inode that block `b` holds (or will hold: a block just allocated for an inode).
    pub const fn from_block(b: BlockNo) -> InodeNo {
        InodeNo(b.0)
    }
}

impl fmt::Display for BlockNo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl fmt::Display for InodeNo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl From<BlockNo> for u64 {
    fn from(b: BlockNo) -> u64 {
        b.0
    }
}

impl From<InodeNo> for u64 {
    fn from(i: InodeNo) -> u64 {
        i.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_inode_is_its_block_and_numbers_print_bare() {
        let i = InodeNo(4242);
        assert_eq!(i.block(), BlockNo(4242));
        assert_eq!(InodeNo::from_block(i.block()), i);
        assert_eq!(BlockNo(3).byte_offset(), 3 * crate::format::BLOCK_SIZE as u64);
        assert_eq!(BlockNo(7) + 2, BlockNo(9));
        assert_eq!((i.to_string(), BlockNo(9).to_string()), ("4242".to_string(), "9".to_string()));
        assert_eq!(std::mem::size_of::<InodeNo>(), 8);
    }
}
