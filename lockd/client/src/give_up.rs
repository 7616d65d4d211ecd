//! Giving cached locks up unasked, in batches: a holder that keeps every lock it ever took
//! (to make no round trip when it takes one again) trims its cache with these, least recently
//! used first, as GFS2 reclaims idle glocks. lockd's table then stays as large as what the
//! holders use, not as everything they ever touched.
use std::time::Instant;

use lockd_common::FencingToken;

use crate::cache::{Revocation, State};
use crate::error::Result;
use crate::session::{release_claimed, Session};

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
        for (r, token) in claimed {
            let Some(lvb) = release.remove(&r) else {
                inner.finish(&r, |_| true);
                continue;
            };
            match release_claimed(inner, &r, token, lvb).await {
                Ok(()) => released += 1,
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        first_error.map_or(Ok(released), Err)
    }
}
