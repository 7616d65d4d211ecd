//! The values a caller hands the library or gets back from it.
use std::sync::Arc;
use std::time::Duration;

use lockd_common::{FencingToken, Mode};

/// A blocking notification: someone wants `resource` in `requested`, which conflicts with our
/// `held` mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockingNotice {
    pub resource: String,
    pub held: Mode,
    pub requested: Mode,
    /// The blocking grant's fencing token (`None` from a lockd that does not send it).
    pub token: Option<FencingToken>,
}

/// What to do with a lock another session is waiting for. The handler runs (on a blocking
/// thread) once no local user holds the lock, so it can flush whatever the lock covers first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Revoke {
    Release { lvb: Option<Vec<u8>> },
    Downgrade { mode: Mode, lvb: Option<Vec<u8>> },
    Keep,
}

pub type BlockingHandler = Arc<dyn Fn(&BlockingNotice) -> Revoke + Send + Sync>;

#[derive(Clone)]
pub struct SessionOptions {
    pub node_name: String,
    pub lease: Duration,
    /// Keep locks held (RECOVERING) after expiry until a survivor completes recovery.
    pub hold_locks_on_expiry: bool,
    /// Without a handler a blocked lock is released once unused.
    pub on_blocking: Option<BlockingHandler>,
    /// How long calls keep retrying through failovers before giving up.
    pub retry_for: Duration,
}

impl SessionOptions {
    pub fn new(node_name: impl Into<String>) -> Self {
        SessionOptions {
            node_name: node_name.into(),
            lease: Duration::from_secs(10),
            hold_locks_on_expiry: false,
            on_blocking: None,
            retry_for: Duration::from_secs(15),
        }
    }
}

#[derive(Debug, Clone, Copy, Default)]
pub struct LockOptions {
    /// Answer NotGranted at once instead of queueing.
    pub try_lock: bool,
    /// Queue wait; `None` = the server default (30 s).
    pub timeout: Option<Duration>,
}

impl LockOptions {
    /// Queue for at most `timeout`.
    pub fn wait(timeout: Duration) -> Self {
        LockOptions { try_lock: false, timeout: Some(timeout) }
    }

    /// Do not queue.
    pub fn try_now() -> Self {
        LockOptions { try_lock: true, timeout: None }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub resource: String,
    pub mode: Mode,
    /// The grant's fencing token. `None` only for a cached lock whose later conversion got no
    /// answer: lockd may hold it under a newer token that this session never heard.
    pub token: Option<FencingToken>,
    pub lvb: Vec<u8>,
}
