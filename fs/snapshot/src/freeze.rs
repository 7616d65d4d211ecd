//! How a snapshot holds the volume's writers while it reads what they changed: through lockd
//! for a cluster (the volume lock in EX: every node commits, writes home and waits), through
//! the mount's control socket for a standalone mount, and not at all for an unmounted volume
//! (its claim keeps mounts out for the whole snapshot).
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use lockd_client::{LockOptions, Mode, Session, SessionOptions};

use crate::error::{Result, SnapshotError};

/// Holds the volume frozen until dropped.
pub type Frozen = Box<dyn std::any::Any>;

pub trait Freezer {
    /// Waits until every writer of the volume has written everything home and stopped.
    fn freeze(&self) -> Result<Frozen>;
    /// Whether nothing else writes the volume at all (then one pass suffices).
    fn exclusive(&self) -> bool {
        false
    }
    fn describe(&self) -> String;
}

/// An unmounted volume, kept so by its claim (no mount on this host) and multi-mount
/// protection (none on another) for the whole snapshot.
pub struct Unmounted {
    _claim: mafs_core::claim::VolumeClaim,
}

impl Unmounted {
    pub fn new(claim: mafs_core::claim::VolumeClaim) -> Unmounted {
        Unmounted { _claim: claim }
    }
}

impl Freezer for Unmounted {
    fn freeze(&self) -> Result<Frozen> {
        Ok(Box::new(()))
    }
    fn exclusive(&self) -> bool {
        true
    }
    fn describe(&self) -> String {
        "unmounted".into()
    }
}

/// The nodes of a cluster, frozen by taking the volume lock exclusively from lockd.
pub struct ClusterFreeze {
    runtime: tokio::runtime::Runtime,
    session: Arc<Session>,
    resource: String,
}

/// How long the freeze waits for the nodes to give the volume lock up before it says why.
const FREEZE_WAIT: Duration = Duration::from_secs(60);

impl ClusterFreeze {
    pub fn connect(endpoints: &[String], volume_uuid: &str) -> Result<ClusterFreeze> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("mafs-snapshot-lockd")
            .enable_all()
            .build()
            .map_err(|e| SnapshotError::io("cannot start the lockd client's runtime", e))?;
        let mut so = SessionOptions::new(format!("snapshot@{}:{}", mafs_core::mmp::this_host(), std::process::id()));
        // If this process dies frozen, lockd ends its session and the nodes go on after a lease.
        so.lease = Duration::from_secs(5);
        let session = runtime
            .block_on(Session::open(endpoints, so))
            .map_err(|e| SnapshotError::Freeze(format!("cannot reach lockd at {} ({e}); is the cluster up?", endpoints.join(","))))?;
        let resource = mafs_cluster::VolumeNames::new(volume_uuid).volume();
        Ok(ClusterFreeze { runtime, session: Arc::new(session), resource })
    }
}

struct ClusterFrozen {
    runtime: tokio::runtime::Handle,
    session: Arc<Session>,
    resource: String,
    guard: Option<lockd_client::LockGuard>,
}

impl Drop for ClusterFrozen {
    fn drop(&mut self) {
        drop(self.guard.take());
        if let Err(e) = self.runtime.block_on(self.session.release(&self.resource, None)) {
            tracing::warn!("releasing the freeze: {e} (lockd releases it when this session ends)");
        }
    }
}

impl Freezer for ClusterFreeze {
    fn freeze(&self) -> Result<Frozen> {
        let start = std::time::Instant::now();
        loop {
            match self.runtime.block_on(self.session.lock(&self.resource, Mode::EX, LockOptions::wait(Duration::from_secs(5)))) {
                Ok(g) => {
                    return Ok(Box::new(ClusterFrozen {
                        runtime: self.runtime.handle().clone(),
                        session: self.session.clone(),
                        resource: self.resource.clone(),
                        guard: Some(g),
                    }))
                }
                Err(e @ (lockd_client::Error::TimedOut { .. } | lockd_client::Error::NotGranted { .. }))
                    if start.elapsed() < FREEZE_WAIT =>
                {
                    tracing::info!("the nodes have not all written the volume back yet ({e}); waiting");
                }
                Err(e) => {
                    return Err(SnapshotError::Freeze(format!(
                        "the nodes did not give up the volume lock {} within {FREEZE_WAIT:?} ({e}); a node may be dead and not yet \
                         recovered: check `mafs cluster status`",
                        self.resource
                    )))
                }
            }
        }
    }
    fn describe(&self) -> String {
        "cluster (through lockd)".into()
    }
}

/// A standalone mount, frozen through its control socket (`mafs_fuse::control`).
pub struct StandaloneFreeze {
    path: PathBuf,
}

impl StandaloneFreeze {
    /// The mount of `uuid` on this host, if one listens.
    pub fn find(uuid: &str) -> Option<StandaloneFreeze> {
        let path = mafs_core::freeze_gate::control_socket_path(uuid);
        UnixStream::connect(&path).ok().map(|_| StandaloneFreeze { path })
    }
}

struct SocketFrozen {
    stream: UnixStream,
}

impl Drop for SocketFrozen {
    fn drop(&mut self) {
        // Closing the connection thaws too, should the answer never come.
        let _ = self.stream.write_all(b"thaw\n");
        let mut line = String::new();
        let _ = BufReader::new(&self.stream).read_line(&mut line);
    }
}

impl Freezer for StandaloneFreeze {
    fn freeze(&self) -> Result<Frozen> {
        let fail = |e: std::io::Error| SnapshotError::Freeze(format!("the mount's control socket {}: {e}", self.path.display()));
        let mut stream = UnixStream::connect(&self.path).map_err(fail)?;
        stream.write_all(b"freeze\n").map_err(fail)?;
        let mut line = String::new();
        BufReader::new(&stream).read_line(&mut line).map_err(fail)?;
        if line.trim() != "frozen" {
            return Err(SnapshotError::Freeze(format!("the mount answered {:?} instead of freezing", line.trim())));
        }
        Ok(Box::new(SocketFrozen { stream }))
    }
    fn describe(&self) -> String {
        format!("standalone mount ({})", self.path.display())
    }
}
