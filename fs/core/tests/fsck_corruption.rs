//! fsck --repair against damage to every kind of metadata block: on copies of one populated
//! volume, one byte is flipped in an allocation group header, a bitmap block, a file's inode, a
//! directory's or a file's index tree node, or an extended attribute block. The check must find
//! it, the repair must leave a volume a second check calls clean, and the proof that no block
//! a file still points at was freed: many new files (with data and extended attributes, which
//! take blocks from the allocator) are written afterwards and the volume is still clean, and
//! the files that survived still read back what was written.
use mafs_core::device::CrashDevice;
use mafs_core::filesystem::attr::XattrSet;
use mafs_core::filesystem::namespace::NewNode;
use mafs_core::filesystem::{Caller, Fs};
use mafs_core::format::header::BlockType;
use mafs_core::format::BlockNo;
use mafs_core::fsck;
use mafs_core::mkfs::{mkfs, MkfsOptions};
use mafs_core::volume::Volume;
use std::collections::BTreeMap;
use std::sync::Arc;

const ROOT_USER: Caller = Caller::ROOT;

fn with_fs<T>(dev: &Arc<CrashDevice>, f: impl FnOnce(&Fs) -> T) -> T {
    let vol = Volume::open(dev.clone(), 0, "test", 4096).expect("open");
    let fs = Fs::new(vol).expect("fs");
    let r = f(&fs);
    fs.close().expect("close");
    r
}

fn node(mode: u32) -> NewNode<'static> {
    NewNode { mode, rdev: 0, symlink_target: None }
}

fn content(i: usize, len: usize) -> Vec<u8> {
    (0..len).map(|j| (i * 7 + j) as u8).collect()
}

/// A volume with a 700-entry directory (a tree of many nodes), a file of many extents (every
/// other block written), files with extended attributes in blocks of their own, symlinks.
fn populated() -> (Vec<u8>, BTreeMap<String, Vec<u8>>) {
    let dev = Arc::new(CrashDevice::new(64 << 20));
    mkfs(&*dev, &MkfsOptions::default()).expect("mkfs");
    let mut files = BTreeMap::new();
    with_fs(&dev, |fs| {
        let root = fs.root();
        let big = fs.create(root, b"big", node(libc::S_IFDIR | 0o755), ROOT_USER).expect("mkdir");
        for i in 0..700 {
            let name = format!("entry-with-a-longish-name-{i:04}");
            let f = fs.create(big.ino, name.as_bytes(), node(libc::S_IFREG | 0o644), ROOT_USER).expect("create");
            let data = content(i, 100);
            fs.write(f.ino, 0, &data).expect("write");
            files.insert(format!("big/{name}"), data);
        }
        let sparse = fs.create(root, b"sparse", node(libc::S_IFREG | 0o644), ROOT_USER).expect("create");
        for b in 0..400u64 {
            fs.write(sparse.ino, b * 8192, &content(b as usize, 4096)).expect("write");
        }
        for i in 0..20 {
            let name = format!("x{i}");
            let f = fs.create(root, name.as_bytes(), node(libc::S_IFREG | 0o644), ROOT_USER).expect("create");
            fs.write(f.ino, 0, &content(i, 5000)).expect("write");
            fs.setxattr(f.ino, b"user.big", Some(&vec![b'v'; 2000]), XattrSet::Any).expect("setxattr");
            files.insert(name, content(i, 5000));
        }
        for i in 0..10 {
            let target = format!("/some/target/{}", "t".repeat(300 + i));
            let n = NewNode { mode: libc::S_IFLNK | 0o777, rdev: 0, symlink_target: Some(target.as_bytes()) };
            fs.create(root, format!("l{i}").as_bytes(), n, ROOT_USER).expect("symlink");
        }
    });
    (dev.crash_image(|_| true), files)
}

/// Every metadata block of the image at its home, by kind (from its header's magic; a copy in
/// a journal names another block as its home and is left out).
fn blocks_by_kind(img: &[u8]) -> BTreeMap<u32, Vec<u64>> {
    let mut out: BTreeMap<u32, Vec<u64>> = BTreeMap::new();
    for (blk, b) in img.chunks(4096).enumerate() {
        let magic = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        let mut home = [0u8; 8];
        home.copy_from_slice(&b[8..16]);
        if BlockType::from_magic(magic).is_some() && u64::from_le_bytes(home) == blk as u64 {
            out.entry(magic).or_default().push(blk as u64);
        }
    }
    out
}

/// After a repair: still clean after allocating a lot (new blocks would land on anything
/// wrongly freed, which the next check reports as used twice), and every surviving file holds
/// exactly what was written.
fn survives_new_allocations(dev: &Arc<CrashDevice>, files: &BTreeMap<String, Vec<u8>>, what: &str) {
    with_fs(dev, |fs| {
        let root = fs.root();
        let d = fs.create(root, b"after-repair", node(libc::S_IFDIR | 0o755), ROOT_USER).expect("mkdir after repair");
        for i in 0..300 {
            let f = fs.create(d.ino, format!("n{i}").as_bytes(), node(libc::S_IFREG | 0o644), ROOT_USER).expect("create after repair");
            fs.write(f.ino, 0, &content(i, 9000)).expect("write after repair");
            fs.setxattr(f.ino, b"user.a", Some(&vec![b'a'; 1500]), XattrSet::Any).expect("setxattr after repair");
        }
        for (path, want) in files {
            let mut ino = root;
            let mut found = true;
            for part in path.split('/') {
                match fs.lookup(ino, part.as_bytes()) {
                    Ok(i) => ino = i.ino,
                    Err(_) => {
                        found = false;
                        break;
                    }
                }
            }
            if found {
                let got = fs.read(ino, 0, want.len() as u32 + 10).expect("read a surviving file");
                assert_eq!(&got, want, "{what}: {path} changed");
            }
        }
    });
    let r = fsck::check(dev.clone(), false).expect("fsck after new allocations");
    assert_eq!(r.exit_code(), 0, "{what}: after the repair and new files: {:?}", r.problems);
}

#[test]
fn a_flipped_byte_in_any_kind_of_metadata_block_is_repaired_without_cross_linking() {
    let (img, files) = populated();
    let kinds = blocks_by_kind(&img);
    let sb_dev = CrashDevice::from_image(img.clone());
    let sb = mafs_core::volume::read_superblock(&sb_dev).expect("sb").0;
    let system: Vec<u64> = std::iter::once(sb.root_ino).chain((0..=sb.layout.slot_count as u64).map(|s| sb.lost_found_ino + s)).collect();
    let mut tried = 0;
    for ty in [BlockType::AgHeader, BlockType::Bitmap, BlockType::Inode, BlockType::TreeNode, BlockType::Xattr] {
        let all = kinds.get(&(ty as u32)).cloned().unwrap_or_default();
        let candidates: Vec<u64> = all.into_iter().filter(|b| !system.contains(b)).collect();
        assert!(!candidates.is_empty(), "the volume has no {} block", ty.name());
        // First, middle and last of the kind: a spread, the same on every run.
        let mut picks = vec![candidates[0], candidates[candidates.len() / 2], candidates[candidates.len() - 1]];
        picks.dedup();
        for blk in picks {
            for at in [40usize, 2100] {
                let what = format!("{} block {blk}, byte {at}", ty.name());
                let mut damaged = img.clone();
                damaged[BlockNo(blk).byte_offset() as usize + at] ^= 0x5a;
                let dev = Arc::new(CrashDevice::from_image(damaged));
                let r = fsck::check(dev.clone(), false).expect("fsck");
                assert_eq!(r.exit_code(), 4, "{what}: not found ({:?})", r.problems);
                let r = fsck::check(dev.clone(), true).unwrap_or_else(|e| panic!("{what}: fsck --repair failed: {e}"));
                assert_eq!(
                    r.exit_code(),
                    1,
                    "{what}: repair left {:?} (found {:?}, fixed {:?}, notes {:?})",
                    r.remaining,
                    r.problems,
                    r.fixed,
                    r.notes
                );
                let again = fsck::check(dev.clone(), false).expect("second fsck");
                assert_eq!(again.exit_code(), 0, "{what}: second check: {:?}", again.problems);
                survives_new_allocations(&dev, &files, &what);
                tried += 1;
            }
        }
    }
    assert!(tried >= 20, "{tried} damaged copies");
}

#[test]
fn the_check_without_repair_writes_nothing_even_with_a_journal_to_replay() {
    let dev = Arc::new(CrashDevice::new(64 << 20));
    mkfs(&*dev, &MkfsOptions::default()).expect("mkfs");
    // A mount that dies: its journal holds committed transactions not yet written home.
    let vol = Volume::open(dev.clone(), 0, "crashed", 4096).expect("open");
    let fs = Fs::new(vol).expect("fs");
    let root = fs.root();
    let f = fs.create(root, b"f", node(libc::S_IFREG | 0o644), ROOT_USER).expect("create");
    fs.write(f.ino, 0, b"data").expect("write");
    fs.commit().expect("commit");
    let before = dev.crash_image(|_| true);
    std::mem::forget(fs);
    let crashed = Arc::new(CrashDevice::from_image(before.clone()));
    let r = fsck::check(crashed.clone(), false).expect("fsck");
    assert_eq!(r.exit_code(), 0, "{:?}", r.problems);
    assert!(r.notes.iter().any(|n| n.contains("nothing was written")), "{:?}", r.notes);
    assert_eq!(crashed.crash_image(|_| true), before, "fsck without --repair wrote to the volume");
    assert_eq!(crashed.counters().0, 0, "writes issued");
}
