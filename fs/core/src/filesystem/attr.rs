//! Attributes: setattr (chmod, chown, truncate, utimens), extended attributes (user.,
//! trusted., security., system.posix_acl_*) and statfs. The ACL rules a chmod or a new access
//! ACL brings with it are applied in the same transaction (`acl.rs`).
use super::acl::{self, Acl};
use super::{Caller, Fs};
use crate::alloc::BlockState;
use crate::cache::Cover;
use crate::error::{FsError, Result};
use crate::format::header::BlockType;
use crate::format::inode::{Inode, Timespec};
use crate::format::{InodeNo, BLOCK_SIZE};
use crate::journal::Handle;
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XattrSet {
    Any,
    Create,
    Replace,
}

impl Fs {
    /// Changes the attributes `a` names. A new mode also goes into the access ACL, if the file
    /// has one, in the same transaction. The set-ID rules of a change made for a caller are
    /// `setattr_by`'s (`setid.rs`).
    pub fn setattr(&self, ino: InodeNo, a: &SetAttr) -> Result<Inode> {
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
                let _g = self.locks.lock(ino, Mode::Exclusive)?;
                let h = self.begin()?;
                let (buf, mut inode) = self.iget(ino)?;
                let now = Timespec::now();
                inode.mtime = now;
                inode.ctime = now;
                self.iput(&h, &buf, &inode);
            }
        }
        let _g = self.locks.lock(ino, Mode::Exclusive)?;
        let (buf, mut inode) = self.iget(ino)?;
        // A new mode rewrites the access ACL in the xattr block.
        let mut plan = self.ag_plan();
        if a.mode.is_some() {
            self.plan_xattr_change(&mut plan, &inode);
        }
        let ags = self.hold_ags(plan)?;
        let h = self.begin_in(&ags)?;
        let now = Timespec::now();
        let mut changed = false;
        if let Some(m) = a.mode {
            inode.mode = (inode.mode & libc::S_IFMT) | (m & 0o7777);
            changed = true;
            self.acl_follows_mode(&h, &mut inode)?;
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

    /// Records an access time, relatime-style: only if the old one is not newer than the last
    /// change or is a day old, so reads do not turn into journal writes.
    pub fn touch_atime(&self, ino: InodeNo) -> Result<()> {
        let cur = self.getattr(ino)?;
        let now = Timespec::now();
        let stale = cur.atime.sec + 86400 < now.sec;
        let behind = (cur.atime.sec, cur.atime.nsec) <= (cur.mtime.sec, cur.mtime.nsec)
            || (cur.atime.sec, cur.atime.nsec) <= (cur.ctime.sec, cur.ctime.nsec);
        if !(stale || behind) {
            return Ok(());
        }
        let _g = self.locks.lock(ino, Mode::Exclusive)?;
        let h = self.begin()?;
        let (buf, mut inode) = self.iget(ino)?;
        inode.atime = now;
        self.iput(&h, &buf, &inode);
        Ok(())
    }

    pub(crate) fn xattrs_of(&self, inode: &Inode) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let Some(xb) = inode.xattr_block() else { return Ok(Vec::new()) };
        let buf = self.vol.cache.get(xb, BlockType::Xattr, Cover::Inode(inode.ino))?;
        let d = buf.read();
        xattr::parse(&d, xb.get())
    }

    pub fn getxattr(&self, ino: InodeNo, name: &[u8]) -> Result<Vec<u8>> {
        let _g = self.locks.lock(ino, Mode::Shared)?;
        let (_, inode) = self.iget(ino)?;
        self.xattrs_of(&inode)?.into_iter().find(|(n, _)| n == name).map(|(_, v)| v).ok_or(FsError::NoAttr)
    }

    pub fn listxattr(&self, ino: InodeNo) -> Result<Vec<u8>> {
        let _g = self.locks.lock(ino, Mode::Shared)?;
        let (_, inode) = self.iget(ino)?;
        let mut out = Vec::new();
        for (n, _) in self.xattrs_of(&inode)? {
            out.extend_from_slice(&n);
            out.push(0);
        }
        Ok(out)
    }

    /// Sets (`Some`) or removes (`None`) an attribute. For the POSIX ACL names: the value is
    /// checked, an empty one removes the ACL, removing an ACL that is not there succeeds (as on
    /// ext4: the mode bits already say everything it would), a default ACL goes on directories
    /// only, and an access ACL sets the permission bits in the same transaction (and is not
    /// stored if it says no more than they do). What the caller's privileges change about
    /// that is `setxattr_by`'s (`setid.rs`).
    pub fn setxattr(&self, ino: InodeNo, name: &[u8], value: Option<&[u8]>, how: XattrSet) -> Result<()> {
        self.set_xattr(ino, name, value, how, None)
    }

    /// `setxattr`, for `who` if given: setting an access ACL then drops set-group-ID unless
    /// `who` may keep it.
    pub(crate) fn set_xattr(&self, ino: InodeNo, name: &[u8], value: Option<&[u8]>, how: XattrSet, who: Option<Caller>) -> Result<()> {
        if name.is_empty() || name.len() > xattr::MAX_NAME {
            return Err(if name.is_empty() { FsError::Invalid("empty attribute name") } else { FsError::Range });
        }
        let known = [&b"user."[..], b"trusted.", b"security.", acl::ACCESS, acl::DEFAULT];
        if !known.iter().any(|p| name.starts_with(p)) {
            return Err(FsError::NotSupported);
        }
        let is_acl = acl::is_acl(name);
        // An empty ACL removes it (what setfacl -b / -k send for some types).
        let value = value.filter(|v| !(is_acl && v.is_empty()));
        if let Some(v) = value {
            if v.len() > xattr::XATTR_AREA {
                return Err(FsError::AttrTooBig);
            }
        }
        let new_acl = match value {
            Some(v) if is_acl => Some(Acl::parse(v)?),
            _ => None,
        };
        // Removing or changing attributes in an existing block allocates nothing, so it works
        // on a full volume too.
        let _g = self.locks.lock(ino, Mode::Exclusive)?;
        let (buf, mut inode) = self.iget(ino)?;
        let has_block = inode.xattr_blk != 0;
        let mut plan = self.ag_plan();
        self.plan_xattr_change(&mut plan, &inode);
        let ags = self.hold_ags(plan)?;
        let h = if value.is_none() || has_block { self.begin_in(&ags)? } else { self.begin_alloc_in(0, &ags)? };
        let mut store = value;
        let mut mode_set = false;
        if let Some(a) = &new_acl {
            if name == acl::DEFAULT && !inode.is_dir() {
                return Err(FsError::NotPermitted);
            }
            if name == acl::ACCESS {
                let mut mode = (inode.mode & !0o777) | a.mode();
                if mode & libc::S_ISGID != 0 && who.is_some_and(|w| !w.may_keep_setgid(inode.gid)) {
                    mode &= !libc::S_ISGID;
                }
                inode.mode = mode;
                mode_set = true;
                if a.is_minimal() {
                    store = None;
                }
            }
        }
        let mut attrs = self.xattrs_of(&inode)?;
        let pos = attrs.iter().position(|(n, _)| n == name);
        let attrs_changed = match (store, pos) {
            (None, None) if is_acl => false,
            (None, None) => return Err(FsError::NoAttr),
            (None, Some(i)) => {
                attrs.remove(i);
                true
            }
            (Some(_), Some(_)) if how == XattrSet::Create => return Err(FsError::Exists),
            (Some(_), None) if how == XattrSet::Replace => return Err(FsError::NoAttr),
            (Some(v), Some(i)) => {
                attrs[i].1 = v.to_vec();
                true
            }
            (Some(v), None) => {
                attrs.push((name.to_vec(), v.to_vec()));
                attrs.sort();
                true
            }
        };
        if !(attrs_changed || mode_set) {
            return Ok(());
        }
        if attrs_changed {
            self.store_xattrs(&h, &mut inode, &attrs)?;
        }
        inode.ctime = Timespec::now();
        self.iput(&h, &buf, &inode);
        Ok(())
    }

    /// Replaces the attributes of inode `inode` (locked, written back by the caller) with
    /// `attrs` in `h`: the first attribute allocates the inode's attribute block, the last
    /// frees it. Fails before changing anything if they do not fit the block.
    pub(crate) fn store_xattrs(&self, h: &Handle, inode: &mut Inode, attrs: &[(Vec<u8>, Vec<u8>)]) -> Result<()> {
        if xattr::encoded_len(attrs) > xattr::XATTR_AREA {
            return Err(FsError::NoSpace);
        }
        if attrs.is_empty() {
            if let Some(xb) = inode.xattr_block() {
                h.revoke(xb);
                self.vol.alloc.free(h, xb, 1)?;
                inode.xattr_blk = 0;
                inode.blocks -= 1;
            }
            return Ok(());
        }
        let xbuf = match inode.xattr_block() {
            None => {
                let (b, _) = self.vol.alloc.alloc(h, 1, Some(inode.ino.block()), BlockState::Meta)?;
                inode.xattr_blk = b.get();
                inode.blocks += 1;
                self.vol.cache.create(b, BlockType::Xattr, Cover::Inode(inode.ino))
            }
            Some(xb) => self.vol.cache.get(xb, BlockType::Xattr, Cover::Inode(inode.ino))?,
        };
        // A statement of its own: the write guard must be gone before `xbuf` is.
        let r = xattr::serialize(attrs, &mut h.write(&xbuf));
        r
    }

    /// After a chmod of `inode` (locked, written back by the caller): its access ACL, if it has
    /// one, takes the new permission bits, in `h`.
    fn acl_follows_mode(&self, h: &Handle, inode: &mut Inode) -> Result<()> {
        let mut attrs = self.xattrs_of(inode)?;
        let Some((_, v)) = attrs.iter_mut().find(|(n, _)| n == acl::ACCESS) else { return Ok(()) };
        let mut a = Acl::parse(v)?;
        a.chmod(inode.mode);
        *v = a.encode();
        self.store_xattrs(h, inode, &attrs)
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
