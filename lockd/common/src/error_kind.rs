//! The kinds of error a replica answers with: one list for the replicas that send them and the
//! client that acts on them. Each has a wire name (the `x-lockd-error` header, see
//! the `wire` module) and a gRPC code; docs/lockd-protocol.md has the table.
use tonic::Code;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The session is gone (expired, closed, or its expiry is being committed).
    UnknownSession,
    /// The session expired and its locks await recovery.
    SessionRecovering,
    /// `CompleteRecovery` on a session that is not recovering.
    NotRecovering,
    BadResource,
    LvbTooLarge,
    BadNodeName,
    /// A malformed request (unknown mode or op, bad address).
    Invalid,
    /// Release or conversion of a lock the session does not hold.
    NotHeld,
    NothingToCancel,
    /// A new request for a resource held in another mode (use a conversion).
    AlreadyHeld,
    /// A request for another mode is already pending on that resource.
    AlreadyQueued,
    /// This conversion would deadlock with a pending one.
    Deadlock,
    /// Ask the leader (a follower names it in the `x-lockd-leader` header).
    NotLeader,
    /// The proposal did not commit in time (no quorum?).
    Timeout,
    /// raft refused the proposal (leadership changing).
    Raft,
    /// The replica is stopping.
    Shutdown,
    /// The replica was removed from the cluster and serves nothing.
    Removed,
    /// The replica's disk failed, or its log is damaged or gone.
    Storage,
}

impl ErrorKind {
    pub const ALL: [ErrorKind; 18] = [
        ErrorKind::UnknownSession,
        ErrorKind::SessionRecovering,
        ErrorKind::NotRecovering,
        ErrorKind::BadResource,
        ErrorKind::LvbTooLarge,
        ErrorKind::BadNodeName,
        ErrorKind::Invalid,
        ErrorKind::NotHeld,
        ErrorKind::NothingToCancel,
        ErrorKind::AlreadyHeld,
        ErrorKind::AlreadyQueued,
        ErrorKind::Deadlock,
        ErrorKind::NotLeader,
        ErrorKind::Timeout,
        ErrorKind::Raft,
        ErrorKind::Shutdown,
        ErrorKind::Removed,
        ErrorKind::Storage,
    ];

    /// The name the `x-lockd-error` header carries.
    pub fn name(self) -> &'static str {
        match self {
            ErrorKind::UnknownSession => "unknown-session",
            ErrorKind::SessionRecovering => "session-recovering",
            ErrorKind::NotRecovering => "not-recovering",
            ErrorKind::BadResource => "bad-resource",
            ErrorKind::LvbTooLarge => "lvb-too-large",
            ErrorKind::BadNodeName => "bad-node-name",
            ErrorKind::Invalid => "invalid",
            ErrorKind::NotHeld => "not-held",
            ErrorKind::NothingToCancel => "nothing-to-cancel",
            ErrorKind::AlreadyHeld => "already-held",
            ErrorKind::AlreadyQueued => "already-queued",
            ErrorKind::Deadlock => "deadlock",
            ErrorKind::NotLeader => "not-leader",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Raft => "raft",
            ErrorKind::Shutdown => "shutdown",
            ErrorKind::Removed => "removed",
            ErrorKind::Storage => "storage",
        }
    }

    /// The kind a header names, if this library knows it (a newer lockd may send others).
    pub fn from_name(name: &str) -> Option<ErrorKind> {
        ErrorKind::ALL.into_iter().find(|k| k.name() == name)
    }

    /// The gRPC code a status of this kind carries.
    pub fn code(self) -> Code {
        match self {
            ErrorKind::UnknownSession => Code::NotFound,
            ErrorKind::SessionRecovering | ErrorKind::NotRecovering | ErrorKind::NotHeld | ErrorKind::NothingToCancel => {
                Code::FailedPrecondition
            }
            ErrorKind::BadResource | ErrorKind::LvbTooLarge | ErrorKind::BadNodeName | ErrorKind::Invalid => Code::InvalidArgument,
            ErrorKind::AlreadyHeld | ErrorKind::AlreadyQueued => Code::AlreadyExists,
            ErrorKind::Deadlock => Code::Aborted,
            ErrorKind::NotLeader | ErrorKind::Timeout | ErrorKind::Raft | ErrorKind::Shutdown | ErrorKind::Removed => Code::Unavailable,
            ErrorKind::Storage => Code::Internal,
        }
    }

    /// Worth trying again, at another replica or later: about the replica or the log, not the
    /// request.
    pub fn is_retryable(self) -> bool {
        matches!(self, ErrorKind::NotLeader | ErrorKind::Timeout | ErrorKind::Raft | ErrorKind::Shutdown | ErrorKind::Removed)
    }
}

impl std::fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_are_unique() {
        for k in ErrorKind::ALL {
            assert_eq!(ErrorKind::from_name(k.name()), Some(k));
        }
        let mut names: Vec<_> = ErrorKind::ALL.iter().map(|k| k.name()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), ErrorKind::ALL.len());
        assert_eq!(ErrorKind::from_name("no-such-kind"), None);
    }
}
