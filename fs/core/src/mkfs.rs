//! `mafs mkfs`: writes a new, empty volume: both superblock copies, every slot header, every
//! AG header and bitmap, and the root, lost+found and per-slot orphan directories.
use crate::alloc::BlockState;
use crate::device::BlockDevice;
use crate::error::{FsError, Result};
use crate::format::ag::{bitmap_fill, AgHeader};
use crate::format::btree_node::{Node, NodePlace};
use crate::format::change_map::{self, ChangeState};
use crate::format::dirent::{entry_key, name_hash, DirEntry};
use crate::format::header::{self, BlockType};
use crate::format::inode::{Inode, Timespec, FLAG_SYSTEM};
use crate::format::layout::Layout;
use crate::format::slot::SlotHeader;
use crate::format::superblock::{Superblock, BACKUP_SUPERBLOCK_BLKNO, INCOMPAT_CHANGE_TRACKING, LABEL_LEN, SUPERBLOCK_BLKNO};
use crate::format::{BlockNo, InodeNo, BLOCK_SIZE};

#[derive(Debug, Clone)]
pub struct MkfsOptions {
    pub slots: u32,
    pub label: String,
    pub journal_blocks: Option<u32>,
    pub force: bool,
    /// The volume's UUID (a random one if None): an image build names its volume after the
    /// tree it holds.
    pub uuid: Option<[u8; 16]>,
}

impl Default for MkfsOptions {
    fn default() -> Self {
        MkfsOptions { slots: 8, label: String::new(), journal_blocks: None, force: false, uuid: None }
    }
}

pub fn directory_inode(ino: InodeNo, mode: u32, parent: InodeNo, now: Timespec) -> Inode {
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

/// The orphan directory mkfs creates for `slot`: the system inodes are, in order, the root,
/// lost+found and one orphan directory per slot.
pub fn orphan_dir_ino(sb: &Superblock, slot: u32) -> u64 {
    sb.lost_found_ino + 1 + slot as u64
}

/// The layout `opts` give a device of `size` bytes, or why there is none: checked before
/// anything is created or written.
pub fn check_options(size: u64, opts: &MkfsOptions) -> Result<Layout> {
    if opts.label.len() > LABEL_LEN {
        return Err(FsError::Volume(format!("--label is {} bytes; at most {LABEL_LEN} fit", opts.label.len())));
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
    let sb = new_superblock(layout, &opts.label, now, opts.uuid)?;
    write_allocation_groups(dev, &layout, system_inode_count(&layout), sb.crc_seed())?;
    write_system_directories(dev, &sb, now)?;
    write_slot_headers(dev, &sb)?;
    if layout.tracks_changes() {
        let region = change_map::blank_region(&layout, ChangeState::NEW, sb.crc_seed());
        dev.write_at(&region, BlockNo(layout.cbt_start()).byte_offset())?;
    }
    // Superblocks last: until they are written, the device is not a mafs volume.
    dev.flush()?;
    for blk in [BACKUP_SUPERBLOCK_BLKNO, SUPERBLOCK_BLKNO] {
        dev.write_at(&sb.encode(blk), BlockNo(blk).byte_offset())?;
    }
    dev.flush()?;
    Ok(sb)
}

/// Root, lost+found and one orphan directory per slot.
fn system_inode_count(layout: &Layout) -> u64 {
    2 + layout.slot_count as u64
}

/// A new volume's identity, with its system inodes in AG 0 right after its header and bitmap.
fn new_superblock(layout: Layout, label: &str, now: Timespec, uuid: Option<[u8; 16]>) -> Result<Superblock> {
    let overhead = layout.ag_overhead() as u64;
    if system_inode_count(&layout) + overhead + 16 > layout.ag_len(0) as u64 {
        return Err(FsError::Unsupported("first allocation group too small for the system inodes".into()));
    }
    let root_ino = layout.ag_first_block(0) + overhead;
    let uuid = uuid.unwrap_or_else(|| *uuid::Uuid::new_v4().as_bytes());
    Ok(Superblock {
        uuid,
        crc_seed: crc32c::crc32c(&uuid),
        label: label.to_string(),
        layout,
        root_ino,
        lost_found_ino: root_ino + 1,
        created_sec: now.sec,
        incompat: if layout.tracks_changes() { INCOMPAT_CHANGE_TRACKING } else { 0 },
    })
}

/// Every AG's header and bitmap, written as one run per AG: the header and bitmap blocks in
/// use, and in AG 0 the `system_inodes` after them.
fn write_allocation_groups(dev: &dyn BlockDevice, layout: &Layout, system_inodes: u64, seed: u32) -> Result<()> {
    let overhead = layout.ag_overhead() as u64;
    for a in 0..layout.ag_count {
        let first = layout.ag_first_block(a);
        let len = layout.ag_len(a) as u64;
        // AG-relative (start, count, state) of the blocks in use.
        let mut used = vec![(0, overhead, BlockState::Meta)];
        if a == 0 {
            used.push((overhead, system_inodes, BlockState::Inode));
        }
        let used_count: u64 = used.iter().map(|u| u.1).sum();
        let mut run = AgHeader::new(a, first, len, len - used_count).sealed_block(seed);
        run.resize(overhead as usize * BLOCK_SIZE, 0);
        for (bi, blk) in (0..).zip(run[BLOCK_SIZE..].chunks_exact_mut(BLOCK_SIZE)) {
            for &(s, n, st) in &used {
                bitmap_fill(blk, bi, s, s + n, st);
            }
            // States past the AG's end are marked in use so nothing ever allocates them.
            bitmap_fill(blk, bi, len, u64::MAX, BlockState::Meta);
            header::seal(blk, BlockType::Bitmap, layout.bitmap_blkno(a, bi), 0, seed);
        }
        dev.write_at(&run, BlockNo(first).byte_offset())?;
    }
    Ok(())
}

/// The root (holding lost+found's entry), lost+found, and one orphan directory per slot.
fn write_system_directories(dev: &dyn BlockDevice, sb: &Superblock, now: Timespec) -> Result<()> {
    let (root_ino, lost_found_ino) = (InodeNo(sb.root_ino), InodeNo(sb.lost_found_ino));
    let mut dirs = vec![directory_inode(root_ino, 0o755, root_ino, now), directory_inode(lost_found_ino, 0o700, root_ino, now)];
    dirs[0].nlink = 3; // ".", "..", and lost+found's ".."
    dirs[0].entries = 1;
    for s in 0..sb.layout.slot_count {
        let ino = InodeNo(orphan_dir_ino(sb, s));
        let mut d = directory_inode(ino, 0o700, ino, now);
        d.flags |= FLAG_SYSTEM;
        dirs.push(d);
    }
    for d in &dirs {
        let mut b = vec![0u8; BLOCK_SIZE];
        d.encode_into(&mut b);
        if d.ino == root_ino {
            single_entry_tree(&mut b, b"lost+found", lost_found_ino, libc::DT_DIR);
        }
        header::seal(&mut b, BlockType::Inode, d.ino.get(), 0, sb.crc_seed());
        dev.write_at(&b, d.ino.block().byte_offset())?;
    }
    Ok(())
}

/// Gives a directory inode block an index tree holding one entry (the first of its hash),
/// written without a transaction (mkfs only): a leaf root node holding a directory entry
/// record, the types `btree` and `dir` read and write.
fn single_entry_tree(inode_block: &mut [u8], name: &[u8], ino: InodeNo, dtype: u8) {
    let e = DirEntry { key: entry_key(name_hash(name), 0), ino, dtype, name: name.to_vec() };
    Node { level: 0, leaf: vec![(e.key, e.value())], kids: Vec::new() }.encode(inode_block, NodePlace::InodeRoot);
}

fn write_slot_headers(dev: &dyn BlockDevice, sb: &Superblock) -> Result<()> {
    let layout = &sb.layout;
    for s in 0..layout.slot_count {
        let hdr = SlotHeader::clean(s, orphan_dir_ino(sb, s), 1);
        // Both copies, equal: a stale copy left in the journal area by an earlier volume
        // must not outrank the new header.
        for blk in [layout.slot_header_blkno(s), layout.slot_header_copy_blkno(s)] {
            dev.write_at(&hdr.encode(blk, sb.crc_seed()), BlockNo(blk).byte_offset())?;
        }
    }
    Ok(())
}
