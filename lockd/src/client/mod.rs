//! The lockd client library: a session that heartbeats, follows the leader across failovers,
//! caches granted locks and answers blocking notifications (see docs/lockd.md, "Client").
mod conn;
mod session;

pub use conn::Conn;
pub use session::{BlockingHandler, BlockingNotice, Grant, LockGuard, LockOptions, Revoke, Session, SessionOptions};

use tonic::{Code, Status};

use crate::errors::kind_of;

/// What a caller of the library can act on.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// The session is gone (lease lapsed, expired by the leader, or closed). Every lock it held is
    /// lost; the filesystem must stop writing and open a new session.
    #[error("lockd session lost: {0}")]
    SessionLost(String),
    #[error("lock on {resource:?} not granted (held in a conflicting mode)")]
    NotGranted { resource: String },
    #[error("timed out waiting for the lock on {resource:?}")]
    TimedOut { resource: String },
    #[error("conversion of {resource:?} would deadlock; release and retry")]
    Deadlock { resource: String },
    #[error("no lockd replica answered: {0}")]
    Unavailable(String),
    #[error("lockd refused the request ({kind}): {message}")]
    Rejected { kind: String, message: String },
    #[error("bad endpoint {0:?}")]
    BadEndpoint(String),
}

pub type Result<T> = std::result::Result<T, Error>;

/// Worth trying again (elsewhere or later): the replica is not the leader, is down, or the log
/// did not commit in time.
pub(crate) fn retryable(st: &Status) -> bool {
    matches!(st.code(), Code::Unavailable | Code::Cancelled | Code::DeadlineExceeded | Code::Unknown)
        && !matches!(kind_of(st), Some(k) if !matches!(k, "not-leader" | "timeout" | "raft" | "shutdown" | "removed"))
}

pub(crate) fn from_status(st: &Status, resource: &str) -> Error {
    match kind_of(st) {
        Some("unknown-session") | Some("session-recovering") => Error::SessionLost(st.message().to_string()),
        Some("deadlock") => Error::Deadlock { resource: resource.to_string() },
        Some(k) => Error::Rejected { kind: k.to_string(), message: st.message().to_string() },
        None => Error::Rejected { kind: format!("{:?}", st.code()), message: st.message().to_string() },
    }
}
