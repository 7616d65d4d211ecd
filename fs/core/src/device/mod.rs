//! Block devices: the one trait the filesystem reads and writes through, and its backends.
//!
//! The filesystem addresses the device in bytes; metadata I/O is always whole 4 KiB blocks at
//! block-aligned offsets, file data may be any size at any offset. `flush` is the only ordering
//! point: nothing written before it is promised durable until it returns.
mod crash;
mod fenced;
mod file;
mod overlay;

pub use crash::CrashDevice;
pub use fenced::{monotonic_ns, FencedDevice, WriteDeadline};
pub use file::{FileDevice, OpenOptions};
pub use overlay::OverlayDevice;

use crate::error::Result;

pub trait BlockDevice: Send + Sync {
    /// Reads exactly `buf.len()` bytes at `offset`; a read past the end is `ShortRead`.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()>;
    /// Writes all of `buf` at `offset`.
    fn write_at(&self, buf: &[u8], offset: u64) -> Result<()>;
    /// Makes every write that returned before this call durable (fdatasync / cache flush).
    fn flush(&self) -> Result<()>;
    /// Size of the device in bytes.
    fn size(&self) -> u64;
    /// Drops what this host caches of `len` bytes at `offset`, so the next read sees what
    /// another host wrote there (multi-mount protection reads a block another host updates).
    fn forget_cached(&self, _offset: u64, _len: u64) {}
    /// Makes `len` bytes at `offset` read back as zeros. Backends do it without writing the
    /// zeros where they can (fallocate ZERO_RANGE on files, BLKZEROOUT on block devices).
    fn zero_range(&self, offset: u64, len: u64) -> Result<()> {
        const CHUNK: usize = 1 << 20;
        let zeros = vec![0u8; CHUNK.min(len as usize)];
        let mut done = 0u64;
        while done < len {
            let n = ((len - done) as usize).min(CHUNK);
            self.write_at(&zeros[..n], offset + done)?;
            done += n as u64;
        }
        Ok(())
    }
}
