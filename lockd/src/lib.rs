//! lockd: the Raft-replicated distributed lock manager of mafs (see docs/lockd.md).
pub mod cli;
pub mod client;
pub mod errors;
pub mod events;
pub mod lock_table;
pub mod mode;
pub mod raft_node;
pub mod raft_storage;
pub mod server;
pub mod state_machine;
pub mod transport;

pub use errors::LockdError;
pub use mode::Mode;
