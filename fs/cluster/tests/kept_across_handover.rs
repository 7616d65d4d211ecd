//! A node that gives an inode's lock up without changing the inode keeps its cached blocks,
//! and uses them when it takes the lock again if nobody changed the inode meanwhile: the lock
//! value block holds the version of the inode (docs/design.md, "Keeping a cache across a
//! hand-over"). Changed by another node, or held by a writer that died, the inode is read
//! again. Two filesystem instances, each a cluster node with its own slot and lockd session
//! (a real lockd replica, in-process), each counting what it reads from the shared device.
mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{lockd, node, Node, WHO};
use mafs_core::device::{BlockDevice, CrashDevice};
use mafs_core::error::{FsError, Result};
use mafs_core::format::{InodeNo, BLOCK_SIZE};
use mafs_core::mkfs::{mkfs, MkfsOptions};
use mafs_core::volume::read_superblock;
use parking_lot::Mutex;

/// The shared device as one node sees it, counting the reads of each block.
struct Counting {
    dev: Arc<dyn BlockDevice>,
    reads: Mutex<HashMap<u64, u64>>,
}

impl Counting {
    fn reads_of(&self, ino: InodeNo) -> u64 {
        self.reads.lock().get(&ino.get()).copied().unwrap_or(0)
    }
}

impl BlockDevice for Counting {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        *self.reads.lock().entry(offset / BLOCK_SIZE as u64).or_default() += 1;
        self.dev.read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> Result<()> {
        self.dev.write_at(buf, offset)
    }
    fn flush(&self) -> Result<()> {
        self.dev.flush()
    }
    fn size(&self) -> u64 {
        self.dev.size()
    }
}

struct Two {
    _tmp: tempfile::TempDir,
    _lockd: tokio::runtime::Runtime,
    endpoint: String,
    shared: Arc<dyn BlockDevice>,
    a_dev: Arc<Counting>,
    a: Node,
    d: InodeNo,
}

/// Node A makes directory `d` with a few files; B joins.
fn two_nodes() -> Two {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (lockd_rt, endpoint) = lockd(tmp.path());
    let shared: Arc<dyn BlockDevice> = Arc::new(CrashDevice::new(64 << 20));
    mkfs(&*shared, &MkfsOptions { slots: 2, journal_blocks: Some(1024), ..Default::default() }).expect("mkfs");
    let a_dev = Arc::new(Counting { dev: shared.clone(), reads: Mutex::new(HashMap::new()) });
    let a_as_dev: Arc<dyn BlockDevice> = a_dev.clone();
    let a = Node::mount(&a_as_dev, &endpoint, "node-a");
    let d = a.write(|fs| {
        let d = fs.create(fs.root(), b"d", node(libc::S_IFDIR | 0o755), WHO).expect("mkdir d");
        for i in 0..20 {
            fs.create(d.ino, format!("file-{i:02}").as_bytes(), node(libc::S_IFREG | 0o644), WHO).expect("create");
        }
        d.ino
    });
    Two { _tmp: tmp, _lockd: lockd_rt, endpoint, shared, a_dev, a, d }
}

fn names_in(n: &Node, d: InodeNo) -> Vec<String> {
    n.write(|fs| {
        let mut names = Vec::new();
        fs.readdir(d, 0, &mut |_, _, name, _| {
            if name != b"." && name != b".." {
                names.push(String::from_utf8_lossy(name).into_owned());
            }
            true
        })
        .expect("readdir");
        names
    })
}

#[test]
fn a_node_keeps_what_it_cached_of_an_inode_nobody_changed_while_its_lock_was_elsewhere() {
    let t = two_nodes();
    let b = Node::mount(&t.shared, &t.endpoint, "node-b");
    // B takes d exclusively (lockd has A give it up) and changes nothing: the name exists.
    let r = b.write(|fs| fs.create(t.d, b"file-03", node(libc::S_IFREG | 0o644), WHO));
    assert!(matches!(r, Err(FsError::Exists)), "{r:?}");
    let before = t.a_dev.reads_of(t.d);
    assert_eq!(names_in(&t.a, t.d).len(), 20, "d as node A lists it");
    assert_eq!(t.a_dev.reads_of(t.d), before, "node A read d's inode again although nobody changed it");

    // Now B changes d: A must read it again, and sees the change.
    b.write(|fs| fs.create(t.d, b"from-b", node(libc::S_IFREG | 0o644), WHO)).expect("create on b");
    let names = names_in(&t.a, t.d);
    assert!(names.iter().any(|n| n == "from-b"), "node A kept a stale d: {names:?}");
    assert!(t.a_dev.reads_of(t.d) > before, "node A did not read d again after node B changed it");
}

/// File data (mafs_core's data_cache/) follows the inode's lock like its metadata: kept when
/// A downgrades for a reader (A reads the file again without a device read), gone when B
/// changes the file (A reads B's bytes).
#[test]
fn file_data_stays_cached_for_a_reader_and_is_read_again_after_another_nodes_write() {
    let t = two_nodes();
    let b = Node::mount(&t.shared, &t.endpoint, "node-b");
    let data = vec![1u8; 256 << 10];
    let f = t.a.write(|fs| {
        let f = fs.create(fs.root(), b"f", node(libc::S_IFREG | 0o644), WHO).expect("create f").ino;
        fs.write(f, 0, &data).expect("write f");
        f
    });
    let read = |n: &Node| n.write(|fs| fs.read(f, 0, data.len() as u32)).expect("read f");
    assert!(read(&b) == data, "node B reads A's bytes");
    let before: u64 = t.a_dev.reads.lock().values().sum();
    assert!(read(&t.a) == data);
    let after: u64 = t.a_dev.reads.lock().values().sum();
    assert_eq!(after, before, "node A read f from the device again although only a reader took its lock");

    let newer = vec![2u8; 8192];
    b.write(|fs| fs.write(f, 4096, &newer)).expect("write on b");
    let mut want = data.clone();
    want[4096..4096 + 8192].copy_from_slice(&newer);
    assert!(read(&t.a) == want, "node A read stale file data after node B wrote it");
}

#[test]
fn giving_up_an_inode_unchanged_since_its_last_hand_over_commits_nothing() {
    let t = two_nodes();
    let b = Node::mount(&t.shared, &t.endpoint, "node-b");
    let e = t.a.write(|fs| fs.create(fs.root(), b"e", node(libc::S_IFDIR | 0o755), WHO)).expect("mkdir e").ino;
    // B reads d: A wrote back what it had changed of it, and keeps reading it.
    assert_eq!(names_in(&b, t.d).len(), 20);
    assert_eq!(names_in(&t.a, t.d).len(), 20);
    // A changes e, and does not commit.
    t.a.write(|fs| fs.create(e, b"pending", node(libc::S_IFREG | 0o644), WHO)).expect("create in e");
    assert!(!t.a.fs.vol.journal.is_idle());
    // B takes d exclusively, and A gives up d, which it has not changed since: its change to e
    // stays uncommitted.
    let r = b.write(|fs| fs.create(t.d, b"file-03", node(libc::S_IFREG | 0o644), WHO));
    assert!(matches!(r, Err(FsError::Exists)), "{r:?}");
    assert!(!t.a.fs.vol.journal.is_idle(), "giving up an unchanged directory committed node A's other changes");
    // B reads e: A must commit and write back its change first, and B sees it.
    assert_eq!(names_in(&b, e), ["pending"]);
    assert!(t.a.fs.vol.journal.is_idle(), "node A gave e up without committing its change");
}

#[test]
fn a_writer_that_dies_holding_an_inode_makes_the_others_read_it_again() {
    let t = two_nodes();
    let (sb, _) = read_superblock(&*t.shared).expect("superblock");
    let a_dev: Arc<dyn BlockDevice> = t.a_dev.clone();
    let _watcher = t.a.cluster.watch_for_dead_nodes(a_dev, sb.layout.slot_count).expect("watch for dead nodes");
    let b = Node::mount_with_lease(&t.shared, &t.endpoint, "node-b", Duration::from_secs(1));
    // A keeps d (version: its own change), B takes it, changes it, commits, and dies before it
    // gives the lock up: it never writes a new version.
    b.write(|fs| {
        fs.create(t.d, b"last-words", node(libc::S_IFREG | 0o644), WHO).expect("create on b");
        fs.sync().expect("commit on b");
    });
    b.cluster.abandon();
    std::mem::forget(b);
    // A survivor replays B's journal once lockd expires its session; lockd then forgets the
    // version B's grant may have made stale.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let names = names_in(&t.a, t.d);
        if names.iter().any(|n| n == "last-words") {
            break;
        }
        assert!(Instant::now() < deadline, "node A never saw what the dead node B wrote to d: {names:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}
