//! `mafs mount --lockd`: joins the volume's cluster (session, unique name, a free slot), mounts
//! as a node of it, and leaves when unmounted. Refusals (lockd unreachable, name in use, no
//! free slot) come before anything is written to the volume.
use std::sync::Arc;

use anyhow::Context;
use mafs_cluster::{ClusterNode, JoinOptions};
use mafs_core::device::{FileDevice, OpenOptions};
use mafs_core::filesystem::Fs;
use mafs_core::locks::VolumeGate;
use mafs_fuse::mount::{Membership, MountConfig};

/// The environment variable that gives the lockd endpoints when `--lockd` is left out.
pub const ENDPOINTS_ENV: &str = "MAFS_LOCKD_ENDPOINTS";

/// The endpoints of `--lockd`, or else of [`ENDPOINTS_ENV`]; empty if neither is given.
pub fn endpoints(arg: Option<String>) -> Vec<String> {
    let list = arg.or_else(|| std::env::var(ENDPOINTS_ENV).ok()).unwrap_or_default();
    list.split(',').map(str::trim).filter(|e| !e.is_empty()).map(String::from).collect()
}

struct Node<'a>(&'a ClusterNode);

impl Membership for Node<'_> {
    fn slot(&self) -> u32 {
        self.0.slot()
    }
    fn gate(&self) -> Arc<dyn VolumeGate> {
        self.0.volume_lock()
    }
    fn cluster_locks(&self) -> Box<dyn mafs_core::locks::ClusterLocks> {
        Box::new(self.0.open_locks())
    }
    fn attach(&self, fs: &Arc<Fs>) {
        self.0.attach(fs)
    }
    fn attach_kernel_caches(&self, caches: Arc<dyn mafs_core::locks::KernelCaches>) {
        self.0.attach_kernel_caches(caches)
    }
    fn fenced(&self, dev: Arc<dyn mafs_core::device::BlockDevice>) -> Arc<dyn mafs_core::device::BlockDevice> {
        self.0.fenced(dev)
    }
}

pub fn run(cfg: &MountConfig, endpoints: Vec<String>, slot: Option<u32>) -> anyhow::Result<()> {
    let cannot = || format!("cannot mount {} as a cluster node", cfg.volume.display());
    mafs_core::claim::check_volume_path(&cfg.volume).with_context(cannot)?;
    let dev: Arc<dyn mafs_core::device::BlockDevice> = Arc::new(
        FileDevice::open(&cfg.volume, &OpenOptions { direct: true, ..Default::default() })
            .with_context(|| format!("cannot open volume {}", cfg.volume.display()))?,
    );
    let (sb, _) = mafs_core::volume::read_superblock(&*dev).with_context(cannot)?;
    let opts = JoinOptions { endpoints, node_name: cfg.node_name.clone(), slot, lease: mafs_cluster::DEFAULT_LEASE };
    // The kernel serves its caches without asking this process, even while it is frozen
    // (SIGSTOP, a stalled VM) and cannot drop them. lockd expires a silent node no sooner than
    // a lease after its last heartbeat, sent at most a third of a lease before it went quiet:
    // what the kernel cached by then must be stale sooner than that.
    let cfg = &MountConfig { attr_ttl: cfg.attr_ttl.min(opts.lease / 2), ..cfg.clone() };
    let node = ClusterNode::join(&sb.uuid_string(), sb.layout.slot_count, &opts).with_context(cannot)?;
    tracing::info!("node {} mounts slot {} of {} (lockd session {})", cfg.node_name, node.slot(), cfg.volume.display(), node.session_id());
    let watcher = node.watch_for_dead_nodes(dev, sb.layout.slot_count).context("cannot start watching for dead nodes")?;
    let mounted = mafs_fuse::mount::mount(cfg, Some(&Node(&node)));
    drop(watcher);
    let left = node.leave();
    mounted?;
    left.context("could not leave lockd cleanly (its locks go when the session's lease runs out)")?;
    Ok(())
}
