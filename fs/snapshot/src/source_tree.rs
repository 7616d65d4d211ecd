//! Reading a directory tree for an image build: every entry in a fixed order (names sorted
//! by their bytes, parents before children), its extended attributes, and a file's data
//! extents (holes skipped, so a sparse file stays sparse).
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use crate::error::{Result, SnapshotError};

pub struct Entry {
    /// Relative to the tree's root; empty for the root itself.
    pub rel: PathBuf,
    pub meta: std::fs::Metadata,
}

/// Every entry under `root` (the root first), parents before children, siblings by name.
pub fn walk(root: &Path) -> Result<Vec<Entry>> {
    let io = |p: &Path, e| SnapshotError::io(format!("cannot read {}", p.display()), e);
    let mut out = Vec::new();
    let mut stack = vec![Entry { rel: PathBuf::new(), meta: std::fs::symlink_metadata(root).map_err(|e| io(root, e))? }];
    while let Some(e) = stack.pop() {
        if e.meta.is_dir() {
            let dir = root.join(&e.rel);
            let mut kids: Vec<(Vec<u8>, PathBuf)> = std::fs::read_dir(&dir)
                .map_err(|err| io(&dir, err))?
                .map(|k| k.map(|k| (k.file_name().as_bytes().to_vec(), e.rel.join(k.file_name()))))
                .collect::<std::io::Result<_>>()
                .map_err(|err| io(&dir, err))?;
            // Popped in name order: pushed in reverse.
            kids.sort_by(|a, b| b.0.cmp(&a.0));
            for (_, rel) in kids {
                let p = root.join(&rel);
                let meta = std::fs::symlink_metadata(&p).map_err(|err| io(&p, err))?;
                stack.push(Entry { rel, meta });
            }
        }
        out.push(e);
    }
    Ok(out)
}

fn cpath(p: &Path) -> Result<CString> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| SnapshotError::Usage(format!("{} has a NUL byte in its name", p.display())))
}

/// The extended attributes of `p` (not following a symlink), sorted by name.
pub fn xattrs(p: &Path) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let c = cpath(p)?;
    let err = || SnapshotError::io(format!("cannot read the extended attributes of {}", p.display()), std::io::Error::last_os_error());
    // SAFETY: a null buffer asks for the size.
    let n = unsafe { libc::llistxattr(c.as_ptr(), std::ptr::null_mut(), 0) };
    if n < 0 {
        let e = std::io::Error::last_os_error();
        return if e.raw_os_error() == Some(libc::ENOTSUP) { Ok(Vec::new()) } else { Err(err()) };
    }
    let mut names = vec![0u8; n as usize];
    // SAFETY: `names` holds `n` bytes.
    let n = unsafe { libc::llistxattr(c.as_ptr(), names.as_mut_ptr().cast(), names.len()) };
    if n < 0 {
        return Err(err());
    }
    names.truncate(n as usize);
    let mut out = Vec::new();
    for name in names.split(|&b| b == 0).filter(|n| !n.is_empty()) {
        let cn = CString::new(name).map_err(|_| err())?;
        // SAFETY: a null buffer asks for the size.
        let len = unsafe { libc::lgetxattr(c.as_ptr(), cn.as_ptr(), std::ptr::null_mut(), 0) };
        if len < 0 {
            return Err(err());
        }
        let mut v = vec![0u8; len as usize];
        // SAFETY: `v` holds `len` bytes.
        let len = unsafe { libc::lgetxattr(c.as_ptr(), cn.as_ptr(), v.as_mut_ptr().cast(), v.len()) };
        if len < 0 {
            return Err(err());
        }
        v.truncate(len as usize);
        out.push((name.to_vec(), v));
    }
    out.sort();
    Ok(out)
}

/// The data extents (offset, length) of an open file: its holes left out.
pub fn data_extents(f: &std::fs::File, size: u64) -> Result<Vec<(u64, u64)>> {
    let fd = f.as_raw_fd();
    let mut out = Vec::new();
    let mut at = 0u64;
    while at < size {
        // SAFETY: lseek on an open descriptor.
        let data = unsafe { libc::lseek(fd, at as libc::off_t, libc::SEEK_DATA) };
        if data < 0 {
            if std::io::Error::last_os_error().raw_os_error() == Some(libc::ENXIO) {
                break; // only a hole is left
            }
            // No SEEK_DATA on this filesystem: all of it is data.
            return Ok(vec![(0, size)]);
        }
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(fd, data, libc::SEEK_HOLE) };
        let end = if hole < 0 { size } else { (hole as u64).min(size) };
        if end > data as u64 {
            out.push((data as u64, end - data as u64));
        }
        at = end;
    }
    Ok(out)
}

/// Identity of a file for hard links: (device, inode).
pub fn file_id(meta: &std::fs::Metadata) -> (u64, u64) {
    (meta.dev(), meta.ino())
}
