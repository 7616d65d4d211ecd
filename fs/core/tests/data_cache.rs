//! The node's data cache (mafs_core's data_cache/) never answers a read with bytes the device
//! no longer holds: after every kind of change this node makes (writes of every shape,
//! truncates, holes punched and filled, blocks freed and reused by other files, evictions), and
//! after another node changes a file whose lock this node gave up.
use mafs_core::cache::Cover;
use mafs_core::device::{BlockDevice, CrashDevice};
use mafs_core::filesystem::attr::SetAttr;
use mafs_core::filesystem::namespace::NewNode;
use mafs_core::filesystem::{Caller, FallocMode, Fs};
use mafs_core::mkfs::{mkfs, MkfsOptions};
use mafs_core::volume::Volume;
use std::sync::Arc;

const WHO: Caller = Caller::ROOT;
const BS: u64 = 4096;

fn file() -> NewNode<'static> {
    NewNode { mode: libc::S_IFREG | 0o644, rdev: 0, symlink_target: None }
}

fn two_slot_volume() -> Arc<dyn BlockDevice> {
    let dev = Arc::new(CrashDevice::new(64 << 20));
    mkfs(&*dev, &MkfsOptions { slots: 2, journal_blocks: Some(1024), ..Default::default() }).expect("mkfs");
    dev
}

fn node(dev: &Arc<dyn BlockDevice>, slot: u32, cache_bytes: u64) -> Fs {
    let fs = Fs::new(Volume::open(dev.clone(), slot, &format!("node-{slot}"), 4096).expect("open slot")).expect("fs");
    fs.vol.cache.data.set_capacity(cache_bytes);
    fs
}

/// A small deterministic generator (no dependency for one test).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn check(fs: &Fs, ino: mafs_core::format::InodeNo, model: &[u8], what: &str) {
    let got = fs.read(ino, 0, model.len() as u32 + 100).expect("read");
    assert_eq!(got.len(), model.len(), "{what}: size");
    if let Some(i) = got.iter().zip(model).position(|(a, b)| a != b) {
        panic!("{what}: byte {i} reads {} where {} was written", got[i], model[i]);
    }
}

/// 3,000 random changes to four files through a cache of 48 blocks (evicting all the time),
/// each file read back whole after every change and compared with a model; then the device
/// is read by a node with no cache, which must agree too.
#[test]
fn reads_through_the_cache_match_every_change_the_node_made() {
    let dev = two_slot_volume();
    let a = node(&dev, 0, 48 * BS);
    let files: Vec<_> = (0..4).map(|i| a.create(a.root(), format!("f{i}").as_bytes(), file(), WHO).expect("create").ino).collect();
    let mut models = vec![Vec::<u8>::new(); files.len()];
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for step in 0..3000 {
        let f = rng.below(files.len() as u64) as usize;
        let (ino, model) = (files[f], &mut models[f]);
        let off = rng.below(40 * BS);
        let len = 1 + rng.below(3 * BS);
        let op = rng.below(10);
        match op {
            0..=4 => {
                let byte = (step % 251) as u8 + 1;
                let data = vec![byte; len as usize];
                a.write(ino, off, &data).expect("write");
                let end = (off + len) as usize;
                if model.len() < end {
                    model.resize(end, 0);
                }
                model[off as usize..end].fill(byte);
            }
            5 | 6 => {
                let size = rng.below(40 * BS);
                a.setattr(ino, &SetAttr { size: Some(size), ..Default::default() }).expect("truncate");
                model.resize(size as usize, 0);
            }
            7 => {
                let mode = FallocMode::from_flags(libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE).expect("mode");
                a.fallocate(ino, off, len, mode).expect("punch");
                let (s, e) = ((off as usize).min(model.len()), ((off + len) as usize).min(model.len()));
                model[s..e].fill(0);
            }
            8 => {
                let mode = FallocMode::from_flags(libc::FALLOC_FL_ZERO_RANGE).expect("mode");
                a.fallocate(ino, off, len, mode).expect("zero range");
                let end = (off + len) as usize;
                if model.len() < end {
                    model.resize(end, 0);
                }
                model[off as usize..end].fill(0);
            }
            _ => {
                // Grow with fallocate: new blocks (maybe ones another file freed) read as zeros.
                a.fallocate(ino, off, len, FallocMode::from_flags(0).expect("mode")).expect("allocate");
                let end = (off + len) as usize;
                if model.len() < end {
                    model.resize(end, 0);
                }
            }
        }
        check(&a, ino, model, &format!("step {step}, op {op}, file {f}"));
    }
    assert!(!a.vol.cache.data.is_empty(), "the cache was never used: this test would prove nothing");
    a.sync().expect("sync");
    let fresh = node(&dev, 1, 0);
    for (ino, model) in files.iter().zip(&models) {
        check(&fresh, *ino, model, "read by a node without a cache");
    }
}

/// Node A reads a file (cached), gives its lock up as a revocation does, and B overwrites it
/// in place, same size: A's next read shows B's bytes. While A still holds the lock, its
/// cache answers (proving the cache is what the first half tests).
#[test]
fn a_node_that_gave_a_files_lock_up_reads_the_next_holders_bytes() {
    let dev = two_slot_volume();
    let a = node(&dev, 0, 1 << 20);
    let f = a.create(a.root(), b"f", file(), WHO).expect("create").ino;
    a.write(f, 0, &vec![1u8; 64 << 10]).expect("write");
    a.sync().expect("sync a");
    check(&a, f, &vec![1u8; 64 << 10], "A's own bytes");

    // Behind A's back (B without the lock): A's cache still answers its own bytes.
    let b = node(&dev, 1, 1 << 20);
    b.write(f, 0, &vec![2u8; 64 << 10]).expect("b writes behind a's back");
    b.sync().expect("sync b");
    check(&a, f, &vec![1u8; 64 << 10], "A still holding the lock");

    // Now A gives the lock up first; B writes under it; A takes it again and reads.
    a.write_back_and_forget_cover(Cover::Inode(f)).expect("a gives f up");
    assert_eq!(a.vol.cache.data.len(), 0, "the file's data went with its lock");
    b.write(f, 4096, &vec![3u8; 8192]).expect("b writes");
    b.sync().expect("sync b");
    let mut want = vec![2u8; 64 << 10];
    want[4096..4096 + 8192].fill(3);
    check(&a, f, &want, "A after taking the lock again");
}
