//! What a check finds wrong, one variant per kind of damage. `Display` is the line `mafs fsck`
//! prints: what is wrong and where, and what a repair will do where that is not obvious.
use crate::alloc::BlockState;
use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    PrimarySuperblockDamaged,
    BackupSuperblockBad,
    SlotHeaderUnreadable {
        slot: u32,
        why: String,
    },
    SlotHeaderCopyDamaged {
        slot: u32,
    },
    /// A directory entry names an inode that cannot be used (`why` says which and how).
    EntryPointsAtBadInode {
        dir: u64,
        why: String,
    },
    /// The root or an orphan directory cannot be read.
    SystemInodeBad {
        ino: u64,
        why: String,
    },
    InodeCrossLinked {
        ino: u64,
        also: BlockState,
    },
    XattrBlockUnreadable {
        ino: u64,
        block: u64,
        why: String,
    },
    WrongParent {
        dir: u64,
        recorded: u64,
        listed_in: u64,
    },
    BadEntryName {
        dir: u64,
        name: String,
    },
    InlineDataTooLarge {
        ino: u64,
    },
    BadExtent {
        ino: u64,
        logical: u64,
    },
    BrokenSymlink {
        ino: u64,
        why: String,
    },
    TreeNodeUnreadable {
        ino: u64,
        node: u64,
        why: String,
        readable_records: usize,
    },
    PointsOutsideDataArea {
        ino: u64,
        block: u64,
    },
    BlockUsedTwice {
        block: u64,
        first: BlockState,
        second: BlockState,
        by: u64,
    },
    /// In use by the bitmaps and readable, but named by no directory.
    Disconnected {
        ino: u64,
        unfinished_delete: bool,
    },
    AgHeaderUnreadable {
        ag: u32,
        why: String,
    },
    BitmapUnreadable {
        ag: u32,
        index: u64,
        why: String,
    },
    AgFreeCount {
        ag: u32,
        recorded: u64,
        counted: u64,
    },
    LeakedBlocks {
        count: u64,
    },
    UnmarkedBlocks {
        count: u64,
    },
    LinkCount {
        ino: u64,
        recorded: u32,
        counted: u32,
    },
    EntryCount {
        dir: u64,
        recorded: u64,
        counted: u64,
    },
    BlockCount {
        ino: u64,
        recorded: u64,
        counted: u64,
    },
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use Problem::*;
        match self {
            PrimarySuperblockDamaged => write!(f, "primary superblock is damaged; the backup copy is intact"),
            BackupSuperblockBad => write!(f, "backup superblock is damaged or differs from the primary"),
            SlotHeaderUnreadable { slot, why } => write!(f, "slot {slot}: header unreadable ({why})"),
            SlotHeaderCopyDamaged { slot } => write!(f, "slot {slot}: one copy of its header is damaged (the other is intact)"),
            EntryPointsAtBadInode { dir, why } => write!(f, "directory {dir}: entry points at {why}"),
            SystemInodeBad { ino, why } => write!(f, "system inode {ino}: {why}"),
            InodeCrossLinked { ino, also } => {
                write!(f, "inode {ino} is also used as {also:?} by another inode (cross-linked; not repairable automatically)")
            }
            XattrBlockUnreadable { ino, block, why } => write!(
                f,
                "inode {ino}: extended attribute block {block} cannot be read ({why}); a repair drops the inode's extended attributes"
            ),
            WrongParent { dir, recorded, listed_in } => {
                write!(f, "directory {dir}: parent field says {recorded} but it is listed in {listed_in}")
            }
            BadEntryName { dir, name } => write!(f, "directory {dir}: entry {name:?} is filed under the wrong hash or has an invalid name"),
            InlineDataTooLarge { ino } => write!(f, "inode {ino}: inline file larger than the inline area"),
            BadExtent { ino, logical } => write!(f, "inode {ino}: overlapping or empty extent at logical block {logical}"),
            BrokenSymlink { ino, why } => write!(f, "symlink {ino}: {why}; a repair removes it"),
            TreeNodeUnreadable { ino, node, why, readable_records } => write!(
                f,
                "inode {ino}: index tree node {node} cannot be read ({why}); a repair rebuilds the tree from the {readable_records} records that can"
            ),
            PointsOutsideDataArea { ino, block } => {
                write!(f, "inode {ino}: points at block {block}, which is not a data block of any allocation group")
            }
            BlockUsedTwice { block, first, second, by } => {
                write!(f, "block {block} is used twice (as {first:?} and as {second:?} by inode {by}); not repairable automatically")
            }
            Disconnected { ino, unfinished_delete } => {
                write!(f, "inode {ino} is in use but in no directory{}", if *unfinished_delete { " (an unfinished delete)" } else { "" })
            }
            AgHeaderUnreadable { ag, why } => {
                write!(f, "allocation group {ag}: header cannot be read ({why}); a repair rebuilds it from the volume's geometry")
            }
            BitmapUnreadable { ag, index, why } => {
                write!(f, "allocation group {ag}: bitmap block {index} cannot be read ({why}); a repair rebuilds it from the walk")
            }
            AgFreeCount { ag, recorded, counted } => {
                write!(f, "allocation group {ag}: header says {recorded} free blocks, bitmap has {counted}")
            }
            LeakedBlocks { count } => write!(f, "{count} blocks are marked in use but belong to nothing (leaked)"),
            UnmarkedBlocks { count } => write!(f, "{count} blocks in use are marked free or with the wrong kind in the bitmaps"),
            LinkCount { ino, recorded, counted } => write!(f, "inode {ino}: link count is {recorded} but should be {counted}"),
            EntryCount { dir, recorded, counted } => write!(f, "directory {dir}: entry count is {recorded} but it holds {counted}"),
            BlockCount { ino, recorded, counted } => write!(f, "inode {ino}: block count is {recorded} but it uses {counted}"),
        }
    }
}
