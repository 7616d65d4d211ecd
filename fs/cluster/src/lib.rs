//! Cluster mode: what makes a `mafs mount` one node among several on one volume. A node opens a
//! lockd session, makes its name unique on the volume, takes a free slot (its journal), and
//! passes every request through the volume lock (`volume_lock.rs`), which it gives up, after
//! writing everything back and forgetting what it cached, when another node needs it. See
//! docs/design.md, "Cluster mode", for why one volume-wide lock comes first and what replaces
//! it.
//!
//! Modules: `node` (joining and leaving: session, name, slot), `volume_lock` (the gate every
//! request passes, and the revocation that hands the volume on), `open_locks` (which nodes
//! have an inode open), `recovery` (replaying a dead node's slot), `names` (the lockd resource
//! names of a volume), `error`.
mod error;
mod fence;
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
pub use names::VolumeNames;
pub use node::{ClusterNode, JoinOptions, DEFAULT_LEASE};
pub use open_locks::OpenLocks;
pub use recovery::RecoveryWatcher;
pub use volume_lock::VolumeLock;
