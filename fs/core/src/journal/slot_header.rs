//! The slot header on disk: two copies, written alternately, read as the newer valid one.
//! The slot header anchors the slot's journal (tail, sequence, state), so it lives with the
//! journal; multi-mount protection and fsck read and write it through here too.
use crate::device::BlockDevice;
use crate::error::{FsError, Result};
use crate::format::layout::Layout;
use crate::format::slot::SlotHeader;
use crate::format::superblock::Superblock;
use crate::format::{BlockNo, BLOCK_SIZE};

/// The newer valid copy of `slot`'s header.
pub fn read_slot(dev: &dyn BlockDevice, sb: &Superblock, slot: u32) -> Result<SlotHeader> {
    if slot >= sb.layout.slot_count {
        return Err(FsError::Invalid("slot number beyond the volume's slot count"));
    }
    let read = |blk: u64| -> Result<SlotHeader> {
        let mut b = vec![0u8; BLOCK_SIZE];
        dev.read_at(&mut b, BlockNo(blk).byte_offset())?;
        SlotHeader::decode(&b, blk, sb.crc_seed()).and_then(|h| {
            if h.index == slot {
                Ok(h)
            } else {
                Err(FsError::corrupt(blk, format!("slot header copy names slot {} instead of {slot}", h.index)))
            }
        })
    };
    // The newer valid copy; one torn by a crash mid-write leaves the other, one version older.
    match (read(sb.layout.slot_header_blkno(slot)), read(sb.layout.slot_header_copy_blkno(slot))) {
        (Ok(a), Ok(b)) => Ok(if b.update_seq > a.update_seq { b } else { a }),
        (Ok(a), Err(_)) => Ok(a),
        (Err(_), Ok(b)) => Ok(b),
        (Err(e), Err(_)) => Err(e),
    }
}

/// Whether each copy of `slot`'s header verifies (fsck reports a damaged one).
pub fn slot_copies_ok(dev: &dyn BlockDevice, sb: &Superblock, slot: u32) -> [bool; 2] {
    [sb.layout.slot_header_blkno(slot), sb.layout.slot_header_copy_blkno(slot)].map(|blk| {
        let mut b = vec![0u8; BLOCK_SIZE];
        dev.read_at(&mut b, BlockNo(blk).byte_offset()).is_ok() && SlotHeader::decode(&b, blk, sb.crc_seed()).is_ok_and(|h| h.index == slot)
    })
}

/// Writes the next version of a slot header. The two copies take turns (by `update_seq`), so
/// a write torn by a crash damages only the copy being written, and the other still holds the
/// previous version whole: the journal tail it names is never lost.
/// `slot.update_seq` is advanced to the version written.
pub fn write_slot(dev: &dyn BlockDevice, layout: &Layout, slot: &mut SlotHeader, seed: u32) -> Result<()> {
    slot.update_seq += 1;
    let blk =
        if slot.update_seq.is_multiple_of(2) { layout.slot_header_blkno(slot.index) } else { layout.slot_header_copy_blkno(slot.index) };
    dev.write_at(&slot.encode(blk, seed), BlockNo(blk).byte_offset())?;
    dev.flush()
}
