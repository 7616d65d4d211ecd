//! Delivery of lock-table effects to clients connected to this replica: the per-session event
//! streams, the Lock calls waiting for their grant, and the leader's lease bookkeeping.
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use lockd_common::SessionId;
use mafs_proto::v1 as pb;
use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot};

use crate::lock_table::{Effect, Grant};

type WaiterKey = (SessionId, String);
/// Lock calls waiting per (session, resource), each with an id to unregister by.
type Waiters = HashMap<WaiterKey, Vec<(u64, oneshot::Sender<Grant>)>>;

#[derive(Default)]
pub struct EventHub {
    streams: Mutex<HashMap<SessionId, mpsc::UnboundedSender<pb::Event>>>,
    waiters: Mutex<Waiters>,
    next_waiter: AtomicU64,
}

/// A Lock call's interest in the grant of (session, resource); unregisters itself on drop.
pub struct GrantWaiter<'a> {
    hub: &'a EventHub,
    key: WaiterKey,
    id: u64,
    pub rx: oneshot::Receiver<Grant>,
}

impl Drop for GrantWaiter<'_> {
    fn drop(&mut self) {
        let mut w = self.hub.waiters.lock();
        if let Some(list) = w.get_mut(&self.key) {
            list.retain(|(id, _)| *id != self.id);
            if list.is_empty() {
                w.remove(&self.key);
            }
        }
    }
}

pub fn grant_event(resource: &str, g: &Grant) -> pb::Event {
    pb::Event {
        kind: Some(pb::event::Kind::Granted(pb::Granted {
            resource: resource.to_string(),
            mode: g.mode.to_wire(),
            fencing_token: g.token.get(),
            lvb: g.lvb.clone(),
        })),
    }
}

pub fn effect_event(fx: &Effect) -> (SessionId, pb::Event) {
    match fx {
        Effect::Granted { session, resource, grant } => (*session, grant_event(resource, grant)),
        Effect::Blocking { session, resource, held, requested, token } => (
            *session,
            pb::Event {
                kind: Some(pb::event::Kind::Blocking(pb::Blocking {
                    resource: resource.clone(),
                    held: held.to_wire(),
                    requested: requested.to_wire(),
                    fencing_token: token.get(),
                })),
            },
        ),
        Effect::Expired { session } => {
            (*session, pb::Event { kind: Some(pb::event::Kind::Expired(pb::SessionExpired { session_id: *session })) })
        }
        Effect::PeerRecovering { session, dead, node } => (
            *session,
            pb::Event { kind: Some(pb::event::Kind::PeerRecovering(pb::PeerRecovering { session_id: *dead, node_name: node.clone() })) },
        ),
    }
}

impl EventHub {
    /// Register before proposing the request, so a grant applied before the proposer looks
    /// cannot slip by.
    pub fn wait_for_grant(&self, session: SessionId, resource: &str) -> GrantWaiter<'_> {
        let (tx, rx) = oneshot::channel();
        let id = self.next_waiter.fetch_add(1, Ordering::Relaxed);
        let key = (session, resource.to_string());
        self.waiters.lock().entry(key.clone()).or_default().push((id, tx));
        GrantWaiter { hub: self, key, id, rx }
    }

    /// Attaches a session's event stream, replacing an older one (a reconnecting client).
    pub fn subscribe(&self, session: SessionId) -> mpsc::UnboundedReceiver<pb::Event> {
        let (tx, rx) = mpsc::unbounded_channel();
        self.streams.lock().insert(session, tx);
        rx
    }

    pub fn send_to(&self, session: SessionId, ev: pb::Event) {
        let mut streams = self.streams.lock();
        if let Some(tx) = streams.get(&session) {
            if tx.send(ev).is_err() {
                streams.remove(&session);
            }
        }
    }

    pub fn dispatch(&self, effects: &[Effect]) {
        for fx in effects {
            match fx {
                Effect::Granted { session, resource, grant } => {
                    if let Some(list) = self.waiters.lock().remove(&(*session, resource.clone())) {
                        for (_, tx) in list {
                            let _ = tx.send(grant.clone());
                        }
                    }
                }
                Effect::Expired { session } => {
                    // Dropping the senders wakes the waiting Lock calls with an error.
                    self.waiters.lock().retain(|(s, _), _| s != session);
                }
                Effect::Blocking { .. } | Effect::PeerRecovering { .. } => {}
            }
            let (session, ev) = effect_event(fx);
            self.send_to(session, ev);
            if matches!(fx, Effect::Expired { .. }) {
                self.streams.lock().remove(&session);
            }
        }
    }
}

/// Heartbeat times seen by this replica while it leads. Not replicated: a new leader starts
/// every lease afresh from its election, which can only lengthen a lease, never shorten it.
#[derive(Default)]
pub struct Leases {
    pub last_seen: HashMap<SessionId, Instant>,
    /// Sessions whose expiry is proposed; a late heartbeat no longer saves them.
    pub expiring: HashSet<SessionId>,
}
