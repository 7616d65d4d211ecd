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
    /// Some of it is file data (`allocates_data`).
    data: bool,
}

impl AgPlan {
    /// Whether groups have locks of their own (else the plan is not worth working out).
    pub(crate) fn is_active(&self) -> bool {
        self.active
    }

    /// The operation may allocate up to `blocks` more blocks.
    pub(crate) fn allocates(&mut self, blocks: u64) {
        self.alloc = self.alloc.saturating_add(blocks);
    }

    /// The operation may allocate up to `data` blocks of file data and `meta` blocks of
    /// metadata. File data may not take a group's last `METADATA_RESERVE` blocks (kept for the
    /// tree nodes that map it), so a group is enough only with those spare.
    pub(crate) fn allocates_data(&mut self, data: u64, meta: u64) {
        self.allocates(data.saturating_add(meta));
        self.data = true;
    }

    /// The least room worth going on with: the operation's metadata, and for file data the
    /// reserve plus a block (a write then stops short).
    fn minimum(&self) -> u64 {
        if self.data {
            super::METADATA_RESERVE + 1
        } else {
            super::METADATA_OP_BLOCKS.min(self.alloc)
        }
    }

    /// The room a group must have for the operation's allocations.
    fn wanted(&self) -> u64 {
        if self.data {
            self.alloc.saturating_add(super::METADATA_RESERVE)
        } else {
            self.alloc
        }
    }
}

impl Fs {
    /// An empty plan; inactive (every call a no-op) unless groups have locks of their own.
    pub(crate) fn ag_plan(&self) -> AgPlan {
        AgPlan { active: self.locks.cluster().ag_locks(), frees: BTreeSet::new(), alloc: 0, data: false }
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
    /// allocations the group this node allocates from now — if that has too little room
    /// (counted under its lock), the first of the others, in turn, that has enough; if none
    /// has, the one with the most, as long as that holds the operation's metadata (a write then
    /// stops short), else ENOSPC before anything changed. `None` when groups have no locks.
    pub(crate) fn hold_ags(&self, plan: AgPlan) -> Result<Option<AgHolds>> {
        if !plan.active {
            return Ok(None);
        }
        let alloc = &self.vol.alloc;
        let hold = |a: Option<u32>| -> Result<AgHolds> {
            let want: Vec<u32> = plan.frees.iter().copied().chain(a).collect();
            self.locks.hold_ags(&want)
        };
        if plan.alloc == 0 {
            return hold(None).map(Some);
        }
        let (n, current, wanted) = (alloc.ag_count(), alloc.current_ag(), plan.wanted());
        let mut best: Option<(u64, u32)> = None;
        for i in 0..n {
            let a = (current + i) % n;
            let holds = hold(Some(a))?;
            let mut room = alloc.available_in(a)?;
            if room < wanted && alloc.quarantined() > 0 {
                // Blocks freed by the running transaction come back when it commits (as
                // `ensure_room_for` does on a node that owns every group).
                self.vol.commit()?;
                room = alloc.available_in(a)?;
            }
            tracing::trace!(group = a, room, wanted = wanted, "room in a group");
            if room >= wanted {
                alloc.set_current_ag(a);
                return Ok(Some(holds));
            }
            if best.is_none_or(|(r, _)| room > r) {
                best = Some((room, a));
            }
        }
        tracing::debug!(wanted = wanted, ?best, groups = n, "no allocation group has the room an operation wants");
        match best {
            // Too little for all of it: the group with the most, if that is worth it.
            Some((room, a)) if room >= plan.minimum() => {
                alloc.set_current_ag(a);
                hold(Some(a)).map(Some)
            }
            _ => Err(crate::error::FsError::NoSpace),
        }
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
