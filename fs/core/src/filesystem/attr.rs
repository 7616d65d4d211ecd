//! Attributes: setattr (chmod, chown, truncate, utimens), extended attributes (user.,
//! trusted., security., system.posix_acl_*) and statfs.
use super::Fs;
use crate::alloc::BlockState;
use crate::error::{FsError, Result};
use crate::format::header::BlockType;
use crate::format::inode::{Inode, Timespec};
use crate::format::BLOCK_SIZE;
use crate::locks::Mode;
use crate::xattr;

/// Fields to change; None leaves a field alone.
#[derive(Debug, Default, Clone)]
pub struct SetAttr {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<Timespec>,
    pub mtime: Option<Timespec>,
    pub ctime: Option<Timespec>,
}

#[derive(Debug, Clone, Copy)]
pub struct StatFs {
    pub blocks: u64,
    pub bfree: u64,
    pub files: u64,
    pub ffree: u64,
    pub bsize: u32,
    pub namelen: u32,
}

/// The file capabilities the kernel grants on exec; dropped with the set-ID bits.
const CAPABILITY_XATTR: &[u8] = b"security.capability";

/// The set-ID bits a write, truncate or chown removes: set-user-ID, and set-group-ID where it
/// means "run as the group" (group-executable). Set-group-ID without group execute marks
/// mandatory locking and stays, as in the VFS.
pub fn privileged_bits(mode: u32) -> u32 {
    let setgid = libc::S_ISGID | libc::S_IXGRP;
    (mode & libc::S_ISUID) | if mode & setgid == setgid { libc::S_ISGID } else { 0 }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XattrSet {
    Any,
    Create,
    Replace,
}

impl Fs {
    pub fn setattr(&self, ino: u64, a: &SetAttr) -> Result<Inode> {
        if let Some(size) = a.size {
            let cur = self.getattr(ino)?;
            if cur.is_dir() {
                return Err(FsError::IsDir);
            }
            if !cur.is_reg() {
                return Err(FsError::Invalid("truncate of a special file"));
            }
            if size != cur.size {
                self.truncate(ino, size)?;
            } else {
                // POSIX: a successful truncate updates mtime and ctime even without a change.
                let h = self.begin()?;
                let _g = self.locks.lock(ino, Mode::Exclusive)?;
                let (buf, mut inode) = self.iget(ino)?;
                let now = Timespec::now();
                inode.mtime = now;
                inode.ctime = now;
                self.iput(&h, &buf, &inode);
            }
        }
        let h = self.begin()?;
        let _g = self.locks.lock(ino, Mode::Exclusive)?;
        let (buf, mut inode) = self.iget(ino)?;
        let now = Timespec::now();
        let mut changed = false;
        if let Some(m) = a.mode {
            inode.mode = (inode.mode & libc::S_IFMT) | (m & 0o7777);
            changed = true;
        }
        if let Some(u) = a.uid {
            inode.uid = u;
            changed = true;
        }
        if let Some(g) = a.gid {
            inode.gid = g;
            changed = true;
        }
        if let Some(t) = a.atime {
            inode.atime = t;
            changed = true;
        }
        if let Some(t) = a.mtime {
            inode.mtime = t;
            changed = true;
        }
        if changed || a.size.is_some() {
            inode.ctime = a.ctime.unwrap_or(now);
        } else if let Some(t) = a.ctime {
            inode.ctime = t;
        }
        self.iput(&h, &buf, &inode);
        Ok(inode)
    }

    /// Takes from a file what a write, a truncate or a chown takes under
    /// FUSE_HANDLE_KILLPRIV_V2, where the kernel leaves it to the filesystem: the set-ID bits
    /// (when `setid`; see [`privileged_bits`]) and the file capabilities (`security.capability`,
    /// always). Nothing to take, the common case, costs no transaction.
    pub fn kill_privileges(&self, ino: u64, setid: bool) -> Result<()> {
        let cur = self.getattr(ino)?;
        if cur.is_dir() {
            return Ok(());
        }
        if setid && privileged_bits(cur.mode) != 0 {
            let h = self.begin()?;
            let _g = self.locks.lock(ino, Mode::Exclusive)?;
            let (buf, mut inode) = self.iget(ino)?;
            // Again under the lock: a chmod may have come in between.
            let bits = privileged_bits(inode.mode);
            if bits != 0 {
                inode.mode &= !bits;
                inode.ctime = Timespec::now();
                self.iput(&h, &buf, &inode);
            }
        }
        // Looked up first: files with ACLs have an xattr block, and most writes to them must
        // not open a transaction just to learn there is no capability to drop.
        if cur.xattr_blk != 0 && self.getxattr(ino, CAPABILITY_XATTR).is_ok() {
            match self.setxattr(ino, CAPABILITY_XATTR, None, XattrSet::Any) {
                Ok(()) | Err(FsError::NoAttr) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Records an access time, relatime-style: only if the old one is not newer than the last
    /// change or is a day old, so reads do not turn into journal writes.
    pub fn touch_atime(&self, ino: u64) -> Result<()> {
        let cur = self.getattr(ino)?;
        let now = Timespec::now();
        let stale = cur.atime.sec + 86400 < now.sec;
        let behind = (cur.atime.sec, cur.atime.nsec) <= (cur.mtime.sec, cur.mtime.nsec)
            || (cur.atime.sec, cur.atime.nsec) <= (cur.ctime.sec, cur.ctime.nsec);
        if !(stale || behind) {
            return Ok(());
        }
        let h = self.begin()?;
        let _g = self.locks.lock(ino, Mode::Exclusive)?;
        let (buf, mut inode) = self.iget(ino)?;
        inode.atime = now;
        self.iput(&h, &buf, &inode);
        Ok(())
    }

    fn xattrs_of(&self, inode: &Inode) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        if inode.xattr_blk == 0 {
            return Ok(Vec::new());
        }
        let buf = self.vol.cache.get(inode.xattr_blk, BlockType::Xattr)?;
        let d = buf.read();
        xattr::parse(&d, inode.xattr_blk)
    }

    pub fn getxattr(&self, ino: u64, name: &[u8]) -> Result<Vec<u8>> {
        let _g = self.locks.lock(ino, Mode::Shared)?;
        let (_, inode) = self.iget(ino)?;
        self.xattrs_of(&inode)?.into_iter().find(|(n, _)| n == name).map(|(_, v)| v).ok_or(FsError::NoAttr)
    }

    pub fn listxattr(&self, ino: u64) -> Result<Vec<u8>> {
        let _g = self.locks.lock(ino, Mode::Shared)?;
        let (_, inode) = self.iget(ino)?;
        let mut out = Vec::new();
        for (n, _) in self.xattrs_of(&inode)? {
            out.extend_from_slice(&n);
            out.push(0);
        }
        Ok(out)
    }

    /// Sets (`Some`) or removes (`None`) an attribute.
    pub fn setxattr(&self, ino: u64, name: &[u8], value: Option<&[u8]>, how: XattrSet) -> Result<()> {
        if name.is_empty() || name.len() > xattr::MAX_NAME {
            return Err(if name.is_empty() { FsError::Invalid("empty attribute name") } else { FsError::Range });
        }
        let known = [&b"user."[..], b"trusted.", b"security.", b"system.posix_acl_access", b"system.posix_acl_default"];
        if !known.iter().any(|p| name.starts_with(p)) {
            return Err(FsError::NotSupported);
        }
        if let Some(v) = value {
            if v.len() > xattr::XATTR_AREA {
                return Err(FsError::AttrTooBig);
            }
        }
        // Removing or changing attributes in an existing block allocates nothing, so it works
        // on a full volume too.
        let has_block = self.getattr(ino)?.xattr_blk != 0;
        let h = if value.is_none() || has_block { self.begin()? } else { self.begin_alloc()? };
        let _g = self.locks.lock(ino, Mode::Exclusive)?;
        let (buf, mut inode) = self.iget(ino)?;
        let mut attrs = self.xattrs_of(&inode)?;
        let pos = attrs.iter().position(|(n, _)| n == name);
        match (value, pos) {
            (None, None) => return Err(FsError::NoAttr),
            (None, Some(i)) => {
                attrs.remove(i);
            }
            (Some(_), Some(_)) if how == XattrSet::Create => return Err(FsError::Exists),
            (Some(_), None) if how == XattrSet::Replace => return Err(FsError::NoAttr),
            (Some(v), Some(i)) => attrs[i].1 = v.to_vec(),
            (Some(v), None) => {
                attrs.push((name.to_vec(), v.to_vec()));
                attrs.sort();
            }
        }
        if xattr::encoded_len(&attrs) > xattr::XATTR_AREA {
            return Err(FsError::NoSpace);
        }
        if attrs.is_empty() {
            if inode.xattr_blk != 0 {
                h.revoke(inode.xattr_blk);
                self.vol.alloc.free(&h, inode.xattr_blk, 1)?;
                inode.xattr_blk = 0;
                inode.blocks -= 1;
            }
        } else {
            let xbuf = if inode.xattr_blk == 0 {
                let (b, _) = self.vol.alloc.alloc(&h, 1, ino, BlockState::Meta)?;
                inode.xattr_blk = b;
                inode.blocks += 1;
                self.vol.cache.create(b, BlockType::Xattr)
            } else {
                self.vol.cache.get(inode.xattr_blk, BlockType::Xattr)?
            };
            xattr::serialize(&attrs, &mut h.write(&xbuf))?;
        }
        inode.ctime = Timespec::now();
        self.iput(&h, &buf, &inode);
        Ok(())
    }

    pub fn statfs(&self) -> StatFs {
        let total = self.vol.alloc.total_blocks();
        let free = self.vol.alloc.free_blocks();
        StatFs {
            blocks: total,
            bfree: free,
            files: total,
            ffree: free,
            bsize: BLOCK_SIZE as u32,
            namelen: crate::format::MAX_NAME_LEN as u32,
        }
    }
}
