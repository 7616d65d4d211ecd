//! An operation keeps its cluster lock held for as long as it works on what the lock covers: a
//! backend that counts live holds sees the file's exclusive hold alive at every device write of
//! a write(2), and nothing held once operations return. (Cluster mode gives a lock up to a
//! revocation only when no hold is alive, so a hold dropped early would let another node
//! change blocks this node is still writing.)
use mafs_core::device::{BlockDevice, CrashDevice};
use mafs_core::error::Result;
use mafs_core::filesystem::namespace::NewNode;
use mafs_core::filesystem::{Caller, Fs};
use mafs_core::format::InodeNo;
use mafs_core::locks::{ClusterHold, ClusterLocks, Mode};
use mafs_core::mkfs::{mkfs, MkfsOptions};
use mafs_core::volume::Volume;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;

/// Live holds per inode: (shared, exclusive).
type Live = Arc<Mutex<HashMap<InodeNo, (usize, usize)>>>;

struct CountingLocks(Live);

struct Hold(Live, InodeNo, Mode);

impl Drop for Hold {
    fn drop(&mut self) {
        let mut live = self.0.lock();
        let e = live.entry(self.1).or_default();
        match self.2 {
            Mode::Shared => e.0 -= 1,
            Mode::Exclusive => e.1 -= 1,
        }
    }
}

impl ClusterLocks for CountingLocks {
    fn hold(&self, ino: InodeNo, mode: Mode) -> Result<ClusterHold> {
        let mut live = self.0.lock();
        let e = live.entry(ino).or_default();
        match mode {
            Mode::Shared => e.0 += 1,
            Mode::Exclusive => e.1 += 1,
        }
        Ok(Box::new(Hold(self.0.clone(), ino, mode)))
    }
}

/// Records, for each device write while `watching` names an inode, whether an exclusive hold
/// of it was alive.
struct WatchedDevice {
    inner: Arc<CrashDevice>,
    live: Live,
    watching: Mutex<Option<InodeNo>>,
    seen: Mutex<Vec<bool>>,
}

impl BlockDevice for WatchedDevice {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        self.inner.read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> Result<()> {
        if let Some(ino) = *self.watching.lock() {
            let held = self.live.lock().get(&ino).is_some_and(|e| e.1 > 0);
            self.seen.lock().push(held);
        }
        self.inner.write_at(buf, offset)
    }
    fn flush(&self) -> Result<()> {
        self.inner.flush()
    }
    fn size(&self) -> u64 {
        self.inner.size()
    }
}

#[test]
fn a_write_holds_the_files_cluster_lock_through_every_device_write_and_releases_it_after() {
    let crash = Arc::new(CrashDevice::new(64 << 20));
    mkfs(&*crash, &MkfsOptions { slots: 1, journal_blocks: Some(1024), ..Default::default() }).expect("mkfs");
    let live: Live = Arc::default();
    let dev = Arc::new(WatchedDevice { inner: crash, live: live.clone(), watching: Mutex::new(None), seen: Mutex::new(Vec::new()) });
    let vol = Volume::open(dev.clone(), 0, "holds", 4096).expect("open");
    let fs = Fs::with_cluster_locks(vol, Box::new(CountingLocks(live.clone())));
    fs.reclaim_orphans().expect("reclaim");
    let f =
        fs.create(fs.root(), b"f", NewNode { mode: libc::S_IFREG | 0o644, rdev: 0, symlink_target: None }, Caller::ROOT).expect("create");
    fs.open(f.ino).expect("open");
    *dev.watching.lock() = Some(f.ino);
    // Large enough for data blocks of its own (not stuffed in the inode), written to the device
    // by the write itself.
    fs.write(f.ino, 0, &vec![7u8; 256 << 10]).expect("write");
    *dev.watching.lock() = None;
    let seen = dev.seen.lock().clone();
    assert!(!seen.is_empty(), "the write reached the device");
    assert!(
        seen.iter().all(|&held| held),
        "{} of {} device writes ran without the file's exclusive hold",
        seen.iter().filter(|h| !**h).count(),
        seen.len()
    );
    fs.release(f.ino).expect("close");
    let left: Vec<_> = live.lock().iter().filter(|(_, e)| **e != (0, 0)).map(|(i, e)| (*i, *e)).collect();
    assert!(left.is_empty(), "holds still alive after the operations returned: {left:?}");
    fs.close().expect("close");
}

/// Records every cluster lock asked for, and those asked for while the asking thread held a
/// journal handle.
#[derive(Default)]
struct Asked {
    asked: Mutex<usize>,
    groups: Mutex<std::collections::BTreeSet<u32>>,
    inside_transaction: Mutex<Vec<String>>,
}

/// A backend that grants everything and records what is asked (`Asked`); with `ag_locks`,
/// allocation groups have locks of their own, as in cluster mode with per-inode locks.
struct OrderCheckingLocks {
    asked: Arc<Asked>,
    ag_locks: bool,
}

impl Asked {
    fn note(&self, what: String) {
        *self.asked.lock() += 1;
        if mafs_core::journal::handles_held_here() > 0 {
            self.inside_transaction.lock().push(what);
        }
    }
}

impl ClusterLocks for OrderCheckingLocks {
    fn hold(&self, ino: InodeNo, mode: Mode) -> Result<ClusterHold> {
        self.asked.note(format!("hold {ino} {mode:?}"));
        Ok(Box::new(()))
    }
    fn open_lock(&self, ino: InodeNo) -> Result<()> {
        self.asked.note(format!("open lock {ino}"));
        Ok(())
    }
    fn unused_elsewhere(&self, ino: InodeNo, wait: bool) -> Result<bool> {
        // Without `wait` the backend only looks at what it holds (no call out): allowed anywhere.
        if wait {
            self.asked.note(format!("unused elsewhere {ino}"));
        }
        Ok(true)
    }
    fn ag_locks(&self) -> bool {
        self.ag_locks
    }
    fn hold_ag(&self, ag: u32) -> Result<ClusterHold> {
        self.asked.note(format!("hold group {ag}"));
        self.asked.groups.lock().insert(ag);
        Ok(Box::new(()))
    }
}

fn mount_checking(dev: &Arc<CrashDevice>, slot: u32, asked: &Arc<Asked>, ag_locks: bool) -> Fs {
    let vol = Volume::open(dev.clone(), slot, "order", 4096).expect("open");
    let fs = Fs::with_cluster_locks(vol, Box::new(OrderCheckingLocks { asked: asked.clone(), ag_locks }));
    fs.reclaim_orphans().expect("reclaim at mount");
    fs
}

/// Every kind of operation, including the multi-transaction ones; leaves `/kept` unlinked
/// but open (for the next mount's reclaim) and `/d1` empty.
fn every_kind_of_operation(fs: &Fs) {
    use mafs_core::filesystem::attr::XattrSet;
    use mafs_core::filesystem::{FallocMode, SetAttr};
    let root = fs.root();
    let node = |mode: u32| NewNode { mode, rdev: 0, symlink_target: None };
    let d1 = fs.create(root, b"d1", node(libc::S_IFDIR | 0o755), Caller::ROOT).expect("mkdir").ino;
    let d2 = fs.create(root, b"d2", node(libc::S_IFDIR | 0o755), Caller::ROOT).expect("mkdir").ino;
    let f = fs.create(d1, b"f", node(libc::S_IFREG | 0o644), Caller::ROOT).expect("create").ino;
    let target = [b'x'; 200];
    fs.create(d1, b"ln", NewNode { mode: libc::S_IFLNK | 0o777, rdev: 0, symlink_target: Some(&target[..]) }, Caller::ROOT)
        .expect("symlink");
    fs.create(d1, b"fifo", node(libc::S_IFIFO | 0o644), Caller::ROOT).expect("mknod");
    fs.write(f, 0, b"small").expect("write");
    fs.append(f, b" appended").expect("append");
    fs.setattr(f, &SetAttr { mode: Some(0o600), uid: Some(7), ..Default::default() }).expect("chmod");
    fs.setxattr(f, b"user.k", Some(b"v"), XattrSet::Any).expect("setxattr");
    fs.setxattr(f, b"user.k", None, XattrSet::Any).expect("removexattr");
    fs.link(f, d2, b"f-link").expect("link");
    fs.touch_atime(f).expect("atime");
    // A fragmented file: one extent per written block with holes between, more extents than one
    // transaction frees, so truncating and deleting it take several steps through the orphan
    // directory.
    let big = fs.create(d1, b"big", node(libc::S_IFREG | 0o644), Caller::ROOT).expect("create").ino;
    for i in 0..64u64 {
        fs.write(big, i * 8192, &[1u8; 4096]).expect("write a block");
    }
    fs.fallocate(big, 600 << 10, 64 << 10, FallocMode { keep_size: false, punch_hole: false, zero_range: false }).expect("fallocate");
    fs.fallocate(big, 0, 16 << 10, FallocMode { punch_hole: true, keep_size: true, zero_range: false }).expect("punch");
    fs.setattr(big, &SetAttr { size: Some(100 << 10), ..Default::default() }).expect("truncate in steps");
    fs.rename(d1, b"f", d2, b"g", 0).expect("rename across directories");
    fs.rename(d2, b"g", d2, b"f-link", 0).expect("rename over another link of the same inode");
    // Renames that replace: a closed file (freed at once) and an open one (listed as an orphan).
    let victim = fs.create(d2, b"victim", node(libc::S_IFREG | 0o644), Caller::ROOT).expect("create").ino;
    fs.open(victim).expect("open");
    fs.create(d2, b"other", node(libc::S_IFREG | 0o644), Caller::ROOT).expect("create");
    fs.rename(d2, b"other", d2, b"victim", 0).expect("rename over an open file");
    fs.release(victim).expect("last close frees it");
    fs.rename(d1, b"fifo", d2, b"victim", mafs_core::filesystem::rename::RENAME_EXCHANGE).expect("exchange");
    // Unlinks: a small closed file, the fragmented one (several steps), an open one, a dir.
    fs.unlink(d2, b"victim", false).expect("unlink");
    fs.open(big).expect("open");
    fs.unlink(d1, b"big", false).expect("unlink an open file");
    fs.release(big).expect("last close frees it in steps");
    fs.unlink(d1, b"ln", false).expect("unlink the symlink");
    fs.unlink(d1, b"fifo", false).expect("unlink what the exchange put there");
    // A directory big enough for a tree of several levels, emptied again (nodes freed).
    for i in 0..400 {
        fs.create(d2, format!("entry-with-a-long-name-{i:04}").as_bytes(), node(libc::S_IFREG | 0o644), Caller::ROOT).expect("create");
    }
    for i in 0..400 {
        fs.unlink(d2, format!("entry-with-a-long-name-{i:04}").as_bytes(), false).expect("unlink");
    }
    // Left listed at "unmount", reclaimed by the next mount of the slot.
    let kept = fs.create(root, b"kept", node(libc::S_IFREG | 0o644), Caller::ROOT).expect("create").ino;
    fs.write(kept, 0, &vec![5u8; 300 << 10]).expect("write");
    fs.open(kept).expect("open");
    fs.unlink(root, b"kept", false).expect("unlink while open");
    fs.sync().expect("sync");
}

/// Cluster locks may wait for other nodes, which may wait for this node's commit, which waits
/// for every journal handle: so every operation takes all its cluster locks — the parent's and
/// the child's, a new inode's (its number reserved first), the orphan directory's for an inode
/// that loses its last name while open or too big to free at once — before it joins a
/// transaction (issue 11, "cluster locks before the journal"). Runs every kind of operation,
/// including the multi-transaction ones, and the reclaim of orphans at mount.
#[test]
fn every_operation_takes_its_cluster_locks_before_it_joins_a_transaction() {
    let crash = Arc::new(CrashDevice::new(64 << 20));
    mkfs(&*crash, &MkfsOptions { slots: 1, journal_blocks: Some(1024), ..Default::default() }).expect("mkfs");
    let asked = Arc::new(Asked::default());
    let fs = mount_checking(&crash, 0, &asked, false);
    every_kind_of_operation(&fs);
    fs.close().expect("close");
    drop(fs);
    let fs = mount_checking(&crash, 0, &asked, false);
    fs.unlink(fs.root(), b"d1", true).expect("rmdir");
    fs.close().expect("close");
    assert!(*asked.asked.lock() > 50, "the operations asked for their locks");
    let bad = asked.inside_transaction.lock().clone();
    assert!(bad.is_empty(), "cluster locks asked for inside a transaction: {bad:?}");
}

/// With a lock per allocation group (cluster mode), every operation holds — before its
/// transaction — each group it allocates from or frees into: a free into a group the
/// operation does not hold would be lost (it is left in use and counted), and an allocation
/// there is impossible (debug builds also assert the allocator never changes such a group).
/// The node allocates from its own group first and moves on when that fills up.
#[test]
fn operations_hold_every_allocation_group_they_allocate_from_or_free_into() {
    let crash = Arc::new(CrashDevice::new(128 << 20));
    mkfs(&*crash, &MkfsOptions { slots: 4, journal_blocks: Some(1024), ..Default::default() }).expect("mkfs");
    let asked = Arc::new(Asked::default());
    let fs = mount_checking(&crash, 2, &asked, true);
    let home = fs.vol.alloc.current_ag();
    assert_ne!(home, 0, "slot 2 allocates from a group of its own");
    every_kind_of_operation(&fs);
    // Fill the node's group and some: allocation moves on to the next groups.
    let groups_before = asked.groups.lock().len();
    let root = fs.root();
    let filler = fs
        .create(root, b"filler", NewNode { mode: libc::S_IFREG | 0o644, rdev: 0, symlink_target: None }, Caller::ROOT)
        .expect("create")
        .ino;
    let group_bytes = fs.vol.sb.layout.ag_blocks as u64 * 4096;
    let chunk = vec![9u8; 1 << 20];
    for i in 0..(group_bytes * 3 / 2).div_ceil(1 << 20) {
        assert_eq!(fs.write(filler, i << 20, &chunk).expect("write past the node's own group"), chunk.len());
    }
    assert!(asked.groups.lock().len() > groups_before, "allocation moved on to other groups");
    fs.unlink(root, b"filler", false).expect("unlink");
    fs.close().expect("close");
    drop(fs);
    let fs = mount_checking(&crash, 2, &asked, true);
    fs.unlink(fs.root(), b"d1", true).expect("rmdir");
    assert_eq!(fs.vol.alloc.unheld_frees(), 0, "blocks freed in groups the operation did not hold");
    fs.close().expect("close");
    let bad = asked.inside_transaction.lock().clone();
    assert!(bad.is_empty(), "cluster locks asked for inside a transaction: {bad:?}");
    let rep = mafs_core::fsck::check(crash.clone(), false).expect("fsck");
    assert_eq!(rep.exit_code(), 0, "fsck after the workload: {:?}", rep.problems);
}
