//! Mounting: opens the device, claims it for this process, replays and opens the volume, and
//! serves FUSE until unmounted; a background thread commits the journal every few seconds.
//! A cluster node mounts through its [`Membership`] (the `mafs-cluster` crate, which this one
//! does not link): its slot, and the gate its requests pass.
use super::kernel_cache::{Dropper, KernelLookups};
use super::{Current, KernelCache, MafsFuse};
use anyhow::{bail, Context};
use fuser::{Config, MountOption, SessionACL};
use mafs_core::claim::{claim_volume, claim_volume_shared};
use mafs_core::device::{BlockDevice, FileDevice, OpenOptions};
use mafs_core::filesystem::Fs;
use mafs_core::locks::{Access, KernelCaches, VolumeGate};
use mafs_core::volume::{Volume, DEFAULT_CACHE_BLOCKS};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct MountConfig {
    pub volume: PathBuf,
    pub mountpoint: PathBuf,
    pub direct_io: bool,
    /// Bytes of file data the node keeps in memory under its inode locks when its device I/O
    /// bypasses the host page cache (cluster mode, `direct_io`); 0: none.
    pub data_cache: u64,
    pub slot: u32,
    pub threads: usize,
    pub commit_interval: Duration,
    pub attr_ttl: Duration,
    pub node_name: String,
    /// Mount even if another host's mount of the slot looks alive (it is known dead).
    pub override_mmp: bool,
}

/// What a cluster node brings to its mount: the slot it took and the gate of its requests.
pub trait Membership {
    fn slot(&self) -> u32;
    fn gate(&self) -> Arc<dyn VolumeGate>;
    /// What the filesystem asks other nodes (which of them have an inode open).
    fn cluster_locks(&self) -> Box<dyn mafs_core::locks::ClusterLocks>;
    /// The filesystem its revocations write back, once made.
    fn attach(&self, fs: &Arc<Fs>);
    /// What the kernel caches of the mount, which the node drops when it gives an inode lock
    /// to a writer or loses its lockd session.
    fn attach_kernel_caches(&self, caches: Arc<dyn mafs_core::locks::KernelCaches>);
    /// The device as the node may write it: not past its lease (self-fencing).
    fn fenced(&self, dev: Arc<dyn BlockDevice>) -> Arc<dyn BlockDevice>;
    /// Waits until the node has fenced itself (true), or `stop` is set (false).
    fn wait_until_fenced(&self, stop: &AtomicBool) -> bool;
    /// Joins the cluster again under a new session once the old one's slot is recovered; from
    /// then on the calls above answer for the new membership. Gives up when `stop` is set.
    fn rejoin(&self, stop: &AtomicBool) -> anyhow::Result<()>;
}

pub fn mount(cfg: &MountConfig, cluster: Option<&(dyn Membership + Sync)>) -> anyhow::Result<()> {
    // First of all, before any thread exists: every thread inherits the mask, so SIGINT and
    // SIGTERM can only reach the signal thread's sigwait, never a worker whose default action
    // would kill the process with the volume dirty and the mount point dead.
    let stop_signals = block_stop_signals();
    if !cfg.mountpoint.is_dir() {
        bail!("mount point {} is not a directory", cfg.mountpoint.display());
    }
    let claim = match cluster {
        None => claim_volume(&cfg.volume, Duration::from_secs(10))?,
        Some(_) => claim_volume_shared(&cfg.volume, Duration::from_secs(10))?,
    };
    // A standalone mount is frozen for a snapshot through its control socket (`control.rs`),
    // a cluster node through lockd's volume lock.
    let freeze_gate = mafs_core::freeze_gate::FreezeGate::new();
    let gate: Arc<dyn VolumeGate> = match cluster {
        Some(m) => m.gate(),
        None => Arc::new(mafs_core::freeze_gate::StandaloneGate(freeze_gate.clone())),
    };
    // Opened inside the volume lock, as any request (shared: the node's own slot lock covers
    // its journal's replay, and orphan reclaim takes the inode locks any operation takes).
    let opening = gate.enter(Access::Write).context("cannot take the volume lock to open the volume")?;
    let current = Current::new(open_filesystem(cfg, cluster)?, gate);
    // Multi-mount protection from here on, through everything below (orphan reclaim can take a
    // while, and a silent slot looks like a dead node to other hosts).
    let stop = Arc::new(AtomicBool::new(false));
    let mmp = spawn_mmp_updates(current.clone(), stop.clone())?;
    let stop_mmp = |mmp: std::thread::JoinHandle<()>| {
        stop.store(true, Ordering::Release);
        mmp.thread().unpark();
        let _ = mmp.join();
    };
    if let Err(e) = current.fs().reclaim_orphans() {
        stop_mmp(mmp);
        return Err(e).context("cannot finish recovery of the volume");
    }
    drop(opening);
    let _control = if cluster.is_none() { control_socket(freeze_gate, &current) } else { None };
    let lookups = Arc::new(KernelLookups::default());
    let kernel_cache = if cluster.is_some() { KernelCache::UnderLock(lookups.clone()) } else { KernelCache::All };
    let glue = MafsFuse::with_current(current.clone(), cfg.attr_ttl, kernel_cache);
    let session = fuser::Session::new(glue, &cfg.mountpoint, &fuse_config(cfg))
        .with_context(|| format!("cannot mount on {}", cfg.mountpoint.display()))?;
    let mut caches: Option<Arc<dyn KernelCaches>> = None;
    if let Some(m) = cluster {
        // Before the first request is read: until then the kernel caches nothing.
        let dropper = Dropper::new(&session, session.notifier(), lookups).context("cannot reach the FUSE connection to drop its caches")?;
        let dropper: Arc<dyn KernelCaches> = Arc::new(dropper);
        m.attach_kernel_caches(dropper.clone());
        caches = Some(dropper);
    }
    let record = MountRecord::write(&cfg.mountpoint);
    let committer = spawn_committer(current.clone(), stop.clone(), cfg.commit_interval)?;
    spawn_signal_unmounter(stop_signals, cfg.mountpoint.clone());
    let result = std::thread::scope(|s| {
        if let (Some(m), Some(caches)) = (cluster, caches) {
            let (current, stop) = (&current, &*stop);
            let _ = std::thread::Builder::new()
                .name("mafs-rejoin".into())
                .spawn_scoped(s, move || rejoin_after_fencing(cfg, m, current, caches, stop));
        }
        let r = ended_by_unmount(session.run(), &cfg.mountpoint);
        stop.store(true, Ordering::Release);
        r
    });
    stop_mmp(mmp);
    let _ = committer.join();
    // destroy() already closed the volume cleanly if the kernel sent it; close again is a no-op
    // commit plus a clean slot header, and covers the case where it did not.
    let inc = current.get();
    let closed = inc.gate.enter(Access::Write).and_then(|_hold| inc.fs.close());
    drop(claim);
    drop(record);
    result.context("FUSE session failed")?;
    closed.context("could not leave the volume clean")?;
    Ok(())
}

/// A standalone mount's control socket, through which a snapshot freezes it.
fn control_socket(gate: Arc<mafs_core::freeze_gate::FreezeGate>, current: &Arc<Current>) -> Option<crate::control::ControlSocket> {
    match crate::control::ControlSocket::start(&current.fs().vol.sb.uuid_string(), gate, current.clone()) {
        Ok(c) => Some(c),
        Err(e) => {
            tracing::warn!("cannot open the mount's control socket ({e}): snapshots of this mount will be refused");
            None
        }
    }
}

/// The filesystem of the volume as this node opens it (replayed, its orphans not reclaimed
/// yet), made known to the cluster membership. The caller is inside the volume lock.
fn open_filesystem(cfg: &MountConfig, cluster: Option<&(dyn Membership + Sync)>) -> anyhow::Result<Arc<Fs>> {
    let vol = open_volume(cfg, cluster.map(|m| m as &dyn Membership))?;
    let fs = Arc::new(match cluster {
        Some(m) => Fs::with_cluster_locks(vol, m.cluster_locks()),
        None => Fs::without_recovery(vol),
    });
    if let Some(m) = cluster {
        m.attach(&fs);
    }
    Ok(fs)
}

/// A cluster node that fenced itself (its lease ran out: a lockd outage, a pause, a partition)
/// answers EIO; this joins the cluster again under a new session, once its old slot is
/// recovered (by a live node, or by this one), opens the volume afresh and puts the new
/// filesystem in place behind the same FUSE mount. File handles opened before stay refused
/// (`lib.rs`, `Current`); new opens work.
fn rejoin_after_fencing(
    cfg: &MountConfig,
    m: &(dyn Membership + Sync),
    current: &Current,
    caches: Arc<dyn KernelCaches>,
    stop: &AtomicBool,
) {
    while m.wait_until_fenced(stop) {
        tracing::warn!("this node fenced itself (its lockd lease ran out); joining the cluster again");
        loop {
            if stop.load(Ordering::Acquire) {
                return;
            }
            match m.rejoin(stop).and_then(|()| reopen(cfg, m, current, &caches)) {
                Ok(n) => {
                    tracing::warn!(incarnation = n, "rejoined the cluster: serving the volume again");
                    break;
                }
                Err(e) => {
                    tracing::warn!("cannot rejoin the cluster yet: {e:#}; trying again");
                    std::thread::sleep(Duration::from_secs(1));
                }
            }
        }
    }
}

/// Opens the volume for the node's new membership and puts it in place; answers the new
/// incarnation's number.
fn reopen(cfg: &MountConfig, m: &(dyn Membership + Sync), current: &Current, caches: &Arc<dyn KernelCaches>) -> anyhow::Result<u64> {
    let gate = m.gate();
    let opening = gate.enter(Access::Write).context("cannot take the volume lock to open the volume again")?;
    let fs = open_filesystem(cfg, Some(m))?;
    let n = current.replace(fs.clone(), gate);
    m.attach_kernel_caches(caches.clone());
    caches.resume();
    fs.reclaim_orphans().context("cannot free this slot's orphans")?;
    drop(opening);
    Ok(n)
}

/// The FUSE session's end as the mount reports it. After an unmount the kernel's connection
/// reads as ENODEV, or now and then (seen once in CI, with two FUSE threads) as ECONNABORTED:
/// with the mount point gone from the mount table, that is an unmount too, and the volume is
/// then closed cleanly like after any other. An abort while still mounted (through
/// /sys/fs/fuse/connections) stays an error.
fn ended_by_unmount(r: std::io::Result<()>, mountpoint: &std::path::Path) -> std::io::Result<()> {
    match r {
        Err(e) if e.raw_os_error() == Some(libc::ECONNABORTED) && !is_mount_point(mountpoint) => {
            tracing::info!("the kernel ended the FUSE connection of {} after its unmount", mountpoint.display());
            Ok(())
        }
        other => other,
    }
}

/// Whether `path` is in this process's mount table.
pub fn is_mount_point(path: &std::path::Path) -> bool {
    let canon = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    std::fs::read_to_string("/proc/self/mountinfo")
        .map(|m| m.lines().any(|l| l.split(' ').nth(4) == Some(&*canon.to_string_lossy())))
        .unwrap_or(true)
}

/// Where a mount process says it serves a mount point: `mafs umount` waits for that process to
/// exit, since a cluster node's shared claim on the volume cannot tell it apart from the other
/// nodes on this machine. Removed when the mount process ends.
pub struct MountRecord {
    path: Option<PathBuf>,
}

impl MountRecord {
    const DIR: &'static str = "/run/mafs/mounts";

    /// The record of `mountpoint`'s mount process, if any.
    pub fn path_for(mountpoint: &std::path::Path) -> PathBuf {
        let canon = std::fs::canonicalize(mountpoint).unwrap_or_else(|_| mountpoint.to_path_buf());
        let name: String = canon.to_string_lossy().chars().map(|c| if c == '/' { '%' } else { c }).collect();
        PathBuf::from(Self::DIR).join(name)
    }

    fn write(mountpoint: &std::path::Path) -> MountRecord {
        let path = Self::path_for(mountpoint);
        let written = std::fs::create_dir_all(Self::DIR).and_then(|()| std::fs::write(&path, std::process::id().to_string()));
        match written {
            Ok(()) => MountRecord { path: Some(path) },
            Err(e) => {
                // Only `mafs umount`'s wait depends on it.
                tracing::warn!("cannot record the mount process in {}: {e}", path.display());
                MountRecord { path: None }
            }
        }
    }

    /// The mount process recorded for `mountpoint`, if there is a record.
    pub fn live_process(mountpoint: &std::path::Path) -> Option<u32> {
        std::fs::read_to_string(Self::path_for(mountpoint)).ok()?.trim().parse().ok()
    }
}

impl Drop for MountRecord {
    fn drop(&mut self) {
        if let Some(p) = &self.path {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// Opens the device, makes sure no other host has the volume mounted (multi-mount protection:
/// a multi-attached device is out of the flock's reach), claims the slot, replays its journal
/// and opens the volume.
fn open_volume(cfg: &MountConfig, cluster: Option<&dyn Membership>) -> anyhow::Result<Volume> {
    let cannot_mount = || format!("cannot mount {}", cfg.volume.display());
    let cluster_slot = cluster.map(|m| m.slot());
    // A cluster node shares no cache with the other nodes, as on separate hosts: the device is
    // read and written past this host's page cache.
    let direct = cfg.direct_io || cluster_slot.is_some();
    let mut dev: Arc<dyn BlockDevice> = Arc::new(
        FileDevice::open(&cfg.volume, &OpenOptions { direct, ..Default::default() })
            .with_context(|| format!("cannot open volume {}", cfg.volume.display()))?,
    );
    if let Some(m) = cluster {
        dev = m.fenced(dev);
    }
    let (sb, _) = mafs_core::volume::read_superblock(&*dev).with_context(cannot_mount)?;
    let slot = cluster_slot.unwrap_or(cfg.slot);
    if !cfg.override_mmp {
        // Standalone means this host alone uses the volume: another host's mount of any slot
        // is as fatal as one of ours. A cluster node shares the volume with the other nodes,
        // whose slots lockd keeps apart; its own slot must not be live (a standalone mount).
        let slots: Vec<u32> = match cluster_slot {
            Some(s) => vec![s],
            None => (0..sb.layout.slot_count).collect(),
        };
        mafs_core::mmp::ensure_not_live(&*dev, &sb, &slots, &cfg.node_name, "mounting it here").with_context(cannot_mount)?;
    }
    mafs_core::mmp::claim(&*dev, &sb, slot, &cfg.node_name).with_context(cannot_mount)?;
    let vol = Volume::open_with(dev, slot, &cfg.node_name, DEFAULT_CACHE_BLOCKS, true).with_context(cannot_mount)?;
    if direct {
        // Without the host page cache, a file read just now or written just now would be
        // read from the device again (mafs_core's data_cache/).
        // No more than the volume holds.
        vol.cache.data.set_capacity(cfg.data_cache.min(vol.dev.size()));
    }
    if vol.used_backup_superblock {
        tracing::warn!(
            "primary superblock of {} is damaged; mounted with the backup copy (run `mafs fsck --repair` to rewrite it)",
            cfg.volume.display()
        );
    }
    if vol.replayed.transactions > 0 {
        let r = &vol.replayed;
        tracing::info!("replayed {} journal transactions ({} blocks) in {:?}", r.transactions, r.blocks_written, r.took);
    }
    Ok(vol)
}

fn fuse_config(cfg: &MountConfig) -> Config {
    let mut config = Config::default();
    config.n_threads = Some(cfg.threads.max(1));
    config.acl = SessionACL::All;
    config.mount_options = vec![
        MountOption::FSName(cfg.volume.display().to_string()),
        // The kernel's own `subtype=` (fuser passes `Subtype` only to fusermount, which a
        // root mount does not use): /proc/mounts, df and findmnt then say `fuse.mafs`.
        MountOption::CUSTOM("subtype=mafs".into()),
        MountOption::DefaultPermissions,
        MountOption::Dev,
        MountOption::Suid,
    ];
    config
}

/// Changes the slot's multi-mount protection sequence every interval until `stop`.
fn spawn_mmp_updates(current: Arc<Current>, stop: Arc<AtomicBool>) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new().name("mafs-mmp".into()).spawn(move || {
        while !stop.load(Ordering::Acquire) {
            std::thread::park_timeout(mafs_core::mmp::INTERVAL);
            if !stop.load(Ordering::Acquire) {
                if let Err(e) = current.fs().vol.journal.touch_mmp() {
                    tracing::warn!("multi-mount protection update failed: {e}");
                }
            }
        }
    })
}

/// Commits every `every`, and at once when a transaction fills up, until `stop`.
fn spawn_committer(current: Arc<Current>, stop: Arc<AtomicBool>, every: Duration) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new().name("mafs-commit".into()).spawn(move || {
        let tick = Duration::from_millis(100);
        let mut last = std::time::Instant::now();
        while !stop.load(Ordering::Acquire) {
            // The filesystem of the moment: a rejoin replaces it.
            let fs = current.fs();
            let full = fs.wait_for_commit_request(tick);
            if full || last.elapsed() >= every {
                last = std::time::Instant::now();
                if let Err(e) = fs.commit() {
                    tracing::error!("journal commit failed: {e}; the mount now answers EIO");
                }
            }
        }
        current.fs().committer_stopped();
    })
}

/// Blocks SIGINT and SIGTERM in the calling thread (and so in every thread it starts later),
/// after setting their action back to the default: a shell starts a background job with
/// SIGINT ignored, and an ignored signal is discarded before sigwait could see it.
fn block_stop_signals() -> libc::sigset_t {
    // SAFETY: plain signal-disposition and mask calls on this thread.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for sig in [libc::SIGINT, libc::SIGTERM] {
            libc::signal(sig, libc::SIG_DFL);
            libc::sigaddset(&mut set, sig);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    }
}

/// SIGINT / SIGTERM unmount the filesystem, which ends the session and closes the volume.
fn spawn_signal_unmounter(set: libc::sigset_t, mountpoint: PathBuf) {
    // SAFETY: sigwait on the set every thread of the process has blocked.
    unsafe {
        let _ = std::thread::Builder::new().name("mafs-signals".into()).spawn(move || {
            let mut sig = 0;
            // Every signal gets its try: one that could not unmount must not leave the next
            // one blocked forever.
            while libc::sigwait(&set, &mut sig) == 0 {
                tracing::info!("signal {sig}: unmounting {}", mountpoint.display());
                let Ok(c) = std::ffi::CString::new(mountpoint.as_os_str().as_encoded_bytes()) else { return };
                if libc::umount2(c.as_ptr(), 0) == 0 || libc::umount2(c.as_ptr(), libc::MNT_DETACH) == 0 {
                    return;
                }
                tracing::error!("cannot unmount {}: {}", mountpoint.display(), std::io::Error::last_os_error());
            }
        });
    }
}
