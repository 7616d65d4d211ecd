//! The replica's Raft node: one task owns raft-rs's `RawNode`, the durable log and the state
//! machine, and runs the Ready loop; the gRPC handlers and the transport talk to it only
//! through its channel ([`NodeHandle`], [`NodeMsg`]).
//!
//! Invariants:
//! - The loop runs on the replica's one runtime thread and fsyncs the log inline (a leader with
//!   appends to send fsyncs on a blocking thread instead, so the appends go out meanwhile): a
//!   request goes from the socket to the log and back without waking another thread, which
//!   costs more than the fdatasync on small VMs (measurements in docs/lockd.md).
//! - Everything that queued on the channel while one fsync blocked the runtime goes into the
//!   next Ready together (group commit).
//! - Nothing is answered or sent to a peer before raft-rs allows it: `persisted_messages` only
//!   after the fsync, a proposal's caller only once its entry is applied here.
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lockd_common::Role;
use parking_lot::{Mutex, RwLock};
use protobuf::Message as _;
use raft::eraftpb::{ConfChange, ConfChangeType, ConfChangeV2, Entry, EntryType, Message, MessageType};
use raft::{RawNode, SnapshotStatus, StateRole};
use tokio::runtime::Handle;
use tokio::sync::{mpsc, oneshot, watch};

use crate::errors::LockdError;
use crate::events::{EventHub, Leases};
use crate::lock_table::SessionState;
use crate::raft_storage::{Bootstrap, DiskStorage};
use crate::state_machine::{CmdResult, Command, StateMachine};
use crate::transport::{PeerReport, ReportSink, Transport};

/// Index (and term) of the snapshot every bootstrap replica starts from; see [`Bootstrap`].
/// 5, as TiKV uses: any value above 0 works.
pub const BOOTSTRAP_INDEX: u64 = 5;

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
    /// From the transport.
    Peer(PeerReport),
    Shutdown,
}

pub struct RaftInfo {
    pub id: u64,
    pub role: Role,
    /// `None` while no leader is known.
    pub leader_id: Option<u64>,
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
    /// `None` while no leader is known.
    pub id: Option<u64>,
    pub addr: Option<String>,
    pub is_self: bool,
}

pub struct Shared {
    pub id: u64,
    pub hub: EventHub,
    pub leases: Mutex<Leases>,
    pub leader: RwLock<LeaderInfo>,
    /// Bumped whenever `leader` changes (another leader, none, or this replica gained or lost
    /// leadership): Lock calls waiting here and event streams served here end on it, so a
    /// client stranded on a replica cut off from the majority moves on.
    pub leadership: watch::Sender<u64>,
    /// This replica was removed from the membership: it takes no part and refuses clients.
    pub removed: AtomicBool,
    /// Replicas whose removal this one applied (mirror of the state machine's set, for the
    /// raft transport service).
    pub removed_peers: RwLock<BTreeMap<u64, u64>>,
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
        if self.shared.removed.load(Ordering::Relaxed) {
            return LockdError::Removed { id: self.shared.id };
        }
        LockdError::NotLeader { leader: self.shared.leader.read().addr.clone() }
    }

    /// Whether some leader is known (this replica or another); an isolated replica knows none.
    pub fn leader_known(&self) -> bool {
        !self.shared.removed.load(Ordering::Relaxed) && self.shared.leader.read().id.is_some()
    }

    /// The log index at which this replica applied the removal of `id`, if it did (and has
    /// not applied its addition since).
    pub fn removed_peer(&self, id: u64) -> Option<u64> {
        self.shared.removed_peers.read().get(&id).copied()
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

    async fn ask<T>(&self, msg: NodeMsg, rx: oneshot::Receiver<Result<T, LockdError>>, wait: Duration) -> Result<T, LockdError> {
        self.tx.send(msg).map_err(|_| LockdError::Shutdown)?;
        match tokio::time::timeout(wait, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(self.not_leader()),
            Err(_) => Err(LockdError::Timeout(format!("not committed within {wait:?}"))),
        }
    }

    /// Replicates `cmd` and returns its result once applied here.
    pub async fn propose(&self, cmd: Command, wait: Duration) -> Result<CmdResult, LockdError> {
        let (reply, rx) = oneshot::channel();
        self.ask(NodeMsg::Propose { cmd, reply }, rx, wait).await
    }

    pub async fn change_membership(&self, op: MembershipOp, wait: Duration) -> Result<BTreeMap<u64, String>, LockdError> {
        let (reply, rx) = oneshot::channel();
        self.ask(NodeMsg::ChangeMembership { op, reply }, rx, wait).await
    }

    /// Runs `f` in the raft loop against the state applied so far.
    pub async fn read<T: Send + 'static>(&self, f: impl FnOnce(&ReadView) -> T + Send + 'static) -> Result<T, LockdError> {
        let (tx, rx) = oneshot::channel();
        let job = Box::new(move |v: &ReadView| {
            let _ = tx.send(f(v));
        });
        self.tx.send(NodeMsg::Read(job)).map_err(|_| LockdError::Shutdown)?;
        rx.await.map_err(|_| LockdError::Shutdown)
    }

    pub fn step(&self, m: Message) -> Result<(), LockdError> {
        self.tx.send(NodeMsg::Raft(Box::new(m))).map_err(|_| LockdError::Shutdown)
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
    /// Taken no part since the removal of this replica was applied (or a peer told us).
    removed: bool,
    /// A `--join`ed replica that has not installed the cluster's snapshot yet.
    awaiting_snapshot: bool,
    /// The `--peer` flags were compared with the committed membership once caught up.
    members_checked: bool,
    /// Rate limit of the warnings about peers' messages (misaddressed, declined votes).
    last_peer_warning: Option<Instant>,
    cfg: ReplicaConfig,
}

/// Opens the data directory and starts the raft loop as a task on `rt`.
/// The receiver yields the loop's result when it stops (shutdown or a fatal error).
pub fn start(cfg: ReplicaConfig, rt: Handle) -> Result<(NodeHandle, oneshot::Receiver<Result<(), LockdError>>), LockdError> {
    let initial = if cfg.join {
        None
    } else {
        let sm = StateMachine::with_members(cfg.members.clone());
        Some(Bootstrap { data: sm.encode_snapshot()?, voters: cfg.members.keys().copied().collect(), index: BOOTSTRAP_INDEX })
    };
    let storage = DiskStorage::open(&cfg.data_dir, initial)?;
    let cs = storage.conf_state().clone();
    let awaiting_snapshot = cfg.join && storage.snapshot_index() == 0 && cs.voters.is_empty() && cs.learners.is_empty();
    let mut sm = if storage.snapshot_data().is_empty() {
        StateMachine::with_members(cfg.members.clone())
    } else {
        StateMachine::decode_snapshot(storage.snapshot_data())?
    };
    // The flags may know an address the snapshot lacks (a joiner learns the others' from its
    // `--peer`s until the leader's snapshot arrives); they never add a member.
    for (id, addr) in &cfg.members {
        let member = cs.voters.contains(id) || cs.learners.contains(id) || awaiting_snapshot;
        if member {
            sm.members.entry(*id).or_insert_with(|| addr.clone());
        }
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
    let removed = sm.removed.contains_key(&cfg.id);
    let shared = Arc::new(Shared {
        id: cfg.id,
        hub: EventHub::default(),
        leases: Mutex::new(Leases::default()),
        leader: RwLock::new(LeaderInfo::default()),
        leadership: watch::Sender::new(0),
        removed: AtomicBool::new(false),
        removed_peers: RwLock::new(sm.removed.clone()),
    });
    let mut replica = Replica {
        node,
        sm,
        shared: shared.clone(),
        transport: Transport::new(rt.clone(), report_sink(tx.clone())),
        pending: HashMap::new(),
        next_seq: 1,
        nonce: rand::random(),
        was_leader: false,
        removed: false,
        awaiting_snapshot,
        members_checked: false,
        last_peer_warning: None,
        cfg,
    };
    if removed {
        replica.become_removed("its data directory says so");
    }
    let (done_tx, done_rx) = oneshot::channel();
    rt.spawn(async move {
        let _ = done_tx.send(replica.run(rx).await);
    });
    Ok((NodeHandle { tx, shared }, done_rx))
}

/// The transport's reports, as messages to the raft loop.
fn report_sink(tx: mpsc::UnboundedSender<NodeMsg>) -> ReportSink {
    Arc::new(move |r| {
        let _ = tx.send(NodeMsg::Peer(r));
    })
}

fn role_of(r: StateRole) -> Role {
    match r {
        StateRole::Leader => Role::Leader,
        StateRole::Follower => Role::Follower,
        StateRole::Candidate => Role::Candidate,
        StateRole::PreCandidate => Role::PreCandidate,
    }
}

/// raft-rs's leader id, where 0 means none.
fn known_leader(id: u64) -> Option<u64> {
    (id != raft::INVALID_ID).then_some(id)
}

impl Replica {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<NodeMsg>) -> Result<(), LockdError> {
        let result = self.event_loop(&mut rx).await;
        if let Err(e) = &result {
            tracing::error!("raft loop stopped: {e}");
        }
        self.fail_pending(|| LockdError::Shutdown);
        result
    }

    async fn event_loop(&mut self, rx: &mut mpsc::UnboundedReceiver<NodeMsg>) -> Result<(), LockdError> {
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
            if self.removed {
                continue;
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
                if self.removed {
                    let _ = reply.send(Err(LockdError::Removed { id: self.cfg.id }));
                    return Ok(true);
                }
                if !self.is_leader() {
                    let _ = reply.send(Err(LockdError::NotLeader { leader: self.leader_addr() }));
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
                        let _ = reply.send(Err(LockdError::NotLeader { leader: self.leader_addr() }));
                    }
                    Err(e) => {
                        let _ = reply.send(Err(e.into()));
                    }
                }
            }
            NodeMsg::ChangeMembership { op, reply } => self.propose_membership(op, reply),
            NodeMsg::Raft(m) => self.step(*m)?,
            NodeMsg::Read(f) => {
                let view = ReadView { sm: &self.sm, raft: self.info() };
                f(&view);
            }
            NodeMsg::Peer(PeerReport::Unreachable(id)) => self.node.report_unreachable(id),
            NodeMsg::Peer(PeerReport::SnapshotStatus(id, ok)) => {
                self.node.report_snapshot(id, if ok { SnapshotStatus::Finish } else { SnapshotStatus::Failure })
            }
            NodeMsg::Peer(PeerReport::RemovedByPeer { peer, at }) => {
                // Applied past the removal and still here: we were added back after it, and
                // the peer has not applied that yet.
                if self.node.raft.raft_log.applied < at {
                    self.become_removed(&format!("replica {peer} applied its removal at log index {at}"))
                }
            }
            NodeMsg::Shutdown => return Ok(false),
        }
        Ok(true)
    }

    fn step(&mut self, m: Message) -> Result<(), LockdError> {
        if self.removed {
            return Ok(());
        }
        if m.to != self.cfg.id {
            // Two replicas share an id, or a peer list maps an id to the wrong address.
            if self.peer_warning_due() {
                tracing::warn!(
                    me = self.cfg.id,
                    to = m.to,
                    from = m.from,
                    "received a raft message addressed to another replica: two replicas may \
                     share an --id, or a --peer/add-member address points at the wrong replica; \
                     dropping it"
                );
            }
            return Ok(());
        }
        // The leader sends a follower a commit index no higher than what that follower told it
        // it had durably appended. Higher than our log means we lost acknowledged entries (the
        // data directory was wiped or the log deleted and the replica restarted as if new);
        // raft-rs would panic, and taking part would risk committed history.
        let last = self.node.raft.raft_log.last_index();
        if m.get_msg_type() == MessageType::MsgHeartbeat && m.term >= self.node.raft.term && m.commit > last {
            return Err(LockdError::CorruptLog(format!(
                "leader {} says this replica ({}) durably holds log entries up to {}, but its log \
                 in {} ends at {last}: the log was lost (data directory wiped or raft.log \
                 deleted) and must not be rebuilt by voting again",
                m.from,
                self.cfg.id,
                m.commit,
                self.cfg.data_dir.display()
            )));
        }
        if self.declines_vote(&m) {
            return Ok(());
        }
        if let Err(e) = self.node.step(m) {
            tracing::debug!("step: {e}");
        }
        Ok(())
    }

    /// Whether a warning about peers' messages may be logged now (at most one per 10 s: a
    /// misconfigured peer sends many messages a second).
    fn peer_warning_due(&mut self) -> bool {
        let quiet = self.last_peer_warning.is_some_and(|t| t.elapsed() < Duration::from_secs(10));
        if !quiet {
            self.last_peer_warning = Some(Instant::now());
        }
        !quiet
    }

    /// Answers every proposal still waiting with `why()`.
    fn fail_pending(&mut self, why: impl Fn() -> LockdError) {
        for (_, p) in self.pending.drain() {
            p.fail(why());
        }
    }

    /// A bootstrap replica whose log holds nothing past its initial snapshot does not vote for
    /// a candidate that has history. Either the cluster went on without it (it started late,
    /// and will catch up from the leader without voting), or its data directory was wiped and
    /// it was started again as if new: then it may already have voted in this term, and its
    /// vote could elect a candidate that lacks entries committed with its own lost
    /// acknowledgements. Among brand-new replicas (no history anywhere) it votes as usual.
    fn declines_vote(&mut self, m: &Message) -> bool {
        let is_vote = matches!(m.get_msg_type(), MessageType::MsgRequestVote | MessageType::MsgRequestPreVote);
        let last = self.node.raft.raft_log.last_index();
        let untouched = !self.cfg.join && last == self.node.store().snapshot_index() && last <= BOOTSTRAP_INDEX;
        if !(is_vote && untouched && m.index > last) {
            return false;
        }
        if self.peer_warning_due() {
            tracing::warn!(
                candidate = m.from,
                candidate_last_index = m.index,
                "this replica's log is empty but the candidate's is not: not voting until it \
                 has caught up from a leader (if its data directory was wiped, replace it: \
                 remove-member, add-member, --join)"
            );
        }
        true
    }

    /// Stops taking part: no ticks (so no campaigns), no raft messages, no proposals; clients
    /// hear "removed". The process stays up for `status` until the operator stops it.
    fn become_removed(&mut self, why: &str) {
        if self.removed {
            return;
        }
        tracing::error!(
            id = self.cfg.id,
            "this replica was removed from the cluster ({why}); it no longer votes, replicates \
             or serves clients: stop it"
        );
        self.removed = true;
        self.shared.removed.store(true, Ordering::Relaxed);
        let id = self.cfg.id;
        self.fail_pending(|| LockdError::Removed { id });
        self.was_leader = false;
        *self.shared.leader.write() = LeaderInfo::default();
        self.shared.leadership.send_modify(|e| *e += 1);
    }

    fn propose_membership(&mut self, op: MembershipOp, reply: Reply<BTreeMap<u64, String>>) {
        if self.removed {
            let _ = reply.send(Err(LockdError::Removed { id: self.cfg.id }));
            return;
        }
        if !self.is_leader() {
            let _ = reply.send(Err(LockdError::NotLeader { leader: self.leader_addr() }));
            return;
        }
        let voters = self.node.store().conf_state().voters.clone();
        let mut cc = ConfChange::default();
        match op {
            MembershipOp::Add { id, addr } => {
                if id == 0 || voters.contains(&id) {
                    let _ = reply.send(Err(LockdError::Invalid(format!("replica {id} is already a member (or id 0)"))));
                    return;
                }
                cc.set_change_type(ConfChangeType::AddNode);
                cc.node_id = id;
                cc.set_context(addr.into_bytes().into());
            }
            MembershipOp::Remove { id } => {
                if !voters.contains(&id) {
                    let _ = reply.send(Err(LockdError::Invalid(format!("replica {id} is not a member"))));
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
            role: if self.removed { Role::Removed } else { role_of(r.state) },
            leader_id: known_leader(r.leader_id),
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
            let Leases { last_seen, expiring } = &mut *guard;
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
            expiring.retain(|id| sessions.get(id).is_some_and(|s| s.state == SessionState::Active));
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
            self.fail_pending(|| LockdError::NotLeader { leader: addr.clone() });
        }
        self.was_leader = leader;
        let info = LeaderInfo { id: known_leader(self.node.raft.leader_id), addr: self.leader_addr(), is_self: leader };
        let mut current = self.shared.leader.write();
        let changed = current.id != info.id || current.is_self != info.is_self;
        *current = info;
        drop(current);
        if changed {
            self.shared.leadership.send_modify(|e| *e += 1);
        }
    }

    /// Once caught up with a leader, says loudly if the `--peer` flags disagree with the
    /// membership the cluster committed (the committed one is what counts).
    fn check_peer_flags(&mut self) {
        let r = &self.node.raft;
        if self.members_checked || known_leader(r.leader_id).is_none() || r.raft_log.applied < r.raft_log.committed {
            return;
        }
        self.members_checked = true;
        let flags: BTreeSet<u64> = self.cfg.members.keys().copied().collect();
        let committed: BTreeSet<u64> = self.sm.members.keys().copied().collect();
        if !self.cfg.join && flags != committed {
            tracing::warn!(
                "the --id/--peer flags name replicas {flags:?} but the cluster's committed \
                 membership is {committed:?}; the committed membership is used (change it with \
                 add-member/remove-member, and fix the flags)"
            );
        }
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
        if self.awaiting_snapshot {
            if !rd.snapshot().is_empty() {
                self.awaiting_snapshot = false;
            } else if let Some(first) = rd.entries().first() {
                // Without the snapshot this replica lacks the bootstrap voters, and replaying
                // the membership changes from here would leave it a voter set of its own.
                return Err(LockdError::Raft(format!(
                    "this joining replica was sent log entries from index {} instead of the \
                     cluster's snapshot; the leader runs an older lockd: upgrade it, then \
                     remove, wipe and re-add this replica",
                    first.index
                )));
            }
        }
        let early = rd.take_messages();
        // A leader's appends may go out before its own fsync; for them to reach the followers
        // meanwhile, the runtime thread must be free to write them, so that fsync runs on a
        // blocking thread. Without messages to overlap with, the inline fsync is cheaper.
        let overlap = !early.is_empty();
        self.send(early);
        if !rd.snapshot().is_empty() {
            let snap = rd.snapshot().clone();
            tracing::info!(index = snap.get_metadata().index, "installing snapshot from the leader");
            self.sm = StateMachine::decode_snapshot(snap.get_data())?;
            *self.shared.removed_peers.write() = self.sm.removed.clone();
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
                self.node.mut_store().mark_synced()?;
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
        self.check_peer_flags();
        if self.sm.removed.contains_key(&self.cfg.id) {
            self.become_removed("the cluster applied its removal");
        }
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
                        let shown = tracing::enabled!(target: "lockd_apply", tracing::Level::TRACE).then(|| format!("{cmd:?}"));
                        let res = self.sm.apply(cmd, &mut fx);
                        if let Some(cmd) = shown {
                            tracing::trace!(target: "lockd_apply", index = e.index, "{cmd} -> {res:?} fx={fx:?}");
                        }
                        self.shared.hub.dispatch(&fx);
                        if let Some(Pending::Cmd(tx)) = pending {
                            let _ = tx.send(res.map_err(LockdError::from));
                        }
                    }
                }
                EntryType::EntryConfChange => {
                    let mut cc = ConfChange::default();
                    cc.merge_from_bytes(e.get_data()).map_err(|x| LockdError::Storage(format!("conf change: {x}")))?;
                    let res = self.node.apply_conf_change(&cc);
                    let reply = match res {
                        Ok(cs) => {
                            self.node.mut_store().set_conf_state(cs);
                            match cc.get_change_type() {
                                ConfChangeType::AddNode | ConfChangeType::AddLearnerNode => {
                                    let addr = String::from_utf8_lossy(cc.get_context()).into_owned();
                                    tracing::info!(id = cc.node_id, %addr, "member added");
                                    self.sm.members.insert(cc.node_id, addr);
                                    self.sm.removed.remove(&cc.node_id);
                                }
                                ConfChangeType::RemoveNode => {
                                    tracing::info!(id = cc.node_id, "member removed");
                                    self.sm.members.remove(&cc.node_id);
                                    self.sm.removed.insert(cc.node_id, e.index);
                                }
                            }
                            *self.shared.removed_peers.write() = self.sm.removed.clone();
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
                    cc.merge_from_bytes(e.get_data()).map_err(|x| LockdError::Storage(format!("conf change: {x}")))?;
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
        // A data directory from before BOOTSTRAP_INDEX keeps its bootstrap voters in a snapshot
        // at index 0, and its log from index 1 lacks them: a joiner fed that log would end up a
        // cluster of its own. Compacting as soon as anything is applied means a joiner always
        // gets a snapshot, whichever replica leads.
        let snap = store.snapshot_index();
        let due = applied > snap && (applied - snap >= self.cfg.snapshot_every || snap == 0);
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
