//! The index tree every inode carries: a B+tree keyed by u64 whose root node lives in the
//! inode's inline area and whose other nodes are whole metadata blocks. Files map logical
//! block -> extent with it; directories map name hash -> entry. Nodes never merge on delete
//! (an emptied node is freed), as in GFS2 and XFS directories that only shrink when emptied.
//!
//! The node layout, its parser and its encoder are `format::btree_node`.
use crate::alloc::{Allocator, BlockState};
use crate::cache::{Cover, MetaBuf, MetaCache};
use crate::error::{FsError, Result};
pub use crate::format::btree_node::Record;
use crate::format::btree_node::{child_index, leaf_entry_len, Node, NodePlace, NodeView};
use crate::format::header::BlockType;
use crate::format::{BlockNo, InodeNo};
use crate::journal::Handle;
use std::sync::Arc;

pub const MAX_VALUE: usize = 512;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NodeRef {
    Root,
    Block(BlockNo),
}

impl NodeRef {
    fn place(self) -> NodePlace {
        match self {
            NodeRef::Root => NodePlace::InodeRoot,
            NodeRef::Block(_) => NodePlace::Block,
        }
    }
}

enum Step {
    Done(Option<Vec<u8>>),
    Down(BlockNo),
}

/// Read access to one inode's tree.
pub struct TreeRead<'a> {
    pub cache: &'a MetaCache,
    pub inode_buf: &'a Arc<MetaBuf>,
}

impl TreeRead<'_> {
    /// The tree's nodes are covered by its inode's lock.
    fn cover(&self) -> Cover {
        Cover::Inode(InodeNo::from_block(self.inode_buf.blkno))
    }

    fn load(&self, r: NodeRef) -> Result<Node> {
        self.with_raw(r, Node::parse)
    }

    /// Runs `f` on node `r`'s bytes in place, under the block's read lock. Read paths work on
    /// the bytes directly: parsing a node into vectors costs an allocation per entry, which
    /// showed up in every lookup.
    fn with_raw<T>(&self, r: NodeRef, f: impl FnOnce(NodeView<'_>) -> Result<T>) -> Result<T> {
        match r {
            NodeRef::Root => f(NodeView::new(&self.inode_buf.read(), r.place(), self.inode_buf.blkno.get())),
            NodeRef::Block(b) => f(NodeView::new(&self.cache.get(b, BlockType::TreeNode, self.cover())?.read(), r.place(), b.get())),
        }
    }

    pub fn get(&self, key: u64) -> Result<Option<Vec<u8>>> {
        let mut r = NodeRef::Root;
        loop {
            let step = self.with_raw(r, |n| {
                if n.level() == 0 {
                    for e in n.leaf() {
                        let (k, v) = e?;
                        if k == key {
                            return Ok(Step::Done(Some(v.to_vec())));
                        }
                        if k > key {
                            break;
                        }
                    }
                    return Ok(Step::Done(None));
                }
                let kids = n.kids()?;
                if kids.is_empty() {
                    return Ok(Step::Done(None));
                }
                Ok(Step::Down(BlockNo(kids[child_index(&kids, key)].1)))
            })?;
            match step {
                Step::Done(v) => return Ok(v),
                Step::Down(b) => r = NodeRef::Block(b),
            }
        }
    }

    /// The node blocks on the way from the root to `key`'s leaf: the only ones a remove of
    /// `key` can free (cluster mode plans the allocation groups it frees into).
    pub fn path_blocks(&self, key: u64) -> Result<Vec<BlockNo>> {
        let mut out = Vec::new();
        let mut r = NodeRef::Root;
        loop {
            let next = self.with_raw(r, |n| {
                if n.level() == 0 {
                    return Ok(None);
                }
                let kids = n.kids()?;
                Ok(kids.get(child_index(&kids, key)).map(|k| BlockNo(k.1)))
            })?;
            match next {
                None => return Ok(out),
                Some(_) if out.len() > 32 => return Err(FsError::corrupt(self.inode_buf.blkno, "index tree deeper than 32 levels")),
                Some(b) => {
                    out.push(b);
                    r = NodeRef::Block(b);
                }
            }
        }
    }

    /// Visits entries with key >= `from` in order until `f` returns false.
    pub fn scan(&self, from: u64, f: &mut dyn FnMut(u64, &[u8]) -> bool) -> Result<()> {
        self.scan_node(NodeRef::Root, from, f).map(|_| ())
    }

    fn scan_node(&self, r: NodeRef, from: u64, f: &mut dyn FnMut(u64, &[u8]) -> bool) -> Result<bool> {
        let kids = self.with_raw(r, |n| {
            if n.level() == 0 {
                for e in n.leaf() {
                    let (k, v) = e?;
                    if k >= from && !f(k, v) {
                        return Ok(None);
                    }
                }
                return Ok(Some(Vec::new()));
            }
            n.kids().map(Some)
        })?;
        let Some(kids) = kids else { return Ok(false) };
        if kids.is_empty() {
            return Ok(true);
        }
        for &(_, c) in &kids[child_index(&kids, from)..] {
            if !self.scan_node(NodeRef::Block(BlockNo(c)), from, f)? {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// The entry with the greatest key <= `key`.
    pub fn last_le(&self, key: u64) -> Result<Option<(u64, Vec<u8>)>> {
        self.last_le_node(NodeRef::Root, key)
    }

    fn last_le_node(&self, r: NodeRef, key: u64) -> Result<Option<(u64, Vec<u8>)>> {
        let step = self.with_raw(r, |n| {
            if n.level() == 0 {
                let mut best = None;
                for e in n.leaf() {
                    let (k, v) = e?;
                    if k > key {
                        break;
                    }
                    best = Some((k, v));
                }
                return Ok(Err(best.map(|(k, v)| (k, v.to_vec()))));
            }
            n.kids().map(Ok)
        })?;
        let kids = match step {
            Err(found) => return Ok(found),
            Ok(k) => k,
        };
        if kids.is_empty() {
            return Ok(None);
        }
        // Separators are lower bounds, so the answer is in the chosen child or, if that child
        // holds nothing <= key, in an earlier one.
        let mut i = child_index(&kids, key) as isize;
        while i >= 0 {
            if let Some(e) = self.last_le_node(NodeRef::Block(BlockNo(kids[i as usize].1)), key)? {
                return Ok(Some(e));
            }
            i -= 1;
        }
        Ok(None)
    }

    /// Most blocks an insert of a value of `vlen` bytes can allocate: none if the root is a
    /// leaf with room for it, else one per level plus a new root level.
    pub fn insert_need(&self, vlen: usize) -> Result<u64> {
        self.with_raw(NodeRef::Root, |n| {
            if n.level() == 0 && n.leaf_bytes()? + leaf_entry_len(vlen) <= NodePlace::InodeRoot.capacity() {
                return Ok(0);
            }
            Ok(n.level() as u64 + 2)
        })
    }

    /// Every node block of the tree (for freeing the whole tree and for fsck).
    pub fn node_blocks(&self) -> Result<Vec<BlockNo>> {
        let mut out = Vec::new();
        let mut stack = vec![NodeRef::Root];
        while let Some(r) = stack.pop() {
            let n = self.load(r)?;
            if let NodeRef::Block(b) = r {
                out.push(b);
            }
            if n.level > 0 {
                if n.level > 32 {
                    return Err(FsError::corrupt(self.inode_buf.blkno, "index tree deeper than 32 levels"));
                }
                stack.extend(n.kids.iter().map(|(_, c)| NodeRef::Block(BlockNo(*c))));
            }
        }
        Ok(out)
    }
}

/// What a tolerant walk of a possibly damaged tree finds: for fsck, which must claim every
/// block the tree still points at and rebuild the tree from what can be read.
#[derive(Debug, Default)]
pub struct Salvage {
    /// Every leaf record that could be read, by key (a key seen twice keeps its first value).
    pub records: Vec<Record>,
    /// Node blocks that read and parsed.
    pub nodes: Vec<u64>,
    /// Node blocks that did not (or whose entries ran out part way), with why; the inode's
    /// own block stands for a damaged root. Whatever hangs below one is lost.
    pub damaged: Vec<(u64, String)>,
}

impl TreeRead<'_> {
    /// Walks the whole tree, skipping what cannot be read instead of failing.
    pub fn salvage(&self) -> Salvage {
        let mut s = Salvage::default();
        let mut stack = vec![(NodeRef::Root, 0u32)];
        while let Some((r, depth)) = stack.pop() {
            let blk = match r {
                NodeRef::Root => self.inode_buf.blkno.get(),
                NodeRef::Block(b) => b.get(),
            };
            if depth > 32 {
                s.damaged.push((blk, "index tree deeper than 32 levels".into()));
                continue;
            }
            let read = self.with_raw(r, |n| {
                if n.level() > 0 {
                    return n.kids().map(|k| (Vec::new(), k, None));
                }
                let mut recs = Vec::new();
                for e in n.leaf() {
                    match e {
                        Ok((k, v)) => recs.push((k, v.to_vec())),
                        Err(x) => return Ok((recs, Vec::new(), Some(x))),
                    }
                }
                Ok((recs, Vec::new(), None))
            });
            match read {
                Ok((recs, kids, partial)) => {
                    if let NodeRef::Block(b) = r {
                        s.nodes.push(b.get());
                    }
                    s.records.extend(recs);
                    if let Some(e) = partial {
                        s.damaged.push((blk, e.to_string()));
                    }
                    stack.extend(kids.into_iter().map(|(_, c)| (NodeRef::Block(BlockNo(c)), depth + 1)));
                }
                Err(e) => s.damaged.push((blk, e.to_string())),
            }
        }
        s.records.sort_by_key(|r| r.0);
        s.records.dedup_by_key(|r| r.0);
        s
    }
}

/// Write access to one inode's tree inside a transaction. `blocks_delta` counts node blocks
/// allocated minus freed, for the inode's block count.
pub struct TreeWrite<'a> {
    pub read: TreeRead<'a>,
    pub alloc: &'a Allocator,
    pub h: &'a Handle<'a>,
    pub blocks_delta: i64,
}

impl<'a> TreeWrite<'a> {
    pub fn new(cache: &'a MetaCache, alloc: &'a Allocator, h: &'a Handle<'a>, inode_buf: &'a Arc<MetaBuf>) -> Self {
        TreeWrite { read: TreeRead { cache, inode_buf }, alloc, h, blocks_delta: 0 }
    }

    fn store(&self, r: NodeRef, n: &Node) -> Result<()> {
        match r {
            NodeRef::Root => n.encode(&mut self.h.write(self.read.inode_buf), r.place()),
            NodeRef::Block(b) => n.encode(&mut self.h.write(&self.read.cache.get(b, BlockType::TreeNode, self.read.cover())?), r.place()),
        }
        Ok(())
    }

    fn new_node(&mut self, n: &Node) -> Result<BlockNo> {
        let (b, _) = self.alloc.alloc(self.h, 1, Some(self.read.inode_buf.blkno), BlockState::Meta)?;
        let buf = self.read.cache.create(b, BlockType::TreeNode, self.read.cover());
        n.encode(&mut self.h.write(&buf), NodePlace::Block);
        self.blocks_delta += 1;
        Ok(b)
    }

    fn free_node(&mut self, b: BlockNo) -> Result<()> {
        self.h.revoke(b);
        self.alloc.free(self.h, b, 1)?;
        self.blocks_delta -= 1;
        Ok(())
    }

    /// Inserts or replaces; returns the old value.
    pub fn insert(&mut self, key: u64, value: &[u8]) -> Result<Option<Vec<u8>>> {
        if value.len() > MAX_VALUE {
            return Err(FsError::Invalid("index tree value too large"));
        }
        let (old, split) = self.insert_at(NodeRef::Root, key, value)?;
        debug_assert!(split.is_none(), "root never reports a split");
        Ok(old)
    }

    #[allow(clippy::type_complexity)]
    fn insert_at(&mut self, r: NodeRef, key: u64, value: &[u8]) -> Result<(Option<Vec<u8>>, Option<(u64, BlockNo)>)> {
        let mut n = self.read.load(r)?;
        let old;
        if n.level == 0 {
            match n.leaf.binary_search_by_key(&key, |e| e.0) {
                Ok(i) => old = Some(std::mem::replace(&mut n.leaf[i].1, value.to_vec())),
                Err(i) => {
                    n.leaf.insert(i, (key, value.to_vec()));
                    old = None;
                }
            }
        } else {
            if n.kids.is_empty() {
                return Err(FsError::corrupt(self.read.inode_buf.blkno, "empty internal index node"));
            }
            let i = child_index(&n.kids, key);
            if key < n.kids[i].0 {
                n.kids[i].0 = key;
            }
            let (o, split) = self.insert_at(NodeRef::Block(BlockNo(n.kids[i].1)), key, value)?;
            old = o;
            match split {
                Some((sep, blk)) => n.kids.insert(i + 1, (sep, blk.get())),
                None => {
                    if key == n.kids[i].0 {
                        self.store(r, &n)?;
                    }
                    return Ok((old, None));
                }
            }
        }
        if n.bytes() <= r.place().capacity() {
            self.store(r, &n)?;
            return Ok((old, None));
        }
        match r {
            NodeRef::Block(_) => {
                let right = n.split();
                let sep = right.first_key();
                let rb = self.new_node(&right)?;
                self.store(r, &n)?;
                Ok((old, Some((sep, rb))))
            }
            NodeRef::Root => {
                // Grow in height: the root's entries move to new blocks below it.
                let mut left = n.clone();
                let mut kids = Vec::new();
                if left.bytes() > NodePlace::Block.capacity() {
                    let right = left.split();
                    let lk = left.first_key();
                    let lb = self.new_node(&left)?;
                    let rk = right.first_key();
                    let rb = self.new_node(&right)?;
                    kids.push((lk, lb.get()));
                    kids.push((rk, rb.get()));
                } else {
                    let lk = left.first_key();
                    let lb = self.new_node(&left)?;
                    kids.push((lk, lb.get()));
                }
                let root = Node { level: n.level + 1, leaf: Vec::new(), kids };
                self.store(NodeRef::Root, &root)?;
                Ok((old, None))
            }
        }
    }

    /// Removes `key`; returns its value if it was there.
    pub fn remove(&mut self, key: u64) -> Result<Option<Vec<u8>>> {
        let (old, _) = self.remove_at(NodeRef::Root, key)?;
        Ok(old)
    }

    /// Returns (removed value, node now empty).
    fn remove_at(&mut self, r: NodeRef, key: u64) -> Result<(Option<Vec<u8>>, bool)> {
        let mut n = self.read.load(r)?;
        let old;
        if n.level == 0 {
            match n.leaf.binary_search_by_key(&key, |e| e.0) {
                Ok(i) => old = Some(n.leaf.remove(i).1),
                Err(_) => return Ok((None, false)),
            }
        } else {
            if n.kids.is_empty() {
                return Ok((None, r == NodeRef::Root));
            }
            let i = child_index(&n.kids, key);
            let child = BlockNo(n.kids[i].1);
            let (o, empty) = self.remove_at(NodeRef::Block(child), key)?;
            if o.is_none() {
                return Ok((None, false));
            }
            old = o;
            if !empty {
                return Ok((old, false));
            }
            self.free_node(child)?;
            n.kids.remove(i);
        }
        let empty = n.is_empty();
        if empty && r == NodeRef::Root {
            // An empty tree is an empty leaf root again.
            self.store(r, &Node::default())?;
            return Ok((old, false));
        }
        if !empty {
            self.store(r, &n)?;
        }
        Ok((old, empty))
    }

    /// Replaces the tree with one holding exactly `records` (fsck, from a [`Salvage`]). The
    /// old node blocks are not freed here: some may be damaged pointers into other files' blocks.
    /// Once nothing points at them any more, fsck's bitmap pass frees those no one uses.
    pub fn rebuild(&mut self, records: &[Record]) -> Result<()> {
        self.store(NodeRef::Root, &Node::default())?;
        for (k, v) in records {
            self.insert(*k, v)?;
        }
        Ok(())
    }

    /// Frees every node block and resets the root to an empty leaf.
    pub fn clear(&mut self) -> Result<()> {
        for b in self.read.node_blocks()? {
            self.free_node(b)?;
        }
        self.store(NodeRef::Root, &Node::default())
    }
}

#[cfg(test)]
mod tests {
    //! The tree against a `BTreeMap` model: thousands of random inserts, replacements and
    //! removes with values of every size, enough to split the inline root and grow the tree to
    //! several levels, then emptied again (every node block freed).
    use super::*;
    use crate::device::CrashDevice;
    use crate::volume::Volume;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};
    use std::collections::{BTreeMap, HashSet};

    fn volume(dev: &Arc<CrashDevice>) -> Volume {
        Volume::open(dev.clone(), 0, "btree-test", 1 << 16).expect("open volume")
    }

    fn new_device() -> Arc<CrashDevice> {
        crate::test_support::scratch_device()
    }

    fn new_inode(vol: &Volume) -> Arc<MetaBuf> {
        crate::test_support::new_tree_inode(vol)
    }

    fn root_level(buf: &MetaBuf) -> u16 {
        NodeView::new(&buf.read(), NodePlace::InodeRoot, buf.blkno.get()).level()
    }

    fn value(rng: &mut StdRng, key: u64, max: usize) -> Vec<u8> {
        let n = rng.gen_range(0..=max);
        let salt: u8 = rng.gen();
        (0..n).map(|i| (key as u8).wrapping_mul(31).wrapping_add(i as u8).wrapping_add(salt)).collect()
    }

    fn full_scan(t: &TreeRead) -> Vec<(u64, Vec<u8>)> {
        let mut out = Vec::new();
        t.scan(0, &mut |k, v| {
            out.push((k, v.to_vec()));
            true
        })
        .unwrap();
        out
    }

    fn check_against(t: &TreeRead, model: &BTreeMap<u64, Vec<u8>>, rng: &mut StdRng, full: bool) {
        for _ in 0..40 {
            let k = probe(rng, model);
            assert_eq!(t.get(k).unwrap(), model.get(&k).cloned(), "get({k})");
            let want = model.range(..=k).next_back().map(|(a, b)| (*a, b.clone()));
            assert_eq!(t.last_le(k).unwrap(), want, "last_le({k})");
        }
        let from = probe(rng, model);
        let mut got = Vec::new();
        t.scan(from, &mut |k, v| {
            got.push((k, v.to_vec()));
            got.len() < 50
        })
        .unwrap();
        let want: Vec<(u64, Vec<u8>)> = model.range(from..).take(50).map(|(a, b)| (*a, b.clone())).collect();
        assert_eq!(got, want, "scan from {from}");
        if full {
            let all: Vec<(u64, Vec<u8>)> = model.iter().map(|(a, b)| (*a, b.clone())).collect();
            assert!(full_scan(t) == all, "full scan differs from the model ({} entries)", model.len());
        }
    }

    /// A key near the model's keys: an existing one, a neighbour, or anything.
    fn probe(rng: &mut StdRng, model: &BTreeMap<u64, Vec<u8>>) -> u64 {
        let k = rng.gen_range(0..KEYS);
        match rng.gen_range(0..4) {
            0 => k,
            1 => model.range(k..).next().map(|e| *e.0).unwrap_or(k).saturating_sub(1),
            2 => u64::MAX - rng.gen_range(0..3),
            _ => model.range(k..).next().map(|e| *e.0).unwrap_or(k),
        }
    }

    const KEYS: u64 = 1 << 40;

    #[test]
    fn random_operations_match_a_btreemap_model_and_empty_nodes_are_freed() {
        let dev = new_device();
        let vol = volume(&dev);
        let ibuf = new_inode(&vol);
        let free_before = vol.alloc.free_blocks();
        let mut rng = StdRng::seed_from_u64(0xb7ee);
        let mut model: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
        let mut nodes: i64 = 0;
        let mut max_level = 0;
        // (operations, percent inserts, largest value)
        let phases = [(5000, 95, 24), (4000, 80, MAX_VALUE), (3000, 55, 200), (4000, 20, MAX_VALUE)];
        for (pi, &(ops, insert_pct, maxv)) in phases.iter().enumerate() {
            let mut done = 0;
            while done < ops {
                let h = vol.journal.begin().unwrap();
                let mut t = TreeWrite::new(&vol.cache, &vol.alloc, &h, &ibuf);
                for _ in 0..50 {
                    if rng.gen_range(0..100) < insert_pct || model.is_empty() {
                        // New keys mostly, some replacements of existing ones.
                        let k = if rng.gen_bool(0.15) && !model.is_empty() { probe(&mut rng, &model) } else { rng.gen_range(0..KEYS) };
                        let v = value(&mut rng, k, maxv);
                        assert_eq!(t.insert(k, &v).unwrap(), model.insert(k, v), "insert({k}) old value");
                    } else {
                        let k = if rng.gen_bool(0.9) {
                            model.range(rng.gen_range(0..KEYS)..).next().or(model.iter().next()).map(|e| *e.0).unwrap()
                        } else {
                            rng.gen_range(0..KEYS)
                        };
                        assert_eq!(t.remove(k).unwrap(), model.remove(&k), "remove({k})");
                    }
                }
                nodes += t.blocks_delta;
                drop(h);
                vol.commit().unwrap();
                done += 50;
                max_level = max_level.max(root_level(&ibuf));
                let t = TreeRead { cache: &vol.cache, inode_buf: &ibuf };
                check_against(&t, &model, &mut rng, done % 1000 == 0);
                let blocks = t.node_blocks().unwrap();
                assert_eq!(blocks.len() as i64, nodes, "phase {pi}: node blocks vs blocks_delta");
                assert_eq!(blocks.iter().collect::<HashSet<_>>().len(), blocks.len(), "a node block is used twice");
            }
        }
        assert!(max_level >= 2, "the tree never grew past one level below the root (max level {max_level})");

        // Everything survives a clean close and a re-read from disk.
        let ino = ibuf.blkno;
        drop(ibuf);
        vol.close().unwrap();
        drop(vol);
        let dev2 = Arc::new(CrashDevice::from_image(dev.crash_image(|_| false)));
        let vol = volume(&dev2);
        let ibuf = vol.cache.get(ino, BlockType::Inode, Cover::Volume).unwrap();
        {
            let t = TreeRead { cache: &vol.cache, inode_buf: &ibuf };
            check_against(&t, &model, &mut rng, true);
        }

        // Remove everything in random order: every node block is freed, the root is an empty leaf.
        let mut keys: Vec<u64> = model.keys().copied().collect();
        for i in (1..keys.len()).rev() {
            keys.swap(i, rng.gen_range(0..=i));
        }
        for chunk in keys.chunks(200) {
            let h = vol.journal.begin().unwrap();
            let mut t = TreeWrite::new(&vol.cache, &vol.alloc, &h, &ibuf);
            for k in chunk {
                assert!(t.remove(*k).unwrap().is_some(), "remove({k}) of a present key");
                model.remove(k);
            }
            assert_eq!(t.remove(chunk[0]).unwrap(), None, "second remove of one key");
            nodes += t.blocks_delta;
            drop(h);
            vol.commit().unwrap();
            let t = TreeRead { cache: &vol.cache, inode_buf: &ibuf };
            assert_eq!(t.node_blocks().unwrap().len() as i64, nodes);
        }
        let t = TreeRead { cache: &vol.cache, inode_buf: &ibuf };
        assert!(full_scan(&t).is_empty());
        assert_eq!(t.node_blocks().unwrap(), Vec::<BlockNo>::new(), "node blocks left after emptying the tree");
        assert_eq!(root_level(&ibuf), 0, "an empty tree is a leaf root");
        assert_eq!(t.last_le(u64::MAX).unwrap(), None);
        assert_eq!(vol.alloc.free_blocks(), free_before, "every node block went back to the allocator");
    }

    #[test]
    fn values_of_the_limit_size_split_cleanly_and_oversized_values_are_refused() {
        let dev = new_device();
        let vol = volume(&dev);
        let ibuf = new_inode(&vol);
        let h = vol.journal.begin().unwrap();
        let mut t = TreeWrite::new(&vol.cache, &vol.alloc, &h, &ibuf);
        assert!(matches!(t.insert(1, &vec![0u8; MAX_VALUE + 1]), Err(FsError::Invalid(_))));
        // Descending keys of maximal values: every insert lands in the first leaf.
        let mut model = BTreeMap::new();
        for k in (0..400u64).rev() {
            let v = vec![(k % 251) as u8; MAX_VALUE];
            t.insert(k * 3, &v).unwrap();
            model.insert(k * 3, v);
        }
        // Empty values and a replacement that grows a value to the limit.
        t.insert(1, &[]).unwrap();
        model.insert(1, vec![]);
        t.insert(1, &vec![9u8; MAX_VALUE]).unwrap();
        model.insert(1, vec![9u8; MAX_VALUE]);
        let delta = t.blocks_delta;
        drop(h);
        vol.commit().unwrap();
        let t = TreeRead { cache: &vol.cache, inode_buf: &ibuf };
        let all: Vec<(u64, Vec<u8>)> = model.iter().map(|(a, b)| (*a, b.clone())).collect();
        assert!(full_scan(&t) == all);
        assert_eq!(t.node_blocks().unwrap().len() as i64, delta);
        assert!(root_level(&ibuf) >= 1);
        let h = vol.journal.begin().unwrap();
        let mut t = TreeWrite::new(&vol.cache, &vol.alloc, &h, &ibuf);
        t.clear().unwrap();
        assert_eq!(t.blocks_delta, -delta, "clear frees every node block");
        assert_eq!(t.read.node_blocks().unwrap(), Vec::<BlockNo>::new());
        assert_eq!(t.read.get(3).unwrap(), None);
    }
}
