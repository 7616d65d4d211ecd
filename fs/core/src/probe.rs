//! What a device already holds, probed the way blkid does: the signatures of the filesystems,
//! containers and partition tables a volume is most likely to be mistaken for, at their
//! documented offsets. mkfs refuses to overwrite any of them, or any data at all, without
//! `--force`.
use crate::device::BlockDevice;
use crate::format::header::BlockType;
use crate::format::superblock::{BACKUP_SUPERBLOCK_BLKNO, SUPERBLOCK_BLKNO};
use crate::format::BlockNo;

/// How much of the start of a device is looked at for "holds data".
const PROBE_LEN: usize = 1 << 20;

/// (what, byte offset, magic bytes).
const SIGNATURES: &[(&str, u64, &[u8])] = &[
    ("an ext2/ext3/ext4 filesystem", 1024 + 56, &[0x53, 0xef]),
    ("an XFS filesystem", 0, b"XFSB"),
    ("a btrfs filesystem", 65536 + 64, b"_BHRfS_M"),
    ("a LUKS encrypted volume", 0, b"LUKS\xba\xbe"),
    ("Linux swap space", 4096 - 10, b"SWAPSPACE2"),
    ("Linux swap space", 4096 - 10, b"SWAP-SPACE"),
    ("a GPT partition table", 512, b"EFI PART"),
    ("an LVM physical volume", 512 + 24, b"LVM2 001"),
    ("an ISO 9660 image", 32769, b"CD001"),
    ("a squashfs image", 0, b"hsqs"),
    ("a ZFS member", 135168 + 8, &[0x0c, 0xb1, 0xba, 0x00]),
];

/// What the device holds, in words ("a mafs volume", "an XFS filesystem", "data"), or `None`
/// for a device whose first MiB is all zeros and that carries no signature.
pub fn existing_contents(dev: &dyn BlockDevice) -> Option<String> {
    let read = |off: u64, len: usize| -> Option<Vec<u8>> {
        if off + len as u64 > dev.size() {
            return None;
        }
        let mut b = vec![0u8; len];
        dev.read_at(&mut b, off).ok().map(|()| b)
    };
    let mafs = [SUPERBLOCK_BLKNO, BACKUP_SUPERBLOCK_BLKNO].iter().any(|&blk| {
        read(BlockNo(blk).byte_offset(), 4).is_some_and(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) == BlockType::Superblock as u32)
    });
    if mafs {
        return Some("a mafs volume".into());
    }
    for (what, off, magic) in SIGNATURES {
        if read(*off, magic.len()).is_some_and(|b| b == *magic) {
            return Some(what.to_string());
        }
    }
    // A DOS partition table: the boot signature and at least one partition entry in use.
    if let Some(mbr) = read(0, 512) {
        if mbr[510..512] == [0x55, 0xaa] && (0..4).any(|i| mbr[446 + 16 * i + 4] != 0) {
            return Some("a DOS (MBR) partition table".into());
        }
    }
    let head = read(0, PROBE_LEN.min(dev.size() as usize))?;
    head.iter().any(|b| *b != 0).then(|| "data (no filesystem recognised, but its first MiB is not empty)".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::CrashDevice;

    fn with(off: u64, bytes: &[u8]) -> CrashDevice {
        let d = CrashDevice::new(4 << 20);
        d.write_at(bytes, off).unwrap();
        d
    }

    #[test]
    fn signatures_and_plain_data_are_recognised_and_zeros_are_not() {
        assert_eq!(existing_contents(&CrashDevice::new(4 << 20)), None);
        assert!(existing_contents(&with(1080, &[0x53, 0xef])).unwrap().contains("ext2/ext3/ext4"));
        assert!(existing_contents(&with(0, b"XFSB")).unwrap().contains("XFS"));
        assert!(existing_contents(&with(65600, b"_BHRfS_M")).unwrap().contains("btrfs"));
        assert!(existing_contents(&with(0, b"LUKS\xba\xbe")).unwrap().contains("LUKS"));
        assert!(existing_contents(&with(4086, b"SWAPSPACE2")).unwrap().contains("swap"));
        assert!(existing_contents(&with(512, b"EFI PART")).unwrap().contains("GPT"));
        let mut mbr = vec![0u8; 512];
        mbr[510] = 0x55;
        mbr[511] = 0xaa;
        mbr[446 + 4] = 0x83;
        assert!(existing_contents(&with(0, &mbr)).unwrap().contains("MBR"));
        assert!(existing_contents(&with(300_000, b"random")).unwrap().starts_with("data"));
    }
}
