//! `mafs lockd` without a subcommand (a replica) and its subcommands (status, dump, membership).
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use lockd_client::Conn;
use lockd_common::{Mode, Role};
use lockd_server::ReplicaConfig;
use mafs_proto::v1 as pb;

use crate::args::ServeArgs;

fn parse_peers(id: u64, listen: &str, peers: &[String]) -> anyhow::Result<BTreeMap<u64, String>> {
    let mut members = BTreeMap::from([(id, listen.to_string())]);
    for p in peers {
        let (pid, addr) = p.split_once('=').with_context(|| format!("--peer {p:?}: expected ID=HOST:PORT"))?;
        let pid: u64 = pid.parse().with_context(|| format!("--peer {p:?}: bad id"))?;
        if pid == 0 || members.insert(pid, addr.to_string()).is_some() {
            bail!("--peer {p:?}: id must be nonzero and unique (this replica is {id})");
        }
    }
    Ok(members)
}

pub(crate) async fn serve(a: ServeArgs) -> anyhow::Result<i32> {
    if a.id == 0 {
        bail!("--id must be nonzero");
    }
    let members = parse_peers(a.id, &a.listen, &a.peers)?;
    let data_dir = a.data_dir.clone().unwrap_or_else(|| PathBuf::from(format!("/var/lib/mafs/lockd-{}", a.id)));
    if a.join && a.peers.is_empty() {
        bail!(
            "--join needs at least one --peer ID=HOST:PORT of a running member: the joining \
             replica must know where the others are to answer the leader"
        );
    }
    let members = probe_peers(a.id, &a.listen, members, a.join).await?;
    let mut cfg = ReplicaConfig::new(a.id, a.listen.clone(), data_dir);
    cfg.members = members;
    cfg.join = a.join;
    cfg.snapshot_every = a.snapshot_every.max(1);
    cfg.lease_margin = Duration::from_millis(a.lease_margin_ms);
    lockd_server::server::serve(cfg).await?;
    Ok(0)
}

/// Asks every `--peer` who it is before starting: a peer that answers with our own id means
/// two replicas would share one (refused); one that answers with another id than its flag
/// says is warned about. A joiner also learns every member's address from the first peer
/// that answers (it must reach the leader, which may not be among its `--peer`s).
async fn probe_peers(id: u64, listen: &str, mut members: BTreeMap<u64, String>, join: bool) -> anyhow::Result<BTreeMap<u64, String>> {
    let peers: Vec<(u64, String)> = members.iter().filter(|(pid, _)| **pid != id).map(|(pid, addr)| (*pid, addr.clone())).collect();
    let mut answered = false;
    for (pid, addr) in peers {
        let Ok(st) = status_of(&addr, Duration::from_millis(300)).await else {
            continue;
        };
        answered = true;
        if st.id == id {
            bail!(
                "the replica at {addr} (given as --peer {pid}={addr}) already runs with --id \
                 {id}: every replica needs an id of its own"
            );
        }
        if st.id != pid {
            tracing::warn!("--peer {pid}={addr} answers as replica {}: check the --peer list", st.id);
        }
        if let Some(m) = st.members.iter().find(|m| m.id == id && m.addr != listen) {
            // The cluster knows replica `id` elsewhere: a second process with our id, or we
            // moved. Only a live replica answering there with our id is refused.
            let twin = status_of(&m.addr, Duration::from_millis(300)).await;
            if twin.is_ok_and(|t| t.id == id) {
                bail!(
                    "replica {id} already runs at {} (the cluster's address for it): every \
                     replica needs an id of its own",
                    m.addr
                );
            }
            tracing::warn!("the cluster has this replica ({id}) at {}, not at --listen {listen}", m.addr);
        }
        if join {
            for m in &st.members {
                members.entry(m.id).or_insert_with(|| m.addr.clone());
            }
        }
    }
    if join && !answered {
        tracing::warn!(
            "no --peer answered yet; this replica waits for the leader to reach it and can \
             answer only the replicas its --peer list names"
        );
    }
    Ok(members)
}

async fn status_of(addr: &str, wait: Duration) -> Result<pb::StatusResponse, String> {
    let conn = Conn::new(&[addr.to_string()]).map_err(|e| e.to_string())?;
    conn.call("status", Instant::now() + wait, wait, |mut c| async move { c.status(pb::StatusRequest {}).await })
        .await
        .map_err(|e| e.to_string())
}

/// Whether a replica says it leads.
fn is_leader(s: &pb::StatusResponse) -> bool {
    Role::from_name(&s.role) == Some(Role::Leader)
}

pub(crate) async fn status(endpoints: Vec<String>, json: bool) -> anyhow::Result<i32> {
    let mut rows = Vec::new();
    for e in &endpoints {
        rows.push((e.clone(), status_of(e, Duration::from_secs(1)).await));
    }
    // The leader of the highest term any replica knows of.
    let best = rows.iter().filter_map(|(_, r)| r.as_ref().ok()).filter(|s| s.leader_id != 0).max_by_key(|s| (s.term, is_leader(s)));
    let leader = best.map(|s| (s.leader_id, s.leader_addr.clone(), s.term));
    let leader_view = rows.iter().filter_map(|(_, r)| r.as_ref().ok()).find(|s| is_leader(s));
    if json {
        let replicas: Vec<serde_json::Value> = rows
            .iter()
            .map(|(e, r)| match r {
                Ok(s) => serde_json::json!({
                    "endpoint": e, "id": s.id, "role": s.role, "leader_id": s.leader_id, "term": s.term,
                    "commit_index": s.commit_index, "applied_index": s.applied_index,
                    "snapshot_index": s.snapshot_index, "last_log_index": s.last_log_index,
                    "sessions": s.sessions, "resources": s.resources, "granted_locks": s.granted_locks,
                    "waiting_locks": s.waiting_locks,
                }),
                Err(err) => serde_json::json!({ "endpoint": e, "error": err }),
            })
            .collect();
        let v = serde_json::json!({
            "leader": leader.as_ref().map(|l| l.0),
            "leader_addr": leader.as_ref().map(|l| l.1.clone()),
            "term": leader.as_ref().map(|l| l.2),
            "members": leader_view.or(best).map(|s| s.members.iter().map(|m| serde_json::json!({"id": m.id, "addr": m.addr})).collect::<Vec<_>>()),
            "sessions": leader_view.map(|s| s.sessions),
            "resources": leader_view.map(|s| s.resources),
            "granted_locks": leader_view.map(|s| s.granted_locks),
            "waiting_locks": leader_view.map(|s| s.waiting_locks),
            "replicas": replicas,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        match &leader {
            Some((id, addr, term)) => println!("leader: {id} ({addr}), term {term}"),
            None => println!("no leader known"),
        }
        if let Some(s) = leader_view.or(best) {
            let members: Vec<String> = s.members.iter().map(|m| format!("{}={}", m.id, m.addr)).collect();
            println!("members: {}", members.join(" "));
        }
        if let Some(s) = leader_view {
            println!("sessions: {}  resources: {}  granted: {}  waiting: {}", s.sessions, s.resources, s.granted_locks, s.waiting_locks);
        }
        println!("{:<22} {:>3} {:<13} {:>6} {:>9} {:>9} {:>9}", "ENDPOINT", "ID", "ROLE", "TERM", "COMMIT", "APPLIED", "SNAPSHOT");
        for (e, r) in &rows {
            match r {
                Ok(s) => println!(
                    "{:<22} {:>3} {:<13} {:>6} {:>9} {:>9} {:>9}",
                    e, s.id, s.role, s.term, s.commit_index, s.applied_index, s.snapshot_index
                ),
                Err(err) => println!("{e:<22} unreachable: {err}"),
            }
        }
    }
    Ok(if leader.is_some() { 0 } else { 1 })
}

fn mode_name(v: i32) -> &'static str {
    Mode::from_wire(v).map(Mode::name).unwrap_or("??")
}

pub(crate) async fn dump(endpoints: Vec<String>, prefix: String, json: bool) -> anyhow::Result<i32> {
    let conn = Conn::new(&endpoints)?;
    let d = conn
        .call("dump", Instant::now() + Duration::from_secs(10), Duration::from_secs(6), |mut c| {
            let prefix = prefix.clone();
            async move { c.dump(pb::DumpRequest { prefix }).await }
        })
        .await?;
    let entry = |e: &pb::LockEntry| serde_json::json!({"session": e.session_id, "node": e.node_name, "mode": mode_name(e.mode), "granted_mode": mode_name(e.granted_mode), "token": e.fencing_token});
    if json {
        let v = serde_json::json!({
            "resources": d.resources.iter().map(|r| serde_json::json!({
                "name": r.name,
                "lvb": r.lvb.iter().map(|b| format!("{b:02x}")).collect::<String>(),
                "granted": r.granted.iter().map(entry).collect::<Vec<_>>(),
                "converting": r.converting.iter().map(entry).collect::<Vec<_>>(),
                "waiting": r.waiting.iter().map(entry).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
            "sessions": d.sessions.iter().map(|s| serde_json::json!({"id": s.session_id, "node": s.node_name, "lease_ms": s.lease_ms, "state": s.state, "locks": s.locks})).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(0);
    }
    println!("sessions:");
    for s in &d.sessions {
        println!("  {:>6} {:<24} lease {:>6} ms  {:<10} {} locks", s.session_id, s.node_name, s.lease_ms, s.state, s.locks);
    }
    println!("resources:");
    for r in &d.resources {
        println!("  {}{}", r.name, if r.lvb.is_empty() { String::new() } else { format!("  lvb {} bytes", r.lvb.len()) });
        for e in &r.granted {
            println!("    granted    {} session {} ({}) token {}", mode_name(e.mode), e.session_id, e.node_name, e.fencing_token);
        }
        for e in &r.converting {
            println!("    converting {}->{} session {} ({})", mode_name(e.granted_mode), mode_name(e.mode), e.session_id, e.node_name);
        }
        for e in &r.waiting {
            println!("    waiting    {} session {} ({})", mode_name(e.mode), e.session_id, e.node_name);
        }
    }
    Ok(0)
}

pub(crate) async fn membership(endpoints: Vec<String>, op: pb::membership_request::Op, id: u64, addr: String) -> anyhow::Result<i32> {
    let conn = Conn::new(&endpoints)?;
    let req = pb::MembershipRequest { op: op as i32, id, addr };
    let r = conn
        .call("membership", Instant::now() + Duration::from_secs(20), Duration::from_secs(12), |mut c| {
            let req = req.clone();
            async move { c.change_membership(req).await }
        })
        .await?;
    let members: Vec<String> = r.members.iter().map(|m| format!("{}={}", m.id, m.addr)).collect();
    println!("members: {}", members.join(" "));
    Ok(0)
}
