//! The superblock: the volume's identity and geometry. Two copies, at blocks 0 and 1, written
//! only by mkfs (geometry never changes while mounted), so there is no crash window between
//! them: a torn or damaged primary is replaced by the backup at mount, and fsck rewrites it.
use super::header::{self, BlockType};
use super::layout::Layout;
use super::le::*;
use super::BLOCK_SIZE;
use crate::error::{FsError, Result};

pub const SUPERBLOCK_BLKNO: u64 = 0;
pub const BACKUP_SUPERBLOCK_BLKNO: u64 = 1;
/// The superblock's own checksum is seeded with a constant: it must be checked before the
/// volume's UUID (the seed of every other block) is known.
pub const SUPERBLOCK_SEED: u32 = 0x6d61_6673;
pub const LABEL_LEN: usize = 64;
/// The volume has a change tracking region (`Layout::cbt_blocks_per_slot`): a mafs that does
/// not know it would write without marking what changed, and snapshots would miss the change.
pub const INCOMPAT_CHANGE_TRACKING: u32 = 1;
/// A volume with unknown bits set is refused.
pub const SUPPORTED_INCOMPAT: u32 = INCOMPAT_CHANGE_TRACKING;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Superblock {
    pub uuid: [u8; 16],
    pub label: String,
    pub layout: Layout,
    pub root_ino: u64,
    pub lost_found_ino: u64,
    pub created_sec: i64,
    pub incompat: u32,
    /// Seed of every other block's checksum: crc32c of the UUID mkfs gave the volume. A restored
    /// or launched copy gets a UUID of its own and keeps the seed, so its blocks stay valid.
    pub crc_seed: u32,
}

impl Superblock {
    /// Seed of every non-superblock checksum: ties each block to this volume, so blocks left by
    /// an earlier format on the same device never verify.
    pub fn crc_seed(&self) -> u32 {
        self.crc_seed
    }

    pub fn uuid_string(&self) -> String {
        uuid::Uuid::from_bytes(self.uuid).hyphenated().to_string()
    }

    pub fn encode(&self, blkno: u64) -> Vec<u8> {
        let mut b = vec![0u8; BLOCK_SIZE];
        b[32..48].copy_from_slice(&self.uuid);
        let lb = self.label.as_bytes();
        let n = lb.len().min(LABEL_LEN);
        b[48..48 + n].copy_from_slice(&lb[..n]);
        let l = &self.layout;
        put_u64(&mut b, 112, l.total_blocks);
        put_u32(&mut b, 120, l.slot_count);
        put_u32(&mut b, 124, l.journal_blocks);
        put_u64(&mut b, 128, l.slot_table_start);
        put_u64(&mut b, 136, l.journal_start);
        put_u64(&mut b, 144, l.ag_start);
        put_u32(&mut b, 152, l.ag_count);
        put_u32(&mut b, 156, l.ag_blocks);
        put_u32(&mut b, 160, l.bitmap_blocks_per_ag);
        put_u64(&mut b, 168, self.root_ino);
        put_u64(&mut b, 176, self.lost_found_ino);
        put_i64(&mut b, 184, self.created_sec);
        put_u32(&mut b, 192, self.crc_seed());
        put_u32(&mut b, 196, self.incompat);
        put_u32(&mut b, 200, l.max_slots);
        put_u32(&mut b, 204, l.cbt_blocks_per_slot);
        put_u32(&mut b, 208, if l.tracks_changes() { super::layout::CHUNK_BLOCKS as u32 } else { 0 });
        header::seal(&mut b, BlockType::Superblock, blkno, 0, SUPERBLOCK_SEED);
        b
    }

    pub fn decode(b: &[u8], blkno: u64) -> Result<Superblock> {
        if u32_at(b, 0) != BlockType::Superblock as u32 {
            return Err(FsError::NotMafs(format!("no mafs superblock at block {blkno} (wrong magic)")));
        }
        header::verify(b, BlockType::Superblock, blkno, SUPERBLOCK_SEED)?;
        let mut uuid = [0u8; 16];
        uuid.copy_from_slice(&b[32..48]);
        let label_raw = &b[48..48 + LABEL_LEN];
        let end = label_raw.iter().position(|&c| c == 0).unwrap_or(LABEL_LEN);
        let label = String::from_utf8_lossy(&label_raw[..end]).into_owned();
        let layout = Layout {
            total_blocks: u64_at(b, 112),
            slot_count: u32_at(b, 120),
            journal_blocks: u32_at(b, 124),
            slot_table_start: u64_at(b, 128),
            journal_start: u64_at(b, 136),
            ag_start: u64_at(b, 144),
            ag_count: u32_at(b, 152),
            ag_blocks: u32_at(b, 156),
            bitmap_blocks_per_ag: u32_at(b, 160),
            max_slots: u32_at(b, 200),
            cbt_blocks_per_slot: u32_at(b, 204),
        };
        let sb = Superblock {
            uuid,
            label,
            layout,
            root_ino: u64_at(b, 168),
            lost_found_ino: u64_at(b, 176),
            created_sec: i64_at(b, 184),
            incompat: u32_at(b, 196),
            crc_seed: u32_at(b, 192),
        };
        if sb.incompat & !SUPPORTED_INCOMPAT != 0 {
            return Err(FsError::Unsupported(format!("volume uses features {:#x} this mafs does not know; upgrade mafs", sb.incompat)));
        }
        if sb.layout.tracks_changes() != (sb.incompat & INCOMPAT_CHANGE_TRACKING != 0)
            || (sb.layout.tracks_changes() && u32_at(b, 208) as u64 != super::layout::CHUNK_BLOCKS)
        {
            return Err(FsError::corrupt(blkno, "superblock's change tracking fields disagree with its feature bits"));
        }
        sb.layout.validate().map_err(|what| FsError::corrupt(blkno, format!("superblock geometry is inconsistent: {what}")))?;
        Ok(sb)
    }
}
