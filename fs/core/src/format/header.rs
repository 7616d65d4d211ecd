//! The 32-byte header at the start of every metadata block: what the block is, where it belongs,
//! which transaction wrote it, and a crc32c over the whole block. A misplaced, torn or stale
//! block fails `verify` instead of being trusted.
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 4 | magic (block type) |
//! | 4 | 4 | format version |
//! | 8 | 8 | block number the block belongs at |
//! | 16 | 8 | sequence of the journal transaction that last wrote it |
//! | 24 | 4 | crc32c of the block with this field zero, seeded with the volume's crc seed |
//! | 28 | 4 | reserved, zero |
use super::le::*;
use super::{BLOCK_SIZE, FORMAT_VERSION};
use crate::error::{FsError, Result};

pub const HEADER_LEN: usize = 32;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum BlockType {
    Superblock = 0x4d41_5342, // "BSAM"
    Slot = 0x4d41_534c,
    AgHeader = 0x4d41_4147,
    Bitmap = 0x4d41_424d,
    Inode = 0x4d41_494e,
    TreeNode = 0x4d41_5452,
    Xattr = 0x4d41_5841,
    JournalDesc = 0x4d41_4a44,
    JournalCommit = 0x4d41_4a43,
    ChangeState = 0x4d41_4353,
    ChangeMap = 0x4d41_434d,
}

impl BlockType {
    pub fn name(self) -> &'static str {
        match self {
            BlockType::Superblock => "superblock",
            BlockType::Slot => "slot header",
            BlockType::AgHeader => "allocation group header",
            BlockType::Bitmap => "allocation bitmap",
            BlockType::Inode => "inode",
            BlockType::TreeNode => "index tree node",
            BlockType::Xattr => "extended attribute block",
            BlockType::JournalDesc => "journal descriptor",
            BlockType::JournalCommit => "journal commit",
            BlockType::ChangeState => "change tracking state",
            BlockType::ChangeMap => "change map",
        }
    }
    pub fn from_magic(m: u32) -> Option<BlockType> {
        use BlockType::*;
        [Superblock, Slot, AgHeader, Bitmap, Inode, TreeNode, Xattr, JournalDesc, JournalCommit, ChangeState, ChangeMap]
            .into_iter()
            .find(|t| *t as u32 == m)
    }
}

fn crc_of(block: &[u8], seed: u32) -> u32 {
    let c = crc32c::crc32c_append(seed, &block[..24]);
    let c = crc32c::crc32c_append(c, &[0u8; 4]);
    crc32c::crc32c_append(c, &block[28..])
}

/// Writes the header fields and the checksum; call last, after the body is final.
pub fn seal(block: &mut [u8], ty: BlockType, blkno: u64, seq: u64, seed: u32) {
    debug_assert_eq!(block.len(), BLOCK_SIZE);
    put_u32(block, 0, ty as u32);
    put_u32(block, 4, FORMAT_VERSION);
    put_u64(block, 8, blkno);
    put_u64(block, 16, seq);
    put_u32(block, 28, 0);
    let crc = crc_of(block, seed);
    put_u32(block, 24, crc);
}

/// Recomputes the checksum only (the header's type, home and sequence already set).
pub fn reseal(block: &mut [u8], seq: u64, seed: u32) {
    put_u64(block, 16, seq);
    let crc = crc_of(block, seed);
    put_u32(block, 24, crc);
}

pub fn block_type(block: &[u8]) -> Option<BlockType> {
    BlockType::from_magic(u32_at(block, 0))
}

pub fn seq_of(block: &[u8]) -> u64 {
    u64_at(block, 16)
}

/// Checks that `block`, read from `blkno`, is an intact block of type `ty`.
pub fn verify(block: &[u8], ty: BlockType, blkno: u64, seed: u32) -> Result<()> {
    let magic = u32_at(block, 0);
    if magic != ty as u32 {
        let found = BlockType::from_magic(magic).map(|t| t.name()).unwrap_or("unknown data");
        return Err(FsError::corrupt(blkno, format!("expected a {} but found {}", ty.name(), found)));
    }
    let ver = u32_at(block, 4);
    if ver != FORMAT_VERSION {
        return Err(FsError::Unsupported(format!("block {blkno} has format version {ver}, this mafs reads version {FORMAT_VERSION}")));
    }
    let home = u64_at(block, 8);
    if home != blkno {
        return Err(FsError::corrupt(blkno, format!("{} belongs at block {home} (misdirected write)", ty.name())));
    }
    let want = u32_at(block, 24);
    if crc_of(block, seed) != want {
        return Err(FsError::corrupt(blkno, format!("{} checksum mismatch (torn or damaged block)", ty.name())));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_block_verifies_and_any_flipped_bit_fails() {
        let mut b = vec![0u8; BLOCK_SIZE];
        b[100] = 7;
        seal(&mut b, BlockType::Inode, 42, 9, 1234);
        verify(&b, BlockType::Inode, 42, 1234).expect("intact");
        assert!(verify(&b, BlockType::Inode, 43, 1234).is_err(), "wrong home");
        assert!(verify(&b, BlockType::TreeNode, 42, 1234).is_err(), "wrong type");
        assert!(verify(&b, BlockType::Inode, 42, 99).is_err(), "other volume's seed");
        b[4000] ^= 1;
        assert!(verify(&b, BlockType::Inode, 42, 1234).is_err(), "flipped bit");
    }
}
