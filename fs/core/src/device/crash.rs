//! A device in memory that remembers which writes were flushed, so tests can cut the power at
//! any point: every write since the last flush is dropped, or a random subset of them survives
//! (a disk may reorder and persist any part of its write cache).
use super::BlockDevice;
use crate::error::{FsError, Result};
use parking_lot::Mutex;

struct State {
    /// What a reader sees now.
    live: Vec<u8>,
    /// What survives a power cut for certain.
    durable: Vec<u8>,
    /// Writes since the last flush, in issue order.
    pending: Vec<(u64, Vec<u8>)>,
    flushes: u64,
    writes: u64,
    /// After this many more writes, every write fails with EIO (fault injection).
    fail_after_writes: Option<u64>,
}

pub struct CrashDevice {
    state: Mutex<State>,
    size: u64,
}

impl CrashDevice {
    pub fn new(size: u64) -> CrashDevice {
        Self::from_image(vec![0; size as usize])
    }

    pub fn from_image(image: Vec<u8>) -> CrashDevice {
        let size = image.len() as u64;
        CrashDevice {
            state: Mutex::new(State {
                live: image.clone(),
                durable: image,
                pending: Vec::new(),
                flushes: 0,
                writes: 0,
                fail_after_writes: None,
            }),
            size,
        }
    }

    /// The image after a power cut: durable bytes plus those pending writes that `keep` selects
    /// (called with the write's index among the pending ones).
    pub fn crash_image(&self, mut keep: impl FnMut(usize) -> bool) -> Vec<u8> {
        let st = self.state.lock();
        let mut img = st.durable.clone();
        for (i, (off, data)) in st.pending.iter().enumerate() {
            if keep(i) {
                img[*off as usize..*off as usize + data.len()].copy_from_slice(data);
            }
        }
        img
    }

    /// Number of writes issued since the last flush.
    pub fn pending_writes(&self) -> usize {
        self.state.lock().pending.len()
    }

    pub fn counters(&self) -> (u64, u64) {
        let st = self.state.lock();
        (st.writes, st.flushes)
    }

    /// Makes every write after the next `n` fail with EIO, like a dying disk.
    pub fn fail_writes_after(&self, n: u64) {
        self.state.lock().fail_after_writes = Some(n);
    }
}

impl BlockDevice for CrashDevice {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        let st = self.state.lock();
        let end = offset as usize + buf.len();
        if end > st.live.len() {
            return Err(FsError::ShortRead { offset, wanted: buf.len(), got: st.live.len().saturating_sub(offset as usize) });
        }
        buf.copy_from_slice(&st.live[offset as usize..end]);
        Ok(())
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> Result<()> {
        let mut st = self.state.lock();
        if let Some(n) = st.fail_after_writes {
            if n == 0 {
                return Err(FsError::Io { offset, source: std::io::Error::from_raw_os_error(libc::EIO) });
            }
            st.fail_after_writes = Some(n - 1);
        }
        let end = offset as usize + buf.len();
        if end > st.live.len() {
            return Err(FsError::DeviceFull { offset });
        }
        st.live[offset as usize..end].copy_from_slice(buf);
        st.pending.push((offset, buf.to_vec()));
        st.writes += 1;
        Ok(())
    }

    fn flush(&self) -> Result<()> {
        let mut st = self.state.lock();
        let pending = std::mem::take(&mut st.pending);
        for (off, data) in pending {
            st.durable[off as usize..off as usize + data.len()].copy_from_slice(&data);
        }
        st.flushes += 1;
        Ok(())
    }

    fn size(&self) -> u64 {
        self.size
    }
}
