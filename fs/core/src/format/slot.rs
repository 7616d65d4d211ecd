//! Node slot headers: one block per slot, saying whether the slot's journal may hold
//! transactions that are not yet at home (a mounted or crashed node) and where replay starts.
use super::header::{self, BlockType};
use super::le::*;
use super::BLOCK_SIZE;
use crate::error::Result;

pub const OWNER_LEN: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotState {
    Clean = 0,
    /// Mounted, or its node died while mounted: the journal must be replayed before anyone
    /// trusts the blocks it covers.
    InUse = 1,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotHeader {
    pub index: u32,
    pub state: SlotState,
    /// Bumped at every mount of the slot.
    pub generation: u64,
    /// Journal block (relative to the slot's journal) where replay starts.
    pub journal_tail: u64,
    /// Sequence number of the transaction expected at `journal_tail`.
    pub tail_seq: u64,
    /// Directory holding inodes that were unlinked while still open; freed at the next mount.
    pub orphan_dir: u64,
    pub mounted_at: i64,
    pub owner: String,
    /// Multi-mount protection: changed by the mounted node every `mmp::INTERVAL`, so another
    /// host can tell a live mount from a crashed one (see `crate::mmp`). 0 on older volumes.
    pub mmp_seq: u64,
    /// Wall-clock seconds of the last `mmp_seq` change, for messages only (clocks differ).
    pub mmp_time: i64,
    /// Version of this header: each write goes to the copy the previous one did not use (even:
    /// the slot table block, odd: the last block of the slot's journal area), and a reader
    /// takes the valid copy with the highest version.
    pub update_seq: u64,
}

impl SlotHeader {
    /// The header of a slot nobody has mounted yet (mkfs), or whose header was lost (fsck):
    /// clean, with an empty journal expecting `tail_seq` first.
    pub fn clean(index: u32, orphan_dir: u64, tail_seq: u64) -> SlotHeader {
        SlotHeader {
            index,
            state: SlotState::Clean,
            generation: 0,
            journal_tail: 0,
            tail_seq,
            orphan_dir,
            mounted_at: 0,
            owner: String::new(),
            mmp_seq: 0,
            mmp_time: 0,
            update_seq: 0,
        }
    }

    pub fn encode(&self, blkno: u64, seed: u32) -> Vec<u8> {
        let mut b = vec![0u8; BLOCK_SIZE];
        put_u32(&mut b, 32, self.index);
        put_u32(&mut b, 36, self.state as u32);
        put_u64(&mut b, 40, self.generation);
        put_u64(&mut b, 48, self.journal_tail);
        put_u64(&mut b, 56, self.tail_seq);
        put_u64(&mut b, 64, self.orphan_dir);
        put_i64(&mut b, 72, self.mounted_at);
        let ob = self.owner.as_bytes();
        let n = ob.len().min(OWNER_LEN);
        b[80..80 + n].copy_from_slice(&ob[..n]);
        put_u64(&mut b, 144, self.mmp_seq);
        put_i64(&mut b, 152, self.mmp_time);
        put_u64(&mut b, 160, self.update_seq);
        header::seal(&mut b, BlockType::Slot, blkno, self.tail_seq, seed);
        b
    }

    pub fn decode(b: &[u8], blkno: u64, seed: u32) -> Result<SlotHeader> {
        header::verify(b, BlockType::Slot, blkno, seed)?;
        let raw = &b[80..80 + OWNER_LEN];
        let end = raw.iter().position(|&c| c == 0).unwrap_or(OWNER_LEN);
        Ok(SlotHeader {
            index: u32_at(b, 32),
            state: if u32_at(b, 36) == 0 { SlotState::Clean } else { SlotState::InUse },
            generation: u64_at(b, 40),
            journal_tail: u64_at(b, 48),
            tail_seq: u64_at(b, 56),
            orphan_dir: u64_at(b, 64),
            mounted_at: i64_at(b, 72),
            owner: String::from_utf8_lossy(&raw[..end]).into_owned(),
            mmp_seq: u64_at(b, 144),
            mmp_time: i64_at(b, 152),
            update_seq: u64_at(b, 160),
        })
    }
}
