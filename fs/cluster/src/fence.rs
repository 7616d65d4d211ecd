//! Self-fencing: the node's device refuses writes once its lockd lease is not certain
//! (`mafs_core::device::FencedDevice` says why and what remains).
use std::sync::Arc;
use std::time::{Duration, Instant};

use lockd_client::LeaseWatch;
use mafs_core::device::{BlockDevice, FencedDevice, WriteDeadline};

/// Names a file that gets a line for every write and flush the node makes to the volume, with
/// CLOCK_MONOTONIC start and end and the lockd session it wrote under: the proof, for a test,
/// that a fenced node wrote nothing late.
pub const WRITE_LOG_ENV: &str = "MAFS_WRITE_LOG";

struct Lease(LeaseWatch);

impl WriteDeadline for Lease {
    fn deadline(&self) -> Option<Instant> {
        self.0.deadline()
    }
}

/// How long before its lease deadline a node stops writing: a tenth of the lease (0.3 s of the
/// default 3 s). Heartbeats go out every third of a lease, so a healthy node's deadline is
/// always more than half a lease away; the margin covers a write that passed the check and
/// then took a while to reach the device.
pub fn margin(lease: Duration) -> Duration {
    lease / 10
}

/// `dev` as the node may use it: writes refused from its lease deadline minus [`margin`].
pub(crate) fn fence(dev: Arc<dyn BlockDevice>, lease: LeaseWatch, length: Duration, session: u64) -> Arc<dyn BlockDevice> {
    let log = std::env::var_os(WRITE_LOG_ENV).and_then(|p| {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&p)
            .map_err(|e| tracing::warn!("cannot open the write log {}: {e}", p.to_string_lossy()))
            .ok()
            .map(|f| (f, format!("session{session}")))
    });
    Arc::new(FencedDevice::new(dev, Arc::new(Lease(lease)), margin(length), log))
}
