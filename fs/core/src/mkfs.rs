//! `mafs mkfs`: writes a new, empty volume: both superblock copies, every slot header, every
//! AG header and bitmap, and the root, lost+found and per-slot orphan directories.
use crate::alloc::{bitmap_set, BlockState, AGH_FREE, AGH_INDEX, AGH_LEN, AGH_START};
use crate::device::BlockDevice;
use crate::error::{FsError, Result};
use crate::format::header::{self, BlockType};
use crate::format::inode::{Inode, Timespec};
use crate::format::layout::{Layout, STATES_PER_BITMAP_BLOCK};
use crate::format::le::*;
use crate::format::slot::{SlotHeader, SlotState};
use crate::format::superblock::{Superblock, BACKUP_SUPERBLOCK_BLKNO, SUPERBLOCK_BLKNO};
use crate::format::BLOCK_SIZE;

#[derive(Debug, Clone)]
pub struct MkfsOptions {
    pub slots: u32,
    pub label: String,
    pub journal_blocks: Option<u32>,
    pub force: bool,
}

impl Default for MkfsOptions {
    fn default() -> Self {
        MkfsOptions { slots: 8, label: String::new(), journal_blocks: None, force: false }
    }
}

pub fn directory_inode(ino: u64, mode: u32, parent: u64, now: Timespec) -> Inode {
    Inode {
        ino,
        mode: libc::S_IFDIR | mode,
        nlink: 2,
        size: BLOCK_SIZE as u64,
        atime: now,
        mtime: now,
        ctime: now,
        crtime: now,
        generation: 1,
        parent,
        ..Default::default()
    }
}

/// The layout `opts` give a device of `size` bytes, or why there is none: checked before
/// anything is created or written.
pub fn check_options(size: u64, opts: &MkfsOptions) -> Result<Layout> {
    if opts.label.len() > crate::format::superblock::LABEL_LEN {
        return Err(FsError::Volume(format!(
            "--label is {} bytes; at most {} fit",
            opts.label.len(),
            crate::format::superblock::LABEL_LEN
        )));
    }
    Layout::compute(size / BLOCK_SIZE as u64, opts.slots, opts.journal_blocks).map_err(FsError::Volume)
}

pub fn mkfs(dev: &dyn BlockDevice, opts: &MkfsOptions) -> Result<Superblock> {
    if !opts.force {
        if let Some(what) = crate::probe::existing_contents(dev) {
            return Err(FsError::Volume(format!("it already holds {what}; use --force to overwrite it (everything on it will be lost)")));
        }
    }
    let layout = check_options(dev.size(), opts)?;
    let now = Timespec::now();
    let ag0 = layout.ag_first_block(0);
    let overhead = layout.ag_overhead() as u64;
    let root_ino = ag0 + overhead;
    let lost_found_ino = root_ino + 1;
    let orphan_first = lost_found_ino + 1;
    let sb = Superblock {
        uuid: *uuid::Uuid::new_v4().as_bytes(),
        label: opts.label.clone(),
        layout,
        root_ino,
        lost_found_ino,
        created_sec: now.sec,
        incompat: 0,
    };
    let seed = sb.crc_seed();
    let system_inodes = 2 + layout.slot_count as u64;
    if system_inodes + overhead + 16 > layout.ag_len(0) as u64 {
        return Err(FsError::Unsupported("first allocation group too small for the system inodes".into()));
    }

    // Allocation groups: header and bitmap written as one run per AG.
    for a in 0..layout.ag_count {
        let first = layout.ag_first_block(a);
        let len = layout.ag_len(a) as u64;
        let mut used: Vec<(u64, u64, BlockState)> = vec![(0, overhead, BlockState::Meta)];
        if a == 0 {
            used.push((overhead, system_inodes, BlockState::Inode));
        }
        let used_count: u64 = used.iter().map(|u| u.1).sum();
        let mut run = vec![0u8; overhead as usize * BLOCK_SIZE];
        {
            let h = &mut run[..BLOCK_SIZE];
            put_u32(h, AGH_INDEX, a);
            put_u64(h, AGH_START, first);
            put_u64(h, AGH_LEN, len);
            put_u64(h, AGH_FREE, len - used_count);
            header::seal(h, BlockType::AgHeader, first, 0, seed);
        }
        for bi in 0..layout.bitmap_blocks_per_ag as u64 {
            let blk = &mut run[(1 + bi as usize) * BLOCK_SIZE..(2 + bi as usize) * BLOCK_SIZE];
            let lo = bi * STATES_PER_BITMAP_BLOCK;
            let hi = lo + STATES_PER_BITMAP_BLOCK;
            for &(s, n, st) in &used {
                for r in s.max(lo)..(s + n).min(hi) {
                    bitmap_set(blk, r, st);
                }
            }
            // States past the AG's end are marked in use so nothing ever allocates them.
            for r in len.max(lo)..hi {
                bitmap_set(blk, r, BlockState::Meta);
            }
            header::seal(blk, BlockType::Bitmap, first + 1 + bi, 0, seed);
        }
        dev.write_at(&run, first * BLOCK_SIZE as u64)?;
    }

    // Root, lost+found and one orphan directory per slot.
    let mut dirs = vec![directory_inode(root_ino, 0o755, root_ino, now), directory_inode(lost_found_ino, 0o700, root_ino, now)];
    dirs[0].nlink = 3; // ".", "..", and lost+found's ".."
    dirs[0].entries = 1;
    for s in 0..layout.slot_count as u64 {
        let mut d = directory_inode(orphan_first + s, 0o700, orphan_first + s, now);
        d.flags |= crate::format::inode::FLAG_SYSTEM;
        dirs.push(d);
    }
    for d in &dirs {
        let mut b = vec![0u8; BLOCK_SIZE];
        d.encode_into(&mut b);
        if d.ino == root_ino {
            write_single_entry_root(&mut b, b"lost+found", lost_found_ino);
        }
        header::seal(&mut b, BlockType::Inode, d.ino, 0, seed);
        dev.write_at(&b, d.ino * BLOCK_SIZE as u64)?;
    }

    for s in 0..layout.slot_count {
        let hdr = SlotHeader {
            index: s,
            state: SlotState::Clean,
            generation: 0,
            journal_tail: 0,
            tail_seq: 1,
            orphan_dir: orphan_first + s as u64,
            mounted_at: 0,
            owner: String::new(),
            mmp_seq: 0,
            mmp_time: 0,
            update_seq: 0,
        };
        // Both copies, equal: a stale copy left in the journal area by an earlier volume
        // must not outrank the new header.
        for blk in [layout.slot_header_blkno(s), layout.slot_header_copy_blkno(s)] {
            dev.write_at(&hdr.encode(blk, seed), blk * BLOCK_SIZE as u64)?;
        }
    }
    // Superblocks last: until they are written, the device is not a mafs volume.
    dev.flush()?;
    dev.write_at(&sb.encode(BACKUP_SUPERBLOCK_BLKNO), BACKUP_SUPERBLOCK_BLKNO * BLOCK_SIZE as u64)?;
    dev.write_at(&sb.encode(SUPERBLOCK_BLKNO), SUPERBLOCK_BLKNO)?;
    dev.flush()?;
    Ok(sb)
}

/// The root's index tree holding its one entry, written without a transaction (mkfs only):
/// a leaf root with one directory entry, in the format of `btree` and `dir`.
fn write_single_entry_root(inode_block: &mut [u8], name: &[u8], ino: u64) {
    use crate::format::inode::INLINE_OFFSET;
    let area = &mut inode_block[INLINE_OFFSET..];
    put_u16(area, 0, 0);
    put_u16(area, 2, 1);
    let key = crate::dir::name_hash(name) << 16;
    put_u64(area, 8, key);
    let vlen = 9 + name.len();
    put_u16(area, 16, vlen as u16);
    put_u64(area, 18, ino);
    area[26] = libc::DT_DIR;
    area[27..27 + name.len()].copy_from_slice(name);
}
