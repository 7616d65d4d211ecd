//! Membership while running: a replica is removed, wiped, added back and started empty; it
//! catches up from a snapshot (the log it would need is compacted away) and then counts as a
//! voter, so the cluster survives losing another original replica. Removing the leader itself
//! hands the cluster to the other two.
use std::time::Duration;

use mafs_tests::lockd_cluster::LockdCluster;
use mafs_tests::wait_until;

fn run_locks(c: &LockdCluster, n: usize) {
    for i in 0..n {
        let out = c.lock_cmd("EX", &format!("m/{}", i % 4), &["true"]).output().expect("mafs lock");
        assert!(out.status.success(), "mafs lock: {}", String::from_utf8_lossy(&out.stderr));
    }
}

fn members(c: &LockdCluster) -> String {
    let out = c.lockd(&["status"]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.lines().find(|l| l.starts_with("members:")).unwrap_or("").to_string()
}

#[test]
fn a_wiped_replica_is_re_added_and_catches_up_from_a_snapshot() {
    let mut c = LockdCluster::start(3, &["--snapshot-every", "20"]);
    let leader = c.wait_leader(Duration::from_secs(15));
    let victim = (1..=3).find(|id| *id != leader).expect("a follower");
    run_locks(&c, 12);

    let out = c.lockd(&["remove-member", "--id", &victim.to_string()]);
    assert!(out.status.success(), "remove-member: {}", String::from_utf8_lossy(&out.stderr));
    assert!(!members(&c).contains(&format!("{victim}=")), "{}", members(&c));
    c.kill(victim);
    c.wipe(victim);
    run_locks(&c, 12);

    let addr = c.replica(victim).addr.clone();
    let out = c.lockd(&["add-member", "--id", &victim.to_string(), "--addr", &addr]);
    assert!(out.status.success(), "add-member: {}", String::from_utf8_lossy(&out.stderr));
    c.spawn(victim, true);
    let caught_up = wait_until(Duration::from_secs(20), || {
        let st = c.statuses();
        let lead = st.iter().find(|s| s.role == "leader").map(|s| s.commit).unwrap_or(u64::MAX);
        st.iter().any(|s| s.id == victim && s.applied >= lead && s.snapshot > 0)
    });
    assert!(caught_up, "re-added replica did not catch up from a snapshot: {:?}\n{}", c.statuses(), c.log_tail(victim));
    assert!(members(&c).contains(&format!("{victim}={addr}")), "{}", members(&c));

    // Lose the other original follower: the cluster needs the re-added replica's vote now.
    let other = (1..=3).find(|id| *id != leader && *id != victim).expect("third replica");
    c.kill(other);
    run_locks(&c, 4);
    let st = c.status_of(victim).expect("re-added replica answers status");
    let lead = c.status_of(leader).expect("leader answers");
    assert!(st.applied + 5 >= lead.commit, "{st:?} vs {lead:?}");
}

#[test]
fn removing_the_current_leader_hands_the_cluster_to_the_other_two() {
    let c = LockdCluster::start(3, &[]);
    let leader = c.wait_leader(Duration::from_secs(15));
    run_locks(&c, 4);

    let out = c.lockd(&["remove-member", "--id", &leader.to_string()]);
    assert!(out.status.success(), "remove-member of the leader: {}", String::from_utf8_lossy(&out.stderr));
    // The two left elect one of themselves, and the removed replica no longer leads anyone.
    let handed_over = wait_until(Duration::from_secs(15), || {
        let st = c.statuses();
        let leaders: Vec<u64> = st.iter().filter(|s| s.role == "leader").map(|s| s.id).collect();
        leaders.len() == 1 && leaders[0] != leader
    });
    assert!(handed_over, "no new leader among the other two: {:?}\n{}", c.statuses(), c.log_tail(leader));
    assert!(!members(&c).contains(&format!("{leader}=")), "{}", members(&c));
    run_locks(&c, 8);
}
