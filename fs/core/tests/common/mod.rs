//! Helpers shared by the crash tests.
use mafs_core::device::{BlockDevice, CrashDevice};
use std::sync::Mutex;

/// A `CrashDevice` that also logs every write and flush, so that after the workload the image
/// can be rebuilt as of any past write: power cuts in the middle of operations and commits.
pub struct LogDevice {
    pub inner: CrashDevice,
    pub log: Mutex<Vec<Event>>,
}

pub enum Event {
    Write(u64, Vec<u8>),
    Flush,
}

impl LogDevice {
    pub fn new(size: u64) -> LogDevice {
        LogDevice { inner: CrashDevice::new(size), log: Mutex::new(Vec::new()) }
    }

    pub fn events(&self) -> usize {
        self.log.lock().unwrap().len()
    }
}

impl BlockDevice for LogDevice {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> mafs_core::error::Result<()> {
        self.inner.read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> mafs_core::error::Result<()> {
        let mut log = self.log.lock().unwrap();
        self.inner.write_at(buf, offset)?;
        log.push(Event::Write(offset, buf.to_vec()));
        Ok(())
    }
    fn flush(&self) -> mafs_core::error::Result<()> {
        let mut log = self.log.lock().unwrap();
        self.inner.flush()?;
        log.push(Event::Flush);
        Ok(())
    }
    fn size(&self) -> u64 {
        self.inner.size()
    }
}
