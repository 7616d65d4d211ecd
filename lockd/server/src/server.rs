//! The gRPC front of a replica: request validation, proposals through the Raft node, waiting for
//! grants, and the per-session event stream.
use std::net::SocketAddr;
use std::pin::Pin;
use std::time::{Duration, Instant};

use lockd_common::wire::with_removed_at;
use lockd_common::{validate_lvb, validate_resource, FencingToken, Mode, RequestId, Role, SessionId};
use mafs_proto::v1 as pb;
use pb::lockd_server::{Lockd, LockdServer};
use pb::raft_transport_server::{RaftTransport, RaftTransportServer};
use protobuf::Message as _;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status};

use crate::errors::LockdError;
use crate::events::effect_event;
use crate::lock_table::{CancelOutcome, Grant, LockError, LockOutcome, SessionState};
use crate::raft_node::{self, MembershipOp, NodeHandle, ReplicaConfig};
use crate::state_machine::{CmdResult, Command, LockCmd, PendingRelease};
use crate::transport::MAX_RAFT_MESSAGE;

/// How long a proposal may take to commit before the caller hears UNAVAILABLE and retries.
const COMMIT_WAIT: Duration = Duration::from_secs(5);
/// Queue wait when a request names none.
const DEFAULT_LOCK_WAIT: Duration = Duration::from_secs(30);
const MAX_LOCK_WAIT: Duration = Duration::from_secs(3600);
pub const MIN_LEASE_MS: u32 = 1000;
/// How long a stopping replica lets open calls finish before it closes their connections.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);
pub const MAX_LEASE_MS: u32 = 300_000;

pub struct LockdService {
    node: NodeHandle,
}

fn mode_of(v: i32) -> Result<Mode, Status> {
    Mode::from_wire(v).ok_or_else(|| LockdError::Invalid(format!("unknown lock mode {v}")).into())
}

fn granted(g: &Grant) -> pb::LockResponse {
    pb::LockResponse { status: pb::LockStatus::Granted as i32, mode: g.mode.to_wire(), fencing_token: g.token.get(), lvb: g.lvb.clone() }
}

fn timed_out(mode: Mode) -> pb::LockResponse {
    pb::LockResponse { status: pb::LockStatus::TimedOut as i32, mode: mode.to_wire(), ..Default::default() }
}

fn unexpected(r: CmdResult) -> Status {
    LockdError::Raft(format!("unexpected apply result {r:?}")).into()
}

/// A request's `write_lvb` + `lvb` pair as the log carries it, checked.
fn lvb_arg(write: bool, lvb: Vec<u8>) -> Result<Option<Vec<u8>>, Status> {
    let lvb = write.then_some(lvb);
    validate_lvb(lvb.as_deref())?;
    Ok(lvb)
}

/// Withdraws a queued request if the Lock call goes away before it is answered (client gone,
/// deadline hit), so no orphan request sits at the head of a queue.
struct CancelOnDrop {
    node: NodeHandle,
    session: SessionId,
    resource: String,
    /// The Lock call's id: if a retry of the call took the request over meanwhile, the
    /// cancel leaves it alone.
    request: RequestId,
    armed: bool,
}

impl CancelOnDrop {
    /// The cancel of this call's request, and of nothing a retry has taken over.
    fn command(&self) -> Command {
        Command::Cancel { session: self.session, resource: self.resource.clone(), request: Some(self.request) }
    }
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let node = self.node.clone();
        let cmd = self.command();
        tokio::spawn(async move {
            let _ = node.propose(cmd, COMMIT_WAIT).await;
        });
    }
}

impl LockdService {
    /// `check_session` as far as this replica can vouch for it. A session it has not applied
    /// yet may be in the log ahead of its state machine: a follower behind the leader that
    /// opened it, or a new leader still applying. That answers "not leader" (the client retries
    /// at the leader), not `unknown-session`, which the client takes for a lost session.
    async fn check_session_here(&self, session: SessionId) -> Result<(), Status> {
        let (checked, behind) = self
            .node
            .read(move |v| {
                let checked = v.sm.table.check_session(session);
                let may_lag = v.raft.role != Role::Leader || v.raft.applied < v.raft.commit;
                let behind = checked.is_err() && !v.sm.table.assigned(session) && may_lag;
                (checked, behind)
            })
            .await?;
        match checked {
            Ok(()) => Ok(()),
            Err(_) if behind => Err(self.node.not_leader().into()),
            Err(e) => Err(e.into()),
        }
    }

    async fn propose(&self, cmd: Command) -> Result<CmdResult, Status> {
        self.node.propose(cmd, COMMIT_WAIT).await.map_err(Status::from)
    }

    async fn wait_for_grant(&self, cmd: LockCmd, request: RequestId, wait: Duration) -> Result<pb::LockResponse, Status> {
        let deadline = Instant::now() + wait;
        let (session, resource, mode) = (cmd.session, cmd.resource.clone(), cmd.mode);
        let hub = &self.node.shared.hub;
        let waiter = hub.wait_for_grant(session, &resource);
        let outcome = match self.propose(Command::Lock(cmd)).await? {
            CmdResult::Lock(o) => o,
            r => return Err(unexpected(r)),
        };
        match outcome {
            LockOutcome::Granted(g) => return Ok(granted(&g)),
            LockOutcome::NotGranted => {
                return Ok(pb::LockResponse { status: pb::LockStatus::NotGranted as i32, mode: mode.to_wire(), ..Default::default() })
            }
            LockOutcome::Queued => {}
        }
        let mut guard = CancelOnDrop { node: self.node.clone(), session, resource, request, armed: true };
        let mut waiter = waiter;
        let mut leadership = self.node.shared.leadership.subscribe();
        let res = tokio::select! {
            r = tokio::time::timeout_at(deadline.into(), &mut waiter.rx) => r,
            // Cut off from the majority (or deposed), this replica would never see the grant
            // the new leader commits: send the caller there. Its retry takes this request
            // over by session and resource, granted or still queued (see own_request).
            () = lost_leadership(&self.node, &mut leadership) => {
                guard.armed = false;
                return Err(self.node.not_leader().into());
            }
        };
        guard.armed = false;
        match res {
            Ok(Ok(g)) => Ok(granted(&g)),
            Ok(Err(_)) => Err(LockError::UnknownSession(session).into()),
            Err(_) => match self.node.propose(guard.command(), COMMIT_WAIT).await {
                // Withdrawn already, or taken over by a retry of this call that is still
                // waiting: either way this attempt is over.
                Err(LockdError::Lock(LockError::NothingToCancel { .. })) => Ok(timed_out(mode)),
                Err(e) => Err(e.into()),
                Ok(r) => match r {
                    // Granted between the timeout and the cancel: the grant stands.
                    CmdResult::Cancel(CancelOutcome::Granted(g)) => Ok(granted(&g)),
                    CmdResult::Cancel(CancelOutcome::Cancelled) => Ok(timed_out(mode)),
                    r => Err(unexpected(r)),
                },
            },
        }
    }
}

/// Resolves once this replica is no longer the leader (it steps down within an election
/// timeout of losing its quorum, under check_quorum).
async fn lost_leadership(node: &NodeHandle, changes: &mut tokio::sync::watch::Receiver<u64>) {
    while node.is_leader() {
        if changes.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

type EventStream = Pin<Box<dyn Stream<Item = Result<pb::Event, Status>> + Send>>;

#[tonic::async_trait]
impl Lockd for LockdService {
    async fn open_session(&self, req: Request<pb::OpenSessionRequest>) -> Result<Response<pb::OpenSessionResponse>, Status> {
        let r = req.into_inner();
        self.node.require_leader()?;
        let lease_ms = r.lease_ms.clamp(MIN_LEASE_MS, MAX_LEASE_MS);
        let cmd = Command::OpenSession { node: r.node_name, lease_ms, hold_locks_on_expiry: r.hold_locks_on_expiry };
        match self.propose(cmd).await? {
            CmdResult::Session(session_id) => Ok(Response::new(pb::OpenSessionResponse { session_id, lease_ms, release_by_token: true })),
            r => Err(unexpected(r)),
        }
    }

    async fn heartbeat(&self, req: Request<pb::HeartbeatRequest>) -> Result<Response<pb::HeartbeatResponse>, Status> {
        let id = req.into_inner().session_id;
        self.node.require_leader()?;
        self.check_session_here(id).await?;
        let lease_ms = self.node.read(move |v| v.sm.table.sessions.get(&id).map(|s| s.lease_ms).unwrap_or(0)).await?;
        let mut leases = self.node.shared.leases.lock();
        if leases.expiring.contains(&id) {
            return Err(LockError::UnknownSession(id).into());
        }
        leases.last_seen.insert(id, Instant::now());
        Ok(Response::new(pb::HeartbeatResponse { lease_ms }))
    }

    async fn close_session(&self, req: Request<pb::CloseSessionRequest>) -> Result<Response<pb::CloseSessionResponse>, Status> {
        let session = req.into_inner().session_id;
        self.node.require_leader()?;
        self.propose(Command::CloseSession { session }).await?;
        Ok(Response::new(pb::CloseSessionResponse {}))
    }

    async fn lock(&self, req: Request<pb::LockRequest>) -> Result<Response<pb::LockResponse>, Status> {
        let r = req.into_inner();
        let mode = mode_of(r.mode)?;
        validate_resource(&r.resource)?;
        let lvb = lvb_arg(r.write_lvb, r.lvb)?;
        let release_first = match r.release_first {
            None => None,
            Some(p) => match FencingToken::from_wire(p.fencing_token) {
                Some(token) => Some(PendingRelease { token, lvb: lvb_arg(p.write_lvb, p.lvb)? }),
                None => return Err(Status::invalid_argument("release_first needs the fencing token of the grant it releases (got 0)")),
            },
        };
        self.node.require_leader()?;
        let request = RequestId::from_random(rand::random());
        let wait = match r.timeout_ms {
            0 => DEFAULT_LOCK_WAIT,
            ms => Duration::from_millis(u64::from(ms)).min(MAX_LOCK_WAIT),
        };
        let cmd = LockCmd {
            session: r.session_id,
            resource: r.resource,
            mode,
            convert: r.convert,
            try_lock: r.try_lock,
            lvb,
            request: Some(request),
            release_first,
        };
        let resp = self.wait_for_grant(cmd, request, wait).await?;
        Ok(Response::new(resp))
    }

    async fn try_lock_many(&self, req: Request<pb::TryLockManyRequest>) -> Result<Response<pb::TryLockManyResponse>, Status> {
        let r = req.into_inner();
        let mode = mode_of(r.mode)?;
        lockd_common::validate_many(&r.resources)?;
        self.node.require_leader()?;
        let outcomes = match self.propose(Command::TryLockMany { session: r.session_id, resources: r.resources, mode }).await? {
            CmdResult::Many(o) => o,
            r => return Err(unexpected(r)),
        };
        let results = outcomes
            .iter()
            .map(|o| match o {
                LockOutcome::Granted(g) => granted(g),
                LockOutcome::NotGranted | LockOutcome::Queued => {
                    pb::LockResponse { status: pb::LockStatus::NotGranted as i32, mode: mode.to_wire(), ..Default::default() }
                }
            })
            .collect();
        Ok(Response::new(pb::TryLockManyResponse { results }))
    }

    async fn release_many(&self, req: Request<pb::ReleaseManyRequest>) -> Result<Response<pb::ReleaseManyResponse>, Status> {
        let r = req.into_inner();
        let releases = r
            .releases
            .into_iter()
            .map(|m| match FencingToken::from_wire(m.fencing_token) {
                Some(token) => Ok((m.resource, token, lvb_arg(m.write_lvb, m.lvb)?)),
                None => Err(Status::from(LockdError::Invalid(format!("release of {:?} names no fencing token (got 0)", m.resource)))),
            })
            .collect::<Result<Vec<_>, Status>>()?;
        let names: Vec<String> = releases.iter().map(|(n, _, _)| n.clone()).collect();
        lockd_common::validate_many(&names)?;
        self.node.require_leader()?;
        let released = match self.propose(Command::ReleaseMany { session: r.session_id, releases }).await? {
            CmdResult::Released(n) => n,
            r => return Err(unexpected(r)),
        };
        Ok(Response::new(pb::ReleaseManyResponse { released }))
    }

    async fn cancel(&self, req: Request<pb::CancelRequest>) -> Result<Response<pb::CancelResponse>, Status> {
        let r = req.into_inner();
        validate_resource(&r.resource)?;
        self.node.require_leader()?;
        let resp = match self.propose(Command::Cancel { session: r.session_id, resource: r.resource, request: None }).await? {
            CmdResult::Cancel(CancelOutcome::Cancelled) => pb::CancelResponse { cancelled: true, ..Default::default() },
            CmdResult::Cancel(CancelOutcome::Granted(g)) => {
                pb::CancelResponse { cancelled: false, granted: true, mode: g.mode.to_wire(), fencing_token: g.token.get() }
            }
            r => return Err(unexpected(r)),
        };
        Ok(Response::new(resp))
    }

    async fn release(&self, req: Request<pb::ReleaseRequest>) -> Result<Response<pb::ReleaseResponse>, Status> {
        let r = req.into_inner();
        validate_resource(&r.resource)?;
        let lvb = lvb_arg(r.write_lvb, r.lvb)?;
        self.node.require_leader()?;
        self.propose(Command::Release {
            session: r.session_id,
            resource: r.resource,
            lvb,
            token: FencingToken::from_wire(r.fencing_token),
        })
        .await?;
        Ok(Response::new(pb::ReleaseResponse {}))
    }

    type EventsStream = EventStream;

    /// Served by any replica: every replica applies the same effects.
    async fn events(&self, req: Request<pb::EventsRequest>) -> Result<Response<EventStream>, Status> {
        let session = req.into_inner().session_id;
        // A replica that knows no leader is cut off (or electing): the effects it would stream
        // are not being decided here. The client tries another replica.
        if !self.node.leader_known() {
            return Err(self.node.not_leader().into());
        }
        self.check_session_here(session).await?;
        let hub = &self.node.shared.hub;
        let mut leadership = self.node.shared.leadership.subscribe();
        // Subscribe first, then replay what is due, so nothing falls in between.
        let rx = hub.subscribe(session);
        let due = self.node.read(move |v| v.sm.table.blocking_for(session)).await?;
        for fx in &due {
            let (s, ev) = effect_event(fx);
            hub.send_to(s, ev);
        }
        // The stream ends when the leadership this replica knows of changes: cut off from the
        // majority it would go silent, and the client would miss its blocking notices. The
        // client reattaches (wherever a leader is known) and is sent what is due again.
        let (tx, out) = tokio::sync::mpsc::unbounded_channel();
        let mut rx = rx;
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    ev = rx.recv() => {
                        let Some(ev) = ev else { break };
                        if tx.send(Ok(ev)).is_err() {
                            break;
                        }
                    }
                    _ = leadership.changed() => break,
                    () = tx.closed() => break,
                }
            }
        });
        let stream = tokio_stream::wrappers::UnboundedReceiverStream::new(out);
        Ok(Response::new(Box::pin(stream)))
    }

    async fn complete_recovery(&self, req: Request<pb::CompleteRecoveryRequest>) -> Result<Response<pb::CompleteRecoveryResponse>, Status> {
        let session = req.into_inner().session_id;
        self.node.require_leader()?;
        match self.propose(Command::CompleteRecovery { session }).await? {
            CmdResult::Released(released) => Ok(Response::new(pb::CompleteRecoveryResponse { released })),
            r => Err(unexpected(r)),
        }
    }

    /// This replica's own view; never redirected, so an operator can ask every replica.
    async fn status(&self, _req: Request<pb::StatusRequest>) -> Result<Response<pb::StatusResponse>, Status> {
        let resp = self
            .node
            .read(|v| {
                let c = v.sm.table.counts();
                let r = &v.raft;
                pb::StatusResponse {
                    id: r.id,
                    role: r.role.name().to_string(),
                    leader_id: r.leader_id.unwrap_or(0),
                    leader_addr: r.leader_id.and_then(|id| v.sm.members.get(&id)).cloned().unwrap_or_default(),
                    term: r.term,
                    commit_index: r.commit,
                    applied_index: r.applied,
                    snapshot_index: r.snapshot_index,
                    last_log_index: r.last_index,
                    members: v.sm.members.iter().map(|(id, addr)| pb::Member { id: *id, addr: addr.clone() }).collect(),
                    sessions: c.sessions,
                    resources: c.resources,
                    granted_locks: c.granted,
                    waiting_locks: c.waiting,
                    next_fencing_token: v.sm.table.next_token(),
                }
            })
            .await?;
        Ok(Response::new(resp))
    }

    /// Linearizable: a barrier goes through the log first, so the dump reflects every write
    /// acknowledged before the call.
    async fn dump(&self, req: Request<pb::DumpRequest>) -> Result<Response<pb::DumpResponse>, Status> {
        let prefix = req.into_inner().prefix;
        self.node.require_leader()?;
        self.propose(Command::Barrier).await?;
        let resp = self.node.read(move |v| dump_view(v, &prefix)).await?;
        Ok(Response::new(resp))
    }

    async fn change_membership(&self, req: Request<pb::MembershipRequest>) -> Result<Response<pb::MembershipResponse>, Status> {
        let r = req.into_inner();
        let op = match pb::membership_request::Op::try_from(r.op) {
            Ok(pb::membership_request::Op::Add) => {
                if r.addr.parse::<SocketAddr>().is_err() {
                    return Err(LockdError::Invalid(format!("ADD needs addr as host:port, got {:?}", r.addr)).into());
                }
                MembershipOp::Add { id: r.id, addr: r.addr }
            }
            Ok(pb::membership_request::Op::Remove) => MembershipOp::Remove { id: r.id },
            Err(_) => return Err(LockdError::Invalid(format!("unknown membership op {}", r.op)).into()),
        };
        self.node.require_leader()?;
        let members = self.node.change_membership(op, Duration::from_secs(10)).await?;
        Ok(Response::new(pb::MembershipResponse { members: members.into_iter().map(|(id, addr)| pb::Member { id, addr }).collect() }))
    }
}

fn dump_view(v: &raft_node::ReadView, prefix: &str) -> pb::DumpResponse {
    let t = &v.sm.table;
    let entry = |session: SessionId, mode: Mode, granted: Mode, converting: bool, token: Option<FencingToken>| pb::LockEntry {
        session_id: session,
        node_name: t.sessions.get(&session).map(|x| x.node.clone()).unwrap_or_default(),
        mode: mode.to_wire(),
        granted_mode: granted.to_wire(),
        converting,
        fencing_token: FencingToken::to_wire(token),
    };
    let resources = t
        .resources
        .range(prefix.to_string()..)
        .take_while(|(name, _)| name.starts_with(prefix))
        .map(|(name, r)| {
            let held = |s: SessionId| r.granted.iter().find(|h| h.session == s).map_or(Mode::NL, |h| h.mode);
            pb::ResourceDump {
                name: name.clone(),
                granted: r.granted.iter().map(|h| entry(h.session, h.mode, h.mode, false, Some(h.token))).collect(),
                converting: r.converting.iter().map(|q| entry(q.session, q.mode, held(q.session), true, None)).collect(),
                waiting: r.waiting.iter().map(|q| entry(q.session, q.mode, Mode::NL, false, None)).collect(),
                lvb: r.lvb.clone(),
            }
        })
        .collect();
    let sessions = t
        .sessions
        .iter()
        .map(|(id, s)| pb::SessionInfo {
            session_id: *id,
            node_name: s.node.clone(),
            lease_ms: s.lease_ms,
            state: match s.state {
                SessionState::Active => "active".into(),
                SessionState::Recovering => "recovering".into(),
            },
            locks: s.resources.len() as u32,
        })
        .collect();
    pb::DumpResponse { resources, sessions }
}

/// Tells a removed replica that still sends raft messages (it missed the commit of its own
/// removal) that it was removed, and at which log index; see `PeerReport::RemovedByPeer`.
fn removed_status(id: u64, at: u64) -> Status {
    with_removed_at(Status::from(LockdError::Removed { id }), at)
}

pub struct RaftService {
    node: NodeHandle,
}

#[tonic::async_trait]
impl RaftTransport for RaftService {
    async fn stream(&self, req: Request<tonic::Streaming<pb::RaftBatch>>) -> Result<Response<pb::RaftAck>, Status> {
        let mut batches = req.into_inner();
        while let Some(batch) = batches.message().await? {
            for b in batch.messages {
                let mut m = raft::eraftpb::Message::default();
                m.merge_from_bytes(&b).map_err(|e| LockdError::Invalid(format!("undecodable raft message: {e}")))?;
                // Only a sender that has not seen its removal committed is told; a replica added
                // back since has (its commit is past the removal), and this replica merely has
                // not applied the re-addition yet: its messages must go through.
                if let Some(at) = self.node.removed_peer(m.from).filter(|at| m.commit < *at) {
                    return Err(removed_status(m.from, at));
                }
                self.node.step(m)?;
            }
        }
        Ok(Response::new(pb::RaftAck {}))
    }
}

/// Runs a replica until SIGINT/SIGTERM or a fatal error of the raft loop.
pub async fn serve(cfg: ReplicaConfig) -> Result<(), LockdError> {
    let addr: SocketAddr = cfg.listen.parse().map_err(|e| LockdError::Invalid(format!("--listen {}: {e}", cfg.listen)))?;
    // Bind before starting raft, so a busy port fails at once instead of after an election.
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|source| LockdError::Listen { addr: cfg.listen.clone(), source })?;
    let (node, mut raft_done) = raft_node::start(cfg, tokio::runtime::Handle::current())?;
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener).map(|s| {
        if let Ok(s) = &s {
            let _ = s.set_nodelay(true);
        }
        s
    });
    let svc = LockdServer::new(LockdService { node: node.clone() });
    let raft_svc = RaftTransportServer::new(RaftService { node: node.clone() })
        .max_decoding_message_size(MAX_RAFT_MESSAGE)
        .max_encoding_message_size(MAX_RAFT_MESSAGE);
    let (early_tx, early_rx) = tokio::sync::oneshot::channel();
    // Fired when the server starts to stop; from then on, connections get SHUTDOWN_GRACE.
    let (stopping_tx, stopping_rx) = tokio::sync::oneshot::channel::<()>();
    let node_stop = node.clone();
    let shutdown = async move {
        let result = async {
            let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!("cannot watch SIGTERM: {e}");
                    return (&mut raft_done).await.unwrap_or(Err(LockdError::Shutdown));
                }
            };
            tokio::select! {
                _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: shutting down"),
                _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
                r = &mut raft_done => return r.unwrap_or(Err(LockdError::Shutdown)),
            }
            node_stop.shutdown();
            (&mut raft_done).await.unwrap_or(Ok(()))
        }
        .await;
        let _ = early_tx.send(result);
        let _ = stopping_tx.send(());
    };
    tracing::info!(%addr, "lockd replica listening");
    let served =
        tonic::transport::Server::builder().add_service(svc).add_service(raft_svc).serve_with_incoming_shutdown(incoming, shutdown);
    // Event streams never end by themselves, and tonic's graceful stop waits for every
    // connection: without a limit a replica with clients attached would not exit on SIGTERM.
    let grace = async {
        match stopping_rx.await {
            Ok(()) => tokio::time::sleep(SHUTDOWN_GRACE).await,
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        served = served => served.map_err(|e| LockdError::Raft(format!("gRPC server: {e}")))?,
        () = grace => tracing::info!("closing the connections still open after {SHUTDOWN_GRACE:?}"),
    }
    early_rx.await.unwrap_or(Ok(()))
}
