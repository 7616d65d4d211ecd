//! What the Raft log carries and how a replica applies it: commands on the lock table plus the
//! membership map (replica id -> address). Entry and snapshot payloads start with a format
//! version byte so a replica refuses data from a newer format instead of misreading it.
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::errors::LockdError;
use crate::lock_table::{CancelOutcome, Effect, LockError, LockOutcome, LockTable, SessionId};
use crate::mode::Mode;

const COMMAND_FORMAT: u8 = 1;
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
    Cancel {
        session: SessionId,
        resource: String,
        /// Only if Lock call `request` still owns the pending request (absent: whatever is
        /// pending).
        #[serde(default)]
        request: Option<u64>,
    },
    Release {
        session: SessionId,
        resource: String,
        lvb: Option<Vec<u8>>,
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
    #[serde(default)]
    pub request: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CmdResult {
    Session(SessionId),
    Lock(LockOutcome),
    Cancel(CancelOutcome),
    Released(u32),
    Done,
}

impl Command {
    pub fn encode(&self) -> Result<Vec<u8>, LockdError> {
        let mut out = vec![COMMAND_FORMAT];
        serde_json::to_writer(&mut out, self).map_err(|e| LockdError::Invalid(e.to_string()))?;
        Ok(out)
    }

    pub fn decode(b: &[u8]) -> Result<Command, LockdError> {
        match b.split_first() {
            Some((&COMMAND_FORMAT, rest)) => serde_json::from_slice(rest)
                .map_err(|e| LockdError::Storage(format!("undecodable log entry: {e}"))),
            Some((v, _)) => Err(LockdError::Storage(format!(
                "log entry format {v} is newer than this lockd ({COMMAND_FORMAT})"
            ))),
            None => Err(LockdError::Storage("empty log entry".into())),
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StateMachine {
    pub table: LockTable,
    pub members: BTreeMap<u64, String>,
}

impl StateMachine {
    pub fn with_members(members: BTreeMap<u64, String>) -> Self {
        StateMachine {
            table: LockTable::default(),
            members,
        }
    }

    pub fn apply(&mut self, cmd: Command, fx: &mut Vec<Effect>) -> Result<CmdResult, LockError> {
        let t = &mut self.table;
        Ok(match cmd {
            Command::OpenSession {
                node,
                lease_ms,
                hold_locks_on_expiry,
            } => CmdResult::Session(t.open_session(&node, lease_ms, hold_locks_on_expiry)?),
            Command::CloseSession { session } => CmdResult::Released(t.close_session(session, fx)?),
            Command::ExpireSession { session } => {
                CmdResult::Released(t.expire_session(session, fx)?)
            }
            Command::CompleteRecovery { session } => {
                CmdResult::Released(t.complete_recovery(session, fx)?)
            }
            Command::Lock(c) => {
                let outcome = t.lock(
                    c.session,
                    &c.resource,
                    c.mode,
                    c.convert,
                    c.try_lock,
                    c.lvb.as_deref(),
                    fx,
                )?;
                if outcome == LockOutcome::Queued {
                    t.own_request(c.request, c.session, &c.resource);
                }
                CmdResult::Lock(outcome)
            }
            Command::Cancel {
                session,
                resource,
                request,
            } => CmdResult::Cancel(t.cancel(session, &resource, request, fx)?),
            Command::Release {
                session,
                resource,
                lvb,
            } => {
                t.release(session, &resource, lvb.as_deref(), fx)?;
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
            Some((&SNAPSHOT_FORMAT, rest)) => serde_json::from_slice(rest)
                .map_err(|e| LockdError::Storage(format!("undecodable snapshot: {e}"))),
            Some((v, _)) => Err(LockdError::Storage(format!(
                "snapshot format {v} is newer than this lockd ({SNAPSHOT_FORMAT})"
            ))),
            None => Err(LockdError::Storage("empty snapshot".into())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_and_snapshots_round_trip_and_refuse_newer_formats() {
        let c = Command::Lock(LockCmd {
            session: 3,
            resource: "inode/7".into(),
            mode: Mode::PW,
            convert: true,
            try_lock: false,
            lvb: Some(vec![1, 2]),
            request: 99,
        });
        assert_eq!(Command::decode(&c.encode().unwrap()).unwrap(), c);
        // Entries from before `request` existed decode, with request 0.
        let old = b"\x01{\"Cancel\":{\"session\":3,\"resource\":\"r\"}}";
        assert_eq!(
            Command::decode(old).unwrap(),
            Command::Cancel { session: 3, resource: "r".into(), request: None }
        );
        let mut bad = c.encode().unwrap();
        bad[0] = 9;
        assert!(matches!(Command::decode(&bad), Err(LockdError::Storage(_))));

        let mut sm = StateMachine::with_members([(1, "127.0.0.1:1".to_string())].into());
        let mut fx = vec![];
        let s = match sm
            .apply(
                Command::OpenSession {
                    node: "n".into(),
                    lease_ms: 1000,
                    hold_locks_on_expiry: false,
                },
                &mut fx,
            )
            .unwrap()
        {
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
                request: 7,
            }),
            &mut fx,
        )
        .unwrap();
        let back = StateMachine::decode_snapshot(&sm.encode_snapshot().unwrap()).unwrap();
        assert_eq!(back.members, sm.members);
        assert_eq!(back.table.counts(), sm.table.counts());
        assert_eq!(back.table.next_token(), sm.table.next_token());
    }
}
