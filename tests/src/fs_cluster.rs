//! A cluster on one scratch volume for the `fs_cluster_*` end-to-end tests: real `mafs lockd`
//! replicas ([`LockdCluster`]) and real `mafs mount --lockd` nodes, each its own process and
//! FUSE mount, doing device I/O with O_DIRECT as cluster nodes always do (so, like separate
//! hosts, they share no page cache). Everything is unmounted and stopped on drop.
use crate::fs_mount::{code_and_text, log_since, mafs, mkfs, spawn_mount, tear_down, umount2, unmount_child};
use crate::lockd_cluster::LockdCluster;
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus};

pub struct Node {
    pub name: String,
    pub mnt: PathBuf,
    child: Option<Child>,
    log: PathBuf,
}

impl Node {
    pub fn path(&self, rel: impl AsRef<Path>) -> PathBuf {
        self.mnt.join(rel)
    }

    pub fn log(&self) -> String {
        log_since(&self.log, 0)
    }

    /// The mount process (to signal it).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }
}

pub struct ClusterVolume {
    dir: tempfile::TempDir,
    pub vol: PathBuf,
    pub lockd: LockdCluster,
    pub nodes: Vec<Node>,
}

impl ClusterVolume {
    /// A volume of `size` with `slots` slots, lockd with one replica, and `nodes` nodes
    /// mounted (named node1, node2, ...).
    pub fn new(nodes: usize, size: &str) -> ClusterVolume {
        let mut c = Self::unmounted(size, &["--slots", "4"]);
        for i in 1..=nodes {
            c.mount(&format!("node{i}"), &[]);
        }
        c
    }

    /// The volume and lockd, no node mounted yet.
    pub fn unmounted(size: &str, mkfs_args: &[&str]) -> ClusterVolume {
        Self::unmounted_with_replicas(size, mkfs_args, 1)
    }

    /// [`Self::unmounted`] with `replicas` lockd replicas.
    pub fn unmounted_with_replicas(size: &str, mkfs_args: &[&str], replicas: u64) -> ClusterVolume {
        Self::with_lockd(size, mkfs_args, LockdCluster::start(replicas, &[]))
    }

    /// [`Self::unmounted`] with `replicas` lockd replicas whose links (between replicas, and
    /// each client's, `LockdCluster::client_link`) can be cut: to partition a node from lockd,
    /// or a replica from the others.
    pub fn unmounted_partitionable(size: &str, mkfs_args: &[&str], replicas: u64) -> ClusterVolume {
        Self::with_lockd(size, mkfs_args, LockdCluster::start_partitionable(replicas, &[]))
    }

    fn with_lockd(size: &str, mkfs_args: &[&str], lockd: LockdCluster) -> ClusterVolume {
        let dir = tempfile::Builder::new().prefix("mafs-cluster-test.").tempdir().expect("tempdir");
        let root = std::fs::canonicalize(dir.path()).expect("canonicalize tempdir");
        std::fs::set_permissions(&root, std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("chmod tempdir");
        let vol = root.join("volume.img");
        mkfs(&vol, size, mkfs_args);
        ClusterVolume { dir, vol, lockd, nodes: Vec::new() }
    }

    /// The `i`th node mounted (0-based, in mount order).
    pub fn node(&self, i: usize) -> &Node {
        &self.nodes[i]
    }

    /// Mounts node `name` (or says why it could not): `mafs mount --lockd ... --node-name
    /// NAME EXTRA...`.
    pub fn try_mount(&mut self, name: &str, extra: &[&str]) -> Result<usize, String> {
        self.try_mount_as(name, name, extra)
    }

    /// [`Self::try_mount`] at the mount point `dir` (under the scratch folder).
    pub fn try_mount_as(&mut self, dir: &str, name: &str, extra: &[&str]) -> Result<usize, String> {
        let endpoints = self.lockd.endpoints();
        self.try_mount_via(dir, name, &endpoints, extra)
    }

    /// [`Self::try_mount_as`] reaching lockd at `endpoints`.
    pub fn try_mount_via(&mut self, dir: &str, name: &str, endpoints: &str, extra: &[&str]) -> Result<usize, String> {
        let mnt = self.dir.path().join(dir);
        std::fs::create_dir_all(&mnt).expect("create mount point");
        let log = self.dir.path().join(format!("{name}.log"));
        let endpoints = endpoints.to_string();
        let mut args = vec!["--lockd", &endpoints, "--node-name", name];
        args.extend_from_slice(extra);
        let child = spawn_mount(&self.vol, &mnt, &args, &log)?;
        self.nodes.push(Node { name: name.to_string(), mnt, child: Some(child), log });
        Ok(self.nodes.len() - 1)
    }

    pub fn mount(&mut self, name: &str, extra: &[&str]) -> usize {
        self.try_mount(name, extra).unwrap_or_else(|e| panic!("node {name} did not mount: {e}"))
    }

    /// Unmounts node `i` and waits for its process to write back and leave.
    pub fn unmount(&mut self, i: usize) -> ExitStatus {
        let child = self.nodes[i].child.take().expect("node not mounted");
        unmount_child(&self.nodes[i].mnt, child)
    }

    /// kill -9 of node `i`'s mount process (its mount point is detached).
    pub fn kill9(&mut self, i: usize) {
        if let Some(mut c) = self.nodes[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = umount2(&self.nodes[i].mnt, libc::MNT_DETACH);
    }

    pub fn fsck(&self) -> (i32, String) {
        code_and_text(&mafs(["fsck".as_ref(), self.vol.as_os_str()]))
    }

    /// Every node unmounted cleanly (exit 0, no panic in any log), then fsck clean: the usual
    /// end of a test.
    pub fn finish(mut self) {
        for i in 0..self.nodes.len() {
            if self.nodes[i].child.is_some() {
                let st = self.unmount(i);
                assert!(st.success(), "node {} exited with {st}:\n{}", self.nodes[i].name, self.nodes[i].log());
            }
            let log = self.nodes[i].log();
            assert!(!log.contains("panicked"), "node {} panicked:\n{log}", self.nodes[i].name);
        }
        let (code, text) = self.fsck();
        assert_eq!(code, 0, "fsck after every node unmounted is not clean:\n{text}");
    }
}

impl Drop for ClusterVolume {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            tear_down(&n.mnt, n.child.take());
        }
        // lockd goes when `lockd` drops (after this), once the nodes have left it.
    }
}
