//! A disk that goes bad on demand, for end-to-end tests of what mafs does when its device
//! fails: the `faulty-disk` program (tests/src/bin/faulty_disk.rs), a FUSE filesystem holding
//! one file `disk` backed by a real file. mafs nodes mount that file as their volume (with
//! O_DIRECT, as cluster nodes do, so every write and flush reaches it), and the test switches
//! faults on and off while they work: every write and flush failing with EIO, writes that store
//! only their first half and say so (short writes), or writes that store their first half and
//! fail (torn writes). Reads always succeed.
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Fault {
    None = 0,
    /// Every write and flush fails with EIO; nothing is stored.
    Eio = 1,
    /// A write of more than one 512-byte sector stores its first half (in whole sectors) and
    /// answers that length.
    ShortWrites = 2,
    /// A write of more than one sector stores its first half (in whole sectors) and fails with
    /// EIO.
    TornWrites = 3,
}

/// The mounted faulty disk; its process is killed and its mount detached on drop.
pub struct FaultyDisk {
    child: Child,
    mountpoint: PathBuf,
    control: PathBuf,
}

impl FaultyDisk {
    /// Serves `backing` as `MOUNTPOINT/disk` (the mount point is created).
    pub fn new(backing: &Path, mountpoint: &Path) -> FaultyDisk {
        std::fs::create_dir_all(mountpoint).expect("create the faulty disk's mount point");
        let control = mountpoint.with_extension("control");
        std::fs::write(&control, "0").expect("write the faulty disk's control file");
        let bin = crate::mafs_bin().with_file_name("faulty-disk");
        let child = Command::new(&bin)
            .args([backing, mountpoint, &control])
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e} (build it: cargo build --release -p mafs-tests)", bin.display()));
        let disk = FaultyDisk { child, mountpoint: mountpoint.to_path_buf(), control };
        assert!(crate::wait_until(Duration::from_secs(10), || disk.path().exists()), "the faulty disk did not come up");
        disk
    }

    /// The disk, as the nodes open it.
    pub fn path(&self) -> PathBuf {
        self.mountpoint.join("disk")
    }

    /// Switches to `fault` (within 20 ms).
    pub fn set(&self, fault: Fault) {
        std::fs::write(&self.control, (fault as u8).to_string()).expect("write the faulty disk's control file");
        std::thread::sleep(Duration::from_millis(60));
    }

    /// How many requests the faults have failed or cut short so far.
    pub fn hits(&self) -> u64 {
        std::fs::read_to_string(self.control.with_extension("control.hits")).ok().and_then(|s| s.trim().parse().ok()).unwrap_or(0)
    }
}

impl Drop for FaultyDisk {
    fn drop(&mut self) {
        // Killing the server ends its FUSE connection: anything still waiting on the disk fails.
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = crate::fs_mount::umount2(&self.mountpoint, libc::MNT_DETACH);
    }
}
