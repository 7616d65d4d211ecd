//! The walk: every inode reachable from the root and the orphan directories (and, after it,
//! inodes the bitmaps mark in use that nothing names), with each block it uses.
use super::{what_is_wrong, Problem, Report};
use crate::alloc::BlockState;
use crate::btree::{Record, TreeRead};
use crate::cache::{Cover, MetaCache};
use crate::dir;
use crate::error::Result;
use crate::format::dirent::{key_hash, name_hash, DirEntry};
use crate::format::extent::Extent;
use crate::format::header::BlockType;
use crate::format::inode::{Inode, FLAG_SYSTEM, INLINE_LEN};
use crate::format::layout::Layout;
use crate::format::superblock::Superblock;
use crate::format::{BlockNo, InodeNo};
use std::collections::{BTreeMap, HashMap, HashSet};

/// Everything the walk learned, for the comparison and the repairs.
#[derive(Default)]
pub(super) struct Walk {
    /// Expected state of each block the walk found in use.
    pub(super) used: HashMap<u64, BlockState>,
    /// Names pointing at each inode.
    pub(super) refs: HashMap<u64, u32>,
    pub(super) inodes: BTreeMap<u64, Inode>,
    /// Directory entries to remove: (dir, key, why).
    pub(super) bad_entries: Vec<(u64, u64, String)>,
    /// Directory -> (subdirectories, entries) actually found.
    pub(super) dir_counts: HashMap<u64, (u32, u64)>,
    /// Blocks charged to each inode by its tree, extents and xattrs.
    pub(super) charged: HashMap<u64, u64>,
    /// Inodes reached only by scanning the bitmaps.
    pub(super) disconnected: Vec<u64>,
    /// Inodes listed in an orphan directory (unlinked but open, or mid-truncate).
    pub(super) orphan_listed: HashSet<u64>,
    /// Symlinks whose target does not match their size (their entries are in `bad_entries`).
    pub(super) cut_symlinks: Vec<u64>,
    /// Inodes whose extended attribute block cannot be read.
    pub(super) damaged_xattr: Vec<u64>,
    /// Inodes whose index tree has parts that cannot be read, with the records that can.
    pub(super) damaged_trees: Vec<(u64, Vec<Record>)>,
    /// Allocation groups whose header (`None`) or bitmap block (`Some(i)`) cannot be read.
    pub(super) damaged_alloc: Vec<(u32, Option<u64>)>,
    /// Something still referenced could not be read, so the walk may have missed blocks in
    /// use: leaked blocks must not be freed.
    pub(super) incomplete: bool,
}

/// An inode for the walk to visit.
struct Visit {
    ino: u64,
    /// The directory it was found in.
    parent: u64,
    /// The entry that names it: (directory, key); `None` for a system inode or one found by
    /// scanning the bitmaps.
    via: Option<(u64, u64)>,
}

/// The walk in progress: what it reads from, what it learns, what it reports.
struct Walker<'a> {
    cache: &'a MetaCache,
    layout: &'a Layout,
    orphan_dirs: &'a [u64],
    w: &'a mut Walk,
    rep: &'a mut Report,
    queue: Vec<Visit>,
}

/// Walks from the root and from every orphan directory.
pub(super) fn walk(cache: &MetaCache, sb: &Superblock, orphan_dirs: &[u64], w: &mut Walk, rep: &mut Report) -> Result<()> {
    let mut walker = Walker { cache, layout: &sb.layout, orphan_dirs, w, rep, queue: Vec::new() };
    for root in std::iter::once(sb.root_ino).chain(orphan_dirs.iter().copied()) {
        walker.queue.push(Visit { ino: root, parent: root, via: None });
    }
    walker.drain(&mut HashSet::new())
}

/// Walks from `candidates`, inodes the bitmaps mark in use that the walk never reached: each
/// that is a readable inode is reported as disconnected, with whatever hangs below it (a
/// disconnected directory brings its tree along).
pub(super) fn find_disconnected(
    cache: &MetaCache,
    l: &Layout,
    orphan_dirs: &[u64],
    candidates: Vec<u64>,
    w: &mut Walk,
    rep: &mut Report,
) -> Result<()> {
    let mut walker = Walker { cache, layout: l, orphan_dirs, w, rep, queue: Vec::new() };
    for ino in candidates {
        if walker.w.used.contains_key(&ino) {
            continue;
        }
        if cache.get(BlockNo(ino), BlockType::Inode, Cover::Volume).and_then(|b| Inode::decode(&b.read(), InodeNo(ino))).is_err() {
            continue; // not an inode: compare_bitmaps reports the block as leaked
        }
        walker.visit(Visit { ino, parent: ino, via: None })?;
        let mut seen: HashSet<u64> = HashSet::new();
        walker.drain(&mut seen)?;
        let nlink = walker.w.inodes.get(&ino).map(|i| i.nlink).unwrap_or(0);
        walker.rep.problems.push(Problem::Disconnected { ino, unfinished_delete: nlink == 0 });
        walker.w.disconnected.push(ino);
    }
    Ok(())
}

impl Walker<'_> {
    /// Visits everything queued (and what that queues), each inode once.
    fn drain(&mut self, seen: &mut HashSet<u64>) -> Result<()> {
        while let Some(v) = self.queue.pop() {
            if self.w.inodes.contains_key(&v.ino) || !seen.insert(v.ino) {
                continue;
            }
            self.visit(v)?;
        }
        Ok(())
    }

    /// An inode that cannot be used: its entry is marked for removal (or, for a system
    /// inode, the damage is reported), and the walk is incomplete.
    fn bad_reference(&mut self, v: &Visit, why: String) {
        self.w.incomplete = true;
        match v.via {
            Some((dir, key)) => {
                self.rep.problems.push(Problem::EntryPointsAtBadInode { dir, why: why.clone() });
                self.w.bad_entries.push((dir, key, why));
            }
            None => self.rep.problems.push(Problem::SystemInodeBad { ino: v.ino, why }),
        }
    }

    /// Checks one inode and what it points at, and queues a directory's entries.
    fn visit(&mut self, v: Visit) -> Result<()> {
        let ino = v.ino;
        if self.layout.ag_of(ino).is_none() {
            self.bad_reference(&v, format!("inode {ino} outside every allocation group"));
            return Ok(());
        }
        let read = self.cache.get(BlockNo(ino), BlockType::Inode, Cover::Volume).and_then(|buf| {
            let inode = Inode::decode(&buf.read(), InodeNo(ino))?;
            Ok((buf, inode))
        });
        let (buf, inode) = match read {
            Ok(x) => x,
            Err(e) => {
                self.bad_reference(&v, format!("damaged inode {ino} ({e})"));
                return Ok(());
            }
        };
        if let Some(prev) = self.w.used.insert(ino, BlockState::Inode) {
            self.rep.problems.push(Problem::InodeCrossLinked { ino, also: prev });
        }
        let t = TreeRead { cache: self.cache, inode_buf: &buf };
        let mut charged = 0u64;
        let records = if inode.stuffed() { Vec::new() } else { self.tree_records(&t, ino, &mut charged) };
        charged += self.xattr_block(&inode);
        if inode.is_dir() {
            self.rep.directories += 1;
            self.directory(&v, &inode, &records);
        } else if inode.is_reg() || inode.is_symlink() {
            self.rep.files += 1;
            charged += self.file_data(&inode, &records);
        } else {
            self.rep.files += 1;
        }
        if let Some(why) = crate::filesystem::symlink::target_problem(&t, &inode) {
            // Nothing to salvage without the target: a repair removes the link (as e2fsck
            // clears one), through the ordinary unlink so its blocks go with its last name.
            self.rep.problems.push(Problem::BrokenSymlink { ino, why: why.to_string() });
            if let Some((d, key)) = v.via {
                self.w.bad_entries.push((d, key, format!("symlink {ino} whose target was damaged")));
            }
            self.w.cut_symlinks.push(ino);
        }
        self.w.charged.insert(ino, charged);
        self.w.inodes.insert(ino, inode);
        Ok(())
    }

    /// Claims the inode's extended attribute block; returns the blocks it charges.
    fn xattr_block(&mut self, inode: &Inode) -> u64 {
        let (ino, blk) = (inode.ino.get(), inode.xattr_blk);
        if blk == 0 {
            return 0;
        }
        // Claimed even when unreadable: still pointed at until a repair cuts the reference.
        self.claim(blk, BlockState::Meta, ino);
        match self.cache.get(BlockNo(blk), BlockType::Xattr, Cover::Volume).and_then(|b| crate::xattr::parse(&b.read(), blk).map(|_| ())) {
            Ok(()) => 1,
            Err(e) => {
                self.rep.problems.push(Problem::XattrBlockUnreadable { ino, block: blk, why: what_is_wrong(&e) });
                self.w.damaged_xattr.push(ino);
                self.w.incomplete = true;
                0
            }
        }
    }

    /// Checks a directory's entries, counts them and the links they give, and queues them.
    fn directory(&mut self, v: &Visit, inode: &Inode, records: &[Record]) {
        let ino = inode.ino.get();
        // A removed directory still open when the volume was last closed (or crashed) is listed in
        // an orphan directory and keeps its old parent in the field: the next mount frees it.
        let orphan_listed = self.orphan_dirs.contains(&v.parent);
        if inode.flags & FLAG_SYSTEM == 0 && inode.parent.get() != v.parent && v.via.is_some() && !orphan_listed {
            self.rep.problems.push(Problem::WrongParent { dir: ino, recorded: inode.parent.get(), listed_in: v.parent });
        }
        let is_orphan_dir = self.orphan_dirs.contains(&ino);
        let mut subdirs = 0u32;
        let mut entries = 0u64;
        let found = records.iter().filter(|(k, _)| *k >= dir::FIRST_ENTRY_KEY).filter_map(|(k, v)| DirEntry::decode(*k, v));
        for e in found {
            entries += 1;
            if name_hash(&e.name) != key_hash(e.key) || dir::check_name(&e.name).is_err() {
                self.rep.problems.push(Problem::BadEntryName { dir: ino, name: String::from_utf8_lossy(&e.name).into_owned() });
                self.w.bad_entries.push((ino, e.key, "bad name".into()));
                continue;
            }
            if is_orphan_dir {
                // An orphan directory's entries are not links (see filesystem/orphans.rs).
                self.w.orphan_listed.insert(e.ino.get());
            } else {
                *self.w.refs.entry(e.ino.get()).or_default() += 1;
            }
            if e.dtype == libc::DT_DIR {
                subdirs += 1;
            }
            self.queue.push(Visit { ino: e.ino.get(), parent: ino, via: Some((ino, e.key)) });
        }
        self.w.dir_counts.insert(ino, (subdirs, entries));
    }

    /// Claims a file's or symlink's data blocks; returns the blocks they charge.
    fn file_data(&mut self, inode: &Inode, records: &[Record]) -> u64 {
        let ino = inode.ino.get();
        if inode.stuffed() {
            if inode.size > INLINE_LEN as u64 {
                self.rep.problems.push(Problem::InlineDataTooLarge { ino });
            }
            return 0;
        }
        let mut charged = 0;
        let mut last_end = 0;
        for e in records.iter().filter_map(|(k, v)| Extent::decode(*k, v)) {
            if e.lblk < last_end || e.len == 0 {
                self.rep.problems.push(Problem::BadExtent { ino, logical: e.lblk });
            }
            last_end = e.lblk + e.len;
            for b in e.pblk.get()..e.pblk.get() + e.len {
                self.claim(b, BlockState::Data, ino);
            }
            charged += e.len;
        }
        charged
    }

    /// Every record of an inode's index tree that can be read. Readable node blocks are
    /// claimed (and charged); blocks that cannot be read are claimed too while the tree points
    /// at them, and the tree is marked for rebuilding from the records.
    fn tree_records(&mut self, t: &TreeRead, ino: u64, charged: &mut u64) -> Vec<Record> {
        let sv = t.salvage();
        for &n in &sv.nodes {
            *charged += 1;
            self.claim(n, BlockState::Meta, ino);
        }
        if sv.damaged.is_empty() {
            return sv.records;
        }
        for (b, why) in &sv.damaged {
            self.rep.problems.push(Problem::TreeNodeUnreadable { ino, node: *b, why: why.to_string(), readable_records: sv.records.len() });
            if *b != ino && !sv.nodes.contains(b) {
                self.claim(*b, BlockState::Meta, ino);
            }
        }
        self.w.damaged_trees.push((ino, sv.records.clone()));
        self.w.incomplete = true;
        sv.records
    }

    /// Records `blk` as used by `owner` in state `s`, reporting a block outside the data area
    /// or one claimed twice.
    fn claim(&mut self, blk: u64, s: BlockState, owner: u64) {
        let l = self.layout;
        let in_overhead = l.ag_of(blk).map(|a| blk < l.ag_first_block(a) + l.ag_overhead() as u64).unwrap_or(true);
        if in_overhead {
            self.rep.problems.push(Problem::PointsOutsideDataArea { ino: owner, block: blk });
            return;
        }
        if let Some(prev) = self.w.used.insert(blk, s) {
            self.rep.problems.push(Problem::BlockUsedTwice { block: blk, first: prev, second: s, by: owner });
        }
    }
}
