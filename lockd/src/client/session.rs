//! A lockd session as the filesystem sees it: heartbeats, the event stream, the lock cache, and
//! revocation on blocking notifications.
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use mafs_proto::v1 as pb;
use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use super::conn::{EVENTS, HEARTBEAT};
use super::{Conn, Error, Result};
use crate::mode::Mode;

/// A blocking notification: someone wants `resource` in `requested`, which conflicts with our
/// `held` mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockingNotice {
    pub resource: String,
    pub held: Mode,
    pub requested: Mode,
    /// The blocking grant's fencing token (0 from a lockd that does not send it).
    pub token: u64,
}

/// What to do with a lock another session is waiting for. The handler runs (on a blocking
/// thread) once no local user holds the lock, so it can flush whatever the lock covers first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Revoke {
    Release { lvb: Option<Vec<u8>> },
    Downgrade { mode: Mode, lvb: Option<Vec<u8>> },
    Keep,
}

pub type BlockingHandler = Arc<dyn Fn(&BlockingNotice) -> Revoke + Send + Sync>;

#[derive(Clone)]
pub struct SessionOptions {
    pub node_name: String,
    pub lease: Duration,
    /// Keep locks held (RECOVERING) after expiry until a survivor completes recovery.
    pub hold_locks_on_expiry: bool,
    /// Without a handler a blocked lock is released once unused.
    pub on_blocking: Option<BlockingHandler>,
    /// How long calls keep retrying through failovers before giving up.
    pub retry_for: Duration,
}

impl SessionOptions {
    pub fn new(node_name: impl Into<String>) -> Self {
        SessionOptions {
            node_name: node_name.into(),
            lease: Duration::from_secs(10),
            hold_locks_on_expiry: false,
            on_blocking: None,
            retry_for: Duration::from_secs(15),
        }
    }
}

#[derive(Debug, Clone, Copy, Default)]
pub struct LockOptions {
    /// Answer NotGranted at once instead of queueing.
    pub try_lock: bool,
    /// Queue wait; `None` = the server default (30 s).
    pub timeout: Option<Duration>,
}

impl LockOptions {
    /// Queue for at most `timeout`.
    pub fn wait(timeout: Duration) -> Self {
        LockOptions { try_lock: false, timeout: Some(timeout) }
    }

    /// Do not queue.
    pub fn try_now() -> Self {
        LockOptions { try_lock: true, timeout: None }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub resource: String,
    pub mode: Mode,
    pub token: u64,
    pub lvb: Vec<u8>,
}

struct Cached {
    /// `None` while the first request for it is in flight.
    mode: Option<Mode>,
    /// The grant's fencing token; 0 after a conversion whose outcome never came back (lockd
    /// may hold it under a newer token), which makes its release synchronous and unnamed.
    token: u64,
    lvb: Vec<u8>,
    /// Local users inside a LockGuard.
    users: usize,
    /// A request, conversion, release or revocation is in flight; others wait.
    busy: bool,
    revoke_pending: bool,
    /// The newest blocking notice for this resource (the revocation acts on it, not on the one
    /// that started it).
    notice: Option<BlockingNotice>,
}

/// A release sent without waiting for its commit (see [`Session::release`]): the lock has left
/// the cache, but lockd may still hold it for us until this is confirmed.
#[derive(Clone)]
struct Releasing {
    token: u64,
    lvb: Option<Vec<u8>>,
}

impl Releasing {
    fn to_wire(&self) -> pb::PendingRelease {
        pb::PendingRelease { fencing_token: self.token, write_lvb: self.lvb.is_some(), lvb: self.lvb.clone().unwrap_or_default() }
    }
}

const CLOSED: &str = "closed";

struct Inner {
    conn: Conn,
    id: u64,
    lease: Duration,
    retry_for: Duration,
    cache: Mutex<HashMap<String, Cached>>,
    /// Releases not yet confirmed, by resource. Never locked while `cache` is held.
    releasing: Mutex<HashMap<String, Releasing>>,
    /// Wakes waiters on `cache` or `releasing`.
    changed: Notify,
    lost: Mutex<Option<String>>,
    valid_until: Mutex<Instant>,
    handler: Option<BlockingHandler>,
    /// lockd honours releases named by token and carried by a lock (older ones do not).
    release_by_token: bool,
    /// The `Session` is gone: no heartbeats any more, so nobody will mark it lost.
    dropped: AtomicBool,
}

/// A conversion whose fate is unknown: no replica answered, and the cleanup cancel did not
/// tell either.
fn outcome_unknown(r: &Result<pb::LockResponse>) -> bool {
    matches!(r, Err(Error::Unavailable(_)))
}

pub struct Session {
    inner: Arc<Inner>,
    tasks: Vec<JoinHandle<()>>,
}

/// A lock in use. Dropping it keeps the lock cached (no network call); a later `lock` of a
/// covered mode reuses it without a round trip.
pub struct LockGuard {
    inner: Weak<Inner>,
    pub grant: Grant,
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        if let Some(inner) = self.inner.upgrade() {
            if let Some(c) = inner.cache.lock().get_mut(&self.grant.resource) {
                c.users = c.users.saturating_sub(1);
            }
            inner.changed.notify_waiters();
        }
    }
}

impl Inner {
    fn check(&self) -> Result<()> {
        match &*self.lost.lock() {
            Some(why) => Err(Error::SessionLost(why.clone())),
            None => Ok(()),
        }
    }

    fn mark_lost(&self, why: String) {
        let mut lost = self.lost.lock();
        if lost.is_none() {
            if why != CLOSED {
                tracing::warn!(session = self.id, "lockd session lost: {why}");
            }
            *lost = Some(why);
        }
        drop(lost);
        self.cache.lock().clear();
        self.changed.notify_waiters();
    }

    fn deadline(&self) -> Instant {
        Instant::now() + self.retry_for
    }

    /// Waits until `probe` answers (it runs again after every change to `cache` or
    /// `releasing`), or the session is lost.
    async fn wait_for<T>(&self, mut probe: impl FnMut() -> Option<T>) -> Result<T> {
        loop {
            self.check()?;
            // Armed before probing, so a change between the probe and the wait is not missed.
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(t) = probe() {
                return Ok(t);
            }
            notified.await;
        }
    }

    /// Waits until `resource` is not busy and `ready` holds for its entry (or it is absent),
    /// then runs `take` under the cache lock.
    async fn with_idle<T>(
        &self,
        resource: &str,
        ready: impl Fn(&Cached) -> bool,
        mut take: impl FnMut(&mut HashMap<String, Cached>) -> T,
    ) -> Result<T> {
        self.wait_for(|| {
            let mut cache = self.cache.lock();
            let idle = cache.get(resource).is_none_or(|c| !c.busy && ready(c));
            idle.then(|| take(&mut cache))
        })
        .await
    }

    /// Marks a held lock busy for a release or conversion (waiting for local users to leave
    /// when `unused`), and answers the fencing token of its grant.
    async fn claim_held(&self, resource: &str, unused: bool) -> Result<u64> {
        let held = self
            .with_idle(
                resource,
                |c| !unused || c.users == 0,
                |cache| match cache.get_mut(resource) {
                    Some(c) if c.mode.is_some() => {
                        c.busy = true;
                        Some(c.token)
                    }
                    _ => None,
                },
            )
            .await?;
        held.ok_or_else(|| Error::Rejected { kind: "not-held".into(), message: format!("{resource:?} is not held by this session") })
    }

    /// Drops the record of an asynchronous release once lockd has certainly applied it (a
    /// later release of the same resource has its own record).
    fn forget_release(&self, resource: &str, token: u64) {
        let mut releasing = self.releasing.lock();
        if releasing.get(resource).is_some_and(|r| r.token == token) {
            releasing.remove(resource);
        }
        drop(releasing);
        self.changed.notify_waiters();
    }

    fn finish(&self, resource: &str, update: impl FnOnce(Option<&mut Cached>) -> bool) {
        let mut cache = self.cache.lock();
        let keep = update(cache.get_mut(resource));
        if !keep {
            cache.remove(resource);
        } else if let Some(c) = cache.get_mut(resource) {
            c.busy = false;
        }
        drop(cache);
        self.changed.notify_waiters();
    }

    /// Releases the grant `token` of `resource`; a grant that is already gone counts as
    /// released.
    async fn rpc_release(&self, resource: &str, lvb: Option<Vec<u8>>, token: u64) -> Result<()> {
        let req = pb::ReleaseRequest {
            session_id: self.id,
            resource: resource.to_string(),
            write_lvb: lvb.is_some(),
            lvb: lvb.unwrap_or_default(),
            fencing_token: token,
        };
        let r = self.conn.call(resource, self.deadline(), Duration::from_secs(6), |mut c| {
            let req = req.clone();
            async move { c.release(req).await }
        });
        match r.await {
            // A retry after a lost answer, or a later Lock call that carried the release, got
            // there first.
            Err(Error::Rejected { kind, .. }) if kind == "not-held" => Ok(()),
            other => other.map(|_| ()),
        }
    }

    async fn rpc_lock(
        &self,
        resource: &str,
        mode: Mode,
        convert: bool,
        opts: LockOptions,
        lvb: Option<Vec<u8>>,
        release_first: Option<pb::PendingRelease>,
    ) -> Result<pb::LockResponse> {
        let wait = opts.timeout.unwrap_or(Duration::from_secs(30));
        let req = pb::LockRequest {
            session_id: self.id,
            resource: resource.to_string(),
            mode: mode.to_wire(),
            convert,
            try_lock: opts.try_lock,
            timeout_ms: u32::try_from(wait.as_millis()).unwrap_or(u32::MAX).max(1),
            write_lvb: lvb.is_some(),
            lvb: lvb.unwrap_or_default(),
            release_first: release_first.clone(),
        };
        let deadline = Instant::now() + wait + self.retry_for;
        let mut resp = self
            .conn
            .call(resource, deadline, wait + Duration::from_secs(6), |mut c| {
                let mut req = req.clone();
                // A retry (after a failover) waits only for what is left of the caller's time.
                let left = deadline.saturating_duration_since(Instant::now()).saturating_sub(self.retry_for);
                req.timeout_ms = u32::try_from(left.as_millis()).unwrap_or(u32::MAX).max(1);
                async move { c.lock(req).await }
            })
            .await;
        if matches!(resp, Err(Error::Unavailable(_))) {
            // We may have been queued before the cluster went quiet; withdraw, and take a grant
            // that slipped in.
            let cancel = pb::CancelRequest { session_id: self.id, resource: resource.to_string() };
            let c = self
                .conn
                .call(resource, Instant::now() + Duration::from_secs(5), Duration::from_secs(5), |mut cl| {
                    let r = cancel.clone();
                    async move { cl.cancel(r).await }
                })
                .await;
            if let Ok(c) = c {
                // The grant our own pending release gives up is not an answer to this call.
                let releasing = release_first.as_ref().map(|r| r.fencing_token);
                if c.granted && releasing != Some(c.fencing_token) {
                    resp = Ok(pb::LockResponse {
                        status: pb::LockStatus::Granted as i32,
                        mode: c.mode,
                        fencing_token: c.fencing_token,
                        lvb: Vec::new(),
                    });
                }
            }
        }
        resp
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
        let sent = Instant::now();
        let resp = conn
            .call("open-session", sent + opts.retry_for, Duration::from_secs(6), |mut c| {
                let r = req.clone();
                async move { c.open_session(r).await }
            })
            .await?;
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
            dropped: AtomicBool::new(false),
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

    pub fn round_trips(&self) -> u64 {
        self.inner.conn.round_trips()
    }

    /// The cached mode of `resource`, if any.
    pub fn cached(&self, resource: &str) -> Option<Mode> {
        self.inner.cache.lock().get(resource).and_then(|c| c.mode)
    }

    /// Acquires `resource` in `mode` (or a mode covering it). A cached lock that covers `mode`
    /// is reused without any network call; a weaker cached lock is converted.
    pub async fn lock(&self, resource: &str, mode: Mode, opts: LockOptions) -> Result<LockGuard> {
        let inner = &self.inner;
        // Either the cache answers, or we mark the entry busy and go to the server.
        let cached = inner
            .with_idle(
                resource,
                |_| true,
                |cache| match cache.get_mut(resource) {
                    Some(c) if c.mode.is_some_and(|m| m.covers(mode)) => {
                        c.users += 1;
                        Ok(Grant { resource: resource.to_string(), mode: c.mode.unwrap_or(mode), token: c.token, lvb: c.lvb.clone() })
                    }
                    Some(c) => {
                        c.busy = true;
                        Err(c.mode)
                    }
                    None => {
                        cache.insert(
                            resource.to_string(),
                            Cached { mode: None, token: 0, lvb: Vec::new(), users: 0, busy: true, revoke_pending: false, notice: None },
                        );
                        Err(None)
                    }
                },
            )
            .await?;
        let held = match cached {
            Ok(grant) => return Ok(LockGuard { inner: Arc::downgrade(inner), grant }),
            Err(held) => held,
        };
        // A release of ours that may not have committed yet goes first, in the same log entry:
        // otherwise this request could overtake it and be answered with the very grant we are
        // giving up (a holder's same-mode request is idempotent), which the release then takes.
        let release_first = match held {
            None => self.inner.releasing.lock().get(resource).cloned(),
            Some(_) => None,
        };
        let r = inner.rpc_lock(resource, mode, held.is_some(), opts, None, release_first.as_ref().map(Releasing::to_wire)).await;
        if let (Ok(_), Some(rel)) = (&r, &release_first) {
            // lockd applied the Lock entry, so the release before it too.
            inner.forget_release(resource, rel.token);
        }
        let status = r.as_ref().map(|x| pb::LockStatus::try_from(x.status).unwrap_or(pb::LockStatus::NotGranted)).map_err(|_| ());
        match (r, status) {
            (Ok(resp), Ok(pb::LockStatus::Granted)) => {
                let granted_mode = Mode::from_wire(resp.mode).unwrap_or(mode);
                let grant = Grant { resource: resource.to_string(), mode: granted_mode, token: resp.fencing_token, lvb: resp.lvb };
                inner.finish(resource, |c| {
                    if let Some(c) = c {
                        c.mode = Some(granted_mode);
                        c.token = grant.token;
                        c.lvb = grant.lvb.clone();
                        c.users += 1;
                    }
                    true
                });
                Ok(LockGuard { inner: Arc::downgrade(inner), grant })
            }
            (r, status) => {
                // lockd says we hold nothing there (a release whose answer got lost did commit):
                // forget the stale cache entry instead of failing every later call on it.
                let stale = matches!(&r, Err(Error::Rejected { kind, .. }) if kind == "not-held");
                let unknown = outcome_unknown(&r);
                inner.finish(resource, |c| {
                    if let (Some(c), true) = (c, unknown) {
                        c.token = 0;
                    }
                    held.is_some() && !stale
                });
                match (r, status) {
                    (Err(e), _) => Err(e),
                    (_, Ok(pb::LockStatus::TimedOut)) => Err(Error::TimedOut { resource: resource.to_string() }),
                    _ => Err(Error::NotGranted { resource: resource.to_string() }),
                }
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
        crate::lock_table::validate_lvb(lvb.as_deref())
            .map_err(|e| Error::Rejected { kind: "lvb-too-large".into(), message: e.to_string() })?;
        // Already gone (revoked on a blocking notification, or never taken): the end state the
        // caller asks for holds.
        let token = match inner.claim_held(resource, true).await {
            Ok(token) => token,
            Err(Error::Rejected { .. }) => return Ok(()),
            Err(e) => return Err(e),
        };
        if token == 0 || !inner.release_by_token {
            // Whatever grant lockd has: only safe to send while no later one can exist, so wait.
            let r = inner.rpc_release(resource, lvb, 0).await;
            inner.finish(resource, |_| r.is_err());
            return r;
        }
        // Recorded before the cache entry goes, so a `lock` that finds no entry finds this.
        inner.releasing.lock().insert(resource.to_string(), Releasing { token, lvb: lvb.clone() });
        inner.finish(resource, |_| false);
        tokio::spawn(send_release(inner.clone(), resource.to_string(), token, lvb));
        Ok(())
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
                c.token = 0;
            }
            if let (Some(c), Ok(resp)) = (c, &r) {
                if resp.status == pb::LockStatus::Granted as i32 {
                    c.mode = Some(mode);
                    c.token = resp.fencing_token;
                    c.lvb = resp.lvb.clone();
                    out = Ok(Grant { resource: resource.to_string(), mode, token: resp.fencing_token, lvb: resp.lvb.clone() });
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

impl Drop for Session {
    fn drop(&mut self) {
        self.inner.dropped.store(true, Ordering::Relaxed);
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Sends an asynchronous release until lockd confirms it, through failovers. Ends without it
/// only when the session is gone, and with it every lock it held. Holds the session's state
/// alive: a `Session` dropped right after a release must not leave the lock held until its
/// lease runs out.
async fn send_release(inner: Arc<Inner>, resource: String, token: u64, lvb: Option<Vec<u8>>) {
    loop {
        match inner.rpc_release(&resource, lvb.clone(), token).await {
            Ok(()) | Err(Error::SessionLost(_)) => break,
            Err(e @ Error::Unavailable(_)) => {
                // A live session is marked lost by its heartbeats once its lease has lapsed,
                // and lockd then drops the lock with it. A dropped Session heartbeats no more:
                // past its lease, lockd expires it.
                let lapsed = inner.dropped.load(Ordering::Relaxed) && Instant::now() >= *inner.valid_until.lock();
                if inner.check().is_err() || lapsed {
                    break;
                }
                tracing::warn!(session = inner.id, resource, "release not confirmed yet, sending it again: {e}");
            }
            Err(e) => {
                // Not a matter of reaching lockd; sending it again would not help.
                tracing::error!(session = inner.id, resource, "lockd refused a release: {e}");
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    inner.forget_release(&resource, token);
}

/// After a failed heartbeat, how soon the next try goes out (the lease is running down).
const HEARTBEAT_RETRY: Duration = Duration::from_millis(100);

async fn heartbeat_loop(weak: Weak<Inner>) {
    let mut wait = None;
    loop {
        let Some(inner) = weak.upgrade() else { return };
        let period = inner.lease / 3;
        drop(inner);
        tokio::time::sleep(wait.unwrap_or(period)).await;
        let Some(inner) = weak.upgrade() else { return };
        if inner.check().is_err() {
            return;
        }
        let sent = Instant::now();
        let until = *inner.valid_until.lock();
        if sent >= until {
            inner.mark_lost("lease ran out without a heartbeat answer".into());
            return;
        }
        // No try outlives the lease: past it an answer could not save the session anyway,
        // and the session must be marked lost on time, not when a slow call gives up.
        let deadline = (sent + period).min(until);
        let id = inner.id;
        let r = inner
            .conn
            .call(HEARTBEAT, deadline, deadline - sent, |mut c| async move { c.heartbeat(pb::HeartbeatRequest { session_id: id }).await })
            .await;
        match r {
            Ok(_) => {
                *inner.valid_until.lock() = sent + inner.lease;
                wait = None;
            }
            Err(Error::SessionLost(why)) => {
                inner.mark_lost(why);
                return;
            }
            Err(e) => {
                if Instant::now() >= until {
                    inner.mark_lost(format!("lease ran out without a heartbeat answer ({e})"));
                    return;
                }
                tracing::debug!(session = id, "heartbeat failed, retrying: {e}");
                wait = Some(HEARTBEAT_RETRY.min(until.saturating_duration_since(Instant::now())));
            }
        }
    }
}

async fn event_loop(weak: Weak<Inner>) {
    loop {
        let Some(inner) = weak.upgrade() else { return };
        if inner.check().is_err() {
            return;
        }
        let id = inner.id;
        let stream = inner
            .conn
            .call(EVENTS, Instant::now() + inner.lease, Duration::from_secs(5), |mut c| async move {
                c.events(pb::EventsRequest { session_id: id }).await
            })
            .await;
        let mut stream = match stream {
            Ok(s) => s,
            Err(Error::SessionLost(why)) => {
                inner.mark_lost(why);
                return;
            }
            Err(_) => {
                drop(inner);
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        drop(inner);
        while let Ok(Some(ev)) = stream.message().await {
            let Some(inner) = weak.upgrade() else { return };
            match ev.kind {
                Some(pb::event::Kind::Blocking(b)) => {
                    let (Some(held), Some(requested)) = (Mode::from_wire(b.held), Mode::from_wire(b.requested)) else {
                        continue;
                    };
                    start_revoke(&inner, BlockingNotice { resource: b.resource, held, requested, token: b.fencing_token });
                }
                Some(pb::event::Kind::Expired(_)) => {
                    inner.mark_lost("lease expired at lockd".into());
                    return;
                }
                // Grants are also answered on the Lock call itself.
                Some(pb::event::Kind::Granted(_)) | None => {}
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn start_revoke(inner: &Arc<Inner>, notice: BlockingNotice) {
    {
        let mut cache = inner.cache.lock();
        let Some(c) = cache.get_mut(&notice.resource) else {
            return;
        };
        // Notices can come while a revocation waits or runs; it acts on the newest.
        if c.notice.as_ref().is_none_or(|n| notice.token >= n.token) {
            c.notice = Some(notice.clone());
        }
        if c.revoke_pending {
            return;
        }
        c.revoke_pending = true;
    }
    let inner = inner.clone();
    tokio::spawn(async move {
        let res = notice.resource.clone();
        let held = inner
            .with_idle(
                &res,
                |c| c.users == 0,
                |cache| {
                    let c = cache.get_mut(&res)?;
                    c.busy = true;
                    let notice = c.notice.clone().unwrap_or_else(|| notice.clone());
                    c.mode.map(|m| (m, c.token, notice))
                },
            )
            .await;
        let (held, token, notice) = match held {
            Ok(Some(held)) => held,
            Ok(None) => {
                inner.finish(&res, |c| {
                    if let Some(c) = c {
                        c.revoke_pending = false;
                    }
                    true
                });
                return;
            }
            Err(_) => return,
        };
        // About a grant this session gave up before it took the resource again (tokens only
        // grow): the current grant's own notice, if it is wanted, comes with it.
        let stale = notice.token != 0 && token != 0 && notice.token < token;
        let decision = if stale || held.compatible(notice.requested) {
            Revoke::Keep // not about this grant, or already downgraded meanwhile
        } else if let Some(h) = inner.handler.clone() {
            let n = BlockingNotice { held, ..notice.clone() };
            tokio::task::spawn_blocking(move || h(&n)).await.unwrap_or(Revoke::Release { lvb: None })
        } else {
            Revoke::Release { lvb: None }
        };
        // `failed`: the server never heard our answer; the waiter would wait forever.
        let (keep, failed) = match decision {
            Revoke::Keep => (true, false),
            Revoke::Release { lvb } => {
                let failed = inner.rpc_release(&res, lvb, token).await.is_err();
                (failed, failed)
            }
            Revoke::Downgrade { mode, lvb } => {
                let r = inner.rpc_lock(&res, mode, true, LockOptions::default(), lvb, None).await;
                let granted = matches!(&r, Ok(x) if x.status == pb::LockStatus::Granted as i32);
                if let Some(c) = inner.cache.lock().get_mut(&res) {
                    if let (true, Ok(resp)) = (granted, &r) {
                        c.mode = Some(mode);
                        c.token = resp.fencing_token;
                    } else if outcome_unknown(&r) {
                        c.token = 0;
                    }
                }
                (true, !granted)
            }
        };
        // A newer notice that came while this one was handled would otherwise go unanswered.
        let mut newer = None;
        inner.finish(&res, |c| {
            if let Some(c) = c {
                c.revoke_pending = false;
                if c.notice.as_ref() == Some(&notice) {
                    c.notice = None; // answered
                } else if keep {
                    newer = c.notice.clone();
                }
            }
            keep
        });
        if failed && inner.check().is_ok() {
            tokio::time::sleep(Duration::from_millis(500)).await;
            start_revoke(&inner, newer.unwrap_or(notice));
        } else if let Some(n) = newer {
            start_revoke(&inner, n);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft_node::ReplicaConfig;

    async fn one_replica(dir: &std::path::Path) -> Vec<String> {
        let addr = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().to_string()
        };
        let cfg = ReplicaConfig::new(1, addr.clone(), dir.join("r1"));
        tokio::spawn(async move {
            if let Err(e) = crate::server::serve(cfg).await {
                panic!("replica failed: {e}");
            }
        });
        let deadline = Instant::now() + Duration::from_secs(10);
        let eps = vec![addr];
        loop {
            if let Ok(s) = Session::open(&eps, SessionOptions::new("probe")).await {
                drop(s);
                return eps;
            }
            assert!(Instant::now() < deadline, "no leader within 10 s");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn settled(s: &Session, resource: &str) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while s.inner.cache.lock().get(resource).is_some_and(|c| c.revoke_pending) {
            assert!(Instant::now() < deadline, "the revocation never finished");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// A blocking notice delivered late, after the session gave that grant up and took the
    /// resource again, is not about the lock it holds now: no flush, no release. (The notice
    /// is injected where the event stream would hand it over, to control when it arrives.)
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_late_notice_about_a_grant_given_up_does_not_revoke_the_next_one() {
        let dir = tempfile::tempdir().unwrap();
        let eps = one_replica(dir.path()).await;
        let calls = Arc::new(Mutex::new(Vec::new()));
        let seen = calls.clone();
        let mut o = SessionOptions::new("a");
        o.on_blocking = Some(Arc::new(move |n: &BlockingNotice| {
            seen.lock().push(n.clone());
            Revoke::Release { lvb: None }
        }));
        let a = Session::open(&eps, o).await.unwrap();
        let first = a.lock("r", Mode::EX, LockOptions::default()).await.unwrap().grant.clone();
        a.release("r", None).await.unwrap();
        let second = a.lock("r", Mode::EX, LockOptions::default()).await.unwrap().grant.clone();
        assert!(second.token > first.token);
        let notice = |token| BlockingNotice { resource: "r".into(), held: Mode::EX, requested: Mode::EX, token };

        start_revoke(&a.inner, notice(first.token));
        settled(&a, "r").await;
        assert!(calls.lock().is_empty(), "the handler ran for a grant given up");
        assert_eq!(a.cached("r"), Some(Mode::EX), "the current grant was revoked");

        // A notice about the grant it holds is acted on.
        start_revoke(&a.inner, notice(second.token));
        settled(&a, "r").await;
        assert_eq!(calls.lock().len(), 1);
        assert_eq!(a.cached("r"), None);
    }
}
