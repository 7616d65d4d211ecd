//! Crash consistency at the block layer: a seeded random workload runs on `Fs` over a
//! `CrashDevice`; at many points the power is cut (every unflushed write dropped, or a random
//! subset of them kept), and the image is checked:
//!
//! - `fsck` finds no problem in the raw image (it replays the journal itself);
//! - the image mounts (journal replay), and its namespace, file sizes and extended attributes
//!   equal the model state after some operation between the last sync and the cut;
//! - every file that was synced and not changed since has exactly its synced content (and every
//!   symlink its target);
//! - the recovered filesystem takes new work, closes cleanly and passes fsck again.
//!
//! A second test injects write errors (`CrashDevice::fail_writes_after`) and checks that the
//! operations fail cleanly, the journal latches the error, and the image still recovers.
//!
//! Power cuts happen between operations (taken live from the `CrashDevice`) and, after the
//! workload, at random past writes (rebuilt from a log of every write and flush), which lands
//! them in the middle of operations, commits and journal wraps.
//!
//! Environment knobs (for longer runs and for reducing a failure): `MAFS_CRASH_SEED=n` runs
//! only that seed, `MAFS_CRASH_SEEDS=a-b` a range; `MAFS_CRASH_OPS=n` operations per seed;
//! `MAFS_CRASH_INNER_CUTS=n` cuts at past writes per seed; `MAFS_CRASH_VERBOSE=1` prints the
//! operation log.
use mafs_core::device::{BlockDevice, CrashDevice};
use mafs_core::filesystem::attr::XattrSet;
use mafs_core::filesystem::namespace::NewNode;
use mafs_core::filesystem::rename::{RENAME_EXCHANGE, RENAME_NOREPLACE};
use mafs_core::filesystem::{Caller, FallocMode, Fs, SetAttr};
use mafs_core::format::InodeNo;
use mafs_core::fsck;
use mafs_core::mkfs::{mkfs, MkfsOptions};
use mafs_core::volume::Volume;
use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

mod common;
use common::{Event, LogDevice};

const ROOT_CALLER: Caller = Caller::ROOT;
const INLINE_LIMIT: u64 = 4096 - 256;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    File,
    Dir,
    Symlink,
}

/// Extended attributes: name -> value.
type Xattrs = BTreeMap<Vec<u8>, Vec<u8>>;

/// The metadata that must be atomic: compared as a whole with the recovered volume.
#[derive(Clone, Default, PartialEq, Eq, Debug)]
struct Meta {
    /// (directory, name) -> inode.
    names: BTreeMap<(InodeNo, Vec<u8>), InodeNo>,
    /// Regular files reachable by a name: size and extended attributes.
    files: BTreeMap<InodeNo, (u64, Xattrs)>,
}

impl Meta {
    fn diff(&self, other: &Meta) -> String {
        let mut out = Vec::new();
        for (k, v) in &self.names {
            match other.names.get(k) {
                None => out.push(format!("name {}/{} -> {} missing", k.0, String::from_utf8_lossy(&k.1), v)),
                Some(w) if w != v => out.push(format!("name {}/{} -> {} but found {}", k.0, String::from_utf8_lossy(&k.1), v, w)),
                _ => {}
            }
        }
        for (k, v) in &other.names {
            if !self.names.contains_key(k) {
                out.push(format!("unexpected name {}/{} -> {}", k.0, String::from_utf8_lossy(&k.1), v));
            }
        }
        for (ino, (sz, x)) in &self.files {
            match other.files.get(ino) {
                None => out.push(format!("file {ino} missing")),
                Some((s2, x2)) => {
                    if s2 != sz {
                        out.push(format!("file {ino}: size {sz} expected, found {s2}"));
                    }
                    if x2 != x {
                        out.push(format!("file {ino}: xattrs differ ({} expected, {} found)", x.len(), x2.len()));
                    }
                }
            }
        }
        out.truncate(12);
        out.join("; ")
    }
}

struct Model {
    meta: Meta,
    kind: HashMap<InodeNo, Kind>,
    nlink: HashMap<InodeNo, u32>,
    /// Regular files (linked or open-unlinked) and symlink targets.
    content: HashMap<InodeNo, Vec<u8>>,
    dir_parent: HashMap<InodeNo, InodeNo>,
    root: InodeNo,
    lost_found: InodeNo,
    /// Open handles of unlinked files.
    open_unlinked: Vec<InodeNo>,
    next_name: u64,
    /// Files changed only by truncates since the last sync: every content they had since.
    trunc_hist: HashMap<InodeNo, Vec<Arc<Vec<u8>>>>,
}

impl Model {
    fn dirs(&self) -> Vec<InodeNo> {
        let mut v: Vec<InodeNo> = self.dir_parent.keys().copied().filter(|d| *d != self.lost_found).collect();
        v.sort_unstable();
        v
    }
    fn children(&self, d: InodeNo) -> Vec<(Vec<u8>, InodeNo)> {
        self.meta.names.range((d, Vec::new())..(InodeNo(d.get() + 1), Vec::new())).map(|((_, n), i)| (n.clone(), *i)).collect()
    }
    /// Every (dir, name, ino) but lost+found.
    fn all_names(&self) -> Vec<(InodeNo, Vec<u8>, InodeNo)> {
        self.meta.names.iter().filter(|(_, i)| **i != self.lost_found).map(|((d, n), i)| (*d, n.clone(), *i)).collect()
    }
    fn is_ancestor(&self, anc: InodeNo, mut d: InodeNo) -> bool {
        loop {
            if d == anc {
                return true;
            }
            if d == self.root {
                return false;
            }
            d = self.dir_parent[&d];
        }
    }
    fn fresh_name(&mut self, prefix: &str) -> Vec<u8> {
        self.next_name += 1;
        format!("{prefix}{}", self.next_name).into_bytes()
    }
    fn total_bytes(&self) -> u64 {
        self.content.values().map(|c| c.len() as u64).sum()
    }
    fn set_size(&mut self, ino: InodeNo) {
        let sz = self.content[&ino].len() as u64;
        if let Some(f) = self.meta.files.get_mut(&ino) {
            f.0 = sz;
        }
    }
    /// One name of `ino` went away.
    fn drop_link(&mut self, ino: InodeNo, dirty: &mut HashSet<InodeNo>) {
        match self.kind[&ino] {
            Kind::Dir => {
                self.dir_parent.remove(&ino);
                self.kind.remove(&ino);
                self.nlink.remove(&ino);
            }
            _ => {
                let n = self.nlink.get_mut(&ino).unwrap();
                *n -= 1;
                if *n == 0 {
                    self.meta.files.remove(&ino);
                    self.nlink.remove(&ino);
                    self.trunc_hist.remove(&ino);
                    dirty.insert(ino);
                    if !self.open_unlinked.contains(&ino) {
                        self.content.remove(&ino);
                        self.kind.remove(&ino);
                    }
                }
            }
        }
    }
}

/// Reads the whole namespace of a mounted filesystem.
fn scan_fs(fs: &Fs) -> Result<Meta, String> {
    let mut meta = Meta::default();
    let mut stack = vec![fs.root()];
    let mut seen = HashSet::new();
    while let Some(d) = stack.pop() {
        if !seen.insert(d) {
            return Err(format!("directory {d} reached twice"));
        }
        let mut ents = Vec::new();
        fs.readdir(d, 0, &mut |ino, dt, name, _| {
            if name != b"." && name != b".." {
                ents.push((ino, dt, name.to_vec()));
            }
            true
        })
        .map_err(|e| format!("readdir {d}: {e}"))?;
        for (ino, dt, name) in ents {
            meta.names.insert((d, name.clone()), ino);
            let a = fs.getattr(ino).map_err(|e| format!("getattr {ino} ({}): {e}", String::from_utf8_lossy(&name)))?;
            if dt == libc::DT_DIR {
                if !a.is_dir() {
                    return Err(format!("entry {} says dir, inode {ino} is not", String::from_utf8_lossy(&name)));
                }
                stack.push(ino);
            } else if dt == libc::DT_REG {
                if !a.is_reg() {
                    return Err(format!("entry {} says file, inode {ino} is not", String::from_utf8_lossy(&name)));
                }
                let mut x = BTreeMap::new();
                let list = fs.listxattr(ino).map_err(|e| format!("listxattr {ino}: {e}"))?;
                for n in list.split(|b| *b == 0).filter(|n| !n.is_empty()) {
                    let v = fs.getxattr(ino, n).map_err(|e| format!("getxattr {ino}: {e}"))?;
                    x.insert(n.to_vec(), v);
                }
                meta.files.insert(ino, (a.size, x));
            }
        }
    }
    Ok(meta)
}

fn new_volume(size: u64, journal_blocks: u32) -> Arc<CrashDevice> {
    let dev = Arc::new(CrashDevice::new(size));
    mkfs(&*dev, &MkfsOptions { slots: 2, journal_blocks: Some(journal_blocks), ..Default::default() }).expect("mkfs");
    dev
}

fn mount(dev: Arc<dyn BlockDevice>, cache: usize) -> mafs_core::error::Result<Fs> {
    Fs::new(Volume::open(dev, 0, "crash-test", cache)?)
}

fn fsck_clean(img: Vec<u8>, what: &str) -> Result<(), String> {
    let dev: Arc<dyn BlockDevice> = Arc::new(CrashDevice::from_image(img));
    let rep = fsck::check(dev, false).map_err(|e| format!("{what}: fsck failed to run: {e}"))?;
    if rep.exit_code() != 0 {
        return Err(format!("{what}: fsck exit {}: {:?}", rep.exit_code(), rep.problems));
    }
    Ok(())
}

#[derive(Clone, Default)]
struct Synced {
    /// Content of every linked regular file and symlink at the last sync.
    content: HashMap<InodeNo, Vec<u8>>,
    symlinks: HashSet<InodeNo>,
}

/// Checks one crash image against the history since the last sync.
type TruncHist = HashMap<InodeNo, Vec<Arc<Vec<u8>>>>;

fn check_image(
    img: Vec<u8>,
    history: &[Meta],
    synced: &Synced,
    dirty: &HashSet<InodeNo>,
    trunc: &TruncHist,
    what: &str,
) -> Result<(), String> {
    fsck_clean(img.clone(), &format!("{what} (raw image)"))?;
    let dev = Arc::new(CrashDevice::from_image(img));
    let fs = mount(dev.clone(), 4096).map_err(|e| format!("{what}: mount failed: {e}"))?;
    let got = scan_fs(&fs).map_err(|e| format!("{what}: {e}"))?;
    if !history.contains(&got) {
        let (best, _) = history.iter().enumerate().min_by_key(|(_, m)| m.diff(&got).len()).unwrap();
        return Err(format!(
            "{what}: recovered namespace matches no state since the last sync ({} candidates); closest is {} ops after the sync: {}",
            history.len(),
            best,
            history[best].diff(&got)
        ));
    }
    // Synced, untouched files and symlinks: exact content.
    for (&ino, want) in &synced.content {
        if dirty.contains(&ino) {
            continue;
        }
        let a = fs.getattr(ino).map_err(|e| format!("{what}: synced inode {ino}: {e}"))?;
        let data = if synced.symlinks.contains(&ino) {
            fs.readlink(ino).map_err(|e| format!("{what}: readlink {ino}: {e}"))?
        } else {
            fs.read(ino, 0, (want.len() + 4096) as u32).map_err(|e| format!("{what}: read {ino}: {e}"))?
        };
        if a.size != want.len() as u64 || data != *want {
            let first = data.iter().zip(want.iter()).position(|(a, b)| a != b);
            return Err(format!(
                "{what}: synced file {ino} (not changed since): size {} content differs (want {} bytes, got {}, first difference at {:?})",
                a.size,
                want.len(),
                data.len(),
                first
            ));
        }
    }
    // A synced file changed since only by truncates (and allocating fallocates) holds one of
    // the contents it had: an operation that did not commit must not have changed any byte
    // below the old size.
    for (ino, versions) in trunc {
        let Some((size, _)) = got.files.get(ino) else { continue };
        let data = fs.read(*ino, 0, *size as u32).map_err(|e| format!("{what}: read {ino}: {e}"))?;
        if !versions.iter().any(|v| **v == data) {
            let same = versions.iter().find(|v| v.len() == data.len());
            let first = same.and_then(|v| v.iter().zip(data.iter()).position(|(a, b)| a != b));
            return Err(format!(
                "{what}: file {ino}, changed only by truncates and allocating fallocates since the last sync (sizes {:?}), recovered with size {} and content that it never had (first difference from the state of that size at byte {:?})",
                versions.iter().map(|v| v.len()).collect::<Vec<_>>(),
                data.len(),
                first
            ));
        }
    }
    // Every file is readable up to its size.
    for (&ino, (sz, _)) in &got.files {
        let d = fs.read(ino, 0, *sz as u32).map_err(|e| format!("{what}: read {ino}: {e}"))?;
        if d.len() as u64 != *sz {
            return Err(format!("{what}: file {ino}: read {} bytes of {sz}", d.len()));
        }
    }
    // A second power cut right after the recovery's first commit (which finishes reclaiming
    // orphans) also leaves a clean volume.
    fs.commit().map_err(|e| format!("{what}: first commit after recovery: {e}"))?;
    let keep_all = what.len().is_multiple_of(2);
    fsck_clean(dev.crash_image(|_| keep_all), &format!("{what}, then a second cut after recovery"))?;
    // The recovered volume takes new work and closes clean.
    let f = fs.create(fs.root(), b"after-crash", NewNode { mode: libc::S_IFREG | 0o644, rdev: 0, symlink_target: None }, ROOT_CALLER);
    let f = f.map_err(|e| format!("{what}: create after recovery: {e}"))?;
    fs.write(f.ino, 0, &vec![7u8; 20000]).map_err(|e| format!("{what}: write after recovery: {e}"))?;
    fs.sync().map_err(|e| format!("{what}: sync after recovery: {e}"))?;
    fs.close().map_err(|e| format!("{what}: close after recovery: {e}"))?;
    drop(fs);
    // Closed cleanly: what a reader sees is what is durable.
    let rep = fsck::check(dev, false).map_err(|e| format!("{what}: fsck after recovery failed to run: {e}"))?;
    if rep.exit_code() != 0 {
        return Err(format!("{what} (after recovery and clean close): fsck exit {}: {:?}", rep.exit_code(), rep.problems));
    }
    Ok(())
}

struct Run {
    seed: u64,
    ops: usize,
    cut_every: u32,
    /// Power cuts at random past writes, checked after the workload.
    replay_cuts: usize,
    cache: usize,
    verbose: bool,
}

#[derive(Default)]
struct Stats {
    ops: usize,
    cuts: usize,
    replay_cuts: usize,
    syncs: usize,
    wraps: usize,
    writes_before: u64,
    flushes: u64,
}

fn pick<T: Clone>(rng: &mut StdRng, v: &[T]) -> Option<T> {
    if v.is_empty() {
        None
    } else {
        Some(v[rng.gen_range(0..v.len())].clone())
    }
}

fn random_bytes(rng: &mut StdRng, n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    rng.fill_bytes(&mut v);
    v
}

fn run_seed(r: &Run) -> Result<Stats, String> {
    let dev = Arc::new(LogDevice::new(32 << 20));
    mkfs(&*dev, &MkfsOptions { slots: 2, journal_blocks: Some(256), ..Default::default() }).map_err(|e| format!("mkfs: {e}"))?;
    let fs = mount(dev.clone(), r.cache).map_err(|e| format!("mount: {e}"))?;
    let mut rng = StdRng::seed_from_u64(r.seed);
    let mut cut_rng = StdRng::seed_from_u64(r.seed ^ 0x5eed_c0de);
    let root = fs.root();
    let initial = scan_fs(&fs)?;
    let lost_found = *initial.names.get(&(root, b"lost+found".to_vec())).ok_or("no lost+found")?;
    let mut m = Model {
        meta: initial.clone(),
        kind: HashMap::from([(root, Kind::Dir), (lost_found, Kind::Dir)]),
        nlink: HashMap::new(),
        content: HashMap::new(),
        dir_parent: HashMap::from([(root, root), (lost_found, root)]),
        root,
        lost_found,
        open_unlinked: Vec::new(),
        next_name: 0,
        trunc_hist: HashMap::new(),
    };
    let mut synced = Synced::default();
    let mut history = vec![initial];
    let mut dirty: HashSet<InodeNo> = HashSet::new();
    let mut log: Vec<String> = Vec::new();
    let mut st = Stats::default();
    let mut last_tail = fs.vol.journal.slot().tail_seq;
    let fail = |log: &[String], i: usize, e: String| -> String {
        let tail: Vec<&String> = log.iter().rev().take(25).rev().collect();
        format!(
            "seed {} op {i}: {e}\n  last operations:\n    {}",
            r.seed,
            tail.iter().map(|s| s.as_str()).collect::<Vec<_>>().join("\n    ")
        )
    };

    // Per operation: its first and past-the-last event, whether it made everything durable,
    // and the inodes changed since the last sync as of its end.
    let mut ops_rec: Vec<OpRec> = Vec::new();
    // Every namespace state, tagged with the operation after (or during) which it held.
    let mut history_all: Vec<(i64, Meta)> = vec![(-1, history[0].clone())];
    let mut sync_snaps: HashMap<i64, Synced> = HashMap::from([(-1, Synced::default())]);
    for i in 0..r.ops {
        let ev_start = dev.events();
        let files: Vec<InodeNo> = {
            let mut v: Vec<InodeNo> = m.meta.files.keys().copied().collect();
            v.extend(m.open_unlinked.iter().copied());
            v.sort_unstable();
            v.dedup();
            v
        };
        let dirs = m.dirs();
        let big = m.total_bytes() > 8 << 20;
        let roll = rng.gen_range(0..100);
        let mut desc = String::from("nop");
        let mut burst_states: Vec<Meta> = Vec::new();
        let res: mafs_core::error::Result<()> = (|| {
            match roll {
                // a burst of small files (bigger transactions, forced commits, journal wraps)
                0..=1 => {
                    let d = pick(&mut rng, &dirs).unwrap();
                    let count = rng.gen_range(10..40);
                    for _ in 0..count {
                        let name = m.fresh_name("b");
                        let ino =
                            fs.create(d, &name, NewNode { mode: libc::S_IFREG | 0o600, rdev: 0, symlink_target: None }, ROOT_CALLER)?.ino;
                        m.meta.names.insert((d, name.clone()), ino);
                        m.meta.files.insert(ino, (0, BTreeMap::new()));
                        m.kind.insert(ino, Kind::File);
                        m.nlink.insert(ino, 1);
                        dirty.insert(ino);
                        // Create and write are two transactions' worth of change: each
                        // intermediate state is one the volume may recover to.
                        burst_states.push(m.meta.clone());
                        let n = rng.gen_range(1..2000);
                        let data = random_bytes(&mut rng, n);
                        fs.write(ino, 0, &data)?;
                        m.content.insert(ino, data);
                        m.set_size(ino);
                        burst_states.push(m.meta.clone());
                    }
                    desc = format!("burst of {count} files in {d}");
                }
                // create a file, often with content
                2..=11 => {
                    let d = pick(&mut rng, &dirs).unwrap();
                    let name = m.fresh_name("f");
                    let ino = fs.create(d, &name, NewNode { mode: libc::S_IFREG | 0o644, rdev: 0, symlink_target: None }, ROOT_CALLER)?.ino;
                    m.meta.names.insert((d, name.clone()), ino);
                    m.meta.files.insert(ino, (0, BTreeMap::new()));
                    m.kind.insert(ino, Kind::File);
                    m.nlink.insert(ino, 1);
                    m.content.insert(ino, Vec::new());
                    dirty.insert(ino);
                    burst_states.push(m.meta.clone());
                    let n = match rng.gen_range(0..4) {
                        0 => 0,
                        1 => rng.gen_range(1..400),
                        2 => rng.gen_range(3000..5000),
                        _ => rng.gen_range(5000..200_000),
                    };
                    if n > 0 {
                        let data = random_bytes(&mut rng, n);
                        fs.write(ino, 0, &data)?;
                        m.content.insert(ino, data);
                        m.set_size(ino);
                    }
                    desc = format!("create {d}/{} -> {ino} with {n} bytes", String::from_utf8_lossy(&name));
                }
                // write somewhere in a file
                12..=33 => {
                    let Some(ino) = pick(&mut rng, &files) else { return Ok(()) };
                    let size = m.content[&ino].len() as u64;
                    let (off, len) = match rng.gen_range(0..10) {
                        0..=3 => (rng.gen_range(0..size.min(3000) + 100), rng.gen_range(1..300)),
                        4..=6 => (rng.gen_range(0..size + 8192), rng.gen_range(1..16384)),
                        7..=8 => (rng.gen_range(0..size + 65536), rng.gen_range(16384..262_144)),
                        _ if !big => (rng.gen_range(0..size + (1 << 20)), rng.gen_range(262_144..1 << 20)),
                        _ => (rng.gen_range(0..size + 1), rng.gen_range(1..4096)),
                    };
                    let data = random_bytes(&mut rng, len as usize);
                    fs.write(ino, off, &data)?;
                    let c = m.content.get_mut(&ino).unwrap();
                    if c.len() < (off + len) as usize {
                        c.resize((off + len) as usize, 0);
                    }
                    c[off as usize..(off + len) as usize].copy_from_slice(&data);
                    m.set_size(ino);
                    dirty.insert(ino);
                    m.trunc_hist.remove(&ino);
                    desc = format!("write {ino} off {off} len {len}");
                }
                // truncate
                34..=41 => {
                    let Some(ino) = pick(&mut rng, &files) else { return Ok(()) };
                    let size = m.content[&ino].len() as u64;
                    let new = match rng.gen_range(0..5) {
                        0 => 0,
                        1 => rng.gen_range(0..INLINE_LIMIT + 10),
                        2 if !big => size + rng.gen_range(1..300_000),
                        _ => rng.gen_range(0..size + 1),
                    };
                    fs.setattr(ino, &SetAttr { size: Some(new), ..Default::default() })?;
                    let only_truncated = !dirty.contains(&ino) || m.trunc_hist.contains_key(&ino);
                    if only_truncated && !m.trunc_hist.contains_key(&ino) {
                        let old = Arc::new(m.content[&ino].clone());
                        m.trunc_hist.insert(ino, vec![old]);
                    }
                    m.content.get_mut(&ino).unwrap().resize(new as usize, 0);
                    if only_truncated {
                        let now = Arc::new(m.content[&ino].clone());
                        m.trunc_hist.get_mut(&ino).unwrap().push(now);
                    }
                    m.set_size(ino);
                    dirty.insert(ino);
                    desc = format!("truncate {ino} {size} -> {new}");
                }
                // rename
                42..=51 => {
                    let names = m.all_names();
                    let Some((sd, sn, sino)) = pick(&mut rng, &names) else { return Ok(()) };
                    let dd = pick(&mut rng, &dirs).unwrap();
                    let skind = m.kind[&sino];
                    if skind == Kind::Dir && m.is_ancestor(sino, dd) {
                        return Ok(());
                    }
                    let existing: Vec<(Vec<u8>, InodeNo)> =
                        m.children(dd).into_iter().filter(|(n, i)| *i != m.lost_found && !(dd == sd && *n == sn)).collect();
                    let target = if rng.gen_bool(0.4) { pick(&mut rng, &existing) } else { None };
                    match target {
                        None => {
                            let dn = m.fresh_name("r");
                            let flags = if rng.gen_bool(0.3) { RENAME_NOREPLACE } else { 0 };
                            fs.rename(sd, &sn, dd, &dn, flags)?;
                            m.meta.names.remove(&(sd, sn.clone()));
                            m.meta.names.insert((dd, dn.clone()), sino);
                            if skind == Kind::Dir {
                                m.dir_parent.insert(sino, dd);
                            }
                            desc = format!(
                                "rename {sd}/{} -> {dd}/{} (new name, flags {flags})",
                                String::from_utf8_lossy(&sn),
                                String::from_utf8_lossy(&dn)
                            );
                        }
                        Some((dn, dino)) => {
                            let dkind = m.kind[&dino];
                            if dino == sino {
                                return Ok(());
                            }
                            let exchange = rng.gen_bool(0.3)
                                && !(skind == Kind::Dir && m.is_ancestor(sino, dd))
                                && !(dkind == Kind::Dir && m.is_ancestor(dino, sd));
                            if exchange {
                                fs.rename(sd, &sn, dd, &dn, RENAME_EXCHANGE)?;
                                m.meta.names.insert((sd, sn.clone()), dino);
                                m.meta.names.insert((dd, dn.clone()), sino);
                                if skind == Kind::Dir {
                                    m.dir_parent.insert(sino, dd);
                                }
                                if dkind == Kind::Dir {
                                    m.dir_parent.insert(dino, sd);
                                }
                                desc = format!(
                                    "rename-exchange {sd}/{} ({sino}) <-> {dd}/{} ({dino})",
                                    String::from_utf8_lossy(&sn),
                                    String::from_utf8_lossy(&dn)
                                );
                            } else {
                                let ok = match (skind, dkind) {
                                    (Kind::Dir, Kind::Dir) => m.children(dino).is_empty(),
                                    (Kind::Dir, _) | (_, Kind::Dir) => false,
                                    _ => true,
                                };
                                if !ok {
                                    return Ok(());
                                }
                                fs.rename(sd, &sn, dd, &dn, 0)?;
                                m.meta.names.remove(&(sd, sn.clone()));
                                m.meta.names.insert((dd, dn.clone()), sino);
                                if skind == Kind::Dir {
                                    m.dir_parent.insert(sino, dd);
                                }
                                m.drop_link(dino, &mut dirty);
                                desc = format!(
                                    "rename {sd}/{} ({sino}) over {dd}/{} ({dino})",
                                    String::from_utf8_lossy(&sn),
                                    String::from_utf8_lossy(&dn)
                                );
                            }
                        }
                    }
                }
                // unlink a non-directory
                52..=58 => {
                    let names: Vec<_> = m.all_names().into_iter().filter(|(_, _, i)| m.kind[i] != Kind::Dir).collect();
                    let Some((d, n, ino)) = pick(&mut rng, &names) else { return Ok(()) };
                    fs.unlink(d, &n, false)?;
                    m.meta.names.remove(&(d, n.clone()));
                    m.drop_link(ino, &mut dirty);
                    desc = format!("unlink {d}/{} ({ino})", String::from_utf8_lossy(&n));
                }
                // mkdir
                59..=64 => {
                    let d = pick(&mut rng, &dirs).unwrap();
                    let name = m.fresh_name("d");
                    let ino = fs.create(d, &name, NewNode { mode: libc::S_IFDIR | 0o755, rdev: 0, symlink_target: None }, ROOT_CALLER)?.ino;
                    m.meta.names.insert((d, name.clone()), ino);
                    m.kind.insert(ino, Kind::Dir);
                    m.dir_parent.insert(ino, d);
                    desc = format!("mkdir {d}/{} -> {ino}", String::from_utf8_lossy(&name));
                }
                // rmdir an empty directory
                65..=67 => {
                    let empty: Vec<InodeNo> = dirs.iter().copied().filter(|&x| x != root && m.children(x).is_empty()).collect();
                    let Some(ino) = pick(&mut rng, &empty) else { return Ok(()) };
                    let (d, n) = m.meta.names.iter().find(|(_, i)| **i == ino).map(|(k, _)| k.clone()).unwrap();
                    fs.unlink(d, &n, true)?;
                    m.meta.names.remove(&(d, n.clone()));
                    m.drop_link(ino, &mut dirty);
                    desc = format!("rmdir {d}/{} ({ino})", String::from_utf8_lossy(&n));
                }
                // hard link
                68..=72 => {
                    let linked: Vec<InodeNo> = m.meta.files.keys().copied().collect();
                    let Some(ino) = pick(&mut rng, &linked) else { return Ok(()) };
                    let d = pick(&mut rng, &dirs).unwrap();
                    let name = m.fresh_name("l");
                    fs.link(ino, d, &name)?;
                    m.meta.names.insert((d, name.clone()), ino);
                    *m.nlink.get_mut(&ino).unwrap() += 1;
                    desc = format!("link {ino} as {d}/{}", String::from_utf8_lossy(&name));
                }
                // symlink
                73..=74 => {
                    let d = pick(&mut rng, &dirs).unwrap();
                    let name = m.fresh_name("s");
                    let len = if rng.gen_bool(0.8) { rng.gen_range(1..100) } else { rng.gen_range(100..4000) };
                    let target: Vec<u8> = (0..len).map(|_| b'a' + rng.gen_range(0..26u8)).collect();
                    let ino = fs
                        .create(d, &name, NewNode { mode: libc::S_IFLNK | 0o777, rdev: 0, symlink_target: Some(&target) }, ROOT_CALLER)?
                        .ino;
                    m.meta.names.insert((d, name.clone()), ino);
                    m.kind.insert(ino, Kind::Symlink);
                    m.nlink.insert(ino, 1);
                    m.content.insert(ino, target);
                    dirty.insert(ino);
                    desc = format!("symlink {d}/{} -> {ino} ({len} bytes)", String::from_utf8_lossy(&name));
                }
                // fallocate: allocate, punch hole, zero range
                75..=82 => {
                    let Some(ino) = pick(&mut rng, &files) else { return Ok(()) };
                    let size = m.content[&ino].len() as u64;
                    let off = rng.gen_range(0..size + 65536);
                    let len = rng.gen_range(1..262_144u64);
                    let end = off + len;
                    let kind = rng.gen_range(0..3);
                    let keep = kind == 1 || rng.gen_bool(0.5);
                    let mode = FallocMode { keep_size: keep, punch_hole: kind == 1, zero_range: kind == 2 };
                    fs.fallocate(ino, off, len, mode)?;
                    // Allocating never changes a byte of the file: like a truncate, it keeps
                    // the file in the "changed only in size" history.
                    let size_only = kind == 0 && (!dirty.contains(&ino) || m.trunc_hist.contains_key(&ino));
                    if size_only && !m.trunc_hist.contains_key(&ino) {
                        let old = Arc::new(m.content[&ino].clone());
                        m.trunc_hist.insert(ino, vec![old]);
                    }
                    let c = m.content.get_mut(&ino).unwrap();
                    if kind != 0 {
                        let s = (off as usize).min(c.len());
                        let e = (end as usize).min(c.len());
                        c[s..e].fill(0);
                    }
                    if !keep && c.len() < end as usize {
                        c.resize(end as usize, 0);
                    }
                    m.set_size(ino);
                    dirty.insert(ino);
                    if size_only {
                        let now = Arc::new(m.content[&ino].clone());
                        m.trunc_hist.get_mut(&ino).unwrap().push(now);
                    } else {
                        m.trunc_hist.remove(&ino);
                    }
                    desc = format!("fallocate {ino} off {off} len {len} {:?}", mode);
                }
                // extended attributes
                83..=88 => {
                    let linked: Vec<InodeNo> = m.meta.files.keys().copied().collect();
                    let Some(ino) = pick(&mut rng, &linked) else { return Ok(()) };
                    let key = format!("user.k{}", rng.gen_range(0..6)).into_bytes();
                    let x = &mut m.meta.files.get_mut(&ino).unwrap().1;
                    if x.contains_key(&key) && rng.gen_bool(0.4) {
                        fs.setxattr(ino, &key, None, XattrSet::Any)?;
                        x.remove(&key);
                        desc = format!("removexattr {ino} {}", String::from_utf8_lossy(&key));
                    } else {
                        let n = rng.gen_range(0..300);
                        let v = random_bytes(&mut rng, n);
                        fs.setxattr(ino, &key, Some(&v), XattrSet::Any)?;
                        m.meta.files.get_mut(&ino).unwrap().1.insert(key.clone(), v);
                        desc = format!("setxattr {ino} {} ({n} bytes)", String::from_utf8_lossy(&key));
                    }
                }
                // open a file and unlink its last name while it stays open
                89..=90 => {
                    let single: Vec<(InodeNo, Vec<u8>, InodeNo)> = m
                        .all_names()
                        .into_iter()
                        .filter(|(_, _, i)| m.kind[i] == Kind::File && m.nlink[i] == 1 && !m.open_unlinked.contains(i))
                        .collect();
                    let Some((d, n, ino)) = pick(&mut rng, &single) else { return Ok(()) };
                    fs.open(ino)?;
                    m.open_unlinked.push(ino);
                    fs.unlink(d, &n, false)?;
                    m.meta.names.remove(&(d, n.clone()));
                    m.drop_link(ino, &mut dirty);
                    desc = format!("open+unlink {d}/{} ({ino})", String::from_utf8_lossy(&n));
                }
                // close an unlinked file
                91..=92 => {
                    if m.open_unlinked.is_empty() {
                        return Ok(());
                    }
                    let ino = m.open_unlinked.remove(rng.gen_range(0..m.open_unlinked.len()));
                    fs.release(ino)?;
                    m.content.remove(&ino);
                    m.kind.remove(&ino);
                    desc = format!("release unlinked {ino}");
                }
                // the mount's periodic commit: durable like a sync
                93..=96 => {
                    fs.commit()?;
                    desc = "commit".into();
                }
                // sync
                _ => {
                    fs.sync()?;
                    desc = "sync".into();
                }
            }
            Ok(())
        })();
        log.push(format!("#{i} {desc}"));
        if r.verbose {
            eprintln!("seed {} #{i} {desc}", r.seed);
        }
        if let Err(e) = res {
            return Err(fail(&log, i, format!("operation failed: {e} ({desc})")));
        }
        st.ops += 1;
        let tail = fs.vol.journal.slot().tail_seq;
        if tail != last_tail {
            last_tail = tail;
            st.wraps += 1;
        }
        if desc == "sync" || desc == "commit" {
            st.syncs += 1;
            // Check the live filesystem against the model while we are at it.
            for (ino, c) in &m.content {
                let got = if m.kind[ino] == Kind::Symlink { fs.readlink(*ino) } else { fs.read(*ino, 0, c.len() as u32 + 4096) };
                let got = got.map_err(|e| fail(&log, i, format!("live read of {ino}: {e}")))?;
                if got != *c {
                    return Err(fail(
                        &log,
                        i,
                        format!("live content of {ino} differs from the model before any crash ({} vs {} bytes)", got.len(), c.len()),
                    ));
                }
            }
            let live = scan_fs(&fs).map_err(|e| fail(&log, i, e))?;
            if live != m.meta {
                return Err(fail(&log, i, format!("live namespace differs from the model before any crash: {}", m.meta.diff(&live))));
            }
            synced.content = m
                .content
                .iter()
                .filter(|(ino, _)| !m.open_unlinked.contains(ino) || m.nlink.contains_key(ino))
                .map(|(k, v)| (*k, v.clone()))
                .collect();
            synced.symlinks = m.kind.iter().filter(|(_, k)| **k == Kind::Symlink).map(|(i, _)| *i).collect();
            sync_snaps.insert(i as i64, synced.clone());
            dirty.clear();
            m.trunc_hist.clear();
            history.clear();
        }
        history_all.extend(burst_states.iter().map(|b| (i as i64, b.clone())));
        history_all.push((i as i64, m.meta.clone()));
        ops_rec.push((ev_start, dev.events(), desc == "sync" || desc == "commit", dirty.clone(), m.trunc_hist.clone()));
        history.append(&mut burst_states);
        history.push(m.meta.clone());

        if cut_rng.gen_range(0..r.cut_every) == 0 || i + 1 == r.ops {
            st.cuts += 1;
            let pending = dev.inner.pending_writes();
            let img_a = dev.inner.crash_image(|_| false);
            check_image(
                img_a,
                &history,
                &synced,
                &dirty,
                &m.trunc_hist,
                &format!("cut after op {i}, unflushed writes dropped ({pending} pending)"),
            )
            .map_err(|e| fail(&log, i, e))?;
            if pending > 0 {
                let p = cut_rng.gen_range(1..10) as f64 / 10.0;
                let img_b = dev.inner.crash_image(|_| cut_rng.gen_bool(p));
                check_image(
                    img_b,
                    &history,
                    &synced,
                    &dirty,
                    &m.trunc_hist,
                    &format!("cut after op {i}, random subset (p={p}) of {pending} unflushed writes kept"),
                )
                .map_err(|e| fail(&log, i, e))?;
            }
        }
    }
    st.replay_cuts = replay_cuts(r, &dev, &ops_rec, &history_all, &sync_snaps, &mut cut_rng).map_err(|e| fail(&log, r.ops, e))?;
    let (w, f) = dev.inner.counters();
    st.writes_before = w;
    st.flushes = f;
    // A clean close after the workload leaves a clean volume with everything in it.
    fs.close().map_err(|e| format!("seed {}: close: {e}", r.seed))?;
    drop(fs);
    fsck_clean(dev.inner.crash_image(|_| false), &format!("seed {}: after clean close", r.seed))?;
    let fs2 = mount(Arc::new(CrashDevice::from_image(dev.inner.crash_image(|_| false))), 4096).map_err(|e| format!("remount: {e}"))?;
    let got = scan_fs(&fs2)?;
    if got != m.meta {
        return Err(format!("seed {}: after a clean close the namespace differs: {}", r.seed, m.meta.diff(&got)));
    }
    for (ino, c) in &m.content {
        if m.open_unlinked.contains(ino) && !m.nlink.contains_key(ino) {
            continue;
        }
        let got = if m.kind[ino] == Kind::Symlink { fs2.readlink(*ino) } else { fs2.read(*ino, 0, c.len() as u32 + 4096) };
        if got.as_ref().ok() != Some(c) {
            return Err(format!("seed {}: after a clean close file {ino} differs", r.seed));
        }
    }
    Ok(st)
}

/// Volume images are 32 MiB buffers allocated and freed by the hundred; keep glibc from
/// returning them to the kernel each time (page faults dominated the run time otherwise).
fn keep_big_allocations() {
    // SAFETY: plain libc tuning calls, made before the test allocates anything large.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 30);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
    }
}

/// Per operation: first and past-the-last write-log event, whether it made everything durable,
/// the inodes changed since the last sync and the truncate-only history, as of its end.
type OpRec = (usize, usize, bool, HashSet<InodeNo>, TruncHist);

/// Cuts the power at random past writes (anywhere, including in the middle of an operation or
/// a commit) and checks each image against the states possible at that point.
fn replay_cuts(
    r: &Run,
    dev: &LogDevice,
    ops_rec: &[OpRec],
    history_all: &[(i64, Meta)],
    sync_snaps: &HashMap<i64, Synced>,
    rng: &mut StdRng,
) -> Result<usize, String> {
    if ops_rec.is_empty() || r.replay_cuts == 0 {
        return Ok(0);
    }
    let log = dev.log.lock().unwrap();
    let first = ops_rec[0].0;
    let last = ops_rec.last().unwrap().1;
    let mut cuts: Vec<usize> = (0..r.replay_cuts).map(|_| rng.gen_range(first + 1..=last)).collect();
    cuts.sort_unstable();
    cuts.dedup();
    let mut durable = vec![0u8; dev.size() as usize];
    let mut applied = 0usize;
    for &e in &cuts {
        // Events [0, e) happened. Everything before the last flush among them is durable.
        let f = (0..e).rev().find(|&k| matches!(log[k], Event::Flush)).unwrap_or(0);
        for ev in &log[applied..f] {
            if let Event::Write(off, d) = ev {
                durable[*off as usize..*off as usize + d.len()].copy_from_slice(d);
            }
        }
        applied = applied.max(f);
        // The operation that wrote last before the cut, and the last sync that had completed.
        let i = ops_rec.iter().rposition(|o| o.0 < e).map(|x| x as i64).unwrap_or(-1);
        let s = (0..=i).rev().find(|&j| ops_rec[j as usize].2 && ops_rec[j as usize].1 <= e).unwrap_or(-1);
        let candidates: Vec<Meta> = history_all.iter().filter(|(k, _)| *k >= s && *k <= i).map(|(_, m)| m.clone()).collect();
        let mut dirty = HashSet::new();
        for j in (s + 1).max(0)..=i {
            dirty.extend(ops_rec[j as usize].3.iter().copied());
        }
        let mode = rng.gen_range(0..3);
        let p: f64 = rng.gen_range(0.0..1.0);
        let mut img = durable.clone();
        for ev in &log[f..e] {
            if let Event::Write(off, d) = ev {
                let keep = match mode {
                    0 => false,
                    1 => true,
                    _ => rng.gen_bool(p),
                };
                if keep {
                    img[*off as usize..*off as usize + d.len()].copy_from_slice(d);
                }
            }
        }
        let what = format!(
            "power cut at write event {e} (during/after op {i}, last completed sync op {s}), {} of the {} writes since the last flush kept",
            ["none", "all", "a random subset"][mode],
            log[f..e].iter().filter(|x| matches!(x, Event::Write(..))).count()
        );
        // The truncate-only history of op i holds if it is counted from the same sync.
        let latest_sync = (0..=i).rev().find(|&j| ops_rec[j as usize].2).unwrap_or(-1);
        let empty = TruncHist::new();
        let trunc = if i >= 0 && latest_sync == s { &ops_rec[i as usize].4 } else { &empty };
        check_image(img, &candidates, &sync_snaps[&s], &dirty, trunc, &what)?;
    }
    Ok(cuts.len())
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

#[test]
fn crash_at_many_points_recovers_to_a_consistent_state() {
    keep_big_allocations();
    let t0 = std::time::Instant::now();
    let verbose = std::env::var("MAFS_CRASH_VERBOSE").is_ok();
    let range = std::env::var("MAFS_CRASH_SEEDS").ok().and_then(|v| {
        let (a, b) = v.split_once('-')?;
        Some((a.parse::<u64>().ok()?, b.parse::<u64>().ok()?))
    });
    let seeds: Vec<u64> = match (env_u64("MAFS_CRASH_SEED"), range) {
        (Some(s), _) => vec![s],
        (None, Some((a, b))) => (a..=b).collect(),
        (None, None) => (1..=8).collect(),
    };
    let ops = env_u64("MAFS_CRASH_OPS").unwrap_or(250) as usize;
    let inner_cuts = env_u64("MAFS_CRASH_INNER_CUTS").unwrap_or(24) as usize;
    let mut failures = Vec::new();
    let mut total = Stats::default();
    for &seed in &seeds {
        // Odd seeds run with a tiny metadata cache so eviction and re-reads are exercised.
        let run = Run { seed, ops, cut_every: 5, replay_cuts: inner_cuts, cache: if seed % 2 == 1 { 256 } else { 4096 }, verbose };
        match run_seed(&run) {
            Ok(st) => {
                eprintln!(
                    "seed {seed}: {} ops, {} syncs/commits, {} journal wraps, {} cut points between operations, {} inside them, {} writes, {} flushes",
                    st.ops, st.syncs, st.wraps, st.cuts, st.replay_cuts, st.writes_before, st.flushes
                );
                total.ops += st.ops;
                total.cuts += st.cuts + st.replay_cuts;
                total.wraps += st.wraps;
            }
            Err(e) => {
                eprintln!("FAILED {e}");
                failures.push(e);
            }
        }
    }
    eprintln!(
        "{} seeds, {} ops, {} cut points, {} journal wraps, {:.1}s",
        seeds.len(),
        total.ops,
        total.cuts,
        total.wraps,
        t0.elapsed().as_secs_f64()
    );
    assert!(failures.len() == seeds.len() || seeds.len() == 1 || total.wraps > 0, "the workload never wrapped the journal");
    assert!(failures.is_empty(), "{} of {} seeds failed:\n{}", failures.len(), seeds.len(), failures.join("\n\n"));
}

/// Fault injection: the device starts failing every write after `n` more. The operation that
/// hits it (or the next commit) returns an error, never panics; once a commit has failed every
/// later change is refused; and the image after a power cut at that point recovers cleanly with
/// every synced file intact.
#[test]
fn write_errors_fail_operations_cleanly_and_the_image_recovers() {
    keep_big_allocations();
    let mut checked = 0;
    for (case, n) in [0u64, 1, 2, 3, 5, 8, 13, 21, 34, 55, 89, 144, 233].into_iter().enumerate() {
        let dev = new_volume(32 << 20, 256);
        let fs = mount(dev.clone(), 4096).expect("mount");
        let root = fs.root();
        let mk = |_name: &[u8]| NewNode { mode: libc::S_IFREG | 0o644, rdev: 0, symlink_target: None };
        // Synced baseline: a few files, one big, one inline.
        let mut synced: Vec<(InodeNo, Vec<u8>)> = Vec::new();
        let mut rng = StdRng::seed_from_u64(case as u64);
        for (k, len) in [300usize, 70_000, 1 << 20].into_iter().enumerate() {
            let name = format!("base{k}");
            let ino = fs.create(root, name.as_bytes(), mk(name.as_bytes()), ROOT_CALLER).unwrap().ino;
            let data = random_bytes(&mut rng, len);
            fs.write(ino, 0, &data).unwrap();
            synced.push((ino, data));
        }
        fs.sync().unwrap();
        dev.fail_writes_after(n);
        // Work until something fails.
        let mut first_err = None;
        for k in 0..200 {
            let name = format!("w{k}");
            let r = (|| {
                let ino = fs.create(root, name.as_bytes(), mk(name.as_bytes()), ROOT_CALLER)?.ino;
                fs.write(ino, 0, &vec![k as u8; 5000 + k * 300])?;
                fs.setxattr(ino, b"user.x", Some(b"value"), XattrSet::Any)?;
                if k % 3 == 2 {
                    fs.unlink(root, name.as_bytes(), false)?;
                }
                if k % 4 == 3 {
                    fs.sync()?;
                }
                Ok::<(), mafs_core::error::FsError>(())
            })();
            if let Err(e) = r {
                first_err = Some(e);
                break;
            }
        }
        let e = first_err.unwrap_or_else(|| panic!("case n={n}: no operation failed after writes started failing"));
        let errno = e.errno();
        assert!(errno == libc::EIO, "case n={n}: first error {e} maps to errno {errno}, want EIO");
        // A sync must fail now (nothing can reach the disk), and after that every change fails.
        let s = fs.sync();
        assert!(s.is_err(), "case n={n}: sync succeeded after a write error");
        for what in 0..4 {
            let r = match what {
                0 => fs.create(root, b"late", mk(b"late"), ROOT_CALLER).map(|_| ()),
                1 => fs.write(synced[0].0, 0, b"late write").map(|_| ()),
                2 => fs
                    .create(root, b"late-dir", NewNode { mode: libc::S_IFDIR | 0o755, rdev: 0, symlink_target: None }, ROOT_CALLER)
                    .map(|_| ()),
                _ => fs.sync(),
            };
            match r {
                Err(mafs_core::error::FsError::Stopped(_)) => {}
                Err(e) => panic!("case n={n}: change {what} after a failed commit returned {e}, want the latched Stopped error"),
                Ok(()) => panic!("case n={n}: change {what} succeeded after a failed commit"),
            }
        }
        // Reads still work from memory.
        assert_eq!(fs.read(synced[0].0, 0, 1 << 20).unwrap().len(), synced[0].1.len());
        // Power cut now: both images recover cleanly with the synced files intact.
        let mut keep_rng = StdRng::seed_from_u64(1000 + case as u64);
        for (label, img) in
            [("unflushed dropped", dev.crash_image(|_| false)), ("random subset kept", dev.crash_image(|_| keep_rng.gen_bool(0.5)))]
        {
            let what = format!("case n={n}, {label}");
            fsck_clean(img.clone(), &what).unwrap_or_else(|e| panic!("{e}"));
            let d2 = Arc::new(CrashDevice::from_image(img));
            let fs2 = mount(d2.clone(), 4096).unwrap_or_else(|e| panic!("{what}: mount: {e}"));
            for (ino, data) in &synced {
                let got = fs2.read(*ino, 0, data.len() as u32 + 1).unwrap_or_else(|e| panic!("{what}: read {ino}: {e}"));
                assert!(got == *data, "{what}: synced file {ino} differs after recovery");
            }
            scan_fs(&fs2).unwrap_or_else(|e| panic!("{what}: {e}"));
            fs2.close().unwrap();
            drop(fs2);
            fsck_clean(d2.crash_image(|_| false), &format!("{what}, after recovery")).unwrap_or_else(|e| panic!("{e}"));
            checked += 1;
        }
        drop(fs);
    }
    assert_eq!(checked, 26);
}

fn first_problems(rep: &fsck::Report) -> String {
    rep.problems.iter().take(8).map(|p| p.to_string()).collect::<Vec<_>>().join("; ")
}

/// A volume filled to the last block: every operation that needs space fails with ENOSPC (no
/// panic), nothing is left half done (fsck clean on the live state after a clean close and
/// after a power cut), and deleting files gives the space back.
#[test]
fn a_full_volume_fails_with_nospace_and_stays_consistent() {
    keep_big_allocations();
    let dev = new_volume(32 << 20, 256);
    let fs = mount(dev.clone(), 4096).expect("mount");
    let root = fs.root();
    let reg = || NewNode { mode: libc::S_IFREG | 0o644, rdev: 0, symlink_target: None };
    let mut rng = StdRng::seed_from_u64(5);
    let mut files: Vec<(Vec<u8>, InodeNo, u64)> = Vec::new();
    let mut nospace = 0;
    let mut other_errors = Vec::new();
    // Phase 1: big writes until the data runs out; phase 2: everything else that needs space.
    for k in 0..2000u32 {
        let name = format!("fill{k}").into_bytes();
        let r = (|| {
            let ino = fs.create(root, &name, reg(), ROOT_CALLER)?.ino;
            files.push((name.clone(), ino, 0));
            // Big writes until one runs out of space part way (it stops short), then writes of
            // at most one block.
            let len = if nospace == 0 { rng.gen_range(200_000..1_500_000) } else { rng.gen_range(1..4096) };
            let data = random_bytes(&mut rng, len);
            let n = fs.write(ino, 0, &data)?;
            files.last_mut().unwrap().2 = n as u64;
            if n < len {
                nospace += 1;
            }
            if k % 7 == 0 {
                fs.setxattr(ino, b"user.big", Some(&vec![1u8; 3000]), XattrSet::Any)?;
            }
            if k % 11 == 0 {
                fs.create(
                    root,
                    format!("dir{k}").as_bytes(),
                    NewNode { mode: libc::S_IFDIR | 0o755, rdev: 0, symlink_target: None },
                    ROOT_CALLER,
                )?;
            }
            if k % 13 == 0 {
                fs.fallocate(ino, len as u64, 300_000, FallocMode { keep_size: false, punch_hole: false, zero_range: false })?;
                files.last_mut().unwrap().2 = len as u64 + 300_000;
            }
            Ok::<(), mafs_core::error::FsError>(())
        })();
        match r {
            Ok(()) => {}
            Err(mafs_core::error::FsError::NoSpace) | Err(mafs_core::error::FsError::DeviceFull { .. }) => {
                nospace += 1;
                if nospace > 200 {
                    break;
                }
            }
            Err(e) => other_errors.push(format!("{k}: {e}")),
        }
        if k % 50 == 0 {
            fs.sync().unwrap();
        }
    }
    assert!(other_errors.is_empty(), "errors other than ENOSPC: {other_errors:?}");
    assert!(nospace > 0, "the volume never filled up");
    assert!(fs.statfs().bfree < 64, "{} blocks still free", fs.statfs().bfree);
    fs.sync().unwrap();
    // The live state, as of now, is consistent.
    let rep = fsck::check(Arc::new(CrashDevice::from_image(dev.crash_image(|_| false))), false).unwrap();
    assert_eq!(rep.exit_code(), 0, "power cut on a full volume: {}", first_problems(&rep));
    // Files whose every write succeeded read back at their size.
    for (_, ino, size) in &files {
        let a = fs.getattr(*ino).unwrap();
        assert!(a.size >= *size, "file {ino}: size {} < {size}", a.size);
    }
    // Deleting gives the space back (once committed), and writes work again.
    let before = fs.statfs().bfree;
    for (name, _, _) in files.iter().step_by(2) {
        fs.unlink(root, name, false).unwrap();
    }
    fs.sync().unwrap();
    assert!(fs.statfs().bfree > before + 1000, "space not returned: {} -> {}", before, fs.statfs().bfree);
    let ino = fs.create(root, b"after", reg(), ROOT_CALLER).unwrap().ino;
    fs.write(ino, 0, &vec![3u8; 1 << 20]).unwrap();
    fs.close().unwrap();
    drop(fs);
    let rep = fsck::check(Arc::new(CrashDevice::from_image(dev.crash_image(|_| false))), false).unwrap();
    assert_eq!(rep.exit_code(), 0, "after clean close: {}", first_problems(&rep));
}

/// Reduced from `a_full_volume_fails_with_nospace_and_stays_consistent`: one write (or
/// fallocate) bigger than the free space. The write stops short (returns what it wrote, as on
/// Linux) or fails with ENOSPC; fallocate fails with ENOSPC; either way the inode agrees with
/// what it maps and fsck finds nothing.
#[test]
fn a_write_or_fallocate_that_runs_out_of_space_leaves_a_consistent_inode() {
    let mut failures = Vec::new();
    for use_fallocate in [false, true] {
        let dev = new_volume(32 << 20, 256);
        let fs = mount(dev.clone(), 4096).expect("mount");
        let ino =
            fs.create(fs.root(), b"big", NewNode { mode: libc::S_IFREG | 0o644, rdev: 0, symlink_target: None }, ROOT_CALLER).unwrap().ino;
        let r = if use_fallocate {
            fs.fallocate(ino, 0, 40 << 20, FallocMode { keep_size: false, punch_hole: false, zero_range: false }).map(|_| 0)
        } else {
            fs.write(ino, 0, &vec![1u8; 40 << 20])
        };
        match r {
            Err(mafs_core::error::FsError::NoSpace) => {}
            Ok(n) if !use_fallocate && n > 0 && n < 40 << 20 => {
                let a = fs.getattr(ino).unwrap();
                assert_eq!(a.size, n as u64, "a short write sets the size to what it wrote");
                let back = fs.read(ino, 0, n as u32).unwrap();
                assert!(back.len() == n && back.iter().all(|b| *b == 1), "a short write reads back");
            }
            other => panic!("{} of 40 MiB on a 32 MiB volume returned {other:?}", if use_fallocate { "fallocate" } else { "write" }),
        }
        fs.sync().unwrap();
        let a = fs.getattr(ino).unwrap();
        let rep = fsck::check(Arc::new(CrashDevice::from_image(dev.crash_image(|_| false))), false).unwrap();
        if rep.exit_code() != 0 {
            failures.push(format!(
                "{} of 40 MiB on a 32 MiB volume failed with ENOSPC, then sync: inode size {} blocks {}; fsck: {}",
                if use_fallocate { "fallocate" } else { "write" },
                a.size,
                a.blocks,
                first_problems(&rep)
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Creates in a directory on a volume with exactly one free block, until a create needs a
/// second block (its directory's index tree splits): that create must fail with ENOSPC
/// without leaving its new inode allocated and unnamed.
#[test]
fn a_create_that_runs_out_of_space_in_the_directory_leaves_nothing_behind() {
    let dev = new_volume(32 << 20, 256);
    let fs = mount(dev.clone(), 4096).expect("mount");
    let root = fs.root();
    let reg = || NewNode { mode: libc::S_IFREG | 0o644, rdev: 0, symlink_target: None };
    let d = fs.create(root, b"d", NewNode { mode: libc::S_IFDIR | 0o755, rdev: 0, symlink_target: None }, ROOT_CALLER).unwrap().ino;
    let filler = fs.create(root, b"filler", reg(), ROOT_CALLER).unwrap().ino;
    // Fill the volume one block at a time (no write ever runs out of space part way).
    let block = vec![9u8; 4096];
    let mut size = 0u64;
    loop {
        match fs.write(filler, size, &block) {
            Ok(_) => size += 4096,
            Err(mafs_core::error::FsError::NoSpace) => break,
            Err(e) => panic!("filling: {e}"),
        }
    }
    fs.sync().unwrap();
    let rep = fsck::check(Arc::new(CrashDevice::from_image(dev.crash_image(|_| false))), false).unwrap();
    assert_eq!(rep.exit_code(), 0, "after filling the volume: {}", first_problems(&rep));
    let mut outcome = None;
    for k in 0..3000 {
        // Give back exactly one block, committed.
        size -= 4096;
        fs.setattr(filler, &SetAttr { size: Some(size), ..Default::default() }).unwrap();
        fs.sync().unwrap();
        let name = format!("{k:0>200}");
        match fs.create(d, name.as_bytes(), reg(), ROOT_CALLER) {
            Ok(_) => {}
            Err(mafs_core::error::FsError::NoSpace) => {
                outcome = Some(k);
                break;
            }
            Err(e) => panic!("create {k}: {e}"),
        }
    }
    let k = outcome.expect("no create ever needed a second block");
    fs.sync().unwrap();
    let rep = fsck::check(Arc::new(CrashDevice::from_image(dev.crash_image(|_| false))), false).unwrap();
    assert_eq!(
        rep.exit_code(),
        0,
        "create #{k} in a directory failed with ENOSPC (one free block, the directory tree needed a new node); then sync; fsck: {}",
        first_problems(&rep)
    );
}
