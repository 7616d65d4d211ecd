//! Command-line entry points that the `mafs` binary exposes: `mafs lockd ...` (run a replica,
//! administer a cluster) and `mafs lock ...` (run a command under a cluster lock).
//!
//! Modules, each using only those listed after it: `lock` (`mafs lock`), `admin` (a replica
//! and the cluster commands), `args` (the arguments), `runtime`.
mod admin;
mod args;
mod lock;
mod runtime;

pub use args::{
    EndpointArgs, LockCommand, LockdAction, LockdCommand, ServeArgs, EXIT_CANNOT_RUN, EXIT_LOCK_FAILED, EXIT_LOCK_LOST, EXIT_NOT_FOUND,
};
pub use lock::run_lock;
use mafs_proto::v1 as pb;
use runtime::{init_tracing, runtime};

pub fn run_lockd(cmd: LockdCommand) -> anyhow::Result<i32> {
    init_tracing();
    let rt = runtime()?;
    match cmd.action {
        None => rt.block_on(admin::serve(cmd.serve)),
        Some(LockdAction::Status { ep, json }) => rt.block_on(admin::status(ep.list(), json)),
        Some(LockdAction::Dump { ep, prefix, json }) => rt.block_on(admin::dump(ep.list(), prefix, json)),
        Some(LockdAction::AddMember { ep, id, addr }) => {
            rt.block_on(admin::membership(ep.list(), pb::membership_request::Op::Add, id, addr))
        }
        Some(LockdAction::RemoveMember { ep, id }) => {
            rt.block_on(admin::membership(ep.list(), pb::membership_request::Op::Remove, id, String::new()))
        }
    }
}
