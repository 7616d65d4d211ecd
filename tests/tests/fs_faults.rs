//! A device that goes bad under running cluster nodes (a FUSE-served faulty disk,
//! `mafs_tests::faulty_disk`): what applications see while it is bad, and what is left once it
//! is good again.
use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use mafs_tests::faulty_disk::{Fault, FaultyDisk};
use mafs_tests::fs_cluster::ClusterVolume;

/// Writes `body` to `path` and fsyncs it; the errno if any step failed.
fn write_synced(path: &Path, body: &[u8]) -> Result<(), i32> {
    let errno = |e: std::io::Error| e.raw_os_error().unwrap_or(-1);
    let mut f = fs::File::create(path).map_err(errno)?;
    f.write_all(body).map_err(errno)?;
    f.sync_all().map_err(errno)
}

fn body(node: usize, i: usize) -> Vec<u8> {
    (0..4096 + (i % 64) * 997).map(|k| (k * 31 + i * 7 + node * 101) as u8).collect()
}

/// What one node's workload did: the files whose fsync succeeded, and the errnos it met.
#[derive(Default)]
struct Outcome {
    acknowledged: BTreeMap<String, Vec<u8>>,
    errors: Vec<i32>,
}

/// Each node writes and fsyncs new files until `stop`, pausing after an error.
fn workload(c: &ClusterVolume, stop: &AtomicBool) -> Vec<Outcome> {
    std::thread::scope(|s| {
        let runs: Vec<_> = (0..2)
            .map(|n| {
                let node = c.node(n);
                s.spawn(move || {
                    let mut out = Outcome::default();
                    let mut i = 0;
                    while !stop.load(Ordering::Acquire) {
                        let name = format!("n{n}/w{i}");
                        let b = body(n, i);
                        match write_synced(&node.path(&name), &b) {
                            Ok(()) => {
                                out.acknowledged.insert(name, b);
                            }
                            Err(e) => {
                                out.errors.push(e);
                                std::thread::sleep(Duration::from_millis(50));
                            }
                        }
                        i += 1;
                    }
                    out
                })
            })
            .collect();
        runs.into_iter().map(|r| r.join().expect("workload thread")).collect()
    })
}

/// Two cluster nodes on a disk that turns bad (`fault`) for two seconds (a fault that fails
/// writes: until a node withdrew, at most 12 s) in the middle of a write-and-fsync workload on
/// both, then good again. Returns what the workload saw; checks
/// that, once the nodes are mounted again, every write fsynced before or during the fault is
/// intact and fsck finds the volume clean.
/// Also returns the nodes' logged errors.
fn through_a_bad_spell(fault: Fault) -> (Vec<Outcome>, String) {
    let mut c = ClusterVolume::unmounted("256M", &["--slots", "4"]);
    let disk = FaultyDisk::new(&c.vol, &c.vol.with_file_name("faulty"));
    c.vol = disk.path();
    c.mount("node1", &[]);
    c.mount("node2", &[]);
    for n in 0..2 {
        fs::create_dir(c.node(n).path(format!("n{n}"))).expect("mkdir");
    }
    let stop = AtomicBool::new(false);
    let outcome = std::thread::scope(|s| {
        let run = s.spawn(|| workload(&c, &stop));
        std::thread::sleep(Duration::from_secs(1));
        disk.set(fault);
        eprintln!("{fault:?}: fault on");
        assert!(mafs_tests::wait_until(Duration::from_secs(10), || disk.hits() > 0), "{fault:?}: the nodes wrote nothing to the bad disk");
        std::thread::sleep(Duration::from_secs(2));
        // A fault that fails writes stays until a journal write met it and a node withdrew:
        // a node whose data writes fail first never reaches its fsync, so only a commit of
        // its own (every 5 s) may come in a two-second spell (1 run in ~5 had none).
        if !matches!(fault, Fault::ShortWrites) {
            mafs_tests::wait_until(Duration::from_secs(10), || (0..2).any(|n| c.node(n).log().contains("withdrawing from the cluster")));
        }
        disk.set(Fault::None);
        eprintln!("{fault:?}: fault off after {} hits", disk.hits());
        std::thread::sleep(Duration::from_millis(500));
        stop.store(true, Ordering::Release);
        run.join().expect("workload")
    });
    // The nodes leave (a node whose journal met the fault answers EIO until it is mounted
    // again, and may not leave cleanly); new ones mount, replaying what is needed.
    eprintln!("{fault:?}: workload stopped");
    for n in 0..2 {
        let st = c.unmount(n);
        eprintln!("{fault:?}: node{} left: {st}", n + 1);
    }
    // A node that withdrew gave its session up without a goodbye: its name stays taken until
    // lockd expires that session (a lease and lockd's margin, 4 s) and the next mount recovers
    // its slot — as the refusal says, a mount a few seconds later succeeds.
    let mut again = |name: &str| {
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        loop {
            match c.try_mount_as(&format!("{name}-again"), name, &[]) {
                Ok(n) => return n,
                Err(e) if e.contains("already mounted") && std::time::Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(500))
                }
                Err(e) => panic!("{fault:?}: {name} does not mount again once the disk is good: {e}"),
            }
        }
    };
    let (a, b) = (again("node1"), again("node2"));
    for (n, o) in outcome.iter().enumerate() {
        for (name, want) in &o.acknowledged {
            for reader in [a, b] {
                let got = fs::read(c.node(reader).path(name))
                    .unwrap_or_else(|e| panic!("{fault:?}: node{} acknowledged {name} (fsync returned) and it is gone: {e}", n + 1));
                assert!(
                    got == *want,
                    "{fault:?}: {name} (fsynced by node{}) reads back changed ({} bytes, wrote {})",
                    n + 1,
                    got.len(),
                    want.len()
                );
            }
        }
    }
    let logged: String = c
        .nodes
        .iter()
        .flat_map(|n| n.log().lines().filter(|l| l.contains("ERROR")).map(|l| format!("{}: {l}\n", n.name)).collect::<Vec<_>>())
        .collect();
    c.finish();
    drop(disk);
    (outcome, logged)
}

/// A bad spell of `fault` gives applications EIO and nothing else, and a node withdraws.
fn gives_eio_and_a_node_withdraws(fault: Fault) {
    let (out, logged) = through_a_bad_spell(fault);
    assert!(logged.contains("withdrawing from the cluster"), "{fault:?}: no node withdrew (and let the other recover it):\n{logged}");
    let errors: Vec<i32> = out.iter().flat_map(|o| o.errors.iter().copied()).collect();
    assert!(errors.contains(&libc::EIO), "{fault:?}: no application saw EIO: {errors:?}");
    assert!(errors.iter().all(|e| *e == libc::EIO), "{fault:?}: errors other than EIO: {errors:?}");
}

/// Every write and flush of the device failing with EIO: applications get EIO (the node's
/// journal stops at its first failed write and answers EIO from then on, never a success for
/// what was not stored); unable to write back what its locks cover, the node withdraws (gives
/// its session up, so the other node — or its next mount — recovers its journal once the disk
/// is good) instead of stalling the cluster; nothing acknowledged is lost.
#[test]
fn a_disk_failing_every_write_gives_eio_loses_nothing_fsynced_and_leaves_fsck_clean() {
    gives_eio_and_a_node_withdraws(Fault::Eio);
}

/// Torn writes (half the bytes stored, then EIO): the same as EIO for applications; the journal
/// (checksummed records, images replayed whole) leaves no torn metadata behind.
#[test]
fn a_disk_tearing_writes_gives_eio_loses_nothing_fsynced_and_leaves_fsck_clean() {
    gives_eio_and_a_node_withdraws(Fault::TornWrites);
}

/// Short writes (the device stores part and says so) are not errors: the device layer writes
/// the rest, applications see nothing, and everything they wrote is there.
#[test]
fn a_disk_answering_short_writes_costs_applications_nothing() {
    let (out, logged) = through_a_bad_spell(Fault::ShortWrites);
    let errors: Vec<i32> = out.iter().flat_map(|o| o.errors.iter().copied()).collect();
    assert!(errors.is_empty(), "short writes surfaced as errors: {errors:?}; the nodes logged:\n{logged}");
}
