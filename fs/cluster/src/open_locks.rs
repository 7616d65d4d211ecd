//! Open locks (OCFS2's): a node holds `open/<ino>` while it has the inode open, so that a node
//! unlinking the inode's last name frees it only when no node has it open; the one that closes
//! it last frees it instead (`Fs::reclaim_if_unused` finds it in the unlinking node's orphan
//! directory).
//!
//! The lock stays cached after the last close, so that a node working alone pays no lockd
//! round trip per open, close or unlink: the node that creates a file takes it EX (a try-lock),
//! opens and closes it again on the cached lock, and an unlink finds it held EX here, i.e. open
//! nowhere else. Another node that opens the file asks for PR, and this node gives the lock up
//! (or, if it has the inode open, downgrades to PR); one that wants to free the inode asks for
//! EX and waits a moment, and nodes that have the inode closed give their cached PR up
//! (`revoke_open_lock`).
use std::sync::{Arc, Weak};
use std::time::Duration;

use lockd_client::{BlockingNotice, Error, LockOptions, Mode, Revoke, Session};
use mafs_core::error::{FsError, Result};
use mafs_core::filesystem::Fs;
use mafs_core::format::InodeNo;
use mafs_core::locks::{ClusterHold, ClusterLocks, Mode as InodeMode};

use crate::names::VolumeNames;

/// How long a node about to free an unlinked inode waits for the other nodes' cached open
/// locks: they give an unused one up in a round trip or two; one still held means the inode is
/// open there.
const FREE_WAIT: Duration = Duration::from_secs(2);

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

impl ClusterLocks for OpenLocks {
    /// Used inside `inode_locks.rs`, which takes the inode locks themselves.
    fn hold(&self, _ino: InodeNo, _mode: InodeMode) -> Result<ClusterHold> {
        Ok(Box::new(()))
    }

    fn open_lock(&self, ino: InodeNo) -> Result<()> {
        crate::assert_no_journal_handle("taking an open lock");
        let resource = self.names.open(ino.get());
        // Cached (EX from the batch that made the inode, or PR from an earlier open): no
        // round trip, and no runtime.
        if self.session.lock_cached(&resource, Mode::PR).is_some() {
            return Ok(());
        }
        let held = self.runtime.block_on(async {
            if self.session.cached(&resource).is_none() {
                // Nobody else has it (a file this node just made, typically): EX, so that
                // freeing it later needs no round trip.
                match self.session.lock(&resource, Mode::EX, LockOptions::try_now()).await {
                    Ok(_) => return Ok(()),
                    Err(Error::NotGranted { .. }) => {}
                    Err(e) => return Err(e),
                }
            }
            // Only a node that is freeing the inode, or caches EX without using it, stands in
            // the way: the wait is short.
            self.session.lock(&resource, Mode::PR, LockOptions::default()).await.map(drop)
        });
        // The guard is gone, the lock stays cached: while the inode is open here, a revocation
        // keeps it (`revoke_open_lock`).
        held.map_err(|e| lockd_error(&format!("cannot take the open lock of inode {ino}"), e))
    }

    fn shares_inodes(&self) -> bool {
        true
    }

    fn unused_elsewhere(&self, ino: InodeNo, wait: bool) -> Result<bool> {
        let resource = self.names.open(ino.get());
        if !wait {
            return Ok(self.session.cached(&resource) == Some(Mode::EX));
        }
        crate::assert_no_journal_handle("waiting for other nodes' open locks");
        let r = self.runtime.block_on(self.session.lock(&resource, Mode::EX, LockOptions::wait(FREE_WAIT)));
        match r {
            // Kept cached: this node is the one freeing it.
            Ok(_) => Ok(true),
            Err(Error::TimedOut { .. }) | Err(Error::NotGranted { .. }) | Err(Error::Deadlock { .. }) => Ok(false),
            Err(e) => Err(lockd_error(&format!("cannot ask whether another node has inode {ino} open"), e)),
        }
    }
}

/// Answers another node's request for an open lock this node holds cached: kept (or shared) while
/// the inode is open here, given up otherwise.
pub(crate) fn revoke_open_lock(ino: u64, fs: Option<Weak<Fs>>, notice: &BlockingNotice) -> Revoke {
    let open_here = fs.and_then(|f| f.upgrade()).is_some_and(|f| f.is_open_here(InodeNo(ino)));
    match (open_here, notice.held, notice.requested) {
        (false, _, _) => Revoke::Release { lvb: None },
        (true, Mode::EX, Mode::PR) => Revoke::Downgrade { mode: Mode::PR, lvb: None },
        (true, _, _) => Revoke::Keep,
    }
}
