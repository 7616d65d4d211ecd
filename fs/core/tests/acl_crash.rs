//! A node created in a directory with a default POSIX ACL gets its inherited ACL in the same
//! transaction as its inode and its name: after a power cut at any write, each such node
//! either does not exist or exists with the ACL its directory prescribes (and the mode that
//! goes with it), never without it. Likewise a chmod and the access ACL's mask, and a new
//! access ACL and the mode bits, change together or not at all.
//!
//! The workload creates files, directories and fifos in such a directory, chmods some and sets
//! a new access ACL on others, with other creates (in a directory without ACLs) in between, so
//! that the running transaction fills up and is committed at varying points of the sequence,
//! as the periodic commit of a mount can fall anywhere. Every write and flush is logged, and afterwards the power is cut after every
//! write of the workload, once keeping none and once all of the writes since the last flush;
//! each image is checked with fsck, mounted (journal replay) and its ACL directory inspected.
use mafs_core::device::{BlockDevice, CrashDevice};
use mafs_core::filesystem::attr::XattrSet;
use mafs_core::filesystem::namespace::NewNode;
use mafs_core::filesystem::{Caller, Fs, SetAttr};
use mafs_core::format::InodeNo;
use mafs_core::fsck;
use mafs_core::mkfs::{mkfs, MkfsOptions};
use mafs_core::volume::Volume;
use std::collections::BTreeMap;
use std::sync::Arc;

mod common;
use common::{Event, LogDevice};

const ROOT_CALLER: Caller = Caller::ROOT;
const ACCESS: &[u8] = b"system.posix_acl_access";
const DEFAULT: &[u8] = b"system.posix_acl_default";

/// Linux's xattr form of an ACL: version 2, then (tag, perm, id) entries.
fn acl(entries: &[(u16, u16, u32)]) -> Vec<u8> {
    let mut v = 2u32.to_le_bytes().to_vec();
    for &(tag, perm, id) in entries {
        v.extend_from_slice(&tag.to_le_bytes());
        v.extend_from_slice(&perm.to_le_bytes());
        v.extend_from_slice(&id.to_le_bytes());
    }
    v
}

const USER_OBJ: u16 = 0x01;
const USER: u16 = 0x02;
const GROUP_OBJ: u16 = 0x04;
const MASK: u16 = 0x10;
const OTHER: u16 = 0x20;
const NO_ID: u32 = u32::MAX;

/// The directory's default ACL: a named user, so that what a child inherits is more than its
/// mode bits can say and must be stored.
fn default_acl() -> Vec<u8> {
    acl(&[(USER_OBJ, 7, NO_ID), (USER, 7, 1000), (GROUP_OBJ, 5, NO_ID), (MASK, 7, NO_ID), (OTHER, 5, NO_ID)])
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    File,
    Dir,
    Fifo,
}

impl Kind {
    fn of(k: usize) -> Kind {
        [Kind::File, Kind::Dir, Kind::Fifo][k % 3]
    }
    fn prefix(self) -> &'static str {
        match self {
            Kind::File => "f",
            Kind::Dir => "d",
            Kind::Fifo => "p",
        }
    }
    fn of_name(name: &[u8]) -> Option<Kind> {
        [Kind::File, Kind::Dir, Kind::Fifo].into_iter().find(|k| name.starts_with(k.prefix().as_bytes()))
    }
    /// The mode the caller asks for (open(O_CREAT, 0666), mkdir(0777), mkfifo(0666)), before
    /// the umask or the default ACL.
    fn requested(self) -> u32 {
        match self {
            Kind::File => libc::S_IFREG | 0o666,
            Kind::Dir => libc::S_IFDIR | 0o777,
            Kind::Fifo => libc::S_IFIFO | 0o666,
        }
    }
    /// What POSIX.1e and Linux make of the request under `default_acl()` (the umask does not
    /// apply; the ACL's owner, mask and other entries are cut down to the requested bits).
    fn inherited(self) -> (u32, BTreeMap<Vec<u8>, Vec<u8>>) {
        let mut x = BTreeMap::new();
        match self {
            Kind::Dir => {
                x.insert(ACCESS.to_vec(), default_acl());
                x.insert(DEFAULT.to_vec(), default_acl());
                (libc::S_IFDIR | 0o775, x)
            }
            Kind::File | Kind::Fifo => {
                let access = acl(&[(USER_OBJ, 6, NO_ID), (USER, 7, 1000), (GROUP_OBJ, 5, NO_ID), (MASK, 6, NO_ID), (OTHER, 4, NO_ID)]);
                x.insert(ACCESS.to_vec(), access);
                (self.requested() & libc::S_IFMT | 0o664, x)
            }
        }
    }
}

/// The access ACL set on the odd-numbered nodes; it implies mode 0750.
fn new_access_acl() -> Vec<u8> {
    acl(&[(USER_OBJ, 7, NO_ID), (USER, 5, 1000), (GROUP_OBJ, 5, NO_ID), (MASK, 5, NO_ID), (OTHER, 0, NO_ID)])
}

/// The mode a chmod sets on the even-numbered nodes, and the access ACL that follows.
const CHMOD: u32 = 0o751;
fn chmodded_acl() -> Vec<u8> {
    acl(&[(USER_OBJ, 7, NO_ID), (USER, 7, 1000), (GROUP_OBJ, 5, NO_ID), (MASK, 5, NO_ID), (OTHER, 1, NO_ID)])
}

/// Node `k`'s mode and xattrs once its change is made.
fn changed(k: usize) -> (u32, BTreeMap<Vec<u8>, Vec<u8>>) {
    let kind = Kind::of(k);
    let (mode, mut x) = kind.inherited();
    let (bits, access) = if k.is_multiple_of(2) { (CHMOD, chmodded_acl()) } else { (0o750, new_access_acl()) };
    x.insert(ACCESS.to_vec(), access);
    (mode & libc::S_IFMT | bits, x)
}

/// Makes node `k`'s change, as a chmod or a setfacl reaches the core.
fn change(fs: &Fs, ino: InodeNo, k: usize) -> mafs_core::error::Result<()> {
    match k % 2 {
        0 => fs.setattr_by(ino, &SetAttr { mode: Some(CHMOD), ..Default::default() }, Caller::ROOT).map(|_| ()),
        _ => fs.setxattr_by(ino, ACCESS, Some(&new_access_acl()), XattrSet::Any, Caller::ROOT),
    }
}

/// Creates `name` in `dir`, asking for the mode a program asks for, under a umask that the
/// directory's default ACL replaces. (Before the POSIX rules moved into the core, the FUSE glue
/// computed the inherited mode and ACLs itself, created the node with that mode, then stored
/// each ACL with a setxattr of its own, and a chmod was a setattr followed by a setxattr of
/// the updated ACL: this test failed then, with nodes found without their ACL, and a directory
/// with the new mode and the old ACL, after cuts between the two transactions.)
fn create_inheriting(fs: &Fs, dir: InodeNo, name: &[u8], kind: Kind) -> mafs_core::error::Result<()> {
    let who = Caller { umask: 0o022, ..Caller::ROOT };
    fs.create(dir, name, NewNode { mode: kind.requested(), rdev: 0, symlink_target: None }, who)?;
    Ok(())
}

fn mount(dev: Arc<dyn BlockDevice>) -> mafs_core::error::Result<Fs> {
    Fs::new(Volume::open(dev, 0, "acl-crash-test", 1024)?)
}

/// Checks one crash image: clean, mountable, and every node in the ACL directory complete.
/// Returns how many nodes it found there.
fn check_image(img: Vec<u8>, acl_dir_name: &[u8], what: &str) -> Result<usize, String> {
    let rep = fsck::check(Arc::new(CrashDevice::from_image(img.clone())), false).map_err(|e| format!("{what}: fsck failed to run: {e}"))?;
    if rep.exit_code() != 0 {
        return Err(format!("{what}: fsck exit {}: {:?}", rep.exit_code(), rep.problems));
    }
    let fs = mount(Arc::new(CrashDevice::from_image(img))).map_err(|e| format!("{what}: mount failed: {e}"))?;
    let dir = fs.lookup(fs.root(), acl_dir_name).map_err(|e| format!("{what}: the ACL directory: {e}"))?.ino;
    let mut names = Vec::new();
    fs.readdir(dir, 0, &mut |ino, _, name, _| {
        if name != b"." && name != b".." {
            names.push((ino, name.to_vec()));
        }
        true
    })
    .map_err(|e| format!("{what}: readdir: {e}"))?;
    for (ino, name) in &names {
        let shown = String::from_utf8_lossy(name);
        let kind = Kind::of_name(name).ok_or_else(|| format!("{what}: unexpected name {shown}"))?;
        let k: usize = String::from_utf8_lossy(&name[1..]).parse().map_err(|_| format!("{what}: unexpected name {shown}"))?;
        let (mode, want) = kind.inherited();
        let inode = fs.getattr(*ino).map_err(|e| format!("{what}: getattr {shown}: {e}"))?;
        let list = fs.listxattr(*ino).map_err(|e| format!("{what}: listxattr {shown}: {e}"))?;
        let mut got = BTreeMap::new();
        for n in list.split(|b| *b == 0).filter(|n| !n.is_empty()) {
            got.insert(n.to_vec(), fs.getxattr(*ino, n).map_err(|e| format!("{what}: getxattr {shown}: {e}"))?);
        }
        if (inode.mode, got.clone()) == changed(k) {
            continue;
        }
        if got != want {
            let names: Vec<String> = got.keys().map(|n| String::from_utf8_lossy(n).into_owned()).collect();
            if got.keys().eq(want.keys()) {
                return Err(format!("{what}: {kind:?} {shown} (mode {:o}) has ACLs that are neither inherited nor as changed", inode.mode));
            }
            return Err(format!("{what}: {kind:?} {shown} exists without the ACL it inherits: it has xattrs {names:?}"));
        }
        if inode.mode != mode {
            return Err(format!("{what}: {kind:?} {shown} has mode {:o}, inherited {:o}, and the inherited ACLs", inode.mode, mode));
        }
    }
    Ok(names.len())
}

/// Unrelated work in the same transactions: 0 to 4 plain files, so that the transaction fills
/// up at a different step of each ACL create or change.
fn filler(fs: &Fs, dir: InodeNo, k: usize) {
    for j in 0..((k * k + 3 * k + k / 7) % 5) {
        let n = format!("x{k}-{j}");
        fs.create(dir, n.as_bytes(), NewNode { mode: libc::S_IFREG | 0o644, rdev: 0, symlink_target: None }, ROOT_CALLER)
            .expect("plain create");
    }
}

#[test]
fn creates_under_a_default_acl_chmods_and_setfacls_are_atomic_at_every_write() {
    let t0 = std::time::Instant::now();
    let dev = Arc::new(LogDevice::new(32 << 20));
    // A 256-block journal: a transaction is committed once it holds 64 blocks, so the
    // workload below commits several times in the middle of it.
    mkfs(&*dev, &MkfsOptions { slots: 1, journal_blocks: Some(256), ..Default::default() }).expect("mkfs");
    let fs = mount(dev.clone()).expect("mount");
    let root = fs.root();
    let dir = || NewNode { mode: libc::S_IFDIR | 0o755, rdev: 0, symlink_target: None };
    let acl_dir = fs.create(root, b"acl", dir(), ROOT_CALLER).expect("mkdir").ino;
    let plain = fs.create(root, b"plain", dir(), ROOT_CALLER).expect("mkdir").ino;
    fs.setxattr(acl_dir, DEFAULT, Some(&default_acl()), XattrSet::Any).expect("default ACL");
    fs.sync().expect("sync");
    let start = dev.events();
    let nodes = 90;
    let mut inos = Vec::new();
    for k in 0..nodes {
        let kind = Kind::of(k);
        let name = format!("{}{k}", kind.prefix());
        create_inheriting(&fs, acl_dir, name.as_bytes(), kind).expect("create with ACL");
        inos.push(fs.lookup(acl_dir, name.as_bytes()).expect("lookup").ino);
        filler(&fs, plain, k);
    }
    // Then a chmod or a new access ACL for each, most in later transactions than their
    // creates.
    for (k, &ino) in inos.iter().enumerate() {
        change(&fs, ino, k).expect("chmod or setfacl");
        filler(&fs, plain, nodes + k);
    }
    fs.sync().expect("sync");
    let log = std::mem::take(&mut *dev.log.lock().unwrap());
    drop(fs);
    let end = log.len();
    let commits = log[start..].iter().filter(|e| matches!(e, Event::Flush)).count() / 2;
    assert!(commits >= 3, "the workload was to span several commits, it made {commits}");

    // Power cuts: after every write of the workload, keeping none or all of the writes since
    // the last flush. The log starts before mkfs, on a zeroed device.
    let mut durable = vec![0u8; dev.size() as usize];
    let mut applied = 0;
    let mut cuts = 0;
    let mut seen_max = 0;
    let mut failures = Vec::new();
    for e in start + 1..=end {
        if !matches!(log[e - 1], Event::Write(..)) {
            continue;
        }
        let f = (0..e).rev().find(|&k| matches!(log[k], Event::Flush)).unwrap_or(0);
        for ev in &log[applied..f] {
            if let Event::Write(off, d) = ev {
                durable[*off as usize..*off as usize + d.len()].copy_from_slice(d);
            }
        }
        applied = applied.max(f);
        for keep in [false, true] {
            let mut img = durable.clone();
            if keep {
                for ev in &log[f..e] {
                    if let Event::Write(off, d) = ev {
                        img[*off as usize..*off as usize + d.len()].copy_from_slice(d);
                    }
                }
            }
            let what = format!(
                "power cut after write event {e} of {end} ({} writes since the last flush kept)",
                if keep { "all" } else { "none of the" }
            );
            cuts += 1;
            match check_image(img, b"acl", &what) {
                Ok(n) => seen_max = seen_max.max(n),
                Err(msg) => failures.push(msg),
            }
        }
    }
    eprintln!(
        "{nodes} creates with an inherited ACL, then as many chmods and setfacls, over {commits} commits; {cuts} power cuts ({} failed) in {:.1}s",
        failures.len(),
        t0.elapsed().as_secs_f64()
    );
    assert!(
        failures.is_empty(),
        "{} of {cuts} power cuts left a node whose mode and ACLs are not what it was created with or changed to; first ones:\n{}",
        failures.len(),
        failures[..failures.len().min(5)].join("\n")
    );
    assert_eq!(seen_max, nodes, "the last image holds every node");
}
