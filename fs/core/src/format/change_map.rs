//! Changed-block tracking records: the volume's change generation (one state block) and each
//! slot's change map (one u32 mark per chunk of [`CHUNK_BLOCKS`](super::layout::CHUNK_BLOCKS)).
//!
//! A node marks a chunk with the generation after the one it last read from the state block
//! before its first write to the chunk in that generation; a snapshot bumps the generation while
//! the volume is frozen and records it, so the next snapshot reads only chunks marked above it.
//! Why the mark is one ahead, and when a node reads the generation again: `docs/design.md`,
//! "Snapshots".
use super::header::{self, BlockType, HEADER_LEN};
use super::layout::{Layout, MARKS_PER_BLOCK};
use super::le::*;
use super::BLOCK_SIZE;
use crate::error::Result;

/// The state block's body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChangeState {
    /// Bumped by each snapshot while the volume is frozen.
    pub generation: u64,
    /// A snapshot taken before this generation cannot be the base of an incremental one: the
    /// volume was changed by a tool that does not mark (fsck --repair), or was restored.
    pub full_since: u64,
}

impl ChangeState {
    /// A new volume's: no snapshot yet.
    pub const NEW: ChangeState = ChangeState { generation: 1, full_since: 2 };

    pub fn encode(&self, blkno: u64, seed: u32) -> Vec<u8> {
        let mut b = vec![0u8; BLOCK_SIZE];
        put_u64(&mut b, 32, self.generation);
        put_u64(&mut b, 40, self.full_since);
        header::seal(&mut b, BlockType::ChangeState, blkno, 0, seed);
        b
    }

    pub fn decode(b: &[u8], blkno: u64, seed: u32) -> Result<ChangeState> {
        header::verify(b, BlockType::ChangeState, blkno, seed)?;
        Ok(ChangeState { generation: u64_at(b, 32), full_since: u64_at(b, 40) })
    }
}

/// Block `i` of a change map holding `marks` (at most [`MARKS_PER_BLOCK`]; the rest are 0).
pub fn encode_marks(marks: &[u32], blkno: u64, seed: u32) -> Vec<u8> {
    let mut b = vec![0u8; BLOCK_SIZE];
    for (k, m) in marks.iter().take(MARKS_PER_BLOCK as usize).enumerate() {
        put_u32(&mut b, HEADER_LEN + 4 * k, *m);
    }
    header::seal(&mut b, BlockType::ChangeMap, blkno, 0, seed);
    b
}

/// The marks of a change map block read from `blkno`.
pub fn decode_marks(b: &[u8], blkno: u64, seed: u32) -> Result<Vec<u32>> {
    header::verify(b, BlockType::ChangeMap, blkno, seed)?;
    Ok((0..MARKS_PER_BLOCK as usize).map(|k| u32_at(b, HEADER_LEN + 4 * k)).collect())
}

/// The whole tracking region of a volume with nothing marked and `state`: what mkfs, restore
/// and image build write.
pub fn blank_region(layout: &Layout, state: ChangeState, seed: u32) -> Vec<u8> {
    let mut out = state.encode(layout.cbt_state_blkno(), seed);
    for s in 0..layout.slot_count {
        for i in 0..layout.cbt_blocks_per_slot as u64 {
            out.extend_from_slice(&encode_marks(&[], layout.change_map_blkno(s, i), seed));
        }
    }
    out
}
