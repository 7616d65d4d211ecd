//! How an error kind (and what goes with it) travels in a gRPC status: every status a replica
//! makes carries `x-lockd-error: <kind>`, so the client maps it back to an [`ErrorKind`] without
//! parsing messages; NOT_LEADER carries `x-lockd-leader: <addr>`, and a "removed" answer to a
//! replica's raft messages `x-lockd-removed-at: <log index>`.
use tonic::metadata::MetadataValue;
use tonic::Status;

use crate::error_kind::ErrorKind;

pub const LEADER_HEADER: &str = "x-lockd-leader";
pub const KIND_HEADER: &str = "x-lockd-error";
/// On a "removed" answer to a replica's raft messages: the log index of its removal.
pub const REMOVED_AT_HEADER: &str = "x-lockd-removed-at";

/// A status of `kind` (its gRPC code and header) with `message`.
pub fn status(kind: ErrorKind, message: impl Into<String>) -> Status {
    let mut st = Status::new(kind.code(), message);
    st.metadata_mut().insert(KIND_HEADER, MetadataValue::from_static(kind.name()));
    st
}

/// The kind header of a status, as sent: `None` if no lockd replica made the status.
pub fn kind_name(st: &Status) -> Option<&str> {
    st.metadata().get(KIND_HEADER).and_then(|v| v.to_str().ok())
}

/// The kind of a status, if a lockd replica made it and the kind is one this library knows.
pub fn kind_of(st: &Status) -> Option<ErrorKind> {
    kind_name(st).and_then(ErrorKind::from_name)
}

/// The leader address a follower pointed at, if any.
pub fn leader_of(st: &Status) -> Option<String> {
    st.metadata().get(LEADER_HEADER).and_then(|v| v.to_str().ok()).map(str::to_string)
}

/// Adds the leader's address to a NOT_LEADER status (left out if it is no valid header value).
pub fn with_leader(mut st: Status, addr: &str) -> Status {
    if let Ok(v) = MetadataValue::try_from(addr) {
        st.metadata_mut().insert(LEADER_HEADER, v);
    }
    st
}

/// A "removed" status for a replica whose removal was applied at log index `at`.
pub fn with_removed_at(mut st: Status, at: u64) -> Status {
    st.metadata_mut().insert(REMOVED_AT_HEADER, MetadataValue::from(at));
    st
}

/// The log index of the removal a "removed" status names, if that is what `st` says.
pub fn removed_at(st: &Status) -> Option<u64> {
    if kind_of(st) != Some(ErrorKind::Removed) {
        return None;
    }
    st.metadata().get(REMOVED_AT_HEADER)?.to_str().ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kind_and_its_companions_survive_the_status() {
        for k in ErrorKind::ALL {
            let st = status(k, "m");
            assert_eq!((kind_of(&st), st.code()), (Some(k), k.code()));
        }
        let st = with_leader(status(ErrorKind::NotLeader, "m"), "10.0.0.1:7400");
        assert_eq!(leader_of(&st).as_deref(), Some("10.0.0.1:7400"));
        assert_eq!(removed_at(&with_removed_at(status(ErrorKind::Removed, "m"), 42)), Some(42));
        assert_eq!(removed_at(&with_removed_at(status(ErrorKind::Timeout, "m"), 42)), None);
        assert_eq!(kind_of(&Status::unavailable("plain")), None);
    }
}
