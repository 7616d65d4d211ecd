//! What a survivor needs to recover a node whose session expired with its locks kept
//! (`SessionOptions::hold_locks_on_expiry`): which sessions are in recovery and what they
//! hold, and the call that releases their locks once recovery is done.
use std::time::Duration;

use lockd_common::Mode;
use mafs_proto::v1 as pb;

use crate::error::Result;
use crate::session::Session;

/// A lock held by a session whose lease lapsed, kept until someone completes its recovery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecoveringHolder {
    pub resource: String,
    pub session_id: u64,
    pub node_name: String,
    pub mode: Option<Mode>,
}

impl Session {
    /// The locks under `prefix` held by sessions in recovery (read from the leader, so a
    /// recovery completed before this call is never reported).
    pub async fn recovering_holders(&self, prefix: &str) -> Result<Vec<RecoveringHolder>> {
        let inner = self.inner();
        let req = pb::DumpRequest { prefix: prefix.to_string() };
        let d = inner
            .conn
            .call("dump", inner.deadline(), Duration::from_secs(6), |mut c| {
                let req = req.clone();
                async move { c.dump(req).await }
            })
            .await?;
        let recovering: std::collections::HashSet<u64> =
            d.sessions.iter().filter(|s| s.state == "recovering").map(|s| s.session_id).collect();
        Ok(d.resources
            .iter()
            .flat_map(|r| r.granted.iter().map(move |h| (r, h)))
            .filter(|(_, h)| recovering.contains(&h.session_id))
            .map(|(r, h)| RecoveringHolder {
                resource: r.name.clone(),
                session_id: h.session_id,
                node_name: h.node_name.clone(),
                mode: Mode::from_wire(h.mode),
            })
            .collect())
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
