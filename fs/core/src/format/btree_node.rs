//! Index tree nodes: the B+tree every inode carries (keyed by u64). The root node is the
//! inode's inline area, every other node a tree node block after its 32-byte block header.
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 2 | level (0 = leaf) |
//! | 2 | 2 | entry count |
//! | 4 | 4 | reserved, 0 |
//! | 8 | … | entries |
//!
//! Leaf entry: key u64, value length u16, value. Internal entry: key u64 (a lower bound of
//! the keys below), child block u64. A zeroed area is an empty leaf.
use super::header::HEADER_LEN;
use super::inode::{INLINE_LEN, INLINE_OFFSET};
use super::{record, record_mut, BLOCK_SIZE};
use crate::error::{FsError, Result};
use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
struct NodeHead {
    level: U16,
    count: U16,
    reserved: U32,
}

/// A leaf entry's fixed part; `vlen` bytes of value follow it.
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
struct LeafHead {
    key: U64,
    vlen: U16,
}

#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
struct KidEntry {
    key: U64,
    child: U64,
}

const NODE_HEAD_LEN: usize = std::mem::size_of::<NodeHead>();
const LEAF_HEAD_LEN: usize = std::mem::size_of::<LeafHead>();
const KID_LEN: usize = std::mem::size_of::<KidEntry>();
const _: () = assert!(NODE_HEAD_LEN == 8 && LEAF_HEAD_LEN == 10 && KID_LEN == 16);

/// A leaf record: key and value.
pub type Record = (u64, Vec<u8>);

/// Where a node lies in its block, and how many bytes it has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodePlace {
    /// The root, in the inode's inline area.
    InodeRoot,
    /// A tree node block.
    Block,
}

impl NodePlace {
    pub fn offset(self) -> usize {
        match self {
            NodePlace::InodeRoot => INLINE_OFFSET,
            NodePlace::Block => HEADER_LEN,
        }
    }
    pub fn capacity(self) -> usize {
        match self {
            NodePlace::InodeRoot => INLINE_LEN,
            NodePlace::Block => BLOCK_SIZE - HEADER_LEN,
        }
    }
}

/// Bytes a leaf entry with a value of `vlen` bytes takes.
pub fn leaf_entry_len(vlen: usize) -> usize {
    LEAF_HEAD_LEN + vlen
}

/// Index of the child whose range holds `key`: the last whose key is <= `key`, else the first.
pub fn child_index(kids: &[(u64, u64)], key: u64) -> usize {
    kids.partition_point(|(k, _)| *k <= key).saturating_sub(1)
}

/// A node's bytes, read in place: the one parser of the layout. `blk` names the block in
/// errors (the inode's own block for a root).
#[derive(Clone, Copy)]
pub struct NodeView<'a> {
    area: &'a [u8],
    blk: u64,
}

impl<'a> NodeView<'a> {
    /// The node at `place` in `block`, the block numbered `blk`.
    pub fn new(block: &'a [u8], place: NodePlace, blk: u64) -> NodeView<'a> {
        NodeView { area: &block[place.offset()..], blk }
    }
    fn head(&self) -> &'a NodeHead {
        record(self.area)
    }
    pub fn level(&self) -> u16 {
        self.head().level.get()
    }
    pub fn count(&self) -> usize {
        self.head().count.get() as usize
    }
    fn overrun(&self) -> FsError {
        FsError::corrupt(self.blk, "index tree node entries run past the node")
    }

    /// A leaf's entries in order; an entry that runs past the node ends them with an error.
    pub fn leaf(self) -> impl Iterator<Item = Result<(u64, &'a [u8])>> {
        let mut o = NODE_HEAD_LEN;
        let mut left = self.count();
        std::iter::from_fn(move || {
            if left == 0 {
                return None;
            }
            left -= 1;
            let entry = LeafHead::ref_from_prefix(&self.area[o.min(self.area.len())..]).ok().and_then(|(h, rest)| {
                let vl = h.vlen.get() as usize;
                (vl <= rest.len()).then(|| (h.key.get(), &rest[..vl]))
            });
            match entry {
                Some((k, v)) => {
                    o += leaf_entry_len(v.len());
                    Some(Ok((k, v)))
                }
                None => {
                    left = 0;
                    Some(Err(self.overrun()))
                }
            }
        })
    }

    /// Bytes a leaf's header and entries take.
    pub fn leaf_bytes(self) -> Result<usize> {
        self.leaf().try_fold(NODE_HEAD_LEN, |used, e| Ok(used + leaf_entry_len(e?.1.len())))
    }

    /// An internal node's (key, child block) entries.
    pub fn kids(&self) -> Result<Vec<(u64, u64)>> {
        let (kids, _) = <[KidEntry]>::ref_from_prefix_with_elems(&self.area[NODE_HEAD_LEN..], self.count()).map_err(|_| self.overrun())?;
        Ok(kids.iter().map(|e| (e.key.get(), e.child.get())).collect())
    }
}

/// A node decoded to change it: a leaf's records or an internal node's children.
#[derive(Debug, Clone, Default)]
pub struct Node {
    pub level: u16,
    pub leaf: Vec<Record>,
    pub kids: Vec<(u64, u64)>,
}

impl Node {
    pub fn parse(v: NodeView) -> Result<Node> {
        let level = v.level();
        if level == 0 {
            let leaf = v.leaf().map(|e| e.map(|(k, val)| (k, val.to_vec()))).collect::<Result<_>>()?;
            Ok(Node { level, leaf, kids: Vec::new() })
        } else {
            Ok(Node { level, leaf: Vec::new(), kids: v.kids()? })
        }
    }

    /// Writes the node at `place` in `block` (the rest of its area zeroed); it must fit
    /// (`bytes() <= place.capacity()`).
    pub fn encode(&self, block: &mut [u8], place: NodePlace) {
        let area = &mut block[place.offset()..];
        area.fill(0);
        let count = if self.level == 0 { self.leaf.len() } else { self.kids.len() };
        *record_mut(area) = NodeHead { level: self.level.into(), count: (count as u16).into(), reserved: 0.into() };
        let mut o = NODE_HEAD_LEN;
        if self.level == 0 {
            for (k, v) in &self.leaf {
                *record_mut(&mut area[o..]) = LeafHead { key: (*k).into(), vlen: (v.len() as u16).into() };
                area[o + LEAF_HEAD_LEN..o + leaf_entry_len(v.len())].copy_from_slice(v);
                o += leaf_entry_len(v.len());
            }
        } else {
            for (k, c) in &self.kids {
                *record_mut(&mut area[o..]) = KidEntry { key: (*k).into(), child: (*c).into() };
                o += KID_LEN;
            }
        }
    }

    /// Bytes the node takes encoded.
    pub fn bytes(&self) -> usize {
        if self.level == 0 {
            NODE_HEAD_LEN + self.leaf.iter().map(|(_, v)| leaf_entry_len(v.len())).sum::<usize>()
        } else {
            NODE_HEAD_LEN + KID_LEN * self.kids.len()
        }
    }

    pub fn is_empty(&self) -> bool {
        if self.level == 0 {
            self.leaf.is_empty()
        } else {
            self.kids.is_empty()
        }
    }

    pub fn first_key(&self) -> u64 {
        if self.level == 0 {
            self.leaf.first().map(|e| e.0).unwrap_or(0)
        } else {
            self.kids.first().map(|e| e.0).unwrap_or(0)
        }
    }

    /// Splits off the upper half (by bytes) into a new node.
    pub fn split(&mut self) -> Node {
        if self.level == 0 {
            let total = self.bytes();
            let mut acc = NODE_HEAD_LEN;
            let mut at = 0;
            for (i, (_, v)) in self.leaf.iter().enumerate() {
                acc += leaf_entry_len(v.len());
                if acc > total / 2 {
                    at = i.max(1);
                    break;
                }
            }
            let at = at.clamp(1, self.leaf.len() - 1);
            Node { level: 0, leaf: self.leaf.split_off(at), kids: Vec::new() }
        } else {
            let at = self.kids.len() / 2;
            Node { level: self.level, leaf: Vec::new(), kids: self.kids.split_off(at) }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::le::*;

    #[test]
    fn nodes_keep_their_documented_offsets_and_parse_back() {
        let mut b = vec![0xffu8; BLOCK_SIZE];
        let leaf = Node { level: 0, leaf: vec![(7, b"ab".to_vec()), (9, Vec::new())], kids: Vec::new() };
        leaf.encode(&mut b, NodePlace::InodeRoot);
        let a = &b[INLINE_OFFSET..];
        assert_eq!((u16_at(a, 0), u16_at(a, 2), u32_at(a, 4)), (0, 2, 0));
        assert_eq!((u64_at(a, 8), u16_at(a, 16), &a[18..20], u64_at(a, 20), u16_at(a, 28)), (7, 2, &b"ab"[..], 9, 0));
        assert!(a[30..].iter().all(|&x| x == 0), "the rest of the area is zeroed");
        assert_eq!(leaf.bytes(), 30);
        let v = NodeView::new(&b, NodePlace::InodeRoot, 1);
        assert_eq!(v.leaf_bytes().unwrap(), 30);
        assert_eq!(Node::parse(v).unwrap().leaf, leaf.leaf);

        let inner = Node { level: 2, leaf: Vec::new(), kids: vec![(0, 100), (50, 101)] };
        inner.encode(&mut b, NodePlace::Block);
        let a = &b[HEADER_LEN..];
        assert_eq!((u16_at(a, 0), u16_at(a, 2), u64_at(a, 8), u64_at(a, 16), u64_at(a, 24), u64_at(a, 32)), (2, 2, 0, 100, 50, 101));
        assert_eq!(NodeView::new(&b, NodePlace::Block, 5).kids().unwrap(), inner.kids);
    }

    #[test]
    fn entries_running_past_the_node_are_corrupt() {
        let mut b = vec![0u8; BLOCK_SIZE];
        Node { level: 0, leaf: vec![(1, vec![3; 100])], kids: Vec::new() }.encode(&mut b, NodePlace::Block);
        put_u16(&mut b, HEADER_LEN + 16, 5000);
        let v = NodeView::new(&b, NodePlace::Block, 42);
        assert!(matches!(v.leaf().next(), Some(Err(FsError::Corrupt { block: 42, .. }))));
        assert!(Node::parse(v).is_err() && v.leaf_bytes().is_err());
        put_u16(&mut b, HEADER_LEN, 1);
        put_u16(&mut b, HEADER_LEN + 2, 300);
        assert!(NodeView::new(&b, NodePlace::Block, 42).kids().is_err(), "300 children do not fit a block");
    }

    #[test]
    fn the_child_search_picks_the_last_lower_bound() {
        let kids = [(10, 1), (20, 2), (30, 3)];
        let got: Vec<usize> = [0, 10, 15, 20, 29, 30, u64::MAX].iter().map(|&k| child_index(&kids, k)).collect();
        assert_eq!(got, [0, 0, 0, 1, 1, 2, 2]);
    }
}
