//! The FUSE glue: translates kernel requests into `filesystem::Fs` calls and replies, and
//! errors into errno values (`FsError::errno`). Nothing here decides filesystem behaviour.
mod caller;
pub mod control;
pub mod kernel_cache;
pub mod mount;

use caller::RequestCaller;
use fuser::{
    AccessFlags, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, InitFlags, KernelConfig, LockOwner,
    OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyLseek, ReplyOpen, ReplyStatfs,
    ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};
use kernel_cache::KernelLookups;
use mafs_core::error::FsError;
use mafs_core::filesystem::attr::XattrSet;
use mafs_core::filesystem::namespace::NewNode;
use mafs_core::filesystem::setid::privileged_bits;
use mafs_core::filesystem::{FallocMode, Fs, SetAttr, Whence};
use mafs_core::format::inode::{Inode, Timespec};
use mafs_core::format::InodeNo;
use mafs_core::locks::{Access, Standalone, VolumeGate};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Open files skip FLUSH on close: mafs has nothing to do at flush (data is written through,
/// fsync commits), and a create + close then costs one request less.
const FILE_OPEN_FLAGS: FopenFlags = FopenFlags::FOPEN_NOFLUSH;

/// Enters the volume gate of the current incarnation for a request, and answers the hold and
/// the incarnation (whose filesystem the request then uses), or answers the request with why
/// it could not.
macro_rules! enter {
    ($self:ident, $access:ident, $reply:ident) => {{
        let inc = $self.current.get();
        match inc.gate.enter(Access::$access) {
            Ok(hold) => (hold, inc),
            Err(e) => return $reply.error(errno(&e)),
        }
    }};
}

/// Answers EIO for a file handle of an earlier incarnation (see [`Current`]).
macro_rules! this_incarnation {
    ($inc:ident, $fh:ident, $reply:ident) => {
        if $fh.0 != $inc.number {
            tracing::debug!(fh = $fh.0, now = $inc.number, "a file handle opened before the node fenced itself");
            return $reply.error(Errno::from_i32(libc::EIO));
        }
    };
}

/// What requests go to: the filesystem and the gate before it, numbered. A cluster node that
/// fenced itself and joined the cluster again gets new ones (`mount.rs`); a file handle holds
/// the number of the incarnation that opened it, and one opened before is refused with EIO
/// (its inode may have been freed by the recovery of the old one), as a GFS2 withdraw fails
/// them. Standalone has incarnation 0 for ever.
pub struct Current {
    inner: parking_lot::RwLock<Incarnation>,
}

#[derive(Clone)]
pub struct Incarnation {
    pub fs: Arc<Fs>,
    pub gate: Arc<dyn VolumeGate>,
    pub number: u64,
}

impl Current {
    pub fn new(fs: Arc<Fs>, gate: Arc<dyn VolumeGate>) -> Arc<Current> {
        Arc::new(Current { inner: parking_lot::RwLock::new(Incarnation { fs, gate, number: 0 }) })
    }

    /// The filesystem and gate a request uses, taken together.
    pub fn get(&self) -> Incarnation {
        self.inner.read().clone()
    }

    pub fn fs(&self) -> Arc<Fs> {
        self.inner.read().fs.clone()
    }

    /// Puts a new incarnation in place; answers its number.
    pub fn replace(&self, fs: Arc<Fs>, gate: Arc<dyn VolumeGate>) -> u64 {
        let mut cur = self.inner.write();
        let number = cur.number + 1;
        *cur = Incarnation { fs, gate, number };
        number
    }
}

pub struct MafsFuse {
    current: Arc<Current>,
    /// How long the kernel may trust attributes and names. A standalone node holds every lock
    /// for ever, so every change goes through this kernel and long TTLs are safe. A cluster
    /// node gives them only under its inode locks (see [`KernelCache`]).
    ttl: Duration,
    root: InodeNo,
    cache: KernelCache,
}

/// What the kernel may cache of this mount.
#[derive(Clone)]
pub enum KernelCache {
    /// Everything (standalone: every change to the volume goes through this kernel): pages
    /// are kept across opens, and atime is updated on reads.
    All,
    /// Names (negative ones too) and attributes, for as long as the node holds the inode locks
    /// (cluster mode, see docs/design.md "Kernel caches"): the node drops them before it gives
    /// the lock to a writer, through `kernel_cache::Dropper`, which needs the lookups counted
    /// here. File I/O bypasses the page cache (FOPEN_DIRECT_IO): dropping pages takes page
    /// locks that a READ waiting in the gate holds. No atime updates on reads (a read would
    /// otherwise need the volume lock exclusively, and readers on two nodes would take it
    /// from each other).
    UnderLock(Arc<KernelLookups>),
}

impl KernelCache {
    /// Whether other nodes change the volume too (cluster mode).
    fn shared(&self) -> bool {
        matches!(self, KernelCache::UnderLock(_))
    }
}

fn errno(e: &FsError) -> Errno {
    if matches!(
        e,
        FsError::Io { .. }
            | FsError::Corrupt { .. }
            | FsError::ShortRead { .. }
            | FsError::Stopped(_)
            | FsError::Cluster(_)
            | FsError::DeviceFull { .. }
    ) {
        tracing::error!("{e}");
    }
    Errno::from_i32(e.errno())
}

fn systime(t: Timespec) -> SystemTime {
    if t.sec >= 0 {
        UNIX_EPOCH + Duration::new(t.sec as u64, t.nsec)
    } else {
        UNIX_EPOCH - Duration::from_secs((-t.sec) as u64) + Duration::from_nanos(t.nsec as u64)
    }
}

/// A time the kernel sent (setattr). fuser 0.18 turns the kernel's (sec < 0, nsec) into
/// `UNIX_EPOCH - (|sec| s + nsec ns)` instead of `- |sec| s + nsec ns`, so before 1970 the
/// duration back to the epoch holds |sec| and nsec as they were sent.
fn timespec_from_kernel(t: SystemTime) -> Timespec {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => Timespec { sec: d.as_secs() as i64, nsec: d.subsec_nanos() },
        Err(e) => {
            let d = e.duration();
            Timespec { sec: -(d.as_secs() as i64), nsec: d.subsec_nanos() }
        }
    }
}

fn kind(mode: u32) -> FileType {
    match mode & libc::S_IFMT {
        libc::S_IFDIR => FileType::Directory,
        libc::S_IFLNK => FileType::Symlink,
        libc::S_IFIFO => FileType::NamedPipe,
        libc::S_IFCHR => FileType::CharDevice,
        libc::S_IFBLK => FileType::BlockDevice,
        libc::S_IFSOCK => FileType::Socket,
        _ => FileType::RegularFile,
    }
}

fn dtype_kind(dt: u8) -> FileType {
    match dt {
        libc::DT_DIR => FileType::Directory,
        libc::DT_LNK => FileType::Symlink,
        libc::DT_FIFO => FileType::NamedPipe,
        libc::DT_CHR => FileType::CharDevice,
        libc::DT_BLK => FileType::BlockDevice,
        libc::DT_SOCK => FileType::Socket,
        _ => FileType::RegularFile,
    }
}

impl MafsFuse {
    /// A standalone mount's glue: every request passes, the kernel caches everything.
    pub fn new(fs: Arc<Fs>, ttl: Duration) -> MafsFuse {
        Self::with_gate(fs, ttl, Arc::new(Standalone), KernelCache::All)
    }

    /// The glue of a mount whose requests first pass `gate` (cluster mode).
    pub fn with_gate(fs: Arc<Fs>, ttl: Duration, gate: Arc<dyn VolumeGate>, cache: KernelCache) -> MafsFuse {
        Self::with_current(Current::new(fs, gate), ttl, cache)
    }

    /// The glue of a mount whose filesystem and gate may be replaced while it is mounted.
    pub fn with_current(current: Arc<Current>, ttl: Duration, cache: KernelCache) -> MafsFuse {
        let root = current.fs().root();
        MafsFuse { current, ttl, root, cache }
    }

    fn file_open_flags(&self) -> FopenFlags {
        match self.cache {
            // Pages stay valid across opens: nobody else changes the data behind them.
            KernelCache::All => FILE_OPEN_FLAGS.union(FopenFlags::FOPEN_KEEP_CACHE),
            KernelCache::UnderLock(_) => FILE_OPEN_FLAGS.union(FopenFlags::FOPEN_DIRECT_IO),
        }
    }

    fn dir_open_flags(&self) -> FopenFlags {
        match self.cache {
            KernelCache::All => FopenFlags::FOPEN_KEEP_CACHE,
            KernelCache::UnderLock(_) => FopenFlags::empty(),
        }
    }

    /// The kernel's node id as the core's inode number: the one place the two meet. The root
    /// is node 1 to the kernel; every other node id is the inode's number.
    fn ino(&self, i: INodeNo) -> InodeNo {
        if i == INodeNo::ROOT {
            self.root
        } else {
            InodeNo(i.0)
        }
    }

    /// The core's inode number as the kernel's node id (the other way of [`Self::ino`]).
    fn fuse_ino(&self, i: InodeNo) -> INodeNo {
        if i == self.root {
            INodeNo::ROOT
        } else {
            INodeNo(i.get())
        }
    }

    fn attr(&self, i: &Inode) -> FileAttr {
        FileAttr {
            ino: self.fuse_ino(i.ino),
            size: i.size,
            blocks: (i.blocks + 1) * 8,
            atime: systime(i.atime),
            mtime: systime(i.mtime),
            ctime: systime(i.ctime),
            crtime: systime(i.crtime),
            kind: kind(i.mode),
            perm: (i.mode & 0o7777) as u16,
            nlink: i.nlink,
            uid: i.uid,
            gid: i.gid,
            rdev: i.rdev as u32,
            blksize: 4096,
            flags: 0,
        }
    }

    /// How long the kernel may trust `i`'s attributes. Not at all for a file with set-ID bits
    /// that a write or fallocate may drop (mafs_core's setid.rs): those replies cannot tell the kernel,
    /// and a stale set-user-ID bit would show in stat and, worse, count at exec. Such files are
    /// rare, so the extra GETATTRs cost nothing that matters.
    /// In cluster mode, only for a node the kernel holds already (`kernel_cache.rs` says why).
    fn attr_ttl(&self, i: &Inode) -> Duration {
        self.attr_ttl_if(i, KernelLookups::held)
    }

    /// [`Self::attr_ttl`], with `held` answering whether the kernel holds the node already.
    fn attr_ttl_if(&self, i: &Inode, held: impl FnOnce(&KernelLookups, INodeNo) -> bool) -> Duration {
        let held = match &self.cache {
            KernelCache::All => true,
            KernelCache::UnderLock(k) => held(k, self.fuse_ino(i.ino)) && k.may_cache(),
        };
        if !held || (!i.is_dir() && privileged_bits(i.mode) != 0) {
            Duration::ZERO
        } else {
            self.ttl
        }
    }

    /// How long the kernel may trust a name, or the absence of one.
    fn entry_ttl(&self) -> Duration {
        match &self.cache {
            KernelCache::UnderLock(k) if !k.may_cache() => Duration::ZERO,
            _ => self.ttl,
        }
    }

    /// Counts a lookup that a reply gives the kernel (cluster mode) and answers the attribute
    /// lifetime the reply may give: none for a node new to the kernel (`KernelLookups::add`
    /// answers whether the kernel held it before this lookup).
    fn count_lookup(&self, i: &Inode) -> Duration {
        self.attr_ttl_if(i, KernelLookups::add)
    }

    fn entry(&self, r: Result<Inode, FsError>, reply: ReplyEntry) {
        match r {
            Ok(i) => {
                let attr_ttl = self.count_lookup(&i);
                reply.entry_with_ttls(&attr_ttl, &self.entry_ttl(), &self.attr(&i), Generation(i.generation))
            }
            Err(e) => reply.error(errno(&e)),
        }
    }

    /// Answers a lookup made to decode a file handle naming `node`. An inode that is gone is
    /// ESTALE (the kernel's word for a handle that names nothing any more), and no negative
    /// entry: there is no name to cache. The root's block number is never a node id (the root
    /// is node 1), so a handle holding it names nothing either. The reply counts as a lookup
    /// like any other, and the kernel's FORGET balances it (counted only in cluster mode, for
    /// `kernel_cache.rs`).
    fn handle_entry(&self, node: INodeNo, find: impl FnOnce(InodeNo) -> Result<Inode, FsError>, reply: ReplyEntry) {
        if node != INodeNo::ROOT && self.ino(node) == self.root {
            return reply.error(Errno::from_i32(libc::ESTALE));
        }
        match find(self.ino(node)) {
            Err(FsError::NotFound) | Err(FsError::NotDir) => reply.error(Errno::from_i32(libc::ESTALE)),
            r => self.entry(r, reply),
        }
    }

    fn empty(r: Result<(), FsError>, reply: ReplyEmpty) {
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(&e)),
        }
    }

    /// Closes one handle of `ino`. Only the last close of an unlinked inode writes (it frees
    /// the inode), so only that one enters the gate to write: a reader's close on one node does
    /// not take the volume from a writer on another.
    fn close_handle(&self, inc: &Incarnation, ino: InodeNo) -> Result<(), FsError> {
        if !inc.fs.forget_handle(ino)? {
            return Ok(());
        }
        let unlinked = {
            let _hold = inc.gate.enter(Access::Read)?;
            inc.fs.is_unused_orphan(ino)?
        };
        if unlinked {
            let _hold = inc.gate.enter(Access::Write)?;
            inc.fs.reclaim_if_unused(ino)?;
        }
        Ok(())
    }

    /// Creates a node: the mode as the kernel sent it, unmasked, and the caller's umask
    /// (FUSE_DONT_MASK), for the core to apply the parent's default ACL or else the umask.
    fn make(&self, fs: &Fs, req: &Request, parent: INodeNo, name: &OsStr, node: NewNode, umask: u32) -> Result<Inode, FsError> {
        fs.create(self.ino(parent), name.as_bytes(), node, RequestCaller::new(req).with_umask(umask))
    }
}

impl Filesystem for MafsFuse {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        // DONT_MASK: the kernel passes the mode unmasked, with the umask beside it, so a
        // parent's default ACL can replace the umask as POSIX requires (mafs_core's acl.rs).
        let _ = config.add_capabilities(InitFlags::FUSE_PARALLEL_DIROPS | InitFlags::FUSE_POSIX_ACL | InitFlags::FUSE_DONT_MASK);
        // Asked on its own: a kernel without it keeps dropping set-ID bits itself (mafs_core's
        // setid.rs has the rules mafs keeps with it).
        let _ = config.add_capabilities(InitFlags::FUSE_HANDLE_KILLPRIV_V2);
        // File handles that outlive the kernel's inode cache and the mount (NFS re-export,
        // open_by_handle_at): the kernel then asks us for "." and ".." by node id (`lookup`).
        let _ = config.add_capabilities(InitFlags::FUSE_EXPORT_SUPPORT);
        let _ = config.set_max_write(1 << 20);
        Ok(())
    }

    fn destroy(&mut self) {
        // Closing writes the volume (a commit and the slot header's clean state).
        let inc = self.current.get();
        let hold = inc.gate.enter(Access::Write);
        if let Err(e) = hold.and_then(|_hold| inc.fs.close()) {
            tracing::error!("unmount: could not leave the volume clean: {e}");
        }
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let (_hold, inc) = enter!(self, Read, reply);
        let fs = &inc.fs;
        // The VFS resolves "." and ".." of a path itself; it sends them only to decode a file
        // handle, for a node id it may not know: "." is the inode of that number, whatever its
        // type, and ".." a directory's parent.
        match name.as_bytes() {
            b"." => return self.handle_entry(parent, |ino| fs.inode_by_number(ino), reply),
            b".." => return self.handle_entry(parent, |ino| fs.parent_of(ino), reply),
            _ => {}
        }
        match fs.lookup(self.ino(parent), name.as_bytes()) {
            // A negative entry with a TTL lets the kernel cache "no such name".
            Err(FsError::NotFound) => {
                reply.entry(&self.entry_ttl(), &FileAttr { ino: INodeNo(0), ..self.attr(&Inode::default()) }, Generation(0))
            }
            r => self.entry(r, reply),
        }
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        if let KernelCache::UnderLock(k) = &self.cache {
            k.forget(ino, nlookup);
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let (_hold, inc) = enter!(self, Read, reply);
        let fs = &inc.fs;
        match fs.getattr(self.ino(ino)) {
            Ok(i) => reply.attr(&self.attr_ttl(&i), &self.attr(&i)),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn setattr(
        &self,
        req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let (_hold, inc) = enter!(self, Write, reply);
        let fs = &inc.fs;
        let now = Timespec::now();
        let t = |x: Option<TimeOrNow>| {
            x.map(|v| match v {
                TimeOrNow::Now => now,
                TimeOrNow::SpecificTime(s) => timespec_from_kernel(s),
            })
        };
        let a = SetAttr { mode, uid, gid, size, atime: t(atime), mtime: t(mtime), ctime: ctime.map(timespec_from_kernel) };
        match fs.setattr_by(self.ino(ino), &a, RequestCaller::new(req).caller()) {
            Ok(i) => reply.attr(&self.attr_ttl(&i), &self.attr(&i)),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        let (_hold, inc) = enter!(self, Read, reply);
        let fs = &inc.fs;
        match fs.readlink(self.ino(ino)) {
            Ok(d) => reply.data(&d),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn mknod(&self, req: &Request, parent: INodeNo, name: &OsStr, mode: u32, umask: u32, rdev: u32, reply: ReplyEntry) {
        let (_hold, inc) = enter!(self, Write, reply);
        let fs = &inc.fs;
        self.entry(self.make(fs, req, parent, name, NewNode { mode, rdev: rdev as u64, symlink_target: None }, umask), reply)
    }

    fn mkdir(&self, req: &Request, parent: INodeNo, name: &OsStr, mode: u32, umask: u32, reply: ReplyEntry) {
        let (_hold, inc) = enter!(self, Write, reply);
        let fs = &inc.fs;
        self.entry(
            self.make(fs, req, parent, name, NewNode { mode: libc::S_IFDIR | (mode & 0o7777), rdev: 0, symlink_target: None }, umask),
            reply,
        )
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let (_hold, inc) = enter!(self, Write, reply);
        let fs = &inc.fs;
        Self::empty(fs.unlink(self.ino(parent), name.as_bytes(), false), reply)
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let (_hold, inc) = enter!(self, Write, reply);
        let fs = &inc.fs;
        Self::empty(fs.unlink(self.ino(parent), name.as_bytes(), true), reply)
    }

    fn symlink(&self, req: &Request, parent: INodeNo, link_name: &OsStr, target: &Path, reply: ReplyEntry) {
        let (_hold, inc) = enter!(self, Write, reply);
        let fs = &inc.fs;
        let r = dir_check(link_name).and_then(|_| {
            let parent = self.ino(parent);
            fs.create(
                parent,
                link_name.as_bytes(),
                NewNode { mode: libc::S_IFLNK | 0o777, rdev: 0, symlink_target: Some(target.as_os_str().as_bytes()) },
                RequestCaller::new(req).caller(),
            )
        });
        self.entry(r, reply)
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let (_hold, inc) = enter!(self, Write, reply);
        let fs = &inc.fs;
        if flags.contains(RenameFlags::RENAME_WHITEOUT) {
            return reply.error(Errno::from_i32(libc::EINVAL));
        }
        Self::empty(fs.rename(self.ino(parent), name.as_bytes(), self.ino(newparent), newname.as_bytes(), flags.bits()), reply)
    }

    fn link(&self, _req: &Request, ino: INodeNo, newparent: INodeNo, newname: &OsStr, reply: ReplyEntry) {
        let (_hold, inc) = enter!(self, Write, reply);
        let fs = &inc.fs;
        self.entry(fs.link(self.ino(ino), self.ino(newparent), newname.as_bytes()), reply)
    }

    fn open(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let (_hold, inc) = enter!(self, Read, reply);
        let fs = &inc.fs;
        match fs.open(self.ino(ino)) {
            Ok(_) => reply.opened(FileHandle(inc.number), self.file_open_flags()),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let (_hold, inc) = enter!(self, Read, reply);
        let fs = &inc.fs;
        this_incarnation!(inc, fh, reply);
        let ino = self.ino(ino);
        match fs.read(ino, offset, size) {
            Ok(d) => {
                reply.data(&d);
                if self.cache.shared() {
                    return;
                }
                if let Err(e) = fs.touch_atime(ino) {
                    tracing::warn!("atime of inode {ino}: {e}");
                }
            }
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn write(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        wf: WriteFlags,
        flags: OpenFlags,
        _lock: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let (_hold, inc) = enter!(self, Write, reply);
        let fs = &inc.fs;
        this_incarnation!(inc, fh, reply);
        let who = RequestCaller::writer(req, wf);
        // O_APPEND: the end of the file as it is now, not the offset the kernel computed from
        // the size it last saw (another node may have appended since).
        let r = if flags.0 & libc::O_APPEND != 0 && self.cache.shared() {
            fs.append_by(self.ino(ino), data, who.caller())
        } else {
            fs.write_by(self.ino(ino), offset, data, who.caller())
        };
        match r {
            Ok(n) => reply.written(n as u32),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn flush(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _lock: LockOwner, reply: ReplyEmpty) {
        reply.ok()
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let inc = self.current.get();
        if fh.0 != inc.number {
            return reply.ok(); // counted by an earlier incarnation, which is gone
        }
        Self::empty(self.close_handle(&inc, self.ino(ino)), reply)
    }

    fn fsync(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        let inc = self.current.get();
        this_incarnation!(inc, fh, reply);
        Self::empty(inc.fs.sync(), reply)
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let (_hold, inc) = enter!(self, Read, reply);
        let fs = &inc.fs;
        let ino = self.ino(ino);
        match fs.getattr(ino) {
            Ok(i) if !i.is_dir() => return reply.error(Errno::from_i32(libc::ENOTDIR)),
            Err(e) => return reply.error(errno(&e)),
            Ok(_) => {}
        }
        // Counted like an open file: a directory removed while open stays readable (empty)
        // until the last handle goes.
        match fs.open(ino) {
            Ok(_) => reply.opened(FileHandle(inc.number), self.dir_open_flags()),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn releasedir(&self, _req: &Request, ino: INodeNo, fh: FileHandle, _flags: OpenFlags, reply: ReplyEmpty) {
        let inc = self.current.get();
        if fh.0 != inc.number {
            return reply.ok(); // counted by an earlier incarnation, which is gone
        }
        Self::empty(self.close_handle(&inc, self.ino(ino)), reply)
    }

    fn readdir(&self, _req: &Request, ino: INodeNo, fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        let (_hold, inc) = enter!(self, Read, reply);
        let fs = &inc.fs;
        this_incarnation!(inc, fh, reply);
        let r = fs.readdir(self.ino(ino), offset, &mut |e_ino, dt, name, cookie| {
            !reply.add(self.fuse_ino(e_ino), cookie, dtype_kind(dt), OsStr::from_bytes(name))
        });
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn fsyncdir(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        let inc = self.current.get();
        this_incarnation!(inc, fh, reply);
        Self::empty(inc.fs.sync(), reply)
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let (_hold, inc) = enter!(self, Read, reply);
        let fs = &inc.fs;
        let s = fs.statfs();
        reply.statfs(s.blocks, s.bfree, s.bfree, s.files, s.ffree, s.bsize, s.namelen, s.bsize)
    }

    fn setxattr(&self, req: &Request, ino: INodeNo, name: &OsStr, value: &[u8], flags: i32, _position: u32, reply: ReplyEmpty) {
        let (_hold, inc) = enter!(self, Write, reply);
        let fs = &inc.fs;
        let how = if flags & libc::XATTR_CREATE != 0 {
            XattrSet::Create
        } else if flags & libc::XATTR_REPLACE != 0 {
            XattrSet::Replace
        } else {
            XattrSet::Any
        };
        Self::empty(fs.setxattr_by(self.ino(ino), name.as_bytes(), Some(value), how, RequestCaller::new(req).caller()), reply)
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let (_hold, inc) = enter!(self, Read, reply);
        let fs = &inc.fs;
        match fs.getxattr(self.ino(ino), name.as_bytes()) {
            Ok(v) if size == 0 => reply.size(v.len() as u32),
            Ok(v) if v.len() > size as usize => reply.error(Errno::from_i32(libc::ERANGE)),
            Ok(v) => reply.data(&v),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let (_hold, inc) = enter!(self, Read, reply);
        let fs = &inc.fs;
        match fs.listxattr(self.ino(ino)) {
            Ok(v) if size == 0 => reply.size(v.len() as u32),
            Ok(v) if v.len() > size as usize => reply.error(Errno::from_i32(libc::ERANGE)),
            Ok(v) => reply.data(&v),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let (_hold, inc) = enter!(self, Write, reply);
        let fs = &inc.fs;
        Self::empty(fs.setxattr(self.ino(ino), name.as_bytes(), None, XattrSet::Any), reply)
    }

    fn access(&self, _req: &Request, ino: INodeNo, _mask: AccessFlags, reply: ReplyEmpty) {
        let (_hold, inc) = enter!(self, Read, reply);
        let fs = &inc.fs;
        // Permissions are checked by the kernel (default_permissions); we only confirm existence.
        Self::empty(fs.getattr(self.ino(ino)).map(|_| ()), reply)
    }

    fn create(&self, req: &Request, parent: INodeNo, name: &OsStr, mode: u32, umask: u32, flags: i32, reply: ReplyCreate) {
        let (_hold, inc) = enter!(self, Write, reply);
        let fs = &inc.fs;
        let r = self.make(fs, req, parent, name, NewNode { mode, rdev: 0, symlink_target: None }, umask).and_then(|i| fs.open(i.ino));
        match r {
            // The kernel looked the name up (absent) before it asked to create it; in cluster
            // mode another node may have made it in between. An open without O_EXCL must then
            // open that file, with the kernel's own permission checks and O_TRUNC — which it
            // skips for a file it believes it created. ESTALE makes it walk the path again
            // with every name looked up afresh (do_filp_open's LOOKUP_REVAL retry, as NFS
            // relies on), and the second walk finds the file and opens it.
            Err(FsError::Exists) if flags & libc::O_EXCL == 0 => reply.error(Errno::from_i32(libc::ESTALE)),
            // One lifetime for both name and attributes here: a set-ID file's name is looked up
            // again, and so is a cluster node's new file.
            Ok(i) => {
                let ttl = self.count_lookup(&i);
                reply.created(&ttl, &self.attr(&i), Generation(i.generation), FileHandle(inc.number), self.file_open_flags())
            }
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn fallocate(&self, req: &Request, ino: INodeNo, fh: FileHandle, offset: u64, length: u64, mode: i32, reply: ReplyEmpty) {
        let (_hold, inc) = enter!(self, Write, reply);
        let fs = &inc.fs;
        this_incarnation!(inc, fh, reply);
        let r =
            FallocMode::from_flags(mode).and_then(|m| fs.fallocate_by(self.ino(ino), offset, length, m, RequestCaller::new(req).caller()));
        Self::empty(r, reply)
    }

    fn lseek(&self, _req: &Request, ino: INodeNo, fh: FileHandle, offset: i64, whence: i32, reply: ReplyLseek) {
        let (_hold, inc) = enter!(self, Read, reply);
        let fs = &inc.fs;
        this_incarnation!(inc, fh, reply);
        let w = match whence {
            libc::SEEK_DATA => Whence::Data,
            libc::SEEK_HOLE => Whence::Hole,
            _ => return reply.error(Errno::from_i32(libc::EINVAL)),
        };
        if offset < 0 {
            return reply.error(Errno::from_i32(libc::ENXIO));
        }
        match fs.lseek(self.ino(ino), offset as u64, w) {
            Ok(o) => reply.offset(o as i64),
            Err(e) => reply.error(errno(&e)),
        }
    }

    /// No ioctl is ours. Programs probe files with terminal ioctls all the time (Python asks
    /// TCGETS on every open): "not a terminal" is the answer they expect, and no log line.
    #[allow(clippy::too_many_arguments)]
    fn ioctl(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _flags: fuser::IoctlFlags,
        cmd: u32,
        _in: &[u8],
        _out: u32,
        reply: fuser::ReplyIoctl,
    ) {
        tracing::debug!(ino = ino.0, cmd, "ioctl not supported: ENOTTY");
        reply.error(Errno::from_i32(libc::ENOTTY));
    }
}

fn dir_check(name: &OsStr) -> Result<(), FsError> {
    mafs_core::dir::check_name(name.as_bytes())
}
