//! The whole cluster killed with -9 and restarted from its data directories: a lock held across
//! the outage is still held (and its holder's session survives), fencing tokens continue above
//! every token granted before, and the lock is free once its holder is done. And a replica
//! whose listen port is taken exits with an error that says so.
use std::process::Stdio;
use std::time::Duration;

use mafs_tests::lockd_cluster::LockdCluster;
use mafs_tests::wait_until;

fn token_of(c: &LockdCluster, resource: &str) -> u64 {
    let out = c.lock_cmd("EX", resource, &["sh", "-c", "echo $MAFS_FENCING_TOKEN"]).output().expect("mafs lock");
    assert!(out.status.success(), "mafs lock: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().parse().expect("token")
}

struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `mafs lock --try RESOURCE true`: whether the lock was free.
fn try_lock(c: &LockdCluster, resource: &str) -> bool {
    std::process::Command::new(mafs_tests::mafs_bin())
        .args(["lock", "--endpoints", &c.endpoints(), "--try", resource, "true"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("mafs lock --try")
        .success()
}

#[test]
fn a_full_cluster_restart_keeps_locks_and_tokens() {
    let mut c = LockdCluster::start(3, &["--snapshot-every", "30"]);
    c.wait_leader(Duration::from_secs(15));
    let before: Vec<u64> = (0..12).map(|i| token_of(&c, &format!("r/{}", i % 3))).collect();
    let max_before = *before.iter().max().expect("tokens");

    let marker = c.dir.path().join("holder-in");
    let script = format!("touch {}; sleep 8", marker.display());
    let mut holder = KillOnDrop(c.lock_cmd("EX", "held", &["sh", "-c", &script]).spawn().expect("holder"));
    assert!(wait_until(Duration::from_secs(10), || marker.exists()), "holder never got the lock");

    for id in 1..=3 {
        c.kill(id);
    }
    std::thread::sleep(Duration::from_millis(500));
    for id in 1..=3 {
        c.spawn(id, false);
    }
    c.wait_leader(Duration::from_secs(15));

    assert!(!try_lock(&c, "held"), "the lock held before the restart was free after it");
    let after = token_of(&c, "r/new");
    assert!(after > max_before, "token {after} after the restart is not above {max_before}");

    let status = holder.0.wait().expect("holder exit");
    assert!(status.success(), "the holder's session did not survive the outage: {status:?}");
    assert!(try_lock(&c, "held"), "the lock stayed held after its holder released it");
}

#[test]
fn a_replica_whose_listen_port_is_taken_says_so_and_exits() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr").to_string();
    let dir = tempfile::tempdir().expect("tempdir");
    let out = std::process::Command::new(mafs_tests::mafs_bin())
        .args(["lockd", "--id", "1", "--listen", &addr, "--data-dir"])
        .arg(dir.path().join("d"))
        .stdin(Stdio::null())
        .output()
        .expect("mafs lockd");
    assert!(!out.status.success(), "lockd started on a port another socket holds");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("cannot listen on {addr}")) && err.contains("pick another --listen address"), "unclear error: {err}");
}
