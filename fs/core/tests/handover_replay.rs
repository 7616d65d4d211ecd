//! A node that gives its cached state to another node (what a lock revocation does in cluster
//! mode) must leave nothing in its journal that a later replay could write over the other
//! node's newer blocks. Two filesystem instances on one device, through their own slots, take
//! turns on one directory, as two nodes passing its lock would; then the first one "crashes"
//! and its slot is replayed.
use mafs_core::device::{BlockDevice, CrashDevice};
use mafs_core::filesystem::namespace::NewNode;
use mafs_core::filesystem::{Caller, Fs};
use mafs_core::fsck;
use mafs_core::mkfs::{mkfs, MkfsOptions};
use mafs_core::volume::Volume;
use std::sync::Arc;

const WHO: Caller = Caller::ROOT;
const FILES: usize = 300;

fn node(mode: u32) -> NewNode<'static> {
    NewNode { mode, rdev: 0, symlink_target: None }
}

/// A fresh volume with a slot for each of two nodes, and the device as both nodes share it.
fn two_slot_volume() -> (Arc<CrashDevice>, Arc<dyn BlockDevice>) {
    let dev = Arc::new(CrashDevice::new(64 << 20));
    mkfs(&*dev, &MkfsOptions { slots: 2, journal_blocks: Some(1024), ..Default::default() }).expect("mkfs");
    let shared: Arc<dyn BlockDevice> = dev.clone();
    (dev, shared)
}

#[test]
fn replaying_a_node_that_handed_its_blocks_over_never_writes_them_back() {
    let (dev, shared) = two_slot_volume();

    // Node A fills a directory: its inode, tree nodes and the files' inodes are in A's journal.
    let a = Fs::new(Volume::open(shared.clone(), 0, "node-a", 4096).expect("open slot 0")).expect("fs a");
    let root = a.root();
    let d = a.create(root, b"d", node(libc::S_IFDIR | 0o755), WHO).expect("mkdir d");
    for i in 0..FILES {
        a.create(d.ino, format!("file-{i:04}").as_bytes(), node(libc::S_IFREG | 0o644), WHO).expect("create");
    }
    a.write_back_and_forget().expect("node a hands over");

    // Node B empties the directory (its tree nodes and the files' inodes are freed) and writes
    // a file whose data lands on blocks A's journal still holds images of.
    let b = Fs::new(Volume::open(shared.clone(), 1, "node-b", 4096).expect("open slot 1")).expect("fs b");
    for i in 0..FILES {
        b.unlink(d.ino, format!("file-{i:04}").as_bytes(), false).expect("unlink");
    }
    b.sync().expect("sync b");
    let data = vec![0xab; 4 << 20];
    let big = b.create(root, b"big", node(libc::S_IFREG | 0o644), WHO).expect("create big");
    b.open(big.ino).expect("open big");
    b.write(big.ino, 0, &data).expect("write big");
    b.release(big.ino).expect("close big");
    b.write_back_and_forget().expect("node b hands over");

    // A crashes (it never unmounts); its slot is replayed by the next user of the volume.
    let img = dev.crash_image(|_| true);
    let after: Arc<dyn BlockDevice> = Arc::new(CrashDevice::from_image(img.clone()));
    let fs = Fs::new(Volume::open(after, 0, "recovery", 4096).expect("replay slot 0")).expect("fs");
    let d_now = fs.getattr(d.ino).expect("d");
    assert_eq!(d_now.entries, 0, "replay of node A's journal brought back its entries of d over node B's removals");
    let mut names = 0;
    fs.readdir(d.ino, 0, &mut |_, _, _, _| {
        names += 1;
        true
    })
    .expect("readdir d");
    assert_eq!(names, 2, "d lists only . and ..");
    let big_now = fs.lookup(root, b"big").expect("big");
    let read = fs.read(big_now.ino, 0, data.len() as u32).expect("read big");
    assert!(read == data, "replay of node A's journal wrote over node B's file data");
    fs.close().expect("close");
    let rep = fsck::check(Arc::new(CrashDevice::from_image(img)), false).expect("fsck of the crash image");
    assert_eq!(rep.exit_code(), 0, "crash image (node A's slot replayed in memory): {:?}", rep.problems);
}

/// After handing over, a node reads allocation state afresh when it allocates again: blocks the
/// other node allocated meanwhile are not handed out a second time (cross-linked files).
#[test]
fn a_node_allocating_after_a_hand_over_does_not_reuse_the_other_nodes_blocks() {
    let (dev, shared) = two_slot_volume();
    let a = Fs::new(Volume::open(shared.clone(), 0, "node-a", 4096).expect("open slot 0")).expect("fs a");
    let root = a.root();
    // A has loaded its allocation maps (it allocated), then hands over.
    let first = a.create(root, b"from-a-1", node(libc::S_IFREG | 0o644), WHO).expect("create");
    a.open(first.ino).expect("open");
    a.write(first.ino, 0, &vec![1u8; 1 << 20]).expect("write");
    a.release(first.ino).expect("close");
    a.write_back_and_forget().expect("node a hands over");

    let b = Fs::new(Volume::open(shared.clone(), 1, "node-b", 4096).expect("open slot 1")).expect("fs b");
    let from_b = b.create(root, b"from-b", node(libc::S_IFREG | 0o644), WHO).expect("create");
    b.open(from_b.ino).expect("open");
    b.write(from_b.ino, 0, &vec![2u8; 8 << 20]).expect("write");
    b.release(from_b.ino).expect("close");
    b.write_back_and_forget().expect("node b hands over");

    // A takes over again and allocates: it must see what B allocated.
    let second = a.create(root, b"from-a-2", node(libc::S_IFREG | 0o644), WHO).expect("create");
    a.open(second.ino).expect("open");
    a.write(second.ino, 0, &vec![3u8; 8 << 20]).expect("write");
    a.release(second.ino).expect("close");
    a.close().expect("close a");
    b.close().expect("close b");
    let rep = fsck::check(Arc::new(CrashDevice::from_image(dev.crash_image(|_| true))), false).expect("fsck");
    assert_eq!(rep.exit_code(), 0, "{:?}", rep.problems);
}
