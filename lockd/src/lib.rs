//! lockd: the Raft-replicated distributed lock manager of mafs (see docs/lockd.md).
pub mod cli;
pub mod lock_table;
pub mod mode;

pub use mode::Mode;
