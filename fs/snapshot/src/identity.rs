//! Making a copy of a volume a volume of its own (`tunefs.ocfs2 --cloned-volume`): a new
//! UUID (so the copy and the original can be mounted side by side, their locks apart in
//! lockd), every slot's journal replayed and the slot left clean (nobody has the copy
//! mounted), and change tracking started afresh (no snapshot of the copy exists yet).
use std::sync::Arc;

use mafs_core::device::BlockDevice;
use mafs_core::format::change_map::{self, ChangeState};
use mafs_core::format::slot::SlotState;
use mafs_core::format::superblock::{Superblock, BACKUP_SUPERBLOCK_BLKNO, SUPERBLOCK_BLKNO};
use mafs_core::format::BlockNo;

use crate::error::Result;

/// Gives the volume on `dev` the UUID `uuid` and leaves it clean; its superblock after.
pub fn make_own(dev: &Arc<dyn BlockDevice>, uuid: [u8; 16]) -> Result<Superblock> {
    let (mut sb, _) = mafs_core::volume::read_superblock(&**dev)?;
    sb.uuid = uuid;
    // The checksum seed stays: every other block was sealed with it.
    for blk in [BACKUP_SUPERBLOCK_BLKNO, SUPERBLOCK_BLKNO] {
        dev.write_at(&sb.encode(blk), BlockNo(blk).byte_offset())?;
    }
    dev.flush()?;
    for slot in 0..sb.layout.slot_count {
        let hdr = mafs_core::journal::read_slot(&**dev, &sb, slot)?;
        if hdr.state != SlotState::Clean || hdr.mmp_seq != 0 {
            // Replays whatever the journal holds past its tail and marks the slot clean.
            let vol = mafs_core::volume::Volume::open(dev.clone(), slot, "restore", 1024)?;
            vol.close()?;
        }
    }
    if sb.layout.tracks_changes() {
        let region = change_map::blank_region(&sb.layout, ChangeState::NEW, sb.crc_seed());
        dev.write_at(&region, BlockNo(sb.layout.cbt_start()).byte_offset())?;
    }
    dev.flush()?;
    Ok(sb)
}
