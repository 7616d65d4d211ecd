//! The command-line arguments of `mafs lockd ...` and `mafs lock ...`.
use std::path::PathBuf;

use clap::{Args, Subcommand};
use lockd_common::Mode;

pub(crate) const DEFAULT_LISTEN: &str = "127.0.0.1:7400";
const ENDPOINTS_ENV: &str = "MAFS_LOCKD_ENDPOINTS";

/// `mafs lockd ...`: run a replica (no subcommand) or administer a running cluster.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct LockdCommand {
    #[command(subcommand)]
    pub action: Option<LockdAction>,
    #[command(flatten)]
    pub serve: ServeArgs,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// This replica's id (nonzero, unique in the cluster).
    #[arg(long, default_value_t = 1)]
    pub id: u64,
    /// Address to listen on (clients and the other replicas).
    #[arg(long, default_value = DEFAULT_LISTEN)]
    pub listen: String,
    /// Another bootstrap member, as ID=HOST:PORT (repeat for each).
    #[arg(long = "peer", value_name = "ID=ADDR")]
    pub peers: Vec<String>,
    /// Where the Raft log, hard state and snapshots live (default /var/lib/mafs/lockd-<id>).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Join a running cluster (after `mafs lockd add-member`) instead of bootstrapping; needs
    /// at least one --peer of a running member.
    #[arg(long)]
    pub join: bool,
    /// Snapshot and compact the log every N applied entries.
    #[arg(long, default_value_t = 10_000)]
    pub snapshot_every: u64,
    /// Extra milliseconds the leader waits past a lease before expiring a session.
    #[arg(long, default_value_t = 1000)]
    pub lease_margin_ms: u64,
}

#[derive(Debug, Args)]
pub struct EndpointArgs {
    /// Replica addresses, comma separated (default $MAFS_LOCKD_ENDPOINTS or 127.0.0.1:7400).
    #[arg(long, value_delimiter = ',')]
    pub endpoints: Vec<String>,
}

impl EndpointArgs {
    pub(crate) fn list(&self) -> Vec<String> {
        if !self.endpoints.is_empty() {
            return self.endpoints.clone();
        }
        match std::env::var(ENDPOINTS_ENV) {
            Ok(v) if !v.trim().is_empty() => v.split(',').map(|s| s.trim().to_string()).collect(),
            _ => vec![DEFAULT_LISTEN.to_string()],
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum LockdAction {
    /// Leader, term, members, sessions and lock counts, as seen by each replica.
    Status {
        #[command(flatten)]
        ep: EndpointArgs,
        /// Print JSON (for scripts) instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Resources with their holders and waiters (linearizable, from the leader).
    Dump {
        #[command(flatten)]
        ep: EndpointArgs,
        /// Only resources whose name starts with this.
        #[arg(long, default_value = "")]
        prefix: String,
        /// Print JSON (for scripts) instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Add a replica to the running cluster; then start it with --join.
    AddMember {
        #[command(flatten)]
        ep: EndpointArgs,
        /// The new replica's id (nonzero, not used by any member).
        #[arg(long)]
        id: u64,
        /// HOST:PORT where the new replica listens (its --listen).
        #[arg(long)]
        addr: String,
    },
    /// Remove a replica from the running cluster.
    RemoveMember {
        #[command(flatten)]
        ep: EndpointArgs,
        /// The id of the replica to remove; it stops taking part once the change commits.
        #[arg(long)]
        id: u64,
    },
}

/// `mafs lock` exits with the command's status, or one of these (as timeout(1) does):
/// the lock was lost while the command ran and the command was killed.
pub const EXIT_LOCK_LOST: i32 = 124;
/// `mafs lock` itself failed: lockd unreachable, the session could not be opened, ...
pub const EXIT_LOCK_FAILED: i32 = 125;
/// The command exists but could not be run.
pub const EXIT_CANNOT_RUN: i32 = 126;
/// The command was not found.
pub const EXIT_NOT_FOUND: i32 = 127;

/// Seconds as a finite, non-negative number of at most an hour (lockd's longest wait).
fn parse_wait_seconds(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|_| format!("{s:?} is not a number of seconds"))?;
    if !v.is_finite() || !(0.0..=3600.0).contains(&v) {
        return Err(format!("{s:?}: give a number of seconds from 0 to 3600 (lockd waits at most an hour)"));
    }
    Ok(v)
}

/// `mafs lock ...`: run a command while holding a cluster-wide lock (like flock(1)).
///
/// Exit status: the command's own (128+N if a signal N ended it); --conflict-exit-code (75)
/// if the lock was not granted; 124 if the lock was lost while the command ran (it is
/// killed, with its whole process group, before the lease runs out); 125 if `mafs lock`
/// itself failed (lockd unreachable, ...); 126/127 if the command could not be run / found.
#[derive(Debug, Args)]
pub struct LockCommand {
    #[command(flatten)]
    pub ep: EndpointArgs,
    /// Lock mode: NL, CR, CW, PR, PW or EX.
    #[arg(long, default_value = "EX")]
    pub mode: Mode,
    /// Seconds to wait for the lock, 0 to 3600 (exit with --conflict-exit-code if it is not
    /// granted in time).
    #[arg(long, default_value_t = 30.0, value_parser = parse_wait_seconds)]
    pub timeout: f64,
    /// Do not wait: exit with --conflict-exit-code at once if the lock is held in a
    /// conflicting mode.
    #[arg(long = "try")]
    pub try_lock: bool,
    /// Exit status when the lock is not granted (like flock -E), so that it cannot be
    /// mistaken for the command's own.
    #[arg(short = 'E', long, default_value_t = 75, value_parser = clap::value_parser!(i32).range(0..=255))]
    pub conflict_exit_code: i32,
    /// Session lease in milliseconds.
    #[arg(long, default_value_t = 10_000)]
    pub lease_ms: u64,
    /// Resource name (up to 256 bytes), e.g. `backup/nightly`.
    pub resource: String,
    /// The command to run while holding the lock; it sees MAFS_FENCING_TOKEN, MAFS_LOCK_MODE and
    /// MAFS_LOCK_RESOURCE, and `mafs lock` exits with its status.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
    pub command: Vec<String>,
}
