//! fuse_ceiling: an in-memory FUSE filesystem that answers every request at once, mounted with
//! exactly mafs's FUSE settings, to measure what any FUSE filesystem can reach here.
//!
//! Why: the metadata targets of issue 2 were calibrated on an in-memory filesystem mounted
//! without `default_permissions` and without extended attributes, where a create costs five
//! requests. mafs needs `default_permissions` (POSIX ACLs are enforced by the kernel) and
//! xattrs, and the kernel then adds a GETATTR of the parent after every change to a directory and
//! a GETXATTR `security.capability` before the first write to each file. Running `smallfiles`
//! against this filesystem and against mafs side by side shows how much of the gap to ext4 is the
//! request pattern (the same for both) and how much is mafs's own work.
//!
//! Same as mafs: mount options `default_permissions`, `dev`, `suid`, `allow_other`; init flags
//! PARALLEL_DIROPS, POSIX_ACL, DONT_MASK, HANDLE_KILLPRIV_V2; max_write 1 MiB; open replies with
//! FOPEN_KEEP_CACHE | FOPEN_NOFLUSH; entry and attribute TTL 60 s; negative entries cached; two
//! FUSE threads. It implements only what smallfiles and `ls`/`rm` need, keeps file data in memory,
//! and has no permission logic of its own (the kernel's `default_permissions` does it).
//!
//! Usage (as root): `fuse_ceiling MOUNTPOINT [--threads N]`; serves until unmounted (`umount`).
use fuser::{
    Config, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, InitFlags, KernelConfig, LockOwner,
    MountOption, OpenFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyWrite, ReplyXattr,
    Request, SessionACL, TimeOrNow, WriteFlags,
};
use std::collections::{BTreeMap, HashMap};
use std::ffi::{OsStr, OsString};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

const TTL: Duration = Duration::from_secs(60);
const OPEN_FLAGS: FopenFlags = FopenFlags::FOPEN_KEEP_CACHE.union(FopenFlags::FOPEN_NOFLUSH);

struct Node {
    attr: FileAttr,
    data: Vec<u8>,
    children: BTreeMap<OsString, u64>,
}

struct Tree {
    nodes: HashMap<u64, Node>,
    next: u64,
}

struct MemFs {
    tree: Mutex<Tree>,
}

fn attr(ino: u64, kind: FileType, perm: u16, uid: u32, gid: u32) -> FileAttr {
    let now = SystemTime::now();
    FileAttr {
        ino: INodeNo(ino),
        size: 0,
        blocks: 0,
        atime: now,
        mtime: now,
        ctime: now,
        crtime: now,
        kind,
        perm,
        nlink: if kind == FileType::Directory { 2 } else { 1 },
        uid,
        gid,
        rdev: 0,
        blksize: 4096,
        flags: 0,
    }
}

fn errno(e: i32) -> Errno {
    Errno::from_i32(e)
}

impl MemFs {
    fn new() -> MemFs {
        let root = Node { attr: attr(1, FileType::Directory, 0o755, 0, 0), data: Vec::new(), children: BTreeMap::new() };
        MemFs { tree: Mutex::new(Tree { nodes: HashMap::from([(1, root)]), next: 2 }) }
    }

    /// Adds a node named `name` under `parent`; the kernel has checked permissions.
    fn make(&self, req: &Request, parent: INodeNo, name: &OsStr, kind: FileType, mode: u32, umask: u32) -> Result<FileAttr, Errno> {
        let mut t = self.tree.lock().map_err(|_| errno(libc::EIO))?;
        let ino = t.next;
        let p = t.nodes.get_mut(&parent.0).ok_or(errno(libc::ENOENT))?;
        if p.children.contains_key(name) {
            return Err(errno(libc::EEXIST));
        }
        p.children.insert(name.to_owned(), ino);
        let now = SystemTime::now();
        p.attr.mtime = now;
        p.attr.ctime = now;
        if kind == FileType::Directory {
            p.attr.nlink += 1;
        }
        let a = attr(ino, kind, (mode & !umask & 0o7777) as u16, req.uid(), req.gid());
        t.nodes.insert(ino, Node { attr: a, data: Vec::new(), children: BTreeMap::new() });
        t.next += 1;
        Ok(a)
    }

    fn remove(&self, parent: INodeNo, name: &OsStr, dir: bool) -> Result<(), Errno> {
        let mut t = self.tree.lock().map_err(|_| errno(libc::EIO))?;
        let ino = *t.nodes.get(&parent.0).and_then(|p| p.children.get(name)).ok_or(errno(libc::ENOENT))?;
        let n = t.nodes.get(&ino).ok_or(errno(libc::ENOENT))?;
        match (dir, n.attr.kind == FileType::Directory) {
            (true, false) => return Err(errno(libc::ENOTDIR)),
            (false, true) => return Err(errno(libc::EISDIR)),
            (true, true) if !n.children.is_empty() => return Err(errno(libc::ENOTEMPTY)),
            _ => {}
        }
        t.nodes.remove(&ino);
        if let Some(p) = t.nodes.get_mut(&parent.0) {
            p.children.remove(name);
            let now = SystemTime::now();
            p.attr.mtime = now;
            p.attr.ctime = now;
            if dir {
                p.attr.nlink -= 1;
            }
        }
        Ok(())
    }
}

impl Filesystem for MemFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let _ = config.add_capabilities(InitFlags::FUSE_PARALLEL_DIROPS | InitFlags::FUSE_POSIX_ACL | InitFlags::FUSE_DONT_MASK);
        let _ = config.add_capabilities(InitFlags::FUSE_HANDLE_KILLPRIV_V2);
        let _ = config.set_max_write(1 << 20);
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let Ok(t) = self.tree.lock() else { return reply.error(errno(libc::EIO)) };
        match t.nodes.get(&parent.0).and_then(|p| p.children.get(name)).and_then(|i| t.nodes.get(i)) {
            Some(n) => reply.entry(&TTL, &n.attr, Generation(0)),
            // A negative entry with a TTL, as mafs answers.
            None => reply.entry(&TTL, &FileAttr { ino: INodeNo(0), ..attr(0, FileType::RegularFile, 0, 0, 0) }, Generation(0)),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let Ok(t) = self.tree.lock() else { return reply.error(errno(libc::EIO)) };
        match t.nodes.get(&ino.0) {
            Some(n) => reply.attr(&TTL, &n.attr),
            None => reply.error(errno(libc::ENOENT)),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let Ok(mut t) = self.tree.lock() else { return reply.error(errno(libc::EIO)) };
        let Some(n) = t.nodes.get_mut(&ino.0) else { return reply.error(errno(libc::ENOENT)) };
        let now = SystemTime::now();
        let time = |x: TimeOrNow| match x {
            TimeOrNow::Now => now,
            TimeOrNow::SpecificTime(s) => s,
        };
        if let Some(m) = mode {
            n.attr.perm = (m & 0o7777) as u16;
        }
        if let Some(u) = uid {
            n.attr.uid = u;
        }
        if let Some(g) = gid {
            n.attr.gid = g;
        }
        if let Some(s) = size {
            n.data.resize(s as usize, 0);
            n.attr.size = s;
            n.attr.mtime = now;
        }
        if let Some(a) = atime {
            n.attr.atime = time(a);
        }
        if let Some(m) = mtime {
            n.attr.mtime = time(m);
        }
        n.attr.ctime = now;
        reply.attr(&TTL, &n.attr)
    }

    fn mkdir(&self, req: &Request, parent: INodeNo, name: &OsStr, mode: u32, umask: u32, reply: ReplyEntry) {
        match self.make(req, parent, name, FileType::Directory, mode, umask) {
            Ok(a) => reply.entry(&TTL, &a, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn create(&self, req: &Request, parent: INodeNo, name: &OsStr, mode: u32, umask: u32, _flags: i32, reply: ReplyCreate) {
        match self.make(req, parent, name, FileType::RegularFile, mode, umask) {
            Ok(a) => reply.created(&TTL, &a, Generation(0), FileHandle(0), OPEN_FLAGS),
            Err(e) => reply.error(e),
        }
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match self.remove(parent, name, false) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match self.remove(parent, name, true) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn open(&self, _req: &Request, _ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        reply.opened(FileHandle(0), OPEN_FLAGS)
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let Ok(t) = self.tree.lock() else { return reply.error(errno(libc::EIO)) };
        let Some(n) = t.nodes.get(&ino.0) else { return reply.error(errno(libc::ENOENT)) };
        let start = (offset as usize).min(n.data.len());
        let end = (start + size as usize).min(n.data.len());
        reply.data(&n.data[start..end])
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _wf: WriteFlags,
        _flags: OpenFlags,
        _lock: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let Ok(mut t) = self.tree.lock() else { return reply.error(errno(libc::EIO)) };
        let Some(n) = t.nodes.get_mut(&ino.0) else { return reply.error(errno(libc::ENOENT)) };
        let end = offset as usize + data.len();
        if n.data.len() < end {
            n.data.resize(end, 0);
        }
        n.data[offset as usize..end].copy_from_slice(data);
        n.attr.size = n.data.len() as u64;
        n.attr.mtime = SystemTime::now();
        n.attr.ctime = n.attr.mtime;
        reply.written(data.len() as u32)
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: OpenFlags,
        _lock: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        reply.ok()
    }

    fn opendir(&self, _req: &Request, _ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        reply.opened(FileHandle(0), FopenFlags::FOPEN_KEEP_CACHE)
    }

    fn readdir(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        let Ok(t) = self.tree.lock() else { return reply.error(errno(libc::EIO)) };
        let Some(n) = t.nodes.get(&ino.0) else { return reply.error(errno(libc::ENOENT)) };
        for (i, (name, child)) in n.children.iter().enumerate().skip(offset as usize) {
            let kind = t.nodes.get(child).map(|c| c.attr.kind).unwrap_or(FileType::RegularFile);
            if reply.add(INodeNo(*child), (i + 1) as u64, kind, name) {
                break;
            }
        }
        reply.ok()
    }

    fn getxattr(&self, _req: &Request, _ino: INodeNo, _name: &OsStr, _size: u32, reply: ReplyXattr) {
        // Supported but absent, as on mafs (ENOSYS would make the kernel stop asking at all).
        reply.error(errno(libc::ENODATA))
    }

    fn listxattr(&self, _req: &Request, _ino: INodeNo, size: u32, reply: ReplyXattr) {
        if size == 0 {
            reply.size(0)
        } else {
            reply.data(&[])
        }
    }

    fn access(&self, _req: &Request, _ino: INodeNo, _mask: fuser::AccessFlags, reply: ReplyEmpty) {
        reply.ok()
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let Some(mountpoint) = args.next() else {
        eprintln!("usage: fuse_ceiling MOUNTPOINT [--threads N]");
        std::process::exit(2)
    };
    let mut threads = 2;
    while let Some(a) = args.next() {
        match (a.as_str(), args.next().and_then(|v| v.parse().ok())) {
            ("--threads", Some(n)) => threads = n,
            _ => {
                eprintln!("usage: fuse_ceiling MOUNTPOINT [--threads N]");
                std::process::exit(2)
            }
        }
    }
    let mut config = Config::default();
    config.n_threads = Some(threads);
    config.acl = SessionACL::All;
    config.mount_options =
        vec![MountOption::FSName("fuse_ceiling".into()), MountOption::DefaultPermissions, MountOption::Dev, MountOption::Suid];
    let session = match fuser::Session::new(MemFs::new(), &mountpoint, &config) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("fuse_ceiling: cannot mount on {mountpoint}: {e}");
            std::process::exit(1)
        }
    };
    if let Err(e) = session.run() {
        eprintln!("fuse_ceiling: session ended: {e}");
        std::process::exit(1)
    }
}
