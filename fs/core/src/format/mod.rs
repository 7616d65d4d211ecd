//! The on-disk format of a mafs volume. Every structure here is documented byte by byte in
//! `docs/on-disk-format.md`; change both together.
//!
//! Each record has one type here, and its byte layout is declared once: the fixed parts of
//! the allocation group header, the extent, the directory entry and the index tree node are
//! `#[repr(C)]` structs of little-endian fields (zerocopy), so a field's offset is where it
//! stands in its struct, checked against the documented size at compile time.
pub mod ag;
pub mod btree_node;
pub mod change_map;
pub mod dirent;
pub mod extent;
pub mod header;
pub mod inode;
pub mod layout;
pub mod numbers;
pub mod slot;
pub mod superblock;

pub use numbers::{BlockNo, InodeNo};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

pub const BLOCK_SIZE: usize = 4096;
pub const BLOCK_SHIFT: u32 = 12;
const _: () = assert!(BLOCK_SIZE == 1 << BLOCK_SHIFT);
/// Bumped on any incompatible change; a volume of another version is refused with a message.
pub const FORMAT_VERSION: u32 = 1;
pub const MAX_NAME_LEN: usize = 255;

/// The fixed-layout record `T` at the start of `bytes`, read in place. Records are taken from
/// whole blocks or from lengths already checked, so a shorter slice is a bug.
fn record<T: FromBytes + KnownLayout + Immutable + Unaligned>(bytes: &[u8]) -> &T {
    match T::ref_from_prefix(bytes) {
        Ok((r, _)) => r,
        Err(_) => panic!("{} bytes cannot hold a {}-byte record", bytes.len(), std::mem::size_of::<T>()),
    }
}

/// [`record`], to change in place.
fn record_mut<T: FromBytes + IntoBytes + KnownLayout + Unaligned>(bytes: &mut [u8]) -> &mut T {
    let len = bytes.len();
    match T::mut_from_prefix(bytes) {
        Ok((r, _)) => r,
        Err(_) => panic!("{len} bytes cannot hold a {}-byte record", std::mem::size_of::<T>()),
    }
}

/// Little-endian field access on a block buffer.
pub mod le {
    pub fn u16_at(b: &[u8], o: usize) -> u16 {
        u16::from_le_bytes([b[o], b[o + 1]])
    }
    pub fn u32_at(b: &[u8], o: usize) -> u32 {
        u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
    }
    pub fn u64_at(b: &[u8], o: usize) -> u64 {
        let mut a = [0u8; 8];
        a.copy_from_slice(&b[o..o + 8]);
        u64::from_le_bytes(a)
    }
    pub fn i64_at(b: &[u8], o: usize) -> i64 {
        u64_at(b, o) as i64
    }
    pub fn put_u16(b: &mut [u8], o: usize, v: u16) {
        b[o..o + 2].copy_from_slice(&v.to_le_bytes());
    }
    pub fn put_u32(b: &mut [u8], o: usize, v: u32) {
        b[o..o + 4].copy_from_slice(&v.to_le_bytes());
    }
    pub fn put_u64(b: &mut [u8], o: usize, v: u64) {
        b[o..o + 8].copy_from_slice(&v.to_le_bytes());
    }
    pub fn put_i64(b: &mut [u8], o: usize, v: i64) {
        put_u64(b, o, v as u64)
    }
}
