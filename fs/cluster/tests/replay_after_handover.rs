//! A node that gave a lock up must leave nothing in its journal that a replay could write over
//! what another node changed afterwards under that lock. Two filesystem instances on one
//! crash-test device, each a cluster node with its own slot and lockd session (a real lockd
//! replica, in-process), take turns on one directory, its files and one allocation group: the
//! hand-overs are lockd's revocations of those locks, not calls of the test's. Then the first
//! node "crashes" and its slot is replayed (issue 11: "replay never overwrites newer blocks").
mod common;

use std::sync::Arc;

use common::{lockd, node, Node, WHO};
use mafs_core::device::{BlockDevice, CrashDevice};
use mafs_core::filesystem::Fs;
use mafs_core::mkfs::{mkfs, MkfsOptions};
use mafs_core::volume::Volume;

const FILES: usize = 300;

#[test]
fn replaying_a_node_that_gave_the_volume_lock_up_never_writes_over_the_next_holder() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (_lockd, endpoint) = lockd(tmp.path());
    let dev = Arc::new(CrashDevice::new(64 << 20));
    mkfs(&*dev, &MkfsOptions { slots: 2, journal_blocks: Some(1024), ..Default::default() }).expect("mkfs");
    let shared: Arc<dyn BlockDevice> = dev.clone();

    // Node A fills a directory: its inode, tree nodes and the files' inodes are in A's journal.
    let a = Node::mount(&shared, &endpoint, "node-a");
    let (root, d) = a.write(|fs| {
        let root = fs.root();
        let d = fs.create(root, b"d", node(libc::S_IFDIR | 0o755), WHO).expect("mkdir d");
        for i in 0..FILES {
            fs.create(d.ino, format!("file-{i:04}").as_bytes(), node(libc::S_IFREG | 0o644), WHO).expect("create");
        }
        (root, d)
    });

    // Node B takes the directory's, the files' and A's group's locks (lockd asks A to give each
    // up, and A writes back and forgets what it covers), empties the directory, and writes a
    // file over the freed blocks in A's group.
    let b = Node::mount(&shared, &endpoint, "node-b");
    let data = vec![0xab; 4 << 20];
    b.write(|fs| {
        for i in 0..FILES {
            fs.unlink(d.ino, format!("file-{i:04}").as_bytes(), false).expect("unlink");
        }
        fs.sync().expect("sync b");
        // Into A's group, where the freed blocks are (B would use its own first).
        fs.vol.alloc.set_current_ag(fs.vol.alloc.ag_index_of(d.ino.block()).expect("d's group"));
        let big = fs.create(root, b"big", node(libc::S_IFREG | 0o644), WHO).expect("create big");
        fs.open(big.ino).expect("open big");
        fs.write(big.ino, 0, &data).expect("write big");
        fs.release(big.ino).expect("close big");
        fs.sync().expect("sync b");
    });

    // A crashes (it never unmounts); its slot is replayed by the next user of the volume.
    let img = dev.crash_image(|_| true);
    let after: Arc<dyn BlockDevice> = Arc::new(CrashDevice::from_image(img));
    let fs = Fs::new(Volume::open(after, 0, "recovery", 4096).expect("replay slot 0")).expect("fs");
    assert_eq!(fs.getattr(d.ino).expect("d").entries, 0, "replay of node A's journal brought its entries of d back over node B's removals");
    let big = fs.lookup(root, b"big").expect("big");
    assert!(fs.read(big.ino, 0, data.len() as u32).expect("read big") == data, "replay of node A's journal wrote over node B's file data");
}
