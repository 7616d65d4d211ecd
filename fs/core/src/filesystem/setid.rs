//! Set-ID bits and file capabilities: what a change made for a caller takes from a file. With
//! FUSE_HANDLE_KILLPRIV_V2 the kernel leaves these rules of the VFS to the filesystem, so they
//! are kept here, decided from the caller the request came from ([`Caller`]):
//! - a write, a truncate or a fallocate (any mode: allocate, punch hole, zero range) by a
//!   caller without CAP_FSETID drops set-user-ID and group-executable set-group-ID
//!   (`file_remove_privs`, `should_remove_suid`, `file_modified`);
//! - a chown of a non-directory always drops them (`notify_change` with ATTR_KILL_SUID); a
//!   SETATTR that sets the mode itself keeps what it sets;
//! - setting an access ACL drops set-group-ID when the caller is neither in the file's group
//!   nor has CAP_FSETID (`posix_acl_update_mode`), in the transaction that sets the ACL;
//! - the file capabilities (`security.capability`) go with every write, truncate and chown,
//!   whoever makes it.
//!
//! Why mafs takes this on: without it the kernel asks for `security.capability` (a GETXATTR
//! round trip) before every write to see whether there is anything to drop; that was one request
//! in six of a small file's create-write-close (docs/benchmarks.md).
//!
//! The plain operations (`write`, `fallocate`, `setattr`, `setxattr`) apply none of these rules;
//! the `_by` ones here apply them for a caller.
use super::attr::{SetAttr, XattrSet};
use super::{Caller, FallocMode, Fs};
use crate::error::{FsError, Result};
use crate::format::inode::{Inode, Timespec};
use crate::format::InodeNo;
use crate::locks::Mode;

/// The file capabilities the kernel grants on exec; dropped with the set-ID bits.
const CAPABILITY_XATTR: &[u8] = b"security.capability";

/// The set-ID bits a write, truncate or chown removes: set-user-ID, and set-group-ID where it
/// means "run as the group" (group-executable). Set-group-ID without group execute marks
/// mandatory locking and stays, as in the VFS.
pub fn privileged_bits(mode: u32) -> u32 {
    let setgid = libc::S_ISGID | libc::S_IXGRP;
    (mode & libc::S_ISUID) | if mode & setgid == setgid { libc::S_ISGID } else { 0 }
}

impl Caller<'_> {
    /// Whether the caller keeps set-ID bits across a change of the file's data (CAP_FSETID).
    fn keeps_setid(&self) -> bool {
        self.privileges.has_cap_fsetid()
    }

    /// Whether setting an access ACL on a file of group `gid` may leave set-group-ID in place:
    /// the caller is in that group (its filesystem gid or a supplementary group) or has
    /// CAP_FSETID (`posix_acl_update_mode`).
    pub(crate) fn may_keep_setgid(&self, gid: u32) -> bool {
        self.gid == gid || self.privileges.has_cap_fsetid() || self.privileges.in_supplementary_group(gid)
    }
}

impl Fs {
    /// A write of `data` at `off` made for `who`: first takes what the write takes (above).
    pub fn write_by(&self, ino: InodeNo, off: u64, data: &[u8], who: Caller) -> Result<usize> {
        self.kill_privileges(ino, || !who.keeps_setid())?;
        self.write(ino, off, data)
    }

    /// An O_APPEND write made for `who` (see `append`).
    pub fn append_by(&self, ino: InodeNo, data: &[u8], who: Caller) -> Result<usize> {
        self.kill_privileges(ino, || !who.keeps_setid())?;
        self.append(ino, data)
    }

    /// A fallocate made for `who`: first takes what the change takes (above).
    pub fn fallocate_by(&self, ino: InodeNo, off: u64, len: u64, mode: FallocMode, who: Caller) -> Result<()> {
        self.kill_privileges(ino, || !who.keeps_setid())?;
        self.fallocate(ino, off, len, mode)
    }

    /// A SETATTR made for `who`: a chown, or a truncate, that does not also set the mode first
    /// takes what it takes (above); then `setattr` (which keeps an access ACL in step with a
    /// new mode).
    pub fn setattr_by(&self, ino: InodeNo, a: &SetAttr, who: Caller) -> Result<Inode> {
        let owner_changes = a.uid.is_some() || a.gid.is_some();
        if a.mode.is_none() && (owner_changes || a.size.is_some()) {
            self.kill_privileges(ino, || owner_changes || !who.keeps_setid())?;
        }
        self.setattr(ino, a)
    }

    /// A setxattr made for `who`: `setxattr`, and an access ACL drops set-group-ID in its
    /// transaction unless `who` may keep it (above).
    pub fn setxattr_by(&self, ino: InodeNo, name: &[u8], value: Option<&[u8]>, how: XattrSet, who: Caller) -> Result<()> {
        self.set_xattr(ino, name, value, how, Some(who))
    }

    /// Takes from a file the file capabilities, and the set-ID bits if `setid()` says so (asked
    /// only when the file has some: finding out may cost). Nothing to take, the common case,
    /// costs no transaction.
    fn kill_privileges(&self, ino: InodeNo, setid: impl FnOnce() -> bool) -> Result<()> {
        let cur = self.getattr(ino)?;
        if cur.is_dir() {
            return Ok(());
        }
        if privileged_bits(cur.mode) != 0 && setid() {
            let _g = self.locks.lock(ino, Mode::Exclusive)?;
            let h = self.begin()?;
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
}
