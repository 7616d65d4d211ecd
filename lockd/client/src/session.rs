//! A lockd session as the filesystem sees it: opening and closing it, locks taken through the
//! cache, conversions and releases. Heartbeats, the event stream and revocations run in the
//! background (`background`, `revoke`).
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use lockd_common::{validate_lvb, FencingToken, Mode};
use mafs_proto::v1 as pb;
use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::background::{event_loop, heartbeat_loop, send_release};
use crate::cache::{Cached, Releasing, Revocation, State};
use crate::conn::Conn;
use crate::error::{Error, Result};
use crate::state::{is_granted, outcome_unknown, Inner, CLOSED};
use crate::types::{Grant, LockOptions, SessionOptions};

pub struct Session {
    inner: Arc<Inner>,
    tasks: Vec<JoinHandle<()>>,
}

/// A lock in use. Dropping it keeps the lock cached (no network call); a later `lock` of a
/// covered mode reuses it without a round trip.
/// A session's lease, seen from outside without keeping the session open.
#[derive(Clone)]
pub struct LeaseWatch(Weak<Inner>);

impl LeaseWatch {
    /// Until when the session's locks are certainly its own (the send time of the last
    /// acknowledged heartbeat plus the lease); `None` once the session is lost, closed or gone.
    pub fn deadline(&self) -> Option<Instant> {
        let inner = self.0.upgrade()?;
        inner.check().ok()?;
        let until = *inner.valid_until.lock(); // the guard must go before `inner`
        Some(until)
    }

    /// Whether the session's locks are still certainly its own: not lost, deadline ahead.
    pub fn is_certain(&self) -> bool {
        self.deadline().is_some_and(|d| Instant::now() < d)
    }
}

pub struct LockGuard {
    inner: Weak<Inner>,
    pub grant: Grant,
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        if let Some(inner) = self.inner.upgrade() {
            // Only a wait for the lock to be unused (a revocation, which marks the lock, or a
            // release) can be waiting on a user leaving; waking every waiter of the session at
            // each drop cost a node working alone measurably.
            let wake = match inner.cache.lock().get_mut(&self.grant.resource) {
                Some(c) => {
                    c.users = c.users.saturating_sub(1);
                    c.last_used = Instant::now();
                    c.users == 0 && (c.revocation != Revocation::None || inner.idle_waiters.load(Ordering::Acquire) > 0)
                }
                None => true,
            };
            if wake {
                inner.changed.notify_waiters();
            }
        }
    }
}

/// What the cache says to a `lock` call.
enum CacheAnswer {
    /// A cached lock covers the mode: taken, no round trip.
    Hit(Grant),
    /// A weaker mode is cached: it is marked busy for a conversion.
    Convert,
    /// Nothing is cached: an entry is made (busy) for the first request.
    Acquire,
}

impl Inner {
    /// Either the cache answers, or the entry is marked busy and the caller goes to lockd.
    async fn consult_cache(&self, resource: &str, mode: Mode) -> Result<CacheAnswer> {
        self.with_idle(
            resource,
            |c| !c.demote_pending(),
            |cache| match cache.get_mut(resource) {
                Some(c) => match c.state {
                    State::Held(held) if held.covers(mode) => {
                        c.users += 1;
                        c.last_used = Instant::now();
                        CacheAnswer::Hit(Grant { resource: resource.to_string(), mode: held, token: c.token, lvb: c.lvb.clone() })
                    }
                    State::Held(held) => {
                        c.state = State::Busy(held);
                        CacheAnswer::Convert
                    }
                    // Not idle: with_idle waited for this to pass.
                    State::Acquiring | State::Busy(_) => CacheAnswer::Convert,
                },
                None => {
                    cache.insert(resource.to_string(), Cached::acquiring());
                    CacheAnswer::Acquire
                }
            },
        )
        .await
    }

    /// A cached lock that covers `mode`, taken at once when nothing stands in the way (the
    /// common case of a node working on what it holds: one mutex, no waiting machinery).
    /// `None` sends the caller the long way (`consult_cache`), which also handles the rest:
    /// a lock busy or being revoked, a conversion, a lease that ran out.
    fn take_cached(&self, resource: &str, mode: Mode) -> Option<Grant> {
        let until = *self.valid_until.lock();
        let now = Instant::now();
        if now >= until {
            return None;
        }
        let mut cache = self.cache.lock();
        let c = cache.get_mut(resource)?;
        match c.state {
            State::Held(held) if held.covers(mode) && !c.demote_pending() => {
                c.users += 1;
                c.last_used = now;
                Some(Grant { resource: resource.to_string(), mode: held, token: c.token, lvb: c.lvb.clone() })
            }
            _ => None,
        }
    }

    /// Records a grant lockd answered for `resource` and takes it for the caller.
    fn take_grant(&self, resource: &str, mode: Mode, resp: pb::LockResponse) -> Grant {
        let granted_mode = Mode::from_wire(resp.mode).unwrap_or(mode);
        let grant =
            Grant { resource: resource.to_string(), mode: granted_mode, token: FencingToken::from_wire(resp.fencing_token), lvb: resp.lvb };
        self.finish(resource, |c| {
            if let Some(c) = c {
                c.state = State::Busy(granted_mode);
                c.token = grant.token;
                c.lvb = grant.lvb.clone();
                c.users += 1;
                c.last_used = Instant::now();
            }
            true
        });
        grant
    }

    /// After a Lock call that got no grant: a conversion's lock stays cached (`converting`),
    /// unless lockd says we hold nothing there (a release whose answer got lost did commit).
    fn forget_refused(&self, resource: &str, converting: bool, why: &Error) {
        let stale = why.is_refusal(lockd_common::ErrorKind::NotHeld);
        let unknown = matches!(why, Error::Unavailable(_));
        self.finish(resource, |c| {
            if let (Some(c), true) = (c, unknown) {
                c.token = None;
            }
            converting && !stale
        });
    }
}

/// Releases `resource`, which the caller has marked busy (`Inner::claim_held`), held under
/// `token`: asynchronously when lockd can tell grants apart by token, else waiting.
pub(crate) async fn release_claimed(inner: &Arc<Inner>, resource: &str, token: Option<FencingToken>, lvb: Option<Vec<u8>>) -> Result<()> {
    let token = match token {
        Some(token) if inner.release_by_token => token,
        _ => {
            // Whatever grant lockd has: only safe to send while no later one can exist, so wait.
            let r = inner.rpc_release(resource, lvb, None).await;
            inner.finish(resource, |_| r.is_err());
            return r;
        }
    };
    // Recorded before the cache entry goes, so a `lock` that finds no entry finds this.
    inner.releasing.lock().insert(resource.to_string(), Releasing { token, lvb: lvb.clone() });
    inner.finish(resource, |_| false);
    tokio::spawn(send_release(inner.clone(), resource.to_string(), token, lvb));
    Ok(())
}

/// A Lock call's answer as the caller sees it: the response if granted, otherwise why not.
fn granted_or_why(r: Result<pb::LockResponse>, resource: &str) -> Result<pb::LockResponse> {
    let resp = r?;
    match pb::LockStatus::try_from(resp.status) {
        Ok(pb::LockStatus::Granted) => Ok(resp),
        Ok(pb::LockStatus::TimedOut) => Err(Error::TimedOut { resource: resource.to_string() }),
        _ => Err(Error::NotGranted { resource: resource.to_string() }),
    }
}

impl Session {
    pub async fn open(endpoints: &[String], opts: SessionOptions) -> Result<Session> {
        let conn = Conn::new(endpoints)?;
        let req = pb::OpenSessionRequest {
            node_name: opts.node_name.clone(),
            lease_ms: u32::try_from(opts.lease.as_millis()).unwrap_or(u32::MAX),
            hold_locks_on_expiry: opts.hold_locks_on_expiry,
        };
        // The lease runs from when lockd heard the request, so from no earlier than the send of
        // the try it answered: not the first try's, which may be seconds older (lockd still
        // electing a leader) and would leave a session born with its lease run out.
        let last_try = Arc::new(Mutex::new(Instant::now()));
        let resp = conn
            .call("open-session", Instant::now() + opts.retry_for, Duration::from_secs(6), |mut c| {
                let r = req.clone();
                *last_try.lock() = Instant::now();
                async move { c.open_session(r).await }
            })
            .await?;
        let sent = *last_try.lock();
        let lease = Duration::from_millis(u64::from(resp.lease_ms));
        let inner = Arc::new(Inner {
            conn,
            id: resp.session_id,
            lease,
            retry_for: opts.retry_for,
            cache: Mutex::new(HashMap::new()),
            releasing: Mutex::new(HashMap::new()),
            changed: Notify::new(),
            lost: Mutex::new(None),
            valid_until: Mutex::new(sent + lease),
            handler: opts.on_blocking,
            release_by_token: resp.release_by_token,
            peer_recoveries: tokio::sync::watch::Sender::new(0),
            dropped: AtomicBool::new(false),
            idle_waiters: std::sync::atomic::AtomicUsize::new(0),
        });
        let tasks = vec![tokio::spawn(heartbeat_loop(Arc::downgrade(&inner))), tokio::spawn(event_loop(Arc::downgrade(&inner)))];
        Ok(Session { inner, tasks })
    }

    pub fn id(&self) -> u64 {
        self.inner.id
    }

    pub fn lease(&self) -> Duration {
        self.inner.lease
    }

    /// Until when our locks are certainly ours: the send time of the last acknowledged
    /// heartbeat plus the lease. Writers to shared storage must stop before this instant.
    pub fn valid_until(&self) -> Instant {
        *self.inner.valid_until.lock()
    }

    pub fn is_lost(&self) -> bool {
        self.inner.lost.lock().is_some()
    }

    /// Resolves once no lock of this session is certain any more: it was lost or closed, or its
    /// lease ran out without a heartbeat answer (checked every 100 ms, so it does not wait for
    /// a heartbeat that hangs). Whatever the holder cached under its locks must go then: lockd
    /// may give them to others. Holds the session only weakly, so it never keeps it open.
    pub fn when_lost(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let lease = self.lease_watch();
        async move {
            while lease.is_certain() {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }

    /// Gives the session up without telling lockd: no more heartbeats or locks from it, and
    /// lockd expires it after its lease, as if the holder had died — so a holder with
    /// `hold_locks_on_expiry` keeps its locks until a survivor recovers what they cover. For a
    /// holder that fenced itself and must not hand its locks over cleanly (that would skip the
    /// recovery); `close` is the clean way out.
    pub fn abandon(&self) {
        self.inner.mark_lost("abandoned by its holder, which fenced itself".into());
    }

    /// A count that goes up each time lockd says another session's lease lapsed with its
    /// locks kept for recovery (`hold_locks_on_expiry`), so a survivor can start that
    /// recovery at once. Notices sent while the event stream was reconnecting are not
    /// repeated: a waiter should also look now and then on its own.
    pub fn peer_recoveries(&self) -> tokio::sync::watch::Receiver<u64> {
        self.inner.peer_recoveries.subscribe()
    }

    /// The session's lease as a handle that does not keep the session open (for a device
    /// that refuses writes once the lease is not certain).
    pub fn lease_watch(&self) -> LeaseWatch {
        LeaseWatch(Arc::downgrade(&self.inner))
    }

    pub(crate) fn inner(&self) -> &Arc<Inner> {
        &self.inner
    }

    pub fn round_trips(&self) -> u64 {
        self.inner.conn.round_trips()
    }

    /// The cached mode of `resource`, if any.
    pub fn cached(&self, resource: &str) -> Option<Mode> {
        self.inner.cache.lock().get(resource).and_then(|c| c.state.mode())
    }

    /// The grant of `resource` the session caches, if any: its mode, token and the lock value
    /// block it came with (for a revocation handler deciding what to write there).
    pub fn cached_grant(&self, resource: &str) -> Option<Grant> {
        let cache = self.inner.cache.lock();
        let c = cache.get(resource)?;
        Some(Grant { resource: resource.to_string(), mode: c.state.mode()?, token: c.token, lvb: c.lvb.clone() })
    }

    fn guard(&self, grant: Grant) -> LockGuard {
        LockGuard { inner: Arc::downgrade(&self.inner), grant }
    }

    /// `resource` in `mode`, if a cached lock covers it and nothing stands in the way (no
    /// revocation pending, lease certain): taken at once, without an async runtime. `None`:
    /// ask [`Session::lock`].
    pub fn lock_cached(&self, resource: &str, mode: Mode) -> Option<LockGuard> {
        self.inner.take_cached(resource, mode).map(|grant| self.guard(grant))
    }

    /// Acquires `resource` in `mode` (or a mode covering it). A cached lock that covers `mode`
    /// is reused without any network call; a weaker cached lock is converted.
    pub async fn lock(&self, resource: &str, mode: Mode, opts: LockOptions) -> Result<LockGuard> {
        if let Some(grant) = self.inner.take_cached(resource, mode) {
            return Ok(self.guard(grant));
        }
        let inner = &self.inner;
        let converting = match inner.consult_cache(resource, mode).await? {
            CacheAnswer::Hit(grant) => {
                // A cached lock is ours only while the lease is certain: past its deadline lockd
                // may have expired the session and given the lock away before the heartbeats
                // noticed (a process that was paused, say). Lost then, as the heartbeats would
                // find it; the loss empties the cache, this use with it.
                if Instant::now() >= *inner.valid_until.lock() {
                    inner.mark_lost("lease ran out without a heartbeat answer".into());
                    inner.check()?;
                }
                return Ok(self.guard(grant));
            }
            CacheAnswer::Convert => true,
            CacheAnswer::Acquire => false,
        };
        // A release of ours that may not have committed yet goes first, in the same log entry:
        // otherwise this request could overtake it and be answered with the very grant we are
        // giving up (a holder's same-mode request is idempotent), which the release then takes.
        let release_first = if converting { None } else { inner.releasing.lock().get(resource).cloned() };
        let r = inner.rpc_lock(resource, mode, converting, opts, None, release_first.as_ref().map(Releasing::to_wire)).await;
        if let (Ok(_), Some(rel)) = (&r, &release_first) {
            // lockd applied the Lock entry, so the release before it too.
            inner.forget_release(resource, rel.token);
        }
        tracing::trace!(target: "lockd_trace", session = inner.id, resource, ?r, "lock answer");
        match granted_or_why(r, resource) {
            Ok(resp) => Ok(self.guard(inner.take_grant(resource, mode, resp))),
            Err(why) => {
                inner.forget_refused(resource, converting, &why);
                Err(why)
            }
        }
    }

    /// Gives the lock back to lockd (waiting for local users to finish). With `lvb`, a PW/EX
    /// holder stores a new lock value block. Releasing what this session does not hold (any
    /// more) is not an error: the lock may have been revoked for a waiter meanwhile.
    ///
    /// Asynchronous, like `dlm_unlock`: this returns once the release is on its way, and the
    /// session sends it again after a failover until lockd confirms it (it names the grant's
    /// fencing token, so a second copy cannot release a later grant). A `lock` of the same
    /// resource meanwhile carries the release in front of it. [`Session::released`] waits for
    /// the confirmations; [`Session::close`] does so before closing.
    pub async fn release(&self, resource: &str, lvb: Option<Vec<u8>>) -> Result<()> {
        let inner = &self.inner;
        // Refused here, while the caller can still hear it: lockd would refuse it later.
        validate_lvb(lvb.as_deref()).map_err(|e| Error::refused(e.kind(), e.to_string()))?;
        // Already gone (revoked on a blocking notification, or never taken): the end state the
        // caller asks for holds.
        let token = match inner.claim_held(resource, true).await {
            Ok(token) => {
                tracing::trace!(target: "lockd_trace", session = inner.id, resource, ?token, "release");
                token
            }
            Err(Error::Rejected { .. }) => return Ok(()),
            Err(e) => return Err(e),
        };
        release_claimed(inner, resource, token, lvb).await
    }

    /// Waits until lockd has confirmed every release made so far.
    pub async fn released(&self) -> Result<()> {
        let inner = &self.inner;
        inner.wait_for(|| inner.releasing.lock().is_empty().then_some(())).await
    }

    /// Converts a held lock to a weaker (or any) mode, e.g. EX -> PR after flushing.
    pub async fn downgrade(&self, resource: &str, mode: Mode, lvb: Option<Vec<u8>>) -> Result<Grant> {
        let inner = &self.inner;
        inner.claim_held(resource, false).await?;
        let r = inner.rpc_lock(resource, mode, true, LockOptions::default(), lvb, None).await;
        let mut out = Err(Error::NotGranted { resource: resource.to_string() });
        let unknown = outcome_unknown(&r);
        inner.finish(resource, |mut c| {
            if let (Some(c), true) = (c.as_deref_mut(), unknown) {
                c.token = None;
            }
            if let (Some(c), Ok(resp)) = (c, &r) {
                if is_granted(resp) {
                    let token = FencingToken::from_wire(resp.fencing_token);
                    c.set_mode(mode);
                    c.token = token;
                    c.lvb = resp.lvb.clone();
                    out = Ok(Grant { resource: resource.to_string(), mode, token, lvb: resp.lvb.clone() });
                }
            }
            true
        });
        match r {
            Err(e) => Err(e),
            Ok(_) => out,
        }
    }

    /// Ends the session; lockd releases everything it held. Releases still on their way are
    /// confirmed first, so the lock value blocks they carry are not lost.
    pub async fn close(mut self) -> Result<()> {
        if tokio::time::timeout(self.inner.retry_for, self.released()).await.is_err() {
            tracing::warn!(session = self.inner.id, "closing with releases lockd has not confirmed; their lock value blocks may be lost");
        }
        for t in self.tasks.drain(..) {
            t.abort();
        }
        let inner = &self.inner;
        inner.check()?;
        let id = inner.id;
        let r = inner
            .conn
            .call("close-session", inner.deadline(), Duration::from_secs(6), |mut c| async move {
                c.close_session(pb::CloseSessionRequest { session_id: id }).await
            })
            .await;
        inner.mark_lost(CLOSED.into());
        match r {
            Err(Error::SessionLost(_)) => Ok(()),
            other => other.map(|_| ()),
        }
    }
}

/// For the server crate's tests, which control when a blocking notice arrives.
#[cfg(feature = "test-hooks")]
impl Session {
    /// Hands `notice` over as the event stream would.
    pub fn inject_blocking_notice(&self, notice: crate::types::BlockingNotice) {
        crate::revoke::start_revoke(&self.inner, notice);
    }

    /// Whether a revocation of `resource` is queued or running.
    pub fn revocation_queued(&self, resource: &str) -> bool {
        self.inner.cache.lock().get(resource).is_some_and(|c| matches!(c.revocation, crate::cache::Revocation::Queued(_)))
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.inner.dropped.store(true, Ordering::Relaxed);
        for t in &self.tasks {
            t.abort();
        }
    }
}
