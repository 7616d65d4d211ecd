//! The lockd half of the `mafs` command line on its own, for trying lockd without building the
//! filesystem: `cargo run -p mafs-lockd --example lockd-cli -- lockd --id 1 ...`.
use clap::{Parser, Subcommand};

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    Lockd(lockd::cli::LockdCommand),
    Lock(lockd::cli::LockCommand),
}

fn main() {
    let r = match Cli::parse().cmd {
        Cmd::Lockd(c) => lockd::cli::run_lockd(c),
        Cmd::Lock(c) => lockd::cli::run_lock(c),
    };
    match r {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("mafs: {e:#}");
            std::process::exit(1);
        }
    }
}
