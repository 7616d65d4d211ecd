//! What the Raft log carries and how a replica applies it: commands on the lock table plus the
//! membership map (replica id -> address). Entry and snapshot payloads start with a format
//! version byte so a replica refuses data from a newer format instead of misreading it.
use std::collections::BTreeMap;

use lockd_common::ids::request_id_or_zero;
use lockd_common::{FencingToken, Mode, RequestId, SessionId};
use serde::{Deserialize, Serialize};

use crate::errors::LockdError;
use crate::lock_table::{CancelOutcome, Effect, LockError, LockOutcome, LockTable};

/// Format 3 marks commands format 2 did not have (`TryLockMany`, `ReleaseMany`): an older
/// replica must stop
/// at them with a clear message rather than fail to decode them.
const COMMAND_FORMAT_V3: u8 = 3;
/// Format 2 marks entries that use fields format 1 did not have (`Release.token`,
/// `LockCmd.release_first`): a replica that predates them would drop them silently and apply
/// the entry differently from the others, so it must refuse the entry instead.
const COMMAND_FORMAT_V2: u8 = 2;
const COMMAND_FORMAT_V1: u8 = 1;
const SNAPSHOT_FORMAT: u8 = 1;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    OpenSession {
        node: String,
        lease_ms: u32,
        hold_locks_on_expiry: bool,
    },
    CloseSession {
        session: SessionId,
    },
    /// Proposed by the leader only, when it saw no heartbeat for lease + margin.
    ExpireSession {
        session: SessionId,
    },
    CompleteRecovery {
        session: SessionId,
    },
    Lock(LockCmd),
    /// Try-locks of many resources in one entry (see `LockTable::try_lock_many`).
    TryLockMany {
        session: SessionId,
        resources: Vec<String>,
        mode: Mode,
    },
    /// Releases of many grants in one entry (see `LockTable::release_many`).
    ReleaseMany {
        session: SessionId,
        releases: Vec<(String, FencingToken, Option<Vec<u8>>)>,
    },
    Cancel {
        session: SessionId,
        resource: String,
        /// Only if Lock call `request` still owns the pending request (absent: whatever is
        /// pending).
        #[serde(default)]
        request: Option<RequestId>,
    },
    Release {
        session: SessionId,
        resource: String,
        lvb: Option<Vec<u8>>,
        /// Only the grant with this fencing token (absent: whatever the session holds).
        #[serde(default)]
        token: Option<FencingToken>,
    },
    /// Commits nothing but orders a read after everything before it (linearizable dump).
    Barrier,
}

/// A lock request or conversion, as the log carries it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockCmd {
    pub session: SessionId,
    pub resource: String,
    pub mode: Mode,
    pub convert: bool,
    pub try_lock: bool,
    pub lvb: Option<Vec<u8>>,
    /// Random per Lock call (chosen by the replica that serves it), so its cancel can name it.
    /// `None` only in entries written before it existed (0 in the log).
    #[serde(default, with = "request_id_or_zero")]
    pub request: Option<RequestId>,
    /// The session's asynchronous release of its earlier grant of this resource, applied
    /// first so the request cannot overtake it (see docs/lockd.md, "Asynchronous release").
    #[serde(default)]
    pub release_first: Option<PendingRelease>,
}

/// A release the client sent without waiting for it, named by the grant's fencing token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingRelease {
    pub token: FencingToken,
    pub lvb: Option<Vec<u8>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CmdResult {
    Session(SessionId),
    Lock(LockOutcome),
    Many(Vec<LockOutcome>),
    Cancel(CancelOutcome),
    Released(u32),
    Done,
}

impl Command {
    /// Whether an older replica would misread this entry (see [`COMMAND_FORMAT_V2`]).
    fn needs_format_2(&self) -> bool {
        match self {
            Command::Release { token, .. } => token.is_some(),
            Command::Lock(c) => c.release_first.is_some(),
            _ => false,
        }
    }

    pub fn encode(&self) -> Result<Vec<u8>, LockdError> {
        let format = match self {
            Command::TryLockMany { .. } | Command::ReleaseMany { .. } => COMMAND_FORMAT_V3,
            c if c.needs_format_2() => COMMAND_FORMAT_V2,
            _ => COMMAND_FORMAT_V1,
        };
        let mut out = vec![format];
        serde_json::to_writer(&mut out, self).map_err(|e| LockdError::Invalid(e.to_string()))?;
        Ok(out)
    }

    pub fn decode(b: &[u8]) -> Result<Command, LockdError> {
        match b.split_first() {
            Some((&(COMMAND_FORMAT_V1 | COMMAND_FORMAT_V2 | COMMAND_FORMAT_V3), rest)) => {
                serde_json::from_slice(rest).map_err(|e| LockdError::Storage(format!("undecodable log entry: {e}")))
            }
            Some((v, _)) => Err(LockdError::Storage(format!("log entry format {v} is newer than this lockd ({COMMAND_FORMAT_V3})"))),
            None => Err(LockdError::Storage("empty log entry".into())),
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StateMachine {
    pub table: LockTable,
    pub members: BTreeMap<u64, String>,
    /// Replicas whose removal was applied (and that were not added back since), with the log
    /// index of the removal: their raft messages are answered "removed at index R", so one
    /// that missed the commit of its own removal learns of it and stops (see `RaftService`).
    /// Absent from older snapshots.
    #[serde(default)]
    pub removed: BTreeMap<u64, u64>,
}

impl StateMachine {
    pub fn with_members(members: BTreeMap<u64, String>) -> Self {
        StateMachine { table: LockTable::default(), members, removed: Default::default() }
    }

    pub fn apply(&mut self, cmd: Command, fx: &mut Vec<Effect>) -> Result<CmdResult, LockError> {
        let t = &mut self.table;
        Ok(match cmd {
            Command::OpenSession { node, lease_ms, hold_locks_on_expiry } => {
                CmdResult::Session(t.open_session(&node, lease_ms, hold_locks_on_expiry)?)
            }
            Command::CloseSession { session } => CmdResult::Released(t.close_session(session, fx)?),
            Command::ExpireSession { session } => CmdResult::Released(t.expire_session(session, fx)?),
            Command::CompleteRecovery { session } => CmdResult::Released(t.complete_recovery(session, fx)?),
            Command::Lock(c) => {
                if let Some(r) = &c.release_first {
                    match t.release(c.session, &c.resource, r.lvb.as_deref(), Some(r.token), fx) {
                        // Its own copy of the release got there first.
                        Ok(()) | Err(LockError::NotHeld { .. }) => {}
                        Err(e) => return Err(e),
                    }
                }
                let outcome = t.lock(c.session, &c.resource, c.mode, c.convert, c.try_lock, c.lvb.as_deref(), fx)?;
                if outcome == LockOutcome::Queued {
                    t.own_request(c.request, c.session, &c.resource);
                }
                CmdResult::Lock(outcome)
            }
            Command::TryLockMany { session, resources, mode } => CmdResult::Many(t.try_lock_many(session, &resources, mode, fx)?),
            Command::ReleaseMany { session, releases } => CmdResult::Released(t.release_many(session, &releases, fx)?),
            Command::Cancel { session, resource, request } => CmdResult::Cancel(t.cancel(session, &resource, request, fx)?),
            Command::Release { session, resource, lvb, token } => {
                t.release(session, &resource, lvb.as_deref(), token, fx)?;
                CmdResult::Done
            }
            Command::Barrier => CmdResult::Done,
        })
    }

    pub fn encode_snapshot(&self) -> Result<Vec<u8>, LockdError> {
        let mut out = vec![SNAPSHOT_FORMAT];
        serde_json::to_writer(&mut out, self).map_err(|e| LockdError::Storage(e.to_string()))?;
        Ok(out)
    }

    pub fn decode_snapshot(b: &[u8]) -> Result<StateMachine, LockdError> {
        match b.split_first() {
            Some((&SNAPSHOT_FORMAT, rest)) => {
                serde_json::from_slice(rest).map_err(|e| LockdError::Storage(format!("undecodable snapshot: {e}")))
            }
            Some((v, _)) => Err(LockdError::Storage(format!("snapshot format {v} is newer than this lockd ({SNAPSHOT_FORMAT})"))),
            None => Err(LockdError::Storage("empty snapshot".into())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(t: u64) -> FencingToken {
        FencingToken::from_wire(t).expect("a nonzero token")
    }

    #[test]
    fn commands_and_snapshots_round_trip_and_refuse_newer_formats() {
        let c = Command::Lock(LockCmd {
            session: 3,
            resource: "inode/7".into(),
            mode: Mode::PW,
            convert: true,
            try_lock: false,
            lvb: Some(vec![1, 2]),
            request: RequestId::new(99),
            release_first: Some(PendingRelease { token: token(4), lvb: None }),
        });
        assert_eq!(Command::decode(&c.encode().unwrap()).unwrap(), c);
        assert_eq!(c.encode().unwrap()[0], 2, "release_first needs format 2");
        let plain = Command::Release { session: 3, resource: "r".into(), lvb: None, token: None };
        assert_eq!(plain.encode().unwrap()[0], 1, "entries an older replica reads stay format 1");
        assert_eq!(Command::decode(&plain.encode().unwrap()).unwrap(), plain);
        // Entries from before `request` existed decode, with no request.
        let old = b"\x01{\"Cancel\":{\"session\":3,\"resource\":\"r\"}}";
        assert_eq!(Command::decode(old).unwrap(), Command::Cancel { session: 3, resource: "r".into(), request: None });
        // A Lock entry from before `request` existed decodes without one; one without a
        // request writes 0, as before it was an option.
        let old_lock =
            b"\x01{\"Lock\":{\"session\":3,\"resource\":\"r\",\"mode\":\"EX\",\"convert\":false,\"try_lock\":false,\"lvb\":null}}";
        let Command::Lock(decoded) = Command::decode(old_lock).unwrap() else { panic!("not a Lock") };
        assert_eq!(decoded.request, None);
        assert!(String::from_utf8_lossy(&Command::Lock(decoded).encode().unwrap()).contains("\"request\":0"));
        let mut bad = c.encode().unwrap();
        bad[0] = 9;
        assert!(matches!(Command::decode(&bad), Err(LockdError::Storage(_))));

        let mut sm = StateMachine::with_members([(1, "127.0.0.1:1".to_string())].into());
        let mut fx = vec![];
        let s = match sm.apply(Command::OpenSession { node: "n".into(), lease_ms: 1000, hold_locks_on_expiry: false }, &mut fx).unwrap() {
            CmdResult::Session(s) => s,
            r => panic!("{r:?}"),
        };
        sm.apply(
            Command::Lock(LockCmd {
                session: s,
                resource: "r".into(),
                mode: Mode::EX,
                convert: false,
                try_lock: false,
                lvb: None,
                request: RequestId::new(7),
                release_first: None,
            }),
            &mut fx,
        )
        .unwrap();
        let back = StateMachine::decode_snapshot(&sm.encode_snapshot().unwrap()).unwrap();
        assert_eq!(back.members, sm.members);
        assert_eq!(back.table.counts(), sm.table.counts());
        assert_eq!(back.table.next_token(), sm.table.next_token());
    }

    fn open(sm: &mut StateMachine, node: &str) -> SessionId {
        let cmd = Command::OpenSession { node: node.into(), lease_ms: 1000, hold_locks_on_expiry: false };
        match sm.apply(cmd, &mut vec![]) {
            Ok(CmdResult::Session(s)) => s,
            r => panic!("{r:?}"),
        }
    }

    fn lock_ex(session: SessionId, release_first: Option<PendingRelease>) -> Command {
        Command::Lock(LockCmd {
            session,
            resource: "r".into(),
            mode: Mode::EX,
            convert: false,
            try_lock: true,
            lvb: None,
            request: RequestId::new(1),
            release_first,
        })
    }

    fn granted(r: Result<CmdResult, LockError>) -> crate::lock_table::Grant {
        match r {
            Ok(CmdResult::Lock(LockOutcome::Granted(g))) => g,
            r => panic!("expected a grant, got {r:?}"),
        }
    }

    /// `keeper` holds "r" NL, which keeps the resource, and with it the lock value block, in
    /// existence.
    fn keep_alive(sm: &mut StateMachine, keeper: SessionId, fx: &mut Vec<Effect>) {
        let mut nl = lock_ex(keeper, None);
        if let Command::Lock(c) = &mut nl {
            c.mode = Mode::NL;
        }
        granted(sm.apply(nl, fx));
    }

    #[test]
    fn a_lock_carrying_its_sessions_pending_release_is_applied_after_it_and_late_copies_do_nothing() {
        let mut sm = StateMachine::default();
        let (a, b, keeper) = (open(&mut sm, "a"), open(&mut sm, "b"), open(&mut sm, "keeper"));
        let fx = &mut vec![];
        keep_alive(&mut sm, keeper, fx);
        let first = granted(sm.apply(lock_ex(a, None), fx));
        // Without the release in front, the same request would be answered with the grant
        // being given up.
        let pending = PendingRelease { token: first.token, lvb: Some(b"v1".to_vec()) };
        let second = granted(sm.apply(lock_ex(a, Some(pending.clone())), fx));
        assert!(second.token > first.token, "{second:?} is not a new grant after {first:?}");
        assert_eq!(second.lvb, b"v1", "the release's lock value block was written first");
        // The release's own copy, and a retried Lock carrying it, arrive late: neither takes
        // the new grant away.
        let late = Command::Release { session: a, resource: "r".into(), lvb: Some(b"stale".to_vec()), token: Some(first.token) };
        assert!(matches!(sm.apply(late, fx), Err(LockError::NotHeld { .. })));
        assert_eq!(granted(sm.apply(lock_ex(a, Some(pending)), fx)).token, second.token);
        assert_eq!(sm.apply(lock_ex(b, None), fx).ok(), Some(CmdResult::Lock(LockOutcome::NotGranted)), "a's second grant is still held");
        let release = Command::Release { session: a, resource: "r".into(), lvb: None, token: Some(second.token) };
        sm.apply(release, fx).expect("release of the current grant");
        assert_eq!(granted(sm.apply(lock_ex(b, None), fx)).lvb, b"v1");
    }
    #[test]
    fn try_lock_many_grants_what_is_free_in_one_entry_tells_no_holder_and_applies_whole_or_not_at_all() {
        let mut sm = StateMachine::default();
        let (a, b) = (open(&mut sm, "a"), open(&mut sm, "b"));
        let fx = &mut vec![];
        let held_by_b = granted(sm.apply(lock_ex(b, None), fx));
        let mut pr = lock_ex(a, None);
        if let Command::Lock(c) = &mut pr {
            c.resource = "mine-pr".into();
            c.mode = Mode::PR;
        }
        granted(sm.apply(pr, fx));
        fx.clear();
        let names: Vec<String> = ["free1", "r", "mine-pr", "free2"].iter().map(|n| n.to_string()).collect();
        let many = Command::TryLockMany { session: a, resources: names.clone(), mode: Mode::EX };
        assert_eq!(many.encode().unwrap()[0], 3, "an older replica must stop at TryLockMany, not misread it");
        assert_eq!(Command::decode(&many.encode().unwrap()).unwrap(), many);
        let outcomes = match sm.apply(many.clone(), fx) {
            Ok(CmdResult::Many(o)) => o,
            r => panic!("{r:?}"),
        };
        let kinds: Vec<bool> = outcomes.iter().map(|o| matches!(o, LockOutcome::Granted(_))).collect();
        // r is b's and mine-pr is a's in another mode: neither granted; both free ones are.
        assert_eq!(kinds, [true, false, false, true]);
        assert!(fx.is_empty(), "a try-lock told a holder: {fx:?}");
        // A retry is answered with the same grants.
        let again = match sm.apply(many, fx) {
            Ok(CmdResult::Many(o)) => o,
            r => panic!("{r:?}"),
        };
        assert_eq!(again, outcomes);
        // b still holds r under its token.
        assert_eq!(sm.apply(lock_ex(b, None), fx).ok(), Some(CmdResult::Lock(LockOutcome::Granted(held_by_b))));
        // A bad name anywhere refuses the whole entry: the free name before it stays free.
        let before = sm.table.counts();
        let bad = Command::TryLockMany { session: b, resources: vec!["free3".into(), String::new()], mode: Mode::EX };
        assert!(matches!(sm.apply(bad, fx), Err(LockError::Input(_))));
        let twice = Command::TryLockMany { session: b, resources: vec!["free3".into(), "free3".into()], mode: Mode::EX };
        assert!(matches!(sm.apply(twice, fx), Err(LockError::Input(_))));
        assert_eq!(sm.table.counts(), before);
    }

    #[test]
    fn release_many_releases_the_named_grants_in_one_entry_skips_gone_ones_and_applies_whole_or_not_at_all() {
        let mut sm = StateMachine::default();
        let (a, b, keeper) = (open(&mut sm, "a"), open(&mut sm, "b"), open(&mut sm, "keeper"));
        let fx = &mut vec![];
        keep_alive(&mut sm, keeper, fx);
        let r = granted(sm.apply(lock_ex(a, None), fx));
        let many = match sm.apply(Command::TryLockMany { session: a, resources: vec!["x".into(), "y".into()], mode: Mode::EX }, fx) {
            Ok(CmdResult::Many(o)) => o,
            other => panic!("{other:?}"),
        };
        let x = match &many[0] {
            LockOutcome::Granted(g) => g.token,
            other => panic!("{other:?}"),
        };
        let stale = token(x.get() + 1000);
        let releases = vec![("r".to_string(), r.token, Some(b"v2".to_vec())), ("x".to_string(), x, None), ("y".to_string(), stale, None)];
        let cmd = Command::ReleaseMany { session: a, releases: releases.clone() };
        assert_eq!(cmd.encode().unwrap()[0], 3);
        assert_eq!(Command::decode(&cmd.encode().unwrap()).unwrap(), cmd);
        // y is held under another token: skipped, still held.
        assert_eq!(sm.apply(cmd.clone(), fx), Ok(CmdResult::Released(2)));
        assert_eq!(sm.apply(cmd, fx), Ok(CmdResult::Released(0)), "a re-sent copy releases nothing new");
        assert_eq!(granted(sm.apply(lock_ex(b, None), fx)).lvb, b"v2");
        // One bad name refuses the whole entry.
        let before = sm.table.counts();
        let bad = Command::ReleaseMany { session: a, releases: vec![("y".into(), stale, None), (String::new(), stale, None)] };
        assert!(matches!(sm.apply(bad, fx), Err(LockError::Input(_))));
        assert_eq!(sm.table.counts(), before);
    }
}
