//! The allocation group's own blocks: its header (first block of the AG) and its bitmap
//! blocks (the next `bitmap_blocks_per_ag`), two bits per block of the AG.
//!
//! AG header, after the 32-byte block header:
//!
//! | offset | size | field |
//! |---|---|---|
//! | 32 | 4 | AG index |
//! | 36 | 4 | reserved, 0 |
//! | 40 | 8 | first block of the AG |
//! | 48 | 8 | blocks in the AG |
//! | 56 | 8 | free blocks |
//!
//! Bitmap block: after the block header, block r of the AG at byte `32 + (r mod 16256) / 4`,
//! bits `2·(r mod 4)`, holding a [`BlockState`].
use super::header::{self, BlockType, HEADER_LEN};
use super::layout::STATES_PER_BITMAP_BLOCK;
use super::{record, record_mut, BLOCK_SIZE};
use zerocopy::little_endian::{U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

/// The body of an AG header block (after the block header), read and changed in place.
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct AgHeader {
    index: U32,
    reserved: U32,
    first: U64,
    blocks: U64,
    free: U64,
}
const _: () = assert!(std::mem::size_of::<AgHeader>() == 32);

impl AgHeader {
    pub fn new(index: u32, first: u64, blocks: u64, free: u64) -> AgHeader {
        AgHeader { index: index.into(), reserved: 0.into(), first: first.into(), blocks: blocks.into(), free: free.into() }
    }

    /// The header in an AG header block.
    pub fn of(block: &[u8]) -> &AgHeader {
        record(&block[HEADER_LEN..])
    }

    pub fn of_mut(block: &mut [u8]) -> &mut AgHeader {
        record_mut(&mut block[HEADER_LEN..])
    }

    /// A whole AG header block holding this header, sealed as written by mkfs (sequence 0).
    /// The AG's first block is the block's home.
    pub fn sealed_block(&self, seed: u32) -> Vec<u8> {
        let mut b = vec![0u8; BLOCK_SIZE];
        *AgHeader::of_mut(&mut b) = *self;
        header::seal(&mut b, BlockType::AgHeader, self.first(), 0, seed);
        b
    }

    pub fn index(&self) -> u32 {
        self.index.get()
    }
    pub fn first(&self) -> u64 {
        self.first.get()
    }
    /// Blocks in the AG (the last AG may be short).
    pub fn blocks(&self) -> u64 {
        self.blocks.get()
    }
    pub fn free(&self) -> u64 {
        self.free.get()
    }
    pub fn set_free(&mut self, free: u64) {
        self.free = free.into();
    }
}

/// What the bitmap says of a block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum BlockState {
    Free = 0,
    Data = 1,
    /// AG header, bitmaps, tree nodes, xattr blocks (and states past a short last AG's end).
    Meta = 2,
    Inode = 3,
}

impl BlockState {
    pub fn from_bits(b: u8) -> BlockState {
        match b & 3 {
            0 => BlockState::Free,
            1 => BlockState::Data,
            2 => BlockState::Meta,
            _ => BlockState::Inode,
        }
    }
}

/// Byte and shift of AG-relative block `rel`'s state in its bitmap block.
fn bitmap_position(rel: u64) -> (usize, usize) {
    let i = (rel % STATES_PER_BITMAP_BLOCK) as usize;
    (HEADER_LEN + i / 4, (i % 4) * 2)
}

/// Reads the 2-bit state of AG-relative block `rel` from its bitmap block.
pub fn bitmap_get(bitmap_block: &[u8], rel: u64) -> BlockState {
    let (byte, shift) = bitmap_position(rel);
    BlockState::from_bits(bitmap_block[byte] >> shift)
}

pub fn bitmap_set(bitmap_block: &mut [u8], rel: u64, s: BlockState) {
    let (byte, shift) = bitmap_position(rel);
    let b = &mut bitmap_block[byte];
    *b = (*b & !(3 << shift)) | ((s as u8) << shift);
}

/// Sets the states of AG-relative blocks `from..to` that bitmap block `bi` of the AG covers.
pub fn bitmap_fill(bitmap_block: &mut [u8], bi: u64, from: u64, to: u64, s: BlockState) {
    let lo = bi * STATES_PER_BITMAP_BLOCK;
    for r in from.max(lo)..to.min(lo + STATES_PER_BITMAP_BLOCK) {
        bitmap_set(bitmap_block, r, s);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::le::*;

    #[test]
    fn the_ag_header_keeps_its_documented_offsets() {
        let b = AgHeader::new(7, 0x1122_3344, 262_144, 1000).sealed_block(5);
        assert_eq!((u32_at(&b, 32), u32_at(&b, 36), u64_at(&b, 40), u64_at(&b, 48), u64_at(&b, 56)), (7, 0, 0x1122_3344, 262_144, 1000));
        header::verify(&b, BlockType::AgHeader, 0x1122_3344, 5).expect("sealed at its start block");
        let h = AgHeader::of(&b);
        assert_eq!((h.index(), h.first(), h.blocks(), h.free()), (7, 0x1122_3344, 262_144, 1000));
    }

    #[test]
    fn bitmap_states_round_trip_without_touching_neighbours() {
        let mut b = vec![0u8; BLOCK_SIZE];
        bitmap_set(&mut b, 5, BlockState::Inode);
        bitmap_set(&mut b, 6, BlockState::Data);
        assert_eq!(bitmap_get(&b, 5), BlockState::Inode);
        assert_eq!(bitmap_get(&b, 6), BlockState::Data);
        assert_eq!(bitmap_get(&b, 4), BlockState::Free);
        bitmap_set(&mut b, 5, BlockState::Free);
        assert_eq!(bitmap_get(&b, 5), BlockState::Free);
        assert_eq!(bitmap_get(&b, 6), BlockState::Data);
        assert_eq!(b[HEADER_LEN + 1], 0b01_0000, "block 6 is the third pair of bits of byte 33");
    }

    #[test]
    fn bitmap_fill_stays_inside_its_block() {
        let mut b = vec![0u8; BLOCK_SIZE];
        let n = STATES_PER_BITMAP_BLOCK;
        bitmap_fill(&mut b, 1, n - 3, n + 2, BlockState::Meta);
        assert_eq!(
            (0..4).map(|r| bitmap_get(&b, n + r)).collect::<Vec<_>>(),
            [BlockState::Meta, BlockState::Meta, BlockState::Free, BlockState::Free]
        );
        assert_eq!(bitmap_get(&b, n - 1), BlockState::Free, "block n-1 is in bitmap block 0: wraps to the end of this one");
    }
}
