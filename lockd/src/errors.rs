//! lockd's server-side error type and its mapping to gRPC status, both ways, in one place.
//! Every status carries `x-lockd-error: <kind>` so the client library maps it back to a typed
//! error without parsing messages, and NOT_LEADER carries `x-lockd-leader: <addr>`.
use tonic::{metadata::MetadataValue, Code, Status};

use crate::lock_table::LockError;

pub const LEADER_HEADER: &str = "x-lockd-leader";
pub const KIND_HEADER: &str = "x-lockd-error";
/// On a "removed" answer to a replica's raft messages: the log index of its removal.
pub const REMOVED_AT_HEADER: &str = "x-lockd-removed-at";

#[derive(Debug, thiserror::Error)]
pub enum LockdError {
    #[error(transparent)]
    Lock(#[from] LockError),
    #[error("not the leader{}", .leader.as_deref().map(|l| format!("; the leader is {l}")).unwrap_or_default())]
    NotLeader { leader: Option<String> },
    #[error("invalid request: {0}")]
    Invalid(String),
    #[error("no answer from the replicated log in time: {0}")]
    Timeout(String),
    #[error("storage: {0}")]
    Storage(String),
    /// The replica's durable state is damaged or gone: it cannot take part without risking
    /// committed history, so it stops. Only at startup or as the raft loop's fatal error.
    #[error("{0}. Replace this replica: `mafs lockd remove-member --id ID` on the cluster, wipe its data directory, `mafs lockd add-member --id ID --addr HOST:PORT`, then start it with --join --peer ...")]
    CorruptLog(String),
    /// This replica was removed from the cluster's membership; it takes no part any more.
    #[error("replica {id} was removed from the cluster and serves nothing; stop it (or add it back with `mafs lockd add-member` after wiping its data directory)")]
    Removed { id: u64 },
    /// Only at startup, never on the wire.
    #[error("cannot listen on {addr} (is another process using that port? pick another --listen address)")]
    Listen { addr: String, source: std::io::Error },
    #[error("raft: {0}")]
    Raft(String),
    #[error("the replica is shutting down")]
    Shutdown,
}

impl From<std::io::Error> for LockdError {
    fn from(e: std::io::Error) -> Self {
        LockdError::Storage(e.to_string())
    }
}

impl From<raft::Error> for LockdError {
    fn from(e: raft::Error) -> Self {
        LockdError::Raft(e.to_string())
    }
}

/// Wire name and gRPC code of an error kind; the client decodes with [`kind_of`].
pub fn code_and_kind(e: &LockdError) -> (Code, &'static str) {
    match e {
        LockdError::Lock(l) => match l {
            LockError::UnknownSession(_) => (Code::NotFound, "unknown-session"),
            LockError::SessionRecovering(_) => (Code::FailedPrecondition, "session-recovering"),
            LockError::NotRecovering(_) => (Code::FailedPrecondition, "not-recovering"),
            LockError::BadResource(_) => (Code::InvalidArgument, "bad-resource"),
            LockError::LvbTooLarge(_) => (Code::InvalidArgument, "lvb-too-large"),
            LockError::BadNodeName(_) => (Code::InvalidArgument, "bad-node-name"),
            LockError::NotHeld { .. } => (Code::FailedPrecondition, "not-held"),
            LockError::NothingToCancel { .. } => (Code::FailedPrecondition, "nothing-to-cancel"),
            LockError::AlreadyHeld { .. } => (Code::AlreadyExists, "already-held"),
            LockError::AlreadyQueued { .. } => (Code::AlreadyExists, "already-queued"),
            LockError::Deadlock { .. } => (Code::Aborted, "deadlock"),
        },
        LockdError::NotLeader { .. } => (Code::Unavailable, "not-leader"),
        LockdError::Invalid(_) => (Code::InvalidArgument, "invalid"),
        LockdError::Timeout(_) => (Code::Unavailable, "timeout"),
        LockdError::Storage(_) | LockdError::Listen { .. } | LockdError::CorruptLog(_) => (Code::Internal, "storage"),
        LockdError::Removed { .. } => (Code::Unavailable, "removed"),
        LockdError::Raft(_) => (Code::Unavailable, "raft"),
        LockdError::Shutdown => (Code::Unavailable, "shutdown"),
    }
}

impl From<LockdError> for Status {
    fn from(e: LockdError) -> Status {
        let (code, kind) = code_and_kind(&e);
        let mut st = Status::new(code, e.to_string());
        st.metadata_mut().insert(KIND_HEADER, MetadataValue::from_static(kind));
        if let LockdError::NotLeader { leader: Some(addr) } = &e {
            if let Ok(v) = MetadataValue::try_from(addr.as_str()) {
                st.metadata_mut().insert(LEADER_HEADER, v);
            }
        }
        st
    }
}

impl From<LockError> for Status {
    fn from(e: LockError) -> Status {
        LockdError::Lock(e).into()
    }
}

/// The `x-lockd-error` kind of a status, if a lockd server produced it.
pub fn kind_of(st: &Status) -> Option<&str> {
    st.metadata().get(KIND_HEADER).and_then(|v| v.to_str().ok())
}

/// The leader address a follower pointed at, if any.
pub fn leader_of(st: &Status) -> Option<String> {
    st.metadata().get(LEADER_HEADER).and_then(|v| v.to_str().ok()).map(str::to_string)
}
