//! The volume claim: an flock on the volume file or device that a standalone mount, mkfs and
//! fsck hold, so that on one machine they never use a volume at the same time.
use crate::error::{FsError, Result};
use std::os::unix::io::AsRawFd;
use std::path::Path;
use std::time::Duration;

/// Holds an flock on the volume while mounted: a standalone mount excludes every other user of
/// the volume file on this machine (another mount, fsck), as a kernel filesystem would.
pub struct VolumeClaim {
    _file: std::fs::File,
}

/// A volume is a regular file or a block device that exists: anything else is refused with a
/// message naming it, before any I/O error or size check could describe it less clearly.
pub fn check_volume_path(path: &Path) -> Result<()> {
    use std::os::unix::fs::FileTypeExt;
    let meta = std::fs::metadata(path).map_err(|e| FsError::Volume(format!("cannot open volume {}: {e}", path.display())))?;
    let t = meta.file_type();
    if t.is_dir() {
        return Err(FsError::Volume(format!("{} is a directory; give a volume file or a block device", path.display())));
    }
    if !(t.is_file() || t.is_block_device()) {
        return Err(FsError::Volume(format!("{} is neither a regular file nor a block device", path.display())));
    }
    Ok(())
}

/// Takes the volume's lock, waiting up to `wait` for a previous holder to let go.
pub fn claim_volume(path: &Path, wait: Duration) -> Result<VolumeClaim> {
    claim_with(path, wait, libc::LOCK_EX)
}

/// Takes the volume's lock shared, as a cluster node does: the nodes of a cluster on this
/// machine use the volume together, and a standalone mount, mkfs or fsck (which take it
/// exclusively) is refused while any of them is mounted.
pub fn claim_volume_shared(path: &Path, wait: Duration) -> Result<VolumeClaim> {
    claim_with(path, wait, libc::LOCK_SH)
}

fn claim_with(path: &Path, wait: Duration, how: libc::c_int) -> Result<VolumeClaim> {
    check_volume_path(path)?;
    let file = std::fs::File::open(path).map_err(|e| FsError::Volume(format!("cannot open volume {}: {e}", path.display())))?;
    let start = std::time::Instant::now();
    loop {
        // SAFETY: flock on an fd we own.
        let rc = unsafe { libc::flock(file.as_raw_fd(), how | libc::LOCK_NB) };
        if rc == 0 {
            return Ok(VolumeClaim { _file: file });
        }
        if start.elapsed() >= wait {
            return Err(FsError::Busy(format!(
                "{} is in use by another mafs process on this machine (mounted, or being checked); unmount it first",
                path.display()
            )));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
