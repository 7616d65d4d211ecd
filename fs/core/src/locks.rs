//! The node's lock interface. Every filesystem operation takes its inode locks here, through
//! the same calls in standalone and cluster mode: standalone grants them from this in-process
//! table; cluster mode (later) backs each lock with a cached lockd lock, so a lock this node
//! already holds costs nothing.
//!
//! Lock order (every operation follows it; `lock_many` enforces the ascending rule):
//! 1. the rename lock, for renames between two directories;
//! 2. inode locks: a parent directory before its children; several unrelated inodes in
//!    ascending inode number (`lock_many`); the orphan directory last;
//! 3. in cluster mode, the allocation groups' cluster locks (`AgHolds`, ascending): the
//!    groups the operation allocates from and frees into;
//! 4. the journal gate (a `Handle`) — after every cluster lock the operation needs. A cluster
//!    lock may wait for another node, which may be waiting for this node's commit, and a
//!    commit waits for every handle: so no thread holding a handle ever asks for an inode lock
//!    (`InodeLocks::lock` asserts it in debug builds). A new inode's number is reserved from
//!    the allocator before the handle (`Allocator::reserve`) so it can be locked first too;
//! 5. the allocator's own per-group mutexes (inside it);
//! 6. the metadata cache's map and each block's data lock, held only for a copy.
use crate::error::Result;
use crate::format::InodeNo;
use parking_lot::lock_api::{ArcRwLockReadGuard, ArcRwLockWriteGuard};
use parking_lot::{Mutex, RawRwLock, RwLock};
use std::collections::HashMap;
use std::sync::Arc;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Read the inode and what it covers (DLM PR).
    Shared,
    /// Change it (DLM EX).
    Exclusive,
}

/// Where a node gets the right to cache and change an inode. Standalone: from nobody (the node
/// owns the whole volume). Cluster mode: a lockd lock `inode/<n>` in PR or EX, kept cached
/// after use and given up on a blocking notification, once what it covers is flushed.
pub trait ClusterLocks: Send + Sync {
    /// Makes sure this node holds `inode/<ino>` in at least `mode`, and returns the hold the
    /// operation keeps for as long as it uses what the lock covers: the backend must not give
    /// the lock up (to a revocation) while any hold of it is alive. Returns at once when the
    /// lock is cached. Fails when the lock service cannot be reached or the session is lost
    /// (the operation then fails with EIO).
    fn hold(&self, ino: InodeNo, mode: Mode) -> Result<ClusterHold>;

    /// How many inode numbers the filesystem reserves at a time for its creates, taking their
    /// locks together (`prefetch_new`), so that a create finds its new inode's lock cached.
    /// 1 (standalone): one number per create, reserved by the create itself.
    fn inode_batch(&self) -> usize {
        1
    }

    /// Takes the (exclusive) locks of reserved inode numbers into this node's cache, all at
    /// once; the creates that use the numbers then hold them without a round trip.
    fn prefetch_new(&self, _inos: &[InodeNo]) -> Result<()> {
        Ok(())
    }

    /// The cluster-wide rename lock, for a rename between two directories: parent links
    /// change only under it. Standalone: the node's own rename mutex is enough.
    fn hold_rename(&self) -> Result<ClusterHold> {
        Ok(Box::new(()))
    }

    /// This node has just counted `ino` open (its first handle here): make sure it holds the
    /// inode's open lock (OCFS2's, `open/<ino>`), which it gives up to another node only while
    /// the inode is not open here (the backend asks `Fs::is_open_here`). An unlinked inode is
    /// freed only once no node has it open.
    fn open_lock(&self, _ino: InodeNo) -> Result<()> {
        Ok(())
    }

    /// Whether other nodes may open this node's inodes (cluster mode). Then the filesystem
    /// takes no open lock for an inode it made since it last handed the volume over (no other
    /// node can know it yet) until it hands the volume over, and only if the inode is open then.
    fn shares_inodes(&self) -> bool {
        false
    }

    /// This node freed inode `ino` (in a transaction not yet committed): its locks are no use
    /// to the node any more, and a cluster backend gives them up soon, in a batch. Called
    /// inside the transaction: must not wait for anything.
    fn inode_freed(&self, _ino: InodeNo) {}

    /// Whether no other node has `ino` open (in cluster mode: whether this node holds its open
    /// lock exclusively). With `wait`, nodes that hold the open lock cached but have the inode
    /// closed are asked to give it up, and the answer waits a moment for them: never inside a
    /// transaction. Without, only what this node holds is looked at (no call out): a `false`
    /// then means "cannot tell yet", and the inode waits in the orphan directory for the check
    /// that waits, right after the transaction.
    fn unused_elsewhere(&self, _ino: InodeNo, _wait: bool) -> Result<bool> {
        Ok(true)
    }

    /// Whether allocation groups have cluster locks of their own (`ag/<n>`). Then every
    /// operation holds, before its journal handle, the groups it will allocate from and free
    /// into, and the allocator touches no other ([`AgHolds`]). Standalone: no (the node owns
    /// every group, and operations plan nothing).
    fn ag_locks(&self) -> bool {
        false
    }

    /// Makes sure this node holds allocation group `ag`'s lock exclusively (a node reads a
    /// group's header and bitmap only under it); the hold works as `hold`'s.
    fn hold_ag(&self, _ag: u32) -> Result<ClusterHold> {
        Ok(Box::new(()))
    }
}

/// The allocation groups an operation holds (cluster mode's AG locks), taken after its inode
/// locks and before its journal handle, in ascending order.
pub struct AgHolds {
    ags: Vec<u32>,
    _holds: Vec<ClusterHold>,
}

impl AgHolds {
    pub fn ags(&self) -> &[u32] {
        &self.ags
    }
}

/// What a request passes before it touches the volume, and holds until it has finished with
/// it (journal handle closed, blocks released): cluster mode's volume lock (the `mafs-cluster`
/// crate), entered shared by every request before it joins a transaction, and asked for
/// exclusively only to freeze the whole volume. Standalone passes every request
/// ([`Standalone`]).
pub trait VolumeGate: Send + Sync {
    /// Waits until this node may `access` the volume; the hold keeps that right until dropped.
    fn enter(&self, access: Access) -> Result<ClusterHold>;
}

/// What the kernel caches of a cluster node's mount: names (negative ones too) and
/// attributes, kept only under the node's inode locks. The node drops them when it gives an
/// inode lock up to a writer, and when it loses its lockd session (then other nodes may take
/// its locks once it is recovered). Called once no request of the node holds the lock,
/// so it must never wait for a request: dropping is a FUSE notification the kernel handles
/// without taking an inode lock (the FUSE glue's `kernel_cache.rs`).
pub trait KernelCaches: Send + Sync {
    fn drop_all(&self);
    /// Drops what the kernel caches under one inode's lock: its attributes, and with
    /// `names_in_it` (a directory, or an inode not known to be none) the names looked up in it.
    fn drop_inode(&self, ino: InodeNo, names_in_it: bool);
    /// From now on replies give the kernel nothing to cache (the node lost its session).
    fn stop(&self);
    /// The node joined the cluster again: replies may give lifetimes again.
    fn resume(&self);
}

/// What a request does with the volume.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Reads only: several nodes at once.
    Read,
    /// Changes something (or may free an inode, as a last close does): one node at a time.
    Write,
}

impl VolumeGate for Standalone {
    fn enter(&self, _access: Access) -> Result<ClusterHold> {
        Ok(Box::new(()))
    }
}

/// An operation's use of a cluster lock; dropping it ends the use. Standalone holds nothing
/// (and allocates nothing: the box of a zero-sized value is free).
pub type ClusterHold = Box<dyn Send + Sync>;

/// A node that owns the whole volume (`mount --standalone`).
pub struct Standalone;

impl ClusterLocks for Standalone {
    fn hold(&self, _ino: InodeNo, _mode: Mode) -> Result<ClusterHold> {
        Ok(Box::new(()))
    }
}

/// An inode lock as an operation holds it: the local lock over the cluster hold. Fields drop
/// in order, so the local lock (inner) goes before the cluster hold (outer), as GFS2 releases
/// an inode's local lock before its glock.
pub struct InodeGuard {
    _local: LocalGuard,
    _cluster: ClusterHold,
}

enum LocalGuard {
    Shared(#[allow(dead_code)] ArcRwLockReadGuard<RawRwLock, ()>),
    Exclusive(#[allow(dead_code)] ArcRwLockWriteGuard<RawRwLock, ()>),
}

const SHARDS: usize = 64;

/// Inode locks: the node's right to the inode (`ClusterLocks`), then a local reader-writer
/// lock that orders this node's own threads.
pub struct InodeLocks {
    shards: Vec<Mutex<HashMap<InodeNo, Arc<RwLock<()>>>>>,
    cluster: Box<dyn ClusterLocks>,
}

impl Default for InodeLocks {
    fn default() -> Self {
        InodeLocks::new(Box::new(Standalone))
    }
}

impl InodeLocks {
    pub fn new(cluster: Box<dyn ClusterLocks>) -> Self {
        InodeLocks { shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(), cluster }
    }

    fn entry(&self, ino: InodeNo) -> Arc<RwLock<()>> {
        let mut shard = self.shards[(ino.get() as usize) % SHARDS].lock();
        if shard.len() > 4096 {
            // Forget locks nobody holds or waits for, so the table tracks the working set.
            shard.retain(|_, l| Arc::strong_count(l) > 1);
        }
        shard.entry(ino).or_default().clone()
    }

    pub fn cluster(&self) -> &dyn ClusterLocks {
        &*self.cluster
    }

    pub fn lock(&self, ino: InodeNo, mode: Mode) -> Result<InodeGuard> {
        self.check_no_handle(ino);
        let cluster = self.cluster.hold(ino, mode)?;
        self.local(ino, mode, cluster)
    }

    /// The inode's local lock exclusively, over a shared cluster hold: orders what only this
    /// node's view of the inode depends on (its first open and last close here, which change
    /// nothing on the volume) without taking the inode away from other nodes that read it.
    pub fn lock_here_exclusive(&self, ino: InodeNo) -> Result<InodeGuard> {
        self.check_no_handle(ino);
        let cluster = self.cluster.hold(ino, Mode::Shared)?;
        self.local(ino, Mode::Exclusive, cluster)
    }

    fn check_no_handle(&self, ino: InodeNo) {
        debug_assert_eq!(
            crate::journal::handles_held_here(),
            0,
            "inode {ino} locked while this thread holds a journal handle: inode locks come before the journal (locks.rs)"
        );
    }

    /// The local lock over the cluster hold.
    fn local(&self, ino: InodeNo, mode: Mode, cluster: ClusterHold) -> Result<InodeGuard> {
        let l = self.entry(ino);
        let local = match mode {
            Mode::Shared => LocalGuard::Shared(l.read_arc()),
            Mode::Exclusive => LocalGuard::Exclusive(l.write_arc()),
        };
        Ok(InodeGuard { _local: local, _cluster: cluster })
    }

    /// Holds of allocation groups `ags`, taken in ascending order (duplicates once).
    pub fn hold_ags(&self, ags: &[u32]) -> Result<AgHolds> {
        debug_assert_eq!(
            crate::journal::handles_held_here(),
            0,
            "allocation groups held while this thread holds a journal handle (locks.rs)"
        );
        let mut v = ags.to_vec();
        v.sort_unstable();
        v.dedup();
        let holds = v.iter().map(|a| self.cluster.hold_ag(*a)).collect::<Result<Vec<_>>>()?;
        Ok(AgHolds { ags: v, _holds: holds })
    }

    /// Exclusive locks on several inodes, taken in ascending order (duplicates once).
    pub fn lock_many(&self, inos: &[InodeNo]) -> Result<Vec<InodeGuard>> {
        let mut v = inos.to_vec();
        v.sort_unstable();
        v.dedup();
        v.into_iter().map(|i| self.lock(i, Mode::Exclusive)).collect()
    }
}
