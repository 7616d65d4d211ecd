//! The repair passes: cut or rebuild what cannot be read, then correct bitmaps, counts and
//! links from a fresh walk, and give disconnected inodes a name. All through the journal.
use super::bitmaps::BitmapFix;
use super::Examined;
use super::{what_is_wrong, Report};
use crate::alloc::BlockState;
use crate::btree::Record;
use crate::device::BlockDevice;
use crate::dir;
use crate::error::{FsError, Result};
use crate::filesystem::Fs;
use crate::format::inode::Inode;
use crate::format::superblock::Superblock;
use crate::format::{BlockNo, InodeNo};
use crate::locks::Mode;
use crate::volume::Volume;
use std::collections::HashSet;
use std::sync::Arc;

/// Cuts references to what cannot be read, or rebuilds it from what can: a damaged extended
/// attribute block is dropped, a damaged index tree is rebuilt from its readable records, and
/// directory entries that point at nothing valid are removed. Frees nothing: the next walk
/// decides what is no longer in use.
pub(super) fn repair_structures(dev: Arc<dyn BlockDevice>, ex: &Examined, rep: &mut Report) -> Result<()> {
    let w = &ex.walk;
    let vol = Volume::open(dev, 0, "fsck", 1 << 16)?;
    let fs = Fs::without_recovery(vol);
    // Blocks in use that the bitmaps call free first: the rebuilds below allocate, and must
    // not be handed a block a file still uses.
    fix_bitmaps(&fs, &ex.sb, &ex.bitmap_fixes, false, rep)?;
    for (ino, records) in &w.damaged_trees {
        let done = fs
            .rebuild_tree(*ino, records)
            .map(|()| Some(format!("inode {ino}: rebuilt its index tree from the {} records that could be read", records.len())));
        record(rep, done, |e| format!("inode {ino}: could not rebuild its index tree ({e})"));
    }
    for &ino in &w.damaged_xattr {
        let done = fs.edit_inode(ino, |_, _, inode| {
            inode.xattr_blk = 0;
            Ok(Some(format!("inode {ino}: dropped its unreadable extended attributes")))
        });
        record(rep, done, |e| format!("inode {ino}: could not drop its extended attributes ({e})"));
    }
    for &ino in &w.cut_symlinks {
        // Its names go with the bad entries below; here it is emptied and marked deleted, so
        // the next walk finds it as an unfinished delete and frees its inode block only (the
        // block its target claimed is freed by the bitmap pass if nothing else uses it).
        let done = fs.edit_inode(ino, |t, _, inode| {
            t.rebuild(&[])?;
            inode.nlink = 0;
            inode.size = 0;
            Ok(Some(format!("symlink {ino}: removed (its target was damaged)")))
        });
        record(rep, done, |e| format!("symlink {ino}: could not remove it ({e})"));
    }
    for (d, key, why) in &w.bad_entries {
        let done = fs.edit_inode(*d, |t, blocks_delta, inode| {
            if t.remove(*key)?.is_none() {
                return Ok(None);
            }
            inode.entries = inode.entries.saturating_sub(1);
            *blocks_delta = true;
            Ok(Some(format!("directory {d}: removed the entry that pointed at {why}")))
        });
        record(rep, done, |e| format!("directory {d}: could not remove the entry that points at {why} ({e})"));
    }
    fs.close()
}

/// Records a repair step: what it fixed, or, as a note, why it could not (the final check
/// then reports what is left).
fn record(rep: &mut Report, done: Result<Option<String>>, failed: impl FnOnce(String) -> String) {
    match done {
        Ok(Some(fixed)) => rep.fixed.push(fixed),
        Ok(None) => {}
        Err(e) => rep.notes.push(failed(what_is_wrong(&e))),
    }
}

/// Applies bitmap corrections and recounts the AGs they touch. Blocks are marked free only
/// with `free_leaked` (a walk that saw everything still referenced).
fn fix_bitmaps(fs: &Fs, sb: &Superblock, fixes: &[BitmapFix], free_leaked: bool, rep: &mut Report) -> Result<()> {
    let mut recount = Vec::new();
    let mut flagged = HashSet::new();
    let mut kept = 0u64;
    let mut applied = 0u64;
    for chunk in fixes.chunks(512) {
        let h = fs.begin()?;
        for &(blk, s) in chunk {
            if sb.layout.ag_of(blk).map(|a| sb.layout.ag_first_block(a)) == Some(blk) {
                // The marker compare_bitmaps leaves for an AG whose free count was wrong.
                let a = sb.layout.ag_of(blk).unwrap_or(0);
                flagged.insert(a);
                recount.push(a);
                continue;
            }
            if s == BlockState::Free && !free_leaked {
                kept += 1;
                continue;
            }
            fs.vol.alloc.set_state(&h, BlockNo(blk), s)?;
            applied += 1;
            if let Some(a) = sb.layout.ag_of(blk) {
                recount.push(a);
            }
        }
    }
    if kept > 0 && free_leaked {
        rep.notes.push(format!("{kept} blocks that look leaked were kept"));
    }
    if applied > 0 {
        rep.fixed.push(format!("corrected the allocation bitmaps ({applied} blocks)"));
    }
    recount.sort_unstable();
    recount.dedup();
    for a in recount {
        let h = fs.begin()?;
        let (old, new) = fs.vol.alloc.recount(&h, a)?;
        if old != new || flagged.contains(&a) {
            rep.fixed.push(format!("allocation group {a}: free count {old} -> {new}"));
        }
    }
    Ok(())
}

/// Bitmaps, free counts, link and entry counts, disconnected inodes: from a walk of a volume
/// whose structures are readable again. Leaked blocks are freed only if that walk saw
/// everything still referenced.
pub(super) fn apply_repairs(dev: Arc<dyn BlockDevice>, ex: &Examined, rep: &mut Report) -> Result<()> {
    let (sb, w) = (&ex.sb, &ex.walk);
    let vol = Volume::open(dev, 0, "fsck", 1 << 16)?;
    let fs = Fs::without_recovery(vol);
    fix_bitmaps(&fs, sb, &ex.bitmap_fixes, !w.incomplete, rep)?;
    for &(ino, nlink, entries, blocks) in &ex.link_fixes {
        if w.disconnected.contains(&ino) {
            continue;
        }
        fs.edit_inode(ino, |_, _, inode| {
            inode.nlink = nlink;
            if inode.is_dir() {
                inode.entries = entries;
            }
            inode.blocks = blocks;
            Ok(())
        })?;
        rep.fixed.push(format!("inode {ino}: link count {nlink}, entries {entries}, blocks {blocks}"));
    }
    for &ino in &w.disconnected {
        let nlink = w.inodes.get(&ino).map(|i| i.nlink).unwrap_or(0);
        if nlink == 0 {
            {
                let od = fs.lock_orphans()?;
                let h = fs.begin()?;
                fs.add_orphan(&h, &od, InodeNo(ino))?;
            }
            fs.reclaim(InodeNo(ino))?;
            rep.fixed.push(format!("inode {ino}: finished its interrupted delete"));
        } else {
            fs.attach_to_lost_found(ino)?;
            rep.fixed.push(format!("inode {ino}: linked into lost+found as #{ino}"));
        }
    }
    fs.close()?;
    Ok(())
}

impl Fs {
    /// fsck: changes inode `ino` (and, through the tree writer, its index tree) in one
    /// transaction, taken after the inode lock (fs/core/src/locks.rs). If `f` sets the flag it is
    /// given, the tree's node block delta goes into the inode's block count. The inode is
    /// written back unless `f` fails.
    fn edit_inode<T>(&self, ino: u64, f: impl FnOnce(&mut crate::btree::TreeWrite, &mut bool, &mut Inode) -> Result<T>) -> Result<T> {
        let ino = InodeNo(ino);
        let _g = self.locks.lock(ino, Mode::Exclusive)?;
        let h = self.begin()?;
        let (buf, mut inode) = self.iget(ino)?;
        let mut t = self.tree_mut(&h, &buf);
        let mut count_blocks = false;
        let out = f(&mut t, &mut count_blocks, &mut inode)?;
        if count_blocks {
            inode.blocks = (inode.blocks as i64 + t.blocks_delta) as u64;
        }
        self.iput(&h, &buf, &inode);
        Ok(out)
    }

    /// fsck: replaces an inode's index tree with one holding `records` (what could be read of
    /// a damaged one), a few hundred records per transaction.
    pub(crate) fn rebuild_tree(&self, ino: u64, records: &[Record]) -> Result<()> {
        let mut chunks = records.chunks(256);
        let first = chunks.next().unwrap_or(&[]);
        for (i, chunk) in std::iter::once(first).chain(chunks).enumerate() {
            self.edit_inode(ino, |t, _, _| {
                if i == 0 {
                    return t.rebuild(chunk);
                }
                chunk.iter().try_for_each(|(k, v)| t.insert(*k, v).map(drop))
            })?;
        }
        Ok(())
    }

    /// fsck: gives a disconnected inode the name `#ino` in lost+found.
    pub(crate) fn attach_to_lost_found(&self, ino: u64) -> Result<()> {
        let (lf, ino) = (InodeNo(self.vol.sb.lost_found_ino), InodeNo(ino));
        let _pg = self.locks.lock(lf, Mode::Exclusive)?;
        let _cg = self.locks.lock(ino, Mode::Exclusive)?;
        let h = self.begin()?;
        let (pbuf, mut p) = self.iget(lf)?;
        let (cbuf, mut c) = self.iget(ino)?;
        let name = format!("#{ino}");
        if dir::lookup(&self.tree(&pbuf), name.as_bytes())?.is_some() {
            return Err(FsError::Exists);
        }
        let mut t = self.tree_mut(&h, &pbuf);
        dir::add(&mut t, name.as_bytes(), ino, dir::dtype_of_mode(c.mode))?;
        p.blocks = (p.blocks as i64 + t.blocks_delta) as u64;
        p.entries += 1;
        if c.is_dir() {
            p.nlink += 1;
            c.parent = lf;
        } else {
            c.nlink = 1;
        }
        self.iput(&h, &pbuf, &p);
        self.iput(&h, &cbuf, &c);
        Ok(())
    }
}
