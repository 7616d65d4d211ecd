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
mod bitmaps;
mod links;
mod problem;
mod repair;
mod walk;

pub use problem::Problem;

use crate::cache::MetaCache;
use crate::claim::claim_volume;
use crate::device::{BlockDevice, FileDevice, OpenOptions, OverlayDevice};
use crate::error::{FsError, Result};
use crate::format::slot::{SlotHeader, SlotState};
use crate::format::superblock::{Superblock, BACKUP_SUPERBLOCK_BLKNO, SUPERBLOCK_BLKNO};
use crate::format::{BlockNo, BLOCK_SIZE};
use crate::journal::read_slot;
use crate::journal::{replay, write_slot};
use crate::mkfs::orphan_dir_ino;
use crate::volume::read_superblock;
use bitmaps::{compare_bitmaps, rebuild_alloc_metadata, unreached_inodes, BitmapFix};
use links::check_links;
use repair::{apply_repairs, repair_structures};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use walk::{find_disconnected, walk, Walk};

#[derive(Debug, Default)]
pub struct Report {
    pub notes: Vec<String>,
    pub problems: Vec<Problem>,
    pub fixed: Vec<String>,
    pub files: u64,
    pub directories: u64,
    pub used_blocks: u64,
    /// After a repair: what a final check of the repaired volume still finds (`None`: no
    /// repair ran).
    pub remaining: Option<Vec<Problem>>,
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
    // Repairs write blocks without marking every one in a change map: the next snapshot must
    // read the whole volume rather than trust the marks.
    if first.sb.layout.tracks_changes() {
        force_full_snapshot(&*dev, &first.sb, &mut rep)?;
    }
    rebuild_alloc_metadata(&*dev, &first.sb, &first.walk, &mut rep)?;
    repair_structures(dev.clone(), &first, &mut rep)?;
    let second = examine(dev.clone(), true)?;
    apply_repairs(dev.clone(), &second, &mut rep)?;
    let last = examine(Arc::new(OverlayDevice::new(dev)), false)?;
    rep.remaining = Some(last.rep.problems);
    Ok(rep)
}

/// Makes the next snapshot read every chunk. A damaged state block is written anew, past
/// every mark the change maps hold (so marks stay below what nodes write next).
fn force_full_snapshot(dev: &dyn BlockDevice, sb: &Superblock, rep: &mut Report) -> Result<()> {
    use crate::format::change_map::ChangeState;
    let st = match crate::change_tracking::read_state(dev, sb) {
        Ok(st) => st,
        Err(e) => {
            let highest =
                crate::change_tracking::read_volume_marks(dev, sb).map(|m| m.into_iter().max().unwrap_or(0) as u64).unwrap_or(1 << 31);
            rep.fixed.push(format!("rewrote the change tracking state ({e})"));
            ChangeState { generation: highest + 1, full_since: 0 }
        }
    };
    crate::change_tracking::write_state(dev, sb, ChangeState { full_since: st.generation + 1, ..st })
}

/// The primary and backup superblocks agree (`backup`: the primary could not be read).
fn check_superblocks(dev: &dyn BlockDevice, sb: &Superblock, backup: bool, write: bool, rep: &mut Report) -> Result<()> {
    if backup {
        rep.problems.push(Problem::PrimarySuperblockDamaged);
        if write {
            dev.write_at(&sb.encode(SUPERBLOCK_BLKNO), BlockNo(SUPERBLOCK_BLKNO).byte_offset())?;
            dev.flush()?;
            rep.fixed.push("rewrote the primary superblock from the backup".into());
        }
    } else {
        let mut b = vec![0u8; BLOCK_SIZE];
        dev.read_at(&mut b, BlockNo(BACKUP_SUPERBLOCK_BLKNO).byte_offset())?;
        if Superblock::decode(&b, BACKUP_SUPERBLOCK_BLKNO).map(|s| s != *sb).unwrap_or(true) {
            rep.problems.push(Problem::BackupSuperblockBad);
            if write {
                dev.write_at(&sb.encode(BACKUP_SUPERBLOCK_BLKNO), BlockNo(BACKUP_SUPERBLOCK_BLKNO).byte_offset())?;
                dev.flush()?;
                rep.fixed.push("rewrote the backup superblock".into());
            }
        }
    }
    Ok(())
}

/// Every slot header readable (both copies), and every slot's committed journal replayed;
/// returns each slot's orphan directory.
fn check_slots(dev: &dyn BlockDevice, sb: &Superblock, write: bool, rep: &mut Report) -> Result<Vec<u64>> {
    let seed = sb.crc_seed();
    let l = sb.layout;
    let mut orphan_dirs = Vec::new();
    for s in 0..l.slot_count {
        let hdr = match read_slot(dev, sb, s) {
            Ok(h) => h,
            Err(e) => {
                rep.problems.push(Problem::SlotHeaderUnreadable { slot: s, why: what_is_wrong(&e) });
                let tail_seq = crate::format::inode::Timespec::now().sec as u64 * 1_000_000;
                let mut fresh = SlotHeader::clean(s, orphan_dir_ino(sb, s), tail_seq);
                if write {
                    write_slot(dev, &l, &mut fresh, seed)?;
                    write_slot(dev, &l, &mut fresh, seed)?;
                    rep.fixed.push(format!("slot {s}: wrote a fresh header (its journal is discarded)"));
                }
                orphan_dirs.push(fresh.orphan_dir);
                continue;
            }
        };
        orphan_dirs.push(hdr.orphan_dir);
        let mut hdr = hdr;
        if crate::journal::slot_copies_ok(dev, sb, s).contains(&false) {
            rep.problems.push(Problem::SlotHeaderCopyDamaged { slot: s });
            if write {
                // Two writes: one goes to each copy.
                write_slot(dev, &l, &mut hdr, seed)?;
                write_slot(dev, &l, &mut hdr, seed)?;
                rep.fixed.push(format!("slot {s}: rewrote both copies of its header"));
            }
        }
        if hdr.state == SlotState::InUse {
            let stats = replay::replay(dev, &l, &hdr, seed)?;
            let mut clean = SlotHeader { state: SlotState::Clean, journal_tail: 0, tail_seq: stats.next_seq, mmp_seq: 0, ..hdr.clone() };
            write_slot(dev, &l, &mut clean, seed)?;
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

    Ok(orphan_dirs)
}

/// Checks the whole volume. `write`: superblock copies and slot headers are rewritten on the
/// device itself (a repair); without it `dev` is a copy-on-write view.
fn examine(dev: Arc<dyn BlockDevice>, write: bool, progress: Progress) -> Result<Examined> {
    let mut rep = Report::default();
    let (sb, backup) = read_superblock(&*dev)?;
    let seed = sb.crc_seed();
    let l = sb.layout;
    check_superblocks(&*dev, &sb, backup, write, &mut rep)?;
    let orphan_dirs = check_slots(&*dev, &sb, write, &mut rep)?;
    let cache = MetaCache::new(dev.clone(), seed, 1 << 20);
    let mut w = Walk::default();
    walk(&cache, &sb, &orphan_dirs, &mut w, &mut rep)?;
    let unreached = unreached_inodes(&*dev, &l, seed, &w, progress)?;
    find_disconnected(&cache, &l, &orphan_dirs, unreached, &mut w, &mut rep)?;
    let bitmap_fixes = compare_bitmaps(&*dev, &l, seed, &mut w, &mut rep, progress)?;
    let link_fixes = check_links(&sb, &orphan_dirs, &w, &mut rep);
    rep.used_blocks = w.used.len() as u64 + l.ag_count as u64 * l.ag_overhead() as u64;
    Ok(Examined { rep, sb, walk: w, bitmap_fixes, link_fixes })
}
