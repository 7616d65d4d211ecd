//! Many try-locks in one lockd request (TryLockMany): for locks nobody is expected to hold, such
//! as those of a node's next batch of new inodes, one log entry instead of one per lock.
use std::sync::Arc;
use std::time::{Duration, Instant};

use lockd_common::{FencingToken, Mode, MAX_TRY_MANY};
use mafs_proto::v1 as pb;

use crate::cache::{Cached, State};
use crate::error::{Error, Result};
use crate::session::Session;
use crate::state::{is_granted, Inner};

impl Session {
    /// Takes those of `resources` that are free now in `mode`, asking lockd once per
    /// [`MAX_TRY_MANY`] of them; each one granted stays cached, unused (as after a guard's
    /// drop), so a later [`Session::lock`] of it makes no round trip. The answer says which
    /// were taken. Nothing waits and no holder is told: take the others with `lock`. Resources
    /// the cache already knows, or whose release is still on its way, are left to `lock` too.
    pub async fn try_lock_many(&self, resources: &[String], mode: Mode) -> Result<Vec<bool>> {
        let inner = self.inner();
        inner.check()?;
        let mut taken = vec![false; resources.len()];
        let asked = inner.claim_absent(resources);
        for chunk in asked.chunks(MAX_TRY_MANY) {
            let names: Vec<String> = chunk.iter().map(|&i| resources[i].clone()).collect();
            match inner.rpc_try_lock_many(&names, mode).await {
                Ok(results) => {
                    for (&i, resp) in chunk.iter().zip(results) {
                        taken[i] = inner.record_try(&resources[i], mode, resp);
                    }
                }
                Err(e) => {
                    let rest: Vec<String> = asked.iter().skip_while(|&&i| i != chunk[0]).map(|&i| resources[i].clone()).collect();
                    inner.abandon_tries(&rest, matches!(e, Error::Unavailable(_))).await;
                    return Err(e);
                }
            }
        }
        Ok(taken)
    }
}

impl Inner {
    /// Marks each of `resources` that the cache does not know and that has no release on its
    /// way as being acquired; answers their indices.
    fn claim_absent(&self, resources: &[String]) -> Vec<usize> {
        // `releasing` before `cache`: it is never locked while `cache` is held.
        let releasing = self.releasing.lock();
        let mut cache = self.cache.lock();
        let mut asked = Vec::new();
        for (i, r) in resources.iter().enumerate() {
            if !cache.contains_key(r) && !releasing.contains_key(r) {
                cache.insert(r.clone(), Cached::acquiring());
                asked.push(i);
            }
        }
        asked
    }

    /// Records one answer of a TryLockMany: a grant stays cached, unused; anything else
    /// leaves the cache as it was. True if granted.
    fn record_try(&self, resource: &str, mode: Mode, resp: pb::LockResponse) -> bool {
        let granted = is_granted(&resp);
        self.finish(resource, |c| {
            if let (Some(c), true) = (c, granted) {
                c.state = State::Busy(Mode::from_wire(resp.mode).unwrap_or(mode));
                c.token = FencingToken::from_wire(resp.fencing_token);
                c.lvb = resp.lvb;
            }
            granted
        });
        granted
    }

    /// Ends the tries of a TryLockMany that got no answer. If lockd may have applied it
    /// (`unknown`), it may hold grants this session never heard of, which no blocking notice
    /// could get back (a notice about a lock the cache does not know is ignored): they are
    /// released first, while the entries still keep any new `lock` of them waiting. In the
    /// background, and again until lockd answers: the try may commit long after the call gave
    /// up (a leader cut off from its followers keeps it in its log and, elected again, commits
    /// it once they are back), and a release that lockd never heard would leave the grant
    /// held for as long as the session lives. Found by the test
    /// `a_try_lock_many_whose_answer_never_came_leaves_no_lock_held`.
    async fn abandon_tries(self: &Arc<Self>, resources: &[String], unknown: bool) {
        if !unknown {
            for r in resources {
                self.finish(r, |_| false);
            }
            return;
        }
        let (inner, resources) = (self.clone(), resources.to_vec());
        tokio::spawn(async move {
            for r in resources {
                loop {
                    match inner.rpc_release(&r, None, None).await {
                        Ok(_) => break,
                        Err(e) if e.is_refusal(lockd_common::ErrorKind::NotHeld) => break,
                        // A lost session's locks go with it.
                        Err(_) if inner.check().is_err() => break,
                        Err(e) => {
                            tracing::warn!(
                                session = inner.id,
                                resource = r.as_str(),
                                "releasing a lock a TryLockMany with no answer may have taken, again shortly: {e}"
                            );
                            tokio::time::sleep(Duration::from_millis(500)).await;
                        }
                    }
                }
                inner.finish(&r, |_| false);
            }
        });
    }

    async fn rpc_try_lock_many(&self, resources: &[String], mode: Mode) -> Result<Vec<pb::LockResponse>> {
        let req = pb::TryLockManyRequest { session_id: self.id, resources: resources.to_vec(), mode: mode.to_wire() };
        let resp = self
            .conn
            .call("try-lock-many", Instant::now() + self.retry_for, Duration::from_secs(6), |mut c| {
                let req = req.clone();
                async move { c.try_lock_many(req).await }
            })
            .await?;
        if resp.results.len() != resources.len() {
            return Err(Error::Protocol(format!("TryLockMany of {} resources answered {} results", resources.len(), resp.results.len())));
        }
        Ok(resp.results)
    }
}
