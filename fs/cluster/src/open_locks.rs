//! Open locks (OCFS2's): a node holds `open/<ino>` in PR while it has the inode open, so that a
//! node unlinking the inode's last name frees it only when no node has it open. The one that
//! closes it last frees it instead (`Fs::reclaim_if_unused` finds it in the unlinking node's
//! orphan directory).
use std::sync::Arc;

use lockd_client::{Error, LockGuard, LockOptions, Mode, Session};
use mafs_core::error::{FsError, Result};
use mafs_core::format::InodeNo;
use mafs_core::locks::{ClusterHold, ClusterLocks, Mode as InodeMode};

use crate::names::VolumeNames;

pub struct OpenLocks {
    runtime: tokio::runtime::Handle,
    session: Arc<Session>,
    names: VolumeNames,
}

impl OpenLocks {
    pub(crate) fn new(runtime: tokio::runtime::Handle, session: Arc<Session>, names: VolumeNames) -> OpenLocks {
        OpenLocks { runtime, session, names }
    }
}

fn lockd_error(what: &str, e: Error) -> FsError {
    FsError::Cluster(format!("{what}: {e}"))
}

/// A node's open hold of an inode: given back to lockd when dropped (the last close here).
struct OpenHold {
    runtime: tokio::runtime::Handle,
    session: Arc<Session>,
    resource: String,
    guard: Option<LockGuard>,
}

impl Drop for OpenHold {
    fn drop(&mut self) {
        // Released, not just left cached: a cached PR would tell every other node the inode is
        // still open here.
        drop(self.guard.take());
        let (session, resource) = (self.session.clone(), std::mem::take(&mut self.resource));
        let release = async move {
            if let Err(e) = session.release(&resource, None).await {
                tracing::warn!(resource, "cannot give the open lock back: {e}; the inode is freed when the session ends");
            }
        };
        // The release is asynchronous at lockd anyway (it returns once sent); from inside the
        // runtime it must not block a worker.
        if tokio::runtime::Handle::try_current().is_ok() {
            self.runtime.spawn(release);
        } else {
            self.runtime.block_on(release);
        }
    }
}

impl ClusterLocks for OpenLocks {
    /// Inodes are covered by the volume lock the request holds (see `volume_lock.rs`).
    fn hold(&self, _ino: InodeNo, _mode: InodeMode) -> Result<ClusterHold> {
        Ok(Box::new(()))
    }

    fn open_hold(&self, ino: InodeNo) -> Result<ClusterHold> {
        let resource = self.names.open(ino.get());
        // Only a node about to free the inode holds it EX, and only for an instant (a
        // try-lock, under the volume lock this request's node is then kept from): the wait is
        // short.
        let guard = self
            .runtime
            .block_on(self.session.lock(&resource, Mode::PR, LockOptions::default()))
            .map_err(|e| lockd_error(&format!("cannot take the open lock of inode {ino}"), e))?;
        Ok(Box::new(OpenHold { runtime: self.runtime.clone(), session: self.session.clone(), resource, guard: Some(guard) }))
    }

    fn unused_elsewhere(&self, ino: InodeNo) -> Result<bool> {
        let resource = self.names.open(ino.get());
        let r = self.runtime.block_on(async {
            match self.session.lock(&resource, Mode::EX, LockOptions::try_now()).await {
                Ok(g) => {
                    drop(g);
                    self.session.release(&resource, None).await.map(|()| true)
                }
                Err(Error::NotGranted { .. }) => Ok(false),
                Err(e) => Err(e),
            }
        });
        r.map_err(|e| lockd_error(&format!("cannot ask whether another node has inode {ino} open"), e))
    }
}
