//! What lockd's client and its replicas share: the lock modes, the limits on names and lock
//! value blocks, the error kinds and how they travel in a gRPC status, fencing tokens and
//! request ids, and the replica roles `status` reports. No raft, no command line.
//!
//! Modules: `limits` uses `wire` and `error_kind`, `wire` uses `error_kind`; the others use
//! none.
pub mod error_kind;
pub mod ids;
pub mod limits;
pub mod mode;
pub mod role;
pub mod wire;

pub use error_kind::ErrorKind;
pub use ids::{FencingToken, RequestId, SessionId};
pub use limits::{validate_lvb, validate_many, validate_resource, InputError, MAX_LVB, MAX_NODE_NAME, MAX_RESOURCE_NAME, MAX_TRY_MANY};
pub use mode::Mode;
pub use role::Role;
