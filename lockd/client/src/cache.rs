//! What a session remembers about each resource it holds or is acquiring, and about the
//! releases it sent without waiting for them.
use std::time::Instant;

use lockd_common::{FencingToken, Mode};
use mafs_proto::v1 as pb;

use crate::types::BlockingNotice;

/// Where a cached lock stands. Every call on a resource waits while it is not `Held`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum State {
    /// The first request for the resource is in flight: nothing is held yet.
    Acquiring,
    /// Held in this mode, nothing in flight.
    Held(Mode),
    /// Held in this mode; a conversion, release or revocation of it is in flight.
    Busy(Mode),
}

impl State {
    pub(crate) fn mode(self) -> Option<Mode> {
        match self {
            State::Acquiring => None,
            State::Held(m) | State::Busy(m) => Some(m),
        }
    }

    pub(crate) fn is_busy(self) -> bool {
        !matches!(self, State::Held(_))
    }
}

/// The blocking notices of a resource that still want an answer. Apart from [`State`]: a
/// notice may come (late, about an earlier grant) whatever the state, and waits its turn.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) enum Revocation {
    #[default]
    None,
    /// The newest notice; no revocation is queued for it yet (the one that failed to answer
    /// it sends it again shortly).
    Unanswered(BlockingNotice),
    /// A revocation is waiting for the lock to be idle, or running; it answers the newest
    /// notice, which this holds (notices can come meanwhile).
    Queued(BlockingNotice),
}

pub(crate) struct Cached {
    pub(crate) state: State,
    /// The grant's fencing token; `None` after a conversion whose outcome never came back
    /// (lockd may hold it under a newer token), which makes its release synchronous and
    /// unnamed.
    pub(crate) token: Option<FencingToken>,
    pub(crate) lvb: Vec<u8>,
    /// Local users inside a LockGuard.
    pub(crate) users: usize,
    /// When a local user last took or left it (or it was granted): the least recently used
    /// idle locks are the ones a holder trimming its cache gives up first.
    pub(crate) last_used: Instant,
    pub(crate) revocation: Revocation,
}

impl Cached {
    /// Another session waits for this lock and this one is to give it up: a blocking notice
    /// about the current grant, for a mode the held one does not allow. New local users then
    /// wait for the revocation instead of taking the cached lock, or a session whose users
    /// overlap without pause would never be idle, and the waiter would wait for ever (GFS2
    /// queues new holders behind a pending demote in the same way).
    pub(crate) fn demote_pending(&self) -> bool {
        let (Revocation::Queued(n) | Revocation::Unanswered(n)) = &self.revocation else { return false };
        let State::Held(held) = self.state else { return false };
        // A notice about a grant given up earlier is not about this one.
        let stale = matches!((n.token, self.token), (Some(nt), Some(t)) if nt < t);
        !stale && !held.compatible(n.requested)
    }

    /// The record of a first request, sent now.
    pub(crate) fn acquiring() -> Cached {
        Cached { state: State::Acquiring, token: None, lvb: Vec::new(), users: 0, last_used: Instant::now(), revocation: Revocation::None }
    }

    /// Puts the lock in `mode` (busy still, if it was).
    pub(crate) fn set_mode(&mut self, mode: Mode) {
        self.state = match self.state {
            State::Held(_) => State::Held(mode),
            State::Acquiring | State::Busy(_) => State::Busy(mode),
        };
    }
}

/// A release sent without waiting for its commit (see `Session::release`): the lock has left
/// the cache, but lockd may still hold it for us until this is confirmed.
#[derive(Clone)]
pub(crate) struct Releasing {
    pub(crate) token: FencingToken,
    pub(crate) lvb: Option<Vec<u8>>,
}

impl Releasing {
    pub(crate) fn to_wire(&self) -> pb::PendingRelease {
        pb::PendingRelease { fencing_token: self.token.get(), write_lvb: self.lvb.is_some(), lvb: self.lvb.clone().unwrap_or_default() }
    }
}
