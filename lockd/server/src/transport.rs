//! Replica-to-replica delivery of raft messages: one task per peer, batching whatever queued up
//! while the previous RPC was in flight. Loss is fine (raft retransmits); the raft loop only
//! has to hear about unreachable peers, the fate of snapshots and a peer that says we were
//! removed, which the transport reports through the [`ReportSink`] it is given.
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use lockd_common::wire::removed_at;
use mafs_proto::v1 as pb;
use pb::raft_transport_client::RaftTransportClient;
use protobuf::Message as _;
use raft::eraftpb::{Message, MessageType};
use tokio::runtime::Handle;
use tokio::sync::{mpsc, oneshot};

/// Raft messages can carry a whole snapshot.
pub const MAX_RAFT_MESSAGE: usize = 512 << 20;
const MAX_BATCH: usize = 512;
const MAX_QUEUED: usize = 20_000;

/// What the transport tells the raft loop about a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerReport {
    /// The stream to this peer broke; raft should probe it instead of streaming appends.
    Unreachable(u64),
    /// A snapshot was handed to this peer's stream (true) or could not be (false).
    SnapshotStatus(u64, bool),
    /// The peer answered our raft messages with "you were removed at log index `at`" (we
    /// missed the commit of our own removal, which the leader no longer sends us).
    RemovedByPeer { peer: u64, at: u64 },
}

/// Where the transport's reports go (the raft loop's own channel).
pub type ReportSink = Arc<dyn Fn(PeerReport) + Send + Sync>;

struct Link {
    addr: String,
    tx: mpsc::UnboundedSender<Message>,
}

pub struct Transport {
    rt: Handle,
    report: ReportSink,
    links: HashMap<u64, Link>,
}

impl Transport {
    pub fn new(rt: Handle, report: ReportSink) -> Self {
        Transport { rt, report, links: HashMap::new() }
    }

    pub fn send(&mut self, msgs: Vec<Message>, members: &BTreeMap<u64, String>) {
        for m in msgs {
            let to = m.to;
            let Some(addr) = members.get(&to) else {
                tracing::debug!(to, "no address for raft peer; dropping message");
                continue;
            };
            let stale = self.links.get(&to).is_none_or(|l| &l.addr != addr || l.tx.is_closed());
            if stale {
                let (tx, rx) = mpsc::unbounded_channel();
                self.rt.spawn(run_link(to, addr.clone(), rx, self.report.clone()));
                self.links.insert(to, Link { addr: addr.clone(), tx });
            }
            if let Some(link) = self.links.get(&to) {
                let _ = link.tx.send(m);
            }
        }
        // Forget peers that left the membership; their task ends when its sender drops.
        self.links.retain(|id, _| members.contains_key(id));
    }
}

async fn run_link(to: u64, addr: String, mut rx: mpsc::UnboundedReceiver<Message>, report: ReportSink) {
    let endpoint = match tonic::transport::Endpoint::from_shared(format!("http://{addr}")) {
        Ok(e) => e
            .connect_timeout(Duration::from_millis(500))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(1))
            .keep_alive_timeout(Duration::from_secs(2)),
        Err(e) => {
            tracing::error!(to, %addr, "bad peer address: {e}");
            return;
        }
    };
    let client = RaftTransportClient::new(endpoint.connect_lazy())
        .max_decoding_message_size(MAX_RAFT_MESSAGE)
        .max_encoding_message_size(MAX_RAFT_MESSAGE);
    // The open stream: batches go into `sink`; `done` fires when the call ends (peer gone).
    let mut stream: Option<(mpsc::Sender<pb::RaftBatch>, oneshot::Receiver<()>)> = None;
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(m) => batch.push(m),
                Err(_) => break,
            }
        }
        // A peer that is down for long must not make us hoard messages it will never need.
        while rx.len() > MAX_QUEUED {
            let _ = rx.try_recv();
        }
        if let Some((_, done)) = &mut stream {
            if done.try_recv() != Err(oneshot::error::TryRecvError::Empty) {
                stream = None;
                report(PeerReport::Unreachable(to));
            }
        }
        let (sink, _) = stream.get_or_insert_with(|| {
            let (sink, source) = mpsc::channel::<pb::RaftBatch>(64);
            let (done_tx, done_rx) = oneshot::channel();
            let mut client = client.clone();
            let report = report.clone();
            tokio::spawn(async move {
                let r = client.stream(tokio_stream::wrappers::ReceiverStream::new(source)).await;
                if let Err(e) = r {
                    if let Some(at) = removed_at(&e) {
                        report(PeerReport::RemovedByPeer { peer: to, at });
                    }
                    tracing::debug!(to, "raft stream ended: {e}");
                }
                let _ = done_tx.send(());
            });
            (sink, done_rx)
        });
        let snapshots: Vec<bool> = batch.iter().map(|m| m.get_msg_type() == MessageType::MsgSnapshot).collect();
        let messages: Vec<Vec<u8>> = batch.iter().filter_map(|m| m.write_to_bytes().ok()).collect();
        let ok = sink.send(pb::RaftBatch { messages }).await.is_ok();
        if !ok {
            stream = None;
            report(PeerReport::Unreachable(to));
            // Do not spin on a dead peer; raft will resend what matters.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Handed to the stream is as close to "delivered" as a stream tells; a lost snapshot
        // shows up as the follower still lagging, and raft sends another.
        if snapshots.contains(&true) {
            report(PeerReport::SnapshotStatus(to, ok));
        }
    }
}
