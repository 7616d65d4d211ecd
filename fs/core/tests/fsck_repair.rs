//! fsck finds damage of each kind it knows, says what it is, repairs it with --repair, and the
//! volume is clean afterwards.
use mafs_core::btree::TreeWrite;
use mafs_core::device::{BlockDevice, CrashDevice};
use mafs_core::dir;
use mafs_core::filesystem::namespace::NewNode;
use mafs_core::filesystem::{Caller, Fs};
use mafs_core::format::ag::{bitmap_set, BlockState};
use mafs_core::format::header::{self, BlockType};
use mafs_core::format::le::*;
use mafs_core::format::{BlockNo, InodeNo, BLOCK_SIZE};
use mafs_core::fsck::{self, Problem};
use mafs_core::mkfs::{mkfs, MkfsOptions};
use mafs_core::volume::Volume;
use std::sync::Arc;

const ROOT_USER: Caller = Caller::ROOT;

fn new_volume() -> Arc<CrashDevice> {
    let dev = Arc::new(CrashDevice::new(64 << 20));
    mkfs(&*dev, &MkfsOptions::default()).expect("mkfs");
    dev
}

fn with_fs<T>(dev: &Arc<CrashDevice>, f: impl FnOnce(&Fs) -> T) -> T {
    let vol = Volume::open(dev.clone(), 0, "test", 4096).expect("open");
    let fs = Fs::new(vol).expect("fs");
    let r = f(&fs);
    fs.close().expect("close");
    r
}

fn file(fs: &Fs, parent: InodeNo, name: &str, data: &[u8]) -> InodeNo {
    let i = fs
        .create(parent, name.as_bytes(), NewNode { mode: libc::S_IFREG | 0o644, rdev: 0, symlink_target: None }, ROOT_USER)
        .expect("create");
    fs.write(i.ino, 0, data).expect("write");
    i.ino
}

/// Rewrites one metadata block in place with `edit`, resealing its checksum.
fn patch_block(dev: &CrashDevice, blk: BlockNo, ty: BlockType, edit: impl FnOnce(&mut [u8])) {
    let sb = mafs_core::volume::read_superblock(dev).expect("sb").0;
    let mut b = vec![0u8; BLOCK_SIZE];
    dev.read_at(&mut b, blk.byte_offset()).expect("read");
    edit(&mut b);
    let seq = header::seq_of(&b);
    header::seal(&mut b, ty, blk.get(), seq, sb.crc_seed());
    dev.write_at(&b, blk.byte_offset()).expect("write");
    dev.flush().expect("flush");
}

fn assert_clean(dev: &Arc<CrashDevice>) {
    let r = fsck::check(dev.clone(), false).expect("fsck");
    assert_eq!(r.exit_code(), 0, "expected clean, got {:?}", r.problems);
}

/// Checks that fsck finds the damage as `kind` and that a repair fixes it.
fn repair_fixes(dev: &Arc<CrashDevice>, kind: &str, is_kind: fn(&Problem) -> bool) {
    let r = fsck::check(dev.clone(), false).expect("fsck");
    assert_eq!(r.exit_code(), 4, "damage not found: {:?}", r.problems);
    assert!(r.problems.iter().any(is_kind), "no problem of the kind {kind}: {:?}", r.problems);
    let r = fsck::check(dev.clone(), true).expect("fsck --repair");
    assert_eq!(r.exit_code(), 1, "repair incomplete: problems {:?} fixed {:?}", r.problems, r.fixed);
    assert_clean(dev);
}

#[test]
fn fresh_and_used_volumes_are_clean() {
    let dev = new_volume();
    assert_clean(&dev);
    with_fs(&dev, |fs| {
        let root = fs.root();
        file(fs, root, "small", b"hello");
        file(fs, root, "big", &vec![7u8; 300_000]);
        let d = fs.create(root, b"d", NewNode { mode: libc::S_IFDIR | 0o755, rdev: 0, symlink_target: None }, ROOT_USER).expect("mkdir");
        for i in 0..300 {
            file(fs, d.ino, &format!("f{i}"), b"x");
        }
    });
    assert_clean(&dev);
}

#[test]
fn wrong_link_count_is_found_and_fixed() {
    let dev = new_volume();
    let ino = with_fs(&dev, |fs| file(fs, fs.root(), "f", b"data"));
    patch_block(&dev, ino.block(), BlockType::Inode, |b| put_u32(b, 48, 5));
    repair_fixes(&dev, "LinkCount", |p| matches!(p, Problem::LinkCount { .. }));
    with_fs(&dev, |fs| assert_eq!(fs.getattr(ino).expect("getattr").nlink, 1));
}

#[test]
fn leaked_blocks_are_found_and_freed() {
    let dev = new_volume();
    with_fs(&dev, |fs| {
        file(fs, fs.root(), "f", &vec![1u8; 100_000]);
    });
    let sb = mafs_core::volume::read_superblock(&*dev).expect("sb").0;
    // Mark the last 10 blocks of AG 0 as data although nothing owns them.
    let l = sb.layout;
    let first_bitmap = l.bitmap_blkno(0, 0);
    let len = l.ag_len(0) as u64;
    patch_block(&dev, BlockNo(first_bitmap), BlockType::Bitmap, |b| {
        for r in len - 10..len {
            bitmap_set(b, r, BlockState::Data);
        }
    });
    repair_fixes(&dev, "LeakedBlocks", |p| matches!(p, Problem::LeakedBlocks { .. }));
}

#[test]
fn disconnected_inode_goes_to_lost_and_found() {
    let dev = new_volume();
    let ino = with_fs(&dev, |fs| file(fs, fs.root(), "victim", b"keep me"));
    // Remove the directory entry behind the filesystem's back.
    {
        let vol = Volume::open(dev.clone(), 0, "test", 4096).expect("open");
        let root = vol.cache.get(BlockNo(vol.sb.root_ino), BlockType::Inode, mafs_core::cache::Cover::Volume).expect("root");
        let h = vol.journal.begin().expect("begin");
        let mut t = TreeWrite::new(&vol.cache, &vol.alloc, &h, &root);
        let e = dir::lookup(&t.read, b"victim").expect("lookup").expect("entry");
        dir::remove(&mut t, e.key).expect("remove");
        drop(h);
        vol.close().expect("close");
    }
    repair_fixes(&dev, "Disconnected", |p| matches!(p, Problem::Disconnected { .. }));
    with_fs(&dev, |fs| {
        let lf = fs.lookup(fs.root(), b"lost+found").expect("lost+found");
        let found = fs.lookup(lf.ino, format!("#{ino}").as_bytes()).expect("in lost+found");
        assert_eq!(fs.read(found.ino, 0, 100).expect("read"), b"keep me");
    });
}

#[test]
fn damaged_primary_superblock_is_rewritten_from_the_backup() {
    let dev = new_volume();
    dev.write_at(&[0xAB; 4096], 0).expect("smash");
    repair_fixes(&dev, "PrimarySuperblockDamaged", |p| matches!(p, Problem::PrimarySuperblockDamaged));
}

#[test]
fn volume_without_any_superblock_cannot_be_checked() {
    let dev = new_volume();
    dev.write_at(&[0u8; 8192], 0).expect("smash both");
    let e = fsck::check(dev.clone(), false).expect_err("must refuse");
    assert!(e.to_string().contains("superblock"), "{e}");
    assert!(Volume::open(dev.clone(), 0, "t", 64).is_err());
}

#[test]
fn a_symlink_whose_size_does_not_match_its_target_is_found_and_removed() {
    let dev = new_volume();
    let target = "/a/long/target/".repeat(40);
    let ino = with_fs(&dev, |fs| {
        let n = NewNode { mode: libc::S_IFLNK | 0o777, rdev: 0, symlink_target: Some(target.as_bytes()) };
        fs.create(fs.root(), b"link", n, ROOT_USER).expect("symlink").ino
    });
    // An empty symlink, as an ENOSPC used to leave behind.
    patch_block(&dev, ino.block(), BlockType::Inode, |b| put_u64(b, 56, 0));
    repair_fixes(&dev, "BrokenSymlink", |p| matches!(p, Problem::BrokenSymlink { .. }));
    with_fs(&dev, |fs| assert!(fs.lookup(fs.root(), b"link").is_err(), "the broken link is still listed"));
}
