//! The slot header is rewritten at every mount, journal wrap and unmount, and every second by
//! multi-mount protection. A crash that tears one of those writes must never cost the journal:
//! the header has two copies written in turn, and a reader takes the newer valid one. Here
//! the write of the header at unmount (and an MMP update) is cut at every 8 bytes of the part
//! that changes (all of it lies in the first sector), keeping either the new bytes before the
//! cut or those after it, and each torn volume must check without an unreadable header and
//! mount with every fsynced file intact. With one copy, such a tear made fsck discard the
//! slot's journal.
use mafs_core::device::CrashDevice;
use mafs_core::filesystem::namespace::NewNode;
use mafs_core::filesystem::{Caller, Fs};
use mafs_core::fsck;
use mafs_core::mkfs::{mkfs, MkfsOptions};
use mafs_core::volume::Volume;
use std::sync::Arc;

const ROOT_USER: Caller = Caller::ROOT;
/// Every header field lies in the first 512 bytes of the block.
const FIELDS: usize = 512;

/// A volume whose journal holds fsynced transactions not yet durable at home, and a function
/// making one more slot header write; returns what is durable before that write and the image
/// after it.
fn around_a_header_write(write: impl FnOnce(&Fs)) -> (Vec<u8>, Vec<u8>) {
    around_a_header_write_after(false, write)
}

/// `flushed_first`: the write is preceded by a flush (unmount commits and flushes, then writes
/// the header), so nothing else is in flight when it tears.
fn around_a_header_write_after(flushed_first: bool, write: impl FnOnce(&Fs)) -> (Vec<u8>, Vec<u8>) {
    let dev = Arc::new(CrashDevice::new(64 << 20));
    mkfs(&*dev, &MkfsOptions { slots: 1, ..Default::default() }).expect("mkfs");
    // A first mount moves the journal's sequence on, so no header version from before this
    // mount describes the journal that the fsyncs below fill.
    {
        let vol = Volume::open(dev.clone(), 0, "node", 4096).expect("open");
        let fs = Fs::new(vol).expect("fs");
        for i in 0..30 {
            fs.create(
                fs.root(),
                format!("old{i}").as_bytes(),
                NewNode { mode: libc::S_IFREG | 0o644, rdev: 0, symlink_target: None },
                ROOT_USER,
            )
            .expect("create");
            fs.sync().expect("sync");
        }
        fs.close().expect("close");
    }
    let vol = Volume::open(dev.clone(), 0, "node", 4096).expect("open");
    let fs = Fs::new(vol).expect("fs");
    for i in 0..20 {
        let f = fs
            .create(
                fs.root(),
                format!("f{i}").as_bytes(),
                NewNode { mode: libc::S_IFREG | 0o644, rdev: 0, symlink_target: None },
                ROOT_USER,
            )
            .expect("create");
        fs.write(f.ino, 0, &vec![i as u8; 10_000]).expect("write");
        fs.sync().expect("fsync");
    }
    // The fsyncs made the journal durable; their home writes are still in flight.
    if flushed_first {
        fs.commit().expect("commit");
        mafs_core::device::BlockDevice::flush(&*dev).expect("flush");
    }
    let before = dev.crash_image(|_| false);
    write(&fs);
    let after = dev.crash_image(|_| true);
    std::mem::forget(fs);
    (before, after)
}

fn check_torn(before: &[u8], after: &[u8], what: &str) {
    // The slot header copy the write changed (the other changed blocks are home writes, which
    // the crash loses: only the journal can bring them back).
    let is_slot_header = |img: &[u8], b: usize| {
        let blk = &img[b * 4096..(b + 1) * 4096];
        u32::from_le_bytes([blk[0], blk[1], blk[2], blk[3]]) == mafs_core::format::header::BlockType::Slot as u32
            && u64::from_le_bytes(blk[8..16].try_into().expect("8 bytes")) == b as u64
    };
    let changed: Vec<usize> = (0..before.len() / 4096)
        .filter(|b| before[b * 4096..(b + 1) * 4096] != after[b * 4096..(b + 1) * 4096] && is_slot_header(after, *b))
        .collect();
    assert_eq!(changed.len(), 1, "{what}: expected one slot header copy to change, got {changed:?}");
    let blk = changed[0];
    for k in (8..FIELDS).step_by(8) {
        for first in [true, false] {
            let mut img = before.to_vec();
            let range = if first { blk * 4096..blk * 4096 + k } else { blk * 4096 + k..(blk + 1) * 4096 };
            img[range.clone()].copy_from_slice(&after[range]);
            let case = format!("{what}: block {blk} torn at byte {k}, the new bytes {} it written", if first { "before" } else { "after" });
            let dev = Arc::new(CrashDevice::from_image(img));
            let r = fsck::check(dev.clone(), false).unwrap_or_else(|e| panic!("{case}: fsck failed: {e}"));
            assert!(!r.problems.iter().any(|p| matches!(p, fsck::Problem::SlotHeaderUnreadable { .. })), "{case}: {:?}", r.problems);
            let vol = Volume::open(dev.clone(), 0, "next", 4096).unwrap_or_else(|e| panic!("{case}: mount failed: {e}"));
            let fs = Fs::new(vol).expect("fs");
            for i in 0..20 {
                let f = fs.lookup(fs.root(), format!("f{i}").as_bytes()).unwrap_or_else(|e| panic!("{case}: f{i} lost: {e}"));
                assert_eq!(fs.read(f.ino, 0, 20_000).expect("read"), vec![i as u8; 10_000], "{case}: f{i}");
            }
            fs.close().expect("close");
        }
    }
}

#[test]
fn a_torn_unmount_header_write_loses_nothing() {
    let (before, after) = around_a_header_write_after(true, |fs| fs.vol.journal.shutdown().expect("shutdown"));
    check_torn(&before, &after, "unmount");
}

#[test]
fn a_torn_multi_mount_protection_update_loses_nothing() {
    let (before, after) = around_a_header_write(|fs| fs.vol.journal.touch_mmp().expect("touch"));
    check_torn(&before, &after, "MMP update");
}
