//! What a session shares with its background tasks and revocations: the lock cache, the
//! releases on their way, whether the session is lost, and the RPCs they all make.
use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use lockd_common::{ErrorKind, FencingToken, Mode};
use mafs_proto::v1 as pb;
use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::cache::{Cached, Releasing, State};
use crate::conn::Conn;
use crate::error::{Error, Result};
use crate::types::{BlockingHandler, LockOptions};

/// Why a session closed by its owner is "lost": no warning for it.
pub(crate) const CLOSED: &str = "closed";

pub(crate) struct Inner {
    pub(crate) conn: Conn,
    pub(crate) id: u64,
    pub(crate) lease: Duration,
    pub(crate) retry_for: Duration,
    pub(crate) cache: Mutex<HashMap<String, Cached>>,
    /// Releases not yet confirmed, by resource. Never locked while `cache` is held.
    pub(crate) releasing: Mutex<HashMap<String, Releasing>>,
    /// Wakes waiters on `cache` or `releasing`.
    pub(crate) changed: Notify,
    pub(crate) lost: Mutex<Option<String>>,
    pub(crate) valid_until: Mutex<Instant>,
    pub(crate) handler: Option<BlockingHandler>,
    /// lockd honours releases named by token and carried by a lock (older ones do not).
    pub(crate) release_by_token: bool,
    /// The `Session` is gone: no heartbeats any more, so nobody will mark it lost.
    pub(crate) dropped: AtomicBool,
    /// Calls waiting for a lock's last local user to leave (other than revocations, which
    /// mark the lock): a guard that leaves last wakes waiters only if someone waits so.
    pub(crate) idle_waiters: std::sync::atomic::AtomicUsize,
    /// How many `PeerRecovering` notices the session has heard (another session's lease
    /// lapsed with its locks kept for recovery).
    pub(crate) peer_recoveries: tokio::sync::watch::Sender<u64>,
}

/// A conversion whose fate is unknown: no replica answered, and the cleanup cancel did not
/// tell either.
pub(crate) fn outcome_unknown(r: &Result<pb::LockResponse>) -> bool {
    matches!(r, Err(Error::Unavailable(_)))
}

/// Whether lockd answered a Lock call with a grant.
pub(crate) fn is_granted(resp: &pb::LockResponse) -> bool {
    resp.status == pb::LockStatus::Granted as i32
}

impl Inner {
    pub(crate) fn check(&self) -> Result<()> {
        match &*self.lost.lock() {
            Some(why) => Err(Error::SessionLost(why.clone())),
            None => Ok(()),
        }
    }

    pub(crate) fn mark_lost(&self, why: String) {
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

    pub(crate) fn deadline(&self) -> Instant {
        Instant::now() + self.retry_for
    }

    /// Waits until `probe` answers (it runs again after every change to `cache` or
    /// `releasing`), or the session is lost.
    pub(crate) async fn wait_for<T>(&self, mut probe: impl FnMut() -> Option<T>) -> Result<T> {
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
    pub(crate) async fn with_idle<T>(
        &self,
        resource: &str,
        ready: impl Fn(&Cached) -> bool,
        mut take: impl FnMut(&mut HashMap<String, Cached>) -> T,
    ) -> Result<T> {
        self.wait_for(|| {
            let mut cache = self.cache.lock();
            let idle = cache.get(resource).is_none_or(|c| !c.state.is_busy() && ready(c));
            idle.then(|| take(&mut cache))
        })
        .await
    }

    /// Marks a held lock busy for a release or conversion (waiting for local users to leave
    /// when `unused`), and answers the fencing token of its grant.
    pub(crate) async fn claim_held(&self, resource: &str, unused: bool) -> Result<Option<FencingToken>> {
        struct Waiting<'a>(&'a std::sync::atomic::AtomicUsize);
        impl Drop for Waiting<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
            }
        }
        let _waiting = unused.then(|| {
            self.idle_waiters.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
            Waiting(&self.idle_waiters)
        });
        let held = self
            .with_idle(
                resource,
                |c| !unused || c.users == 0,
                |cache| match cache.get_mut(resource) {
                    Some(c) => match c.state {
                        State::Held(m) => {
                            c.state = State::Busy(m);
                            Some(c.token)
                        }
                        State::Acquiring | State::Busy(_) => None,
                    },
                    None => None,
                },
            )
            .await?;
        held.ok_or_else(|| Error::refused(ErrorKind::NotHeld, format!("{resource:?} is not held by this session")))
    }

    /// Drops the record of an asynchronous release once lockd has certainly applied it (a
    /// later release of the same resource has its own record).
    pub(crate) fn forget_release(&self, resource: &str, token: FencingToken) {
        let mut releasing = self.releasing.lock();
        if releasing.get(resource).is_some_and(|r| r.token == token) {
            releasing.remove(resource);
        }
        drop(releasing);
        self.changed.notify_waiters();
    }

    /// Ends what made `resource` busy: `update` sees its entry and says whether to keep it; a
    /// kept entry is idle again (one still acquiring holds nothing, and goes).
    pub(crate) fn finish(&self, resource: &str, update: impl FnOnce(Option<&mut Cached>) -> bool) {
        let mut cache = self.cache.lock();
        let keep = update(cache.get_mut(resource));
        let kept = keep
            && cache.get_mut(resource).is_some_and(|c| match c.state {
                State::Held(m) | State::Busy(m) => {
                    c.state = State::Held(m);
                    true
                }
                State::Acquiring => false,
            });
        if !kept {
            cache.remove(resource);
        }
        drop(cache);
        self.changed.notify_waiters();
    }

    /// Releases the grant `token` of `resource` (whatever grant the session has, without one);
    /// a grant that is already gone counts as released.
    pub(crate) async fn rpc_release(&self, resource: &str, lvb: Option<Vec<u8>>, token: Option<FencingToken>) -> Result<()> {
        let req = pb::ReleaseRequest {
            session_id: self.id,
            resource: resource.to_string(),
            write_lvb: lvb.is_some(),
            lvb: lvb.unwrap_or_default(),
            fencing_token: FencingToken::to_wire(token),
        };
        let r = self.conn.call(resource, self.deadline(), Duration::from_secs(6), |mut c| {
            let req = req.clone();
            async move { c.release(req).await }
        });
        match r.await {
            // A retry after a lost answer, or a later Lock call that carried the release, got
            // there first.
            Err(e) if e.is_refusal(ErrorKind::NotHeld) => Ok(()),
            other => other.map(|_| ()),
        }
    }

    pub(crate) async fn rpc_lock(
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
        let resp = self
            .conn
            .call(resource, deadline, wait + Duration::from_secs(6), |mut c| {
                let mut req = req.clone();
                // A retry (after a failover) waits only for what is left of the caller's time.
                let left = deadline.saturating_duration_since(Instant::now()).saturating_sub(self.retry_for);
                req.timeout_ms = u32::try_from(left.as_millis()).unwrap_or(u32::MAX).max(1);
                async move { c.lock(req).await }
            })
            .await;
        if !matches!(resp, Err(Error::Unavailable(_))) {
            return resp;
        }
        // We may have been queued before the cluster went quiet; withdraw, and take a grant
        // that slipped in.
        let releasing = release_first.as_ref().and_then(|r| FencingToken::from_wire(r.fencing_token));
        match self.withdraw(resource, releasing).await {
            Some(granted) => Ok(granted),
            None => resp,
        }
    }

    /// Cancels what a Lock call with no answer may have queued; a grant the cancel reports
    /// instead is the call's answer, unless it is the grant `releasing` gives up.
    async fn withdraw(&self, resource: &str, releasing: Option<FencingToken>) -> Option<pb::LockResponse> {
        let cancel = pb::CancelRequest { session_id: self.id, resource: resource.to_string() };
        let c = self
            .conn
            .call(resource, Instant::now() + Duration::from_secs(5), Duration::from_secs(5), |mut cl| {
                let r = cancel.clone();
                async move { cl.cancel(r).await }
            })
            .await
            .ok()?;
        let token = FencingToken::from_wire(c.fencing_token);
        (c.granted && releasing != token).then(|| pb::LockResponse {
            status: pb::LockStatus::Granted as i32,
            mode: c.mode,
            fencing_token: c.fencing_token,
            lvb: Vec::new(),
        })
    }
}
