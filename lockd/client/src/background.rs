//! What a session does on its own: heartbeats, the event stream (blocking notices, expiry),
//! and asynchronous releases until lockd confirms them.
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use lockd_common::{FencingToken, Mode};
use mafs_proto::v1 as pb;

use crate::conn::{EVENTS, HEARTBEAT};
use crate::error::Error;
use crate::revoke::start_revoke;
use crate::state::Inner;
use crate::types::BlockingNotice;

/// Sends an asynchronous release until lockd confirms it, through failovers. Ends without it
/// only when the session is gone, and with it every lock it held. Holds the session's state
/// alive: a `Session` dropped right after a release must not leave the lock held until its
/// lease runs out.
pub(crate) async fn send_release(inner: Arc<Inner>, resource: String, token: FencingToken, lvb: Option<Vec<u8>>) {
    loop {
        match inner.rpc_release(&resource, lvb.clone(), Some(token)).await {
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

pub(crate) async fn heartbeat_loop(weak: Weak<Inner>) {
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

pub(crate) async fn event_loop(weak: Weak<Inner>) {
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
                    start_revoke(
                        &inner,
                        BlockingNotice { resource: b.resource, held, requested, token: FencingToken::from_wire(b.fencing_token) },
                    );
                }
                Some(pb::event::Kind::Expired(_)) => {
                    inner.mark_lost("lease expired at lockd".into());
                    return;
                }
                Some(pb::event::Kind::PeerRecovering(p)) => {
                    tracing::debug!(session = p.session_id, node = p.node_name, "lockd: a peer's lease lapsed; it awaits recovery");
                    inner.peer_recoveries.send_modify(|n| *n += 1);
                }
                // Grants are also answered on the Lock call itself.
                Some(pb::event::Kind::Granted(_)) | None => {}
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
