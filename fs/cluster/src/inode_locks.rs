//! A lock per inode and per allocation group (GFS2's inode and resource-group glocks), the
//! cluster locks the filesystem takes through `mafs_core::locks::ClusterLocks`: `inode/<n>` PR
//! to read an inode and what hangs below it, EX to change it; `group/<a>` EX to allocate from
//! a group or free into it; `rename` EX for a rename between directories. Every lock stays
//! cached after use, so a node working alone makes no lockd round trip; another node's request
//! makes this node write back and forget what the lock covers (`revoke` in `volume_lock.rs`).
//!
//! A new inode's lock is taken before the inode exists: the filesystem reserves inode numbers
//! a batch at a time (`ClusterLocks::inode_batch`) and this backend takes their inode and open
//! locks in one lockd request (`prefetch_new`, a TryLockMany: one log entry for the batch), so
//! a create finds both cached and makes no lockd round trip of its own.
use std::sync::Arc;

use lockd_client::{Mode, Session};
use mafs_core::error::{FsError, Result};
use mafs_core::format::InodeNo;
use mafs_core::locks::{ClusterHold, ClusterLocks, Mode as InodeMode};

use crate::names::VolumeNames;
use crate::open_locks::OpenLocks;
use crate::volume_lock::{take_lock, wait_for_lock, Attached};

/// Inode numbers a node reserves, and locks, at a time.
pub const INODE_BATCH: usize = 64;

pub struct InodeLocks {
    runtime: tokio::runtime::Handle,
    session: Arc<Session>,
    names: VolumeNames,
    open: OpenLocks,
    /// The filesystem, whose blocks kept across a hand-over are checked at each grant.
    attached: Arc<Attached>,
}

impl InodeLocks {
    pub(crate) fn new(runtime: tokio::runtime::Handle, session: Arc<Session>, names: VolumeNames, attached: Arc<Attached>) -> InodeLocks {
        let open = OpenLocks::new(runtime.clone(), session.clone(), names.clone());
        InodeLocks { runtime, session, names, open, attached }
    }

    fn take(&self, resource: &str, mode: Mode) -> Result<lockd_client::LockGuard> {
        crate::assert_no_journal_handle("taking a cluster lock");
        take_lock(&self.runtime, &self.session, resource, mode)
    }

    fn wait(&self, resource: &str, mode: Mode) -> Result<ClusterHold> {
        Ok(Box::new(self.take(resource, mode)?))
    }
}

impl ClusterLocks for InodeLocks {
    fn hold(&self, ino: InodeNo, mode: InodeMode) -> Result<ClusterHold> {
        let mode = match mode {
            InodeMode::Shared => Mode::PR,
            InodeMode::Exclusive => Mode::EX,
        };
        let guard = self.take(&self.names.inode(ino.get()), mode)?;
        // Before the request reads anything of the inode: what this node kept of it while
        // the lock was elsewhere stays only if the version is the same (`lock_value.rs`).
        if let Some(fs) = self.attached.fs().and_then(|f| f.upgrade()) {
            fs.settle_kept(ino, &guard.grant.lvb);
        }
        Ok(Box::new(guard))
    }

    fn inode_batch(&self) -> usize {
        INODE_BATCH
    }

    fn prefetch_new(&self, inos: &[InodeNo]) -> Result<()> {
        crate::assert_no_journal_handle("taking the locks of new inodes");
        // The inode and open locks of the whole batch in one lockd request (one log entry):
        // nobody should hold a free inode's locks, and a node that still caches one gives it
        // up when asked below. An open lock not taken now is taken at the first open.
        let inode_names: Vec<String> = inos.iter().map(|i| self.names.inode(i.get())).collect();
        let mut names = inode_names.clone();
        names.extend(inos.iter().map(|i| self.names.open(i.get())));
        let taken = self
            .runtime
            .block_on(self.session.try_lock_many(&names, Mode::EX))
            .map_err(|e| FsError::Cluster(format!("taking the locks of new inodes: {e}")))?;
        let missing: Vec<String> = inode_names.into_iter().zip(&taken).filter(|(_, &t)| !t).map(|(n, _)| n).collect();
        if missing.is_empty() {
            return Ok(());
        }
        self.runtime.block_on(async {
            let mut set = tokio::task::JoinSet::new();
            for resource in missing {
                let session = self.session.clone();
                set.spawn(async move { wait_for_lock(&session, &resource, Mode::EX).await.map(drop) });
            }
            let mut first_error = None;
            while let Some(r) = set.join_next().await {
                let r = r.map_err(|e| FsError::Cluster(format!("taking the locks of new inodes: {e}"))).and_then(|r| r);
                if let Err(e) = r {
                    first_error.get_or_insert(e);
                }
            }
            first_error.map_or(Ok(()), Err)
        })
    }

    fn hold_rename(&self) -> Result<ClusterHold> {
        self.wait(&self.names.rename(), Mode::EX)
    }

    fn open_lock(&self, ino: InodeNo) -> Result<()> {
        self.open.open_lock(ino)
    }

    fn shares_inodes(&self) -> bool {
        true
    }

    fn inode_freed(&self, ino: InodeNo) {
        self.attached.freed.lock().push(ino);
    }

    fn unused_elsewhere(&self, ino: InodeNo, wait: bool) -> Result<bool> {
        self.open.unused_elsewhere(ino, wait)
    }

    fn ag_locks(&self) -> bool {
        true
    }

    fn hold_ag(&self, ag: u32) -> Result<ClusterHold> {
        self.wait(&self.names.group(ag), Mode::EX)
    }
}
