//! The lock table: sessions, resources, holders and queues, as a pure deterministic state
//! machine. Every replica applies the same commands in log order and must reach the same state,
//! so nothing here reads clocks, randomness or I/O; side effects come back as [`Effect`]s.
use std::collections::{BTreeMap, BTreeSet, VecDeque};

use lockd_common::ids::request_id_or_zero;
use lockd_common::{validate_lvb, validate_resource, FencingToken, InputError, Mode, RequestId, SessionId, MAX_NODE_NAME};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LockError {
    #[error("unknown session {0}")]
    UnknownSession(SessionId),
    #[error("session {0} expired and is being recovered")]
    SessionRecovering(SessionId),
    #[error("session {0} is not being recovered")]
    NotRecovering(SessionId),
    #[error(transparent)]
    Input(#[from] InputError),
    #[error("invalid node name: {0}")]
    BadNodeName(String),
    #[error("session {session} holds no lock on {resource:?}")]
    NotHeld { session: SessionId, resource: String },
    #[error("session {session} already holds {resource:?} in {mode}; ask for a conversion")]
    AlreadyHeld { session: SessionId, resource: String, mode: Mode },
    #[error("session {session} already has a pending request on {resource:?} (for {mode})")]
    AlreadyQueued { session: SessionId, resource: String, mode: Mode },
    #[error("conversion of {resource:?} to {mode} would deadlock with another pending conversion")]
    Deadlock { resource: String, mode: Mode },
    #[error("nothing to cancel on {resource:?} for session {session}")]
    NothingToCancel { session: SessionId, resource: String },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    pub mode: Mode,
    pub token: FencingToken,
    pub lvb: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LockOutcome {
    Granted(Grant),
    /// Waiting in the queue; a `Effect::Granted` follows when it is granted.
    Queued,
    /// `try_lock` and not grantable now.
    NotGranted,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CancelOutcome {
    Cancelled,
    /// The request had already been granted when the cancel arrived.
    Granted(Grant),
}

/// What the replicas tell the outside world after a command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    Granted {
        session: SessionId,
        resource: String,
        grant: Grant,
    },
    /// `session` holds `resource` in `held`, and someone waits for `requested`, which conflicts.
    Blocking {
        session: SessionId,
        resource: String,
        held: Mode,
        requested: Mode,
        /// The blocking grant's fencing token.
        token: FencingToken,
    },
    Expired {
        session: SessionId,
    },
    /// Tells `session` (alive) that `dead`'s lease lapsed with its changing locks kept for
    /// recovery.
    PeerRecovering {
        session: SessionId,
        dead: SessionId,
        node: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SessionState {
    Active,
    /// Lease lapsed while `hold_locks_on_expiry` was set: its granted locks stay held until
    /// `complete_recovery`, so that nobody touches what the dead node may have half-written.
    Recovering,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Session {
    pub node: String,
    pub lease_ms: u32,
    pub hold_locks_on_expiry: bool,
    pub state: SessionState,
    /// Resources where this session holds or waits (for cleanup without a full scan).
    pub resources: BTreeSet<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    pub session: SessionId,
    pub mode: Mode,
    pub token: FencingToken,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    pub session: SessionId,
    pub mode: Mode,
    /// The Lock call that owns the request (`None`: none in particular; 0 in snapshots). A
    /// retry of the same request takes it over, so a cancel on behalf of an abandoned earlier
    /// call, which names that call, no longer withdraws it (see [`LockTable::own_request`]).
    #[serde(default, with = "request_id_or_zero")]
    pub id: Option<RequestId>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Resource {
    pub granted: Vec<Holder>,
    /// Up-conversions of current holders; served before `waiting` (as in the DLM).
    pub converting: VecDeque<Request>,
    pub waiting: VecDeque<Request>,
    pub lvb: Vec<u8>,
}

impl Resource {
    fn is_idle(&self) -> bool {
        self.granted.is_empty() && self.converting.is_empty() && self.waiting.is_empty()
    }
    fn holder(&self, s: SessionId) -> Option<&Holder> {
        self.granted.iter().find(|h| h.session == s)
    }
    fn pending(&self, s: SessionId) -> Option<Mode> {
        self.pending_request(s).map(|r| r.mode)
    }
    fn pending_request(&self, s: SessionId) -> Option<&Request> {
        self.converting.iter().chain(self.waiting.iter()).find(|r| r.session == s)
    }
    fn pending_request_mut(&mut self, s: SessionId) -> Option<&mut Request> {
        self.converting.iter_mut().chain(self.waiting.iter_mut()).find(|r| r.session == s)
    }
    fn compatible_with_holders(&self, mode: Mode, except: Option<SessionId>) -> bool {
        self.granted.iter().filter(|h| Some(h.session) != except).all(|h| h.mode.compatible(mode))
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct LockTable {
    pub sessions: BTreeMap<SessionId, Session>,
    pub resources: BTreeMap<String, Resource>,
    next_session: u64,
    next_token: u64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub sessions: u64,
    pub resources: u64,
    pub granted: u64,
    pub waiting: u64,
}

/// Issues the fencing token after the `last` one issued.
fn issue_token(last: &mut u64) -> FencingToken {
    let token = FencingToken::following(*last);
    *last = token.get();
    token
}

impl LockTable {
    pub fn next_token(&self) -> u64 {
        self.next_token + 1
    }

    pub fn counts(&self) -> Counts {
        let mut c = Counts { sessions: self.sessions.len() as u64, resources: self.resources.len() as u64, ..Counts::default() };
        for r in self.resources.values() {
            c.granted += r.granted.len() as u64;
            c.waiting += (r.converting.len() + r.waiting.len()) as u64;
        }
        c
    }

    pub fn open_session(&mut self, node: &str, lease_ms: u32, hold_locks_on_expiry: bool) -> Result<SessionId, LockError> {
        if node.is_empty() || node.len() > MAX_NODE_NAME {
            return Err(LockError::BadNodeName(format!("must be 1..={MAX_NODE_NAME} bytes")));
        }
        self.next_session += 1;
        let id = self.next_session;
        self.sessions.insert(
            id,
            Session { node: node.to_string(), lease_ms, hold_locks_on_expiry, state: SessionState::Active, resources: BTreeSet::new() },
        );
        Ok(id)
    }

    fn active(&self, s: SessionId) -> Result<&Session, LockError> {
        match self.sessions.get(&s) {
            None => Err(LockError::UnknownSession(s)),
            Some(sess) if sess.state == SessionState::Recovering => Err(LockError::SessionRecovering(s)),
            Some(sess) => Ok(sess),
        }
    }

    pub fn check_session(&self, s: SessionId) -> Result<(), LockError> {
        self.active(s).map(|_| ())
    }

    /// Whether `s` was ever opened as far as this table has applied (ids are never reused):
    /// an unknown id above that may still be in the log, not yet applied here.
    pub fn assigned(&self, s: SessionId) -> bool {
        (1..=self.next_session).contains(&s)
    }

    /// Orderly goodbye: every lock and request of the session goes.
    pub fn close_session(&mut self, s: SessionId, fx: &mut Vec<Effect>) -> Result<u32, LockError> {
        if !self.sessions.contains_key(&s) {
            return Err(LockError::UnknownSession(s));
        }
        Ok(self.drop_session(s, fx))
    }

    /// The leader decided the lease lapsed. Pending requests are withdrawn at once (a dead node
    /// waits for nothing); granted locks are released now, or kept in RECOVERING when the session
    /// asked for it, until `complete_recovery`.
    pub fn expire_session(&mut self, s: SessionId, fx: &mut Vec<Effect>) -> Result<u32, LockError> {
        let sess = self.sessions.get(&s).ok_or(LockError::UnknownSession(s))?;
        if sess.state == SessionState::Recovering {
            return Ok(0);
        }
        fx.push(Effect::Expired { session: s });
        if !sess.hold_locks_on_expiry {
            return Ok(self.drop_session(s, fx));
        }
        let names: Vec<String> = sess.resources.iter().cloned().collect();
        let node = sess.node.clone();
        if let Some(sess) = self.sessions.get_mut(&s) {
            sess.state = SessionState::Recovering;
        }
        // Every live session hears of it: lockd does not know which of them recover whom.
        for (&other, o) in &self.sessions {
            if other != s && o.state == SessionState::Active {
                fx.push(Effect::PeerRecovering { session: other, dead: s, node: node.clone() });
            }
        }
        let mut released = 0;
        for name in names {
            self.withdraw_pending(s, &name, fx);
            released += self.drop_reading_grant(s, &name, fx);
        }
        Ok(released)
    }

    /// Gives up `s`'s grant on `name` if it only let `s` read (NL, CR, PR): a dead node left
    /// nothing half written under it, so nobody need wait for its recovery there. Its
    /// changing grants stay until the recovery completes.
    fn drop_reading_grant(&mut self, s: SessionId, name: &str, fx: &mut Vec<Effect>) -> u32 {
        let Some(res) = self.resources.get_mut(name) else {
            return 0;
        };
        let Some(pos) = res.granted.iter().position(|h| h.session == s && !h.mode.may_change()) else {
            return 0;
        };
        res.granted.remove(pos);
        if let Some(sess) = self.sessions.get_mut(&s) {
            sess.resources.remove(name);
        }
        self.process(name, fx);
        1
    }

    pub fn complete_recovery(&mut self, s: SessionId, fx: &mut Vec<Effect>) -> Result<u32, LockError> {
        match self.sessions.get(&s) {
            None => Err(LockError::UnknownSession(s)),
            Some(sess) if sess.state != SessionState::Recovering => Err(LockError::NotRecovering(s)),
            Some(_) => Ok(self.drop_session(s, fx)),
        }
    }

    fn drop_session(&mut self, s: SessionId, fx: &mut Vec<Effect>) -> u32 {
        let Some(sess) = self.sessions.remove(&s) else {
            return 0;
        };
        let mut released = 0;
        for name in sess.resources {
            let Some(res) = self.resources.get_mut(&name) else {
                continue;
            };
            let before = res.granted.len();
            // A holder that could write the lock value block may have changed what it
            // describes without writing it (it died, or left without a last release): the
            // block is reset, so no later holder trusts it (the DLM marks it invalid).
            if res.granted.iter().any(|h| h.session == s && h.mode.may_write_lvb()) {
                res.lvb.clear();
            }
            res.granted.retain(|h| h.session != s);
            released += (before - res.granted.len()) as u32;
            res.converting.retain(|r| r.session != s);
            res.waiting.retain(|r| r.session != s);
            self.process(&name, fx);
        }
        released
    }

    /// Withdraws a queued request or conversion of `s` on `name`; the granted mode, if any, stays.
    fn withdraw_pending(&mut self, s: SessionId, name: &str, fx: &mut Vec<Effect>) -> bool {
        let Some(res) = self.resources.get_mut(name) else {
            return false;
        };
        let before = res.converting.len() + res.waiting.len();
        res.converting.retain(|r| r.session != s);
        res.waiting.retain(|r| r.session != s);
        let removed = before != res.converting.len() + res.waiting.len();
        if res.holder(s).is_none() {
            if let Some(sess) = self.sessions.get_mut(&s) {
                sess.resources.remove(name);
            }
        }
        if removed {
            self.process(name, fx);
        }
        removed
    }

    /// Marks the session's queued request on `name` as Lock call `id`'s, after
    /// [`lock`](Self::lock) answered `Queued` to that call: including a request queued by an
    /// earlier attempt that this call repeats, which it thereby takes over.
    pub fn own_request(&mut self, id: Option<RequestId>, s: SessionId, name: &str) {
        if let Some(r) = self.resources.get_mut(name).and_then(|res| res.pending_request_mut(s)) {
            r.id = id;
        }
    }

    /// A new request (`convert == false`) or a conversion of a held lock (`convert == true`).
    /// A repeated request for what is already held or queued is answered as before, so a client
    /// may retry after a leader change without knowing whether its first attempt committed.
    // The arguments are the fields of one Lock command as the log carries it (`LockCmd`, which
    // this crate's lower layer must not know) plus the effect sink; a struct would repeat it.
    #[allow(clippy::too_many_arguments)]
    pub fn lock(
        &mut self,
        s: SessionId,
        name: &str,
        mode: Mode,
        convert: bool,
        try_lock: bool,
        lvb: Option<&[u8]>,
        fx: &mut Vec<Effect>,
    ) -> Result<LockOutcome, LockError> {
        validate_resource(name)?;
        validate_lvb(lvb)?;
        self.active(s)?;
        let res = self.resources.entry(name.to_string()).or_default();
        let held = res.holder(s).cloned();
        let pending = res.pending(s);
        if let Some(p) = pending {
            if p == mode {
                return Ok(LockOutcome::Queued);
            }
            return Err(LockError::AlreadyQueued { session: s, resource: name.into(), mode: p });
        }
        let outcome = match (held, convert) {
            (None, true) => Err(LockError::NotHeld { session: s, resource: name.into() }),
            (Some(h), false) if h.mode == mode => Ok(LockOutcome::Granted(Grant { mode, token: h.token, lvb: res.lvb.clone() })),
            (Some(h), false) => Err(LockError::AlreadyHeld { session: s, resource: name.into(), mode: h.mode }),
            (Some(h), true) => self.convert(s, name, h, mode, try_lock, lvb, fx),
            (None, false) => {
                let res = self.resources.entry(name.to_string()).or_default();
                if res.converting.is_empty() && res.waiting.is_empty() && res.compatible_with_holders(mode, None) {
                    let grant = Grant { mode, token: issue_token(&mut self.next_token), lvb: res.lvb.clone() };
                    res.granted.push(Holder { session: s, mode, token: grant.token });
                    Ok(LockOutcome::Granted(grant))
                } else if try_lock {
                    Ok(LockOutcome::NotGranted)
                } else {
                    res.waiting.push_back(Request { session: s, mode, id: None });
                    notify_blockers(s, name, res, mode, fx);
                    Ok(LockOutcome::Queued)
                }
            }
        };
        self.settle(s, name, &outcome);
        outcome
    }

    /// Try-locks of many resources in `mode`, applied as one (TryLockMany): each is Granted if
    /// grantable now (or already held in `mode`), otherwise NotGranted, also when the session
    /// holds it in another mode or waits on it. Nothing queues, so no holder is told. The
    /// names are checked before anything changes, so an entry applies whole or not at all.
    pub fn try_lock_many(
        &mut self,
        s: SessionId,
        names: &[String],
        mode: Mode,
        fx: &mut Vec<Effect>,
    ) -> Result<Vec<LockOutcome>, LockError> {
        lockd_common::validate_many(names)?;
        self.active(s)?;
        names
            .iter()
            .map(|name| match self.lock(s, name, mode, false, true, None, fx) {
                Err(LockError::AlreadyHeld { .. } | LockError::AlreadyQueued { .. }) => Ok(LockOutcome::NotGranted),
                // A queued request for this very mode is still not a grant.
                Ok(LockOutcome::Queued) => Ok(LockOutcome::NotGranted),
                other => other,
            })
            .collect()
    }

    /// Keeps the session's resource index and the resource map tidy after a request.
    fn settle(&mut self, s: SessionId, name: &str, outcome: &Result<LockOutcome, LockError>) {
        let involved = matches!(outcome, Ok(LockOutcome::Granted(_)) | Ok(LockOutcome::Queued));
        if involved {
            if let Some(sess) = self.sessions.get_mut(&s) {
                sess.resources.insert(name.to_string());
            }
        }
        if self.resources.get(name).is_some_and(Resource::is_idle) {
            self.resources.remove(name);
        }
    }

    // As `lock`, whose arguments it takes over (with the holder found).
    #[allow(clippy::too_many_arguments)]
    fn convert(
        &mut self,
        s: SessionId,
        name: &str,
        h: Holder,
        mode: Mode,
        try_lock: bool,
        lvb: Option<&[u8]>,
        fx: &mut Vec<Effect>,
    ) -> Result<LockOutcome, LockError> {
        let Some(res) = self.resources.get_mut(name) else {
            return Err(LockError::NotHeld { session: s, resource: name.into() });
        };
        let down = h.mode.covers(mode);
        let grantable = down || (res.converting.is_empty() && res.compatible_with_holders(mode, Some(s)));
        if grantable {
            if let (Some(v), true) = (lvb, h.mode.may_write_lvb()) {
                res.lvb = v.to_vec();
            }
            let token = issue_token(&mut self.next_token);
            if let Some(holder) = res.granted.iter_mut().find(|x| x.session == s) {
                holder.mode = mode;
                holder.token = token;
            }
            let grant = Grant { mode, token, lvb: res.lvb.clone() };
            // A new mode may let queued requests through: not only a down-conversion, also a
            // sideways one (CW -> PR frees a PR waiter).
            self.process(name, fx);
            // An up-conversion granted ahead of the queue (conversions go first) now blocks
            // whoever still waits: tell the converter, or it keeps the lock cached and the
            // waiter waits until its timeout.
            if let Some(res) = self.resources.get(name) {
                let blocked = res.converting.iter().chain(res.waiting.iter()).find(|q| q.session != s && !mode.compatible(q.mode));
                if let Some(q) = blocked {
                    fx.push(Effect::Blocking { session: s, resource: name.to_string(), held: mode, requested: q.mode, token });
                }
            }
            return Ok(LockOutcome::Granted(grant));
        }
        if try_lock {
            return Ok(LockOutcome::NotGranted);
        }
        // Two holders each converting to a mode the other's current mode blocks would wait
        // forever; refuse the newcomer, as the DLM does with EDEADLK.
        let deadlock = res.converting.iter().any(|c| {
            let their_held = res.holder(c.session).map(|x| x.mode).unwrap_or(Mode::NL);
            !their_held.compatible(mode) && !c.mode.compatible(h.mode)
        });
        if deadlock {
            return Err(LockError::Deadlock { resource: name.into(), mode });
        }
        res.converting.push_back(Request { session: s, mode, id: None });
        notify_blockers(s, name, res, mode, fx);
        Ok(LockOutcome::Queued)
    }

    /// Withdraws the session's pending request on `name`; with `request`, only if that Lock
    /// call still owns it (a cancel for an abandoned call must not withdraw its retry).
    pub fn cancel(
        &mut self,
        s: SessionId,
        name: &str,
        request: Option<RequestId>,
        fx: &mut Vec<Effect>,
    ) -> Result<CancelOutcome, LockError> {
        validate_resource(name)?;
        self.active(s)?;
        let pending_id = self.resources.get(name).and_then(|r| r.pending_request(s)).map(|r| r.id);
        if let (Some(want), Some(have)) = (request, pending_id) {
            if have != Some(want) {
                return Err(LockError::NothingToCancel { session: s, resource: name.into() });
            }
        }
        if self.withdraw_pending(s, name, fx) {
            if self.resources.get(name).is_some_and(Resource::is_idle) {
                self.resources.remove(name);
            }
            return Ok(CancelOutcome::Cancelled);
        }
        let res = self.resources.get(name);
        match res.and_then(|r| r.holder(s).map(|h| (h.clone(), r.lvb.clone()))) {
            Some((h, lvb)) => Ok(CancelOutcome::Granted(Grant { mode: h.mode, token: h.token, lvb })),
            None => Err(LockError::NothingToCancel { session: s, resource: name.into() }),
        }
    }

    /// Releases the session's lock on `name` (and withdraws a pending conversion of it). With
    /// `token`, only the grant that carries it: a re-sent release of a grant that is already
    /// gone must not take a later grant of the same resource with it.
    pub fn release(
        &mut self,
        s: SessionId,
        name: &str,
        lvb: Option<&[u8]>,
        token: Option<FencingToken>,
        fx: &mut Vec<Effect>,
    ) -> Result<(), LockError> {
        validate_resource(name)?;
        validate_lvb(lvb)?;
        self.active(s)?;
        let Some(res) = self.resources.get_mut(name) else {
            return Err(LockError::NotHeld { session: s, resource: name.into() });
        };
        let Some(pos) = res.granted.iter().position(|h| h.session == s && token.is_none_or(|t| h.token == t)) else {
            return Err(LockError::NotHeld { session: s, resource: name.into() });
        };
        let h = res.granted.remove(pos);
        if let (Some(v), true) = (lvb, h.mode.may_write_lvb()) {
            res.lvb = v.to_vec();
        }
        res.converting.retain(|r| r.session != s);
        if let Some(sess) = self.sessions.get_mut(&s) {
            sess.resources.remove(name);
        }
        self.process(name, fx);
        Ok(())
    }

    /// Releases of many grants applied as one (ReleaseMany): each as [`LockTable::release`]
    /// naming its token, one no longer held skipped. Checked whole before anything changes.
    /// Answers how many were released.
    pub fn release_many(
        &mut self,
        s: SessionId,
        releases: &[(String, FencingToken, Option<Vec<u8>>)],
        fx: &mut Vec<Effect>,
    ) -> Result<u32, LockError> {
        let names: Vec<String> = releases.iter().map(|(n, _, _)| n.clone()).collect();
        lockd_common::validate_many(&names)?;
        for (_, _, lvb) in releases {
            validate_lvb(lvb.as_deref())?;
        }
        self.active(s)?;
        let mut released = 0;
        for (name, token, lvb) in releases {
            match self.release(s, name, lvb.as_deref(), Some(*token), fx) {
                Ok(()) => released += 1,
                Err(LockError::NotHeld { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(released)
    }

    /// Grants whatever became grantable, in queue order: conversions first, then new requests,
    /// each queue strictly FIFO (a request never overtakes an older one, so nobody starves).
    fn process(&mut self, name: &str, fx: &mut Vec<Effect>) {
        let Some(res) = self.resources.get_mut(name) else {
            return;
        };
        let mut newly: Vec<Holder> = Vec::new();
        while let Some(c) = res.converting.front().cloned() {
            if !res.compatible_with_holders(c.mode, Some(c.session)) {
                break;
            }
            res.converting.pop_front();
            let token = issue_token(&mut self.next_token);
            if let Some(h) = res.granted.iter_mut().find(|h| h.session == c.session) {
                h.mode = c.mode;
                h.token = token;
            }
            newly.push(Holder { session: c.session, mode: c.mode, token });
        }
        if res.converting.is_empty() {
            while let Some(w) = res.waiting.front().cloned() {
                if !res.compatible_with_holders(w.mode, None) {
                    break;
                }
                res.waiting.pop_front();
                let h = Holder { session: w.session, mode: w.mode, token: issue_token(&mut self.next_token) };
                res.granted.push(h.clone());
                newly.push(h);
            }
        }
        for h in &newly {
            fx.push(Effect::Granted {
                session: h.session,
                resource: name.to_string(),
                grant: Grant { mode: h.mode, token: h.token, lvb: res.lvb.clone() },
            });
        }
        // The fresh holders now block whoever still waits; tell them, or cached locks would
        // never be given back. One notice per holder (for the first waiter it blocks) is enough:
        // the holder answers by releasing or downgrading, and the queue moves on from there.
        for h in &newly {
            let blocked = res.converting.iter().chain(res.waiting.iter()).find(|q| q.session != h.session && !h.mode.compatible(q.mode));
            if let Some(q) = blocked {
                fx.push(Effect::Blocking {
                    session: h.session,
                    resource: name.to_string(),
                    held: h.mode,
                    requested: q.mode,
                    token: h.token,
                });
            }
        }
        if res.is_idle() {
            self.resources.remove(name);
        }
    }

    /// Blocking notifications that are currently due to `s`: used when a session (re)attaches
    /// its event stream, so a leader change loses none.
    pub fn blocking_for(&self, s: SessionId) -> Vec<Effect> {
        let mut out = Vec::new();
        let Some(sess) = self.sessions.get(&s) else {
            return out;
        };
        for name in &sess.resources {
            let Some(res) = self.resources.get(name) else {
                continue;
            };
            let Some(h) = res.holder(s) else { continue };
            let mut wanted: Option<Mode> = None;
            for q in res.converting.iter().chain(res.waiting.iter()) {
                if q.session != s && !h.mode.compatible(q.mode) {
                    wanted = Some(q.mode);
                    break;
                }
            }
            if let Some(requested) = wanted {
                out.push(Effect::Blocking { session: s, resource: name.clone(), held: h.mode, requested, token: h.token });
            }
        }
        out
    }
}

fn notify_blockers(s: SessionId, name: &str, res: &Resource, mode: Mode, fx: &mut Vec<Effect>) {
    for h in res.granted.iter().filter(|h| h.session != s && !h.mode.compatible(mode)) {
        fx.push(Effect::Blocking { session: h.session, resource: name.to_string(), held: h.mode, requested: mode, token: h.token });
    }
}

#[cfg(test)]
mod tests;
