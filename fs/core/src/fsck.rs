//! The checker: verifies every structure of a volume and, with repair, fixes what can be fixed.
//!
//! Order: superblocks; slot headers (a slot left in use has its committed journal replayed, as
//! a mount would); then a walk from the root and from every slot's orphan directory that
//! verifies each inode, tree node, xattr block and directory entry, counts links and records
//! which block is used for what; inodes marked in the bitmaps but not reached are picked up as
//! disconnected; last, every AG's bitmap and free count are compared with the walk.
//!
//! Without `--repair` nothing is written: the check runs on a copy-on-write view of the
//! device, where the journal replay happens in memory.
//!
//! A repair never frees a block while anything still points at it. It goes in passes:
//! allocation headers and bitmaps that cannot be read are rebuilt from the geometry and the
//! walk (the allocator needs them for the rest); references to what cannot be read are cut
//! (an xattr block) or the structure is rebuilt from what can (an index tree, from its
//! readable records); then a fresh walk of the repaired volume decides which blocks are in use,
//! and only then are leaked blocks freed, counts and links corrected and disconnected inodes
//! linked into lost+found; a last walk tells what is left (exit 1 only if nothing is). Repairs
//! run through the journal of slot 0 with the volume claimed, like any other change.
use crate::alloc::BlockState;
use crate::btree::{Record, TreeRead};
use crate::cache::MetaCache;
use crate::claim::claim_volume;
use crate::device::{BlockDevice, FileDevice, OpenOptions, OverlayDevice};
use crate::dir;
use crate::error::{FsError, Result};
use crate::filesystem::Fs;
use crate::format::ag::{bitmap_get, bitmap_set, AgHeader};
use crate::format::dirent::{key_hash, name_hash, DirEntry};
use crate::format::extent::Extent;
use crate::format::header::{self, BlockType};
use crate::format::inode::{Inode, FLAG_SYSTEM, INLINE_LEN};
use crate::format::layout::{Layout, STATES_PER_BITMAP_BLOCK};
use crate::format::slot::{SlotHeader, SlotState};
use crate::format::superblock::{Superblock, BACKUP_SUPERBLOCK_BLKNO, SUPERBLOCK_BLKNO};
use crate::format::{BlockNo, InodeNo, BLOCK_SIZE};
use crate::journal::read_slot;
use crate::journal::{replay, write_slot};
use crate::locks::Mode;
use crate::mkfs::orphan_dir_ino;
use crate::volume::{read_superblock, Volume};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, Default)]
pub struct Report {
    pub notes: Vec<String>,
    pub problems: Vec<String>,
    pub fixed: Vec<String>,
    pub files: u64,
    pub directories: u64,
    pub used_blocks: u64,
    /// After a repair: what a final check of the repaired volume still finds (`None`: no
    /// repair ran).
    pub remaining: Option<Vec<String>>,
}

impl Report {
    /// fsck(8): 0 clean, 1 errors corrected (and a check afterwards finds none), 4 errors left.
    pub fn exit_code(&self) -> i32 {
        match &self.remaining {
            _ if self.problems.is_empty() => 0,
            Some(left) if left.is_empty() => 1,
            _ => 4,
        }
    }

    pub fn summary(&self) -> String {
        let state = match (self.exit_code(), &self.remaining) {
            (0, _) => "clean".to_string(),
            (1, _) => format!("{} problems found and fixed", self.problems.len()),
            (_, Some(left)) => {
                format!("{} problems found; {} remain after the repair and need a person to look at them", self.problems.len(), left.len())
            }
            (_, None) => format!("{} problems found; run `mafs fsck --repair`", self.problems.len()),
        };
        format!("{state}: {} files, {} directories, {} blocks in use", self.files, self.directories, self.used_blocks)
    }
}

/// Everything the walk learned, for the comparison and the repairs.
#[derive(Default)]
struct Walk {
    /// Expected state of each block the walk found in use.
    used: HashMap<u64, BlockState>,
    /// Names pointing at each inode.
    refs: HashMap<u64, u32>,
    inodes: BTreeMap<u64, Inode>,
    /// Directory entries to remove: (dir, key, why).
    bad_entries: Vec<(u64, u64, String)>,
    /// Directory -> (subdirectories, entries) actually found.
    dir_counts: HashMap<u64, (u32, u64)>,
    /// Blocks charged to each inode by its tree, extents and xattrs.
    charged: HashMap<u64, u64>,
    /// Inodes reached only by scanning the bitmaps.
    disconnected: Vec<u64>,
    /// Inodes listed in an orphan directory (unlinked but open, or mid-truncate).
    orphan_listed: HashSet<u64>,
    /// Symlinks whose target does not match their size (their entries are in `bad_entries`).
    cut_symlinks: Vec<u64>,
    /// Inodes whose extended attribute block cannot be read.
    damaged_xattr: Vec<u64>,
    /// Inodes whose index tree has parts that cannot be read, with the records that can.
    damaged_trees: Vec<(u64, Vec<Record>)>,
    /// Allocation groups whose header (`None`) or bitmap block (`Some(i)`) cannot be read.
    damaged_alloc: Vec<(u32, Option<u64>)>,
    /// Something still referenced could not be read, so the walk may have missed blocks in
    /// use: leaked blocks must not be freed.
    incomplete: bool,
}

/// One full examination of a volume: the report and what the walk learned.
struct Examined {
    rep: Report,
    sb: Superblock,
    walk: Walk,
    bitmap_fixes: Vec<BitmapFix>,
    link_fixes: Vec<(u64, u32, u64, u64)>,
}

/// A problem's text: what is wrong and where, without the advice an error carries for other
/// callers ("run mafs fsck" makes no sense inside fsck).
fn what_is_wrong(e: &FsError) -> String {
    match e {
        FsError::Corrupt { block, what } => format!("block {block}: {what}"),
        other => other.to_string(),
    }
}

/// Told how far a long phase has come: (what, done, total).
pub type Progress<'a> = &'a dyn Fn(&str, u64, u64);

fn no_progress(_: &str, _: u64, _: u64) {}

/// Checks the volume at `path` with it claimed; refuses one that another host has mounted
/// (multi-mount protection) unless `override_mmp`.
pub fn check_path(path: &Path, repair: bool, override_mmp: bool, progress: Progress) -> Result<Report> {
    let claim = claim_volume(path, Duration::from_secs(15))?;
    // A check alone may be of a read-only device or image.
    let dev: Arc<dyn BlockDevice> = Arc::new(FileDevice::open(path, &OpenOptions { read_only: !repair, ..Default::default() })?);
    if !override_mmp {
        if let Ok((sb, _)) = read_superblock(&*dev) {
            let slots: Vec<u32> = (0..sb.layout.slot_count).collect();
            crate::mmp::ensure_not_live(&*dev, &sb, &slots, &crate::mmp::this_host(), "checking it")?;
        }
    }
    let r = check_with(dev, repair, progress);
    drop(claim);
    r
}

pub fn check(dev: Arc<dyn BlockDevice>, repair: bool) -> Result<Report> {
    check_with(dev, repair, &no_progress)
}

pub fn check_with(dev: Arc<dyn BlockDevice>, repair: bool, progress: Progress) -> Result<Report> {
    let examine = |dev: Arc<dyn BlockDevice>, write: bool| examine(dev, write, progress);
    if !repair {
        return Ok(examine(Arc::new(OverlayDevice::new(dev)), false)?.rep);
    }
    let mut first = examine(dev.clone(), true)?;
    let mut rep = std::mem::take(&mut first.rep);
    if rep.problems.is_empty() {
        return Ok(rep);
    }
    rebuild_alloc_metadata(&*dev, &first.sb, &first.walk, &mut rep)?;
    repair_structures(dev.clone(), &first, &mut rep)?;
    let second = examine(dev.clone(), true)?;
    apply_repairs(dev.clone(), &second, &mut rep)?;
    let last = examine(Arc::new(OverlayDevice::new(dev)), false)?;
    rep.remaining = Some(last.rep.problems);
    Ok(rep)
}

/// Checks the whole volume. `write`: superblock copies and slot headers are rewritten on the
/// device itself (a repair); without it `dev` is a copy-on-write view.
fn examine(dev: Arc<dyn BlockDevice>, write: bool, progress: Progress) -> Result<Examined> {
    let mut rep = Report::default();
    let (sb, backup) = read_superblock(&*dev)?;
    let seed = sb.crc_seed();
    if backup {
        rep.problems.push("primary superblock is damaged; the backup copy is intact".into());
        if write {
            dev.write_at(&sb.encode(SUPERBLOCK_BLKNO), BlockNo(SUPERBLOCK_BLKNO).byte_offset())?;
            dev.flush()?;
            rep.fixed.push("rewrote the primary superblock from the backup".into());
        }
    } else {
        let mut b = vec![0u8; BLOCK_SIZE];
        dev.read_at(&mut b, BlockNo(BACKUP_SUPERBLOCK_BLKNO).byte_offset())?;
        if Superblock::decode(&b, BACKUP_SUPERBLOCK_BLKNO).map(|s| s != sb).unwrap_or(true) {
            rep.problems.push("backup superblock is damaged or differs from the primary".into());
            if write {
                dev.write_at(&sb.encode(BACKUP_SUPERBLOCK_BLKNO), BlockNo(BACKUP_SUPERBLOCK_BLKNO).byte_offset())?;
                dev.flush()?;
                rep.fixed.push("rewrote the backup superblock".into());
            }
        }
    }
    let l = sb.layout;
    let mut orphan_dirs = Vec::new();
    for s in 0..l.slot_count {
        let hdr = match read_slot(&*dev, &sb, s) {
            Ok(h) => h,
            Err(e) => {
                rep.problems.push(format!("slot {s}: header unreadable ({})", what_is_wrong(&e)));
                let tail_seq = crate::format::inode::Timespec::now().sec as u64 * 1_000_000;
                let mut fresh = SlotHeader::clean(s, orphan_dir_ino(&sb, s), tail_seq);
                if write {
                    write_slot(&*dev, &l, &mut fresh, seed)?;
                    write_slot(&*dev, &l, &mut fresh, seed)?;
                    rep.fixed.push(format!("slot {s}: wrote a fresh header (its journal is discarded)"));
                }
                orphan_dirs.push(fresh.orphan_dir);
                continue;
            }
        };
        orphan_dirs.push(hdr.orphan_dir);
        let mut hdr = hdr;
        if crate::journal::slot_copies_ok(&*dev, &sb, s).contains(&false) {
            rep.problems.push(format!("slot {s}: one copy of its header is damaged (the other is intact)"));
            if write {
                // Two writes: one goes to each copy.
                write_slot(&*dev, &l, &mut hdr, seed)?;
                write_slot(&*dev, &l, &mut hdr, seed)?;
                rep.fixed.push(format!("slot {s}: rewrote both copies of its header"));
            }
        }
        if hdr.state == SlotState::InUse {
            let stats = replay::replay(&*dev, &l, &hdr, seed)?;
            let mut clean = SlotHeader { state: SlotState::Clean, journal_tail: 0, tail_seq: stats.next_seq, mmp_seq: 0, ..hdr.clone() };
            write_slot(&*dev, &l, &mut clean, seed)?;
            rep.notes.push(format!(
                "slot {s} ({}) was not unmounted cleanly: {} its {} journal transactions ({} blocks){}",
                if hdr.owner.is_empty() { "-" } else { &hdr.owner },
                if write { "replayed" } else { "checked with" },
                stats.transactions,
                stats.blocks_written,
                if write { "" } else { " replayed in memory; nothing was written (a mount or `--repair` writes them)" }
            ));
        }
    }

    let cache = MetaCache::new(dev.clone(), seed, 1 << 20);
    let mut w = Walk::default();
    walk(&cache, &sb, &orphan_dirs, &mut w, &mut rep)?;
    find_disconnected(&*dev, &cache, &l, seed, &orphan_dirs, &mut w, &mut rep, progress)?;
    let bitmap_fixes = compare_bitmaps(&*dev, &l, seed, &mut w, &mut rep, progress)?;
    let link_fixes = check_links(&sb, &orphan_dirs, &w, &mut rep);
    rep.used_blocks = w.used.len() as u64 + l.ag_count as u64 * l.ag_overhead() as u64;
    Ok(Examined { rep, sb, walk: w, bitmap_fixes, link_fixes })
}

/// An inode for the walk to visit: (inode, the directory it was found in, the entry that names
/// it: (directory, key); `None` for a system inode).
type Visit = (u64, u64, Option<(u64, u64)>);

fn walk(cache: &MetaCache, sb: &Superblock, orphan_dirs: &[u64], w: &mut Walk, rep: &mut Report) -> Result<()> {
    let mut queue: Vec<Visit> = vec![(sb.root_ino, sb.root_ino, None)];
    for &o in orphan_dirs {
        queue.push((o, o, None));
    }
    let mut seen = HashSet::new();
    while let Some((ino, parent, via)) = queue.pop() {
        if !seen.insert(ino) {
            continue;
        }
        visit(cache, sb, ino, parent, via, w, rep, &mut queue, orphan_dirs)?;
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn visit(
    cache: &MetaCache,
    sb: &Superblock,
    ino: u64,
    parent: u64,
    via: Option<(u64, u64)>,
    w: &mut Walk,
    rep: &mut Report,
    queue: &mut Vec<Visit>,
    orphan_dirs: &[u64],
) -> Result<()> {
    let l = &sb.layout;
    let bad = |w: &mut Walk, rep: &mut Report, why: String| {
        w.incomplete = true;
        if let Some((d, key)) = via {
            rep.problems.push(format!("directory {d}: entry points at {why}"));
            w.bad_entries.push((d, key, why));
        } else {
            rep.problems.push(format!("system inode {ino}: {why}"));
        }
    };
    if l.ag_of(ino).is_none() {
        bad(w, rep, format!("inode {ino} outside every allocation group"));
        return Ok(());
    }
    let buf = match cache.get(BlockNo(ino), BlockType::Inode) {
        Ok(b) => b,
        Err(e) => {
            bad(w, rep, format!("damaged inode {ino} ({e})"));
            return Ok(());
        }
    };
    let inode = match Inode::decode(&buf.read(), InodeNo(ino)) {
        Ok(i) => i,
        Err(e) => {
            bad(w, rep, format!("damaged inode {ino} ({e})"));
            return Ok(());
        }
    };
    if let Some(prev) = w.used.insert(ino, BlockState::Inode) {
        rep.problems.push(format!("inode {ino} is also used as {prev:?} by another inode (cross-linked; not repairable automatically)"));
    }
    let t = TreeRead { cache, inode_buf: &buf };
    let mut charged = 0u64;
    let records = if inode.stuffed() { Vec::new() } else { tree_records(&t, ino, w, rep, &mut charged, l) };
    if inode.xattr_blk != 0 {
        match cache
            .get(BlockNo(inode.xattr_blk), BlockType::Xattr)
            .and_then(|b| crate::xattr::parse(&b.read(), inode.xattr_blk).map(|_| ()))
        {
            Ok(()) => {
                charged += 1;
                claim(w, rep, inode.xattr_blk, BlockState::Meta, ino, l);
            }
            Err(e) => {
                rep.problems.push(format!(
                    "inode {ino}: extended attribute block {} cannot be read ({}); a repair drops the inode's extended attributes",
                    inode.xattr_blk,
                    what_is_wrong(&e)
                ));
                // Still pointed at until the repair cuts the reference: not free.
                claim(w, rep, inode.xattr_blk, BlockState::Meta, ino, l);
                w.damaged_xattr.push(ino);
                w.incomplete = true;
            }
        }
    }
    if inode.is_dir() {
        rep.directories += 1;
        if inode.flags & FLAG_SYSTEM == 0 && inode.parent.get() != parent && via.is_some() {
            rep.problems.push(format!("directory {ino}: parent field says {} but it is listed in {parent}", inode.parent));
        }
        let mut subdirs = 0u32;
        let mut entries = 0u64;
        let found = records.iter().filter(|(k, _)| *k >= dir::FIRST_ENTRY_KEY).filter_map(|(k, v)| DirEntry::decode(*k, v));
        for e in found {
            entries += 1;
            if name_hash(&e.name) != key_hash(e.key) || dir::check_name(&e.name).is_err() {
                rep.problems.push(format!(
                    "directory {ino}: entry {:?} is filed under the wrong hash or has an invalid name",
                    String::from_utf8_lossy(&e.name)
                ));
                w.bad_entries.push((ino, e.key, "bad name".into()));
                continue;
            }
            if orphan_dirs.contains(&ino) {
                // An orphan directory's entries are not links (see filesystem/orphans.rs).
                w.orphan_listed.insert(e.ino.get());
            } else {
                *w.refs.entry(e.ino.get()).or_default() += 1;
            }
            if e.dtype == libc::DT_DIR {
                subdirs += 1;
            }
            queue.push((e.ino.get(), ino, Some((ino, e.key))));
        }
        w.dir_counts.insert(ino, (subdirs, entries));
    } else if inode.is_reg() || inode.is_symlink() {
        rep.files += 1;
        if inode.stuffed() {
            if inode.size > INLINE_LEN as u64 {
                rep.problems.push(format!("inode {ino}: inline file larger than the inline area"));
            }
        } else {
            let mut last_end = 0;
            for e in records.iter().filter_map(|(k, v)| Extent::decode(*k, v)) {
                if e.lblk < last_end || e.len == 0 {
                    rep.problems.push(format!("inode {ino}: overlapping or empty extent at logical block {}", e.lblk));
                }
                last_end = e.lblk + e.len;
                for b in e.pblk.get()..e.pblk.get() + e.len {
                    claim(w, rep, b, BlockState::Data, ino, l);
                }
                charged += e.len;
            }
        }
    } else {
        rep.files += 1;
    }
    if let Some(why) = crate::filesystem::symlink::target_problem(&t, &inode) {
        // Nothing to salvage without the target: a repair removes the link (as e2fsck
        // clears one), through the ordinary unlink so its blocks go with its last name.
        rep.problems.push(format!("symlink {ino}: {why}; a repair removes it"));
        if let Some((d, key)) = via {
            w.bad_entries.push((d, key, format!("symlink {ino} whose target was damaged")));
        }
        w.cut_symlinks.push(ino);
    }
    w.charged.insert(ino, charged);
    w.inodes.insert(ino, inode);
    Ok(())
}

/// Every record of an inode's index tree that can be read. Readable node blocks are claimed
/// (and charged); blocks that cannot be read are claimed too while the tree points at them,
/// and the tree is marked for rebuilding from the records.
fn tree_records(t: &TreeRead, ino: u64, w: &mut Walk, rep: &mut Report, charged: &mut u64, l: &Layout) -> Vec<Record> {
    let sv = t.salvage();
    for &n in &sv.nodes {
        *charged += 1;
        claim(w, rep, n, BlockState::Meta, ino, l);
    }
    if sv.damaged.is_empty() {
        return sv.records;
    }
    for (b, why) in &sv.damaged {
        rep.problems.push(format!(
            "inode {ino}: index tree node {b} cannot be read ({why}); a repair rebuilds the tree from the {} records that can",
            sv.records.len()
        ));
        if *b != ino && !sv.nodes.contains(b) {
            claim(w, rep, *b, BlockState::Meta, ino, l);
        }
    }
    w.damaged_trees.push((ino, sv.records.clone()));
    w.incomplete = true;
    sv.records
}

fn claim(w: &mut Walk, rep: &mut Report, blk: u64, s: BlockState, owner: u64, l: &Layout) {
    let in_overhead = l.ag_of(blk).map(|a| blk < l.ag_first_block(a) + l.ag_overhead() as u64).unwrap_or(true);
    if in_overhead {
        rep.problems.push(format!("inode {owner}: points at block {blk}, which is not a data block of any allocation group"));
        return;
    }
    if let Some(prev) = w.used.insert(blk, s) {
        rep.problems.push(format!("block {blk} is used twice (as {prev:?} and as {s:?} by inode {owner}); not repairable automatically"));
    }
}

/// Inodes the bitmaps mark in use that the walk never reached.
#[allow(clippy::too_many_arguments)]
fn find_disconnected(
    dev: &dyn BlockDevice,
    cache: &MetaCache,
    l: &Layout,
    seed: u32,
    orphan_dirs: &[u64],
    w: &mut Walk,
    rep: &mut Report,
    progress: Progress,
) -> Result<()> {
    let mut candidates = Vec::new();
    for a in 0..l.ag_count {
        progress("looking for inodes outside the tree", a as u64, l.ag_count as u64);
        for_each_state(dev, l, seed, a, &mut |blk, s| {
            if s == BlockState::Inode && !w.used.contains_key(&blk) {
                candidates.push(blk);
            }
        })?;
    }
    for ino in candidates {
        if w.used.contains_key(&ino) {
            continue;
        }
        let ok = cache.get(BlockNo(ino), BlockType::Inode).and_then(|b| Inode::decode(&b.read(), InodeNo(ino))).is_ok();
        if !ok {
            continue; // not an inode: compare_bitmaps reports the block as leaked
        }
        let mut queue = Vec::new();
        let sb =
            Superblock { uuid: [0; 16], label: String::new(), layout: *l, root_ino: 0, lost_found_ino: 0, created_sec: 0, incompat: 0 };
        visit(cache, &sb, ino, ino, None, w, rep, &mut queue, orphan_dirs)?;
        // Whatever hangs below a disconnected directory comes along with it.
        let mut seen: HashSet<u64> = HashSet::new();
        while let Some((c, p, via)) = queue.pop() {
            if w.inodes.contains_key(&c) || !seen.insert(c) {
                continue;
            }
            visit(cache, &sb, c, p, via, w, rep, &mut queue, orphan_dirs)?;
        }
        let nlink = w.inodes.get(&ino).map(|i| i.nlink).unwrap_or(0);
        rep.problems.push(format!("inode {ino} is in use but in no directory{}", if nlink == 0 { " (an unfinished delete)" } else { "" }));
        w.disconnected.push(ino);
    }
    Ok(())
}

/// Calls `f` with the recorded state of every block of AG `a`, skipping bitmap blocks that
/// cannot be read; returns those (index within the AG's bitmap, why).
fn for_each_state(dev: &dyn BlockDevice, l: &Layout, seed: u32, a: u32, f: &mut dyn FnMut(u64, BlockState)) -> Result<Vec<(u64, FsError)>> {
    let first = l.ag_first_block(a);
    let len = l.ag_len(a) as u64;
    let mut b = vec![0u8; BLOCK_SIZE];
    let mut bad = Vec::new();
    for bi in 0..l.bitmap_blocks_per_ag as u64 {
        let blk = l.bitmap_blkno(a, bi);
        dev.read_at(&mut b, BlockNo(blk).byte_offset())?;
        if let Err(e) = header::verify(&b, BlockType::Bitmap, blk, seed) {
            bad.push((bi, e));
            continue;
        }
        let lo = bi * STATES_PER_BITMAP_BLOCK;
        for r in lo..(lo + STATES_PER_BITMAP_BLOCK).min(len) {
            f(first + r, bitmap_get(&b, r));
        }
    }
    Ok(bad)
}

/// A bitmap correction: block, state wanted.
type BitmapFix = (u64, BlockState);

fn compare_bitmaps(
    dev: &dyn BlockDevice,
    l: &Layout,
    seed: u32,
    w: &mut Walk,
    rep: &mut Report,
    progress: Progress,
) -> Result<Vec<BitmapFix>> {
    let mut fixes = Vec::new();
    let overhead = l.ag_overhead() as u64;
    let mut hb = vec![0u8; BLOCK_SIZE];
    let mut leaked = 0u64;
    let mut unmarked = 0u64;
    for a in 0..l.ag_count {
        progress("comparing allocation bitmaps", a as u64, l.ag_count as u64);
        let first = l.ag_first_block(a);
        dev.read_at(&mut hb, BlockNo(first).byte_offset())?;
        let header_ok = match header::verify(&hb, BlockType::AgHeader, first, seed) {
            Ok(()) => true,
            Err(e) => {
                rep.problems.push(format!(
                    "allocation group {a}: header cannot be read ({}); a repair rebuilds it from the volume's geometry",
                    what_is_wrong(&e)
                ));
                w.damaged_alloc.push((a, None));
                false
            }
        };
        let mut free = 0u64;
        let r = for_each_state(dev, l, seed, a, &mut |blk, s| {
            let want = if blk < first + overhead { Some(BlockState::Meta) } else { w.used.get(&blk).copied() };
            if s == BlockState::Free {
                free += 1;
            }
            match (s, want) {
                (BlockState::Free, None) => {}
                (_, None) => {
                    leaked += 1;
                    fixes.push((blk, BlockState::Free));
                }
                (BlockState::Free, Some(ws)) => {
                    unmarked += 1;
                    fixes.push((blk, ws));
                }
                (s, Some(ws)) if s != ws => {
                    unmarked += 1;
                    fixes.push((blk, ws));
                }
                _ => {}
            }
        });
        let bad_bitmaps = r?;
        for (bi, e) in &bad_bitmaps {
            rep.problems.push(format!(
                "allocation group {a}: bitmap block {bi} cannot be read ({}); a repair rebuilds it from the walk",
                what_is_wrong(e)
            ));
            w.damaged_alloc.push((a, Some(*bi)));
        }
        if !bad_bitmaps.is_empty() {
            continue;
        }
        let recorded = AgHeader::of(&hb).free();
        if header_ok && recorded != free {
            rep.problems.push(format!("allocation group {a}: header says {recorded} free blocks, bitmap has {free}"));
            fixes.push((first, BlockState::Meta)); // marker: recount this AG
        }
    }
    if leaked > 0 {
        rep.problems.push(format!("{leaked} blocks are marked in use but belong to nothing (leaked)"));
    }
    if unmarked > 0 {
        rep.problems.push(format!("{unmarked} blocks in use are marked free or with the wrong kind in the bitmaps"));
    }
    Ok(fixes)
}

/// Link counts, directory entry counts and block counts; returns inodes whose fields need
/// fixing: (ino, nlink, entries, blocks).
fn check_links(sb: &Superblock, orphan_dirs: &[u64], w: &Walk, rep: &mut Report) -> Vec<(u64, u32, u64, u64)> {
    let mut fixes = Vec::new();
    let orphans: HashSet<u64> = orphan_dirs.iter().copied().collect();
    for (&ino, inode) in &w.inodes {
        let refs = w.refs.get(&ino).copied().unwrap_or(0);
        let listed_as_orphan = inode.nlink == 0 && w.orphan_listed.contains(&ino);
        let mut want_nlink = if inode.is_dir() {
            let (sub, _) = w.dir_counts.get(&ino).copied().unwrap_or((0, 0));
            2 + sub
        } else {
            refs
        };
        if ino == sb.root_ino || orphans.contains(&ino) || w.disconnected.contains(&ino) {
            want_nlink = if inode.is_dir() { want_nlink } else { inode.nlink };
        }
        // Orphans sit in an orphan directory with no link of their own.
        if listed_as_orphan {
            want_nlink = 0;
        }
        let (_, want_entries) = w.dir_counts.get(&ino).copied().unwrap_or((0, inode.entries));
        let want_blocks = w.charged.get(&ino).copied().unwrap_or(inode.blocks);
        let mut bad = false;
        if inode.nlink != want_nlink && !(listed_as_orphan) {
            rep.problems.push(format!("inode {ino}: link count is {} but should be {want_nlink}", inode.nlink));
            bad = true;
        }
        if inode.is_dir() && inode.entries != want_entries {
            rep.problems.push(format!("directory {ino}: entry count is {} but it holds {want_entries}", inode.entries));
            bad = true;
        }
        if inode.blocks != want_blocks {
            rep.problems.push(format!("inode {ino}: block count is {} but it uses {want_blocks}", inode.blocks));
            bad = true;
        }
        if bad {
            fixes.push((ino, want_nlink, want_entries, want_blocks));
        }
    }
    fixes
}

/// Rewrites allocation group headers and bitmap blocks that cannot be read: the header from
/// the geometry, the bitmap from what the walk found in use (and the AG's own overhead). Written
/// straight to the device before anything opens the volume, since the allocator reads them.
fn rebuild_alloc_metadata(dev: &dyn BlockDevice, sb: &Superblock, w: &Walk, rep: &mut Report) -> Result<()> {
    let l = &sb.layout;
    let seed = sb.crc_seed();
    let overhead = l.ag_overhead() as u64;
    for &(a, what) in &w.damaged_alloc {
        let first = l.ag_first_block(a);
        let len = l.ag_len(a) as u64;
        let state_of = |r: u64| {
            if r < overhead || r >= len {
                BlockState::Meta
            } else {
                w.used.get(&(first + r)).copied().unwrap_or(BlockState::Free)
            }
        };
        match what {
            None => {
                let free = (overhead..len).filter(|r| state_of(*r) == BlockState::Free).count() as u64;
                dev.write_at(&AgHeader::new(a, first, len, free).sealed_block(seed), BlockNo(first).byte_offset())?;
                rep.fixed.push(format!("allocation group {a}: rebuilt its header ({free} blocks free)"));
            }
            Some(bi) => {
                let (blk, lo) = (l.bitmap_blkno(a, bi), bi * STATES_PER_BITMAP_BLOCK);
                let mut b = vec![0u8; BLOCK_SIZE];
                for r in lo..lo + STATES_PER_BITMAP_BLOCK {
                    bitmap_set(&mut b, r, state_of(r));
                }
                header::seal(&mut b, BlockType::Bitmap, blk, 0, seed);
                dev.write_at(&b, BlockNo(blk).byte_offset())?;
                rep.fixed.push(format!("allocation group {a}: rebuilt bitmap block {bi} from the blocks in use"));
            }
        }
    }
    dev.flush()
}

/// Cuts references to what cannot be read, or rebuilds it from what can: a damaged extended
/// attribute block is dropped, a damaged index tree is rebuilt from its readable records, and
/// directory entries that point at nothing valid are removed. Frees nothing: the next walk
/// decides what is no longer in use.
fn repair_structures(dev: Arc<dyn BlockDevice>, ex: &Examined, rep: &mut Report) -> Result<()> {
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
fn apply_repairs(dev: Arc<dyn BlockDevice>, ex: &Examined, rep: &mut Report) -> Result<()> {
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
            let h = fs.begin()?;
            fs.add_orphan(&h, InodeNo(ino))?;
            drop(h);
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
    /// transaction, taken before the inode lock (fs/core/src/locks.rs). If `f` sets the flag it is
    /// given, the tree's node block delta goes into the inode's block count. The inode is
    /// written back unless `f` fails.
    fn edit_inode<T>(&self, ino: u64, f: impl FnOnce(&mut crate::btree::TreeWrite, &mut bool, &mut Inode) -> Result<T>) -> Result<T> {
        let ino = InodeNo(ino);
        let h = self.begin()?;
        let _g = self.locks.lock(ino, Mode::Exclusive)?;
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
        let h = self.begin()?;
        let _pg = self.locks.lock(lf, Mode::Exclusive)?;
        let _cg = self.locks.lock(ino, Mode::Exclusive)?;
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
