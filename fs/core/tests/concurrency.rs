//! Several threads on one `Fs` at once (as the multi-threaded FUSE session runs it), with
//! commits in between: no deadlock, no error, and the volume is consistent after a clean close
//! and after power cuts taken while the threads run.
use mafs_core::device::{BlockDevice, CrashDevice};
use mafs_core::error::FsError;
use mafs_core::filesystem::namespace::NewNode;
use mafs_core::filesystem::{Caller, Fs, SetAttr};
use mafs_core::format::InodeNo;
use mafs_core::fsck;
use mafs_core::mkfs::{mkfs, MkfsOptions};
use mafs_core::volume::Volume;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

const WHO: Caller = Caller::ROOT;

fn reg() -> NewNode<'static> {
    NewNode { mode: libc::S_IFREG | 0o644, rdev: 0, symlink_target: None }
}

fn dir() -> NewNode<'static> {
    NewNode { mode: libc::S_IFDIR | 0o755, rdev: 0, symlink_target: None }
}

fn setup() -> (Arc<CrashDevice>, Arc<Fs>) {
    // Room for the worst case of the churn below (4 workers x ~60 names of up to 250 KB each,
    // plus blocks freed but not yet committed): at 64 MiB a loaded machine once ran it out of
    // space, which is not what these tests are about.
    let dev = Arc::new(CrashDevice::new(128 << 20));
    mkfs(&*dev, &MkfsOptions { slots: 2, journal_blocks: Some(512), ..Default::default() }).expect("mkfs");
    let d: Arc<dyn BlockDevice> = dev.clone();
    let fs = Fs::new(Volume::open(d, 0, "concurrency-test", 4096).expect("open")).expect("fs");
    (dev, Arc::new(fs))
}

fn fsck_image(img: Vec<u8>) -> fsck::Report {
    fsck::check(Arc::new(CrashDevice::from_image(img)), false).expect("fsck runs")
}

/// Runs `f` on a thread and fails the test if it does not finish within `secs`.
fn within<T: Send + 'static>(secs: u64, what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    match rx.recv_timeout(Duration::from_secs(secs)) {
        Ok(v) => v,
        Err(_) => panic!("{what}: no progress for {secs} s (deadlock?)"),
    }
}

/// Each worker owns a subdirectory and churns files in it (create, write, truncate, rename
/// within and across its directories, link, unlink); a committer commits and syncs; the main
/// thread cuts the power every so often and checks the image.
#[test]
fn threads_working_at_once_keep_the_volume_consistent() {
    let (dev, fs) = setup();
    let stop = Arc::new(AtomicBool::new(false));
    let root = fs.root();
    let mut workers = Vec::new();
    for w in 0..4u64 {
        let fs = fs.clone();
        let stop = stop.clone();
        workers.push(std::thread::spawn(move || -> Result<u64, String> {
            let mut rng = StdRng::seed_from_u64(w);
            let home = fs.create(root, format!("w{w}").as_bytes(), dir(), WHO).map_err(|e| e.to_string())?.ino;
            let sub = fs.create(home, b"sub", dir(), WHO).map_err(|e| e.to_string())?.ino;
            let mut names: Vec<(InodeNo, Vec<u8>, InodeNo)> = Vec::new();
            let mut n = 0u64;
            let mut ops = 0u64;
            while !stop.load(Ordering::Relaxed) && ops < 3000 {
                ops += 1;
                let r: Result<(), FsError> = (|| {
                    // At most ~60 names per worker, so the volume never fills up.
                    let roll = if names.len() > 60 { 8 } else { rng.gen_range(0..10) };
                    match roll {
                        0..=2 => {
                            n += 1;
                            let name = format!("f{n}").into_bytes();
                            let d = if rng.gen_bool(0.5) { home } else { sub };
                            let ino = fs.create(d, &name, reg(), WHO)?.ino;
                            let len = rng.gen_range(1..100_000);
                            fs.write(ino, 0, &vec![w as u8; len])?;
                            names.push((d, name, ino));
                        }
                        3..=4 if !names.is_empty() => {
                            let (_, _, ino) = names[rng.gen_range(0..names.len())].clone();
                            let off = rng.gen_range(0..200_000);
                            fs.write(ino, off, &vec![7u8; rng.gen_range(1..50_000)])?;
                        }
                        5 if !names.is_empty() => {
                            let (_, _, ino) = names[rng.gen_range(0..names.len())].clone();
                            fs.setattr(ino, &SetAttr { size: Some(rng.gen_range(0..150_000)), ..Default::default() })?;
                        }
                        6 if !names.is_empty() => {
                            let i = rng.gen_range(0..names.len());
                            let (d, name, ino) = names[i].clone();
                            n += 1;
                            let nd = if d == home { sub } else { home };
                            let nn = format!("r{n}").into_bytes();
                            fs.rename(d, &name, nd, &nn, 0)?;
                            names[i] = (nd, nn, ino);
                        }
                        7 if !names.is_empty() => {
                            let (_, _, ino) = names[rng.gen_range(0..names.len())].clone();
                            n += 1;
                            let nn = format!("l{n}").into_bytes();
                            fs.link(ino, home, &nn)?;
                            names.push((home, nn, ino));
                        }
                        8 | 9 if !names.is_empty() => {
                            let (d, name, _) = names.swap_remove(rng.gen_range(0..names.len()));
                            fs.unlink(d, &name, false)?;
                        }
                        _ => {}
                    }
                    Ok(())
                })();
                r.map_err(|e| format!("worker {w} op {ops}: {e}"))?;
            }
            Ok(ops)
        }));
    }
    let committer = {
        let fs = fs.clone();
        let stop = stop.clone();
        std::thread::spawn(move || -> Result<(), String> {
            let mut k = 0;
            while !stop.load(Ordering::Relaxed) {
                k += 1;
                if k % 3 == 0 { fs.sync() } else { fs.commit() }.map_err(|e| format!("commit: {e}"))?;
                std::thread::sleep(Duration::from_millis(2));
            }
            Ok(())
        })
    };
    // Power cuts while everything runs.
    let mut cuts = 0;
    let mut rng = StdRng::seed_from_u64(1234);
    let t0 = std::time::Instant::now();
    let mut problems = Vec::new();
    while cuts < 20 && t0.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(60));
        let p: f64 = rng.gen_range(0.0..1.0);
        let img = if cuts % 2 == 0 { dev.crash_image(|_| false) } else { dev.crash_image(|_| rng.gen_bool(p)) };
        let rep = fsck_image(img);
        if rep.exit_code() != 0 {
            problems.push(format!("cut {cuts}: {:?}", rep.problems.iter().take(5).collect::<Vec<_>>()));
        }
        cuts += 1;
    }
    stop.store(true, Ordering::Relaxed);
    let results =
        within(60, "joining the workers", move || workers.into_iter().map(|w| w.join().expect("worker panicked")).collect::<Vec<_>>());
    let mut total = 0;
    for r in results {
        total += r.unwrap_or_else(|e| panic!("{e}"));
    }
    within(60, "joining the committer", move || committer.join().expect("committer panicked")).unwrap_or_else(|e| panic!("{e}"));
    let fs2 = fs.clone();
    within(60, "closing", move || fs2.close()).expect("close");
    let rep = fsck_image(dev.crash_image(|_| false));
    eprintln!("{total} operations by 4 threads, {cuts} power cuts checked");
    assert!(problems.is_empty(), "fsck found problems in images cut while threads ran: {problems:#?}");
    assert_eq!(rep.exit_code(), 0, "after a clean close: {:?}", rep.problems);
}

/// A rename that would move a directory below itself (it fails with EINVAL) racing with an
/// rmdir of that directory's child (it fails with ENOTEMPTY): both must return.
#[test]
fn a_rename_into_its_own_subdirectory_racing_an_rmdir_does_not_deadlock() {
    let (_dev, fs) = setup();
    let root = fs.root();
    let c = fs.create(root, b"c", dir(), WHO).unwrap().ino;
    let b = fs.create(c, b"b", dir(), WHO).unwrap().ino;
    fs.create(b, b"keep", reg(), WHO).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let t1 = {
        let fs = fs.clone();
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                // Locks root and b (the parents), then c (the directory moved).
                assert!(matches!(fs.rename(root, b"c", b, b"c2", 0), Err(FsError::Invalid(_))));
                n += 1;
            }
            n
        })
    };
    let t2 = {
        let fs = fs.clone();
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                // Locks c (the parent), then b (the child).
                assert!(matches!(fs.unlink(c, b"b", true), Err(FsError::NotEmpty)));
                n += 1;
            }
            n
        })
    };
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::Relaxed);
    let (n1, n2) = within(20, "rename into a subdirectory vs rmdir of that subdirectory", move || (t1.join().unwrap(), t2.join().unwrap()));
    assert!(n1 > 0 && n2 > 0);
}

/// The last close of an unlinked file and the unlink itself race to free the inode (the
/// unlink sees it open and lists it as an orphan; the close then frees it; the unlink then
/// looks again). Neither may fail, and the inode is freed exactly once: the volume checks
/// clean. (CI once lost a file count this way: an unlink that had removed the name reported
/// an error because the close had freed the inode under it.)
#[test]
fn an_unlink_racing_the_last_close_succeeds_and_frees_the_inode_once() {
    let (dev, fs) = setup();
    let root = fs.root();
    let rounds = 3000;
    let (tx, rx) = mpsc::channel::<u64>();
    let closer = {
        let fs = fs.clone();
        std::thread::spawn(move || -> Result<(), String> {
            for i in 0..rounds {
                let f = fs.create(root, format!("f{i}").as_bytes(), reg(), WHO).map_err(|e| format!("create {i}: {e}"))?;
                fs.open(f.ino).map_err(|e| format!("open {i}: {e}"))?;
                fs.write(f.ino, 0, b"x").map_err(|e| format!("write {i}: {e}"))?;
                tx.send(i).map_err(|e| e.to_string())?;
                // Let the unlink start, then close while it runs.
                for _ in 0..(i % 7) * 50 {
                    std::hint::spin_loop();
                }
                fs.release(f.ino).map_err(|e| format!("release {i}: {e}"))?;
            }
            Ok(())
        })
    };
    let unlinker = {
        let fs = fs.clone();
        std::thread::spawn(move || -> Result<(), String> {
            for i in rx {
                fs.unlink(root, format!("f{i}").as_bytes(), false).map_err(|e| format!("unlink {i}: {e}"))?;
            }
            Ok(())
        })
    };
    let closed = within(120, "closer", move || closer.join().expect("closer thread"));
    let unlinked = within(120, "unlinker", move || unlinker.join().expect("unlinker thread"));
    assert_eq!(closed, Ok(()));
    assert_eq!(unlinked, Ok(()));
    fs.close().expect("clean close");
    let rep = fsck_image(dev.crash_image(|_| false));
    assert_eq!(rep.exit_code(), 0, "after the races: {:?}", rep.problems);
}
