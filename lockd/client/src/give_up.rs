//! Giving cached locks up unasked, in batches: a holder that keeps every lock it ever took
//! (to make no round trip when it takes one again) trims its cache with these, least recently
//! used first, as GFS2 reclaims idle glocks. lockd's table then stays as large as what the
//! holders use, not as everything they ever touched.
use std::sync::Arc;
use std::time::{Duration, Instant};

use lockd_common::{FencingToken, MAX_TRY_MANY};
use mafs_proto::v1 as pb;

use crate::background::send_release;
use crate::cache::{Releasing, Revocation, State};
use crate::error::{Error, Result};
use crate::session::{release_claimed, Session};
use crate::state::Inner;

impl Session {
    /// How many locks the session has cached (held, or being acquired).
    pub fn cached_count(&self) -> usize {
        self.inner().cache.lock().len()
    }

    /// Up to `n` cached locks that `eligible` accepts, that no local user holds and nobody
    /// has asked for, least recently used first.
    pub fn least_recently_used(&self, n: usize, eligible: impl Fn(&str) -> bool) -> Vec<String> {
        let cache = self.inner().cache.lock();
        let mut idle: Vec<(Instant, &String)> = cache
            .iter()
            .filter(|(r, c)| matches!(c.state, State::Held(_)) && c.users == 0 && c.revocation == Revocation::None && eligible(r))
            .map(|(r, c)| (c.last_used, r))
            .collect();
        if idle.len() > n {
            idle.select_nth_unstable(n);
            idle.truncate(n);
        }
        idle.sort_unstable();
        idle.into_iter().map(|(_, r)| r.clone()).collect()
    }

    /// Gives up, as one batch, those of `resources` that are still idle (held, no local user,
    /// nobody asking): they are marked busy, so that a local user that wants one meanwhile
    /// waits; `flush` runs once, on a blocking thread, with them and answers which to release,
    /// each with the lock value block to write, if any (it writes back what they cover first);
    /// the others stay cached. The releases are asynchronous, as [`Session::release`]'s.
    /// Answers how many were released.
    pub async fn give_up_idle(
        &self,
        resources: Vec<String>,
        flush: impl FnOnce(Vec<String>) -> Vec<(String, Option<Vec<u8>>)> + Send + 'static,
    ) -> Result<usize> {
        let inner = self.inner();
        inner.check()?;
        let claimed: Vec<(String, Option<FencingToken>)> = {
            let mut cache = inner.cache.lock();
            resources
                .into_iter()
                .filter_map(|r| {
                    let c = cache.get_mut(&r)?;
                    match c.state {
                        State::Held(m) if c.users == 0 && c.revocation == Revocation::None => {
                            c.state = State::Busy(m);
                            Some((r, c.token))
                        }
                        _ => None,
                    }
                })
                .collect()
        };
        let names: Vec<String> = claimed.iter().map(|(r, _)| r.clone()).collect();
        let mut release: std::collections::HashMap<String, Option<Vec<u8>>> =
            tokio::task::spawn_blocking(move || flush(names)).await.unwrap_or_default().into_iter().collect();
        let mut released = 0;
        let mut first_error = None;
        let mut batch = Vec::new();
        for (r, token) in claimed {
            let Some(lvb) = release.remove(&r) else {
                inner.finish(&r, |_| true);
                continue;
            };
            match token {
                Some(token) if inner.release_by_token => batch.push((r, token, lvb)),
                // A grant lockd cannot name: released alone, and waited for.
                _ => match release_claimed(inner, &r, token, lvb).await {
                    Ok(()) => released += 1,
                    Err(e) => {
                        first_error.get_or_insert(e);
                    }
                },
            }
        }
        released += inner.release_batch(batch).await;
        first_error.map_or(Ok(released), Err)
    }
}

impl Inner {
    /// Releases claimed grants, named by their tokens, with one ReleaseMany per
    /// [`MAX_TRY_MANY`]: asynchronous releases as far as the rest of the session can tell
    /// (a `lock` of one of them meanwhile carries its release in front). A batch lockd did not
    /// confirm is sent again release by release, as [`Session::release`] does.
    async fn release_batch(self: &Arc<Self>, batch: Vec<(String, FencingToken, Option<Vec<u8>>)>) -> usize {
        {
            // Recorded before the cache entries go, so a `lock` that finds no entry finds this.
            let mut releasing = self.releasing.lock();
            for (r, token, lvb) in &batch {
                releasing.insert(r.clone(), Releasing { token: *token, lvb: lvb.clone() });
            }
        }
        for (r, _, _) in &batch {
            self.finish(r, |_| false);
        }
        for chunk in batch.chunks(MAX_TRY_MANY) {
            match self.rpc_release_many(chunk).await {
                Ok(()) | Err(Error::SessionLost(_)) => {
                    for (r, token, _) in chunk {
                        self.forget_release(r, *token);
                    }
                }
                Err(e) => {
                    tracing::warn!(
                        session = self.id,
                        "a batch of {} releases was not confirmed ({e}); sending them one by one",
                        chunk.len()
                    );
                    for (r, token, lvb) in chunk {
                        tokio::spawn(send_release(self.clone(), r.clone(), *token, lvb.clone()));
                    }
                }
            }
        }
        batch.len()
    }

    async fn rpc_release_many(&self, chunk: &[(String, FencingToken, Option<Vec<u8>>)]) -> Result<()> {
        let req = pb::ReleaseManyRequest {
            session_id: self.id,
            releases: chunk
                .iter()
                .map(|(r, token, lvb)| pb::ManyRelease {
                    resource: r.clone(),
                    fencing_token: token.get(),
                    write_lvb: lvb.is_some(),
                    lvb: lvb.clone().unwrap_or_default(),
                })
                .collect(),
        };
        self.conn
            .call("release-many", Instant::now() + self.retry_for, Duration::from_secs(6), |mut c| {
                let req = req.clone();
                async move { c.release_many(req).await }
            })
            .await
            .map(drop)
    }
}
