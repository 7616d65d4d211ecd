//! Mounting: opens the device, claims it for this process, replays and opens the volume, and
//! serves FUSE until unmounted; a background thread commits the journal every few seconds.
use super::MafsFuse;
use crate::device::{BlockDevice, FileDevice, OpenOptions};
use crate::filesystem::Fs;
use crate::volume::{Volume, DEFAULT_CACHE_BLOCKS};
use crate::claim::claim_volume;
use anyhow::{bail, Context};
use fuser::{Config, MountOption, SessionACL};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct MountConfig {
    pub volume: PathBuf,
    pub mountpoint: PathBuf,
    pub direct_io: bool,
    pub slot: u32,
    pub threads: usize,
    pub commit_interval: Duration,
    pub attr_ttl: Duration,
    pub node_name: String,
}

pub fn mount(cfg: &MountConfig) -> anyhow::Result<()> {
    if !cfg.mountpoint.is_dir() {
        bail!("mount point {} is not a directory", cfg.mountpoint.display());
    }
    let claim = claim_volume(&cfg.volume, Duration::from_secs(10))?;
    let dev: Arc<dyn BlockDevice> = Arc::new(
        FileDevice::open(&cfg.volume, &OpenOptions { direct: cfg.direct_io, ..Default::default() })
            .with_context(|| format!("cannot open volume {}", cfg.volume.display()))?,
    );
    let vol = Volume::open(dev, cfg.slot, &cfg.node_name, DEFAULT_CACHE_BLOCKS)
        .with_context(|| format!("cannot mount {}", cfg.volume.display()))?;
    if vol.used_backup_superblock {
        tracing::warn!("primary superblock of {} is damaged; mounted with the backup copy (run `mafs fsck --repair` to rewrite it)", cfg.volume.display());
    }
    if vol.replayed.transactions > 0 {
        tracing::info!("replayed {} journal transactions ({} blocks)", vol.replayed.transactions, vol.replayed.blocks_written);
    }
    let fs = Arc::new(Fs::new(vol).context("cannot finish recovery of the volume")?);

    let mut config = Config::default();
    config.n_threads = Some(cfg.threads.max(1));
    config.acl = SessionACL::All;
    config.mount_options = vec![
        MountOption::FSName(cfg.volume.display().to_string()),
        MountOption::Subtype("mafs".into()),
        MountOption::DefaultPermissions,
        MountOption::Dev,
        MountOption::Suid,
    ];
    let session = fuser::Session::new(MafsFuse::new(fs.clone(), cfg.attr_ttl), &cfg.mountpoint, &config)
        .with_context(|| format!("cannot mount on {}", cfg.mountpoint.display()))?;

    let stop = Arc::new(AtomicBool::new(false));
    let committer = {
        let (fs, stop, every) = (fs.clone(), stop.clone(), cfg.commit_interval);
        std::thread::Builder::new().name("mafs-commit".into()).spawn(move || {
            // Commits every `every`, and at once when a transaction fills up.
            let tick = Duration::from_millis(100);
            let mut last = std::time::Instant::now();
            while !stop.load(Ordering::Acquire) {
                let full = fs.wait_for_commit_request(tick);
                if full || last.elapsed() >= every {
                    last = std::time::Instant::now();
                    if let Err(e) = fs.commit() {
                        tracing::error!("journal commit failed: {e}; the mount now answers EIO");
                    }
                }
            }
            fs.committer_stopped();
        })?
    };
    spawn_signal_unmounter(cfg.mountpoint.clone());
    let result = session.run();
    stop.store(true, Ordering::Release);
    let _ = committer.join();
    // destroy() already closed the volume cleanly if the kernel sent it; close again is a no-op
    // commit plus a clean slot header, and covers the case where it did not.
    let closed = fs.close();
    drop(claim);
    result.context("FUSE session failed")?;
    closed.context("could not leave the volume clean")?;
    Ok(())
}

/// SIGINT / SIGTERM unmount the filesystem, which ends the session and closes the volume.
fn spawn_signal_unmounter(mountpoint: PathBuf) {
    // SAFETY: signal mask manipulation on this thread; the spawned thread inherits it.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        let _ = std::thread::Builder::new().name("mafs-signals".into()).spawn(move || {
            let mut sig = 0;
            if libc::sigwait(&set, &mut sig) == 0 {
                tracing::info!("signal {sig}: unmounting {}", mountpoint.display());
                if let Ok(c) = std::ffi::CString::new(mountpoint.as_os_str().as_encoded_bytes()) {
                    if libc::umount2(c.as_ptr(), 0) != 0 {
                        libc::umount2(c.as_ptr(), libc::MNT_DETACH);
                    }
                }
            }
        });
    }
}
