//! Allocation bitmaps and group headers against what the walk found in use.
use super::walk::Walk;
use super::{what_is_wrong, Problem, Progress, Report};
use crate::alloc::BlockState;
use crate::device::BlockDevice;
use crate::error::{FsError, Result};
use crate::format::ag::{bitmap_get, bitmap_set, AgHeader};
use crate::format::header::{self, BlockType};
use crate::format::layout::{Layout, STATES_PER_BITMAP_BLOCK};
use crate::format::superblock::Superblock;
use crate::format::{BlockNo, BLOCK_SIZE};

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

/// Inodes the bitmaps mark in use that the walk has not reached.
pub(super) fn unreached_inodes(dev: &dyn BlockDevice, l: &Layout, seed: u32, w: &Walk, progress: Progress) -> Result<Vec<u64>> {
    let mut candidates = Vec::new();
    for a in 0..l.ag_count {
        progress("looking for inodes outside the tree", a as u64, l.ag_count as u64);
        for_each_state(dev, l, seed, a, &mut |blk, s| {
            if s == BlockState::Inode && !w.used.contains_key(&blk) {
                candidates.push(blk);
            }
        })?;
    }
    Ok(candidates)
}

/// A bitmap correction: block, state wanted.
pub(super) type BitmapFix = (u64, BlockState);

pub(super) fn compare_bitmaps(
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
                rep.problems.push(Problem::AgHeaderUnreadable { ag: a, why: what_is_wrong(&e) });
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
            rep.problems.push(Problem::BitmapUnreadable { ag: a, index: *bi, why: what_is_wrong(e) });
            w.damaged_alloc.push((a, Some(*bi)));
        }
        if !bad_bitmaps.is_empty() {
            continue;
        }
        let recorded = AgHeader::of(&hb).free();
        if header_ok && recorded != free {
            rep.problems.push(Problem::AgFreeCount { ag: a, recorded, counted: free });
            fixes.push((first, BlockState::Meta)); // marker: recount this AG
        }
    }
    if leaked > 0 {
        rep.problems.push(Problem::LeakedBlocks { count: leaked });
    }
    if unmarked > 0 {
        rep.problems.push(Problem::UnmarkedBlocks { count: unmarked });
    }
    Ok(fixes)
}

/// Rewrites allocation group headers and bitmap blocks that cannot be read: the header from
/// the geometry, the bitmap from what the walk found in use (and the AG's own overhead). Written
/// straight to the device before anything opens the volume, since the allocator reads them.
pub(super) fn rebuild_alloc_metadata(dev: &dyn BlockDevice, sb: &Superblock, w: &Walk, rep: &mut Report) -> Result<()> {
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
