//! lockd's replica: the Raft-replicated distributed lock manager of mafs (see docs/lockd.md).
//!
//! Modules, each using only those listed after it: `server` (the gRPC services), `raft_node`
//! (the raft loop), `transport` (raft messages to the peers), `raft_storage` (the durable log),
//! `events` (effects to clients), `state_machine` (what the log means), `errors` (the
//! replica's errors and their kinds), `lock_table` (the lock state).
pub mod errors;
pub mod events;
pub mod lock_table;
pub mod raft_node;
pub mod raft_storage;
pub mod server;
pub mod state_machine;
pub mod transport;

pub use errors::LockdError;
pub use raft_node::ReplicaConfig;
