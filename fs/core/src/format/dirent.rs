//! Directory entries: the records of a directory's index tree.
//!
//! Key: (47-bit hash of the name) << 16 | 16-bit collision counter. The hash is
//! `(crc32c(0x9e3779b9, name) << 32 | crc32c(0x85ebca6b, name)) mod 2^47`, at least 1, so every
//! entry key is at least [`FIRST_ENTRY_KEY`] (readdir cookies 1 and 2 are `.` and `..`).
//!
//! | offset | size | field (the tree record's value) |
//! |---|---|---|
//! | 0 | 8 | inode |
//! | 8 | 1 | file type (DT_*) |
//! | 9 | 1–255 | name |
use super::{record, InodeNo};
use zerocopy::little_endian::U64;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

/// The fixed part of an entry's value; the name follows it.
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
struct DirentHead {
    ino: U64,
    dtype: u8,
}

const HEAD_LEN: usize = std::mem::size_of::<DirentHead>();
const _: () = assert!(HEAD_LEN == 9);

const COUNTER_BITS: u32 = 16;
/// The highest collision counter: one more entry under a hash finds no key.
pub const MAX_COUNTER: u64 = (1 << COUNTER_BITS) - 1;
/// The lowest key an entry can have (hash 1, counter 0).
pub const FIRST_ENTRY_KEY: u64 = 1 << COUNTER_BITS;

pub fn name_hash(name: &[u8]) -> u64 {
    let a = crc32c::crc32c_append(0x9e37_79b9, name) as u64;
    let b = crc32c::crc32c_append(0x85eb_ca6b, name) as u64;
    let h = ((a << 32) | b) & ((1 << 47) - 1);
    h.max(1)
}

/// The key of the entry with name hash `hash` and collision counter `counter`.
pub fn entry_key(hash: u64, counter: u64) -> u64 {
    debug_assert!(counter <= MAX_COUNTER);
    (hash << COUNTER_BITS) | counter
}

/// The name hash a key is filed under.
pub fn key_hash(key: u64) -> u64 {
    key >> COUNTER_BITS
}

/// The collision counter of a key.
pub fn key_counter(key: u64) -> u64 {
    key & MAX_COUNTER
}

/// Bytes of the value of an entry named `name`.
pub fn value_len(name: &[u8]) -> usize {
    HEAD_LEN + name.len()
}

/// The value of an entry pointing at `ino`, of file type `dtype`, named `name`.
pub fn encode_value(ino: InodeNo, dtype: u8, name: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(value_len(name));
    v.extend_from_slice(DirentHead { ino: ino.get().into(), dtype }.as_bytes());
    v.extend_from_slice(name);
    v
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    pub key: u64,
    pub ino: InodeNo,
    pub dtype: u8,
    pub name: Vec<u8>,
}

impl DirEntry {
    /// The entry a directory tree record holds, if it is one (fsck reads salvaged records).
    pub fn decode(key: u64, value: &[u8]) -> Option<DirEntry> {
        (value.len() >= HEAD_LEN).then(|| {
            let h: &DirentHead = record(value);
            DirEntry { key, ino: InodeNo(h.ino.get()), dtype: h.dtype, name: value[HEAD_LEN..].to_vec() }
        })
    }

    /// The tree record's value; its key is `key`.
    pub fn value(&self) -> Vec<u8> {
        encode_value(self.ino, self.dtype, &self.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::le::*;

    #[test]
    fn an_entry_keeps_its_documented_offsets() {
        let e = DirEntry { key: entry_key(name_hash(b"abc"), 2), ino: InodeNo(0x0102_0304), dtype: 4, name: b"abc".to_vec() };
        let v = e.value();
        assert_eq!((v.len(), u64_at(&v, 0), v[8], &v[9..]), (value_len(b"abc"), 0x0102_0304, 4, &b"abc"[..]));
        assert_eq!(DirEntry::decode(e.key, &v), Some(e.clone()));
        assert_eq!(DirEntry::decode(e.key, &v[..8]), None);
        assert_eq!((key_hash(e.key), key_counter(e.key)), (name_hash(b"abc"), 2));
        assert!(entry_key(1, 0) == FIRST_ENTRY_KEY && name_hash(b"a") >= 1 && name_hash(b"a") < 1 << 47);
    }
}
