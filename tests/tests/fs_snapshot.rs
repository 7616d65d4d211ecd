//! Snapshots, restores and images end to end: real `mafs lockd` and mount processes, the
//! `mafs snapshot`/`restore` commands, a kill -9 in the middle.
use std::collections::{HashMap, HashSet};
use std::fs;
use std::path::Path;
use std::time::Duration;

use mafs_tests::fs_cluster::ClusterVolume;
use mafs_tests::fs_mount::{code_and_text, mafs, spawn_mount, tear_down};
use mafs_tests::workload::{written_size, Writer};

/// `mafs ARGS`, which must succeed; its standard output.
fn mafs_ok(args: &[&str]) -> String {
    let o = mafs(args);
    let (code, text) = code_and_text(&o);
    assert_eq!(code, 0, "mafs {args:?} failed:\n{text}");
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The id a `snapshot create` printed last.
fn last_line(out: &str) -> String {
    out.lines().last().unwrap_or_default().trim().to_string()
}

/// A field of `mafs snapshot show`.
fn show_field(store: &Path, id: &str, field: &str) -> String {
    let out = mafs_ok(&["snapshot", "show", id, "--store", store.to_str().unwrap()]);
    let line = out.lines().find(|l| l.starts_with(&format!("{field}:"))).unwrap_or_else(|| panic!("no {field} in:\n{out}"));
    line.split_once(':').unwrap().1.trim().to_string()
}

/// What one node's workload had made durable when a snapshot began (`before`: its log then),
/// and how far it had got when the snapshot ended (`next_after`: no round it began is
/// numbered this high).
struct AtSnapshot {
    name: String,
    before: String,
    next_after: u64,
}

/// The restored tree at `mnt` holds exactly a state of the volume at a moment during the
/// snapshot: every file and journal record made durable before it began, whole; nothing begun
/// after it ended; every file there whole.
fn check_restored(mnt: &Path, w: &AtSnapshot, full_log: &str) {
    let name = &w.name;
    let sums: HashMap<u64, &str> = full_log
        .lines()
        .filter_map(|l| l.strip_prefix("ok "))
        .filter_map(|r| r.split_once(' '))
        .filter_map(|(i, s)| Some((i.parse().ok()?, s)))
        .collect();
    let deleted: HashSet<u64> = full_log.lines().filter_map(|l| l.strip_prefix("del ")).filter_map(|i| i.parse().ok()).collect();
    let journal = fs::read_to_string(mnt.join("journal")).unwrap_or_default();
    for line in w.before.lines() {
        let Some((i, sum)) = line.strip_prefix("ok ").and_then(|r| r.split_once(' ')) else { continue };
        let i: u64 = i.parse().unwrap();
        let record = format!("{name} rec {i}");
        assert_eq!(journal.lines().filter(|l| *l == record).count(), 1, "{record:?}, fsynced before the snapshot, not exactly once");
        if deleted.contains(&i) {
            continue;
        }
        let f = mnt.join(name).join(format!("f{i}"));
        assert!(f.exists(), "{name}/f{i}, fsynced before the snapshot, is missing");
        assert_eq!(md5_of(&f), sum, "{name}/f{i} differs from what was fsynced");
    }
    for rec in journal.lines().filter_map(|l| l.strip_prefix(&format!("{name} rec "))) {
        let i: u64 = rec.parse().unwrap();
        assert!(i < w.next_after, "record {i} of {name} was begun after the snapshot ended");
    }
    for e in fs::read_dir(mnt.join(name)).unwrap() {
        let f = e.unwrap().file_name().to_string_lossy().into_owned();
        let Some(i) = f.strip_prefix('f').and_then(|i| i.parse::<u64>().ok()) else { continue };
        assert!(i < w.next_after, "{name}/{f} was begun after the snapshot ended");
        let path = mnt.join(name).join(&f);
        assert_eq!(fs::metadata(&path).unwrap().len(), written_size(i), "{name}/{f} is not whole");
        if let Some(sum) = sums.get(&i) {
            assert_eq!(md5_of(&path), *sum, "{name}/{f} differs from what was written");
        }
    }
}

/// md5sum of a file, as the workload logged it.
fn md5_of(path: &Path) -> String {
    let o = std::process::Command::new("md5sum").arg(path).output().expect("md5sum");
    String::from_utf8_lossy(&o.stdout).split_whitespace().next().unwrap_or_default().to_string()
}

/// Takes a snapshot of the cluster's volume while `writers` run; what each had done.
fn snapshot_during(c: &ClusterVolume, store: &Path, writers: &[Writer], names: &[&str]) -> (String, Vec<AtSnapshot>) {
    let before: Vec<String> = writers.iter().map(Writer::log_text).collect();
    let ep = c.lockd.endpoints();
    let out = mafs_ok(&[
        "snapshot",
        "create",
        c.vol.to_str().unwrap(),
        "--store",
        store.to_str().unwrap(),
        "--lockd",
        &ep,
        "--tag",
        "test=cluster",
    ]);
    let at = names
        .iter()
        .zip(writers)
        .zip(before)
        .map(|((n, w), before)| AtSnapshot { name: n.to_string(), before, next_after: w.next_round() })
        .collect();
    (last_line(&out), at)
}

/// Restores `id` beside the cluster's volume, checks it with fsck, mounts it standalone while
/// the cluster runs, and checks every workload's files in it.
fn restore_and_check(c: &ClusterVolume, store: &Path, id: &str, at: &[AtSnapshot], logs: &[String]) {
    let dir = c.vol.parent().unwrap();
    let restored = dir.join(format!("{id}.img"));
    let uuid = last_line(&mafs_ok(&["restore", id, restored.to_str().unwrap(), "--store", store.to_str().unwrap()]));
    let (code, text) = code_and_text(&mafs(["fsck".as_ref(), restored.as_os_str()]));
    assert_eq!(code, 0, "fsck of the restored {id}:\n{text}");
    let info = mafs_ok(&["info", c.vol.to_str().unwrap()]);
    assert!(!info.contains(&uuid), "the restored volume kept the original's UUID {uuid}");
    let mnt = dir.join(format!("{id}.mnt"));
    fs::create_dir_all(&mnt).unwrap();
    let log = dir.join(format!("{id}.log"));
    let child = spawn_mount(&restored, &mnt, &["--standalone"], &log).unwrap_or_else(|e| panic!("mounting the restored {id}: {e}"));
    for (w, full) in at.iter().zip(logs) {
        check_restored(&mnt, w, full);
    }
    tear_down(&mnt, Some(child));
    let (code, text) = code_and_text(&mafs(["fsck".as_ref(), restored.as_os_str()]));
    assert_eq!(code, 0, "fsck of the restored {id} after its mount:\n{text}");
}

#[test]
fn snapshots_during_a_three_node_workload_restore_to_the_state_at_their_freeze_even_after_a_node_died() {
    let mut c = ClusterVolume::unmounted("256M", &["--slots", "4"]);
    let names = ["node1", "node2", "node3"];
    for n in names {
        c.mount(n, &[]);
    }
    for n in names {
        fs::create_dir(c.node(0).path(n)).unwrap();
    }
    let host = c.vol.parent().unwrap().to_path_buf();
    let store = host.join("store");
    let mut writers: Vec<Writer> =
        names.iter().enumerate().map(|(i, n)| Writer::start(&c.node(i).mnt, n, host.join(format!("{n}.writes")))).collect();
    let progressed = |ws: &[Writer], by: usize, base: &[usize]| ws.iter().zip(base).all(|(w, b)| w.logged() >= b + by);
    assert!(mafs_tests::wait_until(Duration::from_secs(60), || progressed(&writers, 5, &[0, 0, 0])), "the workloads made no progress");

    let (first, at_first) = snapshot_during(&c, &store, &writers, &names);
    // A node dies with the workload running; the survivors recover it and go on.
    let base: Vec<usize> = writers.iter().map(Writer::logged).collect();
    c.kill9(1);
    writers[1].stop();
    let survivors = [0usize, 2];
    assert!(
        mafs_tests::wait_until(Duration::from_secs(60), || survivors.iter().all(|&k| writers[k].logged() >= base[k] + 5)),
        "the survivors did not go on after node2 died"
    );
    let (second, at_second) = snapshot_during(&c, &store, &writers, &names);
    assert_eq!(show_field(&store, &second, "parent"), first, "the second snapshot is incremental on the first");
    let read: u64 = show_field(&store, &second, "chunks read").parse().unwrap();
    assert!(read < 512, "the incremental snapshot read {read} of 512 chunks");
    for (k, w) in writers.into_iter().enumerate() {
        if k == 1 {
            continue;
        }
        w.stop_expecting_no_error(names[k]);
    }
    let logs: Vec<String> = names.iter().map(|n| fs::read_to_string(host.join(format!("{n}.writes"))).unwrap_or_default()).collect();
    restore_and_check(&c, &store, &first, &at_first, &logs);
    restore_and_check(&c, &store, &second, &at_second, &logs);
    c.finish();
}
