//! The volume lock — the gate every request of a cluster node passes, in PR — and what the
//! node does when another node asks for one of its locks (`revoke`).
//!
//! Giving a lock up is GFS2's "sync and invalidate" for what it covers: commit the journal, write every changed block home, move the journal's tail past them (so a
//! later replay of this node's journal can never write an old image over what another node
//! writes next), forget the cached blocks the lock covers (an inode's, or a group's and the
//! allocator's map of it; everything, for the volume lock), and only then release (or
//! downgrade to PR for a reader). An inode lock released also drops what the kernel caches of
//! the mount (names and attributes: `mafs_core::locks::KernelCaches`); a reader that
//! downgrades keeps them, since nobody can change the inode while it holds PR.
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, Instant};

use lockd_client::{BlockingNotice, Error, LockOptions, Mode, Revoke, Session};
use mafs_core::cache::Cover;
use mafs_core::error::{FsError, Result};
use mafs_core::filesystem::Fs;
use mafs_core::format::InodeNo;
use mafs_core::locks::{Access, ClusterHold, KernelCaches, VolumeGate};

use crate::names::VolumeNames;

/// How long one lockd call waits in the queue before the request asks again: long enough to
/// cover a slow write-back on the holder, short enough that a lockd failover or a lost answer
/// costs little.
const QUEUE_WAIT: Duration = Duration::from_secs(10);
/// After this long without the lock, each further wait is logged (the operation goes on waiting:
/// a request is never failed for being slow).
const WARN_AFTER: Duration = Duration::from_secs(10);

/// The gate of a cluster node's requests.
pub struct VolumeLock {
    runtime: tokio::runtime::Handle,
    session: Arc<Session>,
    resource: String,
    attached: Arc<Attached>,
}

impl VolumeLock {
    pub(crate) fn new(runtime: tokio::runtime::Handle, session: Arc<Session>, resource: String, attached: Arc<Attached>) -> VolumeLock {
        VolumeLock { runtime, session, resource, attached }
    }
}

/// Takes `resource` in `mode` from lockd, for as long as it takes: conversion deadlocks and
/// queue timeouts are retried (logged once the wait is long), never surfaced; only a lost
/// session or an unreachable lockd fails (the operation then did nothing).
/// [`wait_for_lock`] from a thread outside the runtime (a request's): a cached lock is taken
/// at once, without entering the runtime.
pub(crate) fn take_lock(
    runtime: &tokio::runtime::Handle,
    session: &Session,
    resource: &str,
    mode: Mode,
) -> Result<lockd_client::LockGuard> {
    match session.lock_cached(resource, mode) {
        Some(g) => Ok(g),
        None => runtime.block_on(wait_for_lock(session, resource, mode)),
    }
}

pub(crate) async fn wait_for_lock(session: &Session, resource: &str, mode: Mode) -> Result<lockd_client::LockGuard> {
    let start = Instant::now();
    loop {
        match session.lock(resource, mode, LockOptions::wait(QUEUE_WAIT)).await {
            Ok(g) => return Ok(g),
            // Two nodes converting PR -> EX at once: lockd refuses the second. Its PR stays
            // cached, and the blocking notice the first conversion sent makes this node give
            // it up (writing back and forgetting, like any revocation) once it is idle; then
            // the next try queues for EX afresh. The pause lets that revocation in.
            Err(Error::Deadlock { .. }) => {
                tracing::debug!(resource, %mode, "conversion deadlock; retrying");
                let pause = rand::random::<u64>() % 20 + 5;
                tokio::time::sleep(Duration::from_millis(pause)).await;
            }
            // The holder has not given it up yet (a long write-back, many waiters, or a dead
            // node's lock kept until its journal is recovered).
            Err(e @ (Error::TimedOut { .. } | Error::NotGranted { .. })) => {
                tracing::debug!(resource, %mode, "not granted yet ({e}); asking again");
                if start.elapsed() >= WARN_AFTER {
                    tracing::warn!(resource, "still waiting for a lock after {:?}", start.elapsed());
                }
            }
            Err(e) => {
                return Err(FsError::Cluster(format!(
                    "cannot take the lock {resource} ({mode}) from lockd: {e}; the operation did nothing"
                )))
            }
        }
    }
}

impl VolumeGate for VolumeLock {
    fn enter(&self, _access: Access) -> Result<ClusterHold> {
        // Shared by every request, whatever it does: inodes and groups have locks of their own
        // (`inode_locks.rs`), and this one is asked for EX only to have every node write the
        // whole volume back and stop (a freeze).
        let mode = Mode::PR;
        let tracker = self.attached.tracker.get();
        let guard = match self.session.lock_cached(&self.resource, mode) {
            Some(g) => g,
            None => {
                // A snapshot may have moved the change generation while this node held no
                // volume lock: it is read again before anything is written under the new grant
                // (`mafs_core::change_tracking`; docs/design.md, "Snapshots").
                if let Some(t) = tracker {
                    t.expect_new_generation();
                }
                self.runtime.block_on(wait_for_lock(&self.session, &self.resource, mode))?
            }
        };
        if let Some(t) = tracker {
            t.refresh_if_stale()?;
        }
        Ok(Box::new(guard))
    }
}

/// What a revocation acts on, once the mount has made it (until then the mount holds the lock
/// in use, so no revocation runs): the filesystem it writes back, and the kernel caches it
/// drops.
#[derive(Default)]
pub(crate) struct Attached {
    pub(crate) fs: OnceLock<Weak<Fs>>,
    pub(crate) kernel: OnceLock<Arc<dyn KernelCaches>>,
    /// The node's lockd session, to withdraw from the cluster when the device fails it.
    pub(crate) session: OnceLock<Weak<lockd_client::Session>>,
    /// The mount's change tracker, told when the volume lock is granted anew.
    pub(crate) tracker: OnceLock<Arc<mafs_core::change_tracking::ChangeTracker>>,
    /// Inodes the node freed since the lock trimmer last looked: their locks go next.
    pub(crate) freed: parking_lot::Mutex<Vec<InodeNo>>,
}

impl Attached {
    /// The node's lockd session, while it lives.
    pub(crate) fn session(&self) -> Option<Arc<lockd_client::Session>> {
        self.session.get().and_then(Weak::upgrade)
    }

    pub(crate) fn fs(&self) -> Option<Weak<Fs>> {
        self.fs.get().cloned()
    }

    /// Drops what the kernel caches under the lock of `cover`: one inode's attributes (and
    /// every name, if it may be a directory), or everything for the volume lock.
    pub(crate) fn drop_kernel_caches(&self, cover: Option<Cover>, is_dir: Option<bool>) {
        let Some(k) = self.kernel.get() else { return };
        match cover {
            None | Some(Cover::Volume) => k.drop_all(),
            Some(Cover::Inode(ino)) => self.drop_kernel_inodes(&[(ino, is_dir)]),
            // The kernel caches nothing a group covers.
            Some(Cover::Group(_)) => {}
        }
    }

    /// Drops what the kernel caches under the locks of `inodes` (each with whether it is a
    /// directory, if known): their attributes, and every name once if any may be a directory.
    pub(crate) fn drop_kernel_inodes(&self, inodes: &[(InodeNo, Option<bool>)]) {
        let Some(k) = self.kernel.get() else { return };
        let mut names_dropped = false;
        for &(ino, is_dir) in inodes {
            let names = is_dir != Some(false) && !names_dropped;
            names_dropped |= names;
            k.drop_inode(ino, names);
        }
    }
}

/// Writes back what the lock `resource` covers before the node gives it up (or downgrades it
/// to PR, `downgrade`): everything for the volume lock; for an inode, only if the node changed
/// it, and its blocks stay cached when they can (under the PR kept, or for the version the
/// lock value block will hold; `lock_value.rs`); the answer is the lock value block to write.
fn write_back(
    fs: &Fs,
    attached: &Attached,
    resource: &str,
    cover: Option<Cover>,
    downgrade: bool,
) -> mafs_core::error::Result<Option<Vec<u8>>> {
    match cover {
        None => fs.write_back_and_forget().map(|()| None),
        Some(Cover::Inode(ino)) => {
            let h = crate::lock_value::hand_over(fs, attached.session().as_deref(), resource, ino);
            // Unchanged since the last hand-over: no commit, no flush (the node may have other
            // changes pending; they need not wait for this).
            if h.changed {
                fs.write_back()?;
            }
            match (downgrade, h.version) {
                (true, _) => {}
                (false, Some(version)) => fs.keep_inode(ino, version),
                (false, None) => fs.forget_covers(&[Cover::Inode(ino)]),
            }
            Ok(h.lvb)
        }
        Some(c) => fs.write_back_and_forget_cover(c).map(|()| None),
    }
}

/// Answers a blocking notice on one of the node's locks. Called by the lockd client once no
/// request of this node holds the lock, on a blocking thread.
pub(crate) fn revoke(names: &VolumeNames, attached: &Attached, notice: &BlockingNotice) -> Revoke {
    if let Some(ino) = names.open_ino(&notice.resource) {
        return crate::open_locks::revoke_open_lock(ino, attached.fs(), notice);
    }
    // What the lock covers: the whole volume (the volume lock, taken EX only to freeze the
    // volume), one inode, or one allocation group.
    let cover = if notice.resource == names.volume() {
        None
    } else if let Some(ino) = names.inode_of(&notice.resource) {
        Some(Cover::Inode(InodeNo(ino)))
    } else if let Some(ag) = names.group_of(&notice.resource) {
        Some(Cover::Group(ag))
    } else if notice.resource == names.rename() {
        // Covers no block: parent links are the inodes' own.
        return Revoke::Release { lvb: None };
    } else {
        // The node's name and slot locks are held for the whole mount; whoever asks for them
        // is told they are taken (try-locks), never waited for.
        return Revoke::Keep;
    };
    let downgrade = notice.held == Mode::EX && notice.requested == Mode::PR;
    let (mut is_dir, mut lvb) = (None, None);
    if let Some(fs) = attached.fs().as_ref().and_then(Weak::upgrade) {
        // Known only before the write-back forgets the inode: whether the kernel's names go too.
        if let Some(Cover::Inode(ino)) = cover {
            is_dir = fs.cached_is_dir(ino);
        }
        let start = Instant::now();
        let written = write_back(&fs, attached, &notice.resource, cover, downgrade);
        if let Err(e) = written {
            // Giving the lock up now would let other nodes read blocks this node changed but
            // could not write home, and a replay of its journal later would write over theirs.
            // Keeping it while staying in the cluster would stall them for ever. So the node
            // withdraws (GFS2's word): it gives its session up without a goodbye, as if it had
            // died. lockd expires it and keeps the lock; a survivor replays its journal — once
            // the device lets it — and only then is the lock handed on. This node fences itself
            // at once (its requests answer EIO) and rejoins once its slot is recovered.
            tracing::error!(
                "cannot write back what {} covers to give it up ({e}): withdrawing from the cluster so that another \
                 node recovers this node's journal; this node answers EIO until it rejoins",
                notice.resource
            );
            if let Some(s) = attached.session.get().and_then(Weak::upgrade) {
                s.abandon();
            }
            return Revoke::Keep;
        }
        lvb = written.unwrap_or_default();
        tracing::debug!(resource = notice.resource, held = %notice.held, requested = %notice.requested, "handed on after {:?} of write-back", start.elapsed());
    }
    if downgrade {
        // A reader wants it: keep reading alongside it (and keep what the kernel caches).
        Revoke::Downgrade { mode: Mode::PR, lvb }
    } else {
        // Now, with no request of this node using the lock: a reply sent before carries a
        // lifetime the drop ends (see the FUSE glue's kernel_cache.rs), and none can be sent
        // after until the lock is granted again.
        attached.drop_kernel_caches(cover, is_dir);
        Revoke::Release { lvb }
    }
}
