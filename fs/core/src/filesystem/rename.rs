//! rename(2) and renameat2(2) with RENAME_NOREPLACE and RENAME_EXCHANGE: move a name, replace
//! the name it lands on, or swap two names, in one transaction.
//!
//! Locks (before the journal handle, as every operation): the rename lock when two directories
//! are involved (it keeps the ancestry walk stable), the parents (an ancestor before its
//! descendant, else ascending), then the moved inode and the one it replaces, ascending, and
//! this slot's orphan directory if the replaced inode loses its last name.
use super::orphans::{LinkDrop, OrphanDirLock};
use super::Fs;
use crate::btree::TreeWrite;
use crate::cache::MetaBuf;
use crate::dir::{self, DirEntry};
use crate::error::{FsError, Result};
use crate::format::inode::{Inode, Timespec};
use crate::format::InodeNo;
use crate::journal::Handle;
use crate::locks::{InodeGuard, Mode};
use std::sync::Arc;

pub const RENAME_NOREPLACE: u32 = 1;
pub const RENAME_EXCHANGE: u32 = 2;

/// A directory inode as loaded for the change: its block and its decoded fields.
struct Dir {
    buf: Arc<MetaBuf>,
    inode: Inode,
}

/// The directories a rename changes. Within one directory there is one inode to change, so
/// there is one copy of it: changes made "to the source" and "to the destination" land in the
/// same place and nothing has to be carried from one copy to the other.
enum Parents {
    One(Dir),
    Two { src: Dir, dst: Dir },
}

impl Parents {
    fn src(&mut self) -> &mut Dir {
        match self {
            Parents::One(d) => d,
            Parents::Two { src, .. } => src,
        }
    }

    fn dst(&mut self) -> &mut Dir {
        match self {
            Parents::One(d) => d,
            Parents::Two { dst, .. } => dst,
        }
    }

    /// A directory moving from `src` to `dst` changes its `..` and both link counts.
    fn reparent(&mut self, child: &mut Inode) {
        if let Parents::Two { src, dst } = self {
            if child.is_dir() {
                child.parent = dst.inode.ino;
                src.inode.nlink -= 1;
                dst.inode.nlink += 1;
            }
        }
    }

    fn each(&mut self) -> Vec<&mut Dir> {
        match self {
            Parents::One(d) => vec![d],
            Parents::Two { src, dst } => vec![src, dst],
        }
    }
}

/// An inode a rename changes besides the parents.
struct Node {
    buf: Arc<MetaBuf>,
    inode: Inode,
}

/// The inode a rename replaces, with what losing its name does to it (planned before the
/// transaction) and the orphan directory's lock if that lists it.
struct Victim<'a> {
    node: Node,
    plan: LinkDrop,
    orphans: Option<&'a OrphanDirLock>,
}

fn check_request(sname: &[u8], dname: &[u8], flags: u32) -> Result<()> {
    dir::check_name(dname)?;
    if sname.len() > crate::format::MAX_NAME_LEN {
        return Err(FsError::NameTooLong);
    }
    if flags & !(RENAME_NOREPLACE | RENAME_EXCHANGE) != 0 || flags == (RENAME_NOREPLACE | RENAME_EXCHANGE) {
        return Err(FsError::Invalid("unsupported rename flags"));
    }
    Ok(())
}

/// Refuses to move a directory into itself, before the children are locked: a child that is
/// an ancestor of the other parent would be locked after its own descendant, against the lock
/// order. The chains are the parents' ancestries (`Fs::ancestry`).
fn refuse_loops(s_chain: &[InodeNo], d_chain: &[InodeNo], se: &DirEntry, de: Option<&DirEntry>, flags: u32) -> Result<()> {
    if d_chain.contains(&se.ino) {
        return Err(FsError::Invalid("cannot move a directory into itself"));
    }
    if let Some(d) = de {
        if s_chain.contains(&d.ino) {
            return Err(if flags & RENAME_EXCHANGE != 0 {
                FsError::Invalid("cannot move a directory into itself")
            } else {
                FsError::NotEmpty
            });
        }
    }
    Ok(())
}

impl Fs {
    pub fn rename(&self, sp: InodeNo, sname: &[u8], dp: InodeNo, dname: &[u8], flags: u32) -> Result<()> {
        check_request(sname, dname, flags)?;
        // The replaced inode is reclaimed after the rename's locks and handle are gone.
        if let Some(replaced) = self.rename_in_transaction(sp, sname, dp, dname, flags)? {
            self.reclaim_if_unused(replaced)?;
        }
        Ok(())
    }

    /// The rename itself; returns the replaced inode if it lost its last name but could not be
    /// freed on the spot (open, or too big for one transaction).
    fn rename_in_transaction(&self, sp: InodeNo, sname: &[u8], dp: InodeNo, dname: &[u8], flags: u32) -> Result<Option<InodeNo>> {
        // No blanket space reservation: a rename allocates only if the new name splits a
        // directory node, checked below before anything changes, so a full volume still renames.
        // Between two directories: the rename lock (the cluster's, then this node's), and the
        // ancestry of both parents, read before any inode is locked.
        let (_cluster_rename, _rename) = if sp != dp {
            let cluster = self.locks.cluster().hold_rename()?;
            (Some(cluster), Some(self.rename_lock.lock()))
        } else {
            (None, None)
        };
        let (s_chain, d_chain) = if sp != dp { (self.ancestry(sp)?, self.ancestry(dp)?) } else { (Vec::new(), Vec::new()) };
        let _parent_locks = self.lock_rename_parents(sp, dp, &s_chain, &d_chain)?;
        let mut parents = self.load_parents(sp, dp)?;
        let se = self.entry(&parents.src().buf, sname)?.ok_or(FsError::NotFound)?;
        let de = self.entry(&parents.dst().buf, dname)?;
        if de.as_ref().is_some_and(|d| d.ino == se.ino) {
            return Ok(None); // both names are links to one inode: nothing to do (POSIX)
        }
        if sp != dp {
            refuse_loops(&s_chain, &d_chain, &se, de.as_ref(), flags)?;
        }
        if de.is_none() {
            self.ensure_space_for_entry(&parents.dst().buf, dname)?;
        }
        // The children are now unrelated to each other and to the other parent.
        let children: Vec<InodeNo> = std::iter::once(se.ino).chain(de.as_ref().map(|d| d.ino)).collect();
        let _child_locks = self.locks.lock_many(&children)?;
        let (buf, inode) = self.iget(se.ino)?;
        let mut moved = Node { buf, inode };
        let target = match &de {
            Some(d) => Some((d.clone(), self.iget(d.ino)?)),
            None => None,
        };
        // What the replaced inode's lost name does to it, decided under its lock.
        let plan = match &target {
            Some((_, (buf, inode))) if flags & RENAME_EXCHANGE == 0 => self.plan_link_drop(buf, inode)?,
            _ => LinkDrop::Keeps,
        };
        let orphans = self.orphans_for(plan)?;
        // The source entry's removal may free nodes of its directory; a new or longer entry
        // may split the destination's; the replaced inode may go.
        let mut ag_plan = self.ag_plan();
        self.plan_key_removal(&mut ag_plan, &parents.src().buf, se.key)?;
        ag_plan.allocates(2 * super::METADATA_OP_BLOCKS);
        if let Some((_, (buf, inode))) = &target {
            self.plan_link_drop_ags(&mut ag_plan, plan, buf, inode)?;
        }
        let ags = self.hold_ags(ag_plan)?;
        let h = self.begin_in(&ags)?;
        let now = Timespec::now();
        let left_over = match target {
            None if flags & RENAME_EXCHANGE != 0 => return Err(FsError::NotFound),
            Some(_) if flags & RENAME_NOREPLACE != 0 => return Err(FsError::Exists),
            Some((de, (buf, inode))) if flags & RENAME_EXCHANGE != 0 => {
                self.exchange(&h, &mut parents, (&se, sname, &mut moved), (&de, dname, Node { buf, inode }), now)?;
                None
            }
            Some((de, (buf, inode))) => {
                let victim = Victim { node: Node { buf, inode }, plan, orphans: orphans.as_ref() };
                let replaced = self.replace_target(&h, &mut parents, &moved.inode, &de, dname, victim, now)?;
                self.remove_source(&h, &mut parents, &se, &mut moved.inode)?;
                replaced
            }
            None => {
                self.edit_tree(&h, parents.dst(), |t| dir::add(t, dname, moved.inode.ino, dir::dtype_of_mode(moved.inode.mode)))?;
                parents.dst().inode.entries += 1;
                self.remove_source(&h, &mut parents, &se, &mut moved.inode)?;
                None
            }
        };
        moved.inode.ctime = now;
        self.iput(&h, &moved.buf, &moved.inode);
        for d in parents.each() {
            d.inode.mtime = now;
            d.inode.ctime = now;
            self.iput(&h, &d.buf, &d.inode);
        }
        Ok(left_over)
    }

    /// The rename lock is the caller's; this takes the parents' locks in the documented order,
    /// from their ancestries (`Fs::ancestry`; empty within one directory).
    fn lock_rename_parents(&self, sp: InodeNo, dp: InodeNo, s_chain: &[InodeNo], d_chain: &[InodeNo]) -> Result<Vec<InodeGuard>> {
        // Parents: an ancestor before its descendant (parent-before-child), else ascending.
        let order = if sp == dp {
            vec![sp]
        } else if d_chain.contains(&sp) {
            vec![sp, dp]
        } else if s_chain.contains(&dp) {
            vec![dp, sp]
        } else {
            vec![sp.min(dp), sp.max(dp)]
        };
        order.into_iter().map(|p| self.locks.lock(p, Mode::Exclusive)).collect()
    }

    fn load_parents(&self, sp: InodeNo, dp: InodeNo) -> Result<Parents> {
        let load = |ino| -> Result<Dir> {
            let (buf, inode) = self.iget(ino)?;
            if !inode.is_dir() {
                return Err(FsError::NotDir);
            }
            Ok(Dir { buf, inode })
        };
        Ok(if sp == dp { Parents::One(load(sp)?) } else { Parents::Two { src: load(sp)?, dst: load(dp)? } })
    }

    /// Changes `d`'s entry tree and charges `d` for the tree blocks that came or went.
    fn edit_tree<T>(&self, h: &Handle, d: &mut Dir, f: impl FnOnce(&mut TreeWrite) -> Result<T>) -> Result<T> {
        let mut t = self.tree_mut(h, &d.buf);
        let r = f(&mut t)?;
        d.inode.blocks = (d.inode.blocks as i64 + t.blocks_delta) as u64;
        Ok(r)
    }

    /// RENAME_EXCHANGE: each name now points at the other inode.
    fn exchange(
        &self,
        h: &Handle,
        parents: &mut Parents,
        (se, sname, moved): (&DirEntry, &[u8], &mut Node),
        (de, dname, mut other): (&DirEntry, &[u8], Node),
        now: Timespec,
    ) -> Result<()> {
        self.edit_tree(h, parents.src(), |t| dir::replace(t, se.key, sname, other.inode.ino, dir::dtype_of_mode(other.inode.mode)))?;
        self.edit_tree(h, parents.dst(), |t| dir::replace(t, de.key, dname, moved.inode.ino, dir::dtype_of_mode(moved.inode.mode)))?;
        parents.reparent(&mut moved.inode);
        // The other inode moves the opposite way.
        if let Parents::Two { src, dst } = parents {
            if other.inode.is_dir() {
                other.inode.parent = src.inode.ino;
                dst.inode.nlink -= 1;
                src.inode.nlink += 1;
            }
        }
        other.inode.ctime = now;
        self.iput(h, &other.buf, &other.inode);
        Ok(())
    }

    /// Points the destination name at the moved inode and drops the replaced inode's link.
    /// Returns the replaced inode if it still has to be reclaimed later.
    #[allow(clippy::too_many_arguments)] // one rename's pieces; a struct would only rename them
    fn replace_target(
        &self,
        h: &Handle,
        parents: &mut Parents,
        moved: &Inode,
        de: &DirEntry,
        dname: &[u8],
        victim: Victim,
        now: Timespec,
    ) -> Result<Option<InodeNo>> {
        let Victim { node: mut victim, plan, orphans } = victim;
        if moved.is_dir() {
            if !victim.inode.is_dir() {
                return Err(FsError::NotDir);
            }
            if victim.inode.entries > 0 {
                return Err(FsError::NotEmpty);
            }
        } else if victim.inode.is_dir() {
            return Err(FsError::IsDir);
        }
        let dst = parents.dst();
        self.edit_tree(h, dst, |t| dir::replace(t, de.key, dname, moved.ino, dir::dtype_of_mode(moved.mode)))?;
        // The destination keeps its entry count: one name now stands where another stood.
        if victim.inode.is_dir() {
            dst.inode.nlink -= 1;
        }
        if self.drop_link(h, &victim.buf, &mut victim.inode, now, plan, orphans)? {
            return Ok(None); // freed on the spot
        }
        self.iput(h, &victim.buf, &victim.inode);
        Ok(Some(victim.inode.ino))
    }

    /// Removes the source name; the moved inode's new name is already in place.
    fn remove_source(&self, h: &Handle, parents: &mut Parents, se: &DirEntry, moved: &mut Inode) -> Result<()> {
        let src = parents.src();
        self.edit_tree(h, src, |t| dir::remove(t, se.key))?;
        src.inode.entries -= 1;
        parents.reparent(moved);
        Ok(())
    }
}
