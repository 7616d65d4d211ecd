//! Helpers shared by the end-to-end tests: where the `mafs` binary is, scratch folders, waiting.
pub mod faulty_disk;
pub mod fs_cluster;
pub mod fs_mount;
pub mod lock_history;
pub mod lockd_cluster;
pub mod net_proxy;
pub mod workload;

use std::path::PathBuf;
use std::time::{Duration, Instant};

/// The `mafs` binary under test: `$MAFS_BIN` if set, else the one cargo built beside this test
/// executable (`target/<profile>/mafs`; the test itself lives in `target/<profile>/deps/`).
pub fn mafs_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("MAFS_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("current_exe");
    let profile_dir = exe.parent().and_then(|d| d.parent()).expect("target/<profile>");
    let bin = profile_dir.join("mafs");
    assert!(bin.exists(), "no mafs binary at {}: build it first (cargo build --release -p mafs-cli) or set MAFS_BIN", bin.display());
    bin
}

/// Polls `cond` every 20 ms until it holds or `timeout` passes; returns whether it held.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    cond()
}

/// A free TCP port on 127.0.0.1 (bound then released; good enough for tests on one machine).
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local_addr").port()
}
