//! One connection pool over the replica endpoints that finds and follows the leader.
use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use lockd_common::wire::{kind_of, leader_of};
use lockd_common::ErrorKind;
use mafs_proto::v1::lockd_client::LockdClient;
use parking_lot::Mutex;
use tonic::transport::{Channel, Endpoint};
use tonic::{Response, Status};

use crate::error::{from_status, retryable, Error, Result};

struct State {
    /// Where calls go now: a configured endpoint or the leader a follower pointed at.
    current: String,
    next_rotation: usize,
    channels: HashMap<String, Channel>,
}

/// The `what` of heartbeat calls, which [`Conn::round_trips`] leaves out.
pub const HEARTBEAT: &str = "heartbeat";
/// The `what` of the call that opens the session's event stream, also left out.
pub const EVENTS: &str = "events";

pub struct Conn {
    endpoints: Vec<String>,
    state: Mutex<State>,
    round_trips: AtomicU64,
}

fn channel(addr: &str) -> Result<Channel> {
    let url = if addr.contains("://") { addr.to_string() } else { format!("http://{addr}") };
    let ep = Endpoint::from_shared(url).map_err(|_| Error::BadEndpoint(addr.to_string()))?;
    // Pings find a connection whose peer went silent (a partition that drops packets rather
    // than refusing them) in seconds; without them a call there waits out its whole deadline.
    Ok(ep
        .connect_timeout(Duration::from_millis(500))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(1))
        .keep_alive_timeout(Duration::from_secs(2))
        .keep_alive_while_idle(true)
        .connect_lazy())
}

impl Conn {
    pub fn new(endpoints: &[String]) -> Result<Conn> {
        let endpoints: Vec<String> = endpoints.iter().map(|e| e.trim().to_string()).filter(|e| !e.is_empty()).collect();
        let Some(first) = endpoints.first().cloned() else {
            return Err(Error::BadEndpoint("no endpoints given".into()));
        };
        for e in &endpoints {
            channel(e)?;
        }
        Ok(Conn {
            endpoints,
            state: Mutex::new(State { current: first, next_rotation: 1, channels: HashMap::new() }),
            round_trips: AtomicU64::new(0),
        })
    }

    /// RPCs that reached a replica and got an answer, redirects included, other than
    /// heartbeats and the opening of the event stream (both run on their own schedule,
    /// whatever the caller does). A cached lock shows up as no change here.
    pub fn round_trips(&self) -> u64 {
        self.round_trips.load(Ordering::Relaxed)
    }

    pub fn current(&self) -> String {
        self.state.lock().current.clone()
    }

    fn client(&self) -> Result<(String, LockdClient<Channel>)> {
        let mut st = self.state.lock();
        let addr = st.current.clone();
        let ch = match st.channels.get(&addr) {
            Some(c) => c.clone(),
            None => {
                let c = channel(&addr)?;
                st.channels.insert(addr.clone(), c.clone());
                c
            }
        };
        Ok((addr, LockdClient::new(ch)))
    }

    fn redirect(&self, to: String) {
        self.state.lock().current = to;
    }

    fn rotate(&self, from: &str) {
        let mut st = self.state.lock();
        if st.current != from {
            return; // someone else already moved on
        }
        let i = st.next_rotation % self.endpoints.len();
        st.next_rotation = i + 1;
        st.current = self.endpoints[i].clone();
    }

    /// Calls `f` on the current replica, following leader redirects and trying the other
    /// replicas on failure, until it succeeds, fails for a reason retrying cannot fix, or
    /// `deadline` passes. Each attempt may take at most `per_try`.
    pub async fn call<T, F, Fut>(&self, what: &str, deadline: Instant, per_try: Duration, mut f: F) -> Result<T>
    where
        F: FnMut(LockdClient<Channel>) -> Fut,
        Fut: Future<Output = std::result::Result<Response<T>, Status>>,
    {
        let mut backoff = Duration::from_millis(20);
        let mut redirects = 0;
        // Replicas that answered "removed from the cluster": worth skipping, but once every
        // endpoint has said so, no retry will find another.
        let mut removed = std::collections::HashSet::new();
        loop {
            let (addr, client) = self.client()?;
            let tried = Instant::now();
            let outcome = match tokio::time::timeout(per_try, f(client)).await {
                Ok(r) => r,
                Err(_) => Err(Status::deadline_exceeded(format!("{addr} did not answer within {per_try:?}"))),
            };
            // Counting the session's own background calls would make "a cached lock costs no
            // round trip" depend on when one happens to fall.
            let counted = if what == HEARTBEAT || what == EVENTS { 0 } else { 1 };
            let st = match outcome {
                Ok(resp) => {
                    self.round_trips.fetch_add(counted, Ordering::Relaxed);
                    return Ok(resp.into_inner());
                }
                Err(st) => st,
            };
            tracing::debug!(what, addr, took = ?tried.elapsed(), "lockd call failed: {}", st.message());
            if kind_of(&st) == Some(ErrorKind::Removed) {
                removed.insert(addr.clone());
            }
            if !retryable(&st) || self.endpoints.iter().all(|e| removed.contains(e)) {
                self.round_trips.fetch_add(counted, Ordering::Relaxed);
                return Err(from_status(&st, what));
            }
            match leader_of(&st) {
                Some(leader) if leader != addr && redirects < 3 => {
                    redirects += 1;
                    self.redirect(leader);
                    continue;
                }
                _ => self.rotate(&addr),
            }
            redirects = 0;
            if Instant::now() + backoff > deadline {
                return Err(Error::Unavailable(format!("{what}: last tried {addr}: {}", st.message())));
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_millis(400));
        }
    }
}
