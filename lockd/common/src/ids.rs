//! Identifiers that travel between client, replicas and the log. On the wire (and in the log's
//! JSON) a fencing token or request id of 0 means "none" or "unknown"; in the code that is
//! `Option::None`, never a 0 to compare with.
use std::num::NonZeroU64;

use serde::{Deserialize, Serialize};

/// Assigned by the replicated state machine from 1 on, never reused.
pub type SessionId = u64;

/// A grant's fencing token: unique and increasing over every grant of the cluster (conversions
/// included), so whatever a lock protects can refuse a stale holder.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct FencingToken(NonZeroU64);

impl FencingToken {
    /// The token of a wire field, where 0 means none.
    pub fn from_wire(v: u64) -> Option<FencingToken> {
        NonZeroU64::new(v).map(FencingToken)
    }

    /// A wire field's value for `token` (0 for none).
    pub fn to_wire(token: Option<FencingToken>) -> u64 {
        token.map_or(0, FencingToken::get)
    }

    pub fn get(self) -> u64 {
        self.0.get()
    }

    /// The token issued after `last` grants: `last + 1` (tokens start at 1).
    pub fn following(last: u64) -> FencingToken {
        FencingToken(NonZeroU64::MIN.saturating_add(last))
    }
}

impl std::fmt::Display for FencingToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// Names one Lock call (chosen by the replica that serves it), so that the cancel proposed when
/// that call goes away withdraws nothing a retry has taken over.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RequestId(NonZeroU64);

impl RequestId {
    pub fn new(v: u64) -> Option<RequestId> {
        NonZeroU64::new(v).map(RequestId)
    }

    /// An id from random bits (0, the one value that is no id, becomes 1).
    pub fn from_random(bits: u64) -> RequestId {
        RequestId(NonZeroU64::new(bits).unwrap_or(NonZeroU64::MIN))
    }

    pub fn get(self) -> u64 {
        self.0.get()
    }
}

/// Serde for an `Option<RequestId>` that the log writes as a plain number, 0 for none (as
/// entries and snapshots did before it was an option): `#[serde(with = "request_id_or_zero")]`.
pub mod request_id_or_zero {
    use serde::{Deserialize, Deserializer, Serializer};

    use super::RequestId;

    pub fn serialize<S: Serializer>(id: &Option<RequestId>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(id.map_or(0, RequestId::get))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<RequestId>, D::Error> {
        Ok(RequestId::new(u64::deserialize(d)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Carrier {
        #[serde(default, with = "request_id_or_zero")]
        id: Option<RequestId>,
        token: Option<FencingToken>,
    }

    #[test]
    fn json_is_what_plain_numbers_gave() {
        let c = Carrier { id: RequestId::new(7), token: FencingToken::from_wire(9) };
        assert_eq!(serde_json::to_string(&c).unwrap(), r#"{"id":7,"token":9}"#);
        let none = Carrier { id: None, token: None };
        assert_eq!(serde_json::to_string(&none).unwrap(), r#"{"id":0,"token":null}"#);
        assert_eq!(serde_json::from_str::<Carrier>(r#"{"id":0,"token":null}"#).unwrap(), none);
        assert_eq!(serde_json::from_str::<Carrier>(r#"{"token":null}"#).unwrap(), none);
        assert!(serde_json::from_str::<FencingToken>("0").is_err());
        assert_eq!(FencingToken::to_wire(None), 0);
        assert_eq!(FencingToken::from_wire(0), None);
    }
}
