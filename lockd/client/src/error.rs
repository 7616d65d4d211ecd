//! The errors a caller of the library can act on, and how a gRPC status becomes one.
use lockd_common::wire::{kind_name, kind_of};
use lockd_common::ErrorKind;
use tonic::{Code, Status};

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
    Rejected { kind: Refusal, message: String },
    #[error("bad endpoint {0:?}")]
    BadEndpoint(String),
    /// An answer that does not fit the request (a lockd with a bug, or not lockd).
    #[error("lockd answered out of protocol: {0}")]
    Protocol(String),
}

/// Who refused a request, and how they said so.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// A lockd replica, with an error kind this library knows.
    Lockd(ErrorKind),
    /// A lockd replica, with a kind this library does not know (a newer lockd's).
    UnknownKind(String),
    /// Not a lockd replica (no kind header): the gRPC code alone.
    Status(Code),
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Lockd(k) => f.write_str(k.name()),
            Refusal::UnknownKind(name) => f.write_str(name),
            Refusal::Status(code) => write!(f, "{code:?}"),
        }
    }
}

impl Error {
    /// Whether lockd refused the request with error kind `kind`.
    pub fn is_refusal(&self, kind: ErrorKind) -> bool {
        matches!(self, Error::Rejected { kind: Refusal::Lockd(k), .. } if *k == kind)
    }

    /// A refusal of kind `kind` made here, for what lockd would refuse the same way.
    pub(crate) fn refused(kind: ErrorKind, message: String) -> Error {
        Error::Rejected { kind: Refusal::Lockd(kind), message }
    }
}

pub type Result<T> = std::result::Result<T, Error>;

/// Worth trying again (elsewhere or later): the replica is not the leader, is down, or the log
/// did not commit in time. A status of a kind this library does not know is not retried.
pub(crate) fn retryable(st: &Status) -> bool {
    // RESOURCE_EXHAUSTED comes from the transport, never from lockd itself (an HTTP/2 peer
    // that closed the connection with ENHANCE_YOUR_CALM): the next connection may do.
    let transport_exhausted = st.code() == Code::ResourceExhausted && kind_name(st).is_none();
    transport_exhausted
        || matches!(st.code(), Code::Unavailable | Code::Cancelled | Code::DeadlineExceeded | Code::Unknown)
            && kind_name(st).is_none_or(|name| ErrorKind::from_name(name).is_some_and(ErrorKind::is_retryable))
}

pub(crate) fn from_status(st: &Status, resource: &str) -> Error {
    let message = st.message().to_string();
    match kind_of(st) {
        Some(ErrorKind::UnknownSession | ErrorKind::SessionRecovering) => Error::SessionLost(message),
        Some(ErrorKind::Deadlock) => Error::Deadlock { resource: resource.to_string() },
        Some(k) => Error::Rejected { kind: Refusal::Lockd(k), message },
        None => match kind_name(st) {
            Some(name) => Error::Rejected { kind: Refusal::UnknownKind(name.to_string()), message },
            None => Error::Rejected { kind: Refusal::Status(st.code()), message },
        },
    }
}
