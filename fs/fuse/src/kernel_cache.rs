//! What the kernel caches of a cluster node's mount, and dropping it when the node gives an
//! inode lock up (docs/design.md, "Kernel caches").
//!
//! Names are dropped all at once with FUSE_NOTIFY_INC_EPOCH (Linux 6.16): every dentry made by
//! a request the kernel started before it fails its next revalidation and is looked up again.
//! The kernel takes no lock for it, unlike FUSE_NOTIFY_INVAL_ENTRY, which takes the parent
//! directory's i_rwsem: a CREATE waiting for the directory's lock holds that, and the
//! revocation that would let the CREATE through would wait for it. Attributes are dropped inode
//! by inode with FUSE_NOTIFY_INVAL_INODE at a negative offset (attributes only: no page lock,
//! and pages are not cached in cluster mode); a reply to a request the kernel started before
//! that is then ignored (the inode's attribute version moved). For that the glue counts the
//! kernel's lookups of each node until FORGET gives them back, and lets the kernel cache the
//! attributes of a node only once it holds that node already: an inode the kernel makes from a
//! reply after the drop would otherwise keep what the reply said.
use std::collections::HashMap;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use fuser::{INodeNo, Notifier};
use mafs_core::locks::KernelCaches;
use parking_lot::Mutex;

/// FUSE_NOTIFY_INC_EPOCH in `enum fuse_notify_code` (include/uapi/linux/fuse.h, 7.44), which
/// fuser 0.18 does not send.
const FUSE_NOTIFY_INC_EPOCH: i32 = 8;

/// The nodes the kernel holds, with how many lookups of each it has not given back yet.
#[derive(Default)]
pub struct KernelLookups {
    counts: Mutex<HashMap<u64, u64>>,
    /// Whether the kernel may cache at all: set once the kernel has shown it can drop what it
    /// caches (see [`Dropper::new`]).
    may_cache: AtomicBool,
}

impl KernelLookups {
    /// Counts a lookup of `node` that a reply is about to give the kernel; answers whether the
    /// kernel held the node before (the root it holds for as long as the mount).
    pub fn add(&self, node: INodeNo) -> bool {
        if node == INodeNo::ROOT {
            return true;
        }
        let mut counts = self.counts.lock();
        let n = counts.entry(node.0).or_insert(0);
        *n += 1;
        *n > 1
    }

    /// Whether the kernel holds `node` (it asks about nodes it holds, but may have forgotten
    /// one in the meantime).
    pub fn held(&self, node: INodeNo) -> bool {
        node == INodeNo::ROOT || self.counts.lock().contains_key(&node.0)
    }

    /// The kernel gave `n` lookups of `node` back (FORGET).
    pub fn forget(&self, node: INodeNo, n: u64) {
        let mut counts = self.counts.lock();
        if let Some(c) = counts.get_mut(&node.0) {
            *c = c.saturating_sub(n);
            if *c == 0 {
                counts.remove(&node.0);
            }
        }
    }

    pub fn may_cache(&self) -> bool {
        self.may_cache.load(Ordering::Acquire)
    }

    fn all(&self) -> Vec<u64> {
        let mut v: Vec<u64> = self.counts.lock().keys().copied().collect();
        v.push(INodeNo::ROOT.0);
        v
    }
}

/// Drops what the kernel caches of one mount, through its FUSE connection.
pub struct Dropper {
    lookups: Arc<KernelLookups>,
    dev: OwnedFd,
    notifier: Notifier,
    /// Whether the kernel took the first epoch increment (else it was never let cache).
    epochs: bool,
}

impl Dropper {
    /// The dropper of the mount whose FUSE connection is `dev`. Tries an epoch increment first:
    /// only a kernel that takes it lets this mount cache names and attributes at all (an older
    /// one gets zero lifetimes, and a warning says why).
    pub fn new(dev: impl AsFd, notifier: Notifier, lookups: Arc<KernelLookups>) -> io::Result<Dropper> {
        let mut d = Dropper { lookups, dev: dev.as_fd().try_clone_to_owned()?, notifier, epochs: false };
        match d.next_epoch() {
            Ok(()) => {
                d.epochs = true;
                d.lookups.may_cache.store(true, Ordering::Release);
            }
            Err(e) => tracing::warn!(
                "this kernel cannot drop a mount's cached names at once (FUSE_NOTIFY_INC_EPOCH, Linux 6.16 and later: {e}); \
                 the node lets the kernel cache no names or attributes, and every stat costs a request"
            ),
        }
        Ok(d)
    }

    /// Makes every name the kernel caches of this mount stale (a notification with no payload).
    fn next_epoch(&self) -> io::Result<()> {
        let mut msg = [0u8; 16];
        msg[0..4].copy_from_slice(&16u32.to_le_bytes());
        msg[4..8].copy_from_slice(&FUSE_NOTIFY_INC_EPOCH.to_le_bytes());
        // unique 0: a notification, not a reply.
        // SAFETY: writes 16 bytes from a live buffer to an open descriptor.
        let n = unsafe { libc::write(self.dev.as_raw_fd(), msg.as_ptr().cast(), msg.len()) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

impl Dropper {
    fn drop_names(&self) {
        if let Err(e) = self.next_epoch() {
            tracing::error!("cannot drop the kernel's cached names: {e}");
        }
    }

    fn drop_attributes(&self, node: u64) {
        // ENOENT (the kernel let the inode go meanwhile) is no error to fuser.
        if let Err(e) = self.notifier.inval_inode(INodeNo(node), -1, 0) {
            tracing::error!(node, "cannot drop the kernel's cached attributes: {e}");
        }
    }
}

impl KernelCaches for Dropper {
    fn stop(&self) {
        self.lookups.may_cache.store(false, Ordering::Release);
    }

    fn resume(&self) {
        self.lookups.may_cache.store(self.epochs, Ordering::Release);
    }

    fn drop_all(&self) {
        if !self.epochs {
            return;
        }
        self.drop_names();
        for node in self.lookups.all() {
            self.drop_attributes(node);
        }
    }

    fn drop_inode(&self, ino: mafs_core::format::InodeNo, names_in_it: bool) {
        if !self.epochs {
            return;
        }
        // The kernel keeps no names per directory that could be dropped without the directory's
        // i_rwsem (see the top of this file): all of them go, for one directory's lock.
        if names_in_it {
            self.drop_names();
        }
        self.drop_attributes(ino.get());
    }
}
