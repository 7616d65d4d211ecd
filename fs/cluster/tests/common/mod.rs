//! What the in-process cluster tests share: a real lockd replica served in-process, and a
//! filesystem instance that is a cluster node (its own slot and lockd session) on a shared
//! crash-test device.
#![allow(dead_code)]
use std::sync::Arc;
use std::time::Duration;

use mafs_cluster::{ClusterNode, JoinOptions, VolumeLock};
use mafs_core::device::BlockDevice;
use mafs_core::filesystem::namespace::NewNode;
use mafs_core::filesystem::{Caller, Fs};
use mafs_core::locks::{Access, VolumeGate};
use mafs_core::volume::{read_superblock, Volume};

pub const WHO: Caller = Caller::ROOT;

pub fn node(mode: u32) -> NewNode<'static> {
    NewNode { mode, rdev: 0, symlink_target: None }
}

/// A lockd replica on a free port, served by its own runtime for the test's lifetime.
pub fn lockd(dir: &std::path::Path) -> (tokio::runtime::Runtime, String) {
    let addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("free port");
        l.local_addr().expect("addr").to_string()
    };
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let cfg = lockd_server::raft_node::ReplicaConfig::new(1, addr.clone(), dir.to_path_buf());
    rt.spawn(async move {
        if let Err(e) = lockd_server::server::serve(cfg).await {
            panic!("lockd replica failed: {e}");
        }
    });
    (rt, addr)
}

pub struct Node {
    pub fs: Arc<Fs>,
    gate: Arc<VolumeLock>,
    pub cluster: ClusterNode,
}

impl Node {
    /// Joins the cluster and opens the volume through its slot, inside the volume lock as a
    /// mount does.
    pub fn mount(dev: &Arc<dyn BlockDevice>, endpoint: &str, name: &str) -> Node {
        Self::mount_with_lease(dev, endpoint, name, Duration::from_secs(10))
    }

    /// [`Node::mount`] with a lockd session lease of `lease`.
    pub fn mount_with_lease(dev: &Arc<dyn BlockDevice>, endpoint: &str, name: &str, lease: Duration) -> Node {
        let (sb, _) = read_superblock(&**dev).expect("superblock");
        let opts = JoinOptions {
            endpoints: vec![endpoint.to_string()],
            node_name: name.into(),
            slot: None,
            lease,
            max_cached_locks: mafs_cluster::DEFAULT_MAX_CACHED_LOCKS,
        };
        let cluster = ClusterNode::join(&sb.uuid_string(), sb.layout.slot_count, &opts).expect("join");
        let gate = cluster.volume_lock();
        let fs = {
            let _hold = gate.enter(Access::Write).expect("volume lock");
            let vol = Volume::open(dev.clone(), cluster.slot(), name, 4096).expect("open slot");
            // As a mount whose device I/O bypasses the host page cache does (mafs_core's
            // data_cache/), small enough to evict.
            vol.cache.data.set_capacity(1 << 20);
            Arc::new(Fs::with_cluster_locks(vol, Box::new(cluster.inode_locks())))
        };
        cluster.attach(&fs);
        Node { fs, gate, cluster }
    }

    /// Runs `f` as a request would: inside the volume lock (shared); the filesystem takes the
    /// inode and group locks it needs.
    pub fn write<T>(&self, f: impl FnOnce(&Fs) -> T) -> T {
        let _hold = self.gate.enter(Access::Write).expect("volume lock");
        f(&self.fs)
    }
}
