//! One run of `mafs lock` clients against three real replicas while a nemesis goes through
//! every fault lockd must survive, one after the other: the leader killed with -9 and
//! restarted; a follower stopped with SIGSTOP; the leader cut off from its peers (silently,
//! packets blackholed) and then from its clients; a follower's log damaged in the middle,
//! refused at restart and the replica replaced the documented way; a running replica removed
//! and added back. The history checker then asserts that no two conflicting holders ever
//! overlapped, that every fencing token was granted once and grew along each resource's
//! conflicting hand-offs, and that every granted lock ended up released.
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mafs_tests::lock_history::{check, History};
use mafs_tests::lockd_cluster::{LockdCluster, CLIENTS};
use mafs_tests::net_proxy::LinkMode;
use mafs_tests::{mafs_bin, wait_until};
use rand::{Rng, SeedableRng};

const WORKERS: usize = 5;

fn step(started: Instant, what: &str) {
    eprintln!("nemesis {:>6.1}s: {what}", started.elapsed().as_secs_f64());
}

fn ok(out: &std::process::Output, what: &str) {
    assert!(out.status.success(), "{what}: {}", String::from_utf8_lossy(&out.stderr));
}

fn a_follower(c: &LockdCluster, not: &[u64]) -> u64 {
    let leader = c.wait_leader(Duration::from_secs(15));
    c.replicas.iter().map(|r| r.id).find(|id| *id != leader && !not.contains(id)).expect("a follower")
}

#[test]
fn no_lock_is_held_twice_through_kills_pauses_partitions_replacements_removals_and_a_damaged_log() {
    let mut c = LockdCluster::start_partitionable(3, &["--snapshot-every", "300"]);
    c.wait_leader(Duration::from_secs(15));
    let hist = History::new(&c.dir.path().join("hist"));
    let endpoints = c.endpoints();
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..WORKERS)
        .map(|w| {
            let (stop, endpoints) = (stop.clone(), endpoints.clone());
            let script = hist.script(w, 0.02);
            std::thread::spawn(move || {
                let mut rng = rand::rngs::StdRng::seed_from_u64(w as u64 + 100);
                let mut codes = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let res = format!("res/{}", rng.gen_range(0..3));
                    let mode = if rng.gen_bool(0.3) { "PR" } else { "EX" };
                    let out = Command::new(mafs_bin())
                        .args(["lock", "--endpoints", &endpoints, "--mode", mode, "--timeout", "60", &res, "sh", "-c", &script])
                        .stdin(Stdio::null())
                        .output()
                        .expect("run mafs lock");
                    if !out.status.success() {
                        eprintln!("worker {w}: {:?}: {}", out.status.code(), String::from_utf8_lossy(&out.stderr).trim());
                    }
                    codes.push(out.status.code());
                }
                codes
            })
        })
        .collect();

    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs(1));
    let leader = c.wait_leader(Duration::from_secs(15));
    step(t0, &format!("kill -9 leader {leader}, restart it 1.5 s later"));
    c.kill(leader);
    std::thread::sleep(Duration::from_millis(1500));
    c.spawn(leader, false);
    std::thread::sleep(Duration::from_secs(1));

    let f = a_follower(&c, &[]);
    step(t0, &format!("SIGSTOP follower {f} for 2 s"));
    c.freeze(f, true);
    std::thread::sleep(Duration::from_secs(2));
    c.freeze(f, false);
    std::thread::sleep(Duration::from_secs(1));

    let leader = c.wait_leader(Duration::from_secs(15));
    step(t0, &format!("leader {leader} blackholed from its peers for 3 s"));
    c.isolate(leader, LinkMode::Blackhole);
    std::thread::sleep(Duration::from_secs(3));
    c.heal();
    std::thread::sleep(Duration::from_secs(1));

    let leader = c.wait_leader(Duration::from_secs(15));
    step(t0, &format!("leader {leader} cut off from its clients for 3 s"));
    c.cut(CLIENTS, leader, LinkMode::Drop);
    std::thread::sleep(Duration::from_secs(3));
    c.heal();
    std::thread::sleep(Duration::from_secs(1));

    let f = a_follower(&c, &[]);
    step(t0, &format!("follower {f}: kill -9, a byte flipped mid-log, restart refused, replaced"));
    c.kill(f);
    let log = c.replica(f).data_dir.join("raft.log");
    let mut b = std::fs::read(&log).expect("raft.log");
    let end = b.iter().rposition(|x| *x != 0).expect("records");
    b[end / 2] ^= 0x08;
    std::fs::write(&log, b).expect("damage raft.log");
    c.spawn(f, false);
    let st = c.wait_exit(f, Duration::from_secs(10)).expect("a replica with a damaged log must stop");
    assert!(!st.success(), "{}", c.log_tail(f));
    ok(&c.lockd(&["remove-member", "--id", &f.to_string()]), "remove-member");
    c.add_back(f);

    let g = a_follower(&c, &[f]);
    step(t0, &format!("running replica {g} removed, then added back"));
    ok(&c.lockd(&["remove-member", "--id", &g.to_string()]), "remove-member");
    let removed = wait_until(Duration::from_secs(10), || c.status_of(g).is_some_and(|s| s.role == "removed"));
    assert!(removed, "replica {g} does not know it was removed: {:?}", c.statuses());
    c.signal(g, libc::SIGTERM);
    assert!(c.wait_exit(g, Duration::from_secs(5)).is_some(), "removed replica ignored SIGTERM");
    c.add_back(g);

    std::thread::sleep(Duration::from_secs(1));
    step(t0, "stopping the clients");
    stop.store(true, Ordering::Relaxed);
    let mut codes = Vec::new();
    for w in workers {
        codes.extend(w.join().expect("worker"));
    }
    let ran = codes.iter().filter(|c| matches!(c, Some(0) | Some(124))).count();
    let holds = hist.holds(WORKERS);
    check(&holds);
    assert_eq!(holds.len(), ran, "every `mafs lock` that ran its command shows once in the history");
    let failed = codes.len() - codes.iter().filter(|c| **c == Some(0)).count();
    assert!(failed * 10 <= codes.len(), "{failed} of {} `mafs lock` runs failed", codes.len());
    assert!(holds.len() >= 50, "only {} locks in the whole run", holds.len());

    // Nothing stays held: every session closed (or, if killed, expired).
    let released = wait_until(Duration::from_secs(30), || {
        let out = c.lockd(&["dump", "--prefix", "res/"]);
        out.status.success() && !String::from_utf8_lossy(&out.stdout).contains("granted")
    });
    assert!(released, "locks still held after the run:\n{}", String::from_utf8_lossy(&c.lockd(&["dump"]).stdout));
    eprintln!("{} locks by {WORKERS} clients in {:?}; {failed} runs failed", holds.len(), t0.elapsed());
}
