//! Three real replicas, many `mafs lock` clients hammering three resources in EX and PR, and the
//! leader killed with -9 and restarted mid-run. A history checker then asserts that no two
//! holders of conflicting modes ever overlapped, that every fencing token was granted once,
//! that tokens grow along each resource's conflicting hand-offs, and that every lock a client
//! was told it held really ran its critical section (none lost, none granted twice).
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mafs_tests::lock_history::{check, History};
use mafs_tests::lockd_cluster::LockdCluster;
use mafs_tests::wait_until;
use rand::{Rng, SeedableRng};

const WORKERS: usize = 6;
/// Each worker keeps going until the restarted replica has been back for a while, but takes at
/// least MIN_ROUNDS and at most MAX_ROUNDS locks.
const MIN_ROUNDS: usize = 10;
const MAX_ROUNDS: usize = 150;

#[test]
fn no_conflicting_holders_across_a_leader_crash_and_restart() {
    let mut c = LockdCluster::start(3, &["--snapshot-every", "100"]);
    c.wait_leader(Duration::from_secs(15));
    let hist = History::new(&c.dir.path().join("hist"));
    let started = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..WORKERS)
        .map(|w| {
            let cmds: Vec<std::process::Command> = {
                let mut rng = rand::rngs::StdRng::seed_from_u64(w as u64);
                (0..MAX_ROUNDS)
                    .map(|_| {
                        let res = format!("res/{}", rng.gen_range(0..3));
                        let mode = if rng.gen_bool(0.3) { "PR" } else { "EX" };
                        let script = hist.script(w, 0.02);
                        c.lock_cmd(mode, &res, &["sh", "-c", &script])
                    })
                    .collect()
            };
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut ok = 0;
                let mut failures = Vec::new();
                for (round, mut cmd) in cmds.into_iter().enumerate() {
                    if round >= MIN_ROUNDS && stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let out = cmd.output().expect("run mafs lock");
                    if out.status.success() {
                        ok += 1;
                    } else {
                        failures.push(String::from_utf8_lossy(&out.stderr).into_owned());
                    }
                }
                (ok, failures)
            })
        })
        .collect();

    // Mid-run: kill the leader outright, let the others elect, bring it back from its data dir.
    std::thread::sleep(Duration::from_millis(1500));
    let old = c.wait_leader(Duration::from_secs(10));
    c.kill(old);
    let killed_at = started.elapsed();
    std::thread::sleep(Duration::from_millis(1500));
    c.spawn(old, false);
    // Keep the clients busy while the old leader rejoins as a follower.
    std::thread::sleep(Duration::from_millis(2000));
    stop.store(true, Ordering::Relaxed);

    let mut successes = 0;
    for w in workers {
        let (ok, failures) = w.join().expect("worker thread");
        assert!(failures.is_empty(), "mafs lock failed: {failures:#?}");
        successes += ok;
    }
    let elapsed = started.elapsed();
    assert!(elapsed > killed_at + Duration::from_secs(3), "the clients finished before the leader crash mattered ({elapsed:?})");

    let holds = hist.holds(WORKERS);
    check(&holds);
    assert_eq!(holds.len(), successes, "every successful `mafs lock` ran its command exactly once");
    assert!(successes >= WORKERS * MIN_ROUNDS);
    let workers_seen: BTreeSet<usize> = holds.iter().map(|h| h.worker).collect();
    assert_eq!(workers_seen.len(), WORKERS);

    // The restarted replica catches up with the rest.
    let caught_up = wait_until(Duration::from_secs(15), || {
        let st = c.statuses();
        let max_commit = st.iter().map(|s| s.commit).max().unwrap_or(0);
        st.iter().any(|s| s.id == old && s.applied >= max_commit && max_commit > 0)
    });
    assert!(caught_up, "replica {old} did not catch up: {:?}\n{}", c.statuses(), c.log_tail(old));
    eprintln!("{} locks by {WORKERS} clients in {elapsed:?} across a leader crash", holds.len());
}
