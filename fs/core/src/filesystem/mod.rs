//! The filesystem proper: POSIX operations on a mounted volume, independent of FUSE (the FUSE
//! glue in `fs/fuse/` only translates; the POSIX rules for ACLs and set-ID bits are here too, in
//! `acl.rs` and `setid.rs`). Each operation takes its inode locks (see `locks.rs` for the
//! order), then joins the journal's running transaction through a `Handle`, changes blocks in
//! the metadata cache and returns.
pub mod acl;
mod ag_plan;
pub mod attr;
mod data;
pub mod export;
pub mod namespace;
mod new_inode;
mod orphans;
pub mod rename;
pub mod setid;
pub mod symlink;

pub use attr::SetAttr;
pub use data::{FallocMode, Whence};

use crate::btree::{TreeRead, TreeWrite};
use crate::cache::MetaBuf;
use crate::error::{FsError, Result};
use crate::format::header::BlockType;
use crate::format::inode::Inode;
use crate::format::InodeNo;
use crate::journal::Handle;
use crate::locks::{InodeLocks, Mode};
use crate::volume::Volume;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;

pub const MAX_LINKS: u32 = 65000;
pub const MAX_FILE_SIZE: u64 = 1 << 50; // 1 PiB: logical block numbers stay far below 2^47
/// Blocks kept back from file data so that an operation never runs out of space for its
/// metadata halfway (transactions cannot be undone, so an operation must not fail midway).
pub const METADATA_RESERVE: u64 = 64;
/// Most blocks one namespace or xattr operation allocates (a new inode, an xattr block, and a
/// split at every level of a directory tree); it may start while this many are available.
pub const METADATA_OP_BLOCKS: u64 = 8;

/// Most new inodes whose open locks wait for the next hand-over (`Fs::made_here`): 1 MiB of
/// set.
pub const MADE_HERE_MAX: usize = 65536;

/// Who is asking, as the kernel describes the caller. The ids and the umask come with every
/// request. The set-ID rules (`setid.rs`) also need the caller's supplementary groups and
/// whether it holds CAP_FSETID; finding those out can cost (the FUSE glue reads
/// `/proc/<pid>/status`), so they are asked of `privileges` only when a rule turns on them.
#[derive(Clone, Copy)]
pub struct Caller<'a> {
    pub uid: u32,
    pub gid: u32,
    /// The caller's file mode creation mask: a new node's mode loses these bits unless its
    /// directory has a default ACL, which then applies instead (`acl.rs`).
    pub umask: u32,
    pub privileges: &'a dyn CallerPrivileges,
}

impl Caller<'static> {
    /// Root with every capability and no umask: for tools and tests.
    pub const ROOT: Caller<'static> = Caller { uid: 0, gid: 0, umask: 0, privileges: &AllPrivileges };
}

impl std::fmt::Debug for Caller<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Caller {{ uid: {}, gid: {}, umask: {:o} }}", self.uid, self.gid, self.umask)
    }
}

/// What the set-ID rules ask about a caller beyond its ids.
pub trait CallerPrivileges {
    /// Whether `gid` is one of the caller's supplementary groups.
    fn in_supplementary_group(&self, gid: u32) -> bool;
    /// Whether the caller holds CAP_FSETID (which keeps set-ID bits across writes, truncates,
    /// fallocate and ACL changes).
    fn has_cap_fsetid(&self) -> bool;
}

/// A caller with every capability (`Caller::ROOT`).
pub struct AllPrivileges;

impl CallerPrivileges for AllPrivileges {
    fn in_supplementary_group(&self, _gid: u32) -> bool {
        false
    }
    fn has_cap_fsetid(&self) -> bool {
        true
    }
}

pub struct Fs {
    pub vol: Volume,
    pub(crate) locks: InodeLocks,
    rename_lock: Mutex<()>,
    /// Open file handles per inode: an unlinked inode is reclaimed only when this reaches 0.
    open: Mutex<HashMap<InodeNo, u32>>,
    orphan_dir: InodeNo,
    /// Every slot's orphan directory, this slot's first: an inode unlinked on one node and
    /// closed last on another is listed in the first node's.
    orphan_dirs: Vec<InodeNo>,
    /// Cluster mode: inodes this node made since it last handed the volume over. No other node
    /// can have opened them, so their open locks wait for the hand-over (a node making and
    /// closing files alone then makes no lockd call for them).
    made_here: Mutex<std::collections::HashSet<InodeNo>>,
    /// Cluster mode: inode numbers set aside, their locks taken (`new_inode.rs`).
    inode_pool: Mutex<Vec<InodeNo>>,
}

impl Fs {
    /// Wraps an opened volume and reclaims inodes left in this slot's orphan directory.
    pub fn new(vol: Volume) -> Result<Fs> {
        let fs = Self::without_recovery(vol);
        fs.reclaim_orphans()?;
        Ok(fs)
    }

    /// The filesystem before the orphans of an earlier mount are reclaimed: the mount starts
    /// its multi-mount protection updates first (a long reclaim must not look like a dead
    /// node), and fsck repairs without it (a damaged orphan must not stop the repair).
    pub fn without_recovery(vol: Volume) -> Fs {
        Self::with_cluster_locks(vol, Box::new(crate::locks::Standalone))
    }

    /// The filesystem taking its inode locks from `cluster` (cluster mode: a lockd-backed
    /// backend), before the orphans of an earlier mount are reclaimed.
    pub fn with_cluster_locks(vol: Volume, cluster: Box<dyn crate::locks::ClusterLocks>) -> Fs {
        let orphan_dir = InodeNo(vol.journal.slot().orphan_dir);
        let others = (0..vol.sb.layout.slot_count).map(|s| InodeNo(crate::mkfs::orphan_dir_ino(&vol.sb, s))).filter(|d| *d != orphan_dir);
        let orphan_dirs = std::iter::once(orphan_dir).chain(others).collect();
        if cluster.shares_inodes() {
            vol.cache.versions.track();
        }
        if cluster.ag_locks() {
            vol.alloc.share_groups();
            // Read before the locks were known: nothing of it may be trusted later.
            vol.cache.drop_clean();
        }
        Fs {
            vol,
            locks: InodeLocks::new(cluster),
            rename_lock: Mutex::new(()),
            open: Mutex::new(HashMap::new()),
            orphan_dir,
            orphan_dirs,
            made_here: Mutex::new(Default::default()),
            inode_pool: Mutex::new(Vec::new()),
        }
    }

    pub fn root(&self) -> InodeNo {
        InodeNo(self.vol.sb.root_ino)
    }

    /// Joins the running transaction for an operation that frees or changes blocks in place.
    pub(crate) fn begin(&self) -> Result<Handle<'_>> {
        self.begin_in(&None)
    }

    /// An operation that may allocate fails with ENOSPC before changing anything if fewer
    /// blocks are available than such an operation can need (up to `data_blocks` blocks of
    /// file data besides its metadata). Blocks freed by an uncommitted transaction become
    /// available by committing it; when they are what stands between the operation and its
    /// blocks, that is done here, before the handle is taken (a commit waits for every
    /// handle), as ext4 forces a commit before giving up with ENOSPC.
    pub(crate) fn ensure_room_for(&self, data_blocks: u64) -> Result<()> {
        if self.locks.cluster().ag_locks() {
            // Counted per group, under the groups' locks (`hold_ags`).
            return Ok(());
        }
        let alloc = &self.vol.alloc;
        if alloc.available() <= data_blocks.saturating_add(METADATA_RESERVE) && alloc.quarantined() > 0 {
            self.vol.commit()?;
        }
        if alloc.available() < METADATA_OP_BLOCKS {
            tracing::debug!(free = alloc.free_blocks(), quarantined = alloc.quarantined(), "no space for an operation's metadata blocks");
            return Err(FsError::NoSpace);
        }
        Ok(())
    }

    /// The inode block and its decoded fields. The caller holds the inode's lock.
    pub(crate) fn iget(&self, ino: InodeNo) -> Result<(Arc<MetaBuf>, Inode)> {
        let l = &self.vol.sb.layout;
        if ino.get() < l.ag_start || ino.get() >= l.total_blocks {
            return Err(FsError::NotFound);
        }
        let buf = self.vol.cache.get(ino.block(), BlockType::Inode, crate::cache::Cover::Inode(ino))?;
        let inode = Inode::decode(&buf.read(), ino)?;
        Ok((buf, inode))
    }

    /// Whether `ino` is a directory, if this node has the inode cached (nothing is read).
    pub fn cached_is_dir(&self, ino: InodeNo) -> Option<bool> {
        if !self.vol.cache.contains(ino.block()) {
            return None;
        }
        self.iget(ino).ok().map(|(_, inode)| inode.is_dir())
    }

    pub(crate) fn iput(&self, h: &Handle, buf: &Arc<MetaBuf>, inode: &Inode) {
        inode.encode_into(&mut h.write(buf));
    }

    pub(crate) fn tree<'a>(&'a self, buf: &'a Arc<MetaBuf>) -> TreeRead<'a> {
        TreeRead { cache: &self.vol.cache, inode_buf: buf }
    }

    pub(crate) fn tree_mut<'a>(&'a self, h: &'a Handle<'a>, buf: &'a Arc<MetaBuf>) -> TreeWrite<'a> {
        TreeWrite::new(&self.vol.cache, &self.vol.alloc, h, buf)
    }

    pub fn getattr(&self, ino: InodeNo) -> Result<Inode> {
        let _g = self.locks.lock(ino, Mode::Shared)?;
        let (_, inode) = self.iget(ino)?;
        if inode.nlink == 0 && !self.is_open(ino) {
            return Err(FsError::NotFound);
        }
        Ok(inode)
    }

    pub fn open(&self, ino: InodeNo) -> Result<Inode> {
        let inode = self.getattr(ino)?;
        // Another handle of an inode open here: counted under the map's mutex alone.
        if let Some(n) = self.open.lock().get_mut(&ino) {
            *n += 1;
            return Ok(inode);
        }
        // A first open and a last close of one inode here are ordered by its local lock; the
        // cluster lock is shared, so readers opening one file on several nodes do not take it
        // from each other (the open lock says who has it open). The inode is counted open
        // before the open lock is asked for (a network call in cluster mode, so not under the
        // node-wide map's mutex): a revocation that comes once the lock is held then always
        // finds it open here, and keeps the lock.
        let _g = self.locks.lock_here_exclusive(ino)?;
        if let Some(n) = self.open.lock().get_mut(&ino) {
            *n += 1;
            return Ok(inode);
        }
        self.open.lock().insert(ino, 1);
        if self.made_here.lock().contains(&ino) {
            return Ok(inode);
        }
        if let Err(e) = self.locks.cluster().open_lock(ino) {
            self.open.lock().remove(&ino);
            return Err(e);
        }
        Ok(inode)
    }

    /// Whether this node has `ino` open (cluster mode's open-lock revocation asks).
    pub fn is_open_here(&self, ino: InodeNo) -> bool {
        self.is_open(ino)
    }

    pub(crate) fn is_open(&self, ino: InodeNo) -> bool {
        self.open.lock().contains_key(&ino)
    }

    /// Closes one handle; the last close of an unlinked inode frees it.
    pub fn release(&self, ino: InodeNo) -> Result<()> {
        if self.forget_handle(ino)? {
            self.reclaim_if_unused(ino)?;
        }
        Ok(())
    }

    /// Counts one handle of `ino` closed, touching nothing on the volume; true if it was the
    /// last one (then [`Fs::reclaim_if_unused`] frees the inode if it has no links left).
    pub fn forget_handle(&self, ino: InodeNo) -> Result<bool> {
        // Not the last handle: no lock needed (see `open`).
        if let Some(n) = self.open.lock().get_mut(&ino).filter(|n| **n > 1) {
            *n -= 1;
            return Ok(false);
        }
        let _g = self.locks.lock_here_exclusive(ino)?;
        let mut open = self.open.lock();
        let Some(n) = open.get_mut(&ino) else { return Ok(false) };
        if *n > 1 {
            *n -= 1;
            return Ok(false);
        }
        open.remove(&ino);
        Ok(true)
    }

    /// Whether `ino` is unlinked and no longer open here: what a last close must free. Reads
    /// only, so that a node can ask with the right to read.
    pub fn is_unused_orphan(&self, ino: InodeNo) -> Result<bool> {
        Ok(!self.is_open(ino) && self.listing_orphan_dir(ino)?.is_some())
    }

    /// Frees an inode that has no links left, unless someone still has it open. The last close
    /// and the unlink that took the last name may both call this for one inode, at once: the
    /// decision is taken under the inode's exclusive lock, on the inode as it is then, so the
    /// inode is freed once and the later call finds nothing to do.
    pub fn reclaim_if_unused(&self, ino: InodeNo) -> Result<()> {
        // Most last closes are of linked files: they are not listed, and cost one lookup in
        // the (small) orphan directory, no transaction.
        if !self.is_unused_orphan(ino)? {
            return Ok(());
        }
        self.reclaim_inode(ino, orphans::Reclaim::Unlinked)
    }

    /// What a node does before another node may change what it has cached (in cluster mode,
    /// when a lock is revoked; GFS2's sync and invalidate): everything it changed is committed
    /// and made durable at home, its clean cached metadata is dropped and its allocator's
    /// in-memory maps are reloaded, so the next read comes from the device. Call it with no
    /// operation running on what it covers (today: the whole node).
    pub fn write_back_and_forget(&self) -> Result<()> {
        self.write_back()?;
        self.vol.cache.drop_clean();
        self.forget_pooled_inodes(None);
        self.vol.alloc.reload();
        Ok(())
    }

    /// [`Fs::write_back_and_forget`] for what one lock covers (cluster mode with a lock per
    /// inode and per allocation group): everything is committed, written home and retired
    /// from the journal as there, but only the blocks `cover` covers are dropped (and, for a
    /// group, the allocator's map of it), so the node keeps its cache of everything else, and
    /// its operations on other inodes go on meanwhile. Call it with no operation using what
    /// `cover` covers.
    pub fn write_back_and_forget_cover(&self, cover: crate::cache::Cover) -> Result<()> {
        self.write_back_and_forget_covers(&[cover])
    }

    /// Keeps the cached blocks of inode `ino`, whose lock the node gives up (after
    /// [`Fs::write_back`] if it changed the inode), for version `version` of the inode
    /// (`mafs_core::cover_versions`): checked when the node takes the lock again
    /// ([`Fs::settle_kept`]).
    pub fn keep_inode(&self, ino: InodeNo, version: Vec<u8>) {
        self.vol.cache.versions.keep(ino, version, |gone| self.forget_inodes(gone));
    }

    /// Drops what this node caches of inodes `inos` (their lock is elsewhere).
    fn forget_inodes(&self, inos: &[InodeNo]) {
        let covers: Vec<crate::cache::Cover> = inos.iter().map(|&i| crate::cache::Cover::Inode(i)).collect();
        self.vol.cache.drop_covered(&covers);
    }

    /// The node holds the lock of `ino` again, granted with lock value block `lvb`: blocks it
    /// kept for another version go. Call before the request reads anything of the inode.
    pub fn settle_kept(&self, ino: InodeNo, lvb: &[u8]) {
        self.vol.cache.versions.settle(ino, lvb, || self.forget_inodes(&[ino]));
    }

    /// Whether this node changed `ino` since it last gave its lock up or downgraded it (and
    /// forgets that it did): then the lock value block gets a new version.
    pub fn take_changed(&self, ino: InodeNo) -> bool {
        self.vol.cache.versions.take_changed(ino)
    }

    /// [`Fs::write_back_and_forget_cover`] for several locks given up together: one commit and
    /// one pass over the cache (a node trimming the locks it caches).
    pub fn write_back_and_forget_covers(&self, covers: &[crate::cache::Cover]) -> Result<()> {
        self.write_back()?;
        self.forget_covers(covers);
        Ok(())
    }

    /// Drops what this node caches under the locks `covers` (for a group, also the
    /// allocator's map of it and the inode numbers set aside in it), which it gives up with
    /// nothing of theirs left in its journal.
    pub fn forget_covers(&self, covers: &[crate::cache::Cover]) {
        let kept = self.vol.cache.drop_covered(covers);
        if kept > 0 {
            tracing::warn!(?covers, kept, "cached blocks still in use when their lock was given up");
        }
        for cover in covers {
            if let crate::cache::Cover::Group(a) = *cover {
                self.forget_pooled_inodes(Some(a));
                self.vol.alloc.forget_ag(a);
            }
        }
    }

    /// Commits, writes home and retires from the journal everything done so far: afterwards
    /// no replay of this node's journal can write over a block another node changes next.
    pub fn write_back(&self) -> Result<()> {
        // From now on other nodes may find what this node made: those of its new inodes that
        // are open here need their open locks first.
        let made = std::mem::take(&mut *self.made_here.lock());
        for ino in made.into_iter().filter(|i| self.is_open(*i)) {
            self.locks.cluster().open_lock(ino)?;
        }
        // Nothing changed since the last commit (a node that only read): no commit and no
        // flush; the next node reads what is on the device either way.
        if !self.vol.journal.is_idle() {
            self.vol.sync()?;
        }
        // Written home is not enough: a crash would replay the journal's older images over
        // what the next node writes.
        self.vol.journal.retire_committed()
    }

    /// Why the filesystem stopped writing (a device error latched by the journal), if it did:
    /// from then on every change fails with EIO. Cluster mode then withdraws the node.
    pub fn stopped(&self) -> Option<String> {
        self.vol.journal.fatal_error()
    }

    /// fsync / fsyncdir / syncfs: everything done so far becomes durable.
    pub fn sync(&self) -> Result<()> {
        self.vol.sync()
    }

    /// Periodic commit (the mount runs it every few seconds, like ext4's commit interval);
    /// does nothing when nothing changed.
    pub fn commit(&self) -> Result<()> {
        if self.vol.journal.is_idle() {
            return Ok(());
        }
        self.vol.commit()
    }

    /// For the mount's commit thread: waits up to `timeout` for a full transaction to ask for
    /// a commit (see `Journal::request_commit`); true if one did.
    pub fn wait_for_commit_request(&self, timeout: std::time::Duration) -> bool {
        self.vol.journal.wait_for_commit_request(timeout)
    }

    /// The commit thread is stopping: operations commit full transactions themselves again.
    pub fn committer_stopped(&self) {
        self.vol.journal.committer_stopped()
    }

    /// Clean unmount.
    pub fn close(&self) -> Result<()> {
        self.vol.close()
    }
}
