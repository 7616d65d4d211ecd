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

/// Grants every lock at once, with a lock per allocation group as in cluster mode with
/// per-inode locks (the test itself orders the two nodes' turns, as lockd would).
struct EveryLockGranted;

impl mafs_core::locks::ClusterLocks for EveryLockGranted {
    fn hold(
        &self,
        _ino: mafs_core::format::InodeNo,
        _mode: mafs_core::locks::Mode,
    ) -> mafs_core::error::Result<mafs_core::locks::ClusterHold> {
        Ok(Box::new(()))
    }
    fn ag_locks(&self) -> bool {
        true
    }
}

fn node_with_group_locks(dev: &Arc<dyn BlockDevice>, slot: u32, name: &str) -> Fs {
    let fs = Fs::with_cluster_locks(Volume::open(dev.clone(), slot, name, 4096).expect("open slot"), Box::new(EveryLockGranted));
    fs.reclaim_orphans().expect("reclaim");
    fs
}

/// Per-inode locks: node A gives up the locks of a directory, its files, the root and its
/// allocation group — and only those. It keeps its cache of another directory it goes on
/// changing. Node B then empties the directory and writes a file over the blocks that freed.
/// A crashes after more changes of its own: the replay of A's journal leaves B's work as it
/// is and A's later changes in place (issue 11: "replay never overwrites newer blocks").
#[test]
fn giving_up_one_inodes_lock_drops_only_its_blocks_and_a_replay_never_writes_over_the_next_holder() {
    use mafs_core::cache::Cover;
    let (dev, shared) = two_slot_volume();
    let a = node_with_group_locks(&shared, 0, "node-a");
    let root = a.root();
    let d = a.create(root, b"d", node(libc::S_IFDIR | 0o755), WHO).expect("mkdir d");
    let files: Vec<_> = (0..FILES)
        .map(|i| a.create(d.ino, format!("file-{i:04}").as_bytes(), node(libc::S_IFREG | 0o644), WHO).expect("create").ino)
        .collect();
    let k = a.create(root, b"k", node(libc::S_IFDIR | 0o755), WHO).expect("mkdir k");
    let kf = a.create(k.ino, b"f", node(libc::S_IFREG | 0o644), WHO).expect("create k/f");
    a.write(kf.ino, 0, &vec![1u8; 64 << 10]).expect("write k/f");
    a.sync().expect("sync a");
    let group = a.vol.alloc.current_ag();
    for cover in [Cover::Inode(root), Cover::Inode(d.ino), Cover::Group(group)].into_iter().chain(files.iter().map(|f| Cover::Inode(*f))) {
        a.write_back_and_forget_cover(cover).expect("node a gives one lock up");
    }
    assert!(!a.vol.cache.contains(d.ino.block()), "the directory given up is no longer cached");
    assert!(a.vol.cache.contains(k.ino.block()) && a.vol.cache.contains(kf.ino.block()), "what A still holds stays cached");

    // B empties d and writes a file over the blocks that freed, in A's group.
    let b = node_with_group_locks(&shared, 1, "node-b");
    for i in 0..FILES {
        b.unlink(d.ino, format!("file-{i:04}").as_bytes(), false).expect("unlink");
    }
    b.sync().expect("sync b");
    b.vol.alloc.set_current_ag(group);
    let data = vec![0xab; 4 << 20];
    let big = b.create(root, b"big", node(libc::S_IFREG | 0o644), WHO).expect("create big");
    b.write(big.ino, 0, &data).expect("write big");
    b.write_back_and_forget().expect("node b gives everything up");

    // A goes on with what it kept (allocating in its group again, read afresh), commits, and
    // crashes.
    let more = vec![2u8; 256 << 10];
    a.write(kf.ino, 64 << 10, &more).expect("write k/f again");
    a.sync().expect("sync a");
    let img = dev.crash_image(|_| true);
    let after: Arc<dyn BlockDevice> = Arc::new(CrashDevice::from_image(img.clone()));
    let fs = Fs::new(Volume::open(after, 0, "recovery", 4096).expect("replay slot 0")).expect("fs");
    assert_eq!(fs.getattr(d.ino).expect("d").entries, 0, "replay of A's journal brought back entries B removed");
    let big_now = fs.lookup(root, b"big").expect("big");
    assert!(fs.read(big_now.ino, 0, data.len() as u32).expect("read big") == data, "replay of A's journal wrote over B's file data");
    let kf_now = fs.read(kf.ino, 64 << 10, more.len() as u32).expect("read k/f");
    assert!(kf_now == more, "A's changes after the hand-over are replayed");
    fs.close().expect("close");
    let rep = fsck::check(Arc::new(CrashDevice::from_image(img)), false).expect("fsck of the crash image");
    assert_eq!(rep.exit_code(), 0, "crash image (node A's slot replayed in memory): {:?}", rep.problems);
}
