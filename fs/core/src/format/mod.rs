//! The on-disk format of a mafs volume. Every structure here is documented byte by byte in
//! `docs/on-disk-format.md`; change both together.
pub mod header;
pub mod inode;
pub mod layout;
pub mod slot;
pub mod superblock;

pub const BLOCK_SIZE: usize = 4096;
pub const BLOCK_SHIFT: u32 = 12;
/// Bumped on any incompatible change; a volume of another version is refused with a message.
pub const FORMAT_VERSION: u32 = 1;
pub const MAX_NAME_LEN: usize = 255;

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
