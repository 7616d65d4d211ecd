//! faulty-disk: a disk that goes bad on demand, for end-to-end tests of what mafs does when its
//! device fails (driven by `mafs_tests::faulty_disk`): a FUSE filesystem holding one file
//! `disk` backed by a real file. mafs nodes mount that file as their volume (with O_DIRECT, as cluster nodes do, every
//! write and flush reaches this code), and the test switches the faults on and off while they
//! work: every write and flush failing with EIO, writes that store only their first half (in
//! whole 512-byte sectors) and say so (short writes), or writes that store their first half and
//! fail (torn writes). Reads
//! always succeed: the faults are the ones a filesystem's writes must survive.
//!
//! It runs as its own process so that a test that fails can never leave a node waiting on a
//! disk served by the test's own dying process. Usage: `faulty-disk BACKING MOUNTPOINT
//! CONTROL`: the fault is the digit in the file CONTROL (0 none, 1 EIO, 2 short writes, 3 torn
//! writes, as `mafs_tests::faulty_disk::Fault`), read every 20 ms; the count of requests the
//! faults failed or cut short goes to CONTROL.hits.
use std::ffi::OsStr;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use fuser::{
    Config, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, LockOwner, MountOption, OpenFlags,
    ReplyAttr, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyWrite, Request, SessionACL, TimeOrNow, WriteFlags,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    None,
    Eio,
    ShortWrites,
    TornWrites,
}

struct State {
    backing: File,
    fault: AtomicU8,
    /// Requests the faults cut short or failed.
    hit: AtomicU64,
}

struct DiskFs(Arc<State>);

const ROOT: u64 = 1;
const DISK: u64 = 2;
const TTL: Duration = Duration::ZERO;
const SECTOR: usize = 512;

impl DiskFs {
    fn attr(&self, ino: u64) -> FileAttr {
        let size = if ino == DISK { self.0.backing.metadata().map(|m| m.len()).unwrap_or(0) } else { 0 };
        let now = SystemTime::now();
        FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: size.div_ceil(512),
            atime: now,
            mtime: now,
            ctime: now,
            crtime: now,
            kind: if ino == ROOT { FileType::Directory } else { FileType::RegularFile },
            perm: if ino == ROOT { 0o755 } else { 0o600 },
            nlink: if ino == ROOT { 2 } else { 1 },
            uid: 0,
            gid: 0,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        }
    }

    fn fault(&self) -> Fault {
        match self.0.fault.load(Ordering::Acquire) {
            1 => Fault::Eio,
            2 => Fault::ShortWrites,
            3 => Fault::TornWrites,
            _ => Fault::None,
        }
    }

    fn hit(&self) {
        self.0.hit.fetch_add(1, Ordering::AcqRel);
    }
}

fn eio() -> Errno {
    Errno::from_i32(libc::EIO)
}

impl Filesystem for DiskFs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        if parent.0 == ROOT && name == "disk" {
            reply.entry(&TTL, &self.attr(DISK), Generation(0))
        } else {
            reply.error(Errno::from_i32(libc::ENOENT))
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match ino.0 {
            ROOT | DISK => reply.attr(&TTL, &self.attr(ino.0)),
            _ => reply.error(Errno::from_i32(libc::ENOENT)),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        _mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        _size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        // The disk's size is the backing file's; nothing else about it changes.
        reply.attr(&TTL, &self.attr(ino.0))
    }

    fn open(&self, _req: &Request, _ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        // No page cache between the nodes and the faults.
        reply.opened(FileHandle(0), FopenFlags::FOPEN_DIRECT_IO)
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let mut buf = vec![0u8; size as usize];
        let mut got = 0;
        while got < buf.len() {
            match self.0.backing.read_at(&mut buf[got..], offset + got as u64) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(_) => return reply.error(eio()),
            }
        }
        reply.data(&buf[..got])
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _wf: WriteFlags,
        _flags: OpenFlags,
        _lock: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let fault = self.fault();
        if fault == Fault::Eio {
            self.hit();
            return reply.error(eio());
        }
        // A disk cuts between sectors, never inside one: the first half, in whole sectors.
        let store =
            if fault == Fault::None || data.len() <= SECTOR { data } else { &data[..(data.len() / 2).max(SECTOR) / SECTOR * SECTOR] };
        if self.0.backing.write_all_at(store, offset).is_err() {
            return reply.error(eio());
        }
        match fault {
            Fault::None => reply.written(data.len() as u32),
            Fault::ShortWrites => {
                self.hit();
                reply.written(store.len() as u32)
            }
            _ => {
                self.hit();
                reply.error(eio())
            }
        }
    }

    fn flush(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _lock: LockOwner, reply: ReplyEmpty) {
        reply.ok()
    }

    fn fsync(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        if self.fault() == Fault::Eio {
            self.hit();
            return reply.error(eio());
        }
        match self.0.backing.sync_data() {
            Ok(()) => reply.ok(),
            Err(_) => reply.error(eio()),
        }
    }

    fn opendir(&self, _req: &Request, _ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        reply.opened(FileHandle(0), FopenFlags::empty())
    }

    fn readdir(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        if ino.0 != ROOT {
            return reply.error(Errno::from_i32(libc::ENOTDIR));
        }
        let entries = [(ROOT, FileType::Directory, "."), (ROOT, FileType::Directory, ".."), (DISK, FileType::RegularFile, "disk")];
        for (i, (ino, kind, name)) in entries.iter().enumerate().skip(offset as usize) {
            if reply.add(INodeNo(*ino), (i + 1) as u64, *kind, name) {
                break;
            }
        }
        reply.ok()
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [backing, mountpoint, control] = args.as_slice() else {
        eprintln!("usage: faulty-disk BACKING MOUNTPOINT CONTROL");
        std::process::exit(2)
    };
    let backing = match std::fs::OpenOptions::new().read(true).write(true).open(backing) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("faulty-disk: cannot open {backing}: {e}");
            std::process::exit(1)
        }
    };
    let state = Arc::new(State { backing, fault: AtomicU8::new(0), hit: AtomicU64::new(0) });
    let watched = state.clone();
    let control = control.clone();
    std::thread::spawn(move || loop {
        if let Ok(s) = std::fs::read_to_string(&control) {
            watched.fault.store(s.trim().parse().unwrap_or(0), Ordering::Release);
        }
        let _ = std::fs::write(format!("{control}.hits.new"), watched.hit.load(Ordering::Acquire).to_string())
            .and_then(|()| std::fs::rename(format!("{control}.hits.new"), format!("{control}.hits")));
        std::thread::sleep(Duration::from_millis(20));
    });
    let mut config = Config::default();
    config.n_threads = Some(4);
    config.acl = SessionACL::All;
    config.mount_options = vec![MountOption::FSName("faulty-disk".into())];
    let session = match fuser::Session::new(DiskFs(state), mountpoint, &config) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("faulty-disk: cannot mount on {mountpoint}: {e}");
            std::process::exit(1)
        }
    };
    if let Err(e) = session.run() {
        eprintln!("faulty-disk: session ended: {e}");
        std::process::exit(1)
    }
}
