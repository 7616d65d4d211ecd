//! Command-line entry points that the `mafs` binary exposes: `mafs lockd ...` and `mafs lock ...`.
use clap::{Args, Subcommand};

/// `mafs lockd ...`
#[derive(Debug, Args)]
pub struct LockdCommand {
    #[command(subcommand)]
    pub action: Option<LockdAction>,
}

#[derive(Debug, Subcommand)]
pub enum LockdAction {}

/// `mafs lock ...`
#[derive(Debug, Args)]
pub struct LockCommand {
    pub resource: String,
}

pub fn run_lockd(_cmd: LockdCommand) -> anyhow::Result<i32> {
    anyhow::bail!("lockd is not built yet")
}

pub fn run_lock(_cmd: LockCommand) -> anyhow::Result<i32> {
    anyhow::bail!("lockd is not built yet")
}
