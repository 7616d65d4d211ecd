//! lockd: the Raft-replicated distributed lock manager (issue 3 fills this in).
pub mod cli;
