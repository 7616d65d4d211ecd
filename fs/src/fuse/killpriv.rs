//! Dropping set-ID bits and file capabilities ourselves (FUSE_HANDLE_KILLPRIV_V2).
//!
//! Why: without it the kernel asks for `security.capability` (a GETXATTR round trip) before
//! every write to see whether there is anything to drop; that was one request in six of a small
//! file's create-write-close (docs/benchmarks.md). With it the kernel skips the check and tells
//! us instead: a write carries FUSE_WRITE_KILL_SUIDGID when the writer lacks CAP_FSETID. The
//! rest of the contract fuser does not pass through (FATTR_KILL_SUIDGID on SETATTR), so it is
//! derived here from the request, by the VFS's own rules:
//! - chown of a non-directory always drops them (`notify_change` with ATTR_KILL_SUID);
//! - a truncate drops them when the caller lacks CAP_FSETID (`should_remove_suid`), read from
//!   `/proc/<pid>/status`;
//! - the capability xattr goes on every write, truncate and chown, whoever makes it.
use fuser::{Request, WriteFlags};

/// `CAP_FSETID` from linux/capability.h: keeps set-ID bits across writes and truncates.
const CAP_FSETID: u32 = 4;

/// Whether a write must drop the set-ID bits.
pub fn write_kills_setid(flags: WriteFlags) -> bool {
    flags.contains(WriteFlags::FUSE_WRITE_KILL_SUIDGID)
}

/// Whether a SETATTR must drop privileges, and the set-ID bits with them: `None` when it
/// changes nothing that would (or sets the mode itself, which then wins).
pub fn setattr_kills(req: &Request, mode: Option<u32>, owner_changes: bool, truncates: bool) -> Option<bool> {
    if mode.is_some() || !(owner_changes || truncates) {
        return None;
    }
    Some(owner_changes || !has_cap_fsetid(req))
}

/// Reads the calling thread's effective capabilities; if it is gone already, root stands in for
/// CAP_FSETID as it does by default.
fn has_cap_fsetid(req: &Request) -> bool {
    let caps = std::fs::read_to_string(format!("/proc/{}/status", req.pid())).ok().and_then(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("CapEff:"))
            .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
    });
    match caps {
        Some(c) => c & (1 << CAP_FSETID) != 0,
        None => req.uid() == 0,
    }
}
