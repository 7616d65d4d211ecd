//! A regular file or a block device (`/dev/nvme1n1`, `/dev/nbd0`) as a mafs device, through
//! positioned reads and writes (pread/pwrite) and fdatasync, with optional O_DIRECT.
use super::BlockDevice;
use crate::error::{FsError, Result};
use std::cell::RefCell;
use std::fs::File;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::Path;

/// Alignment O_DIRECT needs for buffers, offsets and lengths (the logical block size of every
/// device we target is at most 4 KiB).
const DIRECT_ALIGN: usize = 4096;

#[derive(Debug, Clone, Default)]
pub struct OpenOptions {
    /// Bypass the host page cache (O_DIRECT). Unaligned I/O is bounced through aligned buffers.
    pub direct: bool,
    /// Create the file if missing (mkfs on a new volume file).
    pub create: bool,
    /// Size to give a regular file that is created or smaller (sparse).
    pub size: Option<u64>,
    pub read_only: bool,
}

pub struct FileDevice {
    file: File,
    size: u64,
    direct: bool,
    is_blockdev: bool,
}

fn io_err(offset: u64, e: std::io::Error) -> FsError {
    if e.raw_os_error() == Some(libc::ENOSPC) {
        FsError::DeviceFull { offset }
    } else {
        FsError::Io { offset, source: e }
    }
}

impl FileDevice {
    /// A block device (its size is the device's), not a regular file (whose size mkfs sets).
    pub fn is_block_device(&self) -> bool {
        self.is_blockdev
    }

    pub fn open(path: &Path, opts: &OpenOptions) -> Result<FileDevice> {
        let mut oo = std::fs::OpenOptions::new();
        oo.read(true).write(!opts.read_only).create(opts.create && !opts.read_only);
        if opts.direct {
            oo.custom_flags(libc::O_DIRECT);
        }
        let file = oo.open(path).map_err(|e| io_err(0, e))?;
        let meta = file.metadata().map_err(|e| io_err(0, e))?;
        let is_blockdev = meta.file_type().is_block_device();
        let size = if is_blockdev {
            let mut sz: u64 = 0;
            // BLKGETSIZE64 = _IOR(0x12, 114, size_t)
            const BLKGETSIZE64: libc::c_ulong = 0x80081272;
            // SAFETY: the ioctl writes one u64 into `sz`, which lives for the call.
            let rc = unsafe { libc::ioctl(file.as_raw_fd(), BLKGETSIZE64, &mut sz as *mut u64) };
            if rc != 0 {
                return Err(io_err(0, std::io::Error::last_os_error()));
            }
            sz
        } else {
            match opts.size {
                Some(want) if want > meta.len() && !opts.read_only => {
                    file.set_len(want).map_err(|e| io_err(want, e))?;
                    want
                }
                _ => meta.len(),
            }
        };
        Ok(FileDevice { file, size, direct: opts.direct, is_blockdev })
    }

    fn aligned(&self, buf_ptr: usize, len: usize, offset: u64) -> bool {
        !self.direct
            || (buf_ptr.is_multiple_of(DIRECT_ALIGN) && len.is_multiple_of(DIRECT_ALIGN) && offset.is_multiple_of(DIRECT_ALIGN as u64))
    }

    fn raw_pread(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        let (fd, ptr, len) = (self.file.as_raw_fd(), buf.as_mut_ptr(), buf.len());
        // SAFETY: each call writes at most len - done bytes into buf[done..].
        io_loop(
            len,
            offset,
            |done| unsafe { libc::pread(fd, ptr.add(done) as *mut _, len - done, (offset + done as u64) as libc::off_t) },
            |done| FsError::ShortRead { offset, wanted: len, got: done },
        )
    }

    fn raw_pwrite(&self, buf: &[u8], offset: u64) -> Result<()> {
        let (fd, ptr, len) = (self.file.as_raw_fd(), buf.as_ptr(), buf.len());
        // SAFETY: each call reads at most len - done bytes from buf[done..].
        io_loop(
            len,
            offset,
            |done| unsafe { libc::pwrite(fd, ptr.add(done) as *const _, len - done, (offset + done as u64) as libc::off_t) },
            |done| FsError::DeviceFull { offset: offset + done as u64 },
        )
    }

    /// The aligned window around [offset, offset+len) for O_DIRECT bounce I/O.
    fn window(offset: u64, len: usize) -> (u64, usize) {
        let a = DIRECT_ALIGN as u64;
        let start = offset / a * a;
        let end = (offset + len as u64).div_ceil(a) * a;
        (start, (end - start) as usize)
    }
}

/// Repeats one positioned read or write (`step(done)` transfers the rest from `done` on) until
/// `len` bytes are done, retrying EINTR; a transfer of 0 bytes is `on_zero(done)`.
fn io_loop(len: usize, offset: u64, mut step: impl FnMut(usize) -> isize, on_zero: impl Fn(usize) -> FsError) -> Result<()> {
    let mut done = 0;
    while done < len {
        let n = step(done);
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(io_err(offset + done as u64, e));
        }
        if n == 0 {
            return Err(on_zero(done));
        }
        done += n as usize;
    }
    Ok(())
}

/// Bounce buffers up to this size are kept, one per thread, between calls.
const KEPT_BOUNCE: usize = 4 << 20;

thread_local! {
    static BOUNCE: RefCell<Option<AlignedBuf>> = const { RefCell::new(None) };
}

/// Runs `f` on an aligned buffer of `len` bytes for unaligned O_DIRECT I/O (contents
/// undefined: `f` fills it). The thread's buffer is kept between calls: a fresh zeroed one each
/// time cost a page fault and a page clear per 4 KiB (perf: a fifth of the time of large
/// writes on a --direct-io mount).
fn with_bounce<R>(len: usize, f: impl FnOnce(&mut [u8]) -> R) -> R {
    if len > KEPT_BOUNCE {
        return f(AlignedBuf::new(len).as_mut());
    }
    BOUNCE.with(|cell| {
        // `f` does raw I/O and copies only: it never asks for a bounce buffer itself.
        let mut kept = cell.borrow_mut();
        let buf = match kept.take() {
            Some(b) if b.len >= len => kept.insert(b),
            _ => kept.insert(AlignedBuf::new(len.next_power_of_two().clamp(64 << 10, KEPT_BOUNCE))),
        };
        f(&mut buf.as_mut()[..len])
    })
}

/// A heap buffer aligned for O_DIRECT.
struct AlignedBuf {
    ptr: *mut u8,
    len: usize,
}

impl AlignedBuf {
    fn new(len: usize) -> AlignedBuf {
        let layout = std::alloc::Layout::from_size_align(len.max(DIRECT_ALIGN), DIRECT_ALIGN).expect("valid layout");
        // SAFETY: layout has non-zero size.
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        if ptr.is_null() {
            std::alloc::handle_alloc_error(layout);
        }
        AlignedBuf { ptr, len }
    }
    fn as_mut(&mut self) -> &mut [u8] {
        // SAFETY: ptr is valid for len bytes and uniquely owned.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        let layout = std::alloc::Layout::from_size_align(self.len.max(DIRECT_ALIGN), DIRECT_ALIGN).expect("valid layout");
        // SAFETY: allocated in new() with this layout.
        unsafe { std::alloc::dealloc(self.ptr, layout) }
    }
}

impl BlockDevice for FileDevice {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        if offset + buf.len() as u64 > self.size {
            return Err(FsError::ShortRead { offset, wanted: buf.len(), got: self.size.saturating_sub(offset) as usize });
        }
        if self.aligned(buf.as_ptr() as usize, buf.len(), offset) {
            return self.raw_pread(buf, offset);
        }
        let (start, len) = Self::window(offset, buf.len());
        with_bounce(len, |bounce| {
            self.raw_pread(bounce, start)?;
            let skip = (offset - start) as usize;
            buf.copy_from_slice(&bounce[skip..skip + buf.len()]);
            Ok(())
        })
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> Result<()> {
        if offset + buf.len() as u64 > self.size {
            return Err(FsError::DeviceFull { offset });
        }
        if self.aligned(buf.as_ptr() as usize, buf.len(), offset) {
            return self.raw_pwrite(buf, offset);
        }
        // Read-modify-write of the aligned window; callers serialize writes to one block.
        let (start, len) = Self::window(offset, buf.len());
        with_bounce(len, |bounce| {
            let skip = (offset - start) as usize;
            if skip != 0 || len != buf.len() {
                self.raw_pread(bounce, start)?;
            }
            bounce[skip..skip + buf.len()].copy_from_slice(buf);
            self.raw_pwrite(bounce, start)
        })
    }

    fn flush(&self) -> Result<()> {
        // SAFETY: plain syscall on an owned fd.
        let rc = unsafe { libc::fdatasync(self.file.as_raw_fd()) };
        if rc != 0 {
            return Err(io_err(0, std::io::Error::last_os_error()));
        }
        Ok(())
    }

    fn forget_cached(&self, offset: u64, len: u64) {
        if !self.direct {
            // SAFETY: advisory call on an owned fd; it cannot fail in a way that matters here
            // (the read that follows goes to the device or the cache either way).
            unsafe { libc::posix_fadvise(self.file.as_raw_fd(), offset as libc::off_t, len as libc::off_t, libc::POSIX_FADV_DONTNEED) };
        }
    }

    fn size(&self) -> u64 {
        self.size
    }

    fn zero_range(&self, offset: u64, len: u64) -> Result<()> {
        if self.is_blockdev {
            // BLKZEROOUT = _IO(0x12, 127); range must be 512-aligned, which all our callers are.
            const BLKZEROOUT: libc::c_ulong = 0x127f;
            if offset.is_multiple_of(512) && len.is_multiple_of(512) {
                let range = [offset, len];
                // SAFETY: the ioctl reads two u64 from `range`.
                let rc = unsafe { libc::ioctl(self.file.as_raw_fd(), BLKZEROOUT, range.as_ptr()) };
                if rc == 0 {
                    return Ok(());
                }
            }
        } else {
            // SAFETY: plain syscall on an owned fd.
            let rc = unsafe {
                libc::fallocate(
                    self.file.as_raw_fd(),
                    libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE,
                    offset as libc::off_t,
                    len as libc::off_t,
                )
            };
            if rc == 0 {
                return Ok(());
            }
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ENOSPC) {
                return Err(FsError::DeviceFull { offset });
            }
        }
        // Fall back to writing zeros (the trait's default path).
        const CHUNK: usize = 1 << 20;
        let mut zeros = AlignedBuf::new(CHUNK);
        let mut done = 0u64;
        while done < len {
            let n = ((len - done) as usize).min(CHUNK);
            let z = &zeros.as_mut()[..n];
            self.write_at(z, offset + done)?;
            done += n as u64;
        }
        Ok(())
    }
}
