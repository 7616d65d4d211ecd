//! Who holds what under a resource prefix (lockd's dump, from the leader): for a survivor
//! recovering a node whose session expired with its locks kept
//! (`SessionOptions::hold_locks_on_expiry`), and for status displays; and the call that ends
//! such a recovery.
use std::time::{Duration, Instant};

use lockd_common::Mode;
use mafs_proto::v1 as pb;

use crate::conn::Conn;
use crate::error::Result;
use crate::session::Session;

/// A granted lock and its holder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    pub resource: String,
    pub session_id: u64,
    pub node_name: String,
    pub mode: Option<Mode>,
    /// The holder's lease lapsed; the lock is kept until its recovery completes.
    pub recovering: bool,
}

async fn holders_via(conn: &Conn, prefix: &str, deadline: Instant) -> Result<Vec<Holder>> {
    let req = pb::DumpRequest { prefix: prefix.to_string() };
    let d = conn
        .call("dump", deadline, Duration::from_secs(6), |mut c| {
            let req = req.clone();
            async move { c.dump(req).await }
        })
        .await?;
    let recovering: std::collections::HashSet<u64> = d.sessions.iter().filter(|s| s.state == "recovering").map(|s| s.session_id).collect();
    Ok(d.resources
        .iter()
        .flat_map(|r| r.granted.iter().map(move |h| (r, h)))
        .map(|(r, h)| Holder {
            resource: r.name.clone(),
            session_id: h.session_id,
            node_name: h.node_name.clone(),
            mode: Mode::from_wire(h.mode),
            recovering: recovering.contains(&h.session_id),
        })
        .collect())
}

/// Every lock granted under `prefix`, asked of the replicas at `endpoints` (no session needed).
pub async fn holders(endpoints: &[String], prefix: &str) -> Result<Vec<Holder>> {
    let conn = Conn::new(endpoints)?;
    holders_via(&conn, prefix, Instant::now() + Duration::from_secs(10)).await
}

impl Session {
    /// The locks under `prefix` held by sessions in recovery (read from the leader, so a
    /// recovery completed before this call is never reported).
    pub async fn recovering_holders(&self, prefix: &str) -> Result<Vec<Holder>> {
        let inner = self.inner();
        Ok(holders_via(&inner.conn, prefix, inner.deadline()).await?.into_iter().filter(|h| h.recovering).collect())
    }

    /// Ends the recovery of `session`: lockd releases every lock it kept. Answers how many.
    pub async fn complete_recovery(&self, session: u64) -> Result<u32> {
        let inner = self.inner();
        let r = inner
            .conn
            .call("complete-recovery", inner.deadline(), Duration::from_secs(6), |mut c| async move {
                c.complete_recovery(pb::CompleteRecoveryRequest { session_id: session }).await
            })
            .await?;
        Ok(r.released)
    }
}
