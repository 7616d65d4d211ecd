//! Joining the cluster as a node of one volume, and leaving it: the lockd session, the node's
//! unique name, its slot, and the locks its filesystem takes.
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use lockd_client::{Error, LockGuard, LockOptions, Mode, Session, SessionOptions};
use mafs_core::device::BlockDevice;
use mafs_core::filesystem::Fs;
use mafs_core::locks::KernelCaches;

use crate::error::JoinError;
use crate::names::VolumeNames;
use crate::volume_lock::{revoke, Attached, VolumeLock};

/// A node's lease on its locks: lockd expires a node that has not been heard from for this
/// long (plus lockd's margin, 1 s), and a survivor then recovers it. 3 s makes a killed node's
/// recovery take under 5 s (docs/operations.md, "Timings"), while a lockd election (0.5–1 s
/// with lockd's 50 ms tick) fits twice into the time a node's heartbeats (every 1 s) may go
/// unanswered before it fences itself.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(3);

#[derive(Debug, Clone)]
pub struct JoinOptions {
    /// lockd replicas, `HOST:PORT` each.
    pub endpoints: Vec<String>,
    /// Unique on the volume (a second node of the same name is refused).
    pub node_name: String,
    /// A slot of the node's choosing; `None` takes the first free one.
    pub slot: Option<u32>,
    pub lease: Duration,
    /// Most locks the node keeps cached; past it, the least recently used idle ones are given
    /// up (`lock_trim.rs`).
    pub max_cached_locks: usize,
}

/// A node of the cluster, from joining to leaving.
pub struct ClusterNode {
    runtime: tokio::runtime::Runtime,
    session: Arc<Session>,
    names: VolumeNames,
    slot: u32,
    attached: Arc<Attached>,
    /// The name and slot locks, held until the node leaves.
    held: Vec<LockGuard>,
    max_cached_locks: usize,
}

impl ClusterNode {
    /// Joins the cluster of the volume `volume_uuid` (with `slot_count` slots): opens a lockd
    /// session, takes the node's name and a slot. Nothing is written to the volume here, so a
    /// refusal leaves it as it was.
    pub fn join(volume_uuid: &str, slot_count: u32, opts: &JoinOptions) -> Result<ClusterNode, JoinError> {
        let mut node = Self::open(volume_uuid, slot_count, opts)?;
        match node.take_name_and_slot(slot_count, opts) {
            Ok(()) => Ok(node),
            Err(why) => Err(node.refuse(why)),
        }
    }

    /// [`Self::join`] for a mount that has the volume's device: when the node's name is still
    /// held by a session of that name that died (a node that withdrew or was killed, with no
    /// live node left to recover it), it recovers that slot itself, as the next mount after
    /// everyone died must, and takes the name then. A name a live node holds is refused at once.
    pub fn join_with_device(
        volume_uuid: &str,
        slot_count: u32,
        opts: &JoinOptions,
        dev: Arc<dyn BlockDevice>,
    ) -> Result<ClusterNode, JoinError> {
        let mut node = Self::open(volume_uuid, slot_count, opts)?;
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            match node.take_name_and_slot(slot_count, opts) {
                Ok(()) => return Ok(node),
                Err(JoinError::NameInUse { .. }) if std::time::Instant::now() < deadline && node.name_held_by_the_dead(&opts.node_name) => {
                    if let Err(e) = node.recoverer(dev.clone(), slot_count).recover_dead_slots() {
                        tracing::warn!("recovering the slot of the dead node that had this name: {e}");
                    }
                    std::thread::sleep(Duration::from_millis(250));
                }
                Err(why) => return Err(node.refuse(why)),
            }
        }
    }

    /// Whether the node lock of `name` is held by a session lockd is recovering (dead).
    fn name_held_by_the_dead(&self, name: &str) -> bool {
        let resource = self.names.node(name);
        match self.runtime.block_on(self.session.recovering_holders(&resource)) {
            Ok(held) => held.iter().any(|h| h.resource == resource),
            Err(e) => {
                tracing::warn!("cannot ask lockd who holds the name {name}: {e}");
                false
            }
        }
    }

    /// Joins again after this node fenced itself: as [`Self::join`], but while its name is
    /// still held by its old session, which lockd keeps until that session's slot is
    /// recovered, it waits for the recovery — and does it itself, through `dev`, when no live
    /// node does (all of them fenced by a lockd outage, say). Gives up when `stop` is set.
    pub fn join_after_recovery(
        volume_uuid: &str,
        slot_count: u32,
        opts: &JoinOptions,
        dev: Arc<dyn BlockDevice>,
        stop: &AtomicBool,
    ) -> Result<ClusterNode, JoinError> {
        let mut node = Self::open(volume_uuid, slot_count, opts)?;
        loop {
            match node.take_name_and_slot(slot_count, opts) {
                Ok(()) => return Ok(node),
                Err(JoinError::NameInUse { .. }) if !stop.load(Ordering::Acquire) => {
                    if let Err(e) = node.recoverer(dev.clone(), slot_count).recover_dead_slots() {
                        tracing::warn!("recovering this node's old slot: {e}");
                    }
                    std::thread::sleep(Duration::from_millis(250));
                }
                Err(why) => return Err(node.refuse(why)),
            }
        }
    }

    /// A lockd session for the volume, holding nothing yet.
    fn open(volume_uuid: &str, slot_count: u32, opts: &JoinOptions) -> Result<ClusterNode, JoinError> {
        if let Some(slot) = opts.slot.filter(|s| *s >= slot_count) {
            return Err(JoinError::NoSuchSlot { slot, count: slot_count });
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("mafs-lockd-client")
            .enable_all()
            .build()
            .map_err(JoinError::Runtime)?;
        let names = VolumeNames::new(volume_uuid);
        let attached = Arc::new(Attached::default());
        let mut so = SessionOptions::new(opts.node_name.clone());
        so.lease = opts.lease;
        // A node that dies keeps its locks until a survivor has replayed its journal
        // (`recovery.rs`): nobody reads what it left half written.
        so.hold_locks_on_expiry = true;
        let (resources, revoking) = (names.clone(), attached.clone());
        so.on_blocking = Some(Arc::new(move |n| revoke(&resources, &revoking, n)));
        let session = runtime.block_on(Session::open(&opts.endpoints, so)).map_err(|source| match source {
            Error::Unavailable(_) | Error::BadEndpoint(_) => JoinError::Unreachable { endpoints: opts.endpoints.join(","), source },
            other => JoinError::Session(other),
        })?;
        let session = Arc::new(session);
        let _ = attached.session.set(Arc::downgrade(&session));
        Ok(ClusterNode { runtime, session, names, slot: 0, attached, held: Vec::new(), max_cached_locks: opts.max_cached_locks })
    }

    /// Takes the node's name, then the first free slot (or the one `opts` names).
    fn take_name_and_slot(&mut self, slot_count: u32, opts: &JoinOptions) -> Result<(), JoinError> {
        let name = self.names.node(&opts.node_name);
        match self.try_lock(&name)? {
            Some(g) => self.held.push(g),
            None => return Err(JoinError::NameInUse { name: opts.node_name.clone() }),
        }
        let candidates: Vec<u32> = match opts.slot {
            Some(s) => vec![s],
            None => (0..slot_count).collect(),
        };
        for s in candidates {
            if let Some(g) = self.try_lock(&self.names.slot(s))? {
                self.held.push(g);
                self.slot = s;
                tracing::info!(node = opts.node_name, slot = s, session = self.session.id(), "joined the cluster");
                return Ok(());
            }
        }
        Err(match opts.slot {
            Some(slot) => JoinError::SlotInUse { slot },
            None => JoinError::NoFreeSlot { count: slot_count },
        })
    }

    /// `Some` if lockd granted `resource` EX at once, `None` if another session holds it.
    fn try_lock(&self, resource: &str) -> Result<Option<LockGuard>, JoinError> {
        match self.runtime.block_on(self.session.lock(resource, Mode::EX, LockOptions::try_now())) {
            Ok(g) => Ok(Some(g)),
            Err(Error::NotGranted { .. }) => Ok(None),
            Err(source) => Err(JoinError::Lock { resource: resource.to_string(), waited: Duration::ZERO, source }),
        }
    }

    /// Leaves at once (nothing was written) and answers `why`.
    fn refuse(self, why: JoinError) -> JoinError {
        if let Err(e) = self.leave() {
            tracing::warn!("leaving lockd after a refused join: {e}");
        }
        why
    }

    pub fn slot(&self) -> u32 {
        self.slot
    }

    pub fn session_id(&self) -> u64 {
        self.session.id()
    }

    /// The gate every request of the node passes.
    pub fn volume_lock(&self) -> Arc<VolumeLock> {
        Arc::new(VolumeLock::new(self.runtime.handle().clone(), self.session.clone(), self.names.volume(), self.attached.clone()))
    }

    /// The node's inode, group, rename and open locks, for the filesystem it mounts.
    pub fn inode_locks(&self) -> crate::inode_locks::InodeLocks {
        crate::inode_locks::InodeLocks::new(self.runtime.handle().clone(), self.session.clone(), self.names.clone(), self.attached.clone())
    }

    /// Starts watching for nodes of this volume that die, and recovering their slots, through
    /// `dev` (fenced like the mount's). Before the mount takes any lock: a dead node's locks
    /// are released only by a recovery.
    pub fn watch_for_dead_nodes(&self, dev: Arc<dyn BlockDevice>, slot_count: u32) -> std::io::Result<crate::RecoveryWatcher> {
        crate::recovery::watch(self.recoverer(dev, slot_count))
    }

    fn recoverer(&self, dev: Arc<dyn BlockDevice>, slot_count: u32) -> crate::recovery::Recoverer {
        crate::recovery::Recoverer {
            runtime: self.runtime.handle().clone(),
            session: self.session.clone(),
            names: self.names.clone(),
            dev: self.fenced(dev),
            slot_count,
            attached: self.attached.clone(),
        }
    }

    /// Stops the node's session without releasing anything (`Session::abandon`): lockd expires
    /// it and a survivor, or this node's next incarnation, recovers its slot. Its runtime
    /// stays, for requests of the old incarnation still in the gate (they fail).
    pub fn abandon(&self) {
        self.session.abandon();
    }

    /// Whether the node's locks are no longer certain: its session is lost or its lease ran
    /// out unanswered (it has fenced itself).
    pub fn is_fenced(&self) -> bool {
        !self.session.lease_watch().is_certain()
    }

    /// `dev` as this node may use it: every write and flush refused once its lockd lease is not
    /// certain (self-fencing, `fence.rs`).
    pub fn fenced(&self, dev: Arc<dyn BlockDevice>) -> Arc<dyn BlockDevice> {
        crate::fence::fence(dev, self.session.lease_watch(), self.session.lease(), self.session.id())
    }

    /// The filesystem a revocation writes back and forgets. Set once the mount has made it.
    /// From then on the node also keeps the locks it caches under its limit.
    pub fn attach(&self, fs: &Arc<Fs>) {
        if let Some(t) = &fs.vol.tracker {
            let _ = self.attached.tracker.set(t.clone());
        }
        if self.attached.fs.set(Arc::downgrade(fs)).is_ok() {
            let session = Arc::downgrade(&self.session);
            crate::lock_trim::start(self.runtime.handle(), session, self.names.clone(), self.attached.clone(), self.max_cached_locks);
        }
    }

    /// What the kernel caches of the node's mount: dropped whenever the node gives the volume
    /// lock to a writer, and when its session is lost or its lease runs out unheard (lockd may
    /// then give every lock it held to others, once a survivor has replayed its journal).
    pub fn attach_kernel_caches(&self, caches: Arc<dyn KernelCaches>) {
        if self.attached.kernel.set(caches.clone()).is_err() {
            return;
        }
        let lost = self.session.when_lost();
        self.runtime.spawn(async move {
            lost.await;
            tracing::warn!("the lockd session is gone: dropping the kernel's cached names and attributes");
            caches.stop();
            // Twice: a reply a request had made before the stop may reach the kernel after the
            // first drop.
            let first = caches.clone();
            let _ = tokio::task::spawn_blocking(move || first.drop_all()).await;
            tokio::time::sleep(Duration::from_secs(1)).await;
            let _ = tokio::task::spawn_blocking(move || caches.drop_all()).await;
        });
    }

    /// Leaves the cluster: closes the session, and lockd releases every lock the node held
    /// (the volume written back first: the caller has closed the filesystem). Call it after
    /// every [`VolumeLock`] of the node is gone; one still alive keeps the session from a clean
    /// close, and lockd then expires it after the lease.
    pub fn leave(mut self) -> Result<(), JoinError> {
        self.held.clear();
        let session = match Arc::try_unwrap(self.session) {
            Ok(s) => s,
            Err(_) => {
                tracing::warn!("a volume lock outlived its mount; lockd will expire the session after its lease");
                return Ok(());
            }
        };
        let r = self.runtime.block_on(session.close()).map_err(JoinError::Session);
        self.runtime.shutdown_timeout(Duration::from_secs(1));
        r
    }
}
