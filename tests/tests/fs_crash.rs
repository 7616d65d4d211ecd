//! Crash and replay on a real FUSE mount: a write workload runs in a child process (creating,
//! writing, renaming, deleting, fsyncing, and recording each step in a manifest outside the
//! mount before doing it, and each fsync after it), the mount process is killed with SIGKILL at
//! a random moment, the volume is mounted again (replaying its journal), and then:
//! - every file the manifest says was fsynced, and not touched since, has exactly that content;
//! - every visible name is one the workload made, and every visible file holds a prefix of some
//!   content the workload wrote under that name (nothing half-created, no garbage);
//! - `mafs fsck` after a clean unmount exits 0.
//!
//! The workload is this test binary run again with `MAFS_CRASH_WORKLOAD` set (see
//! `crash_workload_child_process`). Set `MAFS_CRASH_SEED` to replay a failing run.
use mafs_tests::fs_mount::*;
use mafs_tests::wait_until;
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

const CHILD_ENV: &str = "MAFS_CRASH_WORKLOAD";

/// The workload: `dir` on the mount, `manifest` outside it. Runs until an operation fails (the
/// mount is gone) or `max_ops` operations are done.
fn workload(dir: &Path, manifest: &Path, seed: u64, max_ops: u64, truncates: bool) -> std::io::Result<()> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut man = OpenOptions::new().create(true).append(true).open(manifest)?;
    let mut log = |line: String| -> std::io::Result<()> {
        man.write_all(format!("{line}\n").as_bytes())?;
        man.sync_data()
    };
    let mut existing: Vec<String> = Vec::new();
    let mut dirs: Vec<String> = Vec::new();
    for i in 0..max_ops {
        match rng.gen_range(0..12) {
            0..=5 => {
                let name = format!("tmp-{i}");
                let fseed: u64 = rng.gen();
                let len = match rng.gen_range(0..10) {
                    0..=4 => rng.gen_range(0..3840),
                    5..=8 => rng.gen_range(3840..65536),
                    _ => rng.gen_range(65536..(1 << 20)),
                };
                let data = pattern(fseed, len);
                log(format!("create {name} {fseed} {len}"))?;
                let mut f = OpenOptions::new().write(true).create_new(true).open(dir.join(&name))?;
                let mut at = 0;
                while at < len {
                    let n = rng.gen_range(1..=40_000).min(len - at);
                    f.write_all(&data[at..at + n])?;
                    at += n;
                }
                let synced = rng.gen_bool(0.5);
                if synced {
                    f.sync_all()?;
                    File::open(dir)?.sync_all()?;
                    log(format!("synced {name} {fseed} {len}"))?;
                }
                drop(f);
                let mut final_name = name.clone();
                if rng.gen_bool(0.6) {
                    let to = format!("f{}", rng.gen_range(0..16));
                    log(format!("rename {name} {to}"))?;
                    fs::rename(dir.join(&name), dir.join(&to))?;
                    final_name = to;
                    if rng.gen_bool(0.5) {
                        File::open(dir)?.sync_all()?;
                        log(format!("synced {final_name} {fseed} {len}"))?;
                    }
                }
                if !existing.contains(&final_name) {
                    existing.push(final_name);
                }
            }
            6 | 7 if !existing.is_empty() => {
                let k = rng.gen_range(0..existing.len());
                let name = existing.swap_remove(k);
                log(format!("unlink {name}"))?;
                fs::remove_file(dir.join(&name))?;
                if rng.gen_bool(0.3) {
                    File::open(dir)?.sync_all()?;
                }
            }
            10 if truncates && !existing.is_empty() => {
                // cut a file short: what remains is a prefix of what was written
                let name = existing[rng.gen_range(0..existing.len())].clone();
                let len = fs::metadata(dir.join(&name))?.len();
                let to = rng.gen_range(0..=len);
                log(format!("truncate {name} {to}"))?;
                OpenOptions::new().write(true).open(dir.join(&name))?.set_len(to)?;
            }
            11 if !existing.is_empty() => {
                let from = existing[rng.gen_range(0..existing.len())].clone();
                let to = format!("l{i}");
                log(format!("link {from} {to}"))?;
                fs::hard_link(dir.join(&from), dir.join(&to))?;
                existing.push(to);
            }
            8 => {
                let name = format!("d{i}");
                log(format!("mkdir {name}"))?;
                fs::create_dir(dir.join(&name))?;
                dirs.push(name);
            }
            _ if !dirs.is_empty() => {
                let name = dirs.swap_remove(rng.gen_range(0..dirs.len()));
                log(format!("rmdir {name}"))?;
                fs::remove_dir(dir.join(&name))?;
            }
            _ => {}
        }
    }
    log("done".into())
}

#[test]
fn crash_workload_child_process() {
    // Not a test by itself: the body of the workload process that the crash tests start.
    let Ok(spec) = std::env::var(CHILD_ENV) else { return };
    let parts: Vec<&str> = spec.split('\n').collect();
    let (dir, manifest, seed, truncates) = (Path::new(parts[0]), Path::new(parts[1]), parts[2].parse().unwrap(), parts[3] == "truncates");
    if let Err(e) = workload(dir, manifest, seed, 100_000, truncates) {
        // expected once the mount process is killed
        eprintln!("workload stopped: {e}");
    }
}

/// What the manifest says about the names of one workload directory.
#[derive(Default)]
struct Manifest {
    /// Every (seed, len) a name was ever given, through create or rename.
    candidates: HashMap<String, Vec<(u64, usize)>>,
    /// The last fsynced content of a name, and the manifest line that recorded it.
    synced: HashMap<String, (u64, usize, usize)>,
    /// The last manifest line that changed a name.
    last_touch: HashMap<String, usize>,
    dirs: HashSet<String>,
    /// Every manifest line that names a name, for failure messages.
    history: HashMap<String, Vec<String>>,
    /// Names that were ever hard-linked (a change through one name shows through the others).
    linked: HashSet<String>,
    lines: usize,
}

fn parse_manifest(path: &Path) -> Manifest {
    let text = fs::read_to_string(path).unwrap_or_default();
    let mut m = Manifest::default();
    let mut current: HashMap<String, (u64, usize)> = HashMap::new();
    for (i, line) in text.lines().enumerate() {
        let w: Vec<&str> = line.split(' ').collect();
        for n in w.iter().skip(1).take(2) {
            m.history.entry(n.to_string()).or_default().push(format!("{i}: {line}"));
        }
        match w[0] {
            "create" => {
                let c = (w[2].parse().unwrap(), w[3].parse().unwrap());
                m.candidates.entry(w[1].into()).or_default().push(c);
                current.insert(w[1].into(), c);
                m.last_touch.insert(w[1].into(), i);
            }
            "synced" => {
                m.synced.insert(w[1].into(), (w[2].parse().unwrap(), w[3].parse().unwrap(), i));
            }
            "rename" => {
                if let Some(c) = current.remove(w[1]) {
                    m.candidates.entry(w[2].into()).or_default().push(c);
                    current.insert(w[2].into(), c);
                }
                m.last_touch.insert(w[1].into(), i);
                m.last_touch.insert(w[2].into(), i);
            }
            "link" => {
                if let Some(c) = current.get(w[1]).copied() {
                    m.candidates.entry(w[2].into()).or_default().push(c);
                    current.insert(w[2].into(), c);
                }
                // a later truncate through either name changes both
                m.last_touch.insert(w[1].into(), i);
                m.last_touch.insert(w[2].into(), i);
                m.linked.insert(w[1].into());
                m.linked.insert(w[2].into());
            }
            "truncate" => {
                m.last_touch.insert(w[1].into(), i);
                if m.linked.contains(w[1]) {
                    // the other names of the inode change too: stop trusting their fsync records
                    for n in m.linked.clone() {
                        m.last_touch.insert(n, i);
                    }
                }
            }
            "unlink" => {
                current.remove(w[1]);
                m.last_touch.insert(w[1].into(), i);
            }
            "mkdir" | "rmdir" => {
                m.dirs.insert(w[1].into());
            }
            "done" => {}
            other => panic!("unknown manifest line {other:?}"),
        }
        m.lines = i + 1;
    }
    m
}

/// Checks the workload directory against its manifest after a crash; returns how many fsynced
/// files were verified.
fn verify(dir: &Path, man: &Manifest) -> usize {
    let mut verified = 0;
    for (name, &(seed, len, line)) in &man.synced {
        if man.last_touch.get(name).copied().unwrap_or(0) > line {
            continue; // changed after the fsync: any of its versions may be there
        }
        let got = fs::read(dir.join(name)).unwrap_or_else(|e| panic!("fsynced file {name} (manifest line {line}) is not readable: {e}"));
        assert_eq!(got.len(), len, "fsynced file {name}: size");
        assert!(got == pattern(seed, len), "fsynced file {name}: content differs from what was fsynced");
        verified += 1;
    }
    for e in fs::read_dir(dir).expect("list workload dir") {
        let e = e.unwrap();
        let name = e.file_name().into_string().unwrap();
        let ft = e.file_type().unwrap();
        if ft.is_dir() {
            assert!(man.dirs.contains(&name), "directory {name} was never made by the workload");
            continue;
        }
        assert!(ft.is_file(), "{name} is neither a file nor a directory");
        let cands = man.candidates.get(&name).unwrap_or_else(|| panic!("file {name} is visible but the workload never made it"));
        let got = fs::read(dir.join(&name)).unwrap_or_else(|e| panic!("visible file {name} is not readable: {e}"));
        let ok = cands.iter().any(|&(seed, len)| got.len() <= len && got == pattern(seed, got.len()));
        if !ok {
            let diffs: Vec<String> = cands
                .iter()
                .filter(|&&(_, len)| got.len() <= len)
                .map(|&(seed, _)| {
                    let want = pattern(seed, got.len());
                    let first = got.iter().zip(&want).position(|(a, b)| a != b).unwrap_or(0);
                    let last = got.iter().zip(&want).rposition(|(a, b)| a != b).unwrap_or(0);
                    let zeros = got[first..=last].iter().all(|&b| b == 0);
                    format!("seed {seed}: bytes {first}..={last} differ (all zero there: {zeros})")
                })
                .collect();
            panic!(
                "file {name} ({} bytes) holds content the workload never wrote there (candidates {cands:?}; {diffs:?}); manifest history:\n{}",
                got.len(),
                man.history.get(&name).map(|h| h.join("\n")).unwrap_or_default()
            );
        }
    }
    verified
}

fn seed_from_env_or_random() -> u64 {
    let seed = std::env::var("MAFS_CRASH_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| rand::thread_rng().gen());
    eprintln!("crash test seed {seed} (set MAFS_CRASH_SEED={seed} to replay)");
    seed
}

/// Starts the workload on `dir` (on the mount) with its manifest, in a child process.
fn start_workload(dir: &Path, manifest: &Path, seed: u64, truncates: bool, err_log: &Path) -> std::process::Child {
    Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "crash_workload_child_process", "--nocapture", "--test-threads", "1"])
        .env(CHILD_ENV, format!("{}\n{}\n{seed}\n{}", dir.display(), manifest.display(), if truncates { "truncates" } else { "-" }))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(File::create(err_log).unwrap())
        .spawn()
        .expect("start workload process")
}

fn manifest_lines(p: &Path) -> usize {
    fs::read(p).map(|b| b.iter().filter(|&&c| c == b'\n').count()).unwrap_or(0)
}

/// Rounds of: workload, kill -9 of the mount after `kill_after` manifest lines, remount,
/// verify every round's directory so far, clean unmount with fsck 0.
fn crash_rounds(rounds: usize, mount_args: &[&str], truncates: bool) {
    let seed = seed_from_env_or_random();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut m = Mounted::unmounted("256M", &["--slots", "1"]);
    m.try_mount(mount_args).unwrap();
    let mut done: Vec<(PathBuf, PathBuf)> = Vec::new();
    for round in 0..rounds {
        let dir_name = format!("round{round}");
        fs::create_dir(m.path(&dir_name)).unwrap();
        File::open(&m.mnt).unwrap().sync_all().unwrap();
        let manifest = m.scratch().join(format!("manifest{round}"));
        let err_log = m.scratch().join(format!("workload{round}.err"));
        let mut child = start_workload(&m.path(&dir_name), &manifest, rng.gen(), truncates, &err_log);
        let kill_after = rng.gen_range(5..400);
        let reached =
            wait_until(Duration::from_secs(60), || manifest_lines(&manifest) >= kill_after || child.try_wait().unwrap().is_some());
        assert!(reached, "round {round}: the workload made no progress");
        m.kill9();
        let exited = wait_until(Duration::from_secs(60), || child.try_wait().unwrap().is_some());
        if !exited {
            let _ = child.kill();
            panic!("round {round}: the workload process hung after the mount died");
        }
        let _ = child.wait();
        if let Err(e) = m.try_mount(mount_args) {
            panic!("round {round} (seed {seed}): mount after kill -9 failed: {e}");
        }
        done.push((PathBuf::from(&dir_name), manifest));
        for (d, man_path) in &done {
            let man = parse_manifest(man_path);
            let n = verify(&m.path(d), &man);
            eprintln!("round {round}: {} verified: {} manifest lines, {n} fsynced files intact", d.display(), man.lines);
        }
        m.unmount_clean();
        m.mount_with(mount_args);
    }
    m.finish();
}

#[test]
fn kill_9_during_a_write_workload_keeps_fsynced_files_and_fsck_clean() {
    crash_rounds(4, &[], false);
}

#[test]
fn kill_9_with_frequent_commits_keeps_fsynced_files_and_fsck_clean() {
    crash_rounds(4, &["--commit-interval", "1"], false);
}

#[test]
fn kill_9_during_truncates_never_shows_zeros_inside_the_old_size() {
    crash_rounds(6, &["--commit-interval", "1"], true);
}

#[test]
fn kill_9_of_an_idle_mount_loses_nothing_fsynced() {
    let mut m = Mounted::new("64M");
    let mut names = BTreeMap::new();
    for i in 0..30u64 {
        let data = pattern(i, (i as usize) * 997);
        let mut f = File::create(m.path(format!("f{i}"))).unwrap();
        f.write_all(&data).unwrap();
        f.sync_all().unwrap();
        names.insert(format!("f{i}"), data);
    }
    fs::create_dir(m.path("dir")).unwrap();
    fs::rename(m.path("f0"), m.path("dir/moved")).unwrap();
    File::open(&m.mnt).unwrap().sync_all().unwrap();
    m.kill9();
    m.mount();
    for (n, d) in &names {
        if n != "f0" {
            assert!(&fs::read(m.path(n)).unwrap() == d, "{n}");
        }
    }
    assert!(fs::read(m.path("dir/moved")).unwrap() == names["f0"]);
    assert_errno(fs::metadata(m.path("f0")), libc::ENOENT, "the old name of a renamed, fsynced file");
    m.finish();
}

#[test]
fn kill_9_with_an_open_unlinked_file_reclaims_it_on_the_next_mount() {
    let mut m = Mounted::new("128M");
    File::open(&m.mnt).unwrap().sync_all().unwrap();
    let free0 = statfs(&m.mnt).f_bfree;
    let p = m.path("doomed");
    let mut f = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&p).unwrap();
    f.write_all(&pattern(1, 16 << 20)).unwrap();
    f.sync_all().unwrap();
    fs::remove_file(&p).unwrap();
    File::open(&m.mnt).unwrap().sync_all().unwrap();
    // still readable through the open handle
    let mut head = vec![0u8; 4096];
    std::os::unix::fs::FileExt::read_exact_at(&f, &mut head, 0).unwrap();
    assert!(head == pattern(1, 4096));
    assert!(statfs(&m.mnt).f_bfree + 4000 < free0, "the open unlinked file still holds its blocks");
    m.kill9();
    drop(f);
    m.mount();
    assert_errno(fs::metadata(&p), libc::ENOENT, "the unlinked file after remount");
    let back = wait_until(Duration::from_secs(30), || statfs(&m.mnt).f_bfree + 64 >= free0);
    assert!(back, "orphan's blocks not reclaimed after replay: free {free0} before, {} now", statfs(&m.mnt).f_bfree);
    m.finish();
}

#[test]
fn fsck_of_a_crashed_volume_replays_its_journal_and_is_clean() {
    let mut m = Mounted::new("64M");
    for i in 0..40u64 {
        fs::write(m.path(format!("f{i}")), pattern(i, 5000)).unwrap();
    }
    File::open(&m.mnt).unwrap().sync_all().unwrap();
    fs::create_dir(m.path("after-sync")).unwrap();
    m.kill9();
    let (code, text) = m.fsck();
    assert_eq!(code, 0, "fsck of a volume whose mount was killed:\n{text}");
    assert!(!text.contains("panicked"), "{text}");
    m.mount();
    for i in 0..40u64 {
        assert!(fs::read(m.path(format!("f{i}"))).unwrap() == pattern(i, 5000), "f{i}");
    }
    m.finish();
}

/// A file of 20,000 one-block extents (every other block written), fsynced.
fn fragmented_file(p: &Path) -> File {
    let f = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(p).unwrap();
    for i in (0..40_000u64).step_by(2) {
        std::os::unix::fs::FileExt::write_all_at(&f, b"x", i * 4096).unwrap();
    }
    f.sync_all().unwrap();
    f
}

/// Runs `op` while another thread keeps forcing journal commits (so a multi-transaction
/// operation gets cut between its transactions), then kills the mount with SIGKILL.
fn kill_9_right_after(m: &mut Mounted, op: impl FnOnce()) {
    use std::sync::atomic::{AtomicBool, Ordering};
    let stop = AtomicBool::new(false);
    let tick = m.path("tick");
    std::thread::scope(|s| {
        let (stop, tick) = (&stop, &tick);
        s.spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                if fs::write(tick, b"t").is_err() || File::open(tick).and_then(|t| t.sync_all()).is_err() {
                    break;
                }
            }
        });
        op();
        m.kill9();
        stop.store(true, Ordering::Relaxed);
    });
}

#[test]
fn truncate_interrupted_by_kill_9_is_all_or_nothing_after_replay() {
    let mut m = Mounted::new("256M");
    for round in 0..6 {
        let p = m.path(format!("frag{round}"));
        let f = fragmented_file(&p);
        let full = f.metadata().unwrap();
        kill_9_right_after(&mut m, || f.set_len(3 * 4096).unwrap());
        drop(f);
        m.mount();
        let md = fs::metadata(&p).unwrap();
        let before = (md.len(), md.blocks());
        let cut = md.len() == 3 * 4096 && md.blocks() <= 8 * 8;
        let whole = md.len() == full.len() && md.blocks() >= full.blocks() - 8;
        assert!(cut || whole, "round {round}: after replay the file is neither truncated nor whole: size {} st_blocks {} (before the truncate: size {} st_blocks {})", before.0, before.1, full.len(), full.blocks());
        fs::remove_file(&p).unwrap();
    }
    m.finish();
}

#[test]
fn unlink_of_a_fragmented_file_interrupted_by_kill_9_is_finished_by_the_next_mount() {
    let mut m = Mounted::new("256M");
    File::open(&m.mnt).unwrap().sync_all().unwrap();
    let free0 = statfs(&m.mnt).f_bfree;
    for round in 0..3 {
        let p = m.path(format!("frag{round}"));
        drop(fragmented_file(&p));
        kill_9_right_after(&mut m, || fs::remove_file(&p).unwrap());
        m.mount();
        if let Ok(md) = fs::metadata(&p) {
            // the unlink had not committed: then the file is whole, and goes now
            assert_eq!((md.len(), md.blocks() >= 20_000 * 8), (39_998 * 4096 + 1, true), "round {round}: a file whose unlink was lost");
            fs::remove_file(&p).unwrap();
            File::open(&m.mnt).unwrap().sync_all().unwrap();
        }
        let back = wait_until(Duration::from_secs(60), || statfs(&m.mnt).f_bfree + 64 >= free0);
        assert!(
            back,
            "round {round}: blocks of the unlinked file not reclaimed after replay: free {free0} before, {} now",
            statfs(&m.mnt).f_bfree
        );
        m.unmount_clean();
        m.mount();
    }
    m.finish();
}
