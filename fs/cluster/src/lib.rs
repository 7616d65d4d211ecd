//! Cluster mode: what makes a `mafs mount` one node among several on one volume. A node opens a
//! lockd session, makes its name unique on the volume, takes a free slot (its journal), and
//! takes a lock per inode and per allocation group (`inode_locks.rs`), each of which it gives
//! up, after writing back and forgetting what it covers, when another node needs it. See
//! docs/design.md, "Cluster mode".
//!
//! Modules: `node` (joining and leaving: session, name, slot), `inode_locks` (the locks the
//! filesystem takes), `volume_lock` (the gate every request passes, and the revocation that
//! hands any lock on), `lock_trim` (giving up the least recently used locks past a limit), `lock_value` (what
//! an inode lock's value block holds), `open_locks` (which nodes have an inode open), `recovery` (replaying a
//! dead node's slot), `fence` (self-fencing), `names` (the lockd resource names of a volume),
//! `error`.
mod error;
mod fence;
mod inode_locks;
mod lock_trim;
mod lock_value;
mod names;
mod node;
mod open_locks;
mod recovery;
mod volume_lock;

pub use error::JoinError;
pub use fence::{margin as fence_margin, WRITE_LOG_ENV};

/// A lockd call that may wait for other nodes is never made while this thread holds a journal
/// handle: the other node may be waiting for this node's commit, which waits for the handle.
/// Checked in debug builds (the core counts handles per thread).
pub(crate) fn assert_no_journal_handle(what: &str) {
    debug_assert_eq!(
        mafs_core::journal::handles_held_here(),
        0,
        "{what} while this thread holds a journal handle: could deadlock nodes across their commits"
    );
}
pub use inode_locks::{InodeLocks, INODE_BATCH};
pub use lock_trim::DEFAULT_MAX_CACHED_LOCKS;
pub use names::VolumeNames;
pub use node::{ClusterNode, JoinOptions, DEFAULT_LEASE};
pub use open_locks::OpenLocks;
pub use recovery::RecoveryWatcher;
pub use volume_lock::VolumeLock;
