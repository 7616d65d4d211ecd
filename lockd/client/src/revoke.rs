//! Answering blocking notices: once no local user holds the lock, the session's handler
//! decides (flush, then release, downgrade or keep), and the answer goes to lockd.
use std::sync::Arc;
use std::time::Duration;

use lockd_common::{FencingToken, Mode};

use crate::cache::{Revocation, State};
use crate::state::{is_granted, outcome_unknown, Inner};
use crate::types::{BlockingNotice, LockOptions, Revoke};

/// Queues a revocation for `notice` unless one is queued for the resource already (that one
/// answers the newest notice). A resource not in the cache has nothing to give back.
pub(crate) fn start_revoke(inner: &Arc<Inner>, notice: BlockingNotice) {
    if queue(inner, notice.clone()) {
        tokio::spawn(revoke(inner.clone(), notice));
    }
}

/// Records `notice` as the one to answer if it is the newest; true if no revocation is queued
/// yet (the caller starts one).
fn queue(inner: &Inner, notice: BlockingNotice) -> bool {
    let mut cache = inner.cache.lock();
    tracing::trace!(target: "lockd_trace", session = inner.id, ?notice, state = ?cache.get(&notice.resource).map(|c| (c.state, c.revocation.clone())), "notice");
    let Some(c) = cache.get_mut(&notice.resource) else {
        return false;
    };
    match &mut c.revocation {
        Revocation::Queued(newest) => {
            // About the same grant, the stronger request wins: a holder that downgrades to PR
            // for a reader while a writer also waits would keep blocking the writer.
            if notice.token > newest.token || (notice.token == newest.token && notice.requested.covers(newest.requested)) {
                *newest = notice;
            }
            false
        }
        Revocation::Unanswered(newest) if notice.token < newest.token => {
            c.revocation = Revocation::Queued(newest.clone());
            true
        }
        Revocation::Unanswered(_) | Revocation::None => {
            c.revocation = Revocation::Queued(notice);
            true
        }
    }
}

/// One revocation: wait for the lock, decide, answer lockd, then take up a notice that came
/// meanwhile (or, if lockd never heard the answer, the same one again shortly).
async fn revoke(inner: Arc<Inner>, notice: BlockingNotice) {
    let res = notice.resource.clone();
    let (held, token, notice) = match claim(&inner, &res, notice).await {
        Ok(Some(claimed)) => claimed,
        // The lock was gone when the claim looked (released meanwhile): nothing to answer.
        // Nothing to clean up either, and touching the entry now would be wrong: a `lock` may
        // have made a new one since, still acquiring, which is not ours to end.
        Ok(None) => {
            tracing::trace!(target: "lockd_trace", session = inner.id, res, "revoke: nothing to claim");
            return;
        }
        Err(_) => return,
    };
    let decision = decide(&inner, held, token, &notice).await;
    tracing::trace!(target: "lockd_trace", session = inner.id, res, ?token, ?notice, ?decision, "revoke");
    let (keep, failed) = answer(&inner, &res, token, decision).await;
    let newer = settle(&inner, &res, &notice, keep);
    if failed && inner.check().is_ok() {
        // The server never heard our answer; the waiter would wait forever.
        tokio::time::sleep(Duration::from_millis(500)).await;
        start_revoke(&inner, newer.unwrap_or(notice));
    } else if let Some(n) = newer {
        start_revoke(&inner, n);
    }
}

/// Waits until no local user holds the lock and nothing else is in flight on it, marks it
/// busy, and answers its mode, its grant's token and the newest notice about it (`None` if
/// the lock is gone meanwhile).
async fn claim(
    inner: &Inner,
    res: &str,
    notice: BlockingNotice,
) -> crate::error::Result<Option<(Mode, Option<FencingToken>, BlockingNotice)>> {
    inner
        .with_idle(
            res,
            |c| c.users == 0,
            |cache| {
                let c = cache.get_mut(res)?;
                let State::Held(mode) = c.state else {
                    return None;
                };
                c.state = State::Busy(mode);
                let newest = match &c.revocation {
                    Revocation::Queued(n) | Revocation::Unanswered(n) => n.clone(),
                    Revocation::None => notice.clone(),
                };
                Some((mode, c.token, newest))
            },
        )
        .await
}

/// What to do about `notice` for the grant `token` held in `held`.
async fn decide(inner: &Inner, held: Mode, token: Option<FencingToken>, notice: &BlockingNotice) -> Revoke {
    // About a grant this session gave up before it took the resource again (tokens only
    // grow): the current grant's own notice, if it is wanted, comes with it.
    let stale = matches!((notice.token, token), (Some(n), Some(t)) if n < t);
    if stale || held.compatible(notice.requested) {
        Revoke::Keep // not about this grant, or already downgraded meanwhile
    } else if let Some(h) = inner.handler.clone() {
        let n = BlockingNotice { held, ..notice.clone() };
        tokio::task::spawn_blocking(move || h(&n)).await.unwrap_or(Revoke::Release { lvb: None })
    } else {
        Revoke::Release { lvb: None }
    }
}

/// Tells lockd the decision. Answers whether the lock stays cached, and whether lockd may
/// not have heard the answer.
async fn answer(inner: &Inner, res: &str, token: Option<FencingToken>, decision: Revoke) -> (bool, bool) {
    match decision {
        Revoke::Keep => (true, false),
        Revoke::Release { lvb } => {
            let failed = inner.rpc_release(res, lvb, token).await.is_err();
            (failed, failed)
        }
        Revoke::Downgrade { mode, lvb } => {
            let r = inner.rpc_lock(res, mode, true, LockOptions::default(), lvb, None).await;
            let granted = r.as_ref().is_ok_and(is_granted);
            if let Some(c) = inner.cache.lock().get_mut(res) {
                match &r {
                    Ok(resp) if granted => {
                        c.set_mode(mode);
                        c.token = FencingToken::from_wire(resp.fencing_token);
                    }
                    _ if outcome_unknown(&r) => c.token = None,
                    _ => {}
                }
            }
            (true, !granted)
        }
    }
}

/// Ends the revocation of `res` (dropping the lock unless `keep`); answers a newer notice that
/// came while `answered` was handled, which would otherwise go unanswered.
fn settle(inner: &Inner, res: &str, answered: &BlockingNotice, keep: bool) -> Option<BlockingNotice> {
    let mut newer = None;
    inner.finish(res, |c| {
        if let Some(c) = c {
            c.revocation = match std::mem::take(&mut c.revocation) {
                Revocation::Queued(n) | Revocation::Unanswered(n) if n != *answered => {
                    if keep {
                        newer = Some(n.clone());
                    }
                    Revocation::Unanswered(n)
                }
                _ => Revocation::None,
            };
        }
        keep
    });
    newer
}
