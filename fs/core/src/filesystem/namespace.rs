//! Names: lookup, create (files, directories, symlinks, device nodes, fifos, sockets), link,
//! unlink, rmdir, readdir and readlink (rename has its own module).
use super::ag_plan::AgPlan;
use super::orphans::{LinkDrop, OrphanDirLock};
use super::{acl, Caller, Fs, MAX_LINKS};
use crate::cache::Cover;
use crate::dir::{self, DirEntry};
use crate::error::{FsError, Result};
use crate::format::header::BlockType;
use crate::format::inode::{Inode, Timespec, FLAG_STUFFED, FLAG_SYSTEM};
use crate::format::{InodeNo, BLOCK_SIZE};
use crate::journal::Handle;
use crate::locks::Mode;

/// Told each directory entry by `readdir`: (inode, file type, name, cookie of the next entry);
/// returns false to stop.
pub type ReaddirFn<'a> = dyn FnMut(InodeNo, u8, &[u8], u64) -> bool + 'a;

/// What to create.
pub struct NewNode<'a> {
    pub mode: u32,
    pub rdev: u64,
    pub symlink_target: Option<&'a [u8]>,
}

impl Fs {
    pub fn lookup(&self, parent: InodeNo, name: &[u8]) -> Result<Inode> {
        if name.len() > crate::format::MAX_NAME_LEN {
            return Err(FsError::NameTooLong);
        }
        let ino = {
            let _g = self.locks.lock(parent, Mode::Shared)?;
            let (pbuf, p) = self.iget(parent)?;
            if !p.is_dir() {
                return Err(FsError::NotDir);
            }
            match name {
                b"." => parent,
                b".." => p.parent,
                _ => dir::lookup(&self.tree(&pbuf), name)?.ok_or(FsError::NotFound)?.ino,
            }
        };
        let _g = self.locks.lock(ino, Mode::Shared)?;
        Ok(self.iget(ino)?.1)
    }

    /// Looks `name` up in a directory whose lock the caller holds.
    pub(super) fn entry(&self, pbuf: &std::sync::Arc<crate::cache::MetaBuf>, name: &[u8]) -> Result<Option<DirEntry>> {
        dir::lookup(&self.tree(pbuf), name)
    }

    /// Creates `name` in `parent`, owned by `who`. `node.mode` is the mode asked for: the
    /// directory's default ACL, or else `who`'s umask, decides what the node gets, and the ACLs
    /// it inherits are stored in the transaction that creates it (`acl::inherit`).
    pub fn create(&self, parent: InodeNo, name: &[u8], node: NewNode, who: Caller) -> Result<Inode> {
        check_new_node(name, &node)?;
        // Before any lock: it may commit, to make what a delete freed available.
        self.ensure_room_for(0)?;
        if let Some(target) = node.symlink_target {
            self.ensure_room_for_target(target)?;
        }
        let _pg = self.locks.lock(parent, Mode::Exclusive)?;
        let (pbuf, mut p) = self.iget(parent)?;
        let is_dir = node.mode & libc::S_IFMT == libc::S_IFDIR;
        self.check_parent_takes(&pbuf, &p, name, is_dir)?;
        let default_acl = self.xattrs_of(&p)?.into_iter().find(|(n, _)| n == acl::DEFAULT).map(|(_, v)| v);
        let inherited = acl::inherit(default_acl.as_deref(), node.mode, who.umask)?;
        // The new inode's number before the handle, so that it is locked before the handle
        // too. Held until the inode is whole: a late reclaim of the inode that last had this
        // number must not read it half made.
        let mut plan = self.ag_plan();
        plan.allocates(super::METADATA_OP_BLOCKS + u64::from(node.symlink_target.is_some()));
        let ags = self.hold_ags(plan)?;
        let new = self.new_inode_number(parent, &ags)?;
        let ino = new.ino();
        let _ig = self.locks.lock(ino, Mode::Exclusive)?;
        let h = self.begin_in(&ags)?;
        new.claim(&h)?;
        let buf = self.vol.cache.create(ino.block(), BlockType::Inode, Cover::Inode(ino));
        let now = Timespec::now();
        let mut inode = new_inode(ino, &p, &node, inherited.mode, &who, now);
        // With the inode, in this transaction: a node must never exist without the ACLs its
        // directory prescribes, nor a name point at a link whose target could not be stored.
        let filled = self.store_xattrs(&h, &mut inode, &inherited.xattrs).and_then(|()| match node.symlink_target {
            Some(target) => self.store_target(&h, &buf, &mut inode, target),
            None => Ok(()),
        });
        if let Err(e) = filled {
            self.drop_new_inode(&h, ino)?;
            return Err(e);
        }
        self.iput(&h, &buf, &inode);
        let mut t = self.tree_mut(&h, &pbuf);
        dir::add(&mut t, name, ino, dir::dtype_of_mode(inode.mode))?;
        p.blocks = (p.blocks as i64 + t.blocks_delta) as u64;
        p.entries += 1;
        if is_dir {
            p.nlink += 1;
        }
        p.mtime = now;
        p.ctime = now;
        self.iput(&h, &pbuf, &p);
        if self.locks.cluster().shares_inodes() {
            // Bounded: past it, new inodes take their open locks at their first open, as any.
            let mut made = self.made_here.lock();
            if made.len() < super::MADE_HERE_MAX {
                made.insert(ino);
            }
        }
        Ok(inode)
    }

    /// The parent (locked by the caller) is a live directory without `name` that can take one
    /// more entry.
    fn check_parent_takes(&self, pbuf: &std::sync::Arc<crate::cache::MetaBuf>, p: &Inode, name: &[u8], is_dir: bool) -> Result<()> {
        if !p.is_dir() {
            return Err(FsError::NotDir);
        }
        if p.nlink == 0 {
            return Err(FsError::NotFound);
        }
        if self.entry(pbuf, name)?.is_some() {
            return Err(FsError::Exists);
        }
        if is_dir && p.nlink >= MAX_LINKS {
            return Err(FsError::TooManyLinks);
        }
        Ok(())
    }

    pub fn readlink(&self, ino: InodeNo) -> Result<Vec<u8>> {
        let inode = self.getattr(ino)?;
        if !inode.is_symlink() {
            return Err(FsError::Invalid("not a symbolic link"));
        }
        self.read(ino, 0, inode.size as u32)
    }

    /// ENOSPC, before anything changes, if adding `name` to the directory could need more
    /// blocks than are available (an operation must not fail halfway).
    pub(super) fn ensure_space_for_entry(&self, dbuf: &std::sync::Arc<crate::cache::MetaBuf>, name: &[u8]) -> Result<()> {
        if self.vol.alloc.is_shared() {
            // Counted under the groups' locks instead (`hold_ags` wants room for an operation's
            // metadata).
            return Ok(());
        }
        let need = self.tree(dbuf).insert_need(crate::format::dirent::value_len(name))?;
        if self.vol.alloc.available() < need {
            return Err(FsError::NoSpace);
        }
        Ok(())
    }

    pub fn link(&self, ino: InodeNo, parent: InodeNo, name: &[u8]) -> Result<Inode> {
        dir::check_name(name)?;
        if ino == parent {
            return Err(FsError::NotPermitted); // a directory cannot be hard-linked
        }
        let _pg = self.locks.lock(parent, Mode::Exclusive)?;
        let _ig = self.locks.lock(ino, Mode::Exclusive)?;
        let (pbuf, mut p) = self.iget(parent)?;
        let (buf, mut inode) = self.iget(ino)?;
        if !p.is_dir() {
            return Err(FsError::NotDir);
        }
        if inode.is_dir() {
            return Err(FsError::NotPermitted);
        }
        if inode.nlink == 0 || p.nlink == 0 {
            return Err(FsError::NotFound);
        }
        if inode.nlink >= MAX_LINKS {
            return Err(FsError::TooManyLinks);
        }
        if self.entry(&pbuf, name)?.is_some() {
            return Err(FsError::Exists);
        }
        self.ensure_space_for_entry(&pbuf, name)?;
        let mut plan = self.ag_plan();
        plan.allocates(super::METADATA_OP_BLOCKS);
        let ags = self.hold_ags(plan)?;
        let h = self.begin_in(&ags)?;
        let mut t = self.tree_mut(&h, &pbuf);
        dir::add(&mut t, name, ino, dir::dtype_of_mode(inode.mode))?;
        p.blocks = (p.blocks as i64 + t.blocks_delta) as u64;
        let now = Timespec::now();
        p.entries += 1;
        p.mtime = now;
        p.ctime = now;
        inode.nlink += 1;
        inode.ctime = now;
        self.iput(&h, &pbuf, &p);
        self.iput(&h, &buf, &inode);
        Ok(inode)
    }

    /// Drops one link of `child` (its lock held) as `plan` says (`plan_link_drop`, made under
    /// the same lock; `orphans` is this slot's orphan directory, locked if the plan lists the
    /// inode). Returns true if the inode is gone (the caller must not write it back).
    pub(super) fn drop_link(
        &self,
        h: &Handle,
        cbuf: &std::sync::Arc<crate::cache::MetaBuf>,
        child: &mut Inode,
        now: Timespec,
        plan: LinkDrop,
        orphans: Option<&OrphanDirLock>,
    ) -> Result<bool> {
        child.nlink = if child.is_dir() { 0 } else { child.nlink.saturating_sub(1) };
        child.ctime = now;
        match plan {
            LinkDrop::Keeps => Ok(false),
            LinkDrop::FreesNow => self.free_inode_now(h, cbuf, child).map(|()| true),
            LinkDrop::Lists => {
                let od = orphans.ok_or(FsError::Invalid("an unlinked inode to list without its orphan directory's lock"))?;
                self.add_orphan(h, od, child.ino)?;
                Ok(false)
            }
        }
    }

    /// What dropping a link as `plan` says does to the allocator: freeing the inode frees all
    /// its blocks; listing it adds an entry to the orphan directory.
    pub(super) fn plan_link_drop_ags(
        &self,
        ags: &mut AgPlan,
        plan: LinkDrop,
        cbuf: &std::sync::Arc<crate::cache::MetaBuf>,
        c: &Inode,
    ) -> Result<()> {
        match plan {
            LinkDrop::Keeps => Ok(()),
            LinkDrop::FreesNow => self.plan_data_frees(ags, cbuf, c, 0, u64::MAX >> 16, true),
            LinkDrop::Lists => {
                ags.allocates(super::METADATA_OP_BLOCKS);
                Ok(())
            }
        }
    }

    /// The orphan directory's lock if `plan` lists an inode there.
    pub(super) fn orphans_for(&self, plan: LinkDrop) -> Result<Option<OrphanDirLock>> {
        match plan {
            LinkDrop::Lists => self.lock_orphans().map(Some),
            _ => Ok(None),
        }
    }

    pub fn unlink(&self, parent: InodeNo, name: &[u8], rmdir: bool) -> Result<()> {
        if name.len() > crate::format::MAX_NAME_LEN {
            return Err(FsError::NameTooLong);
        }
        let victim = {
            let _pg = self.locks.lock(parent, Mode::Exclusive)?;
            let (pbuf, mut p) = self.iget(parent)?;
            if !p.is_dir() {
                return Err(FsError::NotDir);
            }
            let e = self.entry(&pbuf, name)?.ok_or(FsError::NotFound)?;
            let _cg = self.locks.lock(e.ino, Mode::Exclusive)?;
            let (cbuf, mut c) = self.iget(e.ino)?;
            if rmdir {
                if !c.is_dir() {
                    return Err(FsError::NotDir);
                }
                if c.entries > 0 {
                    return Err(FsError::NotEmpty);
                }
            } else if c.is_dir() {
                return Err(FsError::IsDir);
            }
            let plan = self.plan_link_drop(&cbuf, &c)?;
            let orphans = self.orphans_for(plan)?;
            let mut ag_plan = self.ag_plan();
            self.plan_key_removal(&mut ag_plan, &pbuf, e.key)?;
            self.plan_link_drop_ags(&mut ag_plan, plan, &cbuf, &c)?;
            let ags = self.hold_ags(ag_plan)?;
            let h = self.begin_in(&ags)?;
            let mut t = self.tree_mut(&h, &pbuf);
            dir::remove(&mut t, e.key)?;
            p.blocks = (p.blocks as i64 + t.blocks_delta) as u64;
            let now = Timespec::now();
            p.entries -= 1;
            if c.is_dir() {
                p.nlink -= 1;
            }
            p.mtime = now;
            p.ctime = now;
            let gone = self.drop_link(&h, &cbuf, &mut c, now, plan, orphans.as_ref())?;
            self.iput(&h, &pbuf, &p);
            if !gone {
                self.iput(&h, &cbuf, &c);
            }
            (!gone).then_some(e.ino)
        };
        match victim {
            Some(ino) => self.reclaim_if_unused(ino),
            None => Ok(()),
        }
    }

    /// Directory `dir` and its ancestors up to the root, each parent link read under the
    /// directory's lock. Called with the rename lock held and no inode lock: parent links
    /// change only under the rename lock, so the chain stays true while it is held, and taking
    /// the ancestors' locks here, before the rename locks its parents, keeps the
    /// parent-before-child order (locking upwards while holding a directory would invert it).
    pub(super) fn ancestry(&self, mut dir: InodeNo) -> Result<Vec<InodeNo>> {
        let root = self.root();
        let mut chain = vec![dir];
        // A chain longer than the volume has blocks can only be a loop (corruption).
        for _ in 0..self.vol.sb.layout.total_blocks {
            if dir == root {
                return Ok(chain);
            }
            dir = {
                let _g = self.locks.lock(dir, Mode::Shared)?;
                self.iget(dir)?.1.parent
            };
            chain.push(dir);
        }
        Err(FsError::corrupt(dir, "directory parent chain does not reach the root"))
    }

    /// Directory entries after readdir cookie `offset` (0 starts; `.` is 1, `..` is 2, an
    /// entry's cookie is its key + 1), until `f` returns false. System inodes are hidden.
    pub fn readdir(&self, ino: InodeNo, offset: u64, f: &mut ReaddirFn) -> Result<()> {
        let _g = self.locks.lock(ino, Mode::Shared)?;
        let (buf, inode) = self.iget(ino)?;
        if !inode.is_dir() {
            return Err(FsError::NotDir);
        }
        if inode.flags & FLAG_SYSTEM != 0 {
            return Err(FsError::NotFound);
        }
        if offset < 1 && !f(ino, libc::DT_DIR, b".", 1) {
            return Ok(());
        }
        if offset < 2 && !f(inode.parent, libc::DT_DIR, b"..", 2) {
            return Ok(());
        }
        let from = if offset <= 2 { 0 } else { offset };
        dir::list(&self.tree(&buf), from, &mut |e| f(e.ino, e.dtype, &e.name, e.key + 1))
    }
}

/// What `create` can refuse before it touches anything: the name, the file type, a symlink's
/// target.
fn check_new_node(name: &[u8], node: &NewNode) -> Result<()> {
    dir::check_name(name)?;
    let ftype = node.mode & libc::S_IFMT;
    if !matches!(ftype, libc::S_IFREG | libc::S_IFDIR | libc::S_IFLNK | libc::S_IFIFO | libc::S_IFCHR | libc::S_IFBLK | libc::S_IFSOCK) {
        return Err(FsError::Invalid("unknown file type"));
    }
    if let Some(target) = node.symlink_target {
        super::symlink::check_target(target)?;
    }
    Ok(())
}

/// A new inode's fields: `mode` as inherited, owned by `who` (the group by BSD rules under a
/// set-group-ID directory, as on ext4).
fn new_inode(ino: InodeNo, p: &Inode, node: &NewNode, mode: u32, who: &Caller, now: Timespec) -> Inode {
    let ftype = node.mode & libc::S_IFMT;
    let is_dir = ftype == libc::S_IFDIR;
    let (mut mode, mut gid) = (mode, who.gid);
    if p.mode & libc::S_ISGID != 0 {
        gid = p.gid;
        if is_dir {
            mode |= libc::S_ISGID;
        }
    }
    Inode {
        ino,
        mode,
        uid: who.uid,
        gid,
        flags: if ftype == libc::S_IFREG || ftype == libc::S_IFLNK { FLAG_STUFFED } else { 0 },
        nlink: if is_dir { 2 } else { 1 },
        size: if is_dir { BLOCK_SIZE as u64 } else { 0 },
        atime: now,
        mtime: now,
        ctime: now,
        crtime: now,
        rdev: node.rdev,
        // Random, so a handle of a file deleted from this number goes stale (export.rs).
        generation: super::export::new_generation(),
        parent: if is_dir { p.ino } else { InodeNo(0) },
        ..Default::default()
    }
}
