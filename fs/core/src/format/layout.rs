//! Volume geometry: where the slot headers, the per-slot journals and the allocation groups
//! (AGs) lie, computed once by mkfs and stored in the superblock.
//!
//! ```text
//! block 0            superblock          block 1   backup superblock
//! 2 .. 2+max_slots   slot headers (one block per node slot)
//! journal_start      slot 0 journal, slot 1 journal, ... (journal_blocks each)
//! cbt_start          change tracking: [state block][slot 0 change map][slot 1 change map] ...
//!                    (volumes made before change tracking have none: ag_start follows the journals)
//! ag_start           AG 0: [AG header][bitmap blocks][data, inodes, tree nodes ...]
//!                    AG 1 ... (ag_blocks each; the last AG may be shorter)
//! ```
use super::header::HEADER_LEN;
use super::BLOCK_SIZE;

/// Two bits per block in the AG bitmaps (free / data / metadata / inode).
pub const BITS_PER_BLOCK_STATE: usize = 2;
pub const STATES_PER_BITMAP_BLOCK: u64 = ((BLOCK_SIZE - HEADER_LEN) * 8 / BITS_PER_BLOCK_STATE) as u64;
pub const DEFAULT_AG_BLOCKS: u32 = 1 << 18; // 1 GiB
pub const MIN_AG_BLOCKS: u32 = 256; // 1 MiB: small test volumes still get one group per slot
pub const DEFAULT_MAX_SLOTS: u32 = 256;
/// Snapshots read, track and store the volume in chunks of this many blocks (512 KiB, the
/// block size of EBS's snapshot APIs).
pub const CHUNK_BLOCKS: u64 = 128;
/// Change marks (u32 each) in one change map block, after its header.
pub const MARKS_PER_BLOCK: u64 = ((BLOCK_SIZE - HEADER_LEN) / 4) as u64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    pub total_blocks: u64,
    pub slot_count: u32,
    /// Blocks reserved for slot headers (room to add slots later without moving anything).
    pub max_slots: u32,
    pub journal_blocks: u32,
    pub slot_table_start: u64,
    pub journal_start: u64,
    pub ag_start: u64,
    pub ag_count: u32,
    pub ag_blocks: u32,
    pub bitmap_blocks_per_ag: u32,
    /// Blocks of each slot's change map (`format/change_map.rs`); 0 on a volume made before
    /// change tracking, which has no tracking region at all.
    pub cbt_blocks_per_slot: u32,
}

impl Layout {
    /// Chooses a geometry for a device of `total_blocks` with `slots` node slots.
    /// `journal_blocks` of None picks 32 MiB per slot, less on small volumes.
    pub fn compute(total_blocks: u64, slots: u32, journal_blocks: Option<u32>) -> Result<Layout, String> {
        if slots == 0 || slots > DEFAULT_MAX_SLOTS {
            return Err(format!("--slots must be between 1 and {DEFAULT_MAX_SLOTS}"));
        }
        let journal_blocks = journal_blocks.unwrap_or_else(|| {
            // At most 1/8 of the volume for all journals, between 4 MiB and 32 MiB per slot.
            let share = total_blocks / 8 / slots as u64;
            share.clamp(1024, 8192) as u32
        });
        if journal_blocks < 256 {
            return Err("journal must be at least 256 blocks (1 MiB)".into());
        }
        let slot_table_start = 2;
        let journal_start = slot_table_start + DEFAULT_MAX_SLOTS as u64;
        let cbt_blocks_per_slot = Self::change_map_blocks(total_blocks);
        let ag_start = journal_start + slots as u64 * journal_blocks as u64 + 1 + slots as u64 * cbt_blocks_per_slot as u64;
        // At least one allocation group per slot, so that each node allocates from a group of
        // its own (`Allocator`'s home group), and at least four.
        let min_ags = slots.max(4) as u64;
        if total_blocks < ag_start + MIN_AG_BLOCKS as u64 * slots as u64 || total_blocks <= ag_start + MIN_AG_BLOCKS as u64 {
            let need = (ag_start + MIN_AG_BLOCKS as u64 * min_ags) * BLOCK_SIZE as u64;
            return Err(format!(
                "volume too small for {slots} slots with {} MiB journals: give it at least {} MiB",
                (journal_blocks as u64 * BLOCK_SIZE as u64) >> 20,
                need >> 20
            ));
        }
        let data = total_blocks - ag_start;
        let ag_blocks =
            if data >= DEFAULT_AG_BLOCKS as u64 * min_ags { DEFAULT_AG_BLOCKS } else { (data / min_ags).max(MIN_AG_BLOCKS as u64) as u32 };
        let mut ag_count = data.div_ceil(ag_blocks as u64) as u32;
        let bitmap_blocks_per_ag = (ag_blocks as u64).div_ceil(STATES_PER_BITMAP_BLOCK) as u32;
        // A last AG too short to hold its own header and bitmap plus some data is left unused.
        let last = data - (ag_count as u64 - 1) * ag_blocks as u64;
        if last < (1 + bitmap_blocks_per_ag as u64) + 64 && ag_count > 1 {
            ag_count -= 1;
        }
        let l = Layout {
            total_blocks,
            slot_count: slots,
            max_slots: DEFAULT_MAX_SLOTS,
            journal_blocks,
            slot_table_start,
            journal_start,
            ag_start,
            ag_count,
            ag_blocks,
            bitmap_blocks_per_ag,
            cbt_blocks_per_slot,
        };
        l.validate()?;
        Ok(l)
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.slot_count == 0 || self.slot_count > self.max_slots {
            return Err(format!("slot count {} outside 1..={}", self.slot_count, self.max_slots));
        }
        if self.journal_start != self.slot_table_start + self.max_slots as u64 {
            return Err("journals do not follow the slot table".into());
        }
        if self.ag_start != self.journal_start + self.slot_count as u64 * self.journal_blocks as u64 + self.cbt_region_blocks() {
            return Err("allocation groups do not follow the journals and the change tracking region".into());
        }
        if self.cbt_blocks_per_slot != 0 && self.cbt_blocks_per_slot != Self::change_map_blocks(self.total_blocks) {
            return Err("change map size does not match the volume size".into());
        }
        if self.ag_count == 0 || self.ag_blocks < MIN_AG_BLOCKS {
            return Err("no usable allocation group".into());
        }
        if self.bitmap_blocks_per_ag as u64 != (self.ag_blocks as u64).div_ceil(STATES_PER_BITMAP_BLOCK) {
            return Err("bitmap size does not match AG size".into());
        }
        if self.ag_start + (self.ag_count as u64 - 1) * self.ag_blocks as u64 >= self.total_blocks {
            return Err("allocation groups extend past the end of the volume".into());
        }
        Ok(())
    }

    /// Blocks of a change map covering a volume of `total_blocks`: one mark per chunk.
    pub fn change_map_blocks(total_blocks: u64) -> u32 {
        total_blocks.div_ceil(CHUNK_BLOCKS).div_ceil(MARKS_PER_BLOCK) as u32
    }

    /// Whether this volume records which chunks change (volumes made before it do not).
    pub fn tracks_changes(&self) -> bool {
        self.cbt_blocks_per_slot > 0
    }

    /// Chunks of [`CHUNK_BLOCKS`] covering the volume (the last may be short).
    pub fn chunk_count(&self) -> u64 {
        self.total_blocks.div_ceil(CHUNK_BLOCKS)
    }

    /// The change tracking region: the state block, then one change map per slot.
    pub fn cbt_start(&self) -> u64 {
        self.journal_start + self.slot_count as u64 * self.journal_blocks as u64
    }

    pub fn cbt_region_blocks(&self) -> u64 {
        if self.tracks_changes() {
            1 + self.slot_count as u64 * self.cbt_blocks_per_slot as u64
        } else {
            0
        }
    }

    /// The block holding the volume's change generation (`format/change_map.rs`).
    pub fn cbt_state_blkno(&self) -> u64 {
        self.cbt_start()
    }

    /// Block `i` of `slot`'s change map.
    pub fn change_map_blkno(&self, slot: u32, i: u64) -> u64 {
        self.cbt_start() + 1 + slot as u64 * self.cbt_blocks_per_slot as u64 + i
    }

    pub fn slot_header_blkno(&self, slot: u32) -> u64 {
        self.slot_table_start + slot as u64
    }

    /// Where the second copy of `slot`'s header lives: the last block of its journal area,
    /// which the journal ring leaves alone (see [`journal_ring`](Self::journal_ring)).
    pub fn slot_header_copy_blkno(&self, slot: u32) -> u64 {
        self.journal_start + (slot as u64 + 1) * self.journal_blocks as u64 - 1
    }

    /// The whole journal area of `slot`: replay reads all of it, so transactions written before
    /// the header's second copy took the last block still replay.
    pub fn journal_range(&self, slot: u32) -> (u64, u32) {
        (self.journal_start + slot as u64 * self.journal_blocks as u64, self.journal_blocks)
    }

    /// The part of `slot`'s journal area that new transactions use: all but the last block,
    /// which holds the second copy of the slot header.
    pub fn journal_ring(&self, slot: u32) -> (u64, u32) {
        let (start, len) = self.journal_range(slot);
        (start, len - 1)
    }

    pub fn ag_first_block(&self, ag: u32) -> u64 {
        self.ag_start + ag as u64 * self.ag_blocks as u64
    }

    /// Bitmap block `bi` of AG `ag` (the bitmap follows the AG's header block).
    pub fn bitmap_blkno(&self, ag: u32, bi: u64) -> u64 {
        self.ag_first_block(ag) + 1 + bi
    }

    /// Number of blocks in AG `ag` (the last one may be short).
    pub fn ag_len(&self, ag: u32) -> u32 {
        let start = self.ag_first_block(ag);
        (self.total_blocks - start).min(self.ag_blocks as u64) as u32
    }

    /// Blocks at the start of each AG that hold its header and bitmap.
    pub fn ag_overhead(&self) -> u32 {
        1 + self.bitmap_blocks_per_ag
    }

    pub fn ag_of(&self, blkno: u64) -> Option<u32> {
        if blkno < self.ag_start {
            return None;
        }
        let ag = ((blkno - self.ag_start) / self.ag_blocks as u64) as u32;
        (ag < self.ag_count && blkno < self.ag_first_block(ag) + self.ag_len(ag) as u64).then_some(ag)
    }

    /// Total blocks the AGs can hand out (after their headers and bitmaps).
    pub fn data_blocks(&self) -> u64 {
        (0..self.ag_count).map(|a| (self.ag_len(a) - self.ag_overhead()) as u64).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn geometry_of_common_sizes_is_valid_and_covers_the_volume() {
        for (gib, slots) in [(1u64, 8u32), (2, 8), (100, 32), (1024, 8), (16 * 1024, 256)] {
            let blocks = gib << 18;
            let l = Layout::compute(blocks, slots, None).expect("layout");
            l.validate().expect("valid");
            let end = l.ag_first_block(l.ag_count - 1) + l.ag_len(l.ag_count - 1) as u64;
            assert!(end <= blocks);
            assert!(blocks - end < l.ag_blocks as u64, "at most part of one AG unused");
            assert_eq!(l.ag_of(l.ag_start), Some(0));
            assert_eq!(l.ag_of(end - 1), Some(l.ag_count - 1));
            assert_eq!(l.ag_of(end), None);
        }
    }

    #[test]
    fn every_slot_gets_an_allocation_group_of_its_own() {
        // (MiB, slots): small test volumes, the 8 GiB cluster default, many slots.
        for (mib, slots) in [(128u64, 4u32), (128, 8), (256, 16), (1024, 8), (8192, 8), (8192, 64), (64, 2)] {
            let l = Layout::compute(mib << 8, slots, None).expect("layout");
            assert!(l.ag_count >= slots, "{mib} MiB with {slots} slots: only {} allocation groups", l.ag_count);
        }
        // Too small for one group of the minimum size per slot: refused, with the size to give.
        let e = Layout::compute(75 << 8, 16, None).unwrap_err();
        assert!(e.contains("at least"), "{e}");
    }

    #[test]
    fn too_small_volume_is_refused_with_a_size_hint() {
        let e = Layout::compute(2048, 8, None).unwrap_err();
        assert!(e.contains("at least"), "{e}");
    }
}
