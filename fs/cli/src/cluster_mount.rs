//! `mafs mount --lockd`: joins the volume's cluster (session, unique name, a free slot), mounts
//! as a node of it, and leaves when unmounted. Refusals (lockd unreachable, name in use, no
//! free slot) come before anything is written to the volume.
use std::sync::Arc;

use anyhow::Context;
use mafs_cluster::{ClusterNode, JoinOptions, RecoveryWatcher};
use mafs_core::device::BlockDevice;
use mafs_core::device::{FileDevice, OpenOptions};
use mafs_core::filesystem::Fs;
use mafs_core::locks::VolumeGate;
use mafs_fuse::mount::{Membership, MountConfig};
use parking_lot::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// The environment variable that gives the lockd endpoints when `--lockd` is left out.
pub const ENDPOINTS_ENV: &str = "MAFS_LOCKD_ENDPOINTS";

/// The endpoints of `--lockd`, or else of [`ENDPOINTS_ENV`]; empty if neither is given.
pub fn endpoints(arg: Option<String>) -> Vec<String> {
    let list = arg.or_else(|| std::env::var(ENDPOINTS_ENV).ok()).unwrap_or_default();
    list.split(',').map(str::trim).filter(|e| !e.is_empty()).map(String::from).collect()
}

/// The node as the mount sees it: the current incarnation of its cluster membership, which a
/// rejoin after self-fencing replaces (the old one is kept, abandoned, until the mount ends:
/// requests of the old incarnation may still be in its gate).
struct Node {
    current: Mutex<ClusterNode>,
    watcher: Mutex<Option<RecoveryWatcher>>,
    retired: Mutex<Vec<ClusterNode>>,
    dev: Arc<dyn BlockDevice>,
    uuid: String,
    slot_count: u32,
    opts: JoinOptions,
}

impl Membership for Node {
    fn slot(&self) -> u32 {
        self.current.lock().slot()
    }
    fn gate(&self) -> Arc<dyn VolumeGate> {
        self.current.lock().volume_lock()
    }
    fn cluster_locks(&self) -> Box<dyn mafs_core::locks::ClusterLocks> {
        Box::new(self.current.lock().inode_locks())
    }
    fn attach(&self, fs: &Arc<Fs>) {
        self.current.lock().attach(fs)
    }
    fn attach_kernel_caches(&self, caches: Arc<dyn mafs_core::locks::KernelCaches>) {
        self.current.lock().attach_kernel_caches(caches)
    }
    fn fenced(&self, dev: Arc<dyn BlockDevice>) -> Arc<dyn BlockDevice> {
        self.current.lock().fenced(dev)
    }
    fn wait_until_fenced(&self, stop: &AtomicBool) -> bool {
        while !stop.load(Ordering::Acquire) {
            if self.current.lock().is_fenced() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        false
    }
    fn rejoin(&self, stop: &AtomicBool) -> anyhow::Result<()> {
        // The old session must not come back: lockd is to expire it, and its slot to be
        // recovered, before this node's name is free again.
        self.current.lock().abandon();
        self.watcher.lock().take();
        let node = ClusterNode::join_after_recovery(&self.uuid, self.slot_count, &self.opts, self.dev.clone(), stop)?;
        let watcher = node.watch_for_dead_nodes(self.dev.clone(), self.slot_count).context("cannot start watching for dead nodes")?;
        tracing::info!(
            "node {} joined the cluster again on slot {} (lockd session {})",
            self.opts.node_name,
            node.slot(),
            node.session_id()
        );
        let old = std::mem::replace(&mut *self.current.lock(), node);
        self.retired.lock().push(old);
        *self.watcher.lock() = Some(watcher);
        Ok(())
    }
}

pub fn run(cfg: &MountConfig, endpoints: Vec<String>, slot: Option<u32>, max_cached_locks: usize) -> anyhow::Result<()> {
    let cannot = || format!("cannot mount {} as a cluster node", cfg.volume.display());
    mafs_core::claim::check_volume_path(&cfg.volume).with_context(cannot)?;
    let dev: Arc<dyn BlockDevice> = Arc::new(
        FileDevice::open(&cfg.volume, &OpenOptions { direct: true, ..Default::default() })
            .with_context(|| format!("cannot open volume {}", cfg.volume.display()))?,
    );
    let (sb, _) = mafs_core::volume::read_superblock(&*dev).with_context(cannot)?;
    let opts = JoinOptions { endpoints, node_name: cfg.node_name.clone(), slot, lease: mafs_cluster::DEFAULT_LEASE, max_cached_locks };
    // The kernel serves its caches without asking this process, even while it is frozen
    // (SIGSTOP, a stalled VM) and cannot drop them. lockd expires a silent node no sooner than
    // a lease after its last heartbeat, sent at most a third of a lease before it went quiet:
    // what the kernel cached by then must be stale sooner than that.
    let cfg = &MountConfig { attr_ttl: cfg.attr_ttl.min(opts.lease / 2), ..cfg.clone() };
    let first = ClusterNode::join_with_device(&sb.uuid_string(), sb.layout.slot_count, &opts, dev.clone()).with_context(cannot)?;
    tracing::info!(
        "node {} mounts slot {} of {} (lockd session {})",
        cfg.node_name,
        first.slot(),
        cfg.volume.display(),
        first.session_id()
    );
    let watcher = first.watch_for_dead_nodes(dev.clone(), sb.layout.slot_count).context("cannot start watching for dead nodes")?;
    let node = Node {
        current: Mutex::new(first),
        watcher: Mutex::new(Some(watcher)),
        retired: Mutex::new(Vec::new()),
        dev,
        uuid: sb.uuid_string(),
        slot_count: sb.layout.slot_count,
        opts,
    };
    let mounted = mafs_fuse::mount::mount(cfg, Some(&node));
    node.watcher.lock().take();
    for old in node.retired.into_inner() {
        if let Err(e) = old.leave() {
            tracing::debug!("leaving an abandoned session: {e}");
        }
    }
    let left = node.current.into_inner().leave();
    mounted?;
    left.context("could not leave lockd cleanly (its locks go when the session's lease runs out)")?;
    Ok(())
}
