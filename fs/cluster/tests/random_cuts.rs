//! Power cuts at random points of a two-node workload. kill -9 of a mount keeps what the host
//! page cache holds; a power cut (or a host gone) also loses every write not yet flushed. Two
//! cluster nodes (in-process, each with its own slot and lockd session, a real lockd replica)
//! take turns on one crash-test device — every turn hands the locks of the inodes it touches
//! over, through lockd's revocation — creating, appending, renaming, unlinking and fsyncing
//! files. At a random step
//! the device is cut, keeping a random part of the unflushed writes; both slots are replayed.
//! Then fsck is clean, and every file as the last fsync left it (and not changed since) is
//! there with its bytes, or absent if it was removed.
mod common;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use common::{lockd, node, Node, WHO};
use mafs_core::device::{BlockDevice, CrashDevice};
use mafs_core::filesystem::Fs;
use mafs_core::fsck;
use mafs_core::mkfs::{mkfs, MkfsOptions};
use mafs_core::volume::Volume;
use rand::{Rng, SeedableRng};

const ROUNDS: u64 = 16;

/// What the files should hold: now, and as of the last fsync (`None`: absent then).
#[derive(Default)]
struct Model {
    now: HashMap<String, Vec<u8>>,
    synced: HashMap<String, Option<Vec<u8>>>,
    /// Names changed since the last fsync: either state may survive a cut.
    touched: HashSet<String>,
    next: u64,
}

impl Model {
    fn touch(&mut self, name: &str) {
        self.touched.insert(name.to_string());
        self.synced.entry(name.to_string()).or_insert(None);
    }

    fn synced_now(&mut self) {
        for (name, was) in self.synced.iter_mut() {
            *was = self.now.get(name).cloned();
        }
        self.touched.clear();
    }

    fn any(&self, rng: &mut impl Rng) -> Option<String> {
        let mut names: Vec<&String> = self.now.keys().collect();
        names.sort();
        (!names.is_empty()).then(|| names[rng.gen_range(0..names.len())].clone())
    }
}

/// One step of the workload on `fs` (as a request), kept in `m`.
fn step(fs: &Fs, m: &mut Model, rng: &mut impl Rng) {
    let root = fs.root();
    match rng.gen_range(0..10) {
        0..=3 => {
            let name = format!("f{}", m.next);
            m.next += 1;
            let body: Vec<u8> = (0..rng.gen_range(0..20_000)).map(|_| rng.gen()).collect();
            let f = fs.create(root, name.as_bytes(), node(libc::S_IFREG | 0o644), WHO).expect("create");
            fs.open(f.ino).expect("open");
            if !body.is_empty() {
                fs.write(f.ino, 0, &body).expect("write");
            }
            fs.release(f.ino).expect("close");
            m.touch(&name);
            m.now.insert(name, body);
        }
        4..=5 => {
            let Some(name) = m.any(rng) else { return };
            let more: Vec<u8> = (0..rng.gen_range(1..9000)).map(|_| rng.gen()).collect();
            let ino = fs.lookup(root, name.as_bytes()).expect("lookup").ino;
            fs.open(ino).expect("open");
            fs.append(ino, &more).expect("append");
            fs.release(ino).expect("close");
            m.touch(&name);
            m.now.get_mut(&name).expect("in the model").extend_from_slice(&more);
        }
        6 => {
            let Some(from) = m.any(rng) else { return };
            let to = format!("f{}", m.next);
            m.next += 1;
            fs.rename(root, from.as_bytes(), root, to.as_bytes(), 0).expect("rename");
            m.touch(&from);
            m.touch(&to);
            let body = m.now.remove(&from).expect("in the model");
            m.now.insert(to, body);
        }
        7 => {
            let Some(name) = m.any(rng) else { return };
            fs.unlink(root, name.as_bytes(), false).expect("unlink");
            m.touch(&name);
            m.now.remove(&name);
        }
        _ => {
            // fsync of every file (and the directory) as this node sees them: reading each
            // under its lock first makes the other node write back what it changed there
            // (a node's fsync commits its own journal only; with a lock per inode, the other
            // node's changes reach it through the hand-over of those inodes' locks).
            fs.getattr(root).expect("stat /");
            for name in m.now.keys() {
                fs.lookup(root, name.as_bytes()).expect("lookup");
            }
            fs.sync().expect("fsync");
            m.synced_now();
        }
    }
}

/// Replays every slot of the cut image, as the survivors (or the next mount) would.
fn recover(img: Vec<u8>, slots: u32) -> Arc<dyn BlockDevice> {
    let dev: Arc<dyn BlockDevice> = Arc::new(CrashDevice::from_image(img));
    for slot in 0..slots {
        Volume::open(dev.clone(), slot, "recovery", 1024).and_then(|v| v.close()).unwrap_or_else(|e| panic!("replay of slot {slot}: {e}"));
    }
    dev
}

fn check(dev: Arc<dyn BlockDevice>, m: &Model, what: &str) {
    let rep = fsck::check(dev.clone(), false).unwrap_or_else(|e| panic!("{what}: fsck did not run: {e}"));
    assert_eq!(rep.exit_code(), 0, "{what}: fsck after the cut: {:?}", rep.problems);
    let fs = Fs::new(Volume::open(dev, 0, "check", 1024).expect("mount")).expect("fs");
    for (name, synced) in m.synced.iter().filter(|(n, _)| !m.touched.contains(*n)) {
        let found = fs.lookup(fs.root(), name.as_bytes()).ok().map(|i| fs.read(i.ino, 0, 1 << 20).expect("read"));
        match (synced, found) {
            (None, None) => {}
            (Some(want), Some(got)) => assert!(got == *want, "{what}: {name} holds {} bytes, fsync left {}", got.len(), want.len()),
            (want, got) => panic!("{what}: {name} should be {}, is {}", presence(want), presence(&got)),
        }
    }
}

fn presence(v: &Option<Vec<u8>>) -> &'static str {
    if v.is_some() {
        "there"
    } else {
        "absent"
    }
}

#[test]
fn a_power_cut_at_a_random_point_of_two_nodes_taking_turns_loses_nothing_fsynced() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (_lockd, endpoint) = lockd(tmp.path());
    let seed: u64 = std::env::var("MAFS_TEST_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(rand::random);
    for round in 0..ROUNDS {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed.wrapping_add(round));
        let dev = Arc::new(CrashDevice::new(64 << 20));
        mkfs(&*dev, &MkfsOptions { slots: 2, journal_blocks: Some(1024), ..Default::default() }).expect("mkfs");
        let shared: Arc<dyn BlockDevice> = dev.clone();
        let nodes = [Node::mount(&shared, &endpoint, &format!("a{round}")), Node::mount(&shared, &endpoint, &format!("b{round}"))];
        let mut m = Model::default();
        let steps = rng.gen_range(5..120);
        for _ in 0..steps {
            let n = &nodes[rng.gen_range(0..2)];
            n.write(|fs| step(fs, &mut m, &mut rng));
        }
        let pending = dev.pending_writes();
        let img = dev.crash_image(|_| rng.gen_bool(0.5));
        let what = format!("seed {seed} round {round} (cut after {steps} steps, {pending} writes unflushed)");
        check(recover(img, 2), &m, &what);
    }
}
