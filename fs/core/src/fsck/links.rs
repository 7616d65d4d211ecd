//! Link counts, directory entry counts and block counts against what the walk counted.
use super::walk::Walk;
use super::{Problem, Report};
use crate::format::superblock::Superblock;
use std::collections::HashSet;

/// Link counts, directory entry counts and block counts; returns inodes whose fields need
/// fixing: (ino, nlink, entries, blocks).
pub(super) fn check_links(sb: &Superblock, orphan_dirs: &[u64], w: &Walk, rep: &mut Report) -> Vec<(u64, u32, u64, u64)> {
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
            rep.problems.push(Problem::LinkCount { ino, recorded: inode.nlink, counted: want_nlink });
            bad = true;
        }
        if inode.is_dir() && inode.entries != want_entries {
            rep.problems.push(Problem::EntryCount { dir: ino, recorded: inode.entries, counted: want_entries });
            bad = true;
        }
        if inode.blocks != want_blocks {
            rep.problems.push(Problem::BlockCount { ino, recorded: inode.blocks, counted: want_blocks });
            bad = true;
        }
        if bad {
            fixes.push((ino, want_nlink, want_entries, want_blocks));
        }
    }
    fixes
}
