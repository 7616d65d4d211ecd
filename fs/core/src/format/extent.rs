//! File extents: the records of a regular file's (or a symlink's) index tree, keyed by the
//! first logical block they map.
//!
//! | offset | size | field (the tree record's value) |
//! |---|---|---|
//! | 0 | 8 | first physical block |
//! | 8 | 4 | length in blocks |
use super::{record, BlockNo};
use zerocopy::little_endian::{U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
struct ExtentValue {
    pblk: U64,
    len: U32,
}

/// Bytes of an extent's value in the tree.
pub const EXTENT_VALUE_LEN: usize = std::mem::size_of::<ExtentValue>();
const _: () = assert!(EXTENT_VALUE_LEN == 12);

/// Logical blocks `lblk..lblk + len` of a file, stored at physical blocks `pblk..pblk + len`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    pub lblk: u64,
    pub pblk: BlockNo,
    pub len: u64,
}

impl Extent {
    /// The extent a tree record holds, if it is one (a value of another length is not).
    pub fn decode(lblk: u64, value: &[u8]) -> Option<Extent> {
        (value.len() == EXTENT_VALUE_LEN).then(|| {
            let v: &ExtentValue = record(value);
            Extent { lblk, pblk: BlockNo(v.pblk.get()), len: v.len.get() as u64 }
        })
    }

    /// The physical block holding logical block `lblk` (which the extent must map).
    pub fn pblk_of(&self, lblk: u64) -> BlockNo {
        debug_assert!(lblk >= self.lblk && lblk - self.lblk < self.len, "block {lblk} outside {self:?}");
        self.pblk + (lblk - self.lblk)
    }

    /// The tree record's value; its key is `lblk`. `len` must fit in 32 bits.
    pub fn value(&self) -> [u8; EXTENT_VALUE_LEN] {
        debug_assert!(self.len <= u32::MAX as u64, "extent of {} blocks", self.len);
        let mut out = [0u8; EXTENT_VALUE_LEN];
        out.copy_from_slice(ExtentValue { pblk: self.pblk.get().into(), len: (self.len as u32).into() }.as_bytes());
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::le::*;

    #[test]
    fn an_extent_keeps_its_documented_offsets() {
        let e = Extent { lblk: 9, pblk: BlockNo(0x0102_0304_0506), len: 77 };
        let v = e.value();
        assert_eq!((u64_at(&v, 0), u32_at(&v, 8)), (0x0102_0304_0506, 77));
        assert_eq!(Extent::decode(9, &v), Some(e));
        assert_eq!(Extent::decode(9, &v[..11]), None, "not an extent record");
    }
}
