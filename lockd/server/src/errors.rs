//! A replica's error type and the error kind each one travels as (see
//! `lockd_common::wire` for how a kind rides in a gRPC status).
use lockd_common::wire::{self, with_leader};
use lockd_common::ErrorKind;
use tonic::Status;

use crate::lock_table::LockError;

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

impl LockdError {
    /// The kind this error travels as.
    pub fn kind(&self) -> ErrorKind {
        match self {
            LockdError::Lock(l) => l.kind(),
            LockdError::NotLeader { .. } => ErrorKind::NotLeader,
            LockdError::Invalid(_) => ErrorKind::Invalid,
            LockdError::Timeout(_) => ErrorKind::Timeout,
            LockdError::Storage(_) | LockdError::Listen { .. } | LockdError::CorruptLog(_) => ErrorKind::Storage,
            LockdError::Removed { .. } => ErrorKind::Removed,
            LockdError::Raft(_) => ErrorKind::Raft,
            LockdError::Shutdown => ErrorKind::Shutdown,
        }
    }
}

impl LockError {
    /// The kind this error travels as.
    pub fn kind(&self) -> ErrorKind {
        match self {
            LockError::UnknownSession(_) => ErrorKind::UnknownSession,
            LockError::SessionRecovering(_) => ErrorKind::SessionRecovering,
            LockError::NotRecovering(_) => ErrorKind::NotRecovering,
            LockError::Input(e) => e.kind(),
            LockError::BadNodeName(_) => ErrorKind::BadNodeName,
            LockError::NotHeld { .. } => ErrorKind::NotHeld,
            LockError::NothingToCancel { .. } => ErrorKind::NothingToCancel,
            LockError::AlreadyHeld { .. } => ErrorKind::AlreadyHeld,
            LockError::AlreadyQueued { .. } => ErrorKind::AlreadyQueued,
            LockError::Deadlock { .. } => ErrorKind::Deadlock,
        }
    }
}

impl From<LockdError> for Status {
    fn from(e: LockdError) -> Status {
        let st = wire::status(e.kind(), e.to_string());
        match &e {
            LockdError::NotLeader { leader: Some(addr) } => with_leader(st, addr),
            _ => st,
        }
    }
}

impl From<LockError> for Status {
    fn from(e: LockError) -> Status {
        LockdError::Lock(e).into()
    }
}
