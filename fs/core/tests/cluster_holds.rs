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
