//! `mafs lock`: run a command while holding a cluster-wide lock, like flock(1), and kill it
//! before the lock could go to another holder.
use std::time::{Duration, Instant};

use anyhow::Context;
use lockd_client::{Error as ClientError, FencingToken, Grant, LockGuard, LockOptions, Session, SessionOptions};

use crate::args::{LockCommand, EXIT_CANNOT_RUN, EXIT_LOCK_FAILED, EXIT_LOCK_LOST, EXIT_NOT_FOUND};
use crate::runtime::{init_tracing, runtime};

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
    let Some((session, guard)) = acquire(session, &cmd).await? else {
        return Ok(cmd.conflict_exit_code);
    };
    let (prog, args) = cmd.command.split_first().context("no command given")?;
    let terminal = ForegroundTerminal::ours();
    let spawned = command_under_lock(prog, args, &guard.grant, terminal.is_some()).spawn();
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

/// Takes the lock; `None` if it was not granted (held in a conflicting mode, or not in time),
/// which `mafs lock` reports and exits on. The session is closed unless the lock is held.
async fn acquire(session: Session, cmd: &LockCommand) -> anyhow::Result<Option<(Session, LockGuard)>> {
    let lock_opts = LockOptions { try_lock: cmd.try_lock, timeout: Some(Duration::from_secs_f64(cmd.timeout.max(0.001))) };
    match session.lock(&cmd.resource, cmd.mode, lock_opts).await {
        Ok(g) => Ok(Some((session, g))),
        Err(e @ (ClientError::NotGranted { .. } | ClientError::TimedOut { .. })) => {
            eprintln!("mafs lock: {e}");
            let _ = session.close().await;
            Ok(None)
        }
        Err(e) => {
            let _ = session.close().await;
            Err(e).with_context(|| format!("locking {}", cmd.resource))
        }
    }
}

/// The command to run under `grant`, in a process group of its own (so that losing the lock
/// stops everything the command started, not only its first process), dying with `mafs lock`,
/// and owning the terminal if `take_terminal`.
fn command_under_lock(prog: &str, args: &[String], grant: &Grant, take_terminal: bool) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(prog);
    command
        .args(args)
        .env("MAFS_FENCING_TOKEN", FencingToken::to_wire(grant.token).to_string())
        .env("MAFS_LOCK_MODE", grant.mode.name())
        .env("MAFS_LOCK_RESOURCE", &grant.resource)
        .process_group(0);
    let parent = libc::pid_t::try_from(std::process::id()).unwrap_or(0);
    // SAFETY: prctl, getppid, sigprocmask and tcsetpgrp are async-signal-safe, and the
    // closure touches nothing of the parent's (it runs in the forked child before exec).
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
    command
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
