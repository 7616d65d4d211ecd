//! Command-line entry points that the `mafs` binary exposes: `mafs lockd ...` and `mafs lock ...`.
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use mafs_proto::v1 as pb;

use crate::client::{Conn, Error as ClientError, LockOptions, Session, SessionOptions};
use crate::mode::Mode;
use crate::raft_node::ReplicaConfig;

const DEFAULT_LISTEN: &str = "127.0.0.1:7400";
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
    fn list(&self) -> Vec<String> {
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

/// One thread for everything: the replica's raft loop, its gRPC server and its peer links share
/// it, so a commit never waits for another thread to wake up (see `raft_node`).
fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting the tokio runtime")
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("MAFS_LOG").unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

pub fn run_lockd(cmd: LockdCommand) -> anyhow::Result<i32> {
    init_tracing();
    let rt = runtime()?;
    match cmd.action {
        None => rt.block_on(serve(cmd.serve)),
        Some(LockdAction::Status { ep, json }) => rt.block_on(status(ep.list(), json)),
        Some(LockdAction::Dump { ep, prefix, json }) => rt.block_on(dump(ep.list(), prefix, json)),
        Some(LockdAction::AddMember { ep, id, addr }) => rt.block_on(membership(ep.list(), pb::membership_request::Op::Add, id, addr)),
        Some(LockdAction::RemoveMember { ep, id }) => {
            rt.block_on(membership(ep.list(), pb::membership_request::Op::Remove, id, String::new()))
        }
    }
}

fn parse_peers(id: u64, listen: &str, peers: &[String]) -> anyhow::Result<BTreeMap<u64, String>> {
    let mut members = BTreeMap::from([(id, listen.to_string())]);
    for p in peers {
        let (pid, addr) = p.split_once('=').with_context(|| format!("--peer {p:?}: expected ID=HOST:PORT"))?;
        let pid: u64 = pid.parse().with_context(|| format!("--peer {p:?}: bad id"))?;
        if pid == 0 || members.insert(pid, addr.to_string()).is_some() {
            bail!("--peer {p:?}: id must be nonzero and unique (this replica is {id})");
        }
    }
    Ok(members)
}

async fn serve(a: ServeArgs) -> anyhow::Result<i32> {
    if a.id == 0 {
        bail!("--id must be nonzero");
    }
    let members = parse_peers(a.id, &a.listen, &a.peers)?;
    let data_dir = a.data_dir.clone().unwrap_or_else(|| PathBuf::from(format!("/var/lib/mafs/lockd-{}", a.id)));
    if a.join && a.peers.is_empty() {
        bail!(
            "--join needs at least one --peer ID=HOST:PORT of a running member: the joining \
             replica must know where the others are to answer the leader"
        );
    }
    let members = probe_peers(a.id, &a.listen, members, a.join).await?;
    let mut cfg = ReplicaConfig::new(a.id, a.listen.clone(), data_dir);
    cfg.members = members;
    cfg.join = a.join;
    cfg.snapshot_every = a.snapshot_every.max(1);
    cfg.lease_margin = Duration::from_millis(a.lease_margin_ms);
    crate::server::serve(cfg).await?;
    Ok(0)
}

/// Asks every `--peer` who it is before starting: a peer that answers with our own id means
/// two replicas would share one (refused); one that answers with another id than its flag
/// says is warned about. A joiner also learns every member's address from the first peer
/// that answers (it must reach the leader, which may not be among its `--peer`s).
async fn probe_peers(id: u64, listen: &str, mut members: BTreeMap<u64, String>, join: bool) -> anyhow::Result<BTreeMap<u64, String>> {
    let peers: Vec<(u64, String)> = members.iter().filter(|(pid, _)| **pid != id).map(|(pid, addr)| (*pid, addr.clone())).collect();
    let mut answered = false;
    for (pid, addr) in peers {
        let Ok(st) = status_of(&addr, Duration::from_millis(300)).await else {
            continue;
        };
        answered = true;
        if st.id == id {
            bail!(
                "the replica at {addr} (given as --peer {pid}={addr}) already runs with --id \
                 {id}: every replica needs an id of its own"
            );
        }
        if st.id != pid {
            tracing::warn!("--peer {pid}={addr} answers as replica {}: check the --peer list", st.id);
        }
        if let Some(m) = st.members.iter().find(|m| m.id == id && m.addr != listen) {
            // The cluster knows replica `id` elsewhere: a second process with our id, or we
            // moved. Only a live replica answering there with our id is refused.
            let twin = status_of(&m.addr, Duration::from_millis(300)).await;
            if twin.is_ok_and(|t| t.id == id) {
                bail!(
                    "replica {id} already runs at {} (the cluster's address for it): every \
                     replica needs an id of its own",
                    m.addr
                );
            }
            tracing::warn!("the cluster has this replica ({id}) at {}, not at --listen {listen}", m.addr);
        }
        if join {
            for m in &st.members {
                members.entry(m.id).or_insert_with(|| m.addr.clone());
            }
        }
    }
    if join && !answered {
        tracing::warn!(
            "no --peer answered yet; this replica waits for the leader to reach it and can \
             answer only the replicas its --peer list names"
        );
    }
    Ok(members)
}

async fn status_of(addr: &str, wait: Duration) -> Result<pb::StatusResponse, String> {
    let conn = Conn::new(&[addr.to_string()]).map_err(|e| e.to_string())?;
    conn.call("status", Instant::now() + wait, wait, |mut c| async move { c.status(pb::StatusRequest {}).await })
        .await
        .map_err(|e| e.to_string())
}

async fn status(endpoints: Vec<String>, json: bool) -> anyhow::Result<i32> {
    let mut rows = Vec::new();
    for e in &endpoints {
        rows.push((e.clone(), status_of(e, Duration::from_secs(1)).await));
    }
    // The leader of the highest term any replica knows of.
    let best = rows.iter().filter_map(|(_, r)| r.as_ref().ok()).filter(|s| s.leader_id != 0).max_by_key(|s| (s.term, s.role == "leader"));
    let leader = best.map(|s| (s.leader_id, s.leader_addr.clone(), s.term));
    let leader_view = rows.iter().filter_map(|(_, r)| r.as_ref().ok()).find(|s| s.role == "leader");
    if json {
        let replicas: Vec<serde_json::Value> = rows
            .iter()
            .map(|(e, r)| match r {
                Ok(s) => serde_json::json!({
                    "endpoint": e, "id": s.id, "role": s.role, "leader_id": s.leader_id, "term": s.term,
                    "commit_index": s.commit_index, "applied_index": s.applied_index,
                    "snapshot_index": s.snapshot_index, "last_log_index": s.last_log_index,
                    "sessions": s.sessions, "resources": s.resources, "granted_locks": s.granted_locks,
                    "waiting_locks": s.waiting_locks,
                }),
                Err(err) => serde_json::json!({ "endpoint": e, "error": err }),
            })
            .collect();
        let v = serde_json::json!({
            "leader": leader.as_ref().map(|l| l.0),
            "leader_addr": leader.as_ref().map(|l| l.1.clone()),
            "term": leader.as_ref().map(|l| l.2),
            "members": leader_view.or(best).map(|s| s.members.iter().map(|m| serde_json::json!({"id": m.id, "addr": m.addr})).collect::<Vec<_>>()),
            "sessions": leader_view.map(|s| s.sessions),
            "resources": leader_view.map(|s| s.resources),
            "granted_locks": leader_view.map(|s| s.granted_locks),
            "waiting_locks": leader_view.map(|s| s.waiting_locks),
            "replicas": replicas,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        match &leader {
            Some((id, addr, term)) => println!("leader: {id} ({addr}), term {term}"),
            None => println!("no leader known"),
        }
        if let Some(s) = leader_view.or(best) {
            let members: Vec<String> = s.members.iter().map(|m| format!("{}={}", m.id, m.addr)).collect();
            println!("members: {}", members.join(" "));
        }
        if let Some(s) = leader_view {
            println!("sessions: {}  resources: {}  granted: {}  waiting: {}", s.sessions, s.resources, s.granted_locks, s.waiting_locks);
        }
        println!("{:<22} {:>3} {:<13} {:>6} {:>9} {:>9} {:>9}", "ENDPOINT", "ID", "ROLE", "TERM", "COMMIT", "APPLIED", "SNAPSHOT");
        for (e, r) in &rows {
            match r {
                Ok(s) => println!(
                    "{:<22} {:>3} {:<13} {:>6} {:>9} {:>9} {:>9}",
                    e, s.id, s.role, s.term, s.commit_index, s.applied_index, s.snapshot_index
                ),
                Err(err) => println!("{e:<22} unreachable: {err}"),
            }
        }
    }
    Ok(if leader.is_some() { 0 } else { 1 })
}

fn mode_name(v: i32) -> &'static str {
    Mode::from_wire(v).map(Mode::name).unwrap_or("??")
}

async fn dump(endpoints: Vec<String>, prefix: String, json: bool) -> anyhow::Result<i32> {
    let conn = Conn::new(&endpoints)?;
    let d = conn
        .call("dump", Instant::now() + Duration::from_secs(10), Duration::from_secs(6), |mut c| {
            let prefix = prefix.clone();
            async move { c.dump(pb::DumpRequest { prefix }).await }
        })
        .await?;
    let entry = |e: &pb::LockEntry| serde_json::json!({"session": e.session_id, "node": e.node_name, "mode": mode_name(e.mode), "granted_mode": mode_name(e.granted_mode), "token": e.fencing_token});
    if json {
        let v = serde_json::json!({
            "resources": d.resources.iter().map(|r| serde_json::json!({
                "name": r.name,
                "lvb": r.lvb.iter().map(|b| format!("{b:02x}")).collect::<String>(),
                "granted": r.granted.iter().map(entry).collect::<Vec<_>>(),
                "converting": r.converting.iter().map(entry).collect::<Vec<_>>(),
                "waiting": r.waiting.iter().map(entry).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
            "sessions": d.sessions.iter().map(|s| serde_json::json!({"id": s.session_id, "node": s.node_name, "lease_ms": s.lease_ms, "state": s.state, "locks": s.locks})).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(0);
    }
    println!("sessions:");
    for s in &d.sessions {
        println!("  {:>6} {:<24} lease {:>6} ms  {:<10} {} locks", s.session_id, s.node_name, s.lease_ms, s.state, s.locks);
    }
    println!("resources:");
    for r in &d.resources {
        println!("  {}{}", r.name, if r.lvb.is_empty() { String::new() } else { format!("  lvb {} bytes", r.lvb.len()) });
        for e in &r.granted {
            println!("    granted    {} session {} ({}) token {}", mode_name(e.mode), e.session_id, e.node_name, e.fencing_token);
        }
        for e in &r.converting {
            println!("    converting {}->{} session {} ({})", mode_name(e.granted_mode), mode_name(e.mode), e.session_id, e.node_name);
        }
        for e in &r.waiting {
            println!("    waiting    {} session {} ({})", mode_name(e.mode), e.session_id, e.node_name);
        }
    }
    Ok(0)
}

async fn membership(endpoints: Vec<String>, op: pb::membership_request::Op, id: u64, addr: String) -> anyhow::Result<i32> {
    let conn = Conn::new(&endpoints)?;
    let req = pb::MembershipRequest { op: op as i32, id, addr };
    let r = conn
        .call("membership", Instant::now() + Duration::from_secs(20), Duration::from_secs(12), |mut c| {
            let req = req.clone();
            async move { c.change_membership(req).await }
        })
        .await?;
    let members: Vec<String> = r.members.iter().map(|m| format!("{}={}", m.id, m.addr)).collect();
    println!("members: {}", members.join(" "));
    Ok(0)
}

/// The signals `mafs lock` passes on to its command, and a terminal sends its foreground job.
fn job_signals() -> libc::sigset_t {
    // SAFETY: filling a sigset we own.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT, libc::SIGTSTP, libc::SIGTTIN, libc::SIGTTOU] {
            libc::sigaddset(&mut set, sig);
        }
        set
    }
}

pub fn run_lock(cmd: LockCommand) -> anyhow::Result<i32> {
    // Whoever started us may have these blocked; they must reach us to be passed on.
    // SAFETY: changing this (only, so far) thread's mask before the runtime starts its threads.
    unsafe { libc::pthread_sigmask(libc::SIG_UNBLOCK, &job_signals(), std::ptr::null_mut()) };
    init_tracing();
    let code = runtime()?.block_on(lock_and_run(cmd)).unwrap_or_else(|e| {
        eprintln!("mafs lock: {e:#}");
        EXIT_LOCK_FAILED
    });
    Ok(code)
}

/// How long before the lease runs out the command is killed: killing a process group and
/// its exit take a moment, and the lease is measured from our side only.
fn kill_margin(lease: Duration) -> Duration {
    (lease / 10).clamp(Duration::from_millis(100), Duration::from_secs(1))
}

async fn lock_and_run(cmd: LockCommand) -> anyhow::Result<i32> {
    let endpoints = cmd.ep.list();
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_string()).unwrap_or_else(|_| "host".into());
    let mut opts = SessionOptions::new(format!("{host}/mafs-lock/{}", std::process::id()));
    opts.lease = Duration::from_millis(cmd.lease_ms);
    let session = Session::open(&endpoints, opts).await.with_context(|| format!("opening a lockd session at {}", endpoints.join(",")))?;
    let lock_opts = LockOptions { try_lock: cmd.try_lock, timeout: Some(Duration::from_secs_f64(cmd.timeout.max(0.001))) };
    let guard = match session.lock(&cmd.resource, cmd.mode, lock_opts).await {
        Ok(g) => g,
        Err(e @ (ClientError::NotGranted { .. } | ClientError::TimedOut { .. })) => {
            eprintln!("mafs lock: {e}");
            let _ = session.close().await;
            return Ok(cmd.conflict_exit_code);
        }
        Err(e) => {
            let _ = session.close().await;
            return Err(e).with_context(|| format!("locking {}", cmd.resource));
        }
    };
    let (prog, args) = cmd.command.split_first().context("no command given")?;
    // Its own process group, so that losing the lock stops everything the command started,
    // not only its first process.
    let mut command = tokio::process::Command::new(prog);
    command
        .args(args)
        .env("MAFS_FENCING_TOKEN", guard.grant.token.to_string())
        .env("MAFS_LOCK_MODE", guard.grant.mode.name())
        .env("MAFS_LOCK_RESOURCE", &cmd.resource)
        .process_group(0);
    let terminal = ForegroundTerminal::ours();
    let take_terminal = terminal.is_some();
    // SAFETY: prctl, getppid, sigprocmask and tcsetpgrp are async-signal-safe, and the
    // closure touches nothing of the parent's (it runs in the forked child before exec).
    let parent = libc::pid_t::try_from(std::process::id()).unwrap_or(0);
    unsafe {
        command.pre_exec(move || {
            // If `mafs lock` itself dies (kill -9), its session lapses and the lock goes to
            // another: the command must not outlive it. Its own children are not reached
            // (fencing tokens, not process killing, are what protect the data).
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::getppid() != parent {
                return Err(std::io::Error::other("mafs lock exited before the command started"));
            }
            // The command's group owns the terminal before the command runs, as a shell's job
            // does; done by the parent after exec instead, a command that reads the terminal
            // first would be stopped by SIGTTIN. SIGTTOU is blocked for the call.
            if take_terminal {
                // A foreground job gets the terminal's signals with their default actions, as a
                // job-control shell gives them: an ignored SIGINT inherited from whoever
                // started us would make Ctrl-C do nothing while the lock stays held.
                for sig in [libc::SIGINT, libc::SIGQUIT, libc::SIGTSTP, libc::SIGTTIN, libc::SIGTTOU] {
                    libc::signal(sig, libc::SIG_DFL);
                }
                let mut set: libc::sigset_t = std::mem::zeroed();
                let mut old: libc::sigset_t = std::mem::zeroed();
                libc::sigemptyset(&mut set);
                libc::sigaddset(&mut set, libc::SIGTTOU);
                libc::sigprocmask(libc::SIG_BLOCK, &set, &mut old);
                libc::tcsetpgrp(0, libc::getpid());
                libc::sigprocmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
            }
            // Nor may they arrive blocked (a mask is inherited across exec too).
            libc::sigprocmask(libc::SIG_UNBLOCK, &job_signals(), std::ptr::null_mut());
            Ok(())
        });
    }
    let spawned = command.spawn();
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) => {
            // Nothing runs under the lock: give it back now, not when the lease runs out.
            drop(guard);
            let _ = session.release(&cmd.resource, None).await;
            let _ = session.close().await;
            eprintln!("mafs lock: cannot run {prog}: {e}");
            return Ok(if e.kind() == std::io::ErrorKind::NotFound { EXIT_NOT_FOUND } else { EXIT_CANNOT_RUN });
        }
    };
    let pgid = child.id().and_then(|p| libc::pid_t::try_from(p).ok());
    let status = supervise(&mut child, pgid, &session).await;
    drop(terminal);
    let status = match status {
        Supervised::Exited(s) => s?,
        Supervised::LockLost(why) => {
            eprintln!("mafs lock: {why} while holding {}; killed the command and its process group", cmd.resource);
            return Ok(EXIT_LOCK_LOST);
        }
    };
    drop(guard);
    let released = session.release(&cmd.resource, None).await;
    let _ = session.close().await;
    if let Err(e) = released {
        eprintln!("mafs lock: releasing {}: {e}", cmd.resource);
    }
    use std::os::unix::process::ExitStatusExt;
    Ok(status.code().unwrap_or_else(|| 128 + status.signal().unwrap_or(0)))
}

enum Supervised {
    Exited(std::io::Result<std::process::ExitStatus>),
    /// Why the lock can no longer be trusted; the process group is killed.
    LockLost(String),
}

fn signal_group(pgid: Option<libc::pid_t>, sig: libc::c_int) {
    if let Some(pgid) = pgid {
        // SAFETY: plain kill(2) of the process group we created for our child.
        unsafe { libc::kill(-pgid, sig) };
    }
}

/// The next of `signals` to arrive (never, if the list is empty).
async fn next_signal(signals: &mut [(libc::c_int, tokio::signal::unix::Signal)]) -> libc::c_int {
    std::future::poll_fn(|cx| {
        for (n, s) in signals.iter_mut() {
            if let std::task::Poll::Ready(Some(())) = s.poll_recv(cx) {
                return std::task::Poll::Ready(*n);
            }
        }
        std::task::Poll::Pending
    })
    .await
}

/// Waits for the command while the lock is certainly ours: the process group is killed
/// `kill_margin` before the session's lease runs out without a renewal, or as soon as the
/// session is known lost. SIGINT, SIGTERM and SIGHUP sent to `mafs lock` go to the group.
async fn supervise(child: &mut tokio::process::Child, pgid: Option<libc::pid_t>, session: &Session) -> Supervised {
    use tokio::signal::unix::{signal, SignalKind};
    let margin = kill_margin(session.lease());
    let mut forwarded: Vec<(libc::c_int, tokio::signal::unix::Signal)> =
        [(libc::SIGINT, SignalKind::interrupt()), (libc::SIGTERM, SignalKind::terminate()), (libc::SIGHUP, SignalKind::hangup())]
            .into_iter()
            .filter_map(|(n, k)| signal(k).ok().map(|s| (n, s)))
            .collect();
    loop {
        // Re-read every round: a heartbeat answered meanwhile moves it on.
        let safe_until = session.valid_until().checked_sub(margin);
        let now = Instant::now();
        if session.is_lost() || safe_until.is_none_or(|t| now >= t) {
            signal_group(pgid, libc::SIGKILL);
            let _ = child.wait().await;
            return Supervised::LockLost(lost_reason(session));
        }
        if pgid.is_some_and(stopped) {
            // Ctrl-Z, or SIGSTOP: a suspended command would keep the cluster lock for as long
            // as nobody resumes it. mafs lock does no job control; it resumes the command.
            eprintln!("mafs lock: the command was stopped while holding the lock; resuming it");
            signal_group(pgid, libc::SIGCONT);
        }
        let wake = safe_until.unwrap_or(now).min(now + Duration::from_millis(100));
        tokio::select! {
            s = child.wait() => return Supervised::Exited(s),
            _ = tokio::time::sleep_until(wake.into()) => {}
            n = next_signal(&mut forwarded) => signal_group(pgid, n),
        }
    }
}

/// Whether process `pid` is stopped (state `T` in /proc/PID/stat).
fn stopped(pid: libc::pid_t) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // The state follows the command name, which is in parentheses and may contain anything.
    stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().next()).is_some_and(|state| state == "T")
}

fn lost_reason(session: &Session) -> String {
    if session.is_lost() {
        "the lockd session was lost".into()
    } else {
        "the lockd lease could not be renewed before it ran out".into()
    }
}

/// While the command runs in its own process group, that group owns the terminal (as a
/// shell's job would), so it can read from it and Ctrl-C reaches it; given back on drop.
struct ForegroundTerminal {
    ours: libc::pid_t,
}

impl ForegroundTerminal {
    /// Our process group, if it is the foreground group of the terminal on stdin (the child
    /// then takes the terminal in `pre_exec`).
    fn ours() -> Option<ForegroundTerminal> {
        // SAFETY: plain syscalls on fd 0.
        unsafe {
            let ours = libc::getpgrp();
            (libc::isatty(0) == 1 && libc::tcgetpgrp(0) == ours).then_some(ForegroundTerminal { ours })
        }
    }
}

impl Drop for ForegroundTerminal {
    fn drop(&mut self) {
        // SAFETY: a background process calling tcsetpgrp gets SIGTTOU unless it ignores it.
        unsafe {
            let old = libc::signal(libc::SIGTTOU, libc::SIG_IGN);
            libc::tcsetpgrp(0, self.ours);
            libc::signal(libc::SIGTTOU, old);
        }
    }
}
