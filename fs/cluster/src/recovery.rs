//! Recovering a dead node: when a node's lockd session expires, lockd keeps every lock it held
//! under which it could change something (the session is opened with `hold_locks_on_expiry`),
//! so no other node can take those inodes' or groups' locks and read half-written metadata.
//! Every node watches for such sessions on the volume's slot locks; one (the winner of the
//! slot's recovery lock) replays the dead slot's journal on the device and marks the slot
//! clean, then asks lockd to complete the recovery, which releases the dead node's locks.
//!
//! The winner needs no lock of its own to replay: a block in the dead node's journal is one it
//! changed since it last gave up the lock covering it (each give-up retires the journal), so
//! that lock is one the dead node still held EX, kept until the recovery completes.
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lockd_client::{Error, LockOptions, Mode, Session};
use mafs_core::device::BlockDevice;
use mafs_core::volume::Volume;

use crate::names::VolumeNames;
use crate::volume_lock::{Attached, VolumeLock};
use mafs_core::locks::{Access, VolumeGate};

/// lockd tells every live session when another one's lease lapses (`PeerRecovering`), and
/// the watcher looks then. It also looks this often on its own, for a notice sent while its
/// event stream was reconnecting (a lockd election): a small part of the recovery time
/// (docs/operations.md, "Timings"), for one lockd read per node.
const LOOK_ANYWAY_EVERY: Duration = Duration::from_secs(1);

/// The watcher of one node, until dropped.
pub struct RecoveryWatcher {
    stop: Arc<Stop>,
    thread: Option<std::thread::JoinHandle<()>>,
}

#[derive(Default)]
struct Stop {
    asked: AtomicBool,
    wake: tokio::sync::Notify,
}

impl Drop for RecoveryWatcher {
    fn drop(&mut self) {
        self.stop.asked.store(true, Ordering::Release);
        self.stop.wake.notify_one();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

pub(crate) struct Recoverer {
    pub(crate) runtime: tokio::runtime::Handle,
    pub(crate) session: Arc<Session>,
    pub(crate) names: VolumeNames,
    pub(crate) dev: Arc<dyn BlockDevice>,
    pub(crate) slot_count: u32,
    /// This node's filesystem, once mounted: it frees a recovered node's orphans.
    pub(crate) attached: Arc<Attached>,
}

pub(crate) fn watch(r: Recoverer) -> std::io::Result<RecoveryWatcher> {
    let stop = Arc::new(Stop::default());
    let stopping = stop.clone();
    let mut notices = r.session.peer_recoveries();
    let thread = std::thread::Builder::new().name("mafs-recovery".into()).spawn(move || {
        let mut withdrawn = false;
        while !stopping.asked.load(Ordering::Acquire) {
            if let Err(e) = r.recover_dead_slots() {
                tracing::warn!("looking for dead nodes to recover: {e}");
            }
            if !withdrawn {
                withdrawn = r.withdraw_if_stopped();
            }
            r.runtime.block_on(async {
                tokio::select! {
                    _ = notices.changed() => {}
                    _ = stopping.wake.notified() => {}
                    _ = tokio::time::sleep(LOOK_ANYWAY_EVERY) => {}
                }
            });
        }
    })?;
    Ok(RecoveryWatcher { stop, thread: Some(thread) })
}

impl Recoverer {
    /// The slots held by expired sessions: (slot, session, node name).
    fn dead_slots(&self) -> Result<Vec<(u32, u64, String)>, Error> {
        let held = self.runtime.block_on(self.session.recovering_holders(&self.names.slot_prefix()))?;
        Ok(held.into_iter().filter_map(|h| Some((self.names.slot_of(&h.resource)?, h.session_id, h.node_name))).collect())
    }

    pub(crate) fn recover_dead_slots(&self) -> Result<(), Error> {
        for (slot, session, node) in self.dead_slots()? {
            if slot >= self.slot_count {
                continue;
            }
            let lock = self.names.recovery(slot);
            match self.runtime.block_on(self.session.lock(&lock, Mode::EX, LockOptions::try_now())) {
                Ok(_) => {}
                // Another node is recovering it.
                Err(Error::NotGranted { .. }) => continue,
                Err(e) => return Err(e),
            }
            // Under the recovery lock, again: a node that finished the recovery just before we
            // took the lock has released the slot, and a new node may already be writing its
            // journal, which must not be replayed (or marked clean) from here.
            let still = self.dead_slots()?.contains(&(slot, session, node.clone()));
            let r = if still { self.recover(slot, session, &node) } else { Ok(()) };
            if let Err(e) = self.runtime.block_on(self.session.release(&lock, None)) {
                tracing::warn!("releasing the recovery lock of slot {slot}: {e}");
            }
            r?;
        }
        Ok(())
    }

    /// A node whose filesystem stopped writing (a device error) withdraws from the cluster, as
    /// GFS2 does: it gives its session up without a goodbye, lockd expires it and keeps its
    /// locks, and a survivor replays its journal once the device lets it. Otherwise what it
    /// changed and could not write would stay locked away from the others for as long as it
    /// runs. It answers EIO, and rejoins like a fenced node once its slot is recovered. True
    /// once it has withdrawn.
    fn withdraw_if_stopped(&self) -> bool {
        let Some(why) = self.attached.fs().and_then(|w| w.upgrade()).and_then(|fs| fs.stopped()) else { return false };
        tracing::error!(
            "the filesystem stopped writing ({why}): withdrawing from the cluster so that another node recovers this \
             node's journal; this node answers EIO until it rejoins"
        );
        self.session.abandon();
        true
    }

    fn recover(&self, slot: u32, session: u64, node: &str) -> Result<(), Error> {
        let start = Instant::now();
        // The monotonic clock is every process's on a host: a test compares it with the dead
        // node's write log (`fence.rs`).
        let at_ns = mafs_core::device::monotonic_ns();
        tracing::warn!(slot, session, node, at_ns, "node {node} (slot {slot}) lost its lockd session: recovering its slot");
        // Replays the slot's journal and marks it clean; a replay that fails leaves the
        // session in recovery (its locks held), to be tried again.
        let replayed = Volume::open(self.dev.clone(), slot, &format!("recovery of {node}"), 1024).and_then(|v| {
            let done = v.replayed.transactions;
            v.close().map(|()| done)
        });
        let transactions = match replayed {
            Ok(t) => t,
            Err(e) => {
                tracing::error!(slot, node, "cannot replay the journal of slot {slot}: {e}; its locks stay held, trying again");
                return Ok(());
            }
        };
        let released = self.runtime.block_on(self.session.complete_recovery(session))?;
        tracing::warn!(
            slot,
            node,
            "recovered slot {slot} of node {node}: {transactions} journal transactions replayed, {released} locks released, in {:?}",
            start.elapsed()
        );
        self.free_orphans_of(slot, node);
        Ok(())
    }

    /// Frees what the recovered node left orphaned and nobody has open, through this node's
    /// filesystem (its journal, with the locks any operation takes), so the space comes
    /// back now rather than at the slot's next mount. Before this node is mounted, that mount
    /// is left to do it.
    fn free_orphans_of(&self, slot: u32, node: &str) {
        let Some(fs) = self.attached.fs().and_then(|w| w.upgrade()) else { return };
        let gate = VolumeLock::new(self.runtime.clone(), self.session.clone(), self.names.volume(), self.attached.clone());
        match gate.enter(Access::Write).and_then(|_hold| fs.reclaim_orphans_of_slot(slot)) {
            Ok(()) => tracing::info!(slot, node, "freed what node {node} left orphaned in slot {slot}"),
            Err(e) => tracing::warn!(slot, node, "cannot free what node {node} left orphaned ({e}); the slot's next mount will"),
        }
    }
}
