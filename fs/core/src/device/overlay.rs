//! A copy-on-write view of a device: reads see the device with every write made through the
//! view laid over it, and the device itself is never written. `mafs fsck` without `--repair`
//! checks through one, so that replaying a slot's journal (needed to check what a mount would
//! see) happens in memory and the promise "only --repair writes" holds.
use super::BlockDevice;
use crate::error::Result;
use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::sync::Arc;

/// Granularity of the overlay: metadata I/O is whole blocks, replayed journal blocks too.
const UNIT: u64 = crate::format::BLOCK_SIZE as u64;

pub struct OverlayDevice {
    base: Arc<dyn BlockDevice>,
    /// Unit index -> its current bytes.
    written: Mutex<BTreeMap<u64, Vec<u8>>>,
}

impl OverlayDevice {
    pub fn new(base: Arc<dyn BlockDevice>) -> OverlayDevice {
        OverlayDevice { base, written: Mutex::new(BTreeMap::new()) }
    }

    /// How many blocks the view holds that the device does not.
    pub fn blocks_written(&self) -> usize {
        self.written.lock().len()
    }

    fn unit(&self, u: u64, written: &BTreeMap<u64, Vec<u8>>) -> Result<Vec<u8>> {
        if let Some(b) = written.get(&u) {
            return Ok(b.clone());
        }
        let mut b = vec![0u8; UNIT as usize];
        let len = UNIT.min(self.base.size().saturating_sub(u * UNIT)) as usize;
        self.base.read_at(&mut b[..len], u * UNIT)?;
        Ok(b)
    }
}

impl BlockDevice for OverlayDevice {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        let written = self.written.lock();
        let end = offset + buf.len() as u64;
        let touched = written.range(offset / UNIT..end.div_ceil(UNIT)).next().is_some();
        if !touched {
            drop(written);
            return self.base.read_at(buf, offset);
        }
        let mut pos = offset;
        while pos < end {
            let u = pos / UNIT;
            let within = (pos % UNIT) as usize;
            let n = ((UNIT as usize - within) as u64).min(end - pos) as usize;
            let dst = &mut buf[(pos - offset) as usize..(pos - offset) as usize + n];
            match written.get(&u) {
                Some(b) => dst.copy_from_slice(&b[within..within + n]),
                None => self.base.read_at(dst, pos)?,
            }
            pos += n as u64;
        }
        Ok(())
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> Result<()> {
        let mut written = self.written.lock();
        let end = offset + buf.len() as u64;
        let mut pos = offset;
        while pos < end {
            let u = pos / UNIT;
            let within = (pos % UNIT) as usize;
            let n = ((UNIT as usize - within) as u64).min(end - pos) as usize;
            let mut b = self.unit(u, &written)?;
            b[within..within + n].copy_from_slice(&buf[(pos - offset) as usize..(pos - offset) as usize + n]);
            written.insert(u, b);
            pos += n as u64;
        }
        Ok(())
    }

    fn flush(&self) -> Result<()> {
        Ok(())
    }

    fn size(&self) -> u64 {
        self.base.size()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::CrashDevice;

    #[test]
    fn writes_are_seen_through_the_view_and_never_reach_the_device() {
        let dev = Arc::new(CrashDevice::new(64 * UNIT));
        dev.write_at(&[7u8; 10_000], 100).unwrap();
        let o = OverlayDevice::new(dev.clone());
        o.write_at(&[9u8; 5000], 4000).unwrap();
        let mut b = vec![0u8; 10_000];
        o.read_at(&mut b, 100).unwrap();
        assert!(b[..3900].iter().all(|x| *x == 7));
        assert!(b[3900..8900].iter().all(|x| *x == 9));
        assert!(b[8900..].iter().all(|x| *x == 7));
        dev.read_at(&mut b, 100).unwrap();
        assert!(b.iter().all(|x| *x == 7), "the device was written");
        assert_eq!(o.blocks_written(), 3);
    }
}
