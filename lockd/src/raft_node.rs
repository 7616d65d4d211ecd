//! The replica's Raft node: one task owns raft-rs's `RawNode`, the durable log and the state
//! machine, and runs the Ready loop; the gRPC handlers talk to it through [`NodeHandle`].
//!
//! Why a task that blocks on fsync, and not a thread of its own: `mafs lockd` runs on a
//! current-thread runtime, so a request travels from the socket to the log and back without
//! waking another thread. A wake-up measured 50-130 µs on the 2-vCPU VMs we run on, and the
//! thread design paid about six of them per commit (more than the fdatasync, ~0.11 ms); see
//! docs/lockd.md. The channel in front of the loop still batches: every proposal that queued up
//! while one fsync blocked the runtime goes into the next Ready together.
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock};
use protobuf::Message as _;
use raft::eraftpb::{ConfChange, ConfChangeType, ConfChangeV2, Entry, EntryType, Message};
use raft::{RawNode, SnapshotStatus, StateRole};
use tokio::runtime::Handle;
use tokio::sync::{mpsc, oneshot};

use crate::errors::LockdError;
use crate::events::{EventHub, Leases};
use crate::lock_table::SessionState;
use crate::raft_storage::DiskStorage;
use crate::state_machine::{CmdResult, Command, StateMachine};
use crate::transport::Transport;

#[derive(Debug, Clone)]
pub struct ReplicaConfig {
    pub id: u64,
    pub listen: String,
    /// Every bootstrap member including this one: id -> address.
    pub members: BTreeMap<u64, String>,
    pub data_dir: PathBuf,
    /// Join a running cluster (start with no voters, wait for the leader's snapshot) instead of
    /// bootstrapping with `members`.
    pub join: bool,
    /// Take a snapshot and compact the log every this many applied entries.
    pub snapshot_every: u64,
    pub tick: Duration,
    /// Extra wait past a lease before the leader expires a session (clock drift, GC pauses).
    pub lease_margin: Duration,
}

impl ReplicaConfig {
    pub fn new(id: u64, listen: String, data_dir: PathBuf) -> Self {
        let members = [(id, listen.clone())].into();
        ReplicaConfig {
            id,
            listen,
            members,
            data_dir,
            join: false,
            snapshot_every: 10_000,
            tick: Duration::from_millis(50),
            lease_margin: Duration::from_millis(1000),
        }
    }
}

pub enum MembershipOp {
    Add { id: u64, addr: String },
    Remove { id: u64 },
}

pub type Reply<T> = oneshot::Sender<Result<T, LockdError>>;

pub enum NodeMsg {
    Propose {
        cmd: Command,
        reply: Reply<CmdResult>,
    },
    ChangeMembership {
        op: MembershipOp,
        reply: Reply<BTreeMap<u64, String>>,
    },
    Raft(Box<Message>),
    Read(Box<dyn FnOnce(&ReadView) + Send>),
    Unreachable(u64),
    SnapshotStatus(u64, bool),
    Shutdown,
}

pub struct RaftInfo {
    pub id: u64,
    pub role: &'static str,
    pub leader_id: u64,
    pub term: u64,
    pub commit: u64,
    pub applied: u64,
    pub snapshot_index: u64,
    pub last_index: u64,
}

pub struct ReadView<'a> {
    pub sm: &'a StateMachine,
    pub raft: RaftInfo,
}

#[derive(Debug, Clone, Default)]
pub struct LeaderInfo {
    pub id: u64,
    pub addr: Option<String>,
    pub is_self: bool,
}

pub struct Shared {
    pub id: u64,
    pub hub: EventHub,
    pub leases: Mutex<Leases>,
    pub leader: RwLock<LeaderInfo>,
}

#[derive(Clone)]
pub struct NodeHandle {
    tx: mpsc::UnboundedSender<NodeMsg>,
    pub shared: Arc<Shared>,
}

enum Pending {
    Cmd(Reply<CmdResult>),
    Members(Reply<BTreeMap<u64, String>>),
}

impl Pending {
    fn is_closed(&self) -> bool {
        match self {
            Pending::Cmd(t) => t.is_closed(),
            Pending::Members(t) => t.is_closed(),
        }
    }
    fn fail(self, e: LockdError) {
        match self {
            Pending::Cmd(t) => drop(t.send(Err(e))),
            Pending::Members(t) => drop(t.send(Err(e))),
        }
    }
}

impl NodeHandle {
    pub fn not_leader(&self) -> LockdError {
        LockdError::NotLeader {
            leader: self.shared.leader.read().addr.clone(),
        }
    }

    pub fn is_leader(&self) -> bool {
        self.shared.leader.read().is_self
    }

    /// Fails fast with NotLeader (carrying the leader's address) on a follower.
    pub fn require_leader(&self) -> Result<(), LockdError> {
        if self.is_leader() {
            Ok(())
        } else {
            Err(self.not_leader())
        }
    }

    async fn ask<T>(
        &self,
        msg: NodeMsg,
        rx: oneshot::Receiver<Result<T, LockdError>>,
        wait: Duration,
    ) -> Result<T, LockdError> {
        self.tx.send(msg).map_err(|_| LockdError::Shutdown)?;
        match tokio::time::timeout(wait, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(self.not_leader()),
            Err(_) => Err(LockdError::Timeout(format!(
                "not committed within {wait:?}"
            ))),
        }
    }

    /// Replicates `cmd` and returns its result once applied here.
    pub async fn propose(&self, cmd: Command, wait: Duration) -> Result<CmdResult, LockdError> {
        let (reply, rx) = oneshot::channel();
        self.ask(NodeMsg::Propose { cmd, reply }, rx, wait).await
    }

    pub async fn change_membership(
        &self,
        op: MembershipOp,
        wait: Duration,
    ) -> Result<BTreeMap<u64, String>, LockdError> {
        let (reply, rx) = oneshot::channel();
        self.ask(NodeMsg::ChangeMembership { op, reply }, rx, wait)
            .await
    }

    /// Runs `f` in the raft loop against the state applied so far.
    pub async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&ReadView) -> T + Send + 'static,
    ) -> Result<T, LockdError> {
        let (tx, rx) = oneshot::channel();
        let job = Box::new(move |v: &ReadView| {
            let _ = tx.send(f(v));
        });
        self.tx
            .send(NodeMsg::Read(job))
            .map_err(|_| LockdError::Shutdown)?;
        rx.await.map_err(|_| LockdError::Shutdown)
    }

    pub fn step(&self, m: Message) -> Result<(), LockdError> {
        self.tx
            .send(NodeMsg::Raft(Box::new(m)))
            .map_err(|_| LockdError::Shutdown)
    }

    pub fn shutdown(&self) {
        let _ = self.tx.send(NodeMsg::Shutdown);
    }
}

/// raft-rs logs through slog; forward what matters to tracing.
struct TracingDrain;

impl slog::Drain for TracingDrain {
    type Ok = ();
    type Err = slog::Never;
    fn log(&self, r: &slog::Record, _: &slog::OwnedKVList) -> Result<(), slog::Never> {
        match r.level() {
            slog::Level::Critical | slog::Level::Error => {
                tracing::error!(target: "raft", "{}", r.msg())
            }
            slog::Level::Warning => tracing::warn!(target: "raft", "{}", r.msg()),
            slog::Level::Info => tracing::info!(target: "raft", "{}", r.msg()),
            _ => {}
        }
        Ok(())
    }
}

struct Replica {
    node: RawNode<DiskStorage>,
    sm: StateMachine,
    shared: Arc<Shared>,
    transport: Transport,
    pending: HashMap<u64, Pending>,
    next_seq: u64,
    /// Random per process, so an entry proposed by an earlier incarnation never matches.
    nonce: u64,
    was_leader: bool,
    cfg: ReplicaConfig,
}

/// Opens the data directory and starts the raft loop as a task on `rt`.
/// The receiver yields the loop's result when it stops (shutdown or a fatal error).
pub fn start(
    cfg: ReplicaConfig,
    rt: Handle,
) -> Result<(NodeHandle, oneshot::Receiver<Result<(), LockdError>>), LockdError> {
    let initial = if cfg.join {
        None
    } else {
        let sm = StateMachine::with_members(cfg.members.clone());
        Some((sm.encode_snapshot()?, cfg.members.keys().copied().collect()))
    };
    let storage = DiskStorage::open(&cfg.data_dir, initial)?;
    let mut sm = if storage.snapshot_data().is_empty() {
        StateMachine::with_members(cfg.members.clone())
    } else {
        StateMachine::decode_snapshot(storage.snapshot_data())?
    };
    // Our own address may have changed since the snapshot was taken; peers learn it from us only
    // through membership changes, but we must at least know where the others are.
    for (id, addr) in &cfg.members {
        sm.members.entry(*id).or_insert_with(|| addr.clone());
    }
    let rcfg = raft::Config {
        id: cfg.id,
        election_tick: 10,
        heartbeat_tick: 2,
        applied: storage.snapshot_index(),
        max_size_per_msg: 1 << 20,
        max_inflight_msgs: 256,
        check_quorum: true,
        pre_vote: true,
        ..Default::default()
    };
    rcfg.validate()?;
    let logger = slog::Logger::root(TracingDrain, slog::o!());
    let node = RawNode::new(&rcfg, storage, &logger)?;
    let (tx, rx) = mpsc::unbounded_channel();
    let shared = Arc::new(Shared {
        id: cfg.id,
        hub: EventHub::default(),
        leases: Mutex::new(Leases::default()),
        leader: RwLock::new(LeaderInfo::default()),
    });
    let replica = Replica {
        node,
        sm,
        shared: shared.clone(),
        transport: Transport::new(rt.clone(), tx.clone()),
        pending: HashMap::new(),
        next_seq: 1,
        nonce: rand::random(),
        was_leader: false,
        cfg,
    };
    let (done_tx, done_rx) = oneshot::channel();
    rt.spawn(async move {
        let _ = done_tx.send(replica.run(rx).await);
    });
    Ok((NodeHandle { tx, shared }, done_rx))
}

fn role_name(r: StateRole) -> &'static str {
    match r {
        StateRole::Leader => "leader",
        StateRole::Follower => "follower",
        StateRole::Candidate => "candidate",
        StateRole::PreCandidate => "pre-candidate",
    }
}

impl Replica {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<NodeMsg>) -> Result<(), LockdError> {
        let result = self.event_loop(&mut rx).await;
        if let Err(e) = &result {
            tracing::error!("raft loop stopped: {e}");
        }
        for (_, p) in self.pending.drain() {
            p.fail(LockdError::Shutdown);
        }
        result
    }

    async fn event_loop(
        &mut self,
        rx: &mut mpsc::UnboundedReceiver<NodeMsg>,
    ) -> Result<(), LockdError> {
        let mut last_tick = Instant::now();
        loop {
            let wait = self.cfg.tick.saturating_sub(last_tick.elapsed());
            match tokio::time::timeout(wait, rx.recv()).await {
                Ok(Some(m)) => {
                    if !self.handle(m)? {
                        return Ok(());
                    }
                    // Drain what queued meanwhile so it shares one Ready (and one fsync).
                    for _ in 0..4096 {
                        match rx.try_recv() {
                            Ok(m) => {
                                if !self.handle(m)? {
                                    return Ok(());
                                }
                            }
                            Err(_) => break,
                        }
                    }
                }
                Err(_elapsed) => {}
                Ok(None) => return Ok(()),
            }
            if last_tick.elapsed() >= self.cfg.tick {
                last_tick = Instant::now();
                self.node.tick();
                self.check_leases();
                self.pending.retain(|_, p| !p.is_closed());
            }
            self.on_ready().await?;
            self.maybe_snapshot()?;
        }
    }

    fn is_leader(&self) -> bool {
        self.node.raft.state == StateRole::Leader
    }

    fn leader_addr(&self) -> Option<String> {
        self.sm.members.get(&self.node.raft.leader_id).cloned()
    }

    fn context(&mut self) -> (u64, Vec<u8>) {
        let seq = self.next_seq;
        self.next_seq += 1;
        let mut ctx = self.nonce.to_le_bytes().to_vec();
        ctx.extend_from_slice(&seq.to_le_bytes());
        (seq, ctx)
    }

    fn take_pending(&mut self, ctx: &[u8]) -> Option<Pending> {
        if ctx.len() != 16 || ctx[..8] != self.nonce.to_le_bytes() {
            return None;
        }
        let mut seq = [0u8; 8];
        seq.copy_from_slice(&ctx[8..]);
        self.pending.remove(&u64::from_le_bytes(seq))
    }

    /// Returns false on shutdown.
    fn handle(&mut self, m: NodeMsg) -> Result<bool, LockdError> {
        match m {
            NodeMsg::Propose { cmd, reply } => {
                if !self.is_leader() {
                    let _ = reply.send(Err(LockdError::NotLeader {
                        leader: self.leader_addr(),
                    }));
                    return Ok(true);
                }
                let data = match cmd.encode() {
                    Ok(d) => d,
                    Err(e) => {
                        let _ = reply.send(Err(e));
                        return Ok(true);
                    }
                };
                let (seq, ctx) = self.context();
                match self.node.propose(ctx, data) {
                    Ok(()) => {
                        self.pending.insert(seq, Pending::Cmd(reply));
                    }
                    Err(raft::Error::ProposalDropped) => {
                        let _ = reply.send(Err(LockdError::NotLeader {
                            leader: self.leader_addr(),
                        }));
                    }
                    Err(e) => {
                        let _ = reply.send(Err(e.into()));
                    }
                }
            }
            NodeMsg::ChangeMembership { op, reply } => self.propose_membership(op, reply),
            NodeMsg::Raft(m) => {
                if let Err(e) = self.node.step(*m) {
                    tracing::debug!("step: {e}");
                }
            }
            NodeMsg::Read(f) => {
                let view = ReadView {
                    sm: &self.sm,
                    raft: self.info(),
                };
                f(&view);
            }
            NodeMsg::Unreachable(id) => self.node.report_unreachable(id),
            NodeMsg::SnapshotStatus(id, ok) => self.node.report_snapshot(
                id,
                if ok {
                    SnapshotStatus::Finish
                } else {
                    SnapshotStatus::Failure
                },
            ),
            NodeMsg::Shutdown => return Ok(false),
        }
        Ok(true)
    }

    fn propose_membership(&mut self, op: MembershipOp, reply: Reply<BTreeMap<u64, String>>) {
        if !self.is_leader() {
            let _ = reply.send(Err(LockdError::NotLeader {
                leader: self.leader_addr(),
            }));
            return;
        }
        let voters = self.node.store().conf_state().voters.clone();
        let mut cc = ConfChange::default();
        match op {
            MembershipOp::Add { id, addr } => {
                if id == 0 || voters.contains(&id) {
                    let _ = reply.send(Err(LockdError::Invalid(format!(
                        "replica {id} is already a member (or id 0)"
                    ))));
                    return;
                }
                cc.set_change_type(ConfChangeType::AddNode);
                cc.node_id = id;
                cc.set_context(addr.into_bytes().into());
            }
            MembershipOp::Remove { id } => {
                if !voters.contains(&id) {
                    let _ = reply.send(Err(LockdError::Invalid(format!(
                        "replica {id} is not a member"
                    ))));
                    return;
                }
                cc.set_change_type(ConfChangeType::RemoveNode);
                cc.node_id = id;
            }
        }
        let (seq, ctx) = self.context();
        match self.node.propose_conf_change(ctx, cc) {
            Ok(()) => {
                self.pending.insert(seq, Pending::Members(reply));
            }
            Err(e) => {
                let _ = reply.send(Err(e.into()));
            }
        }
    }

    fn info(&self) -> RaftInfo {
        let r = &self.node.raft;
        RaftInfo {
            id: r.id,
            role: role_name(r.state),
            leader_id: r.leader_id,
            term: r.term,
            commit: r.raft_log.committed,
            applied: r.raft_log.applied,
            snapshot_index: self.node.store().snapshot_index(),
            last_index: self.node.store().last_log_index(),
        }
    }

    /// The leader expires sessions whose heartbeats stopped; the decision goes through the log
    /// so that every replica releases the same locks at the same point of history.
    fn check_leases(&mut self) {
        if !self.is_leader() {
            return;
        }
        let now = Instant::now();
        let mut expire = Vec::new();
        {
            let mut guard = self.shared.leases.lock();
            let Leases {
                last_seen,
                expiring,
            } = &mut *guard;
            let sessions = &self.sm.table.sessions;
            for (id, s) in sessions {
                if s.state != SessionState::Active {
                    continue;
                }
                let seen = *last_seen.entry(*id).or_insert(now);
                let limit = Duration::from_millis(u64::from(s.lease_ms)) + self.cfg.lease_margin;
                if now.duration_since(seen) > limit && expiring.insert(*id) {
                    expire.push(*id);
                }
            }
            last_seen.retain(|id, _| sessions.contains_key(id));
            expiring.retain(|id| {
                sessions
                    .get(id)
                    .is_some_and(|s| s.state == SessionState::Active)
            });
        }
        for session in expire {
            tracing::info!(session, "lease lapsed; expiring session");
            let data = match (Command::ExpireSession { session }).encode() {
                Ok(d) => d,
                Err(e) => {
                    tracing::error!("{e}");
                    continue;
                }
            };
            if let Err(e) = self.node.propose(Vec::new(), data) {
                tracing::warn!(session, "could not propose expiry: {e}");
                self.shared.leases.lock().expiring.remove(&session);
            }
        }
    }

    fn on_leadership(&mut self) {
        let leader = self.is_leader();
        if leader && !self.was_leader {
            // Fresh leases for everyone: we never saw their heartbeats.
            let mut l = self.shared.leases.lock();
            l.last_seen.clear();
            l.expiring.clear();
        }
        if !leader && self.was_leader {
            let addr = self.leader_addr();
            for (_, p) in self.pending.drain() {
                p.fail(LockdError::NotLeader {
                    leader: addr.clone(),
                });
            }
        }
        self.was_leader = leader;
        let info = LeaderInfo {
            id: self.node.raft.leader_id,
            addr: self.leader_addr(),
            is_self: leader,
        };
        *self.shared.leader.write() = info;
    }

    fn send(&mut self, msgs: Vec<Message>) {
        if !msgs.is_empty() {
            self.transport.send(msgs, &self.sm.members);
        }
    }

    async fn on_ready(&mut self) -> Result<(), LockdError> {
        if !self.node.has_ready() {
            return Ok(());
        }
        let mut rd = self.node.ready();
        let early = rd.take_messages();
        // A leader's appends may go out before its own fsync; for them to reach the followers
        // meanwhile, the runtime thread must be free to write them, so that fsync runs on a
        // blocking thread. Without messages to overlap with, the inline fsync is cheaper.
        let overlap = !early.is_empty();
        self.send(early);
        if !rd.snapshot().is_empty() {
            let snap = rd.snapshot().clone();
            tracing::info!(
                index = snap.get_metadata().index,
                "installing snapshot from the leader"
            );
            self.sm = StateMachine::decode_snapshot(snap.get_data())?;
            self.node.mut_store().apply_snapshot(snap)?;
        }
        let committed = rd.take_committed_entries();
        self.apply(committed)?;
        if !rd.entries().is_empty() {
            self.node.mut_store().append(rd.entries())?;
        }
        if let Some(hs) = rd.hs() {
            self.node.mut_store().set_hard_state(hs.clone())?;
        }
        if rd.must_sync() {
            if overlap {
                let log = self.node.store().log_file();
                tokio::task::spawn_blocking(move || log.sync_data())
                    .await
                    .map_err(|e| LockdError::Storage(format!("log fsync task: {e}")))??;
            } else {
                self.node.mut_store().sync()?;
            }
        }
        self.send(rd.take_persisted_messages());
        let mut light = self.node.advance(rd);
        if let Some(commit) = light.commit_index() {
            self.node.mut_store().set_commit(commit)?;
        }
        self.send(light.take_messages());
        let committed = light.take_committed_entries();
        self.apply(committed)?;
        self.node.advance_apply();
        self.on_leadership();
        Ok(())
    }

    fn apply(&mut self, entries: Vec<Entry>) -> Result<(), LockdError> {
        for e in entries {
            let pending = self.take_pending(e.get_context());
            match e.get_entry_type() {
                EntryType::EntryNormal => {
                    // A new leader's empty entry carries nothing.
                    if !e.get_data().is_empty() {
                        let cmd = Command::decode(e.get_data())?;
                        let mut fx = Vec::new();
                        let res = self.sm.apply(cmd, &mut fx);
                        self.shared.hub.dispatch(&fx);
                        if let Some(Pending::Cmd(tx)) = pending {
                            let _ = tx.send(res.map_err(LockdError::from));
                        }
                    }
                }
                EntryType::EntryConfChange => {
                    let mut cc = ConfChange::default();
                    cc.merge_from_bytes(e.get_data())
                        .map_err(|x| LockdError::Storage(format!("conf change: {x}")))?;
                    let res = self.node.apply_conf_change(&cc);
                    let reply = match res {
                        Ok(cs) => {
                            self.node.mut_store().set_conf_state(cs);
                            match cc.get_change_type() {
                                ConfChangeType::AddNode | ConfChangeType::AddLearnerNode => {
                                    let addr =
                                        String::from_utf8_lossy(cc.get_context()).into_owned();
                                    tracing::info!(id = cc.node_id, %addr, "member added");
                                    self.sm.members.insert(cc.node_id, addr);
                                }
                                ConfChangeType::RemoveNode => {
                                    tracing::info!(id = cc.node_id, "member removed");
                                    self.sm.members.remove(&cc.node_id);
                                }
                            }
                            Ok(self.sm.members.clone())
                        }
                        Err(x) => Err(LockdError::from(x)),
                    };
                    if let Some(Pending::Members(tx)) = pending {
                        let _ = tx.send(reply);
                    }
                }
                EntryType::EntryConfChangeV2 => {
                    // Never proposed by lockd; applied so that raft's view stays consistent.
                    let mut cc = ConfChangeV2::default();
                    cc.merge_from_bytes(e.get_data())
                        .map_err(|x| LockdError::Storage(format!("conf change: {x}")))?;
                    let cs = self.node.apply_conf_change(&cc)?;
                    self.node.mut_store().set_conf_state(cs);
                }
            }
        }
        Ok(())
    }

    fn maybe_snapshot(&mut self) -> Result<(), LockdError> {
        let applied = self.node.raft.raft_log.applied;
        let store = self.node.store();
        let due = applied.saturating_sub(store.snapshot_index()) >= self.cfg.snapshot_every;
        let wanted = store.take_fresh_snapshot_wanted() && applied > store.snapshot_index();
        if !(due || wanted) || applied > store.last_log_index() {
            return Ok(());
        }
        let data = self.sm.encode_snapshot()?;
        self.node.mut_store().compact(applied, data)?;
        tracing::debug!(index = applied, "snapshot taken, log compacted");
        Ok(())
    }
}
