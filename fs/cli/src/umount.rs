//! `mafs umount`: unmounts, then waits until the mount process has left the volume clean. When
//! that does not happen in time, says what still holds the volume: a process that has it open
//! (the mount process itself, still serving another copy of the mount, or anything else), and
//! mount namespaces that still hold a copy of the mount.
use anyhow::Context;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// `wait`: how long the mount process gets to write everything back and mark the slot clean.
pub fn run(mountpoint: &Path, volume: Option<PathBuf>, wait: Duration) -> anyhow::Result<i32> {
    let c = std::ffi::CString::new(mountpoint.as_os_str().as_encoded_bytes()).context("mount point path has a NUL byte")?;
    // Asked before unmounting: the process is gone soon after.
    let process = mafs_fuse::mount::MountRecord::live_process(mountpoint);
    // SAFETY: plain syscall with a valid C string.
    if unsafe { libc::umount2(c.as_ptr(), 0) } != 0 {
        return Err(std::io::Error::last_os_error()).with_context(|| format!("cannot unmount {}", mountpoint.display()));
    }
    let Some(v) = volume else { return Ok(0) };
    let done = match process {
        // The mount process ending says it is done. For a cluster node only it can: the other
        // nodes on this machine share the volume's claim.
        Some(pid) => {
            let deadline = std::time::Instant::now() + wait;
            while running(pid) && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            !running(pid)
        }
        None => mafs_core::claim::claim_volume(&v, wait).is_ok(),
    };
    if done {
        return Ok(0);
    }
    let why = holders(&v);
    anyhow::bail!(
        "{} is unmounted here, but after {wait:?} the volume {} is still held: {}",
        mountpoint.display(),
        v.display(),
        if why.is_empty() { "by a process this command cannot see (another PID namespace?)".to_string() } else { why.join("; ") }
    )
}

/// Whether process `pid` still runs (a zombie has exited: only its parent has not asked yet).
pub(crate) fn running(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the command name in parentheses, which may itself hold any byte.
        Ok(stat) => stat.rsplit_once(')').is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

fn comm(pid: &str) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/cmdline"))
        .map(|c| c.split('\0').filter(|s| !s.is_empty()).collect::<Vec<_>>().join(" "))
        .ok()
        .filter(|c| !c.is_empty())
        .unwrap_or_else(|| std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default().trim().to_string())
}

/// Who holds `volume`, in words.
fn holders(volume: &Path) -> Vec<String> {
    let canon = std::fs::canonicalize(volume).unwrap_or_else(|_| volume.to_path_buf());
    let our_ns = std::fs::read_link("/proc/self/ns/mnt").ok();
    let mut out = Vec::new();
    let mut namespaces = std::collections::BTreeMap::new();
    let Ok(procs) = std::fs::read_dir("/proc") else { return out };
    for p in procs.flatten() {
        let pid = p.file_name().to_string_lossy().into_owned();
        if !pid.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let open = std::fs::read_dir(format!("/proc/{pid}/fd"))
            .map(|fds| fds.flatten().any(|fd| std::fs::read_link(fd.path()).is_ok_and(|t| t == canon)))
            .unwrap_or(false);
        if open {
            out.push(format!("process {pid} ({}) has it open", comm(&pid)));
        }
        let ns = std::fs::read_link(format!("/proc/{pid}/ns/mnt")).ok();
        if ns.is_some() && ns != our_ns {
            if let Ok(mi) = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")) {
                for line in mi.lines() {
                    // mountinfo: ... mount-point ... - fstype source options
                    let Some((left, right)) = line.split_once(" - ") else { continue };
                    let r: Vec<&str> = right.split(' ').collect();
                    if r.len() >= 2 && r[0].starts_with("fuse") && Path::new(&r[1].replace("\\040", " ")) == canon {
                        let mp = left.split(' ').nth(4).unwrap_or("?").to_string();
                        namespaces.entry(ns.clone()).or_insert((pid.clone(), mp));
                    }
                }
            }
        }
    }
    for (ns, (pid, mp)) in namespaces {
        out.push(format!(
            "the mount namespace {} (of process {pid}, {}) still has a copy of the mount at {mp}: unmount it there (nsenter -t {pid} -m umount {mp})",
            ns.map(|n| n.display().to_string()).unwrap_or_default(),
            comm(&pid)
        ));
    }
    out
}
