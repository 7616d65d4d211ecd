//! Keeping a cluster node's cached blocks across a hand-over of their inode's lock, when they
//! are still valid (docs/design.md, "Keeping a cache across a hand-over"). Each inode lock's
//! lock value block holds the version of the inode's blocks: the fencing token of the last
//! grant under which a node changed them. A node that changed an inode writes its grant's
//! token there as it gives the lock up; one that gives it up unchanged keeps its blocks,
//! noting the version they are valid for; when it takes the lock again, the grant's block
//! says whether anybody changed them since (another version, or none: lockd resets the block
//! when a writer dies or leaves without a last release, and forgets it with the resource).
//!
//! This holds which inodes the node changed under its current grants, and which inodes'
//! blocks it kept, with their versions. Standalone mounts track nothing.
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use parking_lot::Mutex;

use crate::format::InodeNo;

/// Most inodes whose blocks a node keeps while their locks are elsewhere (a quarter of the
/// default metadata cache: each has at least its inode block there).
pub const MAX_KEPT: usize = 16_384;

#[derive(Default)]
pub struct CoverVersions {
    tracking: AtomicBool,
    changed: Mutex<HashSet<InodeNo>>,
    kept: Mutex<HashMap<InodeNo, Vec<u8>>>,
    /// `kept.len()`, read without the mutex on every lock a request takes.
    kept_count: AtomicUsize,
}

impl CoverVersions {
    /// From now on, changes are tracked (a cluster node, whose inodes have locks).
    pub fn track(&self) {
        self.tracking.store(true, Ordering::Release);
    }

    /// A transaction changed a block of `ino` (called as a block joins it).
    pub(crate) fn note_changed(&self, ino: InodeNo) {
        if self.tracking.load(Ordering::Acquire) {
            self.changed.lock().insert(ino);
        }
    }

    /// Whether the node changed `ino` since it last gave up or downgraded its lock; forgets it.
    pub fn take_changed(&self, ino: InodeNo) -> bool {
        self.changed.lock().remove(&ino)
    }

    /// The blocks of `ino` stay cached while its lock is elsewhere, valid for `version`. Past
    /// [`MAX_KEPT`] inodes, a quarter of them are forgotten: `drop` forgets their blocks,
    /// under the mutex (a cached block of an inode whose lock the node does not hold must
    /// have an entry here, or a request would trust it).
    pub fn keep(&self, ino: InodeNo, version: Vec<u8>, drop: impl FnOnce(&[InodeNo])) {
        let mut kept = self.kept.lock();
        kept.insert(ino, version);
        if kept.len() > MAX_KEPT {
            let gone: Vec<InodeNo> = kept.keys().filter(|i| **i != ino).take(MAX_KEPT / 4).copied().collect();
            drop(&gone);
            for i in &gone {
                kept.remove(i);
            }
        }
        self.kept_count.store(kept.len(), Ordering::Release);
    }

    /// The node holds `ino`'s lock again, granted with lock value block `lvb`: if it kept the
    /// inode's blocks for another version (or for any, when `lvb` is empty), `drop` forgets
    /// them. Under the mutex, so that no other request of the node reads them meanwhile.
    pub fn settle(&self, ino: InodeNo, lvb: &[u8], drop: impl FnOnce()) {
        if self.kept_count.load(Ordering::Acquire) == 0 {
            return;
        }
        let mut kept = self.kept.lock();
        if let Some(version) = kept.remove(&ino) {
            if lvb.is_empty() || version != lvb {
                drop();
            }
            self.kept_count.store(kept.len(), Ordering::Release);
        }
    }

    /// Every kept block is gone (the whole cache was dropped).
    pub fn forget_kept(&self) {
        let mut kept = self.kept.lock();
        kept.clear();
        self.kept_count.store(0, Ordering::Release);
    }

    /// How many inodes' blocks are kept (tests).
    pub fn kept_len(&self) -> usize {
        self.kept_count.load(Ordering::Acquire)
    }
}
