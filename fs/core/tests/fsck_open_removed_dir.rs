//! A directory removed while open, with the volume closed before its last close (an unmount that
//! overtakes the kernel's asynchronous RELEASEDIR, or a crash), stays listed in the slot's orphan
//! directory with its old parent in its parent field. That is a legal state the next mount
//! finishes (it frees the directory), not damage: fsck must call it clean. (The end-to-end test
//! `fs_namespace::names_replaced_by_rename_stay_valid_through_open_handles` hit it now and then.)
use mafs_core::device::{BlockDevice, CrashDevice};
use mafs_core::filesystem::namespace::NewNode;
use mafs_core::filesystem::{Caller, Fs};
use mafs_core::fsck;
use mafs_core::mkfs::{mkfs, MkfsOptions};
use mafs_core::volume::Volume;
use std::sync::Arc;

#[test]
fn a_removed_directory_still_open_at_unmount_is_not_reported_by_fsck_and_is_freed_at_mount() {
    let dev = Arc::new(CrashDevice::new(64 << 20));
    mkfs(&*dev, &MkfsOptions { slots: 1, ..Default::default() }).expect("mkfs");
    let shared: Arc<dyn BlockDevice> = dev.clone();
    let fs = Fs::new(Volume::open(shared.clone(), 0, "node", 1024).expect("open")).expect("fs");
    let root = fs.root();
    let d = fs.create(root, b"d", NewNode { mode: libc::S_IFDIR | 0o755, rdev: 0, symlink_target: None }, Caller::ROOT).expect("mkdir");
    fs.open(d.ino).expect("opendir");
    fs.unlink(root, b"d", true).expect("rmdir");
    // Closed before the directory's last close.
    fs.close().expect("close");
    drop(fs);
    let rep = fsck::check(Arc::new(CrashDevice::from_image(dev.crash_image(|_| true))), false).expect("fsck");
    assert_eq!(rep.exit_code(), 0, "{:?}", rep.problems);
    // The next mount frees it.
    let fs = Fs::new(Volume::open(shared, 0, "node", 1024).expect("reopen")).expect("fs");
    assert!(fs.getattr(d.ino).is_err(), "the removed directory outlived the next mount");
    fs.close().expect("close");
}
