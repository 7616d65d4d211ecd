//! Directory index: entries live in the directory inode's tree, keyed by a 47-bit hash of the
//! name shifted left 16 bits plus a 16-bit collision counter. Lookup reads one leaf instead of
//! scanning the directory, and the key doubles as a readdir cookie that stays valid while the
//! directory changes (entries are returned in key order; an entry's key never changes).
//!
//! Entry value: inode u64, file type u8 (DT_*), name bytes.
use crate::btree::{TreeRead, TreeWrite};
use crate::error::{FsError, Result};
use crate::format::le::*;
use crate::format::MAX_NAME_LEN;

/// readdir offsets 1 and 2 are `.` and `..`; entry keys are always above them.
pub const FIRST_ENTRY_KEY: u64 = 1 << 16;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    pub key: u64,
    pub ino: u64,
    pub dtype: u8,
    pub name: Vec<u8>,
}

pub fn name_hash(name: &[u8]) -> u64 {
    let a = crc32c::crc32c_append(0x9e37_79b9, name) as u64;
    let b = crc32c::crc32c_append(0x85eb_ca6b, name) as u64;
    let h = ((a << 32) | b) & ((1 << 47) - 1);
    h.max(1)
}

pub fn check_name(name: &[u8]) -> Result<()> {
    if name.len() > MAX_NAME_LEN {
        return Err(FsError::NameTooLong);
    }
    if name.is_empty() || name.contains(&b'/') || name.contains(&0) || name == b"." || name == b".." {
        return Err(FsError::Invalid("invalid file name"));
    }
    Ok(())
}

fn encode(ino: u64, dtype: u8, name: &[u8]) -> Vec<u8> {
    let mut v = vec![0u8; 9 + name.len()];
    put_u64(&mut v, 0, ino);
    v[8] = dtype;
    v[9..].copy_from_slice(name);
    v
}

fn decode(key: u64, v: &[u8]) -> Option<DirEntry> {
    (v.len() >= 9).then(|| DirEntry { key, ino: u64_at(v, 0), dtype: v[8], name: v[9..].to_vec() })
}

/// Finds `name` in the directory.
pub fn lookup(t: &TreeRead, name: &[u8]) -> Result<Option<DirEntry>> {
    let h = name_hash(name);
    let mut found = None;
    t.scan(h << 16, &mut |k, v| {
        if k >> 16 != h {
            return false;
        }
        match decode(k, v) {
            Some(e) if e.name == name => {
                found = Some(e);
                false
            }
            _ => true,
        }
    })?;
    Ok(found)
}

/// Adds an entry (the caller has checked that the name is absent); returns its key.
pub fn add(t: &mut TreeWrite, name: &[u8], ino: u64, dtype: u8) -> Result<u64> {
    let h = name_hash(name);
    let mut next_free = 0u64;
    t.read.scan(h << 16, &mut |k, _| {
        if k >> 16 != h || (k & 0xffff) != next_free {
            return false;
        }
        next_free += 1;
        true
    })?;
    if next_free > 0xffff {
        return Err(FsError::NoSpace);
    }
    let key = (h << 16) | next_free;
    t.insert(key, &encode(ino, dtype, name))?;
    Ok(key)
}

/// Points an existing entry at another inode (rename over an existing name).
pub fn replace(t: &mut TreeWrite, key: u64, name: &[u8], ino: u64, dtype: u8) -> Result<()> {
    t.insert(key, &encode(ino, dtype, name)).map(|_| ())
}

pub fn remove(t: &mut TreeWrite, key: u64) -> Result<()> {
    t.remove(key)?.ok_or(FsError::NotFound).map(|_| ())
}

/// Entries with key >= `from`, in key order, until `f` returns false.
pub fn list(t: &TreeRead, from: u64, f: &mut dyn FnMut(DirEntry) -> bool) -> Result<()> {
    t.scan(from.max(FIRST_ENTRY_KEY), &mut |k, v| match decode(k, v) {
        Some(e) => f(e),
        None => true,
    })
}

pub fn dtype_of_mode(mode: u32) -> u8 {
    match mode & libc::S_IFMT {
        libc::S_IFDIR => libc::DT_DIR,
        libc::S_IFREG => libc::DT_REG,
        libc::S_IFLNK => libc::DT_LNK,
        libc::S_IFIFO => libc::DT_FIFO,
        libc::S_IFCHR => libc::DT_CHR,
        libc::S_IFBLK => libc::DT_BLK,
        libc::S_IFSOCK => libc::DT_SOCK,
        _ => libc::DT_UNKNOWN,
    }
}
