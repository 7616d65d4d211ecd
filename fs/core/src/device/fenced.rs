//! Self-fencing (design brief section 5): a cluster node writes to the shared device only while
//! its lockd lease is certainly alive. Past the deadline (minus a margin) lockd may have expired
//! the node, and a survivor may be replaying its journal or writing what it held; a write from
//! it then would land over theirs. Every write, zeroing and flush is refused from that moment
//! with [`FsError::Fenced`], which the journal's fatal latch turns into EIO for every later
//! change. Reads stay allowed: they harm nobody, and the node's requests fail at the volume
//! lock anyway.
//!
//! What remains (docs/design.md, "Fencing"): a write that passed the check and then waited
//! (the process paused between the check and the system call, or the device stalled) lands
//! late. lockd starts recovery no sooner than a lease plus its margin after the node's last
//! heartbeat, so only a pause longer than this margin plus lockd's can do it. Hard fencing by
//! the device (NVMe reservations on EBS io2) would close it; it is not assumed.
use super::BlockDevice;
use crate::error::{FsError, Result};
use parking_lot::Mutex;
use std::fs::File;
use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Until when this node's locks are certainly its own.
pub trait WriteDeadline: Send + Sync {
    /// The instant the node's lease runs out as it last knew it; `None` once the session is
    /// lost or closed.
    fn deadline(&self) -> Option<Instant>;
}

/// CLOCK_MONOTONIC in nanoseconds: one clock for every process on a host, so the write log of
/// one node and the recovery log of another can be compared.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime fills the timespec it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

pub struct FencedDevice {
    inner: Arc<dyn BlockDevice>,
    lease: Arc<dyn WriteDeadline>,
    /// Writes stop this long before the deadline.
    margin: Duration,
    /// Every write and flush with its CLOCK_MONOTONIC start and end (`MAFS_WRITE_LOG`), to
    /// show after the fact that nothing was written past the deadline.
    log: Option<Mutex<File>>,
    /// Names the lease in the log (a node that rejoins writes under a new one).
    label: String,
    fenced: Mutex<bool>,
}

impl FencedDevice {
    pub fn new(inner: Arc<dyn BlockDevice>, lease: Arc<dyn WriteDeadline>, margin: Duration, log: Option<(File, String)>) -> FencedDevice {
        let (log, label) = match log {
            Some((f, label)) => (Some(Mutex::new(f)), label),
            None => (None, String::new()),
        };
        FencedDevice { inner, lease, margin, log, label, fenced: Mutex::new(false) }
    }

    fn check(&self) -> Result<()> {
        let why = match self.lease.deadline() {
            Some(d) if Instant::now() + self.margin < d => return Ok(()),
            Some(_) => "its deadline has passed without a heartbeat answer",
            None => "the session is lost",
        };
        let mut fenced = self.fenced.lock();
        if !*fenced {
            *fenced = true;
            tracing::error!(
                at_ns = monotonic_ns(),
                "fenced: the lockd lease is not certain any more ({why}); no more writes to the volume"
            );
            self.log_line(&format!("{} fenced {}\n", monotonic_ns(), self.label));
        }
        Err(FsError::Fenced(why.into()))
    }

    fn logged<T>(&self, what: &str, offset: u64, len: u64, op: impl FnOnce() -> Result<T>) -> Result<T> {
        self.check()?;
        let start = monotonic_ns();
        let r = op();
        self.log_line(&format!("{start} {} {what} {offset} {len} {}\n", monotonic_ns(), self.label));
        r
    }

    /// One line, in one write: several devices of a process may share the log (O_APPEND).
    fn log_line(&self, line: &str) {
        if let Some(log) = &self.log {
            let _ = log.lock().write_all(line.as_bytes());
        }
    }
}

impl BlockDevice for FencedDevice {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        self.inner.read_at(buf, offset)
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> Result<()> {
        self.logged("write", offset, buf.len() as u64, || self.inner.write_at(buf, offset))
    }

    fn flush(&self) -> Result<()> {
        self.logged("flush", 0, 0, || self.inner.flush())
    }

    fn size(&self) -> u64 {
        self.inner.size()
    }

    fn forget_cached(&self, offset: u64, len: u64) {
        self.inner.forget_cached(offset, len)
    }

    fn zero_range(&self, offset: u64, len: u64) -> Result<()> {
        self.logged("zero", offset, len, || self.inner.zero_range(offset, len))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::CrashDevice;

    struct Lease(Mutex<Option<Instant>>);

    impl WriteDeadline for Lease {
        fn deadline(&self) -> Option<Instant> {
            *self.0.lock()
        }
    }

    #[test]
    fn writes_and_flushes_are_refused_from_the_deadline_minus_the_margin_and_reads_go_on() {
        let dev: Arc<dyn BlockDevice> = Arc::new(CrashDevice::new(1 << 20));
        let lease = Arc::new(Lease(Mutex::new(Some(Instant::now() + Duration::from_secs(60)))));
        let f = FencedDevice::new(dev.clone(), lease.clone(), Duration::from_secs(1), None);
        f.write_at(&[7u8; 4096], 0).unwrap();
        f.flush().unwrap();
        // Within the margin: already refused.
        *lease.0.lock() = Some(Instant::now() + Duration::from_millis(500));
        assert!(matches!(f.write_at(&[9u8; 4096], 0), Err(FsError::Fenced(_))));
        assert!(matches!(f.flush(), Err(FsError::Fenced(_))));
        assert!(matches!(f.zero_range(0, 4096), Err(FsError::Fenced(_))));
        let mut b = [0u8; 4096];
        f.read_at(&mut b, 0).unwrap();
        assert_eq!(b, [7u8; 4096], "a refused write reached the device");
        // A lost session: refused too.
        *lease.0.lock() = None;
        assert!(matches!(f.write_at(&[9u8; 4096], 0), Err(FsError::Fenced(_))));
    }
}
