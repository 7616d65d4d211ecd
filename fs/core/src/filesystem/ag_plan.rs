//! Which allocation groups an operation holds when each group has a cluster lock of its own
//! (`ClusterLocks::ag_locks`; cluster mode with per-inode locks). An operation works this out
//! under its inode locks and takes the groups before its journal handle (`locks.rs`), so that
//! inside the transaction the allocator allocates only from groups the node holds and frees
//! only into them (another node may be changing any other group's bitmap). Allocations come
//! from the node's own group first (chosen by its slot, so nodes do not contend), then from the
//! next groups with room; frees go where the freed blocks are. Standalone plans nothing: every
//! group is the node's, and operations pay nothing for this.
use super::data::{extents_in, EXTENTS_PER_STEP};
use super::Fs;
use crate::cache::MetaBuf;
use crate::error::Result;
use crate::format::inode::Inode;
use crate::format::BlockNo;
use crate::journal::Handle;
use crate::locks::AgHolds;
use std::collections::BTreeSet;
use std::sync::Arc;

/// What an operation will do to the allocator: the groups it frees into, and how many blocks
/// it may allocate.
pub(crate) struct AgPlan {
    active: bool,
    frees: BTreeSet<u32>,
    alloc: u64,
}

impl AgPlan {
    /// The operation may allocate up to `blocks` more blocks.
    pub(crate) fn allocates(&mut self, blocks: u64) {
        self.alloc = self.alloc.saturating_add(blocks);
    }
}

impl Fs {
    /// An empty plan; inactive (every call a no-op) unless groups have locks of their own.
    pub(crate) fn ag_plan(&self) -> AgPlan {
        AgPlan { active: self.locks.cluster().ag_locks(), frees: BTreeSet::new(), alloc: 0 }
    }

    /// The operation frees block `b`.
    fn plan_free(&self, plan: &mut AgPlan, b: BlockNo) {
        if let Some(a) = self.vol.alloc.ag_index_of(b) {
            plan.frees.insert(a);
        }
    }

    /// The operation removes `key` from the tree rooted in `buf` (a directory entry): it may
    /// free the nodes on the way to the key's leaf.
    pub(crate) fn plan_key_removal(&self, plan: &mut AgPlan, buf: &Arc<MetaBuf>, key: u64) -> Result<()> {
        if plan.active {
            for b in self.tree(buf).path_blocks(key)? {
                self.plan_free(plan, b);
            }
        }
        Ok(())
    }

    /// The operation frees one bounded step of `inode`'s data from logical block `from` on
    /// (truncate, punch, delete), which may free any of its tree nodes; with `whole`, also its
    /// xattr block and the inode's own block (the inode goes).
    pub(crate) fn plan_data_frees(
        &self,
        plan: &mut AgPlan,
        buf: &Arc<MetaBuf>,
        inode: &Inode,
        from: u64,
        to: u64,
        whole: bool,
    ) -> Result<()> {
        if !plan.active {
            return Ok(());
        }
        if !inode.stuffed() {
            let t = self.tree(buf);
            for b in t.node_blocks()? {
                self.plan_free(plan, b);
            }
            if inode.is_reg() || inode.is_symlink() {
                for e in extents_in(&t, from, to, EXTENTS_PER_STEP + 1)? {
                    // Every group the extent touches (it may cross a group's end).
                    let last = e.pblk + (e.len.max(1) - 1);
                    if let (Some(lo), Some(hi)) = (self.vol.alloc.ag_index_of(e.pblk), self.vol.alloc.ag_index_of(last)) {
                        plan.frees.extend(lo..=hi);
                    }
                }
            }
        }
        if whole {
            if let Some(xb) = inode.xattr_block() {
                self.plan_free(plan, xb);
            }
            self.plan_free(plan, inode.ino.block());
        }
        Ok(())
    }

    /// The operation rewrites `inode`'s xattr block (which may free it).
    pub(crate) fn plan_xattr_change(&self, plan: &mut AgPlan, inode: &Inode) {
        if let Some(xb) = inode.xattr_block() {
            self.plan_free(plan, xb);
        }
        plan.allocates(1);
    }

    /// Takes the groups `plan` needs, ascending: those it frees into, and for its
    /// allocations the group this node allocates from now and, if that has too little room
    /// (counted under its lock), the next ones with room. `None` when groups have no locks.
    pub(crate) fn hold_ags(&self, plan: AgPlan) -> Result<Option<AgHolds>> {
        if !plan.active {
            return Ok(None);
        }
        let alloc = &self.vol.alloc;
        let n = alloc.ag_count();
        let mut start = alloc.current_ag();
        for attempt in 0..=n {
            let mut candidates = BTreeSet::new();
            let mut span = 0;
            if plan.alloc > 0 {
                // From the current group on, those that said they had room when last counted
                // (a group never counted may have room), until they say they have enough: a
                // hint, counted again under the locks.
                let mut hinted = 0u64;
                while span < n && hinted < plan.alloc {
                    let a = (start + span) % n;
                    let free = alloc.free_hint_of(a).unwrap_or(plan.alloc);
                    if free > 0 || span == 0 {
                        candidates.insert(a);
                        hinted = hinted.saturating_add(free);
                    }
                    span += 1;
                }
            }
            let want: Vec<u32> = plan.frees.union(&candidates).copied().collect();
            let holds = self.locks.hold_ags(&want)?;
            let mut room = self.room_in(&holds, &candidates)?;
            if plan.alloc > 0 && room < plan.alloc && alloc.quarantined() > 0 {
                // Blocks freed by the running transaction come back when it commits (as
                // `ensure_room_for` does on a node that owns every group).
                self.vol.commit()?;
                room = self.room_in(&holds, &candidates)?;
            }
            if plan.alloc == 0 || room >= plan.alloc {
                return Ok(Some(holds));
            }
            if span >= n || attempt == n {
                // Every group looked at: what there is, if it is enough for the operation's
                // metadata (a write may then stop short), else ENOSPC before anything changed.
                if room < super::METADATA_OP_BLOCKS {
                    return Err(crate::error::FsError::NoSpace);
                }
                return Ok(Some(holds));
            }
            // The hints were stale: look further on (the counts just taken correct them).
            drop(holds);
            start = (start + span.max(1)) % n;
        }
        unreachable!("the last attempt returns")
    }

    /// Blocks the held groups can hand out now. The first of the `candidates` for allocation
    /// with room becomes the group this node allocates from (a group held only to free into
    /// may be another node's own).
    fn room_in(&self, holds: &AgHolds, candidates: &BTreeSet<u32>) -> Result<u64> {
        let mut room = 0u64;
        let mut current = None;
        for &a in holds.ags() {
            let free = self.vol.alloc.available_in(a)?;
            if free > 0 && current.is_none() && candidates.contains(&a) {
                current = Some(a);
            }
            room += free;
        }
        if let Some(a) = current {
            self.vol.alloc.set_current_ag(a);
        }
        Ok(room)
    }

    /// Joins the running transaction, allocating and freeing only in the groups `holds`
    /// names: with groups locked one by one, none without holds; otherwise any.
    pub(crate) fn begin_in(&self, holds: &Option<AgHolds>) -> Result<Handle<'_>> {
        let h = self.vol.begin()?;
        Ok(match holds {
            Some(held) => h.limit_to_ags(Some(held.ags())),
            None if self.locks.cluster().ag_locks() => h.limit_to_ags(Some(&[])),
            None => h,
        })
    }

    /// `begin_in` for an operation that may allocate: `ensure_room_for` first.
    pub(crate) fn begin_alloc_in(&self, data_blocks: u64, holds: &Option<AgHolds>) -> Result<Handle<'_>> {
        self.ensure_room_for(data_blocks)?;
        self.begin_in(holds)
    }
}
