//! Extended attributes: all of an inode's attributes live in one metadata block (as on ext4,
//! whose limit is also one block), sorted by name.
//!
//! Block body (after the 32-byte header): count u16, then entries of name length u8, value
//! length u16, name bytes, value bytes.
use crate::error::{FsError, Result};
use crate::format::header::HEADER_LEN;
use crate::format::le::*;
use crate::format::BLOCK_SIZE;

pub const XATTR_AREA: usize = BLOCK_SIZE - HEADER_LEN - 2;
pub const MAX_NAME: usize = 255;

pub fn parse(block: &[u8], blkno: u64) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let n = u16_at(block, HEADER_LEN) as usize;
    let mut o = HEADER_LEN + 2;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        if o + 3 > block.len() {
            return Err(FsError::corrupt(blkno, "extended attribute entries run past the block"));
        }
        let nl = block[o] as usize;
        let vl = u16_at(block, o + 1) as usize;
        if o + 3 + nl + vl > block.len() {
            return Err(FsError::corrupt(blkno, "extended attribute entries run past the block"));
        }
        out.push((block[o + 3..o + 3 + nl].to_vec(), block[o + 3 + nl..o + 3 + nl + vl].to_vec()));
        o += 3 + nl + vl;
    }
    Ok(out)
}

pub fn encoded_len(attrs: &[(Vec<u8>, Vec<u8>)]) -> usize {
    attrs.iter().map(|(n, v)| 3 + n.len() + v.len()).sum()
}

pub fn serialize(attrs: &[(Vec<u8>, Vec<u8>)], block: &mut [u8]) -> Result<()> {
    if encoded_len(attrs) > XATTR_AREA {
        return Err(FsError::NoSpace);
    }
    block[HEADER_LEN..].fill(0);
    put_u16(block, HEADER_LEN, attrs.len() as u16);
    let mut o = HEADER_LEN + 2;
    for (n, v) in attrs {
        block[o] = n.len() as u8;
        put_u16(block, o + 1, v.len() as u16);
        block[o + 3..o + 3 + n.len()].copy_from_slice(n);
        block[o + 3 + n.len()..o + 3 + n.len() + v.len()].copy_from_slice(v);
        o += 3 + n.len() + v.len();
    }
    Ok(())
}
